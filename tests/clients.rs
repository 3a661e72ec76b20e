//! Real POP3 clients against a real postroomd on 127.0.0.1: Python's
//! poplib, curl and fetchmail, over plain POP3, STLS and implicit TLS with
//! the server's generated certificate verified. What each client received
//! is compared byte for byte with what was stored, and the mbox on disk is
//! checked afterwards.
//!
//! A client that is not installed is skipped with a "SKIP:" line; CI
//! installs all three (python3, curl, fetchmail). Every client runs in its
//! own process group under a time limit and is killed when it overruns.

mod support;

use std::fs;
use std::path::PathBuf;

use postroom::store::Flags;
use support::clients::*;
use support::server::Server;
use support::*;

/// A message whose body has lines a POP3 server must dot-stuff: a lone
/// dot, dots at the start, a dot and a space.
fn dotted() -> Vec<u8> {
    b"From: dots@example.org\r\nTo: alice@example.org\r\nSubject: dots\r\nMessage-ID: <dots@postroom.test>\r\n\r\n\
      .\r\n..\r\n.leading dot\r\n...\r\n. \r\nFrom the start\r\n>From quoted\r\nlast line\r\n"
        .to_vec()
}

/// The six messages every test stores in alice's INBOX, in order.
fn mail() -> Vec<Vec<u8>> {
    vec![
        message_for("client-1"),
        dotted(),
        message_for("client-3"),
        message_for("client-4"),
        big(),
        message_for("client-6"),
    ]
}

/// A running server with `messages` in alice's INBOX.
fn server_with(t: &Tmp, messages: &[Vec<u8>], extra: &str) -> Server {
    support::clients::server_with(t, messages, Flags::empty(), None, extra)
}

/// What TOP n lines returns: the header, the blank line and `lines` lines of the body.
fn top(m: &[u8], lines: usize) -> Vec<u8> {
    let hdr_end = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut want = m[..hdr_end].to_vec();
    want.extend(m[hdr_end..].split_inclusive(|&b| b == b'\n').take(lines).flatten());
    want
}

/// The UIDL of the message with `uid` (UW-IMAP's format, the default).
fn uidl(s: &Server, uid: u32) -> String {
    format!("{:08x}{uid:08x}", open(&s.spool("alice")).uidvalidity())
}

// ---------------------------------------------------------------- poplib

/// A poplib session, driven by the mode in argv[1]; it prints a transcript
/// line per step and saves what it retrieved into the directory argv[2].
const POPLIB: &str = r#"
import os, poplib, sys
import strict_tls

mode, out, port, sport, cafile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
NAME = sys.argv[6]

def say(*words):
    print(" ".join(w.decode() if isinstance(w, bytes) else str(w) for w in words), flush=True)

def save(name, lines):
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"".join(l + b"\r\n" for l in lines))

def refusal(step):
    try:
        step()
        say("accepted")
    except poplib.error_proto as e:
        say(e.args[0])

def context(tls12=False):
    return strict_tls.context(cafile, tls12)

Named = strict_tls.named(poplib.POP3_SSL, "context")

def login(p):
    say("user", p.user("alice"))
    say("pass", p.pass_("secret-alice"))

def retr_all(p, prefix):
    count, size = p.stat()
    say("stat", count, size)
    for i in range(1, count + 1):
        resp, lines, octets = p.retr(i)
        say("retr", i, resp, octets)
        save("%s-%d" % (prefix, i), lines)

if mode == "plain":
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    say("welcome", p.getwelcome())
    say("capa", " ".join(sorted(p.capa())))
    login(p)
    resp, lines, octets = p.list()
    say("list", resp)
    for l in lines:
        say("list", l)
    resp, lines, octets = p.uidl()
    say("uidl", resp)
    for l in lines:
        say("uidl", l)
    say("uidl", p.uidl(3))
    retr_all(p, "retr")
    resp, lines, octets = p.top(1, 0)
    say("top 1 0", resp)
    save("top-1-0", lines)
    resp, lines, octets = p.top(2, 3)
    say("top 2 3", resp)
    save("top-2-3", lines)
    say("dele", p.dele(2))
    say("dele", p.dele(5))
    say("stat", *p.stat())
    say("rset", p.rset())
    say("stat", *p.stat())
    say("dele", p.dele(1))
    say("dele", p.dele(4))
    refusal(lambda: p.retr(4))
    say("quit", p.quit())

elif mode == "tls":
    # Implicit TLS under every name the certificate carries.
    for name in (NAME, "localhost", "127.0.0.1"):
        p = Named(name, sport, context())
        say("pop3s", name, p.getwelcome())
        say("quit", p.quit())
    # poplib's own class, which checks the host it connects to.
    p = poplib.POP3_SSL("127.0.0.1", sport, context=context(), timeout=30)
    say("pop3s", p.getwelcome())
    login(p)
    say("tls", p.sock.version())
    retr_all(p, "pop3s")
    say("quit", p.quit())
    # A name the certificate lacks, and the system's roots instead of it.
    for words in strict_tls.refusals(cafile, NAME, lambda name, ctx: Named(name, sport, ctx).quit()):
        say(*words)
    # TLS 1.2.
    p = Named(NAME, sport, context(tls12=True))
    login(p)
    say("tls", p.sock.version())
    retr_all(p, "tls12")
    say("quit", p.quit())
    # STLS on the plain port: before it no plaintext login is offered.
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    caps = p.capa()
    say("capa", "STLS" in caps, "USER" in caps)
    refusal(lambda: p.user("alice"))
    say("stls", p.stls(context()))
    caps = p.capa()
    say("capa", "STLS" in caps, "USER" in caps)
    login(p)
    say("tls", p.sock.version())
    retr_all(p, "stls")
    say("quit", p.quit())
"#;

/// Runs the poplib script in `mode`; returns its transcript and the
/// directory of what it saved.
fn poplib(s: &Server, c: &Tmp, mode: &str) -> (Vec<String>, PathBuf) {
    let script = c.path("pop3_session.py");
    fs::write(&script, POPLIB).unwrap();
    let out = c.path(mode);
    fs::create_dir(&out).unwrap();
    let cert = cert(s);
    let ran = run(python3()
        .arg(&script)
        .arg(mode)
        .arg(&out)
        .arg(s.pop3.to_string())
        .arg(s.pop3s.to_string())
        .arg(&cert)
        .arg(CERT_NAME))
    .expect(0);
    (String::from_utf8(ran.stdout).unwrap().lines().map(String::from).collect(), out)
}

fn lines(v: &[String]) -> String {
    v.join("\n")
}

#[test]
fn python_poplib_plain_session_retr_top_dele() {
    if !have("python3") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let mail = mail();
    let s = server_with(&t, &mail, "");
    let (got, out) = poplib(&s, &c, "plain");

    let sizes: Vec<usize> = mail.iter().map(Vec::len).collect();
    let total: usize = sizes.iter().sum();
    let mut want = vec!["welcome +OK postroom ready.".to_string()];
    // CAPA, as poplib's dictionary keys.
    let capa = &got[1];
    for cap in ["TOP", "USER", "UIDL", "SASL", "STLS", "PIPELINING", "RESP-CODES"] {
        assert!(capa.split(' ').any(|c| c == cap), "CAPA lacks {cap}: {capa}");
    }
    want.push(capa.clone());
    want.extend(["user +OK".into(), "pass +OK Logged in.".into()]);
    let n = mail.len() as u32;
    want.push(format!("list +OK {n} messages ({total} octets)"));
    want.extend(sizes.iter().enumerate().map(|(i, n)| format!("list {} {n}", i + 1)));
    want.push("uidl +OK".into());
    want.extend((1..=n).map(|i| format!("uidl {i} {}", uidl(&s, i))));
    want.push(format!("uidl +OK 3 {}", uidl(&s, 3)));
    want.push(format!("stat {n} {total}"));
    want.extend(sizes.iter().enumerate().map(|(i, n)| format!("retr {} +OK {n} octets {n}", i + 1)));
    want.extend(["top 1 0 +OK".into(), "top 2 3 +OK".into()]);
    want.extend(["dele +OK Message 2 deleted.".into(), "dele +OK Message 5 deleted.".into()]);
    want.push(format!("stat {} {}", n - 2, total - sizes[1] - sizes[4]));
    want.push("rset +OK".into());
    want.push(format!("stat {n} {total}"));
    want.extend(["dele +OK Message 1 deleted.".into(), "dele +OK Message 4 deleted.".into()]);
    want.push("-ERR Message 4 is deleted.".into());
    want.push("quit +OK Logging out, 2 messages deleted.".into());
    assert_eq!(lines(&got), lines(&want));

    // Every message came through byte for byte, dot-stuffing undone.
    for (i, m) in mail.iter().enumerate() {
        same(&file(&out, &format!("retr-{}", i + 1)), m, &format!("RETR {}", i + 1));
    }
    same(&file(&out, "top-1-0"), &top(&mail[0], 0), "TOP 1 0");
    same(&file(&out, "top-2-3"), &top(&mail[1], 3), "TOP 2 3");

    // QUIT removed messages 1 and 4 from the file; the rest are intact
    // and marked read.
    assert_eq!(on_disk(&s, "INBOX"), vec![mail[1].clone(), mail[2].clone(), mail[4].clone(), mail[5].clone()]);
    let mb = open(&s.spool("alice"));
    assert!(mb.messages().iter().all(|m| m.flags.contains(Flags::SEEN)));
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![2, 3, 5, 6]);
}

#[test]
fn python_poplib_over_tls_and_stls_verifies_the_generated_certificate() {
    if !have("python3") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let mail = mail();
    // Plaintext logins only over TLS: STLS must be what lets poplib in.
    let s = server_with(&t, &mail, "plaintext-auth never\n");
    let (got, out) = poplib(&s, &c, "tls");

    let total: usize = mail.iter().map(Vec::len).sum();
    let session = |tls: &str| {
        let mut v = vec!["user +OK".to_string(), "pass +OK Logged in.".into(), format!("tls {tls}")];
        v.push(format!("stat {} {total}", mail.len()));
        v.extend(mail.iter().enumerate().map(|(i, m)| format!("retr {} +OK {} octets {}", i + 1, m.len(), m.len())));
        v.push("quit +OK Logging out, 0 messages deleted.".into());
        v
    };
    let mut want = Vec::new();
    for name in [CERT_NAME, "localhost", "127.0.0.1"] {
        want.push(format!("pop3s {name} +OK postroom ready."));
        want.push("quit +OK Logging out.".into());
    }
    want.push("pop3s +OK postroom ready.".into());
    want.extend(session("TLSv1.3"));
    // 62: hostname mismatch; 18: a self-signed certificate not trusted.
    want.push("refused wrong.example 62".into());
    want.push(format!("refused {CERT_NAME} 18"));
    want.extend(session("TLSv1.2"));
    want.push("capa True False".into());
    want.push("-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.".into());
    want.push("stls +OK Begin TLS negotiation now.".into());
    want.push("capa False True".into());
    want.extend(session("TLSv1.3"));
    assert_eq!(lines(&got), lines(&want));

    for prefix in ["pop3s", "tls12", "stls"] {
        for (i, m) in mail.iter().enumerate() {
            same(&file(&out, &format!("{prefix}-{}", i + 1)), m, &format!("{prefix} RETR {}", i + 1));
        }
    }
    // Nothing was deleted; every message is now marked read.
    assert_eq!(on_disk(&s, "INBOX"), mail);
    assert!(open(&s.spool("alice")).messages().iter().all(|m| m.flags.contains(Flags::SEEN)));
}

// ------------------------------------------------------------------ curl

#[test]
fn curl_list_retr_uidl_top_dele() {
    if !have("curl") {
        return;
    }
    let t = Tmp::new();
    let mail = mail();
    let s = server_with(&t, &mail, "");
    let url = format!("pop3://127.0.0.1:{}/", s.pop3);

    // LIST, the default for a URL without a message number.
    let list: String = mail.iter().enumerate().map(|(i, m)| format!("{} {}\r\n", i + 1, m.len())).collect();
    same(&curl(&[&url]).expect(0).stdout, list.as_bytes(), "LIST");
    // RETR of each, logged in with SASL PLAIN (curl's choice) and LOGIN,
    // with and without an initial response.
    let logins: [&[&str]; 4] =
        [&[], &["--sasl-ir"], &["--login-options", "AUTH=LOGIN"], &["--login-options", "AUTH=LOGIN", "--sasl-ir"]];
    for (i, m) in mail.iter().enumerate() {
        let u = format!("{url}{}", i + 1);
        for login in logins {
            let args: Vec<&str> = login.iter().copied().chain([u.as_str()]).collect();
            same(&curl(&args).expect(0).stdout, m, &format!("RETR {} {login:?}", i + 1));
        }
    }
    // UIDL and TOP as custom commands.
    let want: String = (1..=mail.len() as u32).map(|i| format!("{i} {}\r\n", uidl(&s, i))).collect();
    same(&curl(&["-X", "UIDL", &url]).expect(0).stdout, want.as_bytes(), "UIDL");
    same(&curl(&["-X", "TOP 2 4", &url]).expect(0).stdout, &top(&mail[1], 4), "TOP 2 4");
    same(&curl(&["-X", "TOP 1 0", &url]).expect(0).stdout, &top(&mail[0], 0), "TOP 1 0");
    same(&curl(&["-X", "TOP 5 100", &url]).expect(0).stdout, &top(&mail[4], 100), "TOP 5 100");

    // A wrong password: curl's "login denied", nothing retrieved.
    let bad = curl(&["--user", "alice:wrong", &format!("{url}1")]).expect(67);
    assert!(bad.stdout.is_empty());

    // DELE, then curl's QUIT: the message is gone from the file.
    curl(&["-X", "DELE", "-I", &format!("{url}2")]).expect(0);
    let mut left = mail.clone();
    left.remove(1);
    assert_eq!(on_disk(&s, "INBOX"), left);
    let list: String = left.iter().enumerate().map(|(i, m)| format!("{} {}\r\n", i + 1, m.len())).collect();
    same(&curl(&[&url]).expect(0).stdout, list.as_bytes(), "LIST after DELE");
}

#[test]
fn curl_pop3s_and_stls_with_the_generated_certificate() {
    if !have("curl") {
        return;
    }
    let t = Tmp::new();
    let mail = mail();
    let s = server_with(&t, &mail, "plaintext-auth never\n");
    let cert = cert(&s);
    let cert = cert.to_str().unwrap();
    let pop3s = |host: &str, n: usize| format!("pop3s://{host}:{}/{n}", s.pop3s);

    for (i, m) in mail.iter().enumerate() {
        let n = i + 1;
        // Implicit TLS, the address checked against the certificate.
        same(&curl(&["--cacert", cert, &pop3s("127.0.0.1", n)]).expect(0).stdout, m, &format!("pop3s RETR {n}"));
        // STLS on the plain port, required.
        let u = format!("pop3://127.0.0.1:{}/{n}", s.pop3);
        same(&curl(&["--ssl-reqd", "--cacert", cert, &u]).expect(0).stdout, m, &format!("STLS RETR {n}"));
    }
    // The certificate's DNS names, resolved to 127.0.0.1 by curl itself;
    // TLS 1.2 as well as 1.3.
    let resolve = format!("{CERT_NAME}:{}:127.0.0.1", s.pop3s);
    let u = pop3s(CERT_NAME, 2);
    same(&curl(&["--cacert", cert, "--resolve", &resolve, &u]).expect(0).stdout, &mail[1], "pop3s by name");
    let tls12 = ["--tlsv1.2", "--tls-max", "1.2", "--cacert", cert, "--resolve", &resolve, &u];
    same(&curl(&tls12).expect(0).stdout, &mail[1], "pop3s TLS 1.2");

    // Refused: a name the certificate lacks (60: peer certificate cannot
    // be authenticated), the system's roots instead of the certificate,
    // and a plaintext login on the plain port.
    let wrong = format!("wrong.example:{}:127.0.0.1", s.pop3s);
    let r = curl(&["--cacert", cert, "--resolve", &wrong, &pop3s("wrong.example", 1)]).expect(60);
    assert!(r.stdout.is_empty());
    let r = curl(&[&pop3s("127.0.0.1", 1)]);
    assert!(r.code != Some(0) && r.stdout.is_empty(), "untrusted certificate accepted:\n{}", r.text());
    let r = curl(&[&format!("pop3://127.0.0.1:{}/1", s.pop3)]);
    assert!(r.code != Some(0) && r.stdout.is_empty(), "plaintext login accepted:\n{}", r.text());

    // DELE over TLS, then the file on disk.
    curl(&["--cacert", cert, "-X", "DELE", "-I", &pop3s("127.0.0.1", 5)]).expect(0);
    let mut left = mail.clone();
    left.remove(4);
    assert_eq!(on_disk(&s, "INBOX"), left);
}

// ------------------------------------------------------------- fetchmail

#[test]
fn fetchmail_keeps_by_uidl_then_fetches_and_deletes_everything() {
    if !have("fetchmail") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let mail = mail();
    let s = server_with(&t, &mail, "");
    let f = Fetchmail { s: &s, dir: c.dir.path(), proto: Proto::Pop3 };

    // A certificate checked for a name it lacks: nothing is fetched.
    let r = f.poll_expecting("wrong-name", Link::Implicit, "wrong.example", "keep", 2, &[]);
    assert!(r.log().contains("certificate"), "{}", r.text());

    // keep, over implicit TLS: all of them, and the server keeps them.
    let r = f.poll_expecting("first", Link::Implicit, CERT_NAME, "keep", 0, &mail);
    assert!(r.log().contains("SSL/TLS: using protocol TLSv1."), "{}", r.text());
    assert_eq!(on_disk(&s, "INBOX"), mail);
    let ids = fs::read_to_string(f.home().join(".fetchids")).expect("fetchmail's UID list");
    for uid in 1..=mail.len() as u32 {
        assert!(ids.contains(&uidl(&s, uid)), "UIDL {uid} not remembered:\n{ids}");
    }

    // keep again, over STLS: every UIDL was seen, nothing is fetched
    // (fetchmail's exit status 1: no mail).
    let r = f.poll_expecting("second", Link::Starttls, CERT_NAME, "keep", 1, &[]);
    assert!(r.log().contains("upgrade to TLS succeeded"), "{}", r.text());
    assert_eq!(on_disk(&s, "INBOX"), mail);

    // New mail arrives: only it is fetched.
    let all = f.new_mail(message_for("client-new"), Flags::empty(), &mail);

    // Without keep, fetching all: every message, then an empty mailbox.
    f.fetch_and_delete_all(&all);
}

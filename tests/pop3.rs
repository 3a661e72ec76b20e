//! POP3 against a real postroomd on 127.0.0.1: every command and error
//! path, the mbox on disk after QUIT and after a dropped connection,
//! delivery during a session, IN-USE, TLS and plaintext rules.

mod support;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use postroom::store::Flags;
use support::server::{Pop3, Server};
use support::*;

/// A server with `alice` holding the given messages in her INBOX.
fn server_with(t: &Tmp, ids: &[&str], extra: &str) -> Server {
    fs::create_dir_all(t.path("spool")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        for id in ids {
            mb.append(&message_for(id), Flags::empty(), &[], None, "sender@example.org").unwrap();
        }
    }
    Server::start(t.dir.path(), &["alice", "bob"], extra)
}

#[test]
fn rfc1939_session_retr_dele_quit() {
    let t = Tmp::new();
    let s = server_with(&t, &["m1", "m2", "m3"], "");
    let mut p = s.pop3();
    // CAPA before login, on loopback: plaintext allowed, STLS offered.
    let (st, caps) = p.multi("CAPA");
    assert_eq!(st, "+OK Capability list follows");
    let caps = String::from_utf8(caps).unwrap();
    for c in [
        "TOP",
        "USER",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "SASL PLAIN LOGIN",
        "STLS",
        "EXPIRE NEVER",
    ] {
        assert!(caps.lines().any(|l| l == c), "CAPA lacks {c}: {caps}");
    }
    assert_eq!(p.cmd("STAT"), "-ERR Command not valid in this state");
    assert_eq!(p.cmd("PASS x"), "-ERR No USER given");
    assert_eq!(p.cmd("USER alice"), "+OK");
    assert_eq!(p.cmd("PASS secret-alice"), "+OK Logged in.");
    let sizes: Vec<usize> = ["m1", "m2", "m3"].iter().map(|id| message_for(id).len()).collect();
    let total: usize = sizes.iter().sum();
    assert_eq!(p.cmd("STAT"), format!("+OK 3 {total}"));
    let (st, list) = p.multi("LIST");
    assert_eq!(st, format!("+OK 3 messages ({total} octets)"));
    assert_eq!(String::from_utf8(list).unwrap(), format!("1 {}\r\n2 {}\r\n3 {}\r\n", sizes[0], sizes[1], sizes[2]));
    assert_eq!(p.cmd("LIST 2"), format!("+OK 2 {}", sizes[1]));
    assert_eq!(p.cmd("LIST 4"), "-ERR There's no message 4.");
    assert_eq!(p.cmd("LIST 0"), "-ERR Message numbers start at 1");
    // RETR is the message, byte for byte (the client un-stuffs dots).
    let (st, body) = p.multi("RETR 2");
    assert_eq!(st, format!("+OK {} octets", sizes[1]));
    assert_eq!(body, message_for("m2"));
    // TOP: header and N body lines.
    let (st, top) = p.multi("TOP 1 2");
    assert_eq!(st, "+OK");
    let full = message_for("m1");
    let hdr_end = full.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut want = full[..hdr_end].to_vec();
    let body_lines: Vec<&[u8]> = full[hdr_end..].split_inclusive(|&b| b == b'\n').take(2).collect();
    want.extend(body_lines.concat());
    assert_eq!(top, want);
    let (_, top0) = p.multi("TOP 1 0");
    assert_eq!(top0, full[..hdr_end].to_vec());
    // UIDL: stable, UW-IMAP's format by default.
    let (st, uidl) = p.multi("UIDL");
    assert_eq!(st, "+OK");
    let uidl = String::from_utf8(uidl).unwrap();
    let uv = open(&s.spool("alice")).uidvalidity();
    assert_eq!(uidl, format!("1 {uv:08x}00000001\r\n2 {uv:08x}00000002\r\n3 {uv:08x}00000003\r\n"));
    assert_eq!(p.cmd("UIDL 3"), format!("+OK 3 {uv:08x}00000003"));
    // DELE, RSET, DELE again.
    assert_eq!(p.cmd("DELE 1"), "+OK Message 1 deleted.");
    assert_eq!(p.cmd("DELE 1"), "-ERR Message 1 is deleted.");
    assert_eq!(p.cmd("RETR 1"), "-ERR Message 1 is deleted.");
    assert_eq!(p.cmd("STAT"), format!("+OK 2 {}", sizes[1] + sizes[2]));
    assert_eq!(p.cmd("RSET"), "+OK");
    assert_eq!(p.cmd("STAT"), format!("+OK 3 {total}"));
    assert_eq!(p.cmd("DELE 1"), "+OK Message 1 deleted.");
    assert_eq!(p.cmd("DELE 3"), "+OK Message 3 deleted.");
    assert_eq!(p.cmd("NOOP"), "+OK");
    assert_eq!(p.cmd("XYZZY"), "-ERR Unknown command: XYZZY");
    assert_eq!(p.cmd("RETR x"), "-ERR Invalid message number");
    assert_eq!(p.cmd("USER bob"), "-ERR Command not valid in this state");
    // Before QUIT nothing is gone from the file.
    assert_eq!(open(&s.spool("alice")).len(), 3);
    assert_eq!(p.cmd("QUIT"), "+OK Logging out, 2 messages deleted.");
    assert_eq!(p.line(), "", "the server closes after QUIT");
    let mb = open(&s.spool("alice"));
    assert_eq!(contents(&mb).into_iter().map(|(_, b)| b).collect::<Vec<_>>(), vec![message_for("m2")]);
    // RETR marked it read (Status R), the others are no longer \Recent.
    assert!(mb.messages()[0].flags.contains(Flags::SEEN));
    assert!(!mb.messages()[0].flags.contains(Flags::RECENT));
}

#[test]
fn dropped_connection_deletes_nothing_and_releases_the_lock() {
    let t = Tmp::new();
    let s = server_with(&t, &["a", "b"], "");
    {
        let mut p = Pop3::login(s.pop3, "alice");
        assert_eq!(p.cmd("DELE 1"), "+OK Message 1 deleted.");
        assert_eq!(p.cmd("DELE 2"), "+OK Message 2 deleted.");
        // The client vanishes without QUIT.
    }
    // The lock is released soon; the next session sees both messages.
    let start = Instant::now();
    loop {
        let mut p = Pop3::connect(s.pop3);
        p.cmd("USER alice");
        let r = p.cmd("PASS secret-alice");
        if r.starts_with("+OK") {
            assert_eq!(p.cmd("STAT").split(' ').nth(1), Some("2"));
            break;
        }
        assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
        assert!(start.elapsed() < Duration::from_secs(10), "lock never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(open(&s.spool("alice")).len(), 2);
}

#[test]
fn second_session_gets_in_use_and_delivery_goes_on() {
    let t = Tmp::new();
    let s = server_with(&t, &["a", "b"], "");
    let mut p = Pop3::login(s.pop3, "alice");
    let mut q = Pop3::connect(s.pop3);
    q.cmd("USER alice");
    assert_eq!(q.cmd("PASS secret-alice"), "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
    // bob is not affected.
    let mut b = Pop3::login(s.pop3, "bob");
    assert_eq!(b.cmd("STAT"), "+OK 0 0");
    // The MTA delivers during alice's session: not blocked, not shown,
    // not deleted by her QUIT.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_postroom"))
        .args(["deliver", "-f"])
        .arg(&s.conf)
        .arg("alice")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&message_for("during")).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(p.cmd("STAT").split(' ').nth(1), Some("2"));
    assert_eq!(p.cmd("DELE 1"), "+OK Message 1 deleted.");
    assert_eq!(p.cmd("DELE 2"), "+OK Message 2 deleted.");
    assert_eq!(p.cmd("QUIT"), "+OK Logging out, 2 messages deleted.");
    let mb = open(&s.spool("alice"));
    assert_eq!(contents(&mb).into_iter().map(|(_, b)| b).collect::<Vec<_>>(), vec![message_for("during")]);
    let mut p = Pop3::login(s.pop3, "alice");
    let (_, body) = p.multi("RETR 1");
    assert_eq!(body, message_for("during"));
}

#[test]
fn uidl_is_stable_across_sessions_and_restarts() {
    let t = Tmp::new();
    let s = server_with(&t, &["a", "b", "c"], "");
    let uidl = |port| {
        let mut p = Pop3::login(port, "alice");
        let (_, u) = p.multi("UIDL");
        p.cmd("QUIT");
        String::from_utf8(u).unwrap()
    };
    let first = uidl(s.pop3);
    assert_eq!(first, uidl(s.pop3));
    drop(s);
    let s = Server::start(t.dir.path(), &["alice", "bob"], "");
    assert_eq!(first, uidl(s.pop3));
    // Deleting the first message keeps the others' UIDLs.
    let mut p = Pop3::login(s.pop3, "alice");
    p.cmd("DELE 1");
    p.cmd("QUIT");
    let after = uidl(s.pop3);
    let tail: Vec<&str> = first.lines().skip(1).map(|l| l.split(' ').nth(1).unwrap()).collect();
    let now: Vec<&str> = after.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(tail, now);
}

#[test]
fn dovecot_uidl_format_when_configured() {
    let t = Tmp::new();
    let s = server_with(&t, &["a"], "pop3-uidl-format dovecot\n");
    let mut p = Pop3::login(s.pop3, "alice");
    let uv = open(&s.spool("alice")).uidvalidity();
    assert_eq!(p.cmd("UIDL 1"), format!("+OK 1 00000001{uv:08x}"));
}

#[test]
fn wrong_password_and_unknown_user_look_the_same_and_are_delayed() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "");
    for user in ["alice", "nobody-at-all"] {
        let mut p = Pop3::connect(s.pop3);
        assert_eq!(p.cmd(&format!("USER {user}")), "+OK");
        let start = Instant::now();
        assert_eq!(p.cmd("PASS wrong"), "-ERR [AUTH] Authentication failed.");
        assert!(start.elapsed() >= Duration::from_millis(900), "failure answered after {:?}", start.elapsed());
        // The session goes on: a second try works.
        p.cmd("USER alice");
        assert_eq!(p.cmd("PASS secret-alice"), "+OK Logged in.");
        p.cmd("QUIT");
    }
    assert!(!s.log_text().contains("secret-alice"), "a password reached the log");
}

#[test]
fn sasl_plain_and_login() {
    let t = Tmp::new();
    let s = server_with(&t, &["a"], "");
    let b64 = |b: &[u8]| postroom::auth::sasl::encode_b64(b);
    // PLAIN with an initial response.
    let mut p = Pop3::connect(s.pop3);
    assert_eq!(p.cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0secret-alice"))), "+OK Logged in.");
    p.cmd("QUIT");
    // PLAIN without: an empty challenge.
    let mut p = Pop3::connect(s.pop3);
    assert_eq!(p.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(p.cmd(&b64(b"alice\0alice\0secret-alice")), "+OK Logged in.");
    p.cmd("QUIT");
    // LOGIN.
    let mut p = Pop3::connect(s.pop3);
    assert_eq!(p.cmd("AUTH LOGIN"), "+ VXNlcm5hbWU6");
    assert_eq!(p.cmd(&b64(b"alice")), "+ UGFzc3dvcmQ6");
    assert_eq!(p.cmd(&b64(b"secret-alice")), "+OK Logged in.");
    p.cmd("QUIT");
    // Cancel, bad base64, another user's authzid, unknown mechanism, list.
    let mut p = Pop3::connect(s.pop3);
    assert_eq!(p.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(p.cmd("*"), "-ERR Authentication cancelled.");
    assert_eq!(p.cmd("AUTH PLAIN !!!"), "-ERR Invalid base64 data");
    assert_eq!(
        p.cmd(&format!("AUTH PLAIN {}", b64(b"bob\0alice\0secret-alice"))),
        "-ERR [AUTH] Authentication failed."
    );
    assert_eq!(p.cmd("AUTH CRAM-MD5"), "-ERR Unsupported authentication mechanism.");
    let (st, mechs) = p.multi("AUTH");
    assert_eq!((st.as_str(), mechs.as_slice()), ("+OK", &b"PLAIN\r\nLOGIN\r\n"[..]));
}

#[test]
fn plaintext_is_refused_when_the_config_says_never() {
    let t = Tmp::new();
    let s = server_with(&t, &["a"], "plaintext-auth never\n");
    let mut p = s.pop3();
    let (_, caps) = p.multi("CAPA");
    let caps = String::from_utf8(caps).unwrap();
    assert!(!caps.contains("USER") && !caps.contains("SASL"), "{caps}");
    assert!(caps.lines().any(|l| l == "STLS"));
    let refused = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.";
    assert_eq!(p.cmd("USER alice"), refused);
    assert_eq!(p.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ=="), refused);
}

#[test]
fn bad_input_gets_errors_and_the_session_goes_on() {
    let t = Tmp::new();
    let s = server_with(&t, &["a"], "");
    let mut p = s.pop3();
    let long = "X".repeat(20_000);
    assert_eq!(p.cmd(&long), "-ERR Line too long");
    assert_eq!(p.cmd(""), "-ERR Empty command");
    p.send(b"NOOP\0\r\n");
    assert!(p.line().starts_with("-ERR"));
    assert_eq!(p.cmd("APOP alice 0123456789abcdef"), "-ERR APOP is not supported; use USER/PASS or AUTH over TLS");
    assert_eq!(p.cmd("QUIT"), "+OK Logging out.");
    // Twenty bad commands end the session.
    let mut p = s.pop3();
    for _ in 0..19 {
        assert!(p.cmd("BOGUS").starts_with("-ERR"));
    }
    assert!(p.cmd("BOGUS").starts_with("-ERR"));
    assert_eq!(p.line(), "-ERR Too many bad commands, closing.");
    assert_eq!(p.line(), "");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let t = Tmp::new();
    let s = server_with(&t, &["a", "b"], "");
    let mut p = s.pop3();
    p.send(b"USER alice\r\nPASS secret-alice\r\nSTAT\r\nLIST 1\r\nQUIT\r\n");
    assert_eq!(p.line(), "+OK");
    assert_eq!(p.line(), "+OK Logged in.");
    assert!(p.line().starts_with("+OK 2 "));
    assert!(p.line().starts_with("+OK 1 "));
    assert_eq!(p.line(), "+OK Logging out, 0 messages deleted.");
}

#[test]
fn outlook_no_nuls_workaround() {
    let t = Tmp::new();
    fs::create_dir_all(t.path("spool")).unwrap();
    open(&t.path("spool/alice")).append(b"Subject: nul\r\n\r\na\0b\r\n", Flags::empty(), &[], None, "x").unwrap();
    let s = Server::start(t.dir.path(), &["alice"], "pop3-workarounds outlook-no-nuls\n");
    let mut p = Pop3::login(s.pop3, "alice");
    let (_, body) = p.multi("RETR 1");
    assert_eq!(body, b"Subject: nul\r\n\r\na\x80b\r\n");
}

#[test]
fn empty_maildrop_without_a_file() {
    let t = Tmp::new();
    let s = Server::start(t.dir.path(), &["alice"], "");
    let mut p = Pop3::login(s.pop3, "alice");
    assert_eq!(p.cmd("STAT"), "+OK 0 0");
    assert_eq!(p.multi("LIST").1, b"");
    assert_eq!(p.cmd("RETR 1"), "-ERR There's no message 1.");
    assert_eq!(p.cmd("QUIT"), "+OK Logging out, 0 messages deleted.");
    assert!(!s.spool("alice").exists(), "no mailbox created by looking");
}

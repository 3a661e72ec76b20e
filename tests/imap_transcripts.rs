//! IMAP conversations replayed against a real postroomd: the example
//! session of RFC 3501 §8, and the first minute of popular clients
//! (Thunderbird, Apple Mail, Outlook, K-9 Mail / Thunderbird for Android)
//! as their protocol logs show it, against the mailboxes set up here.
//!
//! # Transcript format (tests/transcripts/*.txt)
//!
//! One item per line; empty lines and lines starting with `#` are ignored.
//!
//! - `C: text` is sent on the connection as `text` CRLF. `C:` alone sends
//!   an empty line (the CRLF that ends an APPEND after its literal).
//! - `S: text` is the next line the server must send, without its CRLF.
//!   A literal's bytes are read as the lines they make up, so a literal
//!   that doesn't end in CRLF runs into the line that follows it (`S:
//!   See attached. BODY[2]<0> {20}`).
//! - `C2:`/`S2:` (and `C3:`/`S3:` ...) are the same on another connection.
//!   Each connection opens at its first line, so its first `S:` line is
//!   the greeting.
//!
//! In `S:` lines, three markers match what a transcript cannot know:
//!
//! - `<*>` any text, possibly empty, within the line;
//! - `<n>` a number (one or more digits);
//! - `<$name>` a number that is the same wherever `$name` appears: the
//!   first match binds it (a UIDVALIDITY in SELECT and in STATUS). In
//!   `C:` lines `<$name>` is replaced by the number bound.
//!
//! Checked besides each line: no byte the server sends is NUL, every line
//! ends in CRLF, nothing is left unread on a connection when the next
//! `C:` line goes to it, and every connection ends with the server closing
//! it (each transcript ends with LOGOUT on every connection).

mod support;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use postroom::store::Flags;
use support::server::Server;
use support::*;

/// How long to wait for an expected line.
const WAIT: Duration = Duration::from_secs(20);

/// One transcript line.
#[derive(Debug)]
struct Step {
    line: usize,
    conn: usize,
    client: bool,
    text: String,
}

fn parse(name: &str, text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (head, rest) = l.split_once(':').unwrap_or_else(|| panic!("{name}:{}: no `C:` or `S:`: {l}", i + 1));
        let client = match head.as_bytes().first() {
            Some(b'C') => true,
            Some(b'S') => false,
            _ => panic!("{name}:{}: a line starts with C: or S:, not {head:?}", i + 1),
        };
        let conn = match &head[1..] {
            "" => 1,
            n => n.parse().unwrap_or_else(|_| panic!("{name}:{}: bad connection number {n:?}", i + 1)),
        };
        let text = match rest.strip_prefix(' ') {
            Some(t) => t.to_string(),
            None if rest.is_empty() => String::new(),
            None => panic!("{name}:{}: a space must follow the colon", i + 1),
        };
        steps.push(Step { line: i + 1, conn, client, text });
    }
    steps
}

/// A piece of an `S:` pattern.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(Vec<u8>),
    Any,
    Digits,
    Var(String),
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut lit = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let marker = if rest.starts_with("<*>") {
            Some((Tok::Any, 3))
        } else if rest.starts_with("<n>") {
            Some((Tok::Digits, 3))
        } else {
            let name = rest.strip_prefix("<$").and_then(|r| r.split_once('>')).map(|(n, _)| n);
            name.map(|n| (Tok::Var(n.to_string()), n.len() + 3))
        };
        match marker {
            Some((t, len)) => {
                if !lit.is_empty() {
                    out.push(Tok::Lit(std::mem::take(&mut lit)));
                }
                out.push(t);
                rest = &rest[len..];
            }
            None => {
                let c = rest.chars().next().unwrap();
                let mut buf = [0; 4];
                lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !lit.is_empty() {
        out.push(Tok::Lit(lit));
    }
    out
}

/// Matches `text` against `toks`, binding variables in `vars`; on failure
/// `vars` is as it was.
fn matches(toks: &[Tok], text: &[u8], vars: &mut HashMap<String, String>) -> bool {
    let Some((first, rest)) = toks.split_first() else { return text.is_empty() };
    match first {
        Tok::Lit(l) => text.starts_with(l) && matches(rest, &text[l.len()..], vars),
        Tok::Any => (0..=text.len()).any(|n| matches(rest, &text[n..], vars)),
        Tok::Digits => {
            let n = text.iter().take_while(|b| b.is_ascii_digit()).count();
            (1..=n).rev().any(|k| matches(rest, &text[k..], vars))
        }
        Tok::Var(name) => {
            if let Some(v) = vars.get(name).cloned() {
                return text.starts_with(v.as_bytes()) && matches(rest, &text[v.len()..], vars);
            }
            let n = text.iter().take_while(|b| b.is_ascii_digit()).count();
            for k in (1..=n).rev() {
                vars.insert(name.clone(), String::from_utf8_lossy(&text[..k]).into_owned());
                if matches(rest, &text[k..], vars) {
                    return true;
                }
                vars.remove(name);
            }
            false
        }
    }
}

/// `<$name>` in a client line, replaced by what it was bound to.
fn substitute(text: &str, vars: &HashMap<String, String>, at: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<$") {
        let Some(len) = rest[start..].find('>') else { break };
        let name = &rest[start + 2..start + len];
        let value = vars.get(name).unwrap_or_else(|| panic!("{at}: <${name}> is not bound yet"));
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// A connection of the replay, and what it has seen (for messages).
struct Conn {
    r: BufReader<TcpStream>,
    log: Vec<String>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Conn { r: BufReader::new(s), log: Vec::new() }
    }

    /// The last lines exchanged, for a failure message.
    fn recent(&self) -> String {
        let from = self.log.len().saturating_sub(12);
        self.log[from..].join("\n")
    }

    /// The next line from the server, checked byte by byte.
    fn line(&mut self, at: &str) -> Vec<u8> {
        let mut l = Vec::new();
        if let Err(e) = self.r.read_until(b'\n', &mut l) {
            panic!("{at}: no line from the server ({e}); so far:\n{}", self.recent());
        }
        assert!(!l.is_empty(), "{at}: the server closed the connection; so far:\n{}", self.recent());
        if let Some(p) = l.iter().position(|&b| b == 0) {
            panic!("{at}: NUL byte at {p} of {:?}", String::from_utf8_lossy(&l));
        }
        assert!(l.ends_with(b"\r\n"), "{at}: line without CRLF: {:?}", String::from_utf8_lossy(&l));
        l.truncate(l.len() - 2);
        l
    }

    /// Whatever the server sent that nobody read yet.
    fn unread(&mut self) -> Vec<u8> {
        let mut v = self.r.buffer().to_vec();
        let s = self.r.get_mut();
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => v.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading: {e}"),
            }
        }
        s.set_nonblocking(false).unwrap();
        v
    }
}

/// Replays `tests/transcripts/<name>` against the server.
fn replay(s: &Server, name: &str) -> HashMap<String, String> {
    let path = format!("{}/tests/transcripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let steps = parse(name, &text);
    assert!(!steps.is_empty(), "{name} is empty");
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut vars = HashMap::new();
    for step in &steps {
        let at = format!("{name}:{} ({}{}:)", step.line, if step.client { "C" } else { "S" }, step.conn);
        let c = conns.entry(step.conn).or_insert_with(|| Conn::open(s.imap));
        if step.client {
            let left = c.unread();
            assert!(
                left.is_empty(),
                "{at}: the server sent more than the transcript says:\n{}\nso far:\n{}",
                String::from_utf8_lossy(&left),
                c.recent()
            );
            let line = substitute(&step.text, &vars, &at);
            c.r.get_mut().write_all(format!("{line}\r\n").as_bytes()).unwrap();
            c.log.push(format!("C: {line}"));
        } else {
            let got = c.line(&at);
            c.log.push(format!("S: {}", String::from_utf8_lossy(&got)));
            let toks = tokens(&step.text);
            assert!(
                matches(&toks, &got, &mut vars),
                "{at}: the server's line differs\n  want: {}\n   got: {}\nso far:\n{}",
                step.text,
                String::from_utf8_lossy(&got),
                c.recent()
            );
        }
    }
    // Every connection was logged out: the server has closed it.
    for (n, c) in conns.iter_mut() {
        let mut rest = Vec::new();
        match c.r.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "{name}: connection {n} got more after the transcript ended:\n{}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => panic!("{name}: connection {n} still open at the end ({e}); so far:\n{}", c.recent()),
        }
    }
    vars
}

// -------------------------------------------------------------- mailboxes

/// The three messages the client transcripts find in the INBOX: plain
/// text, multipart/alternative, and a text with a PNG attachment.
fn three() -> Vec<Vec<u8>> {
    vec![
        b"From: Ann Example <ann@example.org>\r\nTo: alice@example.org\r\nSubject: Lunch on Friday\r\n\
          Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <lunch@example.org>\r\n\r\nShall we meet at noon?\r\n"
            .to_vec(),
        b"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nCc: carl@example.org\r\nSubject: Agenda\r\n\
          Date: Tue, 02 Jan 2024 09:30:00 +0100\r\nMessage-ID: <agenda@example.org>\r\n\
          In-Reply-To: <lunch@example.org>\r\nReferences: <lunch@example.org>\r\nMIME-Version: 1.0\r\n\
          Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
          --alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
          1. Budget =E2=80=93 draft\r\n2. Lunch\r\n\
          --alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>1. Budget</p><p>2. Lunch</p>\r\n--alt--\r\n"
            .to_vec(),
        b"From: carl@example.org\r\nTo: Alice <alice@example.org>\r\nSubject: Photo\r\n\
          Date: Wed, 03 Jan 2024 18:45:00 -0500\r\nMessage-ID: <photo@example.org>\r\nMIME-Version: 1.0\r\n\
          Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n\
          --mix\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee attached.\r\n\
          --mix\r\nContent-Type: image/png; name=\"dot.png\"\r\nContent-Transfer-Encoding: base64\r\n\
          Content-Disposition: attachment; filename=\"dot.png\"\r\n\r\n\
          iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==\r\n\
          --mix--\r\n"
            .to_vec(),
    ]
}

/// alice's mailboxes for the client transcripts: the INBOX with
/// [`three`] (1 \Seen, 2 \Seen \Answered, 3 new), and Work/Reports with
/// one message. The special-use folders appear at her first login.
fn clients_server(t: &Tmp) -> Server {
    fs::create_dir_all(t.path("spool")).unwrap();
    fs::create_dir_all(t.path("mail/alice/Work")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        let flags = [Flags::SEEN, Flags::SEEN.union(Flags::ANSWERED), Flags::RECENT];
        let dates = [1_704_103_200, 1_704_184_200, 1_704_325_500];
        for ((m, f), d) in three().iter().zip(flags).zip(dates) {
            mb.append(m, f, &[], Some(d), "sender@example.org").unwrap();
        }
        let mut reports = open(&t.path("mail/alice/Work/Reports"));
        reports.append(&message_for("report"), Flags::SEEN, &[], Some(1_704_103_200), "x@example.org").unwrap();
    }
    Server::start(t.dir.path(), &["alice", "bob"], "")
}

/// The message 12 of RFC 3501 §8: its header as the RFC shows it (342
/// octets), and a body of 3028 octets in 92 lines, the size the RFC's
/// BODY gives.
fn rfc_message() -> Vec<u8> {
    let mut m = b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n\
        From: Terry Gray <gray@cac.washington.edu>\r\n\
        Subject: IMAP4rev1 WG mtg summary and minutes\r\n\
        To: imap@cac.washington.edu\r\n\
        cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n\
        Message-Id: <B27397-0100000@cac.washington.edu>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
        .to_vec();
    assert_eq!(m.len(), 342);
    for i in 1..=92 {
        let width = if i == 92 { 23 } else { 31 };
        let line = format!("{i:02} IMAP4rev1 WG minutes");
        m.extend_from_slice(format!("{line:.<width$}\r\n").as_bytes());
    }
    assert_eq!(m.len(), 342 + 3028);
    m
}

// ------------------------------------------------------------------ tests

#[test]
fn rfc3501_section_8_example() {
    let t = Tmp::new();
    fs::create_dir_all(t.path("spool")).unwrap();
    {
        // 18 messages, 12 the RFC's; 17 and 18 new and unseen, the rest read.
        let mut mb = open(&t.path("spool/alice"));
        for n in 1..=18 {
            let (m, date) =
                if n == 12 { (rfc_message(), 837_596_665) } else { (message_for(&format!("rfc-{n}")), 837_500_000) };
            let f = if n >= 17 { Flags::RECENT } else { Flags::SEEN };
            mb.append(&m, f, &[], Some(date), "gray@cac.washington.edu").unwrap();
        }
    }
    let s = Server::start(t.dir.path(), &["alice"], "");
    replay(&s, "rfc3501-section8.txt");
    // The \Deleted of a005 is in the file; nothing was expunged.
    let mb = open(&s.spool("alice"));
    assert_eq!(mb.len(), 18);
    assert_eq!(mb.messages()[11].flags, Flags::SEEN.union(Flags::DELETED));
    assert_eq!(mb.message_bytes(11).unwrap(), rfc_message());
    // SELECT took \Recent.
    assert!(mb.messages().iter().all(|m| !m.flags.contains(Flags::RECENT)));
}

#[test]
fn thunderbird_first_minute() {
    let t = Tmp::new();
    let s = clients_server(&t);
    replay(&s, "thunderbird.txt");
    // The message appended during IDLE, and nothing else changed.
    let mb = open(&s.spool("alice"));
    let mut want = three();
    want.push(b"Subject: new\r\n\r\nbody\r\n".to_vec());
    assert_eq!(contents(&mb).into_iter().map(|(_, b)| b).collect::<Vec<_>>(), want);
    // The folder subscribed with a trailing separator, without it.
    let subs = fs::read_to_string(s.mail_dir("alice").join(".subscriptions")).unwrap();
    assert_eq!(subs, "Drafts\nSent\nTrash\nJunk\nArchive\nWork/Reports\n");
}

#[test]
fn apple_mail_first_minute() {
    let t = Tmp::new();
    let s = clients_server(&t);
    let vars = replay(&s, "apple-mail.txt");
    let mb = open(&s.spool("alice"));
    assert_eq!(vars["inbox"], mb.uidvalidity().to_string());
    // 3 was marked read, silently.
    assert_eq!(mb.messages()[2].flags, Flags::SEEN);
}

#[test]
fn outlook_first_minute() {
    let t = Tmp::new();
    let s = clients_server(&t);
    replay(&s, "outlook.txt");
    // The sent message saved by APPEND, read (and new: no session has had
    // Sent selected since); message 3 read.
    let sent = open(&s.mail_dir("alice").join("Sent"));
    let saved = contents(&sent);
    assert_eq!(saved.len(), 1);
    assert_eq!(
        saved[0].1,
        b"From: alice@example.org\r\nTo: ann@example.org\r\nSubject: Re: Lunch on Friday\r\n\r\nYes, noon.\r\n"
    );
    assert_eq!(sent.messages()[0].flags, Flags::SEEN.union(Flags::RECENT));
    assert_eq!(open(&s.spool("alice")).messages()[2].flags, Flags::SEEN);
}

#[test]
fn k9_mail_first_minute() {
    let t = Tmp::new();
    let s = clients_server(&t);
    replay(&s, "k9-mail.txt");
    assert_eq!(open(&s.spool("alice")).messages()[2].flags, Flags::SEEN);
}

#[test]
fn the_pattern_markers() {
    let mut vars = HashMap::new();
    let m = |p: &str, t: &str, vars: &mut HashMap<String, String>| matches(&tokens(p), t.as_bytes(), vars);
    assert!(m("* OK [UIDVALIDITY <n>] UIDs valid", "* OK [UIDVALIDITY 123] UIDs valid", &mut vars));
    assert!(!m("* OK [UIDVALIDITY <n>] UIDs valid", "* OK [UIDVALIDITY ] UIDs valid", &mut vars));
    assert!(m("* ID (\"name\" \"postroom\" <*>)", "* ID (\"name\" \"postroom\" \"version\" \"1\")", &mut vars));
    assert!(m("a<*>", "a", &mut vars));
    assert!(!m("a", "ab", &mut vars));
    assert!(m("[<$uv>] x <$uv>", "[42] x 42", &mut vars));
    assert_eq!(vars["uv"], "42");
    assert!(!m("<$uv>", "43", &mut vars));
    assert!(m("<$other> <n>", "7 8", &mut vars));
    assert_eq!(substitute("a <$uv> <$other>", &vars, "test"), "a 42 7");
    let steps = parse("t", "# c\n\nC: a\nS2: b\nC:\n");
    assert_eq!(steps.len(), 3);
    assert!(steps[0].client && steps[0].conn == 1 && steps[0].text == "a");
    assert!(!steps[1].client && steps[1].conn == 2 && steps[1].text == "b");
    assert!(steps[2].client && steps[2].text.is_empty());
}

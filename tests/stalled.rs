//! A client that stops reading in the middle of a large message: a
//! laptop on a bad link RETRs a 30 MB message, or FETCHes its BODY[], and
//! reads no more. No mailbox lock may be held while the server waits for
//! that client (DESIGN.md, Storage: "Locks are short"): meanwhile
//! `postroom deliver` delivers, an MTA appending under the dotlock and an
//! fcntl lock appends, other IMAP sessions change flags and expunge, and
//! the file is rewritten under the stalled reader. When the client reads
//! again it gets exactly the bytes of its message, as many as announced,
//! and the mbox holds every message once, byte for byte.
//!
//! The client's receive buffer is made small before it connects, so that
//! the server's writes stall after a few megabytes (the kernel's send
//! buffer) of a message several times larger. The lock timeout is 3 s, so
//! a delivery that waits for a lock fails fast (exit 75) instead of after
//! the default 30 s.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use postroom::store::Flags;
use support::server::{connect_small, Imap, Pop3, Server};
use support::*;

const BIG: usize = 30 << 20;
const RCVBUF: i32 = 4096;
const LOCK_TIMEOUT: &str = "mbox-lock-timeout 3s\n";
/// How long an outside writer waits for the locks: the lock timeout.
const WAIT: Duration = Duration::from_secs(3);

/// `postroom deliver` of `msg` to `user`; its exit status and stderr.
fn deliver(s: &Server, user: &str, msg: &[u8]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postroom"))
        .args(["deliver", "-f"])
        .arg(&s.conf)
        .arg(user)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(msg).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// alice's INBOX with a small message, a large one and a small one.
fn setup(t: &Tmp, big: &[u8]) -> Server {
    std::fs::create_dir_all(t.path("spool")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        for m in [message_for("first"), big.to_vec(), message_for("third")] {
            mb.append(&m, Flags::SEEN, &[], Some(1_700_000_000), "sender@example.org").unwrap();
        }
    }
    Server::start(t.dir.path(), &["alice"], &format!("special-use none\n{LOCK_TIMEOUT}"))
}

/// A POP3 session logged in as alice on a connection with a small
/// receive buffer.
fn stalling_pop3(s: &Server) -> Pop3 {
    let mut p = Pop3::new(connect_small(s.pop3, RCVBUF));
    assert!(p.line().starts_with("+OK"));
    assert_eq!(p.cmd("USER alice"), "+OK");
    assert!(p.cmd("PASS secret-alice").starts_with("+OK"));
    p
}

/// An IMAP session that answers within 10 s or fails the test.
fn prompt_imap(s: &Server, mailbox: &str) -> Imap {
    let mut c = s.imap("alice");
    c.r.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.cmd(&format!("SELECT {mailbox}")).assert_ok();
    c
}

/// Long keywords: the state headers of a message that gets them no
/// longer fit their padding, so writing them back rewrites the file
/// from that message on.
const KEYWORDS: &str = "$LongKeywordNumberOne_xxxxxxxxxxxxxxxxxxxx $LongKeywordNumberTwo_xxxxxxxxxxxxxxxxxxxx $LongKeywordNumberThree_xxxxxxxxxxxxxxxxxx";

/// While the POP3 client stalls in the middle of message 2: the MTA and
/// `postroom deliver` deliver, an IMAP session changes flags (and the
/// write-back rewrites the file under the POP3 session, moving message
/// 2), and EXPUNGE is refused at once as the INBOX is POP3's.
fn while_stalled(s: &Server, imap: &mut Imap) -> Vec<Vec<u8>> {
    let delivered = message_for("delivered");
    let (code, err) = deliver(s, "alice", &delivered);
    assert_eq!(code, Some(0), "postroom deliver while a POP3 client stalls: {err}");
    let mta = b"From: mta@example.org\nSubject: by the MTA\n\nappended under the dotlock and fcntl\n".to_vec();
    mta_append(&s.spool("alice"), "mta@example.org", &mta, WAIT).expect("the MTA's append while a POP3 client stalls");
    imap.cmd("STORE 2 +FLAGS (\\Flagged)").assert_ok();
    imap.cmd(&format!("STORE 1 +FLAGS ({KEYWORDS})")).assert_ok();
    imap.cmd("STORE 1 +FLAGS (\\Deleted)").assert_ok();
    let r = imap.cmd("EXPUNGE");
    assert_eq!(r.status, "NO [INUSE] Mailbox is in use by a POP3 session; messages can't be expunged until it ends.");
    // CHECK writes the flags back: message 1's state outgrew its padding,
    // so the file is rewritten from message 1 on.
    imap.cmd("CHECK").assert_ok();
    imap.cmd("STORE 1 -FLAGS (\\Deleted)").assert_ok();
    vec![delivered, crlf(&mta)]
}

/// Afterwards: every message once, byte for byte, message 2 flagged.
fn check_inbox(s: &Server, big: &[u8], more: &[Vec<u8>]) {
    let mb = open(&s.spool("alice"));
    let got: Vec<Vec<u8>> = contents(&mb).into_iter().map(|(_, b)| b).collect();
    let mut want = vec![message_for("first"), big.to_vec(), message_for("third")];
    want.extend_from_slice(more);
    assert_eq!(got.len(), want.len(), "messages in the INBOX");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "message {} differs on disk ({} bytes, want {})", i + 1, g.len(), w.len());
    }
    assert!(mb.messages()[1].flags.contains(Flags::FLAGGED));
}

#[test]
fn pop3_retr_to_a_stalled_client_holds_up_nothing() {
    let t = Tmp::new();
    let big = large_message("big", BIG);
    let s = setup(&t, &big);
    let mut imap = prompt_imap(&s, "INBOX");
    let mut p = stalling_pop3(&s);
    // The status line is all this client reads for now.
    assert_eq!(p.cmd("RETR 2"), format!("+OK {} octets", big.len()));
    let more = while_stalled(&s, &mut imap);
    let got = p.data();
    assert!(got == big, "RETR 2 sent {} bytes that are not the message ({} bytes)", got.len(), big.len());
    let (_, first) = p.multi("RETR 1");
    assert_eq!(first, message_for("first"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
    imap.cmd("LOGOUT").assert_ok();
    check_inbox(&s, &big, &more);
}

#[test]
fn pop3_top_to_a_stalled_client_holds_up_nothing() {
    let t = Tmp::new();
    let big = large_message("big", BIG);
    let s = setup(&t, &big);
    let mut imap = prompt_imap(&s, "INBOX");
    let mut p = stalling_pop3(&s);
    let lines = 50_000;
    assert_eq!(p.cmd(&format!("TOP 2 {lines}")), "+OK");
    let more = while_stalled(&s, &mut imap);
    // Another program rewrites the file too (mutt marking message 1
    // read): the server finds message 2 again and goes on.
    {
        let mut mb = open(&s.spool("alice"));
        mb.set_flags(0, Flags::SEEN.union(Flags::ANSWERED), 0);
        mb.flush().unwrap();
    }
    let got = p.data();
    let want = top_of(&big, lines);
    assert!(got == want, "TOP 2 sent {} bytes that are not the top of the message ({} bytes)", got.len(), want.len());
    assert!(p.cmd("QUIT").starts_with("+OK"));
    imap.cmd("LOGOUT").assert_ok();
    check_inbox(&s, &big, &more);
}

/// Reads the `{n}` literal announced at the end of `first` from `r` in
/// pieces, and the rest of the response to the tagged line.
fn rest_of_fetch(r: &mut BufReader<std::net::TcpStream>, first: &str, tag: &str) -> (Vec<u8>, String) {
    let open = first.rfind('{').expect("a literal");
    let n: usize = first[open + 1..first.len() - 1].parse().unwrap();
    let mut lit = vec![0u8; n];
    r.read_exact(&mut lit).unwrap();
    let mut rest = String::new();
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "connection closed after the literal");
        rest.push_str(&l);
        if l.starts_with(&format!("{tag} ")) {
            return (lit, rest);
        }
    }
}

#[test]
fn imap_fetch_to_a_stalled_reader_holds_up_nothing() {
    let t = Tmp::new();
    let big = large_message("big", BIG);
    std::fs::create_dir_all(t.path("mail/alice")).unwrap();
    {
        let mut mb = open(&t.path("mail/alice/big"));
        for m in [message_for("first"), big.clone(), message_for("third")] {
            mb.append(&m, Flags::SEEN, &[], Some(1_700_000_000), "sender@example.org").unwrap();
        }
    }
    std::fs::create_dir_all(t.path("spool")).unwrap();
    let s = Server::start(t.dir.path(), &["alice"], &format!("special-use none\n{LOCK_TIMEOUT}"));
    let mut other = prompt_imap(&s, "big");
    let mut a = Imap::new(connect_small(s.imap, RCVBUF));
    assert!(a.line().starts_with("* OK"));
    a.cmd("LOGIN alice secret-alice").assert_ok();
    a.cmd("SELECT big").assert_ok();
    let rss_before = s.vm_kib("VmRSS");
    s.reset_peak();
    a.send(b"f FETCH 2 BODY.PEEK[]\r\n");
    let first = a.line();
    assert_eq!(first, format!("* 2 FETCH (BODY[] {{{}}}", big.len()));
    // While A stalls: another session changes flags and expunges message
    // 1 (the file is rewritten and message 2 moves), the MTA appends.
    other.cmd(&format!("STORE 2 +FLAGS (\\Flagged {KEYWORDS})")).assert_ok();
    other.cmd("STORE 1 +FLAGS (\\Deleted)").assert_ok();
    let r = other.cmd("EXPUNGE");
    r.assert_ok();
    assert_eq!(r.text(), "* 1 EXPUNGE\r\n");
    let mta = b"From: mta@example.org\nSubject: by the MTA\n\nappended under the dotlock and fcntl\n".to_vec();
    mta_append(&s.mail_dir("alice").join("big"), "mta@example.org", &mta, WAIT)
        .expect("the MTA's append while an IMAP client stalls");
    let (code, err) = deliver(&s, "alice", &message_for("delivered"));
    assert_eq!(code, Some(0), "{err}");
    // The stalled reply holds a bounded batch, not the message.
    let held = s.vm_kib("VmRSS").saturating_sub(rss_before);
    let budget = (postroom::limits::REPLY_BUDGET >> 10) as u64 + MARGIN_KIB;
    assert!(held <= budget, "postroomd holds {held} KiB more while the reader stalls (budget {budget} KiB)");
    let (lit, rest) = rest_of_fetch(&mut a.r, &first, "f");
    assert!(lit == big, "the literal ({} bytes) is not the message", lit.len());
    // The literal is closed, then what changed meanwhile is reported:
    // new keywords, the MTA's message, message 2's flags, but no EXPUNGE
    // while answering FETCH (RFC 3501 §7.4.1).
    let lines: Vec<&str> = rest.split_inclusive("\r\n").collect();
    assert_eq!(lines.first(), Some(&")\r\n"), "{rest}");
    assert_eq!(lines.last(), Some(&"f OK Fetch completed.\r\n"), "{rest}");
    assert!(lines.contains(&"* 4 EXISTS\r\n"), "{rest}");
    assert!(lines.iter().any(|l| l.starts_with("* 2 FETCH (FLAGS (\\Flagged \\Seen $LongKeywordNumberOne_")), "{rest}");
    assert!(!rest.contains("EXPUNGE"), "{rest}");
    let peak = s.vm_kib("VmHWM").saturating_sub(rss_before);
    assert!(peak <= budget, "postroomd peaked {peak} KiB above its size before the FETCH (budget {budget} KiB)");
    // A learns of the expunge, and message 1 is now the large one.
    let r = a.cmd("NOOP");
    assert!(r.text().contains("* 1 EXPUNGE\r\n"), "{}", r.text());
    let r = a.cmd("FETCH 1 (FLAGS RFC822.SIZE)");
    assert!(r.text().contains("\\Flagged") && r.text().contains("$LongKeywordNumberOne_"), "{}", r.text());
    assert!(r.text().contains(&format!("RFC822.SIZE {}", big.len())), "{}", r.text());
    a.cmd("LOGOUT").assert_ok();
    other.cmd("LOGOUT").assert_ok();
    let mb = open(&s.mail_dir("alice").join("big"));
    let got: Vec<Vec<u8>> = contents(&mb).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got.len(), 3);
    assert!(got[0] == big, "the large message on disk");
    assert_eq!(got[1], message_for("third"));
    assert_eq!(got[2], crlf(&mta));
}

/// What a server may hold beyond the reply budget: allocator slack, the
/// thread's stack, the index.
const MARGIN_KIB: u64 = 8 << 10;

/// Reads a FETCH response whose first line `first` (already read) ends
/// in a literal: every literal, each with the text before it, then the
/// rest up to and including the tagged line.
fn literals_of_fetch(
    r: &mut BufReader<std::net::TcpStream>,
    first: &str,
    tag: &str,
) -> (Vec<(String, Vec<u8>)>, String) {
    let mut line = first.to_string();
    let mut lits = Vec::new();
    loop {
        let t = line.trim_end();
        let Some(n) = t.strip_suffix('}').and_then(|x| x.rfind('{').map(|o| &x[o + 1..])) else { break };
        let n: usize = n.parse().unwrap();
        let mut lit = vec![0u8; n];
        r.read_exact(&mut lit).unwrap();
        lits.push((t.to_string(), lit));
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed inside the response");
    }
    let mut rest = line;
    while !rest.lines().last().is_some_and(|l| l.starts_with(&format!("{tag} "))) {
        assert!(r.read_line(&mut rest).unwrap() > 0, "connection closed before the tagged line");
    }
    (lits, rest)
}

/// A FETCH of several items of a large message (a partial, RFC822.TEXT,
/// RFC822.HEADER, a section that needs the message parsed, and
/// BODYSTRUCTURE) to a client that stops reading after the first line:
/// meanwhile the file is rewritten under it and mail comes in, and then
/// every item is exact. The section is answered from one copy of the
/// message, read in batches too.
#[test]
fn imap_fetch_of_many_items_to_a_stalled_reader_holds_up_nothing() {
    let t = Tmp::new();
    let big = large_message("big", BIG);
    let split = big.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    std::fs::create_dir_all(t.path("mail/alice")).unwrap();
    {
        let mut mb = open(&t.path("mail/alice/big"));
        for m in [message_for("first"), big.clone(), message_for("third")] {
            mb.append(&m, Flags::SEEN, &[], Some(1_700_000_000), "sender@example.org").unwrap();
        }
    }
    std::fs::create_dir_all(t.path("spool")).unwrap();
    let s = Server::start(t.dir.path(), &["alice"], &format!("special-use none\n{LOCK_TIMEOUT}"));
    let mut other = prompt_imap(&s, "big");
    let mut a = Imap::new(connect_small(s.imap, RCVBUF));
    assert!(a.line().starts_with("* OK"));
    a.cmd("LOGIN alice secret-alice").assert_ok();
    a.cmd("SELECT big").assert_ok();
    let rss_before = s.vm_kib("VmRSS");
    s.reset_peak();
    let count = 20 << 20;
    a.send(b"f FETCH 2 (BODY.PEEK[]<7.20971520> RFC822.TEXT RFC822.HEADER BODY.PEEK[1] BODYSTRUCTURE)\r\n");
    let first = a.line();
    assert_eq!(first, format!("* 2 FETCH (BODY[]<7> {{{count}}}"));
    other.cmd(&format!("STORE 2 +FLAGS (\\Flagged {KEYWORDS})")).assert_ok();
    other.cmd("STORE 1 +FLAGS (\\Deleted)").assert_ok();
    other.cmd("EXPUNGE").assert_ok();
    let mta = b"From: mta@example.org\nSubject: by the MTA\n\nappended under the dotlock and fcntl\n".to_vec();
    mta_append(&s.mail_dir("alice").join("big"), "mta@example.org", &mta, WAIT)
        .expect("the MTA's append while an IMAP client stalls");
    let (lits, rest) = literals_of_fetch(&mut a.r, &first, "f");
    let names: Vec<&str> = lits.iter().map(|(l, _)| l.rsplit([' ', '(']).nth(1).unwrap()).collect();
    assert_eq!(names, ["BODY[]<7>", "RFC822.TEXT", "RFC822.HEADER", "BODY[1]"]);
    assert!(lits[0].1 == big[7..7 + count], "the partial");
    assert!(lits[1].1 == big[split..], "RFC822.TEXT");
    assert!(lits[2].1 == big[..split], "RFC822.HEADER");
    assert!(lits[3].1 == big[split..], "BODY[1]");
    // The same BODYSTRUCTURE as another session gets for the message.
    let bs = other.cmd("FETCH 1 BODYSTRUCTURE");
    let want = bs.lines()[0].strip_prefix("* 1 FETCH (").unwrap().to_string();
    let (tail, after) = rest.split_once("\r\n").unwrap();
    assert_eq!(tail, format!(" {want}"));
    assert!(after.ends_with("f OK Fetch completed.\r\n"), "{after}");
    // One copy of the message (for BODY[1] and BODYSTRUCTURE) and the budget.
    let peak = s.vm_kib("VmHWM").saturating_sub(rss_before);
    let budget = (postroom::limits::REPLY_BUDGET >> 10) as u64 + (big.len() >> 10) as u64 + MARGIN_KIB;
    assert!(peak <= budget, "postroomd peaked {peak} KiB above its size before the FETCH (budget {budget} KiB)");
    a.cmd("LOGOUT").assert_ok();
    other.cmd("LOGOUT").assert_ok();
    let mb = open(&s.mail_dir("alice").join("big"));
    let got: Vec<Vec<u8>> = contents(&mb).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got.len(), 3);
    assert!(got[0] == big, "the large message on disk");
    assert_eq!(got[1], message_for("third"));
    assert_eq!(got[2], crlf(&mta));
}

/// The message a stalled client is being sent is expunged by another
/// session: the literal's length was announced, so the server sends no
/// wrong byte and no other: the connection ends after a true prefix of
/// the message.
#[test]
fn a_message_expunged_while_it_is_sent_ends_the_session() {
    let t = Tmp::new();
    let big = large_message("big", BIG);
    std::fs::create_dir_all(t.path("mail/alice")).unwrap();
    {
        let mut mb = open(&t.path("mail/alice/big"));
        for m in [message_for("first"), big.clone()] {
            mb.append(&m, Flags::SEEN, &[], Some(1_700_000_000), "sender@example.org").unwrap();
        }
    }
    std::fs::create_dir_all(t.path("spool")).unwrap();
    let s = Server::start(t.dir.path(), &["alice"], &format!("special-use none\n{LOCK_TIMEOUT}"));
    let mut other = prompt_imap(&s, "big");
    let mut a = Imap::new(connect_small(s.imap, RCVBUF));
    assert!(a.line().starts_with("* OK"));
    a.cmd("LOGIN alice secret-alice").assert_ok();
    a.cmd("SELECT big").assert_ok();
    a.send(b"f FETCH 2 BODY.PEEK[]\r\n");
    assert_eq!(a.line(), format!("* 2 FETCH (BODY[] {{{}}}", big.len()));
    other.cmd("STORE 2 +FLAGS (\\Deleted)").assert_ok();
    let r = other.cmd("EXPUNGE");
    r.assert_ok();
    assert_eq!(r.text(), "* 2 EXPUNGE\r\n");
    let mut got = Vec::new();
    a.r.read_to_end(&mut got).unwrap();
    assert!(got.len() < big.len(), "{} bytes of a message of {} came", got.len(), big.len());
    assert!(got[..] == big[..got.len()], "the bytes sent are not the message's");
    assert!(s.log_text().contains("imap response-cut"), "{}", s.log_text());
    other.cmd("LOGOUT").assert_ok();
}

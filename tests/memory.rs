//! Memory a client can make the server hold: whatever a FETCH asks for
//! and however large the message, a session holds at most
//! `limits::REPLY_BUDGET` of its reply, plus one copy of one message
//! where an item needs the message parsed (sections, BODYSTRUCTURE).
//!
//! Measured on a real postroomd: its VmRSS sampled while the reply
//! streams, and its VmHWM (reset just before the command) afterwards,
//! against its VmRSS before the command. The bytes received are checked
//! all the way.

mod support;

use std::io::{BufRead, Read};

use postroom::limits::REPLY_BUDGET;
use postroom::store::Flags;
use support::server::{Imap, Pop3, Server};
use support::*;

/// What a server may hold beyond what is counted: allocator slack, the
/// session thread's stack, the index.
const MARGIN_KIB: u64 = 8 << 10;

fn server_with(t: &Tmp, msgs: &[Vec<u8>]) -> Server {
    std::fs::create_dir_all(t.path("spool")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        for m in msgs {
            mb.append(m, Flags::SEEN, &[], Some(1_700_000_000), "sender@example.org").unwrap();
        }
    }
    Server::start(t.dir.path(), &["alice"], "special-use none\n")
}

/// The server's memory while a command runs: the largest VmRSS seen by
/// `sample` calls and the VmHWM at the end, each less the VmRSS before.
struct Watch<'a> {
    s: &'a Server,
    before: u64,
    max_seen: u64,
}

impl<'a> Watch<'a> {
    fn start(s: &'a Server) -> Watch<'a> {
        let before = s.vm_kib("VmRSS");
        s.reset_peak();
        Watch { s, before, max_seen: before }
    }

    fn sample(&mut self) {
        self.max_seen = self.max_seen.max(self.s.vm_kib("VmRSS"));
    }

    /// Asserts that the growth stayed within `allowed_kib` (plus the margin).
    #[track_caller]
    fn assert_within(&self, allowed_kib: u64, what: &str) {
        let limit = allowed_kib + MARGIN_KIB;
        let seen = self.max_seen.saturating_sub(self.before);
        let peak = self.s.vm_kib("VmHWM").saturating_sub(self.before);
        assert!(seen <= limit, "{what}: postroomd grew by {seen} KiB while the reply streamed (limit {limit} KiB)");
        assert!(peak <= limit, "{what}: postroomd peaked {peak} KiB above its size before (limit {limit} KiB)");
    }
}

const BUDGET_KIB: u64 = (REPLY_BUDGET >> 10) as u64;

/// Reads the response to `tag`: every untagged line, each literal
/// compared in pieces with `want` (all literals are that message), the
/// server sampled after each literal. Returns the literal count and the
/// tagged line.
fn stream_response(c: &mut Imap, tag: &str, want: &[u8], w: &mut Watch) -> (usize, String) {
    let mut literals = 0;
    let mut piece = vec![0u8; 1 << 20];
    loop {
        let mut line = Vec::new();
        assert!(c.r.read_until(b'\n', &mut line).unwrap() > 0, "connection closed");
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.starts_with(&format!("{tag} ")) {
            return (literals, text.trim_end().to_string());
        }
        let Some(open) = text.trim_end().strip_suffix('}').and_then(|t| t.rfind('{')) else { continue };
        let n: usize = text[open + 1..text.trim_end().len() - 1].parse().unwrap();
        assert_eq!(n, want.len(), "literal {literals} announced {n} bytes: {text}");
        let mut at = 0;
        while at < n {
            let k = piece.len().min(n - at);
            c.r.read_exact(&mut piece[..k]).unwrap();
            assert!(piece[..k] == want[at..at + k], "literal {literals} differs at {at}");
            at += k;
        }
        literals += 1;
        w.sample();
    }
}

#[test]
fn fetch_of_200_body_items_streams_under_the_budget() {
    let t = Tmp::new();
    let m = large_message("five", 5 << 20);
    let s = server_with(&t, std::slice::from_ref(&m));
    let mut c = s.imap("alice");
    c.cmd("SELECT INBOX").assert_ok();
    let items = vec!["BODY.PEEK[]"; 200].join(" ");
    let mut w = Watch::start(&s);
    let tag = c.next_tag();
    c.send(format!("{tag} FETCH 1 ({items})\r\n").as_bytes());
    let (n, status) = stream_response(&mut c, &tag, &m, &mut w);
    assert_eq!(n, 200);
    assert_eq!(status, format!("{tag} OK Fetch completed."));
    w.assert_within(BUDGET_KIB, "FETCH 1 (BODY.PEEK[] x 200) of a 5 MB message");
}

#[test]
fn fetch_of_sections_holds_one_copy_of_the_message() {
    let t = Tmp::new();
    let m = large_message("five", 5 << 20);
    let body = m[m.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4..].to_vec();
    let s = server_with(&t, std::slice::from_ref(&m));
    let mut c = s.imap("alice");
    c.cmd("SELECT INBOX").assert_ok();
    // BODY[1] of a message that is not multipart is its body (RFC 3501
    // §6.4.5); it needs the message parsed.
    let items = vec!["BODY.PEEK[1]"; 50].join(" ");
    let mut w = Watch::start(&s);
    let tag = c.next_tag();
    c.send(format!("{tag} FETCH 1 (BODYSTRUCTURE {items})\r\n").as_bytes());
    let (n, status) = stream_response(&mut c, &tag, &body, &mut w);
    assert_eq!(n, 50);
    assert_eq!(status, format!("{tag} OK Fetch completed."));
    w.assert_within(BUDGET_KIB + (m.len() >> 10) as u64, "FETCH 1 (BODY.PEEK[1] x 50) of a 5 MB message");
}

/// About 30 MB: a header line of 4 MB, ordinary text, and a 10 MB line
/// that starts with `>` (a quoted reply pasted without line breaks, which
/// an MTA delivers as it is): the long lines are what a server that
/// handles mail a line at a time holds whole.
fn long_lines_message() -> Vec<u8> {
    let mut m = b"From: long@example.org\r\nX-Long: ".to_vec();
    m.extend(std::iter::repeat_n(b'h', 4 << 20));
    m.extend_from_slice(b"\r\nSubject: long lines\r\n\r\n");
    let text = large_message("thirty", 16 << 20);
    m.extend_from_slice(&text[text.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4..]);
    m.push(b'>');
    m.extend(std::iter::repeat_n(b'q', 10 << 20));
    m.extend_from_slice(b"\r\nthe end\r\n");
    m
}

#[test]
fn retr_of_a_30_mb_message_streams_under_the_budget() {
    let t = Tmp::new();
    let m = long_lines_message();
    let s = server_with(&t, std::slice::from_ref(&m));
    let mut p = Pop3::login(s.pop3, "alice");
    let mut w = Watch::start(&s);
    assert_eq!(p.cmd("RETR 1"), format!("+OK {} octets", m.len()));
    let mut got = Vec::with_capacity(m.len());
    loop {
        let mut l = Vec::new();
        assert!(p.r.read_until(b'\n', &mut l).unwrap() > 0, "connection closed inside RETR");
        if l == b".\r\n" {
            break;
        }
        got.extend_from_slice(if l.starts_with(b".") { &l[1..] } else { &l });
        if got.len() % (4 << 20) < l.len() {
            w.sample();
        }
    }
    assert!(got == m, "RETR 1 sent {} bytes that are not the message", got.len());
    w.assert_within(BUDGET_KIB, "RETR of a 30 MB message");
    assert!(p.cmd("QUIT").starts_with("+OK"));
}

//! A small IMAP client for the benchmark: plain TCP, one write per
//! command, one reusable read buffer, and a reader that knows where a
//! response ends. A response line that ends in `{n}` is followed by a
//! literal of exactly `n` octets and then by the rest of the response
//! (RFC 3501 §4.3), so a FETCH of message bodies is counted in octets,
//! never cut at a line end inside a body.
//!
//! Any `NO`, `BAD` or `BYE`, a line without CRLF, a closed connection or
//! a time-out is an error that names the server, the user and the command.

use std::io::Write;
use std::time::{Duration, Instant};

use super::common::conn::Conn;
use super::common::Res;

/// How long the client waits for any reply before it calls the server hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the untagged responses of one command added up to.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Untagged responses.
    pub untagged: u64,
    /// Untagged `FETCH` responses.
    pub fetches: u64,
    /// Octets inside literals.
    pub literal_octets: u64,
    /// Literals.
    pub literals: u64,
    /// Every octet the server sent for the command, the tagged line included.
    pub octets: u64,
    /// The number of the last `* n EXISTS`.
    pub exists: Option<u32>,
}

/// One command's outcome: the time from the start of its write to the
/// end of its tagged `OK`, and what came with it.
#[derive(Debug, Clone)]
pub struct Done {
    pub elapsed: Duration,
    /// When the tagged `OK` was read.
    pub at: Instant,
    pub tally: Tally,
    /// The tagged line, without tag and CRLF.
    pub status: String,
}

/// One complete response: its text with every literal left out (the
/// `{n}` markers stay), and the literals' octets when asked for.
pub struct Response<'a> {
    pub text: &'a [u8],
    pub literal_octets: u64,
    pub literals: u64,
}

impl Response<'_> {
    /// The `n` of `* n WORD`, when the response is of that form.
    pub fn numbered(&self, word: &str) -> Option<u32> {
        let t = self.text.strip_prefix(b"* ")?;
        let sp = t.iter().position(|&b| b == b' ')?;
        let n: u32 = std::str::from_utf8(&t[..sp]).ok()?.parse().ok()?;
        let rest = &t[sp + 1..];
        let w = word.as_bytes();
        (rest.len() >= w.len()
            && rest[..w.len()].eq_ignore_ascii_case(w)
            && rest.get(w.len()).is_none_or(|&b| b == b' '))
        .then_some(n)
    }

    pub fn contains(&self, needle: &str) -> bool {
        memchr::memmem::find(self.text, needle.as_bytes()).is_some()
    }
}

pub struct Imap {
    c: Conn,
    /// The current response's text (literals left out).
    text: Vec<u8>,
    tag: u32,
    /// "postroom user carol": the start of every error message.
    who: String,
}

impl Imap {
    /// Connects to 127.0.0.1:`port` and reads the greeting (`* OK`).
    /// `buf` is the size of the read buffer (it grows for longer lines).
    pub fn connect(server: &str, port: u16, buf: usize) -> Res<Imap> {
        let who = server.to_string();
        let conn = Conn::connect(&who, port, REPLY_TIMEOUT, buf)?;
        let mut c = Imap { c: conn, text: Vec::new(), tag: 0, who };
        c.response(|_| Ok(())).map_err(|e| format!("{e} (waiting for the greeting)"))?;
        if !c.text.starts_with(b"* OK") {
            return Err(format!("{}: greeting {:?}", c.who, String::from_utf8_lossy(&c.text)));
        }
        Ok(c)
    }

    /// Reads one complete response into `self.text` (without its final
    /// CRLF). Each literal's octets go to `lit` (in pieces) and are not
    /// kept. Returns (literal octets, literals).
    fn response(&mut self, mut lit: impl FnMut(&[u8]) -> Res<()>) -> Res<(u64, u64)> {
        self.text.clear();
        let (mut octets, mut literals) = (0u64, 0u64);
        loop {
            let line = self.c.line(&self.who)?;
            let line = &line[..line.len() - 2];
            self.text.extend_from_slice(line);
            let Some(n) = literal_size(line) else { return Ok((octets, literals)) };
            literals += 1;
            octets += n;
            // The literal: taken from the buffer, then straight from the socket.
            let mut left = n;
            while left > 0 {
                let piece = self.c.take(&self.who, left)?;
                left -= piece.len() as u64;
                lit(piece)?;
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Res<()> {
        self.c.s.write_all(bytes).map_err(|e| format!("{}: write: {e}", self.who))
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("a{}", self.tag)
    }

    /// Reads responses up to the one tagged `tag`; every untagged one is
    /// counted and shown to `each`, and every literal octet to `lit`.
    fn until_tagged(
        &mut self,
        tag: &str,
        shown: &str,
        start: Instant,
        mut each: impl FnMut(&Response) -> Res<()>,
        mut lit: impl FnMut(&[u8]) -> Res<()>,
    ) -> Res<Done> {
        let mut t = Tally::default();
        let read0 = self.c.consumed();
        loop {
            let (lo, ln) = self.response(&mut lit).map_err(|e| format!("{e} (waiting for the reply to {shown})"))?;
            let text = &self.text;
            if text.starts_with(tag.as_bytes()) && text.get(tag.len()) == Some(&b' ') {
                let at = Instant::now();
                let elapsed = at - start;
                let status = String::from_utf8_lossy(&text[tag.len() + 1..]).into_owned();
                if !status.starts_with("OK") {
                    return Err(format!("{}: {shown} -> {status}", self.who));
                }
                t.octets = self.c.consumed() - read0;
                return Ok(Done { elapsed, at, tally: t, status });
            }
            if text.starts_with(b"* BYE") {
                return Err(format!("{}: {shown} -> {}", self.who, String::from_utf8_lossy(text)));
            }
            if !text.starts_with(b"* ") && !text.starts_with(b"+") {
                return Err(format!("{}: {shown}: unexpected line {:?}", self.who, String::from_utf8_lossy(text)));
            }
            let r = Response { text, literal_octets: lo, literals: ln };
            t.untagged += 1;
            t.literal_octets += lo;
            t.literals += ln;
            if r.numbered("FETCH").is_some() {
                t.fetches += 1;
            }
            if let Some(n) = r.numbered("EXISTS") {
                t.exists = Some(n);
            }
            each(&r)?;
        }
    }

    /// Sends `tag command` in one write and reads up to the tagged `OK`.
    pub fn cmd(&mut self, command: &str) -> Res<Done> {
        self.cmd_with(command, |_| Ok(()), |_| Ok(()))
    }

    /// [`Imap::cmd`], showing each untagged response to `each` and each
    /// literal's octets to `lit`.
    pub fn cmd_with(
        &mut self,
        command: &str,
        each: impl FnMut(&Response) -> Res<()>,
        lit: impl FnMut(&[u8]) -> Res<()>,
    ) -> Res<Done> {
        let tag = self.next_tag();
        let shown = if command.starts_with("LOGIN ") { "LOGIN ********" } else { command }.to_string();
        let line = format!("{tag} {command}\r\n");
        let start = Instant::now();
        self.write(line.as_bytes())?;
        self.until_tagged(&tag, &shown, start, each, lit)
    }

    /// LOGIN with quoted strings.
    pub fn login(&mut self, user: &str, pass: &str) -> Res<()> {
        self.who = format!("{} user {user}", self.who);
        self.cmd(&format!("LOGIN \"{user}\" \"{pass}\""))?;
        Ok(())
    }

    /// SELECT `mailbox`; checks the EXISTS count when `want` is given.
    pub fn select(&mut self, mailbox: &str, want: Option<u32>) -> Res<Done> {
        let d = self.cmd(&format!("SELECT {mailbox}"))?;
        if let Some(w) = want {
            if d.tally.exists != Some(w) {
                return Err(format!("{}: SELECT {mailbox}: EXISTS {:?}, want {w}", self.who, d.tally.exists));
            }
        }
        Ok(d)
    }

    /// APPEND with a synchronizing literal: the command line, the
    /// server's `+`, then the message in one write.
    pub fn append(&mut self, mailbox: &str, flags: &str, message: &[u8]) -> Res<Done> {
        let tag = self.next_tag();
        let shown = format!("APPEND {mailbox} {{{}}}", message.len());
        let start = Instant::now();
        self.write(format!("{tag} APPEND {mailbox} ({flags}) {{{}}}\r\n", message.len()).as_bytes())?;
        self.response(|_| Ok(())).map_err(|e| format!("{e} (waiting for + after {shown})"))?;
        if !self.text.starts_with(b"+") {
            return Err(format!("{}: {shown} -> {}", self.who, String::from_utf8_lossy(&self.text)));
        }
        let mut m = Vec::with_capacity(message.len() + 2);
        m.extend_from_slice(message);
        m.extend_from_slice(b"\r\n");
        self.write(&m)?;
        self.until_tagged(&tag, &shown, start, |_| Ok(()), |_| Ok(()))
    }

    /// Sends IDLE and waits for the server's `+`. Returns the tag, for [`Imap::done`].
    pub fn idle(&mut self) -> Res<String> {
        let tag = self.next_tag();
        self.write(format!("{tag} IDLE\r\n").as_bytes())?;
        loop {
            self.response(|_| Ok(())).map_err(|e| format!("{e} (waiting for + after IDLE)"))?;
            if self.text.starts_with(b"+") {
                return Ok(tag);
            }
            if !self.text.starts_with(b"* ") {
                return Err(format!("{}: IDLE -> {}", self.who, String::from_utf8_lossy(&self.text)));
            }
        }
    }

    /// Waits, in IDLE, for an untagged response that `want` accepts, up
    /// to `timeout`. Returns when it was read, and the response's text.
    pub fn wait_for(&mut self, timeout: Duration, mut want: impl FnMut(&Response) -> bool) -> Res<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let who = self.who.clone();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(format!("{who}: no notification within {timeout:?}"));
            }
            // Only the wait for the next octet is bounded by the deadline.
            if self.c.drained() {
                self.c.s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
            }
            let r = self.response(|_| Ok(()));
            let at = Instant::now();
            let _ = self.c.s.set_read_timeout(Some(REPLY_TIMEOUT));
            match r {
                Ok((lo, ln)) => {
                    let r = Response { text: &self.text, literal_octets: lo, literals: ln };
                    if !r.text.starts_with(b"* ") {
                        break Err(format!("{who}: in IDLE: {:?}", String::from_utf8_lossy(r.text)));
                    }
                    if want(&r) {
                        break Ok((at, String::from_utf8_lossy(r.text).into_owned()));
                    }
                }
                Err(e) if e.ends_with("no reply in time") => {
                    break Err(format!("{who}: no notification within {timeout:?}"));
                }
                Err(e) => break Err(e),
            }
        };
        result
    }

    /// Ends IDLE (`DONE`) and reads up to its tagged `OK`.
    pub fn done(&mut self, tag: &str) -> Res<Done> {
        let start = Instant::now();
        self.write(b"DONE\r\n")?;
        self.until_tagged(tag, "IDLE ... DONE", start, |_| Ok(()), |_| Ok(()))
    }

    /// LOGOUT: `* BYE`, the tagged `OK`, then the server closes.
    pub fn logout(mut self) -> Res<()> {
        let tag = self.next_tag();
        self.write(format!("{tag} LOGOUT\r\n").as_bytes())?;
        loop {
            self.response(|_| Ok(())).map_err(|e| format!("{e} (waiting for the reply to LOGOUT)"))?;
            if self.text.starts_with(b"* BYE") {
                continue;
            }
            if self.text.starts_with(tag.as_bytes()) {
                break;
            }
            if !self.text.starts_with(b"* ") {
                return Err(format!("{}: LOGOUT -> {}", self.who, String::from_utf8_lossy(&self.text)));
            }
        }
        self.c.wait_close(&self.who, "LOGOUT")
    }
}

/// The `n` of a line that ends in `{n}` (a literal follows).
fn literal_size(line: &[u8]) -> Option<u64> {
    let body = line.strip_suffix(b"}")?;
    let open = memchr::memrchr(b'{', body)?;
    let digits = &body[open + 1..];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

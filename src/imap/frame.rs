//! Reading one IMAP command from the wire: its lines and the literals
//! between them (RFC 3501 §2.2 and §4.3, RFC 7888 LITERAL+), under size
//! caps, before any grammar looks at it.
//!
//! A line that ends with a literal announcement, `{n}` or `{n+}`, is
//! followed by exactly `n` bytes and then by the rest of the command on
//! the next line. For the synchronizing form `{n}` the client waits for a
//! command continuation request (`+ Ready for literal data`) first; for the
//! non-synchronizing form `{n+}` it sends the bytes at once.
//!
//! [`read_command`] returns the command as one buffer, in the form the
//! parser ([`super::parse`]) reads: the lines without their line ends,
//! except that each literal announcement is followed by CRLF and then the
//! literal's bytes, exactly as sent (NUL, CR, LF and 8-bit bytes
//! included). A line that ended in a bare LF before a literal thus reads
//! as if it had ended in CRLF; the command's last line end is not part of
//! the buffer.
//!
//! Limits ([`Limits`]): the command's text (its lines, not counting
//! literals) is at most `max_line` bytes, each literal at most
//! `max_literal` bytes, and there are at most `max_literals` literals.
//! The literals of one command together carry at most `max_literal_total`
//! bytes: after login `max_literal + max_line`, one message of the largest
//! size with strings beside it (a mailbox name sent as a literal, say). A
//! command thus holds at most `max_line + max_literal_total` bytes in
//! memory, and literal data is stored as it arrives, so an announced size
//! costs nothing until the bytes come. Before login the session frames
//! with [`Limits::PRELOGIN`]: enough for a user name and a password, a few
//! KB in all, whatever size a client announces.
//!
//! The wire hears when a command's literal is coming and when the command
//! has ended ([`Wire::expect_literal`], [`Wire::end_command`]): the
//! connection bounds the time from a command's first byte to its end.
//!
//! What the session does after each [`FrameError`] is part of the type's
//! documentation: some keep the session going, some must end it, because
//! the client has sent bytes that can no longer be told apart from
//! commands.

use std::fmt;
use std::io::{self, Read, Write};

use crate::net::{Conn, LineError};

/// The continuation request sent before a synchronizing literal is read.
pub const LITERAL_CONTINUATION: &str = "Ready for literal data";

/// Literal data is read in pieces of this size, so that memory is taken
/// as the bytes arrive rather than when a size is announced.
const LITERAL_CHUNK: usize = 64 * 1024;

/// Where commands come from: a connection, or a test's bytes.
pub trait Wire {
    /// One line without its line end (CRLF or bare LF). A line of more
    /// than `max` bytes is read to its end and thrown away, and the answer
    /// is [`LineError::TooLong`] (as [`Conn::read_line`] does).
    fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError>;
    /// Exactly `buf.len()` bytes; `UnexpectedEof` if the peer closes first.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// Sends a command continuation request, `+ text` and CRLF, and
    /// flushes it.
    fn continuation(&mut self, text: &str) -> io::Result<()>;
    /// The command announced a literal of `size` bytes that will be read.
    fn expect_literal(&mut self, _size: u64) {}
    /// The command has been read, whole or not: the next byte starts the
    /// next one.
    fn end_command(&mut self) {}
}

impl Wire for Conn {
    fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        Conn::read_part(self, max)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        Read::read_exact(self, buf)
    }

    fn continuation(&mut self, text: &str) -> io::Result<()> {
        write!(self, "+ {text}\r\n")?;
        self.flush()
    }

    fn expect_literal(&mut self, size: u64) {
        Conn::expect_literal(self, size)
    }

    fn end_command(&mut self) {
        Conn::command_done(self)
    }
}

/// The caps on one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The command's text, all its lines together without line ends and
    /// without literal data (`imap-max-line-length`).
    pub max_line: usize,
    /// One literal (`imap-max-literal`); see the module documentation for
    /// the cap on all literals of a command.
    pub max_literal: u64,
    /// Literals in one command.
    pub max_literals: usize,
    /// All literals of one command together.
    pub max_literal_total: u64,
}

impl Limits {
    /// After login: `max_line` of text, literals of up to `max_literal`,
    /// and `max_literal + max_line` of literal data in all.
    pub fn new(max_line: usize, max_literal: u64, max_literals: usize) -> Limits {
        Limits { max_line, max_literal, max_literals, max_literal_total: max_literal.saturating_add(max_line as u64) }
    }

    /// Before login: a command carries a user name and a password, or a
    /// SASL initial response (`crate::limits`, RFC 3501 §7.1 and RFC 7888
    /// §4 let a server refuse larger literals). LOGIN has two literals; ID
    /// may have a few.
    pub const PRELOGIN: Limits = Limits {
        max_line: crate::limits::PRELOGIN_LINE,
        max_literal: crate::limits::PRELOGIN_LITERAL,
        max_literals: 4,
        max_literal_total: crate::limits::PRELOGIN_LITERALS,
    };
}

impl Default for Limits {
    /// 64 KiB of text, literals up to [`crate::limits::MAX_MESSAGE_SIZE`],
    /// and 64 literals: a search for a few non-ASCII strings in several
    /// header fields, each sent as a literal, stays well below that.
    fn default() -> Limits {
        Limits::new(64 * 1024, crate::limits::MAX_MESSAGE_SIZE, 64)
    }
}

/// Why no command could be read.
#[derive(Debug)]
pub enum FrameError {
    /// The command's text is longer than `max_line`. The line that went
    /// over was read to its end and thrown away, so the session answers
    /// `BAD` (tagged if the tag is known) and reads the next command.
    ///
    /// The tag is unknown when the first line is the one that is too long,
    /// since the line reader keeps none of it. If the discarded line ended
    /// with a non-synchronizing literal, that literal's bytes will be read
    /// as commands: they are the client's own bytes and get the same
    /// checks as any command.
    TooLong { tag: Option<String> },
    /// A literal is larger than `max_literal`, or than what the command's
    /// literals may still carry. Nothing of it has been read.
    ///
    /// Synchronizing (`sync`): no continuation was sent, so a conforming
    /// client sends nothing more of this command; the session answers
    /// `NO [TOOBIG]` (tagged) and goes on. Non-synchronizing: the client is
    /// sending the bytes anyway, and they cannot be told apart from
    /// commands; the session sends `BYE` and closes the connection
    /// (reading and dropping a size the client chose, up to 2^64 bytes,
    /// would be worse).
    LiteralTooBig { tag: Option<String>, size: u64, sync: bool },
    /// The command announces more than `max_literals` literals. The
    /// session answers `BAD` (tagged if the tag is known) and reads the
    /// next command: if the literal that went over is synchronizing,
    /// nothing of it was read and no continuation sent, so a conforming
    /// client sends no more of the command; if it is non-synchronizing,
    /// the rest of the command (its literals still under the size limits)
    /// has been read and thrown away.
    TooManyLiterals { tag: Option<String> },
    /// The peer closed the connection, perhaps in the middle of a command.
    Eof,
    /// Timeout or I/O error: the session ends.
    Io(io::Error),
}

impl FrameError {
    /// The tag of the command that failed, if it is known.
    pub fn tag(&self) -> Option<&str> {
        match self {
            FrameError::TooLong { tag }
            | FrameError::LiteralTooBig { tag, .. }
            | FrameError::TooManyLiterals { tag } => tag.as_deref(),
            FrameError::Eof | FrameError::Io(_) => None,
        }
    }

    /// Whether the session can answer and read the next command, rather
    /// than close the connection.
    pub fn is_recoverable(&self) -> bool {
        match self {
            FrameError::TooLong { .. } | FrameError::TooManyLiterals { .. } => true,
            FrameError::LiteralTooBig { sync, .. } => *sync,
            FrameError::Eof | FrameError::Io(_) => false,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { .. } => f.write_str("Command line too long"),
            FrameError::LiteralTooBig { size, .. } => write!(f, "Literal of {size} bytes is too big"),
            FrameError::TooManyLiterals { .. } => f.write_str("Too many literals in one command"),
            FrameError::Eof => f.write_str("connection closed by peer"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    /// A short read is the peer going away; anything else is I/O trouble.
    fn from(e: io::Error) -> FrameError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Eof
        } else {
            FrameError::Io(e)
        }
    }
}

impl From<LineError> for FrameError {
    /// `TooLong` is handled where the tag is known; here it has none.
    fn from(e: LineError) -> FrameError {
        match e {
            LineError::TooLong => FrameError::TooLong { tag: None },
            LineError::Eof => FrameError::Eof,
            LineError::Io(e) => FrameError::Io(e),
        }
    }
}

/// Reads one complete command: its first line, and while a line ends with
/// a literal announcement, the literal and the line after it. See the
/// module documentation for the buffer's form and the limits.
pub fn read_command(w: &mut impl Wire, limits: &Limits) -> Result<Vec<u8>, FrameError> {
    let command = read_parts(w, limits);
    if !matches!(command, Err(FrameError::Io(_))) {
        w.end_command();
    }
    command
}

fn read_parts(w: &mut impl Wire, limits: &Limits) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::new();
    let mut tag: Option<String> = None;
    let mut literals = 0usize;
    let mut literal_bytes = 0u64;
    let mut text = 0usize;
    let literal_budget = limits.max_literal_total;
    // Set when a non-synchronizing literal goes over the count: the rest
    // of the command is read and thrown away, to stay in step.
    let mut dropping = false;
    loop {
        let line = match w.read_line(limits.max_line.saturating_sub(text)) {
            Ok(line) => line,
            Err(LineError::TooLong) => return Err(FrameError::TooLong { tag }),
            Err(e) => return Err(e.into()),
        };
        if literals == 0 {
            tag = super::parse::tag_of(&line);
        }
        text += line.len();
        if !dropping {
            buf.extend_from_slice(&line);
        }
        let Some((size, sync)) = literal_announcement(&line) else {
            return if dropping { Err(FrameError::TooManyLiterals { tag }) } else { Ok(buf) };
        };
        literals += 1;
        if literals > limits.max_literals && !dropping {
            dropping = true;
            buf = Vec::new();
        }
        if dropping && sync {
            // The client waits for a continuation that will not come; the
            // answer to the command ends it.
            return Err(FrameError::TooManyLiterals { tag });
        }
        if size > limits.max_literal || size > literal_budget - literal_bytes {
            return Err(FrameError::LiteralTooBig { tag, size, sync });
        }
        w.expect_literal(size);
        if sync {
            w.continuation(LITERAL_CONTINUATION)?;
        }
        literal_bytes += size;
        if dropping {
            skip(w, size)?;
            continue;
        }
        buf.extend_from_slice(b"\r\n");
        // `size` fits in memory: it is at most the literal budget, which
        // the caller chose as an amount it is willing to hold.
        let mut left = size;
        while left > 0 {
            let n = left.min(LITERAL_CHUNK as u64) as usize;
            let start = buf.len();
            buf.resize(start + n, 0);
            w.read_exact(&mut buf[start..])?;
            left -= n as u64;
        }
    }
}

/// Reads `size` bytes and forgets them.
fn skip(w: &mut impl Wire, size: u64) -> io::Result<()> {
    let mut scratch = vec![0u8; size.min(LITERAL_CHUNK as u64) as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(scratch.len() as u64) as usize;
        w.read_exact(&mut scratch[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The literal that `line` announces at its end: `{n}` (synchronizing) or
/// `{n+}` (RFC 7888). The framer frames what any literal-like ending
/// announces, `~{n}` (RFC 3516 literal8) as well, so that the bytes are
/// never taken for commands; whether the grammar allows a literal there is
/// the parser's business. A size beyond `u64` reads as `u64::MAX`, which no
/// limit allows.
fn literal_announcement(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = memchr::memrchr(b'{', inner)?;
    let inner = &inner[open + 1..];
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
    Some((size.unwrap_or(u64::MAX), sync))
}

/// An in-memory [`Wire`] over bytes that arrive in chunks, reading lines
/// as [`Conn`] does. For tests and fuzzing; `sent` collects what the
/// framer wrote back.
#[derive(Debug, Default)]
pub struct MemWire {
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// Input taken from `chunks` and not consumed yet.
    pending: Vec<u8>,
    /// The continuation requests sent, as on the wire.
    pub sent: Vec<u8>,
    /// The literal sizes announced through [`Wire::expect_literal`].
    pub literals: Vec<u64>,
    /// How many commands ended ([`Wire::end_command`]).
    pub ended: usize,
}

impl MemWire {
    /// All input in one chunk.
    pub fn new(input: &[u8]) -> MemWire {
        MemWire::chunked([input.to_vec()])
    }

    /// Input that arrives in the given pieces.
    pub fn chunked(chunks: impl IntoIterator<Item = Vec<u8>>) -> MemWire {
        MemWire { chunks: chunks.into_iter().collect(), ..MemWire::default() }
    }

    /// Whether every byte of input has been consumed.
    pub fn is_drained(&self) -> bool {
        self.pending.is_empty() && self.chunks.iter().all(Vec::is_empty)
    }

    /// Takes the next chunk into `pending`; false when there is none.
    fn fill(&mut self) -> bool {
        match self.chunks.pop_front() {
            Some(chunk) => {
                self.pending.extend_from_slice(&chunk);
                true
            }
            None => false,
        }
    }
}

impl Wire for MemWire {
    fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        let mut discarding = false;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.pending) {
                let mut end = i;
                if end > 0 && self.pending[end - 1] == b'\r' {
                    end -= 1;
                }
                let line = (!discarding && end <= max).then(|| self.pending[..end].to_vec());
                self.pending.drain(..=i);
                return line.ok_or(LineError::TooLong);
            }
            if discarding || self.pending.len() > max.saturating_add(1) {
                discarding = true;
                self.pending.clear();
            }
            if !self.fill() {
                return Err(LineError::Eof);
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        while self.pending.len() < buf.len() {
            if !self.fill() {
                self.pending.clear();
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.copy_from_slice(&self.pending[..buf.len()]);
        self.pending.drain(..buf.len());
        Ok(())
    }

    fn continuation(&mut self, text: &str) -> io::Result<()> {
        self.sent.extend_from_slice(b"+ ");
        self.sent.extend_from_slice(text.as_bytes());
        self.sent.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn expect_literal(&mut self, size: u64) {
        self.literals.push(size);
    }

    fn end_command(&mut self) {
        self.ended += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONT: &[u8] = b"+ Ready for literal data\r\n";

    fn limits(max_line: usize, max_literal: u64, max_literals: usize) -> Limits {
        Limits::new(max_line, max_literal, max_literals)
    }

    /// Every command in `w` until the input ends, errors as their text
    /// with the tag.
    fn commands(w: &mut MemWire, limits: &Limits) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        loop {
            match read_command(w, limits) {
                Ok(c) => out.push(Ok(c)),
                Err(FrameError::Eof) => return out,
                Err(e) => {
                    let stop = !e.is_recoverable();
                    out.push(Err(format!("{:?}: {e}", e.tag())));
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    fn ok(c: &[u8]) -> Result<Vec<u8>, String> {
        Ok(c.to_vec())
    }

    fn err(s: &str) -> Result<Vec<u8>, String> {
        Err(s.to_string())
    }

    #[test]
    fn framing_table() {
        let d = Limits::default();
        let cont2 = [CONT, CONT].concat();
        let cont3 = [CONT, CONT, CONT].concat();
        let cont4 = [CONT, CONT, CONT, CONT].concat();
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&[u8], Limits, Vec<Result<Vec<u8>, String>>, &[u8])> = vec![
            (b"a NOOP\r\nb LOGOUT\r\n", d, vec![ok(b"a NOOP"), ok(b"b LOGOUT")], b""),
            (b"a NOOP\nb LOGOUT\n", d, vec![ok(b"a NOOP"), ok(b"b LOGOUT")], b""),
            (b"\r\n", d, vec![ok(b"")], b""),
            // The line reader keeps a bare CR and NUL; the parser refuses them.
            (b"a NO\rOP\r\n", d, vec![ok(b"a NO\rOP")], b""),
            (b"a NO\0OP\r\n", d, vec![ok(b"a NO\0OP")], b""),
            (b"a NOOP {3}\r\r\n", d, vec![ok(b"a NOOP {3}\r")], b""),
            // A command cut short is no command.
            (b"a NOOP", d, vec![], b""),
            (b"a LOGIN {5}\r\nali", d, vec![], CONT),
            (b"a LOGIN {5}\r\nalice", d, vec![], CONT),
            // Synchronizing and non-synchronizing literals, several in one
            // command, holding anything.
            (
                b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\nb NOOP\r\n",
                d,
                vec![ok(b"a LOGIN {5}\r\nalice {6}\r\nsecret"), ok(b"b NOOP")],
                &cont2,
            ),
            (b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", d, vec![ok(b"a LOGIN {5+}\r\nalice {6+}\r\nsecret")], b""),
            (
                b"a APPEND x {13}\r\n\0\r\n{3}\r\n\xff\r\r\n\n\r\n",
                d,
                vec![ok(b"a APPEND x {13}\r\n\0\r\n{3}\r\n\xff\r\r\n\n")],
                CONT,
            ),
            (b"a APPEND x {0}\r\n\r\n", d, vec![ok(b"a APPEND x {0}\r\n")], CONT),
            (b"a LOGIN {1}\nx y\n", d, vec![ok(b"a LOGIN {1}\r\nx y")], CONT),
            (b"a SELECT ~{1+}\r\nx\r\n", d, vec![ok(b"a SELECT ~{1+}\r\nx")], b""),
            // Not literal announcements.
            (b"a SELECT {x}\r\n", d, vec![ok(b"a SELECT {x}")], b""),
            (b"a SELECT {}\r\n", d, vec![ok(b"a SELECT {}")], b""),
            (b"a SELECT {+}\r\n", d, vec![ok(b"a SELECT {+}")], b""),
            (b"a SELECT {1} \r\n", d, vec![ok(b"a SELECT {1} ")], b""),
            // Overlong lines: without the tag on the first line, with it later.
            (
                b"a SELECT 0123456789\r\nb NOOP\r\n",
                limits(15, 100, 4),
                vec![err("None: Command line too long"), ok(b"b NOOP")],
                b"",
            ),
            (b"a SELECT 01234\r\n", limits(15, 100, 4), vec![ok(b"a SELECT 01234")], b""),
            (
                b"a X {1}\r\nx 0123456789\r\nb NOOP\r\n",
                limits(15, 100, 4),
                vec![err("Some(\"a\"): Command line too long"), ok(b"b NOOP")],
                CONT,
            ),
            (b"a X {1}\r\nx 01234\r\n", limits(15, 100, 4), vec![ok(b"a X {1}\r\nx 01234")], CONT),
            // Literals at the limit and one over it.
            (b"a X {10}\r\n0123456789\r\n", limits(100, 10, 4), vec![ok(b"a X {10}\r\n0123456789")], CONT),
            (
                b"a X {11}\r\nb NOOP\r\n",
                limits(100, 10, 4),
                vec![err("Some(\"a\"): Literal of 11 bytes is too big"), ok(b"b NOOP")],
                b"",
            ),
            (
                b"a X {11+}\r\n0123456789a\r\nb NOOP\r\n",
                limits(100, 10, 4),
                vec![err("Some(\"a\"): Literal of 11 bytes is too big")],
                b"",
            ),
            (
                b"a X {99999999999999999999999}\r\n",
                limits(100, 10, 4),
                vec![err("Some(\"a\"): Literal of 18446744073709551615 bytes is too big")],
                b"",
            ),
            // All literals together: max_literal + max_line, here 34.
            (
                b"a X {10}\r\n0123456789 {10}\r\n0123456789 {10}\r\n0123456789 {4}\r\nabcd\r\n",
                limits(24, 10, 8),
                vec![ok(b"a X {10}\r\n0123456789 {10}\r\n0123456789 {10}\r\n0123456789 {4}\r\nabcd")],
                &cont4,
            ),
            (
                b"a X {10}\r\n0123456789 {10}\r\n0123456789 {10}\r\n0123456789 {5}\r\nb NOOP\r\n",
                limits(24, 10, 8),
                vec![err("Some(\"a\"): Literal of 5 bytes is too big"), ok(b"b NOOP")],
                &cont3,
            ),
            // Literal count.
            (
                b"a X {1}\r\n1 {1}\r\n2 {1}\r\nc NOOP\r\n",
                limits(100, 10, 2),
                vec![err("Some(\"a\"): Too many literals in one command"), ok(b"c NOOP")],
                &cont2,
            ),
            (
                b"a X {1+}\r\n1 {1+}\r\n2 {1+}\r\n3 {2+}\r\n45\r\nc NOOP\r\n",
                limits(100, 10, 2),
                vec![err("Some(\"a\"): Too many literals in one command"), ok(b"c NOOP")],
                b"",
            ),
            (
                b"a X {1+}\r\n1 {1+}\r\n2 {1+}\r\n3 {2}\r\nc NOOP\r\n",
                limits(100, 10, 2),
                vec![err("Some(\"a\"): Too many literals in one command"), ok(b"c NOOP")],
                b"",
            ),
            (
                b"a X {1+}\r\n1 {1+}\r\n2 {1+}\r\n3 {11+}\r\n",
                limits(100, 10, 2),
                vec![err("Some(\"a\"): Literal of 11 bytes is too big")],
                b"",
            ),
            (b"a X {1}\r\n1 {1}\r\n2\r\n", limits(100, 10, 2), vec![ok(b"a X {1}\r\n1 {1}\r\n2")], &cont2),
        ];
        for (input, limits, want, sent) in cases {
            let mut w = MemWire::new(input);
            let got = commands(&mut w, &limits);
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
            assert_eq!(w.sent, sent, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    /// The same commands, whatever pieces the input arrives in.
    #[test]
    fn input_split_at_every_byte() {
        let input: &[u8] = b"a LOGIN {5}\r\nal\rce {6+}\r\nse\0\r\nt\r\nb NOOP\nc APPEND x (\\Seen) {4}\r\n{1}\n\r\n\
            d SELECT 0123456789012345678901234567890123456789\r\ne X {3}\r\nabc\r\n";
        let l = limits(32, 100, 4);
        let whole = commands(&mut MemWire::new(input), &l);
        assert_eq!(
            whole,
            vec![
                ok(b"a LOGIN {5}\r\nal\rce {6+}\r\nse\0\r\nt"),
                ok(b"b NOOP"),
                ok(b"c APPEND x (\\Seen) {4}\r\n{1}\n"),
                err("None: Command line too long"),
                ok(b"e X {3}\r\nabc"),
            ]
        );
        for split in 0..=input.len() {
            let mut w = MemWire::chunked([input[..split].to_vec(), input[split..].to_vec()]);
            assert_eq!(commands(&mut w, &l), whole, "split at {split}");
            assert_eq!(w.sent, [CONT, CONT, CONT].concat());
        }
        let mut w = MemWire::chunked(input.iter().map(|&b| vec![b]));
        assert_eq!(commands(&mut w, &l), whole, "byte by byte");
        assert!(w.is_drained());
    }

    #[test]
    fn errors_carry_the_tag_and_say_whether_the_session_goes_on() {
        let l = limits(100, 10, 1);
        let e = read_command(&mut MemWire::new(b"t1 APPEND x {11}\r\n"), &l).unwrap_err();
        assert!(matches!(&e, FrameError::LiteralTooBig { tag: Some(t), size: 11, sync: true } if t == "t1"));
        assert!(e.is_recoverable());
        let e = read_command(&mut MemWire::new(b"+x APPEND x {11+}\r\n"), &l).unwrap_err();
        assert!(matches!(e, FrameError::LiteralTooBig { tag: None, size: 11, sync: false }));
        assert!(!e.is_recoverable());
        let mut w = MemWire::new(b"t2 X {1}\r\nx {1+}\r\ny {2+}\r\nzz\r\nt3 NOOP\r\n");
        let e = read_command(&mut w, &l).unwrap_err();
        assert!(matches!(&e, FrameError::TooManyLiterals { tag: Some(t) } if t == "t2"));
        assert!(e.is_recoverable());
        assert_eq!(read_command(&mut w, &l).unwrap(), b"t3 NOOP");
        let e = read_command(&mut MemWire::new(b"t3 X {1}\r\nx"), &l).unwrap_err();
        assert!(matches!(e, FrameError::Eof));
        assert!(!e.is_recoverable());
    }

    #[test]
    fn large_literals_arrive_in_pieces() {
        let size = 3 * LITERAL_CHUNK + 17;
        let mut input = format!("a APPEND INBOX {{{size}+}}\r\n").into_bytes();
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n");
        let chunks: Vec<Vec<u8>> = input.chunks(1000).map(<[u8]>::to_vec).collect();
        let got = read_command(&mut MemWire::chunked(chunks), &Limits::default()).unwrap();
        assert!(got.ends_with(&body));
        let parsed = super::super::parse::parse(&got, &Default::default()).unwrap();
        assert!(matches!(parsed.command, crate::imap::command::Command::Append { message, .. } if message == body));
    }

    #[test]
    fn before_login_a_command_holds_a_user_name_and_a_password() {
        let p = Limits::PRELOGIN;
        let pw = vec![b'p'; 1024];
        let mut login = b"a LOGIN {256}\r\n".to_vec();
        login.extend_from_slice(&[b'u'; 256]);
        login.extend_from_slice(b" {1024+}\r\n");
        login.extend_from_slice(&pw);
        login.extend_from_slice(b"\r\n");
        let mut w = MemWire::new(&login);
        let got = read_command(&mut w, &p).unwrap();
        assert!(got.ends_with(&pw));
        assert_eq!((w.literals.clone(), w.ended), (vec![256, 1024], 1));
        // One byte over a password, or over a name and a password together.
        let e = read_command(&mut MemWire::new(b"a LOGIN {1025}\r\n"), &p).unwrap_err();
        assert!(matches!(e, FrameError::LiteralTooBig { size: 1025, sync: true, .. }), "{e:?}");
        let mut input = b"a LOGIN {1024}\r\n".to_vec();
        input.extend_from_slice(&pw);
        input.extend_from_slice(b" {1025+}\r\n");
        let e = read_command(&mut MemWire::new(&input), &p).unwrap_err();
        assert!(matches!(e, FrameError::LiteralTooBig { size: 1025, sync: false, .. }), "{e:?}");
        let mut input = b"a X {1024}\r\n".to_vec();
        input.extend_from_slice(&pw);
        input.extend_from_slice(b" {1024}\r\n");
        input.extend_from_slice(&pw);
        input.extend_from_slice(b" {1}\r\n");
        let e = read_command(&mut MemWire::new(&input), &p).unwrap_err();
        assert!(matches!(e, FrameError::LiteralTooBig { size: 1, .. }), "{e:?}");
        // The 50 MB literal of an APPEND is refused at its announcement,
        // and nothing of it is read or held.
        let e = read_command(&mut MemWire::new(b"a LOGIN {52427800+}\r\n"), &p).unwrap_err();
        assert!(matches!(e, FrameError::LiteralTooBig { size: 52427800, sync: false, .. }), "{e:?}");
        assert!(!e.is_recoverable());
        // The text of a command: 4 KiB, enough for SASL-IR of the longest login.
        let line = format!("a AUTHENTICATE PLAIN {}\r\n", "A".repeat(2052));
        assert!(read_command(&mut MemWire::new(line.as_bytes()), &p).is_ok());
        let line = format!("a AUTHENTICATE PLAIN {}\r\n", "A".repeat(4096));
        let e = read_command(&mut MemWire::new(line.as_bytes()), &p).unwrap_err();
        assert!(matches!(e, FrameError::TooLong { tag: None }), "{e:?}");
        // Refusals end the command too; only I/O errors leave it open.
        let mut w = MemWire::new(b"a LOGIN {1025}\r\nb NOOP\r\n");
        let _ = read_command(&mut w, &p);
        assert_eq!(read_command(&mut w, &p).unwrap(), b"b NOOP");
        assert_eq!((w.ended, w.literals.len()), (2, 0));
    }

    #[test]
    fn over_a_connection() {
        use std::net::{TcpListener, TcpStream};
        use std::time::Duration;

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, peer) = l.accept().unwrap();
        let mut conn = Conn::new(server, peer, crate::net::Via::Standalone);
        conn.set_timeout(Duration::from_secs(10));
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

        let writer = std::thread::spawn(move || {
            client.write_all(b"a LOGIN {5}\r\n").unwrap();
            let mut cont = [0u8; CONT.len()];
            client.read_exact(&mut cont).unwrap();
            assert_eq!(cont, CONT);
            client.write_all(b"alice {2+}\r\n\0\n\r\nb NOOP\r\n").unwrap();
        });
        let got = read_command(&mut conn, &Limits::default()).unwrap();
        assert_eq!(got, b"a LOGIN {5}\r\nalice {2+}\r\n\0\n");
        assert_eq!(read_command(&mut conn, &Limits::default()).unwrap(), b"b NOOP");
        writer.join().unwrap();
    }
}

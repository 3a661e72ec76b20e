//! Responses: IMAP strings (RFC 3501 §4.3, §9 `string`, `nstring`,
//! `astring`: an atom where the grammar allows one, a quoted string when
//! the bytes fit one, a literal otherwise), and the one place where errors
//! become `NO`, `BAD` and `BYE` (RFC 3501 §7.1, response codes of RFC 5530).

use std::fmt;
use std::io;

use crate::net::conn::{self, Cutoff};
use crate::store::StoreError;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum ImapError {
    /// The command was malformed or is not allowed in this state: `BAD`.
    Bad(String),
    /// Refused: `NO [code] text`.
    No(Option<&'static str>, String),
    /// The store said no; mapped to a response code below.
    Store(StoreError),
    /// The session must end: `* BYE text`.
    Bye(String),
    /// A deadline passed, or the connection was closed to make room: the
    /// session ends with a `BYE` that says which.
    Cutoff(Cutoff),
    /// A literal larger than the session takes. Synchronizing (`sync`):
    /// refused with `NO [TOOBIG]` before the client sends it, and the
    /// session goes on. Non-synchronizing: the client is sending it anyway
    /// and its bytes cannot be told from commands (RFC 7888 §4), so the
    /// session ends with `BYE`.
    LiteralTooBig { size: u64, limit: u64, before_login: bool, sync: bool },
    /// The connection is gone.
    Io(io::Error),
    /// A response was partly sent and can't be finished as it began (a
    /// literal's length was announced, see store::reader): the session
    /// ends at once, without another byte, not even a BYE.
    Cut(StoreError),
}

impl ImapError {
    pub fn no(text: impl Into<String>) -> ImapError {
        ImapError::No(None, text.into())
    }

    pub fn bad(text: impl Into<String>) -> ImapError {
        ImapError::Bad(text.into())
    }

    /// True when the session ends after this.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ImapError::Bye(_) | ImapError::Cutoff(_) | ImapError::Io(_) | ImapError::Cut(_))
            || matches!(self, ImapError::LiteralTooBig { sync: false, .. })
    }

    /// The tagged (or, for BYE, untagged) response line, without CRLF.
    /// Internal failures say only that; the details go to the log.
    pub fn wire(&self, tag: &str) -> String {
        match self {
            ImapError::Bad(t) => format!("{tag} BAD {t}"),
            ImapError::No(Some(code), t) => format!("{tag} NO [{code}] {t}"),
            ImapError::No(None, t) => format!("{tag} NO {t}"),
            ImapError::Store(e) => {
                let (code, text) = store_error(e);
                format!("{tag} NO [{code}] {text}")
            }
            ImapError::Bye(t) => format!("* BYE {t}"),
            ImapError::Cutoff(c) => format!("* BYE {}", farewell(*c)),
            ImapError::LiteralTooBig { sync: false, .. } => "* BYE Literal too large.".to_string(),
            ImapError::LiteralTooBig { size, limit, before_login, sync: true } => {
                let when = if *before_login { " before login" } else { "" };
                format!("{tag} NO [TOOBIG] Literal of {size} bytes is larger than the limit of {limit}{when}.")
            }
            ImapError::Io(_) => "* BYE Connection error".to_string(),
            // Never sent (see the variant); for the log.
            ImapError::Cut(_) => "* BYE Internal error; see server log.".to_string(),
        }
    }
}

/// The text of the `BYE` that ends a session for a cutoff.
fn farewell(c: Cutoff) -> &'static str {
    match c {
        Cutoff::Idle => "Disconnected for inactivity.",
        Cutoff::Login => "Disconnected: no login in time.",
        Cutoff::Command => "Disconnected: the command took too long to arrive.",
        Cutoff::Evicted => "Too many connections waiting to log in, try again later.",
    }
}

/// The response code and text for a store error (RFC 5530 codes;
/// TOOBIG is RFC 4469's, TRYCREATE RFC 3501's).
pub fn store_error(e: &StoreError) -> (&'static str, &'static str) {
    match e {
        StoreError::LockTimeout(_) => ("INUSE", "Mailbox is locked by another program; try again later."),
        StoreError::InUse(_) => ("INUSE", "Mailbox is in use by a POP3 session; try again later."),
        StoreError::NoSuchMailbox(_) => ("NONEXISTENT", "Mailbox doesn't exist."),
        StoreError::AlreadyExists(_) => ("ALREADYEXISTS", "Mailbox already exists."),
        StoreError::BadName(_) => ("CANNOT", "Invalid mailbox name."),
        StoreError::NotAllowed(_) => ("CANNOT", "Not allowed on this mailbox."),
        StoreError::Corrupt(..) => ("CORRUPTION", "Mailbox file is damaged; see server log."),
        StoreError::TooBig(_) => ("TOOBIG", "Message too large."),
        StoreError::NoSpace => ("OVERQUOTA", "Not enough disk space."),
        StoreError::Changed(_) => ("UNAVAILABLE", "Mailbox changed; try again."),
        StoreError::Diverged(..) => ("UNAVAILABLE", "Message changed while it was being read; try again."),
        StoreError::Io(..) => ("SERVERBUG", "Internal error; see server log."),
    }
}

impl fmt::Display for ImapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImapError::Bad(t) | ImapError::No(_, t) | ImapError::Bye(t) => f.write_str(t),
            ImapError::Cutoff(c) => write!(f, "{c}"),
            ImapError::LiteralTooBig { size, limit, .. } => write!(f, "literal of {size} bytes over {limit}"),
            ImapError::Store(e) => write!(f, "{e}"),
            ImapError::Io(e) => write!(f, "{e}"),
            ImapError::Cut(e) => write!(f, "response cut short: {e}"),
        }
    }
}

impl std::error::Error for ImapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImapError::Store(e) | ImapError::Cut(e) => Some(e),
            ImapError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ImapError {
    /// A cutoff becomes its own variant, so that the session can say why
    /// it ends; any other I/O error means the connection is gone.
    fn from(e: io::Error) -> ImapError {
        match conn::cutoff(&e) {
            Some(c) => ImapError::Cutoff(c),
            None => ImapError::Io(e),
        }
    }
}

impl From<StoreError> for ImapError {
    fn from(e: StoreError) -> ImapError {
        ImapError::Store(e)
    }
}

/// Characters that may appear in an atom (RFC 3501 §9 `ATOM-CHAR`).
pub fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// Whether `s` can go in a quoted string: 7-bit, no CR, LF or NUL
/// (RFC 3501 §9 `QUOTED-CHAR`), and short enough to read as one.
fn quotable(s: &[u8]) -> bool {
    s.len() <= 1024 && s.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80)
}

/// A `string`: quoted if it can be, else a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    if quotable(s) {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// A literal. NUL bytes may not appear in one (RFC 3501 §4.3): they are
/// sent as 0x80, as other servers do, which keeps the length.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'{');
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.extend_from_slice(b"}\r\n");
    let start = out.len();
    out.extend_from_slice(s);
    for b in &mut out[start..] {
        if *b == 0 {
            *b = 0x80;
        }
    }
}

/// An `nstring`: NIL for `None`.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        None => out.extend_from_slice(b"NIL"),
        Some(s) => string(out, s),
    }
}

/// An `astring`: an atom when every byte is an atom character (or `]`,
/// which `ASTRING-CHAR` allows), else a string.
pub fn astring(out: &mut Vec<u8>, s: &[u8]) {
    if !s.is_empty() && s.iter().all(|&b| is_atom_char(b) || b == b']') {
        out.extend_from_slice(s);
    } else {
        string(out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    #[test]
    fn strings() {
        for (input, expected) in [
            (&b"INBOX"[..], "INBOX"),
            (b"", "\"\""),
            (b"a b", "\"a b\""),
            (b"say \"hi\\\"", "\"say \\\"hi\\\\\\\"\""),
            (b"line\r\nbreak", "{11}\r\nline\r\nbreak"),
            ("Grüße".as_bytes(), "{7}\r\nGrüße"),
        ] {
            assert_eq!(w(|o| astring(o, input)), expected);
        }
        assert_eq!(w(|o| nstring(o, None)), "NIL");
        assert_eq!(w(|o| nstring(o, Some(b"x]"))), "\"x]\"");
        assert_eq!(w(|o| literal(o, b"a\0b")), "{3}\r\na\u{80}b".replace('\u{80}', "\u{fffd}"));
    }

    #[test]
    fn refusals_and_farewells() {
        let big = |before_login, sync| ImapError::LiteralTooBig { size: 5000, limit: 1024, before_login, sync };
        assert_eq!(
            big(true, true).wire("a"),
            "a NO [TOOBIG] Literal of 5000 bytes is larger than the limit of 1024 before login."
        );
        assert_eq!(big(false, true).wire("a"), "a NO [TOOBIG] Literal of 5000 bytes is larger than the limit of 1024.");
        assert!(!big(true, true).is_fatal());
        assert_eq!(big(true, false).wire("a"), "* BYE Literal too large.");
        assert!(big(true, false).is_fatal());
        for (c, text) in [
            (Cutoff::Idle, "* BYE Disconnected for inactivity."),
            (Cutoff::Login, "* BYE Disconnected: no login in time."),
            (Cutoff::Command, "* BYE Disconnected: the command took too long to arrive."),
            (Cutoff::Evicted, "* BYE Too many connections waiting to log in, try again later."),
        ] {
            let e = ImapError::from(io::Error::new(io::ErrorKind::TimedOut, c));
            assert!(matches!(e, ImapError::Cutoff(got) if got == c), "{e:?}");
            assert_eq!(e.wire("t"), text);
            assert!(e.is_fatal());
        }
        assert!(matches!(ImapError::from(io::Error::from(io::ErrorKind::BrokenPipe)), ImapError::Io(_)));
    }
}

//! POP3 errors and how they go on the wire: the one place that turns a
//! [`Pop3Error`] into `-ERR [CODE] text` (RFC 2449 RESP-CODES, RFC 3206
//! SYS/TEMP and SYS/PERM, RFC 3206 AUTH).

use std::fmt;
use std::io;

use crate::net::conn::{self, Cutoff};
use crate::store::StoreError;

#[derive(Debug)]
pub enum Pop3Error {
    /// A known command with bad arguments.
    Syntax(&'static str),
    /// A keyword we do not know.
    Unknown(String),
    /// The command is not valid in this state.
    WrongState,
    /// No message with this number in the maildrop.
    NoSuchMessage(u32),
    /// The message is marked deleted.
    Deleted(u32),
    /// Wrong user or password (after the failure delay).
    AuthFailed,
    /// The client cancelled a SASL exchange with `*`.
    AuthCancelled,
    /// Plaintext passwords are not allowed on this connection.
    PlaintextDisallowed,
    /// A mechanism we do not offer.
    UnknownMechanism,
    /// The maildrop is locked by another POP3 session.
    InUse,
    /// STLS when TLS is not set up or already on.
    NoTls(&'static str),
    /// The message vanished (another program expunged it).
    Vanished(u32),
    /// Lock busy, disk full, user database unreadable: try again later.
    Temporary(String),
    /// The store failed in a way worth logging.
    Store(StoreError),
    /// A deadline passed, or the connection was closed to make room: the
    /// session ends with an `-ERR` that says which.
    Cutoff(Cutoff),
    /// The connection is gone or timed out: end the session.
    Io(io::Error),
    /// A multi-line response was started and can't be finished as it
    /// began (a message changed or vanished while it was being sent, see
    /// store::reader): the session ends without another byte.
    Cut(StoreError),
}

impl From<io::Error> for Pop3Error {
    /// A cutoff becomes its own variant, so that the session can say why
    /// it ends.
    fn from(e: io::Error) -> Self {
        match conn::cutoff(&e) {
            Some(c) => Pop3Error::Cutoff(c),
            None => Pop3Error::Io(e),
        }
    }
}

impl From<StoreError> for Pop3Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InUse(_) => Pop3Error::InUse,
            e if e.is_temporary() => Pop3Error::Temporary(e.to_string()),
            e => Pop3Error::Store(e),
        }
    }
}

impl Pop3Error {
    /// The `-ERR` line (without CRLF). Internal details go to the log,
    /// not to the client.
    pub fn wire(&self) -> String {
        match self {
            Pop3Error::Syntax(t) => format!("-ERR {t}"),
            Pop3Error::Unknown(k) if k.is_empty() => "-ERR Empty command".into(),
            Pop3Error::Unknown(k) => format!("-ERR Unknown command: {k}"),
            Pop3Error::WrongState => "-ERR Command not valid in this state".into(),
            Pop3Error::NoSuchMessage(n) => format!("-ERR There's no message {n}."),
            Pop3Error::Deleted(n) => format!("-ERR Message {n} is deleted."),
            Pop3Error::AuthFailed => "-ERR [AUTH] Authentication failed.".into(),
            Pop3Error::AuthCancelled => "-ERR Authentication cancelled.".into(),
            Pop3Error::PlaintextDisallowed => {
                "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.".into()
            }
            Pop3Error::UnknownMechanism => "-ERR Unsupported authentication mechanism.".into(),
            Pop3Error::InUse => "-ERR [IN-USE] Mailbox is locked by another POP3 session.".into(),
            Pop3Error::NoTls(t) => format!("-ERR {t}"),
            Pop3Error::Vanished(n) => format!("-ERR [SYS/TEMP] Message {n} was removed by another client."),
            Pop3Error::Temporary(_) => "-ERR [SYS/TEMP] Temporary failure; see server log. Try again later.".into(),
            // RFC 3206 SYS/TEMP: once the file is repaired, the same login
            // works, so clients should try again rather than give up.
            Pop3Error::Store(StoreError::Corrupt(..)) => {
                "-ERR [SYS/TEMP] The mailbox file is damaged; try again once it is repaired.".into()
            }
            Pop3Error::Store(_) => "-ERR [SYS/PERM] Internal error; see server log.".into(),
            Pop3Error::Cutoff(Cutoff::Idle) => "-ERR Disconnected for inactivity.".into(),
            Pop3Error::Cutoff(Cutoff::Login) => "-ERR Disconnected: no login in time.".into(),
            Pop3Error::Cutoff(Cutoff::Command) => "-ERR Disconnected: the command took too long to arrive.".into(),
            // RFC 3206 §4: SYS/TEMP, as for a connection refused at accept.
            Pop3Error::Cutoff(Cutoff::Evicted) => {
                "-ERR [SYS/TEMP] Too many connections waiting to log in, try again later.".into()
            }
            Pop3Error::Io(_) => "-ERR Connection error".into(),
            // Never sent (see the variant); for the log.
            Pop3Error::Cut(_) => "-ERR [SYS/TEMP] Internal error; see server log.".into(),
        }
    }

    /// True for errors that end the session.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Pop3Error::Io(_) | Pop3Error::Cutoff(_) | Pop3Error::Cut(_))
    }
}

impl fmt::Display for Pop3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pop3Error::Temporary(t) => write!(f, "temporary failure: {t}"),
            Pop3Error::Store(e) => write!(f, "store: {e}"),
            Pop3Error::Cutoff(c) => write!(f, "{c}"),
            Pop3Error::Io(e) => write!(f, "i/o: {e}"),
            Pop3Error::Cut(e) => write!(f, "response cut short: {e}"),
            other => f.write_str(&other.wire()),
        }
    }
}

impl std::error::Error for Pop3Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Pop3Error::Store(e) | Pop3Error::Cut(e) => Some(e),
            Pop3Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farewells() {
        for (c, text) in [
            (Cutoff::Idle, "-ERR Disconnected for inactivity."),
            (Cutoff::Login, "-ERR Disconnected: no login in time."),
            (Cutoff::Command, "-ERR Disconnected: the command took too long to arrive."),
            (Cutoff::Evicted, "-ERR [SYS/TEMP] Too many connections waiting to log in, try again later."),
        ] {
            let e = Pop3Error::from(io::Error::new(io::ErrorKind::TimedOut, c));
            assert!(matches!(e, Pop3Error::Cutoff(got) if got == c), "{e:?}");
            assert_eq!(e.wire(), text);
            assert!(e.is_fatal());
        }
        assert!(matches!(Pop3Error::from(io::Error::from(io::ErrorKind::BrokenPipe)), Pop3Error::Io(_)));
    }
}

//! Errors of the mbox store.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store. Protocols map these to their
/// own response codes in one place each.
#[derive(Debug)]
pub enum StoreError {
    /// The mailbox is locked by someone else and the lock timeout passed.
    LockTimeout(PathBuf),
    /// A POP session holds the maildrop (RFC 2449 `[IN-USE]`, RFC 5530 `INUSE`).
    InUse(PathBuf),
    /// The mailbox does not exist.
    NoSuchMailbox(String),
    /// The mailbox already exists (CREATE, RENAME target).
    AlreadyExists(String),
    /// The mailbox name is not allowed: it would leave the mail root, or has
    /// NUL or control characters, or is malformed modified UTF-7.
    BadName(String),
    /// The operation is not allowed on this mailbox (e.g. deleting INBOX).
    NotAllowed(&'static str),
    /// The file is not an mbox we can read (e.g. does not start with `From `).
    Corrupt(PathBuf, String),
    /// The message is larger than the configured limit.
    TooBig(u64),
    /// The disk is full or the quota is exceeded.
    NoSpace,
    /// The mailbox changed under us in a way that could not be resynced.
    Changed(PathBuf),
    /// A message being sent in batches (its length already announced) is
    /// gone or no longer the one reading began with: what was sent can't
    /// be completed, and the session must end without another byte
    /// (see [`crate::store::reader`]).
    Diverged(PathBuf, u32),
    /// Any other I/O error, with what we were doing.
    Io(String, io::Error),
}

impl StoreError {
    /// Wraps an I/O error with context, turning ENOSPC/EDQUOT into [`StoreError::NoSpace`].
    pub fn io(context: impl Into<String>, err: io::Error) -> StoreError {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace,
            _ => StoreError::Io(context.into(), err),
        }
    }

    /// True when trying again later may succeed (sysexits EX_TEMPFAIL).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            StoreError::LockTimeout(_)
                | StoreError::InUse(_)
                | StoreError::NoSpace
                | StoreError::Io(..)
                | StoreError::Changed(_)
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::LockTimeout(p) => write!(f, "timed out waiting for the lock on {}", p.display()),
            StoreError::InUse(p) => write!(f, "{} is in use by another session", p.display()),
            StoreError::NoSuchMailbox(n) => write!(f, "no such mailbox: {n}"),
            StoreError::AlreadyExists(n) => write!(f, "mailbox already exists: {n}"),
            StoreError::BadName(n) => write!(f, "mailbox name not allowed: {n}"),
            StoreError::NotAllowed(why) => write!(f, "not allowed: {why}"),
            StoreError::Corrupt(p, why) => write!(f, "{} is not a valid mbox: {why}", p.display()),
            StoreError::TooBig(n) => write!(f, "message of {n} bytes is larger than allowed"),
            StoreError::NoSpace => write!(f, "no space left on device"),
            StoreError::Changed(p) => write!(f, "{} changed under us", p.display()),
            StoreError::Diverged(p, uid) => {
                write!(f, "message UID {uid} of {} changed or vanished while it was being sent", p.display())
            }
            StoreError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

//! `postroom deliver`: the local delivery agent the MTA runs.
//!
//! Reads one message on standard input and appends it to each user's
//! INBOX under the same locks as every other mbox writer (dotlock and
//! fcntl, in the configured order), with a `From_` line and mboxrd
//! quoting. State headers a sender put in (X-IMAP, X-IMAPbase, X-UID,
//! Status, X-Status, X-Keywords, Content-Length) are dropped, so nobody
//! outside can forge UIDs or flags. The server gives the new message its
//! UID when it next looks at the mailbox.
//!
//! Exit codes are sysexits(3), which Postfix, Exim and OpenSMTPD map to
//! "bounce" or "try again later": 0 delivered, 67 no such user, 75 a
//! temporary failure (lock timeout, disk full), so mail is never lost.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::passwd;
use crate::config::Config;
use crate::store::{from_line, journal, lock, transform, StoreError};

/// sysexits(3).
pub mod sysexits {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 64;
    pub const DATAERR: i32 = 65;
    pub const NOUSER: i32 = 67;
    pub const SOFTWARE: i32 = 70;
    pub const CANTCREAT: i32 = 73;
    pub const TEMPFAIL: i32 = 75;
    pub const CONFIG: i32 = 78;
}

/// Delivers standard input to `users`. Returns the exit code.
pub fn run(config: &Config, sender: Option<&str>, users: &[String]) -> i32 {
    if users.is_empty() {
        eprintln!("postroom deliver: no user named");
        return sysexits::USAGE;
    }
    let mut message = Vec::new();
    let limit = config.max_message_size;
    if let Err(e) = io::stdin().lock().take(limit + 1).read_to_end(&mut message) {
        eprintln!("postroom deliver: reading the message: {e}");
        return sysexits::TEMPFAIL;
    }
    if message.len() as u64 > limit {
        eprintln!("postroom deliver: message larger than max-message-size ({limit} bytes)");
        return sysexits::DATAERR;
    }
    let mut code = sysexits::OK;
    for user in users {
        let c = deliver_one(config, sender, user, &message);
        // The worst outcome decides: a temporary failure makes the MTA try
        // again; a permanent one bounces.
        if c != sysexits::OK && (code == sysexits::OK || c == sysexits::TEMPFAIL) {
            code = c;
        }
    }
    code
}

fn deliver_one(config: &Config, sender: Option<&str>, user: &str, message: &[u8]) -> i32 {
    let account = match passwd::lookup(&config.passwd_file, user) {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprintln!("postroom deliver: no such user: {user}");
            return sysexits::NOUSER;
        }
        Err(e) => {
            eprintln!("postroom deliver: reading {}: {e}", config.passwd_file.display());
            return sysexits::TEMPFAIL;
        }
    };
    let Some(inbox) = config.inbox.try_expand(user, account.home.as_deref()) else {
        eprintln!("postroom deliver: user {user} has no home for the inbox path {}", config.inbox.as_str());
        return sysexits::CONFIG;
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    match append(config, &inbox, &account, sender, message, now) {
        Ok(n) => {
            log::info!("deliver user={user} path={} bytes={n}", inbox.display());
            sysexits::OK
        }
        Err(e) => {
            eprintln!("postroom deliver: user {user}: {e}");
            if e.is_temporary() {
                sysexits::TEMPFAIL
            } else {
                sysexits::CANTCREAT
            }
        }
    }
}

/// Appends `message` to the mbox at `path`. Returns the bytes written.
pub fn append(
    config: &Config,
    path: &Path,
    account: &passwd::Account,
    sender: Option<&str>,
    message: &[u8],
    now: i64,
) -> Result<u64, StoreError> {
    // An MTA may hand us its own From_ line first.
    let (from_sender, content) = match split_from_line(message) {
        Some((s, rest)) => (Some(s), rest),
        None => (None, message),
    };
    let sender = sender.map(str::to_string).or(from_sender).unwrap_or_else(|| "MAILER-DAEMON".to_string());
    let io = |what: &'static str| move |e: io::Error| StoreError::io(format!("{what} {}", path.display()), e);
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("create directory for"))?;
            // Made by root: the server (`user`) must be able to lock here.
            if unsafe { libc::geteuid() } == 0 {
                if let Some(a) = config.user.as_deref().and_then(|u| passwd::system_account(u).ok().flatten()) {
                    std::os::unix::fs::chown(dir, a.uid, a.gid).map_err(io("chown directory of"))?;
                }
            }
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io("open"))?;
    let meta = file.metadata().map_err(io("stat"))?;
    if !meta.is_file() {
        return Err(StoreError::NotAllowed("the inbox is not a regular file"));
    }
    if meta.len() == 0 && unsafe { libc::geteuid() } == 0 {
        // A new spool file made by root belongs to its user, as the MTA's
        // would; a virtual user's (no uid) to the server's `user`.
        let owner = match (account.uid, account.gid) {
            (Some(uid), Some(gid)) => Some((uid, gid)),
            _ => config
                .user
                .as_deref()
                .and_then(|u| passwd::system_account(u).ok().flatten())
                .and_then(|a| Some((a.uid?, a.gid?))),
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
    }
    let _lock = lock::lock_write(&file, path, &config.lock)?;
    // A rewrite that crashed must be undone before anything is added.
    journal::recover(&file, path).map_err(io("recover"))?;
    let len = file.metadata().map_err(io("stat"))?.len();
    let mut data = Vec::with_capacity(content.len() + 128);
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1).map_err(io("read"))?;
        if last[0] != b'\n' {
            data.push(b'\n');
        }
    }
    data.extend_from_slice(from_line::format(&sender, now).as_bytes());
    data.push(b'\n');
    data.extend_from_slice(&transform::stored(content, config.mbox_format));
    data.push(b'\n');
    journal::append(&file, path, &data, true).map_err(io("append to"))?;
    Ok(data.len() as u64)
}

/// Splits off a leading `From sender date` line.
fn split_from_line(message: &[u8]) -> Option<(String, &[u8])> {
    if !message.starts_with(b"From ") {
        return None;
    }
    let end = memchr::memchr(b'\n', message)?;
    let line = message[..end].strip_suffix(b"\r").unwrap_or(&message[..end]);
    let fl = from_line::parse(line)?;
    Some((fl.sender, &message[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_line_split() {
        let (s, rest) = split_from_line(b"From bob@x Thu Nov 26 10:00:00 2026\nSubject: a\n").unwrap();
        assert_eq!(s, "bob@x");
        assert_eq!(rest, b"Subject: a\n");
        assert!(split_from_line(b"From: bob\n").is_none());
        assert!(split_from_line(b"From the desk\n").is_none());
    }
}

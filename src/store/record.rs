//! UIDVALIDITY and UIDNEXT of mailboxes whose file holds no base.
//!
//! A mailbox keeps its identity in its own file (the first message's
//! `X-IMAPbase`, or the pseudo-message of an emptied one), where UW-IMAP
//! and Dovecot read it too. A file with no base has nowhere to keep it: a
//! new, empty folder (every user's Drafts, Sent, Trash, Junk and Archive
//! start so), a spool the MTA has just made, a spool emptied by a tool that
//! truncated it, or new mail whose base could not be written yet because
//! the MTA held the lock. For those the store keeps a record in
//! `state-dir/uids/`: one small file per mailbox, named after a hash of the
//! mailbox's path and holding the path, the file's device and inode, the
//! UIDVALIDITY and the UIDNEXT. It is written, atomically, whenever either
//! is given out while the file has no base, and removed once the file
//! carries one: the file is the authority whenever it can be, and a record
//! is never older than what clients were told.
//!
//! A record counts only for the very file it was made for (same path,
//! device and inode): a folder deleted and created again is a new mailbox
//! with a new UIDVALIDITY (RFC 3501 §2.3.1.1), as is a file another
//! program put in its place. Nothing is written into empty files, so mail
//! tools that do not know UW-IMAP's pseudo-message never show one for a
//! folder nobody has used.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &str = "postroom-uids 1";

/// The identity of a mailbox as its record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uidvalidity: u32,
    pub uidnext: u32,
}

/// Where the record of the mailbox at `mbox` (a canonical path) lives.
pub fn path_of(state_dir: &Path, mbox: &Path) -> PathBuf {
    state_dir.join("uids").join(format!("{:016x}", fnv1a(mbox.as_os_str().as_bytes())))
}

/// FNV-1a, 64 bits: a file name, not a secret (the record says whose it is).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn render(mbox: &Path, meta: &fs::Metadata, ids: Ids) -> Vec<u8> {
    let mut out = format!("{MAGIC}\n").into_bytes();
    out.extend_from_slice(mbox.as_os_str().as_bytes());
    out.extend_from_slice(format!("\n{} {}\n{} {}\n", meta.dev(), meta.ino(), ids.uidvalidity, ids.uidnext).as_bytes());
    out
}

/// The record of `mbox` (whose file is described by `meta`), if there is
/// one for this very file.
pub fn read(record: &Path, mbox: &Path, meta: &fs::Metadata) -> Option<Ids> {
    let data = fs::read(record).ok()?;
    let mut lines = data.split(|&b| b == b'\n');
    if lines.next()? != MAGIC.as_bytes() || lines.next()? != mbox.as_os_str().as_bytes() {
        return None;
    }
    let text = |l: &[u8]| std::str::from_utf8(l).ok().map(str::to_string);
    let file = text(lines.next()?)?;
    let ids = text(lines.next()?)?;
    let mut f = file.split(' ').map(|w| w.parse::<u64>().ok());
    if f.next()?? != meta.dev() || f.next()?? != meta.ino() {
        return None;
    }
    let mut w = ids.split(' ').map(|w| w.parse::<u32>().ok());
    let ids = Ids { uidvalidity: w.next()??, uidnext: w.next()?? };
    (ids.uidvalidity != 0 && ids.uidnext != 0).then_some(ids)
}

/// Writes the record: a temporary file in the same directory, synced,
/// renamed over the old one.
pub fn write(record: &Path, mbox: &Path, meta: &fs::Metadata, ids: Ids) -> io::Result<()> {
    let dir = record.parent().unwrap_or(Path::new("."));
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut tmp = record.as_os_str().to_owned();
    tmp.push(format!(".{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = File::options().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&render(mbox, meta, ids))?;
        f.sync_data()?;
        fs::rename(&tmp, record)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the record (the file carries the base now).
pub fn remove(record: &Path) -> io::Result<()> {
    match fs::remove_file(record) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("Drafts");
        fs::write(&mbox, b"").unwrap();
        let meta = fs::metadata(&mbox).unwrap();
        let rec = path_of(&dir.path().join("state"), &mbox);
        assert_eq!(read(&rec, &mbox, &meta), None);
        let ids = Ids { uidvalidity: 1_700_000_000, uidnext: 7 };
        write(&rec, &mbox, &meta, ids).unwrap();
        assert_eq!(read(&rec, &mbox, &meta), Some(ids));
        // Another file at the same path: not this record's.
        fs::remove_file(&mbox).unwrap();
        fs::write(dir.path().join("other"), b"x").unwrap();
        fs::write(&mbox, b"").unwrap();
        let again = fs::metadata(&mbox).unwrap();
        if again.ino() != meta.ino() {
            assert_eq!(read(&rec, &mbox, &again), None);
        }
        // Another path with the record's name: refused.
        assert_eq!(read(&rec, &dir.path().join("Sent"), &meta), None);
        remove(&rec).unwrap();
        remove(&rec).unwrap();
        assert_eq!(read(&rec, &mbox, &meta), None);
    }
}

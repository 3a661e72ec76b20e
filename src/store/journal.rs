//! Crash-safe rewrites of the tail of an mbox.
//!
//! Every change that moves bytes (expunge, a state header that outgrew its
//! padding, UIDs given to new mail) rewrites the file from the first
//! changed message `P` to the end, in place, so that the inode, owner and
//! mode stay what the MTA and other mail tools expect. Before the first
//! byte is overwritten, the old tail `[P, old_len)` is copied to
//! `<mbox>.journal` and flushed to disk. The steps:
//!
//! 1. journal data (the old tail), fsync; journal header, fsync;
//! 2. the new tail is written at `P` (read from the journal, never from the
//!    bytes being overwritten), and when it is shorter, the byte at the new
//!    end is set to `X` so recovery can tell "not yet truncated" from
//!    "truncated, then appended to"; fsync;
//! 3. a commit mark is appended to the journal, fsync;
//! 4. the mbox is truncated to its new length, fsync; the journal removed.
//!
//! Recovery, under the mailbox locks, before the mailbox is read: an
//! incomplete journal is discarded (the mbox was not touched yet); an
//! uncommitted one is rolled back (the old tail written back); a committed
//! one is rolled forward (the truncation finished). Bytes that another
//! writer appended after the crash are kept. Expunging the last message of
//! a large mailbox costs the size of that message, not of the mailbox.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"postroom-jrnl-1\n";
const HEADER: usize = 64;
const COMMIT: &[u8; 8] = b"COMMITTD";

/// Where a mailbox's journal lives.
pub fn journal_path(mbox: &Path) -> PathBuf {
    let mut s = mbox.as_os_str().to_owned();
    s.push(".journal");
    PathBuf::from(s)
}

/// One piece of the new tail.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Bytes of the old file at this offset and length.
    Old(u64, u64),
    /// New bytes.
    New(Vec<u8>),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Old(_, n) => *n,
            Piece::New(v) => v.len() as u64,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Test hook: the crash tests make a child process kill itself with
/// SIGKILL at a named step (`POSTROOM_TEST_CRASH_AT=step`), to prove that
/// every step leaves a mailbox that recovers with no message lost.
fn crash_point(step: &str) {
    if let Some(want) = std::env::var_os("POSTROOM_TEST_CRASH_AT") {
        if want == step {
            // SAFETY: kill(2) on our own pid has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Replaces `[p, old_len)` of `file` with `pieces` (whose `Old` offsets are
/// at or after `p`). The caller holds the write locks. Returns the new length.
pub fn rewrite_tail(file: &File, mbox: &Path, p: u64, old_len: u64, pieces: &[Piece], sync: bool) -> io::Result<u64> {
    let new_len = p + pieces.iter().map(Piece::len).sum::<u64>();
    let jpath = journal_path(mbox);
    let journal = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&jpath)?;
    let result = (|| {
        // 1. The old tail, then the header that makes the journal valid.
        copy_range(file, p, &journal, HEADER as u64, old_len - p)?;
        if sync {
            journal.sync_data()?;
        }
        crash_point("journal-data");
        journal.write_all_at(&header(p, old_len, new_len), 0)?;
        if sync {
            journal.sync_data()?;
        }
        crash_point("journal-header");
        // 2. The new tail, its sources read from the journal.
        let mut at = p;
        let mut out = Vec::with_capacity(1 << 20);
        for piece in pieces {
            match piece {
                Piece::New(v) => out.extend_from_slice(v),
                Piece::Old(off, n) => {
                    debug_assert!(*off >= p && off + n <= old_len);
                    let mut done = 0;
                    while done < *n {
                        if out.len() >= 1 << 20 {
                            file.write_all_at(&out, at)?;
                            at += out.len() as u64;
                            out.clear();
                            crash_point("tail-chunk");
                        }
                        let take = (*n - done).min((1 << 20) - out.len() as u64) as usize;
                        let start = out.len();
                        out.resize(start + take, 0);
                        journal.read_exact_at(&mut out[start..], HEADER as u64 + (off - p) + done)?;
                        done += take as u64;
                    }
                }
            }
        }
        file.write_all_at(&out, at)?;
        at += out.len() as u64;
        debug_assert_eq!(at, new_len);
        crash_point("tail-written");
        if new_len < old_len {
            file.write_all_at(b"X", new_len)?;
        }
        if sync {
            file.sync_data()?;
        }
        crash_point("tail-synced");
        // 3. Commit.
        journal.write_all_at(COMMIT, HEADER as u64 + (old_len - p))?;
        if sync {
            journal.sync_data()?;
        }
        crash_point("committed");
        // 4. Truncate, forget the journal.
        if new_len < old_len {
            file.set_len(new_len)?;
            crash_point("truncated");
            if sync {
                file.sync_all()?;
            }
        }
        Ok(new_len)
    })();
    match result {
        Ok(n) => {
            drop(journal);
            fs::remove_file(&jpath)?;
            crash_point("done");
            Ok(n)
        }
        Err(e) => {
            // Put the file back as it was before reporting the error; a
            // failure here leaves the journal for the next open to apply.
            drop(journal);
            if recover(file, mbox).is_ok() {
                let _ = fs::remove_file(&jpath);
            }
            Err(e)
        }
    }
}

fn header(p: u64, old_len: u64, new_len: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..16].copy_from_slice(MAGIC);
    h[16..24].copy_from_slice(&p.to_le_bytes());
    h[24..32].copy_from_slice(&old_len.to_le_bytes());
    h[32..40].copy_from_slice(&new_len.to_le_bytes());
    let sum = p ^ old_len.rotate_left(21) ^ new_len.rotate_left(42) ^ 0x9e37_79b9_7f4a_7c15;
    h[40..48].copy_from_slice(&sum.to_le_bytes());
    h
}

fn parse_header(h: &[u8]) -> Option<(u64, u64, u64)> {
    if h.len() < HEADER || &h[..16] != MAGIC {
        return None;
    }
    let f = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let (p, old_len, new_len, sum) = (f(16), f(24), f(32), f(40));
    if sum != p ^ old_len.rotate_left(21) ^ new_len.rotate_left(42) ^ 0x9e37_79b9_7f4a_7c15 || p > old_len {
        return None;
    }
    Some((p, old_len, new_len))
}

/// What recovery did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No journal.
    Nothing,
    /// An incomplete journal was discarded; the mbox had not been touched.
    Discarded,
    /// The old tail was written back.
    RolledBack,
    /// The rewrite was complete; its truncation was finished.
    RolledForward,
}

/// Applies a journal left by a crash. The caller holds the write locks.
pub fn recover(file: &File, mbox: &Path) -> io::Result<Recovery> {
    let jpath = journal_path(mbox);
    let journal = match File::open(&jpath) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovery::Nothing),
        Err(e) => return Err(e),
    };
    let jlen = journal.metadata()?.len();
    let mut h = [0u8; HEADER];
    let parsed = if jlen >= HEADER as u64 {
        journal.read_exact_at(&mut h, 0)?;
        parse_header(&h)
    } else {
        None
    };
    let Some((p, old_len, new_len)) = parsed.filter(|(p, old_len, _)| jlen >= HEADER as u64 + (old_len - p)) else {
        drop(journal);
        fs::remove_file(&jpath)?;
        return Ok(Recovery::Discarded);
    };
    let data_end = HEADER as u64 + (old_len - p);
    let mut mark = [0u8; 8];
    let committed = jlen >= data_end + 8 && {
        journal.read_exact_at(&mut mark, data_end)?;
        &mark == COMMIT
    };
    let cur = file.metadata()?.len();
    let what = if committed {
        if new_len < old_len {
            let mut b = [0u8; 1];
            let untruncated = cur > new_len && {
                file.read_exact_at(&mut b, new_len)?;
                b[0] == b'X'
            };
            if untruncated {
                // Keep what others appended after old_len.
                let extra = read_range(file, old_len, cur.saturating_sub(old_len))?;
                file.set_len(new_len)?;
                file.write_all_at(&extra, new_len)?;
            }
        }
        Recovery::RolledForward
    } else {
        let top = old_len.max(new_len);
        let extra = if cur > top { read_range(file, top, cur - top)? } else { Vec::new() };
        copy_range(&journal, HEADER as u64, file, p, old_len - p)?;
        file.set_len(old_len)?;
        if !extra.is_empty() {
            file.write_all_at(&extra, old_len)?;
        }
        Recovery::RolledBack
    };
    file.sync_all()?;
    drop(journal);
    fs::remove_file(&jpath)?;
    Ok(what)
}

fn read_range(file: &File, off: u64, n: u64) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n as usize];
    file.read_exact_at(&mut v, off)?;
    Ok(v)
}

fn copy_range(from: &File, from_off: u64, to: &File, to_off: u64, n: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (n as usize).min(1 << 20)];
    let mut done = 0u64;
    while done < n {
        let take = ((n - done) as usize).min(buf.len());
        from.read_exact_at(&mut buf[..take], from_off + done)?;
        to.write_all_at(&buf[..take], to_off + done)?;
        done += take as u64;
    }
    Ok(())
}

/// Appends with a rollback record: if the process dies in the middle of the
/// write, the next open cuts the partial message off again.
pub fn append(file: &File, mbox: &Path, data: &[u8], sync: bool) -> io::Result<u64> {
    let old_len = file.metadata()?.len();
    let jpath = journal_path(mbox);
    // An append is a rewrite of the empty tail at old_len: rolling it back
    // truncates to old_len, keeping nothing of a partial write.
    {
        let journal = OpenOptions::new().write(true).create(true).truncate(true).open(&jpath)?;
        journal.write_all_at(&header(old_len, old_len, old_len + data.len() as u64), 0)?;
        // No fsync: this guards against the process dying, and after a power
        // loss a partial message is at worst a damaged unacknowledged one.
    }
    crash_point("append-journal");
    let res = file.write_all_at(data, old_len).and_then(|_| {
        crash_point("append-written");
        if sync {
            file.sync_data()
        } else {
            Ok(())
        }
    });
    match res {
        Ok(()) => {
            fs::remove_file(&jpath)?;
            Ok(old_len)
        }
        Err(e) => {
            let _ = file.set_len(old_len);
            let _ = fs::remove_file(&jpath);
            Err(e)
        }
    }
}

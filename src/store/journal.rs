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
//! 2. the file is extended to `top = max(old_len, new_len)` first, so that
//!    from here on, whatever the moment of a crash, the file is exactly
//!    `top` bytes long and anything beyond `top` was written by somebody
//!    else after the crash;
//! 3. the new tail is written at `P` (read from the journal, never from the
//!    bytes being overwritten), and when it is shorter, the byte at the new
//!    end is set to `X` so recovery can tell "not yet truncated" from
//!    "truncated, then appended to"; fsync;
//! 4. a commit mark is appended to the journal, fsync;
//! 5. the mbox is truncated to its new length, fsync; the journal removed.
//!
//! An append is a rewrite of the empty tail at `old_len`: journal header,
//! fsync, extend to `old_len + n`, write, fsync, remove the journal.
//!
//! Recovery, under the mailbox locks, before the mailbox is read: an
//! incomplete journal is discarded (the mbox was not touched yet); an
//! uncommitted one is rolled back (the old tail written back); a committed
//! one is rolled forward (the truncation finished). The MTA may have
//! appended while we were down (Postfix's `local` knows nothing of the
//! journal): those bytes are kept, all of them and nothing else, moved to
//! where the mailbox now ends. Since that move overwrites bytes of the
//! file, it is journaled itself: the foreign bytes are saved in a rescue
//! record at the end of the journal first, and a phase mark says when they
//! are in place, so a crash during recovery is recovered from too.
//! Expunging the last message of a large mailbox costs the size of that
//! message, not of the mailbox.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Journals of this version: the file is extended to `top` before the
/// first write (see the module documentation).
const MAGIC: &[u8; 16] = b"postroom-jrnl-2\n";
/// Journals of the first version (no extension first): foreign bytes are
/// taken to start at `top` as well, the best that can be known.
const MAGIC_V1: &[u8; 16] = b"postroom-jrnl-1\n";
const HEADER: usize = 64;
/// A byte of the header (outside its checksum) set once the file has been
/// extended to `top`.
const EXTENDED_AT: u64 = 48;
const COMMIT: &[u8; 8] = b"COMMITTD";
const RESCUE: &[u8; 8] = b"RESCUE01";
/// A rescue record's header: magic, src_end, length, checksum, phase.
const RESCUE_HEADER: u64 = 40;

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
    if std::env::var_os("POSTROOM_TEST_FULL_DISK").is_some() {
        // Test hook: the crash tests take the full-disk path (compaction).
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
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
        // 2. The file's length is `top` from now on (and the space for the
        // new tail is taken before a byte of it is written).
        if new_len > old_len {
            crash_point("extending");
            extend(file, old_len, new_len)?;
            // Recovery must know the file grew: until it did, bytes past
            // old_len are somebody else's.
            journal.write_all_at(&[1], EXTENDED_AT)?;
            if sync {
                journal.sync_data()?;
            }
        }
        crash_point("extended");
        // 3. The new tail, its sources read from the journal.
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
        // 4. Commit.
        journal.write_all_at(COMMIT, HEADER as u64 + (old_len - p))?;
        if sync {
            journal.sync_data()?;
        }
        crash_point("committed");
        // 5. Truncate, forget the journal.
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
    if h.len() < HEADER || (&h[..16] != MAGIC && &h[..16] != MAGIC_V1) {
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

/// A rescue record: the bytes others appended after a crash, saved before
/// they are moved.
struct Rescue {
    /// Where in the journal the record starts.
    at: u64,
    /// Offset in the mbox from which bytes were not saved yet when the
    /// record was written (the file's length then).
    src_end: u64,
    /// Where the saved bytes are in the journal, and how many.
    data: u64,
    len: u64,
    /// True once the base and the saved bytes were in place in the mbox
    /// (only the truncation may be missing).
    placed: bool,
}

/// Journals of an in-place compaction (see [`compact`]).
const MAGIC_COMPACT: &[u8; 16] = b"postroom-jrnl-c\n";
const COMPACT_PHASE_AT: usize = 56;
/// Where a compaction's progress (the output bytes in place) is kept.
const COMPACT_PROGRESS_AT: u64 = HEADER as u64;
const COMPACT_TABLE_AT: u64 = HEADER as u64 + 8;
/// Bytes moved at a time by a compaction, at most.
const COMPACT_CHUNK: u64 = 4 << 20;

/// A compaction: the ranges of the old file that make the new tail at `p`.
struct Plan {
    p: u64,
    old_len: u64,
    new_len: u64,
    /// (source offset, length), in order.
    ranges: Vec<(u64, u64)>,
    table_end: u64,
}

fn compact_sum(p: u64, old_len: u64, new_len: u64, n: u64) -> u64 {
    p.rotate_left(7) ^ old_len.rotate_left(19) ^ new_len.rotate_left(37) ^ n.rotate_left(51) ^ 0x5851_f42d_4c95_7f2d
}

fn parse_compact(journal: &File, h: &[u8; HEADER], jlen: u64) -> io::Result<Option<Plan>> {
    let f = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let (p, old_len, new_len, n, sum) = (f(16), f(24), f(32), f(40), f(48));
    let table_end = COMPACT_TABLE_AT.saturating_add(n.saturating_mul(16));
    if sum != compact_sum(p, old_len, new_len, n) || table_end > jlen {
        return Ok(None);
    }
    let mut table = vec![0u8; (n * 16) as usize];
    journal.read_exact_at(&mut table, COMPACT_TABLE_AT)?;
    let ranges: Vec<(u64, u64)> = table
        .chunks_exact(16)
        .map(|c| {
            let a = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let b = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            (a, b)
        })
        .collect();
    if !plan_is_forward(p, old_len, new_len, &ranges) {
        return Ok(None);
    }
    Ok(Some(Plan { p, old_len, new_len, ranges, table_end }))
}

/// Every range goes to where it lies or before it, in order, within the
/// file: what a compaction can do without saving a byte elsewhere.
fn plan_is_forward(p: u64, old_len: u64, new_len: u64, ranges: &[(u64, u64)]) -> bool {
    let mut dest = p;
    let mut last_src_end = p;
    for &(src, len) in ranges {
        if src < dest || src < last_src_end || src.saturating_add(len) > old_len {
            return false;
        }
        dest += len;
        last_src_end = src + len;
    }
    dest == new_len && new_len < old_len
}

/// How many steps [`compact`] takes for these ranges: each step moves at
/// most as many bytes as lie between where they are and where they go, so
/// that no byte is overwritten before it has been copied.
pub fn compaction_steps(p: u64, ranges: &[(u64, u64)]) -> u64 {
    let mut dest = p;
    let mut steps = 0;
    for &(src, len) in ranges {
        let gap = src - dest;
        if gap > 0 {
            steps += len.div_ceil(gap.min(COMPACT_CHUNK));
        }
        dest += len;
    }
    steps
}

/// Moves the ranges of a plan into place, from the progress the journal
/// records on. Each step copies at most the gap between a range and its
/// destination, so its source is never overwritten before it was copied
/// and a step cut short by a crash can be done again; the progress is
/// recorded after each step (and synced with the data when `sync`).
fn move_ranges(file: &File, journal: &File, plan: &Plan, sync: bool) -> io::Result<()> {
    let mut done = [0u8; 8];
    journal.read_exact_at(&mut done, COMPACT_PROGRESS_AT)?;
    let done = u64::from_le_bytes(done).min(plan.new_len - plan.p);
    let mut dest = plan.p;
    let mut buf = Vec::new();
    for &(src, len) in &plan.ranges {
        let gap = src - dest;
        let mut off = 0;
        while off < len {
            if dest + off < plan.p + done || gap == 0 {
                // Already in place.
                let skip = if gap == 0 { len - off } else { (plan.p + done - (dest + off)).min(len - off) };
                off += skip;
                continue;
            }
            let n = (len - off).min(gap.min(COMPACT_CHUNK));
            buf.resize(n as usize, 0);
            file.read_exact_at(&mut buf, src + off)?;
            file.write_all_at(&buf, dest + off)?;
            if sync {
                file.sync_data()?;
            }
            crash_point("compact-step");
            off += n;
            journal.write_all_at(&(dest + off - plan.p).to_le_bytes(), COMPACT_PROGRESS_AT)?;
            if sync {
                journal.sync_data()?;
            }
        }
        dest += len;
    }
    Ok(())
}

/// Removes what lies between `ranges` of `[p, old_len)`, moving each range
/// forward in place, with a journal that holds only the plan: what a full
/// disk allows, where the copy of the old tail that [`rewrite_tail`] keeps
/// cannot be made. Every range must go to its own place or before it
/// ([`compaction_steps`] says how long that takes). A crash is recovered
/// by finishing the move. The caller holds the write locks. Returns the
/// new length.
pub fn compact(file: &File, mbox: &Path, p: u64, old_len: u64, ranges: &[(u64, u64)], sync: bool) -> io::Result<u64> {
    let new_len = p + ranges.iter().map(|r| r.1).sum::<u64>();
    if !plan_is_forward(p, old_len, new_len, ranges) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a forward compaction"));
    }
    let jpath = journal_path(mbox);
    let journal = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&jpath)?;
    let result = (|| {
        let n = ranges.len() as u64;
        let mut plan = Vec::with_capacity(COMPACT_TABLE_AT as usize + ranges.len() * 16);
        plan.extend_from_slice(MAGIC_COMPACT);
        for v in [p, old_len, new_len, n, compact_sum(p, old_len, new_len, n), 0, 0] {
            plan.extend_from_slice(&v.to_le_bytes());
        }
        for &(src, len) in ranges {
            plan.extend_from_slice(&src.to_le_bytes());
            plan.extend_from_slice(&len.to_le_bytes());
        }
        journal.write_all_at(&plan, 0)?;
        if sync {
            journal.sync_data()?;
        }
        crash_point("compact-planned");
        let parsed = Plan { p, old_len, new_len, ranges: ranges.to_vec(), table_end: plan.len() as u64 };
        move_ranges(file, &journal, &parsed, sync)?;
        file.write_all_at(b"X", new_len)?;
        if sync {
            file.sync_data()?;
        }
        journal.write_all_at(&[1], COMPACT_PHASE_AT as u64)?;
        if sync {
            journal.sync_data()?;
        }
        crash_point("compact-moved");
        file.set_len(new_len)?;
        if sync {
            file.sync_all()?;
        }
        crash_point("compact-truncated");
        Ok(new_len)
    })();
    drop(journal);
    match result {
        Ok(n) => {
            fs::remove_file(&jpath)?;
            Ok(n)
        }
        Err(e) => {
            // Once the plan is on disk the move only goes forward: leave it
            // to recovery (the next open, under the locks) if it cannot be
            // finished now.
            if recover(file, mbox).is_ok() {
                let _ = fs::remove_file(&jpath);
            }
            Err(e)
        }
    }
}

fn rescue_sum(src_end: u64, len: u64) -> u64 {
    src_end.rotate_left(17) ^ len.rotate_left(43) ^ 0x2545_f491_4f6c_dd1d
}

/// The last complete rescue record after `from`.
fn last_rescue(journal: &File, from: u64, jlen: u64) -> io::Result<Option<Rescue>> {
    let mut at = from;
    let mut last = None;
    while at + RESCUE_HEADER <= jlen {
        let mut h = [0u8; RESCUE_HEADER as usize];
        journal.read_exact_at(&mut h, at)?;
        let f = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
        let (src_end, len, sum, phase) = (f(8), f(16), f(24), f(32));
        if &h[..8] != RESCUE || sum != rescue_sum(src_end, len) || at + RESCUE_HEADER + len > jlen {
            break;
        }
        last = Some(Rescue { at, src_end, data: at + RESCUE_HEADER, len, placed: phase == 1 });
        at += RESCUE_HEADER + len;
    }
    Ok(last)
}

/// Applies a journal left by a crash. The caller holds the write locks.
pub fn recover(file: &File, mbox: &Path) -> io::Result<Recovery> {
    let jpath = journal_path(mbox);
    let journal = match OpenOptions::new().read(true).write(true).open(&jpath) {
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
    let compaction = if jlen >= HEADER as u64 && &h[..16] == MAGIC_COMPACT {
        match parse_compact(&journal, &h, jlen)? {
            Some(plan) => Some(plan),
            None => {
                // The plan never reached the disk whole: nothing was moved.
                drop(journal);
                fs::remove_file(&jpath)?;
                return Ok(Recovery::Discarded);
            }
        }
    } else {
        None
    };
    let (p, old_len, new_len, committed, rescues_at) = match &compaction {
        Some(plan) => {
            // A compaction only ever goes forward: finish the move.
            if h[COMPACT_PHASE_AT] == 0 {
                move_ranges(file, &journal, plan, true)?;
                file.write_all_at(b"X", plan.new_len)?;
                file.sync_data()?;
                journal.write_all_at(&[1], COMPACT_PHASE_AT as u64)?;
                journal.sync_data()?;
            }
            (plan.p, plan.old_len, plan.new_len, true, plan.table_end + 8)
        }
        None => {
            let Some((p, old_len, new_len)) = parsed.filter(|(p, old_len, _)| jlen >= HEADER as u64 + (old_len - p))
            else {
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
            (p, old_len, new_len, committed, data_end + 8)
        }
    };
    let data_end = rescues_at - 8;
    // Where the mailbox of our own making ends, and what must be there.
    let (base_len, what) = if committed { (new_len, Recovery::RolledForward) } else { (old_len, Recovery::RolledBack) };
    let cur = file.metadata()?.len();
    // Foreign bytes already saved, and where the unsaved ones begin.
    let rescue = last_rescue(&journal, rescues_at, jlen)?;
    let (saved, foreign_from) = match &rescue {
        Some(r) => {
            let end = base_len + r.len;
            if r.placed && !(cur > end && byte_at(file, end)? == Some(b'X')) {
                // Placed and truncated: the mailbox is whole; what is past
                // its end came after, in its place already.
                file.sync_all()?;
                drop(journal);
                fs::remove_file(&jpath)?;
                return Ok(what);
            }
            (Some(r), r.src_end)
        }
        None => {
            let top = old_len.max(new_len);
            let from = if committed && new_len < old_len {
                // Not truncated yet if the mark at the new end is there.
                if cur > new_len && byte_at(file, new_len)? == Some(b'X') {
                    old_len
                } else {
                    new_len
                }
            } else if committed || top == old_len || h[EXTENDED_AT as usize] == 1 || &h[..16] == MAGIC_V1 {
                if committed {
                    new_len
                } else {
                    top
                }
            } else if cur > old_len && byte_at(file, old_len)? == Some(0) {
                // The mark was lost with a power cut, the extension was
                // not: nobody else's mail begins with a NUL.
                top
            } else {
                // Killed before the file grew: nothing of ours is past
                // old_len.
                old_len
            };
            (None, from)
        }
    };
    let fresh = cur.saturating_sub(foreign_from);
    let saved_len = saved.map_or(0, |r| r.len);
    // Rolling back, a writer found our unfinished extension at the end of
    // the file (no newline there) and may have begun with a newline of its
    // own: that newline is not part of the mail.
    let skip = if !committed && saved.is_none() && fresh > 6 && old_ends_with_newline(file, &journal, p, old_len)? {
        let mut b = [0u8; 6];
        file.read_exact_at(&mut b, foreign_from)?;
        (&b == b"\nFrom ") as u64
    } else {
        0
    };
    if saved.is_none() && foreign_from + skip == base_len {
        // Whatever others wrote is where it belongs already.
        if !committed {
            copy_range(&journal, HEADER as u64, file, p, old_len - p)?;
        }
        file.sync_all()?;
        drop(journal);
        fs::remove_file(&jpath)?;
        return Ok(what);
    }
    let total = saved_len + fresh - skip;
    let final_len = base_len + total;
    // 1. Save every foreign byte in a new rescue record (the last one's
    // and the fresh ones) before the mailbox is touched.
    let at = match &rescue {
        Some(r) => r.at + RESCUE_HEADER + r.len,
        None => rescues_at,
    };
    if !committed {
        // The commit slot must never read as a commit later.
        journal.write_all_at(&[0u8; 8], data_end)?;
    }
    if let Some(r) = saved {
        copy_range(&journal, r.data, &journal, at + RESCUE_HEADER, r.len)?;
    }
    copy_range(file, foreign_from + skip, &journal, at + RESCUE_HEADER + saved_len, fresh - skip)?;
    journal.sync_data()?;
    let mut rh = [0u8; RESCUE_HEADER as usize];
    rh[..8].copy_from_slice(RESCUE);
    rh[8..16].copy_from_slice(&cur.to_le_bytes());
    rh[16..24].copy_from_slice(&total.to_le_bytes());
    rh[24..32].copy_from_slice(&rescue_sum(cur, total).to_le_bytes());
    journal.write_all_at(&rh, at)?;
    journal.sync_data()?;
    crash_point("rescue-saved");
    // 2. Our part (the old tail, when rolling back), then the foreign
    // bytes after it, and the mark past the end that says "not truncated".
    if !committed {
        copy_range(&journal, HEADER as u64, file, p, old_len - p)?;
    }
    copy_range(&journal, at + RESCUE_HEADER, file, base_len, total)?;
    if final_len < cur {
        file.write_all_at(b"X", final_len)?;
    }
    file.sync_data()?;
    crash_point("rescue-written");
    journal.write_all_at(&1u64.to_le_bytes(), at + 32)?;
    journal.sync_data()?;
    crash_point("rescue-placed");
    // 3. The end.
    file.set_len(final_len)?;
    file.sync_all()?;
    crash_point("rescue-truncated");
    drop(journal);
    fs::remove_file(&jpath)?;
    Ok(what)
}

/// True when the mailbox as it was before the rewrite ended with a newline
/// (or was empty): the last byte of the old tail, from the journal.
fn old_ends_with_newline(file: &File, journal: &File, p: u64, old_len: u64) -> io::Result<bool> {
    if old_len == 0 {
        return Ok(true);
    }
    let mut b = [0u8; 1];
    if old_len > p {
        journal.read_exact_at(&mut b, HEADER as u64 + (old_len - p) - 1)?;
    } else {
        file.read_exact_at(&mut b, old_len - 1)?;
    }
    Ok(b[0] == b'\n')
}

fn byte_at(file: &File, off: u64) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    match file.read_at(&mut b, off)? {
        1 => Ok(Some(b[0])),
        _ => Ok(None),
    }
}

/// Makes the file `to` bytes long from `from`, taking the disk space now
/// (so that a full disk fails here, before a byte is written) where the
/// file system can, or by setting the length where it cannot.
fn extend(file: &File, from: u64, to: u64) -> io::Result<()> {
    // SAFETY: fallocate(2) on our open descriptor with a valid range.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, from as libc::off_t, (to - from) as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => file.set_len(to),
        _ => Err(e),
    }
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
/// write, the next open cuts the partial message off again, keeping what
/// anybody appended after it.
pub fn append(file: &File, mbox: &Path, data: &[u8], sync: bool) -> io::Result<u64> {
    let old_len = file.metadata()?.len();
    let new_len = old_len + data.len() as u64;
    let jpath = journal_path(mbox);
    // An append is a rewrite of the empty tail at old_len: rolling it back
    // truncates to old_len, keeping what others appended beyond new_len.
    let journal = {
        let journal = OpenOptions::new().write(true).create(true).truncate(true).open(&jpath)?;
        journal.write_all_at(&header(old_len, old_len, new_len), 0)?;
        if sync {
            // On disk before the file grows: a file longer than its
            // journal says could not be put right after a power cut.
            journal.sync_data()?;
        }
        journal
    };
    crash_point("append-journal");
    let res = extend(file, old_len, new_len).and_then(|_| {
        // Not synced: a power cut that keeps the longer file and loses
        // this mark leaves zeros past old_len, which recovery recognises.
        journal.write_all_at(&[1], EXTENDED_AT)?;
        crash_point("append-extended");
        file.write_all_at(data, old_len)?;
        crash_point("append-written");
        if sync {
            file.sync_data()
        } else {
            Ok(())
        }
    });
    drop(journal);
    match res {
        Ok(()) => {
            fs::remove_file(&jpath)?;
            Ok(old_len)
        }
        Err(e) => {
            // We hold the locks: nobody else wrote after old_len.
            let _ = file.set_len(old_len);
            let _ = fs::remove_file(&jpath);
            Err(e)
        }
    }
}

//! One mbox file and its in-memory index.
//!
//! [`Mailbox::open`] builds the index with one scan ([`scan`]), gives UIDs
//! to new mail and writes them into the file, as UW-IMAP and Dovecot do.
//! Flag changes stay in memory until [`Mailbox::flush`]; most are then
//! written in place into the padding of the message's state headers.
//! Everything else that moves bytes goes through [`journal::rewrite_tail`],
//! from the first changed message to the end only.
//!
//! The file may change behind our back: the MTA appends, mutt rewrites.
//! [`Mailbox::refresh`] notices by (device, inode, size, mtime) and parses
//! only the new tail after an append, or the whole file otherwise, matching
//! messages by X-UID. A mailbox changed beyond recognition gets a new
//! UIDVALIDITY, never wrong UIDs.
//!
//! Locking: the caller serialises access in this process (the registry's
//! `RwLock`); this module takes the cross-process locks (dotlock and fcntl
//! for writes, fcntl read locks for reads) for each operation.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::from_line;
use super::journal::{self, Piece};
use super::lock::{self, LockSettings, MboxLock};
use super::reader::{self, Part, Reader};
use super::record;
use super::scan::{self, RawMessage};
use super::state::{self, Base, Flags, StateHeader};
use super::transform;
use super::{MboxFormat, StoreError};

/// A compaction on a full disk ([`journal::compact`]) takes at most this
/// many steps (each moves at most the room freed before it, up to 4 MiB,
/// and is synced): a few minutes at worst.
const MAX_COMPACTION_STEPS: u64 = 20_000;

/// At most this many keywords per mailbox (a bit each in [`Message::keywords`]).
pub const MAX_KEYWORDS: usize = 64;

/// How mailboxes are opened and written.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: MboxFormat,
    pub lock: LockSettings,
    /// Used in the pseudo-message that keeps an empty mailbox's UIDs.
    pub hostname: String,
    /// fsync after writes (off only in benchmarks of the CPU cost).
    pub fsync: bool,
    /// Where the identity of mailboxes whose file holds no base is kept
    /// ([`record`]); `None`: nowhere (it lives in memory only).
    pub state_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: MboxFormat::Mboxrd,
            lock: LockSettings::default(),
            hostname: "localhost".into(),
            fsync: true,
            state_dir: None,
        }
    }
}

/// One message of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    pub flags: Flags,
    /// Bit i set: keyword `Mailbox::keywords()[i]`.
    pub keywords: u64,
    /// INTERNALDATE, seconds since the epoch.
    pub date: i64,
    /// RFC822.SIZE: the size on the wire.
    pub size: u64,
    /// Wire size of the header (with its blank line).
    pub hdr_size: u64,
    from_off: u64,
    hdr_off: u64,
    body_off: u64,
    end: u64,
    state: Option<(u64, u32)>,
    has_state: bool,
    raw_body: bool,
    /// Flags changed in memory and not yet written.
    dirty: bool,
    /// The file has this UID and a state block for it.
    persisted: bool,
}

impl Message {
    /// Bytes of the message in the file (for statistics).
    pub fn disk_len(&self) -> u64 {
        self.end - self.from_off
    }
}

/// What a change did, for the sessions that share the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New messages, by UID, in order.
    Appended(Vec<u32>),
    /// The flags or keywords of these messages changed.
    Flags(Vec<u32>),
    /// These messages are gone.
    Expunged(Vec<u32>),
    /// The mailbox was replaced beyond recognition: new UIDVALIDITY.
    Reset(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino(), size: meta.len(), mtime: (meta.mtime(), meta.mtime_nsec()) }
    }
}

#[derive(Debug, Clone)]
struct Pseudo {
    end: u64,
    state: Option<(u64, u32)>,
}

/// What an index rebuilt from the whole file may rely on from before.
#[derive(Debug)]
struct Prev {
    uidvalidity: u32,
    uidnext: u32,
    /// The UIDs the index had, ascending.
    uids: Vec<u32>,
}

/// What [`Mailbox::build`] was given.
enum Build<'a> {
    /// The whole file: the base and the pseudo-message are taken afresh;
    /// with what the index knew before, if anything.
    Whole(Option<&'a Prev>),
    /// The file from message `from` on (after an append): the base and the
    /// pseudo-message stay; `disk_uidnext` is what the base in the file
    /// says now (another process may have given out UIDs).
    Tail { from: usize, disk_uidnext: Option<u32> },
}

/// An open mbox and its index.
#[derive(Debug)]
pub struct Mailbox {
    path: PathBuf,
    file: File,
    opts: Options,
    id: FileId,
    uidvalidity: u32,
    uidnext: u32,
    keywords: Vec<String>,
    messages: Vec<Message>,
    pseudo: Option<Pseudo>,
    /// The base as the file has it; differs from [`Mailbox::base`] when
    /// UIDNEXT or the keyword list moved on in memory.
    disk_base: Option<Base>,
    /// UIDs whose flags changed in memory only: write-back visits these,
    /// not all messages (a mailbox may hold 100,000).
    dirty_uids: BTreeSet<u32>,
    /// Messages from this index on have no UID in the file yet (new mail
    /// is always a tail).
    first_unpersisted: Option<usize>,
    /// fcntl read locks are per open file: one per mailbox, counted.
    readers: Mutex<Option<(u32, MboxLock)>>,
    /// The mailbox's record in `state-dir`, and what it says as far as we know.
    record: Option<PathBuf>,
    recorded: Recorded,
    /// The next write rewrites the whole file (a repair).
    rewrite_all: bool,
}

/// What the record in `state-dir` holds, as far as this index knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Unknown,
    Absent,
    Written(record::Ids),
}

/// Creates an empty mbox file at `path` if there is none (mode 0600, no
/// symlink followed).
pub fn create_file(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NoSuchMailbox(path.display().to_string())),
        Err(e) => Err(StoreError::io(format!("create {}", path.display()), e)),
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn io_err<'a>(path: &'a Path, what: &str) -> impl Fn(io::Error) -> StoreError + 'a {
    let what = what.to_string();
    move |e| StoreError::io(format!("{what} {}", path.display()), e)
}

impl Mailbox {
    /// Opens (and with `create`, creates) an mbox, recovers from a crashed
    /// rewrite, indexes it, and writes UIDs for new mail.
    pub fn open(path: &Path, opts: &Options, create: bool) -> Result<Mailbox, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::NoSuchMailbox(path.display().to_string()),
                _ => StoreError::io(format!("open {}", path.display()), e),
            })?;
        let meta = file.metadata().map_err(io_err(path, "stat"))?;
        if !meta.is_file() {
            return Err(StoreError::NotAllowed("not a regular file"));
        }
        let mut mb = Mailbox {
            path: path.to_path_buf(),
            file,
            opts: opts.clone(),
            id: FileId::of(&meta),
            uidvalidity: 0,
            uidnext: 1,
            keywords: Vec::new(),
            messages: Vec::new(),
            pseudo: None,
            disk_base: None,
            dirty_uids: BTreeSet::new(),
            first_unpersisted: None,
            readers: Mutex::new(None),
            record: opts
                .state_dir
                .as_ref()
                .map(|d| record::path_of(d, &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))),
            recorded: Recorded::Unknown,
            rewrite_all: false,
        };
        if journal::journal_path(path).exists() {
            let _l = mb.lock_write()?;
            journal::recover(&mb.file, path).map_err(io_err(path, "recover"))?;
        }
        mb.reload(false, false)?;
        // Persist UIDs now if we can: a UID that is only in memory could be
        // given to another message by another process.
        if mb.needs_sync() {
            match mb.try_flush() {
                Ok(_) => {}
                Err(StoreError::LockTimeout(_)) => {
                    log::info!("store deferred-sync path={} reason=locked", path.display());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(mb)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn uidvalidity(&self) -> u32 {
        self.uidvalidity
    }
    pub fn uidnext(&self) -> u32 {
        self.uidnext
    }
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
    pub fn len(&self) -> usize {
        self.messages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
    /// The index of the message with this UID.
    pub fn position(&self, uid: u32) -> Option<usize> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok()
    }
    /// Size of the file as last seen.
    pub fn file_size(&self) -> u64 {
        self.id.size
    }

    fn lock_write(&self) -> Result<MboxLock, StoreError> {
        lock::lock_write(&self.file, &self.path, &self.opts.lock)
    }

    fn stat(&self) -> Result<FileId, StoreError> {
        // Compare with what is at the path now: a file renamed over ours is
        // a replacement, even though our descriptor still reads the old one.
        let meta = std::fs::symlink_metadata(&self.path).map_err(io_err(&self.path, "stat"))?;
        Ok(FileId::of(&meta))
    }

    /// True when the file has changed since we last indexed it.
    pub fn changed(&self) -> Result<bool, StoreError> {
        Ok(self.stat()? != self.id)
    }

    /// Reopens the file at our path if it was replaced (renamed over).
    fn reopen_if_replaced(&mut self) -> Result<bool, StoreError> {
        let now = self.stat()?;
        if now.dev == self.id.dev && now.ino == self.id.ino {
            return Ok(false);
        }
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(io_err(&self.path, "reopen"))?;
        Ok(true)
    }

    /// Indexes the whole file, keeping UIDs, flags and UIDVALIDITY from the
    /// previous index where the file still agrees (matched by X-UID).
    /// `locked`: the caller holds the write lock (taking a read lock on
    /// the same open file would downgrade it).
    fn reload(&mut self, keep_previous: bool, locked: bool) -> Result<Vec<Event>, StoreError> {
        let (raws, id, meta_now) = {
            let _r = if locked { None } else { Some(lock::lock_read(&self.file, &self.path, &self.opts.lock)?) };
            let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
            let id = FileId::of(&meta);
            let s = scan::scan(&self.file, 0, id.size, self.opts.format).map_err(|e| self.scan_error(e))?;
            (s.messages, id, meta)
        };
        let old = if keep_previous { Some(std::mem::take(&mut self.messages)) } else { None };
        let old_uidvalidity = self.uidvalidity;
        let prev = old.as_ref().map(|o| Prev {
            uidvalidity: self.uidvalidity,
            uidnext: self.uidnext,
            uids: o.iter().map(|m| m.uid).collect(),
        });
        let replaced = id.ino != self.id.ino || id.dev != self.id.dev;
        // A file with no base may have a record of what it was given.
        let recorded = match (&prev, &self.record) {
            (None, Some(rec)) => record::read(rec, &self.canonical(), &meta_now).map(|ids| Prev {
                uidvalidity: ids.uidvalidity,
                uidnext: ids.uidnext,
                uids: Vec::new(),
            }),
            _ => None,
        };
        if let Some(r) = &recorded {
            self.recorded = Recorded::Written(record::Ids { uidvalidity: r.uidvalidity, uidnext: r.uidnext });
        }
        self.build(raws, Build::Whole(prev.as_ref().or(recorded.as_ref())));
        self.keep_record(&meta_now);
        self.id = id;
        let mut events = Vec::new();
        if let Some(old) = old {
            if self.uidvalidity != old_uidvalidity {
                // Every client downloads the mailbox again: say why.
                let why = match (&self.disk_base, replaced) {
                    (_, true) => "the file was replaced by another with another base",
                    (Some(_), false) => "another program wrote another base into the file",
                    (None, false) => "the file lost its base",
                };
                log::warn!(
                    "store uidvalidity-changed path={} old={old_uidvalidity} new={} messages={} reason=\"{why}\"",
                    self.path.display(),
                    self.uidvalidity,
                    self.messages.len()
                );
                events.push(Event::Reset(self.uidvalidity));
                return Ok(events);
            }
            // Keep unwritten flag changes of ours; report the rest.
            let mut gone = Vec::new();
            let mut flags = Vec::new();
            let mut j = 0;
            for o in &old {
                while j < self.messages.len() && self.messages[j].uid < o.uid {
                    j += 1;
                }
                match self.messages.get_mut(j) {
                    Some(n) if n.uid == o.uid => {
                        if o.dirty {
                            n.flags = o.flags;
                            n.keywords = o.keywords;
                            n.dirty = true;
                            self.dirty_uids.insert(n.uid);
                        } else if (n.flags, n.keywords) != (o.flags, o.keywords) {
                            flags.push(n.uid);
                        }
                    }
                    _ => gone.push(o.uid),
                }
            }
            let last_old = old.last().map_or(0, |m| m.uid);
            let new: Vec<u32> = self.messages.iter().filter(|m| m.uid > last_old).map(|m| m.uid).collect();
            if !gone.is_empty() {
                events.push(Event::Expunged(gone));
            }
            if !flags.is_empty() {
                events.push(Event::Flags(flags));
            }
            if !new.is_empty() {
                events.push(Event::Appended(new));
            }
        }
        Ok(events)
    }

    /// The base as the file has it now, read from where the index says
    /// the base carrier is (the pseudo-message or the first message).
    /// The caller holds a lock.
    fn base_in_file(&self) -> Result<Option<Base>, StoreError> {
        let (hdr_off, body_off) = match (&self.pseudo, self.messages.first()) {
            (Some(_), _) => (0, self.pseudo.as_ref().map_or(0, |p| p.end)),
            (None, Some(m)) => (m.hdr_off, m.body_off),
            (None, None) => return Ok(None),
        };
        // State lines come first in our headers and last in UW-IMAP's and
        // Dovecot's; a header is rarely longer than this.
        let len = (body_off - hdr_off).min(256 << 10) as usize;
        let hdr = self.read_at(hdr_off, len)?;
        for line in hdr.split(|&b| b == b'\n') {
            if matches!(state::classify(line), Some(StateHeader::ImapBase) | Some(StateHeader::Imap)) {
                return Ok(state::parse_base(state::value(line)));
            }
        }
        Ok(None)
    }

    /// The file was renamed (by us, under the registry): it is the same
    /// mailbox, at `path` now.
    pub fn moved_to(&mut self, path: &Path) {
        self.path = path.to_path_buf();
        if let Some(dir) = &self.opts.state_dir {
            self.record = Some(record::path_of(dir, path));
            self.recorded = Recorded::Unknown;
        }
    }

    /// The mailbox's path as its record names it.
    fn canonical(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }

    /// Keeps the record in `state-dir` in step: written while the file has
    /// no base (UIDVALIDITY and UIDNEXT live nowhere else), removed once it
    /// has one.
    fn keep_record(&mut self, meta: &std::fs::Metadata) {
        let Some(rec) = &self.record else { return };
        if self.disk_base.is_some() {
            if self.recorded != Recorded::Absent {
                if let Err(e) = record::remove(rec) {
                    log::warn!("store record-remove-failed path={} error=\"{e}\"", rec.display());
                }
                self.recorded = Recorded::Absent;
            }
            return;
        }
        let ids = record::Ids { uidvalidity: self.uidvalidity, uidnext: self.uidnext };
        if self.recorded == Recorded::Written(ids) {
            return;
        }
        match record::write(rec, &self.canonical(), meta, ids) {
            Ok(()) => self.recorded = Recorded::Written(ids),
            Err(e) => log::warn!(
                "store record-write-failed path={} mailbox={} error=\"{e}\": UIDVALIDITY {} lives in memory only",
                rec.display(),
                self.path.display(),
                self.uidvalidity
            ),
        }
    }

    fn keep_record_now(&mut self) {
        if self.record.is_some() {
            if let Ok(meta) = self.file.metadata() {
                self.keep_record(&meta);
            }
        }
    }

    fn scan_error(&self, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::InvalidData {
            StoreError::Corrupt(self.path.clone(), e.to_string())
        } else {
            StoreError::io(format!("read {}", self.path.display()), e)
        }
    }

    /// Turns scanned messages into index entries: the whole file afresh,
    /// or the messages from some index on (an append).
    ///
    /// Which X-UIDs are believed: those that ascend, lie below the UIDNEXT
    /// the file's base gives, and could have been given out by a writer
    /// that knew that base: a UID the previous index knew, or one at or
    /// above the UIDNEXT it had reached. Anything else (a forged header the
    /// MTA let through, mutt's copy of a message from another folder, a
    /// file without a base) gets a fresh UID, so no UID ever names two
    /// messages under one UIDVALIDITY (RFC 3501 §2.3.1.1).
    fn build(&mut self, raws: Vec<RawMessage>, mode: Build<'_>) {
        let mut raws = raws.into_iter().peekable();
        let tail_known: Vec<u32> = match &mode {
            Build::Tail { from, .. } => {
                self.messages[(*from).min(self.messages.len())..].iter().map(|m| m.uid).collect()
            }
            Build::Whole(_) => Vec::new(),
        };
        let floor = match &mode {
            Build::Whole(prev) => prev.map(|p| (p.uidnext, &p.uids[..])),
            Build::Tail { .. } => Some((self.uidnext, &tail_known[..])),
        };
        let (from, limit) = match mode {
            Build::Whole(prev) => {
                self.pseudo = None;
                let mut base: Option<Base> = None;
                if raws.peek().is_some_and(|r| r.pseudo) {
                    let r = raws.next().expect("peeked");
                    base = r.base.clone();
                    self.pseudo = Some(Pseudo { end: r.end, state: r.state });
                }
                if base.is_none() && self.pseudo.is_none() {
                    base = raws.peek().and_then(|r| r.base.clone());
                }
                self.disk_base = base.clone().map(|mut b| {
                    b.keywords.truncate(MAX_KEYWORDS);
                    b
                });
                let limit = match base {
                    Some(b) => {
                        self.uidvalidity = b.uidvalidity;
                        self.uidnext = b.uidnext.max(1);
                        self.keywords = b.keywords;
                        self.keywords.truncate(MAX_KEYWORDS);
                        Some(self.uidnext)
                    }
                    None => {
                        // The base is lost (new mailbox, or a tool deleted
                        // the first message): keep the UIDVALIDITY we knew,
                        // and then the UIDNEXT too, so that no UID is given
                        // out twice under one UIDVALIDITY.
                        match prev.filter(|p| p.uidvalidity != 0) {
                            Some(p) => {
                                self.uidvalidity = p.uidvalidity;
                                self.uidnext = p.uidnext.max(1);
                            }
                            None => {
                                self.uidvalidity = new_uidvalidity();
                                self.uidnext = 1;
                            }
                        }
                        self.keywords.clear();
                        // Without a base no X-UID means anything, except
                        // those the previous index knew.
                        Some(self.uidnext)
                    }
                };
                self.messages.clear();
                (0, limit)
            }
            Build::Tail { from, disk_uidnext } => {
                self.messages.truncate(from);
                // Another process may have given out UIDs meanwhile; with no
                // base in the file, nobody has.
                if let Some(n) = disk_uidnext {
                    self.uidnext = self.uidnext.max(n);
                }
                (from, Some(disk_uidnext.unwrap_or(self.uidnext)))
            }
        };
        let mut last = self.messages.last().map_or(0, |m| m.uid);
        let mut pending = Vec::new();
        for r in raws {
            if r.pseudo {
                // A stray pseudo-message (left by a broken writer): internal
                // data, never a message. `postroom mailbox repair` removes it.
                log::warn!("store stray-pseudo-message path={} offset={}", self.path.display(), r.from_off);
                continue;
            }
            let u = r.uid;
            let uid_ok = u > last
                && limit.is_none_or(|n| u < n)
                && floor.is_none_or(|(next, known)| u >= next || known.binary_search(&u).is_ok());
            let uid = if uid_ok { u } else { 0 };
            if uid_ok {
                last = uid;
            }
            let mut kw = 0u64;
            for k in &r.keywords {
                if let Some(i) = self.keyword_bit(k) {
                    kw |= 1 << i;
                }
            }
            // The first message carries the base when there is no
            // pseudo-message; a base anywhere else is rewritten away.
            let carrier = from == 0 && self.pseudo.is_none() && pending.is_empty();
            pending.push(Message {
                uid,
                flags: r.flags,
                keywords: kw,
                date: r.date.unwrap_or(self.id.mtime.0),
                size: r.size(),
                hdr_size: r.hdr_size,
                from_off: r.from_off,
                hdr_off: r.hdr_off,
                body_off: r.body_off,
                end: r.end,
                state: r.state,
                has_state: r.has_state,
                raw_body: r.raw_body,
                dirty: false,
                persisted: uid_ok && r.has_state && (carrier || r.base.is_none()),
            });
        }
        self.uidnext = self.uidnext.max(last.saturating_add(1));
        for mut m in pending {
            if m.uid == 0 {
                m.uid = self.uidnext;
                self.uidnext = self.uidnext.saturating_add(1);
                m.persisted = false;
            }
            self.messages.push(m);
        }
        // UIDs must ascend; a message given a fresh UID above breaks that if
        // valid ones follow it. Renumber from the first break.
        let check_from = from.saturating_sub(1);
        let mut prev = if check_from == 0 { 0 } else { self.messages[check_from - 1].uid };
        for i in check_from..self.messages.len() {
            if self.messages[i].uid <= prev {
                for m in &mut self.messages[i..] {
                    m.uid = self.uidnext;
                    self.uidnext = self.uidnext.saturating_add(1);
                    m.persisted = false;
                }
                break;
            }
            prev = self.messages[i].uid;
        }
        if from == 0 {
            self.dirty_uids.clear();
            self.first_unpersisted = None;
        } else {
            let keep_below = self.messages.get(from).map_or(u32::MAX, |m| m.uid);
            self.dirty_uids.retain(|&u| u < keep_below);
            self.first_unpersisted = self.first_unpersisted.filter(|&i| i < from);
        }
        if self.first_unpersisted.is_none() {
            self.first_unpersisted = (from..self.messages.len()).find(|&i| !self.messages[i].persisted);
        }
    }

    /// The bit of keyword `name`, adding it to the mailbox's list if new.
    /// `None` when the list is full.
    pub fn keyword_bit(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.keywords.iter().position(|k| k.eq_ignore_ascii_case(name)) {
            return Some(i);
        }
        if self.keywords.len() >= MAX_KEYWORDS || !state::is_keyword(name) {
            return None;
        }
        self.keywords.push(name.to_string());
        Some(self.keywords.len() - 1)
    }

    /// True when something is only in memory.
    pub fn needs_sync(&self) -> bool {
        // An empty file gets no pseudo-message just to keep its UIDVALIDITY:
        // mail tools would show it. The first message carries the base.
        (self.base_dirty() && (!self.messages.is_empty() || self.pseudo.is_some()))
            || !self.dirty_uids.is_empty()
            || self.first_unpersisted.is_some()
    }

    /// Notices outside changes: an append parses only the new tail; any
    /// other change re-reads the file and matches messages by X-UID.
    pub fn refresh(&mut self) -> Result<Vec<Event>, StoreError> {
        let now = self.stat()?;
        if now == self.id {
            return Ok(Vec::new());
        }
        if self.reopen_if_replaced()? {
            let mut ev = self.reload(true, false)?;
            ev.extend(self.sync_after_refresh()?);
            return Ok(ev);
        }
        if now.size > self.id.size && !self.messages.is_empty() && self.tail_intact()? {
            // Only appended: re-parse from our last message on (its end may
            // move if the file did not end in a newline).
            let from_idx = self.messages.len() - 1;
            let start = self.messages[from_idx].from_off;
            let (raws, id, base) = {
                let _r = lock::lock_read(&self.file, &self.path, &self.opts.lock)?;
                let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
                let id = FileId::of(&meta);
                let s = scan::scan(&self.file, start, id.size, self.opts.format).map_err(|e| self.scan_error(e))?;
                (s.messages, id, self.base_in_file()?)
            };
            let same_base = match (&base, &self.disk_base) {
                (Some(b), Some(d)) => b.uidvalidity == d.uidvalidity,
                (None, None) => true,
                _ => false,
            };
            if same_base && raws.first().is_some_and(|r| r.from_off == start) {
                let last_known = self.messages.last().map(|m| (m.uid, m.flags, m.keywords, m.dirty, m.persisted));
                let old_len = self.messages.len();
                {
                    let disk_uidnext = base.map(|b| b.uidnext);
                    self.build(raws, Build::Tail { from: from_idx, disk_uidnext });
                    // The re-parsed last message keeps its identity.
                    if let (Some((uid, flags, kw, dirty, persisted)), Some(m)) =
                        (last_known, self.messages.get_mut(from_idx))
                    {
                        if m.uid != uid {
                            // Its X-UID vanished: it is still the same message.
                            m.uid = uid;
                        }
                        if dirty {
                            m.flags = flags;
                            m.keywords = kw;
                            m.dirty = true;
                            self.dirty_uids.insert(uid);
                        }
                        m.persisted = m.persisted && persisted;
                    }
                }
                self.id = id;
                let new: Vec<u32> = self.messages[old_len.min(self.messages.len())..].iter().map(|m| m.uid).collect();
                let mut ev = Vec::new();
                if !new.is_empty() {
                    ev.push(Event::Appended(new));
                }
                ev.extend(self.sync_after_refresh()?);
                return Ok(ev);
            }
        }
        let mut ev = self.reload(true, false)?;
        ev.extend(self.sync_after_refresh()?);
        Ok(ev)
    }

    fn sync_after_refresh(&mut self) -> Result<Vec<Event>, StoreError> {
        // UIDs given out in memory to mail in a file with no base yet.
        self.keep_record_now();
        if self.first_unpersisted.is_some() || self.base_dirty() {
            match self.try_flush() {
                Ok(ev) => return Ok(ev),
                Err(StoreError::LockTimeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Vec::new())
    }

    /// Checks that our first and last messages still start where we think
    /// they do: an append leaves them in place, a rewrite moves them.
    fn tail_intact(&self) -> Result<bool, StoreError> {
        for m in [self.messages.first(), self.messages.last()].into_iter().flatten() {
            let mut b = [0u8; 6];
            let (off, want): (u64, &[u8]) =
                if m.from_off == 0 { (0, &b"From "[..]) } else { (m.from_off - 1, &b"\nFrom "[..]) };
            if self.file.read_exact_at(&mut b[..want.len()], off).is_err() || &b[..want.len()] != want {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sets the flags and keywords of message `i` in memory. Returns true
    /// if they changed. Written by the next [`flush`](Self::flush).
    pub fn set_flags(&mut self, i: usize, flags: Flags, keywords: u64) -> bool {
        let m = &mut self.messages[i];
        if m.flags == flags && m.keywords == keywords {
            return false;
        }
        m.flags = flags;
        m.keywords = keywords;
        m.dirty = true;
        let uid = m.uid;
        self.dirty_uids.insert(uid);
        true
    }

    /// Writes everything that is only in memory, waiting for the lock.
    pub fn flush(&mut self) -> Result<Vec<Event>, StoreError> {
        if !self.needs_sync() {
            return Ok(Vec::new());
        }
        let _l = self.lock_write()?;
        // The file may have changed since we looked: never write at
        // offsets that are no longer true.
        let mut events = self.refresh_under_lock()?;
        events.extend(self.write_back(&HashSet::new())?);
        Ok(events)
    }

    /// Like [`flush`](Self::flush) but gives up at once when the mailbox
    /// is locked by another program (`LockTimeout`).
    pub fn try_flush(&mut self) -> Result<Vec<Event>, StoreError> {
        if !self.needs_sync() {
            return Ok(Vec::new());
        }
        let Some(_l) = lock::try_lock_write(&self.file, &self.path, &self.opts.lock)? else {
            return Err(StoreError::LockTimeout(self.path.clone()));
        };
        let mut events = self.refresh_under_lock()?;
        events.extend(self.write_back(&HashSet::new())?);
        Ok(events)
    }

    /// Removes the messages with these UIDs from the file. The events say
    /// what changed, including outside changes noticed on the way; the
    /// `Expunged` event lists the UIDs removed.
    pub fn expunge(&mut self, uids: &[u32]) -> Result<Vec<Event>, StoreError> {
        let _l = self.lock_write()?;
        let mut events = self.refresh_under_lock()?;
        let mut set: HashSet<u32> = uids.iter().copied().collect();
        set.retain(|u| self.position(*u).is_some());
        if set.is_empty() && !self.needs_sync() {
            return Ok(events);
        }
        events.extend(self.write_back(&set)?);
        Ok(events)
    }

    /// Someone may have changed the file since we looked: re-read it while
    /// holding the write lock.
    fn refresh_under_lock(&mut self) -> Result<Vec<Event>, StoreError> {
        if self.stat()? == self.id {
            return Ok(Vec::new());
        }
        self.reopen_if_replaced()?;
        self.reload(true, true)
    }

    /// The base as it should be on disk.
    fn base(&self) -> Base {
        Base { uidvalidity: self.uidvalidity, uidnext: self.uidnext, keywords: self.keywords.clone() }
    }

    /// UIDNEXT or the keyword list changed since the base was written.
    fn base_dirty(&self) -> bool {
        self.disk_base.as_ref().is_none_or(|d| {
            d.uidvalidity != self.uidvalidity || d.uidnext != self.uidnext || d.keywords != self.keywords
        })
    }

    fn keyword_names(&self, bits: u64) -> Vec<&str> {
        (0..self.keywords.len()).filter(|i| bits & (1 << i) != 0).map(|i| self.keywords[i].as_str()).collect()
    }

    /// Writes dirty state and removes `expunge`, under the write lock.
    fn write_back(&mut self, expunge: &HashSet<u32>) -> Result<Vec<Event>, StoreError> {
        // Callers re-read the file under the lock when it changed; this is
        // the last line of defence against writing at stale offsets.
        let len = self.file.metadata().map_err(io_err(&self.path, "stat"))?.len();
        if len != self.id.size {
            log::error!("store stale-index path={} indexed={} now={}", self.path.display(), self.id.size, len);
            return Err(StoreError::Changed(self.path.clone()));
        }
        let base = self.base();
        let base_dirty = self.base_dirty();
        let sync = self.opts.fsync;
        // 1. Where must the rewrite start? Only the messages named by the
        // dirty set, the expunge set, the unwritten tail and the carrier of
        // the base are looked at.
        let first_kept = (0..self.messages.len()).find(|&i| !expunge.contains(&self.messages[i].uid));
        let mut start: Option<usize> = None;
        let mut in_place: Vec<(u64, Vec<u8>)> = Vec::new();
        // The base lives in the pseudo-message if there is one.
        if let Some(p) = &self.pseudo {
            if base_dirty {
                match p.state.and_then(|(off, len)| {
                    self.fit_existing(off, len, Some(&base), true, 0, Flags::empty(), &[]).map(|b| (off, b))
                }) {
                    Some(w) => in_place.push(w),
                    None => start = Some(0),
                }
            }
        }
        let min = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) => x,
            (None, y) => y,
        };
        start = min(start, expunge.iter().filter_map(|&u| self.position(u)).min());
        start = min(start, self.first_unpersisted);
        let mut cands: Vec<usize> = self.dirty_uids.iter().filter_map(|&u| self.position(u)).collect();
        if self.pseudo.is_none() && base_dirty {
            cands.extend(first_kept);
        }
        cands.sort_unstable();
        cands.dedup();
        for i in cands {
            if start.is_some_and(|s| s <= i) {
                break;
            }
            let m = &self.messages[i];
            let carries_base = self.pseudo.is_none() && Some(i) == first_kept;
            let kws = self.keyword_names(m.keywords);
            let b = if carries_base { Some(&base) } else { None };
            match m
                .state
                .and_then(|(off, len)| self.fit_existing(off, len, b, false, m.uid, m.flags, &kws).map(|w| (off, w)))
            {
                Some(w) => in_place.push(w),
                None => {
                    start = Some(i);
                    break;
                }
            }
        }
        // What the rewrite covers needs no in-place write.
        let cut = if self.rewrite_all && start == Some(0) {
            0
        } else {
            start.and_then(|s| self.messages.get(s)).map_or(u64::MAX, |m| m.from_off)
        };
        in_place.retain(|(off, _)| *off < cut);
        let mut events = Vec::new();
        // 2. The tail rewrite, first: if it cannot be written (a full disk),
        // nothing at all has changed on disk, and the caller can say so.
        if let Some(s) = start {
            match self.rewrite_from(s, expunge) {
                Ok(ev) => events = ev,
                Err(StoreError::NoSpace) if expunge.iter().any(|&u| self.position(u).is_some()) => {
                    // An expunge frees space: done in place, with no copy.
                    return self.compact_from(s, expunge, &in_place);
                }
                Err(StoreError::NoSpace) => return self.write_in_place_only(&in_place),
                Err(e) => return Err(e),
            }
        }
        // 3. In-place writes: each the same length as what it replaces, line
        // by line, so a torn write never moves a line break.
        for (off, bytes) in &in_place {
            self.file.write_all_at(bytes, *off).map_err(io_err(&self.path, "write"))?;
        }
        if !in_place.is_empty() && sync {
            self.file.sync_data().map_err(io_err(&self.path, "fsync"))?;
        }
        for uid in std::mem::take(&mut self.dirty_uids) {
            if let Some(i) = self.position(uid) {
                self.messages[i].dirty = false;
            }
        }
        self.first_unpersisted = None;
        self.rewrite_all = false;
        if !self.messages.is_empty() || self.pseudo.is_some() {
            self.disk_base = Some(self.base());
        }
        let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        self.id = FileId::of(&meta);
        self.keep_record(&meta);
        Ok(events)
    }

    /// On a full disk, when what needed a rewrite cannot be written: what
    /// fits in place is written, the rest stays in memory to be written
    /// when there is room. `NoSpace` if a flag change is among the rest
    /// (the caller may take it back: see [`Mailbox::pending`]); a base or
    /// new UIDs that wait are only logged (the base is kept in the
    /// state-dir record meanwhile when the file has none).
    fn write_in_place_only(&mut self, in_place: &[(u64, Vec<u8>)]) -> Result<Vec<Event>, StoreError> {
        for (off, bytes) in in_place {
            self.file.write_all_at(bytes, *off).map_err(io_err(&self.path, "write"))?;
            if let Some(i) = self.messages.iter().position(|m| m.state.is_some_and(|(o, _)| o == *off)) {
                let uid = self.messages[i].uid;
                self.messages[i].dirty = false;
                self.dirty_uids.remove(&uid);
            }
        }
        if self.opts.fsync && !in_place.is_empty() {
            self.file.sync_data().map_err(io_err(&self.path, "fsync"))?;
        }
        let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        self.id = FileId::of(&meta);
        self.keep_record(&meta);
        log::warn!(
            "store no-space path={} pending-flags={} pending-uids={} base-pending={}: kept in memory, written when there is room",
            self.path.display(),
            self.dirty_uids.len(),
            self.first_unpersisted.map_or(0, |i| self.messages.len() - i),
            self.base_dirty()
        );
        if self.dirty_uids.is_empty() {
            Ok(Vec::new())
        } else {
            Err(StoreError::NoSpace)
        }
    }

    /// Makes the next write rewrite the whole file with one state: this
    /// UIDVALIDITY (and at least this UIDNEXT) in the one base, every
    /// message's state lines afresh, nothing stray left (`postroom mailbox
    /// repair` of a file with conflicting state).
    pub fn repair_state(&mut self, uidvalidity: u32, uidnext: u32) {
        if uidvalidity != 0 {
            self.uidvalidity = uidvalidity;
        }
        self.uidnext = self.uidnext.max(uidnext);
        for m in &mut self.messages {
            m.persisted = false;
        }
        self.first_unpersisted = (!self.messages.is_empty()).then_some(0);
        self.rewrite_all = true;
    }

    /// True when the flags of message `uid` changed in memory and are not
    /// written yet.
    pub fn pending(&self, uid: u32) -> bool {
        self.dirty_uids.contains(&uid)
    }

    /// Forgets keywords from index `n` of the list on, if no message has
    /// them (a change that added them was taken back).
    pub fn forget_keywords_from(&mut self, n: usize) {
        if n >= self.keywords.len() || n >= MAX_KEYWORDS {
            return;
        }
        let mask = !((1u64 << n) - 1);
        if self.messages.iter().all(|m| m.keywords & mask == 0) {
            self.keywords.truncate(n);
        }
    }

    /// On a full disk, where the journal of a rewrite cannot be written:
    /// removes `expunge` from message `s` on by moving the messages kept
    /// forward in place ([`journal::compact`]), their bytes (state lines
    /// included) as they were. Flag changes that fit are written in place
    /// afterwards; the others, and UIDs not written yet, wait in memory for
    /// a later write, when there is room. A base that was on a message
    /// removed is kept in the state-dir record until then.
    fn compact_from(
        &mut self,
        s: usize,
        expunge: &HashSet<u32>,
        in_place: &[(u64, Vec<u8>)],
    ) -> Result<Vec<Event>, StoreError> {
        let old_len = self.file.metadata().map_err(io_err(&self.path, "stat"))?.len();
        let n = self.messages.len();
        let Some(first) = (s..n).find(|&i| expunge.contains(&self.messages[i].uid)) else {
            return Err(StoreError::NoSpace);
        };
        let p = self.messages[first].from_off;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for i in first..n {
            let m = &self.messages[i];
            if expunge.contains(&m.uid) {
                gone.push(m.uid);
                continue;
            }
            let end = self.messages.get(i + 1).map_or(old_len, |x| x.from_off);
            match ranges.last_mut() {
                Some((src, len)) if *src + *len == m.from_off => *len += end - m.from_off,
                _ => ranges.push((m.from_off, end - m.from_off)),
            }
            kept.push(i);
        }
        // Each step moves at most the room the removed messages leave
        // before it: tiny ones in front of a large mailbox would take ages.
        let steps = journal::compaction_steps(p, &ranges);
        if steps > MAX_COMPACTION_STEPS {
            log::warn!(
                "store no-space path={} expunge=refused steps={steps}: the messages to remove are too small to make room",
                self.path.display()
            );
            return Err(StoreError::NoSpace);
        }
        let mut result = journal::compact(&self.file, &self.path, p, old_len, &ranges, self.opts.fsync);
        if result.as_ref().is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))) {
            // Not even room for the plan: give the disk back the pages of
            // the bodies being removed (their bytes are not needed any more;
            // a crash before they are gone leaves them zeroed, still marked
            // \Deleted) and try again.
            let punched = self.punch(first, expunge);
            log::warn!("store no-space path={} punched={punched} for=compaction-plan", self.path.display());
            result = journal::compact(&self.file, &self.path, p, old_len, &ranges, self.opts.fsync);
        }
        let new_len = result.map_err(io_err(&self.path, "compact"))?;
        log::warn!(
            "store no-space path={} expunged={} freed={} how=compacted-in-place",
            self.path.display(),
            gone.len(),
            old_len - new_len
        );
        // The same bytes, further forward: index them where they are now.
        let scanned = scan::scan(&self.file, p, new_len, self.opts.format).map_err(|e| self.scan_error(e))?;
        let raws: Vec<RawMessage> = scanned.messages.into_iter().filter(|r| !r.pseudo).collect();
        if raws.len() != kept.len() {
            log::error!("store verify path={} kept={} found={}", self.path.display(), kept.len(), raws.len());
            return Err(StoreError::Changed(self.path.clone()));
        }
        let base_lost = self.pseudo.is_none() && first == 0;
        let mut moved = Vec::with_capacity(kept.len());
        for (&i, r) in kept.iter().zip(raws) {
            let want = &self.messages[i];
            if r.size() != want.size || (want.persisted && r.uid != want.uid) {
                log::error!("store verify path={} uid={} after=compaction", self.path.display(), want.uid);
                return Err(StoreError::Changed(self.path.clone()));
            }
            moved.push(Message {
                from_off: r.from_off,
                hdr_off: r.hdr_off,
                body_off: r.body_off,
                end: r.end,
                state: r.state,
                has_state: r.has_state,
                raw_body: r.raw_body,
                hdr_size: r.hdr_size,
                ..want.clone()
            });
        }
        self.messages.truncate(first);
        self.messages.extend(moved);
        for u in &gone {
            self.dirty_uids.remove(u);
        }
        if base_lost {
            self.disk_base = None;
        }
        // What fits in place now: the writes that were due before the
        // compaction, and the flags of messages it moved.
        let mut writes: Vec<(u64, Vec<u8>)> = in_place.to_vec();
        for uid in self.dirty_uids.clone() {
            let Some(i) = self.position(uid) else { continue };
            if i < first {
                continue;
            }
            let m = &self.messages[i];
            let carries_base = self.pseudo.is_none() && i == 0 && self.disk_base.is_some();
            let base = self.base();
            let kws = self.keyword_names(m.keywords);
            let fit = m.state.and_then(|(off, len)| {
                self.fit_existing(off, len, carries_base.then_some(&base), false, m.uid, m.flags, &kws)
                    .map(|w| (off, w))
            });
            if let Some(w) = fit {
                writes.push(w);
                self.messages[i].dirty = false;
                self.dirty_uids.remove(&uid);
            }
        }
        for (off, bytes) in &writes {
            self.file.write_all_at(bytes, *off).map_err(io_err(&self.path, "write"))?;
        }
        for (off, _) in in_place {
            if let Some(i) = self.messages.iter().position(|m| m.state.is_some_and(|(o, _)| o == *off)) {
                let uid = self.messages[i].uid;
                self.messages[i].dirty = false;
                self.dirty_uids.remove(&uid);
            }
        }
        if self.opts.fsync && !writes.is_empty() {
            self.file.sync_data().map_err(io_err(&self.path, "fsync"))?;
        }
        self.first_unpersisted = (0..self.messages.len()).find(|&i| !self.messages[i].persisted);
        let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        self.id = FileId::of(&meta);
        self.keep_record(&meta);
        Ok(if gone.is_empty() { Vec::new() } else { vec![Event::Expunged(gone)] })
    }

    /// Frees the whole pages inside the bodies of the messages of `expunge`
    /// from index `from` on, keeping the file's length and every offset.
    /// Returns the bytes given back.
    fn punch(&self, from: usize, expunge: &HashSet<u32>) -> u64 {
        use std::os::fd::AsRawFd;
        const PAGE: u64 = 4096;
        let mut freed = 0;
        for m in self.messages[from..].iter().filter(|m| expunge.contains(&m.uid)) {
            let start = m.body_off.div_ceil(PAGE) * PAGE;
            let end = m.end / PAGE * PAGE;
            if end <= start {
                continue;
            }
            // SAFETY: fallocate(2) on our descriptor, within the file.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    start as libc::off_t,
                    (end - start) as libc::off_t,
                )
            };
            if rc == 0 {
                freed += end - start;
            }
        }
        freed
    }

    /// Renders a state block that replaces the one at `off` exactly, line
    /// for line, or `None` when it does not fit.
    #[allow(clippy::too_many_arguments)]
    fn fit_existing(
        &self,
        off: u64,
        len: u32,
        base: Option<&Base>,
        pseudo: bool,
        uid: u32,
        flags: Flags,
        kws: &[&str],
    ) -> Option<Vec<u8>> {
        let mut old = vec![0u8; len as usize];
        self.file.read_exact_at(&mut old, off).ok()?;
        let mut out = Vec::with_capacity(old.len());
        let (mut saw_uid, mut saw_base, mut saw_status, mut saw_xstatus, mut saw_kw) =
            (false, false, false, false, false);
        for line in old.split_inclusive(|&b| b == b'\n') {
            let body = line.strip_suffix(b"\n")?;
            let kind = state::classify(line)?;
            let colon = memchr::memchr(b':', body)?;
            let width = body.len() - colon - 1;
            let value = match kind {
                StateHeader::ImapBase | StateHeader::Imap => {
                    let b = base?;
                    if (kind == StateHeader::Imap) != pseudo {
                        return None;
                    }
                    saw_base = true;
                    let mut v = format!("{} {:010}", b.uidvalidity, b.uidnext.saturating_sub(1));
                    for k in &b.keywords {
                        v.push(' ');
                        v.push_str(k);
                    }
                    v
                }
                StateHeader::Uid => {
                    if pseudo {
                        return None;
                    }
                    saw_uid = true;
                    uid.to_string()
                }
                StateHeader::Status => {
                    saw_status = true;
                    let mut v = String::new();
                    if flags.contains(Flags::SEEN) {
                        v.push('R');
                    }
                    if pseudo || !flags.contains(Flags::RECENT) {
                        v.push('O');
                    }
                    v
                }
                StateHeader::XStatus => {
                    saw_xstatus = true;
                    let mut v = String::new();
                    for (f, c) in
                        [(Flags::ANSWERED, 'A'), (Flags::DELETED, 'D'), (Flags::FLAGGED, 'F'), (Flags::DRAFT, 'T')]
                    {
                        if flags.contains(f) {
                            v.push(c);
                        }
                    }
                    v
                }
                StateHeader::Keywords => {
                    saw_kw = true;
                    kws.join(" ")
                }
                StateHeader::ContentLength => return None,
            };
            let text = if value.is_empty() { String::new() } else { format!(" {value}") };
            if text.len() > width {
                return None;
            }
            out.extend_from_slice(&body[..=colon]);
            out.extend_from_slice(text.as_bytes());
            out.extend(std::iter::repeat_n(b' ', width - text.len()));
            out.push(b'\n');
        }
        let need_status = pseudo || flags.contains(Flags::SEEN) || !flags.contains(Flags::RECENT);
        let need_xstatus = flags.0 & (Flags::ANSWERED.0 | Flags::DELETED.0 | Flags::FLAGGED.0 | Flags::DRAFT.0) != 0;
        if (base.is_some() != saw_base)
            || (!pseudo && !saw_uid)
            || (need_status && !saw_status)
            || (need_xstatus && !saw_xstatus)
            || (!kws.is_empty() && !saw_kw)
        {
            return None;
        }
        debug_assert_eq!(out.len(), old.len());
        Some(out)
    }

    /// Rewrites the file from message `s` on, dropping `expunge`, giving
    /// every kept message a fresh state block. Then re-indexes that tail.
    fn rewrite_from(&mut self, s: usize, expunge: &HashSet<u32>) -> Result<Vec<Event>, StoreError> {
        let base = self.base();
        let old_len = self.file.metadata().map_err(io_err(&self.path, "stat"))?.len();
        let rewrite_pseudo = s == 0 && self.pseudo.is_some() && (self.rewrite_all || self.base_dirty()) && {
            let p = self.pseudo.as_ref().expect("checked");
            self.rewrite_all
                || p.state
                    .and_then(|(off, len)| self.fit_existing(off, len, Some(&base), true, 0, Flags::empty(), &[]))
                    .is_none()
        };
        let p_off = if rewrite_pseudo {
            0
        } else {
            self.messages
                .get(s)
                .map_or_else(|| self.pseudo.as_ref().map_or(0, |p| p.end + 1).min(old_len), |m| m.from_off)
        };
        let kept: Vec<usize> = (s..self.messages.len()).filter(|&i| !expunge.contains(&self.messages[i].uid)).collect();
        let gone: Vec<u32> = self.messages[s..].iter().filter(|m| expunge.contains(&m.uid)).map(|m| m.uid).collect();
        let first_kept_overall = self.messages.iter().position(|m| !expunge.contains(&m.uid));
        let mut pieces = Vec::new();
        let need_pseudo = rewrite_pseudo || (self.pseudo.is_none() && first_kept_overall.is_none());
        if need_pseudo {
            pieces.push(Piece::New(self.pseudo_message(&base)));
        }
        let has_pseudo_after = self.pseudo.is_some() || need_pseudo;
        for &i in &kept {
            let m = &self.messages[i];
            let from = self.read_at(m.from_off, (m.hdr_off - m.from_off) as usize)?;
            let mut from = from;
            if from.last() != Some(&b'\n') {
                from.push(b'\n');
            }
            pieces.push(Piece::New(from));
            let kws = self.keyword_names(m.keywords);
            let carries_base = !has_pseudo_after && Some(i) == first_kept_overall;
            let block = state::render(
                &state::Block { base: carries_base.then_some(&base), uid: m.uid, flags: m.flags, keywords: &kws },
                None,
            )
            .expect("unconstrained render");
            pieces.push(Piece::New(block));
            match m.state {
                Some((off, len)) => {
                    pieces.push(Piece::Old(m.hdr_off, off - m.hdr_off));
                    pieces.push(Piece::Old(off + len as u64, m.end - (off + len as u64)));
                }
                None if !m.has_state => pieces.push(Piece::Old(m.hdr_off, m.end - m.hdr_off)),
                None => {
                    let hdr = self.read_at(m.hdr_off, (m.body_off - m.hdr_off) as usize)?;
                    pieces.push(Piece::New(strip_state_lines(&hdr)));
                    pieces.push(Piece::Old(m.body_off, m.end - m.body_off));
                }
            }
            pieces.push(Piece::New(b"\n".to_vec()));
        }
        let pieces: Vec<Piece> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let new_len = journal::rewrite_tail(&self.file, &self.path, p_off, old_len, &pieces, self.opts.fsync)
            .map_err(io_err(&self.path, "rewrite"))?;
        // Re-index what we wrote and check it says what we meant.
        let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        let scanned = scan::scan(&self.file, p_off, new_len, self.opts.format).map_err(|e| self.scan_error(e))?;
        let kept_msgs: Vec<Message> = kept.iter().map(|&i| self.messages[i].clone()).collect();
        let mut raws = scanned.messages.into_iter();
        if p_off == 0 && has_pseudo_after {
            let r = raws.next().ok_or_else(|| StoreError::Changed(self.path.clone()))?;
            self.pseudo = Some(Pseudo { end: r.end, state: r.state });
        }
        self.messages.truncate(s);
        for (want, r) in kept_msgs.into_iter().zip(raws.by_ref()) {
            if r.uid != want.uid {
                log::error!("store verify path={} want-uid={} got-uid={}", self.path.display(), want.uid, r.uid);
                return Err(StoreError::Changed(self.path.clone()));
            }
            self.messages.push(Message {
                from_off: r.from_off,
                hdr_off: r.hdr_off,
                body_off: r.body_off,
                end: r.end,
                state: r.state,
                has_state: r.has_state,
                raw_body: r.raw_body,
                size: r.size(),
                hdr_size: r.hdr_size,
                dirty: false,
                persisted: true,
                ..want
            });
        }
        self.id = FileId::of(&meta);
        let mut events = Vec::new();
        if !gone.is_empty() {
            events.push(Event::Expunged(gone));
        }
        Ok(events)
    }

    fn read_at(&self, off: u64, n: usize) -> Result<Vec<u8>, StoreError> {
        let mut v = vec![0u8; n];
        self.file.read_exact_at(&mut v, off).map_err(io_err(&self.path, "read"))?;
        Ok(v)
    }

    /// UW-IMAP's "FOLDER INTERNAL DATA" message: it keeps UIDVALIDITY,
    /// UIDNEXT and the keyword list of a mailbox with no messages. Hidden
    /// from clients and counted nowhere.
    fn pseudo_message(&self, base: &Base) -> Vec<u8> {
        let t = now();
        let mut out = from_line::format("MAILER-DAEMON", t).into_bytes();
        out.push(b'\n');
        out.extend_from_slice(format!("Date: {}\n", rfc2822_date(t)).as_bytes());
        out.extend_from_slice(
            format!("From: Mail System Internal Data <MAILER-DAEMON@{}>\n", self.opts.hostname).as_bytes(),
        );
        out.extend_from_slice(b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n");
        out.extend_from_slice(format!("Message-ID: <{}@{}>\n", t, self.opts.hostname).as_bytes());
        let mut x = format!("X-IMAP: {} {:010}", base.uidvalidity, base.uidnext.saturating_sub(1));
        for k in &base.keywords {
            x.push(' ');
            x.push_str(k);
        }
        out.extend_from_slice(x.as_bytes());
        out.extend(std::iter::repeat_n(b' ', state::BASE_PADDING));
        out.extend_from_slice(b"\nStatus: RO\n\n");
        out.extend_from_slice(
            b"This text is part of the internal format of your mail folder, and is not\n\
a real message.  It is created automatically by the mail system software.\n\
If deleted, important folder data will be lost, and it will be re-created\n\
with the data reset to initial values.\n\n",
        );
        out
    }

    /// Appends a message (content as the client sent it) with these flags,
    /// writing its UID at once. Returns the UID and what changed.
    pub fn append(
        &mut self,
        content: &[u8],
        flags: Flags,
        keywords: &[&str],
        date: Option<i64>,
        sender: &str,
    ) -> Result<(u32, Vec<Event>), StoreError> {
        let _l = self.lock_write()?;
        let mut events = self.refresh_under_lock()?;
        // New mail from others first gets its UIDs, so ours is the highest.
        if self.needs_sync() {
            events.extend(self.write_back(&HashSet::new())?);
        }
        let mut kw = 0u64;
        let mut names = Vec::new();
        for k in keywords {
            if let Some(i) = self.keyword_bit(k) {
                if kw & (1 << i) == 0 {
                    kw |= 1 << i;
                    names.push(self.keywords[i].clone());
                }
            }
        }
        let uid = self.uidnext;
        let carries_base = self.pseudo.is_none() && self.messages.is_empty();
        let base =
            Base { uidvalidity: self.uidvalidity, uidnext: uid.saturating_add(1), keywords: self.keywords.clone() };
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let block = state::render(
            &state::Block { base: carries_base.then_some(&base), uid, flags, keywords: &name_refs },
            None,
        )
        .expect("unconstrained render");
        let date = date.unwrap_or_else(now);
        let data = self.framed(&block, content, sender, date)?;
        journal::append(&self.file, &self.path, &data, self.opts.fsync).map_err(io_err(&self.path, "append"))?;
        self.uidnext = uid.saturating_add(1);
        if carries_base {
            self.disk_base = Some(self.base());
        }
        // Index the new message from the file, then write the new UIDNEXT
        // into the base (in place as a rule).
        let meta = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        let start = meta.len() - data.len() as u64;
        let s = scan::scan(&self.file, start, meta.len(), self.opts.format).map_err(|e| self.scan_error(e))?;
        let r = s.messages.into_iter().next().ok_or_else(|| StoreError::Changed(self.path.clone()))?;
        self.messages.push(Message {
            uid,
            flags,
            keywords: kw,
            date,
            size: r.size(),
            hdr_size: r.hdr_size,
            from_off: r.from_off,
            hdr_off: r.hdr_off,
            body_off: r.body_off,
            end: r.end,
            state: r.state,
            has_state: true,
            raw_body: false,
            dirty: false,
            persisted: true,
        });
        self.id = FileId::of(&meta);
        if self.base_dirty() {
            events.extend(self.write_back(&HashSet::new())?);
        }
        self.keep_record_now();
        events.push(Event::Appended(vec![uid]));
        Ok((uid, events))
    }

    /// `From_` line, state block, stored content, separator; preceded by a
    /// newline if the file does not end with one.
    fn framed(&self, block: &[u8], content: &[u8], sender: &str, date: i64) -> Result<Vec<u8>, StoreError> {
        let body = transform::stored(content, self.opts.format);
        let mut data = Vec::with_capacity(body.len() + block.len() + 100);
        let len = self.file.metadata().map_err(io_err(&self.path, "stat"))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            self.file.read_exact_at(&mut last, len - 1).map_err(io_err(&self.path, "read"))?;
            if last[0] != b'\n' {
                data.push(b'\n');
            }
        }
        data.extend_from_slice(from_line::format(sender, date).as_bytes());
        data.push(b'\n');
        data.extend_from_slice(block);
        data.extend_from_slice(&body);
        data.push(b'\n');
        Ok(data)
    }

    /// Holds a shared fcntl lock while reading message bytes, and checks
    /// that the file is still the one indexed.
    pub(crate) fn with_read<T>(&self, f: impl FnOnce(&File) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // When a reader already holds the lock, the file was checked then
        // and no cooperating writer can have changed it since.
        let checked = {
            let mut g = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_mut() {
                Some((n, _)) => {
                    *n += 1;
                    true
                }
                None => {
                    *g = Some((1, lock::lock_read(&self.file, &self.path, &self.opts.lock)?));
                    false
                }
            }
        };
        let res = if !checked && self.stat()? != self.id {
            Err(StoreError::Changed(self.path.clone()))
        } else {
            f(&self.file)
        };
        let mut g = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = g.as_mut() {
            *n -= 1;
            if *n == 0 {
                *g = None;
            }
        }
        res
    }

    /// Runs `f` holding one read lock throughout, so that the many reads
    /// of a FETCH or SEARCH over many messages lock and check the file
    /// once rather than once per message. Nothing that waits on a client
    /// may run inside: see [`reader`] for sending messages.
    pub fn reading<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with_read(|_| f())
    }

    /// Writes message `i` as a client sees it (header, blank line, body;
    /// CRLF line ends) to `out`, under the read lock throughout: for a
    /// copy in memory or a file, never a socket (a client that stops
    /// reading would hold the lock; [`reader::Reader`] serves those).
    /// Returns the bytes written, which equal [`Message::size`].
    /// `Changed` means: refresh, then try again.
    pub fn write_message(&self, i: usize, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.write_part(i, Part::Whole, out)
    }

    /// The message as a client sees it, in memory.
    pub fn message_bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        let mut v = Vec::with_capacity(self.messages[i].size as usize);
        let mut r = Reader::new(self, i, Part::Whole, None);
        while !r.fill(self, &mut v, usize::MAX)? {}
        Ok(v)
    }

    /// What the `From_` line of message `i` says (envelope sender and date).
    pub fn from_line(&self, i: usize) -> Result<from_line::FromLine, StoreError> {
        let m = &self.messages[i];
        let line = self.with_read(|_| self.read_at(m.from_off, (m.hdr_off - m.from_off).min(1100) as usize))?;
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        Ok(from_line::parse(line).unwrap_or(from_line::FromLine { sender: "MAILER-DAEMON".into(), date: m.date }))
    }

    /// Writes only the header (with its blank line) of message `i`, as
    /// [`Mailbox::write_message`] does.
    pub fn write_header(&self, i: usize, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.write_part(i, Part::Header, out)
    }

    /// Writes only the body of message `i`, as [`Mailbox::write_message`] does.
    pub fn write_body(&self, i: usize, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.write_part(i, Part::Text, out)
    }

    fn write_part(&self, i: usize, part: Part, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.with_read(|_| {
            let mut r = Reader::new(self, i, part, None);
            let mut buf = Vec::new();
            loop {
                let done = r.fill(self, &mut buf, reader::CHUNK)?;
                out.write_all(&buf).map_err(io_err(&self.path, "write"))?;
                buf.clear();
                if done {
                    return Ok(r.handed());
                }
            }
        })
    }
}

/// What [`reader`] needs of the index beyond the public accessors.
impl Mailbox {
    pub(crate) fn format(&self) -> MboxFormat {
        self.opts.format
    }

    /// Where message `i` lies in the file.
    pub(crate) fn layout(&self, i: usize) -> reader::Layout {
        let m = &self.messages[i];
        reader::Layout { hdr_off: m.hdr_off, body_off: m.body_off, end: m.end, raw_body: m.raw_body }
    }
}

/// A header block without its state lines (Content-Length stays: it may
/// be what delimits the body).
fn strip_state_lines(hdr: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hdr.len());
    for line in hdr.split_inclusive(|&b| b == b'\n') {
        let folded = line[0] == b' ' || line[0] == b'\t';
        if folded || !matches!(state::classify(line), Some(k) if k != StateHeader::ContentLength) {
            out.extend_from_slice(line);
        }
    }
    out
}

/// A fresh UIDVALIDITY: the time, as UW-IMAP and Dovecot choose it.
fn new_uidvalidity() -> u32 {
    static LAST: Mutex<u32> = Mutex::new(0);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let t = (now() as u32).max(1);
    // Two mailboxes created in the same second still differ from each
    // other's earlier values within this process.
    *last = if t > *last { t } else { *last + 1 };
    *last
}

/// RFC 5322 date in UTC.
pub fn rfc2822_date(t: i64) -> String {
    let a = from_line::asctime(t);
    // asctime: "Www Mmm dd hh:mm:ss yyyy"
    let w: Vec<&str> = a.split_whitespace().collect();
    format!("{}, {} {} {} {} +0000", w[0], w[2], w[1], w[4], w[3])
}

//! Mailbox locking: dotlock plus fcntl, in the order the MTA uses.
//!
//! Writers take every method of [`LockSettings::order`] in turn (Debian's
//! MTAs and Postfix `mailbox_delivery_lock`: dotlock, then fcntl), so that
//! postroom and the MTA never wait for each other in opposite orders.
//! Readers take only a shared fcntl lock. Both wait with a short backoff up
//! to [`LockSettings::timeout`], then give up with
//! [`StoreError::LockTimeout`].
//!
//! - **Dotlock** `<mbox>.lock`: created with `O_CREAT|O_EXCL`, holding our
//!   pid and a newline. A dotlock left behind by a crash or a full disk would
//!   block delivery for good, so one is broken when its mtime is older than
//!   [`LockSettings::dotlock_stale`], when it names a pid that no longer
//!   exists on this host, or when it is empty or unparseable and older than
//!   [`LockSettings::dotlock_stale_empty`] (its owner died before writing
//!   its pid). Dotlocks work over NFS, which fcntl locks may not.
//! - **fcntl**: on Linux an open file description (OFD) lock on the whole
//!   file. It belongs to the open file, not to the process, so the threads of
//!   this process exclude each other, closing some other descriptor of the
//!   same file does not drop it, and it still conflicts with the classic
//!   POSIX `fcntl` locks that Postfix, procmail and mutt take. Each user of a
//!   lock must therefore open the mbox itself: two locks through one open
//!   file description are one lock.
//!
//! [`SessionLock`] is a different thing: the POP maildrop lock of RFC 1939,
//! held for a whole session without touching the mbox file, so that the MTA
//! keeps delivering while a POP client reads.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};

use super::StoreError;

/// One way of locking an mbox file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMethod {
    /// `<mbox>.lock`, created with O_EXCL.
    Dotlock,
    /// An fcntl write lock on the whole file (OFD lock on Linux).
    Fcntl,
}

/// How mailboxes are locked (postroom.conf `mbox-lock-order`, `mbox-lock-timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSettings {
    pub order: Vec<LockMethod>,
    pub timeout: Duration,
    /// A dotlock older than this is stale and is broken.
    pub dotlock_stale: Duration,
    /// An empty or unparseable dotlock (no pid to check) older than this
    /// is stale too.
    pub dotlock_stale_empty: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings {
            order: vec![LockMethod::Dotlock, LockMethod::Fcntl],
            timeout: Duration::from_secs(30),
            dotlock_stale: Duration::from_secs(300),
            dotlock_stale_empty: crate::limits::DOTLOCK_STALE_EMPTY,
        }
    }
}

/// The first pause between two attempts at a busy lock; it doubles up to
/// [`BACKOFF_MAX`]. Appends by the MTA take milliseconds, so start short.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// The longest pause between two attempts, so that a freed lock is noticed
/// within a fifth of a second.
const BACKOFF_MAX: Duration = Duration::from_millis(200);

#[cfg(target_os = "linux")]
const SETLK: libc::c_int = libc::F_OFD_SETLK;
/// Without OFD locks, classic POSIX locks: they still exclude other
/// processes, but not the threads of this one.
#[cfg(not(target_os = "linux"))]
const SETLK: libc::c_int = libc::F_SETLK;

/// Held locks on one mbox; released in reverse order on drop.
#[derive(Debug)]
pub struct MboxLock {
    path: PathBuf,
    held: Vec<Held>,
}

/// One lock that an [`MboxLock`] holds.
#[derive(Debug)]
enum Held {
    /// Our dotlock file, kept open so that [`MboxLock::touch`] can refresh
    /// it and release can tell it from a lock someone else made since.
    Dotlock { path: PathBuf, file: File },
    /// A duplicate of the caller's descriptor: it shares the open file
    /// description, so it can release the OFD lock even after the caller
    /// closed its own descriptor.
    Fcntl(File),
}

impl MboxLock {
    /// The mbox this lock is for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refreshes the dotlock's mtime. A writer busy for longer than
    /// [`LockSettings::dotlock_stale`] (a rewrite of a very large mailbox)
    /// calls this now and then so that nobody breaks its lock as stale.
    pub fn touch(&self) -> Result<(), StoreError> {
        for held in &self.held {
            if let Held::Dotlock { path, file } = held {
                file.set_modified(SystemTime::now())
                    .map_err(|e| StoreError::io(format!("refreshing dotlock {}", path.display()), e))?;
            }
        }
        Ok(())
    }
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        while let Some(held) = self.held.pop() {
            match held {
                Held::Fcntl(file) => {
                    if let Err(e) = ofd_lock(&file, libc::F_UNLCK) {
                        warn!("lock unlock-failed path={} error={e}", self.path.display());
                    }
                }
                Held::Dotlock { path, file } => release_dotlock(&path, &file),
            }
        }
    }
}

/// Takes the write locks (every method of `settings.order`, in that order).
///
/// All methods share one deadline, `settings.timeout` from now. `file` must
/// be open for writing. A method named twice in the order is taken once.
pub fn lock_write(file: &File, path: &Path, settings: &LockSettings) -> Result<MboxLock, StoreError> {
    let deadline = Instant::now() + settings.timeout;
    acquire_write(file, path, settings, deadline)?.ok_or_else(|| StoreError::LockTimeout(path.to_path_buf()))
}

/// Takes the write locks like [`lock_write`] but does not wait: `Ok(None)`
/// when someone else holds one of them. Stale dotlocks are still broken.
/// For writing flags back when nobody minds.
pub fn try_lock_write(file: &File, path: &Path, settings: &LockSettings) -> Result<Option<MboxLock>, StoreError> {
    acquire_write(file, path, settings, Instant::now())
}

/// Takes a shared fcntl read lock only (readers do not dotlock).
pub fn lock_read(file: &File, path: &Path, settings: &LockSettings) -> Result<MboxLock, StoreError> {
    let deadline = Instant::now() + settings.timeout;
    let mut lock = MboxLock { path: path.to_path_buf(), held: Vec::new() };
    match fcntl_acquire(file, path, libc::F_RDLCK, deadline)? {
        Some(held) => lock.held.push(held),
        None => return Err(StoreError::LockTimeout(path.to_path_buf())),
    }
    Ok(lock)
}

fn acquire_write(
    file: &File,
    path: &Path,
    settings: &LockSettings,
    deadline: Instant,
) -> Result<Option<MboxLock>, StoreError> {
    // On any early return `lock` drops and releases what it took so far,
    // in reverse order.
    let mut lock = MboxLock { path: path.to_path_buf(), held: Vec::new() };
    let mut done: Vec<LockMethod> = Vec::new();
    for &method in &settings.order {
        if done.contains(&method) {
            continue;
        }
        done.push(method);
        let held = match method {
            LockMethod::Dotlock => dotlock_acquire(path, settings, deadline)?,
            LockMethod::Fcntl => fcntl_acquire(file, path, libc::F_WRLCK, deadline)?,
        };
        match held {
            Some(held) => lock.held.push(held),
            None => return Ok(None),
        }
    }
    Ok(Some(lock))
}

/// Waits between attempts: doubling pauses, never past the deadline.
struct Backoff {
    pause: Duration,
    deadline: Instant,
}

impl Backoff {
    fn new(deadline: Instant) -> Backoff {
        Backoff { pause: BACKOFF_START, deadline }
    }

    /// Sleeps before the next attempt; false once the deadline has passed.
    fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        thread::sleep(self.pause.min(self.deadline - now));
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
        true
    }
}

// ---- fcntl ----

/// Sets (or with `F_UNLCK` clears) a whole-file lock without waiting.
/// `Ok(false)` when another lock conflicts.
fn ofd_lock(file: &File, kind: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock is plain data; all-zero is a valid value, and l_pid must
    // be 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end of the file, however it grows
    fl.l_pid = 0;
    loop {
        // SAFETY: the descriptor is open for the lifetime of `file`, and
        // `fl` is a valid flock that outlives the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), SETLK, &fl as *const libc::flock) };
        if rc != -1 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn fcntl_acquire(file: &File, path: &Path, kind: libc::c_int, deadline: Instant) -> Result<Option<Held>, StoreError> {
    let what = if kind == libc::F_RDLCK { "read" } else { "write" };
    let mut backoff = Backoff::new(deadline);
    loop {
        match ofd_lock(file, kind) {
            Ok(true) => break,
            Ok(false) if backoff.wait() => continue,
            Ok(false) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                return Err(StoreError::io(
                    format!("fcntl {what} lock on {}: the file is not open for {what}ing", path.display()),
                    e,
                ))
            }
            Err(e) => return Err(StoreError::io(format!("fcntl {what} lock on {}", path.display()), e)),
        }
    }
    match file.try_clone() {
        Ok(dup) => Ok(Some(Held::Fcntl(dup))),
        Err(e) => {
            let _ = ofd_lock(file, libc::F_UNLCK);
            Err(StoreError::io(format!("duplicating the descriptor of {}", path.display()), e))
        }
    }
}

// ---- dotlock ----

/// `<mbox>.lock`, next to the mbox.
pub fn dotlock_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

fn dotlock_acquire(path: &Path, settings: &LockSettings, deadline: Instant) -> Result<Option<Held>, StoreError> {
    let lock_path = dotlock_path(path);
    let mut backoff = Backoff::new(deadline);
    loop {
        // A stale lock removed lets us try again at once, but someone else
        // may win the race for the free name: a few rounds, then back off.
        for _ in 0..3 {
            if let Some(held) = dotlock_create(&lock_path)? {
                return Ok(Some(held));
            }
            if !break_if_stale(&lock_path, settings)? {
                break;
            }
        }
        if !backoff.wait() {
            return Ok(None);
        }
    }
}

/// One attempt to create the dotlock. `Ok(None)` when it exists.
fn dotlock_create(lock_path: &Path) -> Result<Option<Held>, StoreError> {
    // O_CREAT|O_EXCL|O_WRONLY (and O_CLOEXEC): never follows a symlink,
    // and is atomic on NFS v3 and later too.
    let opened = OpenOptions::new().write(true).create_new(true).mode(0o644).open(lock_path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            // Deliberately no fallback to fcntl alone: the MTA dotlocks, and
            // writing without its lock could interleave with a delivery.
            // Losing mail is worse than refusing to work, so say what to fix
            // (on Debian: /var/mail is root:mail 2775, run in group mail).
            let dir = lock_path.parent().unwrap_or(Path::new("."));
            return Err(StoreError::io(
                format!(
                    "cannot create dotlock {}: no permission to create files in {} (postroom needs write access \
                     to the mail spool directory, usually through its group)",
                    lock_path.display(),
                    dir.display()
                ),
                e,
            ));
        }
        Err(e) => return Err(StoreError::io(format!("creating dotlock {}", lock_path.display()), e)),
    };
    if let Err(e) = file.write_all(format!("{}\n", std::process::id()).as_bytes()) {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            // A full disk has room for an empty file but not for its pid:
            // held empty, it is still ours (released by inode), and an
            // expunge that frees the disk can go on. Others judge it by
            // `dotlock-stale-empty`, and the fcntl lock still keeps them out.
            warn!("lock dotlock-without-pid path={} reason=no-space", lock_path.display());
            let _ = file.set_len(0);
            return Ok(Some(Held::Dotlock { path: lock_path.to_path_buf(), file }));
        }
        // A lock file we cannot fill must not stay behind.
        if same_file(lock_path, &file) {
            let _ = fs::remove_file(lock_path);
        }
        return Err(StoreError::io(format!("writing dotlock {}", lock_path.display()), e));
    }
    Ok(Some(Held::Dotlock { path: lock_path.to_path_buf(), file }))
}

/// True when `path` names the very file `file` has open.
fn same_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the dotlock at `lock_path` if it is stale. `Ok(true)` when the
/// name may be free now (removed, or gone by itself).
fn break_if_stale(lock_path: &Path, settings: &LockSettings) -> Result<bool, StoreError> {
    let first = match fs::symlink_metadata(lock_path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(StoreError::io(format!("checking dotlock {}", lock_path.display()), e)),
    };
    if !first.file_type().is_file() {
        // Not something a mail program makes: leave it to the administrator.
        return Ok(false);
    }
    let reason = match stale_reason(lock_path, &first, settings) {
        Some(reason) => reason,
        None => return Ok(false),
    };
    // Another process may have broken the same lock and made a fresh one
    // since we looked: remove only the file we judged.
    let again = match fs::symlink_metadata(lock_path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(StoreError::io(format!("checking dotlock {}", lock_path.display()), e)),
    };
    if !unchanged(&first, &again) {
        return Ok(false);
    }
    match fs::remove_file(lock_path) {
        Ok(()) => {
            warn!("lock stale-dotlock-removed path={} reason={reason}", lock_path.display());
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StoreError::io(format!("removing stale dotlock {}", lock_path.display()), e)),
    }
}

fn unchanged(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev()
        && a.ino() == b.ino()
        && a.size() == b.size()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
}

/// Why the dotlock described by `meta` is stale, or `None` if it is live.
///
/// Older than `dotlock-stale`: stale, whoever made it. Naming a pid that
/// does not exist on this host: stale. Empty or unparseable (its owner was
/// killed before it wrote its pid, or it is an MTA's that leaves it empty):
/// stale after the shorter `dotlock-stale-empty`. One we cannot read is
/// judged by age only. The pid is taken to be of this host: on storage
/// shared between hosts, postroom and the MTA must run on one.
fn stale_reason(lock_path: &Path, meta: &Metadata, settings: &LockSettings) -> Option<String> {
    // An mtime in the future (clock skew) is not old.
    let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
    if let Some(age) = age.filter(|a| *a > settings.dotlock_stale) {
        return Some(format!("age={}s", age.as_secs()));
    }
    match read_pid(lock_path, meta)? {
        Owner::Pid(pid) if process_exists(pid) => None,
        Owner::Pid(pid) => Some(format!("dead-pid={pid}")),
        Owner::Unknown => {
            let age = age.filter(|a| *a > settings.dotlock_stale_empty)?;
            Some(format!("no-pid age={}s", age.as_secs()))
        }
    }
}

/// What a dotlock says about who holds it.
enum Owner {
    Pid(libc::pid_t),
    /// Empty, or not a pid.
    Unknown,
}

/// What is written in a dotlock (a decimal pid, optionally followed by
/// white space or NULs), if it can be read from the very file `meta`
/// describes; `None` when it cannot be read.
fn read_pid(lock_path: &Path, meta: &Metadata) -> Option<Owner> {
    let mut file =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(lock_path).ok()?;
    let opened = file.metadata().ok()?;
    if opened.dev() != meta.dev() || opened.ino() != meta.ino() {
        return None;
    }
    let mut buf = [0u8; 32];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(parse_pid(&buf[..len]).map_or(Owner::Unknown, Owner::Pid))
}

fn parse_pid(bytes: &[u8]) -> Option<libc::pid_t> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // kill() with 0 or a negative number signals process groups: only
    // positive pids mean a process.
    let pid: libc::pid_t = text.parse().ok()?;
    (pid > 0).then_some(pid)
}

/// False only when the kernel says there is no such process. A process of
/// another user (EPERM) is alive.
fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes our dotlock, unless it is no longer ours (someone broke it as
/// stale and made their own): that one belongs to its new holder.
fn release_dotlock(lock_path: &Path, file: &File) {
    if !same_file(lock_path, file) {
        warn!("lock dotlock-not-ours path={} action=left-in-place", lock_path.display());
        return;
    }
    if let Err(e) = fs::remove_file(lock_path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!("lock dotlock-remove-failed path={} error={e}", lock_path.display());
        }
    }
}

// ---- the POP maildrop lock ----

/// Lock-file names held by the [`SessionLock`]s of this process.
static SESSIONS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn sessions() -> MutexGuard<'static, BTreeSet<String>> {
    // A panic elsewhere while holding the mutex leaves the set consistent:
    // every change is a single insert or remove.
    SESSIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The POP maildrop lock: exclusive between sessions in this process and in
/// other processes; never blocks the MTA.
///
/// It never touches the mbox file: it is an entry in a registry of this
/// process plus an fcntl lock on small files in the state directory. Two
/// such files are locked:
///
/// - `pop-path-<hash>.lock`, from the canonical path of the mbox, which
///   exists before the MTA creates the mbox and stays the same when a
///   rewrite renames a new file over it;
/// - `pop-<dev>-<ino>.lock`, from the mbox's device and inode when it
///   exists, which also catches the same file under another name (a hard
///   link).
///
/// The lock files are removed on release, while still locked; whoever
/// locks one checks afterwards that the name still leads to the file locked.
#[derive(Debug)]
pub struct SessionLock {
    mbox: PathBuf,
    parts: Vec<SessionPart>,
}

#[derive(Debug)]
struct SessionPart {
    key: String,
    path: PathBuf,
    file: File,
}

impl SessionLock {
    /// Takes the maildrop lock of `mbox`, or fails at once with
    /// [`StoreError::InUse`]. Creates `state_dir` (mode 0700) if missing.
    pub fn try_acquire(mbox: &Path, state_dir: &Path) -> Result<SessionLock, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| StoreError::io(format!("creating state directory {}", state_dir.display()), e))?;
        let mut lock = SessionLock { mbox: mbox.to_path_buf(), parts: Vec::new() };
        for key in session_keys(mbox)? {
            if !sessions().insert(key.clone()) {
                return Err(StoreError::InUse(mbox.to_path_buf()));
            }
            let path = state_dir.join(&key);
            match lock_session_file(&path) {
                Ok(Some(file)) => lock.parts.push(SessionPart { key, path, file }),
                Ok(None) => {
                    sessions().remove(&key);
                    return Err(StoreError::InUse(mbox.to_path_buf()));
                }
                Err(e) => {
                    sessions().remove(&key);
                    return Err(e);
                }
            }
        }
        debug!("lock session-acquired mbox={}", mbox.display());
        Ok(lock)
    }

    /// A cheap look, without taking anything: false when no session of
    /// this process holds the lock of `mbox` and no lock file exists (so
    /// no process holds it). True means it may be held: ask
    /// [`try_acquire`](Self::try_acquire) to know.
    pub fn may_be_held(mbox: &Path, state_dir: &Path) -> bool {
        let Ok(keys) = session_keys(mbox) else { return true };
        keys.iter().any(|k| sessions().contains(k) || state_dir.join(k).exists())
    }

    /// The mbox this lock is for.
    pub fn mailbox(&self) -> &Path {
        &self.mbox
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        while let Some(part) = self.parts.pop() {
            // Unlink while still holding the lock (see lock_session_file).
            if same_file(&part.path, &part.file) {
                if let Err(e) = fs::remove_file(&part.path) {
                    warn!("lock session-file-remove-failed path={} error={e}", part.path.display());
                }
            }
            drop(part.file); // closing the only descriptor releases the OFD lock
            sessions().remove(&part.key);
        }
    }
}

/// The lock-file names for `mbox` (see [`SessionLock`]).
fn session_keys(mbox: &Path) -> Result<Vec<String>, StoreError> {
    let canon = canonical_or_lexical(mbox)
        .map_err(|e| StoreError::io(format!("resolving mailbox path {}", mbox.display()), e))?;
    let mut keys = vec![format!("pop-path-{:016x}.lock", fnv1a64(canon.as_os_str().as_bytes()))];
    match fs::metadata(mbox) {
        Ok(m) => keys.push(format!("pop-{}-{}.lock", m.dev(), m.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(format!("checking mailbox {}", mbox.display()), e)),
    }
    Ok(keys)
}

/// The canonical path of `path`; for a file that does not exist yet, the
/// canonical path of its directory plus its name; failing that, the
/// absolute path as written.
fn canonical_or_lexical(path: &Path) -> io::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(p) => return Ok(p),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if let Ok(dir) = fs::canonicalize(parent) {
            return Ok(dir.join(name));
        }
    }
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// 64-bit FNV-1a: a hash that every postroom build and process computes
/// the same way (std's hasher makes no such promise), so that two processes
/// name the same lock file.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Opens and write-locks one session lock file without waiting.
/// `Ok(None)` when another session holds it.
fn lock_session_file(path: &Path) -> Result<Option<File>, StoreError> {
    let ctx = || format!("session lock file {}", path.display());
    // The previous holder unlinks the file as it releases it, so the file we
    // opened may be gone from the directory by the time we hold its lock; a
    // lock on an unlinked file excludes no one. Retry a few times.
    for _ in 0..8 {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| StoreError::io(ctx(), e))?;
        if !ofd_lock(&file, libc::F_WRLCK).map_err(|e| StoreError::io(ctx(), e))? {
            return Ok(None);
        }
        if !same_file(path, &file) {
            continue;
        }
        // For the administrator wondering who holds a maildrop.
        let pid = format!("{}\n", std::process::id());
        let _ = file.set_len(0).and_then(|()| file.write_all(pid.as_bytes()));
        return Ok(Some(file));
    }
    Err(StoreError::io(ctx(), io::Error::other("the lock file keeps being replaced")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    fn settings(order: &[LockMethod], timeout_ms: u64) -> LockSettings {
        LockSettings {
            order: order.to_vec(),
            timeout: Duration::from_millis(timeout_ms),
            dotlock_stale: Duration::from_secs(300),
            dotlock_stale_empty: Duration::from_secs(10),
        }
    }

    const BOTH: &[LockMethod] = &[LockMethod::Dotlock, LockMethod::Fcntl];

    fn mbox(dir: &Path) -> PathBuf {
        let p = dir.join("mbox");
        fs::write(&p, b"").unwrap();
        p
    }

    fn open_rw(p: &Path) -> File {
        OpenOptions::new().read(true).write(true).open(p).unwrap()
    }

    fn have_python() -> bool {
        let ok = Command::new("python3")
            .args(["-c", "import fcntl"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipping: python3 with fcntl is not installed");
        }
        ok
    }

    /// A child that holds a classic POSIX fcntl lock (lockf) on `path`
    /// until its stdin closes, as Postfix or procmail would.
    struct PosixHolder {
        child: Child,
    }

    impl PosixHolder {
        fn start(path: &Path) -> PosixHolder {
            let script = "import fcntl, sys\n\
                          f = open(sys.argv[1], 'r+')\n\
                          fcntl.lockf(f, fcntl.LOCK_EX)\n\
                          print('locked', flush=True)\n\
                          sys.stdin.read()\n";
            let mut child = Command::new("python3")
                .args(["-c", script])
                .arg(path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "locked");
            PosixHolder { child }
        }

        fn stop(mut self) {
            drop(self.child.stdin.take());
            self.child.wait().unwrap();
        }
    }

    /// Whether a classic POSIX lock (lockf, non-blocking) can be taken on
    /// `path` by another process right now.
    fn posix_lock_free(path: &Path) -> bool {
        let script = "import fcntl, sys\n\
                      f = open(sys.argv[1], 'r+')\n\
                      try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('busy')\n\
                      else:\n    print('free')\n";
        let out = Command::new("python3").args(["-c", script]).arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "free"
    }

    #[test]
    fn second_writer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        for order in [BOTH, &[LockMethod::Fcntl][..], &[LockMethod::Dotlock][..]] {
            let first = lock_write(&open_rw(&p), &p, &settings(order, 1000)).unwrap();
            let p2 = p.clone();
            let s = settings(order, 150);
            let (elapsed, result) = thread::spawn(move || {
                let start = Instant::now();
                let r = lock_write(&open_rw(&p2), &p2, &s);
                (start.elapsed(), r)
            })
            .join()
            .unwrap();
            assert!(matches!(result, Err(StoreError::LockTimeout(_))), "{order:?}: {result:?}");
            assert!(elapsed >= Duration::from_millis(150), "{order:?}: gave up after {elapsed:?}");
            drop(first);
        }
        assert!(!dotlock_path(&p).exists());
    }

    #[test]
    fn second_writer_gets_lock_after_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let first = lock_write(&open_rw(&p), &p, &settings(BOTH, 1000)).unwrap();
        let (tx, rx) = mpsc::channel();
        let p2 = p.clone();
        let waiter = thread::spawn(move || {
            tx.send(()).unwrap();
            let start = Instant::now();
            let lock = lock_write(&open_rw(&p2), &p2, &settings(BOTH, 5000)).unwrap();
            (start.elapsed(), lock)
        });
        rx.recv().unwrap();
        thread::sleep(Duration::from_millis(100));
        drop(first);
        let (elapsed, second) = waiter.join().unwrap();
        assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
        assert_eq!(fs::read_to_string(dotlock_path(&p)).unwrap(), format!("{}\n", std::process::id()));
        drop(second);
        assert!(!dotlock_path(&p).exists());
    }

    #[test]
    fn try_lock_write_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let s = settings(BOTH, 5000);
        let first = try_lock_write(&open_rw(&p), &p, &s).unwrap().expect("free lock");
        let start = Instant::now();
        assert!(try_lock_write(&open_rw(&p), &p, &s).unwrap().is_none());
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(first);
        assert!(try_lock_write(&open_rw(&p), &p, &s).unwrap().is_some());
    }

    #[test]
    fn busy_fcntl_releases_the_dotlock_taken_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let holder = lock_write(&open_rw(&p), &p, &settings(&[LockMethod::Fcntl], 1000)).unwrap();
        assert!(try_lock_write(&open_rw(&p), &p, &settings(BOTH, 0)).unwrap().is_none());
        assert!(!dotlock_path(&p).exists(), "dotlock left behind");
        drop(holder);
    }

    #[test]
    fn readers_share_and_exclude_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let s = settings(&[LockMethod::Fcntl], 100);
        let r1 = lock_read(&open_rw(&p), &p, &s).unwrap();
        let r2 = lock_read(&File::open(&p).unwrap(), &p, &s).unwrap();
        assert!(matches!(lock_write(&open_rw(&p), &p, &s), Err(StoreError::LockTimeout(_))));
        drop(r1);
        drop(r2);
        let w = lock_write(&open_rw(&p), &p, &s).unwrap();
        assert!(matches!(lock_read(&File::open(&p).unwrap(), &p, &s), Err(StoreError::LockTimeout(_))));
        // Readers take no dotlock.
        drop(w);
        let _d = lock_write(&open_rw(&p), &p, &settings(&[LockMethod::Dotlock], 100)).unwrap();
        lock_read(&File::open(&p).unwrap(), &p, &s).unwrap();
    }

    #[test]
    fn lock_outlives_the_callers_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let s = settings(&[LockMethod::Fcntl], 50);
        let f = open_rw(&p);
        let lock = lock_write(&f, &p, &s).unwrap();
        drop(f);
        assert!(matches!(lock_write(&open_rw(&p), &p, &s), Err(StoreError::LockTimeout(_))));
        drop(lock);
        lock_write(&open_rw(&p), &p, &s).unwrap();
    }

    #[test]
    fn write_lock_needs_a_writable_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let r = lock_write(&File::open(&p).unwrap(), &p, &settings(BOTH, 100));
        assert!(matches!(r, Err(StoreError::Io(..))), "{r:?}");
        assert!(!dotlock_path(&p).exists());
    }

    #[test]
    fn stale_dotlock_by_age_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        // Empty, as Postfix leaves it, and ten minutes old.
        let old = File::create(dotlock_path(&p)).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(600)).unwrap();
        let start = Instant::now();
        let lock = lock_write(&open_rw(&p), &p, &settings(BOTH, 2000)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(fs::read_to_string(dotlock_path(&p)).unwrap(), format!("{}\n", std::process::id()));
        drop(lock);
    }

    #[test]
    fn fresh_empty_dotlock_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        File::create(dotlock_path(&p)).unwrap();
        let r = lock_write(&open_rw(&p), &p, &settings(BOTH, 100));
        assert!(matches!(r, Err(StoreError::LockTimeout(_))), "{r:?}");
        assert!(dotlock_path(&p).exists());
    }

    #[test]
    fn dotlock_of_dead_pid_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        fs::write(dotlock_path(&p), format!("{pid}\n")).unwrap();
        let start = Instant::now();
        let lock = lock_write(&open_rw(&p), &p, &settings(BOTH, 2000)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(lock);
    }

    #[test]
    fn dotlock_of_live_pid_is_kept_until_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let content = format!("{}\n", std::process::id());
        fs::write(dotlock_path(&p), &content).unwrap();
        let r = lock_write(&open_rw(&p), &p, &settings(BOTH, 150));
        assert!(matches!(r, Err(StoreError::LockTimeout(_))), "{r:?}");
        assert_eq!(fs::read_to_string(dotlock_path(&p)).unwrap(), content);
    }

    #[test]
    fn dotlock_that_is_not_a_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let lock_dir = dotlock_path(&p);
        fs::create_dir(&lock_dir).unwrap();
        fs::File::open(&lock_dir).unwrap().set_modified(SystemTime::now() - Duration::from_secs(600)).unwrap();
        let r = lock_write(&open_rw(&p), &p, &settings(BOTH, 50));
        assert!(matches!(r, Err(StoreError::LockTimeout(_))), "{r:?}");
        assert!(lock_dir.is_dir());
    }

    #[test]
    fn release_leaves_a_dotlock_that_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let lock = lock_write(&open_rw(&p), &p, &settings(&[LockMethod::Dotlock], 100)).unwrap();
        // Someone broke ours and made their own.
        fs::remove_file(dotlock_path(&p)).unwrap();
        fs::write(dotlock_path(&p), b"1\n").unwrap();
        drop(lock);
        assert_eq!(fs::read(dotlock_path(&p)).unwrap(), b"1\n");
    }

    #[test]
    fn touch_refreshes_the_dotlock() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let lock = lock_write(&open_rw(&p), &p, &settings(BOTH, 100)).unwrap();
        let old = SystemTime::now() - Duration::from_secs(600);
        File::open(dotlock_path(&p)).unwrap().set_modified(old).unwrap();
        lock.touch().unwrap();
        let mtime = fs::metadata(dotlock_path(&p)).unwrap().modified().unwrap();
        assert!(mtime > old + Duration::from_secs(500));
    }

    #[test]
    fn dotlock_in_unwritable_directory_is_an_error() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("skipping: root may create files anywhere");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let p = mbox(&spool);
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o555)).unwrap();
        let r = lock_write(&open_rw(&p), &p, &settings(BOTH, 100));
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o755)).unwrap();
        match r {
            Err(StoreError::Io(msg, _)) => assert!(msg.contains(&spool.display().to_string()), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_pid_forms() {
        assert_eq!(parse_pid(b"1234\n"), Some(1234));
        assert_eq!(parse_pid(b"  77\0"), Some(77));
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"0\n"), None);
        assert_eq!(parse_pid(b"-1\n"), None);
        assert_eq!(parse_pid(b"12 34"), None);
        assert_eq!(parse_pid(b"99999999999999"), None);
        assert_eq!(parse_pid(&[0xd2, 0x04, 0, 0]), None);
    }

    #[test]
    fn fcntl_lock_conflicts_with_posix_lock_of_another_process() {
        if !have_python() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let s = settings(&[LockMethod::Fcntl], 150);
        let holder = PosixHolder::start(&p);
        assert!(matches!(lock_write(&open_rw(&p), &p, &s), Err(StoreError::LockTimeout(_))));
        assert!(matches!(lock_read(&File::open(&p).unwrap(), &p, &s), Err(StoreError::LockTimeout(_))));
        holder.stop();
        let lock = lock_write(&open_rw(&p), &p, &s).unwrap();
        // And the other way round: the MTA's lockf sees ours.
        assert!(!posix_lock_free(&p));
        drop(lock);
        assert!(posix_lock_free(&p));
    }

    #[test]
    fn session_lock_is_exclusive_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let state = dir.path().join("state/pop");
        let first = SessionLock::try_acquire(&p, &state).unwrap();
        assert!(matches!(SessionLock::try_acquire(&p, &state), Err(StoreError::InUse(_))));
        // Another spelling of the same file.
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&p, &alias).unwrap();
        assert!(matches!(SessionLock::try_acquire(&alias, &state), Err(StoreError::InUse(_))));
        let link = dir.path().join("hardlink");
        fs::hard_link(&p, &link).unwrap();
        assert!(matches!(SessionLock::try_acquire(&link, &state), Err(StoreError::InUse(_))));
        // The mbox stays free for the MTA.
        lock_write(&open_rw(&p), &p, &settings(BOTH, 100)).unwrap();
        drop(first);
        let again = SessionLock::try_acquire(&p, &state).unwrap();
        drop(again);
        assert_eq!(fs::read_dir(&state).unwrap().count(), 0, "lock files left behind");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn session_lock_of_missing_mbox_still_excludes_after_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mbox");
        let state = dir.path().join("state");
        let first = SessionLock::try_acquire(&p, &state).unwrap();
        assert!(matches!(SessionLock::try_acquire(&p, &state), Err(StoreError::InUse(_))));
        fs::write(&p, b"From a Mon Jan  1 00:00:00 2024\n\nhi\n").unwrap();
        assert!(matches!(SessionLock::try_acquire(&p, &state), Err(StoreError::InUse(_))));
        drop(first);
        SessionLock::try_acquire(&p, &state).unwrap();
    }

    #[test]
    fn session_lock_is_exclusive_across_processes() {
        if !have_python() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = mbox(dir.path());
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        let keys = session_keys(&p).unwrap();
        let inode_key = keys.iter().find(|k| !k.starts_with("pop-path-")).unwrap();
        assert_eq!(
            inode_key,
            &format!("pop-{}-{}.lock", fs::metadata(&p).unwrap().dev(), fs::metadata(&p).unwrap().ino())
        );
        for key in &keys {
            let lock_file = state.join(key);
            fs::write(&lock_file, b"").unwrap();
            let holder = PosixHolder::start(&lock_file);
            let r = SessionLock::try_acquire(&p, &state);
            assert!(matches!(r, Err(StoreError::InUse(_))), "{key}: {r:?}");
            holder.stop();
        }
        let lock = SessionLock::try_acquire(&p, &state).unwrap();
        for key in &keys {
            assert!(!posix_lock_free(&state.join(key)), "{key}");
        }
        drop(lock);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

//! Noticing outside writers while sessions wait.
//!
//! A session in IDLE must hear of mail the MTA appends to its mailbox
//! without polling the file. One thread per process reads an inotify
//! descriptor that watches every mailbox some session waits on; on a
//! change it refreshes that mailbox (under the read lock, so after the
//! writer has let go), and the refresh publishes the events to every
//! subscriber, whose wakers end their `poll`.
//!
//! Where inotify is not available (a full table, an old kernel, NFS that
//! never reports) [`watch`] returns `None` and the caller falls back to a
//! periodic stat.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use log::{debug, warn};

use super::registry::Shared;

const MASK: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_ATTRIB | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF;

/// A writer that appends in several writes is caught mid-way at worst:
/// the refresh waits for its lock. This short pause just lets a burst of
/// events arrive together.
const SETTLE: Duration = Duration::from_millis(20);

struct Entry {
    shared: Weak<Shared>,
    path: PathBuf,
    wd: i32,
    users: usize,
}

struct Watcher {
    fd: OwnedFd,
    /// Keyed by the address of the shared mailbox.
    entries: Mutex<HashMap<usize, Entry>>,
}

/// While held, outside changes to the mailbox are refreshed and published.
pub struct WatchGuard {
    key: usize,
}

fn watcher() -> Option<&'static Watcher> {
    static W: OnceLock<Option<Watcher>> = OnceLock::new();
    W.get_or_init(|| {
        // SAFETY: inotify_init1 returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            warn!("watch inotify-unavailable error=\"{}\"", std::io::Error::last_os_error());
            return None;
        }
        // SAFETY: fd is new and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Some(Watcher { fd, entries: Mutex::new(HashMap::new()) })
    })
    .as_ref()
    .inspect(|_| start_thread())
}

fn start_thread() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new().name("watch".into()).stack_size(128 * 1024).spawn(run);
    });
}

fn add_watch(fd: &OwnedFd, path: &std::path::Path) -> Option<i32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid fd and a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), MASK) };
    (wd >= 0).then_some(wd)
}

/// Watches `shared`'s file for as long as the guard lives.
pub fn watch(shared: &Arc<Shared>) -> Option<WatchGuard> {
    let w = watcher()?;
    let key = Arc::as_ptr(shared) as usize;
    let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = entries.get_mut(&key) {
        e.users += 1;
        return Some(WatchGuard { key });
    }
    let path = shared.path();
    let wd = add_watch(&w.fd, &path)?;
    entries.insert(key, Entry { shared: Arc::downgrade(shared), path, wd, users: 1 });
    Some(WatchGuard { key })
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let Some(w) = watcher() else { return };
        let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = entries.get_mut(&self.key) else { return };
        e.users -= 1;
        if e.users == 0 {
            let wd = e.wd;
            entries.remove(&self.key);
            // Another mailbox may share the inode (a hard link): only drop
            // the kernel watch when no entry uses this descriptor.
            if !entries.values().any(|e| e.wd == wd) {
                // SAFETY: valid fd; a stale wd only yields EINVAL.
                unsafe { libc::inotify_rm_watch(w.fd.as_raw_fd(), wd) };
            }
        }
    }
}

/// The watcher thread: read events, refresh the mailboxes they name.
fn run() {
    let Some(w) = watcher() else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(w.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            warn!("watch read-failed error=\"{e}\"");
            return;
        }
        let mut wds = Vec::new();
        let mut gone = Vec::new();
        let mut off = 0usize;
        let n = n as usize;
        let head = std::mem::size_of::<libc::inotify_event>();
        while off + head <= n {
            // SAFETY: the kernel wrote whole events; read_unaligned copes
            // with the byte buffer's alignment.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            if ev.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                gone.push(ev.wd);
            }
            wds.push(ev.wd);
            off += head + ev.len as usize;
        }
        std::thread::sleep(SETTLE);
        let targets: Vec<Arc<Shared>> = {
            let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
            let targets = entries.values().filter(|e| wds.contains(&e.wd)).filter_map(|e| e.shared.upgrade()).collect();
            // A replaced file (a rename over it) is watched again by name.
            for e in entries.values_mut().filter(|e| gone.contains(&e.wd)) {
                if let Some(wd) = add_watch(&w.fd, &e.path) {
                    debug!("watch rewatch path={}", e.path.display());
                    e.wd = wd;
                }
            }
            targets
        };
        for shared in targets {
            if let Err(e) = shared.refresh() {
                debug!("watch refresh-failed path={} error=\"{e}\"", shared.path().display());
            }
        }
    }
}

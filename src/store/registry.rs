//! The process-wide registry of open mailboxes.
//!
//! Every session that opens the same mbox shares one [`Shared`]: one index
//! behind one `RwLock` (readers FETCH and SEARCH; writers STORE, EXPUNGE,
//! APPEND and resync), and one list of subscribers that hear about each
//! change. The registry holds mailboxes weakly: the index is dropped when
//! the last session leaves it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use crossbeam_channel::{Receiver, Sender};

use super::mailbox::{Event, Mailbox, Options};
use super::StoreError;

/// One mailbox shared by the sessions of this process.
#[derive(Debug)]
pub struct Shared {
    /// Canonical; changes when the mailbox is renamed.
    path: Mutex<PathBuf>,
    mailbox: RwLock<Mailbox>,
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: Mutex<u64>,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: Sender<Event>,
    /// Woken after each send, for a session that waits in `poll` (IDLE).
    waker: Option<Arc<Waker>>,
}

/// A subscription: events arrive on `events`; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    id: u64,
    pub events: Receiver<Event>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| s.id != self.id);
    }
}

impl Subscription {
    /// An fd that becomes readable when an event arrives, for `poll`
    /// (IDLE waits on it and on the client's socket at once). Made on
    /// first use; [`Waker::clear`] it after draining the events.
    pub fn waker(&self) -> std::io::Result<Arc<Waker>> {
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let me = subs.iter_mut().find(|s| s.id == self.id).ok_or_else(|| std::io::Error::other("unsubscribed"))?;
        if let Some(w) = &me.waker {
            return Ok(Arc::clone(w));
        }
        let w = Arc::new(Waker::new()?);
        me.waker = Some(Arc::clone(&w));
        Ok(w)
    }

    /// Sends events to every other subscriber (changes this session made
    /// and reports itself, such as its own flag changes), while the change
    /// is still held under `w` (see [`Writer::publish`]).
    pub fn publish_to_others(&self, w: &Writer<'_>, events: &[Event]) {
        debug_assert!(std::ptr::eq(w.shared, &*self.shared));
        self.shared.publish_filtered(events, Some(self.id));
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// An eventfd: readable after [`wake`](Waker::wake) until [`clear`](Waker::clear).
#[derive(Debug)]
pub struct Waker {
    fd: std::os::fd::OwnedFd,
}

impl Waker {
    fn new() -> std::io::Result<Waker> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is ours and open.
        Ok(Waker { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) } })
    }

    pub fn wake(&self) {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full
        // counter (EAGAIN) is still readable, which is all that matters.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

impl Shared {
    pub fn path(&self) -> PathBuf {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Shared access for reading messages.
    pub fn read(&self) -> RwLockReadGuard<'_, Mailbox> {
        self.mailbox.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access. Whoever changes the mailbox through this must
    /// [`publish`](Writer::publish) the events the change returned before
    /// letting go.
    pub fn write(&self) -> Writer<'_> {
        Writer { shared: self, guard: self.mailbox.write().unwrap_or_else(|p| p.into_inner()) }
    }

    /// Receives every event published from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(Subscriber { id, tx, waker: None });
        Subscription { shared: Arc::clone(self), id, events: rx }
    }

    fn publish_filtered(&self, events: &[Event], except: Option<u64>) {
        if events.is_empty() {
            return;
        }
        let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for s in subs.iter().filter(|s| Some(s.id) != except) {
            for e in events {
                let _ = s.tx.send(e.clone());
            }
            if let Some(w) = &s.waker {
                w.wake();
            }
        }
    }

    /// Looks for outside changes and tells everyone.
    pub fn refresh(&self) -> Result<(), StoreError> {
        // A cheap look first, under the shared lock.
        if !self.read().changed()? {
            return Ok(());
        }
        let mut w = self.write();
        let events = w.refresh()?;
        w.publish(&events);
        Ok(())
    }
}

/// The mailbox held for writing. Events are published through it, while
/// the change is still held: a session that looks at the mailbox after
/// the change (and finds nothing left to refresh) then finds its events
/// waiting too, so what one command's report says is complete.
pub struct Writer<'a> {
    shared: &'a Shared,
    guard: RwLockWriteGuard<'a, Mailbox>,
}

impl Writer<'_> {
    /// Sends events to every subscriber (the sender's own subscription
    /// included: each session filters what it caused itself).
    pub fn publish(&self, events: &[Event]) {
        self.shared.publish_filtered(events, None);
    }
}

impl std::ops::Deref for Writer<'_> {
    type Target = Mailbox;
    fn deref(&self) -> &Mailbox {
        &self.guard
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Mailbox {
        &mut self.guard
    }
}

/// How many recently used mailboxes stay indexed after their last
/// session left: a POP3 client polling every few minutes then costs a
/// stat and the new tail, not a scan of the whole file.
pub const WARM: usize = 64;

/// The registry: path to shared mailbox.
///
/// Opening a mailbox reads and indexes its file, which takes a while for a
/// large one: that happens under the mailbox's own slot only, never under
/// the map that every other mailbox needs, so one big or locked mailbox
/// holds up nobody else. Two sessions opening the same mailbox at once
/// wait for one index, never build two.
#[derive(Debug)]
pub struct Registry {
    map: Mutex<HashMap<PathBuf, Arc<Slot>>>,
    warm: Mutex<VecDeque<Arc<Shared>>>,
    warm_max: usize,
}

/// One mailbox's place in the registry: held while the mailbox is opened.
#[derive(Debug, Default)]
struct Slot {
    open: Mutex<Weak<Shared>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_warm(WARM)
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry that keeps `n` recently used mailboxes indexed.
    pub fn with_warm(n: usize) -> Registry {
        Registry { map: Mutex::new(HashMap::new()), warm: Mutex::new(VecDeque::new()), warm_max: n }
    }

    fn keep_warm(&self, shared: &Arc<Shared>) {
        if self.warm_max == 0 {
            return;
        }
        let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|s| !Arc::ptr_eq(s, shared));
        w.push_front(Arc::clone(shared));
        w.truncate(self.warm_max);
    }

    /// The shared mailbox at `path`, opening and indexing it if nobody in
    /// this process has it open; otherwise the open one, refreshed.
    pub fn open(&self, path: &Path, opts: &Options, create: bool) -> Result<Arc<Shared>, StoreError> {
        // One entry per file, however the path was spelled.
        if create {
            // Made here so that the key below is the canonical one.
            super::mailbox::create_file(path)?;
        }
        let key = std::fs::canonicalize(path).map_err(|_| StoreError::NoSuchMailbox(path.display().to_string()))?;
        let slot = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            // Entries nobody holds and whose mailbox is closed go. A slot
            // another thread took from the map is kept: it may be opening
            // it right now, and a second slot would make a second index.
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.open.try_lock().map_or(true, |w| w.strong_count() > 0));
            Arc::clone(map.entry(key.clone()).or_default())
        };
        let mut open = slot.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = open.upgrade() {
            drop(open);
            shared.refresh()?;
            self.keep_warm(&shared);
            return Ok(shared);
        }
        let mailbox = Mailbox::open(path, opts, create)?;
        let shared = Arc::new(Shared {
            path: Mutex::new(key),
            mailbox: RwLock::new(mailbox),
            subscribers: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
        });
        *open = Arc::downgrade(&shared);
        drop(open);
        self.keep_warm(&shared);
        Ok(shared)
    }

    /// Forgets the mailboxes at `path` and below it (a mailbox deleted or
    /// renamed): the next open indexes whatever file then has the name,
    /// and a new mailbox gets a new UIDVALIDITY. `path` is canonical, as
    /// taken before the change. Sessions that have one open keep it.
    pub fn forget(&self, path: &Path) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| !k.starts_with(path));
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).retain(|s| !s.path().starts_with(path));
    }

    /// The mailboxes at `from` and below it now live at `to` (a RENAME;
    /// both canonical, `from` as taken before the change): sessions that
    /// have one open keep working on it where it is now, so a STORE after
    /// another session renamed the mailbox is written, not lost.
    pub fn renamed(&self, from: &Path, to: &Path) {
        let mut moved = Vec::new();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let moving: Vec<PathBuf> = map.keys().filter(|k| k.starts_with(from)).cloned().collect();
        for old in moving {
            let Some(slot) = map.remove(&old) else { continue };
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            let open = slot.open.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
            if let Some(shared) = open {
                *shared.path.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
                moved.push((shared, new.clone()));
            }
            map.insert(new, slot);
        }
        drop(map);
        // Not under the map: a mailbox's own lock may take a while.
        for (shared, new) in moved {
            shared.write().moved_to(&new);
        }
    }

    /// How many mailboxes are open (for tests and statistics).
    pub fn open_count(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|s| s.open.try_lock().map_or(true, |w| w.strong_count() > 0)).count()
    }
}

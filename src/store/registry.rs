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
    path: PathBuf,
    mailbox: RwLock<Mailbox>,
    subscribers: Mutex<Vec<(u64, Sender<Event>)>>,
    next_id: Mutex<u64>,
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
        subs.retain(|(id, _)| *id != self.id);
    }
}

impl Shared {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shared access for reading messages.
    pub fn read(&self) -> RwLockReadGuard<'_, Mailbox> {
        self.mailbox.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access. Whoever changes the mailbox through this must
    /// [`publish`](Self::publish) the events the change returned.
    pub fn write(&self) -> RwLockWriteGuard<'_, Mailbox> {
        self.mailbox.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives every event published from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push((id, tx));
        Subscription { shared: Arc::clone(self), id, events: rx }
    }

    /// Sends events to every subscriber (the sender's own subscription
    /// included: each session filters what it caused itself).
    pub fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for (_, tx) in subs.iter() {
            for e in events {
                let _ = tx.send(e.clone());
            }
        }
    }

    /// Looks for outside changes and tells everyone.
    pub fn refresh(&self) -> Result<(), StoreError> {
        // A cheap look first, under the shared lock.
        if !self.read().changed()? {
            return Ok(());
        }
        let events = self.write().refresh()?;
        self.publish(&events);
        Ok(())
    }
}

/// How many recently used mailboxes stay indexed after their last
/// session left: a POP3 client polling every few minutes then costs a
/// stat and the new tail, not a scan of the whole file.
pub const WARM: usize = 64;

/// The registry: path to shared mailbox.
#[derive(Debug)]
pub struct Registry {
    map: Mutex<HashMap<PathBuf, Weak<Shared>>>,
    warm: Mutex<VecDeque<Arc<Shared>>>,
    warm_max: usize,
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
        if create && !path.exists() {
            // Created here so that the key below is the canonical one.
            drop(Mailbox::open(path, opts, true)?);
        }
        let key = std::fs::canonicalize(path).map_err(|_| StoreError::NoSuchMailbox(path.display().to_string()))?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = map.get(&key).and_then(Weak::upgrade) {
            drop(map);
            shared.refresh()?;
            self.keep_warm(&shared);
            return Ok(shared);
        }
        // Opening under the registry lock keeps two sessions from indexing
        // the same file at once; other mailboxes wait only for this one.
        let mailbox = Mailbox::open(path, opts, create)?;
        let shared = Arc::new(Shared {
            path: key.clone(),
            mailbox: RwLock::new(mailbox),
            subscribers: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
        });
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&shared));
        drop(map);
        self.keep_warm(&shared);
        Ok(shared)
    }

    /// How many mailboxes are open (for tests and statistics).
    pub fn open_count(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|w| w.strong_count() > 0).count()
    }
}

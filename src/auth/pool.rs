//! The password-checking pool: a few threads that do every password check
//! of the server, fed by a bounded queue (DESIGN.md, Security).
//!
//! Why threads of their own: checking the default ARGON2ID hash needs 19
//! MiB. Done on the session thread, glibc's malloc took it from that
//! thread's arena and kept it there after the free, so every session that
//! had checked a password (or been refused one) held about 18 MiB resident
//! for good: 200 logged-in sessions, 3.7 GB. Here each worker keeps one
//! [`Scratch`] and reuses it, so the hashing memory of the whole server is
//! the number of workers times the largest Argon2 memory the passwd-file's
//! hashes ask for (19 MiB each for hashes `postroom passwd` makes),
//! whatever the number of sessions.
//!
//! The pool also bounds what password guessing can take: at most
//! `auth-workers` checks run at once, and at most [`QUEUE_PER_WORKER`]
//! checks per worker wait for one. A check that finds the queue full, or
//! that waited [`MAX_WAIT`] without a worker taking it, is not done: the
//! login fails as a temporary failure (POP3 `-ERR [SYS/TEMP]`, IMAP
//! `NO [UNAVAILABLE]`), which is not counted as a failed guess.
//!
//! No lock is held while a check runs or is waited for: a session puts its
//! check on the queue and waits on a channel of its own for the answer.
//! Workers start with the pool and end when it is dropped (after a reload
//! that changes `auth-workers`) and its queue is empty.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use log::error;
use zeroize::Zeroizing;

use super::hash::{self, HashError, Scheme, Scratch};

/// Checks that may wait for a worker, per worker. With the default hash a
/// worker does about 30 checks a second, so a full queue is about two
/// seconds of work: a crowd of clients logging in together (an office in
/// the morning, every client after a restart) waits rather than fails.
pub const QUEUE_PER_WORKER: usize = 64;

/// A check that waited this long for a worker is answered as a temporary
/// failure without being done: its client has likely given up.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Most workers `auth-workers` may ask for.
pub const MAX_WORKERS: usize = 64;

/// Workers when `auth-workers` is not set: one per CPU, at most 4. Four
/// checks at once are more than 100 logins a second with the default
/// hash, and 76 MiB of Argon2 memory.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

/// Stack of a worker: the hash functions keep their state on the heap or
/// in a few KiB (bcrypt's).
const WORKER_STACK: usize = 256 * 1024;

/// A stored hash to check a password against.
#[derive(Clone)]
pub struct Stored {
    pub scheme: Scheme,
    /// Without its `{SCHEME}` prefix.
    pub hash: Arc<str>,
}

/// One password check as a worker does it.
pub struct Check {
    /// The account's hash, or none (an unknown user, an account without a
    /// usable hash): the answer is then `None`.
    pub hash: Option<Stored>,
    /// Checked after `hash` failed (or when there is none), each for its
    /// cost only: what makes one failed login cost what any other costs.
    pub padding: Vec<Stored>,
    pub password: Zeroizing<Vec<u8>>,
}

/// Why a check was not done. Each is a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full.
    Full,
    /// No worker took the check within [`MAX_WAIT`].
    Stale,
    /// The worker failed during the check (a panic in a hash function).
    Lost,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Full => write!(f, "too many password checks waiting"),
            Refused::Stale => write!(f, "a password check waited too long"),
            Refused::Lost => write!(f, "a password check failed; see server log"),
        }
    }
}

/// The result of checking the account's hash: `None` when there was none.
pub type Outcome = Option<Result<bool, HashError>>;

enum Work {
    Check(Check),
    /// Says it started, then occupies a worker until the sender of the
    /// receiver is dropped (tests of the queue's bounds).
    #[cfg(test)]
    Hold(Sender<()>, Receiver<()>),
}

struct Job {
    work: Work,
    queued: Instant,
    reply: Sender<Result<Outcome, Refused>>,
}

/// The worker threads and their queue.
pub struct Pool {
    queue: Sender<Job>,
    workers: usize,
    max_wait: Duration,
}

impl Pool {
    /// Starts `workers` threads (at least one) with a queue of
    /// [`QUEUE_PER_WORKER`] checks each.
    pub fn new(workers: usize) -> Pool {
        let workers = workers.clamp(1, MAX_WORKERS);
        Pool::with_limits(workers, workers * QUEUE_PER_WORKER, MAX_WAIT)
    }

    fn with_limits(workers: usize, capacity: usize, max_wait: Duration) -> Pool {
        let (queue, jobs) = bounded::<Job>(capacity);
        for i in 0..workers {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || work(jobs, max_wait));
            if let Err(e) = spawned {
                // The others serve; with none at all, every check is refused.
                error!("auth cannot start a password-checking thread: {e}");
            }
        }
        Pool { queue, workers, max_wait }
    }

    /// Threads the pool was started with.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs `check` on a worker and waits for its outcome.
    pub fn check(&self, check: Check) -> Result<Outcome, Refused> {
        self.submit(Work::Check(check))
    }

    fn submit(&self, work: Work) -> Result<Outcome, Refused> {
        let (reply, answer) = bounded(1);
        match self.queue.try_send(Job { work, queued: Instant::now(), reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => return Err(Refused::Lost),
        }
        // A worker answers within the check's time once it takes the job,
        // and refuses a job older than max_wait, so this wait is bounded;
        // the margin covers one long check.
        answer.recv_timeout(self.max_wait + Duration::from_secs(60)).unwrap_or(Err(Refused::Lost))
    }
}

/// A worker: takes jobs until the pool is gone.
fn work(jobs: Receiver<Job>, max_wait: Duration) {
    let mut scratch = Scratch::default();
    while let Ok(job) = jobs.recv() {
        if job.queued.elapsed() > max_wait {
            let _ = job.reply.send(Err(Refused::Stale));
            continue;
        }
        let answer = match job.work {
            Work::Check(check) => match catch_unwind(AssertUnwindSafe(|| run(&check, &mut scratch))) {
                Ok(outcome) => Ok(outcome),
                Err(_) => {
                    error!("auth password check panicked");
                    scratch = Scratch::default();
                    Err(Refused::Lost)
                }
            },
            #[cfg(test)]
            Work::Hold(started, until) => {
                let _ = started.send(());
                let _ = until.recv();
                Ok(None)
            }
        };
        let _ = job.reply.send(answer);
    }
}

/// Checks the account's hash, then, unless it matched, the padding.
fn run(check: &Check, scratch: &mut Scratch) -> Outcome {
    let outcome = check.hash.as_ref().map(|s| hash::verify_in(s.scheme, &s.hash, &check.password, scratch));
    if !matches!(outcome, Some(Ok(true))) {
        for s in &check.padding {
            let _ = hash::verify_in(s.scheme, &s.hash, &check.password, scratch);
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGON2_1M: &str =
        "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$H5rnCvoHJK5J3ADJ9mc9NL74Ow2lIMZ5zI+CyR256y0";

    fn stored(scheme: Scheme, hash: &str) -> Stored {
        Stored { scheme, hash: hash.into() }
    }

    fn check(password: &str) -> Check {
        Check {
            hash: Some(stored(Scheme::Plain, "right")),
            padding: vec![stored(Scheme::Argon2id, ARGON2_1M)],
            password: Zeroizing::new(password.as_bytes().to_vec()),
        }
    }

    /// Occupies the pool's one worker; dropping the sender lets it go.
    fn hold(pool: &Arc<Pool>) -> (Sender<()>, std::thread::JoinHandle<Result<Outcome, Refused>>) {
        let (started_tx, started) = bounded(1);
        let (release, until) = bounded::<()>(0);
        let p = pool.clone();
        let t = std::thread::spawn(move || p.submit(Work::Hold(started_tx, until)));
        started.recv().unwrap();
        (release, t)
    }

    #[test]
    fn checks_and_padding() {
        let mut scratch = Scratch::default();
        assert_eq!(run(&check("right"), &mut scratch), Some(Ok(true)));
        // A success does no padding: no Argon2 memory was needed.
        assert_eq!(scratch.bytes(), 0);
        assert_eq!(run(&check("wrong"), &mut scratch), Some(Ok(false)));
        assert_eq!(scratch.bytes(), 1024 * 1024);
        // No hash of its own: padding only, and no answer.
        let mut c = check("right");
        c.hash = None;
        assert_eq!(run(&c, &mut Scratch::default()), None);
        // A malformed hash answers its error, after the padding.
        c.hash = Some(stored(Scheme::Sha512Crypt, "$6$x"));
        let mut scratch = Scratch::default();
        assert!(matches!(run(&c, &mut scratch), Some(Err(HashError::Malformed(..)))));
        assert_eq!(scratch.bytes(), 1024 * 1024);
    }

    #[test]
    fn pool_answers() {
        let pool = Pool::new(2);
        assert_eq!(pool.workers(), 2);
        assert_eq!(pool.check(check("right")), Ok(Some(Ok(true))));
        assert_eq!(pool.check(check("wrong")), Ok(Some(Ok(false))));
        assert_eq!(Pool::new(0).workers(), 1);
    }

    #[test]
    fn a_full_queue_refuses() {
        let pool = Arc::new(Pool::with_limits(1, 1, MAX_WAIT));
        let (release, held) = hold(&pool);
        // One check waits in the queue; the next finds it full.
        let p = pool.clone();
        let queued = std::thread::spawn(move || p.check(check("right")));
        while pool.queue.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pool.check(check("right")), Err(Refused::Full));
        drop(release);
        assert_eq!(held.join().unwrap(), Ok(None));
        assert_eq!(queued.join().unwrap(), Ok(Some(Ok(true))));
        assert_eq!(pool.check(check("right")), Ok(Some(Ok(true))));
    }

    #[test]
    fn a_check_that_waited_too_long_is_refused() {
        let wait = Duration::from_millis(50);
        let pool = Arc::new(Pool::with_limits(1, 4, wait));
        let (release, held) = hold(&pool);
        let p = pool.clone();
        let queued = std::thread::spawn(move || p.check(check("right")));
        while pool.queue.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Older than the longest wait when the worker is free again.
        std::thread::sleep(2 * wait);
        drop(release);
        held.join().unwrap().unwrap();
        assert_eq!(queued.join().unwrap(), Err(Refused::Stale));
        assert_eq!(pool.check(check("right")), Ok(Some(Ok(true))));
    }
}

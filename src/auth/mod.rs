//! Accounts and authentication: the passwd-file, password hashes, SASL,
//! and the delay that makes guessing slow.
//!
//! [`Authenticator`] is shared by every session thread. It reads the
//! passwd-file when first needed and again whenever the file's inode, size
//! or modification time change (one stat(2) per login). Without a
//! passwd-file, accounts are the system's, but postroom cannot check their
//! passwords (it reads no shadow file and has no PAM), so they cannot log
//! in: a system user who reads mail needs a passwd-file entry.
//!
//! A failed login waits (see [`delay`]); an unknown user costs the same
//! hashing and the same wait as a wrong password, so the answer and its
//! timing do not tell whether a user exists. Hashing runs outside every
//! lock, at most a few at a time (see [`Authenticator`]).

pub mod delay;
pub mod hash;
pub mod passwd;
pub mod sasl;
pub mod tool;

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use log::{debug, error, info, warn};

pub use passwd::{Account, PasswdFile};
pub use sasl::Secret;

use crate::config::Config;
use hash::{HashError, Scheme};

/// Longest user name accepted (RFC 5034 and RFC 3501 set none; Dovecot's
/// is of the same order).
pub const MAX_USER_LEN: usize = 256;

/// Longest password accepted. SHA-crypt costs grow with the password's
/// length, so an unbounded one would let a client buy much CPU time.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a login failed. Deliberately says nothing about whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong user or password (after the failure delay).
    Failed,
    /// The user database cannot be read: try again later.
    Temporary(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Failed => write!(f, "Authentication failed"),
            AuthError::Temporary(why) => write!(f, "Temporary authentication failure: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Checks passwords against the passwd-file, reloading it when it changes.
///
/// Send and Sync: one is shared by all sessions. Its locks guard only
/// small updates; no lock is held while a password is hashed or a failure
/// waits. At most [`Authenticator::max_hashing`] password checks run at
/// once, which bounds the memory Argon2 takes when many clients log in
/// together; the others queue.
pub struct Authenticator {
    settings: RwLock<Settings>,
    users: Mutex<Option<Loaded>>,
    penalties: delay::Penalties,
    gate: Gate,
}

#[derive(Debug, Clone)]
struct Settings {
    passwd_file: PathBuf,
    failure_delay: Duration,
}

/// The passwd-file as last read.
#[derive(Clone)]
struct Loaded {
    path: PathBuf,
    /// `None`: the file does not exist; accounts are the system's.
    id: Option<FileId>,
    file: Arc<PasswdFile>,
    /// The scheme most of the file's hashes use: unknown users are checked
    /// against a dummy hash of it, which costs what a real check costs.
    dummy: Scheme,
}

/// What tells one version of the passwd-file from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }
}

/// Where a user is looked up.
enum Users {
    File(Arc<PasswdFile>, Scheme),
    System,
}

impl Authenticator {
    pub fn new(config: &Config) -> Authenticator {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            settings: RwLock::new(Settings {
                passwd_file: config.passwd_file.clone(),
                failure_delay: config.auth_failure_delay,
            }),
            users: Mutex::new(None),
            penalties: delay::Penalties::new(),
            gate: Gate::new(parallel.clamp(2, 16)),
        }
    }

    /// Picks up a changed passwd-file path and delay (SIGHUP); the file is
    /// read again at the next login.
    pub fn reload(&self, config: &Config) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) =
            Settings { passwd_file: config.passwd_file.clone(), failure_delay: config.auth_failure_delay };
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// How many password checks may run at once.
    pub fn max_hashing(&self) -> usize {
        self.gate.max
    }

    /// Verifies `user` and `password`. On failure, sleeps the failure
    /// delay (longer for a peer that keeps failing) before returning, and
    /// an unknown user costs the same time as a wrong password.
    pub fn login(&self, user: &str, password: &[u8], peer: IpAddr) -> Result<Account, AuthError> {
        let settings = self.settings.read().unwrap_or_else(|e| e.into_inner()).clone();
        let fail = |who: &str, reason: &str| self.fail(who, peer, reason, settings.failure_delay);
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Err(fail(&format!("<invalid, {} bytes>", user.len()), "invalid-user-name"));
        }
        // These fail for every user alike, so they need no dummy check.
        if password.is_empty() {
            return Err(fail(user, "empty-password"));
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(fail(user, "password-too-long"));
        }
        let users = self.users(&settings.passwd_file).map_err(|e| {
            error!("auth cannot read passwd-file path={} error={e}", settings.passwd_file.display());
            AuthError::Temporary("cannot read the user database".to_string())
        })?;
        let (account, dummy) = match users {
            Users::File(file, dummy) => (file.get(user).cloned(), dummy),
            Users::System => match passwd::system_account(user) {
                Ok(a) => (a, hash::DEFAULT_SCHEME),
                Err(e) => {
                    error!("auth cannot look up system account user={user} error={e}");
                    return Err(AuthError::Temporary("cannot read the user database".to_string()));
                }
            },
        };
        let Some(account) = account else {
            self.check(dummy.dummy(), password);
            return Err(fail(user, "unknown-user"));
        };
        if account.password.is_empty() {
            // A system account, whose password postroom cannot check, or a
            // passwd-file entry with an empty password field.
            self.check(dummy.dummy(), password);
            return Err(fail(user, "no-password-hash"));
        }
        let outcome = match hash::parse(&account.password) {
            Ok((scheme, hashed)) => {
                if scheme == Scheme::Plain {
                    warn_plain(user);
                }
                let _turn = self.gate.enter();
                hash::verify_as(scheme, hashed, password)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => {
                self.penalties.clear(peer);
                Ok(account)
            }
            Ok(false) => Err(fail(user, "wrong-password")),
            Err(e) => {
                match &e {
                    HashError::UnknownScheme(_) | HashError::NoScheme => {
                        error!("auth unusable password user={user} error={e}; see postroom(8) passwd");
                    }
                    _ => error!("auth unusable password user={user} error={e}"),
                }
                // Cost what a real check costs.
                self.check(dummy.dummy(), password);
                Err(fail(user, "unusable-hash"))
            }
        }
    }

    /// Checks `password` against a dummy hash, for the time it takes.
    fn check(&self, dummy: &str, password: &[u8]) {
        let _turn = self.gate.enter();
        let _ = hash::verify(dummy, password);
    }

    /// Counts a failure, waits, and gives the error to return.
    fn fail(&self, user: &str, peer: IpAddr, reason: &str, base: Duration) -> AuthError {
        let (wait, failures) = self.penalties.fail(peer, base);
        debug!(
            "auth failed user={user} address={peer} reason={reason} failures={failures} delay={}ms",
            wait.as_millis()
        );
        // Say it once, when a place first reaches the longest wait.
        let longest = delay::MAX_DELAY.max(base);
        if failures > 1 && wait == longest && delay::delay_for(base, failures - 1) < longest {
            warn!("auth penalty address={peer} failures={failures} delay={}ms", wait.as_millis());
        }
        std::thread::sleep(wait);
        AuthError::Failed
    }

    /// The users to look `user` up in: the passwd-file, read again if it
    /// changed, or the system's when there is none.
    fn users(&self, path: &Path) -> io::Result<Users> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
                let known = users.as_ref().is_some_and(|l| l.path == path && l.id.is_none());
                if !known {
                    warn!(
                        "auth passwd-file missing path={}: using system accounts, whose passwords postroom cannot check",
                        path.display()
                    );
                    *users = Some(Loaded {
                        path: path.to_path_buf(),
                        id: None,
                        file: Arc::new(PasswdFile::default()),
                        dummy: hash::DEFAULT_SCHEME,
                    });
                }
                return Ok(Users::System);
            }
            Err(e) => return Err(e),
        };
        let id = FileId::of(&meta);
        if let Some(l) = self.users.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if l.path == path && l.id == Some(id) {
                return Ok(Users::File(l.file.clone(), l.dummy));
            }
        }
        // Read outside the lock; fstat the open file so that the id and the
        // text belong together even if the file is replaced meanwhile.
        let mut f = File::open(path)?;
        let id = FileId::of(&f.metadata()?);
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        let (file, errors) = PasswdFile::parse(&String::from_utf8_lossy(&bytes));
        for (line, message) in &errors {
            warn!("auth passwd-file path={} line={line} error={message}", path.display());
        }
        let dummy = most_common_scheme(&file);
        info!("auth passwd-file loaded path={} users={} dummy={dummy}", path.display(), file.len());
        let file = Arc::new(file);
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Loaded { path: path.to_path_buf(), id: Some(id), file: file.clone(), dummy });
        Ok(Users::File(file, dummy))
    }
}

/// The scheme most accounts' hashes use (the default one when none parses).
fn most_common_scheme(file: &PasswdFile) -> Scheme {
    let mut counts = [0usize; Scheme::ALL.len()];
    for a in file.accounts() {
        if let Ok((s, _)) = hash::parse(&a.password) {
            if let Some(i) = Scheme::ALL.iter().position(|&x| x == s) {
                counts[i] += 1;
            }
        }
    }
    let default = Scheme::ALL.iter().position(|&x| x == hash::DEFAULT_SCHEME).unwrap_or(0);
    let best = (0..counts.len()).max_by_key(|&i| (counts[i], i == default)).unwrap_or(default);
    if counts[best] == 0 {
        hash::DEFAULT_SCHEME
    } else {
        Scheme::ALL[best]
    }
}

/// Says once per user and process that a PLAIN password is kept in clear.
fn warn_plain(user: &str) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut warned = WARNED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(user) {
        warned.insert(user.to_string());
        warn!("auth user={user} has a PLAIN password: anyone who reads the passwd-file can use it; hash it with postroom passwd");
    }
}

/// A counting semaphore: at most `max` holders at once.
struct Gate {
    busy: Mutex<usize>,
    free: Condvar,
    max: usize,
}

struct Turn<'a>(&'a Gate);

impl Gate {
    fn new(max: usize) -> Gate {
        Gate { busy: Mutex::new(0), free: Condvar::new(), max: max.max(1) }
    }

    fn enter(&self) -> Turn<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= self.max {
            busy = self.free.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.free.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, delay_ms: u64) -> Config {
        let mut c = Config::default_for(&dir.join("postroom.conf"));
        c.passwd_file = dir.join("passwd");
        c.auth_failure_delay = Duration::from_millis(delay_ms);
        c
    }

    fn peer(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Authenticator>();
    }

    #[test]
    fn logins_table() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("passwd"),
            "alice:{PLAIN}wonderland:1000:1000::/home/alice\n\
             bob:{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5\n\
             carol:{MD5}0cc175b9c0f1b6a831c399e269772661\n\
             dave:\n\
             erin:$2y$04$0123456789ABCDEFGHIJKub1ugOfMyiyFg0BTLsJDU9mv7iifIBbi\n",
        )
        .unwrap();
        let auth = Authenticator::new(&config(dir.path(), 0));
        let long = "x".repeat(MAX_USER_LEN + 1);
        let table: &[(&str, &[u8], bool)] = &[
            ("alice", b"wonderland", true),
            ("alice", b"Wonderland", false),
            ("alice", b"wonderland ", false),
            ("ALICE", b"wonderland", false),
            ("bob", b"Hello world!", true),
            ("bob", b"hello world!", false),
            ("carol", b"a", false),
            ("dave", b"", false),
            ("dave", b"x", false),
            ("erin", "pässwörd".as_bytes(), true),
            ("nobody", b"wonderland", false),
            ("", b"x", false),
            ("ali\nce", b"wonderland", false),
            (&long, b"x", false),
            ("alice", &[b'w'; MAX_PASSWORD_LEN + 1], false),
        ];
        for (user, password, ok) in table {
            let r = auth.login(user, password, peer(1));
            assert_eq!(r.is_ok(), *ok, "{user} {r:?}");
            if let Ok(a) = r {
                assert_eq!(&a.name, user);
            } else {
                assert_eq!(r, Err(AuthError::Failed));
            }
        }
        assert_eq!(auth.login("alice", b"wonderland", peer(1)).unwrap().uid, Some(1000));
    }

    #[test]
    fn success_clears_penalty() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("passwd"), "alice:{PLAIN}wonderland\n").unwrap();
        let auth = Authenticator::new(&config(dir.path(), 1));
        for _ in 0..3 {
            assert!(auth.login("alice", b"x", peer(2)).is_err());
        }
        assert_eq!(auth.penalties.failures(peer(2)), 3);
        assert!(auth.login("alice", b"wonderland", peer(2)).is_ok());
        assert_eq!(auth.penalties.failures(peer(2)), 0);
    }

    #[test]
    fn missing_file_means_system_accounts_that_cannot_log_in() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(&config(dir.path(), 0));
        assert_eq!(auth.login("root", b"x", peer(3)), Err(AuthError::Failed));
        assert_eq!(auth.login("no-such-user-postroom", b"x", peer(3)), Err(AuthError::Failed));
        // The file appearing later is read at the next login.
        fs::write(dir.path().join("passwd"), "root:{PLAIN}toor\n").unwrap();
        assert!(auth.login("root", b"toor", peer(3)).is_ok());
        fs::remove_file(dir.path().join("passwd")).unwrap();
        assert_eq!(auth.login("root", b"toor", peer(3)), Err(AuthError::Failed));
    }

    #[test]
    fn unreadable_file_is_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: stat works, reading does not.
        fs::create_dir(dir.path().join("passwd")).unwrap();
        let auth = Authenticator::new(&config(dir.path(), 0));
        assert!(matches!(auth.login("alice", b"x", peer(4)), Err(AuthError::Temporary(_))));
    }

    #[test]
    fn dummy_follows_the_file() {
        let (f, _) = PasswdFile::parse("a:{PLAIN}x\nb:{SHA512-CRYPT}$6$a$b\nc:$6$a$b\nd:{MD5}x\n");
        assert_eq!(most_common_scheme(&f), Scheme::Sha512Crypt);
        let (f, _) = PasswdFile::parse("a:{MD5}x\n");
        assert_eq!(most_common_scheme(&f), hash::DEFAULT_SCHEME);
        let (f, _) = PasswdFile::parse("a:{PLAIN}x\nb:{PLAIN}y\nc:{BLF-CRYPT}$2y$10$x\n");
        assert_eq!(most_common_scheme(&f), Scheme::Plain);
    }

    #[test]
    fn gate_bounds_concurrency() {
        let gate = Arc::new(Gate::new(2));
        let peak = Arc::new(Mutex::new((0usize, 0usize)));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (gate, peak) = (gate.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _t = gate.enter();
                    {
                        let mut p = peak.lock().unwrap();
                        p.0 += 1;
                        p.1 = p.1.max(p.0);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    peak.lock().unwrap().0 -= 1;
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.lock().unwrap().1, 2);
        assert_eq!(*gate.busy.lock().unwrap(), 0);
    }
}

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
//! Every password check runs in a small pool of threads ([`pool`]), never
//! on the session thread, and no lock is held while it runs or while a
//! failure waits its delay ([`delay`]).
//!
//! A failed login must not tell whether the user exists, whatever the
//! hash of each user. Hashes differ in cost by a factor of 50 (SHA512-CRYPT
//! about 2 ms a check, ARGON2ID 30 ms, BLF-CRYPT 85 ms), so one dummy
//! hash for unknown users would tell them apart from the users of every
//! other scheme. Instead, when the file is read, its hashes are sorted into
//! cost classes (scheme and cost parameters, [`hash::CostClass`]) with one
//! hash of each kept, and every failed check costs one check of every
//! class: a known user's own hash and then one of each other class, an
//! unknown user (or one without a usable hash) one of each class. The
//! answers of these extra checks are thrown away. Every failure is the
//! same work, so the times match on a busy machine as on an idle one, with
//! no clock to calibrate. A failure costs the sum of the classes, which
//! for a file of one kind of hash is one check; `postroomd` warns when a
//! file has many classes. A successful login costs its own check only.

pub mod delay;
pub mod hash;
pub mod passwd;
pub mod pool;
pub mod sasl;
pub mod tool;

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use log::{debug, error, info, warn};
use zeroize::Zeroizing;

pub use passwd::{Account, PasswdFile};
pub use sasl::Secret;

use crate::config::Config;
use hash::{CostClass, HashError, Scheme};
use pool::{Check, Pool, Stored};

/// Longest user name accepted (RFC 5034 and RFC 3501 set none; Dovecot's
/// is of the same order).
pub const MAX_USER_LEN: usize = 256;

/// Longest password accepted. SHA-crypt costs grow with the password's
/// length, so an unbounded one would let a client buy much CPU time.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A passwd-file with more cost classes than this is warned about: each
/// failed login costs one check of each.
const MANY_CLASSES: usize = 3;

/// Why a login failed. Deliberately says nothing about whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong user or password (after the failure delay).
    Failed,
    /// The user database cannot be read, or too many logins are waiting
    /// for their password checks: try again later.
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
/// small updates; no lock is held while a password is checked or a failure
/// waits. The checks run in a [`Pool`] of `auth-workers` threads, started
/// at the first login.
pub struct Authenticator {
    settings: RwLock<Settings>,
    users: Mutex<Option<Loaded>>,
    penalties: delay::Penalties,
    pool: Mutex<Option<Arc<Pool>>>,
}

#[derive(Debug, Clone)]
struct Settings {
    passwd_file: PathBuf,
    failure_delay: Duration,
    workers: usize,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        Settings {
            passwd_file: config.passwd_file.clone(),
            failure_delay: config.auth_failure_delay,
            workers: config.auth_workers.unwrap_or_else(pool::default_workers),
        }
    }
}

/// The passwd-file as last read.
#[derive(Clone)]
struct Loaded {
    path: PathBuf,
    /// `None`: the file does not exist; accounts are the system's.
    id: Option<FileId>,
    file: Arc<PasswdFile>,
    classes: Classes,
}

/// One hash of each cost class of a passwd-file: what a failed login checks
/// its password against, besides the user's own hash.
type Classes = Arc<[(CostClass, Stored)]>;

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
    File(Arc<PasswdFile>, Classes),
    System,
}

impl Authenticator {
    pub fn new(config: &Config) -> Authenticator {
        Authenticator {
            settings: RwLock::new(Settings::of(config)),
            users: Mutex::new(None),
            penalties: delay::Penalties::new(),
            pool: Mutex::new(None),
        }
    }

    /// Picks up a changed passwd-file path, delay and pool size (SIGHUP);
    /// the file is read again at the next login, and a pool of another
    /// size replaces the old one, whose checks in progress finish.
    pub fn reload(&self, config: &Config) {
        let settings = Settings::of(config);
        let workers = settings.workers;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.as_ref().is_some_and(|p| p.workers() != workers) {
            *pool = None;
        }
    }

    /// The pool, started when first needed.
    fn pool(&self, workers: usize) -> Arc<Pool> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.get_or_insert_with(|| {
            debug!("auth starting password-checking threads workers={workers}");
            Arc::new(Pool::new(workers))
        })
        .clone()
    }

    /// Threads that check passwords, once the first login started them.
    pub fn workers(&self) -> Option<usize> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.workers())
    }

    /// Verifies `user` and `password`. On failure, sleeps the failure
    /// delay (longer for a place that keeps failing) before returning;
    /// every failure costs the same work, whether the user exists or not.
    pub fn login(&self, user: &str, password: &[u8], peer: IpAddr) -> Result<Account, AuthError> {
        let settings = self.settings.read().unwrap_or_else(|e| e.into_inner()).clone();
        let fail = |who: &str, reason: &str| self.fail(who, peer, reason, settings.failure_delay);
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Err(fail(&format!("<invalid, {} bytes>", user.len()), "invalid-user-name"));
        }
        // These fail for every user alike, so they need no check.
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
        let (account, classes) = match users {
            Users::File(file, classes) => (file.get(user).cloned(), classes),
            Users::System => match passwd::system_account(user) {
                Ok(a) => (a, default_classes()),
                Err(e) => {
                    error!("auth cannot look up system account user={user} error={e}");
                    return Err(AuthError::Temporary("cannot read the user database".to_string()));
                }
            },
        };
        // The account's own hash, and why a failure failed.
        let (own, reason) = match &account {
            None => (None, "unknown-user"),
            // A system account, whose password postroom cannot check, or a
            // passwd-file entry with an empty password field.
            Some(a) if a.password.is_empty() => (None, "no-password-hash"),
            Some(a) => match hash::parse(&a.password) {
                Ok((scheme, hashed)) => {
                    if scheme == Scheme::Plain {
                        warn_plain(user);
                    }
                    (Some(Stored { scheme, hash: hashed.into() }), "wrong-password")
                }
                Err(e) => {
                    unusable(user, &e);
                    (None, "unusable-hash")
                }
            },
        };
        let class = own.as_ref().and_then(|s| hash::cost_class(s.scheme, &s.hash).ok());
        let padding = classes.iter().filter(|(c, _)| Some(*c) != class).map(|(_, s)| s.clone()).collect();
        let check = Check { hash: own, padding, password: Zeroizing::new(password.to_vec()) };
        let outcome = self.pool(settings.workers).check(check).map_err(|refused| {
            warn!("auth busy user={user} address={peer} reason={refused}");
            AuthError::Temporary(refused.to_string())
        })?;
        match (outcome, account) {
            (Some(Ok(true)), Some(account)) => {
                self.penalties.succeed(peer, user);
                Ok(account)
            }
            (Some(Err(e)), _) => {
                unusable(user, &e);
                Err(fail(user, "unusable-hash"))
            }
            _ => Err(fail(user, reason)),
        }
    }

    /// Counts a failure, waits, and gives the error to return.
    fn fail(&self, user: &str, peer: IpAddr, reason: &str, base: Duration) -> AuthError {
        let (wait, failures) = self.penalties.fail(peer, user, base);
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
                        classes: default_classes(),
                    });
                }
                return Ok(Users::System);
            }
            Err(e) => return Err(e),
        };
        let id = FileId::of(&meta);
        if let Some(l) = self.users.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if l.path == path && l.id == Some(id) {
                return Ok(Users::File(l.file.clone(), l.classes.clone()));
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
        let classes = cost_classes(&file);
        let names: Vec<String> = classes.iter().map(|(c, _)| c.to_string()).collect();
        info!("auth passwd-file loaded path={} users={} hash-classes={}", path.display(), file.len(), names.join(","));
        if classes.len() > MANY_CLASSES {
            warn!(
                "auth passwd-file path={} has {} kinds of hash, and each failed login costs a check of each; \
                 rehash old passwords with postroom passwd",
                path.display(),
                classes.len()
            );
        }
        let file = Arc::new(file);
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Loaded { path: path.to_path_buf(), id: Some(id), file: file.clone(), classes: classes.clone() });
        Ok(Users::File(file, classes))
    }
}

/// One hash of each cost class in the file, in the order first met (the
/// default scheme's dummy when no hash has a class). PLAIN passwords are
/// represented by a dummy, not by anyone's password.
fn cost_classes(file: &PasswdFile) -> Classes {
    let mut classes: Vec<(CostClass, Stored)> = Vec::new();
    let mut accounts: Vec<&Account> = file.accounts().collect();
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    for a in accounts {
        let Ok((scheme, hashed)) = hash::parse(&a.password) else { continue };
        let Ok(class) = hash::cost_class(scheme, hashed) else { continue };
        if classes.iter().any(|(c, _)| *c == class) {
            continue;
        }
        let hashed = if scheme == Scheme::Plain { dummy(Scheme::Plain).1 } else { hashed.into() };
        classes.push((class, Stored { scheme, hash: hashed }));
    }
    if classes.is_empty() {
        return default_classes();
    }
    classes.into()
}

/// The class of the default scheme's dummy: what a failure costs when
/// there is no hash to go by (system accounts, a file without one).
fn default_classes() -> Classes {
    static DEFAULT: OnceLock<Classes> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            let (scheme, hashed) = dummy(hash::DEFAULT_SCHEME);
            match hash::cost_class(scheme, &hashed) {
                Ok(class) => vec![(class, Stored { scheme, hash: hashed })].into(),
                Err(_) => Vec::new().into(),
            }
        })
        .clone()
}

/// A scheme's dummy hash, without its prefix.
fn dummy(scheme: Scheme) -> (Scheme, Arc<str>) {
    let stored = scheme.dummy();
    let hashed = stored.split_once('}').map_or(stored, |(_, h)| h);
    (scheme, hashed.into())
}

/// Logs an account's hash that cannot be checked.
fn unusable(user: &str, e: &HashError) {
    match e {
        HashError::UnknownScheme(_) | HashError::NoScheme => {
            error!("auth unusable password user={user} error={e}; see postroom(8) passwd");
        }
        _ => error!("auth unusable password user={user} error={e}"),
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
    fn success_clears_only_its_own_failures() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("passwd"), "alice:{PLAIN}wonderland\nbob:{PLAIN}builder\n").unwrap();
        let auth = Authenticator::new(&config(dir.path(), 1));
        for _ in 0..3 {
            assert!(auth.login("alice", b"x", peer(2)).is_err());
        }
        assert!(auth.login("bob", b"x", peer(2)).is_err());
        assert_eq!(auth.penalties.failures(peer(2)), 4);
        assert!(auth.login("bob", b"builder", peer(2)).is_ok());
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
    fn cost_classes_of_a_file() {
        let sha =
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        let sha10k = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.";
        let argon = "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$H5rnCvoHJK5J3ADJ9mc9NL74Ow2lIMZ5zI+CyR256y0";
        let text = format!(
            "a:{{SHA512-CRYPT}}{sha}\nb:{{CRYPT}}{sha}\nc:{sha10k}\nd:{{ARGON2ID}}{argon}\ne:{{PLAIN}}secret\n\
             f:{{MD5}}x\ng:{{SHA512-CRYPT}}$6$short\nh:\n"
        );
        let (f, _) = PasswdFile::parse(&text);
        let classes = cost_classes(&f);
        let names: Vec<String> = classes.iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(
            names,
            ["SHA512-CRYPT/rounds=5000", "SHA512-CRYPT/rounds=10000", "ARGON2ID/m=1024,t=2,p=1", "PLAIN"]
        );
        // One real hash of each class, but no one's clear-text password.
        let hashes: Vec<&str> = classes.iter().map(|(_, s)| &*s.hash).collect();
        assert_eq!(&hashes[..3], [sha, sha10k, argon]);
        assert_ne!(hashes[3], "secret");
        // Nothing usable: the default scheme's dummy.
        let (f, _) = PasswdFile::parse("a:{MD5}x\nb:\n");
        let classes = cost_classes(&f);
        assert_eq!(classes.len(), 1);
        assert_eq!(classes[0].0.scheme, hash::DEFAULT_SCHEME);
        assert_eq!(hash::verify_as(classes[0].1.scheme, &classes[0].1.hash, b"x"), Ok(false));
    }

    #[test]
    fn reload_resizes_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("passwd"), "alice:{PLAIN}wonderland\n").unwrap();
        let mut c = config(dir.path(), 0);
        c.auth_workers = Some(1);
        let auth = Authenticator::new(&c);
        assert_eq!(auth.workers(), None);
        assert!(auth.login("alice", b"wonderland", peer(5)).is_ok());
        assert_eq!(auth.workers(), Some(1));
        c.auth_workers = Some(3);
        auth.reload(&c);
        assert!(auth.login("alice", b"wonderland", peer(5)).is_ok());
        assert_eq!(auth.workers(), Some(3));
    }
}

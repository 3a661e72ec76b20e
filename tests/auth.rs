//! Authentication from the outside: every hash scheme, hashes made by other
//! programs, the failure delay and its penalty, passwd-file reloads, and
//! `postroom passwd`.
//!
//! Timing tests assert lower bounds only (a loaded machine may be slow,
//! never fast), except the one that compares the failed logins of users of
//! different schemes, which compares medians with a margin of 2x where the
//! difference it guards against is 15x. The memory test runs a real
//! postroomd and reads its VmRSS.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postroom::auth::hash::{self, Scheme};
use postroom::auth::{AuthError, Authenticator};
use postroom::config::Config;

mod support;

const DELAY: Duration = Duration::from_millis(50);

fn config(dir: &Path) -> Config {
    let mut c = Config::default_for(&dir.join("postroom.conf"));
    c.passwd_file = dir.join("passwd");
    c.auth_failure_delay = DELAY;
    c
}

fn peer(last: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, last])
}

fn write_passwd(dir: &Path, text: &str) {
    std::fs::write(dir.join("passwd"), text).unwrap();
}

#[test]
fn every_scheme_round_trips() {
    for scheme in Scheme::ALL {
        let stored = hash::hash(scheme, "Correct horse, battery staple ✓".as_bytes()).unwrap();
        assert!(stored.starts_with(&format!("{{{}}}", scheme.name())), "{stored}");
        assert_eq!(hash::verify(&stored, "Correct horse, battery staple ✓".as_bytes()), Ok(true), "{stored}");
        assert_eq!(hash::verify(&stored, b"Correct horse, battery staple"), Ok(false), "{stored}");
    }
}

#[test]
fn hashes_made_elsewhere_verify() {
    // Made by crypt(3), bcrypt and the Argon2 reference implementation.
    let table = [
        // The sample passwd-file shipped in etc/.
        ("{SHA512-CRYPT}$6$z5svUtuNJpC1APPr$MPylhsku/wkocPUnjTXgmI.jlAiCO2Ws4/68LJ5PKGiO8tRNENBPqxno8ukkaqSeiR/7PhF1J3Iv7e/3a8ykq1", "alice"),
        ("{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1", "Hello world!"),
        ("{SHA256-CRYPT}$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA", "Hello world!"),
        ("{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", "correct horse"),
        ("$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", "correct horse"),
        ("{ARGON2ID}$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$H5rnCvoHJK5J3ADJ9mc9NL74Ow2lIMZ5zI+CyR256y0", "correct horse"),
        ("{ARGON2I}$argon2i$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$sd2wE4z6YKcwaFhcyqP4TORSrNKt7aNTBs3DelB3HkQ", "correct horse"),
    ];
    for (stored, password) in table {
        assert_eq!(hash::verify(stored, password.as_bytes()), Ok(true), "{stored}");
        assert_eq!(hash::verify(stored, b"not it"), Ok(false), "{stored}");
    }
}

#[test]
fn sample_passwd_file_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/passwd"), dir.path().join("passwd")).unwrap();
    let auth = Authenticator::new(&config(dir.path()));
    assert_eq!(auth.login("alice", b"alice", peer(1)).unwrap().name, "alice");
}

#[test]
fn repeated_failures_wait_longer() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path(), "alice:{PLAIN}wonderland\n");
    let auth = Authenticator::new(&config(dir.path()));

    let t = Instant::now();
    assert_eq!(auth.login("alice", b"wrong", peer(10)), Err(AuthError::Failed));
    let first = t.elapsed();
    let t = Instant::now();
    assert_eq!(auth.login("alice", b"wrong", peer(10)), Err(AuthError::Failed));
    let second = t.elapsed();
    let t = Instant::now();
    assert_eq!(auth.login("alice", b"wrong", peer(10)), Err(AuthError::Failed));
    let third = t.elapsed();
    assert!(first >= DELAY, "{first:?}");
    assert!(second >= 2 * DELAY, "{second:?}");
    assert!(third >= 4 * DELAY, "{third:?}");

    // Another address starts from the plain delay; alice's success forgets
    // alice's failures.
    let t = Instant::now();
    assert_eq!(auth.login("alice", b"wrong", peer(11)), Err(AuthError::Failed));
    assert!(t.elapsed() >= DELAY);
    assert!(auth.login("alice", b"wonderland", peer(10)).is_ok());
    let t = Instant::now();
    assert_eq!(auth.login("alice", b"wrong", peer(10)), Err(AuthError::Failed));
    assert!(t.elapsed() >= DELAY);
}

#[test]
fn unknown_user_costs_what_a_wrong_password_costs() {
    let dir = tempfile::tempdir().unwrap();
    let stored = hash::hash(Scheme::Sha512Crypt, b"wonderland").unwrap();
    write_passwd(dir.path(), &format!("alice:{stored}\n"));
    let auth = Authenticator::new(&config(dir.path()));
    let cases = [
        ("alice", &b"wrong"[..]),
        ("mallory", b"wrong"),
        ("alice\u{1}", b"wrong"),
        (&"x".repeat(300), b"wrong"),
        ("alice", b""),
    ];
    for (i, (user, password)) in cases.into_iter().enumerate() {
        let t = Instant::now();
        assert_eq!(auth.login(user, password, peer(20 + i as u8)), Err(AuthError::Failed), "{user}");
        assert!(t.elapsed() >= DELAY, "{user}: {:?}", t.elapsed());
    }
}

#[test]
fn passwd_file_is_reread_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authenticator::new(&config(dir.path()));
    write_passwd(dir.path(), "alice:{PLAIN}one\n");
    assert!(auth.login("alice", b"one", peer(30)).is_ok());

    // Rewritten in place, with a different size.
    write_passwd(dir.path(), "alice:{PLAIN}three\nbob:{PLAIN}four\n");
    assert_eq!(auth.login("alice", b"one", peer(30)), Err(AuthError::Failed));
    assert!(auth.login("alice", b"three", peer(30)).is_ok());
    assert!(auth.login("bob", b"four", peer(30)).is_ok());

    // Replaced by rename, as editors and scripts do: same size, new inode.
    let tmp = dir.path().join("passwd.new");
    std::fs::write(&tmp, "alice:{PLAIN}seven\nbob:{PLAIN}eight\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("passwd")).unwrap();
    assert!(auth.login("alice", b"seven", peer(30)).is_ok());
    assert_eq!(auth.login("bob", b"four", peer(30)), Err(AuthError::Failed));

    // A config reload that names another file.
    let other = tempfile::tempdir().unwrap();
    write_passwd(other.path(), "carol:{PLAIN}nine\n");
    auth.reload(&config(other.path()));
    assert!(auth.login("carol", b"nine", peer(30)).is_ok());
    assert_eq!(auth.login("alice", b"seven", peer(30)), Err(AuthError::Failed));
}

#[test]
fn shared_by_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let stored = hash::hash(Scheme::Sha256Crypt, b"pw").unwrap();
    write_passwd(dir.path(), &format!("alice:{stored}\nbob:{{PLAIN}}pw\n"));
    let auth = Arc::new(Authenticator::new(&config(dir.path())));
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let user = if i % 2 == 0 { "alice" } else { "bob" };
                for _ in 0..3 {
                    assert!(auth.login(user, b"pw", peer(40 + i)).is_ok());
                }
                assert_eq!(auth.login(user, b"nope", peer(40 + i)), Err(AuthError::Failed));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn run_passwd(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postroom"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal may come before the input is read: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn postroom_passwd_makes_hashes_that_verify() {
    let (status, out, err) = run_passwd(&[], b"s3cret pass\n");
    assert_eq!(status, 0, "{err}");
    let line = out.strip_suffix('\n').unwrap();
    assert!(line.starts_with(&format!("{{{}}}", hash::DEFAULT_SCHEME.name())), "{line}");
    assert_eq!(hash::verify(line, b"s3cret pass"), Ok(true));

    for scheme in ["SHA512-CRYPT", "sha256-crypt", "BLF-CRYPT", "PLAIN", "CLEAR"] {
        let (status, out, err) = run_passwd(&["-S", scheme], b"s3cret pass\r\n");
        assert_eq!(status, 0, "{scheme}: {err}");
        assert_eq!(out.lines().count(), 1);
        assert_eq!(hash::verify(out.trim_end(), b"s3cret pass"), Ok(true), "{scheme}: {out}");
    }

    // The line it prints works in a passwd-file.
    let dir = tempfile::tempdir().unwrap();
    let (_, out, _) = run_passwd(&["-S", "SHA512-CRYPT"], b"s3cret pass\n");
    write_passwd(dir.path(), &format!("dora:{}:1001:1001::/home/dora\n", out.trim_end()));
    let auth = Authenticator::new(&config(dir.path()));
    assert_eq!(auth.login("dora", b"s3cret pass", peer(50)).unwrap().uid, Some(1001));
}

#[test]
fn postroom_passwd_refuses() {
    let (status, out, err) = run_passwd(&["-S", "MD5"], b"pw\n");
    assert_eq!(status, 64);
    assert!(out.is_empty());
    assert!(err.contains("MD5") && err.contains("SHA512-CRYPT") && err.contains("ARGON2ID"), "{err}");

    for input in [&b"\n"[..], b"", b"\r\n"] {
        let (status, out, err) = run_passwd(&["-S", "SHA256-CRYPT"], input);
        assert_eq!(status, 65, "{input:?}: {err}");
        assert!(out.is_empty());
    }
    let (status, _, err) = run_passwd(&["-S", "PLAIN"], b"a:b\n");
    assert_eq!(status, 65, "{err}");
    let (status, _, _) = run_passwd(&["extra"], b"pw\n");
    assert_eq!(status, 64);
}

// ---------------------------------------------------------------------
// Under load: memory per session, penalties across accounts, and the
// timing of an unknown user beside users of several schemes.

/// The password every user of the memory test has.
const MEMORY_PASSWORD: &str = "a long and unguessable phrase";

/// Sessions in the memory test.
const MEMORY_SESSIONS: usize = 100;

/// A postroomd serving IMAP on a socket this test bound and passed to it
/// as systemd does, with a passwd-file of `users` all sharing `stored`.
struct Daemon {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(users: &[String], stored: &str, extra: &str) -> Daemon {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new().prefix("postroom-auth").tempdir().unwrap();
        let d = dir.path();
        for sub in ["spool", "mail", "state"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let mut pw = String::new();
        for u in users {
            pw.push_str(&format!("{u}:{stored}:::\n"));
        }
        write_passwd(d, &pw);
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root { "user nobody\n" } else { "" };
        std::fs::write(
            d.join("postroom.conf"),
            format!(
                "listen imap 127.0.0.1:0\npasswd-file passwd\ninbox spool/%u\nmail-dir mail/%u\nstate-dir state\n\
                 hostname test.example\nlog {}\nlog-level info\nmax-connections 2000\nmax-connections-per-ip 2000\n\
                 {user}{extra}\n",
                d.join("log").display()
            ),
        )
        .unwrap();
        if root {
            support::server::give_to_nobody(d);
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_postroomd"))
            .arg("-f")
            .arg(d.join("postroom.conf"));
        cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "imap").stdin(Stdio::null()).stderr(Stdio::null());
        // SAFETY: dup2 and fcntl are async-signal-safe; fd 3 in the child
        // becomes the listener, open across exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(listener);
        Daemon { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Waits until the log holds `what`.
    fn wait_log(&self, what: &str) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(start.elapsed() < Duration::from_secs(20), "no `{what}` in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A field of /proc/PID/status, in its unit (kB for memory).
    fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {text}"));
        line[field.len()..].trim().trim_end_matches(" kB").trim().parse().unwrap()
    }

    /// Waits until the server runs at most `threads` threads: the
    /// sessions that closed have ended.
    fn wait_threads(&self, threads: u64) {
        let start = Instant::now();
        while self.status("Threads:") > threads {
            assert!(start.elapsed() < Duration::from_secs(60), "sessions did not end: {}", self.status("Threads:"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Opens `n` connections, then sends `LOGIN user password` on all of them
/// at once, as a crowd of clients does, and gives the sessions with the
/// tagged answer each got.
fn crowd_login(port: u16, logins: &[(String, &str)]) -> Vec<(support::server::Imap, String)> {
    let mut conns: Vec<_> = logins.iter().map(|_| support::server::Imap::connect(port)).collect();
    for (c, (user, password)) in conns.iter_mut().zip(logins) {
        c.send(format!("a LOGIN {user} \"{password}\"\r\n").as_bytes());
    }
    conns
        .into_iter()
        .map(|mut c| {
            let status = c.read_until_tagged("a").status;
            (c, status)
        })
        .collect()
}

#[test]
fn argon2_logins_leave_little_memory_per_session() {
    // The hash `postroom passwd` writes by default: ARGON2ID, 19 MiB.
    let stored = hash::hash(Scheme::Argon2id, MEMORY_PASSWORD.as_bytes()).unwrap();
    assert!(stored.contains("$m=19456,t=2,p=1$"), "{stored}");
    let users: Vec<String> = (0..=MEMORY_SESSIONS).map(|i| format!("user{i:03}")).collect();
    let workers = 2;
    let d = Daemon::start(&users, &stored, &format!("auth-failure-delay 0s\nauth-workers {workers}"));
    d.wait_log("imap listening address=");
    let threads = d.status("Threads:") + workers;

    // What the server sets up once (the passwd-file, the hashing) is not
    // counted: a few logins and failures first.
    let warm: Vec<_> =
        (0..4).map(|i| (users[MEMORY_SESSIONS].clone(), if i % 2 == 0 { MEMORY_PASSWORD } else { "no" })).collect();
    for (mut c, status) in crowd_login(d.port, &warm) {
        assert!(status.starts_with("OK") || status.starts_with("NO [AUTHENTICATIONFAILED]"), "{status}");
        c.cmd("LOGOUT").assert_ok();
    }
    d.wait_threads(threads);
    let before = d.status("VmRSS:");

    // Sessions that logged in and stay.
    let logins: Vec<_> = users[..MEMORY_SESSIONS].iter().map(|u| (u.clone(), MEMORY_PASSWORD)).collect();
    let mut sessions = crowd_login(d.port, &logins);
    for (c, status) in &mut sessions {
        assert!(status.starts_with("OK"), "{status}\n{}", d.log());
        let r = c.cmd("NOOP");
        r.assert_ok();
    }
    let logged_in = d.status("VmRSS:");

    // Failed logins of unknown users, their connections closed.
    let logins: Vec<_> = (0..MEMORY_SESSIONS).map(|i| (format!("nobody{i:03}"), "guess")).collect();
    for (mut c, status) in crowd_login(d.port, &logins) {
        assert_eq!(status, "NO [AUTHENTICATIONFAILED] Authentication failed.");
        c.cmd("LOGOUT").assert_ok();
    }
    d.wait_threads(threads + MEMORY_SESSIONS as u64);
    let failed = d.status("VmRSS:");
    drop(sessions);

    let per_session = |kib: u64| kib as f64 / MEMORY_SESSIONS as f64;
    let (growth, failed_growth) = (logged_in.saturating_sub(before), failed.saturating_sub(logged_in));
    eprintln!(
        "VmRSS {before} KiB; {MEMORY_SESSIONS} logged-in sessions: +{growth} KiB ({:.1} KiB each); \
         {MEMORY_SESSIONS} failed logins, closed: +{failed_growth} KiB ({:.1} KiB each)",
        per_session(growth),
        per_session(failed_growth)
    );
    // A session with no password hashing in it is tens of KiB.
    assert!(per_session(growth) < 256.0, "{:.1} KiB per logged-in session", per_session(growth));
    assert!(per_session(failed_growth) < 128.0, "{:.1} KiB per closed failed login", per_session(failed_growth));
}

#[test]
fn logging_in_does_not_reset_the_delay_of_guesses() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path(), "alice:{PLAIN}wonderland\nmallory:{PLAIN}mine\nbob:{PLAIN}builder\n");
    let auth = Authenticator::new(&config(dir.path()));
    let timed = |user: &str, password: &[u8]| {
        let t = Instant::now();
        let r = auth.login(user, password, peer(60));
        (r, t.elapsed())
    };
    // Mallory guesses at alice's password, logging in as herself between
    // guesses: the waits keep doubling.
    let mut want = DELAY;
    for guess in 0..4 {
        let (r, took) = timed("alice", format!("guess{guess}").as_bytes());
        assert_eq!(r, Err(AuthError::Failed));
        assert!(took >= want, "guess {guess}: {took:?} < {want:?}");
        assert!(timed("mallory", b"mine").0.is_ok());
        want *= 2;
    }
    // Bob, behind the same address, mistypes his own password and then
    // gets it right: his success clears his own failure only, so
    // mallory's next guess waits on.
    let (r, took) = timed("bob", b"bulder");
    assert_eq!(r, Err(AuthError::Failed));
    assert!(took >= want, "{took:?} < {want:?}");
    assert!(timed("bob", b"builder").0.is_ok());
    let (r, took) = timed("alice", b"guess4");
    assert_eq!(r, Err(AuthError::Failed));
    assert!(took >= want, "{took:?} < {want:?}");
}

#[test]
fn unknown_user_costs_what_a_user_of_any_scheme_costs() {
    let dir = tempfile::tempdir().unwrap();
    // Two schemes of very different cost: about 2 ms and 30 ms a check.
    let sha = hash::hash(Scheme::Sha512Crypt, b"first secret").unwrap();
    let argon = hash::hash(Scheme::Argon2id, b"second secret").unwrap();
    write_passwd(dir.path(), &format!("sam:{sha}\narnold:{argon}\nanna:{argon}\n"));
    let mut c = config(dir.path());
    c.auth_failure_delay = Duration::ZERO;
    let auth = Authenticator::new(&c);
    assert!(auth.login("sam", b"first secret", peer(70)).is_ok());
    let who = ["sam", "arnold", "nosuchuser"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); who.len()];
    for round in 0..15 {
        for (i, user) in who.iter().enumerate() {
            let t = Instant::now();
            assert_eq!(auth.login(user, format!("wrong {round}").as_bytes(), peer(71)), Err(AuthError::Failed));
            times[i].push(t.elapsed());
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    eprintln!("median failed login: {:?}", who.iter().zip(&medians).collect::<Vec<_>>());
    for (i, a) in medians.iter().enumerate() {
        for (j, b) in medians.iter().enumerate() {
            assert!(a.as_secs_f64() <= 2.0 * b.as_secs_f64(), "{} {a:?} vs {} {b:?}", who[i], who[j]);
        }
    }
}

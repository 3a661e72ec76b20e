//! Authentication from the outside: every hash scheme, hashes made by other
//! programs, the failure delay and its penalty, passwd-file reloads, and
//! `postroom passwd`.
//!
//! Timing tests assert lower bounds only: a loaded machine may be slow,
//! never fast.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postroom::auth::hash::{self, Scheme};
use postroom::auth::{AuthError, Authenticator};
use postroom::config::Config;

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

    // Another address starts from the plain delay; a success forgets.
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

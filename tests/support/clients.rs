//! Real mail clients (python3, curl, fetchmail, mbsync) against a test
//! server, shared by tests/clients.rs (POP3) and tests/imap_clients.rs
//! (IMAP): finding a client, running it in its own process group under a
//! time limit, the server's generated certificate, alice's mailboxes, and
//! byte-for-byte comparisons that show what differs.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use postroom::store::{Flags, Mailbox};

use super::server::{give_to_nobody, Server};
use super::{contents, open, Tmp};

/// How long one client run may take.
pub const LIMIT: Duration = Duration::from_secs(90);

/// The `hostname` of the test config: the generated certificate is made
/// for it, localhost and 127.0.0.1.
pub const CERT_NAME: &str = "test.example";

/// `prog` on PATH, if it is there.
pub fn installed(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// False, after saying so, when `prog` is missing.
pub fn have(prog: &str) -> bool {
    let found = installed(prog).is_some();
    if !found {
        super::cannot_run(&format!("{prog} not installed"));
    }
    found
}

/// What a finished client left behind.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub what: String,
}

impl Ran {
    pub fn text(&self) -> String {
        format!(
            "{}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    #[track_caller]
    pub fn expect(self, code: i32) -> Ran {
        assert_eq!(self.code, Some(code), "unexpected exit status:\n{}", self.text());
        self
    }

    /// Both outputs, as the client's log.
    pub fn log(&self) -> String {
        format!("{}{}", String::from_utf8_lossy(&self.stdout), String::from_utf8_lossy(&self.stderr))
    }
}

/// Reads `from` to its end in a thread of its own.
pub fn drain(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = from.read_to_end(&mut v);
        v
    })
}

/// A client's process group, killed when this is dropped unreaped (on
/// expiry of [`LIMIT`], or a failed assertion while the client still runs).
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // Still unreaped, so the group id is still this child's.
            unsafe { libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// Runs `cmd` to its end, at most [`LIMIT`]: on expiry its process group
/// (the client and whatever it started) is killed and the test fails.
pub fn run(cmd: &mut Command) -> Ran {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut g = Group(child);
    let out = drain(g.0.stdout.take().unwrap());
    let err = drain(g.0.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = g.0.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            break None;
        }
        sleep(Duration::from_millis(20));
    };
    drop(g);
    let ran =
        Ran { code: status.and_then(|s| s.code()), stdout: out.join().unwrap(), stderr: err.join().unwrap(), what };
    assert!(status.is_some(), "still running after {LIMIT:?}, killed:\n{}", ran.text());
    ran
}

/// python3, able to import tests/support/strict_tls.py (and leaving no bytecode
/// cache in the source tree).
pub fn python3() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support")).env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// curl, silent but for errors, as alice unless `args` says otherwise.
pub fn curl(args: &[&str]) -> Ran {
    run(Command::new("curl").args(["-sS", "--max-time", "60", "--user", "alice:secret-alice"]).args(args))
}

/// Asserts two messages are the same bytes, showing them as text if not.
#[track_caller]
pub fn same(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what} differs\n--- got ({} bytes)\n{}\n--- want ({} bytes)\n{}",
        got.len(),
        String::from_utf8_lossy(got),
        want.len(),
        String::from_utf8_lossy(want)
    );
}

/// Line-by-line equality; a failure lists every line that differs.
#[track_caller]
pub fn same_lines(got: &[String], want: &[String]) {
    let mut diffs = Vec::new();
    for i in 0..got.len().max(want.len()) {
        let (g, w) = (got.get(i), want.get(i));
        if g != w {
            diffs.push(format!(
                "line {}:\n   got: {}\n  want: {}",
                i + 1,
                g.map_or("(none)", |s| s),
                w.map_or("(none)", |s| s)
            ));
        }
    }
    assert!(diffs.is_empty(), "{} of {} lines differ:\n{}", diffs.len(), want.len(), diffs.join("\n"));
}

pub fn file(dir: &Path, name: &str) -> Vec<u8> {
    fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `m` with every CRLF made LF, as a client stores mail locally. The test
/// messages have CRLF line ends only, no bare CR.
pub fn lf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for (i, &b) in m.iter().enumerate() {
        if !(b == b'\r' && m.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// A message of about two megabytes: lines of every length up to RFC 5322's
/// 998, some starting with a dot or "From ".
pub fn big() -> Vec<u8> {
    let mut m =
        b"From: big@example.org\r\nTo: alice@example.org\r\nSubject: big\r\nMessage-ID: <big@postroom.test>\r\n\r\n"
            .to_vec();
    for i in 0..4000usize {
        let start: &[u8] = match i % 5 {
            0 => b".",
            1 => b"From ",
            2 => b"..",
            _ => b"",
        };
        m.extend_from_slice(start);
        let len = (i * 37) % (999 - start.len());
        m.extend((0..len).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789 "[(i + j) % 37]));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// A running server (users alice and bob) with `messages` in alice's
/// INBOX, stored with `flags` and INTERNALDATE `date`.
pub fn server_with(t: &Tmp, messages: &[Vec<u8>], flags: Flags, date: Option<i64>, extra: &str) -> Server {
    fs::create_dir_all(t.path("spool")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        for m in messages {
            mb.append(m, flags, &[], date, "sender@example.org").unwrap();
        }
    }
    Server::start(t.dir.path(), &["alice", "bob"], extra)
}

/// The server's generated certificate. postroomd listens before it has
/// made the certificate, so a started server may not have it yet: wait
/// (a client that reads it at once, like mbsync, would fail).
pub fn cert(s: &Server) -> PathBuf {
    let path = s.dir.join("tls/cert.pem");
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no certificate at {}", path.display());
        sleep(Duration::from_millis(10));
    }
    path
}

/// A mailbox of alice's: INBOX or a folder.
pub fn mailbox(s: &Server, name: &str) -> Mailbox {
    if name == "INBOX" {
        open(&s.spool("alice"))
    } else {
        open(&s.mail_dir("alice").join(name))
    }
}

/// The messages of a mailbox as clients see them.
pub fn on_disk(s: &Server, name: &str) -> Vec<Vec<u8>> {
    contents(&mailbox(s, name)).into_iter().map(|(_, b)| b).collect()
}

// ------------------------------------------------------------- fetchmail

/// Which protocol a client speaks, and so which of the server's ports it uses.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    Pop3,
    Imap,
}

impl Proto {
    /// The plain port (STLS and STARTTLS too) and the implicit TLS one.
    pub fn ports(self, s: &Server) -> (u16, u16) {
        match self {
            Proto::Pop3 => (s.pop3, s.pop3s),
            Proto::Imap => (s.imap, s.imaps),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Pop3 => "POP3",
            Proto::Imap => "IMAP",
        }
    }
}

/// How a client reaches the server.
#[derive(Clone, Copy, Debug)]
pub enum Link {
    Plain,
    /// The plain port, then STLS (POP3) or STARTTLS (IMAP).
    Starttls,
    /// The implicit TLS port (pop3s, imaps).
    Implicit,
}

/// fetchmail's delivery agent: each message on stdin becomes the next
/// numbered file in the directory $1.
const DELIVER: &str = r#"#!/bin/sh
set -e
n=$(ls "$1" | wc -l)
cat > "$1/.part"
mv "$1/.part" "$1/$(printf %03d $((n + 1)))"
"#;

/// fetchmail polling alice over `proto`, with its home, rc files and
/// deliveries in `dir`.
pub struct Fetchmail<'a> {
    pub s: &'a Server,
    pub dir: &'a Path,
    pub proto: Proto,
}

impl Fetchmail<'_> {
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// One poll as run `tag`; returns its output and the messages delivered.
    pub fn poll(&self, tag: &str, link: Link, name: &str, options: &str) -> (Ran, Vec<Vec<u8>>) {
        let home = self.home();
        if !home.exists() {
            fs::create_dir(&home).unwrap();
            fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
            let deliver = self.dir.join("deliver");
            fs::write(&deliver, DELIVER).unwrap();
            fs::set_permissions(&deliver, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = self.dir.join(format!("out-{tag}"));
        fs::create_dir(&out).unwrap();
        let cert = cert(self.s);
        let verify = format!("sslcertck sslcertfile \"{}\" sslcommonname \"{name}\"", cert.display());
        let (plain, implicit) = self.proto.ports(self.s);
        let (port, tls) = match link {
            Link::Plain => (plain, "sslproto ''".to_string()),
            Link::Starttls => (plain, format!("sslproto \"TLS1.2+\" {verify}")),
            Link::Implicit => (implicit, format!("ssl {verify}")),
        };
        let protocol = self.proto.name();
        // POP3 mail is told apart by UIDL, IMAP mail by its \Seen flag.
        let uidl = if matches!(self.proto, Proto::Pop3) { " uidl" } else { "" };
        let rc = self.dir.join(format!("rc-{tag}"));
        fs::write(
            &rc,
            format!(
                "set no syslog\n\
                 poll {CERT_NAME} via 127.0.0.1 with protocol {protocol} port {port}{uidl} timeout 30\n\
                 \x20 user \"alice\" there with password \"secret-alice\"\n\
                 \x20 {tls}\n\
                 \x20 {options}\n\
                 \x20 mda \"{} '{}'\"\n",
                self.dir.join("deliver").display(),
                out.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
        // Never the invoking user's files, nor root's lock in /run (which
        // would keep two polls from running at once); as root, the
        // delivery agent runs as root too (fetchmail only warns).
        let ran = run(Command::new("fetchmail")
            .args(["--nosyslog", "-v", "-f"])
            .arg(&rc)
            .arg("--pidfile")
            .arg(home.join("fetchmail.pid"))
            .arg("--idfile")
            .arg(home.join(".fetchids"))
            .env("FETCHMAILHOME", &home)
            .env("HOME", &home)
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .env_remove("FETCHMAILUSER")
            .env_remove("LOGNAME")
            .env_remove("USER"));
        let mut names: Vec<String> =
            fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let got = names.iter().map(|n| file(&out, n)).collect();
        (ran, got)
    }

    /// [`poll`](Self::poll), asserting fetchmail's exit status `code` and
    /// that exactly `want` was delivered, in order.
    #[track_caller]
    pub fn poll_expecting(&self, tag: &str, link: Link, name: &str, options: &str, code: i32, want: &[Vec<u8>]) -> Ran {
        let (r, got) = self.poll(tag, link, name, options);
        let r = r.expect(code);
        assert_eq!(got.len(), want.len(), "{}", r.text());
        for (i, (g, m)) in got.iter().zip(want).enumerate() {
            self.fetched(g, m, &format!("{tag} poll, message {}", i + 1));
        }
        r
    }

    /// New mail arrives in alice's INBOX, stored with `flags`, after
    /// `before`: a poll keeping mail over the plain port fetches only it.
    /// Returns the INBOX now.
    #[track_caller]
    pub fn new_mail(&self, new: Vec<u8>, flags: Flags, before: &[Vec<u8>]) -> Vec<Vec<u8>> {
        open(&self.s.spool("alice")).append(&new, flags, &[], None, "sender@example.org").unwrap();
        if unsafe { libc::geteuid() } == 0 {
            give_to_nobody(&self.s.dir);
        }
        let mut all = before.to_vec();
        all.push(new.clone());
        self.poll_expecting("new", Link::Plain, CERT_NAME, "keep", 0, &[new]);
        assert_eq!(on_disk(self.s, "INBOX"), all);
        all
    }

    /// Without keep, fetching all: every message of `all`, then an empty
    /// mailbox with no message text left in the file, and a poll that
    /// finds nothing (fetchmail's exit status 1: no mail).
    #[track_caller]
    pub fn fetch_and_delete_all(&self, all: &[Vec<u8>]) {
        let r = self.poll_expecting("last", Link::Plain, CERT_NAME, "no keep fetchall", 0, all);
        assert!(on_disk(self.s, "INBOX").is_empty(), "{}", r.text());
        let left = fs::read(self.s.spool("alice")).unwrap();
        assert!(!String::from_utf8_lossy(&left).contains("@postroom.test>"), "message text left in the mbox");
        self.poll_expecting("empty", Link::Plain, CERT_NAME, "keep fetchall", 1, &[]);
    }

    /// Asserts `got` is `want` as fetchmail hands it to its delivery
    /// agent: LF line ends, after a Received header fetchmail adds that
    /// names the protocol.
    #[track_caller]
    pub fn fetched(&self, got: &[u8], want: &[u8], what: &str) {
        assert!(
            got.starts_with(b"Received: from "),
            "{what}: no Received header first:\n{}",
            String::from_utf8_lossy(got)
        );
        let mut rest = got;
        let mut first = true;
        while first || rest.starts_with(b" ") || rest.starts_with(b"\t") {
            first = false;
            let eol = rest.iter().position(|&b| b == b'\n').expect("header line end");
            rest = &rest[eol + 1..];
        }
        let received = String::from_utf8_lossy(&got[..got.len() - rest.len()]).into_owned();
        let with = format!("with {} (fetchmail-", self.proto.name());
        assert!(received.contains(&with), "{what}: {received}");
        same(rest, &lf(want), what);
    }
}

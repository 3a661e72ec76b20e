//! `postroom deliver` as Postfix's `mailbox_command`, with a real Postfix.
//!
//! Each test runs a private Postfix instance in a temporary directory: its
//! own config, queue and data directories, and a master.cf with unix
//! services only, so it opens no network port at all. Mail goes in with
//! Postfix's sendmail; local(8) runs `postroom deliver` as the recipient, a
//! dedicated unprivileged Unix user, and the test reads the mbox back the
//! way the server serves it.
//!
//! Postfix must be installed and the tests must run as root (to create the
//! test user and start Postfix); otherwise each test says SKIP and passes.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::*;

/// The Unix user the mail is for. Postfix runs `mailbox_command` with the
/// recipient's uid, and refuses to run it as root.
const USER: &str = "postroomtest";
/// Where Debian (and Postfix's own default) puts postfix, postconf,
/// sendmail and postqueue.
const SBIN: &str = "/usr/sbin";
/// How long Postfix may take for anything the tests wait for.
const PATIENCE: Duration = Duration::from_secs(30);

// ---- the test user ----

/// uid and gid of the test user, created on first use (it stays: it owns
/// nothing outside the tests' temporary directories).
fn test_user() -> (u32, u32) {
    static CREATING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ids) = lookup_user(USER) {
        return ids;
    }
    let out = Command::new(sbin("useradd"))
        .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", "--comment", "postroom tests", USER])
        .output()
        .expect("run useradd");
    assert!(out.status.success(), "useradd {USER}: {}", String::from_utf8_lossy(&out.stderr));
    lookup_user(USER).expect("the test user exists after useradd")
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("getent").args(["passwd", name]).output().expect("run getent");
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?;
    let f: Vec<&str> = line.trim_end().split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn sbin(name: &str) -> PathBuf {
    Path::new(SBIN).join(name)
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (Postfix and the test user need it)".into());
    }
    for tool in ["postfix", "postconf", "sendmail", "postqueue", "useradd"] {
        if !sbin(tool).exists() {
            return Some(format!("{} is missing (apt-get install postfix)", sbin(tool).display()));
        }
    }
    None
}

macro_rules! postfix_or_skip {
    ($extra:expr) => {
        match cannot_run() {
            Some(why) => {
                support::cannot_run(&why);
                return;
            }
            None => Postfix::start($extra),
        }
    };
}

// ---- a private Postfix instance ----

struct Postfix {
    /// The master daemon, which stays in the foreground as our child.
    master: Child,
    /// Postfix's config directory.
    etc: PathBuf,
    uid: u32,
    /// Removed when the instance is dropped, after the master has stopped.
    tmp: tempfile::TempDir,
}

impl Postfix {
    /// Starts Postfix with `mailbox_command` set to `postroom deliver`;
    /// `extra` goes into postroom's config.
    fn start(extra: &str) -> Postfix {
        let (uid, gid) = test_user();
        // Under /tmp, not $TMPDIR: every directory above must let the
        // postfix and test users through.
        let tmp = tempfile::Builder::new().prefix("postroom-mta").tempdir_in("/tmp").expect("tempdir");
        let dir = tmp.path().to_path_buf();
        set_mode(&dir, 0o755);
        let etc = dir.join("etc");
        fs::create_dir(&etc).unwrap();
        set_mode(&etc, 0o755);
        fs::create_dir(dir.join("queue")).unwrap();
        set_mode(&dir.join("queue"), 0o755);

        // postroom runs as the recipient (and as nobody, for root): the
        // binary where cargo built it if everyone may run it there, else a
        // copy; config and passwd-file readable by all.
        let mut bin = PathBuf::from(env!("CARGO_BIN_EXE_postroom"));
        if !runnable_by_all(&bin) {
            let copy = dir.join("postroom");
            fs::copy(&bin, &copy).expect("copy the postroom binary");
            set_mode(&copy, 0o755);
            bin = copy;
        }
        let conf = write_config(&dir, &[USER], extra);
        set_mode(&conf, 0o644);
        set_mode(&dir.join("passwd"), 0o644);
        // The spool directory belongs to the user, who makes the mbox and
        // its dotlock there.
        let spool = dir.join("spool");
        fs::create_dir(&spool).unwrap();
        std::os::unix::fs::chown(&spool, Some(uid), Some(gid)).unwrap();
        set_mode(&spool, 0o700);

        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
myhostname = localhost
mydomain = localdomain
myorigin = localhost
mydestination = localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
local_recipient_maps = unix:passwd.byname
default_transport = error:this test sends no mail out
relay_transport = error:this test sends no mail out
biff = no
mailbox_command = '{bin}' deliver -f '{conf}' -s \"$SENDER\" \"$USER\"
",
            bin = bin.display(),
            conf = conf.display()
        );
        fs::write(etc.join("main.cf"), main_cf).unwrap();
        // Unix services only: nothing listens on the network.
        let master_cf = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
postlog   unix-dgram n  -       n       -       1       postlogd
";
        fs::write(etc.join("master.cf"), master_cf).unwrap();
        for f in ["main.cf", "master.cf"] {
            set_mode(&etc.join(f), 0o644);
        }

        // `postfix check` makes the queue and data directories with the
        // owners and modes Postfix wants.
        let out = run(Command::new(sbin("postfix")).arg("-c").arg(&etc).arg("check"));
        assert!(out.status.success(), "postfix check: {}", text(&out));
        let out = run(Command::new(sbin("postconf")).arg("-c").arg(&etc).args(["-h", "daemon_directory"]));
        assert!(out.status.success(), "postconf: {}", text(&out));
        let daemons = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // Without -w the master does not fork into the background: it is
        // our child, and we stop it by its pid.
        let master = Command::new(daemons.join("master"))
            .arg("-c")
            .arg(&etc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Postfix master");
        let mut pf = Postfix { master, etc, uid, tmp };
        // Ready once it has made the pickup FIFO that sendmail triggers.
        pf.wait_for("the master to start", |pf| {
            pf.path("queue/public/pickup").exists() && pf.maillog().contains("daemon started")
        });
        pf
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The test user's INBOX.
    fn inbox(&self) -> PathBuf {
        self.path(&format!("spool/{USER}"))
    }

    fn maillog(&self) -> String {
        fs::read_to_string(self.path("maillog")).unwrap_or_default()
    }

    /// Submits `message` with Postfix's sendmail, as a local program does.
    fn sendmail(&self, sender: &str, recipient: &str, message: &[u8]) {
        let mut child = Command::new(sbin("sendmail"))
            .arg("-C")
            .arg(&self.etc)
            .args(["-oi", "-f", sender, recipient])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sendmail");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "sendmail: {}", text(&out));
    }

    /// `postqueue -p`: the queue listing.
    fn queue(&self) -> String {
        let out = run(Command::new(sbin("postqueue")).arg("-c").arg(&self.etc).arg("-p"));
        assert!(out.status.success(), "postqueue -p: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn queue_is_empty(&self) -> bool {
        self.queue().contains("Mail queue is empty")
    }

    /// `postqueue -f`: try the deferred mail again now.
    fn flush(&self) {
        let out = run(Command::new(sbin("postqueue")).arg("-c").arg(&self.etc).arg("-f"));
        assert!(out.status.success(), "postqueue -f: {}", text(&out));
    }

    /// The number of messages in the inbox, by its `From_` lines (postroom
    /// quotes every body line that starts with "From ").
    fn inbox_count(&self) -> usize {
        let disk = fs::read(self.inbox()).unwrap_or_default();
        disk.split(|&b| b == b'\n').filter(|l| l.starts_with(b"From ")).count()
    }

    /// Polls `done` until it holds; fails with Postfix's log after PATIENCE.
    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Postfix) -> bool) {
        let start = Instant::now();
        loop {
            if done(self) {
                return;
            }
            if let Ok(Some(status)) = self.master.try_wait() {
                panic!("the Postfix master exited ({status}) while waiting for {what}\n{}", self.maillog());
            }
            if start.elapsed() > PATIENCE {
                panic!("waited {PATIENCE:?} for {what}\n--- maillog\n{}--- queue\n{}", self.maillog(), self.queue());
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The queue id Postfix logged for `pattern` (e.g. "to=<x>, ...").
    fn queue_ids(&self, pattern: &str) -> Vec<String> {
        self.maillog()
            .lines()
            .filter(|l| l.contains(pattern))
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its whole process group (the
        // daemons it started) and exit.
        let pid = self.master.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while matches!(self.master.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(10) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = self.master.wait();
                break;
            }
            sleep(Duration::from_millis(20));
        }
        // The daemons leave as soon as they notice; wait for that before
        // their directories go. The group id is the master's pid (it made
        // its own session), so this names no one else.
        let start = Instant::now();
        while !live_in_group(pid).is_empty() {
            if start.elapsed() > Duration::from_secs(10) {
                for p in live_in_group(pid) {
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

/// The processes of process group `pgid` that still run. Zombies do not
/// count: they have exited, and whoever inherited them reaps them.
fn live_in_group(pgid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut live = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) state ppid pgrp ...": comm may hold anything, so
        // count from its closing parenthesis.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.len() > 2 && f[2].parse() == Ok(pgid) && f[0] != "Z" && f[0] != "X" {
            live.push(pid);
        }
    }
    live
}

/// True when any user may run the file at `path`: it and every directory
/// above it are open to others.
fn runnable_by_all(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else { return false };
    path.ancestors().all(|p| fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0))
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

// ---- messages ----

/// A message as a mail client submits it: CRLF line ends, body lines that
/// look like mbox separators or are quoted already, 8-bit text, a lone
/// dot, and state headers that must not reach the mailbox.
fn submitted(id: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\n\
         To: {USER}@localhost\r\n\
         Subject: through Postfix {id}\r\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{id}@postroom.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         X-UID: 7\r\n\
         Status: RO\r\n\
         \r\n\
         From the start of a line\r\n\
         >From quoted once\r\n\
         >>From quoted twice\r\n\
         From someone@example.org Thu Nov 26 16:01:55 2026\r\n\
         caf\u{e9} \u{2713} 8-bit text\r\n\
         .\r\n\
         \r\n\
         last line of {id}\r\n"
    )
    .into_bytes()
}

/// What a client must get of [`submitted`]: the same bytes without the
/// state headers.
fn served(id: &str) -> Vec<u8> {
    let all = submitted(id);
    let text = String::from_utf8(all).unwrap();
    text.replace("X-UID: 7\r\n", "").replace("Status: RO\r\n", "").into_bytes()
}

/// Splits what a client gets into the trace headers Postfix's local(8)
/// put on top (one string per header, continuation lines joined) and the
/// rest, which begins at the first header not among them.
fn postfix_trace(message: &[u8]) -> (Vec<String>, &[u8]) {
    let mut headers: Vec<String> = Vec::new();
    let mut at = 0;
    let trace = ["Return-Path:", "X-Original-To:", "Delivered-To:", "Received:"];
    while at < message.len() {
        let end = message[at..].windows(2).position(|w| w == b"\r\n").map_or(message.len(), |p| at + p + 2);
        let line = String::from_utf8_lossy(&message[at..end]).into_owned();
        if line.starts_with('\t') || line.starts_with(' ') {
            match headers.last_mut() {
                Some(h) => h.push_str(&line),
                None => break,
            }
        } else if trace.iter().any(|t| line.starts_with(t)) {
            headers.push(line);
        } else {
            break;
        }
        at = end;
    }
    (headers, &message[at..])
}

/// Byte equality, shown as text when it fails.
fn assert_same(got: &[u8], want: &[u8]) {
    assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(want));
    assert_eq!(got, want);
}

// ---- the tests ----

#[test]
fn postfix_delivers_byte_exact_with_the_envelope_sender() {
    let mut pf = postfix_or_skip!("");
    pf.sendmail("sender@example.org", USER, &submitted("mta-1"));
    pf.wait_for("the delivery", |pf| {
        pf.inbox_count() == 1 && pf.queue_is_empty() && pf.maillog().contains("status=sent")
    });

    let disk = fs::read(pf.inbox()).unwrap();
    let first = String::from_utf8_lossy(&disk[..disk.iter().position(|&b| b == b'\n').unwrap()]).into_owned();
    assert!(first.starts_with("From sender@example.org "), "From_ line: {first}");
    // On disk (mboxrd) every body line matching >*From is quoted once
    // more, so the file holds one message; the state headers are gone and
    // the line ends are LF.
    let lines: Vec<&[u8]> = disk.split(|&b| b == b'\n').collect();
    for quoted in [
        &b">From the start of a line"[..],
        b">>From quoted once",
        b">>>From quoted twice",
        b">From someone@example.org Thu Nov 26 16:01:55 2026",
    ] {
        assert!(lines.contains(&quoted), "{} not on disk", String::from_utf8_lossy(quoted));
    }
    assert_eq!(lines.iter().filter(|l| l.starts_with(b"From ")).count(), 1);
    assert!(!lines.iter().any(|l| l.starts_with(b"X-UID:") || l.starts_with(b"Status:")));
    assert!(!disk.contains(&b'\r'));
    // local(8) ran postroom as the recipient.
    let meta = fs::metadata(pf.inbox()).unwrap();
    assert_eq!(meta.uid(), pf.uid, "the mbox belongs to the recipient");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(!pf.path(&format!("spool/{USER}.lock")).exists(), "the dotlock is gone");

    let mb = open(&pf.inbox());
    assert_eq!(mb.len(), 1);
    let from = mb.from_line(0).unwrap();
    assert_eq!(from.sender, "sender@example.org");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - from.date).abs() < 600, "From_ line date {} is not about now ({now})", from.date);

    let got = mb.message_bytes(0).unwrap();
    let (trace, rest) = postfix_trace(&got);
    assert_same(rest, &served("mta-1"));
    assert_eq!(trace.len(), 4, "{trace:?}");
    assert_eq!(trace[0], "Return-Path: <sender@example.org>\r\n");
    assert_eq!(trace[1], format!("X-Original-To: {USER}\r\n"));
    assert_eq!(trace[2], format!("Delivered-To: {USER}@localhost\r\n"));
    assert!(trace[3].starts_with("Received: by localhost (Postfix, from userid 0)\r\n\tid "), "{}", trace[3]);
    // The Received header names the queue id of the delivery that Postfix
    // logged as handed to postroom.
    let qid = trace[3].split("\tid ").nth(1).and_then(|s| s.split(';').next()).unwrap().to_string();
    let log = pf.maillog();
    assert!(
        log.lines().any(|l| l.contains(&format!("{qid}: to=<{USER}@localhost>"))
            && l.contains("status=sent (delivered to command: ")),
        "{log}"
    );
    assert_eq!(mb.messages()[0].uid, 1);
}

#[test]
fn a_user_postroom_does_not_know_bounces_to_the_sender() {
    // root is a local Unix user, so local(8) runs the command for it (as
    // default_privs), but postroom's passwd-file does not list it: exit 67,
    // and Postfix bounces. The bounce, with the null sender, comes back to
    // the test user's inbox through postroom too.
    let mut pf = postfix_or_skip!("");
    pf.sendmail(&format!("{USER}@localhost"), "root", &submitted("mta-2"));
    pf.wait_for("the bounce", |pf| {
        pf.inbox_count() == 1
            && pf.queue_is_empty()
            && pf.maillog().lines().any(|l| l.contains("to=<root@localhost>") && l.contains("status=bounced"))
    });
    assert!(!pf.path("spool/root").exists(), "no inbox made for an unknown user");

    let mb = open(&pf.inbox());
    assert_eq!(mb.len(), 1);
    assert_eq!(mb.from_line(0).unwrap().sender, "MAILER-DAEMON", "the null sender");
    let got = mb.message_bytes(0).unwrap();
    let dsn = String::from_utf8_lossy(&got);
    let (trace, _) = postfix_trace(&got);
    assert_eq!(trace.first().map(String::as_str), Some("Return-Path: <>\r\n"), "{dsn}");
    assert!(dsn.contains("postroom deliver: no such user: root"), "postroom's reason reaches the sender:\n{dsn}");
    // Body lines of the delivery report look like headers; only the
    // message's own header loses its state headers.
    assert!(dsn.contains("\r\nStatus: 5.1.1\r\n"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; root@localhost\r\n"), "{dsn}");
    assert!(dsn.contains("Message-ID: <mta-2@postroom.test>"), "the bounce quotes the message:\n{dsn}");
}

#[test]
fn a_locked_inbox_defers_and_the_retry_delivers_once() {
    let mut pf = postfix_or_skip!("mbox-lock-timeout 1s\n");
    // A live process (this test) holds the inbox's dotlock.
    let lock = pf.path(&format!("spool/{USER}.lock"));
    fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    set_mode(&lock, 0o644);

    pf.sendmail("sender@example.org", USER, &submitted("mta-3"));
    pf.wait_for("the deferral", |pf| {
        pf.maillog().lines().any(|l| l.contains(&format!("to=<{USER}@localhost>")) && l.contains("status=deferred"))
    });
    let deferred = pf.queue_ids("status=deferred");
    assert_eq!(deferred.len(), 1, "{}", pf.maillog());
    let qid = &deferred[0];
    // Still queued, with postroom's reason; nothing in the inbox.
    pf.wait_for("the deferred queue", |pf| pf.queue().contains("(temporary failure"));
    let queue = pf.queue();
    assert!(queue.contains(qid.as_str()) && queue.contains("sender@example.org"), "{queue}");
    assert!(queue.contains("timed out waiting for the lock"), "postroom's reason: {queue}");
    assert!(queue.contains(&format!("{USER}@localhost")), "{queue}");
    assert_eq!(fs::read(pf.inbox()).unwrap_or_default(), b"", "nothing written under someone else's lock");
    assert_eq!(fs::read_to_string(&lock).unwrap(), format!("{}\n", std::process::id()), "the lock is untouched");

    fs::remove_file(&lock).unwrap();
    pf.flush();
    pf.wait_for("the retry", |pf| pf.inbox_count() >= 1 && pf.queue_is_empty() && pf.maillog().contains("status=sent"));

    let sent = pf.queue_ids("status=sent");
    assert_eq!(sent, vec![qid.clone()], "delivered once, the deferred message\n{}", pf.maillog());
    let mb = open(&pf.inbox());
    assert_eq!(mb.len(), 1, "exactly one copy");
    assert_eq!(mb.from_line(0).unwrap().sender, "sender@example.org");
    let got = mb.message_bytes(0).unwrap();
    let (trace, rest) = postfix_trace(&got);
    assert_same(rest, &served("mta-3"));
    assert_eq!(trace.len(), 4, "{trace:?}");
}

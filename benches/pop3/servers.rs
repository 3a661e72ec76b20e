//! The two servers under test, each a private instance on 127.0.0.1 with
//! its own config, mail tree and log under the benchmark's directory:
//! postroomd (one process) and Dovecot (a master and the processes it
//! forks). A [`Server`] stops its instance when dropped, by PID, also when
//! the benchmark panics; the processes a Dovecot master forked are ended
//! by PID as well if they outlive it.
//!
//! The same functions read what the benchmark reports about a server from
//! /proc: resident memory (VmRSS, and Rss and Pss from smaps_rollup) and
//! CPU time, summed over all of its processes.
//!
//! Both passwd-files hold the same `{SCHEME}hash` of each password:
//! `{PLAIN}` unless `POSTROOM_BENCH_SCHEME` names another scheme both
//! servers read (ARGON2ID, SHA512-CRYPT, BLF-CRYPT), hashed once per user
//! with the parameters `postroom passwd` uses.

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::common::Res;

/// How long a server may take to listen after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postroom,
    Dovecot,
}

/// Whom the mail processes run as: under root, nobody (postroomd refuses
/// to serve mail as root and Dovecot refuses mail access as root), else
/// the user running the benchmark.
#[derive(Debug, Clone)]
pub struct Ids {
    pub root: bool,
    pub uid: u32,
    pub gid: u32,
    /// User and group names, when not root (Dovecot's internal users).
    pub user: String,
    pub group: String,
}

impl Ids {
    pub fn get() -> Res<Ids> {
        // SAFETY: geteuid and getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if euid == 0 {
            let nobody = postroom::auth::passwd::system_account("nobody")
                .map_err(|e| format!("looking up user nobody: {e}"))?
                .ok_or("no user nobody (needed to run the servers under root)")?;
            return Ok(Ids {
                root: true,
                uid: nobody.uid.ok_or("nobody has no uid")?,
                gid: nobody.gid.ok_or("nobody has no gid")?,
                user: String::new(),
                group: String::new(),
            });
        }
        Ok(Ids { root: false, uid: euid, gid: egid, user: user_name(euid)?, group: group_name(egid)? })
    }
}

fn user_name(uid: u32) -> Res<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pwd.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(format!("no user name for uid {uid}"));
    }
    // SAFETY: pw_name points into buf, NUL-terminated.
    Ok(unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned())
}

fn group_name(gid: u32) -> Res<String> {
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of grp.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(format!("no group name for gid {gid}"));
    }
    // SAFETY: gr_name points into buf, NUL-terminated.
    Ok(unsafe { std::ffi::CStr::from_ptr(grp.gr_name) }.to_string_lossy().into_owned())
}

/// Gives `path` and everything under it to `uid`:`gid`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Res<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))?;
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        for e in fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", path.display()))?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The port postroomd says it bound, from its log line `server listening
/// protocol=P address=127.0.0.1:PORT`, once the log says `server started`.
fn bound_port(log: &Path) -> Option<u16> {
    let text = fs::read_to_string(log).ok()?;
    if !text.contains("server started") {
        return None;
    }
    text.lines().find_map(|l| {
        let rest = &l[l.find("server listening protocol=")?..];
        let addr = rest.split(' ').find_map(|w| w.strip_prefix("address="))?;
        addr.rsplit(':').next()?.parse().ok()
    })
}

/// A port for Dovecot to try on 127.0.0.1, different for each `attempt`.
/// Dovecot binds it itself (nothing here binds and releases it); when
/// another program holds it, Dovecot exits at start and the next attempt
/// tries another.
fn dovecot_port(attempt: u32) -> u16 {
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ attempt.wrapping_mul(40_503);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    20_000 + ((seed ^ nanos) % 30_000) as u16
}

/// How many ports Dovecot tries before the benchmark gives up.
const DOVECOT_PORT_ATTEMPTS: u32 = 8;

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port`,
/// so that a connection there reaches it and no other program.
fn listens_on(pid: i32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else { return false };
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() > 9 && cols[1] == want && cols[3] == "0A").then(|| format!("socket:[{}]", cols[9]))
        })
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|t| sockets.iter().any(|s| t.as_os_str() == s.as_str())))
}

/// One user of both servers: its name, password and messages.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// The mbox file (in postroom's state format) both servers get a copy of.
    pub template: PathBuf,
    pub messages: u32,
}

/// The passwd-file field for `password`: `{PLAIN}` or, with
/// `POSTROOM_BENCH_SCHEME`, a hash made once and then reused.
pub fn stored_password(password: &str) -> Res<String> {
    static MADE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let scheme = match std::env::var("POSTROOM_BENCH_SCHEME") {
        Err(_) => return Ok(format!("{{PLAIN}}{password}")),
        Ok(name) => postroom::auth::hash::Scheme::from_name(&name)
            .ok_or(format!("POSTROOM_BENCH_SCHEME: unknown scheme {name}"))?,
    };
    if let Some(h) = MADE.get_or_init(Default::default).lock().unwrap().get(password) {
        return Ok(h.clone());
    }
    let h = postroom::auth::hash::hash(scheme, password.as_bytes()).map_err(|e| format!("hash: {e}"))?;
    MADE.get_or_init(Default::default).lock().unwrap().insert(password.to_string(), h.clone());
    Ok(h)
}

/// The scheme of the passwords both servers check, as the report names it.
pub fn password_scheme() -> String {
    std::env::var("POSTROOM_BENCH_SCHEME").map_or("PLAIN".to_string(), |s| s.to_ascii_uppercase())
}

/// Hashes every user's password (see [`stored_password`]) on all CPUs, so
/// that the trees are written without waiting on one hash after another.
fn hash_all(users: &[User]) -> Res<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = users.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().try_for_each(|u| stored_password(&u.password).map(|_| ()))))
            .collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| "hashing panicked".to_string())?)
    })
}

/// Writes postroom's tree under `dir`: config, passwd-file (the same
/// passwords Dovecot gets), one INBOX per user (a copy of its template),
/// state directory. Returns the config's path.
pub fn postroom_tree(dir: &Path, users: &[User], ids: &Ids) -> Res<PathBuf> {
    hash_all(users)?;
    let spool = dir.join("spool");
    for d in [&spool, &dir.join("mail"), &dir.join("state")] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut pw = String::new();
    for u in users {
        pw.push_str(&format!("{}:{}:::\n", u.name, stored_password(&u.password)?));
        copy(&u.template, &spool.join(&u.name))?;
    }
    write(&dir.join("passwd"), &pw)?;
    if ids.root {
        chown_tree(dir, ids.uid, ids.gid)?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.join("postroom.conf"))
}

/// Writes Dovecot's tree under `dir`: passwd-file, a home per user with
/// its INBOX (a copy of the template) and an empty mail directory, and
/// the directories Dovecot keeps its sockets and state in.
pub fn dovecot_tree(dir: &Path, users: &[User], ids: &Ids) -> Res<()> {
    let home = dir.join("home");
    for d in [&home, &dir.join("run"), &dir.join("state")] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut pw = String::new();
    for u in users {
        pw.push_str(&format!("{}:{}\n", u.name, stored_password(&u.password)?));
        let h = home.join(&u.name);
        fs::create_dir_all(h.join("mail")).map_err(|e| format!("{}: {e}", h.display()))?;
        copy(&u.template, &h.join("inbox"))?;
    }
    write(&dir.join("passwd"), &pw)?;
    if ids.root {
        chown_tree(&home, ids.uid, ids.gid)?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Res<()> {
    fs::copy(from, to).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).map_err(|e| format!("{}: {e}", to.display()))
}

fn write(path: &Path, text: &str) -> Res<()> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A running server. Dropping it stops it.
pub struct Server {
    name: &'static str,
    pub port: u16,
    child: Option<Child>,
    pid: i32,
    logs: Vec<PathBuf>,
    /// What it serves: ready means greeted with `+OK` (POP3) or `* OK` (IMAP).
    protocol: Protocol,
}

/// The Dovecot binary: `$DOVECOT` or /usr/sbin/dovecot.
fn dovecot_bin() -> PathBuf {
    std::env::var_os("DOVECOT").map_or_else(|| PathBuf::from("/usr/sbin/dovecot"), PathBuf::from)
}

/// What `dovecot --version` says, or "?".
pub fn dovecot_version() -> String {
    Command::new(dovecot_bin())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The protocol a server is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Pop3,
    Imap,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
        }
    }
}

impl Server {
    /// Starts postroomd on a free port with the tree [`postroom_tree`] made.
    pub fn postroom(dir: &Path, ids: &Ids, sessions: u32) -> Res<Server> {
        Server::start_postroom(dir, ids, sessions, Protocol::Pop3, "postroom.conf", "postroomd.log")
    }

    /// Starts postroomd for IMAP on a free port with the tree
    /// [`postroom_tree`] made, its config in `postroom-imap.conf` (for
    /// `postroom deliver` too). Fails when the server does not greet with
    /// `* OK` (a postroomd without IMAP closes the connection).
    #[allow(dead_code)] // The IMAP benchmark's; the POP3 one does not use it.
    pub fn postroom_imap(dir: &Path, ids: &Ids, sessions: u32) -> Res<Server> {
        Server::start_postroom(dir, ids, sessions, Protocol::Imap, "postroom-imap.conf", "postroomd-imap.log")
    }

    /// Writes postroomd's config `conf` for `protocol` under `dir`, starts
    /// it with its log in `log`, and waits for its greeting.
    fn start_postroom(dir: &Path, ids: &Ids, sessions: u32, protocol: Protocol, conf: &str, log: &str) -> Res<Server> {
        let user = if ids.root { "user nobody\n" } else { "" };
        // The connection caps are raised so that neither the 50 clients
        // (whose next session may connect before the thread of the last
        // has ended) nor the idle sessions are refused.
        let text = format!(
            "listen {} 127.0.0.1:0\n\
             passwd-file passwd\n\
             inbox spool/%u\n\
             mail-dir mail/%u\n\
             state-dir state\n\
             hostname bench.example\n\
             max-connections {sessions}\n\
             max-connections-per-ip {sessions}\n\
             log-level info\n\
             {user}",
            protocol.name()
        );
        let path = dir.join(conf);
        write(&path, &text)?;
        if ids.root {
            chown_tree(&path, ids.uid, ids.gid)?;
        }
        let log = dir.join(log);
        let err = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(env!("CARGO_BIN_EXE_postroomd"))
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting postroomd: {e}"))?;
        let pid = child.id() as i32;
        let mut s = Server { name: "postroom", port: 0, child: Some(child), pid, logs: vec![log.clone()], protocol };
        let start = Instant::now();
        s.port = loop {
            if let Some(port) = bound_port(&log) {
                break port;
            }
            if let Some(Ok(Some(st))) = s.child.as_mut().map(|c| c.try_wait()) {
                s.child = None;
                return Err(format!("postroom exited at start ({st}):\n{}", s.log_tail(30)));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!("postroom did not log the port it bound:\n{}", s.log_tail(30)));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        s.wait_ready()?;
        Ok(s)
    }

    /// Starts Dovecot (`$DOVECOT` or /usr/sbin/dovecot) in the foreground
    /// with a private config: POP3 only, on a free port, no TLS, plain
    /// text logins, the same {PLAIN} passwd-file as postroom, mbox storage
    /// with Dovecot's usual on-disk index (~/mail/.imap), fcntl locks, and
    /// limits raised for `sessions` sessions at once.
    ///
    /// Dovecot's default process model forks a login process for each
    /// connection and a pop3 process for each session. With `reuse`, both
    /// are reused (`service_count = 0`, Dovecot's "high-performance" login
    /// mode with two login processes kept ready, and pop3 processes that
    /// serve one session after another, which is allowed here because all
    /// users have the same uid).
    pub fn dovecot(dir: &Path, ids: &Ids, sessions: u32, reuse: bool) -> Res<Server> {
        let name = if reuse { "Dovecot (reuse)" } else { "Dovecot" };
        Server::start_dovecot(dir, ids, sessions, Protocol::Pop3, name, |port, limit, _| {
            let mut services = format!(
                "service pop3-login {{\n  process_limit = {limit}\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
                 service pop3 {{\n  process_limit = {limit}\n}}\n"
            );
            if reuse {
                services.push_str(
                    "service pop3-login {\n  service_count = 0\n  process_min_avail = 2\n}\nservice pop3 {\n  service_count = 0\n}\n",
                );
            }
            ("default_vsz_limit = 1G\n".into(), services)
        })
    }

    /// Starts Dovecot for IMAP, configured as [`Server::dovecot`] configures
    /// it for POP3 (its defaults: a login process per connection, an imap
    /// process per session), with limits for `sessions` sessions of one
    /// user from one address. The config goes to `dovecot-imap.conf` (for
    /// dovecot-lda too).
    #[allow(dead_code)] // The IMAP benchmark's; the POP3 one does not use it.
    pub fn dovecot_imap(dir: &Path, ids: &Ids, sessions: u32) -> Res<Server> {
        Server::start_dovecot(dir, ids, sessions, Protocol::Imap, "Dovecot", |port, limit, clients| {
            let settings = "default_vsz_limit = 4G\npostmaster_address = postmaster@bench.example\n".to_string();
            let services = format!(
                "service imap-login {{\n  process_limit = {limit}\n  client_limit = {clients}\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
                 service imap {{\n  process_limit = {limit}\n}}\n\
                 protocol imap {{\n  mail_max_userip_connections = {limit}\n}}\n"
            );
            (settings, services)
        })
    }

    /// Writes Dovecot's config for `protocol` (`dovecot.conf` for POP3,
    /// `dovecot-imap.conf` for IMAP) with limits for `sessions`, starts it
    /// and waits for its greeting. `extra(port, process limit, client
    /// limit)` gives the settings that go before the databases and the
    /// services that go after them.
    fn start_dovecot(
        dir: &Path,
        ids: &Ids,
        sessions: u32,
        protocol: Protocol,
        name: &'static str,
        extra: impl Fn(u16, u32, u32) -> (String, String),
    ) -> Res<Server> {
        let bin = dovecot_bin();
        let proto = protocol.name();
        if !bin.exists() {
            return Err(format!("{} is not installed (apt-get install dovecot-{proto}d)", bin.display()));
        }
        let mut attempt = 0;
        loop {
            let port = dovecot_port(attempt);
            match Server::try_dovecot(dir, ids, sessions, protocol, name, port, &extra) {
                Err(e) if e.contains("Address already in use") && attempt + 1 < DOVECOT_PORT_ATTEMPTS => attempt += 1,
                r => return r,
            }
        }
    }

    /// One try of [`Server::start_dovecot`] on `port`.
    #[allow(clippy::too_many_arguments)]
    fn try_dovecot(
        dir: &Path,
        ids: &Ids,
        sessions: u32,
        protocol: Protocol,
        name: &'static str,
        port: u16,
        extra: &impl Fn(u16, u32, u32) -> (String, String),
    ) -> Res<Server> {
        let bin = dovecot_bin();
        let proto = protocol.name();
        let d = dir.display();
        let (limit, clients) = (sessions + 100, 4 * sessions + 1000);
        let (settings, services) = extra(port, limit, clients);
        let mut c = format!(
            "protocols = {proto}\n\
             listen = 127.0.0.1\n\
             base_dir = {d}/run\n\
             state_dir = {d}/state\n\
             instance_name = postroom-bench-{port}\n\
             log_path = {d}/dovecot.log\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain\n\
             first_valid_uid = {}\n\
             last_valid_uid = 0\n\
             first_valid_gid = {}\n\
             mail_location = mbox:~/mail:INBOX=~/inbox\n\
             mbox_write_locks = fcntl\n\
             mbox_read_locks = fcntl\n\
             mail_max_userip_connections = {limit}\n\
             default_process_limit = {limit}\n\
             default_client_limit = {clients}\n\
             {settings}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={} gid={} home={d}/home/%u\n}}\n\
             {services}",
            ids.uid.min(100),
            ids.gid.min(1),
            ids.uid,
            ids.gid,
        );
        if !ids.root {
            // Unprivileged: every process runs as this user, without chroot.
            c.push_str(&format!(
                "default_internal_user = {u}\ndefault_internal_group = {g}\ndefault_login_user = {u}\n\
                 service anvil {{\n  chroot =\n}}\nservice {proto}-login {{\n  chroot =\n}}\n",
                u = ids.user,
                g = ids.group
            ));
        }
        let conf = dir.join(if protocol == Protocol::Imap { "dovecot-imap.conf" } else { "dovecot.conf" });
        write(&conf, &c)?;
        let out = dir.join("dovecot.stdout");
        let log = dir.join("dovecot.log");
        let _ = fs::remove_file(&log);
        let f = fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let pid = child.id() as i32;
        let mut s = Server { name, port, child: Some(child), pid, logs: vec![out, log], protocol };
        s.wait_ready()?;
        Ok(s)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Waits until the port accepts a connection and greets.
    fn wait_ready(&mut self) -> Res<()> {
        let start = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("{} exited at start ({st}):\n{}", self.name(), self.log_tail(30)));
                }
            }
            if listens_on(self.pid, self.port) && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                if self.protocol == Protocol::Imap {
                    return imap_greeting(self.name(), addr);
                }
                // The probe is answered and dropped; a real greeting must follow.
                let p = super::client::Pop3::connect(self.name(), self.port, 512)?;
                drop(p);
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!("{} did not listen on {addr}:\n{}", self.name(), self.log_tail(30)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the server's logs.
    pub fn log_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for p in &self.logs {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} (last {n} lines)\n", p.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Log lines that say something went wrong (warnings, errors, panics).
    pub fn log_problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        for p in &self.logs {
            for l in fs::read_to_string(p).unwrap_or_default().lines() {
                let low = l.to_ascii_lowercase();
                if ["warn", "error", "panic", "fatal"].iter().any(|w| low.contains(w))
                    && !low.contains("plain password")
                {
                    v.push(l.to_string());
                }
            }
        }
        v
    }

    /// The server's processes: postroomd, or Dovecot's master and everything it forked.
    pub fn procs(&self) -> Vec<Proc> {
        let all = all_procs();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in all.values() {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut out = Vec::new();
        let mut todo = vec![self.pid];
        while let Some(pid) = todo.pop() {
            if let Some(p) = all.get(&pid) {
                out.push(p.clone());
                if let Some(c) = children.get(&pid) {
                    todo.extend(c);
                }
            }
        }
        out
    }

    /// Resident memory of all its processes.
    pub fn mem(&self) -> Mem {
        let mut m = Mem::default();
        for p in self.procs() {
            if let Some((rss, pss)) = smaps_rollup(p.pid) {
                m.rss_kib += rss;
                m.pss_kib += pss;
                m.procs += 1;
                if p.pid == self.pid {
                    m.main_vmrss_kib = vm_status(p.pid, "VmRSS:").unwrap_or(0);
                    m.threads = vm_status(p.pid, "Threads:").unwrap_or(0);
                }
                *m.by_name.entry(p.comm.clone()).or_default() += 1;
            }
        }
        m
    }

    /// Rss and Pss in KiB summed over the server's processes named `names`.
    #[allow(dead_code)] // The IMAP benchmark's; the POP3 one does not use it.
    pub fn mem_named(&self, names: &[&str]) -> (u64, u64) {
        self.procs()
            .iter()
            .filter(|p| names.contains(&p.comm.as_str()))
            .filter_map(|p| smaps_rollup(p.pid))
            .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2))
    }

    /// Waits until `settled` holds for the server's memory, for up to
    /// `limit` from `since`; then `n` idle sessions did not settle.
    pub fn wait_settled(&self, n: usize, since: Instant, limit: Duration, settled: impl Fn(&Mem) -> bool) -> Res<()> {
        while !settled(&self.mem()) {
            if since.elapsed() > limit {
                return Err(format!("{}: {n} idle sessions did not settle: {:?}", self.name(), self.mem()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits up to 15 s for the server to have no more processes and
    /// threads than `before`: to let sessions see their connections close
    /// before the server stops.
    pub fn wait_sessions_gone(&self, before: &Mem) {
        let start = Instant::now();
        while self.mem().procs > before.procs || self.mem().threads > before.threads {
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU seconds used so far by the server: its live processes, and
    /// (through the master's cutime and cstime) the ones that ended.
    pub fn cpu_secs(&self) -> f64 {
        let tick = clock_tick();
        self.procs()
            .iter()
            .map(|p| {
                let own = p.utime + p.stime;
                let reaped = if p.pid == self.pid { p.cutime + p.cstime } else { 0 };
                (own + reaped) as f64 / tick
            })
            .sum()
    }

    /// Stops the server: SIGTERM, then SIGKILL if it has not exited in
    /// time; then any process it forked that is still there, by PID.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let forked: Vec<Proc> = self.procs().into_iter().filter(|p| p.pid != self.pid).collect();
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > STOP_TIMEOUT => {
                    eprintln!("pop3 bench: {} did not stop on SIGTERM, killing it", self.name());
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Dovecot's children leave with their master; give them a moment,
        // then end by PID those still there (same PID and start time).
        let start = Instant::now();
        loop {
            let left: Vec<&Proc> = forked.iter().filter(|p| p.still_running()).collect();
            if left.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(3) {
                for p in left {
                    // SAFETY: kill(2) on a process this server forked, checked to be the same one.
                    unsafe { libc::kill(p.pid, libc::SIGKILL) };
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads an IMAP greeting from `addr`: a line that starts `* OK`.
fn imap_greeting(name: &str, addr: SocketAddr) -> Res<()> {
    use std::io::Read;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{name}: connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 256];
    while !line.contains(&b'\n') && line.len() < 4096 {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{name}: no IMAP greeting on {addr}: {e}")),
        }
    }
    if line.starts_with(b"* OK") {
        Ok(())
    } else {
        Err(format!("{name}: no IMAP greeting on {addr} (got {:?})", String::from_utf8_lossy(&line)))
    }
}

/// Memory of a server's processes, in KiB.
#[derive(Debug, Clone, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// VmRSS of the main process (postroomd, or Dovecot's master).
    pub main_vmrss_kib: u64,
    /// Threads of the main process.
    pub threads: u64,
    pub procs: u64,
    /// Processes by name (Dovecot: pop3-login, pop3, auth, ...).
    pub by_name: HashMap<String, u64>,
}

impl Mem {
    pub fn count(&self, name: &str) -> u64 {
        self.by_name.get(name).copied().unwrap_or(0)
    }
}

/// One line of /proc/PID/stat.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    pub start: u64,
}

impl Proc {
    fn read(pid: i32) -> Option<Proc> {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = s.find('(')?;
        let close = s.rfind(')')?;
        let comm = s[open + 1..close].to_string();
        // Fields from 3 (state) on.
        let f: Vec<&str> = s[close + 2..].split(' ').collect();
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Proc {
            pid,
            ppid: num(4)? as i32,
            comm,
            utime: num(14)?,
            stime: num(15)?,
            cutime: num(16)?,
            cstime: num(17)?,
            start: num(22)?,
        })
    }

    /// The same process is still there (not ended, not a new one with the same PID).
    fn still_running(&self) -> bool {
        Proc::read(self.pid).is_some_and(|p| p.start == self.start)
    }
}

fn all_procs() -> HashMap<i32, Proc> {
    let mut m = HashMap::new();
    let Ok(rd) = fs::read_dir("/proc") else { return m };
    for e in rd.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            if let Some(p) = Proc::read(pid) {
                m.insert(pid, p);
            }
        }
    }
    m
}

/// Rss and Pss of a process, in KiB.
fn smaps_rollup(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// A number from /proc/PID/status (`VmRSS:` in KiB, `Threads:`).
fn vm_status(pid: i32, name: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_ascii_whitespace().nth(1)?.parse().ok())
}

fn clock_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

//! The transport of postroomd, end to end: the real binary on loopback
//! ports, standalone, under systemd socket activation and under inetd;
//! connection caps, implicit TLS and STLS, signals. What connections that
//! have not logged in may do is in `prelogin.rs`.
//!
//! What a POP3 session does after its greeting is tested with the POP3
//! session itself; here the greeting (and CAPA, STLS, QUIT) only show that
//! a connection reached a session and how it ended.
//!
//! Run as root, the tests give the server `user nobody` (it refuses to serve
//! mail as root), so the switch of user is exercised as well.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const BIN: &str = env!("CARGO_BIN_EXE_postroomd");

/// How long the server may take to start, answer, or stop.
const PATIENCE: Duration = Duration::from_secs(10);

/// The account the server switches to when the tests run as root.
const UNPRIVILEGED: &str = "nobody";

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A temporary directory with a config, a passwd file, and room for the
/// spool, state, TLS files and log; open to the unprivileged user.
struct Setup {
    dir: tempfile::TempDir,
    /// The addresses the server bound (port 0 in the config: the kernel
    /// picks, the server logs them, [`Daemon::wait_started`] reads them).
    pop3: SocketAddr,
    pop3s: SocketAddr,
    imap: SocketAddr,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let dir = tempfile::Builder::new().prefix("postroom-net").tempdir().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let s = Setup { dir, pop3: any, pop3s: any, imap: any };
        for d in ["spool", "mail", "state"] {
            fs::create_dir(s.path(d)).unwrap();
        }
        fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/passwd"), s.path("passwd")).unwrap();
        fs::write(s.path("log"), "").unwrap();
        s.write_config(extra);
        if is_root() {
            // The server reads and writes here after switching to nobody.
            let nobody = lookup_uid(UNPRIVILEGED);
            for entry in fs::read_dir(s.dir.path()).unwrap() {
                std::os::unix::fs::chown(entry.unwrap().path(), Some(nobody.0), Some(nobody.1)).unwrap();
            }
            fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config_text(&self, extra: &str) -> String {
        let user = if is_root() { format!("user {UNPRIVILEGED}\n") } else { String::new() };
        format!(
            "listen pop3 127.0.0.1:0\nlisten pop3s 127.0.0.1:0\nlisten imap 127.0.0.1:0\n\
             tls-cert tls/cert.pem\ntls-key tls/key.pem\npasswd-file passwd\n\
             inbox spool/%u\nmail-dir mail/%u\nstate-dir state\n\
             hostname localhost\nlog {}\nlog-level debug\n{user}{extra}\n",
            self.path("log").display()
        )
    }

    fn write_config(&self, extra: &str) {
        fs::write(self.path("postroom.conf"), self.config_text(extra)).unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    /// Waits until the log holds `what`.
    fn wait_log(&self, what: &str) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(start.elapsed() < PATIENCE, "no `{what}` in the log:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-f").arg(self.path("postroom.conf"));
        c
    }

    /// The certificate the server made, as the only root a client trusts.
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let pem = fs::read(self.path("tls/cert.pem")).expect("the self-signed certificate was written");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn lookup_uid(name: &str) -> (u32, u32) {
    let out = Command::new("getent").args(["passwd", name]).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = line.trim_end().split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// A running postroomd, killed (by its pid) at drop.
struct Daemon {
    child: Child,
    setup: Setup,
}

impl Daemon {
    /// Starts postroomd standalone and waits until it accepts on its pop3 port.
    fn start(extra: &str) -> Daemon {
        let setup = Setup::new(extra);
        let child = setup.command().stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let mut d = Daemon { child, setup };
        d.wait_started();
        d
    }

    /// Waits until the server says it accepts (without connecting, which
    /// would take a place under the connection caps).
    fn wait_started(&mut self) {
        let start = Instant::now();
        while !self.setup.log().contains("server started pid=") {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postroomd exited with {status} at start:\n{}", self.setup.log());
            }
            assert!(start.elapsed() < PATIENCE, "postroomd did not start:\n{}", self.setup.log());
            sleep(Duration::from_millis(20));
        }
        for (protocol, port) in support::server::listening(&self.setup.log()) {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match protocol.as_str() {
                "pop3" => self.setup.pop3 = addr,
                "pop3s" => self.setup.pop3s = addr,
                "imap" => self.setup.imap = addr,
                _ => {}
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the process to exit; None if it does not within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A client connection with line reading.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Client { reader: BufReader::new(s) }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        l
    }

    fn send(&mut self, s: &str) {
        self.reader.get_mut().write_all(s.as_bytes()).unwrap();
    }

    /// True when the server closed the connection (after anything it still said).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

fn greeting_ok(line: &str) {
    assert!(line.starts_with("+OK") && line.ends_with("\r\n"), "greeting {line:?}");
}

/// A TLS client on `sock`, handshake done.
fn tls_client(
    config: Arc<rustls::ClientConfig>,
    sock: TcpStream,
) -> BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    BufReader::new(tls)
}

fn read_line<R: BufRead>(r: &mut R) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

#[test]
fn standalone_server_greets() {
    let d = Daemon::start("");
    let mut c = Client::connect(d.setup.pop3);
    greeting_ok(&c.line());
    c.send("QUIT\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(c.closed());
    d.setup.wait_log("pop3 listening address=");
    d.setup.wait_log("imap listening address=");
    let mut i = Client::connect(d.setup.imap);
    assert!(i.line().starts_with("* OK [CAPABILITY IMAP4rev1 "));
    i.send("a LOGOUT\r\n");
    assert!(i.line().starts_with("* BYE"));
    assert!(i.line().starts_with("a OK"));
    assert!(i.closed());
    let log = d.setup.log();
    if is_root() {
        assert!(log.contains("server switched to user=nobody"), "{log}");
    }
}

#[test]
fn connections_over_the_per_ip_cap_are_refused() {
    let d = Daemon::start("max-connections-per-ip 2");
    let mut a = Client::connect(d.setup.pop3);
    greeting_ok(&a.line());
    let mut b = Client::connect(d.setup.pop3);
    greeting_ok(&b.line());
    let mut c = Client::connect(d.setup.pop3);
    assert_eq!(c.line(), "-ERR [SYS/TEMP] Too many connections, try again later\r\n");
    assert!(c.closed());
    d.setup.wait_log("refused address=127.0.0.1:");
    assert!(d.setup.log().contains("reason=max-connections-per-ip limit=2"));

    // A place is given back when a session ends.
    a.send("QUIT\r\n");
    assert!(a.line().starts_with("+OK"));
    assert!(a.closed());
    let start = Instant::now();
    loop {
        let mut e = Client::connect(d.setup.pop3);
        let l = e.line();
        if l.starts_with("+OK") {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "still refused: {l:?}");
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_over_the_total_cap_are_refused() {
    let d = Daemon::start("max-connections 1");
    // A connection that has not logged in makes room for the next one...
    let mut a = Client::connect(d.setup.pop3);
    greeting_ok(&a.line());
    let mut b = Client::connect(d.setup.pop3);
    greeting_ok(&b.line());
    assert_eq!(a.line(), "-ERR [SYS/TEMP] Too many connections waiting to log in, try again later.\r\n");
    assert!(a.closed());
    d.setup.wait_log("reason=max-unauthenticated-connections limit=1");
    // ...but a logged-in session keeps its place.
    b.send("USER alice\r\nPASS alice\r\n");
    assert_eq!(b.line(), "+OK\r\n");
    assert!(b.line().starts_with("+OK Logged in"));
    let mut c = Client::connect(d.setup.pop3);
    assert_eq!(c.line(), "-ERR [SYS/TEMP] Too many connections, try again later\r\n");
    d.setup.wait_log("reason=max-connections limit=1");
    // Implicit TLS: closed without a word.
    let mut t = Client::connect(d.setup.pop3s);
    assert_eq!(t.line(), "");
}

#[test]
fn implicit_tls_with_the_generated_certificate() {
    let d = Daemon::start("");
    let cert = d.setup.path("tls/cert.pem");
    let key = d.setup.path("tls/key.pem");
    assert!(cert.exists(), "certificate created");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "key is private");
    d.setup.wait_log("tls generated self-signed certificate path=");

    let mut tls = tls_client(d.setup.client_tls(), TcpStream::connect(d.setup.pop3s).unwrap());
    greeting_ok(&read_line(&mut tls));
    tls.get_mut().write_all(b"QUIT\r\n").unwrap();
    tls.get_mut().flush().unwrap();
    assert!(read_line(&mut tls).starts_with("+OK"));
    d.setup.wait_log("tls=yes");
}

#[test]
fn a_failed_handshake_is_logged_and_closed() {
    let d = Daemon::start("");
    let mut c = Client::connect(d.setup.pop3s);
    c.send("USER alice\r\n");
    assert!(c.closed());
    d.setup.wait_log("pop3s tls-failed address=127.0.0.1:");
}

#[test]
fn stls_upgrades_the_connection() {
    let d = Daemon::start("");
    let mut c = Client::connect(d.setup.pop3);
    greeting_ok(&c.line());
    c.send("STLS\r\n");
    assert!(c.line().starts_with("+OK"));
    let sock = c.reader.into_inner();
    let mut tls = tls_client(d.setup.client_tls(), sock);
    tls.get_mut().write_all(b"QUIT\r\n").unwrap();
    tls.get_mut().flush().unwrap();
    assert!(read_line(&mut tls).starts_with("+OK"));
}

#[test]
fn plaintext_pipelined_after_stls_ends_the_session() {
    let d = Daemon::start("");
    let mut c = Client::connect(d.setup.pop3);
    greeting_ok(&c.line());
    c.send("STLS\r\nCAPA\r\n");
    let answer = c.line();
    assert!(answer.starts_with("+OK") || answer.is_empty(), "{answer:?}");
    // Nothing of the CAPA is answered, in plaintext or otherwise.
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("CAPA"), "{rest:?}");
    assert!(!rest.starts_with(b"+OK"), "{rest:?}");
}

#[test]
fn imap_starttls_upgrades_and_forgets_what_came_before() {
    let d = Daemon::start("plaintext-auth never");
    let mut c = Client::connect(d.setup.imap);
    let greeting = c.line();
    assert!(greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"), "{greeting}");
    c.send("a STARTTLS\r\n");
    assert_eq!(c.line(), "a OK Begin TLS negotiation now.\r\n");
    let sock = c.reader.into_inner();
    let mut tls = tls_client(d.setup.client_tls(), sock);
    tls.get_mut().write_all(b"b CAPABILITY\r\n").unwrap();
    tls.get_mut().flush().unwrap();
    let caps = read_line(&mut tls);
    assert!(caps.contains("AUTH=PLAIN") && !caps.contains("STARTTLS") && !caps.contains("LOGINDISABLED"), "{caps}");
    assert!(read_line(&mut tls).starts_with("b OK"));
    tls.get_mut().write_all(b"c LOGIN alice alice\r\n").unwrap();
    tls.get_mut().flush().unwrap();
    assert!(read_line(&mut tls).starts_with("c OK [CAPABILITY "));
}

#[test]
fn imap_plaintext_pipelined_after_starttls_ends_the_session() {
    let d = Daemon::start("");
    let mut c = Client::connect(d.setup.imap);
    assert!(c.line().starts_with("* OK"));
    c.send("a STARTTLS\r\nb LOGIN alice alice\r\n");
    let answer = c.line();
    assert!(answer.starts_with("a OK") || answer.is_empty(), "{answer:?}");
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("b "), "{rest:?}");
    d.setup.wait_log("starttls-injection");
}

#[test]
fn sigterm_exits_zero_promptly() {
    let mut d = Daemon::start("");
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(PATIENCE).expect("postroomd exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(d.setup.log().contains("server stopped"));
}

#[test]
fn sigterm_gives_open_sessions_a_few_seconds() {
    let mut d = Daemon::start("");
    let mut c = Client::connect(d.setup.pop3);
    greeting_ok(&c.line());
    let start = Instant::now();
    d.signal(libc::SIGTERM);
    // No new connections once stopping.
    d.setup.wait_log("server stopping sessions=1");
    sleep(Duration::from_millis(200));
    assert!(TcpStream::connect(d.setup.pop3).is_err() || d.child.try_wait().unwrap().is_some());
    let status = d.wait_exit(PATIENCE).expect("postroomd exits on SIGTERM");
    assert!(status.success(), "{status}");
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(9), "took {took:?}");
    assert!(d.setup.log().contains("server stopped sessions-cut=1"), "{}", d.setup.log());
}

#[test]
fn sighup_reloads_and_keeps_running_sessions() {
    let d = Daemon::start("max-connections-per-ip 5");
    let mut old = Client::connect(d.setup.pop3);
    greeting_ok(&old.line());

    // A config that does not load is logged; the old one stays.
    fs::write(d.setup.path("postroom.conf"), d.setup.config_text("bogus-key 1")).unwrap();
    d.signal(libc::SIGHUP);
    d.setup.wait_log("keeping the old config");
    let mut second = Client::connect(d.setup.pop3);
    greeting_ok(&second.line());
    second.send("QUIT\r\n");
    assert!(second.line().starts_with("+OK"));

    // A good one applies to new connections: one per address now.
    d.setup.write_config("max-connections-per-ip 1");
    d.signal(libc::SIGHUP);
    d.setup.wait_log("server reloaded");
    let start = Instant::now();
    loop {
        let mut c = Client::connect(d.setup.pop3);
        let l = c.line();
        if l.starts_with("-ERR [SYS/TEMP]") {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the new cap is not applied: {l:?}");
        sleep(Duration::from_millis(50));
    }
    // The session that was open all along still answers.
    old.send("CAPA\r\n");
    assert!(old.line().starts_with("+OK"));
    let mut capa = old.line();
    while capa != ".\r\n" {
        assert!(!capa.is_empty(), "connection closed during CAPA");
        capa = old.line();
    }
    old.send("QUIT\r\n");
    assert!(old.line().starts_with("+OK"));
}

#[test]
fn socket_activation_serves_the_passed_socket() {
    let setup = Setup::new("");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("LISTEN_PID=$$ exec \"$0\" \"$@\"").arg(BIN).arg("-f").arg(setup.path("postroom.conf"));
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "pop3").stdin(Stdio::null()).stderr(Stdio::null());
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
    let mut d = Daemon { child, setup };
    d.wait_started();
    let mut c = Client::connect(addr);
    greeting_ok(&c.line());
    d.setup.wait_log("via=systemd");
    // The configured ports were not bound: only the passed socket serves.
    let listening = d.setup.log().lines().filter(|l| l.contains("server listening")).collect::<Vec<_>>().join("\n");
    assert!(listening.contains("via=systemd") && !listening.contains("via=standalone"), "{listening}");
    d.signal(libc::SIGTERM);
    c.send("QUIT\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(d.wait_exit(PATIENCE).expect("exits on SIGTERM").success());
}

#[test]
fn socket_activation_for_another_pid_is_ignored() {
    let setup = Setup::new("");
    let mut cmd = setup.command();
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1").stdin(Stdio::null()).stderr(Stdio::null());
    let child = cmd.spawn().unwrap();
    let mut d = Daemon { child, setup };
    d.wait_started();
    d.setup.wait_log("via=standalone");
    let mut c = Client::connect(d.setup.pop3);
    greeting_ok(&c.line());
}

/// An accepted loopback connection: (the server's end, the client's end).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    (server, client)
}

/// Starts `postroomd -i protocol` as inetd does: the connection on fds 0, 1 and 2.
fn inetd(setup: &Setup, protocol: &str, server_end: TcpStream) -> Child {
    let fd: OwnedFd = server_end.into();
    let mut cmd = setup.command();
    cmd.arg("-i").arg(protocol);
    cmd.stdin(fd.try_clone().unwrap()).stdout(fd.try_clone().unwrap()).stderr(fd);
    cmd.spawn().unwrap()
}

fn wait_child(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > PATIENCE {
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            panic!("postroomd -i did not exit");
        }
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn inetd_session_on_standard_input() {
    // `log stderr` means syslog under inetd: nothing but POP3 may reach the client.
    let setup = Setup::new("");
    let conf = setup.config_text("").replace(&format!("log {}", setup.path("log").display()), "log stderr");
    fs::write(setup.path("postroom.conf"), conf).unwrap();
    let (server, client) = tcp_pair();
    let mut child = inetd(&setup, "pop3", server);
    let mut c = Client { reader: BufReader::new(client) };
    greeting_ok(&c.line());
    c.send("QUIT\r\n");
    assert!(c.line().starts_with("+OK"));
    let mut rest = String::new();
    c.reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the last answer");
    assert!(wait_child(&mut child).success());
}

#[test]
fn inetd_pop3s_does_the_handshake() {
    let setup = Setup::new("");
    let (server, client) = tcp_pair();
    let mut child = inetd(&setup, "pop3s", server);
    // The certificate is made by this first process.
    let start = Instant::now();
    while !setup.path("tls/cert.pem").exists() {
        assert!(start.elapsed() < PATIENCE, "no certificate:\n{}", setup.log());
        sleep(Duration::from_millis(20));
    }
    let mut tls = tls_client(setup.client_tls(), client);
    greeting_ok(&read_line(&mut tls));
    tls.get_mut().write_all(b"QUIT\r\n").unwrap();
    tls.get_mut().flush().unwrap();
    assert!(read_line(&mut tls).starts_with("+OK"));
    assert!(wait_child(&mut child).success());
    let log = setup.log();
    assert!(log.contains("via=inetd") && log.contains("tls=yes"), "{log}");
}

#[test]
fn inetd_refuses_a_terminal_or_file_as_input() {
    let setup = Setup::new("");
    let out = setup.command().args(["-i", "pop3"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input is not a socket"));
}

#[test]
fn inetd_imap_and_imaps_sessions() {
    let setup = Setup::new("");
    let (server, client) = tcp_pair();
    let mut child = inetd(&setup, "imap", server);
    let mut c = Client { reader: BufReader::new(client) };
    assert!(c.line().starts_with("* OK [CAPABILITY IMAP4rev1 "));
    c.send("a LOGIN alice alice\r\nb SELECT INBOX\r\nc LOGOUT\r\n");
    assert!(c.line().starts_with("a OK [CAPABILITY "));
    let mut rest = String::new();
    c.reader.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("* 0 EXISTS\r\n") && rest.contains("b OK [READ-WRITE]"), "{rest}");
    assert!(rest.ends_with("* BYE Logging out\r\nc OK Logout completed.\r\n"), "{rest}");
    assert!(wait_child(&mut child).success());
    let (server, client) = tcp_pair();
    let mut child = inetd(&setup, "imaps", server);
    let start = Instant::now();
    while !setup.path("tls/cert.pem").exists() {
        assert!(start.elapsed() < PATIENCE, "no certificate:\n{}", setup.log());
        sleep(Duration::from_millis(20));
    }
    let mut tls = tls_client(setup.client_tls(), client);
    assert!(read_line(&mut tls).starts_with("* OK [CAPABILITY IMAP4rev1 "));
    tls.get_mut().write_all(b"a LOGOUT\r\n").unwrap();
    tls.get_mut().flush().unwrap();
    assert!(read_line(&mut tls).starts_with("* BYE"));
    assert!(wait_child(&mut child).success());
}

#[test]
fn inetd_lmtp_is_not_served_yet() {
    let setup = Setup::new("");
    let (server, client) = tcp_pair();
    let mut child = inetd(&setup, "lmtp", server);
    let mut c = Client { reader: BufReader::new(client) };
    assert_eq!(c.line(), "");
    assert_eq!(wait_child(&mut child).code(), Some(69));
}

#[test]
fn a_certificate_without_its_key_stops_the_start() {
    let setup = Setup::new("");
    fs::create_dir(setup.path("tls")).unwrap();
    fs::write(setup.path("tls/cert.pem"), "").unwrap();
    let out = setup.command().stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls-key") && stderr.contains("is missing"), "{stderr}");
    assert!(!setup.path("tls/key.pem").exists(), "no key is made up");
}

#[test]
fn root_without_user_is_refused() {
    if !is_root() {
        eprintln!("SKIP: the tests do not run as root");
        return;
    }
    let setup = Setup::new("");
    let conf = setup.config_text("").replace(&format!("user {UNPRIVILEGED}\n"), "");
    fs::write(setup.path("postroom.conf"), conf).unwrap();
    let out = setup.command().stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve mail as root"), "{out:?}");
    assert!(setup.log().contains("refusing to serve mail as root"));
}

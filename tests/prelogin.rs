//! Connections that have not logged in, against the real postroomd on
//! loopback: the login timeout (idle, trickling, in a TLS handshake), the
//! share of the places they may hold (the oldest of them make room for new
//! connections, so users still get in), and the small bounds on what they
//! may send (literals and lines), measured in the server's resident memory.
//!
//! The server listens on port 0 and the tests read the ports it bound from
//! its log. Clients that play several hosts connect from other loopback
//! addresses (127.0.0.2, 127.0.0.3: all of 127/8 reaches `lo`).

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use support::server::{give_to_nobody, Imap, Pop3};
use support::Tmp;

/// How long the server may take to start, answer, or close.
const PATIENCE: Duration = Duration::from_secs(10);

/// The message in alice's INBOX, as stored (LF) and as fetched (CRLF).
const STORED: &str = "From sender@example.org Thu Jan  1 00:00:00 2026\n\
    From: sender@example.org\nSubject: for alice\n\nThe body, byte for byte.\n\n";
const FETCHED: &[u8] = b"From: sender@example.org\r\nSubject: for alice\r\n\r\nThe body, byte for byte.\r\n";

/// A password as long as the authenticator accepts.
fn long_password() -> String {
    "p".repeat(postroom::auth::MAX_PASSWORD_LEN)
}

/// postroomd on loopback port 0, killed by its pid at drop.
struct Daemon {
    child: Child,
    tmp: Tmp,
    imap: SocketAddr,
    imaps: SocketAddr,
    pop3: SocketAddr,
}

/// A temporary tree for postroomd: users alice and bob (password
/// `secret-<user>`) and `long` (the longest password), a message for
/// alice, and `extra` config lines. Returns it and the config file.
fn prepare(extra: &str) -> (Tmp, PathBuf) {
    let tmp = Tmp::new();
    let dir = tmp.dir.path();
    let root = unsafe { libc::geteuid() } == 0;
    let log = dir.join("log");
    let conf = support::write_config(
        dir,
        &["alice", "bob"],
        &format!(
            "listen imap 127.0.0.1:0\nlisten imaps 127.0.0.1:0\nlisten pop3 127.0.0.1:0\n\
             tls-cert tls/cert.pem\ntls-key tls/key.pem\nauth-failure-delay 1s\n\
             log {}\nlog-level debug\n{}{extra}\n",
            log.display(),
            if root { "user nobody\n" } else { "" }
        ),
    );
    let mut pw = fs::read_to_string(dir.join("passwd")).unwrap();
    pw.push_str(&format!("long:{{PLAIN}}{}:::\n", long_password()));
    fs::write(dir.join("passwd"), pw).unwrap();
    for d in ["spool", "mail", "state"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::write(dir.join("spool/alice"), STORED).unwrap();
    fs::write(&log, "").unwrap();
    if root {
        give_to_nobody(dir);
    }
    (tmp, conf)
}

impl Daemon {
    /// postroomd standalone, on the tree [`prepare`] makes.
    fn start(extra: &str) -> Daemon {
        let (tmp, conf) = prepare(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postroomd"));
        cmd.arg("-f").arg(&conf);
        let mut d = Daemon::spawn(tmp, cmd);
        d.imap = d.bound("imap");
        d.imaps = d.bound("imaps");
        d.pop3 = d.bound("pop3");
        d
    }

    /// postroomd under systemd socket activation, serving IMAP on
    /// `listener` (passed as descriptor 3).
    fn activated(extra: &str, listener: TcpListener) -> Daemon {
        let (tmp, conf) = prepare(extra);
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("LISTEN_PID=$$ exec \"$0\" \"$@\"").arg(env!("CARGO_BIN_EXE_postroomd")).arg("-f").arg(&conf);
        cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "imap");
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
        let mut d = Daemon::spawn(tmp, cmd);
        drop(listener);
        d.imap = d.bound("imap");
        d
    }

    fn spawn(tmp: Tmp, mut cmd: Command) -> Daemon {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("postroomd");
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut d = Daemon { child, tmp, imap: none, imaps: none, pop3: none };
        d.wait_log("server started pid=");
        d
    }

    fn log(&self) -> String {
        fs::read_to_string(self.tmp.path("log")).unwrap_or_default()
    }

    /// Waits until the log holds `what`.
    fn wait_log(&mut self, what: &str) {
        let start = Instant::now();
        while !self.log().contains(what) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postroomd exited with {status}:\n{}", self.log());
            }
            assert!(start.elapsed() < PATIENCE, "no `{what}` in the log:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    /// The address the server bound for `protocol`, from its log.
    fn bound(&self, protocol: &str) -> SocketAddr {
        let log = self.log();
        let key = format!("server {protocol} listening address=");
        let at = log.find(&key).unwrap_or_else(|| panic!("no {key} in the log:\n{log}")) + key.len();
        log[at..].split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The server's resident memory, in bytes (VmRSS of /proc/<pid>/status).
    fn rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    fn spool(&self, user: &str) -> PathBuf {
        self.tmp.path("spool").join(user)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A TCP connection from the loopback address `from` to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else { panic!("IPv4 only") };
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(SocketAddrV4::new(from, 0));
        assert_eq!(libc::bind(fd, &local as *const _ as *const libc::sockaddr, len), 0, "bind {from}");
        let remote = sin(to);
        let r = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "connect {to}: {}", std::io::Error::last_os_error());
        stream
    }
}

/// A raw client: lines as they come, and whether the server closed.
struct Raw {
    r: BufReader<TcpStream>,
}

impl Raw {
    fn new(s: TcpStream) -> Raw {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw { r: BufReader::new(s) }
    }

    fn connect(to: SocketAddr) -> Raw {
        Raw::new(TcpStream::connect(to).unwrap())
    }

    fn from(from: Ipv4Addr, to: SocketAddr) -> Raw {
        Raw::new(connect_from(from, to))
    }

    /// One line with its CRLF; "" at the end of the connection.
    #[track_caller]
    fn line(&mut self) -> String {
        let mut l = Vec::new();
        match self.r.read_until(b'\n', &mut l) {
            Ok(_) => String::from_utf8_lossy(&l).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
            Err(e) => panic!("no answer within {PATIENCE:?} ({e}); so far {:?}", String::from_utf8_lossy(&l)),
        }
    }

    fn send(&mut self, s: &[u8]) {
        self.r.get_mut().write_all(s).unwrap();
    }

    /// Asserts that the server closes the connection without another word.
    #[track_caller]
    fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("still open after {PATIENCE:?} ({e})"),
        }
        assert_eq!(String::from_utf8_lossy(&rest), "", "nothing more before the end");
    }
}

/// Fetches alice's message and checks its bytes.
#[track_caller]
fn read_alices_message(c: &mut Imap) {
    c.cmd("SELECT INBOX").assert_ok();
    let r = c.cmd("FETCH 1 BODY[]");
    r.assert_ok();
    let mut want = format!("BODY[] {{{}}}\r\n", FETCHED.len()).into_bytes();
    want.extend_from_slice(FETCHED);
    assert!(
        r.untagged.starts_with(b"* 1 FETCH (") && r.untagged.windows(want.len()).any(|w| w == want),
        "{:?}",
        r.text()
    );
}

const IMAP_EVICTED: &str = "* BYE Too many connections waiting to log in, try again later.\r\n";
const IMAP_LOGIN_TIMEOUT: &str = "* BYE Disconnected: no login in time.\r\n";
const POP3_LOGIN_TIMEOUT: &str = "-ERR Disconnected: no login in time.\r\n";

/// Hosts that connect and never log in fill their share of the places;
/// a user still gets in and reads mail, and logged-in sessions get every
/// place there is.
#[test]
fn connections_that_do_not_log_in_cannot_keep_users_out() {
    let mut d = Daemon::start("max-connections 10\nmax-unauthenticated-connections 6");
    let hosts = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
    // Ten connections, as many as there are places, alternately from two hosts.
    let mut waiting: Vec<Raw> = (0..10)
        .map(|i| {
            let mut c = Raw::from(hosts[i % 2], d.imap);
            let greeting = c.line();
            assert!(greeting.starts_with("* OK [CAPABILITY "), "connection {i}: {greeting:?}");
            c
        })
        .collect();
    // Only six may wait at once: each from the seventh on made room by
    // closing the oldest of the host holding most, and so does the user.
    let mut user = Imap::connect(d.imap.port());
    user.cmd("LOGIN alice secret-alice").assert_ok();
    read_alices_message(&mut user);
    for (i, c) in waiting.iter_mut().enumerate().take(5) {
        assert_eq!(c.line(), IMAP_EVICTED, "connection {i}");
        c.assert_closed();
    }
    for (i, c) in waiting.iter_mut().enumerate().skip(5) {
        c.send(b"n NOOP\r\n");
        assert_eq!(c.line(), "n OK NOOP completed.\r\n", "connection {i} still waits");
    }
    d.wait_log("evicted address=127.0.0.2:");
    assert!(d.log().contains("reason=max-unauthenticated-connections limit=6"), "{}", d.log());

    // Logged-in sessions take every place: the last waiting connections
    // make room for them, one each, and only then is a connection refused.
    let mut sessions = vec![user];
    for n in 2..=10 {
        let user = if n % 2 == 0 { "bob" } else { "alice" };
        sessions.push(Imap::login(d.imap.port(), user));
    }
    for (i, c) in waiting.iter_mut().enumerate().skip(5) {
        assert_eq!(c.line(), IMAP_EVICTED, "connection {i}");
        c.assert_closed();
    }
    d.wait_log("reason=max-connections limit=10");
    let mut refused = Raw::connect(d.imap);
    assert_eq!(refused.line(), "* BYE Too many connections\r\n");
    refused.assert_closed();
    for s in &mut sessions {
        s.cmd("NOOP").assert_ok();
    }
    read_alices_message(&mut sessions[0]);
}

/// Under systemd socket activation the accept loop is the same: a
/// connection that has not logged in makes room for the next.
#[test]
fn under_socket_activation_connections_that_do_not_log_in_make_room() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut d = Daemon::activated("max-connections 2\nmax-unauthenticated-connections 1", listener);
    assert_eq!(d.imap, addr);
    let mut first = Raw::connect(addr);
    assert!(first.line().starts_with("* OK"));
    let mut user = Imap::connect(addr.port());
    assert_eq!(first.line(), IMAP_EVICTED);
    first.assert_closed();
    user.cmd("LOGIN alice secret-alice").assert_ok();
    read_alices_message(&mut user);
    d.wait_log("via=systemd");
    d.wait_log("evicted address=127.0.0.1:");
}

/// Under inetd there is one connection per process and no caps to share,
/// but the login timeout holds.
#[test]
fn under_inetd_the_login_timeout_applies() {
    let (tmp, conf) = prepare("login-timeout 2s");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server_end, _) = l.accept().unwrap();
    let fd: OwnedFd = server_end.into();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postroomd"))
        .arg("-f")
        .arg(&conf)
        .args(["-i", "imap"])
        .stdin(fd.try_clone().unwrap())
        .stdout(fd.try_clone().unwrap())
        .stderr(fd)
        .spawn()
        .unwrap();
    let mut c = Raw::new(client);
    assert!(c.line().starts_with("* OK [CAPABILITY "));
    assert_eq!(c.line(), IMAP_LOGIN_TIMEOUT);
    c.assert_closed();
    assert!(start.elapsed() >= Duration::from_secs(2), "closed after {:?}", start.elapsed());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = fs::read_to_string(tmp.path("log")).unwrap();
    assert!(log.contains("imap closed reason=login-timeout limit=2s"), "{log}");
}

/// A connection that does not log in is closed after the login timeout,
/// whatever it is waiting for; logged-in sessions idle longer than that
/// stay open.
#[test]
fn connections_that_do_not_log_in_are_closed_after_the_login_timeout() {
    let mut d = Daemon::start("login-timeout 2s");
    let mut imap_user = Imap::login(d.imap.port(), "alice");
    let mut pop3_user = Pop3::login(d.pop3.port(), "bob");
    let start = Instant::now();
    let mut imap = Raw::connect(d.imap);
    assert!(imap.line().starts_with("* OK"));
    let mut pop3 = Raw::connect(d.pop3);
    assert!(pop3.line().starts_with("+OK"));
    // An implicit-TLS connection that never starts its handshake, and one
    // that asks for STARTTLS and then stops.
    let mut imaps = Raw::connect(d.imaps);
    let mut starttls = Raw::connect(d.imap);
    assert!(starttls.line().starts_with("* OK"));
    starttls.send(b"s STARTTLS\r\n");
    assert_eq!(starttls.line(), "s OK Begin TLS negotiation now.\r\n");

    assert_eq!(imap.line(), IMAP_LOGIN_TIMEOUT);
    imap.assert_closed();
    assert!(start.elapsed() >= Duration::from_secs(2), "closed after {:?}", start.elapsed());
    assert_eq!(pop3.line(), POP3_LOGIN_TIMEOUT);
    pop3.assert_closed();
    imaps.assert_closed();
    starttls.assert_closed();

    // The logged-in sessions have been idle longer than the login timeout.
    imap_user.cmd("NOOP").assert_ok();
    read_alices_message(&mut imap_user);
    assert_eq!(pop3_user.cmd("NOOP"), "+OK");
    d.wait_log("imap closed reason=login-timeout limit=2s");
    d.wait_log("pop3 closed reason=login-timeout limit=2s");
    d.wait_log("imaps tls-failed");
}

/// Sends `prefix`, then one byte every quarter second, never a line end,
/// until the server closes the connection (or 20 seconds pass).
fn trickle(stream: &TcpStream, prefix: &[u8]) -> thread::JoinHandle<()> {
    let mut w = stream.try_clone().unwrap();
    let prefix = prefix.to_vec();
    thread::spawn(move || {
        for &b in prefix.iter().chain(std::iter::repeat_n(&b'x', 80)) {
            if w.write_all(&[b]).is_err() {
                return;
            }
            sleep(Duration::from_millis(250));
        }
    })
}

/// A client that sends a command a byte at a time, never idle for long
/// but never finishing the line, is closed at the login timeout.
#[test]
fn a_command_trickled_before_login_is_cut_off() {
    let d = Daemon::start("login-timeout 2s");
    let start = Instant::now();
    let mut imap = Raw::connect(d.imap);
    assert!(imap.line().starts_with("* OK"));
    let imap_writer = trickle(imap.r.get_ref(), b"a LOGIN alice ");
    let mut pop3 = Raw::connect(d.pop3);
    assert!(pop3.line().starts_with("+OK"));
    let pop3_writer = trickle(pop3.r.get_ref(), b"USER alice");
    assert_eq!(imap.line(), IMAP_LOGIN_TIMEOUT);
    imap.assert_closed();
    assert_eq!(pop3.line(), POP3_LOGIN_TIMEOUT);
    pop3.assert_closed();
    assert!(start.elapsed() >= Duration::from_secs(2), "closed after {:?}", start.elapsed());
    imap_writer.join().unwrap();
    pop3_writer.join().unwrap();
}

/// `a LOGIN {32 MiB+}` before login: the server says BYE at the
/// announcement and holds none of the data, however much is sent.
#[test]
fn a_large_literal_before_login_is_refused_and_not_held() {
    const SIZE: usize = 32 << 20;
    let d = Daemon::start("");
    let mut clients: Vec<Raw> = (0..4)
        .map(|_| {
            let mut c = Raw::connect(d.imap);
            assert!(c.line().starts_with("* OK"));
            c
        })
        .collect();
    let before = d.rss();
    let writers: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut w = c.r.get_ref().try_clone().unwrap();
            thread::spawn(move || {
                let mut out = format!("a LOGIN {{{SIZE}+}}\r\n").into_bytes();
                out.resize(out.len() + SIZE, b'x');
                // The server may close the connection while this is sent.
                let _ = w.write_all(&out);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let grown = d.rss().saturating_sub(before);
    assert!(grown < SIZE as u64, "the server grew by {grown} bytes for 4 literals of {SIZE}");
    for c in &mut clients {
        assert_eq!(c.line(), "* BYE Literal too large.\r\n");
        c.assert_closed();
    }
}

/// A synchronizing literal too big for a login gets NO before the client
/// sends it, and the session goes on; a line too long for a login, in
/// POP3, gets an error and the session goes on.
#[test]
fn commands_too_big_for_a_login_are_refused_before_login() {
    let d = Daemon::start("");
    let mut c = Raw::connect(d.imap);
    assert!(c.line().starts_with("* OK"));
    c.send(b"a LOGIN {5000}\r\n");
    assert_eq!(c.line(), "a NO [TOOBIG] Literal of 5000 bytes is larger than the limit of 1024 before login.\r\n");
    c.send(b"b LOGIN {5}\r\n");
    assert_eq!(c.line(), "+ Ready for literal data\r\n");
    c.send(b"alice {12}\r\n");
    assert_eq!(c.line(), "+ Ready for literal data\r\n");
    c.send(b"secret-alice\r\n");
    assert!(c.line().starts_with("b OK [CAPABILITY "));

    let mut p = Raw::connect(d.pop3);
    assert!(p.line().starts_with("+OK"));
    p.send(format!("USER {}\r\n", "x".repeat(5000)).as_bytes());
    assert_eq!(p.line(), "-ERR Line too long\r\n");
    p.send(b"USER alice\r\nPASS secret-alice\r\n");
    assert_eq!(p.line(), "+OK\r\n");
    assert_eq!(p.line(), "+OK Logged in.\r\n");
}

/// The bounds before login still leave room for the longest password the
/// authenticator accepts, by every way of logging in.
#[test]
fn the_longest_password_still_fits_before_login() {
    let d = Daemon::start("");
    let pw = long_password();
    let plain = postroom::auth::sasl::encode_b64(format!("\0long\0{pw}").as_bytes());

    let mut p = Pop3::connect(d.pop3.port());
    assert_eq!(p.cmd(&format!("AUTH PLAIN {plain}")), "+OK Logged in.");
    assert!(p.cmd("QUIT").starts_with("+OK"), "the maildrop is let go");
    let mut p = Pop3::connect(d.pop3.port());
    assert_eq!(p.cmd("USER long"), "+OK");
    assert_eq!(p.cmd(&format!("PASS {pw}")), "+OK Logged in.");

    let mut c = Imap::connect(d.imap.port());
    c.cmd(&format!("AUTHENTICATE PLAIN {plain}")).assert_ok();
    let mut c = Imap::connect(d.imap.port());
    let tag = c.next_tag();
    c.send(format!("{tag} LOGIN long {{{}+}}\r\n{pw}\r\n", pw.len()).as_bytes());
    c.read_until_tagged(&tag).assert_ok();
}

/// After login a large APPEND is taken whole, synchronizing or not, and
/// lands on disk byte for byte.
#[test]
fn after_login_a_large_append_still_works() {
    let d = Daemon::start("");
    let mut body = b"From: alice@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while body.len() < 12 << 20 {
        body.extend_from_slice(
            format!("line {i} of a large message, which a slow link may take a while to send\r\n").as_bytes(),
        );
        i += 1;
    }
    let mut c = Imap::login(d.imap.port(), "bob");
    c.append("INBOX", "", &body).assert_ok();
    let tag = c.next_tag();
    c.send(format!("{tag} APPEND INBOX {{{}+}}\r\n", body.len()).as_bytes());
    c.send(&body);
    c.send(b"\r\n");
    c.read_until_tagged(&tag).assert_ok();
    c.cmd("LOGOUT").assert_ok();
    let got = support::contents(&support::open(&d.spool("bob")));
    assert_eq!(got.len(), 2);
    for (uid, bytes) in got {
        assert!(bytes == body, "message {uid}: {} bytes, not the {} appended", bytes.len(), body.len());
    }
}

//! A real `postroomd` on 127.0.0.1 ephemeral ports, and a small POP3
//! client that speaks the wire protocol byte for byte.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Makes `dir` and everything in it nobody's, and lets nobody in.
pub fn give_to_nobody(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let nobody = postroom::auth::passwd::system_account("nobody").unwrap().expect("user nobody");
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), uid, gid);
            }
        }
    }
    walk(dir, nobody.uid.unwrap(), nobody.gid.unwrap());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub pop3: u16,
    pub pop3s: u16,
    pub imap: u16,
    pub imaps: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts postroomd with users (password "secret-<user>", PLAIN hashes)
    /// and extra config lines. Every listener is on 127.0.0.1 port 0: the
    /// server binds what the kernel gives it and logs the address, which
    /// is read back here (no port is picked and released before).
    pub fn start(dir: &Path, users: &[&str], extra: &str) -> Server {
        // postroomd refuses to serve mail as root: under root (CI) it runs
        // as nobody, and the tree it works in becomes nobody's.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root { "user nobody\n" } else { "" };
        let level = if extra.contains("log-level") { "" } else { "log-level debug\n" };
        let conf = super::write_config(
            dir,
            users,
            &format!(
                "listen pop3 127.0.0.1:0\nlisten pop3s 127.0.0.1:0\nlisten imap 127.0.0.1:0\nlisten imaps 127.0.0.1:0\ntls-cert tls/cert.pem\ntls-key tls/key.pem\nauth-failure-delay 1s\n{level}{user}{extra}"
            ),
        );
        if root {
            give_to_nobody(dir);
        }
        let log = dir.join("postroomd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_postroomd"))
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start postroomd");
        let mut s = Server { child, dir: dir.to_path_buf(), conf, pop3: 0, pop3s: 0, imap: 0, imaps: 0, log };
        let ports = s.bound_ports();
        let port = |p: &str| *ports.iter().find(|(q, _)| q == p).map(|(_, n)| n).expect("listener in the log");
        (s.pop3, s.pop3s, s.imap, s.imaps) = (port("pop3"), port("pop3s"), port("imap"), port("imaps"));
        s
    }

    /// Waits for `server started` in the log and returns the
    /// `server listening` lines before it as (protocol, port).
    pub fn bound_ports(&mut self) -> Vec<(String, u16)> {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains("server started") {
                return listening(&text);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postroomd exited with {status}: {text}");
            }
            assert!(start.elapsed() < Duration::from_secs(20), "postroomd did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pop3(&self) -> Pop3 {
        Pop3::connect(self.pop3)
    }

    /// A logged-in IMAP session.
    pub fn imap(&self, user: &str) -> Imap {
        Imap::login(self.imap, user)
    }

    /// The mail directory (other folders) of a user.
    pub fn mail_dir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user)
    }

    pub fn spool(&self, user: &str) -> PathBuf {
        self.dir.join("spool").join(user)
    }

    /// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
    pub fn vm_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resets the server's peak resident size (VmHWM) to its current
    /// one (proc(5), clear_refs: 5), so that VmHWM read later is the peak
    /// of what happened in between.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").expect("reset VmHWM");
    }
}

/// A connection to 127.0.0.1:`port` whose receive buffer is `rcvbuf`
/// bytes, set before connecting so that the window is small from the
/// first byte: a client that stops reading stalls the server's writes
/// after little data, as a client on a bad link does.
pub fn connect_small(port: u16, rcvbuf: i32) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; the structs are
    // plain data that outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }
}

/// The `server listening protocol=P address=A:PORT` lines of a log.
pub fn listening(log: &str) -> Vec<(String, u16)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("server listening protocol=")? + "server listening protocol=".len()..];
            let (proto, rest) = rest.split_once(' ')?;
            let addr = rest.strip_prefix("address=")?.split(' ').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            Some((proto.to_string(), port))
        })
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A POP3 client over any stream.
pub struct Pop3<S: Read + Write = TcpStream> {
    pub r: BufReader<S>,
}

impl Pop3<TcpStream> {
    pub fn connect(port: u16) -> Pop3 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut p = Pop3 { r: BufReader::new(s) };
        let greeting = p.line();
        assert!(greeting.starts_with("+OK"), "greeting {greeting:?}");
        p
    }

    /// Logs in as `user` with its test password.
    pub fn login(port: u16, user: &str) -> Pop3 {
        let mut p = Pop3::connect(port);
        assert_eq!(p.cmd(&format!("USER {user}")), "+OK");
        let r = p.cmd(&format!("PASS secret-{user}"));
        assert!(r.starts_with("+OK"), "login {user}: {r}");
        p
    }
}

impl<S: Read + Write> Pop3<S> {
    pub fn new(stream: S) -> Self {
        Pop3 { r: BufReader::new(stream) }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.r.get_mut().write_all(raw).unwrap();
    }

    /// One response line, without CRLF; empty at EOF.
    pub fn line(&mut self) -> String {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l).unwrap();
        assert!(l.is_empty() || l.ends_with(b"\r\n"), "line without CRLF: {:?}", String::from_utf8_lossy(&l));
        String::from_utf8_lossy(&l).trim_end_matches("\r\n").to_string()
    }

    pub fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes());
        self.line()
    }

    /// A multi-line response: the status line, and the data un-stuffed
    /// (CRLF kept, the final "." removed).
    pub fn multi(&mut self, c: &str) -> (String, Vec<u8>) {
        let status = self.cmd(c);
        if !status.starts_with("+OK") {
            return (status, Vec::new());
        }
        (status, self.data())
    }

    pub fn data(&mut self) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let mut l = Vec::new();
            let n = self.r.read_until(b'\n', &mut l).unwrap();
            assert!(n > 0, "connection closed inside a multi-line response");
            assert!(l.ends_with(b"\r\n"), "data line without CRLF");
            if l == b".\r\n" {
                return data;
            }
            if l.starts_with(b".") {
                l.remove(0);
            }
            data.extend_from_slice(&l);
        }
    }
}

/// An IMAP client that keeps bytes exact: responses come back as raw
/// bytes with literals inline, up to and including the tagged line.
pub struct Imap<S: Read + Write = TcpStream> {
    pub r: BufReader<S>,
    n: u32,
}

/// One command's response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Everything before the tagged line, raw.
    pub untagged: Vec<u8>,
    /// The tagged line without tag and CRLF: "OK ...", "NO ...", "BAD ...".
    pub status: String,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.untagged).into_owned()
    }

    /// Untagged lines (literals inline), without CRLF.
    pub fn lines(&self) -> Vec<String> {
        self.text().split("\r\n").filter(|l| !l.is_empty()).map(String::from).collect()
    }

    pub fn ok(&self) -> bool {
        self.status.starts_with("OK")
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "expected OK, got {:?} after {:?}", self.status, self.text());
        self
    }
}

impl Imap<TcpStream> {
    pub fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Imap { r: BufReader::new(s), n: 0 };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "greeting {greeting:?}");
        c
    }

    /// Logs in as `user` with its test password.
    pub fn login(port: u16, user: &str) -> Imap {
        let mut c = Imap::connect(port);
        c.cmd(&format!("LOGIN {user} secret-{user}")).assert_ok();
        c
    }
}

impl<S: Read + Write> Imap<S> {
    pub fn new(stream: S) -> Self {
        Imap { r: BufReader::new(stream), n: 0 }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.r.get_mut().write_all(raw).unwrap();
    }

    /// One line with its CRLF removed; empty at EOF.
    pub fn line(&mut self) -> String {
        String::from_utf8_lossy(&self.raw_line()).trim_end_matches("\r\n").to_string()
    }

    fn raw_line(&mut self) -> Vec<u8> {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l).unwrap();
        assert!(l.is_empty() || l.ends_with(b"\r\n"), "line without CRLF: {:?}", String::from_utf8_lossy(&l));
        l
    }

    /// Reads one response line with any literals it announces, raw.
    pub fn response_line(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let l = self.raw_line();
            assert!(!l.is_empty(), "connection closed; so far: {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&l);
            let body = &l[..l.len() - 2];
            let Some(open) = body.iter().rposition(|&b| b == b'{') else { return out };
            if !body.ends_with(b"}") {
                return out;
            }
            let Ok(n) = std::str::from_utf8(&body[open + 1..body.len() - 1]).unwrap_or("x").parse::<usize>() else {
                return out;
            };
            let mut lit = vec![0u8; n];
            self.r.read_exact(&mut lit).unwrap();
            out.extend_from_slice(&lit);
        }
    }

    /// Reads until the line tagged `tag`.
    pub fn read_until_tagged(&mut self, tag: &str) -> Resp {
        let mut untagged = Vec::new();
        let prefix = format!("{tag} ");
        loop {
            let l = self.response_line();
            if l.starts_with(prefix.as_bytes()) {
                let status = String::from_utf8_lossy(&l[prefix.len()..]).trim_end_matches("\r\n").to_string();
                return Resp { untagged, status };
            }
            untagged.extend_from_slice(&l);
        }
    }

    pub fn next_tag(&mut self) -> String {
        self.n += 1;
        format!("t{}", self.n)
    }

    /// Sends a command (a tag is added) and reads its whole response.
    pub fn cmd(&mut self, c: &str) -> Resp {
        let tag = self.next_tag();
        self.send(format!("{tag} {c}\r\n").as_bytes());
        self.read_until_tagged(&tag)
    }

    /// APPEND with a synchronizing literal, waiting for the continuation.
    pub fn append(&mut self, mailbox: &str, flags: &str, message: &[u8]) -> Resp {
        let tag = self.next_tag();
        let fl = if flags.is_empty() { String::new() } else { format!(" ({flags})") };
        self.send(format!("{tag} APPEND {mailbox}{fl} {{{}}}\r\n", message.len()).as_bytes());
        let cont = self.line();
        if !cont.starts_with('+') {
            return Resp { untagged: Vec::new(), status: cont.trim_start_matches(&format!("{tag} ")).to_string() };
        }
        self.send(message);
        self.send(b"\r\n");
        self.read_until_tagged(&tag)
    }
}

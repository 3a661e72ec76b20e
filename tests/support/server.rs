//! A real `postroomd` on 127.0.0.1 ephemeral ports, and a small POP3
//! client that speaks the wire protocol byte for byte.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub pop3: u16,
    pub pop3s: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts postroomd with users (password "secret-<user>", PLAIN hashes)
    /// and extra config lines.
    pub fn start(dir: &Path, users: &[&str], extra: &str) -> Server {
        let pop3 = free_port();
        let pop3s = free_port();
        // postroomd refuses to serve mail as root: under root (CI) it runs
        // as nobody, and the tree it works in becomes nobody's.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root { "user nobody\n" } else { "" };
        let conf = super::write_config(
            dir,
            users,
            &format!(
                "listen pop3 127.0.0.1:{pop3}\nlisten pop3s 127.0.0.1:{pop3s}\ntls-cert tls/cert.pem\ntls-key tls/key.pem\nauth-failure-delay 1s\nlog-level debug\n{user}{extra}"
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
        let s = Server { child, dir: dir.to_path_buf(), conf, pop3, pop3s, log };
        s.wait_ready(pop3);
        s.wait_ready(pop3s);
        s
    }

    fn wait_ready(&self, port: u16) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "postroomd did not listen: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pop3(&self) -> Pop3 {
        Pop3::connect(self.pop3)
    }

    pub fn spool(&self, user: &str) -> PathBuf {
        self.dir.join("spool").join(user)
    }
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

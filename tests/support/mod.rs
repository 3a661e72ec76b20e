//! Shared helpers of the integration tests: temporary mail trees, message
//! corpora, mbox inspection and a seeded random source; `server` runs
//! postroomd, `clients` the real mail clients against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod clients;
pub mod server;
pub mod soak;

use postroom::store::{Mailbox, Options};

/// A test that cannot run on this machine (a client program or a
/// privilege it needs is missing): on a developer's machine it says so
/// and passes; under `CI=true`, where `.ci/run` installed everything, it
/// fails.
#[track_caller]
pub fn cannot_run(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test cannot run under CI: {why}");
    }
    println!("SKIP: {why}");
}

/// A temporary directory removed at drop.
pub struct Tmp {
    pub dir: tempfile::TempDir,
}

impl Tmp {
    pub fn new() -> Tmp {
        Tmp { dir: tempfile::Builder::new().prefix("postroom-test").tempdir().expect("tempdir") }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn opts() -> Options {
    let mut o = Options::default();
    o.lock.timeout = std::time::Duration::from_secs(20);
    o
}

pub fn open(path: &Path) -> Mailbox {
    Mailbox::open(path, &opts(), true).expect("open mailbox")
}

/// Every message as a client sees it, with its UID.
pub fn contents(mb: &Mailbox) -> Vec<(u32, Vec<u8>)> {
    (0..mb.len()).map(|i| (mb.messages()[i].uid, mb.message_bytes(i).expect("read message"))).collect()
}

/// Bare LF to CRLF: what a client gets for content stored with LF.
pub fn crlf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 16);
    for (i, &b) in s.iter().enumerate() {
        if b == b'\n' && (i == 0 || s[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A corpus of awkward messages, CRLF line ends, none with state headers.
pub fn corpus() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"From: a@example.org\r\nSubject: plain\r\n\r\nHello.\r\n".to_vec(),
        b"From: b@example.org\r\nSubject: from lines\r\n\r\nFrom me\r\n>From you\r\n>>From x\r\nFrom\r\n From indented\r\n".to_vec(),
        b"Subject: no trailing newline\r\n\r\nlast line".to_vec(),
        b"".to_vec(),
        b"Subject: header only\r\n".to_vec(),
        b"Subject: header only, no newline".to_vec(),
        b"Subject: empty body\r\n\r\n".to_vec(),
        b"Subject: 8bit \xc3\xa9t\xc3\xa9\r\n\r\n\xff\xfe\x00\x01 binary-ish \x80\r\n\r\n\r\n".to_vec(),
        b"Subject: bare CR\r\n\r\nline\rwith CR\r\n".to_vec(),
        b"\r\nbody without header\r\n".to_vec(),
        b"Subject: looks like a separator\r\n\r\nFrom someone@example.org Thu Nov 26 16:01:55 2026\r\nnext\r\n".to_vec(),
    ];
    let mut mime = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\nSubject: mime\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\ntext\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    for i in 0..200 {
        mime.extend_from_slice(
            format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0{i:04}\r\n")
                .as_bytes(),
        );
    }
    mime.extend_from_slice(b"--XX--\r\n");
    v.push(mime);
    v
}

/// A deterministic test message for `id`, CRLF line ends, with awkward
/// lines (From, >From, 8-bit) and a size that varies with the id.
pub fn message_for(id: &str) -> Vec<u8> {
    let n = id.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let mut m = format!(
        "From: sender-{n}@example.org\r\nTo: alice@example.org\r\nSubject: test {id}\r\nMessage-ID: <{id}@postroom.test>\r\n\r\n"
    )
    .into_bytes();
    for i in 0..(n % 40 + 1) {
        match (n + i) % 7 {
            0 => m.extend_from_slice(b"From the start of a line\r\n"),
            1 => m.extend_from_slice(b">From quoted already\r\n"),
            2 => m.extend_from_slice("caf\u{e9} 8-bit line \u{2713}\r\n".as_bytes()),
            3 => m.extend_from_slice(b"\r\n"),
            _ => {
                m.extend_from_slice(format!("line {i} of {id}, some ordinary text to fill the body up\r\n").as_bytes())
            }
        }
    }
    m
}

/// A message of about `bytes` octets, CRLF line ends, with Message-ID
/// `<id@postroom.test>`: lines of every length up to RFC 5322's 998, some
/// starting with "." (byte-stuffed by POP3), "From " and ">From " (quoted
/// in the mbox), and a NUL-free mix of 8-bit text.
pub fn large_message(id: &str, bytes: usize) -> Vec<u8> {
    let mut m = format!(
        "From: big@example.org\r\nTo: alice@example.org\r\nSubject: large {id}\r\nMessage-ID: <{id}@postroom.test>\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0usize;
    while m.len() < bytes {
        let start: &[u8] = match i % 13 {
            0 => b".",
            3 => b"From ",
            5 => b">From ",
            7 => b"..",
            _ => b"",
        };
        m.extend_from_slice(start);
        let len = (i * 37) % (999 - start.len());
        m.extend((0..len).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789 \xe9"[(i + j) % 38]));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

/// What POP3 TOP sends of `m` (CRLF line ends): the header, the blank
/// line and the first `lines` lines of the body.
pub fn top_of(m: &[u8], lines: usize) -> Vec<u8> {
    let split = m.windows(4).position(|w| w == b"\r\n\r\n").map_or(m.len(), |p| p + 4);
    let mut out = m[..split].to_vec();
    for l in m[split..].split_inclusive(|&b| b == b'\n').take(lines) {
        out.extend_from_slice(l);
    }
    out
}

/// Appends a message to `mbox` as Postfix local does: the dotlock
/// `<mbox>.lock` (made with O_EXCL), then a POSIX fcntl write lock on the
/// file, then a `From ` line, `content` (LF line ends, no line starting
/// with `From `) and the blank line that separates it, fsync, unlock.
/// Gives up when a lock is not had within `wait`.
pub fn mta_append(mbox: &Path, sender: &str, content: &[u8], wait: std::time::Duration) -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + wait;
    let mut dot = mbox.as_os_str().to_owned();
    dot.push(".lock");
    let dot = PathBuf::from(dot);
    loop {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&dot) {
            Ok(mut f) => {
                writeln!(f, "{}", std::process::id()).unwrap();
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(format!("dotlock {}: {e}", dot.display())),
        }
    }
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().append(true).open(mbox).map_err(|e| e.to_string())?;
        // SAFETY: flock is plain data; fcntl reads the struct we pass.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        loop {
            if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("fcntl write lock on {}: still held by another after {wait:?}", mbox.display()));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut data = postroom::store::from_line::format(sender, 1_700_000_000).into_bytes();
        data.push(b'\n');
        data.extend_from_slice(content);
        data.push(b'\n');
        f.write_all(&data).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        fl.l_type = libc::F_UNLCK as libc::c_short;
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
        Ok(())
    })();
    std::fs::remove_file(&dot).map_err(|e| e.to_string())?;
    result
}

/// The Message-ID of a message made by [`message_for`].
pub fn id_of(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let start = text.find("Message-ID: <")? + "Message-ID: <".len();
    let end = text[start..].find("@postroom.test>")?;
    Some(text[start..start + end].to_string())
}

/// Writes a config and passwd-file for `users` into `dir`; returns the config path.
pub fn write_config(dir: &Path, users: &[&str], extra: &str) -> PathBuf {
    let mut pw = String::new();
    for u in users {
        pw.push_str(&format!("{u}:{{PLAIN}}secret-{u}:::\n"));
    }
    std::fs::write(dir.join("passwd"), pw).unwrap();
    let conf = dir.join("postroom.conf");
    std::fs::write(
        &conf,
        format!(
            "passwd-file passwd\ninbox spool/%u\nmail-dir mail/%u\nstate-dir state\nhostname test.example\n{extra}"
        ),
    )
    .unwrap();
    conf
}

/// A small deterministic random source (xorshift64*), seeded.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

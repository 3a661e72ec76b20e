//! Mail for the server benchmarks: mbox files of a given number of
//! generated messages (benches/mboxgen), and an outside delivery as an MTA
//! makes it.
//!
//! The IMAP benchmark writes a mailbox with its state headers already in
//! place (`X-IMAPbase` on the first message; `Status`, `X-Status`,
//! `X-Keywords` and `X-UID` on each, as UW-IMAP and Dovecot write them), so
//! both servers find UIDs and flags in the file and neither has to rewrite
//! it when it first opens it. The POP3 benchmark writes them as an MTA
//! appends to a spool, without.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postroom::store::state::{self, Base, Block};
use postroom::store::{from_line, Mailbox, Options};

use super::Res;
use crate::mboxgen;

/// How long an outside delivery waits for the mailbox's locks.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `messages` generated messages to `path` (From_ line, with
/// `with_state` the state headers, content, blank line) and has postroom
/// open the file once, which otherwise writes its state headers; then
/// checks that postroom reads them all back without anything to write.
/// Returns the file's size.
pub fn write_mbox(path: &Path, messages: u32, seed: u64, with_state: bool) -> Res<u64> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut rng = mboxgen::Rng::new(seed);
    let mut w = BufWriter::with_capacity(4 << 20, File::create(path).map_err(err)?);
    let mut content = Vec::with_capacity(1 << 20);
    let mut date: i64 = 1_735_689_600 + 3600 * 7;
    let base = Base {
        uidvalidity: mboxgen::UIDVALIDITY,
        uidnext: messages + 1,
        keywords: mboxgen::KEYWORDS.iter().map(|k| k.to_string()).collect(),
    };
    for n in 1..=messages {
        date += rng.range(20, 1200) as i64;
        content.clear();
        let m = mboxgen::message(&mut rng, n as u64, date, &mut content);
        let from = from_line::format(&m.sender, m.date);
        let block = if with_state {
            state::render(
                &Block { base: (n == 1).then_some(&base), uid: n, flags: m.flags, keywords: &m.keywords },
                None,
            )
            .ok_or("a state block did not render")?
        } else {
            Vec::new()
        };
        for part in [from.as_bytes(), b"\n", &block, &content, b"\n"] {
            w.write_all(part).map_err(err)?;
        }
    }
    w.flush().map_err(err)?;
    drop(w);
    let opts = Options { fsync: false, ..Options::default() };
    let mb = Mailbox::open(path, &opts, false).map_err(|e| format!("postroom opening {}: {e}", path.display()))?;
    if mb.len() != messages as usize || mb.needs_sync() {
        return Err(format!("{}: postroom sees {} messages, {messages} written", path.display(), mb.len()));
    }
    drop(mb);
    Ok(fs::metadata(path).map_err(err)?.len())
}

/// Writes an mbox of one large message of about `bytes` octets on disk
/// (LF line ends; text lines of every length up to 998, some starting
/// with `From ` (stored as `>From `, mboxrd) or a dot, which the servers
/// must unquote and byte-stuff), with `with_state` its state headers, and
/// has postroom open it once, as [`write_mbox`] does. Returns the file's
/// size.
pub fn write_large(path: &Path, bytes: u64, with_state: bool) -> Res<u64> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut w = BufWriter::with_capacity(4 << 20, File::create(path).map_err(err)?);
    let date: i64 = 1_735_689_600;
    w.write_all(from_line::format("big@example.org", date).as_bytes()).map_err(err)?;
    w.write_all(b"\n").map_err(err)?;
    if with_state {
        let base = Base { uidvalidity: mboxgen::UIDVALIDITY, uidnext: 2, keywords: Vec::new() };
        let block = state::render(&Block { base: Some(&base), uid: 1, flags: state::Flags::SEEN, keywords: &[] }, None)
            .ok_or("a state block did not render")?;
        w.write_all(&block).map_err(err)?;
    }
    w.write_all(
        b"From: Big Sender <big@example.org>\nTo: alice@example.org\nSubject: a large message\n\
          Message-ID: <large@postroom.bench>\nDate: Wed, 1 Jan 2025 00:00:00 +0000\n\n",
    )
    .map_err(err)?;
    let mut written = 0u64;
    let mut i = 0u64;
    let mut line = Vec::with_capacity(1024);
    while written < bytes {
        line.clear();
        match i % 61 {
            0 => line.extend_from_slice(b">From the start of a line, quoted on disk"),
            7 => line.extend_from_slice(b"."),
            _ => {}
        }
        let len = (i * 37 % 998) as usize;
        line.extend((0..len).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789 "[(i as usize + j) % 37]));
        line.push(b'\n');
        w.write_all(&line).map_err(err)?;
        written += line.len() as u64;
        i += 1;
    }
    w.write_all(b"\n").map_err(err)?;
    w.flush().map_err(err)?;
    drop(w);
    let opts = Options { fsync: false, ..Options::default() };
    let mb = Mailbox::open(path, &opts, false).map_err(|e| format!("postroom opening {}: {e}", path.display()))?;
    if mb.len() != 1 || (with_state && mb.needs_sync()) {
        return Err(format!("{}: postroom sees {} messages, 1 written", path.display(), mb.len()));
    }
    drop(mb);
    Ok(fs::metadata(path).map_err(err)?.len())
}

/// Reads `path` once to its end, so that it is in the page cache.
pub fn read_through(path: &Path) -> Res<u64> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Size and modification time of a file, to tell whether a server rewrote it.
pub fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// A dotlock (`mbox.lock`, made with O_EXCL), removed when dropped.
struct Dotlock(PathBuf);

impl Dotlock {
    fn take(mbox: &Path, deadline: Instant) -> Res<Dotlock> {
        let mut name = mbox.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(Dotlock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("dotlock {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for Dotlock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Appends `message` (From_ line, content, blank line) to `mbox` as an MTA
/// does: under a dotlock and an fcntl write lock (the locks postroom takes;
/// Dovecot here is set to fcntl), then fsync. Returns when both locks are
/// released, which is when the mail counts as delivered.
pub fn deliver_locked(mbox: &Path, message: &[u8]) -> Res<()> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let dot = Dotlock::take(mbox, deadline)?;
    let mut f = OpenOptions::new().append(true).open(mbox).map_err(|e| format!("{}: {e}", mbox.display()))?;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: fcntl with F_SETLK reads the flock struct we pass.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        let busy = matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES));
        if !busy || Instant::now() >= deadline {
            return Err(format!("fcntl lock on {}: {e}", mbox.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f.write_all(message).map_err(|e| format!("appending to {}: {e}", mbox.display()))?;
    f.sync_data().map_err(|e| format!("fsync {}: {e}", mbox.display()))?;
    // Closing the file releases the fcntl lock; then the dotlock goes.
    drop(f);
    drop(dot);
    Ok(())
}

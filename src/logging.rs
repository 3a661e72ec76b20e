//! Where log lines go: standard error, the system log (facility mail), or a
//! file; and the session ids that start every session's lines.
//!
//! The line format is the callers' (STYLE.md, "Logging"): a session id, the
//! protocol, an event word, then `key=value` pairs. This module adds only
//! what the target needs: a time stamp and the level on standard error and in
//! a file, a priority for syslog, and a `<N>` priority prefix instead of a
//! time stamp when standard error is the systemd journal (which stamps lines
//! itself).
//!
//! The target and level can be changed while the server runs (SIGHUP), and a
//! log file is reopened then, so that logrotate can move it away.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogTarget;

/// The syslog ident; `openlog` keeps the pointer, so it lives forever.
const IDENT: &std::ffi::CStr = c"postroomd";

/// Crates whose debug output is about their own internals: kept at info
/// unless the level is trace.
const QUIET_CRATES: &[&str] = &["rustls"];

/// The installed logger; `log` allows one per process, so reloads replace
/// its sink rather than the logger.
static LOGGER: OnceLock<Logger> = OnceLock::new();

struct Logger {
    sink: RwLock<Sink>,
}

enum Sink {
    /// Standard error, with a time stamp or, under journald, a priority prefix.
    Stderr { journal: bool },
    /// syslog(3), facility mail.
    Syslog,
    /// Appended to a file, with a time stamp.
    File { path: PathBuf, file: Mutex<File> },
}

/// Installs the logger. In inetd mode standard error is the client's
/// socket, so `stderr` means syslog there.
///
/// Calling it again (as tests do) changes the target and level of the
/// logger already installed.
pub fn init(target: &LogTarget, level: LevelFilter, inetd: bool) -> Result<(), String> {
    let target = match (target, inetd) {
        (LogTarget::Stderr, true) => &LogTarget::Syslog,
        (t, _) => t,
    };
    let sink = Sink::open(target)?;
    match LOGGER.get() {
        Some(logger) => *logger.sink.write().unwrap_or_else(|p| p.into_inner()) = sink,
        None => {
            let logger = LOGGER.get_or_init(|| Logger { sink: RwLock::new(sink) });
            // Fails only when another logger was installed first (a test
            // harness); then ours stays unused, which is harmless.
            let _ = log::set_logger(logger);
        }
    }
    log::set_max_level(level);
    Ok(())
}

/// Changes target and level after a reload. Reopens a log file even when
/// its name did not change: logrotate renames it, then sends SIGHUP.
pub fn reconfigure(target: &LogTarget, level: LevelFilter, inetd: bool) -> Result<(), String> {
    init(target, level, inetd)
}

/// True when log lines go to standard error (false before [`init`]).
pub fn logs_to_stderr() -> bool {
    LOGGER.get().is_some_and(|l| matches!(*l.sink.read().unwrap_or_else(|p| p.into_inner()), Sink::Stderr { .. }))
}

/// A new session id: eight hex digits, different for every session of this
/// process, and unlikely to repeat across restarts.
pub fn session_id() -> String {
    static SEED: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = *SEED.get_or_init(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (now.as_nanos() as u32) ^ (now.as_secs() as u32).rotate_left(16) ^ std::process::id().wrapping_mul(0x9e37_79b9)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(seed);
    format!("{:08x}", mix(n))
}

/// A bijection of u32 that scatters neighbouring counters (the MurmurHash3
/// finaliser): distinct inputs give distinct ids.
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

impl Sink {
    fn open(target: &LogTarget) -> Result<Sink, String> {
        Ok(match target {
            LogTarget::Stderr => Sink::Stderr { journal: stderr_is_journal() },
            LogTarget::Syslog => {
                // SAFETY: IDENT is a 'static C string, as openlog requires.
                unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_MAIL) };
                Sink::Syslog
            }
            LogTarget::File(path) => {
                let file = open_log_file(path).map_err(|e| format!("log file {}: {e}", path.display()))?;
                Sink::File { path: path.clone(), file: Mutex::new(file) }
            }
        })
    }
}

fn open_log_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

/// True when systemd connected standard error to the journal
/// (`JOURNAL_STREAM` names the device and inode of that stream).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    // SAFETY: fstat fills the zeroed struct; fd 2 may be closed, which is an error return.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(io::stderr().as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

fn wanted(metadata: &Metadata<'_>) -> bool {
    if metadata.level() > log::max_level() {
        return false;
    }
    let quiet = QUIET_CRATES.iter().any(|c| {
        metadata.target() == *c || metadata.target().strip_prefix(c).is_some_and(|rest| rest.starts_with("::"))
    });
    !quiet || metadata.level() <= Level::Info || log::max_level() >= LevelFilter::Trace
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !wanted(record.metadata()) {
            return;
        }
        let sink = self.sink.read().unwrap_or_else(|p| p.into_inner());
        match &*sink {
            Sink::Stderr { journal: true } => {
                let line = format!("<{}>{}\n", syslog_priority(record.level()), record.args());
                let _ = io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Stderr { journal: false } => {
                let line = format!("{} {:<5} {}\n", timestamp(), record.level(), record.args());
                let _ = io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog => {
                let text = record.args().to_string().replace('\0', "\\0");
                if let Ok(msg) = CString::new(text) {
                    // SAFETY: the format is a constant "%s" and msg a valid C string.
                    unsafe { libc::syslog(syslog_priority(record.level()), c"%s".as_ptr(), msg.as_ptr()) };
                }
            }
            Sink::File { path, file } => {
                let line = format!(
                    "{} postroomd[{}]: {:<5} {}\n",
                    timestamp(),
                    std::process::id(),
                    record.level(),
                    record.args()
                );
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                if f.write_all(line.as_bytes()).is_err() {
                    // The file may have been removed or the disk filled;
                    // try once with a fresh handle.
                    if let Ok(fresh) = open_log_file(path) {
                        *f = fresh;
                        let _ = f.write_all(line.as_bytes());
                    }
                }
            }
        }
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

fn syslog_priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_WARNING,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

/// Local time as `2026-11-26T16:41:07+01:00`.
fn timestamp() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let t = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r fills the zeroed struct from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("@{}", now.as_secs());
    }
    let off = tm.tm_gmtoff / 60;
    let (sign, off) = if off < 0 { ('-', -off) } else { ('+', off) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        off / 60,
        off % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn session_ids_are_eight_hex_digits_and_distinct() {
        let ids: Vec<String> = (0..10_000).map(|_| session_id()).collect();
        assert!(ids.iter().all(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    }

    #[test]
    fn mix_is_a_bijection_on_a_sample() {
        let outs: HashSet<u32> = (0..100_000u32).map(mix).collect();
        assert_eq!(outs.len(), 100_000);
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 25, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], "T");
    }

    #[test]
    fn quiet_crates_are_filtered_below_trace() {
        log::set_max_level(LevelFilter::Debug);
        let m = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(!wanted(&m("rustls::server::hs", Level::Debug)));
        assert!(wanted(&m("rustls::server::hs", Level::Warn)));
        assert!(wanted(&m("postroom::net", Level::Debug)));
        assert!(wanted(&m("rustlsx", Level::Debug)));
        log::set_max_level(LevelFilter::Trace);
        assert!(wanted(&m("rustls", Level::Debug)));
    }

    #[test]
    fn file_target_appends_with_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let sink = Sink::open(&LogTarget::File(path.clone())).unwrap();
        let logger = Logger { sink: RwLock::new(sink) };
        log::set_max_level(LevelFilter::Info);
        logger.log(&Record::builder().args(format_args!("abc pop3 connected")).level(Level::Info).build());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(" INFO  abc pop3 connected\n"), "{text}");
        assert!(text.contains(&format!("postroomd[{}]", std::process::id())));
    }
}

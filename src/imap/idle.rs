//! IDLE (RFC 2177): the client waits, the server tells it of changes as
//! they happen, until the client says `DONE`.
//!
//! The session thread sleeps in `poll(2)` on two descriptors: the client's
//! socket and the session's waker, an eventfd that every publish to the
//! mailbox makes readable. Changes by other sessions thus arrive at once;
//! mail that an outside program (the MTA) appends reaches the waker through
//! the process's inotify watcher (`store::watch`), which refreshes the
//! mailbox and publishes. Nothing runs while nothing happens, except a
//! keepalive (`* OK Still here`) every `imap-idle-keepalive` so that NAT
//! boxes keep the connection; after the IMAP idle timeout without a word
//! from the client the session ends (RFC 3501 §5.4).

use std::io::Write;
use std::time::{Duration, Instant};

use log::debug;

use super::response::ImapError;
use super::selected::Report;
use super::session::{Done, Session, State};
use crate::net::{Cutoff, LineError};
use crate::store::watch;

/// Without inotify, how often to look at the file for outside changes.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// The longest line we read in IDLE (`DONE`, or a client's mistake).
const MAX_IDLE_LINE: usize = 1024;

enum Woken {
    Client,
    Mailbox,
    Timeout,
}

/// Waits for the socket or the waker; `None` waker means socket only.
fn wait(sock: i32, waker: Option<i32>, timeout: Duration) -> std::io::Result<Woken> {
    let mut fds = [
        libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: waker.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
    ];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: two valid pollfd structs; a negative fd is ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(Woken::Timeout);
        }
        if fds[0].revents != 0 {
            return Ok(Woken::Client);
        }
        return Ok(Woken::Mailbox);
    }
}

impl Session<'_> {
    pub(super) fn cmd_idle(&mut self, _tag: &str) -> Done {
        let how = Report { expunges: true, with_uid: false };
        let (waker, _watch) = match &self.state {
            State::Selected(_, sel) => (sel.sub.waker().ok(), watch::watch(&sel.shared)),
            _ => (None, None),
        };
        let sock = self.conn.raw_fd().ok_or_else(|| ImapError::Io(std::io::Error::other("no socket")))?;
        let keepalive = self.config.imap_idle_keepalive;
        let limit = self.config.idle_timeout_imap;
        let poll_file = matches!(self.state, State::Selected(..)) && _watch.is_none();
        write!(self.conn, "+ idling\r\n")?;
        self.report(how)?;
        self.conn.flush()?;
        let started = Instant::now();
        let mut last_sent = Instant::now();
        loop {
            if self.conn.has_pending_input() {
                break;
            }
            let idle_left = limit.saturating_sub(started.elapsed());
            if idle_left.is_zero() {
                return Err(ImapError::Cutoff(Cutoff::Idle));
            }
            let mut timeout = keepalive.saturating_sub(last_sent.elapsed()).min(idle_left);
            if poll_file {
                timeout = timeout.min(FALLBACK_POLL);
            }
            match wait(sock, waker.as_ref().map(|w| w.fd()), timeout)? {
                Woken::Client => break,
                Woken::Mailbox => {
                    if let Some(w) = &waker {
                        w.clear();
                    }
                }
                Woken::Timeout => {}
            }
            if let State::Selected(_, sel) = &mut self.state {
                if poll_file {
                    let _ = sel.shared.refresh();
                }
                let mut out = Vec::new();
                sel.report(how, &mut out)?;
                if !out.is_empty() {
                    self.conn.write_all(&out)?;
                    self.conn.flush()?;
                    last_sent = Instant::now();
                }
            }
            if last_sent.elapsed() >= keepalive {
                write!(self.conn, "* OK Still here\r\n")?;
                self.conn.flush()?;
                last_sent = Instant::now();
            }
        }
        let line = match self.conn.read_line(MAX_IDLE_LINE) {
            Ok(l) => l,
            Err(LineError::TooLong) => return Err(ImapError::bad("Expected DONE.")),
            Err(LineError::Eof) => return Err(ImapError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Err(LineError::Io(e)) => return Err(e.into()),
        };
        debug!("{} imap idle-done after={}s", self.sid, started.elapsed().as_secs());
        if !line.eq_ignore_ascii_case(b"DONE") {
            return Err(ImapError::bad("Expected DONE."));
        }
        Ok("Idle completed.".into())
    }
}

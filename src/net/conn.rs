//! One client connection, plain or TLS, with line reading and buffered
//! writing.
//!
//! Reading: input is read into a small buffer (1 KiB to start, grown only
//! for long lines and shrunk again after them), and [`Conn::read_line`]
//! hands out one line at a time, CRLF or bare LF, under a length cap.
//!
//! Writing: [`io::Write`] appends to an output buffer that goes to the peer
//! on `flush`, or in 64 KiB pieces while it grows (so a large RETR or FETCH
//! streams instead of piling up). A session flushes once per response: the
//! socket sees one write per response rather than one per line, so
//! `TCP_NODELAY` is safe and delayed ACKs do not stall pipelined commands.
//!
//! Clocks: every read waits at most the idle timeout ([`Conn::set_timeout`]),
//! and never past the connection's deadlines: until login, `login-timeout`
//! from accept ([`Conn::start_login_clock`]); for each command, a bound from
//! its first byte to its end, the login timeout before login and the idle
//! timeout after it, plus time for the literal data it announces at
//! [`crate::limits::MIN_LITERAL_RATE`] ([`Conn::expect_literal`]). The
//! deadlines are checked at every read of the socket, under TLS too, so a
//! client that trickles a byte at a time cannot stretch them. A read that
//! stops for one of these reasons fails with an error that carries a
//! [`Cutoff`].
//!
//! STARTTLS/STLS (RFC 2595 §3.1, RFC 3501 §6.2.1): [`Conn::start_tls`]
//! refuses to start when plaintext input is already buffered, since bytes
//! sent before the handshake must never be taken as if they came over TLS
//! (the CVE-2011-0411 class of command injection).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::listen::Slot;
use crate::limits;
use crate::logging;

/// The read buffer's size when a connection starts, and what it shrinks
/// back to after a long line: an idle session should cost little memory.
const READ_START: usize = 1024;

/// The output buffer is written out when it grows past this, so a long
/// message goes out while it is being produced.
const WRITE_HIGH: usize = 64 * 1024;

/// After a flush, an output buffer larger than this is released rather
/// than kept for the next response.
const WRITE_KEEP: usize = 4096;

/// How long a closing connection waits to send its TLS close_notify, and
/// how long a farewell may still take to write once a deadline has passed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection stopped reading before its peer closed it. The error
/// that the read returns carries it (see [`cutoff`]), through TLS as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Nothing came for the idle timeout.
    Idle,
    /// The client did not log in within `login-timeout` of connecting.
    Login,
    /// A command did not arrive whole within its bound (after login).
    Command,
    /// The connection limits closed it to make room for a new connection
    /// (too many connections that have not logged in).
    Evicted,
}

impl Cutoff {
    /// The word for logs (`reason=`).
    pub fn name(self) -> &'static str {
        match self {
            Cutoff::Idle => "idle-timeout",
            Cutoff::Login => "login-timeout",
            Cutoff::Command => "command-timeout",
            Cutoff::Evicted => "evicted",
        }
    }
}

impl fmt::Display for Cutoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cutoff::Idle => "idle timeout",
            Cutoff::Login => "not logged in within the login timeout",
            Cutoff::Command => "command not complete within its deadline",
            Cutoff::Evicted => "closed to make room for a new connection",
        })
    }
}

impl std::error::Error for Cutoff {}

/// The error a read fails with when `c` stops it. Timeouts are `TimedOut`,
/// not `WouldBlock`, so that rustls passes them on rather than taking them
/// for a non-blocking socket's "try again".
fn cut(c: Cutoff) -> io::Error {
    let kind = if c == Cutoff::Evicted { io::ErrorKind::ConnectionAborted } else { io::ErrorKind::TimedOut };
    io::Error::new(kind, c)
}

/// The cutoff that stopped a read, if one did.
pub fn cutoff(e: &io::Error) -> Option<Cutoff> {
    e.get_ref()?.downcast_ref::<Cutoff>().copied()
}

/// Reading a line failed.
#[derive(Debug)]
pub enum LineError {
    /// The line was longer than allowed; the rest of it was discarded.
    TooLong,
    /// The peer closed the connection.
    Eof,
    /// Timeout or I/O error: the session ends.
    Io(io::Error),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::TooLong => f.write_str("line too long"),
            LineError::Eof => f.write_str("connection closed by peer"),
            LineError::Io(e) => match cutoff(e) {
                Some(c) => write!(f, "{c}"),
                None if is_timeout(e) => f.write_str("timeout"),
                None => write!(f, "{e}"),
            },
        }
    }
}

impl std::error::Error for LineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LineError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for LineError {
    fn from(e: io::Error) -> LineError {
        LineError::Io(e)
    }
}

/// True for the errors that a read or write timeout (`SO_RCVTIMEO`,
/// `SO_SNDTIMEO`) produces.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// How a connection reached the server, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Accepted on a socket that postroomd bound itself.
    Standalone,
    /// Standard input, from inetd.
    Inetd,
    /// Accepted on a socket that systemd passed.
    Systemd,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Standalone => "standalone",
            Via::Inetd => "inetd",
            Via::Systemd => "systemd",
        }
    }
}

/// What the connection limits keep of a connection (see [`Conn::attach`]):
/// its socket, so that the accept loop can close it to make room, and
/// whether it did.
#[derive(Debug)]
pub struct Link {
    tcp: TcpStream,
    evicted: AtomicBool,
}

impl Link {
    /// Shuts the reading side: the session's read returns at once with
    /// [`Cutoff::Evicted`], and the session can still say goodbye.
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        let _ = self.tcp.shutdown(Shutdown::Read);
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }
}

/// The socket under a connection, plain or under TLS, with its clocks:
/// each read or write waits at most the idle timeout and never past the
/// deadline the connection set.
struct Socket {
    link: Arc<Link>,
    /// The longest one read or write waits; `None` waits for ever.
    idle: Option<Duration>,
    /// Reads fail with the cutoff once this instant has passed.
    read_deadline: Option<(Instant, Cutoff)>,
    /// Writes wait no later than this, or [`CLOSE_TIMEOUT`] once it has
    /// passed (a farewell still goes out).
    write_deadline: Option<Instant>,
    /// The timeouts set on the socket now (outer `None`: not known).
    rcvtimeo: Option<Option<Duration>>,
    sndtimeo: Option<Option<Duration>>,
}

impl Socket {
    fn new(tcp: TcpStream) -> Socket {
        Socket {
            link: Arc::new(Link { tcp, evicted: AtomicBool::new(false) }),
            idle: None,
            read_deadline: None,
            write_deadline: None,
            rcvtimeo: None,
            sndtimeo: None,
        }
    }

    /// After a TLS close_notify or a failure: writes wait a moment, no more.
    fn closing(&mut self) {
        self.idle = Some(CLOSE_TIMEOUT);
        self.write_deadline = None;
    }
}

/// The shorter of two waits, `None` being for ever.
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Sets a socket timeout when it changes. Waits over a second are rounded
/// down to whole seconds, so that a shrinking deadline costs a system call
/// a second rather than one a read; a timeout that fires early is waited
/// out by the caller's loop.
fn arm(
    current: &mut Option<Option<Duration>>,
    wait: Option<Duration>,
    set: impl Fn(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    let wait = wait.map(|w| if w >= Duration::from_secs(1) { Duration::from_secs(w.as_secs()) } else { w });
    if *current != Some(wait) {
        set(wait)?;
        *current = Some(wait);
    }
    Ok(())
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            if self.link.is_evicted() {
                return Err(cut(Cutoff::Evicted));
            }
            let now = Instant::now();
            let idle_left = self.idle.map(|i| i.saturating_sub(now - started));
            if idle_left == Some(Duration::ZERO) {
                return Err(cut(Cutoff::Idle));
            }
            let deadline_left = match self.read_deadline {
                Some((at, c)) if at <= now => return Err(cut(c)),
                Some((at, _)) => Some(at - now),
                None => None,
            };
            arm(&mut self.rcvtimeo, shorter(idle_left, deadline_left), |t| self.link.tcp.set_read_timeout(t))?;
            match (&self.link.tcp).read(buf) {
                Ok(0) if self.link.is_evicted() => return Err(cut(Cutoff::Evicted)),
                // The loop tells which clock ran out, or waits out the rest.
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.link.is_evicted() => return Err(cut(Cutoff::Evicted)),
                other => return other,
            }
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        let left = self.write_deadline.map(|at| at.saturating_duration_since(now).max(CLOSE_TIMEOUT));
        arm(&mut self.sndtimeo, shorter(self.idle, left), |t| self.link.tcp.set_write_timeout(t))?;
        (&self.link.tcp).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection's deadlines, as the session moves through its commands.
#[derive(Debug, Default)]
struct Clock {
    /// Until login: when the login timeout runs out.
    login: Option<Instant>,
    /// How long a command may take from its first byte to its end.
    bound: Option<Duration>,
    /// After login: literal data adds a second per this many bytes.
    literal_rate: Option<u64>,
    /// When the command now arriving sent its first byte.
    started: Option<Instant>,
    /// What this command's literals added to its bound.
    extra: Duration,
}

impl Clock {
    /// The earliest deadline for reads, with what it is.
    fn read_deadline(&self) -> Option<(Instant, Cutoff)> {
        let command = match (self.started, self.bound) {
            (Some(start), Some(bound)) => {
                start.checked_add(bound.saturating_add(self.extra)).map(|at| (at, Cutoff::Command))
            }
            _ => None,
        };
        let login = self.login.map(|at| (at, Cutoff::Login));
        match (login, command) {
            (Some(l), Some(c)) => Some(if c.0 < l.0 { c } else { l }),
            (l, None) => l,
            (None, c) => c,
        }
    }
}

enum Stream {
    Plain(Socket),
    Tls(Box<StreamOwned<ServerConnection, Socket>>),
    /// Only while `start_tls` swaps the stream, or after it failed.
    Closed,
}

/// A client connection. `Write` appends to an output buffer that goes to
/// the peer on `flush` (or when it grows large, for long bodies): one
/// response, one flush.
pub struct Conn {
    stream: Stream,
    /// The place under the connection caps (none under inetd).
    slot: Option<Slot>,
    clock: Clock,
    /// The idle timeout, also the bound on a command after login.
    idle: Option<Duration>,
    peer: SocketAddr,
    via: Via,
    sid: String,
    /// Input read from the peer; `rbuf[rpos..]` is not consumed yet.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Output not yet written.
    wbuf: Vec<u8>,
}

impl Conn {
    /// A plaintext connection. Sets `TCP_NODELAY` (we batch writes ourselves).
    pub fn new(stream: TcpStream, peer: SocketAddr, via: Via) -> Conn {
        // Fails only on sockets that are not TCP (a socketpair under inetd):
        // nothing to turn off there.
        let _ = stream.set_nodelay(true);
        Conn {
            stream: Stream::Plain(Socket::new(stream)),
            slot: None,
            clock: Clock::default(),
            idle: None,
            peer,
            via,
            sid: logging::session_id(),
            rbuf: Vec::with_capacity(READ_START),
            rpos: 0,
            wbuf: Vec::new(),
        }
    }

    /// An implicit-TLS connection (imaps, pop3s). The handshake happens on
    /// [`Conn::handshake`], or else on the first read or flush, in the
    /// session's thread rather than the accept loop.
    pub fn new_tls(stream: TcpStream, peer: SocketAddr, via: Via, config: Arc<ServerConfig>) -> io::Result<Conn> {
        let mut conn = Conn::new(stream, peer, via);
        let Stream::Plain(sock) = std::mem::replace(&mut conn.stream, Stream::Closed) else {
            unreachable!("a new Conn is plain")
        };
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        conn.stream = Stream::Tls(Box::new(StreamOwned::new(tls, sock)));
        Ok(conn)
    }

    /// The session id that starts this connection's log lines.
    pub fn session_id(&self) -> &str {
        &self.sid
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// "standalone", "inetd" or "systemd".
    pub fn via(&self) -> &'static str {
        self.via.name()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The TLS version and cipher suite, for the logs (`TLSv1_3/TLS13_AES_256_GCM_SHA384`).
    pub fn tls_description(&self) -> Option<String> {
        let Stream::Tls(tls) = &self.stream else { return None };
        let version = tls.conn.protocol_version()?;
        let suite = tls.conn.negotiated_cipher_suite()?;
        Some(format!("{version:?}/{:?}", suite.suite()))
    }

    /// The peer is on a loopback address (plaintext logins allowed under
    /// `plaintext-auth tls-or-loopback`).
    pub fn is_loopback(&self) -> bool {
        is_loopback(self.peer.ip())
    }

    /// Idle timeout for reads, and the longest a write may wait for a peer
    /// that does not read. Zero means none.
    pub fn set_timeout(&mut self, t: Duration) {
        let t = (!t.is_zero()).then_some(t);
        self.idle = t;
        if let Some(sock) = self.socket_mut() {
            sock.idle = t;
        }
    }

    /// Starts the login clock: until [`Conn::logged_in`], every read (TLS
    /// handshakes included) fails with [`Cutoff::Login`] once `within` has
    /// passed from now, and each command must also arrive within it.
    pub fn start_login_clock(&mut self, within: Duration) {
        self.clock.login = Instant::now().checked_add(within);
        self.clock.bound = Some(within);
        self.clock.literal_rate = None;
        self.push_deadlines();
    }

    /// Bounds each command from its first byte to its end (`None`: no
    /// bound), adding a second for every `literal_rate` bytes of literal
    /// data it announces (`None`: literals add nothing).
    pub fn set_command_bound(&mut self, bound: Option<Duration>, literal_rate: Option<u64>) {
        self.clock.bound = bound;
        self.clock.literal_rate = literal_rate;
        self.push_deadlines();
    }

    /// Gives the connection its place under the caps, and lets the limits
    /// close it to make room until it logs in.
    pub fn attach(&mut self, slot: Slot) {
        if let Some(sock) = self.socket_mut() {
            let link: Weak<Link> = Arc::downgrade(&sock.link);
            slot.watch(link, &self.sid);
        }
        self.slot = Some(slot);
    }

    /// The client has logged in. The login clock stops; each command now
    /// has the idle timeout to arrive, plus a second for every
    /// [`limits::MIN_LITERAL_RATE`] bytes of its literals; the connection
    /// counts as a session under the caps and is never closed to make
    /// room. Fails with [`Cutoff::Evicted`] if the limits closed it to
    /// make room meanwhile.
    pub fn logged_in(&mut self) -> io::Result<()> {
        if let Some(slot) = &self.slot {
            if !slot.logged_in() {
                return Err(cut(Cutoff::Evicted));
            }
        }
        self.clock.login = None;
        self.set_command_bound(self.idle, Some(limits::MIN_LITERAL_RATE));
        Ok(())
    }

    /// The command now arriving has ended (whole or refused): the next byte
    /// starts the next command's clock.
    pub fn command_done(&mut self) {
        if self.clock.started.take().is_some() || !self.clock.extra.is_zero() {
            self.clock.extra = Duration::ZERO;
            self.push_deadlines();
        }
    }

    /// The command now arriving announced `size` bytes of literal data:
    /// after login, its deadline moves out by the time they take at the
    /// minimum rate.
    pub fn expect_literal(&mut self, size: u64) {
        if let (Some(rate), Some(_)) = (self.clock.literal_rate, self.clock.started) {
            let secs = size.div_ceil(rate.max(1));
            self.clock.extra = self.clock.extra.saturating_add(Duration::from_secs(secs));
            self.push_deadlines();
        }
    }

    /// Starts the command clock if a command's first byte is here.
    fn note_input(&mut self) {
        if self.clock.started.is_none() && self.has_pending_input() {
            self.clock.started = Some(Instant::now());
            self.push_deadlines();
        }
    }

    fn push_deadlines(&mut self) {
        let read = self.clock.read_deadline();
        let write = self.clock.login;
        if let Some(sock) = self.socket_mut() {
            sock.read_deadline = read;
            sock.write_deadline = write;
        }
    }

    /// Completes the TLS handshake of an implicit-TLS connection (nothing
    /// to do on a plain one). The read timeout applies.
    pub fn handshake(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tls(tls) => complete_handshake(tls),
            Stream::Plain(_) => Ok(()),
            Stream::Closed => Err(closed()),
        }
    }

    /// Reads one line (CRLF or LF), without its line end: a whole command,
    /// whose clock ends with it.
    ///
    /// A line of more than `max` bytes (not counting the line end) is read
    /// to its end and thrown away, and the answer is [`LineError::TooLong`];
    /// the next call reads the line after it.
    pub fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        let line = self.read_part(max);
        if !matches!(line, Err(LineError::Io(_))) {
            self.command_done();
        }
        line
    }

    /// Reads one line of a command that may go on after it (IMAP lines
    /// around literals), as [`Conn::read_line`] does, but the command's
    /// clock keeps running until [`Conn::command_done`].
    pub fn read_part(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        let mut discarding = false;
        loop {
            self.note_input();
            if let Some(i) = memchr::memchr(b'\n', &self.rbuf[self.rpos..]) {
                let start = self.rpos;
                let mut end = start + i;
                self.rpos = end + 1;
                if end > start && self.rbuf[end - 1] == b'\r' {
                    end -= 1;
                }
                let line = (!discarding && end - start <= max).then(|| self.rbuf[start..end].to_vec());
                self.consumed();
                return line.ok_or(LineError::TooLong);
            }
            // No line end yet. Keep at most `max` bytes and a CR of a line
            // that may still fit; past that, drop everything to its end.
            if discarding || self.rbuf.len() - self.rpos > max.saturating_add(1) {
                discarding = true;
                self.rbuf.clear();
                self.rpos = 0;
                if self.rbuf.capacity() > 4 * READ_START {
                    self.rbuf = Vec::with_capacity(READ_START);
                }
            }
            if self.fill()? == 0 {
                return Err(LineError::Eof);
            }
        }
    }

    /// The socket, for `poll` (IDLE waits on it and on mailbox events).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.socket().map(|s| s.link.tcp.as_raw_fd())
    }

    /// Input already read from the socket but not yet consumed: bytes
    /// that the client sent without waiting for the answer to the line
    /// just read. For a plain connection these are bytes that came before
    /// any TLS handshake.
    pub fn has_pending_input(&self) -> bool {
        self.rpos < self.rbuf.len()
    }

    /// Upgrades to TLS (STLS/STARTTLS) and completes the handshake. The
    /// caller has flushed its answer and checked that no input is pending;
    /// pending input is refused here as well (and thrown away), so that it
    /// can never be read as if it had come over TLS.
    pub fn start_tls(&mut self, config: Arc<ServerConfig>) -> io::Result<()> {
        if self.has_pending_input() {
            self.rbuf.clear();
            self.rpos = 0;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "plaintext input pipelined before TLS"));
        }
        if !self.wbuf.is_empty() {
            self.flush()?;
        }
        let sock = match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(sock) => sock,
            other => {
                self.stream = other;
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "TLS is already active"));
            }
        };
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut tls = Box::new(StreamOwned::new(tls, sock));
        complete_handshake(&mut tls)?;
        self.stream = Stream::Tls(tls);
        Ok(())
    }

    /// Reads more input into the buffer; 0 at end of file.
    fn fill(&mut self) -> io::Result<usize> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.len() == self.rbuf.capacity() {
            self.rbuf.reserve(self.rbuf.capacity().max(READ_START));
        }
        let old = self.rbuf.len();
        self.rbuf.resize(self.rbuf.capacity(), 0);
        let got = loop {
            match self.stream_read(old) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.rbuf.truncate(old + *got.as_ref().unwrap_or(&0));
        got
    }

    fn stream_read(&mut self, from: usize) -> io::Result<usize> {
        let buf = &mut self.rbuf[from..];
        match &mut self.stream {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Err(closed()),
        }
    }

    /// After a line was taken: forget consumed bytes, and give back the
    /// memory of a long line.
    fn consumed(&mut self) {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
            if self.rbuf.capacity() > 4 * READ_START {
                self.rbuf = Vec::with_capacity(READ_START);
            }
        }
    }

    fn socket(&self) -> Option<&Socket> {
        match &self.stream {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(&s.sock),
            Stream::Closed => None,
        }
    }

    fn socket_mut(&mut self) -> Option<&mut Socket> {
        match &mut self.stream {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(&mut s.sock),
            Stream::Closed => None,
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        let res = match &mut self.stream {
            Stream::Plain(s) => s.write_all(&self.wbuf),
            Stream::Tls(s) => s.write_all(&self.wbuf),
            Stream::Closed => Err(closed()),
        };
        self.wbuf.clear();
        res
    }
}

impl Read for Conn {
    /// Reads bytes (IMAP literals, for example): first what is buffered,
    /// then from the connection.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.note_input();
        if self.has_pending_input() {
            let n = buf.len().min(self.rbuf.len() - self.rpos);
            buf[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
            self.rpos += n;
            self.consumed();
            return Ok(n);
        }
        match &mut self.stream {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Err(closed()),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A large piece (a FETCH batch of message bodies) goes straight
        // out after what is buffered, without another copy.
        if buf.len() >= WRITE_HIGH {
            if !self.wbuf.is_empty() {
                self.write_out()?;
            }
            match &mut self.stream {
                Stream::Plain(s) => s.write_all(buf)?,
                Stream::Tls(s) => s.write_all(buf)?,
                Stream::Closed => return Err(closed()),
            }
            return Ok(buf.len());
        }
        self.wbuf.extend_from_slice(buf);
        if self.wbuf.len() >= WRITE_HIGH {
            self.write_out()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let res = if self.wbuf.is_empty() { Ok(()) } else { self.write_out() };
        if self.wbuf.capacity() > WRITE_KEEP {
            self.wbuf = Vec::new();
        }
        res?;
        match &mut self.stream {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Closed => Err(closed()),
        }
    }
}

impl Drop for Conn {
    /// Ends a TLS connection with close_notify, waiting at most a second
    /// for a peer that does not read.
    fn drop(&mut self) {
        if let Stream::Tls(tls) = &mut self.stream {
            if tls.conn.is_handshaking() {
                return;
            }
            tls.sock.closing();
            tls.conn.send_close_notify();
            while tls.conn.wants_write() {
                if !matches!(tls.conn.write_tls(&mut tls.sock), Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
}

fn complete_handshake(tls: &mut StreamOwned<ServerConnection, Socket>) -> io::Result<()> {
    while tls.conn.is_handshaking() {
        let (read, written) = tls.conn.complete_io(&mut tls.sock)?;
        if read == 0 && written == 0 && tls.conn.is_handshaking() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during the TLS handshake"));
        }
    }
    // Session tickets and the like, queued at the end of the handshake.
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock)?;
    }
    Ok(())
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
}

/// True for 127/8 and ::1, also written as an IPv4-mapped IPv6 address.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair: the server side as a Conn, the client side as a socket.
    fn pair() -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, peer) = l.accept().unwrap();
        let mut conn = Conn::new(server, peer, Via::Standalone);
        conn.set_timeout(Duration::from_secs(10));
        (conn, client)
    }

    type Lines = Vec<Result<Vec<u8>, String>>;

    fn lines_of(input: &[u8], max: usize) -> Lines {
        let (mut conn, mut client) = pair();
        client.write_all(input).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        loop {
            match conn.read_line(max) {
                Ok(l) => out.push(Ok(l)),
                Err(LineError::TooLong) => out.push(Err("too long".to_string())),
                Err(LineError::Eof) => break,
                Err(LineError::Io(e)) => panic!("{e}"),
            }
        }
        out
    }

    #[test]
    fn line_table() {
        let ok = |s: &str| Ok(s.as_bytes().to_vec());
        let long = || Err("too long".to_string());
        let cases: Vec<(&[u8], usize, Lines)> = vec![
            (b"USER a\r\nPASS b\r\n", 100, vec![ok("USER a"), ok("PASS b")]),
            (b"bare\nlf\n", 100, vec![ok("bare"), ok("lf")]),
            (b"\r\n\n", 100, vec![ok(""), ok("")]),
            (b"bare\rcr\r\n", 100, vec![ok("bare\rcr")]),
            (b"cr cr\r\r\n", 100, vec![ok("cr cr\r")]),
            (b"nul\0byte\r\n", 100, vec![ok("nul\0byte")]),
            (b"no end", 100, vec![]),
            (b"12345\r\n123456\r\nok\r\n", 5, vec![ok("12345"), long(), ok("ok")]),
            (b"12345\n123456\nok\n", 5, vec![ok("12345"), long(), ok("ok")]),
            (b"\r\n", 0, vec![ok("")]),
            (b"no cap\r\n", usize::MAX, vec![ok("no cap")]),
        ];
        for (input, max, want) in cases {
            assert_eq!(lines_of(input, max), want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn overlong_lines_are_discarded_whole_at_every_size() {
        for len in [1023, 1024, 1025, 5000, 70_000, 300_000] {
            let mut input = vec![b'x'; len];
            input.extend_from_slice(b"\r\nNOOP\r\n");
            let got = lines_of(&input, 1000);
            assert_eq!(got, vec![Err("too long".to_string()), Ok(b"NOOP".to_vec())], "len {len}");
        }
        let mut input = vec![b'y'; 200_000];
        input.extend_from_slice(b"\r\n");
        assert_eq!(lines_of(&input, 200_000), vec![Ok(vec![b'y'; 200_000])]);
    }

    #[test]
    fn input_split_at_every_byte() {
        let input = b"CAPA\r\nUSER alice\nPASS x\r\n";
        for split in 0..input.len() {
            let (mut conn, mut client) = pair();
            client.write_all(&input[..split]).unwrap();
            let writer = std::thread::spawn({
                let rest = input[split..].to_vec();
                let mut client = client.try_clone().unwrap();
                move || {
                    std::thread::sleep(Duration::from_millis(5));
                    client.write_all(&rest).unwrap();
                }
            });
            assert_eq!(conn.read_line(100).unwrap(), b"CAPA");
            assert_eq!(conn.read_line(100).unwrap(), b"USER alice");
            assert_eq!(conn.read_line(100).unwrap(), b"PASS x");
            assert!(!conn.has_pending_input());
            writer.join().unwrap();
        }
    }

    #[test]
    fn pending_input_is_seen() {
        let (mut conn, mut client) = pair();
        client.write_all(b"STLS\r\nUSER mallory\r\n").unwrap();
        assert_eq!(conn.read_line(100).unwrap(), b"STLS");
        assert!(conn.has_pending_input());
        let config = crate::net::tls::self_signed_for_tests();
        let err = conn.start_tls(config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!conn.has_pending_input(), "pipelined plaintext is thrown away");
        assert!(!conn.is_tls());
    }

    #[test]
    fn timeout_is_an_io_error() {
        let (mut conn, _client) = pair();
        conn.set_timeout(Duration::from_millis(50));
        match conn.read_line(100) {
            Err(LineError::Io(e)) => {
                assert!(is_timeout(&e), "{e}");
                assert_eq!(cutoff(&e), Some(Cutoff::Idle));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_are_batched_until_flush_and_stream_when_large() {
        let (mut conn, mut client) = pair();
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        conn.write_all(b"+OK one\r\n").unwrap();
        conn.write_all(b"+OK two\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert!(client.read(&mut buf).is_err(), "nothing is sent before flush");
        conn.flush().unwrap();
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"+OK one\r\n+OK two\r\n");

        // A large body goes out while it is written, before any flush.
        let reader = std::thread::spawn(move || {
            client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0u8; WRITE_HIGH];
            client.read_exact(&mut got).unwrap();
            got
        });
        let chunk = vec![b'z'; 1000];
        for _ in 0..(WRITE_HIGH / 1000 + 1) {
            conn.write_all(&chunk).unwrap();
        }
        let got = reader.join().unwrap();
        assert!(got.iter().all(|&b| b == b'z'));
        conn.flush().unwrap();
        assert!(conn.wbuf.capacity() <= WRITE_KEEP, "the big buffer is released");
    }

    #[test]
    fn read_buffer_starts_small_and_shrinks_after_long_lines() {
        let (mut conn, mut client) = pair();
        assert_eq!(conn.rbuf.capacity(), READ_START);
        let mut input = vec![b'a'; 50_000];
        input.extend_from_slice(b"\r\nshort\r\n");
        client.write_all(&input).unwrap();
        assert_eq!(conn.read_line(100_000).unwrap().len(), 50_000);
        assert_eq!(conn.read_line(100).unwrap(), b"short");
        assert!(conn.rbuf.capacity() <= 4 * READ_START, "{}", conn.rbuf.capacity());
    }

    #[test]
    fn read_takes_buffered_bytes_first() {
        let (mut conn, mut client) = pair();
        client.write_all(b"APPEND {5}\r\nhello world").unwrap();
        assert_eq!(conn.read_line(100).unwrap(), b"APPEND {5}");
        let mut lit = [0u8; 5];
        conn.read_exact(&mut lit).unwrap();
        assert_eq!(&lit, b"hello");
    }

    /// Writes `bytes` one at a time, `gap` apart, until done or refused.
    fn trickle(mut client: impl Write + Send + 'static, bytes: Vec<u8>, gap: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for b in bytes {
                if client.write_all(&[b]).and_then(|_| client.flush()).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        })
    }

    fn cut_by(r: Result<Vec<u8>, LineError>) -> Option<Cutoff> {
        match r {
            Err(LineError::Io(e)) => cutoff(&e),
            other => panic!("{other:?}"),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_login_clock_ends_idle_and_trickling_connections() {
        let (mut conn, _client) = pair();
        conn.set_timeout(Duration::from_secs(30));
        let start = Instant::now();
        conn.start_login_clock(300 * MS);
        assert_eq!(cut_by(conn.read_line(100)), Some(Cutoff::Login));
        assert!(start.elapsed() >= 300 * MS, "{:?}", start.elapsed());

        // A byte every 50 ms is never idle, and never a line.
        let (mut conn, client) = pair();
        conn.set_timeout(Duration::from_secs(30));
        let start = Instant::now();
        conn.start_login_clock(400 * MS);
        let writer = trickle(client, vec![b'x'; 200], 50 * MS);
        assert_eq!(cut_by(conn.read_line(1000)), Some(Cutoff::Login));
        let took = start.elapsed();
        assert!(took >= 400 * MS && took < Duration::from_secs(5), "{took:?}");
        drop(conn);
        writer.join().unwrap();
    }

    #[test]
    fn the_login_clock_holds_under_tls() {
        let (server, client) = crate::net::tls::pair_for_tests();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let mut conn = Conn::new_tls(s, peer, Via::Standalone, server).unwrap();
        conn.set_timeout(Duration::from_secs(30));
        let start = Instant::now();
        conn.start_login_clock(Duration::from_millis(1500));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(client, name).unwrap(), sock);
        let handshake = std::thread::spawn(move || {
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).unwrap();
            }
            tls
        });
        conn.handshake().unwrap();
        let mut tls = handshake.join().unwrap();
        // One TLS record, sent a byte every 50 ms: rustls reads on until
        // the record is whole, so only a check at each read of the socket
        // can stop it in time.
        tls.conn.writer().write_all(&[b'y'; 100]).unwrap();
        let mut record = Vec::new();
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut record).unwrap();
        }
        let writer = trickle(tls.sock, record, 50 * MS);
        assert_eq!(cut_by(conn.read_line(1000)), Some(Cutoff::Login));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(5), "{took:?}");
        drop(conn);
        writer.join().unwrap();

        // A handshake that never starts ends at the login timeout too.
        let (server, _) = crate::net::tls::pair_for_tests();
        let (s, _client) = {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (l.accept().unwrap().0, c)
        };
        let mut conn = Conn::new_tls(s, peer, Via::Standalone, server).unwrap();
        conn.set_timeout(Duration::from_secs(30));
        conn.start_login_clock(300 * MS);
        let e = conn.handshake().unwrap_err();
        assert_eq!(cutoff(&e), Some(Cutoff::Login), "{e}");
    }

    #[test]
    fn after_login_a_command_has_its_bound_from_its_first_byte() {
        let (mut conn, mut client) = pair();
        conn.set_timeout(Duration::from_secs(30));
        conn.start_login_clock(200 * MS);
        conn.logged_in().unwrap();
        conn.set_command_bound(Some(400 * MS), Some(1000));
        // Idle between commands does not count: only the login clock did.
        std::thread::sleep(500 * MS);
        client.write_all(b"a NOOP\r\n").unwrap();
        assert_eq!(conn.read_line(100).unwrap(), b"a NOOP");
        std::thread::sleep(500 * MS);
        client.write_all(b"b NOOP\r\n").unwrap();
        assert_eq!(conn.read_line(100).unwrap(), b"b NOOP");
        // A line trickled past its bound is cut.
        let start = Instant::now();
        let writer = trickle(client, vec![b'z'; 200], 50 * MS);
        assert_eq!(cut_by(conn.read_line(1000)), Some(Cutoff::Command));
        assert!(start.elapsed() >= 400 * MS);
        drop(conn);
        writer.join().unwrap();
    }

    /// `a APPEND x {3000}`, then the literal in ten pieces 100 ms apart:
    /// about a second, over a 400 ms bound unless the literal moves it.
    fn slow_append(conn: &mut Conn, client: TcpStream, announce: bool) -> io::Result<Vec<u8>> {
        let mut client = client;
        client.write_all(b"a APPEND x {3000}\r\n").unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..10 {
                std::thread::sleep(100 * MS);
                if client.write_all(&[b'm'; 300]).is_err() {
                    return;
                }
            }
            let _ = client.write_all(b"\r\n");
        });
        let line = conn.read_part(100).map_err(|e| io::Error::other(e.to_string()))?;
        assert_eq!(line, b"a APPEND x {3000}");
        if announce {
            conn.expect_literal(3000);
        }
        let mut literal = vec![0u8; 3000];
        let got = conn.read_exact(&mut literal);
        writer.join().unwrap();
        got?;
        assert!(conn.read_part(100).unwrap().is_empty());
        conn.command_done();
        Ok(literal)
    }

    #[test]
    fn literal_data_moves_the_bound_at_the_minimum_rate() {
        let (mut conn, client) = pair();
        conn.set_timeout(Duration::from_secs(30));
        conn.set_command_bound(Some(400 * MS), Some(1000));
        // 3000 bytes at 1000 bytes a second: three more seconds.
        assert_eq!(slow_append(&mut conn, client, true).unwrap(), vec![b'm'; 3000]);

        let (mut conn, client) = pair();
        conn.set_timeout(Duration::from_secs(30));
        conn.set_command_bound(Some(400 * MS), Some(1000));
        let e = slow_append(&mut conn, client, false).unwrap_err();
        assert_eq!(cutoff(&e), Some(Cutoff::Command), "{e}");
    }

    #[test]
    fn cutoffs_read_as_such() {
        for c in [Cutoff::Idle, Cutoff::Login, Cutoff::Command, Cutoff::Evicted] {
            let e = cut(c);
            assert_eq!(cutoff(&e), Some(c));
            assert!(c != Cutoff::Evicted || e.kind() == io::ErrorKind::ConnectionAborted);
            assert!(c == Cutoff::Evicted || is_timeout(&e), "{c:?}");
        }
        assert_eq!(cutoff(&io::Error::from(io::ErrorKind::WouldBlock)), None);
        assert_eq!(LineError::Io(cut(Cutoff::Login)).to_string(), "not logged in within the login timeout");
    }

    #[test]
    fn loopback() {
        for (ip, want) in
            [("127.0.0.1", true), ("127.1.2.3", true), ("::1", true), ("::ffff:127.0.0.1", true), ("10.0.0.1", false)]
        {
            assert_eq!(is_loopback(ip.parse().unwrap()), want, "{ip}");
        }
    }
}

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
//! STARTTLS/STLS (RFC 2595 §3.1, RFC 3501 §6.2.1): [`Conn::start_tls`]
//! refuses to start when plaintext input is already buffered, since bytes
//! sent before the handshake must never be taken as if they came over TLS
//! (the CVE-2011-0411 class of command injection).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

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

/// How long a closing connection waits to send its TLS close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
            LineError::Io(e) if is_timeout(e) => f.write_str("idle timeout"),
            LineError::Io(e) => write!(f, "{e}"),
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

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
    /// Only while `start_tls` swaps the stream, or after it failed.
    Closed,
}

/// A client connection. `Write` appends to an output buffer that goes to
/// the peer on `flush` (or when it grows large, for long bodies): one
/// response, one flush.
pub struct Conn {
    stream: Stream,
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
            stream: Stream::Plain(stream),
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
        if let Some(sock) = self.socket() {
            let _ = sock.set_read_timeout(t);
            let _ = sock.set_write_timeout(t);
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

    /// Reads one line (CRLF or LF), without its line end.
    ///
    /// A line of more than `max` bytes (not counting the line end) is read
    /// to its end and thrown away, and the answer is [`LineError::TooLong`];
    /// the next call reads the line after it.
    pub fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        let mut discarding = false;
        loop {
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
        use std::os::fd::AsRawFd;
        match &self.stream {
            Stream::Plain(s) => Some(s.as_raw_fd()),
            Stream::Tls(t) => Some(t.sock.as_raw_fd()),
            Stream::Closed => None,
        }
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

    fn socket(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(&s.sock),
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
            let _ = tls.sock.set_write_timeout(Some(CLOSE_TIMEOUT));
            tls.conn.send_close_notify();
            while tls.conn.wants_write() {
                if !matches!(tls.conn.write_tls(&mut tls.sock), Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
}

fn complete_handshake(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
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
            Err(LineError::Io(e)) => assert!(is_timeout(&e), "{e}"),
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

    #[test]
    fn loopback() {
        for (ip, want) in
            [("127.0.0.1", true), ("127.1.2.3", true), ("::1", true), ("::ffff:127.0.0.1", true), ("10.0.0.1", false)]
        {
            assert_eq!(is_loopback(ip.parse().unwrap()), want, "{ip}");
        }
    }
}

//! The read side the benchmark's POP3 and IMAP clients share: a TCP
//! connection to 127.0.0.1 with one reusable read buffer, lines found with
//! memchr and required to end in CRLF, runs of octets taken as they come
//! (IMAP literals), and the wait for the server to close after QUIT or
//! LOGOUT. Every error starts with `who` ("postroom user carol").

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Res;

pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Octets read from the socket so far.
    read_octets: u64,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`; reads and writes time out after
    /// `reply_timeout`. `buf` is the size of the read buffer (it grows for
    /// longer lines).
    pub fn connect(who: &str, port: u16, reply_timeout: Duration, buf: usize) -> Res<Conn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("{who}: connect to {addr}: {e}"))?;
        s.set_read_timeout(Some(reply_timeout)).map_err(|e| format!("{who}: {e}"))?;
        s.set_write_timeout(Some(reply_timeout)).map_err(|e| format!("{who}: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("{who}: {e}"))?;
        Ok(Conn { s, buf: vec![0; buf.max(512)], pos: 0, end: 0, read_octets: 0 })
    }

    /// Whether every octet read so far has been taken.
    pub fn drained(&self) -> bool {
        self.pos == self.end
    }

    /// Octets read and taken so far (what is still buffered not counted).
    pub fn consumed(&self) -> u64 {
        self.read_octets - (self.end - self.pos) as u64
    }

    /// Fills the buffer with at least one more octet.
    fn fill(&mut self, who: &str) -> Res<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        let n = loop {
            match self.s.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(format!("{who}: no reply in time"))
                }
                Err(e) => return Err(format!("{who}: read: {e}")),
            }
        };
        if n == 0 {
            return Err(format!("{who}: connection closed by the server"));
        }
        self.end += n;
        self.read_octets += n as u64;
        Ok(())
    }

    /// One line with its CRLF. Errors at end of file, on a read error and
    /// on a line that does not end in CRLF.
    pub fn line(&mut self, who: &str) -> Res<&[u8]> {
        let line_end = loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..self.end]) {
                break self.pos + i + 1;
            }
            self.fill(who)?;
        };
        let start = self.pos;
        self.pos = line_end;
        let l = &self.buf[start..line_end];
        if l.len() < 2 || l[l.len() - 2] != b'\r' {
            return Err(format!("{who}: line without CRLF: {:?}", String::from_utf8_lossy(l)));
        }
        Ok(l)
    }

    /// The next octets, at least one and at most `max` (not 0): those
    /// buffered, or else what the next read brings.
    pub fn take(&mut self, who: &str, max: u64) -> Res<&[u8]> {
        if self.drained() {
            self.fill(who)?;
        }
        let n = max.min((self.end - self.pos) as u64) as usize;
        self.pos += n;
        Ok(&self.buf[self.pos - n..self.pos])
    }

    /// After the reply to `command` (QUIT, LOGOUT): waits for the server to
    /// close the connection, so that TIME_WAIT is on the server's side and
    /// a session is complete only when the server is done with it.
    pub fn wait_close(&mut self, who: &str, command: &str) -> Res<()> {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(format!("{who}: data after the reply to {command}")),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A reset after the reply still ends the session.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(format!("{who}: waiting for close after {command}: {e}")),
            }
        }
    }
}

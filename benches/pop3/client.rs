//! A small POP3 client for the benchmark: one reusable read buffer, lines
//! found with memchr (benches/common/conn.rs), and a check on every reply.
//! Any `-ERR`, a line without CRLF, a closed connection or a wrong count is
//! an error that names the server, the user and the command.

use std::io::Write;
use std::time::Duration;

use super::common::conn::Conn;
use super::common::Res;

/// How long the client waits for any reply before it calls the server hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pop3 {
    c: Conn,
    /// "postroom user c07": the start of every error message.
    who: String,
}

impl Pop3 {
    /// Connects to 127.0.0.1:`port` and reads the greeting. `buf` is the
    /// size of the read buffer (it grows for longer lines).
    pub fn connect(server: &str, port: u16, buf: usize) -> Res<Pop3> {
        let who = server.to_string();
        let c = Conn::connect(&who, port, REPLY_TIMEOUT, buf)?;
        let mut p = Pop3 { c, who };
        let g = p.status("greeting")?;
        if !g.starts_with("+OK") {
            return Err(format!("{}: greeting {g:?}", p.who));
        }
        Ok(p)
    }

    /// One line with its CRLF.
    fn line(&mut self) -> Res<&[u8]> {
        self.c.line(&self.who)
    }

    /// A status line without CRLF.
    fn status(&mut self, what: &str) -> Res<String> {
        let who = self.who.clone();
        let l = self.line().map_err(|e| format!("{e} (waiting for the reply to {what})"))?;
        match std::str::from_utf8(&l[..l.len() - 2]) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(format!("{who}: reply to {what} is not UTF-8")),
        }
    }

    fn send(&mut self, line: &str) -> Res<()> {
        let mut b = Vec::with_capacity(line.len() + 2);
        b.extend_from_slice(line.as_bytes());
        b.extend_from_slice(b"\r\n");
        self.c.s.write_all(&b).map_err(|e| format!("{}: write: {e}", self.who))
    }

    /// Sends `line`, reads the status line, requires `+OK`.
    pub fn cmd(&mut self, line: &str) -> Res<String> {
        let shown = if line.starts_with("PASS ") { "PASS ********" } else { line };
        self.send(line)?;
        let r = self.status(shown)?;
        if !r.starts_with("+OK") {
            return Err(format!("{}: {shown} -> {r}", self.who));
        }
        Ok(r)
    }

    /// USER and PASS.
    pub fn login(&mut self, user: &str, pass: &str) -> Res<()> {
        self.who = format!("{} user {user}", self.who);
        self.cmd(&format!("USER {user}"))?;
        self.cmd(&format!("PASS {pass}"))?;
        Ok(())
    }

    /// STAT: messages and octets.
    pub fn stat(&mut self) -> Res<(u32, u64)> {
        let r = self.cmd("STAT")?;
        let mut w = r.split_ascii_whitespace().skip(1);
        let n = w.next().and_then(|v| v.parse().ok());
        let size = w.next().and_then(|v| v.parse().ok());
        match (n, size) {
            (Some(n), Some(s)) => Ok((n, s)),
            _ => Err(format!("{}: STAT -> {r}", self.who)),
        }
    }

    /// Calls `f` with every data line of a multi-line reply (CRLF kept,
    /// still dot-stuffed), up to the final ".".
    fn data(&mut self, what: &str, mut f: impl FnMut(&[u8]) -> Res<()>) -> Res<()> {
        loop {
            let l = self.line().map_err(|e| format!("{e} (inside the reply to {what})"))?;
            if l == b".\r\n" {
                return Ok(());
            }
            f(l)?;
        }
    }

    /// LIST: the size of each message, in order. Requires the numbers to
    /// run 1, 2, 3...
    pub fn list(&mut self) -> Res<Vec<u64>> {
        self.cmd("LIST")?;
        let who = self.who.clone();
        let mut sizes = Vec::new();
        self.data("LIST", |l| {
            let t = std::str::from_utf8(&l[..l.len() - 2]).map_err(|_| format!("{who}: LIST line not UTF-8"))?;
            let mut w = t.split(' ');
            let n: Option<usize> = w.next().and_then(|v| v.parse().ok());
            let s: Option<u64> = w.next().and_then(|v| v.parse().ok());
            match (n, s) {
                (Some(n), Some(s)) if n == sizes.len() + 1 => {
                    sizes.push(s);
                    Ok(())
                }
                _ => Err(format!("{who}: LIST line {t:?}")),
            }
        })?;
        Ok(sizes)
    }

    /// CAPA: how many capabilities.
    pub fn capa(&mut self) -> Res<usize> {
        self.cmd("CAPA")?;
        let mut n = 0;
        self.data("CAPA", |_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// UIDL: how many lines (each "n uid").
    pub fn uidl(&mut self) -> Res<usize> {
        self.cmd("UIDL")?;
        let who = self.who.clone();
        let mut n = 0;
        self.data("UIDL", |l| {
            n += 1;
            if l.len() < 5 || !l.contains(&b' ') {
                return Err(format!("{who}: UIDL line {:?}", String::from_utf8_lossy(l)));
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// RETR `n`: reads the message to its end and checks that it has
    /// `want` octets once un-stuffed. With `keep`, the message's bytes go
    /// there.
    pub fn retr(&mut self, n: usize, want: u64, mut keep: Option<&mut Vec<u8>>) -> Res<u64> {
        let what = format!("RETR {n}");
        self.cmd(&what)?;
        let mut got = 0u64;
        self.data(&what, |l| {
            let l = if l[0] == b'.' { &l[1..] } else { l };
            got += l.len() as u64;
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(l);
            }
            Ok(())
        })?;
        if got != want {
            return Err(format!("{}: RETR {n} gave {got} octets, LIST said {want}", self.who));
        }
        Ok(got)
    }

    /// QUIT, then waits for the server to close the connection (so that
    /// TIME_WAIT is on the server's side and a session is complete only
    /// when the server is done with it).
    pub fn quit(mut self) -> Res<()> {
        self.cmd("QUIT")?;
        if !self.c.drained() {
            return Err(format!("{}: data after the reply to QUIT", self.who));
        }
        self.c.wait_close(&self.who, "QUIT")
    }
}

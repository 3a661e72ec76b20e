//! Multi-line POP3 responses (RFC 1939 section 3): lines that start with
//! "." get one more, and the response ends with CRLF "." CRLF. The
//! message bytes stream through from the store without a copy of the
//! whole message.

use std::io::{self, Write};

/// Byte-stuffs what is written through it.
pub struct DotStuffer<'w, W: Write> {
    inner: &'w mut W,
    at_line_start: bool,
    last: [u8; 2],
    /// Outlook hangs on NUL bytes in POP3 output: write 0x80 instead.
    no_nuls: bool,
    /// Written before the first byte, and only if one comes: the `+OK`
    /// line is not sent for a read that fails before it starts.
    prefix: Option<Vec<u8>>,
    /// Stop after this many lines of the body (TOP); `None` for all.
    pub lines_left: Option<u32>,
    written: u64,
}

/// The error that [`DotStuffer`] returns once TOP's line count is reached,
/// to stop the store's streaming early.
#[derive(Debug)]
pub struct Enough;

impl std::fmt::Display for Enough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("enough lines")
    }
}

impl std::error::Error for Enough {}

impl<'w, W: Write> DotStuffer<'w, W> {
    pub fn new(inner: &'w mut W, no_nuls: bool, prefix: Vec<u8>) -> Self {
        DotStuffer {
            inner,
            at_line_start: true,
            last: [b'\r', b'\n'],
            no_nuls,
            prefix: Some(prefix),
            lines_left: None,
            written: 0,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if let Some(p) = self.prefix.take() {
            self.inner.write_all(&p)?;
        }
        Ok(())
    }

    /// True once the first byte (the prefix) went out: from then on the
    /// response can only be completed or the session ended.
    pub fn started(&self) -> bool {
        self.prefix.is_none()
    }

    /// Ends the response: CRLF if the data did not end with one, then ".".
    pub fn finish(mut self) -> io::Result<u64> {
        self.start()?;
        if self.written > 0 && self.last != [b'\r', b'\n'] {
            self.inner.write_all(b"\r\n")?;
        }
        self.inner.write_all(b".\r\n")?;
        Ok(self.written)
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.no_nuls && data.contains(&0) {
            let cleaned: Vec<u8> = data.iter().map(|&b| if b == 0 { 0x80 } else { b }).collect();
            self.inner.write_all(&cleaned)?;
        } else {
            self.inner.write_all(data)?;
        }
        self.written += data.len() as u64;
        if data.len() >= 2 {
            self.last = [data[data.len() - 2], data[data.len() - 1]];
        } else {
            self.last = [self.last[1], data[0]];
        }
        Ok(())
    }
}

impl<W: Write> Write for DotStuffer<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.start()?;
        let mut rest = buf;
        while !rest.is_empty() {
            if self.lines_left == Some(0) {
                return Err(io::Error::other(Enough));
            }
            if self.at_line_start && rest[0] == b'.' {
                self.inner.write_all(b".")?;
            }
            let (piece, line_done) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..=i], true),
                None => (rest, false),
            };
            self.put(piece)?;
            self.at_line_start = line_done;
            if line_done {
                if let Some(n) = self.lines_left.as_mut() {
                    *n -= 1;
                }
            }
            rest = &rest[piece.len()..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(input: &[&[u8]], no_nuls: bool, lines: Option<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = DotStuffer::new(&mut out, no_nuls, b"+OK\r\n".to_vec());
        s.lines_left = lines;
        for piece in input {
            if s.write_all(piece).is_err() {
                break;
            }
        }
        s.finish().unwrap();
        out
    }

    #[test]
    fn table() {
        assert_eq!(stuffed(&[b"a\r\n.b\r\n..c\r\n"], false, None), b"+OK\r\na\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\r", b"\n.", b"x"], false, None), b"+OK\r\na\r\n..x\r\n.\r\n");
        assert_eq!(stuffed(&[b".\r\n"], false, None), b"+OK\r\n..\r\n.\r\n");
        assert_eq!(stuffed(&[], false, None), b"+OK\r\n.\r\n");
        assert_eq!(stuffed(&[b"no end"], false, None), b"+OK\r\nno end\r\n.\r\n");
        assert_eq!(stuffed(&[b"n\0l\r\n"], true, None), b"+OK\r\nn\x80l\r\n.\r\n");
        assert_eq!(stuffed(&[b"n\0l\r\n"], false, None), b"+OK\r\nn\0l\r\n.\r\n");
        assert_eq!(stuffed(&[b"1\r\n2\r\n3\r\n"], false, Some(2)), b"+OK\r\n1\r\n2\r\n.\r\n");
    }
}

//! Between the bytes on disk and the bytes a client sees.
//!
//! On disk (mbox): LF line ends, `From ` lines quoted (mboxrd: `^>*From `
//! gains one `>`; mboxo: `^From ` gains one), state headers present. On the
//! wire: CRLF line ends, quoting removed (mboxrd only), state headers
//! hidden. [`stored`] goes one way, [`Served`] the other, so that a message
//! appended with CRLF line ends comes back byte for byte.

use std::io::{self, Write};

use super::scan::is_quoted_from;
use super::state;
use super::MboxFormat;

/// Turns message content as received (APPEND, delivery) into the form
/// stored on disk: state headers a sender put in are dropped, CRLF becomes
/// LF, and `From ` lines are quoted. The result does not include the
/// `From_` line or the separator newline.
pub fn stored(content: &[u8], format: MboxFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut in_header = true;
    let mut dropping = false;
    let mut rest = content;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..=i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        if in_header {
            if line == b"\n" || line == b"\r\n" {
                in_header = false;
            } else if line[0] == b' ' || line[0] == b'\t' {
                if dropping {
                    continue;
                }
            } else {
                dropping = state::classify(line).is_some();
                if dropping {
                    continue;
                }
            }
        }
        let quote = match format {
            MboxFormat::Mboxrd => line.starts_with(b"From ") || is_quoted_from(line),
            MboxFormat::Mboxo => line.starts_with(b"From "),
        };
        if quote {
            out.push(b'>');
        }
        if let Some(body) = line.strip_suffix(b"\r\n") {
            out.extend_from_slice(body);
            out.push(b'\n');
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Streams stored bytes out in wire form: LF to CRLF, mboxrd unquoting,
/// and (in the header) hidden state headers dropped. Feed it bytes in any
/// pieces; it keeps the line state between them.
pub struct Served<'w, W: Write + ?Sized> {
    out: &'w mut W,
    unquote: bool,
    in_header: bool,
    /// A partial line carried to the next piece (only for lines that start
    /// with `>` or, in the header, with anything: they need the whole line).
    carry: Vec<u8>,
    at_line_start: bool,
    prev_cr: bool,
    written: u64,
    /// Output gathered here and handed on in large pieces, so the writer
    /// below (a socket buffer, byte-stuffing) sees few calls.
    obuf: Vec<u8>,
}

/// Output is handed on when this much has gathered.
const OUT_CHUNK: usize = 32 * 1024;

impl<'w, W: Write + ?Sized> Served<'w, W> {
    /// `in_header`: the bytes start at the first header line.
    pub fn new(out: &'w mut W, unquote: bool, in_header: bool) -> Self {
        Served {
            out,
            unquote,
            in_header,
            carry: Vec::new(),
            at_line_start: true,
            prev_cr: false,
            written: 0,
            obuf: Vec::new(),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written + self.obuf.len() as u64
    }

    pub fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if !self.carry.is_empty() || (self.at_line_start && (self.in_header || data[0] == b'>')) {
                // Collect a whole line first.
                match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        self.carry.extend_from_slice(&data[..=i]);
                        data = &data[i + 1..];
                        let line = std::mem::take(&mut self.carry);
                        self.line(&line)?;
                        self.carry = line;
                        self.carry.clear();
                    }
                    None => {
                        self.carry.extend_from_slice(data);
                        return Ok(());
                    }
                }
            } else if self.in_header {
                // The rest of a header line cut by the previous piece.
                let upto = memchr::memchr(b'\n', data).map_or(data.len(), |i| i + 1);
                self.copy_crlf(&data[..upto])?;
                self.at_line_start = data[upto - 1] == b'\n';
                data = &data[upto..];
            } else if !self.unquote {
                // Body, nothing to unquote: copy everything.
                self.copy_crlf(data)?;
                self.at_line_start = data[data.len() - 1] == b'\n';
                return Ok(());
            } else {
                // Body: copy up to the next line that starts with '>'.
                match memchr::memmem::find(data, b"\n>") {
                    Some(i) => {
                        self.copy_crlf(&data[..=i])?;
                        self.at_line_start = true;
                        data = &data[i + 1..];
                    }
                    None => {
                        self.copy_crlf(data)?;
                        self.at_line_start = data[data.len() - 1] == b'\n';
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.in_header {
            if line == b"\n" || line == b"\r\n" {
                self.in_header = false;
            } else if line[0] != b' ' && line[0] != b'\t' && state::classify(line).is_some() {
                // State headers are single lines: what follows folded is
                // the message's own (see scan.rs).
                return Ok(());
            }
        }
        let line = if self.unquote && is_quoted_from(line) { &line[1..] } else { line };
        self.copy_crlf(line)?;
        self.at_line_start = line.last() == Some(&b'\n');
        Ok(())
    }

    /// Writes `data` with each LF not preceded by CR written as CRLF.
    fn copy_crlf(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.obuf.reserve(data.len() + data.len() / 32 + 8);
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', data) {
            let prev_cr = if i == 0 { self.prev_cr } else { data[i - 1] == b'\r' };
            if !prev_cr {
                self.obuf.extend_from_slice(&data[start..i]);
                self.obuf.extend_from_slice(b"\r\n");
                start = i + 1;
            }
        }
        self.obuf.extend_from_slice(&data[start..]);
        self.prev_cr = data[data.len() - 1] == b'\r';
        if self.obuf.len() >= OUT_CHUNK {
            self.hand_on()?;
        }
        Ok(())
    }

    fn hand_on(&mut self) -> io::Result<()> {
        self.out.write_all(&self.obuf)?;
        self.written += self.obuf.len() as u64;
        self.obuf.clear();
        Ok(())
    }

    /// Flushes a final line without newline.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line)?;
        }
        self.hand_on()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(stored: &[u8], unquote: bool, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = Served::new(&mut out, unquote, true);
        for c in stored.chunks(piece.max(1)) {
            s.push(c).unwrap();
        }
        s.finish().unwrap();
        out
    }

    #[test]
    fn round_trip_table() {
        let cases: &[&[u8]] = &[
            b"Subject: a\r\n\r\nbody\r\n",
            b"Subject: a\r\n\r\nFrom me\r\n>From you\r\n>>From x\r\n",
            b"Subject: a\r\n\r\nno newline at end",
            b"",
            b"Subject: only header",
            b"\r\n\r\nempty header\r\n",
            b"From: a\r\nX-Other: 1\r\n\r\nFrom \r\n\r\n",
            b"Subject: cr\rin line\r\n\r\nbody\rwith cr\r\n",
            b"Subject: 8bit \xe9\xff\x00\r\n\r\n\x00\x01\xfe\r\n",
        ];
        for &c in cases {
            let st = stored(c, MboxFormat::Mboxrd);
            assert!(!st.contains(&b'\r') || c.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
            for piece in [1, 2, 3, 7, 4096] {
                assert_eq!(served(&st, true, piece), c, "{:?} piece {piece}", String::from_utf8_lossy(c));
            }
        }
    }

    #[test]
    fn strips_state_headers_from_incoming_mail() {
        let c = b"X-UID: 99\r\nStatus: RO\r\nSubject: hi\r\nX-Keywords: a\r\n  b\r\nContent-Length: 3\r\n\r\nX-UID: body\r\n";
        assert_eq!(stored(c, MboxFormat::Mboxrd), b"Subject: hi\n\nX-UID: body\n");
    }

    #[test]
    fn hides_state_headers_on_the_way_out() {
        let st = b"X-IMAPbase: 1 0000000002\nStatus: RO\nX-Status: \nX-Keywords:     \nX-UID: 1\nSubject: x\n\nbody\n";
        assert_eq!(served(st, true, 5), b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn mboxo_quotes_only_from() {
        assert_eq!(stored(b"a\n\nFrom x\n>From y\n", MboxFormat::Mboxo), b"a\n\n>From x\n>From y\n");
        assert_eq!(served(b"a\n\n>From x\n", false, 3), b"a\r\n\r\n>From x\r\n");
    }
}

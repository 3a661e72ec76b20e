//! Between the bytes on disk and the bytes a client sees.
//!
//! On disk (mbox): LF line ends, `From ` lines quoted (mboxrd: `^>*From `
//! gains one `>`; mboxo: `^From ` gains one), state headers present. On the
//! wire: CRLF line ends, quoting removed (mboxrd only), state headers
//! hidden. [`stored`] goes one way, [`Wire`] the other, so that a message
//! appended with CRLF line ends comes back byte for byte.

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

/// A decision at the start of a line needs at most this many bytes of
/// it: the name of a state header ([`state::classify`] looks at 20), or
/// the `From ` after a run of `>`.
pub const LOOKAHEAD: usize = 20;

/// Where in a line the transform is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the first byte of a line: nothing decided yet.
    Start,
    /// Inside a line that is sent: copy to its end.
    Copy,
    /// Inside a hidden state header line: drop to its end.
    Skip,
    /// Inside the run of `>` that starts a line, the first `>` held back:
    /// it is dropped if `From ` follows the run (mboxrd unquoting), else
    /// sent when the run ends. The others go out as they come, since the
    /// output starts with them either way.
    Gt,
}

/// Turns stored bytes into wire bytes, fed in pieces of any size: LF to
/// CRLF, mboxrd unquoting, and in the header the hidden state headers
/// dropped. The state between pieces is a few bytes, never a line: a
/// message of one 30 MB line streams like any other.
///
/// [`Wire::push`] consumes a prefix of what it is given and may stop
/// short only at the start of a line whose fate depends on bytes not yet
/// given (at most [`LOOKAHEAD`] of them); the caller gives those bytes
/// again, with more, on the next call. The output for one input byte is
/// written whole, so the wire bytes written so far always correspond to
/// the input consumed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    line: Line,
    /// The last byte copied was CR (a LF right after it is not bare).
    prev_cr: bool,
    in_header: bool,
    unquote_header: bool,
    unquote_body: bool,
    /// Header bytes dropped so far (hidden lines).
    hidden: u64,
}

impl Wire {
    /// A transform that starts at the first header line (`in_header`) or
    /// in the body. `unquote_header` and `unquote_body`: remove one `>`
    /// from lines matching `^>+From ` there (mboxrd; the index counts
    /// sizes the same way, see scan.rs). The header ends at its blank
    /// line, or when the caller says so ([`Wire::start_body`]).
    pub fn new(in_header: bool, unquote_header: bool, unquote_body: bool) -> Wire {
        Wire { line: Line::Start, prev_cr: false, in_header, unquote_header, unquote_body, hidden: 0 }
    }

    /// Header bytes consumed and dropped so far (hidden state lines).
    pub fn hidden(&self) -> u64 {
        self.hidden
    }

    /// True in the header.
    pub fn in_header(&self) -> bool {
        self.in_header
    }

    /// True at the start of a line, with nothing held back.
    pub fn at_line_start(&self) -> bool {
        self.line == Line::Start
    }

    /// The header ends here, whatever its last line was (the index knows
    /// where the body starts). Sends what was held back.
    pub fn start_body(&mut self, out: &mut Vec<u8>) {
        self.finish(out);
        self.in_header = false;
    }

    /// The place moved to the start of a line (the reader found its
    /// message again elsewhere, see reader.rs): a hidden line being
    /// dropped ends there. Other states stay as they are.
    pub fn leave_hidden_line(&mut self) {
        if self.line == Line::Skip {
            self.line = Line::Start;
        }
    }

    /// The end of the data: sends what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.line == Line::Gt {
            out.push(b'>');
        }
        self.line = Line::Start;
        self.prev_cr = false;
    }

    /// Appends the wire form of as much of `data` as can be decided to
    /// `out` and returns how many bytes of `data` that was. With `at_end`,
    /// `data` is all there is, and all of it is consumed (call
    /// [`Wire::finish`] after). Otherwise fewer bytes are consumed only
    /// when the last line of `data` starts fewer than [`LOOKAHEAD`] bytes
    /// before its end and needs more to be decided.
    pub fn push(&mut self, data: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            if !self.in_header && (self.line == Line::Copy || (self.line == Line::Start && rest[0] != b'>')) {
                // Body: everything up to the next line that needs a
                // decision (one starting with `>`, when unquoting) is
                // copied in one piece; a run of ordinary lines costs no
                // work per line.
                let span = if self.unquote_body {
                    memchr::memmem::find(rest, b"\n>").map_or(rest.len(), |p| p + 1)
                } else {
                    rest.len()
                };
                self.copy_crlf(&rest[..span], out);
                i += span;
                self.line = if rest[span - 1] == b'\n' { Line::Start } else { Line::Copy };
                continue;
            }
            match self.line {
                Line::Start => {
                    if self.in_header && rest[0] != b' ' && rest[0] != b'\t' {
                        // A state header is known by its name; a line that
                        // is not one may be the blank line ending the header.
                        let window = &rest[..rest.len().min(LOOKAHEAD)];
                        let line = match memchr::memchr(b'\n', window) {
                            Some(nl) => &window[..=nl],
                            None if window.len() < LOOKAHEAD && !at_end => return i,
                            None => window,
                        };
                        if is_hidden(line) {
                            self.line = Line::Skip;
                            continue;
                        }
                        if line == b"\n" || line == b"\r\n" {
                            out.extend_from_slice(b"\r\n");
                            i += line.len();
                            self.in_header = false;
                            continue;
                        }
                    }
                    let unquote = if self.in_header { self.unquote_header } else { self.unquote_body };
                    if unquote && rest[0] == b'>' {
                        i += 1;
                        self.line = Line::Gt;
                    } else {
                        self.line = Line::Copy;
                    }
                    self.prev_cr = false;
                }
                Line::Gt => {
                    let run = rest.iter().take_while(|&&b| b == b'>').count();
                    out.extend_from_slice(&rest[..run]);
                    i += run;
                    let after = &data[i..];
                    if after.is_empty() {
                        // The run goes on in the next piece (or the data
                        // ends: `finish` sends the held `>`).
                        break;
                    }
                    if after.len() < 5 && !at_end && b"From "[..after.len()] == *after {
                        return i;
                    }
                    if !after.starts_with(b"From ") {
                        out.push(b'>');
                    }
                    self.line = Line::Copy;
                }
                Line::Copy => match memchr::memchr(b'\n', rest) {
                    Some(nl) => {
                        self.copy_crlf(&rest[..=nl], out);
                        i += nl + 1;
                        self.line = Line::Start;
                    }
                    None => {
                        self.copy_crlf(rest, out);
                        i = data.len();
                    }
                },
                Line::Skip => {
                    let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |nl| {
                        self.line = Line::Start;
                        nl + 1
                    });
                    self.hidden += n as u64;
                    i += n;
                }
            }
        }
        i
    }

    /// Appends `data` with each LF not preceded by CR written as CRLF.
    fn copy_crlf(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(data.len() + data.len() / 32 + 2);
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', data) {
            let prev_cr = if i == 0 { self.prev_cr } else { data[i - 1] == b'\r' };
            if !prev_cr {
                out.extend_from_slice(&data[start..i]);
                out.extend_from_slice(b"\r\n");
                start = i + 1;
            }
        }
        out.extend_from_slice(&data[start..]);
        self.prev_cr = data[data.len() - 1] == b'\r';
    }
}

/// Whether a header line is a hidden state line, decided as [`Wire`]
/// decides it: from `line`, the line's first [`LOOKAHEAD`] bytes (or the
/// whole line, newline included, when shorter). State headers are single
/// lines: a line folded under one is the message's own (see scan.rs).
pub fn is_hidden(line: &[u8]) -> bool {
    !line.is_empty() && line[0] != b' ' && line[0] != b'\t' && state::classify(line).is_some()
}

/// The wire form of a whole stored message (header and body in one
/// piece, mboxrd-unquoted with `unquote`), in memory.
pub fn served(stored: &[u8], unquote: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + stored.len() / 16);
    let mut w = Wire::new(true, unquote, unquote);
    w.push(stored, true, &mut out);
    w.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form of `stored`, fed in pieces of `piece` bytes the way
    /// a reader does: unconsumed bytes are given again with the next.
    fn served_in(stored: &[u8], unquote: bool, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Wire::new(true, unquote, unquote);
        let mut at = 0;
        while at < stored.len() {
            let end = (at + piece.max(1)).min(stored.len());
            let n = w.push(&stored[at..end], end == stored.len(), &mut out);
            assert!(n > 0 || end - at < LOOKAHEAD, "no progress at {at} with {} bytes", end - at);
            if n == 0 {
                // Too few bytes to decide: give more next time.
                let more = (at + LOOKAHEAD).min(stored.len());
                let n = w.push(&stored[at..more], more == stored.len(), &mut out);
                at += n;
                continue;
            }
            at += n;
        }
        w.finish(&mut out);
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
            b"Subject: gt\r\n\r\n>\r\n>>\r\n>>>Fro\r\n>From\r\n>From \r\n>",
            b">From header\r\nX: y\r\n\r\n>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>From deep\r\n",
        ];
        for &c in cases {
            let st = stored(c, MboxFormat::Mboxrd);
            assert!(!st.contains(&b'\r') || c.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
            for piece in [1, 2, 3, 7, 19, 20, 21, 4096] {
                assert_eq!(served_in(&st, true, piece), c, "{:?} piece {piece}", String::from_utf8_lossy(c));
            }
            assert_eq!(served(&st, true), c);
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
        for piece in [1, 5, 20, 100] {
            assert_eq!(served_in(st, true, piece), b"Subject: x\r\n\r\nbody\r\n");
        }
        // A state line that ends the data without a newline is hidden too.
        assert_eq!(served(b"Subject: x\nX-UID: 5", true), b"Subject: x\r\n");
    }

    #[test]
    fn mboxo_quotes_only_from() {
        assert_eq!(stored(b"a\n\nFrom x\n>From y\n", MboxFormat::Mboxo), b"a\n\n>From x\n>From y\n");
        assert_eq!(served_in(b"a\n\n>From x\n", false, 3), b"a\r\n\r\n>From x\r\n");
    }

    #[test]
    fn long_lines_hold_nothing() {
        // A 1 MB line starting with '>' and a 1 MB header line: pushed in
        // 4 KiB pieces, each piece is consumed whole once decided.
        let mut st = b"X-Long: ".to_vec();
        st.extend(std::iter::repeat_n(b'h', 1 << 20));
        st.extend_from_slice(b"\n\n>");
        st.extend(std::iter::repeat_n(b'>', 1 << 20));
        st.extend_from_slice(b"From x\n");
        let mut w = Wire::new(true, true, true);
        let mut out = Vec::new();
        let mut at = 0;
        while at < st.len() {
            let end = (at + 4096).min(st.len());
            let n = w.push(&st[at..end], end == st.len(), &mut out);
            assert!(n + LOOKAHEAD >= end - at, "held {} bytes back", end - at - n);
            at += n;
        }
        w.finish(&mut out);
        assert_eq!(out.len(), st.len() + 2);
        assert!(out.ends_with(b">From x\r\n"));
    }
}

//! Reading a message out of its mbox a batch at a time, so that no lock
//! is held while its bytes go to a client (DESIGN.md, Storage: "Locks are
//! short").
//!
//! A [`Reader`] serves one part of one message (the whole message, its
//! header or its text, optionally a range of it) in wire form
//! ([`transform::Wire`]). Each [`Reader::fill`] runs under the mailbox's
//! read locks (the caller's registry guard, the fcntl read lock taken
//! here), appends at most about `limit` bytes, and returns; the caller
//! lets go of the locks and writes the batch out.
//!
//! Between two batches the file may change. An append by the MTA moves
//! nothing. A rewrite (an expunge of an earlier message, a flag change
//! that outgrew its padding and rewrote the tail, another program
//! rewriting the file) moves the message, and may change the length of
//! its hidden state lines, which a rewrite renders afresh and may put
//! elsewhere in the header. So the reader keeps its place as something a
//! rewrite preserves: in the body, the offset from the start of the body,
//! whose bytes every rewrite copies unchanged; in the header, how many
//! bytes of visible (not hidden) header lines it has consumed, since the
//! hidden lines are all a rewrite changes there. At each batch it finds
//! the message again by UID in the index and maps its place into the
//! layout it finds. The count of wire bytes sent is what stays fixed.
//!
//! What was sent cannot be taken back, and the client was told how much
//! comes (POP3's `+OK n octets`, an IMAP literal's `{n}`). So at every
//! batch the message must still be the one reading began with: same
//! UIDVALIDITY and UID, the same wire size of message and header, the same
//! body length on disk, the last bytes read before the place still there;
//! and in the end the part must have produced exactly the bytes announced.
//! Otherwise [`StoreError::Diverged`]: the caller ends the session rather
//! than send a wrong byte.
//!
//! Memory: one read buffer of at most [`CHUNK`] bytes (less for a smaller
//! message), a few bytes of transform state, and what the caller lets a
//! batch append: at most `limit` plus one chunk's worth of wire bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::mailbox::Mailbox;
use super::transform::{self, Wire, LOOKAHEAD};
use super::{MboxFormat, StoreError};

/// Bytes read from the file at a time.
pub const CHUNK: usize = 256 << 10;

/// How far one [`Reader::fill`] may go past its `limit`: the wire form
/// of one chunk (each LF may become CRLF), and a held-back `>`.
pub const SLACK: usize = 2 * CHUNK + 1;

/// Stored bytes before the reader's place in the body that are compared
/// with the file at each batch.
const WITNESS: usize = 32;

/// What of a message a [`Reader`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Header, blank line and body (RFC822, BODY[], POP3 RETR).
    Whole,
    /// The header with its blank line (RFC822.HEADER, BODY[HEADER]).
    Header,
    /// The body (RFC822.TEXT, BODY[TEXT]).
    Text,
}

/// Where a message lies in the file, from the index: the header is
/// `[hdr_off, body_off)`, the body `[body_off, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub hdr_off: u64,
    pub body_off: u64,
    pub end: u64,
    /// The body is delimited by Content-Length and is not unquoted.
    pub raw_body: bool,
}

/// Where the reader is, in terms a rewrite preserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the header, `off` bytes from its start, `visible` of them in
    /// lines that are sent.
    Header { off: u64, visible: u64 },
    /// In the body, `off` bytes from its start.
    Body { off: u64 },
    /// The part is done.
    Done,
}

/// One part of one message, served in batches.
#[derive(Debug)]
pub struct Reader {
    uid: u32,
    uidvalidity: u32,
    part: Part,
    /// Wire sizes of the message and its header when reading began.
    size: u64,
    hdr_size: u64,
    /// Wire bytes of the part (before the range is applied).
    total: u64,
    /// Wire bytes of the part produced so far, those skipped included.
    produced: u64,
    /// Wire bytes still to drop before the first one handed out.
    skip: u64,
    /// Wire bytes to hand out in all, and so far.
    len: u64,
    handed: u64,
    layout: Layout,
    place: Place,
    wire: Wire,
    witness: [u8; WITNESS],
    witness_len: usize,
    buf: Vec<u8>,
}

fn read_err(mb: &Mailbox) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| StoreError::io(format!("read {}", mb.path().display()), e)
}

impl Reader {
    /// A reader of `part` of message `i` of `mb` (the caller holds the
    /// registry guard `mb` comes from), with `range` = (origin, count) in
    /// wire bytes of the part, as IMAP's `<origin.count>`: an origin past
    /// the end gives nothing.
    pub fn new(mb: &Mailbox, i: usize, part: Part, range: Option<(u64, u64)>) -> Reader {
        let m = &mb.messages()[i];
        let layout = mb.layout(i);
        let rd = mb.format() == MboxFormat::Mboxrd;
        // The index counts the header unquoted in mboxrd whatever the
        // body is (scan.rs); a Content-Length body is taken as it stands.
        let unquote_body = rd && !layout.raw_body;
        let (total, place, in_header) = match part {
            Part::Whole => (m.size, Place::Header { off: 0, visible: 0 }, true),
            Part::Header => (m.hdr_size, Place::Header { off: 0, visible: 0 }, true),
            Part::Text => (m.size - m.hdr_size.min(m.size), Place::Body { off: 0 }, false),
        };
        let (skip, len) = match range {
            None => (0, total),
            Some((origin, count)) => {
                let skip = origin.min(total);
                (skip, count.min(total - skip))
            }
        };
        Reader {
            uid: m.uid,
            uidvalidity: mb.uidvalidity(),
            part,
            size: m.size,
            hdr_size: m.hdr_size,
            total,
            produced: 0,
            skip,
            len,
            handed: 0,
            layout,
            place: if len == 0 { Place::Done } else { place },
            wire: Wire::new(in_header, rd, unquote_body),
            witness: [0; WITNESS],
            witness_len: 0,
            buf: Vec::new(),
        }
    }

    /// The wire bytes this reader hands out in all: the length to announce.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when it hands out nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The UID of the message.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Wire bytes handed out so far.
    pub fn handed(&self) -> u64 {
        self.handed
    }

    /// True when everything was handed out.
    pub fn is_done(&self) -> bool {
        self.place == Place::Done
    }

    /// Appends the next batch, about `limit` bytes (less at the end), to
    /// `out`, under the mailbox's fcntl read lock; the caller holds the
    /// registry guard `mb` comes from. Returns true when the part is
    /// done. `Changed`: the file changed since it was indexed; refresh
    /// the mailbox and call again (nothing was appended). `Diverged`: the
    /// message is gone or is not what it was; end the session.
    pub fn fill(&mut self, mb: &Mailbox, out: &mut Vec<u8>, limit: usize) -> Result<bool, StoreError> {
        if self.is_done() {
            return Ok(true);
        }
        let start = out.len();
        let res = mb.with_read(|file| self.fill_locked(mb, file, out, limit.max(1)));
        if res.is_err() {
            out.truncate(start);
        }
        res.map(|_| self.is_done())
    }

    fn diverged(&self, mb: &Mailbox, why: &str) -> StoreError {
        log::warn!("store read-diverged path={} uid={} reason={why}", mb.path().display(), self.uid);
        StoreError::Diverged(mb.path().to_path_buf(), self.uid)
    }

    fn fill_locked(&mut self, mb: &Mailbox, file: &File, out: &mut Vec<u8>, limit: usize) -> Result<(), StoreError> {
        // The message, found again.
        if mb.uidvalidity() != self.uidvalidity {
            return Err(self.diverged(mb, "uidvalidity"));
        }
        let Some(i) = mb.position(self.uid) else { return Err(self.diverged(mb, "expunged")) };
        let m = &mb.messages()[i];
        if m.size != self.size || m.hdr_size != self.hdr_size {
            return Err(self.diverged(mb, "size"));
        }
        let layout = mb.layout(i);
        if layout != self.layout {
            self.remap(mb, file, layout)?;
        }
        if let Place::Body { off } = self.place {
            // The bytes just before the place are still those read.
            let k = self.witness_len.min(off as usize);
            if k > 0 {
                let mut w = [0u8; WITNESS];
                file.read_exact_at(&mut w[..k], self.layout.body_off + off - k as u64).map_err(read_err(mb))?;
                if w[..k] != self.witness[self.witness_len - k..self.witness_len] {
                    return Err(self.diverged(mb, "content"));
                }
            }
        }
        let batch_start = out.len();
        let mut work = 0usize;
        while !self.is_done() && out.len() - batch_start < limit && work < limit {
            let (abs, region_end) = match self.place {
                Place::Header { off, .. } => (self.layout.hdr_off + off, self.layout.body_off),
                Place::Body { off } => (self.layout.body_off + off, self.layout.end),
                Place::Done => break,
            };
            let from = out.len();
            if abs >= region_end {
                match self.place {
                    Place::Header { .. } if self.part == Part::Whole => {
                        self.wire.start_body(out);
                        self.place = Place::Body { off: 0 };
                        self.witness_len = 0;
                    }
                    _ => {
                        self.wire.finish(out);
                        self.place = Place::Done;
                    }
                }
                self.hand_out(mb, out, from)?;
                continue;
            }
            let n = ((region_end - abs) as usize).min(CHUNK);
            if self.buf.len() < n {
                // No larger than the message needs: a small message must
                // not leave a large buffer behind.
                self.buf.resize(n.clamp(LOOKAHEAD, CHUNK), 0);
            }
            let buf = &mut self.buf[..n];
            file.read_exact_at(buf, abs).map_err(read_err(mb))?;
            let at_end = abs + n as u64 == region_end;
            let hidden_before = self.wire.hidden();
            let used = self.wire.push(buf, at_end, out) as u64;
            match &mut self.place {
                Place::Header { off, visible } => {
                    *off += used;
                    *visible += used - (self.wire.hidden() - hidden_before);
                }
                Place::Body { off } => {
                    *off += used;
                    let used = used as usize;
                    if used >= WITNESS {
                        self.witness.copy_from_slice(&buf[used - WITNESS..used]);
                        self.witness_len = WITNESS;
                    } else if used > 0 {
                        let keep = self.witness_len.min(WITNESS - used);
                        self.witness.copy_within(self.witness_len - keep..self.witness_len, 0);
                        self.witness[keep..keep + used].copy_from_slice(&buf[..used]);
                        self.witness_len = keep + used;
                    }
                }
                Place::Done => {}
            }
            work += used as usize;
            self.hand_out(mb, out, from)?;
        }
        Ok(())
    }

    /// Applies the range to the wire bytes just produced (`out[from..]`),
    /// and checks the count against the part's size.
    fn hand_out(&mut self, mb: &Mailbox, out: &mut Vec<u8>, from: usize) -> Result<(), StoreError> {
        let new = (out.len() - from) as u64;
        self.produced += new;
        if self.produced > self.total || (self.place == Place::Done && self.produced != self.total) {
            log::error!(
                "store read-size path={} uid={} indexed={} produced={}",
                mb.path().display(),
                self.uid,
                self.total,
                self.produced
            );
            return Err(self.diverged(mb, "length"));
        }
        if self.skip > 0 {
            let d = self.skip.min(new) as usize;
            out.drain(from..from + d);
            self.skip -= d as u64;
        }
        let kept = (out.len() - from) as u64;
        let room = self.len - self.handed;
        if kept >= room {
            out.truncate(from + room as usize);
            self.handed = self.len;
            self.place = Place::Done;
        } else {
            self.handed += kept;
        }
        Ok(())
    }

    /// The message moved: carries the place over into `new`.
    fn remap(&mut self, mb: &Mailbox, file: &File, new: Layout) -> Result<(), StoreError> {
        let old = self.layout;
        if new.end - new.body_off != old.end - old.body_off || new.raw_body != old.raw_body {
            return Err(self.diverged(mb, "body"));
        }
        if let Place::Header { visible, .. } = self.place {
            let Some(off) = visible_offset(file, new, visible, &mut self.buf).map_err(read_err(mb))? else {
                return Err(self.diverged(mb, "header"));
            };
            self.place = Place::Header { off, visible };
            // Between lines, a hidden line being dropped and the start of
            // the next line are the same place.
            self.wire.leave_hidden_line();
        }
        log::debug!(
            "store read-moved path={} uid={} from={} to={}",
            mb.path().display(),
            self.uid,
            old.hdr_off,
            new.hdr_off
        );
        self.layout = new;
        Ok(())
    }
}

/// The offset in the header of `lay` after `visible` bytes of visible
/// lines (hidden lines before it skipped, those after it not). `None`
/// when the header has fewer.
fn visible_offset(file: &File, lay: Layout, visible: u64, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let len = lay.body_off - lay.hdr_off;
    let (mut off, mut seen) = (0u64, 0u64);
    let mut at_line_start = true;
    let mut hidden = false;
    if buf.len() < LOOKAHEAD.max(4096) {
        buf.resize(LOOKAHEAD.max(4096), 0);
    }
    while seen < visible {
        if off >= len {
            return Ok(None);
        }
        let n = ((len - off) as usize).min(buf.len());
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, lay.hdr_off + off)?;
        let mut i = 0;
        while i < n && seen < visible {
            if at_line_start {
                // As the transform decides: from the first LOOKAHEAD bytes,
                // or the line if shorter.
                let window = &chunk[i..n.min(i + LOOKAHEAD)];
                let line = match memchr::memchr(b'\n', window) {
                    Some(nl) => &window[..=nl],
                    None if window.len() < LOOKAHEAD && off + (n as u64) < len => break,
                    None => window,
                };
                hidden = transform::is_hidden(line);
                at_line_start = false;
            }
            let rest = &chunk[i..];
            let seg = memchr::memchr(b'\n', rest).map_or(rest.len(), |nl| nl + 1);
            let take = if hidden { seg } else { seg.min((visible - seen) as usize) };
            if !hidden {
                seen += take as u64;
            }
            i += take;
            if take == seg && rest[seg - 1] == b'\n' {
                at_line_start = true;
            }
        }
        off += i as u64;
        if i == 0 {
            // A line start at the chunk's end: read again from there.
            continue;
        }
    }
    Ok(Some(off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Flags, Mailbox, Options};

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("postroom-reader").tempdir().unwrap()
    }

    fn opts() -> Options {
        Options { fsync: false, ..Options::default() }
    }

    /// Everything `r` hands out, `limit` bytes a batch, with `between`
    /// run after each batch (it may change the mailbox).
    fn drain(mb: &mut Mailbox, mut r: Reader, limit: usize, mut between: impl FnMut(&mut Mailbox, usize)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut batch = 0;
        loop {
            let done = match r.fill(mb, &mut out, limit) {
                Ok(d) => d,
                Err(StoreError::Changed(_)) => {
                    mb.refresh().unwrap();
                    continue;
                }
                Err(e) => panic!("batch {batch}: {e}"),
            };
            if done {
                return out;
            }
            between(mb, batch);
            batch += 1;
        }
    }

    fn message(lines: usize) -> Vec<u8> {
        let mut m = b"From: a@example.org\r\nSubject: reader\r\nX-Long: folded\r\n  continued\r\n\r\n".to_vec();
        for i in 0..lines {
            match i % 5 {
                0 => m.extend_from_slice(b"From the start\r\n"),
                1 => m.extend_from_slice(b">>From quoted\r\n"),
                2 => m.extend_from_slice(b".dot\r\n"),
                _ => m.extend_from_slice(format!("line {i} of some ordinary length\r\n").as_bytes()),
            }
        }
        m
    }

    #[test]
    fn parts_and_ranges_match_the_message() {
        let d = tmp();
        let p = d.path().join("box");
        let mut mb = Mailbox::open(&p, &opts(), true).unwrap();
        let m = message(2000);
        mb.append(&m, Flags::SEEN, &[], None, "a@b").unwrap();
        let split = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for limit in [1, 7, 100, 4096, 1 << 20] {
            let r = Reader::new(&mb, 0, Part::Whole, None);
            assert_eq!(r.len(), m.len() as u64);
            assert_eq!(drain(&mut mb, r, limit, |_, _| {}), m, "whole, limit {limit}");
            let r = Reader::new(&mb, 0, Part::Header, None);
            assert_eq!(drain(&mut mb, r, limit, |_, _| {}), &m[..split], "header, limit {limit}");
            let r = Reader::new(&mb, 0, Part::Text, None);
            assert_eq!(drain(&mut mb, r, limit, |_, _| {}), &m[split..], "text, limit {limit}");
        }
        for (origin, count) in [(0, 10), (5, 1000), (m.len() as u64 - 3, 10), (m.len() as u64 + 5, 10), (17, 0)] {
            let r = Reader::new(&mb, 0, Part::Whole, Some((origin, count)));
            let o = (origin as usize).min(m.len());
            let want = &m[o..(o + count as usize).min(m.len())];
            assert_eq!(r.len(), want.len() as u64);
            assert_eq!(drain(&mut mb, r, 333, |_, _| {}), want, "<{origin}.{count}>");
        }
    }

    /// Between batches another handle on the file rewrites it: an
    /// earlier message expunged, and this one's state grows past its
    /// padding; the bytes come out the same, in the header and the body.
    #[test]
    fn a_rewrite_between_batches_moves_the_place() {
        for limit in [3, 50, 200, 5000] {
            let d = tmp();
            let p = d.path().join("box");
            let mut mb = Mailbox::open(&p, &opts(), true).unwrap();
            mb.append(b"Subject: first\r\n\r\nfirst\r\n", Flags::empty(), &[], None, "a@b").unwrap();
            // Larger than a chunk, so that the place is inside the body.
            let m = message(25_000);
            mb.append(&m, Flags::empty(), &[], None, "a@b").unwrap();
            mb.append(b"Subject: third\r\n\r\nthird\r\n", Flags::empty(), &[], None, "a@b").unwrap();
            let r = Reader::new(&mb, 1, Part::Whole, None);
            let got = drain(&mut mb, r, limit, |_, batch| {
                let mut other = Mailbox::open(&p, &opts(), false).unwrap();
                match batch {
                    0 => {
                        let kws = ["$AVeryLongKeywordIndeed_aaaaaaaaaaaa", "$AnotherLongKeyword_bbbbbbbbbbbbbbb"];
                        other.set_flags(1, Flags::FLAGGED, 0);
                        for k in kws {
                            let b = other.keyword_bit(k).unwrap();
                            let kw = other.messages()[1].keywords | 1 << b;
                            let f = other.messages()[1].flags;
                            other.set_flags(1, f, kw);
                        }
                        other.flush().unwrap();
                    }
                    1 => {
                        let uid = other.messages()[0].uid;
                        other.expunge(&[uid]).unwrap();
                    }
                    2 => {
                        other.append(b"Subject: new\r\n\r\nnew\r\n", Flags::empty(), &[], None, "a@b").unwrap();
                    }
                    _ => {}
                }
            });
            assert!(got == m, "limit {limit}: {} bytes, want {}", got.len(), m.len());
        }
    }

    #[test]
    fn a_message_gone_or_changed_is_diverged() {
        let d = tmp();
        let p = d.path().join("box");
        let mut mb = Mailbox::open(&p, &opts(), true).unwrap();
        mb.append(&message(100), Flags::empty(), &[], None, "a@b").unwrap();
        mb.append(&message(100), Flags::empty(), &[], None, "a@b").unwrap();
        // Expunged under the reader.
        let mut r = Reader::new(&mb, 1, Part::Whole, None);
        let mut out = Vec::new();
        assert!(!r.fill(&mb, &mut out, 100).unwrap());
        let uid = mb.messages()[1].uid;
        mb.expunge(&[uid]).unwrap();
        out.clear();
        assert!(matches!(r.fill(&mb, &mut out, 100), Err(StoreError::Diverged(_, u)) if u == uid));
        assert!(out.is_empty());
        // Replaced by another program with a message of the same size
        // whose bytes differ just before the reader's place (a read goes
        // a chunk at a time: the message is larger than one).
        let big = message(30_000);
        assert!(big.len() > 2 * CHUNK);
        mb.append(&big, Flags::empty(), &[], None, "a@b").unwrap();
        let mut r = Reader::new(&mb, 1, Part::Whole, None);
        out.clear();
        // The header, then one chunk of the body.
        assert!(!r.fill(&mb, &mut out, 1).unwrap());
        assert!(!r.fill(&mb, &mut out, 1).unwrap());
        assert!(out.len() < big.len() && out[..] == big[..out.len()]);
        // The partial line the place is in, as the file has it.
        let line_start = out.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let tail = &out[line_start..];
        assert!(!tail.is_empty() && !tail.contains(&b'\r'), "the place is inside a line");
        let text = std::fs::read(&p).unwrap();
        let at = memchr::memmem::find_iter(&text, tail).last().unwrap() + tail.len() - 1;
        let mut changed = text.clone();
        changed[at] ^= 0x20;
        std::fs::write(&p, &changed).unwrap();
        mb.refresh().unwrap();
        let mut more = Vec::new();
        assert!(matches!(r.fill(&mb, &mut more, 1), Err(StoreError::Diverged(..))));
        assert!(more.is_empty());
        // The file as it was: the same reader goes on to the end.
        std::fs::write(&p, &text).unwrap();
        mb.refresh().unwrap();
        let mut rest = Vec::new();
        while !r.fill(&mb, &mut rest, 1 << 20).unwrap() {}
        out.extend_from_slice(&rest);
        assert!(out == big);
    }

    #[test]
    fn visible_offsets_skip_hidden_lines() {
        let d = tmp();
        let p = d.path().join("f");
        let hdr = b"X-UID: 1\nSubject: s\nStatus: RO\nX-Keywords: a\n  folded\nTo: t\n\n";
        std::fs::write(&p, hdr).unwrap();
        let f = File::open(&p).unwrap();
        let lay = Layout { hdr_off: 0, body_off: hdr.len() as u64, end: hdr.len() as u64, raw_body: false };
        let mut buf = Vec::new();
        let at = |v| visible_offset(&f, lay, v, &mut buf.clone()).unwrap();
        assert_eq!(at(0), Some(0));
        assert_eq!(at(3), Some(9 + 3));
        assert_eq!(at(11), Some(20));
        // "  folded\n" follows a hidden line but is the message's own.
        assert_eq!(at(12), Some(20 + 11 + 14 + 1));
        assert_eq!(at(11 + 9 + 6 + 1), Some(hdr.len() as u64));
        assert_eq!(at(11 + 9 + 6 + 2), None);
        buf.clear();
    }
}

//! The mbox indexer: one pass over the file, finding every message, its
//! header/body split, its size on the wire, and its persisted state.
//!
//! The file is read in large chunks with `pread` (never mapped: another
//! program truncating a mapped file would kill the whole server with
//! SIGBUS). Headers are read line by line; bodies are skipped with memchr
//! and memmem: one search for the next `\nFrom `, one count of line feeds,
//! and searches for `\r` and `From ` that find nothing in most messages.
//!
//! Sizes are what a client is told (RFC 3501 RFC822.SIZE, RFC 1939 LIST):
//! every bare LF counts as CRLF, mboxrd quoting is removed, and the hidden
//! state headers do not count.
//!
//! A message on disk is `From_ line`, content, then one `\n` that separates
//! it from the next `From_` line (the blank line mbox writers leave). A
//! `From ` line counts as a separator only if it carries a date
//! ([`from_line::parse`]), except at the very start of the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use memchr::memmem;

use super::from_line;
use super::state::{self, Base, Flags, StateHeader};
use super::MboxFormat;

/// Where a message lies in the file and what its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Start of the `From_` line.
    pub from_off: u64,
    /// First byte of the content (after the `From_` line).
    pub hdr_off: u64,
    /// First byte of the body: after the blank line that ends the header,
    /// or `end` when there is none.
    pub body_off: u64,
    /// End of the content (exclusive); the separator `\n` follows.
    pub end: u64,
    /// Wire size of the visible header, including the blank line.
    pub hdr_size: u64,
    /// Wire size of the body.
    pub body_size: u64,
    /// INTERNALDATE from the `From_` line; `None` if it had no date.
    pub date: Option<i64>,
    /// 0 when the message has no X-UID (new from the MTA).
    pub uid: u32,
    pub flags: Flags,
    pub keywords: Vec<String>,
    /// The state header lines, when they form one run: (offset, length).
    pub state: Option<(u64, u32)>,
    /// True if any state header (not counting Content-Length) was seen.
    pub has_state: bool,
    /// `X-IMAPbase:` (or `X-IMAP:`) found in this message. Only the first
    /// message's is the mailbox's; one anywhere else is stale or forged.
    pub base: Option<Base>,
    /// UW-IMAP's and Dovecot's "FOLDER INTERNAL DATA" pseudo-message: the
    /// first message with `X-IMAP:`, or any message with `X-IMAP:` and the
    /// pseudo-message's subject (a stray one a broken writer left behind).
    pub pseudo: bool,
    /// The body is delimited by a verified Content-Length and is not unquoted.
    pub raw_body: bool,
    /// A Content-Length pointed past the end of the scanned region, so it
    /// could not be checked (only matters when a scan was split).
    pub crosses_limit: bool,
}

impl RawMessage {
    pub fn size(&self) -> u64 {
        self.hdr_size + self.body_size
    }
}

/// Why a file is not an mbox: the words [`scan`] fails with, which
/// `postroom mailbox repair` recognises.
pub const NOT_FROM: &str = "does not start with a From_ line";
pub const CR_ONLY: &str = "has line ends of CR alone, not LF";

/// What the subject of a pseudo-message says (UW-IMAP's words, which
/// Dovecot and postroom write too).
pub const PSEUDO_SUBJECT: &[u8] = b"FOLDER INTERNAL DATA";

const CHUNK: usize = 1 << 20;
/// A header line longer than this ends the header: the rest is body.
const MAX_HEADER_LINE: usize = 1 << 20;

struct Buf<'f> {
    file: &'f File,
    data: Vec<u8>,
    /// File offset of data[0].
    off: u64,
    /// Index of the first unconsumed byte.
    start: usize,
    /// Bytes of data that are valid.
    len: usize,
    /// Read no further than this file offset.
    limit: u64,
}

impl<'f> Buf<'f> {
    fn new(file: &'f File, from: u64, limit: u64) -> Buf<'f> {
        // No bigger than the region: a small mailbox must not leave a
        // megabyte in the allocator of every session thread.
        let size = (limit.saturating_sub(from) as usize).clamp(4096, CHUNK);
        Buf { file, data: vec![0; size], off: from, start: 0, len: 0, limit }
    }

    fn pos(&self) -> u64 {
        self.off + self.start as u64
    }

    fn avail(&self) -> &[u8] {
        &self.data[self.start..self.len]
    }

    fn at_eof(&self) -> bool {
        self.off + self.len as u64 >= self.limit
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.len);
    }

    /// Reads more. Keeps one byte before `start` for look-behind. Grows the
    /// buffer when it is full of unconsumed data. Returns false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        if self.at_eof() {
            return Ok(false);
        }
        let keep_from = self.start.saturating_sub(1);
        if keep_from > 0 {
            self.data.copy_within(keep_from..self.len, 0);
            self.off += keep_from as u64;
            self.start -= keep_from;
            self.len -= keep_from;
        }
        if self.len == self.data.len() {
            let n = self.data.len();
            self.data.resize(n * 2, 0);
        }
        let want = ((self.limit - (self.off + self.len as u64)) as usize).min(self.data.len() - self.len);
        let mut got = 0;
        while got < want {
            let n = self
                .file
                .read_at(&mut self.data[self.len + got..self.len + want], self.off + (self.len + got) as u64)?;
            if n == 0 {
                // The file shrank under us: stop at what exists.
                self.limit = self.off + (self.len + got) as u64;
                break;
            }
            got += n;
        }
        self.len += got;
        Ok(got > 0)
    }

    /// Makes sure a whole line (up to `\n`) is available at `start`, or
    /// everything up to EOF, or `cap` bytes. Returns the line length
    /// including its newline, and whether it ended with a newline.
    fn line(&mut self, cap: usize) -> io::Result<(usize, bool)> {
        let mut searched = 0;
        loop {
            let avail = self.avail();
            if let Some(i) = memchr::memchr(b'\n', &avail[searched..]) {
                return Ok((searched + i + 1, true));
            }
            searched = avail.len();
            if searched >= cap || !self.fill()? {
                return Ok((self.avail().len().min(cap.max(1)), false));
            }
        }
    }
}

/// Result of scanning a region of an mbox.
#[derive(Debug, Default)]
pub struct Scan {
    pub messages: Vec<RawMessage>,
    /// Where scanning stopped (the file size seen).
    pub end: u64,
}

/// Below this, a region is scanned by one thread.
pub const PARALLEL_MIN: u64 = 64 << 20;

/// Scans `file` from `from` (the start of a `From_` line, or 0) to `limit`.
/// Large regions are split at message boundaries and scanned on all cores.
pub fn scan(file: &File, from: u64, limit: u64, format: MboxFormat) -> io::Result<Scan> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u64;
    scan_with(file, from, limit, format, threads, PARALLEL_MIN)
}

/// [`scan`] with the number of threads and the size from which to split
/// chosen by the caller (tests split small files to prove the stitching).
pub fn scan_with(
    file: &File,
    from: u64,
    limit: u64,
    format: MboxFormat,
    threads: u64,
    parallel_min: u64,
) -> io::Result<Scan> {
    let len = limit.saturating_sub(from);
    if threads < 2 || len < parallel_min.max(2) {
        return scan_sequential(file, from, limit, format);
    }
    // Cut points: the first message separator after each equal share.
    let mut cuts = vec![from];
    for k in 1..threads {
        if let Some(c) = find_separator(file, from + len * k / threads, limit)? {
            if c > *cuts.last().unwrap_or(&from) {
                cuts.push(c);
            }
        }
    }
    cuts.push(limit);
    if cuts.len() < 3 {
        return scan_sequential(file, from, limit, format);
    }
    let parts: Vec<io::Result<Scan>> = std::thread::scope(|sc| {
        let handles: Vec<_> = cuts
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                sc.spawn(move || scan_sequential(file, a, b, format))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("scan thread panicked"))))
            .collect()
    });
    let mut out = Scan { messages: Vec::new(), end: limit };
    for (k, part) in parts.into_iter().enumerate() {
        let part = part?;
        if k + 1 < cuts.len() - 1 {
            // A Content-Length body may run past the cut, where a
            // single pass would not have seen a separator: rescan from
            // that message on, in one piece.
            if part.messages.last().is_some_and(|m| m.crosses_limit) {
                let restart = part.messages.last().map_or(cuts[k], |m| m.from_off);
                out.messages.extend(part.messages.into_iter().filter(|m| m.from_off < restart));
                let rest = scan_sequential(file, restart, limit, format)?;
                out.messages.extend(rest.messages);
                return Ok(out);
            }
        }
        out.messages.extend(part.messages);
    }
    Ok(out)
}

/// The offset of the first `From_` line (with a date) after `at`.
fn find_separator(file: &File, at: u64, limit: u64) -> io::Result<Option<u64>> {
    let finder = memmem::Finder::new(b"\nFrom ");
    let mut buf = vec![0u8; 1 << 20];
    let mut off = at;
    while off < limit {
        let n = ((limit - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)?;
        let w = &buf[..n];
        for i in finder.find_iter(w) {
            let rest = &w[i + 1..];
            let Some(e) = memchr::memchr(b'\n', rest) else { break };
            if from_line::parse_date(trim_nl(&rest[..e])).is_some() {
                return Ok(Some(off + i as u64 + 1));
            }
        }
        if off + n as u64 >= limit {
            break;
        }
        // Overlap so a line cut at the chunk's end is seen whole next time
        // (a chunk is a MiB, so this always moves on).
        off += (n - 1000) as u64;
    }
    Ok(None)
}

/// Scans `[from, limit)` in this thread.
pub fn scan_sequential(file: &File, from: u64, limit: u64, format: MboxFormat) -> io::Result<Scan> {
    let mut buf = Buf::new(file, from, limit);
    let mut out = Scan { messages: Vec::with_capacity((limit.saturating_sub(from) / 8192) as usize + 4), end: limit };
    let from_word = memmem::Finder::new(b"From ");
    buf.fill()?;
    if buf.avail().is_empty() {
        out.end = buf.limit;
        return Ok(out);
    }
    if !buf.avail().starts_with(b"From ") {
        // Wait for more bytes in case the first read was tiny.
        while buf.avail().len() < 5 && buf.fill()? {}
        if !buf.avail().starts_with(b"From ") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, NOT_FROM));
        }
    }
    // Line ends of CR alone (a classic Mac OS file): read with LF ends it
    // would be one message with a From_ line as long as the file.
    // (No LF in the first megabyte, and CRs: a From_ line that ran on.)
    let (n, has_nl) = buf.line(MAX_HEADER_LINE)?;
    if !has_nl && memchr::memchr(b'\r', &buf.avail()[..n]).is_some() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, CR_ONLY));
    }
    while buf.pos() < buf.limit {
        let msg = scan_message(&mut buf, format, &from_word, out.messages.is_empty() && from == 0)?;
        out.messages.push(msg);
    }
    out.end = buf.limit;
    Ok(out)
}

/// Scans one message starting at the `From_` line at `buf.pos()`; leaves
/// `buf` at the start of the next `From_` line or at EOF.
fn scan_message(
    buf: &mut Buf<'_>,
    format: MboxFormat,
    from_word: &memmem::Finder<'_>,
    first: bool,
) -> io::Result<RawMessage> {
    let from_off = buf.pos();
    let (n, _) = buf.line(MAX_HEADER_LINE)?;
    let date = from_line::parse_date(trim_nl(&buf.avail()[..n]));
    buf.consume(n);
    let hdr_off = buf.pos();
    let mut m = RawMessage {
        from_off,
        hdr_off,
        body_off: hdr_off,
        end: hdr_off,
        hdr_size: 0,
        body_size: 0,
        date,
        uid: 0,
        flags: Flags::RECENT,
        keywords: Vec::new(),
        state: None,
        has_state: false,
        base: None,
        pseudo: false,
        raw_body: false,
        crosses_limit: false,
    };
    let rd = format == MboxFormat::Mboxrd;
    // Size contribution of the last header line's newline, in case it turns
    // out to be the separator.
    let mut last_nl_size = 0u64;
    let mut state_run: Option<(u64, u64)> = None;
    let mut state_broken = false;
    let mut content_length: Option<u64> = None;
    let mut status_seen = false;
    let mut blank_line = false;
    // A blank line "\r\n" that turns out to be the separator leaves its CR
    // in the message.
    let mut blank_crlf = false;
    let mut last_had_nl = false;
    let mut ximap = false;
    let mut internal_subject = false;

    // Header.
    loop {
        if buf.pos() >= buf.limit {
            // EOF inside the header: no body; the last newline, if any,
            // is the separator.
            let at = buf.pos();
            if at > hdr_off && last_had_nl {
                m.end = at - 1;
                m.hdr_size -= last_nl_size;
            } else {
                m.end = at;
            }
            m.body_off = m.end;
            m.pseudo = ximap && (first || internal_subject);
            finish_state(&mut m, state_run, state_broken, status_seen);
            return Ok(m);
        }
        let (n, has_nl) = buf.line(MAX_HEADER_LINE)?;
        let line = &buf.avail()[..n];
        let at = buf.pos();
        if line.starts_with(b"From ") && from_line::parse_date(trim_nl(line)).is_some() {
            // The previous newline was the separator.
            m.end = if at > hdr_off { at - 1 } else { at };
            m.hdr_size -= last_nl_size;
            m.body_off = m.end;
            m.pseudo = ximap && (first || internal_subject);
            finish_state(&mut m, state_run, state_broken, status_seen);
            return Ok(m);
        }
        if line == b"\n" || line == b"\r\n" {
            blank_line = true;
            blank_crlf = n == 2;
            m.hdr_size += 2;
            buf.consume(n);
            m.body_off = buf.pos();
            break;
        }
        if !has_nl && n >= MAX_HEADER_LINE {
            // An absurd header line: treat the rest as body.
            m.body_off = at;
            break;
        }
        let hidden = match line.first() {
            // State headers are one line each (every writer writes them so);
            // a line folded under one is the message's own.
            Some(b' ') | Some(b'\t') => false,
            _ => match state::classify(line) {
                Some(kind) => {
                    let v = state::value(trim_nl(line));
                    ximap |= kind == StateHeader::Imap;
                    apply_state(&mut m, kind, v, &mut content_length, &mut status_seen);
                    if kind != StateHeader::ContentLength {
                        match state_run {
                            None if !state_broken => state_run = Some((at, at + n as u64)),
                            Some((s, e)) if e == at => state_run = Some((s, at + n as u64)),
                            Some(_) => state_broken = true,
                            None => {}
                        }
                    }
                    true
                }
                None => false,
            },
        };
        if !hidden {
            if line.len() > 8 && line[..8].eq_ignore_ascii_case(b"Subject:") {
                internal_subject |= memmem::find(line, PSEUDO_SUBJECT).is_some();
            }
            let bare = has_nl && !(n >= 2 && line[n - 2] == b'\r');
            let quoted = rd && is_quoted_from(line);
            last_nl_size = if has_nl { 1 + bare as u64 } else { 0 };
            m.hdr_size += n as u64 + bare as u64 - quoted as u64;
        } else {
            last_nl_size = 0;
        }
        last_had_nl = has_nl;
        buf.consume(n);
    }

    m.pseudo = ximap && (first || internal_subject);
    // A verified Content-Length delimits the body exactly (Dovecot writes
    // one and does not quote `From ` lines).
    let mut forced_end = None;
    if let Some(cl) = content_length {
        let target = m.body_off.saturating_add(cl);
        m.crosses_limit = target > buf.limit;
        if target <= buf.limit && content_length_lands(buf, target)? {
            forced_end = Some(target);
            m.raw_body = true;
        }
    }

    // Body.
    let body_off = m.body_off;
    let mut at_line_start = true;
    // The last two bytes accounted, for CRLF pairs and newlines that turn
    // out to be separators.
    let mut last_two = [b'\n', b'\n'];
    let mut lf = 0u64;
    let mut crlf = 0u64;
    let mut quoted = 0u64;
    let unquote = rd && !m.raw_body;
    let mut quoted_here;
    loop {
        quoted_here = 0;
        if buf.avail().len() < buf.data.len() / 16 && !buf.at_eof() {
            buf.fill()?;
        }
        let pos = buf.pos();
        if let Some(fe) = forced_end {
            if pos >= fe {
                m.end = fe;
                if buf.avail().first() == Some(&b'\n') {
                    buf.consume(1);
                }
                break;
            }
        }
        if buf.avail().is_empty() {
            // EOF: the final newline, if any, is the separator.
            m.end = pos;
            if pos > body_off && last_two[1] == b'\n' {
                m.end = pos - 1;
                lf -= 1;
                if last_two[0] == b'\r' {
                    crlf -= 1;
                }
            } else if pos == body_off && blank_line {
                m.end = body_off - 1;
                m.hdr_size -= if blank_crlf { 1 } else { 2 };
                m.body_off = m.end;
            }
            break;
        }
        if forced_end.is_none() && at_line_start && buf.avail().starts_with(b"From ") {
            let (n, _) = buf.line(MAX_HEADER_LINE)?;
            if from_line::parse_date(trim_nl(&buf.avail()[..n])).is_some() {
                if pos > body_off {
                    // The newline before this line is the separator.
                    m.end = pos - 1;
                    lf -= 1;
                    if last_two[0] == b'\r' {
                        crlf -= 1;
                    }
                } else {
                    // The body is empty: the blank line was the separator.
                    m.end = if blank_line { body_off - 1 } else { body_off };
                    if blank_line {
                        m.hdr_size -= if blank_crlf { 1 } else { 2 };
                    }
                    m.body_off = m.end;
                }
                break;
            }
        }
        let avail = buf.avail();
        let (wlen, found_sep) = match forced_end {
            Some(fe) => (((fe - pos) as usize).min(avail.len()), false),
            None => {
                // Work on whole lines, so that separators and quoted lines
                // are never cut in two.
                let w = match memchr::memrchr(b'\n', avail) {
                    Some(i) => &avail[..i + 1],
                    None => avail,
                };
                // One search finds both separators ("\nFrom " with a date)
                // and mboxrd-quoted lines (">From " after a newline).
                let mut hit = None;
                quoted_here = 0;
                for h in from_word.find_iter(w) {
                    if h == 0 {
                        continue; // the line start was checked above
                    }
                    match w[h - 1] {
                        b'\n' => {
                            let rest = &w[h..];
                            let e = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                            if from_line::parse_date(trim_nl(&rest[..e])).is_some() {
                                hit = Some(h - 1);
                                break;
                            }
                        }
                        b'>' if unquote => {
                            let mut j = h - 1;
                            while j > 0 && w[j - 1] == b'>' {
                                j -= 1;
                            }
                            if if j == 0 { at_line_start } else { w[j - 1] == b'\n' } {
                                quoted_here += 1;
                            }
                        }
                        _ => {}
                    }
                }
                match hit {
                    Some(i) => (i, true),
                    None => (w.len(), false),
                }
            }
        };
        let window = &avail[..wlen];
        lf += memchr::memchr_iter(b'\n', window).count() as u64;
        if memchr::memchr(b'\r', window).is_some() || (last_two[1] == b'\r' && window.first() == Some(&b'\n')) {
            for i in memchr::memchr_iter(b'\n', window) {
                let prev = if i == 0 { last_two[1] } else { window[i - 1] };
                if prev == b'\r' {
                    crlf += 1;
                }
            }
        }
        quoted += quoted_here;
        match wlen {
            0 => {}
            1 => last_two = [last_two[1], window[0]],
            n => last_two = [window[n - 2], window[n - 1]],
        }
        if wlen > 0 {
            at_line_start = last_two[1] == b'\n';
        }
        buf.consume(wlen);
        if found_sep {
            // The window stopped just before the separator newline.
            m.end = buf.pos();
            buf.consume(1);
            break;
        }
    }
    if m.body_off > m.end {
        m.body_off = m.end;
    }
    let body_bytes = m.end - m.body_off;
    m.body_size = body_bytes + (lf - crlf) - quoted;
    finish_state(&mut m, state_run, state_broken, status_seen);
    Ok(m)
}

fn content_length_lands(buf: &Buf<'_>, target: u64) -> io::Result<bool> {
    if target == buf.limit {
        return Ok(true);
    }
    let mut probe = [0u8; 6];
    let n = (buf.limit - target).min(6) as usize;
    buf.file.read_exact_at(&mut probe[..n], target)?;
    Ok((n == 1 && probe[0] == b'\n') || &probe[..n] == b"\nFrom ")
}

fn apply_state(
    m: &mut RawMessage,
    kind: StateHeader,
    v: &[u8],
    content_length: &mut Option<u64>,
    status_seen: &mut bool,
) {
    match kind {
        StateHeader::ImapBase | StateHeader::Imap => m.base = state::parse_base(v),
        StateHeader::Uid => m.uid = state::parse_u32(v).unwrap_or(0),
        StateHeader::Status => {
            *status_seen = true;
            state::apply_status(v, &mut m.flags);
        }
        StateHeader::XStatus => state::apply_xstatus(v, &mut m.flags),
        StateHeader::Keywords => {
            for k in state::parse_keywords(v) {
                if !m.keywords.iter().any(|x| x == k) {
                    m.keywords.push(k.to_string());
                }
            }
        }
        StateHeader::ContentLength => {
            *content_length = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        }
    }
    if kind != StateHeader::ContentLength {
        m.has_state = true;
    }
}

fn finish_state(m: &mut RawMessage, run: Option<(u64, u64)>, broken: bool, status_seen: bool) {
    if !status_seen {
        // No Status header: never seen by a mail reader, so \Recent.
        m.flags.insert(Flags::RECENT);
    }
    if !broken {
        if let Some((s, e)) = run {
            // A state line whose newline turned out to be the separator is
            // not a whole line: no in-place writes into it.
            if e - s <= u32::MAX as u64 && e <= m.end {
                m.state = Some((s, (e - s) as u32));
            }
        }
    }
}

fn trim_nl(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `^>+From ` (an mboxrd-quoted line).
pub fn is_quoted_from(line: &[u8]) -> bool {
    let n = line.iter().take_while(|&&b| b == b'>').count();
    n > 0 && line[n..].starts_with(b"From ")
}

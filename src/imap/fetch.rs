//! FETCH and UID FETCH (RFC 3501 §6.4.5, §7.4.2).
//!
//! The reply is made a batch at a time under the mailbox's read locks
//! (the registry's and the fcntl lock on the file) and written to the
//! client after they are let go, so a client that stops reading holds up
//! no delivery and no other session (DESIGN.md, "Locks are short"). A
//! batch ends when the reply buffer holds about [`REPLY_BUDGET`] bytes,
//! in the middle of a literal if need be: message bytes come from the
//! file through [`store::reader`](crate::store::reader), which finds its
//! place again in the next batch however the file moved meanwhile. A
//! reply that fits the budget goes out in one write.
//!
//! Memory per session, whatever the items and the message sizes: the
//! reply buffer (the budget and at most `reader::SLACK` more), the
//! reader's chunk, and, for the items that need the message parsed
//! (BODY, BODYSTRUCTURE, ENVELOPE, BODY[TEXT], sections with part numbers
//! or HEADER.FIELDS), one copy of one message, or of its header for
//! ENVELOPE. That copy is read in batches too, kept while that message's
//! items are answered, however many ask for it, and dropped before the
//! next message. FLAGS, UID, sizes and dates come from the index.
//!
//! A literal's length, once announced, binds: if its message vanishes or
//! changes while it is sent (`StoreError::Diverged`), or the file can't
//! be read, the session ends without another byte ([`ImapError::Cut`]).
//! An error before any of a message's response left the buffer drops
//! that response and answers NO.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use super::command::{FetchAttr, Partial, Section, SectionText, SequenceSet};
use super::mime;
use super::response::ImapError;
use super::selected::Selected;
use super::session::{Done, Session, State, Stats};
use crate::limits::REPLY_BUDGET;
use crate::store::reader::{self, Part, Reader};
use crate::store::{from_line, Event, Flags, Mailbox, StoreError};

/// What one batch may add to the reply buffer (a read of the file may go
/// past it by `reader::SLACK`), and what it may read into a copy.
const BATCH: usize = REPLY_BUDGET - reader::SLACK;

/// Where the bytes of the literal being sent come from.
enum Source {
    /// The file, a batch at a time.
    File(Reader),
    /// `full[at..end]` of the copy of the message.
    Full { at: usize, end: usize },
    /// `header[at..end]` of the copy of the header.
    Header { at: usize, end: usize },
    /// Bytes of their own (HEADER.FIELDS).
    Own { bytes: Vec<u8>, at: usize },
}

/// A copy of the message (`full`) or of its header being read.
struct Loading {
    reader: Reader,
    into: Vec<u8>,
    full: bool,
}

/// What an item needs in memory before it can be answered.
#[derive(PartialEq)]
enum Need {
    Nothing,
    Header,
    Full,
}

fn need(item: &FetchAttr) -> Need {
    match item {
        FetchAttr::Envelope => Need::Header,
        FetchAttr::Body | FetchAttr::BodyStructure => Need::Full,
        FetchAttr::Section { section, .. } => {
            if section.part.is_empty() && matches!(section.text, None | Some(SectionText::Header)) {
                Need::Nothing
            } else {
                Need::Full
            }
        }
        _ => Need::Nothing,
    }
}

/// The response for one message, while it is being made.
struct Open {
    /// Its index in the targets.
    t: usize,
    /// The item being answered; `items.len()` for the closing parenthesis.
    item: usize,
    /// No item written yet (no separator before the next).
    first: bool,
    /// Where the response starts in the reply buffer, while all of it is
    /// still there (nothing of it written to the client).
    start: Option<usize>,
    source: Option<Source>,
    loading: Option<Loading>,
    header: Option<Vec<u8>>,
    full: Option<Vec<u8>>,
}

impl Open {
    /// The header as the message copy or the header copy has it.
    fn header_bytes(&self, hdr_size: u64) -> &[u8] {
        match (&self.full, &self.header) {
            (Some(f), _) => &f[..(hdr_size as usize).min(f.len())],
            (None, Some(h)) => h,
            (None, None) => &[],
        }
    }

    /// Starts the literal of `part` (with `range`) of message `i`: its
    /// length to `out`, its bytes from a copy in memory if there is one,
    /// else from the file.
    fn literal(&mut self, mb: &Mailbox, i: usize, part: Part, range: Option<Partial>, out: &mut Vec<u8>) {
        let m = &mb.messages()[i];
        let cut = |start: usize, end: usize| match range {
            None => (start, end),
            Some(p) => {
                let s = (start + p.origin as usize).min(end);
                (s, s.saturating_add(p.count as usize).min(end))
            }
        };
        let source = if let Some(f) = &self.full {
            let h = (m.hdr_size as usize).min(f.len());
            let (at, end) = match part {
                Part::Whole => cut(0, f.len()),
                Part::Header => cut(0, h),
                Part::Text => cut(h, f.len()),
            };
            write_len(out, end - at);
            Source::Full { at, end }
        } else if let (Part::Header, Some(h)) = (part, &self.header) {
            let (at, end) = cut(0, h.len());
            write_len(out, end - at);
            Source::Header { at, end }
        } else {
            let r = Reader::new(mb, i, part, range.map(|p| (u64::from(p.origin), u64::from(p.count))));
            write_len(out, r.len() as usize);
            Source::File(r)
        };
        self.source = Some(source);
    }
}

fn write_len(out: &mut Vec<u8>, n: usize) {
    out.push(b'{');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"}\r\n");
}

/// What a FETCH asks, fixed for the whole reply.
struct Ask<'a> {
    sel: &'a Selected,
    /// (sequence number, UID) of each message, in order.
    targets: &'a [(u32, u32)],
    items: &'a [FetchAttr],
    /// UIDs that this FETCH set \Seen on, ascending.
    seen_now: &'a [u32],
    /// Add FLAGS to the responses of those (RFC 3501 §6.4.5).
    add_flags: bool,
}

/// Where the reply is, between batches.
#[derive(Default)]
struct Cursor {
    /// The next target to open.
    next: usize,
    open: Option<Open>,
    /// A message number named a message that is gone.
    missing: bool,
}

impl Cursor {
    /// Adds the next batch to `out`, under the locks the caller holds.
    /// True when the reply is complete.
    fn produce(&mut self, ask: &Ask, mb: &Mailbox, out: &mut Vec<u8>, stats: &mut Stats) -> Result<bool, StoreError> {
        // Bytes read from the file in this batch, into `out` or a copy.
        let mut work = 0usize;
        loop {
            if out.len() >= BATCH || work >= BATCH {
                return Ok(false);
            }
            let room = BATCH - out.len().max(work);
            let Some(o) = &mut self.open else {
                let Some(&(seq, u)) = ask.targets.get(self.next) else { return Ok(true) };
                self.next += 1;
                let Some(i) = mb.position(u) else {
                    self.missing = true;
                    continue;
                };
                let start = out.len();
                write!(out, "* {seq} FETCH (").map_err(io)?;
                let with_flags = ask.add_flags && ask.seen_now.binary_search(&u).is_ok();
                if with_flags {
                    write!(out, "FLAGS ({})", ask.sel.flags_of(mb, &mb.messages()[i])).map_err(io)?;
                }
                self.open = Some(Open {
                    t: self.next - 1,
                    item: 0,
                    first: !with_flags,
                    start: Some(start),
                    source: None,
                    loading: None,
                    header: None,
                    full: None,
                });
                continue;
            };
            let u = ask.targets[o.t].1;
            if let Some(l) = &mut o.loading {
                let before = l.into.len();
                let done = l.reader.fill(mb, &mut l.into, room)?;
                work += l.into.len() - before;
                if done {
                    let Loading { into, full, .. } = o.loading.take().expect("loading");
                    if full {
                        o.full = Some(into);
                        o.header = None;
                    } else {
                        o.header = Some(into);
                    }
                }
                continue;
            }
            if let Some(src) = &mut o.source {
                let from = out.len();
                let done = match src {
                    Source::File(r) => r.fill(mb, out, room)?,
                    Source::Full { at, end } => copy_out(o.full.as_deref(), at, *end, room, out),
                    Source::Header { at, end } => copy_out(o.header.as_deref(), at, *end, room, out),
                    Source::Own { bytes, at } => {
                        let n = room.min(bytes.len() - *at);
                        out.extend_from_slice(&bytes[*at..*at + n]);
                        *at += n;
                        *at == bytes.len()
                    }
                };
                no_nul(&mut out[from..]);
                work += out.len() - from;
                stats.fetched_bytes += (out.len() - from) as u64;
                if done {
                    o.source = None;
                    o.item += 1;
                }
                continue;
            }
            // The message, found again: the index may have changed since
            // the last batch.
            let Some(i) = mb.position(u) else { return Err(StoreError::Diverged(mb.path().to_path_buf(), u)) };
            let Some(item) = ask.items.get(o.item) else {
                out.extend_from_slice(b")\r\n");
                self.open = None;
                stats.fetched += 1;
                continue;
            };
            let m = &mb.messages()[i];
            match need(item) {
                Need::Full if o.full.is_none() => {
                    let reader = Reader::new(mb, i, Part::Whole, None);
                    o.loading = Some(Loading { into: Vec::with_capacity(reader.len() as usize), reader, full: true });
                    continue;
                }
                Need::Header if o.full.is_none() && o.header.is_none() => {
                    let reader = Reader::new(mb, i, Part::Header, None);
                    o.loading = Some(Loading { into: Vec::with_capacity(reader.len() as usize), reader, full: false });
                    continue;
                }
                _ => {}
            }
            if !std::mem::take(&mut o.first) {
                out.push(b' ');
            }
            match item {
                FetchAttr::Uid => write!(out, "UID {}", m.uid).map_err(io)?,
                FetchAttr::Flags => write!(out, "FLAGS ({})", ask.sel.flags_of(mb, m)).map_err(io)?,
                FetchAttr::InternalDate => write!(out, "INTERNALDATE \"{}\"", internal_date(m.date)).map_err(io)?,
                FetchAttr::Rfc822Size => write!(out, "RFC822.SIZE {}", m.size).map_err(io)?,
                FetchAttr::Envelope => {
                    out.extend_from_slice(b"ENVELOPE ");
                    mime::envelope(o.header_bytes(m.hdr_size), out);
                }
                FetchAttr::Body | FetchAttr::BodyStructure => {
                    let ext = matches!(item, FetchAttr::BodyStructure);
                    out.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                    mime::body_structure(o.full.as_deref().unwrap_or_default(), ext, out);
                }
                FetchAttr::Rfc822 => {
                    out.extend_from_slice(b"RFC822 ");
                    o.literal(mb, i, Part::Whole, None, out);
                }
                FetchAttr::Rfc822Header => {
                    out.extend_from_slice(b"RFC822.HEADER ");
                    o.literal(mb, i, Part::Header, None, out);
                }
                FetchAttr::Rfc822Text => {
                    out.extend_from_slice(b"RFC822.TEXT ");
                    o.literal(mb, i, Part::Text, None, out);
                }
                FetchAttr::Section { section, partial, .. } => {
                    out.extend_from_slice(section_name(section, *partial).as_bytes());
                    out.push(b' ');
                    if need(item) == Need::Nothing {
                        let part = if section.text.is_none() { Part::Whole } else { Part::Header };
                        o.literal(mb, i, part, *partial, out);
                    } else {
                        let f = o.full.as_deref().unwrap_or_default();
                        o.source = Some(match mime::section(f, &section.part, section.text.as_ref()) {
                            // A part that isn't there: an empty literal, as
                            // other servers answer (RFC 3501 leaves it open).
                            None => {
                                write_len(out, 0);
                                Source::Own { bytes: Vec::new(), at: 0 }
                            }
                            Some(Cow::Borrowed(b)) => {
                                let b = cut(b, *partial);
                                // A slice of the copy: sent from there.
                                let at = b.as_ptr() as usize - f.as_ptr() as usize;
                                write_len(out, b.len());
                                Source::Full { at, end: at + b.len() }
                            }
                            Some(Cow::Owned(v)) => {
                                let b = cut(&v, *partial).to_vec();
                                write_len(out, b.len());
                                Source::Own { bytes: b, at: 0 }
                            }
                        });
                    }
                }
            }
            if o.source.is_none() {
                o.item += 1;
            }
        }
    }

    /// The batch in `out` is about to be written: the open response no
    /// longer lies whole in the buffer.
    fn written(&mut self) {
        if let Some(o) = &mut self.open {
            o.start = None;
        }
    }
}

/// Copies up to `room` bytes of `bytes[*at..end]` to `out`; true when
/// all of it is out.
fn copy_out(bytes: Option<&[u8]>, at: &mut usize, end: usize, room: usize, out: &mut Vec<u8>) -> bool {
    let bytes = bytes.unwrap_or_default();
    let n = room.min(end - *at);
    out.extend_from_slice(&bytes[*at..*at + n]);
    *at += n;
    *at == end
}

/// NUL may not appear in a literal (RFC 3501 §4.3): sent as 0x80, as
/// other servers do, which keeps the length.
fn no_nul(b: &mut [u8]) {
    let mut from = 0;
    while let Some(p) = memchr::memchr(0, &b[from..]) {
        b[from + p] = 0x80;
        from += p + 1;
    }
}

/// `dd-Mon-yyyy hh:mm:ss +0000` (RFC 3501 `date-time`), in UTC.
pub(super) fn internal_date(t: i64) -> String {
    // asctime: "Www Mmm dd hh:mm:ss yyyy"
    let a = from_line::asctime(t);
    let w: Vec<&str> = a.split_whitespace().collect();
    if w.len() != 5 {
        return "01-Jan-1970 00:00:00 +0000".into();
    }
    format!("{:0>2}-{}-{} {} +0000", w[2], w[1], w[4], w[3])
}

/// The section as the response names it: `BODY[1.HEADER.FIELDS (FROM)]`.
fn section_name(s: &Section, partial: Option<Partial>) -> String {
    let mut n = String::from("BODY[");
    let parts: Vec<String> = s.part.iter().map(u32::to_string).collect();
    n.push_str(&parts.join("."));
    if let Some(t) = &s.text {
        if !s.part.is_empty() {
            n.push('.');
        }
        match t {
            SectionText::Header => n.push_str("HEADER"),
            SectionText::Text => n.push_str("TEXT"),
            SectionText::Mime => n.push_str("MIME"),
            SectionText::HeaderFields(f) | SectionText::HeaderFieldsNot(f) => {
                n.push_str(if matches!(t, SectionText::HeaderFields(_)) {
                    "HEADER.FIELDS ("
                } else {
                    "HEADER.FIELDS.NOT ("
                });
                let up: Vec<String> = f.iter().map(|x| x.to_ascii_uppercase()).collect();
                n.push_str(&up.join(" "));
                n.push(')');
            }
        }
    }
    n.push(']');
    if let Some(p) = partial {
        n.push_str(&format!("<{}>", p.origin));
    }
    n
}

/// Applies `<origin.count>`: an origin past the end gives the empty string.
fn cut(bytes: &[u8], partial: Option<Partial>) -> &[u8] {
    match partial {
        None => bytes,
        Some(p) => {
            let start = (p.origin as usize).min(bytes.len());
            let end = start.saturating_add(p.count as usize).min(bytes.len());
            &bytes[start..end]
        }
    }
}

/// Whether an item sets \Seen (RFC 3501 §6.4.5: BODY[...] without PEEK,
/// RFC822, RFC822.TEXT).
fn sets_seen(a: &FetchAttr) -> bool {
    matches!(a, FetchAttr::Rfc822 | FetchAttr::Rfc822Text | FetchAttr::Section { peek: false, .. })
}

impl Session<'_> {
    pub(super) fn cmd_fetch(&mut self, uid: bool, set: &SequenceSet, mut items: Vec<FetchAttr>) -> Done {
        // UID FETCH always returns UID (RFC 3501 §6.4.8).
        if uid && !items.contains(&FetchAttr::Uid) {
            items.insert(0, FetchAttr::Uid);
        }
        let State::Selected(_, sel) = &mut self.state else { unreachable!("checked by check_allowed") };
        let targets = sel.resolve(set, uid)?;
        let shared = Arc::clone(&sel.shared);
        // \Seen first, so the responses show it (with FLAGS, RFC 3501 §6.4.5).
        let mut seen_now: Vec<u32> = Vec::new();
        if !sel.read_only && items.iter().any(sets_seen) {
            let mut mb = shared.write();
            for (_, u) in &targets {
                if let Some(i) = mb.position(*u) {
                    let m = &mb.messages()[i];
                    if !m.flags.contains(Flags::SEEN) {
                        let (f, k) = (m.flags.union(Flags::SEEN), m.keywords);
                        mb.set_flags(i, f, k);
                        seen_now.push(*u);
                    }
                }
            }
            let flushed = match mb.try_flush() {
                Ok(ev) => ev,
                Err(StoreError::LockTimeout(_)) => Vec::new(),
                Err(e) => {
                    // \Seen cannot be written (a full disk): the messages are
                    // served all the same, and stay unseen, as the file says.
                    for u in std::mem::take(&mut seen_now) {
                        if let Some(i) = mb.position(u) {
                            if mb.pending(u) {
                                let m = &mb.messages()[i];
                                let (f, k) = (m.flags.without(Flags::SEEN), m.keywords);
                                mb.set_flags(i, f, k);
                            } else {
                                seen_now.push(u);
                            }
                        }
                    }
                    let _ = mb.try_flush();
                    log::warn!("{} imap seen-not-written {e}", self.sid);
                    Vec::new()
                }
            };
            if !seen_now.is_empty() {
                sel.sub.publish_to_others(&mb, &[Event::Flags(seen_now.clone())]);
            }
            mb.publish(&flushed);
            drop(mb);
        }
        let add_flags = !seen_now.is_empty() && !items.contains(&FetchAttr::Flags);
        let ask = Ask { sel, targets: &targets, items: &items, seen_now: &seen_now, add_flags };
        let mut cur = Cursor::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut changed = 0;
        loop {
            let res = {
                let mb = shared.read();
                mb.reading(|| cur.produce(&ask, &mb, &mut buf, &mut self.stats))
            };
            let res = match res {
                // Another program changed the file since it was indexed:
                // index it again and go on from the same place.
                Err(StoreError::Changed(_)) if changed < 3 => {
                    changed += 1;
                    shared.refresh().map(|_| None)
                }
                other => other.map(Some),
            };
            let done = match res {
                Ok(Some(done)) => {
                    changed = 0;
                    done
                }
                Ok(None) => continue,
                Err(e) => {
                    // What is complete goes out; the open response goes
                    // only if some of it went already, and then the
                    // session ends.
                    let partly_sent = match &cur.open {
                        Some(o) => match o.start {
                            Some(k) => {
                                buf.truncate(k);
                                false
                            }
                            None => true,
                        },
                        None => false,
                    };
                    self.conn.write_all(&buf)?;
                    return Err(if partly_sent { ImapError::Cut(e) } else { e.into() });
                }
            };
            if !buf.is_empty() {
                self.conn.write_all(&buf)?;
                buf.clear();
                cur.written();
            }
            if done {
                break;
            }
        }
        // A UID that is gone is simply not there; a message number the
        // client still holds for an expunged message gets RFC 5530's code.
        if cur.missing && !uid {
            return Err(ImapError::No(Some("EXPUNGEISSUED"), "Some of the requested messages no longer exist.".into()));
        }
        Ok("Fetch completed.".into())
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::io("building a FETCH response", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(internal_date(0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(internal_date(1_700_000_000), "14-Nov-2023 22:13:20 +0000");
        let s = Section { part: vec![1, 2], text: Some(SectionText::HeaderFields(vec!["From".into(), "to".into()])) };
        assert_eq!(section_name(&s, None), "BODY[1.2.HEADER.FIELDS (FROM TO)]");
        assert_eq!(
            section_name(&Section { part: vec![], text: None }, Some(Partial { origin: 5, count: 9 })),
            "BODY[]<5>"
        );
        assert_eq!(section_name(&Section { part: vec![3], text: Some(SectionText::Mime) }, None), "BODY[3.MIME]");
        assert_eq!(cut(b"hello", Some(Partial { origin: 1, count: 3 })), b"ell");
        assert_eq!(cut(b"hello", Some(Partial { origin: 9, count: 3 })), b"");
        let mut v = b"a\0b\0".to_vec();
        no_nul(&mut v);
        assert_eq!(v, b"a\x80b\x80");
    }
}

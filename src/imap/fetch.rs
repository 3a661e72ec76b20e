//! FETCH and UID FETCH (RFC 3501 §6.4.5, §7.4.2).
//!
//! Responses are built a batch of messages at a time under the mailbox's
//! read lock, and written to the client after the lock is let go, so a
//! slow reader never holds up the MTA or other sessions for long. A
//! message's bytes are read once per message, and only when an item
//! needs them: FLAGS, UID, sizes and dates come from the index; ENVELOPE
//! reads only the header; `BODY[]` streams from the file.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use super::command::{FetchAttr, Partial, Section, SectionText, SequenceSet};
use super::mime;
use super::response::{self, ImapError};
use super::selected::Selected;
use super::session::{Done, Session, State};
use crate::store::{from_line, Event, Flags, Mailbox, StoreError};

/// A batch is written out when it grows past this (one message may
/// make it larger).
const BATCH_BYTES: usize = 1 << 20;

/// What FETCH needs of a message beyond the index.
struct Loaded {
    header: Option<Vec<u8>>,
    full: Option<Vec<u8>>,
}

impl Loaded {
    fn header<'m>(&'m mut self, mb: &Mailbox, i: usize) -> Result<&'m [u8], StoreError> {
        if let Some(f) = &self.full {
            let n = (mb.messages()[i].hdr_size as usize).min(f.len());
            return Ok(&f[..n]);
        }
        if self.header.is_none() {
            let mut v = Vec::with_capacity(mb.messages()[i].hdr_size as usize);
            mb.write_header(i, &mut v)?;
            self.header = Some(v);
        }
        Ok(self.header.as_deref().unwrap_or_default())
    }

    fn full<'m>(&'m mut self, mb: &Mailbox, i: usize) -> Result<&'m [u8], StoreError> {
        if self.full.is_none() {
            self.full = Some(mb.message_bytes(i)?);
        }
        Ok(self.full.as_deref().unwrap_or_default())
    }
}

/// Writes to a byte buffer replacing NUL with 0x80 (no NUL may appear in
/// a literal, RFC 3501 §4.3), keeping the length.
struct NoNul<'a>(&'a mut Vec<u8>);

impl Write for NoNul<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let start = self.0.len();
        self.0.extend_from_slice(buf);
        let tail = &mut self.0[start..];
        let mut from = 0;
        while let Some(p) = memchr::memchr(0, &tail[from..]) {
            tail[from + p] = 0x80;
            from += p + 1;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        let mut missing = false;
        let mut buf: Vec<u8> = Vec::new();
        let mut next = 0;
        let mut retried = false;
        while next < targets.len() {
            let batch_start = next;
            let res = {
                let mb = shared.read();
                mb.reading(|| {
                    while next < targets.len() && buf.len() < BATCH_BYTES {
                        let (seq, u) = targets[next];
                        next += 1;
                        let Some(i) = mb.position(u) else {
                            missing = true;
                            continue;
                        };
                        let with_flags = add_flags && seen_now.binary_search(&u).is_ok();
                        let bytes = write_one(&mut buf, sel, &mb, i, seq, &items, with_flags)?;
                        self.stats.fetched += 1;
                        self.stats.fetched_bytes += bytes;
                    }
                    Ok(())
                })
            };
            match res {
                // Another program rewrote the file since we looked: look
                // again (once) and redo this batch.
                Err(StoreError::Changed(_)) if !retried => {
                    retried = true;
                    shared.refresh()?;
                    next = batch_start;
                    buf.clear();
                    continue;
                }
                other => other?,
            }
            self.conn.write_all(&buf)?;
            buf.clear();
        }
        // A UID that is gone is simply not there; a message number the
        // client still holds for an expunged message gets RFC 5530's code.
        if missing && !uid {
            return Err(ImapError::No(Some("EXPUNGEISSUED"), "Some of the requested messages no longer exist.".into()));
        }
        Ok("Fetch completed.".into())
    }
}

/// One `* n FETCH (...)` response. Returns the body bytes sent.
fn write_one(
    out: &mut Vec<u8>,
    sel: &Selected,
    mb: &Mailbox,
    i: usize,
    seq: u32,
    items: &[FetchAttr],
    with_flags: bool,
) -> Result<u64, StoreError> {
    let m = &mb.messages()[i];
    let mut loaded = Loaded { header: None, full: None };
    let mut sent = 0u64;
    write!(out, "* {seq} FETCH (").map_err(io)?;
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    if with_flags {
        sep(out);
        write!(out, "FLAGS ({})", sel.flags_of(mb, m)).map_err(io)?;
    }
    for item in items {
        sep(out);
        match item {
            FetchAttr::Uid => write!(out, "UID {}", m.uid).map_err(io)?,
            FetchAttr::Flags => write!(out, "FLAGS ({})", sel.flags_of(mb, m)).map_err(io)?,
            FetchAttr::InternalDate => write!(out, "INTERNALDATE \"{}\"", internal_date(m.date)).map_err(io)?,
            FetchAttr::Rfc822Size => write!(out, "RFC822.SIZE {}", m.size).map_err(io)?,
            FetchAttr::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                let h = loaded.header(mb, i)?;
                mime::envelope(h, out);
            }
            FetchAttr::Body | FetchAttr::BodyStructure => {
                let ext = matches!(item, FetchAttr::BodyStructure);
                out.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                let f = loaded.full(mb, i)?;
                mime::body_structure(f, ext, out);
            }
            FetchAttr::Rfc822 => {
                write!(out, "RFC822 {{{}}}\r\n", m.size).map_err(io)?;
                sent += stream_whole(out, mb, i, &mut loaded)?;
            }
            FetchAttr::Rfc822Header => {
                let h = loaded.header(mb, i)?;
                out.extend_from_slice(b"RFC822.HEADER ");
                response::literal(out, h);
                sent += h.len() as u64;
            }
            FetchAttr::Rfc822Text => {
                let f = loaded.full(mb, i)?;
                let body = &f[(m.hdr_size as usize).min(f.len())..];
                out.extend_from_slice(b"RFC822.TEXT ");
                response::literal(out, body);
                sent += body.len() as u64;
            }
            FetchAttr::Section { section, partial, .. } => {
                out.extend_from_slice(section_name(section, *partial).as_bytes());
                out.push(b' ');
                if section.part.is_empty() && section.text.is_none() && partial.is_none() {
                    write!(out, "{{{}}}\r\n", m.size).map_err(io)?;
                    sent += stream_whole(out, mb, i, &mut loaded)?;
                    continue;
                }
                let bytes: Option<Cow<[u8]>> = if section.part.is_empty() && section.text == Some(SectionText::Header) {
                    Some(Cow::Borrowed(loaded.header(mb, i)?))
                } else {
                    let f = loaded.full(mb, i)?;
                    mime::section(f, &section.part, section.text.as_ref())
                };
                match bytes {
                    // A part that isn't there: an empty literal, as other
                    // servers answer (RFC 3501 leaves it open).
                    None => out.extend_from_slice(b"{0}\r\n"),
                    Some(b) => {
                        let b = cut(&b, *partial);
                        response::literal(out, b);
                        sent += b.len() as u64;
                    }
                }
            }
        }
    }
    out.extend_from_slice(b")\r\n");
    Ok(sent)
}

/// The whole message into the response, from memory if it was read for
/// another item, else straight from the file.
fn stream_whole(out: &mut Vec<u8>, mb: &Mailbox, i: usize, loaded: &mut Loaded) -> Result<u64, StoreError> {
    if let Some(f) = &loaded.full {
        NoNul(out).write_all(f).map_err(io)?;
        return Ok(f.len() as u64);
    }
    let n = mb.write_message(i, &mut NoNul(out))?;
    let want = mb.messages()[i].size;
    if n != want {
        // The literal's length was announced: never send a different
        // number of bytes.
        return Err(StoreError::Changed(mb.path().to_path_buf()));
    }
    Ok(n)
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
        let mut v = Vec::new();
        NoNul(&mut v).write_all(b"a\0b\0").unwrap();
        assert_eq!(v, b"a\x80b\x80");
    }
}

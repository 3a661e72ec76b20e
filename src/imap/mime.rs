//! The MIME structure of a message for IMAP FETCH: BODYSTRUCTURE and BODY
//! (RFC 3501 §7.4.2), ENVELOPE, and the bytes of `BODY[section]`
//! (RFC 3501 §6.4.5).
//!
//! Messages are parsed as bytes, as RFC 2045 and RFC 2046 describe them:
//! header fields and their folding, Content-Type and its parameters with
//! RFC 2231 continuations, multipart boundaries (the CRLF before a
//! boundary belongs to the boundary), message/rfc822 and the
//! multipart/digest default; Content-Disposition (RFC 2183),
//! Content-Language (RFC 3066) and Content-Location (RFC 2557) for the
//! extension data; addresses with RFC 5322's obsolete syntax. Encoded
//! words (RFC 2047) and RFC 2231 values are passed on as they stand in the
//! header, as RFC 3501 asks.
//!
//! The answers are those of Dovecot 2.3, byte for byte, malformed input
//! included: tests/fixtures/mime/ holds a corpus of messages and what a
//! real Dovecot answered for each (see dovecot_expect.py there), and the
//! tests below compare. That covers the odd corners clients have come to
//! expect from it: line counts are the number of LFs in a part (so a
//! one-line part before a boundary has 0 lines), a text part without
//! a charset gets `("charset" "us-ascii")`, addresses without a mailbox
//! or domain get `MISSING_MAILBOX` / `MISSING_DOMAIN`, a broken
//! Content-Type is written as far as it could be read.
//!
//! A part that does not exist is `None` from [`section`]; Dovecot answers
//! it with an empty literal (`BODY[9] {0}`), and the caller should too.
//!
//! Deliberate differences, marked "Differs from Dovecot" where they are:
//! part number 0 names no part (RFC 3501 part numbers start at 1; Dovecot
//! takes it for the first part), and strings over 1024 bytes go out as
//! literals (the shared writer's rule; Dovecot quotes them). Where
//! Dovecot's answer depends on how much of a very long line it had read at
//! a time, the answer here is that for the whole line.
//!
//! Sizes are those of the message with CRLF line ends: a bare LF counts as
//! CRLF, and [`section`] turns bare LFs into CRLF, so a message kept with
//! LF line ends gives the same answers as it would with CRLF.
//!
//! Nothing here panics or loops on any input, and the work is linear in
//! the size of the message: nesting is bounded by [`MAX_NESTED_PARTS`]
//! (deeper parts become `application/octet-stream` leaves, as in Dovecot)
//! and the number of parts by [`MAX_TOTAL_PARTS`].

use std::borrow::Cow;

use memchr::{memchr, memchr_iter};

use super::command::SectionText;
use super::response::{literal, string};

/// RFC 2046 sets no limit on nesting; this is Dovecot's. A multipart or
/// message/rfc822 part this deep is not looked into: it is written as an
/// `application/octet-stream` leaf. It bounds the recursion of the writer.
pub const MAX_NESTED_PARTS: u32 = 100;

/// No more parts are split off after this many in one message (Dovecot's
/// limit): the rest of the message stays in the part being read.
pub const MAX_TOTAL_PARTS: u32 = 10_000;

/// RFC 2046 §5.1.1 limits a boundary to 70 characters; longer ones are
/// cut to this length (with Dovecot's slack of 10) before matching.
const BOUNDARY_MAX: usize = 80;

/// How much of a boundary line without a line end is compared.
const BOUNDARY_LINE_MAX: usize = BOUNDARY_MAX + 4;

/// RFC 5322 §2.1.1 limits a line to 998 characters; a longer field name
/// is taken as no name at all (Dovecot does the same).
const HEADER_NAME_MAX: usize = 1000;

/// What Dovecot writes for a NUL byte in a quoted string, comment or
/// domain literal of a structured field, and in unstructured fields.
const NUL_REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

/// The parameter RFC 2045 §5.2 defaults for text parts.
const DEFAULT_CHARSET: &[u8] = b"us-ascii";

// ---------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------

/// Writes the BODYSTRUCTURE (`extensible`) or BODY value of `msg`, with
/// its parentheses.
pub fn body_structure(msg: &[u8], extensible: bool, out: &mut Vec<u8>) {
    Mime::parse(msg).body_structure(extensible, out);
}

/// Writes the ENVELOPE value, with its parentheses, of the header block
/// `header` (RFC 3501 §7.4.2). Only the header is read: `header` may be
/// the whole message. Sender and Reply-To default to From. Several fields
/// of one address kind are joined as one list; of the other fields the
/// last one counts.
pub fn envelope(header: &[u8], out: &mut Vec<u8>) {
    write_envelope(header, out, &mut Scratch::default());
}

/// The bytes of `BODY[section]` before any `<partial>`: `part` holds the
/// part numbers (empty for the whole message), `text` what of that part.
///
/// `None` means the part does not exist. Dovecot answers that with an
/// empty string (`BODY[9] {0}` CRLF) and so should the caller; the same
/// goes for `HEADER`, `TEXT` and `HEADER.FIELDS` of a part that is not
/// message/rfc822. The bytes may contain NUL, which [`literal`] sends as
/// 0x80. Bare LFs come back as CRLF.
pub fn section<'a>(msg: &'a [u8], part: &[u32], text: Option<&SectionText>) -> Option<Cow<'a, [u8]>> {
    if part.is_empty() {
        // The whole message, its header or its text: no MIME parse needed.
        return match text {
            None => Some(crlf(msg)),
            Some(SectionText::Header) => Some(crlf(&msg[..header_len(msg)])),
            Some(SectionText::Text) => Some(crlf(&msg[header_len(msg)..])),
            Some(SectionText::HeaderFields(names)) => Some(Cow::Owned(filter_header(msg, names, true, true))),
            Some(SectionText::HeaderFieldsNot(names)) => Some(Cow::Owned(filter_header(msg, names, false, false))),
            // The grammar allows MIME only after a part number.
            Some(SectionText::Mime) => None,
        };
    }
    Mime::parse(msg).section(part, text)
}

/// Splits a message into its header (with the blank line that ends it,
/// when there is one) and its body.
pub fn split_header(msg: &[u8]) -> (&[u8], &[u8]) {
    msg.split_at(header_len(msg))
}

/// The value of the first header field called `name` (compared without
/// regard to case) in `header`, which may be a whole message: the bytes
/// after the colon and the white space after it, up to the end of the
/// field. A folded field keeps its line ends; see [`unfold`].
pub fn header_field<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    Fields::new(header).find(|f| f.name.eq_ignore_ascii_case(name.as_bytes())).map(|f| f.value)
}

/// A folded field value on one line: each line end inside it removed
/// (the white space that starts a continuation line stays). Borrows when
/// there is nothing to remove.
pub fn unfold(value: &[u8]) -> Cow<'_, [u8]> {
    if memchr(b'\n', value).is_none() && memchr(b'\r', value).is_none() {
        return Cow::Borrowed(value);
    }
    Cow::Owned(value.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect())
}

/// A message parsed into its MIME parts, for answering several FETCH items
/// from one parse.
pub struct Mime<'a> {
    msg: &'a [u8],
    parts: Vec<Part>,
}

impl<'a> Mime<'a> {
    /// Parses `msg`; linear in its size.
    pub fn parse(msg: &'a [u8]) -> Mime<'a> {
        Parser::new(msg).run()
    }

    /// Writes the BODYSTRUCTURE (`extensible`) or BODY value.
    pub fn body_structure(&self, extensible: bool, out: &mut Vec<u8>) {
        out.push(b'(');
        self.write_part(0, extensible, out, &mut Scratch::default());
        out.push(b')');
    }

    /// As [`section`], from this parse.
    pub fn section(&self, part: &[u32], text: Option<&SectionText>) -> Option<Cow<'a, [u8]>> {
        let msg = self.msg;
        if part.is_empty() {
            return section(msg, part, text);
        }
        let i = self.find(part)?;
        let p = &self.parts[i];
        let range = |start: usize, len: usize| {
            let start = start.min(msg.len());
            &msg[start..start.saturating_add(len).min(msg.len())]
        };
        let inner = || (p.flags & RFC822 != 0).then_some(p.first_child).filter(|&c| c != NONE).map(|c| &self.parts[c]);
        Some(match text {
            None => crlf(range(p.pos + p.hdr.phys, p.body.phys)),
            Some(SectionText::Mime) => crlf(range(p.pos, p.hdr.phys)),
            Some(SectionText::Header) => {
                let c = inner()?;
                crlf(range(c.pos, c.hdr.phys))
            }
            Some(SectionText::Text) => {
                let c = inner()?;
                crlf(range(c.pos + c.hdr.phys, c.body.phys))
            }
            // As in Dovecot, the fields are read from where the
            // encapsulated message starts up to the first blank line, and
            // no blank line is added when there is none.
            Some(SectionText::HeaderFields(names)) => {
                let c = inner()?;
                Cow::Owned(filter_header(range(c.pos, usize::MAX), names, true, false))
            }
            Some(SectionText::HeaderFieldsNot(names)) => {
                let c = inner()?;
                Cow::Owned(filter_header(range(c.pos, usize::MAX), names, false, false))
            }
        })
    }

    /// The part a section number names (RFC 3501 §6.4.5): in a multipart
    /// the n-th child; in any other part only 1, which is the part itself
    /// (its body) or, in a message/rfc822 part, the encapsulated message.
    fn find(&self, path: &[u32]) -> Option<usize> {
        let mut i = 0;
        for (k, &n) in path.iter().enumerate() {
            let p = &self.parts[i];
            if p.flags & MULTIPART != 0 {
                // Differs from Dovecot, which takes 0 for the first part:
                // RFC 3501 part numbers start at 1.
                let mut c = if n == 0 { NONE } else { p.first_child };
                for _ in 1..n {
                    if c == NONE {
                        break;
                    }
                    c = self.parts[c].next;
                }
                if c == NONE {
                    return None;
                }
                i = c;
            } else if n != 1 || (k + 1 < path.len() && p.flags & RFC822 == 0) {
                return None;
            }
            let p = &self.parts[i];
            if k + 1 < path.len() && p.flags & RFC822 != 0 {
                // The numbers go on inside the encapsulated message.
                i = p.first_child;
                if i == NONE {
                    return None;
                }
            }
        }
        Some(i)
    }

    fn write_part(&self, i: usize, ext: bool, out: &mut Vec<u8>, sc: &mut Scratch) {
        let p = &self.parts[i];
        let data = self.part_data(i);
        if p.flags & MULTIPART != 0 {
            if p.first_child == NONE {
                // A multipart without parts is not allowed: write one
                // empty text/plain part, as Dovecot does.
                out.extend_from_slice(b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0");
                out.extend_from_slice(if ext { b" NIL NIL NIL NIL)" } else { b")" });
            }
            let mut c = p.first_child;
            while c != NONE {
                out.push(b'(');
                self.write_part(c, ext, out, sc);
                out.push(b')');
                c = self.parts[c].next;
            }
            out.push(b' ');
            dv_string(out, data.subtype.as_deref().unwrap_or(b""));
            if ext {
                out.push(b' ');
                write_params(out, &data.params, false);
                write_common_ext(out, &data, &mut sc.text);
            }
            return;
        }

        let text;
        if p.flags & RFC822 != 0 {
            out.extend_from_slice(b"\"message\" \"rfc822\"");
            text = false;
        } else if self.is_truncated(i, &data) {
            // A multipart or message/rfc822 part past the nesting limit,
            // or a digest part without Content-Type there.
            out.extend_from_slice(b"\"application\" \"octet-stream\"");
            text = false;
        } else if let Some(t) = &data.content_type {
            text = t.eq_ignore_ascii_case(b"text");
            dv_string(out, t);
            out.push(b' ');
            dv_string(out, data.subtype.as_deref().unwrap_or(b""));
        } else {
            text = true;
            out.extend_from_slice(b"\"text\" \"plain\"");
        }
        out.push(b' ');
        write_params(out, &data.params, text);
        out.push(b' ');
        dv_nstring_nolf(out, data.id.as_deref(), &mut sc.text);
        out.push(b' ');
        dv_nstring_nolf(out, data.description.as_deref(), &mut sc.text);
        out.push(b' ');
        match &data.encoding {
            Some(e) => dv_string(out, e),
            None => out.extend_from_slice(b"\"7bit\""),
        }
        out.push(b' ');
        push_num(out, p.body.virt as u64);
        if text {
            out.push(b' ');
            push_num(out, p.body.lines);
        } else if p.flags & RFC822 != 0 && p.first_child != NONE {
            let c = &self.parts[p.first_child];
            out.push(b' ');
            write_envelope(self.header_of(c), out, sc);
            out.extend_from_slice(b" (");
            self.write_part(p.first_child, ext, out, sc);
            out.extend_from_slice(b") ");
            push_num(out, p.body.lines);
        }
        if ext {
            out.push(b' ');
            dv_nstring_nolf(out, data.md5.as_deref(), &mut sc.text);
            write_common_ext(out, &data, &mut sc.text);
        }
    }

    /// Dovecot's test for a part the parser did not look into although its
    /// Content-Type says it should have.
    fn is_truncated(&self, i: usize, data: &PartData) -> bool {
        let p = &self.parts[i];
        match &data.content_type {
            Some(t) => {
                (t.eq_ignore_ascii_case(b"message")
                    && data.subtype.as_deref().unwrap_or(b"").eq_ignore_ascii_case(b"rfc822"))
                    || t.eq_ignore_ascii_case(b"multipart")
            }
            None => p.parent != NONE && self.parts[p.parent].flags & DIGEST != 0,
        }
    }

    fn header_of(&self, p: &Part) -> &'a [u8] {
        let start = p.pos.min(self.msg.len());
        &self.msg[start..start.saturating_add(p.hdr.phys).min(self.msg.len())]
    }

    /// The Content-* fields of a part (RFC 2045 §3): the first of each
    /// counts, except that a Content-Disposition without parameters may be
    /// replaced by a later one (as in Dovecot). Without MIME-Version or
    /// Content-Type (or a multipart parent) none of them count.
    fn part_data(&self, i: usize) -> PartData {
        let p = &self.parts[i];
        let mut d = PartData::default();
        if p.flags & IS_MIME == 0 {
            return d;
        }
        let mut unfolded = Vec::new();
        for f in Fields::new(self.header_of(p)) {
            if f.name.len() < 8 || !f.name[..8].eq_ignore_ascii_case(b"Content-") {
                continue;
            }
            let v = full_value(f.value, &mut unfolded);
            let rest = &f.name[8..];
            if rest.eq_ignore_ascii_case(b"Type") {
                if d.content_type.is_none() {
                    parse_content_type_field(v, &mut d);
                }
            } else if rest.eq_ignore_ascii_case(b"Transfer-Encoding") {
                if d.encoding.is_none() {
                    let mut t = Tok::new(v);
                    t.skip_lwsp();
                    let mut s = Vec::new();
                    if t.mime_token(&mut s) >= 0 && t.skip_lwsp() == 0 && !s.is_empty() {
                        d.encoding = Some(s);
                    }
                }
            } else if rest.eq_ignore_ascii_case(b"ID") {
                d.id.get_or_insert_with(|| strdup(v).into_owned());
            } else if rest.eq_ignore_ascii_case(b"MD5") {
                d.md5.get_or_insert_with(|| strdup(v).into_owned());
            } else if rest.eq_ignore_ascii_case(b"Description") {
                d.description.get_or_insert_with(|| strdup(v).into_owned());
            } else if rest.eq_ignore_ascii_case(b"Location") {
                d.location.get_or_insert_with(|| strdup(v).into_owned());
            } else if rest.eq_ignore_ascii_case(b"Language") {
                if d.language.is_empty() {
                    parse_language(v, &mut d.language);
                }
            } else if rest.eq_ignore_ascii_case(b"Disposition") && d.disposition_params.is_empty() {
                let mut t = Tok::new(v);
                t.skip_lwsp();
                let mut s = Vec::new();
                if t.mime_token(&mut s) >= 0 {
                    d.disposition = Some(s);
                    d.disposition_params = rfc2231_params(&mut t);
                }
            }
        }
        d
    }
}

// ---------------------------------------------------------------------
// Parts and the MIME parser
// ---------------------------------------------------------------------

const NONE: usize = usize::MAX;

// Part flags.
const TEXT: u8 = 1;
const MULTIPART: u8 = 2;
const RFC822: u8 = 4;
const DIGEST: u8 = 8;
/// MIME-Version or Content-Type seen, or a part of a multipart: its
/// Content-* fields count.
const IS_MIME: u8 = 16;

/// Bytes as stored (`phys`), with bare LFs counted as CRLF (`virt`), and
/// LFs (`lines`).
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    phys: usize,
    virt: usize,
    lines: u64,
}

impl Size {
    fn add(&mut self, o: Size) {
        self.phys += o.phys;
        self.virt += o.virt;
        self.lines += o.lines;
    }
}

#[derive(Debug)]
struct Part {
    /// Where the part's header starts. As in Dovecot this is computed from
    /// the parent (its start and what it has read so far), which for an
    /// encapsulated message whose parent's header was cut short by a
    /// boundary is the line end before that boundary.
    pos: usize,
    hdr: Size,
    body: Size,
    flags: u8,
    depth: u32,
    parent: usize,
    first_child: usize,
    last_child: usize,
    next: usize,
}

struct Boundary {
    text: Vec<u8>,
    part: usize,
    /// The last line found was the closing `--boundary--`.
    closed: bool,
}

enum Step {
    Header,
    Body,
    SkipBoundaryLine,
    NewPart,
    Encapsulated,
    Done,
}

struct Parser<'a> {
    msg: &'a [u8],
    pos: usize,
    parts: Vec<Part>,
    cur: usize,
    /// Open boundaries, innermost last.
    boundaries: Vec<Boundary>,
    total: u32,
    last_chr: u8,
}

impl<'a> Parser<'a> {
    fn new(msg: &'a [u8]) -> Parser<'a> {
        let root = Part {
            pos: 0,
            hdr: Size::default(),
            body: Size::default(),
            flags: 0,
            depth: 0,
            parent: NONE,
            first_child: NONE,
            last_child: NONE,
            next: NONE,
        };
        Parser { msg, pos: 0, parts: vec![root], cur: 0, boundaries: Vec::new(), total: 1, last_chr: b'\n' }
    }

    fn run(mut self) -> Mime<'a> {
        let mut step = Step::Header;
        loop {
            step = match step {
                Step::Header => self.header(),
                Step::Body => self.body(),
                Step::SkipBoundaryLine => self.skip_boundary_line(),
                Step::NewPart => {
                    self.append();
                    self.parts[self.cur].flags |= IS_MIME;
                    Step::Header
                }
                Step::Encapsulated => {
                    self.append();
                    Step::Header
                }
                Step::Done => break,
            };
        }
        while self.cur != 0 {
            self.finish();
        }
        Mime { msg: self.msg, parts: self.parts }
    }

    fn too_deep(&self) -> bool {
        self.parts[self.cur].depth + 1 >= MAX_NESTED_PARTS
    }

    /// Starts a child of the current part and makes it current.
    fn append(&mut self) {
        let parent = self.cur;
        let p = &self.parts[parent];
        let part = Part {
            pos: p.pos + p.hdr.phys + p.body.phys,
            hdr: Size::default(),
            body: Size::default(),
            flags: 0,
            depth: p.depth + 1,
            parent,
            first_child: NONE,
            last_child: NONE,
            next: NONE,
        };
        let i = self.parts.len();
        self.parts.push(part);
        match self.parts[parent].last_child {
            NONE => self.parts[parent].first_child = i,
            last => self.parts[last].next = i,
        }
        self.parts[parent].last_child = i;
        self.cur = i;
        self.total += 1;
    }

    /// Ends the current part: its size goes into its parent's body.
    fn finish(&mut self) {
        let p = &self.parts[self.cur];
        let (parent, hdr, body) = (p.parent, p.hdr, p.body);
        self.parts[parent].body.add(body);
        self.parts[parent].body.add(hdr);
        self.cur = parent;
    }

    /// Adds `msg[start..end]` to the body of the current part.
    fn add_body(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        let block = &self.msg[start..end];
        let mut size = Size { phys: block.len(), virt: block.len(), lines: 0 };
        for i in memchr_iter(b'\n', block) {
            size.lines += 1;
            let prev = if i == 0 { self.last_chr } else { block[i - 1] };
            if prev != b'\r' {
                size.virt += 1;
            }
        }
        self.last_chr = block[block.len() - 1];
        self.parts[self.cur].body.add(size);
    }

    /// Reads the header of the current part, line by line, watching for
    /// the boundaries of the enclosing multiparts (a part may lack the
    /// blank line).
    fn header(&mut self) -> Step {
        let msg = self.msg;
        let part = self.cur;
        let mut seen_content_type = false;
        let mut boundary: Option<Vec<u8>> = None;
        let mut multipart = false;
        // The field being read: where its first line starts and where its
        // last line ends; whether the last line had a line end (and how
        // long it was).
        let mut field: Option<(usize, usize)> = None;
        let mut prev_newline = 0;
        loop {
            let at = self.pos;
            let continues = prev_newline > 0 && field.is_some() && matches!(msg.get(at), Some(b' ' | b'\t'));
            if !continues {
                if let Some((start, end)) = field.take() {
                    self.header_field(&msg[start..end], &mut seen_content_type, &mut boundary);
                }
            }
            let blank = msg.get(at) == Some(&b'\n') || msg.get(at..at + 2) == Some(b"\r\n");
            if blank && boundary.is_some() {
                // This multipart's own boundary counts from its body on.
                if self.too_deep() {
                    self.parts[part].flags &= !MULTIPART;
                } else if let Some(text) = boundary.take() {
                    self.boundaries.push(Boundary { text, part, closed: false });
                    multipart = true;
                }
            }
            if self.cut_by_boundary(at, prev_newline) {
                return self.end_header(seen_content_type, multipart);
            }
            if at >= msg.len() {
                return self.end_header(seen_content_type, multipart);
            }
            if blank {
                let n = if msg[at] == b'\n' { 1 } else { 2 };
                let h = &mut self.parts[part].hdr;
                h.lines += 1;
                h.phys += n;
                h.virt += 2;
                self.pos = at + n;
                // As in Dovecot, the line after the blank one is looked at
                // too: a boundary there takes the blank line's line end.
                self.cut_by_boundary(self.pos, n);
                return self.end_header(seen_content_type, multipart);
            }
            let (content_end, next) = match memchr(b'\n', &msg[at..]) {
                Some(i) => {
                    let lf = at + i;
                    let cr = lf > at && msg[lf - 1] == b'\r';
                    let h = &mut self.parts[part].hdr;
                    h.lines += 1;
                    h.phys += lf + 1 - at;
                    h.virt += lf + 1 - at + usize::from(!cr);
                    prev_newline = if cr { 2 } else { 1 };
                    (if cr { lf - 1 } else { lf }, lf + 1)
                }
                None => {
                    let h = &mut self.parts[part].hdr;
                    h.phys += msg.len() - at;
                    h.virt += msg.len() - at;
                    prev_newline = 0;
                    (msg.len(), msg.len())
                }
            };
            field = Some(match field {
                Some((start, _)) => (start, content_end),
                None => (at, content_end),
            });
            self.pos = next;
        }
    }

    /// Whether a boundary of an enclosing multipart starts at `at`, which
    /// ends the header of the current part. The line end before it (of
    /// `newline` bytes) belongs to the boundary, that is to the parent's
    /// body (RFC 2046 §5.1.1).
    fn cut_by_boundary(&mut self, at: usize, newline: usize) -> bool {
        if self.boundaries.is_empty() {
            return false;
        }
        let part = self.cur;
        match self.boundary_at(at) {
            Some(b) if self.boundaries[b].part != part => {}
            _ => return false,
        }
        if newline > 0 && self.parts[part].parent != NONE {
            let p = &mut self.parts[part];
            p.hdr.lines = p.hdr.lines.saturating_sub(1);
            p.hdr.phys = p.hdr.phys.saturating_sub(newline);
            p.hdr.virt = p.hdr.virt.saturating_sub(2);
            let parent = p.parent;
            let b = &mut self.parts[parent].body;
            b.lines += 1;
            b.phys += newline;
            b.virt += 2;
        }
        true
    }

    /// What the MIME parser itself needs of a header field: MIME-Version,
    /// and the first Content-Type for the kind of part and its boundary.
    fn header_field(&mut self, raw: &[u8], seen_content_type: &mut bool, boundary: &mut Option<Vec<u8>>) {
        let f = Field::split(raw);
        let part = &mut self.parts[self.cur];
        if f.name.eq_ignore_ascii_case(b"MIME-Version") {
            part.flags |= IS_MIME;
            return;
        }
        if !f.name.eq_ignore_ascii_case(b"Content-Type") {
            return;
        }
        // Dovecot takes Content-Type without MIME-Version as MIME too, as
        // much mail needs.
        part.flags |= IS_MIME;
        if *seen_content_type {
            return;
        }
        *seen_content_type = true;
        let mut unfolded = Vec::new();
        let v = full_value(f.value, &mut unfolded);
        let mut t = Tok::new(v);
        t.skip_lwsp();
        let mut ct = Vec::new();
        let ret = t.content_type(&mut ct);
        if ct.eq_ignore_ascii_case(b"message/rfc822") {
            part.flags |= RFC822;
        } else if ct.len() >= 4 && ct[..4].eq_ignore_ascii_case(b"text") && (ct.len() == 4 || ct[4] == b'/') {
            part.flags |= TEXT;
        } else if ct.len() >= 10 && ct[..10].eq_ignore_ascii_case(b"multipart/") {
            part.flags |= MULTIPART;
            if ct[10..].eq_ignore_ascii_case(b"digest") {
                part.flags |= DIGEST;
            }
        }
        if ret < 0 || part.flags & MULTIPART == 0 || boundary.is_some() {
            return;
        }
        if let Some((_, v)) = rfc2231_params(&mut t).into_iter().find(|(k, _)| k.eq_ignore_ascii_case(b"boundary")) {
            let mut v = until_nul(&v).to_vec();
            v.truncate(BOUNDARY_MAX);
            *boundary = Some(v);
        }
    }

    fn end_header(&mut self, seen_content_type: bool, multipart: bool) -> Step {
        let parent = self.parts[self.cur].parent;
        let digest_parent = parent != NONE && self.parts[parent].flags & DIGEST != 0;
        let p = &mut self.parts[self.cur];
        if p.flags & IS_MIME == 0 {
            p.flags = 0;
        }
        if !seen_content_type || p.flags & IS_MIME == 0 {
            // RFC 2046 §5.1.5: in a digest the default is message/rfc822;
            // elsewhere text/plain (RFC 2045 §5.2).
            p.flags |= if digest_parent { RFC822 } else { TEXT };
        }
        self.last_chr = b'\n';
        if multipart || p.flags & RFC822 == 0 {
            Step::Body
        } else if !self.too_deep() && self.total < MAX_TOTAL_PARTS {
            Step::Encapsulated
        } else {
            self.parts[self.cur].flags &= !RFC822;
            Step::Body
        }
    }

    /// The body of the current part, up to the next boundary line of an
    /// open multipart or the end of the message.
    fn body(&mut self) -> Step {
        let msg = self.msg;
        let start = self.pos;
        if self.boundaries.is_empty() {
            self.add_body(start, msg.len());
            self.pos = msg.len();
            return Step::Done;
        }
        if let Some(b) = self.boundary_at(start) {
            return self.boundary_found(b, start, true);
        }
        let mut from = start;
        while let Some(i) = memchr(b'\n', &msg[from..]) {
            let lf = from + i;
            if let Some(b) = self.boundary_at(lf + 1) {
                let bstart = if lf > start && msg[lf - 1] == b'\r' { lf - 1 } else { lf };
                self.add_body(start, bstart);
                return self.boundary_found(b, bstart, false);
            }
            from = lf + 1;
        }
        self.add_body(start, msg.len());
        self.pos = msg.len();
        Step::Done
    }

    /// A boundary line (with the line end before it, unless it is the
    /// first line of a body) starts at `at`: close the parts inside the
    /// boundary's multipart.
    fn boundary_found(&mut self, b: usize, at: usize, first_line: bool) -> Step {
        let owner = self.boundaries[b].part;
        while self.cur != owner && self.cur != 0 {
            self.finish();
        }
        let closed = self.boundaries[b].closed;
        let len = self.boundaries[b].text.len();
        self.boundaries.truncate(if closed { b } else { b + 1 });
        let newline = if first_line {
            0
        } else if self.msg[at] == b'\r' {
            2
        } else {
            1
        };
        let end = (at + newline + 2 + len + if closed { 2 } else { 0 }).min(self.msg.len());
        self.add_body(at, end);
        self.pos = end;
        Step::SkipBoundaryLine
    }

    /// The rest of a boundary line (RFC 2046 §5.1.1 transport padding, or
    /// anything) belongs to the multipart; then comes the next part or the
    /// epilogue.
    fn skip_boundary_line(&mut self) -> Step {
        let msg = self.msg;
        let Some(i) = memchr(b'\n', &msg[self.pos..]) else {
            self.add_body(self.pos, msg.len());
            self.pos = msg.len();
            return Step::Done;
        };
        let end = self.pos + i + 1;
        self.add_body(self.pos, end);
        self.pos = end;
        match self.boundaries.last() {
            Some(b) if b.part == self.cur => Step::NewPart,
            _ => Step::Body,
        }
    }

    /// Whether the line at `at` is a boundary line of an open multipart:
    /// `--` and the boundary at its start (RFC 2046 §5.1.1: only the
    /// beginning must match). Of several matches the longest wins;
    /// innermost first. Records whether it is a closing one.
    fn boundary_at(&mut self, at: usize) -> Option<usize> {
        let msg = self.msg;
        if at + 2 > msg.len() || msg[at] != b'-' || msg[at + 1] != b'-' || self.total >= MAX_TOTAL_PARTS {
            return None;
        }
        let rest = &msg[at + 2..];
        let (find_len, dashes) = match memchr(b'\n', rest) {
            Some(mut n) => {
                if n > 0 && rest[n - 1] == b'\r' {
                    n -= 1;
                }
                (n, n > 2 && rest[n - 1] == b'-' && rest[n - 2] == b'-')
            }
            None => (rest.len().min(BOUNDARY_LINE_MAX), false),
        };
        let line = &rest[..find_len];
        let mut best: Option<usize> = None;
        for (i, b) in self.boundaries.iter().enumerate().rev() {
            let n = b.text.len();
            if line.starts_with(&b.text) && best.is_none_or(|x| self.boundaries[x].text.len() < n) {
                best = Some(i);
                if n == find_len || (dashes && n + 2 == find_len) {
                    break;
                }
            }
        }
        let b = best?;
        let n = self.boundaries[b].text.len();
        self.boundaries[b].closed = rest.get(n..n + 2) == Some(b"--");
        Some(b)
    }
}

/// Length of the message header, with its blank line.
fn header_len(msg: &[u8]) -> usize {
    let mut fields = Fields::new(msg);
    for _ in fields.by_ref() {}
    fields.pos
}

// ---------------------------------------------------------------------
// Header fields
// ---------------------------------------------------------------------

/// A header field: its name (white space before the colon removed), and
/// its value from after the colon and the white space there to the end
/// of its last line (line ends inside kept).
struct Field<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

impl<'a> Field<'a> {
    /// Splits a field (its lines without the final line end). A line
    /// without a colon, or with an overlong name, has an empty name.
    fn split(raw: &'a [u8]) -> Field<'a> {
        let first_end = memchr(b'\n', raw).map_or(raw.len(), |i| if i > 0 && raw[i - 1] == b'\r' { i - 1 } else { i });
        let Some(colon) = memchr(b':', &raw[..first_end]) else {
            return Field { name: b"", value: raw };
        };
        let mut name_end = colon;
        while name_end > 0 && matches!(raw[name_end - 1], b' ' | b'\t') {
            name_end -= 1;
        }
        if name_end > HEADER_NAME_MAX {
            return Field { name: b"", value: raw };
        }
        // All white space after the colon goes, unless that is all there
        // is on the first line: then one character.
        let first = &raw[colon + 1..first_end];
        let skip = match first.iter().position(|&b| b != b' ' && b != b'\t') {
            Some(n) => n,
            None => usize::from(!first.is_empty()),
        };
        Field { name: &raw[..name_end], value: &raw[colon + 1 + skip..] }
    }
}

/// The fields of a header, up to its blank line or the end of the input.
/// Afterwards `pos` is where the body starts.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
    /// The header ended with a blank line.
    eoh: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf, pos: 0, done: false, eoh: false }
    }

    /// The next field as its raw lines: (start, end of content of the last
    /// line, start of the next line).
    fn next_raw(&mut self) -> Option<(usize, usize, usize)> {
        let buf = self.buf;
        if self.done {
            return None;
        }
        let start = self.pos;
        if start >= buf.len() {
            self.done = true;
            return None;
        }
        if buf[start] == b'\n' || buf[start..].starts_with(b"\r\n") {
            self.pos = start + if buf[start] == b'\n' { 1 } else { 2 };
            self.done = true;
            self.eoh = true;
            return None;
        }
        let mut at = start;
        loop {
            match memchr(b'\n', &buf[at..]) {
                None => {
                    self.pos = buf.len();
                    return Some((start, buf.len(), buf.len()));
                }
                Some(i) => {
                    let lf = at + i;
                    if matches!(buf.get(lf + 1), Some(b' ' | b'\t')) {
                        at = lf + 1;
                        continue;
                    }
                    self.pos = lf + 1;
                    let end = if lf > at && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
                    return Some((start, end, lf + 1));
                }
            }
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        let (start, end, _) = self.next_raw()?;
        Some(Field::split(&self.buf[start..end]))
    }
}

/// A field value as Dovecot's header parser gives it: the lines joined by
/// LF (a CR before each line end dropped).
fn full_value<'v>(value: &'v [u8], buf: &'v mut Vec<u8>) -> &'v [u8] {
    if memchr(b'\n', value).is_none() {
        return value;
    }
    buf.clear();
    let mut from = 0;
    for i in memchr_iter(b'\n', value) {
        let end = if i > from && value[i - 1] == b'\r' { i - 1 } else { i };
        buf.extend_from_slice(&value[from..end]);
        buf.push(b'\n');
        from = i + 1;
    }
    buf.extend_from_slice(&value[from..]);
    buf
}

/// An unstructured value as a string: NUL bytes become U+FFFD.
fn strdup(v: &[u8]) -> Cow<'_, [u8]> {
    if memchr(0, v).is_none() {
        return Cow::Borrowed(v);
    }
    let mut s = Vec::with_capacity(v.len() + 8);
    for &b in v {
        if b == 0 {
            s.extend_from_slice(NUL_REPLACEMENT);
        } else {
            s.push(b);
        }
    }
    Cow::Owned(s)
}

/// `BODY[HEADER.FIELDS (..)]` and `.NOT`: the fields (all their lines)
/// whose name is, or is not, in `names`, then the blank line if the
/// header has one (or, with `add_eoh`, always).
fn filter_header(header: &[u8], names: &[String], include: bool, add_eoh: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut fields = Fields::new(header);
    while let Some((start, end, next)) = fields.next_raw() {
        let raw = &header[start..end];
        let name = Field::split(raw).name;
        let listed = !name.is_empty() && names.iter().any(|n| n.as_bytes().eq_ignore_ascii_case(name));
        if listed == include {
            out.extend_from_slice(raw);
            if next > end {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if fields.eoh {
        out.extend_from_slice(b"\r\n");
    } else if add_eoh {
        if out.last().is_some_and(|&b| b != b'\n') {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    match crlf(&out) {
        Cow::Borrowed(_) => out,
        Cow::Owned(v) => v,
    }
}

/// `s` with every LF that has no CR before it turned into CRLF, as a
/// client sees a message.
fn crlf(s: &[u8]) -> Cow<'_, [u8]> {
    let bare = |i: usize| i == 0 || s[i - 1] != b'\r';
    if !memchr_iter(b'\n', s).any(bare) {
        return Cow::Borrowed(s);
    }
    let mut v = Vec::with_capacity(s.len() + s.len() / 32 + 2);
    let mut from = 0;
    for i in memchr_iter(b'\n', s) {
        if bare(i) {
            v.extend_from_slice(&s[from..i]);
            v.extend_from_slice(b"\r\n");
            from = i + 1;
        }
    }
    v.extend_from_slice(&s[from..]);
    Cow::Owned(v)
}

// ---------------------------------------------------------------------
// RFC 5322 / RFC 2045 tokens
// ---------------------------------------------------------------------

/// RFC 5322 atext (1: specials-free punctuation, 2: letters, digits and
/// 8-bit bytes), and 4 for `/`, `=` and `?`, which are atext but RFC 2045
/// tspecials.
const fn char_class(c: u8) -> u8 {
    match c {
        b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | 0x80..=0xff => 2,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'^' | b'_' | b'`' | b'{' | b'|' | b'}'
        | b'~' => 1,
        b'/' | b'=' | b'?' => 4,
        _ => 0,
    }
}

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = char_class(i as u8);
        i += 1;
    }
    t
};

fn is_atext(c: u8) -> bool {
    CLASS[c as usize] != 0
}

/// RFC 2045 token characters (with `.`, which the callers add).
fn is_token(c: u8) -> bool {
    CLASS[c as usize] & 3 != 0
}

/// A tokenizer for structured field values (RFC 5322 §3.2, RFC 2045 §5.1)
/// that reads as Dovecot's does. The methods return 1 when more input
/// follows, 0 at the end of the input, and -1 on malformed input; white
/// space and comments after a token are skipped.
struct Tok<'a> {
    d: &'a [u8],
    p: usize,
    /// Replace NUL in quoted strings, comments and domain literals.
    nul: bool,
    /// Keep the text of the last comment skipped.
    keep_comment: bool,
    comment: Vec<u8>,
}

impl<'a> Tok<'a> {
    fn new(d: &'a [u8]) -> Tok<'a> {
        Tok { d, p: 0, nul: false, keep_comment: false, comment: Vec::new() }
    }

    /// The current byte; 0 at the end, as the C string Dovecot reads.
    fn peek(&self) -> u8 {
        self.d.get(self.p).copied().unwrap_or(0)
    }

    fn more(&self) -> i8 {
        if self.p < self.d.len() {
            1
        } else {
            0
        }
    }

    fn skip_comment(&mut self) -> i8 {
        let d = self.d;
        if self.keep_comment {
            self.comment.clear();
        }
        self.p += 1;
        let mut start = self.p;
        let mut level = 1;
        while self.p < d.len() {
            match d[self.p] {
                0 if self.keep_comment && self.nul => {
                    self.comment.extend_from_slice(&d[start..self.p]);
                    self.comment.extend_from_slice(NUL_REPLACEMENT);
                    start = self.p + 1;
                }
                b'(' => level += 1,
                b')' => {
                    level -= 1;
                    if level == 0 {
                        if self.keep_comment {
                            self.comment.extend_from_slice(&d[start..self.p]);
                        }
                        self.p += 1;
                        return self.more();
                    }
                }
                b'\n' if self.keep_comment => {
                    let end = if self.p > start && d[self.p - 1] == b'\r' { self.p - 1 } else { self.p };
                    self.comment.extend_from_slice(&d[start..end]);
                    start = self.p + 1;
                }
                b'\\' => {
                    self.p += 1;
                    if self.p >= d.len() {
                        return -1;
                    }
                    if matches!(d[self.p], b'\r' | b'\n' | 0) {
                        // Not a quoted-pair: the backslash stays.
                        self.p -= 1;
                    } else {
                        if self.keep_comment {
                            self.comment.extend_from_slice(&d[start..self.p - 1]);
                        }
                        start = self.p;
                    }
                }
                _ => {}
            }
            self.p += 1;
        }
        -1
    }

    fn skip_lwsp(&mut self) -> i8 {
        while self.p < self.d.len() {
            match self.d[self.p] {
                b' ' | b'\t' | b'\r' | b'\n' => self.p += 1,
                b'(' => {
                    if self.skip_comment() < 0 {
                        return -1;
                    }
                }
                _ => break,
            }
        }
        self.more()
    }

    fn atom(&mut self, s: &mut Vec<u8>) -> i8 {
        if self.p >= self.d.len() || !is_atext(self.d[self.p]) {
            return -1;
        }
        let start = self.p;
        while self.p < self.d.len() && is_atext(self.d[self.p]) {
            self.p += 1;
        }
        s.extend_from_slice(&self.d[start..self.p]);
        if self.p < self.d.len() {
            self.skip_lwsp()
        } else {
            0
        }
    }

    fn dot_atom(&mut self, s: &mut Vec<u8>) -> i8 {
        let d = self.d;
        if self.p >= d.len() || !is_atext(d[self.p]) {
            return -1;
        }
        let mut start = self.p;
        self.p += 1;
        while self.p < d.len() {
            if is_atext(d[self.p]) {
                self.p += 1;
                continue;
            }
            if start == self.p {
                return -1;
            }
            s.extend_from_slice(&d[start..self.p]);
            let ret = self.skip_lwsp();
            if ret <= 0 {
                return ret;
            }
            if d[self.p] != b'.' {
                return 1;
            }
            self.p += 1;
            s.push(b'.');
            if self.skip_lwsp() <= 0 {
                return -1;
            }
            start = self.p;
        }
        s.extend_from_slice(&d[start..self.p]);
        0
    }

    /// An RFC 2045 token, possibly empty; `.` is allowed.
    fn mime_token(&mut self, s: &mut Vec<u8>) -> i8 {
        let start = self.p;
        while self.p < self.d.len() && (is_token(self.d[self.p]) || self.d[self.p] == b'.') {
            self.p += 1;
        }
        s.extend_from_slice(&self.d[start..self.p]);
        if self.p < self.d.len() {
            self.skip_lwsp()
        } else {
            0
        }
    }

    fn quoted_string(&mut self, s: &mut Vec<u8>) -> i8 {
        let d = self.d;
        self.p += 1;
        let mut start = self.p;
        while self.p < d.len() {
            match d[self.p] {
                0 if self.nul => {
                    s.extend_from_slice(&d[start..self.p]);
                    s.extend_from_slice(NUL_REPLACEMENT);
                    start = self.p + 1;
                }
                b'"' => {
                    s.extend_from_slice(&d[start..self.p]);
                    self.p += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    // Folding: the line end goes.
                    let end = if self.p > start && d[self.p - 1] == b'\r' { self.p - 1 } else { self.p };
                    s.extend_from_slice(&d[start..end]);
                    start = self.p + 1;
                }
                b'\\' => {
                    self.p += 1;
                    if self.p >= d.len() {
                        return -1;
                    }
                    if matches!(d[self.p], b'\r' | b'\n' | 0) {
                        self.p -= 1;
                    } else {
                        s.extend_from_slice(&d[start..self.p - 1]);
                        start = self.p;
                    }
                }
                _ => {}
            }
            self.p += 1;
        }
        -1
    }

    fn atom_or_dot(&mut self, s: &mut Vec<u8>) -> i8 {
        let start = self.p;
        while self.p < self.d.len() && (is_atext(self.d[self.p]) || self.d[self.p] == b'.') {
            self.p += 1;
        }
        s.extend_from_slice(&self.d[start..self.p]);
        if self.p < self.d.len() {
            self.skip_lwsp()
        } else {
            0
        }
    }

    /// RFC 5322 phrase, with obs-phrase's dots: words joined by one space.
    fn phrase(&mut self, s: &mut Vec<u8>) -> i8 {
        if self.p >= self.d.len() {
            return 0;
        }
        if self.d[self.p] == b'.' {
            return -1;
        }
        loop {
            let ret = if self.peek() == b'"' { self.quoted_string(s) } else { self.atom_or_dot(s) };
            if ret <= 0 {
                return ret;
            }
            let c = self.peek();
            if !is_atext(c) && c != b'"' && c != b'.' {
                break;
            }
            s.push(b' ');
        }
        self.skip_lwsp()
    }

    fn domain_literal(&mut self, s: &mut Vec<u8>) -> i8 {
        let d = self.d;
        let mut start = self.p;
        self.p += 1;
        while self.p < d.len() {
            match d[self.p] {
                0 if self.nul => {
                    s.extend_from_slice(&d[start..self.p]);
                    s.extend_from_slice(NUL_REPLACEMENT);
                    start = self.p + 1;
                }
                b'[' => return -1,
                b']' => {
                    s.extend_from_slice(&d[start..=self.p]);
                    self.p += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    let end = if self.p > start && d[self.p - 1] == b'\r' { self.p - 1 } else { self.p };
                    s.extend_from_slice(&d[start..end]);
                    start = self.p + 1;
                }
                b'\\' => {
                    // The backslash stays in a domain literal.
                    self.p += 1;
                    if self.p >= d.len() {
                        return -1;
                    }
                    if matches!(d[self.p], b'\r' | b'\n' | 0) {
                        s.extend_from_slice(&d[start..self.p]);
                        start = self.p;
                        self.p -= 1;
                    }
                }
                _ => {}
            }
            self.p += 1;
        }
        -1
    }

    /// `@` domain.
    fn domain(&mut self, s: &mut Vec<u8>) -> i8 {
        self.p += 1;
        if self.skip_lwsp() <= 0 {
            return -1;
        }
        if self.peek() == b'[' {
            self.domain_literal(s)
        } else {
            self.dot_atom(s)
        }
    }

    /// `type "/" subtype` of Content-Type into `s`. On failure `s` keeps
    /// what was read where Dovecot keeps it (a type alone stays).
    fn content_type(&mut self, s: &mut Vec<u8>) -> i8 {
        let start = s.len();
        if self.skip_lwsp() <= 0 {
            return -1;
        }
        if self.mime_token(s) <= 0 || s.len() == start {
            return -1;
        }
        if self.peek() != b'/' {
            s.truncate(start);
            return -1;
        }
        self.p += 1;
        if self.skip_lwsp() <= 0 {
            s.truncate(start);
            return -1;
        }
        s.push(b'/');
        let sub = s.len();
        let ret = self.mime_token(s);
        if ret < 0 || s.len() == sub || (self.p < self.d.len() && self.d[self.p] != b';') {
            s.truncate(start);
            return -1;
        }
        ret
    }

    /// One `; attribute = value` (RFC 2045 §5.1). Returns 0 at the end.
    fn content_param(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> i8 {
        key.clear();
        value.clear();
        if self.p >= self.d.len() {
            return 0;
        }
        if self.d[self.p] != b';' {
            return -1;
        }
        self.p += 1;
        if self.skip_lwsp() <= 0 {
            return -1;
        }
        if self.mime_token(key) <= 0 {
            return -1;
        }
        if self.peek() != b'=' {
            return -1;
        }
        self.p += 1;
        let mut ret = self.skip_lwsp();
        if ret <= 0 {
            // No value.
        } else if self.d[self.p] == b'"' {
            ret = self.quoted_string(value);
        } else if self.d[self.p] == b'=' {
            // An unquoted encoded word (name==?utf-8?b?...?=), a common
            // mistake: taken up to white space or `;`.
            while self.p < self.d.len() && !matches!(self.d[self.p], b';' | b' ' | b'\t' | b'\r' | b'\n') {
                value.push(self.d[self.p]);
                self.p += 1;
            }
        } else {
            ret = self.mime_token(value);
        }
        if ret < 0 {
            -1
        } else {
            1
        }
    }
}

/// The parameters after a Content-Type or Content-Disposition value, with
/// RFC 2231 continuations joined (`name*0*`, `name*1`... become `name*`,
/// still encoded, as Dovecot gives them); malformed parameters are skipped.
fn rfc2231_params(t: &mut Tok) -> Vec<(Vec<u8>, Vec<u8>)> {
    struct Piece {
        key: Vec<u8>,
        value: Vec<u8>,
        idx: u32,
        extended: bool,
    }
    t.nul = true;
    let mut plain = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    // Dovecot keeps the index of the previous piece for `name*`.
    let mut idx = 0u32;
    loop {
        let ret = t.content_param(&mut key, &mut value);
        if ret == 0 {
            break;
        }
        if ret < 0 {
            if t.p >= t.d.len() {
                break;
            }
            t.p += 1;
            continue;
        }
        if let Some(star) = memchr(b'*', &key) {
            let mut q = star;
            if q + 1 < key.len() {
                q += 1;
                idx = 0;
                while q < key.len() && key[q].is_ascii_digit() {
                    idx = idx.wrapping_mul(10).wrapping_add(u32::from(key[q] - b'0'));
                    q += 1;
                }
            }
            let extended = key.get(q) == Some(&b'*');
            if extended {
                q += 1;
            }
            if q == key.len() {
                pieces.push(Piece { key: key[..star].to_vec(), value: value.clone(), idx, extended });
                continue;
            }
        }
        plain.push((key.clone(), value.clone()));
    }
    t.nul = false;
    if pieces.is_empty() {
        return plain;
    }
    // Sorted by name (case counts here, not below) and index. The sort is
    // stable: Dovecot's order for two pieces with the same name and index
    // is unspecified, and the corpus shows it keeps them in order.
    pieces.sort_by(|a, b| a.key.cmp(&b.key).then(a.idx.cmp(&b.idx)));
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i;
        let mut ok = true;
        let mut have_extended = false;
        while j < pieces.len() && pieces[j].key.eq_ignore_ascii_case(&pieces[i].key) {
            ok &= pieces[j].idx as usize == j - i;
            have_extended |= pieces[j].extended;
            j += 1;
        }
        if !ok {
            // A missing piece: keep them as they were named.
            for p in &pieces[i..j] {
                let mut k = p.key.clone();
                k.push(b'*');
                k.extend_from_slice(p.idx.to_string().as_bytes());
                if p.extended {
                    k.push(b'*');
                }
                plain.push((k, p.value.clone()));
            }
        } else {
            let mut v = Vec::new();
            if !pieces[i].extended && have_extended {
                v.extend_from_slice(b"''");
            }
            for p in &pieces[i..j] {
                if !p.extended && have_extended {
                    for &b in &p.value {
                        if b == b'%' {
                            v.extend_from_slice(b"%25");
                        } else {
                            v.push(b);
                        }
                    }
                } else {
                    v.extend_from_slice(&p.value);
                }
            }
            let mut k = pieces[i].key.clone();
            if have_extended {
                k.push(b'*');
            }
            plain.push((k, v));
        }
        i = j;
    }
    plain
}

// ---------------------------------------------------------------------
// Content-* fields
// ---------------------------------------------------------------------

#[derive(Default)]
struct PartData {
    content_type: Option<Vec<u8>>,
    subtype: Option<Vec<u8>>,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    id: Option<Vec<u8>>,
    description: Option<Vec<u8>>,
    encoding: Option<Vec<u8>>,
    md5: Option<Vec<u8>>,
    disposition: Option<Vec<u8>>,
    disposition_params: Vec<(Vec<u8>, Vec<u8>)>,
    language: Vec<Vec<u8>>,
    location: Option<Vec<u8>>,
}

fn parse_content_type_field(v: &[u8], d: &mut PartData) {
    let mut t = Tok::new(v);
    t.skip_lwsp();
    let mut s = Vec::new();
    let ret = t.content_type(&mut s);
    let (ty, sub) = match memchr(b'/', &s) {
        Some(i) => (s[..i].to_vec(), s[i + 1..].to_vec()),
        None => (s, Vec::new()),
    };
    d.content_type = Some(ty);
    d.subtype = Some(sub);
    if ret >= 0 {
        d.params = rfc2231_params(&mut t);
    }
}

/// RFC 3066 language tags separated by commas (atoms, comments allowed).
fn parse_language(v: &[u8], langs: &mut Vec<Vec<u8>>) {
    let mut t = Tok::new(v);
    t.skip_lwsp();
    loop {
        let mut s = Vec::new();
        if t.atom(&mut s) < 0 {
            break;
        }
        langs.push(s);
        if t.p >= t.d.len() || t.d[t.p] != b',' {
            break;
        }
        t.p += 1;
        t.skip_lwsp();
    }
}

fn write_params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)], default_charset: bool) {
    if params.is_empty() && !default_charset {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    let mut seen_charset = false;
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        seen_charset |= k.eq_ignore_ascii_case(b"charset");
        dv_string(out, k);
        out.push(b' ');
        dv_string(out, v);
    }
    if default_charset && !seen_charset {
        if !params.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"\"charset\" ");
        dv_string(out, DEFAULT_CHARSET);
    }
    out.push(b')');
}

/// Disposition, language and location: the extension data both kinds of
/// part end with.
fn write_common_ext(out: &mut Vec<u8>, d: &PartData, scratch: &mut Vec<u8>) {
    out.push(b' ');
    match &d.disposition {
        None => out.extend_from_slice(b"NIL"),
        Some(disp) => {
            out.push(b'(');
            dv_string(out, disp);
            out.push(b' ');
            write_params(out, &d.disposition_params, false);
            out.push(b')');
        }
    }
    out.push(b' ');
    if d.language.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        for (i, l) in d.language.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            dv_string(out, l);
        }
        out.push(b')');
    }
    out.push(b' ');
    dv_nstring_nolf(out, d.location.as_deref(), scratch);
}

// ---------------------------------------------------------------------
// Strings as Dovecot writes them
// ---------------------------------------------------------------------

fn until_nul(s: &[u8]) -> &[u8] {
    &s[..memchr(0, s).unwrap_or(s.len())]
}

/// A string the way Dovecot chooses between quoted and literal: a
/// literal for CR, LF, 8-bit bytes or more than four characters to
/// escape. Its strings end at a NUL byte, and so do these.
///
/// Differs from Dovecot in one respect: [`string`] sends anything over
/// 1024 bytes as a literal, where Dovecot quotes it.
fn dv_string(out: &mut Vec<u8>, s: &[u8]) {
    let s = until_nul(s);
    let mut escapes = 0;
    for &b in s {
        let needs_literal = match b {
            b'"' | b'\\' => {
                escapes += 1;
                escapes > 4
            }
            b'\r' | b'\n' => true,
            _ => b >= 0x80,
        };
        if needs_literal {
            literal(out, s);
            return;
        }
    }
    string(out, s);
}

/// An nstring with line ends removed; a space stands in for one unless
/// white space follows it anyway.
fn dv_nstring_nolf(out: &mut Vec<u8>, s: Option<&[u8]>, scratch: &mut Vec<u8>) {
    let Some(s) = s else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let s = until_nul(s);
    if memchr(b'\n', s).is_none() && memchr(b'\r', s).is_none() {
        dv_string(out, s);
        return;
    }
    scratch.clear();
    for (i, &b) in s.iter().enumerate() {
        if b != b'\r' && b != b'\n' {
            scratch.push(b);
        } else if !matches!(s.get(i + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n')) {
            scratch.push(b' ');
        }
    }
    dv_string(out, scratch);
}

/// Text meant for people (Subject, display names), as Dovecot writes it:
/// runs of white space and line ends become one space, leading and
/// trailing white space goes. When anything had to change, or the text
/// needs escaping, it is sent as a literal. (Differs from Dovecot as
/// [`dv_string`] does for text over 1024 bytes.)
fn write_for_humans(out: &mut Vec<u8>, s: &[u8], scratch: &mut Vec<u8>) {
    let lwsp = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut modify = false;
    let mut last_lwsp = true;
    for &b in s {
        match b {
            b'\t' | b'\r' | b'\n' => modify = true,
            b' ' => modify |= last_lwsp,
            b'"' | b'\\' | 0 => modify = true,
            _ => modify |= b >= 0x80,
        }
        last_lwsp = lwsp(b);
    }
    modify |= last_lwsp && !s.is_empty();
    if !modify {
        string(out, s);
        return;
    }
    scratch.clear();
    let mut last_lwsp = true;
    for &b in s {
        if lwsp(b) {
            if !last_lwsp {
                scratch.push(b' ');
            }
            last_lwsp = true;
        } else {
            scratch.push(b);
            last_lwsp = false;
        }
    }
    if last_lwsp && !scratch.is_empty() {
        scratch.pop();
    }
    if scratch.is_empty() {
        string(out, b"");
    } else {
        literal(out, scratch);
    }
}

fn push_num(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

// ---------------------------------------------------------------------
// ENVELOPE
// ---------------------------------------------------------------------

/// Buffers reused while writing one envelope or body structure, so that
/// a typical envelope costs a handful of allocations at most.
#[derive(Default)]
struct Scratch {
    /// Text rewritten for output (line ends or white space removed).
    text: Vec<u8>,
    /// A folded field value joined into one.
    unfolded: Vec<u8>,
    /// Phrase, local part or domain being read.
    s: Vec<u8>,
    /// The last comment skipped.
    comment: Vec<u8>,
    addr: Addr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EnvField {
    Date,
    Subject,
    From,
    Sender,
    ReplyTo,
    To,
    Cc,
    Bcc,
    InReplyTo,
    MessageId,
}

impl EnvField {
    fn of(name: &[u8]) -> Option<EnvField> {
        let f = match name.len() {
            2 if name.eq_ignore_ascii_case(b"To") => EnvField::To,
            2 if name.eq_ignore_ascii_case(b"Cc") => EnvField::Cc,
            3 if name.eq_ignore_ascii_case(b"Bcc") => EnvField::Bcc,
            4 if name.eq_ignore_ascii_case(b"Date") => EnvField::Date,
            4 if name.eq_ignore_ascii_case(b"From") => EnvField::From,
            6 if name.eq_ignore_ascii_case(b"Sender") => EnvField::Sender,
            7 if name.eq_ignore_ascii_case(b"Subject") => EnvField::Subject,
            8 if name.eq_ignore_ascii_case(b"Reply-To") => EnvField::ReplyTo,
            10 if name.eq_ignore_ascii_case(b"Message-ID") => EnvField::MessageId,
            11 if name.eq_ignore_ascii_case(b"In-Reply-To") => EnvField::InReplyTo,
            _ => return None,
        };
        Some(f)
    }

    fn is_address(self) -> bool {
        matches!(
            self,
            EnvField::From | EnvField::Sender | EnvField::ReplyTo | EnvField::To | EnvField::Cc | EnvField::Bcc
        )
    }
}

/// Where an envelope field is in the header: for the address fields the
/// first one and how many there are (the others are found again when
/// writing); for the rest the last one, which is the one that counts.
#[derive(Default, Clone, Copy)]
struct Seen<'a> {
    value: Option<&'a [u8]>,
    count: u32,
}

fn write_envelope(header: &[u8], out: &mut Vec<u8>, sc: &mut Scratch) {
    let mut seen = [Seen::default(); 10];
    for f in Fields::new(header) {
        if let Some(e) = EnvField::of(f.name) {
            let s = &mut seen[e as usize];
            if !e.is_address() || s.count == 0 {
                s.value = Some(f.value);
            }
            s.count = s.count.saturating_add(1);
        }
    }
    out.push(b'(');
    write_unstructured(out, seen[EnvField::Date as usize].value, sc);
    out.push(b' ');
    match seen[EnvField::Subject as usize].value {
        None => out.extend_from_slice(b"NIL"),
        Some(v) => {
            let v = strdup(full_value(v, &mut sc.unfolded));
            write_for_humans(out, &v, &mut sc.text);
        }
    }
    let mut from = (0, 0);
    for e in [EnvField::From, EnvField::Sender, EnvField::ReplyTo, EnvField::To, EnvField::Cc, EnvField::Bcc] {
        out.push(b' ');
        let start = out.len();
        let wrote = write_address_field(header, e, &seen[e as usize], out, sc);
        if e == EnvField::From {
            from = (start, out.len());
        } else if !wrote && matches!(e, EnvField::Sender | EnvField::ReplyTo) {
            // RFC 3501 §7.4.2: Sender and Reply-To default to From.
            out.truncate(start);
            out.extend_from_within(from.0..from.1);
        }
    }
    out.push(b' ');
    write_unstructured(out, seen[EnvField::InReplyTo as usize].value, sc);
    out.push(b' ');
    write_unstructured(out, seen[EnvField::MessageId as usize].value, sc);
    out.push(b')');
}

/// Date, In-Reply-To and Message-ID: the value as it stands, unfolded.
fn write_unstructured(out: &mut Vec<u8>, value: Option<&[u8]>, sc: &mut Scratch) {
    match value {
        None => out.extend_from_slice(b"NIL"),
        Some(v) => {
            let v = strdup(full_value(v, &mut sc.unfolded));
            dv_nstring_nolf(out, Some(&v), &mut sc.text);
        }
    }
}

/// Writes all fields of address kind `e` as one list, or NIL; returns
/// whether there was an address.
fn write_address_field(header: &[u8], e: EnvField, seen: &Seen, out: &mut Vec<u8>, sc: &mut Scratch) -> bool {
    let Some(first) = seen.value else {
        out.extend_from_slice(b"NIL");
        return false;
    };
    let mut count = 0;
    if seen.count == 1 {
        parse_addresses(first, out, sc, &mut count);
    } else {
        for f in Fields::new(header) {
            if EnvField::of(f.name) == Some(e) {
                parse_addresses(f.value, out, sc, &mut count);
            }
        }
    }
    if count == 0 {
        out.extend_from_slice(b"NIL");
        false
    } else {
        out.push(b')');
        true
    }
}

/// Reads an address list (RFC 5322 §3.4, with §4.4's obsolete forms) and
/// writes each address as it is read: groups as `(NIL NIL "name" NIL)`
/// ... `(NIL NIL NIL NIL)`, missing parts filled in as Dovecot does.
fn parse_addresses(value: &[u8], out: &mut Vec<u8>, sc: &mut Scratch, count: &mut usize) {
    let mut unfolded = std::mem::take(&mut sc.unfolded);
    let v = full_value(value, &mut unfolded);
    let mut t = Tok::new(v);
    t.nul = true;
    t.keep_comment = true;
    t.comment = std::mem::take(&mut sc.comment);
    sc.addr.clear();
    let mut p = AddrParser { t, out, sc, count, invalid: false };
    if p.t.skip_lwsp() > 0 {
        p.address_list();
    }
    let comment = std::mem::take(&mut p.t.comment);
    sc.comment = comment;
    sc.unfolded = unfolded;
}

/// One part of an address: unset, or bytes (perhaps empty).
#[derive(Default)]
struct Slot {
    set: bool,
    v: Vec<u8>,
}

impl Slot {
    fn set(&mut self, v: &[u8]) {
        self.v.clear();
        self.v.extend_from_slice(v);
        self.set = true;
    }

    fn get(&self) -> Option<&[u8]> {
        self.set.then_some(&self.v[..])
    }
}

#[derive(Default)]
struct Addr {
    name: Slot,
    route: Slot,
    mailbox: Slot,
    domain: Slot,
}

impl Addr {
    fn clear(&mut self) {
        self.name.set = false;
        self.route.set = false;
        self.mailbox.set = false;
        self.domain.set = false;
    }
}

struct AddrParser<'v, 'w> {
    t: Tok<'v>,
    out: &'w mut Vec<u8>,
    sc: &'w mut Scratch,
    count: &'w mut usize,
    /// The addr-spec just read was not valid (Dovecot's test for taking a
    /// lone word as a display name).
    invalid: bool,
}

impl AddrParser<'_, '_> {
    /// Writes the address read and starts a new one.
    fn add(&mut self) {
        let out = &mut *self.out;
        if *self.count == 0 {
            out.push(b'(');
        }
        *self.count += 1;
        let a = &self.sc.addr;
        out.push(b'(');
        match a.name.get() {
            None => out.extend_from_slice(b"NIL"),
            Some(n) => write_for_humans(out, until_nul(n), &mut self.sc.text),
        }
        for f in [&a.route, &a.mailbox, &a.domain] {
            out.push(b' ');
            match f.get() {
                None => out.extend_from_slice(b"NIL"),
                Some(v) => dv_string(out, v),
            }
        }
        out.push(b')');
        self.sc.addr.clear();
        self.invalid = false;
    }

    /// Fills in what is missing, as Dovecot does, and writes the address.
    fn add_fixed(&mut self) {
        let a = &mut self.sc.addr;
        if !a.mailbox.set {
            a.mailbox.set(b"MISSING_MAILBOX");
        }
        if a.domain.get().is_none_or(|d| d.is_empty()) {
            a.domain.set(b"MISSING_DOMAIN");
        }
        self.add();
    }

    /// A local part: a quoted string, or atoms with dots anywhere (as
    /// obs-local-part, and worse, is found in the wild).
    fn local_part(&mut self) -> i8 {
        self.sc.s.clear();
        let ret = if self.t.peek() == b'"' { self.t.quoted_string(&mut self.sc.s) } else { self.loose_dot_atom() };
        if ret < 0 {
            return -1;
        }
        self.sc.addr.mailbox.set(&self.sc.s);
        ret
    }

    fn loose_dot_atom(&mut self) -> i8 {
        let mut ret = -1;
        loop {
            while self.t.peek() == b'.' {
                self.sc.s.push(b'.');
                self.t.p += 1;
                if self.t.p >= self.t.d.len() {
                    return 0;
                }
                ret = 1;
            }
            if self.t.peek() == b'@' {
                break;
            }
            ret = self.t.atom(&mut self.sc.s);
            if ret <= 0 || self.t.peek() != b'.' {
                break;
            }
        }
        ret
    }

    fn domain(&mut self) -> i8 {
        self.sc.s.clear();
        let ret = self.t.domain(&mut self.sc.s);
        if ret < 0 {
            return -1;
        }
        self.sc.addr.domain.set(&self.sc.s);
        ret
    }

    /// obs-route: `@a,@b` before the colon.
    fn domain_list(&mut self) -> i8 {
        self.sc.s.clear();
        loop {
            if self.t.p >= self.t.d.len() {
                return 0;
            }
            if self.t.peek() != b'@' {
                break;
            }
            if !self.sc.s.is_empty() {
                self.sc.s.push(b',');
            }
            self.sc.s.push(b'@');
            let ret = self.t.domain(&mut self.sc.s);
            if ret <= 0 {
                return ret;
            }
            while self.t.skip_lwsp() > 0 && self.t.peek() == b',' {
                self.t.p += 1;
            }
        }
        self.sc.addr.route.set(&self.sc.s);
        1
    }

    fn angle_addr(&mut self) -> i8 {
        self.t.p += 1;
        if self.t.skip_lwsp() <= 0 {
            return -1;
        }
        if self.t.peek() == b'@' {
            if self.domain_list() > 0 && self.t.peek() == b':' {
                self.t.p += 1;
            } else {
                self.sc.addr.route.set(b"INVALID_ROUTE");
                if self.t.p >= self.t.d.len() {
                    return -1;
                }
            }
            if self.t.skip_lwsp() <= 0 {
                return -1;
            }
        }
        if self.t.peek() != b'>' {
            // `<>` has neither.
            if self.local_part() <= 0 {
                return -1;
            }
            if self.t.peek() == b'@' && self.domain() <= 0 {
                return -1;
            }
        }
        if self.t.peek() != b'>' {
            return -1;
        }
        self.t.p += 1;
        self.t.skip_lwsp()
    }

    fn name_addr(&mut self) -> i8 {
        self.sc.s.clear();
        if self.t.phrase(&mut self.sc.s) <= 0 || self.t.peek() != b'<' {
            return -1;
        }
        if !self.sc.s.is_empty() {
            self.sc.addr.name.set(&self.sc.s);
        }
        if self.angle_addr() < 0 {
            self.sc.addr.domain.set(b"SYNTAX_ERROR");
        }
        self.t.more()
    }

    fn addr_spec(&mut self) -> i8 {
        self.t.comment.clear();
        let quoted = self.t.peek() == b'"';
        let mut ret = self.local_part();
        if ret <= 0 {
            self.invalid = true;
        }
        let mut ret2 = -2;
        if ret != 0 && self.t.p < self.t.d.len() && self.t.peek() == b'@' {
            ret2 = self.domain();
            if ret2 <= 0 {
                ret = ret2;
            }
        }
        if !self.t.comment.is_empty() {
            // user@host (Real Name)
            self.sc.addr.name.set(&self.t.comment);
        } else if ret2 == -2 {
            // A word without @domain: a mailbox if it stands alone, the
            // start of a display name otherwise.
            self.sc.s.push(b' ');
            let before = self.sc.s.len();
            self.t.phrase(&mut self.sc.s);
            if self.sc.s.len() != before {
                self.sc.addr.mailbox.set = false;
                self.sc.addr.name.set(&self.sc.s);
            } else if !quoted {
                self.sc.addr.domain.set(b"");
            }
            self.invalid = true;
            ret = -1;
        }
        ret
    }

    fn mailbox(&mut self) -> i8 {
        let start = self.t.p;
        let mut ret = self.name_addr();
        if ret < 0 {
            self.t.p = start;
            ret = if start < self.t.d.len() { self.addr_spec() } else { -1 };
            let a = &mut self.sc.addr;
            if self.invalid && !a.name.set && a.mailbox.set && !a.domain.set {
                std::mem::swap(&mut a.name, &mut a.mailbox);
            }
        }
        self.add_fixed();
        ret
    }

    fn group(&mut self) -> i8 {
        self.sc.s.clear();
        if self.t.phrase(&mut self.sc.s) <= 0 || self.t.peek() != b':' {
            return -1;
        }
        // From here on it is a group, however broken.
        self.t.p += 1;
        let mut ret = self.t.skip_lwsp();
        let Scratch { addr, s, .. } = &mut *self.sc;
        addr.mailbox.set(s);
        self.add();
        if ret > 0 && self.t.peek() != b';' {
            loop {
                self.mailbox();
                if self.t.p >= self.t.d.len() || self.t.peek() != b',' {
                    break;
                }
                self.t.p += 1;
                if self.t.skip_lwsp() <= 0 {
                    ret = -1;
                    break;
                }
            }
        }
        if ret >= 0 {
            if self.t.p >= self.t.d.len() || self.t.peek() != b';' {
                ret = -1;
            } else {
                self.t.p += 1;
                ret = self.t.skip_lwsp();
            }
        }
        // The end of the group.
        self.add();
        if ret == 0 {
            0
        } else {
            1
        }
    }

    fn address(&mut self) -> i8 {
        let start = self.t.p;
        let ret = self.group();
        if ret >= 0 {
            return ret;
        }
        self.t.p = start;
        self.mailbox()
    }

    /// Addresses separated by commas; reading stops at anything else.
    fn address_list(&mut self) {
        loop {
            if self.address() == 0 {
                break;
            }
            if self.t.p >= self.t.d.len() || self.t.peek() != b',' {
                break;
            }
            self.t.p += 1;
            let ret = self.t.skip_lwsp();
            if ret <= 0 {
                if ret < 0 {
                    // Ends in an unclosed comment.
                    self.add_fixed();
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mime")
    }

    /// The records of a NAME.expected file (see dovecot_expect.py).
    fn read_expected(data: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let nl = i + memchr(b'\n', &data[i..]).expect("record line");
            let head = std::str::from_utf8(&data[i..nl]).expect("utf-8 record line");
            let rest = head.strip_prefix("== ").expect("record marker");
            let (len, item) = rest.split_once(' ').expect("length and item");
            let len: usize = len.parse().expect("length");
            out.push((item.to_string(), data[nl + 1..nl + 1 + len].to_vec()));
            i = nl + 1 + len + 1;
        }
        out
    }

    /// `1.2.HEADER.FIELDS (A B)` -> ([1, 2], HeaderFields([A, B])).
    fn parse_section(spec: &str) -> (Vec<u32>, Option<SectionText>) {
        let mut part = Vec::new();
        let mut rest = spec;
        while let Some(c) = rest.chars().next().filter(char::is_ascii_digit) {
            let _ = c;
            let end = rest.find('.').unwrap_or(rest.len());
            part.push(rest[..end].parse().expect("part number"));
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let names = |s: &str| -> Vec<String> {
            s.trim().trim_start_matches('(').trim_end_matches(')').split_whitespace().map(String::from).collect()
        };
        let text = if rest.is_empty() {
            None
        } else if let Some(l) = rest.strip_prefix("HEADER.FIELDS.NOT") {
            Some(SectionText::HeaderFieldsNot(names(l)))
        } else if let Some(l) = rest.strip_prefix("HEADER.FIELDS") {
            Some(SectionText::HeaderFields(names(l)))
        } else {
            Some(match rest {
                "HEADER" => SectionText::Header,
                "TEXT" => SectionText::Text,
                "MIME" => SectionText::Mime,
                other => panic!("unknown section {other}"),
            })
        };
        (part, text)
    }

    /// The one deliberate difference in how strings are sent: the shared
    /// writer sends strings over 1024 bytes as literals, where Dovecot
    /// quotes them. Rewrites such quoted strings in Dovecot's answer.
    fn long_quoted_as_literals(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'{' => {
                    let close = i + memchr(b'}', &s[i..]).expect("literal length");
                    let n: usize = std::str::from_utf8(&s[i + 1..close]).unwrap().parse().unwrap();
                    let end = close + 3 + n;
                    out.extend_from_slice(&s[i..end]);
                    i = end;
                }
                b'"' => {
                    let mut text = Vec::new();
                    let mut j = i + 1;
                    while s[j] != b'"' {
                        if s[j] == b'\\' {
                            j += 1;
                        }
                        text.push(s[j]);
                        j += 1;
                    }
                    if text.len() > 1024 {
                        literal(&mut out, &text);
                    } else {
                        out.extend_from_slice(&s[i..=j]);
                    }
                    i = j + 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Every message of the corpus against what Dovecot answered.
    #[test]
    fn corpus_matches_dovecot() {
        let mut names: Vec<_> = std::fs::read_dir(fixtures())
            .expect("fixture directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(".eml").map(String::from))
            .collect();
        names.sort();
        assert!(names.len() >= 40, "corpus incomplete: {names:?}");
        let mut failures = Vec::new();
        let mut checked = 0;
        for name in &names {
            let msg = std::fs::read(fixtures().join(format!("{name}.eml"))).unwrap();
            let expected = std::fs::read(fixtures().join(format!("{name}.expected")))
                .unwrap_or_else(|_| panic!("{name}.expected missing: run dovecot_expect.py"));
            let mime = Mime::parse(&msg);
            for (item, want) in read_expected(&expected) {
                let mut got = Vec::new();
                match item.as_str() {
                    "INPUT" => continue,
                    "ENVELOPE" => envelope(split_header(&msg).0, &mut got),
                    "BODYSTRUCTURE" => body_structure(&msg, true, &mut got),
                    "BODY" => mime.body_structure(false, &mut got),
                    spec => {
                        let spec = spec.strip_prefix("BODY[").and_then(|s| s.strip_suffix(']')).expect(spec);
                        let (part, text) = parse_section(spec);
                        let bytes = section(&msg, &part, text.as_ref());
                        assert_eq!(bytes, mime.section(&part, text.as_ref()), "{name} {spec}: two paths differ");
                        // What the caller sends: the bytes as a literal,
                        // and for a missing part an empty one as Dovecot.
                        literal(&mut got, bytes.as_deref().unwrap_or(b""));
                    }
                }
                checked += 1;
                let want = long_quoted_as_literals(&want);
                if got != want {
                    failures.push(format!("{name} {item}:\n  want {}\n  got  {}", show(&want), show(&got)));
                }
            }
        }
        assert!(failures.is_empty(), "{} of {checked} differ:\n{}", failures.len(), failures.join("\n"));
    }

    fn env(header: &[u8]) -> String {
        let mut out = Vec::new();
        envelope(header, &mut out);
        show(&out)
    }

    fn bs(msg: &[u8], ext: bool) -> String {
        let mut out = Vec::new();
        body_structure(msg, ext, &mut out);
        show(&out)
    }

    /// Header snippets and Dovecot's ENVELOPE for them (recorded as the
    /// corpus was).
    #[test]
    fn envelope_table() {
        const N: &str = "NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL";
        let fred = r#"(("Fred Foobar" NIL "foobar" "example.org"))"#;
        let from3 = |a: &str| format!("(NIL NIL {a} {a} {a} NIL NIL NIL NIL NIL)");
        let to = |a: &str| format!("(NIL NIL NIL NIL NIL {a} NIL NIL NIL NIL)");
        for (input, want) in [
            (&b""[..], format!("({N})")),
            (b"From: Fred Foobar <foobar@example.org>", from3(fred)),
            (b"From: foobar@example.org (Fred Foobar)", from3(fred)),
            (b"From: \"Foobar, Fred\" <foobar@example.org>", from3(r#"(("Foobar, Fred" NIL "foobar" "example.org"))"#)),
            (b"From: root", from3(r#"((NIL NIL "root" "MISSING_DOMAIN"))"#)),
            (b"From: <>", from3(r#"((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))"#)),
            (b"From: @example.org", from3(r#"((NIL NIL "MISSING_MAILBOX" "example.org"))"#)),
            (b"To: undisclosed-recipients:;", to(r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))"#)),
            (
                b"To: team: a@example.org, \"B\" <b@example.org>;, c@example.org",
                to(concat!(
                    r#"((NIL NIL "team" NIL)(NIL NIL "a" "example.org")("B" NIL "b" "example.org")"#,
                    r#"(NIL NIL NIL NIL)(NIL NIL "c" "example.org"))"#
                )),
            ),
            (b"To: <@relay.example:user@example.org>", to(r#"((NIL "@relay.example" "user" "example.org"))"#)),
            (
                b"To: a@example.org,, b@example.org",
                to(
                    r#"((NIL NIL "a" "example.org")(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "b" "example.org"))"#,
                ),
            ),
            (
                b"To: \"=?utf-8?q?J=C3=BCrgen?=\" <j@example.org>",
                to(r#"(("=?utf-8?q?J=C3=BCrgen?=" NIL "j" "example.org"))"#),
            ),
            (b"Subject:   spaced   out   ", "(NIL {10}\r\nspaced out NIL NIL NIL NIL NIL NIL NIL NIL)".into()),
            (b"Subject: =?utf-8?b?w6k=?=", r#"(NIL "=?utf-8?b?w6k=?=" NIL NIL NIL NIL NIL NIL NIL NIL)"#.into()),
            (b"Subject: tab\there", "(NIL {8}\r\ntab here NIL NIL NIL NIL NIL NIL NIL NIL)".into()),
            (b"Subject: a\r\n b", "(NIL {3}\r\na b NIL NIL NIL NIL NIL NIL NIL NIL)".into()),
            (
                b"Date: Mon, 7 Feb 1994\r\n 21:52:25 -0800",
                r#"("Mon, 7 Feb 1994 21:52:25 -0800" NIL NIL NIL NIL NIL NIL NIL NIL NIL)"#.into(),
            ),
            (b"Message-ID: <a\"b@example.org>", r#"(NIL NIL NIL NIL NIL NIL NIL NIL NIL "<a\"b@example.org>")"#.into()),
            (b"Sender:", format!("({N})")),
            (
                b"Reply-To: reply@example.org\r\nFrom: from@example.org",
                concat!(
                    r#"(NIL NIL ((NIL NIL "from" "example.org")) ((NIL NIL "from" "example.org")) "#,
                    r#"((NIL NIL "reply" "example.org")) NIL NIL NIL NIL NIL)"#
                )
                .into(),
            ),
            (
                b"Cc: x@example.org\r\nCc: y@example.org",
                r#"(NIL NIL NIL NIL NIL NIL ((NIL NIL "x" "example.org")(NIL NIL "y" "example.org")) NIL NIL NIL)"#
                    .into(),
            ),
        ] {
            let mut msg = input.to_vec();
            msg.extend_from_slice(b"\r\n\r\nbody\r\n");
            assert_eq!(env(&msg), want, "{}", show(input));
        }
    }

    #[test]
    fn envelope_reads_only_the_header() {
        assert_eq!(env(b"Subject: a\r\n\r\nSubject: b\r\n"), env(b"Subject: a\r\n"));
        // LF line ends read the same as CRLF.
        assert_eq!(
            env(b"From: a@b.example\nSubject: x\n y\n\n"),
            env(b"From: a@b.example\r\nSubject: x\r\n y\r\n\r\n")
        );
    }

    #[test]
    fn simple_structures() {
        let t = "\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\"";
        assert_eq!(bs(b"", true), format!("({t} 0 0 NIL NIL NIL NIL)"));
        assert_eq!(bs(b"", false), format!("({t} 0 0)"));
        assert_eq!(bs(b"\r\n", false), format!("({t} 0 0)"));
        // A bare LF counts as CRLF; lines are LFs.
        assert_eq!(bs(b"Subject: x\n\none\ntwo", false), format!("({t} 8 1)"));
        assert_eq!(bs(b"Subject: x\r\n\r\none\r\ntwo\r\n", false), format!("({t} 10 2)"));
    }

    #[test]
    fn sections_of_a_multipart() {
        let msg = b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\n\
            Content-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
            Subject: inner\r\nX-A: 1\r\n\r\ninner body\r\n--b--\r\nepi\r\n";
        let get = |part: &[u32], text: Option<SectionText>| section(msg, part, text.as_ref()).map(|c| show(&c));
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            get(&[], Some(SectionText::Header)),
            some("Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n")
        );
        assert_eq!(get(&[1], None), some("one"));
        assert_eq!(get(&[1], Some(SectionText::Mime)), some("Content-Type: text/plain\r\n\r\n"));
        assert_eq!(get(&[1, 1], None), some("one"), "a leaf is its own part 1");
        assert_eq!(get(&[2, 1], None), some("inner body"));
        assert_eq!(get(&[2], Some(SectionText::Header)), some("Subject: inner\r\nX-A: 1\r\n\r\n"));
        assert_eq!(get(&[2], Some(SectionText::Text)), some("inner body"));
        let fields = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(get(&[2], Some(SectionText::HeaderFields(fields(&["x-a"])))), some("X-A: 1\r\n\r\n"));
        assert_eq!(get(&[2], Some(SectionText::HeaderFieldsNot(fields(&["X-A"])))), some("Subject: inner\r\n\r\n"));
        assert_eq!(get(&[], Some(SectionText::HeaderFields(fields(&["subject", "nope"])))), some("Subject: s\r\n\r\n"));
        // Parts that do not exist: the caller sends an empty string.
        for (part, text) in [
            (&[3][..], None),
            (&[0], None),
            (&[1, 2], None),
            (&[1, 1, 1], None),
            (&[u32::MAX], None),
            (&[1], Some(SectionText::Header)),
            (&[1], Some(SectionText::Text)),
            (&[1], Some(SectionText::HeaderFields(fields(&["x"])))),
            (&[], Some(SectionText::Mime)),
        ] {
            assert_eq!(get(part, text.clone()), None, "{part:?} {text:?}");
        }
    }

    #[test]
    fn sections_come_with_crlf() {
        let msg = b"Subject: x\r\n\r\nalready crlf\r\n";
        assert!(matches!(section(msg, &[], None), Some(Cow::Borrowed(_))));
        assert!(matches!(section(msg, &[1], None), Some(Cow::Borrowed(_))));
        let lf = b"Subject: x\n\nbare\nlf\n";
        assert_eq!(section(lf, &[], None).unwrap().as_ref(), b"Subject: x\r\n\r\nbare\r\nlf\r\n");
        assert_eq!(section(lf, &[], Some(&SectionText::Text)).unwrap().as_ref(), b"bare\r\nlf\r\n");
        assert_eq!(section(lf, &[1], None).unwrap().as_ref(), b"bare\r\nlf\r\n");
    }

    #[test]
    fn helpers() {
        let msg = b"Subject: one\r\n two\r\nX-Empty:\r\nsubject: again\r\n\r\nbody";
        assert_eq!(split_header(msg), (&msg[..msg.len() - 4], &b"body"[..]));
        assert_eq!(header_field(msg, "SUBJECT"), Some(&b"one\r\n two"[..]));
        assert_eq!(header_field(msg, "x-empty"), Some(&b""[..]));
        assert_eq!(header_field(msg, "body"), None);
        assert_eq!(unfold(b"one\r\n two"), Cow::<[u8]>::Owned(b"one two".to_vec()));
        assert!(matches!(unfold(b"one"), Cow::Borrowed(_)));
        assert_eq!(split_header(b"no blank line"), (&b"no blank line"[..], &b""[..]));
    }

    /// Nesting far past the limit: no deep recursion, and the parts past
    /// the limit are leaves.
    #[test]
    fn deep_nesting_is_bounded() {
        let mut m = Vec::new();
        for i in 0..20_000 {
            // (No boundary is the beginning of another.)
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"b{i}x\"\r\n\r\n--b{i}x\r\n").as_bytes(),
            );
        }
        let out = bs(&m, true);
        assert_eq!(out.matches("\"mixed\"").count() as u32, MAX_NESTED_PARTS - 1);
        assert!(out.contains("\"application\" \"octet-stream\""));
        let mut m = Vec::new();
        for _ in 0..20_000 {
            m.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        let out = bs(&m, false);
        assert_eq!(out.matches("\"message\" \"rfc822\"").count() as u32, MAX_NESTED_PARTS - 1);
        assert!(section(&m, &[1; 200], None).is_none());
        assert!(section(&m, &[1; 50], None).is_some());
    }

    #[test]
    fn part_count_is_bounded() {
        let mut m = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..(MAX_TOTAL_PARTS + 100) {
            m.extend_from_slice(b"--b\r\n\r\nx\r\n");
        }
        let mime = Mime::parse(&m);
        assert_eq!(mime.parts.len() as u32, MAX_TOTAL_PARTS);
        check_sizes(&m);
    }

    /// The parser's bookkeeping: the root covers the message, and every
    /// part's size is the length of its section with CRLF line ends.
    fn check_sizes(msg: &[u8]) {
        let mime = Mime::parse(msg);
        let root = &mime.parts[0];
        assert_eq!(root.hdr.phys + root.body.phys, msg.len());
        assert_eq!(root.hdr.virt + root.body.virt, crlf(msg).len());
        for p in &mime.parts {
            let start = (p.pos + p.hdr.phys).min(msg.len());
            let body = &msg[start..(start + p.body.phys).min(msg.len())];
            assert_eq!(crlf(body).len(), p.body.virt);
            assert_eq!(memchr_iter(b'\n', body).count() as u64, p.body.lines);
        }
    }

    /// Checks that `s` is one well-formed parenthesised IMAP value:
    /// balanced lists of NIL, numbers, quoted strings and literals.
    fn well_formed(s: &[u8]) -> bool {
        let (mut i, mut depth) = (0, 0i32);
        while i < s.len() {
            match s[i] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth < 0 {
                        return false;
                    }
                }
                b' ' => {}
                b'"' => {
                    i += 1;
                    while i < s.len() && s[i] != b'"' {
                        if s[i] == b'\\' {
                            i += 1;
                        }
                        if i < s.len() && (s[i] == b'\r' || s[i] == b'\n' || s[i] >= 0x80) {
                            return false;
                        }
                        i += 1;
                    }
                    if i >= s.len() {
                        return false;
                    }
                }
                b'{' => {
                    let Some(close) = memchr(b'}', &s[i..]) else { return false };
                    let Ok(n) = std::str::from_utf8(&s[i + 1..i + close]).unwrap_or("x").parse::<usize>() else {
                        return false;
                    };
                    if s.get(i + close + 1..i + close + 3) != Some(b"\r\n") {
                        return false;
                    }
                    i += close + 2 + n;
                }
                b'N' if s[i..].starts_with(b"NIL") => i += 2,
                b'0'..=b'9' => {}
                _ => return false,
            }
            i += 1;
        }
        depth == 0 && i == s.len()
    }

    #[test]
    fn output_is_well_formed() {
        for name in ["addresses3", "odd-content-types", "rfc2231", "nul-bytes", "deep-multipart"] {
            let msg = std::fs::read(fixtures().join(format!("{name}.eml"))).unwrap();
            for ext in [false, true] {
                let mut out = Vec::new();
                body_structure(&msg, ext, &mut out);
                assert!(well_formed(&out), "{name}: {}", show(&out));
            }
            let mut out = Vec::new();
            envelope(&msg, &mut out);
            assert!(well_formed(&out), "{name}: {}", show(&out));
            check_sizes(&msg);
        }
        assert!(!well_formed(b"(\"a\" (NIL)"));
    }

    /// Lines that make MIME structure, and trouble.
    fn mime_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(b"".to_vec()),
            Just(b"--a".to_vec()),
            Just(b"--a--".to_vec()),
            Just(b"--b".to_vec()),
            Just(b"--b--  ".to_vec()),
            Just(b"--".to_vec()),
            Just(b"Content-Type: multipart/mixed; boundary=a".to_vec()),
            Just(b"Content-Type: multipart/digest; boundary=\"b\"".to_vec()),
            Just(b"Content-Type: multipart/alternative; boundary*0=a".to_vec()),
            Just(b"Content-Type: message/rfc822".to_vec()),
            Just(b"Content-Type: text/plain; charset=\"x\0y\"; name*=''a%20b".to_vec()),
            Just(b"Content-Disposition: attachment; filename*0=a; filename*1*=b".to_vec()),
            Just(b"Content-Language: en, (c) de".to_vec()),
            Just(b"MIME-Version: 1.0".to_vec()),
            Just(b"From: \"a\\\" b\" <@r:x@y>, g: c@d;, (e) f".to_vec()),
            Just(b"To: <>, @, \"unclosed".to_vec()),
            Just(b"Subject: \t =?x?q?y?= \"q\"".to_vec()),
            Just(b" continued (comment".to_vec()),
            Just(b"\r".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
    }

    fn mime_message() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        (proptest::collection::vec((mime_line(), any::<bool>()), 0..40), any::<bool>()).prop_map(|(lines, crlf)| {
            let mut m = Vec::new();
            for (l, bare) in lines {
                m.extend_from_slice(&l);
                m.extend_from_slice(if crlf && !bare { b"\r\n" } else { b"\n" });
            }
            m
        })
    }

    fn exercise(msg: &[u8]) {
        let mut out = Vec::new();
        body_structure(msg, true, &mut out);
        assert!(well_formed(&out), "{}", show(&out));
        out.clear();
        body_structure(msg, false, &mut out);
        assert!(well_formed(&out), "{}", show(&out));
        out.clear();
        envelope(msg, &mut out);
        assert!(well_formed(&out), "{}", show(&out));
        let names = vec!["Subject".to_string(), "content-type".to_string()];
        let texts = [
            None,
            Some(SectionText::Header),
            Some(SectionText::Text),
            Some(SectionText::Mime),
            Some(SectionText::HeaderFields(names.clone())),
            Some(SectionText::HeaderFieldsNot(names)),
        ];
        for part in [&[][..], &[1], &[2], &[1, 1], &[1, 2, 1], &[2, 1, 1, 1], &[0], &[u32::MAX]] {
            for t in &texts {
                let _ = section(msg, part, t.as_ref());
            }
        }
        check_sizes(msg);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            exercise(&msg);
        }

        #[test]
        fn mime_like_input_never_panics(msg in mime_message()) {
            exercise(&msg);
        }
    }
}

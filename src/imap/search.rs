//! IMAP SEARCH (RFC 3501 §6.4.4) evaluated over one message at a time.
//!
//! Keys on flags, sizes, INTERNALDATE, message numbers and UIDs need only
//! the index; `*` in a set is the largest message number or UID
//! (RFC 3501 §9 `seq-number`), so a UID range `n:*` with `n` above every
//! UID still holds the last message (§6.4.8). String keys match a
//! case-insensitive substring of decoded text, through `mailparse`:
//! header fields with their RFC 2047 encoded words decoded and folds
//! undone (RFC 5322 §2.2.3), and text parts with their
//! Content-Transfer-Encoding and charset removed (RFC 2045 §6,
//! RFC 2046 §4.1.2).
//!
//! Where RFC 3501 leaves a choice, this follows Dovecot 2.3, and says so
//! where it does not:
//!
//! - Case-insensitive means ASCII case, and the Unicode simple lowercase
//!   mapping for other characters, on both sides. (Dovecot compares
//!   decomposed titlecase, which differs for a few letters such as ẞ.)
//! - Header fields are compared unfolded, a fold being one space.
//!   SUBJECT, FROM, TO, CC and BCC also take each run of spaces and tabs
//!   as one space; HEADER takes the value as it is. FROM, TO, CC and BCC
//!   match the decoded field text, so both display names and addresses,
//!   and the same text without comments, as ENVELOPE reads the address
//!   (`<a (x)@ (y) b.org>` is found as `a@b.org`). (Dovecot squeezes only
//!   the field, not the search string, and matches address fields as
//!   rewritten from their parsed addresses, so it does not find comment
//!   parentheses.)
//! - An empty search string matches every message that has the header
//!   field (`HEADER X-Foo ""` tests that the field exists); for BODY and
//!   TEXT, every message.
//! - BODY searches the decoded bodies of `text/*` parts (a part without
//!   Content-Type is `text/plain`, RFC 2045 §5.2) and of `message/*` parts
//!   other than whole messages, at any depth, including inside attached
//!   messages (`message/rfc822`, `message/global`). It searches no header
//!   fields, not even those of an attached message. TEXT searches every
//!   header field of the message, its parts and its attached messages
//!   (as `name: value`), and what BODY searches. Preamble, epilogue and
//!   non-text parts (attachments in base64) are never searched.
//! - Line breaks in text stay: a space in the search string does not
//!   match one. A line break in the search string matches one whether it
//!   was sent as CRLF or LF. (Dovecot matches LF only.)
//! - BEFORE, ON and SINCE compare the UTC day of INTERNALDATE.
//!   SENTBEFORE, SENTON and SENTSINCE compare the day written in the Date:
//!   field, "disregarding time and timezone" (§6.4.4), so a message sent
//!   at 23:30 -0500 is ON that day, not the next. Only the day, month and
//!   year have to be readable. (Dovecot needs the time and zone too.)
//! - A message without such a Date: field matches none of SENTBEFORE,
//!   SENTON and SENTSINCE, and so matches `NOT SENTBEFORE d`: §6.4.4
//!   defines them over that field only. (Dovecot takes such a message as
//!   sent on 1 January 1970. INTERNALDATE stands in for a missing Date:
//!   only in SORT, RFC 5256 §2.2.)

use std::borrow::Cow;

use mailparse::body::Body;
use mailparse::{MailHeader, ParsedMail};
use memchr::memmem::Finder;

use super::command::{SearchKey, SequenceSet};
use crate::store::{Flags, StoreError};

/// Attached messages nest at most this deep before we stop looking
/// inside: each level is a fresh `mailparse` parse with its own
/// recursion budget, so the nesting has to be bounded here.
const MAX_NESTED_MESSAGES: usize = 10;

/// Decoded text buffers larger than this are given back after each
/// message, so one huge message does not pin its memory for the rest of
/// a search.
const KEEP_SCRATCH: usize = 1 << 20;

const SECS_PER_DAY: i64 = 86_400;

/// What the index knows about one message, as this session sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    /// System flags; RECENT set when this session sees the message as recent.
    pub flags: Flags,
    /// Bit `i` set: the message has keyword `keyword_names[i]`.
    pub keywords: u64,
    pub keyword_names: &'a [String],
    /// INTERNALDATE, seconds since the epoch.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
}

/// What `*` means: the largest message number and the largest UID in the
/// mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_seq: u32,
    pub max_uid: u32,
}

/// The message's text, read only when a key needs it.
pub trait Content {
    /// The header block with its blank line, CRLF line ends.
    fn header(&mut self) -> Result<&[u8], StoreError>;
    /// The whole message, CRLF line ends.
    fn message(&mut self) -> Result<&[u8], StoreError>;
}

/// What a key needs read from the mailbox, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// The index answers it.
    Nothing,
    /// The header block.
    Header,
    /// The whole message.
    Message,
}

/// What `key` needs read, so the caller can skip reading.
pub fn need(key: &SearchKey) -> Need {
    use SearchKey as K;
    match key {
        K::All
        | K::Answered
        | K::Deleted
        | K::Draft
        | K::Flagged
        | K::New
        | K::Old
        | K::Recent
        | K::Seen
        | K::Unanswered
        | K::Undeleted
        | K::Undraft
        | K::Unflagged
        | K::Unseen
        | K::Keyword(_)
        | K::Unkeyword(_)
        | K::Larger(_)
        | K::Smaller(_)
        | K::Before(_)
        | K::On(_)
        | K::Since(_)
        | K::Uid(_)
        | K::Sequence(_) => Need::Nothing,
        K::Bcc(_)
        | K::Cc(_)
        | K::From(_)
        | K::To(_)
        | K::Subject(_)
        | K::Header(..)
        | K::SentBefore(_)
        | K::SentOn(_)
        | K::SentSince(_) => Need::Header,
        // The empty string is in every text: nothing to read.
        K::Body(s) | K::Text(s) if s.is_empty() => Need::Nothing,
        K::Body(_) | K::Text(_) => Need::Message,
        K::Not(k) => need(k),
        K::Or(a, b) => need(a).max(need(b)),
        K::And(keys) => keys.iter().map(need).max().unwrap_or(Need::Nothing),
    }
}

/// Whether SEARCH accepts `CHARSET name`. Search strings reach us as
/// Rust strings, so only charsets whose bytes are already UTF-8 can be
/// taken as they are.
pub fn charset_supported(name: &str) -> bool {
    ["US-ASCII", "UTF-8"].iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Whether the message `c` matches `key`. For many messages, build one
/// [`Matcher`] instead: it prepares the search strings once and reuses
/// its buffers.
pub fn matches(key: &SearchKey, c: &Candidate, bounds: &Bounds, content: &mut dyn Content) -> Result<bool, StoreError> {
    Matcher::new(key).matches(c, bounds, content)
}

/// A search key prepared for evaluation over many messages: search
/// strings lowercased once, cheap keys of each AND and OR tried before
/// those that read the message, and decoding buffers kept between
/// messages. Each message is read at most once and decoded at most once,
/// however many keys look at it.
pub struct Matcher<'k> {
    root: Node<'k>,
    read: Need,
    scratch: Scratch,
}

impl<'k> Matcher<'k> {
    pub fn new(key: &'k SearchKey) -> Matcher<'k> {
        Matcher { root: compile(key), read: need(key), scratch: Scratch::default() }
    }

    /// What the key needs read ([`need`] of the key).
    pub fn need(&self) -> Need {
        self.read
    }

    /// Whether the message `c` matches. `content` is read at most once,
    /// and only if the outcome depends on it.
    pub fn matches(&mut self, c: &Candidate, bounds: &Bounds, content: &mut dyn Content) -> Result<bool, StoreError> {
        let mut msg = Msg {
            content: Some(content),
            read: self.read,
            raw: &[],
            fields: None,
            sent: None,
            texts: false,
            scratch: &mut self.scratch,
        };
        let matched = self.root.eval(c, bounds, &mut msg);
        self.scratch.trim();
        matched
    }
}

/// A search key ready to evaluate: the NOT forms folded into `Not`,
/// search strings prepared.
enum Node<'k> {
    Const(bool),
    /// All of these flags are set.
    Flag(Flags),
    New,
    Keyword(&'k str),
    Larger(u64),
    Smaller(u64),
    /// INTERNALDATE against a day number.
    Internal(Cmp, i64),
    /// The Date: field against a day number.
    Sent(Cmp, i64),
    Seq(&'k SequenceSet),
    Uid(&'k SequenceSet),
    /// A header field of the message itself, by name; `true` to read runs
    /// of spaces and tabs in its value as one space.
    Field(&'k str, bool, Needle),
    Body(Needle),
    Text(Needle),
    Not(Box<Node<'k>>),
    And(Vec<Node<'k>>),
    Or(Box<Node<'k>>, Box<Node<'k>>),
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Before,
    On,
    Since,
}

impl Cmp {
    fn test(self, day: i64, date: i64) -> bool {
        match self {
            Cmp::Before => day < date,
            Cmp::On => day == date,
            Cmp::Since => day >= date,
        }
    }
}

/// A search string, normalised as the text it is looked for in.
struct Needle(Finder<'static>);

impl Needle {
    /// For a header field value as it is.
    fn new(s: &str) -> Needle {
        let mut folded = String::new();
        fold_into(&mut folded, s);
        Needle::of(folded)
    }

    /// For a header field value whose blank runs count as one space.
    fn squeezed(s: &str) -> Needle {
        Needle::new(&squeeze(s))
    }

    /// For BODY and TEXT, where CRLF and LF are the same line end.
    fn text(s: &str) -> Needle {
        let mut folded = String::new();
        fold_text_into(&mut folded, s);
        Needle::of(folded)
    }

    fn of(folded: String) -> Needle {
        Needle(Finder::new(folded.as_bytes()).into_owned())
    }

    fn is_empty(&self) -> bool {
        self.0.needle().is_empty()
    }

    fn found_in(&self, folded: &str) -> bool {
        self.0.find(folded.as_bytes()).is_some()
    }
}

fn compile(key: &SearchKey) -> Node<'_> {
    use SearchKey as K;
    let not = |n| Node::Not(Box::new(n));
    match key {
        K::All => Node::Const(true),
        K::Answered => Node::Flag(Flags::ANSWERED),
        K::Deleted => Node::Flag(Flags::DELETED),
        K::Draft => Node::Flag(Flags::DRAFT),
        K::Flagged => Node::Flag(Flags::FLAGGED),
        K::Recent => Node::Flag(Flags::RECENT),
        K::Seen => Node::Flag(Flags::SEEN),
        K::Unanswered => not(Node::Flag(Flags::ANSWERED)),
        K::Undeleted => not(Node::Flag(Flags::DELETED)),
        K::Undraft => not(Node::Flag(Flags::DRAFT)),
        K::Unflagged => not(Node::Flag(Flags::FLAGGED)),
        K::Unseen => not(Node::Flag(Flags::SEEN)),
        K::New => Node::New,
        K::Old => not(Node::Flag(Flags::RECENT)),
        K::Keyword(k) => Node::Keyword(k),
        K::Unkeyword(k) => not(Node::Keyword(k)),
        K::Larger(n) => Node::Larger(*n),
        K::Smaller(n) => Node::Smaller(*n),
        K::Before(d) => Node::Internal(Cmp::Before, d.0),
        K::On(d) => Node::Internal(Cmp::On, d.0),
        K::Since(d) => Node::Internal(Cmp::Since, d.0),
        K::SentBefore(d) => Node::Sent(Cmp::Before, d.0),
        K::SentOn(d) => Node::Sent(Cmp::On, d.0),
        K::SentSince(d) => Node::Sent(Cmp::Since, d.0),
        K::Sequence(set) => Node::Seq(set),
        K::Uid(set) => Node::Uid(set),
        K::Bcc(s) => Node::Field("Bcc", true, Needle::squeezed(s)),
        K::Cc(s) => Node::Field("Cc", true, Needle::squeezed(s)),
        K::From(s) => Node::Field("From", true, Needle::squeezed(s)),
        K::To(s) => Node::Field("To", true, Needle::squeezed(s)),
        K::Subject(s) => Node::Field("Subject", true, Needle::squeezed(s)),
        K::Header(name, s) => Node::Field(name, false, Needle::new(s)),
        K::Body(s) | K::Text(s) if s.is_empty() => Node::Const(true),
        K::Body(s) => Node::Body(Needle::text(s)),
        K::Text(s) => Node::Text(Needle::text(s)),
        K::Not(k) => not(compile(k)),
        // Both orders give the same answer; the cheaper first often
        // spares reading the message.
        K::Or(a, b) if need(b) < need(a) => Node::Or(Box::new(compile(b)), Box::new(compile(a))),
        K::Or(a, b) => Node::Or(Box::new(compile(a)), Box::new(compile(b))),
        K::And(keys) => {
            let mut keys: Vec<&SearchKey> = keys.iter().collect();
            keys.sort_by_key(|k| need(k));
            Node::And(keys.into_iter().map(compile).collect())
        }
    }
}

impl Node<'_> {
    fn eval(&self, c: &Candidate, bounds: &Bounds, msg: &mut Msg) -> Result<bool, StoreError> {
        Ok(match self {
            Node::Const(b) => *b,
            Node::Flag(f) => c.flags.contains(*f),
            Node::New => c.flags.contains(Flags::RECENT) && !c.flags.contains(Flags::SEEN),
            Node::Keyword(k) => has_keyword(c, k),
            Node::Larger(n) => c.size > *n,
            Node::Smaller(n) => c.size < *n,
            Node::Internal(cmp, date) => cmp.test(c.internal_date.div_euclid(SECS_PER_DAY), *date),
            Node::Sent(cmp, date) => msg.sent_day()?.is_some_and(|day| cmp.test(day, *date)),
            Node::Seq(set) => set.contains(c.seq, bounds.max_seq),
            Node::Uid(set) => set.contains(c.uid, bounds.max_uid),
            Node::Field(name, squeezed, needle) => msg.field_contains(name, *squeezed, needle)?,
            Node::Body(needle) => needle.found_in(&msg.texts()?.body),
            Node::Text(needle) => {
                let texts = msg.texts()?;
                needle.found_in(&texts.head) || needle.found_in(&texts.body)
            }
            Node::Not(k) => !k.eval(c, bounds, msg)?,
            Node::And(keys) => {
                for k in keys {
                    if !k.eval(c, bounds, msg)? {
                        return Ok(false);
                    }
                }
                true
            }
            Node::Or(a, b) => a.eval(c, bounds, msg)? || b.eval(c, bounds, msg)?,
        })
    }
}

/// Keywords are atoms (RFC 3501 §9 `flag-keyword`), compared in ASCII
/// case as Dovecot does.
fn has_keyword(c: &Candidate, name: &str) -> bool {
    c.keyword_names.iter().take(64).enumerate().any(|(i, k)| c.keywords & (1 << i) != 0 && k.eq_ignore_ascii_case(name))
}

/// Text buffers reused from message to message. `head` and `body` are
/// lowercased, as needles are.
#[derive(Default)]
struct Scratch {
    /// Every header field of the message and its parts, `name: value\n`.
    head: String,
    /// The text BODY searches, one NUL after each part so that no match
    /// spans two parts (a search string holds no NUL, RFC 3501 §9 `CHAR8`).
    body: String,
    /// One header field value at a time.
    field: String,
}

impl Scratch {
    fn trim(&mut self) {
        for s in [&mut self.head, &mut self.body, &mut self.field] {
            if s.capacity() > KEEP_SCRATCH {
                s.clear();
                s.shrink_to(KEEP_SCRATCH);
            }
        }
    }
}

/// One message while it is being matched: read on first use, each
/// derived form computed once.
struct Msg<'c, 's> {
    /// Until the first read.
    content: Option<&'c mut dyn Content>,
    /// What to read: the most any key needs, so one read serves all.
    read: Need,
    /// The header block or the whole message, once read.
    raw: &'c [u8],
    fields: Option<Vec<MailHeader<'c>>>,
    /// The Date: field's day, once looked for.
    sent: Option<Option<i64>>,
    /// Whether `scratch.head` and `scratch.body` hold this message.
    texts: bool,
    scratch: &'s mut Scratch,
}

impl<'c> Msg<'c, '_> {
    fn raw(&mut self) -> Result<&'c [u8], StoreError> {
        if let Some(content) = self.content.take() {
            // One read for all keys: `read` is the most that any needs.
            self.raw = match self.read {
                Need::Message => content.message()?,
                Need::Header | Need::Nothing => content.header()?,
            };
        }
        Ok(self.raw)
    }

    fn fields(&mut self) -> Result<&[MailHeader<'c>], StoreError> {
        if self.fields.is_none() {
            self.fields = Some(header_fields(self.raw()?).0);
        }
        Ok(self.fields.as_deref().unwrap_or_default())
    }

    fn field_contains(&mut self, name: &str, squeezed: bool, needle: &Needle) -> Result<bool, StoreError> {
        self.fields()?;
        let fields = self.fields.as_deref().unwrap_or_default();
        let buf = &mut self.scratch.field;
        for f in fields.iter().filter(|f| is_named(f, name)) {
            if needle.is_empty() {
                return Ok(true);
            }
            let value = f.get_value();
            let value = if squeezed { squeeze(&value) } else { Cow::Borrowed(value.as_str()) };
            buf.clear();
            fold_into(buf, &value);
            if needle.found_in(buf) {
                return Ok(true);
            }
            // Addresses also as ENVELOPE reads them: without comments and
            // the spaces they leave around `@` (RFC 3501 defines FROM and
            // the others over the envelope's address fields).
            if is_address_field(name) {
                let bare = without_comments(&value);
                if bare != value {
                    buf.clear();
                    fold_into(buf, &bare);
                    if needle.found_in(buf) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    fn sent_day(&mut self) -> Result<Option<i64>, StoreError> {
        if self.sent.is_none() {
            let date = self.fields()?.iter().find(|f| is_named(f, "Date")).map(MailHeader::get_value);
            self.sent = Some(date.and_then(|d| sent_day(&d)));
        }
        Ok(self.sent.flatten())
    }

    fn texts(&mut self) -> Result<&Scratch, StoreError> {
        if !self.texts {
            let raw = self.raw()?;
            let Scratch { head, body, .. } = &mut *self.scratch;
            head.clear();
            body.clear();
            collect(raw, 0, head, body);
            self.texts = true;
        }
        Ok(&*self.scratch)
    }
}

fn is_address_field(name: &str) -> bool {
    ["From", "To", "Cc", "Bcc"].iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// An address header without RFC 5322 comments (nested, outside quoted
/// strings), with white space squeezed and none left beside `@`.
fn without_comments(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for ch in v.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(ch);
            }
            continue;
        }
        match ch {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(ch);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(ch);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            c => out.push(c),
        }
    }
    let squeezed: Vec<&str> = out.split_whitespace().collect();
    squeezed.join(" ").replace(" @", "@").replace("@ ", "@")
}

fn is_named(f: &MailHeader, name: &str) -> bool {
    f.get_key_raw().trim_ascii().eq_ignore_ascii_case(name.as_bytes())
}

/// The header fields at the start of `raw` and where the body starts.
/// Unlike `mailparse::parse_headers`, a damaged line (a fold with no field
/// before it, a bare CR) costs only that line, not the whole header.
fn header_fields(raw: &[u8]) -> (Vec<MailHeader<'_>>, usize) {
    let next_line = |at: usize| memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |i| at + i + 1);
    let mut fields = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'\n' => return (fields, at + 1),
            b'\r' if raw.get(at + 1) == Some(&b'\n') => return (fields, at + 2),
            b'\r' | b' ' | b'\t' => at = next_line(at),
            _ => match mailparse::parse_header(&raw[at..]) {
                Ok((field, len)) => {
                    fields.push(field);
                    at += len.max(1);
                }
                Err(_) => at = next_line(at),
            },
        }
    }
    (fields, raw.len())
}

/// Appends the lowercased text that BODY and TEXT search in the message
/// `raw` (the top level or an attached message `nesting` deep).
fn collect(raw: &[u8], nesting: usize, head: &mut String, body: &mut String) {
    match mailparse::parse_mail(raw) {
        Ok(mail) => walk(&mail, nesting, head, body),
        Err(_) => {
            // mailparse refuses a message when any part's header is
            // damaged; search what can be read rather than nothing.
            let (fields, at) = header_fields(raw);
            for f in &fields {
                push_field(head, f);
            }
            fold_text_into(body, &String::from_utf8_lossy(&raw[at..]));
            body.push('\0');
        }
    }
}

fn walk(mail: &ParsedMail<'_>, nesting: usize, head: &mut String, body: &mut String) {
    // Depth first, in order; a stack rather than recursion, since
    // multiparts may nest as deep as mailparse allows.
    let mut parts = vec![mail];
    while let Some(part) = parts.pop() {
        for f in &part.headers {
            push_field(head, f);
        }
        let mime = part.ctype.mimetype.as_str();
        if mime.starts_with("multipart/") {
            parts.extend(part.subparts.iter().rev());
        } else if mime == "message/rfc822" || mime == "message/global" {
            if nesting < MAX_NESTED_MESSAGES {
                if let Some(inner) = transfer_decoded(part) {
                    collect(&inner, nesting + 1, head, body);
                }
            }
        } else if mime.starts_with("text/") || mime.starts_with("message/") {
            push_text(body, part);
        }
    }
}

fn push_field(head: &mut String, f: &MailHeader) {
    fold_into(head, &f.get_key_ref());
    head.push_str(": ");
    fold_into(head, &f.get_value());
    head.push('\n');
}

/// Appends the decoded, lowercased text of a leaf part, if it decodes.
fn push_text(body: &mut String, part: &ParsedMail<'_>) {
    // mailparse reads an undeclared or US-ASCII charset as windows-1252
    // (the WHATWG meaning of the label), which garbles the unlabelled
    // 8-bit UTF-8 that many mailers send. Take such text as UTF-8 when it
    // is, and let mailparse convert everything else.
    let maybe_utf8 = part
        .ctype
        .params
        .get("charset")
        .is_none_or(|cs| ["us-ascii", "ascii", "utf-8", "utf8"].iter().any(|u| u.eq_ignore_ascii_case(cs)));
    if maybe_utf8 {
        // An undecodable transfer encoding leaves nothing to search.
        let Some(bytes) = transfer_decoded(part) else { return };
        if let Ok(text) = std::str::from_utf8(&bytes) {
            fold_text_into(body, text);
            body.push('\0');
            return;
        }
    }
    if let Ok(text) = part.get_body() {
        fold_text_into(body, &text);
        body.push('\0');
    }
}

/// A part's body with its Content-Transfer-Encoding removed, borrowed
/// when there is nothing to remove.
fn transfer_decoded<'a>(part: &'a ParsedMail<'a>) -> Option<Cow<'a, [u8]>> {
    match part.get_body_encoded() {
        Body::Base64(b) | Body::QuotedPrintable(b) => b.get_decoded().ok().map(Cow::Owned),
        Body::SevenBit(b) | Body::EightBit(b) => Some(Cow::Borrowed(b.get_raw())),
        Body::Binary(b) => Some(Cow::Borrowed(b.get_raw())),
    }
}

/// The day (since 1970-01-01) written in a Date: field, time and zone
/// disregarded (RFC 3501 §6.4.4). `mailparse::dateparse` answers in UTC,
/// which may be another day, so it is given the day, month and year only,
/// found the way it finds them (the day is the first small number); a zone
/// it does not know then costs nothing either.
fn sent_day(value: &str) -> Option<i64> {
    let mut words = value.split([' ', '\t', '\r', '\n', ',']).filter(|w| !w.is_empty());
    let day = words.find(|w| w.parse::<u8>().is_ok())?;
    let month = words.next()?;
    let year = words.next()?;
    // dateparse counts its way to the year (in 400-year strides), so a
    // ten-digit year would cost seconds per message.
    if year.len() > 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let midnight = mailparse::dateparse(&format!("{day} {month} {year}")).ok()?;
    Some(midnight.div_euclid(SECS_PER_DAY))
}

/// Appends `s` lowercased: ASCII case, and the Unicode simple lowercase
/// mapping of other characters. Needles and text go through the same
/// mapping, so a byte substring of the results is a match.
fn fold_into(out: &mut String, s: &str) {
    if s.is_ascii() {
        let at = out.len();
        out.push_str(s);
        out[at..].make_ascii_lowercase();
    } else {
        out.extend(s.chars().map(lower));
    }
}

/// [`fold_into`], with CRLF line ends made LF: decoded text parts end
/// lines either way, and so may a search string.
fn fold_text_into(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(cr) = memchr::memmem::find(rest.as_bytes(), b"\r\n") {
        fold_into(out, &rest[..cr]);
        rest = &rest[cr + 1..];
    }
    fold_into(out, rest);
}

/// Runs of spaces and tabs as one space.
fn squeeze(s: &str) -> Cow<'_, str> {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    if !s.contains('\t') && !s.as_bytes().windows(2).any(|w| blank(&w[0]) && blank(&w[1])) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut after_blank = false;
    for c in s.chars() {
        let is_blank = c == ' ' || c == '\t';
        if !(is_blank && after_blank) {
            out.push(if is_blank { ' ' } else { c });
        }
        after_blank = is_blank;
    }
    Cow::Owned(out)
}

fn lower(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    // `to_lowercase` is the full mapping. It is longer than one character
    // only for U+0130, whose first character, `i`, is its simple mapping.
    c.to_lowercase().next().unwrap_or(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::command::{Date, SeqNum, SeqRange};
    use proptest::prelude::*;

    /// A message as the store hands it out, counting reads.
    struct Mail {
        bytes: Vec<u8>,
        header_reads: u32,
        message_reads: u32,
        fail: bool,
    }

    impl Mail {
        fn new(text: &str) -> Mail {
            Mail::bytes(text.replace('\n', "\r\n").into_bytes())
        }

        fn bytes(bytes: Vec<u8>) -> Mail {
            Mail { bytes, header_reads: 0, message_reads: 0, fail: false }
        }
    }

    impl Content for Mail {
        fn header(&mut self) -> Result<&[u8], StoreError> {
            self.header_reads += 1;
            if self.fail {
                return Err(StoreError::NotAllowed("test"));
            }
            let end = memchr::memmem::find(&self.bytes, b"\r\n\r\n").map_or(self.bytes.len(), |i| i + 4);
            Ok(&self.bytes[..end])
        }

        fn message(&mut self) -> Result<&[u8], StoreError> {
            self.message_reads += 1;
            if self.fail {
                return Err(StoreError::NotAllowed("test"));
            }
            Ok(&self.bytes)
        }
    }

    /// Days from 1970-01-01 to a civil date (proleptic Gregorian).
    fn days(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn date(y: i64, m: i64, d: i64) -> Date {
        Date(days(y, m, d))
    }

    /// "1:3,5,*" as the parser would produce it.
    fn set(s: &str) -> SequenceSet {
        let num = |n: &str| if n == "*" { SeqNum::Largest } else { SeqNum::Value(n.parse().unwrap()) };
        SequenceSet(
            s.split(',')
                .map(|r| match r.split_once(':') {
                    Some((a, b)) => SeqRange(num(a), num(b)),
                    None => SeqRange(num(r), num(r)),
                })
                .collect(),
        )
    }

    fn s(text: &str) -> String {
        text.to_string()
    }

    fn not(k: SearchKey) -> SearchKey {
        SearchKey::Not(Box::new(k))
    }

    fn or(a: SearchKey, b: SearchKey) -> SearchKey {
        SearchKey::Or(Box::new(a), Box::new(b))
    }

    const BOUNDS: Bounds = Bounds { max_seq: 3, max_uid: 30 };

    /// 2024-01-02 23:59:59 UTC.
    const LATE: i64 = 19_724 * SECS_PER_DAY + SECS_PER_DAY - 1;

    fn names() -> &'static [String] {
        Box::leak(vec![s("$Forwarded"), s("Work")].into_boxed_slice())
    }

    /// Seen and flagged, keyword Work, INTERNALDATE `LATE`, 1000 octets.
    fn cand() -> Candidate<'static> {
        Candidate {
            seq: 2,
            uid: 20,
            flags: Flags::SEEN.union(Flags::FLAGGED),
            keywords: 0b10,
            keyword_names: names(),
            internal_date: LATE,
            size: 1000,
        }
    }

    fn with_flags(flags: Flags) -> Candidate<'static> {
        Candidate { flags, ..cand() }
    }

    /// An encoded-word Subject and From, a Date late in a western zone.
    const ENC: &str = "From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.de>
To: Alice Example <alice@example.org>, bob@example.net
Cc: \"Carol C.\" <carol@example.com>
Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=
Date: Tue, 02 Jan 2024 23:30:00 -0500
Message-ID: <enc@example.de>
X-Mailer: Fixture 1.0

Hello world, plain ASCII body.
Second line.
";

    /// 8-bit UTF-8 header fields, a base64 UTF-8 body.
    const UTF8: &str = "From: Zoë Ångström <zoe@example.org>
To: team@example.org
Subject: Grüße aus Köln
Date: Wed, 3 Jan 2024 08:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

RGllIFN0cmHDn2UgbmFjaCBLw5ZMTiBpc3QgbGFuZy4NCs6jzq/Pg8+Fz4bOv8+CIHJvbGx0Lg0K
";

    /// A quoted-printable Latin-1 body with a soft line break.
    const QP: &str = "From: shop@example.com
To: alice@example.org
Subject: Menu
Date: 4 Jan 2024 12:00:00 GMT
Content-Type: text/plain; charset=ISO-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 cr=E8me br=FBl=E9e, =
soft break joined.
";

    /// Text, a binary attachment and a base64 text/csv attachment.
    const MULTI: &str = "From: sender@example.com
To: alice@example.org
Subject: Report attached
Date: Fri, 5 Jan 2024 10:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=\"outer\"

This is the preamble, not searched.
--outer
Content-Type: text/plain; charset=us-ascii

Please see the attachment.
--outer
Content-Type: application/octet-stream; name=\"data.bin\"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename=\"data.bin\"

U0VDUkVUUEFZTE9BRCBpbnNpZGUgYmluYXJ5AAEC
--outer
Content-Type: text/csv; name=\"notes.csv\"
Content-Transfer-Encoding: base64

cXVhcnRlcmx5LG51bWJlcnMNCg==
--outer--
This is the epilogue.
";

    /// A forwarded message (message/rfc822) holding a multipart/alternative.
    const NESTED: &str = "From: forwarder@example.com
To: alice@example.org
Subject: Fwd: Inner subject
Date: Sat, 6 Jan 2024 09:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=\"b1\"

--b1
Content-Type: text/plain

See the forwarded message.
--b1
Content-Type: message/rfc822

From: =?UTF-8?B?w4lsb8Ot?= <eloi@example.net>
To: forwarder@example.com
Subject: Original =?UTF-8?Q?r=C3=A9union?=
Date: Fri, 5 Jan 2024 18:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=\"b2\"

--b2
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Innermost phrase with caf=C3=A9.
--b2
Content-Type: text/html; charset=utf-8

<p>Innermost <b>html</b></p>
--b2--
--b1--
";

    const NODATE: &str = "From: nobody@example.com
Bcc: hidden@example.org
Subject: No date here

Body.
";

    const BADDATE: &str = "Subject: x\nDate: sometime last week\n\nBody.\n";
    const ODDZONE: &str = "Subject: x\nDate: Mon, 8 Jan 2024 25:61:00 MEZ\n\nBody.\n";
    const SHORTYEAR: &str = "Subject: x\nDate: 9 Jan 99 10:00 -0000\n\nBody.\n";
    const HUGEYEAR: &str = "Subject: x\nDate: 1 Jan 4294967295 10:00 +0000\n\nBody.\n";
    const FOLDED: &str = "Subject: a long subject\n folded onto two lines\n\nBody.\n";
    /// A fold before any field and a bare CR: mailparse refuses both.
    const DAMAGED: &str = " stray fold\n\rX\nSubject: still found\n\nDamaged body.\n";
    /// Blank runs in fields; a fold with a tab.
    const SPACES: &str = "From: john@example.com (John  Doe)
To: Alice    Example <alice@example.org>
Subject: two  spaces and a
\tfold
X-Note: two  spaces
\there

Line one
Line two
";
    /// Comments inside an address, as RFC 5322 allows.
    const COMMENTED: &str = "From: <user-from (comment)@ (comment) domain.org>\nTo: x@example.org\n\nBody.\n";
    /// Unlabelled 8-bit UTF-8 text (mailparse alone would read windows-1252).
    const UNLABELLED: &str = "Subject: x\n\nNaïve café.\n";

    fn check(key: &SearchKey, mail: &str, c: &Candidate) -> bool {
        let mut m = Mail::new(mail);
        matches(key, c, &BOUNDS, &mut m).unwrap()
    }

    /// (key, message, candidate, expected).
    fn cases() -> Vec<(SearchKey, &'static str, Candidate<'static>, bool)> {
        use SearchKey as K;
        let c = cand;
        vec![
            // Flags.
            (K::All, ENC, c(), true),
            (not(K::All), ENC, c(), false),
            (K::Answered, ENC, c(), false),
            (K::Answered, ENC, with_flags(Flags::ANSWERED), true),
            (K::Unanswered, ENC, c(), true),
            (K::Unanswered, ENC, with_flags(Flags::ANSWERED), false),
            (K::Deleted, ENC, c(), false),
            (K::Deleted, ENC, with_flags(Flags::DELETED), true),
            (K::Undeleted, ENC, c(), true),
            (K::Undeleted, ENC, with_flags(Flags::DELETED), false),
            (K::Draft, ENC, c(), false),
            (K::Draft, ENC, with_flags(Flags::DRAFT), true),
            (K::Undraft, ENC, c(), true),
            (K::Undraft, ENC, with_flags(Flags::DRAFT), false),
            (K::Flagged, ENC, c(), true),
            (K::Flagged, ENC, with_flags(Flags::empty()), false),
            (K::Unflagged, ENC, c(), false),
            (K::Unflagged, ENC, with_flags(Flags::empty()), true),
            (K::Seen, ENC, c(), true),
            (K::Seen, ENC, with_flags(Flags::empty()), false),
            (K::Unseen, ENC, c(), false),
            (K::Unseen, ENC, with_flags(Flags::empty()), true),
            (K::Recent, ENC, c(), false),
            (K::Recent, ENC, with_flags(Flags::RECENT), true),
            (K::New, ENC, with_flags(Flags::RECENT), true),
            (K::New, ENC, with_flags(Flags::RECENT.union(Flags::SEEN)), false),
            (K::New, ENC, with_flags(Flags::empty()), false),
            (K::Old, ENC, c(), true),
            (K::Old, ENC, with_flags(Flags::RECENT), false),
            // Keywords, case-insensitive by name.
            (K::Keyword(s("work")), ENC, c(), true),
            (K::Keyword(s("$Forwarded")), ENC, c(), false),
            (K::Keyword(s("Unknown")), ENC, c(), false),
            (K::Keyword(s("$forwarded")), ENC, Candidate { keywords: 0b01, ..c() }, true),
            (K::Unkeyword(s("WORK")), ENC, c(), false),
            (K::Unkeyword(s("$Forwarded")), ENC, c(), true),
            // Sizes are strict.
            (K::Larger(999), ENC, c(), true),
            (K::Larger(1000), ENC, c(), false),
            (K::Smaller(1001), ENC, c(), true),
            (K::Smaller(1000), ENC, c(), false),
            // INTERNALDATE by its UTC day: 23:59:59 is still the 2nd.
            (K::Before(date(2024, 1, 3)), ENC, c(), true),
            (K::Before(date(2024, 1, 2)), ENC, c(), false),
            (K::On(date(2024, 1, 2)), ENC, c(), true),
            (K::On(date(2024, 1, 3)), ENC, c(), false),
            (K::Since(date(2024, 1, 2)), ENC, c(), true),
            (K::Since(date(2024, 1, 3)), ENC, c(), false),
            (K::On(date(2024, 1, 3)), ENC, Candidate { internal_date: LATE + 1, ..c() }, true),
            (K::Before(date(2024, 1, 3)), ENC, Candidate { internal_date: LATE + 1, ..c() }, false),
            (K::On(date(1969, 12, 31)), ENC, Candidate { internal_date: -1, ..c() }, true),
            // Message numbers: `*` is max_seq (3), ranges in either order.
            (K::Sequence(set("2")), ENC, c(), true),
            (K::Sequence(set("*")), ENC, c(), false),
            (K::Sequence(set("*")), ENC, Candidate { seq: 3, ..c() }, true),
            (K::Sequence(set("3:1")), ENC, c(), true),
            (K::Sequence(set("1,3")), ENC, c(), false),
            // UIDs: `*` is max_uid (30); `40:*` holds 30 though 40 > 30.
            (K::Uid(set("20")), ENC, c(), true),
            (K::Uid(set("*")), ENC, c(), false),
            (K::Uid(set("*")), ENC, Candidate { uid: 30, ..c() }, true),
            (K::Uid(set("40:*")), ENC, Candidate { uid: 30, ..c() }, true),
            (K::Uid(set("40:*")), ENC, Candidate { uid: 29, ..c() }, false),
            (K::Uid(set("25:*")), ENC, c(), false),
            (K::Uid(set("1:*")), ENC, c(), true),
            // Encoded words decoded; Unicode case.
            (K::Subject(s("grüße")), ENC, c(), true),
            (K::Subject(s("GRÜẞE")), ENC, c(), true),
            (K::Subject(s("=?ISO")), ENC, c(), false),
            (K::Subject(s("gruesse")), ENC, c(), false),
            (K::Subject(s("KÖLN")), UTF8, c(), true),
            (K::Subject(s("subject folded onto")), FOLDED, c(), true),
            (K::Subject(s("two spaces and a fold")), SPACES, c(), true),
            (K::Subject(s("two  spaces")), SPACES, c(), true),
            (K::Subject(s("a\tfold")), SPACES, c(), true),
            (K::Subject(s("still found")), DAMAGED, c(), true),
            (K::Subject(s("")), NODATE, c(), true),
            (K::Subject(s("inner subject")), NESTED, c(), true),
            (K::Subject(s("réunion")), NESTED, c(), false),
            // Address fields: display names and addresses.
            (K::From(s("jürgen müller")), ENC, c(), true),
            (K::From(s("JUERGEN@EXAMPLE.DE")), ENC, c(), true),
            (K::From(s("alice")), ENC, c(), false),
            (K::From(s("zoë ångström")), UTF8, c(), true),
            (K::From(s("eloi")), NESTED, c(), false),
            (K::To(s("alice example")), ENC, c(), true),
            (K::To(s("BOB@example.net")), ENC, c(), true),
            (K::To(s("carol")), ENC, c(), false),
            (K::To(s("alice example <")), SPACES, c(), true),
            (K::From(s("john  doe")), SPACES, c(), true),
            (K::From(s("user-from@domain.org")), COMMENTED, c(), true),
            (K::From(s("comment")), COMMENTED, c(), true),
            (K::To(s("user-from@domain.org")), COMMENTED, c(), false),
            (K::Cc(s("carol c.")), ENC, c(), true),
            (K::Cc(s("alice")), ENC, c(), false),
            (K::Bcc(s("hidden@")), NODATE, c(), true),
            (K::Bcc(s("")), ENC, c(), false),
            (K::Bcc(s("alice")), ENC, c(), false),
            // HEADER: any field of that name; "" tests that it exists.
            (K::Header(s("x-mailer"), s("FIXTURE 1.0")), ENC, c(), true),
            (K::Header(s("X-Mailer"), s("")), ENC, c(), true),
            (K::Header(s("X-Absent"), s("")), ENC, c(), false),
            (K::Header(s("Message-ID"), s("other")), ENC, c(), false),
            (K::Header(s("Date"), s("")), NODATE, c(), false),
            (K::Header(s("X-Note"), s("two  spaces here")), SPACES, c(), true),
            (K::Header(s("X-Note"), s("two spaces")), SPACES, c(), false),
            // BODY: decoded text parts, no header fields.
            (K::Body(s("HELLO WORLD")), ENC, c(), true),
            (K::Body(s("body.\r\nsecond")), ENC, c(), true),
            (K::Body(s("body.\nsecond")), ENC, c(), true),
            (K::Body(s("body. second")), ENC, c(), false),
            (K::Body(s("hello  world")), ENC, c(), false),
            (K::Body(s("grüße")), ENC, c(), false),
            (K::Body(s("straße nach köln")), UTF8, c(), true),
            (K::Body(s("ΣΊΣΥΦ")), UTF8, c(), true),
            (K::Body(s("RGllIFN0cm")), UTF8, c(), false),
            (K::Body(s("CAFÉ CRÈME BRÛLÉE, SOFT BREAK")), QP, c(), true),
            (K::Body(s("Caf=E9")), QP, c(), false),
            (K::Body(s("please see the attachment")), MULTI, c(), true),
            (K::Body(s("quarterly,numbers")), MULTI, c(), true),
            (K::Body(s("secretpayload")), MULTI, c(), false),
            (K::Body(s("U0VDUkVU")), MULTI, c(), false),
            (K::Body(s("preamble")), MULTI, c(), false),
            (K::Body(s("epilogue")), MULTI, c(), false),
            (K::Body(s("data.bin")), MULTI, c(), false),
            (K::Body(s("innermost phrase with café")), NESTED, c(), true),
            (K::Body(s("<b>html</b>")), NESTED, c(), true),
            (K::Body(s("original réunion")), NESTED, c(), false),
            (K::Body(s("naïve café")), UNLABELLED, c(), true),
            (K::Body(s("damaged body")), DAMAGED, c(), true),
            (K::Body(s("")), NODATE, c(), true),
            // TEXT: every header field (decoded, `name: value`) and BODY.
            (K::Text(s("grüße")), ENC, c(), true),
            (K::Text(s("x-mailer: fixture")), ENC, c(), true),
            (K::Text(s("x-mailer: fixture 1.0\r\n")), ENC, c(), true),
            (K::Text(s("line one\nline two")), SPACES, c(), true),
            (K::Text(s("second line")), ENC, c(), true),
            (K::Text(s("=?iso-8859-1?q?")), ENC, c(), false),
            (K::Text(s("absent words")), ENC, c(), false),
            (K::Text(s("content-transfer-encoding: base64")), UTF8, c(), true),
            (K::Text(s("data.bin")), MULTI, c(), true),
            (K::Text(s("secretpayload")), MULTI, c(), false),
            (K::Text(s("original réunion")), NESTED, c(), true),
            (K::Text(s("ÉLOÍ")), NESTED, c(), true),
            (K::Text(s("still found")), DAMAGED, c(), true),
            (K::Text(s("")), NODATE, c(), true),
            // Sent dates: the day as written, zone disregarded.
            (K::SentOn(date(2024, 1, 2)), ENC, c(), true),
            (K::SentOn(date(2024, 1, 3)), ENC, c(), false),
            (K::SentBefore(date(2024, 1, 3)), ENC, c(), true),
            (K::SentBefore(date(2024, 1, 2)), ENC, c(), false),
            (K::SentSince(date(2024, 1, 2)), ENC, c(), true),
            (K::SentSince(date(2024, 1, 3)), ENC, c(), false),
            (K::SentOn(date(2024, 1, 3)), UTF8, c(), true),
            (K::SentOn(date(2024, 1, 4)), QP, c(), true),
            (K::SentOn(date(2024, 1, 8)), ODDZONE, c(), true),
            (K::SentOn(date(1999, 1, 9)), SHORTYEAR, c(), true),
            // No readable Date: no SENT* key holds.
            (K::SentBefore(date(2100, 1, 1)), NODATE, c(), false),
            (K::SentSince(date(1970, 1, 1)), NODATE, c(), false),
            (K::SentOn(date(1970, 1, 1)), NODATE, c(), false),
            (not(K::SentBefore(date(2100, 1, 1))), NODATE, c(), true),
            (K::SentSince(date(1970, 1, 1)), BADDATE, c(), false),
            (K::SentSince(date(1970, 1, 1)), HUGEYEAR, c(), false),
            // Nesting.
            (K::And(vec![K::Seen, K::Subject(s("grüße"))]), ENC, c(), true),
            (K::And(vec![K::Unseen, K::Subject(s("grüße"))]), ENC, c(), false),
            (K::And(vec![]), ENC, c(), true),
            (or(K::Unseen, K::Subject(s("grüße"))), ENC, c(), true),
            (or(K::Unseen, K::Subject(s("nope"))), ENC, c(), false),
            (not(K::Subject(s("grüße"))), ENC, c(), false),
            (not(K::Subject(s("nope"))), ENC, c(), true),
            (not(or(K::Seen, K::Body(s("nope")))), ENC, c(), false),
        ]
    }

    fn variant(k: &SearchKey) -> &'static str {
        use SearchKey as K;
        match k {
            K::All => "ALL",
            K::Answered => "ANSWERED",
            K::Bcc(_) => "BCC",
            K::Before(_) => "BEFORE",
            K::Body(_) => "BODY",
            K::Cc(_) => "CC",
            K::Deleted => "DELETED",
            K::Draft => "DRAFT",
            K::Flagged => "FLAGGED",
            K::From(_) => "FROM",
            K::Header(..) => "HEADER",
            K::Keyword(_) => "KEYWORD",
            K::Larger(_) => "LARGER",
            K::New => "NEW",
            K::Not(_) => "NOT",
            K::Old => "OLD",
            K::On(_) => "ON",
            K::Or(..) => "OR",
            K::Recent => "RECENT",
            K::Seen => "SEEN",
            K::SentBefore(_) => "SENTBEFORE",
            K::SentOn(_) => "SENTON",
            K::SentSince(_) => "SENTSINCE",
            K::Since(_) => "SINCE",
            K::Smaller(_) => "SMALLER",
            K::Subject(_) => "SUBJECT",
            K::Text(_) => "TEXT",
            K::To(_) => "TO",
            K::Uid(_) => "UID",
            K::Unanswered => "UNANSWERED",
            K::Undeleted => "UNDELETED",
            K::Undraft => "UNDRAFT",
            K::Unflagged => "UNFLAGGED",
            K::Unkeyword(_) => "UNKEYWORD",
            K::Unseen => "UNSEEN",
            K::Sequence(_) => "sequence-set",
            K::And(_) => "AND",
        }
    }

    #[test]
    fn table() {
        let mut failed = Vec::new();
        for (key, mail, c, want) in cases() {
            if check(&key, mail, &c) != want {
                failed.push(format!("{key:?} on {:?}... should be {want}", &mail[..mail.len().min(40)]));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn every_key_true_and_false() {
        let cases = cases();
        let mut missing = Vec::new();
        for key in cases.iter().map(|c| &c.0) {
            let name = variant(key);
            for want in [true, false] {
                // ALL cannot be false.
                if name == "ALL" && !want {
                    continue;
                }
                if !cases.iter().any(|(k, _, _, w)| variant(k) == name && *w == want) {
                    missing.push(format!("{name} {want}"));
                }
            }
        }
        assert!(missing.is_empty(), "not covered: {missing:?}");
        let seen: std::collections::HashSet<_> = cases.iter().map(|c| variant(&c.0)).collect();
        assert_eq!(seen.len(), 37, "every SearchKey variant appears");
    }

    #[test]
    fn one_matcher_for_many_messages() {
        // Scratch buffers carry over; results must not.
        let cases = cases();
        for (key, _, _, _) in &cases {
            let mut m = Matcher::new(key);
            for (k, mail, c, want) in &cases {
                if k == key {
                    assert_eq!(m.matches(c, &BOUNDS, &mut Mail::new(mail)).unwrap(), *want, "{key:?}");
                }
            }
        }
    }

    #[test]
    fn need_per_key() {
        use SearchKey as K;
        let d = date(2024, 1, 1);
        let table = [
            (K::All, Need::Nothing),
            (K::Answered, Need::Nothing),
            (K::Deleted, Need::Nothing),
            (K::Draft, Need::Nothing),
            (K::Flagged, Need::Nothing),
            (K::New, Need::Nothing),
            (K::Old, Need::Nothing),
            (K::Recent, Need::Nothing),
            (K::Seen, Need::Nothing),
            (K::Unanswered, Need::Nothing),
            (K::Undeleted, Need::Nothing),
            (K::Undraft, Need::Nothing),
            (K::Unflagged, Need::Nothing),
            (K::Unseen, Need::Nothing),
            (K::Keyword(s("a")), Need::Nothing),
            (K::Unkeyword(s("a")), Need::Nothing),
            (K::Larger(1), Need::Nothing),
            (K::Smaller(1), Need::Nothing),
            (K::Before(d), Need::Nothing),
            (K::On(d), Need::Nothing),
            (K::Since(d), Need::Nothing),
            (K::Uid(set("1:*")), Need::Nothing),
            (K::Sequence(set("1")), Need::Nothing),
            (K::Bcc(s("a")), Need::Header),
            (K::Cc(s("a")), Need::Header),
            (K::From(s("a")), Need::Header),
            (K::To(s("a")), Need::Header),
            (K::Subject(s("a")), Need::Header),
            (K::Header(s("X"), s("")), Need::Header),
            (K::SentBefore(d), Need::Header),
            (K::SentOn(d), Need::Header),
            (K::SentSince(d), Need::Header),
            (K::Body(s("a")), Need::Message),
            (K::Text(s("a")), Need::Message),
            (K::Body(s("")), Need::Nothing),
            (K::Text(s("")), Need::Nothing),
            (not(K::Subject(s("a"))), Need::Header),
            (not(K::Seen), Need::Nothing),
            (or(K::Seen, K::Body(s("a"))), Need::Message),
            (or(K::From(s("a")), K::Seen), Need::Header),
            (K::And(vec![]), Need::Nothing),
            (K::And(vec![K::Seen, K::To(s("a"))]), Need::Header),
            (K::And(vec![K::Text(s("a")), K::To(s("a"))]), Need::Message),
        ];
        for (key, want) in table {
            assert_eq!(need(&key), want, "{key:?}");
            assert_eq!(Matcher::new(&key).need(), want, "{key:?}");
        }
    }

    #[test]
    fn reads_only_what_is_needed_and_once() {
        use SearchKey as K;
        let reads = |key: &SearchKey, c: &Candidate| {
            let mut m = Mail::new(ENC);
            matches(key, c, &BOUNDS, &mut m).unwrap();
            (m.header_reads, m.message_reads)
        };
        let seen = cand();
        assert_eq!(reads(&K::Seen, &seen), (0, 0));
        assert_eq!(reads(&K::Subject(s("x")), &seen), (1, 0));
        let many = K::And(vec![
            K::Subject(s("grüße")),
            K::From(s("jürgen")),
            K::SentOn(date(2024, 1, 2)),
            K::Text(s("hello")),
            K::Body(s("world")),
        ]);
        assert_eq!(reads(&many, &seen), (0, 1));
        // Cheap keys go first, whatever the order written.
        assert_eq!(reads(&K::And(vec![K::Text(s("hello")), K::Unseen]), &seen), (0, 0));
        assert_eq!(reads(&or(K::Body(s("hello")), K::Seen), &seen), (0, 0));
        assert_eq!(reads(&K::Body(s("")), &seen), (0, 0));
    }

    #[test]
    fn nested_messages_stop_at_the_limit() {
        // `depth` message/rfc822 parts, one inside the other, the phrase in
        // the innermost.
        let nest = |depth: usize| {
            let mut m = String::from("Subject: inner\r\n\r\nDeep phrase.\r\n");
            for _ in 0..depth {
                m = format!("Subject: wrapper\r\nContent-Type: message/rfc822\r\n\r\n{m}");
            }
            Mail::bytes(m.into_bytes())
        };
        let key = SearchKey::Body(s("deep phrase"));
        assert!(matches(&key, &cand(), &BOUNDS, &mut nest(MAX_NESTED_MESSAGES)).unwrap());
        assert!(!matches(&key, &cand(), &BOUNDS, &mut nest(MAX_NESTED_MESSAGES + 1)).unwrap());
    }

    #[test]
    fn big_buffers_are_given_back() {
        let big = format!("Subject: big\r\n\r\n{}", "word ".repeat(KEEP_SCRATCH));
        let key = SearchKey::Text(s("needle"));
        let mut m = Matcher::new(&key);
        assert!(!m.matches(&cand(), &BOUNDS, &mut Mail::bytes(big.into_bytes())).unwrap());
        assert!(m.scratch.body.capacity() <= KEEP_SCRATCH);
        assert!(m.matches(&cand(), &BOUNDS, &mut Mail::new("Subject: needle\n\nx\n")).unwrap());
    }

    #[test]
    fn read_errors_come_back() {
        let mut m = Mail::new(ENC);
        m.fail = true;
        assert!(matches(&SearchKey::Subject(s("x")), &cand(), &BOUNDS, &mut m).is_err());
        assert!(matches(&SearchKey::Seen, &cand(), &BOUNDS, &mut m).unwrap());
    }

    #[test]
    fn charsets() {
        for cs in ["US-ASCII", "us-ascii", "UTF-8", "utf-8"] {
            assert!(charset_supported(cs), "{cs}");
        }
        for cs in ["ISO-8859-1", "UTF8", "", "UTF-16"] {
            assert!(!charset_supported(cs), "{cs}");
        }
    }

    #[test]
    fn sent_day_reads_the_written_date() {
        assert_eq!(sent_day("Tue, 02 Jan 2024 23:30:00 -0500"), Some(days(2024, 1, 2)));
        assert_eq!(sent_day("Wed,3 Jan 2024 00:00:00 +1400"), Some(days(2024, 1, 3)));
        assert_eq!(sent_day("29 Feb 2024"), Some(days(2024, 2, 29)));
        assert_eq!(sent_day("1 January 70 00:00 UT"), Some(0));
        assert_eq!(sent_day("hello"), None);
        assert_eq!(sent_day(""), None);
        assert_eq!(sent_day("0 Jan 2024"), None);
        assert_eq!(sent_day("1 Foo 2024"), None);
        assert_eq!(sent_day("1 Jan 1969"), None);
        assert_eq!(sent_day("1 Jan 99999"), None);
    }

    #[test]
    fn folding_is_simple_lowercase() {
        let fold = |t: &str| {
            let mut out = String::new();
            fold_into(&mut out, t);
            out
        };
        assert_eq!(fold("ABC xyz"), "abc xyz");
        assert_eq!(fold("ÄÖÜ ẞ Σ"), "äöü ß σ");
        // Full lowercase of U+0130 is two characters; simple is `i`.
        assert_eq!(fold("İ"), "i");
        assert_eq!(fold("Kelvin \u{212A}"), "kelvin k");
    }

    /// Pieces that steer random messages into MIME structure.
    const PIECES: &[&str] = &[
        "\r\n",
        "\r\n\r\n",
        "\n",
        "\r",
        " ",
        "\t",
        ":",
        "From: ",
        "Date: ",
        "Subject: =?utf-8?B?",
        "=?iso-8859-1?q?=FC",
        "?=",
        "Content-Type: multipart/mixed; boundary=b\r\n",
        "Content-Type: multipart/digest; boundary=b\r\n",
        "Content-Type: message/rfc822\r\n",
        "Content-Type: text/plain; charset=iso-8859-1\r\n",
        "Content-Type: text/plain; charset=utf-16\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "Content-Transfer-Encoding: quoted-printable\r\n",
        "--b\r\n",
        "--b--\r\n",
        "=E9=\r\n",
        "1 Jan 2024",
        "Mon, 31 Dec 9999 99:99:99 +9999",
        "\u{0130}\u{00DF}\u{03A3}",
        "\0",
    ];

    fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            prop::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..16),
        ];
        prop::collection::vec(piece, 0..48).prop_map(|ps| ps.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics(bytes in message_bytes(), recent in any::<bool>()) {
            use SearchKey as K;
            let keys = [
                K::Text(s("ü")),
                K::Body(s("b")),
                K::Subject(s("x")),
                K::From(s("")),
                K::Header(s("Content-Type"), s("text")),
                K::SentOn(date(2024, 1, 1)),
                K::SentBefore(date(2024, 1, 1)),
                K::And(vec![K::New, K::Text(s("ı")), K::Bcc(s("a"))]),
            ];
            let c = if recent { with_flags(Flags::RECENT) } else { cand() };
            for key in &keys {
                let mut m = Mail::bytes(bytes.clone());
                let _ = matches(key, &c, &BOUNDS, &mut m).unwrap();
                prop_assert!(m.header_reads + m.message_reads <= 1);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            for key in [SearchKey::Text(s("a")), SearchKey::SentSince(date(2000, 1, 1))] {
                let _ = matches(&key, &cand(), &BOUNDS, &mut Mail::bytes(bytes.clone())).unwrap();
            }
        }
    }
}

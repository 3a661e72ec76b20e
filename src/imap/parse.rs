//! The IMAP command grammar (RFC 3501 §9): one framed command in, one
//! [`Tagged`] [`Command`] out, or a [`ParseError`] that says what is wrong.
//!
//! Besides IMAP4rev1 the grammar covers LITERAL+ (RFC 7888), SASL-IR
//! (RFC 4959), IDLE (RFC 2177), UID EXPUNGE (RFC 4315), MOVE (RFC 6851),
//! ID (RFC 2971), ENABLE (RFC 5161), UNSELECT (RFC 3691), NAMESPACE
//! (RFC 2342), and the LIST-EXTENDED syntax of RFC 5258 §3 with options
//! that are plain atoms (`LIST (SPECIAL-USE) "" "*"`, `LIST "" ("a" "b")`,
//! `LIST "" "*" RETURN (SPECIAL-USE)`).
//!
//! The input is what [`super::frame::read_command`] returns: the command
//! without its final line end, each literal announcement followed by CRLF
//! and the literal's bytes.
//!
//! Tokens are separated by exactly one space, and nothing may follow the
//! last argument. Command names and keywords are case-insensitive.
//! Where the grammar is loose or clients stray from it:
//!
//! - A quoted string may hold 8-bit bytes (clients send UTF-8 mailbox
//!   names and search strings that way, and RFC 6855 allows it); NUL, CR
//!   and LF may not appear, and only `\"` and `\\` are escapes.
//! - Strings become `String`s: mailbox names, user names, search strings,
//!   header field names and ID values that are not UTF-8 are refused. A
//!   search with another `CHARSET` therefore works for ASCII strings only;
//!   the session decides whether it supports the charset at all.
//! - NUL may not appear in a literal (RFC 3501 §4.3 `CHAR8`), except in the
//!   APPEND message, which is kept byte for byte: refusing a message that
//!   another server stored would lose mail in a migration.
//! - An APPEND date-time may give a one-digit day without the padding
//!   space of `date-day-fixed`.
//! - AUTHENTICATE's mechanism and LIST options are upper-cased; tags,
//!   mailbox names, keywords, ENABLE capabilities, SEARCH charsets and ID
//!   fields are kept as sent.
//! - [`Flag::Extension`] holds the name after the backslash (`\Junk` is
//!   `Extension("Junk")`).
//! - A list of search keys with one element is that key: `(SEEN)` and
//!   `SEEN` both parse to [`SearchKey::Seen`]; [`SearchKey::And`] always
//!   has two or more elements.
//!
//! Search keys nest (NOT, OR, parentheses) only as deep as
//! [`ParseLimits::max_depth`], so that no input can exhaust the stack.

use std::borrow::Cow;
use std::fmt;

use super::command::{
    Command, Date, DateTime, FetchAttr, Flag, Partial, SearchKey, Section, SectionText, SeqNum, SeqRange, SequenceSet,
    StatusItem, StoreMode, Tagged,
};
use super::response::is_atom_char;
use crate::auth::sasl::Secret;

/// Caps on what one command may make the parser do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// How deep search keys may nest (each NOT, OR and parenthesis is a
    /// level).
    pub max_depth: usize,
}

impl Default for ParseLimits {
    /// 32 levels: far more than any client's search, and a stack of that
    /// depth is small.
    fn default() -> ParseLimits {
        ParseLimits { max_depth: 32 }
    }
}

/// A command that does not follow the grammar. The session answers
/// `tag BAD message`, or `* BAD message` when the tag is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The command's tag, when the command starts with one.
    pub tag: Option<String>,
    /// What is wrong, for the client to read: "Missing mailbox name".
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// Whether `b` may appear in a tag (RFC 3501 §9: `ASTRING-CHAR` except `+`).
fn is_tag_char(b: u8) -> bool {
    (is_atom_char(b) || b == b']') && b != b'+'
}

/// The tag of a command: its first token, if that is a valid tag (so that
/// an error can be answered tagged).
pub fn tag_of(buf: &[u8]) -> Option<String> {
    let end = memchr::memchr(b' ', buf).unwrap_or(buf.len());
    let tag = &buf[..end];
    (!tag.is_empty() && tag.iter().all(|&b| is_tag_char(b))).then(|| String::from_utf8_lossy(tag).into_owned())
}

/// Parses one framed command.
pub fn parse(buf: &[u8], limits: &ParseLimits) -> Result<Tagged, ParseError> {
    let mut p = Parser { buf, pos: 0, max_depth: limits.max_depth };
    p.tagged().map_err(|message| ParseError { tag: tag_of(buf), message })
}

type R<T> = Result<T, String>;

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
}

/// Letters, digits and dots: the characters of FETCH items and section
/// texts, which end at `[` (an atom character).
fn is_word_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.'
}

/// A token for an error message: printable, and short.
fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned();
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn utf8(bytes: Cow<'_, [u8]>, what: &str) -> R<String> {
    let s = match bytes {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(str::to_owned).ok(),
        Cow::Owned(v) => String::from_utf8(v).ok(),
    };
    s.ok_or_else(|| format!("Invalid UTF-8 in {what}"))
}

impl<'a> Parser<'a> {
    // The command table.

    fn tagged(&mut self) -> R<Tagged> {
        if self.buf.is_empty() {
            return Err("Empty command line".into());
        }
        let tag = self.take_while(is_tag_char);
        if tag.is_empty() {
            return Err(if matches!(self.peek(), None | Some(b' ')) { "Missing tag" } else { "Invalid tag" }.into());
        }
        match self.peek() {
            None => return Err("Missing command".into()),
            Some(b' ') => {}
            Some(_) => return Err("Invalid tag".into()),
        }
        let tag = String::from_utf8_lossy(tag).into_owned();
        self.sp("command")?;
        let command = self.command()?;
        self.end()?;
        Ok(Tagged { tag, command })
    }

    fn command(&mut self) -> R<Command> {
        let name = self.keyword("command")?;
        Ok(match name.as_str() {
            "CAPABILITY" => Command::Capability,
            "NOOP" => Command::Noop,
            "LOGOUT" => Command::Logout,
            "ID" => self.id()?,
            "STARTTLS" => Command::StartTls,
            "AUTHENTICATE" => self.authenticate()?,
            "LOGIN" => self.login()?,
            "SELECT" => Command::Select { mailbox: self.mailbox_arg("mailbox name")? },
            "EXAMINE" => Command::Examine { mailbox: self.mailbox_arg("mailbox name")? },
            "CREATE" => Command::Create { mailbox: self.mailbox_arg("mailbox name")? },
            "DELETE" => Command::Delete { mailbox: self.mailbox_arg("mailbox name")? },
            "RENAME" => {
                Command::Rename { from: self.mailbox_arg("mailbox name")?, to: self.mailbox_arg("new mailbox name")? }
            }
            "SUBSCRIBE" => Command::Subscribe { mailbox: self.mailbox_arg("mailbox name")? },
            "UNSUBSCRIBE" => Command::Unsubscribe { mailbox: self.mailbox_arg("mailbox name")? },
            "LIST" => self.list_command()?,
            "LSUB" => {
                let reference = self.mailbox_arg("reference")?;
                self.sp("mailbox pattern")?;
                Command::Lsub { reference, pattern: self.list_mailbox()? }
            }
            "STATUS" => self.status()?,
            "APPEND" => self.append()?,
            "NAMESPACE" => Command::Namespace,
            "ENABLE" => self.enable()?,
            "IDLE" => Command::Idle,
            "CHECK" => Command::Check,
            "CLOSE" => Command::Close,
            "UNSELECT" => Command::Unselect,
            "EXPUNGE" => Command::Expunge,
            "SEARCH" => self.search(false)?,
            "FETCH" => self.fetch(false)?,
            "STORE" => self.store(false)?,
            "COPY" => self.copy_or_move(false, false)?,
            "MOVE" => self.copy_or_move(false, true)?,
            "UID" => {
                self.sp("command after UID")?;
                let name = self.keyword("command after UID")?;
                match name.as_str() {
                    "SEARCH" => self.search(true)?,
                    "FETCH" => self.fetch(true)?,
                    "STORE" => self.store(true)?,
                    "COPY" => self.copy_or_move(true, false)?,
                    "MOVE" => self.copy_or_move(true, true)?,
                    "EXPUNGE" => Command::UidExpunge(self.set_arg()?),
                    _ => return Err(format!("Unknown command UID {}", shown(name.as_bytes()))),
                }
            }
            _ => return Err(format!("Unknown command {}", shown(name.as_bytes()))),
        })
    }

    /// `ID ("name" "value" ...)` or `ID NIL` (RFC 2971 §3.1).
    fn id(&mut self) -> R<Command> {
        self.sp("ID parameters")?;
        if self.nil() {
            return Ok(Command::Id(None));
        }
        let pairs = self.list("ID parameters", true, |p| {
            let name = p.string("ID field name")?;
            let name = utf8(name, "ID field name")?;
            p.sp("ID value")?;
            let value = match p.nstring("ID value")? {
                Some(v) => Some(utf8(v, "ID value")?),
                None => None,
            };
            Ok((name, value))
        })?;
        Ok(Command::Id(Some(pairs)))
    }

    /// `AUTHENTICATE mechanism [initial-response]` (RFC 4959 §3): the
    /// response is base64 text, or `=` for an empty one.
    fn authenticate(&mut self) -> R<Command> {
        let mechanism = self.keyword_arg("mechanism")?;
        let initial = if self.peek() == Some(b' ') {
            self.sp("initial response")?;
            let ir = self.atom("initial response")?;
            if !valid_base64(ir) {
                return Err("Invalid base64 in initial response".into());
            }
            Some(String::from_utf8_lossy(ir).into_owned())
        } else {
            None
        };
        Ok(Command::Authenticate { mechanism, initial })
    }

    fn login(&mut self) -> R<Command> {
        self.sp("user name")?;
        let user = self.astring("user name")?;
        let user = utf8(user, "user name")?;
        self.sp("password")?;
        let password = Secret(self.astring("password")?.into_owned());
        Ok(Command::Login { user, password })
    }

    /// `LIST [(selection)] reference (pattern | (patterns)) [RETURN (options)]`
    /// (RFC 5258 §6).
    fn list_command(&mut self) -> R<Command> {
        self.sp("mailbox reference")?;
        let selection = if self.peek() == Some(b'(') {
            let options = self.list("LIST selection options", true, |p| p.keyword("LIST option"))?;
            self.sp("mailbox reference")?;
            options
        } else {
            Vec::new()
        };
        let reference = self.mailbox()?;
        self.sp("mailbox pattern")?;
        let patterns = if self.peek() == Some(b'(') {
            self.list("mailbox patterns", false, |p| p.list_mailbox())?
        } else {
            vec![self.list_mailbox()?]
        };
        let mut returns = Vec::new();
        if self.peek() == Some(b' ') {
            let save = self.pos;
            self.pos += 1;
            if !self.take_while(is_atom_char).eq_ignore_ascii_case(b"RETURN") {
                self.pos = save;
                return Err("Extra arguments".into());
            }
            self.sp("LIST return options")?;
            returns = self.list("LIST return options", true, |p| p.keyword("LIST option"))?;
        }
        Ok(Command::List { selection, reference, patterns, returns })
    }

    fn status(&mut self) -> R<Command> {
        let mailbox = self.mailbox_arg("mailbox name")?;
        self.sp("status items")?;
        let items = self.list("status items", false, |p| {
            let item = p.keyword("status item")?;
            Ok(match item.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                _ => return Err(format!("Unknown status item {}", shown(item.as_bytes()))),
            })
        })?;
        Ok(Command::Status { mailbox, items })
    }

    /// `APPEND mailbox [(flags)] ["date-time"] literal` (RFC 3501 §6.3.11).
    fn append(&mut self) -> R<Command> {
        let mailbox = self.mailbox_arg("mailbox name")?;
        self.sp("message")?;
        let mut flags = Vec::new();
        if self.peek() == Some(b'(') {
            flags = self.flag_list()?;
            self.sp("message")?;
        }
        let mut date = None;
        if self.peek() == Some(b'"') {
            date = Some(self.date_time()?);
            self.sp("message")?;
        }
        if self.peek() != Some(b'{') {
            return Err("The message must be a literal".into());
        }
        let message = self.literal("message", true)?.to_vec();
        Ok(Command::Append { mailbox, flags, date, message })
    }

    fn enable(&mut self) -> R<Command> {
        let mut names = Vec::new();
        loop {
            self.sp("capability name")?;
            let name = self.atom("capability name")?;
            names.push(String::from_utf8_lossy(name).into_owned());
            if self.peek() != Some(b' ') {
                return Ok(Command::Enable(names));
            }
        }
    }

    /// `SEARCH [CHARSET name] key...` (RFC 3501 §6.4.4).
    fn search(&mut self, uid: bool) -> R<Command> {
        self.sp("search criteria")?;
        let mut charset = None;
        let save = self.pos;
        if self.take_while(is_atom_char).eq_ignore_ascii_case(b"CHARSET") && self.peek() == Some(b' ') {
            self.sp("charset")?;
            let name = self.astring("charset")?;
            charset = Some(utf8(name, "charset")?);
            self.sp("search criteria")?;
        } else {
            self.pos = save;
        }
        let mut keys = vec![self.search_key(0)?];
        while self.peek() == Some(b' ') {
            self.sp("search key")?;
            keys.push(self.search_key(0)?);
        }
        Ok(Command::Search { uid, charset, key: and(keys) })
    }

    /// One search key; `depth` is how many NOT, OR and parentheses
    /// enclose it.
    fn search_key(&mut self, depth: usize) -> R<SearchKey> {
        match self.peek() {
            None => return Err("Missing search key".into()),
            Some(b'(') => {
                let inner = self.nest(depth)?;
                let keys = self.list("search keys", false, |p| p.search_key(inner))?;
                return Ok(and(keys));
            }
            Some(b'*' | b'0'..=b'9') => return Ok(SearchKey::Sequence(self.sequence_set()?)),
            Some(_) => {}
        }
        let name = self.keyword("search key")?;
        Ok(match name.as_str() {
            "ALL" => SearchKey::All,
            "ANSWERED" => SearchKey::Answered,
            "DELETED" => SearchKey::Deleted,
            "DRAFT" => SearchKey::Draft,
            "FLAGGED" => SearchKey::Flagged,
            "NEW" => SearchKey::New,
            "OLD" => SearchKey::Old,
            "RECENT" => SearchKey::Recent,
            "SEEN" => SearchKey::Seen,
            "UNANSWERED" => SearchKey::Unanswered,
            "UNDELETED" => SearchKey::Undeleted,
            "UNDRAFT" => SearchKey::Undraft,
            "UNFLAGGED" => SearchKey::Unflagged,
            "UNSEEN" => SearchKey::Unseen,
            "BCC" => SearchKey::Bcc(self.search_string()?),
            "BODY" => SearchKey::Body(self.search_string()?),
            "CC" => SearchKey::Cc(self.search_string()?),
            "FROM" => SearchKey::From(self.search_string()?),
            "SUBJECT" => SearchKey::Subject(self.search_string()?),
            "TEXT" => SearchKey::Text(self.search_string()?),
            "TO" => SearchKey::To(self.search_string()?),
            "HEADER" => {
                self.sp("header field name")?;
                let field = self.astring("header field name")?;
                let field = utf8(field, "header field name")?;
                SearchKey::Header(field, self.search_string()?)
            }
            "BEFORE" => SearchKey::Before(self.date_arg()?),
            "ON" => SearchKey::On(self.date_arg()?),
            "SINCE" => SearchKey::Since(self.date_arg()?),
            "SENTBEFORE" => SearchKey::SentBefore(self.date_arg()?),
            "SENTON" => SearchKey::SentOn(self.date_arg()?),
            "SENTSINCE" => SearchKey::SentSince(self.date_arg()?),
            "KEYWORD" => SearchKey::Keyword(self.keyword_flag()?),
            "UNKEYWORD" => SearchKey::Unkeyword(self.keyword_flag()?),
            "LARGER" => {
                self.sp("size")?;
                SearchKey::Larger(self.number_u64("size")?)
            }
            "SMALLER" => {
                self.sp("size")?;
                SearchKey::Smaller(self.number_u64("size")?)
            }
            "UID" => SearchKey::Uid(self.set_arg()?),
            "NOT" => {
                let inner = self.nest(depth)?;
                self.sp("search key after NOT")?;
                SearchKey::Not(Box::new(self.search_key(inner)?))
            }
            "OR" => {
                let inner = self.nest(depth)?;
                self.sp("search key after OR")?;
                let a = self.search_key(inner)?;
                self.sp("second search key after OR")?;
                let b = self.search_key(inner)?;
                SearchKey::Or(Box::new(a), Box::new(b))
            }
            _ => return Err(format!("Unknown search key {}", shown(name.as_bytes()))),
        })
    }

    /// The depth one level inside `depth`, if that is allowed.
    fn nest(&self, depth: usize) -> R<usize> {
        if depth >= self.max_depth {
            return Err("Search keys nested too deeply".into());
        }
        Ok(depth + 1)
    }

    fn search_string(&mut self) -> R<String> {
        self.sp("search string")?;
        let s = self.astring("search string")?;
        utf8(s, "search string")
    }

    /// `KEYWORD` and `UNKEYWORD` take a `flag-keyword`, an atom.
    fn keyword_flag(&mut self) -> R<String> {
        self.sp("keyword")?;
        let k = self.atom("keyword")?;
        Ok(String::from_utf8_lossy(k).into_owned())
    }

    /// `FETCH set (items)`, `FETCH set item`, or one of the macros ALL, FAST
    /// and FULL (RFC 3501 §6.4.5).
    fn fetch(&mut self, uid: bool) -> R<Command> {
        let set = self.set_arg()?;
        self.sp("fetch items")?;
        let items = if self.peek() == Some(b'(') {
            self.list("fetch items", false, |p| p.fetch_att())?
        } else {
            let save = self.pos;
            let word = self.take_while(is_word_char).to_ascii_uppercase();
            let fast = [FetchAttr::Flags, FetchAttr::InternalDate, FetchAttr::Rfc822Size];
            let delimited = matches!(self.peek(), None | Some(b' '));
            match word.as_slice() {
                b"FAST" if delimited => fast.to_vec(),
                b"ALL" if delimited => [&fast[..], &[FetchAttr::Envelope]].concat(),
                b"FULL" if delimited => [&fast[..], &[FetchAttr::Envelope, FetchAttr::Body]].concat(),
                _ => {
                    self.pos = save;
                    vec![self.fetch_att()?]
                }
            }
        };
        Ok(Command::Fetch { uid, set, items })
    }

    fn fetch_att(&mut self) -> R<FetchAttr> {
        let word = self.take_while(is_word_char);
        let attr = match word.to_ascii_uppercase().as_slice() {
            b"ENVELOPE" => FetchAttr::Envelope,
            b"FLAGS" => FetchAttr::Flags,
            b"INTERNALDATE" => FetchAttr::InternalDate,
            b"RFC822" => FetchAttr::Rfc822,
            b"RFC822.HEADER" => FetchAttr::Rfc822Header,
            b"RFC822.SIZE" => FetchAttr::Rfc822Size,
            b"RFC822.TEXT" => FetchAttr::Rfc822Text,
            b"BODYSTRUCTURE" => FetchAttr::BodyStructure,
            b"UID" => FetchAttr::Uid,
            b"BODY" if self.peek() == Some(b'[') => self.section(false)?,
            b"BODY" => FetchAttr::Body,
            b"BODY.PEEK" if self.peek() == Some(b'[') => self.section(true)?,
            b"BODY.PEEK" => return Err("BODY.PEEK needs a section".into()),
            b"" if self.peek().is_none() => return Err("Missing fetch item".into()),
            b"" => return Err("Invalid fetch item".into()),
            _ => return Err(format!("Unknown fetch item {}", shown(word))),
        };
        self.delimited("fetch item")?;
        Ok(attr)
    }

    /// `[section]<origin.count>` after BODY or BODY.PEEK.
    fn section(&mut self, peek: bool) -> R<FetchAttr> {
        self.expect(b'[', "Invalid section")?;
        let mut part = Vec::new();
        let mut text = None;
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            loop {
                part.push(self.nz_number().ok_or("Invalid section part number")?);
                let next_is_digit = self.buf.get(self.pos + 1).is_some_and(u8::is_ascii_digit);
                if self.peek() == Some(b'.') && next_is_digit {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            if self.eat(b'.') {
                text = Some(self.section_text(true)?);
            }
        } else if self.peek() != Some(b']') {
            text = Some(self.section_text(false)?);
        }
        self.expect(b']', "Invalid section")?;
        let partial = if self.eat(b'<') {
            let origin = self.number_u32().ok_or("Invalid partial range")?;
            self.expect(b'.', "Invalid partial range")?;
            let count = self.nz_number().ok_or("Invalid partial range")?;
            self.expect(b'>', "Invalid partial range")?;
            Some(Partial { origin, count })
        } else {
            None
        };
        Ok(FetchAttr::Section { peek, section: Section { part, text }, partial })
    }

    /// HEADER, HEADER.FIELDS (names), HEADER.FIELDS.NOT (names), TEXT, or
    /// after a part number also MIME.
    fn section_text(&mut self, after_part: bool) -> R<SectionText> {
        let word = self.take_while(|b| b.is_ascii_alphabetic() || b == b'.');
        Ok(match word.to_ascii_uppercase().as_slice() {
            b"HEADER" => SectionText::Header,
            b"TEXT" => SectionText::Text,
            b"MIME" if after_part => SectionText::Mime,
            b"MIME" => return Err("MIME needs a part number".into()),
            b"HEADER.FIELDS" => SectionText::HeaderFields(self.header_list()?),
            b"HEADER.FIELDS.NOT" => SectionText::HeaderFieldsNot(self.header_list()?),
            _ => return Err("Invalid section".into()),
        })
    }

    fn header_list(&mut self) -> R<Vec<String>> {
        self.sp("header field names")?;
        self.list("header field names", false, |p| {
            let name = p.astring("header field name")?;
            utf8(name, "header field name")
        })
    }

    /// `STORE set [+|-]FLAGS[.SILENT] flags` (RFC 3501 §6.4.6).
    fn store(&mut self, uid: bool) -> R<Command> {
        let set = self.set_arg()?;
        self.sp("store item")?;
        let item = self.atom("store item")?;
        let (mode, silent) = match item.to_ascii_uppercase().as_slice() {
            b"FLAGS" => (StoreMode::Replace, false),
            b"FLAGS.SILENT" => (StoreMode::Replace, true),
            b"+FLAGS" => (StoreMode::Add, false),
            b"+FLAGS.SILENT" => (StoreMode::Add, true),
            b"-FLAGS" => (StoreMode::Remove, false),
            b"-FLAGS.SILENT" => (StoreMode::Remove, true),
            _ => return Err(format!("Unknown store item {}", shown(item))),
        };
        self.sp("flags")?;
        let flags = if self.peek() == Some(b'(') {
            self.flag_list()?
        } else {
            let mut flags = vec![self.flag()?];
            while self.peek() == Some(b' ') {
                self.sp("flag")?;
                flags.push(self.flag()?);
            }
            flags
        };
        Ok(Command::Store { uid, set, mode, silent, flags })
    }

    fn copy_or_move(&mut self, uid: bool, is_move: bool) -> R<Command> {
        let set = self.set_arg()?;
        let mailbox = self.mailbox_arg("mailbox name")?;
        Ok(if is_move { Command::Move { uid, set, mailbox } } else { Command::Copy { uid, set, mailbox } })
    }

    // Flags.

    fn flag_list(&mut self) -> R<Vec<Flag>> {
        self.list("flag list", true, |p| p.flag())
    }

    /// A system flag (`\Seen`, case-insensitive), another `\Name`, or a
    /// keyword atom.
    fn flag(&mut self) -> R<Flag> {
        let system = self.eat(b'\\');
        let name = self.atom("flag")?;
        if !system {
            return Ok(Flag::Keyword(String::from_utf8_lossy(name).into_owned()));
        }
        Ok(match name.to_ascii_uppercase().as_slice() {
            b"SEEN" => Flag::Seen,
            b"ANSWERED" => Flag::Answered,
            b"FLAGGED" => Flag::Flagged,
            b"DELETED" => Flag::Deleted,
            b"DRAFT" => Flag::Draft,
            b"RECENT" => Flag::Recent,
            _ => Flag::Extension(String::from_utf8_lossy(name).into_owned()),
        })
    }

    // Dates.

    fn date_arg(&mut self) -> R<Date> {
        self.sp("date")?;
        let quoted = self.eat(b'"');
        let date = self.date_text(false).ok_or("Invalid date")?;
        if quoted {
            self.expect(b'"', "Invalid date")?;
        }
        self.delimited("date")?;
        Ok(Date(date))
    }

    /// `d-Mon-yyyy` as days since 1970-01-01. `padded` allows a space
    /// before a one-digit day (`date-day-fixed`).
    fn date_text(&mut self, padded: bool) -> Option<i64> {
        if padded && self.peek() == Some(b' ') {
            self.pos += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
        }
        let day = self.take_while(|b| b.is_ascii_digit());
        if day.is_empty() || day.len() > 2 || !self.eat(b'-') {
            return None;
        }
        let month = self.buf.get(self.pos..self.pos + 3)?;
        let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
        self.pos += 3;
        if !self.eat(b'-') {
            return None;
        }
        let year = self.take_while(|b| b.is_ascii_digit());
        if year.len() != 4 {
            return None;
        }
        let (day, year) = (decimal(day)?, decimal(year)?);
        if day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(days_from_civil(i64::from(year), month, day))
    }

    /// `"dd-Mon-yyyy hh:mm:ss +zzzz"` (RFC 3501 §9 `date-time`).
    fn date_time(&mut self) -> R<DateTime> {
        let bad = || "Invalid date-time".to_string();
        self.expect(b'"', "Invalid date-time")?;
        let days = self.date_text(true).ok_or_else(bad)?;
        self.expect(b' ', "Invalid date-time")?;
        let mut time = [0u32; 3];
        for (i, t) in time.iter_mut().enumerate() {
            if i > 0 {
                self.expect(b':', "Invalid date-time")?;
            }
            *t = self.fixed_digits(2).ok_or_else(bad)?;
        }
        let [hour, minute, second] = time;
        if hour > 23 || minute > 59 || second > 60 {
            return Err(bad());
        }
        self.expect(b' ', "Invalid date-time")?;
        let sign = match self.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        self.pos += 1;
        let zone = self.fixed_digits(4).ok_or_else(bad)?;
        let (zh, zm) = (zone / 100, zone % 100);
        if zh > 23 || zm > 59 {
            return Err(bad());
        }
        self.expect(b'"', "Invalid date-time")?;
        self.delimited("date-time")?;
        let zone_minutes = sign * (zh * 60 + zm) as i32;
        let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
        Ok(DateTime { epoch: local - i64::from(zone_minutes) * 60, zone_minutes })
    }

    /// Exactly `n` digits.
    fn fixed_digits(&mut self, n: usize) -> Option<u32> {
        let digits = self.buf.get(self.pos..self.pos + n)?;
        let value = decimal(digits)?;
        self.pos += n;
        Some(value)
    }

    // Sequence sets and numbers.

    /// A space, then a sequence set.
    fn set_arg(&mut self) -> R<SequenceSet> {
        self.sp("sequence set")?;
        self.sequence_set()
    }

    /// `1`, `1:5`, `*`, `3:*`, `1,3:4,*` (RFC 3501 §9 `sequence-set`).
    fn sequence_set(&mut self) -> R<SequenceSet> {
        let bad = || "Invalid sequence set".to_string();
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_number().ok_or_else(bad)?;
            let b = if self.eat(b':') { self.seq_number().ok_or_else(bad)? } else { a };
            ranges.push(SeqRange(a, b));
            if !self.eat(b',') {
                break;
            }
        }
        match self.peek() {
            None | Some(b' ' | b')') => Ok(SequenceSet(ranges)),
            Some(_) => Err(bad()),
        }
    }

    fn seq_number(&mut self) -> Option<SeqNum> {
        if self.eat(b'*') {
            return Some(SeqNum::Largest);
        }
        self.nz_number().map(SeqNum::Value)
    }

    /// `nz-number`: 1 to 2^32-1, no leading zero.
    fn nz_number(&mut self) -> Option<u32> {
        if !self.peek().is_some_and(|b| (b'1'..=b'9').contains(&b)) {
            return None;
        }
        self.number_u32()
    }

    /// `number`: digits, at most 2^32-1.
    fn number_u32(&mut self) -> Option<u32> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        decimal(digits)
    }

    /// A size for LARGER and SMALLER: any number that fits 64 bits.
    fn number_u64(&mut self, what: &str) -> R<u64> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err(format!("Invalid {what}"));
        }
        let n = digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
        let n = n.ok_or_else(|| format!("{} too large", capitalized(what)))?;
        self.delimited(what)?;
        Ok(n)
    }

    // Strings.

    /// A space, then a mailbox name.
    fn mailbox_arg(&mut self, what: &str) -> R<String> {
        self.sp(what)?;
        let name = self.astring(what)?;
        utf8(name, what)
    }

    /// A mailbox name (`mailbox`: an astring; INBOX is not special here).
    fn mailbox(&mut self) -> R<String> {
        let name = self.astring("mailbox reference")?;
        utf8(name, "mailbox reference")
    }

    /// A LIST pattern: an atom that may also hold `%`, `*` and `]`, or a
    /// string.
    fn list_mailbox(&mut self) -> R<String> {
        let what = "mailbox pattern";
        let bytes = match self.peek() {
            Some(b'"' | b'{') => self.string(what)?,
            _ => {
                let s = self.take_while(|b| is_atom_char(b) || matches!(b, b'%' | b'*' | b']'));
                if s.is_empty() {
                    return Err(self.missing_or_invalid(what));
                }
                self.delimited(what)?;
                Cow::Borrowed(s)
            }
        };
        utf8(bytes, what)
    }

    /// `astring`: atom characters and `]`, or a string.
    fn astring(&mut self, what: &str) -> R<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(what),
            _ => {
                let s = self.take_while(|b| is_atom_char(b) || b == b']');
                if s.is_empty() {
                    return Err(self.missing_or_invalid(what));
                }
                self.delimited(what)?;
                Ok(Cow::Borrowed(s))
            }
        }
    }

    /// `string`: quoted or literal.
    fn string(&mut self, what: &str) -> R<Cow<'a, [u8]>> {
        let s = match self.peek() {
            Some(b'"') => self.quoted(what)?,
            Some(b'{') => Cow::Borrowed(self.literal(what, false)?),
            _ => return Err(self.missing_or_invalid(what)),
        };
        self.delimited(what)?;
        Ok(s)
    }

    /// `nstring`: NIL or a string.
    fn nstring(&mut self, what: &str) -> R<Option<Cow<'a, [u8]>>> {
        if self.nil() {
            return Ok(None);
        }
        self.string(what).map(Some)
    }

    /// `NIL` as a whole token (any case).
    fn nil(&mut self) -> bool {
        let end = self.pos + 3;
        let is_nil = self.buf.get(self.pos..end).is_some_and(|w| w.eq_ignore_ascii_case(b"NIL"))
            && !self.buf.get(end).is_some_and(|&b| is_atom_char(b));
        if is_nil {
            self.pos = end;
        }
        is_nil
    }

    /// A quoted string, the opening quote next. Borrowed when it has no
    /// escapes.
    fn quoted(&mut self, what: &str) -> R<Cow<'a, [u8]>> {
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let Some(b) = self.peek() else {
                return Err(format!("Unterminated quoted string in {what}"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let escaped = match self.peek() {
                        Some(e @ (b'"' | b'\\')) => e,
                        _ => return Err(format!("Invalid escape in quoted {what}")),
                    };
                    let v = owned.get_or_insert_with(|| self.buf[start..self.pos - 1].to_vec());
                    v.push(escaped);
                    self.pos += 1;
                }
                0 | b'\r' | b'\n' => return Err(format!("Invalid character in quoted {what}")),
                _ => {
                    if let Some(v) = owned.as_mut() {
                        v.push(b);
                    }
                }
            }
        }
        Ok(match owned {
            Some(v) => Cow::Owned(v),
            None => Cow::Borrowed(&self.buf[start..self.pos - 1]),
        })
    }

    /// A literal, `{n}` or `{n+}`, CRLF and `n` bytes, the brace next. NUL
    /// only where `nul_ok` (the APPEND message).
    fn literal(&mut self, what: &str, nul_ok: bool) -> R<&'a [u8]> {
        let bad = || format!("Invalid literal for {what}");
        self.pos += 1;
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err(bad());
        }
        let size = digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
        self.eat(b'+');
        if !self.eat(b'}') || !self.eat(b'\r') || !self.eat(b'\n') {
            return Err(bad());
        }
        let rest = self.buf.len() - self.pos;
        let size = match size.and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n <= rest => n,
            _ => return Err(format!("Literal for {what} is cut short")),
        };
        let data = &self.buf[self.pos..self.pos + size];
        self.pos += size;
        if !nul_ok && data.contains(&0) {
            return Err(format!("NUL in literal for {what}"));
        }
        Ok(data)
    }

    // Tokens.

    /// An atom, then the check that it ends where a token may end.
    fn atom(&mut self, what: &str) -> R<&'a [u8]> {
        let s = self.take_while(is_atom_char);
        if s.is_empty() {
            return Err(self.missing_or_invalid(what));
        }
        self.delimited(what)?;
        Ok(s)
    }

    /// An atom in upper case: command names and other keywords.
    fn keyword(&mut self, what: &str) -> R<String> {
        Ok(String::from_utf8_lossy(self.atom(what)?).to_ascii_uppercase())
    }

    fn keyword_arg(&mut self, what: &str) -> R<String> {
        self.sp(what)?;
        self.keyword(what)
    }

    /// "Missing x" at the end of the command, "Invalid x" elsewhere.
    fn missing_or_invalid(&self, what: &str) -> String {
        match self.peek() {
            None => format!("Missing {what}"),
            Some(b')') => "Unbalanced parentheses".into(),
            Some(_) => format!("Invalid {what}"),
        }
    }

    /// A token may end only at a space, a closing parenthesis, or the end
    /// of the command.
    fn delimited(&self, what: &str) -> R<()> {
        match self.peek() {
            None | Some(b' ' | b')') => Ok(()),
            Some(b) if !(0x20..0x7f).contains(&b) => Err(format!("Invalid character in {what}")),
            Some(_) => Err(format!("Invalid {what}")),
        }
    }

    /// `(item item ...)`, the parenthesis next.
    fn list<T>(&mut self, what: &str, empty_ok: bool, mut item: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        if !self.eat(b'(') {
            return Err(self.missing_or_invalid(what));
        }
        let mut items = Vec::new();
        if self.eat(b')') {
            return if empty_ok { Ok(items) } else { Err(format!("Empty list of {what}")) };
        }
        loop {
            items.push(item(self)?);
            match self.peek() {
                Some(b')') => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(b' ') => {
                    self.pos += 1;
                    if matches!(self.peek(), Some(b' ' | b')')) {
                        return Err(format!("Extra space in {what}"));
                    }
                }
                None => return Err("Unbalanced parentheses".into()),
                Some(_) => return Err(format!("Invalid {what}")),
            }
        }
    }

    /// The space before an argument.
    fn sp(&mut self, what: &str) -> R<()> {
        match self.peek() {
            None => Err(format!("Missing {what}")),
            Some(b' ') => {
                self.pos += 1;
                match self.peek() {
                    None => Err(format!("Missing {what}")),
                    Some(b' ') => Err(format!("Extra space before {what}")),
                    Some(_) => Ok(()),
                }
            }
            Some(b')') => Err(format!("Missing {what}")),
            Some(_) => Err(format!("Expected a space before {what}")),
        }
    }

    /// Nothing may follow the last argument.
    fn end(&self) -> R<()> {
        match self.peek() {
            None => Ok(()),
            Some(b')') => Err("Unbalanced parentheses".into()),
            Some(_) => Err("Extra arguments".into()),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, b: u8, message: &str) -> R<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(message.to_string())
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let buf: &'a [u8] = self.buf;
        let start = self.pos;
        let len = buf[start..].iter().position(|&b| !f(b)).unwrap_or(buf.len() - start);
        self.pos += len;
        &buf[start..start + len]
    }
}

/// Several keys are their conjunction; one key is itself.
fn and(mut keys: Vec<SearchKey>) -> SearchKey {
    if keys.len() == 1 {
        if let Some(key) = keys.pop() {
            return key;
        }
    }
    SearchKey::And(keys)
}

/// `base64` of RFC 3501 §9, or `=` for an empty response (RFC 4959 §3).
fn valid_base64(s: &[u8]) -> bool {
    if s == b"=" {
        return true;
    }
    let body = s.strip_suffix(b"==").or_else(|| s.strip_suffix(b"=")).unwrap_or(s);
    s.len() % 4 == 0 && body.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Decimal digits as a u32 (none, or too large: `None`).
fn decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| n.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

const MONTHS: [&[u8]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian
/// calendar. Counts from 1 March of year 0, so that the leap day is the
/// last day of its (shifted) year.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = i64::from((month + 9) % 12);
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(input: &[u8]) -> Result<Command, String> {
        parse(input, &ParseLimits::default()).map(|t| t.command).map_err(|e| e.message)
    }

    /// A sequence set from ranges; 0 stands for `*`.
    fn set(ranges: &[(u32, u32)]) -> SequenceSet {
        let n = |v| if v == 0 { SeqNum::Largest } else { SeqNum::Value(v) };
        SequenceSet(ranges.iter().map(|&(a, b)| SeqRange(n(a), n(b))).collect())
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn mbox(f: fn(String) -> Command, name: &str) -> Command {
        f(name.to_string())
    }

    fn section(peek: bool, part: &[u32], text: Option<SectionText>, partial: Option<(u32, u32)>) -> FetchAttr {
        FetchAttr::Section {
            peek,
            section: Section { part: part.to_vec(), text },
            partial: partial.map(|(origin, count)| Partial { origin, count }),
        }
    }

    fn fetch(set: SequenceSet, items: Vec<FetchAttr>) -> Command {
        Command::Fetch { uid: false, set, items }
    }

    fn search(key: SearchKey) -> Command {
        Command::Search { uid: false, charset: None, key }
    }

    fn list(selection: &[&str], reference: &str, patterns: &[&str], returns: &[&str]) -> Command {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Command::List { selection: v(selection), reference: s(reference), patterns: v(patterns), returns: v(returns) }
    }

    fn store(mode: StoreMode, silent: bool, flags: Vec<Flag>) -> Command {
        Command::Store { uid: false, set: set(&[(1, 1)]), mode, silent, flags }
    }

    #[test]
    fn commands() {
        use Command as C;
        use FetchAttr as F;
        use SearchKey as K;
        let select = |m: String| C::Select { mailbox: m };
        let fast = vec![F::Flags, F::InternalDate, F::Rfc822Size];
        let cases: Vec<(&[u8], Command)> = vec![
            // Any state.
            (b"a CAPABILITY", C::Capability),
            (b"a capability", C::Capability),
            (b"A001 NoOp", C::Noop),
            (b"a LOGOUT", C::Logout),
            (b"a ID NIL", C::Id(None)),
            (b"a id nil", C::Id(None)),
            (b"a ID ()", C::Id(Some(vec![]))),
            (
                b"a ID (\"name\" \"sodr\" \"version\" NIL \"os\" {5}\r\nLinux)",
                C::Id(Some(vec![(s("name"), Some(s("sodr"))), (s("version"), None), (s("os"), Some(s("Linux")))])),
            ),
            // Not authenticated.
            (b"a STARTTLS", C::StartTls),
            (b"a AUTHENTICATE PLAIN", C::Authenticate { mechanism: s("PLAIN"), initial: None }),
            (
                b"a authenticate plain AGFsaWNlAHNlY3JldA==",
                C::Authenticate { mechanism: s("PLAIN"), initial: Some(s("AGFsaWNlAHNlY3JldA==")) },
            ),
            (b"a AUTHENTICATE PLAIN =", C::Authenticate { mechanism: s("PLAIN"), initial: Some(s("=")) }),
            (b"a LOGIN alice secret", C::Login { user: s("alice"), password: Secret(b"secret".to_vec()) }),
            (
                b"a LOGIN \"al ice\" \"p\\\"w\\\\d\"",
                C::Login { user: s("al ice"), password: Secret(b"p\"w\\d".to_vec()) },
            ),
            (
                b"a LOGIN {5}\r\nalice {6+}\r\n\xffs\r\ncr",
                C::Login { user: s("alice"), password: Secret(b"\xffs\r\ncr".to_vec()) },
            ),
            (b"a LOGIN ali]ce x", C::Login { user: s("ali]ce"), password: Secret(b"x".to_vec()) }),
            // Authenticated.
            (b"a SELECT INBOX", mbox(select, "INBOX")),
            (b"a select inbox", mbox(select, "inbox")),
            (b"a SELECT \"Sent Items\"", mbox(select, "Sent Items")),
            (b"a SELECT \"Gr\xc3\xbc\xc3\x9fe\"", mbox(select, "Grüße")),
            (b"a SELECT &AMQ-t", mbox(select, "&AMQ-t")),
            (b"a SELECT \"\"", mbox(select, "")),
            (b"a SELECT {3}\r\na b", mbox(select, "a b")),
            (b"a EXAMINE Archive", C::Examine { mailbox: s("Archive") }),
            (b"a CREATE a/b", C::Create { mailbox: s("a/b") }),
            (b"a DELETE a/b", C::Delete { mailbox: s("a/b") }),
            (b"a RENAME old \"new one\"", C::Rename { from: s("old"), to: s("new one") }),
            (b"a SUBSCRIBE x", C::Subscribe { mailbox: s("x") }),
            (b"a UNSUBSCRIBE x", C::Unsubscribe { mailbox: s("x") }),
            (b"a LIST \"\" *", list(&[], "", &["*"], &[])),
            (b"a LIST \"\" %", list(&[], "", &["%"], &[])),
            (b"a LIST ~/Mail/ %/a*]", list(&[], "~/Mail/", &["%/a*]"], &[])),
            (b"a LIST \"\" \"\"", list(&[], "", &[""], &[])),
            (b"a LIST (SPECIAL-USE) \"\" \"*\"", list(&["SPECIAL-USE"], "", &["*"], &[])),
            (b"a LIST \"\" \"*\" RETURN (SPECIAL-USE)", list(&[], "", &["*"], &["SPECIAL-USE"])),
            (b"a LIST \"\" (\"a\" \"b\")", list(&[], "", &["a", "b"], &[])),
            (
                b"a list (subscribed recursivematch) \"\" (INBOX %) return (children special-use)",
                list(&["SUBSCRIBED", "RECURSIVEMATCH"], "", &["INBOX", "%"], &["CHILDREN", "SPECIAL-USE"]),
            ),
            (b"a LIST () \"\" % RETURN ()", list(&[], "", &["%"], &[])),
            (b"a LSUB \"\" *", C::Lsub { reference: s(""), pattern: s("*") }),
            (b"a LSUB news. comp.mail.*", C::Lsub { reference: s("news."), pattern: s("comp.mail.*") }),
            (
                b"a STATUS INBOX (MESSAGES recent UIDNEXT UIDVALIDITY UNSEEN)",
                C::Status {
                    mailbox: s("INBOX"),
                    items: vec![
                        StatusItem::Messages,
                        StatusItem::Recent,
                        StatusItem::UidNext,
                        StatusItem::UidValidity,
                        StatusItem::Unseen,
                    ],
                },
            ),
            (
                b"a APPEND INBOX {5}\r\nhello",
                C::Append { mailbox: s("INBOX"), flags: vec![], date: None, message: b"hello".to_vec() },
            ),
            (
                b"a APPEND Drafts (\\Seen \\draft $Label) {7+}\r\nx\0\r\n\xff\r\n",
                C::Append {
                    mailbox: s("Drafts"),
                    flags: vec![Flag::Seen, Flag::Draft, Flag::Keyword(s("$Label"))],
                    date: None,
                    message: b"x\0\r\n\xff\r\n".to_vec(),
                },
            ),
            (
                b"a APPEND saved-messages (\\Seen) \"17-Jul-1996 02:44:25 -0700\" {0}\r\n",
                C::Append {
                    mailbox: s("saved-messages"),
                    flags: vec![Flag::Seen],
                    date: Some(DateTime { epoch: 837_596_665, zone_minutes: -420 }),
                    message: vec![],
                },
            ),
            (
                b"a APPEND INBOX () \" 1-Jan-2020 00:00:00 +0000\" {1}\r\nx",
                C::Append {
                    mailbox: s("INBOX"),
                    flags: vec![],
                    date: Some(DateTime { epoch: 1_577_836_800, zone_minutes: 0 }),
                    message: b"x".to_vec(),
                },
            ),
            (
                b"a APPEND INBOX \"05-mar-2024 12:00:00 +0530\" {1}\r\nx",
                C::Append {
                    mailbox: s("INBOX"),
                    flags: vec![],
                    date: Some(DateTime { epoch: 1_709_620_200, zone_minutes: 330 }),
                    message: b"x".to_vec(),
                },
            ),
            (b"a NAMESPACE", C::Namespace),
            (b"a ENABLE CONDSTORE utf8=accept", C::Enable(vec![s("CONDSTORE"), s("utf8=accept")])),
            (b"a IDLE", C::Idle),
            // Selected.
            (b"a CHECK", C::Check),
            (b"a CLOSE", C::Close),
            (b"a UNSELECT", C::Unselect),
            (b"a EXPUNGE", C::Expunge),
            (b"a UID EXPUNGE 1:5,7", C::UidExpunge(set(&[(1, 5), (7, 7)]))),
            (b"a uid expunge *", C::UidExpunge(set(&[(0, 0)]))),
            // Sequence sets.
            (b"a FETCH 1 FLAGS", fetch(set(&[(1, 1)]), vec![F::Flags])),
            (b"a FETCH 5:1 FLAGS", fetch(set(&[(5, 1)]), vec![F::Flags])),
            (b"a FETCH * FLAGS", fetch(set(&[(0, 0)]), vec![F::Flags])),
            (b"a FETCH 3:* FLAGS", fetch(set(&[(3, 0)]), vec![F::Flags])),
            (b"a FETCH 1,3:4,* FLAGS", fetch(set(&[(1, 1), (3, 4), (0, 0)]), vec![F::Flags])),
            (b"a FETCH 4294967295 FLAGS", fetch(set(&[(u32::MAX, u32::MAX)]), vec![F::Flags])),
            // FETCH items.
            (b"a FETCH 1 FAST", fetch(set(&[(1, 1)]), fast.clone())),
            (b"a FETCH 1 all", fetch(set(&[(1, 1)]), [&fast[..], &[F::Envelope]].concat())),
            (b"a FETCH 1 FULL", fetch(set(&[(1, 1)]), [&fast[..], &[F::Envelope, F::Body]].concat())),
            (
                b"a FETCH 1:* (FLAGS UID ENVELOPE INTERNALDATE RFC822.SIZE BODYSTRUCTURE BODY)",
                fetch(
                    set(&[(1, 0)]),
                    vec![F::Flags, F::Uid, F::Envelope, F::InternalDate, F::Rfc822Size, F::BodyStructure, F::Body],
                ),
            ),
            (
                b"a FETCH 1 (rfc822 RFC822.HEADER RFC822.TEXT)",
                fetch(set(&[(1, 1)]), vec![F::Rfc822, F::Rfc822Header, F::Rfc822Text]),
            ),
            (b"a FETCH 1 BODY[]", fetch(set(&[(1, 1)]), vec![section(false, &[], None, None)])),
            (b"a FETCH 1 body.peek[]<0.1024>", fetch(set(&[(1, 1)]), vec![section(true, &[], None, Some((0, 1024)))])),
            (
                b"a FETCH 1 (BODY[HEADER] BODY[TEXT] BODY.PEEK[header.fields (From \"To\" x-y)])",
                fetch(
                    set(&[(1, 1)]),
                    vec![
                        section(false, &[], Some(SectionText::Header), None),
                        section(false, &[], Some(SectionText::Text), None),
                        section(true, &[], Some(SectionText::HeaderFields(vec![s("From"), s("To"), s("x-y")])), None),
                    ],
                ),
            ),
            (
                b"a FETCH 1 BODY[HEADER.FIELDS.NOT (Received)]<10.20>",
                fetch(
                    set(&[(1, 1)]),
                    vec![section(false, &[], Some(SectionText::HeaderFieldsNot(vec![s("Received")])), Some((10, 20)))],
                ),
            ),
            (
                b"a FETCH 1 (BODY[1.2.3] BODY[1.2.MIME] BODY[1.HEADER] BODY[1.TEXT] BODY[2.HEADER.FIELDS (A)])",
                fetch(
                    set(&[(1, 1)]),
                    vec![
                        section(false, &[1, 2, 3], None, None),
                        section(false, &[1, 2], Some(SectionText::Mime), None),
                        section(false, &[1], Some(SectionText::Header), None),
                        section(false, &[1], Some(SectionText::Text), None),
                        section(false, &[2], Some(SectionText::HeaderFields(vec![s("A")])), None),
                    ],
                ),
            ),
            // STORE.
            (b"a STORE 1 +FLAGS (\\Seen)", store(StoreMode::Add, false, vec![Flag::Seen])),
            (
                b"a STORE 1 -FLAGS.SILENT \\Deleted \\FLAGGED",
                store(StoreMode::Remove, true, vec![Flag::Deleted, Flag::Flagged]),
            ),
            (b"a STORE 1 FLAGS ()", store(StoreMode::Replace, false, vec![])),
            (
                b"a store 1 flags.silent ($Junk \\Answered \\Recent \\Junk)",
                store(
                    StoreMode::Replace,
                    true,
                    vec![Flag::Keyword(s("$Junk")), Flag::Answered, Flag::Recent, Flag::Extension(s("Junk"))],
                ),
            ),
            (b"a STORE 1 +FLAGS.SILENT NonJunk", store(StoreMode::Add, true, vec![Flag::Keyword(s("NonJunk"))])),
            // COPY, MOVE and UID.
            (b"a COPY 1:3 Trash", C::Copy { uid: false, set: set(&[(1, 3)]), mailbox: s("Trash") }),
            (b"a UID COPY 10 \"Old Mail\"", C::Copy { uid: true, set: set(&[(10, 10)]), mailbox: s("Old Mail") }),
            (b"a MOVE 2 Junk", C::Move { uid: false, set: set(&[(2, 2)]), mailbox: s("Junk") }),
            (b"a uid move 2,4 Junk", C::Move { uid: true, set: set(&[(2, 2), (4, 4)]), mailbox: s("Junk") }),
            (b"a UID FETCH 1:* (FLAGS)", C::Fetch { uid: true, set: set(&[(1, 0)]), items: vec![F::Flags] }),
            (
                b"a UID STORE 7 +FLAGS (\\Seen)",
                C::Store {
                    uid: true,
                    set: set(&[(7, 7)]),
                    mode: StoreMode::Add,
                    silent: false,
                    flags: vec![Flag::Seen],
                },
            ),
            // SEARCH.
            (b"a SEARCH ALL", search(K::All)),
            (b"a UID SEARCH UID 1:*", C::Search { uid: true, charset: None, key: K::Uid(set(&[(1, 0)])) }),
            (
                b"a SEARCH CHARSET UTF-8 TEXT \"Gr\xc3\xbc\xc3\x9fe\"",
                C::Search { uid: false, charset: Some(s("UTF-8")), key: K::Text(s("Grüße")) },
            ),
            (
                b"a SEARCH charset us-ascii SUBJECT {5}\r\nhello",
                C::Search { uid: false, charset: Some(s("us-ascii")), key: K::Subject(s("hello")) },
            ),
            (b"a SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"", {
                search(K::And(vec![K::Flagged, K::Since(Date(8797)), K::Not(Box::new(K::From(s("Smith"))))]))
            }),
            (b"a SEARCH (SEEN)", search(K::Seen)),
            (b"a SEARCH 1:5 (OR SEEN (FLAGGED DELETED))", {
                search(K::And(vec![
                    K::Sequence(set(&[(1, 5)])),
                    K::Or(Box::new(K::Seen), Box::new(K::And(vec![K::Flagged, K::Deleted]))),
                ]))
            }),
            (
                b"a SEARCH ANSWERED BCC b BODY c CC d DELETED DRAFT FLAGGED FROM e HEADER X-Y f KEYWORD $k \
                  LARGER 18446744073709551615 NEW OLD RECENT SEEN SMALLER 10 SUBJECT g TEXT h TO i \
                  UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNKEYWORD $j UNSEEN",
                search(K::And(vec![
                    K::Answered,
                    K::Bcc(s("b")),
                    K::Body(s("c")),
                    K::Cc(s("d")),
                    K::Deleted,
                    K::Draft,
                    K::Flagged,
                    K::From(s("e")),
                    K::Header(s("X-Y"), s("f")),
                    K::Keyword(s("$k")),
                    K::Larger(u64::MAX),
                    K::New,
                    K::Old,
                    K::Recent,
                    K::Seen,
                    K::Smaller(10),
                    K::Subject(s("g")),
                    K::Text(s("h")),
                    K::To(s("i")),
                    K::Unanswered,
                    K::Undeleted,
                    K::Undraft,
                    K::Unflagged,
                    K::Unkeyword(s("$j")),
                    K::Unseen,
                ])),
            ),
            (
                b"a SEARCH BEFORE 01-Jan-2020 ON \"1-jan-2020\" SINCE 31-Dec-1969 SENTBEFORE 29-Feb-2000 \
                  SENTON 1-Jan-0001 SENTSINCE \"01-JAN-2020\" HEADER Subject \"\"",
                search(K::And(vec![
                    K::Before(Date(18262)),
                    K::On(Date(18262)),
                    K::Since(Date(-1)),
                    K::SentBefore(Date(11016)),
                    K::SentOn(Date(-719_162)),
                    K::SentSince(Date(18262)),
                    K::Header(s("Subject"), s("")),
                ])),
            ),
        ];
        let failed: Vec<String> = cases
            .into_iter()
            .filter(|(input, want)| p(input).as_ref() != Ok(want))
            .map(|(input, want)| format!("{:?}: want {want:?}, got {:?}", String::from_utf8_lossy(input), p(input)))
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn errors() {
        let deep_not = format!("a SEARCH {}ALL", "NOT ".repeat(33));
        let deep_paren = format!("a SEARCH {}ALL{}", "(".repeat(33), ")".repeat(33));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "Empty command line"),
            (b"a", "Missing command"),
            (b"a ", "Missing command"),
            (b" NOOP", "Missing tag"),
            (b"+a NOOP", "Invalid tag"),
            (b"a{ NOOP", "Invalid tag"),
            (b"* NOOP", "Invalid tag"),
            (b"a  NOOP", "Extra space before command"),
            (b"a FOO", "Unknown command FOO"),
            (b"a fetch2 1 FLAGS", "Unknown command FETCH2"),
            (b"a UID FOO 1", "Unknown command UID FOO"),
            (b"a UID NOOP", "Unknown command UID NOOP"),
            (b"a UID", "Missing command after UID"),
            (b"a NOOP x", "Extra arguments"),
            (b"a NOOP ", "Extra arguments"),
            (b"a CAPABILITY\0", "Invalid character in command"),
            (b"a SELECT", "Missing mailbox name"),
            (b"a SELECT ", "Missing mailbox name"),
            (b"a SELECT  INBOX", "Extra space before mailbox name"),
            (b"a SELECT INBOX x", "Extra arguments"),
            (b"a SELECT INBOX ", "Extra arguments"),
            (b"a SELECT Gr\xc3\xbc\xc3\x9fe", "Invalid character in mailbox name"),
            (b"a SELECT \"\xff\"", "Invalid UTF-8 in mailbox name"),
            (b"a SELECT \"a\0b\"", "Invalid character in quoted mailbox name"),
            (b"a SELECT \"a\rb\"", "Invalid character in quoted mailbox name"),
            (b"a SELECT \"a\\bc\"", "Invalid escape in quoted mailbox name"),
            (b"a SELECT \"abc", "Unterminated quoted string in mailbox name"),
            (b"a SELECT \"a\"b", "Invalid mailbox name"),
            (b"a SELECT {3}\r\na\0b", "NUL in literal for mailbox name"),
            (b"a SELECT {5}\r\nabc", "Literal for mailbox name is cut short"),
            (b"a SELECT {99999999999999999999999}\r\nabc", "Literal for mailbox name is cut short"),
            (b"a SELECT {3}abc", "Invalid literal for mailbox name"),
            (b"a SELECT {3}\nabc", "Invalid literal for mailbox name"),
            (b"a SELECT {}\r\n", "Invalid literal for mailbox name"),
            (b"a SELECT ~{3}\r\nabc", "Invalid mailbox name"),
            (b"a SELECT (x)", "Invalid mailbox name"),
            (b"a SELECT )", "Unbalanced parentheses"),
            (b"a RENAME a", "Missing new mailbox name"),
            (b"a LOGIN alice", "Missing password"),
            (b"a LOGIN alice secret extra", "Extra arguments"),
            (b"a LOGIN \"\xc3\" x", "Invalid UTF-8 in user name"),
            (b"a AUTHENTICATE", "Missing mechanism"),
            (b"a AUTHENTICATE PLAIN abc", "Invalid base64 in initial response"),
            (b"a AUTHENTICATE PLAIN a=bc", "Invalid base64 in initial response"),
            (b"a AUTHENTICATE PLAIN ====", "Invalid base64 in initial response"),
            (b"a ID", "Missing ID parameters"),
            (b"a ID (\"a\")", "Missing ID value"),
            (b"a ID (a b)", "Invalid ID field name"),
            (b"a ID (\"a\" \"b\"", "Unbalanced parentheses"),
            (b"a ID (\"a\" \"b\" )", "Extra space in ID parameters"),
            (b"a ENABLE", "Missing capability name"),
            (b"a LIST \"\"", "Missing mailbox pattern"),
            (b"a LIST \"\" * x", "Extra arguments"),
            (b"a LIST \"\" * RETURN", "Missing LIST return options"),
            (b"a LIST \"\" ()", "Empty list of mailbox patterns"),
            (b"a LIST (SPECIAL-USE \"\" *", "Invalid LIST option"),
            (b"a LSUB \"\"", "Missing mailbox pattern"),
            (b"a STATUS INBOX", "Missing status items"),
            (b"a STATUS INBOX ()", "Empty list of status items"),
            (b"a STATUS INBOX (MESSAGES SIZE)", "Unknown status item SIZE"),
            (b"a STATUS INBOX MESSAGES", "Invalid status items"),
            (b"a APPEND INBOX", "Missing message"),
            (b"a APPEND INBOX \"hello\"", "Invalid date-time"),
            (b"a APPEND INBOX hello", "The message must be a literal"),
            (b"a APPEND INBOX (\\Seen)", "Missing message"),
            (b"a APPEND INBOX (\\Seen {1}\r\nx", "Invalid flag"),
            (b"a APPEND INBOX \"31-Apr-2020 00:00:00 +0000\" {1}\r\nx", "Invalid date-time"),
            (b"a APPEND INBOX \"1-Jan-2020 24:00:00 +0000\" {1}\r\nx", "Invalid date-time"),
            (b"a APPEND INBOX \"1-Jan-2020 00:00:00 0000\" {1}\r\nx", "Invalid date-time"),
            (b"a APPEND INBOX \"1-Jan-2020 00:00:00 +0060\" {1}\r\nx", "Invalid date-time"),
            (b"a APPEND INBOX \"1-Jan-2020 0:00:00 +0000\" {1}\r\nx", "Invalid date-time"),
            (b"a APPEND INBOX {1}\r\nxy", "Extra arguments"),
            (b"a APPEND INBOX {2}\r\nx", "Literal for message is cut short"),
            (b"a FETCH", "Missing sequence set"),
            (b"a FETCH 1", "Missing fetch items"),
            (b"a FETCH 0 FLAGS", "Invalid sequence set"),
            (b"a FETCH 1:0 FLAGS", "Invalid sequence set"),
            (b"a FETCH 01 FLAGS", "Invalid sequence set"),
            (b"a FETCH 4294967296 FLAGS", "Invalid sequence set"),
            (b"a FETCH 1,,2 FLAGS", "Invalid sequence set"),
            (b"a FETCH 1, FLAGS", "Invalid sequence set"),
            (b"a FETCH 1: FLAGS", "Invalid sequence set"),
            (b"a FETCH 1x FLAGS", "Invalid sequence set"),
            (b"a FETCH -1 FLAGS", "Invalid sequence set"),
            (b"a FETCH $ FLAGS", "Invalid sequence set"),
            (b"a FETCH 1 FOO", "Unknown fetch item FOO"),
            (b"a FETCH 1 ()", "Empty list of fetch items"),
            (b"a FETCH 1 (FLAGS", "Unbalanced parentheses"),
            (b"a FETCH 1 (FLAGS))", "Unbalanced parentheses"),
            (b"a FETCH 1 (FLAGS  UID)", "Extra space in fetch items"),
            (b"a FETCH 1 (ALL)", "Unknown fetch item ALL"),
            (b"a FETCH 1 ALL FLAGS", "Extra arguments"),
            (b"a FETCH 1 FLAGS[", "Invalid fetch item"),
            (b"a FETCH 1 BODY.PEEK", "BODY.PEEK needs a section"),
            (b"a FETCH 1 BODY[MIME]", "MIME needs a part number"),
            (b"a FETCH 1 BODY[0]", "Invalid section part number"),
            (b"a FETCH 1 BODY[1.0]", "Invalid section part number"),
            (b"a FETCH 1 BODY[1.]", "Invalid section"),
            (b"a FETCH 1 BODY[FOO]", "Invalid section"),
            (b"a FETCH 1 BODY[TEXT", "Invalid section"),
            (b"a FETCH 1 BODY[HEADER.FIELDS]", "Expected a space before header field names"),
            (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "Empty list of header field names"),
            (b"a FETCH 1 BODY[]<0.0>", "Invalid partial range"),
            (b"a FETCH 1 BODY[]<0>", "Invalid partial range"),
            (b"a FETCH 1 BODY[]<1.2", "Invalid partial range"),
            (b"a STORE 1 FLAGS", "Missing flags"),
            (b"a STORE 1 XFLAGS (\\Seen)", "Unknown store item XFLAGS"),
            (b"a STORE 1 +FLAGS (\\Seen", "Unbalanced parentheses"),
            (b"a STORE 1 +FLAGS (\\*)", "Invalid flag"),
            (b"a STORE 1 +FLAGS \\Seen  \\Deleted", "Extra space before flag"),
            (b"a STORE 1 +FLAGS Gr\xc3\xbcn", "Invalid character in flag"),
            (b"a COPY 1", "Missing mailbox name"),
            (b"a MOVE * ", "Missing mailbox name"),
            (b"a UID EXPUNGE", "Missing sequence set"),
            (b"a SEARCH", "Missing search criteria"),
            (b"a SEARCH FOO", "Unknown search key FOO"),
            (b"a SEARCH ALL ", "Missing search key"),
            (b"a SEARCH (ALL", "Unbalanced parentheses"),
            (b"a SEARCH ALL)", "Unbalanced parentheses"),
            (b"a SEARCH ()", "Empty list of search keys"),
            (b"a SEARCH OR SEEN", "Missing second search key after OR"),
            (b"a SEARCH NOT", "Missing search key after NOT"),
            (b"a SEARCH FROM", "Missing search string"),
            (b"a SEARCH FROM \"\xff\"", "Invalid UTF-8 in search string"),
            (b"a SEARCH HEADER Subject", "Missing search string"),
            (b"a SEARCH SINCE 31-Feb-2020", "Invalid date"),
            (b"a SEARCH SINCE 29-Feb-2100", "Invalid date"),
            (b"a SEARCH SINCE 0-Feb-2020", "Invalid date"),
            (b"a SEARCH SINCE 1-Foo-2020", "Invalid date"),
            (b"a SEARCH SINCE 1-Jan-20", "Invalid date"),
            (b"a SEARCH SINCE 1-Jan-20201", "Invalid date"),
            (b"a SEARCH SINCE \"1-Jan-2020", "Invalid date"),
            (b"a SEARCH SINCE 1-Jan-2020x", "Invalid date"),
            (b"a SEARCH LARGER", "Missing size"),
            (b"a SEARCH LARGER x", "Invalid size"),
            (b"a SEARCH LARGER 18446744073709551616", "Size too large"),
            (b"a SEARCH LARGER 10k", "Invalid size"),
            (b"a SEARCH KEYWORD \\Seen", "Invalid keyword"),
            (b"a SEARCH UID 0", "Invalid sequence set"),
            (b"a SEARCH CHARSET", "Unknown search key CHARSET"),
            (b"a SEARCH CHARSET UTF-8", "Missing search criteria"),
            (deep_not.as_bytes(), "Search keys nested too deeply"),
            (deep_paren.as_bytes(), "Search keys nested too deeply"),
        ];
        let failed: Vec<String> = cases
            .into_iter()
            .filter(|(input, want)| p(input) != Err(want.to_string()))
            .map(|(input, want)| format!("{:?}: want {want:?}, got {:?}", String::from_utf8_lossy(input), p(input)))
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn nesting_up_to_the_limit_is_fine() {
        let limits = ParseLimits::default();
        let not = format!("a SEARCH {}ALL", "NOT ".repeat(limits.max_depth));
        assert!(parse(not.as_bytes(), &limits).is_ok());
        let parens = format!("a SEARCH {}ALL{}", "(".repeat(limits.max_depth), ")".repeat(limits.max_depth));
        assert_eq!(p(parens.as_bytes()), Ok(search(SearchKey::All)));
        let ors = format!("a SEARCH {}ALL{}", "OR ALL ".repeat(limits.max_depth), "");
        assert!(parse(ors.as_bytes(), &limits).is_ok());
        let ors = format!("a SEARCH {}ALL", "OR ALL ".repeat(limits.max_depth + 1));
        assert_eq!(p(ors.as_bytes()), Err("Search keys nested too deeply".to_string()));
        // Very deep input fails without using up the stack.
        let deep = format!("a SEARCH {}ALL", "(NOT ".repeat(100_000));
        assert!(parse(deep.as_bytes(), &limits).is_err());
        // A long flat list is not nesting.
        let flat = format!("a SEARCH {}ALL", "SEEN ".repeat(10_000));
        assert!(parse(flat.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn tags() {
        let limits = ParseLimits::default();
        let tagged = parse(b"A.1]x NOOP", &limits).map(|t| t.tag);
        assert_eq!(tagged, Ok(s("A.1]x")));
        for (input, tag) in [
            (&b"a7 FOO"[..], Some("a7")),
            (b"a7", Some("a7")),
            (b"a7 SELECT \"\0\"", Some("a7")),
            (b"+ FOO", None),
            (b"* FOO", None),
            (b"a\xff NOOP", None),
            (b"a\"b NOOP", None),
            (b"", None),
            (b" NOOP", None),
        ] {
            let err = parse(input, &limits).unwrap_err();
            assert_eq!(err.tag.as_deref(), tag, "input {:?}", String::from_utf8_lossy(input));
            assert_eq!(tag_of(input).as_deref(), tag);
        }
    }

    #[test]
    fn secrets_do_not_show() {
        let cmd = parse(b"a LOGIN alice hunter2", &ParseLimits::default()).unwrap();
        assert!(!format!("{cmd:?}").contains("hunter2"));
    }

    #[test]
    fn dates_match_the_calendar() {
        // Every day from 1900 to 2100 is one more than the day before.
        let mut expected = days_from_civil(1900, 1, 1);
        for year in 1900..=2100u32 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(i64::from(year), month, day), expected, "{year}-{month}-{day}");
                    expected += 1;
                }
            }
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    /// Writes a search key the way a client would.
    fn render_key(key: &SearchKey, out: &mut String) {
        use SearchKey as K;
        let date = |d: &Date| {
            // Back from days to a date, by counting (test code, small range).
            let mut days = d.0;
            let mut year = 1970u32;
            loop {
                let len = if days_in_month(year, 2) == 29 { 366 } else { 365 };
                if days < len {
                    break;
                }
                days -= len;
                year += 1;
            }
            let mut month = 1;
            while days >= i64::from(days_in_month(year, month)) {
                days -= i64::from(days_in_month(year, month));
                month += 1;
            }
            format!("{}-{}-{year}", days + 1, String::from_utf8_lossy(MONTHS[month as usize - 1]))
        };
        let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        let text = match key {
            K::All => "ALL".into(),
            K::Seen => "SEEN".into(),
            K::Unseen => "unseen".into(),
            K::Deleted => "Deleted".into(),
            K::From(v) => format!("FROM {}", quoted(v)),
            K::Subject(v) => format!("SUBJECT {{{}}}\r\n{v}", v.len()),
            K::Header(f, v) => format!("HEADER {f} {}", quoted(v)),
            K::Since(d) => format!("SINCE {}", date(d)),
            K::On(d) => format!("ON \"{}\"", date(d)),
            K::Larger(n) => format!("LARGER {n}"),
            K::Keyword(k) => format!("KEYWORD {k}"),
            K::Uid(set) | K::Sequence(set) => {
                let n = |v: &SeqNum| match v {
                    SeqNum::Value(v) => v.to_string(),
                    SeqNum::Largest => "*".into(),
                };
                let ranges: Vec<String> = set
                    .0
                    .iter()
                    .map(|r| if r.0 == r.1 { n(&r.0) } else { format!("{}:{}", n(&r.0), n(&r.1)) })
                    .collect();
                let prefix = if matches!(key, K::Uid(_)) { "UID " } else { "" };
                format!("{prefix}{}", ranges.join(","))
            }
            K::Not(k) => {
                out.push_str("NOT ");
                return render_key(k, out);
            }
            K::Or(a, b) => {
                out.push_str("OR ");
                render_key(a, out);
                out.push(' ');
                return render_key(b, out);
            }
            K::And(keys) => {
                out.push('(');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    render_key(k, out);
                }
                out.push(')');
                return;
            }
            other => unreachable!("not generated: {other:?}"),
        };
        out.push_str(&text);
    }

    fn seq_num() -> impl Strategy<Value = SeqNum> {
        prop_oneof![Just(SeqNum::Largest), (1u32..).prop_map(SeqNum::Value)]
    }

    fn sequence_set() -> impl Strategy<Value = SequenceSet> {
        prop::collection::vec((seq_num(), seq_num()).prop_map(|(a, b)| SeqRange(a, b)), 1..5).prop_map(SequenceSet)
    }

    fn search_key() -> impl Strategy<Value = SearchKey> {
        use SearchKey as K;
        let text = "[ -~\u{e4}\u{4e2d}]{0,12}";
        let leaf = prop_oneof![
            Just(K::All),
            Just(K::Seen),
            Just(K::Unseen),
            Just(K::Deleted),
            text.prop_map(K::From),
            text.prop_map(K::Subject),
            ("[A-Za-z][A-Za-z0-9-]{0,10}", text).prop_map(|(f, v)| K::Header(f, v)),
            (0i64..60_000).prop_map(|d| K::Since(Date(d))),
            (0i64..60_000).prop_map(|d| K::On(Date(d))),
            any::<u64>().prop_map(K::Larger),
            "[$A-Za-z][A-Za-z0-9_]{0,8}".prop_map(K::Keyword),
            sequence_set().prop_map(K::Uid),
            sequence_set().prop_map(K::Sequence),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|k| K::Not(Box::new(k))),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| K::Or(Box::new(a), Box::new(b))),
                prop::collection::vec(inner, 2..4).prop_map(K::And),
            ]
        })
    }

    /// Bytes that look like IMAP often enough to reach deep into the grammar.
    fn imapish() -> impl Strategy<Value = Vec<u8>> {
        const TOKENS: &[&[u8]] = &[
            b"a ",
            b" ",
            b"(",
            b")",
            b"\"",
            b"\\",
            b"[",
            b"]",
            b"<",
            b">",
            b".",
            b"{3}\r\n",
            b"{0+}\r\n",
            b"*",
            b":",
            b",",
            b"1",
            b"0",
            b"UID",
            b"FETCH",
            b"SEARCH",
            b"STORE",
            b"APPEND",
            b"LIST",
            b"BODY",
            b"BODY.PEEK",
            b"HEADER.FIELDS",
            b"MIME",
            b"NOT",
            b"OR",
            b"SINCE",
            b"1-Jan-2020",
            b"\" 1-Jan-2020 00:00:00 +0000\"",
            b"NIL",
            b"\\Seen",
            b"+FLAGS",
            b"\0",
            b"\xc3",
        ];
        let token = prop::sample::select(TOKENS);
        prop::collection::vec(token, 0..40).prop_map(|t: Vec<&[u8]>| t.concat())
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&input, &ParseLimits::default());
        }

        #[test]
        fn never_panics_on_imap_like_input(input in imapish()) {
            if let Ok(t) = parse(&input, &ParseLimits::default()) {
                prop_assert_eq!(Some(t.tag), tag_of(&input));
            }
        }

        #[test]
        fn search_keys_round_trip(key in search_key()) {
            let mut text = String::from("t1 UID SEARCH ");
            // A top-level conjunction is written without parentheses.
            match &key {
                SearchKey::And(keys) => {
                    for (i, k) in keys.iter().enumerate() {
                        if i > 0 {
                            text.push(' ');
                        }
                        render_key(k, &mut text);
                    }
                }
                k => render_key(k, &mut text),
            }
            let parsed = parse(text.as_bytes(), &ParseLimits { max_depth: 64 });
            let want = Command::Search { uid: true, charset: None, key: key.clone() };
            prop_assert_eq!(parsed.map(|t| t.command), Ok(want), "{}", text);
        }
    }
}

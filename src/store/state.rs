//! The mailbox state kept inside the mbox file, as UW-IMAP and Dovecot keep it.
//!
//! - `X-IMAPbase: UIDVALIDITY UIDNEXT keyword...` on the first message
//!   (`X-IMAP:` on a "FOLDER INTERNAL DATA" pseudo-message instead);
//! - `Status:` with `R` (\Seen) and `O` (not \Recent);
//! - `X-Status:` with `A` (\Answered), `D` (\Deleted), `F` (\Flagged), `T` (\Draft);
//! - `X-Keywords:` the message's keywords, space separated;
//! - `X-UID:` the message's UID.
//!
//! These headers, and `Content-Length`, are hidden from clients and are
//! stripped from mail that arrives, so no sender can forge them.

/// System flags of one message (RFC 3501 section 2.3.2), as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    pub const SEEN: Flags = Flags(1);
    pub const ANSWERED: Flags = Flags(2);
    pub const FLAGGED: Flags = Flags(4);
    pub const DELETED: Flags = Flags(8);
    pub const DRAFT: Flags = Flags(16);
    /// Persisted as the absence of `O` in `Status:`: the message has not
    /// been reported to any session yet (RFC 3501 \Recent).
    pub const RECENT: Flags = Flags(32);

    pub const fn empty() -> Flags {
        Flags(0)
    }
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

/// Names of the headers that carry state (compared case-insensitively).
/// `Content-Length` is hidden too: Dovecot writes it, and it would be wrong
/// after any rewrite by another tool.
pub const HIDDEN_HEADERS: [&str; 7] =
    ["X-IMAPbase", "X-IMAP", "X-UID", "Status", "X-Status", "X-Keywords", "Content-Length"];

/// Which state header a header line is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateHeader {
    ImapBase,
    Imap,
    Uid,
    Status,
    XStatus,
    Keywords,
    ContentLength,
}

/// Classifies a header line by its field name. `line` starts at the field name.
pub fn classify(line: &[u8]) -> Option<StateHeader> {
    let colon = memchr::memchr(b':', &line[..line.len().min(20)])?;
    let name = &line[..colon];
    let kind = match name.len() {
        6 if name.eq_ignore_ascii_case(b"Status") => StateHeader::Status,
        5 if name.eq_ignore_ascii_case(b"X-UID") => StateHeader::Uid,
        6 if name.eq_ignore_ascii_case(b"X-IMAP") => StateHeader::Imap,
        8 if name.eq_ignore_ascii_case(b"X-Status") => StateHeader::XStatus,
        10 if name.eq_ignore_ascii_case(b"X-IMAPbase") => StateHeader::ImapBase,
        10 if name.eq_ignore_ascii_case(b"X-Keywords") => StateHeader::Keywords,
        14 if name.eq_ignore_ascii_case(b"Content-Length") => StateHeader::ContentLength,
        _ => return None,
    };
    Some(kind)
}

/// The value of a header line: after the colon, trimmed.
pub fn value(line: &[u8]) -> &[u8] {
    let v = match memchr::memchr(b':', line) {
        Some(c) => &line[c + 1..],
        None => &[][..],
    };
    v.trim_ascii()
}

/// Parses a decimal u32 (for X-UID and X-IMAPbase fields).
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Applies the letters of `Status:` to `flags` (R seen; O old, i.e. not recent).
pub fn apply_status(v: &[u8], flags: &mut Flags) {
    flags.insert(Flags::RECENT);
    for &c in v {
        match c {
            b'R' => flags.insert(Flags::SEEN),
            b'O' => flags.remove(Flags::RECENT),
            _ => {}
        }
    }
}

/// Applies the letters of `X-Status:`.
pub fn apply_xstatus(v: &[u8], flags: &mut Flags) {
    for &c in v {
        match c {
            b'A' => flags.insert(Flags::ANSWERED),
            b'D' => flags.insert(Flags::DELETED),
            b'F' => flags.insert(Flags::FLAGGED),
            b'T' => flags.insert(Flags::DRAFT),
            _ => {}
        }
    }
}

/// The mailbox-wide part: from `X-IMAPbase:` or a pseudo-message's `X-IMAP:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub keywords: Vec<String>,
}

/// Parses `UIDVALIDITY UIDLAST keyword...`. Both UW-IMAP and Dovecot store
/// the last UID given out ("uidlast"); UIDNEXT is one more.
pub fn parse_base(v: &[u8]) -> Option<Base> {
    let mut words = v.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
    let uidvalidity = parse_u32(words.next()?)?;
    let uidlast = parse_u32(words.next()?)?;
    let keywords =
        words.filter_map(|w| std::str::from_utf8(w).ok()).filter(|w| is_keyword(w)).map(String::from).collect();
    Some(Base { uidvalidity, uidnext: uidlast.saturating_add(1), keywords })
}

/// Keywords as IMAP allows them (RFC 3501 `atom`, no `\`): what we accept
/// from files and from clients.
pub fn is_keyword(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 100
        && w.bytes()
            .all(|b| b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']'))
}

/// Splits an `X-Keywords:` value (space or comma separated) into keywords.
pub fn parse_keywords(v: &[u8]) -> impl Iterator<Item = &str> {
    v.split(|&b| b == b' ' || b == b'\t' || b == b',')
        .filter(|w| !w.is_empty())
        .filter_map(|w| std::str::from_utf8(w).ok())
        .filter(|w| is_keyword(w))
}

/// What a message's state block says, ready to be written.
pub struct Block<'a> {
    /// `Some` on the first message of a mailbox without a pseudo-message.
    pub base: Option<&'a Base>,
    pub uid: u32,
    pub flags: Flags,
    pub keywords: &'a [&'a str],
}

/// Space kept after `X-Keywords:` so that most later flag and keyword
/// changes are written in place instead of moving the rest of the file.
pub const PADDING: usize = 40;
/// The first message carries `X-IMAPbase` with the keyword list; it gets
/// more room so that new keywords rarely force a rewrite of the whole file.
pub const BASE_PADDING: usize = 200;

/// Renders a state block. With `fit = Some(n)` the block is padded to
/// exactly `n` bytes, or `None` is returned if it does not fit; with
/// `fit = None` it gets the default padding.
pub fn render(block: &Block<'_>, fit: Option<usize>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    if let Some(base) = block.base {
        // uidlast zero-padded to ten digits, as UW-IMAP does, so that it can
        // be updated in place.
        out.extend_from_slice(
            format!("X-IMAPbase: {} {:010}", base.uidvalidity, base.uidnext.saturating_sub(1)).as_bytes(),
        );
        for k in &base.keywords {
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
        }
        if fit.is_none() {
            out.extend(std::iter::repeat_n(b' ', BASE_PADDING));
        }
        out.push(b'\n');
    }
    render_flags(&mut out, block.flags);
    out.extend_from_slice(b"X-Keywords:");
    for k in block.keywords {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
    }
    let pad_at = out.len();
    out.push(b'\n');
    out.extend_from_slice(format!("X-UID: {}\n", block.uid).as_bytes());
    let target = match fit {
        Some(n) if n < out.len() => return None,
        Some(n) => n,
        None => out.len() + PADDING,
    };
    let pad = target - out.len();
    out.splice(pad_at..pad_at, std::iter::repeat_n(b' ', pad));
    Some(out)
}

/// `Status:` and `X-Status:` lines for `flags`, padded to the widest value
/// (`RO`, `ADFT`) so that any later change fits in place.
pub fn render_flags(out: &mut Vec<u8>, flags: Flags) {
    let mut v = String::from(" ");
    if flags.contains(Flags::SEEN) {
        v.push('R');
    }
    if !flags.contains(Flags::RECENT) {
        v.push('O');
    }
    out.extend_from_slice(format!("Status:{v:<3}\n").as_bytes());
    let mut v = String::from(" ");
    for (f, c) in [(Flags::ANSWERED, 'A'), (Flags::DELETED, 'D'), (Flags::FLAGGED, 'F'), (Flags::DRAFT, 'T')] {
        if flags.contains(f) {
            v.push(c);
        }
    }
    out.extend_from_slice(format!("X-Status:{v:<5}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Option<StateHeader>)] = &[
            (b"X-UID: 7\n", Some(StateHeader::Uid)),
            (b"x-uid:7\n", Some(StateHeader::Uid)),
            (b"Status: RO\n", Some(StateHeader::Status)),
            (b"X-Status: AF\n", Some(StateHeader::XStatus)),
            (b"X-Keywords: a b\n", Some(StateHeader::Keywords)),
            (b"X-IMAPbase: 1 2\n", Some(StateHeader::ImapBase)),
            (b"X-IMAP: 1 2\n", Some(StateHeader::Imap)),
            (b"Content-Length: 5\n", Some(StateHeader::ContentLength)),
            (b"Subject: X-UID: 7\n", None),
            (b"X-UIDx: 7\n", None),
            (b"Statuses: 7\n", None),
            (b"X-UID 7\n", None),
        ];
        for (line, want) in cases {
            assert_eq!(classify(line), *want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn flags_letters() {
        let mut f = Flags::empty();
        apply_status(b"RO", &mut f);
        apply_xstatus(b"ADFT", &mut f);
        assert_eq!(f, Flags(1 | 2 | 4 | 8 | 16));
        let mut g = Flags::empty();
        apply_status(b"", &mut g);
        assert_eq!(g, Flags::RECENT);
    }

    #[test]
    fn base_table() {
        assert_eq!(
            parse_base(b"1700000000 0000000041 Junk $Forwarded"),
            Some(Base { uidvalidity: 1700000000, uidnext: 42, keywords: vec!["Junk".into(), "$Forwarded".into()] })
        );
        assert_eq!(parse_base(b"1700000000"), None);
        assert_eq!(parse_base(b"x 1"), None);
    }

    #[test]
    fn render_pads_and_fits() {
        let base = Base { uidvalidity: 5, uidnext: 10, keywords: vec!["Junk".into()] };
        let kws = ["Junk"];
        let b = Block { base: Some(&base), uid: 9, flags: Flags::SEEN.union(Flags::FLAGGED), keywords: &kws };
        let out = render(&b, None).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("X-IMAPbase: 5 0000000009 Junk   "), "{text}");
        assert!(text.contains("   \nStatus: RO\nX-Status: F   \nX-Keywords: Junk    "), "{text}");
        assert!(text.ends_with(" \nX-UID: 9\n"));
        // A smaller change fits in the same space, exactly.
        let b2 = Block { base: Some(&base), uid: 9, flags: Flags::empty(), keywords: &[] };
        assert_eq!(render(&b2, Some(out.len())).unwrap().len(), out.len());
        // Too much does not.
        assert!(render(&b2, Some(10)).is_none());
    }
}

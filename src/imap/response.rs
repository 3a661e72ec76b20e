//! Writing IMAP strings (RFC 3501 §4.3, §9 `string`, `nstring`,
//! `astring`): an atom where the grammar allows one, a quoted string when
//! the bytes fit one, a literal otherwise.

/// Characters that may appear in an atom (RFC 3501 §9 `ATOM-CHAR`).
pub fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// Whether `s` can go in a quoted string: 7-bit, no CR, LF or NUL
/// (RFC 3501 §9 `QUOTED-CHAR`), and short enough to read as one.
fn quotable(s: &[u8]) -> bool {
    s.len() <= 1024 && s.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80)
}

/// A `string`: quoted if it can be, else a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    if quotable(s) {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// A literal. NUL bytes may not appear in one (RFC 3501 §4.3): they are
/// sent as 0x80, as other servers do, which keeps the length.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'{');
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.extend_from_slice(b"}\r\n");
    let start = out.len();
    out.extend_from_slice(s);
    for b in &mut out[start..] {
        if *b == 0 {
            *b = 0x80;
        }
    }
}

/// An `nstring`: NIL for `None`.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        None => out.extend_from_slice(b"NIL"),
        Some(s) => string(out, s),
    }
}

/// An `astring`: an atom when every byte is an atom character (or `]`,
/// which `ASTRING-CHAR` allows), else a string.
pub fn astring(out: &mut Vec<u8>, s: &[u8]) {
    if !s.is_empty() && s.iter().all(|&b| is_atom_char(b) || b == b']') {
        out.extend_from_slice(s);
    } else {
        string(out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    #[test]
    fn strings() {
        for (input, expected) in [
            (&b"INBOX"[..], "INBOX"),
            (b"", "\"\""),
            (b"a b", "\"a b\""),
            (b"say \"hi\\\"", "\"say \\\"hi\\\\\\\"\""),
            (b"line\r\nbreak", "{11}\r\nline\r\nbreak"),
            ("Grüße".as_bytes(), "{7}\r\nGrüße"),
        ] {
            assert_eq!(w(|o| astring(o, input)), expected);
        }
        assert_eq!(w(|o| nstring(o, None)), "NIL");
        assert_eq!(w(|o| nstring(o, Some(b"x]"))), "\"x]\"");
        assert_eq!(w(|o| literal(o, b"a\0b")), "{3}\r\na\u{80}b".replace('\u{80}', "\u{fffd}"));
    }
}

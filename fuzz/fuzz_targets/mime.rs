//! The MIME structure engine behind FETCH on arbitrary messages: never
//! panics, BODYSTRUCTURE and ENVELOPE stay balanced, and every section it
//! finds lies within what the message can produce.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::imap::command::SectionText;
use postroom::imap::mime;

/// Parentheses outside strings and literals balance.
fn balanced(v: &[u8]) -> bool {
    let (mut depth, mut i) = (0i64, 0usize);
    while i < v.len() {
        match v[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'"' => {
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' => {
                let close = match v[i..].iter().position(|&b| b == b'}') {
                    Some(c) => i + c,
                    None => return false,
                };
                let n: usize = match std::str::from_utf8(&v[i + 1..close]).ok().and_then(|s| s.parse().ok()) {
                    Some(n) => n,
                    None => return false,
                };
                i = close + 2 + n;
            }
            _ => {}
        }
        if depth < 0 {
            return false;
        }
        i += 1;
    }
    depth == 0
}

fuzz_target!(|msg: &[u8]| {
    for ext in [false, true] {
        let mut out = Vec::new();
        mime::body_structure(msg, ext, &mut out);
        assert!(balanced(&out), "{}", String::from_utf8_lossy(&out));
    }
    let mut env = Vec::new();
    mime::envelope(msg, &mut env);
    assert!(balanced(&env), "{}", String::from_utf8_lossy(&env));
    let texts = [None, Some(SectionText::Header), Some(SectionText::Text), Some(SectionText::Mime)];
    for part in [&[][..], &[1], &[2], &[1, 1], &[1, 2, 1]] {
        for t in &texts {
            if let Some(s) = mime::section(msg, part, t.as_ref()) {
                // CRLF-normalised bytes of the message at most double it.
                assert!(s.len() <= 2 * msg.len() + 2);
            }
        }
    }
});

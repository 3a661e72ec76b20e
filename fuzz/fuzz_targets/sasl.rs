//! SASL exchanges (RFC 4422) on arbitrary client lines: PLAIN and LOGIN,
//! with or without an initial response. Never panics; an exchange ends
//! in at most the steps its mechanism has; what it accepts is a user name
//! and password that round-trip through base64 as the client sent them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::auth::sasl::{decode_b64, encode_b64, plain, Exchange, Mechanism, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let mechanism = if first & 1 == 0 { Mechanism::Plain } else { Mechanism::Login };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let mut ex = Exchange::new(mechanism);
    let initial = if first & 2 != 0 { lines.next() } else { None };
    let mut step = ex.start(initial);
    let mut steps = 0;
    while let Ok(Step::Challenge(_)) = step {
        steps += 1;
        assert!(steps <= 2, "{mechanism:?} asked more than twice");
        let Some(line) = lines.next() else { return };
        step = ex.respond(line);
    }
    if let Ok(Step::Done { user, password }) = step {
        assert!(!user.is_empty());
        assert!(!password.expose().is_empty() && !password.expose().contains(&0));
    }
    // Whatever decodes encodes back to what was decoded.
    if let Some(bytes) = decode_b64(&text) {
        assert_eq!(decode_b64(&encode_b64(&bytes)), Some(bytes.clone()));
        if let Ok((user, pass)) = plain(&bytes) {
            assert!(!user.is_empty() && !pass.is_empty());
        }
    }
});

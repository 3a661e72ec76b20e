//! The IMAP framer and parser on arbitrary bytes: neither panics, a
//! command never grows past what the limits allow, and what the parser
//! accepts starts with its tag and the command's name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::imap::frame::{read_command, Limits, MemWire};
use postroom::imap::parse::{parse, tag_of, ParseLimits};

/// Small limits, so that inputs reach them; the bounds before login are
/// the other half of the inputs' (the first byte's top bit picks).
fn frame_limits(first: u8) -> Limits {
    if first & 0x80 == 0 {
        Limits::new(200, 300, 4)
    } else {
        Limits::PRELOGIN
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The first byte says which limits apply and how the rest arrives: in
    // pieces of 1 to 128 bytes.
    let Some((&first, input)) = data.split_first() else { return };
    let limits = frame_limits(first);
    let mut wire = MemWire::chunked(input.chunks(usize::from(first & 0x7f) + 1).map(<[u8]>::to_vec));
    loop {
        match read_command(&mut wire, &limits) {
            Ok(command) => {
                let most = limits.max_literal_total as usize + 2 * limits.max_line + 2 * limits.max_literals;
                assert!(command.len() <= most, "{} bytes", command.len());
                check(&command);
            }
            Err(e) if e.is_recoverable() => {}
            Err(_) => break,
        }
    }
    // Continuation requests are whole lines.
    assert!(wire.sent.is_empty() || wire.sent.ends_with(b"\r\n"));
});

fn check(buf: &[u8]) {
    match parse(buf, &ParseLimits::default()) {
        Ok(tagged) => {
            assert_eq!(Some(&tagged.tag), tag_of(buf).as_ref());
            let name = tagged.command.name().as_bytes();
            let after_tag = &buf[tagged.tag.len() + 1..];
            assert!(after_tag.len() >= name.len() && after_tag[..name.len()].eq_ignore_ascii_case(name));
            assert!(matches!(after_tag.get(name.len()), None | Some(b' ')));
        }
        Err(e) => {
            assert_eq!(e.tag, tag_of(buf));
            assert!(!e.message.is_empty());
        }
    }
}

//! The IMAP framer and parser on arbitrary bytes: neither panics, a
//! command never grows past what the limits allow, and what the parser
//! accepts starts with its tag and the command's name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::imap::frame::{read_command, Limits, MemWire};
use postroom::imap::parse::{parse, tag_of, ParseLimits};

/// Small limits, so that inputs reach them.
const FRAME: Limits = Limits { max_line: 200, max_literal: 300, max_literals: 4 };

fuzz_target!(|data: &[u8]| {
    check(data);
    // The first byte says how the rest arrives: in pieces of 1 to 256 bytes.
    let Some((&piece, input)) = data.split_first() else { return };
    let mut wire = MemWire::chunked(input.chunks(usize::from(piece) + 1).map(<[u8]>::to_vec));
    loop {
        match read_command(&mut wire, &FRAME) {
            Ok(command) => {
                let most = FRAME.max_literal as usize + 2 * FRAME.max_line + 2 * FRAME.max_literals;
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

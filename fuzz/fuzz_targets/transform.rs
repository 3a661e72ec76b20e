//! Stored and served forms: whatever a client appends comes back with
//! every bare LF as CRLF and nothing else changed (state headers aside,
//! which are dropped on purpose).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::store::transform::{stored, Served};
use postroom::store::{state, MboxFormat};

fn crlf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 16);
    for (i, &b) in s.iter().enumerate() {
        if b == b'\n' && (i == 0 || s[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // State headers in the header are dropped on purpose.
    let mut has_state = false;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line == b"\n" || line == b"\r\n" {
            break;
        }
        has_state |= line[0] != b' ' && line[0] != b'\t' && state::classify(line).is_some();
    }
    // CR CR LF is stored as CR LF and cannot be told from CRLF on disk:
    // the one documented loss (foreign mbox files with CRLF line ends must
    // still read right).
    if has_state || data.windows(3).any(|w| w == b"\r\r\n") {
        return;
    }
    let st = stored(data, MboxFormat::Mboxrd);
    let mut out = Vec::new();
    let mut s = Served::new(&mut out, true, true);
    for piece in st.chunks(7) {
        s.push(piece).unwrap();
    }
    s.finish().unwrap();
    assert_eq!(out, crlf(data));
});

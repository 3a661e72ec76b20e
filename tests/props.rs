//! Property tests: whatever the content, a message comes back as it went
//! in, and the indexer never panics or loses bytes on arbitrary files.

mod support;

use std::io::Write;

use postroom::store::{scan, Flags, MboxFormat};
use proptest::prelude::*;
use support::*;

/// Lines that stress mbox: From lines, quoted From lines, CR, NUL, 8-bit.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"From someone@example.org Thu Nov 26 16:01:55 2026".to_vec()),
        Just(b"From ".to_vec()),
        Just(b">From x".to_vec()),
        Just(b">>>From y".to_vec()),
        Just(b"".to_vec()),
        Just(b"Subject: hello".to_vec()),
        Just(b" continued".to_vec()),
        proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n' && *b != b'\r'), 0..40),
    ]
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(line(), 0..12), any::<bool>()).prop_map(|(lines, trailing)| {
        let mut m = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            m.extend_from_slice(l);
            if i + 1 < lines.len() || trailing {
                m.extend_from_slice(b"\r\n");
            }
        }
        // A sender's state headers are dropped on purpose; keep them out.
        m.retain(|_| true);
        m
    })
}

fn has_state_header(m: &[u8]) -> bool {
    let header_end = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(m.len());
    m[..header_end]
        .split(|&b| b == b'\n')
        .any(|l| postroom::store::state::classify(l).is_some() && !l.starts_with(b" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn append_then_read_is_identity(msgs in proptest::collection::vec(message(), 1..6)) {
        let msgs: Vec<Vec<u8>> = msgs.into_iter().filter(|m| !has_state_header(m)).collect();
        let t = Tmp::new();
        let p = t.path("box");
        let mut mb = open(&p);
        for m in &msgs {
            mb.append(m, Flags::empty(), &[], None, "x").unwrap();
        }
        drop(mb);
        let mb = open(&p);
        let got: Vec<Vec<u8>> = contents(&mb).into_iter().map(|(_, b)| b).collect();
        prop_assert_eq!(&got, &msgs);
        for (i, m) in msgs.iter().enumerate() {
            prop_assert_eq!(mb.messages()[i].size, m.len() as u64);
        }
    }

    #[test]
    fn scanner_partitions_any_file(body in proptest::collection::vec(any::<u8>(), 0..2000), seps in proptest::collection::vec(0usize..2000, 0..6)) {
        let mut data = b"From a Thu Nov 26 16:01:55 2026\n".to_vec();
        let mut body = body;
        for s in seps {
            let at = s.min(body.len());
            body.splice(at..at, b"\nFrom b Thu Nov 26 16:01:55 2026\n".iter().copied());
        }
        data.extend_from_slice(&body);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        for format in [MboxFormat::Mboxrd, MboxFormat::Mboxo] {
            let s = scan::scan(&f, 0, data.len() as u64, format).unwrap();
            prop_assert!(!s.messages.is_empty());
            let mut prev_end = 0u64;
            for (i, m) in s.messages.iter().enumerate() {
                prop_assert!(m.from_off >= prev_end);
                prop_assert!(m.from_off < m.hdr_off || m.hdr_off == data.len() as u64);
                prop_assert!(m.hdr_off <= m.body_off && m.body_off <= m.end && m.end <= data.len() as u64);
                prop_assert!(&data[m.from_off as usize..m.from_off as usize + 5] == b"From ");
                if i > 0 {
                    // Only the one separator newline between messages.
                    prop_assert!(m.from_off - prev_end <= 1);
                }
                prev_end = m.end;
            }
            prop_assert!(data.len() as u64 - prev_end <= 1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A scan split across threads finds exactly what one pass finds.
    #[test]
    fn split_scan_equals_one_pass(msgs in proptest::collection::vec(message(), 1..30), threads in 2u64..5, cl_at in any::<u8>()) {
        let mut data = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            data.extend_from_slice(b"From a Thu Nov 26 16:01:55 2026\n");
            let stored = postroom::store::transform::stored(m, MboxFormat::Mboxrd);
            if i == cl_at as usize % msgs.len() {
                // A Dovecot-style message whose Content-Length covers an
                // unquoted From line: a cut inside it must not split it.
                let body = b"x\nFrom b Thu Nov 26 16:01:55 2026\ny\n";
                data.extend_from_slice(format!("Content-Length: {}\n\n", body.len()).as_bytes());
                data.extend_from_slice(body);
            } else {
                data.extend_from_slice(&stored);
            }
            data.push(b'\n');
        }
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let one = scan::scan_sequential(&f, 0, data.len() as u64, MboxFormat::Mboxrd).unwrap();
        let split = scan::scan_with(&f, 0, data.len() as u64, MboxFormat::Mboxrd, threads, 1).unwrap();
        prop_assert_eq!(one.messages, split.messages);
    }
}

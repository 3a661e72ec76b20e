//! The mbox indexer on arbitrary files: it must not panic, the messages it
//! finds must partition the file, every message must read back with the
//! size the index claims, and opening (which writes UIDs into the file)
//! must keep every message's bytes.
#![no_main]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postroom::store::{scan, Mailbox, MboxFormat, Options};

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| std::env::temp_dir().join(format!("postroom-fuzz-mbox-{}", std::process::id())))
}

fn write(data: &[u8]) -> File {
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path()).unwrap();
    f.write_all(data).unwrap();
    f
}

fn memchr_lf(d: &[u8]) -> Option<usize> {
    // The scanner looks a megabyte ahead for the first line end.
    d[..d.len().min(1 << 20)].iter().position(|&b| b == b'\n')
}

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    if !data.starts_with(b"From ") {
        data.splice(0..0, b"From x Thu Nov 26 16:01:55 2026\n".iter().copied());
    }
    let f = write(&data);
    // A first line with no LF but a CR is a file of CR line ends: refused,
    // and the only thing that may be.
    let first_line = &data[..memchr_lf(&data).unwrap_or(data.len())];
    let cr_only = memchr_lf(&data).is_none() && first_line.contains(&b'\r');
    for format in [MboxFormat::Mboxrd, MboxFormat::Mboxo] {
        let s = match scan::scan(&f, 0, data.len() as u64, format) {
            Err(e) if cr_only && e.to_string() == scan::CR_ONLY => return,
            other => other.unwrap(),
        };
        let mut prev = 0u64;
        for m in &s.messages {
            assert!(m.from_off >= prev && m.hdr_off <= m.body_off && m.body_off <= m.end);
            assert!(m.end <= data.len() as u64);
            prev = m.end;
        }
    }
    drop(f);
    let _ = std::fs::remove_file(format!("{}.journal", path().display()));
    let opts = Options { fsync: false, ..Options::default() };
    let Ok(mb) = Mailbox::open(path(), &opts, false) else { return };
    let before: Vec<Vec<u8>> = (0..mb.len()).map(|i| mb.message_bytes(i).unwrap()).collect();
    for (i, b) in before.iter().enumerate() {
        assert_eq!(b.len() as u64, mb.messages()[i].size, "size of message {i}");
    }
    drop(mb);
    let mb = Mailbox::open(path(), &opts, false).unwrap();
    let after: Vec<Vec<u8>> = (0..mb.len()).map(|i| mb.message_bytes(i).unwrap()).collect();
    assert_eq!(before, after, "reopening changed messages");
});

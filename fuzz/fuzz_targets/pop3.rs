//! The POP3 command parser on arbitrary lines: never panics, and what it
//! accepts names one of the commands with arguments that fit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::pop3::command::{parse, Command};

fuzz_target!(|line: &[u8]| {
    if let Ok(cmd) = parse(line) {
        let keyword = String::from_utf8_lossy(line.split(|&b| b == b' ').next().unwrap_or(b"")).to_ascii_uppercase();
        assert_eq!(cmd.name(), keyword);
        match cmd {
            Command::List(Some(n)) | Command::Uidl(Some(n)) | Command::Retr(n) | Command::Dele(n) | Command::Top(n, _) => {
                assert!(n >= 1)
            }
            Command::User(u) => assert!(!u.is_empty() && !u.contains(' ')),
            _ => {}
        }
    }
});

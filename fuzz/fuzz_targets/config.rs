//! Fuzz target: postroom.conf(5) parsing must never panic, whatever the
//! bytes, and every error must name a line of the input (or 0).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postroom::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = Config::parse(&text, Path::new("/etc/postroom/postroom.conf")) {
        let lines = text.split('\n').count();
        for e in errors {
            assert!(e.line <= lines, "{e} is past the end of the input");
        }
    }
});

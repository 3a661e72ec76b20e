//! postroomd(8): the POP3 and IMAP server.
//!
//! Reads the command line, loads postroom.conf(5), and picks a mode: `-n`
//! checks the config; otherwise the server runs standalone, from systemd
//! (LISTEN_FDS), or for one inetd session (`-i`).

use std::path::PathBuf;
use std::process::exit;

use getopts::Options;
use postroom::config::{self, Config, Protocol};
use postroom::net::{self, daemon};

const SYNOPSIS: &str = "usage: postroomd [-dn] [-f config] [-i protocol]";

/// sysexits(3) codes.
const EX_USAGE: i32 = 64;
const EX_CONFIG: i32 = 78;

fn usage() -> ! {
    eprintln!("{SYNOPSIS}");
    exit(EX_USAGE)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options::new();
    opts.optflag("d", "", "debug: log level debug, to stderr");
    opts.optflag("n", "", "check the config file and exit");
    opts.optopt("f", "", "config file", "config");
    opts.optopt("i", "", "serve one session on stdin/stdout", "protocol");
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("postroomd: {e}");
            usage()
        }
    };
    if !m.free.is_empty() {
        usage();
    }
    let inetd = match m.opt_str("i") {
        None => None,
        Some(name) => match Protocol::parse(&name) {
            Some(p) => Some(p),
            None => {
                eprintln!("postroomd: unknown protocol `{name}` (known: imap, imaps, pop3, pop3s, lmtp)");
                usage()
            }
        },
    };
    let path = m.opt_str("f").map_or_else(config::default_path, PathBuf::from);
    let check_only = m.opt_present("n");

    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) if inetd.is_some() && !check_only => {
            // Standard error is the client's connection under inetd.
            net::inetd::config_errors(&errors);
            exit(EX_CONFIG)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            exit(if check_only { 1 } else { EX_CONFIG })
        }
    };
    if check_only {
        exit(0);
    }

    let opts = daemon::Options { debug: m.opt_present("d") };
    exit(match inetd {
        Some(protocol) => net::inetd::run(config, protocol, &opts),
        None => daemon::run(config, &opts),
    })
}

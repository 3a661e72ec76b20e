//! postroom(8): the administration tool.
//!
//! `deliver` is the local delivery agent the MTA runs (exit codes from
//! sysexits(3), which MTAs understand); `check` checks the config file;
//! `passwd` hashes a password for the passwd file; `mailbox` inspects and
//! repairs mailboxes.

use std::path::PathBuf;
use std::process::exit;

use getopts::{Matches, Options};
use postroom::config::{self, Config};

const SYNOPSIS: &str = "usage: postroom deliver [-f config] [-s sender] user ...
       postroom check [-f config]
       postroom passwd [-S scheme]
       postroom mailbox [-f config] status|list|check|repair user [mailbox]";

/// sysexits(3) codes.
const EX_USAGE: i32 = 64;
const EX_CONFIG: i32 = 78;

fn usage() -> ! {
    eprintln!("{SYNOPSIS}");
    exit(EX_USAGE)
}

/// Parses the options of one subcommand; a bad option is a usage error.
fn options(opts: &Options, args: &[String]) -> Matches {
    match opts.parse(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("postroom: {e}");
            usage()
        }
    }
}

/// Loads the config named by `-f`, or the default one; on errors prints
/// them all and exits with `status`.
fn load_config(m: &Matches, status: i32) -> Config {
    let path = m.opt_str("f").map_or_else(config::default_path, PathBuf::from);
    match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            exit(status)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else { usage() };
    let mut opts = Options::new();
    match command.as_str() {
        "deliver" => {
            opts.optopt("f", "", "config file", "config");
            opts.optopt("s", "", "envelope sender", "sender");
            let m = options(&opts, rest);
            if m.free.is_empty() {
                usage();
            }
            let config = load_config(&m, EX_CONFIG);
            let sender = m.opt_str("s");
            exit(postroom::deliver::run(&config, sender.as_deref(), &m.free))
        }
        "check" => {
            opts.optopt("f", "", "config file", "config");
            let m = options(&opts, rest);
            if !m.free.is_empty() {
                usage();
            }
            load_config(&m, 1);
            exit(0)
        }
        "passwd" => {
            opts.optopt("S", "", "hash scheme", "scheme");
            let m = options(&opts, rest);
            if !m.free.is_empty() {
                usage();
            }
            exit(postroom::auth::tool::passwd(m.opt_str("S").as_deref()))
        }
        "mailbox" => {
            opts.optopt("f", "", "config file", "config");
            let m = options(&opts, rest);
            let (action, user, name) = match m.free.as_slice() {
                [a, u] => (a.as_str(), u.as_str(), "INBOX"),
                [a, u, n] => (a.as_str(), u.as_str(), n.as_str()),
                _ => usage(),
            };
            let config = load_config(&m, EX_CONFIG);
            exit(postroom::admin::mailbox(&config, action, user, name, &mut std::io::stdout()))
        }
        _ => usage(),
    }
}

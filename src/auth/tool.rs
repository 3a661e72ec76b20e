//! `postroom passwd [-S scheme]`: hashes a password for the passwd-file.
//!
//! The password is one line on standard input, its line end taken off.
//! From a terminal it is asked for twice, without echo; from a pipe it is
//! read once, so scripts can run `echo "$pw" | postroom passwd`.

use std::io::{self, BufRead, Read, Write};

use super::hash::{self, HashError, Scheme};
use super::sasl::Secret;
use super::MAX_PASSWORD_LEN;

/// sysexits(3) codes.
const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_OSERR: i32 = 71;
const EX_IOERR: i32 = 74;

/// Runs the subcommand with `-S`'s value, printing the hash line on
/// standard output; gives the exit status.
pub fn passwd(scheme: Option<&str>) -> i32 {
    let scheme = match scheme.map(|name| (name, Scheme::from_name(name))) {
        None => hash::DEFAULT_SCHEME,
        Some((_, Some(s))) => s,
        Some((name, None)) => {
            eprintln!("postroom: unknown scheme {name}; schemes: {}", scheme_list());
            return EX_USAGE;
        }
    };
    let password = if is_terminal() { ask_twice() } else { read_password(&mut io::stdin().lock()) };
    let password = match password {
        Ok(p) => p,
        Err((status, message)) => {
            eprintln!("postroom: {message}");
            return status;
        }
    };
    match hash::hash(scheme, password.expose()) {
        Ok(line) => {
            let mut out = io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return EX_IOERR;
            }
            0
        }
        Err(e @ HashError::Random(_)) => {
            eprintln!("postroom: {e}");
            EX_OSERR
        }
        Err(e) => {
            eprintln!("postroom: {e}");
            EX_DATAERR
        }
    }
}

/// The scheme names for messages, the default first.
pub fn scheme_list() -> String {
    let mut names: Vec<&str> = vec![hash::DEFAULT_SCHEME.name()];
    names.extend(Scheme::ALL.iter().filter(|&&s| s != hash::DEFAULT_SCHEME).map(|s| s.name()));
    names.push("CLEAR");
    names.join(" ")
}

/// Reads one password line: the line end (LF or CRLF) is taken off, and an
/// empty or overlong password is refused.
pub fn read_password(input: &mut impl BufRead) -> Result<Secret, (i32, String)> {
    let mut line = Secret(Vec::new());
    let limit = (MAX_PASSWORD_LEN + 2) as u64;
    input.take(limit).read_until(b'\n', &mut line.0).map_err(|e| (EX_IOERR, format!("standard input: {e}")))?;
    if line.0.last() == Some(&b'\n') {
        line.0.pop();
        if line.0.last() == Some(&b'\r') {
            line.0.pop();
        }
    } else if line.0.len() as u64 >= limit {
        return Err((EX_DATAERR, format!("password longer than {MAX_PASSWORD_LEN} bytes")));
    }
    if line.0.is_empty() {
        return Err((EX_DATAERR, "empty password refused".to_string()));
    }
    if line.0.len() > MAX_PASSWORD_LEN {
        return Err((EX_DATAERR, format!("password longer than {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(line)
}

fn is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

fn ask_twice() -> Result<Secret, (i32, String)> {
    let first = ask("Password: ")?;
    let second = ask("Retype password: ")?;
    if first != second {
        return Err((EX_DATAERR, "passwords differ".to_string()));
    }
    Ok(first)
}

/// Prompts on standard error and reads a line from the terminal with echo off.
fn ask(prompt: &str) -> Result<Secret, (i32, String)> {
    eprint!("{prompt}");
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have_termios = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: quiet is a valid termios copied from the terminal's own.
        unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &quiet) };
    }
    let line = read_password(&mut io::stdin().lock());
    if have_termios {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &saved) };
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_table() {
        let long = vec![b'a'; MAX_PASSWORD_LEN];
        let longer = vec![b'a'; MAX_PASSWORD_LEN + 1];
        let with = |mut v: Vec<u8>, end: &[u8]| {
            v.extend_from_slice(end);
            v
        };
        type Want<'a> = Result<&'a [u8], i32>;
        let table: Vec<(Vec<u8>, Want)> = vec![
            (b"secret\n".to_vec(), Ok(b"secret")),
            (b"secret\r\n".to_vec(), Ok(b"secret")),
            (b"secret".to_vec(), Ok(b"secret")),
            (b"secret\nsecond line\n".to_vec(), Ok(b"secret")),
            (b" spaced out \n".to_vec(), Ok(b" spaced out ")),
            (b"\xff\xfe\n".to_vec(), Ok(b"\xff\xfe")),
            (b"\n".to_vec(), Err(EX_DATAERR)),
            (b"\r\n".to_vec(), Err(EX_DATAERR)),
            (b"".to_vec(), Err(EX_DATAERR)),
            (with(long.clone(), b"\r\n"), Ok(&long[..])),
            (long.clone(), Ok(&long[..])),
            (with(longer.clone(), b"\n"), Err(EX_DATAERR)),
            (with(longer.clone(), b"aaaa"), Err(EX_DATAERR)),
        ];
        for (input, want) in table {
            let got = read_password(&mut &input[..]);
            match (got, want) {
                (Ok(s), Ok(w)) => assert_eq!(s.expose(), w, "{input:?}"),
                (Err((status, _)), Err(w)) => assert_eq!(status, w, "{input:?}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn list() {
        let l = scheme_list();
        assert!(l.starts_with(hash::DEFAULT_SCHEME.name()));
        for s in Scheme::ALL {
            assert!(l.contains(s.name()));
        }
    }
}

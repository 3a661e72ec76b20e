//! POP3 commands (RFC 1939 section 5-7, RFC 2449 CAPA, RFC 5034 AUTH,
//! RFC 2595 STLS): one line in, one typed [`Command`] out.
//!
//! Keywords are case-insensitive; arguments are separated by spaces. PASS
//! takes the rest of the line, so passwords may contain spaces.

use std::fmt;

/// A password or SASL response: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(Secret),
    Apop,
    /// AUTH with no mechanism lists the mechanisms (as clients expect from
    /// RFC 1734's AUTH); otherwise mechanism and optional initial response.
    Auth(Option<(String, Option<String>)>),
    Stls,
    Capa,
    Quit,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    Top(u32, u32),
    Uidl(Option<u32>),
}

impl Command {
    /// The keyword, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop => "APOP",
            Command::Auth(_) => "AUTH",
            Command::Stls => "STLS",
            Command::Capa => "CAPA",
            Command::Quit => "QUIT",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
        }
    }
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not a POP3 keyword we know.
    Unknown(String),
    /// A known keyword with bad arguments; the text says what is wrong.
    Syntax(&'static str),
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let kw = String::from_utf8_lossy(keyword).to_ascii_uppercase();
    let args: Vec<&[u8]> = rest.split(|&b| b == b' ').filter(|a| !a.is_empty()).collect();
    let none = |c: Command| if args.is_empty() { Ok(c) } else { Err(ParseError::Syntax("Noise after command")) };
    match kw.as_str() {
        "USER" => match args.as_slice() {
            [name] => text(name).map(Command::User),
            [] => Err(ParseError::Syntax("USER needs a user name")),
            _ => Err(ParseError::Syntax("User names have no spaces")),
        },
        "PASS" => {
            if rest.is_empty() {
                Err(ParseError::Syntax("PASS needs a password"))
            } else {
                Ok(Command::Pass(Secret(rest.to_vec())))
            }
        }
        "APOP" => Ok(Command::Apop),
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth(None)),
            [mech] => Ok(Command::Auth(Some((text(mech)?.to_ascii_uppercase(), None)))),
            [mech, ir] => Ok(Command::Auth(Some((text(mech)?.to_ascii_uppercase(), Some(text(ir)?))))),
            _ => Err(ParseError::Syntax("AUTH takes a mechanism and an initial response")),
        },
        "STLS" => none(Command::Stls),
        "CAPA" => none(Command::Capa),
        "QUIT" => none(Command::Quit),
        "STAT" => none(Command::Stat),
        "NOOP" => none(Command::Noop),
        "RSET" => none(Command::Rset),
        "LIST" => optional_number(&args).map(Command::List),
        "UIDL" => optional_number(&args).map(Command::Uidl),
        "RETR" => one_number(&args).map(Command::Retr),
        "DELE" => one_number(&args).map(Command::Dele),
        "TOP" => match args.as_slice() {
            [n, lines] => Ok(Command::Top(number(n)?, count(lines)?)),
            _ => Err(ParseError::Syntax("TOP needs a message number and a line count")),
        },
        _ => Err(ParseError::Unknown(String::from_utf8_lossy(&keyword[..keyword.len().min(20)]).into_owned())),
    }
}

fn text(a: &[u8]) -> Result<String, ParseError> {
    let s = std::str::from_utf8(a).map_err(|_| ParseError::Syntax("Argument is not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(ParseError::Syntax("Control characters in argument"));
    }
    Ok(s.to_string())
}

/// A message number: 1 to 2^32-1, digits only.
fn number(a: &[u8]) -> Result<u32, ParseError> {
    match count(a) {
        Ok(0) => Err(ParseError::Syntax("Message numbers start at 1")),
        other => other.map_err(|_| ParseError::Syntax("Invalid message number")),
    }
}

fn count(a: &[u8]) -> Result<u32, ParseError> {
    if a.is_empty() || a.len() > 10 || !a.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Syntax("Invalid number"));
    }
    std::str::from_utf8(a).ok().and_then(|s| s.parse().ok()).ok_or(ParseError::Syntax("Number too large"))
}

fn one_number(args: &[&[u8]]) -> Result<u32, ParseError> {
    match args {
        [n] => number(n),
        [] => Err(ParseError::Syntax("Missing message number")),
        _ => Err(ParseError::Syntax("Noise after message number")),
    }
}

fn optional_number(args: &[&[u8]]) -> Result<Option<u32>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => number(n).map(Some),
        _ => Err(ParseError::Syntax("Noise after message number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Command::*;
        let s = |t: &'static str| Err(ParseError::Syntax(t));
        let cases: Vec<(&[u8], Result<Command, ParseError>)> = vec![
            (b"USER alice", Ok(User("alice".into()))),
            (b"user alice", Ok(User("alice".into()))),
            (b"USER", s("USER needs a user name")),
            (b"USER a b", s("User names have no spaces")),
            (b"PASS secret with spaces", Ok(Pass(Secret(b"secret with spaces".to_vec())))),
            (b"PASS", s("PASS needs a password")),
            (b"STAT", Ok(Stat)),
            (b"STAT 1", s("Noise after command")),
            (b"LIST", Ok(List(None))),
            (b"LIST 2", Ok(List(Some(2)))),
            (b"LIST 0", s("Message numbers start at 1")),
            (b"LIST 1 2", s("Noise after message number")),
            (b"LIST x", s("Invalid message number")),
            (b"LIST -1", s("Invalid message number")),
            (b"LIST 99999999999", s("Invalid message number")),
            (b"RETR 1", Ok(Retr(1))),
            (b"RETR", s("Missing message number")),
            (b"RETR 4294967295", Ok(Retr(u32::MAX))),
            (b"RETR 4294967296", s("Invalid message number")),
            (b"DELE 3", Ok(Dele(3))),
            (b"TOP 1 0", Ok(Top(1, 0))),
            (b"TOP 1", s("TOP needs a message number and a line count")),
            (b"TOP 1 x", s("Invalid number")),
            (b"UIDL", Ok(Uidl(None))),
            (b"UIDL 7", Ok(Uidl(Some(7)))),
            (b"NOOP", Ok(Noop)),
            (b"RSET", Ok(Rset)),
            (b"QUIT", Ok(Quit)),
            (b"CAPA", Ok(Capa)),
            (b"STLS", Ok(Stls)),
            (b"AUTH", Ok(Auth(None))),
            (b"AUTH plain", Ok(Auth(Some(("PLAIN".into(), None))))),
            (b"AUTH PLAIN AGFsaWNlAGFsaWNl", Ok(Auth(Some(("PLAIN".into(), Some("AGFsaWNlAGFsaWNl".into())))))),
            (b"APOP alice 0123", Ok(Apop)),
            (b"XYZZY", Err(ParseError::Unknown("XYZZY".into()))),
            (b"", Err(ParseError::Unknown(String::new()))),
            (b"USER al\x01ice", s("Control characters in argument")),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "{}", String::from_utf8_lossy(input));
        }
        assert_eq!(format!("{:?}", Pass(Secret(b"hunter2".to_vec()))), "Pass(********)");
    }

    #[test]
    fn any_bytes_parse_without_panic() {
        let mut x = 1u64;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = parse(&bytes);
        }
    }
}

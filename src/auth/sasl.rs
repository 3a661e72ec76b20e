//! SASL for POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501 §6.2.2,
//! RFC 4959): the PLAIN mechanism (RFC 4616) and LOGIN (the
//! draft-murchison-sasl-login mechanism that Outlook and older clients use).
//!
//! The sessions own the wire: they send each challenge as `+ ` and its
//! base64 ([`encode_b64`]), take `*` as a cancel, and feed every other line
//! to an [`Exchange`]. An exchange ends with the user name and password,
//! which then go to [`Authenticator::login`](super::Authenticator::login).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroize;

/// A password or other secret the client sent. `Debug` shows `********`,
/// and the bytes are wiped when it is dropped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret itself, for checking it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Why a SASL exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// A response that is not base64 (RFC 4648 §4, with padding, no spaces).
    BadBase64,
    /// The message lacks a part, or has a NUL where none may be; says which.
    Malformed(&'static str),
    /// An authorization identity other than the user's own: logging in as
    /// someone else (proxy authorization) is not supported.
    ProxyNotSupported,
    /// The client answered a challenge with `*` (RFC 4422 §3.5).
    Cancelled,
    /// A response after the exchange ended.
    Finished,
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslError::BadBase64 => write!(f, "Invalid base64 data"),
            SaslError::Malformed(what) => write!(f, "Malformed SASL message: {what}"),
            SaslError::ProxyNotSupported => write!(f, "Proxy authorization is not supported"),
            SaslError::Cancelled => write!(f, "Authentication cancelled"),
            SaslError::Finished => write!(f, "Authentication already finished"),
        }
    }
}

impl std::error::Error for SaslError {}

/// Decodes a client response: standard base64 with canonical padding and
/// nothing else. A lone `=` is an empty response (RFC 5034 §4, RFC 4959 §3),
/// as is an empty line.
pub fn decode_b64(text: &str) -> Option<Vec<u8>> {
    if text == "=" {
        return Some(Vec::new());
    }
    STANDARD.decode(text).ok()
}

/// Encodes a server challenge.
pub fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Reads a PLAIN message, `authzid NUL authcid NUL passwd` (RFC 4616 §2),
/// into the user name and password. The authzid must be empty or the user
/// name itself.
pub fn plain(message: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed("expected authzid NUL authcid NUL password"));
    };
    if passwd.contains(&0) {
        return Err(SaslError::Malformed("NUL in the password"));
    }
    if passwd.is_empty() {
        return Err(SaslError::Malformed("empty password"));
    }
    let user = identity(authcid)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::ProxyNotSupported);
    }
    Ok((user, passwd.to_vec()))
}

/// A user name: non-empty UTF-8 (RFC 4616 §2 asks for UTF-8 throughout).
fn identity(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.is_empty() {
        return Err(SaslError::Malformed("empty user name"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::Malformed("user name is not UTF-8"))
}

/// The mechanisms postroom offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// In the order the capability lists give them.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// The mechanism a name stands for, ignoring case (RFC 4422 §3.1).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// What to do after feeding an [`Exchange`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge (base64, after `+ `) and feed the next line.
    Challenge(Vec<u8>),
    /// The client has said who it is: check the password.
    Done { user: String, password: Secret },
}

/// LOGIN's challenges; clients answer them in order and mostly ignore
/// their text.
const LOGIN_USER_PROMPT: &[u8] = b"Username:";
const LOGIN_PASSWORD_PROMPT: &[u8] = b"Password:";

/// One SASL exchange, from the AUTH/AUTHENTICATE command to its outcome.
#[derive(Debug)]
pub struct Exchange {
    mechanism: Mechanism,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    /// PLAIN sent its empty challenge; LOGIN asked for the user name.
    Asked,
    /// LOGIN has the user name and asked for the password.
    LoginPassword(String),
    Finished,
}

impl Exchange {
    pub fn new(mechanism: Mechanism) -> Exchange {
        Exchange { mechanism, state: State::Start }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Starts the exchange with the initial response from the command line,
    /// still in base64 (`=` for an empty one), or `None` when there was none.
    /// LOGIN takes an initial response as the user name, as clients that
    /// send one mean it.
    pub fn start(&mut self, initial: Option<&str>) -> Result<Step, SaslError> {
        if !matches!(self.state, State::Start) {
            return Err(self.finish(SaslError::Finished));
        }
        match initial {
            None => {
                self.state = State::Asked;
                Ok(Step::Challenge(match self.mechanism {
                    Mechanism::Plain => Vec::new(),
                    Mechanism::Login => LOGIN_USER_PROMPT.to_vec(),
                }))
            }
            Some(text) => {
                self.state = State::Asked;
                let bytes = decode_b64(text).ok_or_else(|| self.finish(SaslError::BadBase64))?;
                self.feed(bytes)
            }
        }
    }

    /// Feeds one line the client sent in answer to a challenge.
    pub fn respond(&mut self, line: &str) -> Result<Step, SaslError> {
        if matches!(self.state, State::Start | State::Finished) {
            return Err(self.finish(SaslError::Finished));
        }
        if line == "*" {
            return Err(self.finish(SaslError::Cancelled));
        }
        let bytes = decode_b64(line).ok_or_else(|| self.finish(SaslError::BadBase64))?;
        self.feed(bytes)
    }

    fn feed(&mut self, mut bytes: Vec<u8>) -> Result<Step, SaslError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let result = match (self.mechanism, state) {
            (Mechanism::Plain, State::Asked) => {
                plain(&bytes).map(|(user, password)| Step::Done { user, password: Secret(password) })
            }
            (Mechanism::Login, State::Asked) => {
                let user = if bytes.contains(&0) {
                    Err(SaslError::Malformed("NUL in the user name"))
                } else {
                    identity(&bytes)
                };
                user.map(|u| {
                    self.state = State::LoginPassword(u);
                    Step::Challenge(LOGIN_PASSWORD_PROMPT.to_vec())
                })
            }
            (Mechanism::Login, State::LoginPassword(user)) => {
                if bytes.contains(&0) {
                    Err(SaslError::Malformed("NUL in the password"))
                } else if bytes.is_empty() {
                    Err(SaslError::Malformed("empty password"))
                } else {
                    Ok(Step::Done { user, password: Secret(std::mem::take(&mut bytes)) })
                }
            }
            _ => Err(SaslError::Finished),
        };
        bytes.zeroize();
        result
    }

    fn finish(&mut self, e: SaslError) -> SaslError {
        self.state = State::Finished;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_table() {
        let table: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("=", Some(b"")),
            ("AGFsaWNlAHNlY3JldA==", Some(b"\0alice\0secret")),
            ("dGVzdA==", Some(b"test")),
            ("dGVzdA", None),    // padding left out
            ("dGVzdA=", None),   // padding cut short
            ("dGVzdB==", None),  // bits set past the end
            ("dGVz dA==", None), // a space
            ("dGVzdA==\r", None),
            ("dGVzdA===", None),
            ("==", None),
            ("*", None),
            ("dGV-dA==", None), // URL-safe alphabet
        ];
        for (text, want) in table {
            assert_eq!(decode_b64(text).as_deref(), *want, "{text:?}");
        }
        assert_eq!(encode_b64(b""), "");
        assert_eq!(encode_b64(b"Password:"), "UGFzc3dvcmQ6");
        for n in 0..20u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode_b64(&encode_b64(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn plain_table() {
        use SaslError::*;
        let ok = |u: &str, p: &[u8]| Ok((u.to_string(), p.to_vec()));
        type Want = Result<(String, Vec<u8>), SaslError>;
        let table: &[(&[u8], Want)] = &[
            (b"\0alice\0secret", ok("alice", b"secret")),
            (b"alice\0alice\0secret", ok("alice", b"secret")),
            ("\0j\u{f6}rg\0p\u{e4}ss".as_bytes(), ok("j\u{f6}rg", "p\u{e4}ss".as_bytes())),
            (b"\0alice\0pass word\xff", ok("alice", b"pass word\xff")),
            (b"bob\0alice\0secret", Err(ProxyNotSupported)),
            (b"\0alice\0sec\0ret", Err(Malformed("NUL in the password"))),
            (b"\0alice\0", Err(Malformed("empty password"))),
            (b"\0\0secret", Err(Malformed("empty user name"))),
            (b"\0\xffalice\0secret", Err(Malformed("user name is not UTF-8"))),
            (b"alice\0secret", Err(Malformed("expected authzid NUL authcid NUL password"))),
            (b"alice", Err(Malformed("expected authzid NUL authcid NUL password"))),
            (b"", Err(Malformed("expected authzid NUL authcid NUL password"))),
        ];
        for (message, want) in table {
            assert_eq!(&plain(message), want, "{message:?}");
        }
    }

    fn done(user: &str, password: &[u8]) -> Result<Step, SaslError> {
        Ok(Step::Done { user: user.to_string(), password: Secret(password.to_vec()) })
    }

    #[test]
    fn plain_exchange() {
        let mut x = Exchange::new(Mechanism::Plain);
        assert_eq!(x.start(Some("AGFsaWNlAHNlY3JldA==")), done("alice", b"secret"));
        assert_eq!(x.respond("AGFsaWNlAHNlY3JldA=="), Err(SaslError::Finished));

        let mut x = Exchange::new(Mechanism::Plain);
        assert_eq!(x.start(None), Ok(Step::Challenge(Vec::new())));
        assert_eq!(x.respond("AGFsaWNlAHNlY3JldA=="), done("alice", b"secret"));

        let mut x = Exchange::new(Mechanism::Plain);
        assert_eq!(x.start(Some("=")), Err(SaslError::Malformed("expected authzid NUL authcid NUL password")));

        let mut x = Exchange::new(Mechanism::Plain);
        assert_eq!(x.start(None), Ok(Step::Challenge(Vec::new())));
        assert_eq!(x.respond("*"), Err(SaslError::Cancelled));
        assert_eq!(x.respond("AGFsaWNlAHNlY3JldA=="), Err(SaslError::Finished));

        let mut x = Exchange::new(Mechanism::Plain);
        assert_eq!(x.start(Some("not base64!")), Err(SaslError::BadBase64));
    }

    #[test]
    fn login_exchange() {
        let mut x = Exchange::new(Mechanism::Login);
        assert_eq!(x.start(None), Ok(Step::Challenge(b"Username:".to_vec())));
        assert_eq!(x.respond(&encode_b64(b"alice")), Ok(Step::Challenge(b"Password:".to_vec())));
        assert_eq!(x.respond(&encode_b64(b"secret")), done("alice", b"secret"));
        assert_eq!(x.respond(&encode_b64(b"again")), Err(SaslError::Finished));

        // An initial response is the user name.
        let mut x = Exchange::new(Mechanism::Login);
        assert_eq!(x.start(Some("YWxpY2U=")), Ok(Step::Challenge(b"Password:".to_vec())));
        assert_eq!(x.respond("c2VjcmV0"), done("alice", b"secret"));

        let table: &[(&[u8], &[u8], SaslError)] = &[
            (b"", b"secret", SaslError::Malformed("empty user name")),
            (b"al\0ice", b"secret", SaslError::Malformed("NUL in the user name")),
            (b"\xff", b"secret", SaslError::Malformed("user name is not UTF-8")),
            (b"alice", b"sec\0ret", SaslError::Malformed("NUL in the password")),
            (b"alice", b"", SaslError::Malformed("empty password")),
        ];
        for (user, password, want) in table {
            let mut x = Exchange::new(Mechanism::Login);
            x.start(None).unwrap();
            let r = x.respond(&encode_b64(user)).and_then(|_| x.respond(&encode_b64(password)));
            assert_eq!(r.as_ref().err(), Some(want), "{user:?} {password:?}");
        }

        let mut x = Exchange::new(Mechanism::Login);
        x.start(None).unwrap();
        x.respond("YWxpY2U=").unwrap();
        assert_eq!(x.respond("*"), Err(SaslError::Cancelled));
    }

    #[test]
    fn respond_before_start() {
        let mut x = Exchange::new(Mechanism::Login);
        assert_eq!(x.respond("YWxpY2U="), Err(SaslError::Finished));
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::from_name("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("LOGIN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
    }

    #[test]
    fn secret_debug_hides() {
        let s = Secret::from(&b"hunter2"[..]);
        assert_eq!(format!("{s:?}"), "********");
        assert_eq!(
            format!("{:?}", Step::Done { user: "a".into(), password: s }),
            "Done { user: \"a\", password: ******** }"
        );
    }
}

//! Password hashes as they stand in a passwd-file: `{SCHEME}hash`, with the
//! scheme names Dovecot uses, so one passwd-file serves both servers.
//!
//! | scheme | hash | made with |
//! | --- | --- | --- |
//! | `SHA512-CRYPT` | `$6$salt$…` | 16-character salt, 5000 rounds (the crypt(3) default) |
//! | `SHA256-CRYPT` | `$5$salt$…` | 16-character salt, 5000 rounds |
//! | `BLF-CRYPT` | `$2y$`, `$2b$` or `$2a$` | 16-byte salt, cost 10, written `$2y$` |
//! | `ARGON2ID` | `$argon2id$v=19$m=…,t=…,p=…$salt$hash` | 16-byte salt, 19 MiB, 2 passes, 1 lane; the default |
//! | `ARGON2I` | `$argon2i$…` | as ARGON2ID |
//! | `PLAIN`, `CLEAR` | the password itself | compared in constant time; unsafe on disk |
//!
//! `{CRYPT}`, and a hash with no `{SCHEME}` at all, are read by their
//! crypt(3) prefix (`$6$`, `$5$`, `$2y$`, `$2b$`, `$2a$`, `$argon2…`), as
//! Dovecot reads an unprefixed passwd-file hash. Older crypt(3) hashes (DES,
//! MD5 `$1$`) are not accepted: such users need a new hash.
//!
//! The hash functions themselves come from the sha-crypt, bcrypt and
//! argon2 crates; this module only parses, dispatches and formats.
//!
//! Two things serve the password-checking pool (`auth::pool`): a
//! [`Scratch`] holds the memory of Argon2 checks, so that a thread that
//! checks many passwords allocates it once instead of once a check (the
//! allocator would keep each thread's 19 MiB); and a [`CostClass`] names
//! what a check costs (scheme and cost parameters), so that a failed login
//! can be made to cost what a failed login of any other user costs.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use base64::engine::general_purpose::NO_PAD;
use base64::engine::GeneralPurpose;
use base64::{alphabet, Engine as _};
use subtle::ConstantTimeEq;

/// A password hash scheme, named as in Dovecot's passwd-files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `SHA512-CRYPT`: crypt(3) `$6$`.
    Sha512Crypt,
    /// `SHA256-CRYPT`: crypt(3) `$5$`.
    Sha256Crypt,
    /// `BLF-CRYPT`: bcrypt, `$2y$` (also `$2b$`, `$2a$`).
    BlfCrypt,
    /// `ARGON2ID`: Argon2id in the PHC string format.
    Argon2id,
    /// `ARGON2I`: Argon2i in the PHC string format.
    Argon2i,
    /// `PLAIN` or `CLEAR`: the password in clear text.
    Plain,
}

/// The scheme `postroom passwd` uses when not told otherwise. Argon2id
/// with the parameters below takes about 30 ms per check in a release
/// build on a small 2-core machine: cheap for a login, dear for someone
/// guessing at a stolen passwd-file. SHA512-CRYPT at 5000 rounds takes
/// under 2 ms there, and BLF-CRYPT at cost 10 about 85 ms.
pub const DEFAULT_SCHEME: Scheme = Scheme::Argon2id;

/// SHA512-CRYPT and SHA256-CRYPT rounds for new hashes: the crypt(3)
/// default, which is also what Dovecot writes, so the hash has no
/// `rounds=` field.
pub const SHA_CRYPT_ROUNDS: usize = 5_000;

/// BLF-CRYPT cost for new hashes (2^10 rounds).
pub const BCRYPT_COST: u32 = 10;

/// Argon2 memory for new hashes, in KiB (19 MiB): the smallest of the
/// commonly recommended Argon2id settings, and the argon2 crate's default.
/// Each check in progress holds this much memory, which is why checks run
/// in a small pool of threads that each keep theirs (`auth::pool`). (64
/// MiB with 3 passes, as some servers use, takes about 150 ms per check on
/// the same machine.)
pub const ARGON2_M_KIB: u32 = 19_456;
/// Argon2 passes over the memory for new hashes.
pub const ARGON2_T: u32 = 2;
/// Argon2 lanes for new hashes (one thread per check).
pub const ARGON2_P: u32 = 1;

/// bcrypt reads no more than this many bytes of a password.
const BCRYPT_MAX_PASSWORD: usize = 72;

/// The crypt(3) salt and hash alphabet, `./0-9A-Za-z`, without padding.
const CRYPT_B64: GeneralPurpose = GeneralPurpose::new(&alphabet::CRYPT, NO_PAD);

impl Scheme {
    /// Every scheme, in the order `postroom passwd` lists them.
    pub const ALL: [Scheme; 6] =
        [Scheme::Sha512Crypt, Scheme::Sha256Crypt, Scheme::BlfCrypt, Scheme::Argon2id, Scheme::Argon2i, Scheme::Plain];

    /// The name written between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Argon2i => "ARGON2I",
            Scheme::Plain => "PLAIN",
        }
    }

    /// The scheme a name stands for, ignoring case; `CLEAR` is `PLAIN`.
    /// `CRYPT` is no scheme of its own (see [`parse`]).
    pub fn from_name(name: &str) -> Option<Scheme> {
        if name.eq_ignore_ascii_case("CLEAR") {
            return Some(Scheme::Plain);
        }
        Scheme::ALL.into_iter().find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// The scheme of a crypt(3)-style hash, by its prefix.
    fn by_prefix(hash: &str) -> Option<Scheme> {
        const PREFIXES: [(&str, Scheme); 7] = [
            ("$6$", Scheme::Sha512Crypt),
            ("$5$", Scheme::Sha256Crypt),
            ("$2y$", Scheme::BlfCrypt),
            ("$2b$", Scheme::BlfCrypt),
            ("$2a$", Scheme::BlfCrypt),
            ("$argon2id$", Scheme::Argon2id),
            ("$argon2i$", Scheme::Argon2i),
        ];
        PREFIXES.iter().find(|(p, _)| hash.starts_with(p)).map(|&(_, s)| s)
    }

    /// A hash of a password nobody has, made with the parameters new hashes
    /// of this scheme get: checking a password against it costs what
    /// checking a real hash costs, which is what an unknown user needs.
    pub fn dummy(self) -> &'static str {
        match self {
            Scheme::Sha512Crypt => DUMMY_SHA512,
            Scheme::Sha256Crypt => DUMMY_SHA256,
            Scheme::BlfCrypt => DUMMY_BCRYPT,
            Scheme::Argon2id => DUMMY_ARGON2ID,
            Scheme::Argon2i => DUMMY_ARGON2I,
            Scheme::Plain => DUMMY_PLAIN,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// Made by `hash` from random passwords that were then thrown away; the
// `dummies_match_parameters` test keeps them in step with the constants above.
const DUMMY_SHA512: &str = "{SHA512-CRYPT}$6$7SeGHpKgD45hj92K$sZxYLGMrGqQPVFHtcjLJtvYDXaXfsvrK9qz4rru2cMvylQ3llAXLNSDzLrQdupZRVIBjocjHsMaT7c0Q1f41R/";
const DUMMY_SHA256: &str = "{SHA256-CRYPT}$5$EpNs89lC8fZKfJOo$YZ2zbFe4eR2MCETp9OAco8e.gj0bez4RCs3cuwlNiR1";
const DUMMY_BCRYPT: &str = "{BLF-CRYPT}$2y$10$z9kwGkFUb2fyLSCTmDEEO.ECF.ujPBSZhVQykeRhPm2K/OYsiiXne";
const DUMMY_ARGON2ID: &str =
    "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$GBBJMW0LbYjDewlNp5d6Pg$vMeqyFkqplZnobM3hNd0N4sfo6+mupdLbLMrepF/kaA";
const DUMMY_ARGON2I: &str =
    "{ARGON2I}$argon2i$v=19$m=19456,t=2,p=1$O5XdvXNZnudTkkq1F2hhpw$ainRbwbI1c6M9vDMgwkvtCdBAx41oco8mddy1Zs+M8k";
const DUMMY_PLAIN: &str = "{PLAIN}quqoqafzniiukuykzejijhlc";

/// Why a password could not be hashed or checked. No variant carries the
/// hash or the password, so every one may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The stored value is empty: the account has no password.
    Empty,
    /// `{NAME}` names a scheme postroom does not know (the name, cut short
    /// and made printable), or `{CRYPT}` holds an algorithm it does not know.
    UnknownScheme(String),
    /// No `{SCHEME}` prefix, and no crypt(3) prefix postroom knows.
    NoScheme,
    /// The hash does not have the form its scheme needs.
    Malformed(Scheme, &'static str),
    /// The password cannot be stored in this scheme.
    Unsuitable(Scheme, &'static str),
    /// The system's random number source failed.
    Random(String),
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::Empty => write!(f, "no password hash"),
            HashError::UnknownScheme(s) => write!(f, "unknown password scheme {s}"),
            HashError::NoScheme => write!(f, "no {{SCHEME}} prefix and no known crypt prefix"),
            HashError::Malformed(s, why) => write!(f, "malformed {s} hash: {why}"),
            HashError::Unsuitable(s, why) => write!(f, "{s}: {why}"),
            HashError::Random(e) => write!(f, "no random salt: {e}"),
        }
    }
}

impl std::error::Error for HashError {}

/// Splits a stored `{SCHEME}hash` into its scheme and hash.
pub fn parse(stored: &str) -> Result<(Scheme, &str), HashError> {
    if stored.is_empty() {
        return Err(HashError::Empty);
    }
    let Some(rest) = stored.strip_prefix('{') else {
        return Scheme::by_prefix(stored).map(|s| (s, stored)).ok_or(HashError::NoScheme);
    };
    // A scheme name is short; a '}' far away belongs to something else.
    let Some(end) = rest.find('}').filter(|&e| e <= 32) else {
        return Scheme::by_prefix(stored).map(|s| (s, stored)).ok_or(HashError::NoScheme);
    };
    let (name, hash) = (&rest[..end], &rest[end + 1..]);
    if name.eq_ignore_ascii_case("CRYPT") {
        return match Scheme::by_prefix(hash) {
            Some(s) => Ok((s, hash)),
            None => Err(HashError::UnknownScheme(crypt_id(hash))),
        };
    }
    match Scheme::from_name(name) {
        Some(s) => Ok((s, hash)),
        None => Err(HashError::UnknownScheme(printable(name))),
    }
}

/// `CRYPT` with the algorithm id of a crypt(3) hash, when it looks like one.
fn crypt_id(hash: &str) -> String {
    let id = hash.strip_prefix('$').and_then(|r| r.split('$').next()).unwrap_or("");
    if !id.is_empty() && id.len() <= 8 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        format!("CRYPT (${id}$)")
    } else {
        "CRYPT (DES or unknown)".to_string()
    }
}

/// A scheme name as it may be logged.
fn printable(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// Checks `password` against a stored `{SCHEME}hash`. `Ok(false)` is a
/// wrong password; an error means the stored value is unusable.
pub fn verify(stored: &str, password: &[u8]) -> Result<bool, HashError> {
    let (scheme, hash) = parse(stored)?;
    verify_as(scheme, hash, password)
}

/// Checks `password` against `hash` (without its `{SCHEME}` prefix).
pub fn verify_as(scheme: Scheme, hash: &str, password: &[u8]) -> Result<bool, HashError> {
    verify_in(scheme, hash, password, &mut Scratch::default())
}

/// Memory for Argon2 checks, grown to the largest one done so far and
/// kept: a thread that checks many passwords allocates it once.
#[derive(Default)]
pub struct Scratch {
    blocks: Vec<argon2::Block>,
}

impl Scratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * argon2::Block::SIZE
    }
}

/// [`verify_as`], with Argon2's memory taken from `scratch`.
pub fn verify_in(scheme: Scheme, hash: &str, password: &[u8], scratch: &mut Scratch) -> Result<bool, HashError> {
    match scheme {
        Scheme::Sha512Crypt | Scheme::Sha256Crypt => {
            let ShaCrypt { rounds, salt, expected } = ShaCrypt::parse(scheme, hash)?;
            let computed = if scheme == Scheme::Sha512Crypt {
                let params =
                    sha_crypt::Sha512Params::new(rounds).map_err(|_| HashError::Malformed(scheme, "bad rounds"))?;
                sha_crypt::sha512_crypt_b64(password, salt.as_bytes(), &params)
            } else {
                let params =
                    sha_crypt::Sha256Params::new(rounds).map_err(|_| HashError::Malformed(scheme, "bad rounds"))?;
                sha_crypt::sha256_crypt_b64(password, salt.as_bytes(), &params)
            }
            .map_err(|_| HashError::Malformed(scheme, "cannot compute"))?;
            Ok(bool::from(computed.as_bytes().ct_eq(expected.as_bytes())))
        }
        Scheme::BlfCrypt => {
            bcrypt_cost(hash)?;
            bcrypt::verify(password, hash).map_err(|_| HashError::Malformed(scheme, "bad cost, salt or hash"))
        }
        Scheme::Argon2id | Scheme::Argon2i => {
            let a = Argon2Hash::parse(scheme, hash)?;
            let mut salt = [0u8; 64];
            let salt = a.salt.decode_b64(&mut salt).map_err(|_| HashError::Malformed(scheme, "bad salt"))?;
            let expected = a.expected.as_bytes();
            let need = a.params.block_count();
            if scratch.blocks.len() < need {
                scratch.blocks.resize(need, argon2::Block::default());
            }
            let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
            argon2::Argon2::new(a.algorithm, a.version, a.params)
                .hash_password_into_with_memory(password, salt, &mut out, &mut scratch.blocks[..need])
                .map_err(|_| HashError::Malformed(scheme, "bad parameters, salt or hash"))?;
            Ok(bool::from(out.as_slice().ct_eq(expected)))
        }
        Scheme::Plain => Ok(bool::from(hash.as_bytes().ct_eq(password))),
    }
}

/// What checking a hash costs: its scheme and the parameters that set the
/// work (SHA-crypt rounds, bcrypt cost, Argon2 memory, passes and lanes).
/// Checking one password against two hashes of one class is the same work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CostClass {
    pub scheme: Scheme,
    params: [u32; 3],
}

impl fmt::Display for CostClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.params;
        match self.scheme {
            Scheme::Sha512Crypt | Scheme::Sha256Crypt => write!(f, "{}/rounds={a}", self.scheme),
            Scheme::BlfCrypt => write!(f, "{}/cost={a}", self.scheme),
            Scheme::Argon2id | Scheme::Argon2i => write!(f, "{}/m={a},t={b},p={c}", self.scheme),
            Scheme::Plain => write!(f, "{}", self.scheme),
        }
    }
}

/// The cost class of `hash` (without its `{SCHEME}` prefix), after the
/// same checks of its form that [`verify_in`] makes before computing: a
/// hash that has a class is computed in full when checked.
pub fn cost_class(scheme: Scheme, hash: &str) -> Result<CostClass, HashError> {
    let params = match scheme {
        Scheme::Sha512Crypt | Scheme::Sha256Crypt => [ShaCrypt::parse(scheme, hash)?.rounds as u32, 0, 0],
        Scheme::BlfCrypt => [bcrypt_cost(hash)?, 0, 0],
        Scheme::Argon2id | Scheme::Argon2i => {
            let p = Argon2Hash::parse(scheme, hash)?.params;
            [p.m_cost(), p.t_cost(), p.p_cost()]
        }
        Scheme::Plain => [0; 3],
    };
    Ok(CostClass { scheme, params })
}

/// `$6$[rounds=N$]salt$hash` and `$5$…`, read as crypt(3) reads them.
struct ShaCrypt<'a> {
    rounds: usize,
    salt: &'a str,
    expected: &'a str,
}

impl<'a> ShaCrypt<'a> {
    fn parse(scheme: Scheme, hash: &'a str) -> Result<ShaCrypt<'a>, HashError> {
        let (prefix, len) = if scheme == Scheme::Sha512Crypt { ("$6$", 86) } else { ("$5$", 43) };
        let rest = hash.strip_prefix(prefix).ok_or(HashError::Malformed(scheme, "wrong crypt prefix"))?;
        let (rounds, rest) = match rest.strip_prefix("rounds=") {
            Some(r) => {
                let (n, rest) = r.split_once('$').ok_or(HashError::Malformed(scheme, "no salt"))?;
                if n.is_empty() || n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HashError::Malformed(scheme, "rounds is not a number"));
                }
                let n: u64 = n.parse().map_err(|_| HashError::Malformed(scheme, "rounds is not a number"))?;
                // crypt(3) clamps rounds into its range rather than refusing.
                let n = n.clamp(sha_crypt::ROUNDS_MIN as u64, sha_crypt::ROUNDS_MAX as u64) as usize;
                (n, rest)
            }
            None => (sha_crypt::ROUNDS_DEFAULT, rest),
        };
        let (salt, expected) = rest.split_once('$').ok_or(HashError::Malformed(scheme, "no hash after the salt"))?;
        if expected.len() != len || !expected.bytes().all(is_crypt_char) {
            return Err(HashError::Malformed(scheme, "hash has the wrong length or characters"));
        }
        Ok(ShaCrypt { rounds, salt, expected })
    }
}

/// The cost of a `$2y$`, `$2b$` or `$2a$` hash, when the hash has the form
/// the bcrypt crate accepts: 60 characters, a cost from 4 to 31.
fn bcrypt_cost(hash: &str) -> Result<u32, HashError> {
    let scheme = Scheme::BlfCrypt;
    if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return Err(HashError::Malformed(scheme, "not a $2y$, $2b$ or $2a$ hash"));
    }
    let b = hash.as_bytes();
    if b.len() != 60 || b[6] != b'$' || !b[7..].iter().all(|&c| is_crypt_char(c)) {
        return Err(HashError::Malformed(scheme, "bad cost, salt or hash"));
    }
    match hash[4..6].parse::<u32>() {
        Ok(cost @ 4..=31) if b[4].is_ascii_digit() => Ok(cost),
        _ => Err(HashError::Malformed(scheme, "bad cost, salt or hash")),
    }
}

/// An Argon2 hash in the PHC string format, with what computing it needs.
struct Argon2Hash<'a> {
    algorithm: argon2::Algorithm,
    version: argon2::Version,
    params: argon2::Params,
    salt: argon2::password_hash::Salt<'a>,
    expected: argon2::password_hash::Output,
}

impl<'a> Argon2Hash<'a> {
    fn parse(scheme: Scheme, hash: &'a str) -> Result<Argon2Hash<'a>, HashError> {
        let parsed = PasswordHash::new(hash).map_err(|_| HashError::Malformed(scheme, "not a PHC string"))?;
        let (want, algorithm) = if scheme == Scheme::Argon2id {
            ("argon2id", argon2::Algorithm::Argon2id)
        } else {
            ("argon2i", argon2::Algorithm::Argon2i)
        };
        if parsed.algorithm.as_str() != want {
            return Err(HashError::Malformed(scheme, "algorithm differs from the scheme"));
        }
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(HashError::Malformed(scheme, "no salt or no hash"));
        };
        // The parameters, salt and version come from the hash itself.
        let bad = || HashError::Malformed(scheme, "bad parameters, salt or hash");
        let params = argon2::Params::try_from(&parsed).map_err(|_| bad())?;
        let version = match parsed.version {
            Some(v) => argon2::Version::try_from(v).map_err(|_| bad())?,
            None => argon2::Version::default(),
        };
        let mut buf = [0u8; 64];
        let decoded = salt.decode_b64(&mut buf).map_err(|_| bad())?;
        if decoded.len() < argon2::MIN_SALT_LEN {
            return Err(bad());
        }
        Ok(Argon2Hash { algorithm, version, params, salt, expected })
    }
}

fn is_crypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

/// Hashes `password` with `scheme` and a fresh random salt, giving the
/// `{SCHEME}hash` text for a passwd-file.
pub fn hash(scheme: Scheme, password: &[u8]) -> Result<String, HashError> {
    let hash = match scheme {
        Scheme::Sha512Crypt | Scheme::Sha256Crypt => {
            // 12 random bytes are 16 salt characters, the most crypt(3) reads.
            let salt = CRYPT_B64.encode(random::<12>()?);
            let out = if scheme == Scheme::Sha512Crypt {
                let params = sha_crypt::Sha512Params::new(SHA_CRYPT_ROUNDS)
                    .map_err(|_| HashError::Unsuitable(scheme, "bad rounds"))?;
                sha_crypt::sha512_crypt_b64(password, salt.as_bytes(), &params).map(|h| format!("$6${salt}${h}"))
            } else {
                let params = sha_crypt::Sha256Params::new(SHA_CRYPT_ROUNDS)
                    .map_err(|_| HashError::Unsuitable(scheme, "bad rounds"))?;
                sha_crypt::sha256_crypt_b64(password, salt.as_bytes(), &params).map(|h| format!("$5${salt}${h}"))
            };
            out.map_err(|_| HashError::Unsuitable(scheme, "cannot compute"))?
        }
        Scheme::BlfCrypt => {
            if password.len() > BCRYPT_MAX_PASSWORD {
                return Err(HashError::Unsuitable(scheme, "bcrypt reads only the first 72 bytes of a password"));
            }
            bcrypt::hash_with_salt(password, BCRYPT_COST, random::<16>()?)
                .map_err(|_| HashError::Unsuitable(scheme, "cannot compute"))?
                .format_for_version(bcrypt::Version::TwoY)
        }
        Scheme::Argon2id | Scheme::Argon2i => {
            let salt = SaltString::encode_b64(&random::<16>()?)
                .map_err(|_| HashError::Unsuitable(scheme, "cannot encode the salt"))?;
            argon2_hasher(scheme)?
                .hash_password(password, &salt)
                .map_err(|_| HashError::Unsuitable(scheme, "cannot compute"))?
                .to_string()
        }
        Scheme::Plain => {
            let Ok(text) = std::str::from_utf8(password) else {
                return Err(HashError::Unsuitable(scheme, "the password is not UTF-8 text"));
            };
            // A passwd-file line is split at ':' and ends at a line end.
            if text.contains(':') || text.chars().any(char::is_control) {
                return Err(HashError::Unsuitable(scheme, "the password has a ':' or a control character"));
            }
            text.to_string()
        }
    };
    Ok(format!("{{{}}}{}", scheme.name(), hash))
}

fn argon2_hasher(scheme: Scheme) -> Result<argon2::Argon2<'static>, HashError> {
    let algorithm = if scheme == Scheme::Argon2id { argon2::Algorithm::Argon2id } else { argon2::Algorithm::Argon2i };
    let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .map_err(|_| HashError::Unsuitable(scheme, "bad parameters"))?;
    Ok(argon2::Argon2::new(algorithm, argon2::Version::V0x13, params))
}

fn random<const N: usize>() -> Result<[u8; N], HashError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| HashError::Random(e.to_string()))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let table = [
            ("SHA512-CRYPT", Some(Scheme::Sha512Crypt)),
            ("sha256-crypt", Some(Scheme::Sha256Crypt)),
            ("BLF-CRYPT", Some(Scheme::BlfCrypt)),
            ("Argon2id", Some(Scheme::Argon2id)),
            ("ARGON2I", Some(Scheme::Argon2i)),
            ("PLAIN", Some(Scheme::Plain)),
            ("CLEAR", Some(Scheme::Plain)),
            ("CRYPT", None),
            ("MD5-CRYPT", None),
            ("", None),
        ];
        for (name, want) in table {
            assert_eq!(Scheme::from_name(name), want, "{name}");
        }
        for s in Scheme::ALL {
            assert_eq!(Scheme::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn parse_table() {
        use HashError::*;
        type Want = Result<(Scheme, &'static str), HashError>;
        let table: &[(&str, Want)] = &[
            ("{SHA512-CRYPT}$6$a$b", Ok((Scheme::Sha512Crypt, "$6$a$b"))),
            ("{sha512-crypt}$6$a$b", Ok((Scheme::Sha512Crypt, "$6$a$b"))),
            ("{CRYPT}$6$a$b", Ok((Scheme::Sha512Crypt, "$6$a$b"))),
            ("{CRYPT}$5$a$b", Ok((Scheme::Sha256Crypt, "$5$a$b"))),
            ("{CRYPT}$2b$10$x", Ok((Scheme::BlfCrypt, "$2b$10$x"))),
            ("{CRYPT}$1$abc$def", Err(UnknownScheme("CRYPT ($1$)".into()))),
            ("{CRYPT}abJnggxhB/yWI", Err(UnknownScheme("CRYPT (DES or unknown)".into()))),
            ("$6$a$b", Ok((Scheme::Sha512Crypt, "$6$a$b"))),
            ("$5$a$b", Ok((Scheme::Sha256Crypt, "$5$a$b"))),
            ("$2y$10$x", Ok((Scheme::BlfCrypt, "$2y$10$x"))),
            ("$2a$10$x", Ok((Scheme::BlfCrypt, "$2a$10$x"))),
            ("$argon2id$v=19$x", Ok((Scheme::Argon2id, "$argon2id$v=19$x"))),
            ("$argon2i$v=19$x", Ok((Scheme::Argon2i, "$argon2i$v=19$x"))),
            ("$argon2d$v=19$x", Err(NoScheme)),
            ("$1$abc$def", Err(NoScheme)),
            ("secret", Err(NoScheme)),
            ("{PLAIN}", Ok((Scheme::Plain, ""))),
            ("{CLEAR}a}b", Ok((Scheme::Plain, "a}b"))),
            ("{PLAIN}{x}", Ok((Scheme::Plain, "{x}"))),
            ("{MD5}abc", Err(UnknownScheme("MD5".into()))),
            ("{SSHA\u{7}}abc", Err(UnknownScheme("SSHA?".into()))),
            ("{no closing brace", Err(NoScheme)),
            ("", Err(Empty)),
        ];
        for (stored, want) in table {
            assert_eq!(&parse(stored), want, "{stored:?}");
        }
    }

    /// Hashes made by other crypt(3) implementations, with their passwords.
    const VECTORS: &[(&str, &str)] = &[
        ("{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1", "Hello world!"),
        ("$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.", "Hello world!"),
        ("{CRYPT}$6$Q0zVbnqN4x0TKaUv$5L9HJFMmuhGwu29eL/rpmuxVSVclboYRHZqAAyllo/1RkswlN3zJscl6A.vXgDxlOGdxtn5I47TvM9yQGayFr.", "pässwörd"),
        ("{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", "Hello world!"),
        ("$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA", "Hello world!"),
        ("{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", "correct horse"),
        ("{BLF-CRYPT}$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", "correct horse"),
        ("$2a$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", "correct horse"),
        ("$2y$04$0123456789ABCDEFGHIJKub1ugOfMyiyFg0BTLsJDU9mv7iifIBbi", "pässwörd"),
        ("{ARGON2ID}$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$H5rnCvoHJK5J3ADJ9mc9NL74Ow2lIMZ5zI+CyR256y0", "correct horse"),
        ("$argon2id$v=19$m=4096,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg$rlhPa9n2UCtJDve2vt4ozxL4GYTkESlItLdJmIJ2oPk", "pässwörd"),
        ("{ARGON2I}$argon2i$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$sd2wE4z6YKcwaFhcyqP4TORSrNKt7aNTBs3DelB3HkQ", "correct horse"),
        ("{PLAIN}correct horse", "correct horse"),
        ("{CLEAR}pässwörd", "pässwörd"),
    ];

    #[test]
    fn known_vectors() {
        for (stored, password) in VECTORS {
            assert_eq!(verify(stored, password.as_bytes()), Ok(true), "{stored}");
            assert_eq!(verify(stored, b"wrong"), Ok(false), "{stored}");
            let mut near = password.as_bytes().to_vec();
            near.push(b'x');
            assert_eq!(verify(stored, &near), Ok(false), "{stored}");
        }
    }

    #[test]
    fn malformed() {
        let table = [
            "{SHA512-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
            "{SHA512-CRYPT}$6$saltstring",
            "{SHA512-CRYPT}$6$saltstring$short",
            "{SHA512-CRYPT}$6$rounds=x$salt$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
            "{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5$",
            "{BLF-CRYPT}$2x$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2",
            "{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy",
            "{BLF-CRYPT}$2y$99$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2",
            "{ARGON2ID}$argon2i$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0$sd2wE4z6YKcwaFhcyqP4TORSrNKt7aNTBs3DelB3HkQ",
            "{ARGON2ID}$argon2id$v=19$m=1024,t=2",
            "{ARGON2ID}not a hash",
        ];
        for stored in table {
            assert!(matches!(verify(stored, b"x"), Err(HashError::Malformed(..))), "{stored}");
        }
    }

    #[test]
    fn low_rounds_are_clamped_as_crypt_does() {
        // crypt(3) reads rounds=10 as rounds=1000; so does postroom.
        let params = sha_crypt::Sha512Params::new(1000).unwrap();
        let h = sha_crypt::sha512_crypt_b64(b"pw", b"salt", &params).unwrap();
        assert_eq!(verify(&format!("$6$rounds=10$salt${h}"), b"pw"), Ok(true));
    }

    #[test]
    fn round_trip_fast_schemes() {
        // Argon2 round trips are in tests/auth.rs, which runs them once.
        for scheme in [Scheme::Sha512Crypt, Scheme::Sha256Crypt, Scheme::BlfCrypt, Scheme::Plain] {
            let h = hash(scheme, "pässwörd".as_bytes()).unwrap();
            assert!(h.starts_with(&format!("{{{}}}", scheme.name())), "{h}");
            assert_eq!(parse(&h).unwrap().0, scheme);
            assert_eq!(verify(&h, "pässwörd".as_bytes()), Ok(true), "{h}");
            assert_eq!(verify(&h, b"passwoerd"), Ok(false), "{h}");
            if scheme != Scheme::Plain {
                assert_ne!(h, hash(scheme, "pässwörd".as_bytes()).unwrap(), "salts differ");
            }
        }
    }

    #[test]
    fn unsuitable_passwords() {
        for (scheme, pw) in [
            (Scheme::Plain, &b"a:b"[..]),
            (Scheme::Plain, b"a\nb"),
            (Scheme::Plain, b"\xff"),
            (Scheme::BlfCrypt, &[b'a'; 73][..]),
        ] {
            assert!(matches!(hash(scheme, pw), Err(HashError::Unsuitable(..))), "{scheme} {pw:?}");
        }
        assert!(hash(Scheme::BlfCrypt, &[b'a'; 72]).is_ok());
        assert!(hash(Scheme::Sha512Crypt, b"\xff\x00a:b").is_ok());
    }

    #[test]
    fn dummies_match_parameters() {
        for scheme in Scheme::ALL {
            let dummy = scheme.dummy();
            let (s, h) = parse(dummy).unwrap();
            assert_eq!(s, scheme);
            assert_eq!(verify(dummy, b""), Ok(false));
            let fresh = hash(scheme, b"x").unwrap();
            // Same scheme and cost: everything before the salt agrees.
            let head = |h: &str| match scheme {
                Scheme::Sha512Crypt | Scheme::Sha256Crypt => h.split('$').take(2).collect::<Vec<_>>().join("$"),
                Scheme::BlfCrypt => h[..7].to_string(),
                Scheme::Argon2id | Scheme::Argon2i => h.rsplitn(3, '$').nth(2).unwrap_or("").to_string(),
                Scheme::Plain => String::new(),
            };
            assert_eq!(head(h), head(parse(&fresh).unwrap().1), "{scheme}");
            if matches!(scheme, Scheme::Sha512Crypt | Scheme::Sha256Crypt) {
                assert!(!h.contains("rounds="));
            }
        }
    }

    #[test]
    fn errors_do_not_show_the_hash() {
        let e = verify("{SHA512-CRYPT}$6$secretsalt$short", b"x").unwrap_err();
        assert!(!e.to_string().contains("secretsalt"), "{e}");
        let e = verify("{MD5}c2VjcmV0", b"x").unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }
}

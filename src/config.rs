//! postroom.conf(5): read the config file into a typed, validated [`Config`].
//!
//! The format is one `key value...` a line. Words are separated by spaces or
//! tabs; a word that starts with `#` starts a comment that runs to the end of
//! the line; a value may be written in double quotes (with `\"` and `\\`
//! inside) when it holds spaces. Every key is optional and has a default, so
//! an empty file is a valid config. Relative paths, and relative path
//! templates, are taken relative to the directory of the config file itself,
//! and are made absolute while parsing, so that nothing depends on the
//! working directory of the process later.
//!
//! Every problem is reported with its file and line (`file:line: message`),
//! and all of them are reported at once, so that `postroomd -n` shows the
//! whole list in one run.
//!
//! Limits enforced here and their reasons: RFC 3501 §5.4 (IMAP autologout at
//! least 30 minutes), RFC 1939 §3 (POP3 autologout at least 10 minutes),
//! RFC 7162 §4 (IMAP servers should accept command lines of at least 8000
//! octets), RFC 1939 §7 (a UIDL is 1 to 70 characters from 0x21 to 0x7E).

use std::collections::HashMap;
use std::env;
use std::error::Error;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::limits;
use crate::store::lock::{LockMethod, LockSettings};
use crate::store::MboxFormat;

/// Where the config file is when neither `-f` nor `POSTROOM_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/postroom/postroom.conf";

/// The environment variable that overrides [`DEFAULT_PATH`] (but not `-f`).
pub const PATH_ENV: &str = "POSTROOM_CONFIG";

/// RFC 3501 §5.4: an IMAP autologout timer "MUST be of at least 30 minutes' duration".
pub const MIN_IDLE_TIMEOUT_IMAP: Duration = Duration::from_secs(30 * 60);

/// RFC 1939 §3: a POP3 autologout timer "MUST be of at least 10 minutes' duration".
pub const MIN_IDLE_TIMEOUT_POP3: Duration = Duration::from_secs(10 * 60);

/// RFC 7162 §4: servers "SHOULD accept command lines of at least 8000 octets".
pub const MIN_IMAP_LINE_LENGTH: u64 = 8000;

/// A dotlock younger than this is never broken: a slow but live writer (a
/// long rewrite on a busy disk) must keep its lock.
pub const MIN_DOTLOCK_STALE: Duration = Duration::from_secs(60);

/// No duration in the file may exceed this; a larger one is a typo, and
/// would overflow when added to a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The config file path to use when `-f` is not given: `$POSTROOM_CONFIG`
/// when set and not empty, else [`DEFAULT_PATH`].
pub fn default_path() -> PathBuf {
    match env::var_os(PATH_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// IMAP4rev1 with STARTTLS (RFC 3501), port 143.
    Imap,
    /// IMAP over implicit TLS (RFC 8314), port 993.
    Imaps,
    /// POP3 with STLS (RFC 1939, RFC 2595), port 110.
    Pop3,
    /// POP3 over implicit TLS (RFC 8314), port 995.
    Pop3s,
    /// LMTP (RFC 2033), for delivery from the MTA.
    Lmtp,
}

impl Protocol {
    /// Every protocol, in the order the man page lists them.
    pub const ALL: [Protocol; 5] = [Protocol::Imap, Protocol::Imaps, Protocol::Pop3, Protocol::Pop3s, Protocol::Lmtp];

    /// The name used in the config file, on the `-i` option and as systemd's
    /// FileDescriptorName.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Imaps => "imaps",
            Protocol::Pop3 => "pop3",
            Protocol::Pop3s => "pop3s",
            Protocol::Lmtp => "lmtp",
        }
    }

    /// The protocol with this name, if any.
    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == s)
    }

    /// True when TLS starts with the connection (imaps, pop3s) rather than
    /// after STARTTLS/STLS.
    pub fn implicit_tls(self) -> bool {
        matches!(self, Protocol::Imaps | Protocol::Pop3s)
    }

    /// The IANA port of the protocol (LMTP has none; 24 is the private mail
    /// port that is customary for it).
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Imap => 143,
            Protocol::Imaps => 993,
            Protocol::Pop3 => 110,
            Protocol::Pop3s => 995,
            Protocol::Lmtp => 24,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `listen` line: a protocol on a TCP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl fmt::Display for Listen {
    /// As the config file writes it: `imap 127.0.0.1:143`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol, self.addr)
    }
}

/// A path with `%u` (user name), `%h` (home) and `%%` to expand per user.
/// Relative templates were already resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate(pub String);

impl PathTemplate {
    /// Checks the `%` sequences of a template (no resolution of relative
    /// paths: that is the parser's job, since it knows the directory).
    pub fn parse(s: &str) -> Result<PathTemplate, String> {
        if s.is_empty() {
            return Err("empty path".to_string());
        }
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                match chars.next() {
                    Some('u' | 'h' | '%') => {}
                    Some(other) => {
                        return Err(format!("unknown `%{other}` in `{s}` (known: %u user, %h home, %% percent)"))
                    }
                    None => return Err(format!("`{s}` ends in a lone `%` (write %% for a percent sign)")),
                }
            }
        }
        Ok(PathTemplate(s.to_string()))
    }

    /// The template as written (after resolution).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the template uses `%h`.
    pub fn needs_home(&self) -> bool {
        self.pieces().any(|p| p == Piece::Home)
    }

    /// Expands the template, or `None` when it uses `%h` and there is no home.
    ///
    /// `user` must be a name that the user database knows: the template puts
    /// it into the path as it is.
    pub fn try_expand(&self, user: &str, home: Option<&Path>) -> Option<PathBuf> {
        if home.is_none() && self.needs_home() {
            return None;
        }
        Some(self.expand(user, home))
    }

    /// Expands `%u`, `%h` and `%%`.
    ///
    /// `user` must be a name that the user database knows: the template puts
    /// it into the path as it is. When the template uses `%h` and `home` is
    /// `None`, `%h` becomes `/nonexistent` (the conventional home of accounts
    /// without one), so the result names nothing; callers that can meet users
    /// without a home use [`PathTemplate::try_expand`].
    pub fn expand(&self, user: &str, home: Option<&Path>) -> PathBuf {
        use std::ffi::OsString;
        let mut out = OsString::new();
        for piece in self.pieces() {
            match piece {
                Piece::Text(t) => out.push(t),
                Piece::User => out.push(user),
                Piece::Home => out.push(home.map_or(Path::new("/nonexistent").as_os_str(), Path::as_os_str)),
            }
        }
        PathBuf::from(out)
    }

    fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        let s = self.0.as_str();
        let mut rest = s;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            match rest.find('%') {
                Some(0) => {
                    let (piece, len) = match rest.as_bytes().get(1) {
                        Some(b'u') => (Piece::User, 2),
                        Some(b'h') => (Piece::Home, 2),
                        Some(b'%') => (Piece::Text("%"), 2),
                        // Not produced by `parse`; kept literally.
                        _ => (Piece::Text("%"), 1),
                    };
                    rest = &rest[len..];
                    Some(piece)
                }
                Some(i) => {
                    let (text, tail) = rest.split_at(i);
                    rest = tail;
                    Some(Piece::Text(text))
                }
                None => {
                    let text = rest;
                    rest = "";
                    Some(Piece::Text(text))
                }
            }
        })
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    User,
    Home,
}

/// When a client may send a password in the clear (`plaintext-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlaintextAuth {
    /// Over TLS, or from a loopback address (the default).
    #[default]
    TlsOrLoopback,
    /// Always, even over an unencrypted connection from the network.
    Always,
    /// Only over TLS, even from loopback.
    Never,
}

impl PlaintextAuth {
    pub fn name(self) -> &'static str {
        match self {
            PlaintextAuth::TlsOrLoopback => "tls-or-loopback",
            PlaintextAuth::Always => "always",
            PlaintextAuth::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<PlaintextAuth> {
        [PlaintextAuth::TlsOrLoopback, PlaintextAuth::Always, PlaintextAuth::Never].into_iter().find(|p| p.name() == s)
    }
}

/// Where log lines go (`log`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// Standard error (the default; never in inetd mode, where fd 2 is the socket).
    #[default]
    Stderr,
    /// The system log, facility mail.
    Syslog,
    /// Appended to this file.
    File(PathBuf),
}

/// A known misbehaviour of a POP3 client that the server works around (`pop3-workarounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pop3Workaround {
    /// Outlook stops reading a message at a NUL byte and then hangs: send
    /// each NUL in a message as the byte 0x80 instead.
    OutlookNoNuls,
}

impl Pop3Workaround {
    pub fn name(self) -> &'static str {
        match self {
            Pop3Workaround::OutlookNoNuls => "outlook-no-nuls",
        }
    }

    pub fn parse(s: &str) -> Option<Pop3Workaround> {
        [Pop3Workaround::OutlookNoNuls].into_iter().find(|w| w.name() == s)
    }
}

/// A network in CIDR notation (`proxy-trusted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address; no bits are set past the prefix.
    pub addr: IpAddr,
    /// Prefix length, at most 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `v6addr/n`, or a bare address (a single host).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| format!("`{s}` is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("`{s}`: the prefix length must be a number from 0 to {max}")),
            },
        };
        let cidr = Cidr { addr: mask(addr, prefix), prefix };
        if cidr.addr != addr {
            return Err(format!("`{s}` has bits set past the /{prefix} prefix (the network is {cidr})"));
        }
        Ok(cidr)
    }

    /// True when `ip` is in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, what a dual-stack socket reports) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// How POP3 UIDLs are made from a message's UIDVALIDITY and UID
/// (`pop3-uidl-format`).
///
/// The syntax is the subset of Dovecot's `pop3_uidl_format` that fits an
/// mbox store, so that a setting can be copied over and every "leave mail on
/// server" client keeps its UIDLs: `%v` UIDVALIDITY, `%u` UID, `%%` a percent
/// sign; `X` before the letter writes the number in hexadecimal (lower case,
/// as Dovecot does), and a width with a leading zero (`%08Xu`) pads it with
/// zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlFormat {
    text: String,
    parts: Vec<UidlPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UidlPart {
    Text(String),
    Number { uidvalidity: bool, width: usize, hex: bool },
}

impl UidlFormat {
    /// UW-IMAP's ipop3d: UIDVALIDITY and UID as eight hex digits each. The default.
    pub const UW: &'static str = "%08Xv%08Xu";
    /// Dovecot's built-in default: UID, then UIDVALIDITY, eight hex digits each.
    pub const DOVECOT: &'static str = "%08Xu%08Xv";

    /// Parses a template, or one of the preset names `uw` and `dovecot`.
    pub fn parse(s: &str) -> Result<UidlFormat, String> {
        let text = match s {
            "uw" => UidlFormat::UW,
            "dovecot" => UidlFormat::DOVECOT,
            other => other,
        };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut max_len = 0usize;
        let mut has_uid = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                if !('\x21'..='\x7e').contains(&c) {
                    return Err(format!("`{c}` in `{text}`: a UIDL may hold only printable ASCII without spaces"));
                }
                literal.push(c);
                max_len += 1;
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                literal.push('%');
                max_len += 1;
                continue;
            }
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            let width = if digits.is_empty() {
                0
            } else if !digits.starts_with('0') {
                return Err(format!("`%{digits}` in `{text}`: a width needs a leading 0 (zero padding), as in %08Xu"));
            } else {
                match digits.parse::<usize>() {
                    Ok(w) if w <= 20 => w,
                    _ => return Err(format!("`%{digits}` in `{text}`: the width can be at most 20")),
                }
            };
            let hex = chars.peek() == Some(&'X');
            if hex {
                chars.next();
            }
            let uidvalidity = match chars.next() {
                Some('u') => false,
                Some('v') => true,
                Some(other) => {
                    return Err(format!("unknown `%{other}` in `{text}` (known: %u UID, %v UIDVALIDITY, %% percent)"))
                }
                None => return Err(format!("`{text}` ends inside a `%` sequence")),
            };
            has_uid |= !uidvalidity;
            if !literal.is_empty() {
                parts.push(UidlPart::Text(std::mem::take(&mut literal)));
            }
            // u32::MAX has 10 decimal or 8 hex digits.
            max_len += width.max(if hex { 8 } else { 10 });
            parts.push(UidlPart::Number { uidvalidity, width, hex });
        }
        if !literal.is_empty() {
            parts.push(UidlPart::Text(literal));
        }
        if !has_uid {
            return Err(format!("`{text}` has no %u: every message would get the same UIDL"));
        }
        if max_len > 70 {
            return Err(format!("`{text}` can make UIDLs of {max_len} characters; RFC 1939 allows 70"));
        }
        Ok(UidlFormat { text: text.to_string(), parts })
    }

    /// The template (a preset name is replaced by its template).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The UIDL of the message with this UIDVALIDITY and UID.
    pub fn render(&self, uidvalidity: u32, uid: u32) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                UidlPart::Text(t) => out.push_str(t),
                UidlPart::Number { uidvalidity: v, width, hex } => {
                    let n = if *v { uidvalidity } else { uid };
                    if *hex {
                        out.push_str(&format!("{n:0width$x}"));
                    } else {
                        out.push_str(&format!("{n:0width$}"));
                    }
                }
            }
        }
        out
    }
}

impl Default for UidlFormat {
    fn default() -> Self {
        UidlFormat::parse(UidlFormat::UW).unwrap_or(UidlFormat { text: String::new(), parts: Vec::new() })
    }
}

/// The whole config file, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The config file, absolute.
    pub path: PathBuf,
    /// `listen`: what the standalone server binds. Default: imap, imaps, pop3
    /// and pop3s on their standard ports, on 0.0.0.0 and on [::] (bound
    /// IPv6-only, so the two do not collide).
    pub listen: Vec<Listen>,
    /// `tls-cert`: PEM certificate chain. Default `tls/cert.pem` next to the config.
    pub tls_cert: PathBuf,
    /// `tls-key`: PEM private key. Default `tls/key.pem` next to the config.
    pub tls_key: PathBuf,
    /// `passwd-file`: the user database. Default `passwd` next to the config.
    pub passwd_file: PathBuf,
    /// `inbox`: each user's INBOX mbox. Default `/var/mail/%u`.
    pub inbox: PathTemplate,
    /// `mail-dir`: the directory of each user's other folders. Default `%h/mail`.
    pub mail_dir: PathTemplate,
    /// `mbox-format`. Default mboxrd.
    pub mbox_format: MboxFormat,
    /// `mbox-lock-order`, `mbox-lock-timeout`, `dotlock-stale`.
    pub lock: LockSettings,
    /// `state-dir`: postroom's own files (POP maildrop locks). Default `/var/lib/postroom`.
    pub state_dir: PathBuf,
    /// `plaintext-auth`. Default tls-or-loopback.
    pub plaintext_auth: PlaintextAuth,
    /// `user`: the account to switch to after binding, when started as root.
    pub user: Option<String>,
    /// `max-connections`: sessions at once, all protocols together. Default 1000.
    pub max_connections: u32,
    /// `max-connections-per-ip`: sessions at once from one address. Default 50.
    pub max_connections_per_ip: u32,
    /// `max-connections-per-ipv6-net`: sessions at once from one IPv6 /64
    /// (one host's usual share). Default: four times `max_connections_per_ip`.
    pub max_connections_per_ipv6_net: u32,
    /// `max-unauthenticated-connections`: connections at once that have not
    /// logged in; past it, the oldest of them make room for new ones.
    /// Default: half of `max_connections`. At most `max_connections`.
    pub max_unauthenticated_connections: u32,
    /// `login-timeout`: how long a connection may stay without logging in,
    /// from accept (TLS handshakes and failed attempts included). Default 1 minute.
    pub login_timeout: Duration,
    /// `idle-timeout-imap`. Default and minimum 30 minutes.
    pub idle_timeout_imap: Duration,
    /// `idle-timeout-pop3`. Default and minimum 10 minutes.
    pub idle_timeout_pop3: Duration,
    /// `auth-failure-delay`: the pause before answering a failed login. Default 2 s.
    pub auth_failure_delay: Duration,
    /// `auth-workers`: threads that check passwords. Default (`None`): one
    /// per CPU, at most 4 (`auth::pool::default_workers`).
    pub auth_workers: Option<usize>,
    /// `proxy-trusted`: peers whose PROXY protocol header is believed. Default none.
    pub proxy_trusted: Vec<Cidr>,
    /// `log`. Default stderr.
    pub log: LogTarget,
    /// `log-level`. Default info.
    pub log_level: LevelFilter,
    /// `hostname`: the name in greetings. Default: the system's host name.
    pub hostname: String,
    /// `max-message-size` in bytes: larger deliveries and APPENDs are refused. Default 50 MiB.
    pub max_message_size: u64,
    /// `pop3-uidl-format`. Default UW-IMAP's.
    pub pop3_uidl_format: UidlFormat,
    /// `pop3-workarounds`. Default none.
    pub pop3_workarounds: Vec<Pop3Workaround>,
    /// `imap-max-line-length` in bytes, not counting literals. Default 64 KiB.
    pub imap_max_line_length: u64,
    /// `imap-max-literal` in bytes. Default: `max_message_size`.
    pub imap_max_literal: u64,
    /// `imap-max-nesting`: how deep parentheses may nest in an IMAP
    /// command (search keys, lists). Default 32.
    pub imap_max_nesting: u32,
    /// `imap-idle-keepalive`: how often a client in IDLE hears `* OK Still
    /// here`, so that NAT boxes keep the connection. Default 2 minutes.
    pub imap_idle_keepalive: Duration,
    /// `special-use`: the folders every user gets on login, created and
    /// subscribed if missing, with their RFC 6154 attribute. Default Drafts,
    /// Sent, Trash, Junk, Archive; `special-use none` makes none.
    pub special_use: Vec<SpecialUse>,
}

/// One `special-use` line: an RFC 6154 attribute and the folder that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialUse {
    /// `\Sent`, `\Drafts`, `\Trash`, `\Junk`, `\Archive`, `\All` or `\Flagged`.
    pub attribute: String,
    /// The folder name (UTF-8, `/` between levels).
    pub folder: String,
}

/// The attributes RFC 6154 defines.
pub const SPECIAL_USE_ATTRIBUTES: [&str; 7] =
    ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"];

fn default_special_use() -> Vec<SpecialUse> {
    [("\\Drafts", "Drafts"), ("\\Sent", "Sent"), ("\\Trash", "Trash"), ("\\Junk", "Junk"), ("\\Archive", "Archive")]
        .into_iter()
        .map(|(a, f)| SpecialUse { attribute: a.to_string(), folder: f.to_string() })
        .collect()
}

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as it was named to [`Config::load`] or [`Config::parse`].
    pub file: PathBuf,
    /// The line, counting from 1; 0 when the problem is the file as a whole
    /// (it cannot be read).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

impl Error for ConfigError {}

impl Config {
    /// The config that an empty file at `path` gives: every default, with
    /// relative defaults resolved against the directory of `path`.
    pub fn default_for(path: &Path) -> Config {
        let path = absolute(path);
        let dir = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let mut listen = Vec::new();
        for ip in [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)] {
            for protocol in [Protocol::Imap, Protocol::Imaps, Protocol::Pop3, Protocol::Pop3s] {
                listen.push(Listen { protocol, addr: SocketAddr::new(ip, protocol.default_port()) });
            }
        }
        let max_message_size = limits::MAX_MESSAGE_SIZE;
        Config {
            listen,
            tls_cert: dir.join("tls/cert.pem"),
            tls_key: dir.join("tls/key.pem"),
            passwd_file: dir.join("passwd"),
            inbox: PathTemplate("/var/mail/%u".to_string()),
            mail_dir: PathTemplate("%h/mail".to_string()),
            mbox_format: MboxFormat::Mboxrd,
            lock: LockSettings {
                order: vec![LockMethod::Dotlock, LockMethod::Fcntl],
                timeout: limits::MBOX_LOCK_TIMEOUT,
                dotlock_stale: limits::DOTLOCK_STALE,
                dotlock_stale_empty: limits::DOTLOCK_STALE_EMPTY,
            },
            state_dir: PathBuf::from("/var/lib/postroom"),
            plaintext_auth: PlaintextAuth::TlsOrLoopback,
            user: None,
            max_connections: 1000,
            max_connections_per_ip: 50,
            max_connections_per_ipv6_net: 200,
            max_unauthenticated_connections: 500,
            login_timeout: limits::LOGIN_TIMEOUT,
            idle_timeout_imap: MIN_IDLE_TIMEOUT_IMAP,
            idle_timeout_pop3: MIN_IDLE_TIMEOUT_POP3,
            auth_failure_delay: Duration::from_secs(2),
            auth_workers: None,
            proxy_trusted: Vec::new(),
            log: LogTarget::Stderr,
            log_level: LevelFilter::Info,
            hostname: system_hostname(),
            max_message_size,
            pop3_uidl_format: UidlFormat::default(),
            pop3_workarounds: Vec::new(),
            imap_max_line_length: 64 << 10,
            imap_max_literal: max_message_size,
            imap_idle_keepalive: Duration::from_secs(120),
            imap_max_nesting: 32,
            special_use: default_special_use(),
            path,
        }
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                return Err(vec![ConfigError {
                    file: path.to_path_buf(),
                    line: 0,
                    message: format!("cannot read: {e}"),
                }])
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => Config::parse(&text, path),
            Err(e) => {
                // Report each line that is not UTF-8, and parse the others as
                // usual so that their problems are reported too.
                let mut errors = Vec::new();
                let mut text = String::new();
                for (i, line) in e.as_bytes().split(|&b| b == b'\n').enumerate() {
                    if i > 0 {
                        text.push('\n');
                    }
                    match std::str::from_utf8(line) {
                        Ok(l) => text.push_str(l),
                        Err(_) => errors.push(ConfigError {
                            file: path.to_path_buf(),
                            line: i + 1,
                            message: "the line is not valid UTF-8".to_string(),
                        }),
                    }
                }
                if let Err(more) = Config::parse(&text, path) {
                    errors.extend(more);
                }
                errors.sort_by_key(|e| e.line);
                Err(errors)
            }
        }
    }

    /// Parses `text` as the contents of the file `path` (which names the
    /// file in errors and anchors relative paths; it is not read).
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut p = Parser::new(path);
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            p.line(i + 1, line);
        }
        p.finish()
    }

    /// The directory that relative paths in the file are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// Every key, and whether it may appear more than once.
const KEYS: &[(&str, bool)] = &[
    ("listen", true),
    ("tls-cert", false),
    ("tls-key", false),
    ("passwd-file", false),
    ("inbox", false),
    ("mail-dir", false),
    ("state-dir", false),
    ("mbox-format", false),
    ("mbox-lock-order", false),
    ("mbox-lock-timeout", false),
    ("dotlock-stale", false),
    ("dotlock-stale-empty", false),
    ("plaintext-auth", false),
    ("user", false),
    ("max-connections", false),
    ("max-connections-per-ip", false),
    ("max-connections-per-ipv6-net", false),
    ("max-unauthenticated-connections", false),
    ("login-timeout", false),
    ("idle-timeout-imap", false),
    ("idle-timeout-pop3", false),
    ("auth-failure-delay", false),
    ("auth-workers", false),
    ("proxy-trusted", true),
    ("log", false),
    ("log-level", false),
    ("hostname", false),
    ("max-message-size", false),
    ("pop3-uidl-format", false),
    ("pop3-workarounds", false),
    ("imap-max-line-length", false),
    ("imap-max-literal", false),
    ("imap-idle-keepalive", false),
    ("imap-max-nesting", false),
    ("special-use", true),
];

struct Parser {
    /// The file as named by the caller, for messages.
    file: PathBuf,
    /// Absolute directory of the file, for relative paths.
    dir: PathBuf,
    cfg: Config,
    errors: Vec<ConfigError>,
    /// Line on which each singleton key was set.
    seen: HashMap<&'static str, usize>,
    /// The first `special-use` line replaces the default list.
    seen_special_use: bool,
    /// `listen` lines so far, with their line numbers.
    listen: Vec<(Listen, usize)>,
}

impl Parser {
    fn new(file: &Path) -> Parser {
        let cfg = Config::default_for(file);
        let dir = cfg.dir().to_path_buf();
        Parser {
            file: file.to_path_buf(),
            dir,
            cfg,
            errors: Vec::new(),
            seen: HashMap::new(),
            seen_special_use: false,
            listen: Vec::new(),
        }
    }

    fn error(&mut self, line: usize, message: String) {
        self.errors.push(ConfigError { file: self.file.clone(), line, message });
    }

    fn line(&mut self, no: usize, line: &str) {
        let words = match split_words(line) {
            Ok(w) => w,
            Err(m) => return self.error(no, m),
        };
        let Some((key, args)) = words.split_first() else { return };
        let Some(&(key, repeatable)) = KEYS.iter().find(|(k, _)| k == key) else {
            let hint = suggest(key).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
            return self.error(no, format!("unknown key `{key}`{hint}"));
        };
        if !repeatable {
            if let Some(first) = self.seen.get(key) {
                let first = *first;
                return self.error(no, format!("`{key}` is already set on line {first}"));
            }
            self.seen.insert(key, no);
        }
        if let Err(m) = self.apply(no, key, args) {
            self.error(no, m);
        }
    }

    fn apply(&mut self, no: usize, key: &'static str, args: &[String]) -> Result<(), String> {
        let c = &mut self.cfg;
        match key {
            "listen" => {
                let [proto, addr] = args else {
                    return Err(arity(key, args, 2, "a protocol and an address, as in `listen imap 127.0.0.1:143`"));
                };
                let protocol = Protocol::parse(proto)
                    .ok_or_else(|| format!("unknown protocol `{proto}` (known: imap, imaps, pop3, pop3s, lmtp)"))?;
                let addr: SocketAddr = addr.parse().map_err(|_| {
                    format!("`{addr}` is not an address with a port (as in 127.0.0.1:143 or [::1]:143)")
                })?;
                for (other, line) in &self.listen {
                    if overlaps(other.addr, addr) {
                        return Err(format!("{addr} overlaps {} ({}) on line {line}", other.addr, other.protocol));
                    }
                }
                self.listen.push((Listen { protocol, addr }, no));
            }
            "tls-cert" => c.tls_cert = path_value(&self.dir, one(key, args)?)?,
            "tls-key" => c.tls_key = path_value(&self.dir, one(key, args)?)?,
            "passwd-file" => c.passwd_file = path_value(&self.dir, one(key, args)?)?,
            "inbox" => c.inbox = template_value(&self.dir, one(key, args)?)?,
            "mail-dir" => c.mail_dir = template_value(&self.dir, one(key, args)?)?,
            "state-dir" => c.state_dir = path_value(&self.dir, one(key, args)?)?,
            "mbox-format" => {
                let v = one(key, args)?;
                c.mbox_format = MboxFormat::parse(v).ok_or_else(|| format!("expected mboxrd or mboxo, not `{v}`"))?;
            }
            "mbox-lock-order" => {
                let mut order = Vec::new();
                for v in some(key, args)? {
                    let m = match v.as_str() {
                        "dotlock" => LockMethod::Dotlock,
                        "fcntl" => LockMethod::Fcntl,
                        _ => return Err(format!("unknown lock method `{v}` (known: dotlock, fcntl)")),
                    };
                    if order.contains(&m) {
                        return Err(format!("`{v}` is listed twice"));
                    }
                    order.push(m);
                }
                c.lock.order = order;
            }
            "mbox-lock-timeout" => c.lock.timeout = duration(one(key, args)?)?,
            "dotlock-stale" => c.lock.dotlock_stale = at_least(duration(one(key, args)?)?, MIN_DOTLOCK_STALE, "")?,
            "dotlock-stale-empty" => {
                c.lock.dotlock_stale_empty = at_least(duration(one(key, args)?)?, Duration::from_secs(1), "")?
            }
            "plaintext-auth" => {
                let v = one(key, args)?;
                c.plaintext_auth = PlaintextAuth::parse(v)
                    .ok_or_else(|| format!("expected tls-or-loopback, always or never, not `{v}`"))?;
            }
            "user" => {
                let v = one(key, args)?;
                if v.is_empty() {
                    return Err("empty user name".to_string());
                }
                if v.contains(|c: char| c == ':' || c == '/' || c.is_whitespace()) {
                    return Err(format!("`{v}` is not a user name"));
                }
                c.user = Some(v.to_string());
            }
            "max-connections" => c.max_connections = count(one(key, args)?)?,
            "max-connections-per-ip" => c.max_connections_per_ip = count(one(key, args)?)?,
            "max-connections-per-ipv6-net" => c.max_connections_per_ipv6_net = count(one(key, args)?)?,
            "max-unauthenticated-connections" => c.max_unauthenticated_connections = count(one(key, args)?)?,
            "login-timeout" => c.login_timeout = at_least(duration(one(key, args)?)?, Duration::from_secs(1), "")?,
            "idle-timeout-imap" => {
                c.idle_timeout_imap = at_least(duration(one(key, args)?)?, MIN_IDLE_TIMEOUT_IMAP, " (RFC 3501 §5.4)")?
            }
            "idle-timeout-pop3" => {
                c.idle_timeout_pop3 = at_least(duration(one(key, args)?)?, MIN_IDLE_TIMEOUT_POP3, " (RFC 1939 §3)")?
            }
            "auth-failure-delay" => c.auth_failure_delay = duration(one(key, args)?)?,
            "auth-workers" => {
                let v = one(key, args)?;
                let max = crate::auth::pool::MAX_WORKERS;
                match count(v) {
                    Ok(n) if n as usize <= max => c.auth_workers = Some(n as usize),
                    _ => return Err(format!("`{v}` is not a whole number from 1 to {max}")),
                }
            }
            "proxy-trusted" => {
                for v in some(key, args)? {
                    let cidr = Cidr::parse(v)?;
                    if !c.proxy_trusted.contains(&cidr) {
                        c.proxy_trusted.push(cidr);
                    }
                }
            }
            "log" => {
                c.log = match one(key, args)? {
                    "stderr" => LogTarget::Stderr,
                    "syslog" => LogTarget::Syslog,
                    v if v.contains('/') => LogTarget::File(path_value(&self.dir, v)?),
                    v => {
                        return Err(format!(
                            "expected stderr, syslog or a file path with a `/` (as in ./{v}), not `{v}`"
                        ))
                    }
                }
            }
            "log-level" => {
                c.log_level = match one(key, args)? {
                    "error" => LevelFilter::Error,
                    "warn" => LevelFilter::Warn,
                    "info" => LevelFilter::Info,
                    "debug" => LevelFilter::Debug,
                    "trace" => LevelFilter::Trace,
                    v => return Err(format!("expected error, warn, info, debug or trace, not `{v}`")),
                }
            }
            "hostname" => {
                let v = one(key, args)?;
                if !valid_hostname(v) {
                    return Err(format!("`{v}` is not a host name"));
                }
                c.hostname = v.to_string();
            }
            "max-message-size" => c.max_message_size = nonzero(size(one(key, args)?)?)?,
            "pop3-uidl-format" => c.pop3_uidl_format = UidlFormat::parse(one(key, args)?)?,
            "pop3-workarounds" => {
                let mut list = Vec::new();
                for v in some(key, args)? {
                    let w = Pop3Workaround::parse(v)
                        .ok_or_else(|| format!("unknown workaround `{v}` (known: outlook-no-nuls)"))?;
                    if list.contains(&w) {
                        return Err(format!("`{v}` is listed twice"));
                    }
                    list.push(w);
                }
                c.pop3_workarounds = list;
            }
            "imap-max-line-length" => {
                let n = size(one(key, args)?)?;
                if n < MIN_IMAP_LINE_LENGTH {
                    return Err(format!("must be at least {MIN_IMAP_LINE_LENGTH} bytes (RFC 7162 §4)"));
                }
                c.imap_max_line_length = n;
            }
            "imap-max-literal" => c.imap_max_literal = nonzero(size(one(key, args)?)?)?,
            "imap-max-nesting" => {
                let v = one(key, args)?;
                match v.parse::<u32>() {
                    Ok(n) if (4..=100).contains(&n) => c.imap_max_nesting = n,
                    _ => return Err(format!("`{v}` is not a nesting depth from 4 to 100")),
                }
            }
            "imap-idle-keepalive" => {
                let d = at_least(duration(one(key, args)?)?, Duration::from_secs(1), "")?;
                if d > Duration::from_secs(30 * 60) {
                    return Err("must be at most 30m: clients in IDLE are logged out after 30 minutes".into());
                }
                c.imap_idle_keepalive = d;
            }
            "special-use" => {
                if !self.seen_special_use {
                    self.seen_special_use = true;
                    c.special_use.clear();
                }
                match args {
                    [none] if none.eq_ignore_ascii_case("none") => {}
                    [attr, folder] => {
                        let Some(a) = SPECIAL_USE_ATTRIBUTES.iter().find(|a| a.eq_ignore_ascii_case(attr)) else {
                            return Err(format!(
                                "unknown special-use attribute `{attr}` (known: {})",
                                SPECIAL_USE_ATTRIBUTES.join(" ")
                            ));
                        };
                        if folder.eq_ignore_ascii_case("INBOX")
                            || folder.starts_with('/')
                            || folder.split('/').any(|p| p.is_empty() || p == "." || p == "..")
                        {
                            return Err(format!("`{folder}` cannot be a special-use folder"));
                        }
                        if c.special_use.iter().any(|s| s.attribute == *a) {
                            return Err(format!("{a} is given twice"));
                        }
                        c.special_use.push(SpecialUse { attribute: a.to_string(), folder: folder.to_string() });
                    }
                    _ => {
                        return Err("needs an attribute and a folder, as in `special-use \\Sent Sent`, or `none`".into())
                    }
                }
            }
            _ => return Err(format!("unknown key `{key}`")),
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Config, Vec<ConfigError>> {
        if !self.listen.is_empty() {
            self.cfg.listen = self.listen.iter().map(|(l, _)| l.clone()).collect();
        }
        if !self.seen.contains_key("imap-max-literal") {
            self.cfg.imap_max_literal = self.cfg.max_message_size;
        }
        if !self.seen.contains_key("max-connections-per-ipv6-net") {
            self.cfg.max_connections_per_ipv6_net = self.cfg.max_connections_per_ip.saturating_mul(4);
        }
        match self.seen.get("max-unauthenticated-connections") {
            None => self.cfg.max_unauthenticated_connections = self.cfg.max_connections.div_ceil(2),
            Some(&line) if self.cfg.max_unauthenticated_connections > self.cfg.max_connections => {
                let max = self.cfg.max_connections;
                self.error(line, format!("must be at most max-connections ({max})"));
            }
            Some(_) => {}
        }
        if self.errors.is_empty() {
            Ok(self.cfg)
        } else {
            self.errors.sort_by_key(|e| e.line);
            Err(self.errors)
        }
    }
}

/// Splits a line into words: blanks separate, `#` at the start of a word
/// begins a comment, and `"..."` is one word (with `\"` and `\\` escapes).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
        return Err(format!("control character U+{:04X} in the line", u32::from(c)));
    }
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(words),
            Some('"') => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted value".to_string()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => return Err(format!("unknown escape `\\{c}` (only \\\" and \\\\ are known)")),
                            None => return Err("unterminated quoted value".to_string()),
                        },
                        Some(c) => word.push(c),
                    }
                }
                if chars.peek().is_some_and(|&c| c != ' ' && c != '\t') {
                    return Err("a closing quote must be followed by a space or the end of the line".to_string());
                }
                words.push(word);
            }
            Some(_) => {
                let mut word = String::new();
                while let Some(c) = chars.next_if(|&c| c != ' ' && c != '\t') {
                    if c == '"' {
                        return Err(format!("quote inside `{word}\"...`: quote the whole value"));
                    }
                    word.push(c);
                }
                words.push(word);
            }
        }
    }
}

/// A known key close to an unknown one, for the error message.
fn suggest(key: &str) -> Option<&'static str> {
    let normal = key.to_ascii_lowercase().replace('_', "-");
    KEYS.iter().map(|(k, _)| *k).find(|k| k.len().abs_diff(normal.len()) <= 2 && edit_distance(k, &normal) <= 2)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn arity(key: &str, args: &[String], want: usize, what: &str) -> String {
    if args.len() < want {
        format!("missing value for `{key}`: it takes {what}")
    } else {
        format!("extra value `{}` after `{key}`: it takes {what}", args[want])
    }
}

/// The single value of a key.
fn one<'a>(key: &str, args: &'a [String]) -> Result<&'a str, String> {
    match args {
        [v] => Ok(v),
        _ => Err(arity(key, args, 1, "one value")),
    }
}

/// The values of a key that takes a list.
fn some<'a>(key: &str, args: &'a [String]) -> Result<&'a [String], String> {
    if args.is_empty() {
        Err(format!("missing value for `{key}`: it takes one or more values"))
    } else {
        Ok(args)
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path))
    }
}

fn path_value(dir: &Path, v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("empty path".to_string());
    }
    Ok(dir.join(v))
}

/// A template, made absolute: one that starts with neither `/` nor `%h` is
/// relative to the config file's directory.
fn template_value(dir: &Path, v: &str) -> Result<PathTemplate, String> {
    let t = PathTemplate::parse(v)?;
    if v.starts_with('/') || v.starts_with("%h") {
        return Ok(t);
    }
    let Some(d) = dir.to_str() else {
        return Err(format!("the config file's directory is not UTF-8, so `{v}` must be absolute"));
    };
    let d = d.replace('%', "%%");
    let sep = if d.ends_with('/') { "" } else { "/" };
    Ok(PathTemplate(format!("{d}{sep}{v}")))
}

/// Splits `30m` into (30, "m").
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

/// An integer with an optional unit s, m, h or d; no unit means seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration (a whole number with s, m, h or d, as in 30s or 10m)");
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale).map(Duration::from_secs) {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("`{s}` is too long (at most 365d)")),
    }
}

fn at_least(d: Duration, min: Duration, why: &str) -> Result<Duration, String> {
    if d < min {
        Err(format!("must be at least {}{why}", format_duration(min)))
    } else {
        Ok(d)
    }
}

/// A duration as the config file writes it, in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, scale) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s != 0 && s % scale == 0 {
            return format!("{}{unit}", s / scale);
        }
    }
    format!("{s}s")
}

/// An integer with an optional binary unit K, M or G (either case).
fn size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size (a whole number of bytes, or with K, M or G, as in 64K)");
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

fn nonzero(n: u64) -> Result<u64, String> {
    if n == 0 {
        Err("must not be zero".to_string())
    } else {
        Ok(n)
    }
}

fn count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 && !s.starts_with('+') => Ok(n),
        _ => Err(format!("`{s}` is not a whole number from 1 to {}", u32::MAX)),
    }
}

/// True when binding both addresses would fail or be ambiguous: same port,
/// same family, and the same address or a wildcard on either side. (IPv6
/// wildcards are bound IPv6-only, so they do not collide with IPv4 ones.)
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        && a.port() != 0
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63, at most 253 in all.
fn valid_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// gethostname(2), or `localhost` when it fails or gives something odd.
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if valid_hostname(h) => h.to_string(),
        _ => "localhost".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = "/etc/postroom/postroom.conf";

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, Path::new(FILE))
    }

    fn defaults() -> Config {
        Config::default_for(Path::new(FILE))
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    /// (input, change to the defaults that the input makes).
    #[allow(clippy::type_complexity)]
    const VALUES: &[(&str, fn(&mut Config))] = &[
        ("", |_| {}),
        ("\n\n   \n\t\n", |_| {}),
        ("# only a comment\n  # indented comment", |_| {}),
        ("mbox-format mboxo", |c| c.mbox_format = MboxFormat::Mboxo),
        ("mbox-format mboxrd # the default", |_| {}),
        ("mbox-format\tmboxo\r\n", |c| c.mbox_format = MboxFormat::Mboxo),
        ("listen imap 127.0.0.1:10143", |c| {
            c.listen = vec![Listen { protocol: Protocol::Imap, addr: v4([127, 0, 0, 1], 10143) }]
        }),
        ("listen pop3s [::1]:995\nlisten lmtp 127.0.0.1:24", |c| {
            c.listen = vec![
                Listen { protocol: Protocol::Pop3s, addr: "[::1]:995".parse().unwrap() },
                Listen { protocol: Protocol::Lmtp, addr: v4([127, 0, 0, 1], 24) },
            ]
        }),
        ("listen imap 0.0.0.0:143\nlisten imap [::]:143", |c| {
            c.listen = vec![
                Listen { protocol: Protocol::Imap, addr: v4([0, 0, 0, 0], 143) },
                Listen { protocol: Protocol::Imap, addr: "[::]:143".parse().unwrap() },
            ]
        }),
        ("tls-cert /srv/tls/cert.pem", |c| c.tls_cert = PathBuf::from("/srv/tls/cert.pem")),
        ("tls-key key.pem", |c| c.tls_key = PathBuf::from("/etc/postroom/key.pem")),
        ("passwd-file ../passwd", |c| c.passwd_file = PathBuf::from("/etc/postroom/../passwd")),
        ("state-dir \"/var/lib/post room\"", |c| c.state_dir = PathBuf::from("/var/lib/post room")),
        ("state-dir \"a \\\"b\\\" \\\\c\"", |c| c.state_dir = PathBuf::from("/etc/postroom/a \"b\" \\c")),
        ("inbox spool/%u", |c| c.inbox = PathTemplate("/etc/postroom/spool/%u".into())),
        ("inbox /var/spool/mail/%u", |c| c.inbox = PathTemplate("/var/spool/mail/%u".into())),
        ("mail-dir %h/Mail", |c| c.mail_dir = PathTemplate("%h/Mail".into())),
        ("mail-dir /srv/mail/%u/100%%", |c| c.mail_dir = PathTemplate("/srv/mail/%u/100%%".into())),
        ("mail-dir a#b", |c| c.mail_dir = PathTemplate("/etc/postroom/a#b".into())),
        ("mail-dir \"#x\"", |c| c.mail_dir = PathTemplate("/etc/postroom/#x".into())),
        ("mbox-lock-order fcntl", |c| c.lock.order = vec![LockMethod::Fcntl]),
        ("mbox-lock-order fcntl dotlock", |c| c.lock.order = vec![LockMethod::Fcntl, LockMethod::Dotlock]),
        ("mbox-lock-timeout 2m", |c| c.lock.timeout = Duration::from_secs(120)),
        ("mbox-lock-timeout 0", |c| c.lock.timeout = Duration::ZERO),
        ("dotlock-stale 1h", |c| c.lock.dotlock_stale = Duration::from_secs(3600)),
        ("dotlock-stale-empty 3s", |c| c.lock.dotlock_stale_empty = Duration::from_secs(3)),
        ("plaintext-auth always", |c| c.plaintext_auth = PlaintextAuth::Always),
        ("plaintext-auth never", |c| c.plaintext_auth = PlaintextAuth::Never),
        ("user vmail", |c| c.user = Some("vmail".into())),
        ("max-connections 5\nmax-connections-per-ip 2", |c| {
            c.max_connections = 5;
            c.max_connections_per_ip = 2;
            c.max_connections_per_ipv6_net = 8;
            c.max_unauthenticated_connections = 3;
        }),
        ("max-connections-per-ipv6-net 7\nmax-connections 10\nmax-unauthenticated-connections 10", |c| {
            c.max_connections = 10;
            c.max_connections_per_ipv6_net = 7;
            c.max_unauthenticated_connections = 10;
        }),
        ("login-timeout 2s", |c| c.login_timeout = Duration::from_secs(2)),
        ("idle-timeout-imap 1h", |c| c.idle_timeout_imap = Duration::from_secs(3600)),
        ("idle-timeout-imap 1800", |_| {}),
        ("idle-timeout-pop3 1d", |c| c.idle_timeout_pop3 = Duration::from_secs(86400)),
        ("auth-failure-delay 0s", |c| c.auth_failure_delay = Duration::ZERO),
        ("auth-workers 1", |c| c.auth_workers = Some(1)),
        ("auth-workers 64", |c| c.auth_workers = Some(64)),
        ("proxy-trusted 10.0.0.0/8 ::1\nproxy-trusted 192.168.1.7 10.0.0.0/8", |c| {
            c.proxy_trusted = vec![
                Cidr { addr: "10.0.0.0".parse().unwrap(), prefix: 8 },
                Cidr { addr: "::1".parse().unwrap(), prefix: 128 },
                Cidr { addr: "192.168.1.7".parse().unwrap(), prefix: 32 },
            ]
        }),
        ("log syslog", |c| c.log = LogTarget::Syslog),
        ("log ./postroom.log", |c| c.log = LogTarget::File(PathBuf::from("/etc/postroom/./postroom.log"))),
        ("log /var/log/postroom.log", |c| c.log = LogTarget::File(PathBuf::from("/var/log/postroom.log"))),
        ("log-level trace", |c| c.log_level = LevelFilter::Trace),
        ("hostname mail.example.org", |c| c.hostname = "mail.example.org".into()),
        ("max-message-size 10M", |c| {
            c.max_message_size = 10 << 20;
            c.imap_max_literal = 10 << 20;
        }),
        ("max-message-size 1g\nimap-max-literal 512k", |c| {
            c.max_message_size = 1 << 30;
            c.imap_max_literal = 512 << 10;
        }),
        ("pop3-uidl-format dovecot", |c| c.pop3_uidl_format = UidlFormat::parse("%08Xu%08Xv").unwrap()),
        ("pop3-uidl-format %v.%u", |c| c.pop3_uidl_format = UidlFormat::parse("%v.%u").unwrap()),
        ("pop3-workarounds outlook-no-nuls", |c| c.pop3_workarounds = vec![Pop3Workaround::OutlookNoNuls]),
        ("imap-max-line-length 8000", |c| c.imap_max_line_length = 8000),
    ];

    #[test]
    fn values() {
        for (input, change) in VALUES {
            let mut want = defaults();
            change(&mut want);
            match parse(input) {
                Ok(got) => assert_eq!(got, want, "input {input:?}"),
                Err(e) => panic!("input {input:?}: unexpected errors {e:?}"),
            }
        }
    }

    /// (input, expected errors as (line, message)).
    const ERRORS: &[(&str, &[(usize, &str)])] = &[
        // unknown key
        ("bogus 1", &[(1, "unknown key `bogus`")]),
        ("\n\nmail_dir x", &[(3, "unknown key `mail_dir` (did you mean `mail-dir`?)")]),
        ("idle-timeout-imp 30m", &[(1, "unknown key `idle-timeout-imp` (did you mean `idle-timeout-imap`?)")]),
        // missing value
        ("inbox", &[(1, "missing value for `inbox`: it takes one value")]),
        ("inbox # comment", &[(1, "missing value for `inbox`: it takes one value")]),
        ("\nmbox-lock-order", &[(2, "missing value for `mbox-lock-order`: it takes one or more values")]),
        (
            "listen imap",
            &[(1, "missing value for `listen`: it takes a protocol and an address, as in `listen imap 127.0.0.1:143`")],
        ),
        // extra values
        ("inbox a b", &[(1, "extra value `b` after `inbox`: it takes one value")]),
        (
            "listen imap 127.0.0.1:143 x",
            &[(
                1,
                "extra value `x` after `listen`: it takes a protocol and an address, as in `listen imap 127.0.0.1:143`",
            )],
        ),
        ("state-dir /var/lib/post room", &[(1, "extra value `room` after `state-dir`: it takes one value")]),
        // duplicate singleton key
        ("inbox a\n# x\ninbox b", &[(3, "`inbox` is already set on line 1")]),
        (
            "log-level info\nlog-level info\nlog-level debug",
            &[(2, "`log-level` is already set on line 1"), (3, "`log-level` is already set on line 1")],
        ),
        // bad values
        ("mbox-format mbox", &[(1, "expected mboxrd or mboxo, not `mbox`")]),
        ("listen smtp 127.0.0.1:25", &[(1, "unknown protocol `smtp` (known: imap, imaps, pop3, pop3s, lmtp)")]),
        (
            "listen imap 127.0.0.1",
            &[(1, "`127.0.0.1` is not an address with a port (as in 127.0.0.1:143 or [::1]:143)")],
        ),
        ("listen imap ::1:143", &[(1, "`::1:143` is not an address with a port (as in 127.0.0.1:143 or [::1]:143)")]),
        (
            "listen imap 127.0.0.1:143\nlisten pop3 127.0.0.1:143",
            &[(2, "127.0.0.1:143 overlaps 127.0.0.1:143 (imap) on line 1")],
        ),
        (
            "listen imap 0.0.0.0:143\nlisten imap 127.0.0.1:143",
            &[(2, "127.0.0.1:143 overlaps 0.0.0.0:143 (imap) on line 1")],
        ),
        ("mbox-lock-order dotlock flock", &[(1, "unknown lock method `flock` (known: dotlock, fcntl)")]),
        ("mbox-lock-order fcntl fcntl", &[(1, "`fcntl` is listed twice")]),
        ("mbox-lock-timeout 30", &[]),
        (
            "mbox-lock-timeout 30x",
            &[(1, "`30x` is not a duration (a whole number with s, m, h or d, as in 30s or 10m)")],
        ),
        ("mbox-lock-timeout m", &[(1, "`m` is not a duration (a whole number with s, m, h or d, as in 30s or 10m)")]),
        (
            "mbox-lock-timeout -1s",
            &[(1, "`-1s` is not a duration (a whole number with s, m, h or d, as in 30s or 10m)")],
        ),
        ("mbox-lock-timeout 366d", &[(1, "`366d` is too long (at most 365d)")]),
        (
            "mbox-lock-timeout 99999999999999999999",
            &[(1, "`99999999999999999999` is not a duration (a whole number with s, m, h or d, as in 30s or 10m)")],
        ),
        ("dotlock-stale 30s", &[(1, "must be at least 1m")]),
        ("idle-timeout-imap 29m", &[(1, "must be at least 30m (RFC 3501 §5.4)")]),
        ("idle-timeout-pop3 599", &[(1, "must be at least 10m (RFC 1939 §3)")]),
        ("plaintext-auth yes", &[(1, "expected tls-or-loopback, always or never, not `yes`")]),
        ("max-connections 0", &[(1, "`0` is not a whole number from 1 to 4294967295")]),
        ("max-unauthenticated-connections 11\nmax-connections 10", &[(1, "must be at most max-connections (10)")]),
        ("max-unauthenticated-connections 0", &[(1, "`0` is not a whole number from 1 to 4294967295")]),
        ("login-timeout 0", &[(1, "must be at least 1s")]),
        ("max-connections-per-ip lots", &[(1, "`lots` is not a whole number from 1 to 4294967295")]),
        ("auth-workers 0", &[(1, "`0` is not a whole number from 1 to 64")]),
        ("auth-workers 65", &[(1, "`65` is not a whole number from 1 to 64")]),
        (
            "proxy-trusted 10.0.0.1/8",
            &[(1, "`10.0.0.1/8` has bits set past the /8 prefix (the network is 10.0.0.0/8)")],
        ),
        ("proxy-trusted 10.0.0.0/33", &[(1, "`10.0.0.0/33`: the prefix length must be a number from 0 to 32")]),
        ("proxy-trusted example.org", &[(1, "`example.org` is not an IP address or network")]),
        ("proxy-trusted", &[(1, "missing value for `proxy-trusted`: it takes one or more values")]),
        ("log stdout", &[(1, "expected stderr, syslog or a file path with a `/` (as in ./stdout), not `stdout`")]),
        ("log-level verbose", &[(1, "expected error, warn, info, debug or trace, not `verbose`")]),
        ("hostname bad_host!", &[(1, "`bad_host!` is not a host name")]),
        ("user \"\"", &[(1, "empty user name")]),
        ("user \"mail man\"", &[(1, "`mail man` is not a user name")]),
        ("hostname a..b", &[(1, "`a..b` is not a host name")]),
        ("max-message-size 10T", &[(1, "`10T` is not a size (a whole number of bytes, or with K, M or G, as in 64K)")]),
        ("max-message-size 0", &[(1, "must not be zero")]),
        ("max-message-size 99999999999999G", &[(1, "`99999999999999G` is too large")]),
        ("imap-max-line-length 4k", &[(1, "must be at least 8000 bytes (RFC 7162 §4)")]),
        ("pop3-uidl-format %v", &[(1, "`%v` has no %u: every message would get the same UIDL")]),
        ("pop3-uidl-format %8u", &[(1, "`%8` in `%8u`: a width needs a leading 0 (zero padding), as in %08Xu")]),
        ("pop3-uidl-format %m", &[(1, "unknown `%m` in `%m` (known: %u UID, %v UIDVALIDITY, %% percent)")]),
        ("pop3-uidl-format \"%u x\"", &[(1, "` ` in `%u x`: a UIDL may hold only printable ASCII without spaces")]),
        (
            "pop3-uidl-format %020Xu%020Xv%020Xu%020Xv",
            &[(1, "`%020Xu%020Xv%020Xu%020Xv` can make UIDLs of 80 characters; RFC 1939 allows 70")],
        ),
        ("pop3-workarounds outlook-no-nuls outlook-no-nuls", &[(1, "`outlook-no-nuls` is listed twice")]),
        ("pop3-workarounds thunderbird", &[(1, "unknown workaround `thunderbird` (known: outlook-no-nuls)")]),
        ("inbox %d/%u", &[(1, "unknown `%d` in `%d/%u` (known: %u user, %h home, %% percent)")]),
        ("inbox /var/mail/%", &[(1, "`/var/mail/%` ends in a lone `%` (write %% for a percent sign)")]),
        ("inbox \"\"", &[(1, "empty path")]),
        // lexical errors
        ("inbox \"/var/mail", &[(1, "unterminated quoted value")]),
        ("inbox \"/var\"mail", &[(1, "a closing quote must be followed by a space or the end of the line")]),
        ("inbox /var\"mail\"", &[(1, "quote inside `/var\"...`: quote the whole value")]),
        ("inbox \"\\n\"", &[(1, "unknown escape `\\n` (only \\\" and \\\\ are known)")]),
        ("inbox /var/\u{1}x", &[(1, "control character U+0001 in the line")]),
        // all errors are collected, in line order
        (
            "bogus\nmbox-format x\n\ninbox\ninbox a b",
            &[
                (1, "unknown key `bogus`"),
                (2, "expected mboxrd or mboxo, not `x`"),
                (4, "missing value for `inbox`: it takes one value"),
                (5, "`inbox` is already set on line 4"),
            ],
        ),
    ];

    #[test]
    fn errors() {
        for (input, want) in ERRORS {
            let got: Vec<(usize, String)> = match parse(input) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.into_iter().map(|e| (e.line, e.message)).collect(),
            };
            let want: Vec<(usize, String)> = want.iter().map(|(l, m)| (*l, m.to_string())).collect();
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn error_display() {
        let errors = Config::parse("x y", Path::new("etc/p.conf")).unwrap_err();
        assert_eq!(errors[0].to_string(), "etc/p.conf:1: unknown key `x`");
        let missing = Config::load(Path::new("/nonexistent/postroom.conf")).unwrap_err();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].line, 0);
        assert!(missing[0].to_string().starts_with("/nonexistent/postroom.conf: cannot read: "), "{}", missing[0]);
    }

    #[test]
    fn load_reports_lines_that_are_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postroom.conf");
        fs::write(&path, b"log-level info\ninbox /var/mail/\xff%u\nbogus\n").unwrap();
        let errors = Config::load(&path).unwrap_err();
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(got, [(2, "the line is not valid UTF-8"), (3, "unknown key `bogus`")]);
    }

    #[test]
    fn relative_config_path_is_made_absolute() {
        let c = Config::parse("inbox spool/%u\nstate-dir state", Path::new("etc/postroom.conf")).unwrap();
        let dir = env::current_dir().unwrap().join("etc");
        assert_eq!(c.path, dir.join("postroom.conf"));
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(c.inbox.0, format!("{}/spool/%u", dir.display()));
        assert_eq!(c.passwd_file, dir.join("passwd"));
    }

    #[test]
    fn percent_in_config_directory_is_escaped() {
        let c = Config::parse("inbox spool/%u", Path::new("/srv/100%/postroom.conf")).unwrap();
        assert_eq!(c.inbox.expand("alice", None), PathBuf::from("/srv/100%/spool/alice"));
    }

    #[test]
    fn defaults_are_documented_ones() {
        let c = defaults();
        assert_eq!(c.listen.len(), 8);
        assert!(c.listen.contains(&Listen { protocol: Protocol::Imaps, addr: v4([0, 0, 0, 0], 993) }));
        assert_eq!(c.inbox.expand("bob", None), PathBuf::from("/var/mail/bob"));
        assert_eq!(c.mail_dir.expand("bob", Some(Path::new("/home/bob"))), PathBuf::from("/home/bob/mail"));
        assert_eq!(c.lock, LockSettings::default());
        assert_eq!(c.idle_timeout_imap, Duration::from_secs(1800));
        assert_eq!(c.idle_timeout_pop3, Duration::from_secs(600));
        assert_eq!(c.login_timeout, Duration::from_secs(60));
        assert_eq!(c.max_unauthenticated_connections, 500);
        assert_eq!(c.max_connections_per_ipv6_net, 200);
        assert_eq!(c.max_message_size, 50 * 1024 * 1024);
        assert_eq!(c.imap_max_literal, c.max_message_size);
        assert_eq!(c.imap_max_line_length, 65536);
        assert_eq!(c.pop3_uidl_format.as_str(), "%08Xv%08Xu");
        assert!(valid_hostname(&c.hostname));
    }

    #[test]
    fn templates() {
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            ("/var/mail/%u", "alice", None, Some("/var/mail/alice")),
            ("%h/mail", "alice", Some("/home/alice"), Some("/home/alice/mail")),
            ("%h/mail", "alice", None, None),
            ("/m/%u/%u%%", "a", None, Some("/m/a/a%")),
            ("/plain", "a", None, Some("/plain")),
        ];
        for (t, user, home, want) in cases {
            let t = PathTemplate::parse(t).unwrap();
            assert_eq!(t.try_expand(user, home.map(Path::new)), want.map(PathBuf::from), "{t}");
        }
        assert_eq!(
            PathTemplate("%h/mail".into()).expand("a", None),
            PathBuf::from("/nonexistent/mail"),
            "no home names nothing"
        );
    }

    #[test]
    fn uidl_render() {
        let cases: &[(&str, u32, u32, &str)] = &[
            ("uw", 0x4a3b2c1d, 42, "4a3b2c1d0000002a"),
            ("dovecot", 0x4a3b2c1d, 42, "0000002a4a3b2c1d"),
            ("%v.%u", 1234, 5, "1234.5"),
            ("%v-%u", 1, 2, "1-2"),
            ("x%%%05u", 1, 2, "x%00002"),
            ("%Xu", 1, 255, "ff"),
            ("%08Xv%08Xu", u32::MAX, u32::MAX, "ffffffffffffffff"),
        ];
        for (fmt, v, u, want) in cases {
            assert_eq!(UidlFormat::parse(fmt).unwrap().render(*v, *u), *want, "{fmt}");
        }
    }

    #[test]
    fn cidr_contains() {
        let net = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(net.contains("192.168.7.1".parse().unwrap()));
        assert!(net.contains("::ffff:192.168.7.1".parse().unwrap()));
        assert!(!net.contains("192.169.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(Cidr::parse("::/0").unwrap().to_string(), "::/0");
    }

    #[test]
    fn durations_print_as_written() {
        for (d, s) in [(0, "0s"), (45, "45s"), (120, "2m"), (3600, "1h"), (90000, "25h"), (172800, "2d")] {
            assert_eq!(format_duration(Duration::from_secs(d)), s);
            assert_eq!(duration(s).unwrap(), Duration::from_secs(d));
        }
    }

    #[test]
    fn listen_displays_as_written() {
        let l = Listen { protocol: Protocol::Pop3s, addr: "[::1]:995".parse().unwrap() };
        assert_eq!(l.to_string(), "pop3s [::1]:995");
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::parse(p.name()), Some(p));
        }
        assert_eq!(Protocol::parse("IMAP"), None);
    }

    #[test]
    fn sample_config_parses_clean() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/postroom.conf");
        let c = match Config::load(&path) {
            Ok(c) => c,
            Err(errors) => panic!("{}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")),
        };
        let etc = path.parent().unwrap();
        assert_eq!(c.listen[0], Listen { protocol: Protocol::Imap, addr: v4([127, 0, 0, 1], 10143) });
        assert!(c.listen.iter().all(|l| l.addr.ip().is_loopback()));
        assert_eq!(c.passwd_file, etc.join("passwd"));
        assert_eq!(c.inbox.expand("alice", None), etc.join("../var/spool/alice"));
        assert_eq!(c.state_dir, etc.join("../var/state"));
        assert_eq!(c.plaintext_auth, PlaintextAuth::TlsOrLoopback);
    }

    /// Lines made of real keys and plausible values, to reach past the key lookup.
    fn config_line() -> impl Strategy<Value = String> {
        let key = prop::sample::select(KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        let word = prop_oneof![
            "[a-z0-9%/.:\\[\\]#\"\\\\-]{0,12}",
            Just("127.0.0.1:143".to_string()),
            Just("imap".to_string()),
            Just("\"a b\"".to_string()),
            "[0-9]{1,22}[smhdKMGk]?",
        ];
        (key, prop::collection::vec(word, 0..4)).prop_map(|(k, ws)| format!("{k} {}", ws.join(" ")))
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_text(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn parse_never_panics_on_config_lines(lines in prop::collection::vec(config_line(), 0..12)) {
            let text = lines.join("\n");
            if let Err(errors) = parse(&text) {
                for e in errors {
                    prop_assert!(e.line >= 1 && e.line <= lines.len().max(1), "{e}");
                }
            }
        }
    }
}

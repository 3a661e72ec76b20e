//! Every limit and timeout, each with its reason.

use std::time::Duration;

/// A dotlock older than this belongs to a dead program (Postfix and
/// procmail use about five minutes as well).
pub const DOTLOCK_STALE: Duration = Duration::from_secs(5 * 60);

/// An empty or unparseable dotlock is stale after this: a process killed
/// between creating the lock and writing its pid into it left it, and
/// nothing tells whether its owner lives. Short enough that a delivery
/// waiting the default lock timeout (30 s) still gets through; the fcntl
/// lock taken after the dotlock still keeps out a live writer that left its
/// dotlock empty (Postfix does).
pub const DOTLOCK_STALE_EMPTY: Duration = Duration::from_secs(10);

/// How long to wait for a mailbox lock before giving up (delivery then
/// exits EX_TEMPFAIL and the MTA tries again later).
pub const MBOX_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest message accepted by delivery and APPEND unless configured.
pub const MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// How long a connection may go without logging in, counted from accept
/// (TLS handshakes, STARTTLS and failed attempts included): a real client
/// logs in within seconds, and each place held by a connection that does
/// not is a place a user cannot have. Dovecot allows about three minutes.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line before login (POP3 commands and SASL responses, the
/// text of an IMAP command). The longest a login needs is SASL PLAIN with
/// its initial response on the command line: base64 of an authorization
/// identity and a user name of [`crate::auth::MAX_USER_LEN`] each and a
/// password of [`crate::auth::MAX_PASSWORD_LEN`], 2052 octets. RFC 2449
/// §4 gives POP3 commands 255 octets; RFC 5034 lets SASL responses be longer.
pub const PRELOGIN_LINE: usize = 4096;

/// The largest IMAP literal before login: a password
/// ([`crate::auth::MAX_PASSWORD_LEN`]) sent as a literal. RFC 3501 §7.1
/// and RFC 7888 §4 let a server refuse literals it will not take.
pub const PRELOGIN_LITERAL: u64 = 1024;

/// All literals of one IMAP command before login together: a user name
/// and a password. With [`PRELOGIN_LINE`], a command before login holds
/// at most 6 KiB.
pub const PRELOGIN_LITERALS: u64 = 2048;

/// After login a command must arrive whole within the idle timeout from
/// its first byte, plus one second for every this many bytes of literal
/// data it announces: slower than a 9600 bit/s modem, so an upload that
/// keeps moving is never cut off, while one that crawls forever ends.
pub const MIN_LITERAL_RATE: u64 = 1024;

/// RFC 3501 §6.3.8 and RFC 9051 §6.3.9 set no length on a LIST pattern.
/// A mailbox name is at most 1024 bytes (store::names::MAX_NAME_BYTES;
/// its modified UTF-7 form a little more), so a pattern, reference
/// included, four times that long names nothing a client means.
pub const LIST_PATTERN_MAX_BYTES: usize = 4096;

/// Wildcards (`*`, `%`) in one LIST pattern: a `%` for every level of
/// the deepest hierarchy (32, store::names::MAX_DEPTH) twice over. The
/// matcher's work is the length of a name times their number.
pub const LIST_PATTERN_MAX_WILDCARDS: usize = 64;

/// What one session holds of a reply at a time, whatever the size of the
/// message or the number of items asked for: replies are produced in
/// batches of at most this much and written out between them (RFC 3501
/// sets no limit on what a FETCH may ask for).
pub const REPLY_BUDGET: usize = 2 << 20;

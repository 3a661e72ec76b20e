//! Every limit and timeout, each with its reason.

use std::time::Duration;

/// A dotlock older than this belongs to a dead program (Postfix and
/// procmail use about five minutes as well).
pub const DOTLOCK_STALE: Duration = Duration::from_secs(5 * 60);

/// How long to wait for a mailbox lock before giving up (delivery then
/// exits EX_TEMPFAIL and the MTA tries again later).
pub const MBOX_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest message accepted by delivery and APPEND unless configured.
pub const MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

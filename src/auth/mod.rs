//! Accounts: the passwd-file (Dovecot-compatible) and system accounts.

pub mod passwd;

pub use passwd::{Account, PasswdFile};

//! postroom: a POP3 and IMAP server for mbox mailboxes.
//!
//! The crate is laid out as `DESIGN.md` describes: `config` reads
//! postroom.conf(5), `store` owns the mbox files (parsing, locking, the
//! shared index, crash-safe writes), and `deliver` is the local delivery
//! agent that the MTA runs.

pub mod admin;
pub mod auth;
pub mod config;
pub mod deliver;
pub mod imap;
pub mod limits;
pub mod logging;
pub mod net;
pub mod pop3;
pub mod server;
pub mod store;

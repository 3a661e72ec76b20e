//! IMAP4rev1 (RFC 3501) with the extensions modern clients use.
//!
//! Reading frames a command (line and literals, under limits), the parser
//! turns it into a [`command::Command`], and the session executes it
//! against the shared mailbox index of `store`.

pub mod command;
pub mod response;

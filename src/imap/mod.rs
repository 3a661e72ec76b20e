//! IMAP4rev1 (RFC 3501) with the extensions modern clients use: IDLE
//! (RFC 2177), UIDPLUS (RFC 4315), NAMESPACE (RFC 2342), LITERAL+
//! (RFC 7888), ID (RFC 2971), ENABLE (RFC 5161), UNSELECT (RFC 3691),
//! CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154), MOVE (RFC 6851) and
//! SASL-IR (RFC 4959).
//!
//! Reading frames a command (line and literals, under limits, `frame`),
//! the parser turns it into a [`command::Command`] (`parse`), and the
//! session executes it against the shared mailbox index of `store`.

pub mod command;
pub mod fetch;
pub mod frame;
pub mod idle;
pub mod mailboxes;
pub mod messages;
pub mod mime;
pub mod parse;
pub mod response;
pub mod search;
pub mod selected;
pub mod session;

use crate::net::Conn;
use crate::server::Context;

/// Serves one IMAP session on `conn` to its end.
pub fn serve(conn: Conn, ctx: &Context) {
    let sid = conn.session_id().to_string();
    session::Session::new(conn, ctx, sid).run();
}

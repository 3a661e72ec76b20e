//! POP3 (RFC 1939) with CAPA (RFC 2449), AUTH (RFC 5034) and STLS
//! (RFC 2595).

pub mod command;
pub mod reply;
pub mod session;
pub mod stuff;

use crate::net::Conn;
use crate::server::Context;

/// Serves one POP3 session on `conn` to its end.
pub fn serve(conn: Conn, ctx: &Context) {
    let sid = conn.session_id().to_string();
    session::Session::new(conn, ctx, sid).run();
}

//! Connections: listening sockets bound here or passed by systemd, inetd
//! (the connection on standard input), TLS, connection caps, the switch
//! to an unprivileged user, and signals.
//!
//! However a connection arrives, it ends up in [`serve`], the one session
//! path: standalone ([`listen`]), systemd ([`activation`]) and inetd
//! ([`inetd`]) differ only in how they obtain the socket.

pub mod activation;
pub mod conn;
pub mod daemon;
pub mod inetd;
pub mod listen;
pub mod privdrop;
pub mod tls;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use log::{info, warn};

pub use conn::{Conn, LineError, Via};

use crate::config::{Config, Protocol};
use crate::server::Context;

/// The TLS handshake of an implicit-TLS connection must finish within this
/// time (or the idle timeout, if shorter): a client that connects and says
/// nothing should not hold a session for the whole idle timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The idle timeout of a protocol's sessions.
pub fn idle_timeout(protocol: Protocol, config: &Config) -> Duration {
    match protocol {
        Protocol::Pop3 | Protocol::Pop3s => config.idle_timeout_pop3,
        Protocol::Imap | Protocol::Imaps | Protocol::Lmtp => config.idle_timeout_imap,
    }
}

/// Serves one connection to its end, in the calling thread: wraps the
/// socket (TLS for pop3s and imaps, with the handshake done here), sets
/// the idle timeout, and runs the protocol's session.
pub fn serve(protocol: Protocol, stream: TcpStream, peer: SocketAddr, via: Via, ctx: &Context) {
    if !listen::served(protocol) {
        warn!("{protocol} connection address={peer} closed: {}", listen::not_served_reason(protocol));
        return;
    }
    let timeout = idle_timeout(protocol, &ctx.config());
    let mut conn = if protocol.implicit_tls() {
        let Some(tls) = ctx.tls() else {
            warn!("{protocol} connection address={peer} closed: TLS is not set up");
            return;
        };
        match Conn::new_tls(stream, peer, via, tls) {
            Ok(c) => c,
            Err(e) => {
                warn!("{protocol} connection address={peer} closed: {e}");
                return;
            }
        }
    } else {
        Conn::new(stream, peer, via)
    };
    if conn.is_tls() {
        conn.set_timeout(timeout.min(HANDSHAKE_TIMEOUT));
        if let Err(e) = conn.handshake() {
            let e = if conn::is_timeout(&e) { "timeout".to_string() } else { e.to_string() };
            info!("{} {protocol} tls-failed address={peer} via={} error=\"{e}\"", conn.session_id(), conn.via());
            return;
        }
    }
    conn.set_timeout(timeout);
    match protocol {
        Protocol::Pop3 | Protocol::Pop3s => crate::pop3::serve(conn, ctx),
        Protocol::Imap | Protocol::Imaps => crate::imap::serve(conn, ctx),
        Protocol::Lmtp => {}
    }
}

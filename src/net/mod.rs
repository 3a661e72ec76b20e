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

pub use conn::{Conn, Cutoff, LineError, Via};

use crate::config::{format_duration, Config, Protocol};
use crate::server::Context;

/// The idle timeout of a protocol's sessions.
pub fn idle_timeout(protocol: Protocol, config: &Config) -> Duration {
    match protocol {
        Protocol::Pop3 | Protocol::Pop3s => config.idle_timeout_pop3,
        Protocol::Imap | Protocol::Imaps | Protocol::Lmtp => config.idle_timeout_imap,
    }
}

/// Logs a connection that a deadline or the connection limits closed:
/// at warn level, one line, for the deadlines of a client that does not
/// keep up (the accept loop has logged an eviction already, and an idle
/// timeout is an ordinary end).
pub fn log_cutoff(sid: &str, protocol: &str, cutoff: Cutoff, config: &Config, idle: Duration) {
    match cutoff {
        Cutoff::Login => {
            warn!("{sid} {protocol} closed reason={} limit={}", cutoff.name(), format_duration(config.login_timeout))
        }
        Cutoff::Command => warn!("{sid} {protocol} closed reason={} limit={}", cutoff.name(), format_duration(idle)),
        Cutoff::Idle | Cutoff::Evicted => {
            log::debug!("{sid} {protocol} closed reason={}", cutoff.name())
        }
    }
}

/// Serves one connection to its end, in the calling thread: wraps the
/// socket (TLS for pop3s and imaps, with the handshake done here), gives
/// it its place under the caps (none under inetd), starts the login
/// clock, and runs the protocol's session.
pub fn serve(
    protocol: Protocol,
    stream: TcpStream,
    peer: SocketAddr,
    via: Via,
    slot: Option<listen::Slot>,
    ctx: &Context,
) {
    if !listen::served(protocol) {
        warn!("{protocol} connection address={peer} closed: {}", listen::not_served_reason(protocol));
        return;
    }
    let config = ctx.config();
    let timeout = idle_timeout(protocol, &config);
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
    if let Some(slot) = slot {
        conn.attach(slot);
    }
    conn.set_timeout(timeout);
    // From accept: the TLS handshake counts against the login timeout.
    conn.start_login_clock(config.login_timeout);
    if conn.is_tls() {
        if let Err(e) = conn.handshake() {
            if let Some(c) = conn::cutoff(&e) {
                log_cutoff(conn.session_id(), protocol.name(), c, &config, timeout);
            }
            info!("{} {protocol} tls-failed address={peer} via={} error=\"{e}\"", conn.session_id(), conn.via());
            return;
        }
    }
    drop(config);
    match protocol {
        Protocol::Pop3 | Protocol::Pop3s => crate::pop3::serve(conn, ctx),
        Protocol::Imap | Protocol::Imaps => crate::imap::serve(conn, ctx),
        Protocol::Lmtp => {}
    }
}

//! inetd mode (`postroomd -i protocol`): one session on the connection
//! that inetd passes as standard input and output, then exit.
//!
//! Standard error is that same connection, so nothing may be written
//! there: logs go to syslog or the configured file (`log stderr` means
//! syslog here), standard output and error are pointed at /dev/null before
//! the session starts, and a panic is logged rather than printed.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use log::error;

use crate::config::{Config, ConfigError, LogTarget, Protocol};
use crate::logging;
use crate::net::conn::Via;
use crate::net::daemon::{self, Options};
use crate::net::{listen, privdrop, tls};
use crate::server::Context;

/// sysexits(3) codes.
const EX_USAGE: i32 = 64;
const EX_UNAVAILABLE: i32 = 69;
const EX_OSERR: i32 = 71;
const EX_CONFIG: i32 = 78;

/// The peer of a connection whose address cannot be known (a UNIX socket
/// from a test harness, say): unspecified, and so never loopback.
const UNKNOWN_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Serves one session of `protocol` on standard input; returns the exit status.
pub fn run(config: Config, protocol: Protocol, opts: &Options) -> i32 {
    let (target, level) = daemon::log_settings(&config, opts.debug);
    if let Err(e) = logging::init(&target, level, true) {
        // The log file cannot be opened; syslog is the only safe place left.
        let _ = logging::init(&LogTarget::Syslog, level, true);
        error!("postroomd: {e}");
    }
    if !stdin_is_socket() {
        let msg = "-i: standard input is not a socket (postroomd -i is run by inetd)";
        error!("postroomd: {msg}");
        // Not a socket, so standard error is not the connection: say it there too.
        eprintln!("postroomd: {msg}");
        return EX_USAGE;
    }
    quiet_stdio();
    std::panic::set_hook(Box::new(|info| error!("postroomd: {info}")));

    if !listen::served(protocol) {
        error!("postroomd: -i {protocol}: {}", listen::not_served_reason(protocol));
        return EX_UNAVAILABLE;
    }
    let target_user = match privdrop::target(&config) {
        Ok(u) => u,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    let tls = match tls::load(&config, target_user.as_ref().map(|u| (u.uid, u.gid))) {
        Ok(t) => Some(t),
        Err(e) if protocol.implicit_tls() => return fail(EX_CONFIG, &e),
        Err(e) => {
            // Plain POP3 still works; STLS is not offered.
            error!("postroomd: {e}; serving without TLS");
            None
        }
    };
    if let Some(user) = &target_user {
        if let Err(e) = privdrop::switch_to(user) {
            return fail(EX_OSERR, &e);
        }
    }
    if privdrop::is_root() {
        return fail(EX_CONFIG, privdrop::REFUSE_ROOT);
    }
    // SAFETY: fd 0 is the connection inetd passed; this process owns it
    // from here on (fd 1, the same connection, now points at /dev/null).
    let stream = unsafe { TcpStream::from_raw_fd(0) };
    let peer = stream.peer_addr().unwrap_or(UNKNOWN_PEER);
    let ctx = Context::new(config, tls);
    super::serve(protocol, stream, peer, Via::Inetd, None, &ctx);
    0
}

/// Reports a config file that does not load, to syslog: standard error
/// is the client's connection.
pub fn config_errors(errors: &[ConfigError]) {
    let _ = logging::init(&LogTarget::Syslog, log::LevelFilter::Error, true);
    for e in errors {
        error!("postroomd: {e}");
    }
}

fn fail(code: i32, message: &str) -> i32 {
    error!("postroomd: {message}");
    code
}

fn stdin_is_socket() -> bool {
    // SAFETY: fstat on fd 0 into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::fstat(0, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK }
}

/// Points fds 1 and 2 at /dev/null, so that no stray write (a panic
/// message, a library's warning) reaches the client.
fn quiet_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        for fd in [1, 2] {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

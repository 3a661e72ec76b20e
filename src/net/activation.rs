//! systemd socket activation (sd_listen_fds(3)): the listening sockets
//! that systemd passes as descriptors 3, 4, ... with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`.
//!
//! A socket's protocol is its `FileDescriptorName` when that is a protocol
//! name (`pop3`, `pop3s`, `imap`, `imaps`, `lmtp`). Otherwise (one socket
//! unit for all ports, whose descriptors all carry the unit's name) it is
//! found from the socket's port: the `listen` line of the config with that
//! address or port, else the protocol's IANA port (110 pop3, 995 pop3s,
//! 143 imap, 993 imaps, 24 lmtp).

use std::env;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};

use crate::config::{Config, Protocol};
use crate::net::conn::Via;
use crate::net::listen::{self, Listener};

/// The first passed descriptor (SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;

const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The sockets systemd passed to this process, or `None` when it passed
/// none (then the server binds its own). Takes the variables out of the
/// environment, so that nothing started later takes them for its own.
///
/// Call it before any other thread starts: it changes the environment.
pub fn listeners(config: &Config) -> Result<Option<Vec<Listener>>, String> {
    let pid = env::var("LISTEN_PID").ok();
    let fds = env::var("LISTEN_FDS").ok();
    let names = env::var("LISTEN_FDNAMES").ok();
    for v in VARS {
        env::remove_var(v);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(None) };
    // Meant for another process (a parent that did not clean up).
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: RawFd = fds.trim().parse().map_err(|_| format!("LISTEN_FDS=`{fds}` is not a number"))?;
    if n <= 0 {
        return Ok(None);
    }
    let names: Vec<&str> = names.as_deref().map(|s| s.split(':').collect()).unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..n {
        let fd = FIRST_FD + i;
        let name = names.get(i as usize).copied().unwrap_or("");
        let socket = take_listening_socket(fd).map_err(|e| format!("socket {fd} from systemd ({name}): {e}"))?;
        let addr = socket.local_addr().map_err(|e| format!("socket {fd} from systemd ({name}): {e}"))?;
        let protocol = protocol_of(name, addr, config).ok_or_else(|| {
            format!(
                "socket {fd} from systemd ({name}, {addr}): cannot tell its protocol; \
                 set FileDescriptorName= to pop3, pop3s, imap, imaps or lmtp"
            )
        })?;
        if !listen::served(protocol) {
            listen::warn_not_served(protocol, addr);
            continue;
        }
        out.push(Listener::from_socket(protocol, socket, Via::Systemd).map_err(|e| format!("socket {fd}: {e}"))?);
    }
    Ok(Some(out))
}

/// The protocol of a passed socket: by name, by the config's `listen`
/// lines, by IANA port.
pub fn protocol_of(name: &str, addr: SocketAddr, config: &Config) -> Option<Protocol> {
    if let Some(p) = Protocol::parse(name) {
        return Some(p);
    }
    if let Some(l) = config.listen.iter().find(|l| l.addr == addr) {
        return Some(l.protocol);
    }
    let mut by_port = config.listen.iter().filter(|l| l.addr.port() == addr.port()).map(|l| l.protocol);
    match (by_port.next(), by_port.next()) {
        (Some(p), None) => return Some(p),
        (Some(_), Some(_)) => return None,
        (None, _) => {}
    }
    Protocol::ALL.into_iter().find(|p| p.default_port() == addr.port())
}

/// Checks that `fd` is a listening TCP socket, marks it close-on-exec,
/// and takes ownership of it.
fn take_listening_socket(fd: RawFd) -> Result<TcpListener, String> {
    // SAFETY: fstat on a descriptor number; a closed one is an error return.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("not a socket".to_string());
    }
    let domain = sockopt(fd, libc::SO_DOMAIN)?;
    if sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM || !(domain == libc::AF_INET || domain == libc::AF_INET6) {
        return Err("not a TCP socket (use ListenStream= with a port or an address)".to_string());
    }
    if sockopt(fd, libc::SO_ACCEPTCONN)? == 0 {
        return Err("not a listening socket (set Accept=no in the socket unit)".to_string());
    }
    // SAFETY: F_SETFD on a descriptor checked above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: systemd passed the descriptor to this process alone; it is
    // owned from here on.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

fn sockopt(fd: RawFd, name: libc::c_int) -> Result<libc::c_int, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt to fill.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, &mut v as *mut _ as *mut libc::c_void, &mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn protocol_by_name_config_and_port() {
        let config =
            Config::parse("listen pop3 127.0.0.1:10110\nlisten imaps 0.0.0.0:10993", Path::new("/etc/p.conf")).unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(protocol_of("pop3s", a("0.0.0.0:1"), &config), Some(Protocol::Pop3s));
        assert_eq!(protocol_of("postroomd.socket", a("127.0.0.1:10110"), &config), Some(Protocol::Pop3));
        assert_eq!(protocol_of("postroomd.socket", a("[::]:10993"), &config), Some(Protocol::Imaps));
        assert_eq!(protocol_of("postroomd.socket", a("[::]:995"), &config), Some(Protocol::Pop3s));
        assert_eq!(protocol_of("", a("0.0.0.0:110"), &config), Some(Protocol::Pop3));
        assert_eq!(protocol_of("x", a("0.0.0.0:8080"), &config), None);
    }

    #[test]
    fn a_connected_socket_or_a_file_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c);
        assert!(take_listening_socket(fd).unwrap_err().contains("Accept=no"));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(take_listening_socket(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap_err(), "not a socket");
    }
}

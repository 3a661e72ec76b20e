//! Listening sockets and the accept loops: one thread per listening
//! socket, blocking in poll(2) and accept(2), and one thread per accepted
//! connection.
//!
//! The connection caps (`max-connections` for all protocols together,
//! `max-connections-per-ip` per source address) are checked at accept,
//! before a thread is spent: a connection over a cap hears the protocol's
//! greeting-time refusal and is closed. A session's place is given back
//! when its thread ends, however it ends.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::config::{Config, Protocol};
use crate::logging;
use crate::net::conn::Via;
use crate::server::Context;

/// Stack of a session thread. Only the pages a session touches become
/// resident, so a large reservation costs address space, not memory. It
/// bounds the deepest call chain: TLS handshake, password hashing, and
/// IMAP commands nested `imap-max-nesting` (at most 100) deep, which an
/// unoptimised build handles up to about 200 levels in this much.
pub const SESSION_STACK: usize = 1024 * 1024;

/// Backlog of a listening socket (the kernel caps it at somaxconn).
const BACKLOG: libc::c_int = 128;

/// After an accept error such as running out of file descriptors, the
/// loop pauses this long rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accept errors are logged at most this often.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// A listening socket and the protocol it speaks.
pub struct Listener {
    pub protocol: Protocol,
    /// The local address, as bound.
    pub addr: SocketAddr,
    /// Standalone (bound here) or systemd (passed in).
    pub via: Via,
    socket: TcpListener,
}

impl Listener {
    /// Wraps a listening socket obtained elsewhere (systemd).
    pub fn from_socket(protocol: Protocol, socket: TcpListener, via: Via) -> io::Result<Listener> {
        let addr = socket.local_addr()?;
        Ok(Listener { protocol, addr, via, socket })
    }
}

/// True for the protocols that this version serves.
pub fn served(protocol: Protocol) -> bool {
    !matches!(protocol, Protocol::Lmtp)
}

/// Why a protocol is not served, for the logs.
pub fn not_served_reason(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Pop3 | Protocol::Pop3s | Protocol::Imap | Protocol::Imaps => "",
        Protocol::Lmtp => "LMTP is not built yet",
    }
}

/// Logs that a listener is not served, and why.
pub fn warn_not_served(protocol: Protocol, addr: SocketAddr) {
    warn!("{protocol} listener {addr} not served: {}", not_served_reason(protocol));
}

/// Binds every `listen` line of the config that this version serves.
/// IPv6 sockets are bound IPv6-only, so that `0.0.0.0:110` and `[::]:110`
/// can both be listed.
pub fn bind(config: &Config) -> Result<Vec<Listener>, String> {
    let mut out = Vec::new();
    for l in &config.listen {
        if !served(l.protocol) {
            warn_not_served(l.protocol, l.addr);
            continue;
        }
        let socket = bind_tcp(l.addr).map_err(|e| format!("cannot listen on {} ({}): {e}", l.addr, l.protocol))?;
        let addr = socket.local_addr().unwrap_or(l.addr);
        out.push(Listener { protocol: l.protocol, addr, via: Via::Standalone, socket });
    }
    Ok(out)
}

/// A listening TCP socket with SO_REUSEADDR (restarts while old
/// connections linger in TIME_WAIT) and, for IPv6, IPV6_V6ONLY.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of len bytes for the socket's family.
    if unsafe { libc::bind(fd.as_raw_fd(), &storage as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family's fields are filled below.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// What a client over a connection cap is told before the connection is
/// closed: the protocol's greeting-time error. Implicit-TLS connections
/// are closed without a word, since a word would need a TLS handshake.
pub fn too_many_connections(protocol: Protocol) -> Option<&'static [u8]> {
    match protocol {
        // RFC 3206 §4: SYS/TEMP, a temporary system problem.
        Protocol::Pop3 => Some(b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"),
        // RFC 3501 §7.1.5: BYE as the greeting refuses the connection.
        Protocol::Imap => Some(b"* BYE Too many connections\r\n"),
        // RFC 5321 §4.2.3 (by way of RFC 2033): 421, service not available.
        Protocol::Lmtp => Some(b"421 4.3.2 Too many connections, try again later\r\n"),
        Protocol::Pop3s | Protocol::Imaps => None,
    }
}

/// The connection counts, shared by all accept loops.
#[derive(Default)]
pub struct Limits {
    counts: Mutex<Counts>,
    /// Signalled whenever a session ends.
    ended: Condvar,
}

#[derive(Default)]
struct Counts {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
}

/// Which cap a connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections(u32),
    MaxConnectionsPerIp(u32),
}

/// A session's place under the caps, given back on drop.
pub struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    pub fn new() -> Arc<Limits> {
        Arc::new(Limits::default())
    }

    /// Takes a place for a session from `ip`, or says which cap is full.
    pub fn admit(self: &Arc<Limits>, ip: IpAddr, max: u32, max_per_ip: u32) -> Result<Slot, Refusal> {
        let ip = canonical(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= max {
            return Err(Refusal::MaxConnections(max));
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(Refusal::MaxConnectionsPerIp(max_per_ip));
        }
        *n += 1;
        c.total += 1;
        Ok(Slot { limits: Arc::clone(self), ip })
    }

    /// Sessions now.
    pub fn sessions(&self) -> u32 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Waits until no session is left or `deadline` passes; returns how many are left.
    pub fn wait_idle(&self, deadline: Instant) -> u32 {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        while c.total > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            c = self.ended.wait_timeout(c, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        c.total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        drop(c);
        self.limits.ended.notify_all();
    }
}

/// An IPv4 client seen through a dual-stack socket counts as itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MaxConnections(n) => write!(f, "reason=max-connections limit={n}"),
            Refusal::MaxConnectionsPerIp(n) => write!(f, "reason=max-connections-per-ip limit={n}"),
        }
    }
}

/// A pipe that, once written, wakes every accept loop for good.
struct Stop {
    read: OwnedFd,
    write: OwnedFd,
}

impl Stop {
    fn new() -> io::Result<Stop> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two descriptors on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned only here.
        Ok(unsafe { Stop { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    fn signal(&self) {
        // SAFETY: writes one byte from a valid buffer to our pipe.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), b"x".as_ptr() as *const libc::c_void, 1) };
    }
}

/// The running accept loops.
pub struct Server {
    limits: Arc<Limits>,
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts one accept thread per listener.
    pub fn start(listeners: Vec<Listener>, ctx: Arc<Context>) -> io::Result<Server> {
        let limits = Limits::new();
        let stop = Arc::new(Stop::new()?);
        let mut threads = Vec::new();
        for l in listeners {
            l.socket.set_nonblocking(true)?;
            info!("server {} listening address={} via={}", l.protocol, l.addr, l.via.name());
            let (ctx, limits, stop) = (Arc::clone(&ctx), Arc::clone(&limits), Arc::clone(&stop));
            let name = format!("accept-{}", l.protocol);
            threads.push(thread::Builder::new().name(name).spawn(move || accept_loop(l, &ctx, &limits, &stop))?);
        }
        Ok(Server { limits, stop, threads })
    }

    /// Sessions now.
    pub fn sessions(&self) -> u32 {
        self.limits.sessions()
    }

    /// Stops accepting, then waits up to `grace` for the sessions to end.
    /// Returns how many were still running (the caller exits regardless).
    pub fn shutdown(self, grace: Duration) -> u32 {
        let deadline = Instant::now() + grace;
        self.stop.signal();
        for t in self.threads {
            let _ = t.join();
        }
        self.limits.wait_idle(deadline)
    }
}

fn accept_loop(l: Listener, ctx: &Arc<Context>, limits: &Arc<Limits>, stop: &Stop) {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let mut fds = [
            libc::pollfd { fd: l.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.read.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                error!("server {} poll failed address={}: {e}", l.protocol, l.addr);
                thread::sleep(ACCEPT_ERROR_PAUSE);
            }
            continue;
        }
        if fds[1].revents != 0 {
            debug!("server {} stopped listening address={}", l.protocol, l.addr);
            return;
        }
        let (stream, peer) = match l.socket.accept() {
            Ok(pair) => pair,
            Err(e) => {
                if !transient_accept_error(&e) {
                    if last_error_log.is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_LOG_EVERY) {
                        error!("server {} accept failed address={}: {e}", l.protocol, l.addr);
                        last_error_log = Some(Instant::now());
                    }
                    thread::sleep(ACCEPT_ERROR_PAUSE);
                }
                continue;
            }
        };
        let config = ctx.config();
        let slot = match limits.admit(peer.ip(), config.max_connections, config.max_connections_per_ip) {
            Ok(slot) => slot,
            Err(refusal) => {
                refuse(l.protocol, stream, peer, refusal);
                continue;
            }
        };
        drop(config);
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed) + 1;
        let (ctx, protocol, via) = (Arc::clone(ctx), l.protocol, l.via);
        let spawned =
            thread::Builder::new().name(format!("{protocol}-{n}")).stack_size(SESSION_STACK).spawn(move || {
                let _slot = slot;
                if let Err(e) = stream.set_nonblocking(false) {
                    debug!("server {protocol} cannot use connection address={peer}: {e}");
                    return;
                }
                super::serve(protocol, stream, peer, via, &ctx);
            });
        if let Err(e) = spawned {
            // The closure (with the stream and the slot) was dropped: the
            // client sees the connection close.
            error!("server {protocol} cannot start a session thread address={peer}: {e}");
            thread::sleep(ACCEPT_ERROR_PAUSE);
        }
    }
}

/// Errors about one connection that went away before it was accepted;
/// the loop goes on at once.
fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// Tells a client over a cap so, without blocking the accept loop, and
/// closes the connection.
fn refuse(protocol: Protocol, mut stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
    warn!("{} {protocol} refused address={peer} {refusal}", logging::session_id());
    if let Some(msg) = too_many_connections(protocol) {
        // A new connection's send buffer is empty: this does not block.
        let _ = stream.set_nonblocking(true);
        let _ = stream.write_all(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn caps_count_per_address_and_in_total() {
        let limits = Limits::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limits.admit(a, 3, 2).unwrap();
        let _a2 = limits.admit(a, 3, 2).unwrap();
        assert_eq!(limits.admit(a, 3, 2).err(), Some(Refusal::MaxConnectionsPerIp(2)));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limits.admit(mapped, 3, 2).err(), Some(Refusal::MaxConnectionsPerIp(2)), "mapped is the same");
        let _b1 = limits.admit(b, 3, 2).unwrap();
        assert_eq!(limits.admit(b, 3, 2).err(), Some(Refusal::MaxConnections(3)));
        drop(a1);
        assert_eq!(limits.sessions(), 2);
        let _a3 = limits.admit(a, 3, 2).unwrap();
        assert_eq!(limits.wait_idle(Instant::now() + Duration::from_millis(10)), 3);
    }

    #[test]
    fn wait_idle_returns_when_the_last_session_ends() {
        let limits = Limits::new();
        let slot = limits.admit("::1".parse().unwrap(), 10, 10).unwrap();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            drop(slot);
        });
        let start = Instant::now();
        assert_eq!(limits.wait_idle(Instant::now() + Duration::from_secs(10)), 0);
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        assert!(limits.counts.lock().unwrap().per_ip.is_empty());
    }

    #[test]
    fn refusal_texts() {
        assert_eq!(
            too_many_connections(Protocol::Pop3).unwrap(),
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        );
        assert_eq!(too_many_connections(Protocol::Imap).unwrap(), b"* BYE Too many connections\r\n");
        assert!(too_many_connections(Protocol::Pop3s).is_none());
    }

    #[test]
    fn binds_v4_and_v6_on_the_same_port() {
        let v4 = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        // IPV6_V6ONLY: [::]:port does not collide with 127.0.0.1:port.
        match bind_tcp(SocketAddr::new("::".parse().unwrap(), port)) {
            Ok(v6) => assert_eq!(v6.local_addr().unwrap().port(), port),
            Err(e) => eprintln!("no IPv6 here, skipped: {e}"),
        }
        let mut c = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let (mut s, _) = v4.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }
}

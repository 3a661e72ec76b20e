//! Listening sockets and the accept loops: one thread per listening
//! socket, blocking in poll(2) and accept(2), and one thread per accepted
//! connection.
//!
//! The connection caps are checked at accept, before a thread is spent:
//! `max-connections` for all protocols together, `max-connections-per-ip`
//! per source address and `max-connections-per-ipv6-net` per IPv6 /64 (one
//! host usually holds a whole /64). A connection over one of them hears the
//! protocol's greeting-time refusal and is closed. A place is given back
//! when the session's thread ends, however it ends.
//!
//! Connections that have not logged in may hold at most
//! `max-unauthenticated-connections` places. At accept nobody can tell
//! whether a connection will log in, so a new one is never refused for
//! that cap: when it is reached (or every place is taken and some are held
//! by connections that have not logged in), one of those is closed to make
//! room. Refusing instead would let a few hosts that connect and say
//! nothing keep every user out; closing makes them pay with their own
//! connections. The one closed is the oldest from the address (IPv6: the
//! /64) that holds the most of them, so a host that opens many loses its
//! own first, and a user's single connection, a second old, is closed only
//! once every host is down to one. A connection leaves that count when it
//! logs in ([`Slot::logged_in`]) and is never closed to make room after:
//! logged-in sessions get every place there is, and a connection is
//! refused for `max-connections` only when logged-in sessions hold them all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::config::{Config, Protocol};
use crate::logging;
use crate::net::conn::{Link, Via};
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

/// The caps, as the config has them when a connection arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `max-connections`.
    pub total: u32,
    /// `max-unauthenticated-connections`.
    pub unauthenticated: u32,
    /// `max-connections-per-ip`.
    pub per_ip: u32,
    /// `max-connections-per-ipv6-net`.
    pub per_net: u32,
}

impl Caps {
    pub fn of(config: &Config) -> Caps {
        Caps {
            total: config.max_connections,
            unauthenticated: config.max_unauthenticated_connections,
            per_ip: config.max_connections_per_ip,
            per_net: config.max_connections_per_ipv6_net,
        }
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
    /// Places taken, all protocols.
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
    /// Per IPv6 /64.
    per_net: HashMap<Ipv6Addr, u32>,
    /// The next slot's number: slots are numbered in the order they came.
    next: u64,
    /// Connections that have not logged in, oldest first.
    waiting: BTreeMap<u64, Waiting>,
    /// Connections closed to make room whose threads have not ended yet;
    /// their places were given back when they were closed.
    evicted: HashSet<u64>,
}

/// A connection that has not logged in.
struct Waiting {
    ip: IpAddr,
    peer: SocketAddr,
    protocol: Protocol,
    /// Its socket, once its session has started.
    link: Option<Weak<Link>>,
    /// Its session id, for the log.
    sid: Option<String>,
}

/// Which cap a connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections(u32),
    MaxConnectionsPerIp(u32),
    MaxConnectionsPerNet(u32),
    /// Never a refusal, only the reason a waiting connection was closed.
    MaxUnauthenticated(u32),
}

/// A connection closed to make room for a new one, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub peer: SocketAddr,
    pub protocol: Protocol,
    /// Its session id, if its session had started.
    pub sid: Option<String>,
    /// The cap that was full.
    pub reason: Refusal,
}

/// A session's place under the caps, given back on drop.
pub struct Slot {
    limits: Arc<Limits>,
    id: u64,
    ip: IpAddr,
}

impl Limits {
    pub fn new() -> Arc<Limits> {
        Arc::new(Limits::default())
    }

    /// Takes a place for a connection from `peer`, closing a connection
    /// that has not logged in if that makes room (see the module
    /// documentation); or says which cap is full.
    pub fn admit(
        self: &Arc<Limits>,
        peer: SocketAddr,
        protocol: Protocol,
        caps: &Caps,
    ) -> Result<(Slot, Option<Eviction>), Refusal> {
        let ip = canonical(peer.ip());
        let net = net64(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.per_ip.get(&ip).copied().unwrap_or(0) >= caps.per_ip {
            return Err(Refusal::MaxConnectionsPerIp(caps.per_ip));
        }
        if let Some(net) = net {
            if c.per_net.get(&net).copied().unwrap_or(0) >= caps.per_net {
                return Err(Refusal::MaxConnectionsPerNet(caps.per_net));
            }
        }
        let waiting = c.waiting.len() as u64;
        let full = if waiting >= u64::from(caps.unauthenticated) {
            Some(Refusal::MaxUnauthenticated(caps.unauthenticated))
        } else if c.total >= caps.total {
            Some(Refusal::MaxConnections(caps.total))
        } else {
            None
        };
        let mut eviction = None;
        if let Some(reason) = full {
            // Closing one frees one place of each kind; after a reload
            // that lowered the caps, that may not be enough.
            let enough = waiting <= u64::from(caps.unauthenticated) && c.total <= caps.total;
            match c.victim() {
                Some(id) if enough => eviction = Some(c.evict(id, reason)),
                _ => return Err(if c.total >= caps.total { Refusal::MaxConnections(caps.total) } else { reason }),
            }
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        if let Some(net) = net {
            *c.per_net.entry(net).or_insert(0) += 1;
        }
        let id = c.next;
        c.next += 1;
        c.waiting.insert(id, Waiting { ip, peer, protocol, link: None, sid: None });
        Ok((Slot { limits: Arc::clone(self), id, ip }, eviction))
    }

    /// Sessions now.
    pub fn sessions(&self) -> u32 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Connections now that have not logged in.
    pub fn unauthenticated(&self) -> u32 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).waiting.len() as u32
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

impl Counts {
    /// The waiting connection to close to make room: the oldest of the
    /// place (address, or IPv6 /64) that has the most waiting; between
    /// places with as many, the one whose oldest came first.
    fn victim(&self) -> Option<u64> {
        // Per place: how many wait, and the oldest (the first seen, as
        // `waiting` is in order).
        let mut places: HashMap<IpAddr, (u32, u64)> = HashMap::new();
        for (&id, w) in &self.waiting {
            places.entry(place(w.ip)).or_insert((0, id)).0 += 1;
        }
        places.values().max_by_key(|&&(n, oldest)| (n, std::cmp::Reverse(oldest))).map(|&(_, oldest)| oldest)
    }

    /// Closes waiting connection `id` and gives its place back now.
    fn evict(&mut self, id: u64, reason: Refusal) -> Eviction {
        let w = self.waiting.remove(&id).expect("the victim is waiting");
        self.release(w.ip);
        self.evicted.insert(id);
        if let Some(link) = w.link.as_ref().and_then(Weak::upgrade) {
            link.evict();
        }
        Eviction { peer: w.peer, protocol: w.protocol, sid: w.sid, reason }
    }

    /// Gives back a place of `ip`.
    fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if let Some(net) = net64(ip) {
            if let Some(n) = self.per_net.get_mut(&net) {
                *n -= 1;
                if *n == 0 {
                    self.per_net.remove(&net);
                }
            }
        }
    }
}

impl Slot {
    /// Lets the limits close this connection to make room while it has not
    /// logged in: they keep a weak handle on its socket. A connection
    /// closed before its session started is closed now.
    pub(crate) fn watch(&self, link: Weak<Link>, sid: &str) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.evicted.contains(&self.id) {
            drop(c);
            if let Some(link) = link.upgrade() {
                link.evict();
            }
        } else if let Some(w) = c.waiting.get_mut(&self.id) {
            w.link = Some(link);
            w.sid = Some(sid.to_string());
        }
    }

    /// The connection has logged in: it no longer counts against
    /// `max-unauthenticated-connections` and is never closed to make room.
    /// False if it was closed to make room before.
    pub fn logged_in(&self) -> bool {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.evicted.contains(&self.id) {
            return false;
        }
        c.waiting.remove(&self.id);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !c.evicted.remove(&self.id) {
            c.waiting.remove(&self.id);
            c.release(self.ip);
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

/// The /64 of an IPv6 address (of a canonical one: IPv4 has none).
fn net64(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Where a connection counts when choosing whom to close: its IPv4
/// address, or its IPv6 /64.
fn place(ip: IpAddr) -> IpAddr {
    net64(ip).map_or(ip, IpAddr::V6)
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MaxConnections(n) => write!(f, "reason=max-connections limit={n}"),
            Refusal::MaxConnectionsPerIp(n) => write!(f, "reason=max-connections-per-ip limit={n}"),
            Refusal::MaxConnectionsPerNet(n) => write!(f, "reason=max-connections-per-ipv6-net limit={n}"),
            Refusal::MaxUnauthenticated(n) => write!(f, "reason=max-unauthenticated-connections limit={n}"),
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
        let caps = Caps::of(&ctx.config());
        let slot = match limits.admit(peer, l.protocol, &caps) {
            Ok((slot, eviction)) => {
                if let Some(e) = eviction {
                    let sid = e.sid.as_deref().unwrap_or("-");
                    warn!("{sid} {} evicted address={} {} for={peer}", e.protocol, e.peer, e.reason);
                }
                slot
            }
            Err(refusal) => {
                refuse(l.protocol, stream, peer, refusal);
                continue;
            }
        };
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed) + 1;
        let (ctx, protocol, via) = (Arc::clone(ctx), l.protocol, l.via);
        let spawned =
            thread::Builder::new().name(format!("{protocol}-{n}")).stack_size(SESSION_STACK).spawn(move || {
                if let Err(e) = stream.set_nonblocking(false) {
                    debug!("server {protocol} cannot use connection address={peer}: {e}");
                    return;
                }
                super::serve(protocol, stream, peer, via, Some(slot), &ctx);
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

    fn caps(total: u32, unauthenticated: u32, per_ip: u32, per_net: u32) -> Caps {
        Caps { total, unauthenticated, per_ip, per_net }
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    /// A place for `ip`, and who was closed to make room (their port).
    fn admit(limits: &Arc<Limits>, ip: &str, caps: &Caps) -> Result<(Slot, Option<Eviction>), Refusal> {
        limits.admit(peer(ip), Protocol::Imap, caps)
    }

    /// A place for a session that logs in at once.
    fn session(limits: &Arc<Limits>, ip: &str, caps: &Caps) -> Result<Slot, Refusal> {
        let (slot, eviction) = admit(limits, ip, caps)?;
        assert_eq!(eviction, None);
        assert!(slot.logged_in());
        Ok(slot)
    }

    #[test]
    fn caps_count_per_address_and_in_total() {
        let limits = Limits::new();
        let c = caps(3, 3, 2, 8);
        let a1 = session(&limits, "192.0.2.1", &c).unwrap();
        let _a2 = session(&limits, "192.0.2.1", &c).unwrap();
        assert_eq!(session(&limits, "192.0.2.1", &c).err(), Some(Refusal::MaxConnectionsPerIp(2)));
        assert_eq!(
            session(&limits, "::ffff:192.0.2.1", &c).err(),
            Some(Refusal::MaxConnectionsPerIp(2)),
            "mapped is the same"
        );
        let _b1 = session(&limits, "192.0.2.2", &c).unwrap();
        // Every place is a logged-in session's: refused.
        assert_eq!(session(&limits, "192.0.2.2", &c).err(), Some(Refusal::MaxConnections(3)));
        drop(a1);
        assert_eq!(limits.sessions(), 2);
        let _a3 = session(&limits, "192.0.2.1", &c).unwrap();
        assert_eq!(limits.wait_idle(Instant::now() + Duration::from_millis(10)), 3);
        assert_eq!(limits.unauthenticated(), 0);
    }

    #[test]
    fn waiting_connections_make_room_from_the_place_that_holds_most() {
        let limits = Limits::new();
        let c = caps(10, 3, 10, 40);
        let (w1, _) = admit(&limits, "192.0.2.1", &c).unwrap();
        let (w2, _) = admit(&limits, "192.0.2.2", &c).unwrap();
        let (w3, _) = admit(&limits, "192.0.2.2", &c).unwrap();
        assert_eq!((limits.sessions(), limits.unauthenticated()), (3, 3));
        // 192.0.2.2 holds most: its oldest goes, though 192.0.2.1's is older.
        let (w4, e) = admit(&limits, "192.0.2.3", &c).unwrap();
        let e = e.expect("someone made room");
        assert_eq!((e.peer, e.reason), (peer("192.0.2.2"), Refusal::MaxUnauthenticated(3)));
        assert!(!w2.logged_in(), "closed to make room");
        assert_eq!((limits.sessions(), limits.unauthenticated()), (3, 3), "its place was given back at once");
        drop(w2);
        assert_eq!(limits.sessions(), 3, "and not twice");
        // Now one each: the oldest of all goes.
        let (_w5, e) = admit(&limits, "192.0.2.4", &c).unwrap();
        assert!(!w1.logged_in(), "{e:?}");
        // A logged-in session is never closed to make room.
        assert!(w3.logged_in());
        assert!(w4.logged_in());
        let (_w6, _) = admit(&limits, "192.0.2.5", &c).unwrap();
        let (_w7, e) = admit(&limits, "192.0.2.6", &c).unwrap();
        assert_eq!(e, None, "room for three to wait");
        let (_w8, e) = admit(&limits, "192.0.2.7", &c).unwrap();
        assert_eq!(e.map(|e| e.peer), Some(peer("192.0.2.4")));
        assert!(w3.logged_in() && w4.logged_in());
        assert_eq!((limits.sessions(), limits.unauthenticated()), (5, 3));
    }

    #[test]
    fn a_full_server_makes_room_while_some_have_not_logged_in() {
        let limits = Limits::new();
        let c = caps(3, 3, 10, 40);
        let _s1 = session(&limits, "192.0.2.1", &c).unwrap();
        let (w2, _) = admit(&limits, "192.0.2.2", &c).unwrap();
        let (w3, _) = admit(&limits, "192.0.2.3", &c).unwrap();
        let (w4, e) = admit(&limits, "192.0.2.4", &c).unwrap();
        assert_eq!(e.map(|e| (e.peer, e.reason)), Some((peer("192.0.2.2"), Refusal::MaxConnections(3))));
        assert!(!w2.logged_in());
        assert!(w3.logged_in() && w4.logged_in());
        assert_eq!(admit(&limits, "192.0.2.5", &c).err(), Some(Refusal::MaxConnections(3)));
        // Caps lowered by a reload: closing one would not make room.
        let limits = Limits::new();
        let wide = caps(10, 10, 10, 40);
        let _waiting: Vec<_> = (0..5).map(|i| admit(&limits, &format!("192.0.2.{i}"), &wide).unwrap()).collect();
        assert_eq!(admit(&limits, "192.0.2.9", &caps(2, 2, 10, 40)).err(), Some(Refusal::MaxConnections(2)));
        assert_eq!(limits.unauthenticated(), 5, "nobody was closed for nothing");
    }

    #[test]
    fn ipv6_counts_per_address_and_per_64() {
        let limits = Limits::new();
        let c = caps(100, 100, 2, 3);
        let mut held = Vec::new();
        held.push(session(&limits, "2001:db8:1:2::1", &c).unwrap());
        held.push(session(&limits, "2001:db8:1:2::1", &c).unwrap());
        assert_eq!(session(&limits, "2001:db8:1:2::1", &c).err(), Some(Refusal::MaxConnectionsPerIp(2)));
        held.push(session(&limits, "2001:db8:1:2:aaaa::2", &c).unwrap());
        assert_eq!(
            session(&limits, "2001:db8:1:2:ffff:ffff:ffff:ffff", &c).err(),
            Some(Refusal::MaxConnectionsPerNet(3))
        );
        // The next /64 is another network; IPv4 has no /64.
        held.push(session(&limits, "2001:db8:1:3::1", &c).unwrap());
        for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2"] {
            held.push(session(&limits, ip, &c).unwrap());
        }
        assert_eq!(session(&limits, "::ffff:192.0.2.2", &c).err(), Some(Refusal::MaxConnectionsPerIp(2)));
        held.remove(0);
        held.push(session(&limits, "2001:db8:1:2::3", &c).unwrap());
        assert_eq!(limits.sessions(), 8);
        drop(held);
        assert!(limits.counts.lock().unwrap().per_net.is_empty());
    }

    #[test]
    fn one_64_is_one_place_when_choosing_whom_to_close() {
        let limits = Limits::new();
        let c = caps(10, 3, 10, 40);
        let (v4, _) = admit(&limits, "192.0.2.1", &c).unwrap();
        let (a, _) = admit(&limits, "2001:db8:1:2::1", &c).unwrap();
        let (b, _) = admit(&limits, "2001:db8:1:2::2", &c).unwrap();
        let (_new, e) = admit(&limits, "192.0.2.9", &c).unwrap();
        assert_eq!(e.map(|e| e.peer), Some(peer("2001:db8:1:2::1")));
        assert!(!a.logged_in());
        assert!(v4.logged_in() && b.logged_in());
    }

    #[test]
    fn places_and_networks() {
        for (ip, net, place_of) in [
            ("192.0.2.7", None, "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", Some("2001:db8:1:2::"), "2001:db8:1:2::"),
            ("2001:db8:1:2::9", Some("2001:db8:1:2::"), "2001:db8:1:2::"),
            ("::1", Some("::"), "::"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(net64(ip), net.map(|n| n.parse().unwrap()), "{ip}");
            assert_eq!(place(ip), place_of.parse::<IpAddr>().unwrap(), "{ip}");
        }
        assert_eq!(canonical("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    /// A connected pair: the server side as a Conn, the client side as a socket.
    fn conn_pair() -> (crate::net::Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (server, peer) = l.accept().unwrap();
        let mut conn = crate::net::Conn::new(server, peer, Via::Standalone);
        conn.set_timeout(Duration::from_secs(30));
        (conn, client)
    }

    #[test]
    fn a_connection_closed_to_make_room_stops_reading_and_can_say_goodbye() {
        use crate::net::conn::{cutoff, Cutoff};
        use crate::net::LineError;
        let limits = Limits::new();
        let c = caps(10, 1, 10, 40);
        let (mut conn, mut client) = conn_pair();
        let (slot, _) = admit(&limits, "192.0.2.1", &c).unwrap();
        conn.attach(slot);
        let reader = thread::spawn(move || {
            let got = conn.read_line(100);
            (got, conn)
        });
        // Blocked in read or not yet: either way the read ends at once.
        let (_other, e) = admit(&limits, "192.0.2.2", &c).unwrap();
        assert!(e.is_some());
        let (got, mut conn) = reader.join().unwrap();
        match got {
            Err(LineError::Io(e)) => assert_eq!(cutoff(&e), Some(Cutoff::Evicted), "{e}"),
            other => panic!("{other:?}"),
        }
        conn.write_all(b"* BYE bye\r\n").unwrap();
        conn.flush().unwrap();
        let mut buf = [0u8; 9];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"* BYE bye");
        assert!(conn.logged_in().is_err(), "too late to log in");

        // Closed to make room before its session even started.
        let (mut conn, _client) = conn_pair();
        let (_third, _) = admit(&limits, "192.0.2.3", &c).unwrap();
        let (slot, _) = admit(&limits, "192.0.2.4", &c).unwrap();
        let (_fifth, e) = admit(&limits, "192.0.2.5", &c).unwrap();
        assert_eq!(e.map(|e| e.peer), Some(peer("192.0.2.4")));
        conn.attach(slot);
        match conn.read_line(100) {
            Err(LineError::Io(e)) => assert_eq!(cutoff(&e), Some(Cutoff::Evicted), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_idle_returns_when_the_last_session_ends() {
        let limits = Limits::new();
        let (slot, _) = limits.admit(peer("::1"), Protocol::Pop3, &caps(10, 10, 10, 40)).unwrap();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            drop(slot);
        });
        let start = Instant::now();
        assert_eq!(limits.wait_idle(Instant::now() + Duration::from_secs(10)), 0);
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        let c = limits.counts.lock().unwrap();
        assert!(c.per_ip.is_empty() && c.per_net.is_empty() && c.waiting.is_empty());
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

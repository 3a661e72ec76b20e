//! How long a failed login waits: the configured `auth-failure-delay`,
//! doubled for each further failure from the same place within
//! [`PENALTY_WINDOW`], up to [`MAX_DELAY`]. A successful login never
//! waits, however many failures its place has.
//!
//! A success forgets only the failures of the user name that logged in,
//! from that place: someone who mistyped their own password and then got
//! it right starts afresh, but logging in to one's own account does not
//! wipe out one's guesses at other accounts, which keep counting until the
//! place has been quiet for the window. Behind one NAT address (an office)
//! everyone shares the count, so a colleague's mistakes can make a mistyped
//! password wait longer, never keep a right one out. Failures are told
//! apart by user name for the first [`NAMES_PER_PLACE`] names of a place;
//! failures for further names count all the same but no success forgets
//! them.
//!
//! "The same place" is an IPv4 address, or an IPv6 /64: one IPv6 host
//! usually holds a whole /64 and could otherwise start afresh from each
//! address in it.
//!
//! The table is bounded ([`MAX_PEERS`]); when it is full, entries older than
//! the window go first, then the one that failed longest ago. Its lock is
//! held only to update a count, never while sleeping or hashing.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures further apart than this do not add up.
pub const PENALTY_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The longest a failure waits, unless `auth-failure-delay` itself is longer.
pub const MAX_DELAY: Duration = Duration::from_secs(15);

/// Places remembered at once.
pub const MAX_PEERS: usize = 10_000;

/// User names whose failures a place keeps apart, so that a success of
/// one of them forgets its own.
pub const NAMES_PER_PLACE: usize = 8;

#[derive(Debug, Clone)]
struct Entry {
    /// All recent failures of the place.
    failures: u32,
    last: Instant,
    /// The part of `failures` each of the first few user names had, by
    /// the name's keyed hash (names themselves are not kept).
    by_name: Vec<(u64, u32)>,
}

/// Recent failures by place.
#[derive(Debug)]
pub struct Penalties {
    peers: Mutex<HashMap<IpAddr, Entry>>,
    capacity: usize,
    /// Keys the hash of user names, a new key each process.
    names: RandomState,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties::new()
    }
}

impl Penalties {
    pub fn new() -> Penalties {
        Penalties::with_capacity(MAX_PEERS)
    }

    /// A table that remembers at most `capacity` places.
    pub fn with_capacity(capacity: usize) -> Penalties {
        Penalties { peers: Mutex::new(HashMap::new()), capacity: capacity.max(1), names: RandomState::new() }
    }

    /// Counts a failure of `user` from `peer` and says how long it waits,
    /// and how many recent failures that place now has.
    pub fn fail(&self, peer: IpAddr, user: &str, base: Duration) -> (Duration, u32) {
        self.fail_at(peer, user, base, Instant::now())
    }

    fn fail_at(&self, peer: IpAddr, user: &str, base: Duration, now: Instant) -> (Duration, u32) {
        let key = place(peer);
        let name = self.names.hash_one(user);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&key) && peers.len() >= self.capacity {
            peers.retain(|_, e| now.saturating_duration_since(e.last) < PENALTY_WINDOW);
            if peers.len() >= self.capacity {
                if let Some(oldest) = peers.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
                    peers.remove(&oldest);
                }
            }
        }
        let entry = peers.entry(key).or_insert(Entry { failures: 0, last: now, by_name: Vec::new() });
        if now.saturating_duration_since(entry.last) >= PENALTY_WINDOW {
            entry.failures = 0;
            entry.by_name.clear();
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        if let Some((_, count)) = entry.by_name.iter_mut().find(|(n, _)| *n == name) {
            *count = count.saturating_add(1);
        } else if entry.by_name.len() < NAMES_PER_PLACE {
            entry.by_name.push((name, 1));
        }
        let failures = entry.failures;
        (delay_for(base, failures), failures)
    }

    /// `user` logged in from `peer`: forgets that name's failures there,
    /// and only those.
    pub fn succeed(&self, peer: IpAddr, user: &str) {
        let key = place(peer);
        let name = self.names.hash_one(user);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = peers.get_mut(&key) else { return };
        if let Some(i) = entry.by_name.iter().position(|(n, _)| *n == name) {
            let (_, count) = entry.by_name.swap_remove(i);
            entry.failures = entry.failures.saturating_sub(count);
        }
        if entry.failures == 0 {
            peers.remove(&key);
        }
    }

    /// Recent failures from `peer`'s place.
    pub fn failures(&self, peer: IpAddr) -> u32 {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&place(peer)).filter(|e| e.last.elapsed() < PENALTY_WINDOW).map_or(0, |e| e.failures)
    }

    /// Places remembered.
    pub fn len(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wait after the `failures`-th recent failure: `base`, `2 × base`,
/// `4 × base`, … up to [`MAX_DELAY`] (or `base`, if that is longer).
pub fn delay_for(base: Duration, failures: u32) -> Duration {
    let cap = MAX_DELAY.max(base);
    let doublings = failures.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings).min(cap)
}

/// The place a peer's failures count against.
fn place(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays() {
        let table = [
            (2000 * MS, 1, 2000 * MS),
            (2000 * MS, 2, 4000 * MS),
            (2000 * MS, 3, 8000 * MS),
            (2000 * MS, 4, 15000 * MS),
            (2000 * MS, 100, 15000 * MS),
            (50 * MS, 1, 50 * MS),
            (50 * MS, 2, 100 * MS),
            (50 * MS, 9, 12800 * MS),
            (50 * MS, u32::MAX, 15000 * MS),
            (Duration::ZERO, 5, Duration::ZERO),
            (20000 * MS, 3, 20000 * MS),
        ];
        for (base, failures, want) in table {
            assert_eq!(delay_for(base, failures), want, "{base:?} {failures}");
        }
    }

    #[test]
    fn places() {
        let table = [
            ("192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2::9", "2001:db8:1:2::"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("::1", "::"),
        ];
        for (peer, want) in table {
            assert_eq!(place(peer.parse().unwrap()), want.parse::<IpAddr>().unwrap(), "{peer}");
        }
    }

    #[test]
    fn counts_window_and_success() {
        let p = Penalties::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(p.fail_at(a, "u", 10 * MS, t0), (10 * MS, 1));
        assert_eq!(p.fail_at(a, "u", 10 * MS, t0 + 60 * 1000 * MS), (20 * MS, 2));
        assert_eq!(p.fail_at(b, "u", 10 * MS, t0), (10 * MS, 1));
        // Ten quiet minutes start the count again.
        assert_eq!(p.fail_at(a, "u", 10 * MS, t0 + PENALTY_WINDOW + 60 * 1000 * MS), (10 * MS, 1));
        p.succeed(a, "u");
        assert_eq!(p.failures(a), 0);
        assert_eq!(p.failures(b), 1);
        assert_eq!(p.len(), 1);
        // The same /64 shares its count.
        let c: IpAddr = "2001:db8::1".parse().unwrap();
        let d: IpAddr = "2001:db8::2".parse().unwrap();
        p.fail_at(c, "u", 10 * MS, t0);
        assert_eq!(p.fail_at(d, "u", 10 * MS, t0), (20 * MS, 2));
    }

    #[test]
    fn a_success_forgets_only_its_own_name() {
        let p = Penalties::new();
        let a: IpAddr = "192.0.2.3".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            p.fail_at(a, "alice", 10 * MS, t0 + i * MS);
        }
        p.fail_at(a, "bob", 10 * MS, t0 + 3 * MS);
        assert_eq!(p.failures(a), 4);
        // Logging in as someone else, or as a name that never failed, forgets nothing.
        p.succeed(a, "mallory");
        assert_eq!(p.failures(a), 4);
        p.succeed(a, "bob");
        assert_eq!(p.failures(a), 3);
        p.succeed(a, "bob");
        assert_eq!(p.failures(a), 3);
        assert_eq!(p.fail_at(a, "alice", 10 * MS, t0 + 4 * MS), (80 * MS, 4));
        p.succeed(a, "alice");
        assert_eq!(p.failures(a), 0);
        assert!(p.is_empty());
    }

    #[test]
    fn failures_past_the_names_kept_are_never_forgiven() {
        let p = Penalties::new();
        let a: IpAddr = "192.0.2.4".parse().unwrap();
        let t0 = Instant::now();
        let names: Vec<String> = (0..NAMES_PER_PLACE + 2).map(|i| format!("user{i}")).collect();
        for n in &names {
            p.fail_at(a, n, MS, t0);
        }
        for n in &names {
            p.succeed(a, n);
        }
        assert_eq!(p.failures(a), 2);
    }

    #[test]
    fn bounded() {
        let p = Penalties::with_capacity(100);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::from(0x0a00_0000u32.wrapping_add(i).to_be_bytes());
            p.fail_at(ip, "u", MS, t0 + i * MS);
        }
        assert_eq!(p.len(), 100);
        // The newest are the ones kept.
        assert_eq!(p.failures(IpAddr::from(0x0a00_0000u32.wrapping_add(999).to_be_bytes())), 1);
        assert_eq!(p.failures(IpAddr::from(0x0a00_0000u32.to_be_bytes())), 0);
        // Expired entries go before live ones.
        let late = t0 + PENALTY_WINDOW + 5000 * MS;
        let fresh: IpAddr = "192.0.2.200".parse().unwrap();
        p.fail_at(fresh, "u", MS, late);
        assert_eq!(p.len(), 1);
    }
}

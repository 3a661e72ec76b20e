//! The POP3 benchmark: postroomd beside Dovecot 2.3, both private instances
//! on 127.0.0.1 started by this program, on the same machine in the same
//! run, with the same mbox content and the same users.
//!
//! Run with `cargo bench --bench pop3` (Dovecot from Debian's
//! dovecot-pop3d; `.ci/run` installs it). It measures:
//!
//! - POP3 sessions per second, each server in turn, with 1 client and with
//!   50 clients (threads of this program, each its own user, since a POP3
//!   maildrop lock would serialise sessions of one user), for a fixed time
//!   each. A full session is connect, USER/PASS, STAT, LIST, UIDL, RETR of
//!   every message (read to its end, its octets checked against LIST),
//!   QUIT, and the server closing the connection; a light session, what a
//!   polling client does every few minutes, is connect, USER/PASS, STAT,
//!   UIDL, QUIT. Beside each rate: the server's CPU time per session (all
//!   its processes, those that ended included). The same rows run again
//!   against Dovecot set to reuse its processes (`service_count = 0` for
//!   pop3-login and pop3), the usual tuning for many short sessions; the
//!   goal is stated against Dovecot's defaults.
//! - Resident memory per idle session: 1000 connections that were greeted,
//!   and 1000 that logged in (1000 users), all left idle; the server's
//!   memory before and after, divided by 1000. postroomd is one process
//!   (VmRSS, and Pss); for Dovecot, Rss and Pss summed over the master and
//!   every process it forked (a login process per connection, a pop3
//!   process per logged-in session). Each of these rows starts fresh
//!   servers.
//!
//! Mail: every mbox is generated (benches/mboxgen: realistic mail of about
//! 10 KiB on average, LF line ends, From_ lines), written as an MTA writes
//! a spool and opened once by postroom, which writes its state headers.
//! Each server gets its own copy of each file. `alice` has 1000 messages
//! (the 1-client rows); the 50-client rows use 50 users with 100 messages
//! each (50 x 1000 x 10 KiB would be 500 MB per server); the idle logged-in
//! sessions use 1000 users with 10 messages each. Every session checks its
//! message count; before the timed rows, every user's mail is read once
//! through each server (so both have written \Seen and cleared \Recent, and
//! Dovecot has its index), and alice's 1000 messages are compared between
//! the two servers byte for byte.
//!
//! Both servers check {PLAIN} passwords from a passwd-file (equal and small
//! hashing cost; `POSTROOM_BENCH_SCHEME=ARGON2ID` gives both the same hashes
//! of that scheme instead), allow plain text logins on loopback, and run
//! without TLS.
//!
//! - RETR of one large message (`large`: a 30 MB mbox of one message with
//!   lines of every length, quoted `From ` lines and lines that need
//!   byte-stuffing), in MB/s of message octets, timed from the command to
//!   the final ".": the cost of streaming in batches under the locks.
//!
//! Environment: `POSTROOM_BENCH_SECS` (seconds per rate row and server,
//! default 5), `POSTROOM_BENCH_IDLE` (idle sessions, default 1000),
//! `POSTROOM_BENCH_CLIENTS` (default 50), `POSTROOM_BENCH_SCHEME` (the
//! password scheme, default PLAIN), `POSTROOM_BENCH_LARGE_MB` (size
//! of the large message, default 30), `POSTROOM_BENCH_RUNS` (timed RETRs of
//! it, default 5), `POSTROOM_BENCH_ONLY` (a comma-separated subset of
//! `sessions,idle,large`), `DOVECOT` (default /usr/sbin/dovecot). A quick
//! run: `POSTROOM_BENCH_ONLY=large cargo bench --bench pop3`, or
//! `POSTROOM_BENCH_SECS=1 POSTROOM_BENCH_IDLE=100 POSTROOM_BENCH_CLIENTS=10`. Files go to /tmp/postroom-bench-pop3/run-PID, removed
//! at the end unless `POSTROOM_BENCH_KEEP=1` (for reading the servers' logs).
//! Under root both servers serve mail as nobody.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod mboxgen;

#[path = "pop3/client.rs"]
mod client;
#[path = "pop3/servers.rs"]
mod servers;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use client::Pop3;
use common::{env_flag, env_num, fig, load_average, mail, median, parallel, raise_nofile, Res, RunDir, Table};
use servers::{dovecot_version, Ids, Kind, Mem, Server, User};

const DIR: &str = "/tmp/postroom-bench-pop3";
const SEED: u64 = 0x706f_7033_6265_6e63;
/// Read buffer of a client that downloads mail.
const BIG_BUF: usize = 64 << 10;
/// Read buffer of a client that only logs in.
const SMALL_BUF: usize = 1 << 10;
/// Goal: sessions per second at least this many times Dovecot's.
const GOAL_RATE: f64 = 2.0;
/// Goal: resident memory per idle postroom session below this, in KiB.
const GOAL_IDLE_KIB: f64 = 64.0;

/// The parts of the benchmark (`POSTROOM_BENCH_ONLY`).
const SECTIONS: [&str; 3] = ["sessions", "idle", "large"];

struct Config {
    secs: f64,
    idle: usize,
    clients: usize,
    large_mb: u64,
    runs: usize,
    only: Vec<String>,
    keep: bool,
}

impl Config {
    fn from_env() -> Res<Config> {
        let c = Config {
            secs: env_num("POSTROOM_BENCH_SECS", 5)?.clamp(1, 60) as f64,
            idle: env_num("POSTROOM_BENCH_IDLE", 1000)?.clamp(1, 5000) as usize,
            clients: env_num("POSTROOM_BENCH_CLIENTS", 50)?.clamp(1, 200) as usize,
            large_mb: env_num("POSTROOM_BENCH_LARGE_MB", 30)?.clamp(1, 1000),
            runs: env_num("POSTROOM_BENCH_RUNS", 5)?.clamp(1, 50) as usize,
            only: match std::env::var("POSTROOM_BENCH_ONLY") {
                Ok(v) => v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                Err(_) => SECTIONS.iter().map(|s| s.to_string()).collect(),
            },
            keep: env_flag("POSTROOM_BENCH_KEEP"),
        };
        if let Some(bad) = c.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
            return Err(format!("POSTROOM_BENCH_ONLY: unknown section {bad} (known: {})", SECTIONS.join(",")));
        }
        Ok(c)
    }

    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

/// connect, USER/PASS, STAT, LIST, UIDL, RETR of every message, QUIT.
/// Returns the octets retrieved; with `keep`, every message's bytes.
fn full_session(srv: &Server, u: &User, mut keep: Option<&mut Vec<Vec<u8>>>) -> Res<u64> {
    let mut p = Pop3::connect(srv.name(), srv.port, BIG_BUF)?;
    p.login(&u.name, &u.password)?;
    let (n, total) = p.stat()?;
    if n != u.messages {
        return Err(format!("{} user {}: STAT says {n} messages, the mailbox has {}", srv.name(), u.name, u.messages));
    }
    let sizes = p.list()?;
    if sizes.len() != n as usize || sizes.iter().sum::<u64>() != total {
        return Err(format!("{} user {}: LIST disagrees with STAT", srv.name(), u.name));
    }
    if p.uidl()? != n as usize {
        return Err(format!("{} user {}: UIDL does not list {n} messages", srv.name(), u.name));
    }
    let mut got = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let mut buf = keep.as_ref().map(|_| Vec::with_capacity(size as usize));
        got += p.retr(i + 1, size, buf.as_mut())?;
        if let (Some(k), Some(b)) = (keep.as_deref_mut(), buf) {
            k.push(b);
        }
    }
    p.quit()?;
    Ok(got)
}

/// connect, USER/PASS, STAT, UIDL, QUIT: what a polling client does.
fn light_session(srv: &Server, u: &User) -> Res<u64> {
    let mut p = Pop3::connect(srv.name(), srv.port, SMALL_BUF)?;
    p.login(&u.name, &u.password)?;
    let (n, _) = p.stat()?;
    if n != u.messages {
        return Err(format!("{} user {}: STAT says {n} messages, the mailbox has {}", srv.name(), u.name, u.messages));
    }
    if p.uidl()? != n as usize {
        return Err(format!("{} user {}: UIDL does not list {n} messages", srv.name(), u.name));
    }
    p.quit()?;
    Ok(0)
}

/// CPU seconds of this process (all its threads).
fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What one rate row measured on one server.
struct Rate {
    sessions: u64,
    secs: f64,
    bytes: u64,
    server_cpu: f64,
    client_cpu: f64,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.sessions as f64 / self.secs
    }
    fn cpu_ms(&self) -> f64 {
        1e3 * self.server_cpu / self.sessions.max(1) as f64
    }
}

/// `clients` threads run sessions `f(client)` back to back for `secs`;
/// counts the sessions completed. Any error stops all clients and is the result.
fn measure(srv: &Server, clients: usize, secs: f64, f: &(dyn Fn(usize) -> Res<u64> + Sync)) -> Res<Rate> {
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, self0) = (srv.cpu_secs(), self_cpu());
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(clients + 1);
    let (results, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || -> Res<(u64, u64)> {
                    barrier.wait();
                    let deadline = Instant::now() + Duration::from_secs_f64(secs);
                    let (mut n, mut bytes) = (0u64, 0u64);
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        match f(i) {
                            Ok(b) => {
                                n += 1;
                                bytes += b;
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok((n, bytes))
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let r: Vec<Res<(u64, u64)>> =
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a client thread panicked".into()))).collect();
        (r, t0.elapsed().as_secs_f64())
    });
    let (mut sessions, mut bytes) = (0, 0);
    for r in results {
        let (n, b) = r?;
        sessions += n;
        bytes += b;
    }
    let client_cpu = self_cpu() - self0;
    // Let the last session processes end and be reaped before reading CPU time.
    std::thread::sleep(Duration::from_millis(300));
    let server_cpu = srv.cpu_secs() - cpu0;
    if sessions == 0 {
        return Err(format!("{}: no session completed", srv.name()));
    }
    Ok(Rate { sessions, secs: elapsed, bytes, server_cpu, client_cpu })
}

/// Every message of alice as each server sent it: the same bytes, except
/// that postroom (mboxrd, its default) takes one '>' off `>From ` lines
/// and Dovecot (mboxo) serves them as stored. Returns (messages equal,
/// messages differing only so, octets of difference).
fn compare_mail(pr: &[Vec<u8>], dc: &[Vec<u8>]) -> Res<(usize, usize, u64)> {
    if pr.len() != dc.len() {
        return Err(format!("postroom sent {} messages, Dovecot {}", pr.len(), dc.len()));
    }
    let (mut same, mut quoting, mut octets) = (0, 0, 0u64);
    for (i, (a, b)) in pr.iter().zip(dc).enumerate() {
        if a == b {
            same += 1;
            continue;
        }
        let unquoted = unquote_mboxrd(b);
        if *a == unquoted {
            quoting += 1;
            octets += (b.len() - a.len()) as u64;
            continue;
        }
        let at = a.iter().zip(&unquoted).position(|(x, y)| x != y).unwrap_or(a.len().min(unquoted.len()));
        let show = |v: &[u8]| String::from_utf8_lossy(&v[at.saturating_sub(40)..(at + 40).min(v.len())]).into_owned();
        return Err(format!(
            "message {} differs between the servers at octet {at}: postroom {:?}, Dovecot {:?}",
            i + 1,
            show(a),
            show(&unquoted)
        ));
    }
    Ok((same, quoting, octets))
}

/// One '>' off every line that matches `^>+From `.
fn unquote_mboxrd(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for line in m.split_inclusive(|&b| b == b'\n') {
        let gt = line.iter().take_while(|&&b| b == b'>').count();
        if gt > 0 && line[gt..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Reads every user's mail once through `srv` (writes \Seen, clears
/// \Recent, builds Dovecot's index), and returns alice's messages.
fn warm_up(srv: &Server, alice: &User, many: &[User], idle: &[User]) -> Res<Vec<Vec<u8>>> {
    let mut mail = Vec::new();
    full_session(srv, alice, Some(&mut mail))?;
    full_session(srv, alice, None)?;
    light_session(srv, alice)?;
    parallel(many.len(), 8, |i| full_session(srv, &many[i], None))?;
    parallel(idle.len(), 8, |i| light_session(srv, &idle[i]))?;
    Ok(mail)
}

/// What the idle-session rows measured on one server.
struct Idle {
    rss_kib: f64,
    pss_kib: f64,
    before: Mem,
    after: Mem,
}

/// Starts a fresh server, opens `users.len()` connections that are greeted
/// (and with `login`, log in, each as its own user) and stay idle, and
/// returns the server's memory growth per session.
fn idle_sessions(kind: Kind, dir: &Path, ids: &Ids, users: &[User], login: bool) -> Res<Idle> {
    let n = users.len();
    let cap = n as u32 + 100;
    let srv = match kind {
        Kind::Postroom => Server::postroom(&dir.join("postroom"), ids, cap)?,
        Kind::Dovecot => Server::dovecot(&dir.join("dovecot"), ids, cap, false)?,
    };
    // Sessions of each kind first, so that what the server sets up once is
    // not counted: a few logins at once, so that every password-checking
    // thread has its Argon2 memory (one login gives it to one thread).
    Pop3::connect(srv.name(), srv.port, SMALL_BUF)?.quit()?;
    parallel(common::WARM_LOGINS.min(n), common::WARM_LOGINS, |i| light_session(&srv, &users[i]))?;
    std::thread::sleep(Duration::from_millis(500));
    let before = srv.mem();
    let conns = parallel(n, 8, |i| {
        let mut p = Pop3::connect(srv.name(), srv.port, SMALL_BUF)?;
        if login {
            p.login(&users[i].name, &users[i].password)?;
        }
        Ok(p)
    })?;
    // Settled: a thread per session (postroom); a login process per
    // greeted connection, or a pop3 process per session and no login
    // process left (Dovecot).
    let settled = |m: &Mem| match (kind, login) {
        (Kind::Postroom, _) => m.threads >= before.threads + n as u64,
        (Kind::Dovecot, false) => m.count("pop3-login") >= n as u64,
        (Kind::Dovecot, true) => m.count("pop3") >= n as u64 && m.count("pop3-login") == 0,
    };
    srv.wait_settled(n, Instant::now(), Duration::from_secs(30), settled)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = srv.mem();
    // The sessions are still there.
    let mut conns = conns;
    let mut p = conns.pop().ok_or("no connection")?;
    let alive = if login { p.cmd("NOOP").map(|_| ()) } else { p.capa().map(|_| ()) };
    alive.map_err(|e| format!("an idle session no longer answers: {e}"))?;
    drop(p);
    drop(conns);
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    let (rss_kib, pss_kib) = match kind {
        Kind::Postroom => (per(after.main_vmrss_kib, before.main_vmrss_kib), per(after.pss_kib, before.pss_kib)),
        Kind::Dovecot => (per(after.rss_kib, before.rss_kib), per(after.pss_kib, before.pss_kib)),
    };
    srv.wait_sessions_gone(&before);
    drop(srv);
    Ok(Idle { rss_kib, pss_kib, before, after })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("pop3 bench: FAILED: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let cfg = Config::from_env()?;
    let started = Instant::now();
    let load_before = load_average();
    let ids = Ids::get()?;
    let nofile = raise_nofile(3 * cfg.idle as u64 + 1000, false)?;
    let run_dir = RunDir::create(DIR, "pop3", cfg.keep)?;
    let dir = run_dir.dir.clone();
    let gen = dir.join("gen");
    fs::create_dir_all(&gen).map_err(|e| format!("{}: {e}", gen.display()))?;

    // Mail.
    eprintln!("pop3 bench: generating mail in {}", dir.display());
    let t = Instant::now();
    let big = gen.join("1000.mbox");
    let mid = gen.join("100.mbox");
    let small = gen.join("10.mbox");
    let large_path = gen.join("large.mbox");
    let sessions = cfg.wants("sessions");
    let big_bytes = if sessions { mail::write_mbox(&big, 1000, SEED, false)? } else { 0 };
    let mid_bytes = if sessions { mail::write_mbox(&mid, 100, SEED ^ 0x100, false)? } else { 0 };
    let small_bytes = if cfg.wants("idle") { mail::write_mbox(&small, 10, SEED ^ 0x10, false)? } else { 0 };
    let large_bytes = if cfg.wants("large") { mail::write_large(&large_path, cfg.large_mb << 20, false)? } else { 0 };
    let user = |name: String, template: &Path, messages| User {
        password: format!("pw-{name}-7q"),
        name,
        template: template.to_path_buf(),
        messages,
    };
    let alice = user("alice".into(), &big, 1000);
    let large = user("large".into(), &large_path, 1);
    let many: Vec<User> =
        if sessions { (1..=cfg.clients).map(|i| user(format!("c{i:02}"), &mid, 100)).collect() } else { Vec::new() };
    let idle: Vec<User> = if cfg.wants("idle") {
        (1..=cfg.idle).map(|i| user(format!("m{i:04}"), &small, 10)).collect()
    } else {
        Vec::new()
    };
    let owned: Vec<User> = std::iter::once(&alice)
        .filter(|_| sessions)
        .chain(std::iter::once(&large).filter(|_| cfg.wants("large")))
        .chain(&many)
        .chain(&idle)
        .cloned()
        .collect();
    let pr_dir = dir.join("postroom");
    let dc_dir = dir.join("dovecot");
    servers::postroom_tree(&pr_dir, &owned, &ids)?;
    servers::dovecot_tree(&dc_dir, &owned, &ids)?;
    eprintln!(
        "pop3 bench: {} users, {:.0} MB of mbox per server, in {:.1} s",
        owned.len(),
        (big_bytes + large_bytes + mid_bytes * many.len() as u64 + small_bytes * idle.len() as u64) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let mut table = Table::new("pop3");
    let mut notes: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    let cap = (cfg.clients + cfg.idle) as u32 + 100;
    if sessions {
        sessions_rows(
            &cfg,
            &dir,
            &ids,
            cap,
            &alice,
            &many,
            &idle,
            &mut table,
            &mut notes,
            &mut problems,
            &mut summary,
        )?;
    }
    if cfg.wants("idle") {
        idle_rows(&cfg, &dir, &ids, &idle, &mut table, &mut notes, &mut summary)?;
    }
    if cfg.wants("large") {
        large_rows(&cfg, &dir, &ids, cap, &large, large_bytes, &mut table, &mut notes)?;
    }

    println!(
        "postroom POP3 benchmark beside {} on 127.0.0.1; {} CPUs; load average {load_before} before, {} after; {} s per rate row and server; measured in {:.0} s",
        dovecot_version(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
        cfg.secs,
        started.elapsed().as_secs_f64()
    );
    for n in &notes {
        println!("{n}");
    }
    println!(
        "both: passwd-file with {{{}}} passwords, plain text login on loopback, no TLS, log level info to a file; postroom: defaults otherwise (dotlock + fcntl, fsync); Dovecot: defaults (one login process per connection, one pop3 process per session) with mbox_write_locks = fcntl, its on-disk index (~/mail/.imap), limits raised; \"reusing processes\": also service_count = 0 for pop3-login (process_min_avail = 2) and pop3; descriptor limit {nofile}",
        servers::password_scheme()
    );
    println!();
    table.print();
    for s in &summary {
        println!("{s}");
    }
    if !problems.is_empty() {
        println!();
        println!("server log lines with warnings or errors during the rate rows ({}):", problems.len());
        for l in problems.iter().take(20) {
            println!("  {l}");
        }
    }
    Ok(())
}

/// The rate rows: sessions per second against Dovecot with its defaults and
/// with its processes reused.
#[allow(clippy::too_many_arguments)]
fn sessions_rows(
    cfg: &Config,
    dir: &Path,
    ids: &Ids,
    cap: u32,
    alice: &User,
    many: &[User],
    idle: &[User],
    table: &mut Table,
    notes: &mut Vec<String>,
    problems: &mut Vec<String>,
    summary: &mut Vec<String>,
) -> Res<()> {
    let pr_dir = dir.join("postroom");
    let dc_dir = dir.join("dovecot");
    let pr = Server::postroom(&pr_dir, ids, cap)?;
    let dc = Server::dovecot(&dc_dir, ids, cap, false)?;
    let servers = [&pr, &dc];
    let t = Instant::now();
    let mut mail = Vec::new();
    for s in servers {
        mail.push(warm_up(s, alice, many, idle).map_err(|e| format!("{e}\n{}", s.log_tail(20)))?);
    }
    let (same, quoting, quote_octets) = compare_mail(&mail[0], &mail[1])?;
    let alice_wire: u64 = mail[0].iter().map(|m| m.len() as u64).sum();
    drop(mail);
    eprintln!("pop3 bench: warm-up and checks in {:.1} s", t.elapsed().as_secs_f64());

    let rows = [
        (format!("full sessions/s, 1 client, {} msgs", alice.messages), 1, true),
        (format!("light sessions/s, 1 client, {} msgs", alice.messages), 1, false),
        (format!("full sessions/s, {} clients, 100 msgs each", cfg.clients), cfg.clients, true),
        (format!("light sessions/s, {} clients, 100 msgs each", cfg.clients), cfg.clients, false),
    ];
    let run_row = |s: &Server, name: &str, clients: usize, full: bool| -> Res<Rate> {
        let g = |i: usize| {
            let u = if clients == 1 { alice } else { &many[i] };
            if full {
                full_session(s, u, None)
            } else {
                light_session(s, u)
            }
        };
        let rate = measure(s, clients, cfg.secs, &g).map_err(|e| format!("{name}: {e}\n{}", s.log_tail(20)))?;
        eprintln!(
            "pop3 bench: {name}: {}: {} sessions in {:.2} s, {} MB retrieved, server CPU {} ms/session, client CPU {:.1} s",
            s.name(),
            rate.sessions,
            rate.secs,
            fig(rate.bytes as f64 / 1e6),
            fig(rate.cpu_ms()),
            rate.client_cpu
        );
        Ok(rate)
    };
    // rates[row] = [postroom, Dovecot, Dovecot with process reuse]
    let mut rates: Vec<Vec<Rate>> = Vec::new();
    for (name, clients, full) in &rows {
        let mut r = Vec::new();
        for s in servers {
            r.push(run_row(s, name, *clients, *full)?);
        }
        rates.push(r);
    }
    let mut log_problems = |s: &Server| {
        for l in s.log_problems() {
            problems.push(format!("{}: {l}", s.name()));
        }
    };
    log_problems(&dc);
    drop(dc);
    // The same rows against Dovecot with its processes reused, on the same
    // (warm) mail and index.
    let dcr = Server::dovecot(&dc_dir, ids, cap, true)?;
    full_session(&dcr, alice, None)?;
    light_session(&dcr, alice)?;
    parallel(many.len(), 8, |i| full_session(&dcr, &many[i], None))?;
    for (k, (name, clients, full)) in rows.iter().enumerate() {
        let r = run_row(&dcr, name, *clients, *full)?;
        rates[k].push(r);
    }
    log_problems(&dcr);
    log_problems(&pr);
    drop(dcr);
    drop(pr);

    let mut rate_ratios = Vec::new();
    let mut reuse_ratios = Vec::new();
    let mbs = |x: &Rate| {
        if x.bytes > 0 {
            format!(" ({} MB/s)", fig(x.bytes as f64 / 1e6 / x.secs))
        } else {
            String::new()
        }
    };
    for (d, against) in [(1, ""), (2, " [Dovecot reusing processes]")] {
        for ((name, _, _), r) in rows.iter().zip(&rates) {
            let ratio = r[0].per_sec() / r[d].per_sec();
            if d == 1 { &mut rate_ratios } else { &mut reuse_ratios }.push(ratio);
            table.row(
                format!("{name}{against}"),
                format!("{}{}", fig(r[0].per_sec()), mbs(&r[0])),
                format!("{}{}", fig(r[d].per_sec()), mbs(&r[d])),
                format!("postroom/Dovecot {} (>1: postroom faster)", fig(ratio)),
                format!("goal >= {GOAL_RATE}: {}", if ratio >= GOAL_RATE { "met" } else { "NOT met" }),
            );
        }
        for ((name, _, _), r) in rows.iter().zip(&rates) {
            let (a, b) = (r[0].cpu_ms(), r[d].cpu_ms());
            table.row(
                format!("server CPU ms/session: {}{against}", name.replace(" sessions/s", "")),
                fig(a),
                fig(b),
                format!("Dovecot/postroom {} (>1: postroom cheaper)", fig(b / a)),
                String::new(),
            );
        }
    }
    notes.push(format!(
        "mail: alice {} messages ({:.1} KiB per message on the wire); {} users x 100 messages for the {}-client rows",
        alice.messages,
        alice_wire as f64 / alice.messages as f64 / 1024.0,
        cfg.clients,
        cfg.clients,
    ));
    notes.push(format!(
        "alice's mail through both servers: {same} messages byte-identical, {quoting} differ only in `>From ` unquoting ({quote_octets} octets: postroom reads mboxrd by default, Dovecot mboxo)"
    ));
    notes.push(
        "full session: connect, USER, PASS, STAT, LIST, UIDL, RETR every message (octets checked against LIST), QUIT, server closes; light: connect, USER, PASS, STAT, UIDL, QUIT".into(),
    );
    let range = |v: &[f64]| (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
    let (lo, hi) = range(&rate_ratios);
    let (rlo, rhi) = range(&reuse_ratios);
    summary.push(format!(
        "summary: sessions/s {} to {} x Dovecot (goal >= {GOAL_RATE}: {}); {} to {} x Dovecot reusing processes",
        fig(lo),
        fig(hi),
        if lo >= GOAL_RATE { "met" } else { "not met in every row" },
        fig(rlo),
        fig(rhi),
    ));
    Ok(())
}

/// Memory per idle session, each row on fresh servers.
fn idle_rows(
    cfg: &Config,
    dir: &Path,
    ids: &Ids,
    idle: &[User],
    table: &mut Table,
    notes: &mut Vec<String>,
    summary: &mut Vec<String>,
) -> Res<()> {
    let mut idle_notes = Vec::new();
    let mut idle_ok = true;
    for login in [false, true] {
        let what = if login { "logged in" } else { "greeted" };
        let t = Instant::now();
        let p = idle_sessions(Kind::Postroom, dir, ids, idle, login)?;
        let d = idle_sessions(Kind::Dovecot, dir, ids, idle, login)?;
        eprintln!(
            "pop3 bench: {} idle sessions ({what}) on both servers in {:.1} s",
            idle.len(),
            t.elapsed().as_secs_f64()
        );
        let mut goal = |v: f64| {
            let met = v < GOAL_IDLE_KIB;
            idle_ok &= met;
            format!("goal < {GOAL_IDLE_KIB} KiB: {}", if met { "met" } else { "NOT met" })
        };
        let ratio = |a: f64, b: f64| format!("Dovecot/postroom {} (>1: postroom smaller)", fig(b / a));
        table.row(
            format!("idle session, {what}: KiB resident (postroom VmRSS, Dovecot sum of Rss)"),
            fig(p.rss_kib),
            fig(d.rss_kib),
            ratio(p.rss_kib, d.rss_kib),
            goal(p.rss_kib),
        );
        table.row(
            format!("idle session, {what}: KiB proportional (Pss, summed)"),
            fig(p.pss_kib),
            fig(d.pss_kib),
            ratio(p.pss_kib, d.pss_kib),
            goal(p.pss_kib),
        );
        idle_notes.push(format!(
            "  {what}: postroomd VmRSS {} -> {} KiB, threads {} -> {}; Dovecot {} -> {} processes ({} pop3-login, {} pop3 after), Rss {} -> {} KiB, Pss {} -> {} KiB",
            p.before.main_vmrss_kib,
            p.after.main_vmrss_kib,
            p.before.threads,
            p.after.threads,
            d.before.procs,
            d.after.procs,
            d.after.count("pop3-login"),
            d.after.count("pop3"),
            d.before.rss_kib,
            d.after.rss_kib,
            d.before.pss_kib,
            d.after.pss_kib
        ));
    }
    notes.push(format!(
        "idle sessions ({} connections each, {} users x 10 messages for the logged-in row, Dovecot with its defaults):",
        cfg.idle, cfg.idle
    ));
    notes.extend(idle_notes);
    summary.push(format!("summary: idle session < {GOAL_IDLE_KIB} KiB: {}", if idle_ok { "met" } else { "not met" }));
    Ok(())
}

/// RETR of one large message, timed from the command to the final ".",
/// `cfg.runs` times after one untimed run on each server; MB/s of message
/// octets, median and range.
#[allow(clippy::too_many_arguments)]
fn large_rows(
    cfg: &Config,
    dir: &Path,
    ids: &Ids,
    cap: u32,
    large: &User,
    bytes: u64,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Res<()> {
    let pr = Server::postroom(&dir.join("postroom"), ids, cap)?;
    let dc = Server::dovecot(&dir.join("dovecot"), ids, cap, false)?;
    let mut rates: Vec<Vec<f64>> = Vec::new();
    let mut octets = Vec::new();
    for s in [&pr, &dc] {
        let mut r = Vec::new();
        let mut size = 0;
        for run in 0..=cfg.runs {
            let mut p = Pop3::connect(s.name(), s.port, BIG_BUF)?;
            p.login(&large.name, &large.password)?;
            let sizes = p.list()?;
            size = *sizes.first().ok_or_else(|| format!("{}: no message for {}", s.name(), large.name))?;
            let t = Instant::now();
            p.retr(1, size, None).map_err(|e| format!("{e}\n{}", s.log_tail(20)))?;
            let secs = t.elapsed().as_secs_f64();
            p.quit()?;
            if run > 0 {
                r.push(size as f64 / 1e6 / secs);
            }
        }
        eprintln!("pop3 bench: RETR of {size} octets, {}: {:?} MB/s", s.name(), r);
        rates.push(r);
        octets.push(size);
    }
    drop(dc);
    drop(pr);
    let (p, d) = (median(&rates[0]), median(&rates[1]));
    let range = |v: &[f64]| {
        format!(
            "{}-{}",
            fig(v.iter().copied().fold(f64::INFINITY, f64::min)),
            fig(v.iter().copied().fold(0.0, f64::max))
        )
    };
    table.row(
        format!("RETR of one {:.0} MB message, MB/s (median of {}, range)", bytes as f64 / 1e6, cfg.runs),
        format!("{} ({})", fig(p), range(&rates[0])),
        format!("{} ({})", fig(d), range(&rates[1])),
        format!("postroom/Dovecot {} (>1: postroom faster)", fig(p / d)),
        String::new(),
    );
    notes.push(format!(
        "large message: {:.1} MB mbox, {} octets on the wire from postroom, {} from Dovecot (mboxrd vs mboxo unquoting)",
        bytes as f64 / 1e6,
        octets[0],
        octets[1]
    ));
    Ok(())
}

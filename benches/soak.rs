//! A long soak: the office of tests/soak.rs (IMAP and POP3 clients, an MTA
//! writing the spools, `postroom deliver`) for ten minutes by default
//! (`POSTROOM_SOAK_SECS`), on `POSTROOM_SOAK_USERS` users (default 8),
//! with the server's resident memory, open descriptors and threads sampled
//! every `POSTROOM_SOAK_EVERY` seconds (default 10) and printed as a curve.
//! At the end, the ledger's summary and its checks: nothing lost, nothing
//! doubled, no pseudo-message served, no UIDVALIDITY changed; and whether
//! the curve is flat (the last third within 10% of its middle third).
//!
//!     cargo bench --bench soak
//!     POSTROOM_SOAK_SECS=120 cargo bench --bench soak

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::server::Server;
use support::soak::{self, Plan, Target};
use support::Tmp;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// VmRSS (KiB), open descriptors and threads of a process.
fn sample(pid: u32) -> Option<(u64, usize, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
    };
    let rss: u64 = field("VmRSS:")?;
    let threads: usize = field("Threads:")? as usize;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds, threads))
}

fn main() {
    let secs = env("POSTROOM_SOAK_SECS", 600);
    let every = env("POSTROOM_SOAK_EVERY", 10).max(1);
    let users: Vec<String> = (0..env("POSTROOM_SOAK_USERS", 8)).map(|i| format!("user{i}")).collect();
    let t = Tmp::new();
    std::fs::create_dir_all(t.path("spool")).unwrap();
    let mut initial = Vec::new();
    for u in &users {
        let spool = t.path(&format!("spool/{u}"));
        std::fs::write(&spool, b"").unwrap();
        for k in 0..20 {
            let token = format!("soak-initial-{u}-{k}");
            soak::mta_append(&spool, &soak::mta_message(&token)).unwrap();
            initial.push((u.clone(), token));
        }
    }
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut s = Server::start(t.dir.path(), &refs, "mbox-lock-timeout 60s\npop3-uidl-format uw\nlog-level info\n");
    let pid = s.child.id();
    let target = Target {
        imap: s.imap,
        pop3: s.pop3,
        conf: s.conf.clone(),
        spools: users.iter().map(|u| (u.clone(), s.spool(u))).collect(),
    };
    let plan = Plan {
        users: users.clone(),
        imap: 2,
        pop3: 1,
        mta: 2,
        deliver: 2,
        duration: Duration::from_secs(secs),
        seed: 0x50a4_2026,
    };
    println!("soak: {} users, {secs} s, samples every {every} s (server pid {pid})", users.len());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut curve = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(v) = sample(pid) {
                    curve.push((start.elapsed().as_secs(), v));
                }
                let next = Duration::from_secs(every * curve.len() as u64);
                while start.elapsed() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            curve
        })
    };
    let ledger = soak::run_with_initial(&plan, &target, &initial);
    stop.store(true, Ordering::Relaxed);
    let curve = sampler.join().unwrap();
    let alive = s.child.try_wait().unwrap().is_none();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = s.child.wait();
    for u in &users {
        soak::check_file(&ledger, u, &s.spool(u));
    }

    println!("\n   t/s   RSS/KiB   fds  threads");
    for (t, (rss, fds, threads)) in &curve {
        println!("{t:>6} {rss:>9} {fds:>5} {threads:>8}");
    }
    let third = curve.len() / 3;
    if third >= 1 {
        let mean = |xs: &[(u64, (u64, usize, usize))], f: fn(&(u64, usize, usize)) -> f64| {
            xs.iter().map(|(_, v)| f(v)).sum::<f64>() / xs.len() as f64
        };
        let (mid, last) = (&curve[third..2 * third], &curve[2 * third..]);
        for (name, f) in [
            ("RSS", (|v: &(u64, usize, usize)| v.0 as f64) as fn(&(u64, usize, usize)) -> f64),
            ("fds", |v| v.1 as f64),
            ("threads", |v| v.2 as f64),
        ] {
            let (m, l) = (mean(mid, f), mean(last, f));
            let ratio = if m > 0.0 { l / m } else { 1.0 };
            println!(
                "{name}: middle third {m:.0}, last third {l:.0}, ratio {ratio:.3} {}",
                if ratio <= 1.10 { "(flat)" } else { "(GROWING)" }
            );
        }
    }
    println!("\n{}", soak::summary(&plan, &ledger));
    let failures = ledger.failures();
    println!("server alive at the end: {alive}; ledger failures: {}", failures.len());
    for f in failures.iter().take(40) {
        println!("  {f}");
    }
    if !failures.is_empty() || !alive {
        std::process::exit(1);
    }
}

//! A mail office under load for a minute (`POSTROOM_SOAK_SECS` to change
//! it): IMAP and POP3 clients, an MTA writing the spools itself and
//! `postroom deliver`, on four users at once, with a ledger of every
//! message (tests/support/soak.rs). No pseudo-message is ever served, no
//! UIDVALIDITY changes, no UID is reused or goes backwards, nothing is
//! lost or doubled, and every file ends with one consistent state.

mod support;

use std::time::Duration;

use support::server::Server;
use support::soak::{self, Plan, Target};
use support::*;

fn seconds() -> u64 {
    std::env::var("POSTROOM_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

#[test]
fn imap_pop3_mta_and_deliver_lose_nothing_and_keep_uidvalidity() {
    let t = Tmp::new();
    let users: Vec<String> = (0..4).map(|i| format!("user{i}")).collect();
    std::fs::create_dir_all(t.path("spool")).unwrap();
    // Start from a few messages each, delivered by the MTA before the
    // server ever saw the file (no state in it yet).
    let mut initial = Vec::new();
    for u in &users {
        let spool = t.path(&format!("spool/{u}"));
        std::fs::write(&spool, b"").unwrap();
        for k in 0..3 {
            let token = format!("soak-initial-{u}-{k}");
            soak::mta_append(&spool, &soak::mta_message(&token)).unwrap();
            initial.push((u.clone(), token));
        }
    }
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut s = Server::start(t.dir.path(), &refs, "mbox-lock-timeout 60s\npop3-uidl-format uw\n");
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
        duration: Duration::from_secs(seconds()),
        seed: 0x5eed_50a4,
    };
    let ledger = soak::run_with_initial(&plan, &target, &initial);
    println!("{}", soak::summary(&plan, &ledger));
    // The server is still up; then stopped, every file is consistent.
    assert!(s.child.try_wait().unwrap().is_none(), "postroomd died: {}", s.log_text());
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let _ = s.child.wait();
    for u in &users {
        soak::check_file(&ledger, u, &s.spool(u));
    }
    let failures = ledger.failures();
    if !failures.is_empty() && std::env::var_os("POSTROOM_SOAK_KEEP").is_some() {
        let kept = t.dir.keep();
        eprintln!("kept {}", kept.display());
    }
    let log = s.log_text();
    let resets: Vec<&str> = log.lines().filter(|l| l.contains("UIDVALIDITY") || l.contains("uidvalidity")).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n--- server log lines about UIDVALIDITY:\n{}",
        failures.len(),
        failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n"),
        resets.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let c = &ledger.counts;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n(&c.imap_expunged) > 0 && n(&c.pop3_deleted) > 0 && n(&c.mta_appends) > 0 && n(&c.delivered) > 0,
        "too little happened: {}",
        soak::summary(&plan, &ledger)
    );
}

//! Deliveries (separate `postroom deliver` processes and an in-process
//! appender) race with a session that expunges and changes flags. After a
//! few seconds: every delivered message is present exactly once and
//! byte-exact, and every message whose expunge was confirmed is gone.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postroom::store::{Event, Flags, StoreError};
use support::*;

#[test]
fn deliveries_expunges_and_flag_changes_race_without_loss() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "mbox-lock-timeout 60s\n");
    let spool = t.path("spool/alice");
    std::fs::create_dir_all(t.path("spool")).unwrap();
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..3 {
        let conf = conf.clone();
        let delivered = Arc::clone(&delivered);
        handles.push(std::thread::spawn(move || {
            for i in 0..12 {
                let id = format!("p{w}-{i}");
                let mut child = Command::new(env!("CARGO_BIN_EXE_postroom"))
                    .args(["deliver", "-f"])
                    .arg(&conf)
                    .arg("alice")
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(&message_for(&id)).unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "deliver {id}: {}", String::from_utf8_lossy(&out.stderr));
                delivered.lock().unwrap().push(id);
            }
        }));
    }
    {
        let spool = spool.clone();
        let delivered = Arc::clone(&delivered);
        handles.push(std::thread::spawn(move || {
            let mut mb = open(&spool);
            for i in 0..20 {
                let id = format!("a-{i}");
                mb.append(&message_for(&id), Flags::SEEN, &["$Forwarded"], None, "x").unwrap();
                delivered.lock().unwrap().push(id);
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    let expunged = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mutator = {
        let spool = spool.clone();
        let expunged = Arc::clone(&expunged);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !spool.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut mb = open(&spool);
            let mut round = 0u64;
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) || start.elapsed() < Duration::from_secs(3) {
                round += 1;
                mb.refresh().unwrap();
                if mb.is_empty() {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let i = (round * 7919) as usize % mb.len();
                if round % 3 == 0 {
                    let bytes = match mb.message_bytes(i) {
                        Ok(b) => b,
                        Err(StoreError::Changed(_)) => continue,
                        Err(e) => panic!("{e}"),
                    };
                    let id = id_of(&bytes).expect("known message");
                    let uid = mb.messages()[i].uid;
                    let ev = mb.expunge(&[uid]).unwrap();
                    if ev.iter().any(|e| matches!(e, Event::Expunged(u) if u.contains(&uid))) {
                        expunged.lock().unwrap().insert(id);
                    }
                } else {
                    let f = Flags((round % 31) as u8);
                    mb.set_flags(i, f, round % 2);
                    mb.flush().unwrap();
                }
                if start.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            round
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let rounds = mutator.join().unwrap();
    assert!(rounds > 10, "the mutator ran {rounds} rounds");
    let mb = open(&spool);
    let delivered = delivered.lock().unwrap().clone();
    let expunged = expunged.lock().unwrap().clone();
    assert_eq!(delivered.len(), 56);
    assert!(!expunged.is_empty(), "some expunges happened");
    let mut seen = HashMap::new();
    for (uid, bytes) in contents(&mb) {
        let id = id_of(&bytes).expect("known message");
        assert_eq!(bytes, message_for(&id), "{id} byte-exact");
        assert!(seen.insert(id.clone(), uid).is_none(), "{id} twice");
    }
    for id in &delivered {
        if expunged.contains(id) {
            assert!(!seen.contains_key(id), "{id} was expunged and came back");
        } else {
            assert!(seen.contains_key(id), "{id} LOST");
        }
    }
    assert_eq!(seen.len(), delivered.len() - expunged.len());
}

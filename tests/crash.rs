//! Kill -9 at any instant loses no message.
//!
//! A child process (this test binary, running the ignored `crash_child`)
//! expunges, rewrites state and appends in a loop, logging what it is about
//! to do before each step. The parent kills it with SIGKILL, at every named
//! step of a rewrite and then at 200 random instants (seeded), and checks
//! after each kill that the mailbox opens, that every message not named in
//! the child's log is present exactly once and byte-exact, and that nothing
//! else is there.

mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use postroom::store::Flags;
use support::*;

fn spawn_child(dir: &Path, seed: u64, crash_at: Option<&str>) -> Child {
    spawn_child_with(dir, seed, crash_at, false)
}

/// With `full_disk`, every rewrite finds no room for its journal, so
/// expunges take the in-place compaction.
fn spawn_child_with(dir: &Path, seed: u64, crash_at: Option<&str>, full_disk: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("POSTROOM_CRASH_DIR", dir)
        .env("POSTROOM_CRASH_SEED", seed.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(step) = crash_at {
        cmd.env("POSTROOM_TEST_CRASH_AT", step);
    }
    if full_disk {
        cmd.env("POSTROOM_TEST_FULL_DISK", "1");
    }
    cmd.spawn().expect("spawn child")
}

/// Builds a mailbox of `n` messages; returns the ids present.
fn setup(dir: &Path, n: usize) -> Vec<String> {
    let _ = fs::remove_file(dir.join("box"));
    let _ = fs::remove_file(dir.join("log"));
    // A fresh mailbox: a dotlock a killed child left (it may have died
    // before writing its pid, and an empty dotlock is only stale by age)
    // belongs to the old one.
    let _ = fs::remove_file(dir.join("box.lock"));
    let _ = fs::remove_file(dir.join("box.journal"));
    let mut mb = open(&dir.join("box"));
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("m{i}");
        mb.append(&message_for(&id), Flags::empty(), &[], None, "x").unwrap();
        ids.push(id);
    }
    ids
}

/// Checks the invariant; returns the ids now present.
fn verify(dir: &Path, before: &[String], context: &str) -> Vec<String> {
    let log = fs::read_to_string(dir.join("log")).unwrap_or_default();
    let mut maybe_gone = HashSet::new();
    let mut maybe_new = HashSet::new();
    for line in log.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("expunge") => maybe_gone.extend(w.map(String::from)),
            Some("append") => maybe_new.extend(w.map(String::from)),
            _ => {}
        }
    }
    let mb = open(&dir.join("box"));
    let mut seen = HashMap::new();
    let mut present = Vec::new();
    for (uid, bytes) in contents(&mb) {
        let id = id_of(&bytes)
            .unwrap_or_else(|| panic!("{context}: unknown message uid {uid}: {:?}", String::from_utf8_lossy(&bytes)));
        assert_eq!(bytes, message_for(&id), "{context}: message {id} damaged");
        assert!(seen.insert(id.clone(), uid).is_none(), "{context}: {id} twice");
        assert!(before.contains(&id) || maybe_new.contains(&id), "{context}: {id} came from nowhere");
        present.push(id);
    }
    for id in before {
        assert!(seen.contains_key(id) || maybe_gone.contains(id), "{context}: {id} LOST");
    }
    // UIDs ascend with the file order.
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "{context}: uids {uids:?}");
    assert!(!postroom::store::journal::journal_path(&dir.join("box")).exists(), "{context}: journal left after open");
    present
}

#[test]
fn kill_at_every_step_of_a_rewrite() {
    let t = Tmp::new();
    let steps = [
        "journal-data",
        "journal-header",
        "tail-written",
        "tail-synced",
        "committed",
        "truncated",
        "done",
        "append-journal",
        "append-written",
    ];
    for (k, step) in steps.iter().enumerate() {
        for seed in 0..4u64 {
            let ids = setup(t.dir.path(), 40);
            let mut child = spawn_child(t.dir.path(), seed * 31 + k as u64, Some(step));
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            let context = format!("step {step} seed {seed} status {status:?}");
            verify(t.dir.path(), &ids, &context);
        }
    }
}

/// Appends `id` as an MTA that knows nothing of our journal does (Postfix
/// `local`): it breaks the dotlock a killed process left, takes a classic
/// fcntl lock, and appends; with `newline_first`, it starts with a newline
/// when the file does not end with one, as some MTAs do.
fn mta_deliver(dir: &Path, id: &str, newline_first: bool) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    // Every process that could hold it has been killed.
    let _ = fs::remove_file(dir.join("box.lock"));
    let f = fs::OpenOptions::new().read(true).write(true).open(dir.join("box")).unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) }, 0);
    let len = f.metadata().unwrap().len();
    let mut data = Vec::new();
    if newline_first && len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1).unwrap();
        if last[0] != b'\n' {
            data.push(b'\n');
        }
    }
    data.extend_from_slice(b"From mta@example.org Thu Nov 26 16:01:55 2026\n");
    data.extend_from_slice(&postroom::store::transform::stored(&message_for(id), postroom::store::MboxFormat::Mboxrd));
    data.extend_from_slice(b"\n");
    f.write_all_at(&data, len).unwrap();
    fl.l_type = libc::F_UNLCK as libc::c_short;
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
}

/// Opens the mailbox in a child that is killed at `step` of the recovery.
fn recover_killed_at(dir: &Path, step: &str) -> Option<std::process::ExitStatus> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "recover_child", "--nocapture", "--test-threads=1"])
        .env("POSTROOM_CRASH_DIR", dir)
        .env("POSTROOM_TEST_CRASH_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn child");
    wait_timeout(&mut child, Duration::from_secs(60))
}

/// Issue 8, finding 6: killed in a rewrite or an append, restarted after
/// the MTA delivered more mail into the file meanwhile, the store kept only
/// the bytes beyond the lengths its journal named, and the MTA's messages
/// (which began below them) were cut off or lost. Also killed again in the
/// middle of recovering, with more mail from the MTA after each kill.
#[test]
fn kill_at_every_step_while_the_mta_delivers() {
    let t = Tmp::new();
    let steps = [
        "journal-data",
        "journal-header",
        "extended",
        "tail-chunk",
        "tail-written",
        "tail-synced",
        "committed",
        "truncated",
        "append-journal",
        "append-extended",
        "append-written",
        "compact-planned",
        "compact-step",
        "compact-moved",
        "compact-truncated",
    ];
    let recovery =
        [None, Some("rescue-saved"), Some("rescue-written"), Some("rescue-placed"), Some("rescue-truncated")];
    let mut n = 0;
    for (k, step) in steps.iter().enumerate() {
        for seed in 0..5u64 {
            let mut ids = setup(t.dir.path(), 40);
            if *step == "tail-chunk" {
                // Rewrites move more than a chunk (1 MiB) only in a big box.
                let mut mb = open(&t.path("box"));
                for i in 0..1200 {
                    let id = format!("more{i}");
                    mb.append(&message_for(&id), Flags::empty(), &[], None, "x").unwrap();
                    ids.push(id);
                }
            }
            let full_disk = step.starts_with("compact");
            let mut child = spawn_child_with(t.dir.path(), seed * 31 + k as u64, Some(step), full_disk);
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            for j in 0..2 {
                let id = format!("mta-{step}-{seed}-{j}");
                mta_deliver(t.dir.path(), &id, (seed + j) % 2 == 0);
                ids.push(id);
                n += 1;
            }
            if let Some(r) = recovery[seed as usize % recovery.len()] {
                recover_killed_at(t.dir.path(), r);
                let id = format!("mta-{step}-{seed}-after-{r}");
                mta_deliver(t.dir.path(), &id, seed % 2 == 1);
                ids.push(id);
            }
            let context = format!("step {step} seed {seed} status {status:?}");
            if full_disk {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL), "{context}: not killed there");
            }
            verify(t.dir.path(), &ids, &context);
        }
    }
    assert!(n > 0);
}

#[test]
fn kill_at_random_instants() {
    let t = Tmp::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut ids = setup(t.dir.path(), 150);
    for iter in 0..200 {
        let _ = fs::remove_file(t.path("log"));
        let mut child = spawn_child(t.dir.path(), rng.next(), None);
        std::thread::sleep(Duration::from_micros(2000 + rng.below(60_000) as u64));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        ids = verify(t.dir.path(), &ids, &format!("iteration {iter}"));
        if ids.len() < 40 {
            ids = setup(t.dir.path(), 150);
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The child of the recovery kills: opens the mailbox (recovering it).
#[test]
#[ignore = "helper process of the crash tests"]
fn recover_child() {
    let Some(dir) = std::env::var_os("POSTROOM_CRASH_DIR").map(PathBuf::from) else { return };
    let _ = open(&dir.join("box"));
}

/// The child: changes the mailbox until killed (or for a bounded number of
/// rounds). Runs only when the parent asks for it.
#[test]
#[ignore = "helper process of the crash tests"]
fn crash_child() {
    let Some(dir) = std::env::var_os("POSTROOM_CRASH_DIR").map(PathBuf::from) else { return };
    let seed: u64 = std::env::var("POSTROOM_CRASH_SEED").unwrap().parse().unwrap();
    let mut rng = Rng(seed | 1);
    let mut log = fs::OpenOptions::new().create(true).append(true).open(dir.join("log")).unwrap();
    let mut note = |line: String| {
        log.write_all(line.as_bytes()).unwrap();
        log.write_all(b"\n").unwrap();
        log.sync_data().unwrap();
    };
    let mut mb = open(&dir.join("box"));
    // With no room for journals, only expunges can work (in place).
    let full_disk = std::env::var_os("POSTROOM_TEST_FULL_DISK").is_some();
    for round in 0..200 {
        if mb.is_empty() {
            break;
        }
        match if full_disk { 0 } else { rng.below(4) } {
            0 | 1 => {
                // Expunge one to three messages.
                let mut uids = Vec::new();
                let mut names = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(mb.len());
                    let id = id_of(&mb.message_bytes(i).unwrap()).unwrap();
                    uids.push(mb.messages()[i].uid);
                    names.push(id);
                }
                note(format!("expunge {}", names.join(" ")));
                mb.expunge(&uids).unwrap();
            }
            2 => {
                // Enough keywords that the state block must grow: a rewrite
                // from that message on.
                let i = rng.below(mb.len());
                let mut bits = 0u64;
                for k in 0..(3 + rng.below(10)) {
                    if let Some(b) = mb.keyword_bit(&format!("kw-{round}-{k}-padding-long-name")) {
                        bits |= 1 << b;
                    }
                }
                let flags = Flags(rng.below(32) as u8);
                mb.set_flags(i, flags, bits);
                mb.flush().unwrap();
            }
            _ => {
                let id = format!("n{seed:x}-{round}");
                note(format!("append {id}"));
                mb.append(&message_for(&id), Flags::empty(), &[], None, "x").unwrap();
            }
        }
    }
}

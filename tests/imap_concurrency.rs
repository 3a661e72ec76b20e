//! IMAP sessions sharing one mailbox while the MTA delivers into it: two
//! sessions, then ten, for a few seconds each, change flags, mark and
//! expunge messages, append, fetch and check bodies, while `postroom
//! deliver` processes add mail.
//!
//! Every session keeps a model of its own view, as a client does: the
//! UID and flags of each message by sequence number, changed only by what
//! the server tells it (EXISTS, EXPUNGE, FETCH, in the order sent). Every
//! number the server sends must fit the model (no EXPUNGE or FETCH beyond
//! the mailbox, no EXISTS that shrinks it, no FETCH naming another UID for
//! a message number); when everything has stopped, one NOOP brings each
//! model up to date, and `UID FETCH 1:* (UID FLAGS)` must then say exactly
//! what the model says: no notice was lost. All the models and the mbox
//! file agree, and nothing delivered is lost: every message delivered and
//! not expunged by an EXPUNGE some session was told of is in the file
//! exactly once, byte for byte.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postroom::store::Flags;
use support::server::{Imap, Resp, Server};
use support::*;

/// What the sessions and deliverers share.
#[derive(Default)]
struct World {
    /// Message ids whose delivery or APPEND was confirmed.
    delivered: Mutex<Vec<String>>,
    /// UID to message id, as far as some session learned it.
    ids: Mutex<HashMap<u32, String>>,
    /// UIDs some session was told were expunged.
    expunged: Mutex<HashSet<u32>>,
    stop: AtomicBool,
    /// Sessions that have stopped; then, the word to check.
    stopped: AtomicUsize,
    check: AtomicBool,
    /// Commands the sessions sent, for the record.
    commands: AtomicUsize,
}

/// One message as a session knows it.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    uid: Option<u32>,
    flags: Option<BTreeSet<String>>,
}

/// One untagged response, literals cut out: the line with `{n}` kept,
/// and the literals' bytes in order.
struct Untagged {
    line: String,
    literals: Vec<Vec<u8>>,
}

/// Splits raw untagged responses (literals inline, as `Imap` returns
/// them) into responses. Checks that no byte is NUL.
fn split(raw: &[u8]) -> Vec<Untagged> {
    if let Some(p) = raw.iter().position(|&b| b == 0) {
        panic!("NUL byte in a response: {:?}", String::from_utf8_lossy(&raw[p.saturating_sub(80)..p + 1]));
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let mut line = String::new();
        let mut literals = Vec::new();
        loop {
            let eol = raw[at..].windows(2).position(|w| w == b"\r\n").expect("response line without CRLF") + at;
            let part = &raw[at..eol];
            line.push_str(&String::from_utf8_lossy(part));
            at = eol + 2;
            let n = part
                .strip_suffix(b"}")
                .and_then(|p| p.iter().rposition(|&b| b == b'{').map(|o| &p[o + 1..]))
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<usize>().ok());
            match n {
                Some(n) => {
                    literals.push(raw[at..at + n].to_vec());
                    at += n;
                }
                None => break,
            }
        }
        out.push(Untagged { line, literals });
    }
    out
}

/// `FLAGS (...)` of a FETCH response, as a set without `\Recent`.
fn flags_in(line: &str) -> Option<BTreeSet<String>> {
    let start = line.find("FLAGS (")? + "FLAGS (".len();
    let end = start + line[start..].find(')')?;
    Some(line[start..end].split(' ').filter(|f| !f.is_empty() && *f != "\\Recent").map(String::from).collect())
}

fn uid_in(line: &str) -> Option<u32> {
    let start = line.find("(UID ").map(|p| p + 5).or_else(|| line.find(" UID ").map(|p| p + 5))?;
    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A session and its model.
struct Session {
    name: String,
    imap: Imap,
    view: Vec<Known>,
    world: Arc<World>,
    rng: Rng,
    appended: usize,
}

impl Session {
    /// Sends a command; applies what the server said to the model.
    #[track_caller]
    fn cmd(&mut self, c: &str) -> Resp {
        self.world.commands.fetch_add(1, Ordering::Relaxed);
        let r = self.imap.cmd(c);
        self.apply(&r, c);
        r
    }

    /// Applies untagged responses in order; panics at anything that
    /// doesn't fit the model.
    #[track_caller]
    fn apply(&mut self, r: &Resp, what: &str) {
        assert!(!r.status.starts_with("BAD"), "{}: {what}: {}", self.name, r.status);
        assert!(!r.status.contains('\0'), "{}: {what}: NUL in {:?}", self.name, r.status);
        for u in split(&r.untagged) {
            let words: Vec<&str> = u.line.splitn(4, ' ').collect();
            let len = self.view.len();
            let ctx = || format!("{}: after {what:?}: {:?} (view of {len})", self.name, u.line);
            match (words.get(1), words.get(2)) {
                (_, Some(&"EXISTS")) => {
                    let n: usize = words[1].parse().unwrap();
                    assert!(n >= self.view.len(), "EXISTS shrank the mailbox: {}", ctx());
                    self.view.resize(n, Known { uid: None, flags: None });
                }
                (_, Some(&"EXPUNGE")) => {
                    let n: usize = words[1].parse().unwrap();
                    assert!(n >= 1 && n <= self.view.len(), "EXPUNGE of no message: {}", ctx());
                    let gone = self.view.remove(n - 1);
                    if let Some(uid) = gone.uid {
                        self.world.expunged.lock().unwrap().insert(uid);
                    }
                }
                (_, Some(&"FETCH")) => {
                    let n: usize = words[1].parse().unwrap();
                    assert!(n >= 1 && n <= self.view.len(), "FETCH of no message: {}", ctx());
                    let known = &mut self.view[n - 1];
                    if let Some(uid) = uid_in(&u.line) {
                        match known.uid {
                            Some(k) => assert_eq!(k, uid, "FETCH names another UID: {}", ctx()),
                            None => known.uid = Some(uid),
                        }
                    }
                    if let Some(f) = flags_in(&u.line) {
                        known.flags = Some(f);
                    }
                    // A body: byte for byte what was delivered.
                    for lit in &u.literals {
                        if lit.starts_with(b"Message-ID: ") || lit.is_empty() {
                            continue;
                        }
                        let id = id_of(lit).unwrap_or_else(|| panic!("unknown message: {}", ctx()));
                        assert!(*lit == message_for(&id), "{id} differs: {}", ctx());
                    }
                    if let (Some(uid), Some(lit)) = (known.uid, u.literals.first()) {
                        if let Some(id) = id_of(lit) {
                            let mut ids = self.world.ids.lock().unwrap();
                            let was = ids.insert(uid, id.clone());
                            assert!(was.is_none() || was.as_deref() == Some(&id), "UID {uid} is two messages");
                        }
                    }
                }
                (Some(&"BYE"), _) => panic!("the server hung up: {}", ctx()),
                _ => {}
            }
        }
    }

    fn known_uids(&self) -> Vec<u32> {
        self.view.iter().filter_map(|k| k.uid).collect()
    }

    fn pick(&mut self) -> Option<u32> {
        let known = self.known_uids();
        if known.is_empty() {
            return None;
        }
        Some(known[self.rng.below(known.len())])
    }

    /// The UIDs (and flags) of messages this session knows only by number.
    fn resolve(&mut self) {
        if let Some(first) = self.view.iter().position(|k| k.uid.is_none()) {
            if self.rng.below(2) == 0 {
                self.cmd(&format!("FETCH {}:* (UID FLAGS)", first + 1));
            } else {
                let after = self.known_uids().into_iter().max().unwrap_or(0);
                self.cmd(&format!("UID FETCH {}:* (UID FLAGS)", after + 1));
            }
        }
    }

    /// One random step.
    fn step(&mut self) {
        match self.rng.below(20) {
            0..=3 => {
                self.cmd("NOOP");
            }
            4..=9 => {
                let Some(uid) = self.pick() else { return };
                let flag = ["\\Flagged", "\\Seen", "\\Answered", "$Kw0", "$Kw1"][self.rng.below(5)];
                let op = if self.rng.below(2) == 0 { "+" } else { "-" };
                self.cmd(&format!("UID STORE {uid} {op}FLAGS ({flag})"));
            }
            10 => {
                // Message numbers too: sequence numbers must be right.
                if self.view.is_empty() {
                    return;
                }
                let n = self.rng.below(self.view.len()) + 1;
                self.cmd(&format!("STORE {n} +FLAGS ($Kw2)"));
            }
            11..=12 => self.delete(),
            13..=14 => {
                let id = format!("{}-a{}", self.name, self.appended);
                self.appended += 1;
                let r = self.imap.append("INBOX", "", &message_for(&id));
                self.world.commands.fetch_add(1, Ordering::Relaxed);
                self.apply(&r, "APPEND");
                if r.ok() {
                    let uid: u32 =
                        r.status.split(' ').nth(3).and_then(|u| u.trim_end_matches(']').parse().ok()).unwrap();
                    self.world.ids.lock().unwrap().insert(uid, id.clone());
                    self.world.delivered.lock().unwrap().push(id);
                }
            }
            15..=16 => self.resolve(),
            17..=18 => {
                let Some(uid) = self.pick() else { return };
                self.cmd(&format!("UID FETCH {uid} (UID FLAGS BODY.PEEK[])"));
            }
            _ => {
                self.cmd("UID FETCH 1:* (UID FLAGS)");
            }
        }
    }

    /// Marks a message \Deleted (after learning which message it is) and
    /// expunges it, or every \Deleted message.
    fn delete(&mut self) {
        let Some(uid) = self.pick() else { return };
        if !self.world.ids.lock().unwrap().contains_key(&uid) {
            // `apply` learns the id from the Message-ID field.
            self.cmd(&format!("UID FETCH {uid} (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"));
            if !self.world.ids.lock().unwrap().contains_key(&uid) {
                return; // expunged meanwhile
            }
        }
        self.cmd(&format!("UID STORE {uid} +FLAGS (\\Deleted)"));
        if self.rng.below(2) == 0 {
            self.cmd("EXPUNGE");
        } else {
            self.cmd(&format!("UID EXPUNGE {uid}"));
        }
    }

    /// When nothing changes any more: the model is the server's view.
    fn final_check(&mut self) -> Vec<(u32, BTreeSet<String>)> {
        self.cmd("NOOP");
        let before = self.view.clone();
        let r = self.cmd("UID FETCH 1:* (UID FLAGS)");
        r.assert_ok();
        let lines = split(&r.untagged);
        assert_eq!(lines.len(), before.len(), "{}: {} responses for {} messages", self.name, lines.len(), before.len());
        for (i, (u, k)) in lines.iter().zip(&before).enumerate() {
            let uid = uid_in(&u.line).unwrap();
            assert!(u.line.starts_with(&format!("* {} FETCH (", i + 1)), "{}: {:?}", self.name, u.line);
            if let Some(want) = k.uid {
                assert_eq!(uid, want, "{}: message {} has another UID", self.name, i + 1);
            }
            if let Some(want) = &k.flags {
                assert_eq!(
                    flags_in(&u.line).as_ref(),
                    Some(want),
                    "{}: flags of UID {uid}: a notice was lost",
                    self.name
                );
            }
        }
        self.view.iter().map(|k| (k.uid.unwrap(), k.flags.clone().unwrap())).collect()
    }
}

/// Delivers `id` as the MTA does, as the user the server runs as.
fn deliver(conf: &std::path::Path, id: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postroom"));
    cmd.args(["deliver", "-f"]).arg(conf).arg("alice").stdin(Stdio::piped()).stderr(Stdio::piped());
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        let nobody = postroom::auth::passwd::system_account("nobody").unwrap().unwrap();
        cmd.uid(nobody.uid.unwrap()).gid(nobody.gid.unwrap());
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(&message_for(id)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "deliver {id}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The flags of a stored message, as a set of names.
fn names(f: Flags, keywords: u64, kw: &[String]) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = [
        (Flags::ANSWERED, "\\Answered"),
        (Flags::FLAGGED, "\\Flagged"),
        (Flags::DELETED, "\\Deleted"),
        (Flags::SEEN, "\\Seen"),
        (Flags::DRAFT, "\\Draft"),
    ]
    .iter()
    .filter(|(b, _)| f.contains(*b))
    .map(|(_, n)| n.to_string())
    .collect();
    s.extend((0..kw.len()).filter(|k| keywords & (1 << k) != 0).map(|k| kw[k].clone()));
    s
}

/// `sessions` sessions and `deliverers` delivering processes on alice's
/// INBOX for `busy`, then the checks.
fn race(sessions: usize, deliverers: usize, busy: Duration) {
    let t = Tmp::new();
    fs::create_dir_all(t.path("spool")).unwrap();
    let initial: Vec<String> = (0..10).map(|i| format!("initial-{i}")).collect();
    {
        let mut mb = open(&t.path("spool/alice"));
        for id in &initial {
            mb.append(&message_for(id), Flags::RECENT, &[], None, "sender@example.org").unwrap();
        }
    }
    let s = Server::start(t.dir.path(), &["alice"], "mbox-lock-timeout 60s\n");
    let world = Arc::new(World::default());
    world.delivered.lock().unwrap().extend(initial.iter().cloned());

    let mut delivering = Vec::new();
    for w in 0..deliverers {
        let (world, conf) = (Arc::clone(&world), s.conf.clone());
        delivering.push(std::thread::spawn(move || {
            let mut i = 0;
            while !world.stop.load(Ordering::Relaxed) {
                let id = format!("deliver{w}-{i}");
                deliver(&conf, &id);
                world.delivered.lock().unwrap().push(id);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            i
        }));
    }
    let mut running = Vec::new();
    for n in 0..sessions {
        let world = Arc::clone(&world);
        let port = s.imap;
        running.push(std::thread::spawn(move || {
            let mut imap = Imap::login(port, "alice");
            let r = imap.cmd("SELECT INBOX");
            r.assert_ok();
            let mut me = Session {
                name: format!("s{n}"),
                imap,
                view: Vec::new(),
                world: Arc::clone(&world),
                rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)),
                appended: 0,
            };
            me.apply(&r, "SELECT");
            me.resolve();
            while !world.stop.load(Ordering::Relaxed) {
                me.step();
            }
            // Everyone stops, then checks, once deliveries are over too:
            // nothing changes from here on.
            world.stopped.fetch_add(1, Ordering::SeqCst);
            let waiting = Instant::now();
            while !world.check.load(Ordering::SeqCst) {
                assert!(waiting.elapsed() < Duration::from_secs(120), "{}: no word to check", me.name);
                std::thread::sleep(Duration::from_millis(10));
            }
            let view = me.final_check();
            let r = me.imap.cmd("LOGOUT");
            assert!(r.ok() && r.text() == "* BYE Logging out\r\n", "{}: LOGOUT: {r:?}", me.name);
            view
        }));
    }
    let start = Instant::now();
    while start.elapsed() < busy {
        std::thread::sleep(Duration::from_millis(50));
        if running.iter().any(|h| h.is_finished()) {
            break;
        }
    }
    world.stop.store(true, Ordering::Relaxed);
    let delivered_by_mta: usize = delivering.into_iter().map(|h| h.join().unwrap()).sum();
    // Once every session has stopped (a session that failed has ended:
    // its panic is this test's), they check.
    let waiting = Instant::now();
    while world.stopped.load(Ordering::SeqCst) < sessions {
        if let Some(i) = running.iter().position(|h| h.is_finished()) {
            if let Err(e) = running.remove(i).join() {
                std::panic::resume_unwind(e);
            }
            panic!("a session ended early");
        }
        assert!(waiting.elapsed() < Duration::from_secs(120), "sessions did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    world.check.store(true, Ordering::SeqCst);
    let views: Vec<Vec<(u32, BTreeSet<String>)>> =
        running.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect();

    // Every session sees the same mailbox, and it is the file's.
    let mb = open(&s.spool("alice"));
    let disk: Vec<(u32, BTreeSet<String>)> =
        mb.messages().iter().map(|m| (m.uid, names(m.flags, m.keywords, mb.keywords()))).collect();
    for (n, v) in views.iter().enumerate() {
        assert!(*v == disk, "session s{n}'s view differs from the file:\n{v:?}\n--- file\n{disk:?}");
    }

    // Nothing delivered is lost; nothing expunged came back.
    let delivered = world.delivered.lock().unwrap().clone();
    let ids = world.ids.lock().unwrap().clone();
    let expunged = world.expunged.lock().unwrap().clone();
    let gone: HashSet<&String> = expunged.iter().filter_map(|u| ids.get(u)).collect();
    let mut present: HashMap<String, u32> = HashMap::new();
    for (uid, bytes) in contents(&mb) {
        let id = id_of(&bytes).expect("a known message");
        assert_eq!(bytes, message_for(&id), "{id} byte for byte");
        assert!(present.insert(id.clone(), uid).is_none(), "{id} is in the file twice");
        assert!(!expunged.contains(&uid), "{id} (UID {uid}) was expunged and is still there");
    }
    for id in &delivered {
        assert!(present.contains_key(id) || gone.contains(id), "{id} was delivered and is LOST");
        assert!(!(present.contains_key(id) && gone.contains(id)), "{id} expunged and present");
    }
    assert_eq!(present.len() + gone.len(), delivered.len(), "messages in the file that nobody delivered");
    let commands = world.commands.load(Ordering::Relaxed);
    println!(
        "{sessions} sessions: {commands} commands; {} delivered ({delivered_by_mta} by deliver), {} expunged, {} left",
        delivered.len(),
        gone.len(),
        present.len()
    );
    assert!(delivered_by_mta > 0 && !gone.is_empty() && commands > sessions * 20, "too little happened");
}

#[test]
fn two_sessions_and_the_mta_keep_every_view_exact() {
    race(2, 1, Duration::from_secs(4));
}

#[test]
fn ten_sessions_and_the_mta_keep_every_view_exact() {
    race(10, 2, Duration::from_secs(4));
}

#[test]
fn untagged_responses_split_with_their_literals() {
    let raw = b"* 3 EXISTS\r\n* 1 FETCH (UID 7 BODY[] {5}\r\nab\r\nc FLAGS (\\Seen \\Recent))\r\n* 2 EXPUNGE\r\n";
    let u = split(raw);
    assert_eq!(u.len(), 3);
    assert_eq!(u[1].line, "* 1 FETCH (UID 7 BODY[] {5}\r\n FLAGS (\\Seen \\Recent))".replace("\r\n", ""));
    assert_eq!(u[1].literals, vec![b"ab\r\nc".to_vec()]);
    assert_eq!(uid_in(&u[1].line), Some(7));
    assert_eq!(flags_in(&u[1].line), Some(BTreeSet::from(["\\Seen".to_string()])));
    assert_eq!(flags_in("* 1 FETCH (FLAGS ())"), Some(BTreeSet::new()));
    assert_eq!(uid_in("* 1 FETCH (FLAGS (\\Seen) UID 12)"), Some(12));
}

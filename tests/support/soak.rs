//! A mail office under load, with a ledger of every message.
//!
//! For a handful of users at once: IMAP sessions fetch, flag, mark
//! `\Deleted` and expunge, log out and in again; POP3 sessions list,
//! retrieve, delete and quit (or drop the connection); an MTA appends to
//! the spool files itself, under a dotlock and a classic fcntl lock, as
//! Postfix's `local` does; `postroom deliver` processes append too.
//!
//! The ledger knows every message that was ever handed over, by a token
//! in its Message-ID, with the exact bytes a client must get for it and
//! what became of it: being handed over, present (delivery confirmed),
//! gone (an expunge or a POP3 QUIT confirmed its removal). Every body a
//! client receives is checked against it at once: no pseudo-message, no
//! unknown bytes, no message that differs by a byte. Every UIDVALIDITY a
//! client hears is the user's one UIDVALIDITY; a UID always names the same
//! message; no UIDNEXT goes backwards; POP3 UIDLs agree with IMAP's UIDs.
//! At the end every user's INBOX holds exactly the present messages, each
//! once and byte for byte, and the file on disk carries one consistent
//! state.
//!
//! Used by tests/soak.rs (a minute in `cargo test`) and benches/soak.rs
//! (ten minutes, with the server's memory, descriptors and threads
//! sampled).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::server::{Imap, Resp};
use super::{crlf, message_for, Rng};

/// What runs, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    pub users: Vec<String>,
    /// IMAP sessions per user.
    pub imap: usize,
    /// POP3 clients per user (they take turns: a maildrop has one session).
    pub pop3: usize,
    /// Threads appending to spools as an MTA does, and threads running
    /// `postroom deliver`, each serving all users in turn.
    pub mta: usize,
    pub deliver: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub imap: u16,
    pub pop3: u16,
    pub conf: PathBuf,
    /// Spool file of a user (the INBOX).
    pub spools: HashMap<String, PathBuf>,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Handed over; not confirmed yet.
    Sending,
    /// Confirmed delivered and not removed.
    Present,
    /// Its removal was confirmed.
    Gone,
    /// Delivery failed; it must never appear.
    Refused,
}

#[derive(Debug)]
struct Entry {
    wire: Vec<u8>,
    fate: Fate,
    /// When the removal that made it `Gone` was confirmed (the reply
    /// received).
    gone_at: Option<Instant>,
}

/// One user's part of the ledger.
#[derive(Debug, Default)]
struct Book {
    msgs: HashMap<String, Entry>,
    uid_token: HashMap<u32, String>,
    token_uid: HashMap<String, u32>,
    uidvalidity: Option<u32>,
    /// (when the observation was received, UIDNEXT): a command sent after
    /// an observation was received must not see a smaller UIDNEXT.
    uidnext: Vec<(Instant, u32)>,
}

/// The ledger and the counters, shared by every worker.
#[derive(Debug)]
pub struct Ledger {
    books: HashMap<String, Mutex<Book>>,
    failures: Mutex<Vec<String>>,
    pub stop: AtomicBool,
    pub counts: Counts,
}

/// What happened, for the report.
#[derive(Debug, Default)]
pub struct Counts {
    pub imap_commands: AtomicU64,
    pub imap_bodies: AtomicU64,
    pub imap_expunged: AtomicU64,
    pub imap_inuse: AtomicU64,
    pub pop3_sessions: AtomicU64,
    pub pop3_in_use: AtomicU64,
    pub pop3_retr: AtomicU64,
    pub pop3_deleted: AtomicU64,
    pub pop3_dropped: AtomicU64,
    pub mta_appends: AtomicU64,
    pub delivered: AtomicU64,
    pub deliver_failed: AtomicU64,
    pub appended: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Ledger {
    pub fn new(users: &[String]) -> Ledger {
        Ledger {
            books: users.iter().map(|u| (u.clone(), Mutex::new(Book::default()))).collect(),
            failures: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            counts: Counts::default(),
        }
    }

    fn book(&self, user: &str) -> std::sync::MutexGuard<'_, Book> {
        self.books[user].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failure; the run goes on, so that one report shows them all.
    pub fn fail(&self, what: String) {
        eprintln!("soak failure: {what}");
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 200 {
            f.push(what);
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A message about to be handed over.
    fn sending(&self, user: &str, token: &str, wire: Vec<u8>) {
        self.book(user).msgs.insert(token.to_string(), Entry { wire, fate: Fate::Sending, gone_at: None });
    }

    /// The outcome of a hand-over. Another client may have seen the
    /// message, and even removed it, before the sender heard back: a
    /// removal confirmed meanwhile stands.
    fn settle(&self, user: &str, token: &str, fate: Fate) {
        let mut b = self.book(user);
        let Some(e) = b.msgs.get_mut(token) else { return };
        match (e.fate, fate) {
            (Fate::Sending, f) => e.fate = f,
            (Fate::Gone, Fate::Present) => {}
            (was, f) => {
                drop(b);
                self.fail(format!("{token}: {f:?} after {was:?}"));
            }
        }
    }

    /// Checks a message body a client received; learns its UID.
    fn body(&self, user: &str, who: &str, bytes: &[u8], uid: Option<u32>) {
        if memchr::memmem::find(bytes, b"FOLDER INTERNAL DATA").is_some() {
            self.fail(format!("{who}: the pseudo-message was served (uid {uid:?})"));
            return;
        }
        let Some(token) = token_of(bytes) else {
            self.fail(format!("{who}: a message nobody delivered: {:?}", String::from_utf8_lossy(&head(bytes))));
            return;
        };
        let b = self.book(user);
        match b.msgs.get(&token) {
            None => {
                drop(b);
                self.fail(format!("{who}: {token} is not in {user}'s ledger"));
                return;
            }
            Some(e) if e.wire != bytes => {
                let (w, l) = (e.wire.len(), bytes.len());
                drop(b);
                self.fail(format!("{who}: {token} differs ({l} bytes, {w} delivered)"));
                return;
            }
            Some(e) if e.fate == Fate::Refused => {
                drop(b);
                self.fail(format!("{who}: {token} was refused by delivery and is there"));
                return;
            }
            Some(_) => {}
        }
        if let Some(uid) = uid {
            drop(b);
            self.uid(user, who, uid, &token);
        }
    }

    /// A UID names one message for ever, and a message keeps its UID.
    fn uid(&self, user: &str, who: &str, uid: u32, token: &str) {
        let mut b = self.book(user);
        let mut problems = Vec::new();
        match b.uid_token.get(&uid) {
            Some(t) if t != token => problems.push(format!("{who}: UID {uid} was {t} and is now {token}")),
            Some(_) => {}
            None => {
                b.uid_token.insert(uid, token.to_string());
            }
        }
        match b.token_uid.get(token) {
            Some(&u) if u != uid => problems.push(format!("{who}: {token} had UID {u} and now has {uid}")),
            Some(_) => {}
            None => {
                b.token_uid.insert(token.to_string(), uid);
            }
        }
        drop(b);
        for p in problems {
            self.fail(p);
        }
    }

    fn token_of_uid(&self, user: &str, uid: u32) -> Option<String> {
        self.book(user).uid_token.get(&uid).cloned()
    }

    fn uidvalidity(&self, user: &str, who: &str, v: u32) {
        let mut b = self.book(user);
        match b.uidvalidity {
            None => b.uidvalidity = Some(v),
            Some(w) if w != v => {
                drop(b);
                self.fail(format!("{who}: UIDVALIDITY of {user} changed from {w} to {v}"));
            }
            Some(_) => {}
        }
    }

    fn uidnext(&self, user: &str, who: &str, sent: Instant, v: u32) {
        let mut b = self.book(user);
        let before = b.uidnext.iter().filter(|(r, _)| *r < sent).map(|(_, n)| *n).max();
        b.uidnext.push((Instant::now(), v));
        if b.uidnext.len() > 4096 {
            let keep = b.uidnext.iter().map(|(_, n)| *n).max().unwrap_or(0);
            let at = b.uidnext.last().map(|(r, _)| *r).unwrap_or_else(Instant::now);
            b.uidnext = vec![(at, keep)];
        }
        drop(b);
        if let Some(w) = before {
            if v < w {
                self.fail(format!("{who}: UIDNEXT of {user} went back from {w} to {v}"));
            }
        }
    }

    /// A removal the server confirmed to a POP3 session whose QUIT was
    /// sent at `quit_sent`. An IMAP session may have confirmed it first:
    /// its UID EXPUNGE, after the POP3 session let go, finds the message
    /// gone and says OK, and its client may hear that before the POP3
    /// client hears its QUIT's reply. Only a removal confirmed before the
    /// QUIT was even sent is a message removed twice, or removed under a
    /// POP3 session that still listed it.
    fn gone(&self, user: &str, who: &str, token: &str, quit_sent: Instant) {
        let mut b = self.book(user);
        match b.msgs.get_mut(token) {
            Some(e) if e.fate == Fate::Present || e.fate == Fate::Sending => {
                e.fate = Fate::Gone;
                e.gone_at = Some(Instant::now());
            }
            Some(e) if e.fate == Fate::Gone && e.gone_at.is_some_and(|t| t > quit_sent) => {}
            Some(e) => {
                let f = e.fate;
                let before = e.gone_at.map(|t| quit_sent.duration_since(t));
                drop(b);
                self.fail(format!("{who}: {token} removed but it was {f:?} (confirmed {before:?} before the QUIT)"));
            }
            None => {
                drop(b);
                self.fail(format!("{who}: removed {token}, which nobody delivered"));
            }
        }
    }

    /// Tokens that must be in the mailbox now (nothing else runs).
    fn present(&self, user: &str) -> HashSet<String> {
        self.book(user).msgs.iter().filter(|(_, e)| e.fate == Fate::Present).map(|(t, _)| t.clone()).collect()
    }

    fn counts_of(&self, user: &str) -> HashMap<&'static str, usize> {
        let b = self.book(user);
        let mut out = HashMap::new();
        for e in b.msgs.values() {
            let k = match e.fate {
                Fate::Sending => "sending",
                Fate::Present => "present",
                Fate::Gone => "gone",
                Fate::Refused => "refused",
            };
            *out.entry(k).or_insert(0) += 1;
        }
        out
    }
}

/// The soak's token in a message: `<soak-...@postroom.test>`.
pub fn token_of(bytes: &[u8]) -> Option<String> {
    let start = memchr::memmem::find(bytes, b"Message-ID: <")? + "Message-ID: <".len();
    let end = start + memchr::memmem::find(&bytes[start..], b"@postroom.test>")?;
    std::str::from_utf8(&bytes[start..end]).ok().map(String::from)
}

fn head(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len().min(200)].to_vec()
}

/// A message as an MTA hands it over: LF line ends, no line that starts
/// with `From ` or `>From ` (so mboxo and mboxrd store it alike), a size
/// that varies with the token.
pub fn mta_message(token: &str) -> Vec<u8> {
    let n = token.bytes().fold(11u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let mut m = format!(
        "Return-Path: <mta@example.org>\nFrom: MTA {n} <mta@example.org>\nTo: user@example.org\n\
         Subject: soak {token}\nMessage-ID: <{token}@postroom.test>\n\n"
    )
    .into_bytes();
    for i in 0..(n % 60 + 1) {
        match (n + i) % 5 {
            0 => m.extend_from_slice(b"\n"),
            1 => m.extend_from_slice(" From inside a line, caf\u{e9}\n".as_bytes()),
            _ => {
                m.extend_from_slice(format!("line {i} of {token}: ordinary text to make the body longer\n").as_bytes())
            }
        }
    }
    if n % 9 == 0 {
        // Now and then a bigger one (an attachment).
        for i in 0..2000 {
            m.extend_from_slice(
                format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5{i:06}\n").as_bytes(),
            );
        }
    }
    m
}

/// The message `postroom deliver` and APPEND hand over for `token`
/// (CRLF line ends, `From ` and `>From ` lines in the body).
pub fn client_message(token: &str) -> Vec<u8> {
    let m = message_for(token);
    // message_for's Message-ID is `<id@postroom.test>`: the token.
    debug_assert_eq!(token_of(&m).as_deref(), Some(token));
    m
}

/// Runs the plan against a server that is up; returns the ledger.
/// `initial` names the messages the spools held before (user, token of
/// an [`mta_message`]).
pub fn run_with_initial(plan: &Plan, target: &Target, initial: &[(String, String)]) -> Arc<Ledger> {
    let ledger = Arc::new(Ledger::new(&plan.users));
    for (user, token) in initial {
        ledger.sending(user, token, crlf(&mta_message(token)));
        ledger.settle(user, token, Fate::Present);
    }
    let mut workers: Vec<(String, JoinHandle<()>)> = Vec::new();
    let mut seed = Rng(plan.seed.max(1));
    for (ui, user) in plan.users.iter().enumerate() {
        for k in 0..plan.imap {
            let (l, t, u, rng) = (Arc::clone(&ledger), target.clone(), user.clone(), Rng(seed.next() | 1));
            let name = format!("imap-{ui}-{k}");
            let n = name.clone();
            workers.push((name, std::thread::spawn(move || imap_worker(&l, &t, &u, &n, rng))));
        }
        for k in 0..plan.pop3 {
            let (l, t, u, rng) = (Arc::clone(&ledger), target.clone(), user.clone(), Rng(seed.next() | 1));
            let name = format!("pop3-{ui}-{k}");
            let n = name.clone();
            workers.push((name, std::thread::spawn(move || pop3_worker(&l, &t, &u, &n, rng))));
        }
    }
    for k in 0..plan.mta {
        let (l, t, users, rng) = (Arc::clone(&ledger), target.clone(), plan.users.clone(), Rng(seed.next() | 1));
        let name = format!("mta-{k}");
        let n = name.clone();
        workers.push((name, std::thread::spawn(move || mta_worker(&l, &t, &users, &n, rng))));
    }
    for k in 0..plan.deliver {
        let (l, t, users, rng) = (Arc::clone(&ledger), target.clone(), plan.users.clone(), Rng(seed.next() | 1));
        let name = format!("deliver-{k}");
        let n = name.clone();
        workers.push((name, std::thread::spawn(move || deliver_worker(&l, &t, &users, &n, rng))));
    }
    let start = Instant::now();
    while start.elapsed() < plan.duration && !workers.iter().any(|(_, h)| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    ledger.stop.store(true, Ordering::Relaxed);
    for (name, h) in workers {
        if let Err(e) = h.join() {
            let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            ledger.fail(format!("{name} panicked: {}", why.unwrap_or_default()));
        }
    }
    for user in &plan.users {
        final_check(&ledger, target, user);
    }
    ledger
}

/// A short human summary of what happened.
pub fn summary(plan: &Plan, ledger: &Ledger) -> String {
    let c = &ledger.counts;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut s = format!(
        "{} users, {}s: imap {} commands, {} bodies checked, {} expunged, {} INUSE; pop3 {} sessions ({} IN-USE), \
         {} RETR, {} deleted, {} dropped; mta {} appends; deliver {} ok, {} failed; APPEND {}",
        plan.users.len(),
        plan.duration.as_secs(),
        g(&c.imap_commands),
        g(&c.imap_bodies) + g(&c.pop3_retr),
        g(&c.imap_expunged),
        g(&c.imap_inuse),
        g(&c.pop3_sessions),
        g(&c.pop3_in_use),
        g(&c.pop3_retr),
        g(&c.pop3_deleted),
        g(&c.pop3_dropped),
        g(&c.mta_appends),
        g(&c.delivered),
        g(&c.deliver_failed),
        g(&c.appended),
    );
    for u in &plan.users {
        let k = ledger.counts_of(u);
        s.push_str(&format!(
            "\n  {u}: {} present, {} gone, {} refused",
            k.get("present").unwrap_or(&0),
            k.get("gone").unwrap_or(&0),
            k.get("refused").unwrap_or(&0)
        ));
    }
    s
}

// ---- IMAP ----

/// One untagged response with its literals cut out.
struct Untagged {
    line: String,
    literals: Vec<Vec<u8>>,
}

fn split(raw: &[u8]) -> Vec<Untagged> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let mut line = String::new();
        let mut literals = Vec::new();
        loop {
            let Some(eol) = memchr::memmem::find(&raw[at..], b"\r\n").map(|p| p + at) else {
                line.push_str(&String::from_utf8_lossy(&raw[at..]));
                at = raw.len();
                break;
            };
            let part = &raw[at..eol];
            line.push_str(&String::from_utf8_lossy(part));
            at = eol + 2;
            let n = part
                .strip_suffix(b"}")
                .and_then(|p| p.iter().rposition(|&b| b == b'{').map(|o| &p[o + 1..]))
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<usize>().ok());
            match n {
                Some(n) if at + n <= raw.len() => {
                    literals.push(raw[at..at + n].to_vec());
                    at += n;
                }
                _ => break,
            }
        }
        out.push(Untagged { line, literals });
    }
    out
}

fn number_after(line: &str, key: &str) -> Option<u32> {
    let start = line.find(key)? + key.len();
    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

struct ImapClient<'a> {
    ledger: &'a Ledger,
    target: &'a Target,
    user: &'a str,
    name: &'a str,
    imap: Option<Imap>,
    /// UIDs this session believes are in the mailbox.
    uids: Vec<u32>,
    rng: Rng,
}

impl ImapClient<'_> {
    fn connect(&mut self) -> bool {
        let Ok(s) = TcpStream::connect(("127.0.0.1", self.target.imap)) else {
            self.ledger.fail(format!("{}: cannot connect to IMAP", self.name));
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let mut c = Imap::new(s);
        let greeting = c.line();
        if !greeting.starts_with("* OK") {
            self.ledger.fail(format!("{}: IMAP greeting {greeting:?}", self.name));
            return false;
        }
        self.imap = Some(c);
        let r = self.cmd(&format!("LOGIN {} secret-{}", self.user, self.user));
        if !r.as_ref().is_some_and(Resp::ok) {
            self.ledger.fail(format!("{}: LOGIN: {:?}", self.name, r.map(|r| r.status)));
            self.imap = None;
            return false;
        }
        self.select()
    }

    fn select(&mut self) -> bool {
        let sent = Instant::now();
        let Some(r) = self.cmd("SELECT INBOX") else { return false };
        if !r.ok() {
            self.ledger.fail(format!("{}: SELECT: {}", self.name, r.status));
            return false;
        }
        let text = r.text();
        match number_after(&text, "[UIDVALIDITY ") {
            Some(v) => self.ledger.uidvalidity(self.user, self.name, v),
            None => self.ledger.fail(format!("{}: SELECT without UIDVALIDITY", self.name)),
        }
        if let Some(n) = number_after(&text, "[UIDNEXT ") {
            self.ledger.uidnext(self.user, self.name, sent, n);
        }
        self.search();
        true
    }

    fn search(&mut self) {
        let Some(r) = self.cmd("UID SEARCH ALL") else { return };
        if let Some(l) = r.lines().into_iter().find(|l| l.starts_with("* SEARCH")) {
            self.uids = l.split(' ').skip(2).filter_map(|w| w.parse().ok()).collect();
        }
    }

    /// Sends a command and checks every untagged response in its answer:
    /// bodies against the ledger, UIDVALIDITY, no BYE.
    fn cmd(&mut self, c: &str) -> Option<Resp> {
        let imap = self.imap.as_mut()?;
        bump(&self.ledger.counts.imap_commands);
        let tag = imap.next_tag();
        if imap.r.get_mut().write_all(format!("{tag} {c}\r\n").as_bytes()).is_err() {
            self.ledger.fail(format!("{}: connection lost sending {c:?}", self.name));
            self.imap = None;
            return None;
        }
        let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| imap.read_until_tagged(&tag))) {
            Ok(r) => r,
            Err(_) => {
                self.ledger.fail(format!("{}: connection lost after {c:?}", self.name));
                self.imap = None;
                return None;
            }
        };
        if r.status.starts_with("BAD") {
            self.ledger.fail(format!("{}: {c:?}: {}", self.name, r.status));
        }
        self.observe(&r, c);
        Some(r)
    }

    fn observe(&mut self, r: &Resp, what: &str) {
        for u in split(&r.untagged) {
            if u.line.starts_with("* BYE") && what != "LOGOUT" {
                self.ledger.fail(format!("{}: after {what:?}: {}", self.name, u.line));
            }
            if let Some(v) = number_after(&u.line, "[UIDVALIDITY ") {
                self.ledger.uidvalidity(self.user, self.name, v);
            }
            if u.line.contains(" FETCH (") {
                let uid = number_after(&u.line, "UID ");
                for lit in &u.literals {
                    if u.line.contains("BODY[]") || u.line.contains("RFC822 {") {
                        bump(&self.ledger.counts.imap_bodies);
                        self.ledger.body(self.user, self.name, lit, uid);
                    }
                }
            }
        }
    }

    fn pick(&mut self) -> Option<u32> {
        if self.uids.is_empty() {
            return None;
        }
        Some(self.uids[self.rng.below(self.uids.len())])
    }

    fn step(&mut self) {
        match self.rng.below(40) {
            0..=11 => {
                let Some(uid) = self.pick() else { return self.search() };
                self.cmd(&format!("UID FETCH {uid} (UID FLAGS BODY.PEEK[])"));
            }
            12..=13 => {
                self.cmd("UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)");
            }
            14..=24 => {
                let Some(uid) = self.pick() else { return };
                let flag = ["\\Flagged", "\\Seen", "\\Answered", "$Soak1", "$Soak2", "Junk"][self.rng.below(6)];
                let op = if self.rng.below(3) == 0 { "-" } else { "+" };
                self.cmd(&format!("UID STORE {uid} {op}FLAGS ({flag})"));
            }
            25..=26 => self.delete(),
            27..=29 => self.search(),
            30..=31 => {
                self.cmd("NOOP");
            }
            32 => {
                self.select();
            }
            33 => {
                let c = self.ledger.counts.appended.fetch_add(1, Ordering::Relaxed);
                let token = format!("soak-{}-append{c}", self.name);
                let m = client_message(&token);
                self.ledger.sending(self.user, &token, m.clone());
                let Some(imap) = self.imap.as_mut() else { return };
                let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| imap.append("INBOX", "", &m))) {
                    Ok(r) => r,
                    Err(_) => {
                        self.ledger.fail(format!("{}: connection lost in APPEND", self.name));
                        self.imap = None;
                        return;
                    }
                };
                self.observe(&r, "APPEND");
                if r.ok() {
                    self.ledger.settle(self.user, &token, Fate::Present);
                    match number_after(&r.status, "[APPENDUID ").and_then(|_| {
                        r.status.split(' ').nth(3).and_then(|u| u.trim_end_matches(']').parse::<u32>().ok())
                    }) {
                        Some(uid) => {
                            self.ledger.uid(self.user, self.name, uid, &token);
                            self.uids.push(uid);
                        }
                        None => self.ledger.fail(format!("{}: APPEND without APPENDUID: {}", self.name, r.status)),
                    }
                } else {
                    self.ledger.settle(self.user, &token, Fate::Refused);
                    self.ledger.fail(format!("{}: APPEND refused: {}", self.name, r.status));
                }
            }
            34 => {
                // Log out and in again: the mailbox is opened afresh.
                self.cmd("LOGOUT");
                self.imap = None;
                self.connect();
            }
            _ => {
                self.cmd("UID FETCH 1:* (UID FLAGS)");
            }
        }
    }

    /// Marks one message `\Deleted` and expunges just it (UIDPLUS); once
    /// the server says OK, the message must be gone.
    fn delete(&mut self) {
        let Some(uid) = self.pick() else { return };
        if self.ledger.token_of_uid(self.user, uid).is_none() {
            self.cmd(&format!("UID FETCH {uid} (UID BODY.PEEK[])"));
        }
        let Some(token) = self.ledger.token_of_uid(self.user, uid) else { return };
        let Some(r) = self.cmd(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)")) else { return };
        if !r.ok() {
            return;
        }
        let Some(r) = self.cmd(&format!("UID EXPUNGE {uid}")) else { return };
        let confirmed = Instant::now();
        if r.status.contains("[INUSE]") {
            bump(&self.ledger.counts.imap_inuse);
            return;
        }
        if !r.ok() {
            self.ledger.fail(format!("{}: UID EXPUNGE {uid}: {}", self.name, r.status));
            return;
        }
        let Some(check) = self.cmd(&format!("UID FETCH {uid} (UID)")) else { return };
        if check.lines().iter().any(|l| l.contains(" FETCH (") && number_after(l, "UID ") == Some(uid)) {
            // Another session may have expunged it and a POP3 session can
            // hold the maildrop: only an OK that left it there is wrong.
            self.ledger.fail(format!("{}: UID EXPUNGE {uid} said OK and {token} is still there", self.name));
            return;
        }
        self.uids.retain(|&u| u != uid);
        bump(&self.ledger.counts.imap_expunged);
        // Gone by this expunge, or already by another session's: either
        // way confirmed gone; the ledger complains only about a message
        // that was never present.
        let mut b = self.ledger.book(self.user);
        if let Some(e) = b.msgs.get_mut(&token) {
            if e.fate != Fate::Gone {
                e.fate = Fate::Gone;
                e.gone_at = Some(confirmed);
            }
        }
    }
}

fn imap_worker(ledger: &Ledger, target: &Target, user: &str, name: &str, rng: Rng) {
    let mut c = ImapClient { ledger, target, user, name, imap: None, uids: Vec::new(), rng };
    while !ledger.stopping() {
        if c.imap.is_none() && !c.connect() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        c.step();
    }
    c.cmd("LOGOUT");
}

// ---- POP3 ----

struct Pop3Client {
    r: BufReader<TcpStream>,
}

impl Pop3Client {
    fn connect(port: u16) -> std::io::Result<Pop3Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut c = Pop3Client { r: BufReader::new(s) };
        let g = c.line()?;
        if !g.starts_with("+OK") {
            return Err(std::io::Error::other(format!("greeting {g:?}")));
        }
        Ok(c)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l)?;
        if l.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(String::from_utf8_lossy(&l).trim_end_matches("\r\n").to_string())
    }

    fn cmd(&mut self, c: &str) -> std::io::Result<String> {
        self.r.get_mut().write_all(format!("{c}\r\n").as_bytes())?;
        self.line()
    }

    fn data(&mut self) -> std::io::Result<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let mut l = Vec::new();
            if self.r.read_until(b'\n', &mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if l == b".\r\n" {
                return Ok(data);
            }
            if l.starts_with(b".") {
                l.remove(0);
            }
            data.extend_from_slice(&l);
        }
    }
}

fn pop3_session(ledger: &Ledger, target: &Target, user: &str, name: &str, rng: &mut Rng) -> std::io::Result<()> {
    let mut c = Pop3Client::connect(target.pop3)?;
    c.cmd(&format!("USER {user}"))?;
    let r = c.cmd(&format!("PASS secret-{user}"))?;
    if r.contains("[IN-USE]") {
        bump(&ledger.counts.pop3_in_use);
        let _ = c.cmd("QUIT");
        return Ok(());
    }
    if !r.starts_with("+OK") {
        ledger.fail(format!("{name}: PASS: {r}"));
        return Ok(());
    }
    bump(&ledger.counts.pop3_sessions);
    let r = c.cmd("UIDL")?;
    if !r.starts_with("+OK") {
        ledger.fail(format!("{name}: UIDL: {r}"));
        return Ok(());
    }
    let listing = String::from_utf8_lossy(&c.data()?).into_owned();
    // pop3-uidl-format uw: UIDVALIDITY and UID, eight hex digits each.
    let mut msgs: Vec<(u32, u32)> = Vec::new();
    for l in listing.lines() {
        let mut w = l.split(' ');
        let (Some(n), Some(u)) = (w.next().and_then(|n| n.parse().ok()), w.next()) else { continue };
        if u.len() != 16 {
            ledger.fail(format!("{name}: UIDL {u:?} is not uw's"));
            continue;
        }
        let (Ok(v), Ok(uid)) = (u32::from_str_radix(&u[..8], 16), u32::from_str_radix(&u[8..], 16)) else { continue };
        ledger.uidvalidity(user, name, v);
        msgs.push((n, uid));
    }
    let mut dele: Vec<(u32, String)> = Vec::new();
    let take = if msgs.is_empty() { 0 } else { rng.below(msgs.len().min(8)) + 1 };
    let delete_all = rng.below(6) == 0;
    for (k, &(n, uid)) in msgs.iter().enumerate() {
        let chosen = k < take || delete_all;
        if !chosen {
            continue;
        }
        let r = c.cmd(&format!("RETR {n}"))?;
        if !r.starts_with("+OK") {
            ledger.fail(format!("{name}: RETR {n}: {r}"));
            continue;
        }
        let data = c.data()?;
        bump(&ledger.counts.pop3_retr);
        ledger.body(user, name, &data, Some(uid));
        if delete_all || rng.below(2) == 0 {
            if let Some(token) = token_of(&data) {
                let r = c.cmd(&format!("DELE {n}"))?;
                if r.starts_with("+OK") {
                    dele.push((n, token));
                } else {
                    ledger.fail(format!("{name}: DELE {n}: {r}"));
                }
            }
        }
        if ledger.stopping() && !delete_all {
            break;
        }
    }
    if rng.below(10) == 0 {
        // Hang up without QUIT: nothing may be deleted.
        bump(&ledger.counts.pop3_dropped);
        return Ok(());
    }
    let quit_sent = Instant::now();
    let r = c.cmd("QUIT")?;
    if !r.starts_with("+OK") {
        ledger.fail(format!("{name}: QUIT: {r}"));
        return Ok(());
    }
    let said = number_after(&r, "Logging out, ").unwrap_or(0) as usize;
    if said != dele.len() {
        ledger.fail(format!("{name}: QUIT deleted {said}, {} were marked: {r}", dele.len()));
    }
    for (_, token) in dele {
        bump(&ledger.counts.pop3_deleted);
        ledger.gone(user, name, &token, quit_sent);
    }
    Ok(())
}

fn pop3_worker(ledger: &Ledger, target: &Target, user: &str, name: &str, mut rng: Rng) {
    while !ledger.stopping() {
        if let Err(e) = pop3_session(ledger, target, user, name, &mut rng) {
            ledger.fail(format!("{name}: POP3 connection failed: {e}"));
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(250) as u64));
    }
}

// ---- the MTA ----

/// asctime(3) of now, as in a From_ line.
fn asctime_now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    postroom::store::from_line::asctime(t)
}

/// Appends as Postfix's `local` does: the dotlock `<mbox>.lock` made with
/// O_EXCL, then a classic fcntl write lock (F_SETLKW), the `From_` line
/// and the message, a blank line, and both locks let go.
pub fn mta_append(spool: &Path, message: &[u8]) -> std::io::Result<()> {
    let lock = {
        let mut s = spool.as_os_str().to_owned();
        s.push(".lock");
        PathBuf::from(s)
    };
    let start = Instant::now();
    loop {
        match OpenOptions::new().write(true).create_new(true).mode(0o644).open(&lock) {
            Ok(mut f) => {
                let _ = f.write_all(format!("{}\n", std::process::id()).as_bytes());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if start.elapsed() > Duration::from_secs(60) {
                    return Err(std::io::Error::other("dotlock held for a minute"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    let result = (|| {
        let mut f = OpenOptions::new().append(true).open(spool)?;
        posix_lock(&f, libc::F_WRLCK)?;
        let mut data = format!("From mta@example.org {}\n", asctime_now()).into_bytes();
        data.extend_from_slice(message);
        if !message.ends_with(b"\n") {
            data.push(b'\n');
        }
        data.push(b'\n');
        let r = f.write_all(&data);
        posix_lock(&f, libc::F_UNLCK)?;
        r
    })();
    std::fs::remove_file(&lock)?;
    result
}

fn posix_lock(f: &File, kind: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: a valid flock for an open descriptor.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn mta_worker(ledger: &Ledger, target: &Target, users: &[String], name: &str, mut rng: Rng) {
    let mut n = 0;
    while !ledger.stopping() {
        let user = &users[rng.below(users.len())];
        let token = format!("soak-{name}-{n}");
        n += 1;
        let m = mta_message(&token);
        ledger.sending(user, &token, crlf(&m));
        match mta_append(&target.spools[user], &m) {
            Ok(()) => {
                ledger.settle(user, &token, Fate::Present);
                bump(&ledger.counts.mta_appends);
            }
            Err(e) => {
                ledger.settle(user, &token, Fate::Refused);
                ledger.fail(format!("{name}: append to {user}: {e}"));
            }
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(120) as u64));
    }
}

// ---- postroom deliver ----

fn deliver_worker(ledger: &Ledger, target: &Target, users: &[String], name: &str, mut rng: Rng) {
    let mut n = 0;
    while !ledger.stopping() {
        let user = &users[rng.below(users.len())];
        let token = format!("soak-{name}-{n}");
        n += 1;
        let m = client_message(&token);
        ledger.sending(user, &token, m.clone());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postroom"));
        cmd.args(["deliver", "-f"]).arg(&target.conf).arg(user).stdin(Stdio::piped()).stderr(Stdio::piped());
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            let nobody = postroom::auth::passwd::system_account("nobody").unwrap().unwrap();
            cmd.uid(nobody.uid.unwrap()).gid(nobody.gid.unwrap());
        }
        let out = cmd.spawn().and_then(|mut child| {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(&m)?;
            drop(stdin);
            child.wait_with_output()
        });
        match out {
            Ok(o) if o.status.success() => {
                ledger.settle(user, &token, Fate::Present);
                bump(&ledger.counts.delivered);
            }
            Ok(o) => {
                ledger.settle(user, &token, Fate::Refused);
                bump(&ledger.counts.deliver_failed);
                ledger.fail(format!(
                    "{name}: deliver to {user} exited {:?}: {}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => ledger.fail(format!("{name}: running deliver: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(120) as u64));
    }
}

// ---- the end ----

/// Nothing runs any more: the INBOX holds exactly the present messages.
fn final_check(ledger: &Ledger, target: &Target, user: &str) {
    let name = format!("final-{user}");
    let mut c = ImapClient { ledger, target, user, name: &name, imap: None, uids: Vec::new(), rng: Rng(1) };
    if !c.connect() {
        return;
    }
    let Some(r) = c.cmd("UID FETCH 1:* (UID BODY.PEEK[])") else { return };
    let mut seen: HashMap<String, u32> = HashMap::new();
    for u in split(&r.untagged) {
        let (Some(uid), Some(lit)) = (number_after(&u.line, "UID "), u.literals.first()) else { continue };
        let Some(token) = token_of(lit) else { continue };
        if let Some(other) = seen.insert(token.clone(), uid) {
            ledger.fail(format!("{name}: {token} is there twice (UIDs {other} and {uid})"));
        }
    }
    let want = ledger.present(user);
    for t in &want {
        if !seen.contains_key(t) {
            let uid = ledger.book(user).token_uid.get(t).copied();
            ledger.fail(format!("{name}: {t} (UID {uid:?}) was delivered and is LOST"));
        }
    }
    for t in seen.keys() {
        if !want.contains(t) {
            ledger.fail(format!(
                "{name}: {t} is there and should not be ({:?})",
                ledger.book(user).msgs.get(t).map(|e| e.fate)
            ));
        }
    }
    c.cmd("LOGOUT");
}

/// The state headers of every message of an mbox, as written: for each
/// message its `X-IMAP`, `X-IMAPbase` and `X-UID` values. Read with the
/// store's own scanner for the boundaries.
pub fn state_lines(path: &Path) -> Vec<Vec<(String, String)>> {
    let mut f = File::open(path).expect("open mbox");
    let mut data = Vec::new();
    f.read_to_end(&mut data).expect("read mbox");
    let len = data.len() as u64;
    let file = File::open(path).expect("open mbox");
    let scan = postroom::store::scan::scan(&file, 0, len, postroom::store::MboxFormat::Mboxrd).expect("scan");
    scan.messages
        .iter()
        .map(|m| {
            let hdr = &data[m.hdr_off as usize..m.body_off as usize];
            hdr.split(|&b| b == b'\n')
                .filter_map(|l| {
                    let l = String::from_utf8_lossy(l);
                    let (k, v) = l.split_once(':')?;
                    let k = k.to_ascii_lowercase();
                    matches!(k.as_str(), "x-imap" | "x-imapbase" | "x-uid").then(|| (k, v.trim().to_string()))
                })
                .collect()
        })
        .collect()
}

/// Checks that an mbox on disk carries one consistent state: the base in
/// the first message only (X-IMAP on a pseudo-message or X-IMAPbase),
/// UIDs ascending and below UIDNEXT, the UIDVALIDITY the clients saw.
pub fn check_file(ledger: &Ledger, user: &str, path: &Path) {
    let lines = state_lines(path);
    let mut base: Option<(u32, u32)> = None;
    let mut last = 0u32;
    for (i, msg) in lines.iter().enumerate() {
        for (k, v) in msg {
            match k.as_str() {
                "x-imap" | "x-imapbase" => {
                    let mut w = v.split_whitespace();
                    let (Some(uv), Some(ul)) =
                        (w.next().and_then(|x| x.parse().ok()), w.next().and_then(|x| x.parse::<u32>().ok()))
                    else {
                        ledger.fail(format!("{user}: message {i} has a malformed {k}: {v}"));
                        continue;
                    };
                    if i != 0 {
                        ledger.fail(format!("{user}: message {i} carries {k} {v}: a second state in the file"));
                    } else {
                        base = Some((uv, ul + 1));
                    }
                }
                "x-uid" => {
                    let Ok(u) = v.parse::<u32>() else { continue };
                    if u <= last {
                        ledger.fail(format!("{user}: message {i} has X-UID {u} after {last}"));
                    }
                    last = u;
                }
                _ => {}
            }
        }
    }
    match base {
        Some((uv, next)) => {
            if let Some(seen) = ledger.book(user).uidvalidity {
                if seen != uv {
                    ledger.fail(format!("{user}: the file says UIDVALIDITY {uv}, clients saw {seen}"));
                }
            }
            if last >= next {
                ledger.fail(format!("{user}: X-UID {last} is not below UIDNEXT {next}"));
            }
        }
        None if !lines.is_empty() => ledger.fail(format!("{user}: the file has messages and no base")),
        None => {}
    }
}

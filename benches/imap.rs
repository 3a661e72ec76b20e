//! The IMAP benchmark: postroomd beside Dovecot 2.3, both private instances
//! on 127.0.0.1 started by this program, on the same machine in the same
//! run, with the same mbox content and the same users.
//!
//! Run with `cargo bench --bench imap` (Dovecot from Debian's
//! dovecot-imapd). A quick run, with a mailbox of 10,000 messages (about
//! 100 MB) instead of 100,000 (about 1 GiB), three runs of each timed
//! row and 200 idle sessions:
//!
//! ```text
//! POSTROOM_BENCH_MESSAGES=10000 POSTROOM_BENCH_RUNS=3 POSTROOM_BENCH_IDLE=200 cargo bench --bench imap
//! ```
//!
//! It measures, each figure the median of several runs in which the two
//! servers take turns:
//!
//! 1. Cold SELECT of a large INBOX (default 100,000 messages, about 1 GiB,
//!    in the page cache: read once before each run): postroomd freshly
//!    started (nothing indexed), Dovecot with its index directory removed.
//!    The time from sending `SELECT INBOX` to reading its tagged OK.
//! 2. Warm SELECT of the same: in a new session, and again in that
//!    session after UNSELECT.
//! 3. `FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)` on that mailbox, right
//!    after the cold SELECT (Dovecot's cache empty) and in the next session.
//! 4. `FETCH 1:* BODY.PEEK[]` of a 1000-message INBOX, in MB/s of message
//!    octets (literals, counted exactly; checked against RFC822.SIZE); and
//!    `FETCH 1 BODY.PEEK[]` of an INBOX of one large message (30 MB: lines
//!    of every length, quoted `From ` lines), the cost of streaming a
//!    literal in batches under the locks.
//! 5. IDLE notification latency: session A in IDLE, session B on the same
//!    INBOX does `STORE n +FLAGS (\Flagged)`, or APPENDs a message; the time
//!    from B's tagged OK to A reading the untagged FETCH or EXISTS. Then
//!    mail from outside: appended to the mbox file as an MTA does (From_
//!    line, under a dotlock and an fcntl lock, fsync), and delivered by each
//!    server's delivery agent (`postroom deliver`, `dovecot-lda`); the time
//!    from the append's end (the agent's exit) to A reading EXISTS.
//!    Median and maximum.
//! 6. Resident memory per idle IMAP session: that many connections, each
//!    logged in, INBOX selected, in IDLE; once all of one user (100
//!    messages), once one per user (10 messages each). postroomd is one
//!    process: its VmRSS (and Pss) growth divided by the sessions. Dovecot:
//!    the Pss (and Rss) of all its imap and imap-login processes, summed,
//!    divided by the sessions. Each of these rows starts fresh servers.
//!
//! Every mbox is generated (benches/mboxgen: realistic mail of about
//! 10 KiB on average, LF line ends) with the state headers both servers
//! read (X-IMAPbase, X-UID, Status, X-Status, X-Keywords), so neither has
//! to rewrite a file when it first opens it; each server gets its own copy.
//! Both check {PLAIN} passwords from a passwd-file (or, with
//! `POSTROOM_BENCH_SCHEME=ARGON2ID`, the same hashes of another scheme),
//! allow plain text logins on loopback, and run without TLS. Dovecot runs with its defaults (a
//! login process per connection, an imap process per session, its index
//! under ~/mail/.imap), fcntl locks, and limits raised for the idle rows.
//!
//! While postroomd does not serve IMAP (no `* OK` greeting on its IMAP
//! listener), every postroom figure is "n/a" and the Dovecot rows still run.
//!
//! Environment: `POSTROOM_BENCH_MESSAGES` (messages in the large INBOX,
//! default 100000), `POSTROOM_BENCH_RUNS` (runs of each timed row, default
//! 5), `POSTROOM_BENCH_ROUNDS` (notifications per IDLE row, default 20),
//! `POSTROOM_BENCH_LARGE_MB` (the large message of row 4, default 30),
//! `POSTROOM_BENCH_IDLE` (idle sessions, default 1000), `POSTROOM_BENCH_ONLY`
//! (a comma-separated subset of `select,body,idle,memory`),
//! `POSTROOM_BENCH_SCHEME` (the password scheme, default PLAIN), `DOVECOT`
//! (default /usr/sbin/dovecot), `DOVECOT_LDA` (default
//! /usr/lib/dovecot/dovecot-lda). Files go to
//! /tmp/postroom-bench-imap/run-PID, removed at the end unless
//! `POSTROOM_BENCH_KEEP=1` (for reading the servers' logs). The large
//! INBOX needs about three times its size in free space there. Under root
//! both servers serve mail as nobody.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod mboxgen;

#[allow(dead_code)]
#[path = "pop3/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "imap/client.rs"]
mod imap_client;
#[allow(dead_code)]
#[path = "pop3/servers.rs"]
mod servers;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{env_flag, env_num, fig, load_average, mail, median, parallel, raise_nofile, Res, RunDir, Table};
use imap_client::Imap;
use servers::{dovecot_version, Ids, Kind, Mem, Server, User};

const DIR: &str = "/tmp/postroom-bench-imap";
const SEED: u64 = 0x696d_6170_6265_6e63;
/// Read buffer of a client that fetches a lot.
const BIG_BUF: usize = 256 << 10;
/// Read buffer of an idle client.
const SMALL_BUF: usize = 1 << 10;
/// Messages in the mailbox of the body-fetch row.
const BODY_MESSAGES: u32 = 1000;
/// Messages in the mailbox of the IDLE rows and of the one-user idle sessions.
const IDLE_MESSAGES: u32 = 100;
/// Messages in each mailbox of the one-session-per-user idle row.
const PER_USER_MESSAGES: u32 = 10;
/// How long session A waits for one notification: longer than Dovecot's
/// periodic check in IDLE (`mailbox_idle_check_interval`, 30 s).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(35);
/// A notification slower than this means the server polls; such a row
/// stops after [`SLOW_ROUNDS`] rounds, to keep the run short.
const SLOW: f64 = 5.0;
const SLOW_ROUNDS: usize = 3;
/// How long a delivery agent may run.
const LDA_TIMEOUT: Duration = Duration::from_secs(30);
/// Goals.
const GOAL_COLD_SECS: f64 = 0.5;
const GOAL_COLD_RATIO: f64 = 2.0;
const GOAL_DELIVERY_SECS: f64 = 2.0;
const GOAL_IDLE_KIB: f64 = 64.0;
const ENVELOPE: &str = "FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)";
const SECTIONS: [&str; 4] = ["select", "body", "idle", "memory"];

struct Config {
    messages: u32,
    runs: usize,
    rounds: usize,
    idle: usize,
    large_mb: u64,
    only: Vec<String>,
    keep: bool,
}

impl Config {
    fn from_env() -> Res<Config> {
        let only: Vec<String> = match std::env::var("POSTROOM_BENCH_ONLY") {
            Ok(v) => v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            Err(_) => SECTIONS.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
            return Err(format!("POSTROOM_BENCH_ONLY: unknown section {bad} (known: {})", SECTIONS.join(",")));
        }
        Ok(Config {
            messages: env_num("POSTROOM_BENCH_MESSAGES", 100_000)?.clamp(100, 1_000_000) as u32,
            runs: env_num("POSTROOM_BENCH_RUNS", 5)?.clamp(1, 50) as usize,
            rounds: env_num("POSTROOM_BENCH_ROUNDS", 20)?.clamp(1, IDLE_MESSAGES as u64) as usize,
            idle: env_num("POSTROOM_BENCH_IDLE", 1000)?.clamp(1, 5000) as usize,
            large_mb: env_num("POSTROOM_BENCH_LARGE_MB", 30)?.clamp(1, 1000),
            only,
            keep: env_flag("POSTROOM_BENCH_KEEP"),
        })
    }

    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

/// Where a server keeps one user's INBOX.
fn inbox(kind: Kind, dir: &Path, user: &str) -> PathBuf {
    match kind {
        Kind::Postroom => dir.join("spool").join(user),
        Kind::Dovecot => dir.join("home").join(user).join("inbox"),
    }
}

/// Samples of one figure on one server, or why there are none.
type Samples = Result<Vec<f64>, String>;

/// The reason postroom figures are missing while it has no IMAP.
const NA: &str = "n/a";
/// The start of the reason for figures of responses that are not valid.
const INVALID: &str = "invalid: ";

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// Seconds as "0.412 s" or "37.5 ms".
fn secs(v: f64) -> String {
    if v < 1.0 {
        format!("{} ms", fig(v * 1e3))
    } else {
        format!("{} s", fig(v))
    }
}

/// A goal: its text, and whether postroom's figure and the ratio meet it.
type Goal<'a> = (String, &'a dyn Fn(f64, f64) -> bool);

/// Whether smaller or larger figures are better.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

impl Table {
    /// A row from one statistic of each server's samples; `goal` judges
    /// postroom's figure and the ratio (>1: postroom better).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        name: String,
        pr: &Samples,
        dc: &Samples,
        stat: fn(&[f64]) -> f64,
        show: fn(f64) -> String,
        better: Better,
        what: &str,
        goal: Option<Goal>,
    ) {
        let cell = |s: &Samples| match s {
            Ok(v) if !v.is_empty() => show(stat(v)),
            Ok(_) => "none".to_string(),
            Err(e) if e == NA => NA.to_string(),
            Err(e) if e.starts_with(INVALID) => "invalid".to_string(),
            Err(e) if e.contains("no notification within") => format!("none in {} s", NOTIFY_TIMEOUT.as_secs()),
            Err(_) => "failed".to_string(),
        };
        let value = |s: &Samples| s.as_ref().ok().filter(|v| !v.is_empty()).map(|v| stat(v));
        let ratio = match (value(pr), value(dc)) {
            (Some(p), Some(d)) => Some(if better == Better::Lower { d / p } else { p / d }),
            _ => None,
        };
        let ratio_text = match ratio {
            Some(r) => format!(
                "{} {} (>1: postroom {what})",
                if better == Better::Lower { "Dovecot/postroom" } else { "postroom/Dovecot" },
                // Beyond this the figure says only that one side is near zero.
                if r > 1000.0 { "> 1000".to_string() } else { fig(r) }
            ),
            None => NA.to_string(),
        };
        let goal_text = match (goal, value(pr), ratio) {
            (None, _, _) => String::new(),
            (Some((text, _)), None, _) => format!("{text}: n/a"),
            (Some((text, ok)), Some(p), r) => {
                format!("{text}: {}", if ok(p, r.unwrap_or(f64::NAN)) { "met" } else { "NOT met" })
            }
        };
        self.row(name, cell(pr), cell(dc), ratio_text, goal_text);
    }
}

// ---------------------------------------------------------------------
// Rows 1-3: the large INBOX.

/// `FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)`; checks one FETCH per message.
/// Also says how many responses lack a parenthesized ENVELOPE (a server
/// that answers `ENVELOPE )` has done none of the work).
fn fetch_envelopes(c: &mut Imap, n: u32) -> Res<(imap_client::Done, Option<String>)> {
    let mut bad = 0u64;
    let mut example = String::new();
    let d = c.cmd_with(
        ENVELOPE,
        |r| {
            if r.numbered("FETCH").is_some() && !r.contains("ENVELOPE (") {
                bad += 1;
                if example.is_empty() {
                    example = String::from_utf8_lossy(&r.text[..r.text.len().min(120)]).into_owned();
                }
            }
            Ok(())
        },
        |_| Ok(()),
    )?;
    if d.tally.fetches != n as u64 {
        return Err(format!("{ENVELOPE}: {} FETCH responses, want {n}", d.tally.fetches));
    }
    let invalid =
        (bad > 0).then(|| format!("{INVALID}{bad} of {n} FETCH responses without an envelope, as {example:?}"));
    Ok((d, invalid))
}

/// Figures of one run on the large INBOX, in seconds.
struct BigRun {
    cold_select: f64,
    cold_fetch: f64,
    warm_select_new: f64,
    warm_fetch: f64,
    warm_select_same: f64,
    /// Server CPU seconds during the cold SELECT.
    cold_select_cpu: f64,
    /// Octets of the ENVELOPE fetch's response.
    fetch_octets: u64,
    /// Why the ENVELOPE responses are not valid, if they are not.
    envelope_error: Option<String>,
}

/// One run: a session with the cold SELECT and the first FETCH, then a
/// session with a warm SELECT, the FETCH again, UNSELECT and SELECT.
fn big_run(srv: &Server, u: &User) -> Res<BigRun> {
    let n = u.messages;
    let mut c = Imap::connect(srv.name(), srv.port, BIG_BUF)?;
    c.login(&u.name, &u.password)?;
    let cpu0 = srv.cpu_secs();
    let cold = c.select("INBOX", Some(n))?;
    let cold_select_cpu = srv.cpu_secs() - cpu0;
    let (cold_fetch, envelope_error) = fetch_envelopes(&mut c, n)?;
    c.logout()?;
    let mut c = Imap::connect(srv.name(), srv.port, BIG_BUF)?;
    c.login(&u.name, &u.password)?;
    let warm = c.select("INBOX", Some(n))?;
    let (warm_fetch, _) = fetch_envelopes(&mut c, n)?;
    c.cmd("UNSELECT")?;
    let again = c.select("INBOX", Some(n))?;
    c.logout()?;
    Ok(BigRun {
        cold_select: cold.elapsed.as_secs_f64(),
        cold_fetch: cold_fetch.elapsed.as_secs_f64(),
        warm_select_new: warm.elapsed.as_secs_f64(),
        warm_fetch: warm_fetch.elapsed.as_secs_f64(),
        warm_select_same: again.elapsed.as_secs_f64(),
        cold_select_cpu,
        fetch_octets: cold_fetch.tally.octets,
        envelope_error,
    })
}

/// All samples of rows 1-3 on one server, plus notes.
#[derive(Default)]
struct BigFigures {
    cold_select: Vec<f64>,
    cold_fetch: Vec<f64>,
    warm_select_new: Vec<f64>,
    warm_fetch: Vec<f64>,
    warm_select_same: Vec<f64>,
    cold_select_cpu: Vec<f64>,
    fetch_octets: u64,
    envelope_error: Option<String>,
    rewrote: usize,
}

/// Runs rows 1-3 `runs` times, the servers taking turns: postroomd started
/// afresh for each run (when it serves IMAP), Dovecot's index removed
/// before each.
fn big_rows(
    cfg: &Config,
    ids: &Ids,
    pr_dir: &Path,
    dc: &Server,
    dc_dir: &Path,
    big: &User,
    pr_ok: bool,
) -> (Result<BigFigures, String>, Result<BigFigures, String>) {
    let mut pr: Result<BigFigures, String> = if pr_ok { Ok(BigFigures::default()) } else { Err(NA.into()) };
    let mut dcf: Result<BigFigures, String> = Ok(BigFigures::default());
    let pr_file = inbox(Kind::Postroom, pr_dir, &big.name);
    let dc_file = inbox(Kind::Dovecot, dc_dir, &big.name);
    let dc_index = dc_dir.join("home").join(&big.name).join("mail").join(".imap");
    let record = |f: &mut BigFigures, r: &BigRun| {
        f.cold_select.push(r.cold_select);
        f.cold_fetch.push(r.cold_fetch);
        f.warm_select_new.push(r.warm_select_new);
        f.warm_fetch.push(r.warm_fetch);
        f.warm_select_same.push(r.warm_select_same);
        f.cold_select_cpu.push(r.cold_select_cpu);
        f.fetch_octets = r.fetch_octets;
        if f.envelope_error.is_none() {
            f.envelope_error.clone_from(&r.envelope_error);
        }
    };
    for run in 0..cfg.runs {
        for turn in 0..2 {
            let kind = if (run + turn) % 2 == 0 { Kind::Postroom } else { Kind::Dovecot };
            let t = Instant::now();
            let (file, figures) = match kind {
                Kind::Postroom => (&pr_file, &mut pr),
                Kind::Dovecot => (&dc_file, &mut dcf),
            };
            let Ok(f) = figures.as_mut() else { continue };
            if let Err(e) = mail::read_through(file) {
                *figures = Err(e);
                continue;
            }
            let before = mail::stamp(file);
            let r = match kind {
                Kind::Postroom => Server::postroom_imap(pr_dir, ids, 100)
                    .and_then(|srv| big_run(&srv, big).map_err(|e| format!("{e}\n{}", srv.log_tail(20)))),
                Kind::Dovecot => match fs::remove_dir_all(&dc_index) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", dc_index.display())),
                    _ => big_run(dc, big).map_err(|e| format!("{e}\n{}", dc.log_tail(20))),
                },
            };
            match r {
                Ok(r) => {
                    eprintln!(
                        "imap bench: large INBOX run {}: {}: cold SELECT {}, cold FETCH {}, warm SELECT {} / {}, FETCH again {} ({:.1} s)",
                        run + 1,
                        if kind == Kind::Postroom { "postroom" } else { "Dovecot" },
                        secs(r.cold_select),
                        secs(r.cold_fetch),
                        secs(r.warm_select_new),
                        secs(r.warm_select_same),
                        secs(r.warm_fetch),
                        t.elapsed().as_secs_f64()
                    );
                    record(f, &r);
                    if mail::stamp(file) != before {
                        f.rewrote += 1;
                    }
                }
                Err(e) => {
                    eprintln!("imap bench: large INBOX: {e}");
                    *figures = Err(e);
                }
            }
        }
    }
    (pr, dcf)
}

// ---------------------------------------------------------------------
// Row 4: full bodies.

/// The value after `RFC822.SIZE ` in a FETCH response.
fn rfc822_size(text: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, b"RFC822.SIZE ")? + 12;
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

/// `FETCH 1:* BODY.PEEK[]` once untimed, then `runs` times timed; each
/// checked against the sum of RFC822.SIZE. Returns MB/s per run and the
/// octets.
fn body_fetch(srv: &Server, u: &User, runs: usize) -> Res<(Vec<f64>, u64)> {
    let mut c = Imap::connect(srv.name(), srv.port, BIG_BUF)?;
    c.login(&u.name, &u.password)?;
    c.select("INBOX", Some(u.messages))?;
    let mut total = 0u64;
    let mut missing = 0;
    c.cmd_with(
        "FETCH 1:* RFC822.SIZE",
        |r| {
            match rfc822_size(r.text) {
                Some(n) => total += n,
                None => missing += 1,
            }
            Ok(())
        },
        |_| Ok(()),
    )?;
    if missing > 0 {
        return Err(format!("{}: {missing} FETCH responses without RFC822.SIZE", srv.name()));
    }
    let mut rates = Vec::new();
    for i in 0..=runs {
        let d = c.cmd("FETCH 1:* BODY.PEEK[]")?;
        if d.tally.literals != u.messages as u64 || d.tally.literal_octets != total {
            return Err(format!(
                "{}: BODY.PEEK[] gave {} literals of {} octets; RFC822.SIZE adds up to {total} in {} messages",
                srv.name(),
                d.tally.literals,
                d.tally.literal_octets,
                u.messages
            ));
        }
        if i > 0 {
            rates.push(total as f64 / 1e6 / d.elapsed.as_secs_f64());
        }
    }
    c.logout()?;
    Ok((rates, total))
}

// ---------------------------------------------------------------------
// Row 5: IDLE.

/// What makes session A hear of a change.
#[derive(Clone, Copy, PartialEq)]
enum Trigger {
    /// Session B: `STORE n +FLAGS (\Flagged)`.
    Store,
    /// Session B: APPEND.
    Append,
    /// Appended to the file under dotlock and fcntl lock.
    Outside,
    /// The server's delivery agent.
    Agent,
}

/// Runs a delivery agent with `message` on its standard input, bounded in time.
fn run_agent(mut cmd: Command, message: &[u8]) -> Res<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let write = stdin.write_all(message);
    drop(stdin);
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                write.map_err(|e| format!("{shown}: writing the message: {e}"))?;
                if !st.success() {
                    return Err(format!("{shown}: {st}: {}", err.trim()));
                }
                return Ok(());
            }
            Ok(None) if start.elapsed() > LDA_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown}: did not finish in {LDA_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
}

/// The delivery agent's command line for `user` on server `kind`.
fn agent(kind: Kind, dir: &Path, user: &str) -> Command {
    match kind {
        Kind::Postroom => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_postroom"));
            c.arg("deliver").arg("-f").arg(dir.join("postroom-imap.conf")).args(["-s", "mta@example.net", user]);
            c
        }
        Kind::Dovecot => {
            let lda = std::env::var_os("DOVECOT_LDA").unwrap_or_else(|| "/usr/lib/dovecot/dovecot-lda".into());
            let mut c = Command::new(lda);
            c.arg("-c").arg(dir.join("dovecot-imap.conf")).args(["-f", "mta@example.net", "-d", user]);
            c
        }
    }
}

/// `rounds` notifications to session A in IDLE; returns each latency in seconds.
fn idle_latency(srv: &Server, kind: Kind, dir: &Path, u: &User, trigger: Trigger, rounds: usize) -> Res<Vec<f64>> {
    let mut b = Imap::connect(srv.name(), srv.port, BIG_BUF)?;
    b.login(&u.name, &u.password)?;
    let mut count = b.select("INBOX", None)?.tally.exists.ok_or("SELECT without EXISTS")?;
    if trigger == Trigger::Store {
        b.cmd("STORE 1:* -FLAGS.SILENT (\\Flagged)")?;
    }
    let mut a = Imap::connect(srv.name(), srv.port, BIG_BUF)?;
    a.login(&u.name, &u.password)?;
    a.select("INBOX", Some(count))?;
    let tag = a.idle()?;
    let mbox = inbox(kind, dir, &u.name);
    let mut rng = mboxgen::Rng::new(SEED ^ rounds as u64 ^ trigger as u64);
    let mut out = Vec::new();
    for i in 0..rounds {
        let n = i as u64 + 1;
        let (sent, want_fetch) = match trigger {
            Trigger::Store => {
                let k = (i as u32 % count) + 1;
                (b.cmd(&format!("STORE {k} +FLAGS (\\Flagged)"))?.at, Some(k))
            }
            Trigger::Append => {
                let m = mboxgen::client_message(&mut rng, n, 4096);
                (b.append("INBOX", "\\Seen", &m)?.at, None)
            }
            Trigger::Outside => {
                let m = mboxgen::delivered(&mut rng, 1000 + n, 1_790_000_000 + n as i64 * 60, 4096);
                mail::deliver_locked(&mbox, &m)?;
                (Instant::now(), None)
            }
            Trigger::Agent => {
                let m = mboxgen::delivered(&mut rng, 2000 + n, 1_790_000_000 + n as i64 * 60, 4096);
                // The agent writes its own From_ line.
                let content = &m[memchr::memchr(b'\n', &m).map_or(0, |i| i + 1)..];
                run_agent(agent(kind, dir, &u.name), content)?;
                (Instant::now(), None)
            }
        };
        let want = count + 1;
        let (at, _) = a
            .wait_for(NOTIFY_TIMEOUT, |r| match want_fetch {
                Some(k) => r.numbered("FETCH") == Some(k) && r.contains("\\Flagged"),
                None => r.numbered("EXISTS").is_some_and(|e| e >= want),
            })
            .map_err(|e| format!("{e} (round {})", i + 1))?;
        if want_fetch.is_none() {
            count = want;
        }
        out.push(at.saturating_duration_since(sent).as_secs_f64());
        if out.len() >= SLOW_ROUNDS && out.iter().any(|&x| x > SLOW) {
            eprintln!("imap bench: {}: notifications take over {SLOW} s; {} rounds only", srv.name(), out.len());
            break;
        }
    }
    a.done(&tag)?;
    a.logout()?;
    b.logout()?;
    Ok(out)
}

// ---------------------------------------------------------------------
// Row 6: idle sessions.

/// What an idle-session row measured on one server.
struct Idle {
    rss_kib: f64,
    pss_kib: f64,
    before: Mem,
    after: Mem,
    secs: f64,
}

/// Starts a fresh server, opens one session per entry of `users` (logged
/// in, INBOX selected, in IDLE), and returns its memory per session.
fn idle_sessions(kind: Kind, dir: &Path, ids: &Ids, users: &[&User]) -> Res<Idle> {
    let n = users.len();
    let cap = (n as u32 + 100).max(2000);
    let srv = match kind {
        Kind::Postroom => Server::postroom_imap(&dir.join("postroom"), ids, cap)?,
        Kind::Dovecot => Server::dovecot_imap(&dir.join("dovecot"), ids, cap)?,
    };
    let open = |u: &User| -> Res<(Imap, String)> {
        let mut c = Imap::connect(srv.name(), srv.port, SMALL_BUF)?;
        c.login(&u.name, &u.password)?;
        c.select("INBOX", Some(u.messages))?;
        let tag = c.idle()?;
        Ok((c, tag))
    };
    // Sessions first, so that what the server sets up once is not counted:
    // a few logins at once, so that every password-checking thread has its
    // Argon2 memory (one login gives it to one thread).
    for (mut c, tag) in parallel(common::WARM_LOGINS, common::WARM_LOGINS, |_| open(users[0]))? {
        c.done(&tag)?;
        c.logout()?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = srv.mem();
    let t = Instant::now();
    let conns = parallel(n, 8, |i| open(users[i]))?;
    // Settled: a thread per session (postroom); an imap process per
    // session and no login process left (Dovecot).
    let settled = |m: &Mem| match kind {
        Kind::Postroom => m.threads >= before.threads + n as u64,
        Kind::Dovecot => m.count("imap") >= n as u64 && m.count("imap-login") == 0,
    };
    srv.wait_settled(n, t, Duration::from_secs(60), settled)?;
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = srv.mem();
    let (dc_rss, dc_pss) = srv.mem_named(&["imap", "imap-login"]);
    // The sessions are still there.
    let mut conns = conns;
    let (mut c, tag) = conns.pop().ok_or("no connection")?;
    c.done(&tag).map_err(|e| format!("an idle session no longer answers: {e}"))?;
    c.cmd("NOOP")?;
    c.logout()?;
    drop(conns);
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    let (rss_kib, pss_kib) = match kind {
        Kind::Postroom => (per(after.main_vmrss_kib, before.main_vmrss_kib), per(after.pss_kib, before.pss_kib)),
        Kind::Dovecot => (dc_rss as f64 / n as f64, dc_pss as f64 / n as f64),
    };
    srv.wait_sessions_gone(&before);
    drop(srv);
    Ok(Idle { rss_kib, pss_kib, before, after, secs })
}

// ---------------------------------------------------------------------

fn main() {
    if let Err(e) = run() {
        eprintln!("imap bench: FAILED: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let cfg = Config::from_env()?;
    let started = Instant::now();
    let load_before = load_average();
    let ids = Ids::get()?;
    let nofile = raise_nofile(2 * cfg.idle as u64 + 1000, true)?;
    let run_dir = RunDir::create(DIR, "imap", cfg.keep)?;
    let dir = run_dir.dir.clone();
    let gen = dir.join("gen");
    fs::create_dir_all(&gen).map_err(|e| format!("{}: {e}", gen.display()))?;

    // Mail.
    eprintln!("imap bench: generating mail in {}", dir.display());
    let t = Instant::now();
    let user = |name: String, template: PathBuf, messages| User {
        password: format!("pw-{name}-7q"),
        name,
        template,
        messages,
    };
    let mut users = Vec::new();
    let mut big_bytes = 0;
    if cfg.wants("select") {
        let p = gen.join("big.mbox");
        big_bytes = mail::write_mbox(&p, cfg.messages, SEED, true)?;
        users.push(user("big".into(), p, cfg.messages));
    }
    let body = gen.join("body.mbox");
    let body_bytes = mail::write_mbox(&body, BODY_MESSAGES, SEED ^ 0x1000, true)?;
    let mid = gen.join("mid.mbox");
    mail::write_mbox(&mid, IDLE_MESSAGES, SEED ^ 0x100, true)?;
    let small = gen.join("small.mbox");
    mail::write_mbox(&small, PER_USER_MESSAGES, SEED ^ 0x10, true)?;
    users.push(user("bob".into(), body, BODY_MESSAGES));
    let mut large_bytes = 0;
    if cfg.wants("body") {
        let p = gen.join("large.mbox");
        large_bytes = mail::write_large(&p, cfg.large_mb << 20, true)?;
        users.push(user("erin".into(), p, 1));
    }
    users.push(user("carol".into(), mid.clone(), IDLE_MESSAGES));
    users.push(user("dave".into(), mid, IDLE_MESSAGES));
    if cfg.wants("memory") {
        users.extend((1..=cfg.idle).map(|i| user(format!("m{i:04}"), small.clone(), PER_USER_MESSAGES)));
    }
    let find = |name: &str| users.iter().find(|u| u.name == name).cloned().ok_or(format!("no user {name}"));
    let pr_dir = dir.join("postroom");
    let dc_dir = dir.join("dovecot");
    servers::postroom_tree(&pr_dir, &users, &ids)?;
    servers::dovecot_tree(&dc_dir, &users, &ids)?;
    // The template of the large INBOX is no longer needed; its pages would
    // only crowd the page cache.
    let _ = fs::remove_file(gen.join("big.mbox"));
    eprintln!(
        "imap bench: {} users, {:.0} MB in the large INBOX, in {:.1} s",
        users.len(),
        big_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Does postroomd serve IMAP yet?
    let pr_probe = Server::postroom_imap(&pr_dir, &ids, 100);
    let pr_ok = match &pr_probe {
        Ok(_) => true,
        Err(e) => {
            eprintln!("imap bench: postroom does not serve IMAP, its figures are n/a: {e}");
            false
        }
    };
    drop(pr_probe);
    let na = || -> Samples { Err(NA.into()) };

    let mut table = Table::new("imap");
    let mut notes: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    let dc = Server::dovecot_imap(&dc_dir, &ids, 100)?;

    // Rows 1-3.
    if cfg.wants("select") {
        let big = find("big")?;
        let (pr, d) = big_rows(&cfg, &ids, &pr_dir, &dc, &dc_dir, &big, pr_ok);
        let pick = |f: &Result<BigFigures, String>, g: fn(&BigFigures) -> &Vec<f64>| -> Samples {
            f.as_ref().map(|f| g(f).clone()).map_err(|e| e.clone())
        };
        let pick_envelopes = |f: &Result<BigFigures, String>, g: fn(&BigFigures) -> &Vec<f64>| -> Samples {
            match f {
                Ok(BigFigures { envelope_error: Some(e), .. }) => Err(e.clone()),
                _ => pick(f, g),
            }
        };
        let faster = "faster";
        let n = cfg.messages;
        let cold_ok = |p: f64, r: f64| p < GOAL_COLD_SECS && r >= GOAL_COLD_RATIO;
        table.add(
            format!("1. cold SELECT, {n} msgs ({:.0} MB)", big_bytes as f64 / 1e6),
            &pick(&pr, |f| &f.cold_select),
            &pick(&d, |f| &f.cold_select),
            median,
            secs,
            Better::Lower,
            faster,
            Some((format!("< {GOAL_COLD_SECS} s and >= {GOAL_COLD_RATIO}x"), &cold_ok)),
        );
        // Rows 2 and 3, without goals; the ENVELOPE rows are only as
        // valid as the responses.
        type Pick = fn(&BigFigures) -> &Vec<f64>;
        let rows: [(&str, bool, Pick); 4] = [
            ("2. warm SELECT, new session", false, |f| &f.warm_select_new),
            ("2. warm SELECT, same session after UNSELECT", false, |f| &f.warm_select_same),
            ("3. FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE), first", true, |f| &f.cold_fetch),
            ("3. FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE), again", true, |f| &f.warm_fetch),
        ];
        for (name, envelopes, g) in rows {
            let samples = |f| if envelopes { pick_envelopes(f, g) } else { pick(f, g) };
            table.add(name.into(), &samples(&pr), &samples(&d), median, secs, Better::Lower, faster, None);
        }
        let describe = |name: &str, f: &Result<BigFigures, String>| {
            match f {
            Ok(f) => format!(
                "  {name}: cold SELECT runs {} s (server CPU {} s); ENVELOPE response {:.1} MB; mbox changed by {} of {} runs",
                f.cold_select.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "),
                f.cold_select_cpu.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" "),
                f.fetch_octets as f64 / 1e6,
                f.rewrote,
                f.cold_select.len()
            ) + &match &f.envelope_error {
                Some(e) => format!(
                    "; ENVELOPE responses {} (FETCH took {} first, {} again)",
                    e.trim_start_matches(INVALID),
                    secs(median(&f.cold_fetch)),
                    secs(median(&f.warm_fetch))
                ),
                None => String::new(),
            },
            Err(e) => format!("  {name}: {}", e.lines().next().unwrap_or("")),
        }
        };
        notes.push("large INBOX:".into());
        notes.push(describe("postroom", &pr));
        notes.push(describe("Dovecot", &d));
    }

    // The other rows use one long-running postroomd.
    let pr = if pr_ok && (cfg.wants("body") || cfg.wants("idle")) {
        match Server::postroom_imap(&pr_dir, &ids, 100) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("imap bench: postroom: {e}");
                None
            }
        }
    } else {
        None
    };
    let on_pr = |f: &dyn Fn(&Server) -> Res<Vec<f64>>| -> Samples {
        match &pr {
            Some(s) => f(s).map_err(|e| {
                eprintln!("imap bench: postroom: {e}\n{}", s.log_tail(20));
                e
            }),
            None if pr_ok => Err("postroomd did not start".into()),
            None => na(),
        }
    };
    let on_dc = |f: &dyn Fn(&Server) -> Res<Vec<f64>>| -> Samples {
        f(&dc).map_err(|e| {
            eprintln!("imap bench: Dovecot: {e}\n{}", dc.log_tail(20));
            e
        })
    };

    // Row 4.
    if cfg.wants("body") {
        let bob = find("bob")?;
        let octets = Mutex::new((0u64, 0u64));
        let prs = on_pr(&|s| {
            let (v, o) = body_fetch(s, &bob, cfg.runs)?;
            octets.lock().unwrap().0 = o;
            Ok(v)
        });
        let dcs = on_dc(&|s| {
            let (v, o) = body_fetch(s, &bob, cfg.runs)?;
            octets.lock().unwrap().1 = o;
            Ok(v)
        });
        table.add(
            format!("4. FETCH 1:* BODY.PEEK[], {BODY_MESSAGES} msgs ({:.1} MB mbox), MB/s", body_bytes as f64 / 1e6),
            &prs,
            &dcs,
            median,
            fig,
            Better::Higher,
            "faster",
            None,
        );
        let (po, dco) = *octets.lock().unwrap();
        notes.push(format!(
            "body fetch: message octets sent per FETCH: postroom {po}, Dovecot {dco} (postroom reads mboxrd: one '>' fewer on quoted From_ lines)"
        ));
        let erin = find("erin")?;
        let prs = on_pr(&|s| Ok(body_fetch(s, &erin, cfg.runs)?.0));
        let dcs = on_dc(&|s| Ok(body_fetch(s, &erin, cfg.runs)?.0));
        table.add(
            format!("4. FETCH 1 BODY.PEEK[] of one {:.0} MB message, MB/s", large_bytes as f64 / 1e6),
            &prs,
            &dcs,
            median,
            fig,
            Better::Higher,
            "faster",
            None,
        );
    }

    // Row 5.
    if cfg.wants("idle") {
        let carol = find("carol")?;
        let rows = [
            (Trigger::Store, "5. IDLE: STORE +FLAGS in another session -> FETCH"),
            (Trigger::Append, "5. IDLE: APPEND in another session -> EXISTS"),
            (Trigger::Outside, "5. IDLE: appended to the mbox (dotlock+fcntl) -> EXISTS"),
            (Trigger::Agent, "5. IDLE: postroom deliver / dovecot-lda -> EXISTS"),
        ];
        for (trigger, name) in rows {
            let prs = on_pr(&|s| idle_latency(s, Kind::Postroom, &pr_dir, &carol, trigger, cfg.rounds));
            let dcs = on_dc(&|s| idle_latency(s, Kind::Dovecot, &dc_dir, &carol, trigger, cfg.rounds));
            let goal: Option<Goal> = match trigger {
                Trigger::Outside | Trigger::Agent => {
                    Some((format!("max < {GOAL_DELIVERY_SECS} s"), &|p: f64, _| p < GOAL_DELIVERY_SECS))
                }
                _ => None,
            };
            let rounds = cfg.rounds;
            table.add(format!("{name}, median of {rounds}"), &prs, &dcs, median, secs, Better::Lower, "faster", None);
            table.add(format!("{name}, max of {rounds}"), &prs, &dcs, max, secs, Better::Lower, "faster", goal);
        }
    }
    if cfg.wants("idle") {
        notes.push(format!(
            "IDLE rows: a latency near 0 means session A's notification had arrived before B read its tagged OK; \
             \"none in {} s\": no notification came (Dovecot's mbox storage watches the mbox file, and stats it every \
             mailbox_idle_check_interval, but keeps a flag change in its index until it writes the file back); \
             Dovecot waits 500 ms after a change it sees before it looks",
            NOTIFY_TIMEOUT.as_secs()
        ));
    }
    if let Some(s) = &pr {
        problems.extend(s.log_problems().into_iter().map(|l| format!("postroom: {l}")));
    }
    problems.extend(dc.log_problems().into_iter().map(|l| format!("Dovecot: {l}")));
    drop(pr);
    drop(dc);

    // Row 6, on fresh servers.
    if cfg.wants("memory") {
        let dave = find("dave")?;
        let one: Vec<&User> = (0..cfg.idle).map(|_| &dave).collect();
        let each: Vec<&User> = users.iter().filter(|u| u.name.starts_with('m')).collect();
        for (what, list) in [
            (format!("1 user, {IDLE_MESSAGES} msgs"), &one),
            (format!("1 per user, {PER_USER_MESSAGES} msgs each"), &each),
        ] {
            let p = if pr_ok {
                idle_sessions(Kind::Postroom, &dir, &ids, list).map_err(|e| {
                    eprintln!("imap bench: postroom: {e}");
                    e
                })
            } else {
                Err(NA.into())
            };
            let d = idle_sessions(Kind::Dovecot, &dir, &ids, list).map_err(|e| {
                eprintln!("imap bench: Dovecot: {e}");
                e
            });
            let n = list.len();
            let kib = |x: f64| format!("{} KiB", fig(x));
            let sample = |r: &Result<Idle, String>, f: fn(&Idle) -> f64| -> Samples {
                r.as_ref().map(|i| vec![f(i)]).map_err(|e| e.clone())
            };
            let goal_ok = |p: f64, _| p < GOAL_IDLE_KIB;
            type Measure = fn(&Idle) -> f64;
            let measures: [(&str, Measure); 2] =
                [("Rss (postroom VmRSS growth)", |i| i.rss_kib), ("Pss", |i| i.pss_kib)];
            for (measure, f) in measures {
                table.add(
                    format!("6. {n} idle sessions ({what}): KiB/session, {measure}"),
                    &sample(&p, f),
                    &sample(&d, f),
                    median,
                    kib,
                    Better::Lower,
                    "smaller",
                    Some((format!("< {GOAL_IDLE_KIB} KiB"), &goal_ok)),
                );
            }
            let mut line = format!("idle sessions ({what}):");
            if let Ok(p) = &p {
                line.push_str(&format!(
                    " postroomd VmRSS {} -> {} KiB, Pss {} -> {} KiB, threads {} -> {}, {n} sessions set up in {:.1} s;",
                    p.before.main_vmrss_kib,
                    p.after.main_vmrss_kib,
                    p.before.pss_kib,
                    p.after.pss_kib,
                    p.before.threads,
                    p.after.threads,
                    p.secs
                ));
            }
            if let Ok(d) = &d {
                line.push_str(&format!(
                    " Dovecot {} -> {} processes ({} imap, {} imap-login after), all processes Rss {} -> {} KiB, Pss {} -> {} KiB, set up in {:.1} s",
                    d.before.procs,
                    d.after.procs,
                    d.after.count("imap"),
                    d.after.count("imap-login"),
                    d.before.rss_kib,
                    d.after.rss_kib,
                    d.before.pss_kib,
                    d.after.pss_kib,
                    d.secs
                ));
            }
            notes.push(line);
        }
    }

    println!(
        "postroom IMAP benchmark beside {} on 127.0.0.1; {} CPUs; load average {load_before} before, {} after; measured in {:.0} s{}",
        dovecot_version(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
        started.elapsed().as_secs_f64(),
        if pr_ok { "" } else { "; postroomd does not serve IMAP yet: its figures are n/a" }
    );
    let large = if cfg.wants("select") {
        format!(
            "large INBOX {} messages, {:.1} MB ({:.1} KiB per message); ",
            cfg.messages,
            big_bytes as f64 / 1e6,
            big_bytes as f64 / cfg.messages as f64 / 1024.0
        )
    } else {
        String::new()
    };
    println!(
        "mail: {large}body-fetch INBOX {BODY_MESSAGES} messages, {:.1} MB; IDLE rows: INBOX of {IDLE_MESSAGES} messages, {} notifications per row (fewer where they take over {SLOW} s); {} idle sessions",
        body_bytes as f64 / 1e6,
        cfg.rounds,
        cfg.idle
    );
    println!(
        "figures: medians of {} runs (rows 1-4, servers taking turns; row 1 with postroomd restarted and Dovecot's index removed before each run, the mbox read into the page cache); descriptor limit {nofile}",
        cfg.runs
    );
    println!(
        "both: passwd-file with {{{}}} passwords, plain text login on loopback, no TLS, log level info to a file; Dovecot: its defaults (login process per connection, imap process per session), fcntl locks, index in ~/mail/.imap, limits raised",
        servers::password_scheme()
    );
    println!();
    table.print();
    println!();
    for n in &notes {
        println!("{n}");
    }
    if !problems.is_empty() {
        println!();
        println!("server log lines with warnings or errors ({}):", problems.len());
        for l in problems.iter().take(20) {
            println!("  {l}");
        }
    }
    drop(run_dir);
    Ok(())
}

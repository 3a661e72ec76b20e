//! The store benchmark: how fast postroom indexes, opens, refreshes and
//! changes a large mbox, each figure set against a baseline measured in
//! the same run on the same machine.
//!
//! Run with `cargo bench --bench store`. Environment:
//!
//! - `POSTROOM_BENCH_MB`: size of the generated mbox in MiB (default 1024;
//!   64 gives a quick run). About 10 KiB of mail per message.
//! - `POSTROOM_BENCH_DIR`: where the files go (default /tmp/postroom-bench).
//! - `POSTROOM_BENCH_RUNS`: runs of each throughput row (default 5); rows of
//!   small operations run ten times as often. Every figure is a median.
//! - `POSTROOM_BENCH_KEEP=1`: keep the generated files for the next run,
//!   which reuses them when their sidecar says they match.
//!
//! Every file is read once before it is timed: the figures are with the
//! file in the page cache, so they measure postroom, not the disk. Writes
//! are fsynced unless a row says otherwise; fsync reaches the disk.

#[allow(dead_code)]
mod common;
mod mboxgen;

use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{env_flag, env_num, load_average, median};
use postroom::store::lock::{self, LockSettings};
use postroom::store::scan;
use postroom::store::{Flags, Mailbox, MboxFormat, Options, Registry};

type Res<T> = Result<T, Box<dyn Error>>;

/// Bumped whenever the generator's output changes, so old files are not reused.
const GENERATOR_VERSION: u32 = 1;
const SEED: u64 = 0x706f_7374_726f_6f6d;
const MB: f64 = 1e6;

struct Config {
    dir: PathBuf,
    bytes: u64,
    runs: usize,
    keep: bool,
}

impl Config {
    fn from_env() -> Res<Config> {
        let mib = env_num("POSTROOM_BENCH_MB", 1024)?;
        if mib == 0 {
            return Err("POSTROOM_BENCH_MB must be at least 1".into());
        }
        Ok(Config {
            dir: std::env::var_os("POSTROOM_BENCH_DIR").map_or_else(|| "/tmp/postroom-bench".into(), PathBuf::from),
            bytes: mib << 20,
            runs: env_num("POSTROOM_BENCH_RUNS", 5)?.max(1) as usize,
            keep: env_flag("POSTROOM_BENCH_KEEP"),
        })
    }
}

/// Removes the files of this run when dropped: work copies always, the
/// generated mboxes unless they are to be kept.
struct Cleanup {
    /// The directory, removed at the end if empty.
    dir: Option<PathBuf>,
    generated: Vec<PathBuf>,
    work: Vec<PathBuf>,
    keep: bool,
}

impl Cleanup {
    /// A work file and what the store may leave next to it.
    fn work(&mut self, p: &Path) {
        self.work.push(p.to_path_buf());
        self.work.push(with_suffix(p, ".journal"));
        self.work.push(with_suffix(p, ".lock"));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let gen = if self.keep { &[][..] } else { &self.generated[..] };
        for p in self.work.iter().chain(gen) {
            let _ = fs::remove_file(p);
        }
        if let Some(dir) = self.dir.as_deref().filter(|_| !self.keep) {
            // Only if nothing else is in it.
            let _ = fs::remove_dir(dir);
        }
    }
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

/// A generated mbox (and its variant without state headers), described by
/// a sidecar file so that a later run can reuse it.
struct Fixture {
    state: PathBuf,
    fresh: Option<PathBuf>,
    sum: mboxgen::Summary,
}

impl Fixture {
    fn ensure(dir: &Path, target: u64, with_fresh: bool, cleanup: &mut Cleanup) -> Res<Fixture> {
        let stem = format!("mbox-{target}");
        let state = dir.join(format!("{stem}.state"));
        let fresh = with_fresh.then(|| dir.join(format!("{stem}.fresh")));
        let sidecar = dir.join(format!("{stem}.params"));
        cleanup.generated.extend([state.clone(), sidecar.clone()]);
        cleanup.generated.extend(fresh.clone());
        let params = format!("version={GENERATOR_VERSION} seed={SEED:#x} target={target} fresh={with_fresh}");
        if let Some(sum) = Self::reusable(&sidecar, &params, &state, fresh.as_deref()) {
            eprintln!("store bench: reusing {}", state.display());
            return Ok(Fixture { state, fresh, sum });
        }
        let _ = fs::remove_file(&sidecar);
        eprintln!("store bench: generating {} ({} MiB)...", state.display(), target >> 20);
        let t = Instant::now();
        let sum = mboxgen::generate(target, SEED, &state, fresh.as_deref())?;
        eprintln!("store bench: generated {} messages in {:.1} s", sum.messages, t.elapsed().as_secs_f64());
        fs::write(
            &sidecar,
            format!(
                "{params}\nstate_bytes={}\nfresh_bytes={}\nmessages={}\nkinds={},{},{}\nfrom_lines={}\n",
                sum.state_bytes,
                sum.fresh_bytes,
                sum.messages,
                sum.kinds[0],
                sum.kinds[1],
                sum.kinds[2],
                sum.from_lines
            ),
        )?;
        Ok(Fixture { state, fresh, sum })
    }

    /// The summary in the sidecar, if it was written with these parameters
    /// and the files still have the sizes it records.
    fn reusable(sidecar: &Path, params: &str, state: &Path, fresh: Option<&Path>) -> Option<mboxgen::Summary> {
        let text = fs::read_to_string(sidecar).ok()?;
        let mut lines = text.lines();
        if lines.next()? != params {
            return None;
        }
        let mut sum = mboxgen::Summary::default();
        for l in lines {
            let (k, v) = l.split_once('=')?;
            match k {
                "state_bytes" => sum.state_bytes = v.parse().ok()?,
                "fresh_bytes" => sum.fresh_bytes = v.parse().ok()?,
                "messages" => sum.messages = v.parse().ok()?,
                "from_lines" => sum.from_lines = v.parse().ok()?,
                "kinds" => {
                    for (i, n) in v.split(',').enumerate() {
                        *sum.kinds.get_mut(i)? = n.parse().ok()?;
                    }
                }
                _ => return None,
            }
        }
        let size = |p: &Path| fs::metadata(p).ok().map(|m| m.len());
        if size(state)? != sum.state_bytes {
            return None;
        }
        if let Some(f) = fresh {
            if size(f)? != sum.fresh_bytes {
                return None;
            }
        }
        Some(sum)
    }
}

/// Copies `src` to `dst` for a run that changes it, flushed to disk so that
/// no later fsync pays for the copy, and read once into the page cache.
fn work_copy(src: &Path, dst: &Path) -> Res<()> {
    for p in [dst.to_path_buf(), with_suffix(dst, ".journal"), with_suffix(dst, ".lock")] {
        let _ = fs::remove_file(p);
    }
    fs::copy(src, dst)?;
    File::open(dst)?.sync_all()?;
    plain_read(dst)?;
    Ok(())
}

/// The baseline: the whole file through one 1 MiB buffer with read(2).
fn plain_read(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    black_box(&buf);
    Ok(total)
}

/// The least any line-oriented parser does: read, and find every newline.
fn read_count_lines(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64,
        }
    }
    Ok(lines)
}

/// CPU time of this thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall-clock and CPU seconds of one call. Other processes on the machine
/// stretch the first; the second shows how much of it was our own work.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
}

struct Clock(Instant, f64);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now(), thread_cpu())
    }
    fn stop(&self) -> Sample {
        Sample { wall: self.0.elapsed().as_secs_f64(), cpu: thread_cpu() - self.1 }
    }
}

/// Medians of a set of samples.
#[derive(Debug, Clone, Copy)]
struct Stat {
    wall: f64,
    cpu: f64,
}

fn stat(v: &[Sample]) -> Stat {
    let wall: Vec<f64> = v.iter().map(|s| s.wall).collect();
    let cpu: Vec<f64> = v.iter().map(|s| s.cpu).collect();
    Stat { wall: median(&wall), cpu: median(&cpu) }
}

/// Calls `f` `runs` times, timing each call.
fn timed(runs: usize, mut f: impl FnMut() -> Res<()>) -> Res<Stat> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let c = Clock::start();
        f()?;
        v.push(c.stop());
    }
    Ok(stat(&v))
}

/// A figure with three significant digits or so; below 0.001 in
/// scientific notation.
fn fig(v: f64) -> String {
    if v.abs() >= 0.001 {
        common::fig(v)
    } else {
        format!("{v:.1e}")
    }
}

/// Thousands separated by commas.
fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Row {
    name: &'static str,
    value: String,
    unit: &'static str,
    on_cpu: String,
    ratio: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// One row: `value` in `unit`, the share of its wall time spent on the
    /// CPU, and how it compares with its baseline.
    fn row(&mut self, name: &'static str, value: f64, unit: &'static str, st: Stat, ratio: String) {
        let on_cpu = format!("{:.0}%", (100.0 * st.cpu / st.wall).min(100.0));
        eprintln!("store bench: {name}: {} {unit} ({on_cpu} on CPU) {ratio}", fig(value));
        self.rows.push(Row { name, value: fig(value), unit, on_cpu, ratio });
    }

    fn print(&self) {
        let w0 = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let w1 = self.rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
        let w2 = self.rows.iter().map(|r| r.unit.chars().count()).max().unwrap_or(0);
        println!("{:<w0$}  {:>w$}  {:>6}  vs baseline", "row", "median", "on CPU", w = w1 + w2 + 1);
        for r in &self.rows {
            println!("{:<w0$}  {:>w1$} {:<w2$}  {:>6}  {}", r.name, r.value, r.unit, r.on_cpu, r.ratio);
        }
    }
}

/// Checks the store's figures are about the file we generated.
fn check(what: &str, ok: bool) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// Appends a 5 KiB message as the MTA does (under the write locks, no
/// state headers), then times the refresh that indexes it and writes its UID.
fn outside_append(mb: &mut Mailbox, path: &Path, rng: &mut mboxgen::Rng, n: u64) -> Res<Sample> {
    let msg = mboxgen::delivered(rng, n, 1_800_000_000 + n as i64, 5 << 10);
    {
        let mut f = OpenOptions::new().append(true).open(path)?;
        let _l = lock::lock_write(&f, path, &LockSettings::default())?;
        f.write_all(&msg)?;
    }
    let len = mb.len();
    let c = Clock::start();
    mb.refresh()?;
    let t = c.stop();
    check("refresh sees the new message", mb.len() == len + 1 && !mb.needs_sync())?;
    Ok(t)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("store bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let cfg = Config::from_env()?;
    fs::create_dir_all(&cfg.dir)?;
    let mut cleanup = Cleanup { dir: Some(cfg.dir.clone()), generated: Vec::new(), work: Vec::new(), keep: cfg.keep };
    let big = Fixture::ensure(&cfg.dir, cfg.bytes, true, &mut cleanup)?;
    let small = Fixture::ensure(&cfg.dir, cfg.bytes / 10, false, &mut cleanup)?;
    let fresh = big.fresh.clone().ok_or("no fresh variant")?;
    let work = cfg.dir.join("work.mbox");
    let work_small = cfg.dir.join("work-small.mbox");
    let work_fresh = cfg.dir.join("work-fresh.mbox");
    for p in [&work, &work_small, &work_fresh] {
        cleanup.work(p);
    }

    let load_before = load_average();
    let started = Instant::now();
    let runs = cfg.runs;
    let many = runs * 10 + 1;
    let size = big.sum.state_bytes;
    let mbs = |secs: f64| size as f64 / MB / secs;
    let mut t = Table::default();
    let mut rng = mboxgen::Rng::new(SEED ^ 0xbe4c);
    // Throughput against plain read, by wall time and by CPU time.
    let vs_read = |read: Stat, x: Stat| {
        format!("{} x plain read, {} x by CPU time", fig(read.wall / x.wall), fig(read.cpu / x.cpu))
    };

    // Baselines. The first read warms the page cache.
    plain_read(&big.state)?;
    let read = timed(runs, || {
        check("plain read length", plain_read(&big.state)? == size)?;
        Ok(())
    })?;
    t.row("plain read, 1 MiB read() calls", mbs(read.wall), "MB/s", read, "1.00 x plain read (baseline)".into());
    let lines = timed(runs, || {
        black_box(read_count_lines(&big.state)?);
        Ok(())
    })?;
    t.row("read + memchr every newline", mbs(lines.wall), "MB/s", lines, vs_read(read, lines));

    // Index build: one scan of the whole file, no index before.
    let file = File::open(&big.state)?;
    let scan_t = timed(runs, || {
        let s = scan::scan(&file, 0, size, MboxFormat::Mboxrd)?;
        check("scan finds every message", s.messages.len() == big.sum.messages as usize)?;
        black_box(s);
        Ok(())
    })?;
    // The same on one thread: what a busy server gets when every core is
    // taken by sessions.
    let seq_t = timed(runs, || {
        let s = scan::scan_sequential(&file, 0, size, MboxFormat::Mboxrd)?;
        check("scan finds every message", s.messages.len() == big.sum.messages as usize)?;
        black_box(s);
        Ok(())
    })?;
    drop(file);
    let scan_ratio = read.wall / scan_t.wall;
    t.row(
        "index build: scan::scan (all cores)",
        mbs(scan_t.wall),
        "MB/s",
        scan_t,
        format!("{}; goal >= 0.5", vs_read(read, scan_t)),
    );
    t.row("index build, one thread", mbs(seq_t.wall), "MB/s", seq_t, vs_read(read, seq_t));

    // Mailbox::open of a file in the state format: index and checks, no writes.
    work_copy(&big.state, &work)?;
    let before = fs::metadata(&work)?;
    let opts = Options::default();
    let mut kept = None;
    let open_t = timed(runs, || {
        let mb = Mailbox::open(&work, &opts, false)?;
        check("open indexes every message", mb.len() == big.sum.messages as usize)?;
        check("open keeps the UIDs", mb.uidnext() == big.sum.messages + 1 && !mb.needs_sync())?;
        kept = Some(mb);
        Ok(())
    })?;
    let after = fs::metadata(&work)?;
    check(
        "open of a file in the state format writes nothing",
        before.len() == after.len() && before.modified()? == after.modified()?,
    )?;
    t.row(
        "Mailbox::open, state headers present",
        open_t.wall,
        "s",
        open_t,
        format!("{} MB/s, {}", fig(mbs(open_t.wall)), vs_read(read, open_t)),
    );
    let mut mb = kept.ok_or("no mailbox")?;
    // Rows below compare the time of one operation with one plain read of the whole file.
    let vs_pass = |x: Stat| format!("{} x one plain read of the file", fig(x.wall / read.wall));

    // Registry: the second open of a mailbox finds the shared index.
    {
        let reg = Registry::new();
        let first = reg.open(&work, &opts, false)?;
        let again = timed(many, || {
            let s = reg.open(&work, &opts, false)?;
            check("registry shares the index", std::sync::Arc::ptr_eq(&s, &first))?;
            Ok(())
        })?;
        t.row(
            "Registry::open, already open elsewhere",
            again.wall * 1e6,
            "µs",
            again,
            format!("{} x Mailbox::open", fig(again.wall / open_t.wall)),
        );
    }

    // Expunge of the last message: the rewrite starts there.
    let mut shrink = Vec::new();
    let expunge_t = timed(runs, || {
        let last = mb.messages().last().ok_or("empty mailbox")?.uid;
        let len = mb.file_size();
        mb.expunge(&[last])?;
        check("expunge removed the message", mb.position(last).is_none())?;
        shrink.push((len - mb.file_size()) as f64);
        Ok(())
    })?;
    t.row(
        "expunge of the last message (fsync)",
        expunge_t.wall * 1e3,
        "ms",
        expunge_t,
        format!("{}; the file shrank {} B", vs_pass(expunge_t), count(median(&shrink) as u64)),
    );

    // A flag change written in place.
    let flag_t = timed(many, || {
        let i = rng.below(mb.len() as u64) as usize;
        let m = &mb.messages()[i];
        let flags = if m.flags.contains(Flags::FLAGGED) {
            m.flags.without(Flags::FLAGGED)
        } else {
            m.flags.union(Flags::FLAGGED)
        };
        let (kw, len) = (m.keywords, mb.file_size());
        mb.set_flags(i, flags, kw);
        mb.flush()?;
        check("flag change written in place", mb.file_size() == len && !mb.needs_sync())?;
        Ok(())
    })?;
    t.row("flag change + flush, in place (fsync)", flag_t.wall * 1e6, "µs", flag_t, vs_pass(flag_t));

    // Another program appends; refresh parses the new tail and writes its UID.
    let mut n = 0u64;
    let mut v = Vec::new();
    for _ in 0..many {
        n += 1;
        v.push(outside_append(&mut mb, &work, &mut rng, n)?);
    }
    let refresh_big = stat(&v);
    work_copy(&small.state, &work_small)?;
    let mut v = Vec::new();
    {
        let mut sm = Mailbox::open(&work_small, &opts, false)?;
        for _ in 0..many {
            n += 1;
            v.push(outside_append(&mut sm, &work_small, &mut rng, n)?);
        }
    }
    let refresh_small = stat(&v);
    t.row(
        "refresh after an outside 5 KiB append",
        refresh_big.wall * 1e6,
        "µs",
        refresh_big,
        format!(
            "{} x the same on a file 1/10 the size ({} µs; by CPU time {} x)",
            fig(refresh_big.wall / refresh_small.wall),
            fig(refresh_small.wall * 1e6),
            fig(refresh_big.cpu / refresh_small.cpu)
        ),
    );

    // Appends through the store, with and without fsync.
    let content = mboxgen::client_message(&mut rng, 1, 5 << 10);
    let append_sync = timed(many, || {
        mb.append(&content, Flags::SEEN, &[], None, "alice@example.org")?;
        Ok(())
    })?;
    drop(mb);
    let nosync = Options { fsync: false, ..Options::default() };
    let mut mb = Mailbox::open(&work, &nosync, false)?;
    let append_nosync = timed(many, || {
        mb.append(&content, Flags::SEEN, &[], None, "alice@example.org")?;
        Ok(())
    })?;
    t.row("Mailbox::append 5 KiB (fsync)", append_sync.wall * 1e6, "µs", append_sync, vs_pass(append_sync));
    t.row(
        "Mailbox::append 5 KiB (no fsync)",
        append_nosync.wall * 1e6,
        "µs",
        append_nosync,
        format!("{} x with fsync", fig(append_nosync.wall / append_sync.wall)),
    );

    // Fetch: every message as a client sees it, into a sink.
    let disk = mb.file_size();
    let mut wire = 0;
    let fetch_t = timed(runs, || {
        let mut sink = io::sink();
        wire = 0;
        for i in 0..mb.len() {
            wire += mb.write_message(i, &mut sink)?;
        }
        Ok(())
    })?;
    // Scaled to the size of the file read, for the comparison with plain read.
    let scale = size as f64 / disk as f64;
    let fetch_cmp = Stat { wall: fetch_t.wall * scale, cpu: fetch_t.cpu * scale };
    t.row(
        "fetch: write_message of all into a sink",
        disk as f64 / MB / fetch_t.wall,
        "MB/s",
        fetch_t,
        format!("{} ({} MB on the wire)", vs_read(read, fetch_cmp), fig(wire as f64 / MB)),
    );
    drop(mb);
    let _ = fs::remove_file(&work);

    // First open of a spool as the MTA left it: every message gets its UID
    // written, a rewrite of the whole file through the journal.
    let fresh_runs = if size >= 256 << 20 { runs.min(3) } else { runs };
    let mut v = Vec::new();
    for _ in 0..fresh_runs {
        work_copy(&fresh, &work_fresh)?;
        let c = Clock::start();
        let mb = Mailbox::open(&work_fresh, &opts, false)?;
        v.push(c.stop());
        check("fresh open indexes every message", mb.len() == big.sum.messages as usize)?;
        check("fresh open writes every UID", !mb.needs_sync() && mb.uidnext() == big.sum.messages + 1)?;
    }
    let fresh_t = stat(&v);
    let fresh_scale = size as f64 / big.sum.fresh_bytes as f64;
    t.row(
        "first open of a fresh spool (writes UIDs)",
        fresh_t.wall,
        "s",
        fresh_t,
        format!(
            "{} MB/s, {}",
            fig(big.sum.fresh_bytes as f64 / MB / fresh_t.wall),
            vs_read(read, Stat { wall: fresh_t.wall * fresh_scale, cpu: fresh_t.cpu * fresh_scale })
        ),
    );
    let _ = fs::remove_file(&work_fresh);

    let s = &big.sum;
    let pct = |k: u32| 100.0 * k as f64 / s.messages as f64;
    println!(
        "postroom store benchmark: {} MiB mbox, {} messages, average {} KiB (plain {:.0}%, alternative {:.0}%, attachment {:.0}%; {} From lines in bodies)",
        size >> 20,
        count(s.messages as u64),
        fig(size as f64 / s.messages as f64 / 1024.0),
        pct(s.kinds[0]),
        pct(s.kinds[1]),
        pct(s.kinds[2]),
        count(s.from_lines)
    );
    println!(
        "file in page cache; median of {runs} runs ({many} for small operations); MB = 10^6 bytes; {} CPUs, load average {load_before} before, {} after; measured in {:.0} s",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    println!();
    t.print();
    println!();
    println!(
        "summary: index build {} x plain read ({} by CPU time; goal >= 0.5: {}); open {} s for {} MiB; refresh after an append {} x its cost on a 10x smaller file; fetch {} x plain read",
        fig(scan_ratio),
        fig(read.cpu / scan_t.cpu),
        if scan_ratio >= 0.5 { "met" } else { "not met" },
        fig(open_t.wall),
        size >> 20,
        fig(refresh_big.wall / refresh_small.wall),
        fig(read.wall / fetch_cmp.wall)
    );
    Ok(())
}

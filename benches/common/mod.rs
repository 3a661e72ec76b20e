//! What the benchmarks share: settings from the environment, the run
//! directory, the descriptor limit, a thread pool for setup work, the
//! statistics and figures they print, the table that sets postroom
//! beside Dovecot, and the machine's load.
//!
//! Each bench includes it with `mod common;`; a bench uses only part of
//! it, so the include carries `#[allow(dead_code)]`, as for `mboxgen`.

pub mod conn;
pub mod mail;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

pub type Res<T> = Result<T, String>;

/// A whole number from the environment variable `name`, or `default`.
pub fn env_num(name: &str, default: u64) -> Res<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}: not a number: {v}")),
        Err(_) => Ok(default),
    }
}

/// Whether the environment variable `name` is `1`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// This run's directory, `root/run-PID`, so that two runs at once do not
/// share files. Dropping it removes it (it is declared before the servers,
/// so this happens after they have stopped), unless it is to be kept, and
/// then `root` if nothing else is left in it.
pub struct RunDir {
    pub dir: PathBuf,
    root: &'static str,
    /// "pop3": the start of its messages.
    bench: &'static str,
    keep: bool,
}

impl RunDir {
    /// Makes this run's directory; removes those of earlier runs whose
    /// process is gone (a run that was killed).
    pub fn create(root: &'static str, bench: &'static str, keep: bool) -> Res<RunDir> {
        let top = Path::new(root);
        if let Ok(rd) = fs::read_dir(top) {
            for e in rd.flatten() {
                let name = e.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("run-")).and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = top.join(format!("run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for d in [top, dir.as_path()] {
            fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(RunDir { dir, root, bench, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("{} bench: kept {}", self.bench, self.dir.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("{} bench: removing {}: {e}", self.bench, self.dir.display());
            }
        }
        // Only if empty: another run may be using it.
        let _ = fs::remove_dir(self.root);
    }
}

/// Raises this process's descriptor limit (the servers inherit it); fails
/// if the hard limit is below `want`. With `to_hard`, the soft limit goes
/// up to the hard one; without, only if it is below `want`, and then to
/// `want` but at least 65536 (within the hard limit).
pub fn raise_nofile(want: u64, to_hard: bool) -> Res<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if !to_hard && r.rlim_cur >= want {
        return Ok(r.rlim_cur);
    }
    if r.rlim_max < want {
        return Err(format!("the descriptor limit is {} (hard); the benchmark needs {want}", r.rlim_max));
    }
    r.rlim_cur = if to_hard { r.rlim_max } else { r.rlim_max.min(want.max(65536)) };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(r.rlim_cur)
}

/// Logins at once before an idle-memory baseline: more than postroomd's
/// password-checking threads (`auth-workers`, at most 4 by default), so
/// that each has done its first check, whose memory it keeps.
pub const WARM_LOGINS: usize = 8;

/// Runs `f(i)` for every `i` in `0..n` on `threads` threads; the first error wins.
pub fn parallel<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> Res<T> + Sync) -> Res<Vec<T>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    let first_err: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(n).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    return;
                }
                match f(i) {
                    Ok(v) => out.lock().unwrap()[i] = Some(v),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    out.into_inner().unwrap().into_iter().map(|v| v.ok_or_else(|| "a task did not run".to_string())).collect()
}

/// The median; NaN when there are no samples.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// A figure with three significant digits or so.
pub fn fig(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The one-minute load average, or "?".
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or("?".into())
}

/// One row of the table that sets postroom beside Dovecot.
pub struct Row {
    pub name: String,
    pub pr: String,
    pub dc: String,
    pub ratio: String,
    pub goal: String,
}

/// The rows of a benchmark that sets postroom beside Dovecot, each also
/// reported on standard error as it is added.
pub struct Table {
    /// "pop3": the start of its messages.
    bench: &'static str,
    rows: Vec<Row>,
}

impl Table {
    pub fn new(bench: &'static str) -> Table {
        Table { bench, rows: Vec::new() }
    }

    pub fn row(&mut self, name: String, pr: String, dc: String, ratio: String, goal: String) {
        eprintln!("{} bench: {name}: postroom {pr}, Dovecot {dc}, {ratio} {goal}", self.bench);
        self.rows.push(Row { name, pr, dc, ratio, goal });
    }

    pub fn print(&self) {
        let w = |f: fn(&Row) -> &str, head: &str| {
            self.rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0).max(head.chars().count())
        };
        let w0 = w(|r| &r.name, "row");
        let w1 = w(|r| &r.pr, "postroom");
        let w2 = w(|r| &r.dc, "Dovecot");
        let w3 = w(|r| &r.ratio, "ratio");
        println!("{:<w0$}  {:>w1$}  {:>w2$}  {:<w3$}  goal", "row", "postroom", "Dovecot", "ratio");
        for r in &self.rows {
            println!("{:<w0$}  {:>w1$}  {:>w2$}  {:<w3$}  {}", r.name, r.pr, r.dc, r.ratio, r.goal);
        }
    }
}

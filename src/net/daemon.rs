//! The long-running server, standalone or under systemd: obtain the
//! listening sockets, load TLS, give up root, accept, and handle signals.
//!
//! Signals are blocked in every thread and taken by the main thread with
//! sigwait(2), so that their handling is ordinary code:
//!
//! - SIGTERM, SIGINT: stop accepting, give running sessions a few seconds
//!   to end, exit 0.
//! - SIGHUP: read the config file and the TLS files again and use them for
//!   new sessions; running sessions keep what they started with. A config
//!   that does not load is logged and the old one is kept. A log file is
//!   reopened (for logrotate). `listen` and `user` changes need a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn, LevelFilter};

use crate::config::{Config, LogTarget};
use crate::logging;
use crate::net::listen::{self, Server};
use crate::net::{activation, privdrop, tls};
use crate::server::Context;

/// How long SIGTERM waits for sessions to end before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// sysexits(3): the config (or a file it names) is not usable.
const EX_CONFIG: i32 = 78;
/// sysexits(3): an operating system error (cannot bind, cannot switch user).
const EX_OSERR: i32 = 71;

/// Options from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-d`: log at debug level to standard error.
    pub debug: bool,
}

/// The log target and level that the config and `-d` give.
pub fn log_settings(config: &Config, debug: bool) -> (LogTarget, LevelFilter) {
    if debug {
        (LogTarget::Stderr, LevelFilter::Debug.max(config.log_level))
    } else {
        (config.log.clone(), config.log_level)
    }
}

/// Runs the server until SIGTERM or SIGINT; returns the exit status.
/// Before giving up root: directories the server will write in that do
/// not exist yet (a fresh set-up such as the sample config's) are created
/// and given to `user`. Existing directories, such as /var/mail with its
/// own owner and mode, are left exactly as they are.
fn prepare_dirs(config: &Config, user: &privdrop::SystemUser) {
    let mut dirs = vec![config.state_dir.clone()];
    for t in [&config.inbox, &config.mail_dir] {
        // The part of the template before the first per-user component.
        let fixed: std::path::PathBuf = std::path::Path::new(t.as_str())
            .components()
            .take_while(|c| !c.as_os_str().to_string_lossy().contains('%'))
            .collect();
        if fixed.as_os_str().len() < t.as_str().len() {
            dirs.push(fixed);
        }
    }
    for d in dirs {
        if d.as_os_str().is_empty() || d.exists() {
            continue;
        }
        match std::fs::create_dir_all(&d).and_then(|_| std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid))) {
            Ok(()) => info!("server created directory path={} owner={}", d.display(), user.name),
            Err(e) => warn!("server cannot create directory path={}: {e}", d.display()),
        }
    }
}

pub fn run(config: Config, opts: &Options) -> i32 {
    // Before any thread exists, so that every thread inherits the mask.
    let signals = match block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postroomd: cannot block signals: {e}");
            return EX_OSERR;
        }
    };
    let (target, level) = log_settings(&config, opts.debug);
    if let Err(e) = logging::init(&target, level, false) {
        eprintln!("postroomd: {e}");
        return EX_CONFIG;
    }
    let target_user = match privdrop::target(&config) {
        Ok(u) => u,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    // Read (or created) while still root: the key may be readable by root
    // alone. Before the ports are bound, so that a client that can connect
    // finds the certificate in place.
    let tls = match tls::load(&config, target_user.as_ref().map(|u| (u.uid, u.gid))) {
        Ok(t) => t,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    let listeners = match activation::listeners(&config) {
        Ok(Some(l)) => l,
        Ok(None) => match listen::bind(&config) {
            Ok(l) => l,
            Err(e) => return fail(EX_OSERR, &e),
        },
        Err(e) => return fail(EX_OSERR, &e),
    };
    if listeners.is_empty() {
        return fail(EX_CONFIG, "nothing to serve: no imap, imaps, pop3 or pop3s listener");
    }
    for l in &listeners {
        // The address as bound: with port 0 in the config, the port the
        // kernel chose (what tests and scripts read back).
        info!("server listening protocol={} address={} via={}", l.protocol, l.addr, l.via.name());
    }
    if let Some(user) = &target_user {
        prepare_dirs(&config, user);
        if let Err(e) = privdrop::switch_to(user) {
            return fail(EX_OSERR, &e);
        }
        info!("server switched to user={} uid={} gid={}", user.name, user.uid, user.gid);
    }
    if privdrop::is_root() {
        return fail(EX_CONFIG, privdrop::REFUSE_ROOT);
    }
    let path = config.path.clone();
    let ctx = Arc::new(Context::new(config, Some(tls)));
    let server = match Server::start(listeners, Arc::clone(&ctx)) {
        Ok(s) => s,
        Err(e) => return fail(EX_OSERR, &format!("cannot start: {e}")),
    };
    info!("server started pid={} config={}", std::process::id(), path.display());
    loop {
        match wait_signal(&signals) {
            libc::SIGHUP => reload(&path, &ctx, opts),
            libc::SIGTERM | libc::SIGINT => break,
            _ => {}
        }
    }
    info!("server stopping sessions={}", server.sessions());
    let left = server.shutdown(SHUTDOWN_GRACE);
    if left > 0 {
        info!("server stopped sessions-cut={left}");
    } else {
        info!("server stopped");
    }
    0
}

fn fail(code: i32, message: &str) -> i32 {
    error!("postroomd: {message}");
    // The log may be a file or syslog: say it where the admin who started
    // the server looks, too.
    if !logging::logs_to_stderr() {
        eprintln!("postroomd: {message}");
    }
    code
}

/// SIGHUP: a new config and TLS config for new sessions.
fn reload(path: &Path, ctx: &Context, opts: &Options) {
    info!("server reloading config={}", path.display());
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                error!("server reload: {e}");
            }
            error!("server reload failed: {} problem(s) in {}; keeping the old config", errors.len(), path.display());
            return;
        }
    };
    let tls = match tls::load(&new, None) {
        Ok(t) => t,
        Err(e) => {
            error!("server reload failed: {e}; keeping the old config");
            return;
        }
    };
    let old = ctx.config();
    if new.listen != old.listen {
        warn!("server reload: changed `listen` lines take effect at the next restart");
    }
    if new.user != old.user {
        warn!("server reload: a changed `user` takes effect at the next restart");
    }
    let (target, level) = log_settings(&new, opts.debug);
    if let Err(e) = logging::reconfigure(&target, level, false) {
        error!("server reload: {e}; logging stays as it was");
    }
    ctx.reload(new, Some(tls));
    info!("server reloaded config={}", path.display());
}

/// The signals that the main thread takes with sigwait.
pub struct Signals {
    set: libc::sigset_t,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it
/// starts from now on).
pub fn block_signals() -> std::io::Result<Signals> {
    // SAFETY: sigset operations on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(Signals { set })
    }
}

/// Waits for one of the blocked signals.
fn wait_signal(signals: &Signals) -> libc::c_int {
    let mut sig: libc::c_int = 0;
    // SAFETY: the set was filled by block_signals.
    let r = unsafe { libc::sigwait(&signals.set, &mut sig) };
    if r != 0 {
        // Cannot happen with a valid set; avoid spinning if it does.
        std::thread::sleep(Duration::from_millis(100));
        return 0;
    }
    sig
}

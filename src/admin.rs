//! `postroom mailbox`: look after a user's mailboxes from the shell.

use std::io::Write;
use std::path::PathBuf;

use crate::auth::passwd;
use crate::config::Config;
use crate::deliver::sysexits;
use crate::store::names::{self, MailRoot};
use crate::store::{journal, scan, Mailbox, Options, StoreError};

/// Store options from the config.
pub fn store_options(config: &Config) -> Options {
    Options {
        format: config.mbox_format,
        lock: config.lock.clone(),
        hostname: config.hostname.clone(),
        fsync: true,
        state_dir: Some(config.state_dir.clone()),
    }
}

/// The user's mail root: INBOX file and folder directory.
pub fn mail_root(config: &Config, user: &str) -> Result<MailRoot, String> {
    let account = passwd::lookup(&config.passwd_file, user)
        .map_err(|e| format!("reading {}: {e}", config.passwd_file.display()))?
        .ok_or_else(|| format!("no such user: {user}"))?;
    mail_root_for(config, &account)
}

/// The mail root of an account already looked up.
pub fn mail_root_for(config: &Config, account: &passwd::Account) -> Result<MailRoot, String> {
    let home = account.home.as_deref();
    let user = &account.name;
    let inbox = config.inbox.try_expand(user, home).ok_or("the inbox path needs a home directory")?;
    let dir = config.mail_dir.try_expand(user, home).ok_or("the mail-dir path needs a home directory")?;
    Ok(MailRoot::new(inbox, dir))
}

fn path_of(root: &MailRoot, name: &str) -> Result<PathBuf, StoreError> {
    if names::is_inbox(name) {
        Ok(root.inbox.clone())
    } else {
        root.resolve(name)
    }
}

/// Runs `status`, `list`, `check` or `repair`; returns the exit code.
pub fn mailbox(config: &Config, action: &str, user: &str, name: &str, out: &mut dyn Write) -> i32 {
    let root = match mail_root(config, user) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("postroom mailbox: {e}");
            return sysexits::NOUSER;
        }
    };
    let res = match action {
        "status" => status(config, &root, name, out),
        "list" => list(&root, out),
        "check" => check(config, &root, name, out),
        "repair" => repair(config, &root, name, out),
        _ => {
            eprintln!("postroom mailbox: unknown action {action}: status, list, check or repair");
            return sysexits::USAGE;
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postroom mailbox: {name}: {e}");
            if e.is_temporary() {
                sysexits::TEMPFAIL
            } else {
                1
            }
        }
    }
}

fn status(config: &Config, root: &MailRoot, name: &str, out: &mut dyn Write) -> Result<i32, StoreError> {
    let mb = Mailbox::open(&path_of(root, name)?, &store_options(config), false)?;
    let unseen = mb.messages().iter().filter(|m| !m.flags.contains(crate::store::Flags::SEEN)).count();
    let bytes: u64 = mb.messages().iter().map(|m| m.size).sum();
    let _ = writeln!(
        out,
        "mailbox {name}\npath {}\nmessages {}\nunseen {unseen}\nsize {bytes}\nuidvalidity {}\nuidnext {}",
        mb.path().display(),
        mb.len(),
        mb.uidvalidity(),
        mb.uidnext()
    );
    Ok(0)
}

fn list(root: &MailRoot, out: &mut dyn Write) -> Result<i32, StoreError> {
    for f in root.list()? {
        let mut attrs = Vec::new();
        if !f.selectable {
            attrs.push("noselect");
        }
        if f.has_children {
            attrs.push("children");
        }
        let _ = writeln!(out, "{}{}{}", f.name, if attrs.is_empty() { "" } else { "\t" }, attrs.join(","));
    }
    Ok(0)
}

/// What the state headers of a scanned file say, and what is wrong with
/// them: a base anywhere but in the first message (two states in one
/// file), pseudo-messages anywhere but first, X-UIDs out of order or at or
/// above UIDNEXT.
struct StateReport {
    problems: Vec<String>,
    /// The highest UIDVALIDITY and UIDNEXT seen anywhere (bases, X-UIDs),
    /// which a repair keeps.
    uidvalidity: u32,
    uidnext: u32,
    /// Something only a rewrite of the whole file puts right.
    conflict: bool,
}

fn inspect(all: &[scan::RawMessage]) -> StateReport {
    let mut r = StateReport { problems: Vec::new(), uidvalidity: 0, uidnext: 0, conflict: false };
    let Some(first) = all.first() else { return r };
    let base = first.base.clone();
    if let Some(b) = &base {
        r.uidvalidity = b.uidvalidity;
        r.uidnext = b.uidnext;
    }
    // The message right after a pseudo-message may carry the base of a
    // writer that did not see the pseudo-message: the same mailbox.
    for (k, m) in all.iter().enumerate().skip(1) {
        let Some(b) = &m.base else { continue };
        r.conflict = true;
        let what = if m.pseudo { "a second pseudo-message" } else { "a second base" };
        r.problems.push(format!(
            "{what} at byte {} says UIDVALIDITY {} UIDNEXT {}{}",
            m.from_off,
            b.uidvalidity,
            b.uidnext,
            match &base {
                Some(f) if f.uidvalidity != b.uidvalidity || f.uidnext != b.uidnext => {
                    format!(", the first message {} {}: two states in one file", f.uidvalidity, f.uidnext)
                }
                _ => String::new(),
            }
        ));
        if (k == 1 && first.pseudo) || m.pseudo {
            r.uidvalidity = r.uidvalidity.max(b.uidvalidity);
            r.uidnext = r.uidnext.max(b.uidnext);
        }
    }
    let strays = all.iter().skip(1).filter(|m| m.pseudo && m.base.is_none()).count();
    if strays > 0 {
        r.conflict = true;
        r.problems.push(format!("{strays} pseudo-messages without a base after the first message"));
    }
    let msgs: Vec<_> = all.iter().filter(|m| !m.pseudo).collect();
    // UIDs count towards UIDNEXT where a base allowed them: one past every
    // base is junk (forged, or copied from another folder).
    let limit = if r.uidnext == 0 { u32::MAX } else { r.uidnext };
    let highest_valid = msgs.iter().map(|m| m.uid).filter(|&u| u < limit).max().unwrap_or(0);
    let mut last = 0;
    let (mut disorder, mut beyond) = (0, 0);
    for m in msgs.iter().filter(|m| m.uid != 0) {
        if m.uid <= last {
            disorder += 1;
        }
        if base.as_ref().is_some_and(|b| m.uid >= b.uidnext) {
            beyond += 1;
        }
        last = m.uid.max(last);
    }
    if disorder > 0 {
        r.problems.push(format!("{disorder} X-UIDs out of order: those messages get new UIDs"));
    }
    if beyond > 0 {
        r.conflict = true;
        r.problems.push(format!("{beyond} X-UIDs at or above UIDNEXT {}", base.as_ref().map_or(0, |b| b.uidnext)));
    }
    r.uidnext = r.uidnext.max(highest_valid.saturating_add(1));
    r
}

/// Reads the mailbox without changing it and reports what a server would
/// have to fix. Exit 0 when nothing, 1 when something.
fn check(config: &Config, root: &MailRoot, name: &str, out: &mut dyn Write) -> Result<i32, StoreError> {
    let path = path_of(root, name)?;
    let file = std::fs::File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    let len = file.metadata().map_err(|e| StoreError::io("stat", e))?.len();
    let mut problems = Vec::new();
    if journal::journal_path(&path).exists() {
        problems.push("an interrupted rewrite left a journal: run repair".to_string());
    }
    let scanned = match scan::scan(&file, 0, len, config.mbox_format) {
        Ok(s) => s,
        Err(e) => {
            let hint = match e.to_string().as_str() {
                scan::NOT_FROM => ": repair keeps what comes before the first From_ line as a message of its own",
                scan::CR_ONLY => ": repair turns them into LF",
                _ => "",
            };
            let _ = writeln!(out, "{}: {e}{hint}", path.display());
            return Ok(1);
        }
    };
    let msgs: Vec<_> = scanned.messages.iter().filter(|m| !m.pseudo).collect();
    let has_base = scanned.messages.first().is_some_and(|m| m.base.is_some());
    if !msgs.is_empty() && !has_base {
        problems.push("no X-IMAPbase: the next open sets a UIDVALIDITY".into());
    }
    let without = msgs.iter().filter(|m| m.uid == 0).count();
    if without > 0 {
        problems.push(format!("{without} messages without X-UID (new mail): the next open gives them UIDs"));
    }
    problems.extend(inspect(&scanned.messages).problems);
    let _ = writeln!(out, "{}: {} messages, {len} bytes", path.display(), msgs.len());
    for p in &problems {
        let _ = writeln!(out, "{}: {p}", path.display());
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

/// Puts right what [`check`] reports, without losing a byte of any message:
/// an interrupted rewrite is recovered; bytes before the first From_ line
/// become a message of their own; CR line ends become LF; a file with
/// conflicting state is rewritten with one, keeping the highest
/// UIDVALIDITY and UIDNEXT it held; missing UIDs are written.
fn repair(config: &Config, root: &MailRoot, name: &str, out: &mut dyn Write) -> Result<i32, StoreError> {
    let path = path_of(root, name)?;
    let had_journal = journal::journal_path(&path).exists();
    let mut did = Vec::new();
    if had_journal {
        did.push("interrupted rewrite recovered".to_string());
    }
    did.extend(repair_framing(config, &path)?);
    let opts = store_options(config);
    let conflict = {
        let file = std::fs::File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| StoreError::io("stat", e))?.len();
        let scanned = scan::scan(&file, 0, len, config.mbox_format).map_err(|e| StoreError::io("scan", e))?;
        let r = inspect(&scanned.messages);
        r.conflict.then_some((r.uidvalidity, r.uidnext))
    };
    let mut mb = Mailbox::open(&path, &opts, false)?;
    if let Some((v, n)) = conflict {
        mb.repair_state(v, n);
        did.push(format!("one state written: UIDVALIDITY {} UIDNEXT {}", mb.uidvalidity(), mb.uidnext()));
    }
    mb.flush()?;
    let _ = writeln!(
        out,
        "{}: {} messages{}{}",
        path.display(),
        mb.len(),
        if did.is_empty() { "" } else { ", " },
        did.join(", ")
    );
    Ok(0)
}

/// The fixes that make a file an mbox at all, under the locks: a From_ line
/// before whatever precedes the first one, LF for CR line ends.
fn repair_framing(config: &Config, path: &std::path::Path) -> Result<Vec<String>, StoreError> {
    use std::os::unix::fs::FileExt;
    let io = |what: &'static str| move |e: std::io::Error| StoreError::io(format!("{what} {}", path.display()), e);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io("open"))?;
    let _lock = crate::store::lock::lock_write(&file, path, &config.lock)?;
    journal::recover(&file, path).map_err(io("recover"))?;
    let len = file.metadata().map_err(io("stat"))?.len();
    let err = match scan::scan(&file, 0, len, config.mbox_format) {
        Ok(_) => return Ok(Vec::new()),
        Err(e) => e.to_string(),
    };
    let mut did = Vec::new();
    let mut len = len;
    if err == scan::CR_ONLY {
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0).map_err(io("read"))?;
        if memchr::memchr(b'\n', &data).is_none() {
            for b in &mut data {
                if *b == b'\r' {
                    *b = b'\n';
                }
            }
            len = journal::rewrite_tail(&file, path, 0, len, &[journal::Piece::New(data)], true)
                .map_err(io("rewrite"))?;
            did.push("CR line ends turned into LF".to_string());
        }
    }
    let mut head = [0u8; 5];
    let n = file.read_at(&mut head, 0).map_err(io("read"))?;
    if n > 0 && !head[..n].starts_with(b"From ") {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let mut from = crate::store::from_line::format("MAILER-DAEMON", now).into_bytes();
        from.push(b'\n');
        journal::rewrite_tail(&file, path, 0, len, &[journal::Piece::New(from), journal::Piece::Old(0, len)], true)
            .map_err(io("rewrite"))?;
        did.push("what came before the first From_ line kept as a message".to_string());
    }
    Ok(did)
}

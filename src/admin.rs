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
            let _ = writeln!(out, "{}: {e}", path.display());
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
    let mut last = 0;
    let mut disorder = 0;
    for m in msgs.iter().filter(|m| m.uid != 0) {
        if m.uid <= last {
            disorder += 1;
        }
        last = m.uid.max(last);
    }
    if disorder > 0 {
        problems.push(format!("{disorder} X-UIDs out of order: those messages get new UIDs"));
    }
    let _ = writeln!(out, "{}: {} messages, {len} bytes", path.display(), msgs.len());
    for p in &problems {
        let _ = writeln!(out, "{}: {p}", path.display());
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

fn repair(config: &Config, root: &MailRoot, name: &str, out: &mut dyn Write) -> Result<i32, StoreError> {
    let path = path_of(root, name)?;
    let had_journal = journal::journal_path(&path).exists();
    // Opening recovers from the journal and writes missing UIDs.
    let mut mb = Mailbox::open(&path, &store_options(config), false)?;
    mb.flush()?;
    let _ = writeln!(
        out,
        "{}: {} messages{}",
        path.display(),
        mb.len(),
        if had_journal { ", interrupted rewrite recovered" } else { "" }
    );
    Ok(0)
}

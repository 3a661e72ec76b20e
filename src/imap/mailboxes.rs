//! Commands on mailboxes as a whole (RFC 3501 §6.3): SELECT, EXAMINE,
//! CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS,
//! APPEND; NAMESPACE (RFC 2342), ENABLE (RFC 5161), and the special-use
//! folders (RFC 6154) every user gets.
//!
//! The hierarchy separator is `/`; names travel in modified UTF-7 and are
//! UTF-8 on disk. Subscriptions are kept one name per line in
//! `.subscriptions` in the user's mail directory (a hidden name, so never
//! a mailbox).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, info, warn};

use super::command::{DateTime, Flag, StatusItem};
use super::messages::pop_guard;
use super::response::{self, ImapError};
use super::selected::Selected;
use super::session::{printable, Done, Session, State, User};
use crate::limits::{LIST_PATTERN_MAX_BYTES, LIST_PATTERN_MAX_WILDCARDS};
use crate::store::names::{self, MailRoot};
use crate::store::{Flags, Shared, StoreError};

/// Sent at most this many subscriptions (a bound on a file users can edit).
const MAX_SUBSCRIPTIONS: usize = 10_000;

/// A name that is valid IMAP syntax but not modified UTF-7 names no
/// mailbox: NO, as for any other name that can't exist (BAD is for syntax).
fn bad_name() -> ImapError {
    ImapError::No(Some("CANNOT"), "Invalid mailbox name: not modified UTF-7.".into())
}

/// A decoded mailbox name: UTF-8, INBOX spelled `INBOX`, no trailing `/`.
pub(super) fn decode_name(wire: &str) -> Result<String, ImapError> {
    let utf8 = names::mutf7_decode(wire).map_err(|_| bad_name())?;
    // Thunderbird sends names with a trailing separator.
    let trimmed = utf8.strip_suffix('/').unwrap_or(&utf8);
    if names::is_inbox(trimmed) {
        return Ok("INBOX".into());
    }
    Ok(trimmed.to_string())
}

impl User {
    /// The file of mailbox `name` (decoded).
    pub(super) fn path_of(&self, name: &str) -> Result<PathBuf, ImapError> {
        if names::is_inbox(name) {
            return Ok(self.root.inbox.clone());
        }
        if name.is_empty() {
            return Err(ImapError::No(Some("NONEXISTENT"), "Mailbox doesn't exist.".into()));
        }
        Ok(self.root.resolve(name)?)
    }

    fn subscriptions_path(&self) -> PathBuf {
        self.root.dir.join(".subscriptions")
    }

    pub(super) fn subscriptions(&self) -> Vec<String> {
        match std::fs::read_to_string(self.subscriptions_path()) {
            Ok(text) => text
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .take(MAX_SUBSCRIPTIONS)
                .map(String::from)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Changes the subscription list: read, change, write whole to a
    /// temporary file renamed over the old one. Sessions of this process
    /// take turns, so that two first logins of one user lose nothing.
    pub(super) fn update_subscriptions(&self, change: impl FnOnce(&mut Vec<String>)) -> Result<(), ImapError> {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.subscriptions();
        let mut subs = old.clone();
        change(&mut subs);
        if subs == old {
            return Ok(());
        }
        self.save_subscriptions(&subs)
    }

    fn save_subscriptions(&self, subs: &[String]) -> Result<(), ImapError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.subscriptions_path();
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.root.dir.join(format!(".subscriptions.tmp.{}.{n}", std::process::id()));
        let mut text = String::new();
        for s in subs {
            text.push_str(s);
            text.push('\n');
        }
        let res = std::fs::create_dir_all(&self.root.dir)
            .and_then(|_| std::fs::write(&tmp, text.as_bytes()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map_err(|e| ImapError::Store(StoreError::io(format!("writing {}", path.display()), e)))
    }
}

/// A wildcard of a LIST pattern (RFC 3501 §6.3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wild {
    /// `*`: anything, the separator included.
    Any,
    /// `%`: anything but the separator (one level of the hierarchy).
    Level,
}

/// A LIST or LSUB pattern, prepared once for all the names it is
/// matched against: the literal text before the first wildcard, then
/// each wildcard with the literal text after it (and that text's KMP
/// failure table).
///
/// Matching goes a segment at a time over the set of places in the name
/// where the pattern so far can end: a wildcard widens the set in one
/// pass, and the text after it is found by one KMP pass over the name.
/// The work is the name's length times the number of wildcards (bounded
/// by `limits::LIST_PATTERN_MAX_WILDCARDS`), whatever the pattern: no
/// backtracking, no table of pattern length times name length.
#[derive(Debug)]
pub(super) struct Pattern {
    first: Vec<u8>,
    rest: Vec<(Wild, Vec<u8>, Vec<usize>)>,
}

impl Pattern {
    pub(super) fn new(pattern: &[u8]) -> Pattern {
        let mut parts = pattern.split(|&c| c == b'*' || c == b'%');
        let first = parts.next().unwrap_or_default().to_vec();
        let wilds = pattern.iter().filter_map(|&c| match c {
            b'*' => Some(Wild::Any),
            b'%' => Some(Wild::Level),
            _ => None,
        });
        let rest = wilds.zip(parts).map(|(w, lit)| (w, lit.to_vec(), failure(lit))).collect();
        Pattern { first, rest }
    }

    /// Does `name` match the whole pattern?
    pub(super) fn matches(&self, name: &[u8]) -> bool {
        if !name.starts_with(&self.first) {
            return false;
        }
        if self.rest.is_empty() {
            return name.len() == self.first.len();
        }
        let n = name.len();
        // at[j]: the pattern so far can match name[..j].
        let mut at = vec![false; n + 1];
        let mut reach = vec![false; n + 1];
        at[self.first.len()] = true;
        for (wild, lit, fail) in &self.rest {
            // Where the wildcard can end.
            match wild {
                Wild::Any => {
                    let Some(s) = at.iter().position(|&b| b) else { return false };
                    reach[..s].fill(false);
                    reach[s..].fill(true);
                }
                Wild::Level => {
                    let mut open = false;
                    for j in 0..=n {
                        open |= at[j];
                        reach[j] = open;
                        if j < n && name[j] == b'/' {
                            open = false;
                        }
                    }
                }
            }
            // Where the text after it can end: at each of its
            // occurrences that starts where the wildcard can end.
            if lit.is_empty() {
                std::mem::swap(&mut at, &mut reach);
                continue;
            }
            at.fill(false);
            let mut k = 0;
            for (j, &c) in name.iter().enumerate() {
                while k > 0 && lit[k] != c {
                    k = fail[k - 1];
                }
                if lit[k] == c {
                    k += 1;
                }
                if k == lit.len() {
                    if reach[j + 1 - k] {
                        at[j + 1] = true;
                    }
                    k = fail[k - 1];
                }
            }
        }
        at[n]
    }
}

/// The KMP failure table of `lit`: for each prefix, the length of its
/// longest proper prefix that is also its suffix.
fn failure(lit: &[u8]) -> Vec<usize> {
    let mut f = vec![0; lit.len()];
    let mut k = 0;
    for i in 1..lit.len() {
        while k > 0 && lit[i] != lit[k] {
            k = f[k - 1];
        }
        if lit[i] == lit[k] {
            k += 1;
        }
        f[i] = k;
    }
    f
}

/// Does `name` match the LIST pattern `pattern`? (For one name; a
/// pattern matched against many is prepared once with [`Pattern::new`].)
#[cfg(test)]
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    Pattern::new(pattern).matches(name)
}

impl Session<'_> {
    /// Creates the configured special-use folders that are missing, and
    /// subscribes them (Outlook expects Sent, Drafts and Trash to exist).
    pub(super) fn prepare_special_use(&mut self, user: &User) {
        if self.config.special_use.is_empty() {
            return;
        }
        let mut created = Vec::new();
        for su in &self.config.special_use {
            let Ok(path) = user.root.resolve(&su.folder) else { continue };
            if !path.exists() {
                match user.root.create(&su.folder) {
                    Ok(()) => {
                        info!("{} imap special-use-created user={} folder={}", self.sid, user.account.name, su.folder)
                    }
                    // Another session of the same user made it meanwhile.
                    Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => {
                        warn!("{} imap special-use-failed folder={} {e}", self.sid, su.folder);
                        continue;
                    }
                }
                created.push(su.folder.clone());
            }
        }
        if !created.is_empty() {
            let res = user.update_subscriptions(|subs| {
                for f in created {
                    if !subs.contains(&f) {
                        subs.push(f);
                    }
                }
            });
            if let Err(e) = res {
                warn!("{} imap subscriptions-failed {e}", self.sid);
            }
        }
    }

    fn special_use_of(&self, name: &str) -> Option<&str> {
        self.config.special_use.iter().find(|s| s.folder == name).map(|s| s.attribute.as_str())
    }

    pub(super) fn cmd_select(&mut self, wire: &str, read_only: bool) -> Done {
        // Whatever happens next, the old mailbox is closed (RFC 3501 §6.3.1).
        self.close_mailbox();
        let name = decode_name(wire)?;
        let user = self.user();
        let path = user.path_of(&name)?;
        let is_inbox = name == "INBOX";
        if path.is_dir() {
            return Err(ImapError::No(Some("CANNOT"), "Mailbox isn't selectable.".into()));
        }
        let shared = self.ctx.registry.open(&path, &self.ctx.store_options(), is_inbox)?;
        let sel = Selected::open(name.clone(), shared, read_only, is_inbox, &mut self.conn)?;
        if is_inbox
            && !read_only
            && crate::store::lock::SessionLock::may_be_held(&self.user().root.inbox, &self.config.state_dir)
        {
            // Tell the user why deletions will wait (RFC 3501 §7.1 ALERT).
            // Looked at under the write lock, as IMAP expunges take the
            // POP3 lock, so that this look never gets in their way.
            let pop_holds_it = {
                let _w = sel.shared.write();
                let probe =
                    crate::store::lock::SessionLock::try_acquire(&self.user().root.inbox, &self.config.state_dir);
                matches!(probe, Err(StoreError::InUse(_)))
            };
            if pop_holds_it {
                write!(
                    self.conn,
                    "* OK [ALERT] A POP3 session is reading this mailbox; deleted messages stay until it ends.\r\n"
                )?;
            }
        }
        let state = std::mem::replace(&mut self.state, State::NotAuthenticated);
        let State::Authenticated(user) = state else { unreachable!("closed above") };
        debug!("{} imap select mailbox={} messages={}", self.sid, printable(&name), sel.exists());
        self.enter(State::Selected(user, Box::new(sel)));
        Ok(if read_only { "[READ-ONLY] Examine completed.".into() } else { "[READ-WRITE] Select completed.".into() })
    }

    pub(super) fn cmd_create(&mut self, wire: &str) -> Done {
        let utf8 = names::mutf7_decode(wire).map_err(|_| bad_name())?;
        if names::is_inbox(utf8.trim_end_matches('/')) {
            return Err(ImapError::No(Some("ALREADYEXISTS"), "Mailbox already exists.".into()));
        }
        self.user().root.create(&utf8)?;
        Ok("Create completed.".into())
    }

    pub(super) fn cmd_delete(&mut self, wire: &str) -> Done {
        let name = decode_name(wire)?;
        if name == "INBOX" {
            return Err(ImapError::No(Some("CANNOT"), "INBOX can't be deleted.".into()));
        }
        let path = self.user().path_of(&name)?;
        if let State::Selected(_, sel) = &self.state {
            if std::fs::canonicalize(&path).ok() == Some(sel.shared.path()) {
                self.close_mailbox();
            }
        }
        let canonical = std::fs::canonicalize(&path).ok();
        self.user().root.delete(&name)?;
        if let Some(c) = canonical {
            self.ctx.registry.forget(&c);
            // A mailbox made again under this name is another mailbox, even
            // if its file gets the same inode.
            let _ = crate::store::record::remove(&crate::store::record::path_of(&self.config.state_dir, &c));
        }
        Ok("Delete completed.".into())
    }

    pub(super) fn cmd_rename(&mut self, from: &str, to: &str) -> Done {
        let (from, to) = (decode_name(from)?, decode_name(to)?);
        if to == "INBOX" {
            return Err(ImapError::No(Some("ALREADYEXISTS"), "INBOX already exists.".into()));
        }
        if from == "INBOX" {
            self.rename_inbox(&to)?;
            return Ok("Rename completed.".into());
        }
        let canonical = std::fs::canonicalize(self.user().path_of(&from)?).ok();
        self.user().root.rename(&from, &to)?;
        if let (Some(c), Ok(n)) = (canonical, std::fs::canonicalize(self.user().path_of(&to)?)) {
            self.ctx.registry.renamed(&c, &n);
        }
        // Subscriptions follow the mailbox and what is below it.
        let prefix = format!("{from}/");
        self.user().update_subscriptions(|subs| {
            for s in subs.iter_mut() {
                if *s == from {
                    *s = to.clone();
                } else if let Some(rest) = s.strip_prefix(&prefix) {
                    *s = format!("{to}/{rest}");
                }
            }
        })?;
        Ok("Rename completed.".into())
    }

    /// RENAME INBOX (RFC 3501 §6.3.5): every message moves to the new
    /// mailbox, INBOX stays, empty, with its UIDVALIDITY.
    fn rename_inbox(&mut self, to: &str) -> Result<(), ImapError> {
        let user = self.user();
        // Moving the messages out is an expunge of INBOX: refused while a
        // POP3 session holds the maildrop, checked before anything is
        // made and again, held, for the expunge (as MOVE does).
        let state_dir = self.config.state_dir.clone();
        drop(pop_guard(Some(&user.root.inbox), &state_dir)?);
        user.root.create(to)?;
        let dst = self.ctx.registry.open(&user.root.resolve(to)?, &self.ctx.store_options(), false)?;
        let src = match self.ctx.registry.open(&user.root.inbox, &self.ctx.store_options(), false) {
            Ok(s) => s,
            Err(StoreError::NoSuchMailbox(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let uids: Vec<u32> = src.read().messages().iter().map(|m| m.uid).collect();
        let pairs = super::messages::copy_uids(&src, &uids, &dst)?;
        let mut mb = src.write();
        match pop_guard(Some(&user.root.inbox), &state_dir) {
            Ok(_guard) => {
                let events = mb.expunge(&uids)?;
                mb.publish(&events);
                Ok(())
            }
            Err(e) => {
                // A POP3 session began during the copy: take the copies
                // back rather than leave the messages twice (the new
                // mailbox stays, empty).
                drop(mb);
                super::messages::take_back(&dst, &pairs)?;
                Err(e)
            }
        }
    }

    pub(super) fn cmd_subscribe(&mut self, wire: &str, subscribe: bool) -> Done {
        let name = decode_name(wire)?;
        let user = self.user();
        if name != "INBOX" {
            // Refuse names that could never be mailboxes.
            user.root.resolve(&name)?;
        }
        user.update_subscriptions(|subs| {
            let had = subs.contains(&name);
            if subscribe && !had {
                subs.push(name);
            } else if !subscribe && had {
                subs.retain(|s| *s != name);
            }
        })?;
        Ok(if subscribe { "Subscribe completed.".into() } else { "Unsubscribe completed.".into() })
    }

    /// LIST (RFC 3501 §6.3.8), with the RFC 5258 forms clients use for
    /// RFC 6154: `LIST (SPECIAL-USE) "" "*"` and `RETURN (SPECIAL-USE)`,
    /// and SUBSCRIBED selection / return options.
    pub(super) fn cmd_list(
        &mut self,
        selection: &[String],
        reference: &str,
        patterns: &[String],
        returns: &[String],
    ) -> Done {
        let has = |v: &[String], o: &str| v.iter().any(|s| s.eq_ignore_ascii_case(o));
        let only_subscribed = has(selection, "SUBSCRIBED");
        let only_special = has(selection, "SPECIAL-USE");
        let show_subscribed = only_subscribed || has(returns, "SUBSCRIBED");
        if patterns.len() == 1 && patterns[0].is_empty() {
            // RFC 3501: the delimiter and the root of the reference.
            write!(self.conn, "* LIST (\\Noselect) \"/\" \"\"\r\n")?;
            return Ok("List completed.".into());
        }
        let user = self.user();
        let mut folders = user.root.list()?;
        let subs = if show_subscribed || only_subscribed { user.subscriptions() } else { Vec::new() };
        if only_subscribed {
            // Subscribed names that no longer exist are listed \NonExistent.
            for s in &subs {
                if !folders.iter().any(|f| f.name == *s) {
                    folders.push(names::Folder { name: s.clone(), selectable: false, has_children: false });
                }
            }
        }
        let wire_patterns: Vec<Vec<u8>> =
            patterns.iter().map(|p| full_pattern(reference, p)).collect::<Result<_, _>>()?;
        let compiled: Vec<(Pattern, Pattern)> =
            wire_patterns.iter().map(|p| (Pattern::new(p), Pattern::new(&p.to_ascii_uppercase()))).collect();
        let mut out = Vec::new();
        for f in &folders {
            let wire = names::mutf7_encode(&f.name);
            if !compiled.iter().any(|(p, upper)| p.matches(wire.as_bytes()) || inbox_match(upper, &f.name)) {
                continue;
            }
            let subscribed = subs.contains(&f.name);
            if only_subscribed && !subscribed {
                continue;
            }
            let special = self.special_use_of(&f.name);
            if only_special && special.is_none() {
                continue;
            }
            let mut attrs: Vec<&str> = Vec::new();
            let exists = f.name == "INBOX" || folders_exist(&user.root, f);
            if !exists {
                attrs.push("\\NonExistent");
            } else if !f.selectable {
                attrs.push("\\Noselect");
            }
            attrs.push(if f.has_children { "\\HasChildren" } else { "\\HasNoChildren" });
            if let Some(s) = special {
                attrs.push(s);
            }
            if show_subscribed && subscribed {
                attrs.push("\\Subscribed");
            }
            out.extend_from_slice(format!("* LIST ({}) \"/\" ", attrs.join(" ")).as_bytes());
            response::astring(&mut out, wire.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.conn.write_all(&out)?;
        Ok("List completed.".into())
    }

    pub(super) fn cmd_lsub(&mut self, reference: &str, pattern: &str) -> Done {
        if pattern.is_empty() {
            write!(self.conn, "* LSUB (\\Noselect) \"/\" \"\"\r\n")?;
            return Ok("Lsub completed.".into());
        }
        let user = self.user();
        let wire_pattern = full_pattern(reference, pattern)?;
        let p = Pattern::new(&wire_pattern);
        let upper = Pattern::new(&wire_pattern.to_ascii_uppercase());
        let subs = user.subscriptions();
        let mut out = Vec::new();
        let mut parents: Vec<String> = Vec::new();
        for s in &subs {
            let wire = names::mutf7_encode(s);
            if !(p.matches(wire.as_bytes()) || inbox_match(&upper, s)) {
                // RFC 3501 §6.3.9: with `%`, a parent that is not subscribed
                // itself is listed \Noselect when a child below it is.
                let mut prefix = String::new();
                for part in s.split('/') {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(part);
                    if prefix.len() < s.len()
                        && !subs.contains(&prefix)
                        && !parents.contains(&prefix)
                        && p.matches(names::mutf7_encode(&prefix).as_bytes())
                    {
                        parents.push(prefix.clone());
                    }
                }
                continue;
            }
            let selectable = s == "INBOX" || user.root.resolve(s).is_ok_and(|p| p.is_file());
            out.extend_from_slice(if selectable { b"* LSUB () \"/\" " } else { b"* LSUB (\\Noselect) \"/\" " });
            response::astring(&mut out, wire.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for parent in parents {
            out.extend_from_slice(b"* LSUB (\\Noselect) \"/\" ");
            response::astring(&mut out, names::mutf7_encode(&parent).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.conn.write_all(&out)?;
        Ok("Lsub completed.".into())
    }

    pub(super) fn cmd_status(&mut self, wire: &str, items: &[StatusItem]) -> Done {
        let name = decode_name(wire)?;
        let path = self.user().path_of(&name)?;
        let shared = self.open_existing(&path, name == "INBOX")?;
        let mb = shared.read();
        let mut parts = Vec::new();
        for item in items {
            parts.push(match item {
                StatusItem::Messages => format!("MESSAGES {}", mb.len()),
                StatusItem::Recent => {
                    format!("RECENT {}", mb.messages().iter().filter(|m| m.flags.contains(Flags::RECENT)).count())
                }
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uidnext()),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity()),
                StatusItem::Unseen => {
                    format!("UNSEEN {}", mb.messages().iter().filter(|m| !m.flags.contains(Flags::SEEN)).count())
                }
            });
        }
        drop(mb);
        let mut out = b"* STATUS ".to_vec();
        response::astring(&mut out, names::mutf7_encode(&name).as_bytes());
        out.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.conn.write_all(&out)?;
        Ok("Status completed.".into())
    }

    /// An existing mailbox, shared. INBOX always exists (an empty one is
    /// made when the MTA has not written it yet).
    pub(super) fn open_existing(&self, path: &Path, is_inbox: bool) -> Result<Arc<Shared>, ImapError> {
        if path.is_dir() {
            return Err(ImapError::No(Some("CANNOT"), "Mailbox isn't selectable.".into()));
        }
        Ok(self.ctx.registry.open(path, &self.ctx.store_options(), is_inbox)?)
    }

    /// The destination of APPEND, COPY and MOVE: a missing one is
    /// `NO [TRYCREATE]` (RFC 3501 §6.3.11).
    pub(super) fn open_target(&self, wire: &str) -> Result<Arc<Shared>, ImapError> {
        let name = decode_name(wire)?;
        let path = self.user().path_of(&name)?;
        match self.open_existing(&path, name == "INBOX") {
            Err(ImapError::Store(StoreError::NoSuchMailbox(_))) => {
                Err(ImapError::No(Some("TRYCREATE"), "Mailbox doesn't exist.".into()))
            }
            other => other,
        }
    }

    pub(super) fn cmd_append(&mut self, wire: &str, flags: &[Flag], date: Option<DateTime>, message: &[u8]) -> Done {
        if message.is_empty() {
            return Err(ImapError::no("Can't save a zero byte message."));
        }
        if message.len() as u64 > self.config.max_message_size {
            return Err(ImapError::No(Some("TOOBIG"), "Message too large.".into()));
        }
        let target = self.open_target(wire)?;
        let (mut f, keywords) = split_flags(flags);
        // A new message is recent (RFC 3501 §2.3.2).
        f.insert(Flags::RECENT);
        let kws: Vec<&str> = keywords.iter().map(String::as_str).collect();
        let (uid, uidvalidity) = {
            let mut mb = target.write();
            let (uid, events) = mb.append(message, f, &kws, date.map(|d| d.epoch), "MAILER-DAEMON")?;
            mb.publish(&events);
            (uid, mb.uidvalidity())
        };
        self.stats.appended += 1;
        Ok(format!("[APPENDUID {uidvalidity} {uid}] Append completed."))
    }

    pub(super) fn cmd_namespace(&mut self) -> Done {
        // One personal namespace with an empty prefix: iOS Mail and others
        // take anything else as a place to put folders under.
        write!(self.conn, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n")?;
        Ok("Namespace completed.".into())
    }

    pub(super) fn cmd_enable(&mut self, caps: &[String]) -> Done {
        // Nothing here needs enabling (no CONDSTORE, QRESYNC, UTF8=ACCEPT):
        // RFC 5161 §3.2 answers with the empty list.
        debug!("{} imap enable asked={}", self.sid, printable(&caps.join(" ")));
        write!(self.conn, "* ENABLED\r\n")?;
        Ok("Enabled.".into())
    }
}

/// Reference and pattern joined as they are (RFC 3501 §6.3.8; its
/// examples end references with the separator). Joining without adding
/// one is what other servers do and what clients expect: curl lists
/// `imap://host/INBOX` as `LIST "INBOX" *` and wants INBOX back. A
/// pattern that starts at the root (`/`) ignores the reference.
///
/// Bounded ([`LIST_PATTERN_MAX_BYTES`], [`LIST_PATTERN_MAX_WILDCARDS`]):
/// beyond them the answer is `NO [LIMIT]`. Not BAD: the pattern is
/// well-formed, and RFC 3501 §6.3.8 (RFC 9051 §6.3.9) keeps BAD for
/// invalid arguments and gives NO for a reference or name that can't be
/// listed; RFC 5530's LIMIT names an implementation limit.
fn full_pattern(reference: &str, pattern: &str) -> Result<Vec<u8>, ImapError> {
    let too_long = reference.len().saturating_add(pattern.len()) > LIST_PATTERN_MAX_BYTES;
    if too_long {
        return Err(ImapError::No(Some("LIMIT"), "Mailbox pattern too long.".into()));
    }
    let wildcards = reference.bytes().chain(pattern.bytes()).filter(|&c| c == b'*' || c == b'%').count();
    if wildcards > LIST_PATTERN_MAX_WILDCARDS {
        return Err(ImapError::No(Some("LIMIT"), "Too many wildcards in the mailbox pattern.".into()));
    }
    let mut p = String::new();
    if !pattern.starts_with('/') {
        p.push_str(reference);
    }
    p.push_str(pattern);
    // Thunderbird's trailing separator: "Folder/" lists "Folder".
    if p.len() > 1 && p.ends_with('/') {
        p.pop();
    }
    Ok(p.into_bytes())
}

/// INBOX matches case-insensitively (RFC 3501 §5.1): `upper` is the
/// pattern in upper case.
fn inbox_match(upper: &Pattern, name: &str) -> bool {
    name == "INBOX" && upper.matches(b"INBOX")
}

fn folders_exist(root: &MailRoot, f: &names::Folder) -> bool {
    root.resolve(&f.name).is_ok_and(|p| p.exists())
}

/// System flags and keywords of a STORE or APPEND. `\Recent` and unknown
/// system flags cannot be set (RFC 3501 §2.3.2) and are ignored.
pub(super) fn split_flags(flags: &[Flag]) -> (Flags, Vec<String>) {
    let mut f = Flags::default();
    let mut kws = Vec::new();
    for flag in flags {
        match flag {
            Flag::Seen => f.insert(Flags::SEEN),
            Flag::Answered => f.insert(Flags::ANSWERED),
            Flag::Flagged => f.insert(Flags::FLAGGED),
            Flag::Deleted => f.insert(Flags::DELETED),
            Flag::Draft => f.insert(Flags::DRAFT),
            Flag::Recent | Flag::Extension(_) => {}
            Flag::Keyword(k) => {
                if !kws.iter().any(|x: &String| x.eq_ignore_ascii_case(k)) {
                    kws.push(k.clone());
                }
            }
        }
    }
    (f, kws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        for (p, n, want) in [
            ("*", "a/b/c", true),
            ("%", "a", true),
            ("%", "a/b", false),
            ("a/%", "a/b", true),
            ("a/%", "a/b/c", false),
            ("a/*", "a/b/c", true),
            ("*/c", "a/b/c", true),
            ("%/c", "a/b/c", false),
            ("%/%/c", "a/b/c", true),
            ("S%", "Sent", true),
            ("S%t", "Sent", true),
            ("S%x", "Sent", false),
            ("*t", "Sent", true),
            ("", "Sent", false),
            ("Sent", "Sent", true),
            ("sent", "Sent", false),
            ("%*%", "x/y", true),
            ("a%b", "ab", true),
            ("a%b", "a/b", false),
            ("a*b", "a/b", true),
            ("**", "", true),
            ("%", "", true),
            ("*%*", "a/", true),
            ("a*a*a", "aa", false),
            ("a*a*a", "aaa", true),
            ("*ab*ab", "abab", true),
            ("*aab", "aaab", true),
            ("*aba", "ababa", true),
            ("%/", "a/", true),
            ("%/%", "/", true),
            ("%a", "b/a", false),
            ("*/%", "a/b/c", true),
            ("%/*", "a", false),
            ("a%%b", "axyb", true),
            ("INBOX*", "INBOX/x", true),
        ] {
            assert_eq!(matches(p.as_bytes(), n.as_bytes()), want, "{p} vs {n}");
        }
    }

    /// The table of pattern position by name position that matching
    /// used to fill: slow for long patterns, but plainly right.
    fn by_table(pattern: &[u8], name: &[u8]) -> bool {
        let nl = name.len();
        let mut prev = vec![false; nl + 1];
        prev[0] = true;
        let mut cur = vec![false; nl + 1];
        for &c in pattern {
            cur[0] = prev[0] && (c == b'*' || c == b'%');
            for j in 1..=nl {
                cur[j] = match c {
                    b'*' => cur[j - 1] || prev[j],
                    b'%' => prev[j] || (cur[j - 1] && name[j - 1] != b'/'),
                    _ => prev[j - 1] && c == name[j - 1],
                };
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        prev[nl]
    }

    /// Every pattern of up to 5 symbols from `a b / * %` against every
    /// name of up to 5 symbols from `a b /`.
    #[test]
    fn list_patterns_agree_with_the_table() {
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max {
                last = last.iter().flat_map(|w| alphabet.iter().map(move |&c| [w.clone(), vec![c]].concat())).collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let names = all(b"ab/", 5);
        for p in all(b"ab/*%", 5) {
            let compiled = Pattern::new(&p);
            for n in &names {
                assert_eq!(compiled.matches(n), by_table(&p, n), "{:?} vs {:?}", p, n);
            }
        }
    }

    /// The worst the bounds allow: 64 wildcards between letters, against
    /// long names of many levels. Answered right, and in linear work (a
    /// matcher that backtracks would not finish).
    #[test]
    fn many_wildcards_against_long_names() {
        let half = LIST_PATTERN_MAX_WILDCARDS / 2;
        let long = "a".repeat(1000);
        let deep = vec!["a".repeat(30); 32].join("/");
        for (p, n, want) in [
            ("*a".repeat(half) + "b", long.clone(), false),
            ("*a".repeat(half) + "*", long.clone(), true),
            ("%a".repeat(half), long.clone(), true),
            ("%a".repeat(half) + "/", long.clone(), false),
            ("*a".repeat(half) + "/%", deep.clone(), true),
            ("%a".repeat(half) + "/*", deep.clone(), false),
            ("%/".repeat(31) + "%", deep.clone(), true),
            ("%/".repeat(32) + "%", deep.clone(), false),
            ("*/".repeat(31) + "*", deep.clone(), true),
            ("*/".repeat(32) + "*", deep.clone(), false),
        ] {
            assert_eq!(matches(p.as_bytes(), n.as_bytes()), want, "{p} vs {}...", &n[..40]);
            if p.len() * n.len() < 1 << 22 {
                assert_eq!(by_table(p.as_bytes(), n.as_bytes()), want, "{p} by the table");
            }
        }
    }

    #[test]
    fn names_and_references() {
        assert_eq!(decode_name("inbox").unwrap(), "INBOX");
        assert_eq!(decode_name("Sent/").unwrap(), "Sent");
        assert_eq!(decode_name("Entw&APw-rfe").unwrap(), "Entwürfe");
        assert!(decode_name("bad&Jjo").is_err());
        assert_eq!(full_pattern("a", "%").unwrap(), b"a%");
        assert_eq!(full_pattern("INBOX", "*").unwrap(), b"INBOX*");
        assert_eq!(full_pattern("a/", "%").unwrap(), b"a/%");
        assert_eq!(full_pattern("", "Folder/").unwrap(), b"Folder");
        let upper = |p: &str| Pattern::new(p.to_ascii_uppercase().as_bytes());
        assert!(inbox_match(&upper("inbox"), "INBOX"));
        assert!(inbox_match(&upper("%"), "INBOX"));
        assert!(!inbox_match(&upper("Sent"), "INBOX"));
        let long = "a".repeat(LIST_PATTERN_MAX_BYTES + 1);
        assert!(matches!(full_pattern("", &long), Err(ImapError::No(Some("LIMIT"), _))));
        assert!(matches!(full_pattern(&long[..10], &long[10..]), Err(ImapError::No(Some("LIMIT"), _))));
        assert!(full_pattern("", &long[1..]).is_ok());
        let stars = "*%".repeat(LIST_PATTERN_MAX_WILDCARDS / 2);
        assert!(full_pattern("", &stars).is_ok());
        assert!(matches!(full_pattern("%", &stars), Err(ImapError::No(Some("LIMIT"), t)) if t.contains("wildcards")));
    }
}

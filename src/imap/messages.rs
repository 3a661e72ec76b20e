//! Commands on the messages of the selected mailbox (RFC 3501 §6.4):
//! CHECK, CLOSE, UNSELECT (RFC 3691), EXPUNGE and UID EXPUNGE (RFC 4315),
//! SEARCH, STORE, COPY and MOVE (RFC 6851), with COPYUID (RFC 4315).
//! FETCH is in `fetch.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::command::{Flag, SearchKey, SequenceSet, StoreMode};
use super::mailboxes::split_flags;
use super::response::ImapError;
use super::search::{self, Bounds, Candidate, Content};
use super::session::{Done, Session};
use crate::store::lock::SessionLock;
use crate::store::{Event, Flags, Mailbox, Shared, StoreError};

/// SEARCH and COPY let go of the mailbox's locks this often, so that the
/// MTA and other sessions are not held up by one large command.
const MESSAGES_PER_LOCK: usize = 500;
/// COPY reads at most this much into memory before writing it out.
const COPY_BATCH_BYTES: u64 = 32 << 20;

/// Copies messages `uids` of `src` to `dst`, with flags, keywords and
/// dates; in the destination they are \Recent. Returns (source UID,
/// new UID) pairs. If writing fails part-way, the copies made so far are
/// removed again (RFC 3501 §6.4.7: a failed COPY leaves the destination
/// as it was) and the error is returned.
pub(super) fn copy_uids(src: &Arc<Shared>, uids: &[u32], dst: &Arc<Shared>) -> Result<Vec<(u32, u32)>, ImapError> {
    struct Copy {
        uid: u32,
        bytes: Vec<u8>,
        flags: Flags,
        keywords: Vec<String>,
        date: i64,
        sender: String,
    }
    let mut done: Vec<(u32, u32)> = Vec::with_capacity(uids.len());
    let mut next = 0;
    while next < uids.len() {
        // Read a batch under the source's read lock only: never hold two
        // mailboxes at once, so two sessions copying in opposite
        // directions cannot wait for each other.
        let mut batch = Vec::new();
        {
            let mb = src.read();
            let mut bytes = 0u64;
            mb.reading(|| {
                while next < uids.len() && (batch.is_empty() || bytes < COPY_BATCH_BYTES) {
                    let uid = uids[next];
                    next += 1;
                    let Some(i) = mb.position(uid) else { continue };
                    let m = &mb.messages()[i];
                    let keywords = (0..mb.keywords().len())
                        .filter(|k| m.keywords & (1u64 << k) != 0)
                        .map(|k| mb.keywords()[k].clone())
                        .collect();
                    bytes += m.size;
                    batch.push(Copy {
                        uid,
                        bytes: mb.message_bytes(i)?,
                        flags: m.flags.union(Flags::RECENT),
                        keywords,
                        date: m.date,
                        sender: mb.from_line(i)?.sender,
                    });
                }
                Ok(())
            })?;
        }
        let mut events = Vec::new();
        let mut failed = None;
        {
            let mut mb = dst.write();
            for c in &batch {
                let kws: Vec<&str> = c.keywords.iter().map(String::as_str).collect();
                match mb.append(&c.bytes, c.flags, &kws, Some(c.date), &c.sender) {
                    Ok((uid, ev)) => {
                        done.push((c.uid, uid));
                        events.extend(ev);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                let made: Vec<u32> = done.iter().map(|d| d.1).collect();
                match mb.expunge(&made) {
                    Ok(ev) => events.extend(ev),
                    Err(e2) => log::error!("copy rollback-failed mailbox={} {e2}", dst.path().display()),
                }
                mb.publish(&events);
                return Err(e.into());
            }
            mb.publish(&events);
        }
    }
    Ok(done)
}

/// A UID set in the compact form of RFC 4315 `uid-set`: `1:3,7`.
pub(super) fn uid_set(uids: impl IntoIterator<Item = u32>) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |out: &mut String, r: (u32, u32)| {
        if !out.is_empty() {
            out.push(',');
        }
        if r.0 == r.1 {
            out.push_str(&r.0.to_string());
        } else {
            out.push_str(&format!("{}:{}", r.0, r.1));
        }
    };
    for u in uids {
        run = match run {
            Some((a, b)) if u == b.wrapping_add(1) => Some((a, u)),
            Some(r) => {
                flush(&mut out, r);
                Some((u, u))
            }
            None => Some((u, u)),
        };
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out
}

/// A message's header and content for SEARCH, read when first needed.
struct Lazy<'a> {
    mb: &'a Mailbox,
    i: usize,
    header: Option<Vec<u8>>,
    full: Option<Vec<u8>>,
}

impl Content for Lazy<'_> {
    fn header(&mut self) -> Result<&[u8], StoreError> {
        if let Some(full) = &self.full {
            let n = (self.mb.messages()[self.i].hdr_size as usize).min(full.len());
            return Ok(&full[..n]);
        }
        if self.header.is_none() {
            let mut v = Vec::with_capacity(self.mb.messages()[self.i].hdr_size as usize);
            self.mb.write_header(self.i, &mut v)?;
            self.header = Some(v);
        }
        Ok(self.header.as_deref().unwrap_or_default())
    }

    fn message(&mut self) -> Result<&[u8], StoreError> {
        if self.full.is_none() {
            self.full = Some(self.mb.message_bytes(self.i)?);
        }
        Ok(self.full.as_deref().unwrap_or_default())
    }
}

impl Session<'_> {
    /// The INBOX file when INBOX is selected: expunges there need the
    /// POP3 maildrop lock.
    fn selected_inbox(&self) -> Option<PathBuf> {
        match &self.state {
            super::session::State::Selected(u, s) if s.is_inbox => Some(u.root.inbox.clone()),
            _ => None,
        }
    }

    pub(super) fn cmd_check(&mut self) -> Done {
        let sel = self.selected();
        let mut mb = sel.shared.write();
        let events = mb.flush()?;
        mb.publish(&events);
        Ok("Check completed.".into())
    }

    /// CLOSE (expunging \Deleted messages silently) and UNSELECT (not).
    pub(super) fn cmd_close(&mut self, expunge: bool) -> Done {
        let mut text = if expunge { "Close completed." } else { "Unselect completed." };
        if expunge && !self.selected().read_only {
            let inbox = self.selected_inbox();
            let state_dir = self.config.state_dir.clone();
            let sel = self.selected();
            let mut mb = sel.shared.write();
            match pop_guard(inbox.as_deref(), &state_dir) {
                Ok(guard) => {
                    let uids = deleted_uids(&mb, &sel.uids, None);
                    if !uids.is_empty() {
                        let events = mb.expunge(&uids)?;
                        sel.sub.publish_to_others(&mb, &events);
                        // The POP3 lock goes before the mailbox lock.
                        drop(guard);
                        drop(mb);
                        self.stats.expunged += uids.len() as u64;
                    }
                }
                Err(ImapError::No(..)) => text = "Close completed; deleted messages stay while a POP3 session is open.",
                Err(e) => return Err(e),
            }
        }
        self.close_mailbox();
        Ok(text.into())
    }

    pub(super) fn cmd_expunge(&mut self, set: Option<&SequenceSet>) -> Done {
        if self.selected().read_only {
            return Err(ImapError::No(Some("READ-ONLY"), "Mailbox is read-only.".into()));
        }
        let inbox = self.selected_inbox();
        let state_dir = self.config.state_dir.clone();
        let sel = self.selected();
        let within = match set {
            Some(s) => Some(sel.resolve(s, true)?.into_iter().map(|p| p.1).collect::<Vec<u32>>()),
            None => None,
        };
        let events = {
            // Chosen and removed under one lock: a flag another session
            // clears meanwhile is respected.
            let mut mb = sel.shared.write();
            let _guard = pop_guard(inbox.as_deref(), &state_dir)?;
            let uids = deleted_uids(&mb, &sel.uids, within.as_deref());
            let events = mb.expunge(&uids)?;
            // Everyone, this session included: its report after the
            // command sends the EXPUNGE responses.
            mb.publish(&events);
            events
        };
        let n = events.iter().map(|e| if let Event::Expunged(u) = e { u.len() } else { 0 }).sum::<usize>();
        self.stats.expunged += n as u64;
        Ok("Expunge completed.".into())
    }

    pub(super) fn cmd_search(&mut self, uid: bool, charset: Option<&str>, key: &SearchKey) -> Done {
        if let Some(cs) = charset {
            if !search::charset_supported(cs) {
                return Err(ImapError::No(Some("BADCHARSET (US-ASCII UTF-8)"), "Unsupported charset.".into()));
            }
        }
        let sel = self.selected();
        let bounds = Bounds { max_seq: sel.exists(), max_uid: sel.max_uid() };
        let mut found: Vec<u32> = Vec::new();
        let mut expunged = false;
        let mut matcher = search::Matcher::new(key);
        for (chunk_no, chunk) in sel.uids.chunks(MESSAGES_PER_LOCK).enumerate() {
            let mb = sel.shared.read();
            let names = mb.keywords().to_vec();
            mb.reading(|| {
                for (k, &u) in chunk.iter().enumerate() {
                    let seq = (chunk_no * MESSAGES_PER_LOCK + k + 1) as u32;
                    let Some(i) = mb.position(u) else {
                        expunged = true;
                        continue;
                    };
                    let m = &mb.messages()[i];
                    let mut flags = m.flags.without(Flags::RECENT);
                    if sel.is_recent(u) {
                        flags.insert(Flags::RECENT);
                    }
                    let c = Candidate {
                        seq,
                        uid: u,
                        flags,
                        keywords: m.keywords,
                        keyword_names: &names,
                        internal_date: m.date,
                        size: m.size,
                    };
                    let mut content = Lazy { mb: &mb, i, header: None, full: None };
                    if matcher.matches(&c, &bounds, &mut content)? {
                        found.push(if uid { u } else { seq });
                    }
                }
                Ok(())
            })?;
        }
        let mut line = String::from("* SEARCH");
        for n in &found {
            line.push(' ');
            line.push_str(&n.to_string());
        }
        line.push_str("\r\n");
        self.conn.write_all(line.as_bytes())?;
        // Messages expunged meanwhile are simply not found (as other
        // servers answer; a NO here would alarm clients for nothing).
        let _ = expunged;
        Ok("Search completed.".into())
    }

    pub(super) fn cmd_store(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: &[Flag],
    ) -> Done {
        let sel = match &mut self.state {
            super::session::State::Selected(_, s) => s,
            _ => unreachable!("checked by check_allowed"),
        };
        if sel.read_only {
            return Err(ImapError::No(Some("READ-ONLY"), "Mailbox is read-only.".into()));
        }
        let targets = sel.resolve(set, uid)?;
        let (f, kws) = split_flags(flags);
        let shared = Arc::clone(&sel.shared);
        let mut mb = shared.write();
        let keywords_before = mb.keywords().len();
        let mut kwbits = 0u64;
        for k in &kws {
            match mb.keyword_bit(k) {
                Some(b) => kwbits |= 1u64 << b,
                None if !crate::store::state::is_keyword(k) => {
                    mb.forget_keywords_from(keywords_before);
                    return Err(ImapError::bad(format!("Invalid keyword {}", super::session::printable(k))));
                }
                None => {
                    mb.forget_keywords_from(keywords_before);
                    return Err(ImapError::No(Some("LIMIT"), "Too many keywords in this mailbox.".into()));
                }
            }
        }
        // (uid, flags and keywords before), to take a change back that
        // cannot be written.
        let mut changed: Vec<(u32, Flags, u64)> = Vec::new();
        for (_, u) in &targets {
            let Some(i) = mb.position(*u) else { continue };
            let m = &mb.messages()[i];
            let (old_f, old_k) = (m.flags, m.keywords);
            let keep_recent = if m.flags.contains(Flags::RECENT) { Flags::RECENT } else { Flags::default() };
            let (nf, nk) = match mode {
                StoreMode::Replace => (f.union(keep_recent), kwbits),
                StoreMode::Add => (m.flags.union(f), m.keywords | kwbits),
                StoreMode::Remove => (m.flags.without(f), m.keywords & !kwbits),
            };
            if mb.set_flags(i, nf, nk) {
                changed.push((*u, old_f, old_k));
            }
        }
        // Written before anyone hears of it. A full disk: what could not be
        // written is taken back and the client told so (RFC 9208 OVERQUOTA
        // is the code for "no room"). Another program holding the lock: it
        // is written when the lock is free.
        let flushed = match mb.try_flush() {
            Ok(ev) => ev,
            Err(StoreError::LockTimeout(_)) => Vec::new(),
            Err(e) => {
                let mut taken_back = 0;
                for &(u, old_f, old_k) in &changed {
                    if let Some(i) = mb.position(u) {
                        if mb.pending(u) {
                            mb.set_flags(i, old_f, old_k);
                            taken_back += 1;
                        }
                    }
                }
                mb.forget_keywords_from(keywords_before);
                // The old values are what the file has: nothing to write.
                let _ = mb.try_flush();
                log::warn!("{} imap store-failed changes={} taken-back={taken_back} {e}", self.sid, changed.len());
                return Err(match e {
                    StoreError::NoSpace => ImapError::No(
                        Some("OVERQUOTA"),
                        "The disk is full: the flags were not changed. Expunge or delete some mail.".into(),
                    ),
                    e => e.into(),
                });
            }
        };
        let uids: Vec<u32> = changed.iter().map(|c| c.0).collect();
        if !uids.is_empty() {
            sel.sub.publish_to_others(&mb, &[Event::Flags(uids)]);
        }
        mb.publish(&flushed);
        // The responses are made under the lock and sent after it.
        let mut out = Vec::new();
        // A new keyword: FLAGS first, then the FETCH responses that use it.
        sel.report_keywords(&mb, &mut out)?;
        if !silent {
            for (seq, u) in &targets {
                let Some(i) = mb.position(*u) else { continue };
                let shown = sel.flags_of(&mb, &mb.messages()[i]);
                if uid {
                    write!(out, "* {seq} FETCH (UID {u} FLAGS ({shown}))\r\n")?;
                } else {
                    write!(out, "* {seq} FETCH (FLAGS ({shown}))\r\n")?;
                }
            }
        }
        drop(mb);
        self.conn.write_all(&out)?;
        // Messages expunged by another session meanwhile keep no flags:
        // nothing to do for them, and nothing to complain about (RFC 3501
        // §7.4.1 leaves it open; other servers answer OK).
        Ok("Store completed.".into())
    }

    /// COPY and MOVE (RFC 6851: copy, then expunge from the source, with
    /// the COPYUID in an untagged OK before the EXPUNGE responses).
    pub(super) fn cmd_copy(&mut self, uid: bool, set: &SequenceSet, mailbox: &str, moving: bool) -> Done {
        let targets = self.selected().resolve(set, uid)?;
        let dst = self.open_target(mailbox)?;
        if moving && self.selected().read_only {
            return Err(ImapError::No(Some("READ-ONLY"), "Mailbox is read-only.".into()));
        }
        let inbox = if moving { self.selected_inbox() } else { None };
        let state_dir = self.config.state_dir.clone();
        let sel = self.selected();
        if inbox.is_some() {
            // Refuse early what would be refused after the copy (under the
            // write lock, as every holder of the POP3 lock here does).
            let _w = sel.shared.write();
            drop(pop_guard(inbox.as_deref(), &state_dir)?);
        }
        let src = Arc::clone(&sel.shared);
        let uids: Vec<u32> = {
            let mb = src.read();
            targets.iter().map(|t| t.1).filter(|u| mb.position(*u).is_some()).collect()
        };
        if uids.is_empty() {
            if targets.is_empty() {
                return Ok("No messages found.".into());
            }
            return Err(ImapError::No(Some("EXPUNGEISSUED"), "The messages no longer exist.".into()));
        }
        let pairs = copy_uids(&src, &uids, &dst)?;
        let code = format!(
            "COPYUID {} {} {}",
            dst.read().uidvalidity(),
            uid_set(pairs.iter().map(|p| p.0)),
            uid_set(pairs.iter().map(|p| p.1))
        );
        if !moving {
            return Ok(format!("[{code}] Copy completed."));
        }
        let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        {
            let mut mb = src.write();
            match pop_guard(inbox.as_deref(), &state_dir) {
                Ok(_guard) => {
                    let events = mb.expunge(&moved)?;
                    mb.publish(&events);
                }
                Err(e) => {
                    // A POP3 session began during the copy: take the
                    // copies back rather than leave the messages twice.
                    drop(mb);
                    take_back(&dst, &pairs)?;
                    return Err(e);
                }
            }
        }
        write!(self.conn, "* OK [{code}] Moved UIDs.\r\n")?;
        self.stats.expunged += moved.len() as u64;
        Ok("Move completed.".into())
    }
}

/// Expunges from `dst` the copies `pairs` (source UID, copy UID) names:
/// a move whose source could not be expunged leaves no message twice.
pub(super) fn take_back(dst: &Arc<Shared>, pairs: &[(u32, u32)]) -> Result<(), ImapError> {
    let copies: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let mut d = dst.write();
    let events = d.expunge(&copies)?;
    d.publish(&events);
    Ok(())
}

/// The POP3 maildrop lock of INBOX for the moment of an expunge: POP3
/// message numbers must not change under a POP3 client (DESIGN.md,
/// locking). Taken while holding the mailbox's write lock, so that two
/// IMAP sessions of this process expunging at once take turns rather than
/// see each other as a POP3 session.
pub(super) fn pop_guard(inbox: Option<&Path>, state_dir: &Path) -> Result<Option<SessionLock>, ImapError> {
    let Some(inbox) = inbox else { return Ok(None) };
    match SessionLock::try_acquire(inbox, state_dir) {
        Ok(l) => Ok(Some(l)),
        Err(StoreError::InUse(_)) => Err(ImapError::No(
            Some("INUSE"),
            "Mailbox is in use by a POP3 session; messages can't be expunged until it ends.".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The UIDs among `view` (and `within`, if given) marked \Deleted.
fn deleted_uids(mb: &Mailbox, view: &[u32], within: Option<&[u32]>) -> Vec<u32> {
    let pick = |u: &u32| mb.position(*u).is_some_and(|i| mb.messages()[i].flags.contains(Flags::DELETED));
    match within {
        Some(w) => w.iter().filter(|u| pick(u)).copied().collect(),
        None => view.iter().filter(|u| pick(u)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::uid_set;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set([1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set([5]), "5");
        assert_eq!(uid_set([4, 2]), "4,2");
        assert_eq!(uid_set(std::iter::empty()), "");
    }
}

//! The selected state: one session's view of a shared mailbox.
//!
//! Sessions share the mailbox's index (`store::Shared`), but each keeps
//! its own numbering: the UIDs its client knows, in order, so that
//! message sequence numbers change only when this session reports a
//! change (RFC 3501 §2.3.1.2, §7.4.1). Changes made by others arrive as
//! events and wait here until a moment at which they may be reported:
//! new mail (EXISTS) and flag changes (FETCH) after any command, expunges
//! (EXPUNGE) only after commands other than FETCH, STORE and SEARCH, and
//! at once in IDLE.
//!
//! \Recent (RFC 3501 §2.3.2) is the store's "nobody has seen it yet" bit:
//! the first read-write session to learn of a message clears it in the
//! store and keeps the message as recent for itself.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use super::command::{SeqNum, SequenceSet};
use super::response::ImapError;
use crate::store::{Event, Flags, Mailbox, Message, Shared, Subscription};

pub struct Selected {
    /// The name as the client gave it (for logs and STATUS of itself).
    pub name: String,
    pub shared: Arc<Shared>,
    pub sub: Subscription,
    pub read_only: bool,
    pub is_inbox: bool,
    pub uidvalidity: u32,
    /// The UIDs the client knows, by sequence number - 1; ascending.
    pub uids: Vec<u32>,
    /// Recent to this session; ascending.
    recent: Vec<u32>,
    /// The highest UID this session has reported or skipped.
    max_uid_known: u32,
    /// Keyword names the client has been told (a change means a new
    /// FLAGS response).
    keywords_known: usize,
    pending_expunge: BTreeSet<u32>,
    pending_flags: BTreeSet<u32>,
    pending_new: bool,
    reset: bool,
}

/// How a change may be reported at this moment.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// False while answering FETCH, STORE or SEARCH (RFC 3501 §7.4.1).
    pub expunges: bool,
    /// Add `UID n` to unsolicited FETCH responses (after UID commands, as
    /// clients that track UIDs expect).
    pub with_uid: bool,
}

impl Selected {
    /// Opens the view: every message known, recent ones claimed unless
    /// read-only. Writes the SELECT/EXAMINE untagged responses to `out`.
    pub fn open(
        name: String,
        shared: Arc<Shared>,
        read_only: bool,
        is_inbox: bool,
        out: &mut impl Write,
    ) -> Result<Selected, ImapError> {
        // Subscribe first: nothing that happens after the snapshot is missed.
        let sub = shared.subscribe();
        let mut recent = Vec::new();
        // Only a read-write session that finds recent messages changes
        // anything; the others need only the shared lock.
        let claims = !read_only && shared.read().messages().iter().any(|m| m.flags.contains(Flags::RECENT));
        let (uids, uidvalidity, uidnext, keywords, first_unseen) = {
            let mut w;
            let r;
            let mb: &Mailbox = if claims {
                w = shared.write();
                for i in 0..w.len() {
                    let m = &w.messages()[i];
                    if m.flags.contains(Flags::RECENT) {
                        recent.push(m.uid);
                        let (f, k) = (m.flags.without(Flags::RECENT), m.keywords);
                        w.set_flags(i, f, k);
                    }
                }
                &w
            } else {
                r = shared.read();
                if read_only {
                    recent = r.messages().iter().filter(|m| m.flags.contains(Flags::RECENT)).map(|m| m.uid).collect();
                }
                &r
            };
            let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
            let first_unseen = mb.messages().iter().position(|m| !m.flags.contains(Flags::SEEN)).map(|p| p + 1);
            (uids, mb.uidvalidity(), mb.uidnext(), mb.keywords().to_vec(), first_unseen)
        };
        let sel = Selected {
            name,
            read_only,
            is_inbox,
            uidvalidity,
            max_uid_known: uidnext.saturating_sub(1).max(uids.last().copied().unwrap_or(0)),
            keywords_known: keywords.len(),
            uids,
            recent,
            shared,
            sub,
            pending_expunge: BTreeSet::new(),
            pending_flags: BTreeSet::new(),
            pending_new: false,
            reset: false,
        };
        write!(out, "* FLAGS ({})\r\n", flag_list(&keywords, false))?;
        let permanent = if read_only { String::new() } else { flag_list(&keywords, true) };
        write!(out, "* OK [PERMANENTFLAGS ({permanent})] Flags permitted.\r\n")?;
        write!(out, "* {} EXISTS\r\n* {} RECENT\r\n", sel.uids.len(), sel.recent.len())?;
        if let Some(n) = first_unseen {
            write!(out, "* OK [UNSEEN {n}] First unseen.\r\n")?;
        }
        write!(out, "* OK [UIDVALIDITY {uidvalidity}] UIDs valid\r\n* OK [UIDNEXT {uidnext}] Predicted next UID\r\n")?;
        Ok(sel)
    }

    pub fn exists(&self) -> u32 {
        self.uids.len() as u32
    }

    pub fn is_recent(&self, uid: u32) -> bool {
        self.recent.binary_search(&uid).is_ok()
    }

    pub fn recent_count(&self) -> usize {
        self.recent.len()
    }

    pub fn max_uid(&self) -> u32 {
        self.uids.last().copied().unwrap_or(0)
    }

    /// The (sequence number, UID) pairs a set names, in ascending order.
    /// Message numbers beyond EXISTS are a client error (RFC 3501 §9
    /// `seq-number`); UIDs that don't exist are simply not there.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<(u32, u32)>, ImapError> {
        let n = self.uids.len() as u32;
        let largest = if uid { self.max_uid() } else { n };
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(set.0.len());
        for r in &set.0 {
            let v = |s: SeqNum| match s {
                SeqNum::Value(v) => v,
                SeqNum::Largest => largest,
            };
            let (a, b) = (v(r.0), v(r.1));
            let (lo, hi) = (a.min(b), a.max(b));
            if !uid && (hi > n) {
                return Err(ImapError::bad("Invalid messageset: message number beyond the mailbox"));
            }
            if hi == 0 {
                // `*` of an empty mailbox.
                continue;
            }
            ranges.push((lo.max(1), hi));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let mut out = Vec::new();
        for (lo, hi) in merged {
            if uid {
                let start = self.uids.partition_point(|&u| u < lo);
                for (i, &u) in self.uids[start..].iter().enumerate() {
                    if u > hi {
                        break;
                    }
                    out.push((start as u32 + i as u32 + 1, u));
                }
            } else {
                for s in lo..=hi {
                    out.push((s, self.uids[s as usize - 1]));
                }
            }
        }
        Ok(out)
    }

    /// The sequence number of a UID the client knows.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    /// Takes the events that arrived; nothing is written.
    fn drain(&mut self) {
        while let Ok(e) = self.sub.events.try_recv() {
            match e {
                Event::Appended(_) => self.pending_new = true,
                Event::Flags(u) => self.pending_flags.extend(u),
                Event::Expunged(u) => self.pending_expunge.extend(u),
                Event::Reset(_) => self.reset = true,
            }
        }
    }

    /// True when something waits to be reported.
    pub fn has_pending(&mut self) -> bool {
        self.drain();
        self.pending_new || !self.pending_flags.is_empty() || !self.pending_expunge.is_empty() || self.reset
    }

    /// Reports what changed since the last report, as far as `how` allows.
    pub fn report(&mut self, how: Report, out: &mut impl Write) -> Result<(), ImapError> {
        self.drain();
        if self.reset {
            return Err(ImapError::Bye("Mailbox was replaced by another program; UIDVALIDITY changed.".into()));
        }
        if how.expunges && !self.pending_expunge.is_empty() {
            let gone = std::mem::take(&mut self.pending_expunge);
            // Highest first: the numbers of those still to report stay true.
            for uid in gone.iter().rev() {
                if let Ok(i) = self.uids.binary_search(uid) {
                    self.uids.remove(i);
                    write!(out, "* {} EXPUNGE\r\n", i + 1)?;
                }
                if let Ok(i) = self.recent.binary_search(uid) {
                    self.recent.remove(i);
                }
                self.pending_flags.remove(uid);
            }
        }
        if self.pending_new {
            self.pending_new = false;
            self.take_new(out)?;
        }
        if !self.pending_flags.is_empty() {
            let changed = std::mem::take(&mut self.pending_flags);
            let shared = Arc::clone(&self.shared);
            let mb = shared.read();
            self.report_keywords(&mb, out)?;
            for uid in changed {
                let (Some(seq), Some(i)) = (self.seq_of(uid), mb.position(uid)) else { continue };
                let m = &mb.messages()[i];
                let flags = self.flags_of(&mb, m);
                if how.with_uid {
                    write!(out, "* {seq} FETCH (UID {uid} FLAGS ({flags}))\r\n")?;
                } else {
                    write!(out, "* {seq} FETCH (FLAGS ({flags}))\r\n")?;
                }
            }
        }
        Ok(())
    }

    /// New messages: appended to the view, recent ones claimed, EXISTS.
    fn take_new(&mut self, out: &mut impl Write) -> Result<(), ImapError> {
        let known = self.max_uid_known;
        let mut new: Vec<(u32, bool)> = {
            let mb = self.shared.read();
            let start = mb.messages().partition_point(|m| m.uid <= known);
            mb.messages()[start..].iter().map(|m| (m.uid, m.flags.contains(Flags::RECENT))).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        if new.iter().any(|n| n.1) {
            if self.read_only {
                // EXAMINE shows them as recent without taking them.
            } else {
                let mut mb = self.shared.write();
                for n in new.iter_mut().filter(|n| n.1) {
                    // Another session may have claimed it meanwhile.
                    n.1 = false;
                    if let Some(i) = mb.position(n.0) {
                        let m = &mb.messages()[i];
                        if m.flags.contains(Flags::RECENT) {
                            let (f, k) = (m.flags.without(Flags::RECENT), m.keywords);
                            mb.set_flags(i, f, k);
                            n.1 = true;
                        }
                    }
                }
            }
        }
        for (uid, recent) in &new {
            self.uids.push(*uid);
            if *recent {
                self.recent.push(*uid);
            }
        }
        self.max_uid_known = new.last().map_or(known, |n| n.0);
        {
            let shared = Arc::clone(&self.shared);
            let mb = shared.read();
            self.report_keywords(&mb, out)?;
        }
        write!(out, "* {} EXISTS\r\n* {} RECENT\r\n", self.uids.len(), self.recent.len())?;
        Ok(())
    }

    /// A new keyword in the mailbox: FLAGS and PERMANENTFLAGS again
    /// (RFC 3501 §7.2.6), before any FETCH that shows it.
    pub fn report_keywords(&mut self, mb: &Mailbox, out: &mut impl Write) -> Result<(), ImapError> {
        if mb.keywords().len() != self.keywords_known {
            self.keywords_known = mb.keywords().len();
            write!(out, "* FLAGS ({})\r\n", flag_list(mb.keywords(), false))?;
            let permanent = if self.read_only { String::new() } else { flag_list(mb.keywords(), true) };
            write!(out, "* OK [PERMANENTFLAGS ({permanent})] Flags permitted.\r\n")?;
        }
        Ok(())
    }

    /// A message's flags as FETCH FLAGS shows them (without parentheses).
    pub fn flags_of(&self, mb: &Mailbox, m: &Message) -> String {
        render_flags(m.flags, m.keywords, mb.keywords(), self.is_recent(m.uid))
    }

    /// Forgets flag notices for these UIDs (the session reported them).
    pub fn forget_flags(&mut self, uids: &[u32]) {
        for u in uids {
            self.pending_flags.remove(u);
        }
    }

    /// The messages whose expunge is known here but not yet reported.
    pub fn expunge_pending(&mut self) -> bool {
        self.drain();
        !self.pending_expunge.is_empty()
    }
}

/// System flags in the order other servers list them, then keywords.
pub fn render_flags(flags: Flags, keywords: u64, names: &[String], recent: bool) -> String {
    let mut s = String::new();
    for (f, name) in [
        (Flags::ANSWERED, "\\Answered"),
        (Flags::FLAGGED, "\\Flagged"),
        (Flags::DELETED, "\\Deleted"),
        (Flags::SEEN, "\\Seen"),
        (Flags::DRAFT, "\\Draft"),
    ] {
        if flags.contains(f) {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(name);
        }
    }
    for (i, k) in names.iter().enumerate().take(64) {
        if keywords & (1u64 << i) != 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(k);
        }
    }
    if recent {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str("\\Recent");
    }
    s
}

/// The FLAGS / PERMANENTFLAGS list: system flags, the mailbox's keywords,
/// and `\*` when clients may make new keywords.
fn flag_list(keywords: &[String], permanent: bool) -> String {
    let mut s = String::from("\\Answered \\Flagged \\Deleted \\Seen \\Draft");
    for k in keywords {
        s.push(' ');
        s.push_str(k);
    }
    if permanent && keywords.len() < crate::store::mailbox::MAX_KEYWORDS {
        s.push_str(" \\*");
    }
    s
}

//! Operations across mailboxes: copying messages, and RFC 3501's RENAME
//! of INBOX, which moves every message to a new mailbox and leaves INBOX
//! empty (INBOX is the MTA's spool file and cannot itself move).

use super::mailbox::{Event, Mailbox, Options};
use super::names::MailRoot;
use super::StoreError;

/// Appends messages `idxs` of `src` to `dst` with their flags, keywords
/// and dates. Returns the new UIDs in order, and the events of `dst`.
pub fn copy_messages(src: &Mailbox, idxs: &[usize], dst: &mut Mailbox) -> Result<(Vec<u32>, Vec<Event>), StoreError> {
    let mut uids = Vec::with_capacity(idxs.len());
    let mut events = Vec::new();
    for &i in idxs {
        let m = &src.messages()[i];
        let bytes = src.message_bytes(i)?;
        let fl = src.from_line(i)?;
        let kws: Vec<&str> = (0..src.keywords().len())
            .filter(|k| m.keywords & (1 << k) != 0)
            .map(|k| src.keywords()[k].as_str())
            .collect();
        let (uid, ev) = dst.append(&bytes, m.flags, &kws, Some(m.date), &fl.sender)?;
        uids.push(uid);
        events.extend(ev);
    }
    Ok((uids, events))
}

/// RENAME INBOX new: creates `new` with all of INBOX's messages, then
/// expunges them from INBOX. A crash in between leaves the messages in
/// both mailboxes, never in neither.
pub fn rename_inbox(root: &MailRoot, new: &str, opts: &Options) -> Result<Vec<Event>, StoreError> {
    root.create(new)?;
    let dst_path = root.resolve(new)?;
    let mut dst = Mailbox::open(&dst_path, opts, false)?;
    let mut src = match Mailbox::open(&root.inbox, opts, false) {
        Ok(m) => m,
        Err(StoreError::NoSuchMailbox(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let all: Vec<usize> = (0..src.len()).collect();
    copy_messages(&src, &all, &mut dst)?;
    dst.flush()?;
    let uids: Vec<u32> = src.messages().iter().map(|m| m.uid).collect();
    src.expunge(&uids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Flags;

    #[test]
    fn rename_inbox_moves_messages_and_keeps_inbox() {
        let t = tempfile::tempdir().unwrap();
        let root = MailRoot::new(t.path().join("inbox"), t.path().join("mail"));
        std::fs::create_dir_all(&root.dir).unwrap();
        let opts = Options::default();
        let mut inbox = Mailbox::open(&root.inbox, &opts, true).unwrap();
        inbox.append(b"Subject: 1\r\n\r\none\r\n", Flags::SEEN, &["Junk"], Some(1000), "a@x").unwrap();
        inbox.append(b"Subject: 2\r\n\r\ntwo\r\n", Flags::FLAGGED, &[], Some(2000), "b@x").unwrap();
        let uv = inbox.uidvalidity();
        drop(inbox);
        rename_inbox(&root, "old-mail", &opts).unwrap();
        let inbox = Mailbox::open(&root.inbox, &opts, false).unwrap();
        assert!(inbox.is_empty());
        assert_eq!(inbox.uidvalidity(), uv);
        assert_eq!(inbox.uidnext(), 3);
        let moved = Mailbox::open(&root.resolve("old-mail").unwrap(), &opts, false).unwrap();
        assert_eq!(moved.len(), 2);
        assert_eq!(moved.message_bytes(0).unwrap(), b"Subject: 1\r\n\r\none\r\n");
        assert_eq!(moved.messages()[0].flags, Flags::SEEN);
        assert_eq!(moved.keywords(), &["Junk".to_string()]);
        assert_eq!(moved.messages()[1].date, 2000);
        assert_eq!(moved.from_line(1).unwrap().sender, "b@x");
        assert!(matches!(rename_inbox(&root, "old-mail", &opts), Err(StoreError::AlreadyExists(_))));
    }
}

//! The mbox store against real files: byte-exact round trips, persisted
//! state, outside writers, expunge and the pseudo-message.

mod support;

use std::fs;
use std::io::Write;

use postroom::store::{Event, Flags, Mailbox, MboxFormat};
use support::*;

#[test]
fn appended_messages_come_back_byte_exact() {
    let t = Tmp::new();
    let p = t.path("inbox");
    let mut mb = open(&p);
    let corpus = corpus();
    let mut uids = Vec::new();
    for c in &corpus {
        let (uid, ev) = mb.append(c, Flags::empty(), &[], Some(1_700_000_000), "sender@example.org").unwrap();
        assert!(ev.contains(&Event::Appended(vec![uid])));
        uids.push(uid);
    }
    assert_eq!(uids, (1..=corpus.len() as u32).collect::<Vec<_>>());
    let check = |mb: &Mailbox| {
        let got = contents(mb);
        assert_eq!(got.len(), corpus.len());
        for (i, (uid, bytes)) in got.iter().enumerate() {
            assert_eq!(*uid, uids[i]);
            assert_eq!(bytes, &corpus[i], "message {i}: {:?}", String::from_utf8_lossy(bytes));
            assert_eq!(mb.messages()[i].size, corpus[i].len() as u64, "size of message {i}");
            assert_eq!(mb.messages()[i].date, 1_700_000_000);
        }
    };
    check(&mb);
    let uv = mb.uidvalidity();
    drop(mb);
    let mb = open(&p);
    check(&mb);
    assert_eq!(mb.uidvalidity(), uv);
    assert_eq!(mb.uidnext(), corpus.len() as u32 + 1);
    // On disk: LF line ends, mboxrd quoting, state headers.
    let disk = fs::read(&p).unwrap();
    let text = String::from_utf8_lossy(&disk);
    assert!(text.starts_with("From sender@example.org Tue Nov 14 22:13:20 2023\nX-IMAPbase: "), "{text:.200}");
    assert!(text.contains("\n>From me\n>>From you\n>>>From x\nFrom\n From indented\n"));
    assert!(text.contains("\n>From someone@example.org Thu Nov 26 16:01:55 2026\n"));
}

#[test]
fn lf_content_is_served_with_crlf() {
    let t = Tmp::new();
    let mut mb = open(&t.path("box"));
    let msg = b"Subject: lf\n\nline one\nline two\n";
    mb.append(msg, Flags::empty(), &[], None, "x").unwrap();
    assert_eq!(mb.message_bytes(0).unwrap(), crlf(msg));
    assert_eq!(mb.messages()[0].size, crlf(msg).len() as u64);
}

#[test]
fn state_headers_of_senders_are_dropped_and_never_shown() {
    let t = Tmp::new();
    let mut mb = open(&t.path("box"));
    let forged = b"X-UID: 4000000000\r\nStatus: RO\r\nX-Status: D\r\nX-Keywords: evil\r\nX-IMAPbase: 1 99\r\nContent-Length: 1\r\nSubject: hi\r\n\r\nbody\r\n";
    let (uid, _) = mb.append(forged, Flags::empty(), &[], None, "x").unwrap();
    assert_eq!(uid, 1);
    assert_eq!(mb.message_bytes(0).unwrap(), b"Subject: hi\r\n\r\nbody\r\n");
    drop(mb);
    let mb = open(&t.path("box"));
    assert_eq!(mb.messages()[0].uid, 1);
    assert_eq!(mb.messages()[0].flags, Flags::empty());
    assert_eq!(mb.messages()[0].keywords, 0);
}

const MTA: &str = "From alice@example.org Thu Nov 26 10:00:00 2026\nFrom: alice@example.org\nSubject: one\n\nfirst\n\nFrom bob@example.org Thu Nov 26 10:01:00 2026\nFrom: bob@example.org\nSubject: two\n\n>From the start\nsecond\n\nFrom carol@example.org Thu Nov 26 10:02:00 2026\nSubject: three\n\nthird\n\n";

#[test]
fn fresh_mailbox_from_the_mta_gets_persistent_uids() {
    let t = Tmp::new();
    let p = t.path("spool");
    fs::write(&p, MTA).unwrap();
    let mb = open(&p);
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert_eq!(uids, vec![1, 2, 3]);
    let uv = mb.uidvalidity();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as u32;
    assert!(uv > now - 100 && uv <= now + 1000, "uidvalidity {uv} is the time");
    assert_eq!(
        mb.message_bytes(1).unwrap(),
        b"From: bob@example.org\r\nSubject: two\r\n\r\nFrom the start\r\nsecond\r\n"
    );
    assert!(mb.messages().iter().all(|m| m.flags.contains(Flags::RECENT)));
    let before: Vec<_> = contents(&mb);
    drop(mb);
    let disk = fs::read_to_string(&p).unwrap();
    assert!(disk.contains("X-IMAPbase: "), "{disk}");
    assert_eq!(disk.matches("X-UID: ").count(), 3);
    let mb = open(&p);
    assert_eq!(mb.uidvalidity(), uv);
    assert_eq!(contents(&mb), before);
    assert_eq!(mb.messages()[2].date, 1795687320);
}

#[test]
fn flags_and_keywords_persist_mostly_in_place() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    for c in corpus().iter().take(5) {
        mb.append(c, Flags::RECENT, &[], None, "x").unwrap();
    }
    let size = fs::metadata(&p).unwrap().len();
    let kw = 1u64 << mb.keyword_bit("$Forwarded").unwrap();
    assert!(mb.set_flags(1, Flags::SEEN.union(Flags::FLAGGED), kw));
    assert!(mb.set_flags(3, Flags::ANSWERED.union(Flags::DELETED).union(Flags::DRAFT).union(Flags::SEEN), 0));
    assert!(!mb.set_flags(3, Flags::ANSWERED.union(Flags::DELETED).union(Flags::DRAFT).union(Flags::SEEN), 0));
    mb.flush().unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), size, "flag changes written in place");
    let before = contents(&mb);
    drop(mb);
    let mb = open(&p);
    assert_eq!(mb.messages()[1].flags, Flags::SEEN.union(Flags::FLAGGED));
    assert_eq!(mb.keywords(), &["$Forwarded".to_string()]);
    assert_eq!(mb.messages()[1].keywords, 1);
    assert_eq!(mb.messages()[3].flags, Flags(Flags::ANSWERED.0 | Flags::DELETED.0 | Flags::DRAFT.0 | Flags::SEEN.0));
    assert_eq!(mb.messages()[0].flags, Flags::RECENT);
    assert_eq!(contents(&mb), before);
}

#[test]
fn many_keywords_outgrow_the_padding_and_force_a_rewrite() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    for c in corpus().iter().take(3) {
        mb.append(c, Flags::empty(), &[], None, "x").unwrap();
    }
    let before = contents(&mb);
    let mut bits = 0;
    for i in 0..20 {
        bits |= 1 << mb.keyword_bit(&format!("keyword-number-{i}")).unwrap();
    }
    mb.set_flags(1, Flags::SEEN, bits);
    mb.flush().unwrap();
    drop(mb);
    let mb = open(&p);
    assert_eq!(mb.keywords().len(), 20);
    assert_eq!(mb.messages()[1].keywords, bits);
    assert_eq!(contents(&mb), before);
}

#[test]
fn expunge_middle_last_first_and_all() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    let corpus = corpus();
    for c in &corpus {
        mb.append(c, Flags::empty(), &[], None, "x").unwrap();
    }
    let uv = mb.uidvalidity();
    let all = contents(&mb);
    let expect = |mb: &Mailbox, gone: &[u32]| {
        let want: Vec<_> = all.iter().filter(|(u, _)| !gone.contains(u)).cloned().collect();
        assert_eq!(contents(mb), want);
    };
    let ev = mb.expunge(&[3, 5]).unwrap();
    assert_eq!(ev, vec![Event::Expunged(vec![3, 5])]);
    expect(&mb, &[3, 5]);
    // The last message: only it is rewritten.
    let last = *all.last().map(|(u, _)| u).unwrap();
    let size_before = fs::metadata(&p).unwrap().len();
    let last_len = mb.messages().last().unwrap().disk_len();
    mb.expunge(&[last]).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), size_before - last_len - 1);
    expect(&mb, &[3, 5, last]);
    // The first: the base moves to the new first message.
    mb.expunge(&[1]).unwrap();
    expect(&mb, &[1, 3, 5, last]);
    drop(mb);
    let mut mb = open(&p);
    expect(&mb, &[1, 3, 5, last]);
    assert_eq!(mb.uidvalidity(), uv);
    // Unknown UIDs are ignored.
    assert_eq!(mb.expunge(&[999]).unwrap(), vec![]);
    let rest: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    mb.expunge(&rest).unwrap();
    assert!(mb.is_empty());
    drop(mb);
    // The pseudo-message keeps UIDVALIDITY and UIDNEXT, and is hidden.
    let disk = fs::read_to_string(&p).unwrap();
    assert!(disk.contains("Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"), "{disk}");
    let mut mb = open(&p);
    assert!(mb.is_empty());
    assert_eq!(mb.uidvalidity(), uv);
    assert_eq!(mb.uidnext(), corpus.len() as u32 + 1);
    let (uid, _) = mb.append(b"Subject: after\r\n\r\nx\r\n", Flags::empty(), &[], None, "x").unwrap();
    assert_eq!(uid, corpus.len() as u32 + 1);
    drop(mb);
    let mb = open(&p);
    assert_eq!(mb.len(), 1);
    assert_eq!(mb.uidnext(), corpus.len() as u32 + 2);
    assert_eq!(mb.message_bytes(0).unwrap(), b"Subject: after\r\n\r\nx\r\n");
}

#[test]
fn outside_append_is_parsed_from_the_tail() {
    let t = Tmp::new();
    let p = t.path("spool");
    fs::write(&p, MTA).unwrap();
    let mut mb = open(&p);
    assert!(mb.refresh().unwrap().is_empty());
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"From dave@example.org Thu Nov 26 11:00:00 2026\nSubject: four\n\nfourth\n\n").unwrap();
    drop(f);
    let ev = mb.refresh().unwrap();
    assert_eq!(ev, vec![Event::Appended(vec![4])]);
    assert_eq!(mb.message_bytes(3).unwrap(), b"Subject: four\r\n\r\nfourth\r\n");
    drop(mb);
    let mb = open(&p);
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

#[test]
fn outside_rewrite_is_matched_by_uid() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    for c in corpus().iter().take(4) {
        mb.append(c, Flags::empty(), &[], None, "x").unwrap();
    }
    let before = contents(&mb);
    let uv = mb.uidvalidity();
    // Another program removes message 2 and marks 3 seen, rewriting the
    // file in place (as mutt does).
    let disk = fs::read_to_string(&p).unwrap();
    let starts: Vec<usize> = disk.match_indices("From x ").map(|(i, _)| i).collect();
    let mut new = String::new();
    new.push_str(&disk[..starts[1]]);
    new.push_str(&disk[starts[2]..starts[3]].replacen("Status: O ", "Status: RO", 1));
    new.push_str(&disk[starts[3]..]);
    fs::write(&p, new).unwrap();
    let ev = mb.refresh().unwrap();
    assert_eq!(ev, vec![Event::Expunged(vec![2]), Event::Flags(vec![3])]);
    assert_eq!(mb.uidvalidity(), uv);
    let want: Vec<_> = before.into_iter().filter(|(u, _)| *u != 2).collect();
    assert_eq!(contents(&mb), want);
    assert!(mb.messages()[1].flags.contains(Flags::SEEN));
}

#[test]
fn losing_the_first_message_keeps_uidvalidity_and_never_reuses_uids() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    for c in corpus().iter().take(3) {
        mb.append(c, Flags::empty(), &[], None, "x").unwrap();
    }
    let uv = mb.uidvalidity();
    // Another program deletes messages 1 (which carries X-IMAPbase) and
    // 3; message 2 keeps its X-UID.
    let disk = fs::read_to_string(&p).unwrap();
    let starts: Vec<usize> = disk.match_indices("From x ").map(|(i, _)| i).collect();
    fs::write(&p, &disk[starts[1]..starts[2]]).unwrap();
    let ev = mb.refresh().unwrap();
    assert_eq!(ev, vec![Event::Expunged(vec![1, 3])]);
    assert_eq!(mb.uidvalidity(), uv);
    let (uid, _) = mb.append(b"Subject: new\r\n\r\nnew\r\n", Flags::empty(), &[], None, "x").unwrap();
    assert_eq!(uid, 4, "UID 3 must never come back under the same UIDVALIDITY");
    let ids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert_eq!(ids, vec![2, 4]);
    drop(mb);
    // A fresh open reads the base written with the append.
    let mb = open(&p);
    assert_eq!((mb.uidvalidity(), mb.uidnext()), (uv, 5));
}

#[test]
fn mailbox_replaced_beyond_recognition_gets_new_uidvalidity() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    mb.append(b"Subject: a\r\n\r\na\r\n", Flags::empty(), &[], None, "x").unwrap();
    let uv = mb.uidvalidity();
    let other = t.path("other");
    {
        let mut o = open(&other);
        o.append(b"Subject: b\r\n\r\nb\r\n", Flags::empty(), &[], None, "x").unwrap();
        assert_ne!(o.uidvalidity(), uv);
    }
    fs::rename(&other, &p).unwrap();
    let ev = mb.refresh().unwrap();
    assert!(matches!(ev.as_slice(), [Event::Reset(v)] if *v != uv), "{ev:?}");
    assert_eq!(mb.message_bytes(0).unwrap(), b"Subject: b\r\n\r\nb\r\n");
}

#[test]
fn copied_x_uid_out_of_order_gets_a_new_uid() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    mb.append(b"Subject: a\r\n\r\na\r\n", Flags::empty(), &[], None, "x").unwrap();
    mb.append(b"Subject: b\r\n\r\nb\r\n", Flags::empty(), &[], None, "x").unwrap();
    drop(mb);
    // A tool copies a message with an X-UID from another folder.
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"From y Thu Nov 26 11:00:00 2026\nX-UID: 1\nStatus: O\nSubject: c\n\nc\n\n").unwrap();
    drop(f);
    let mb = open(&p);
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(mb.message_bytes(2).unwrap(), b"Subject: c\r\n\r\nc\r\n");
}

#[test]
fn mboxo_quotes_from_only() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut o = opts();
    o.format = MboxFormat::Mboxo;
    let mut mb = Mailbox::open(&p, &o, true).unwrap();
    mb.append(b"Subject: o\r\n\r\nFrom x\r\n>From y\r\n", Flags::empty(), &[], None, "x").unwrap();
    assert_eq!(mb.message_bytes(0).unwrap(), b"Subject: o\r\n\r\n>From x\r\n>From y\r\n");
    assert!(fs::read_to_string(&p).unwrap().contains("\n>From x\n>From y\n"));
}

#[test]
fn not_an_mbox_is_refused_clearly() {
    let t = Tmp::new();
    let p = t.path("box");
    fs::write(&p, "this is not a mailbox\n").unwrap();
    let err = Mailbox::open(&p, &opts(), false).unwrap_err();
    assert!(err.to_string().contains("not a valid mbox"), "{err}");
    assert_eq!(fs::read(&p).unwrap(), b"this is not a mailbox\n");
}

#[test]
fn content_length_keeps_unquoted_from_lines_inside_the_body() {
    let t = Tmp::new();
    let p = t.path("box");
    let body = "line\nFrom someone Thu Nov 26 10:00:00 2026\nmore\n";
    let text = format!(
        "From a Thu Nov 26 10:00:00 2026\nX-IMAPbase: 100 0000000002\nX-UID: 1\nStatus: O\nContent-Length: {}\nSubject: cl\n\n{body}\nFrom b Thu Nov 26 10:00:01 2026\nX-UID: 2\nStatus: O\nSubject: two\n\nx\n\n",
        body.len()
    );
    fs::write(&p, text).unwrap();
    let mb = open(&p);
    assert_eq!(mb.len(), 2);
    assert_eq!(mb.uidvalidity(), 100);
    assert_eq!(mb.message_bytes(0).unwrap(), crlf(format!("Subject: cl\n\n{body}").as_bytes()));
    assert_eq!(mb.messages()[0].size, crlf(format!("Subject: cl\n\n{body}").as_bytes()).len() as u64);
}

#[test]
fn registry_shares_one_index_and_tells_every_subscriber() {
    use postroom::store::Registry;
    let t = Tmp::new();
    let p = t.path("box");
    let reg = Registry::with_warm(0);
    let a = reg.open(&p, &opts(), true).unwrap();
    let b = reg.open(&p, &opts(), false).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(reg.open_count(), 1);
    let sub_a = a.subscribe();
    let sub_b = b.subscribe();
    let mut w = a.write();
    let (uid, ev) = w.append(b"Subject: x\r\n\r\ny\r\n", Flags::empty(), &[], None, "x").unwrap();
    w.publish(&ev);
    drop(w);
    assert_eq!(sub_b.events.try_recv().unwrap(), Event::Appended(vec![uid]));
    assert_eq!(sub_a.events.try_recv().unwrap(), Event::Appended(vec![uid]));
    // An outside append is noticed by refresh and published.
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"From m Thu Nov 26 11:00:00 2026\nSubject: mta\n\nz\n\n").unwrap();
    drop(f);
    b.refresh().unwrap();
    assert_eq!(sub_a.events.try_recv().unwrap(), Event::Appended(vec![uid + 1]));
    assert_eq!(a.read().len(), 2);
    drop(sub_a);
    drop(sub_b);
    drop(a);
    drop(b);
    assert_eq!(reg.open_count(), 0);
}

#[test]
fn readers_see_changed_when_the_file_moved_under_them() {
    let t = Tmp::new();
    let p = t.path("box");
    let mut mb = open(&p);
    mb.append(b"Subject: a\r\n\r\na\r\n", Flags::empty(), &[], None, "x").unwrap();
    mb.append(b"Subject: b\r\n\r\nb\r\n", Flags::empty(), &[], None, "x").unwrap();
    let mut other = open(&p);
    other.expunge(&[1]).unwrap();
    assert!(matches!(mb.message_bytes(0), Err(postroom::store::StoreError::Changed(_))));
    assert_eq!(mb.refresh().unwrap(), vec![Event::Expunged(vec![1])]);
    assert_eq!(mb.message_bytes(0).unwrap(), b"Subject: b\r\n\r\nb\r\n");
}

/// A UID given to outside mail must never be given again, even after that
/// message is expunged and the server restarts.
#[test]
fn uids_of_outside_mail_are_never_reused() {
    let t = Tmp::new();
    let p = t.path("spool");
    fs::write(&p, MTA).unwrap();
    let mut mb = open(&p);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"From d Thu Nov 26 11:00:00 2026\nSubject: four\n\n4\n\n").unwrap();
    drop(f);
    assert_eq!(mb.refresh().unwrap(), vec![Event::Appended(vec![4])]);
    mb.expunge(&[4]).unwrap();
    drop(mb);
    let mut mb = open(&p);
    assert_eq!(mb.uidnext(), 5);
    let (uid, _) = mb.append(b"Subject: five\r\n\r\n5\r\n", Flags::empty(), &[], None, "x").unwrap();
    assert_eq!(uid, 5);
    // And once more through the pseudo-message when everything is gone.
    mb.expunge(&[1, 2, 3, 5]).unwrap();
    drop(mb);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"From e Thu Nov 26 12:00:00 2026\nSubject: six\n\n6\n\n").unwrap();
    drop(f);
    let mb = open(&p);
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![6]);
    drop(mb);
    let mb = open(&p);
    assert_eq!(mb.uidnext(), 7);
}

/// Found by the mbox fuzz target: a state header whose newline is the
/// separator at the end of the file must not be rewritten in place.
#[test]
fn state_line_ending_at_the_separator() {
    let t = Tmp::new();
    let p = t.path("box");
    fs::write(&p, "From x Thu Nov 26 16:01:55 2026\n?\nX-UID:J\n").unwrap();
    let mb = open(&p);
    assert_eq!(mb.message_bytes(0).unwrap(), b"?\r\n");
    drop(mb);
    let mb = open(&p);
    assert_eq!(mb.message_bytes(0).unwrap(), b"?\r\n");
    assert_eq!(mb.messages()[0].uid, 1);
}

#[test]
fn registry_keeps_recent_mailboxes_indexed() {
    use postroom::store::Registry;
    let t = Tmp::new();
    let p = t.path("box");
    let reg = Registry::new();
    let a = reg.open(&p, &opts(), true).unwrap();
    a.write().append(b"Subject: x\r\n\r\ny\r\n", Flags::empty(), &[], None, "x").unwrap();
    drop(a);
    assert_eq!(reg.open_count(), 1, "kept warm after its last user left");
    // An outside append meanwhile is picked up when it is opened again.
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"From m Thu Nov 26 11:00:00 2026\nSubject: mta\n\nz\n\n").unwrap();
    drop(f);
    let b = reg.open(&p, &opts(), false).unwrap();
    assert_eq!(b.read().len(), 2);
    assert_eq!(b.read().message_bytes(1).unwrap(), b"Subject: mta\r\n\r\nz\r\n");
}

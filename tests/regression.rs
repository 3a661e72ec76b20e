//! Regression tests of the store for what was seen under real load (issue
//! 8: mail is sacred). Each is named after the finding it reproduces; each
//! failed before its fix.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::mpsc;
use std::time::Duration;

use postroom::store::{scan, Flags, Mailbox, MboxFormat, Registry};
use support::*;

/// Runs `f` on a thread and gives up on it after `secs`: a hang is a
/// failure with a message, not a test run that never ends.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| panic!("{what} did not finish in {secs} s"))
}

fn mbox_of(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    for m in messages {
        data.extend_from_slice(b"From sender@example.org Thu Nov 26 16:01:55 2026\n");
        data.extend_from_slice(m);
        data.extend_from_slice(b"\n");
    }
    data
}

fn big_message(n: usize) -> Vec<u8> {
    let mut m = b"Subject: attachment\n\n".to_vec();
    while m.len() < n {
        m.extend_from_slice(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\n");
    }
    m
}

/// Finding 5: the split scan's separator search stopped advancing once
/// its window was the 1000-byte overlap, so a file whose last message is
/// larger than its share of the file was scanned for ever.
#[test]
fn issue8_5_split_scan_of_a_file_ending_in_a_large_message_finishes() {
    let t = Tmp::new();
    let path = t.path("mbox");
    let msgs = vec![b"Subject: small\n\nhello\n".to_vec(), big_message(3 << 20)];
    fs::write(&path, mbox_of(&msgs)).unwrap();
    let len = fs::metadata(&path).unwrap().len();
    for threads in [2, 3, 8] {
        let p = path.clone();
        let split = within(20, "the split scan", move || {
            let f = File::open(&p).unwrap();
            scan::scan_with(&f, 0, len, MboxFormat::Mboxrd, threads, 1).unwrap().messages
        });
        let f = File::open(&path).unwrap();
        let one = scan::scan_sequential(&f, 0, len, MboxFormat::Mboxrd).unwrap().messages;
        assert_eq!(split, one, "{threads} threads");
        assert_eq!(one.len(), 2);
    }
    // One message larger than the whole share: a spool holding one message.
    fs::write(&path, mbox_of(&[big_message(2 << 20)])).unwrap();
    let len = fs::metadata(&path).unwrap().len();
    let p = path.clone();
    let n = within(20, "the split scan", move || {
        let f = File::open(&p).unwrap();
        scan::scan_with(&f, 0, len, MboxFormat::Mboxrd, 2, 1).unwrap().messages.len()
    });
    assert_eq!(n, 1);
}

/// Finding 5: `Registry::open` indexed a mailbox while holding the lock
/// of the whole registry, so one mailbox that was slow to open (a large
/// one, or one another program kept locked) held up every other user's
/// login. Here user A's mailbox is held by a dotlock of a live process
/// with a recovery journal pending (opening it must wait for the lock);
/// user B's opens at once all the same.
#[test]
fn issue8_5_one_mailbox_slow_to_open_holds_up_nobody_else() {
    let t = Tmp::new();
    let (a, b) = (t.path("a"), t.path("b"));
    for p in [&a, &b] {
        let mut mb = open(p);
        mb.append(b"Subject: x\n\nx\n", Flags::empty(), &[], None, "s").unwrap();
    }
    // A journal makes the next open take the write lock to recover; our own
    // live pid in the dotlock keeps it busy.
    fs::write(postroom::store::journal::journal_path(&a), b"").unwrap();
    let mut lock = OpenOptions::new().write(true).create_new(true).mode(0o644).open(t.path("a.lock")).unwrap();
    writeln!(lock, "{}", std::process::id()).unwrap();
    let registry = std::sync::Arc::new(Registry::new());
    let mut o = opts();
    o.lock.timeout = Duration::from_secs(30);
    let (r, oa) = (std::sync::Arc::clone(&registry), o.clone());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let res = r.open(&a, &oa, false).map(|s| s.read().len());
        let _ = tx.send(res.is_ok());
    });
    std::thread::sleep(Duration::from_millis(300));
    let (r, ob) = (std::sync::Arc::clone(&registry), o.clone());
    let n = within(10, "opening another user's mailbox", move || r.open(&b, &ob, false).unwrap().read().len());
    assert_eq!(n, 1);
    assert!(rx.try_recv().is_err(), "the locked mailbox opened although it was locked");
    fs::remove_file(t.path("a.lock")).unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "the locked mailbox opens once the lock is gone");
}

/// Finding 2: a mailbox emptied to its pseudo-message, then given one
/// message by the MTA, then another: the second append was parsed as the
/// tail from the first message on, and that was taken for a parse of the
/// whole file. The pseudo-message and the base were forgotten, a new
/// UIDVALIDITY was made up and written into the message after the
/// pseudo-message (two states in one file), and the next expunge of
/// everything wrote a second pseudo-message that was then served as mail.
#[test]
fn issue8_2_append_after_a_pseudo_message_keeps_the_base() {
    let t = Tmp::new();
    let path = t.path("inbox");
    let mut mb = open(&path);
    let (uid, _) = mb.append(b"Subject: one\n\n1\n", Flags::empty(), &[], None, "s").unwrap();
    mb.expunge(&[uid]).unwrap();
    let (uidvalidity, uidnext) = (mb.uidvalidity(), mb.uidnext());
    assert!(fs::read_to_string(&path).unwrap().contains("FOLDER INTERNAL DATA"));
    let mta = |body: &str| {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "From mta@example.org Thu Nov 26 16:01:55 2026\nSubject: {body}\n\n{body}\n\n").unwrap();
    };
    mta("first");
    mb.refresh().unwrap();
    assert_eq!(mb.len(), 1);
    mta("second");
    mb.refresh().unwrap();
    assert_eq!(mb.len(), 2);
    assert_eq!(mb.uidvalidity(), uidvalidity, "UIDVALIDITY changed");
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![uidnext, uidnext + 1]);
    mb.flush().unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("X-IMAP").count(), 1, "one base in the file:\n{text}");
    // Everything expunged again: one pseudo-message, never served.
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    mb.expunge(&uids).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("FOLDER INTERNAL DATA").count(), 1, "{text}");
    let again = open(&path);
    assert_eq!((again.len(), again.uidvalidity(), again.uidnext()), (0, uidvalidity, uidnext + 2));
}

/// Finding 2: a file that a broken writer left with two states (a
/// pseudo-message, and a base on the message after it) and a stray second
/// pseudo-message: the pseudo-messages are never served, and the
/// pseudo-message's base is the mailbox's, as UW-IMAP and Dovecot read it.
#[test]
fn issue8_2_stray_pseudo_messages_are_never_served() {
    let t = Tmp::new();
    let path = t.path("inbox");
    let pseudo = |v: u32, last: u32| {
        format!(
            "From MAILER-DAEMON Thu Nov 26 16:01:55 2026\nDate: Thu, 26 Nov 2026 16:01:55 +0000\n\
             From: Mail System Internal Data <MAILER-DAEMON@example.org>\n\
             Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\nX-IMAP: {v} {last:010}\nStatus: RO\n\n\
             This text is part of the internal format of your mail folder, and is not\na real message.\n\n"
        )
    };
    let mut text = pseudo(1700000000, 1130);
    text.push_str("From a@example.org Thu Nov 26 16:01:55 2026\nX-IMAPbase: 1700000555 0000001115\nX-UID: 1114\nSubject: a\n\na\n\n");
    text.push_str(&pseudo(1700000555, 1115));
    text.push_str("From b@example.org Thu Nov 26 16:01:55 2026\nX-UID: 1115\nSubject: b\n\nb\n\n");
    fs::write(&path, &text).unwrap();
    let mb = Mailbox::open(&path, &opts(), false).unwrap();
    let served: Vec<Vec<u8>> = (0..mb.len()).map(|i| mb.message_bytes(i).unwrap()).collect();
    assert_eq!(served, vec![b"Subject: a\r\n\r\na\r\n".to_vec(), b"Subject: b\r\n\r\nb\r\n".to_vec()]);
    assert_eq!(mb.uidvalidity(), 1700000000);
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1114, 1115]);
    assert_eq!(mb.uidnext(), 1131);
}

/// Finding 2, and the rule behind it: an X-UID that the MTA let through
/// from a sender (or mutt copied from another folder) is not a UID unless
/// a writer that knew the mailbox's base could have given it.
#[test]
fn issue8_2_forged_x_uid_in_new_mail_is_not_believed() {
    let t = Tmp::new();
    let path = t.path("inbox");
    let mut mb = open(&path);
    let mut uids = Vec::new();
    for i in 0..5 {
        uids.push(mb.append(format!("Subject: {i}\n\n{i}\n").as_bytes(), Flags::empty(), &[], None, "s").unwrap().0);
    }
    mb.expunge(&uids[1..4]).unwrap();
    let next = mb.uidnext();
    let mta = |uid: u32| {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "From mta@example.org Thu Nov 26 16:01:55 2026\nX-UID: {uid}\nSubject: forged\n\nx\n\n").unwrap();
    };
    // A UID that was given before (and expunged), and one far ahead.
    mta(uids[2]);
    mb.refresh().unwrap();
    mta(4_000_000_000);
    mb.refresh().unwrap();
    let got: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert_eq!(got, vec![uids[0], uids[4], next, next + 1]);
    mb.flush().unwrap();
    let again = open(&path);
    assert_eq!(again.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), got);
    assert_eq!(again.uidnext(), next + 2);
}

/// Finding 4: a process killed between creating `<mbox>.lock` and writing
/// its pid leaves an empty dotlock, which was judged stale only by age
/// (five minutes): `postroom deliver` gave up (exit 75) before that.
/// Now an empty one is stale after `dotlock-stale-empty` (10 s), while a
/// young one is still respected.
#[test]
fn issue8_4_an_empty_dotlock_is_stale_after_seconds() {
    use std::process::{Command, Stdio};
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "mbox-lock-timeout 3s\n");
    fs::create_dir_all(t.path("spool")).unwrap();
    let spool = t.path("spool/alice");
    fs::write(&spool, b"").unwrap();
    let lock = t.path("spool/alice.lock");
    let deliver = |id: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postroom"))
            .args(["deliver", "-f"])
            .arg(&conf)
            .arg("alice")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&message_for(id)).unwrap();
        child.wait_with_output().unwrap()
    };
    // Young and empty: its owner may be writing its pid right now.
    fs::write(&lock, b"").unwrap();
    let out = deliver("young");
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lock.exists());
    // Twenty seconds old and empty: broken.
    let old = std::time::SystemTime::now() - Duration::from_secs(20);
    File::options().write(true).open(&lock).unwrap().set_modified(old).unwrap();
    let out = deliver("after");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!lock.exists());
    let mb = open(&spool);
    assert_eq!(contents(&mb).into_iter().map(|(_, b)| b).collect::<Vec<_>>(), vec![message_for("after")]);
    // Garbage instead of a pid counts as empty.
    fs::write(&lock, b"not a pid\n").unwrap();
    File::options().write(true).open(&lock).unwrap().set_modified(old).unwrap();
    assert!(deliver("garbage").status.success());
}

/// Finding 3: a mailbox whose file holds no base (an empty folder: every
/// user's special-use folders start so) kept its UIDVALIDITY in memory
/// only, and got a new one at every restart.
#[test]
fn issue8_3_an_empty_mailbox_keeps_its_uidvalidity_across_opens() {
    let t = Tmp::new();
    let mut o = opts();
    o.state_dir = Some(t.path("state"));
    let path = t.path("Drafts");
    let (v_drafts, next) = {
        let mb = Mailbox::open(&path, &o, true).unwrap();
        (mb.uidvalidity(), mb.uidnext())
    };
    std::thread::sleep(Duration::from_millis(1100));
    let mb = Mailbox::open(&path, &o, false).unwrap();
    assert_eq!((mb.uidvalidity(), mb.uidnext()), (v_drafts, next), "reopened empty mailbox");
    assert_eq!(fs::read(&path).unwrap(), b"", "nothing written into the empty file");
    drop(mb);

    // Emptied by a tool that truncated the file: UIDNEXT survives too.
    let spool = t.path("spool");
    let (v, next) = {
        let mut mb = Mailbox::open(&spool, &o, true).unwrap();
        for i in 0..3 {
            mb.append(format!("Subject: {i}\n\n{i}\n").as_bytes(), Flags::empty(), &[], None, "s").unwrap();
        }
        fs::write(&spool, b"").unwrap();
        mb.refresh().unwrap();
        assert_eq!(mb.len(), 0);
        (mb.uidvalidity(), mb.uidnext())
    };
    assert_eq!(next, 4);
    let mut mb = Mailbox::open(&spool, &o, false).unwrap();
    assert_eq!((mb.uidvalidity(), mb.uidnext()), (v, next), "after a restart");
    // New mail continues the numbering; once the file has a base, the
    // record goes.
    let (uid, _) = mb.append(b"Subject: n\n\nn\n", Flags::empty(), &[], None, "s").unwrap();
    assert_eq!(uid, 4);
    drop(mb);
    let rec = postroom::store::record::path_of(&t.path("state"), &fs::canonicalize(&spool).unwrap());
    assert!(!rec.exists(), "record left although the file has its base");
    let mb = Mailbox::open(&spool, &o, false).unwrap();
    assert_eq!((mb.uidvalidity(), mb.uidnext()), (v, 5));
    drop(mb);

    // Another file at that path (a folder deleted and made again, while
    // the old inode is still taken) is another mailbox.
    let keep = fs::File::open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let mb = Mailbox::open(&path, &o, true).unwrap();
    assert_ne!(fs::metadata(&path).unwrap().ino(), keep.metadata().unwrap().ino());
    assert_ne!(mb.uidvalidity(), v_drafts);
}

/// Finding 3, as a user meets it: the special-use folders made at the
/// first login, and an empty INBOX, keep UIDVALIDITY and UIDNEXT when the
/// server restarts.
#[test]
fn issue8_3_special_use_folders_keep_uidvalidity_across_a_restart() {
    use support::server::Server;
    let t = Tmp::new();
    let folders = ["INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive"];
    let status = |s: &Server| -> Vec<String> {
        let mut c = s.imap("alice");
        let out = folders
            .iter()
            .map(|f| {
                let r = c.cmd(&format!("STATUS {f} (UIDVALIDITY UIDNEXT)"));
                r.assert_ok();
                r.lines().into_iter().find(|l| l.starts_with("* STATUS")).unwrap()
            })
            .collect();
        c.cmd("LOGOUT");
        out
    };
    let first = {
        let s = Server::start(t.dir.path(), &["alice"], "");
        status(&s)
    };
    std::thread::sleep(Duration::from_millis(1100));
    let s = Server::start(t.dir.path(), &["alice"], "");
    let second = status(&s);
    assert_eq!(first, second);
    assert!(first[1].contains("UIDVALIDITY") && first[1].contains("UIDNEXT 1"), "{first:?}");
}

/// Finding 11: after a damaged spool was put right on disk, the server
/// kept refusing it until it was restarted.
#[test]
fn issue8_11_a_damaged_spool_put_right_is_served_again() {
    use support::server::Server;
    let t = Tmp::new();
    fs::create_dir_all(t.path("spool")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        mb.append(&message_for("one"), Flags::empty(), &[], None, "s").unwrap();
    }
    let s = Server::start(t.dir.path(), &["alice"], "");
    let good = fs::read(s.spool("alice")).unwrap();
    let mut c = s.imap("alice");
    c.cmd("SELECT INBOX").assert_ok();
    c.cmd("LOGOUT");
    let mut bad = b"garbage that is not an mbox\n".to_vec();
    bad.extend_from_slice(&good);
    fs::write(s.spool("alice"), &bad).unwrap();
    let mut c = s.imap("alice");
    let r = c.cmd("SELECT INBOX");
    assert!(r.status.starts_with("NO [CORRUPTION]"), "{r:?}");
    c.cmd("LOGOUT");
    // POP3 clients are told to try again later (SYS/TEMP), not to give up.
    let mut p = support::server::Pop3::connect(s.pop3);
    p.cmd("USER alice");
    let r = p.cmd("PASS secret-alice");
    assert!(r.starts_with("-ERR [SYS/TEMP] The mailbox file is damaged"), "{r}");
    fs::write(s.spool("alice"), &good).unwrap();
    let mut c = s.imap("alice");
    let r = c.cmd("SELECT INBOX");
    assert!(r.ok(), "{r:?}\n{}", s.log_text());
    let r = c.cmd("FETCH 1 BODY.PEEK[]");
    assert!(r.untagged.windows(10).any(|w| w == b"test one\r\n"), "{r:?}");
    // POP3 too.
    let mut p = support::server::Pop3::login(s.pop3, "alice");
    assert!(p.cmd("STAT").starts_with("+OK 1 "));
}

/// Finding 11: a STORE in a session whose selected mailbox another session
/// had just renamed answered OK, and the change was lost.
#[test]
fn issue8_11_store_after_another_session_renamed_the_mailbox_is_kept() {
    use support::server::Server;
    let t = Tmp::new();
    let s = Server::start(t.dir.path(), &["alice"], "");
    let mut a = s.imap("alice");
    a.cmd("CREATE Projects").assert_ok();
    a.append("Projects", "", &message_for("p1")).assert_ok();
    a.cmd("SELECT Projects").assert_ok();
    let mut b = s.imap("alice");
    b.cmd("RENAME Projects Old/Projects-2026").assert_ok();
    let r = a.cmd("STORE 1 +FLAGS (\\Flagged $Important)");
    r.assert_ok();
    a.cmd("LOGOUT");
    let r = b.cmd("SELECT Old/Projects-2026");
    r.assert_ok();
    let r = b.cmd("FETCH 1 (FLAGS BODY.PEEK[])");
    let text = r.text();
    assert!(text.contains("\\Flagged") && text.contains("$Important"), "{text}");
    b.cmd("LOGOUT");
    drop(s);
    let mb = open(&t.path("mail/alice/Old/Projects-2026"));
    assert!(mb.messages()[0].flags.contains(Flags::FLAGGED), "on disk");
    assert_eq!(mb.message_bytes(0).unwrap(), message_for("p1"));
}

/// Found by the mbox fuzz target: a file of CR line ends is refused with
/// its own error (the fuzz target's input `From \x8d\r\x0e`), while a
/// From_ line that merely holds a stray CR before its LF is read as before.
#[test]
fn issue8_fuzz_cr_line_ends_and_a_stray_cr() {
    let t = Tmp::new();
    let p = t.path("mbox");
    for (data, cr_only) in [
        (&b"From \x8d\r\x0e"[..], true),
        (&b"From a Thu Nov 26 16:01:55 2026\rSubject: x\r\rbody\r"[..], true),
        (&b"From x\rThu Nov 26 16:01:55 2026\nSubject: a\n\nb\n"[..], false),
    ] {
        fs::write(&p, data).unwrap();
        let f = File::open(&p).unwrap();
        match scan::scan(&f, 0, data.len() as u64, MboxFormat::Mboxrd) {
            Err(e) => assert!(cr_only && e.to_string() == scan::CR_ONLY, "{e}"),
            Ok(s) => assert!(!cr_only && s.messages.len() == 1),
        }
    }
}

/// RENAME INBOX moves every message out of INBOX (RFC 3501 §6.3.5), an
/// expunge of them all: while a POP3 session holds the maildrop it must be
/// refused like any other expunge, not pull the messages from under it.
#[test]
fn rename_inbox_waits_for_the_pop3_session_that_holds_it() {
    use support::server::{Pop3, Server};
    let t = Tmp::new();
    let s = Server::start(t.dir.path(), &["alice"], "");
    let mut a = s.imap("alice");
    for n in ["r1", "r2"] {
        a.append("INBOX", "", &message_for(n)).assert_ok();
    }
    let mut p = Pop3::login(s.pop3, "alice");
    assert!(p.cmd("STAT").starts_with("+OK 2 "));
    let r = a.cmd("RENAME INBOX Saved");
    assert!(r.status.contains("NO [INUSE]"), "{}", r.status);
    // The POP3 session still has both messages, byte for byte.
    for (i, n) in ["r1", "r2"].iter().enumerate() {
        let (st, body) = p.multi(&format!("RETR {}", i + 1));
        assert!(st.starts_with("+OK"), "{st}");
        assert_eq!(body, message_for(n), "message {n}");
    }
    assert!(p.cmd("QUIT").starts_with("+OK"));
    // Once it has ended, RENAME INBOX goes ahead.
    a.cmd("RENAME INBOX Saved").assert_ok();
    a.cmd("SELECT Saved").assert_ok();
    let text = a.cmd("FETCH 1:* (BODY.PEEK[])").text();
    assert!(text.contains("* 2 FETCH"), "{text}");
    a.cmd("LOGOUT");
    drop(s);
    assert_eq!(open(&t.path("mail/alice/Saved")).message_bytes(1).unwrap(), message_for("r2"));
}

//! IMAP against a real postroomd on 127.0.0.1: every command and its
//! error paths, with the bytes clients get and the mbox files on disk
//! afterwards.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use postroom::store::Flags;
use support::server::{Imap, Pop3, Server};
use support::*;

/// A server with `alice` holding the given messages in her INBOX.
fn server_with(t: &Tmp, msgs: &[Vec<u8>], extra: &str) -> Server {
    fs::create_dir_all(t.path("spool")).unwrap();
    {
        let mut mb = open(&t.path("spool/alice"));
        for m in msgs {
            mb.append(m, Flags::RECENT, &[], Some(1_700_000_000), "sender@example.org").unwrap();
        }
    }
    Server::start(t.dir.path(), &["alice", "bob"], extra)
}

fn ids(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|id| message_for(id)).collect()
}

/// The messages of an mbox as clients see them.
fn on_disk(path: &std::path::Path) -> Vec<Vec<u8>> {
    let mb = open(path);
    contents(&mb).into_iter().map(|(_, b)| b).collect()
}

/// The literal that follows `marker` in a response, e.g. "BODY[] ".
fn literal_after(resp: &[u8], marker: &str) -> Vec<u8> {
    let m = marker.as_bytes();
    let at = resp.windows(m.len()).position(|w| w == m).unwrap_or_else(|| {
        panic!("{marker:?} not in {:?}", String::from_utf8_lossy(resp));
    }) + m.len();
    assert_eq!(resp[at], b'{', "no literal after {marker}: {:?}", String::from_utf8_lossy(&resp[at..]));
    let close = at + resp[at..].iter().position(|&b| b == b'}').unwrap();
    let n: usize = std::str::from_utf8(&resp[at + 1..close]).unwrap().parse().unwrap();
    resp[close + 3..close + 3 + n].to_vec()
}

#[test]
fn greeting_capabilities_and_login() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "");
    let mut c = Imap::connect(s.imap);
    let r = c.cmd("CAPABILITY");
    r.assert_ok();
    let caps = r.lines()[0].clone();
    for want in ["IMAP4rev1", "STARTTLS", "AUTH=PLAIN", "AUTH=LOGIN", "SASL-IR", "LITERAL+", "ID", "IDLE", "ENABLE"] {
        assert!(caps.split(' ').any(|c| c == want), "{want} missing from {caps}");
    }
    assert!(!caps.contains("LOGINDISABLED"), "loopback allows plaintext: {caps}");
    assert!(c.cmd("SELECT INBOX").status.starts_with("BAD"));
    let r = c.cmd("LOGIN alice wrong");
    assert_eq!(r.status, "NO [AUTHENTICATIONFAILED] Authentication failed.");
    let r = c.cmd("LOGIN nosuchuser wrong");
    assert_eq!(r.status, "NO [AUTHENTICATIONFAILED] Authentication failed.");
    let r = c.cmd("LOGIN alice secret-alice");
    assert!(r.status.starts_with("OK [CAPABILITY IMAP4rev1"), "{}", r.status);
    for want in ["UIDPLUS", "MOVE", "NAMESPACE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "IDLE"] {
        assert!(r.status.contains(want), "{want} missing after login: {}", r.status);
    }
    assert!(c.cmd("LOGIN alice secret-alice").status.starts_with("BAD"));
    let r = c.cmd("LOGOUT");
    r.assert_ok();
    assert!(r.text().starts_with("* BYE"));
}

#[test]
fn login_with_literals_and_authenticate() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "");
    // LOGIN with a synchronizing literal for the password.
    let mut c = Imap::connect(s.imap);
    c.send(b"a1 LOGIN alice {12}\r\n");
    assert!(c.line().starts_with("+ "));
    c.send(b"secret-alice\r\n");
    c.read_until_tagged("a1").assert_ok();
    // LITERAL+: no continuation.
    let mut c = Imap::connect(s.imap);
    c.send(b"a1 LOGIN {5+}\r\nalice {12+}\r\nsecret-alice\r\n");
    c.read_until_tagged("a1").assert_ok();
    // AUTHENTICATE PLAIN with an initial response (SASL-IR).
    let mut c = Imap::connect(s.imap);
    let ir = postroom::auth::sasl::encode_b64(b"\0alice\0secret-alice");
    c.cmd(&format!("AUTHENTICATE PLAIN {ir}")).assert_ok();
    // AUTHENTICATE PLAIN without: an empty challenge first.
    let mut c = Imap::connect(s.imap);
    c.send(b"a1 AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.line(), "+ ");
    c.send(format!("{ir}\r\n").as_bytes());
    c.read_until_tagged("a1").assert_ok();
    // AUTHENTICATE LOGIN: user name, then password.
    let mut c = Imap::connect(s.imap);
    c.send(b"a1 AUTHENTICATE LOGIN\r\n");
    assert_eq!(c.line(), "+ VXNlcm5hbWU6");
    c.send(b"YWxpY2U=\r\n");
    assert_eq!(c.line(), "+ UGFzc3dvcmQ6");
    c.send(format!("{}\r\n", postroom::auth::sasl::encode_b64(b"secret-alice")).as_bytes());
    c.read_until_tagged("a1").assert_ok();
    // Cancelled, and an unknown mechanism.
    let mut c = Imap::connect(s.imap);
    c.send(b"a1 AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.line(), "+ ");
    c.send(b"*\r\n");
    assert!(c.read_until_tagged("a1").status.starts_with("BAD"));
    assert!(c.cmd("AUTHENTICATE CRAM-MD5").status.starts_with("NO"));
    let bad = postroom::auth::sasl::encode_b64(b"\0alice\0nope");
    assert_eq!(c.cmd(&format!("AUTHENTICATE PLAIN {bad}")).status, "NO [AUTHENTICATIONFAILED] Authentication failed.");
}

#[test]
fn plaintext_never_means_logindisabled() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "plaintext-auth never\n");
    let mut c = Imap::connect(s.imap);
    let caps = c.cmd("CAPABILITY").lines()[0].clone();
    assert!(caps.contains("LOGINDISABLED") && caps.contains("STARTTLS"), "{caps}");
    assert!(!caps.contains("AUTH=PLAIN"), "{caps}");
    let r = c.cmd("LOGIN alice secret-alice");
    assert!(r.status.starts_with("NO [PRIVACYREQUIRED]"), "{}", r.status);
}

#[test]
fn select_reports_the_mailbox_and_claims_recent() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2", "m3"]), "");
    let mut a = s.imap("alice");
    let r = a.cmd("SELECT INBOX");
    assert_eq!(r.status, "OK [READ-WRITE] Select completed.");
    let uv = open(&s.spool("alice")).uidvalidity();
    assert_eq!(
        r.text(),
        format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n\
             * 3 EXISTS\r\n* 3 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n\
             * OK [UIDVALIDITY {uv}] UIDs valid\r\n* OK [UIDNEXT 4] Predicted next UID\r\n"
        )
    );
    let r = a.cmd("FETCH 1:* (UID FLAGS)");
    assert_eq!(
        r.text(),
        "* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n"
    );
    // A second session finds them no longer recent.
    let mut b = s.imap("alice");
    let r = b.cmd("EXAMINE INBOX");
    assert_eq!(r.status, "OK [READ-ONLY] Examine completed.");
    assert!(r.text().contains("* 0 RECENT\r\n"), "{}", r.text());
    assert!(r.text().contains("[PERMANENTFLAGS ()]"), "{}", r.text());
    assert!(b.cmd("STORE 1 +FLAGS (\\Seen)").status.starts_with("NO [READ-ONLY]"));
    // A missing mailbox.
    assert_eq!(b.cmd("SELECT Nowhere").status, "NO [NONEXISTENT] Mailbox doesn't exist.");
    // The failed SELECT left b unselected.
    assert!(b.cmd("FETCH 1 FLAGS").status.starts_with("BAD"));
}

#[test]
fn fetch_bodies_are_byte_exact() {
    let t = Tmp::new();
    let mut corpus = corpus();
    corpus.retain(|m| !m.is_empty());
    let s = server_with(&t, &corpus, "");
    let mut a = s.imap("alice");
    a.cmd("EXAMINE INBOX").assert_ok();
    for (i, m) in corpus.iter().enumerate() {
        let n = i + 1;
        let want = crlf(m);
        let r = a.cmd(&format!("FETCH {n} (RFC822.SIZE BODY.PEEK[])"));
        r.assert_ok();
        assert!(r.text().starts_with(&format!("* {n} FETCH (RFC822.SIZE {} BODY[] {{", want.len())), "{}", r.text());
        let mut got = literal_after(&r.untagged, "BODY[] ");
        // NUL travels as 0x80 (RFC 3501 §4.3).
        let mut w = want.clone();
        w.iter_mut().filter(|b| **b == 0).for_each(|b| *b = 0x80);
        assert_eq!(got, w, "message {n}");
        // Partial fetches cut the same bytes.
        let r = a.cmd(&format!("FETCH {n} BODY.PEEK[]<3.10>"));
        got = literal_after(&r.untagged, "BODY[]<3> ");
        let end = (3 + 10).min(w.len());
        assert_eq!(got, w[3.min(w.len())..end].to_vec(), "partial of message {n}");
    }
    // HEADER and TEXT of the first message.
    let r = a.cmd("FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT])");
    assert_eq!(literal_after(&r.untagged, "BODY[HEADER] "), b"From: a@example.org\r\nSubject: plain\r\n\r\n");
    assert_eq!(literal_after(&r.untagged, "BODY[TEXT] "), b"Hello.\r\n");
    let r = a.cmd("FETCH 1 (RFC822.HEADER)");
    assert_eq!(literal_after(&r.untagged, "RFC822.HEADER "), b"From: a@example.org\r\nSubject: plain\r\n\r\n");
    // Nothing was marked \Seen: every fetch was a peek on a read-only view.
    let mb = open(&s.spool("alice"));
    assert!(mb.messages().iter().all(|m| !m.flags.contains(Flags::SEEN)));
}

#[test]
fn fetch_sets_seen_and_it_reaches_the_file() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2"]), "");
    let mut a = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    let r = a.cmd("FETCH 2 BODY[]");
    r.assert_ok();
    // \Seen set by the fetch is reported in the same response.
    assert!(r.text().starts_with("* 2 FETCH (FLAGS (\\Seen \\Recent) BODY[] {"), "{}", r.text());
    assert_eq!(literal_after(&r.untagged, "BODY[] "), message_for("m2"));
    let r = a.cmd("UID FETCH 1:* (FLAGS)");
    assert_eq!(r.text(), "* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))\r\n");
    a.cmd("LOGOUT").assert_ok();
    let mb = open(&s.spool("alice"));
    assert!(!mb.messages()[0].flags.contains(Flags::SEEN));
    assert!(mb.messages()[1].flags.contains(Flags::SEEN));
    // Both were taken as recent by the session: no longer recent on disk.
    assert!(mb.messages().iter().all(|m| !m.flags.contains(Flags::RECENT)));
}

#[test]
fn store_flags_and_keywords_persist() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2", "m3"]), "");
    let mut a = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    let r = a.cmd("STORE 1:2 +FLAGS (\\Flagged $Important)");
    assert_eq!(
        r.text(),
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important \\*)] Flags permitted.\r\n\
         * 1 FETCH (FLAGS (\\Flagged $Important \\Recent))\r\n* 2 FETCH (FLAGS (\\Flagged $Important \\Recent))\r\n"
    );
    let r = a.cmd("STORE 2 -FLAGS.SILENT ($Important)");
    assert_eq!(r.text(), "");
    r.assert_ok();
    let r = a.cmd("UID STORE 3 FLAGS (\\Answered \\Seen)");
    assert_eq!(r.text(), "* 3 FETCH (UID 3 FLAGS (\\Answered \\Seen \\Recent))\r\n");
    // \Recent cannot be stored (RFC 3501 §2.3.2); it is ignored.
    a.cmd("STORE 1 +FLAGS (\\Recent)").assert_ok();
    assert!(a.cmd("STORE 9 +FLAGS (\\Seen)").status.starts_with("BAD"));
    a.cmd("LOGOUT").assert_ok();
    let mb = open(&s.spool("alice"));
    let kw = |i: usize| -> Vec<String> {
        (0..mb.keywords().len())
            .filter(|k| mb.messages()[i].keywords & (1 << k) != 0)
            .map(|k| mb.keywords()[k].clone())
            .collect()
    };
    assert_eq!(mb.messages()[0].flags.without(Flags::RECENT), Flags::FLAGGED);
    assert_eq!(kw(0), vec!["$Important"]);
    assert_eq!(mb.messages()[1].flags.without(Flags::RECENT), Flags::FLAGGED);
    assert!(kw(1).is_empty());
    assert_eq!(mb.messages()[2].flags.without(Flags::RECENT), Flags::ANSWERED.union(Flags::SEEN));
    // The bytes are untouched by all this.
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m1", "m2", "m3"]));
}

#[test]
fn expunge_and_uid_expunge_change_the_file() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2", "m3", "m4", "m5"]), "");
    let mut a = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    a.cmd("STORE 2,4 +FLAGS.SILENT (\\Deleted)").assert_ok();
    let r = a.cmd("EXPUNGE");
    assert_eq!(r.status, "OK Expunge completed.");
    assert_eq!(r.text(), "* 4 EXPUNGE\r\n* 2 EXPUNGE\r\n");
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m1", "m3", "m5"]));
    // UID EXPUNGE removes only the named \Deleted messages.
    a.cmd("UID STORE 1,3 +FLAGS.SILENT (\\Deleted)").assert_ok();
    let r = a.cmd("UID EXPUNGE 3");
    assert_eq!(r.text(), "* 2 EXPUNGE\r\n");
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m1", "m5"]));
    // CLOSE expunges silently.
    let r = a.cmd("CLOSE");
    assert_eq!(r.text(), "");
    r.assert_ok();
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m5"]));
    assert!(a.cmd("EXPUNGE").status.starts_with("BAD"), "no mailbox selected");
    // UNSELECT does not.
    a.cmd("SELECT INBOX").assert_ok();
    a.cmd("STORE 1 +FLAGS (\\Deleted)").assert_ok();
    a.cmd("UNSELECT").assert_ok();
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m5"]));
}

#[test]
fn append_with_flags_and_date() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1"]), "");
    let mut a = s.imap("alice");
    let msg = b"From: me@example.org\r\nSubject: appended\r\n\r\nFrom the body\r\n>From quoted\r\n".to_vec();
    let tag = a.next_tag();
    a.send(
        format!("{tag} APPEND INBOX (\\Seen $Label1) \"05-Feb-2024 10:20:30 +0100\" {{{}}}\r\n", msg.len()).as_bytes(),
    );
    assert!(a.line().starts_with("+ "));
    a.send(&msg);
    a.send(b"\r\n");
    let r = a.read_until_tagged(&tag);
    let uv = open(&s.spool("alice")).uidvalidity();
    assert_eq!(r.status, format!("OK [APPENDUID {uv} 2] Append completed."));
    a.cmd("SELECT INBOX").assert_ok();
    let r = a.cmd("FETCH 2 (FLAGS INTERNALDATE RFC822.SIZE)");
    assert_eq!(
        r.text(),
        format!("* 2 FETCH (FLAGS (\\Seen $Label1 \\Recent) INTERNALDATE \"05-Feb-2024 09:20:30 +0000\" RFC822.SIZE {})\r\n", msg.len())
    );
    assert_eq!(on_disk(&s.spool("alice")), vec![message_for("m1"), msg.clone()]);
    // To a mailbox that doesn't exist: TRYCREATE; an empty message: NO.
    let r = a.append("Nowhere", "", b"Subject: x\r\n\r\n");
    assert_eq!(r.status, "NO [TRYCREATE] Mailbox doesn't exist.");
    let r = a.append("INBOX", "", b"");
    assert!(r.status.starts_with("NO"), "{}", r.status);
}

#[test]
fn oversized_literal_is_refused_before_it_is_sent() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "imap-max-literal 1k\n");
    let mut a = s.imap("alice");
    let tag = a.next_tag();
    a.send(format!("{tag} APPEND INBOX {{5000}}\r\n").as_bytes());
    let l = a.line();
    assert!(l.starts_with(&format!("{tag} NO [TOOBIG]")), "{l}");
    // The session goes on.
    a.cmd("NOOP").assert_ok();
    // A non-synchronizing one that is too big ends the session.
    a.send(b"x APPEND INBOX {5000+}\r\n");
    let l = a.line();
    assert!(l.starts_with("* BYE"), "{l}");
}

#[test]
fn copy_and_move_with_copyuid() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2", "m3"]), "");
    let mut a = s.imap("alice");
    a.cmd("CREATE Work").assert_ok();
    a.cmd("SELECT INBOX").assert_ok();
    a.cmd("STORE 1 +FLAGS (\\Flagged)").assert_ok();
    let r = a.cmd("COPY 1:2 Work");
    let wuv = open(&s.mail_dir("alice").join("Work")).uidvalidity();
    assert_eq!(r.status, format!("OK [COPYUID {wuv} 1:2 1:2] Copy completed."));
    assert_eq!(on_disk(&s.mail_dir("alice").join("Work")), ids(&["m1", "m2"]));
    let r = a.cmd("UID MOVE 2:3 Work");
    assert_eq!(r.text(), format!("* OK [COPYUID {wuv} 2:3 3:4] Moved UIDs.\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n"));
    r.assert_ok();
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m1"]));
    assert_eq!(on_disk(&s.mail_dir("alice").join("Work")), ids(&["m1", "m2", "m2", "m3"]));
    let w = open(&s.mail_dir("alice").join("Work"));
    assert!(w.messages()[0].flags.contains(Flags::FLAGGED), "flags travel with the copy");
    assert_eq!(a.cmd("COPY 1 Nowhere").status, "NO [TRYCREATE] Mailbox doesn't exist.");
}

#[test]
fn mailbox_management_list_and_subscriptions() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1"]), "");
    let mut a = s.imap("alice");
    // Special-use folders exist and are subscribed after the first login.
    let r = a.cmd("LIST \"\" \"*\"");
    let lines = r.lines();
    for want in [
        "* LIST (\\HasNoChildren) \"/\" INBOX",
        "* LIST (\\HasNoChildren \\Drafts) \"/\" Drafts",
        "* LIST (\\HasNoChildren \\Sent) \"/\" Sent",
        "* LIST (\\HasNoChildren \\Trash) \"/\" Trash",
        "* LIST (\\HasNoChildren \\Junk) \"/\" Junk",
        "* LIST (\\HasNoChildren \\Archive) \"/\" Archive",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} not in {lines:?}");
    }
    let r = a.cmd("LSUB \"\" \"*\"");
    for f in ["Drafts", "Sent", "Trash", "Junk", "Archive"] {
        assert!(r.lines().contains(&format!("* LSUB () \"/\" {f}")), "{f} not subscribed: {:?}", r.lines());
    }
    assert_eq!(a.cmd("LIST \"\" \"\"").text(), "* LIST (\\Noselect) \"/\" \"\"\r\n");
    // Hierarchy, modified UTF-7, trailing separators.
    a.cmd("CREATE Projects/2024").assert_ok();
    a.cmd("CREATE \"Entw&APw-rfe\"").assert_ok();
    assert!(s.mail_dir("alice").join("Entwürfe").is_file());
    assert!(s.mail_dir("alice").join("Projects/2024").is_file());
    assert_eq!(a.cmd("CREATE Projects/2024").status, "NO [ALREADYEXISTS] Mailbox already exists.");
    assert_eq!(a.cmd("CREATE INBOX").status, "NO [ALREADYEXISTS] Mailbox already exists.");
    let r = a.cmd("LIST \"\" \"%\"");
    assert!(r.lines().contains(&"* LIST (\\Noselect \\HasChildren) \"/\" Projects".to_string()), "{:?}", r.lines());
    assert!(
        r.lines().contains(&"* LIST (\\HasNoChildren) \"/\" \"Entw&APw-rfe\"".to_string())
            || r.lines().contains(&"* LIST (\\HasNoChildren) \"/\" Entw&APw-rfe".to_string()),
        "{:?}",
        r.lines()
    );
    assert!(!r.text().contains("2024"));
    let r = a.cmd("LIST Projects/ %");
    assert_eq!(r.text(), "* LIST (\\HasNoChildren) \"/\" Projects/2024\r\n");
    // The reference is joined as it is (curl's `imap://host/INBOX`).
    assert_eq!(a.cmd("LIST INBOX *").text(), "* LIST (\\HasNoChildren) \"/\" INBOX\r\n");
    let r = a.cmd("LIST Projects *");
    assert_eq!(
        r.lines(),
        vec!["* LIST (\\Noselect \\HasChildren) \"/\" Projects", "* LIST (\\HasNoChildren) \"/\" Projects/2024"]
    );
    let r = a.cmd("LIST \"\" Projects/2024/");
    assert_eq!(r.text(), "* LIST (\\HasNoChildren) \"/\" Projects/2024\r\n");
    a.cmd("SELECT Projects/2024/").assert_ok();
    // SPECIAL-USE selection (RFC 6154 with RFC 5258 syntax).
    let r = a.cmd("LIST (SPECIAL-USE) \"\" \"*\"");
    assert_eq!(r.lines().len(), 5, "{:?}", r.lines());
    // RENAME moves subscriptions along.
    a.cmd("SUBSCRIBE Projects/2024").assert_ok();
    a.cmd("RENAME Projects Old").assert_ok();
    assert!(s.mail_dir("alice").join("Old/2024").is_file());
    let r = a.cmd("LSUB \"\" Old/*");
    assert_eq!(r.text(), "* LSUB () \"/\" Old/2024\r\n");
    a.cmd("UNSUBSCRIBE Old/2024").assert_ok();
    assert_eq!(a.cmd("LSUB \"\" Old/*").text(), "");
    // DELETE.
    a.cmd("DELETE Old/2024").assert_ok();
    assert!(!s.mail_dir("alice").join("Old/2024").exists());
    assert_eq!(a.cmd("DELETE INBOX").status, "NO [CANNOT] INBOX can't be deleted.");
    assert_eq!(a.cmd("DELETE Nowhere").status, "NO [NONEXISTENT] Mailbox doesn't exist.");
    // Names that would leave the mail directory.
    assert!(a.cmd("CREATE ../escape").status.starts_with("NO [CANNOT]"));
    assert!(a.cmd("SELECT ../../spool/bob").status.starts_with("NO"));
    // NAMESPACE with the empty personal prefix.
    assert_eq!(a.cmd("NAMESPACE").text(), "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
}

#[test]
fn rename_inbox_moves_the_mail() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2"]), "");
    let mut a = s.imap("alice");
    let uv = open(&s.spool("alice")).uidvalidity();
    a.cmd("RENAME INBOX Saved").assert_ok();
    assert_eq!(on_disk(&s.mail_dir("alice").join("Saved")), ids(&["m1", "m2"]));
    let inbox = open(&s.spool("alice"));
    assert!(inbox.is_empty());
    assert_eq!(inbox.uidvalidity(), uv);
    let r = a.cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)");
    assert_eq!(r.text(), format!("* STATUS INBOX (MESSAGES 0 UIDNEXT 3 UIDVALIDITY {uv} UNSEEN 0 RECENT 0)\r\n"));
    let r = a.cmd("STATUS Saved (MESSAGES UNSEEN)");
    assert_eq!(r.text(), "* STATUS Saved (MESSAGES 2 UNSEEN 2)\r\n");
}

#[test]
fn search_keys() {
    let t = Tmp::new();
    let msgs = vec![
        b"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: Lunch on Friday\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nShall we meet at noon?\r\n".to_vec(),
        b"From: carl@example.org\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\r\nA longer body with the word invoice in it.\r\n".to_vec(),
        b"From: ann@example.org\r\nSubject: invoice\r\n\r\nsmall\r\n".to_vec(),
    ];
    let s = server_with(&t, &msgs, "");
    let mut a = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    a.cmd("STORE 2 +FLAGS (\\Seen)").assert_ok();
    for (q, want) in [
        ("SEARCH ALL", "* SEARCH 1 2 3"),
        ("SEARCH FROM ann", "* SEARCH 1 3"),
        ("SEARCH SUBJECT lunch", "* SEARCH 1"),
        ("SEARCH CHARSET UTF-8 SUBJECT \"Grüße\"", "* SEARCH 2"),
        ("SEARCH BODY invoice", "* SEARCH 2"),
        ("SEARCH TEXT invoice", "* SEARCH 2 3"),
        ("SEARCH SEEN", "* SEARCH 2"),
        ("SEARCH UNSEEN", "* SEARCH 1 3"),
        ("SEARCH NOT SEEN FROM ann", "* SEARCH 1 3"),
        ("SEARCH OR SUBJECT lunch SUBJECT invoice", "* SEARCH 1 3"),
        ("SEARCH SENTBEFORE 2-Jan-2024", "* SEARCH 1"),
        ("SEARCH 2:*", "* SEARCH 2 3"),
        ("UID SEARCH UID 2:*", "* SEARCH 2 3"),
        ("SEARCH (FROM ann SMALLER 100)", "* SEARCH 3"),
        ("SEARCH HEADER To bob", "* SEARCH 1"),
    ] {
        let r = a.cmd(q);
        r.assert_ok();
        assert_eq!(r.lines(), vec![want.to_string()], "{q}");
    }
    assert!(a.cmd("SEARCH CHARSET KOI8-R ALL").status.starts_with("NO [BADCHARSET"));
    assert!(a.cmd("SEARCH FROZZLE").status.starts_with("BAD"));
}

#[test]
fn bad_commands_get_bad_and_the_session_goes_on() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1"]), "");
    let mut a = s.imap("alice");
    for bad in ["FROB", "SELECT", "FETCH 1", "LIST \"\"", "STORE 1 FLAGS", "SEARCH (ALL"] {
        let r = a.cmd(bad);
        assert!(r.status.starts_with("BAD"), "{bad}: {}", r.status);
    }
    a.send(b"\r\n");
    assert!(a.line().starts_with("* BAD"));
    a.cmd("SELECT INBOX").assert_ok();
    assert!(a.cmd("FETCH 0 FLAGS").status.starts_with("BAD"));
    assert!(a.cmd("FETCH 2 FLAGS").status.starts_with("BAD"));
    assert!(a.cmd("FETCH 1 (FLAGS").status.starts_with("BAD"));
    a.cmd("FETCH 1 FLAGS").assert_ok();
    // Twenty in a row and the server hangs up.
    for _ in 0..19 {
        a.send(b"x FROB\r\n");
        assert!(a.line().starts_with("x BAD"));
    }
    a.send(b"x FROB\r\n");
    assert!(a.line().starts_with("x BAD"));
    assert!(a.line().starts_with("* BYE"));
}

#[test]
fn a_second_session_sees_flags_expunges_and_new_mail() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2", "m3"]), "");
    let mut a = s.imap("alice");
    let mut b = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    b.cmd("SELECT INBOX").assert_ok();
    a.cmd("STORE 2 +FLAGS (\\Flagged)").assert_ok();
    assert_eq!(b.cmd("NOOP").text(), "* 2 FETCH (FLAGS (\\Flagged))\r\n");
    a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").assert_ok();
    a.cmd("EXPUNGE").assert_ok();
    // Not during FETCH (RFC 3501 §7.4.1): numbers stay as b knows them.
    let r = b.cmd("FETCH 3 (UID)");
    assert_eq!(r.text(), "* 3 FETCH (UID 3)\r\n");
    // Flag notices of the expunged message are not sent; the EXPUNGE is.
    let r = b.cmd("NOOP");
    assert_eq!(r.text(), "* 1 EXPUNGE\r\n");
    // New mail, appended by another session and by the MTA.
    a.append("INBOX", "", b"Subject: new\r\n\r\nnew\r\n").assert_ok();
    let r = b.cmd("NOOP");
    assert_eq!(r.text(), "* 3 EXISTS\r\n* 0 RECENT\r\n");
    deliver(&s, "alice", b"Subject: from the MTA\r\n\r\nhi\r\n");
    let r = b.cmd("NOOP");
    assert!(r.text().contains("* 4 EXISTS\r\n"), "{}", r.text());
    let r = b.cmd("FETCH 4 BODY.PEEK[TEXT]");
    assert_eq!(literal_after(&r.untagged, "BODY[TEXT] "), b"hi\r\n");
}

/// Delivers as the MTA does: `postroom deliver` into the user's INBOX.
fn deliver(s: &Server, user: &str, msg: &[u8]) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postroom"));
    cmd.args(["deliver", "-f"]).arg(&s.conf).arg(user).stdin(Stdio::piped());
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        let nobody = postroom::auth::passwd::system_account("nobody").unwrap().unwrap();
        cmd.uid(nobody.uid.unwrap()).gid(nobody.gid.unwrap());
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(msg).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn idle_hears_other_sessions_and_the_mta() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1"]), "imap-idle-keepalive 1s\n");
    let mut a = s.imap("alice");
    let mut b = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    b.cmd("SELECT INBOX").assert_ok();
    b.send(b"i1 IDLE\r\n");
    assert_eq!(b.line(), "+ idling");
    a.cmd("STORE 1 +FLAGS (\\Answered)").assert_ok();
    assert_eq!(b.line(), "* 1 FETCH (FLAGS (\\Answered))");
    deliver(&s, "alice", b"Subject: while idle\r\n\r\nhello\r\n");
    let started = Instant::now();
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l == "* 2 EXISTS") {
        assert!(started.elapsed() < Duration::from_secs(20), "no EXISTS in IDLE: {lines:?}");
        let l = b.line();
        assert!(!l.is_empty(), "connection closed in IDLE");
        lines.push(l);
    }
    // The keepalive comes while nothing happens.
    loop {
        let l = b.line();
        assert!(started.elapsed() < Duration::from_secs(20), "no keepalive");
        if l == "* OK Still here" {
            break;
        }
    }
    b.send(b"DONE\r\n");
    let r = b.read_until_tagged("i1");
    assert_eq!(r.status, "OK Idle completed.");
    // Anything but DONE ends IDLE with BAD.
    b.send(b"i2 IDLE\r\n");
    assert_eq!(b.line(), "+ idling");
    b.send(b"NOPE\r\n");
    assert!(b.read_until_tagged("i2").status.starts_with("BAD"));
}

#[test]
fn expunge_waits_for_a_pop3_session() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1", "m2"]), "");
    let mut p = Pop3::login(s.pop3, "alice");
    let mut a = s.imap("alice");
    let r = a.cmd("SELECT INBOX");
    r.assert_ok();
    assert!(r.text().contains("* OK [ALERT] A POP3 session is reading this mailbox"), "{}", r.text());
    a.cmd("STORE 1 +FLAGS (\\Deleted)").assert_ok();
    let r = a.cmd("EXPUNGE");
    assert!(r.status.starts_with("NO [INUSE]"), "{}", r.status);
    assert_eq!(on_disk(&s.spool("alice")).len(), 2);
    assert!(a.cmd("MOVE 2 Trash").status.starts_with("NO [INUSE]"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
    a.cmd("EXPUNGE").assert_ok();
    assert_eq!(on_disk(&s.spool("alice")), ids(&["m2"]));
}

#[test]
fn id_enable_check_and_status_of_selected() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1"]), "");
    let mut a = Imap::connect(s.imap);
    let r = a.cmd("ID (\"name\" \"test client\" \"version\" \"1\")");
    assert!(r.text().starts_with("* ID (\"name\" \"postroom\""), "{}", r.text());
    let mut a = s.imap("alice");
    assert_eq!(a.cmd("ENABLE CONDSTORE").text(), "* ENABLED\r\n");
    a.cmd("SELECT INBOX").assert_ok();
    a.cmd("CHECK").assert_ok();
    let r = a.cmd("STATUS INBOX (MESSAGES)");
    assert_eq!(r.text(), "* STATUS INBOX (MESSAGES 1)\r\n");
}

/// Records of a `tests/fixtures/mime/NAME.expected` file: (item, value).
fn expected_records(name: &str) -> Vec<(String, Vec<u8>)> {
    let data = fs::read(format!("{}/tests/fixtures/mime/{name}.expected", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let nl = at + data[at..].iter().position(|&b| b == b'\n').unwrap();
        let head = std::str::from_utf8(&data[at..nl]).unwrap();
        let mut it = head.splitn(3, ' ');
        assert_eq!(it.next(), Some("=="));
        let len: usize = it.next().unwrap().parse().unwrap();
        let item = it.next().unwrap().to_string();
        out.push((item, data[nl + 1..nl + 1 + len].to_vec()));
        at = nl + 1 + len + 1;
    }
    out
}

#[test]
fn envelope_and_bodystructure_over_the_wire_match_dovecot() {
    // CRLF messages: stored and served back unchanged, so Dovecot's
    // recorded answers apply to them as they are.
    let names = [
        "alternative-in-mixed",
        "deep-multipart",
        "rfc822-nested",
        "rfc822-in-rfc822",
        "encoded-words",
        "missing-headers",
        "groups",
        "rfc2231",
        "language-location",
        "digest",
        "signed",
        "preamble-epilogue",
    ];
    let msgs: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(format!("{}/tests/fixtures/mime/{n}.eml", env!("CARGO_MANIFEST_DIR"))).unwrap())
        .collect();
    let t = Tmp::new();
    let s = server_with(&t, &msgs, "");
    let mut a = s.imap("alice");
    a.cmd("EXAMINE INBOX").assert_ok();
    let mut compared = 0;
    for (i, name) in names.iter().enumerate() {
        let n = i + 1;
        for (item, want) in expected_records(name) {
            compared += 1;
            let fetch = match item.as_str() {
                "INPUT" => continue,
                "ENVELOPE" | "BODYSTRUCTURE" | "BODY" => item.clone(),
                s if s.starts_with("BODY[") => s.replacen("BODY[", "BODY.PEEK[", 1),
                other => panic!("unknown record {other}"),
            };
            let r = a.cmd(&format!("FETCH {n} {fetch}"));
            r.assert_ok();
            let prefix = format!("* {n} FETCH ({item} ");
            let text = r.untagged.clone();
            assert!(text.starts_with(prefix.as_bytes()), "{name} {item}: {:?}", String::from_utf8_lossy(&text));
            let got = &text[prefix.len()..text.len() - 3];
            assert!(text.ends_with(b")\r\n"));
            assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(&want), "{name} {item}");
        }
    }
    // ENVELOPE, BODYSTRUCTURE, BODY and dozens of sections per message.
    assert!(compared > 30 * names.len(), "only {compared} records");
}

#[test]
fn nesting_is_bounded_and_the_server_survives() {
    let t = Tmp::new();
    let s = server_with(&t, &ids(&["m1"]), "imap-max-nesting 100\n");
    let mut a = s.imap("alice");
    a.cmd("SELECT INBOX").assert_ok();
    let deep = |n: usize| format!("SEARCH {}ALL{}", "(".repeat(n), ")".repeat(n));
    let r = a.cmd(&deep(99));
    r.assert_ok();
    assert_eq!(r.lines(), vec!["* SEARCH 1"]);
    assert!(a.cmd(&deep(150)).status.starts_with("BAD"));
    assert!(a.cmd(&format!("SEARCH {}ALL", "NOT ".repeat(5000))).status.starts_with("BAD"));
    let r = a.cmd(&format!("SEARCH {}ALL", "NOT ".repeat(97)));
    assert_eq!(r.lines(), vec!["* SEARCH"]);
    a.cmd("NOOP").assert_ok();
}

#[test]
fn a_recreated_mailbox_never_reuses_uids() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "");
    let mut a = s.imap("alice");
    a.cmd("CREATE Box").assert_ok();
    let r = a.append("Box", "", b"Subject: one\r\n\r\n1\r\n");
    let first = r.status.clone();
    assert!(first.starts_with("OK [APPENDUID "), "{first}");
    a.cmd("DELETE Box").assert_ok();
    a.cmd("CREATE Box").assert_ok();
    let r = a.append("Box", "", b"Subject: two\r\n\r\n2\r\n");
    let uv = |st: &str| st.split(' ').nth(2).unwrap().to_string();
    assert_ne!(uv(&r.status), uv(&first), "same UIDVALIDITY after DELETE and CREATE: {} / {first}", r.status);
    // Renamed away and made again: the same.
    a.cmd("RENAME Box Old").assert_ok();
    a.cmd("CREATE Box").assert_ok();
    let r2 = a.append("Box", "", b"Subject: three\r\n\r\n3\r\n");
    assert_ne!(uv(&r2.status), uv(&r.status));
    // The renamed mailbox kept its UIDVALIDITY and its message.
    let st = a.cmd("STATUS Old (MESSAGES UIDVALIDITY)");
    assert_eq!(st.text(), format!("* STATUS Old (MESSAGES 1 UIDVALIDITY {})\r\n", uv(&r.status)));
}

#[test]
fn lsub_lists_unsubscribed_parents_as_noselect() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "special-use none\n");
    let mut a = s.imap("alice");
    for m in ["top/a/x", "top/b"] {
        a.cmd(&format!("CREATE {m}")).assert_ok();
        a.cmd(&format!("SUBSCRIBE {m}")).assert_ok();
    }
    let r = a.cmd("LSUB \"\" top/%");
    let mut lines = r.lines();
    lines.sort();
    assert_eq!(lines, vec!["* LSUB () \"/\" top/b", "* LSUB (\\Noselect) \"/\" top/a"]);
    assert_eq!(a.cmd("LSUB \"\" %").lines(), vec!["* LSUB (\\Noselect) \"/\" top"]);
    // Not modified UTF-7: a name that cannot exist, so NO rather than BAD.
    assert!(a.cmd("SELECT \"&Jjo\"").status.starts_with("NO [CANNOT]"));
}

#[test]
fn imap_sessions_expunging_inbox_at_once_take_turns() {
    let t = Tmp::new();
    let names: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = server_with(&t, &ids(&refs), "");
    let port = s.imap;
    let handles: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = Imap::login(port, "alice");
                c.cmd("SELECT INBOX").assert_ok();
                let mut statuses = Vec::new();
                for i in 0..10 {
                    let uid = w * 10 + i + 1;
                    c.cmd(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)")).assert_ok();
                    statuses.push(c.cmd("EXPUNGE").status);
                }
                statuses
            })
        })
        .collect();
    for h in handles {
        for st in h.join().unwrap() {
            assert_eq!(st, "OK Expunge completed.");
        }
    }
    assert!(on_disk(&s.spool("alice")).is_empty());
}

#[test]
fn first_logins_at_once_subscribe_every_special_use_folder() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "");
    let port = s.imap;
    let handles: Vec<_> = (0..8).map(|_| std::thread::spawn(move || Imap::login(port, "bob"))).collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut b = s.imap("bob");
    let mut lines = b.cmd("LSUB \"\" *").lines();
    lines.sort();
    assert_eq!(lines, ["Archive", "Drafts", "Junk", "Sent", "Trash"].map(|f| format!("* LSUB () \"/\" {f}")).to_vec());
}

/// The finding: `LIST "" {1048576}` with a 1 MB pattern cost 14 s of CPU
/// (the matcher's work grew with pattern length times name length, for
/// every name). A pattern over the limit is refused with `NO [LIMIT]`;
/// a pattern of many wildcards against long names is answered, right.
#[test]
fn list_with_a_huge_or_pathological_pattern_is_answered() {
    let t = Tmp::new();
    let s = server_with(&t, &[], "special-use none\n");
    let mut a = s.imap("alice");
    // Long names (each component at most 200 bytes), some nested.
    let long = "a".repeat(199);
    let names = [
        format!("{long}b"),
        format!("{long}a"),
        format!("{long}/{long}b"),
        format!("{long}/{long}/{long}/{long}b"),
        "short".to_string(),
    ];
    for n in &names {
        a.cmd(&format!("CREATE {n}")).assert_ok();
    }
    // A 1 MB literal pattern, then one just over the limit, made of
    // wildcards and letters: both refused, the session goes on.
    for pattern in ["*a".repeat(512 << 10), "a".repeat(postroom::limits::LIST_PATTERN_MAX_BYTES + 1)] {
        let tag = a.next_tag();
        a.send(format!("{tag} LIST \"\" {{{}}}\r\n", pattern.len()).as_bytes());
        assert!(a.line().starts_with('+'), "no continuation for the literal");
        a.send(pattern.as_bytes());
        a.send(b"\r\n");
        let r = a.read_until_tagged(&tag);
        assert_eq!(r.status, "NO [LIMIT] Mailbox pattern too long.");
        assert_eq!(r.text(), "");
    }
    let too_many = "*".repeat(postroom::limits::LIST_PATTERN_MAX_WILDCARDS + 1);
    let r = a.cmd(&format!("LIST \"\" \"{too_many}\""));
    assert_eq!(r.status, "NO [LIMIT] Too many wildcards in the mailbox pattern.");
    // Many wildcards, at the limit: a matcher that backtracks would try
    // every way of splitting 800 bytes among them. `%` stays within one
    // level, `*` does not. The parents the nested names made are folders
    // too (`long` is one, a `\Noselect` one).
    let half = postroom::limits::LIST_PATTERN_MAX_WILDCARDS / 2;
    let stars_a = "*a".repeat(half);
    let pct_a = "%a".repeat(half);
    let listed = |r: &support::server::Resp| -> Vec<String> {
        r.assert_ok();
        let mut v: Vec<String> =
            r.lines().iter().map(|l| l.rsplit(' ').next().unwrap().trim_matches('"').to_string()).collect();
        v.sort();
        v
    };
    let sorted = |v: &[&String]| -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(listed(&a.cmd(&format!("LIST \"\" \"{stars_a}*b\""))), sorted(&[&names[0], &names[2], &names[3]]));
    assert_eq!(listed(&a.cmd(&format!("LIST \"\" \"{stars_a}/%b\""))), sorted(&[&names[2], &names[3]]));
    assert_eq!(listed(&a.cmd(&format!("LIST \"\" \"{pct_a}/%b\""))), sorted(&[&names[2]]));
    assert_eq!(listed(&a.cmd(&format!("LIST \"\" \"{pct_a}\""))), sorted(&[&long, &names[1]]));
    let r = a.cmd(&format!("LIST \"\" \"{stars_a}c\""));
    assert_eq!((r.status.as_str(), r.text()), ("OK List completed.", String::new()));
    // LSUB takes the same patterns.
    a.cmd(&format!("SUBSCRIBE {}", names[0])).assert_ok();
    let r = a.cmd(&format!("LSUB \"\" \"{stars_a}*b\""));
    assert_eq!(r.lines(), vec![format!("* LSUB () \"/\" {}", names[0])]);
    let r = a.cmd(&format!("LSUB \"\" \"{too_many}\""));
    assert_eq!(r.status, "NO [LIMIT] Too many wildcards in the mailbox pattern.");
    // Still alive.
    a.cmd("LIST \"\" short").assert_ok();
}

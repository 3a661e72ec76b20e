//! Real IMAP clients against a real postroomd on 127.0.0.1: Python's
//! imaplib (tests/imap_walk.py), curl, mbsync (isync) and fetchmail, over
//! plain IMAP, STARTTLS and implicit TLS with the server's generated
//! certificate verified. What each client received is compared byte for
//! byte with what was stored, and the mbox files on disk are read back with
//! the store's own API after every change a client made.
//!
//! A client that is not installed is skipped with a "SKIP:" line; CI
//! installs them all (python3, curl, isync, fetchmail). Every client runs
//! in its own process group under a time limit and is killed when it
//! overruns.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use postroom::store::Flags;
use support::clients::*;
use support::server::{give_to_nobody, Server};
use support::*;

/// The INTERNALDATE of the stored messages: 14-Nov-2023 22:13:20 +0000.
const STORED: i64 = 1_700_000_000;

// ------------------------------------------------------------- messages

/// A multipart message: a text part and a base64 attachment.
fn multipart() -> Vec<u8> {
    b"From: Multi Part <multi@example.org>\r\nTo: alice@example.org\r\nSubject: parts\r\n\
      Message-ID: <parts@postroom.test>\r\nMIME-Version: 1.0\r\n\
      Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
      preamble\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThe text part.\r\nSecond line.\r\n\
      --b1\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\
      Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAECAwQFBgcICQ==\r\n--b1--\r\nepilogue\r\n"
        .to_vec()
}

/// UTF-8 in the body and an RFC 2047 subject.
fn eightbit() -> Vec<u8> {
    "From: =?UTF-8?Q?Zo=C3=AB?= <zoe@example.org>\r\nTo: Alice <alice@example.org>, bob@example.org\r\n\
     Cc: \"Carl, Jr.\" <carl@example.org>\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\n\
     Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <walk-5@postroom.test>\r\n\
     In-Reply-To: <walk-1@postroom.test>\r\nMIME-Version: 1.0\r\n\
     Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
     caf\u{e9} \u{2713}\r\nFrom here on\r\n"
        .as_bytes()
        .to_vec()
}

/// The five messages stored in alice's INBOX before a walk, in order.
fn inbox() -> Vec<Vec<u8>> {
    vec![message_for("walk-1"), multipart(), message_for("walk-3"), big(), eightbit()]
}

/// A running server with `messages` in alice's INBOX, stored as new mail.
fn server_with(t: &Tmp, messages: &[Vec<u8>], extra: &str) -> Server {
    support::clients::server_with(t, messages, Flags::RECENT, Some(STORED), extra)
}

/// UID, flags (without \Recent) and keywords of every message.
fn state(s: &Server, name: &str) -> Vec<(u32, Flags, Vec<String>)> {
    let mb = mailbox(s, name);
    mb.messages()
        .iter()
        .map(|m| {
            let kw = (0..mb.keywords().len())
                .filter(|k| m.keywords & (1 << k) != 0)
                .map(|k| mb.keywords()[k].clone())
                .collect();
            (m.uid, m.flags.without(Flags::RECENT), kw)
        })
        .collect()
}

fn uidvalidity(s: &Server, name: &str) -> u32 {
    mailbox(s, name).uidvalidity()
}

// --------------------------------------------------------------- imaplib

/// Runs tests/imap_walk.py in `mode` with its output in `dir`; at each
/// "CHECK label" line it prints, `at(label)` runs before the script goes
/// on. Returns the transcript without the CHECK lines.
fn walk(s: &Server, dir: &Path, mode: &str, mut at: impl FnMut(&str)) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/imap_walk.py");
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let mut cmd = python3();
    cmd.arg(script)
        .arg(mode)
        .arg(&out)
        .arg(dir.join("mail"))
        .arg(s.imap.to_string())
        .arg(s.imaps.to_string())
        .arg(cert(s))
        .arg(CERT_NAME)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut g = Group(cmd.spawn().expect("start python3"));
    let mut stdin = g.0.stdin.take().unwrap();
    let err = drain(g.0.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(g.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    loop {
        let left = LIMIT.checked_sub(start.elapsed()).unwrap_or_default();
        match rx.recv_timeout(left) {
            Ok(line) => match line.strip_prefix("CHECK ") {
                Some(label) => {
                    at(label);
                    stdin.write_all(b"go\n").unwrap();
                    stdin.flush().unwrap();
                }
                None => lines.push(line),
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                drop(g);
                panic!("imap_walk.py {mode} still running after {LIMIT:?}, killed; so far:\n{}", lines.join("\n"));
            }
        }
    }
    let status = g.0.wait().unwrap();
    let err = err.join().unwrap();
    assert!(
        status.success(),
        "imap_walk.py {mode}: {status}\n--- stdout\n{}\n--- stderr\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&err)
    );
    lines
}

/// Writes the messages the walk appends into `dir`/mail.
fn walk_mail(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let m = vec![
        ("append", b"From: me@example.org\r\nSubject: appended\r\n\r\nFrom the body\r\n>From quoted\r\n".to_vec()),
        ("append-work", message_for("walk-work")),
        ("append-draft", b"From: me@example.org\r\nSubject: draft\r\n\r\nnot yet\r\n".to_vec()),
        ("idle", b"From: other@example.org\r\nSubject: while idle\r\n\r\nhello\r\n".to_vec()),
    ];
    fs::create_dir_all(dir.join("mail")).unwrap();
    for (name, bytes) in &m {
        fs::write(dir.join("mail").join(format!("{name}.eml")), bytes).unwrap();
    }
    m
}

/// `name {n} <file>`: a literal as the walk's transcript shows it.
fn lit(head: &str, bytes: &[u8], file: &str) -> String {
    format!("{head} {{{}}} <{file}>", bytes.len())
}

/// The header of a message, with its blank line, and the rest.
fn split(m: &[u8]) -> (&[u8], &[u8]) {
    let end = m.windows(4).position(|w| w == b"\r\n\r\n").expect("header end") + 4;
    m.split_at(end)
}

const CAPS_BEFORE: &str = "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE STARTTLS AUTH=PLAIN AUTH=LOGIN";
const CAPS_AFTER: &str =
    "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT CHILDREN SPECIAL-USE MOVE";
const FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

/// What BODYSTRUCTURE and ENVELOPE are for the walk's messages (Dovecot
/// 2.3 answers the same, byte for byte).
const STRUCTURE_1: &str = "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 742 21 NIL NIL NIL NIL)";
const STRUCTURE_2: &str = "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 28 1 NIL NIL NIL NIL)\
     (\"application\" \"octet-stream\" (\"name\" \"a.bin\") NIL NIL \"base64\" 16 NIL \
     (\"attachment\" (\"filename\" \"a.bin\")) NIL NIL) \"mixed\" (\"boundary\" \"b1\") NIL NIL NIL)";
const ENVELOPE_5: &str = "(\"Mon, 1 Jan 2024 10:00:00 +0000\" \"=?UTF-8?Q?caf=C3=A9?=\" \
     ((\"=?UTF-8?Q?Zo=C3=AB?=\" NIL \"zoe\" \"example.org\")) ((\"=?UTF-8?Q?Zo=C3=AB?=\" NIL \"zoe\" \"example.org\")) \
     ((\"=?UTF-8?Q?Zo=C3=AB?=\" NIL \"zoe\" \"example.org\")) \
     ((\"Alice\" NIL \"alice\" \"example.org\")(NIL NIL \"bob\" \"example.org\")) \
     ((\"Carl, Jr.\" NIL \"carl\" \"example.org\")) NIL \"<walk-1@postroom.test>\" \"<walk-5@postroom.test>\")";

#[test]
fn python_imaplib_walks_every_command() {
    if !have("python3") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let inbox = inbox();
    let s = server_with(&t, &inbox, "");
    let uv = uidvalidity(&s, "INBOX");
    let extra = walk_mail(c.dir.path());
    let (appended, append_work, append_draft, idle) = (&extra[0].1, &extra[1].1, &extra[2].1, &extra[3].1);
    let (m1, parts, m3, big, m5) = (&inbox[0], &inbox[1], &inbox[2], &inbox[3], &inbox[4]);
    let none = Flags::empty();
    let kw = |k: &[&str]| -> Vec<String> { k.iter().map(|s| s.to_string()).collect() };
    let got = walk(&s, c.dir.path(), "plain", |label| match label {
        "mailboxes" => {
            let dir = s.mail_dir("alice");
            assert!(dir.join("Work").is_file() && dir.join("Entwürfe").is_file());
            assert!(!dir.join("Old").exists() && !dir.join("Projects").exists());
            let subs = fs::read_to_string(dir.join(".subscriptions")).unwrap();
            assert_eq!(subs, "Drafts\nSent\nTrash\nJunk\nArchive\nWork\n");
        }
        "append" => {
            let mut want = inbox.clone();
            want.push(appended.clone());
            assert_eq!(on_disk(&s, "INBOX"), want);
            let mb = mailbox(&s, "INBOX");
            let m = &mb.messages()[5];
            // New mail until a read-write session learns of it.
            assert_eq!((m.uid, m.flags, m.date), (6, Flags::SEEN.union(Flags::RECENT), 1_707_124_830));
            assert_eq!(state(&s, "INBOX")[5].2, kw(&["$Label1"]));
            // EXAMINE neither took \Recent nor set \Seen.
            assert!(mb.messages()[..5].iter().all(|m| m.flags == Flags::RECENT));
            assert_eq!(on_disk(&s, "Work"), vec![append_work.clone()]);
            assert_eq!(on_disk(&s, "Drafts"), vec![append_draft.clone()]);
            assert_eq!(state(&s, "Drafts"), vec![(1, Flags::DRAFT, vec![])]);
        }
        "store" => {
            let mb = mailbox(&s, "INBOX");
            assert!(mb.messages().iter().all(|m| !m.flags.contains(Flags::RECENT)), "SELECT took \\Recent");
            assert_eq!(
                state(&s, "INBOX"),
                vec![
                    (1, Flags::FLAGGED, vec![]),
                    (2, Flags::ANSWERED, kw(&["$Work"])),
                    (3, Flags::SEEN, vec![]),
                    (4, none, vec![]),
                    (5, none, vec![]),
                    (6, Flags::SEEN, kw(&["$Label1"])),
                ]
            );
        }
        "copy" => {
            assert_eq!(on_disk(&s, "Work"), vec![append_work.clone(), m1.clone(), parts.clone()]);
            let st = state(&s, "Work");
            assert_eq!(st[1..], [(2, Flags::FLAGGED, vec![]), (3, Flags::ANSWERED, kw(&["$Work"]))]);
            assert_eq!(on_disk(&s, "INBOX").len(), 6);
        }
        "move" => {
            assert_eq!(
                on_disk(&s, "INBOX"),
                vec![m1.clone(), parts.clone(), big.clone(), m5.clone(), appended.clone()]
            );
            assert_eq!(on_disk(&s, "Work")[3], *m3);
            assert_eq!(state(&s, "Work")[3], (4, Flags::SEEN, vec![]));
        }
        "uid" => {
            assert_eq!(on_disk(&s, "INBOX"), vec![m1.clone(), big.clone(), appended.clone()]);
            let ids: Vec<u32> = state(&s, "INBOX").iter().map(|m| m.0).collect();
            assert_eq!(ids, vec![1, 4, 6]);
            assert_eq!(
                on_disk(&s, "Work"),
                vec![append_work.clone(), m1.clone(), parts.clone(), m3.clone(), m1.clone(), parts.clone()]
            );
        }
        "expunge" => {
            assert_eq!(on_disk(&s, "INBOX"), vec![appended.clone()]);
            assert_eq!(state(&s, "INBOX"), vec![(6, Flags::SEEN, kw(&["$Label1"]))]);
        }
        "idle" => {
            // What the other session appended stayed; what it appended
            // and expunged is gone; its flag is in the file.
            assert_eq!(on_disk(&s, "INBOX"), vec![appended.clone(), idle.clone()]);
            let st = state(&s, "INBOX");
            assert_eq!(st[0], (6, Flags::SEEN.union(Flags::ANSWERED), kw(&["$Label1"])));
            assert_eq!(st[1].0, 7);
        }
        "close" => {
            assert_eq!(on_disk(&s, "INBOX"), vec![appended.clone()]);
            assert_eq!(state(&s, "INBOX"), vec![(6, Flags::SEEN.union(Flags::ANSWERED), kw(&["$Label1"]))]);
        }
        "logout" => {
            // UNSELECT expunged nothing; the flag was written.
            assert_eq!(on_disk(&s, "Work").len(), 6);
            assert_eq!(state(&s, "Work")[0], (1, Flags::DELETED, vec![]));
        }
        other => panic!("unknown check {other}"),
    });

    let (wuv, duv) = (uidvalidity(&s, "Work"), uidvalidity(&s, "Drafts"));
    let size = |m: &Vec<u8>| m.len();
    let idx = |n: usize, uid: u32, flags: &str, m: &Vec<u8>, date: &str| {
        format!("{n} (UID {uid} FLAGS ({flags}) RFC822.SIZE {} INTERNALDATE \"{date}\")", size(m))
    };
    let nov = "14-Nov-2023 22:13:20 +0000";
    let feb = "05-Feb-2024 09:20:30 +0000";
    let all5: Vec<String> =
        inbox.iter().enumerate().map(|(i, m)| idx(i + 1, i as u32 + 1, "\\Recent", m, nov)).collect();
    let mut all6 = all5.clone();
    all6.push(idx(6, 6, "\\Seen $Label1 \\Recent", appended, feb));
    let (h3, b3) = split(m3);
    let (_, big_body) = split(big);
    let subj =
        |n: usize, s: &str| lit(&format!("{n} (BODY[HEADER.FIELDS (SUBJECT)]"), s.as_bytes(), &format!("subject.{n}"));
    let mime_hdr = "Content-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\
                    Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\n";
    let lines: Vec<String> = [
        format!("welcome * OK [CAPABILITY {CAPS_BEFORE}] postroom ready."),
        format!("capability OK {CAPS_BEFORE}"),
        "login-wrong error [AUTHENTICATIONFAILED] Authentication failed.".into(),
        "login-wrong untagged AUTHENTICATIONFAILED: ".into(),
        "login-unknown error [AUTHENTICATIONFAILED] Authentication failed.".into(),
        "login-unknown untagged AUTHENTICATIONFAILED: ".into(),
        format!("login OK [CAPABILITY {CAPS_AFTER}] Logged in"),
        format!("login untagged CAPABILITY: {CAPS_AFTER}"),
        "state AUTH".into(),
        format!("capability-after OK {CAPS_AFTER}"),
        "namespace OK ((\"\" \"/\")) NIL NIL".into(),
        "list OK (\\HasNoChildren) \"/\" INBOX | (\\HasNoChildren \\Archive) \"/\" Archive | \
         (\\HasNoChildren \\Drafts) \"/\" Drafts | (\\HasNoChildren \\Junk) \"/\" Junk | \
         (\\HasNoChildren \\Sent) \"/\" Sent | (\\HasNoChildren \\Trash) \"/\" Trash"
            .into(),
        "list-root OK (\\Noselect) \"/\" \"\"".into(),
        "lsub OK () \"/\" Drafts | () \"/\" Sent | () \"/\" Trash | () \"/\" Junk | () \"/\" Archive".into(),
        "create OK Create completed.".into(),
        "create-deep OK Create completed.".into(),
        "create-utf7 OK Create completed.".into(),
        "create-again NO [ALREADYEXISTS] Mailbox already exists.".into(),
        "create-again untagged ALREADYEXISTS: ".into(),
        "list-percent OK (\\HasNoChildren) \"/\" INBOX | (\\HasNoChildren \\Archive) \"/\" Archive | \
         (\\HasNoChildren \\Drafts) \"/\" Drafts | (\\HasNoChildren) \"/\" Entw&APw-rfe | \
         (\\HasNoChildren \\Junk) \"/\" Junk | (\\Noselect \\HasChildren) \"/\" Projects | \
         (\\HasNoChildren \\Sent) \"/\" Sent | (\\HasNoChildren \\Trash) \"/\" Trash | (\\HasNoChildren) \"/\" Work"
            .into(),
        "list-children OK (\\HasNoChildren) \"/\" Projects/2024".into(),
        "rename OK Rename completed.".into(),
        "list-renamed OK (\\Noselect \\HasChildren) \"/\" Old | (\\HasNoChildren) \"/\" Old/2024".into(),
        "delete OK Delete completed.".into(),
        "delete-parent OK Delete completed.".into(),
        "delete-missing NO [NONEXISTENT] Mailbox doesn't exist.".into(),
        "delete-missing untagged NONEXISTENT: ".into(),
        "delete-inbox NO [CANNOT] INBOX can't be deleted.".into(),
        "delete-inbox untagged CANNOT: ".into(),
        "subscribe OK Subscribe completed.".into(),
        "subscribe-utf7 OK Subscribe completed.".into(),
        "lsub-subscribed OK () \"/\" Drafts | () \"/\" Sent | () \"/\" Trash | () \"/\" Junk | () \"/\" Archive | \
         () \"/\" Work | () \"/\" Entw&APw-rfe"
            .into(),
        "unsubscribe OK Unsubscribe completed.".into(),
        "lsub-after OK () \"/\" Work".into(),
        // Read-only: \Recent shown, not taken; nothing may change.
        format!("status OK INBOX (MESSAGES 5 RECENT 5 UIDNEXT 6 UIDVALIDITY {uv} UNSEEN 5)"),
        "status-work OK Work (MESSAGES 0 UIDNEXT 1)".into(),
        "examine OK 5".into(),
        format!("examine FLAGS ({FLAGS})"),
        "examine PERMANENTFLAGS ()".into(),
        "examine RECENT 5".into(),
        "examine UNSEEN 1".into(),
        format!("examine UIDVALIDITY {uv}"),
        "examine UIDNEXT 6".into(),
        "examine READ-ONLY ".into(),
        format!("examine-fetch OK {}", all5.join(" | ")),
        format!("examine-rfc822 OK {} | )", lit("1 (RFC822", m1, "examine-rfc822.1")),
        "examine-store NO [READ-ONLY] Mailbox is read-only.".into(),
        "examine-store untagged READ-ONLY: ".into(),
        "examine-flags OK 1 (FLAGS (\\Recent))".into(),
        // The appended message reaches the examined INBOX at once.
        format!("append OK [APPENDUID {uv} 6] Append completed."),
        format!("append untagged FLAGS: ({FLAGS} $Label1)"),
        "append untagged OK: [PERMANENTFLAGS ()] Flags permitted.".into(),
        "append untagged PERMANENTFLAGS: ()".into(),
        "append untagged EXISTS: 6".into(),
        "append untagged RECENT: 6".into(),
        format!("append untagged APPENDUID: {uv} 6"),
        format!("append-work OK [APPENDUID {wuv} 1] Append completed."),
        format!("append-work untagged APPENDUID: {wuv} 1"),
        format!("append-draft OK [APPENDUID {duv} 1] Append completed."),
        format!("append-draft untagged APPENDUID: {duv} 1"),
        "append-missing NO [TRYCREATE] Mailbox doesn't exist.".into(),
        "append-missing untagged TRYCREATE: ".into(),
        "select OK 6".into(),
        format!("select FLAGS ({FLAGS} $Label1)"),
        format!("select PERMANENTFLAGS ({FLAGS} $Label1 \\*)"),
        "select RECENT 6".into(),
        "select UNSEEN 1".into(),
        format!("select UIDVALIDITY {uv}"),
        "select UIDNEXT 7".into(),
        "select READ-WRITE ".into(),
        format!("fetch-index OK {}", all6.join(" | ")),
        format!("peek-1 OK {} | )", lit("1 (BODY[]", m1, "peek-1.1")),
        format!("peek-2 OK {} | )", lit("2 (BODY[]", parts, "peek-2.1")),
        format!("peek-3 OK {} | )", lit("3 (BODY[]", m3, "peek-3.1")),
        format!("peek-4 OK {} | )", lit("4 (BODY[]", big, "peek-4.1")),
        format!("peek-5 OK {} | )", lit("5 (BODY[]", m5, "peek-5.1")),
        format!("peek-6 OK {} | )", lit("6 (BODY[]", appended, "peek-6.1")),
        // RFC822 and BODY[] set \Seen and say so.
        format!("rfc822 OK {} | )", lit("1 (FLAGS (\\Seen \\Recent) RFC822", m1, "rfc822.1")),
        format!("rfc822-again OK {} | )", lit("1 (RFC822", m1, "rfc822-again.1")),
        format!("body OK {} | )", lit("3 (FLAGS (\\Seen \\Recent) BODY[]", m3, "body.1")),
        format!(
            "subject OK {} | ) | {} | ) | {} | )",
            subj(1, "Subject: test walk-1\r\n\r\n"),
            subj(2, "Subject: parts\r\n\r\n"),
            subj(3, "Subject: test walk-3\r\n\r\n")
        ),
        format!("header OK {} |  {} | )", lit("3 (BODY[HEADER]", h3, "header.1"), lit("RFC822.HEADER", h3, "header.2")),
        format!("text OK {} | )", lit("3 (BODY[TEXT]", b3, "text.1")),
        format!(
            "partial OK {} |  {} |  {} | )",
            lit("4 (BODY[]<0>", &big[..100], "partial.1"),
            lit("BODY[]<100000>", &big[100_000..105_000], "partial.2"),
            lit("BODY[TEXT]<2>", &big_body[2..12], "partial.3")
        ),
        format!("partial-past-end OK {} | )", lit("1 (BODY[]<99999999>", b"", "partial-past-end.1")),
        format!(
            "mime-part OK {} |  {} |  {} | )",
            lit("2 (BODY[1]", b"The text part.\r\nSecond line.", "mime-part.1"),
            lit("BODY[2.MIME]", mime_hdr.as_bytes(), "mime-part.2"),
            lit("BODY[2]", b"AAECAwQFBgcICQ==", "mime-part.3")
        ),
        format!("bodystructure OK 1 (BODYSTRUCTURE {STRUCTURE_1}) | 2 (BODYSTRUCTURE {STRUCTURE_2})"),
        format!("envelope OK 5 (ENVELOPE {ENVELOPE_5})"),
        "fetch-bad error FETCH command error: BAD [b'Invalid messageset: message number beyond the mailbox']".into(),
        "store-add OK 1 (FLAGS (\\Flagged \\Seen \\Recent))".into(),
        "store-replace OK 2 (FLAGS (\\Answered $Work \\Recent))".into(),
        format!("store-replace untagged FLAGS: ({FLAGS} $Label1 $Work)"),
        format!("store-replace untagged OK: [PERMANENTFLAGS ({FLAGS} $Label1 $Work \\*)] Flags permitted."),
        format!("store-replace untagged PERMANENTFLAGS: ({FLAGS} $Label1 $Work \\*)"),
        "store-remove OK 1 (FLAGS (\\Flagged \\Recent))".into(),
        "store-silent OK None".into(),
        "store-flags OK 1 (FLAGS (\\Flagged \\Recent)) | 2 (FLAGS (\\Answered $Work \\Recent)) | \
         3 (FLAGS (\\Seen \\Recent)) | 4 (FLAGS (\\Recent)) | 5 (FLAGS (\\Recent)) | 6 (FLAGS (\\Seen $Label1 \\Recent))"
            .into(),
        "search-all OK 1 2 3 4 5 6".into(),
        "search-flagged OK 1".into(),
        "search-unseen OK 1 2 4 5".into(),
        "search-subject OK 3".into(),
        "search-keyword OK 2".into(),
        "search-or OK 1 2".into(),
        "search-utf8 OK 5".into(),
        "search-larger OK 4".into(),
        "search-since OK 6".into(),
        "search-body OK 1 3".into(),
        format!("copy OK [COPYUID {wuv} 1:2 2:3] Copy completed."),
        format!("copy untagged COPYUID: {wuv} 1:2 2:3"),
        "copy-missing NO [TRYCREATE] Mailbox doesn't exist.".into(),
        "copy-missing untagged TRYCREATE: ".into(),
        "move OK Move completed.".into(),
        format!("move untagged OK: [COPYUID {wuv} 3 4] Moved UIDs."),
        format!("move untagged COPYUID: {wuv} 3 4"),
        "move untagged EXPUNGE: 3".into(),
        "uid-fetch OK 1 (UID 1 FLAGS (\\Flagged \\Recent)) | 2 (UID 2 FLAGS (\\Answered $Work \\Recent)) | \
         3 (UID 4 FLAGS (\\Recent)) | 4 (UID 5 FLAGS (\\Recent)) | 5 (UID 6 FLAGS (\\Seen $Label1 \\Recent))"
            .into(),
        format!(
            "uid-fetch-body OK {} | )",
            lit("4 (UID 5 BODY[HEADER.FIELDS (MESSAGE-ID)]", b"Message-ID: <walk-5@postroom.test>\r\n\r\n", "uid-fetch-body.1")
        ),
        "uid-fetch-gone OK None".into(),
        "uid-store OK 3 (UID 4 FLAGS (\\Deleted \\Recent)) | 4 (UID 5 FLAGS (\\Deleted \\Recent))".into(),
        "uid-search OK 4 5".into(),
        "uid-copy OK None".into(),
        format!("uid-copy untagged COPYUID: {wuv} 1 5"),
        "uid-move OK None".into(),
        format!("uid-move untagged OK: [COPYUID {wuv} 2 6] Moved UIDs."),
        format!("uid-move untagged COPYUID: {wuv} 2 6"),
        "uid-move untagged EXPUNGE: 2".into(),
        // UID EXPUNGE 5 leaves UID 4, \Deleted too.
        "uid-expunge OK None".into(),
        "uid-expunge untagged EXPUNGE: 3".into(),
        "expunge OK 2".into(),
        "store-deleted OK 1 (FLAGS (\\Flagged \\Deleted \\Recent))".into(),
        "expunge-again OK 1".into(),
        "expunge-nothing OK None".into(),
        "after-expunge OK 1 (UID 6 FLAGS (\\Seen $Label1 \\Recent))".into(),
        format!("authenticate OK [CAPABILITY {CAPS_AFTER}] Logged in"),
        format!("authenticate untagged CAPABILITY: {CAPS_AFTER}"),
        "state-other AUTH".into(),
        "idle + idling".into(),
        format!("other-append OK [APPENDUID {uv} 7] Append completed."),
        format!("other-append untagged APPENDUID: {uv} 7"),
        "idle * 2 EXISTS".into(),
        "idle * 2 RECENT".into(),
        "other-select OK 2".into(),
        format!("other-select untagged FLAGS: ({FLAGS} $Label1 $Work)"),
        format!(
            "other-select untagged OK: [PERMANENTFLAGS ({FLAGS} $Label1 $Work \\*)] Flags permitted., \
             [UNSEEN 2] First unseen., [UIDVALIDITY {uv}] UIDs valid, [UIDNEXT 8] Predicted next UID"
        ),
        format!("other-select untagged PERMANENTFLAGS: ({FLAGS} $Label1 $Work \\*)"),
        "other-select untagged EXISTS: 2".into(),
        "other-select untagged RECENT: 0".into(),
        "other-select untagged UNSEEN: 2".into(),
        format!("other-select untagged UIDVALIDITY: {uv}"),
        "other-select untagged UIDNEXT: 8".into(),
        "other-select untagged READ-WRITE: ".into(),
        "other-store OK 1 (FLAGS (\\Answered \\Seen $Label1))".into(),
        "idle * 1 FETCH (FLAGS (\\Answered \\Seen $Label1 \\Recent))".into(),
        "other-unselect OK Unselect completed.".into(),
        format!("other-append-2 OK [APPENDUID {uv} 8] Append completed."),
        format!("other-append-2 untagged APPENDUID: {uv} 8"),
        "idle * 3 EXISTS".into(),
        "idle * 3 RECENT".into(),
        "other-select-2 OK 3".into(),
        format!("other-select-2 untagged FLAGS: ({FLAGS} $Label1 $Work)"),
        format!(
            "other-select-2 untagged OK: [PERMANENTFLAGS ({FLAGS} $Label1 $Work \\*)] Flags permitted., \
             [UNSEEN 2] First unseen., [UIDVALIDITY {uv}] UIDs valid, [UIDNEXT 9] Predicted next UID"
        ),
        format!("other-select-2 untagged PERMANENTFLAGS: ({FLAGS} $Label1 $Work \\*)"),
        "other-select-2 untagged EXISTS: 3".into(),
        "other-select-2 untagged RECENT: 0".into(),
        "other-select-2 untagged UNSEEN: 2".into(),
        format!("other-select-2 untagged UIDVALIDITY: {uv}"),
        "other-select-2 untagged UIDNEXT: 9".into(),
        "other-select-2 untagged READ-WRITE: ".into(),
        "other-delete OK 3 (UID 8 FLAGS (\\Deleted))".into(),
        "idle * 3 FETCH (FLAGS (\\Deleted \\Recent))".into(),
        "other-expunge OK None".into(),
        "other-expunge untagged EXPUNGE: 3".into(),
        "idle * 3 EXPUNGE".into(),
        "idle-done TAG OK Idle completed.".into(),
        "other-logout BYE Logging out".into(),
        "after-idle OK 1 (UID 6 FLAGS (\\Answered \\Seen $Label1 \\Recent)) | 2 (UID 7 FLAGS (\\Recent))".into(),
        "store-close OK 2 (FLAGS (\\Deleted \\Recent))".into(),
        "close OK Close completed.".into(),
        "state AUTH".into(),
        "select-work OK 6".into(),
        format!("select-work untagged FLAGS: ({FLAGS} $Work)"),
        format!(
            "select-work untagged OK: [PERMANENTFLAGS ({FLAGS} $Work \\*)] Flags permitted., [UNSEEN 1] First unseen., \
             [UIDVALIDITY {wuv}] UIDs valid, [UIDNEXT 7] Predicted next UID"
        ),
        format!("select-work untagged PERMANENTFLAGS: ({FLAGS} $Work \\*)"),
        "select-work untagged EXISTS: 6".into(),
        "select-work untagged RECENT: 6".into(),
        "select-work untagged UNSEEN: 1".into(),
        format!("select-work untagged UIDVALIDITY: {wuv}"),
        "select-work untagged UIDNEXT: 7".into(),
        "select-work untagged READ-WRITE: ".into(),
        "work-store OK 1 (FLAGS (\\Deleted \\Recent))".into(),
        "unselect OK Unselect completed.".into(),
        "state AUTH".into(),
        "fetch-unselected error command FETCH illegal in state AUTH, only allowed in states SELECTED".into(),
        "logout BYE Logging out".into(),
        "state LOGOUT".into(),
    ]
    .into_iter()
    .collect();
    same_lines(&got, &lines);

    // Every literal, byte for byte.
    let out = c.path("out");
    let mut all = inbox.clone();
    all.push(appended.clone());
    for (i, m) in all.iter().enumerate() {
        same(&file(&out, &format!("peek-{}.1", i + 1)), m, &format!("BODY[] of {}", i + 1));
    }
    for (f, want) in [
        ("examine-rfc822.1", &m1[..]),
        ("rfc822.1", m1),
        ("rfc822-again.1", m1),
        ("body.1", m3),
        ("subject.1", b"Subject: test walk-1\r\n\r\n"),
        ("subject.2", b"Subject: parts\r\n\r\n"),
        ("subject.3", b"Subject: test walk-3\r\n\r\n"),
        ("header.1", h3),
        ("header.2", h3),
        ("text.1", b3),
        ("partial.1", &big[..100]),
        ("partial.2", &big[100_000..105_000]),
        ("partial.3", &big_body[2..12]),
        ("partial-past-end.1", b""),
        ("mime-part.1", b"The text part.\r\nSecond line."),
        ("mime-part.2", mime_hdr.as_bytes()),
        ("mime-part.3", b"AAECAwQFBgcICQ=="),
        ("uid-fetch-body.1", b"Message-ID: <walk-5@postroom.test>\r\n\r\n"),
    ] {
        same(&file(&out, f), want, f);
    }
}

#[test]
fn python_imaplib_over_tls_and_starttls_verifies_the_generated_certificate() {
    if !have("python3") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let inbox = inbox();
    // Plaintext logins only over TLS: STARTTLS must be what lets imaplib in.
    let s = server_with(&t, &inbox, "plaintext-auth never\n");
    walk_mail(c.dir.path());
    let got = walk(&s, c.dir.path(), "tls", |label| panic!("unexpected check {label}"));

    let greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN AUTH=LOGIN] postroom ready.";
    let session = |login: &str| {
        vec![
            format!("{login} OK [CAPABILITY {CAPS_AFTER}] Logged in"),
            format!("{login} untagged CAPABILITY: {CAPS_AFTER}"),
        ]
    };
    let fetched = |prefix: &str| {
        let mut v = vec![format!("{prefix} examine OK 5")];
        v.extend(inbox.iter().enumerate().map(|(i, m)| {
            let n = i + 1;
            format!("{prefix}-{n} OK {} | )", lit(&format!("{n} (BODY[]"), m, &format!("{prefix}-{n}.1")))
        }));
        v.push("logout BYE Logging out".into());
        v
    };
    let mut want = Vec::new();
    for name in [CERT_NAME, "localhost", "127.0.0.1"] {
        want.push(format!("imaps {name} {greeting}"));
        want.push("logout BYE Logging out".into());
    }
    want.push(format!("imaps {greeting}"));
    want.push("capability OK IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN AUTH=LOGIN".into());
    want.extend(session("login"));
    want.push("tls TLSv1.3".into());
    want.extend(fetched("imaps"));
    // 62: hostname mismatch; 18: a self-signed certificate not trusted.
    want.push("refused wrong.example 62".into());
    want.push(format!("refused {CERT_NAME} 18"));
    want.extend(session("authenticate"));
    want.push("tls TLSv1.2".into());
    want.extend(fetched("tls12"));
    // STARTTLS: before it, no login of any kind; after it, no STARTTLS.
    want.push("capability OK IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE STARTTLS LOGINDISABLED".into());
    for step in ["login-plaintext", "authenticate-plaintext"] {
        want.push(format!(
            "{step} error [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections."
        ));
        want.push(format!("{step} untagged PRIVACYREQUIRED: "));
    }
    want.push("starttls OK None".into());
    want.push("tls TLSv1.3".into());
    want.push("capability OK IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN AUTH=LOGIN".into());
    want.push("starttls-again error STARTTLS command error: BAD [b'TLS is already active.']".into());
    want.extend(session("login"));
    want.extend(fetched("starttls"));
    same_lines(&got, &want);

    let out = c.path("out");
    for prefix in ["imaps", "tls12", "starttls"] {
        for (i, m) in inbox.iter().enumerate() {
            same(&file(&out, &format!("{prefix}-{}.1", i + 1)), m, &format!("{prefix} BODY[] of {}", i + 1));
        }
    }
    // Read-only all along: the mailbox is as it was stored.
    assert_eq!(on_disk(&s, "INBOX"), inbox);
    assert!(mailbox(&s, "INBOX").messages().iter().all(|m| m.flags == Flags::RECENT));
}

// ------------------------------------------------------------------ curl

/// The LIST response for alice's mailboxes after her first login.
const LIST_ALL: &str = "* LIST (\\HasNoChildren) \"/\" INBOX\r\n* LIST (\\HasNoChildren \\Archive) \"/\" Archive\r\n\
    * LIST (\\HasNoChildren \\Drafts) \"/\" Drafts\r\n* LIST (\\HasNoChildren \\Junk) \"/\" Junk\r\n\
    * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n* LIST (\\HasNoChildren \\Trash) \"/\" Trash\r\n";

#[test]
fn curl_lists_examines_fetches_by_uid_searches_and_appends() {
    if !have("curl") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let inbox = inbox();
    let s = server_with(&t, &inbox, "");
    let uv = uidvalidity(&s, "INBOX");
    let base = format!("imap://127.0.0.1:{}/", s.imap);

    // LIST "" *, what curl does for the server's URL.
    same(&curl(&[&base]).expect(0).stdout, LIST_ALL.as_bytes(), "LIST");
    // EXAMINE as a custom command: curl prints the untagged responses.
    let examine = format!(
        "* FLAGS ({FLAGS})\r\n* OK [PERMANENTFLAGS ()] Flags permitted.\r\n* 5 EXISTS\r\n* 5 RECENT\r\n\
         * OK [UNSEEN 1] First unseen.\r\n* OK [UIDVALIDITY {uv}] UIDs valid\r\n* OK [UIDNEXT 6] Predicted next UID\r\n"
    );
    same(&curl(&["-X", "EXAMINE INBOX", &base]).expect(0).stdout, examine.as_bytes(), "EXAMINE");
    // Nothing changed: still all new mail.
    assert!(mailbox(&s, "INBOX").messages().iter().all(|m| m.flags == Flags::RECENT));

    // SEARCH, as a custom command after curl's SELECT, and as a URL query.
    let inbox_url = format!("{base}INBOX");
    // A mailbox URL without a message lists that mailbox: LIST "INBOX" *.
    same(&curl(&[&inbox_url]).expect(0).stdout, b"* LIST (\\HasNoChildren) \"/\" INBOX\r\n", "LIST INBOX");
    let search = |q: &str| curl(&["-X", q, &inbox_url]).expect(0).stdout;
    same(&search("SEARCH SUBJECT parts"), b"* SEARCH 2\r\n", "SEARCH SUBJECT");
    same(&search("SEARCH LARGER 100000"), b"* SEARCH 4\r\n", "SEARCH LARGER");
    same(&search("UID SEARCH FROM zoe"), b"* SEARCH 5\r\n", "UID SEARCH FROM");
    same(&search("SEARCH CHARSET UTF-8 BODY \"caf\u{e9}\""), b"* SEARCH 1 3 5\r\n", "SEARCH BODY in UTF-8");
    same(&search("SEARCH CHARSET UTF-8 SUBJECT \"caf\u{e9}\""), b"* SEARCH 5\r\n", "SEARCH SUBJECT in UTF-8");
    same(&curl(&[&format!("{inbox_url}?SUBJECT%20walk")]).expect(0).stdout, b"* SEARCH 1 3\r\n", "?SUBJECT");
    same(&curl(&[&format!("{inbox_url}?ALL")]).expect(0).stdout, b"* SEARCH 1 2 3 4 5\r\n", "?ALL");

    // Each message by UID, in both of curl's spellings, and by number.
    for (i, m) in inbox.iter().enumerate() {
        let n = i + 1;
        same(&curl(&[&format!("{inbox_url};UID={n}")]).expect(0).stdout, m, &format!("UID={n}"));
        same(&curl(&[&format!("{inbox_url}/;UID={n}")]).expect(0).stdout, m, &format!("/;UID={n}"));
        same(&curl(&[&format!("{inbox_url};MAILINDEX={n}")]).expect(0).stdout, m, &format!("MAILINDEX={n}"));
    }
    // With the right UIDVALIDITY, and a wrong one (78: remote file not found).
    let u = format!("{inbox_url};UIDVALIDITY={uv}/;UID=3");
    same(&curl(&[&u]).expect(0).stdout, &inbox[2], "UIDVALIDITY");
    let r = curl(&[&format!("{inbox_url};UIDVALIDITY={}/;UID=3", uv.wrapping_add(1))]).expect(78);
    assert!(r.stdout.is_empty());
    // A UID that doesn't exist: nothing, and curl says so.
    let r = curl(&[&format!("{inbox_url};UID=99")]);
    assert!(r.code != Some(0) && r.stdout.is_empty(), "{}", r.text());

    // Sections and partials.
    let big = &inbox[3];
    let section = |spec: &str| curl(&[&format!("{inbox_url}/;UID={spec}")]).expect(0).stdout;
    same(&section("4/;PARTIAL=0.100"), &big[..100], "PARTIAL=0.100");
    same(&section("4/;PARTIAL=100000.5000"), &big[100_000..105_000], "PARTIAL=100000.5000");
    same(&section("1/;PARTIAL=0.5000"), &inbox[0], "PARTIAL past the end");
    same(&section("3/;SECTION=TEXT"), split(&inbox[2]).1, "SECTION=TEXT");
    same(&section("3/;SECTION=HEADER"), split(&inbox[2]).0, "SECTION=HEADER");
    same(&section("2/;SECTION=1"), b"The text part.\r\nSecond line.", "SECTION=1");
    same(&section("2/;SECTION=2"), b"AAECAwQFBgcICQ==", "SECTION=2");
    same(&section("2/;SECTION=2/;PARTIAL=4.4"), &b"AAECAwQFBgcICQ=="[4..8], "SECTION=2 PARTIAL=4.4");
    same(&section("5/;SECTION=HEADER.FIELDS%20(SUBJECT)"), b"Subject: =?UTF-8?Q?caf=C3=A9?=\r\n\r\n", "HEADER.FIELDS");

    // A wrong password and an unknown user: curl's "login denied" (67).
    for user in ["alice:wrong", "nobody-here:secret-alice"] {
        let r = curl(&["--user", user, &format!("{inbox_url};UID=1")]).expect(67);
        assert!(r.stdout.is_empty(), "{}", r.text());
    }

    // Upload: APPEND to Sent.
    let sent = message_for("curl-upload");
    let up = c.path("upload.eml");
    fs::write(&up, &sent).unwrap();
    curl(&["-T", up.to_str().unwrap(), &format!("{base}Sent")]).expect(0);
    assert_eq!(on_disk(&s, "Sent"), vec![sent.clone()]);
    assert_eq!(state(&s, "Sent"), vec![(1, Flags::SEEN, vec![])]);
    same(&curl(&[&format!("{base}Sent;UID=1")]).expect(0).stdout, &sent, "the uploaded message");

    // curl fetched with SELECT and BODY[]: the messages are unchanged and
    // now read; the UID search, flags set and expunge by custom commands.
    assert_eq!(on_disk(&s, "INBOX"), inbox);
    assert!(mailbox(&s, "INBOX").messages().iter().all(|m| m.flags == Flags::SEEN));
    let r = curl(&["-X", "UID STORE 2,4 +FLAGS (\\Deleted)", &inbox_url]).expect(0);
    same(
        &r.stdout,
        b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Seen))\r\n* 4 FETCH (UID 4 FLAGS (\\Deleted \\Seen))\r\n",
        "STORE",
    );
    curl(&["-X", "EXPUNGE", &inbox_url]).expect(0);
    assert_eq!(on_disk(&s, "INBOX"), vec![inbox[0].clone(), inbox[2].clone(), inbox[4].clone()]);
    same(&search("UID SEARCH ALL"), b"* SEARCH 1 3 5\r\n", "UID SEARCH after EXPUNGE");
    same(&curl(&[&format!("{inbox_url};MAILINDEX=2")]).expect(0).stdout, &inbox[2], "MAILINDEX after EXPUNGE");
}

#[test]
fn curl_imaps_and_starttls_with_the_generated_certificate() {
    if !have("curl") {
        return;
    }
    let t = Tmp::new();
    let inbox = inbox();
    let s = server_with(&t, &inbox, "plaintext-auth never\n");
    let cert = cert(&s);
    let cert = cert.to_str().unwrap();
    let imaps = |host: &str, rest: &str| format!("imaps://{host}:{}/{rest}", s.imaps);
    let starttls = |rest: &str| format!("imap://127.0.0.1:{}/{rest}", s.imap);

    // LIST and SEARCH over both.
    same(&curl(&["--cacert", cert, &imaps("127.0.0.1", "")]).expect(0).stdout, LIST_ALL.as_bytes(), "imaps LIST");
    let r = curl(&["--ssl-reqd", "--cacert", cert, &starttls("")]).expect(0);
    same(&r.stdout, LIST_ALL.as_bytes(), "STARTTLS LIST");
    let r = curl(&["--cacert", cert, "-X", "SEARCH FROM multi", &imaps("127.0.0.1", "INBOX")]).expect(0);
    same(&r.stdout, b"* SEARCH 2\r\n", "imaps SEARCH");
    let r = curl(&["--ssl-reqd", "--cacert", cert, "-X", "UID SEARCH LARGER 100000", &starttls("INBOX")]).expect(0);
    same(&r.stdout, b"* SEARCH 4\r\n", "STARTTLS SEARCH");
    for (i, m) in inbox.iter().enumerate() {
        let n = i + 1;
        let u = imaps("127.0.0.1", &format!("INBOX;UID={n}"));
        same(&curl(&["--cacert", cert, &u]).expect(0).stdout, m, &format!("imaps UID={n}"));
        let u = starttls(&format!("INBOX;UID={n}"));
        same(&curl(&["--ssl-reqd", "--cacert", cert, &u]).expect(0).stdout, m, &format!("STARTTLS UID={n}"));
    }
    // The certificate's DNS name, resolved to 127.0.0.1 by curl itself;
    // TLS 1.2 as well as 1.3; a partial.
    let resolve = format!("{CERT_NAME}:{}:127.0.0.1", s.imaps);
    let u = imaps(CERT_NAME, "INBOX/;UID=4/;PARTIAL=1000.2000");
    same(&curl(&["--cacert", cert, "--resolve", &resolve, &u]).expect(0).stdout, &inbox[3][1000..3000], "by name");
    let tls12 = ["--tlsv1.2", "--tls-max", "1.2", "--cacert", cert, "--resolve", &resolve, &u];
    same(&curl(&tls12).expect(0).stdout, &inbox[3][1000..3000], "TLS 1.2");

    // Refused: a name the certificate lacks (60: peer certificate cannot
    // be authenticated), the system's roots instead of the certificate,
    // a plaintext login on the plain port, and a wrong password (67).
    let wrong = format!("wrong.example:{}:127.0.0.1", s.imaps);
    let r = curl(&["--cacert", cert, "--resolve", &wrong, &imaps("wrong.example", "INBOX;UID=1")]).expect(60);
    assert!(r.stdout.is_empty());
    let r = curl(&[&imaps("127.0.0.1", "INBOX;UID=1")]);
    assert!(r.code != Some(0) && r.stdout.is_empty(), "untrusted certificate accepted:\n{}", r.text());
    let r = curl(&[&starttls("INBOX;UID=1")]);
    assert!(r.code != Some(0) && r.stdout.is_empty(), "plaintext login accepted:\n{}", r.text());
    let r = curl(&["--user", "alice:wrong", "--cacert", cert, &imaps("127.0.0.1", "INBOX;UID=1")]).expect(67);
    assert!(r.stdout.is_empty());

    // What was fetched is now read, and otherwise untouched.
    assert_eq!(on_disk(&s, "INBOX"), inbox);
    assert!(mailbox(&s, "INBOX").messages().iter().all(|m| m.flags == Flags::SEEN));
}

// ---------------------------------------------------------------- mbsync

/// mbsync with its own HOME, config and Maildir tree under `dir`,
/// syncing alice's INBOX and Work both ways.
struct Mbsync<'a> {
    s: &'a Server,
    dir: &'a Path,
    link: Link,
}

impl Mbsync<'_> {
    fn near(&self, name: &str) -> PathBuf {
        self.dir.join("near").join(name)
    }

    fn sync(&self) -> Ran {
        let home = self.dir.join("home");
        fs::create_dir_all(&home).unwrap();
        fs::create_dir_all(self.dir.join("near")).unwrap();
        let cert = cert(self.s);
        let (port, tls) = match self.link {
            Link::Plain => (self.s.imap, "SSLType None\nAuthMechs LOGIN".to_string()),
            Link::Starttls => (self.s.imap, format!("SSLType STARTTLS\nCertificateFile {}", cert.display())),
            Link::Implicit => (self.s.imaps, format!("SSLType IMAPS\nCertificateFile {}", cert.display())),
        };
        let config = self.dir.join("mbsyncrc");
        fs::write(
            &config,
            format!(
                "IMAPAccount far\nHost 127.0.0.1\nPort {port}\nUser alice\nPass secret-alice\n{tls}\nTimeout 30\n\n\
                 IMAPStore far\nAccount far\n\n\
                 MaildirStore near\nPath {near}/\nInbox {near}/INBOX\nSubFolders Verbatim\n\n\
                 Channel both\nFar :far:\nNear :near:\nPatterns INBOX Work\nCreate Both\nExpunge Both\n\
                 Sync All\nSyncState *\n",
                near = self.dir.join("near").display()
            ),
        )
        .unwrap();
        run(Command::new("mbsync").args(["-V", "-c"]).arg(&config).arg("-a").env("HOME", &home))
    }

    /// The messages in a near mailbox: file name and content.
    fn messages(&self, name: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let mut v = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = fs::read_dir(self.near(name).join(sub)) else { continue };
            for e in rd {
                let p = e.unwrap().path();
                let bytes = fs::read(&p).unwrap();
                v.push((p, bytes));
            }
        }
        v.sort();
        v
    }

    /// The near file that holds `want` (a message as the server has it).
    fn find(&self, name: &str, want: &[u8]) -> PathBuf {
        let local = lf(want);
        let found: Vec<PathBuf> =
            self.messages(name).into_iter().filter(|(_, b)| strip_tuid(b) == local).map(|(p, _)| p).collect();
        assert_eq!(found.len(), 1, "{name}: {} copies of\n{}", found.len(), String::from_utf8_lossy(want));
        found.into_iter().next().unwrap()
    }
}

/// A Maildir file without the X-TUID header mbsync adds to the header of
/// what it copies (its way of finding the copy again).
fn strip_tuid(m: &[u8]) -> Vec<u8> {
    let end = m.windows(2).position(|w| w == b"\n\n").map_or(m.len(), |p| p + 1);
    let mut out = Vec::with_capacity(m.len());
    let mut at = 0;
    while at < end {
        let eol = m[at..].iter().position(|&b| b == b'\n').map_or(m.len(), |p| at + p + 1);
        if !m[at..eol].starts_with(b"X-TUID: ") {
            out.extend_from_slice(&m[at..eol]);
        }
        at = eol;
    }
    out.extend_from_slice(&m[end.min(m.len())..]);
    out
}

/// Maildir flags of a file name ("...:2,FS" gives "FS").
fn maildir_flags(p: &Path) -> String {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    name.rsplit_once(":2,").map(|(_, f)| f.to_string()).unwrap_or_default()
}

/// Renames a Maildir file to carry `flags`, moving it into cur/.
fn set_maildir_flags(p: &Path, flags: &str) -> PathBuf {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let base = name.rsplit_once(":2,").map_or(name.as_str(), |(b, _)| b).to_string();
    let to = p.parent().unwrap().parent().unwrap().join("cur").join(format!("{base}:2,{flags}"));
    fs::rename(p, &to).unwrap();
    to
}

fn mbsync_round_trip(link: Link) {
    let (t, c) = (Tmp::new(), Tmp::new());
    let inbox = inbox();
    let work = vec![message_for("work-1"), message_for("work-2")];
    fs::create_dir_all(t.path("mail/alice")).unwrap();
    {
        let mut mb = open(&t.path("mail/alice/Work"));
        for m in &work {
            mb.append(m, Flags::SEEN, &["$Project"], Some(STORED), "sender@example.org").unwrap();
        }
    }
    // Over TLS, the server allows no plaintext login before it.
    let s = server_with(&t, &inbox, if matches!(link, Link::Plain) { "" } else { "plaintext-auth never\n" });
    let m = Mbsync { s: &s, dir: c.dir.path(), link };

    // Everything arrives, byte for byte, with its flags.
    let r = m.sync().expect(0);
    let said = match link {
        Link::Plain => "Password is being sent in the clear",
        Link::Starttls | Link::Implicit => "Connection is now encrypted",
    };
    assert!(r.log().contains(said), "{}", r.text());
    assert_eq!(m.messages("INBOX").len(), inbox.len(), "{}", r.text());
    for msg in &inbox {
        assert_eq!(maildir_flags(&m.find("INBOX", msg)), "");
    }
    assert_eq!(m.messages("Work").len(), work.len(), "{}", r.text());
    for msg in &work {
        assert_eq!(maildir_flags(&m.find("Work", msg)), "S");
    }
    // mbsync only read: the server's mailboxes are as they were.
    assert_eq!(on_disk(&s, "INBOX"), inbox);
    assert_eq!(on_disk(&s, "Work"), work);

    // Locally: message 1 flagged and read, message 3 deleted, message 5
    // answered; in Work, a new message (flagged and read) and one deleted. On the server,
    // message 2 is flagged meanwhile by another program.
    set_maildir_flags(&m.find("INBOX", &inbox[0]), "FS");
    fs::remove_file(m.find("INBOX", &inbox[2])).unwrap();
    set_maildir_flags(&m.find("INBOX", &inbox[4]), "R");
    fs::remove_file(m.find("Work", &work[0])).unwrap();
    let new = message_for("work-new");
    fs::write(m.near("Work").join("cur").join("1700000000.1_1.near:2,FS"), lf(&new)).unwrap();
    {
        // As another program would: the file changes under the server.
        let mut mb = mailbox(&s, "INBOX");
        let i = mb.position(2).unwrap();
        let (f, k) = (mb.messages()[i].flags.union(Flags::FLAGGED), mb.messages()[i].keywords);
        mb.set_flags(i, f, k);
        mb.flush().unwrap();
    }
    if unsafe { libc::geteuid() } == 0 {
        give_to_nobody(&s.dir);
    }
    let r = m.sync().expect(0);

    // The server has the flags and lost what was deleted.
    let none = Flags::empty();
    assert_eq!(
        state(&s, "INBOX"),
        vec![
            (1, Flags::FLAGGED.union(Flags::SEEN), vec![]),
            (2, Flags::FLAGGED, vec![]),
            (4, none, vec![]),
            (5, Flags::ANSWERED, vec![]),
        ],
        "{}",
        r.text()
    );
    assert_eq!(on_disk(&s, "INBOX"), vec![inbox[0].clone(), inbox[1].clone(), inbox[3].clone(), inbox[4].clone()]);
    let w = on_disk(&s, "Work");
    assert_eq!(w.len(), 2, "{}", r.text());
    assert_eq!(w[0], work[1]);
    // What mbsync uploaded is the message with CRLF line ends (and, if
    // mbsync marked it, its X-TUID header).
    assert_eq!(strip_tuid(&lf(&w[1])), lf(&new));
    let st = state(&s, "Work");
    assert_eq!(st[0], (2, Flags::SEEN, vec!["$Project".to_string()]));
    assert_eq!(st[1], (3, Flags::FLAGGED.union(Flags::SEEN), vec![]), "the uploaded message's flags");
    // Locally, the server's flag arrived.
    assert_eq!(maildir_flags(&m.find("INBOX", &inbox[1])), "F");
    assert_eq!(m.messages("INBOX").len(), 4);

    // A third run finds nothing to do, and changes nothing.
    let before = (fs::read(s.spool("alice")).unwrap(), fs::read(s.mail_dir("alice").join("Work")).unwrap());
    m.sync().expect(0);
    let after = (fs::read(s.spool("alice")).unwrap(), fs::read(s.mail_dir("alice").join("Work")).unwrap());
    assert!(before == after, "a sync with nothing to do changed the server's files");
}

#[test]
fn mbsync_round_trip_over_plain_imap() {
    if have("mbsync") {
        mbsync_round_trip(Link::Plain);
    }
}

#[test]
fn mbsync_round_trip_over_starttls() {
    if have("mbsync") {
        mbsync_round_trip(Link::Starttls);
    }
}

#[test]
fn mbsync_round_trip_over_imaps() {
    if have("mbsync") {
        mbsync_round_trip(Link::Implicit);
    }
}

// ------------------------------------------------------------- fetchmail

#[test]
fn fetchmail_keeps_then_fetches_and_deletes_everything() {
    if !have("fetchmail") {
        return;
    }
    let (t, c) = (Tmp::new(), Tmp::new());
    let mail = inbox();
    let s = server_with(&t, &mail, "");
    let f = Fetchmail { s: &s, dir: c.dir.path(), proto: Proto::Imap };

    // A certificate checked for a name it lacks: nothing is fetched.
    let r = f.poll_expecting("wrong-name", Link::Implicit, "wrong.example", "keep", 2, &[]);
    assert!(r.log().contains("certificate"), "{}", r.text());
    assert!(mailbox(&s, "INBOX").messages().iter().all(|m| m.flags == Flags::RECENT));

    // keep, over implicit TLS: all of them; the server keeps them and
    // marks them read (fetchmail stores \Seen after each).
    let r = f.poll_expecting("first", Link::Implicit, CERT_NAME, "keep", 0, &mail);
    assert!(r.log().contains("SSL/TLS: using protocol TLSv1."), "{}", r.text());
    assert_eq!(on_disk(&s, "INBOX"), mail);
    assert!(mailbox(&s, "INBOX").messages().iter().all(|m| m.flags == Flags::SEEN), "{}", r.text());

    // keep again, over STARTTLS: nothing unseen, nothing fetched
    // (fetchmail's exit status 1: no mail).
    let r = f.poll_expecting("second", Link::Starttls, CERT_NAME, "keep", 1, &[]);
    assert!(r.log().contains("upgrade to TLS succeeded"), "{}", r.text());
    assert_eq!(on_disk(&s, "INBOX"), mail);

    // New mail arrives: only it is fetched.
    let all = f.new_mail(message_for("fetchmail-new"), Flags::RECENT, &mail);

    // Without keep, fetching all: every message, then an empty mailbox.
    f.fetch_and_delete_all(&all);
}

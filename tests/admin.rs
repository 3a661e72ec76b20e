//! `postroom mailbox` and `postroom check` from the shell.

mod support;

use std::fs;
use std::process::Command;

use support::*;

fn postroom(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postroom")).args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MTA: &str = "From a@example.org Thu Nov 26 10:00:00 2026\nSubject: one\n\n1\n\nFrom b@example.org Thu Nov 26 10:01:00 2026\nSubject: two\n\n2\n\n";

#[test]
fn check_status_repair_and_list() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let c = conf.to_str().unwrap();
    fs::create_dir_all(t.path("spool")).unwrap();
    fs::write(t.path("spool/alice"), MTA).unwrap();
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 messages without X-UID"), "{out}");
    assert_eq!(fs::read_to_string(t.path("spool/alice")).unwrap(), MTA, "check changes nothing");
    // A status run killed in the middle of writing the UIDs leaves a journal.
    let (code, _, _) =
        postroom(&["mailbox", "-f", c, "status", "alice"], &[("POSTROOM_TEST_CRASH_AT", "tail-written")]);
    assert_eq!(code, -1, "killed by the crash point");
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("journal"), "{out}");
    let (code, out, err) = postroom(&["mailbox", "-f", c, "repair", "alice"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 messages, interrupted rewrite recovered"), "{out}");
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = postroom(&["mailbox", "-f", c, "status", "alice"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("messages 2\nunseen 2\n"), "{out}");
    // The killed run had given UIDs 1 and 2 (kept in state-dir while the
    // file had no base): they are never given again.
    assert!(out.contains("uidnext 5"), "{out}");
    // Folders.
    fs::create_dir_all(t.path("mail/alice/work")).unwrap();
    fs::write(t.path("mail/alice/work/2026"), "").unwrap();
    fs::write(t.path("mail/alice/Sent"), "").unwrap();
    let (code, out, _) = postroom(&["mailbox", "-f", c, "list", "alice"], &[]);
    assert_eq!(code, 0);
    assert_eq!(out, "INBOX\nSent\nwork\tnoselect,children\nwork/2026\n");
    let (code, _, err) = postroom(&["mailbox", "-f", c, "status", "nobody-here"], &[]);
    assert_eq!(code, 67, "{err}");
    let (code, _, err) = postroom(&["mailbox", "-f", c, "status", "alice", "../../etc"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not allowed"), "{err}");
}

#[test]
fn check_reports_config_errors_with_line_numbers() {
    let t = Tmp::new();
    let conf = t.path("bad.conf");
    fs::write(&conf, "listen imap 127.0.0.1:10143\nbogus-key 1\nidle-timeout-imap 5m\n").unwrap();
    let (code, _, err) = postroom(&["check", "-f", conf.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.conf:2:"), "{err}");
    assert!(err.contains("bad.conf:3:"), "{err}");
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/postroom.conf");
    let (code, out, err) = postroom(&["check", "-f", sample.to_str().unwrap()], &[]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let out = Command::new(env!("CARGO_BIN_EXE_postroomd")).args(["-n", "-f"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

fn pseudo(v: u32, last: u32) -> String {
    format!(
        "From MAILER-DAEMON Thu Nov 26 16:01:55 2026\nDate: Thu, 26 Nov 2026 16:01:55 +0000\n\
         From: Mail System Internal Data <MAILER-DAEMON@example.org>\n\
         Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\nX-IMAP: {v} {last:010}\nStatus: RO\n\n\
         This text is part of the internal format of your mail folder, and is not\na real message.\n\n"
    )
}

/// Issue 8: the file a broken writer left under load (a pseudo-message
/// with one state, a base with another on the next message, a stray
/// pseudo-message, a UID past UIDNEXT): check reports every conflict and
/// repair leaves one state, with the highest UIDVALIDITY and UIDNEXT seen,
/// and every message byte for byte.
#[test]
fn issue8_check_reports_conflicting_state_and_repair_keeps_the_highest() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let c = conf.to_str().unwrap();
    fs::create_dir_all(t.path("spool")).unwrap();
    let mut text = pseudo(1_700_000_000, 1130);
    text.push_str("From a@example.org Thu Nov 26 16:01:55 2026\nX-IMAPbase: 1700000555 0000001115\nX-UID: 1114\nSubject: a\n\na\n\n");
    text.push_str(&pseudo(1_700_000_555, 1115));
    text.push_str("From b@example.org Thu Nov 26 16:01:55 2026\nX-UID: 1115\nSubject: b\n\nb\n\n");
    text.push_str("From c@example.org Thu Nov 26 16:01:55 2026\nX-UID: 9000\nSubject: c\n\nFrom the body\n\n");
    fs::write(t.path("spool/alice"), &text).unwrap();
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("two states in one file"), "{out}");
    assert!(out.contains("a second pseudo-message"), "{out}");
    assert!(out.contains("1 X-UIDs at or above UIDNEXT 1131"), "{out}");
    assert_eq!(fs::read_to_string(t.path("spool/alice")).unwrap(), text, "check changes nothing");
    let (code, out, err) = postroom(&["mailbox", "-f", c, "repair", "alice"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("one state written: UIDVALIDITY 1700000555 UIDNEXT 1132"), "{out}");
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 0, "{out}");
    let after = fs::read_to_string(t.path("spool/alice")).unwrap();
    assert_eq!(after.matches("X-IMAP").count(), 1, "{after}");
    assert_eq!(after.matches("FOLDER INTERNAL DATA").count(), 1, "{after}");
    let mb = open(&t.path("spool/alice"));
    assert_eq!((mb.uidvalidity(), mb.uidnext()), (1_700_000_555, 1132));
    let got = contents(&mb);
    assert_eq!(
        got,
        vec![
            (1114, b"Subject: a\r\n\r\na\r\n".to_vec()),
            (1115, b"Subject: b\r\n\r\nb\r\n".to_vec()),
            (1131, b"Subject: c\r\n\r\nFrom the body\r\n".to_vec()),
        ]
    );
}

/// Issue 8: bytes before the first From_ line were refused and repair could
/// not fix them; a file with CR line ends was one empty message and check
/// said nothing.
#[test]
fn issue8_repair_keeps_garbage_before_the_first_from_line_and_fixes_cr_line_ends() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let c = conf.to_str().unwrap();
    fs::create_dir_all(t.path("spool")).unwrap();
    let spool = t.path("spool/alice");
    fs::write(&spool, format!("Subject: before\n\ntext that came first\n\n{MTA}")).unwrap();
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not start with a From_ line"), "{out}");
    let (code, out, err) = postroom(&["mailbox", "-f", c, "repair", "alice"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kept as a message"), "{out}");
    let got: Vec<Vec<u8>> = contents(&open(&spool)).into_iter().map(|(_, b)| b).collect();
    assert_eq!(
        got,
        vec![
            b"Subject: before\r\n\r\ntext that came first\r\n".to_vec(),
            b"Subject: one\r\n\r\n1\r\n".to_vec(),
            b"Subject: two\r\n\r\n2\r\n".to_vec()
        ]
    );

    fs::write(&spool, MTA.replace('\n', "\r")).unwrap();
    let (code, out, _) = postroom(&["mailbox", "-f", c, "check", "alice"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line ends of CR alone"), "{out}");
    let (code, out, err) = postroom(&["mailbox", "-f", c, "repair", "alice"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let got: Vec<Vec<u8>> = contents(&open(&spool)).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, vec![b"Subject: one\r\n\r\n1\r\n".to_vec(), b"Subject: two\r\n\r\n2\r\n".to_vec()]);
}

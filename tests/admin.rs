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
    assert!(out.contains("uidnext 3"), "{out}");
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

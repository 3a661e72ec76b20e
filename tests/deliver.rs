//! `postroom deliver` as the MTA runs it: a real process, a real mbox.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use support::*;

fn deliver(conf: &std::path::Path, args: &[&str], input: &[u8]) -> (i32, String) {
    deliver_with(conf, args, input, |_| {})
}

fn deliver_with(
    conf: &std::path::Path,
    args: &[&str],
    input: &[u8],
    setup: impl FnOnce(&mut Command),
) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postroom"));
    cmd.arg("deliver").arg("-f").arg(conf).args(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().expect("run postroom deliver");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn delivers_byte_exact_with_a_from_line() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let msg = message_for("d1");
    let (code, err) = deliver(&conf, &["-s", "bob@example.org", "alice"], &msg);
    assert_eq!(code, 0, "{err}");
    let spool = t.path("spool/alice");
    let disk = fs::read(&spool).unwrap();
    assert!(disk.starts_with(b"From bob@example.org "), "{}", String::from_utf8_lossy(&disk));
    assert!(!disk.contains(&b'\r'), "stored with LF line ends");
    // Twice more: the mailbox grows; the server reads all three exactly.
    deliver(&conf, &["-s", "bob@example.org", "alice"], &message_for("d2"));
    deliver(&conf, &["alice"], &message_for("d3"));
    let mb = open(&spool);
    let got: Vec<Vec<u8>> = contents(&mb).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, vec![message_for("d1"), message_for("d2"), message_for("d3")]);
    assert_eq!(mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn strips_forged_state_headers() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let forged = b"X-IMAPbase: 1 4000000000\nX-IMAP: 1 2\nX-UID: 77\nStatus: RO\nX-Status: DF\nX-Keywords: $Junk\nContent-Length: 2\nSubject: forged\n\nbody\n";
    let (code, err) = deliver(&conf, &["alice"], forged);
    assert_eq!(code, 0, "{err}");
    let disk = fs::read_to_string(t.path("spool/alice")).unwrap();
    for h in ["X-IMAPbase", "X-IMAP:", "X-UID", "Status", "X-Keywords", "Content-Length"] {
        assert!(!disk.contains(h), "{h} survived: {disk}");
    }
    let mb = open(&t.path("spool/alice"));
    assert_eq!(mb.messages()[0].uid, 1);
    assert_eq!(mb.messages()[0].flags, postroom::store::Flags::RECENT);
    assert_eq!(mb.message_bytes(0).unwrap(), b"Subject: forged\r\n\r\nbody\r\n");
}

#[test]
fn an_mta_from_line_gives_the_sender() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let (code, _) = deliver(&conf, &["alice"], b"From carol@example.org Thu Nov 26 10:00:00 2026\nSubject: x\n\ny\n");
    assert_eq!(code, 0);
    let disk = fs::read_to_string(t.path("spool/alice")).unwrap();
    assert!(disk.starts_with("From carol@example.org "), "{disk}");
    assert_eq!(disk.matches("From carol").count(), 1);
}

#[test]
fn unknown_user_is_67_and_creates_nothing() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    let (code, err) = deliver(&conf, &["mallory"], b"Subject: x\n\ny\n");
    assert_eq!(code, 67, "{err}");
    assert!(err.contains("no such user"), "{err}");
    assert!(!t.path("spool/mallory").exists());
}

#[test]
fn locked_mailbox_is_a_temporary_failure_and_stays_untouched() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "mbox-lock-timeout 1s\n");
    assert_eq!(deliver(&conf, &["alice"], &message_for("first")).0, 0);
    let spool = t.path("spool/alice");
    let before = fs::read(&spool).unwrap();
    // A live process (this test) holds the dotlock.
    fs::write(t.path("spool/alice.lock"), format!("{}\n", std::process::id())).unwrap();
    let (code, err) = deliver(&conf, &["alice"], &message_for("second"));
    assert_eq!(code, 75, "{err}");
    assert_eq!(fs::read(&spool).unwrap(), before);
    fs::remove_file(t.path("spool/alice.lock")).unwrap();
    assert_eq!(deliver(&conf, &["alice"], &message_for("second")).0, 0);
    assert_eq!(open(&spool).len(), 2);
}

#[test]
fn stale_dotlock_of_a_dead_process_is_broken() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "mbox-lock-timeout 5s\n");
    fs::create_dir_all(t.path("spool")).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    fs::write(t.path("spool/alice.lock"), format!("{pid}\n")).unwrap();
    let (code, err) = deliver(&conf, &["alice"], &message_for("x"));
    assert_eq!(code, 0, "{err}");
    assert!(!t.path("spool/alice.lock").exists());
}

#[test]
fn full_disk_is_a_temporary_failure_and_leaves_no_partial_message() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "");
    assert_eq!(deliver(&conf, &["alice"], &message_for("first")).0, 0);
    let spool = t.path("spool/alice");
    let before = fs::read(&spool).unwrap();
    // The file may grow by 100 bytes only: the write fails as on a full disk.
    let limit = before.len() as u64 + 100;
    let big = message_for("a-longer-message-that-does-not-fit").repeat(20);
    let (code, err) = deliver_with(&conf, &["alice"], &big, move |cmd| unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            libc::setrlimit(libc::RLIMIT_FSIZE, &r);
            Ok(())
        });
    });
    assert_eq!(code, 75, "{err}");
    assert_eq!(fs::read(&spool).unwrap(), before, "the partial message was cut off");
    assert!(!t.path("spool/alice.journal").exists());
}

#[test]
fn oversized_message_is_refused() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice"], "max-message-size 1K\n");
    let (code, err) = deliver(&conf, &["alice"], &vec![b'x'; 2000]);
    assert_eq!(code, 65, "{err}");
    assert!(!t.path("spool/alice").exists() || fs::read(t.path("spool/alice")).unwrap().is_empty());
}

#[test]
fn several_users_each_get_the_message() {
    let t = Tmp::new();
    let conf = write_config(t.dir.path(), &["alice", "bob"], "");
    let (code, _) = deliver(&conf, &["alice", "bob"], &message_for("both"));
    assert_eq!(code, 0);
    for u in ["alice", "bob"] {
        let mb = open(&t.path(&format!("spool/{u}")));
        assert_eq!(mb.message_bytes(0).unwrap(), message_for("both"));
    }
}

//! A full disk (issue 8, finding 10): on a file system with no room left,
//! a flag change that cannot be written is answered `NO [OVERQUOTA]` and
//! not shown to anyone, one that fits is written, and EXPUNGE frees space.
//! Checked on the file after a restart, byte for byte.
//!
//! The file system is a small tmpfs mounted for the test, which needs
//! root (CI runs as root); elsewhere the test says SKIP.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use postroom::store::Flags;
use support::clients::on_disk;
use support::server::{Imap, Server};
use support::*;

/// A tmpfs of `size` bytes, unmounted at drop.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(dir: &Path, size: u64) -> Option<Mount> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount { dir: dir.to_path_buf() })
    }

    /// Fills what is left with a file of zeros, to the last byte.
    fn fill(&self) {
        let mut f = fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![0u8; 64 << 10];
        let mut size = block.len();
        loop {
            match f.write(&block[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) if size > 1 => size /= 2,
                Err(_) => break,
            }
        }
        let _ = f.sync_all();
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn flags_of(c: &mut Imap, n: u32) -> String {
    let r = c.cmd(&format!("FETCH {n} (FLAGS)"));
    r.assert_ok();
    r.lines().into_iter().find(|l| l.contains("FETCH")).unwrap_or_default()
}

fn big() -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nSubject: the attachment that filled the disk\r\n\r\n".to_vec();
    while m.len() < (1 << 20) {
        m.extend_from_slice(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n");
    }
    m
}

#[test]
fn a_full_disk_refuses_what_it_cannot_write_and_expunge_frees_space() {
    if unsafe { libc::geteuid() } != 0 {
        cannot_run("mounting a small file system needs root");
        return;
    }
    let t = Tmp::new();
    let Some(mount) = Mount::new(&t.path("fs"), 4 << 20) else {
        cannot_run("mount -t tmpfs failed");
        return;
    };
    let root = mount.dir.clone();
    let _keep = std::env::var_os("POSTROOM_KEEP_LOG").map(|_| root.join("postroomd.log"));
    fs::create_dir_all(root.join("spool")).unwrap();
    // Small messages, the big one, more small ones.
    let mut want: Vec<Vec<u8>> = (0..5).map(|i| message_for(&format!("before-{i}"))).collect();
    want.push(big());
    want.extend((0..5).map(|i| message_for(&format!("after-{i}"))));
    {
        let mut mb = open(&root.join("spool/alice"));
        for m in &want {
            mb.append(m, Flags::empty(), &[], None, "sender@example.org").unwrap();
        }
    }
    let s = Server::start(&root, &["alice"], "");
    let mut c = s.imap("alice");
    c.cmd("SELECT INBOX").assert_ok();
    let mut other = s.imap("alice");
    other.cmd("SELECT INBOX").assert_ok();
    mount.fill();
    assert!(mount.free() < 4096, "the file system is full");

    // Keywords that outgrow the padding of message 2's state lines need a
    // rewrite of the file from there: there is no room for its journal.
    let many: Vec<String> = (0..12).map(|k| format!("$Keyword-with-a-long-name-{k}")).collect();
    let r = c.cmd(&format!("STORE 2 +FLAGS ({})", many.join(" ")));
    assert!(r.status.starts_with("NO [OVERQUOTA]"), "{r:?}");
    assert!(!flags_of(&mut c, 2).contains("$Keyword"), "the change that was refused is not shown");
    assert!(!flags_of(&mut other, 2).contains("$Keyword"), "nor to another session");
    // \Deleted fits in place: written, and said so.
    let r = c.cmd("STORE 6 +FLAGS (\\Deleted)");
    assert!(
        r.ok(),
        "{r:?}\n{}",
        s.log_text().lines().filter(|l| l.contains("store") || l.contains("WARN")).collect::<Vec<_>>().join("\n")
    );
    assert!(flags_of(&mut other, 6).contains("\\Deleted"));
    // EXPUNGE frees the space the big message took.
    let r = c.cmd("EXPUNGE");
    r.assert_ok();
    assert!(r.text().contains("* 6 EXPUNGE"), "{r:?}");
    assert!(mount.free() >= 900_000, "EXPUNGE freed the disk: {} bytes free", mount.free());
    // With room again, the keywords can be written.
    c.cmd(&format!("STORE 2 +FLAGS ({})", many.join(" "))).assert_ok();
    let log = s.log_text();
    assert!(log.contains("how=compacted-in-place"), "the expunge moved the mail in place:\n{log}");
    c.cmd("LOGOUT");
    other.cmd("LOGOUT");
    drop(s);

    // What the file says after a restart is what the clients were told.
    want.remove(5);
    let s = Server::start(&root, &["alice"], "");
    let mut c = s.imap("alice");
    c.cmd("SELECT INBOX").assert_ok();
    let r = c.cmd("FETCH 1:* (FLAGS BODY.PEEK[])");
    r.assert_ok();
    let got = on_disk(&s, "INBOX");
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "message {} differs", i + 1);
    }
    let f2 = flags_of(&mut c, 2);
    for k in &many {
        assert!(f2.contains(k.as_str()), "{k} on message 2: {f2}");
    }
    assert!(!flags_of(&mut c, 1).contains("$Keyword"));
    c.cmd("LOGOUT");
}

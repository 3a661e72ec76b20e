//! Mailboxes move between servers with UIDs, UIDVALIDITY, flags and
//! keywords intact: files written by Dovecot and in UW-IMAP's layout are
//! read as those servers read them (tests/fixtures, see its README), and a
//! mailbox postroom wrote opens in Dovecot with the same state
//! (tests/dovecot_check.py, when Dovecot is installed).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use postroom::store::{Flags, Mailbox, MboxFormat, Options};
use support::*;

#[derive(Debug, Default, PartialEq)]
struct Expect {
    uidvalidity: u32,
    uidnext: u32,
    keywords: BTreeSet<String>,
    messages: Vec<(u32, BTreeSet<String>, BTreeSet<String>, u64)>,
}

fn parse_expect(text: &str) -> Expect {
    let mut e = Expect::default();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "uidvalidity" => e.uidvalidity = rest.trim().parse().unwrap(),
            "uidnext" => e.uidnext = rest.trim().parse().unwrap(),
            "keywords" => e.keywords = rest.split_whitespace().map(String::from).collect(),
            "message" => {
                let parts: Vec<&str> = rest.split(';').collect();
                let mut first = parts[0].split_whitespace();
                let uid = first.next().unwrap().parse().unwrap();
                let flags = first.map(String::from).collect();
                let kws = parts[1].split_whitespace().map(String::from).collect();
                let size = parts[2].trim().parse().unwrap();
                e.messages.push((uid, flags, kws, size));
            }
            other => panic!("unknown expect line {other}"),
        }
    }
    e
}

fn flag_names(f: Flags) -> BTreeSet<String> {
    [
        (Flags::SEEN, "\\Seen"),
        (Flags::ANSWERED, "\\Answered"),
        (Flags::FLAGGED, "\\Flagged"),
        (Flags::DELETED, "\\Deleted"),
        (Flags::DRAFT, "\\Draft"),
    ]
    .iter()
    .filter(|(b, _)| f.contains(*b))
    .map(|(_, n)| n.to_string())
    .collect()
}

fn observe(mb: &Mailbox) -> Expect {
    let kw = |bits: u64| -> BTreeSet<String> {
        (0..mb.keywords().len()).filter(|i| bits & (1 << i) != 0).map(|i| mb.keywords()[i].clone()).collect()
    };
    Expect {
        uidvalidity: mb.uidvalidity(),
        uidnext: mb.uidnext(),
        keywords: mb.keywords().iter().cloned().collect(),
        messages: mb.messages().iter().map(|m| (m.uid, flag_names(m.flags), kw(m.keywords), m.size)).collect(),
    }
}

fn check_fixture(name: &str, format: MboxFormat) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let t = Tmp::new();
    let copy = t.path("box");
    fs::copy(root.join(format!("{name}.mbox")), &copy).unwrap();
    let want = parse_expect(&fs::read_to_string(root.join(format!("{name}.expect"))).unwrap());
    let mut o = opts();
    o.format = format;
    for round in 0..2 {
        // Twice: as found, and after postroom wrote its own state into it.
        let mb = Mailbox::open(&copy, &o, false).unwrap();
        let got = observe(&mb);
        assert_eq!(got.uidvalidity, want.uidvalidity, "{name} round {round}");
        assert_eq!(got.uidnext, want.uidnext, "{name} round {round}");
        for k in &want.keywords {
            assert!(got.keywords.contains(k), "{name}: keyword {k} missing");
        }
        assert_eq!(got.messages, want.messages, "{name} round {round}");
        let d = root.join(format!("{name}.d"));
        for (i, m) in mb.messages().iter().enumerate() {
            let eml = d.join(format!("{}.eml", m.uid));
            if eml.exists() {
                assert_eq!(
                    mb.message_bytes(i).unwrap(),
                    fs::read(&eml).unwrap(),
                    "{name} uid {} differs from {}",
                    m.uid,
                    eml.display()
                );
            }
        }
    }
}

#[test]
fn reads_dovecot_flags_and_keywords() {
    check_fixture("dovecot/flags", MboxFormat::Mboxrd);
}

#[test]
fn reads_dovecot_emptied_mailbox() {
    check_fixture("dovecot/empty", MboxFormat::Mboxrd);
}

#[test]
fn reads_dovecot_pseudo_message_then_new_mail() {
    check_fixture("dovecot/pseudo", MboxFormat::Mboxrd);
}

#[test]
fn reads_mta_mailbox_after_dovecot_gave_uids() {
    // Written by an MTA that quotes mboxo style; Dovecot serves `>From`
    // as stored, and so does postroom with `mbox-format mboxo`.
    check_fixture("dovecot/fresh", MboxFormat::Mboxo);
}

#[test]
fn reads_uw_imap_pseudo_message_layout() {
    check_fixture("uw/internal", MboxFormat::Mboxo);
}

#[test]
fn reads_uw_imap_base_on_first_message() {
    check_fixture("uw/base", MboxFormat::Mboxo);
}

/// Writes what postroom sees into the checker's expect format.
fn write_expect(mb: &Mailbox, dir: &Path) {
    let e = observe(mb);
    let mut s = format!("uidvalidity {}\nuidnext {}\nkeywords", e.uidvalidity, e.uidnext);
    for k in mb.keywords() {
        s.push(' ');
        s.push_str(k);
    }
    s.push('\n');
    let d = dir.join("box.d");
    fs::create_dir_all(&d).unwrap();
    for (i, (uid, flags, kws, size)) in e.messages.iter().enumerate() {
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        let k: Vec<&str> = kws.iter().map(String::as_str).collect();
        s.push_str(&format!("message {uid} {} ; {} ; {size}\n", f.join(" "), k.join(" ")));
        fs::write(d.join(format!("{uid}.eml")), mb.message_bytes(i).unwrap()).unwrap();
    }
    fs::write(dir.join("box.expect"), s).unwrap();
}

#[test]
fn mailbox_written_by_postroom_opens_in_dovecot_with_the_same_state() {
    if !Path::new("/usr/sbin/dovecot").exists() {
        support::cannot_run("Dovecot is not installed (apt-get install dovecot-imapd); .ci/run installs it");
        return;
    }
    let t = Tmp::new();
    let p = t.path("box");
    // Dovecot reads `>From` lines as mboxo does (it never unquotes), so
    // bytes compare equal in that format.
    let o = Options { format: MboxFormat::Mboxo, ..Options::default() };
    let mut mb = Mailbox::open(&p, &o, true).unwrap();
    for (i, c) in corpus().iter().enumerate() {
        // Dovecot adds a newline to messages without one and turns NUL
        // into 0x80: leave those out.
        if !c.ends_with(b"\n") || c.is_empty() || c.contains(&0) {
            continue;
        }
        let kws: &[&str] = if i % 3 == 0 { &["$Forwarded", "Junk"] } else { &[] };
        mb.append(
            c,
            if i % 2 == 0 { Flags::SEEN } else { Flags::empty() },
            kws,
            Some(1_700_000_000 + i as i64),
            "x@example.org",
        )
        .unwrap();
    }
    for id in ["a", "b", "c"] {
        mb.append(&message_for(id), Flags::empty(), &[], None, "x@example.org").unwrap();
    }
    // Expunge two, flag others in place and by rewrite.
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    mb.expunge(&[uids[1], uids[uids.len() - 1]]).unwrap();
    let kw = 1u64 << mb.keyword_bit("project-x").unwrap();
    mb.set_flags(0, Flags::SEEN.union(Flags::ANSWERED).union(Flags::FLAGGED), kw);
    mb.set_flags(2, Flags::DELETED.union(Flags::DRAFT), 0);
    mb.flush().unwrap();
    drop(mb);
    let mb = Mailbox::open(&p, &o, false).unwrap();
    write_expect(&mb, t.dir.path());
    drop(mb);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dovecot_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&p)
        .arg(t.path("box.expect"))
        .arg(t.path("box.d"))
        .output()
        .expect("run python3");
    let code = out.status.code().unwrap_or(-1);
    if code == 77 {
        support::cannot_run(&String::from_utf8_lossy(&out.stdout));
        return;
    }
    assert_eq!(
        code,
        0,
        "Dovecot disagrees:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#!/usr/bin/env python3
"""Check that Dovecot opens an mbox file with the state an .expect file names.

    python3 tests/dovecot_check.py MBOX EXPECT [EML_DIR]

postroom keeps IMAP state (UIDVALIDITY, UIDNEXT, UIDs, flags, keywords) in
the mbox file itself, in the headers Dovecot and UW-IMAP use. This script
proves that a mailbox postroom wrote opens in Dovecot with the same state:

  1. MBOX is copied into a fresh temporary directory as the INBOX (the
     original is never opened for writing: Dovecot rewrites the file it
     serves).
  2. A private Dovecot (/usr/sbin/dovecot, or $DOVECOT) is started in the
     foreground on 127.0.0.1 on a high port it binds itself, with in-memory indexes,
     so everything it reports comes from the file alone.
  3. The script logs in, SELECTs INBOX and compares UIDVALIDITY, UIDNEXT,
     the keyword list (the FLAGS response), and each message's UID, flags,
     keywords and RFC822.SIZE with EXPECT; with EML_DIR it also compares
     the exact bytes of UID FETCH n BODY.PEEK[] with EML_DIR/n.eml.
  4. Dovecot is stopped by its PID on every exit path.

Exit status: 0 all facts match, 1 a mismatch (a diff is printed), 2 usage
or setup error, 77 Dovecot is not installed (the automake "skip" code).

EXPECT is plain text, one fact a line; blank lines and lines starting with
'#' are ignored:

    uidvalidity N
    uidnext N
    keywords KW...                    the mailbox's keyword list, in order
    message UID FLAG... ; KW... ; SIZE

Message lines are in sequence order. FLAG are system flags (\\Seen
\\Answered \\Flagged \\Deleted \\Draft), KW keywords; either part may be
empty. Flags and keywords of a message are compared as sets; \\Recent is
ignored, as it belongs to the session and not to the file.

The module can also be imported: Dovecot (a context manager) runs a
private instance on a directory, used by the fixture builder in
tests/fixtures/make_dovecot_fixtures.py.
"""

import difflib
import grp
import imaplib
import os
import pwd
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DOVECOT = os.environ.get("DOVECOT", "/usr/sbin/dovecot")
SYSTEM_FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
USER = "postroom-test"
PASSWORD = "postroom-test-secret"

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR, EXIT_SKIP = 0, 1, 2, 77


class SetupError(Exception):
    pass


# Dovecot binds its port itself: the script picks one to try and, when
# another program holds it (Dovecot exits at start saying so), tries
# another. Nothing binds a port and releases it for Dovecot to take.
PORT_ATTEMPTS = 8


def port_to_try():
    """A high port on 127.0.0.1 for Dovecot to try binding."""
    return random.SystemRandom().randrange(20000, 50000)


def listens_on(pid, port):
    """Whether process `pid` holds the socket listening on 127.0.0.1:port
    (so a connection there reaches it and no other program)."""
    want = "0100007F:%04X" % port
    inodes = set()
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[1] == want and cols[3] == "0A":
                    inodes.add("socket:[%s]" % cols[9])
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in inodes:
                return True
        except OSError:
            pass
    return False


class Dovecot:
    """A private Dovecot serving one user whose INBOX is <root>/u/inbox.

    Use as a context manager; the process is stopped by PID on exit.
    index: "MEMORY" for in-memory indexes (state read from the file only),
    or None for on-disk indexes under <root>/u/mail/.imap.
    """

    def __init__(self, root, index="MEMORY", extra_conf=""):
        self.root = os.path.abspath(root)
        self.home = os.path.join(self.root, "u")
        self.inbox = os.path.join(self.home, "inbox")
        self.maildir = os.path.join(self.home, "mail")
        self.log = os.path.join(self.root, "dovecot.log")
        self.index = index
        self.extra_conf = extra_conf
        self.proc = None
        self.port = None

    # -- set-up ---------------------------------------------------------

    def _ids(self):
        """uid, gid, user name for mail access; internal/login users."""
        if os.geteuid() == 0:
            # Dovecot refuses mail access as root: use nobody.
            try:
                pw = pwd.getpwnam("nobody")
                return pw.pw_uid, pw.pw_gid, None
            except KeyError:
                return 65534, 65534, None
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_uid, pw.pw_gid, pw.pw_name

    def write_config(self):
        uid, gid, self_user = self._ids()
        os.makedirs(self.maildir, exist_ok=True)
        for sub in ("run", "state"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        os.chmod(self.root, 0o755)
        passwd = os.path.join(self.root, "passwd")
        with open(passwd, "w") as f:
            f.write("%s:{PLAIN}%s\n" % (USER, PASSWORD))
        location = "mbox:%s:INBOX=%s" % (self.maildir, self.inbox)
        if self.index:
            location += ":INDEX=" + self.index
        lines = [
            "protocols = imap",
            "listen = 127.0.0.1",
            "base_dir = %s/run" % self.root,
            "state_dir = %s/state" % self.root,
            "instance_name = postroom-check-%d" % self.port,
            "log_path = %s" % self.log,
            "ssl = no",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain",
            "first_valid_uid = %d" % min(uid, 100),
            "last_valid_uid = 0",
            "first_valid_gid = %d" % min(gid, 1),
            "mail_location = %s" % location,
            # fcntl only: no dotlock files (the INBOX directory need not be
            # writable for a lock file, and nothing else touches it).
            "mbox_write_locks = fcntl",
            "mbox_read_locks = fcntl",
            "passdb {",
            "  driver = passwd-file",
            "  args = scheme=PLAIN username_format=%%u %s" % passwd,
            "}",
            "userdb {",
            "  driver = static",
            "  args = uid=%d gid=%d home=%s" % (uid, gid, self.home),
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            "    address = 127.0.0.1",
            "    port = %d" % self.port,
            "  }",
            "  inet_listener imaps {",
            "    port = 0",
            "  }",
            "}",
        ]
        if self_user:
            # Unprivileged run: every Dovecot process runs as this user.
            lines += [
                "default_internal_user = %s" % self_user,
                "default_internal_group = %s" % grp.getgrgid(os.getegid()).gr_name,
                "default_login_user = %s" % self_user,
                # chroot needs root
                "service anvil {",
                "  chroot =",
                "}",
                "service imap-login {",
                "  chroot =",
                "}",
            ]
        lines.append(self.extra_conf)
        conf = os.path.join(self.root, "dovecot.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            for dirpath, dirnames, filenames in os.walk(self.home):
                os.chown(dirpath, uid, gid)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), uid, gid)
        return conf

    def put_inbox(self, data):
        """Write the INBOX file (bytes), owned by the mail user."""
        os.makedirs(self.home, exist_ok=True)
        with open(self.inbox, "wb") as f:
            f.write(data)
        if os.geteuid() == 0:
            uid, gid, _ = self._ids()
            os.chown(self.home, uid, gid)
            os.chown(self.inbox, uid, gid)
        os.chmod(self.inbox, 0o600)

    def read_inbox(self):
        with open(self.inbox, "rb") as f:
            return f.read()

    # -- process --------------------------------------------------------

    def start(self, timeout=15.0):
        """Start Dovecot on a port it binds itself, trying another port
        when the one tried is taken."""
        for attempt in range(PORT_ATTEMPTS):
            self.port = port_to_try()
            try:
                return self._start_once(timeout)
            except SetupError as e:
                if "Address already in use" not in str(e) or attempt + 1 == PORT_ATTEMPTS:
                    raise
                self.proc = None

    def _start_once(self, timeout):
        if not os.access(DOVECOT, os.X_OK):
            raise FileNotFoundError(DOVECOT)
        conf = self.write_config()
        for name in ("dovecot.stdout", "dovecot.log"):
            try:
                os.unlink(os.path.join(self.root, name))
            except FileNotFoundError:
                pass
        out = open(os.path.join(self.root, "dovecot.stdout"), "wb")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", conf],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SetupError("dovecot exited with %s:\n%s" % (self.proc.returncode, self.logs()))
            if listens_on(self.proc.pid, self.port):
                return
            if time.monotonic() > deadline:
                raise SetupError("dovecot did not listen on 127.0.0.1:%d\n%s" % (self.port, self.logs()))
            time.sleep(0.05)

    def stop(self):
        """Stop the master by its PID; it ends its own children."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def logs(self):
        text = []
        for name in ("dovecot.stdout", "dovecot.log"):
            try:
                with open(os.path.join(self.root, name), errors="replace") as f:
                    text.append(f.read())
            except OSError:
                pass
        return "".join(text)

    def connect(self):
        m = imaplib.IMAP4("127.0.0.1", self.port)
        typ, data = m.login(USER, PASSWORD)
        if typ != "OK" or (data and b"initialization failed" in data[0]):
            raise SetupError("login failed: %r\n%s" % (data, self.logs()))
        return m

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# -- reading a mailbox over IMAP ----------------------------------------

FETCH_RE = re.compile(rb"^(\d+) \(")


def split_flags(flags):
    """-> (system flags in canonical order, keywords in given order)."""
    system = [f for f in SYSTEM_FLAGS if f in flags]
    keywords = [f for f in flags if not f.startswith("\\")]
    return system, keywords


def parse_flag_list(text):
    return text.split()


def fetch_state(m, with_bodies=False):
    """SELECT INBOX and read its state. Returns a dict, see expect_lines."""
    typ, data = m.select("INBOX")
    if typ != "OK":
        raise SetupError("SELECT INBOX failed: %r" % data)
    exists = int(data[0])
    state = {
        "uidvalidity": int(m.untagged_responses.get("UIDVALIDITY", [b"0"])[-1]),
        "uidnext": int(m.untagged_responses.get("UIDNEXT", [b"0"])[-1]),
        "keywords": [],
        "messages": [],
        "bodies": {},
    }
    flags_resp = m.untagged_responses.get("FLAGS", [b"()"])[-1].decode()
    flags = parse_flag_list(flags_resp.strip("()"))
    state["keywords"] = [f for f in flags if not f.startswith("\\")]
    if exists == 0:
        return state
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE)")
    if typ != "OK":
        raise SetupError("FETCH failed: %r" % data)
    rows = []
    for item in data:
        if isinstance(item, tuple):
            item = item[0]
        if not item:
            continue
        mseq = FETCH_RE.match(item)
        if not mseq:
            continue
        seq = int(mseq.group(1))
        uid = int(re.search(rb"\bUID (\d+)", item).group(1))
        size = int(re.search(rb"\bRFC822\.SIZE (\d+)", item).group(1))
        fl = re.search(rb"\bFLAGS \(([^)]*)\)", item).group(1).decode()
        fl = [f for f in fl.split() if f != "\\Recent"]
        system, keywords = split_flags(fl)
        rows.append((seq, uid, system, keywords, size))
    rows.sort()
    state["messages"] = [(uid, system, keywords, size) for _, uid, system, keywords, size in rows]
    if with_bodies:
        for uid, _, _, _ in state["messages"]:
            typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
            if typ != "OK":
                raise SetupError("FETCH BODY.PEEK[] failed: %r" % data)
            body = None
            for item in data:
                if isinstance(item, tuple):
                    body = item[1]
            if body is None:
                # an empty literal may come back as a quoted "" or NIL
                body = b""
            state["bodies"][uid] = body
    return state


# -- expect files ---------------------------------------------------------

def message_line(uid, system, keywords, size):
    head = " ".join(["message", str(uid)] + list(system))
    kw = " ".join(keywords)
    return "%s ; %s; %d" % (head, kw + " " if kw else "", size)


def canonical(uid, system, keywords, size):
    """A message line with flags in canonical order and keywords sorted."""
    return message_line(uid, split_flags(system)[0], sorted(keywords), size)


def expect_lines(state):
    """The lines an .expect file holds for a state (canonical form)."""
    lines = [
        "uidvalidity %d" % state["uidvalidity"],
        "uidnext %d" % state["uidnext"],
        ("keywords " + " ".join(state["keywords"])).rstrip(),
    ]
    for uid, system, keywords, size in state["messages"]:
        lines.append(canonical(uid, system, keywords, size))
    return lines


def parse_expect(path):
    """Read an .expect file into canonical lines (same form as expect_lines)."""
    out = {"uidvalidity": None, "uidnext": None, "keywords": None, "messages": []}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            try:
                if word in ("uidvalidity", "uidnext"):
                    out[word] = int(rest)
                elif word == "keywords":
                    out["keywords"] = rest.split()
                elif word == "message":
                    parts = [p.strip() for p in rest.split(";")]
                    if len(parts) != 3:
                        raise ValueError("want 'message UID FLAGS ; KEYWORDS ; SIZE'")
                    head = parts[0].split()
                    uid = int(head[0])
                    system = head[1:]
                    for f in system:
                        if f not in SYSTEM_FLAGS:
                            raise ValueError("unknown system flag %s" % f)
                    out["messages"].append((uid, system, parts[1].split(), int(parts[2])))
                else:
                    raise ValueError("unknown fact %r" % word)
            except (ValueError, IndexError) as e:
                raise SetupError("%s:%d: %s" % (path, n, e))
    for key in ("uidvalidity", "uidnext"):
        if out[key] is None:
            raise SetupError("%s: no '%s' line" % (path, key))
    if out["keywords"] is None:
        out["keywords"] = []
    return out


def compare(expected, actual, eml_dir=None):
    """Returns a list of printable problems (empty when all match)."""
    problems = []
    want = expect_lines(expected)
    got = expect_lines(actual)
    if want != got:
        diff = difflib.unified_diff(want, got, "expected", "dovecot", lineterm="")
        problems.append("state differs:\n" + "\n".join(diff))
    if eml_dir is not None:
        for uid, _, _, _ in actual["messages"]:
            path = os.path.join(eml_dir, "%d.eml" % uid)
            try:
                with open(path, "rb") as f:
                    want_body = f.read()
            except FileNotFoundError:
                problems.append("%s: missing (Dovecot has UID %d)" % (path, uid))
                continue
            got_body = actual["bodies"].get(uid, b"")
            if want_body != got_body:
                problems.append("UID %d: BODY[] differs from %s (%d bytes expected, %d got):\n%s" % (
                    uid, path, len(want_body), len(got_body), bytes_diff(want_body, got_body)))
        uids = {"%d.eml" % uid for uid, _, _, _ in actual["messages"]}
        for name in sorted(os.listdir(eml_dir)):
            if name.endswith(".eml") and name not in uids:
                problems.append("%s: no message with that UID in Dovecot" % os.path.join(eml_dir, name))
    return problems


def bytes_diff(want, got):
    a = [repr(l) for l in want.splitlines(True)]
    b = [repr(l) for l in got.splitlines(True)]
    return "\n".join(difflib.unified_diff(a, b, "expected", "dovecot", lineterm="", n=1))


def read_with_dovecot(mbox_bytes, with_bodies, keep=False):
    """Serve mbox_bytes as INBOX of a private Dovecot; return the state."""
    root = tempfile.mkdtemp(prefix="postroom-dovecot-")
    try:
        d = Dovecot(root)
        d.put_inbox(mbox_bytes)
        with d:
            m = d.connect()
            try:
                return fetch_state(m, with_bodies)
            finally:
                try:
                    m.logout()
                except Exception:
                    pass
    finally:
        if keep:
            print("kept %s" % root, file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv):
    if len(argv) not in (3, 4):
        print("usage: %s MBOX EXPECT [EML_DIR]" % argv[0], file=sys.stderr)
        return EXIT_ERROR
    # Turn SIGTERM/SIGHUP into SystemExit so that the finally clauses stop
    # Dovecot when this script is killed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    mbox, expect = argv[1], argv[2]
    eml_dir = argv[3] if len(argv) == 4 else None
    if not os.access(DOVECOT, os.X_OK):
        print("skip: %s is not installed" % DOVECOT, file=sys.stderr)
        return EXIT_SKIP
    try:
        expected = parse_expect(expect)
        with open(mbox, "rb") as f:
            data = f.read()
        if eml_dir is not None and not os.path.isdir(eml_dir):
            raise SetupError("%s: not a directory" % eml_dir)
        actual = read_with_dovecot(data, eml_dir is not None,
                                   keep=bool(os.environ.get("DOVECOT_CHECK_KEEP")))
    except (SetupError, OSError, imaplib.IMAP4.error) as e:
        print("error: %s" % e, file=sys.stderr)
        return EXIT_ERROR
    problems = compare(expected, actual, eml_dir)
    if problems:
        print("MISMATCH: %s as read by Dovecot differs from %s" % (mbox, expect))
        for p in problems:
            print(p)
        return EXIT_MISMATCH
    print("ok: %s opens in Dovecot as %s says (%d messages)" % (
        mbox, expect, len(actual["messages"])))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))

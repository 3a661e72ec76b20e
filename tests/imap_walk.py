#!/usr/bin/env python3
"""Python's imaplib against postroomd: every command a client uses.

    PYTHONPATH=tests/support python3 tests/imap_walk.py MODE OUT MAIL PORT TLSPORT CAFILE NAME

Run by tests/imap_clients.rs against a server on 127.0.0.1. MODE is

  plain  one session over plain IMAP: CAPABILITY, LOGIN, AUTHENTICATE
         PLAIN, NAMESPACE, LIST, LSUB, CREATE, RENAME, DELETE, SUBSCRIBE,
         UNSUBSCRIBE, STATUS, EXAMINE, SELECT, APPEND, FETCH, STORE,
         SEARCH, COPY, MOVE, the UID forms, EXPUNGE, IDLE, CLOSE, UNSELECT
         and LOGOUT;
  tls    IMAP4_SSL with the server's certificate verified (CAFILE, under
         the names NAME, localhost and 127.0.0.1), names and roots the
         certificate does not match, TLS 1.2, and STARTTLS on the plain
         port of a server that allows no plaintext login before it.

MAIL is a directory of messages (N.eml) the test stored or wants
appended. Every step prints one line, "STEP TYPE DATA", where DATA is
imaplib's answer with its items joined by " | "; a literal is saved as
the file OUT/STEP.N and shows as "<STEP.N>". Untagged responses that
imaplib kept aside follow as "STEP untagged NAME: ITEM, ...". At "CHECK
LABEL" the script waits for a line "go" on stdin: the test looks at the
mailbox files then.
"""

import imaplib
import os
import socket
import sys

import strict_tls

MODE, OUT, MAIL = sys.argv[1], sys.argv[2], sys.argv[3]
PORT, TLSPORT, CAFILE, NAME = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]


def text(b):
    if isinstance(b, bytes):
        return b.decode("ascii", "backslashreplace")
    return str(b)


def say(*words):
    print(" ".join(text(w) for w in words), flush=True)


def render(step, data):
    parts = []
    n = 0
    for item in data:
        if isinstance(item, tuple):
            n += 1
            name = "%s.%d" % (step, n)
            with open(os.path.join(OUT, name), "wb") as f:
                f.write(item[1])
            parts.append("%s <%s>" % (text(item[0]), name))
        else:
            parts.append(text(item))
    return " | ".join(parts)


def leftovers(m, step):
    for key, items in m.untagged_responses.items():
        say(step, "untagged", "%s: %s" % (key, ", ".join(text(i) for i in items)))
    m.untagged_responses.clear()


def do(m, step, fn, *args):
    """One command: its result, then what else the server said."""
    m.untagged_responses.clear()
    try:
        typ, data = fn(*args)
        say(step, typ, render(step, data))
    except (m.error, m.abort) as e:
        say(step, "error", e.args[0])
    leftovers(m, step)


def check(label):
    say("CHECK", label)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)


def mail(n):
    with open(os.path.join(MAIL, "%s.eml" % n), "rb") as f:
        return f.read()


def raw(m, line):
    """Sends a line as is; imaplib has no IDLE before Python 3.14."""
    m.send(line + b"\r\n")


def readline(m):
    return m.readline().rstrip(b"\r\n")


def context(tls12=False):
    return strict_tls.context(CAFILE, tls12)


Named = strict_tls.named(imaplib.IMAP4_SSL, "ssl_context")


def plain():
    m = imaplib.IMAP4("127.0.0.1", PORT, timeout=30)
    say("welcome", m.welcome)
    do(m, "capability", m.capability)
    # Refused logins: a wrong password, an unknown user.
    do(m, "login-wrong", m.login, "alice", "wrong")
    do(m, "login-unknown", m.login, "nobody-here", "secret-alice")
    do(m, "login", m.login, "alice", "secret-alice")
    say("state", m.state)
    do(m, "capability-after", m.capability)
    do(m, "namespace", m.namespace)

    # Mailboxes.
    do(m, "list", m.list)
    do(m, "list-root", m.list, '""', '""')
    do(m, "lsub", m.lsub)
    do(m, "create", m.create, "Work")
    do(m, "create-deep", m.create, "Projects/2024")
    do(m, "create-utf7", m.create, "Entw&APw-rfe")
    do(m, "create-again", m.create, "Work")
    do(m, "list-percent", m.list, '""', "%")
    do(m, "list-children", m.list, "Projects/", "%")
    do(m, "rename", m.rename, "Projects", "Old")
    do(m, "list-renamed", m.list, '""', "Old*")
    do(m, "delete", m.delete, "Old/2024")
    do(m, "delete-parent", m.delete, "Old")
    do(m, "delete-missing", m.delete, "Nowhere")
    do(m, "delete-inbox", m.delete, "INBOX")
    do(m, "subscribe", m.subscribe, "Work")
    do(m, "subscribe-utf7", m.subscribe, "Entw&APw-rfe")
    do(m, "lsub-subscribed", m.lsub, '""', "*")
    do(m, "unsubscribe", m.unsubscribe, "Entw&APw-rfe")
    do(m, "lsub-after", m.lsub, '""', "Work")
    check("mailboxes")

    # The INBOX as stored, read-only first.
    do(m, "status", m.status, "INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    do(m, "status-work", m.status, "Work", "(MESSAGES UIDNEXT)")
    m.untagged_responses.clear()
    typ, data = m.select("INBOX", readonly=True)
    say("examine", typ, render("examine", data))
    for key in ("FLAGS", "PERMANENTFLAGS", "RECENT", "UNSEEN", "UIDVALIDITY", "UIDNEXT", "READ-ONLY"):
        say("examine", key, render("examine", m.untagged_responses.get(key, [])))
    m.untagged_responses.clear()
    do(m, "examine-fetch", m.fetch, "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    do(m, "examine-rfc822", m.fetch, "1", "(RFC822)")
    do(m, "examine-store", m.store, "1", "+FLAGS", "(\\Seen)")
    do(m, "examine-flags", m.fetch, "1", "(FLAGS)")

    # APPEND: flags, a date, a new keyword; and into another mailbox.
    do(m, "append", m.append, "INBOX", "(\\Seen $Label1)", '"05-Feb-2024 10:20:30 +0100"', mail("append"))
    do(m, "append-work", m.append, "Work", None, None, mail("append-work"))
    do(m, "append-draft", m.append, "Drafts", "(\\Draft)", None, mail("append-draft"))
    do(m, "append-missing", m.append, "Nowhere", None, None, mail("append"))
    check("append")

    # SELECT and FETCH.
    m.untagged_responses.clear()
    typ, data = m.select("INBOX")
    say("select", typ, render("select", data))
    for key in ("FLAGS", "PERMANENTFLAGS", "RECENT", "UNSEEN", "UIDVALIDITY", "UIDNEXT", "READ-WRITE"):
        say("select", key, render("select", m.untagged_responses.get(key, [])))
    m.untagged_responses.clear()
    count = int(data[0])
    do(m, "fetch-index", m.fetch, "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    for n in range(1, count + 1):
        do(m, "peek-%d" % n, m.fetch, str(n), "(BODY.PEEK[])")
    do(m, "rfc822", m.fetch, "1", "(RFC822)")
    do(m, "rfc822-again", m.fetch, "1", "(RFC822)")
    do(m, "body", m.fetch, "3", "(BODY[])")
    do(m, "subject", m.fetch, "1:3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    do(m, "header", m.fetch, "3", "(BODY.PEEK[HEADER] RFC822.HEADER)")
    do(m, "text", m.fetch, "3", "(BODY.PEEK[TEXT])")
    do(m, "partial", m.fetch, "4", "(BODY.PEEK[]<0.100> BODY.PEEK[]<100000.5000> BODY.PEEK[TEXT]<2.10>)")
    do(m, "partial-past-end", m.fetch, "1", "(BODY.PEEK[]<99999999.10>)")
    do(m, "mime-part", m.fetch, "2", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2])")
    do(m, "bodystructure", m.fetch, "1:2", "(BODYSTRUCTURE)")
    do(m, "envelope", m.fetch, "5", "(ENVELOPE)")
    do(m, "fetch-bad", m.fetch, "99", "(FLAGS)")

    # STORE.
    do(m, "store-add", m.store, "1", "+FLAGS", "(\\Flagged)")
    do(m, "store-replace", m.store, "2", "FLAGS", "(\\Answered $Work)")
    do(m, "store-remove", m.store, "1", "-FLAGS", "(\\Seen)")
    do(m, "store-silent", m.store, "3", "+FLAGS.SILENT", "(\\Seen)")
    do(m, "store-flags", m.fetch, "1:*", "(FLAGS)")
    check("store")

    # SEARCH.
    do(m, "search-all", m.search, None, "ALL")
    do(m, "search-flagged", m.search, None, "FLAGGED")
    do(m, "search-unseen", m.search, None, "UNSEEN")
    do(m, "search-subject", m.search, None, "SUBJECT", '"walk-3"')
    do(m, "search-keyword", m.search, None, "KEYWORD", "$Work")
    do(m, "search-or", m.search, None, "OR", "FLAGGED", "ANSWERED")
    do(m, "search-utf8", m.search, "UTF-8", "SUBJECT", b'"caf\xc3\xa9"')
    do(m, "search-larger", m.search, None, "LARGER", "100000")
    do(m, "search-since", m.search, None, "SINCE", "1-Feb-2024")
    do(m, "search-body", m.search, None, "BODY", '"ordinary text"')

    # COPY and MOVE.
    do(m, "copy", m.copy, "1:2", "Work")
    do(m, "copy-missing", m.copy, "1", "Nowhere")
    check("copy")
    do(m, "move", m._simple_command, "MOVE", "3", "Work")
    check("move")

    # The UID forms.
    do(m, "uid-fetch", m.uid, "FETCH", "1:*", "(FLAGS)")
    do(m, "uid-fetch-body", m.uid, "FETCH", "5", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    do(m, "uid-fetch-gone", m.uid, "FETCH", "3", "(FLAGS)")
    do(m, "uid-store", m.uid, "STORE", "4:5", "+FLAGS", "(\\Deleted)")
    do(m, "uid-search", m.uid, "SEARCH", None, "DELETED")
    do(m, "uid-copy", m.uid, "COPY", "1", "Work")
    do(m, "uid-move", m.uid, "MOVE", "2", "Work")
    do(m, "uid-expunge", m.uid, "EXPUNGE", "5")
    check("uid")

    # EXPUNGE.
    do(m, "expunge", m.expunge)
    do(m, "store-deleted", m.store, "1", "+FLAGS", "(\\Deleted)")
    do(m, "expunge-again", m.expunge)
    do(m, "expunge-nothing", m.expunge)
    do(m, "after-expunge", m.fetch, "1:*", "(UID FLAGS)")
    check("expunge")

    # IDLE, while a second session (logged in with AUTHENTICATE PLAIN)
    # appends, and then selects the INBOX and changes flags. It appends
    # before it selects, so that the idling session is the one that finds
    # the new message \Recent.
    o = imaplib.IMAP4("127.0.0.1", PORT, timeout=30)
    do(o, "authenticate", o.authenticate, "PLAIN", lambda _: b"\0alice\0secret-alice")
    say("state-other", o.state)
    tag = m._new_tag()
    raw(m, tag + b" IDLE")
    say("idle", readline(m))
    do(o, "other-append", o.append, "INBOX", None, None, mail("idle"))
    say("idle", readline(m))
    say("idle", readline(m))
    do(o, "other-select", o.select, "INBOX")
    do(o, "other-store", o.store, "1", "+FLAGS", "(\\Answered)")
    say("idle", readline(m))
    # A message that comes and goes while the session idles: each change
    # is read before the next is made, so that none can overtake another.
    # The other session appends unselected: the idling one takes \Recent.
    do(o, "other-unselect", o.unselect)
    do(o, "other-append-2", o.append, "INBOX", None, None, mail("append-draft"))
    say("idle", readline(m))
    say("idle", readline(m))
    do(o, "other-select-2", o.select, "INBOX")
    do(o, "other-delete", o.uid, "STORE", "8", "+FLAGS", "(\\Deleted)")
    say("idle", readline(m))
    do(o, "other-expunge", o.uid, "EXPUNGE", "8")
    say("idle", readline(m))
    raw(m, b"DONE")
    say("idle-done", readline(m).replace(tag, b"TAG"))
    do(o, "other-logout", o.logout)
    do(m, "after-idle", m.fetch, "1:*", "(UID FLAGS)")
    check("idle")

    # CLOSE expunges silently, UNSELECT does not.
    do(m, "store-close", m.store, "2", "+FLAGS", "(\\Deleted)")
    do(m, "close", m.close)
    say("state", m.state)
    check("close")
    do(m, "select-work", m.select, "Work")
    do(m, "work-store", m.store, "1", "+FLAGS", "(\\Deleted)")
    do(m, "unselect", m.unselect)
    say("state", m.state)
    do(m, "fetch-unselected", m.fetch, "1", "(FLAGS)")
    do(m, "logout", m.logout)
    say("state", m.state)
    check("logout")


def tls():
    # Implicit TLS under every name the certificate carries.
    for name in (NAME, "localhost", "127.0.0.1"):
        m = Named(name, TLSPORT, context())
        say("imaps", name, m.welcome)
        do(m, "logout", m.logout)
    # imaplib's own class, which checks the host it connects to.
    m = imaplib.IMAP4_SSL("127.0.0.1", TLSPORT, ssl_context=context(), timeout=30)
    say("imaps", m.welcome)
    do(m, "capability", m.capability)
    do(m, "login", m.login, "alice", "secret-alice")
    say("tls", m.sock.version())
    fetch_all(m, "imaps")
    do(m, "logout", m.logout)
    # A name the certificate lacks, and the system's roots instead of it.
    for words in strict_tls.refusals(CAFILE, NAME, lambda name, ctx: Named(name, TLSPORT, ctx).logout()):
        say(*words)
    # TLS 1.2, logged in with AUTHENTICATE PLAIN.
    m = Named(NAME, TLSPORT, context(tls12=True))
    do(m, "authenticate", m.authenticate, "PLAIN", lambda _: b"\0alice\0secret-alice")
    say("tls", m.sock.version())
    fetch_all(m, "tls12")
    do(m, "logout", m.logout)
    # STARTTLS on the plain port: no plaintext login before it.
    m = imaplib.IMAP4("127.0.0.1", PORT, timeout=30)
    do(m, "capability", m.capability)
    do(m, "login-plaintext", m.login, "alice", "secret-alice")
    do(m, "authenticate-plaintext", m.authenticate, "PLAIN", lambda _: b"\0alice\0secret-alice")
    do(m, "starttls", m.starttls, context())
    say("tls", m.sock.version())
    do(m, "capability", m.capability)
    do(m, "starttls-again", m._simple_command, "STARTTLS")
    do(m, "login", m.login, "alice", "secret-alice")
    fetch_all(m, "starttls")
    do(m, "logout", m.logout)


def fetch_all(m, prefix):
    typ, data = m.select("INBOX", readonly=True)
    say(prefix, "examine", typ, render(prefix, data))
    for n in range(1, int(data[0]) + 1):
        do(m, "%s-%d" % (prefix, n), m.fetch, str(n), "(BODY.PEEK[])")


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    {"plain": plain, "tls": tls}[MODE]()

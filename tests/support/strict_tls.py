"""TLS for the Python clients of the tests: poplib's script in
tests/clients.rs and tests/imap_walk.py.

Only the server's own certificate is trusted, checked strictly, and a
client may connect to 127.0.0.1 while checking the certificate for a name
the certificate should carry.
"""

import ssl


def context(cafile, tls12=False):
    """Trusts `cafile` alone; at most TLS 1.2 if `tls12`."""
    c = ssl.create_default_context(cafile=cafile)
    c.verify_flags |= ssl.VERIFY_X509_STRICT
    if tls12:
        c.maximum_version = ssl.TLSVersion.TLSv1_2
    return c


def named(tls_class, context_arg):
    """A subclass of `tls_class` (poplib.POP3_SSL, imaplib.IMAP4_SSL),
    whose constructor takes its TLS context as `context_arg`, that connects
    to 127.0.0.1 and checks the certificate for the name it is given."""
    plain_class = tls_class.__bases__[0]

    class Named(tls_class):
        def __init__(self, name, port, ctx):
            self.name = name
            self.checking = ctx
            tls_class.__init__(self, "127.0.0.1", port, timeout=30, **{context_arg: ctx})

        def _create_socket(self, timeout):
            sock = plain_class._create_socket(self, timeout)
            return self.checking.wrap_socket(sock, server_hostname=self.name)

    return Named


def refusals(cafile, name, connect):
    """Connects with `connect(name, ctx)` under a name the certificate
    lacks, then under `name` with the system's roots instead of `cafile`.
    Returns what became of each: "accepted" and the name, or "refused",
    the name and OpenSSL's verification code."""
    out = []
    for n, ctx in (("wrong.example", context(cafile)), (name, ssl.create_default_context())):
        try:
            connect(n, ctx)
            out.append(("accepted", n))
        except ssl.SSLCertVerificationError as e:
            out.append(("refused", n, e.verify_code))
    return out

//! The POP3 session: RFC 1939's AUTHORIZATION, TRANSACTION and UPDATE
//! states, one function per command.
//!
//! The maildrop is fixed at login: message numbers and sizes do not change
//! during the session, mail the MTA delivers meanwhile is left for the
//! next session (and is never deleted by this one's QUIT), and deletions
//! happen only at QUIT. A dropped connection or an idle timeout deletes
//! nothing and releases the maildrop lock.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use log::{debug, info, warn};

use super::command::{self, Command, Secret};
use super::reply::Pop3Error;
use super::stuff::{DotStuffer, Enough};
use crate::auth::{sasl, Account, AuthError};
use crate::config::{Config, PlaintextAuth, Pop3Workaround};
use crate::limits::REPLY_BUDGET;
use crate::net::{Conn, LineError};
use crate::server::Context;
use crate::store::lock::SessionLock;
use crate::store::reader::{self, Part, Reader};
use crate::store::{Event, Flags, Shared, StoreError};

/// RFC 2449 section 4: a command line is at most 255 octets; SASL
/// responses (RFC 5034) may be longer. Before login the cap is
/// [`crate::limits::PRELOGIN_LINE`], which the longest login still fits.
const MAX_LINE: usize = 8 * 1024;
/// What one batch of a message may add to the reply buffer: a batch may
/// overshoot by what one read produces, and byte-stuffing and the output
/// buffer take a little more.
const BATCH: usize = REPLY_BUDGET - reader::SLACK;
/// Bad commands before we hang up on a confused or hostile client.
const MAX_BAD_COMMANDS: u32 = 20;

/// One message of the maildrop as fixed at login.
struct PopMsg {
    uid: u32,
    size: u64,
    deleted: bool,
    retrieved: bool,
}

struct Maildrop {
    user: String,
    /// `None` when the user has no INBOX file yet: an empty maildrop.
    shared: Option<Arc<Shared>>,
    _lock: SessionLock,
    uidvalidity: u32,
    msgs: Vec<PopMsg>,
}

enum State {
    Authorization { user: Option<String> },
    Transaction(Box<Maildrop>),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Authorization { .. } => "authorization",
            State::Transaction(_) => "transaction",
        }
    }
}

#[derive(Default)]
struct Stats {
    retr: u64,
    retr_bytes: u64,
    del: u64,
    del_bytes: u64,
}

pub struct Session<'a> {
    conn: Conn,
    ctx: &'a Context,
    config: Arc<Config>,
    sid: String,
    state: State,
    bad: u32,
    stats: Stats,
    quit: bool,
}

impl<'a> Session<'a> {
    pub fn new(conn: Conn, ctx: &'a Context, sid: String) -> Session<'a> {
        let config = ctx.config();
        Session {
            conn,
            ctx,
            config,
            sid,
            state: State::Authorization { user: None },
            bad: 0,
            stats: Stats::default(),
            quit: false,
        }
    }

    fn enter(&mut self, next: State) {
        debug!("{} pop3 state {} -> {}", self.sid, self.state.name(), next.name());
        self.state = next;
    }

    /// Runs the session to its end.
    pub fn run(mut self) {
        info!(
            "{} pop3 connected address={} via={} tls={}",
            self.sid,
            self.conn.peer(),
            self.conn.via(),
            yes(self.conn.is_tls())
        );
        self.conn.set_timeout(self.config.idle_timeout_pop3);
        let reason = match self.greet().and_then(|_| self.serve_commands()) {
            Ok(r) => r,
            Err(e @ Pop3Error::Cutoff(c)) => {
                crate::net::log_cutoff(&self.sid, "pop3", c, &self.config, self.config.idle_timeout_pop3);
                let _ = self.conn.write_all(e.wire().as_bytes());
                let _ = self.conn.write_all(b"\r\n");
                let _ = self.conn.flush();
                c.name()
            }
            Err(Pop3Error::Cut(e)) => {
                warn!("{} pop3 response-cut {e}", self.sid);
                "cut"
            }
            Err(e) => {
                debug!("{} pop3 error {e}", self.sid);
                "error"
            }
        };
        self.finish_without_quit();
        info!(
            "{} pop3 disconnected reason={reason} retr={}/{} del={}/{}",
            self.sid, self.stats.retr, self.stats.retr_bytes, self.stats.del, self.stats.del_bytes
        );
    }

    fn greet(&mut self) -> Result<(), Pop3Error> {
        self.conn.write_all(b"+OK postroom ready.\r\n")?;
        self.conn.flush()?;
        Ok(())
    }

    /// The longest line the session reads now: less before login.
    fn max_line(&self) -> usize {
        match self.state {
            State::Authorization { .. } => crate::limits::PRELOGIN_LINE,
            State::Transaction(_) => MAX_LINE,
        }
    }

    fn serve_commands(&mut self) -> Result<&'static str, Pop3Error> {
        loop {
            let line = match self.conn.read_line(self.max_line()) {
                Ok(l) => l,
                Err(LineError::TooLong) => {
                    self.bad_command(Pop3Error::Syntax("Line too long"))?;
                    continue;
                }
                Err(LineError::Eof) => return Ok("eof"),
                Err(LineError::Io(e)) => {
                    return match Pop3Error::from(e) {
                        Pop3Error::Io(_) => Ok("connection-error"),
                        cutoff => Err(cutoff),
                    };
                }
            };
            let cmd = match command::parse(&line) {
                Ok(c) => c,
                Err(command::ParseError::Syntax(t)) => {
                    self.bad_command(Pop3Error::Syntax(t))?;
                    continue;
                }
                Err(command::ParseError::Unknown(k)) => {
                    self.bad_command(Pop3Error::Unknown(k))?;
                    continue;
                }
            };
            log::trace!(
                "{} pop3 <<< {}",
                self.sid,
                if matches!(cmd, Command::Pass(_)) {
                    "PASS ********"
                } else {
                    std::str::from_utf8(&line).unwrap_or("?")
                }
            );
            let result = self.check_allowed(&cmd).and_then(|_| self.execute(cmd));
            if let Err(e) = result {
                if e.is_fatal() {
                    return Err(e);
                }
                if let Pop3Error::Store(ref s) = e {
                    log::error!("{} pop3 store-error {s}", self.sid);
                } else if let Pop3Error::Temporary(ref t) = e {
                    warn!("{} pop3 temporary-failure {t}", self.sid);
                }
                self.conn.write_all(e.wire().as_bytes())?;
                self.conn.write_all(b"\r\n")?;
            }
            self.conn.flush()?;
            if self.quit {
                return Ok("quit");
            }
        }
    }

    fn bad_command(&mut self, e: Pop3Error) -> Result<(), Pop3Error> {
        self.bad += 1;
        self.conn.write_all(e.wire().as_bytes())?;
        self.conn.write_all(b"\r\n")?;
        if self.bad >= MAX_BAD_COMMANDS {
            warn!("{} pop3 too-many-bad-commands", self.sid);
            self.conn.write_all(b"-ERR Too many bad commands, closing.\r\n")?;
            self.conn.flush()?;
            return Err(Pop3Error::Io(std::io::Error::other("too many bad commands")));
        }
        self.conn.flush()?;
        Ok(())
    }

    /// State rules in one place (RFC 1939 sections 4-6).
    fn check_allowed(&self, cmd: &Command) -> Result<(), Pop3Error> {
        let in_auth = matches!(self.state, State::Authorization { .. });
        let ok = match cmd {
            Command::Capa | Command::Quit => true,
            Command::User(_) | Command::Pass(_) | Command::Apop | Command::Auth(_) | Command::Stls => in_auth,
            _ => !in_auth,
        };
        if ok {
            Ok(())
        } else {
            Err(Pop3Error::WrongState)
        }
    }

    /// The command table.
    fn execute(&mut self, cmd: Command) -> Result<(), Pop3Error> {
        match cmd {
            Command::Capa => self.cmd_capa(),
            Command::Quit => self.cmd_quit(),
            Command::User(u) => self.cmd_user(u),
            Command::Pass(p) => self.cmd_pass(p),
            Command::Apop => Err(Pop3Error::Syntax("APOP is not supported; use USER/PASS or AUTH over TLS")),
            Command::Auth(a) => self.cmd_auth(a),
            Command::Stls => self.cmd_stls(),
            Command::Stat => self.cmd_stat(),
            Command::List(n) => self.cmd_list(n),
            Command::Uidl(n) => self.cmd_uidl(n),
            Command::Retr(n) => self.cmd_retr(n),
            Command::Top(n, lines) => self.cmd_top(n, lines),
            Command::Dele(n) => self.cmd_dele(n),
            Command::Noop => self.ok("+OK"),
            Command::Rset => self.cmd_rset(),
        }
    }

    fn ok(&mut self, line: &str) -> Result<(), Pop3Error> {
        self.conn.write_all(line.as_bytes())?;
        self.conn.write_all(b"\r\n")?;
        Ok(())
    }

    fn plaintext_allowed(&self) -> bool {
        match self.config.plaintext_auth {
            PlaintextAuth::Always => true,
            PlaintextAuth::Never => self.conn.is_tls(),
            PlaintextAuth::TlsOrLoopback => self.conn.is_tls() || self.conn.is_loopback(),
        }
    }

    fn can_stls(&self) -> bool {
        !self.conn.is_tls() && self.ctx.tls().is_some()
    }

    fn cmd_capa(&mut self) -> Result<(), Pop3Error> {
        let mut caps = vec!["TOP".to_string()];
        let in_auth = matches!(self.state, State::Authorization { .. });
        if in_auth && self.plaintext_allowed() {
            caps.push("USER".into());
        }
        caps.extend(["UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"].map(String::from));
        if in_auth && self.plaintext_allowed() {
            caps.push("SASL PLAIN LOGIN".into());
        }
        if in_auth && self.can_stls() {
            caps.push("STLS".into());
        }
        caps.push("EXPIRE NEVER".into());
        caps.push(format!("IMPLEMENTATION postroom {}", env!("CARGO_PKG_VERSION")));
        self.ok("+OK Capability list follows")?;
        for c in caps {
            self.ok(&c)?;
        }
        self.ok(".")
    }

    fn cmd_user(&mut self, user: String) -> Result<(), Pop3Error> {
        if !self.plaintext_allowed() {
            return Err(Pop3Error::PlaintextDisallowed);
        }
        self.state = State::Authorization { user: Some(user) };
        self.ok("+OK")
    }

    fn cmd_pass(&mut self, pass: Secret) -> Result<(), Pop3Error> {
        if !self.plaintext_allowed() {
            return Err(Pop3Error::PlaintextDisallowed);
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            State::Transaction(_) => None,
        };
        let Some(user) = user else { return Err(Pop3Error::Syntax("No USER given")) };
        self.login(&user, &pass.0, "USER")
    }

    fn cmd_auth(&mut self, arg: Option<(String, Option<String>)>) -> Result<(), Pop3Error> {
        let Some((mech, initial)) = arg else {
            // Clients (Outlook) send a bare AUTH to learn the mechanisms.
            self.ok("+OK")?;
            if self.plaintext_allowed() {
                self.ok("PLAIN")?;
                self.ok("LOGIN")?;
            }
            return self.ok(".");
        };
        if mech != "PLAIN" && mech != "LOGIN" {
            return Err(Pop3Error::UnknownMechanism);
        }
        if !self.plaintext_allowed() {
            return Err(Pop3Error::PlaintextDisallowed);
        }
        if mech == "PLAIN" {
            let response = match initial {
                Some(ir) => ir,
                None => self.challenge("")?,
            };
            let decoded = sasl::decode_b64(&response).ok_or(Pop3Error::Syntax("Invalid base64 data"))?;
            let (user, pass) = sasl::plain(&decoded).map_err(|_| Pop3Error::AuthFailed)?;
            self.login(&user, &pass, "PLAIN")
        } else {
            let user = match initial {
                Some(ir) => ir,
                None => self.challenge("VXNlcm5hbWU6")?,
            };
            let user = sasl::decode_b64(&user).ok_or(Pop3Error::Syntax("Invalid base64 data"))?;
            let pass = self.challenge("UGFzc3dvcmQ6")?;
            let pass = sasl::decode_b64(&pass).ok_or(Pop3Error::Syntax("Invalid base64 data"))?;
            let user = String::from_utf8(user).map_err(|_| Pop3Error::AuthFailed)?;
            self.login(&user, &pass, "LOGIN")
        }
    }

    /// Sends a SASL challenge and reads the response line; `*` cancels.
    fn challenge(&mut self, c: &str) -> Result<String, Pop3Error> {
        self.conn.write_all(format!("+ {c}\r\n").as_bytes())?;
        self.conn.flush()?;
        let line = match self.conn.read_line(crate::limits::PRELOGIN_LINE) {
            Ok(l) => l,
            Err(LineError::TooLong) => return Err(Pop3Error::Syntax("Line too long")),
            Err(LineError::Eof) => return Err(Pop3Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Err(LineError::Io(e)) => return Err(e.into()),
        };
        if line == b"*" {
            return Err(Pop3Error::AuthCancelled);
        }
        String::from_utf8(line).map_err(|_| Pop3Error::Syntax("Invalid base64 data"))
    }

    fn login(&mut self, user: &str, password: &[u8], method: &str) -> Result<(), Pop3Error> {
        let peer: IpAddr = self.conn.peer().ip();
        let account = match self.ctx.auth.login(user, password, peer) {
            Ok(a) => a,
            Err(AuthError::Failed) => {
                info!("{} pop3 auth-failed user={} method={method}", self.sid, printable(user));
                return Err(Pop3Error::AuthFailed);
            }
            Err(AuthError::Temporary(t)) => return Err(Pop3Error::Temporary(t)),
        };
        let drop = self.open_maildrop(&account)?;
        // The login clock stops, and the place becomes a session's.
        self.conn.logged_in()?;
        info!(
            "{} pop3 login user={} method={method} tls={} messages={}",
            self.sid,
            account.name,
            yes(self.conn.is_tls()),
            drop.msgs.len()
        );
        self.enter(State::Transaction(Box::new(drop)));
        self.ok("+OK Logged in.")
    }

    fn open_maildrop(&mut self, account: &Account) -> Result<Maildrop, Pop3Error> {
        let root = crate::admin::mail_root_for(&self.config, account)
            .map_err(|e| Pop3Error::Temporary(format!("mail root of {}: {e}", account.name)))?;
        let lock = SessionLock::try_acquire(&root.inbox, &self.config.state_dir)?;
        let shared = match self.ctx.registry.open(&root.inbox, &self.ctx.store_options(), false) {
            Ok(s) => Some(s),
            Err(StoreError::NoSuchMailbox(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let (uidvalidity, msgs) = match &shared {
            Some(s) => {
                let mb = s.read();
                let msgs = mb
                    .messages()
                    .iter()
                    .map(|m| PopMsg { uid: m.uid, size: m.size, deleted: false, retrieved: false })
                    .collect();
                (mb.uidvalidity(), msgs)
            }
            None => (0, Vec::new()),
        };
        Ok(Maildrop { user: account.name.clone(), shared, _lock: lock, uidvalidity, msgs })
    }

    fn cmd_stls(&mut self) -> Result<(), Pop3Error> {
        if self.conn.is_tls() {
            return Err(Pop3Error::NoTls("Already in TLS."));
        }
        let Some(tls) = self.ctx.tls() else { return Err(Pop3Error::NoTls("TLS support isn't enabled.")) };
        self.ok("+OK Begin TLS negotiation now.")?;
        self.conn.flush()?;
        if self.conn.has_pending_input() {
            // Bytes sent before the handshake must not count as sent over
            // TLS (the STARTTLS injection of CVE-2011-0411): hang up.
            warn!("{} pop3 stls-injection peer sent data after STLS", self.sid);
            return Err(Pop3Error::Io(std::io::Error::other("data pipelined after STLS")));
        }
        self.conn.start_tls(tls)?;
        info!("{} pop3 starttls", self.sid);
        // RFC 2595 section 4: forget what was said before.
        self.state = State::Authorization { user: None };
        Ok(())
    }

    fn maildrop(&mut self) -> &mut Maildrop {
        match &mut self.state {
            State::Transaction(d) => d,
            State::Authorization { .. } => unreachable!("check_allowed admits only TRANSACTION commands here"),
        }
    }

    /// Message `n` of the maildrop, not deleted.
    fn message(&mut self, n: u32) -> Result<&mut PopMsg, Pop3Error> {
        let d = self.maildrop();
        let m = d.msgs.get_mut((n as usize).wrapping_sub(1)).ok_or(Pop3Error::NoSuchMessage(n))?;
        if m.deleted {
            return Err(Pop3Error::Deleted(n));
        }
        Ok(m)
    }

    fn cmd_stat(&mut self) -> Result<(), Pop3Error> {
        let d = self.maildrop();
        let live = d.msgs.iter().filter(|m| !m.deleted);
        let (n, size) = live.fold((0u64, 0u64), |(n, s), m| (n + 1, s + m.size));
        self.ok(&format!("+OK {n} {size}"))
    }

    fn cmd_list(&mut self, n: Option<u32>) -> Result<(), Pop3Error> {
        if let Some(n) = n {
            let size = self.message(n)?.size;
            return self.ok(&format!("+OK {n} {size}"));
        }
        let d = self.maildrop();
        let mut out = String::with_capacity(d.msgs.len() * 12 + 32);
        let live = d.msgs.iter().filter(|m| !m.deleted);
        let (count, total) = live.clone().fold((0u64, 0u64), |(n, s), m| (n + 1, s + m.size));
        out.push_str(&format!("+OK {count} messages ({total} octets)\r\n"));
        for (i, m) in d.msgs.iter().enumerate().filter(|(_, m)| !m.deleted) {
            out.push_str(&format!("{} {}\r\n", i + 1, m.size));
        }
        out.push_str(".\r\n");
        self.conn.write_all(out.as_bytes())?;
        Ok(())
    }

    fn uidl_of(&self, uidvalidity: u32, uid: u32) -> String {
        self.config.pop3_uidl_format.render(uidvalidity, uid)
    }

    fn cmd_uidl(&mut self, n: Option<u32>) -> Result<(), Pop3Error> {
        if let Some(n) = n {
            let uid = self.message(n)?.uid;
            let uv = self.maildrop().uidvalidity;
            let line = format!("+OK {n} {}", self.uidl_of(uv, uid));
            return self.ok(&line);
        }
        let d = match &self.state {
            State::Transaction(d) => d,
            State::Authorization { .. } => return Err(Pop3Error::WrongState),
        };
        let mut out = String::from("+OK\r\n");
        for (i, m) in d.msgs.iter().enumerate().filter(|(_, m)| !m.deleted) {
            out.push_str(&format!("{} {}\r\n", i + 1, self.uidl_of(d.uidvalidity, m.uid)));
        }
        out.push_str(".\r\n");
        self.conn.write_all(out.as_bytes())?;
        Ok(())
    }

    fn cmd_retr(&mut self, n: u32) -> Result<(), Pop3Error> {
        let (uid, size) = {
            let m = self.message(n)?;
            (m.uid, m.size)
        };
        self.send_message(n, uid, size, format!("+OK {size} octets\r\n"), None)?;
        self.message(n)?.retrieved = true;
        self.stats.retr += 1;
        self.stats.retr_bytes += size;
        Ok(())
    }

    fn cmd_top(&mut self, n: u32, lines: u32) -> Result<(), Pop3Error> {
        let (uid, size) = {
            let m = self.message(n)?;
            (m.uid, m.size)
        };
        self.send_message(n, uid, size, "+OK\r\n".to_string(), Some(lines))
    }

    /// Streams message `uid` from the store, byte-stuffed, `size` wire
    /// bytes of it as the maildrop listing says. With `top`, the header
    /// and that many lines of the body.
    ///
    /// A batch at a time (store::reader): the mailbox's locks are held
    /// while a batch is read, never while it is written to the client, so
    /// a client that stops reading holds up no delivery and no other
    /// session (DESIGN.md, "Locks are short"). Once the first byte is
    /// out, a failure ends the session ([`Pop3Error::Cut`]).
    fn send_message(&mut self, n: u32, uid: u32, size: u64, prefix: String, top: Option<u32>) -> Result<(), Pop3Error> {
        let no_nuls = self.config.pop3_workarounds.contains(&Pop3Workaround::OutlookNoNuls);
        let Some(shared) = self.maildrop().shared.clone() else { return Err(Pop3Error::NoSuchMessage(n)) };
        let mut out = DotStuffer::new(&mut self.conn, no_nuls, prefix.into_bytes());
        let mut reader: Option<Reader> = None;
        // The header's wire size: TOP counts lines from there on.
        let mut hdr_left = 0u64;
        let mut buf = Vec::new();
        let mut changed = 0;
        let res = loop {
            let filled = {
                let mb = shared.read();
                let r = match &mut reader {
                    Some(r) => r,
                    None => {
                        let Some(i) = mb.position(uid) else { break Err(Pop3Error::Vanished(n)) };
                        let r = Reader::new(&mb, i, Part::Whole, None);
                        if r.len() != size {
                            break Err(StoreError::Diverged(mb.path().to_path_buf(), uid).into());
                        }
                        hdr_left = mb.messages()[i].hdr_size;
                        reader.insert(r)
                    }
                };
                r.fill(&mb, &mut buf, BATCH)
            };
            let done = match filled {
                Ok(done) => done,
                Err(StoreError::Changed(_)) if changed < 3 => {
                    // Another program changed the file since it was
                    // indexed: index it again and go on from the place.
                    changed += 1;
                    if let Err(e) = shared.refresh() {
                        break Err(e.into());
                    }
                    continue;
                }
                Err(e) => break Err(e.into()),
            };
            changed = 0;
            let mut data = &buf[..];
            if let Some(lines) = top {
                let h = hdr_left.min(data.len() as u64) as usize;
                if hdr_left > 0 {
                    out.write_all(&data[..h])?;
                    hdr_left -= h as u64;
                    data = &data[h..];
                    if hdr_left == 0 {
                        out.lines_left = Some(lines);
                    }
                }
            }
            match out.write_all(data) {
                Ok(()) => {}
                Err(e) if e.get_ref().is_some_and(|r| r.is::<Enough>()) => break Ok(()),
                Err(e) => return Err(e.into()),
            }
            buf.clear();
            if done || (top.is_some() && hdr_left == 0 && out.lines_left == Some(0)) {
                break Ok(());
            }
        };
        match res {
            Ok(()) => {
                out.finish()?;
                Ok(())
            }
            Err(Pop3Error::Store(e)) | Err(Pop3Error::Cut(e)) if out.started() => Err(Pop3Error::Cut(e)),
            Err(Pop3Error::Temporary(t)) if out.started() => {
                Err(Pop3Error::Cut(StoreError::Io(t, std::io::Error::other("temporary failure"))))
            }
            Err(Pop3Error::Vanished(_)) if out.started() => {
                Err(Pop3Error::Cut(StoreError::Diverged(shared.path().to_path_buf(), uid)))
            }
            Err(e) => Err(e),
        }
    }

    fn cmd_dele(&mut self, n: u32) -> Result<(), Pop3Error> {
        let m = self.message(n)?;
        m.deleted = true;
        let size = m.size;
        self.stats.del += 1;
        self.stats.del_bytes += size;
        self.ok(&format!("+OK Message {n} deleted."))
    }

    fn cmd_rset(&mut self) -> Result<(), Pop3Error> {
        let d = self.maildrop();
        for m in &mut d.msgs {
            m.deleted = false;
        }
        self.stats.del = 0;
        self.stats.del_bytes = 0;
        self.ok("+OK")
    }

    fn cmd_quit(&mut self) -> Result<(), Pop3Error> {
        self.quit = true;
        let state = std::mem::replace(&mut self.state, State::Authorization { user: None });
        let State::Transaction(d) = state else {
            return self.ok("+OK Logging out.");
        };
        // UPDATE state (RFC 1939 section 6).
        match self.update(&d, true) {
            Ok(n) => self.ok(&format!("+OK Logging out, {n} messages deleted.")),
            Err(e) => {
                log::error!("{} pop3 update-failed user={} {e}", self.sid, d.user);
                self.stats.del = 0;
                self.stats.del_bytes = 0;
                self.ok("-ERR [SYS/TEMP] Some deleted messages were not removed; try again later.")
            }
        }
    }

    /// Writes \Seen for retrieved messages, clears \Recent (UW-IMAP's
    /// Status R and O), and with `delete` removes the deleted messages.
    fn update(&self, d: &Maildrop, delete: bool) -> Result<usize, StoreError> {
        let Some(shared) = &d.shared else { return Ok(0) };
        let mut mb = shared.write();
        let mut changed = Vec::new();
        for pm in &d.msgs {
            if let Some(i) = mb.position(pm.uid) {
                let m = &mb.messages()[i];
                let mut f = m.flags.without(Flags::RECENT);
                if pm.retrieved {
                    f.insert(Flags::SEEN);
                }
                let kw = m.keywords;
                if mb.set_flags(i, f, kw) {
                    changed.push(pm.uid);
                }
            }
        }
        let mut events = Vec::new();
        if !changed.is_empty() {
            events.push(Event::Flags(changed));
        }
        let uids: Vec<u32> =
            if delete { d.msgs.iter().filter(|m| m.deleted).map(|m| m.uid).collect() } else { Vec::new() };
        let result = if uids.is_empty() { mb.flush() } else { mb.expunge(&uids) };
        let n = match result {
            Ok(ev) => {
                let n = ev.iter().map(|e| if let Event::Expunged(u) = e { u.len() } else { 0 }).sum();
                events.extend(ev);
                n
            }
            Err(e) => {
                mb.publish(&events);
                return Err(e);
            }
        };
        mb.publish(&events);
        Ok(n)
    }

    /// A session that ends without QUIT deletes nothing (RFC 1939 section
    /// 6), but what was read is still marked read.
    fn finish_without_quit(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Authorization { user: None });
        if let State::Transaction(d) = state {
            if let Err(e) = self.update(&d, false) {
                warn!("{} pop3 flag-writeback-failed user={} {e}", self.sid, d.user);
            }
            self.stats.del = 0;
            self.stats.del_bytes = 0;
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A user name as it may appear in a log line.
fn printable(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_control() || c == ' ' { '?' } else { c }).collect()
}

//! The IMAP session: RFC 3501 §3's states (not authenticated,
//! authenticated, selected, logout), the command table, and the commands
//! valid in any state or before login. Mailbox commands are in
//! `mailboxes.rs`, message commands in `messages.rs` and `fetch.rs`,
//! IDLE in `idle.rs`.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use log::{debug, info, warn};

use super::command::{Command, Tagged};
use super::frame::{self, FrameError};
use super::parse::{self, ParseLimits};
use super::response::ImapError;
use super::selected::{Report, Selected};
use crate::auth::sasl::{self, Exchange, Mechanism, SaslError, Step};
use crate::auth::{Account, AuthError};
use crate::config::{Config, PlaintextAuth};
use crate::net::{Conn, LineError};
use crate::server::Context;
use crate::store::names::MailRoot;

/// Bad commands in a row before we hang up on a confused or hostile client.
const MAX_BAD_COMMANDS: u32 = 20;
/// Longest SASL response line (base64 of credentials): SASL happens
/// before login only.
const MAX_SASL_LINE: usize = crate::limits::PRELOGIN_LINE;
/// Literals per command: APPEND has one, LOGIN two; nothing needs many.
const MAX_LITERALS: usize = 64;

/// The logged-in user.
pub(super) struct User {
    pub account: Account,
    pub root: MailRoot,
}

pub(super) enum State {
    NotAuthenticated,
    Authenticated(Box<User>),
    Selected(Box<User>, Box<Selected>),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::NotAuthenticated => "not-authenticated",
            State::Authenticated(_) => "authenticated",
            State::Selected(..) => "selected",
        }
    }
}

#[derive(Default)]
pub(super) struct Stats {
    pub fetched: u64,
    pub fetched_bytes: u64,
    pub appended: u64,
    pub expunged: u64,
}

pub struct Session<'a> {
    pub(super) conn: Conn,
    pub(super) ctx: &'a Context,
    pub(super) config: Arc<Config>,
    pub(super) sid: String,
    pub(super) state: State,
    pub(super) stats: Stats,
    bad: u32,
    logout: bool,
    /// The command wrote its own tagged response (STARTTLS).
    answered: bool,
    frame_limits: frame::Limits,
    parse_limits: ParseLimits,
}

/// What a command answers when it succeeds: the text of the tagged OK
/// (with its response code, if any).
pub(super) type Done = Result<String, ImapError>;

impl<'a> Session<'a> {
    pub fn new(conn: Conn, ctx: &'a Context, sid: String) -> Session<'a> {
        let config = ctx.config();
        let parse_limits = ParseLimits { max_depth: config.imap_max_nesting as usize };
        let frame_limits =
            frame::Limits::new(config.imap_max_line_length as usize, config.imap_max_literal, MAX_LITERALS);
        Session {
            conn,
            ctx,
            config,
            sid,
            state: State::NotAuthenticated,
            stats: Stats::default(),
            bad: 0,
            logout: false,
            answered: false,
            frame_limits,
            parse_limits,
        }
    }

    pub(super) fn enter(&mut self, next: State) {
        debug!("{} imap state {} -> {}", self.sid, self.state.name(), next.name());
        self.state = next;
    }

    /// Runs the session to its end.
    pub fn run(mut self) {
        info!(
            "{} imap connected address={} via={} tls={}",
            self.sid,
            self.conn.peer(),
            self.conn.via(),
            yes(self.conn.is_tls())
        );
        self.conn.set_timeout(self.config.idle_timeout_imap);
        let reason = match self.greet().and_then(|_| self.serve_commands()) {
            Ok(r) => r,
            Err(ImapError::Bye(text)) => {
                let _ = write!(self.conn, "* BYE {text}\r\n");
                let _ = self.conn.flush();
                "bye"
            }
            Err(e @ (ImapError::Cutoff(_) | ImapError::LiteralTooBig { .. })) => {
                if let ImapError::Cutoff(c) = e {
                    crate::net::log_cutoff(&self.sid, "imap", c, &self.config, self.config.idle_timeout_imap);
                }
                let _ = write!(self.conn, "{}\r\n", e.wire("*"));
                let _ = self.conn.flush();
                match e {
                    ImapError::Cutoff(c) => c.name(),
                    _ => "literal-too-big",
                }
            }
            Err(ImapError::Cut(e)) => {
                warn!("{} imap response-cut {e}", self.sid);
                "cut"
            }
            Err(e) => {
                debug!("{} imap error {e}", self.sid);
                "error"
            }
        };
        self.close_mailbox();
        let user = match &self.state {
            State::Authenticated(u) | State::Selected(u, _) => u.account.name.clone(),
            State::NotAuthenticated => "-".into(),
        };
        info!(
            "{} imap disconnected reason={reason} user={user} fetch={}/{} append={} expunge={}",
            self.sid, self.stats.fetched, self.stats.fetched_bytes, self.stats.appended, self.stats.expunged
        );
    }

    fn greet(&mut self) -> Result<(), ImapError> {
        let caps = self.capabilities();
        write!(self.conn, "* OK [CAPABILITY {caps}] postroom ready.\r\n")?;
        self.conn.flush()?;
        Ok(())
    }

    /// The caps on the next command: small before login, whatever size a
    /// client announces.
    fn frame_limits(&self) -> frame::Limits {
        match self.state {
            State::NotAuthenticated => frame::Limits::PRELOGIN,
            _ => self.frame_limits,
        }
    }

    fn serve_commands(&mut self) -> Result<&'static str, ImapError> {
        loop {
            let limits = self.frame_limits();
            let buf = match frame::read_command(&mut self.conn, &limits) {
                Ok(b) => b,
                Err(FrameError::Eof) => return Ok("eof"),
                Err(FrameError::Io(e)) => {
                    return match ImapError::from(e) {
                        ImapError::Io(_) => Ok("connection-error"),
                        cutoff => Err(cutoff),
                    };
                }
                Err(FrameError::TooLong { tag }) => {
                    self.bad_command(tag.as_deref(), "Line too long")?;
                    continue;
                }
                Err(FrameError::TooManyLiterals { tag }) => {
                    self.bad_command(tag.as_deref(), "Too many literals in one command")?;
                    continue;
                }
                Err(FrameError::LiteralTooBig { tag, size, sync }) => {
                    let before_login = matches!(self.state, State::NotAuthenticated);
                    let limit = limits.max_literal;
                    warn!(
                        "{} imap literal-too-big size={size} limit={limit} sync={} login={}",
                        self.sid,
                        yes(sync),
                        yes(!before_login)
                    );
                    let e = ImapError::LiteralTooBig { size, limit, before_login, sync };
                    if e.is_fatal() {
                        // The client is already sending it (LITERAL+): the
                        // only way to stay in step is to hang up.
                        return Err(e);
                    }
                    write!(self.conn, "{}\r\n", e.wire(tag.as_deref().unwrap_or("*")))?;
                    self.conn.flush()?;
                    continue;
                }
            };
            let tagged = match parse::parse(&buf, &self.parse_limits) {
                Ok(t) => t,
                Err(e) => {
                    let text = format!("Error in IMAP command: {}", e.message);
                    self.bad_command(e.tag.as_deref(), &text)?;
                    continue;
                }
            };
            log::trace!("{} imap <<< {} {}", self.sid, tagged.tag, tagged.command.name());
            self.execute(tagged)?;
            self.conn.flush()?;
            if self.logout {
                return Ok("logout");
            }
        }
    }

    fn bad_command(&mut self, tag: Option<&str>, text: &str) -> Result<(), ImapError> {
        self.bad += 1;
        write!(self.conn, "{} BAD {text}\r\n", tag.unwrap_or("*"))?;
        if self.bad >= MAX_BAD_COMMANDS {
            warn!("{} imap too-many-bad-commands", self.sid);
            return Err(ImapError::Bye("Too many invalid commands.".into()));
        }
        self.conn.flush()?;
        Ok(())
    }

    /// State rules in one place (RFC 3501 §6).
    fn check_allowed(&self, cmd: &Command) -> Result<(), ImapError> {
        use Command::*;
        let not_auth = matches!(self.state, State::NotAuthenticated);
        let selected = matches!(self.state, State::Selected(..));
        match cmd {
            Capability | Noop | Logout | Id(_) => Ok(()),
            StartTls | Authenticate { .. } | Login { .. } if not_auth => Ok(()),
            StartTls | Authenticate { .. } | Login { .. } => Err(ImapError::bad("Already logged in.")),
            _ if not_auth => Err(ImapError::bad("Log in first.")),
            Check
            | Close
            | Unselect
            | Expunge
            | UidExpunge(_)
            | Search { .. }
            | Fetch { .. }
            | Store { .. }
            | Copy { .. }
            | Move { .. }
                if !selected =>
            {
                Err(ImapError::bad("No mailbox selected."))
            }
            _ => Ok(()),
        }
    }

    /// The command table.
    fn execute(&mut self, t: Tagged) -> Result<(), ImapError> {
        let Tagged { tag, command } = t;
        // RFC 3501 §7.4.1: no EXPUNGE while answering FETCH, STORE or
        // SEARCH (their UID forms are fine).
        let report = Report {
            expunges: !matches!(
                command,
                Command::Fetch { uid: false, .. }
                    | Command::Store { uid: false, .. }
                    | Command::Search { uid: false, .. }
            ),
            with_uid: matches!(
                command,
                Command::Fetch { uid: true, .. }
                    | Command::Store { uid: true, .. }
                    | Command::Search { uid: true, .. }
                    | Command::Copy { uid: true, .. }
                    | Command::Move { uid: true, .. }
                    | Command::UidExpunge(_)
            ),
        };
        let name = command.name();
        // Expunges the client has not heard of yet go first where they may:
        // a UID command then never names a message that is already gone.
        if report.expunges && matches!(self.state, State::Selected(..)) && !matches!(command, Command::Idle) {
            self.report(report)?;
        }
        let result = self.check_allowed(&command).and_then(|_| match command {
            Command::Capability => self.cmd_capability(),
            Command::Noop => self.cmd_noop(),
            Command::Logout => self.cmd_logout(),
            Command::Id(params) => self.cmd_id(params),
            Command::StartTls => self.cmd_starttls(&tag),
            Command::Authenticate { mechanism, initial } => self.cmd_authenticate(&mechanism, initial),
            Command::Login { user, password } => self.cmd_login(&user, password.expose()),
            Command::Select { mailbox } => self.cmd_select(&mailbox, false),
            Command::Examine { mailbox } => self.cmd_select(&mailbox, true),
            Command::Create { mailbox } => self.cmd_create(&mailbox),
            Command::Delete { mailbox } => self.cmd_delete(&mailbox),
            Command::Rename { from, to } => self.cmd_rename(&from, &to),
            Command::Subscribe { mailbox } => self.cmd_subscribe(&mailbox, true),
            Command::Unsubscribe { mailbox } => self.cmd_subscribe(&mailbox, false),
            Command::List { selection, reference, patterns, returns } => {
                self.cmd_list(&selection, &reference, &patterns, &returns)
            }
            Command::Lsub { reference, pattern } => self.cmd_lsub(&reference, &pattern),
            Command::Status { mailbox, items } => self.cmd_status(&mailbox, &items),
            Command::Append { mailbox, flags, date, message } => self.cmd_append(&mailbox, &flags, date, &message),
            Command::Namespace => self.cmd_namespace(),
            Command::Enable(caps) => self.cmd_enable(&caps),
            Command::Idle => self.cmd_idle(&tag),
            Command::Check => self.cmd_check(),
            Command::Close => self.cmd_close(true),
            Command::Unselect => self.cmd_close(false),
            Command::Expunge => self.cmd_expunge(None),
            Command::UidExpunge(set) => self.cmd_expunge(Some(&set)),
            Command::Search { uid, charset, key } => self.cmd_search(uid, charset.as_deref(), &key),
            Command::Fetch { uid, set, items } => self.cmd_fetch(uid, &set, items),
            Command::Store { uid, set, mode, silent, flags } => self.cmd_store(uid, &set, mode, silent, &flags),
            Command::Copy { uid, set, mailbox } => self.cmd_copy(uid, &set, &mailbox, false),
            Command::Move { uid, set, mailbox } => self.cmd_copy(uid, &set, &mailbox, true),
        });
        // Whatever happened, tell the client what changed meanwhile.
        let reported = self.report(report);
        match result {
            Ok(_) if std::mem::take(&mut self.answered) => {}
            Ok(text) => {
                reported?;
                self.bad = 0;
                write!(self.conn, "{tag} OK {text}\r\n")?;
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                reported?;
                match &e {
                    ImapError::Store(s)
                        if matches!(s, crate::store::StoreError::Io(..) | crate::store::StoreError::Corrupt(..)) =>
                    {
                        log::error!("{} imap store-error command={name} {s}", self.sid)
                    }
                    ImapError::Store(s) => debug!("{} imap store-refused command={name} {s}", self.sid),
                    ImapError::Bad(_) => {
                        self.bad += 1;
                        if self.bad >= MAX_BAD_COMMANDS {
                            write!(self.conn, "{}\r\n", e.wire(&tag))?;
                            return Err(ImapError::Bye("Too many invalid commands.".into()));
                        }
                    }
                    _ => {}
                }
                write!(self.conn, "{}\r\n", e.wire(&tag))?;
            }
        }
        Ok(())
    }

    /// Reports changes to the selected mailbox, if any.
    pub(super) fn report(&mut self, how: Report) -> Result<(), ImapError> {
        if let State::Selected(_, sel) = &mut self.state {
            if let Err(e) = sel.shared.refresh() {
                debug!("{} imap refresh-failed {e}", self.sid);
            }
            sel.report(how, &mut self.conn)?;
        }
        Ok(())
    }

    pub(super) fn plaintext_allowed(&self) -> bool {
        match self.config.plaintext_auth {
            PlaintextAuth::Always => true,
            PlaintextAuth::Never => self.conn.is_tls(),
            PlaintextAuth::TlsOrLoopback => self.conn.is_tls() || self.conn.is_loopback(),
        }
    }

    fn can_starttls(&self) -> bool {
        !self.conn.is_tls() && self.ctx.tls().is_some()
    }

    /// The capability list for the current state (RFC 3501 §7.2.1). IDLE
    /// is listed before login too: some clients decide on it there.
    pub(super) fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"];
        if matches!(self.state, State::NotAuthenticated) {
            if self.can_starttls() {
                caps.push("STARTTLS");
            }
            if self.plaintext_allowed() {
                caps.extend(["AUTH=PLAIN", "AUTH=LOGIN"]);
            } else {
                caps.push("LOGINDISABLED");
            }
        } else {
            caps.extend(["NAMESPACE", "UIDPLUS", "UNSELECT", "CHILDREN", "SPECIAL-USE", "MOVE"]);
        }
        caps.join(" ")
    }

    fn cmd_capability(&mut self) -> Done {
        let caps = self.capabilities();
        write!(self.conn, "* CAPABILITY {caps}\r\n")?;
        Ok("Capability completed.".into())
    }

    fn cmd_noop(&mut self) -> Done {
        // The report after every command does the work: a refresh and
        // whatever changed.
        Ok("NOOP completed.".into())
    }

    fn cmd_logout(&mut self) -> Done {
        self.close_mailbox();
        write!(self.conn, "* BYE Logging out\r\n")?;
        self.logout = true;
        Ok("Logout completed.".into())
    }

    /// RFC 2971: we say who we are; what the client says goes to the log.
    fn cmd_id(&mut self, params: Option<Vec<(String, Option<String>)>>) -> Done {
        if let Some(p) = params {
            let said: Vec<String> = p
                .iter()
                .take(30)
                .map(|(k, v)| format!("{}={}", printable(k), printable(v.as_deref().unwrap_or("NIL"))))
                .collect();
            info!("{} imap id {}", self.sid, said.join(" "));
        }
        write!(self.conn, "* ID (\"name\" \"postroom\" \"version\" \"{}\")\r\n", env!("CARGO_PKG_VERSION"))?;
        Ok("ID completed.".into())
    }

    fn cmd_starttls(&mut self, tag: &str) -> Done {
        if self.conn.is_tls() {
            return Err(ImapError::bad("TLS is already active."));
        }
        let Some(tls) = self.ctx.tls() else { return Err(ImapError::no("TLS support isn't enabled.")) };
        write!(self.conn, "{tag} OK Begin TLS negotiation now.\r\n")?;
        self.conn.flush()?;
        if self.conn.has_pending_input() {
            // Bytes sent before the handshake must not count as sent over
            // TLS (the STARTTLS injection of CVE-2011-0411): hang up.
            warn!("{} imap starttls-injection peer sent data after STARTTLS", self.sid);
            return Err(ImapError::Io(std::io::Error::other("data pipelined after STARTTLS")));
        }
        self.conn.start_tls(tls)?;
        info!("{} imap starttls", self.sid);
        // The tagged OK went out before the handshake; the session goes on
        // over TLS knowing nothing from before (RFC 3501 §6.2.1).
        self.answered = true;
        Ok(String::new())
    }

    fn cmd_authenticate(&mut self, mechanism: &str, initial: Option<String>) -> Done {
        let Some(mech) = Mechanism::from_name(mechanism) else {
            return Err(ImapError::no("Unsupported authentication mechanism."));
        };
        if !self.plaintext_allowed() {
            return Err(ImapError::No(
                Some("PRIVACYREQUIRED"),
                "Plaintext authentication disallowed on non-secure connections.".into(),
            ));
        }
        let mut ex = Exchange::new(mech);
        let mut step = ex.start(initial.as_deref());
        loop {
            match step {
                Ok(Step::Challenge(c)) => {
                    write!(self.conn, "+ {}\r\n", sasl::encode_b64(&c))?;
                    self.conn.flush()?;
                    let line = match self.conn.read_line(MAX_SASL_LINE) {
                        Ok(l) => l,
                        Err(LineError::TooLong) => return Err(ImapError::bad("Authentication response too long.")),
                        Err(LineError::Eof) => return Err(ImapError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                        Err(LineError::Io(e)) => return Err(e.into()),
                    };
                    let line = String::from_utf8(line).unwrap_or_default();
                    step = ex.respond(&line);
                }
                Ok(Step::Done { user, password }) => return self.login(&user, password.expose(), mech.name()),
                Err(SaslError::Cancelled) => return Err(ImapError::bad("Authentication cancelled.")),
                Err(SaslError::BadBase64) => return Err(ImapError::bad("Invalid base64 data.")),
                Err(_) => return Err(auth_failed()),
            }
        }
    }

    fn cmd_login(&mut self, user: &str, password: &[u8]) -> Done {
        if !self.plaintext_allowed() {
            return Err(ImapError::No(
                Some("PRIVACYREQUIRED"),
                "Plaintext authentication disallowed on non-secure connections.".into(),
            ));
        }
        self.login(user, password, "LOGIN")
    }

    fn login(&mut self, user: &str, password: &[u8], method: &str) -> Done {
        let peer: IpAddr = self.conn.peer().ip();
        let account = match self.ctx.auth.login(user, password, peer) {
            Ok(a) => a,
            Err(AuthError::Failed) => {
                info!("{} imap auth-failed user={} method={method}", self.sid, printable(user));
                return Err(auth_failed());
            }
            Err(AuthError::Temporary(t)) => {
                warn!("{} imap auth-unavailable user={} {t}", self.sid, printable(user));
                return Err(ImapError::No(Some("UNAVAILABLE"), "Temporary authentication failure.".into()));
            }
        };
        let root = crate::admin::mail_root_for(&self.config, &account).map_err(|e| {
            log::error!("{} imap mail-root user={} {e}", self.sid, account.name);
            ImapError::No(Some("SERVERBUG"), "Internal error; see server log.".into())
        })?;
        // The login clock stops, and the place becomes a session's.
        self.conn.logged_in()?;
        info!("{} imap login user={} method={method} tls={}", self.sid, account.name, yes(self.conn.is_tls()));
        let user = User { account, root };
        self.prepare_special_use(&user);
        self.enter(State::Authenticated(Box::new(user)));
        Ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
    }

    /// Ends the selected state: flags written, the view dropped. No
    /// expunge (CLOSE does that itself before).
    pub(super) fn close_mailbox(&mut self) {
        let state = std::mem::replace(&mut self.state, State::NotAuthenticated);
        self.state = match state {
            State::Selected(user, sel) => {
                let mut mb = sel.shared.write();
                if let Err(e) = mb.try_flush() {
                    debug!("{} imap flush-deferred mailbox={} {e}", self.sid, printable(&sel.name));
                }
                drop(mb);
                debug!("{} imap state selected -> authenticated", self.sid);
                State::Authenticated(user)
            }
            other => other,
        };
    }

    pub(super) fn user(&self) -> &User {
        match &self.state {
            State::Authenticated(u) | State::Selected(u, _) => u,
            State::NotAuthenticated => unreachable!("checked by check_allowed"),
        }
    }

    pub(super) fn selected(&mut self) -> &mut Selected {
        match &mut self.state {
            State::Selected(_, s) => s,
            _ => unreachable!("checked by check_allowed"),
        }
    }
}

fn auth_failed() -> ImapError {
    ImapError::No(Some("AUTHENTICATIONFAILED"), "Authentication failed.".into())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// For logs: printable ASCII, nothing else.
pub(super) fn printable(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

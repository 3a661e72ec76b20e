//! IMAP commands as types: what the parser ([`super::parse`]) produces
//! and the session executes (RFC 3501 §6 and §9, with IDLE RFC 2177,
//! UIDPLUS RFC 4315, NAMESPACE RFC 2342, ID RFC 2971, ENABLE RFC 5161,
//! UNSELECT RFC 3691, MOVE RFC 6851, LIST-EXTENDED RFC 5258 as far as
//! SPECIAL-USE RFC 6154 needs it).
//!
//! Mailbox names stay as the client sent them (modified UTF-7, RFC 3501
//! §5.1.3); the session decodes them, since only it knows the mail root.

use crate::auth::sasl::Secret;

/// A command with its tag.
#[derive(Debug, PartialEq, Eq)]
pub struct Tagged {
    pub tag: String,
    pub command: Command,
}

/// One IMAP command. The grouping follows the states in which RFC 3501 §6
/// allows each.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    // Any state (§6.1).
    Capability,
    Noop,
    Logout,
    /// RFC 2971.
    Id(Option<Vec<(String, Option<String>)>>),

    // Not authenticated (§6.2).
    StartTls,
    /// `initial` is the SASL-IR initial response (RFC 4959) as base64 text,
    /// `=` meaning empty.
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    Login {
        user: String,
        password: Secret,
    },

    // Authenticated (§6.3).
    Select {
        mailbox: String,
    },
    Examine {
        mailbox: String,
    },
    Create {
        mailbox: String,
    },
    Delete {
        mailbox: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        mailbox: String,
    },
    Unsubscribe {
        mailbox: String,
    },
    /// LIST, with the RFC 5258 extended form: selection options before the
    /// reference, several patterns in parentheses, RETURN options after.
    List {
        selection: Vec<String>,
        reference: String,
        patterns: Vec<String>,
        returns: Vec<String>,
    },
    Lsub {
        reference: String,
        pattern: String,
    },
    Status {
        mailbox: String,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: String,
        flags: Vec<Flag>,
        date: Option<DateTime>,
        message: Vec<u8>,
    },
    /// RFC 2342.
    Namespace,
    /// RFC 5161: the capability names, as sent.
    Enable(Vec<String>),
    /// RFC 2177. The session reads the `DONE` line itself.
    Idle,

    // Selected (§6.4).
    Check,
    Close,
    /// RFC 3691.
    Unselect,
    Expunge,
    /// RFC 4315 `UID EXPUNGE`.
    UidExpunge(SequenceSet),
    Search {
        uid: bool,
        charset: Option<String>,
        key: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchAttr>,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<Flag>,
    },
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
    },
    /// RFC 6851.
    Move {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
    },
}

impl Command {
    /// The command's name as the client spelled it in upper case, for
    /// responses and logs ("UID FETCH", not the arguments).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Capability => "CAPABILITY",
            Command::Noop => "NOOP",
            Command::Logout => "LOGOUT",
            Command::Id(_) => "ID",
            Command::StartTls => "STARTTLS",
            Command::Authenticate { .. } => "AUTHENTICATE",
            Command::Login { .. } => "LOGIN",
            Command::Select { .. } => "SELECT",
            Command::Examine { .. } => "EXAMINE",
            Command::Create { .. } => "CREATE",
            Command::Delete { .. } => "DELETE",
            Command::Rename { .. } => "RENAME",
            Command::Subscribe { .. } => "SUBSCRIBE",
            Command::Unsubscribe { .. } => "UNSUBSCRIBE",
            Command::List { .. } => "LIST",
            Command::Lsub { .. } => "LSUB",
            Command::Status { .. } => "STATUS",
            Command::Append { .. } => "APPEND",
            Command::Namespace => "NAMESPACE",
            Command::Enable(_) => "ENABLE",
            Command::Idle => "IDLE",
            Command::Check => "CHECK",
            Command::Close => "CLOSE",
            Command::Unselect => "UNSELECT",
            Command::Expunge => "EXPUNGE",
            Command::UidExpunge(_) => "UID EXPUNGE",
            Command::Search { uid: false, .. } => "SEARCH",
            Command::Search { uid: true, .. } => "UID SEARCH",
            Command::Fetch { uid: false, .. } => "FETCH",
            Command::Fetch { uid: true, .. } => "UID FETCH",
            Command::Store { uid: false, .. } => "STORE",
            Command::Store { uid: true, .. } => "UID STORE",
            Command::Copy { uid: false, .. } => "COPY",
            Command::Copy { uid: true, .. } => "UID COPY",
            Command::Move { uid: false, .. } => "MOVE",
            Command::Move { uid: true, .. } => "UID MOVE",
        }
    }
}

/// A message number or UID, or `*` (the largest in the mailbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    Value(u32),
    Largest,
}

/// `a:b` as sent (either order; `a` alone is `a:a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange(pub SeqNum, pub SeqNum);

/// A sequence set (RFC 3501 §9 `sequence-set`), never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<SeqRange>);

impl SequenceSet {
    /// Whether `n` is in the set, where `*` stands for `largest`
    /// (RFC 3501 §9: ranges include both ends, in either order).
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        let v = |s: SeqNum| match s {
            SeqNum::Value(v) => v,
            SeqNum::Largest => largest,
        };
        self.0.iter().any(|r| {
            let (a, b) = (v(r.0), v(r.1));
            a.min(b) <= n && n <= a.max(b)
        })
    }
}

/// A flag as sent in STORE, APPEND or a search key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// `\Recent`: may not be stored (RFC 3501 §2.3.2).
    Recent,
    /// Any other `\Name` (not storable here).
    Extension(String),
    /// A keyword atom, case kept.
    Keyword(String),
}

/// STATUS data items (RFC 3501 §6.3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
}

/// An APPEND date-time: seconds since the epoch, and the zone offset in
/// minutes east of UTC as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub epoch: i64,
    pub zone_minutes: i32,
}

/// A SEARCH date (`dd-Mon-yyyy`): days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub i64);

/// STORE's three modes (RFC 3501 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// One FETCH data item (RFC 3501 §6.4.5); ALL, FAST and FULL are expanded
/// by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttr {
    Envelope,
    Flags,
    InternalDate,
    /// `RFC822`: like `BODY[]` (sets \Seen).
    Rfc822,
    /// `RFC822.HEADER`: like `BODY.PEEK[HEADER]`.
    Rfc822Header,
    Rfc822Size,
    /// `RFC822.TEXT`: like `BODY[TEXT]` (sets \Seen).
    Rfc822Text,
    /// `BODY` without a section: the non-extensible BODYSTRUCTURE.
    Body,
    BodyStructure,
    Uid,
    /// `BODY[section]<partial>` and `BODY.PEEK[...]`.
    Section {
        peek: bool,
        section: Section,
        partial: Option<Partial>,
    },
}

/// `<origin.count>` of a section fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub origin: u32,
    pub count: u32,
}

/// A section spec (RFC 3501 §6.4.5 `BODY[<section>]`): part numbers,
/// then what of that part. An empty `part` is the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Header,
    /// Field names as sent (compared case-insensitively).
    HeaderFields(Vec<String>),
    HeaderFieldsNot(Vec<String>),
    Text,
    /// Only after a part number.
    Mime,
}

/// A search key (RFC 3501 §6.4.4). A parenthesised list and a sequence of
/// keys are both [`SearchKey::And`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Answered,
    Bcc(String),
    Before(Date),
    Body(String),
    Cc(String),
    Deleted,
    Draft,
    Flagged,
    From(String),
    Header(String, String),
    Keyword(String),
    Larger(u64),
    New,
    Not(Box<SearchKey>),
    Old,
    On(Date),
    Or(Box<SearchKey>, Box<SearchKey>),
    Recent,
    Seen,
    SentBefore(Date),
    SentOn(Date),
    SentSince(Date),
    Since(Date),
    Smaller(u64),
    Subject(String),
    Text(String),
    To(String),
    Uid(SequenceSet),
    Unanswered,
    Undeleted,
    Undraft,
    Unflagged,
    Unkeyword(String),
    Unseen,
    /// A bare sequence set: message numbers.
    Sequence(SequenceSet),
    And(Vec<SearchKey>),
}

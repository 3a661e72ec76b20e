//! The mbox store: parsing, locking, the shared index, UID and flag
//! persistence, crash-safe rewrites, and the folder tree.
//!
//! Nothing in here names a protocol: POP3 and IMAP both come through
//! [`Mailbox`] and [`Registry`].

pub mod error;
pub mod lock;
pub mod names;

pub use error::StoreError;

/// How `From ` lines inside a message body are quoted on disk.
///
/// mboxrd quotes every line matching `^>*From ` by adding one `>` and
/// removes one on reading, so the quoting is reversible. mboxo quotes only
/// `^From ` and never unquotes: `>From ` in a body becomes indistinguishable
/// from a quoted line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MboxFormat {
    #[default]
    Mboxrd,
    Mboxo,
}

impl MboxFormat {
    pub fn parse(s: &str) -> Option<MboxFormat> {
        match s {
            "mboxrd" => Some(MboxFormat::Mboxrd),
            "mboxo" => Some(MboxFormat::Mboxo),
            _ => None,
        }
    }
}

pub mod folders;
pub mod from_line;
pub mod journal;
pub mod mailbox;
pub mod reader;
pub mod record;
pub mod registry;
pub mod scan;
pub mod state;
pub mod transform;
pub mod watch;

pub use mailbox::{Event, Mailbox, Message, Options};
pub use registry::{Registry, Shared, Subscription, Waker, Writer};
pub use state::Flags;

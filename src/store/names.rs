//! Mailbox names: modified UTF-7 on the wire (RFC 3501 §5.1.3), UTF-8 on
//! disk, and the mapping of names to files under a user's mail root.
//!
//! INBOX is one mbox file (the spool the MTA writes); every other mailbox
//! is an mbox file under the mail directory, with `/` as the hierarchy
//! separator and sub-directories as the hierarchy. A directory is a folder
//! that holds other mailboxes but no messages (`\Noselect`): on disk a name
//! cannot be both a file and a directory, so an mbox mailbox cannot have
//! children.
//!
//! No name may lead out of the mail directory: `..`, absolute names,
//! symlinks that point outside, NUL and control characters are refused
//! (DESIGN.md, Security; FIELD-NOTES.md: a `SELECT "../../spool/<user>"`
//! must not open another user's INBOX). Names of hidden files and of lock
//! and journal files are refused too, since those files belong to the
//! store, not to the user.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, warn};

use super::StoreError;

/// Longest mailbox name, in bytes of UTF-8. Long enough for any folder a
/// person makes, short enough that mail directory plus name stays well
/// below PATH_MAX (4096).
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest component of a name, in bytes. NAME_MAX is 255; the store puts
/// files next to a mailbox whose names add to it (`<name>.lock`, journals),
/// so leave room for those.
pub const MAX_COMPONENT_BYTES: usize = 200;
/// Deepest hierarchy, in components: deeper names are refused and
/// [`MailRoot::list`] does not walk deeper.
pub const MAX_DEPTH: usize = 32;
/// Most folders [`MailRoot::list`] reports; a mail directory holding more
/// is listed up to this many (and a warning is logged).
pub const MAX_FOLDERS: usize = 10_000;

// ---- modified UTF-7 ----

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn base64_value(b: u8) -> Option<u32> {
    let v = match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        b',' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Printable US-ASCII, which modified UTF-7 must represent as itself.
fn is_printable_ascii(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// Encodes a UTF-8 mailbox name as modified UTF-7 (RFC 3501 §5.1.3):
/// printable ASCII as itself, `&` as `&-`, every run of other characters
/// as UTF-16BE in modified BASE64 between `&` and `-`.
pub fn mutf7_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if is_printable_ascii(c) {
            flush_run(&mut out, &mut run);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush_run(&mut out, &mut run);
    out
}

fn flush_run(out: &mut String, run: &mut Vec<u16>) {
    if run.is_empty() {
        return;
    }
    out.push('&');
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for &unit in run.iter() {
        bits = (bits << 16) | u32::from(unit);
        nbits += 16;
        while nbits >= 6 {
            nbits -= 6;
            out.push(char::from(BASE64[((bits >> nbits) & 63) as usize]));
        }
        bits &= (1 << nbits) - 1;
    }
    if nbits > 0 {
        out.push(char::from(BASE64[((bits << (6 - nbits)) & 63) as usize]));
    }
    out.push('-');
    run.clear();
}

/// Decodes a modified UTF-7 mailbox name (RFC 3501 §5.1.3) to UTF-8.
///
/// Strict, so that every name has exactly one spelling: refuses characters
/// outside printable ASCII, an `&` without its `-`, bad BASE64, leftover or
/// non-zero padding bits, invalid UTF-16 (lone surrogates), printable ASCII
/// in BASE64, and two BASE64 runs in a row (they must be one).
pub fn mutf7_decode(name: &str) -> Result<String, StoreError> {
    let bad = || StoreError::BadName(shown(name));
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    let mut after_run = false;
    while i < bytes.len() {
        let b = bytes[i];
        if !(0x20..=0x7e).contains(&b) {
            return Err(bad());
        }
        i += 1;
        if b != b'&' {
            out.push(char::from(b));
            after_run = false;
            continue;
        }
        if bytes.get(i) == Some(&b'-') {
            out.push('&');
            i += 1;
            after_run = false;
            continue;
        }
        if after_run {
            return Err(bad());
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'-' {
            i += 1;
        }
        if i == bytes.len() {
            return Err(bad());
        }
        decode_run(&bytes[start..i], &mut out).ok_or_else(bad)?;
        i += 1;
        after_run = true;
    }
    Ok(out)
}

/// Decodes the BASE64 between `&` and `-`, appending to `out`.
fn decode_run(run: &[u8], out: &mut String) -> Option<()> {
    let mut units: Vec<u16> = Vec::with_capacity(run.len() * 6 / 16);
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for &b in run {
        bits = (bits << 6) | base64_value(b)?;
        nbits += 6;
        if nbits >= 16 {
            nbits -= 16;
            units.push((bits >> nbits) as u16);
            bits &= (1 << nbits) - 1;
        }
    }
    // A whole BASE64 character left over is one too many; the bits that
    // pad the last character out must be zero.
    if units.is_empty() || nbits >= 6 || bits != 0 {
        return None;
    }
    for c in char::decode_utf16(units) {
        let c = c.ok()?;
        if is_printable_ascii(c) {
            return None;
        }
        out.push(c);
    }
    Some(())
}

/// A name fit for logs and error messages: control characters replaced,
/// length bounded.
fn shown(name: &str) -> String {
    name.chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect()
}

// ---- names and files ----

/// True for the name INBOX, in any case (RFC 3501 §5.1).
pub fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// A user's mailboxes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRoot {
    /// The INBOX mbox file.
    pub inbox: PathBuf,
    /// The directory holding every other mailbox.
    pub dir: PathBuf,
}

/// One entry of [`MailRoot::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// UTF-8, `/`-separated.
    pub name: String,
    /// An mbox file (false: a directory, `\Noselect`).
    pub selectable: bool,
    pub has_children: bool,
}

/// What a valid name refers to.
enum Target {
    Inbox,
    /// A mailbox under the mail directory: its components and its path.
    Folder {
        parts: Vec<String>,
        path: PathBuf,
    },
}

/// Splits a UTF-8 name into checked components. `None` for INBOX.
fn parse_name(name: &str) -> Result<Option<Vec<String>>, StoreError> {
    let bad = || StoreError::BadName(shown(name));
    // Thunderbird sends folder names with a trailing separator.
    let name_ = name.strip_suffix('/').unwrap_or(name);
    if is_inbox(name_) {
        return Ok(None);
    }
    if name_.is_empty() || name_.starts_with('/') || name_.len() > MAX_NAME_BYTES {
        return Err(bad());
    }
    let parts: Vec<&str> = name_.split('/').collect();
    if parts.len() > MAX_DEPTH || !parts.iter().all(|p| component_ok(p)) {
        return Err(bad());
    }
    // INBOX is a file, so it cannot hold other mailboxes.
    if is_inbox(parts[0]) {
        return Err(bad());
    }
    Ok(Some(parts.into_iter().map(String::from).collect()))
}

/// Whether one component may name a mailbox or folder.
fn component_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= MAX_COMPONENT_BYTES
        // ".", ".." and hidden files, where the store keeps its own files.
        && !part.starts_with('.')
        && !part.ends_with(".lock")
        && !part.ends_with(".journal")
        // NUL, C0 and C1 controls, DEL.
        && !part.chars().any(char::is_control)
}

/// The canonical form of `path`: the longest prefix that exists (as a
/// directory entry) with every symlink followed, then the rest as written.
/// A dangling symlink in the existing prefix is an error.
fn canonical_prefix(path: &Path) -> io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut missing: Vec<OsString> = Vec::new();
    loop {
        match fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                match existing.file_name() {
                    Some(name) => missing.push(name.to_os_string()),
                    None => return Err(e),
                }
                existing.pop();
                if existing.as_os_str().is_empty() {
                    existing = PathBuf::from(".");
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut canon = fs::canonicalize(&existing)?;
    for name in missing.into_iter().rev() {
        canon.push(name);
    }
    Ok(canon)
}

impl MailRoot {
    pub fn new(inbox: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> MailRoot {
        MailRoot { inbox: inbox.into(), dir: dir.into() }
    }

    fn canonical_dir(&self) -> Result<PathBuf, StoreError> {
        canonical_prefix(&self.dir)
            .map_err(|e| StoreError::io(format!("resolving mail directory {}", self.dir.display()), e))
    }

    fn target(&self, name: &str) -> Result<Target, StoreError> {
        let parts = match parse_name(name)? {
            None => return Ok(Target::Inbox),
            Some(parts) => parts,
        };
        let bad = || StoreError::BadName(shown(name));
        let root = self.canonical_dir()?;
        let path = self.dir.join(parts.join("/"));
        let canon = canonical_prefix(&path).map_err(|e| {
            debug!("names refused name={} error={e}", shown(name));
            bad()
        })?;
        if canon == root || !canon.starts_with(&root) {
            debug!("names refused name={} reason=outside-mail-dir", shown(name));
            return Err(bad());
        }
        // With the mail directory around the INBOX file (~/mbox and ~/),
        // the INBOX must not be reachable under a second name.
        if canonical_prefix(&self.inbox).is_ok_and(|inbox| inbox == canon) {
            return Err(bad());
        }
        Ok(Target::Folder { parts, path })
    }

    /// The file (or directory) that the mailbox `name` is, whether or not
    /// it exists. `name` is UTF-8, already decoded from modified UTF-7.
    ///
    /// "INBOX" in any case is [`MailRoot::inbox`]. Children of INBOX
    /// ("INBOX/x") are refused: INBOX is an mbox file and cannot hold other
    /// mailboxes. Other names are relative to [`MailRoot::dir`], with one
    /// trailing `/` ignored; refused with [`StoreError::BadName`] are empty
    /// names and components, a leading `/`, `.` and `..`, components that
    /// start with `.` or end in `.lock` or `.journal`, control characters,
    /// over-long names, and names that lead out of the mail directory
    /// through a symlink. The path returned is the mail directory joined
    /// with the name, not the symlink-resolved one.
    ///
    /// The check looks at the file system as it is now: a symlink swapped in
    /// afterwards by someone who can write to the mail directory is not
    /// caught. Only the user and the administrator can write there.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, StoreError> {
        match self.target(name)? {
            Target::Inbox => Ok(self.inbox.clone()),
            Target::Folder { path, .. } => Ok(path),
        }
    }

    /// Creates mailbox `name`: an empty mbox file (mode 0600), or with a
    /// trailing `/` only a directory (mode 0700) to hold other mailboxes
    /// (RFC 3501 §6.3.3). Missing parent directories are made (0700).
    pub fn create(&self, name: &str) -> Result<(), StoreError> {
        let dir_only = name.ends_with('/');
        let (parts, path) = match self.target(name)? {
            // RFC 3501 §6.3.3: creating INBOX is an error; it always exists.
            Target::Inbox => return Err(StoreError::AlreadyExists("INBOX".into())),
            Target::Folder { parts, path } => (parts, path),
        };
        let exists = || StoreError::AlreadyExists(shown(name));
        if entry_exists(&path, name)? {
            return Err(exists());
        }
        self.make_parents(&parts)?;
        let made = if dir_only {
            DirBuilder::new().mode(0o700).create(&path)
        } else {
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map(drop)
        };
        match made {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists()),
            Err(e) => Err(StoreError::io(format!("creating mailbox {}", path.display()), e)),
        }
    }

    /// Makes the mail directory and the directories above the mailbox
    /// `parts` (all but the last component).
    fn make_parents(&self, parts: &[String]) -> Result<(), StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| StoreError::io(format!("creating mail directory {}", self.dir.display()), e))?;
        let mut dir = self.dir.clone();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push(part);
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(StoreError::NotAllowed("an mbox mailbox cannot hold other mailboxes")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("checking folder {}", dir.display()), e)),
            }
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                // Made by someone else just now; a file there is caught by
                // the next step or by the final create.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(StoreError::io(format!("creating folder {}", dir.display()), e)),
            }
        }
        Ok(())
    }

    /// Deletes mailbox `name`: the mbox file only (not its lock file, which
    /// may be held), or an empty directory. A directory with anything in it
    /// is refused with [`StoreError::NotAllowed`]; so is INBOX (RFC 3501
    /// §6.3.4).
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = match self.target(name)? {
            Target::Inbox => return Err(StoreError::NotAllowed("INBOX cannot be deleted")),
            Target::Folder { path, .. } => path,
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if is_missing(&e) => return Err(StoreError::NoSuchMailbox(shown(name))),
            Err(e) => return Err(StoreError::io(format!("checking mailbox {}", path.display()), e)),
        };
        if meta.is_dir() {
            return match fs::remove_dir(&path) {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                    if self.has_visible_children(&path) {
                        Err(StoreError::NotAllowed("has children"))
                    } else {
                        // Hidden, lock or journal files: the store's own, and
                        // a journal may be all that is left of a crashed write.
                        Err(StoreError::NotAllowed("folder holds files that are not mailboxes"))
                    }
                }
                Err(e) => Err(StoreError::io(format!("deleting folder {}", path.display()), e)),
            };
        }
        // A symlink (which `target` found to point inside) goes, not its target.
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Err(StoreError::NoSuchMailbox(shown(name))),
            Err(e) => Err(StoreError::io(format!("deleting mailbox {}", path.display()), e)),
        }
    }

    fn has_visible_children(&self, dir: &Path) -> bool {
        match fs::read_dir(dir) {
            Ok(entries) => entries.flatten().any(|e| e.file_name().to_str().is_some_and(component_ok)),
            Err(_) => true,
        }
    }

    /// Renames mailbox `old` (an mbox file or a folder with everything
    /// below it) to `new`, which must not exist; missing parents of `new`
    /// are made. INBOX is refused with [`StoreError::NotAllowed`] on either
    /// side: renaming INBOX moves its messages (RFC 3501 §6.3.5), which the
    /// caller does under the mailbox locks. Nor does this take any lock:
    /// the caller holds the write lock of a mailbox it renames.
    pub fn rename(&self, old: &str, new: &str) -> Result<(), StoreError> {
        let (old_parts, old_path) = match self.target(old)? {
            Target::Inbox => return Err(StoreError::NotAllowed("INBOX is renamed by moving its messages")),
            Target::Folder { parts, path } => (parts, path),
        };
        let (new_parts, new_path) = match self.target(new)? {
            Target::Inbox => return Err(StoreError::AlreadyExists("INBOX".into())),
            Target::Folder { parts, path } => (parts, path),
        };
        if !entry_exists(&old_path, old)? {
            return Err(StoreError::NoSuchMailbox(shown(old)));
        }
        if new_parts == old_parts || entry_exists(&new_path, new)? {
            return Err(StoreError::AlreadyExists(shown(new)));
        }
        if new_parts.starts_with(&old_parts) {
            return Err(StoreError::NotAllowed("a mailbox cannot be moved below itself"));
        }
        self.make_parents(&new_parts)?;
        match rename_noreplace(&old_path, &new_path) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                Err(StoreError::AlreadyExists(shown(new)))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Err(StoreError::NotAllowed("a mailbox cannot be moved below itself"))
            }
            Err(e) => {
                Err(StoreError::io(format!("renaming mailbox {} to {}", old_path.display(), new_path.display()), e))
            }
        }
    }

    /// Every mailbox: INBOX first (even before the MTA created its file),
    /// then what is under the mail directory, depth first in byte order of
    /// names. Skipped: hidden, lock and journal files, names that are not
    /// UTF-8 or that [`MailRoot::resolve`] would refuse, anything but files
    /// and directories, symlinks that lead outside the mail directory or to
    /// a directory being walked (a loop), and a top-level entry named INBOX
    /// (in any case), which the real INBOX hides. At most [`MAX_DEPTH`]
    /// levels and [`MAX_FOLDERS`] folders are reported.
    pub fn list(&self) -> Result<Vec<Folder>, StoreError> {
        let mut out = vec![Folder { name: "INBOX".into(), selectable: true, has_children: false }];
        let root = match fs::canonicalize(&self.dir) {
            Ok(root) => root,
            Err(e) if is_missing(&e) => return Ok(out),
            Err(e) => return Err(StoreError::io(format!("resolving mail directory {}", self.dir.display()), e)),
        };
        let entries =
            read_sorted(&root).map_err(|e| StoreError::io(format!("listing mail directory {}", root.display()), e))?;
        let mut walk = Walk {
            root: root.clone(),
            inbox: canonical_prefix(&self.inbox).ok(),
            out: &mut out,
            ancestors: Vec::new(),
            warned_depth: false,
            full: false,
        };
        if let Ok(m) = fs::metadata(&root) {
            walk.ancestors.push((m.dev(), m.ino()));
        }
        walk.entries(&root, "", 1, entries);
        if walk.full {
            warn!("names list-truncated dir={} limit={MAX_FOLDERS}", root.display());
        }
        Ok(out)
    }
}

/// True when something (anything, a dangling symlink too) has that name.
fn entry_exists(path: &Path, name: &str) -> Result<bool, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(StoreError::io(format!("checking mailbox {} ({})", path.display(), shown(name)), e)),
    }
}

/// ENOENT, or ENOTDIR (a component of the path is a file).
fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// rename(2) that fails with EEXIST instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let c_from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
        let c_to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
        // SAFETY: both strings are NUL-terminated and live across the call.
        // The raw system call, since glibc gained renameat2() only in 2.28.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                c_from.as_ptr(),
                libc::AT_FDCWD,
                c_to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // Older kernels and some file systems (NFS) know no RENAME_NOREPLACE.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(err);
        }
    }
    // Without it: a file moves by link and unlink (link refuses to replace);
    // a directory by rename(2), which replaces at most an empty directory.
    if fs::symlink_metadata(from)?.is_dir() {
        if fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        return fs::rename(from, to);
    }
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            fs::rename(from, to)
        }
    }
}

/// The entries of `dir`, sorted by name.
fn read_sorted(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// The state of one [`MailRoot::list`] walk.
struct Walk<'a> {
    /// The canonical mail directory.
    root: PathBuf,
    /// The canonical INBOX path.
    inbox: Option<PathBuf>,
    out: &'a mut Vec<Folder>,
    /// (dev, ino) of the directories from the root down to the one being
    /// walked, to cut symlink loops.
    ancestors: Vec<(u64, u64)>,
    warned_depth: bool,
    full: bool,
}

impl Walk<'_> {
    /// Lists the `entries` of the directory `dir` (canonical), whose
    /// folder name is `prefix` and whose children are at `depth`. True when
    /// anything was listed.
    fn entries(&mut self, dir: &Path, prefix: &str, depth: usize, entries: Vec<fs::DirEntry>) -> bool {
        let mut any = false;
        for entry in entries {
            if self.out.len() > MAX_FOLDERS {
                self.full = true;
                return any;
            }
            let file_name = entry.file_name();
            let Some(part) = file_name.to_str() else {
                debug!("names skipped dir={} reason=not-utf8", dir.display());
                continue;
            };
            if !component_ok(part) || (depth == 1 && is_inbox(part)) {
                continue;
            }
            let name = if prefix.is_empty() { part.to_string() } else { format!("{prefix}/{part}") };
            if name.len() > MAX_NAME_BYTES {
                continue;
            }
            let Ok(file_type) = entry.file_type() else { continue };
            let mut real = dir.join(part);
            if file_type.is_symlink() {
                match fs::canonicalize(&real) {
                    Ok(target) if target != self.root && target.starts_with(&self.root) => real = target,
                    _ => continue,
                }
            }
            if self.inbox.as_ref() == Some(&real) {
                continue;
            }
            let Ok(meta) = fs::metadata(&real) else { continue };
            if meta.is_file() {
                self.out.push(Folder { name, selectable: true, has_children: false });
                any = true;
            } else if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if self.ancestors.contains(&id) {
                    continue;
                }
                let at = self.out.len();
                self.out.push(Folder { name: name.clone(), selectable: false, has_children: false });
                any = true;
                if depth >= MAX_DEPTH {
                    if !self.warned_depth {
                        warn!("names list-depth-limit dir={} limit={MAX_DEPTH}", real.display());
                        self.warned_depth = true;
                    }
                    continue;
                }
                let children = match read_sorted(&real) {
                    Ok(children) => children,
                    Err(e) => {
                        warn!("names list-unreadable dir={} error={e}", real.display());
                        continue;
                    }
                };
                self.ancestors.push(id);
                let has = self.entries(&real, &name, depth + 1, children);
                self.ancestors.pop();
                self.out[at].has_children = has;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const ROUND_TRIP: &[(&str, &str)] = &[
        ("", ""),
        ("INBOX", "INBOX"),
        ("&", "&-"),
        ("a&b", "a&-b"),
        ("&&", "&-&-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
        ("😀", "&2D3eAA-"),
        ("\u{1}", "&AAE-"),
        ("ä&ä", "&AOQ-&-&AOQ-"),
        ("a-b", "a-b"),
    ];

    #[test]
    fn mutf7_table() {
        for &(utf8, wire) in ROUND_TRIP {
            assert_eq!(mutf7_encode(utf8), wire, "encode {utf8:?}");
            assert_eq!(mutf7_decode(wire).unwrap(), utf8, "decode {wire:?}");
        }
    }

    #[test]
    fn mutf7_refusals() {
        for wire in [
            "&",                  // unterminated
            "&U,BTFw",            // no closing '-'
            "&U,B!Fw-",           // not BASE64
            "&U,B/Fw-",           // '/' is not in modified BASE64
            "&AGE-",              // printable ASCII 'a' in BASE64
            "&ACY-",              // '&' in BASE64
            "&U,BTFw-&ZeVnLIqe-", // two runs in a row
            "&2D0-",              // lone high surrogate
            "&3gA-",              // lone low surrogate
            "&U,BTF-",            // a character too many
            "&AOQA-",             // non-minimal: 24 bits for one UTF-16 unit
            "&U,BTFx-",           // non-zero padding bits
            "&A-",                // too short for a unit
            "ü",                  // raw non-ASCII
            "a\tb",               // raw control character
            "a\u{7f}",            // DEL
            "a\0b",               // NUL
        ] {
            assert!(matches!(mutf7_decode(wire), Err(StoreError::BadName(_))), "{wire:?}");
        }
        // Shown names carry no control characters.
        match mutf7_decode("a\nb") {
            Err(StoreError::BadName(shown)) => assert_eq!(shown, "a?b"),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn mutf7_round_trip(s in any::<String>()) {
            let _ = mutf7_decode(&s);
            let wire = mutf7_encode(&s);
            prop_assert!(wire.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            prop_assert_eq!(mutf7_decode(&wire).unwrap(), s);
        }

        /// Strictness: whatever decodes has exactly one spelling.
        #[test]
        fn mutf7_one_spelling(wire in "[&A-Za-z0-9+,/ -]{0,24}") {
            if let Ok(utf8) = mutf7_decode(&wire) {
                prop_assert_eq!(mutf7_encode(&utf8), wire);
            }
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        root: MailRoot,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        fs::create_dir_all(base.join("spool")).unwrap();
        fs::create_dir_all(base.join("mail/alice")).unwrap();
        fs::write(base.join("spool/alice"), b"").unwrap();
        fs::write(base.join("spool/bob"), b"").unwrap();
        let root = MailRoot::new(base.join("spool/alice"), base.join("mail/alice"));
        Fixture { _tmp: tmp, base, root }
    }

    fn bad(r: Result<PathBuf, StoreError>) -> bool {
        matches!(r, Err(StoreError::BadName(_)))
    }

    fn names(root: &MailRoot) -> Vec<(String, bool, bool)> {
        root.list().unwrap().into_iter().map(|f| (f.name, f.selectable, f.has_children)).collect()
    }

    #[test]
    fn resolve_inbox_and_folders() {
        let f = fixture();
        for inbox in ["INBOX", "inbox", "InBoX", "INBOX/"] {
            assert_eq!(f.root.resolve(inbox).unwrap(), f.base.join("spool/alice"));
        }
        assert_eq!(f.root.resolve("Sent").unwrap(), f.base.join("mail/alice/Sent"));
        assert_eq!(f.root.resolve("Work/2024/").unwrap(), f.base.join("mail/alice/Work/2024"));
        assert_eq!(f.root.resolve("台北").unwrap(), f.base.join("mail/alice/台北"));
        assert_eq!(f.root.resolve("a b~c&d").unwrap(), f.base.join("mail/alice/a b~c&d"));
    }

    #[test]
    fn resolve_refusals() {
        let f = fixture();
        let long = "x".repeat(MAX_COMPONENT_BYTES + 1);
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let huge = vec!["y".repeat(100); 11].join("/");
        for name in [
            "",
            "/",
            "//",
            "/etc/passwd",
            "a//b",
            "a/",
            "a//",
            ".",
            "..",
            "a/./b",
            "a/../b",
            "../spool/bob",
            "../../spool/bob",
            ".hidden",
            "a/.hidden",
            "Sent.lock",
            "a/b.lock/c",
            "Sent.journal",
            "a\0b",
            "a\nb",
            "a\rb",
            "a\u{1b}b",
            "a\u{7f}b",
            "a\u{85}b",
            "INBOX/sub",
            "inbox/sub",
            &long,
            &deep,
            &huge,
        ] {
            if name == "a/" {
                // One trailing separator is fine; it is "a".
                assert!(f.root.resolve(name).is_ok());
                continue;
            }
            assert!(bad(f.root.resolve(name)), "{name:?} accepted");
        }
    }

    #[test]
    fn resolve_refuses_symlinks_out() {
        let f = fixture();
        let dir = &f.root.dir;
        symlink(f.base.join("spool"), dir.join("evil")).unwrap();
        symlink(f.base.join("spool/bob"), dir.join("bobs")).unwrap();
        symlink("/nonexistent/target", dir.join("dangling")).unwrap();
        symlink(".", dir.join("self")).unwrap();
        symlink("loop", dir.join("loop")).unwrap();
        symlink(f.base.join("spool/alice"), dir.join("inbox-alias")).unwrap();
        for name in ["evil", "evil/x", "evil/bob", "bobs", "dangling", "dangling/x", "self", "loop", "inbox-alias"] {
            assert!(bad(f.root.resolve(name)), "{name:?} accepted");
        }
        // A symlink that stays inside is followed.
        fs::create_dir(dir.join("real")).unwrap();
        symlink("real", dir.join("alias")).unwrap();
        assert_eq!(f.root.resolve("alias/x").unwrap(), dir.join("alias/x"));
        assert_eq!(f.root.resolve("self/x").unwrap(), dir.join("self/x"));
    }

    #[test]
    fn resolve_with_missing_mail_dir() {
        let f = fixture();
        let root = MailRoot::new(f.root.inbox.clone(), f.base.join("mail/nobody/yet"));
        assert_eq!(root.resolve("Sent").unwrap(), f.base.join("mail/nobody/yet/Sent"));
        assert!(bad(root.resolve("../x")));
    }

    #[test]
    fn create_files_and_folders() {
        let f = fixture();
        let dir = &f.root.dir;
        f.root.create("Sent").unwrap();
        let meta = fs::metadata(dir.join("Sent")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), 0);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(matches!(f.root.create("Sent"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.create("Sent/"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.create("INBOX"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.create("Sent/sub"), Err(StoreError::NotAllowed(_))));

        f.root.create("Work/2024/Q1").unwrap();
        assert!(dir.join("Work/2024").is_dir());
        assert_eq!(fs::metadata(dir.join("Work")).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(dir.join("Work/2024/Q1").is_file());

        f.root.create("Projects/").unwrap();
        assert!(dir.join("Projects").is_dir());
        assert!(matches!(f.root.create("Projects"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.create("../x"), Err(StoreError::BadName(_))));
    }

    #[test]
    fn create_makes_the_mail_dir() {
        let f = fixture();
        let root = MailRoot::new(f.root.inbox.clone(), f.base.join("mail/carol"));
        root.create("Drafts").unwrap();
        assert!(f.base.join("mail/carol/Drafts").is_file());
        assert_eq!(fs::metadata(f.base.join("mail/carol")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn delete_files_and_folders() {
        let f = fixture();
        let dir = &f.root.dir;
        f.root.create("Trash").unwrap();
        fs::write(dir.join("Trash.lock"), b"").unwrap();
        f.root.delete("Trash").unwrap();
        assert!(!dir.join("Trash").exists());
        assert!(dir.join("Trash.lock").exists(), "the lock file is not ours to remove");
        assert!(matches!(f.root.delete("Trash"), Err(StoreError::NoSuchMailbox(_))));
        assert!(matches!(f.root.delete("INBOX"), Err(StoreError::NotAllowed(_))));
        assert!(matches!(f.root.delete("inbox"), Err(StoreError::NotAllowed(_))));

        f.root.create("Work/Old").unwrap();
        assert!(matches!(f.root.delete("Work"), Err(StoreError::NotAllowed("has children"))));
        f.root.delete("Work/Old").unwrap();
        fs::write(dir.join("Work/.Old.journal"), b"").unwrap();
        assert!(matches!(f.root.delete("Work/"), Err(StoreError::NotAllowed(_))));
        assert!(dir.join("Work/.Old.journal").exists());
        fs::remove_file(dir.join("Work/.Old.journal")).unwrap();
        f.root.delete("Work/").unwrap();
        assert!(!dir.join("Work").exists());
        assert!(matches!(f.root.delete("../../spool/bob"), Err(StoreError::BadName(_))));
        assert!(f.base.join("spool/bob").exists());
    }

    #[test]
    fn rename_files_and_folders() {
        let f = fixture();
        let dir = &f.root.dir;
        f.root.create("Old").unwrap();
        fs::write(dir.join("Old"), b"From a Mon Jan  1 00:00:00 2024\n\nx\n").unwrap();
        f.root.rename("Old", "Archive/2023/Old").unwrap();
        assert!(!dir.join("Old").exists());
        assert_eq!(fs::read(dir.join("Archive/2023/Old")).unwrap(), b"From a Mon Jan  1 00:00:00 2024\n\nx\n");

        f.root.rename("Archive", "Attic").unwrap();
        assert!(dir.join("Attic/2023/Old").is_file());

        f.root.create("Keep").unwrap();
        assert!(matches!(f.root.rename("Keep", "Attic"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.rename("Keep", "Keep/"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.rename("Attic", "Attic/x"), Err(StoreError::NotAllowed(_))));
        assert!(matches!(f.root.rename("Missing", "Other"), Err(StoreError::NoSuchMailbox(_))));
        assert!(matches!(f.root.rename("INBOX", "Other"), Err(StoreError::NotAllowed(_))));
        assert!(matches!(f.root.rename("Keep", "INBOX"), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.root.rename("Keep", "../../spool/bob"), Err(StoreError::BadName(_))));
        assert!(matches!(f.root.rename("Keep", "Attic/2023/Old/x"), Err(StoreError::NotAllowed(_))));
        assert!(dir.join("Keep").is_file());
    }

    #[test]
    fn rename_noreplace_refuses_existing() {
        let f = fixture();
        let dir = &f.root.dir;
        fs::write(dir.join("a"), b"a").unwrap();
        fs::write(dir.join("b"), b"b").unwrap();
        let e = rename_noreplace(&dir.join("a"), &dir.join("b")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(fs::read(dir.join("b")).unwrap(), b"b");
    }

    #[test]
    fn list_walks_the_tree() {
        let f = fixture();
        let dir = &f.root.dir;
        assert_eq!(names(&f.root), vec![("INBOX".into(), true, false)]);
        for name in ["Sent", "Work/2024/Q1", "Work/2024/Q2", "Empty/", "台北"] {
            f.root.create(name).unwrap();
        }
        // What the store or others keep there, and what cannot be a name.
        fs::write(dir.join("Sent.lock"), b"").unwrap();
        fs::write(dir.join(".Sent.journal"), b"").unwrap();
        fs::write(dir.join("x.journal"), b"").unwrap();
        fs::write(dir.join(".hidden"), b"").unwrap();
        fs::write(dir.join("inbox"), b"").unwrap();
        fs::write(dir.join("bad\nname"), b"").unwrap();
        fs::write(dir.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9")), b"").unwrap();
        symlink(f.base.join("spool"), dir.join("evil")).unwrap();
        symlink(".", dir.join("self")).unwrap();
        symlink("Work", dir.join("Job")).unwrap();
        // Loops: to the root, and to an ancestor folder.
        symlink("../..", dir.join("Work/2024/up")).unwrap();
        symlink("..", dir.join("Work/2024/back")).unwrap();
        assert_eq!(
            names(&f.root),
            vec![
                ("INBOX".into(), true, false),
                ("Empty".into(), false, false),
                ("Job".into(), false, true),
                ("Job/2024".into(), false, true),
                ("Job/2024/Q1".into(), true, false),
                ("Job/2024/Q2".into(), true, false),
                ("Sent".into(), true, false),
                ("Work".into(), false, true),
                ("Work/2024".into(), false, true),
                ("Work/2024/Q1".into(), true, false),
                ("Work/2024/Q2".into(), true, false),
                ("台北".into(), true, false),
            ]
        );
    }

    #[test]
    fn list_without_mail_dir() {
        let f = fixture();
        let root = MailRoot::new(f.root.inbox.clone(), f.base.join("nowhere"));
        assert_eq!(names(&root), vec![("INBOX".into(), true, false)]);
    }

    #[test]
    fn list_is_bounded_in_depth() {
        let f = fixture();
        let deep = vec!["d"; MAX_DEPTH + 3].join("/");
        fs::create_dir_all(f.root.dir.join(&deep)).unwrap();
        let list = f.root.list().unwrap();
        assert_eq!(list.len(), 1 + MAX_DEPTH);
        assert!(list.iter().all(|folder| folder.name.split('/').count() <= MAX_DEPTH));
        // Every listed name resolves.
        for folder in &list {
            f.root.resolve(&folder.name).unwrap();
        }
    }

    #[test]
    fn inbox_under_the_mail_dir_is_not_listed_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        fs::write(home.join("mbox"), b"").unwrap();
        fs::write(home.join("saved"), b"").unwrap();
        let root = MailRoot::new(home.join("mbox"), home);
        assert!(bad(root.resolve("mbox")));
        assert_eq!(names(&root), vec![("INBOX".into(), true, false), ("saved".into(), true, false)]);
    }
}

//! The passwd-file: one account a line, as Dovecot reads it:
//!
//! ```text
//! user:{SCHEME}hash:uid:gid:gecos:home:shell:extra
//! ```
//!
//! Empty fields take defaults; `#` starts a comment line. When the file
//! does not exist, accounts are the system's (getpwnam), for offices whose
//! mail users are Unix users.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One account.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// `{SCHEME}hash` (see `auth::hash`). Empty for system accounts:
    /// postroom reads no shadow file and has no PAM, so a system user
    /// logs in only through a passwd-file entry.
    pub password: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub home: Option<PathBuf>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password hash into a log.
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("password", &"********")
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("home", &self.home)
            .finish()
    }
}

/// The accounts of a passwd-file.
#[derive(Debug, Default)]
pub struct PasswdFile {
    accounts: HashMap<String, Account>,
}

impl PasswdFile {
    /// Parses the file's text. Lines that do not parse are reported with
    /// their line numbers and skipped.
    pub fn parse(text: &str) -> (PasswdFile, Vec<(usize, String)>) {
        let mut pf = PasswdFile::default();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(':').collect();
            let name = f[0].trim();
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/') {
                errors.push((i + 1, "bad user name".to_string()));
                continue;
            }
            let num = |k: usize| -> Result<Option<u32>, String> {
                match f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    None => Ok(None),
                    Some(s) => s.parse().map(Some).map_err(|_| format!("field {} is not a number", k + 1)),
                }
            };
            let (uid, gid) = match (num(2), num(3)) {
                (Ok(u), Ok(g)) => (u, g),
                (Err(e), _) | (_, Err(e)) => {
                    errors.push((i + 1, e));
                    continue;
                }
            };
            let home = f.get(5).map(|s| s.trim()).filter(|s| !s.is_empty()).map(PathBuf::from);
            if pf.accounts.contains_key(name) {
                errors.push((i + 1, format!("user {name} listed twice; the first entry counts")));
                continue;
            }
            pf.accounts.insert(
                name.to_string(),
                Account { name: name.to_string(), password: f.get(1).unwrap_or(&"").to_string(), uid, gid, home },
            );
        }
        (pf, errors)
    }

    /// Reads and parses the file. Bytes that are not UTF-8 (an old Latin-1
    /// comment or GECOS field) do not make the whole file unreadable.
    pub fn load(path: &Path) -> io::Result<(PasswdFile, Vec<(usize, String)>)> {
        Ok(PasswdFile::parse(&String::from_utf8_lossy(&std::fs::read(path)?)))
    }

    pub fn get(&self, name: &str) -> Option<&Account> {
        self.accounts.get(name)
    }

    /// Every account, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// A system account (getpwnam_r), for set-ups without a passwd-file.
pub fn system_account(name: &str) -> io::Result<Option<Account>> {
    let Ok(cname) = CString::new(name) else { return Ok(None) };
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pwd.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: getpwnam_r filled pwd with pointers into buf.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_string_lossy().into_owned();
    Ok(Some(Account {
        name: name.to_string(),
        password: String::new(),
        uid: Some(pwd.pw_uid),
        gid: Some(pwd.pw_gid),
        home: Some(PathBuf::from(home)),
    }))
}

/// Finds `name` in the passwd-file if it exists, else among system accounts.
pub fn lookup(passwd_file: &Path, name: &str) -> io::Result<Option<Account>> {
    match PasswdFile::load(passwd_file) {
        Ok((pf, _)) => Ok(pf.get(name).cloned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => system_account(name),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let text = "# comment\nalice:{PLAIN}x:1000:100::/home/alice::\nbob:{SHA512-CRYPT}$6$a$b\n\ncarol:x:notanumber\nalice:again\n:nobody\n";
        let (pf, errors) = PasswdFile::parse(text);
        assert_eq!(pf.len(), 2);
        let a = pf.get("alice").unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_deref()), (Some(1000), Some(100), Some(Path::new("/home/alice"))));
        assert_eq!(a.password, "{PLAIN}x");
        assert_eq!(pf.get("bob").unwrap().password, "{SHA512-CRYPT}$6$a$b");
        assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(!format!("{a:?}").contains("{PLAIN}x"));
    }

    #[test]
    fn system_accounts() {
        let root = system_account("root").unwrap().unwrap();
        assert_eq!(root.uid, Some(0));
        assert!(system_account("no-such-user-postroom").unwrap().is_none());
    }
}

//! Giving up root: the server binds its ports as root, then becomes the
//! configured `user` for good, and never serves mail as root.
//!
//! The user's groups come from initgroups(3): root's supplementary groups
//! are gone, and the user keeps its own (on Debian, `/var/mail` is
//! root:mail 2775, so the account needs the `mail` group for dotlocks,
//! whether as its primary group or a supplementary one).

use std::ffi::{CStr, CString};

/// A user account from the system's user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Whom to become after binding: `user` from the config when started as
/// root (refused when missing: mail is never served as root), nobody to
/// switch to when not root.
pub fn target(config: &crate::config::Config) -> Result<Option<SystemUser>, String> {
    match (&config.user, is_root()) {
        (Some(name), true) => lookup(name).map(Some),
        (None, true) => Err(REFUSE_ROOT.to_string()),
        (_, false) => Ok(None),
    }
}

/// The message for a server left running as root.
pub const REFUSE_ROOT: &str = "refusing to serve mail as root; set `user` in postroom.conf";

/// True when the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Looks up `name` with getpwnam_r.
pub fn lookup(name: &str) -> Result<SystemUser, String> {
    let cname = CString::new(name).map_err(|_| format!("user `{name}`: not a valid name"))?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: pwd and result are written by getpwnam_r, which keeps its
        // strings in buf; buf outlives every use of pwd below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let r = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 {
            return Err(format!("user `{name}`: {}", std::io::Error::from_raw_os_error(r)));
        }
        if result.is_null() {
            return Err(format!("user `{name}` does not exist"));
        }
        // SAFETY: pw_name points into buf, NUL-terminated.
        let pw_name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
        return Ok(SystemUser { name: pw_name, uid: pwd.pw_uid, gid: pwd.pw_gid });
    }
}

/// Becomes `user` for good: its groups, its gid, its uid. Fails, rather
/// than goes on, if any step fails or root could be regained.
pub fn switch_to(user: &SystemUser) -> Result<(), String> {
    if user.uid == 0 {
        return Err(format!("user `{}` is root: {REFUSE_ROOT}", user.name));
    }
    let cname = CString::new(user.name.as_str()).map_err(|_| format!("user `{}`: not a valid name", user.name))?;
    let os = |what: &str| format!("cannot switch to user `{}`: {what}: {}", user.name, std::io::Error::last_os_error());
    // SAFETY: plain system calls with valid arguments; each result is checked.
    unsafe {
        if libc::initgroups(cname.as_ptr(), user.gid) != 0 {
            return Err(os("initgroups"));
        }
        if libc::setgid(user.gid) != 0 {
            return Err(os("setgid"));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(os("setuid"));
        }
        if libc::setuid(0) == 0 || libc::geteuid() == 0 || libc::getegid() != user.gid {
            return Err(format!("cannot switch to user `{}`: root privileges are still there", user.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_root_and_missing() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup("no-such-user-postroom").unwrap_err().contains("does not exist"));
        assert!(lookup("a\0b").is_err());
    }

    #[test]
    fn root_is_never_a_target() {
        let root = lookup("root").unwrap();
        assert!(switch_to(&root).unwrap_err().contains("refusing to serve mail as root"));
    }
}

//! Listening unix sockets only their owner can reach: every socket the VMM and the backend
//! create (the vhost-user listener of `vmm net-backend --socket`, the control socket of `vmm
//! --api`, the relay's private socket) is bound mode 0600 from the start (the umask is narrowed
//! around `bind`, so there is no moment when it is wider), and only then shared on purpose
//! ([`share`]: `--socket-mode`/`--socket-group`, `--api-mode`/`--api-group`).
//!
//! A path that is a socket nobody listens on (left by a process that died) is replaced; a live
//! one, or anything that is not a socket (a regular file, a directory, a symlink), is refused
//! and left as it is.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Mutex;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process accepts connections on the socket at the path.
    #[error("another process is listening there")]
    InUse,
    /// Something that is not a socket is at the path; it is never replaced.
    #[error("exists and is not a socket (not replaced)")]
    NotSocket,
    /// Removing a stale socket, binding or setting the mode failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Serialises umask changes: the mask is per process, and two threads swapping it at once
/// could leave it narrowed for good.
static UMASK: Mutex<()> = Mutex::new(());

/// Binds `path` mode 0600 (owner only), replacing a stale socket there but nothing else.
pub fn bind_private(path: &Path) -> Result<UnixListener, BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse);
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => return Err(BindError::NotSocket),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let bound = {
        let _held = UMASK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: umask only swaps the process's file mode mask; no memory is involved. The
        // socket is created 0600 from the start, so no other user can connect in between.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        bound
    }?;
    // A umask can only narrow; make the mode exactly 0600 whatever it was.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(bound)
}

/// Who may use a socket besides its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The socket's mode (permission bits only, at most 0o777); `None`: 0600.
    pub mode: Option<u32>,
    /// The socket's group; `None`: the owner's.
    pub group: Option<u32>,
}

/// Gives the socket at `path` (bound by [`bind_private`]) to `owner` (a uid the process will
/// switch to, so that it can still use and remove it) and opens it to `access`: the owner and
/// group change first, the mode last, so the socket is never open to a group it was not meant
/// for. Fails if the path is no longer a socket.
pub fn share(path: &Path, owner: Option<u32>, access: Access) -> io::Result<()> {
    if owner.is_none() && access == Access::default() {
        return Ok(());
    }
    if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
        return Err(io::Error::other("no longer a socket"));
    }
    if owner.is_some() || access.group.is_some() {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let uid = owner.unwrap_or(u32::MAX);
        let gid = access.group.unwrap_or(u32::MAX);
        // SAFETY: `c` is a live NUL-terminated path; lchown changes the link itself, never
        // what a symlink put there in the meantime points to. -1 (u32::MAX) keeps an id.
        if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(mode) = access.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    Ok(())
}

/// `--socket-mode`: an octal mode of permission bits only (`0660`, `660`, `0o660`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        Ok(_) => Err(format!("{s}: permission bits only (at most 0777)")),
        Err(_) => Err(format!("{s}: not an octal mode (e.g. 0660)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal_permission_bits() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        assert!(parse_mode("4755")
            .unwrap_err()
            .contains("permission bits only"));
        assert!(parse_mode("0689")
            .unwrap_err()
            .contains("not an octal mode"));
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn bound_0600_stale_replaced_others_refused_and_kept() {
        let dir = std::env::temp_dir().join(format!("vmm_net-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let l = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind_private(&path), Err(BindError::InUse)));
        drop(l);
        // Stale now: replaced.
        let l = bind_private(&path).unwrap();
        share(
            &path,
            None,
            Access {
                mode: Some(0o660),
                group: None,
            },
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"keep").unwrap();
        assert!(matches!(bind_private(&path), Err(BindError::NotSocket)));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

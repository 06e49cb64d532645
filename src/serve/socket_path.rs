//! Who may stand behind the socket's path: the directories the server binds in, and the uids a
//! client believes (docs/socket.md, "Who can impersonate the agent").
//!
//! - Server: every directory from `/` down to the socket's directory (symlinks resolved) must
//!   be owned by root or by the agent's uid, and not writable by group or others unless it is
//!   root-owned and sticky (like `/tmp`, where nobody can remove or rename another's file).
//!   Otherwise another user could remove the socket and bind their own in its place.
//! - Client: the answer is believed only from a server (the listening process's `SO_PEERCRED`)
//!   whose uid is root, the client's own uid, or `--agent-uid` (an agent that runs as another
//!   uid): whoever can bind a socket on the path, no other uid is taken for the agent.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Kind, Result};

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// The socket's directory, created when missing, as an absolute path without symlinks (so
/// what was checked is what is bound), and the socket's path in it.
fn resolve(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = path.file_name().ok_or_else(|| {
        Error::config(format!(
            "--socket `{}` does not name a file; give a path such as /run/linuxguard/agent.sock",
            path.display()
        ))
    })?;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(Kind::Runtime, || {
        format!("failed to create the socket directory `{}`", dir.display())
    })?;
    let real = std::fs::canonicalize(&dir).with_context(Kind::Runtime, || {
        format!("cannot resolve the socket directory `{}`", dir.display())
    })?;
    let sock = real.join(name);
    Ok((real, sock))
}

/// `/`, then each directory down to `dir` (absolute, no symlinks).
fn chain(dir: &Path) -> Vec<&Path> {
    let mut v: Vec<&Path> = dir.ancestors().collect();
    v.reverse();
    v
}

/// Checks the directories the server is about to bind `path` in; returns the path to bind
/// (the directory resolved). `uid` is the agent's effective uid.
pub fn check_server_path(path: &Path, uid: u32) -> Result<PathBuf> {
    let (dir, sock) = resolve(path)?;
    for d in chain(&dir) {
        let mut md = std::fs::symlink_metadata(d).with_context(Kind::Runtime, || {
            format!("cannot inspect `{}` on the socket's path", d.display())
        })?;
        if d == dir
            && uid == 0
            && md.uid() == 0
            && md.mode() & GROUP_OTHER_WRITE != 0
            && md.mode() & STICKY == 0
        {
            md = make_sticky(d, &md)?;
        }
        let mode = md.mode() & 0o7777;
        let owner = md.uid();
        let why = if owner != 0 && owner != uid {
            Some(format!("is owned by uid {owner}"))
        } else if mode & GROUP_OTHER_WRITE != 0 && !(owner == 0 && mode & STICKY != 0) {
            Some(format!(
                "is writable by {} (mode {mode:04o})",
                if mode & 0o002 != 0 {
                    "every user"
                } else {
                    "its group"
                }
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::config(format!(
                "refusing the socket `{}`: the directory `{}` on its path {why}, so another user could replace the \
                 socket and answer as the agent; use a directory that only root{} can write, on a path of such \
                 directories (the default /run/linuxguard/agent.sock), or fix the owner and mode",
                path.display(),
                d.display(),
                if uid == 0 {
                    String::new()
                } else {
                    format!(" or uid {uid} (this agent)")
                }
            )));
        }
    }
    Ok(sock)
}

/// The socket's own directory, root's and writable by its group or every user but not sticky
/// (a Kubernetes `emptyDir` is 0777): made sticky like `/tmp` (through an fd of that very directory, never a
/// path that could be swapped), so no other user can remove or rename the agent's socket.
fn make_sticky(dir: &Path, seen: &std::fs::Metadata) -> Result<std::fs::Metadata> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(dir)
        .with_context(Kind::Runtime, || format!("cannot open `{}`", dir.display()))?;
    let md = f.metadata().with_context(Kind::Runtime, || {
        format!("cannot inspect `{}`", dir.display())
    })?;
    if (md.dev(), md.ino()) != (seen.dev(), seen.ino()) {
        return Err(Error::runtime(format!(
            "the socket directory `{}` changed while it was checked",
            dir.display()
        )));
    }
    let mode = md.mode() & 0o7777 | STICKY;
    nix::sys::stat::fchmod(&f, nix::sys::stat::Mode::from_bits_truncate(mode))
        .with_context(Kind::Runtime, || {
            format!("cannot make `{}` sticky", dir.display())
        })?;
    log::warn!(
        "the socket directory `{}` was writable by other users: made it sticky (mode {mode:04o}, like /tmp), so only \
         root can remove or replace the agent's socket",
        dir.display()
    );
    f.metadata().with_context(Kind::Runtime, || {
        format!("cannot inspect `{}`", dir.display())
    })
}

/// The server uids a client believes: root, the client's own uid, and `--agent-uid` when set
/// (an agent running as another uid). Never derived from the filesystem: a directory root
/// gave a user (a home directory) looks the same as one root gave the agent's uid.
pub fn trusted_uids(own: u32, agent_uid: Option<u32>) -> Vec<u32> {
    let mut uids = vec![0, own];
    uids.extend(agent_uid);
    uids.dedup();
    uids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lg-sockpath-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn writable_directories_are_refused_and_private_ones_pass() {
        let uid = nix::unistd::geteuid().as_raw();
        let d = tmp("srv");
        assert!(check_server_path(&d.join("a.sock"), uid).is_ok());
        // An ancestor writable by every user: refused.
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_server_path(&d.join("sub/a.sock"), uid).unwrap_err();
        assert!(e.to_string().contains("writable by every user"), "{e}");
        if uid == 0 {
            // The socket's own directory, root's, 0777 (an emptyDir): made sticky, accepted.
            assert!(check_server_path(&d.join("a.sock"), uid).is_ok());
            assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o1777);
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_server_path(&d.join("sub/a.sock"), uid).unwrap_err();
        assert!(e.to_string().contains("writable by its group"), "{e}");
        // Another uid's directory: as root, give it away; otherwise ask for another agent uid.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let agent_uid = if uid == 0 {
            std::os::unix::fs::chown(&d, Some(54321), None).unwrap();
            0
        } else {
            uid + 1
        };
        let e = check_server_path(&d.join("a.sock"), agent_uid).unwrap_err();
        assert!(e.to_string().contains("is owned by uid"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_symlinked_directory_is_resolved_before_the_check() {
        let uid = nix::unistd::geteuid().as_raw();
        let d = tmp("link");
        let real = d.join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&real, d.join("link")).unwrap();
        let p = check_server_path(&d.join("link/a.sock"), uid).unwrap();
        assert_eq!(p, std::fs::canonicalize(&real).unwrap().join("a.sock"));
        let _ = std::fs::remove_dir_all(d);
    }
}

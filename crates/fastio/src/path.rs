//! Where sockets live: the default private folder (that another user cannot squat), the names
//! of sockets (which carry their server's process id), the length limit of a socket path, and
//! removing the sockets of servers that died without removing them.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::error::{FastIoError, Result};
use crate::sys;

/// The longest socket path the system accepts, in bytes (`sun_path` less its final NUL: 107 on
/// Linux).
pub const MAX_SOCKET_PATH: usize =
    std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>() - 1;

/// Refuses a socket path the system cannot bind or connect to, naming it and the limit.
pub(crate) fn check_len(path: &Path) -> Result<()> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(FastIoError::SocketPathTooLong {
            path: path.display().to_string(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

/// Whether `dir` is a real folder (not a symlink) of this user that nobody else can use.
fn is_private_dir(dir: &Path) -> bool {
    fs::symlink_metadata(dir)
        .is_ok_and(|md| md.is_dir() && md.uid() == sys::effective_uid() && md.mode() & 0o077 == 0)
}

/// Creates `dir` with mode 0700 (not its parents) unless it already exists; true when it is
/// then a private folder of this user.
fn make_private_dir(dir: &Path) -> bool {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => is_private_dir(dir),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => is_private_dir(dir),
        Err(_) => false,
    }
}

/// The folder for this user's Fast I/O sockets when none is configured:
/// `$XDG_RUNTIME_DIR/fragmenta-<uid>` (else the temporary folder's `fragmenta-<uid>`),
/// created with mode 0700.
///
/// In the temporary folder another user may have created that name first (to keep this
/// user's hosts from starting): then a private folder of this user named
/// `fragmenta-<uid>-<random>` is used instead (one made earlier is reused), and a warning
/// names the squatted folder. Should that fail too, the squatted path is returned and serving
/// on it fails with [`FastIoError::InsecurePath`], which says what to set.
pub fn default_socket_dir() -> PathBuf {
    let uid = sys::effective_uid();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let preferred = base.join(format!("fragmenta-{uid}"));
    if make_private_dir(&preferred) {
        return preferred;
    }
    let prefix = format!("fragmenta-{uid}-");
    let earlier = fs::read_dir(&base).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .find(|p| is_private_dir(p))
    });
    let fallback = earlier.or_else(|| {
        (0..8).find_map(|_| {
            let dir = base.join(format!("{prefix}{:016x}", random_u64()));
            // A fresh name: `create` fails rather than adopt what someone else made.
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .ok()
                .filter(|()| is_private_dir(&dir))
                .map(|()| dir)
        })
    });
    match fallback {
        Some(dir) => {
            tracing::warn!(squatted = %preferred.display(), using = %dir.display(),
                "the default Fast I/O socket folder belongs to another user or is not private; \
                 using a private folder instead (set XDG_RUNTIME_DIR or fastio_socket to choose)");
            dir
        }
        None => preferred,
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The file name of a socket served by this process: `<label>.<pid>.sock`, with every
/// character of `label` other than ASCII letters, digits and `-` replaced by `_`. The process
/// id in the name is how the socket of a server that died is recognised (see
/// [`default_socket_path`]).
pub fn socket_file_name(label: &str) -> String {
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{label}.{}.sock", std::process::id())
}

/// The default socket of a context this process serves: [`socket_file_name`]`(label)` in
/// [`default_socket_dir`].
///
/// A server starting in a folder removes the sockets there that a dead server of this user
/// left: named `<label>.<pid>.sock`, owned by this user, with no process `<pid>` alive, and
/// refusing connections.
pub fn default_socket_path(label: &str) -> PathBuf {
    default_socket_dir().join(socket_file_name(label))
}

/// The process id in a name made by [`socket_file_name`].
fn pid_of(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".sock")?;
    let (_, pid) = stem.rsplit_once('.')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes from `dir` the sockets of servers of this user that died without removing them
/// (see [`default_socket_path`]); returns how many it removed.
pub(crate) fn remove_stale_sockets(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let uid = sys::effective_uid();
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        if pid == me || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        let ours = fs::symlink_metadata(&path)
            .is_ok_and(|md| md.file_type().is_socket() && md.uid() == uid);
        if !ours {
            continue;
        }
        // A socket someone still serves on is not stale, whatever its name says.
        let refused = matches!(UnixStream::connect(&path),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused);
        if refused && fs::remove_file(&path).is_ok() {
            tracing::debug!(path = %path.display(), pid, "removed the socket of a dead server");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_carry_the_process_id() {
        let name = socket_file_name("my cluster.v2-host1");
        assert_eq!(
            name,
            format!("my_cluster_v2-host1.{}.sock", std::process::id())
        );
        assert_eq!(pid_of(&name), Some(std::process::id()));
        for other in ["a.sock", "a.12x.sock", "a.12", "a..sock", "12.sock"] {
            assert_eq!(pid_of(other), None, "{other}");
        }
    }
}

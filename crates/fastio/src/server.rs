//! The context server: serves the node's context to other processes on a Unix socket.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::core::CoreLock;
use crate::error::{FastIoError, IoOp, Result};
use crate::local::{LocalContext, SharedCore};
use crate::proto::{self, FrameError, FromServer, ToServer};
use crate::sys;
use crate::types::{ContextStats, MapMode, OwnerId};

/// Bounds on what clients of a [`ContextServer`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Client connections served at once (default 256); one more is closed at once (its
    /// requests then fail with [`FastIoError::Disconnected`]).
    pub max_clients: usize,
    /// Once a request's first byte has arrived, the rest must arrive within this (default 5 s;
    /// at least 1 ms) or the connection is closed, and a reply must be taken within it; an
    /// idle connection between requests is kept.
    pub frame_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_clients: 256,
            frame_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    conns: Mutex<HashMap<OwnerId, UnixStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Serves a Fast I/O context on a Unix socket; one thread per client connection, at most
/// [`ServerLimits::max_clients`] of them, each closed when a request stalls mid-frame for
/// [`ServerLimits::frame_timeout`].
///
/// The socket is created with mode 0600 inside a directory only the owner can access (created
/// with mode 0700 if missing). Every reference and map lock a client takes is tracked against
/// its connection and released when the connection closes, including when the client is
/// killed. A malformed request closes that client's connection and nothing else. Dropping the
/// server closes every connection (releasing their references) and removes the socket; the
/// context itself lives on in any [`LocalContext`] sharing it.
#[derive(Debug)]
pub struct ContextServer {
    core: SharedCore,
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ContextServer {
    /// Creates a context of `capacity` bytes and serves it on `socket_path`.
    ///
    /// Errors: [`FastIoError::InsecurePath`] if the directory is not owned by this user, is
    /// accessible by others or is a symlink, or if `socket_path` exists and is not a socket
    /// owned by this user (a stale socket of ours is replaced);
    /// [`FastIoError::AddressInUse`] if a server is listening there;
    /// [`FastIoError::SocketPathTooLong`] beyond [`MAX_SOCKET_PATH`](crate::MAX_SOCKET_PATH)
    /// bytes. Sockets that dead servers of this user left in the folder (named by
    /// [`socket_file_name`](crate::socket_file_name)) are removed first.
    pub fn start(socket_path: impl AsRef<Path>, capacity: u64) -> Result<ContextServer> {
        LocalContext::new(capacity).serve(socket_path)
    }

    pub(crate) fn serve_core(
        core: SharedCore,
        path: &Path,
        limits: ServerLimits,
    ) -> Result<ContextServer> {
        crate::path::check_len(path)?;
        // A zero socket timeout is refused by the system (and would mean none).
        let limits = ServerLimits {
            frame_timeout: limits.frame_timeout.max(Duration::from_millis(1)),
            ..limits
        };
        prepare_path(path)?;
        let listener = UnixListener::bind(path).map_err(|e| FastIoError::io(IoOp::Bind, &e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| FastIoError::io(IoOp::SocketPath, &e))?;
        let shared = Arc::new(Shared::default());
        let accept = {
            let (core, shared) = (Arc::clone(&core), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("fastio-accept".into())
                .spawn(move || accept_loop(listener, core, shared, limits))
                .map_err(|e| FastIoError::io(IoOp::Spawn, &e))?
        };
        tracing::info!(path = %path.display(), "fast i/o server listening");
        Ok(ContextServer {
            core,
            path: path.to_owned(),
            shared,
            accept: Some(accept),
        })
    }

    /// An in-process view of the served context (same publications, locks and capacity).
    pub fn context(&self) -> LocalContext {
        LocalContext::on_core(Arc::clone(&self.core))
    }

    /// The socket path clients connect to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Accounting of the served context.
    pub fn stats(&self) -> ContextStats {
        self.core.lock().stats()
    }

    /// Number of client connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }
}

impl Drop for ContextServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees `stop` and exits.
        let _ = UnixStream::connect(&self.path);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for stream in self.shared.conns.lock().values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn insecure(path: &Path, reason: &'static str) -> FastIoError {
    FastIoError::InsecurePath {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Makes sure the socket directory is ours and private, and that nothing but a stale socket of
/// ours sits at `path`.
fn prepare_path(path: &Path) -> Result<()> {
    let io = |e: &std::io::Error| FastIoError::io(IoOp::SocketPath, e);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(&e))?,
        Err(e) => return Err(io(&e)),
        Ok(_) => {}
    }
    let md = fs::symlink_metadata(dir).map_err(|e| io(&e))?;
    let uid = sys::effective_uid();
    if md.file_type().is_symlink() {
        return Err(insecure(dir, "socket directory is a symlink"));
    }
    if !md.is_dir() {
        return Err(insecure(dir, "socket directory is not a directory"));
    }
    if md.uid() != uid {
        return Err(insecure(dir, "socket directory is owned by another user"));
    }
    if md.mode() & 0o077 != 0 {
        return Err(insecure(
            dir,
            "socket directory is accessible by other users",
        ));
    }
    let stale = crate::path::remove_stale_sockets(dir);
    if stale > 0 {
        tracing::info!(dir = %dir.display(), stale, "removed sockets that dead servers left");
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&e)),
        Ok(md) => {
            if !md.file_type().is_socket() {
                return Err(insecure(path, "existing path is not a socket"));
            }
            if md.uid() != uid {
                return Err(insecure(path, "existing socket is owned by another user"));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(FastIoError::AddressInUse(path.display().to_string()));
            }
            fs::remove_file(path).map_err(|e| io(&e))
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    core: SharedCore,
    shared: Arc<Shared>,
    limits: ServerLimits,
) {
    let uid = sys::effective_uid();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        match sys::peer_uid(&stream) {
            Ok(peer) if peer == uid => {}
            other => {
                tracing::warn!(?other, "refusing connection from another user");
                continue;
            }
        }
        let clients = shared.conns.lock().len();
        if clients >= limits.max_clients {
            tracing::warn!(
                clients,
                "too many Fast I/O clients; closing a new connection"
            );
            continue;
        }
        let Ok(shutdown_handle) = stream.try_clone() else {
            continue;
        };
        let owner = core.lock().register_owner();
        shared.conns.lock().insert(owner, shutdown_handle);
        let (core2, shared2) = (Arc::clone(&core), Arc::clone(&shared));
        let spawned = std::thread::Builder::new()
            .name(format!("fastio-conn-{}", owner.0))
            .spawn(move || serve_connection(stream, owner, core2, shared2, limits));
        let mut threads = shared.threads.lock();
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot spawn connection thread");
                shared.conns.lock().remove(&owner);
                core.lock().disconnect(owner);
            }
        }
    }
}

fn serve_connection(
    mut stream: UnixStream,
    owner: OwnerId,
    core: SharedCore,
    shared: Arc<Shared>,
    limits: ServerLimits,
) {
    let span = tracing::debug_span!("fastio_conn", conn = owner.0);
    let _enter = span.enter();
    tracing::debug!("client connected");
    // A request stalled mid-frame, or a client that stops reading its replies, must not hold
    // this thread: reads and writes block at most the frame timeout (see `read_request`).
    let timeouts = stream
        .set_read_timeout(Some(limits.frame_timeout))
        .and_then(|()| stream.set_write_timeout(Some(limits.frame_timeout)));
    if let Err(e) = timeouts {
        tracing::warn!(error = %e, "cannot set the socket timeouts; closing connection");
        core.lock().disconnect(owner);
        shared.conns.lock().remove(&owner);
        return;
    }
    loop {
        let request = match proto::read_request(&mut stream, limits.frame_timeout) {
            Ok(r) => r,
            Err(FrameError::Closed) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!(error = %e, "connection error");
                break;
            }
            Err(FrameError::Malformed(why)) => {
                tracing::warn!(why, "malformed request; closing connection");
                break;
            }
        };
        let (reply, fd) = match handle(&core, owner, request) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(why, "invalid request; closing connection");
                break;
            }
        };
        if proto::send(&stream, &reply, fd.as_ref().map(|f| f.as_fd())).is_err() {
            break;
        }
    }
    core.lock().disconnect(owner);
    shared.conns.lock().remove(&owner);
    tracing::debug!("client disconnected; its references and locks are released");
}

type Reply = (FromServer, Option<Arc<OwnedFd>>);

/// Applies one request to the core. `Err` means the request was malformed (names a handle or
/// lock the client does not hold, or carries invalid data) and the connection must close.
fn handle(
    core: &CoreLock,
    owner: OwnerId,
    request: ToServer,
) -> std::result::Result<Reply, &'static str> {
    let mut core = core.lock();
    let done = |r: Result<()>| r.map(|()| (FromServer::Done, None));
    let result: Result<Reply> = match request {
        ToServer::Create { size } => core.create(owner, size).map(granted),
        ToServer::Get { name } => core.get(owner, &name).map(granted),
        ToServer::Publish { handle, name, meta } => done(core.publish(owner, handle, &name, &meta)),
        ToServer::Map { handle, mode } => done(core.map(owner, handle, mode)),
        ToServer::Unmap { handle, mode } => done(core.unmap(owner, handle, mode)),
        ToServer::Release { handle } => done(core.release(owner, handle)),
        ToServer::Free { handle } => done(core.free(owner, handle)),
        ToServer::Stats => Ok((FromServer::Stats(core.stats()), None)),
        ToServer::CreateMapped { size } => core.create_reusing(owner, size).and_then(|g| {
            core.map(owner, g.handle, MapMode::Write)?;
            Ok(granted(g))
        }),
        ToServer::PublishRelease { handle, name, meta } => {
            done(core.publish_release(owner, handle, &name, &meta))
        }
    };
    match result {
        Ok(reply) => Ok(reply),
        Err(FastIoError::InvalidHandle) => {
            Err("request names a handle or lock the client does not hold")
        }
        Err(FastIoError::Protocol(_)) => Err("request carries invalid data"),
        Err(e) => Ok((FromServer::Failed(e), None)),
    }
}

fn granted(g: crate::core::Granted) -> Reply {
    (
        FromServer::Granted {
            handle: g.handle,
            mem: g.mem,
            size: g.size,
            meta: g.meta,
        },
        Some(g.fd),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{HandleId, MapMode};
    use crate::{FastIo, RemoteContext};
    use std::io::{Read, Write};
    use std::time::Duration;

    fn server() -> (tempfile::TempDir, ContextServer) {
        let dir = tempfile::tempdir().unwrap();
        let server = ContextServer::start(dir.path().join("run/s.sock"), 1 << 20).unwrap();
        (dir, server)
    }

    /// The server closes the connection: reading hits end-of-file.
    fn assert_closed(mut raw: UnixStream) {
        let mut buf = [0u8; 64];
        assert_eq!(
            raw.read(&mut buf).unwrap(),
            0,
            "server must close the connection"
        );
    }

    #[test]
    fn malformed_requests_close_only_that_connection() {
        let (_dir, server) = server();
        let good = RemoteContext::connect(server.socket_path()).unwrap();
        let a = good.create(100).unwrap();
        good.publish(&a, "a").unwrap();

        // Garbage body.
        let mut raw = UnixStream::connect(server.socket_path()).unwrap();
        raw.write_all(&[4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef])
            .unwrap();
        assert_closed(raw);
        // Oversized frame.
        let mut raw = UnixStream::connect(server.socket_path()).unwrap();
        raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert_closed(raw);
        // A handle the client does not hold (it belongs to `good`'s connection or nobody).
        for request in [
            ToServer::Map {
                handle: HandleId(1),
                mode: MapMode::Write,
            },
            ToServer::Release {
                handle: HandleId(999),
            },
            ToServer::Unmap {
                handle: HandleId(2),
                mode: MapMode::Read,
            },
        ] {
            let raw = UnixStream::connect(server.socket_path()).unwrap();
            proto::send(&raw, &request, None).unwrap();
            assert_closed(raw);
        }
        // Unmapping a lock one's own handle does not hold.
        let raw = UnixStream::connect(server.socket_path()).unwrap();
        proto::send(&raw, &ToServer::Create { size: 10 }, None).unwrap();
        let (reply, fds) = proto::read_reply(&raw).unwrap();
        let FromServer::Granted { handle, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(fds.len(), 1);
        proto::send(
            &raw,
            &ToServer::Unmap {
                handle,
                mode: MapMode::Write,
            },
            None,
        )
        .unwrap();
        assert_closed(raw);
        // Metadata that does not fit the memory.
        let raw = UnixStream::connect(server.socket_path()).unwrap();
        proto::send(&raw, &ToServer::Create { size: 10 }, None).unwrap();
        let (FromServer::Granted { handle, .. }, _) = proto::read_reply(&raw).unwrap() else {
            panic!()
        };
        let meta = crate::Metadata {
            element_type: None,
            dims: vec![10],
        };
        proto::send(
            &raw,
            &ToServer::Publish {
                handle,
                name: "bad".into(),
                meta,
            },
            None,
        )
        .unwrap();
        assert_closed(raw);

        // The well-behaved client is unaffected, and the bad clients' memory was reclaimed.
        let b = good.get("a").unwrap();
        b.map_write().unwrap()[0] = 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while server.stats().used != 100 {
            assert!(std::time::Instant::now() < deadline, "{:?}", server.stats());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn clients_beyond_the_bound_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ServerLimits {
            max_clients: 2,
            ..ServerLimits::default()
        };
        let server = LocalContext::new(1 << 20)
            .serve_with(dir.path().join("run/s.sock"), limits)
            .unwrap();
        let a = RemoteContext::connect(server.socket_path()).unwrap();
        let b = RemoteContext::connect(server.socket_path()).unwrap();
        a.create(10).unwrap();
        b.create(10).unwrap();
        let c = RemoteContext::connect(server.socket_path()).unwrap();
        assert_eq!(c.create(10).unwrap_err(), FastIoError::Disconnected);
        assert_eq!(server.connections(), 2);
        // A slot freed is a slot for the next client.
        drop(a);
        wait_for("a's connection to close", || server.connections() == 1);
        let d = RemoteContext::connect(server.socket_path()).unwrap();
        d.create(10).unwrap();
        b.create(10).unwrap();
    }

    #[test]
    fn a_request_stalled_mid_frame_closes_its_connection_and_idle_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ServerLimits {
            frame_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let server = LocalContext::new(1 << 20)
            .serve_with(dir.path().join("run/s.sock"), limits)
            .unwrap();
        let idle = RemoteContext::connect(server.socket_path()).unwrap();
        // Half a length prefix, then silence.
        let mut raw = UnixStream::connect(server.socket_path()).unwrap();
        raw.write_all(&[8, 0]).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(raw.read(&mut buf).unwrap(), 0, "the server closes it");
        // A whole header and part of a body, then silence.
        let mut raw = UnixStream::connect(server.socket_path()).unwrap();
        raw.write_all(&[8, 0, 0, 0, 1]).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(raw.read(&mut buf).unwrap(), 0, "the server closes it");
        wait_for("the stalled connections to go", || {
            server.connections() == 1
        });
        // A client idle for longer than the frame timeout is still served.
        std::thread::sleep(Duration::from_millis(300));
        idle.create(10).unwrap();
    }

    #[test]
    fn a_socket_path_too_long_is_named_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("x".repeat(crate::MAX_SOCKET_PATH));
        let err = ContextServer::start(&long, 1).unwrap_err();
        assert_eq!(
            err,
            FastIoError::SocketPathTooLong {
                path: long.display().to_string(),
                len: long.as_os_str().len(),
                max: 107,
            }
        );
        assert!(err.to_string().contains(&long.display().to_string()));
        assert!(matches!(
            RemoteContext::connect(&long),
            Err(FastIoError::SocketPathTooLong { max: 107, .. })
        ));
        // The longest allowed path works.
        let base = dir.path().join("run");
        let room = crate::MAX_SOCKET_PATH - base.as_os_str().len() - 1;
        let longest = base.join("y".repeat(room));
        assert_eq!(longest.as_os_str().len(), crate::MAX_SOCKET_PATH);
        let server = ContextServer::start(&longest, 1).unwrap();
        RemoteContext::connect(server.socket_path()).unwrap();
    }

    #[test]
    fn sockets_of_dead_servers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        fs::create_dir(&run).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
        // A process id that is dead: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = run.join(format!("old-host1.{dead}.sock"));
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists(), "a dropped listener leaves its socket");
        // Same dead id, but someone serves on it: kept.
        let served = run.join(format!("other.{dead}.sock"));
        let _listener = UnixListener::bind(&served).unwrap();
        // Not a socket: kept.
        let file = run.join(format!("file.{dead}.sock"));
        fs::write(&file, b"keep").unwrap();
        // A name without a process id: kept.
        let plain = run.join("plain.sock");
        drop(UnixListener::bind(&plain).unwrap());
        // This process's own: kept.
        let mine = run.join(crate::socket_file_name("mine"));
        drop(UnixListener::bind(&mine).unwrap());

        let server = ContextServer::start(run.join("new.sock"), 1).unwrap();
        assert!(!stale.exists(), "the dead server's socket is removed");
        for kept in [&served, &file, &plain, &mine] {
            assert!(kept.exists(), "{} kept", kept.display());
        }
        drop(server);
    }

    #[test]
    fn the_default_folder_falls_back_when_another_user_took_it() {
        let base = tempfile::tempdir().unwrap();
        // Only this test of the binary reads XDG_RUNTIME_DIR.
        std::env::set_var("XDG_RUNTIME_DIR", base.path());
        let uid = sys::effective_uid();
        let preferred = base.path().join(format!("fragmenta-{uid}"));
        assert_eq!(crate::default_socket_dir(), preferred, "made when missing");
        assert_eq!(
            fs::symlink_metadata(&preferred).unwrap().mode() & 0o777,
            0o700
        );
        // Squatted: open to everyone (as another user's folder would be to us, or owned by
        // another user where this test may change owners).
        fs::set_permissions(&preferred, fs::Permissions::from_mode(0o777)).unwrap();
        if uid == 0 {
            std::os::unix::fs::chown(&preferred, Some(4242), Some(4242)).unwrap();
        }
        let fallback = crate::default_socket_dir();
        assert_ne!(fallback, preferred);
        assert!(fallback
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("fragmenta-{uid}-")));
        assert_eq!(
            fs::symlink_metadata(&fallback).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(
            crate::default_socket_dir(),
            fallback,
            "reused, not one per call"
        );
        let server = LocalContext::new(1 << 20)
            .serve(crate::default_socket_path("test-host0"))
            .unwrap();
        assert!(server.socket_path().starts_with(&fallback));
        RemoteContext::connect(server.socket_path()).unwrap();
        // Serving in the squatted folder itself is refused, saying what to set.
        let err = ContextServer::start(preferred.join("s.sock"), 1).unwrap_err();
        assert!(err.to_string().contains("fastio_socket"), "{err}");
        std::env::remove_var("XDG_RUNTIME_DIR");
    }

    #[test]
    fn socket_is_private_and_paths_are_checked() {
        let (dir, server) = server();
        let sock = server.socket_path().to_owned();
        let md = fs::symlink_metadata(&sock).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(
            fs::symlink_metadata(sock.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        // A live server is not replaced.
        assert_eq!(
            ContextServer::start(&sock, 1).unwrap_err(),
            FastIoError::AddressInUse(sock.display().to_string())
        );
        // A directory others can read is refused.
        let open_dir = dir.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            ContextServer::start(open_dir.join("s.sock"), 1),
            Err(FastIoError::InsecurePath { .. })
        ));
        // A regular file at the socket path is not replaced.
        let file = sock.parent().unwrap().join("file");
        fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            ContextServer::start(&file, 1),
            Err(FastIoError::InsecurePath { .. })
        ));
        assert_eq!(fs::read(&file).unwrap(), b"keep me");
        // A symlinked directory is not followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(sock.parent().unwrap(), &link).unwrap();
        assert!(matches!(
            ContextServer::start(link.join("x.sock"), 1),
            Err(FastIoError::InsecurePath { .. })
        ));
        // A stale socket of ours is replaced after the server is gone.
        drop(server);
        assert!(!sock.exists(), "socket removed on drop");
        let _listener = UnixListener::bind(&sock).unwrap();
        drop(_listener);
        let again = ContextServer::start(&sock, 1).unwrap();
        RemoteContext::connect(again.socket_path()).unwrap();
    }
}

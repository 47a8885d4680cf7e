//! The cross-process client.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::alloc::{Allocation, Port};
use crate::error::{FastIoError, IoOp, Result};
use crate::proto::{self, FromServer, ToServer};
use crate::types::{ContextStats, HandleId, MapMode, Metadata};
use crate::FastIo;

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    broken: bool,
}

#[derive(Debug)]
struct RemotePort {
    conn: Mutex<Conn>,
    /// Mappings of memory handed over through [`RemoteContext::hand_over`] or read through
    /// [`RemoteContext::get_to_read`], newest last, kept for when the same memory comes back
    /// (the server hands it out again from its pool, or publishes it again): its pages are
    /// then mapped here already. At most [`KEPT_BYTES`].
    kept: Mutex<std::collections::VecDeque<Arc<crate::sys::Mapping>>>,
}

/// Bytes of handed-over memory whose mappings a client keeps (see `RemotePort::kept`). Pages
/// of memory the server has closed stay allocated while mapped here, so this is bounded.
pub(crate) const KEPT_BYTES: usize = 256 << 20;

impl RemotePort {
    /// One request, one reply. A transport or protocol error leaves the stream out of step,
    /// so the connection is shut down and every later call is `Disconnected`.
    fn call(&self, req: &ToServer) -> Result<(FromServer, Vec<OwnedFd>)> {
        let mut conn = self.conn.lock();
        if conn.broken {
            return Err(FastIoError::Disconnected);
        }
        let result =
            proto::send(&conn.stream, req, None).and_then(|()| proto::read_reply(&conn.stream));
        if result.is_err() {
            conn.broken = true;
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        result
    }

    fn call_done(&self, req: &ToServer) -> Result<()> {
        match self.call(req)? {
            (FromServer::Done, fds) if fds.is_empty() => Ok(()),
            (FromServer::Failed(e), fds) if fds.is_empty() => Err(e),
            _ => Err(self.out_of_step()),
        }
    }

    fn out_of_step(&self) -> FastIoError {
        let mut conn = self.conn.lock();
        conn.broken = true;
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        FastIoError::Protocol("unexpected reply".into())
    }
}

impl Port for RemotePort {
    fn map(&self, handle: HandleId, mode: MapMode) -> Result<()> {
        self.call_done(&ToServer::Map { handle, mode })
    }
    fn unmap(&self, handle: HandleId, mode: MapMode) {
        // If the connection is gone the server has already dropped every lock of ours.
        if let Err(e) = self.call_done(&ToServer::Unmap { handle, mode }) {
            tracing::debug!(error = %e, "unmap not delivered");
        }
    }
    fn publish(&self, handle: HandleId, name: &str, meta: &Metadata) -> Result<()> {
        self.call_done(&ToServer::Publish {
            handle,
            name: name.to_owned(),
            meta: meta.clone(),
        })
    }
    fn release(&self, handle: HandleId, _mapping: Option<&Arc<crate::sys::Mapping>>) {
        if let Err(e) = self.call_done(&ToServer::Release { handle }) {
            tracing::debug!(error = %e, "release not delivered");
        }
    }
    fn free(&self, handle: HandleId) -> Result<()> {
        self.call_done(&ToServer::Free { handle })
    }
}

/// A client of a [`crate::ContextServer`] in another (or the same) process.
///
/// Every handle, reference and map lock it takes is tracked by the server against this
/// connection: when the connection closes (the value and all its allocations are dropped, or
/// the process dies) the server releases them all. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct RemoteContext {
    port: Arc<RemotePort>,
    dyn_port: Arc<dyn Port>,
}

impl RemoteContext {
    /// Connects to the server listening on `socket_path`. The server must run as the same user.
    pub fn connect(socket_path: impl AsRef<Path>) -> Result<RemoteContext> {
        crate::path::check_len(socket_path.as_ref())?;
        let stream = UnixStream::connect(socket_path.as_ref())
            .map_err(|e| FastIoError::io(IoOp::Connect, &e))?;
        let uid = crate::sys::peer_uid(&stream).map_err(|e| FastIoError::io(IoOp::Connect, &e))?;
        if uid != crate::sys::effective_uid() {
            return Err(FastIoError::InsecurePath {
                path: socket_path.as_ref().display().to_string(),
                reason: "server runs as another user".into(),
            });
        }
        let port = Arc::new(RemotePort {
            conn: Mutex::new(Conn {
                stream,
                broken: false,
            }),
            kept: Mutex::new(std::collections::VecDeque::new()),
        });
        let dyn_port: Arc<dyn Port> = port.clone();
        Ok(RemoteContext { port, dyn_port })
    }

    /// Hands `data` over to the context in one copy: memory of `size` bytes (reused from the
    /// server's pool when it has memory of that size, so its pages are allocated and, here,
    /// usually still mapped), `data` copied to its start under a write lock granted with it,
    /// then published as `name` and released, so the publication is its only reference. Two
    /// round trips. The receiver takes it with [`LocalContext::take`](crate::LocalContext::take).
    /// Bytes past `data.len()` are unspecified.
    ///
    /// Errors: [`FastIoError::DataTooLarge`] when `data` is longer than `size`;
    /// [`FastIoError::CapacityExceeded`], [`FastIoError::NameTaken`],
    /// [`FastIoError::InvalidName`], [`FastIoError::Disconnected`]. On error nothing is
    /// published and the memory returns to the context.
    pub fn hand_over(&self, name: &str, data: &[u8], size: u64) -> Result<()> {
        crate::types::check_name(name)?;
        if data.len() as u64 > size {
            return Err(FastIoError::DataTooLarge {
                len: data.len() as u64,
                size,
            });
        }
        let mut h = self.begin_hand_over(size)?;
        h.bytes_mut()[..data.len()].copy_from_slice(data);
        h.finish(name)
    }

    /// The first half of a [`hand_over`](Self::hand_over) that copies nothing: memory of
    /// `size` bytes of the context (reused from its pool when it has memory of that size, its
    /// pages mapped here), write-locked for this client, for the caller to fill in place with
    /// [`HandOver::bytes_mut`]; [`HandOver::finish`] then publishes it under a name and lets
    /// go of it, and dropping it unfinished returns the memory to the context. One round trip
    /// each.
    ///
    /// Errors: [`FastIoError::CapacityExceeded`], [`FastIoError::Disconnected`].
    pub fn begin_hand_over(&self, size: u64) -> Result<HandOver> {
        let alloc = self.grant(&ToServer::CreateMapped { size })?;
        // Memory reused from the server's pool is usually mapped, and populated, here already.
        if self.keep(alloc.mapping()) {
            alloc.mapping().populate();
        }
        Ok(HandOver {
            port: Arc::clone(&self.port),
            alloc: Some(alloc),
        })
    }

    /// [`get`](FastIo::get) for a reader about to read all of the memory (a copy out of it,
    /// such as a fetch by another host of this machine): the first time, the pages are mapped
    /// with one call instead of a fault per 4 KiB page, and the mapping is kept (with those of
    /// [`hand_over`](Self::hand_over), at most 256 MiB, newest kept), so getting the same
    /// memory again, as a loop over a publication the owner refills does, maps nothing. The
    /// pages of memory the owner freed stay allocated while their mapping is kept.
    ///
    /// Errors: as [`get`](FastIo::get).
    pub fn get_to_read(&self, name: &str) -> Result<Allocation> {
        let alloc = self.get(name)?;
        if self.keep(alloc.mapping()) {
            alloc.mapping().populate_read();
        }
        Ok(alloc)
    }

    /// Keeps `mapping` (newest last, at most [`KEPT_BYTES`]); whether it was not kept yet.
    fn keep(&self, mapping: &Arc<crate::sys::Mapping>) -> bool {
        let mut kept = self.port.kept.lock();
        if let Some(at) = kept.iter().position(|m| Arc::ptr_eq(m, mapping)) {
            // Used again: newest now.
            if let Some(m) = kept.remove(at) {
                kept.push_back(m);
            }
            return false;
        }
        kept.push_back(Arc::clone(mapping));
        let mut total: usize = kept.iter().map(|m| m.len()).sum();
        while total > KEPT_BYTES {
            match kept.pop_front() {
                Some(m) => total -= m.len(),
                None => break,
            }
        }
        true
    }

    fn grant(&self, req: &ToServer) -> Result<Allocation> {
        match self.port.call(req)? {
            (
                FromServer::Granted {
                    handle,
                    mem,
                    size,
                    meta,
                },
                mut fds,
            ) if fds.len() == 1 => {
                if meta.validate(size).is_err() {
                    self.port.release(handle, None);
                    return Err(FastIoError::Protocol(
                        "granted metadata does not fit the memory".into(),
                    ));
                }
                let fd = fds.remove(0);
                Allocation::from_parts(Arc::clone(&self.dyn_port), handle, mem, size, meta, &fd)
            }
            (FromServer::Failed(e), fds) if fds.is_empty() => Err(e),
            _ => Err(self.port.out_of_step()),
        }
    }
}

/// Memory of another process's context being filled in place before it is handed over (see
/// [`RemoteContext::begin_hand_over`]). Holds the memory's only reference and its write lock.
#[derive(Debug)]
pub struct HandOver {
    port: Arc<RemotePort>,
    /// `None` once finished.
    alloc: Option<Allocation>,
}

impl HandOver {
    /// The memory's bytes, to fill. Memory reused from the context's pool still holds what
    /// was written to it before: write every byte the receiver will read.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &self.alloc {
            // Lock protocol: the context granted this handle the write lock with the handle
            // itself (`CreateMapped`), and `&mut self` makes this the only slice of its bytes
            // in this process.
            Some(alloc) => alloc.mapping().bytes_mut(),
            None => &mut [],
        }
    }

    /// The memory's bytes, as filled so far.
    pub fn bytes(&self) -> &[u8] {
        match &self.alloc {
            // Lock protocol: this handle holds the write lock, so no other process touches the
            // bytes, and the borrow of `self` excludes `bytes_mut` meanwhile.
            Some(alloc) => alloc.mapping().bytes(),
            None => &[],
        }
    }

    /// The memory's size in bytes.
    pub fn size(&self) -> u64 {
        self.alloc.as_ref().map_or(0, Allocation::size)
    }

    /// Publishes the memory as `name` and lets go of it: the publication is then its only
    /// reference, for the receiver to take. On error nothing is published and the memory
    /// returns to the context.
    ///
    /// Errors: [`FastIoError::NameTaken`], [`FastIoError::InvalidName`],
    /// [`FastIoError::Disconnected`].
    pub fn finish(mut self, name: &str) -> Result<()> {
        crate::types::check_name(name)?;
        let Some(alloc) = self.alloc.take() else {
            return Ok(());
        };
        let handle = alloc.handle_id();
        let meta = alloc.metadata().clone();
        // Released by the request whatever its outcome.
        alloc.forget();
        self.port.call_done(&ToServer::PublishRelease {
            handle,
            name: name.to_owned(),
            meta,
        })
    }
}

impl FastIo for RemoteContext {
    fn create(&self, size: u64) -> Result<Allocation> {
        let alloc = self.grant(&ToServer::Create { size })?;
        alloc.prefault();
        Ok(alloc)
    }

    fn get(&self, name: &str) -> Result<Allocation> {
        crate::types::check_name(name)?;
        self.grant(&ToServer::Get {
            name: name.to_owned(),
        })
    }

    fn publish(&self, alloc: &Allocation, name: &str) -> Result<()> {
        if !alloc.same_port(&self.dyn_port) {
            return Err(FastIoError::ForeignAllocation);
        }
        crate::types::check_name(name)?;
        alloc.publish_as(name)
    }

    fn stats(&self) -> Result<ContextStats> {
        match self.port.call(&ToServer::Stats)? {
            (FromServer::Stats(s), fds) if fds.is_empty() => Ok(s),
            (FromServer::Failed(e), fds) if fds.is_empty() => Err(e),
            _ => Err(self.port.out_of_step()),
        }
    }
}

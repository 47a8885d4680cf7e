//! The in-process backend: endpoints on a [`MemNetwork`] hub, streams over tokio duplex pipes.
//!
//! Each stream direction is one `tokio::io::duplex` pipe used one way. A connection's two sides
//! share a [`Shared`] state: once it is closed, every stream of the connection fails its pending
//! and later reads and writes (blocked ones are woken), like QUIC streams of a closed connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use fragmenta_job::HostId;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, watch};

use super::{
    AcceptError, BindError, ConnectError, Connection, ConnectionError, FinishError, RecvStream,
    SendStream,
};

/// Default buffer of one in-process stream direction: 256 KiB.
const DEFAULT_STREAM_BUFFER: usize = 256 << 10;
/// The first port handed out for port 0.
const FIRST_PORT: u16 = 20_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked (every critical section is a
    // single insert/remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An in-process network: endpoints bound on it reach each other by address.
///
/// Cheap to clone; clones are the same network.
#[derive(Debug, Clone)]
pub struct MemNetwork {
    inner: Arc<Mutex<NetInner>>,
    stream_buffer: usize,
}

#[derive(Debug)]
struct NetInner {
    listeners: HashMap<SocketAddr, Listener>,
    next_port: u16,
}

#[derive(Debug)]
struct Listener {
    host: HostId,
    id: u64,
    incoming: mpsc::UnboundedSender<MemConnection>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(NetInner {
                listeners: HashMap::new(),
                next_port: FIRST_PORT,
            })),
            stream_buffer: DEFAULT_STREAM_BUFFER,
        }
    }

    /// The same network, but streams opened by endpoints bound through the returned handle
    /// buffer `bytes` per direction (default 256 KiB).
    pub fn with_stream_buffer(&self, bytes: usize) -> Self {
        Self {
            inner: self.inner.clone(),
            stream_buffer: bytes.max(1),
        }
    }

    pub(crate) fn bind(&self, host: HostId, addr: SocketAddr) -> Result<MemEndpoint, BindError> {
        let mut net = lock(&self.inner);
        let addr = if addr.port() == 0 {
            let mut found = None;
            for _ in 0..=u16::MAX {
                let port = net.next_port;
                net.next_port = net.next_port.checked_add(1).unwrap_or(FIRST_PORT);
                let candidate = SocketAddr::new(addr.ip(), port);
                if port != 0 && !net.listeners.contains_key(&candidate) {
                    found = Some(candidate);
                    break;
                }
            }
            found.ok_or(BindError::AddrInUse { addr })?
        } else if net.listeners.contains_key(&addr) {
            return Err(BindError::AddrInUse { addr });
        } else {
            addr
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = next_id();
        net.listeners.insert(
            addr,
            Listener {
                host,
                id,
                incoming: tx,
            },
        );
        Ok(MemEndpoint {
            inner: Arc::new(EndpointShared {
                network: self.clone(),
                host,
                addr,
                id,
                incoming: tokio::sync::Mutex::new(rx),
                closed: watch::Sender::new(false),
                connections: Mutex::new(Vec::new()),
            }),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MemEndpoint {
    inner: Arc<EndpointShared>,
}

#[derive(Debug)]
struct EndpointShared {
    network: MemNetwork,
    host: HostId,
    addr: SocketAddr,
    id: u64,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<MemConnection>>,
    closed: watch::Sender<bool>,
    connections: Mutex<Vec<(Side, Weak<Shared>)>>,
}

impl MemEndpoint {
    pub(crate) fn host(&self) -> HostId {
        self.inner.host
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    pub(crate) fn connect(
        &self,
        addr: SocketAddr,
        expected: HostId,
    ) -> Result<Connection, ConnectError> {
        if self.is_closed() {
            return Err(ConnectError::EndpointClosed);
        }
        let net = lock(&self.inner.network.inner);
        let listener = net
            .listeners
            .get(&addr)
            .ok_or(ConnectError::Unreachable { addr })?;
        if listener.host != expected {
            return Err(ConnectError::PeerMismatch {
                expected,
                actual: listener.host,
            });
        }
        let shared = Arc::new(Shared {
            state: watch::Sender::new(None),
            wakers: Mutex::new(HashMap::new()),
            buffer: self.inner.network.stream_buffer,
        });
        let (a_bi_tx, a_bi_rx) = mpsc::unbounded_channel();
        let (b_bi_tx, b_bi_rx) = mpsc::unbounded_channel();
        let (a_uni_tx, a_uni_rx) = mpsc::unbounded_channel();
        let (b_uni_tx, b_uni_rx) = mpsc::unbounded_channel();
        let ours = MemConnection {
            inner: Arc::new(ConnSide {
                shared: shared.clone(),
                side: Side::A,
                local: self.inner.host,
                peer: listener.host,
                remote: addr,
                bi_to_peer: b_bi_tx,
                bi_incoming: tokio::sync::Mutex::new(a_bi_rx),
                uni_to_peer: b_uni_tx,
                uni_incoming: tokio::sync::Mutex::new(a_uni_rx),
            }),
        };
        let theirs = MemConnection {
            inner: Arc::new(ConnSide {
                shared: shared.clone(),
                side: Side::B,
                local: listener.host,
                peer: self.inner.host,
                remote: self.inner.addr,
                bi_to_peer: a_bi_tx,
                bi_incoming: tokio::sync::Mutex::new(b_bi_rx),
                uni_to_peer: a_uni_tx,
                uni_incoming: tokio::sync::Mutex::new(b_uni_rx),
            }),
        };
        if listener.incoming.send(theirs).is_err() {
            return Err(ConnectError::Unreachable { addr });
        }
        drop(net);
        lock(&self.inner.connections).push((Side::A, Arc::downgrade(&shared)));
        Ok(ours.into())
    }

    pub(crate) async fn accept(&self) -> Option<Result<Connection, AcceptError>> {
        let mut closed = self.inner.closed.subscribe();
        let mut rx = self.inner.incoming.lock().await;
        tokio::select! {
            conn = rx.recv() => {
                let conn = conn?;
                if self.is_closed() {
                    return None;
                }
                lock(&self.inner.connections)
                    .push((conn.inner.side, Arc::downgrade(&conn.inner.shared)));
                Some(Ok(conn.into()))
            }
            _ = closed.wait_for(|c| *c) => None,
        }
    }

    pub(crate) fn close(&self) {
        self.inner.closed.send_replace(true);
        let mut net = lock(&self.inner.network.inner);
        if net
            .listeners
            .get(&self.inner.addr)
            .is_some_and(|l| l.id == self.inner.id)
        {
            net.listeners.remove(&self.inner.addr);
        }
        drop(net);
        let conns = std::mem::take(&mut *lock(&self.inner.connections));
        for (side, shared) in conns {
            if let Some(shared) = shared.upgrade() {
                shared.set_closed(CloseInfo {
                    by: side,
                    code: 0,
                    reason: b"endpoint closed".to_vec(),
                });
            }
        }
    }
}

impl Drop for EndpointShared {
    fn drop(&mut self) {
        let mut net = lock(&self.network.inner);
        if net
            .listeners
            .get(&self.addr)
            .is_some_and(|l| l.id == self.id)
        {
            net.listeners.remove(&self.addr);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

#[derive(Debug, Clone)]
struct CloseInfo {
    /// The side that closed.
    by: Side,
    code: u64,
    reason: Vec<u8>,
}

/// State shared by both sides of one connection and all its streams.
#[derive(Debug)]
struct Shared {
    state: watch::Sender<Option<CloseInfo>>,
    wakers: Mutex<HashMap<u64, Waker>>,
    buffer: usize,
}

impl Shared {
    fn set_closed(&self, info: CloseInfo) {
        let changed = self.state.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(info);
                true
            } else {
                false
            }
        });
        if changed {
            let wakers = std::mem::take(&mut *lock(&self.wakers));
            for w in wakers.into_values() {
                w.wake();
            }
        }
    }

    /// The close reason as seen from `side`.
    fn view(&self, side: Side) -> Option<ConnectionError> {
        let state = self.state.borrow();
        let info = state.as_ref()?;
        Some(if info.by == side {
            ConnectionError::LocallyClosed
        } else {
            ConnectionError::ClosedByPeer {
                code: info.code,
                reason: info.reason.clone(),
            }
        })
    }

    fn is_closed(&self) -> bool {
        self.state.borrow().is_some()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MemConnection {
    inner: Arc<ConnSide>,
}

type BiPair = (MemSendStream, MemRecvStream);

#[derive(Debug)]
struct ConnSide {
    shared: Arc<Shared>,
    side: Side,
    local: HostId,
    peer: HostId,
    remote: SocketAddr,
    bi_to_peer: mpsc::UnboundedSender<BiPair>,
    bi_incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<BiPair>>,
    uni_to_peer: mpsc::UnboundedSender<MemRecvStream>,
    uni_incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<MemRecvStream>>,
}

impl Drop for ConnSide {
    fn drop(&mut self) {
        // Dropping every handle of a connection closes it, as in quinn.
        self.shared.set_closed(CloseInfo {
            by: self.side,
            code: 0,
            reason: Vec::new(),
        });
    }
}

impl MemConnection {
    pub(crate) fn peer(&self) -> HostId {
        self.inner.peer
    }

    pub(crate) fn local_host(&self) -> HostId {
        self.inner.local
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.inner.remote
    }

    fn error(&self) -> Option<ConnectionError> {
        self.inner.shared.view(self.inner.side)
    }

    fn lost(&self) -> ConnectionError {
        self.error().unwrap_or(ConnectionError::ClosedByPeer {
            code: 0,
            reason: Vec::new(),
        })
    }

    fn pipe(&self) -> (MemSendStream, MemRecvStream) {
        let (w, r) = tokio::io::duplex(self.inner.shared.buffer);
        (
            MemSendStream {
                pipe: Some(w),
                shared: self.inner.shared.clone(),
                id: next_id(),
            },
            MemRecvStream {
                pipe: r,
                shared: self.inner.shared.clone(),
                id: next_id(),
            },
        )
    }

    pub(crate) fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        let (our_send, their_recv) = self.pipe();
        let (their_send, our_recv) = self.pipe();
        self.inner
            .bi_to_peer
            .send((their_send, their_recv))
            .map_err(|_| self.lost())?;
        Ok((our_send.into(), our_recv.into()))
    }

    pub(crate) fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        let (our_send, their_recv) = self.pipe();
        self.inner
            .uni_to_peer
            .send(their_recv)
            .map_err(|_| self.lost())?;
        Ok(our_send.into())
    }

    pub(crate) async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let mut rx = super::unless_closed(self.inner.bi_incoming.lock(), self.closed()).await?;
        let next = super::unless_closed(rx.recv(), self.closed()).await?;
        match next {
            Some((s, r)) if !self.inner.shared.is_closed() => Ok((s.into(), r.into())),
            _ => Err(self.lost()),
        }
    }

    pub(crate) async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let mut rx = super::unless_closed(self.inner.uni_incoming.lock(), self.closed()).await?;
        let next = super::unless_closed(rx.recv(), self.closed()).await?;
        match next {
            Some(r) if !self.inner.shared.is_closed() => Ok(r.into()),
            _ => Err(self.lost()),
        }
    }

    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        self.inner.shared.set_closed(CloseInfo {
            by: self.inner.side,
            code: code.into(),
            reason: reason.to_vec(),
        });
    }

    pub(crate) async fn closed(&self) -> ConnectionError {
        let mut rx = self.inner.shared.state.subscribe();
        // The sender lives in `shared`, which `self` keeps alive, so this cannot fail; treat a
        // failure as a lost connection anyway.
        let _ = rx.wait_for(Option::is_some).await;
        self.lost()
    }

    pub(crate) fn close_reason(&self) -> Option<ConnectionError> {
        self.error()
    }
}

fn closed_io_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed")
}

/// Polls `op` on a stream of a connection, failing once the connection is closed and making sure
/// a blocked stream is woken by a close.
fn poll_stream<T>(
    shared: &Shared,
    id: u64,
    cx: &mut Context<'_>,
    op: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if shared.is_closed() {
        return Poll::Ready(Err(closed_io_error()));
    }
    match op(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            lock(&shared.wakers).insert(id, cx.waker().clone());
            // A close between the check above and the registration would not wake us.
            if shared.is_closed() {
                Poll::Ready(Err(closed_io_error()))
            } else {
                Poll::Pending
            }
        }
    }
}

/// The sending half of an in-process stream.
#[derive(Debug)]
pub(crate) struct MemSendStream {
    pipe: Option<DuplexStream>,
    shared: Arc<Shared>,
    id: u64,
}

impl MemSendStream {
    pub(crate) fn finish(&mut self) -> Result<(), FinishError> {
        // Dropping our end of the pipe gives the reader end-of-file after the buffered data.
        self.pipe.take().map(drop).ok_or(FinishError::Closed)
    }
}

impl Drop for MemSendStream {
    fn drop(&mut self) {
        lock(&self.shared.wakers).remove(&self.id);
    }
}

impl AsyncWrite for MemSendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(pipe) = this.pipe.as_mut() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream finished",
            )));
        };
        poll_stream(&this.shared, this.id, cx, |cx| {
            Pin::new(pipe).poll_write(cx, buf)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pipe.take();
        Poll::Ready(Ok(()))
    }
}

/// The receiving half of an in-process stream.
#[derive(Debug)]
pub(crate) struct MemRecvStream {
    pipe: DuplexStream,
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for MemRecvStream {
    fn drop(&mut self) {
        lock(&self.shared.wakers).remove(&self.id);
    }
}

impl AsyncRead for MemRecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let pipe = &mut this.pipe;
        poll_stream(&this.shared, this.id, cx, |cx| {
            Pin::new(pipe).poll_read(cx, buf)
        })
    }
}

//! One transport API over several backends.
//!
//! The runtime uses the concrete types [`Endpoint`], [`Connection`], [`SendStream`] and
//! [`RecvStream`] and never names a backend: each dispatches to a private per-backend type.
//! A backend is made by a [`Transport`]: [`QuicTransport`] (quinn over UDP with mutual TLS) or
//! [`MemTransport`] (in-process, over tokio duplex pipes, for tests). An RDMA backend adds one
//! variant to each private enum and one `Transport` implementation.
//!
//! Semantics shared by all backends (checked by the conformance suite in `tests/`):
//! - a connection knows its peer's [`HostId`] (from the certificate, for QUIC) and its own;
//! - streams are reliable ordered byte streams; [`SendStream::finish`] (or dropping the stream)
//!   ends it and the reader sees end-of-file;
//! - closing a connection fails its pending and future stream operations on both sides, and the
//!   peer's [`Connection::closed`] resolves with [`ConnectionError::ClosedByPeer`];
//! - dropping every handle of a connection closes it with code 0.
//!
//! One difference: a QUIC peer learns of a new stream only when data is written on it, an
//! in-process peer at once.

mod error;
pub(crate) mod mem;
pub(crate) mod quic;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use fragmenta_job::HostId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use error::{AcceptError, BindError, ConnectError, ConnectionError, FinishError};
pub use mem::MemNetwork;

use crate::tls::{NetConfig, TlsFiles};

/// A backend that binds [`Endpoint`]s for hosts.
pub trait Transport: Send + Sync {
    /// Binds an endpoint for `host` at `addr` (port 0 picks a free port).
    fn bind(&self, host: HostId, addr: SocketAddr) -> Result<Endpoint, BindError>;
}

/// QUIC over UDP with mutual TLS: the production backend.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    certs_dir: PathBuf,
    config: NetConfig,
}

impl QuicTransport {
    /// A transport whose hosts find their files in `certs_dir` (laid out by
    /// [`certs::generate`](crate::certs::generate)).
    pub fn new(certs_dir: impl Into<PathBuf>, config: NetConfig) -> Self {
        Self {
            certs_dir: certs_dir.into(),
            config,
        }
    }
}

impl Transport for QuicTransport {
    fn bind(&self, host: HostId, addr: SocketAddr) -> Result<Endpoint, BindError> {
        Endpoint::bind_quic_as(
            host,
            addr,
            &TlsFiles::for_host(&self.certs_dir, host),
            &self.config,
        )
    }
}

/// The in-process backend: endpoints on one [`MemNetwork`].
#[derive(Debug, Clone, Default)]
pub struct MemTransport {
    network: MemNetwork,
}

impl MemTransport {
    /// A transport binding endpoints on `network`.
    pub fn new(network: MemNetwork) -> Self {
        Self { network }
    }

    /// The network its endpoints live on.
    pub fn network(&self) -> &MemNetwork {
        &self.network
    }
}

impl Transport for MemTransport {
    fn bind(&self, host: HostId, addr: SocketAddr) -> Result<Endpoint, BindError> {
        Endpoint::bind_mem(&self.network, host, addr)
    }
}

/// A host's network presence: accepts connections and opens them.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: EndpointInner,
}

#[derive(Debug, Clone)]
enum EndpointInner {
    Quic(quic::QuicEndpoint),
    Mem(mem::MemEndpoint),
}

impl Endpoint {
    /// Binds a QUIC endpoint at `addr` with the host's TLS files; it both accepts and opens
    /// connections. Must be called within a tokio runtime.
    pub fn bind_quic(
        addr: SocketAddr,
        tls: &TlsFiles,
        config: &NetConfig,
    ) -> Result<Endpoint, BindError> {
        Ok(Endpoint {
            inner: EndpointInner::Quic(quic::QuicEndpoint::bind(addr, tls, config, None)?),
        })
    }

    /// [`bind_quic`](Self::bind_quic) for `host`: its certificate must name `host`
    /// ([`TlsError::WrongHost`](crate::tls::TlsError::WrongHost) otherwise, for example when a
    /// host was given another host's certificate and key).
    pub fn bind_quic_as(
        host: HostId,
        addr: SocketAddr,
        tls: &TlsFiles,
        config: &NetConfig,
    ) -> Result<Endpoint, BindError> {
        Ok(Endpoint {
            inner: EndpointInner::Quic(quic::QuicEndpoint::bind(addr, tls, config, Some(host))?),
        })
    }

    /// Binds a QUIC endpoint at `addr` with an in-memory identity (see
    /// [`crate::secret`]); otherwise as [`Endpoint::bind_quic`].
    pub fn bind_quic_identity(
        addr: SocketAddr,
        identity: &crate::tls::TlsIdentity,
        config: &NetConfig,
    ) -> Result<Endpoint, BindError> {
        Ok(Endpoint {
            inner: EndpointInner::Quic(quic::QuicEndpoint::bind_identity(addr, identity, config)?),
        })
    }

    /// Binds an in-process endpoint for `host` at `addr` on `network` (port 0 picks a free
    /// port).
    pub fn bind_mem(
        network: &MemNetwork,
        host: HostId,
        addr: SocketAddr,
    ) -> Result<Endpoint, BindError> {
        Ok(Endpoint {
            inner: EndpointInner::Mem(network.bind(host, addr)?),
        })
    }

    /// The host this endpoint belongs to (from its certificate, for QUIC).
    pub fn host(&self) -> HostId {
        match &self.inner {
            EndpointInner::Quic(e) => e.host(),
            EndpointInner::Mem(e) => e.host(),
        }
    }

    /// The address this endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.inner {
            EndpointInner::Quic(e) => e.local_addr(),
            EndpointInner::Mem(e) => e.local_addr(),
        }
    }

    /// Connects to the endpoint at `addr`, which must be `expected_peer` (for QUIC: its
    /// certificate must chain to the cluster CA and name `expected_peer`).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_peer: HostId,
    ) -> Result<Connection, ConnectError> {
        match &self.inner {
            EndpointInner::Quic(e) => e.connect(addr, expected_peer).await,
            EndpointInner::Mem(e) => e.connect(addr, expected_peer),
        }
    }

    /// Waits for the next incoming connection. `None` once the endpoint is closed.
    ///
    /// Connections come in the order their handshakes complete: QUIC handshakes run
    /// concurrently within the bounds of [`NetConfig`] (a client that stalls its handshake
    /// delays no other). A failed, refused-by-certificate or timed-out handshake is returned
    /// as an error and the endpoint keeps accepting.
    pub async fn accept(&self) -> Option<Result<Connection, AcceptError>> {
        match &self.inner {
            EndpointInner::Quic(e) => e.accept().await,
            EndpointInner::Mem(e) => e.accept().await,
        }
    }

    /// Closes the endpoint and all its connections; pending and later [`accept`](Self::accept)
    /// calls return `None`.
    pub fn close(&self) {
        match &self.inner {
            EndpointInner::Quic(e) => e.close(),
            EndpointInner::Mem(e) => e.close(),
        }
    }
}

/// A connection to another host. Cheap to clone; all clones are the same connection.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: ConnectionInner,
}

#[derive(Debug, Clone)]
enum ConnectionInner {
    Quic(quic::QuicConnection),
    Mem(mem::MemConnection),
}

impl Connection {
    /// The host at the other end (from its certificate, for QUIC).
    pub fn peer(&self) -> HostId {
        match &self.inner {
            ConnectionInner::Quic(c) => c.peer(),
            ConnectionInner::Mem(c) => c.peer(),
        }
    }

    /// The host at this end.
    pub fn local_host(&self) -> HostId {
        match &self.inner {
            ConnectionInner::Quic(c) => c.local_host(),
            ConnectionInner::Mem(c) => c.local_host(),
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match &self.inner {
            ConnectionInner::Quic(c) => c.remote_address(),
            ConnectionInner::Mem(c) => c.remote_address(),
        }
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match &self.inner {
            ConnectionInner::Quic(c) => c.open_bi().await,
            ConnectionInner::Mem(c) => c.open_bi(),
        }
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match &self.inner {
            ConnectionInner::Quic(c) => c.accept_bi().await,
            ConnectionInner::Mem(c) => c.accept_bi().await,
        }
    }

    /// Opens a unidirectional stream to the peer.
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        match &self.inner {
            ConnectionInner::Quic(c) => c.open_uni().await,
            ConnectionInner::Mem(c) => c.open_uni(),
        }
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        match &self.inner {
            ConnectionInner::Quic(c) => c.accept_uni().await,
            ConnectionInner::Mem(c) => c.accept_uni().await,
        }
    }

    /// Closes the connection at once with an application `code` and `reason`; the peer sees
    /// [`ConnectionError::ClosedByPeer`]. Data not yet delivered may be lost.
    pub fn close(&self, code: u32, reason: &[u8]) {
        match &self.inner {
            ConnectionInner::Quic(c) => c.close(code, reason),
            ConnectionInner::Mem(c) => c.close(code, reason),
        }
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> ConnectionError {
        match &self.inner {
            ConnectionInner::Quic(c) => c.closed().await,
            ConnectionInner::Mem(c) => c.closed().await,
        }
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        match &self.inner {
            ConnectionInner::Quic(c) => c.close_reason(),
            ConnectionInner::Mem(c) => c.close_reason(),
        }
    }
}

/// The sending half of a stream. Dropping it finishes the stream.
#[derive(Debug)]
pub struct SendStream {
    inner: SendInner,
}

#[derive(Debug)]
enum SendInner {
    Quic(quinn::SendStream),
    Mem(mem::MemSendStream),
}

impl SendStream {
    /// Writes all of `data`, handing the buffer itself to the transport: QUIC keeps it until the
    /// peer acknowledges it instead of copying it into its send buffer (the copy a write from a
    /// slice makes).
    pub async fn write_owned(&mut self, data: Vec<u8>) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match &mut self.inner {
            SendInner::Quic(s) => Ok(s.write_chunk(bytes::Bytes::from(data)).await?),
            SendInner::Mem(s) => s.write_all(&data).await,
        }
    }

    /// Ends the stream: the reader sees end-of-file after the data written so far. Does not
    /// wait for delivery.
    pub fn finish(&mut self) -> Result<(), FinishError> {
        match &mut self.inner {
            SendInner::Quic(s) => s.finish().map_err(|_| FinishError::Closed),
            SendInner::Mem(s) => s.finish(),
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            SendInner::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendInner::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            SendInner::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendInner::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            SendInner::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendInner::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct RecvStream {
    inner: RecvInner,
}

#[derive(Debug)]
enum RecvInner {
    Quic(quinn::RecvStream),
    Mem(mem::MemRecvStream),
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            RecvInner::Quic(s) => AsyncRead::poll_read(Pin::new(s), cx, buf),
            RecvInner::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// Runs `fut` unless `closed` resolves first.
pub(crate) async fn unless_closed<T>(
    fut: impl Future<Output = T>,
    closed: impl Future<Output = ConnectionError>,
) -> Result<T, ConnectionError> {
    tokio::select! {
        biased;
        out = fut => Ok(out),
        err = closed => Err(err),
    }
}

impl From<quic::QuicConnection> for Connection {
    fn from(c: quic::QuicConnection) -> Self {
        Connection {
            inner: ConnectionInner::Quic(c),
        }
    }
}

impl From<mem::MemConnection> for Connection {
    fn from(c: mem::MemConnection) -> Self {
        Connection {
            inner: ConnectionInner::Mem(c),
        }
    }
}

impl From<quinn::SendStream> for SendStream {
    fn from(s: quinn::SendStream) -> Self {
        SendStream {
            inner: SendInner::Quic(s),
        }
    }
}

impl From<quinn::RecvStream> for RecvStream {
    fn from(s: quinn::RecvStream) -> Self {
        RecvStream {
            inner: RecvInner::Quic(s),
        }
    }
}

impl From<mem::MemSendStream> for SendStream {
    fn from(s: mem::MemSendStream) -> Self {
        SendStream {
            inner: SendInner::Mem(s),
        }
    }
}

impl From<mem::MemRecvStream> for RecvStream {
    fn from(s: mem::MemRecvStream) -> Self {
        RecvStream {
            inner: RecvInner::Mem(s),
        }
    }
}

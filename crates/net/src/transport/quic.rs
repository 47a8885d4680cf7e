//! The QUIC backend (quinn).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fragmenta_job::HostId;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{
    AcceptError, BindError, ConnectError, Connection, ConnectionError, RecvStream, SendStream,
};
use crate::certs::{self, CertIdentityError};
use crate::tls::{self, NetConfig, TlsFiles};

#[derive(Debug, Clone)]
pub(crate) struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    host: HostId,
    local_addr: SocketAddr,
    /// Handshakes completed (or failed) by the handshake driver, in completion order.
    accepted: Arc<tokio::sync::Mutex<mpsc::Receiver<Result<Connection, AcceptError>>>>,
}

impl QuicEndpoint {
    /// Binds with the host's files; with `expected`, the certificate must name that host.
    pub(crate) fn bind(
        addr: SocketAddr,
        files: &TlsFiles,
        config: &NetConfig,
        expected: Option<HostId>,
    ) -> Result<Self, BindError> {
        let loaded = match expected {
            Some(host) => tls::load_for(files, host)?,
            None => tls::load(files)?,
        };
        Self::bind_loaded(addr, loaded, config)
    }

    pub(crate) fn bind_identity(
        addr: SocketAddr,
        identity: &tls::TlsIdentity,
        config: &NetConfig,
    ) -> Result<Self, BindError> {
        Self::bind_loaded(addr, tls::load_identity(identity)?, config)
    }

    fn bind_loaded(
        addr: SocketAddr,
        loaded: tls::LoadedTls,
        config: &NetConfig,
    ) -> Result<Self, BindError> {
        let server = tls::server_config(&loaded, config)?;
        let client = tls::client_config(&loaded, config)?;
        let socket_err = |e: std::io::Error| BindError::Socket {
            addr,
            reason: e.to_string(),
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| BindError::Socket {
            addr,
            reason: e.to_string(),
        })?;
        let mut endpoint = quinn::Endpoint::server(server, addr).map_err(socket_err)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(socket_err)?;
        tracing::debug!(host = %loaded.host, %local_addr, "QUIC endpoint bound");
        let limits = HandshakeLimits {
            timeout: config.handshake_timeout,
            max: config.max_handshakes.max(1),
            per_ip: config.max_handshakes_per_ip.max(1),
        };
        let (tx, rx) = mpsc::channel(limits.max);
        runtime.spawn(drive_handshakes(endpoint.clone(), loaded.host, limits, tx));
        Ok(Self {
            endpoint,
            host: loaded.host,
            local_addr,
            accepted: Arc::new(tokio::sync::Mutex::new(rx)),
        })
    }

    pub(crate) fn host(&self) -> HostId {
        self.host
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        expected: HostId,
    ) -> Result<Connection, ConnectError> {
        use quinn::ConnectError as Q;
        let name = certs::host_server_name(expected);
        let connecting = self.endpoint.connect(addr, &name).map_err(|e| match e {
            Q::EndpointStopping => ConnectError::EndpointClosed,
            Q::InvalidRemoteAddress(_) | Q::InvalidServerName(_) => ConnectError::InvalidRemote {
                addr,
                reason: e.to_string(),
            },
            other => ConnectError::Setup {
                addr,
                reason: other.to_string(),
            },
        })?;
        let conn = connecting
            .await
            .map_err(|e| ConnectError::Connection(e.into()))?;
        let peer = match peer_host(&conn) {
            Ok(peer) => peer,
            Err(PeerError::NoCertificate) => {
                conn.close(0u32.into(), b"no certificate");
                return Err(ConnectError::NoPeerCertificate);
            }
            Err(PeerError::Identity(e)) => {
                conn.close(0u32.into(), b"bad certificate");
                return Err(ConnectError::PeerIdentity(e));
            }
        };
        if peer != expected {
            conn.close(0u32.into(), b"unexpected host");
            return Err(ConnectError::PeerMismatch {
                expected,
                actual: peer,
            });
        }
        tracing::debug!(host = %self.host, %peer, %addr, "QUIC connection established");
        Ok(QuicConnection {
            conn,
            peer,
            local: self.host,
        }
        .into())
    }

    /// The next handshake the driver finished, successful or not. Handshakes run concurrently
    /// (see [`drive_handshakes`]), so a stalled one delays no other.
    pub(crate) async fn accept(&self) -> Option<Result<Connection, AcceptError>> {
        self.accepted.lock().await.recv().await
    }

    pub(crate) fn close(&self) {
        self.endpoint.close(0u32.into(), b"endpoint closed");
    }
}

/// Bounds on incoming handshakes (from [`NetConfig`]).
#[derive(Debug, Clone, Copy)]
struct HandshakeLimits {
    timeout: Duration,
    max: usize,
    per_ip: usize,
}

/// The handshakes in progress, oldest first, and how many come from each address.
#[derive(Default)]
struct InProgress {
    live: HashMap<tokio::task::Id, (IpAddr, AbortHandle)>,
    /// Start order; may hold ids of handshakes that have ended (skipped, and compacted).
    order: VecDeque<tokio::task::Id>,
    per_ip: HashMap<IpAddr, usize>,
}

impl InProgress {
    fn add(&mut self, id: tokio::task::Id, ip: IpAddr, handle: AbortHandle) {
        self.live.insert(id, (ip, handle));
        self.order.push_back(id);
        *self.per_ip.entry(ip).or_default() += 1;
        if self.order.len() > 4 * self.live.len().max(16) {
            let live = &self.live;
            self.order.retain(|id| live.contains_key(id));
        }
    }

    /// Forgets a handshake; whether it was still in progress.
    fn remove(&mut self, id: tokio::task::Id) -> bool {
        let Some((ip, _)) = self.live.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        true
    }

    fn count_of(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Drops the oldest handshake in progress (from `ip` only, if given); its address.
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> Option<IpAddr> {
        let pos = self.order.iter().position(|id| {
            self.live
                .get(id)
                .is_some_and(|(from, _)| ip.is_none_or(|ip| ip == *from))
        })?;
        let id = self.order.remove(pos)?;
        let (from, handle) = self.live.get(&id).cloned()?;
        handle.abort();
        self.remove(id);
        Some(from)
    }
}

/// Accepts incoming connections and runs each TLS handshake in its own task, each for at most
/// `limits.timeout`, at most `limits.max` at once and `limits.per_ip` per client address: a new
/// handshake beyond a bound takes the place of the oldest one in progress (of that address, for
/// the per-address bound). A client completing its handshake in a few round trips is then
/// only dropped by a flood of more than the bound of new handshakes within those round trips,
/// while stalled handshakes cost at most the bound. Finished handshakes go to `done` in
/// completion order. Ends when the endpoint closes or every [`QuicEndpoint`] handle is gone
/// (dropping the running handshakes).
async fn drive_handshakes(
    endpoint: quinn::Endpoint,
    host: HostId,
    limits: HandshakeLimits,
    done: mpsc::Sender<Result<Connection, AcceptError>>,
) {
    let mut running: JoinSet<Result<Connection, AcceptError>> = JoinSet::new();
    let mut in_progress = InProgress::default();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                let ip = remote.ip();
                let evicted = if in_progress.count_of(ip) >= limits.per_ip {
                    in_progress.evict_oldest(Some(ip))
                } else if in_progress.live.len() >= limits.max {
                    in_progress.evict_oldest(None)
                } else {
                    None
                };
                if let Some(from) = evicted {
                    tracing::warn!(%host, %remote, dropped = %from, in_progress = in_progress.live.len(),
                        "too many handshakes in progress; dropped the oldest");
                }
                let task = running.spawn(handshake(incoming, host, limits.timeout));
                in_progress.add(task.id(), ip, task);
            }
            Some(finished) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, result) = match finished {
                    Ok((id, result)) => (id, Some(result)),
                    Err(e) => (e.id(), None),
                };
                // An evicted handshake was already forgotten and reports nothing.
                if in_progress.remove(id) {
                    if let Some(result) = result {
                        if done.send(result).await.is_err() {
                            break;
                        }
                    }
                }
            }
            () = done.closed() => break,
        }
    }
}

/// One incoming TLS handshake, then the check of the client's certificate.
async fn handshake(
    incoming: quinn::Incoming,
    host: HostId,
    timeout: Duration,
) -> Result<Connection, AcceptError> {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let e = ConnectionError::from(e);
            tracing::warn!(%host, %remote, error = %e, "incoming connection failed");
            return Err(AcceptError::Connection(e));
        }
        Err(_) => {
            // Dropping the handshake closes the connection.
            tracing::warn!(%host, %remote, ?timeout, "incoming handshake timed out");
            return Err(AcceptError::HandshakeTimeout { remote, timeout });
        }
    };
    let peer = match peer_host(&conn) {
        Ok(peer) => peer,
        Err(PeerError::NoCertificate) => {
            conn.close(0u32.into(), b"no certificate");
            return Err(AcceptError::NoPeerCertificate);
        }
        Err(PeerError::Identity(e)) => {
            conn.close(0u32.into(), b"bad certificate");
            return Err(AcceptError::PeerIdentity(e));
        }
    };
    tracing::debug!(%host, %peer, %remote, "QUIC connection accepted");
    Ok(QuicConnection {
        conn,
        peer,
        local: host,
    }
    .into())
}

enum PeerError {
    NoCertificate,
    Identity(CertIdentityError),
}

fn peer_host(conn: &quinn::Connection) -> Result<HostId, PeerError> {
    let identity = conn.peer_identity().ok_or(PeerError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| PeerError::NoCertificate)?;
    let leaf = chain.first().ok_or(PeerError::NoCertificate)?;
    certs::host_id_from_cert(leaf).map_err(PeerError::Identity)
}

#[derive(Debug, Clone)]
pub(crate) struct QuicConnection {
    conn: quinn::Connection,
    peer: HostId,
    local: HostId,
}

impl QuicConnection {
    pub(crate) fn peer(&self) -> HostId {
        self.peer
    }

    pub(crate) fn local_host(&self) -> HostId {
        self.local
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub(crate) async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let (s, r) = self.conn.open_bi().await?;
        Ok((s.into(), r.into()))
    }

    pub(crate) async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let (s, r) = self.conn.accept_bi().await?;
        Ok((s.into(), r.into()))
    }

    pub(crate) async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        Ok(self.conn.open_uni().await?.into())
    }

    pub(crate) async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        Ok(self.conn.accept_uni().await?.into())
    }

    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(code.into(), reason);
    }

    pub(crate) async fn closed(&self) -> ConnectionError {
        self.conn.closed().await.into()
    }

    pub(crate) fn close_reason(&self) -> Option<ConnectionError> {
        self.conn.close_reason().map(Into::into)
    }
}

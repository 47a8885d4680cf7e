//! The QUIC backend (quinn).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fragmenta_job::HostId;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

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

/// Accepts incoming connections and runs each TLS handshake in its own task, at most
/// `limits.max` at once and `limits.per_ip` per client address, each for at most
/// `limits.timeout`; a connection beyond a bound is refused at once. Finished handshakes go to
/// `done` in completion order. Ends when the endpoint closes or every [`QuicEndpoint`] handle
/// is gone (dropping the running handshakes).
async fn drive_handshakes(
    endpoint: quinn::Endpoint,
    host: HostId,
    limits: HandshakeLimits,
    done: mpsc::Sender<Result<Connection, AcceptError>>,
) {
    let mut running: JoinSet<Result<Connection, AcceptError>> = JoinSet::new();
    let mut sources: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                let ip = remote.ip();
                let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
                if running.len() >= limits.max || from_ip >= limits.per_ip {
                    tracing::warn!(%host, %remote, in_progress = running.len(), from_ip,
                        "too many handshakes in progress; refusing a connection");
                    incoming.refuse();
                    continue;
                }
                *per_ip.entry(ip).or_default() += 1;
                let task = running.spawn(handshake(incoming, host, limits.timeout));
                sources.insert(task.id(), ip);
            }
            Some(finished) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, result) = match finished {
                    Ok((id, result)) => (id, Some(result)),
                    Err(e) => (e.id(), None),
                };
                if let Some(ip) = sources.remove(&id) {
                    if let Some(n) = per_ip.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            per_ip.remove(&ip);
                        }
                    }
                }
                if let Some(result) = result {
                    if done.send(result).await.is_err() {
                        break;
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

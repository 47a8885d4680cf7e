//! The QUIC backend (quinn).

use std::net::SocketAddr;

use fragmenta_job::HostId;
use rustls::pki_types::CertificateDer;

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
}

impl QuicEndpoint {
    pub(crate) fn bind(
        addr: SocketAddr,
        files: &TlsFiles,
        config: &NetConfig,
    ) -> Result<Self, BindError> {
        Self::bind_loaded(addr, tls::load(files)?, config)
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
        let mut endpoint = quinn::Endpoint::server(server, addr).map_err(socket_err)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(socket_err)?;
        tracing::debug!(host = %loaded.host, %local_addr, "QUIC endpoint bound");
        Ok(Self {
            endpoint,
            host: loaded.host,
            local_addr,
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

    pub(crate) async fn accept(&self) -> Option<Result<Connection, AcceptError>> {
        let incoming = self.endpoint.accept().await?;
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(e) => {
                let e = ConnectionError::from(e);
                tracing::warn!(host = %self.host, %remote, error = %e, "incoming connection failed");
                return Some(Err(AcceptError::Connection(e)));
            }
        };
        let peer = match peer_host(&conn) {
            Ok(peer) => peer,
            Err(PeerError::NoCertificate) => {
                conn.close(0u32.into(), b"no certificate");
                return Some(Err(AcceptError::NoPeerCertificate));
            }
            Err(PeerError::Identity(e)) => {
                conn.close(0u32.into(), b"bad certificate");
                return Some(Err(AcceptError::PeerIdentity(e)));
            }
        };
        tracing::debug!(host = %self.host, %peer, %remote, "QUIC connection accepted");
        Some(Ok(QuicConnection {
            conn,
            peer,
            local: self.host,
        }
        .into()))
    }

    pub(crate) fn close(&self) {
        self.endpoint.close(0u32.into(), b"endpoint closed");
    }
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

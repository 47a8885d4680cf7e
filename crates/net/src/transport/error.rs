//! Errors of the transport operations, one enum per operation.

use std::net::SocketAddr;

use fragmenta_job::HostId;
use fragmenta_wire::handshake::HandshakeRejection;
use fragmenta_wire::FrameError;

use crate::certs::CertIdentityError;
use crate::tls::TlsError;

/// Why a connection ended (or could not be established). Returned by stream operations,
/// [`Connection::closed`](super::Connection::closed) and inside the connect/accept errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// This side closed the connection (or its endpoint).
    #[error("connection closed locally")]
    LocallyClosed,
    /// The peer closed the connection with an application code and reason (a peer that drops
    /// its connection closes it with code 0 and an empty reason).
    #[error(
        "connection closed by peer (code {code}): {}",
        String::from_utf8_lossy(reason)
    )]
    ClosedByPeer {
        /// The peer's close code.
        code: u64,
        /// The peer's close reason.
        reason: Vec<u8>,
    },
    /// The transport of the peer closed the connection: this is how a TLS failure (unknown CA,
    /// missing client certificate, wrong server name) is reported.
    #[error("connection closed by the peer's transport: {reason}")]
    TransportClosed {
        /// The transport's close frame, rendered.
        reason: String,
    },
    /// This side's transport failed the connection (for example a TLS failure detected here).
    #[error("transport error: {reason}")]
    TransportError {
        /// The transport's message.
        reason: String,
    },
    /// The peer stopped answering for longer than the idle timeout.
    #[error("connection timed out")]
    TimedOut,
    /// The peer reset the connection (it lost its state, for example after a restart).
    #[error("connection reset by peer")]
    Reset,
    /// The peer does not speak a QUIC version this endpoint supports.
    #[error("peer does not support this QUIC version")]
    VersionMismatch,
    /// This endpoint ran out of connection ids.
    #[error("connection ids exhausted")]
    CidsExhausted,
}

impl From<quinn::ConnectionError> for ConnectionError {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as Q;
        match e {
            Q::VersionMismatch => ConnectionError::VersionMismatch,
            Q::TransportError(t) => ConnectionError::TransportError {
                reason: t.to_string(),
            },
            Q::ConnectionClosed(c) => ConnectionError::TransportClosed {
                reason: c.to_string(),
            },
            Q::ApplicationClosed(c) => ConnectionError::ClosedByPeer {
                code: c.error_code.into_inner(),
                reason: c.reason.to_vec(),
            },
            Q::Reset => ConnectionError::Reset,
            Q::TimedOut => ConnectionError::TimedOut,
            Q::LocallyClosed => ConnectionError::LocallyClosed,
            Q::CidsExhausted => ConnectionError::CidsExhausted,
        }
    }
}

/// Why an endpoint could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound (or no tokio runtime is running).
    #[error("cannot bind {addr}: {reason}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// Another in-process endpoint already has this address.
    #[error("address {addr} is already in use on the in-process network")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
}

/// Why [`Endpoint::connect`](super::Endpoint::connect) or
/// [`connect_handshake`](crate::handshake::connect_handshake) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// This endpoint is closed.
    #[error("endpoint is closed")]
    EndpointClosed,
    /// The remote address or the server name derived from the expected host id is invalid.
    #[error("invalid remote {addr}: {reason}")]
    InvalidRemote {
        /// The address.
        addr: SocketAddr,
        /// quinn's message.
        reason: String,
    },
    /// The connection could not be started for another local reason (quinn's message).
    #[error("cannot start connection to {addr}: {reason}")]
    Setup {
        /// The address.
        addr: SocketAddr,
        /// quinn's message.
        reason: String,
    },
    /// Nothing listens at this address (in-process network).
    #[error("nothing listens at {addr}")]
    Unreachable {
        /// The address.
        addr: SocketAddr,
    },
    /// The connection failed: during the TLS handshake (untrusted certificate, no client
    /// certificate, wrong server name) or while exchanging the hello.
    #[error("connection failed: {0}")]
    Connection(#[source] ConnectionError),
    /// The peer's certificate names no host.
    #[error("peer certificate: {0}")]
    PeerIdentity(#[source] CertIdentityError),
    /// The peer presented no certificate (cannot happen over mutual TLS; kept for backends
    /// without certificates).
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer is not the host that was expected at this address.
    #[error("expected {expected} at this address, found {actual}")]
    PeerMismatch {
        /// The host the caller expected.
        expected: HostId,
        /// The host that answered.
        actual: HostId,
    },
    /// Writing the hello or reading the reply failed at the framing level.
    #[error("hello exchange failed: {0}")]
    HelloFrame(#[source] FrameError),
    /// The peer closed the handshake stream without replying.
    #[error("peer sent no hello reply")]
    NoHelloReply,
    /// The peer did not reply within the handshake timeout.
    #[error("peer did not reply to the hello in time")]
    HelloTimeout,
    /// The peer refused the hello.
    #[error("peer rejected the handshake: {0}")]
    Rejected(HandshakeRejection),
    /// The peer accepted but named a different host than its certificate.
    #[error("peer accepted as {claimed} but its certificate says {certificate}")]
    AcceptedAsOtherHost {
        /// The host in the peer's certificate.
        certificate: HostId,
        /// The host in the peer's reply.
        claimed: HostId,
    },
}

/// Why an incoming connection could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// The connection failed during the TLS handshake (for example the client's certificate is
    /// not signed by the cluster CA, or it sent none).
    #[error("incoming connection failed: {0}")]
    Connection(#[source] ConnectionError),
    /// The client's certificate names no host.
    #[error("client certificate: {0}")]
    PeerIdentity(#[source] CertIdentityError),
    /// The client presented no certificate.
    #[error("client presented no certificate")]
    NoPeerCertificate,
    /// The client did not complete its TLS handshake within
    /// [`NetConfig::handshake_timeout`](crate::NetConfig::handshake_timeout).
    #[error("handshake from {remote} not complete after {timeout:?}")]
    HandshakeTimeout {
        /// The client's address.
        remote: SocketAddr,
        /// The timeout.
        timeout: std::time::Duration,
    },
}

/// Why [`SendStream::finish`](super::SendStream::finish) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinishError {
    /// The stream was already finished or reset.
    #[error("stream already finished or reset")]
    Closed,
}

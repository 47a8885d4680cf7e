//! fragmenta-net: the transports between fragmenta hosts.
//!
//! - [`certs`]: the cluster's CA and per-host certificates (generation and reading host ids).
//! - [`tls`]: mutual TLS against the cluster CA only, and the QUIC transport tuning ([`NetConfig`]).
//! - [`transport`]: one API ([`Endpoint`], [`Connection`], [`SendStream`], [`RecvStream`]) over
//!   QUIC ([`QuicTransport`]) and an in-process network ([`MemTransport`]).
//! - [`handshake`]: the hello exchange that opens every connection.
//! - [`secret`]: a cluster CA derived from a shared secret, for clusters formed by a launcher
//!   with no certificate files.
pub mod certs;
pub mod handshake;
pub mod rdma;
pub mod secret;
pub mod tls;
pub mod transport;

pub use fragmenta_job::HostId;
pub use tls::{NetConfig, TlsFiles, TlsIdentity};
pub use transport::{
    AcceptError, BindError, ConnectError, Connection, ConnectionError, Endpoint, FinishError,
    MemNetwork, MemTransport, QuicTransport, RecvStream, SendStream, Transport,
};

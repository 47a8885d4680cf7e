//! fragmenta-net: the transports between fragmenta hosts.
//!
//! - [`certs`]: the cluster's CA and per-host certificates (generation and reading host ids).
//! - [`tls`]: mutual TLS against the cluster CA only, and the QUIC transport tuning ([`NetConfig`]).
//! - [`transport`]: one API ([`Endpoint`], [`Connection`], [`SendStream`], [`RecvStream`]) over
//!   QUIC ([`QuicTransport`]) and an in-process network ([`MemTransport`]).
//! - [`handshake`]: the hello exchange that opens every connection.
pub mod certs;
pub mod handshake;
pub mod rdma;
pub mod tls;
pub mod transport;

pub use fragmenta_job::HostId;
pub use tls::{NetConfig, TlsFiles};
pub use transport::{
    AcceptError, BindError, ConnectError, Connection, ConnectionError, Endpoint, FinishError,
    MemNetwork, MemTransport, QuicTransport, RecvStream, SendStream, Transport,
};

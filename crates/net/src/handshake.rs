//! The connection handshake: the connecting host sends a [`Hello`] on the first bidirectional
//! stream and the accepting host answers with a [`HelloReply`] after checking the protocol
//! version, the cluster name, and that the claimed host id is the one in the certificate.
//!
//! Both messages are frames with an empty payload ([`fragmenta_wire::frame`]). A rejected
//! connection is closed with [`CLOSE_REJECTED`]; a connection whose peer sends a malformed frame
//! is closed with [`CLOSE_PROTOCOL_ERROR`] (see [`close_on_frame_error`]).

use std::time::Duration;

use fragmenta_job::HostId;
use fragmenta_wire::handshake::{HandshakeRejection, Hello, HelloReply};
use fragmenta_wire::{read_header, write_frame, FrameError, FrameLimits, PROTOCOL_VERSION};

use crate::transport::{ConnectError, Connection, ConnectionError, Endpoint};

/// Close code of a connection whose handshake was rejected.
pub const CLOSE_REJECTED: u32 = 1;
/// Close code of a connection whose peer broke the protocol (malformed or oversized frame).
pub const CLOSE_PROTOCOL_ERROR: u32 = 2;

/// How long either side waits for the other's handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshake messages are small: no payload and a header of at most 64 KiB.
const HANDSHAKE_LIMITS: FrameLimits = FrameLimits {
    max_header: 64 << 10,
    max_payload: 0,
};

/// Why [`accept_handshake`] refused or failed a connection. The connection is closed in every
/// case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed before the hello arrived.
    #[error("connection failed during the handshake: {0}")]
    Connection(#[source] ConnectionError),
    /// The hello frame was malformed, oversized or truncated.
    #[error("bad hello frame: {0}")]
    Frame(#[source] FrameError),
    /// The peer finished the handshake stream without a hello.
    #[error("peer sent no hello")]
    NoHello,
    /// The peer sent no hello within [`HANDSHAKE_TIMEOUT`].
    #[error("peer sent no hello in time")]
    Timeout,
    /// The hello was refused (the peer was told why).
    #[error("rejected {peer}: {reason}")]
    Rejected {
        /// The host from the peer's certificate.
        peer: HostId,
        /// Why.
        reason: HandshakeRejection,
    },
    /// The hello was valid but the accept reply could not be sent.
    #[error("cannot send the hello reply: {0}")]
    Reply(#[source] FrameError),
}

/// Logs `err` (a peer's malformed or oversized frame, or a broken stream) and closes `conn`
/// with [`CLOSE_PROTOCOL_ERROR`]: what a receiver does when a peer breaks the framing.
///
/// A stream that failed because the connection itself is gone (an I/O error once the
/// connection has a close reason: peer died, shutdown) is not the peer's fault: that is logged
/// at debug level only, as the failure detector reports the loss.
pub fn close_on_frame_error(conn: &Connection, err: &FrameError) {
    if matches!(err, FrameError::Io { .. }) && conn.close_reason().is_some() {
        tracing::debug!(peer = %conn.peer(), error = %err, "stream ended with its connection");
        return;
    }
    tracing::error!(peer = %conn.peer(), remote = %conn.remote_address(), error = %err,
        "closing connection after a bad frame");
    conn.close(CLOSE_PROTOCOL_ERROR, err.to_string().as_bytes());
}

/// Connects to `expected` at `addr` and performs the handshake with `hello`.
///
/// Returns the connection once the peer accepted. A refusal is [`ConnectError::Rejected`] with
/// the peer's reason; the connection is then closed.
pub async fn connect_handshake(
    endpoint: &Endpoint,
    addr: std::net::SocketAddr,
    expected: HostId,
    hello: Hello,
) -> Result<Connection, ConnectError> {
    let conn = endpoint.connect(addr, expected).await?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(ConnectError::Connection)?;
        write_frame(&mut send, &hello, &[])
            .await
            .map_err(ConnectError::HelloFrame)?;
        // Finishing only fails on a stream already closed, which the read below reports.
        let _ = send.finish();
        match read_header::<_, HelloReply>(&mut recv, &HANDSHAKE_LIMITS).await {
            Ok(Some((reply, _))) => Ok(reply),
            Ok(None) => Err(ConnectError::NoHelloReply),
            Err(e) => Err(ConnectError::HelloFrame(e)),
        }
    };
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::HelloTimeout),
    };
    // A stream failure caused by the connection closing (for example the server refusing our
    // certificate after the client side of TLS completed) is reported as that closure.
    let result = match result {
        Err(ConnectError::HelloFrame(_) | ConnectError::NoHelloReply) => {
            match conn.close_reason() {
                Some(e) => Err(ConnectError::Connection(e)),
                None => result,
            }
        }
        other => other,
    };
    match result {
        Ok(HelloReply::Accept { host }) if host == conn.peer() => Ok(conn),
        Ok(HelloReply::Accept { host }) => {
            conn.close(CLOSE_REJECTED, b"accepted as another host");
            Err(ConnectError::AcceptedAsOtherHost {
                certificate: conn.peer(),
                claimed: host,
            })
        }
        Ok(HelloReply::Reject { reason }) => {
            conn.close(CLOSE_REJECTED, reason.to_string().as_bytes());
            Err(ConnectError::Rejected(reason))
        }
        Err(e) => {
            conn.close(CLOSE_PROTOCOL_ERROR, e.to_string().as_bytes());
            Err(e)
        }
    }
}

/// Checks a hello against this host's `cluster` and the connection's certificate.
pub fn check_hello(
    hello: &Hello,
    cluster: &str,
    certificate: HostId,
) -> Result<(), HandshakeRejection> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(HandshakeRejection::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.protocol_version,
        });
    }
    if hello.cluster != cluster {
        return Err(HandshakeRejection::ClusterMismatch {
            ours: cluster.to_owned(),
            theirs: hello.cluster.clone(),
        });
    }
    if hello.host != certificate {
        return Err(HandshakeRejection::HostIdMismatch {
            certificate,
            claimed: hello.host,
        });
    }
    Ok(())
}

/// Performs the accepting side of the handshake on a freshly accepted connection: reads the
/// peer's [`Hello`], checks it with [`check_hello`], and replies.
///
/// On success returns the connection and the hello. On any failure the connection is closed
/// (after the peer has been told why, for a rejection) and the error names both values.
pub async fn accept_handshake(
    conn: Connection,
    cluster: &str,
) -> Result<(Connection, Hello), HandshakeError> {
    let read = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(HandshakeError::Connection)?;
        match read_header::<_, Hello>(&mut recv, &HANDSHAKE_LIMITS).await {
            Ok(Some((hello, _))) => Ok((send, hello)),
            Ok(None) => Err(HandshakeError::NoHello),
            Err(e) => Err(HandshakeError::Frame(e)),
        }
    };
    let (mut send, hello) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            if let HandshakeError::Frame(f) = &e {
                close_on_frame_error(&conn, f);
            } else {
                conn.close(CLOSE_PROTOCOL_ERROR, e.to_string().as_bytes());
            }
            return Err(e);
        }
        Err(_) => {
            conn.close(CLOSE_PROTOCOL_ERROR, b"no hello in time");
            return Err(HandshakeError::Timeout);
        }
    };
    let peer = conn.peer();
    if let Err(reason) = check_hello(&hello, cluster, peer) {
        tracing::warn!(%peer, %reason, "rejecting handshake");
        let reply = HelloReply::Reject {
            reason: reason.clone(),
        };
        if write_frame(&mut send, &reply, &[]).await.is_ok() {
            let _ = send.finish();
            // Let the peer read the reply and close; close ourselves if it does not.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        }
        conn.close(CLOSE_REJECTED, reason.to_string().as_bytes());
        return Err(HandshakeError::Rejected { peer, reason });
    }
    let reply = HelloReply::Accept {
        host: conn.local_host(),
    };
    if let Err(e) = write_frame(&mut send, &reply, &[]).await {
        conn.close(CLOSE_PROTOCOL_ERROR, b"cannot send hello reply");
        return Err(HandshakeError::Reply(e));
    }
    let _ = send.finish();
    Ok((conn, hello))
}

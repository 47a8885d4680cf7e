//! The handshake: the first frame on every connection between two hosts.
//!
//! The host that opens a connection sends a [`Hello`] on a bidirectional stream; the accepting
//! host checks it and answers with a [`HelloReply`]. Both travel as frame headers with an empty
//! payload (see [`crate::frame`]).

use fragmenta_job::HostId;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// The first message of a connection, from the connecting host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The name of the cluster the sender belongs to.
    pub cluster: String,
    /// The sender's host id (must match the host id in its certificate).
    pub host: HostId,
}

impl Hello {
    /// A hello from `host` of `cluster` with this build's [`PROTOCOL_VERSION`].
    pub fn new(cluster: impl Into<String>, host: HostId) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            cluster: cluster.into(),
            host,
        }
    }
}

/// The accepting host's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is accepted; `host` is the accepting host's id.
    Accept {
        /// The accepting host.
        host: HostId,
    },
    /// The connection is refused, and why; the accepting host closes it after this reply.
    Reject {
        /// Why.
        reason: HandshakeRejection,
    },
}

/// Why an accepting host refused a [`Hello`]. Each variant names both values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandshakeRejection {
    /// The hosts speak different protocol versions.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// The accepting host's version.
        ours: u32,
        /// The connecting host's version.
        theirs: u32,
    },
    /// The hosts belong to different clusters.
    #[error("cluster mismatch: ours {ours:?}, theirs {theirs:?}")]
    ClusterMismatch {
        /// The accepting host's cluster.
        ours: String,
        /// The connecting host's cluster.
        theirs: String,
    },
    /// The host id in the hello is not the one in the connecting host's certificate.
    #[error("host id mismatch: certificate says {certificate}, hello claims {claimed}")]
    HostIdMismatch {
        /// The host id in the certificate.
        certificate: HostId,
        /// The host id in the hello.
        claimed: HostId,
    },
    /// The accepting host already has a connection from this host and refuses a second one.
    #[error("{host} is already connected")]
    AlreadyConnected {
        /// The connecting host.
        host: HostId,
    },
    /// The connecting host is not (or no longer) a member of the cluster.
    #[error("{host} is not a member of the cluster")]
    UnknownHost {
        /// The connecting host.
        host: HostId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn hello_and_replies_roundtrip() {
        let hello = Hello::new("c1", HostId(4));
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
        let bytes = encode(&hello).unwrap();
        assert_eq!(decode::<Hello>(&bytes, 1024), Ok(hello));
        for reply in [
            HelloReply::Accept { host: HostId(1) },
            HelloReply::Reject {
                reason: HandshakeRejection::ClusterMismatch {
                    ours: "a".into(),
                    theirs: "b".into(),
                },
            },
            HelloReply::Reject {
                reason: HandshakeRejection::HostIdMismatch {
                    certificate: HostId(1),
                    claimed: HostId(2),
                },
            },
        ] {
            let bytes = encode(&reply).unwrap();
            assert_eq!(decode::<HelloReply>(&bytes, 1024), Ok(reply));
        }
    }

    #[test]
    fn rejection_messages_name_both_values() {
        let r = HandshakeRejection::VersionMismatch { ours: 1, theirs: 2 };
        assert_eq!(r.to_string(), "protocol version mismatch: ours 1, theirs 2");
    }
}

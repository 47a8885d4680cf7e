//! Why a multi-host node could not start.

use fragmenta_job::HostId;
use std::time::Duration;

/// Why a multi-host node could not start. Comparable: the errors it wraps are (their own typed
/// forms, not text), so a caller can match or compare the exact failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The configuration is invalid or names no usable host.
    #[error(transparent)]
    Config(#[from] fragmenta_config::ConfigError),
    /// Two job types share a class id.
    #[error(transparent)]
    Register(#[from] crate::RegisterError),
    /// The QUIC endpoint could not be bound (address in use, bad certificate files…).
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        /// The address from the configuration.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// Not enough hosts joined in time.
    #[error("waited {waited:?} for {min} hosts; missing: {}", host_list(missing))]
    MinHosts {
        /// Hosts required (this one included).
        min: usize,
        /// How long this host waited.
        waited: Duration,
        /// Configured hosts that never connected while this host waited. A host that
        /// connected and then left (its own join gave up first, or it failed) is not named:
        /// it came, and is no longer up.
        missing: Vec<HostId>,
    },
    /// The async runtime could not start (its threads or its I/O driver could not be made).
    #[error("cannot start the network runtime: {kind} (os error {errno})")]
    Runtime {
        /// The kind of the system error.
        kind: std::io::ErrorKind,
        /// The `errno` value, 0 if none was reported.
        errno: i32,
    },
    /// The task meeting the other ranks of a launch ended without an answer (its runtime was
    /// shut down under it).
    #[error("the rendezvous task was lost")]
    RendezvousLost,
    /// A live host refused this one, typically because a host with this id was declared dead
    /// (host ids are never reused: a restarted process joins with a new id).
    #[error("refused by {by}: {reason}")]
    Refused {
        /// The host that refused.
        by: HostId,
        /// Its reason.
        reason: String,
    },
    /// The host's Fast I/O context could not be served on its socket.
    #[error("cannot serve the Fast I/O context: {0}")]
    FastIo(#[from] fragmenta_fastio::FastIoError),
    /// [`ClusterBuilder::gpus`](crate::ClusterBuilder::gpus) differs from the host's `gpus` in
    /// the configuration, which is what the other hosts place GPU fragments by.
    #[error(
        "ClusterBuilder::gpus({asked}) differs from the {configured} GPUs the configuration \
         gives {host}: set `gpus` for the host in the cluster configuration instead"
    )]
    GpusDiffer {
        /// This host.
        host: fragmenta_job::HostId,
        /// GPUs in the configuration.
        configured: u32,
        /// GPUs the program asked for.
        asked: u32,
    },
    /// A program joining a configured cluster could not tell which host it is.
    #[error(
        "cannot tell which host of the cluster configuration this process is: set \
         FRAGMENTA_HOST_ID to its host id, or start the program under a launcher \
         (fragmenta launch, srun, mpirun)"
    )]
    NoHostId,
    /// [`ClusterBuilder::join_config`](crate::ClusterBuilder::join_config) was given a host
    /// the configuration does not list.
    #[error(
        "{host} is not a host of the cluster configuration (it lists {})",
        host_list(known)
    )]
    UnknownHost {
        /// The host asked for.
        host: fragmenta_job::HostId,
        /// The hosts the configuration lists, ascending.
        known: Vec<HostId>,
    },
    /// A cluster formed by a launcher (no configuration file) could not meet.
    #[error(transparent)]
    Rendezvous(#[from] crate::rendezvous::RendezvousError),
}

/// Why binding failed, without the "cannot bind ADDR" its message starts with (the errors that
/// carry it say it themselves).
pub(crate) fn bind_reason(e: fragmenta_net::BindError) -> String {
    match e {
        fragmenta_net::BindError::Socket { reason, .. } => reason,
        e => e.to_string(),
    }
}

/// `host-1, host-2`.
fn host_list(hosts: &[HostId]) -> String {
    let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    names.join(", ")
}

//! Clusters of several hosts inside one process, for tests, examples and notebooks.
//!
//! Each host is a full runtime (its node, worker pool, links and the protocol, the same code
//! as a host of a real cluster); they reach each other over an in-process
//! [`MemNetwork`](crate::MemNetwork) instead of QUIC (see [`ClusterBuilder::transport`]), so
//! no certificates, ports or processes are needed and the hosts' memory is one. A job
//! submitted on one host still has its replicas serialized to the others and its results
//! streamed back, as over QUIC.
//!
//! ```
//! use fragmenta_runtime::testing;
//!
//! let hosts = testing::in_process(3).unwrap();
//! assert!(hosts[0].is_primary() && !hosts[1].is_primary());
//! assert_eq!(hosts[2].hosts().len(), 3);
//! testing::shutdown_all(hosts);
//! ```

use crate::{Cluster, ClusterBuilder, ClusterConfig, JoinError};
use fragmenta_config::{ClusterSection, ConfigError, ConfigFile, HostSection};

/// What one host of a [`config`] offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostShape {
    /// Its sub-cluster (ONCE_PER_HOST reaches the hosts of the initiator's sub-cluster).
    pub sub_cluster: u32,
    /// Its CPU cores.
    pub cores: u32,
    /// Its GPUs.
    pub gpus: u32,
}

impl Default for HostShape {
    /// Sub-cluster 0, 2 cores, no GPU.
    fn default() -> Self {
        HostShape {
            sub_cluster: 0,
            cores: 2,
            gpus: 0,
        }
    }
}

/// The configuration of an in-process cluster of `hosts.len()` hosts, ids `0..`, host `i`
/// shaped as `hosts[i]`, at addresses `127.0.0.1:10000+i` of its own network, with the
/// default liveness settings (change them through [`ClusterConfig::to_config_file`]). The
/// certificate paths it names are placeholders: an in-process transport does not read them.
/// An empty `hosts` is an error (a cluster has at least one host).
pub fn config_of(hosts: &[HostShape]) -> Result<ClusterConfig, ConfigError> {
    let file = ConfigFile {
        cluster: ClusterSection {
            name: "in-process".into(),
            ca_cert: "in-process-ca.pem".into(),
            ..ClusterSection::default()
        },
        hosts: hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostSection {
                id: i as i64,
                address: format!("127.0.0.1:{}", 10_000 + i),
                sub_cluster: Some(i64::from(h.sub_cluster)),
                cores: Some(i64::from(h.cores)),
                gpus: Some(i64::from(h.gpus)),
                cert: format!("in-process-{i}.pem"),
                key: format!("in-process-{i}.key"),
                ..HostSection::default()
            })
            .collect(),
    };
    ClusterConfig::from_config_file(file, ".")
}

/// [`config_of`] `n` default hosts (2 cores, no GPU, one sub-cluster).
pub fn config(n: usize) -> Result<ClusterConfig, ConfigError> {
    config_of(&vec![HostShape::default(); n])
}

/// `n` hosts of [`config`] in this process, host 0 (the primary) first; job types marked
/// `#[fragmenta::job]` are registered on each. For other settings and registrations use
/// [`ClusterBuilder::in_process`].
pub fn in_process(n: usize) -> Result<Vec<Cluster>, JoinError> {
    ClusterBuilder::default().in_process(&config(n)?)
}

/// Shuts down the hosts of an in-process cluster, the primary (the first) before the others,
/// so they hear of a shutdown rather than lose their primary.
pub fn shutdown_all(clusters: Vec<Cluster>) {
    for c in clusters {
        drop(c);
    }
}

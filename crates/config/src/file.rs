//! The on-disk shape of a cluster configuration, before validation.

use serde::{Deserialize, Serialize};

/// A cluster configuration file exactly as written: every value unchecked, optional values
/// `None` when absent.
///
/// Integers are `i64` so that a negative value reaches validation and gets an error naming its
/// field. Turn it into a [`ClusterConfig`](crate::ClusterConfig) with
/// [`ClusterConfig::from_config_file`](crate::ClusterConfig::from_config_file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The `[cluster]` table.
    pub cluster: ClusterSection,
    /// The `[[host]]` tables, in file order.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSection>,
}

/// The `[cluster]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name; hosts of different clusters refuse each other.
    pub name: String,
    /// The cluster CA certificate (PEM), relative to the config file's folder.
    pub ca_cert: String,
    /// Hosts that must be up before jobs run; default: all hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hosts: Option<i64>,
    /// How long to wait for `min_hosts`, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hosts_timeout_ms: Option<i64>,
    /// Interval between heartbeats, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<i64>,
    /// Silence after which a host is declared dead, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timeout_ms: Option<i64>,
    /// Largest message frame accepted, in bytes; default: the transport's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<i64>,
    /// Whether hosts of one machine pass results and fetches through shared memory; default
    /// true. `false` keeps every byte on QUIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_machine: Option<bool>,
}

/// One `[[host]]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// The host id (never reused).
    pub id: i64,
    /// `ip:port`, `[ipv6]:port` or `hostname:port`, UDP (QUIC).
    pub address: String,
    /// Sub-cluster number; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_cluster: Option<i64>,
    /// CPU cores this host offers; default: this machine's available parallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<i64>,
    /// GPUs this host offers; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<i64>,
    /// Capacity of the host's Fast I/O context in MiB; default: half of the machine's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastio_capacity_mib: Option<i64>,
    /// Unix socket on which the host serves its Fast I/O context to other processes; default:
    /// `fragmenta-<uid>/<cluster>-<n>-host<id>.<pid>.sock` in `$XDG_RUNTIME_DIR` or the
    /// temporary folder (at most 107 bytes: the limit of a Unix socket path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastio_socket: Option<String>,
    /// The host's certificate (PEM), relative to the config file's folder.
    pub cert: String,
    /// The host's private key (PEM), relative to the config file's folder.
    pub key: String,
}

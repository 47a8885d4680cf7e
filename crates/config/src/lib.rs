//! The fragmenta cluster configuration: a TOML file listing the hosts of a cluster and its
//! settings, its validation, and the choice of which host this process is.
//!
//! This crate owns the file format and its checks; it opens no sockets and reads no
//! certificates (it only checks that they exist, on request). It also reads what a launcher
//! says about this process ([`launcher`]: Open MPI, PMI, a Slurm step) and expands Slurm
//! hostlists ([`hostlist`]).
//!
//! ```toml
//! [cluster]
//! name = "local-4"
//! ca_cert = "certs/ca.pem"            # paths are relative to the config file's folder
//! min_hosts = 4                        # default: number of [[host]] tables
//! min_hosts_timeout_ms = 30000         # how long to wait for min_hosts (default 30000)
//! heartbeat_interval_ms = 500          # default 500
//! failure_timeout_ms = 2500            # default 2500; must exceed heartbeat_interval_ms
//! max_frame_bytes = 268435456          # optional
//! same_machine = true                  # default true: shared memory between hosts of a machine
//!
//! [[host]]
//! id = 0                               # unique, never reused
//! address = "127.0.0.1:47100"          # ip:port, [ipv6]:port or hostname:port (UDP)
//! sub_cluster = 0                      # default 0
//! cores = 2                            # default: this machine's available parallelism
//! gpus = 0                             # default 0
//! cert = "certs/host-0.pem"
//! key = "certs/host-0.key"
//! ```
//!
//! Every invalid value is a [`ConfigError`] naming its field (`cluster.name`,
//! `host[1].cores`, where `host[1]` is the second `[[host]]` table); unknown fields, missing
//! fields, wrong types and TOML syntax errors also give the line.
//!
//! Addresses: a literal socket address is checked when the file is loaded; `hostname:port` is
//! checked for shape only and resolved when used ([`HostConfig::socket_addr`]), so that one file
//! can describe machines that cannot resolve each other's names from everywhere. Duplicate
//! addresses are detected textually (`localhost:1` and `127.0.0.1:1` are not recognized as the
//! same).
//!
//! ```
//! use fragmenta_config::ClusterConfig;
//! let config = ClusterConfig::from_toml_str(
//!     r#"
//!     [cluster]
//!     name = "demo"
//!     ca_cert = "ca.pem"
//!     [[host]]
//!     id = 7
//!     address = "127.0.0.1:47100"
//!     cert = "host-7.pem"
//!     key = "host-7.key"
//!     "#,
//!     "/etc/fragmenta",
//! )?;
//! assert_eq!(config.hosts()[0].id(), fragmenta_job::HostId(7));
//! assert_eq!(config.failure_timeout(), std::time::Duration::from_millis(2500));
//! assert_eq!(config.ca_cert(), std::path::Path::new("/etc/fragmenta/ca.pem"));
//! # Ok::<(), fragmenta_config::ConfigError>(())
//! ```

mod cluster;
mod error;
mod file;
pub mod hostlist;
pub mod launcher;
mod locate;
mod select;

pub use cluster::{
    check_cluster_name, ClusterConfig, HostConfig, DEFAULT_FAILURE_TIMEOUT_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_MIN_HOSTS_TIMEOUT_MS,
};
pub use error::{ConfigError, HostIdOrigin};
pub use file::{ClusterSection, ConfigFile, HostSection};
pub use select::{
    load_from_env, load_from_env_with, resolve_host_id, resolve_host_id_with, CONFIG_ENV,
    HOST_ID_ENV, RANK_ENVS,
};

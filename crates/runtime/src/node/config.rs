//! Host-level settings of a node and their defaults.

use fragmenta_job::HostId;
use std::path::PathBuf;

/// Host-level settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This host's id.
    pub host: HostId,
    /// CPU cores fragments may load (sum of `cpu_load` of running fragments stays ≤ this).
    pub cores: f32,
    /// GPUs of this host.
    pub gpus: u32,
    /// Sub-cluster of this host.
    pub sub_cluster: u32,
    /// Most worker threads (fragments running at once, whatever their loads).
    pub max_workers: usize,
    /// Capacity of the host's Fast I/O context in bytes.
    pub fastio_capacity: u64,
    /// The Unix socket the Fast I/O context is served on to other processes of the host; `None`
    /// picks [`default_fastio_socket`].
    pub fastio_socket: Option<PathBuf>,
}

/// Default capacity of a host's Fast I/O context: half of the machine's memory (4 GiB where it
/// cannot be read).
pub fn default_fastio_capacity() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(4 << 30, |k| k.saturating_mul(1024) / 2)
}

/// Default socket of a host's Fast I/O context: `<label>-host<id>.<pid>.sock` in
/// [`fragmenta_fastio::default_socket_dir`] (`$XDG_RUNTIME_DIR` or else the temporary folder,
/// `fragmenta-<uid>`, readable by its owner only, with a private fallback should another user
/// have taken that name). `label` tells apart clusters sharing a machine (the cluster name and
/// a count of the process's clusters).
pub fn default_fastio_socket(label: &str, host: HostId) -> PathBuf {
    fragmenta_fastio::default_socket_path(&format!("{label}-host{}", host.0))
}

impl NodeConfig {
    /// One host with this machine's cores, no GPU.
    pub fn single_host() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeConfig {
            host: HostId(0),
            cores: cores as f32,
            gpus: 0,
            sub_cluster: 0,
            max_workers: 0,
            fastio_capacity: default_fastio_capacity(),
            fastio_socket: None,
        }
    }

    pub(crate) fn workers_cap(&self) -> usize {
        if self.max_workers > 0 {
            self.max_workers
        } else {
            ((self.cores.ceil() as usize) * 4).max(64)
        }
    }
}

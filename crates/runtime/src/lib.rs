//! The fragmenta node: drives the sans-IO scheduler (`fragmenta-sched`) with a worker pool,
//! networking (`fragmenta-net`) and the node-local Fast I/O store.
//!
//! What this layer owns: the [`Cluster`] handle a program gets, job submission and
//! [`JobHandle`]s, the worker pool that runs fragments (never on an async reactor thread),
//! delivery of remote results to the original job, membership and failure detection. What it
//! does not own: scheduling decisions (`fragmenta-sched`), the job contract (`fragmenta-job`),
//! encodings and transports (`fragmenta-wire`, `fragmenta-net`).
//!
//! With no configuration, [`Cluster::embedded`] is a one-host cluster inside the process: no
//! network, no certificates, and every scheduling mode has its one-host meaning (LOCAL and
//! CLUSTER run everything here; ONCE_PER_HOST has no remote host, so a count of 0 runs nothing
//! and any other count is an invalid argument; USER_DEFINED runs the fragments assigned to this
//! host's id and skips the others).

mod executor;
mod node;
mod registry;

pub use node::{JobHandle, NodeConfig};
pub use registry::{RegisterError, Registry};

use fragmenta_job::{ExecuteError, FragmentedJob, HostId, JobReport};
use node::Node;
use std::sync::Arc;

/// A program's handle on the cluster it belongs to (DiCE: the `IDice_transaction` factory plus
/// `execute_fragmented`). Dropping it shuts the local node down.
pub struct Cluster {
    node: Arc<Node>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("host", &self.node.host()).finish()
    }
}

/// Builds a [`Cluster`].
#[derive(Default)]
pub struct ClusterBuilder {
    cores: Option<f32>,
    gpus: u32,
    max_workers: usize,
    registry: Registry,
    register_error: Option<RegisterError>,
}

impl ClusterBuilder {
    /// CPU capacity of this host: running fragments' `cpu_load` sums stay ≤ this. Default: the
    /// machine's available parallelism.
    pub fn cores(mut self, cores: f32) -> Self {
        self.cores = Some(cores);
        self
    }

    /// GPUs of this host (default 0).
    pub fn gpus(mut self, gpus: u32) -> Self {
        self.gpus = gpus;
        self
    }

    /// Most fragments running at once whatever their loads (default: 4 × cores, at least 64).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = n;
        self
    }

    /// Registers a job type so this host can run it for other hosts.
    pub fn register<J: FragmentedJob>(mut self) -> Self {
        if let Err(e) = self.registry.register::<J>() {
            self.register_error.get_or_insert(e);
        }
        self
    }

    /// The embedded one-host cluster.
    pub fn embedded(self) -> Result<Cluster, RegisterError> {
        if let Some(e) = self.register_error {
            return Err(e);
        }
        let mut config = NodeConfig::single_host();
        if let Some(c) = self.cores {
            config.cores = c;
        }
        config.gpus = self.gpus;
        config.max_workers = self.max_workers;
        Ok(Cluster { node: Node::new(config, self.registry) })
    }
}

impl Cluster {
    /// The embedded one-host cluster with this machine's cores.
    pub fn embedded() -> Cluster {
        Cluster { node: Node::new(NodeConfig::single_host(), Registry::default()) }
    }

    /// A builder for settings and job registration.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// This host's id.
    pub fn host_id(&self) -> HostId {
        self.node.host()
    }

    /// Registers a job type so this host can run it for other hosts.
    pub fn register<J: FragmentedJob>(&self) -> Result<(), RegisterError> {
        self.node.registry.write().register::<J>()
    }

    /// Runs `job` split into `count` fragments and waits for its report (DiCE
    /// `execute_fragmented`). `job` stays the caller's: local fragments and
    /// `receive_remote_result` run on it.
    pub fn execute<J: FragmentedJob>(&self, job: &Arc<J>, count: usize) -> Result<JobReport, ExecuteError> {
        self.submit(job, count)?.wait()
    }

    /// Starts `job` and returns at once with a handle for progress, cancel and the report (DiCE
    /// `execute_fragmented_async`).
    pub fn submit<J: FragmentedJob>(&self, job: &Arc<J>, count: usize) -> Result<JobHandle, ExecuteError> {
        let ij = self.node.submit(job, count)?;
        Ok(JobHandle::new(self.node.clone(), ij))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.node.shutdown();
    }
}

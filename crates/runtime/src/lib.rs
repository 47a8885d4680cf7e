//! The fragmenta node: drives the per-host protocol state machine
//! (`fragmenta_sched::protocol::Protocol`) with a worker pool, networking (`fragmenta-net`), a
//! timer and the node-local Fast I/O store.
//!
//! What this layer owns: the [`Cluster`] handle a program gets, job submission and
//! [`JobHandle`]s, the worker pool that runs fragments (never on an async reactor thread),
//! delivery of remote results to the original job, the QUIC links and their streams, and
//! carrying out what the protocol decides. What it does not own: the protocol itself (every
//! decision about placement, replicas, result streams, bounds on what peers announce,
//! heartbeats and failure detection is `fragmenta-sched`'s, the same code the deterministic
//! simulation runs), the job contract (`fragmenta-job`), encodings and transports
//! (`fragmenta-wire`, `fragmenta-net`).
//!
//! # Transports and in-process clusters
//!
//! A host's links run over the transport its [`ClusterBuilder::transport`] names: QUIC with
//! mutual TLS by default, or the in-process [`MemTransport`] on a [`MemNetwork`], with which
//! [`ClusterBuilder::in_process`] (and [`testing::in_process`]) runs every host of a
//! configuration inside one process. Only the bind differs: the node, its links, the protocol
//! and the result streams are the same code whatever the transport.
//!
//! With no configuration, [`Cluster::embedded`] is a one-host cluster inside the process: no
//! network, no certificates, and every scheduling mode has its one-host meaning (LOCAL and
//! CLUSTER run everything here; ONCE_PER_HOST has no remote host, so a count of 0 runs nothing
//! and any other count is an invalid argument; USER_DEFINED runs the fragments assigned to this
//! host's id and skips the others).
//!
//! # Clusters formed by a launcher
//!
//! With no configuration file, [`ClusterBuilder::join`] under `srun`, `mpirun` or another PMI
//! launcher forms one cluster of all the processes it started: host id = rank, rank 0 is the
//! primary and the meeting point (its host from the step's node list, `FRAGMENTA_RENDEZVOUS`
//! or `mpirun`'s URI; its port from `FRAGMENTA_PORT`, `SLURM_STEP_RESV_PORTS` or the job id).
//! The others connect to it, receive the host table (every rank's address, cores and GPUs)
//! and link to each other. Mutual TLS stays mandatory: the CA is derived from the cluster
//! secret (`FRAGMENTA_SECRET_FILE`, a mode-0600 file, or `FRAGMENTA_SECRET`) and the cluster
//! name (`slurm-<job>.<step>`, `ompi-<jobid>`), and each rank issues its own certificate with
//! a fresh key; see `fragmenta_net::secret`. A launch of several processes with neither a
//! configuration nor a secret is an error, never an embedded or unauthenticated cluster. Every
//! rank waits `FRAGMENTA_JOIN_TIMEOUT_MS` (default 30 s) for the others; rank 0's error names
//! the ranks that never joined.

mod executor;
mod membership;
mod net;
mod node;
mod registry;
mod rendezvous;
mod spmd;
pub mod testing;

pub use fragmenta_config::ClusterConfig;
pub use fragmenta_net::{MemNetwork, MemTransport, Transport};
pub use membership::{HostEvent, HostEventKind, HostEvents};
pub use net::{JoinError, SameMachineStats, ServeError};
pub use node::{default_fastio_capacity, default_fastio_socket, JobHandle, NodeConfig};
pub use registry::{LinkedJob, RegisterError, Registry};
pub use spmd::{spmd, BoxError, NestedJobs};

/// The link-time registry `#[fragmenta::job]` submits to (not for direct use).
#[doc(hidden)]
pub use inventory;

use fragmenta_fastio::{FastIoError, LocalContext};
use fragmenta_job::{ExecuteError, FragmentedJob, HostId, JobReport};
use node::Node;
use std::sync::Arc;

/// A program's handle on the cluster it belongs to (DiCE: the `IDice_transaction` factory plus
/// `execute_fragmented`). Dropping it shuts the local node down.
pub struct Cluster {
    node: Arc<Node>,
    net: Option<Arc<net::Net>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &self.node.host())
            .finish()
    }
}

/// Builds a [`Cluster`].
///
/// Cloning a builder clones its settings and registrations (and shares its transport): one
/// builder can make every host of an [in-process cluster](ClusterBuilder::in_process).
#[derive(Clone, Default)]
pub struct ClusterBuilder {
    cores: Option<f32>,
    gpus: Option<u32>,
    max_workers: usize,
    fastio_capacity: Option<u64>,
    fastio_socket: Option<std::path::PathBuf>,
    registry: Registry,
    register_error: Option<RegisterError>,
    /// How [`ClusterBuilder::join_config`] binds this host's endpoint; `None`: QUIC with the
    /// configuration's TLS files.
    transport: Option<Arc<dyn Transport>>,
}

impl ClusterBuilder {
    /// CPU capacity of this host: running fragments' `cpu_load` sums stay ≤ this. Default: the
    /// machine's available parallelism.
    pub fn cores(mut self, cores: f32) -> Self {
        self.cores = Some(cores);
        self
    }

    /// GPUs of this host (default 0), for the embedded cluster and for a cluster a launcher
    /// forms without a configuration file. Joining a configured cluster, the host's GPUs come
    /// from the configuration (the other hosts place GPU fragments by it): a different count
    /// here is refused with [`JoinError::GpusDiffer`].
    pub fn gpus(mut self, gpus: u32) -> Self {
        self.gpus = Some(gpus);
        self
    }

    /// Most fragments running at once whatever their loads (default: 4 × cores, at least 64).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = n;
        self
    }

    /// Capacity of this host's Fast I/O context in bytes (default: the configuration's
    /// `fastio_capacity_mib`, else half of the machine's memory).
    pub fn fastio_capacity(mut self, bytes: u64) -> Self {
        self.fastio_capacity = Some(bytes);
        self
    }

    /// The Unix socket this host serves its Fast I/O context on to other processes (default:
    /// the configuration's `fastio_socket`, else [`default_fastio_socket`]).
    pub fn fastio_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.fastio_socket = Some(path.into());
        self
    }

    /// The transport [`ClusterBuilder::join_config`] binds this host's endpoint on, instead of
    /// the default, QUIC over UDP with mutual TLS from the configuration's certificate files.
    /// With [`MemTransport`] the hosts of a cluster run in one process, joined to one
    /// [`MemNetwork`] at the configuration's addresses (its certificate files are not read):
    /// the same node, links, protocol and result streams as over QUIC, only the bytes move
    /// through memory. [`ClusterBuilder::in_process`] builds all the hosts of such a cluster.
    ///
    /// A cluster a launcher forms without a configuration (see
    /// [`ClusterBuilder::join`]) always uses QUIC: its rendezvous is a QUIC exchange.
    pub fn transport(mut self, transport: impl Transport + 'static) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Registers a job type so this host can run it for other hosts. Types marked with
    /// `#[fragmenta::job]` need no call: the cluster registers every one linked into the
    /// program when it is built.
    pub fn register<J: FragmentedJob>(mut self) -> Self {
        if let Err(e) = self.registry.register::<J>() {
            self.register_error.get_or_insert(e);
        }
        self
    }

    /// The embedded one-host cluster.
    pub fn embedded(mut self) -> Result<Cluster, RegisterError> {
        if let Some(e) = self.register_error {
            return Err(e);
        }
        self.registry.add_linked()?;
        let mut config = NodeConfig::single_host();
        if let Some(c) = self.cores {
            config.cores = c;
        }
        config.gpus = self.gpus.unwrap_or(0);
        config.max_workers = self.max_workers;
        if let Some(c) = self.fastio_capacity {
            config.fastio_capacity = c;
        }
        config.fastio_socket = self.fastio_socket;
        Ok(Cluster {
            node: Node::new(config, self.registry),
            net: None,
        })
    }

    /// Joins the cluster the environment describes: the configuration named by
    /// `FRAGMENTA_CONFIG` (set by `fragmenta launch`) and this process's host from
    /// `FRAGMENTA_HOST_ID` or the launcher's rank (Open MPI, PMI, a Slurm step; see
    /// [`fragmenta_config::launcher`]). With no configuration, under a launcher that started
    /// more than one process, the processes meet at rank 0 and form one cluster authenticated
    /// by a shared secret (see [`rendezvous`](crate#clusters-formed-by-a-launcher)); with no
    /// configuration and no launcher (or a launcher of one process), the embedded one-host
    /// cluster.
    pub fn join(self) -> Result<Cluster, JoinError> {
        match fragmenta_config::load_from_env()? {
            None => rendezvous::join(self),
            Some(config) => {
                // A program has no `--host-id`: say what it can do instead.
                let host =
                    fragmenta_config::resolve_host_id(&config, None).map_err(|e| match e {
                        fragmenta_config::ConfigError::NoHostId => JoinError::NoHostId,
                        e => e.into(),
                    })?;
                self.join_config(config, host)
            }
        }
    }

    /// Joins the cluster of `config` as `host`: binds its endpoint (QUIC with mutual TLS unless
    /// [`ClusterBuilder::transport`] chose another), connects to the other hosts and waits
    /// until the configuration's minimum number of hosts is up (an error naming the missing
    /// hosts after the configured wait).
    pub fn join_config(self, config: ClusterConfig, host: HostId) -> Result<Cluster, JoinError> {
        self.join_node(config, host, None)
    }

    /// Every host of `config` in this process, each a full runtime (node, worker pool, links,
    /// protocol) joined to the others over one new [`MemNetwork`] at the configuration's
    /// addresses, with this builder's registrations and settings (cores set here replace every
    /// host's configured cores; GPUs set here must match each host's, see
    /// [`ClusterBuilder::gpus`]); in the configuration's host order, so the first is the
    /// primary. A transport set with
    /// [`ClusterBuilder::transport`] is replaced by the in-process one; the configuration's
    /// certificate files are not read, and each host serves its Fast I/O context on a socket
    /// of its own (a [`ClusterBuilder::fastio_socket`] set here is not used).
    ///
    /// Dropping the returned clusters shuts them down; drop the primary first (dropping the
    /// vector does, and so does [`shutdown_all`](crate::testing::shutdown_all)) so the others
    /// hear of a shutdown rather than a lost primary. [`testing::in_process`] does all this for
    /// `n` hosts with a ready-made configuration.
    pub fn in_process(self, config: &ClusterConfig) -> Result<Vec<Cluster>, JoinError> {
        let mut builder = self;
        builder.transport = Some(Arc::new(MemTransport::new(MemNetwork::new())));
        builder.fastio_socket = None;
        // Every host waits for the others while it joins: join them all at once.
        let joined: Vec<Result<Cluster, JoinError>> = std::thread::scope(|s| {
            let joins: Vec<_> = config
                .host_ids()
                .map(|host| {
                    let b = builder.clone();
                    let config = config.clone();
                    s.spawn(move || b.join_config(config, host))
                })
                .collect();
            joins
                .into_iter()
                .map(|j| {
                    // A host that panicked while joining passes its panic on to the caller.
                    j.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
                .collect()
        });
        let mut clusters = Vec::with_capacity(joined.len());
        let mut first_error = None;
        for r in joined {
            match r {
                Ok(c) => clusters.push(c),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(clusters),
            Some(e) => {
                testing::shutdown_all(clusters);
                Err(e)
            }
        }
    }

    /// [`ClusterBuilder::join_config`], on an endpoint already bound by a rendezvous if `bound`.
    fn join_node(
        mut self,
        config: ClusterConfig,
        host: HostId,
        bound: Option<net::Bound>,
    ) -> Result<Cluster, JoinError> {
        if let Some(e) = self.register_error {
            return Err(e.into());
        }
        self.registry.add_linked()?;
        let Some(me) = config.host(host) else {
            let mut known: Vec<HostId> = config.host_ids().collect();
            known.sort_unstable();
            return Err(JoinError::UnknownHost { host, known });
        };
        if let Some(asked) = self.gpus.filter(|g| *g != me.gpus()) {
            return Err(JoinError::GpusDiffer {
                host,
                configured: me.gpus(),
                asked,
            });
        }
        let node_config = NodeConfig {
            host,
            cores: self.cores.unwrap_or(me.cores() as f32),
            gpus: me.gpus(),
            sub_cluster: me.sub_cluster(),
            max_workers: self.max_workers,
            fastio_capacity: self
                .fastio_capacity
                .or(me.fastio_capacity())
                .unwrap_or_else(node::default_fastio_capacity),
            fastio_socket: self
                .fastio_socket
                .or_else(|| me.fastio_socket().map(ToOwned::to_owned)),
        };
        let name = config.name().to_owned();
        let node = Node::new(node_config, self.registry);
        // A host of a real cluster serves its context to the other processes of its machine
        // from the start.
        if let Err(e) = node.fastio_socket(|| format!("{name}-{}", process_label())) {
            node.shutdown();
            return Err(JoinError::FastIo(e));
        }
        let started = match bound {
            Some(bound) => net::Net::start_bound(&node, config, host, bound),
            None => net::Net::start(&node, config, host, self.transport.as_deref()),
        };
        match started {
            Ok(net) => Ok(Cluster {
                node,
                net: Some(net),
            }),
            Err(e) => {
                node.shutdown();
                Err(e)
            }
        }
    }
}

/// `<n>` for the n-th cluster of this process: default Fast I/O sockets of clusters in one
/// process (tests, benchmarks) never collide (the socket's name adds the process id, see
/// `fragmenta_fastio::socket_file_name`).
fn process_label() -> String {
    static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    n.to_string()
}

impl Cluster {
    /// The embedded one-host cluster with this machine's cores.
    pub fn embedded() -> Cluster {
        Cluster {
            node: Node::new(NodeConfig::single_host(), Registry::default()),
            net: None,
        }
    }

    /// Whether this host is the primary one (the first host of the configuration, rank 0):
    /// by convention the host that initiates the program's jobs and shuts the cluster down.
    /// Always true for the embedded cluster.
    pub fn is_primary(&self) -> bool {
        self.net.as_ref().is_none_or(|n| n.is_primary())
    }

    /// Turns CLUSTER work stealing on or off for the jobs this host initiates from now on (a
    /// job already running follows the new setting from its next scheduling decision). On by
    /// default; the environment variable `FRAGMENTA_WORK_STEALING=0` (or `off`) turns it off
    /// when the cluster starts. With it on, once a CLUSTER job has nothing left to hand out and
    /// a host has run dry, fragments queued but not started on another host are taken back and
    /// run elsewhere (each still exactly once).
    pub fn set_work_stealing(&self, on: bool) {
        self.node.with_proto(|p| p.set_work_stealing(on));
    }

    /// Reclaim requests (work stealing) this host's scheduler has sent so far, over all its
    /// jobs.
    pub fn reclaims(&self) -> u64 {
        self.node.with_proto(|p| p.reclaims())
    }

    /// Hosts currently up, this one included, ascending.
    pub fn hosts(&self) -> Vec<HostId> {
        let mut hosts = vec![self.host_id()];
        if let Some(net) = &self.net {
            hosts.extend(net.peers());
        }
        hosts.sort();
        hosts
    }

    /// Membership events from now on: other hosts coming up and being declared down, with the
    /// moment this host decided it. Each call is a separate subscription. The embedded cluster
    /// has no other host: its subscription is empty. Once the primary has shut the cluster
    /// down (`serve` returned `Ok`), subscriptions end: the links closing then are no hosts
    /// going down.
    pub fn host_events(&self) -> HostEvents {
        match &self.net {
            Some(net) => net.membership.subscribe(),
            None => membership::Membership::closed(),
        }
    }

    /// Serves other hosts' fragments until the primary shuts the cluster down (returns `Ok`) or
    /// is lost (an error). Returns at once for the embedded cluster.
    pub fn serve(&self) -> Result<(), ServeError> {
        match &self.net {
            Some(net) => net.shutdown.wait(),
            None => Ok(()),
        }
    }

    /// [`Cluster::serve`] for at most `timeout`: `None` while the cluster is still up, so a host
    /// can do periodic work of its own between calls. Returns `Some(Ok(()))` at once for the
    /// embedded cluster.
    pub fn serve_timeout(&self, timeout: std::time::Duration) -> Option<Result<(), ServeError>> {
        match &self.net {
            Some(net) => net.shutdown.wait_timeout(timeout),
            None => Some(Ok(())),
        }
    }

    /// Shuts the cluster down: the primary tells every host to stop; any host stops its own
    /// node. Dropping the handle does the same.
    pub fn shutdown(self) {
        drop(self);
    }

    /// A builder for settings and job registration.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// This host's Fast I/O context: what the program publishes here, jobs' fragments on this
    /// host read through [`Transaction::fastio`](fragmenta_job::Transaction::fastio) without a
    /// copy.
    pub fn fastio(&self) -> LocalContext {
        self.node.fastio.clone()
    }

    /// The Unix socket on which other processes of this machine reach this host's Fast I/O
    /// context (with `fragmenta_fastio::RemoteContext::connect`). An embedded cluster starts
    /// serving on the first call; a host of a configured cluster serves from the start.
    pub fn fastio_socket(&self) -> Result<std::path::PathBuf, FastIoError> {
        self.node
            .fastio_socket(|| format!("embedded-{}", process_label()))
    }

    /// The same-machine path on this host: the peers proven to be processes of this machine
    /// (their results come through this host's Fast I/O context, and results for them go
    /// through theirs), and how many chunks went that way. Empty for the embedded cluster and
    /// where `FRAGMENTA_SAME_MACHINE=0` forces QUIC.
    pub fn same_machine(&self) -> SameMachineStats {
        self.net
            .as_ref()
            .map(|n| n.same_machine_stats())
            .unwrap_or_default()
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
    pub fn execute<J: FragmentedJob>(
        &self,
        job: &Arc<J>,
        count: usize,
    ) -> Result<JobReport, ExecuteError> {
        self.node.submit_and_wait(job, count)
    }

    /// Starts `job` and returns at once with a handle for progress, cancel and the report (DiCE
    /// `execute_fragmented_async`).
    pub fn submit<J: FragmentedJob>(
        &self,
        job: &Arc<J>,
        count: usize,
    ) -> Result<JobHandle, ExecuteError> {
        let ij = self.node.submit(job, count)?;
        Ok(JobHandle::new(self.node.clone(), ij))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(net) = self.net.take() {
            net.shutdown(net.is_primary());
            net.membership.close();
        }
        *self.node.remote.write() = None;
        self.node.shutdown();
    }
}

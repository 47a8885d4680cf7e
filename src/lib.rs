//! **fragmenta** runs *fragmented jobs* on a cluster: a job splits into N fragments that run on
//! the CPUs and GPUs of many hosts, remote fragments stream their results back to the host that
//! started the job, and hosts share large data through a node-local shared-memory store.
//!
//! This crate is the facade: it re-exports the job API (`fragmenta-job`) and the runtime
//! (`fragmenta-runtime`). A user crate depends on `fragmenta` and `serde` only.
//!
//! ```
//! use fragmenta::{ClassId, Cluster, ExecutionContext, FragmentedJob, Transaction};
//! use serde::{Deserialize, Serialize};
//! use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Squares { #[serde(skip)] sum: AtomicU64 }
//!
//! impl FragmentedJob for Squares {
//!     const CLASS_ID: ClassId = ClassId::from_name("doc.squares");
//!     fn execute_fragment(&self, _: &Transaction, i: usize, _: usize, _: &ExecutionContext) {
//!         self.sum.fetch_add((i * i) as u64, Ordering::Relaxed);
//!     }
//! }
//!
//! let cluster = Cluster::embedded();
//! let job = Arc::new(Squares::default());
//! let report = cluster.execute(&job, 100).unwrap();
//! assert!(report.is_complete());
//! assert_eq!(job.sum.load(Ordering::Relaxed), (0..100u64).map(|i| i * i).sum());
//! ```

pub use fragmenta_job::{share, Fragment, TypedJob};
pub use fragmenta_job::{
    Cancellation, ChunkBuffer, ClassId, ExecuteError, ExecutionContext, FailureReason, FetchError,
    FragmentFailure, FragmentSet, FragmentedJob, HostId, InvalidArgument, JobId, JobReport,
    RdmaBuffer, RdmaContext, RdmaError, RdmaRead, RdmaStats, RdmaWrite, ResultReader, ResultWriter,
    SchedulingMode, Transaction,
};
pub use fragmenta_runtime::{
    default_fastio_capacity, default_fastio_socket, Cluster, ClusterBuilder, ClusterConfig,
    HostEvent, HostEventKind, HostEvents, JobHandle, JoinError, RegisterError, Registry,
    SameMachineStats, ServeError,
};

/// Transports a cluster's hosts can link over ([`ClusterBuilder::transport`]): the default is
/// QUIC with mutual TLS from the configuration's files; [`MemTransport`] on a [`MemNetwork`]
/// runs the hosts of one cluster inside one process.
pub use fragmenta_runtime::{MemNetwork, MemTransport, Transport};

/// Clusters of several hosts in one process, for tests, examples and notebooks: every host a
/// full runtime, linked over an in-process network.
///
/// ```
/// use fragmenta::{ClassId, ExecutionContext, FragmentedJob, ResultReader, ResultWriter};
/// use fragmenta::{SchedulingMode, Transaction};
/// use serde::{Deserialize, Serialize};
/// use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
///
/// /// Sums the ids of the hosts its fragments ran on.
/// #[derive(Serialize, Deserialize, Default)]
/// struct HostSum { #[serde(skip)] sum: AtomicU64 }
///
/// #[fragmenta::job]
/// impl FragmentedJob for HostSum {
///     fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, ctx: &ExecutionContext) {
///         self.sum.fetch_add(u64::from(ctx.host().0), Ordering::Relaxed);
///     }
///     fn execute_fragment_remote(&self, out: &mut ResultWriter<'_>, _: &Transaction,
///         _: usize, _: usize, ctx: &ExecutionContext) -> std::io::Result<()> {
///         out.write_all(&u64::from(ctx.host().0).to_le_bytes())
///     }
///     fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
///         let host = u64::from_le_bytes(r.bytes().try_into().unwrap());
///         self.sum.fetch_add(host, Ordering::Relaxed);
///     }
///     fn scheduling_mode(&self) -> SchedulingMode { SchedulingMode::OncePerHost }
/// }
///
/// let hosts = fragmenta::testing::in_process(3).unwrap();
/// let job = Arc::new(HostSum::default());
/// // Count 0: one fragment on each other host, 1 and 2, results streamed back to host 0.
/// let report = hosts[0].execute(&job, 0).unwrap();
/// assert_eq!(report.count, 2);
/// assert_eq!(job.sum.load(Ordering::Relaxed), 1 + 2);
/// fragmenta::testing::shutdown_all(hosts);
/// ```
pub use fragmenta_runtime::testing;

/// Typed operator pipelines (Clara api-version 0.5.0) over Fast I/O Variables: definitions,
/// Rust operators, and the thread, process and cluster runners.
pub use fragmenta_pipeline as pipeline;

/// Shows the runtime's log on stderr: what `RUST_LOG` selects (for instance
/// `RUST_LOG=fragmenta_runtime=debug` for links, jobs and fragment blocks with their ids), or
/// when it is not set, fragmenta's own `info` level and above and other crates' warnings, so
/// notices such as huge pages being off for Fast I/O and lost links are seen. Call it first thing in `main`. Returns false, changing
/// nothing, when the program already installed a `tracing` subscriber (its own, or by an
/// earlier call).
pub fn init_logging() -> bool {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,fragmenta=info,fragmenta_runtime=info,fragmenta_fastio=info,fragmenta_net=info,fragmenta_pipeline=info",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .is_ok()
}

/// The node-local shared-memory data plane (Clara Fast I/O): contexts, allocations, typed views.
pub use fragmenta_fastio as fastio;
pub use fragmenta_fastio::{Allocation, ElementType, FastIo, FastIoError, LocalContext};
pub use fragmenta_fastio::{
    ContextStats, Element, ReadGuard, RemoteContext, WriteGuard, MAX_DIMS, MAX_NAME_LEN,
};

/// Registers a job type with every cluster the program builds, on every host: put it on the
/// `impl FragmentedJob for T` or `impl TypedJob for T` block. Without a `CLASS_ID` in the
/// block it adds one from the type's module path and name; `#[fragmenta::job(name = "...")]`
/// names it instead. Explicit [`ClusterBuilder::register`] stays for types without it.
///
/// ```
/// use fragmenta::*;
/// use serde::{Deserialize, Serialize};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Squares { #[serde(skip)] sum: AtomicU64 }
///
/// #[fragmenta::job]
/// impl TypedJob for Squares {
///     type Output = u64;
///     fn run(&self, f: &Fragment<'_>) -> u64 { (f.index * f.index) as u64 }
///     fn merge(&self, _: usize, square: u64) { self.sum.fetch_add(square, Ordering::Relaxed); }
///     fn scheduling_mode(&self) -> SchedulingMode { SchedulingMode::Cluster }
/// }
///
/// let registry = Registry::linked().unwrap();
/// assert!(registry.contains(<Squares as FragmentedJob>::CLASS_ID));
/// ```
///
/// A generic job type is refused at compile time (each instantiation is a type of its own:
/// register those explicitly):
///
/// ```compile_fail
/// use fragmenta::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Echo<T>(T);
///
/// #[fragmenta::job]
/// impl<T: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> TypedJob for Echo<T> {
///     type Output = ();
///     fn run(&self, _: &Fragment<'_>) {}
///     fn merge(&self, _: usize, (): ()) {}
/// }
/// ```
pub use fragmenta_macros::job;
pub use fragmenta_runtime::{spmd, BoxError, NestedJobs};

/// Not an API: what `#[fragmenta::job]` expands to refers to, and runtime plumbing that the
/// runtime makes and its own tests use (cancellation tokens, chunk sinks, fetchers, job
/// parameters as the scheduler reads them, making and filling job reports, node settings).
/// It may change without notice.
#[doc(hidden)]
pub mod __private {
    pub use fragmenta_job::{report_plumbing, Abort, CancelToken, ChunkSink, Fetch, JobParams};
    pub use fragmenta_runtime::inventory;
    pub use fragmenta_runtime::LinkedJob;
    pub use fragmenta_runtime::NodeConfig;
}

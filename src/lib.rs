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

pub use fragmenta_job::{
    Cancellation, ClassId, ExecuteError, ExecutionContext, FailureReason, FetchError,
    FragmentFailure, FragmentSet, FragmentedJob, HostId, InvalidArgument, JobId, JobReport,
    RdmaBuffer, RdmaContext, RdmaError, RdmaRead, RdmaStats, RdmaWrite, ResultReader, ResultWriter,
    SchedulingMode, Transaction,
};
pub use fragmenta_runtime::{
    default_fastio_capacity, default_fastio_socket, Cluster, ClusterBuilder, ClusterConfig,
    HostEvent, HostEventKind, HostEvents, JobHandle, JoinError, RegisterError, ServeError,
};

/// Runtime plumbing: what the runtime makes and tests of the runtime itself use (cancellation
/// tokens, chunk sinks, fetchers, job parameters as the scheduler reads them, node settings).
/// Not part of the API a job or a program needs; it may change without notice.
#[doc(hidden)]
pub mod __private {
    pub use fragmenta_job::{Abort, CancelToken, ChunkSink, Fetch, JobParams};
    pub use fragmenta_runtime::{NodeConfig, Registry};
}

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

//! What a fragment sees of the host it runs on.

use crate::{HostId, JobId};
use fragmenta_fastio::{Allocation, FastIo, FastIoError, LocalContext};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared cancellation flag. Cloning shares the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A flag that is not set.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Sets the flag; returns whether this call set it (false if it was already set).
    pub fn cancel(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// Whether the flag is set.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The flag itself, for loops that poll it without the `Arc` indirection.
    #[inline]
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

/// A read-only view of a job's cancellation, for its fragments: they may watch it, not set it
/// (a fragment that wants the whole job stopped calls [`Transaction::abort`], which goes
/// through the job's scheduler).
#[derive(Clone, Debug)]
pub struct Cancellation(CancelToken);

impl Cancellation {
    /// Whether the job was cancelled.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Asks the runtime to cancel a job through its scheduler. Implemented by the runtime.
pub trait Abort: Send + Sync {
    /// Cancels the job, as [`Transaction::abort`] asks.
    fn abort(&self);
}

/// Where and how a fragment runs. Mirrors DiCE's `IJob_execution_context`.
#[derive(Clone, Debug)]
pub struct ExecutionContext {
    host: HostId,
    worker: usize,
    gpus: Vec<u32>,
    cancel: CancelToken,
}

impl ExecutionContext {
    /// A context for a fragment running on `host` in worker thread `worker`, given `gpus`
    /// (ordinals, empty for CPU jobs). Made by the runtime; tests may make their own.
    pub fn new(host: HostId, worker: usize, gpus: Vec<u32>, cancel: CancelToken) -> Self {
        ExecutionContext {
            host,
            worker,
            gpus,
            cancel,
        }
    }

    /// The host the fragment runs on.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Index of the worker thread running the fragment (0-based, per host).
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The GPU assigned to this fragment, if the job has a GPU load (the first one when a
    /// fragment's load spans several GPUs).
    pub fn gpu(&self) -> Option<u32> {
        self.gpus.first().copied()
    }

    /// Every GPU assigned to this fragment (several when `gpu_load` exceeds 1).
    pub fn gpus(&self) -> &[u32] {
        &self.gpus
    }

    /// Whether the job was cancelled: a running fragment should stop early when this is true.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The job's cancellation, read-only.
    pub fn cancellation(&self) -> Cancellation {
        Cancellation(self.cancel.clone())
    }
}

/// The job's scope on one host. Mirrors DiCE's `IDice_transaction` as passed to fragments.
///
/// It names the host and the job, carries the job's cancellation, gives the fragment its host's
/// Fast I/O context ([`fastio`](Self::fastio): allocations shared by every job and process on
/// the host) and brings publications from other hosts ([`fetch`](Self::fetch)).
#[derive(Clone)]
pub struct Transaction {
    host: HostId,
    job: JobId,
    cancel: CancelToken,
    fastio: Option<LocalContext>,
    fetcher: Option<Arc<dyn Fetch>>,
    aborter: Option<Arc<dyn Abort>>,
    runtime: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("host", &self.host)
            .field("job", &self.job)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("fastio", &self.fastio.is_some())
            .field("fetch", &self.fetcher.is_some())
            .field("runtime", &self.runtime.is_some())
            .finish()
    }
}

impl Transaction {
    /// A transaction for `job` on `host`, without a Fast I/O context. Made by the runtime (which
    /// always attaches its host's context); tests may make their own.
    pub fn new(host: HostId, job: JobId, cancel: CancelToken) -> Self {
        Transaction {
            host,
            job,
            cancel,
            fastio: None,
            fetcher: None,
            aborter: None,
            runtime: None,
        }
    }

    /// The same transaction with a way to abort its job through the scheduler.
    pub fn with_abort(mut self, aborter: Arc<dyn Abort>) -> Self {
        self.aborter = Some(aborter);
        self
    }

    /// The same transaction with a handle on the runtime that runs it, through which a
    /// fragment starts nested jobs (the runtime attaches its own; the job API never looks
    /// inside it).
    pub fn with_runtime(mut self, runtime: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The runtime handle attached with [`with_runtime`](Self::with_runtime); `None` for a
    /// transaction made by hand. Fragments start nested jobs through the runtime's API on it
    /// (`fragmenta::NestedJobs`), not through this.
    pub fn runtime(&self) -> Option<&Arc<dyn std::any::Any + Send + Sync>> {
        self.runtime.as_ref()
    }

    /// The same transaction with the host's Fast I/O context attached.
    pub fn with_fastio(mut self, context: LocalContext) -> Self {
        self.fastio = Some(context);
        self
    }

    /// The same transaction with a way to fetch publications from other hosts.
    pub fn with_fetch(mut self, fetcher: Arc<dyn Fetch>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// The host this transaction lives on.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// The job this transaction belongs to.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// Whether the job was cancelled or the transaction aborted.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The job's cancellation, read-only.
    pub fn cancellation(&self) -> Cancellation {
        Cancellation(self.cancel.clone())
    }

    /// Aborts the whole job from inside one of its fragments: it is cancelled as
    /// `JobHandle::cancel` does (unstarted fragments are skipped and reported cancelled,
    /// `cancel()` runs on the original and every replica, running fragments see
    /// [`is_cancelled`](Self::is_cancelled), which is true here at once). A transaction made by
    /// hand, outside the runtime, only sets its own flag.
    pub fn abort(&self) {
        self.cancel.cancel();
        if let Some(a) = &self.aborter {
            a.abort();
        }
    }

    /// This host's Fast I/O context (Clara's `nvidia_clara_fastio_context`): what one job
    /// publishes here, a later job's fragments on the same host `get` and map without a copy,
    /// and so do other processes connected to the host's context socket.
    ///
    /// Always present inside the runtime; `None` only for a transaction made by hand with
    /// [`Transaction::new`].
    pub fn fastio(&self) -> Option<&LocalContext> {
        self.fastio.as_ref()
    }

    /// Brings the publication `name` of `host`'s Fast I/O context into a new, private allocation
    /// of this host's context, with its element type and dimensions. The bytes are streamed
    /// into the mapped allocation as they arrive (no whole intermediate copy). On this host's own
    /// id it is a plain [`get`](fragmenta_fastio::FastIo::get): the same memory, no copy.
    ///
    /// Blocks the calling fragment until the bytes are in; returns
    /// [`FetchError::Cancelled`] if the job is cancelled meanwhile. A host of the cluster's
    /// configuration that this host has no link to yet (hosts of a freshly started cluster
    /// link to each other a little after each joins) is waited for, up to the failure timeout,
    /// before the fetch fails with [`FetchError::UnknownHost`].
    pub fn fetch(&self, host: HostId, name: &str) -> Result<Allocation, FetchError> {
        self.fetch_into(host, name, None)
    }

    /// [`fetch`](Self::fetch) into an allocation of this host that is no longer needed: when
    /// `reuse` is private (unpublished) and has the publication's size, the bytes land in it
    /// and it comes back with the publication's metadata; otherwise it is released and a new
    /// allocation is made. For repeated fetches (a frame's image regions, say) this skips the
    /// cost of fresh memory, which on some machines exceeds the network's.
    pub fn fetch_reusing(
        &self,
        host: HostId,
        name: &str,
        reuse: Allocation,
    ) -> Result<Allocation, FetchError> {
        self.fetch_into(host, name, Some(reuse))
    }

    fn fetch_into(
        &self,
        host: HostId,
        name: &str,
        reuse: Option<Allocation>,
    ) -> Result<Allocation, FetchError> {
        let Some(local) = self.fastio.as_ref() else {
            return Err(FetchError::NoContext);
        };
        if host == self.host {
            // The same memory: nothing to copy, so nothing to reuse.
            drop(reuse);
            return local.get(name).map_err(|e| match e {
                FastIoError::UnknownName(name) => FetchError::UnknownName { host, name },
                other => FetchError::Local(other),
            });
        }
        match &self.fetcher {
            Some(f) => f.fetch(host, name, local, reuse, &self.cancel),
            None => Err(FetchError::UnknownHost(host)),
        }
    }
}

/// How the runtime brings a publication from another host: implemented by the multi-host
/// runtime over its transport. Mirrors the fetch half of Clara's distributed Fast I/O.
pub trait Fetch: Send + Sync {
    /// Copies the publication `name` of `host` into `reuse` when it is an unpublished
    /// allocation of the publication's size, else into a new allocation of `into`, streaming
    /// the bytes into its mapping, and returns the (unpublished) allocation with the
    /// publication's metadata. Stops with [`FetchError::Cancelled`] once `cancel` is set.
    fn fetch(
        &self,
        host: HostId,
        name: &str,
        into: &LocalContext,
        reuse: Option<Allocation>,
        cancel: &CancelToken,
    ) -> Result<Allocation, FetchError>;
}

/// Why [`Transaction::fetch`] failed. Comparable, so a caller (or a test) can match the exact
/// failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The transaction has no Fast I/O context (made by hand, outside the runtime).
    #[error("this transaction has no Fast I/O context")]
    NoContext,
    /// The host is not a live member of the cluster: not in the configuration, declared dead,
    /// or not linked to this host within the failure timeout.
    #[error("host {0} is not a live member of the cluster")]
    UnknownHost(HostId),
    /// Nothing is published under `name` on `host`.
    #[error("host {host} has no publication named {name:?}")]
    UnknownName {
        /// The host asked.
        host: HostId,
        /// The name asked for.
        name: String,
    },
    /// The publication exists on `host` but could not be read there (for instance it is mapped
    /// for writing: a conflicting map is refused, never read dirty).
    #[error("host {host} could not read {name:?}: {error}")]
    Remote {
        /// The host asked.
        host: HostId,
        /// The name asked for.
        name: String,
        /// The Fast I/O error the host's context gave.
        error: FastIoError,
    },
    /// The host described the publication with metadata that does not fit its bytes (an
    /// element type and dimensions whose product is not its size); the copy is dropped.
    #[error("host {host} sent metadata for {name:?} that does not describe its bytes: {error}")]
    BadMetadata {
        /// The host asked.
        host: HostId,
        /// The name asked for.
        name: String,
        /// Why this host's context refused the metadata.
        error: FastIoError,
    },
    /// This host's context refused the copy (for instance its capacity is exceeded).
    #[error("local Fast I/O: {0}")]
    Local(FastIoError),
    /// The connection to the host failed during the fetch, or the host sent bytes that do not
    /// follow the protocol.
    #[error("fetch from host {host} failed: {reason}")]
    Transport {
        /// The host asked.
        host: HostId,
        /// What went wrong.
        reason: String,
    },
    /// The job was cancelled while the fetch was in progress.
    #[error("the job was cancelled during the fetch")]
    Cancelled,
    /// `fetch` was called on a thread of an async runtime, where blocking would stall every
    /// task of that runtime (the host's connections among them); nothing was sent. Call it
    /// from a fragment or from a plain thread.
    #[error(
        "fetch called from an async runtime thread; call it from a fragment or a plain thread"
    )]
    AsyncThread,
}

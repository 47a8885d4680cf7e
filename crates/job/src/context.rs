//! What a fragment sees of the host it runs on.

use crate::{HostId, JobId};
use std::any::Any;
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

    /// The job's cancellation flag.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }
}

/// The job's scope on one host. Mirrors DiCE's `IDice_transaction` as passed to fragments.
///
/// It names the host and the job, carries the job's cancellation, and gives access to host
/// services the runtime provides (such as the node's Fast I/O context) through
/// [`service`](Transaction::service).
#[derive(Clone)]
pub struct Transaction {
    host: HostId,
    job: JobId,
    cancel: CancelToken,
    services: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("host", &self.host)
            .field("job", &self.job)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish()
    }
}

impl Transaction {
    /// A transaction for `job` on `host`. Made by the runtime; tests may make their own.
    pub fn new(host: HostId, job: JobId, cancel: CancelToken) -> Self {
        Transaction {
            host,
            job,
            cancel,
            services: None,
        }
    }

    /// The same transaction with host services attached (see [`service`](Self::service)).
    pub fn with_services(mut self, services: Arc<dyn Any + Send + Sync>) -> Self {
        self.services = Some(services);
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

    /// A host service of type `T` provided by the runtime, if present.
    pub fn service<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.services.as_deref().and_then(|s| s.downcast_ref::<T>())
    }
}

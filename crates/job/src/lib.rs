//! The fragmented job API of fragmenta: the [`FragmentedJob`] trait and the types its methods
//! see. It mirrors NVIDIA DiCE's `IFragmented_job` with DiCE's defaults (the `Fragmented_job`
//! mixin) and Rust idioms in place of C++ ones.
//!
//! This crate owns the *contract* between a user's job and the runtime; it runs nothing. The
//! scheduler lives in `fragmenta-sched`, execution in `fragmenta-runtime`; users depend on the
//! `fragmenta` facade, which re-exports everything here.
//!
//! # A job
//!
//! ```
//! use fragmenta_job::*;
//! use serde::{Deserialize, Serialize};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct SumOfSquares {
//!     #[serde(skip)]
//!     total: AtomicU64,
//! }
//!
//! impl FragmentedJob for SumOfSquares {
//!     const CLASS_ID: ClassId = ClassId::from_name("example.sum-of-squares");
//!     fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
//!         self.total.fetch_add((index * index) as u64, Ordering::Relaxed);
//!     }
//! }
//! ```
//!
//! # Jobs must be `Sync`
//!
//! Fragments of one job run in parallel on the same instance, so a job's state must be safe to
//! share: a job with a `Cell` is rejected at compile time; use atomics or a `Mutex`.
//!
//! ```compile_fail
//! use fragmenta_job::*;
//! use serde::{Deserialize, Serialize};
//! use std::cell::Cell;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Racy { hits: Cell<u64> }
//!
//! impl FragmentedJob for Racy {
//!     const CLASS_ID: ClassId = ClassId::from_name("example.racy");
//!     fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
//!         self.hits.set(self.hits.get() + 1);
//!     }
//! }
//! ```

mod context;
mod fragments;
mod ids;
mod mode;
mod rdma;
mod report;
mod results;
mod typed;

pub use context::{
    Abort, CancelToken, Cancellation, ExecutionContext, Fetch, FetchError, Transaction,
};
pub use fragments::FragmentSet;
pub use ids::{ClassId, HostId, JobId};
pub use mode::SchedulingMode;
pub use rdma::{RdmaBuffer, RdmaContext, RdmaError, RdmaRead, RdmaStats, RdmaWrite};
pub use report::{
    plumbing as report_plumbing, ExecuteError, FailureReason, FragmentFailure, InvalidArgument,
    JobReport,
};
pub use results::{ChunkBuffer, ChunkSink, LentBuffer, ResultReader, ResultWriter, SharedBytes};
pub use typed::{share, Fragment, TypedJob};

use serde::{de::DeserializeOwned, Serialize};

/// A job split into fragments that run in parallel on the hosts of a cluster. Mirrors DiCE's
/// `IFragmented_job`; every method but [`execute_fragment`](Self::execute_fragment) has DiCE's
/// default (LOCAL, cpu_load 1.0, gpu_load 0.0, priority 0, no thread limit, chunks in order,
/// no-op cancel).
///
/// Serialization (DiCE `serialize`/`deserialize`) is serde: the initiator serializes the job
/// once per job, when it is submitted and another host is up to receive it (the same bytes go to
/// every remote host that runs fragments of it), and each remote host deserializes it once into
/// a *replica* shared by all fragments that run there. Local fragments use the original. Fields
/// that must not travel (counters, caches) take `#[serde(skip)]`.
///
/// Which instance runs what: [`execute_fragment`](Self::execute_fragment) runs on the original;
/// [`execute_fragment_remote`](Self::execute_fragment_remote) runs on a replica, except for a
/// CLUSTER fragment reassigned after a host failure once chunks of its earlier attempt were
/// delivered: that one reruns `execute_fragment_remote` wherever it is placed next, the
/// initiator's **original instance** included, so the chunks already delivered are skipped by
/// sequence number. Write `execute_fragment_remote` so it also works on the original.
///
/// `Sync` is required because fragments run concurrently on one instance (DiCE: "all accesses to
/// instance data need to be properly serialized").
pub trait FragmentedJob: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable identifier of this job type, the same on every host (DiCE `get_class_id`). A
    /// remote host finds the type by this id among the types registered with its runtime.
    const CLASS_ID: ClassId;

    /// Runs fragment `index` of `count` on the initiating host, on the original instance
    /// (DiCE `execute_fragment`). Other fragments may run at the same time.
    fn execute_fragment(
        &self,
        transaction: &Transaction,
        index: usize,
        count: usize,
        context: &ExecutionContext,
    );

    /// Runs fragment `index` of `count` on a remote host, on that host's replica, writing
    /// results to `result` (DiCE `execute_fragment_remote`). It may also run on the initiator's
    /// original instance: a CLUSTER fragment whose attempt on a failed host already delivered
    /// chunks runs this method again wherever it is reassigned, the initiator included. Every `flush()` becomes exactly one
    /// [`receive_remote_result`](Self::receive_remote_result) call on the initiator, even when
    /// empty; returning flushes the rest (one more call). An error fails the fragment
    /// ([`FailureReason::Returned`], with its message); results that can no longer be sent
    /// (the job was released or its initiator is gone) fail it with
    /// [`FailureReason::InitiatorGone`].
    ///
    /// Chunking must be deterministic: after a host failure a fragment may run again, and chunks
    /// already delivered are skipped by sequence number.
    ///
    /// Default: runs [`execute_fragment`](Self::execute_fragment) on the replica and sends no
    /// data (the initiator still gets the one final, empty chunk).
    fn execute_fragment_remote(
        &self,
        result: &mut ResultWriter<'_>,
        transaction: &Transaction,
        index: usize,
        count: usize,
        context: &ExecutionContext,
    ) -> std::io::Result<()> {
        let _ = result;
        self.execute_fragment(transaction, index, count, context);
        Ok(())
    }

    /// Receives one chunk of fragment `index`'s remote result, on the original instance (DiCE
    /// `receive_remote_result`). The calls for one job come one at a time, never concurrently
    /// (other jobs' deliveries run in parallel): in ascending (fragment, chunk) order, or in
    /// arrival order when [`allow_non_sequential_chunks`](Self::allow_non_sequential_chunks) is
    /// true. A panic here fails the fragment (`FailureReason::ReceivePanicked`); its later chunks
    /// are not delivered. Default: ignores the chunk.
    fn receive_remote_result(
        &self,
        result: &mut ResultReader,
        transaction: &Transaction,
        index: usize,
        count: usize,
    ) {
        let _ = (result, transaction, index, count);
    }

    /// Returns the buffer the result of remote fragment `index` should land in, or `None` to use
    /// [`execute_fragment_remote`](Self::execute_fragment_remote) (DiCE
    /// `get_rdma_result_buffer`). Called on the initiator: for fragment 0 when a job that may run
    /// remotely is submitted (a buffer there selects the RDMA result path for the whole job,
    /// even if fragment 0 then runs on the initiator), and for each other fragment when it is
    /// dispatched to a remote host. The buffer must hold the largest result the fragment can
    /// produce. Default: `None`.
    fn get_rdma_result_buffer(&self, rdma: &RdmaContext, index: usize) -> Option<RdmaBuffer> {
        let _ = (rdma, index);
        None
    }

    /// Runs fragment `index` remotely and returns its result in a buffer from `rdma`, or `None`
    /// for no result (DiCE `execute_fragment_remote_rdma`). Allocating more than the receiver's
    /// buffer for this fragment fails; a buffer larger than the receiver's made elsewhere is
    /// not sent, and the fragment fails with [`FailureReason::RdmaTooLarge`]. The same buffer
    /// may be returned by several fragments; it
    /// must stay unchanged until it returns to the context. Default: runs
    /// [`execute_fragment`](Self::execute_fragment) and returns `None`.
    fn execute_fragment_remote_rdma(
        &self,
        transaction: &Transaction,
        index: usize,
        count: usize,
        rdma: &RdmaContext,
        context: &ExecutionContext,
    ) -> Option<RdmaBuffer> {
        let _ = rdma;
        self.execute_fragment(transaction, index, count, context);
        None
    }

    /// Receives the result of remote fragment `index` in the buffer that
    /// [`get_rdma_result_buffer`](Self::get_rdma_result_buffer) returned (DiCE
    /// `receive_remote_result_rdma`). The buffer may be kept for later. Default: ignores it.
    fn receive_remote_result_rdma(
        &self,
        buffer: RdmaBuffer,
        transaction: &Transaction,
        index: usize,
        count: usize,
    ) {
        let _ = (buffer, transaction, index, count);
    }

    /// Assigns each fragment to a host for [`SchedulingMode::UserDefined`] (DiCE
    /// `assign_fragments_to_hosts`): `slots[i]` is the host of fragment `i`. Slots arrive filled
    /// with [`HostId::UNASSIGNED`]; fragments left there, or put on a host the cluster does not
    /// know, are skipped and listed in the report. Default: assigns nothing.
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        let _ = slots;
    }

    /// The scheduling mode (DiCE `get_scheduling_mode`). Default: [`SchedulingMode::Local`].
    /// Must not change for an instance.
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Local
    }

    /// CPU load of one fragment (DiCE `get_cpu_load`): a host with C cores runs fragments
    /// concurrently while the sum of their loads stays ≤ C. Default 1.0. Must not change.
    fn cpu_load(&self) -> f32 {
        1.0
    }

    /// GPU load of one fragment (DiCE `get_gpu_load`): fragments with a load above 0 run only on
    /// hosts with GPUs, never more per GPU than its capacity of 1.0. Default 0.0. Must not
    /// change.
    fn gpu_load(&self) -> f32 {
        0.0
    }

    /// Called once on the original and once on each replica when the job is cancelled before all
    /// fragments completed (DiCE `cancel`). Fragments not yet started are skipped regardless;
    /// running ones see [`ExecutionContext::is_cancelled`]. Default: does nothing.
    fn cancel(&self) {}

    /// Priority among waiting fragments: a smaller value runs first (DiCE `get_priority`).
    /// Negative values are reserved and rejected. Default 0.
    fn priority(&self) -> i8 {
        0
    }

    /// Most fragments of this job running at once on each host; 0 means no limit (DiCE
    /// `get_thread_limit`). Default 0.
    fn thread_limit(&self) -> usize {
        0
    }

    /// Whether remote result chunks may be delivered as they arrive (DiCE
    /// `get_allow_non_sequential_chunks`). When false (the default), `receive_remote_result`
    /// calls come one at a time in ascending (fragment, chunk) order.
    fn allow_non_sequential_chunks(&self) -> bool {
        false
    }
}

impl HostId {
    /// The value assignment slots hold before `assign_fragments_to_hosts` fills them; never a
    /// real host.
    pub const UNASSIGNED: HostId = HostId(u32::MAX);
}

/// The scheduling parameters of a job, read once from its [`FragmentedJob`] methods when it is
/// submitted (DiCE requires them not to change for an instance).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct JobParams {
    /// Scheduling mode.
    pub mode: SchedulingMode,
    /// CPU load per fragment.
    pub cpu_load: f32,
    /// GPU load per fragment.
    pub gpu_load: f32,
    /// Priority (smaller runs first).
    pub priority: i8,
    /// Per-host limit of concurrently running fragments, 0 = none.
    pub thread_limit: usize,
    /// Whether chunks may be delivered out of order.
    pub allow_non_sequential_chunks: bool,
}

impl JobParams {
    /// Reads the parameters of `job`.
    pub fn of<J: FragmentedJob>(job: &J) -> JobParams {
        JobParams {
            mode: job.scheduling_mode(),
            cpu_load: job.cpu_load(),
            gpu_load: job.gpu_load(),
            priority: job.priority(),
            thread_limit: job.thread_limit(),
            allow_non_sequential_chunks: job.allow_non_sequential_chunks(),
        }
    }

    /// Checks what can be checked without knowing the cluster.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        if self.priority < 0 {
            return Err(InvalidArgument::NegativePriority(self.priority));
        }
        if !self.cpu_load.is_finite() || self.cpu_load < 0.0 {
            return Err(InvalidArgument::InvalidCpuLoad(self.cpu_load));
        }
        if !self.gpu_load.is_finite() || self.gpu_load < 0.0 {
            return Err(InvalidArgument::InvalidGpuLoad(self.gpu_load));
        }
        if self.mode == SchedulingMode::OncePerHost && self.gpu_load > 0.0 {
            return Err(InvalidArgument::OncePerHostWithGpuLoad(self.gpu_load));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct Plain;
    impl FragmentedJob for Plain {
        const CLASS_ID: ClassId = ClassId::from_name("test.plain");
        fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    }

    #[test]
    fn defaults_are_dices() {
        let p = JobParams::of(&Plain);
        assert_eq!(
            p,
            JobParams {
                mode: SchedulingMode::Local,
                cpu_load: 1.0,
                gpu_load: 0.0,
                priority: 0,
                thread_limit: 0,
                allow_non_sequential_chunks: false,
            }
        );
        assert_eq!(p.validate(), Ok(()));
        assert!(Plain
            .get_rdma_result_buffer(&RdmaContext::default(), 0)
            .is_none());
    }

    #[test]
    fn validation_rejects_reserved_and_invalid_values() {
        let base = JobParams::of(&Plain);
        let bad = |f: fn(&mut JobParams)| {
            let mut p = base.clone();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert_eq!(
            bad(|p| p.priority = -1),
            InvalidArgument::NegativePriority(-1)
        );
        assert!(matches!(
            bad(|p| p.cpu_load = f32::NAN),
            InvalidArgument::InvalidCpuLoad(_)
        ));
        assert_eq!(
            bad(|p| p.gpu_load = -1.0),
            InvalidArgument::InvalidGpuLoad(-1.0)
        );
        assert_eq!(
            bad(|p| {
                p.mode = SchedulingMode::OncePerHost;
                p.gpu_load = 0.5
            }),
            InvalidArgument::OncePerHostWithGpuLoad(0.5)
        );
    }

    #[test]
    fn class_ids_are_stable_and_distinct() {
        assert_eq!(ClassId::from_name("a"), ClassId::from_name("a"));
        assert_ne!(ClassId::from_name("a"), ClassId::from_name("b"));
        // FNV-1a 128 of "a", fixed forever: changing the hash would break mixed-version clusters.
        assert_eq!(
            ClassId::from_name("a").get(),
            0xd228cb696f1a8caf78912b704e4a8964
        );
    }
}

//! What a job execution returns, and its errors.

use crate::{ClassId, FragmentSet, HostId, JobId, SchedulingMode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a fragment failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FailureReason {
    /// The fragment panicked; the panic message.
    #[error("panicked: {0}")]
    Panicked(String),
    /// `execute_fragment_remote` returned an error; its message. Only errors the fragment
    /// returned: failures of the runtime have variants of their own.
    #[error("returned an error: {0}")]
    Returned(String),
    /// The host running the fragment failed and the mode forbids reassignment.
    #[error("{0} failed while running the fragment")]
    HostFailed(HostId),
    /// The remote host does not know the job's class id (the type was not registered there).
    #[error("class id {0} is not registered on the remote host")]
    UnknownClass(ClassId),
    /// The remote host could not deserialize the job; the decoder's message.
    #[error("the job could not be deserialized on the remote host: {0}")]
    Deserialize(String),
    /// The fragment was placed on a host without a GPU although the job has a GPU load (a
    /// USER_DEFINED assignment to a GPU-less host); it never ran.
    #[error("{0} has no GPU and the job has a GPU load")]
    NoGpu(HostId),
    /// The fragment ran, but `receive_remote_result` (or `receive_remote_result_rdma`)
    /// panicked on the initiator while receiving its result, so the result was lost there; the
    /// panic message. Later chunks of the fragment are not delivered.
    #[error("receiving the result panicked: {0}")]
    ReceivePanicked(String),
    /// The host's worker pool refused the job's work for a reason other than a missing GPU (a
    /// job with the same work key is already queued there); the fragment never ran.
    #[error("{0} cannot run the job: its work is already queued there")]
    CannotRun(HostId),
    /// The fragment's RDMA result (`execute_fragment_remote_rdma`) is larger than the buffer
    /// the initiator set aside for it (`get_remote_result_rdma_size`); it was not sent.
    #[error("RDMA result of {len} bytes exceeds the receiver's buffer of {capacity} bytes")]
    RdmaTooLarge {
        /// Bytes the fragment produced.
        len: u64,
        /// Bytes the initiator's buffer holds.
        capacity: u64,
    },
    /// The fragment's results could not be sent: the job was released or its initiator is
    /// gone (the stream back to it is closed).
    #[error("the job was released or its initiator is gone")]
    InitiatorGone,
}

/// One failed fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentFailure {
    /// Fragment index.
    pub index: usize,
    /// Host the fragment ran on (or was assigned to).
    pub host: HostId,
    /// Why it failed.
    pub reason: FailureReason,
}

/// The outcome of one job execution: which fragments were done, skipped, failed or cancelled.
///
/// DiCE leaves it to the application to notice fragments that were not executed (for example
/// USER_DEFINED fragments on unknown hosts); fragmenta hands it the lists. Every fragment index
/// in `0..count` is in exactly one of the four sets, which the report's users read through
/// [`done`](Self::done), [`skipped`](Self::skipped), [`failed`](Self::failed) and
/// [`cancelled`](Self::cancelled) and cannot change: only the runtime that made the report
/// fills them.
///
/// ```
/// # use fragmenta_job::{report_plumbing, HostId, JobId, JobReport, SchedulingMode};
/// # let mut report = report_plumbing::new_report(
/// #     JobId { initiator: HostId(0), seq: 1 }, SchedulingMode::Local, 3);
/// # report_plumbing::sets_mut(&mut report).done.insert_range(0..3);
/// // A user reads the sets…
/// assert_eq!(report.done().to_vec(), [0, 1, 2]);
/// assert!(report.failed().is_empty());
/// ```
///
/// …but cannot change the fields behind them:
///
/// ```compile_fail,E0616
/// fn forge(report: &mut fragmenta_job::JobReport) {
///     report.done.insert(7);
/// }
/// ```
///
/// nor the sets the accessors lend:
///
/// ```compile_fail,E0596
/// fn forge(report: &mut fragmenta_job::JobReport) {
///     report.done().insert(7);
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub job: JobId,
    /// Scheduling mode it ran with.
    pub mode: SchedulingMode,
    /// Number of fragments (after resolving ONCE_PER_HOST's 0).
    pub count: usize,
    done: FragmentSet,
    skipped: FragmentSet,
    failed: FragmentSet,
    cancelled: FragmentSet,
    /// Reason for each failed fragment, ascending by index.
    pub failures: Vec<FragmentFailure>,
    /// Fragments done per host, ascending by host.
    pub per_host: Vec<(HostId, usize)>,
    /// CLUSTER only: hosts excluded from this job because they could not run it, with the
    /// reason they gave (their program did not register the job's type:
    /// [`FailureReason::UnknownClass`]; or the replica could not be deserialized:
    /// [`FailureReason::Deserialize`]). Their fragments were placed on other hosts, as for a
    /// host that failed. Ascending by host.
    pub excluded_hosts: Vec<(HostId, FailureReason)>,
    /// Wall time from submission to completion.
    pub elapsed: Duration,
}

impl JobReport {
    /// Fragments that ran to completion (results delivered).
    pub fn done(&self) -> &FragmentSet {
        &self.done
    }

    /// Fragments never run because their assigned host is unknown or not this cluster's.
    pub fn skipped(&self) -> &FragmentSet {
        &self.skipped
    }

    /// Fragments that failed; reasons in [`failures`](Self::failures).
    pub fn failed(&self) -> &FragmentSet {
        &self.failed
    }

    /// Fragments not started because the job was cancelled.
    pub fn cancelled(&self) -> &FragmentSet {
        &self.cancelled
    }

    /// Whether every fragment is done.
    pub fn is_complete(&self) -> bool {
        self.done.len() == self.count
    }

    /// Fragments done on `host`.
    pub fn done_on(&self, host: HostId) -> usize {
        self.per_host
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(0, |(_, n)| *n)
    }
}

/// Not an API: how the runtime makes a [`JobReport`] and fills its fragment sets (users read
/// them only). Reached through the facade's hidden plumbing module.
pub mod plumbing {
    use super::JobReport;
    use crate::{FragmentSet, JobId, SchedulingMode};
    use std::time::Duration;

    /// The four fragment sets of a report, to change in place.
    #[derive(Debug)]
    pub struct SetsMut<'a> {
        /// Fragments that ran to completion.
        pub done: &'a mut FragmentSet,
        /// Fragments never run (unknown or foreign assigned host).
        pub skipped: &'a mut FragmentSet,
        /// Fragments that failed.
        pub failed: &'a mut FragmentSet,
        /// Fragments not started because the job was cancelled.
        pub cancelled: &'a mut FragmentSet,
    }

    /// A report of `count` fragments of `job` with every set and list empty.
    pub fn new_report(job: JobId, mode: SchedulingMode, count: usize) -> JobReport {
        JobReport {
            job,
            mode,
            count,
            done: FragmentSet::new(),
            skipped: FragmentSet::new(),
            failed: FragmentSet::new(),
            cancelled: FragmentSet::new(),
            failures: Vec::new(),
            per_host: Vec::new(),
            excluded_hosts: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// The report's fragment sets, to fill or correct.
    pub fn sets_mut(report: &mut JobReport) -> SetsMut<'_> {
        SetsMut {
            done: &mut report.done,
            skipped: &mut report.skipped,
            failed: &mut report.failed,
            cancelled: &mut report.cancelled,
        }
    }
}

/// A job that cannot run as asked, detected before any fragment runs.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidArgument {
    /// Negative priorities are reserved (DiCE: "Negative values are reserved for internal
    /// purposes").
    #[error("priority {0} is negative; negative priorities are reserved")]
    NegativePriority(i8),
    /// The CPU load is negative, NaN or infinite.
    #[error("cpu_load {0} is not a finite non-negative number")]
    InvalidCpuLoad(f32),
    /// The GPU load is negative, NaN or infinite.
    #[error("gpu_load {0} is not a finite non-negative number")]
    InvalidGpuLoad(f32),
    /// ONCE_PER_HOST is not possible for jobs that need a GPU.
    #[error("ONCE_PER_HOST jobs cannot have a GPU load (gpu_load {0})")]
    OncePerHostWithGpuLoad(f32),
    /// ONCE_PER_HOST with more fragments than eligible remote hosts.
    #[error("ONCE_PER_HOST with {count} fragments but only {eligible} eligible remote hosts")]
    OncePerHostCountExceedsHosts {
        /// Fragments asked for.
        count: usize,
        /// Remote hosts of the initiator's sub-cluster.
        eligible: usize,
    },
    /// The job needs a GPU and no host of the cluster has one.
    #[error("the job has gpu_load {0} but no host of the cluster has a GPU")]
    NoGpuHost(f32),
    /// A LOCAL job needs a GPU and its initiator has none (LOCAL runs on the initiator only;
    /// other hosts of the cluster may have GPUs).
    #[error(
        "the LOCAL job has gpu_load {gpu_load} but its initiator {host} has no GPU \
         (a LOCAL job runs on its initiator only)"
    )]
    NoLocalGpu {
        /// The job's GPU load.
        gpu_load: f32,
        /// The initiator.
        host: HostId,
    },
    /// USER_DEFINED: `assign_fragments_to_hosts` is given one slot per fragment, and this many
    /// slots do not fit in the memory the runtime allows them (half of the machine's).
    #[error("fragment count {0} is too large: USER_DEFINED needs one host slot per fragment")]
    CountTooLarge(usize),
}

/// Why [`execute`](crate) could not produce a report.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ExecuteError {
    /// The job's parameters are invalid; nothing ran.
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] InvalidArgument),
    /// The job could not be serialized for remote hosts; the encoder's message.
    #[error("the job could not be serialized: {0}")]
    Serialize(String),
    /// The runtime was shut down before the job finished.
    #[error("the runtime is shut down")]
    ShutDown,
    /// A nested job was started from a transaction that belongs to no runtime (one made by
    /// hand with `Transaction::new`).
    #[error("this transaction belongs to no runtime: nested jobs start only from fragments the runtime runs")]
    NoRuntime,
}

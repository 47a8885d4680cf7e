//! A job started on this host: its state, the queue of its deliveries (user code, on the
//! node's delivery threads, one job's one at a time and in order) and the [`JobHandle`].

use super::{Node, Payload};
use crate::registry::{panic_message, ErasedJob};
use fragmenta_job::{
    CancelToken, ExecuteError, HostId, JobId, JobReport, RdmaBuffer, ResultReader, Transaction,
};
use fragmenta_sched::{Weight, WorkKey};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

// One `Finish` per job: its larger size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Delivery {
    Chunk {
        fragment: usize,
        seq: u32,
        payload: Payload,
    },
    Finish(JobReport),
}

#[derive(Default)]
pub(super) struct DeliveryQueue {
    items: VecDeque<Delivery>,
    scheduled: bool,
}

/// A job started on this host.
pub(crate) struct InitiatedJob {
    pub(crate) id: JobId,
    pub(crate) job: Arc<dyn ErasedJob>,
    pub(crate) tx: Transaction,
    pub(super) cancel: CancelToken,
    pub(super) cancel_called: AtomicBool,
    pub(crate) count: AtomicUsize,
    pub(super) done: AtomicUsize,
    /// The job's work in the worker pool, once it has fragments here.
    pub(super) work: Mutex<Option<WorkKey>>,
    /// The job serialized once for every remote host (absent for LOCAL jobs or one host).
    pub(crate) serialized: Option<Arc<Vec<u8>>>,
    /// For a job whose results use RDMA buffers: the buffer of each remote fragment from
    /// `get_rdma_result_buffer`, with the host it was last dispatched to (the only host whose
    /// bytes may land in it), until its result is delivered.
    pub(crate) rdma: Option<Mutex<HashMap<usize, (RdmaBuffer, HostId)>>>,
    pub(super) deliveries: Mutex<DeliveryQueue>,
    /// Fragments whose result the job failed to receive (`receive_remote_result` panicked).
    pub(super) receive_failed: Mutex<crate::registry::ReceiveFailures>,
    pub(super) result: Mutex<Option<Result<JobReport, ExecuteError>>>,
    pub(super) finished: Condvar,
    pub(super) started: Instant,
    /// Set only while the submitting thread, which waits for the job next, holds the protocol
    /// lock in `submit`: the job's work submitted then keeps its first block for that thread.
    pub(super) reserve: AtomicBool,
}

impl InitiatedJob {
    pub(crate) fn params(&self) -> fragmenta_job::JobParams {
        self.job.params()
    }

    pub(super) fn complete(&self, mut result: Result<JobReport, ExecuteError>) {
        if let Ok(report) = &mut result {
            self.receive_failed.lock().apply(report);
        }
        // Buffers of fragments that failed or ran elsewhere go back to their context before the
        // initiator sees the report.
        if let Some(map) = &self.rdma {
            map.lock().clear();
        }
        let mut r = self.result.lock();
        if r.is_none() {
            *r = Some(result);
        }
        self.finished.notify_all();
    }
}

impl Node {
    /// Queues a delivery of `ij`; a delivery thread runs the job's queue.
    pub(super) fn enqueue(&self, ij: &Arc<InitiatedJob>, item: Delivery) {
        let mut q = ij.deliveries.lock();
        if let Delivery::Finish(report) = item {
            if q.items.is_empty() && !q.scheduled {
                // Nothing left to deliver: finish here instead of waking a delivery thread.
                drop(q);
                ij.complete(Ok(report));
                return;
            }
            q.items.push_back(Delivery::Finish(report));
        } else {
            q.items.push_back(item);
        }
        if !q.scheduled {
            q.scheduled = true;
            drop(q);
            if self.delivery_tx.send(ij.clone()).is_err() {
                tracing::error!(job = %ij.id, "delivery threads are gone");
            }
        }
    }
}

/// Runs a job's queued deliveries one at a time (user code: `receive_remote_result`), telling
/// the protocol as each chunk is taken so it can read more of the job's results.
pub(super) fn drain_deliveries(node: &Node, ij: &Arc<InitiatedJob>) {
    let count = ij.count.load(Ordering::Acquire);
    loop {
        let item = {
            let mut q = ij.deliveries.lock();
            match q.items.pop_front() {
                Some(item) => item,
                None => {
                    q.scheduled = false;
                    return;
                }
            }
        };
        match item {
            Delivery::Chunk {
                fragment,
                seq,
                payload,
            } => {
                let weight = payload.weight();
                let job = &ij.job;
                if ij.receive_failed.lock().contains(fragment) {
                    // Its result is already lost.
                    node.with_proto(|p| p.delivered(ij.id, weight));
                    continue;
                }
                let r = catch_unwind(AssertUnwindSafe(|| match payload {
                    Payload::Bytes(bytes) => {
                        let mut reader = ResultReader::new(seq, bytes);
                        job.receive(&mut reader, &ij.tx, fragment, count);
                    }
                    Payload::Shm(chunk) => {
                        let len = chunk.len();
                        let mut reader = ResultReader::shared(seq, Box::new(chunk), len);
                        job.receive(&mut reader, &ij.tx, fragment, count);
                    }
                    Payload::Rdma(buffer) => {
                        // Reception is confirmed: the runtime lets go of the buffer, which
                        // returns to its context once the job drops it too.
                        if let Some(map) = &ij.rdma {
                            map.lock().remove(&fragment);
                        }
                        job.receive_rdma(buffer, &ij.tx, fragment, count);
                    }
                }));
                if let Err(p) = r {
                    let msg = panic_message(&*p);
                    tracing::error!(job = %ij.id, fragment, "receive_remote_result panicked: {msg}");
                    ij.receive_failed.lock().record(fragment, msg);
                }
                node.with_proto(|p| p.delivered(ij.id, weight));
            }
            Delivery::Finish(report) => ij.complete(Ok(report)),
        }
    }
}

/// A job running on the cluster: progress, cancel, and its report when it finishes. Mirrors the
/// handle DiCE's asynchronous `execute_fragmented_async` gives through its callback.
///
/// Clones are handles on the same job: one thread may [`wait`](Self::wait) while another
/// [`cancel`](Self::cancel)s, and [`on_complete`](Self::on_complete) calls back when it ends.
#[derive(Clone)]
#[must_use = "the job runs on, but dropping its last handle loses its report: wait for it, or cancel it"]
pub struct JobHandle {
    node: Arc<Node>,
    job: Arc<InitiatedJob>,
}

/// How long a thread that ran blocks of the job it waits for watches for the job's end before
/// it sleeps (see [`JobHandle::wait`]).
const WAIT_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

impl JobHandle {
    pub(crate) fn new(node: Arc<Node>, job: Arc<InitiatedJob>) -> Self {
        JobHandle { node, job }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.job.id
    }

    /// (fragments done, fragments in the job).
    pub fn progress(&self) -> (usize, usize) {
        (
            self.job.done.load(Ordering::Relaxed),
            self.job.count.load(Ordering::Acquire),
        )
    }

    /// Cancels the job: unstarted fragments are skipped, `cancel()` is called on the original
    /// and on every replica, running fragments see `is_cancelled()`. The report follows once
    /// every host has answered.
    pub fn cancel(&self) {
        self.node.cancel(&self.job);
    }

    /// A fragment of this host that waits lends its load until the guard drops (nothing is
    /// lent when the report is already there or the caller is not a fragment).
    fn lend_if_fragment(&self) -> Option<crate::executor::Lent> {
        if self.is_finished() {
            return None;
        }
        self.node.exec.lend_current()
    }

    /// Whether the report is ready.
    pub fn is_finished(&self) -> bool {
        self.job.result.lock().is_some()
    }

    /// Waits for the job to finish and returns its report. Any number of threads may wait on
    /// one job (through clones or a shared reference); each gets the report.
    ///
    /// Called from a fragment running on this host (a nested job), the fragment lends its
    /// `cpu_load` to the host while it waits, so the job it waits for can use those cores.
    pub fn wait(&self) -> Result<JobReport, ExecuteError> {
        let _lent = self.lend_if_fragment();
        let mut r = self.job.result.lock();
        // Whether this thread ran blocks of the job: its end is then likely near.
        let mut helped = false;
        loop {
            if let Some(result) = r.clone() {
                return result;
            }
            // Rather than sleep while this host's part of the job waits for a worker to wake,
            // run the job's next blocks here (as long as the host's rules would start them
            // next): a small job needs no thread hand-over at all.
            let work = *self.job.work.lock();
            if let Some(key) = work {
                drop(r);
                let ran = self.node.exec.help(key);
                r = self.job.result.lock();
                helped |= ran;
                if ran || r.is_some() {
                    continue;
                }
            }
            // After running blocks, the rest of the job is the last blocks of the workers:
            // watch for its end a short while before sleeping, since a sleeping thread can
            // take hundreds of microseconds to run again on a virtual machine.
            if std::mem::take(&mut helped) {
                let until = Instant::now() + WAIT_SPIN;
                while r.is_none() && Instant::now() < until {
                    drop(r);
                    std::thread::yield_now();
                    r = self.job.result.lock();
                }
                continue;
            }
            self.job.finished.wait(&mut r);
        }
    }

    /// Waits at most `timeout`; `None` if the job has not finished by then.
    pub fn wait_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Option<Result<JobReport, ExecuteError>> {
        let deadline = Instant::now() + timeout;
        let _lent = self.lend_if_fragment();
        let mut r = self.job.result.lock();
        loop {
            if let Some(result) = r.clone() {
                return Some(result);
            }
            if self.job.finished.wait_until(&mut r, deadline).timed_out() {
                return r.clone();
            }
        }
    }
}

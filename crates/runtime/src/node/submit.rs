//! Starting, cancelling and aborting jobs on this host.

use super::job::InitiatedJob;
use super::Node;
use crate::registry::{panic_message, Erased, ErasedJob};
use fragmenta_job::{CancelToken, ExecuteError, FragmentedJob, HostId, JobId};
use fragmenta_sched::JobSpec;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// `Transaction::abort` of a job started here: cancels it as its handle does.
struct LocalAbort {
    node: Weak<Node>,
    job: JobId,
}

impl fragmenta_job::Abort for LocalAbort {
    fn abort(&self) {
        if let Some(node) = self.node.upgrade() {
            node.abort(self.job);
        }
    }
}

impl Node {
    /// Starts `job` with `count` fragments; returns the job once it is scheduled.
    pub(crate) fn submit<J: FragmentedJob>(
        self: &Arc<Self>,
        job: &Arc<J>,
        count: usize,
    ) -> Result<Arc<InitiatedJob>, ExecuteError> {
        self.submit_with(job, count, false)
    }

    /// [`submit`](Self::submit) for a caller that waits for the job at once (`execute`): the
    /// job's first block on this host, if it may start now, is kept for the caller to run
    /// while it waits (see `Executor::submit_reserving`).
    pub(crate) fn submit_and_wait<J: FragmentedJob>(
        self: &Arc<Self>,
        job: &Arc<J>,
        count: usize,
    ) -> Result<fragmenta_job::JobReport, ExecuteError> {
        let ij = self.submit_with(job, count, true)?;
        super::job::JobHandle::new(self.clone(), ij).wait()
    }

    fn submit_with<J: FragmentedJob>(
        self: &Arc<Self>,
        job: &Arc<J>,
        count: usize,
        reserve: bool,
    ) -> Result<Arc<InitiatedJob>, ExecuteError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(ExecuteError::ShutDown);
        }
        // The initiator knows its own type even if the program never registered it.
        let _ = self.registry.write().register::<J>();
        let erased: Arc<dyn ErasedJob> = Arc::new(Erased(job.clone()));
        let params = erased.params();
        params.validate()?;
        let assignment = match params.mode {
            fragmenta_job::SchedulingMode::UserDefined => {
                Some(crate::registry::assignment(&*erased, count)?)
            }
            _ => None,
        };
        // Serialized only if another host is up to receive it; otherwise the job stays here.
        let multi_host = self.remote.read().is_some() && self.proto.lock().hosts().nth(1).is_some();
        let serialized = if multi_host && params.mode != fragmenta_job::SchedulingMode::Local {
            Some(Arc::new(
                erased.serialize().map_err(ExecuteError::Serialize)?,
            ))
        } else {
            None
        };
        // A job takes the RDMA result path if it gives fragment 0 a buffer (asked here, on the
        // submitting thread, never on the network's reactor); each other remote fragment is
        // asked when it is dispatched.
        let rdma = match &serialized {
            Some(_) if count > 0 => erased.rdma_buffer(&self.rdma, 0).map(|b| {
                let mut buffers = HashMap::new();
                buffers.insert(0, (b, HostId::UNASSIGNED));
                Mutex::new(buffers)
            }),
            _ => None,
        };
        let id = JobId {
            initiator: self.host(),
            seq: self.next_job.fetch_add(1, Ordering::Relaxed),
        };
        let cancel = CancelToken::new();
        let aborter = Arc::new(LocalAbort {
            node: self.weak.clone(),
            job: id,
        });
        let ij = Arc::new(InitiatedJob {
            id,
            tx: self.transaction(id, cancel.clone()).with_abort(aborter),
            job: erased,
            cancel,
            cancel_called: AtomicBool::new(false),
            count: AtomicUsize::new(count),
            done: AtomicUsize::new(0),
            work: Mutex::new(None),
            serialized,
            rdma,
            deliveries: Mutex::new(Default::default()),
            receive_failed: Mutex::default(),
            result: Mutex::new(None),
            finished: Condvar::new(),
            reserve: AtomicBool::new(false),
            started: Instant::now(),
        });
        self.jobs.lock().insert(id, ij.clone());
        let mut proto = self.proto.lock();
        // Read by `process` below, with the protocol locked: work the protocol submits for this
        // job later, from another thread, is not reserved for a caller that may be asleep.
        ij.reserve.store(reserve, Ordering::Relaxed);
        let spec = JobSpec {
            params,
            count,
            assignment,
        };
        let submitted = if ij.serialized.is_some() {
            proto.submit(id, spec)
        } else {
            proto.submit_on_initiator_only(id, spec)
        };
        match submitted {
            Ok(resolved) => {
                ij.count.store(resolved, Ordering::Release);
                self.process(&mut proto);
                ij.reserve.store(false, Ordering::Relaxed);
                Ok(ij)
            }
            Err(e) => {
                self.jobs.lock().remove(&id);
                Err(e.into())
            }
        }
    }

    /// Cancels a job started here.
    pub(crate) fn cancel(&self, ij: &InitiatedJob) {
        if ij.cancel_called.swap(true, Ordering::AcqRel) {
            return;
        }
        if ij.result.lock().is_some() {
            return;
        }
        ij.cancel.cancel();
        let job = ij.job.clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| job.cancel())) {
            tracing::error!(job = %ij.id, "cancel() panicked: {}", panic_message(&*p));
        }
        self.with_proto(|p| {
            let _ = p.cancel(ij.id);
        });
    }

    /// A fragment of a job started here aborted it.
    fn abort(&self, job: JobId) {
        if let Some(ij) = self.job(job) {
            self.cancel(&ij);
        }
    }
}

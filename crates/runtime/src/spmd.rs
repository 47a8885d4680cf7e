//! Less to write around jobs: the one-call SPMD entry ([`spmd`]), nested jobs started from
//! inside a fragment ([`NestedJobs`]) and completion callbacks ([`JobHandle::on_complete`]).

use crate::node::{JobHandle, Node};
use crate::{Cluster, ClusterBuilder};
use fragmenta_job::{ExecuteError, FragmentedJob, JobReport, Transaction};
use std::any::Any;
use std::sync::{Arc, Weak};

/// The error type of [`spmd`] and of the primary's closure: any error, so `?` works on every
/// error of the API (and the program's own) inside the closure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Runs an SPMD program in one call: joins the cluster the environment describes (or the
/// embedded one-host cluster, see [`ClusterBuilder::join`]), runs `primary` on the primary host
/// and serves the other hosts' fragments on every other host until the primary is done. Then
/// the cluster shuts down. Every job type marked `#[fragmenta::job]` is registered on every
/// host; use [`ClusterBuilder::spmd`] for other settings.
///
/// ```
/// fn main() -> Result<(), fragmenta_runtime::BoxError> {
///     fragmenta_runtime::spmd(|cluster| {
///         println!("{} host(s)", cluster.hosts().len());
///         Ok(())
///     })
/// }
/// # main().unwrap();
/// ```
pub fn spmd(primary: impl FnOnce(&Cluster) -> Result<(), BoxError>) -> Result<(), BoxError> {
    Cluster::builder().spmd(primary)
}

impl ClusterBuilder {
    /// [`spmd`] with this builder's settings: joins, runs `primary` on the primary host,
    /// [`serve`](Cluster::serve)s on the others, then shuts the cluster down. Returns the
    /// closure's error on the primary, and a join or serve error on any host.
    pub fn spmd(
        self,
        primary: impl FnOnce(&Cluster) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        let cluster = self.join()?;
        if cluster.is_primary() {
            primary(&cluster)
        } else {
            cluster.serve().map_err(Into::into)
        }
    }
}

/// What the runtime attaches to every transaction it makes: a handle on its node that keeps
/// nothing alive (the node owns its jobs, which own their transactions).
struct RuntimeHandle(Weak<Node>);

pub(crate) fn runtime_handle(node: &Weak<Node>) -> Arc<dyn Any + Send + Sync> {
    Arc::new(RuntimeHandle(node.clone()))
}

/// Starting jobs from inside a fragment (DiCE allows a fragment to execute fragmented jobs):
/// the fragment's [`Transaction`] submits to the cluster of the host it runs on, which becomes
/// the nested job's initiator. No global [`Cluster`] is needed. In scope with `use fragmenta::*`.
///
/// A fragment that waits for a nested job (here, or through [`JobHandle::wait`]) lends its
/// `cpu_load` and worker to its host while it waits, so nested jobs never wait for the cores
/// their waiting parents hold; its GPUs stay its own. When it resumes, the host may briefly run
/// more than its cores until the loads fit again. Worker threads are still capped (see
/// [`ClusterBuilder::max_workers`]): that many fragments all waiting at once leave none.
pub trait NestedJobs {
    /// Starts `job` with `count` fragments on the cluster of the host this transaction lives
    /// on and returns its handle ([`Cluster::submit`]).
    fn submit<J: FragmentedJob>(
        &self,
        job: &Arc<J>,
        count: usize,
    ) -> Result<JobHandle, ExecuteError>;

    /// Runs `job` with `count` fragments on the cluster of the host this transaction lives on
    /// and waits for its report ([`Cluster::execute`]).
    fn execute<J: FragmentedJob>(
        &self,
        job: &Arc<J>,
        count: usize,
    ) -> Result<JobReport, ExecuteError> {
        self.submit(job, count)?.wait()
    }
}

impl NestedJobs for Transaction {
    fn submit<J: FragmentedJob>(
        &self,
        job: &Arc<J>,
        count: usize,
    ) -> Result<JobHandle, ExecuteError> {
        let node = node_of(self)?;
        let ij = node.submit(job, count)?;
        Ok(JobHandle::new(node, ij))
    }

    fn execute<J: FragmentedJob>(
        &self,
        job: &Arc<J>,
        count: usize,
    ) -> Result<JobReport, ExecuteError> {
        node_of(self)?.submit_and_wait(job, count)
    }
}

/// The node a fragment's transaction belongs to.
fn node_of(tx: &Transaction) -> Result<Arc<crate::node::Node>, ExecuteError> {
    let handle = tx
        .runtime()
        .and_then(|r| r.downcast_ref::<RuntimeHandle>())
        .ok_or(ExecuteError::NoRuntime)?;
    handle.0.upgrade().ok_or(ExecuteError::ShutDown)
}

impl JobHandle {
    /// Calls `callback` with the job's report once it finishes (DiCE's completion callback of
    /// `execute_fragmented_async`), on a thread of its own: the callback may block, and the
    /// thread that registered it goes on at once. Returns that thread's handle, for a caller
    /// that wants to wait for the callback itself.
    pub fn on_complete(
        &self,
        callback: impl FnOnce(Result<JobReport, ExecuteError>) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let handle = self.clone();
        std::thread::Builder::new()
            .name(format!("fragmenta-on-complete-{}", self.id()))
            .spawn(move || callback(handle.wait()))
    }
}

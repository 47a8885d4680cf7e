//! The node: one host's runtime. It drives the initiator's [`Scheduler`] for jobs started here,
//! runs fragments on the [`Executor`], delivers results to the original job, and (when part of a
//! multi-host cluster) talks to peers through the network layer.

use crate::executor::{BlockRunner, Executor};
use crate::registry::{panic_message, Erased, ErasedJob, Registry};
use fragmenta_fastio::{ContextServer, FastIoError, LocalContext};
use fragmenta_job::{
    CancelToken, ChunkSink, ExecuteError, ExecutionContext, FailureReason, Fetch, FragmentedJob,
    HostId, JobId, JobReport, RdmaBuffer, RdmaContext, ResultReader, Transaction,
};
use fragmenta_sched::{Action, Block, HostInfo, JobSpec, Outcome, Scheduler, WorkKey, WorkSpec};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// A chunk of a remote result as the scheduler carries it.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Bytes of one `flush()`.
    Bytes(Vec<u8>),
    /// A whole result received into the initiator's RDMA buffer.
    Rdma(RdmaBuffer),
}

/// Sends the scheduler's remote actions to peers. Implemented by the network layer.
pub(crate) trait Remote: Send + Sync + 'static {
    /// Serialize-once-per-host replica for `host`.
    fn send_replica(&self, job: &InitiatedJob, host: HostId);
    /// Fragments for `host` to run.
    fn dispatch(&self, job: &Arc<InitiatedJob>, host: HostId, fragments: Vec<Range<usize>>);
    /// Tell `host` to cancel the job.
    fn cancel(&self, job: JobId, host: HostId);
    /// Tell `host` to drop its replica.
    fn release(&self, job: JobId, host: HostId);
}

// One `Finish` per job: its larger size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Delivery {
    Chunk {
        fragment: usize,
        seq: u32,
        payload: Payload,
    },
    Finish(JobReport),
}

#[derive(Default)]
struct DeliveryQueue {
    items: VecDeque<Delivery>,
    scheduled: bool,
}

/// A job started on this host.
pub(crate) struct InitiatedJob {
    pub(crate) id: JobId,
    pub(crate) job: Arc<dyn ErasedJob>,
    pub(crate) tx: Transaction,
    cancel: CancelToken,
    cancel_called: AtomicBool,
    pub(crate) count: AtomicUsize,
    done: AtomicUsize,
    work: Mutex<Option<WorkKey>>,
    /// The job serialized once for every remote host (absent for LOCAL jobs or one host).
    pub(crate) serialized: Option<Arc<Vec<u8>>>,
    /// For a job whose results use RDMA buffers: the buffer of each remote fragment from
    /// `get_rdma_result_buffer`, with the host it was last dispatched to (the only host whose
    /// bytes may land in it), until its result is delivered.
    pub(crate) rdma: Option<Mutex<HashMap<usize, (RdmaBuffer, HostId)>>>,
    deliveries: Mutex<DeliveryQueue>,
    /// Fragments whose result the job failed to receive (`receive_remote_result` panicked).
    receive_failed: Mutex<crate::registry::ReceiveFailures>,
    result: Mutex<Option<Result<JobReport, ExecuteError>>>,
    finished: Condvar,
    started: Instant,
}

impl InitiatedJob {
    pub(crate) fn params(&self) -> fragmenta_job::JobParams {
        self.job.params()
    }

    fn complete(&self, mut result: Result<JobReport, ExecuteError>) {
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

/// Host-level settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This host's id.
    pub host: HostId,
    /// CPU cores fragments may load (sum of `cpu_load` of running fragments stays ≤ this).
    pub cores: f32,
    /// GPUs of this host.
    pub gpus: u32,
    /// Sub-cluster of this host.
    pub sub_cluster: u32,
    /// Most worker threads (fragments running at once, whatever their loads).
    pub max_workers: usize,
    /// Capacity of the host's Fast I/O context in bytes.
    pub fastio_capacity: u64,
    /// The Unix socket the Fast I/O context is served on to other processes of the host; `None`
    /// picks [`default_fastio_socket`].
    pub fastio_socket: Option<PathBuf>,
}

/// Default capacity of a host's Fast I/O context: half of the machine's memory (4 GiB where it
/// cannot be read).
pub fn default_fastio_capacity() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(4 << 30, |k| k.saturating_mul(1024) / 2)
}

/// Default socket of a host's Fast I/O context: `<label>-host<id>.<pid>.sock` in
/// [`fragmenta_fastio::default_socket_dir`] (`$XDG_RUNTIME_DIR` or else the temporary folder,
/// `fragmenta-<uid>`, readable by its owner only, with a private fallback should another user
/// have taken that name). `label` tells apart clusters sharing a machine (the cluster name and
/// a count of the process's clusters).
pub fn default_fastio_socket(label: &str, host: HostId) -> PathBuf {
    fragmenta_fastio::default_socket_path(&format!("{label}-host{}", host.0))
}

impl NodeConfig {
    /// One host with this machine's cores, no GPU.
    pub fn single_host() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeConfig {
            host: HostId(0),
            cores: cores as f32,
            gpus: 0,
            sub_cluster: 0,
            max_workers: 0,
            fastio_capacity: default_fastio_capacity(),
            fastio_socket: None,
        }
    }

    pub(crate) fn workers_cap(&self) -> usize {
        if self.max_workers > 0 {
            self.max_workers
        } else {
            ((self.cores.ceil() as usize) * 4).max(64)
        }
    }
}

/// One host's runtime.
pub(crate) struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) registry: RwLock<Registry>,
    pub(crate) exec: Executor,
    sched: Mutex<Scheduler<Payload>>,
    jobs: Mutex<HashMap<JobId, Arc<InitiatedJob>>>,
    next_job: AtomicU64,
    delivery_tx: crossbeam_channel::Sender<Arc<InitiatedJob>>,
    pub(crate) remote: RwLock<Option<Arc<dyn Remote>>>,
    shut_down: AtomicBool,
    weak: Weak<Node>,
    /// The host's Fast I/O context, shared by every job on the host.
    pub(crate) fastio: LocalContext,
    /// The context's server for other processes of the host, started on first use.
    fastio_server: Mutex<Option<ContextServer>>,
    /// Fetches publications from other hosts (set by the network layer).
    pub(crate) fetcher: RwLock<Option<Arc<dyn Fetch>>>,
    /// The host's cache of RDMA result buffers, used by its jobs on both sides.
    pub(crate) rdma: RdmaContext,
}

impl Node {
    pub(crate) fn new(config: NodeConfig, registry: Registry) -> Arc<Node> {
        let exec = Executor::new(
            config.host,
            config.cores,
            config.gpus as usize,
            config.workers_cap(),
        );
        let info = HostInfo {
            sub_cluster: config.sub_cluster,
            cores: config.cores,
            gpus: config.gpus,
        };
        let (delivery_tx, delivery_rx) = crossbeam_channel::unbounded::<Arc<InitiatedJob>>();
        let fastio = LocalContext::new(config.fastio_capacity);
        log_huge_pages_once();
        let node = Arc::new_cyclic(|weak| Node {
            weak: weak.clone(),
            sched: Mutex::new(Scheduler::new(config.host, info)),
            config,
            registry: RwLock::new(registry),
            exec,
            jobs: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            delivery_tx,
            remote: RwLock::new(None),
            shut_down: AtomicBool::new(false),
            fastio,
            fastio_server: Mutex::new(None),
            fetcher: RwLock::new(None),
            rdma: RdmaContext::default(),
        });
        // Deliveries run user code (`receive_remote_result`): on their own threads, never on the
        // network's reactor; one job's deliveries run one at a time, in order.
        let threads = (node.config.cores.ceil() as usize).clamp(1, 8);
        for i in 0..threads {
            let rx = delivery_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fragmenta-deliver-{}-{i}", node.config.host.0))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        drain_deliveries(&job);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a delivery thread");
            }
        }
        node
    }

    pub(crate) fn host(&self) -> HostId {
        self.config.host
    }

    /// A transaction for `job` on this host: its cancellation, the host's Fast I/O context and
    /// fetching from other hosts.
    pub(crate) fn transaction(&self, job: JobId, cancel: CancelToken) -> Transaction {
        let tx = Transaction::new(self.host(), job, cancel)
            .with_fastio(self.fastio.clone())
            .with_runtime(crate::spmd::runtime_handle(&self.weak));
        match self.fetcher.read().as_ref() {
            Some(f) => tx.with_fetch(Arc::clone(f)),
            None => tx,
        }
    }

    /// The socket serving the host's Fast I/O context to other processes, started on first use.
    pub(crate) fn fastio_socket(
        &self,
        label: impl FnOnce() -> String,
    ) -> Result<PathBuf, FastIoError> {
        let mut server = self.fastio_server.lock();
        if let Some(s) = server.as_ref() {
            return Ok(s.socket_path().to_owned());
        }
        let path = self
            .config
            .fastio_socket
            .clone()
            .unwrap_or_else(|| default_fastio_socket(&label(), self.host()));
        let started = self.fastio.serve(&path)?;
        *server = Some(started);
        Ok(path)
    }

    /// Starts `job` with `count` fragments; returns the job once it is scheduled.
    pub(crate) fn submit<J: FragmentedJob>(
        self: &Arc<Self>,
        job: &Arc<J>,
        count: usize,
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
        let multi_host = self.remote.read().is_some() && self.sched.lock().hosts().nth(1).is_some();
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
        let ij = Arc::new(InitiatedJob {
            id,
            tx: self.transaction(id, cancel.clone()),
            job: erased,
            cancel,
            cancel_called: AtomicBool::new(false),
            count: AtomicUsize::new(count),
            done: AtomicUsize::new(0),
            work: Mutex::new(None),
            serialized,
            rdma,
            deliveries: Mutex::new(DeliveryQueue::default()),
            receive_failed: Mutex::default(),
            result: Mutex::new(None),
            finished: Condvar::new(),
            started: Instant::now(),
        });
        self.jobs.lock().insert(id, ij.clone());
        let mut sched = self.sched.lock();
        let spec = JobSpec {
            params,
            count,
            assignment,
        };
        let submitted = if ij.serialized.is_some() {
            sched.submit(id, spec)
        } else {
            sched.submit_on_initiator_only(id, spec)
        };
        match submitted {
            Ok(resolved) => {
                ij.count.store(resolved, Ordering::Release);
                self.process(&mut sched);
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
        let mut sched = self.sched.lock();
        sched.cancel(ij.id);
        self.process(&mut sched);
    }

    /// Runs `f` on the scheduler, then carries out the actions it produced.
    pub(crate) fn with_sched<R>(&self, f: impl FnOnce(&mut Scheduler<Payload>) -> R) -> R {
        let mut sched = self.sched.lock();
        let r = f(&mut sched);
        self.process(&mut sched);
        r
    }

    /// Progress of a job: fragments done so far.
    fn note_done(&self, job: JobId, n: usize) {
        if let Some(ij) = self.jobs.lock().get(&job) {
            ij.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A host joined the cluster.
    pub(crate) fn host_up(&self, host: HostId, info: HostInfo) {
        self.with_sched(|s| s.host_up(host, info));
    }

    /// A host failed or left.
    pub(crate) fn host_down(&self, host: HostId) {
        self.with_sched(|s| s.host_down(host));
    }

    /// A batch of results of `job` from `host`. `payload` holds the chunk bytes in item order;
    /// `partial` keeps chunk parts of this stream until their last part arrives.
    pub(crate) fn on_results(
        &self,
        job: JobId,
        host: HostId,
        items: Vec<fragmenta_wire::messages::ResultItem>,
        mut payload: Vec<u8>,
        partial: &mut HashMap<(u64, u32), Vec<u8>>,
    ) {
        use fragmenta_wire::messages::ResultItem;
        let whole = payload.len();
        let single = items.len() <= 2
            && items
                .iter()
                .filter(|i| matches!(i, ResultItem::Chunk { .. }))
                .count()
                == 1;
        let mut offset = 0usize;
        let mut done = 0usize;
        self.with_sched(|s| {
            for item in items {
                match item {
                    ResultItem::Chunk {
                        fragment,
                        seq,
                        len,
                        last,
                    } => {
                        let len = len as usize;
                        let data = if single && len == whole && offset == 0 {
                            std::mem::take(&mut payload)
                        } else {
                            payload
                                .get(offset..offset + len)
                                .map(<[u8]>::to_vec)
                                .unwrap_or_default()
                        };
                        offset += len;
                        let data = match partial.remove(&(fragment, seq)) {
                            Some(mut head) => {
                                head.extend_from_slice(&data);
                                head
                            }
                            None => data,
                        };
                        if last {
                            s.on_chunk(job, host, fragment as usize, seq, Payload::Bytes(data));
                        } else {
                            partial.insert((fragment, seq), data);
                        }
                    }
                    ResultItem::Done { fragment, chunks } => {
                        if s.on_fragment_done(job, host, fragment as usize, chunks)
                            == Outcome::Applied
                        {
                            done += 1;
                        }
                    }
                    ResultItem::Failed { fragment, reason } => {
                        s.on_fragment_failed(job, host, fragment as usize, reason);
                    }
                    // The network reads an RDMA result straight into its buffer
                    // (`Node::on_rdma_result`); it never arrives in a batch.
                    ResultItem::Rdma { .. } => {}
                    ResultItem::NotStarted { ranges } => {
                        let ranges: Vec<Range<usize>> = ranges
                            .into_iter()
                            .map(|(a, b)| a as usize..b as usize)
                            .collect();
                        s.on_not_started(job, host, &ranges);
                    }
                }
            }
        });
        if done > 0 {
            self.note_done(job, done);
        }
    }

    /// The RDMA buffer `host` may write the result of `fragment` of `job` into: only the host
    /// the fragment was last dispatched to, and only while the result is outstanding.
    pub(crate) fn rdma_target(
        &self,
        job: JobId,
        fragment: usize,
        host: HostId,
    ) -> Option<RdmaBuffer> {
        let ij = self.job(job)?;
        let map = ij.rdma.as_ref()?.lock();
        match map.get(&fragment) {
            Some((buffer, to)) if *to == host => Some(buffer.clone()),
            _ => None,
        }
    }

    /// The result of `fragment` arrived in its RDMA buffer: chunk 0 of the fragment, delivered
    /// exactly once and in order like any chunk (a stale one is dropped by the scheduler).
    pub(crate) fn on_rdma_result(
        &self,
        job: JobId,
        host: HostId,
        fragment: usize,
        buffer: RdmaBuffer,
    ) {
        self.with_sched(|s| {
            s.on_chunk(job, host, fragment, 0, Payload::Rdma(buffer));
        });
    }

    fn job(&self, id: JobId) -> Option<Arc<InitiatedJob>> {
        self.jobs.lock().get(&id).cloned()
    }

    /// Carries out every pending action. Called with the scheduler locked; never runs user code.
    fn process(&self, sched: &mut Scheduler<Payload>) {
        while let Some(action) = sched.poll_action() {
            match action {
                Action::Dispatch {
                    job,
                    host,
                    fragments,
                } if host == self.host() => {
                    self.dispatch_local(sched, job, fragments);
                }
                Action::Dispatch {
                    job,
                    host,
                    fragments,
                } => match (self.job(job), self.remote.read().clone()) {
                    (Some(ij), Some(remote)) => remote.dispatch(&ij, host, fragments),
                    _ => tracing::error!(%job, %host, "no network for a remote dispatch"),
                },
                Action::SendReplica { job, host } => {
                    if let (Some(ij), Some(remote)) = (self.job(job), self.remote.read().clone()) {
                        remote.send_replica(&ij, host);
                    }
                }
                Action::Cancel { job, host } if host == self.host() => {
                    let key = self.job(job).and_then(|ij| *ij.work.lock());
                    if let Some(key) = key {
                        let ranges = self.exec.drain_pending(key);
                        sched.on_not_started(job, host, &ranges);
                    }
                }
                Action::Cancel { job, host } => {
                    if let Some(remote) = self.remote.read().clone() {
                        remote.cancel(job, host);
                    }
                }
                Action::Release { job, host } => {
                    if let Some(remote) = self.remote.read().clone() {
                        remote.release(job, host);
                    }
                }
                Action::Deliver {
                    job,
                    fragment,
                    seq,
                    payload,
                } => {
                    if let Some(ij) = self.job(job) {
                        self.enqueue(
                            &ij,
                            Delivery::Chunk {
                                fragment,
                                seq,
                                payload,
                            },
                        );
                    }
                }
                Action::Finished(mut report) => {
                    if let Some(ij) = self.jobs.lock().remove(&report.job) {
                        report.elapsed = ij.started.elapsed();
                        if let Some(key) = ij.work.lock().take() {
                            self.exec.remove(key);
                        }
                        self.enqueue(&ij, Delivery::Finish(report));
                    }
                }
            }
        }
    }

    fn dispatch_local(
        self: &Node,
        sched: &mut Scheduler<Payload>,
        job: JobId,
        fragments: Vec<Range<usize>>,
    ) {
        let Some(ij) = self.job(job) else { return };
        let mut work = ij.work.lock();
        if let Some(key) = *work {
            if self.exec.add(key, fragments.clone()) {
                return;
            }
        }
        let params = ij.params();
        let key = self.exec.new_key();
        let runner = Arc::new(LocalRunner {
            node: self.self_weak(),
            job: ij.clone(),
        });
        let spec = WorkSpec {
            priority: params.priority,
            cpu_load: params.cpu_load,
            gpu_load: params.gpu_load,
            thread_limit: params.thread_limit,
        };
        match self.exec.submit(key, spec, runner, fragments.clone()) {
            Ok(()) => *work = Some(key),
            Err(e) => {
                drop(work);
                let reason = crate::executor::refusal(self.host(), &e);
                for f in fragments.into_iter().flatten() {
                    sched.on_fragment_failed(job, self.host(), f, reason.clone());
                }
            }
        }
    }

    fn self_weak(&self) -> Weak<Node> {
        self.weak.clone()
    }

    fn enqueue(&self, ij: &Arc<InitiatedJob>, item: Delivery) {
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

    pub(crate) fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let jobs: Vec<Arc<InitiatedJob>> = self.jobs.lock().values().cloned().collect();
        for ij in jobs {
            ij.complete(Err(ExecuteError::ShutDown));
        }
        self.exec.shutdown();
    }
}

/// Runs blocks of a job started on this host, on the original instance.
struct LocalRunner {
    node: Weak<Node>,
    job: Arc<InitiatedJob>,
}

impl BlockRunner for LocalRunner {
    fn run(&self, block: &Block, worker: usize) -> Range<usize> {
        let ij = &self.job;
        let _span = tracing::debug_span!("fragments", host = %ij.tx.host(), job = %ij.id,
            fragments = ?block.range, worker)
        .entered();
        let Some(node) = self.node.upgrade() else {
            return 0..0;
        };
        let count = ij.count.load(Ordering::Acquire);
        let ctx = ExecutionContext::new(node.host(), worker, block.gpus.clone(), ij.cancel.clone());
        // Fragments whose earlier attempt on a failed host already delivered (or buffered)
        // chunks run remote style, so the scheduler drops the chunks already delivered.
        let rerun = node
            .sched
            .lock()
            .rerun_with_chunks(ij.id, block.range.clone());
        if rerun.is_empty() {
            return self.run_local(&node, block.range.clone(), count, &ctx);
        }
        let end = block.range.end;
        let mut i = block.range.start;
        for f in rerun.into_iter().chain(std::iter::once(end)) {
            if i < f {
                let left = self.run_local(&node, i..f, count, &ctx);
                if !left.is_empty() {
                    // Yielded: the rest of the block (later reruns included) goes back.
                    return left.start..end;
                }
                if ij.cancel.is_cancelled() {
                    // `run_local` reported its own unstarted part; report the rest.
                    if f < end {
                        node.with_sched(|s| {
                            s.on_not_started(ij.id, node.host(), std::slice::from_ref(&(f..end)))
                        });
                    }
                    return end..end;
                }
            }
            if f == end {
                break;
            }
            if ij.cancel.is_cancelled() {
                node.with_sched(|s| {
                    s.on_not_started(ij.id, node.host(), std::slice::from_ref(&(f..end)))
                });
                return end..end;
            }
            self.run_with_chunks(&node, f, count, &ctx);
            i = f + 1;
        }
        end..end
    }
}

impl LocalRunner {
    /// Runs `range` with `execute_fragment` on the original; returns the part given back
    /// because the time slice ran out.
    fn run_local(
        &self,
        node: &Node,
        range: Range<usize>,
        count: usize,
        ctx: &ExecutionContext,
    ) -> Range<usize> {
        let ij = &self.job;
        let out = ij.job.run_local_block(&ij.tx, range, count, ctx);
        let done: usize = out.done.iter().map(|r| r.len()).sum();
        let host = node.host();
        node.with_sched(|s| {
            for r in out.done.iter().cloned() {
                s.on_local_done(ij.id, r);
            }
            for (i, msg) in out.failed.iter().cloned() {
                s.on_fragment_failed(ij.id, host, i, FailureReason::Panicked(msg));
            }
            if !out.not_started.is_empty() {
                s.on_not_started(ij.id, host, std::slice::from_ref(&out.not_started));
            }
        });
        ij.done.fetch_add(done, Ordering::Relaxed);
        out.yielded
    }

    /// Runs fragment `f` with `execute_fragment_remote` on the original, its chunks going
    /// through the scheduler as chunks from this host: exactly once and in order.
    fn run_with_chunks(&self, node: &Node, f: usize, count: usize, ctx: &ExecutionContext) {
        let ij = &self.job;
        let host = node.host();
        let mut sink = SchedSink {
            node,
            job: ij.id,
            host,
            fragment: f,
        };
        let result = ij.job.run_remote(&ij.tx, f, count, ctx, &mut sink);
        let applied = node.with_sched(|s| match result {
            Ok(chunks) => s.on_fragment_done(ij.id, host, f, chunks) == Outcome::Applied,
            Err(reason) => {
                s.on_fragment_failed(ij.id, host, f, reason);
                false
            }
        });
        if applied {
            ij.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Feeds the chunks of a fragment rerun on the initiator into its scheduler.
struct SchedSink<'a> {
    node: &'a Node,
    job: JobId,
    host: HostId,
    fragment: usize,
}

impl ChunkSink for SchedSink<'_> {
    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> std::io::Result<()> {
        let (job, host, fragment) = (self.job, self.host, self.fragment);
        self.node
            .with_sched(|s| s.on_chunk(job, host, fragment, seq, Payload::Bytes(data)));
        Ok(())
    }
}

/// Runs a job's queued deliveries one at a time (user code: `receive_remote_result`).
fn drain_deliveries(ij: &Arc<InitiatedJob>) {
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
                let job = &ij.job;
                if ij.receive_failed.lock().contains(fragment) {
                    continue; // its result is already lost
                }
                let r = catch_unwind(AssertUnwindSafe(|| match payload {
                    Payload::Bytes(bytes) => {
                        let mut reader = ResultReader::new(seq, bytes);
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
pub struct JobHandle {
    node: Arc<Node>,
    job: Arc<InitiatedJob>,
}

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
        loop {
            if let Some(result) = r.clone() {
                return result;
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

/// Says once per process when the host keeps shared memory off huge pages: Fast I/O then works,
/// but first access to large allocations costs a page fault per 4 KiB.
fn log_huge_pages_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(mode) = fragmenta_fastio::shmem_huge_pages() {
            if mode == "never" || mode == "deny" {
                tracing::info!(
                    "Fast I/O: huge pages for shared memory are off on this host (shmem_enabled = {mode}); \
                     large allocations use 4 KiB pages and their first access is several times slower. \
                     `echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` (as root) turns them on"
                );
            }
        }
    });
}

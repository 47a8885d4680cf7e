//! The node: one host's runtime. It drives the host's protocol state machine
//! ([`fragmenta_sched::protocol::Protocol`]: the initiator's scheduler, replicas of other hosts'
//! jobs, result-stream rules, liveness) and carries out what it decides: fragments run on the
//! [`Executor`], results are delivered to the original job, and (when part of a multi-host
//! cluster) messages go to peers through the network layer.

mod actions;
mod config;
mod job;
mod local;
mod submit;

pub use config::{default_fastio_capacity, default_fastio_socket, NodeConfig};
pub(crate) use job::InitiatedJob;
pub use job::JobHandle;

use crate::executor::{BlockRunner, Executor};
use crate::registry::Registry;
use fragmenta_fastio::{ContextServer, FastIoError, LocalContext};
use fragmenta_job::{
    CancelToken, ClassId, ExecuteError, Fetch, HostId, JobId, RdmaBuffer, RdmaContext, Transaction,
};
use fragmenta_sched::protocol::{
    Answer, Down, Limits, Message, Protocol, ResultEvent, ResultsOutcome,
};
use fragmenta_sched::{HostInfo, Weight};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A chunk of a remote result as the protocol carries it.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Bytes of one `flush()`.
    Bytes(Vec<u8>),
    /// A whole result received into the initiator's RDMA buffer.
    Rdma(RdmaBuffer),
    /// A chunk a process of this machine handed over through this host's Fast I/O context.
    Shm(ShmChunk),
}

impl Weight for Payload {
    fn weight(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::Rdma(b) => b.len(),
            // The memory it holds in the context, not only the chunk's bytes.
            Payload::Shm(c) => c.size,
        }
    }
}

/// A chunk handed over through this host's Fast I/O context, mapped for reading: read in
/// place by `receive_remote_result`. Dropping it (delivered, or discarded as a duplicate, or
/// its job gone) returns the memory to the context and credits its sender.
pub(crate) struct ShmChunk {
    read: Option<fragmenta_fastio::SharedRead>,
    len: usize,
    size: usize,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl ShmChunk {
    /// `len` bytes at the start of `read`, which is `size` bytes; `on_drop` runs after the
    /// memory is let go of.
    pub(crate) fn new(
        read: fragmenta_fastio::SharedRead,
        len: usize,
        on_drop: Box<dyn FnOnce() + Send>,
    ) -> ShmChunk {
        let size = usize::try_from(read.allocation().size()).unwrap_or(usize::MAX);
        ShmChunk {
            read: Some(read),
            len,
            size,
            on_drop: Some(on_drop),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl AsRef<[u8]> for ShmChunk {
    fn as_ref(&self) -> &[u8] {
        match &self.read {
            Some(r) => {
                let b = r.as_bytes();
                &b[..self.len.min(b.len())]
            }
            None => &[],
        }
    }
}

impl std::fmt::Debug for ShmChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShmChunk({} of {} bytes)", self.len, self.size)
    }
}

impl Drop for ShmChunk {
    fn drop(&mut self) {
        drop(self.read.take());
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// What a replica is made from: the job's class and bytes as its initiator serialized it, with
/// the fragment count the protocol checked.
#[derive(Debug)]
pub(crate) struct ReplicaBody {
    pub(crate) class: ClassId,
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: u64,
}

/// The protocol as the node drives it.
pub(crate) type HostProtocol = Protocol<Payload, ReplicaBody>;

/// Carries out the protocol's actions that concern peers and replicas. Implemented by the
/// network layer; every method returns at once (no user code, no waiting): it is called with the
/// protocol locked.
pub(crate) trait Remote: Send + Sync + 'static {
    /// Serialize-once-per-host replica for `host`.
    fn send_replica(&self, job: &InitiatedJob, host: HostId);
    /// Fragments for `host` to run.
    fn dispatch(&self, job: &Arc<InitiatedJob>, host: HostId, fragments: Vec<Range<usize>>);
    /// Tell `host` to cancel the job.
    fn cancel(&self, job: JobId, host: HostId);
    /// Tell `host` to drop its replica.
    fn release(&self, job: JobId, host: HostId);
    /// Ask `host` to give back those of these fragments it has not started (work stealing).
    fn reclaim(&self, job: JobId, host: HostId, fragments: &[Range<usize>]);
    /// Tell the initiator `host` which fragments it asked back were removed unstarted.
    fn reclaimed(&self, job: JobId, host: HostId, fragments: &[Range<usize>]);
    /// A heartbeat for `host`.
    fn heartbeat(&self, host: HostId);
    /// An answer on the result stream of another host's job.
    fn answer(&self, job: JobId, answer: Answer);
    /// Make the replica of another host's job (off the reactor), then report it loaded.
    fn load_replica(&self, job: JobId, body: ReplicaBody);
    /// Cancel a replica: its running fragments see it, its `cancel()` runs.
    fn cancel_replica(&self, job: JobId);
    /// Drop a replica.
    fn drop_replica(&self, job: JobId);
    /// The block runner of a loaded replica.
    fn runner(&self, job: JobId) -> Option<Arc<dyn BlockRunner>>;
    /// `host` is down: close its connection, retire its id, tell subscribers.
    fn host_down(&self, host: HostId, why: Down);
    /// Stop (`true`) or resume reading the result stream of `job` from `host`.
    fn pause_results(&self, job: JobId, host: HostId, paused: bool);
}

/// One host's runtime.
pub(crate) struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) registry: RwLock<Registry>,
    pub(crate) exec: Executor,
    proto: Mutex<HostProtocol>,
    /// The origin of the protocol's clock.
    origin: Instant,
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

/// The environment variable that turns CLUSTER work stealing off for the jobs a process
/// initiates: `0`, `off`, `false` or `no` (any other value, or none, leaves it on).
pub(crate) const WORK_STEALING_VAR: &str = "FRAGMENTA_WORK_STEALING";

fn work_stealing_default() -> bool {
    match std::env::var(WORK_STEALING_VAR) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        Err(_) => true,
    }
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
            proto: Mutex::new({
                let mut p = Protocol::new(config.host, info, Limits::default(), Duration::ZERO);
                p.set_work_stealing(work_stealing_default());
                p
            }),
            origin: Instant::now(),
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
            let weak = Arc::downgrade(&node);
            let spawned = std::thread::Builder::new()
                .name(format!("fragmenta-deliver-{}-{i}", node.config.host.0))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        match weak.upgrade() {
                            Some(node) => job::drain_deliveries(&node, &job),
                            None => return,
                        }
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

    /// The protocol's clock: time since this node started.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
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

    /// The socket serving the host's Fast I/O context to other processes, if it is served.
    pub(crate) fn fastio_socket_path(&self) -> Option<PathBuf> {
        self.fastio_server
            .lock()
            .as_ref()
            .map(|s| s.socket_path().to_owned())
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

    /// Runs `f` on the protocol, then carries out the actions it produced.
    pub(crate) fn with_proto<R>(&self, f: impl FnOnce(&mut HostProtocol) -> R) -> R {
        let mut proto = self.proto.lock();
        let r = f(&mut proto);
        self.process(&mut proto);
        r
    }

    /// A link to `host` is up.
    pub(crate) fn link_up(&self, host: HostId, info: HostInfo) {
        let now = self.now();
        self.with_proto(|p| p.link_up(host, info, now));
    }

    /// The link to `host` closed.
    pub(crate) fn link_down(&self, host: HostId, why: &str) {
        self.with_proto(|p| p.link_down(host, why));
    }

    /// A frame header from `host` arrived.
    pub(crate) fn heard_from(&self, host: HostId) {
        let now = self.now();
        self.proto.lock().heard_from(host, now);
    }

    /// A control message from `host`.
    pub(crate) fn on_message(&self, host: HostId, msg: Message<ReplicaBody>) {
        let now = self.now();
        self.with_proto(|p| p.on_message(host, msg, now));
    }

    /// Reassembled entries of the result stream of `job` from `host`.
    pub(crate) fn on_results(
        &self,
        job: JobId,
        host: HostId,
        events: Vec<ResultEvent<Payload>>,
    ) -> ResultsOutcome {
        let now = self.now();
        let out = self.with_proto(|p| p.on_results(host, job, events, now));
        if out.done > 0 {
            if let Some(ij) = self.jobs.lock().get(&job) {
                ij.done.fetch_add(out.done, Ordering::Relaxed);
            }
        }
        out
    }

    /// Heartbeats due and failure detection; returns the protocol's next deadline.
    pub(crate) fn on_timer(&self) -> Option<Duration> {
        let now = self.now();
        self.with_proto(|p| {
            p.handle_timeout(now);
            p.poll_timeout()
        })
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

    fn job(&self, id: JobId) -> Option<Arc<InitiatedJob>> {
        self.jobs.lock().get(&id).cloned()
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

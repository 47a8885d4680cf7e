//! The node's network side: one QUIC connection per host pair, control and result streams,
//! replicas of other hosts' jobs, heartbeats and failure detection.
//!
//! All of it runs on a small tokio runtime owned by the node. Nothing here runs user code on a
//! reactor thread: deserializing a replica and calling its `cancel()` go to `spawn_blocking`,
//! fragments run on the worker pool, and deliveries on the node's delivery threads.

mod fetch;

use crate::executor::BlockRunner;
use crate::membership::{HostEventKind, Membership};
use crate::node::{InitiatedJob, Node, Remote};
use crate::registry::ErasedJob;
use fragmenta_config::ClusterConfig;
use fragmenta_job::{
    CancelToken, ChunkSink, ExecutionContext, FailureReason, HostId, JobId, JobParams, RdmaBuffer,
    RdmaContext, Transaction,
};
use fragmenta_net::handshake::{accept_handshake, close_on_frame_error, connect_handshake};
use fragmenta_net::rdma::RdmaPath;
use fragmenta_net::{Connection, Endpoint, NetConfig, RecvStream, SendStream, TlsFiles};
use fragmenta_sched::{Block, HostInfo, WorkKey, WorkSpec};
use fragmenta_wire::handshake::Hello;
use fragmenta_wire::messages::{Control, ResultItem, Results, StreamHeader, WireRange};
use fragmenta_wire::{read_header, write_frame, FrameLimits};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Largest chunk part sent in one frame; larger chunks travel as several parts.
const MAX_PART: usize = 16 << 20;
/// Small chunks are batched into one frame up to this many payload bytes or items.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_ITEMS: usize = 4096;
/// Result bytes of one job a host may have queued for the network before its fragments wait.
const MAX_IN_FLIGHT: usize = 32 << 20;
/// Close code for a peer that stopped sending heartbeats.
const CLOSE_TIMEOUT: u32 = 3;
/// Close code for a normal shutdown.
const CLOSE_SHUTDOWN: u32 = 4;

/// Why a multi-host node could not start.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The configuration is invalid or names no usable host.
    #[error(transparent)]
    Config(#[from] fragmenta_config::ConfigError),
    /// Two job types share a class id.
    #[error(transparent)]
    Register(#[from] crate::RegisterError),
    /// The QUIC endpoint could not be bound (address in use, bad certificate files…).
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        /// The address from the configuration.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// Not enough hosts joined in time.
    #[error("waited {waited:?} for {min} hosts; missing: {}", host_list(missing))]
    MinHosts {
        /// Hosts required (this one included).
        min: usize,
        /// How long this host waited.
        waited: Duration,
        /// Configured hosts that never connected.
        missing: Vec<HostId>,
    },
    /// The async runtime could not start.
    #[error("cannot start the network runtime: {0}")]
    Runtime(String),
    /// A live host refused this one, typically because a host with this id was declared dead
    /// (host ids are never reused: a restarted process joins with a new id).
    #[error("refused by {by}: {reason}")]
    Refused {
        /// The host that refused.
        by: HostId,
        /// Its reason.
        reason: String,
    },
    /// The host's Fast I/O context could not be served on its socket.
    #[error("cannot serve the Fast I/O context: {0}")]
    FastIo(#[from] fragmenta_fastio::FastIoError),
    /// [`ClusterBuilder::gpus`](crate::ClusterBuilder::gpus) differs from the host's `gpus` in
    /// the configuration, which is what the other hosts place GPU fragments by.
    #[error(
        "ClusterBuilder::gpus({asked}) differs from the {configured} GPUs the configuration \
         gives {host}: set `gpus` for the host in the cluster configuration instead"
    )]
    GpusDiffer {
        /// This host.
        host: fragmenta_job::HostId,
        /// GPUs in the configuration.
        configured: u32,
        /// GPUs the program asked for.
        asked: u32,
    },
    /// A program joining a configured cluster could not tell which host it is.
    #[error(
        "cannot tell which host of the cluster configuration this process is: set \
         FRAGMENTA_HOST_ID to its host id, or start the program under a launcher \
         (fragmenta launch, srun, mpirun)"
    )]
    NoHostId,
    /// [`ClusterBuilder::join_config`](crate::ClusterBuilder::join_config) was given a host
    /// the configuration does not list.
    #[error("{host} is not a host of the cluster configuration (it lists {known})")]
    UnknownHost {
        /// The host asked for.
        host: fragmenta_job::HostId,
        /// The ids the configuration lists, comma-separated.
        known: String,
    },
    /// A cluster formed by a launcher (no configuration file) could not meet.
    #[error(transparent)]
    Rendezvous(#[from] crate::rendezvous::RendezvousError),
}

/// Why binding failed, without the "cannot bind ADDR" its message starts with (the errors that
/// carry it say it themselves).
pub(crate) fn bind_reason(e: fragmenta_net::BindError) -> String {
    match e {
        fragmenta_net::BindError::Socket { reason, .. } => reason,
        e => e.to_string(),
    }
}

enum Outgoing {
    Msg(Control),
    WithPayload(Control, Arc<Vec<u8>>),
}

struct Link {
    conn: Connection,
    control: mpsc::UnboundedSender<Outgoing>,
    last_seen: Arc<Mutex<Instant>>,
    /// Set once the scheduler knows the host: only then does it count towards the minimum
    /// cluster size, so a job submitted right after joining sees every host.
    ready: std::sync::atomic::AtomicBool,
}

enum RState {
    Loading {
        pending: Vec<Range<usize>>,
        cancelled: bool,
    },
    Ready {
        key: WorkKey,
        replica: Arc<dyn ErasedJob>,
    },
    Failed(FailureReason),
}

enum Out {
    Item(ResultItem),
    /// A fragment's result in this host's RDMA buffer, for the initiator's buffer.
    Rdma {
        fragment: u64,
        buffer: RdmaBuffer,
    },
    Chunk {
        fragment: u64,
        seq: u32,
        data: Vec<u8>,
    },
}

/// A job of another host, on this host: its replica and the stream back to its initiator.
struct RemoteJob {
    id: JobId,
    count: usize,
    params: JobParams,
    cancel: CancelToken,
    tx: Transaction,
    state: Mutex<RState>,
    out: mpsc::UnboundedSender<Out>,
    /// Chunk bytes queued and not yet written: fragments wait above [`MAX_IN_FLIGHT`].
    in_flight: Mutex<usize>,
    drained: Condvar,
    /// Receiver buffer sizes of fragments whose result goes to an RDMA buffer.
    rdma: Mutex<HashMap<u64, u64>>,
}

impl RemoteJob {
    /// Queues a result for the initiator; false once the stream is gone. Called from worker
    /// threads; waits while too many result bytes are queued (backpressure from the network).
    fn send(&self, out: Out) -> bool {
        if let Out::Chunk { data, .. } = &out {
            let mut q = self.in_flight.lock();
            while *q > 0 && *q + data.len() > MAX_IN_FLIGHT {
                if self.out.is_closed() {
                    return false;
                }
                self.drained.wait_for(&mut q, Duration::from_millis(100));
            }
            *q += data.len();
        }
        self.out.send(out).is_ok()
    }

    fn written(&self, bytes: usize) {
        if bytes > 0 {
            let mut q = self.in_flight.lock();
            *q = q.saturating_sub(bytes);
            self.drained.notify_all();
        }
    }
}

/// Shutdown signalling for `serve()`.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<Option<Result<(), ServeError>>>,
    cv: Condvar,
}

/// Why [`Cluster::serve`](crate::Cluster::serve) returned with an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The primary host failed without shutting the cluster down.
    #[error("the primary host {0} was lost")]
    PrimaryLost(HostId),
}

impl Signal {
    fn set(&self, r: Result<(), ServeError>) {
        let mut s = self.state.lock();
        if s.is_none() {
            *s = Some(r);
        }
        self.cv.notify_all();
    }
    pub(crate) fn wait(&self) -> Result<(), ServeError> {
        let mut s = self.state.lock();
        loop {
            if let Some(r) = s.clone() {
                return r;
            }
            self.cv.wait(&mut s);
        }
    }
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<Result<(), ServeError>> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        loop {
            if let Some(r) = s.clone() {
                return Some(r);
            }
            if self.cv.wait_until(&mut s, deadline).timed_out() {
                return s.clone();
            }
        }
    }
}

/// The network runtime of `host` (two reactor threads).
pub(crate) fn runtime(host: HostId) -> Result<tokio::runtime::Runtime, JoinError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("fragmenta-net-{}", host.0))
        .enable_all()
        .build()
        .map_err(|e| JoinError::Runtime(e.to_string()))
}

/// An endpoint bound on the runtime it lives on, handed to [`Net::start_bound`].
pub(crate) struct Bound {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) endpoint: Endpoint,
}

/// The network side of a node.
pub(crate) struct Net {
    node: Weak<Node>,
    host: HostId,
    primary: HostId,
    config: ClusterConfig,
    endpoint: Endpoint,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    links: Mutex<BTreeMap<HostId, Arc<Link>>>,
    links_changed: Condvar,
    remote_jobs: Mutex<HashMap<JobId, Arc<RemoteJob>>>,
    limits: FrameLimits,
    /// How RDMA results travel (QUIC unless verbs are available).
    rdma_path: Arc<dyn RdmaPath>,
    pub(crate) shutdown: Signal,
    me: Weak<Net>,
    /// Subscribers of host up/down events.
    pub(crate) membership: Membership,
    /// Hosts declared down here: their ids are never accepted again.
    retired: Mutex<BTreeSet<HostId>>,
    /// A peer that refused this host while it joined, and why.
    refused: Mutex<Option<(HostId, String)>>,
}

fn info_of(config: &ClusterConfig, host: HostId) -> HostInfo {
    config.host(host).map_or(
        HostInfo {
            sub_cluster: 0,
            cores: 1.0,
            gpus: 0,
        },
        |h| HostInfo {
            sub_cluster: h.sub_cluster(),
            cores: h.cores() as f32,
            gpus: h.gpus(),
        },
    )
}

fn to_wire(r: &[Range<usize>]) -> Vec<WireRange> {
    r.iter().map(|r| (r.start as u64, r.end as u64)).collect()
}

fn from_wire(r: &[WireRange], count: usize) -> Vec<Range<usize>> {
    r.iter()
        .map(|&(a, b)| (a.min(count as u64) as usize)..(b.min(count as u64) as usize))
        .filter(|r| r.start < r.end)
        .collect()
}

/// `host-1, host-2`.
fn host_list(hosts: &[HostId]) -> String {
    let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// The peer's reason when `e` is a refusal (a rejected handshake, or a connection the peer
/// closed as rejected) rather than a peer that cannot be reached.
fn rejection(e: &fragmenta_net::ConnectError) -> Option<String> {
    use fragmenta_net::{ConnectError, ConnectionError};
    match e {
        ConnectError::Rejected(reason) => Some(reason.to_string()),
        ConnectError::Connection(ConnectionError::ClosedByPeer { code, reason })
            if *code == u64::from(fragmenta_net::handshake::CLOSE_REJECTED) =>
        {
            Some(String::from_utf8_lossy(reason).into_owned())
        }
        _ => None,
    }
}

impl Net {
    /// Binds this host's endpoint, connects to the configured hosts and waits for the minimum
    /// cluster size.
    pub(crate) fn start(
        node: &Arc<Node>,
        config: ClusterConfig,
        host: HostId,
    ) -> Result<Arc<Net>, JoinError> {
        let runtime = runtime(host)?;
        let me = config
            .host(host)
            .ok_or(fragmenta_config::ConfigError::NoHostId)?;
        let addr = me.socket_addr()?;
        let tls = TlsFiles {
            ca: config.ca_cert().to_path_buf(),
            cert: me.cert().to_path_buf(),
            key: me.key().to_path_buf(),
        };
        let endpoint = {
            let _guard = runtime.enter();
            Endpoint::bind_quic_as(host, addr, &tls, &NetConfig::default()).map_err(|e| {
                JoinError::Bind {
                    addr,
                    reason: bind_reason(e),
                }
            })?
        };
        Net::start_bound(node, config, host, Bound { runtime, endpoint })
    }

    /// [`Net::start`] with an endpoint already bound (by a rendezvous) on `bound.runtime`.
    pub(crate) fn start_bound(
        node: &Arc<Node>,
        config: ClusterConfig,
        host: HostId,
        bound: Bound,
    ) -> Result<Arc<Net>, JoinError> {
        let Bound { runtime, endpoint } = bound;
        let primary = config.hosts().first().map_or(host, |h| h.id());
        let mut limits = FrameLimits::default();
        if let Some(max) = config.max_frame_bytes() {
            limits.max_payload = max;
        }
        let net = Arc::new_cyclic(|me| Net {
            node: Arc::downgrade(node),
            host,
            primary,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            endpoint,
            config,
            links: Mutex::new(BTreeMap::new()),
            links_changed: Condvar::new(),
            remote_jobs: Mutex::new(HashMap::new()),
            limits,
            rdma_path: fragmenta_net::rdma::select(&fragmenta_net::rdma::probe()),
            shutdown: Signal::default(),
            me: me.clone(),
            membership: Membership::default(),
            retired: Mutex::new(BTreeSet::new()),
            refused: Mutex::new(None),
        });
        *node.remote.write() = Some(net.clone());
        *node.fetcher.write() = Some(Arc::new(fetch::NetFetch {
            net: Arc::downgrade(&net),
        }));
        net.handle.spawn(net.clone().accept_loop());
        for h in net.config.hosts() {
            if h.id() < host {
                if let Ok(addr) = h.socket_addr() {
                    net.handle.spawn(net.clone().connect_loop(h.id(), addr));
                }
            }
        }
        net.handle.spawn(net.clone().failure_detector());
        if let Err(e) = net.wait_min_hosts() {
            // Nothing may outlive a failed join: not the tasks, the runtime or the socket.
            net.shutdown(false);
            return Err(e);
        }
        Ok(net)
    }

    fn wait_min_hosts(&self) -> Result<(), JoinError> {
        let min = self.config.min_hosts();
        let waited = self.config.min_hosts_timeout();
        let deadline = Instant::now() + waited;
        let mut links = self.links.lock();
        // Only links whose host the scheduler knows count (see `Link::ready`).
        let up = |links: &BTreeMap<HostId, Arc<Link>>| {
            1 + links
                .values()
                .filter(|l| l.ready.load(std::sync::atomic::Ordering::Acquire))
                .count()
        };
        while up(&links) < min {
            // A live host refused this one (its id was retired): waiting longer cannot help.
            if let Some((by, reason)) = self.refused.lock().clone() {
                return Err(JoinError::Refused { by, reason });
            }
            if self
                .links_changed
                .wait_until(&mut links, deadline)
                .timed_out()
            {
                if up(&links) >= min {
                    break;
                }
                let missing = self
                    .config
                    .host_ids()
                    .filter(|h| *h != self.host && !links.contains_key(h))
                    .collect();
                return Err(JoinError::MinHosts {
                    min,
                    waited,
                    missing,
                });
            }
        }
        // Refused by one host while enough others accepted: still not a member.
        match self.refused.lock().clone() {
            Some((by, reason)) => Err(JoinError::Refused { by, reason }),
            None => Ok(()),
        }
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.host == self.primary
    }

    pub(crate) fn peers(&self) -> Vec<HostId> {
        self.links.lock().keys().copied().collect()
    }

    fn hello(&self) -> Hello {
        Hello::new(self.config.name(), self.host)
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let conn = match incoming {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(host = %self.host, error = %e, "refused an incoming connection");
                    continue;
                }
            };
            // Ids are never reused: a process presenting the id of a host declared dead, or of
            // a host still connected, is refused before the handshake, with the reason.
            if let Some(reason) = self.refusal(conn.peer()) {
                tracing::warn!(host = %self.host, peer = %conn.peer(), %reason, "refusing a host");
                conn.close(fragmenta_net::handshake::CLOSE_REJECTED, reason.as_bytes());
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                match accept_handshake(conn, me.config.name()).await {
                    Ok((conn, hello)) if me.config.host(hello.host).is_some() => {
                        me.register_link(conn).await
                    }
                    Ok((conn, hello)) => {
                        tracing::warn!(host = %me.host, peer = %hello.host, "peer is not in the configuration");
                        conn.close(fragmenta_net::handshake::CLOSE_REJECTED, b"unknown host");
                    }
                    Err(e) => tracing::warn!(host = %me.host, error = %e, "handshake failed"),
                }
            });
        }
    }

    async fn connect_loop(self: Arc<Self>, peer: HostId, addr: std::net::SocketAddr) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.state.lock().is_some() || self.links.lock().contains_key(&peer) {
                return;
            }
            match connect_handshake(&self.endpoint, addr, peer, self.hello()).await {
                Ok(conn) => {
                    self.register_link(conn).await;
                    return;
                }
                Err(e) => {
                    if let Some(reason) = rejection(&e) {
                        // Refused, not unreachable: retrying cannot help. Joining fails with
                        // the peer's reason.
                        tracing::error!(host = %self.host, %peer, %reason, "refused by a peer");
                        self.refused.lock().get_or_insert((peer, reason));
                        let _links = self.links.lock();
                        self.links_changed.notify_all();
                        return;
                    }
                    tracing::debug!(host = %self.host, %peer, error = %e, "connect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Why a connection from or to `peer` must be refused, if it must.
    fn refusal(&self, peer: HostId) -> Option<String> {
        if self.retired.lock().contains(&peer) {
            Some(format!(
                "{peer} was declared dead by {}; host ids are never reused: start the process with a new id",
                self.host
            ))
        } else if self.links.lock().contains_key(&peer) {
            Some(format!(
                "{peer} is already connected to {}; host ids are never reused: start the process with a new id",
                self.host
            ))
        } else {
            None
        }
    }

    async fn register_link(self: &Arc<Self>, conn: Connection) {
        let peer = conn.peer();
        let (tx, rx) = mpsc::unbounded_channel();
        let last_seen = Arc::new(Mutex::new(Instant::now()));
        {
            let mut links = self.links.lock();
            if links.contains_key(&peer) || self.retired.lock().contains(&peer) {
                let reason = if links.contains_key(&peer) {
                    "already connected"
                } else {
                    "declared dead; host ids are never reused"
                };
                conn.close(fragmenta_net::handshake::CLOSE_REJECTED, reason.as_bytes());
                return;
            }
            links.insert(
                peer,
                Arc::new(Link {
                    conn: conn.clone(),
                    control: tx,
                    last_seen: last_seen.clone(),
                    ready: std::sync::atomic::AtomicBool::new(false),
                }),
            );
        }
        tracing::info!(host = %self.host, %peer, "link up");
        let span = tracing::info_span!("link", host = %self.host, peer = %peer);
        tokio::spawn(
            self.clone()
                .control_writer(conn.clone(), rx)
                .instrument(span.clone()),
        );
        tokio::spawn(
            self.clone()
                .stream_acceptor(conn.clone(), last_seen)
                .instrument(span.clone()),
        );
        tokio::spawn(self.clone().request_acceptor(conn.clone()).instrument(span));
        let me = self.clone();
        tokio::spawn(async move {
            let reason = conn.closed().await;
            me.link_lost(peer, &reason.to_string());
        });
        if let Some(node) = self.node.upgrade() {
            let info = info_of(&self.config, peer);
            let _ = tokio::task::spawn_blocking(move || node.host_up(peer, info)).await;
        }
        let up = {
            let links = self.links.lock();
            let link = links.get(&peer);
            if let Some(link) = link {
                link.ready.store(true, std::sync::atomic::Ordering::Release);
            }
            link.is_some()
        };
        if up {
            self.membership.emit(peer, HostEventKind::Up);
        } else if let Some(node) = self.node.upgrade() {
            // The link was lost while the scheduler learned of the host: `link_lost`'s
            // `host_down` may have run before `host_up` and been ignored. Tell it again, after.
            let _ = tokio::task::spawn_blocking(move || node.host_down(peer)).await;
        }
        self.links_changed.notify_all();
    }

    /// Declares `peer` gone: its fragments are rescheduled or failed, its jobs here abandoned.
    fn link_lost(&self, peer: HostId, reason: &str) {
        let Some(link) = self.links.lock().remove(&peer) else {
            return;
        };
        // The id is retired before anyone hears of the loss: a process presenting it again
        // is refused from now on.
        self.retired.lock().insert(peer);
        link.conn.close(CLOSE_TIMEOUT, b"link lost");
        tracing::warn!(host = %self.host, %peer, reason, "host down");
        self.membership.emit(
            peer,
            HostEventKind::Down {
                reason: reason.to_owned(),
            },
        );
        let node = self.node.upgrade();
        let abandoned: Vec<Arc<RemoteJob>> = {
            let mut jobs = self.remote_jobs.lock();
            let ids: Vec<JobId> = jobs
                .keys()
                .filter(|j| j.initiator == peer)
                .copied()
                .collect();
            ids.into_iter().filter_map(|id| jobs.remove(&id)).collect()
        };
        let shutting_down = self.shutdown.state.lock().is_some();
        let lost_primary = peer == self.primary && !shutting_down;
        let handle = self.handle.clone();
        handle.spawn_blocking(move || {
            if let Some(node) = &node {
                node.host_down(peer);
                for job in &abandoned {
                    // Running fragments see `is_cancelled()`; unstarted ones are dropped; the
                    // replica goes once its running fragments return.
                    job.cancel.cancel();
                    let replica = match &mut *job.state.lock() {
                        RState::Ready { key, replica } => {
                            node.exec.remove(*key);
                            Some(replica.clone())
                        }
                        // Still deserializing: the replica is cancelled as soon as it exists.
                        RState::Loading { cancelled, .. } => {
                            *cancelled = true;
                            None
                        }
                        RState::Failed(_) => None,
                    };
                    if let Some(replica) = replica {
                        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                            || replica.cancel(),
                        )) {
                            tracing::error!(job = %job.id, "cancel() panicked: {}", crate::registry::panic_message(&*p));
                        }
                    }
                }
            }
        });
        if lost_primary {
            self.shutdown.set(Err(ServeError::PrimaryLost(peer)));
        }
        self.links_changed.notify_all();
    }

    async fn failure_detector(self: Arc<Self>) {
        let timeout = self.config.failure_timeout();
        let mut tick = tokio::time::interval(
            (self.config.heartbeat_interval() / 2).max(Duration::from_millis(10)),
        );
        loop {
            tick.tick().await;
            let stale: Vec<HostId> = self
                .links
                .lock()
                .iter()
                .filter(|(_, l)| l.last_seen.lock().elapsed() > timeout)
                .map(|(h, _)| *h)
                .collect();
            for peer in stale {
                self.link_lost(peer, "no heartbeat within the failure timeout");
            }
        }
    }

    async fn control_writer(
        self: Arc<Self>,
        conn: Connection,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => return self.link_lost(conn.peer(), &e.to_string()),
        };
        if let Err(e) = write_frame(&mut stream, &StreamHeader::Control, &[]).await {
            return self.link_lost(conn.peer(), &e.to_string());
        }
        let mut beat = tokio::time::interval(self.config.heartbeat_interval());
        loop {
            let result = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Outgoing::Msg(m)) => write_frame(&mut stream, &m, &[]).await,
                    Some(Outgoing::WithPayload(m, p)) => write_frame(&mut stream, &m, &p).await,
                    None => break,
                },
                _ = beat.tick() => write_frame(&mut stream, &Control::Heartbeat, &[]).await,
            };
            if let Err(e) = result {
                return self.link_lost(conn.peer(), &e.to_string());
            }
        }
        let _ = stream.finish();
    }

    async fn stream_acceptor(self: Arc<Self>, conn: Connection, last_seen: Arc<Mutex<Instant>>) {
        while let Ok(mut stream) = conn.accept_uni().await {
            let me = self.clone();
            let conn = conn.clone();
            let last_seen = last_seen.clone();
            tokio::spawn(async move {
                match read_header::<_, StreamHeader>(&mut stream, &me.limits).await {
                    Ok(Some((StreamHeader::Control, 0))) => {
                        me.control_reader(conn, stream, last_seen).await
                    }
                    Ok(Some((StreamHeader::Results { job }, 0))) if job.initiator == me.host => {
                        me.results_reader(conn, stream, job, last_seen).await
                    }
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        tracing::error!(host = %me.host, peer = %conn.peer(), "unexpected stream header");
                        conn.close(
                            fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                            b"bad stream header",
                        );
                    }
                    Err(e) => close_on_frame_error(&conn, &e),
                }
            });
        }
    }

    async fn read_payload(
        &self,
        stream: &mut RecvStream,
        len: u64,
    ) -> Result<Vec<u8>, fragmenta_wire::FrameError> {
        // The length was checked against the limits; read without zero-filling first. The
        // vector grows as bytes arrive, so a peer announcing a large payload and sending less
        // makes this host allocate what arrived, not what was announced.
        use tokio::io::AsyncReadExt;
        const INITIAL: u64 = 1 << 20;
        let mut payload = Vec::with_capacity(len.min(INITIAL) as usize);
        let got = stream
            .take(len)
            .read_to_end(&mut payload)
            .await
            .map_err(|e| fragmenta_wire::FrameError::Io {
                kind: e.kind(),
                reason: e.to_string(),
            })?;
        if got as u64 != len {
            return Err(fragmenta_wire::FrameError::Truncated);
        }
        Ok(payload)
    }

    async fn control_reader(
        self: Arc<Self>,
        conn: Connection,
        mut stream: RecvStream,
        last_seen: Arc<Mutex<Instant>>,
    ) {
        let peer = conn.peer();
        loop {
            let (msg, len) = match read_header::<_, Control>(&mut stream, &self.limits).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            *last_seen.lock() = Instant::now();
            let payload = match self.read_payload(&mut stream, len).await {
                Ok(p) => p,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            match msg {
                Control::Heartbeat => {}
                Control::Replica {
                    job,
                    class,
                    params,
                    count,
                } => {
                    if job.initiator != peer {
                        tracing::error!(host = %self.host, %peer, %job, "replica for another initiator's job");
                        continue;
                    }
                    self.on_replica(job, class, params, count as usize, payload);
                }
                Control::Dispatch {
                    job,
                    fragments,
                    rdma,
                } => self.on_dispatch(job, &fragments, rdma),
                Control::Cancel { job } => self.on_cancel(job),
                Control::Release { job } => self.on_release(job),
                Control::Shutdown if peer == self.primary => {
                    tracing::info!(host = %self.host, %peer, "shutdown requested");
                    self.shutdown.set(Ok(()));
                    // A clean shutdown: the links closing next are not hosts going down.
                    self.membership.close();
                }
                Control::Shutdown => {
                    // Only the primary stops the cluster; any other host asking is ignored.
                    tracing::error!(host = %self.host, %peer, "shutdown requested by a host that is not the primary; ignored");
                }
            }
        }
    }

    async fn results_reader(
        self: Arc<Self>,
        conn: Connection,
        mut stream: RecvStream,
        job: JobId,
        last_seen: Arc<Mutex<Instant>>,
    ) {
        let peer = conn.peer();
        let mut partial = HashMap::new();
        loop {
            let (results, len) = match read_header::<_, Results>(&mut stream, &self.limits).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            if results.payload_len() != Some(len) {
                tracing::error!(host = %self.host, %peer, %job, "result batch announces a different payload size");
                conn.close(
                    fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                    b"payload size mismatch",
                );
                return;
            }
            *last_seen.lock() = Instant::now();
            if let [ResultItem::Rdma { fragment, len }] = results.items.as_slice() {
                match self.receive_rdma(stream, job, peer, *fragment, *len).await {
                    Ok(s) => {
                        stream = s;
                        continue;
                    }
                    Err(reason) => {
                        tracing::error!(host = %self.host, %peer, %job, %reason, "bad RDMA result");
                        conn.close(
                            fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                            b"bad RDMA result",
                        );
                        return;
                    }
                }
            }
            if results
                .items
                .iter()
                .any(|i| matches!(i, ResultItem::Rdma { .. }))
            {
                tracing::error!(host = %self.host, %peer, %job, "RDMA result not alone in its frame");
                conn.close(
                    fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                    b"RDMA result not alone in its frame",
                );
                return;
            }
            let payload = match self.read_payload(&mut stream, len).await {
                Ok(p) => p,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            if let Some(node) = self.node.upgrade() {
                node.on_results(job, peer, results.items, payload, &mut partial);
            }
        }
    }

    /// Reads an RDMA result of `len` bytes straight from the stream into the initiator's
    /// buffer for `fragment`, then hands it to the scheduler as the fragment's chunk 0. Bytes
    /// for a buffer that is no longer waiting (job finished, fragment reassigned) are skipped.
    /// The buffer's lock is not `Send`, so the read runs on the blocking pool.
    async fn receive_rdma(
        &self,
        mut stream: RecvStream,
        job: JobId,
        peer: HostId,
        fragment: u64,
        len: u64,
    ) -> Result<RecvStream, String> {
        use tokio::io::AsyncReadExt;
        let node = self.node.upgrade().ok_or("node shut down")?;
        let index = usize::try_from(fragment).map_err(|_| "fragment index out of range")?;
        let Some(buffer) = node.rdma_target(job, index, peer) else {
            let skipped = tokio::io::copy(&mut (&mut stream).take(len), &mut tokio::io::sink())
                .await
                .map_err(|e| e.to_string())?;
            if skipped != len {
                return Err("stream ended inside an RDMA result".into());
            }
            return Ok(stream);
        };
        let n = usize::try_from(len).map_err(|_| "RDMA result too large")?;
        let (stream, buffer) = self
            .rdma_path
            .receive(stream, buffer, n)
            .await
            .map_err(|e| e.to_string())?;
        node.on_rdma_result(job, peer, index, buffer);
        Ok(stream)
    }

    fn on_replica(
        &self,
        job: JobId,
        class: fragmenta_job::ClassId,
        params: JobParams,
        count: usize,
        bytes: Vec<u8>,
    ) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let cancel = CancelToken::new();
        let rj = Arc::new(RemoteJob {
            id: job,
            count,
            params,
            tx: node.transaction(job, cancel.clone()),
            cancel,
            state: Mutex::new(RState::Loading {
                pending: Vec::new(),
                cancelled: false,
            }),
            in_flight: Mutex::new(0),
            drained: Condvar::new(),
            rdma: Mutex::new(HashMap::new()),
            out: out_tx,
        });
        self.remote_jobs.lock().insert(job, rj.clone());
        let conn = self
            .links
            .lock()
            .get(&job.initiator)
            .map(|l| l.conn.clone());
        if let (Some(conn), Some(me)) = (conn, self.me.upgrade()) {
            self.handle
                .spawn(me.results_writer(conn, Arc::downgrade(&rj), out_rx));
        }
        let host = self.host;
        self.handle.spawn_blocking(move || {
            let replica = node.registry.read().replica(class, &bytes);
            let replica = match replica {
                None => Err(FailureReason::UnknownClass(class)),
                Some(Err(e)) => Err(FailureReason::Deserialize(e)),
                Some(Ok(r)) => Ok(r),
            };
            let mut state = rj.state.lock();
            let RState::Loading { pending, cancelled } =
                std::mem::replace(&mut *state, RState::Failed(FailureReason::HostFailed(host)))
            else {
                return;
            };
            match replica {
                Err(reason) => {
                    tracing::error!(%host, %job, %reason, "cannot make the replica");
                    *state = RState::Failed(reason.clone());
                    drop(state);
                    for f in pending.into_iter().flatten() {
                        rj.send(Out::Item(ResultItem::Failed {
                            fragment: f as u64,
                            reason: reason.clone(),
                        }));
                    }
                }
                Ok(replica) => {
                    let key = node.exec.new_key();
                    *state = RState::Ready {
                        key,
                        replica: replica.clone(),
                    };
                    if cancelled {
                        drop(state);
                        replica.cancel();
                        rj.send(Out::Item(ResultItem::NotStarted {
                            ranges: to_wire(&pending),
                        }));
                        return;
                    }
                    let spec = WorkSpec {
                        priority: rj.params.priority,
                        cpu_load: rj.params.cpu_load,
                        gpu_load: rj.params.gpu_load,
                        thread_limit: rj.params.thread_limit,
                    };
                    let runner = Arc::new(RemoteRunner {
                        job: rj.clone(),
                        replica,
                        host,
                        rdma: node.rdma.clone(),
                    });
                    // The state stays locked until the executor knows the key: a dispatch
                    // that sees `Ready` adds its fragments to that key, and one arriving in
                    // between would find no work there and hand its fragments back unstarted
                    // (cancelled, for jobs whose fragments are never reassigned).
                    let submitted = node.exec.submit(key, spec, runner, pending.clone());
                    if let Err(e) = submitted {
                        let reason = crate::executor::refusal(host, &e);
                        *state = RState::Failed(reason.clone());
                        drop(state);
                        for f in pending.into_iter().flatten() {
                            rj.send(Out::Item(ResultItem::Failed {
                                fragment: f as u64,
                                reason: reason.clone(),
                            }));
                        }
                    }
                }
            }
        });
    }

    fn on_dispatch(&self, job: JobId, fragments: &[WireRange], rdma: Vec<(u64, u64)>) {
        let Some(rj) = self.remote_jobs.lock().get(&job).cloned() else {
            tracing::warn!(host = %self.host, %job, "dispatch for an unknown job");
            return;
        };
        if !rdma.is_empty() {
            rj.rdma.lock().extend(rdma);
        }
        let ranges = from_wire(fragments, rj.count);
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let mut state = rj.state.lock();
        match &mut *state {
            RState::Loading { pending, .. } => pending.extend(ranges),
            RState::Ready { key, .. } => {
                if !node.exec.add(*key, ranges.clone()) {
                    drop(state);
                    let _ = rj.out.send(Out::Item(ResultItem::NotStarted {
                        ranges: to_wire(&ranges),
                    }));
                }
            }
            RState::Failed(reason) => {
                let reason = reason.clone();
                drop(state);
                let rj = rj.clone();
                self.handle.spawn(async move {
                    for f in ranges.into_iter().flatten() {
                        let item = ResultItem::Failed {
                            fragment: f as u64,
                            reason: reason.clone(),
                        };
                        if rj.out.send(Out::Item(item)).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }

    fn on_cancel(&self, job: JobId) {
        let Some(rj) = self.remote_jobs.lock().get(&job).cloned() else {
            return;
        };
        let Some(node) = self.node.upgrade() else {
            return;
        };
        rj.cancel.cancel();
        self.handle.spawn_blocking(move || {
            let mut state = rj.state.lock();
            match &mut *state {
                RState::Loading { cancelled, .. } => *cancelled = true,
                RState::Ready { key, replica } => {
                    let replica = replica.clone();
                    let ranges = node.exec.drain_pending(*key);
                    drop(state);
                    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replica.cancel())) {
                        tracing::error!(job = %rj.id, "cancel() panicked: {}", crate::registry::panic_message(&*p));
                    }
                    rj.send(Out::Item(ResultItem::NotStarted { ranges: to_wire(&ranges) }));
                }
                RState::Failed(_) => {}
            }
        });
    }

    fn on_release(&self, job: JobId) {
        let Some(rj) = self.remote_jobs.lock().remove(&job) else {
            return;
        };
        let node = self.node.upgrade();
        // The replica may go with the last reference: its `Drop` is user code, kept off the
        // reactor.
        self.handle.spawn_blocking(move || {
            let key = match &*rj.state.lock() {
                RState::Ready { key, .. } => Some(*key),
                _ => None,
            };
            if let (Some(node), Some(key)) = (node, key) {
                node.exec.remove(key);
            }
            drop(rj);
        });
    }

    async fn results_writer(
        self: Arc<Self>,
        conn: Connection,
        rj: Weak<RemoteJob>,
        mut rx: mpsc::UnboundedReceiver<Out>,
    ) {
        // Weak: the job's sender lives in the job, so holding it here would keep the channel,
        // the job and its replica alive forever. Once the job is released and its fragments
        // are done, the channel closes and the stream is finished.
        let Some(job) = rj.upgrade().map(|rj| rj.id) else {
            return;
        };
        let written = |bytes: usize| {
            if let Some(rj) = rj.upgrade() {
                rj.written(bytes);
            }
        };
        let mut stream: Option<SendStream> = None;
        while let Some(first) = rx.recv().await {
            let mut bytes = match &first {
                Out::Chunk { data, .. } => data.len(),
                Out::Item(_) | Out::Rdma { .. } => 0,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_ITEMS && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(o) => {
                        if let Out::Chunk { data, .. } = &o {
                            bytes += data.len();
                        }
                        batch.push(o);
                    }
                    Err(_) => break,
                }
            }
            if stream.is_none() {
                match conn.open_uni().await {
                    Ok(mut s) => {
                        if let Err(e) =
                            write_frame(&mut s, &StreamHeader::Results { job }, &[]).await
                        {
                            tracing::warn!(%job, error = %e, "cannot open the result stream");
                            return;
                        }
                        stream = Some(s);
                    }
                    Err(e) => {
                        tracing::warn!(%job, error = %e, "cannot open the result stream");
                        return;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { return };
            if let Err(e) = write_batch(s, batch, &*self.rdma_path).await {
                tracing::warn!(host = %self.host, %job, error = %e, "result stream failed");
                rx.close();
                written(usize::MAX);
                return;
            }
            written(bytes);
        }
        if let Some(mut s) = stream {
            let _ = s.finish();
        }
    }

    /// Tells every peer to stop, then closes the endpoint and stops the runtime.
    pub(crate) fn shutdown(&self, announce: bool) {
        if announce {
            for link in self.links.lock().values() {
                let _ = link.control.send(Outgoing::Msg(Control::Shutdown));
            }
            // Give the control writers a moment to flush the announcement.
            std::thread::sleep(Duration::from_millis(100));
        }
        self.shutdown.set(Ok(()));
        for link in self.links.lock().values() {
            link.conn.close(CLOSE_SHUTDOWN, b"shutdown");
        }
        self.endpoint.close();
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_timeout(Duration::from_millis(500));
        }
    }

    fn link(&self, host: HostId) -> Option<Arc<Link>> {
        self.links.lock().get(&host).cloned()
    }
}

/// Writes a batch: small chunks and items share a frame; a large chunk goes in frames of its
/// own, straight from its buffer.
async fn write_batch(
    s: &mut SendStream,
    batch: Vec<Out>,
    path: &dyn RdmaPath,
) -> Result<(), fragmenta_wire::FrameError> {
    let mut items = Vec::new();
    let mut payload = Vec::new();
    for out in batch {
        match out {
            Out::Item(i) => items.push(i),
            Out::Rdma { fragment, buffer } => {
                if !items.is_empty() {
                    write_frame(
                        s,
                        &Results {
                            items: std::mem::take(&mut items),
                        },
                        &payload,
                    )
                    .await?;
                    payload.clear();
                }
                write_rdma(s, fragment, &buffer, path).await?;
            }
            Out::Chunk {
                fragment,
                seq,
                data,
            } if data.len() < (64 << 10) => {
                items.push(ResultItem::Chunk {
                    fragment,
                    seq,
                    len: data.len() as u64,
                    last: true,
                });
                payload.extend_from_slice(&data);
            }
            Out::Chunk {
                fragment,
                seq,
                data,
            } => {
                if !items.is_empty() {
                    write_frame(
                        s,
                        &Results {
                            items: std::mem::take(&mut items),
                        },
                        &payload,
                    )
                    .await?;
                    payload.clear();
                }
                let mut parts = data.chunks(MAX_PART).peekable();
                while let Some(part) = parts.next() {
                    let last = parts.peek().is_none();
                    let item = ResultItem::Chunk {
                        fragment,
                        seq,
                        len: part.len() as u64,
                        last,
                    };
                    write_frame(s, &Results { items: vec![item] }, part).await?;
                }
            }
        }
    }
    if !items.is_empty() {
        write_frame(s, &Results { items }, &payload).await?;
    }
    Ok(())
}

/// Writes a fragment's RDMA result as one frame whose payload is the buffer's bytes, sent by
/// this host's RDMA path.
async fn write_rdma(
    s: &mut SendStream,
    fragment: u64,
    buffer: &RdmaBuffer,
    path: &dyn RdmaPath,
) -> Result<(), fragmenta_wire::FrameError> {
    let len = buffer.len() as u64;
    let item = ResultItem::Rdma { fragment, len };
    fragmenta_wire::write_frame_header(s, &Results { items: vec![item] }, len).await?;
    path.send(s, buffer).await?;
    Ok(())
}

impl Remote for Net {
    fn send_replica(&self, job: &InitiatedJob, host: HostId) {
        let (Some(link), Some(bytes)) = (self.link(host), job.serialized.clone()) else {
            return;
        };
        let params = job.params();
        let msg = Control::Replica {
            job: job.id,
            class: job.job.class_id(),
            params,
            count: job.count.load(std::sync::atomic::Ordering::Acquire) as u64,
        };
        let _ = link.control.send(Outgoing::WithPayload(msg, bytes));
    }

    fn dispatch(&self, job: &Arc<InitiatedJob>, host: HostId, fragments: Vec<Range<usize>>) {
        let Some(link) = self.link(host) else {
            return;
        };
        if job.rdma.is_none() {
            let _ = link.control.send(Outgoing::Msg(Control::Dispatch {
                job: job.id,
                fragments: to_wire(&fragments),
                rdma: Vec::new(),
            }));
            return;
        }
        // RDMA results: ask the job for each fragment's receive buffer first. That is user code,
        // and this may be running on the reactor under the scheduler's lock: do it on the
        // blocking pool, then send the dispatch with the buffer sizes.
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let ij = Arc::clone(job);
        let id = job.id;
        self.handle.spawn(async move {
            let wire = to_wire(&fragments);
            let sizes = tokio::task::spawn_blocking(move || {
                let Some(map) = &ij.rdma else {
                    return Vec::new();
                };
                let mut sizes = Vec::new();
                for f in fragments.into_iter().flatten() {
                    let existing = map.lock().get(&f).map(|(b, _)| b.clone());
                    let buffer = existing.or_else(|| ij.job.rdma_buffer(&node.rdma, f));
                    if let Some(b) = buffer {
                        sizes.push((f as u64, b.len() as u64));
                        map.lock().insert(f, (b, host));
                    }
                }
                sizes
            })
            .await
            .unwrap_or_default();
            let _ = link.control.send(Outgoing::Msg(Control::Dispatch {
                job: id,
                fragments: wire,
                rdma: sizes,
            }));
        });
    }

    fn cancel(&self, job: JobId, host: HostId) {
        if let Some(link) = self.link(host) {
            let _ = link.control.send(Outgoing::Msg(Control::Cancel { job }));
        }
    }

    fn release(&self, job: JobId, host: HostId) {
        if let Some(link) = self.link(host) {
            let _ = link.control.send(Outgoing::Msg(Control::Release { job }));
        }
    }
}

/// Runs blocks of another host's job on its replica, streaming results back.
struct RemoteRunner {
    job: Arc<RemoteJob>,
    replica: Arc<dyn ErasedJob>,
    host: HostId,
    /// This host's RDMA buffer cache.
    rdma: RdmaContext,
}

struct ChannelSink<'a> {
    job: &'a RemoteJob,
    fragment: u64,
}

impl ChunkSink for ChannelSink<'_> {
    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> std::io::Result<()> {
        if self.job.send(Out::Chunk {
            fragment: self.fragment,
            seq,
            data,
        }) {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the job was released or its initiator is gone",
            ))
        }
    }
}

impl RemoteRunner {
    /// Runs fragment `f` on the RDMA path: the job fills a buffer from this host's context,
    /// limited to the receiver's `size`, which goes to the initiator's buffer as chunk 0.
    fn run_rdma(&self, f: usize, size: u64, ctx: &ExecutionContext) -> Result<u32, FailureReason> {
        let rj = &self.job;
        let limited = self
            .rdma
            .for_receiver(usize::try_from(size).unwrap_or(usize::MAX));
        match self
            .replica
            .run_remote_rdma(&rj.tx, f, rj.count, &limited, ctx)?
        {
            None => Ok(0),
            Some(buffer) if buffer.len() as u64 > size => Err(FailureReason::Returned(format!(
                "RDMA result of {} bytes exceeds the receiver's buffer of {size} bytes",
                buffer.len()
            ))),
            Some(buffer) => {
                if rj.send(Out::Rdma {
                    fragment: f as u64,
                    buffer,
                }) {
                    Ok(1)
                } else {
                    Err(FailureReason::Returned(
                        "the job was released or its initiator is gone".into(),
                    ))
                }
            }
        }
    }
}

impl BlockRunner for RemoteRunner {
    fn run(&self, block: &Block, worker: usize) -> Range<usize> {
        let rj = &self.job;
        let _span = tracing::debug_span!("fragments", host = %self.host, job = %rj.id,
            fragments = ?block.range, worker)
        .entered();
        let deadline = Instant::now() + crate::registry::TIME_SLICE;
        let ctx = ExecutionContext::new(self.host, worker, block.gpus.clone(), rj.cancel.clone());
        let mut f = block.range.start;
        while f < block.range.end {
            if rj.cancel.is_cancelled() {
                rj.send(Out::Item(ResultItem::NotStarted {
                    ranges: vec![(f as u64, block.range.end as u64)],
                }));
                return 0..0;
            }
            let receiver = rj.rdma.lock().remove(&(f as u64));
            let outcome = match receiver {
                Some(size) => self.run_rdma(f, size, &ctx),
                None => {
                    let mut sink = ChannelSink {
                        job: rj,
                        fragment: f as u64,
                    };
                    self.replica
                        .run_remote(&rj.tx, f, rj.count, &ctx, &mut sink)
                }
            };
            let item = match outcome {
                Ok(chunks) => ResultItem::Done {
                    fragment: f as u64,
                    chunks,
                },
                Err(reason) => ResultItem::Failed {
                    fragment: f as u64,
                    reason,
                },
            };
            if !rj.send(Out::Item(item)) {
                return 0..0;
            }
            f += 1;
            if f < block.range.end && Instant::now() >= deadline {
                return f..block.range.end;
            }
        }
        0..0
    }
}

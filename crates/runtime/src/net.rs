//! The node's network side: one QUIC connection per host pair, control and result streams, a
//! timer for the protocol's deadlines. It moves bytes: what a message means, and what to send,
//! is the protocol's (`fragmenta_sched::protocol`, driven through the node).
//!
//! - [`links`]: connecting, accepting, refusing reused ids, declaring hosts down;
//! - [`control`]: the control stream each way (replica, dispatch, cancel, release, heartbeat);
//! - [`results`]: result streams: writing a job's results back to its initiator, reading and
//!   reassembling them there (with backpressure: a paused stream is not read);
//! - [`replicas`]: replicas of other hosts' jobs and the runner of their fragments;
//! - `fetch`: copying Fast I/O publications between hosts;
//! - [`machine`]: the same-machine path (proven per link; result chunks handed over through
//!   the initiator's Fast I/O context instead of sent as QUIC stream bytes).
//!
//! All of it runs on a small tokio runtime owned by the node. Nothing here runs user code on a
//! reactor thread: deserializing a replica and calling its `cancel()` go to `spawn_blocking`,
//! fragments run on the worker pool, and deliveries on the node's delivery threads.

mod control;
mod error;
mod fetch;
mod links;
mod machine;
mod replicas;
mod results;

pub(crate) use error::bind_reason;
pub use error::JoinError;
pub use machine::SameMachineStats;

use crate::membership::Membership;
use crate::node::Node;
use fragmenta_config::ClusterConfig;
use fragmenta_job::{HostId, JobId};
use fragmenta_net::rdma::RdmaPath;
use fragmenta_net::{Connection, Endpoint, NetConfig, TlsFiles, Transport};
use fragmenta_sched::protocol::Limits;
use fragmenta_sched::HostInfo;
use fragmenta_wire::handshake::Hello;
use fragmenta_wire::messages::{Control, WireRange};
use fragmenta_wire::FrameLimits;
use parking_lot::{Condvar, Mutex};
use replicas::RemoteJob;
use results::Gate;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Close code for a peer that stopped sending heartbeats.
const CLOSE_TIMEOUT: u32 = 3;
/// Close code for a normal shutdown.
const CLOSE_SHUTDOWN: u32 = 4;
/// How long a join waits for its peers to answer its same-machine announcement.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

enum Outgoing {
    Msg(Control),
    WithPayload(Control, Arc<Vec<u8>>),
}

struct Link {
    conn: Connection,
    control: mpsc::UnboundedSender<Outgoing>,
    /// Set once the protocol knows the host: only then does it count towards the minimum
    /// cluster size, so a job submitted right after joining sees every host.
    ready: std::sync::atomic::AtomicBool,
    /// Whether the peer is a process of this machine, as proven on this link.
    shm: Arc<machine::ShmLink>,
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
        .map_err(|e| JoinError::Runtime {
            kind: e.kind(),
            errno: e.raw_os_error().unwrap_or(0),
        })
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
    /// Result streams the protocol paused, by (sender, job).
    gates: Mutex<HashMap<(HostId, JobId), Arc<Gate>>>,
    limits: FrameLimits,
    /// The protocol's bounds (result reassembly).
    proto_limits: Limits,
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
    /// Every host a link was registered with, kept when the link is lost: a join that times
    /// out names as missing only the hosts that never connected, not one that came and left
    /// (say a peer whose own join gave up first) before this host's deadline.
    met: Mutex<BTreeSet<HostId>>,
    /// Whether the same-machine path is on (the configuration's `same_machine`, and
    /// `FRAGMENTA_SAME_MACHINE` not off).
    same_machine: bool,
    /// This machine's boot id.
    boot_id: Option<String>,
    /// What the same-machine path did.
    shm: machine::ShmCounters,
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

impl Net {
    /// Binds this host's endpoint on `transport` (QUIC with the configuration's TLS files when
    /// `None`), connects to the configured hosts and waits for the minimum cluster size.
    /// Everything after the bind is the same whatever the transport.
    pub(crate) fn start(
        node: &Arc<Node>,
        config: ClusterConfig,
        host: HostId,
        transport: Option<&dyn Transport>,
    ) -> Result<Arc<Net>, JoinError> {
        let runtime = runtime(host)?;
        let me = config
            .host(host)
            .ok_or(fragmenta_config::ConfigError::NoHostId)?;
        let addr = me.socket_addr()?;
        let endpoint = {
            let _guard = runtime.enter();
            match transport {
                Some(t) => t.bind(host, addr),
                None => {
                    let tls = TlsFiles {
                        ca: config.ca_cert().to_path_buf(),
                        cert: me.cert().to_path_buf(),
                        key: me.key().to_path_buf(),
                    };
                    Endpoint::bind_quic_as(host, addr, &tls, &NetConfig::default())
                }
            }
            .map_err(|e| JoinError::Bind {
                addr,
                reason: bind_reason(e),
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
        let proto_limits = Limits {
            heartbeat_interval: config.heartbeat_interval(),
            failure_timeout: config.failure_timeout(),
            ..Limits::default()
        };
        node.with_proto(|p| p.set_limits(proto_limits.clone()));
        let same_machine = machine::enabled() && config.same_machine();
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
            gates: Mutex::new(HashMap::new()),
            limits,
            proto_limits,
            rdma_path: fragmenta_net::rdma::select(&fragmenta_net::rdma::probe()),
            shutdown: Signal::default(),
            me: me.clone(),
            membership: Membership::default(),
            retired: Mutex::new(BTreeSet::new()),
            refused: Mutex::new(None),
            met: Mutex::new(BTreeSet::new()),
            same_machine,
            boot_id: machine::boot_id(),
            shm: machine::ShmCounters::default(),
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
        net.handle.spawn(net.clone().timer());
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
        // Only links whose host the protocol knows count (see `Link::ready`).
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
                // Hosts that connected and left since count as neither up nor missing.
                let met = self.met.lock();
                let missing = self
                    .config
                    .host_ids()
                    .filter(|h| *h != self.host && !links.contains_key(h) && !met.contains(h))
                    .collect();
                return Err(JoinError::MinHosts {
                    min,
                    waited,
                    missing,
                });
            }
        }
        // Every link up now has its same-machine detection settled (the peer answered this
        // host's announcement), so nothing of it is left in this host's context once joined.
        // Bounded: a peer that never answers leaves its link on QUIC, which is what it is.
        let settle_by = Instant::now() + SETTLE_TIMEOUT;
        while links.values().any(|l| {
            l.ready.load(std::sync::atomic::Ordering::Acquire)
                && !l.shm.settled.load(std::sync::atomic::Ordering::Acquire)
        }) {
            if self
                .links_changed
                .wait_until(&mut links, settle_by)
                .timed_out()
            {
                let unsettled: Vec<HostId> = links
                    .iter()
                    .filter(|(_, l)| !l.shm.settled.load(std::sync::atomic::Ordering::Acquire))
                    .map(|(h, _)| *h)
                    .collect();
                tracing::debug!(host = %self.host, ?unsettled, "same-machine detection did not settle in time; those links stay on QUIC until it does");
                break;
            }
        }
        drop(links);
        // Refused by one host while enough others accepted: still not a member.
        match self.refused.lock().clone() {
            Some((by, reason)) => Err(JoinError::Refused { by, reason }),
            None => Ok(()),
        }
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.host == self.primary
    }

    /// What the same-machine path did on this host, and with which peers.
    pub(crate) fn same_machine_stats(&self) -> SameMachineStats {
        use std::sync::atomic::Ordering::Relaxed;
        SameMachineStats {
            peers: self
                .links
                .lock()
                .iter()
                .filter(|(_, l)| l.shm.same_machine())
                .map(|(h, _)| *h)
                .collect(),
            chunks_received: self.shm.chunks_received.load(Relaxed),
            bytes_received: self.shm.bytes_received.load(Relaxed),
            chunks_sent: self.shm.chunks_sent.load(Relaxed),
            bytes_sent: self.shm.bytes_sent.load(Relaxed),
            rdma_received: self.shm.rdma_received.load(Relaxed),
            rdma_bytes_received: self.shm.rdma_bytes_received.load(Relaxed),
            rdma_sent: self.shm.rdma_sent.load(Relaxed),
            rdma_bytes_sent: self.shm.rdma_bytes_sent.load(Relaxed),
            reclaimed: self.shm.reclaimed.load(Relaxed),
        }
    }

    pub(crate) fn peers(&self) -> Vec<HostId> {
        self.links.lock().keys().copied().collect()
    }

    fn hello(&self) -> Hello {
        Hello::new(self.config.name(), self.host)
    }

    /// Wakes the protocol at its deadlines (heartbeats due, silent peers), and at least every
    /// half heartbeat interval so deadlines set meanwhile are not missed by much.
    async fn timer(self: Arc<Self>) {
        let most = (self.config.heartbeat_interval() / 2).max(Duration::from_millis(10));
        loop {
            let Some(node) = self.node.upgrade() else {
                return;
            };
            let next = node.on_timer();
            let now = node.now();
            drop(node);
            let wait = next.map_or(most, |t| t.saturating_sub(now).min(most));
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Tells every peer to stop, then closes the endpoint and stops the runtime.
    pub(crate) fn shutdown(&self, announce: bool) {
        // Shutting down from now on: the peers closing their links once they hear of it are
        // not hosts going down.
        self.shutdown.set(Ok(()));
        if announce {
            for link in self.links.lock().values() {
                let _ = link.control.send(Outgoing::Msg(Control::Shutdown));
            }
            // Give the control writers a moment to flush the announcement.
            std::thread::sleep(Duration::from_millis(100));
        }
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

    fn send_control(&self, host: HostId, msg: Control) {
        if let Some(link) = self.link(host) {
            let _ = link.control.send(Outgoing::Msg(msg));
        }
    }
}

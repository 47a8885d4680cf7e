//! The per-host protocol state machine: everything one host decides about the jobs it
//! initiates, the replicas it holds of other hosts' jobs, the result streams it receives and the
//! liveness of its peers.
//!
//! [`Protocol`] performs no I/O whatsoever: no sockets, no threads, no clock reads. The runtime
//! (or the deterministic simulation, the `sim` module with the `sim` feature) feeds it typed events
//! and carries out the [`Action`]s it polls:
//!
//! - from peers: [`Protocol::on_message`] (control stream: heartbeat, replica, dispatch, cancel,
//!   release, reclaim and its answer) and [`Protocol::on_results`] (result stream of one job: chunks, done, failed, not
//!   started); [`Protocol::link_up`] / [`Protocol::link_down`] for connections;
//! - from the program: [`Protocol::submit`], [`Protocol::cancel`];
//! - from the worker pool: [`Protocol::replica_loaded`], [`Protocol::work_drained`],
//!   [`Protocol::work_reclaimed`],
//!   [`Protocol::local_block_done`] and, for fragments re-run on their initiator with their
//!   chunks, [`Protocol::local_chunk`] / [`Protocol::local_fragment_finished`];
//! - from delivery: [`Protocol::delivered`] once a chunk was handed to the job;
//! - time: `now` is a [`Duration`] since an origin the driver picks (the runtime: its start;
//!   the simulation: simulated time). [`Protocol::poll_timeout`] gives the next deadline and
//!   [`Protocol::handle_timeout`] acts on it (heartbeats due, peers silent for the failure
//!   timeout).
//!
//! What it decides:
//! - on the initiator, through its [`Scheduler`]: where fragments run, reassignment, work
//!   stealing across hosts ([`Message::Reclaim`], answered [`Message::Reclaimed`]),
//!   exactly-once and ordered delivery, cancel and release;
//! - for replicas of other hosts' jobs: the life cycle `Loading` → `Ready` or `Failed`,
//!   dispatches that arrive while loading wait for it, cancel drains unstarted fragments (answered
//!   `NotStarted`), release and the loss of the initiator drop the replica and its work;
//! - result streams: which host's chunks are accepted (the scheduler's rules), and how much of a
//!   job's results the initiator holds: above [`Limits::max_held_bytes`] it pauses result streams
//!   (the transport's flow control then holds the senders) without ever pausing the stream that
//!   carries the next chunk to deliver, so ordered delivery cannot deadlock;
//! - bounds on everything a peer announces ([`Limits`]): a replica's fragment count and
//!   parameters, dispatch ranges, result-stream chunk parts ([`ResultStream`]). A violation
//!   declares the peer down with [`Down::Violation`]: the runtime closes its connection.
//!
//! Admission (which queued fragment starts when) is the [`crate::host::HostQueue`]'s, inside the
//! worker pool: the protocol tells it what to queue ([`Action::SubmitWork`], [`Action::AddWork`],
//! [`Action::DrainWork`], [`Action::ReclaimWork`], [`Action::RemoveWork`]). Running a block, and streaming its chunks
//! and per-fragment outcomes back to the initiator, is the worker's: it stops at the first
//! fragment after its replica was cancelled ([`Action::CancelReplica`]) and answers the rest
//! `NotStarted`.

use crate::cluster::{Action as SchedAction, HostInfo, JobSpec, Outcome, Scheduler, Weight};
use crate::host::{WorkKey, WorkSpec};
use fragmenta_job::{
    FailureReason, FragmentSet, HostId, InvalidArgument, JobId, JobParams, JobReport,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// Bounds and timings of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// A heartbeat goes to every peer this often.
    pub heartbeat_interval: Duration,
    /// A peer heard nothing from for this long is declared down.
    pub failure_timeout: Duration,
    /// Most fragments a job announced by a peer may have.
    pub max_fragments: u64,
    /// Most bytes one chunk may have once its parts are joined.
    pub max_chunk_bytes: u64,
    /// Result weight (bytes) of one job the initiator holds, buffered for ordered delivery or
    /// waiting for the job to take it, before it stops reading that job's result streams.
    pub max_held_bytes: usize,
    /// Most result streams from one peer paused at once: each keeps up to its transport's
    /// stream window unread, which counts against the connection's window, and a connection
    /// out of credit would stall that peer's control stream (and heartbeats) too.
    pub max_paused_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            heartbeat_interval: Duration::from_millis(500),
            failure_timeout: Duration::from_millis(2500),
            max_fragments: 1 << 32,
            max_chunk_bytes: 256 << 20,
            max_held_bytes: 64 << 20,
            max_paused_per_peer: 3,
        }
    }
}

/// A control message between hosts, as the protocol sees it. `R` is the replica's body (the
/// serialized job and its class, for the runtime), carried through to [`Action::LoadReplica`].
#[derive(Clone, Debug, PartialEq)]
pub enum Message<R> {
    /// Liveness.
    Heartbeat,
    /// A job of the sending host, to run fragments of here.
    Replica {
        /// The job (its initiator must be the sender).
        job: JobId,
        /// Its parameters.
        params: JobParams,
        /// Its fragment count.
        count: u64,
        /// What the runtime needs to make the replica.
        body: R,
    },
    /// Fragments of a job whose replica came before.
    Dispatch {
        /// The job.
        job: JobId,
        /// Half-open fragment ranges.
        fragments: Vec<(u64, u64)>,
    },
    /// Cancel the job here; from a host running fragments of a job this host initiated: a
    /// fragment aborted the job, cancel it.
    Cancel {
        /// The job.
        job: JobId,
    },
    /// The job is over: drop its replica.
    Release {
        /// The job.
        job: JobId,
    },
    /// From the job's initiator (work stealing): give back those of these fragments that have
    /// not started; answered with [`Message::Reclaimed`].
    Reclaim {
        /// The job.
        job: JobId,
        /// Half-open fragment ranges.
        fragments: Vec<(u64, u64)>,
    },
    /// To the job's initiator, the answer to [`Message::Reclaim`]: these fragments were taken
    /// out of the queue unstarted and will not run here (a subset of those asked for).
    Reclaimed {
        /// The job.
        job: JobId,
        /// Half-open fragment ranges.
        fragments: Vec<(u64, u64)>,
    },
}

/// One entry of a result stream, reassembled (see [`ResultStream`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ResultEvent<P> {
    /// A whole chunk of a fragment's result.
    Chunk {
        /// Fragment index.
        fragment: u64,
        /// Sequence number within the fragment.
        seq: u32,
        /// The chunk.
        payload: P,
    },
    /// The fragment finished after `chunks` chunks.
    Done {
        /// Fragment index.
        fragment: u64,
        /// Chunks it sent.
        chunks: u32,
    },
    /// The fragment failed.
    Failed {
        /// Fragment index.
        fragment: u64,
        /// Why.
        reason: FailureReason,
    },
    /// Fragments given back unstarted.
    NotStarted {
        /// Half-open fragment ranges.
        ranges: Vec<(u64, u64)>,
    },
}

/// What a replica's host answers its initiator on the job's result stream when the protocol
/// (not a running fragment) decides it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The fragment cannot run here.
    Failed {
        /// Fragment index.
        fragment: usize,
        /// Why.
        reason: FailureReason,
    },
    /// Fragments dropped without starting.
    NotStarted {
        /// The ranges.
        ranges: Vec<Range<usize>>,
    },
}

/// Why a peer was declared down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    /// Nothing heard from it within the failure timeout.
    Timeout,
    /// Its connection closed.
    Closed(String),
    /// It broke the protocol (what it announced is out of bounds or inconsistent).
    Violation(String),
}

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Down::Timeout => f.write_str("no heartbeat within the failure timeout"),
            Down::Closed(why) => write!(f, "connection lost: {why}"),
            Down::Violation(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

/// What the driver must do next.
#[derive(Debug, PartialEq)]
#[must_use]
pub enum Action<P, R> {
    /// Send the job (serialized, with its parameters and count) to `host`.
    SendReplica {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
    },
    /// Send `host` fragments of the job to run.
    SendDispatch {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
        /// Ascending ranges.
        fragments: Vec<Range<usize>>,
    },
    /// Tell `host` to cancel the job.
    SendCancel {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
    },
    /// Ask `host` to give back the job's fragments of these ranges it has not started
    /// ([`Message::Reclaim`]).
    SendReclaim {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
        /// Ascending ranges.
        fragments: Vec<Range<usize>>,
    },
    /// Tell the job's initiator `host` which of the fragments it asked back were removed
    /// unstarted ([`Message::Reclaimed`]).
    SendReclaimed {
        /// The job (of another host).
        job: JobId,
        /// Its initiator.
        host: HostId,
        /// Ascending ranges (may be empty).
        fragments: Vec<Range<usize>>,
    },
    /// Tell `host` to drop the job's replica.
    SendRelease {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
    },
    /// Send a heartbeat to `host`.
    SendHeartbeat {
        /// The peer.
        host: HostId,
    },
    /// Send this answer on the job's result stream to its initiator.
    SendAnswer {
        /// The job (of another host).
        job: JobId,
        /// The answer.
        answer: Answer,
    },
    /// Make the replica from its body; report with [`Protocol::replica_loaded`].
    LoadReplica {
        /// The job.
        job: JobId,
        /// The body from the replica message.
        body: R,
    },
    /// Cancel the replica: running fragments see it cancelled, its `cancel()` runs (once it
    /// exists, if it is still loading).
    CancelReplica {
        /// The job.
        job: JobId,
    },
    /// Drop the replica (its work was removed before).
    DropReplica {
        /// The job.
        job: JobId,
    },
    /// Queue new work on the worker pool. `job` is local (run on the original) when its
    /// initiator is this host.
    SubmitWork {
        /// The key the worker pool files it under.
        key: WorkKey,
        /// The job.
        job: JobId,
        /// Admission parameters.
        spec: WorkSpec,
        /// First fragments (may be empty).
        fragments: Vec<Range<usize>>,
    },
    /// Add fragments to queued work.
    AddWork {
        /// The work.
        key: WorkKey,
        /// The fragments.
        fragments: Vec<Range<usize>>,
    },
    /// Take the work's unstarted fragments out of the queue and report them with
    /// [`Protocol::work_drained`].
    DrainWork {
        /// The work.
        key: WorkKey,
    },
    /// Take those of these fragments that are still queued (not started) out of the work's
    /// queue and report them with [`Protocol::work_reclaimed`].
    ReclaimWork {
        /// The work.
        key: WorkKey,
        /// The fragments asked back.
        fragments: Vec<Range<usize>>,
    },
    /// Unregister the work (running blocks finish).
    RemoveWork {
        /// The work.
        key: WorkKey,
    },
    /// Hand this chunk to the job (`receive_remote_result`), then call
    /// [`Protocol::delivered`] with its weight.
    Deliver {
        /// The job.
        job: JobId,
        /// Fragment index.
        fragment: usize,
        /// Sequence number.
        seq: u32,
        /// The chunk.
        payload: P,
    },
    /// The job finished (after every `Deliver` of it).
    Finished(JobReport),
    /// `host` is down: close its connection, never accept its id again.
    HostDown {
        /// The peer.
        host: HostId,
        /// Why.
        why: Down,
    },
    /// Stop reading the job's result stream from `host`.
    PauseResults {
        /// The job.
        job: JobId,
        /// The sending host.
        host: HostId,
    },
    /// Read the job's result stream from `host` again.
    ResumeResults {
        /// The job.
        job: JobId,
        /// The sending host.
        host: HostId,
    },
}

/// What [`Protocol::on_results`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResultsOutcome {
    /// Remote fragments reported done and accepted.
    pub done: usize,
    /// Entries dropped as stale (late, duplicated, from a replaced attempt, or of a finished
    /// job).
    pub stale: usize,
}

/// A replica of another host's job.
enum Replica {
    Loading {
        pending: Vec<Range<usize>>,
        cancelled: bool,
    },
    Ready(WorkKey),
    Failed(FailureReason),
}

struct RemoteJob {
    params: JobParams,
    count: usize,
    state: Replica,
}

struct LocalJob {
    params: JobParams,
    key: Option<WorkKey>,
    /// Weight of chunks handed out with `Deliver` and not yet reported delivered.
    queued: usize,
    /// Hosts whose result stream of this job is paused.
    paused: BTreeSet<HostId>,
}

struct Peer {
    last_seen: Duration,
    next_beat: Duration,
}

/// The protocol of one host. See the [module docs](self).
pub struct Protocol<P, R> {
    local: HostId,
    info: HostInfo,
    limits: Limits,
    sched: Scheduler<P>,
    peers: BTreeMap<HostId, Peer>,
    local_jobs: BTreeMap<JobId, LocalJob>,
    remote_jobs: BTreeMap<JobId, RemoteJob>,
    works: BTreeMap<WorkKey, JobId>,
    next_key: u64,
    actions: VecDeque<Action<P, R>>,
    now: Duration,
}

fn spec_of(p: &JobParams) -> WorkSpec {
    WorkSpec {
        priority: p.priority,
        cpu_load: p.cpu_load,
        gpu_load: p.gpu_load,
        thread_limit: p.thread_limit,
    }
}

impl<P: Weight, R> Protocol<P, R> {
    /// The protocol of host `local` with `info`, at time `now`.
    pub fn new(local: HostId, info: HostInfo, limits: Limits, now: Duration) -> Self {
        Protocol {
            local,
            sched: Scheduler::new(local, info.clone()),
            info,
            limits,
            peers: BTreeMap::new(),
            local_jobs: BTreeMap::new(),
            remote_jobs: BTreeMap::new(),
            works: BTreeMap::new(),
            next_key: 0,
            actions: VecDeque::new(),
            now,
        }
    }

    /// Caps CLUSTER batches and per-host windows of the scheduler
    /// ([`Scheduler::set_limits`]).
    pub fn set_scheduler_limits(&mut self, max_batch: usize, max_window: usize) {
        self.sched.set_limits(max_batch, max_window);
    }

    /// Turns CLUSTER work stealing for the jobs this host initiates on (the default) or off
    /// ([`Scheduler::set_work_stealing`]). Answering other hosts' reclaims is not affected.
    pub fn set_work_stealing(&mut self, on: bool) {
        self.sched.set_work_stealing(on);
    }

    /// Reclaim requests this host's scheduler made so far (work stealing).
    pub fn reclaims(&self) -> u64 {
        self.sched.reclaims()
    }

    /// Replaces the limits (for instance with the configuration's heartbeat and failure
    /// timeout, once it is known).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// A peer broke the protocol on a stream the driver checks itself (a result stream's
    /// framing, for instance): it is declared down with [`Down::Violation`].
    pub fn peer_violated(&mut self, peer: HostId, detail: String) {
        self.violation(peer, detail);
    }

    /// This host.
    pub fn local(&self) -> HostId {
        self.local
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Peers with a live link, ascending.
    pub fn peers(&self) -> impl Iterator<Item = HostId> + '_ {
        self.peers.keys().copied()
    }

    /// Hosts the scheduler counts (this one included), with their resources.
    pub fn hosts(&self) -> impl Iterator<Item = (HostId, &HostInfo)> {
        self.sched.hosts()
    }

    /// Jobs initiated here and not finished.
    pub fn active_jobs(&self) -> usize {
        self.local_jobs.len()
    }

    /// Replicas of other hosts' jobs held here.
    pub fn replicas(&self) -> usize {
        self.remote_jobs.len()
    }

    /// Work registered with the worker pool.
    pub fn works(&self) -> usize {
        self.works.len()
    }

    /// The job a work belongs to.
    pub fn work_job(&self, key: WorkKey) -> Option<JobId> {
        self.works.get(&key).copied()
    }

    /// Whether this host holds anything of `job` (as initiator or replica).
    pub fn holds(&self, job: JobId) -> bool {
        self.local_jobs.contains_key(&job)
            || self.remote_jobs.contains_key(&job)
            || self.works.values().any(|j| *j == job)
    }

    /// Jobs this host holds a replica of, ascending.
    pub fn replica_jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        self.remote_jobs.keys().copied()
    }

    /// The next action, if any.
    #[must_use = "an action not carried out is lost: poll until None and carry out each"]
    pub fn poll_action(&mut self) -> Option<Action<P, R>> {
        self.actions.pop_front()
    }

    /// The next moment [`handle_timeout`](Self::handle_timeout) has something to do.
    #[must_use = "the deadline is when `handle_timeout` must be called next"]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.peers
            .values()
            .map(|p| p.next_beat.min(p.last_seen + self.limits.failure_timeout))
            .min()
    }

    /// Sends heartbeats that are due and declares down peers silent for the failure timeout.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.advance_clock(now);
        let timeout = self.limits.failure_timeout;
        let mut silent = Vec::new();
        for (host, peer) in &mut self.peers {
            if now.saturating_sub(peer.last_seen) >= timeout {
                silent.push(*host);
                continue;
            }
            if now >= peer.next_beat {
                peer.next_beat = now + self.limits.heartbeat_interval;
                self.actions
                    .push_back(Action::SendHeartbeat { host: *host });
            }
        }
        for host in silent {
            self.host_down(host, Down::Timeout);
        }
    }

    fn advance_clock(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    fn seen(&mut self, peer: HostId, now: Duration) -> bool {
        self.advance_clock(now);
        match self.peers.get_mut(&peer) {
            Some(p) => {
                p.last_seen = p.last_seen.max(now);
                true
            }
            None => false,
        }
    }

    /// Something arrived from `peer` (a frame header whose payload is still coming, for
    /// instance): it is alive.
    pub fn heard_from(&mut self, peer: HostId, now: Duration) {
        let _ = self.seen(peer, now);
    }

    /// A connection to `peer` is up: it counts for scheduling from now on. Host ids are never
    /// reused, so a peer already linked is ignored.
    pub fn link_up(&mut self, peer: HostId, info: HostInfo, now: Duration) {
        self.advance_clock(now);
        if peer == self.local || self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                last_seen: now,
                next_beat: now,
            },
        );
        self.sched.host_up(peer, info);
        self.pump();
    }

    /// The connection to `peer` closed.
    pub fn link_down(&mut self, peer: HostId, why: &str) {
        self.host_down(peer, Down::Closed(why.to_owned()));
    }

    /// Declares `peer` down: its fragments are reassigned or failed, the jobs it initiated are
    /// abandoned here. Nothing it sent afterwards is accepted.
    fn host_down(&mut self, peer: HostId, why: Down) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.actions.push_back(Action::HostDown { host: peer, why });
        let abandoned: Vec<JobId> = self
            .remote_jobs
            .keys()
            .filter(|j| j.initiator == peer)
            .copied()
            .collect();
        for job in abandoned {
            self.drop_replica(job, true);
        }
        for lj in self.local_jobs.values_mut() {
            lj.paused.remove(&peer);
        }
        self.sched.host_down(peer);
        self.pump();
    }

    fn violation(&mut self, peer: HostId, detail: String) {
        self.host_down(peer, Down::Violation(detail));
    }

    /// A control message from `peer`.
    pub fn on_message(&mut self, peer: HostId, msg: Message<R>, now: Duration) {
        if !self.seen(peer, now) {
            return; // not (or no longer) a peer: dropped
        }
        match msg {
            Message::Heartbeat => {}
            Message::Replica {
                job,
                params,
                count,
                body,
            } => self.on_replica(peer, job, params, count, body),
            Message::Dispatch { job, fragments } => self.on_dispatch(peer, job, &fragments),
            Message::Cancel { job } => self.on_cancel(peer, job),
            Message::Release { job } => {
                if job.initiator == peer {
                    self.drop_replica(job, false);
                }
            }
            Message::Reclaim { job, fragments } => self.on_reclaim(peer, job, &fragments),
            Message::Reclaimed { job, fragments } => self.on_reclaimed(peer, job, &fragments),
        }
    }

    /// Checks ranges a peer announced for a job of `count` fragments: each non-empty and inside
    /// `0..count`, ascending and disjoint (so they total at most `count`).
    fn check_ranges(
        fragments: &[(u64, u64)],
        count: u64,
        what: &str,
        job: JobId,
    ) -> Result<Vec<Range<usize>>, String> {
        let mut ranges = Vec::with_capacity(fragments.len().min(1024));
        let mut prev_end = 0u64;
        for &(a, b) in fragments {
            if a >= b || b > count || a < prev_end {
                return Err(format!(
                    "{what} of {job}: range {a}..{b} outside 0..{count} or out of order"
                ));
            }
            prev_end = b;
            let (Ok(a), Ok(b)) = (usize::try_from(a), usize::try_from(b)) else {
                return Err(format!("{what} of {job}: range {a}..{b} out of range"));
            };
            ranges.push(a..b);
        }
        Ok(ranges)
    }

    /// The initiator of `job` asks back fragments not started yet.
    fn on_reclaim(&mut self, peer: HostId, job: JobId, fragments: &[(u64, u64)]) {
        if job.initiator != peer {
            return self.violation(peer, format!("reclaim of {job}, initiated by another host"));
        }
        let count = self
            .remote_jobs
            .get(&job)
            .map_or(self.limits.max_fragments, |r| r.count as u64);
        let ranges = match Self::check_ranges(fragments, count, "reclaim", job) {
            Ok(r) => r,
            Err(detail) => return self.violation(peer, detail),
        };
        let reply = |fragments| Action::SendReclaimed {
            job,
            host: peer,
            fragments,
        };
        let Some(rj) = self.remote_jobs.get_mut(&job) else {
            // Released or never here: nothing of it is queued.
            self.actions.push_back(reply(Vec::new()));
            return;
        };
        match &mut rj.state {
            Replica::Loading { pending, .. } => {
                // Not queued yet: whatever of it was asked for comes back at once, except the
                // lowest fragment held: it stays, so the outcome of the load reaches the
                // initiator (a replica that cannot load answers it failed with the reason,
                // and the initiator excludes this host from the job).
                let mut asked = FragmentSet::new();
                for r in &ranges {
                    asked.insert_range(r.clone());
                }
                if let Some(lowest) = pending
                    .iter()
                    .filter(|r| !r.is_empty())
                    .map(|r| r.start)
                    .min()
                {
                    asked.remove_range(lowest..lowest + 1);
                }
                let mut kept = Vec::new();
                let mut given = FragmentSet::new();
                for r in pending.drain(..) {
                    let taken = asked.intersect_range(r.clone());
                    given.extend_from(&taken);
                    let mut rest = FragmentSet::from_range(r);
                    for t in taken.ranges() {
                        rest.remove_range(t);
                    }
                    kept.extend(rest.ranges());
                }
                *pending = kept;
                self.actions.push_back(reply(given.to_ranges()));
            }
            Replica::Ready(key) => {
                let key = *key;
                self.actions.push_back(Action::ReclaimWork {
                    key,
                    fragments: ranges,
                });
            }
            // Its fragments are answered failed as they come: none is queued.
            Replica::Failed(_) => self.actions.push_back(reply(Vec::new())),
        }
    }

    /// A host running fragments of a job initiated here answered a reclaim.
    fn on_reclaimed(&mut self, peer: HostId, job: JobId, fragments: &[(u64, u64)]) {
        if job.initiator != self.local {
            return self.violation(
                peer,
                format!("reclaimed fragments of {job}, which this host did not start"),
            );
        }
        let ranges = match Self::check_ranges(fragments, u64::MAX, "reclaimed", job) {
            Ok(r) => r,
            Err(detail) => return self.violation(peer, detail),
        };
        match self.sched.on_reclaimed(job, peer, &ranges) {
            Ok(_) => self.pump(),
            Err(e) => self.violation(peer, e.to_string()),
        }
    }

    /// The fragments of `key` taken out of the queue unstarted after [`Action::ReclaimWork`].
    pub fn work_reclaimed(&mut self, key: WorkKey, ranges: Vec<Range<usize>>) {
        let Some(job) = self.works.get(&key).copied() else {
            return;
        };
        if job.initiator == self.local {
            // Asked by this host's own scheduler: the answer cannot break the protocol.
            let _ = self.sched.on_reclaimed(job, self.local, &ranges);
            self.pump();
        } else if self.remote_jobs.contains_key(&job) {
            self.actions.push_back(Action::SendReclaimed {
                job,
                host: job.initiator,
                fragments: ranges,
            });
        }
    }

    fn on_replica(&mut self, peer: HostId, job: JobId, params: JobParams, count: u64, body: R) {
        if job.initiator != peer {
            return self.violation(peer, format!("replica of {job}, initiated by another host"));
        }
        if count > self.limits.max_fragments {
            return self.violation(
                peer,
                format!(
                    "replica of {job} with {count} fragments, more than the limit of {}",
                    self.limits.max_fragments
                ),
            );
        }
        let Ok(count) = usize::try_from(count) else {
            return self.violation(
                peer,
                format!("replica of {job}: count {count} out of range"),
            );
        };
        if let Err(e) = params.validate() {
            return self.violation(peer, format!("replica of {job}: {e}"));
        }
        if self.remote_jobs.contains_key(&job) {
            return self.violation(peer, format!("second replica of {job}"));
        }
        self.remote_jobs.insert(
            job,
            RemoteJob {
                params,
                count,
                state: Replica::Loading {
                    pending: Vec::new(),
                    cancelled: false,
                },
            },
        );
        self.actions.push_back(Action::LoadReplica { job, body });
    }

    fn on_dispatch(&mut self, peer: HostId, job: JobId, fragments: &[(u64, u64)]) {
        if job.initiator != peer {
            return self.violation(
                peer,
                format!("dispatch of {job}, initiated by another host"),
            );
        }
        let Some(count) = self.remote_jobs.get(&job).map(|r| r.count) else {
            return self.violation(peer, format!("dispatch of {job} before its replica"));
        };
        let mut ranges = Vec::with_capacity(fragments.len());
        let mut total = 0u64;
        for &(a, b) in fragments {
            if a >= b || b > count as u64 {
                return self.violation(
                    peer,
                    format!("dispatch of {job}: range {a}..{b} outside 0..{count}"),
                );
            }
            total += b - a;
            if total > count as u64 {
                return self.violation(
                    peer,
                    format!("dispatch of {job}: {total} fragments, more than its {count}"),
                );
            }
            ranges.push(a as usize..b as usize);
        }
        let Some(rj) = self.remote_jobs.get_mut(&job) else {
            return;
        };
        match &mut rj.state {
            Replica::Loading { pending, .. } => pending.extend(ranges),
            Replica::Ready(key) => {
                let key = *key;
                self.actions.push_back(Action::AddWork {
                    key,
                    fragments: ranges,
                });
            }
            Replica::Failed(reason) => {
                let reason = reason.clone();
                for fragment in ranges.into_iter().flatten() {
                    self.actions.push_back(Action::SendAnswer {
                        job,
                        answer: Answer::Failed {
                            fragment,
                            reason: reason.clone(),
                        },
                    });
                }
            }
        }
    }

    fn on_cancel(&mut self, peer: HostId, job: JobId) {
        if job.initiator == self.local {
            // A fragment of this host's job aborted it on `peer`: cancel it here, once.
            if self.local_jobs.contains_key(&job) {
                let _ = self.sched.cancel(job);
                self.pump();
            }
            return;
        }
        if job.initiator != peer {
            return self.violation(peer, format!("cancel of {job}, initiated by another host"));
        }
        let Some(rj) = self.remote_jobs.get_mut(&job) else {
            return; // finished, released or never here: nothing to cancel
        };
        let drain = match &mut rj.state {
            Replica::Loading { cancelled, .. } => {
                *cancelled = true;
                None
            }
            Replica::Ready(key) => Some(*key),
            Replica::Failed(_) => None,
        };
        self.actions.push_back(Action::CancelReplica { job });
        if let Some(key) = drain {
            self.actions.push_back(Action::DrainWork { key });
        }
    }

    /// Removes the replica of `job` and its work; `abandon` cancels it first (its initiator
    /// is gone).
    fn drop_replica(&mut self, job: JobId, abandon: bool) {
        let Some(rj) = self.remote_jobs.remove(&job) else {
            return;
        };
        if abandon {
            self.actions.push_back(Action::CancelReplica { job });
        }
        if let Replica::Ready(key) = rj.state {
            self.works.remove(&key);
            self.actions.push_back(Action::RemoveWork { key });
        }
        self.actions.push_back(Action::DropReplica { job });
    }

    fn new_key(&mut self) -> WorkKey {
        self.next_key += 1;
        WorkKey(self.next_key)
    }

    /// Whether this host can admit a job with these parameters at all.
    fn cannot_run(&self, params: &JobParams) -> Option<FailureReason> {
        (params.gpu_load > 0.0 && self.info.gpus == 0).then_some(FailureReason::NoGpu(self.local))
    }

    /// The replica of `job` was made (`Ok`) or could not be (`Err`: unknown class, bad bytes).
    pub fn replica_loaded(&mut self, job: JobId, result: Result<(), FailureReason>) {
        let key = self.new_key();
        let Some(rj) = self.remote_jobs.get(&job) else {
            return; // released or abandoned while loading: the driver drops what it made
        };
        let Replica::Loading { .. } = rj.state else {
            return;
        };
        let failure = result.err().or_else(|| self.cannot_run(&rj.params));
        let spec = spec_of(&rj.params);
        let Some(rj) = self.remote_jobs.get_mut(&job) else {
            return;
        };
        let next = match &failure {
            Some(reason) => Replica::Failed(reason.clone()),
            None => Replica::Ready(key),
        };
        let Replica::Loading { pending, cancelled } = std::mem::replace(&mut rj.state, next) else {
            return;
        };
        match failure {
            Some(reason) => {
                for fragment in pending.into_iter().flatten() {
                    self.actions.push_back(Action::SendAnswer {
                        job,
                        answer: Answer::Failed {
                            fragment,
                            reason: reason.clone(),
                        },
                    });
                }
            }
            None => {
                self.works.insert(key, job);
                let (first, unstarted) = if cancelled {
                    (Vec::new(), pending)
                } else {
                    (pending, Vec::new())
                };
                self.actions.push_back(Action::SubmitWork {
                    key,
                    job,
                    spec,
                    fragments: first,
                });
                if !unstarted.is_empty() {
                    self.actions.push_back(Action::SendAnswer {
                        job,
                        answer: Answer::NotStarted { ranges: unstarted },
                    });
                }
            }
        }
    }

    /// The unstarted fragments of `key` taken out of the queue after [`Action::DrainWork`].
    pub fn work_drained(&mut self, key: WorkKey, ranges: Vec<Range<usize>>) {
        let Some(job) = self.works.get(&key).copied() else {
            return;
        };
        if job.initiator == self.local {
            self.sched.on_not_started(job, self.local, &ranges);
            self.pump();
        } else if !ranges.is_empty() {
            self.actions.push_back(Action::SendAnswer {
                job,
                answer: Answer::NotStarted { ranges },
            });
        }
    }

    /// Submits a job initiated here; returns its resolved fragment count.
    pub fn submit(&mut self, job: JobId, spec: JobSpec) -> Result<usize, InvalidArgument> {
        self.submit_with(job, spec, false)
    }

    /// [`submit`](Self::submit) for a job that stays on this host
    /// ([`Scheduler::submit_on_initiator_only`]).
    pub fn submit_on_initiator_only(
        &mut self,
        job: JobId,
        spec: JobSpec,
    ) -> Result<usize, InvalidArgument> {
        self.submit_with(job, spec, true)
    }

    fn submit_with(
        &mut self,
        job: JobId,
        spec: JobSpec,
        initiator_only: bool,
    ) -> Result<usize, InvalidArgument> {
        let params = spec.params.clone();
        let n = if initiator_only {
            self.sched.submit_on_initiator_only(job, spec)?
        } else {
            self.sched.submit(job, spec)?
        };
        self.local_jobs.insert(
            job,
            LocalJob {
                params,
                key: None,
                queued: 0,
                paused: BTreeSet::new(),
            },
        );
        self.pump();
        Ok(n)
    }

    /// Cancels a job initiated here.
    pub fn cancel(&mut self, job: JobId) -> Outcome {
        let o = self.sched.cancel(job);
        self.pump();
        o
    }

    /// Fragments of `range` of a job initiated here that must run "remote style" on this host
    /// ([`Scheduler::rerun_with_chunks`]).
    pub fn rerun_with_chunks(&self, job: JobId, range: Range<usize>) -> Vec<usize> {
        self.sched.rerun_with_chunks(job, range)
    }

    /// A block of a job initiated here ran on this host, plain: `done` fragments finished,
    /// `failed` ones panicked or failed, `not_started` ones were left after a cancel.
    pub fn local_block_done(
        &mut self,
        job: JobId,
        done: &[Range<usize>],
        failed: Vec<(usize, FailureReason)>,
        not_started: &[Range<usize>],
    ) -> usize {
        let mut n = 0;
        for r in done {
            if self.sched.on_local_done(job, r.clone()) == Outcome::Applied {
                n += r.len();
            }
        }
        for (f, reason) in failed {
            let _ = self.sched.on_fragment_failed(job, self.local, f, reason);
        }
        if not_started.iter().any(|r| !r.is_empty()) {
            let _ = self.sched.on_not_started(job, self.local, not_started);
        }
        self.pump();
        n
    }

    /// A chunk of a fragment of a job initiated here, re-run on this host remote style.
    pub fn local_chunk(&mut self, job: JobId, fragment: usize, seq: u32, payload: P) -> Outcome {
        let o = self.sched.on_chunk(job, self.local, fragment, seq, payload);
        self.pump();
        o
    }

    /// A fragment re-run remote style on this host finished (`Ok(chunks)`) or failed.
    pub fn local_fragment_finished(
        &mut self,
        job: JobId,
        fragment: usize,
        result: Result<u32, FailureReason>,
    ) -> Outcome {
        let o = match result {
            Ok(chunks) => self
                .sched
                .on_fragment_done(job, self.local, fragment, chunks),
            Err(reason) => {
                let _ = self
                    .sched
                    .on_fragment_failed(job, self.local, fragment, reason);
                Outcome::Stale
            }
        };
        self.pump();
        o
    }

    /// Entries of the result stream of `job` from `peer`.
    pub fn on_results(
        &mut self,
        peer: HostId,
        job: JobId,
        events: impl IntoIterator<Item = ResultEvent<P>>,
        now: Duration,
    ) -> ResultsOutcome {
        let mut out = ResultsOutcome::default();
        if job.initiator != self.local {
            self.violation(
                peer,
                format!("results of {job}, which this host did not start"),
            );
            return out;
        }
        if !self.seen(peer, now) {
            return out;
        }
        for ev in events {
            let o = match ev {
                ResultEvent::Chunk {
                    fragment,
                    seq,
                    payload,
                } => match usize::try_from(fragment) {
                    Ok(f) => self.sched.on_chunk(job, peer, f, seq, payload),
                    Err(_) => Outcome::Stale,
                },
                ResultEvent::Done { fragment, chunks } => {
                    let o = match usize::try_from(fragment) {
                        Ok(f) => self.sched.on_fragment_done(job, peer, f, chunks),
                        Err(_) => Outcome::Stale,
                    };
                    if o == Outcome::Applied {
                        out.done += 1;
                    }
                    o
                }
                ResultEvent::Failed { fragment, reason } => match usize::try_from(fragment) {
                    Ok(f) => self.sched.on_fragment_failed(job, peer, f, reason),
                    Err(_) => Outcome::Stale,
                },
                ResultEvent::NotStarted { ranges } => {
                    let ranges: Vec<Range<usize>> = ranges
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .map(|(a, b)| {
                            usize::try_from(a).unwrap_or(usize::MAX)
                                ..usize::try_from(b).unwrap_or(usize::MAX)
                        })
                        .collect();
                    self.sched.on_not_started(job, peer, &ranges)
                }
            };
            if o == Outcome::Stale {
                out.stale += 1;
            }
        }
        self.pump();
        out
    }

    /// A chunk handed out with [`Action::Deliver`] was taken by the job (or dropped with it).
    pub fn delivered(&mut self, job: JobId, weight: usize) {
        if let Some(lj) = self.local_jobs.get_mut(&job) {
            lj.queued = lj.queued.saturating_sub(weight);
            self.regulate_all();
        }
    }

    /// Weight of `job`'s results this host holds: buffered for ordered delivery plus handed out
    /// and not yet taken.
    pub fn held(&self, job: JobId) -> usize {
        let queued = self.local_jobs.get(&job).map_or(0, |l| l.queued);
        self.sched.held(job) + queued
    }

    /// Pauses or resumes result streams of every job after an event (what a job holds, where
    /// its next chunk comes from and which peers are up may all have changed).
    fn regulate_all(&mut self) {
        let jobs: Vec<JobId> = self
            .local_jobs
            .iter()
            .filter(|(id, lj)| {
                !lj.paused.is_empty()
                    || lj.queued + self.sched.held(**id) > self.limits.max_held_bytes
            })
            .map(|(id, _)| *id)
            .collect();
        for job in jobs {
            self.regulate(job);
        }
    }

    /// Pauses or resumes the job's result streams.
    fn regulate(&mut self, job: JobId) {
        let Some(lj) = self.local_jobs.get(&job) else {
            return;
        };
        let held = self.sched.held(job) + lj.queued;
        let want: BTreeSet<HostId> = if held <= self.limits.max_held_bytes {
            BTreeSet::new()
        } else if lj.queued > 0 {
            // Delivery is under way: it frees memory without any stream.
            self.peers.keys().copied().collect()
        } else {
            // Everything held waits for the next chunk in order: never stop its stream. If its
            // fragment is not placed yet, stop nothing (it may need a host's window to open).
            match self.sched.cursor_holder(job) {
                Some(h) => self.peers.keys().copied().filter(|p| *p != h).collect(),
                None => BTreeSet::new(),
            }
        };
        // A peer with as many paused streams (of other jobs) as allowed keeps this one going.
        let cap = self.limits.max_paused_per_peer;
        let want: BTreeSet<HostId> = want
            .into_iter()
            .filter(|h| {
                lj.paused.contains(h)
                    || self
                        .local_jobs
                        .iter()
                        .filter(|(id, other)| **id != job && other.paused.contains(h))
                        .count()
                        < cap
            })
            .collect();
        let Some(lj) = self.local_jobs.get_mut(&job) else {
            return;
        };
        for host in lj.paused.difference(&want) {
            self.actions
                .push_back(Action::ResumeResults { job, host: *host });
        }
        for host in want.difference(&lj.paused) {
            self.actions
                .push_back(Action::PauseResults { job, host: *host });
        }
        lj.paused = want;
    }

    /// Turns the scheduler's actions into the protocol's.
    fn pump(&mut self) {
        while let Some(a) = self.sched.poll_action() {
            match a {
                SchedAction::SendReplica { job, host } => {
                    self.actions.push_back(Action::SendReplica { job, host });
                }
                SchedAction::Dispatch {
                    job,
                    host,
                    fragments,
                } if host == self.local => self.dispatch_local(job, fragments),
                SchedAction::Dispatch {
                    job,
                    host,
                    fragments,
                } => self.actions.push_back(Action::SendDispatch {
                    job,
                    host,
                    fragments,
                }),
                SchedAction::Reclaim {
                    job,
                    host,
                    fragments,
                } if host == self.local => {
                    match self.local_jobs.get(&job).and_then(|l| l.key) {
                        Some(key) => self
                            .actions
                            .push_back(Action::ReclaimWork { key, fragments }),
                        // Nothing of it was queued here.
                        None => {
                            let _ = self.sched.on_reclaimed(job, self.local, &[]);
                        }
                    }
                }
                SchedAction::Reclaim {
                    job,
                    host,
                    fragments,
                } => self.actions.push_back(Action::SendReclaim {
                    job,
                    host,
                    fragments,
                }),
                SchedAction::Cancel { job, host } if host == self.local => {
                    if let Some(key) = self.local_jobs.get(&job).and_then(|l| l.key) {
                        self.actions.push_back(Action::DrainWork { key });
                    }
                }
                SchedAction::Cancel { job, host } => {
                    self.actions.push_back(Action::SendCancel { job, host });
                }
                SchedAction::Release { job, host } => {
                    self.actions.push_back(Action::SendRelease { job, host });
                }
                SchedAction::Deliver {
                    job,
                    fragment,
                    seq,
                    payload,
                } => {
                    if let Some(lj) = self.local_jobs.get_mut(&job) {
                        lj.queued += payload.weight();
                    }
                    self.actions.push_back(Action::Deliver {
                        job,
                        fragment,
                        seq,
                        payload,
                    });
                }
                SchedAction::Finished(report) => {
                    if let Some(lj) = self.local_jobs.remove(&report.job) {
                        if let Some(key) = lj.key {
                            self.works.remove(&key);
                            self.actions.push_back(Action::RemoveWork { key });
                        }
                        for host in lj.paused {
                            self.actions.push_back(Action::ResumeResults {
                                job: report.job,
                                host,
                            });
                        }
                    }
                    self.actions.push_back(Action::Finished(report));
                }
            }
        }
        self.regulate_all();
    }

    fn dispatch_local(&mut self, job: JobId, fragments: Vec<Range<usize>>) {
        let Some(lj) = self.local_jobs.get(&job) else {
            return;
        };
        if let Some(key) = lj.key {
            self.actions.push_back(Action::AddWork { key, fragments });
            return;
        }
        if let Some(reason) = self.cannot_run(&lj.params) {
            for f in fragments.into_iter().flatten() {
                let _ = self
                    .sched
                    .on_fragment_failed(job, self.local, f, reason.clone());
            }
            return;
        }
        let spec = spec_of(&lj.params);
        let key = self.new_key();
        if let Some(lj) = self.local_jobs.get_mut(&job) {
            lj.key = Some(key);
        }
        self.works.insert(key, job);
        self.actions.push_back(Action::SubmitWork {
            key,
            job,
            spec,
            fragments,
        });
    }
}

/// Why a result stream broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamViolation {
    /// A chunk's parts add up to more than [`Limits::max_chunk_bytes`].
    ChunkTooLarge {
        /// Fragment index.
        fragment: u64,
        /// Sequence number.
        seq: u32,
        /// The limit.
        limit: u64,
    },
    /// A part of another chunk arrived while one was incomplete (a sender writes a chunk's
    /// parts one after the other).
    Interleaved {
        /// The incomplete chunk.
        open: (u64, u32),
        /// The part that arrived.
        got: (u64, u32),
    },
    /// The stream ended inside a chunk.
    Unfinished {
        /// The incomplete chunk.
        open: (u64, u32),
    },
}

impl fmt::Display for StreamViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamViolation::ChunkTooLarge {
                fragment,
                seq,
                limit,
            } => write!(
                f,
                "chunk {seq} of fragment {fragment} exceeds the limit of {limit} bytes"
            ),
            StreamViolation::Interleaved { open, got } => write!(
                f,
                "part of chunk {} of fragment {} inside chunk {} of fragment {}",
                got.1, got.0, open.1, open.0
            ),
            StreamViolation::Unfinished { open } => write!(
                f,
                "stream ended inside chunk {} of fragment {}",
                open.1, open.0
            ),
        }
    }
}

impl std::error::Error for StreamViolation {}

/// Reassembles the chunk parts of one result stream, with a bound: at most one chunk is
/// incomplete at a time, and no chunk grows beyond [`Limits::max_chunk_bytes`]. Owned by the
/// reader of the stream, outside any lock shared with other streams.
#[derive(Debug)]
pub struct ResultStream {
    max_chunk: u64,
    open: Option<((u64, u32), Vec<u8>)>,
}

impl ResultStream {
    /// A stream reassembling chunks up to `limits.max_chunk_bytes`.
    pub fn new(limits: &Limits) -> Self {
        ResultStream {
            max_chunk: limits.max_chunk_bytes,
            open: None,
        }
    }

    /// Whether a chunk is incomplete.
    pub fn is_mid_chunk(&self) -> bool {
        self.open.is_some()
    }

    /// Bytes of the incomplete chunk.
    pub fn partial_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// Checks that a part of `len` bytes of chunk `(fragment, seq)` may come now, before its
    /// bytes are read.
    pub fn check_part(&self, fragment: u64, seq: u32, len: u64) -> Result<(), StreamViolation> {
        let have = match &self.open {
            Some((key, bytes)) if *key == (fragment, seq) => bytes.len() as u64,
            Some((key, _)) => {
                return Err(StreamViolation::Interleaved {
                    open: *key,
                    got: (fragment, seq),
                })
            }
            None => 0,
        };
        if have.saturating_add(len) > self.max_chunk {
            return Err(StreamViolation::ChunkTooLarge {
                fragment,
                seq,
                limit: self.max_chunk,
            });
        }
        Ok(())
    }

    /// A part of chunk `(fragment, seq)`; returns the whole chunk after its last part.
    pub fn part(
        &mut self,
        fragment: u64,
        seq: u32,
        data: Vec<u8>,
        last: bool,
    ) -> Result<Option<Vec<u8>>, StreamViolation> {
        self.check_part(fragment, seq, data.len() as u64)?;
        let whole = match self.open.take() {
            Some((_, mut head)) => {
                head.extend_from_slice(&data);
                head
            }
            None => data,
        };
        if last {
            Ok(Some(whole))
        } else {
            self.open = Some(((fragment, seq), whole));
            Ok(None)
        }
    }

    /// The stream ended: an error if a chunk was incomplete.
    pub fn finish(&self) -> Result<(), StreamViolation> {
        match &self.open {
            Some((key, _)) => Err(StreamViolation::Unfinished { open: *key }),
            None => Ok(()),
        }
    }
}

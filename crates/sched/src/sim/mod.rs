//! Deterministic simulation of the host protocol, in the spirit of FoundationDB's simulation
//! and TigerBeetle's VOPR.
//!
//! [`Sim`] runs N simulated hosts on a fake clock, one event per step, all randomness drawn from
//! one seeded [`Rng`]: the same seed replays the same run exactly. Each host is the real
//! [`Protocol`] (the state machine the runtime ships: its jobs' scheduler, replicas of other
//! hosts' jobs, result-stream rules, backpressure, heartbeats and failure detection) with, around
//! it, what the runtime does and nothing more: a worker pool ([`HostQueue`] admission, blocks
//! running over simulated time), replicas made after a delay, a job taking delivered chunks at
//! its own pace, and connections to its peers. The simulation holds no copy of the protocol.
//!
//! **The protocol** is the runtime's: per host pair one connection carrying one control stream
//! each way (replica, dispatches, cancel, release, heartbeats) and one result stream per job from
//! a host running its fragments back to the initiator (chunks with their sequence numbers, then
//! `Done`, `Failed` or `NotStarted`). A replica loads asynchronously (dispatches wait for it); a
//! host that lacks the job's class answers every fragment with `UnknownClass`. Fragments run in
//! blocks with a time slice, emit their chunks over their duration, and some always panic after a
//! few chunks. A fragment re-run on its initiator after a failed host delivered some of its
//! chunks runs "remote style" there ([`Protocol::rerun_with_chunks`]), as the runtime does.
//! Heartbeats go out every 50 ms; a peer silent for 300 ms, or whose connection closes, is
//! declared down: its fragments are reassigned or failed by the scheduler, its jobs here are
//! abandoned, and anything still arriving on the closed connection is dropped. Host ids are
//! never reused: a restarted host joins with a new id.
//!
//! **The network** delivers each stream reliably and in order, as QUIC does, with a random delay
//! per message (plus rare spikes and slow periods longer than the failure timeout); messages of
//! different streams overtake each other freely. Faults, drawn from the seed during the active
//! phase: crashes (peers learn of it from the silence, or at once from a lost connection),
//! restarts under a new id, partitions of a pair or of one host from all (nothing crosses; the
//! connection survives if the partition heals before a side times out, or is reset at once),
//! slow links, and duplicated messages on the streams whose handling must be idempotent
//! (results, cancels, releases, heartbeats).
//!
//! **The workload**: every host initiates jobs in all four modes, with random counts (0
//! included), loads, priorities, thread limits, chunk counts, ordered or unordered chunks,
//! USER_DEFINED assignments naming live, dead, never-used and unassigned hosts, and
//! ONCE_PER_HOST counts within and beyond the eligible hosts; some jobs are cancelled.
//!
//! **The invariants**, checked after every step (see [`Invariant`]): `submit` accepts and rejects
//! exactly as the contract says; every chunk of a CLUSTER (or any remote) fragment is delivered
//! exactly once with its content (a fragment done plain on its initiator has none delivered), in
//! (fragment, seq) order when the job asks for it; nothing is delivered or reported after a job
//! finished; the report's four sets partition the fragments,
//! skipped is exactly the USER_DEFINED fragments on unknown hosts, every failure has a cause this
//! run produced (a panicking fragment, a host lacking the class, a host the initiator declared
//! down in a mode that never moves fragments), per-host counts are right and ONCE_PER_HOST runs
//! at most one fragment per host; USER_DEFINED and ONCE_PER_HOST fragments are never dispatched
//! elsewhere or twice; a host never runs more than its resources allow. After the active phase
//! the faults stop and partitions heal; every job of a live initiator must then finish, and every
//! live host must drop all work of finished jobs and of initiators it lost, within a bound.
//!
//! A run stops at the first step with a violation; [`SimConfig::replay_command`] prints the
//! command that replays it with a step trace.

mod check;
mod rng;

pub use rng::{mix, Rng};

use crate::cluster::{HostInfo, JobSpec, Outcome};
use crate::host::{Block, HostQueue, WorkKey};
use crate::protocol::{Action, Answer, Limits, Message, Protocol, ResultEvent};
use check::{Checker, Submission};
use fragmenta_job::{ClassId, FailureReason, HostId, JobId, JobParams, SchedulingMode};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// Simulated time in microseconds.
type Time = u64;

const MS: Time = 1_000;
/// Interval between heartbeats on every link.
const HEARTBEAT: Time = 50 * MS;
/// A peer silent for this long is declared down.
const FAILURE_TIMEOUT: Time = 300 * MS;
/// A block gives its remaining fragments back after this long.
const TIME_SLICE: Time = 5 * MS;
/// How much slower a job's slow host runs its fragments.
const SLOWDOWN: Time = 10;
/// Chunks of one job an initiator holds before it pauses the job's result streams (the
/// simulation weighs every chunk 1).
const MAX_HELD: usize = 6;
/// Most hosts alive at once.
const MAX_LIVE_HOSTS: usize = 8;

/// The invariant a [`Violation`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// A job of a live initiator did not finish within the bound after the faults stopped.
    Liveness,
    /// A chunk was delivered twice, with the wrong content, one no fragment produces, or a done
    /// remote fragment lacks one.
    ExactlyOnce,
    /// Chunks of a job that does not allow non-sequential chunks came out of (fragment, seq)
    /// order.
    Order,
    /// Something was delivered, dispatched or reported for a job after it finished.
    AfterFinish,
    /// The job report is wrong: its sets, failures or per-host counts.
    Report,
    /// A fragment went to a host its mode forbids, or twice in a mode that never moves it.
    Placement,
    /// `submit` accepted a job it should reject, or the other way round, or resolved the count
    /// wrongly.
    Submit,
    /// An action broke the protocol (a dispatch before the replica, bad ranges, unknown job).
    Protocol,
    /// A host ran more than its resources allow.
    Resources,
    /// A live host still held a replica, queued or running work of a job that is over.
    Cleanup,
}

/// A broken invariant, with where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The seed of the run.
    pub seed: u64,
    /// The step at which it was detected.
    pub step: u64,
    /// Simulated time at detection, in microseconds.
    pub time_us: u64,
    /// The invariant.
    pub invariant: Invariant,
    /// The job concerned, if one.
    pub job: Option<JobId>,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {} t={:.3}ms {:?}",
            self.seed,
            self.step,
            self.time_us as f64 / 1e3,
            self.invariant
        )?;
        if let Some(job) = self.job {
            write!(f, " {job}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// A deliberate bug between the simulated cluster and the checker, to prove that the checker
/// catches what it claims to. Each applies once per run, at its first opportunity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// The first chunk delivery is shown to the checker twice.
    DuplicateDelivery,
    /// The first chunk delivery is hidden from the checker.
    DropDelivery,
    /// The first two deliveries of an ordered job are shown swapped.
    SwapDeliveries,
    /// A job's last delivery is shown again after its report.
    DeliverAfterFinish,
    /// The first report with a done fragment has it moved to the skipped set.
    CorruptReport,
    /// Release messages are never sent, so replicas stay on remote hosts.
    DropReleases,
    /// The first report is lost, so its job never finishes.
    DropFinished,
    /// Hosts answer every reclaim with all the fragments asked for, started ones included
    /// (every time, not once).
    ReclaimRunning,
}

/// Settings of a simulation run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Hosts at the start; 0 lets the seed pick 1 to 6.
    pub hosts: usize,
    /// Steps of the active phase (workload and faults). The run then settles.
    pub steps: u64,
    /// Whether faults are injected during the active phase.
    pub faults: bool,
    /// Most steps of the settle phase before unfinished work is a liveness violation.
    pub settle_steps: u64,
    /// Most simulated time of the settle phase (µs) before unfinished work is a liveness
    /// violation.
    pub settle_time_us: u64,
    /// A deliberate bug, for tests of the checker.
    pub sabotage: Option<Sabotage>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hosts: 0,
            steps: 4_000,
            faults: true,
            settle_steps: 2_000_000,
            settle_time_us: 120_000 * MS,
            sabotage: None,
        }
    }
}

impl SimConfig {
    /// The command that replays `seed` with these settings and prints its step trace.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut cmd = format!(
            "cargo run --release -p fragmenta-sched --example simulate -- --seed {seed} --hosts {} --steps {}",
            self.hosts, self.steps
        );
        if !self.faults {
            cmd.push_str(" --no-faults");
        }
        cmd
    }
}

/// Counters of one run, or summed over runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Runs summed (1 for one run).
    pub runs: u64,
    /// Steps (events processed).
    pub steps: u64,
    /// Simulated time, in microseconds.
    pub sim_time_us: u64,
    /// Hosts started, restarts included.
    pub hosts: u64,
    /// Jobs the scheduler accepted.
    pub jobs: u64,
    /// Jobs `submit` rejected with an invalid argument.
    pub jobs_rejected: u64,
    /// Jobs whose report came.
    pub jobs_finished: u64,
    /// Jobs whose initiator crashed before their report.
    pub jobs_abandoned: u64,
    /// Cancel requests.
    pub cancels: u64,
    /// Fragments of accepted jobs.
    pub fragments: u64,
    /// Chunks delivered.
    pub deliveries: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages dropped: sent on or arriving at a closed connection, or lost with a crashed
    /// sender.
    pub messages_dropped: u64,
    /// Messages duplicated by the network.
    pub duplicates: u64,
    /// Messages delayed by a spike.
    pub delay_spikes: u64,
    /// Host crashes.
    pub crashes: u64,
    /// Hosts started under a new id after the start.
    pub restarts: u64,
    /// Partitions (of a pair, or of one host from all).
    pub partitions: u64,
    /// Slow periods of a link.
    pub slow_links: u64,
    /// Times a host declared a peer down.
    pub declared_down: u64,
    /// Times a host declared down a peer that was alive.
    pub false_suspicions: u64,
    /// Results the scheduler dropped as stale (late, duplicated, or from a replaced attempt).
    pub stale_results: u64,
    /// CLUSTER fragments that ran on more than one host (reassigned after a host failure).
    pub reassigned: u64,
    /// Fragments failed because their host failed.
    pub host_failed: u64,
    /// Fragments skipped (USER_DEFINED on unknown hosts).
    pub skipped: u64,
    /// Fragments cancelled.
    pub cancelled: u64,
    /// CLUSTER jobs with remote fragments finished by an initiator left alone.
    pub finished_alone: u64,
    /// Fragments re-run on their initiator with their chunks through the scheduler, because a
    /// failed host had delivered some of them.
    pub reruns_with_chunks: u64,
    /// Times an initiator stopped reading a result stream because it held too much of the
    /// job's results.
    pub result_pauses: u64,
    /// Reclaim requests initiators made (work stealing).
    pub reclaims: u64,
    /// Fragments given back unstarted in answer to a reclaim, and reassigned.
    pub reclaimed: u64,
}

impl SimStats {
    /// Faults injected: crashes, restarts, partitions, slow links, duplicated messages and
    /// delay spikes.
    pub fn faults(&self) -> u64 {
        self.crashes
            + self.restarts
            + self.partitions
            + self.slow_links
            + self.duplicates
            + self.delay_spikes
    }

    /// Adds `other`'s counters to these.
    pub fn merge(&mut self, other: &SimStats) {
        let SimStats {
            runs,
            steps,
            sim_time_us,
            hosts,
            jobs,
            jobs_rejected,
            jobs_finished,
            jobs_abandoned,
            cancels,
            fragments,
            deliveries,
            messages,
            messages_dropped,
            duplicates,
            delay_spikes,
            crashes,
            restarts,
            partitions,
            slow_links,
            declared_down,
            false_suspicions,
            stale_results,
            reassigned,
            host_failed,
            skipped,
            cancelled,
            finished_alone,
            reruns_with_chunks,
            result_pauses,
            reclaims,
            reclaimed,
        } = other;
        self.runs += runs;
        self.steps += steps;
        self.sim_time_us += sim_time_us;
        self.hosts += hosts;
        self.jobs += jobs;
        self.jobs_rejected += jobs_rejected;
        self.jobs_finished += jobs_finished;
        self.jobs_abandoned += jobs_abandoned;
        self.cancels += cancels;
        self.fragments += fragments;
        self.deliveries += deliveries;
        self.messages += messages;
        self.messages_dropped += messages_dropped;
        self.duplicates += duplicates;
        self.delay_spikes += delay_spikes;
        self.crashes += crashes;
        self.restarts += restarts;
        self.partitions += partitions;
        self.slow_links += slow_links;
        self.declared_down += declared_down;
        self.false_suspicions += false_suspicions;
        self.stale_results += stale_results;
        self.reassigned += reassigned;
        self.host_failed += host_failed;
        self.skipped += skipped;
        self.cancelled += cancelled;
        self.finished_alone += finished_alone;
        self.reruns_with_chunks += reruns_with_chunks;
        self.result_pauses += result_pauses;
        self.reclaims += reclaims;
        self.reclaimed += reclaimed;
    }
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// Its counters.
    pub stats: SimStats,
    /// The violations found (the run stops at the first step that has any).
    pub violations: Vec<Violation>,
}

/// Runs `seed` to its end.
pub fn run(seed: u64, config: &SimConfig) -> SimOutcome {
    Sim::new(seed, config.clone()).run()
}

/// What a job's fragments do, the same on every host and every attempt: a pure function of the
/// job's key (the simulated job's code and data, which every host has).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Behavior {
    key: u64,
    initiator: HostId,
    chunk_max: u64,
    duration_max: Time,
    panic_percent: u64,
    unknown_percent: u64,
    /// A host that runs the job's fragments 10x slower (work stealing takes back what it
    /// queued).
    slow: Option<HostId>,
}

impl Behavior {
    fn h(&self, salt: u64, a: u64, b: u64) -> u64 {
        mix(self.key ^ mix(salt ^ mix(a ^ mix(b))))
    }

    /// Chunks the fragment sends when it completes.
    pub(crate) fn chunks(&self, fragment: usize) -> u32 {
        (self.h(1, fragment as u64, 0) % (self.chunk_max + 1)) as u32
    }

    /// `Some(k)`: the fragment always panics after sending `k` chunks.
    pub(crate) fn panics(&self, fragment: usize) -> Option<u32> {
        (self.h(2, fragment as u64, 0) % 100 < self.panic_percent).then(|| {
            (self.h(3, fragment as u64, 0) % (u64::from(self.chunks(fragment)) + 1)) as u32
        })
    }

    fn duration(&self, fragment: usize, host: HostId) -> Time {
        let d = 1 + self.h(4, fragment as u64, u64::from(host.0)) % self.duration_max;
        if self.slow == Some(host) {
            d * SLOWDOWN
        } else {
            d
        }
    }

    /// Whether `host` has the job's class registered.
    pub(crate) fn knows_class(&self, host: HostId) -> bool {
        host == self.initiator || self.h(5, u64::from(host.0), 0) % 100 >= self.unknown_percent
    }

    /// The content of chunk `seq` of `fragment`.
    pub(crate) fn data(&self, fragment: usize, seq: u32) -> u64 {
        self.h(6, fragment as u64, u64::from(seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum StreamKind {
    Control,
    Results(JobId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    from: HostId,
    to: HostId,
    conn: u64,
    kind: StreamKind,
}

#[derive(Clone, Debug)]
enum Msg {
    Heartbeat,
    Replica {
        job: JobId,
        params: JobParams,
        count: usize,
    },
    Dispatch {
        job: JobId,
        fragments: Vec<Range<usize>>,
    },
    Cancel(JobId),
    Release(JobId),
    Reclaim {
        job: JobId,
        fragments: Vec<Range<usize>>,
    },
    Reclaimed {
        job: JobId,
        fragments: Vec<Range<usize>>,
    },
    Chunk {
        job: JobId,
        fragment: usize,
        seq: u32,
        data: u64,
    },
    Done {
        job: JobId,
        fragment: usize,
        chunks: u32,
    },
    Failed {
        job: JobId,
        fragment: usize,
        reason: FailureReason,
    },
    NotStarted {
        job: JobId,
        ranges: Vec<Range<usize>>,
    },
}

impl Msg {
    /// Whether the receiver must tolerate seeing the message twice.
    fn duplicable(&self) -> bool {
        // A reclaim and its answer pair up in order on the control stream, which QUIC never
        // duplicates: a second answer would answer the next request.
        !matches!(
            self,
            Msg::Replica { .. }
                | Msg::Dispatch { .. }
                | Msg::Reclaim { .. }
                | Msg::Reclaimed { .. }
        )
    }
}

#[derive(Default)]
struct Stream {
    queue: VecDeque<(Time, Msg)>,
    armed: bool,
    last_ready: Time,
    /// Duplicates waiting to be appended after this many more messages.
    dups: Vec<(u32, Msg)>,
}

#[derive(Debug)]
enum Event {
    Arrive(StreamId),
    /// The host's protocol deadline armed for this time.
    Timeout(HostId, Time),
    /// The job on its initiator took a delivered chunk.
    Delivered(HostId, JobId),
    Work(HostId, u64),
    ReplicaLoaded(HostId, JobId),
    Closed {
        at: HostId,
        peer: HostId,
        conn: u64,
    },
    Connect {
        from: HostId,
        to: HostId,
    },
    Heal(HostId, HostId),
    Workload,
    Chaos,
}

struct Link {
    conn: u64,
}

/// A job the host initiated, as its program sees it.
struct LocalJob {
    params: JobParams,
    count: usize,
    cancelled: bool,
}

/// A replica of another host's job, as the host's worker side sees it.
struct Replica {
    /// The connection it came on: its results go back on it.
    conn: u64,
    /// The protocol cancelled it: blocks starting later stop at once.
    cancelled: bool,
}

struct Run {
    block: Block,
    job: JobId,
    local: bool,
    conn: u64,
    next: usize,
    in_fragment: bool,
    chunk: u32,
    started: Time,
    cancelled: bool,
    done: Vec<Range<usize>>,
    failed: Vec<usize>,
    not_started: Range<usize>,
    /// Local blocks: fragments to run "remote style" (chunks through the scheduler), because an
    /// earlier attempt on a failed host delivered or buffered some of their chunks.
    rerun: BTreeSet<usize>,
}

/// One simulated host: the real protocol state machine ([`Protocol`]) and, around it, what the
/// runtime does: a worker pool ([`HostQueue`] admission, blocks running over simulated time),
/// replicas' cancellation, delivery to the job, and connections to peers.
struct SimHost {
    info: HostInfo,
    alive: bool,
    max_running: usize,
    proto: Protocol<u64, ()>,
    /// The deadline a `Timeout` event is armed for.
    timer: Option<Time>,
    queue: HostQueue,
    /// Work registered with the worker pool.
    works: BTreeMap<WorkKey, JobId>,
    local: BTreeMap<JobId, LocalJob>,
    replicas: BTreeMap<JobId, Replica>,
    links: BTreeMap<HostId, Link>,
    /// Result streams of jobs initiated here that the protocol paused, by (sender, job).
    paused: BTreeSet<(HostId, JobId)>,
    runs: BTreeMap<u64, Run>,
    next_run: u64,
    next_job: u64,
}

impl SimHost {
    fn is_clean(&self) -> bool {
        self.replicas.is_empty()
            && self.runs.is_empty()
            && self.works.is_empty()
            && self.local.is_empty()
            && self.queue.running() == 0
            && self.proto.replicas() == 0
            && self.proto.works() == 0
            && self.proto.active_jobs() == 0
    }
}

fn at(t: Time) -> Duration {
    Duration::from_micros(t)
}

/// Reports what a local block ran plain (with `execute_fragment`): done ranges, panicked
/// fragments, and what it left unstarted after a cancel.
fn report_local(
    proto: &mut Protocol<u64, ()>,
    job: JobId,
    done: &[Range<usize>],
    failed: &[usize],
    not_started: &Range<usize>,
) {
    let failed = failed
        .iter()
        .map(|f| {
            (
                *f,
                FailureReason::Panicked(format!("fragment {f} panicked")),
            )
        })
        .collect();
    let _ = proto.local_block_done(job, done, failed, std::slice::from_ref(not_started));
}

/// Ranges as the wire carries them.
fn wire(ranges: &[Range<usize>]) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .map(|r| (r.start as u64, r.end as u64))
        .collect()
}

fn pair(a: HostId, b: HostId) -> (HostId, HostId) {
    (a.min(b), a.max(b))
}

/// Receives trace lines.
type TraceFn = Box<dyn FnMut(&str)>;

#[derive(Default)]
struct SabotageState {
    applied: bool,
    held: Option<(JobId, usize, u32, u64)>,
    last: BTreeMap<JobId, (usize, u32, u64)>,
}

/// A simulated cluster driven one event at a time. See the [module docs](self).
pub struct Sim {
    seed: u64,
    config: SimConfig,
    rng: Rng,
    now: Time,
    step: u64,
    events: BTreeMap<(Time, u64), Event>,
    next_event: u64,
    hosts: BTreeMap<HostId, SimHost>,
    next_host: u32,
    next_conn: u64,
    streams: BTreeMap<StreamId, Stream>,
    partitions: BTreeMap<(HostId, HostId), Time>,
    slow: BTreeMap<(HostId, HostId), (Time, Time)>,
    behaviors: BTreeMap<JobId, Behavior>,
    checker: Checker,
    stats: SimStats,
    active: bool,
    settle_from: Option<(u64, Time)>,
    over: bool,
    sabotage: SabotageState,
    trace: Option<TraceFn>,
}

impl Sim {
    /// A cluster for `seed`, at time 0 with every starting host linked to every other.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let n = if config.hosts == 0 {
            rng.range(1, 7) as usize
        } else {
            config.hosts
        };
        let mut sim = Sim {
            seed,
            config,
            rng,
            now: 0,
            step: 0,
            events: BTreeMap::new(),
            next_event: 0,
            hosts: BTreeMap::new(),
            next_host: 0,
            next_conn: 0,
            streams: BTreeMap::new(),
            partitions: BTreeMap::new(),
            slow: BTreeMap::new(),
            behaviors: BTreeMap::new(),
            checker: Checker::new(seed),
            stats: SimStats {
                runs: 1,
                ..SimStats::default()
            },
            active: true,
            settle_from: None,
            over: false,
            sabotage: SabotageState::default(),
            trace: None,
        };
        let ids: Vec<HostId> = (0..n).map(|_| sim.start_host()).collect();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                sim.establish(*a, *b);
            }
        }
        let first = sim.rng.range(0, 5 * MS);
        sim.schedule(first, Event::Workload);
        if sim.config.faults {
            let first = sim.rng.range(10 * MS, 100 * MS);
            sim.schedule(first, Event::Chaos);
        }
        sim
    }

    /// Calls `f` with one line per step (and per notable action) from now on.
    pub fn set_trace(&mut self, f: impl FnMut(&str) + 'static) {
        self.trace = Some(Box::new(f));
    }

    /// The violations found so far.
    pub fn violations(&self) -> &[Violation] {
        self.checker.violations()
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Whether the run is over (settled, out of bounds, or a violation was found).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Runs to the end.
    pub fn run(mut self) -> SimOutcome {
        while self.step() {}
        self.stats.jobs_finished = self.checker.finished_count() as u64;
        self.stats.jobs_abandoned = self.checker.abandoned_count() as u64;
        let c = self.checker.coverage;
        self.stats.reassigned = c.reassigned;
        self.stats.host_failed = c.host_failed;
        self.stats.skipped = c.skipped;
        self.stats.cancelled = c.cancelled;
        self.stats.finished_alone = c.finished_alone;
        SimOutcome {
            seed: self.seed,
            stats: self.stats,
            violations: self.checker.into_violations(),
        }
    }

    /// Processes one event and checks the invariants; false once the run is over.
    pub fn step(&mut self) -> bool {
        if self.over {
            return false;
        }
        let Some(((time, _), event)) = self.events.pop_first() else {
            self.over = true;
            return false;
        };
        self.now = time;
        self.step += 1;
        self.stats.steps = self.step;
        self.stats.sim_time_us = self.now;
        self.checker.set_clock(self.step, self.now);
        if self.trace.is_some() {
            let line = format!(
                "step {} t={:.3}ms {:?}",
                self.step,
                self.now as f64 / 1e3,
                event
            );
            self.note(|| line);
        }
        self.handle(event);
        self.check_hosts();
        if self.active && self.step >= self.config.steps {
            self.settle();
        }
        if let Some((step, time)) = self.settle_from {
            if self.settled() {
                self.over = true;
            } else if self.step - step > self.config.settle_steps
                || self.now - time > self.config.settle_time_us
            {
                self.report_unsettled();
                self.over = true;
            }
        }
        if !self.checker.violations().is_empty() {
            self.over = true;
        }
        !self.over
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t(&f());
        }
    }

    fn schedule(&mut self, delay: Time, event: Event) {
        self.next_event += 1;
        self.events
            .insert((self.now + delay, self.next_event), event);
    }

    fn start_host(&mut self) -> HostId {
        let id = HostId(self.next_host);
        self.next_host += 1;
        let r = &mut self.rng;
        let info = HostInfo {
            sub_cluster: u32::from(r.chance(1, 5)),
            cores: *r.pick(&[1.0, 1.5, 2.0, 4.0]).unwrap_or(&1.0),
            gpus: *r.pick(&[0, 0, 1, 2]).unwrap_or(&0),
        };
        let max_running = r.range(1, 9) as usize;
        let limits = Limits {
            heartbeat_interval: at(HEARTBEAT),
            failure_timeout: at(FAILURE_TIMEOUT),
            max_held_bytes: MAX_HELD,
            ..Limits::default()
        };
        let mut proto = Protocol::new(id, info.clone(), limits, at(self.now));
        let batch = r.range(1, 65) as usize;
        let window = r.range(1, 257) as usize;
        proto.set_scheduler_limits(batch, window);
        let mut queue = HostQueue::new(info.cores, info.gpus as usize, max_running);
        queue.set_max_block(r.range(1, 33) as usize);
        self.hosts.insert(
            id,
            SimHost {
                info,
                alive: true,
                max_running,
                proto,
                timer: None,
                queue,
                works: BTreeMap::new(),
                local: BTreeMap::new(),
                replicas: BTreeMap::new(),
                links: BTreeMap::new(),
                paused: BTreeSet::new(),
                runs: BTreeMap::new(),
                next_run: 0,
                next_job: 0,
            },
        );
        self.stats.hosts += 1;
        id
    }

    fn alive(&self, h: HostId) -> bool {
        self.hosts.get(&h).is_some_and(|x| x.alive)
    }

    fn live_hosts(&self) -> Vec<HostId> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The hosts `h` knows (itself included), with their resources.
    fn view(&self, h: HostId) -> BTreeMap<HostId, HostInfo> {
        let mut v = BTreeMap::new();
        if let Some(host) = self.hosts.get(&h) {
            v.insert(h, host.info.clone());
            for p in host.links.keys() {
                if let Some(peer) = self.hosts.get(p) {
                    v.insert(*p, peer.info.clone());
                }
            }
        }
        v
    }

    fn partitioned(&self, a: HostId, b: HostId) -> bool {
        self.partitions.contains_key(&pair(a, b))
    }

    /// Links `a` and `b` with a new connection; each scheduler learns of the other.
    fn establish(&mut self, a: HostId, b: HostId) {
        self.next_conn += 1;
        let conn = self.next_conn;
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let info = match self.hosts.get(&y) {
                Some(h) => h.info.clone(),
                None => return,
            };
            if let Some(h) = self.hosts.get_mut(&x) {
                h.links.insert(y, Link { conn });
                h.proto.link_up(y, info, at(now));
            }
        }
        self.note(|| format!("  link {a} <-> {b} up (conn {conn})"));
        self.process(a);
        self.process(b);
    }

    fn delay(&mut self, a: HostId, b: HostId) -> Time {
        let mut d = self.rng.range(20, 2 * MS);
        if self.config.faults && self.active && self.rng.chance(1, 400) {
            d += self.rng.range(10 * MS, 400 * MS);
            self.stats.delay_spikes += 1;
        }
        if let Some((until, extra)) = self.slow.get(&pair(a, b)).copied() {
            if self.now < until {
                d += self.rng.range(0, extra);
            }
        }
        d
    }

    /// Sends `msg` on `from`'s current connection to `to`; false if there is none.
    fn send(&mut self, from: HostId, to: HostId, kind: StreamKind, msg: Msg) -> bool {
        let conn = self
            .hosts
            .get(&from)
            .and_then(|h| h.links.get(&to))
            .map(|l| l.conn);
        match conn {
            Some(conn) => self.send_on(from, to, conn, kind, msg),
            None => {
                self.stats.messages_dropped += 1;
                false
            }
        }
    }

    /// Sends `msg` on connection `conn`; false if `from` has closed it.
    fn send_on(&mut self, from: HostId, to: HostId, conn: u64, kind: StreamKind, msg: Msg) -> bool {
        let open = self
            .hosts
            .get(&from)
            .and_then(|h| h.links.get(&to))
            .is_some_and(|l| l.conn == conn);
        if !open {
            self.stats.messages_dropped += 1;
            return false;
        }
        self.stats.messages += 1;
        let dup = self.config.faults && self.active && msg.duplicable() && self.rng.chance(1, 100);
        let countdown = self.rng.below(3) as u32;
        let delay = self.delay(from, to);
        if dup {
            self.stats.duplicates += 1;
        }
        let id = StreamId {
            from,
            to,
            conn,
            kind,
        };
        let now = self.now;
        let stream = self.streams.entry(id).or_default();
        let ready = (now + delay).max(stream.last_ready);
        stream.last_ready = ready;
        let copy = dup.then(|| msg.clone());
        stream.queue.push_back((ready, msg));
        let mut due = Vec::new();
        stream.dups.retain_mut(|(c, m)| {
            if *c == 0 {
                due.push(m.clone());
                false
            } else {
                *c -= 1;
                true
            }
        });
        for m in due {
            stream.queue.push_back((ready, m));
        }
        if let Some(m) = copy {
            if countdown == 0 {
                stream.queue.push_back((ready, m));
            } else {
                stream.dups.push((countdown - 1, m));
            }
        }
        if !stream.armed {
            stream.armed = true;
            let at = stream.queue.front().map_or(ready, |(t, _)| *t);
            self.schedule(at.saturating_sub(now), Event::Arrive(id));
        }
        true
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrive(id) => self.arrive(id),
            Event::Timeout(h, t) => {
                let Some(x) = self.hosts.get_mut(&h).filter(|x| x.alive) else {
                    return;
                };
                if x.timer != Some(t) {
                    return; // re-armed for another time meanwhile
                }
                x.timer = None;
                x.proto.handle_timeout(at(self.now));
                self.process(h);
            }
            Event::Delivered(h, job) => {
                if let Some(x) = self.hosts.get_mut(&h).filter(|x| x.alive) {
                    x.proto.delivered(job, 1);
                }
                self.process(h);
            }
            Event::Work(h, run) => self.work(h, run),
            Event::ReplicaLoaded(h, job) => self.replica_loaded(h, job),
            Event::Closed { at, peer, conn } => {
                let open = self
                    .hosts
                    .get(&at)
                    .filter(|x| x.alive)
                    .and_then(|x| x.links.get(&peer))
                    .is_some_and(|l| l.conn == conn);
                if open && !self.partitioned(at, peer) {
                    self.link_lost(at, peer, "connection lost");
                }
            }
            Event::Connect { from, to } => {
                if !self.alive(from) || !self.alive(to) {
                    return;
                }
                if self
                    .hosts
                    .get(&from)
                    .is_some_and(|h| h.links.contains_key(&to))
                {
                    return;
                }
                if self.partitioned(from, to) {
                    let retry = self.rng.range(20 * MS, 200 * MS);
                    self.schedule(retry, Event::Connect { from, to });
                } else {
                    self.establish(from, to);
                }
            }
            Event::Heal(a, b) => {
                if self
                    .partitions
                    .get(&pair(a, b))
                    .is_some_and(|t| *t <= self.now)
                {
                    self.partitions.remove(&pair(a, b));
                    self.note(|| format!("  partition {a} | {b} healed"));
                }
            }
            Event::Workload => {
                if self.active {
                    self.workload();
                    let next = self.rng.range(MS, 30 * MS);
                    self.schedule(next, Event::Workload);
                }
            }
            Event::Chaos => {
                if self.active {
                    self.chaos();
                    let next = self.rng.range(20 * MS, 150 * MS);
                    self.schedule(next, Event::Chaos);
                }
            }
        }
    }

    fn arrive(&mut self, id: StreamId) {
        let partitioned = self.partitioned(id.from, id.to);
        let sender_alive = self.alive(id.from);
        let paused = match id.kind {
            StreamKind::Results(job) => self
                .hosts
                .get(&id.to)
                .is_some_and(|x| x.paused.contains(&(id.from, job))),
            StreamKind::Control => false,
        };
        let now = self.now;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.armed = false;
        let Some(ready) = stream.queue.front().map(|(t, _)| *t) else {
            if stream.dups.is_empty() {
                self.streams.remove(&id);
            }
            return;
        };
        if ready > now {
            stream.armed = true;
            self.schedule(ready - now, Event::Arrive(id));
            return;
        }
        if paused && !partitioned {
            // The receiver stopped reading: the stream waits (re-armed when resumed).
            return;
        }
        if partitioned {
            if !sender_alive {
                // Nobody retransmits for a crashed sender.
                self.stats.messages_dropped += stream.queue.len() as u64;
                self.streams.remove(&id);
                return;
            }
            stream.armed = true;
            let retry = self.rng.range(2 * MS, 10 * MS);
            self.schedule(retry, Event::Arrive(id));
            return;
        }
        let Some((_, msg)) = stream.queue.pop_front() else {
            return;
        };
        if let Some(next) = stream.queue.front().map(|(t, _)| *t) {
            stream.armed = true;
            self.schedule(next.saturating_sub(now), Event::Arrive(id));
        } else if stream.dups.is_empty() {
            self.streams.remove(&id);
        }
        self.receive(id, msg);
    }

    fn receive(&mut self, id: StreamId, msg: Msg) {
        let (from, to) = (id.from, id.to);
        let now = self.now;
        let current = match self.hosts.get(&to) {
            Some(host) if host.alive => host.links.get(&from).is_some_and(|l| l.conn == id.conn),
            _ => false,
        };
        if !current {
            // A closed connection: whatever still arrives on it is dropped, as the runtime does.
            self.stats.messages_dropped += 1;
            if self.trace.is_some() {
                self.note(|| format!("  {to} drops {msg:?} from {from}: connection closed"));
            }
            return;
        }
        if self.trace.is_some() && !matches!(msg, Msg::Heartbeat) {
            self.note(|| format!("  {to} <- {from}: {msg:?}"));
        }
        let Some(host) = self.hosts.get_mut(&to) else {
            return;
        };
        let msg = match msg {
            Msg::Heartbeat => Ok(Message::Heartbeat),
            Msg::Replica { job, params, count } => {
                host.replicas.entry(job).or_insert(Replica {
                    conn: id.conn,
                    cancelled: false,
                });
                Ok(Message::Replica {
                    job,
                    params,
                    count: count as u64,
                    body: (),
                })
            }
            Msg::Dispatch { job, fragments } => Ok(Message::Dispatch {
                job,
                fragments: fragments
                    .iter()
                    .map(|r| (r.start as u64, r.end as u64))
                    .collect(),
            }),
            Msg::Cancel(job) => Ok(Message::Cancel { job }),
            Msg::Release(job) => Ok(Message::Release { job }),
            Msg::Reclaim { job, fragments } => Ok(Message::Reclaim {
                job,
                fragments: wire(&fragments),
            }),
            Msg::Reclaimed { job, fragments } => {
                self.stats.reclaimed += fragments.iter().map(|r| r.len() as u64).sum::<u64>();
                Ok(Message::Reclaimed {
                    job,
                    fragments: wire(&fragments),
                })
            }
            other => Err(other),
        };
        let msg = match msg {
            Ok(m) => {
                host.proto.on_message(from, m, at(now));
                self.process(to);
                return;
            }
            Err(msg) => msg,
        };
        let (job, event, done) = match msg {
            Msg::Chunk {
                job,
                fragment,
                seq,
                data,
            } => (
                job,
                ResultEvent::Chunk {
                    fragment: fragment as u64,
                    seq,
                    payload: data,
                },
                None,
            ),
            Msg::Done {
                job,
                fragment,
                chunks,
            } => (
                job,
                ResultEvent::Done {
                    fragment: fragment as u64,
                    chunks,
                },
                Some(fragment),
            ),
            Msg::Failed {
                job,
                fragment,
                reason,
            } => (
                job,
                ResultEvent::Failed {
                    fragment: fragment as u64,
                    reason,
                },
                None,
            ),
            Msg::NotStarted { job, ranges } => (
                job,
                ResultEvent::NotStarted {
                    ranges: ranges
                        .iter()
                        .map(|r| (r.start as u64, r.end as u64))
                        .collect(),
                },
                None,
            ),
            _ => return,
        };
        let outcome = host.proto.on_results(from, job, [event], at(now));
        self.stats.stale_results += outcome.stale as u64;
        if let (Some(fragment), 1) = (done, outcome.done) {
            self.checker.remote_done(job, fragment, from);
        }
        self.process(to);
    }

    /// Sends a result of `job` from `h` to its initiator on connection `conn`.
    fn result(&mut self, h: HostId, job: JobId, conn: u64, msg: Msg) -> bool {
        self.send_on(h, job.initiator, conn, StreamKind::Results(job), msg)
    }

    fn replica_loaded(&mut self, h: HostId, job: JobId) {
        let behavior = self.behaviors.get(&job).copied();
        let Some(host) = self.hosts.get_mut(&h).filter(|x| x.alive) else {
            return;
        };
        let result = if behavior.is_some_and(|b| b.knows_class(h)) {
            Ok(())
        } else {
            let class = ClassId(u128::from(behavior.map_or(0, |b| b.key)));
            Err(FailureReason::UnknownClass(class))
        };
        host.proto.replica_loaded(job, result);
        self.process(h);
    }

    /// Carries out the protocol's actions on `h`, as the runtime does.
    fn process(&mut self, h: HostId) {
        while let Some(action) = self
            .hosts
            .get_mut(&h)
            .filter(|x| x.alive)
            .and_then(|x| x.proto.poll_action())
        {
            self.carry_out(h, action);
        }
        self.arm_timer(h);
        self.kick(h);
    }

    /// Arms a `Timeout` event for the protocol's next deadline.
    fn arm_timer(&mut self, h: HostId) {
        let now = self.now;
        let Some(x) = self.hosts.get_mut(&h).filter(|x| x.alive) else {
            return;
        };
        let next = x
            .proto
            .poll_timeout()
            .map(|d| (d.as_micros() as Time).max(now));
        if next.is_some() && next != x.timer {
            x.timer = next;
            if let Some(t) = next {
                self.schedule(t - now, Event::Timeout(h, t));
            }
        }
    }

    fn carry_out(&mut self, h: HostId, action: Action<u64, ()>) {
        match action {
            Action::SendDispatch {
                job,
                host,
                fragments,
            } => {
                let view = self.view(h);
                self.checker.dispatched(job, host, &fragments, &view);
                self.note(|| format!("  {h}: dispatch {job} {fragments:?} to {host}"));
                self.send(
                    h,
                    host,
                    StreamKind::Control,
                    Msg::Dispatch { job, fragments },
                );
            }
            Action::SubmitWork {
                key,
                job,
                spec,
                fragments,
            } => {
                if job.initiator == h {
                    let view = self.view(h);
                    self.checker.dispatched(job, h, &fragments, &view);
                    self.note(|| format!("  {h}: dispatch {job} {fragments:?} to {h}"));
                }
                let Some(x) = self.hosts.get_mut(&h) else {
                    return;
                };
                match x.queue.submit(key, spec, fragments) {
                    Ok(()) => {
                        x.works.insert(key, job);
                    }
                    Err(e) => self.checker.report(
                        Invariant::Protocol,
                        Some(job),
                        format!("{h}: the protocol submitted work its queue refuses: {e:?}"),
                    ),
                }
            }
            Action::AddWork { key, fragments } => {
                let Some(x) = self.hosts.get_mut(&h) else {
                    return;
                };
                let job = x.works.get(&key).copied();
                if let Some(job) = job.filter(|j| j.initiator == h) {
                    let view = self.view(h);
                    self.checker.dispatched(job, h, &fragments, &view);
                    self.note(|| format!("  {h}: dispatch {job} {fragments:?} to {h}"));
                }
                let Some(x) = self.hosts.get_mut(&h) else {
                    return;
                };
                if !x.queue.add(key, fragments) {
                    self.checker.report(
                        Invariant::Protocol,
                        job,
                        format!("{h}: the protocol added fragments to unknown work {key:?}"),
                    );
                }
            }
            Action::DrainWork { key } => {
                if let Some(x) = self.hosts.get_mut(&h) {
                    let ranges = x.queue.drain_pending(key);
                    x.proto.work_drained(key, ranges);
                }
            }
            Action::ReclaimWork { key, fragments } => {
                if let Some(x) = self.hosts.get_mut(&h) {
                    let mut ranges = x.queue.take_pending(key, &fragments);
                    if self.config.sabotage == Some(Sabotage::ReclaimRunning) {
                        ranges = fragments;
                    }
                    if x.works.get(&key).is_some_and(|j| j.initiator == h) {
                        self.stats.reclaims += 1;
                        self.stats.reclaimed += ranges.iter().map(|r| r.len() as u64).sum::<u64>();
                    }
                    x.proto.work_reclaimed(key, ranges);
                }
            }
            Action::SendReclaim {
                job,
                host,
                fragments,
            } => {
                self.note(|| format!("  {h}: reclaim {job} {fragments:?} from {host}"));
                self.stats.reclaims += 1;
                self.send(
                    h,
                    host,
                    StreamKind::Control,
                    Msg::Reclaim { job, fragments },
                );
            }
            Action::SendReclaimed {
                job,
                host,
                fragments,
            } => {
                self.send(
                    h,
                    host,
                    StreamKind::Control,
                    Msg::Reclaimed { job, fragments },
                );
            }
            Action::RemoveWork { key } => {
                if let Some(x) = self.hosts.get_mut(&h) {
                    x.queue.remove(key);
                    x.works.remove(&key);
                }
            }
            Action::SendReplica { job, host } => {
                self.checker.replica_sent(job, host);
                let lj = self
                    .hosts
                    .get(&h)
                    .and_then(|x| x.local.get(&job))
                    .map(|l| (l.params.clone(), l.count));
                if let Some((params, count)) = lj {
                    let msg = Msg::Replica { job, params, count };
                    self.send(h, host, StreamKind::Control, msg);
                }
            }
            Action::SendCancel { job, host } => {
                self.send(h, host, StreamKind::Control, Msg::Cancel(job));
            }
            Action::SendRelease { job, host } => {
                if self.config.sabotage != Some(Sabotage::DropReleases) {
                    self.send(h, host, StreamKind::Control, Msg::Release(job));
                }
            }
            Action::SendHeartbeat { host } => {
                self.send(h, host, StreamKind::Control, Msg::Heartbeat);
            }
            Action::SendAnswer { job, answer } => {
                let conn = self
                    .hosts
                    .get(&h)
                    .and_then(|x| x.replicas.get(&job))
                    .map(|r| r.conn);
                let Some(conn) = conn else {
                    return;
                };
                let msgs = match answer {
                    Answer::Failed { fragment, reason } => vec![Msg::Failed {
                        job,
                        fragment,
                        reason,
                    }],
                    Answer::NotStarted { ranges } => vec![Msg::NotStarted { job, ranges }],
                };
                for m in msgs {
                    self.result(h, job, conn, m);
                }
            }
            Action::LoadReplica { job, .. } => {
                let load = self.rng.range(0, 3 * MS);
                self.schedule(load, Event::ReplicaLoaded(h, job));
            }
            Action::CancelReplica { job } => {
                if let Some(x) = self.hosts.get_mut(&h) {
                    if let Some(r) = x.replicas.get_mut(&job) {
                        r.cancelled = true;
                    }
                    for run in x.runs.values_mut() {
                        if run.job == job {
                            run.cancelled = true;
                        }
                    }
                }
            }
            Action::DropReplica { job } => {
                if let Some(x) = self.hosts.get_mut(&h) {
                    x.replicas.remove(&job);
                }
            }
            Action::Deliver {
                job,
                fragment,
                seq,
                payload,
            } => {
                self.stats.deliveries += 1;
                self.note(|| format!("  {h}: deliver {job} ({fragment}, {seq})"));
                self.deliver(job, fragment, seq, payload);
                // The job takes its chunks at its own pace: often at once, sometimes slowly.
                let d = if self.rng.chance(1, 4) {
                    self.rng.range(0, 20 * MS)
                } else {
                    0
                };
                self.schedule(d, Event::Delivered(h, job));
            }
            Action::Finished(mut report) => {
                let job = report.job;
                self.note(|| {
                    format!(
                        "  {h}: finished {job}: done {:?} skipped {:?} failed {:?} cancelled {:?}",
                        report.done.to_ranges(),
                        report.skipped.to_ranges(),
                        report.failed.to_ranges(),
                        report.cancelled.to_ranges()
                    )
                });
                if let Some(x) = self.hosts.get_mut(&h) {
                    x.local.remove(&job);
                }
                self.finish(&mut report);
            }
            Action::HostDown { host: peer, why } => self.declared_down(h, peer, &why.to_string()),
            Action::PauseResults { job, host } => {
                self.stats.result_pauses += 1;
                self.note(|| format!("  {h}: pause results of {job} from {host}"));
                if let Some(x) = self.hosts.get_mut(&h) {
                    x.paused.insert((host, job));
                }
            }
            Action::ResumeResults { job, host } => {
                self.note(|| format!("  {h}: resume results of {job} from {host}"));
                if let Some(x) = self.hosts.get_mut(&h) {
                    x.paused.remove(&(host, job));
                }
                let conn = self
                    .hosts
                    .get(&h)
                    .and_then(|x| x.links.get(&host))
                    .map(|l| l.conn);
                if let Some(conn) = conn {
                    let id = StreamId {
                        from: host,
                        to: h,
                        conn,
                        kind: StreamKind::Results(job),
                    };
                    if let Some(stream) = self.streams.get_mut(&id) {
                        if !stream.armed {
                            stream.armed = true;
                            self.schedule(0, Event::Arrive(id));
                        }
                    }
                }
            }
        }
    }

    fn deliver(&mut self, job: JobId, fragment: usize, seq: u32, data: u64) {
        let s = &mut self.sabotage;
        match self.config.sabotage {
            Some(Sabotage::DuplicateDelivery) if !s.applied => {
                s.applied = true;
                self.checker.delivered(job, fragment, seq, data);
            }
            Some(Sabotage::DropDelivery) if !s.applied => {
                s.applied = true;
                return;
            }
            Some(Sabotage::SwapDeliveries) if !s.applied => match s.held.take() {
                Some(held) if held.0 == job => {
                    s.applied = true;
                    self.checker.delivered(job, fragment, seq, data);
                    self.checker.delivered(held.0, held.1, held.2, held.3);
                    return;
                }
                Some(held) => {
                    self.checker.delivered(held.0, held.1, held.2, held.3);
                }
                None => {
                    let ordered = self
                        .hosts
                        .get(&job.initiator)
                        .and_then(|x| x.local.get(&job))
                        .is_some_and(|l| !l.params.allow_non_sequential_chunks);
                    if ordered {
                        s.held = Some((job, fragment, seq, data));
                        return;
                    }
                }
            },
            Some(Sabotage::DeliverAfterFinish) => {
                s.last.insert(job, (fragment, seq, data));
            }
            _ => {}
        }
        self.checker.delivered(job, fragment, seq, data);
    }

    fn finish(&mut self, report: &mut fragmenta_job::JobReport) {
        let job = report.job;
        let s = &mut self.sabotage;
        if let Some(held) = s.held.take() {
            self.checker.delivered(held.0, held.1, held.2, held.3);
        }
        match self.config.sabotage {
            Some(Sabotage::DropFinished) if !s.applied => {
                s.applied = true;
                return;
            }
            Some(Sabotage::CorruptReport) if !s.applied && !report.done.is_empty() => {
                s.applied = true;
                let first = report.done.iter().next();
                if let Some(i) = first {
                    report.done.remove_range(i..i + 1);
                    report.skipped.insert(i);
                }
            }
            _ => {}
        }
        let alone = self.view(job.initiator).len() == 1;
        self.checker.finished(report, alone);
        if self.config.sabotage == Some(Sabotage::DeliverAfterFinish) && !self.sabotage.applied {
            if let Some((f, seq, data)) = self.sabotage.last.remove(&job) {
                self.sabotage.applied = true;
                self.checker.delivered(job, f, seq, data);
            }
        }
    }

    /// Starts every block the host's queue admits now.
    fn kick(&mut self, h: HostId) {
        let now = self.now;
        let mut started = Vec::new();
        {
            let Some(x) = self.hosts.get_mut(&h).filter(|x| x.alive) else {
                return;
            };
            while let Some(block) = x.queue.next_block() {
                let Some(job) = x.works.get(&block.work).copied() else {
                    x.queue.finish(&block); // work removed meanwhile
                    continue;
                };
                let (local, conn, cancelled) = if job.initiator == h {
                    (true, 0, false)
                } else {
                    match x.replicas.get(&job) {
                        Some(rj) => (false, rj.conn, rj.cancelled),
                        None => {
                            x.queue.finish(&block);
                            continue;
                        }
                    }
                };
                x.next_run += 1;
                let id = x.next_run;
                let start = block.range.start;
                let end = block.range.end;
                let rerun = if local {
                    x.proto
                        .rerun_with_chunks(job, block.range.clone())
                        .into_iter()
                        .collect()
                } else {
                    BTreeSet::new()
                };
                x.runs.insert(
                    id,
                    Run {
                        block,
                        job,
                        local,
                        conn,
                        next: start,
                        in_fragment: false,
                        chunk: 0,
                        started: now,
                        cancelled,
                        done: Vec::new(),
                        failed: Vec::new(),
                        not_started: end..end,
                        rerun,
                    },
                );
                started.push(id);
            }
        }
        for id in started {
            self.schedule(0, Event::Work(h, id));
        }
    }

    /// One step of a running block: start a fragment, emit a chunk, or complete a fragment.
    fn work(&mut self, h: HostId, id: u64) {
        let now = self.now;
        let Some(x) = self.hosts.get_mut(&h).filter(|x| x.alive) else {
            return;
        };
        let Some(run) = x.runs.get_mut(&id) else {
            return;
        };
        let job = run.job;
        let Some(b) = self.behaviors.get(&job).copied() else {
            return;
        };
        let end = run.block.range.end;
        let conn = run.conn;
        if run.in_fragment {
            let f = run.next;
            if run.local && run.rerun.contains(&f) {
                // Run remote style on the initiator: chunks and completion go to its scheduler.
                let emits = b.panics(f).unwrap_or(b.chunks(f));
                if run.chunk < emits {
                    let seq = run.chunk;
                    run.chunk += 1;
                    let part = (b.duration(f, h) / (u64::from(emits) + 1)).max(1);
                    let _ = x.proto.local_chunk(job, f, seq, b.data(f, seq));
                    self.process(h);
                    self.schedule(part, Event::Work(h, id));
                    return;
                }
                let result = match b.panics(f) {
                    Some(_) => Err(FailureReason::Panicked(format!("fragment {f} panicked"))),
                    None => Ok(emits),
                };
                let outcome = x.proto.local_fragment_finished(job, f, result);
                if outcome == Outcome::Applied {
                    self.checker.remote_done(job, f, h);
                }
                self.stats.reruns_with_chunks += 1;
                self.process(h);
            } else if run.local {
                match b.panics(f) {
                    Some(_) => run.failed.push(f),
                    None => match run.done.last_mut() {
                        Some(r) if r.end == f => r.end = f + 1,
                        _ => run.done.push(f..f + 1),
                    },
                }
            } else {
                let emits = b.panics(f).unwrap_or(b.chunks(f));
                if run.chunk < emits {
                    let seq = run.chunk;
                    run.chunk += 1;
                    let part = (b.duration(f, h) / (u64::from(emits) + 1)).max(1);
                    let data = b.data(f, seq);
                    let msg = Msg::Chunk {
                        job,
                        fragment: f,
                        seq,
                        data,
                    };
                    if self.result(h, job, conn, msg) {
                        self.schedule(part, Event::Work(h, id));
                    } else {
                        self.end_run(h, id, None); // the stream is gone: the block stops
                    }
                    return;
                }
                let msg = if b.panics(f).is_some() {
                    let reason = FailureReason::Panicked(format!("fragment {f} panicked"));
                    Msg::Failed {
                        job,
                        fragment: f,
                        reason,
                    }
                } else {
                    Msg::Done {
                        job,
                        fragment: f,
                        chunks: emits,
                    }
                };
                if !self.result(h, job, conn, msg) {
                    self.end_run(h, id, None);
                    return;
                }
            }
            let Some(run) = self.hosts.get_mut(&h).and_then(|x| x.runs.get_mut(&id)) else {
                return;
            };
            run.in_fragment = false;
            run.next += 1;
            if run.next >= end {
                self.end_run(h, id, None);
                return;
            }
            if now - run.started >= TIME_SLICE {
                let rest = run.next..end;
                self.end_run(h, id, Some(rest));
                return;
            }
        }
        self.start_fragment(h, id, b);
    }

    /// Starts the block's next fragment, unless its job was cancelled.
    fn start_fragment(&mut self, h: HostId, id: u64, b: Behavior) {
        let Some(x) = self.hosts.get_mut(&h) else {
            return;
        };
        let cancelled = match x.runs.get(&id) {
            Some(run) if run.local => x.local.get(&run.job).is_none_or(|l| l.cancelled),
            Some(run) => run.cancelled,
            None => return,
        };
        let Some(run) = x.runs.get_mut(&id) else {
            return;
        };
        let (f, end, job, conn) = (run.next, run.block.range.end, run.job, run.conn);
        if cancelled {
            if run.local {
                run.not_started = f..end;
            } else {
                let msg = Msg::NotStarted {
                    job,
                    ranges: vec![f..end],
                };
                self.result(h, job, conn, msg);
            }
            self.end_run(h, id, None);
            return;
        }
        run.in_fragment = true;
        run.chunk = 0;
        let local = run.local;
        self.checker.started(job, f, h);
        let Some(x) = self.hosts.get_mut(&h) else {
            return;
        };
        let Some(run) = x.runs.get_mut(&id) else {
            return;
        };
        let rerun = local && run.rerun.contains(&f);
        let d = if local && !rerun {
            b.duration(f, h)
        } else {
            let emits = b.panics(f).unwrap_or(b.chunks(f));
            (b.duration(f, h) / (u64::from(emits) + 1)).max(1)
        };
        if rerun {
            // What ran plain before it is reported first, as the runtime's local runner does.
            let (done, failed) = (
                std::mem::take(&mut run.done),
                std::mem::take(&mut run.failed),
            );
            report_local(&mut x.proto, job, &done, &failed, &(end..end));
            self.process(h);
        }
        self.schedule(d, Event::Work(h, id));
    }

    /// A block ended: report local outcomes, give its resources back, requeue what it yielded.
    fn end_run(&mut self, h: HostId, id: u64, rest: Option<Range<usize>>) {
        let Some(x) = self.hosts.get_mut(&h) else {
            return;
        };
        let Some(run) = x.runs.remove(&id) else {
            return;
        };
        if run.local {
            report_local(
                &mut x.proto,
                run.job,
                &run.done,
                &run.failed,
                &run.not_started,
            );
        }
        x.queue.finish(&run.block);
        if let Some(rest) = rest {
            x.queue.requeue_front(run.block.work, rest);
        }
        self.process(h);
    }

    /// `h`'s connection to `peer` is lost (closed or reset): its protocol declares `peer` down.
    fn link_lost(&mut self, h: HostId, peer: HostId, why: &str) {
        if let Some(x) = self.hosts.get_mut(&h).filter(|x| x.alive) {
            x.proto.link_down(peer, why);
        }
        self.process(h);
    }

    /// `h`'s protocol declared `peer` down: the connection closes (the peer sees it after a
    /// delay); the protocol already reassigned or failed its fragments and abandoned its jobs.
    fn declared_down(&mut self, h: HostId, peer: HostId, why: &str) {
        let peer_alive = self.alive(peer);
        let Some(x) = self.hosts.get_mut(&h) else {
            return;
        };
        let Some(link) = x.links.remove(&peer) else {
            return;
        };
        x.paused.retain(|(from, _)| *from != peer);
        self.stats.declared_down += 1;
        if peer_alive {
            self.stats.false_suspicions += 1;
        }
        self.checker.host_down(h, peer);
        self.note(|| format!("  {h} declares {peer} down: {why}"));
        let d = self.delay(h, peer);
        self.schedule(
            d,
            Event::Closed {
                at: peer,
                peer: h,
                conn: link.conn,
            },
        );
    }

    fn crash(&mut self, h: HostId) {
        let Some(x) = self.hosts.get_mut(&h) else {
            return;
        };
        x.alive = false;
        let links: Vec<(HostId, u64)> = x.links.iter().map(|(p, l)| (*p, l.conn)).collect();
        x.links.clear();
        x.replicas.clear();
        x.runs.clear();
        x.works.clear();
        x.local.clear();
        self.stats.crashes += 1;
        self.checker.initiator_lost(h);
        self.note(|| format!("  CRASH {h}"));
        for (p, conn) in links {
            // Either the peer sees the connection go at once, or only the silence.
            if self.rng.chance(1, 2) {
                let d = self.delay(h, p);
                self.schedule(
                    d,
                    Event::Closed {
                        at: p,
                        peer: h,
                        conn,
                    },
                );
            }
        }
    }

    fn restart(&mut self) {
        let id = self.start_host();
        self.stats.restarts += 1;
        self.note(|| format!("  START {id}"));
        for p in self.live_hosts() {
            if p != id {
                let d = self.rng.range(MS, 20 * MS);
                self.schedule(d, Event::Connect { from: id, to: p });
            }
        }
    }

    fn partition(&mut self, a: HostId, b: HostId, reset: bool, until: Time) {
        let heal = self.now + until;
        let e = self.partitions.entry(pair(a, b)).or_insert(heal);
        *e = (*e).max(heal);
        self.schedule(until, Event::Heal(a, b));
        if reset {
            self.link_lost(a, b, "connection reset");
            self.link_lost(b, a, "connection reset");
        }
    }

    fn chaos(&mut self) {
        let live = self.live_hosts();
        let roll = self.rng.below(100);
        match roll {
            0..=19 if live.len() > 1 => {
                if let Some(h) = self.rng.pick(&live).copied() {
                    self.crash(h);
                }
            }
            20..=34 if live.len() < MAX_LIVE_HOSTS => self.restart(),
            35..=59 if live.len() > 1 => {
                let a = self.rng.pick(&live).copied();
                let b = self.rng.pick(&live).copied();
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b {
                        let reset = self.rng.chance(1, 4);
                        let until = self.rng.range(10 * MS, 900 * MS);
                        self.stats.partitions += 1;
                        self.note(|| format!("  PARTITION {a} | {b} for {until}us reset={reset}"));
                        self.partition(a, b, reset, until);
                    }
                }
            }
            60..=67 if live.len() > 1 => {
                if let Some(a) = self.rng.pick(&live).copied() {
                    let until = self.rng.range(10 * MS, 900 * MS);
                    self.stats.partitions += 1;
                    self.note(|| format!("  ISOLATE {a} for {until}us"));
                    for b in live.iter().copied().filter(|b| *b != a) {
                        self.partition(a, b, false, until);
                    }
                }
            }
            68..=79 if live.len() > 1 => {
                let a = self.rng.pick(&live).copied();
                let b = self.rng.pick(&live).copied();
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b {
                        let until = self.now + self.rng.range(50 * MS, 1_000 * MS);
                        let extra = self.rng.range(20 * MS, 500 * MS);
                        self.stats.slow_links += 1;
                        self.note(|| format!("  SLOW {a} - {b} +{extra}us"));
                        self.slow.insert(pair(a, b), (until, extra));
                    }
                }
            }
            _ => {}
        }
    }

    fn workload(&mut self) {
        let live = self.live_hosts();
        let Some(h) = self.rng.pick(&live).copied() else {
            return;
        };
        if self.rng.chance(15, 100) {
            let jobs: Vec<JobId> = self
                .hosts
                .get(&h)
                .map(|x| {
                    x.local
                        .iter()
                        .filter(|(_, l)| !l.cancelled)
                        .map(|(j, _)| *j)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(job) = self.rng.pick(&jobs).copied() {
                self.stats.cancels += 1;
                self.checker.cancel_requested(job);
                self.note(|| format!("  CANCEL {job}"));
                if let Some(x) = self.hosts.get_mut(&h) {
                    if let Some(l) = x.local.get_mut(&job) {
                        l.cancelled = true;
                    }
                    let _ = x.proto.cancel(job);
                }
                self.process(h);
            }
            return;
        }
        self.submit(h);
    }

    fn submit(&mut self, h: HostId) {
        let view = self.view(h);
        let r = &mut self.rng;
        let mode = *r
            .pick(&[
                SchedulingMode::Local,
                SchedulingMode::Cluster,
                SchedulingMode::Cluster,
                SchedulingMode::OncePerHost,
                SchedulingMode::UserDefined,
            ])
            .unwrap_or(&SchedulingMode::Cluster);
        let local_sub = view.get(&h).map_or(0, |i| i.sub_cluster);
        let eligible = view
            .iter()
            .filter(|(id, i)| **id != h && i.sub_cluster == local_sub)
            .count() as u64;
        let count = if mode == SchedulingMode::OncePerHost {
            match r.below(4) {
                0 => 0,
                3 => r.range(0, eligible + 3),
                _ => r.range(0, eligible + 1),
            }
        } else {
            match r.below(10) {
                0 => 0,
                1..=4 => r.range(1, 9),
                5..=8 => r.range(8, 65),
                _ => r.range(64, 301),
            }
        } as usize;
        let gpu_load = if r.chance(1, 8) {
            *r.pick(&[0.5, 1.0, 2.0]).unwrap_or(&1.0)
        } else {
            0.0
        };
        let params = JobParams {
            mode,
            cpu_load: *r.pick(&[0.0, 0.5, 1.0, 1.0, 2.0, 6.0]).unwrap_or(&1.0),
            gpu_load,
            priority: if r.chance(1, 100) {
                -1
            } else {
                r.below(4) as i8
            },
            thread_limit: if r.chance(1, 4) {
                r.range(1, 4) as usize
            } else {
                0
            },
            allow_non_sequential_chunks: r.chance(1, 2),
        };
        let known: Vec<HostId> = view.keys().copied().collect();
        let ever = u64::from(self.next_host);
        let assignment = (mode == SchedulingMode::UserDefined).then(|| {
            (0..count)
                .map(|_| match r.below(10) {
                    6 => HostId(r.below(ever) as u32),
                    7 => HostId(1_000_000 + r.below(4) as u32),
                    8 => HostId::UNASSIGNED,
                    _ => r.pick(&known).copied().unwrap_or(HostId::UNASSIGNED),
                })
                .collect::<Vec<HostId>>()
        });
        let behavior = Behavior {
            key: r.next_u64(),
            initiator: h,
            chunk_max: *r.pick(&[0, 1, 2, 4]).unwrap_or(&1),
            duration_max: *r.pick(&[200, 2 * MS, 8 * MS]).unwrap_or(&MS),
            panic_percent: if r.chance(1, 5) { r.range(5, 30) } else { 0 },
            unknown_percent: if r.chance(1, 8) { 40 } else { 0 },
            slow: if r.chance(1, 3) {
                r.pick(&known).copied()
            } else {
                None
            },
        };
        let Some(x) = self.hosts.get_mut(&h) else {
            return;
        };
        x.next_job += 1;
        let job = JobId {
            initiator: h,
            seq: x.next_job,
        };
        self.behaviors.insert(job, behavior);
        let result = x.proto.submit(
            job,
            JobSpec {
                params: params.clone(),
                count,
                assignment: assignment.clone(),
            },
        );
        if let Ok(n) = result {
            x.local.insert(
                job,
                LocalJob {
                    params: params.clone(),
                    count: n,
                    cancelled: false,
                },
            );
        }
        self.checker.submitted(
            Submission {
                job,
                params: &params,
                count,
                assignment: assignment.as_deref(),
                view: &view,
                behavior,
            },
            &result,
        );
        self.note(|| format!("  SUBMIT {job} {params:?} count {count} -> {result:?}"));
        match result {
            Ok(n) => {
                self.stats.jobs += 1;
                self.stats.fragments += n as u64;
                self.process(h);
            }
            Err(_) => self.stats.jobs_rejected += 1,
        }
    }

    /// The active phase is over: no more jobs or faults, partitions heal, links speed up.
    fn settle(&mut self) {
        self.active = false;
        self.settle_from = Some((self.step, self.now));
        self.partitions.clear();
        self.slow.clear();
        self.note(|| "  SETTLE: faults stop, partitions heal".to_string());
    }

    fn settled(&self) -> bool {
        self.checker.unfinished().is_empty()
            && self
                .hosts
                .values()
                .filter(|x| x.alive)
                .all(SimHost::is_clean)
    }

    fn report_unsettled(&mut self) {
        for job in self.checker.unfinished() {
            self.checker.report(
                Invariant::Liveness,
                Some(job),
                "the job did not finish after the faults stopped".to_string(),
            );
        }
        let mut unclean = Vec::new();
        for (id, x) in self.hosts.iter().filter(|(_, x)| x.alive) {
            if !x.is_clean() {
                let jobs: BTreeSet<JobId> = x
                    .replicas
                    .keys()
                    .copied()
                    .chain(x.proto.replica_jobs())
                    .chain(x.runs.values().map(|r| r.job))
                    .chain(x.works.values().copied())
                    .collect();
                unclean.push(format!(
                    "{id} still holds work of {jobs:?} ({} replicas, {} running blocks)",
                    x.proto.replicas(),
                    x.runs.len()
                ));
            }
        }
        for detail in unclean {
            self.checker.report(Invariant::Cleanup, None, detail);
        }
    }

    /// Per-step resource invariants of every live host.
    fn check_hosts(&mut self) {
        let mut problems = Vec::new();
        for (id, x) in self.hosts.iter().filter(|(_, x)| x.alive) {
            let running = x.queue.running();
            if running != x.runs.len() || running > x.max_running {
                problems.push(format!(
                    "{id} runs {} blocks, its queue counts {running}, at most {}",
                    x.runs.len(),
                    x.max_running
                ));
            }
            // CPU loads of running blocks stay within the cores, except one block alone (a
            // fragment larger than the host runs by itself).
            let cpu: Vec<f32> = x
                .runs
                .values()
                .map(|r| r.block.cpu_load)
                .filter(|l| *l > 0.0)
                .collect();
            let sum: f32 = cpu.iter().sum();
            if cpu.len() > 1 && sum > x.info.cores + 1e-3 {
                problems.push(format!(
                    "{id} runs {} CPU blocks with loads {cpu:?} on {} cores",
                    cpu.len(),
                    x.info.cores
                ));
            }
            let mut gpu = vec![0.0f32; x.info.gpus as usize];
            for r in x.runs.values() {
                for g in &r.block.gpus {
                    if let Some(u) = gpu.get_mut(*g as usize) {
                        *u += r.block.gpu_load.min(1.0);
                    }
                }
            }
            if gpu.iter().any(|u| *u > 1.0 + 1e-3) {
                problems.push(format!("{id} loads its GPUs to {gpu:?}"));
            }
        }
        for p in problems {
            self.checker.report(Invariant::Resources, None, p);
        }
    }
}

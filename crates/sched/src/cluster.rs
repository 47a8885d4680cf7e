//! The initiator's scheduler: places a job's fragments on hosts, reassigns them when a host
//! fails, and turns result chunks into an exactly-once (and, when asked, ordered) delivery.
//!
//! One [`Scheduler`] runs on every host for the jobs that host initiates. It is a sans-IO state
//! machine: the runtime feeds it events (`host_up`, `host_down`, `submit`, `on_*`, `cancel`) and
//! polls [`Action`]s (send a replica, dispatch fragments, deliver a chunk, cancel, release,
//! finished). It never reads a clock, a socket or a thread; `P` is the runtime's chunk payload.
//!
//! Rules (see ARCHITECTURE.md, "Scheduling semantics"):
//! - LOCAL: everything on the initiator. ONCE_PER_HOST: fragment `i` on the `i`-th remote host
//!   of the initiator's sub-cluster (ascending id). USER_DEFINED: where the job says; unknown
//!   hosts are skipped. These three never move a fragment: a failed host fails its fragments.
//! - CLUSTER: pull-based. Each host has a window of outstanding fragments (starting at twice its
//!   parallel slots, doubling each time the host runs dry while work remains); batches follow
//!   guided self-scheduling so a slow host holds little and the tail stays balanced. Fragments
//!   of a failed host go back to the pool and run elsewhere, the initiator included. So do
//!   those of a host that answers it cannot run the job (its type is not registered there, or
//!   the replica cannot be deserialized): that host is excluded from the job, and the report
//!   names it in `excluded_hosts`.
//! - CLUSTER work stealing: once nothing is left to hand out and a host has run dry, a host
//!   holding more fragments than it can run at once is asked to give back the ones it has not
//!   started ([`Action::Reclaim`]). They stay assigned to it until its answer
//!   ([`Scheduler::on_reclaimed`]) names those it removed from its queue; only then do they
//!   go to other hosts, so a fragment is never assigned to two hosts at once. A host that ran
//!   fewer than half as many fragments per slot as the host that ran dry is slow: it is asked
//!   for all it holds and gets no more of the job while another host can take them.
//! - Results: chunk `(fragment, seq)` is delivered at most once across attempts; a chunk is
//!   accepted only from the host the fragment is assigned to now, so anything arriving late from
//!   a host declared dead, or after the fragment or job finished, is dropped. Without
//!   `allow_non_sequential_chunks`, deliveries come in ascending (fragment, seq) order: chunks of
//!   the lowest unfinished fragment stream through, later ones wait.

use fragmenta_job::report_plumbing;
use fragmenta_job::{
    FailureReason, FragmentFailure, FragmentSet, HostId, InvalidArgument, JobId, JobParams,
    JobReport, SchedulingMode,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

/// What the scheduler knows of a host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostInfo {
    /// Sub-cluster the host belongs to (ONCE_PER_HOST stays within the initiator's).
    pub sub_cluster: u32,
    /// CPU cores.
    pub cores: f32,
    /// GPUs.
    pub gpus: u32,
}

/// A job as submitted to the scheduler.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// The job's scheduling parameters.
    pub params: JobParams,
    /// Fragments asked for (ONCE_PER_HOST: 0 = one per remote host).
    pub count: usize,
    /// For USER_DEFINED: the host of each fragment (`assign_fragments_to_hosts`).
    pub assignment: Option<Vec<HostId>>,
}

/// What the runtime must do next.
// `Finished` carries the report, larger than the other variants; actions live briefly in one
// queue and there is one `Finished` per job, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
#[must_use]
pub enum Action<P> {
    /// Serialize the job and send it to `host` (always before the first `Dispatch` there).
    SendReplica {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
    },
    /// Run these fragments on `host` (the initiator itself or a remote host).
    Dispatch {
        /// The job.
        job: JobId,
        /// Where to run them.
        host: HostId,
        /// Fragment indices, ascending.
        fragments: Vec<Range<usize>>,
    },
    /// Call `receive_remote_result` for this chunk.
    Deliver {
        /// The job.
        job: JobId,
        /// Fragment index.
        fragment: usize,
        /// Chunk sequence number.
        seq: u32,
        /// The chunk.
        payload: P,
    },
    /// Ask `host` to give back those of these fragments it has not started (work stealing);
    /// its answer goes to [`Scheduler::on_reclaimed`]. Until then they stay assigned to it.
    Reclaim {
        /// The job.
        job: JobId,
        /// The host holding them.
        host: HostId,
        /// Fragment indices, ascending.
        fragments: Vec<Range<usize>>,
    },
    /// Tell `host` to drop the job's unstarted fragments and cancel running ones.
    Cancel {
        /// The job.
        job: JobId,
        /// The host.
        host: HostId,
    },
    /// The job is over: `host` may drop its replica.
    Release {
        /// The job.
        job: JobId,
        /// The remote host.
        host: HostId,
    },
    /// The job finished; every fragment is in exactly one set of the report. Comes after every
    /// `Deliver` of the job. `elapsed` is zero: the runtime owns the clock.
    Finished(JobReport),
}

/// The memory a chunk payload holds, in bytes (or any unit the caller bounds).
pub trait Weight {
    /// The payload's weight.
    fn weight(&self) -> usize;
}

impl Weight for u32 {
    fn weight(&self) -> usize {
        1
    }
}

impl Weight for u64 {
    fn weight(&self) -> usize {
        1
    }
}

impl Weight for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// Whether an event changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The event was applied.
    Applied,
    /// The event refers to an unknown or finished job, a host that is down, or a fragment not
    /// assigned to that host any more; it was dropped.
    Stale,
}

struct JobState<P> {
    params: JobParams,
    count: usize,
    ordered: bool,
    reassign: bool,
    cancelling: bool,
    unassigned: FragmentSet,
    assigned: BTreeMap<HostId, FragmentSet>,
    window: BTreeMap<HostId, usize>,
    replicas: BTreeSet<HostId>,
    done: FragmentSet,
    skipped: FragmentSet,
    failed: FragmentSet,
    cancelled: FragmentSet,
    failures: Vec<FragmentFailure>,
    per_host: BTreeMap<HostId, usize>,
    next_seq: BTreeMap<usize, u32>,
    cursor: usize,
    buffered: BTreeMap<(usize, u32), P>,
    /// Sum of the weights of `buffered`.
    buffered_weight: usize,
    /// CLUSTER fragments reassigned after a host failure with chunks of an earlier attempt
    /// delivered or buffered: wherever they run next (the initiator included) their chunks must
    /// go through `on_chunk` so no `(fragment, seq)` reaches the application twice.
    tainted: FragmentSet,
    /// Submitted with [`Scheduler::submit_on_initiator_only`]: no other host is used.
    initiator_only: bool,
    /// CLUSTER: hosts that answered that they cannot run the job, with their reason; they get
    /// no more of its fragments.
    excluded: BTreeMap<HostId, FailureReason>,
    /// CLUSTER work stealing: fragments each host was asked to give back, its answer pending.
    reclaiming: BTreeMap<HostId, FragmentSet>,
    /// Hosts found slow when fragments were reclaimed from them: they get no more fragments
    /// of the job while another host can take them.
    slow: BTreeSet<HostId>,
    /// Fragments each host held after its last answer to a reclaim: it is asked again only
    /// once it holds more (what it holds then is running, or given back soon).
    answered: BTreeMap<HostId, usize>,
}

impl<P> JobState<P> {
    fn terminal_run_end(&self, x: usize) -> Option<usize> {
        let mut end = x;
        loop {
            let next = [&self.done, &self.failed, &self.skipped, &self.cancelled]
                .iter()
                .filter_map(|s| s.run_end(end))
                .max();
            match next {
                Some(e) if e > end => end = e,
                _ => break,
            }
        }
        (end > x).then_some(end)
    }

    fn terminal_len(&self) -> usize {
        self.done.len() + self.failed.len() + self.skipped.len() + self.cancelled.len()
    }

    fn outstanding(&self, host: HostId) -> usize {
        self.assigned.get(&host).map_or(0, |s| s.len())
    }

    /// Removes `range` from `host`'s assignment (and from what it was asked to give back: a
    /// fragment it reported on cannot be in its answer); returns the part assigned there.
    fn unassign(&mut self, host: HostId, range: Range<usize>) -> FragmentSet {
        if let Some(asked) = self.reclaiming.get_mut(&host) {
            asked.remove_range(range.clone());
        }
        match self.assigned.get_mut(&host) {
            Some(set) => {
                let taken = set.intersect_range(range.clone());
                set.remove_range(range);
                taken
            }
            None => FragmentSet::new(),
        }
    }
}

/// The last `n` fragments of `set`, ascending.
fn back(set: &FragmentSet, mut n: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for r in set.to_ranges().into_iter().rev() {
        if n == 0 {
            break;
        }
        let k = r.len().min(n);
        out.push(r.end - k..r.end);
        n -= k;
    }
    out.reverse();
    out
}

/// The initiator's scheduler. See the module docs.
pub struct Scheduler<P> {
    local: HostId,
    hosts: BTreeMap<HostId, HostInfo>,
    jobs: BTreeMap<JobId, JobState<P>>,
    actions: VecDeque<Action<P>>,
    max_batch: usize,
    max_window: usize,
    stealing: bool,
    reclaims: u64,
}

/// A host's answer to [`Action::Reclaim`] that breaks the protocol: it names fragments it was
/// not asked for (or already reported on), or answers a request never made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimViolation {
    /// The job.
    pub job: JobId,
    /// The answering host.
    pub host: HostId,
    /// The first range of the answer that was not asked for.
    pub range: Range<usize>,
}

impl std::fmt::Display for ReclaimViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} gave back fragments {:?} of {}, which it was not asked for",
            self.host, self.range, self.job
        )
    }
}

impl std::error::Error for ReclaimViolation {}

impl<P: Weight> Scheduler<P> {
    /// A scheduler on host `local`, which is up with `info`.
    pub fn new(local: HostId, info: HostInfo) -> Self {
        let mut hosts = BTreeMap::new();
        hosts.insert(local, info);
        Scheduler {
            local,
            hosts,
            jobs: BTreeMap::new(),
            actions: VecDeque::new(),
            max_batch: 1024,
            max_window: 8192,
            stealing: true,
            reclaims: 0,
        }
    }

    /// Turns CLUSTER work stealing on (the default) or off. Off, fragments dispatched to a
    /// host stay there until they ran or the host failed.
    pub fn set_work_stealing(&mut self, on: bool) {
        self.stealing = on;
    }

    /// Whether CLUSTER work stealing is on.
    pub fn work_stealing(&self) -> bool {
        self.stealing
    }

    /// [`Action::Reclaim`] requests made so far.
    pub fn reclaims(&self) -> u64 {
        self.reclaims
    }

    /// Caps CLUSTER batch size (default 1024) and per-host window (default 8192).
    pub fn set_limits(&mut self, max_batch: usize, max_window: usize) {
        self.max_batch = max_batch.max(1);
        self.max_window = max_window.max(self.max_batch);
    }

    /// This host.
    pub fn local(&self) -> HostId {
        self.local
    }

    /// Hosts currently up, this one included.
    pub fn hosts(&self) -> impl Iterator<Item = (HostId, &HostInfo)> {
        self.hosts.iter().map(|(h, i)| (*h, i))
    }

    /// Jobs not finished yet.
    pub fn active_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The next action, if any.
    #[must_use = "an action not carried out is lost: poll until None and carry out each"]
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// A host joined (or this scheduler learned of it). Host ids are never reused.
    pub fn host_up(&mut self, host: HostId, info: HostInfo) {
        self.hosts.insert(host, info);
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in ids {
            self.pump(job);
        }
    }

    /// A host failed or left. CLUSTER fragments there go back to the pool; other modes report
    /// them failed. Returns `Stale` for the local host or an unknown one.
    pub fn host_down(&mut self, host: HostId) -> Outcome {
        if host == self.local || self.hosts.remove(&host).is_none() {
            return Outcome::Stale;
        }
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.replicas.remove(&host);
            job.window.remove(&host);
            job.reclaiming.remove(&host);
            job.answered.remove(&host);
            let lost = job.assigned.remove(&host).unwrap_or_default();
            if job.cancelling {
                job.cancelled.extend_from(&lost);
            } else if job.reassign {
                for i in lost.iter() {
                    let delivered = job.next_seq.get(&i).is_some_and(|n| *n > 0);
                    let buffered = job.buffered.range((i, 0)..=(i, u32::MAX)).next().is_some();
                    if delivered || buffered {
                        job.tainted.insert(i);
                    }
                }
                job.unassigned.extend_from(&lost);
            } else {
                for i in lost.iter() {
                    job.failures.push(FragmentFailure {
                        index: i,
                        host,
                        reason: FailureReason::HostFailed(host),
                    });
                }
                job.failed.extend_from(&lost);
            }
            // A CLUSTER GPU job whose GPU hosts are all gone cannot finish: fail the rest.
            if job.reassign && !job.unassigned.is_empty() && job.params.gpu_load > 0.0 {
                let local = self.local;
                let any_gpu = self
                    .hosts
                    .iter()
                    .any(|(h, i)| i.gpus > 0 && Self::may_use(job, local, *h));
                if !any_gpu {
                    let rest = std::mem::take(&mut job.unassigned);
                    for i in rest.iter() {
                        job.failures.push(FragmentFailure {
                            index: i,
                            host,
                            reason: FailureReason::HostFailed(host),
                        });
                    }
                    job.failed.extend_from(&rest);
                }
            }
            self.pump(id);
            self.advance(id);
        }
        Outcome::Applied
    }

    /// Submits a job; returns its resolved fragment count. Invalid arguments are reported
    /// before anything is scheduled.
    pub fn submit(&mut self, job: JobId, spec: JobSpec) -> Result<usize, InvalidArgument> {
        self.submit_with(job, spec, false)
    }

    /// [`submit`](Self::submit) for a job that cannot go to another host (the runtime did not
    /// serialize it because no other host was up): it is scheduled as if this host were alone,
    /// and hosts that come up later get none of its fragments.
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
        spec.params.validate()?;
        let params = spec.params;
        let local = self.local;
        let usable = |h: &HostId| !initiator_only || *h == local;
        let gpu_here = self.hosts.get(&local).is_some_and(|i| i.gpus > 0);
        if params.gpu_load > 0.0 && !gpu_here {
            // A LOCAL job runs on this host alone, so only this host's GPUs count for it.
            if params.mode == SchedulingMode::Local && self.hosts.values().any(|i| i.gpus > 0) {
                return Err(InvalidArgument::NoLocalGpu {
                    gpu_load: params.gpu_load,
                    host: local,
                });
            }
            if params.mode == SchedulingMode::Local
                || !self.hosts.iter().any(|(h, i)| i.gpus > 0 && usable(h))
            {
                return Err(InvalidArgument::NoGpuHost(params.gpu_load));
            }
        }
        let local_sub = self.hosts.get(&self.local).map_or(0, |h| h.sub_cluster);
        let once_hosts: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|(h, i)| **h != self.local && i.sub_cluster == local_sub && usable(h))
            .map(|(h, _)| *h)
            .collect();
        let count = match params.mode {
            SchedulingMode::OncePerHost => {
                if spec.count > once_hosts.len() {
                    return Err(InvalidArgument::OncePerHostCountExceedsHosts {
                        count: spec.count,
                        eligible: once_hosts.len(),
                    });
                }
                if spec.count == 0 {
                    once_hosts.len()
                } else {
                    spec.count
                }
            }
            _ => spec.count,
        };
        let mut state = JobState {
            ordered: !params.allow_non_sequential_chunks,
            reassign: params.mode == SchedulingMode::Cluster,
            params,
            count,
            cancelling: false,
            unassigned: FragmentSet::new(),
            assigned: BTreeMap::new(),
            window: BTreeMap::new(),
            replicas: BTreeSet::new(),
            done: FragmentSet::new(),
            skipped: FragmentSet::new(),
            failed: FragmentSet::new(),
            cancelled: FragmentSet::new(),
            failures: Vec::new(),
            per_host: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            cursor: 0,
            buffered: BTreeMap::new(),
            buffered_weight: 0,
            tainted: FragmentSet::new(),
            initiator_only,
            excluded: BTreeMap::new(),
            reclaiming: BTreeMap::new(),
            slow: BTreeSet::new(),
            answered: BTreeMap::new(),
        };
        match state.params.mode {
            SchedulingMode::Local => {
                state
                    .assigned
                    .entry(self.local)
                    .or_default()
                    .insert_range(0..count);
            }
            SchedulingMode::Cluster => {
                state.unassigned.insert_range(0..count);
            }
            SchedulingMode::OncePerHost => {
                for (i, h) in once_hosts.iter().take(count).enumerate() {
                    state.assigned.entry(*h).or_default().insert(i);
                }
            }
            SchedulingMode::UserDefined => {
                let slots = spec.assignment.unwrap_or_default();
                for i in 0..count {
                    match slots.get(i) {
                        Some(h) if self.hosts.contains_key(h) && usable(h) => {
                            if state.params.gpu_load > 0.0
                                && self.hosts.get(h).is_some_and(|info| info.gpus == 0)
                            {
                                state.failures.push(FragmentFailure {
                                    index: i,
                                    host: *h,
                                    reason: FailureReason::NoGpu(*h),
                                });
                                state.failed.insert(i);
                            } else {
                                state.assigned.entry(*h).or_default().insert(i);
                            }
                        }
                        _ => {
                            state.skipped.insert(i);
                        }
                    }
                }
            }
        }
        // Static modes dispatch everything now.
        let static_dispatch: Vec<(HostId, Vec<Range<usize>>)> = state
            .assigned
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(h, s)| (*h, s.to_ranges()))
            .collect();
        for (host, fragments) in static_dispatch {
            if host != self.local {
                state.replicas.insert(host);
                self.actions.push_back(Action::SendReplica { job, host });
            }
            self.actions.push_back(Action::Dispatch {
                job,
                host,
                fragments,
            });
        }
        self.jobs.insert(job, state);
        self.pump(job);
        self.advance(job);
        Ok(count)
    }

    /// Parallel slots of `host` for the job.
    fn slots(&self, host: HostId, params: &JobParams) -> usize {
        let Some(info) = self.hosts.get(&host) else {
            return 0;
        };
        let mut s = if params.cpu_load > 0.0 {
            ((info.cores / params.cpu_load).floor() as usize).max(1)
        } else {
            (info.cores.ceil() as usize).max(1) * 4
        };
        if params.gpu_load > 0.0 {
            if info.gpus == 0 {
                return 0;
            }
            let per_gpu = if params.gpu_load <= 1.0 {
                (1.0 / params.gpu_load).floor() as usize
            } else {
                1
            };
            s = s.min((per_gpu * info.gpus as usize).max(1));
        }
        if params.thread_limit > 0 {
            s = s.min(params.thread_limit);
        }
        s
    }

    /// Whether `host` may get fragments of `job` (CLUSTER placement).
    fn may_use(job: &JobState<P>, local: HostId, host: HostId) -> bool {
        (!job.initiator_only || host == local) && !job.excluded.contains_key(&host)
    }

    /// Whether a host other than `host` can take CLUSTER fragments of the job: the initiator
    /// always can for a CPU job; a GPU job needs another GPU host it may use.
    fn another_host_can_run(&self, id: JobId, host: HostId) -> bool {
        let Some(job) = self.jobs.get(&id) else {
            return false;
        };
        job.params.gpu_load <= 0.0
            || self
                .hosts
                .iter()
                .any(|(h, i)| *h != host && i.gpus > 0 && Self::may_use(job, self.local, *h))
    }

    /// Takes `host` out of a CLUSTER job that it cannot run: its outstanding fragments go back
    /// to the pool for the other hosts, as for a failed host, and the report names it.
    fn exclude(&mut self, id: JobId, host: HostId, reason: FailureReason) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.window.remove(&host);
        let lost = job.assigned.remove(&host).unwrap_or_default();
        job.excluded.entry(host).or_insert_with(|| reason.clone());
        if job.cancelling {
            job.cancelled.extend_from(&lost);
        } else {
            job.unassigned.extend_from(&lost);
        }
    }

    /// CLUSTER: hand out unassigned fragments to hosts with room in their window, then steal
    /// for hosts that ran dry.
    fn pump(&mut self, id: JobId) {
        self.distribute(id);
        self.steal(id);
    }

    /// CLUSTER: hand out unassigned fragments to hosts with room in their window.
    fn distribute(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if !job.reassign || job.cancelling || job.unassigned.is_empty() {
            return;
        }
        let params = job.params.clone();
        let mut slots: Vec<(HostId, usize)> = self
            .hosts
            .keys()
            .filter(|h| Self::may_use(job, self.local, **h))
            .map(|h| (*h, self.slots(*h, &params)))
            .filter(|(_, s)| *s > 0)
            .collect();
        // Hosts found slow get nothing while another host can take the fragments.
        if slots.iter().any(|(h, _)| !job.slow.contains(h)) {
            slots.retain(|(h, _)| !job.slow.contains(h));
        }
        // Hosts that gave fragments back come last: what they gave back goes elsewhere first.
        // Once any host gave some back, the job is in its tail: hosts holding least go first, so
        // a host that ran dry gets work before any other.
        if !job.answered.is_empty() {
            slots.sort_by_key(|(h, _)| (job.outstanding(*h), *h));
        }
        let (first, then): (Vec<_>, Vec<_>) = slots
            .into_iter()
            .partition(|(h, _)| !job.answered.contains_key(h));
        for tier in [first, then] {
            self.hand_out(id, &tier);
        }
    }

    /// Hands unassigned fragments of the job to these hosts (with their slots), as far as their
    /// windows allow, in guided batches.
    fn hand_out(&mut self, id: JobId, slots: &[(HostId, usize)]) {
        let total: usize = slots.iter().map(|(_, s)| s).sum::<usize>().max(1);
        let (max_batch, max_window, local) = (self.max_batch, self.max_window, self.local);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        for &(host, s) in slots {
            let window = *job.window.entry(host).or_insert((2 * s).min(max_window));
            let outstanding = job.outstanding(host);
            if outstanding >= window || job.unassigned.is_empty() {
                continue;
            }
            let guided = (job.unassigned.len() * s)
                .div_ceil(2 * total)
                .clamp(1, max_batch);
            let n = guided.min(window - outstanding);
            let fragments = job.unassigned.take_front(n);
            let set = job.assigned.entry(host).or_default();
            for r in &fragments {
                set.insert_range(r.clone());
            }
            if host != local && job.replicas.insert(host) {
                self.actions
                    .push_back(Action::SendReplica { job: id, host });
            }
            self.actions.push_back(Action::Dispatch {
                job: id,
                host,
                fragments,
            });
        }
    }

    /// CLUSTER work stealing: when nothing is left to hand out, each host that ran dry has
    /// another host holding more fragments than it runs at once asked to give back the
    /// unstarted ones (at most one request per host in flight). See the module docs.
    fn steal(&mut self, id: JobId) {
        if !self.stealing {
            return;
        }
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if !job.reassign || job.cancelling || !job.unassigned.is_empty() {
            return;
        }
        let params = job.params.clone();
        let local = self.local;
        let slots: BTreeMap<HostId, usize> = self
            .hosts
            .keys()
            .map(|h| (*h, self.slots(*h, &params)))
            .collect();
        let thieves: Vec<HostId> = slots
            .iter()
            .filter(|(h, s)| {
                **s > 0
                    && Self::may_use(job, local, **h)
                    && !job.slow.contains(h)
                    && job.outstanding(**h) == 0
            })
            .map(|(h, _)| *h)
            .collect();
        if thieves.is_empty() {
            return;
        }
        let mut requests = Vec::new();
        let mut asked: BTreeSet<HostId> = BTreeSet::new();
        for thief in thieves {
            // The victim: the host with the most fragments beyond its slots, no request to it
            // in flight.
            let victim = job
                .assigned
                .iter()
                .filter(|(h, _)| {
                    **h != thief
                        && !asked.contains(h)
                        && job.reclaiming.get(h).is_none_or(|r| r.is_empty())
                })
                .filter(|(h, set)| job.answered.get(h).is_none_or(|n| set.len() > *n))
                .filter_map(|(h, set)| {
                    let s = slots.get(h).copied().unwrap_or(0);
                    let excess = set.len().saturating_sub(s);
                    (excess > 0).then_some((*h, excess))
                })
                .max_by_key(|(h, excess)| (*excess, std::cmp::Reverse(*h)));
            let Some((victim, excess)) = victim else {
                break;
            };
            asked.insert(victim);
            // Fragments done per slot, the thief's against the victim's: both ran since the
            // job started, so the ratio is their speed's.
            let done = |h: HostId| job.per_host.get(&h).copied().unwrap_or(0);
            let (st, sv) = (slots[&thief].max(1), slots[&victim].max(1));
            let slow = done(victim) * st * 2 < done(thief) * sv;
            let Some(set) = job.assigned.get(&victim) else {
                continue;
            };
            let fragments = if slow {
                set.to_ranges()
            } else {
                back(set, excess)
            };
            requests.push((victim, slow, fragments));
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        for (host, slow, fragments) in requests {
            if slow {
                job.slow.insert(host);
            }
            let set = job.reclaiming.entry(host).or_default();
            for r in &fragments {
                set.insert_range(r.clone());
            }
            self.reclaims += 1;
            self.actions.push_back(Action::Reclaim {
                job: id,
                host,
                fragments,
            });
        }
    }

    /// `host` answered [`Action::Reclaim`]: `ranges` are the fragments it removed from its
    /// queue unstarted; they go to other hosts. The rest of the request stays assigned to it
    /// (they started). `Stale` for an unknown or finished job or a host that is down; an
    /// error when the answer names fragments that were not asked for, or were reported on
    /// since: the host broke the protocol.
    pub fn on_reclaimed(
        &mut self,
        id: JobId,
        host: HostId,
        ranges: &[Range<usize>],
    ) -> Result<Outcome, ReclaimViolation> {
        if !self.hosts.contains_key(&host) {
            return Ok(Outcome::Stale);
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Ok(Outcome::Stale);
        };
        let asked = job.reclaiming.remove(&host);
        let empty = FragmentSet::new();
        let asked_set = asked.as_ref().unwrap_or(&empty);
        for r in ranges {
            if r.start >= r.end || asked_set.intersect_range(r.clone()).len() != r.len() {
                // Keep the request: the host is about to be declared down anyway.
                if let Some(a) = asked {
                    job.reclaiming.insert(host, a);
                }
                return Err(ReclaimViolation {
                    job: id,
                    host,
                    range: r.clone(),
                });
            }
        }
        if asked.is_none() && ranges.is_empty() {
            return Ok(Outcome::Stale);
        }
        for r in ranges {
            let taken = job.unassign(host, r.clone());
            if job.cancelling {
                job.cancelled.extend_from(&taken);
            } else {
                job.unassigned.extend_from(&taken);
            }
        }
        let left = job.outstanding(host);
        job.answered.insert(host, left);
        self.pump(id);
        self.advance(id);
        Ok(Outcome::Applied)
    }

    fn grow_window(&mut self, id: JobId, host: HostId) {
        let max_window = self.max_window;
        if let Some(job) = self.jobs.get_mut(&id) {
            if job.outstanding(host) == 0 && !job.unassigned.is_empty() {
                if let Some(w) = job.window.get_mut(&host) {
                    *w = (*w * 2).min(max_window);
                }
            }
        }
    }

    fn accepts(&self, id: JobId, host: HostId, fragment: usize) -> bool {
        self.hosts.contains_key(&host)
            && self
                .jobs
                .get(&id)
                .and_then(|j| j.assigned.get(&host))
                .is_some_and(|s| s.contains(fragment))
    }

    /// Fragments of `range` that must run "remote style" (their chunks fed to `on_chunk` and
    /// completion to `on_fragment_done`) even on the initiator, because chunks of an earlier
    /// attempt on a failed host were already delivered or are buffered. Ascending.
    pub fn rerun_with_chunks(&self, id: JobId, range: Range<usize>) -> Vec<usize> {
        self.jobs
            .get(&id)
            .map(|j| j.tainted.intersect_range(range).to_vec())
            .unwrap_or_default()
    }

    /// Weight of the chunks of `id` waiting for their turn (ordered delivery), 0 for an
    /// unknown job.
    pub fn held(&self, id: JobId) -> usize {
        self.jobs.get(&id).map_or(0, |j| j.buffered_weight)
    }

    /// For an ordered job: the host running its lowest unfinished fragment (the one whose
    /// chunks are delivered next), if that fragment is assigned; `None` for other jobs.
    pub fn cursor_holder(&self, id: JobId) -> Option<HostId> {
        let job = self.jobs.get(&id)?;
        if !job.ordered || job.cursor >= job.count {
            return None;
        }
        job.assigned
            .iter()
            .find(|(_, s)| s.contains(job.cursor))
            .map(|(h, _)| *h)
    }

    /// A chunk of a remote fragment's result arrived from `host`.
    pub fn on_chunk(
        &mut self,
        id: JobId,
        host: HostId,
        fragment: usize,
        seq: u32,
        payload: P,
    ) -> Outcome {
        if !self.accepts(id, host, fragment) {
            return Outcome::Stale;
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Outcome::Stale;
        };
        let next = job.next_seq.entry(fragment).or_insert(0);
        if seq < *next {
            return Outcome::Stale; // delivered by an earlier attempt
        }
        if (!job.ordered || fragment == job.cursor) && seq == *next {
            *next += 1;
            self.actions.push_back(Action::Deliver {
                job: id,
                fragment,
                seq,
                payload,
            });
        } else if let std::collections::btree_map::Entry::Vacant(e) =
            job.buffered.entry((fragment, seq))
        {
            job.buffered_weight += payload.weight();
            e.insert(payload);
        }
        Outcome::Applied
    }

    /// Remote fragment `fragment` finished on `host` after sending `chunks` chunks (all of them
    /// reported before this event).
    pub fn on_fragment_done(
        &mut self,
        id: JobId,
        host: HostId,
        fragment: usize,
        chunks: u32,
    ) -> Outcome {
        if !self.accepts(id, host, fragment) {
            return Outcome::Stale;
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Outcome::Stale;
        };
        let _ = chunks;
        job.unassign(host, fragment..fragment + 1);
        job.done.insert(fragment);
        *job.per_host.entry(host).or_insert(0) += 1;
        if !job.ordered {
            job.next_seq.remove(&fragment);
        }
        self.grow_window(id, host);
        self.pump(id);
        self.advance(id);
        Outcome::Applied
    }

    /// Fragments that ran on the initiator itself (no chunks) finished.
    pub fn on_local_done(&mut self, id: JobId, range: Range<usize>) -> Outcome {
        let local = self.local;
        let Some(job) = self.jobs.get_mut(&id) else {
            return Outcome::Stale;
        };
        let taken = job.unassign(local, range);
        if taken.is_empty() {
            return Outcome::Stale;
        }
        *job.per_host.entry(local).or_insert(0) += taken.len();
        job.done.extend_from(&taken);
        self.grow_window(id, local);
        self.pump(id);
        self.advance(id);
        Outcome::Applied
    }

    /// A fragment failed on `host` (panic, error, unknown class…). Failed fragments are not
    /// retried: the failure is the fragment's, not the host's.
    pub fn on_fragment_failed(
        &mut self,
        id: JobId,
        host: HostId,
        fragment: usize,
        reason: FailureReason,
    ) -> Outcome {
        if !self.accepts(id, host, fragment) {
            return Outcome::Stale;
        }
        // A CLUSTER host that cannot run the job at all is excluded from it; the fragment and
        // the rest it holds run elsewhere (if no other host can, they fail there as they come).
        let cannot_run = matches!(
            reason,
            FailureReason::UnknownClass(_) | FailureReason::Deserialize(_)
        );
        let reassign = self.jobs.get(&id).is_some_and(|j| j.reassign);
        if reassign && cannot_run && host != self.local && self.another_host_can_run(id, host) {
            self.exclude(id, host, reason);
            self.pump(id);
            self.advance(id);
            return Outcome::Applied;
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Outcome::Stale;
        };
        job.unassign(host, fragment..fragment + 1);
        job.failed.insert(fragment);
        let at = job.failures.partition_point(|f| f.index < fragment);
        job.failures.insert(
            at,
            FragmentFailure {
                index: fragment,
                host,
                reason,
            },
        );
        self.pump(id);
        self.advance(id);
        Outcome::Applied
    }

    /// `host` gave back fragments it had not started (after a cancel, or when asked to).
    pub fn on_not_started(&mut self, id: JobId, host: HostId, ranges: &[Range<usize>]) -> Outcome {
        if !self.hosts.contains_key(&host) {
            return Outcome::Stale;
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Outcome::Stale;
        };
        let mut any = false;
        for r in ranges {
            let taken = job.unassign(host, r.clone());
            any |= !taken.is_empty();
            if job.cancelling {
                job.cancelled.extend_from(&taken);
            } else if job.reassign {
                job.unassigned.extend_from(&taken);
            } else {
                job.cancelled.extend_from(&taken);
            }
        }
        self.pump(id);
        self.advance(id);
        if any {
            Outcome::Applied
        } else {
            Outcome::Stale
        }
    }

    /// Cancels a job: unassigned fragments are cancelled now, hosts holding fragments are told
    /// to drop the unstarted ones. The job finishes once every host has answered.
    pub fn cancel(&mut self, id: JobId) -> Outcome {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Outcome::Stale;
        };
        if job.cancelling {
            return Outcome::Stale;
        }
        job.cancelling = true;
        let rest = std::mem::take(&mut job.unassigned);
        job.cancelled.extend_from(&rest);
        let holders: Vec<HostId> = job
            .assigned
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(h, _)| *h)
            .collect();
        for host in holders {
            self.actions.push_back(Action::Cancel { job: id, host });
        }
        self.advance(id);
        Outcome::Applied
    }

    /// Delivers what order now allows and finishes the job when everything is accounted for.
    fn advance(&mut self, id: JobId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.ordered {
            loop {
                // Stream the cursor fragment's buffered chunks that are next in sequence.
                let cur = job.cursor;
                loop {
                    let next = *job.next_seq.get(&cur).unwrap_or(&0);
                    match job.buffered.remove(&(cur, next)) {
                        Some(payload) if cur < job.count => {
                            job.buffered_weight -= payload.weight();
                            job.next_seq.insert(cur, next + 1);
                            self.actions.push_back(Action::Deliver {
                                job: id,
                                fragment: cur,
                                seq: next,
                                payload,
                            });
                        }
                        _ => break,
                    }
                }
                if cur >= job.count {
                    break;
                }
                let Some(end) = job.terminal_run_end(cur) else {
                    break;
                };
                // Deliver buffered chunks of terminal fragments in [cur, end), in order.
                while let Some((&(f, s), _)) = job.buffered.first_key_value() {
                    if f >= end {
                        break;
                    }
                    let Some(payload) = job.buffered.remove(&(f, s)) else {
                        break;
                    };
                    job.buffered_weight -= payload.weight();
                    let next = job.next_seq.entry(f).or_insert(0);
                    if s == *next {
                        *next += 1;
                        self.actions.push_back(Action::Deliver {
                            job: id,
                            fragment: f,
                            seq: s,
                            payload,
                        });
                    }
                }
                let stale: Vec<usize> = job.next_seq.range(..end).map(|(f, _)| *f).collect();
                for f in stale {
                    job.next_seq.remove(&f);
                }
                job.cursor = end;
            }
        }
        let all_terminal = job.terminal_len() == job.count;
        let delivered = !job.ordered || job.cursor >= job.count;
        let nothing_out = job.assigned.values().all(|s| s.is_empty());
        if !(all_terminal && delivered && nothing_out) {
            return;
        }
        let Some(mut job) = self.jobs.remove(&id) else {
            return;
        };
        // Failures arrive in event order (a failed host's fragments after earlier ones); the
        // report lists them by index.
        job.failures.sort_by_key(|f| f.index);
        for host in &job.replicas {
            self.actions.push_back(Action::Release {
                job: id,
                host: *host,
            });
        }
        let mut report = report_plumbing::new_report(id, job.params.mode, job.count);
        let sets = report_plumbing::sets_mut(&mut report);
        *sets.done = job.done;
        *sets.skipped = job.skipped;
        *sets.failed = job.failed;
        *sets.cancelled = job.cancelled;
        report.failures = job.failures;
        report.per_host = job.per_host.into_iter().collect();
        report.excluded_hosts = job.excluded.into_iter().collect();
        self.actions.push_back(Action::Finished(report));
    }
}

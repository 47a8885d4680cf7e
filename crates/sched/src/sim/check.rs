//! The invariant checker: what the simulated cluster must guarantee, checked as events happen.
//!
//! The checker knows each job's parameters, its fragments' behaviour and what its initiator
//! knew of the cluster when the job was submitted, and it sees every action the initiator's
//! scheduler emits. From that alone (never from the scheduler's internal state) it decides what
//! a correct run may do.

use super::{Behavior, Invariant, Time, Violation};
use crate::cluster::HostInfo;
use fragmenta_job::{
    FailureReason, FragmentSet, HostId, InvalidArgument, JobId, JobParams, JobReport,
    SchedulingMode,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// What the checker is told when a job is submitted.
pub(crate) struct Submission<'a> {
    pub(crate) job: JobId,
    pub(crate) params: &'a JobParams,
    pub(crate) count: usize,
    pub(crate) assignment: Option<&'a [HostId]>,
    /// The hosts the initiator knows (itself included) and their resources.
    pub(crate) view: &'a BTreeMap<HostId, HostInfo>,
    pub(crate) behavior: Behavior,
}

struct JobCheck {
    mode: SchedulingMode,
    count: usize,
    ordered: bool,
    gpu: bool,
    initiator: HostId,
    behavior: Behavior,
    /// For every mode but CLUSTER: the host each fragment must run on (`None`: skipped).
    slots: Option<Vec<Option<HostId>>>,
    /// GPUs of each host the initiator knew at submission.
    gpus_at_submit: BTreeMap<HostId, u32>,
    cancel_requested: bool,
    /// Hosts the initiator declared down while the job ran.
    downs: BTreeSet<HostId>,
    replicas: BTreeSet<HostId>,
    dispatched: BTreeMap<usize, BTreeSet<HostId>>,
    delivered: BTreeSet<(usize, u32)>,
    last_delivered: Option<(usize, u32)>,
    remote_done: BTreeMap<usize, HostId>,
    /// The host each fragment started on first.
    started: BTreeMap<usize, HostId>,
    finished: bool,
    abandoned: bool,
}

impl JobCheck {
    fn slot(&self, fragment: usize) -> Option<Option<HostId>> {
        self.slots
            .as_ref()
            .map(|s| s.get(fragment).copied().flatten())
    }
}

/// The expected answer of `Scheduler::submit` for a job, computed from its parameters and what
/// its initiator knows; `Ok` holds the resolved count and ONCE_PER_HOST's eligible hosts.
fn expected_submit(
    s: &Submission<'_>,
    local: HostId,
) -> Result<(usize, Vec<HostId>), InvalidArgument> {
    s.params.validate()?;
    // A LOCAL job can use only its initiator's GPUs.
    let local_only = s.params.mode == SchedulingMode::Local;
    if s.params.gpu_load > 0.0
        && !s
            .view
            .iter()
            .any(|(h, i)| i.gpus > 0 && (!local_only || *h == local))
    {
        if local_only && s.view.values().any(|i| i.gpus > 0) {
            return Err(InvalidArgument::NoLocalGpu {
                gpu_load: s.params.gpu_load,
                host: local,
            });
        }
        return Err(InvalidArgument::NoGpuHost(s.params.gpu_load));
    }
    let local_sub = s.view.get(&local).map_or(0, |h| h.sub_cluster);
    let eligible: Vec<HostId> = s
        .view
        .iter()
        .filter(|(h, i)| **h != local && i.sub_cluster == local_sub)
        .map(|(h, _)| *h)
        .collect();
    if s.params.mode == SchedulingMode::OncePerHost {
        if s.count > eligible.len() {
            return Err(InvalidArgument::OncePerHostCountExceedsHosts {
                count: s.count,
                eligible: eligible.len(),
            });
        }
        let n = if s.count == 0 {
            eligible.len()
        } else {
            s.count
        };
        return Ok((n, eligible));
    }
    Ok((s.count, eligible))
}

/// Checks the invariants of the scheduling contract (ARCHITECTURE.md, "Scheduling semantics")
/// against everything the simulated initiators do. See the [module docs](super).
pub(crate) struct Checker {
    seed: u64,
    step: u64,
    time: Time,
    jobs: BTreeMap<JobId, JobCheck>,
    violations: Vec<Violation>,
    pub(crate) coverage: Coverage,
}

/// How often the interesting paths were taken, over the finished jobs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Coverage {
    /// CLUSTER fragments dispatched to more than one host (reassigned after a host failure).
    pub(crate) reassigned: u64,
    /// Fragments failed because their host failed (USER_DEFINED, ONCE_PER_HOST, GPU CLUSTER).
    pub(crate) host_failed: u64,
    /// Fragments skipped (USER_DEFINED on unknown hosts).
    pub(crate) skipped: u64,
    /// Fragments cancelled.
    pub(crate) cancelled: u64,
    /// CLUSTER jobs with remote fragments that finished while their initiator knew no other
    /// host.
    pub(crate) finished_alone: u64,
}

impl Checker {
    pub(crate) fn new(seed: u64) -> Self {
        Checker {
            seed,
            step: 0,
            time: 0,
            jobs: BTreeMap::new(),
            violations: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    pub(crate) fn set_clock(&mut self, step: u64, time: Time) {
        self.step = step;
        self.time = time;
    }

    pub(crate) fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub(crate) fn into_violations(self) -> Vec<Violation> {
        self.violations
    }

    pub(crate) fn report(&mut self, invariant: Invariant, job: Option<JobId>, detail: String) {
        self.violations.push(Violation {
            seed: self.seed,
            step: self.step,
            time_us: self.time,
            invariant,
            job,
            detail,
        });
    }

    /// A job was submitted and the scheduler answered `result`.
    pub(crate) fn submitted(&mut self, s: Submission<'_>, result: &Result<usize, InvalidArgument>) {
        let local = s.job.initiator;
        let expected = expected_submit(&s, local);
        match (&expected, result) {
            (Ok((n, _)), Ok(m)) if n == m => {}
            (Err(e), Err(f)) if e == f => {}
            _ => {
                let exp = expected.as_ref().map(|(n, _)| *n);
                self.report(
                    Invariant::Submit,
                    Some(s.job),
                    format!("submit answered {result:?}, expected {exp:?}"),
                );
            }
        }
        let (Ok((count, eligible)), Ok(_)) = (expected, result) else {
            return;
        };
        let slots = match s.params.mode {
            SchedulingMode::Cluster => None,
            SchedulingMode::Local => Some(vec![Some(local); count]),
            SchedulingMode::OncePerHost => {
                Some(eligible.iter().take(count).map(|h| Some(*h)).collect())
            }
            SchedulingMode::UserDefined => {
                let a = s.assignment.unwrap_or_default();
                Some(
                    (0..count)
                        .map(|i| a.get(i).copied().filter(|h| s.view.contains_key(h)))
                        .collect(),
                )
            }
        };
        self.jobs.insert(
            s.job,
            JobCheck {
                mode: s.params.mode,
                count,
                ordered: !s.params.allow_non_sequential_chunks,
                gpu: s.params.gpu_load > 0.0,
                initiator: local,
                behavior: s.behavior,
                slots,
                gpus_at_submit: s.view.iter().map(|(h, i)| (*h, i.gpus)).collect(),
                cancel_requested: false,
                downs: BTreeSet::new(),
                replicas: BTreeSet::new(),
                dispatched: BTreeMap::new(),
                delivered: BTreeSet::new(),
                last_delivered: None,
                remote_done: BTreeMap::new(),
                started: BTreeMap::new(),
                finished: false,
                abandoned: false,
            },
        );
    }

    /// The job's owner asked to cancel it.
    pub(crate) fn cancel_requested(&mut self, job: JobId) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.cancel_requested = true;
        }
    }

    /// `initiator` declared `host` down.
    pub(crate) fn host_down(&mut self, initiator: HostId, host: HostId) {
        for j in self.jobs.values_mut() {
            if j.initiator == initiator && !j.finished && !j.abandoned {
                j.downs.insert(host);
            }
        }
    }

    /// `host` crashed: the jobs it initiated are gone and expect no report.
    pub(crate) fn initiator_lost(&mut self, host: HostId) {
        for j in self.jobs.values_mut() {
            if j.initiator == host && !j.finished {
                j.abandoned = true;
            }
        }
    }

    /// Jobs of live initiators that have not finished.
    pub(crate) fn unfinished(&self) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| !j.finished && !j.abandoned)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Jobs whose report came.
    pub(crate) fn finished_count(&self) -> usize {
        self.jobs.values().filter(|j| j.finished).count()
    }

    /// Jobs whose initiator crashed before their report.
    pub(crate) fn abandoned_count(&self) -> usize {
        self.jobs.values().filter(|j| j.abandoned).count()
    }

    fn active(&mut self, job: JobId, what: &str) -> Option<&mut JobCheck> {
        let finished = match self.jobs.get(&job) {
            None => {
                self.report(
                    Invariant::Protocol,
                    Some(job),
                    format!("{what} for a job never submitted"),
                );
                return None;
            }
            Some(j) => j.finished,
        };
        if finished {
            self.report(
                Invariant::AfterFinish,
                Some(job),
                format!("{what} after the job finished"),
            );
            return None;
        }
        self.jobs.get_mut(&job)
    }

    /// `SendReplica` to `host`.
    pub(crate) fn replica_sent(&mut self, job: JobId, host: HostId) {
        if let Some(j) = self.active(job, "SendReplica") {
            j.replicas.insert(host);
        }
    }

    /// `Dispatch` of `fragments` to `host`; `up` are the hosts the initiator knows now.
    pub(crate) fn dispatched(
        &mut self,
        job: JobId,
        host: HostId,
        fragments: &[Range<usize>],
        up: &BTreeMap<HostId, HostInfo>,
    ) {
        let mut problems = Vec::new();
        {
            let Some(j) = self.active(job, "Dispatch") else {
                return;
            };
            if host != j.initiator && !j.replicas.contains(&host) {
                problems.push((
                    Invariant::Protocol,
                    format!("dispatch to {host} before its replica"),
                ));
            }
            match up.get(&host) {
                None => problems.push((
                    Invariant::Placement,
                    format!("dispatch to {host}, which the initiator does not know"),
                )),
                Some(info) if j.gpu && info.gpus == 0 => problems.push((
                    Invariant::Placement,
                    format!("GPU job dispatched to {host}, which has no GPU"),
                )),
                Some(_) => {}
            }
            let mut prev_end = 0;
            for r in fragments {
                if r.start >= r.end || r.start < prev_end || r.end > j.count {
                    problems.push((
                        Invariant::Protocol,
                        format!("bad dispatch ranges {fragments:?} (count {})", j.count),
                    ));
                    break;
                }
                prev_end = r.end;
                for f in r.clone() {
                    let again = j.dispatched.get(&f).is_some_and(|s| !s.is_empty());
                    match j.slot(f) {
                        Some(Some(slot)) if slot != host => problems.push((
                            Invariant::Placement,
                            format!("fragment {f} dispatched to {host}, its host is {slot}"),
                        )),
                        Some(None) => problems.push((
                            Invariant::Placement,
                            format!("fragment {f} on an unknown host dispatched to {host}"),
                        )),
                        Some(Some(_)) if again => problems.push((
                            Invariant::Placement,
                            format!("fragment {f} dispatched twice in a mode that never moves it"),
                        )),
                        _ => {}
                    }
                    j.dispatched.entry(f).or_default().insert(host);
                }
            }
        }
        for (inv, detail) in problems {
            self.report(inv, Some(job), detail);
        }
    }

    /// `host` started running `fragment`. A fragment runs once: it starts again (on another
    /// host) only after the initiator declared the first host down, or on a host declared down
    /// that does not know it yet. Work stealing must move only fragments that did not start.
    pub(crate) fn started(&mut self, job: JobId, fragment: usize, host: HostId) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.finished || j.abandoned {
            return;
        }
        match j.started.get(&fragment).copied() {
            None => {
                j.started.insert(fragment, host);
            }
            Some(first) if j.downs.contains(&first) => {
                j.started.insert(fragment, host);
            }
            // A host the initiator declared down while it was alive (a partition) may still
            // start what it held: nothing it reports is accepted any more.
            Some(_) if j.downs.contains(&host) => {}
            Some(first) => self.report(
                Invariant::ExactlyOnce,
                Some(job),
                format!("fragment {fragment} started on {host}, after it started on {first}, which is up"),
            ),
        }
    }

    /// A remote fragment's `Done` was applied by the scheduler.
    pub(crate) fn remote_done(&mut self, job: JobId, fragment: usize, host: HostId) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.remote_done.insert(fragment, host);
        }
    }

    /// `Deliver` of chunk `seq` of `fragment` with payload `data`.
    pub(crate) fn delivered(&mut self, job: JobId, fragment: usize, seq: u32, data: u64) {
        let mut problems = Vec::new();
        {
            let Some(j) = self.active(job, "Deliver") else {
                return;
            };
            if fragment >= j.count || seq >= j.behavior.chunks(fragment) {
                problems.push((
                    Invariant::ExactlyOnce,
                    format!(
                        "delivered chunk ({fragment}, {seq}) that no fragment produces (count {}, chunks {})",
                        j.count,
                        if fragment < j.count { j.behavior.chunks(fragment) } else { 0 }
                    ),
                ));
            } else if data != j.behavior.data(fragment, seq) {
                problems.push((
                    Invariant::ExactlyOnce,
                    format!("chunk ({fragment}, {seq}) delivered with a wrong payload"),
                ));
            }
            if !j.delivered.insert((fragment, seq)) {
                problems.push((
                    Invariant::ExactlyOnce,
                    format!("chunk ({fragment}, {seq}) delivered twice"),
                ));
            }
            if j.ordered {
                if let Some(last) = j.last_delivered {
                    if (fragment, seq) <= last {
                        problems.push((
                            Invariant::Order,
                            format!(
                                "chunk ({fragment}, {seq}) delivered after ({}, {})",
                                last.0, last.1
                            ),
                        ));
                    }
                }
                if seq > 0 && !j.delivered.contains(&(fragment, seq - 1)) {
                    problems.push((
                        Invariant::Order,
                        format!(
                            "chunk ({fragment}, {seq}) delivered before chunk {}",
                            seq - 1
                        ),
                    ));
                }
                j.last_delivered = Some((fragment, seq));
            }
        }
        for (inv, detail) in problems {
            self.report(inv, Some(job), detail);
        }
    }

    /// `Finished` with `report`; `alone`: the initiator knows no other host now.
    pub(crate) fn finished(&mut self, report: &JobReport, alone: bool) {
        let job = report.job;
        let mut c = Coverage::default();
        let problems = match self.active(job, "Finished") {
            None => return,
            Some(j) => {
                j.finished = true;
                if j.mode == SchedulingMode::Cluster {
                    c.reassigned = j.dispatched.values().filter(|h| h.len() > 1).count() as u64;
                    let remote = j.dispatched.values().flatten().any(|h| *h != j.initiator);
                    c.finished_alone = u64::from(alone && remote);
                }
                c.host_failed = report
                    .failures
                    .iter()
                    .filter(|f| matches!(f.reason, FailureReason::HostFailed(_)))
                    .count() as u64;
                c.skipped = report.skipped().len() as u64;
                c.cancelled = report.cancelled().len() as u64;
                check_report(j, report)
            }
        };
        let t = &mut self.coverage;
        t.reassigned += c.reassigned;
        t.host_failed += c.host_failed;
        t.skipped += c.skipped;
        t.cancelled += c.cancelled;
        t.finished_alone += c.finished_alone;
        for (inv, detail) in problems {
            self.report(inv, Some(job), detail);
        }
    }
}

/// Everything a report must satisfy; see the module docs.
fn check_report(j: &JobCheck, r: &JobReport) -> Vec<(Invariant, String)> {
    let mut p: Vec<(Invariant, String)> = Vec::new();
    let mut bad = |inv: Invariant, s: String| p.push((inv, s));
    if r.count != j.count || r.mode != j.mode {
        bad(
            Invariant::Report,
            format!(
                "report says {:?} × {}, job is {:?} × {}",
                r.mode, r.count, j.mode, j.count
            ),
        );
    }
    // The four sets partition 0..count.
    let sets: [(&str, &FragmentSet); 4] = [
        ("done", r.done()),
        ("skipped", r.skipped()),
        ("failed", r.failed()),
        ("cancelled", r.cancelled()),
    ];
    let total: usize = sets.iter().map(|(_, s)| s.len()).sum();
    let mut union = FragmentSet::new();
    for (name, s) in &sets {
        if s.ranges().any(|r| r.end > j.count) {
            bad(
                Invariant::Report,
                format!("{name} holds indices past the count {}", j.count),
            );
        }
        union.extend_from(s);
    }
    if total != j.count || union.len() != j.count {
        bad(
            Invariant::Report,
            format!(
                "done {} + skipped {} + failed {} + cancelled {} do not partition 0..{}",
                r.done().len(),
                r.skipped().len(),
                r.failed().len(),
                r.cancelled().len(),
                j.count
            ),
        );
    }
    if !r.cancelled().is_empty() && !j.cancel_requested {
        bad(
            Invariant::Report,
            format!(
                "fragments {:?} cancelled, but nobody cancelled the job",
                r.cancelled().to_ranges()
            ),
        );
    }
    // Skipped: exactly the USER_DEFINED fragments whose host the initiator did not know.
    let expected_skipped: FragmentSet = match &j.slots {
        Some(slots) if j.mode == SchedulingMode::UserDefined => {
            let mut s = FragmentSet::new();
            for (i, h) in slots.iter().enumerate() {
                if h.is_none() {
                    s.insert(i);
                }
            }
            s
        }
        _ => FragmentSet::new(),
    };
    if *r.skipped() != expected_skipped {
        bad(
            Invariant::Report,
            format!(
                "skipped {:?}, expected {:?}",
                r.skipped().to_ranges(),
                expected_skipped.to_ranges()
            ),
        );
    }
    // Failures: one per failed fragment, ascending, each with a reason this run can explain.
    let indices: Vec<usize> = r.failures.iter().map(|f| f.index).collect();
    if indices.windows(2).any(|w| w[0] >= w[1]) {
        bad(
            Invariant::Report,
            format!("failures are not one per fragment in ascending order: {indices:?}"),
        );
    }
    let listed: BTreeSet<usize> = indices.iter().copied().collect();
    let failed: BTreeSet<usize> = r.failed().iter().collect();
    if listed != failed {
        bad(
            Invariant::Report,
            format!(
                "failures list {:?} but the failed set is {:?}",
                listed,
                r.failed().to_ranges()
            ),
        );
    }
    let b = &j.behavior;
    for f in &r.failures {
        let i = f.index;
        if i >= j.count {
            continue;
        }
        let ran_there = j.dispatched.get(&i).is_some_and(|s| s.contains(&f.host));
        let ok = match &f.reason {
            FailureReason::Panicked(_) => b.panics(i).is_some() && ran_there,
            FailureReason::UnknownClass(_) => !b.knows_class(f.host) && ran_there,
            FailureReason::HostFailed(h) if j.mode == SchedulingMode::Cluster => {
                // CLUSTER moves fragments, except a GPU job's when its last GPU host is gone:
                // then the rest fails, naming that host.
                *h == f.host
                    && j.gpu
                    && j.downs.contains(h)
                    && j.gpus_at_submit.get(h).is_none_or(|g| *g > 0)
            }
            FailureReason::HostFailed(h) => *h == f.host && j.downs.contains(h) && ran_there,
            FailureReason::Returned(_) => false,
            FailureReason::ReceivePanicked(_) => false,
            FailureReason::NoGpu(h) => {
                // Only a USER_DEFINED GPU fragment put on a host without a GPU.
                *h == f.host
                    && j.mode == SchedulingMode::UserDefined
                    && j.gpu
                    && j.slot(i) == Some(Some(f.host))
                    && j.gpus_at_submit.get(&f.host) == Some(&0)
            }
            FailureReason::Deserialize(_)
            | FailureReason::CannotRun(_)
            | FailureReason::RdmaTooLarge { .. }
            | FailureReason::InitiatorGone => false,
        };
        let on_its_host = match j.slot(i) {
            Some(Some(slot)) => slot == f.host,
            Some(None) => false,
            None => true,
        };
        if !ok || !on_its_host {
            bad(
                Invariant::Report,
                format!(
                    "fragment {i} failed on {} with {:?}, which this run cannot explain",
                    f.host, f.reason
                ),
            );
        }
    }
    // Done: a panicking fragment never is; a remote one has every chunk delivered; the
    // per-host counts add up.
    let mut per_host: BTreeMap<HostId, usize> = BTreeMap::new();
    for i in r.done().iter().filter(|i| *i < j.count) {
        if b.panics(i).is_some() {
            bad(
                Invariant::Report,
                format!("fragment {i} reported done, but it always panics"),
            );
        }
        let host = match (j.slot(i), j.remote_done.get(&i)) {
            (_, Some(h)) => *h,
            (Some(Some(slot)), None) => slot,
            _ => j.initiator,
        };
        if host != j.initiator && !b.knows_class(host) {
            bad(
                Invariant::Report,
                format!("fragment {i} done on {host}, which cannot run the job"),
            );
        }
        *per_host.entry(host).or_insert(0) += 1;
        // Done remote style (on a remote host, or re-run on the initiator after a failed host
        // had delivered some of its chunks): every chunk, once. Done plain on the initiator
        // (`execute_fragment`, no chunks): none.
        let chunks = b.chunks(i);
        let got = j.delivered.range((i, 0)..(i + 1, 0)).count() as u32;
        let want = if j.remote_done.contains_key(&i) {
            chunks
        } else {
            0
        };
        if got != want {
            bad(
                Invariant::ExactlyOnce,
                format!(
                    "fragment {i} done on {host} with {got} of its {chunks} chunks delivered, expected {want}"
                ),
            );
        }
    }
    let reported: BTreeMap<HostId, usize> = r
        .per_host
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(h, n)| (*h, *n))
        .collect();
    if reported != per_host {
        bad(
            Invariant::Report,
            format!("per_host {reported:?}, expected {per_host:?}"),
        );
    }
    if j.mode == SchedulingMode::OncePerHost && reported.values().any(|n| *n > 1) {
        bad(
            Invariant::Placement,
            format!("ONCE_PER_HOST ran more than one fragment on a host: {reported:?}"),
        );
    }
    p
}

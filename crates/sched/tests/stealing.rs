//! Work stealing across hosts, driven on the protocol state machine: the initiator takes back
//! fragments queued unstarted on a slow host once it ran dry, only after that host's answer,
//! and a host answers with only what it had not started. Answers that name fragments not asked
//! for break the protocol; an answer racing with its host's failure is ignored.

use fragmenta_job::{FragmentSet, HostId, JobId, JobParams, JobReport, SchedulingMode};
use fragmenta_sched::protocol::{Action, Down, Limits, Message, Protocol, ResultEvent};
use fragmenta_sched::{HostInfo, JobSpec, WorkKey};
use std::ops::Range;
use std::time::Duration;

const ME: HostId = HostId(0);
const PEER: HostId = HostId(1);
const T0: Duration = Duration::ZERO;

type P = Protocol<Vec<u8>, &'static str>;
type A = Action<Vec<u8>, &'static str>;

fn info() -> HostInfo {
    HostInfo {
        sub_cluster: 0,
        cores: 2.0,
        gpus: 0,
    }
}

fn params() -> JobParams {
    JobParams {
        mode: SchedulingMode::Cluster,
        cpu_load: 1.0,
        gpu_load: 0.0,
        priority: 0,
        thread_limit: 0,
        allow_non_sequential_chunks: true,
    }
}

fn drain(p: &mut P) -> Vec<A> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

fn wire(ranges: &[Range<usize>]) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .map(|r| (r.start as u64, r.end as u64))
        .collect()
}

fn set(ranges: &[Range<usize>]) -> FragmentSet {
    let mut s = FragmentSet::new();
    for r in ranges {
        s.insert_range(r.clone());
    }
    s
}

const JOB: JobId = JobId {
    initiator: ME,
    seq: 1,
};

/// The initiator `ME` and one slow peer: every fragment queued on `ME` runs at once, the peer
/// runs nothing until told.
struct Initiator {
    p: P,
    /// Fragments each dispatch gave the peer, in order.
    to_peer: FragmentSet,
    /// Fragments run on `ME`.
    ran_here: FragmentSet,
    /// Reclaim requests sent to the peer.
    reclaims: Vec<Vec<Range<usize>>>,
    report: Option<JobReport>,
    downs: Vec<Down>,
}

impl Initiator {
    fn new(stealing: bool, count: usize) -> Self {
        let mut p = P::new(ME, info(), Limits::default(), T0);
        p.set_work_stealing(stealing);
        p.link_up(PEER, info(), T0);
        drain(&mut p);
        let spec = JobSpec {
            params: params(),
            count,
            assignment: None,
        };
        assert_eq!(p.submit(JOB, spec), Ok(count));
        let mut me = Initiator {
            p,
            to_peer: FragmentSet::new(),
            ran_here: FragmentSet::new(),
            reclaims: Vec::new(),
            report: None,
            downs: Vec::new(),
        };
        me.settle();
        me
    }

    /// Carries out actions until there are none: local work runs and finishes at once.
    fn settle(&mut self) {
        loop {
            let actions = drain(&mut self.p);
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::SubmitWork { fragments, .. } | Action::AddWork { fragments, .. } => {
                        for r in &fragments {
                            assert_eq!(
                                self.ran_here.intersect_range(r.clone()).len(),
                                0,
                                "fragments {r:?} run twice here"
                            );
                            self.ran_here.insert_range(r.clone());
                        }
                        let _ = self.p.local_block_done(JOB, &fragments, Vec::new(), &[]);
                    }
                    Action::ReclaimWork { key, .. } => {
                        // Everything queued here already ran.
                        self.p.work_reclaimed(key, Vec::new());
                    }
                    Action::SendDispatch {
                        host, fragments, ..
                    } => {
                        assert_eq!(host, PEER);
                        for r in &fragments {
                            self.to_peer.insert_range(r.clone());
                        }
                    }
                    Action::SendReclaim {
                        host, fragments, ..
                    } => {
                        assert_eq!(host, PEER);
                        self.reclaims.push(fragments);
                    }
                    Action::Finished(r) => self.report = Some(r),
                    Action::HostDown { why, .. } => self.downs.push(why),
                    _ => {}
                }
            }
        }
    }

    fn peer_results(&mut self, events: Vec<ResultEvent<Vec<u8>>>) {
        let _ = self.p.on_results(PEER, JOB, events, T0);
        self.settle();
    }

    fn peer_answers(&mut self, fragments: &[Range<usize>]) {
        self.p.on_message(
            PEER,
            Message::Reclaimed {
                job: JOB,
                fragments: wire(fragments),
            },
            T0,
        );
        self.settle();
    }
}

fn done(fragment: usize) -> ResultEvent<Vec<u8>> {
    ResultEvent::Done {
        fragment: fragment as u64,
        chunks: 0,
    }
}

#[test]
fn a_slow_hosts_unstarted_fragments_are_taken_back_after_its_answer_and_run_once() {
    let mut i = Initiator::new(true, 40);
    // The initiator ran everything else; the peer holds its first window, untouched.
    let held = i.to_peer.clone();
    assert_eq!(held.len(), 4, "the peer's first window: twice its 2 slots");
    assert_eq!(i.ran_here.len() + held.len(), 40);
    assert!(i.report.is_none());
    // It ran dry: the slow peer (no fragment done against 36 here) is asked for all it holds.
    assert_eq!(i.reclaims, vec![held.to_ranges()]);
    // Nothing moves before the answer: asked-for fragments stay the peer's.
    assert_eq!(i.ran_here.len(), 36);
    // The peer started its first two; one of them finishes before its answer is read.
    let started: Vec<usize> = held.iter().take(2).collect();
    let given: Vec<usize> = held.iter().skip(2).collect();
    i.peer_results(vec![done(started[0])]);
    let given_ranges: Vec<Range<usize>> = given.iter().map(|f| *f..*f + 1).collect();
    i.peer_answers(&given_ranges);
    assert!(i.downs.is_empty(), "a valid answer: {:?}", i.downs);
    // What it gave back ran here, once; what it started is still the peer's.
    for f in &given {
        assert!(
            i.ran_here.contains(*f),
            "fragment {f} given back did not run"
        );
    }
    for f in &started {
        assert!(
            !i.ran_here.contains(*f),
            "fragment {f} started on the peer ran here too"
        );
    }
    assert!(
        i.report.is_none(),
        "fragment {} is still running",
        started[1]
    );
    i.peer_results(vec![done(started[1])]);
    let report = i.report.take().expect("the job finished");
    assert_eq!(report.done().len(), 40);
    assert!(report.failed().is_empty() && report.cancelled().is_empty());
    let mut per_host = report.per_host.clone();
    per_host.sort();
    assert_eq!(per_host, vec![(ME, 38), (PEER, 2)]);
    assert_eq!(i.p.reclaims(), 1);
}

#[test]
fn with_stealing_off_the_slow_hosts_fragments_wait_for_it() {
    let mut i = Initiator::new(false, 40);
    assert!(i.reclaims.is_empty());
    assert_eq!(i.to_peer.len(), 4);
    let held: Vec<usize> = i.to_peer.iter().collect();
    i.peer_results(held.iter().map(|f| done(*f)).collect());
    let report = i.report.take().expect("the job finished");
    let mut per_host = report.per_host.clone();
    per_host.sort();
    assert_eq!(per_host, vec![(ME, 36), (PEER, 4)]);
    assert_eq!(i.p.reclaims(), 0);
}

#[test]
fn an_answer_naming_fragments_not_asked_for_is_a_violation() {
    // A fragment it never held.
    let mut i = Initiator::new(true, 40);
    let outside = i.ran_here.first().expect("ran here");
    i.peer_answers(&[outside..outside + 1]);
    assert!(
        matches!(i.downs.as_slice(), [Down::Violation(_)]),
        "{:?}",
        i.downs
    );
    // The fragments it held went back to the pool, ran here, and the job finished.
    let report = i.report.take().expect("the job finished without the peer");
    assert_eq!(report.done().len(), 40);

    // A fragment it reported done before its answer: it started, it cannot be given back.
    let mut i = Initiator::new(true, 40);
    let first = i.to_peer.first().expect("the peer holds fragments");
    i.peer_results(vec![done(first)]);
    i.peer_answers(&[first..first + 1]);
    assert!(
        matches!(i.downs.as_slice(), [Down::Violation(_)]),
        "{:?}",
        i.downs
    );

    // An answer to a request never made.
    let mut i = Initiator::new(false, 40);
    let first = i.to_peer.first().expect("the peer holds fragments");
    i.peer_answers(&[first..first + 1]);
    assert!(
        matches!(i.downs.as_slice(), [Down::Violation(_)]),
        "{:?}",
        i.downs
    );
}

#[test]
fn an_answer_racing_with_the_hosts_failure_is_ignored_and_nothing_runs_twice() {
    let mut i = Initiator::new(true, 40);
    let held = i.to_peer.clone();
    assert_eq!(i.reclaims.len(), 1);
    // The peer fails before its answer arrives: everything it held is reassigned (started
    // fragments too: their results will never come).
    i.p.link_down(PEER, "reset");
    i.settle();
    for f in held.iter() {
        assert!(
            i.ran_here.contains(f),
            "fragment {f} of the failed host did not run"
        );
    }
    let report = i.report.take().expect("the job finished");
    assert_eq!(report.done().len(), 40);
    // Its answer, late, changes nothing and is no violation (the peer is gone).
    let before = i.ran_here.clone();
    i.peer_answers(&held.to_ranges());
    assert_eq!(i.ran_here, before);
    assert!(i.downs.iter().all(|d| matches!(d, Down::Closed(_))));
}

/// The host side: a peer's replica, loaded, with fragments queued.
fn replica_host(count: u64) -> (P, JobId, WorkKey) {
    let mut p = P::new(ME, info(), Limits::default(), T0);
    p.link_up(PEER, info(), T0);
    drain(&mut p);
    let job = JobId {
        initiator: PEER,
        seq: 7,
    };
    p.on_message(
        PEER,
        Message::Replica {
            job,
            params: params(),
            count,
            body: "bytes",
        },
        T0,
    );
    p.on_message(
        PEER,
        Message::Dispatch {
            job,
            fragments: vec![(0, 4)],
        },
        T0,
    );
    drain(&mut p);
    p.replica_loaded(job, Ok(()));
    let key = drain(&mut p)
        .into_iter()
        .find_map(|a| match a {
            Action::SubmitWork { key, .. } => Some(key),
            _ => None,
        })
        .expect("work submitted");
    (p, job, key)
}

#[test]
fn a_host_gives_back_only_what_is_still_queued() {
    let (mut p, job, key) = replica_host(10);
    p.on_message(
        PEER,
        Message::Reclaim {
            job,
            fragments: vec![(0, 4)],
        },
        T0,
    );
    assert_eq!(
        drain(&mut p),
        vec![Action::ReclaimWork {
            key,
            fragments: vec![0..4]
        }]
    );
    // 0 and 1 started; the pool took 2..4 out of its queue.
    p.work_reclaimed(key, vec![2..4]);
    assert_eq!(
        drain(&mut p),
        vec![Action::SendReclaimed {
            job,
            host: PEER,
            fragments: vec![2..4]
        }]
    );
    // Out of range or not in order: a violation.
    p.on_message(
        PEER,
        Message::Reclaim {
            job,
            fragments: vec![(8, 11)],
        },
        T0,
    );
    assert!(drain(&mut p).iter().any(|a| matches!(
        a,
        Action::HostDown {
            why: Down::Violation(_),
            ..
        }
    )));
}

#[test]
fn a_host_still_loading_the_replica_gives_back_at_once_and_queues_the_rest() {
    let mut p = P::new(ME, info(), Limits::default(), T0);
    p.link_up(PEER, info(), T0);
    drain(&mut p);
    let job = JobId {
        initiator: PEER,
        seq: 8,
    };
    p.on_message(
        PEER,
        Message::Replica {
            job,
            params: params(),
            count: 10,
            body: "bytes",
        },
        T0,
    );
    p.on_message(
        PEER,
        Message::Dispatch {
            job,
            fragments: vec![(0, 6)],
        },
        T0,
    );
    drain(&mut p);
    p.on_message(
        PEER,
        Message::Reclaim {
            job,
            fragments: vec![(2, 4), (5, 9)],
        },
        T0,
    );
    assert_eq!(
        drain(&mut p),
        vec![Action::SendReclaimed {
            job,
            host: PEER,
            fragments: vec![2..4, 5..6]
        }]
    );
    p.replica_loaded(job, Ok(()));
    let queued: Vec<Range<usize>> = drain(&mut p)
        .into_iter()
        .find_map(|a| match a {
            Action::SubmitWork { fragments, .. } => Some(fragments),
            _ => None,
        })
        .expect("work submitted");
    assert_eq!(set(&queued), set(&[0..2, 4..5]));
    // A reclaim for a job it does not hold is answered with nothing.
    let gone = JobId {
        initiator: PEER,
        seq: 99,
    };
    p.on_message(
        PEER,
        Message::Reclaim {
            job: gone,
            fragments: vec![(0, 1)],
        },
        T0,
    );
    assert_eq!(
        drain(&mut p),
        vec![Action::SendReclaimed {
            job: gone,
            host: PEER,
            fragments: vec![]
        }]
    );
    // A reclaim of a job this peer did not initiate is a violation.
    let foreign = JobId {
        initiator: HostId(5),
        seq: 1,
    };
    p.on_message(
        PEER,
        Message::Reclaim {
            job: foreign,
            fragments: vec![],
        },
        T0,
    );
    assert!(drain(&mut p).iter().any(|a| matches!(
        a,
        Action::HostDown {
            why: Down::Violation(_),
            ..
        }
    )));
}

/// A host still loading a replica gives back everything asked for except the lowest fragment
/// it holds: if the replica then cannot load, that fragment is answered failed with the reason,
/// so the initiator still learns that this host cannot run the job (and excludes it).
#[test]
fn a_loading_host_asked_for_everything_keeps_one_fragment_to_report_its_load() {
    let mut p = P::new(ME, info(), Limits::default(), T0);
    p.link_up(PEER, info(), T0);
    drain(&mut p);
    let job = JobId {
        initiator: PEER,
        seq: 9,
    };
    p.on_message(
        PEER,
        Message::Replica {
            job,
            params: params(),
            count: 10,
            body: "bytes",
        },
        T0,
    );
    p.on_message(
        PEER,
        Message::Dispatch {
            job,
            fragments: vec![(3, 7)],
        },
        T0,
    );
    drain(&mut p);
    p.on_message(
        PEER,
        Message::Reclaim {
            job,
            fragments: vec![(3, 7)],
        },
        T0,
    );
    assert_eq!(
        drain(&mut p),
        vec![Action::SendReclaimed {
            job,
            host: PEER,
            fragments: vec![4..7]
        }]
    );
    let reason = fragmenta_job::FailureReason::UnknownClass(fragmenta_job::ClassId::from_name("x"));
    p.replica_loaded(job, Err(reason.clone()));
    let failed: Vec<(usize, fragmenta_job::FailureReason)> = drain(&mut p)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendAnswer {
                answer: fragmenta_sched::protocol::Answer::Failed { fragment, reason },
                ..
            } => Some((fragment, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![(3, reason)]);
}

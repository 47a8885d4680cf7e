//! Drives the per-host protocol state machine directly: what a peer may announce, the replica
//! life cycle, result-stream reassembly bounds, backpressure on the initiator and liveness.

use fragmenta_job::{FailureReason, HostId, JobId, JobParams, SchedulingMode};
use fragmenta_sched::protocol::{
    Action, Answer, Down, Limits, Message, Protocol, ResultEvent, ResultStream, StreamViolation,
};
use fragmenta_sched::{HostInfo, JobSpec};
use std::time::Duration;

const ME: HostId = HostId(0);
const PEER: HostId = HostId(1);
const T0: Duration = Duration::ZERO;

fn info() -> HostInfo {
    HostInfo {
        sub_cluster: 0,
        cores: 2.0,
        gpus: 0,
    }
}

fn params(mode: SchedulingMode, ordered: bool) -> JobParams {
    JobParams {
        mode,
        cpu_load: 1.0,
        gpu_load: 0.0,
        priority: 0,
        thread_limit: 0,
        allow_non_sequential_chunks: !ordered,
    }
}

fn proto(limits: Limits) -> Protocol<Vec<u8>, &'static str> {
    let mut p = Protocol::new(ME, info(), limits, T0);
    p.link_up(PEER, info(), T0);
    drain(&mut p);
    p
}

fn drain(p: &mut Protocol<Vec<u8>, &'static str>) -> Vec<Action<Vec<u8>, &'static str>> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

fn theirs(seq: u64) -> JobId {
    JobId {
        initiator: PEER,
        seq,
    }
}

fn down_reason(actions: &[Action<Vec<u8>, &'static str>]) -> Option<Down> {
    actions.iter().find_map(|a| match a {
        Action::HostDown { host, why } if *host == PEER => Some(why.clone()),
        _ => None,
    })
}

fn replica(p: &mut Protocol<Vec<u8>, &'static str>, job: JobId, count: u64) {
    p.on_message(
        PEER,
        Message::Replica {
            job,
            params: params(SchedulingMode::Cluster, false),
            count,
            body: "bytes",
        },
        T0,
    );
}

#[test]
fn a_replica_loads_then_runs_dispatches_that_waited_for_it() {
    let mut p = proto(Limits::default());
    let job = theirs(1);
    replica(&mut p, job, 10);
    let a = drain(&mut p);
    assert!(matches!(a.as_slice(), [Action::LoadReplica { job: j, body: "bytes" }] if *j == job));
    p.on_message(
        PEER,
        Message::Dispatch {
            job,
            fragments: vec![(0, 4)],
        },
        T0,
    );
    assert!(
        drain(&mut p).is_empty(),
        "the dispatch waits for the replica"
    );
    p.replica_loaded(job, Ok(()));
    let a = drain(&mut p);
    let key = match a.as_slice() {
        [Action::SubmitWork {
            key,
            job: j,
            fragments,
            ..
        }] if *j == job && fragments == &vec![0..4] => *key,
        other => panic!("expected the waiting fragments queued, got {other:?}"),
    };
    p.on_message(
        PEER,
        Message::Dispatch {
            job,
            fragments: vec![(4, 6)],
        },
        T0,
    );
    assert_eq!(
        drain(&mut p),
        vec![Action::AddWork {
            key,
            fragments: vec![4..6]
        }]
    );
    // Cancel drains what has not started; the answer names it.
    p.on_message(PEER, Message::Cancel { job }, T0);
    assert_eq!(
        drain(&mut p),
        vec![Action::CancelReplica { job }, Action::DrainWork { key }]
    );
    p.work_drained(key, vec![5..6]);
    assert_eq!(
        drain(&mut p),
        vec![Action::SendAnswer {
            job,
            answer: Answer::NotStarted { ranges: vec![5..6] }
        }]
    );
    p.on_message(PEER, Message::Release { job }, T0);
    assert_eq!(
        drain(&mut p),
        vec![Action::RemoveWork { key }, Action::DropReplica { job }]
    );
    assert_eq!(p.replicas(), 0);
    assert_eq!(p.works(), 0);
}

#[test]
fn a_replica_that_cannot_load_fails_every_fragment_dispatched_to_it() {
    let mut p = proto(Limits::default());
    let job = theirs(1);
    replica(&mut p, job, 3);
    p.on_message(
        PEER,
        Message::Dispatch {
            job,
            fragments: vec![(0, 2)],
        },
        T0,
    );
    drain(&mut p);
    let reason = FailureReason::Deserialize("bad bytes".into());
    p.replica_loaded(job, Err(reason.clone()));
    let failed: Vec<usize> = drain(&mut p)
        .into_iter()
        .map(|a| match a {
            Action::SendAnswer {
                answer:
                    Answer::Failed {
                        fragment,
                        reason: r,
                    },
                ..
            } if r == reason => fragment,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(failed, vec![0, 1]);
}

#[test]
fn what_a_peer_announces_is_bounded_and_a_violation_declares_it_down() {
    let limits = Limits {
        max_fragments: 1000,
        ..Limits::default()
    };
    // A replica with more fragments than the limit.
    let mut p = proto(limits.clone());
    replica(&mut p, theirs(1), 1001);
    let why = down_reason(&drain(&mut p));
    assert!(
        matches!(&why, Some(Down::Violation(d)) if d.contains("1001 fragments")),
        "{why:?}"
    );
    assert_eq!(p.replicas(), 0);
    assert_eq!(p.peers().count(), 0, "nothing more is accepted from it");
    // A NaN CPU load.
    let mut p = proto(limits.clone());
    let mut bad = params(SchedulingMode::Cluster, false);
    bad.cpu_load = f32::NAN;
    p.on_message(
        PEER,
        Message::Replica {
            job: theirs(1),
            params: bad,
            count: 4,
            body: "",
        },
        T0,
    );
    assert!(matches!(
        down_reason(&drain(&mut p)),
        Some(Down::Violation(_))
    ));
    // A dispatch beyond the job's count, or empty, or of another initiator's job.
    for fragments in [vec![(0, u64::MAX)], vec![(3, 3)], vec![(0, 5), (5, 11)]] {
        let mut p = proto(limits.clone());
        replica(&mut p, theirs(1), 10);
        drain(&mut p);
        p.on_message(
            PEER,
            Message::Dispatch {
                job: theirs(1),
                fragments: fragments.clone(),
            },
            T0,
        );
        let a = drain(&mut p);
        assert!(
            matches!(down_reason(&a), Some(Down::Violation(_))),
            "{fragments:?}: {a:?}"
        );
        assert!(
            !a.iter()
                .any(|x| matches!(x, Action::AddWork { .. } | Action::SubmitWork { .. })),
            "nothing of a refused dispatch is queued"
        );
    }
    let mut p = proto(limits);
    let other = JobId {
        initiator: HostId(7),
        seq: 1,
    };
    replica(&mut p, other, 10);
    assert!(matches!(
        down_reason(&drain(&mut p)),
        Some(Down::Violation(_))
    ));
}

#[test]
fn chunk_reassembly_is_bounded() {
    let limits = Limits {
        max_chunk_bytes: 10,
        ..Limits::default()
    };
    let mut s = ResultStream::new(&limits);
    assert_eq!(s.part(0, 0, vec![1; 4], false), Ok(None));
    assert_eq!(s.part(0, 0, vec![2; 4], false), Ok(None));
    assert_eq!(
        s.check_part(0, 0, 3),
        Err(StreamViolation::ChunkTooLarge {
            fragment: 0,
            seq: 0,
            limit: 10
        })
    );
    assert_eq!(
        s.part(1, 0, vec![0; 1], true),
        Err(StreamViolation::Interleaved {
            open: (0, 0),
            got: (1, 0)
        })
    );
    assert_eq!(
        s.finish(),
        Err(StreamViolation::Unfinished { open: (0, 0) })
    );
    assert_eq!(
        s.part(0, 0, vec![3; 2], true),
        Ok(Some(vec![1, 1, 1, 1, 2, 2, 2, 2, 3, 3]))
    );
    assert!(s.finish().is_ok());
}

/// Submits an ordered CLUSTER job of `count` fragments and returns where its fragments went.
/// Where a job's fragments went: each host with its ranges.
type Placement = Vec<(HostId, Vec<std::ops::Range<usize>>)>;

fn ordered_job(p: &mut Protocol<Vec<u8>, &'static str>, count: usize) -> (JobId, Placement) {
    let job = JobId {
        initiator: ME,
        seq: 1,
    };
    let spec = JobSpec {
        params: params(SchedulingMode::Cluster, true),
        count,
        assignment: None,
    };
    assert_eq!(p.submit(job, spec), Ok(count));
    let placed = drain(p)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendDispatch {
                host, fragments, ..
            } => Some((host, fragments)),
            Action::SubmitWork { fragments, .. } => Some((ME, fragments)),
            _ => None,
        })
        .collect();
    (job, placed)
}

#[test]
fn the_initiator_pauses_streams_above_its_bound_but_never_the_one_delivery_waits_for() {
    let limits = Limits {
        max_held_bytes: 100,
        ..Limits::default()
    };
    let mut p = proto(limits);
    let third = HostId(2);
    p.link_up(third, info(), T0);
    drain(&mut p);
    let (job, placed) = ordered_job(&mut p, 60);
    let first_of = |h: HostId| {
        placed
            .iter()
            .find(|(x, _)| *x == h)
            .map(|(_, r)| r[0].start)
            .expect("every host got fragments")
    };
    // Fragment 0 runs on the initiator (slow); the peers' later fragments stream chunks that
    // must wait for it.
    assert_eq!(first_of(ME), 0);
    let f1 = first_of(PEER);
    let chunk = |fragment: usize, bytes: usize| ResultEvent::Chunk {
        fragment: fragment as u64,
        seq: 0,
        payload: vec![0u8; bytes],
    };
    let _ = p.on_results(PEER, job, [chunk(f1, 60)], T0);
    assert!(drain(&mut p).is_empty(), "60 bytes held: under the bound");
    let f2 = first_of(third);
    let _ = p.on_results(third, job, [chunk(f2, 120)], T0);
    assert_eq!(p.held(job), 180);
    let a = drain(&mut p);
    assert!(
        a.contains(&Action::PauseResults { job, host: PEER }),
        "{a:?}"
    );
    assert!(
        a.contains(&Action::PauseResults { job, host: third }),
        "{a:?}"
    );
    // Fragment 0 finishes here: fragment f1's chunk goes to the job, and while the job takes
    // it every stream waits.
    let _ = p.local_block_done(job, &[0..f1], Vec::new(), &[]);
    let a = drain(&mut p);
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Deliver { fragment, .. } if *fragment == f1)),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::ResumeResults { .. })),
        "{a:?}"
    );
    // Taken: 120 bytes of a later fragment still wait, over the bound, for fragment f1, which
    // runs on the peer: that peer's stream is read again (it carries what comes next), the
    // other stays paused.
    p.delivered(job, 60);
    assert_eq!(p.held(job), 120);
    assert_eq!(
        drain(&mut p),
        vec![Action::ResumeResults { job, host: PEER }]
    );
}

#[test]
fn deliveries_in_progress_pause_every_stream_until_the_job_takes_them() {
    let limits = Limits {
        max_held_bytes: 100,
        ..Limits::default()
    };
    let mut p = proto(limits);
    let job = JobId {
        initiator: ME,
        seq: 1,
    };
    let spec = JobSpec {
        params: params(SchedulingMode::Cluster, false),
        count: 8,
        assignment: None,
    };
    p.submit(job, spec).unwrap();
    let remote: Vec<usize> = drain(&mut p)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendDispatch { fragments, .. } => Some(fragments[0].start),
            _ => None,
        })
        .collect();
    let f = remote[0];
    let ev = |seq| ResultEvent::Chunk {
        fragment: f as u64,
        seq,
        payload: vec![0u8; 80],
    };
    let _ = p.on_results(PEER, job, [ev(0), ev(1)], T0);
    let a = drain(&mut p);
    let delivered = a
        .iter()
        .filter(|x| matches!(x, Action::Deliver { .. }))
        .count();
    assert_eq!(delivered, 2);
    assert!(a.contains(&Action::PauseResults { job, host: PEER }));
    assert_eq!(p.held(job), 160);
    p.delivered(job, 80);
    assert_eq!(p.held(job), 80);
    assert_eq!(
        drain(&mut p),
        vec![Action::ResumeResults { job, host: PEER }],
        "under the bound again"
    );
}

#[test]
fn heartbeats_are_due_on_time_and_a_silent_peer_is_declared_down() {
    let limits = Limits {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let mut p = proto(limits);
    assert_eq!(
        p.poll_timeout(),
        Some(T0),
        "the first heartbeat is due at once"
    );
    p.handle_timeout(T0);
    assert_eq!(drain(&mut p), vec![Action::SendHeartbeat { host: PEER }]);
    assert_eq!(p.poll_timeout(), Some(Duration::from_millis(100)));
    p.handle_timeout(Duration::from_millis(50));
    assert!(drain(&mut p).is_empty(), "nothing due before the deadline");
    // Heard from at 300 ms: the failure deadline moves to 800 ms.
    p.on_message(PEER, Message::Heartbeat, Duration::from_millis(300));
    p.handle_timeout(Duration::from_millis(450));
    assert_eq!(drain(&mut p), vec![Action::SendHeartbeat { host: PEER }]);
    p.handle_timeout(Duration::from_millis(799));
    let _ = drain(&mut p);
    assert_eq!(p.peers().count(), 1);
    p.handle_timeout(Duration::from_millis(800));
    assert_eq!(down_reason(&drain(&mut p)), Some(Down::Timeout));
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn the_loss_of_an_initiator_abandons_its_jobs_here() {
    let mut p = proto(Limits::default());
    let job = theirs(1);
    replica(&mut p, job, 4);
    p.replica_loaded(job, Ok(()));
    let key = drain(&mut p)
        .into_iter()
        .find_map(|a| match a {
            Action::SubmitWork { key, .. } => Some(key),
            _ => None,
        })
        .unwrap();
    p.link_down(PEER, "reset");
    let a = drain(&mut p);
    assert_eq!(
        a,
        vec![
            Action::HostDown {
                host: PEER,
                why: Down::Closed("reset".into())
            },
            Action::CancelReplica { job },
            Action::RemoveWork { key },
            Action::DropReplica { job },
        ]
    );
    // Late messages of the lost peer are dropped.
    replica(&mut p, theirs(2), 4);
    assert!(drain(&mut p).is_empty());
}

#[test]
fn a_cancel_from_a_host_running_a_job_here_aborts_it() {
    let mut p = proto(Limits::default());
    let job = JobId {
        initiator: ME,
        seq: 1,
    };
    let spec = JobSpec {
        params: params(SchedulingMode::Cluster, false),
        count: 40,
        assignment: None,
    };
    p.submit(job, spec).unwrap();
    let a = drain(&mut p);
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::SendDispatch { host, .. } if *host == PEER)));
    // A fragment on the peer called `Transaction::abort`: the job is cancelled everywhere.
    p.on_message(PEER, Message::Cancel { job }, T0);
    let a = drain(&mut p);
    assert!(a.contains(&Action::SendCancel { job, host: PEER }), "{a:?}");
    assert!(
        a.iter().any(|x| matches!(x, Action::DrainWork { .. })),
        "{a:?}"
    );
    assert_eq!(down_reason(&a), None, "an abort is not a violation");
    // A cancel of a third host's job is.
    let other = JobId {
        initiator: HostId(9),
        seq: 1,
    };
    p.on_message(PEER, Message::Cancel { job: other }, T0);
    assert!(matches!(
        down_reason(&drain(&mut p)),
        Some(Down::Violation(_))
    ));
}

#[test]
fn at_most_a_few_streams_of_one_peer_are_paused_at_once() {
    let limits = Limits {
        max_held_bytes: 10,
        max_paused_per_peer: 2,
        ..Limits::default()
    };
    let mut p = proto(limits);
    let mut paused = 0;
    for seq in 1..=4 {
        let job = JobId { initiator: ME, seq };
        let spec = JobSpec {
            params: params(SchedulingMode::Cluster, false),
            count: 8,
            assignment: None,
        };
        p.submit(job, spec).unwrap();
        let f = drain(&mut p)
            .into_iter()
            .find_map(|a| match a {
                Action::SendDispatch { fragments, .. } => Some(fragments[0].start),
                _ => None,
            })
            .expect("fragments on the peer");
        let chunk = ResultEvent::Chunk {
            fragment: f as u64,
            seq: 0,
            payload: vec![0u8; 20],
        };
        let _ = p.on_results(PEER, job, [chunk], T0);
        paused += drain(&mut p)
            .iter()
            .filter(|a| matches!(a, Action::PauseResults { .. }))
            .count();
    }
    assert_eq!(
        paused, 2,
        "two streams of the peer paused, the others keep going"
    );
}

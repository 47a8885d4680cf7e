//! Drives the initiator's scheduler directly: modes, placement, reassignment, exactly-once and
//! ordered delivery, cancel.

use fragmenta_job::{FailureReason, HostId, InvalidArgument, JobId, JobParams, SchedulingMode};
use fragmenta_sched::{Action, HostInfo, JobSpec, Outcome, Scheduler};
use std::ops::Range;

const L: HostId = HostId(0);

fn info(sub: u32, cores: f32, gpus: u32) -> HostInfo {
    HostInfo {
        sub_cluster: sub,
        cores,
        gpus,
    }
}

fn params(mode: SchedulingMode) -> JobParams {
    JobParams {
        mode,
        cpu_load: 1.0,
        gpu_load: 0.0,
        priority: 0,
        thread_limit: 0,
        allow_non_sequential_chunks: false,
    }
}

fn job(seq: u64) -> JobId {
    JobId { initiator: L, seq }
}

fn cluster(n: u32) -> Scheduler<u32> {
    let mut s = Scheduler::new(L, info(0, 2.0, 0));
    for h in 1..n {
        s.host_up(HostId(h), info(0, 2.0, 0));
    }
    s
}

fn drain(s: &mut Scheduler<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn dispatched(actions: &[Action<u32>]) -> Vec<(HostId, Vec<Range<usize>>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch {
                host, fragments, ..
            } => Some((*host, fragments.clone())),
            _ => None,
        })
        .collect()
}

fn finished(actions: &[Action<u32>]) -> Option<&fragmenta_job::JobReport> {
    actions.iter().find_map(|a| match a {
        Action::Finished(r) => Some(r),
        _ => None,
    })
}

/// Completes every dispatched fragment as each host would (remote: one chunk with the
/// fragment's index as payload), until the job finishes. Returns deliveries and the report.
fn run_to_end(
    s: &mut Scheduler<u32>,
    id: JobId,
    mut actions: Vec<Action<u32>>,
) -> (Vec<(usize, u32, u32)>, fragmenta_job::JobReport) {
    let mut delivered = Vec::new();
    for _ in 0..100_000 {
        let mut work = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::Dispatch {
                    host, fragments, ..
                } => work.push((host, fragments)),
                Action::Deliver {
                    fragment,
                    seq,
                    payload,
                    ..
                } => delivered.push((fragment, seq, payload)),
                Action::Finished(r) => return (delivered, r),
                _ => {}
            }
        }
        for (host, fragments) in work {
            for r in fragments {
                if host == L {
                    s.on_local_done(id, r);
                } else {
                    for f in r {
                        s.on_chunk(id, host, f, 0, f as u32);
                        s.on_fragment_done(id, host, f, 1);
                    }
                }
            }
        }
        actions = drain(s);
    }
    panic!("job did not finish");
}

#[test]
fn local_runs_everything_on_the_initiator() {
    let mut s = cluster(3);
    let id = job(1);
    s.submit(
        id,
        JobSpec {
            params: params(SchedulingMode::Local),
            count: 10,
            assignment: None,
        },
    )
    .unwrap();
    let actions = drain(&mut s);
    assert_eq!(dispatched(&actions), vec![(L, vec![0..10])]);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::SendReplica { .. })));
    let (delivered, report) = run_to_end(&mut s, id, actions);
    assert!(delivered.is_empty());
    assert_eq!(report.done().to_vec(), (0..10).collect::<Vec<_>>());
    assert_eq!(report.per_host, vec![(L, 10)]);
}

#[test]
fn cluster_spreads_over_all_hosts_with_one_replica_each() {
    let mut s = cluster(4);
    let id = job(1);
    s.submit(
        id,
        JobSpec {
            params: params(SchedulingMode::Cluster),
            count: 1000,
            assignment: None,
        },
    )
    .unwrap();
    let actions = drain(&mut s);
    let mut seen_replica = std::collections::BTreeSet::new();
    for a in &actions {
        match a {
            Action::SendReplica { host, .. } => assert!(seen_replica.insert(*host)),
            Action::Dispatch { host, .. } if *host != L => {
                assert!(seen_replica.contains(host), "replica before first dispatch")
            }
            _ => {}
        }
    }
    assert_eq!(seen_replica.len(), 3);
    let hosts: std::collections::BTreeSet<_> = dispatched(&actions).iter().map(|d| d.0).collect();
    assert_eq!(hosts.len(), 4, "the initiator works too");
    let (delivered, report) = run_to_end(&mut s, id, actions);
    assert!(report.is_complete());
    assert_eq!(report.per_host.iter().map(|(_, n)| n).sum::<usize>(), 1000);
    // Every remote fragment delivered once, in (fragment, seq) order.
    let frags: Vec<usize> = delivered.iter().map(|d| d.0).collect();
    let mut sorted = frags.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(frags, sorted);
    assert_eq!(frags.len(), 1000 - report.done_on(L));
}

#[test]
fn a_slow_host_gets_fewer_fragments() {
    let mut s = cluster(3);
    let id = job(1);
    s.submit(
        id,
        JobSpec {
            params: params(SchedulingMode::Cluster),
            count: 2000,
            assignment: None,
        },
    )
    .unwrap();
    let slow = HostId(2);
    let mut outstanding: std::collections::BTreeMap<HostId, Vec<usize>> = Default::default();
    let mut actions = drain(&mut s);
    let report = loop {
        for a in actions.drain(..) {
            if let Action::Dispatch {
                host, fragments, ..
            } = a
            {
                outstanding
                    .entry(host)
                    .or_default()
                    .extend(fragments.into_iter().flatten());
            }
        }
        if let Some(r) = s.poll_action().and_then(|a| match a {
            Action::Finished(r) => Some(r),
            _ => None,
        }) {
            break r;
        }
        // Each step the fast hosts finish 4 fragments, the slow one 1.
        for (host, list) in outstanding.iter_mut() {
            let n = if *host == slow { 1 } else { 4 }.min(list.len());
            for f in list.drain(..n) {
                if *host == L {
                    s.on_local_done(id, f..f + 1);
                } else {
                    s.on_fragment_done(id, *host, f, 0);
                }
            }
        }
        actions = drain(&mut s);
        if let Some(r) = finished(&actions) {
            break r.clone();
        }
    };
    assert!(report.is_complete());
    let slow_n = report.done_on(slow);
    let fast_n = report.done_on(HostId(1));
    assert!(
        slow_n * 2 < fast_n,
        "slow host did {slow_n}, fast host {fast_n}"
    );
}

#[test]
fn failed_host_fragments_are_reassigned_and_delivered_once() {
    let mut s = cluster(3);
    let id = job(1);
    s.submit(
        id,
        JobSpec {
            params: params(SchedulingMode::Cluster),
            count: 40,
            assignment: None,
        },
    )
    .unwrap();
    let first = drain(&mut s);
    let on_2: Vec<usize> = dispatched(&first)
        .into_iter()
        .filter(|d| d.0 == HostId(2))
        .flat_map(|d| d.1.into_iter().flatten())
        .collect();
    assert!(!on_2.is_empty());
    // Host 2 sends chunk 0 of its first fragment, then dies.
    let f = on_2[0];
    assert_eq!(s.on_chunk(id, HostId(2), f, 0, 7), Outcome::Applied);
    assert_eq!(s.host_down(HostId(2)), Outcome::Applied);
    // Late data from the dead host is dropped.
    assert_eq!(s.on_chunk(id, HostId(2), f, 1, 8), Outcome::Stale);
    assert_eq!(s.on_fragment_done(id, HostId(2), f, 2), Outcome::Stale);
    // Hosts 0 and 1 run what they were given first; host 2's share was reassigned.
    let mut actions: Vec<Action<u32>> = first
        .into_iter()
        .filter(|a| !matches!(a, Action::Dispatch { host, .. } if *host == HostId(2)))
        .collect();
    actions.extend(drain(&mut s));
    let (delivered, report) = run_to_end(&mut s, id, actions);
    assert!(report.is_complete());
    assert_eq!(report.done_on(HostId(2)), 0);
    // (f, 0) was delivered once, from the first attempt: the re-run's chunk 0 is skipped.
    let f_chunks: Vec<_> = delivered.iter().filter(|d| d.0 == f).collect();
    assert_eq!(f_chunks, vec![&(f, 0, 7)]);
}

#[test]
fn ordered_delivery_waits_for_lower_fragments_and_unordered_does_not() {
    for ordered in [true, false] {
        let mut s = cluster(2);
        let id = job(1);
        let mut p = params(SchedulingMode::UserDefined);
        p.allow_non_sequential_chunks = !ordered;
        let r = HostId(1);
        s.submit(
            id,
            JobSpec {
                params: p,
                count: 3,
                assignment: Some(vec![r, r, r]),
            },
        )
        .unwrap();
        drain(&mut s);
        s.on_chunk(id, r, 2, 0, 20);
        s.on_chunk(id, r, 1, 0, 10);
        s.on_chunk(id, r, 1, 1, 11);
        s.on_chunk(id, r, 1, 1, 11); // duplicate
        s.on_fragment_done(id, r, 1, 2);
        s.on_fragment_done(id, r, 2, 1);
        let early: Vec<u32> = drain(&mut s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Deliver { payload, .. } => Some(payload),
                _ => None,
            })
            .collect();
        if ordered {
            assert!(early.is_empty(), "fragment 0 has not reported yet");
        } else {
            assert_eq!(early, vec![20, 10, 11]);
        }
        s.on_chunk(id, r, 0, 0, 0);
        s.on_fragment_done(id, r, 0, 1);
        let rest = drain(&mut s);
        let late: Vec<u32> = rest
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { payload, .. } => Some(*payload),
                _ => None,
            })
            .collect();
        if ordered {
            assert_eq!(late, vec![0, 10, 11, 20]);
        } else {
            assert_eq!(late, vec![0]);
        }
        assert!(matches!(rest.last(), Some(Action::Finished(r)) if r.is_complete()));
        assert!(matches!(rest[rest.len() - 2], Action::Release { host, .. } if host == r));
    }
}

#[test]
fn user_defined_skips_unknown_hosts_and_fails_on_host_failure() {
    let mut s = cluster(3);
    let id = job(1);
    let slots = vec![L, HostId(1), HostId(9), HostId(2), HostId::UNASSIGNED];
    s.submit(
        id,
        JobSpec {
            params: params(SchedulingMode::UserDefined),
            count: 5,
            assignment: Some(slots),
        },
    )
    .unwrap();
    let actions = drain(&mut s);
    assert_eq!(
        dispatched(&actions),
        vec![
            (L, vec![0..1]),
            (HostId(1), vec![1..2]),
            (HostId(2), vec![3..4])
        ]
    );
    s.on_local_done(id, 0..1);
    s.on_fragment_done(id, HostId(1), 1, 1);
    s.host_down(HostId(2));
    let actions = drain(&mut s);
    assert!(
        dispatched(&actions).is_empty(),
        "USER_DEFINED never reassigns"
    );
    let report = finished(&actions).expect("finished");
    assert_eq!(report.done().to_vec(), vec![0, 1]);
    assert_eq!(report.skipped().to_vec(), vec![2, 4]);
    assert_eq!(report.failed().to_vec(), vec![3]);
    assert_eq!(
        report.failures[0].reason,
        FailureReason::HostFailed(HostId(2))
    );
}

#[test]
fn once_per_host_uses_remote_hosts_of_the_sub_cluster() {
    let mut s = Scheduler::<u32>::new(L, info(0, 2.0, 0));
    s.host_up(HostId(1), info(0, 2.0, 0));
    s.host_up(HostId(2), info(1, 2.0, 0));
    s.host_up(HostId(3), info(0, 2.0, 0));
    let p = params(SchedulingMode::OncePerHost);
    assert_eq!(
        s.submit(
            job(1),
            JobSpec {
                params: p.clone(),
                count: 0,
                assignment: None
            }
        ),
        Ok(2)
    );
    let actions = drain(&mut s);
    assert_eq!(
        dispatched(&actions),
        vec![(HostId(1), vec![0..1]), (HostId(3), vec![1..2])]
    );
    assert_eq!(
        s.submit(
            job(2),
            JobSpec {
                params: p.clone(),
                count: 3,
                assignment: None
            }
        ),
        Err(InvalidArgument::OncePerHostCountExceedsHosts {
            count: 3,
            eligible: 2
        })
    );
    let mut g = p;
    g.gpu_load = 1.0;
    assert_eq!(
        s.submit(
            job(3),
            JobSpec {
                params: g,
                count: 1,
                assignment: None
            }
        ),
        Err(InvalidArgument::OncePerHostWithGpuLoad(1.0))
    );
    // On a single host there is no remote host: 0 runs nothing, 1 is an error.
    let mut one = Scheduler::<u32>::new(L, info(0, 2.0, 0));
    let p = params(SchedulingMode::OncePerHost);
    assert_eq!(
        one.submit(
            job(1),
            JobSpec {
                params: p.clone(),
                count: 0,
                assignment: None
            }
        ),
        Ok(0)
    );
    assert!(matches!(drain(&mut one).last(), Some(Action::Finished(r)) if r.count == 0));
    assert!(one
        .submit(
            job(2),
            JobSpec {
                params: p,
                count: 1,
                assignment: None
            }
        )
        .is_err());
}

#[test]
fn gpu_jobs_need_a_gpu_host_and_go_only_there() {
    let mut s = Scheduler::<u32>::new(L, info(0, 2.0, 0));
    let mut p = params(SchedulingMode::Cluster);
    p.gpu_load = 1.0;
    assert_eq!(
        s.submit(
            job(1),
            JobSpec {
                params: p.clone(),
                count: 4,
                assignment: None
            }
        ),
        Err(InvalidArgument::NoGpuHost(1.0))
    );
    s.host_up(HostId(1), info(0, 2.0, 2));
    s.submit(
        job(2),
        JobSpec {
            params: p,
            count: 4,
            assignment: None,
        },
    )
    .unwrap();
    let actions = drain(&mut s);
    assert!(dispatched(&actions).iter().all(|d| d.0 == HostId(1)));
}

#[test]
fn cancel_cancels_unstarted_and_waits_for_hosts() {
    let mut s = cluster(2);
    let id = job(1);
    let mut p = params(SchedulingMode::Cluster);
    p.allow_non_sequential_chunks = true;
    s.submit(
        id,
        JobSpec {
            params: p,
            count: 10_000,
            assignment: None,
        },
    )
    .unwrap();
    let actions = drain(&mut s);
    let remote: Vec<Range<usize>> = dispatched(&actions)
        .into_iter()
        .filter(|d| d.0 == HostId(1))
        .flat_map(|d| d.1)
        .collect();
    let local: Vec<Range<usize>> = dispatched(&actions)
        .into_iter()
        .filter(|d| d.0 == L)
        .flat_map(|d| d.1)
        .collect();
    let first_remote = remote[0].start;
    s.on_fragment_done(id, HostId(1), first_remote, 1);
    // The completion frees window space: more fragments go out before the cancel.
    let more = drain(&mut s);
    let remote: Vec<Range<usize>> = remote
        .into_iter()
        .chain(
            dispatched(&more)
                .into_iter()
                .filter(|d| d.0 == HostId(1))
                .flat_map(|d| d.1),
        )
        .collect();
    let local: Vec<Range<usize>> = local
        .into_iter()
        .chain(
            dispatched(&more)
                .into_iter()
                .filter(|d| d.0 == L)
                .flat_map(|d| d.1),
        )
        .collect();
    assert_eq!(s.cancel(id), Outcome::Applied);
    let actions = drain(&mut s);
    let cancels: Vec<HostId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { host, .. } => Some(*host),
            _ => None,
        })
        .collect();
    assert_eq!(cancels, vec![L, HostId(1)]);
    assert!(finished(&actions).is_none(), "hosts have not answered yet");
    // Local: nothing started. Remote: one more fragment was running and completes.
    s.on_not_started(id, L, &local);
    let mut rest: Vec<Range<usize>> = remote.clone();
    rest[0].start += 2;
    s.on_fragment_done(id, HostId(1), first_remote + 1, 1);
    s.on_not_started(id, HostId(1), &rest);
    let actions = drain(&mut s);
    let report = finished(&actions).expect("finished after every host answered");
    assert_eq!(report.done().to_vec(), vec![first_remote, first_remote + 1]);
    assert_eq!(report.cancelled().len(), 10_000 - 2);
}

#[test]
fn negative_priority_is_rejected() {
    let mut s = cluster(1);
    let mut p = params(SchedulingMode::Local);
    p.priority = -3;
    assert_eq!(
        s.submit(
            job(1),
            JobSpec {
                params: p,
                count: 1,
                assignment: None
            }
        ),
        Err(InvalidArgument::NegativePriority(-3))
    );
}

#[test]
fn fragment_rerun_on_the_initiator_after_partial_delivery_dedupes_its_chunks() {
    let mut s = cluster(2);
    let r = HostId(1);
    let id = job(1);
    s.submit(
        id,
        JobSpec {
            params: params(SchedulingMode::Cluster),
            count: 2,
            assignment: None,
        },
    )
    .unwrap();
    let first = drain(&mut s);
    assert_eq!(
        dispatched(&first),
        vec![(L, vec![0..1]), (r, vec![1..2])],
        "{first:?}"
    );
    // Host 1 sends chunks 0 and 2 of fragment 1: both wait for fragment 0.
    assert_eq!(s.on_chunk(id, r, 1, 0, 10), Outcome::Applied);
    assert_eq!(s.on_chunk(id, r, 1, 2, 12), Outcome::Applied);
    assert!(drain(&mut s).is_empty());
    // Fragment 0 ran here: chunk (1, 0) is delivered, (1, 2) stays buffered.
    assert_eq!(s.on_local_done(id, 0..1), Outcome::Applied);
    let mut delivered: Vec<(usize, u32, u32)> = Vec::new();
    let mut take = |s: &mut Scheduler<u32>| {
        let actions = drain(s);
        for a in &actions {
            if let Action::Deliver {
                fragment,
                seq,
                payload,
                ..
            } = a
            {
                delivered.push((*fragment, *seq, *payload));
            }
        }
        actions
    };
    take(&mut s);
    assert_eq!(s.rerun_with_chunks(id, 0..2), Vec::<usize>::new());
    // Host 1 dies: fragment 1 goes to the initiator, marked to run with chunks.
    assert_eq!(s.host_down(r), Outcome::Applied);
    let again = take(&mut s);
    assert_eq!(dispatched(&again), vec![(L, vec![1..2])]);
    assert_eq!(s.rerun_with_chunks(id, 0..2), vec![1]);
    assert_eq!(s.rerun_with_chunks(id, 0..1), Vec::<usize>::new());
    // The initiator runs it remote style: chunk 0 was delivered, 1 and 2 are not.
    assert_eq!(s.on_chunk(id, L, 1, 0, 100), Outcome::Stale);
    assert_eq!(s.on_chunk(id, L, 1, 1, 101), Outcome::Applied);
    assert_eq!(s.on_chunk(id, L, 1, 2, 102), Outcome::Applied);
    take(&mut s);
    assert_eq!(s.on_fragment_done(id, L, 1, 3), Outcome::Applied);
    let end = take(&mut s);
    // Done exactly once: neither a second report nor the local path counts it again.
    assert_eq!(s.on_fragment_done(id, L, 1, 3), Outcome::Stale);
    assert_eq!(s.on_local_done(id, 1..2), Outcome::Stale);
    let report = finished(&end).expect("finished");
    assert!(report.is_complete());
    assert_eq!(report.done().len(), 2);
    assert_eq!(report.done_on(L), 2);
    // Every (fragment, seq) once, in order; chunk 2 from either attempt (they are equal).
    let keys: Vec<(usize, u32)> = delivered.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(keys, vec![(1, 0), (1, 1), (1, 2)]);
    assert_eq!(delivered[0].2, 10);
    assert_eq!(delivered[1].2, 101);
}

/// A CLUSTER host that answers it lacks the job's type gets none of it any more: what it held
/// runs on the others, and the report names it.
#[test]
fn a_host_that_cannot_run_a_cluster_job_is_excluded_from_it() {
    let mut s = cluster(3);
    let id = job(1);
    let spec = JobSpec {
        params: params(SchedulingMode::Cluster),
        count: 200,
        assignment: None,
    };
    s.submit(id, spec).unwrap();
    let first = drain(&mut s);
    let at_2: Vec<usize> = dispatched(&first)
        .into_iter()
        .filter(|(h, _)| *h == HostId(2))
        .flat_map(|(_, r)| r.into_iter().flatten())
        .collect();
    assert!(!at_2.is_empty());
    let reason = FailureReason::UnknownClass(fragmenta_job::ClassId::from_name("seven"));
    // Host 2 answers each fragment it was given; only the first answer counts.
    let mut actions = Vec::new();
    for &f in &at_2 {
        s.on_fragment_failed(id, HostId(2), f, reason.clone());
        actions.extend(drain(&mut s));
    }
    assert!(dispatched(&actions).iter().all(|(h, _)| *h != HostId(2)));
    let rest: Vec<Action<u32>> = first
        .into_iter()
        .filter(|a| !matches!(a, Action::Dispatch { host, .. } if *host == HostId(2)))
        .chain(actions)
        .collect();
    let (_, report) = run_to_end(&mut s, id, rest);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.done_on(HostId(2)), 0);
    assert_eq!(report.excluded_hosts, vec![(HostId(2), reason)]);
}

/// A job the runtime could not send anywhere stays on the initiator, even when hosts come up.
#[test]
fn an_initiator_only_job_never_goes_to_another_host() {
    let mut s = cluster(1);
    let id = job(1);
    let spec = JobSpec {
        params: params(SchedulingMode::Cluster),
        count: 5000,
        assignment: None,
    };
    s.submit_on_initiator_only(id, spec).unwrap();
    let mut actions = drain(&mut s);
    s.host_up(HostId(1), info(0, 8.0, 0));
    actions.extend(drain(&mut s));
    let (_, report) = run_to_end(&mut s, id, actions);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.done_on(L), 5000);
}

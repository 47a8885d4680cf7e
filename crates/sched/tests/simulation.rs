//! The deterministic simulation of the scheduler core: a few hundred seeds must break no
//! invariant, the same seed must replay the same run, and the checker must catch deliberate bugs.
//! Regression tests for the bugs the simulation found are at the end.
//!
//! More seeds: `cargo run --release -p fragmenta-sched --example simulate -- --seeds 10000`.

use fragmenta_job::{
    FailureReason, HostId, InvalidArgument, JobId, JobParams, JobReport, SchedulingMode,
};
use fragmenta_sched::sim::{self, Invariant, Sabotage, Sim, SimConfig, SimStats};
use fragmenta_sched::{Action, HostInfo, JobSpec, Scheduler};
use std::cell::RefCell;
use std::rc::Rc;

/// Seeds run by `seeds_break_no_invariant`: about 10 s in a debug build on an idle 2-core
/// machine, 20 s on a busy one.
const SEEDS: u64 = 500;

fn check_seeds(seeds: std::ops::Range<u64>, config: &SimConfig) -> SimStats {
    let mut total = SimStats::default();
    let mut failures = Vec::new();
    for seed in seeds {
        let out = sim::run(seed, config);
        total.merge(&out.stats);
        if let Some(v) = out.violations.first() {
            failures.push(format!("{v}\n  replay: {}", config.replay_command(seed)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds broke invariants:\n{}",
        failures.len(),
        failures.join("\n")
    );
    total
}

#[test]
fn seeds_break_no_invariant() {
    let total = check_seeds(0..SEEDS, &SimConfig::default());
    // The runs exercised what they are meant to: faults, failovers, every outcome.
    assert_eq!(total.runs, SEEDS);
    assert!(total.crashes > 0 && total.restarts > 0 && total.partitions > 0);
    assert!(total.duplicates > 0 && total.false_suspicions > 0);
    assert!(total.reassigned > 0, "no CLUSTER fragment was reassigned");
    assert!(
        total.reruns_with_chunks > 0,
        "no fragment re-ran on its initiator with chunks"
    );
    assert!(total.host_failed > 0 && total.skipped > 0 && total.cancelled > 0);
    assert!(total.stale_results > 0 && total.deliveries > 0);
    assert!(total.jobs_finished > 0 && total.jobs_abandoned > 0);
    assert!(
        total.result_pauses > 0,
        "no initiator paused a result stream"
    );
    assert!(
        total.reclaims > 0 && total.reclaimed > 0,
        "work stealing took nothing back ({} reclaims)",
        total.reclaims
    );
}

#[test]
fn fixed_cluster_sizes_and_no_faults_break_no_invariant() {
    for hosts in [1, 2, 8] {
        let config = SimConfig {
            hosts,
            steps: 2_000,
            ..SimConfig::default()
        };
        check_seeds(1_000..1_010, &config);
    }
    let calm = SimConfig {
        faults: false,
        ..SimConfig::default()
    };
    let total = check_seeds(2_000..2_020, &calm);
    assert_eq!(total.crashes + total.partitions + total.duplicates, 0);
    assert_eq!(
        total.declared_down, 0,
        "no host is declared down without faults"
    );
    assert_eq!(total.jobs_finished, total.jobs, "every job finishes");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let trace = |seed: u64| {
        let lines = Rc::new(RefCell::new(Vec::<String>::new()));
        let sink = lines.clone();
        let mut sim = Sim::new(seed, SimConfig::default());
        sim.set_trace(move |l| sink.borrow_mut().push(l.to_string()));
        let out = sim.run();
        let lines = lines.borrow().clone();
        (lines, out.stats)
    };
    let (a, sa) = trace(11);
    let (b, sb) = trace(11);
    let (c, _) = trace(12);
    assert!(a.len() > 1_000, "a trace line per step at least");
    assert_eq!(sa, sb);
    assert!(a == b, "seed 11 ran differently twice");
    assert!(a != c, "seeds 11 and 12 ran the same");
    assert!(
        SimConfig::default()
            .replay_command(11)
            .contains("--example simulate -- --seed 11"),
        "the replay command names the seed"
    );
}

/// Runs seeds with `sabotage` until one reports a violation of `expected`.
fn caught(sabotage: Sabotage, expected: Invariant) {
    let config = SimConfig {
        steps: 1_500,
        sabotage: Some(sabotage),
        ..SimConfig::default()
    };
    for seed in 0..40 {
        let out = sim::run(seed, &config);
        if let Some(v) = out.violations.iter().find(|v| v.invariant == expected) {
            assert_eq!(v.seed, seed);
            assert!(v.step > 0 && v.step <= out.stats.steps);
            return;
        }
    }
    panic!("{sabotage:?} was not reported as {expected:?} in 40 seeds");
}

#[test]
fn the_checker_catches_a_duplicated_delivery() {
    caught(Sabotage::DuplicateDelivery, Invariant::ExactlyOnce);
}

#[test]
fn the_checker_catches_a_missing_delivery() {
    caught(Sabotage::DropDelivery, Invariant::ExactlyOnce);
}

#[test]
fn the_checker_catches_deliveries_out_of_order() {
    caught(Sabotage::SwapDeliveries, Invariant::Order);
}

#[test]
fn the_checker_catches_a_delivery_after_the_report() {
    caught(Sabotage::DeliverAfterFinish, Invariant::AfterFinish);
}

#[test]
fn the_checker_catches_a_wrong_report() {
    caught(Sabotage::CorruptReport, Invariant::Report);
}

#[test]
fn the_checker_catches_replicas_left_behind() {
    caught(Sabotage::DropReleases, Invariant::Cleanup);
}

#[test]
fn the_checker_catches_a_job_that_never_finishes() {
    caught(Sabotage::DropFinished, Invariant::Liveness);
}

#[test]
fn the_checker_catches_a_fragment_run_twice_after_a_reclaim() {
    caught(Sabotage::ReclaimRunning, Invariant::ExactlyOnce);
}

// Regressions: bugs the simulation found in the scheduler.

const L: HostId = HostId(0);

fn info(gpus: u32) -> HostInfo {
    HostInfo {
        sub_cluster: 0,
        cores: 2.0,
        gpus,
    }
}

fn params(mode: SchedulingMode, gpu_load: f32) -> JobParams {
    JobParams {
        mode,
        cpu_load: 1.0,
        gpu_load,
        priority: 0,
        thread_limit: 0,
        allow_non_sequential_chunks: false,
    }
}

fn report(s: &mut Scheduler<u64>) -> Option<JobReport> {
    std::iter::from_fn(|| s.poll_action()).find_map(|a| match a {
        Action::Finished(r) => Some(r),
        _ => None,
    })
}

/// A failed host's fragments were appended to the failures after those that failed earlier, so
/// the report's failures were not in ascending index order as documented.
#[test]
fn failures_are_listed_by_index_when_a_host_fails_after_a_fragment() {
    let mut s = Scheduler::<u64>::new(L, info(0));
    s.host_up(HostId(1), info(0));
    s.host_up(HostId(2), info(0));
    let job = JobId {
        initiator: L,
        seq: 1,
    };
    let spec = JobSpec {
        params: params(SchedulingMode::UserDefined, 0.0),
        count: 4,
        assignment: Some(vec![HostId(1), HostId(1), HostId(2), HostId(2)]),
    };
    assert_eq!(s.submit(job, spec), Ok(4));
    let reason = FailureReason::Panicked("boom".into());
    s.on_fragment_failed(job, HostId(2), 3, reason);
    s.on_fragment_done(job, HostId(2), 2, 0);
    s.host_down(HostId(1));
    let r = report(&mut s).expect("the job finishes once host 1 is down");
    let order: Vec<usize> = r.failures.iter().map(|f| f.index).collect();
    assert_eq!(order, vec![0, 1, 3]);
    assert_eq!(r.failed().to_vec(), vec![0, 1, 3]);
    assert_eq!(r.done().to_vec(), vec![2]);
}

/// A LOCAL job with a GPU load on an initiator without a GPU was accepted when another host had
/// one, and then every fragment failed on the initiator; it is an invalid argument, as on a
/// cluster without GPUs.
#[test]
fn a_local_gpu_job_needs_a_gpu_on_its_initiator() {
    let mut s = Scheduler::<u64>::new(L, info(0));
    s.host_up(HostId(1), info(2));
    let spec = |mode| JobSpec {
        params: params(mode, 1.0),
        count: 3,
        assignment: None,
    };
    let job = |seq| JobId { initiator: L, seq };
    assert_eq!(
        s.submit(job(1), spec(SchedulingMode::Local)),
        Err(InvalidArgument::NoLocalGpu {
            gpu_load: 1.0,
            host: L
        })
    );
    assert_eq!(s.active_jobs(), 0);
    // CLUSTER may still use the other host's GPUs.
    assert_eq!(s.submit(job(2), spec(SchedulingMode::Cluster)), Ok(3));
    // And a LOCAL GPU job runs on an initiator that has one.
    let mut g = Scheduler::<u64>::new(L, info(1));
    assert_eq!(g.submit(job(3), spec(SchedulingMode::Local)), Ok(3));
}

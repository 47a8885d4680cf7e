//! Runs the deterministic simulation of the scheduler core over many seeds, or replays one.
//!
//! ```text
//! cargo run --release -p fragmenta-sched --example simulate -- --seeds 10000
//! cargo run --release -p fragmenta-sched --example simulate -- --seed 42 --hosts 0 --steps 4000
//! ```
//!
//! Options: `--seeds N` (run seeds `--start` .. `--start`+N, default 100), `--start S`,
//! `--seed N` (replay one seed and print its step trace), `--hosts H` (0: the seed picks 1 to
//! 6), `--steps S` (steps of the active phase), `--no-faults`, `--threads T`.
//! Exits with status 1 if any seed breaks an invariant, printing the command that replays it.

use fragmenta_sched::sim::{self, SimConfig, SimStats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Args {
    seeds: u64,
    start: u64,
    replay: Option<u64>,
    threads: usize,
    config: SimConfig,
}

fn usage(problem: &str) -> ! {
    eprintln!("simulate: {problem}");
    eprintln!(
        "usage: simulate [--seeds N] [--start S] [--seed N] [--hosts H] [--steps S] [--no-faults] [--threads T]"
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut args = Args {
        seeds: 100,
        start: 0,
        replay: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        config: SimConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> u64 {
            let v = it
                .next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")));
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name}: {v:?} is not a number")))
        };
        match flag.as_str() {
            "--seeds" => args.seeds = value("--seeds"),
            "--start" => args.start = value("--start"),
            "--seed" => args.replay = Some(value("--seed")),
            "--hosts" => args.config.hosts = value("--hosts") as usize,
            "--steps" => args.config.steps = value("--steps"),
            "--threads" => args.threads = (value("--threads") as usize).max(1),
            "--no-faults" => args.config.faults = false,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown option {other:?}")),
        }
    }
    args
}

fn print_stats(s: &SimStats, wall: f64) {
    println!(
        "seeds {}  steps {}  simulated {:.1} s  wall {:.1} s",
        s.runs,
        s.steps,
        s.sim_time_us as f64 / 1e6,
        wall
    );
    println!(
        "jobs {} accepted ({} rejected as invalid), {} finished, {} lost with their initiator, {} cancel requests; {} fragments, {} chunks delivered",
        s.jobs, s.jobs_rejected, s.jobs_finished, s.jobs_abandoned, s.cancels, s.fragments, s.deliveries
    );
    println!(
        "faults {}: {} crashes, {} restarts, {} partitions, {} slow links, {} duplicated messages, {} delay spikes",
        s.faults(),
        s.crashes,
        s.restarts,
        s.partitions,
        s.slow_links,
        s.duplicates,
        s.delay_spikes
    );
    println!(
        "hosts {} started; {} declared down ({} while alive); messages {} sent, {} dropped; {} stale results ignored",
        s.hosts, s.declared_down, s.false_suspicions, s.messages, s.messages_dropped, s.stale_results
    );
    println!(
        "fragments reassigned {} ({} re-run on the initiator with chunks), failed with their host {}, skipped {}, cancelled {}; CLUSTER jobs finished by their initiator alone {}; result streams paused {}",
        s.reassigned, s.reruns_with_chunks, s.host_failed, s.skipped, s.cancelled, s.finished_alone, s.result_pauses
    );
    println!(
        "work stealing: {} reclaim requests, {} fragments given back unstarted and reassigned",
        s.reclaims, s.reclaimed
    );
}

fn main() {
    let args = parse();
    let started = Instant::now();
    if let Some(seed) = args.replay {
        let mut sim = sim::Sim::new(seed, args.config.clone());
        sim.set_trace(|line| println!("{line}"));
        let out = sim.run();
        println!();
        print_stats(&out.stats, started.elapsed().as_secs_f64());
        for v in &out.violations {
            println!("VIOLATION {v}");
        }
        if out.violations.is_empty() {
            println!("violations 0");
        } else {
            std::process::exit(1);
        }
        return;
    }
    let next = Arc::new(AtomicU64::new(args.start));
    let end = args.start + args.seeds;
    let total = Arc::new(Mutex::new(SimStats::default()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, total, failures, config) = (
                next.clone(),
                total.clone(),
                failures.clone(),
                args.config.clone(),
            );
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let out = sim::run(seed, &config);
                if let Ok(mut t) = total.lock() {
                    t.merge(&out.stats);
                }
                if !out.violations.is_empty() {
                    if let Ok(mut f) = failures.lock() {
                        f.push(out);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            eprintln!("simulate: a simulation thread panicked");
            std::process::exit(1);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let total = total.lock().map(|t| t.clone()).unwrap_or_default();
    let mut failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    failures.sort_by_key(|f| f.seed);
    print_stats(&total, wall);
    let violations: usize = failures.iter().map(|f| f.violations.len()).sum();
    println!(
        "violations {violations} in {} of {} seeds",
        failures.len(),
        total.runs
    );
    for f in &failures {
        for v in &f.violations {
            println!("VIOLATION {v}");
        }
        println!("  replay: {}", args.config.replay_command(f.seed));
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}

//! Overhead of the runtime on a do-nothing workload: 1,000,000 no-op LOCAL fragments against
//! rayon's `(0..n).into_par_iter().for_each` in the same run, and the peak heap growth for 1M
//! and 10M fragments (it must not grow with the count: no per-fragment allocation is kept).
//!
//! `cargo bench --bench local_overhead`

use fragmenta::{ClassId, Cluster, ExecutionContext, FragmentedJob, Transaction};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: fragmenta_testkit::alloc::ProcessCounting = fragmenta_testkit::alloc::ProcessCounting;

#[derive(Serialize, Deserialize)]
struct Noop;

impl FragmentedJob for Noop {
    const CLASS_ID: ClassId = ClassId::from_name("bench.noop");
    #[inline]
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        black_box(index);
    }
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let n = 1_000_000;
    let cluster = Cluster::embedded();
    let job = Arc::new(Noop);
    // Warm up both pools.
    cluster.execute(&job, n).expect("runs");
    (0..n).into_par_iter().for_each(|i| {
        black_box(i);
    });
    // Cold: each pool gets 20 ms to go idle before the other runs (rayon's workers spin for a
    // while after a call, which on a 2-core machine takes the cores from the other pool).
    // Warm: each side runs 30 times back to back with its own threads still awake.
    let (mut ours, mut rayon) = (Duration::MAX, Duration::MAX);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(20));
        ours = ours.min(best_of(1, || {
            let r = cluster.execute(&job, n).expect("runs");
            assert!(r.is_complete());
        }));
        std::thread::sleep(Duration::from_millis(20));
        rayon = rayon.min(best_of(1, || {
            (0..n).into_par_iter().for_each(|i| {
                black_box(i);
            })
        }));
    }
    let ours_warm = best_of(30, || {
        let r = cluster.execute(&job, n).expect("runs");
        assert!(r.is_complete());
    });
    std::thread::sleep(Duration::from_millis(20));
    let rayon_warm = best_of(30, || {
        (0..n).into_par_iter().for_each(|i| {
            black_box(i);
        })
    });
    for (what, a, b) in [("cold", ours, rayon), ("warm", ours_warm, rayon_warm)] {
        println!(
            "1M no-op LOCAL fragments, {what}: fragmenta {:.3} ms, rayon for_each {:.3} ms (best of 30); ratio {:.2}x (target <= 1.5x)",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
    for small in [1usize, 1000, 100_000] {
        let t = best_of(50, || {
            cluster.execute(&job, small).expect("runs");
        });
        println!(
            "{small:>8} fragments: {:>8.1} us (best of 50)",
            t.as_secs_f64() * 1e6
        );
    }
    for count in [1_000_000usize, 10_000_000] {
        let base = fragmenta_testkit::alloc::process_start();
        let r = cluster.execute(&job, count).expect("runs");
        assert!(r.is_complete());
        let peak = fragmenta_testkit::alloc::process_peak_since(base);
        println!("peak heap growth while running {count:>10} fragments: {peak:>8} bytes");
    }
}

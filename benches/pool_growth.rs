//! A job's cost must not depend on the jobs that ran before it. On one embedded cluster:
//!
//! 1. a CLUSTER job of 20,000 fragments that each spin 50 µs, and one of 1,000,000 no-op
//!    CLUSTER fragments, on a fresh pool;
//! 2. a LOCAL job with `cpu_load 0` and 64 fragments that each sleep 60 ms, which grows the
//!    worker pool to 64 threads (all 64 may run at once);
//! 3. the two CLUSTER jobs of step 1 again, right after, and once more after the pool had time
//!    to shrink.
//!
//! Each figure is the best of 5 runs; the ratio to step 1 must stay near 1 (target <= 1.25x).
//!
//! `cargo bench --bench pool_growth`

use fragmenta::{ClassId, Cluster, ExecutionContext, FragmentedJob, SchedulingMode, Transaction};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct Spin {
    micros: u64,
}

impl FragmentedJob for Spin {
    const CLASS_ID: ClassId = ClassId::from_name("bench.pool_growth.spin");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        if self.micros == 0 {
            black_box(index);
            return;
        }
        let until = Instant::now() + Duration::from_micros(self.micros);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

#[derive(Serialize, Deserialize)]
struct Sleepy;

impl FragmentedJob for Sleepy {
    const CLASS_ID: ClassId = ClassId::from_name("bench.pool_growth.sleepy");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        std::thread::sleep(Duration::from_millis(60));
    }
    fn cpu_load(&self) -> f32 {
        0.0
    }
}

fn best_of(runs: usize, cluster: &Cluster, job: &Arc<Spin>, count: usize) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let r = cluster.execute(job, count).expect("runs");
            assert!(r.is_complete());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let cluster = Cluster::embedded();
    let spin = Arc::new(Spin { micros: 50 });
    let noop = Arc::new(Spin { micros: 0 });
    let measure = |what: &str| {
        let a = best_of(5, &cluster, &spin, 20_000);
        let b = best_of(5, &cluster, &noop, 1_000_000);
        println!(
            "{what:<34} 20,000 x 50 us CLUSTER: {:>8.1} ms   1M no-op CLUSTER: {:>8.1} ms",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3
        );
        (a, b)
    };
    let fresh = measure("fresh pool:");
    let t = Instant::now();
    let r = cluster.execute(&Arc::new(Sleepy), 64).expect("runs");
    assert!(r.is_complete());
    println!(
        "LOCAL cpu_load 0, 64 x 60 ms sleeps: {:.1} ms (all 64 at once: >= 60 ms)",
        t.elapsed().as_secs_f64() * 1e3
    );
    let grown = measure("right after the pool grew:");
    std::thread::sleep(Duration::from_secs(2));
    let later = measure("2 s later:");
    for (what, (a, b)) in [("right after", grown), ("2 s later", later)] {
        println!(
            "{what}: ratio to the fresh pool {:.2}x (20,000 x 50 us), {:.2}x (1M no-op); target <= 1.25x",
            a.as_secs_f64() / fresh.0.as_secs_f64(),
            b.as_secs_f64() / fresh.1.as_secs_f64()
        );
    }
}

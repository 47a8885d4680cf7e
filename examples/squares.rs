//! The README's first job ("A job in 20 lines"), kept identical to it by a test in
//! `tests/mode_examples.rs`: `cargo run --example squares`, or under `fragmenta launch -n 4`.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

#[derive(Serialize, Deserialize, Default)]
struct Squares {
    #[serde(skip)]
    sum: AtomicU64, // merged on the host that started the job; merges run in parallel
}

#[fragmenta::job] // registers the type on every host of the program
impl TypedJob for Squares {
    type Output = u64;
    fn run(&self, f: &Fragment<'_>) -> u64 {
        (f.index * f.index) as u64
    }
    fn merge(&self, _index: usize, square: u64) {
        self.sum.fetch_add(square, Ordering::Relaxed);
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn main() -> Result<(), BoxError> {
    fragmenta::init_logging(); // the runtime's warnings on stderr; RUST_LOG selects more
    fragmenta::spmd(|cluster| {
        // joins; the primary runs this, the other hosts serve
        let job = Arc::new(Squares::default());
        let report = cluster.execute(&job, 1_000)?;
        println!(
            "{} fragments done, sum {}",
            report.done().len(),
            job.sum.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

//! Word count, the "hello world" of distributed computing: each fragment counts the words of its
//! share of the lines and returns its counts; the initiator merges them, wherever they ran.
//!
//! ```text
//! cargo run --release --example word_count [FILE]                      # embedded one-host cluster
//! fragmenta launch -n 4 -- target/release/examples/word_count [FILE]   # four processes (CLUSTER)
//! ```
//!
//! Without FILE it counts a generated text. Only the primary reads the file: the job carries
//! the lines to the other hosts.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Serialize, Deserialize, Default)]
struct WordCount {
    lines: Vec<String>,
    #[serde(skip)]
    counts: Mutex<BTreeMap<String, u64>>, // the merged counts, on the host that started the job
}

#[fragmenta::job]
impl TypedJob for WordCount {
    type Output = BTreeMap<String, u64>;
    fn run(&self, f: &Fragment<'_>) -> Self::Output {
        let mut counts = BTreeMap::new();
        let words = self.lines[f.share(self.lines.len())]
            .iter()
            .flat_map(|l| l.split_whitespace());
        for word in words {
            *counts.entry(word.to_lowercase()).or_insert(0) += 1;
        }
        counts
    }
    fn merge(&self, _index: usize, part: Self::Output) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (word, n) in part {
            *counts.entry(word).or_insert(0) += n;
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn main() -> Result<(), BoxError> {
    fragmenta::init_logging(); // the runtime's warnings on stderr; RUST_LOG selects more
    fragmenta::spmd(|cluster| {
        let lines: Vec<String> = match std::env::args_os().nth(1) {
            Some(path) => std::fs::read_to_string(path)?
                .lines()
                .map(str::to_owned)
                .collect(),
            None => generated_text(20_000),
        };
        let job = Arc::new(WordCount {
            lines,
            ..WordCount::default()
        });
        let report = cluster.execute(&job, 16)?;
        let counts = job.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut top: Vec<(&String, &u64)> = counts.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        println!(
            "{} words, {} distinct, in {} lines",
            counts.values().sum::<u64>(),
            counts.len(),
            job.lines.len()
        );
        for (word, n) in top.iter().take(5) {
            println!("  {word}: {n}");
        }
        let per_host: Vec<String> = report
            .per_host
            .iter()
            .map(|(h, n)| format!("{h}: {n}"))
            .collect();
        println!(
            "{} of {} fragments done on {} host(s); per host: {per_host:?}",
            report.done().len(),
            report.count,
            cluster.hosts().len()
        );
        if !report.is_complete() {
            return Err(format!("the job did not complete: {:?}", report.failures).into());
        }
        Ok(())
    })
}

/// `n` lines of eight words drawn from a small vocabulary by a fixed pseudo-random sequence.
fn generated_text(n: usize) -> Vec<String> {
    const WORDS: [&str; 12] = [
        "fragment", "host", "job", "cluster", "merge", "result", "the", "a", "of", "runs",
        "streams", "shares",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            (0..8)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    WORDS[(state % WORDS.len() as u64) as usize]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

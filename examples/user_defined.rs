//! USER_DEFINED scheduling: data lives on particular hosts, and each fragment goes to the host
//! that holds its part (the sort-last pattern DiCE's `assign_fragments_to_hosts` is made for).
//!
//! ```text
//! cargo run --release --example user_defined                       # one host holds every shard
//! cargo build --release --example user_defined --bin fragmenta
//! target/release/fragmenta launch -n 4 -- target/release/examples/user_defined
//! ```
//!
//! When it starts, every host generates the shards it owns (shard `s` belongs to the
//! `s mod n`-th host of the cluster, in id order) and keeps them in its memory. The job's
//! `assign_fragments_to_hosts` sends fragment `s` to the owner of shard `s`, so only the small
//! per-shard statistics cross the network, never the shards. A fragment that does not find its
//! shard where it runs fails (the report would list it); with a correct assignment none does.
//!
//! On the embedded one-host cluster (no configuration) the one host owns and processes every
//! shard, and the table shows them all on `host-0`.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

/// Number of shards of the data set.
const SHARDS: usize = 12;
/// Values per shard.
const SHARD_LEN: usize = 1 << 20;

/// Shards by number.
type Shards = BTreeMap<usize, Vec<u32>>;

/// The shards this process holds, set once at start-up. Fragments wait for it: another host may
/// send work before this one has finished generating its data.
struct Store {
    shards: Mutex<Option<Shards>>,
    ready: Condvar,
}

static STORE: Store = Store {
    shards: Mutex::new(None),
    ready: Condvar::new(),
};

/// The owner of `shard` among `hosts` (the cluster's hosts in id order).
fn owner(shard: usize, hosts: &[HostId]) -> HostId {
    hosts[shard % hosts.len()]
}

/// Generates shard `s`: pseudo-random "readings" in 0..1_000_000, the same on every run.
fn generate(shard: usize) -> Vec<u32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (shard as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..SHARD_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1_000_000) as u32
        })
        .collect()
}

/// Statistics of one shard, computed where it lives.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Stats {
    host: u32,
    count: u64,
    sum: u64,
    min: u32,
    max: u32,
}

/// Statistics of every shard, each computed on the host holding the shard.
#[derive(Serialize, Deserialize)]
struct ShardStats {
    /// `owners[s]` holds shard `s`.
    owners: Vec<HostId>,
    #[serde(skip)]
    results: Mutex<BTreeMap<usize, Stats>>,
}

impl ShardStats {
    /// Computes the statistics of `shard` from this host's store, or says why it cannot.
    fn compute(&self, shard: usize, ctx: &ExecutionContext) -> Result<Stats, String> {
        let mut store = STORE.shards.lock().unwrap_or_else(|e| e.into_inner());
        while store.is_none() {
            store = STORE.ready.wait(store).unwrap_or_else(|e| e.into_inner());
        }
        let data = store
            .as_ref()
            .and_then(|s| s.get(&shard))
            .ok_or_else(|| format!("shard {shard} does not live on {}", ctx.host()))?;
        Ok(Stats {
            host: ctx.host().0,
            count: data.len() as u64,
            sum: data.iter().map(|&v| u64::from(v)).sum(),
            min: data.iter().copied().min().unwrap_or(0),
            max: data.iter().copied().max().unwrap_or(0),
        })
    }
}

/// A typed job: each fragment returns its shard's [`Stats`], and `merge` records them, whether
/// the shard lived on the initiator or on another host.
#[fragmenta::job(name = "fragmenta.examples.shard-stats")]
impl TypedJob for ShardStats {
    type Output = Stats;

    fn run(&self, f: &Fragment<'_>) -> Stats {
        match self.compute(f.index, f.context) {
            Ok(stats) => stats,
            Err(why) => panic!("{why}"), // reported as a failed fragment
        }
    }

    fn merge(&self, shard: usize, stats: Stats) {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(shard, stats);
    }

    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (slot, owner) in slots.iter_mut().zip(&self.owners) {
            *slot = *owner;
        }
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

fn main() -> Result<(), BoxError> {
    // The runtime's log on stderr; RUST_LOG=fragmenta_runtime=debug adds links, jobs and
    // fragment blocks with their ids.
    fragmenta::init_logging();
    // The embedded one-host cluster, or the cluster `fragmenta launch` (or a config) describes.
    // Every host loads its shards before it serves or starts the job, so this program joins
    // and splits primary from servers itself (`fragmenta::spmd` does both for programs whose
    // hosts have nothing to do first). `ShardStats` registers itself through `#[fragmenta::job]`.
    let cluster = Cluster::builder().join()?;
    let hosts = cluster.hosts();
    let me = cluster.host_id();

    // Load (here: generate) the shards this host owns, then make them visible to fragments.
    let mine: Shards = (0..SHARDS)
        .filter(|&s| owner(s, &hosts) == me)
        .map(|s| (s, generate(s)))
        .collect();
    let held: Vec<usize> = mine.keys().copied().collect();
    *STORE.shards.lock().unwrap_or_else(|e| e.into_inner()) = Some(mine);
    STORE.ready.notify_all();
    println!("{me} holds shards {held:?}");

    if !cluster.is_primary() {
        cluster.serve()?;
        return Ok(());
    }
    let job = Arc::new(ShardStats {
        owners: (0..SHARDS).map(|s| owner(s, &hosts)).collect(),
        results: Mutex::new(BTreeMap::new()),
    });
    let report = cluster.execute(&job, SHARDS)?;

    let results = job.results.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "{:<6} {:<8} {:>9} {:>12} {:>6} {:>7}",
        "SHARD", "HOST", "VALUES", "MEAN", "MIN", "MAX"
    );
    let (mut count, mut sum) = (0u64, 0u64);
    for (shard, s) in results.iter() {
        println!(
            "{:<6} {:<8} {:>9} {:>12.1} {:>6} {:>7}",
            shard,
            HostId(s.host).to_string(),
            s.count,
            s.sum as f64 / s.count.max(1) as f64,
            s.min,
            s.max
        );
        count += s.count;
        sum += s.sum;
    }
    println!(
        "{} of {} shards on {} host(s): {count} values, mean {:.1}",
        results.len(),
        SHARDS,
        hosts.len(),
        sum as f64 / count.max(1) as f64
    );
    let misplaced: Vec<usize> = results
        .iter()
        .filter(|(s, st)| HostId(st.host) != job.owners[**s])
        .map(|(s, _)| *s)
        .collect();
    for f in &report.failures {
        eprintln!("shard {} failed on {}: {}", f.index, f.host, f.reason);
    }
    if !report.is_complete() || !misplaced.is_empty() {
        return Err(format!(
            "incomplete: skipped {:?}, failed {:?}, computed away from their data {misplaced:?}",
            report.skipped(),
            report.failed()
        )
        .into());
    }
    Ok(())
}

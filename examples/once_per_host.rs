//! ONCE_PER_HOST scheduling: one fragment on every remote host of the initiator's sub-cluster,
//! here to take an inventory of the machines (hostname, cores, memory).
//!
//! ```text
//! cargo run --release --example once_per_host                       # one host: its own row only
//! cargo build --release --example once_per_host --bin fragmenta
//! target/release/fragmenta launch -n 4 -- target/release/examples/once_per_host
//! ```
//!
//! The primary runs the job with a fragment count of 0, which means "exactly one fragment per
//! remote host"; each fragment reports its host's name, available cores and memory (from
//! `/proc/meminfo`), and the primary prints a table with its own row first.
//!
//! On the embedded one-host cluster (no configuration) there is no remote host: the job runs no
//! fragment at all (count 0 resolves to 0), and the table holds the initiator's row alone.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// What a host tells about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Facts {
    host: HostId,
    hostname: String,
    cores: usize,
    /// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in KiB (absent off Linux).
    mem_total_kib: Option<u64>,
    mem_available_kib: Option<u64>,
}

impl Facts {
    /// The facts of the machine this runs on.
    fn here(host: HostId) -> Facts {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name: &str| {
            meminfo.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse().ok()
            })
        };
        Facts {
            host,
            hostname,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_kib: field("MemTotal"),
            mem_available_kib: field("MemAvailable"),
        }
    }
}

fn gib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| {
        format!("{:.1} GiB", k as f64 / (1u64 << 20) as f64)
    })
}

/// Asks every remote host for its [`Facts`]: a typed job, its fragments return them.
#[derive(Serialize, Deserialize, Default)]
struct Inventory {
    #[serde(skip)]
    rows: Mutex<Vec<Facts>>,
}

#[fragmenta::job(name = "fragmenta.examples.inventory")]
impl TypedJob for Inventory {
    type Output = Facts;

    fn run(&self, f: &Fragment<'_>) -> Facts {
        Facts::here(f.host())
    }

    fn merge(&self, _: usize, facts: Facts) {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(facts);
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::OncePerHost
    }

    fn cpu_load(&self) -> f32 {
        0.0 // reading a few files: it need not wait for a free core
    }
}

fn main() -> Result<(), BoxError> {
    // The runtime's log on stderr; RUST_LOG=fragmenta_runtime=debug adds links, jobs and
    // fragment blocks with their ids.
    fragmenta::init_logging();
    // Joins the cluster (or the embedded one), runs the closure on the primary, serves on the
    // others.
    fragmenta::spmd(|cluster| {
        let job = Arc::new(Inventory::default());
        let report = cluster.execute(&job, 0)?; // 0: exactly one fragment per remote host
        let mut rows = job.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        rows.sort_by_key(|f| f.host);
        rows.insert(0, Facts::here(cluster.host_id()));

        println!(
            "{:<10} {:<24} {:>5} {:>10} {:>10}",
            "HOST", "HOSTNAME", "CORES", "MEMORY", "AVAILABLE"
        );
        for (i, f) in rows.iter().enumerate() {
            let host = format!("{}{}", f.host, if i == 0 { "*" } else { "" });
            println!(
                "{:<10} {:<24} {:>5} {:>10} {:>10}",
                host,
                f.hostname,
                f.cores,
                gib(f.mem_total_kib),
                gib(f.mem_available_kib)
            );
        }
        if report.count == 0 {
            println!("* the initiator; no remote host in its sub-cluster, so no fragment ran");
        } else {
            println!(
                "* the initiator; {} of {} remote hosts answered",
                report.done().len(),
                report.count
            );
        }
        if !report.is_complete() {
            return Err(format!("hosts did not answer: {:?}", report.failures).into());
        }
        Ok(())
    })
}

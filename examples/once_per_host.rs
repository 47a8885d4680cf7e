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

use fragmenta::{
    ClassId, Cluster, ExecutionContext, FragmentedJob, HostId, ResultReader, ResultWriter,
    SchedulingMode, Transaction,
};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// What a host tells about itself.
#[derive(Clone, Debug)]
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

    /// One line: `host \t hostname \t cores \t total \t available` (`-` for unknown).
    fn encode(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.host.0,
            self.hostname.replace('\t', " "),
            self.cores,
            opt(self.mem_total_kib),
            opt(self.mem_available_kib)
        )
    }

    fn decode(text: &str) -> Option<Facts> {
        let f: Vec<&str> = text.split('\t').collect();
        let [host, hostname, cores, total, available] = f.as_slice() else {
            return None;
        };
        Some(Facts {
            host: HostId(host.parse().ok()?),
            hostname: hostname.to_string(),
            cores: cores.parse().ok()?,
            mem_total_kib: total.parse().ok(),
            mem_available_kib: available.parse().ok(),
        })
    }
}

fn gib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| {
        format!("{:.1} GiB", k as f64 / (1u64 << 20) as f64)
    })
}

/// Asks every remote host for its [`Facts`].
#[derive(Serialize, Deserialize, Default)]
struct Inventory {
    #[serde(skip)]
    rows: Mutex<Vec<Facts>>,
}

impl FragmentedJob for Inventory {
    const CLASS_ID: ClassId = ClassId::from_name("fragmenta.examples.inventory");

    // ONCE_PER_HOST never runs a fragment on the initiator; this is here for completeness.
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, ctx: &ExecutionContext) {
        let facts = Facts::here(ctx.host());
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(facts);
    }

    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_all(Facts::here(ctx.host()).encode().as_bytes())
    }

    fn receive_remote_result(
        &self,
        result: &mut ResultReader,
        _: &Transaction,
        _: usize,
        _: usize,
    ) {
        if let Some(facts) = Facts::decode(&String::from_utf8_lossy(result.bytes())) {
            self.rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(facts);
        }
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::OncePerHost
    }

    fn cpu_load(&self) -> f32 {
        0.0 // reading a few files: it need not wait for a free core
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    fragmenta::init_logging();
    let cluster = Cluster::builder().register::<Inventory>().join()?;
    if !cluster.is_primary() {
        cluster.serve()?;
        return Ok(());
    }
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
            report.done.len(),
            report.count
        );
    }
    if !report.is_complete() {
        return Err(format!("hosts did not answer: {:?}", report.failures).into());
    }
    Ok(())
}

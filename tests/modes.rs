//! Every mode scenario, written once (`modes/scenarios.rs`), run on three kinds of cluster:
//!
//! - `<scenario>::embedded`: the embedded one-host cluster, shaped as the scenario's
//!   one-host layout;
//! - `<scenario>::in_process`: every host of the scenario's layout in this process, full
//!   runtimes linked over an in-process network (`ClusterBuilder::in_process`);
//! - `<scenario>::processes`: real processes started by `fragmenta launch -n N --config FILE
//!   -- PROG` on a configuration with certificates on free loopback ports, where PROG is this
//!   test binary in host mode (`FRAGMENTA_TEST_SCENARIO` set), linked over QUIC.
//!
//! The scenarios: `sub_clusters` (ONCE_PER_HOST's reach, USER_DEFINED across sub-clusters, the
//! invalid arguments), `gpus` (GPU placement, CPU and GPU loads, thread limits), `concurrent`
//! (three initiators × 20 jobs), `priority`, `cluster_chunks` (CLUSTER order, replicas per
//! host, streamed chunks), `chunk_sizes` (remote chunks of every size, reassembled), `panic`
//! and `cancel`. Two have no embedded run: `sub_clusters` checks how jobs reach other hosts and
//! sub-clusters, and `chunk_sizes` what streams from other hosts (the one-host meaning of each
//! mode is `tests/single_host.rs`'s).
//!
//! Every fragment records, on the host that runs it, its index, the GPUs its `ExecutionContext`
//! names and the order it started in; every host measures its peak concurrency per job, its
//! peak load per GPU ordinal and its peak CPU load, and counts the replicas it deserialized,
//! each in a ledger of its own (several per process for an in-process cluster). The primary
//! asserts on its `JobReport`s and on what each remote host sends back through a `Report` job
//! (USER_DEFINED, one fragment per host); remote hosts print their peaks. Non-primary hosts
//! that initiate jobs leave a verdict that the primary collects the same way before it shuts
//! the cluster down; on an in-process cluster the other hosts' `serve()` must then return
//! `Ok`.
//!
//! A custom harness (no libtest): `main` is either the scenario runner or a host program.

mod common;
#[path = "modes/jobs.rs"]
mod jobs;
#[path = "modes/scenarios.rs"]
mod scenarios;

use common::harness::Outcome;
use fragmenta::*;
use jobs::{reset_gauges, with_gauges, Probe, Report, Sizes, Sum};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCENARIO: &str = "FRAGMENTA_TEST_SCENARIO";

/// (sub-cluster, cores, GPUs) of each host, ids 0, 1, …
type Layout = &'static [(u32, u32, u32)];

/// A scenario: the primary's part, the hosts it runs on, and its one-host shape.
struct Scenario {
    name: &'static str,
    /// The hosts of the in-process and multi-process runs.
    layout: Layout,
    /// The one host of the embedded run; `None`: no embedded run (see the module doc).
    embedded: Option<Layout>,
    primary: fn(&Cluster, Layout) -> Result<(), String>,
}

const SCENARIOS: &[Scenario] = &[
    // Hosts 0-2 in sub-cluster 0, 3-4 in sub-cluster 1; no GPU anywhere.
    Scenario {
        name: "sub_clusters",
        layout: &[(0, 2, 0), (0, 2, 0), (0, 2, 0), (1, 2, 0), (1, 2, 0)],
        embedded: None,
        primary: scenarios::sub_clusters,
    },
    // Hosts with different cores and GPUs.
    Scenario {
        name: "gpus",
        layout: &[(0, 2, 0), (0, 4, 1), (0, 3, 2), (0, 1, 0)],
        embedded: Some(&[(0, 3, 2)]),
        primary: scenarios::gpus,
    },
    // Three initiators × 20 jobs at once (one on the embedded cluster).
    Scenario {
        name: "concurrent",
        layout: &[(0, 2, 0), (0, 2, 0), (0, 2, 0), (0, 2, 0)],
        embedded: Some(&[(0, 2, 0)]),
        primary: scenarios::concurrent,
    },
    // The last host has one core, so its fragments wait in its queue.
    Scenario {
        name: "priority",
        layout: &[(0, 2, 0), (0, 1, 0)],
        embedded: Some(&[(0, 1, 0)]),
        primary: scenarios::priority,
    },
    Scenario {
        name: "cluster_chunks",
        layout: &[(0, 2, 0), (0, 2, 0), (0, 2, 0), (0, 2, 0)],
        embedded: Some(&[(0, 2, 0)]),
        primary: scenarios::cluster_chunks,
    },
    // Chunks of every size from hosts 1-3 (no embedded run: nothing streams on one host).
    Scenario {
        name: "chunk_sizes",
        layout: &[(0, 2, 0), (0, 2, 0), (0, 2, 0), (0, 2, 0)],
        embedded: None,
        primary: scenarios::chunk_sizes,
    },
    Scenario {
        name: "panic",
        layout: &[(0, 2, 0), (0, 2, 0), (0, 2, 0)],
        embedded: Some(&[(0, 2, 0)]),
        primary: scenarios::panic,
    },
    Scenario {
        name: "cancel",
        layout: &[(0, 2, 0), (0, 2, 0), (0, 2, 0)],
        embedded: Some(&[(0, 2, 0)]),
        primary: scenarios::cancel,
    },
];

fn find(name: &str) -> Result<&'static Scenario, String> {
    SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no scenario {name}"))
}

/// A builder with the scenarios' job types.
fn builder() -> ClusterBuilder {
    Cluster::builder()
        .register::<Probe>()
        .register::<Report>()
        .register::<Sum>()
        .register::<Sizes>()
}

/// The part of a non-primary host that initiates jobs of its own, if it has one: its verdict.
fn other_part(scenario: &str, cluster: &Cluster) -> Option<Result<String, String>> {
    match (scenario, cluster.host_id().0) {
        ("sub_clusters", 3) => Some(scenarios::once_from_sub_cluster_1(cluster)),
        ("concurrent", 1 | 2) => Some(scenarios::many_jobs(cluster, 20)),
        _ => None,
    }
}

/// Runs a non-primary host's part and leaves its verdict in its ledger.
fn leave_verdict(scenario: &str, cluster: &Cluster) {
    if let Some(v) = other_part(scenario, cluster) {
        let text = match v {
            Ok(s) => format!("ok: {s}"),
            Err(e) => format!("error: {e}"),
        };
        println!("verdict {text}");
        with_gauges(cluster.host_id().0, |g| g.ledger.verdict = Some(text));
    }
}

/// The program every launched process runs.
fn host_main(name: &str) -> Result<(), String> {
    let scenario = find(name)?;
    let cluster = builder().join().map_err(|e| e.to_string())?;
    if cluster.is_primary() {
        (scenario.primary)(&cluster, scenario.layout)?;
        println!("{name} ok");
        return Ok(());
    }
    leave_verdict(name, &cluster);
    cluster.serve().map_err(|e| e.to_string())
}

/// The embedded run: one host shaped as `shape`.
fn run_embedded(s: &Scenario, shape: Layout) -> Result<Outcome, String> {
    reset_gauges();
    let (_, cores, gpus) = shape[0];
    let cluster = builder()
        .cores(cores as f32)
        .gpus(gpus)
        .embedded()
        .map_err(|e| e.to_string())?;
    (s.primary)(&cluster, shape)?;
    Ok(Outcome::Passed)
}

/// The in-process run: every host of the layout in this process.
fn run_in_process(s: &Scenario) -> Result<Outcome, String> {
    reset_gauges();
    let shapes: Vec<testing::HostShape> = s
        .layout
        .iter()
        .map(|&(sub_cluster, cores, gpus)| testing::HostShape {
            sub_cluster,
            cores,
            gpus,
        })
        .collect();
    let config = testing::config_of(&shapes).map_err(|e| e.to_string())?;
    let mut hosts = builder()
        .in_process(&config)
        .map_err(|e| e.to_string())?
        .into_iter();
    let primary = hosts.next().ok_or("no primary")?;
    let name = s.name;
    let others: Vec<_> = hosts
        .map(|c| {
            std::thread::spawn(move || {
                leave_verdict(name, &c);
                c.serve()
            })
        })
        .collect();
    let result = (s.primary)(&primary, s.layout);
    // Shutting the primary down releases the others' serve().
    drop(primary);
    for o in others {
        let served = o.join().map_err(|_| "a host's part panicked".to_string())?;
        if result.is_ok() {
            served.map_err(|e| format!("serve() of a host: {e}"))?;
        }
    }
    result.map(|()| Outcome::Passed)
}

/// Writes certificates and a config for `layout` on free loopback ports into `dir`.
fn write_config(dir: &Path, layout: Layout) -> PathBuf {
    let lines: Vec<String> = layout
        .iter()
        .map(|(sub, cores, gpus)| format!("sub_cluster = {sub}\ncores = {cores}\ngpus = {gpus}"))
        .collect();
    fragmenta_testkit::loopback::write(dir, "modes", "", &lines)
}

/// Runs the scenario on a cluster of `layout`; returns the exit status and the output. A
/// scenario that hangs is stopped after a generous limit (the launcher's children die with it).
fn launch(scenario: &str, layout: Layout) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), layout);
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fragmenta"))
        .arg("launch")
        .arg("-n")
        .arg(layout.len().to_string())
        .arg("--config")
        .arg(&config)
        .arg("--")
        .arg(exe)
        .env(SCENARIO, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the launcher");
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = std::io::Read::read_to_string(&mut r, &mut s);
            }
            s
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let limit = Instant::now() + Duration::from_secs(300);
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code().unwrap_or(-1),
            Ok(None) if Instant::now() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break -2;
            }
        }
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (code, text)
}

fn main() {
    common::harness::run_host_if_child(SCENARIO, host_main);
    let mut names: Vec<&'static str> = Vec::new();
    for s in SCENARIOS {
        if s.embedded.is_some() {
            names.push(leak(format!("{}::embedded", s.name)));
        }
        names.push(leak(format!("{}::in_process", s.name)));
        names.push(leak(format!("{}::processes", s.name)));
    }
    common::harness::run_named("modes", &names, |test| {
        let (name, kind) = test.split_once("::").ok_or("bad test name")?;
        let s = find(name)?;
        match kind {
            "embedded" => run_embedded(s, s.embedded.ok_or("no embedded run")?),
            "in_process" => run_in_process(s),
            _ => common::harness::launched(launch(name, s.layout), |out| {
                out.contains(&format!("[host-0] {name} ok"))
                    .then_some(())
                    .ok_or_else(|| "no success line".to_string())
            }),
        }
    })
}

/// A test name that lives as long as the runner.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

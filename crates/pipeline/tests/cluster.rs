//! Cluster mode: the passthrough across 3 hosts of a real QUIC cluster on loopback (each
//! operator a one-fragment USER_DEFINED job on its `x-fragmenta` host, inputs fetched across
//! hosts), and a fault on one host skipping its consumer on another.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fragmenta_fastio::FastIo;
use fragmenta_job::HostId;
use fragmenta_pipeline::cluster::{install_registry, FreeJob, OperatorJob};
use fragmenta_pipeline::passthrough::{self, NPZ_FILE, PASSTHROUGH_YAML, VERDICT_FILE};
use fragmenta_pipeline::{
    stream_dir, ExecuteContext, Operator, OperatorRegistry, OperatorResult, OperatorState,
    Pipeline, PipelineDef, Ports, PrepareContext, RunOptions,
};
use fragmenta_runtime::{Cluster, ClusterConfig};

fn loopback_config(dir: &std::path::Path, n: usize) -> ClusterConfig {
    let lines = fragmenta_testkit::loopback::hosts(n, "cores = 2\nfastio_capacity_mib = 256");
    fragmenta_testkit::loopback::config(
        dir,
        "pipeline",
        fragmenta_testkit::loopback::FAST_LIVENESS,
        &lines,
    )
}

type Hosts = Arc<Mutex<BTreeMap<String, u32>>>;

/// Runs a passthrough operator and records the host it ran on.
struct OnHost(Box<dyn Operator>, Hosts);

impl Operator for OnHost {
    fn ports(&self) -> Ports {
        self.0.ports()
    }
    fn prepare(&mut self, ctx: &PrepareContext<'_>) -> OperatorResult {
        self.0.prepare(ctx)
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        self.1
            .lock()
            .unwrap()
            .insert(ctx.operator().to_owned(), ctx.host().unwrap_or(u32::MAX));
        if ctx.operator() == "fastio-to-npz" && std::env::var_os("FAIL_NPZ").is_some() {
            return Err("npz writer broke".into());
        }
        self.0.execute(ctx)
    }
}

fn registry(hosts: &Hosts) -> OperatorRegistry {
    let (a, b, c) = (Arc::clone(hosts), Arc::clone(hosts), Arc::clone(hosts));
    OperatorRegistry::new()
        .register("clara/nifti-to-fastio", move || {
            OnHost(Box::new(passthrough::NiftiToFastio), Arc::clone(&a))
        })
        .register("clara/fastio-to-npz", move || {
            OnHost(Box::new(passthrough::FastioToNpz), Arc::clone(&b))
        })
        .register("clara/compare-input-to-npz", move || {
            OnHost(Box::new(passthrough::CompareInputToNpz), Arc::clone(&c))
        })
}

fn placed(text: &str, placements: &[(&str, u32)]) -> String {
    let mut text = text.to_owned();
    for (op, host) in placements {
        let line = format!("- name: {op}\n");
        assert!(text.contains(&line));
        text = text.replacen(
            &line,
            &format!("{line}  x-fragmenta:\n    host: {host}\n"),
            1,
        );
    }
    text
}

#[test]
fn passthrough_across_three_cluster_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), 3);
    let clusters: Vec<Cluster> = (0..3u32)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<OperatorJob>()
                    .register::<FreeJob>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let hosts: Hosts = Arc::default();
    // All three hosts live in this process: one registry serves them all.
    install_registry(registry(&hosts));
    let text = placed(
        PASSTHROUGH_YAML,
        &[
            ("nifti-to-fastio", 1),
            ("fastio-to-npz", 2),
            ("compare-original-to-output", 0),
        ],
    );
    let pipeline = Pipeline::new(PipelineDef::parse(&text).unwrap(), registry(&hosts)).unwrap();
    let (payload, dims) = support::payload(dir.path());
    let out = dir.path().join("out");
    let report = pipeline
        .run_cluster(&clusters[0], &RunOptions::new(&payload, &out))
        .unwrap();
    assert!(report.succeeded(), "{report}");
    assert_eq!(
        *hosts.lock().unwrap(),
        BTreeMap::from([
            ("nifti-to-fastio".to_owned(), 1),
            ("fastio-to-npz".to_owned(), 2),
            ("compare-original-to-output".to_owned(), 0),
        ])
    );
    support::assert_npz_matches(
        &stream_dir(&out, "fastio-to-npz", "numpy_npz").join(NPZ_FILE),
        &payload,
        dims,
    );
    let verdict = stream_dir(&out, "compare-original-to-output", "truth-val").join(VERDICT_FILE);
    assert_eq!(std::fs::read_to_string(verdict).unwrap(), "true");
    for c in &clusters {
        support::assert_empty(c.fastio().stats().unwrap());
    }

    // A fault on host 2 skips the consumer on host 0; host 1's published variables are freed.
    std::env::set_var("FAIL_NPZ", "1");
    let out = dir.path().join("out-fail");
    let report = pipeline
        .run_cluster(&clusters[0], &RunOptions::new(&payload, &out))
        .unwrap();
    std::env::remove_var("FAIL_NPZ");
    let r = |n: &str| report.operator(n).unwrap().clone();
    assert_eq!(r("nifti-to-fastio").state, OperatorState::Completed);
    assert_eq!(r("fastio-to-npz").state, OperatorState::Faulted);
    assert_eq!(r("fastio-to-npz").messages, vec!["npz writer broke"]);
    assert_eq!(
        r("compare-original-to-output").state,
        OperatorState::Skipped
    );
    for c in &clusters {
        support::assert_empty(c.fastio().stats().unwrap());
    }

    // An operator placed on a host the cluster does not have is faulted before anything runs.
    let text = placed(PASSTHROUGH_YAML, &[("nifti-to-fastio", 9)]);
    let pipeline = Pipeline::new(PipelineDef::parse(&text).unwrap(), registry(&hosts)).unwrap();
    let report = pipeline
        .run_cluster(
            &clusters[0],
            &RunOptions::new(&payload, dir.path().join("o3")),
        )
        .unwrap();
    assert_eq!(
        report.operators[0].messages,
        vec!["host 9 is not a host of the cluster"]
    );
    assert_eq!(report.operators[1].state, OperatorState::Skipped);
}

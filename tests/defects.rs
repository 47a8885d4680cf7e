//! What a user program must not run into, each against real clusters: embedded ones, and real
//! nodes in this process talking QUIC with mutual TLS on loopback.

mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize, Serializer};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Writes certificates and a config for one host per entry of `extra` (ids 0..n), each host
/// with its own extra lines (`gpus = 2`…).
fn config_with(dir: &Path, extra: &[&str]) -> ClusterConfig {
    let lines: Vec<String> = extra.iter().map(|e| format!("cores = 2\n{e}")).collect();
    fragmenta_testkit::loopback::config(
        dir,
        "test",
        fragmenta_testkit::loopback::FAST_LIVENESS,
        &lines,
    )
}

/// Joins every host of `config`, each on its own thread (joining waits for the others);
/// `builder(h)` makes host `h`'s builder.
fn join_all(
    config: &ClusterConfig,
    builder: impl Fn(u32) -> ClusterBuilder + Sync,
) -> Vec<Cluster> {
    let n = config.hosts().len() as u32;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|h| {
                let config = config.clone();
                let b = builder(h);
                s.spawn(move || b.join_config(config, HostId(h)).expect("join"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A job whose mode, loads, placement and receiving side the test sets.
#[derive(Serialize, Deserialize, Default)]
struct Probe {
    /// 0 LOCAL, 1 CLUSTER, 2 USER_DEFINED (fragment i on `hosts[i % len]`).
    mode: u8,
    gpu_load: f32,
    cpu_load: Option<f32>,
    hosts: Vec<u32>,
    /// Fragment whose result `receive_remote_result` panics on.
    panic_receiving: Option<usize>,
    /// Each remote fragment flushes this many chunks before its last.
    flushes: u32,
    unordered: bool,
    #[serde(skip)]
    received: Mutex<Vec<(usize, u32)>>,
    #[serde(skip)]
    receiving: AtomicUsize,
    #[serde(skip)]
    overlapped: AtomicBool,
}

impl FragmentedJob for Probe {
    const CLASS_ID: ClassId = ClassId::from_name("test.defects.probe");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        for _ in 0..self.flushes {
            out.write_all(&index.to_le_bytes())?;
            out.flush()?;
        }
        out.write_all(&index.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        if self.receiving.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        self.received.lock().unwrap().push((index, r.seq()));
        self.receiving.fetch_sub(1, Ordering::SeqCst);
        if self.panic_receiving == Some(index) {
            panic!("lost the result of {index}");
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        if self.hosts.is_empty() {
            return;
        }
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId(self.hosts[i % self.hosts.len()]);
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        match self.mode {
            0 => SchedulingMode::Local,
            1 => SchedulingMode::Cluster,
            _ => SchedulingMode::UserDefined,
        }
    }
    fn gpu_load(&self) -> f32 {
        self.gpu_load
    }
    fn cpu_load(&self) -> f32 {
        self.cpu_load.unwrap_or(1.0)
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        self.unordered
    }
}

#[test]
fn a_user_defined_count_the_host_cannot_hold_is_a_typed_error() {
    let cluster = Cluster::embedded();
    let job = Arc::new(Probe {
        mode: 2,
        hosts: vec![0],
        ..Probe::default()
    });
    for count in [usize::MAX, 1 << 38, usize::MAX / 2] {
        assert_eq!(
            cluster.submit(&job, count).err(),
            Some(ExecuteError::InvalidArgument(
                InvalidArgument::CountTooLarge(count)
            )),
            "count {count}"
        );
    }
    // The cluster is unharmed, and counts that fit run.
    let report = cluster.execute(&job, 1000).unwrap();
    assert!(report.is_complete(), "{report:?}");
}

#[test]
fn gpus_are_refused_when_they_differ_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &["gpus = 2"]);
    let err = Cluster::builder()
        .gpus(4)
        .join_config(config.clone(), HostId(0))
        .unwrap_err();
    assert_eq!(
        err,
        JoinError::GpusDiffer {
            host: HostId(0),
            configured: 2,
            asked: 4
        }
    );
    assert!(err.to_string().contains("gpus(4)"), "{err}");
    // The configuration's count (asked for or not) runs the GPU job, as embedded does.
    let job = Arc::new(Probe {
        gpu_load: 1.0,
        cpu_load: Some(0.0),
        ..Probe::default()
    });
    let cluster = Cluster::builder()
        .gpus(2)
        .join_config(config, HostId(0))
        .unwrap();
    assert!(cluster.execute(&job, 8).unwrap().is_complete());
    drop(cluster);
    let embedded = Cluster::builder().gpus(2).embedded().unwrap();
    assert!(embedded.execute(&job, 8).unwrap().is_complete());
}

#[test]
fn gpu_errors_and_failures_say_what_is_true() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &["", "gpus = 2"]);
    let clusters = join_all(&config, |_| Cluster::builder().register::<Probe>());
    let primary = &clusters[0];

    // A LOCAL GPU job on an initiator without GPUs, while host 1 has two.
    let local = Arc::new(Probe {
        gpu_load: 0.5,
        ..Probe::default()
    });
    let err = primary.execute(&local, 4).unwrap_err();
    assert_eq!(
        err,
        ExecuteError::InvalidArgument(InvalidArgument::NoLocalGpu {
            gpu_load: 0.5,
            host: HostId(0)
        })
    );
    let text = err.to_string();
    assert!(!text.contains("no host of the cluster"), "{text}");
    assert!(text.contains("host-0 has no GPU"), "{text}");

    // USER_DEFINED GPU fragments put on the GPU-less host 0 fail as such, not as an error the
    // user's code returned; those on host 1 run.
    let placed = Arc::new(Probe {
        mode: 2,
        gpu_load: 1.0,
        hosts: vec![0, 1],
        ..Probe::default()
    });
    let report = primary.execute(&placed, 6).unwrap();
    assert_eq!(report.failed().to_vec(), vec![0, 2, 4], "{report:?}");
    assert_eq!(report.done().to_vec(), vec![1, 3, 5], "{report:?}");
    for f in &report.failures {
        assert_eq!(f.host, HostId(0));
        assert_eq!(f.reason, FailureReason::NoGpu(HostId(0)));
    }
}

#[test]
fn a_panic_receiving_a_result_fails_its_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &["", ""]);
    let clusters = join_all(&config, |_| Cluster::builder().register::<Probe>());
    let job = Arc::new(Probe {
        mode: 2,
        hosts: vec![1],
        flushes: 1,
        panic_receiving: Some(3),
        ..Probe::default()
    });
    let report = clusters[0].execute(&job, 8).unwrap();
    assert_eq!(report.failed().to_vec(), vec![3], "{report:?}");
    assert_eq!(report.done().len(), 7);
    assert_eq!(report.failures.len(), 1);
    let failure = &report.failures[0];
    assert_eq!(
        failure.reason,
        FailureReason::ReceivePanicked("lost the result of 3".into())
    );
    // The fragment's later chunk is not delivered once receiving it failed.
    let got = job.received.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|(f, _)| *f == 3).count(), 1, "{got:?}");
    assert_eq!(got.len(), 7 * 2 + 1);
}

#[test]
fn a_host_without_the_job_type_is_excluded_from_a_cluster_job() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &["", "", ""]);
    // Host 2's program does not register the job type.
    let clusters = join_all(&config, |h| {
        let b = Cluster::builder();
        if h == 2 {
            b
        } else {
            b.register::<Probe>()
        }
    });
    let job = Arc::new(Probe {
        mode: 1,
        unordered: true,
        ..Probe::default()
    });
    let report = clusters[0].execute(&job, 240).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.done_on(HostId(2)), 0);
    assert_eq!(
        report.excluded_hosts,
        vec![(HostId(2), FailureReason::UnknownClass(Probe::CLASS_ID))]
    );
    // The next job learns it again, and again runs everything elsewhere.
    let report = clusters[0].execute(&job, 240).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.excluded_hosts.len(), 1);
}

/// A field that counts its serializations, or refuses to be serialized.
#[derive(Deserialize, Default)]
struct Tag {
    refuse: bool,
}

static TAG_SERIALIZED: AtomicUsize = AtomicUsize::new(0);

impl Serialize for Tag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.refuse {
            return Err(serde::ser::Error::custom("this job never leaves its host"));
        }
        TAG_SERIALIZED.fetch_add(1, Ordering::SeqCst);
        s.serialize_bool(false)
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Tagged {
    tag: Tag,
    #[serde(skip)]
    ran: AtomicUsize,
}

impl FragmentedJob for Tagged {
    const CLASS_ID: ClassId = ClassId::from_name("test.defects.tagged");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        self.ran.fetch_add(1, Ordering::Relaxed);
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

#[test]
fn a_configured_one_host_cluster_never_serializes_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &[""]);
    let cluster = Cluster::builder().join_config(config, HostId(0)).unwrap();
    let job = Arc::new(Tagged {
        tag: Tag { refuse: true },
        ..Tagged::default()
    });
    let report = cluster.execute(&job, 1000).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(job.ran.load(Ordering::Relaxed), 1000);
}

#[test]
fn a_cluster_job_is_serialized_once_and_received_one_chunk_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &["", "", ""]);
    let clusters = join_all(&config, |_| {
        Cluster::builder().register::<Tagged>().register::<Probe>()
    });
    TAG_SERIALIZED.store(0, Ordering::SeqCst);
    let job = Arc::new(Tagged::default());
    let report = clusters[0].execute(&job, 3000).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert!(report.done_on(HostId(1)) + report.done_on(HostId(2)) > 0);
    assert_eq!(TAG_SERIALIZED.load(Ordering::SeqCst), 1, "once per job");
    // Non-sequential chunks still reach `receive_remote_result` one at a time.
    let job = Arc::new(Probe {
        mode: 2,
        hosts: vec![1, 2],
        flushes: 2,
        unordered: true,
        ..Probe::default()
    });
    let report = clusters[0].execute(&job, 200).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(job.received.lock().unwrap().len(), 600);
    assert!(!job.overlapped.load(Ordering::SeqCst));
}

#[test]
fn join_errors_do_not_repeat_themselves_or_name_missing_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &[""]);
    let addr = config.host(HostId(0)).unwrap().socket_addr().unwrap();
    let _taken = std::net::UdpSocket::bind(addr).unwrap();
    let err = Cluster::builder()
        .join_config(config, HostId(0))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, JoinError::Bind { .. }), "{err:?}");
    assert_eq!(text.matches("cannot bind").count(), 1, "{text}");
    assert!(text.contains(&addr.to_string()), "{text}");
    // A host the configuration does not list is named as such.
    let other = tempfile::tempdir().unwrap();
    let err = Cluster::builder()
        .join_config(config_with(other.path(), &[""]), HostId(9))
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(
        err,
        JoinError::UnknownHost {
            host: HostId(9),
            known: vec![HostId(0)]
        }
    );
    assert!(!text.contains("--host-id"), "{text}");
    assert!(text.contains("host-9"), "{text}");
}

/// Runs this test binary again for test `name` with `env` set, the launcher variables cleared;
/// returns (success, stdout + stderr).
fn rerun(name: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"]);
    for var in [
        "FRAGMENTA_CONFIG",
        "FRAGMENTA_HOST_ID",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_program_without_a_host_id_is_told_what_it_can_do() {
    if std::env::var_os("DEFECTS_CHILD").is_some() {
        let err = Cluster::builder().join().unwrap_err();
        println!("join error: {err}");
        assert!(matches!(err, JoinError::NoHostId), "{err:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &["", ""]);
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, config.to_toml_string()).unwrap();
    let (ok, out) = rerun(
        "a_program_without_a_host_id_is_told_what_it_can_do",
        &[
            ("DEFECTS_CHILD", "1"),
            ("FRAGMENTA_CONFIG", file.to_str().unwrap()),
        ],
    );
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find_map(|l| l.split_once("join error:").map(|(_, e)| e))
        .unwrap_or_else(|| panic!("no join error in\n{out}"));
    assert!(!line.contains("--host-id"), "{line}");
    assert!(line.contains("FRAGMENTA_HOST_ID"), "{line}");
}

#[test]
fn init_logging_shows_the_runtime_log_on_stderr() {
    if std::env::var_os("DEFECTS_CHILD").is_some() {
        assert!(fragmenta::init_logging());
        assert!(!fragmenta::init_logging(), "a second call changes nothing");
        let cluster = Cluster::embedded();
        cluster.fastio_socket().unwrap();
        return;
    }
    let name = "init_logging_shows_the_runtime_log_on_stderr";
    let (ok, out) = rerun(name, &[("DEFECTS_CHILD", "1")]);
    assert!(ok, "{out}");
    assert!(out.contains("fast i/o server listening"), "{out}");
    // RUST_LOG selects: errors only hides the notice.
    let (ok, out) = rerun(name, &[("DEFECTS_CHILD", "1"), ("RUST_LOG", "error")]);
    assert!(ok, "{out}");
    assert!(!out.contains("fast i/o server listening"), "{out}");
}

/// A clean shutdown is not a failure: neither the primary nor the host it stops logs a host
/// going down (at the default level, where a real loss is a warning).
#[test]
fn a_clean_shutdown_logs_no_host_down() {
    if std::env::var_os("DEFECTS_CHILD_SHUTDOWN").is_some() {
        assert!(fragmenta::init_logging());
        let dir = tempfile::tempdir().unwrap();
        let config = common::loopback_config(dir.path(), 2, "");
        let clusters: Vec<Cluster> = std::thread::scope(|s| {
            let joins: Vec<_> = (0..2u32)
                .map(|h| {
                    let config = config.clone();
                    s.spawn(move || Cluster::builder().join_config(config, HostId(h)).unwrap())
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let mut it = clusters.into_iter();
        let primary = it.next().unwrap();
        let other = it.next().unwrap();
        let served = std::thread::spawn(move || other.serve());
        drop(primary);
        assert_eq!(served.join().unwrap(), Ok(()));
        // Whatever the closing connections report comes within this time.
        std::thread::sleep(std::time::Duration::from_millis(300));
        return;
    }
    let (ok, out) = rerun(
        "a_clean_shutdown_logs_no_host_down",
        &[("DEFECTS_CHILD_SHUTDOWN", "1")],
    );
    assert!(ok, "{out}");
    assert!(out.contains("shutdown requested"), "{out}");
    assert!(!out.contains("host down"), "{out}");
}

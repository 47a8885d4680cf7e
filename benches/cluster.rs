//! Multi-host figures on a 4-host loopback cluster (four nodes in this process, each with its
//! own QUIC endpoint and mutual TLS, exactly as separate processes would talk):
//!
//! 1. no-op CLUSTER fragments per second: 200,000 fragments each returning 8 bytes;
//! 2. result bandwidth: 8 remote fragments each streaming 64 MiB to the initiator, against a raw
//!    QUIC stream between two endpoints with the same certificates, in the same run;
//! 3. peak heap growth of the process while the 512 MiB stream in (bounded: streamed, not
//!    buffered, since the job allows non-sequential chunks);
//! 4. Fast I/O fetch across hosts;
//! 5. peak RSS of the initiator and of a sender, each its own process, for a slow receiver
//!    (`receive_remote_result` taking 20 ms per 4 MiB chunk of 1 GiB of results) and for
//!    ordered chunks behind a slow fragment 0: both bounded by the initiator's per-job limit
//!    on results it holds (64 MiB) and the sender's queue (32 MiB), not by the results' size.
//!
//! `cargo bench --bench cluster` (`-- held` runs figure 5 alone). Hosts that are separate
//! processes, as users run them: `cargo bench --bench multiproc`.

#[path = "../tests/common/mod.rs"]
mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static ALLOC: fragmenta_testkit::alloc::ProcessCounting = fragmenta_testkit::alloc::ProcessCounting;

#[path = "support/tiny.rs"]
mod tiny;
use tiny::{RemoteTiny, Tiny};

const MIB: usize = 1 << 20;

#[derive(Serialize, Deserialize, Default)]
struct Stream {
    bytes_per_fragment: usize,
    #[serde(skip)]
    received: AtomicUsize,
}

impl FragmentedJob for Stream {
    const CLASS_ID: ClassId = ClassId::from_name("bench.cluster.stream");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        i: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        for _ in 0..self.bytes_per_fragment / MIB {
            out.write_chunk(vec![i as u8; MIB])?;
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        self.received.fetch_add(r.len(), Ordering::Relaxed);
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(1));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        true
    }
}

/// Raw QUIC: `total` bytes on one uni stream between two endpoints of the cluster's CA.
/// Fetches the publication `name` of host 1 from a fragment on host 0, `rounds` times.
#[derive(Serialize, Deserialize, Default)]
struct FetchBench {
    name: String,
    rounds: usize,
    reuse: bool,
    #[serde(skip)]
    bytes: AtomicUsize,
}

impl FragmentedJob for FetchBench {
    const CLASS_ID: ClassId = ClassId::from_name("bench.cluster.fetch");
    fn execute_fragment(&self, tx: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        let mut kept: Option<Allocation> = None;
        for _ in 0..self.rounds {
            let alloc = match kept.take() {
                Some(old) if self.reuse => tx.fetch_reusing(HostId(1), &self.name, old),
                // A loop that drops each copy before fetching the next (the usual shape).
                old => {
                    drop(old);
                    tx.fetch(HostId(1), &self.name)
                }
            }
            .expect("fetch");
            self.bytes
                .fetch_add(alloc.size() as usize, Ordering::Relaxed);
            kept = Some(alloc);
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(0));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

fn raw_quic(dir: &std::path::Path, total: usize) -> f64 {
    use fragmenta_net::{Endpoint, NetConfig, TlsFiles};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let files = |h: u32| TlsFiles::for_host(&dir.join("certs"), HostId(h));
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let a = Endpoint::bind_quic(any, &files(0), &NetConfig::default()).expect("bind a");
        let b = Endpoint::bind_quic(any, &files(1), &NetConfig::default()).expect("bind b");
        let b_addr = b.local_addr();
        let server = tokio::spawn(async move {
            let conn = b.accept().await.expect("incoming").expect("accepted");
            let mut s = conn.open_uni().await.expect("uni");
            let block = vec![7u8; MIB];
            for _ in 0..total / MIB {
                s.write_all(&block).await.expect("write");
            }
            s.finish().expect("finish");
            conn.closed().await;
        });
        let conn = a.connect(b_addr, HostId(1)).await.expect("connect");
        let mut r = conn.accept_uni().await.expect("accept uni");
        let start = Instant::now();
        let mut buf = vec![0u8; MIB];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        let secs = start.elapsed().as_secs_f64();
        conn.close(0, b"done");
        let _ = server.await;
        got as f64 / secs / 1e6
    })
}

/// Fragments send 4 MiB chunks; the initiator may take them slowly; fragments run on the
/// initiator are slow, so most run on the other host; fragment 0 may be slower still.
#[derive(Serialize, Deserialize, Default)]
struct Held {
    chunks: u32,
    local_ms: u64,
    slow_first_ms: u64,
    take_ms: u64,
    unordered: bool,
    #[serde(skip)]
    received: AtomicUsize,
}

impl FragmentedJob for Held {
    const CLASS_ID: ClassId = ClassId::from_name("bench.cluster.held");
    fn execute_fragment(&self, _: &Transaction, i: usize, _: usize, _: &ExecutionContext) {
        let ms = if i == 0 {
            self.slow_first_ms.max(self.local_ms)
        } else {
            self.local_ms
        };
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        i: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        for _ in 0..self.chunks {
            out.write_chunk(vec![i as u8; 4 * MIB])?;
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        if !r.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(self.take_ms));
        }
        self.received.fetch_add(r.len(), Ordering::Relaxed);
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        self.unordered
    }
}

/// This process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The scenarios of figure 5: (name, job).
fn held_job(scenario: &str) -> Held {
    match scenario {
        "slow-receiver" => Held {
            chunks: 4,
            local_ms: 500,
            take_ms: 50,
            unordered: true,
            ..Held::default()
        },
        _ => Held {
            chunks: 4,
            local_ms: 500,
            slow_first_ms: 3_000,
            ..Held::default()
        },
    }
}

/// A host process of figure 5: `FRAGMENTA_BENCH_HELD=<scenario>:<host>:<config>`. Host 0 runs
/// the job and shuts the cluster down; host 1 serves. Each prints its peak RSS.
fn held_host(spec: &str) -> ! {
    let mut parts = spec.splitn(3, ':');
    let (scenario, host, path) = (
        parts.next().unwrap_or_default(),
        parts.next().and_then(|h| h.parse().ok()).unwrap_or(0),
        parts.next().unwrap_or_default(),
    );
    let config = ClusterConfig::load(std::path::Path::new(path)).expect("config");
    let cluster = Cluster::builder()
        .register::<Held>()
        .join_config(config, HostId(host))
        .expect("join");
    if host == 0 {
        let job = Arc::new(held_job(scenario));
        let report = cluster.execute(&job, 64).expect("runs");
        assert!(report.is_complete(), "{report:?}");
        let remote = job.received.load(Ordering::Relaxed);
        println!("received {} MiB", remote / MIB);
        drop(cluster);
    } else {
        let _ = cluster.serve();
        drop(cluster);
    }
    println!("peak_rss_mib {:.0}", peak_rss_mib());
    std::process::exit(0);
}

/// Runs figure 5's scenario as two processes; returns (initiator, sender) peak RSS in MiB and
/// the MiB the initiator received.
fn held_figures(dir: &std::path::Path, scenario: &str) -> (String, String, String) {
    let config = common::loopback_config(dir, 2, "");
    let path = dir.join(format!("held-{scenario}.toml"));
    std::fs::write(&path, config.to_toml_string()).expect("write config");
    let exe = std::env::current_exe().expect("bench path");
    let children: Vec<_> = (0..2)
        .map(|h| {
            std::process::Command::new(&exe)
                .env(
                    "FRAGMENTA_BENCH_HELD",
                    format!("{scenario}:{h}:{}", path.display()),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a host")
        })
        .collect();
    let outs: Vec<String> = children
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().expect("host").stdout).into_owned())
        .collect();
    let field = |out: &str, key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or("?".to_string(), |v| v.trim().to_string())
    };
    (
        field(&outs[0], "peak_rss_mib"),
        field(&outs[1], "peak_rss_mib"),
        field(&outs[0], "received"),
    )
}

fn main() {
    if let Some(spec) = std::env::var_os("FRAGMENTA_BENCH_HELD") {
        held_host(&spec.to_string_lossy());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::args().any(|a| a == "held") {
        held_report(dir.path());
        return;
    }
    let config = common::loopback_config(dir.path(), 4, "");
    let clusters: Vec<Cluster> = (0..4u32)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Tiny>()
                    .register::<RemoteTiny>()
                    .register::<Stream>()
                    .register::<FetchBench>()
                    .join_config(config, HostId(h))
                    .expect("join")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("host thread"))
        .collect();
    let primary = &clusters[0];

    // 1. Throughput of tiny fragments.
    let n = 200_000;
    let warm = Arc::new(Tiny::default());
    primary.execute(&warm, 20_000).expect("warm-up");
    let mut best = f64::MAX;
    let mut per_host = Vec::new();
    for _ in 0..3 {
        let job = Arc::new(Tiny::default());
        let t = Instant::now();
        let report = primary.execute(&job, n).expect("runs");
        let secs = t.elapsed().as_secs_f64();
        assert!(report.is_complete());
        assert_eq!(job.sum.load(Ordering::Relaxed), (0..n as u64).sum::<u64>());
        if secs < best {
            best = secs;
            per_host = report.per_host.clone();
        }
    }
    println!(
        "no-op CLUSTER fragments, 4 hosts: {:.0} fragments/s ({n} in {:.3} s, best of 3; per host {:?}); target >= 120000",
        n as f64 / best,
        best,
        per_host
    );

    // 1b. The same through the network only: USER_DEFINED, every fragment on a remote host.
    let job = Arc::new(RemoteTiny::default());
    let t = Instant::now();
    let report = primary.execute(&job, n).expect("runs");
    let secs = t.elapsed().as_secs_f64();
    assert!(report.is_complete());
    assert_eq!(
        job.0.sum.load(Ordering::Relaxed),
        (0..n as u64).sum::<u64>()
    );
    println!(
        "no-op fragments, all on the 3 remote hosts (USER_DEFINED round-robin): {:.0} fragments/s ({n} in {secs:.3} s)",
        n as f64 / secs
    );

    // 2. Result bandwidth vs raw QUIC.
    let total = 8 * 64 * MIB;
    let job = Arc::new(Stream {
        bytes_per_fragment: 64 * MIB,
        ..Stream::default()
    });
    let base = fragmenta_testkit::alloc::process_start();
    let t = Instant::now();
    let report = primary.execute(&job, 8).expect("runs");
    let secs = t.elapsed().as_secs_f64();
    let peak = fragmenta_testkit::alloc::process_peak_since(base);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(job.received.load(Ordering::Relaxed), total);
    let ours = total as f64 / secs / 1e6;
    let raw = raw_quic(dir.path(), total);
    println!("result bandwidth, 8 x 64 MiB from host-1: {ours:.0} MB/s; raw QUIC stream: {raw:.0} MB/s; ratio {:.2} (target >= 0.8)", ours / raw);
    println!("peak heap growth of the whole process (sender and receiver) while streaming 512 MiB: {:.1} MiB", peak as f64 / MIB as f64);

    // 3. Fast I/O fetch across hosts vs raw QUIC.
    let size = 256 * MIB;
    {
        use fragmenta::fastio::FastIo;
        let ctx = clusters[1].fastio();
        let alloc = ctx.create(size as u64).expect("create");
        alloc.map_write().expect("map").fill(5);
        ctx.publish(&alloc, "bench").expect("publish");
    }
    let rounds = 4;
    let fetch_rate = |reuse: bool| {
        let job = Arc::new(FetchBench {
            name: "bench".into(),
            rounds,
            reuse,
            ..FetchBench::default()
        });
        let t = Instant::now();
        let report = primary.execute(&job, 1).expect("runs");
        let secs = t.elapsed().as_secs_f64();
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(job.bytes.load(Ordering::Relaxed), rounds * size);
        (rounds * size) as f64 / secs / 1e6
    };
    // The first transfer on a link ramps up its congestion window; measure after it, and
    // interleave the three ways so noise from other processes hits them alike.
    let _ = fetch_rate(true);
    let (mut fetch, mut fetch_reusing, mut raw) = (0f64, 0f64, 0f64);
    for _ in 0..3 {
        fetch = fetch.max(fetch_rate(false));
        fetch_reusing = fetch_reusing.max(fetch_rate(true));
        raw = raw.max(raw_quic(dir.path(), rounds * size));
    }
    // What creating and first-touching a new allocation costs on this machine (a fetch into a
    // new allocation pays it too).
    let t = Instant::now();
    for _ in 0..rounds {
        use fragmenta::fastio::FastIo;
        let a = primary.fastio().create(size as u64).expect("create");
        a.map_write().expect("map").fill(1);
    }
    let touch = (rounds * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("(creating and first-touching a local 256 MiB allocation alone: {touch:.0} MB/s)");
    println!("Fast I/O fetch, {rounds} x 256 MiB from host-1 into host-0's context (best of 3): new allocation each time {fetch:.0} MB/s, reusing one {fetch_reusing:.0} MB/s; raw QUIC stream: {raw:.0} MB/s; ratios {:.2} / {:.2} (target >= 0.8)", fetch / raw, fetch_reusing / raw);
    drop(clusters);

    held_report(dir.path());
}

/// 5. Peak RSS on both sides when the initiator cannot take results as fast as they come.
fn held_report(dir: &std::path::Path) {
    for (scenario, what) in [
        (
            "slow-receiver",
            "slow receiver (50 ms per 4 MiB chunk, 1 GiB of results)",
        ),
        (
            "ordered-slow-first",
            "ordered chunks behind a 3 s fragment 0 (1 GiB of results)",
        ),
    ] {
        let sub = dir.join(scenario);
        std::fs::create_dir_all(&sub).expect("dir");
        let (initiator, sender, received) = held_figures(&sub, scenario);
        println!("peak RSS, {what}: initiator {initiator} MiB, sender {sender} MiB ({received} received by the initiator; limit: 64 MiB held per job + 32 MiB queued per sender + runtime)");
    }
}

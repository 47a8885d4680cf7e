//! Multi-process figures: four hosts that are real processes on this machine, started the way a
//! user starts them (`fragmenta launch -n 4 --cores 2 -- PROG`, PROG being this bench binary
//! re-executed as the hosts with `FRAGMENTA_CONFIG` and `FRAGMENTA_HOST_ID` set). Every figure
//! is printed beside its limit and measured in the same run:
//!
//! 1. no-op fragments/s, CLUSTER and remote-only (USER_DEFINED round-robin on the three
//!    non-initiators), 200,000 fragments;
//! 2. 8 × 64 MiB results from one remote process through the same-machine path (chunks handed
//!    over through the initiator's Fast I/O context), against a plain memcpy of 512 MiB in one
//!    process;
//! 3. a Fast I/O fetch of 256 MiB between processes of this machine (same-machine path: one
//!    copy from the owner's context), against a memcpy and a raw quinn stream;
//! 4. peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` just before) of the initiator and
//!    of the sending process during the 512 MiB transfer;
//! 5. the makespan of a CLUSTER job where one host runs its fragments 10x slower, against the
//!    ideal split of the work by each host's speed, with work stealing across hosts on and off
//!    (`Cluster::set_work_stealing`), one run after the other;
//! 6. then a second cluster of 4 processes with `FRAGMENTA_SAME_MACHINE=0` (the QUIC path forced
//!    on): the same results against a raw quinn stream between the same two processes, and the
//!    peak RSS on that path.
//!
//! `cargo bench --bench multiproc` (about a minute on 2 cores); `cargo bench --bench multiproc
//! -- --quick` for a smaller run with the same lines. Name filters run some sections only:
//! `noop`, `results` (2 and 4), `fetch`, `makespan` (5, with work stealing on and off), as in
//! `cargo bench --bench multiproc -- --quick makespan`.

#[path = "../tests/common/mod.rs"]
mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set in the host processes: `full` or `quick`.
const HOST_VAR: &str = "FRAGMENTA_BENCH_MULTIPROC";
/// Set in the host processes: the sections to run (the bench's name filters, comma-separated:
/// `noop`, `results`, `fetch`, `makespan`), empty for all.
const SECTIONS_VAR: &str = "FRAGMENTA_BENCH_MULTIPROC_SECTIONS";
/// How a host process is told to turn work stealing off (documented on `Cluster`).
const WORK_STEALING_VAR: &str = "FRAGMENTA_WORK_STEALING";
const MIB: usize = 1 << 20;
/// The host whose fragments run 10x slower in the makespan figure.
const SLOW_HOST: HostId = HostId(3);
const SLOWDOWN: u64 = 10;
/// Cores each host declares (`fragmenta launch --cores`).
const CORES: u32 = 2;

#[path = "support/tiny.rs"]
mod tiny;
use tiny::{RemoteTiny, Tiny};

/// Every fragment on host 1 streams `bytes_per_fragment` to the initiator in 1 MiB chunks,
/// each written in place into a `chunk_buffer` (`in_place`) or as a `Vec` of its own.
#[derive(Serialize, Deserialize, Default)]
struct Stream {
    bytes_per_fragment: usize,
    in_place: bool,
    #[serde(skip)]
    received: AtomicUsize,
}

impl FragmentedJob for Stream {
    const CLASS_ID: ClassId = ClassId::from_name("bench.multiproc.stream");
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
            if self.in_place {
                let mut chunk = out.chunk_buffer(MIB);
                chunk.fill(i as u8);
                out.write_buffer(chunk)?;
            } else {
                out.write_chunk(vec![i as u8; MIB])?;
            }
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

/// One fragment on host 1 binds a raw QUIC endpoint with host 1's certificate, returns its port,
/// and sends `bytes` on one uni stream to the first peer that connects.
#[derive(Serialize, Deserialize, Default)]
struct RawServe {
    bytes: usize,
    #[serde(skip)]
    port: Mutex<Option<u16>>,
}

impl FragmentedJob for RawServe {
    const CLASS_ID: ClassId = ClassId::from_name("bench.multiproc.raw-serve");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        let port = raw_server(ctx.host(), self.bytes).map_err(std::io::Error::other)?;
        out.write_all(&port.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        if let Ok(b) = <[u8; 2]>::try_from(r.bytes()) {
            *lock(&self.port) = Some(u16::from_le_bytes(b));
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(1));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

/// Host 1 publishes `size` bytes in its Fast I/O context as `name`.
#[derive(Serialize, Deserialize, Default)]
struct Publish {
    name: String,
    size: usize,
}

impl FragmentedJob for Publish {
    const CLASS_ID: ClassId = ClassId::from_name("bench.multiproc.publish");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        tx: &Transaction,
        _: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        let ctx = tx
            .fastio()
            .ok_or_else(|| std::io::Error::other("no Fast I/O context"))?;
        // A publication of the name made before is freed: the new one is new memory.
        if let Ok(old) = ctx.get(&self.name) {
            old.free().map_err(std::io::Error::other)?;
        }
        let alloc = ctx
            .create(self.size as u64)
            .map_err(std::io::Error::other)?;
        alloc.map_write().map_err(std::io::Error::other)?.fill(5);
        ctx.publish(&alloc, &self.name)
            .map_err(std::io::Error::other)?;
        out.write_all(b"ok")
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(1));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

/// Fetches the publication `name` of host 1 from a fragment on the initiator, `rounds` times.
#[derive(Serialize, Deserialize, Default)]
struct FetchBench {
    name: String,
    rounds: usize,
    reuse: bool,
    #[serde(skip)]
    bytes: AtomicUsize,
    #[serde(skip)]
    error: Mutex<Option<String>>,
}

impl FragmentedJob for FetchBench {
    const CLASS_ID: ClassId = ClassId::from_name("bench.multiproc.fetch");
    fn execute_fragment(&self, tx: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        let mut kept: Option<Allocation> = None;
        for _ in 0..self.rounds {
            let fetched = match kept.take() {
                Some(old) if self.reuse => tx.fetch_reusing(HostId(1), &self.name, old),
                // A loop that drops each copy before fetching the next (the usual shape).
                old => {
                    drop(old);
                    tx.fetch(HostId(1), &self.name)
                }
            };
            match fetched {
                Ok(alloc) => {
                    self.bytes
                        .fetch_add(alloc.size() as usize, Ordering::Relaxed);
                    kept = Some(alloc);
                }
                Err(e) => {
                    *lock(&self.error) = Some(e.to_string());
                    return;
                }
            }
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(0));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

/// On host 1: resets its peak RSS (`reset`), or reports it; the result is `VmHWM` and `VmRSS`
/// in bytes.
#[derive(Serialize, Deserialize, Default)]
struct Rss {
    reset: bool,
    #[serde(skip)]
    got: Mutex<Option<(u64, u64)>>,
}

impl FragmentedJob for Rss {
    const CLASS_ID: ClassId = ClassId::from_name("bench.multiproc.rss");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        if self.reset {
            reset_peak_rss()?;
        }
        let (hwm, rss) = memory_status()?;
        out.write_all(&hwm.to_le_bytes())?;
        out.write_all(&rss.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        let b = r.bytes();
        if b.len() == 16 {
            let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
            *lock(&self.got) = Some((word(0), word(8)));
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(1));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

/// CLUSTER fragments that sleep `base_us`, or `SLOWDOWN` times as long on [`SLOW_HOST`] (the
/// slowdown is read from the host id the fragment runs on).
#[derive(Serialize, Deserialize, Default)]
struct Uneven {
    base_us: u64,
}

impl Uneven {
    fn work(&self, ctx: &ExecutionContext) {
        let factor = if ctx.host() == SLOW_HOST { SLOWDOWN } else { 1 };
        std::thread::sleep(Duration::from_micros(self.base_us * factor));
    }
}

impl FragmentedJob for Uneven {
    const CLASS_ID: ClassId = ClassId::from_name("bench.multiproc.uneven");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, ctx: &ExecutionContext) {
        self.work(ctx);
    }
    fn execute_fragment_remote(
        &self,
        _: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        self.work(ctx);
        Ok(())
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process, in bytes.
fn memory_status() -> std::io::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/self/status")))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Makes `VmHWM` start again from the current RSS (Linux ≥ 4.0).
fn reset_peak_rss() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}

/// The certificate files of `host` in the launched cluster's configuration.
fn tls_files(host: HostId) -> Result<fragmenta_net::TlsFiles, String> {
    let path = std::env::var_os(fragmenta_config::CONFIG_ENV)
        .ok_or("FRAGMENTA_CONFIG is not set in a host process")?;
    let config = ClusterConfig::load(&path).map_err(|e| e.to_string())?;
    let me = config
        .host(host)
        .ok_or_else(|| format!("{host} is not in the configuration"))?;
    Ok(fragmenta_net::TlsFiles {
        ca: config.ca_cert().to_path_buf(),
        cert: me.cert().to_path_buf(),
        key: me.key().to_path_buf(),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Binds a raw QUIC endpoint of `host` on loopback and serves `bytes` (1 MiB writes on one uni
/// stream) to the first connection, on a thread of its own; returns the port.
fn raw_server(host: HostId, bytes: usize) -> Result<u16, String> {
    use fragmenta_net::{Endpoint, NetConfig};
    use tokio::io::AsyncWriteExt;
    let files = tls_files(host)?;
    let (port_tx, port_rx) = std::sync::mpsc::channel::<Result<u16, String>>();
    std::thread::spawn(move || {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = port_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let endpoint = match Endpoint::bind_quic(any, &files, &NetConfig::default()) {
                Ok(e) => e,
                Err(e) => {
                    let _ = port_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = port_tx.send(Ok(endpoint.local_addr().port()));
            let serve = async {
                let conn = endpoint.accept().await?.ok()?;
                let mut s = conn.open_uni().await.ok()?;
                let block = vec![7u8; MIB];
                for _ in 0..bytes / MIB {
                    s.write_all(&block).await.ok()?;
                }
                s.finish().ok()?;
                conn.closed().await;
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(120), serve).await;
            endpoint.close();
        });
    });
    port_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| format!("raw endpoint did not start: {e}"))?
}

/// Raw quinn between this process (host 0) and host 1's process: MB/s of one `bytes` stream.
fn raw_quinn(cluster: &Cluster, bytes: usize) -> Result<f64, String> {
    use fragmenta_net::{Endpoint, NetConfig};
    use tokio::io::AsyncReadExt;
    let serve = Arc::new(RawServe {
        bytes,
        ..RawServe::default()
    });
    let report = cluster.execute(&serve, 1).map_err(|e| e.to_string())?;
    let port = lock(&serve.port).ok_or_else(|| format!("no raw port from host-1: {report:?}"))?;
    let files = tls_files(HostId(0))?;
    runtime()?.block_on(async move {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint =
            Endpoint::bind_quic(any, &files, &NetConfig::default()).map_err(|e| e.to_string())?;
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let conn = endpoint
            .connect(to, HostId(1))
            .await
            .map_err(|e| e.to_string())?;
        let mut r = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut buf = vec![0u8; MIB];
        let mut got = 0;
        while got < bytes {
            let n = r.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let secs = start.elapsed().as_secs_f64();
        conn.close(0, b"done");
        endpoint.close();
        if got != bytes {
            return Err(format!("raw stream ended after {got} of {bytes} bytes"));
        }
        Ok(bytes as f64 / secs / 1e6)
    })
}

/// MB/s of a plain memcpy of `bytes` between two buffers already touched (best of 3).
fn memcpy_rate(bytes: usize) -> f64 {
    let src = vec![3u8; bytes];
    let mut dst = vec![1u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e6
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// The run's sizes: the full run, or a smaller one with the same lines.
struct Sizes {
    noop: usize,
    noop_rounds: usize,
    stream_fragment: usize,
    stream_rounds: usize,
    fetch_size: usize,
    fetch_rounds: usize,
    fetch_repeats: usize,
    uneven: usize,
    uneven_us: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                noop: 20_000,
                noop_rounds: 1,
                stream_fragment: 16 * MIB,
                stream_rounds: 1,
                fetch_size: 64 * MIB,
                fetch_rounds: 2,
                fetch_repeats: 1,
                uneven: 200,
                uneven_us: 5_000,
            }
        } else {
            Sizes {
                noop: 200_000,
                noop_rounds: 3,
                stream_fragment: 64 * MIB,
                stream_rounds: 5,
                fetch_size: 256 * MIB,
                fetch_rounds: 2,
                fetch_repeats: 6,
                uneven: 1_000,
                uneven_us: 10_000,
            }
        }
    }
}

/// The program of every host process.
fn host_main(mode: &str) -> Result<(), String> {
    let cluster = Cluster::builder()
        .register::<Tiny>()
        .register::<RemoteTiny>()
        .register::<Stream>()
        .register::<RawServe>()
        .register::<Publish>()
        .register::<FetchBench>()
        .register::<Rss>()
        .register::<Uneven>()
        .join()
        .map_err(|e| e.to_string())?;
    if !cluster.is_primary() {
        return cluster.serve().map_err(|e| e.to_string());
    }
    let quic = mode.starts_with("quic-");
    let sizes = Sizes::new(mode.ends_with("quick"));
    let hosts = cluster.hosts();
    if hosts.len() != 4 {
        return Err(format!("expected 4 hosts, the cluster has {hosts:?}"));
    }
    if !quic {
        println!(
        "4 host processes of this machine ({CORES} cores each), started by `fragmenta launch`{}",
        if mode == "quick" {
            "; --quick: smaller sizes, figures less steady"
        } else {
            ""
        }
    );
    }
    let sections = std::env::var(SECTIONS_VAR).unwrap_or_default();
    let run = |name: &str| sections.is_empty() || sections.split(',').any(|f| name.contains(f));
    if quic {
        println!("again with FRAGMENTA_SAME_MACHINE=0: the QUIC path forced on");
        if run("results") {
            quic_transfer_figures(&cluster, &sizes)?;
        }
        if run("fetch") {
            fetch_figures(&cluster, &sizes, "the QUIC path forced on")?;
        }
        return Ok(());
    }
    if run("noop") {
        noop_figures(&cluster, &sizes)?;
    }
    if run("results") {
        transfer_figures(&cluster, &sizes)?;
    }
    if run("fetch") {
        fetch_figures(&cluster, &sizes, "same-machine path")?;
    }
    if run("makespan") {
        uneven_figure(&cluster, &sizes)?;
    }
    Ok(())
}

fn check(report: &JobReport) -> Result<(), String> {
    if report.is_complete() {
        Ok(())
    } else {
        Err(format!("job incomplete: {report:?}"))
    }
}

fn noop_figures(cluster: &Cluster, sizes: &Sizes) -> Result<(), String> {
    let n = sizes.noop;
    let expected: u64 = (0..n as u64).sum();
    let warm = Arc::new(Tiny::default());
    check(&cluster.execute(&warm, n / 10).map_err(|e| e.to_string())?)?;
    let mut best = f64::MAX;
    let mut per_host = Vec::new();
    for _ in 0..sizes.noop_rounds {
        let job = Arc::new(Tiny::default());
        let t = Instant::now();
        let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        check(&report)?;
        if job.sum.load(Ordering::Relaxed) != expected {
            return Err("CLUSTER no-op: wrong sum of results".into());
        }
        if secs < best {
            best = secs;
            per_host = report.per_host.clone();
        }
    }
    println!(
        "no-op CLUSTER fragments, 4 processes: {:.0} fragments/s ({n} in {best:.3} s, best of {}; per host {per_host:?}); limit >= 120000",
        n as f64 / best,
        sizes.noop_rounds
    );
    let mut best = f64::MAX;
    for _ in 0..sizes.noop_rounds {
        let job = Arc::new(RemoteTiny::default());
        let t = Instant::now();
        let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        check(&report)?;
        if job.0.sum.load(Ordering::Relaxed) != expected {
            return Err("remote-only no-op: wrong sum of results".into());
        }
        best = best.min(secs);
    }
    println!(
        "no-op fragments, all on the 3 remote processes (USER_DEFINED round-robin): {:.0} fragments/s ({n} in {best:.3} s, best of {}); limit >= 120000",
        n as f64 / best,
        sizes.noop_rounds
    );
    Ok(())
}

/// Resets the peak RSS of this process and of host 1's; returns both current RSS.
fn reset_peaks(cluster: &Cluster) -> Result<(u64, u64), String> {
    let remote = Arc::new(Rss {
        reset: true,
        ..Rss::default()
    });
    check(&cluster.execute(&remote, 1).map_err(|e| e.to_string())?)?;
    let (_, sender) = lock(&remote.got).ok_or("no RSS from host-1")?;
    reset_peak_rss().map_err(|e| format!("cannot reset the peak RSS: {e}"))?;
    let (_, initiator) = memory_status().map_err(|e| e.to_string())?;
    Ok((initiator, sender))
}

/// The peak RSS of this process and of host 1's since [`reset_peaks`].
fn read_peaks(cluster: &Cluster) -> Result<(u64, u64), String> {
    let (initiator, _) = memory_status().map_err(|e| e.to_string())?;
    let remote = Arc::new(Rss::default());
    check(&cluster.execute(&remote, 1).map_err(|e| e.to_string())?)?;
    let (sender, _) = lock(&remote.got).ok_or("no RSS from host-1")?;
    Ok((initiator, sender))
}

/// MB/s of the best of `rounds` jobs of 8 fragments streaming `fragment` bytes each from host 1.
fn stream_rate(cluster: &Cluster, fragment: usize, in_place: bool) -> Result<f64, String> {
    let total = 8 * fragment;
    let job = Arc::new(Stream {
        bytes_per_fragment: fragment,
        in_place,
        ..Stream::default()
    });
    let t = Instant::now();
    let report = cluster.execute(&job, 8).map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    check(&report)?;
    if job.received.load(Ordering::Relaxed) != total {
        return Err("result transfer: wrong byte count".into());
    }
    Ok(total as f64 / secs / 1e6)
}

/// The same-machine path (this run's hosts prove each other same-machine): results against a
/// memcpy, and the peak RSS of both sides.
fn transfer_figures(cluster: &Cluster, sizes: &Sizes) -> Result<(), String> {
    let total = 8 * sizes.stream_fragment;
    let before = cluster.same_machine();
    if !before.peers.contains(&HostId(1)) {
        return Err(format!(
            "host-1 is not proven same-machine: {before:?} (FRAGMENTA_SAME_MACHINE=0 set?)"
        ));
    }
    // A first job warms the pools (the initiator's context and the sender's mappings).
    stream_rate(cluster, sizes.stream_fragment, true)?;
    let (rss0, rss1) = reset_peaks(cluster)?;
    let mut ours = stream_rate(cluster, sizes.stream_fragment, true)?;
    let (peak0, peak1) = read_peaks(cluster)?;
    // Interleaved with the same results written as `Vec`s (one copy into shared memory).
    let mut copied = 0f64;
    for round in 0..sizes.stream_rounds {
        if round > 0 {
            ours = ours.max(stream_rate(cluster, sizes.stream_fragment, true)?);
        }
        copied = copied.max(stream_rate(cluster, sizes.stream_fragment, false)?);
    }
    let after = cluster.same_machine();
    let memcpy = memcpy_rate(total);
    let mb = total / MIB;
    println!(
        "results, 8 x {} MiB from the host-1 process, same-machine path (1 MiB chunks written in place into the initiator's shared memory with `chunk_buffer`; {} chunks handed over in all): {ours:.0} MB/s = {:.2}x a memcpy of {mb} MiB ({memcpy:.0} MB/s; best of {}); limit >= 0.5x",
        sizes.stream_fragment / MIB,
        after.chunks_received - before.chunks_received,
        ours / memcpy,
        sizes.stream_rounds
    );
    println!(
        "results, the same written as a `Vec` per chunk (`write_chunk`: one copy into shared memory): {copied:.0} MB/s = {:.2}x the memcpy",
        copied / memcpy
    );
    let growth = |p: u64, b: u64| mib(p.saturating_sub(b));
    println!(
        "peak RSS while {mb} MiB of results come through shared memory: initiator {:.0} MiB (+{:.0} MiB over {:.0} MiB before; limit +{:.0} MiB, the sender's window of handed-over memory and the context's pool), sender host-1 {:.0} MiB (+{:.0} MiB over {:.0} MiB; limit +{:.0} MiB, the window and the mappings it keeps)",
        mib(peak0),
        growth(peak0, rss0),
        mib(rss0),
        mib(SHM_WINDOW + POOL),
        mib(peak1),
        growth(peak1, rss1),
        mib(rss1),
        mib(SHM_WINDOW + KEPT),
    );
    Ok(())
}

/// Memory a sender hands over to one job's initiator before it waits for credit.
const SHM_WINDOW: u64 = 32 << 20;
/// Reclaimed memory a context pools at most (1 GiB, or a quarter of its capacity).
const POOL: u64 = 1 << 30;
/// Mappings of handed-over memory a sender keeps.
const KEPT: u64 = 256 << 20;

/// The QUIC path, forced on (`FRAGMENTA_SAME_MACHINE=0` in this run's hosts): results against
/// a raw quinn stream between the same two processes, interleaved so noise hits both alike.
fn quic_transfer_figures(cluster: &Cluster, sizes: &Sizes) -> Result<(), String> {
    let total = 8 * sizes.stream_fragment;
    if !cluster.same_machine().peers.is_empty() {
        return Err("the QUIC run found same-machine peers".into());
    }
    let (rss0, rss1) = reset_peaks(cluster)?;
    let (mut ours, mut raw) = (0f64, 0f64);
    for round in 0..sizes.stream_rounds {
        ours = ours.max(stream_rate(cluster, sizes.stream_fragment, true)?);
        if round == 0 {
            // Peaks of the job's transfers alone (the raw stream has its own buffers).
            let (peak0, peak1) = read_peaks(cluster)?;
            print_peaks(total, (rss0, rss1), (peak0, peak1));
        }
        raw = raw.max(raw_quinn(cluster, total)?);
    }
    let memcpy = memcpy_rate(total);
    println!(
        "results, the QUIC path forced on: {ours:.0} MB/s ({:.2}x a memcpy); a raw quinn stream between the same two processes: {raw:.0} MB/s; ratio {:.2} (best of {}); limit >= 0.8",
        ours / memcpy,
        ours / raw,
        sizes.stream_rounds
    );
    Ok(())
}

/// Result bytes of one job a host queues for the network before its fragments wait (the
/// runtime's bound on a sender's queue).
const SENDER_QUEUE: u64 = 32 << 20;

fn print_peaks(total: usize, before: (u64, u64), peak: (u64, u64)) {
    let net = fragmenta_net::NetConfig::default();
    // What the configuration lets each side hold: the initiator, what the connection's receive
    // window lets arrive unread; the sender, its queue plus what QUIC keeps unacknowledged.
    let initiator_limit = u64::from(net.receive_window);
    let sender_limit = SENDER_QUEUE + net.send_window;
    let growth = |p: u64, b: u64| mib(p.saturating_sub(b));
    println!(
        "peak RSS while {} MiB of results stream in on QUIC: initiator {:.0} MiB (+{:.0} MiB over its {:.0} MiB before; limit +{:.0} MiB, the connection receive window), sender host-1 {:.0} MiB (+{:.0} MiB over {:.0} MiB; limit +{:.0} MiB, its result queue and the QUIC send window)",
        total / MIB,
        mib(peak.0),
        growth(peak.0, before.0),
        mib(before.0),
        mib(initiator_limit),
        mib(peak.1),
        growth(peak.1, before.1),
        mib(before.1),
        mib(sender_limit),
    );
}

fn fetch_figures(cluster: &Cluster, sizes: &Sizes, path: &str) -> Result<(), String> {
    let size = sizes.fetch_size;
    let publish = Arc::new(Publish {
        name: "bench.multiproc".into(),
        size,
    });
    check(&cluster.execute(&publish, 1).map_err(|e| e.to_string())?)?;
    let rounds = sizes.fetch_rounds;
    // `rounds` fetches of `name` in one fragment on the initiator, in MB/s.
    let timed = |name: &str, rounds: usize, reuse: bool| -> Result<f64, String> {
        let job = Arc::new(FetchBench {
            name: name.into(),
            rounds,
            reuse,
            ..FetchBench::default()
        });
        let t = Instant::now();
        let report = cluster.execute(&job, 1).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        check(&report)?;
        if let Some(e) = lock(&job.error).take() {
            return Err(format!("fetch failed: {e}"));
        }
        if job.bytes.load(Ordering::Relaxed) != rounds * size {
            return Err("fetch: wrong byte count".into());
        }
        Ok((rounds * size) as f64 / secs / 1e6)
    };
    let fetch_rate = |reuse: bool| timed("bench.multiproc", rounds, reuse);
    // The first fetch of memory never read here before: a new publication each time.
    let first_rate = || -> Result<f64, String> {
        let name = "bench.multiproc.new";
        let publish = Arc::new(Publish {
            name: name.into(),
            size,
        });
        check(&cluster.execute(&publish, 1).map_err(|e| e.to_string())?)?;
        timed(name, 1, false)
    };
    let (mut fresh, mut reusing, mut raw, mut first) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..sizes.fetch_repeats {
        first = first.max(first_rate()?);
        fresh = fresh.max(fetch_rate(false)?);
        reusing = reusing.max(fetch_rate(true)?);
        raw = raw.max(raw_quinn(cluster, size)?);
    }
    let memcpy = memcpy_rate(size);
    let mb = size / MIB;
    println!(
        "Fast I/O fetch of {mb} MiB from the host-1 process into the initiator's context ({rounds} in a row, best of {}), {path}: new allocation each time {fresh:.0} MB/s = {:.2}x, reusing one {reusing:.0} MB/s = {:.2}x a memcpy of {mb} MiB ({memcpy:.0} MB/s){}",
        sizes.fetch_repeats,
        fresh / memcpy,
        reusing / memcpy,
        if path.starts_with("same") {
            "; limit >= 0.5x"
        } else {
            ""
        }
    );
    println!(
        "Fast I/O fetch of {mb} MiB, {path}, the first fetch of a new publication (its pages not mapped here yet; best of {}): {first:.0} MB/s = {:.2}x the memcpy",
        sizes.fetch_repeats,
        first / memcpy,
    );
    println!(
        "Fast I/O fetch, {path} vs a raw quinn stream of {mb} MiB between the same processes ({raw:.0} MB/s): ratios {:.2} (new allocation) / {:.2} (reusing); limit (of the QUIC path) >= 0.8",
        fresh / raw,
        reusing / raw
    );
    Ok(())
}

fn uneven_figure(cluster: &Cluster, sizes: &Sizes) -> Result<(), String> {
    let n = sizes.uneven;
    let job = Arc::new(Uneven {
        base_us: sizes.uneven_us,
    });
    // The same job with work stealing on (the default) and off, one after the other.
    let mut runs = Vec::new();
    for stealing in [true, false] {
        cluster.set_work_stealing(stealing);
        let reclaims = cluster.reclaims();
        let t = Instant::now();
        let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        check(&report)?;
        runs.push((stealing, secs, cluster.reclaims() - reclaims, report));
    }
    cluster.set_work_stealing(true);
    // The ideal split: every host busy until the end, each at its speed with all its cores.
    let capacity: f64 = cluster
        .hosts()
        .iter()
        .map(|&h| {
            let speed = if h == SLOW_HOST {
                1.0 / SLOWDOWN as f64
            } else {
                1.0
            };
            f64::from(CORES) * speed
        })
        .sum();
    let ideal = n as f64 * sizes.uneven_us as f64 / 1e6 / capacity;
    for (stealing, secs, reclaims, report) in runs {
        let how = if stealing {
            format!("work stealing on, {reclaims} reclaims")
        } else {
            format!("work stealing off ({WORK_STEALING_VAR}=0)")
        };
        println!(
            "CLUSTER makespan, {n} fragments of {} ms, {SLOW_HOST} {SLOWDOWN}x slower ({how}): {secs:.2} s vs the ideal split {ideal:.2} s = {:.2}x (per host {:?}){}",
            sizes.uneven_us / 1000,
            secs / ideal,
            report.per_host,
            if stealing {
                "; limit <= 1.2x"
            } else {
                "; the figure before work stealing, for comparison"
            }
        );
    }
    Ok(())
}

/// The bench itself: launches this binary as 4 host processes and prints their figures.
fn main() {
    common::harness::run_host_if_child(HOST_VAR, host_main);
    let quick = std::env::args().any(|a| a == "--quick");
    // Name filters (`cargo bench --bench multiproc -- makespan`) pick sections.
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this bench binary: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let mut status = 0;
    // The forced-QUIC run measures results only.
    let wants_results =
        sections.is_empty() || sections.iter().any(|f| "results".contains(f.as_str()));
    for quic in [false, true] {
        if quic && !wants_results {
            continue;
        }
        let mode = match (quic, quick) {
            (false, false) => "full",
            (false, true) => "quick",
            (true, false) => "quic-full",
            (true, true) => "quic-quick",
        };
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fragmenta"));
        cmd.args(["launch", "-n", "4", "--cores", &CORES.to_string(), "--"])
            .arg(&exe)
            .env(HOST_VAR, mode)
            .env(SECTIONS_VAR, sections.join(","))
            .stdout(std::process::Stdio::piped());
        if quic {
            cmd.env("FRAGMENTA_SAME_MACHINE", "0");
        }
        let mut launcher = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                eprintln!("cannot run `fragmenta launch`: {e}");
                std::process::exit(1);
            }
        };
        // The initiator's lines are the figures; the other hosts' lines keep their prefix.
        if let Some(out) = launcher.stdout.take() {
            let stdout = std::io::stdout();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut o = stdout.lock();
                let _ = writeln!(o, "{}", line.strip_prefix("[host-0] ").unwrap_or(&line));
                let _ = o.flush();
            }
        }
        let code = launcher.wait().map(|s| s.code().unwrap_or(1)).unwrap_or(1);
        if code != 0 {
            status = code;
        }
    }
    println!(
        "(whole run {:.0} s, `fragmenta launch` exit status {status})",
        start.elapsed().as_secs_f64()
    );
    std::process::exit(status);
}

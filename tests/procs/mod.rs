//! Real host processes for the failure tests (`tests/chaos.rs`, `tests/partition.rs`).
//!
//! The test binary re-executes itself as a host program (environment variable [`HOST_ENV`]
//! set): it joins the cluster named by `FRAGMENTA_CONFIG` as `FRAGMENTA_HOST_ID`, prints its
//! membership events, and runs commands the harness writes to its stdin, one per line,
//! answering on stdout. The harness ([`Procs`]) starts, kills and reads these processes.
//!
//! Lines a host prints (all on stdout, one event per line):
//! - `joined <id> pid <pid>`, or `join-error <message>` (then it exits with status 3);
//! - `up <host> <unix µs>` / `down <host> <unix µs> <reason>`: its membership events;
//! - `serve <result>` when `Cluster::serve` returns (the process keeps running);
//! - answers to commands (see [`run_command`]) and what its job replicas report.
#![allow(dead_code)]

use fragmenta::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use crate::common::harness::{run_scenarios, Outcome};

/// Set (to anything) in a host process.
pub(crate) const HOST_ENV: &str = "FRAGMENTA_TEST_HOST";

/// Microseconds since the Unix epoch.
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// This process's resident memory in KiB (Linux `VmRSS`).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn sleep_unless_cancelled(ms: u64, ctx: &ExecutionContext) {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end && !ctx.is_cancelled() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Job types
// ---------------------------------------------------------------------------------------------

/// A CLUSTER job whose remote fragments send `flushes + 1` chunks, each naming (job, fragment,
/// chunk, host), with a pause before each chunk so that a host killed mid-fragment may leave
/// a prefix of its chunks delivered.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Chaos {
    /// Job number (part of every chunk).
    pub(crate) k: u32,
    /// Duration of one fragment.
    pub(crate) sleep_ms: u64,
    /// Flushes per remote fragment.
    pub(crate) flushes: u32,
    #[serde(skip)]
    got: Mutex<Vec<(usize, u32, Vec<u8>)>>,
    #[serde(skip)]
    local: Mutex<Vec<usize>>,
}

/// The bytes of chunk `seq` of fragment `index` of job `k`, sent by `host`.
fn chaos_chunk(k: u32, index: usize, seq: u32, host: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&k.to_le_bytes());
    v.extend_from_slice(&(index as u64).to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&host.to_le_bytes());
    v
}

impl FragmentedJob for Chaos {
    const CLASS_ID: ClassId = ClassId::from_name("test.failures.chaos");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        sleep_unless_cancelled(self.sleep_ms, ctx);
        self.local.lock().unwrap().push(index);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        let pause = self.sleep_ms / u64::from(self.flushes + 1);
        for seq in 0..=self.flushes {
            sleep_unless_cancelled(pause, ctx);
            out.write_all(&chaos_chunk(self.k, index, seq, ctx.host().0))?;
            if seq < self.flushes {
                out.flush()?;
            }
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        self.got
            .lock()
            .unwrap()
            .push((index, r.seq(), r.bytes().to_vec()));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// Checks a finished [`Chaos`] job: complete; every chunk received at most once, with the
/// right bytes; every fragment done, either remotely with all its chunks (a prefix of them
/// possibly from a host that then died; a fragment rerun on the initiator after its host died
/// with chunks delivered runs remote style, so its last chunks name the initiator) or on the
/// initiator with `execute_fragment` (at most once, and then with no chunk at all: a fragment
/// the application saw both ways ran twice). Returns a summary.
fn verify_chaos(
    job: &Chaos,
    report: &JobReport,
    count: usize,
    victims: &BTreeSet<u32>,
) -> Result<String, String> {
    if !report.is_complete()
        || !report.failed().is_empty()
        || !report.skipped().is_empty()
        || !report.cancelled().is_empty()
    {
        return Err(format!("report not complete: {report:?}"));
    }
    let got = job.got.lock().unwrap();
    let mut chunks: BTreeMap<usize, BTreeMap<u32, u32>> = BTreeMap::new();
    for (index, seq, bytes) in got.iter() {
        if *index >= count || *seq > job.flushes {
            return Err(format!("chunk ({index}, {seq}) out of range"));
        }
        if bytes.len() != 20 {
            return Err(format!("chunk ({index}, {seq}) has {} bytes", bytes.len()));
        }
        let host = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if bytes[..16] != chaos_chunk(job.k, *index, *seq, host)[..16] {
            return Err(format!("chunk ({index}, {seq}) has wrong bytes {bytes:?}"));
        }
        if chunks
            .entry(*index)
            .or_default()
            .insert(*seq, host)
            .is_some()
        {
            return Err(format!("chunk ({index}, {seq}) received twice"));
        }
    }
    let mut local = BTreeMap::<usize, usize>::new();
    for i in job.local.lock().unwrap().iter() {
        *local.entry(*i).or_default() += 1;
    }
    if let Some((i, n)) = local.iter().find(|(_, n)| **n > 1) {
        return Err(format!("fragment {i} ran {n} times on the initiator"));
    }
    let (mut remote, mut rerun) = (0, 0);
    for i in 0..count {
        let seqs = chunks.remove(&i).unwrap_or_default();
        // What was delivered of a fragment is a prefix of its chunks.
        if seqs.keys().copied().ne(0..seqs.len() as u32) {
            return Err(format!(
                "fragment {i}: chunks {:?} are not a prefix",
                seqs.keys()
            ));
        }
        let hosts: Vec<u32> = seqs.values().copied().collect();
        if local.contains_key(&i) {
            // Run here after its host died: chunks it had delivered came from a killed host.
            // (The chunks are not delivered twice; the fragment did run twice, once here.)
            if let Some(h) = hosts.iter().find(|h| !victims.contains(h)) {
                return Err(format!(
                    "fragment {i} ran here and has chunks from {h}, which did not die"
                ));
            }
            rerun += usize::from(!seqs.is_empty());
            if !seqs.is_empty() {
                return Err(format!(
                    "fragment {i} ran here with execute_fragment after chunks {:?} from {hosts:?} \
                     were delivered (rerun_here_after_delivery={rerun})",
                    seqs.keys()
                ));
            }
        } else if seqs.len() as u32 == job.flushes + 1 {
            // Chunks come from one host, except a prefix left by a host that then died.
            remote += 1;
            let last = hosts.last().copied();
            for (n, h) in hosts.iter().enumerate() {
                let final_host = Some(*h) == last && hosts[n..].iter().all(|x| x == h);
                if !final_host && !victims.contains(h) {
                    return Err(format!(
                        "fragment {i}: chunks from {hosts:?}, but only {victims:?} died"
                    ));
                }
            }
        } else {
            return Err(format!("fragment {i} missing chunks: got {seqs:?}"));
        }
    }
    let used: Vec<String> = report
        .per_host
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(h, _)| h.0.to_string())
        .collect();
    Ok(format!(
        "local={} remote={remote} rerun_here_after_delivery={rerun} used={} per_host={:?}",
        local.len(),
        used.join(","),
        report
            .per_host
            .iter()
            .map(|(h, n)| (h.0, *n))
            .collect::<Vec<_>>()
    ))
}

/// A CLUSTER job whose replica holds a large buffer (`mib` MiB, written so it is resident) and
/// whose fragments run until cancelled (`forever`) or for 20 ms. The replica prints when it is
/// made, when its fragments stop, when `cancel()` is called on it and when it is dropped.
pub(crate) struct Hog {
    mib: u32,
    forever: bool,
    ballast: Vec<u8>,
    announced: AtomicBool,
}

/// How a [`Hog`] replica names itself in what it prints: `hog` runs until cancelled,
/// `hog-once` finishes by itself.
fn label(forever: bool) -> &'static str {
    if forever {
        "hog"
    } else {
        "hog-once"
    }
}

#[derive(Serialize, Deserialize)]
struct HogWire {
    mib: u32,
    forever: bool,
}

impl Serialize for Hog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HogWire {
            mib: self.mib,
            forever: self.forever,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = HogWire::deserialize(d)?;
        let ballast = vec![0xa5u8; (w.mib as usize) << 20];
        println!("{} replica made: {} MiB", label(w.forever), w.mib);
        Ok(Hog {
            mib: w.mib,
            forever: w.forever,
            ballast,
            announced: AtomicBool::new(false),
        })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        if !self.ballast.is_empty() {
            // Free the buffer first: whoever reads the line may measure the memory.
            drop(std::mem::take(&mut self.ballast));
            println!("{} replica dropped: {} MiB", label(self.forever), self.mib);
        }
    }
}

impl FragmentedJob for Hog {
    const CLASS_ID: ClassId = ClassId::from_name("test.failures.hog");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, ctx: &ExecutionContext) {
        let end = Instant::now() + Duration::from_millis(20);
        while !ctx.is_cancelled() && (self.forever || Instant::now() < end) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        if !self.announced.swap(true, Ordering::SeqCst) {
            println!("{} running", label(self.forever));
        }
        let mut sum = 0u64;
        let end = Instant::now() + Duration::from_millis(20);
        while !ctx.is_cancelled() && (self.forever || Instant::now() < end) {
            // Keep reading the buffer: it is in use while fragments run.
            sum = sum.wrapping_add(u64::from(
                self.ballast
                    .get(index % self.ballast.len().max(1))
                    .copied()
                    .unwrap_or(0),
            ));
            std::thread::sleep(Duration::from_millis(2));
        }
        if ctx.is_cancelled() {
            println!(
                "{} fragment {index} stopped: cancelled",
                label(self.forever)
            );
        }
        out.write_all(&sum.to_le_bytes())
    }
    fn receive_remote_result(&self, _: &mut ResultReader, _: &Transaction, _: usize, _: usize) {}
    fn cancel(&self) {
        if !self.ballast.is_empty() {
            println!("{} cancel() called", label(self.forever));
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// USER_DEFINED (fragment i on `hosts[i % len]`) or ONCE_PER_HOST fragments that sleep and
/// record where they ran. A remote host prints `placed K running` when its first fragment
/// starts.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Placed {
    /// Job number (in what the replicas print).
    pub(crate) k: u32,
    /// 0 = ONCE_PER_HOST, 1 = USER_DEFINED.
    pub(crate) mode: u8,
    /// Duration of one fragment.
    pub(crate) sleep_ms: u64,
    /// USER_DEFINED placement.
    pub(crate) hosts: Vec<u32>,
    #[serde(skip)]
    announced: AtomicBool,
    #[serde(skip)]
    ran: Mutex<Vec<(usize, u32)>>,
}

impl FragmentedJob for Placed {
    const CLASS_ID: ClassId = ClassId::from_name("test.failures.placed");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        sleep_unless_cancelled(self.sleep_ms, ctx);
        self.ran.lock().unwrap().push((index, ctx.host().0));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        if !self.announced.swap(true, Ordering::SeqCst) {
            println!("placed {} running", self.k);
        }
        sleep_unless_cancelled(self.sleep_ms, ctx);
        out.write_all(&ctx.host().0.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let host = r.bytes().try_into().map_or(u32::MAX, u32::from_le_bytes);
        self.ran.lock().unwrap().push((index, host));
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(h) = self.hosts.get(i % self.hosts.len().max(1)) {
                *s = HostId(*h);
            }
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        if self.mode == 0 {
            SchedulingMode::OncePerHost
        } else {
            SchedulingMode::UserDefined
        }
    }
}

/// Checks a finished [`Placed`] job whose host `victim` was killed while running fragments:
/// its unfinished fragments are failed with `HostFailed(victim)` and ran nowhere else; every
/// other fragment ran exactly once, on its host.
fn verify_placed(job: &Placed, report: &JobReport, victim: u32) -> Result<String, String> {
    let count = report.count;
    if !report.skipped().is_empty() || !report.cancelled().is_empty() {
        return Err(format!(
            "nothing should be skipped or cancelled: {report:?}"
        ));
    }
    if report.done().len() + report.failed().len() != count {
        return Err(format!("done + failed != count: {report:?}"));
    }
    if report.failed().is_empty() {
        return Err(format!(
            "the killed host {victim} failed nothing: {report:?}"
        ));
    }
    for f in &report.failures {
        if f.host != HostId(victim) || f.reason != FailureReason::HostFailed(HostId(victim)) {
            return Err(format!("unexpected failure {f:?}"));
        }
        if job.mode == 1 && job.hosts[f.index % job.hosts.len()] != victim {
            return Err(format!("fragment {} was not the victim's", f.index));
        }
    }
    let ran = job.ran.lock().unwrap();
    let mut seen = BTreeMap::<usize, u32>::new();
    for (i, h) in ran.iter() {
        if seen.insert(*i, *h).is_some() {
            return Err(format!("fragment {i} ran twice"));
        }
        if report.failed().contains(*i) {
            return Err(format!("failed fragment {i} was re-run on {h}"));
        }
        if job.mode == 1 && job.hosts[*i % job.hosts.len()] != *h {
            return Err(format!("fragment {i} ran on {h}, not its assigned host"));
        }
    }
    if seen.len() != report.done().len() {
        return Err(format!(
            "{} fragments ran, {} done",
            seen.len(),
            report.done().len()
        ));
    }
    let failures: Vec<String> = report
        .failures
        .iter()
        .take(3)
        .map(|f| format!("{}: {}", f.index, f.reason))
        .collect();
    Ok(format!(
        "count={count} done={} failed={} (e.g. {})",
        report.done().len(),
        report.failed().len(),
        failures.join("; ")
    ))
}

// ---------------------------------------------------------------------------------------------
// The host program
// ---------------------------------------------------------------------------------------------

/// Whether this process is a host program started by the harness.
pub(crate) fn is_host() -> bool {
    std::env::var_os(HOST_ENV).is_some()
}

/// The host program: joins, prints events, runs commands from stdin; exits when stdin ends.
pub(crate) fn host_main() -> ! {
    crate::common::harness::init_stderr_logs();
    let cluster = match Cluster::builder()
        .register::<Chaos>()
        .register::<Hog>()
        .register::<Placed>()
        .join()
    {
        Ok(c) => Arc::new(c),
        Err(e) => {
            println!("join-error {e}");
            std::process::exit(3);
        }
    };
    let events = cluster.host_events();
    println!("joined {} pid {}", cluster.host_id().0, std::process::id());
    std::thread::spawn(move || {
        for e in events {
            match e.kind {
                HostEventKind::Up => println!("up {} {}", e.host.0, unix_micros(e.wall)),
                HostEventKind::Down { reason } => {
                    println!("down {} {} {reason}", e.host.0, unix_micros(e.wall))
                }
            }
        }
    });
    let c = cluster.clone();
    std::thread::spawn(move || match c.serve() {
        Ok(()) => println!("serve ok"),
        Err(e) => println!("serve {e}"),
    });
    let mut keep = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            break;
        }
        run_command(&cluster, &words, &mut keep);
    }
    std::process::exit(0);
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize) -> T {
    match words.get(i).and_then(|w| w.parse().ok()) {
        Some(v) => v,
        None => {
            println!("bad command {words:?}");
            std::process::exit(2);
        }
    }
}

fn hosts_arg(words: &[&str], i: usize) -> Vec<u32> {
    words
        .get(i)
        .map(|w| w.split(',').filter_map(|h| h.parse().ok()).collect())
        .unwrap_or_default()
}

/// Commands:
/// - `hosts`: prints `hosts <ids,…>`;
/// - `rss`: prints `rss <KiB>`;
/// - `chaos K COUNT SLEEP_MS AT_PERMILLE VICTIMS`: runs a [`Chaos`] job; prints `at K` once
///   AT_PERMILLE ‰ of its fragments are done, then `job K ok …` or `job K FAILED …`;
/// - `hog MIB COUNT`: submits a [`Hog`] job and returns (`hog submitted`);
/// - `placed K MODE COUNT SLEEP_MS HOSTS VICTIM`: runs a [`Placed`] job (MODE `ud` or `oph`),
///   prints `placed K ok …` or `placed K FAILED …`.
fn run_command(cluster: &Cluster, words: &[&str], keep: &mut Vec<JobHandle>) {
    match words.first().copied() {
        Some("hosts") => {
            let ids: Vec<String> = cluster.hosts().iter().map(|h| h.0.to_string()).collect();
            println!("hosts {}", ids.join(","));
        }
        Some("rss") => println!("rss {}", rss_kib()),
        Some("chaos") => {
            let (k, count, sleep_ms, at): (u32, usize, u64, usize) =
                (arg(words, 1), arg(words, 2), arg(words, 3), arg(words, 4));
            let victims: BTreeSet<u32> = hosts_arg(words, 5).into_iter().collect();
            let job = Arc::new(Chaos {
                k,
                sleep_ms,
                flushes: 2,
                ..Chaos::default()
            });
            let start = Instant::now();
            let h = match cluster.submit(&job, count) {
                Ok(h) => h,
                Err(e) => return println!("job {k} FAILED submit: {e}"),
            };
            let mut announced = false;
            while !h.is_finished() {
                if !announced && h.progress().0 * 1000 >= at * count {
                    println!("at {k} reached");
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if !announced {
                println!("at {k} reached");
            }
            let end = unix_micros(SystemTime::now());
            match h.wait() {
                Ok(report) => match verify_chaos(&job, &report, count, &victims) {
                    Ok(summary) => println!(
                        "job {k} ok end={end} elapsed_ms={} {summary}",
                        start.elapsed().as_millis()
                    ),
                    Err(e) => println!("job {k} FAILED {e}"),
                },
                Err(e) => println!("job {k} FAILED error: {e}"),
            }
        }
        Some("hog") => {
            let forever = words.get(3) == Some(&"forever");
            let job = Arc::new(Hog {
                mib: arg(words, 1),
                forever,
                ballast: Vec::new(),
                announced: AtomicBool::new(false),
            });
            match cluster.submit(&job, arg(words, 2)) {
                Ok(h) if forever => {
                    keep.push(h);
                    println!("hog submitted");
                }
                Ok(h) => match h.wait() {
                    Ok(r) if r.is_complete() => println!("hog done {:?}", r.per_host),
                    Ok(r) => println!("hog FAILED {r:?}"),
                    Err(e) => println!("hog FAILED {e}"),
                },
                Err(e) => println!("hog FAILED {e}"),
            }
        }
        Some("placed") => {
            let k: u32 = arg(words, 1);
            let mode = u8::from(words.get(2) == Some(&"ud"));
            let (count, sleep_ms): (usize, u64) = (arg(words, 3), arg(words, 4));
            let victim: u32 = arg(words, 6);
            let job = Arc::new(Placed {
                k,
                mode,
                sleep_ms,
                hosts: hosts_arg(words, 5),
                ..Placed::default()
            });
            match cluster.execute(&job, count) {
                Ok(report) => match verify_placed(&job, &report, victim) {
                    Ok(summary) => println!("placed {k} ok {summary}"),
                    Err(e) => println!("placed {k} FAILED {e}"),
                },
                Err(e) => println!("placed {k} FAILED error: {e}"),
            }
        }
        _ => println!("bad command {words:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The harness side
// ---------------------------------------------------------------------------------------------

/// Writes certificates for hosts `0..addrs.len()` and a configuration naming them at `addrs`
/// into `dir`; `settings` are extra lines of the `[cluster]` table. Returns the file's path.
pub(crate) fn write_config(
    dir: &Path,
    addrs: &[String],
    settings: &str,
) -> Result<PathBuf, String> {
    let lines = fragmenta_testkit::loopback::hosts(addrs.len(), "cores = 2");
    let toml = fragmenta_testkit::loopback::toml_at(dir, "failures", settings, addrs, &lines);
    let path = dir.join("cluster.toml");
    std::fs::write(&path, toml).map_err(|e| format!("write config: {e}"))?;
    ClusterConfig::load(&path).map_err(|e| format!("config: {e}"))?;
    Ok(path)
}

#[allow(unused_imports)] // not every test binary that includes this module uses it
pub(crate) use fragmenta_testkit::loopback::loopback_addrs;

/// One line a host printed.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    /// The host.
    pub(crate) host: u32,
    /// The text.
    pub(crate) text: String,
    /// When the harness read it.
    pub(crate) at: Instant,
}

struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The host processes of one scenario. Dropping it kills those still running.
pub(crate) struct Procs {
    config: PathBuf,
    hosts: BTreeMap<u32, Host>,
    tx: mpsc::Sender<(Line, bool)>,
    rx: mpsc::Receiver<(Line, bool)>,
    pending: VecDeque<Line>,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Procs {
    /// Processes of the cluster configured in `config`.
    pub(crate) fn new(config: PathBuf) -> Procs {
        let (tx, rx) = mpsc::channel();
        Procs {
            config,
            hosts: BTreeMap::new(),
            tx,
            rx,
            pending: VecDeque::new(),
            log: Arc::new(Mutex::new(Vec::new())),
            started: Instant::now(),
        }
    }

    /// Starts host `id` (through `wrapper`, e.g. `ip netns exec NS`, if not empty).
    pub(crate) fn spawn(&mut self, id: u32, wrapper: &[String]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("test binary: {e}"))?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .env(HOST_ENV, "1")
            .env("FRAGMENTA_CONFIG", &self.config)
            .env("FRAGMENTA_HOST_ID", id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start host {id}: {e}"))?;
        let stdin = child.stdin.take();
        for (stream, is_err) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                false,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                true,
            ),
        ] {
            let Some(stream) = stream else { continue };
            let tx = self.tx.clone();
            let log = self.log.clone();
            let started = self.started;
            std::thread::spawn(move || {
                for text in BufReader::new(stream).lines().map_while(Result::ok) {
                    let at = Instant::now();
                    log.lock().unwrap().push(format!(
                        "{:>8.3}s [host-{id}{}] {text}",
                        (at - started).as_secs_f64(),
                        if is_err { " stderr" } else { "" }
                    ));
                    if tx.send((Line { host: id, text, at }, is_err)).is_err() {
                        return;
                    }
                }
            });
        }
        self.hosts.insert(id, Host { child, stdin });
        Ok(())
    }

    /// Writes a command line to host `id`.
    pub(crate) fn send(&mut self, id: u32, command: &str) -> Result<(), String> {
        let host = self.hosts.get_mut(&id).ok_or(format!("no host {id}"))?;
        let stdin = host
            .stdin
            .as_mut()
            .ok_or(format!("host {id} has no stdin"))?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("write to host {id}: {e}"))
    }

    /// Waits for the next line of host `id` starting with `prefix`; lines it skips stay
    /// available to later calls. Fails after `limit` (a guard against a hang, not a
    /// measurement).
    pub(crate) fn expect(
        &mut self,
        id: u32,
        prefix: &str,
        limit: Duration,
    ) -> Result<Line, String> {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|l| l.host == id && l.text.starts_with(prefix))
        {
            return Ok(self.pending.remove(pos).unwrap_or_else(|| unreachable!()));
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((line, true)) => drop(line),
                Ok((line, false)) if line.host == id && line.text.starts_with(prefix) => {
                    return Ok(line)
                }
                Ok((line, false)) => self.pending.push_back(line),
                Err(_) => {
                    return Err(format!(
                        "host {id} printed no line starting with {prefix:?} within {limit:?}"
                    ))
                }
            }
        }
    }

    /// Lines already read that start with `prefix`, from any host, without consuming them.
    pub(crate) fn seen(&mut self, prefix: &str) -> Vec<Line> {
        while let Ok((line, is_err)) = self.rx.try_recv() {
            if !is_err {
                self.pending.push_back(line);
            }
        }
        self.pending
            .iter()
            .filter(|l| l.text.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// SIGKILLs host `id` and reaps it; returns the moment just before the signal.
    pub(crate) fn kill(&mut self, id: u32) -> Result<SystemTime, String> {
        let mut host = self.hosts.remove(&id).ok_or(format!("no host {id}"))?;
        let t = SystemTime::now();
        host.child
            .kill()
            .map_err(|e| format!("kill host {id}: {e}"))?;
        let _ = host.child.wait();
        Ok(t)
    }

    /// Waits up to `limit` for host `id` to exit by itself; its exit code.
    pub(crate) fn wait_exit(&mut self, id: u32, limit: Duration) -> Result<Option<i32>, String> {
        let deadline = Instant::now() + limit;
        let host = self.hosts.get_mut(&id).ok_or(format!("no host {id}"))?;
        host.stdin = None;
        loop {
            if let Some(status) = host
                .child
                .try_wait()
                .map_err(|e| format!("wait host {id}: {e}"))?
            {
                self.hosts.remove(&id);
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                return Err(format!("host {id} did not exit within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pid of host `id`'s process.
    pub(crate) fn pid(&self, id: u32) -> Option<u32> {
        self.hosts.get(&id).map(|h| h.child.id())
    }

    /// Everything the hosts printed so far, stdout and stderr, with times.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Kills every host still running.
    pub(crate) fn kill_all(&mut self) {
        for (_, mut h) in std::mem::take(&mut self.hosts) {
            let _ = h.child.kill();
            let _ = h.child.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Parses the `<unix µs>` field of an `up`/`down` line.
pub(crate) fn event_micros(line: &Line) -> Result<u64, String> {
    line.text
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .ok_or(format!("bad event line {:?}", line.text))
}

/// Milliseconds from `from` to the event time of `line`.
pub(crate) fn ms_since(from: SystemTime, line: &Line) -> Result<f64, String> {
    Ok((event_micros(line)? as f64 - unix_micros(from) as f64) / 1000.0)
}

/// A small deterministic random generator (splitmix64).
pub(crate) struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

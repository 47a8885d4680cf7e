//! Scheduling modes, loads and priorities across real processes, on clusters whose
//! configuration gives each host a sub-cluster, cores and GPUs: the runner writes a config with
//! certificates into a temporary folder and starts `fragmenta launch -n N --config FILE -- PROG`,
//! where PROG is this test binary in host mode (`FRAGMENTA_TEST_SCENARIO` set).
//!
//! Every fragment records, on the host that runs it, its index, the GPUs its `ExecutionContext`
//! names and the order it started in; every host measures its peak concurrency per job, its peak
//! load per GPU ordinal and its peak CPU load, and counts the replicas it deserialized. The
//! primary asserts on its `JobReport`s and on what each remote host sends back through a
//! [`Report`] job (USER_DEFINED, one fragment per host); remote hosts print their peaks.
//! Non-primary hosts that initiate jobs leave a verdict that the primary collects the same way
//! before it shuts the cluster down.
//!
//! A custom harness (no libtest): `main` is either the scenario runner or a host program.

mod common;

use fragmenta::*;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SCENARIO: &str = "FRAGMENTA_TEST_SCENARIO";

// ---------------------------------------------------------------------------------------------
// What one process saw.

/// Everything this process observed of the fragments it ran.
#[derive(Clone, Debug, Default, PartialEq)]
struct Ledger {
    /// (tag, fragment, GPU ordinals) of every `Probe` fragment run here, in start order.
    runs: Vec<(String, usize, Vec<u32>)>,
    /// Replicas deserialized here, by tag.
    replicas: BTreeMap<String, usize>,
    /// Peak of each gauge: `job:<tag>` (fragments of that job running at once), `gpu<n>` (sum
    /// of the loads on GPU n, in thousandths) and `cpu` (sum of CPU loads, in thousandths).
    peaks: BTreeMap<String, u64>,
    /// The outcome of the jobs this host initiated itself (non-primary initiators).
    verdict: Option<String>,
}

struct Gauges {
    ledger: Ledger,
    current: BTreeMap<String, u64>,
}

static GAUGES: Mutex<Gauges> = Mutex::new(Gauges {
    ledger: Ledger {
        runs: Vec::new(),
        replicas: BTreeMap::new(),
        peaks: BTreeMap::new(),
        verdict: None,
    },
    current: BTreeMap::new(),
});

fn gauges() -> MutexGuard<'static, Gauges> {
    GAUGES.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gauges {
    fn add(&mut self, name: String, amount: u64) {
        let cur = self.current.entry(name.clone()).or_insert(0);
        *cur += amount;
        let peak = self.ledger.peaks.entry(name).or_insert(0);
        *peak = (*peak).max(*cur);
    }

    fn sub(&mut self, name: &str, amount: u64) {
        if let Some(cur) = self.current.get_mut(name) {
            *cur = cur.saturating_sub(amount);
        }
    }
}

impl Ledger {
    fn to_text(&self) -> String {
        let mut out = String::new();
        for (tag, index, gpus) in &self.runs {
            let gpus: Vec<String> = gpus.iter().map(u32::to_string).collect();
            out.push_str(&format!("run\t{tag}\t{index}\t{}\n", gpus.join(",")));
        }
        for (tag, n) in &self.replicas {
            out.push_str(&format!("replicas\t{tag}\t{n}\n"));
        }
        for (name, peak) in &self.peaks {
            out.push_str(&format!("peak\t{name}\t{peak}\n"));
        }
        if let Some(v) = &self.verdict {
            out.push_str(&format!("verdict\t{}\n", v.replace(['\n', '\t'], " ")));
        }
        out
    }

    fn parse(text: &str) -> Result<Ledger, String> {
        let mut l = Ledger::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{line:?}: {e}"));
            match f.as_slice() {
                ["run", tag, index, gpus] => {
                    let gpus = gpus
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|g| num(g).map(|g| g as u32))
                        .collect::<Result<_, _>>()?;
                    l.runs.push((tag.to_string(), num(index)? as usize, gpus));
                }
                ["replicas", tag, n] => {
                    l.replicas.insert(tag.to_string(), num(n)? as usize);
                }
                ["peak", name, n] => {
                    l.peaks.insert(name.to_string(), num(n)?);
                }
                ["verdict", v] => l.verdict = Some(v.to_string()),
                _ => return Err(format!("bad ledger line {line:?}")),
            }
        }
        Ok(l)
    }

    /// Fragments of `tag` run here, ascending.
    fn ran(&self, tag: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .runs
            .iter()
            .filter(|r| r.0 == tag)
            .map(|r| r.1)
            .collect();
        v.sort_unstable();
        v
    }

    fn peak(&self, name: &str) -> u64 {
        self.peaks.get(name).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs.

fn replica_tag<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let tag = String::deserialize(d)?;
    *gauges().ledger.replicas.entry(tag.clone()).or_insert(0) += 1;
    Ok(tag)
}

/// Where and how one fragment ran, as its host saw it.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    index: usize,
    host: u32,
    /// Position among the `Probe` fragments started on that host.
    start: u64,
    gpus: Vec<u32>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.host.to_le_bytes());
        b.extend_from_slice(&self.start.to_le_bytes());
        for g in &self.gpus {
            b.extend_from_slice(&g.to_le_bytes());
        }
        b
    }

    fn decode(index: usize, b: &[u8]) -> Option<Record> {
        let host = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
        let start = u64::from_le_bytes(b.get(4..12)?.try_into().ok()?);
        let gpus = b
            .get(12..)?
            .chunks(4)
            .map(|c| c.try_into().ok().map(u32::from_le_bytes))
            .collect::<Option<Vec<u32>>>()?;
        Some(Record {
            index,
            host,
            start,
            gpus,
        })
    }
}

/// A job whose fragments sleep a while and record where, when and on which GPUs they ran.
#[derive(Serialize, Deserialize, Default)]
struct Probe {
    #[serde(deserialize_with = "replica_tag")]
    tag: String,
    mode: SchedulingMode,
    cpu_load: f32,
    gpu_load: f32,
    priority: i8,
    thread_limit: usize,
    sleep_ms: u64,
    /// USER_DEFINED: fragment `i` goes to `hosts[i % hosts.len()]`.
    hosts: Vec<u32>,
    #[serde(skip)]
    records: Mutex<Vec<Record>>,
}

impl Probe {
    fn new(tag: &str, mode: SchedulingMode) -> Probe {
        Probe {
            tag: tag.into(),
            mode,
            cpu_load: 1.0,
            sleep_ms: 5,
            ..Probe::default()
        }
    }

    fn run(&self, index: usize, ctx: &ExecutionContext) -> Record {
        let job = format!("job:{}", self.tag);
        let cpu = (self.cpu_load * 1000.0).round() as u64;
        let gpu = (self.gpu_load.min(1.0) * 1000.0).round() as u64;
        let start = {
            let mut g = gauges();
            g.ledger
                .runs
                .push((self.tag.clone(), index, ctx.gpus().to_vec()));
            g.add(job.clone(), 1);
            g.add("cpu".into(), cpu);
            for o in ctx.gpus() {
                g.add(format!("gpu{o}"), gpu);
            }
            g.ledger.runs.len() as u64 - 1
        };
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        {
            let mut g = gauges();
            g.sub(&job, 1);
            g.sub("cpu", cpu);
            for o in ctx.gpus() {
                g.sub(&format!("gpu{o}"), gpu);
            }
        }
        Record {
            index,
            host: ctx.host().0,
            start,
            gpus: ctx.gpus().to_vec(),
        }
    }

    fn records(&self) -> Vec<Record> {
        let mut r = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        r.sort_by_key(|r| r.index);
        r
    }
}

impl FragmentedJob for Probe {
    const CLASS_ID: ClassId = ClassId::from_name("test.modes.probe");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        let r = self.run(index, ctx);
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_all(&self.run(index, ctx).encode())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let record = Record::decode(index, r.bytes()).unwrap_or(Record {
            index,
            host: u32::MAX,
            start: 0,
            gpus: vec![],
        });
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
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
        self.mode
    }
    fn cpu_load(&self) -> f32 {
        self.cpu_load
    }
    fn gpu_load(&self) -> f32 {
        self.gpu_load
    }
    fn priority(&self) -> i8 {
        self.priority
    }
    fn thread_limit(&self) -> usize {
        self.thread_limit
    }
}

/// One fragment per listed host: sends that host's [`Ledger`] back (and prints its peaks).
#[derive(Serialize, Deserialize, Default)]
struct Report {
    hosts: Vec<u32>,
    print: bool,
    #[serde(skip)]
    got: Mutex<BTreeMap<usize, Vec<u8>>>,
}

impl FragmentedJob for Report {
    const CLASS_ID: ClassId = ClassId::from_name("test.modes.report");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        let text = gauges().ledger.to_text();
        self.got
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, text.into_bytes());
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        let ledger = gauges().ledger.clone();
        if self.print {
            let peaks: Vec<String> = ledger
                .peaks
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("peaks {}", peaks.join(" "));
        }
        out.write_all(ledger.to_text().as_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        self.got
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, r.bytes().to_vec());
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (s, h) in slots.iter_mut().zip(&self.hosts) {
            *s = HostId(*h);
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn cpu_load(&self) -> f32 {
        0.0 // answers at once, even on a host whose cores are busy
    }
}

/// A sum whose value the initiator knows in advance: each fragment contributes `value(i)`.
#[derive(Serialize, Deserialize, Default)]
struct Sum {
    seed: u64,
    mode: SchedulingMode,
    priority: i8,
    hosts: Vec<u32>,
    #[serde(skip)]
    total: AtomicU64,
    #[serde(skip)]
    seen: AtomicUsize,
}

impl Sum {
    fn value(&self, index: usize) -> u64 {
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(17)
            ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }

    fn expected(&self, count: usize) -> u64 {
        (0..count).fold(0u64, |a, i| a.wrapping_add(self.value(i)))
    }

    fn add(&self, v: u64) {
        // Wrapping addition commutes, so fragments may arrive in any order.
        self.total.fetch_add(v, Ordering::Relaxed);
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
}

impl FragmentedJob for Sum {
    const CLASS_ID: ClassId = ClassId::from_name("test.modes.sum");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        self.add(self.value(index));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_all(&self.value(index).to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        match r.bytes().try_into() {
            Ok(b) => self.add(u64::from_le_bytes(b)),
            Err(_) => self.add(u64::MAX), // wrong size: the sum will not match
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(h) = self.hosts.get(i % self.hosts.len().max(1)) {
                *s = HostId(*h);
            }
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        self.mode
    }
    fn priority(&self) -> i8 {
        self.priority
    }
}

// ---------------------------------------------------------------------------------------------
// Host programs.

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn err_string(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The ledger of every host in `hosts`: this one's directly, the others' through a [`Report`]
/// job.
fn ledgers(cluster: &Cluster, hosts: &[u32], print: bool) -> Result<BTreeMap<u32, Ledger>, String> {
    let me = cluster.host_id().0;
    let remote: Vec<u32> = hosts.iter().copied().filter(|h| *h != me).collect();
    let job = Arc::new(Report {
        hosts: remote.clone(),
        print,
        ..Report::default()
    });
    let report = cluster.execute(&job, remote.len()).map_err(err_string)?;
    check(report.is_complete(), || {
        format!("ledger report: {report:?}")
    })?;
    let got = job.got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut out = BTreeMap::new();
    for (i, h) in remote.iter().enumerate() {
        let bytes = got.get(&i).ok_or(format!("no ledger from host {h}"))?;
        out.insert(*h, Ledger::parse(&String::from_utf8_lossy(bytes))?);
    }
    if hosts.contains(&me) {
        out.insert(me, gauges().ledger.clone());
    }
    Ok(out)
}

/// Waits until every host of `hosts` has a verdict, and fails on any that is not "ok".
fn await_verdicts(cluster: &Cluster, hosts: &[u32]) -> Result<(), String> {
    loop {
        let l = ledgers(cluster, hosts, false)?;
        if l.values().all(|l| l.verdict.is_some()) {
            for (h, l) in &l {
                let v = l.verdict.clone().unwrap_or_default();
                println!("verdict of host-{h}: {v}");
                check(v.starts_with("ok"), || format!("host {h}: {v}"))?;
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Submits `job` and expects an invalid-argument error.
fn expect_invalid<J: FragmentedJob>(
    cluster: &Cluster,
    job: J,
    count: usize,
    want: InvalidArgument,
) -> Result<(), String> {
    let got = cluster.execute(&Arc::new(job), count).err();
    check(
        got == Some(ExecuteError::InvalidArgument(want.clone())),
        || format!("expected {want:?}, got {got:?}"),
    )
}

/// ONCE_PER_HOST, USER_DEFINED and the GPU error on 5 hosts: 0, 1, 2 in sub-cluster 0, 3 and 4
/// in sub-cluster 1, no GPUs.
fn sub_clusters(cluster: &Cluster) -> Result<(), String> {
    use SchedulingMode::*;
    // Count 0: exactly one fragment per remote host of sub-cluster 0.
    let job = Arc::new(Probe::new("once0", OncePerHost));
    let r = cluster.execute(&job, 0).map_err(err_string)?;
    check(r.count == 2 && r.is_complete(), || format!("once0: {r:?}"))?;
    let hosts: Vec<u32> = job.records().iter().map(|r| r.host).collect();
    check(hosts == [1, 2] || hosts == [2, 1], || {
        format!("once0 ran on {hosts:?}")
    })?;
    // Count 1: at most one per host, on an eligible host.
    let job = Arc::new(Probe::new("once1", OncePerHost));
    let r = cluster.execute(&job, 1).map_err(err_string)?;
    let rec = job.records();
    check(
        r.count == 1 && r.is_complete() && rec.len() == 1 && [1, 2].contains(&rec[0].host),
        || format!("once1: {r:?} {rec:?}"),
    )?;
    // Errors before anything runs.
    expect_invalid(
        cluster,
        Probe::new("once3", OncePerHost),
        3,
        InvalidArgument::OncePerHostCountExceedsHosts {
            count: 3,
            eligible: 2,
        },
    )?;
    expect_invalid(
        cluster,
        Probe {
            gpu_load: 0.5,
            ..Probe::new("once-gpu", OncePerHost)
        },
        0,
        InvalidArgument::OncePerHostWithGpuLoad(0.5),
    )?;
    expect_invalid(
        cluster,
        Probe {
            gpu_load: 1.0,
            ..Probe::new("nogpu-cluster", Cluster)
        },
        8,
        InvalidArgument::NoGpuHost(1.0),
    )?;
    expect_invalid(
        cluster,
        Probe {
            gpu_load: 0.25,
            hosts: vec![1, 2, 3],
            ..Probe::new("nogpu-user", UserDefined)
        },
        6,
        InvalidArgument::NoGpuHost(0.25),
    )?;
    // USER_DEFINED across sub-clusters; hosts 7 and UNASSIGNED do not exist.
    let assign = [0, 1, 2, 3, 4, 7, u32::MAX];
    let n = 21;
    let job = Arc::new(Probe {
        hosts: assign.to_vec(),
        ..Probe::new("user", UserDefined)
    });
    let r = cluster.execute(&job, n).map_err(err_string)?;
    let unknown: Vec<usize> = (0..n).filter(|i| assign[i % 7] > 4).collect();
    check(r.skipped().to_vec() == unknown, || {
        format!("user skipped {:?}, expected {unknown:?}", r.skipped())
    })?;
    check(
        r.done().len() == n - unknown.len() && r.failed().is_empty(),
        || format!("user: {r:?}"),
    )?;
    for rec in job.records() {
        check(rec.host == assign[rec.index % 7], || {
            format!("user fragment {} ran on host {}", rec.index, rec.host)
        })?;
    }
    check(job.records().len() == r.done().len(), || {
        "user: one record per done fragment".into()
    })?;

    // Host 3 (sub-cluster 1) ran its own ONCE_PER_HOST job meanwhile.
    await_verdicts(cluster, &[3])?;
    let all = ledgers(cluster, &[0, 1, 2, 3, 4], true)?;
    for (h, l) in &all {
        let once0 = l.ran("once0");
        let expect: usize = if [1, 2].contains(h) { 1 } else { 0 };
        check(once0.len() == expect, || {
            format!("host {h} ran once0 fragments {once0:?}")
        })?;
        let h3 = l.ran("once-from-3");
        check(h3.len() == usize::from(*h == 4), || {
            format!("host {h} ran once-from-3 fragments {h3:?}")
        })?;
        for bad in ["once3", "once-gpu", "nogpu-cluster", "nogpu-user"] {
            check(
                l.ran(bad).is_empty() && !l.replicas.contains_key(bad),
                || format!("host {h} ran or received invalid job {bad}: {l:?}"),
            )?;
        }
        let mine: Vec<usize> = (0..n).filter(|i| assign[i % 7] == *h).collect();
        check(l.ran("user") == mine, || {
            format!(
                "host {h} ran user fragments {:?}, assigned {mine:?}",
                l.ran("user")
            )
        })?;
        for tag in ["once0", "user"] {
            let replicas = l.replicas.get(tag).copied().unwrap_or(0);
            let want = usize::from(*h != 0 && !l.ran(tag).is_empty());
            check(replicas == want, || {
                format!("host {h} made {replicas} replicas of {tag}")
            })?;
        }
    }
    let once1: usize = all.values().map(|l| l.ran("once1").len()).sum();
    check(once1 == 1, || format!("once1 ran {once1} times"))?;
    Ok(())
}

/// Host 3 of `sub_clusters`: ONCE_PER_HOST from sub-cluster 1 reaches host 4 only.
fn once_from_sub_cluster_1(cluster: &Cluster) -> Result<String, String> {
    let job = Arc::new(Probe::new("once-from-3", SchedulingMode::OncePerHost));
    let r = cluster.execute(&job, 0).map_err(err_string)?;
    let hosts: Vec<u32> = job.records().iter().map(|r| r.host).collect();
    check(r.count == 1 && r.is_complete() && hosts == [4], || {
        format!("from host 3: {r:?}, ran on {hosts:?}")
    })?;
    expect_invalid(
        cluster,
        Probe::new("once3", SchedulingMode::OncePerHost),
        2,
        InvalidArgument::OncePerHostCountExceedsHosts {
            count: 2,
            eligible: 1,
        },
    )?;
    Ok("once-per-host from sub-cluster 1 ran on host 4 only".into())
}

/// Cores and GPUs of the hosts of the `gpus` scenario, by host id.
const GPU_HOSTS: [(u32, u32); 4] = [(2, 0), (4, 1), (3, 2), (1, 0)];

/// GPU placement, thread_limit and cpu_load on 4 hosts with different cores and GPUs.
fn gpus(cluster: &Cluster) -> Result<(), String> {
    use SchedulingMode::Cluster as C;
    let gpus_of = |h: u32| GPU_HOSTS.get(h as usize).map_or(0, |x| x.1);
    let cores_of = |h: u32| GPU_HOSTS.get(h as usize).map_or(0, |x| x.0);
    // Two GPU jobs at once: half a GPU per fragment, and two GPUs per fragment.
    let half = Arc::new(Probe {
        cpu_load: 0.0,
        gpu_load: 0.5,
        sleep_ms: 15,
        ..Probe::new("gpu-half", C)
    });
    let two = Arc::new(Probe {
        cpu_load: 0.0,
        gpu_load: 2.0,
        sleep_ms: 15,
        ..Probe::new("gpu-two", C)
    });
    let (h1, h2) = (
        cluster.submit(&half, 40).map_err(err_string)?,
        cluster.submit(&two, 6).map_err(err_string)?,
    );
    for (r, name) in [(h1.wait(), "gpu-half"), (h2.wait(), "gpu-two")] {
        let r = r.map_err(err_string)?;
        check(r.is_complete(), || format!("{name}: {r:?}"))?;
    }
    for rec in half.records() {
        let n = gpus_of(rec.host);
        check(rec.gpus.len() == 1 && rec.gpus[0] < n, || {
            format!(
                "gpu-half fragment got GPUs {:?} on host {} with {n} GPUs",
                rec.gpus, rec.host
            )
        })?;
    }
    for rec in two.records() {
        let n = gpus_of(rec.host);
        let want: Vec<u32> = (0..n.min(2)).collect();
        let mut got = rec.gpus.clone();
        got.sort_unstable();
        check(n > 0 && got == want, || {
            format!(
                "gpu-two fragment got GPUs {:?} on host {} with {n} GPUs",
                rec.gpus, rec.host
            )
        })?;
    }
    // Two CPU jobs at once: thread_limit 2, and cpu_load 1.5.
    let limited = Arc::new(Probe {
        thread_limit: 2,
        sleep_ms: 10,
        ..Probe::new("threads2", C)
    });
    let heavy = Arc::new(Probe {
        cpu_load: 1.5,
        sleep_ms: 10,
        ..Probe::new("cpu1.5", C)
    });
    let (h1, h2) = (
        cluster.submit(&limited, 60).map_err(err_string)?,
        cluster.submit(&heavy, 40).map_err(err_string)?,
    );
    for (r, name) in [(h1.wait(), "threads2"), (h2.wait(), "cpu1.5")] {
        let r = r.map_err(err_string)?;
        check(r.is_complete(), || format!("{name}: {r:?}"))?;
    }

    let all = ledgers(cluster, &[0, 1, 2, 3], true)?;
    for (h, l) in &all {
        let (cores, n) = (cores_of(*h), gpus_of(*h));
        println!("host-{h} ({cores} cores, {n} GPUs) peaks: {:?}", l.peaks);
        for tag in ["gpu-half", "gpu-two"] {
            check(n > 0 || l.ran(tag).is_empty(), || {
                format!(
                    "host {h} has no GPU but ran {tag} fragments {:?}",
                    l.ran(tag)
                )
            })?;
        }
        for (name, peak) in &l.peaks {
            if let Some(ordinal) = name.strip_prefix("gpu") {
                let ordinal: u32 = ordinal.parse().map_err(err_string)?;
                check(ordinal < n, || format!("host {h} used GPU {ordinal}"))?;
                check(*peak <= 1000, || {
                    format!("host {h} GPU {ordinal} carried a load of {peak}/1000")
                })?;
            }
        }
        for (tag, limit) in [
            ("threads2", 2),
            ("cpu1.5", ((cores as f32 / 1.5).floor() as u64).max(1)),
        ] {
            let peak = l.peak(&format!("job:{tag}"));
            check(!l.ran(tag).is_empty(), || {
                format!("host {h} ran no {tag} fragment")
            })?;
            check(peak <= limit, || {
                format!("host {h}: {peak} fragments of {tag} at once, limit {limit}")
            })?;
        }
        let cpu_cap = (u64::from(cores) * 1000).max(1500); // a load above the cores runs alone
        check(l.peak("cpu") <= cpu_cap, || {
            format!("host {h}: CPU load {} with {cores} cores", l.peak("cpu"))
        })?;
    }
    Ok(())
}

/// Submits `n` jobs at once and checks every result.
fn many_jobs(cluster: &Cluster, n: u64) -> Result<String, String> {
    let me = u64::from(cluster.host_id().0);
    let hosts: Vec<u32> = cluster.hosts().iter().map(|h| h.0).collect();
    let jobs: Vec<(Arc<Sum>, usize)> = (0..n)
        .map(|j| {
            let mode = if j % 4 == 3 {
                SchedulingMode::UserDefined
            } else {
                SchedulingMode::Cluster
            };
            let job = Sum {
                seed: me * 1000 + j,
                mode,
                priority: (j % 3) as i8,
                hosts: hosts.clone(),
                ..Sum::default()
            };
            (Arc::new(job), 50 + 37 * j as usize)
        })
        .collect();
    let handles = jobs
        .iter()
        .map(|(job, count)| cluster.submit(job, *count))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err_string)?;
    let mut used = BTreeSet::new();
    let mut fragments = 0;
    for (h, (job, count)) in handles.into_iter().zip(&jobs) {
        let r = h.wait().map_err(err_string)?;
        check(r.is_complete(), || format!("job {}: {r:?}", job.seed))?;
        let (total, seen) = (
            job.total.load(Ordering::Relaxed),
            job.seen.load(Ordering::Relaxed),
        );
        check(seen == *count && total == job.expected(*count), || {
            format!(
                "job {}: {seen} of {count} results, sum {total:#x}, expected {:#x}",
                job.seed,
                job.expected(*count)
            )
        })?;
        used.extend(r.per_host.iter().map(|p| p.0));
        fragments += count;
    }
    check(used.len() == hosts.len(), || {
        format!("hosts used: {used:?}")
    })?;
    Ok(format!("{n} jobs, {fragments} fragments, correct sums"))
}

/// Priorities across jobs on host 1 (one core): a low-priority job fills it, then jobs of lower,
/// higher and equal priority arrive.
fn priority(cluster: &Cluster) -> Result<(), String> {
    let on_host_1 = |tag: &str, priority: i8| Probe {
        priority,
        hosts: vec![1],
        sleep_ms: 20,
        ..Probe::new(tag, SchedulingMode::UserDefined)
    };
    let fill = Arc::new(on_host_1("fill-5", 5));
    let fill_h = cluster.submit(&fill, 40).map_err(err_string)?;
    // Once a fragment is done, host 1 holds the job's other fragments in its queue.
    while fill_h.progress().0 == 0 && !fill_h.is_finished() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let low = Arc::new(on_host_1("low-9", 9));
    let high = Arc::new(on_host_1("high-1", 1));
    let same = Arc::new(on_host_1("same-5", 5));
    let low_h = cluster.submit(&low, 4).map_err(err_string)?;
    let high_h = cluster.submit(&high, 3).map_err(err_string)?;
    let same_h = cluster.submit(&same, 3).map_err(err_string)?;
    for h in [fill_h, low_h, high_h, same_h] {
        let r = h.wait().map_err(err_string)?;
        check(r.is_complete(), || format!("{r:?}"))?;
    }
    let starts = |job: &Probe| -> Result<Vec<u64>, String> {
        let recs = job.records();
        check(recs.iter().all(|r| r.host == 1), || format!("{recs:?}"))?;
        Ok(recs.iter().map(|r| r.start).collect())
    };
    let (fill, low, high, same) = (
        starts(&fill)?,
        starts(&low)?,
        starts(&high)?,
        starts(&same)?,
    );
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    let min = |v: &[u64]| v.iter().copied().min().unwrap_or(u64::MAX);
    println!(
        "start order on host 1: fill-5 {fill:?} low-9 {low:?} high-1 {high:?} same-5 {same:?}"
    );
    check(fill.iter().any(|s| *s > max(&high)), || {
        "high-1 did not overtake the waiting fill-5 fragments".into()
    })?;
    check(max(&high) < min(&same) && max(&high) < min(&low), || {
        "high-1 must start before same-5 and low-9".into()
    })?;
    check(max(&fill) < min(&same), || {
        "equal priority: the earlier job (fill-5) runs first".into()
    })?;
    check(max(&same) < min(&low), || {
        "low-9 was submitted before same-5 but must run after it".into()
    })?;
    Ok(())
}

/// The program every launched process runs.
fn host_main(scenario: &str) -> Result<(), String> {
    let cluster = Cluster::builder()
        .register::<Probe>()
        .register::<Report>()
        .register::<Sum>()
        .join()
        .map_err(err_string)?;
    if cluster.is_primary() {
        match scenario {
            "sub_clusters" => sub_clusters(&cluster)?,
            "gpus" => gpus(&cluster)?,
            "concurrent" => {
                let mine = many_jobs(&cluster, 20)?;
                println!("host-0: {mine}");
                await_verdicts(&cluster, &[1, 2])?;
            }
            "priority" => priority(&cluster)?,
            other => return Err(format!("unknown scenario {other}")),
        }
        println!("{scenario} ok");
        return Ok(());
    }
    let verdict = match (scenario, cluster.host_id().0) {
        ("sub_clusters", 3) => Some(once_from_sub_cluster_1(&cluster)),
        ("concurrent", 1 | 2) => Some(many_jobs(&cluster, 20)),
        _ => None,
    };
    if let Some(v) = verdict {
        let text = match v {
            Ok(s) => format!("ok: {s}"),
            Err(e) => format!("error: {e}"),
        };
        println!("verdict {text}");
        gauges().ledger.verdict = Some(text);
    }
    cluster.serve().map_err(err_string)
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// (sub-cluster, cores, GPUs) of each host, ids 0, 1, …
type Layout = &'static [(u32, u32, u32)];

/// Writes certificates and a config for `layout` on free loopback ports into `dir`.
fn write_config(dir: &Path, layout: Layout) -> PathBuf {
    let ids: Vec<HostId> = (0..layout.len() as u32).map(HostId).collect();
    fragmenta_net::certs::generate(&dir.join("certs"), "modes", &ids).expect("certificates");
    let sockets: Vec<std::net::UdpSocket> = layout
        .iter()
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
        .collect();
    let mut toml = String::from("[cluster]\nname = \"modes\"\nca_cert = \"certs/ca.pem\"\n");
    for (i, ((sub, cores, gpus), socket)) in layout.iter().zip(&sockets).enumerate() {
        let port = socket.local_addr().expect("port").port();
        toml.push_str(&format!(
            "[[host]]\nid = {i}\naddress = \"127.0.0.1:{port}\"\nsub_cluster = {sub}\n\
             cores = {cores}\ngpus = {gpus}\ncert = \"certs/host-{i}.pem\"\n\
             key = \"certs/host-{i}.key\"\n"
        ));
    }
    drop(sockets);
    let path = dir.join("cluster.toml");
    std::fs::write(&path, toml).expect("write the config");
    path
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
    let scenarios: [(&str, Layout); 4] = [
        // Hosts 0-2 in sub-cluster 0, 3-4 in sub-cluster 1; no GPU anywhere.
        (
            "sub_clusters",
            &[(0, 2, 0), (0, 2, 0), (0, 2, 0), (1, 2, 0), (1, 2, 0)],
        ),
        // (cores, GPUs) per host as GPU_HOSTS says.
        ("gpus", &[(0, 2, 0), (0, 4, 1), (0, 3, 2), (0, 1, 0)]),
        // Three initiators × 20 jobs at once.
        ("concurrent", &[(0, 2, 0), (0, 2, 0), (0, 2, 0), (0, 2, 0)]),
        // Host 1 has one core, so its fragments wait in its queue.
        ("priority", &[(0, 2, 0), (0, 1, 0)]),
    ];
    let names: Vec<&'static str> = scenarios.iter().map(|s| s.0).collect();
    common::harness::run_named("modes", &names, |name| {
        let layout = scenarios
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s.1)
            .ok_or_else(|| format!("no scenario {name}"))?;
        common::harness::launched(launch(name, layout), |out| {
            out.contains(&format!("[host-0] {name} ok"))
                .then_some(())
                .ok_or_else(|| "no success line".to_string())
        })
    })
}

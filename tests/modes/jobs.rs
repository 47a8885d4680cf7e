//! The jobs of the mode scenarios and what each host records of them (its [`Ledger`]).

use fragmenta::*;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// What each host saw.

/// Everything one host observed of the fragments it ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Ledger {
    /// (tag, fragment, GPU ordinals) of every `Probe` fragment run here, in start order.
    pub(crate) runs: Vec<(String, usize, Vec<u32>)>,
    /// Replicas deserialized here, by tag.
    pub(crate) replicas: BTreeMap<String, usize>,
    /// Peak of each gauge: `job:<tag>` (fragments of that job running at once), `gpu<n>` (sum
    /// of the loads on GPU n, in thousandths) and `cpu` (sum of CPU loads, in thousandths).
    pub(crate) peaks: BTreeMap<String, u64>,
    /// The outcome of the jobs this host initiated itself (non-primary initiators).
    pub(crate) verdict: Option<String>,
}

#[derive(Default)]
pub(crate) struct Gauges {
    pub(crate) ledger: Ledger,
    current: BTreeMap<String, u64>,
}

/// The gauges of every host of this process, by host id: one entry in a host process, one per
/// host for an in-process cluster.
static GAUGES: Mutex<BTreeMap<u32, Gauges>> = Mutex::new(BTreeMap::new());

/// Runs `f` on the gauges of `host`.
pub(crate) fn with_gauges<R>(host: u32, f: impl FnOnce(&mut Gauges) -> R) -> R {
    let mut all = GAUGES.lock().unwrap_or_else(|e| e.into_inner());
    f(all.entry(host).or_default())
}

/// A copy of `host`'s ledger.
pub(crate) fn ledger_of(host: u32) -> Ledger {
    with_gauges(host, |g| g.ledger.clone())
}

/// Forgets what every host saw (between scenarios of one runner process).
pub(crate) fn reset_gauges() {
    GAUGES.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The host whose runtime thread this is: the runtime names its network threads (and the
/// blocking threads that deserialize replicas) `fragmenta-net-<host>`, which tells the hosts of
/// an in-process cluster apart where no `ExecutionContext` says it. `u32::MAX` elsewhere, so a
/// replica counted there matches no host's expectation.
fn thread_host() -> u32 {
    std::thread::current()
        .name()
        .and_then(|n| n.strip_prefix("fragmenta-net-"))
        .and_then(|h| h.parse().ok())
        .unwrap_or(u32::MAX)
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
    pub(crate) fn to_text(&self) -> String {
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

    pub(crate) fn parse(text: &str) -> Result<Ledger, String> {
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
    pub(crate) fn ran(&self, tag: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .runs
            .iter()
            .filter(|r| r.0 == tag)
            .map(|r| r.1)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn peak(&self, name: &str) -> u64 {
        self.peaks.get(name).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs.

fn replica_tag<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let tag = String::deserialize(d)?;
    with_gauges(thread_host(), |g| {
        *g.ledger.replicas.entry(tag.clone()).or_insert(0) += 1;
    });
    Ok(tag)
}

/// Where and how one fragment ran, as its host saw it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub(crate) index: usize,
    pub(crate) host: u32,
    /// Position among the `Probe` fragments started on that host.
    pub(crate) start: u64,
    pub(crate) gpus: Vec<u32>,
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

    pub(crate) fn decode(index: usize, b: &[u8]) -> Option<Record> {
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
/// Remote fragments can stream `flushes` chunks before their record; one fragment can panic;
/// a sleeping fragment notes a cancellation it sees.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Probe {
    #[serde(deserialize_with = "replica_tag")]
    pub(crate) tag: String,
    pub(crate) mode: SchedulingMode,
    pub(crate) cpu_load: f32,
    pub(crate) gpu_load: f32,
    pub(crate) priority: i8,
    pub(crate) thread_limit: usize,
    pub(crate) sleep_ms: u64,
    /// USER_DEFINED: fragment `i` goes to `hosts[i % hosts.len()]`.
    pub(crate) hosts: Vec<u32>,
    /// Chunks a remote fragment flushes before its record: `index * 1000 + k`, 8 bytes each.
    pub(crate) flushes: u32,
    /// This fragment panics with `boom <index>` (wherever it runs).
    pub(crate) panic_on: Option<usize>,
    pub(crate) unordered: bool,
    #[serde(skip)]
    pub(crate) records: Mutex<Vec<Record>>,
    /// (fragment, seq, bytes) of every flushed chunk received, in arrival order.
    #[serde(skip)]
    pub(crate) chunks: Mutex<Vec<(usize, u32, Vec<u8>)>>,
    /// (fragment, seq) of every chunk received, in arrival order.
    #[serde(skip)]
    pub(crate) arrivals: Mutex<Vec<(usize, u32)>>,
    /// Calls of `cancel()` on this object.
    #[serde(skip)]
    pub(crate) cancel_calls: AtomicU32,
}

impl Probe {
    pub(crate) fn new(tag: &str, mode: SchedulingMode) -> Probe {
        Probe {
            tag: tag.into(),
            mode,
            cpu_load: 1.0,
            sleep_ms: 5,
            ..Probe::default()
        }
    }

    fn run(&self, index: usize, ctx: &ExecutionContext) -> Record {
        let host = ctx.host().0;
        let job = format!("job:{}", self.tag);
        let cpu = (self.cpu_load * 1000.0).round() as u64;
        let gpu = (self.gpu_load.min(1.0) * 1000.0).round() as u64;
        let start = with_gauges(host, |g| {
            g.ledger
                .runs
                .push((self.tag.clone(), index, ctx.gpus().to_vec()));
            g.add(job.clone(), 1);
            g.add("cpu".into(), cpu);
            for o in ctx.gpus() {
                g.add(format!("gpu{o}"), gpu);
            }
            g.ledger.runs.len() as u64 - 1
        });
        let end = Instant::now() + Duration::from_millis(self.sleep_ms);
        let mut saw_cancel = false;
        loop {
            saw_cancel |= ctx.is_cancelled();
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(1)));
        }
        with_gauges(host, |g| {
            g.sub(&job, 1);
            g.sub("cpu", cpu);
            for o in ctx.gpus() {
                g.sub(&format!("gpu{o}"), gpu);
            }
            if saw_cancel {
                g.add(format!("saw-cancel:{}", self.tag), 1);
            }
        });
        if self.panic_on == Some(index) {
            panic!("boom {index}");
        }
        Record {
            index,
            host,
            start,
            gpus: ctx.gpus().to_vec(),
        }
    }

    pub(crate) fn records(&self) -> Vec<Record> {
        let mut r = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        r.sort_by_key(|r| r.index);
        r
    }

    pub(crate) fn arrivals(&self) -> Vec<(usize, u32)> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn chunks(&self) -> Vec<(usize, u32, Vec<u8>)> {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        let record = self.run(index, ctx);
        for k in 0..self.flushes {
            out.write_all(&(index as u64 * 1000 + u64::from(k)).to_le_bytes())?;
            out.flush()?;
        }
        out.write_all(&record.encode())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, r.seq()));
        if r.seq() < self.flushes {
            self.chunks.lock().unwrap_or_else(|e| e.into_inner()).push((
                index,
                r.seq(),
                r.bytes().to_vec(),
            ));
            return;
        }
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
    fn cancel(&self) {
        self.cancel_calls.fetch_add(1, Ordering::SeqCst);
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        self.unordered
    }
}

/// One fragment per listed host: sends that host's [`Ledger`] back (and prints its peaks).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Report {
    pub(crate) hosts: Vec<u32>,
    pub(crate) print: bool,
    #[serde(skip)]
    pub(crate) got: Mutex<BTreeMap<usize, Vec<u8>>>,
}

impl FragmentedJob for Report {
    const CLASS_ID: ClassId = ClassId::from_name("test.modes.report");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        let text = ledger_of(ctx.host().0).to_text();
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
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        let ledger = ledger_of(ctx.host().0);
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
pub(crate) struct Sum {
    pub(crate) seed: u64,
    pub(crate) mode: SchedulingMode,
    pub(crate) priority: i8,
    pub(crate) hosts: Vec<u32>,
    #[serde(skip)]
    pub(crate) total: AtomicU64,
    #[serde(skip)]
    pub(crate) seen: AtomicUsize,
}

impl Sum {
    fn value(&self, index: usize) -> u64 {
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(17)
            ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }

    pub(crate) fn expected(&self, count: usize) -> u64 {
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

/// The bytes of chunk `seq` (`len` bytes) of fragment `index`: a pattern that shows a byte out
/// of place.
pub(crate) fn chunk_bytes(index: usize, seq: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + index * 31 + seq * 13) % 251) as u8)
        .collect()
}

/// USER_DEFINED on `hosts` (round robin): remote fragments return chunks of `sizes`, in order;
/// the initiator records (fragment, seq, length, intact) of each chunk it receives.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Sizes {
    pub(crate) sizes: Vec<usize>,
    pub(crate) hosts: Vec<u32>,
    #[serde(skip)]
    pub(crate) got: Mutex<Vec<(usize, u32, usize, bool)>>,
}

impl FragmentedJob for Sizes {
    const CLASS_ID: ClassId = ClassId::from_name("test.modes.sizes");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        for (seq, &len) in self.sizes.iter().enumerate() {
            out.write_chunk(chunk_bytes(index, seq, len))?;
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let seq = r.seq() as usize;
        // After the written chunks comes the fragment's final, empty one.
        let want = self
            .sizes
            .get(seq)
            .map_or_else(Vec::new, |&len| chunk_bytes(index, seq, len));
        let intact = r.bytes() == want.as_slice();
        self.got
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, r.seq(), r.len(), intact));
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(h) = self.hosts.get(i % self.hosts.len().max(1)) {
                *s = HostId(*h);
            }
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

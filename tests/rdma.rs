//! The RDMA result path across real host processes (`fragmenta launch -n 3`), over QUIC: the
//! initiator offers a buffer per remote fragment (`get_rdma_result_buffer`, never on a reactor
//! thread), remote hosts fill buffers from their own `RdmaContext` limited to the receiver's
//! size, the bytes land in the initiator's buffer, `receive_remote_result_rdma` gets it once,
//! and buffers go back to their context once received. Results of 256 KiB and more between
//! these processes (one machine) are handed over through the initiator's Fast I/O context,
//! counted there; forced to QUIC (`FRAGMENTA_SAME_MACHINE=0`) the same job gives the same
//! bytes.
//!
//! A custom harness (no libtest): `main` is either the runner or a host program.

mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SCENARIO: &str = "FRAGMENTA_TEST_SCENARIO";
/// Size of every receive buffer the initiator offers.
const RECV: usize = 64 << 10;

#[derive(Serialize, Deserialize, Default)]
struct Gather {
    /// This fragment asks its context for one byte more than the receiver offered.
    oversize_on: usize,
    /// This fragment returns a buffer of one byte more than the receiver offered, made in a
    /// context of its own that no receiver limits.
    oversize_returned_on: usize,
    #[serde(skip)]
    initiator_ctx: Mutex<Option<RdmaContext>>,
    #[serde(skip)]
    offered: AtomicUsize,
    #[serde(skip)]
    offered_on_reactor: AtomicUsize,
    #[serde(skip)]
    received: Mutex<BTreeMap<usize, Result<(), String>>>,
    #[serde(skip)]
    shared: Mutex<Option<RdmaBuffer>>,
}

/// What remote fragment `i` sends: `len(i)` bytes of a pattern of `i`; every 7th fragment
/// sends the host's one shared constant buffer instead.
fn len_of(i: usize) -> usize {
    1 + (i * 7919) % RECV
}

fn byte(i: usize, k: usize) -> u8 {
    (i.wrapping_mul(31) ^ k) as u8
}

const SHARED_LEN: usize = 100;

/// Whether this thread runs async tasks (where blocking stalls the network): there, entering
/// the runtime with `block_on` is refused. Plain and blocking-pool threads may block.
fn on_async_worker() -> bool {
    match tokio::runtime::Handle::try_current() {
        Err(_) => false,
        Ok(h) => {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.block_on(async {}))).is_err()
        }
    }
}

impl FragmentedJob for Gather {
    const CLASS_ID: ClassId = ClassId::from_name("test.rdma.gather");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn get_rdma_result_buffer(&self, rdma: &RdmaContext, _index: usize) -> Option<RdmaBuffer> {
        self.offered.fetch_add(1, Ordering::SeqCst);
        if on_async_worker() {
            self.offered_on_reactor.fetch_add(1, Ordering::SeqCst);
        }
        self.initiator_ctx
            .lock()
            .unwrap()
            .get_or_insert_with(|| rdma.clone());
        rdma.allocate(RECV).ok()
    }
    fn execute_fragment_remote_rdma(
        &self,
        _: &Transaction,
        index: usize,
        _: usize,
        rdma: &RdmaContext,
        _: &ExecutionContext,
    ) -> Option<RdmaBuffer> {
        let limit = rdma.receiver_limit().expect("a receiver-limited context");
        assert_eq!(limit, RECV);
        if index == self.oversize_on {
            match rdma.allocate(limit + 1) {
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("an oversized allocation succeeded"),
            }
        }
        if index == self.oversize_returned_on {
            return Some(
                RdmaContext::default()
                    .allocate(limit + 1)
                    .expect("unlimited"),
            );
        }
        if index % 7 == 0 {
            let mut shared = self.shared.lock().unwrap();
            let b = shared.get_or_insert_with(|| {
                let b = rdma.allocate(SHARED_LEN).expect("shared buffer");
                b.write().fill(0xAB);
                b
            });
            return Some(b.clone());
        }
        let n = len_of(index);
        let b = rdma.allocate(n).expect("within the receiver's buffer");
        for (k, v) in b.write().iter_mut().enumerate() {
            *v = byte(index, k);
        }
        Some(b)
    }
    fn receive_remote_result_rdma(
        &self,
        buffer: RdmaBuffer,
        _: &Transaction,
        index: usize,
        _: usize,
    ) {
        let bytes = buffer.read();
        let got = &bytes[..buffer.filled()];
        let ok = if index % 7 == 0 {
            got.len() == SHARED_LEN && got.iter().all(|v| *v == 0xAB)
        } else {
            got.len() == len_of(index) && got.iter().enumerate().all(|(k, v)| *v == byte(index, k))
        };
        let entry = if ok {
            Ok(())
        } else {
            Err(format!(
                "fragment {index}: {} bytes, wrong content",
                got.len()
            ))
        };
        if self.received.lock().unwrap().insert(index, entry).is_some() {
            self.received
                .lock()
                .unwrap()
                .insert(index, Err(format!("fragment {index} received twice")));
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId(1 + (i % 2) as u32);
        }
    }
}

/// Size of every receive buffer [`Large`] offers.
const LARGE_RECV: usize = 2 << 20;
/// Remote fragments of a [`Large`] job.
const LARGE_N: usize = 24;
/// This [`Large`] fragment returns a buffer one byte over the receiver's.
const LARGE_OVERSIZE: usize = 5;

/// Bytes fragment `i` of a [`Large`] job sends: all of them at least the 256 KiB above which
/// results are handed over, up to the whole receive buffer.
fn large_len(i: usize) -> usize {
    if i == LARGE_N - 1 {
        LARGE_RECV
    } else {
        (300 << 10) + (i * 77_777) % (LARGE_RECV - (300 << 10))
    }
}

/// RDMA results large enough for the same-machine path.
#[derive(Serialize, Deserialize, Default)]
struct Large {
    #[serde(skip)]
    initiator_ctx: Mutex<Option<RdmaContext>>,
    #[serde(skip)]
    received: Mutex<BTreeMap<usize, Result<u64, String>>>,
}

impl FragmentedJob for Large {
    const CLASS_ID: ClassId = ClassId::from_name("test.rdma.large");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn get_rdma_result_buffer(&self, rdma: &RdmaContext, _index: usize) -> Option<RdmaBuffer> {
        self.initiator_ctx
            .lock()
            .unwrap()
            .get_or_insert_with(|| rdma.clone());
        let b = rdma.allocate(LARGE_RECV).ok()?;
        // Bytes beyond a shorter result stay as the job left them.
        b.write().fill(0xEE);
        Some(b)
    }
    fn execute_fragment_remote_rdma(
        &self,
        _: &Transaction,
        index: usize,
        _: usize,
        rdma: &RdmaContext,
        _: &ExecutionContext,
    ) -> Option<RdmaBuffer> {
        if index == LARGE_OVERSIZE {
            return Some(
                RdmaContext::default()
                    .allocate(LARGE_RECV + 1)
                    .expect("unlimited"),
            );
        }
        let b = rdma.allocate(large_len(index)).expect("within the buffer");
        for (k, v) in b.write().iter_mut().enumerate() {
            *v = byte(index, k);
        }
        Some(b)
    }
    fn receive_remote_result_rdma(
        &self,
        buffer: RdmaBuffer,
        _: &Transaction,
        index: usize,
        _: usize,
    ) {
        let bytes = buffer.read();
        let n = buffer.filled();
        let got = &bytes[..n];
        let rest_kept = bytes[n..].iter().all(|v| *v == 0xEE);
        let entry = if n == large_len(index)
            && rest_kept
            && got.iter().enumerate().all(|(k, v)| *v == byte(index, k))
        {
            // FNV-1a of the result, so both runs can compare what they received.
            Ok(got.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            }))
        } else {
            Err(format!("fragment {index}: {n} bytes, wrong content"))
        };
        if self.received.lock().unwrap().insert(index, entry).is_some() {
            self.received
                .lock()
                .unwrap()
                .insert(index, Err(format!("fragment {index} received twice")));
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId(1 + (i % 2) as u32);
        }
    }
}

/// Runs [`Large`] twice; through shared memory unless `forced_quic`. Prints a digest of
/// every result received, which must not depend on the path.
fn large(cluster: &Cluster, forced_quic: bool) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !forced_quic && cluster.same_machine().peers != vec![HostId(1), HostId(2)] {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "not proven same-machine: {:?}",
                cluster.same_machine()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut digest = 0u64;
    for round in 0..2u64 {
        let before = cluster.same_machine();
        let job = Arc::new(Large::default());
        let report = cluster.execute(&job, LARGE_N).map_err(|e| e.to_string())?;
        let too_large = FailureReason::RdmaTooLarge {
            len: LARGE_RECV as u64 + 1,
            capacity: LARGE_RECV as u64,
        };
        if report.failed().to_vec() != [LARGE_OVERSIZE] || report.failures[0].reason != too_large {
            return Err(format!("only the oversized fragment fails: {report:?}"));
        }
        let received = job.received.lock().unwrap();
        if received.len() != LARGE_N - 1 || received.contains_key(&LARGE_OVERSIZE) {
            return Err(format!("{} results received", received.len()));
        }
        for (i, r) in received.iter() {
            let h = r.clone()?;
            digest = digest.rotate_left(7) ^ h ^ (*i as u64);
        }
        let stats = cluster.same_machine();
        let through = stats.rdma_received - before.rdma_received;
        let bytes = stats.rdma_bytes_received - before.rdma_bytes_received;
        let want: u64 = (0..LARGE_N)
            .filter(|i| *i != LARGE_OVERSIZE)
            .map(|i| large_len(i) as u64)
            .sum();
        if forced_quic {
            if stats != SameMachineStats::default() {
                return Err(format!("forced QUIC, yet {stats:?}"));
            }
        } else if through != (LARGE_N - 1) as u64 || bytes != want {
            return Err(format!(
                "{through} of {} RDMA results ({bytes} of {want} bytes) through shared memory: \
                 {stats:?}",
                LARGE_N - 1
            ));
        }
        if stats.chunks_received != before.chunks_received {
            return Err(format!("RDMA results counted as chunks: {stats:?}"));
        }
        drop(received);
        let ctx = job
            .initiator_ctx
            .lock()
            .unwrap()
            .clone()
            .ok_or("no buffer offered")?;
        if ctx.stats().in_use != 0 {
            return Err(format!("buffers not returned: {:?}", ctx.stats()));
        }
        let s = cluster.fastio().stats().map_err(|e| e.to_string())?;
        if s.publications != 0 || s.handles != 0 {
            return Err(format!(
                "round {round}: the initiator's context is not empty: {s:?}"
            ));
        }
    }
    let path = if forced_quic { "quic" } else { "shm" };
    println!(
        "rdma {path} ok: {} results, digest {digest:016x}; {:?}",
        2 * (LARGE_N - 1),
        cluster.same_machine()
    );
    Ok(())
}

fn host_main(scenario: &str) -> Result<(), String> {
    let cluster = Cluster::builder()
        .register::<Gather>()
        .register::<Large>()
        .join()
        .map_err(|e| e.to_string())?;
    if !cluster.is_primary() {
        return cluster.serve().map_err(|e| e.to_string());
    }
    match scenario {
        "rdma" => {
            let n = 600;
            let mut registered_first = None;
            for round in 0..2 {
                let job = Arc::new(Gather {
                    oversize_on: 301,
                    oversize_returned_on: 302,
                    ..Gather::default()
                });
                let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
                let received = job.received.lock().unwrap();
                let bad: Vec<&String> =
                    received.values().filter_map(|r| r.as_ref().err()).collect();
                if !bad.is_empty() {
                    return Err(format!("wrong results: {bad:?}"));
                }
                if report.failed().to_vec() != [301, 302] {
                    return Err(format!("only the oversized fragments fail: {report:?}"));
                }
                // 301 panicked on its refused allocation, naming the limit.
                let refused = RdmaError::ExceedsReceiverBuffer {
                    requested: RECV + 1,
                    receiver: RECV,
                };
                match &report.failures[0].reason {
                    FailureReason::Panicked(msg) if msg.contains(&refused.to_string()) => {}
                    other => return Err(format!("fragment 301 failed otherwise: {other:?}")),
                }
                // 302 returned a buffer over the receiver's: the runtime refused to send it.
                let too_large = FailureReason::RdmaTooLarge {
                    len: RECV as u64 + 1,
                    capacity: RECV as u64,
                };
                if report.failures[1].reason != too_large {
                    return Err(format!("fragment 302 failed otherwise: {report:?}"));
                }
                if received.len() != n - 2
                    || received.contains_key(&301)
                    || received.contains_key(&302)
                {
                    return Err(format!(
                        "{} results received for {} fragments",
                        received.len(),
                        n - 2
                    ));
                }
                let offered = job.offered.load(Ordering::SeqCst);
                if offered != n {
                    return Err(format!(
                        "{offered} buffers offered for {n} remote fragments"
                    ));
                }
                let on_reactor = job.offered_on_reactor.load(Ordering::SeqCst);
                if on_reactor > 0 {
                    return Err(format!(
                        "{on_reactor} get_rdma_result_buffer calls on a reactor thread"
                    ));
                }
                let ctx = job
                    .initiator_ctx
                    .lock()
                    .unwrap()
                    .clone()
                    .ok_or("no buffer offered")?;
                drop(received);
                let stats = ctx.stats();
                if stats.in_use != 0 {
                    return Err(format!("buffers not returned after reception: {stats:?}"));
                }
                // Every buffer of a job is offered before its results arrive; the next job reuses
                // them instead of registering new ones.
                match registered_first {
                    None => registered_first = Some(stats),
                    Some(first) => {
                        // Every buffer the first job registered was returned (none in use), so the
                        // second job reuses all of them before registering any new one.
                        let reused = stats.reused - first.reused;
                        if reused < first.registered.min(n as u64) {
                            return Err(format!(
                                "the second job reused {reused} of {} returned buffers: {stats:?}",
                                first.registered
                            ));
                        }
                    }
                }
                println!("round {round}:");
                println!(
                "rdma ok: {n} remote fragments ({:?}), {offered} buffers offered, {} registered, {} reused",
                report.per_host, stats.registered, stats.reused
            );
            }
            Ok(())
        }
        "large" => large(
            &cluster,
            std::env::var("FRAGMENTA_SAME_MACHINE").is_ok_and(|v| v == "0"),
        ),
        other => Err(format!("unknown scenario {other}")),
    }
}

fn launch(scenario: &str, extra: &[(&str, &str)]) -> (i32, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fragmenta"));
    cmd.args(["launch", "-n", "3", "--"])
        .arg(exe)
        .env(SCENARIO, scenario);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the launcher");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The digest the primary printed on its success line for `path`.
fn digest(out: &str, path: &str) -> Result<String, String> {
    let want = format!("[host-0] rdma {path} ok");
    let line = out
        .lines()
        .find(|l| l.starts_with(&want))
        .ok_or("no success line")?;
    println!("{line}");
    line.split("digest ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| "no digest".into())
}

fn main() {
    common::harness::run_host_if_child(SCENARIO, host_main);
    common::harness::run_named(
        "rdma",
        &[
            "rdma_results_across_processes",
            "large_rdma_results_come_through_shared_memory_and_match_quic",
        ],
        |name| match name {
            "rdma_results_across_processes" => {
                common::harness::launched(common::launch_self(3, (SCENARIO, "rdma")), |out| {
                    let ok: Vec<&str> = out.lines().filter(|l| l.contains("rdma ok")).collect();
                    if !ok.iter().any(|l| l.starts_with("[host-0] rdma ok")) {
                        return Err("no success line".into());
                    }
                    for line in ok {
                        println!("{line}");
                    }
                    Ok(())
                })
            }
            _ => {
                let (status, out) = launch("large", &[("FRAGMENTA_SAME_MACHINE", "0")]);
                let mut quic = None;
                let first = common::harness::launched((status, out), |out| {
                    quic = Some(digest(out, "quic")?);
                    Ok(())
                })?;
                let Some(quic) = quic else {
                    // Skipped (no launcher here): so is the second run.
                    return Ok(first);
                };
                common::harness::launched(launch("large", &[]), |out| {
                    let shm = digest(out, "shm")?;
                    if shm != quic {
                        return Err(format!(
                            "digest {shm} through shared memory, {quic} on QUIC"
                        ));
                    }
                    Ok(())
                })
            }
        },
    )
}

//! The same-machine result path across real host processes (`fragmenta launch -n 3`): the
//! links between processes of this machine are proven same-machine at the handshake, large
//! result chunks come through the initiator's Fast I/O context (counted there), exactly once,
//! in order and byte for byte; with `FRAGMENTA_SAME_MACHINE=0` the same job gives the same
//! results over QUIC; a sender SIGKILLed in the middle of its chunks has its fragments
//! reassigned, every chunk is still delivered once, and the initiator's context is empty
//! afterwards (nothing the dead sender handed over is left). Chunks are written every way a
//! fragment can: a `Vec` of its own, in place into memory the runtime lends
//! (`ResultWriter::chunk_buffer`, shared memory of the initiator's context for a large chunk),
//! and partly pending with the rest in such a buffer; lent buffers dropped unsent give their
//! memory back.
//!
//! A custom harness (no libtest): `main` is either the runner or a host program.

mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCENARIO: &str = "FRAGMENTA_TEST_SCENARIO";
const KIB: usize = 1 << 10;
const FRAGMENTS: usize = 12;
const CHUNKS: u32 = 7;

/// Length of chunk `seq` of fragment `i`: large (handed over, one or several size classes),
/// just above the threshold, and small (batched on QUIC).
fn len_of(i: usize, seq: u32) -> usize {
    match seq % 4 {
        0 => 1024 * KIB,
        1 => 300 * KIB + i,
        2 => 10 * KIB + i,
        _ => 1536 * KIB + 7 * i,
    }
}

/// Chunk `seq` of fragment `i`; the one after the last is the empty chunk returning flushes.
fn chunk(i: usize, seq: u32) -> Vec<u8> {
    if seq >= CHUNKS {
        return Vec::new();
    }
    (0..len_of(i, seq))
        .map(|k| (k.wrapping_mul(131) ^ i.wrapping_mul(7) ^ seq as usize) as u8)
        .collect()
}

/// Every remote fragment sends [`CHUNKS`] chunks; on host `kill_host`, the first fragment
/// SIGKILLs its own process after `kill_after` chunks.
#[derive(Serialize, Deserialize, Default)]
struct Big {
    kill_host: Option<u32>,
    /// The initiator's Fast I/O socket.
    initiator_socket: String,
    kill_after: u32,
    #[serde(skip)]
    got: Mutex<BTreeMap<usize, Vec<u32>>>,
    #[serde(skip)]
    errors: Mutex<Vec<String>>,
    #[serde(skip)]
    local: Mutex<Vec<usize>>,
}

impl FragmentedJob for Big {
    const CLASS_ID: ClassId = ClassId::from_name("test.same_machine.big");
    fn execute_fragment(&self, _: &Transaction, i: usize, _: usize, _: &ExecutionContext) {
        self.local.lock().unwrap().push(i);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        i: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        // Remote fragments take a moment, so every host gets some before the job is over.
        std::thread::sleep(Duration::from_millis(20));
        for seq in 0..CHUNKS {
            let data = chunk(i, seq);
            match (i + seq as usize) % 3 {
                // A `Vec` of its own.
                0 => out.write_chunk(data)?,
                // Written in place into memory the runtime lends (shared memory of the
                // initiator's context for a large chunk), after lent buffers of 40 MiB in all
                // (beyond the 32 MiB window) dropped unsent: their memory and window credit
                // must come back, or this chunk would find the window full and go on QUIC.
                1 => {
                    for _ in 0..10 {
                        drop(out.chunk_buffer(4 << 20));
                    }
                    let mut buf = out.chunk_buffer(data.len());
                    buf.copy_from_slice(&data);
                    out.write_buffer(buf)?;
                }
                // Partly pending, the rest in a buffer: one chunk of both.
                _ => {
                    let split = data.len().min(100);
                    out.write_all(&data[..split])?;
                    let mut buf = out.chunk_buffer(data.len() - split);
                    buf.copy_from_slice(&data[split..]);
                    out.write_buffer(buf)?;
                }
            }
            if self.kill_host == Some(ctx.host().0) && seq + 1 == self.kill_after {
                // Mid-transfer, at once: the chunk just handed over is perhaps not yet
                // referenced on the result stream; and one surely is not: handed over the way
                // the runtime does, under this host's names, and never referenced.
                let orphan = fragmenta_wire::messages::shm_chunk_name(
                    ctx.host(),
                    JobId {
                        initiator: HostId(0),
                        seq: u64::MAX,
                    },
                    0,
                );
                let ctx = fastio::RemoteContext::connect(&self.initiator_socket)
                    .map_err(std::io::Error::other)?;
                // Two fragments of this host may get here at once (two workers): the name is
                // then taken by the first, which is as good.
                match ctx.hand_over(&orphan, &[7; 1000], 1 << 20) {
                    Ok(()) | Err(fastio::FastIoError::NameTaken(_)) => {}
                    Err(e) => return Err(std::io::Error::other(e)),
                }
                // SAFETY: kill(2) on this process; no memory is involved.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, i: usize, _: usize) {
        let seq = r.seq();
        let mut got = self.got.lock().unwrap();
        let seqs = got.entry(i).or_default();
        if seqs.last().map_or(0, |s| s + 1) != seq {
            self.errors
                .lock()
                .unwrap()
                .push(format!("fragment {i}: chunk {seq} after {seqs:?}"));
        }
        seqs.push(seq);
        if r.bytes() != chunk(i, seq).as_slice() {
            self.errors
                .lock()
                .unwrap()
                .push(format!("fragment {i} chunk {seq}: wrong bytes"));
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// Checks every remote fragment's chunks arrived once each, in order, and returns how many
/// large chunks (those that qualify for the shared-memory path) arrived.
fn verify(job: &Big, report: &JobReport) -> Result<u64, String> {
    if !report.is_complete() {
        return Err(format!("incomplete: {report:?}"));
    }
    let errors = job.errors.lock().unwrap();
    if !errors.is_empty() {
        return Err(format!("{errors:?}"));
    }
    let got = job.got.lock().unwrap();
    let local = job.local.lock().unwrap();
    let mut large = 0;
    for i in 0..FRAGMENTS {
        if local.contains(&i) {
            if got.contains_key(&i) {
                return Err(format!("fragment {i} ran here and sent chunks"));
            }
            continue;
        }
        let want: Vec<u32> = (0..=CHUNKS).collect();
        if got.get(&i) != Some(&want) {
            return Err(format!("fragment {i}: chunks {:?}", got.get(&i)));
        }
        large += (0..CHUNKS).filter(|s| len_of(i, *s) >= 256 * KIB).count() as u64;
    }
    Ok(large)
}

fn context_empty(cluster: &Cluster) -> Result<(), String> {
    // Credits and drops happen as deliveries end; the report waits for the deliveries.
    let s = cluster.fastio().stats().map_err(|e| e.to_string())?;
    if s.used != 0 || s.publications != 0 || s.handles != 0 {
        return Err(format!("the initiator's context is not empty: {s:?}"));
    }
    Ok(())
}

fn host_main(scenario: &str) -> Result<(), String> {
    let cluster = Cluster::builder()
        .register::<Big>()
        .join()
        .map_err(|e| e.to_string())?;
    if !cluster.is_primary() {
        // The killed host never gets here; the others serve until the primary stops them.
        return cluster.serve().map(|_| ()).or(Ok(()));
    }
    // Detection runs when the links come up; give the proofs a moment.
    let forced_quic = scenario == "quic";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !forced_quic && cluster.same_machine().peers != vec![HostId(1), HostId(2)] {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the links were not proven same-machine: {:?}",
                cluster.same_machine()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let kill = scenario == "kill";
    let job = Arc::new(Big {
        kill_host: kill.then_some(2),
        kill_after: 4,
        initiator_socket: cluster
            .fastio_socket()
            .map_err(|e| e.to_string())?
            .display()
            .to_string(),
        ..Big::default()
    });
    let report = cluster
        .submit(&job, FRAGMENTS)
        .map_err(|e| e.to_string())?
        .wait_timeout(Duration::from_secs(120))
        .ok_or("the job did not finish")?
        .map_err(|e| e.to_string())?;
    let large = verify(&job, &report)?;
    let stats = cluster.same_machine();
    match scenario {
        "shm" => {
            if stats.chunks_received != large {
                return Err(format!(
                    "{large} large chunks, {} through shared memory: {stats:?}",
                    stats.chunks_received
                ));
            }
        }
        "quic" => {
            if stats != SameMachineStats::default() {
                return Err(format!("forced QUIC, yet {stats:?}"));
            }
        }
        _ => {
            if cluster.hosts().contains(&HostId(2)) {
                return Err("host 2 was to kill itself".into());
            }
            if report
                .per_host
                .iter()
                .any(|(h, n)| *h == HostId(2) && *n > 0)
            {
                return Err(format!("host 2 finished fragments: {:?}", report.per_host));
            }
            if stats.chunks_received == 0 || stats.reclaimed == 0 {
                return Err(format!(
                    "nothing came through shared memory, or nothing of the dead host's was reclaimed: {stats:?}"
                ));
            }
        }
    }
    context_empty(&cluster)?;
    println!(
        "{scenario} ok: {} chunks through shared memory of {large} large ones, {} bytes, {} \
         publications of lost hosts reclaimed; per host {:?}",
        stats.chunks_received, stats.bytes_received, stats.reclaimed, report.per_host
    );
    Ok(())
}

fn launch(scenario: &str, extra: &[(&str, &str)]) -> (i32, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fragmenta"));
    cmd.args(["launch", "-n", "3", "--keep-going", "--cores", "2", "--"])
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

fn main() {
    common::harness::run_host_if_child(SCENARIO, host_main);
    common::harness::run_named(
        "same_machine",
        &[
            "large_results_come_through_shared_memory_once_in_order",
            "forced_quic_gives_the_same_results",
            "a_sender_killed_mid_transfer_leaves_nothing_behind",
        ],
        |name| {
            let (scenario, extra): (&str, &[(&str, &str)]) = match name {
                "large_results_come_through_shared_memory_once_in_order" => ("shm", &[]),
                "forced_quic_gives_the_same_results" => {
                    ("quic", &[("FRAGMENTA_SAME_MACHINE", "0")])
                }
                _ => ("kill", &[]),
            };
            common::harness::launched(launch(scenario, extra), |out| {
                let want = format!("[host-0] {scenario} ok");
                match out.lines().find(|l| l.starts_with(&want)) {
                    Some(line) => {
                        println!("{line}");
                        Ok(())
                    }
                    None => Err("no success line".into()),
                }
            })
        },
    )
}

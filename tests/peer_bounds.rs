//! What a peer announces is bounded where it is received, and the initiator's memory is bounded
//! on the receiving side; against live QUIC hosts (real nodes with mutual TLS on loopback).
//!
//! - A peer holding a valid certificate announces a replica of `u64::MAX` fragments, a dispatch
//!   of `0..u64::MAX`, a NaN CPU load, or interleaves the parts of two chunks on a result
//!   stream: the receiving host closes that connection (and only that one) and keeps serving.
//! - A job whose `receive_remote_result` is slow, or whose ordered chunks wait behind a slow
//!   fragment 0: the initiator stops reading result streams above its bound, so the senders'
//!   fragments wait, and the bytes produced and not yet taken by the job stay bounded; the job
//!   finishes (no deadlock) with every chunk delivered once, in order.

mod common;

use fragmenta::__private::JobParams;
use fragmenta::*;
use fragmenta_wire::handshake::Hello;
use fragmenta_wire::messages::{Control, ResultItem, Results, StreamHeader};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Squares {
    #[serde(skip)]
    got: Mutex<Vec<(usize, u64)>>,
}

impl FragmentedJob for Squares {
    const CLASS_ID: ClassId = ClassId::from_name("test.peer_bounds.squares");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        self.got
            .lock()
            .unwrap()
            .push((index, (index * index) as u64));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_all(&((index * index) as u64).to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let v = r.bytes().try_into().map(u64::from_le_bytes).unwrap_or(0);
        self.got.lock().unwrap().push((index, v));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn job_of(initiator: u32, seq: u64) -> JobId {
    JobId {
        initiator: HostId(initiator),
        seq,
    }
}

fn frame<M: Serialize>(msg: &M, payload: &[u8]) -> Vec<u8> {
    let header = fragmenta_wire::encode(msg).unwrap();
    let mut out = (header.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out
}

struct Honest {
    dir: tempfile::TempDir,
    clusters: Vec<Cluster>,
    addrs: Vec<SocketAddr>,
}

/// Two honest hosts (0, 1) of a configuration whose hosts 2.. are the rogue's identities.
fn start(rogue_ids: usize) -> Honest {
    let dir = tempfile::tempdir().unwrap();
    let n = 2 + rogue_ids;
    let config = common::loopback_config(dir.path(), n, "");
    let text = config
        .to_toml_string()
        .replace(&format!("min_hosts = {n}"), "min_hosts = 2");
    let config = ClusterConfig::from_toml_str(&text, dir.path()).unwrap();
    let addrs = (0..2)
        .map(|h| config.host(HostId(h)).unwrap().socket_addr().unwrap())
        .collect();
    let handles: Vec<_> = (0..2)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Squares>()
                    .register::<Heavy>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect();
    let clusters = handles.into_iter().map(|h| h.join().unwrap()).collect();
    Honest {
        dir,
        clusters,
        addrs,
    }
}

/// Sends `stream` on a uni stream to host 0 as host `id`, with a valid certificate; returns
/// whether host 0 closed the connection within `linger`.
fn rogue_sends(h: &Honest, id: u32, stream: Vec<u8>, linger: Duration) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = fragmenta_net::TlsFiles::for_host(&h.dir.path().join("certs"), HostId(id));
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let endpoint = {
        let _guard = rt.enter();
        fragmenta_net::Endpoint::bind_quic(any, &tls, &fragmenta_net::NetConfig::default()).unwrap()
    };
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let hello = Hello::new("test", HostId(id));
        let conn =
            fragmenta_net::handshake::connect_handshake(&endpoint, h.addrs[0], HostId(0), hello)
                .await
                .unwrap();
        let mut s = conn.open_uni().await.unwrap();
        let _ = s.write_all(&stream).await;
        let _ = s.finish();
        let closed = tokio::time::timeout(linger, conn.closed()).await.is_ok();
        conn.close(0, b"done");
        endpoint.close();
        closed
    })
}

fn honest_job_works(h: &Honest) {
    let job = Arc::new(Squares::default());
    let report = h.clusters[0]
        .submit(&job, 200)
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .expect("the job finishes")
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let mut got = job.got.lock().unwrap().clone();
    got.sort();
    let want: Vec<(usize, u64)> = (0..200).map(|i| (i, (i * i) as u64)).collect();
    assert_eq!(got, want);
    assert_eq!(h.clusters[1].hosts(), vec![HostId(0), HostId(1)]);
}

fn params(cpu_load: f32) -> JobParams {
    JobParams {
        mode: SchedulingMode::Cluster,
        cpu_load,
        gpu_load: 0.0,
        priority: 0,
        thread_limit: 0,
        allow_non_sequential_chunks: false,
    }
}

fn control(msgs: &[(Control, &[u8])]) -> Vec<u8> {
    let mut out = frame(&StreamHeader::Control, &[]);
    for (m, p) in msgs {
        out.extend(frame(m, p));
    }
    out
}

#[test]
fn what_a_peer_announces_is_bounded_and_a_violation_closes_its_connection() {
    let honest = start(6);
    honest_job_works(&honest);
    let replica = |id: u32, count: u64, cpu_load: f32| Control::Replica {
        job: job_of(id, 1),
        class: Squares::CLASS_ID,
        params: params(cpu_load),
        count,
    };
    let bytes = fragmenta_wire::encode(&Squares::default()).unwrap_or_default();
    let cases: Vec<(&str, u32, Vec<u8>)> = vec![
        (
            "a replica of u64::MAX fragments",
            2,
            control(&[(replica(2, u64::MAX, 1.0), &bytes)]),
        ),
        (
            "a dispatch of 0..u64::MAX",
            3,
            control(&[
                (replica(3, 4, 1.0), &bytes),
                (
                    Control::Dispatch {
                        job: job_of(3, 1),
                        fragments: vec![(0, u64::MAX)],
                        rdma: vec![],
                    },
                    &[],
                ),
            ]),
        ),
        (
            "a NaN CPU load",
            4,
            control(&[(replica(4, 4, f32::NAN), &bytes)]),
        ),
        ("a replica of another host's job", 5, {
            let mut r = replica(5, 4, 1.0);
            if let Control::Replica { job, .. } = &mut r {
                *job = job_of(1, 7);
            }
            control(&[(r, &bytes)])
        }),
        ("interleaved chunk parts", 6, {
            let mut out = frame(
                &StreamHeader::Results {
                    job: job_of(0, 999),
                },
                &[],
            );
            let part = |fragment: u64| Results {
                items: vec![ResultItem::Chunk {
                    fragment,
                    seq: 0,
                    len: 4,
                    last: false,
                }],
            };
            out.extend(frame(&part(0), &[1; 4]));
            out.extend(frame(&part(1), &[2; 4]));
            out
        }),
    ];
    for (what, id, stream) in cases {
        assert!(
            rogue_sends(&honest, id, stream, Duration::from_secs(5)),
            "host 0 did not close the connection after {what}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while honest.clusters[0].hosts() != vec![HostId(0), HostId(1)] {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the rogue stays listed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Only the rogue's connection closed: the honest cluster still works.
        honest_job_works(&honest);
    }
}

/// Bytes produced by remote fragments and not yet taken by the initiator's job, and its peak
/// (all hosts run in this process).
static OUTSTANDING: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);
const CHUNK: usize = 4 << 20;

/// Fragments send `CHUNK`-byte chunks; the initiator takes each slowly; fragments run on the
/// initiator are slow (so most run on the other host), fragment 0 maybe slower still.
#[derive(Serialize, Deserialize, Default)]
struct Heavy {
    chunks: u32,
    local_ms: u64,
    slow_first_ms: u64,
    take_ms: u64,
    unordered: bool,
    #[serde(skip)]
    seen: Mutex<Vec<(usize, u32)>>,
    #[serde(skip)]
    seq: AtomicU64,
}

impl FragmentedJob for Heavy {
    const CLASS_ID: ClassId = ClassId::from_name("test.peer_bounds.heavy");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        let ms = if index == 0 {
            self.slow_first_ms.max(self.local_ms)
        } else {
            self.local_ms
        };
        std::thread::sleep(Duration::from_millis(ms));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        for c in 0..self.chunks {
            let mut data = vec![0u8; CHUNK];
            data[..8].copy_from_slice(&(index as u64).to_le_bytes());
            data[8..12].copy_from_slice(&c.to_le_bytes());
            let now = OUTSTANDING.fetch_add(CHUNK as i64, Ordering::SeqCst) + CHUNK as i64;
            PEAK.fetch_max(now, Ordering::SeqCst);
            out.write_chunk(data)?;
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let b = r.bytes();
        if b.len() == CHUNK {
            let f = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) as usize;
            let c = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
            assert_eq!(f, index);
            self.seen.lock().unwrap().push((f, c));
            std::thread::sleep(Duration::from_millis(self.take_ms));
            OUTSTANDING.fetch_sub(CHUNK as i64, Ordering::SeqCst);
        }
        self.seq.fetch_add(1, Ordering::Relaxed);
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        self.unordered
    }
}

/// Runs `job` on the honest cluster; returns the peak of bytes produced and not yet taken.
fn peak_outstanding(h: &Honest, job: &Arc<Heavy>, count: usize) -> i64 {
    OUTSTANDING.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    let report = h.clusters[0]
        .submit(job, count)
        .unwrap()
        .wait_timeout(Duration::from_secs(120))
        .expect("the job finishes: no deadlock")
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    PEAK.load(Ordering::SeqCst)
}

#[test]
fn the_initiator_stops_reading_results_it_cannot_take_yet() {
    let honest = start(0);
    let mib = |b: i64| b >> 20;
    // A slow receiver: 64 fragments × 2 chunks of 4 MiB, most from the other host, 40 ms to
    // take each chunk: far slower than the network brings them.
    let slow = Arc::new(Heavy {
        chunks: 2,
        local_ms: 1_000,
        take_ms: 40,
        unordered: true,
        ..Heavy::default()
    });
    let peak = peak_outstanding(&honest, &slow, 64);
    let seen = slow.seen.lock().unwrap().clone();
    let remote: usize = seen.len();
    eprintln!(
        "peer_bounds: slow receiver: {remote} chunks of 4 MiB taken, at most {} MiB produced and not yet taken",
        mib(peak)
    );
    assert!(remote > 40, "most fragments ran remotely: {remote} chunks");
    // Bound: what the initiator holds (64 MiB) + what the sender queues (32 MiB) + the QUIC
    // window (16 MiB) + the chunks being written; far below the 400 MiB or more produced.
    assert!(
        peak < 200 << 20,
        "{} MiB of results produced and not taken",
        mib(peak)
    );

    // Ordered chunks behind a slow fragment 0 (it runs on the initiator): everything else
    // waits for it; the initiator holds a bounded part and the job still finishes in order.
    // (Without backpressure the initiator read everything behind fragment 0: 244 MiB here.)
    let ordered = Arc::new(Heavy {
        chunks: 4,
        local_ms: 1_000,
        slow_first_ms: 3_000,
        take_ms: 0,
        unordered: false,
        ..Heavy::default()
    });
    let peak = peak_outstanding(&honest, &ordered, 64);
    let seen = ordered.seen.lock().unwrap().clone();
    eprintln!(
        "peer_bounds: ordered behind a slow fragment 0: {} chunks delivered, at most {} MiB produced and not yet taken",
        seen.len(),
        mib(peak)
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered chunks came in (fragment, seq) order");
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no chunk delivered twice");
    assert!(
        peak < 200 << 20,
        "{} MiB of results produced and not taken",
        mib(peak)
    );
}

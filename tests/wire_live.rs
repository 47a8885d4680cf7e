//! Bad input against a live host: three real nodes over QUIC with mutual TLS on loopback, and a
//! rogue peer holding a valid certificate (host 3's) that sends length prefixes claiming
//! gigabytes, then proptest-generated random bytes and mutated valid frames on every kind of
//! stream (handshake, control, results, requests). After each case the honest hosts must still
//! run a CLUSTER job to the right result, and the host under attack must never have made a large
//! allocation.

mod common;

use fragmenta::__private::JobParams;
use fragmenta::*;
use fragmenta_wire::handshake::Hello;
use fragmenta_wire::messages::{Control, Request, ResultItem, Results, StreamHeader};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records the largest single allocation in the process (all four hosts live in it).
#[global_allocator]
static ALLOC: fragmenta_testkit::alloc::ProcessCounting = fragmenta_testkit::alloc::ProcessCounting;

/// Every fragment's result is its index squared; remote ones travel as one chunk.
#[derive(Serialize, Deserialize, Default)]
struct Squares {
    #[serde(skip)]
    got: Mutex<Vec<(usize, u64)>>,
}

impl FragmentedJob for Squares {
    const CLASS_ID: ClassId = ClassId::from_name("test.wire_live.squares");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        let sq = (index * index) as u64;
        self.got.lock().unwrap().push((index, sq));
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
        let value = r
            .bytes()
            .try_into()
            .map(u64::from_le_bytes)
            .unwrap_or(u64::MAX);
        self.got.lock().unwrap().push((index, value));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// Ids the rogue may present, one per connection: a host declared dead may not come back under
/// its id, and the rogue's every connection ends in its host being declared dead.
const ROGUE_IDS: u32 = 160;

/// Three honest hosts (0, 1, 2) of a configuration whose other hosts' certificates are the
/// rogue's.
struct Honest {
    dir: tempfile::TempDir,
    clusters: Vec<Cluster>,
    addrs: Vec<SocketAddr>,
}

fn start() -> Honest {
    let dir = tempfile::tempdir().unwrap();
    let n = 3 + ROGUE_IDS as usize;
    let config = common::loopback_config(dir.path(), n, "");
    let text = config
        .to_toml_string()
        .replace(&format!("min_hosts = {n}"), "min_hosts = 3");
    assert!(text.contains("min_hosts = 3"));
    let config = ClusterConfig::from_toml_str(&text, dir.path()).unwrap();
    let addrs = (0..3)
        .map(|h| config.host(HostId(h)).unwrap().socket_addr().unwrap())
        .collect();
    let handles: Vec<_> = (0..3)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Squares>()
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

/// What the rogue sends, on which kind of stream.
#[derive(Debug, Clone)]
enum Attack {
    /// Raw bytes instead of a hello, on the handshake's bi stream.
    Handshake(Vec<u8>),
    /// After a valid handshake, a uni stream with these bytes.
    Uni(Vec<u8>),
    /// After a valid handshake, a bi stream (a request) with these bytes.
    Bi(Vec<u8>),
}

fn frame<M: Serialize>(msg: &M, payload: &[u8]) -> Vec<u8> {
    let header = fragmenta_wire::encode(msg).unwrap();
    let mut out = (header.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out
}

fn prefix(header: u32, payload: u64) -> Vec<u8> {
    let mut v = header.to_le_bytes().to_vec();
    v.extend_from_slice(&payload.to_le_bytes());
    v
}

fn job_of(initiator: u32, seq: u64) -> JobId {
    JobId {
        initiator: HostId(initiator),
        seq,
    }
}

/// Valid streams a host could receive, before damage.
fn valid_streams() -> Vec<Attack> {
    let control = |msgs: &[(Control, &[u8])]| {
        let mut out = frame(&StreamHeader::Control, &[]);
        for (m, p) in msgs {
            out.extend(frame(m, p));
        }
        Attack::Uni(out)
    };
    let rogue_job = job_of(3, 1);
    let params = JobParams {
        mode: SchedulingMode::Cluster,
        cpu_load: 1.0,
        gpu_load: 0.0,
        priority: 0,
        thread_limit: 0,
        allow_non_sequential_chunks: false,
    };
    let replica = Control::Replica {
        job: rogue_job,
        class: Squares::CLASS_ID,
        params,
        count: 4,
    };
    let dispatch = Control::Dispatch {
        job: rogue_job,
        fragments: vec![(0, 4)],
        rdma: vec![],
    };
    let mut results = frame(&StreamHeader::Results { job: job_of(0, 1) }, &[]);
    results.extend(frame(
        &Results {
            items: vec![
                ResultItem::Chunk {
                    fragment: 0,
                    seq: 0,
                    len: 8,
                    last: true,
                },
                ResultItem::Done {
                    fragment: 0,
                    chunks: 1,
                },
                ResultItem::NotStarted {
                    ranges: vec![(1, 5)],
                },
            ],
        },
        &[1; 8],
    ));
    vec![
        Attack::Handshake(frame(&Hello::new("test", HostId(3)), &[])),
        control(&[
            (Control::Heartbeat, &[]),
            (Control::Cancel { job: rogue_job }, &[]),
        ]),
        // Only the primary (host 0) may stop the cluster.
        control(&[(Control::Shutdown, &[])]),
        control(&[
            (replica, b"\x00"),
            (dispatch, &[]),
            (Control::Release { job: rogue_job }, &[]),
        ]),
        Attack::Uni(results),
        Attack::Bi(frame(
            &Request::Fetch {
                name: "no-such-publication".into(),
            },
            &[],
        )),
    ]
}

fn arb_attack() -> impl Strategy<Value = Attack> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..512);
    let mutated = (
        prop::sample::select(valid_streams()),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(attack, flips, cut)| {
            let damage = |mut b: Vec<u8>| {
                for (i, v) in &flips {
                    let i = i.index(b.len());
                    b[i] = *v;
                }
                if let Some(c) = cut {
                    b.truncate(c.index(b.len() + 1));
                }
                b
            };
            match attack {
                Attack::Handshake(b) => Attack::Handshake(damage(b)),
                Attack::Uni(b) => Attack::Uni(damage(b)),
                Attack::Bi(b) => Attack::Bi(damage(b)),
            }
        });
    prop_oneof![
        1 => bytes().prop_map(Attack::Handshake),
        2 => bytes().prop_map(Attack::Uni),
        1 => bytes().prop_map(Attack::Bi),
        6 => mutated,
    ]
}

/// The rogue: a valid certificate of a configured host that is not running (a new one for
/// every connection), connecting to host 0.
struct Rogue {
    rt: tokio::runtime::Runtime,
    certs: std::path::PathBuf,
    targets: Vec<SocketAddr>,
    next: std::cell::Cell<u32>,
}

impl Rogue {
    fn new(h: &Honest) -> Rogue {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Rogue {
            rt,
            certs: h.dir.path().join("certs"),
            targets: h.addrs.clone(),
            next: std::cell::Cell::new(3),
        }
    }

    /// An endpoint with the next unused identity.
    fn identity(&self) -> (HostId, fragmenta_net::Endpoint) {
        let id = self.next.get();
        assert!(id < 3 + ROGUE_IDS, "the rogue ran out of identities");
        self.next.set(id + 1);
        let tls = fragmenta_net::TlsFiles::for_host(&self.certs, HostId(id));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let _guard = self.rt.enter();
        let endpoint =
            fragmenta_net::Endpoint::bind_quic(any, &tls, &fragmenta_net::NetConfig::default())
                .unwrap();
        (HostId(id), endpoint)
    }

    /// Sends `attack` to host 0, waits up to `linger` for it to close the connection, then
    /// closes it; returns whether host 0 closed it first.
    fn send(&self, attack: &Attack, linger: Duration) -> bool {
        self.send_to(HostId(0), attack, linger)
    }

    /// [`Rogue::send`] to another honest host.
    fn send_to(&self, to: HostId, attack: &Attack, linger: Duration) -> bool {
        let target = self.targets[to.0 as usize];
        let (id, endpoint) = self.identity();
        self.rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let conn = match attack {
                Attack::Handshake(bytes) => {
                    let conn = endpoint.connect(target, to).await.unwrap();
                    let (mut send, mut recv) = conn.open_bi().await.unwrap();
                    let _ = send.write_all(bytes).await;
                    let _ = send.finish();
                    let mut sink = Vec::new();
                    let _ = tokio::time::timeout(linger, recv.read_to_end(&mut sink)).await;
                    conn
                }
                Attack::Uni(bytes) | Attack::Bi(bytes) => {
                    let hello = Hello::new("test", id);
                    let conn =
                        fragmenta_net::handshake::connect_handshake(&endpoint, target, to, hello)
                            .await
                            .unwrap();
                    if let Attack::Uni(_) = attack {
                        let mut s = conn.open_uni().await.unwrap();
                        let _ = s.write_all(bytes).await;
                        let _ = s.finish();
                    } else {
                        let (mut send, mut recv) = conn.open_bi().await.unwrap();
                        let _ = send.write_all(bytes).await;
                        let _ = send.finish();
                        let mut sink = Vec::new();
                        let _ = tokio::time::timeout(linger, recv.read_to_end(&mut sink)).await;
                    }
                    conn
                }
            };
            let closed = tokio::time::timeout(linger, conn.closed()).await.is_ok();
            conn.close(0, b"done");
            endpoint.close();
            closed
        })
    }
}

/// Waits until no honest host counts the rogue among its hosts.
fn rogue_gone(h: &Honest) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in &h.clusters {
        while c.hosts() != vec![HostId(0), HostId(1), HostId(2)] {
            assert!(
                Instant::now() < deadline,
                "{} still lists {:?}",
                c.host_id(),
                c.hosts()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A CLUSTER job over the honest hosts gives every fragment's square exactly once.
fn honest_job_works(h: &Honest, n: usize) {
    let job = Arc::new(Squares::default());
    let handle = h.clusters[0].submit(&job, n).unwrap();
    // A guard, not a timing check: a job of this size takes milliseconds; a hang fails here.
    let report = handle
        .wait_timeout(Duration::from_secs(60))
        .expect("the job finishes")
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let mut got = job.got.lock().unwrap().clone();
    got.sort();
    let want: Vec<(usize, u64)> = (0..n).map(|i| (i, (i * i) as u64)).collect();
    assert_eq!(got, want);
    for c in &h.clusters[1..] {
        assert_eq!(c.hosts(), vec![HostId(0), HostId(1), HostId(2)]);
    }
}

#[test]
fn a_live_host_survives_bad_frames_and_keeps_serving() {
    let honest = start();
    let rogue = Rogue::new(&honest);
    honest_job_works(&honest, 300);

    // Length prefixes claiming gigabytes, on every kind of stream: the host closes the
    // connection and allocates nothing large.
    let mut claims = frame(&Hello::new("", HostId(3)), &[]);
    let at = claims.len() - 2; // the empty cluster name and the host id
    claims.truncate(at);
    claims.push(0xFC); // a u32 length follows: 3 GiB
    claims.extend_from_slice(&(3u32 << 30).to_le_bytes());
    claims.extend_from_slice(b"test\x03");
    let header_len = (claims.len() - 12) as u32;
    claims[..4].copy_from_slice(&header_len.to_le_bytes());
    let control_then = |p: Vec<u8>| {
        let mut v = frame(&StreamHeader::Control, &[]);
        v.extend(p);
        v
    };
    // A valid control frame announcing a 200 MiB payload (within the limit) that never comes.
    let mut announced = frame(&Control::Heartbeat, &[]);
    announced[4..12].copy_from_slice(&(200u64 << 20).to_le_bytes());
    let gigabytes = [
        Attack::Uni(control_then(announced)),
        Attack::Handshake(prefix(u32::MAX, 0)),
        Attack::Handshake(prefix(2, 3 << 30)),
        Attack::Handshake(claims),
        Attack::Uni(prefix(1 << 30, 0)),
        Attack::Uni(control_then(prefix(1 << 31, 0))),
        Attack::Uni(control_then(prefix(2, u64::MAX))),
        Attack::Bi(prefix(u32::MAX, u64::MAX)),
    ];
    fragmenta_testkit::alloc::process_reset_largest();
    for attack in &gigabytes {
        assert!(
            rogue.send(attack, Duration::from_secs(5)),
            "host 0 closed the connection after {attack:?}"
        );
        rogue_gone(&honest);
    }
    let largest = fragmenta_testkit::alloc::process_largest();
    assert!(
        largest < 16 << 20,
        "claims of gigabytes made an allocation of {largest} bytes"
    );
    honest_job_works(&honest, 300);

    // A shutdown from a host that is not the primary is ignored: host 1 is still serving.
    assert_eq!(honest.clusters[1].serve_timeout(Duration::ZERO), None);
    rogue.send_to(HostId(1), &valid_streams()[2], Duration::from_millis(300));
    assert_eq!(
        honest.clusters[1].serve_timeout(Duration::from_millis(500)),
        None,
        "host 1 stopped serving on a shutdown from host 3"
    );

    rogue_gone(&honest);
    honest_job_works(&honest, 300);

    // Random and mutated frames: after each, the honest hosts still compute the right result.
    let mut runner = TestRunner::new(Config {
        cases: 150,
        failure_persistence: None,
        // Every case uses up one of the rogue's identities: report the failing case as is.
        max_shrink_iters: 0,
        ..Config::default()
    });
    let closed_by_host = AtomicUsize::new(0);
    runner
        .run(&arb_attack(), |attack| {
            if rogue.send(&attack, Duration::from_millis(300)) {
                closed_by_host.fetch_add(1, Ordering::Relaxed);
            }
            rogue_gone(&honest);
            honest_job_works(&honest, 120);
            Ok(())
        })
        .unwrap();
    let closed = closed_by_host.load(Ordering::Relaxed);
    eprintln!("wire_live: host 0 closed the connection after {closed} of 150 bad inputs");
    assert!(
        closed > 0,
        "some bad input made host 0 close the connection"
    );
}

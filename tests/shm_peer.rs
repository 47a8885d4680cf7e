//! A peer on the same-machine path that references shared memory it has no right to: against
//! live QUIC hosts in this process (real nodes with mutual TLS on loopback). A rogue holding a
//! valid certificate proves itself same-machine exactly as a host does (it reads the nonce
//! from the initiator's announcement, hands the proof over through the initiator's Fast I/O
//! socket), then sends a result reference to memory that does not exist, or of another size;
//! another rogue sends a reference without proving anything; the same for references to a
//! fragment's whole RDMA result (`ResultItem::RdmaShm`). Each time the initiator closes
//! that connection, and only that one, what the rogue handed over is reclaimed, and the
//! honest cluster keeps working.

mod common;

use fragmenta::*;
use fragmenta_wire::handshake::Hello;
use fragmenta_wire::messages::{
    shm_chunk_name, shm_proof_name, Control, ResultItem, Results, StreamHeader,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Remote fragments send one 1 MiB chunk each (so it goes through shared memory).
#[derive(Serialize, Deserialize, Default)]
struct Blocks {
    #[serde(skip)]
    got: Mutex<Vec<(usize, usize)>>,
}

impl FragmentedJob for Blocks {
    const CLASS_ID: ClassId = ClassId::from_name("test.shm_peer.blocks");
    fn execute_fragment(&self, _: &Transaction, i: usize, _: usize, _: &ExecutionContext) {
        self.got.lock().unwrap().push((i, MIB as usize));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        i: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_chunk(vec![i as u8; MIB as usize])
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, i: usize, _: usize) {
        if !r.is_empty() && r.bytes().iter().all(|b| *b == i as u8) {
            self.got.lock().unwrap().push((i, r.len()));
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
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
    addr: SocketAddr,
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
    let addr = config.host(HostId(0)).unwrap().socket_addr().unwrap();
    let handles: Vec<_> = (0..2)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Blocks>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect();
    let clusters = handles.into_iter().map(|h| h.join().unwrap()).collect();
    Honest {
        dir,
        clusters,
        addr,
    }
}

fn honest_job_works(h: &Honest) {
    let job = Arc::new(Blocks::default());
    let report = h.clusters[0]
        .submit(&job, 20)
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .expect("the job finishes")
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let mut got = job.got.lock().unwrap().clone();
    got.sort();
    let want: Vec<(usize, usize)> = (0..20).map(|i| (i, MIB as usize)).collect();
    assert_eq!(got, want);
}

/// What the rogue does after connecting.
#[derive(Clone, Copy, Debug)]
enum Bogus {
    /// Proves itself, then references an id it never handed over.
    Missing,
    /// Proves itself, hands 1 MiB over, references it as 2 MiB.
    WrongSize,
    /// References memory without any proof.
    Unproven,
    /// Proves itself, then references an RDMA result it never handed over.
    RdmaMissing,
    /// Proves itself, hands 1 MiB over, references it as an RDMA result in 2 MiB.
    RdmaWrongSize,
    /// References an RDMA result without any proof.
    RdmaUnproven,
}

/// Runs the rogue `id` against host 0; returns whether host 0 closed the connection.
fn rogue(h: &Honest, id: u32, bogus: Bogus) -> bool {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tls = fragmenta_net::TlsFiles::for_host(&h.dir.path().join("certs"), HostId(id));
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let endpoint = {
        let _guard = rt.enter();
        fragmenta_net::Endpoint::bind_quic(any, &tls, &fragmenta_net::NetConfig::default()).unwrap()
    };
    let addr = h.addr;
    rt.block_on(async move {
        use tokio::io::AsyncWriteExt;
        let me = HostId(id);
        let hello = Hello::new("test", me);
        let conn = fragmenta_net::handshake::connect_handshake(&endpoint, addr, HostId(0), hello)
            .await
            .unwrap();
        let limits = fragmenta_wire::FrameLimits::default();
        let job = JobId {
            initiator: HostId(0),
            seq: 999,
        };
        let mut control = conn.open_uni().await.unwrap();
        control
            .write_all(&frame(&StreamHeader::Control, &[]))
            .await
            .unwrap();
        if !matches!(bogus, Bogus::Unproven | Bogus::RdmaUnproven) {
            // Host 0's control stream: its announcement, then (after the proof) its confirmation.
            let mut theirs = conn.accept_uni().await.unwrap();
            let (header, _) = fragmenta_wire::read_header::<_, StreamHeader>(&mut theirs, &limits)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(header, StreamHeader::Control);
            let (socket, nonce) = loop {
                let (msg, len) = fragmenta_wire::read_header::<_, Control>(&mut theirs, &limits)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(len, 0);
                if let Control::Machine {
                    socket,
                    nonce,
                    boot_id,
                } = msg
                {
                    assert!(!boot_id.is_empty(), "host 0 offers the same-machine path");
                    break (socket, nonce);
                }
            };
            let ctx = fastio::RemoteContext::connect(&socket).unwrap();
            ctx.hand_over(&shm_proof_name(me, nonce), &[], 0).unwrap();
            if matches!(bogus, Bogus::WrongSize | Bogus::RdmaWrongSize) {
                ctx.hand_over(&shm_chunk_name(me, job, 1), &[1; 1000], MIB)
                    .unwrap();
            }
            control
                .write_all(&frame(&Control::MachineProof { nonce }, &[]))
                .await
                .unwrap();
            loop {
                let (msg, _) = fragmenta_wire::read_header::<_, Control>(&mut theirs, &limits)
                    .await
                    .unwrap()
                    .unwrap();
                if msg == Control::MachineConfirmed {
                    break;
                }
            }
            // The rogue's Fast I/O connection goes; its publications stay (the context owns
            // them) until host 0 reclaims them.
            drop(ctx);
        }
        let item = match bogus {
            Bogus::Missing | Bogus::Unproven => ResultItem::Shm {
                fragment: 0,
                seq: 0,
                id: 5,
                len: MIB,
                size: MIB,
            },
            Bogus::WrongSize => ResultItem::Shm {
                fragment: 0,
                seq: 0,
                id: 1,
                len: MIB + MIB / 2,
                size: 2 * MIB,
            },
            Bogus::RdmaMissing | Bogus::RdmaUnproven => ResultItem::RdmaShm {
                fragment: 0,
                id: 5,
                len: MIB,
                size: MIB,
            },
            Bogus::RdmaWrongSize => ResultItem::RdmaShm {
                fragment: 0,
                id: 1,
                len: MIB + MIB / 2,
                size: 2 * MIB,
            },
        };
        let mut results = conn.open_uni().await.unwrap();
        let mut bytes = frame(&StreamHeader::Results { job }, &[]);
        bytes.extend(frame(&Results { items: vec![item] }, &[]));
        let _ = results.write_all(&bytes).await;
        let _ = results.finish();
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .is_ok();
        conn.close(0, b"done");
        endpoint.close();
        closed
    })
}

#[test]
fn a_bogus_shared_memory_reference_closes_that_link_only_and_leaves_nothing() {
    let honest = start(6);
    // The honest hosts are processes... of one process here, and so of one machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while honest.clusters[0].same_machine().peers != vec![HostId(1)] {
        assert!(std::time::Instant::now() < deadline, "host 1 not proven");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Host 0 lists host 1 once host 1 proved itself; host 1 hands chunks over once it has
    // host 0's confirmation, a moment later: a first job may still go on QUIC.
    loop {
        honest_job_works(&honest);
        if honest.clusters[0].same_machine().chunks_received > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing came through shared memory"
        );
    }
    for (id, bogus) in [
        (2, Bogus::Missing),
        (3, Bogus::WrongSize),
        (4, Bogus::Unproven),
        (5, Bogus::RdmaMissing),
        (6, Bogus::RdmaWrongSize),
        (7, Bogus::RdmaUnproven),
    ] {
        assert!(
            rogue(&honest, id, bogus),
            "host 0 did not close the connection after {bogus:?}"
        );
        // The rogue is declared down, and what it handed over is gone with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = honest.clusters[0].fastio().stats().unwrap();
            let left = (s.used, s.publications, s.handles);
            if honest.clusters[0].hosts() == vec![HostId(0), HostId(1)] && left == (0, 0, 0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{bogus:?}: the rogue stays listed, or its memory stays: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The honest cluster still works.
        honest_job_works(&honest);
    }
}

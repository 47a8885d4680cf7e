//! Four real nodes in one process, over QUIC with mutual TLS on loopback: CLUSTER mode across
//! hosts with per-host replicas and streamed results.

mod common;

use fragmenta::*;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

static REPLICAS: AtomicUsize = AtomicUsize::new(0);

/// Counts replicas of jobs whose marker is 1 (tests in this binary run in parallel: only the
/// replica-counting job sets it).
fn count_replica<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let marker = u8::deserialize(d)?;
    if marker == 1 {
        REPLICAS.fetch_add(1, Ordering::SeqCst);
    }
    Ok(marker)
}

#[derive(Serialize, Deserialize, Default)]
struct Gather {
    flushes: u32,
    unordered: bool,
    panic_on: Option<usize>,
    #[serde(deserialize_with = "count_replica")]
    marker: u8,
    #[serde(skip)]
    got: Mutex<Vec<(usize, u32, Vec<u8>)>>,
    #[serde(skip)]
    local: AtomicUsize,
}

impl FragmentedJob for Gather {
    const CLASS_ID: ClassId = ClassId::from_name("test.cluster_quic.gather");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        self.local.fetch_add(1, Ordering::SeqCst);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        if self.panic_on == Some(index) {
            panic!("remote boom {index}");
        }
        for k in 0..self.flushes {
            out.write_all(&(index as u64 * 1000 + k as u64).to_le_bytes())?;
            out.flush()?;
        }
        out.write_all(&ctx.host().0.to_le_bytes())
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
    fn allow_non_sequential_chunks(&self) -> bool {
        self.unordered
    }
}

/// Chunk sizes of every [`Sizes`] fragment: batched small chunks, chunks sent whole in one
/// frame, and one above the largest frame part (sent in several parts).
const CHUNK_SIZES: [usize; 6] = [10, 70_000, 3, 1 << 20, (16 << 20) + 5, 64 << 10];

/// The bytes of chunk `seq` of fragment `index`: a pattern that shows a byte out of place.
fn chunk_bytes(index: usize, seq: usize) -> Vec<u8> {
    (0..CHUNK_SIZES[seq])
        .map(|i| ((i * 7 + index * 31 + seq * 13) % 251) as u8)
        .collect()
}

/// Remote fragments return chunks of [`CHUNK_SIZES`], in order.
#[derive(Serialize, Deserialize, Default)]
struct Sizes {
    #[serde(skip)]
    got: Mutex<Vec<(usize, u32, usize, bool)>>,
}

impl FragmentedJob for Sizes {
    const CLASS_ID: ClassId = ClassId::from_name("test.cluster_quic.sizes");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        for seq in 0..CHUNK_SIZES.len() {
            out.write_chunk(chunk_bytes(index, seq))?;
        }
        Ok(())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let seq = r.seq() as usize;
        // After the written chunks comes the fragment's final, empty one.
        let want = if seq < CHUNK_SIZES.len() {
            chunk_bytes(index, seq)
        } else {
            Vec::new()
        };
        let intact = r.bytes() == want.as_slice();
        self.got
            .lock()
            .unwrap()
            .push((index, r.seq(), r.len(), intact));
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId(1 + (i % 3) as u32);
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

/// Joins hosts `0..n` of `config`, each on its own thread (joining waits for the others).
fn join_hosts(config: &ClusterConfig, n: u32) -> Vec<Cluster> {
    let handles: Vec<_> = (0..n)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Gather>()
                    .register::<Sizes>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn start(n: usize) -> (tempfile::TempDir, Vec<Cluster>) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::loopback_config(dir.path(), n, "");
    let clusters = join_hosts(&config, n as u32);
    (dir, clusters)
}

#[test]
fn cluster_jobs_across_four_quic_hosts() {
    let (_dir, clusters) = start(4);
    let primary = &clusters[0];
    assert!(primary.is_primary());
    assert_eq!(
        primary.hosts(),
        vec![HostId(0), HostId(1), HostId(2), HostId(3)]
    );

    // Ordered: every remote fragment's chunks arrive exactly once, in (fragment, seq) order,
    // flushes + 1 chunks each; one replica per remote host.
    REPLICAS.store(0, Ordering::SeqCst);
    let job = Arc::new(Gather {
        flushes: 2,
        marker: 1,
        ..Gather::default()
    });
    let n = 2000;
    let report = primary.execute(&job, n).unwrap();
    assert!(report.is_complete(), "{report:?}");
    let got = job.got.lock().unwrap().clone();
    let remote_frags = n - job.local.load(Ordering::SeqCst);
    assert_eq!(got.len(), remote_frags * 3);
    let keys: Vec<(usize, u32)> = got.iter().map(|g| (g.0, g.1)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "ascending (fragment, seq), no duplicates");
    for (f, seq, bytes) in &got {
        if *seq < 2 {
            assert_eq!(bytes, &(*f as u64 * 1000 + *seq as u64).to_le_bytes());
        } else {
            let host = u32::from_le_bytes(bytes.as_slice().try_into().unwrap());
            assert!((1..4).contains(&host), "the last chunk names a remote host");
        }
    }
    let remote_hosts = report
        .per_host
        .iter()
        .filter(|(h, n)| *h != HostId(0) && *n > 0)
        .count();
    assert!(
        remote_hosts >= 2,
        "work spread over remote hosts: {:?}",
        report.per_host
    );
    assert_eq!(
        REPLICAS.load(Ordering::SeqCst),
        remote_hosts,
        "one replica per remote host"
    );
    assert_eq!(report.done_on(HostId(0)), job.local.load(Ordering::SeqCst));

    // Unordered, with a panicking remote fragment: reported failed with its message.
    let job = Arc::new(Gather {
        flushes: 0,
        unordered: true,
        panic_on: Some(1999),
        ..Gather::default()
    });
    let report = primary.execute(&job, 2000).unwrap();
    if report.failed().is_empty() {
        // fragment 1999 ran on the initiator (no remote method called): nothing to check
        assert!(report.is_complete());
    } else {
        assert_eq!(report.failed().to_vec(), vec![1999]);
        assert_eq!(
            report.failures[0].reason,
            FailureReason::Panicked("remote boom 1999".into())
        );
        assert_eq!(report.done().len(), 1999);
    }
    let got = job.got.lock().unwrap();
    assert_eq!(
        got.len(),
        2000 - job.local.load(Ordering::SeqCst) - report.failed().len()
    );
    drop(got);

    // Shutting the primary down releases the others' serve().
    let mut it = clusters.into_iter();
    let primary = it.next().unwrap();
    let others: Vec<_> = it.map(|c| std::thread::spawn(move || c.serve())).collect();
    drop(primary);
    for o in others {
        assert_eq!(o.join().unwrap(), Ok(()));
    }
}

/// A peer with a valid certificate that sends garbage closes its own connection only: the
/// hosts go on running jobs over their other connections.
#[test]
fn chunks_of_every_size_arrive_whole_and_in_order() {
    let (_dir, clusters) = start(4);
    let job = Arc::new(Sizes::default());
    let report = clusters[0].execute(&job, 4).unwrap();
    assert!(report.is_complete(), "{report:?}");
    let got = job.got.lock().unwrap();
    // In (fragment, chunk) order, each chunk whole, then each fragment's final empty chunk.
    let mut expected = Vec::new();
    for index in 0..4 {
        for (seq, &len) in CHUNK_SIZES.iter().enumerate() {
            expected.push((index, seq as u32, len, true));
        }
        expected.push((index, CHUNK_SIZES.len() as u32, 0, true));
    }
    assert_eq!(*got, expected);
}

#[test]
fn a_malformed_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    // Four hosts configured, three started; host 3's certificate is used by a rogue client.
    let config = common::loopback_config(dir.path(), 4, "");
    let text = config
        .to_toml_string()
        .replace("min_hosts = 4", "min_hosts = 3");
    assert!(text.contains("min_hosts = 3"));
    let config = ClusterConfig::from_toml_str(&text, dir.path()).unwrap();
    let addr0 = config.host(HostId(0)).unwrap().socket_addr().unwrap();
    let clusters = join_hosts(&config, 3);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let tls = fragmenta_net::TlsFiles::for_host(&dir.path().join("certs"), HostId(3));
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let ep =
            fragmenta_net::Endpoint::bind_quic(any, &tls, &fragmenta_net::NetConfig::default())
                .unwrap();
        let hello = fragmenta_wire::handshake::Hello::new("test", HostId(3));
        let conn = fragmenta_net::handshake::connect_handshake(&ep, addr0, HostId(0), hello)
            .await
            .unwrap();
        let mut s = conn.open_uni().await.unwrap();
        // A frame header claiming 4 GiB.
        s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        s.write_all(&[0u8; 8]).await.unwrap();
        let _ = s.finish();
        tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed()).await
    });
    assert!(closed.is_ok(), "host 0 closed the rogue connection");

    // The three real hosts still work together.
    let job = Arc::new(Gather {
        flushes: 1,
        ..Gather::default()
    });
    let report = clusters[0].execute(&job, 600).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(clusters[0].hosts(), vec![HostId(0), HostId(1), HostId(2)]);
}

//! Fast I/O inside jobs: a job publishes into its host's context and a later job reads the same
//! memory without a copy; other processes reach the runtime's context over its socket; and
//! `Transaction::fetch` brings a publication from another host over QUIC.

mod common;

use fragmenta::fastio::RemoteContext;
use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Publishes `len` f32 values `i * scale` as `name` on the host that runs each fragment.
#[derive(Serialize, Deserialize, Default)]
struct Publish {
    on: u32,
    name: String,
    len: u64,
    scale: f32,
}

impl Publish {
    fn publish(&self, tx: &Transaction) {
        let ctx = tx
            .fastio()
            .expect("the runtime gives every transaction a context");
        let mut alloc = ctx.create(self.len * 4).unwrap();
        alloc
            .set_type_and_dimensions(ElementType::F32, &[self.len])
            .unwrap();
        {
            let mut w = alloc.map_write().unwrap();
            for (i, v) in w.as_mut_slice::<f32>().unwrap().iter_mut().enumerate() {
                *v = i as f32 * self.scale;
            }
        }
        ctx.publish(&alloc, &self.name).unwrap();
    }
}

impl FragmentedJob for Publish {
    const CLASS_ID: ClassId = ClassId::from_name("test.fastio_jobs.publish");
    fn execute_fragment(&self, tx: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        self.publish(tx);
    }
    fn execute_fragment_remote(
        &self,
        _: &mut ResultWriter<'_>,
        tx: &Transaction,
        _: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        self.publish(tx);
        Ok(())
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(self.on));
    }
}

/// What one fetch saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Values {
        sum: f64,
        len: usize,
        dims: Vec<u64>,
        element_type: Option<ElementType>,
        addr: usize,
    },
    /// A fetch on the initiator failed.
    Failed(FetchError),
    /// What a remote fragment sent back, as text.
    Error(String),
}

/// Each fragment fetches `(host, name)` from `targets[index]` and records what it got: on the
/// initiator directly, on remote hosts through its result chunk.
#[derive(Serialize, Deserialize, Default)]
struct FetchJob {
    /// (fragment runs on, fetch from, name)
    targets: Vec<(u32, u32, String)>,
    cancel_first: bool,
    /// Fetch from inside an async runtime's `block_on` (refused: it would block a reactor).
    in_async: bool,
    #[serde(skip)]
    seen: Mutex<BTreeMap<usize, Seen>>,
}

fn look(tx: &Transaction, host: HostId, name: &str) -> Seen {
    match tx.fetch(host, name) {
        Ok(alloc) => {
            let r = alloc.map_read().unwrap();
            let values = r.as_slice::<f32>().unwrap();
            Seen::Values {
                sum: values.iter().map(|v| f64::from(*v)).sum(),
                len: values.len(),
                dims: alloc.dims().to_vec(),
                element_type: alloc.element_type(),
                addr: r.as_ptr() as usize,
            }
        }
        Err(e) => Seen::Failed(e),
    }
}

impl FetchJob {
    fn run(&self, tx: &Transaction, index: usize) -> Seen {
        if self.cancel_first {
            tx.abort();
        }
        let (_, from, name) = &self.targets[index];
        if self.in_async {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            return rt.block_on(async { look(tx, HostId(*from), name) });
        }
        look(tx, HostId(*from), name)
    }
}

impl FragmentedJob for FetchJob {
    const CLASS_ID: ClassId = ClassId::from_name("test.fastio_jobs.fetch");
    fn execute_fragment(&self, tx: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        let seen = self.run(tx, index);
        self.seen.lock().unwrap().insert(index, seen);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        tx: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        let text = match self.run(tx, index) {
            Seen::Values { sum, len, dims, .. } => format!("ok {sum} {len} {dims:?}"),
            Seen::Failed(e) => format!("err {e:?}"),
            Seen::Error(e) => format!("err {e}"),
        };
        out.write_all(text.as_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let text = String::from_utf8_lossy(r.bytes()).into_owned();
        self.seen.lock().unwrap().insert(index, Seen::Error(text));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (s, t) in slots.iter_mut().zip(&self.targets) {
            *s = HostId(t.0);
        }
    }
}

/// On host 0: fetches host 1's brick, then again reusing the first copy; records whether the
/// second landed in the same memory, the sums, and the context's pooled bytes around the first.
/// (same memory, first sum, second sum, (pooled bytes before, after) the first fetch)
type RefetchSeen = (bool, f64, f64, (u64, u64));

#[derive(Serialize, Deserialize, Default)]
struct Refetch {
    #[serde(skip)]
    seen: Mutex<Option<RefetchSeen>>,
}

impl FragmentedJob for Refetch {
    const CLASS_ID: ClassId = ClassId::from_name("test.fastio_jobs.refetch");
    fn execute_fragment(&self, tx: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        let sum = |a: &Allocation| -> f64 {
            let r = a.map_read().unwrap();
            r.as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|v| f64::from(*v))
                .sum()
        };
        let pooled = || tx.fastio().unwrap().stats().unwrap().pooled;
        let before = pooled();
        let first = tx.fetch(HostId(1), "brick").unwrap();
        let after = pooled();
        let s1 = sum(&first);
        // Scribble on the copy: the refetch must overwrite it with the publication's bytes.
        first.map_write().unwrap().fill(0);
        let addr = first.map_read().unwrap().as_ptr() as usize;
        let second = tx.fetch_reusing(HostId(1), "brick", first).unwrap();
        let same = second.map_read().unwrap().as_ptr() as usize == addr;
        *self.seen.lock().unwrap() = Some((same, s1, sum(&second), (before, after)));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(0));
    }
}

fn expected_sum(len: u64, scale: f32) -> f64 {
    (0..len).map(|i| f64::from(i as f32 * scale)).sum()
}

#[test]
fn a_later_job_reads_what_an_earlier_job_published_without_a_copy() {
    let cluster = Cluster::embedded();
    let publish = Arc::new(Publish {
        on: 0,
        name: "field".into(),
        len: 1 << 16,
        scale: 0.5,
    });
    assert!(cluster.execute(&publish, 1).unwrap().is_complete());

    // The process maps a memory once while any handle to it lives: hold one, so the jobs'
    // handles must resolve to the very same bytes.
    let mine = cluster.fastio().get("field").unwrap();
    let mine_addr = mine.map_read().unwrap().as_ptr() as usize;
    let read = Arc::new(FetchJob {
        targets: vec![(0, 0, "field".into()); 4],
        ..FetchJob::default()
    });
    assert!(cluster.execute(&read, 4).unwrap().is_complete());
    let seen = read.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for s in seen.values() {
        match s {
            Seen::Values {
                sum,
                len,
                dims,
                element_type,
                addr,
            } => {
                assert_eq!(*sum, expected_sum(1 << 16, 0.5));
                assert_eq!(*len, 1 << 16);
                assert_eq!(dims, &[1u64 << 16]);
                assert_eq!(*element_type, Some(ElementType::F32));
                assert_eq!(*addr, mine_addr, "the same mapping: no copy");
            }
            Seen::Failed(e) => panic!("fetch on the own host failed: {e}"),
            Seen::Error(e) => panic!("fetch on the own host failed: {e}"),
        }
    }
}

#[test]
fn another_process_reaches_the_runtime_context_over_its_socket() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::embedded();
    let publish = Arc::new(Publish {
        on: 0,
        name: "shared".into(),
        len: 1000,
        scale: 2.0,
    });
    assert!(cluster.execute(&publish, 1).unwrap().is_complete());
    let socket = cluster.fastio_socket().unwrap();
    assert_eq!(cluster.fastio_socket().unwrap(), socket, "started once");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "socket readable by its owner only: {mode:o}"
    );
    // A client of the socket (what a helper process does) sees the job's publication.
    let client = RemoteContext::connect(&socket).unwrap();
    let a = client.get("shared").unwrap();
    let r = a.map_read().unwrap();
    let v = r.as_slice::<f32>().unwrap();
    assert_eq!(v.len(), 1000);
    assert_eq!(v[999], 1998.0);
    // And a job sees what the client publishes.
    let mut b = client.create(8).unwrap();
    b.set_type_and_dimensions(ElementType::F32, &[2]).unwrap();
    b.map_write()
        .unwrap()
        .as_mut_slice::<f32>()
        .unwrap()
        .copy_from_slice(&[1.5, 2.5]);
    client.publish(&b, "from-client").unwrap();
    let read = Arc::new(FetchJob {
        targets: vec![(0, 0, "from-client".into())],
        ..FetchJob::default()
    });
    assert!(cluster.execute(&read, 1).unwrap().is_complete());
    match &read.seen.lock().unwrap()[&0] {
        Seen::Values { sum, .. } => assert_eq!(*sum, 4.0),
        other => panic!("{other:?}"),
    };
}

#[test]
fn fetch_brings_publications_across_quic_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::loopback_config(dir.path(), 3, "");
    let clusters: Vec<Cluster> = (0..3u32)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Publish>()
                    .register::<FetchJob>()
                    .register::<Refetch>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let primary = &clusters[0];
    // Hosts 0, 1, 2 each publish "brick" with their own scale; 16 MiB on host 1.
    let len = 4 << 20;
    for (h, c) in clusters.iter().enumerate() {
        let job = Arc::new(Publish {
            on: h as u32,
            name: "brick".into(),
            len: if h == 1 { len } else { 1000 },
            scale: h as f32 + 1.0,
        });
        assert!(primary.execute(&job, 1).unwrap().is_complete());
        assert_eq!(c.fastio().stats().unwrap().publications, 1);
    }
    // Host 2 holds a write map on another publication: a fetch of it is refused, not dirty.
    let busy = clusters[2].fastio().create(64).unwrap();
    clusters[2].fastio().publish(&busy, "busy").unwrap();
    let busy_write = busy.map_write().unwrap();

    // Host 1's own mapping of its brick, held so its address stays put.
    let host1_brick = clusters[1].fastio().get("brick").unwrap();
    let host1_addr = host1_brick.map_read().unwrap().as_ptr() as usize;
    let job = Arc::new(FetchJob {
        targets: vec![
            (0, 1, "brick".into()),   // initiator fetches host 1's 16 MiB
            (0, 2, "brick".into()),   // and host 2's
            (0, 1, "nothing".into()), // unknown name
            (0, 7, "brick".into()),   // unknown host
            (0, 2, "busy".into()),    // mapped for writing there
            (2, 1, "brick".into()),   // a remote fragment on host 2 fetches from host 1
            (1, 0, "brick".into()),   // host 1 fetches from the initiator
        ],
        ..FetchJob::default()
    });
    let report = primary.execute(&job, 7).unwrap();
    assert!(report.is_complete(), "{report:?}");
    drop(busy_write);
    let seen = job.seen.lock().unwrap();
    match &seen[&0] {
        Seen::Values {
            sum,
            len: n,
            dims,
            element_type,
            addr,
        } => {
            assert_eq!(*sum, expected_sum(len, 2.0));
            assert_eq!(*n as u64, len);
            assert_eq!(dims, &[len]);
            assert_eq!(*element_type, Some(ElementType::F32));
            assert_ne!(
                *addr, host1_addr,
                "a copy in the fetching host's own context"
            );
        }
        other => panic!("{other:?}"),
    }
    match &seen[&1] {
        Seen::Values { sum, .. } => assert_eq!(*sum, expected_sum(1000, 3.0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        seen[&2],
        Seen::Failed(FetchError::UnknownName {
            host: HostId(1),
            name: "nothing".into()
        })
    );
    assert_eq!(seen[&3], Seen::Failed(FetchError::UnknownHost(HostId(7))));
    // Host 2's own Fast I/O error, as its context gave it.
    assert_eq!(
        seen[&4],
        Seen::Failed(FetchError::Remote {
            host: HostId(2),
            name: "busy".into(),
            error: FastIoError::MapConflict
        })
    );
    assert_eq!(
        seen[&5],
        Seen::Error(format!("ok {} {len} [{len}]", expected_sum(len, 2.0)))
    );
    assert_eq!(
        seen[&6],
        Seen::Error(format!("ok {} 1000 [1000]", expected_sum(1000, 1.0)))
    );
    drop(seen);
    // The fetched copies were private and are gone: host 0's context holds only its brick.
    let stats = primary.fastio().stats().unwrap();
    assert_eq!(stats.used, 4000, "{stats:?}");
    // The 16 MiB copy's memory is kept for the next fetch of that size (default capacity:
    // half the machine's memory, so a quarter of it is far above 16 MiB).
    assert_eq!(stats.pooled, len * 4, "{stats:?}");

    // Fetching again into the previous copy reuses its memory.
    let refetch = Arc::new(Refetch::default());
    assert!(primary.execute(&refetch, 1).unwrap().is_complete());
    let (same, s1, s2, pooled) = refetch.seen.lock().unwrap().take().unwrap();
    assert_eq!(
        pooled,
        (len * 4, 0),
        "the first fetch takes the pooled memory"
    );
    assert!(same, "the second fetch landed in the reused allocation");
    // The first fetch took the pooled memory (which held the earlier copy's bytes) and
    // overwrote all of it.
    assert_eq!(s1, expected_sum(len, 2.0));
    assert_eq!(s2, expected_sum(len, 2.0));

    // A cancelled job's fetch stops with Cancelled.
    let cancelled = Arc::new(FetchJob {
        targets: vec![(0, 1, "brick".into())],
        cancel_first: true,
        ..FetchJob::default()
    });
    let _ = primary.execute(&cancelled, 1).unwrap();
    assert_eq!(
        cancelled.seen.lock().unwrap()[&0],
        Seen::Failed(FetchError::Cancelled)
    );

    // A fetch from a thread of an async runtime is refused before anything is sent: blocking
    // there would stall the runtime's tasks.
    let in_async = Arc::new(FetchJob {
        targets: vec![(0, 1, "brick".into())],
        in_async: true,
        ..FetchJob::default()
    });
    assert!(primary.execute(&in_async, 1).unwrap().is_complete());
    assert_eq!(
        in_async.seen.lock().unwrap()[&0],
        Seen::Failed(FetchError::AsyncThread)
    );
}

/// A fetch from a host of the configuration that has no link yet waits for it (up to the
/// failure timeout) instead of failing at once; one that never comes fails with `UnknownHost`.
#[test]
fn fetch_waits_for_a_configured_host_that_joins_late() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::loopback_config(dir.path(), 4, "");
    let text = config
        .to_toml_string()
        .replace("min_hosts = 4", "min_hosts = 2");
    assert!(text.contains("min_hosts = 2"));
    let config = ClusterConfig::from_toml_str(&text, dir.path()).unwrap();
    let join = move |h: u32| {
        let config = config.clone();
        std::thread::spawn(move || {
            Cluster::builder()
                .register::<FetchJob>()
                .join_config(config, HostId(h))
                .unwrap()
        })
    };
    let (h0, h1) = (join(0), join(1));
    let primary = h0.join().unwrap();
    let _h1 = h1.join().unwrap();
    // Host 2 starts 400 ms after the fetch from it begins; host 3 never starts.
    let late = std::thread::spawn({
        let join = join.clone();
        move || {
            std::thread::sleep(std::time::Duration::from_millis(400));
            join(2).join().unwrap()
        }
    });
    let job = Arc::new(FetchJob {
        targets: vec![(0, 2, "nothing".into()), (0, 3, "brick".into())],
        ..FetchJob::default()
    });
    let report = primary.execute(&job, 2).unwrap();
    assert!(report.is_complete(), "{report:?}");
    let seen = job.seen.lock().unwrap();
    // Host 2 was reached: it answered that it has no such publication.
    assert_eq!(
        seen[&0],
        Seen::Failed(FetchError::UnknownName {
            host: HostId(2),
            name: "nothing".into()
        })
    );
    assert_eq!(seen[&1], Seen::Failed(FetchError::UnknownHost(HostId(3))));
    drop(seen);
    drop(late.join().unwrap());
}

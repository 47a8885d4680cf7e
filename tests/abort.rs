//! A fragment aborting its own job (`Transaction::abort`) cancels it through the scheduler in
//! every mode, on the embedded cluster and on real hosts over QUIC: the job finishes with the
//! unstarted fragments cancelled instead of re-running them forever. Fragments see the job's
//! cancellation read-only (`Transaction::cancellation`).

mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Fragment `abort_at` aborts the job; every fragment runs slowly enough that some are left.
#[derive(Serialize, Deserialize, Default)]
struct Aborting {
    mode: u8,
    hosts: u32,
    abort_at: usize,
    #[serde(skip)]
    ran: AtomicUsize,
}

impl Aborting {
    fn run(&self, tx: &Transaction, index: usize) {
        self.ran.fetch_add(1, Ordering::Relaxed);
        if index == self.abort_at {
            assert!(!tx.cancellation().is_cancelled());
            tx.abort();
            assert!(tx.is_cancelled(), "the aborting fragment sees it at once");
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl FragmentedJob for Aborting {
    const CLASS_ID: ClassId = ClassId::from_name("test.abort.aborting");
    fn execute_fragment(&self, tx: &Transaction, index: usize, _: usize, _: &ExecutionContext) {
        self.run(tx, index);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        tx: &Transaction,
        index: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        self.run(tx, index);
        out.write_all(&[1])
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        match self.mode {
            0 => SchedulingMode::Local,
            1 => SchedulingMode::Cluster,
            2 => SchedulingMode::OncePerHost,
            _ => SchedulingMode::UserDefined,
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        // Fragment `abort_at` on the last host, the others spread over every host.
        let hosts = self.hosts.max(1);
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId(i as u32 % hosts);
        }
        if let Some(s) = slots.get_mut(self.abort_at) {
            *s = HostId(hosts - 1);
        }
    }
}

fn aborted(cluster: &Cluster, mode: u8, count: usize, abort_at: usize) -> JobReport {
    let job = Arc::new(Aborting {
        mode,
        hosts: cluster.hosts().len() as u32,
        abort_at,
        ..Aborting::default()
    });
    let report = cluster
        .submit(&job, count)
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("mode {mode}: the aborted job never finished"))
        .unwrap();
    assert_eq!(report.count, count);
    assert_eq!(
        report.done().len()
            + report.cancelled().len()
            + report.failed().len()
            + report.skipped().len(),
        count
    );
    assert!(report.done().contains(abort_at), "{report:?}");
    assert!(
        !report.is_complete(),
        "mode {mode}: nothing was cancelled: {report:?}"
    );
    assert!(
        job.ran.load(Ordering::Relaxed) < count,
        "mode {mode}: every fragment ran"
    );
    report
}

#[test]
fn a_fragment_aborts_its_job_on_the_embedded_cluster() {
    let cluster = Cluster::builder().cores(2.0).embedded().unwrap();
    for mode in [0, 1, 3] {
        let report = aborted(&cluster, mode, 400, 5);
        assert!(!report.cancelled().is_empty(), "mode {mode}: {report:?}");
    }
}

#[test]
fn a_fragment_aborts_its_job_on_hosts_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::loopback_config(dir.path(), 3, "");
    let clusters: Vec<Cluster> = (0..3)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Aborting>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let primary = &clusters[0];
    // LOCAL and CLUSTER: fragment 5 runs wherever the scheduler puts it (CLUSTER: on host 0
    // first); USER_DEFINED: on host 2, so the abort travels to the initiator.
    for mode in [0, 1, 3] {
        aborted(primary, mode, 400, 5);
    }
    // CLUSTER with the aborting fragment on a remote host: a fragment far from the front runs
    // remotely once the initiator's window is full.
    let report = aborted(primary, 1, 2_000, 1_500);
    assert!(!report.cancelled().is_empty(), "{report:?}");
    // ONCE_PER_HOST: one fragment per remote host; the aborting one cancels the job, and the
    // job still finishes.
    let job = Arc::new(Aborting {
        mode: 2,
        abort_at: 0,
        ..Aborting::default()
    });
    let report = primary
        .submit(&job, 0)
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .expect("the ONCE_PER_HOST job finishes")
        .unwrap();
    assert_eq!(report.count, 2);
    assert!(report.done().contains(0), "{report:?}");
    // Every host still serves jobs afterwards.
    let job = Arc::new(Aborting {
        mode: 1,
        abort_at: usize::MAX,
        ..Aborting::default()
    });
    let report = primary.execute(&job, 30).unwrap();
    assert!(report.is_complete(), "{report:?}");
}

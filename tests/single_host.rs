//! The embedded one-host cluster: every scheduling mode's one-host meaning and every per-host
//! execution rule, each asserted on what actually ran.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A configurable probe job: records how often each fragment ran and the peak concurrency.
#[derive(Serialize, Deserialize, Default)]
struct Probe {
    mode: Option<SchedulingModeDef>,
    thread_limit: usize,
    cpu_load: f32,
    gpu_load: f32,
    priority: i8,
    sleep_ms: u64,
    panic_on: Option<usize>,
    assign_odd_to: Option<u32>,
    #[serde(skip)]
    runs: Mutex<Vec<u32>>,
    #[serde(skip)]
    running: AtomicUsize,
    #[serde(skip)]
    peak: AtomicUsize,
    #[serde(skip)]
    saw_cancel: AtomicBool,
    #[serde(skip)]
    cancel_calls: AtomicU32,
    #[serde(skip)]
    gpus_seen: Mutex<Vec<u32>>,
    #[serde(skip)]
    gpu_running: Mutex<Vec<u32>>,
    #[serde(skip)]
    gpu_peak: AtomicUsize,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
enum SchedulingModeDef {
    Local,
    Cluster,
    Once,
    User,
}

impl Probe {
    fn new(mode: SchedulingModeDef, count: usize) -> Probe {
        Probe {
            mode: Some(mode),
            cpu_load: 1.0,
            runs: Mutex::new(vec![0; count]),
            gpu_running: Mutex::new(vec![0; 8]),
            ..Probe::default()
        }
    }
    fn runs(&self) -> Vec<u32> {
        self.runs.lock().unwrap().clone()
    }
}

impl FragmentedJob for Probe {
    const CLASS_ID: ClassId = ClassId::from_name("test.single_host.probe");

    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if let Some(g) = ctx.gpu() {
            self.gpus_seen.lock().unwrap().push(g);
            let mut r = self.gpu_running.lock().unwrap();
            r[g as usize] += 1;
            self.gpu_peak
                .fetch_max(r[g as usize] as usize, Ordering::SeqCst);
        }
        let end = std::time::Instant::now() + Duration::from_millis(self.sleep_ms);
        while std::time::Instant::now() < end {
            if ctx.is_cancelled() {
                self.saw_cancel.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.runs.lock().unwrap()[index] += 1;
        if let Some(g) = ctx.gpu() {
            self.gpu_running.lock().unwrap()[g as usize] -= 1;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.panic_on == Some(index) {
            panic!("boom {index}");
        }
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        match self.mode {
            Some(SchedulingModeDef::Cluster) => SchedulingMode::Cluster,
            Some(SchedulingModeDef::Once) => SchedulingMode::OncePerHost,
            Some(SchedulingModeDef::User) => SchedulingMode::UserDefined,
            _ => SchedulingMode::Local,
        }
    }
    fn thread_limit(&self) -> usize {
        self.thread_limit
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
    fn cancel(&self) {
        self.cancel_calls.fetch_add(1, Ordering::SeqCst);
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            *s = match (i % 2, self.assign_odd_to) {
                (1, Some(h)) => HostId(h),
                _ => HostId(0),
            };
        }
    }
}

fn cluster(cores: f32) -> Cluster {
    Cluster::builder().cores(cores).embedded().unwrap()
}

#[test]
fn local_and_cluster_run_every_fragment_exactly_once() {
    let c = cluster(2.0);
    for mode in [SchedulingModeDef::Local, SchedulingModeDef::Cluster] {
        let job = Arc::new(Probe::new(mode, 5000));
        let report = c.execute(&job, 5000).unwrap();
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.done().to_vec(), (0..5000).collect::<Vec<_>>());
        assert!(job.runs().iter().all(|&n| n == 1));
        assert_eq!(report.per_host, vec![(HostId(0), 5000)]);
    }
}

#[test]
fn once_per_host_has_no_remote_host_on_one_host() {
    let c = cluster(2.0);
    let job = Arc::new(Probe::new(SchedulingModeDef::Once, 4));
    let report = c.execute(&job, 0).unwrap();
    assert_eq!(report.count, 0);
    assert!(job.runs().iter().all(|&n| n == 0));
    assert_eq!(
        c.execute(&job, 1).unwrap_err(),
        ExecuteError::InvalidArgument(InvalidArgument::OncePerHostCountExceedsHosts {
            count: 1,
            eligible: 0
        })
    );
}

#[test]
fn user_defined_runs_this_hosts_fragments_and_skips_the_rest() {
    let c = cluster(2.0);
    let mut p = Probe::new(SchedulingModeDef::User, 10);
    p.assign_odd_to = Some(7);
    let job = Arc::new(p);
    let report = c.execute(&job, 10).unwrap();
    assert_eq!(report.done().to_vec(), vec![0, 2, 4, 6, 8]);
    assert_eq!(report.skipped().to_vec(), vec![1, 3, 5, 7, 9]);
    assert_eq!(job.runs(), vec![1, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
}

#[test]
fn thread_limit_caps_concurrency() {
    let c = cluster(8.0);
    let mut p = Probe::new(SchedulingModeDef::Local, 24);
    p.thread_limit = 3;
    p.sleep_ms = 10;
    let job = Arc::new(p);
    assert!(c.execute(&job, 24).unwrap().is_complete());
    assert_eq!(
        job.peak.load(Ordering::SeqCst),
        3,
        "8 cores, limit 3: exactly 3 at once"
    );
}

#[test]
fn cpu_load_sum_stays_within_cores() {
    for (cores, load, expect) in [(4.0, 1.5, 2), (2.0, 0.5, 4), (3.0, 1.0, 3)] {
        let c = cluster(cores);
        let mut p = Probe::new(SchedulingModeDef::Local, 24);
        p.cpu_load = load;
        p.sleep_ms = 10;
        let job = Arc::new(p);
        assert!(c.execute(&job, 24).unwrap().is_complete());
        assert_eq!(
            job.peak.load(Ordering::SeqCst),
            expect,
            "cores {cores}, load {load}"
        );
    }
}

#[test]
fn lower_priority_value_runs_first_among_waiting_jobs() {
    // One core. A blocker holds it while two jobs queue; then the priority-1 job must run all
    // its fragments before any fragment of the priority-5 job.
    #[derive(Serialize, Deserialize, Default)]
    struct Ordered {
        priority: i8,
        tag: u8,
        #[serde(skip)]
        log: Arc<Mutex<Vec<u8>>>,
        #[serde(skip)]
        gate: Arc<AtomicBool>,
        #[serde(skip)]
        started: Arc<AtomicBool>,
    }
    impl FragmentedJob for Ordered {
        const CLASS_ID: ClassId = ClassId::from_name("test.single_host.ordered");
        fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
            self.started.store(true, Ordering::SeqCst);
            while !self.gate.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.log.lock().unwrap().push(self.tag);
        }
        fn priority(&self) -> i8 {
            self.priority
        }
    }
    let c = cluster(1.0);
    let log = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let mk = |priority, tag| {
        Arc::new(Ordered {
            priority,
            tag,
            log: log.clone(),
            gate: gate.clone(),
            started: started.clone(),
        })
    };
    let blocker = c.submit(&mk(0, 0), 1).unwrap();
    // Wait until the blocker holds the core (it spins on the gate).
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let low = c.submit(&mk(5, 5), 20).unwrap();
    let high = c.submit(&mk(1, 1), 20).unwrap();
    gate.store(true, Ordering::SeqCst);
    blocker.wait().unwrap();
    low.wait().unwrap();
    high.wait().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], 0);
    let first_low = log.iter().position(|&t| t == 5).unwrap();
    let last_high = log.iter().rposition(|&t| t == 1).unwrap();
    assert!(last_high < first_low, "order was {log:?}");
}

#[test]
fn negative_priority_is_an_invalid_argument() {
    let c = cluster(2.0);
    let mut p = Probe::new(SchedulingModeDef::Local, 1);
    p.priority = -1;
    let job = Arc::new(p);
    assert_eq!(
        c.execute(&job, 1).unwrap_err(),
        ExecuteError::InvalidArgument(InvalidArgument::NegativePriority(-1))
    );
    assert_eq!(job.runs(), vec![0]);
}

#[test]
fn cancel_skips_unstarted_calls_cancel_and_signals_running_fragments() {
    let c = cluster(2.0);
    let mut p = Probe::new(SchedulingModeDef::Local, 400);
    p.sleep_ms = 20;
    let job = Arc::new(p);
    let handle = c.submit(&job, 400).unwrap();
    while handle.progress().0 < 4 {
        std::thread::sleep(Duration::from_millis(2));
    }
    handle.cancel();
    handle.cancel(); // idempotent
    let report = handle.wait().unwrap();
    assert_eq!(job.cancel_calls.load(Ordering::SeqCst), 1);
    assert!(
        job.saw_cancel.load(Ordering::SeqCst),
        "a running fragment saw is_cancelled()"
    );
    assert!(
        report.cancelled().len() > 300,
        "{} cancelled",
        report.cancelled().len()
    );
    assert_eq!(report.done().len() + report.cancelled().len(), 400);
    let ran: usize = job.runs().iter().map(|&n| n as usize).sum();
    assert_eq!(ran, report.done().len(), "cancelled fragments never ran");
}

#[test]
fn a_panicking_fragment_fails_alone() {
    let c = cluster(2.0);
    let mut p = Probe::new(SchedulingModeDef::Local, 50);
    p.panic_on = Some(17);
    let job = Arc::new(p);
    let report = c.execute(&job, 50).unwrap();
    assert_eq!(report.failed().to_vec(), vec![17]);
    assert_eq!(report.done().len(), 49);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].index, 17);
    assert_eq!(
        report.failures[0].reason,
        FailureReason::Panicked("boom 17".into())
    );
}

#[test]
fn progress_reaches_the_total() {
    let c = cluster(2.0);
    let mut p = Probe::new(SchedulingModeDef::Local, 40);
    p.sleep_ms = 1;
    let job = Arc::new(p);
    let h = c.submit(&job, 40).unwrap();
    assert_eq!(h.progress().1, 40);
    let done = h
        .wait_timeout(Duration::from_secs(30))
        .expect("finishes")
        .unwrap();
    assert!(done.is_complete());
}

#[test]
fn gpu_jobs_need_gpus_and_each_fragment_is_told_its_gpu() {
    let c = cluster(8.0);
    let mut p = Probe::new(SchedulingModeDef::Local, 16);
    p.gpu_load = 1.0;
    p.cpu_load = 0.0;
    p.sleep_ms = 5;
    let job = Arc::new(p);
    assert_eq!(
        c.execute(&job, 16).unwrap_err(),
        ExecuteError::InvalidArgument(InvalidArgument::NoGpuHost(1.0))
    );
    let c = Cluster::builder().cores(8.0).gpus(2).embedded().unwrap();
    assert!(c.execute(&job, 16).unwrap().is_complete());
    let seen = job.gpus_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 16);
    assert!(seen.iter().all(|g| *g < 2));
    assert_eq!(
        job.gpu_peak.load(Ordering::SeqCst),
        1,
        "load 1.0: one fragment per GPU"
    );
    assert_eq!(
        job.peak.load(Ordering::SeqCst),
        2,
        "two GPUs, two fragments at once"
    );
}

#[test]
fn many_concurrent_jobs_all_complete() {
    let c = Arc::new(cluster(2.0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let job = Arc::new(Probe::new(SchedulingModeDef::Cluster, 100));
                    let r = c.execute(&job, 100).unwrap();
                    assert!(r.is_complete());
                    assert!(job.runs().iter().all(|&n| n == 1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Records the thread each fragment ran on.
#[derive(Serialize, Deserialize, Default)]
struct WhichThread {
    #[serde(skip)]
    threads: Mutex<Vec<std::thread::ThreadId>>,
}

impl FragmentedJob for WhichThread {
    const CLASS_ID: ClassId = ClassId::from_name("test.which-thread");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
    }
}

#[test]
fn execute_runs_a_one_fragment_job_on_the_calling_thread() {
    // The thread that waits for the job runs its first block itself: no hand-over to a worker.
    let c = cluster(2.0);
    let me = std::thread::current().id();
    for _ in 0..20 {
        let job = Arc::new(WhichThread::default());
        assert!(c.execute(&job, 1).unwrap().is_complete());
        assert_eq!(*job.threads.lock().unwrap(), vec![me]);
    }
    // A job started with `submit` and waited for later runs once as well.
    let job = Arc::new(WhichThread::default());
    let handle = c.submit(&job, 1).unwrap();
    let report = handle.wait().unwrap();
    assert!(report.is_complete());
    assert_eq!(job.threads.lock().unwrap().len(), 1);
}

//! Real processes started the way a user starts them: `fragmenta launch -n 4 -- PROG`, where
//! PROG is this test binary in host mode (`FRAGMENTA_TEST_SCENARIO` set). Each scenario checks
//! the launcher's prefixed output and exit status; host 0 asserts on its `JobReport` and the
//! remote hosts print what only they can see (replica counts, `cancel()` calls).
//!
//! A custom harness (no libtest): `main` is either the scenario runner or a host program.

mod common;

use fragmenta::*;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCENARIO: &str = "FRAGMENTA_TEST_SCENARIO";

static REPLICAS: AtomicUsize = AtomicUsize::new(0);

fn count_replica<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    REPLICAS.fetch_add(1, Ordering::SeqCst);
    u8::deserialize(d)
}

#[derive(Serialize, Deserialize, Default)]
struct Probe {
    flushes: u32,
    sleep_ms: u64,
    panic_on: Option<usize>,
    slow_host: Option<u32>,
    #[serde(deserialize_with = "count_replica")]
    marker: u8,
    #[serde(skip)]
    got: Mutex<Vec<(usize, u32, Vec<u8>)>>,
    #[serde(skip)]
    local: AtomicUsize,
}

impl FragmentedJob for Probe {
    const CLASS_ID: ClassId = ClassId::from_name("test.launch.probe");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, ctx: &ExecutionContext) {
        self.local.fetch_add(1, Ordering::SeqCst);
        sleep_unless_cancelled(self.sleep_ms, ctx);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        let factor = if self.slow_host == Some(ctx.host().0) {
            5
        } else {
            1
        };
        sleep_unless_cancelled(self.sleep_ms * factor, ctx);
        if self.panic_on == Some(index) {
            panic!("remote boom {index}");
        }
        for k in 0..self.flushes {
            out.write_all(&(index as u64 * 1000 + k as u64).to_le_bytes())?;
            out.flush()?;
        }
        // Final chunk: this host's id and how many replicas this process made so far.
        out.write_all(&ctx.host().0.to_le_bytes())?;
        out.write_all(&(REPLICAS.load(Ordering::SeqCst) as u32).to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        self.got
            .lock()
            .unwrap()
            .push((index, r.seq(), r.bytes().to_vec()));
    }
    fn cancel(&self) {
        println!("cancel() called on this host's instance");
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn sleep_unless_cancelled(ms: u64, ctx: &ExecutionContext) {
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < end && !ctx.is_cancelled() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Records where each fragment ran: locally, or the remote host named in its result.
#[derive(Serialize, Deserialize, Default)]
struct Where {
    mode: u8, // 0 = ONCE_PER_HOST, 1 = USER_DEFINED
    #[serde(skip)]
    ran_on: Mutex<Vec<(usize, u32)>>,
}

impl FragmentedJob for Where {
    const CLASS_ID: ClassId = ClassId::from_name("test.launch.where");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        self.ran_on.lock().unwrap().push((index, ctx.host().0));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_all(&ctx.host().0.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let host = u32::from_le_bytes(r.bytes().try_into().unwrap_or([0xff; 4]));
        self.ran_on.lock().unwrap().push((index, host));
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId((i % 5) as u32); // host 4 does not exist
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        if self.mode == 0 {
            SchedulingMode::OncePerHost
        } else {
            SchedulingMode::UserDefined
        }
    }
}

/// CLUSTER fragments that take `slow_ms` on host 3 and `fast_ms` elsewhere, recording where
/// each ran (locally, or the remote host named in its result).
#[derive(Serialize, Deserialize, Default)]
struct Uneven {
    fast_ms: u64,
    slow_ms: u64,
    #[serde(skip)]
    ran_on: Mutex<Vec<(usize, u32)>>,
}

impl Uneven {
    fn work(&self, ctx: &ExecutionContext) {
        let ms = if ctx.host() == HostId(3) {
            self.slow_ms
        } else {
            self.fast_ms
        };
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// Where each fragment ran: every index of `0..n` once, or an error naming what is not.
    fn placement(&self, n: usize) -> Result<Vec<u32>, String> {
        let mut on = vec![None; n];
        for &(i, h) in self.ran_on.lock().unwrap().iter() {
            match on.get_mut(i) {
                Some(slot @ None) => *slot = Some(h),
                Some(Some(first)) => {
                    return Err(format!("fragment {i} ran on host {first} and on host {h}"))
                }
                None => return Err(format!("fragment {i} out of range")),
            }
        }
        on.into_iter()
            .enumerate()
            .map(|(i, h)| h.ok_or(format!("fragment {i} never ran")))
            .collect()
    }
}

impl FragmentedJob for Uneven {
    const CLASS_ID: ClassId = ClassId::from_name("test.launch.uneven");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        self.work(ctx);
        self.ran_on.lock().unwrap().push((index, ctx.host().0));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        self.work(ctx);
        out.write_all(&ctx.host().0.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let host = u32::from_le_bytes(r.bytes().try_into().unwrap_or([0xff; 4]));
        self.ran_on.lock().unwrap().push((index, host));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// The program every launched process runs.
fn host_main(scenario: &str) -> Result<(), String> {
    let mut builder = Cluster::builder();
    // In "unknown_class", host 2 does not link the job type in: it is excluded from the job.
    let host_env = std::env::var("FRAGMENTA_HOST_ID").unwrap_or_default();
    if !(scenario == "unknown_class" && host_env == "2") {
        builder = builder.register::<Probe>();
    }
    builder = builder.register::<Where>().register::<Uneven>();
    let cluster = builder.join().map_err(|e| e.to_string())?;
    if !cluster.is_primary() {
        return cluster.serve().map_err(|e| e.to_string());
    }
    let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
    match scenario {
        "results" => {
            let job = Arc::new(Probe {
                flushes: 2,
                ..Probe::default()
            });
            let n = 3000;
            let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
            check(report.is_complete(), format!("incomplete: {report:?}"))?;
            let got = job.got.lock().unwrap().clone();
            let remote = n - job.local.load(Ordering::SeqCst);
            check(
                got.len() == remote * 3,
                format!("{} chunks for {remote} remote fragments", got.len()),
            )?;
            let keys: Vec<(usize, u32)> = got.iter().map(|g| (g.0, g.1)).collect();
            check(
                keys.windows(2).all(|w| w[0] < w[1]),
                "chunks out of order".into(),
            )?;
            let mut hosts = std::collections::BTreeSet::new();
            for (f, seq, bytes) in &got {
                if *seq < 2 {
                    check(
                        bytes == &(*f as u64 * 1000 + *seq as u64).to_le_bytes(),
                        format!("bad chunk {f}.{seq}"),
                    )?;
                } else {
                    let host = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
                    let replicas = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
                    check(
                        replicas == 1,
                        format!("host {host} made {replicas} replicas"),
                    )?;
                    hosts.insert(host);
                }
            }
            check(hosts.len() == 3, format!("remote hosts used: {hosts:?}"))?;
            println!(
                "results ok: {} fragments, per host {:?}",
                n, report.per_host
            );
        }
        "cancel" => {
            let job = Arc::new(Probe {
                sleep_ms: 20,
                ..Probe::default()
            });
            let h = cluster.submit(&job, 600).map_err(|e| e.to_string())?;
            while h.progress().0 < 40 {
                std::thread::sleep(Duration::from_millis(5));
            }
            h.cancel();
            let report = h.wait().map_err(|e| e.to_string())?;
            check(!report.cancelled().is_empty(), "nothing cancelled".into())?;
            check(
                report.done().len() + report.cancelled().len() == 600,
                format!("{report:?}"),
            )?;
            let received: std::collections::BTreeSet<usize> =
                job.got.lock().unwrap().iter().map(|g| g.0).collect();
            check(
                received.iter().all(|f| report.done().contains(*f)),
                "result of a non-done fragment".into(),
            )?;
            println!(
                "cancel ok: {} done, {} cancelled",
                report.done().len(),
                report.cancelled().len()
            );
        }
        "unknown_class" | "panic" => {
            let job = Arc::new(Probe {
                panic_on: (scenario == "panic").then_some(5),
                ..Probe::default()
            });
            // USER_DEFINED would be the precise tool here; CLUSTER suffices: with 400 fragments
            // every host gets some.
            let report = cluster.execute(&job, 400).map_err(|e| e.to_string())?;
            for f in &report.failures {
                println!("failure: fragment {} on {}: {}", f.index, f.host, f.reason);
            }
            if scenario == "unknown_class" {
                // Host 2 lacks the type: it is excluded and its fragments run elsewhere.
                check(report.is_complete(), format!("{report:?}"))?;
                check(
                    report.done_on(HostId(2)) == 0,
                    "host 2 ran fragments".into(),
                )?;
                check(
                    report.excluded_hosts
                        == vec![(HostId(2), FailureReason::UnknownClass(Probe::CLASS_ID))],
                    format!("excluded: {:?}", report.excluded_hosts),
                )?;
            } else if !report.done().contains(5) {
                check(
                    report.failed().to_vec() == vec![5],
                    format!("{:?}", report.failed()),
                )?;
                check(
                    report.failures[0].reason == FailureReason::Panicked("remote boom 5".into()),
                    "reason".into(),
                )?;
            }
            check(
                report.done().len() + report.failed().len() == 400,
                format!("{report:?}"),
            )?;
            println!("{scenario} ok");
        }
        "once_per_host" => {
            let job = Arc::new(Where {
                mode: 0,
                ..Where::default()
            });
            let report = cluster.execute(&job, 0).map_err(|e| e.to_string())?;
            check(
                report.count == 3 && report.is_complete(),
                format!("{report:?}"),
            )?;
            let mut hosts: Vec<u32> = job.ran_on.lock().unwrap().iter().map(|r| r.1).collect();
            hosts.sort();
            check(
                hosts == vec![1, 2, 3],
                format!("one fragment per remote host, got {hosts:?}"),
            )?;
            let err = cluster.execute(&job, 4).err();
            check(
                err == Some(ExecuteError::InvalidArgument(
                    InvalidArgument::OncePerHostCountExceedsHosts {
                        count: 4,
                        eligible: 3,
                    },
                )),
                format!("{err:?}"),
            )?;
            println!("once_per_host ok");
        }
        "user_defined" => {
            let job = Arc::new(Where {
                mode: 1,
                ..Where::default()
            });
            let report = cluster.execute(&job, 50).map_err(|e| e.to_string())?;
            let expect_skipped: Vec<usize> = (0..50).filter(|i| i % 5 == 4).collect();
            check(
                report.skipped().to_vec() == expect_skipped,
                format!("skipped {:?}", report.skipped()),
            )?;
            check(report.done().len() == 40, format!("{report:?}"))?;
            for (i, host) in job.ran_on.lock().unwrap().iter() {
                check(
                    *host == (*i % 5) as u32,
                    format!("fragment {i} ran on host {host}"),
                )?;
            }
            check(
                job.ran_on.lock().unwrap().len() == 40,
                "each assigned fragment ran once".into(),
            )?;
            println!("user_defined ok");
        }
        "slow_host" => {
            // Host 3 is five times slower: pull-based placement must give it fewer fragments.
            let job = Arc::new(Probe {
                sleep_ms: 4,
                slow_host: Some(3),
                ..Probe::default()
            });
            let report = cluster.execute(&job, 600).map_err(|e| e.to_string())?;
            check(report.is_complete(), format!("{report:?}"))?;
            let (fast, slow) = (report.done_on(HostId(1)), report.done_on(HostId(3)));
            check(
                slow * 2 < fast,
                format!("slow host did {slow}, a fast one {fast}"),
            )?;
            println!("slow_host ok: per host {:?}", report.per_host);
        }
        "work_stealing" => {
            // Host 3 runs its fragments 200 times slower. The initiator hands it its first
            // window (twice its slots) like every host; once the other hosts ran the rest, it
            // has started at most one fragment per slot, and stealing takes the queued ones
            // back. With stealing off, the same job leaves them waiting for host 3.
            let n = 300;
            let run = |stealing: bool| -> Result<(JobReport, Vec<u32>), String> {
                cluster.set_work_stealing(stealing);
                let job = Arc::new(Uneven {
                    fast_ms: 2,
                    slow_ms: 400,
                    ..Uneven::default()
                });
                let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
                check(report.is_complete(), format!("{report:?}"))?;
                let on = job.placement(n)?;
                for h in 0..4u32 {
                    let ran = on.iter().filter(|x| **x == h).count();
                    check(
                        ran == report.done_on(HostId(h)),
                        format!("host {h} ran {ran}, the report says {report:?}"),
                    )?;
                }
                Ok((report, on))
            };
            let reclaims_before = cluster.reclaims();
            let (stolen, _) = run(true)?;
            let reclaims = cluster.reclaims() - reclaims_before;
            let (kept, _) = run(false)?;
            let (with, without) = (stolen.done_on(HostId(3)), kept.done_on(HostId(3)));
            check(
                reclaims > 0 && with * 2 <= without,
                format!(
                    "host 3 ran {with} fragments with stealing ({reclaims} reclaims), {without} without"
                ),
            )?;
            println!(
                "work_stealing ok: host 3 ran {with} with stealing ({reclaims} reclaims), {without} without; per host {:?} / {:?}",
                stolen.per_host, kept.per_host
            );
        }
        other => return Err(format!("unknown scenario {other}")),
    }
    Ok(())
}

fn launch(scenario: &str) -> (i32, String) {
    common::launch_self(4, (SCENARIO, scenario))
}

fn main() {
    common::harness::run_host_if_child(SCENARIO, host_main);
    type Check = fn(&str) -> Result<(), String>;
    let scenarios: Vec<(&str, Check)> = vec![
        ("results", |out| {
            out.contains("[host-0] results ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
        ("cancel", |out| {
            if !out.contains("[host-0] cancel ok") {
                return Err("no success line".into());
            }
            let cancelled: Vec<&str> = out
                .lines()
                .filter(|l| l.contains("cancel() called"))
                .collect();
            let remote = cancelled
                .iter()
                .filter(|l| !l.starts_with("[host-0]"))
                .count();
            if cancelled.iter().any(|l| l.starts_with("[host-0]")) && remote >= 2 {
                Ok(())
            } else {
                Err(format!(
                    "cancel() must reach the original and the replicas: {cancelled:?}"
                ))
            }
        }),
        ("unknown_class", |out| {
            out.contains("[host-0] unknown_class ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
        ("panic", |out| {
            out.contains("[host-0] panic ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
        ("slow_host", |out| {
            out.contains("[host-0] slow_host ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
        ("work_stealing", |out| {
            out.contains("[host-0] work_stealing ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
        ("once_per_host", |out| {
            out.contains("[host-0] once_per_host ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
        ("user_defined", |out| {
            out.contains("[host-0] user_defined ok")
                .then_some(())
                .ok_or("no success line".into())
        }),
    ];
    let names: Vec<&'static str> = scenarios.iter().map(|s| s.0).collect();
    common::harness::run_named("launch", &names, |name| {
        let check = scenarios
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s.1)
            .ok_or_else(|| format!("no scenario {name}"))?;
        common::harness::launched(launch(name), check)
    })
}

//! The conveniences that keep a job program short, checked the way a user meets them: job types
//! registered by `#[fragmenta::job]` alone running on other hosts, typed results merged by one
//! method, the `spmd` entry, nested jobs started from a fragment, waiting and cancelling from
//! different threads, and `fragmenta launch --keep-going` with a host killed mid-job.
//!
//! A custom harness (no libtest): `main` is either the scenario runner or, with
//! `FRAGMENTA_FRICTION_SCENARIO` set by `fragmenta launch`, a host program.

mod common;

use common::harness::{launched, Outcome};
use fragmenta::__private::CancelToken;
use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const SCENARIO: &str = "FRAGMENTA_FRICTION_SCENARIO";

/// Fragments that ran on this process (to kill a host after a few).
static RAN_HERE: AtomicUsize = AtomicUsize::new(0);

/// A CLUSTER job registered by the attribute only: never passed to `register` anywhere.
#[derive(Serialize, Deserialize, Default)]
struct Where {
    sleep_ms: u64,
    /// The host that kills itself (SIGKILL) when it starts its third fragment.
    kill_host: Option<u32>,
    #[serde(skip)]
    merged: Mutex<Vec<(usize, u64, u32)>>,
}

#[fragmenta::job]
impl TypedJob for Where {
    type Output = (u64, u32);
    fn run(&self, f: &Fragment<'_>) -> (u64, u32) {
        if self.kill_host == Some(f.host().0) && RAN_HERE.fetch_add(1, Ordering::SeqCst) == 2 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        (f.index as u64 * 3, f.host().0)
    }
    fn merge(&self, index: usize, (value, host): (u64, u32)) {
        self.merged.lock().unwrap().push((index, value, host));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// A LOCAL job started from inside a fragment of [`Outer`]: sums `base * i` over its fragments.
#[derive(Serialize, Deserialize, Default)]
struct Inner {
    base: u64,
    #[serde(skip)]
    sum: AtomicU64,
}

#[fragmenta::job(name = "test.friction.inner")]
impl TypedJob for Inner {
    type Output = u64;
    fn run(&self, f: &Fragment<'_>) -> u64 {
        self.base * f.index as u64
    }
    fn merge(&self, _: usize, part: u64) {
        self.sum.fetch_add(part, Ordering::Relaxed);
    }
}

/// A CLUSTER job whose every fragment runs a nested [`Inner`] job of 4 fragments through its
/// transaction, wherever it runs, and returns the nested sum with its host.
#[derive(Serialize, Deserialize, Default)]
struct Outer {
    #[serde(skip)]
    merged: Mutex<Vec<(usize, u64, u32)>>,
}

#[fragmenta::job]
impl TypedJob for Outer {
    type Output = (u64, u32);
    fn run(&self, f: &Fragment<'_>) -> (u64, u32) {
        let inner = Arc::new(Inner {
            base: f.index as u64,
            ..Inner::default()
        });
        match f.transaction.execute(&inner, 4) {
            Ok(report) if report.is_complete() => {}
            other => panic!("nested job of fragment {}: {other:?}", f.index),
        }
        // Slow enough that the remote hosts get fragments too.
        std::thread::sleep(Duration::from_millis(20));
        (inner.sum.load(Ordering::Relaxed), f.host().0)
    }
    fn merge(&self, index: usize, (sum, host): (u64, u32)) {
        self.merged.lock().unwrap().push((index, sum, host));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// A LOCAL job with the default `cpu_load` 1.0 whose fragments each wait for a nested job of
/// `cpu_load` 1.0: on a host with fewer cores than fragments, the waiting fragments must lend
/// their cores to the nested jobs.
#[derive(Serialize, Deserialize, Default)]
struct OuterLocal {
    #[serde(skip)]
    merged: Mutex<Vec<(usize, u64, u32)>>,
}

#[fragmenta::job]
impl TypedJob for OuterLocal {
    type Output = u64;
    fn run(&self, f: &Fragment<'_>) -> u64 {
        let inner = Arc::new(Inner {
            base: f.index as u64,
            ..Inner::default()
        });
        match f.transaction.execute(&inner, 4) {
            Ok(report) if report.is_complete() => inner.sum.load(Ordering::Relaxed),
            other => panic!("nested job of fragment {}: {other:?}", f.index),
        }
    }
    fn merge(&self, index: usize, sum: u64) {
        self.merged.lock().unwrap().push((index, sum, 0));
    }
}

/// A LOCAL job of slow fragments that stop early when cancelled.
#[derive(Serialize, Deserialize, Default)]
struct Slow;

#[fragmenta::job]
impl TypedJob for Slow {
    type Output = ();
    fn run(&self, f: &Fragment<'_>) {
        for _ in 0..50 {
            if f.is_cancelled() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    fn merge(&self, _: usize, (): ()) {}
}

/// The facade under another name: `crate = path` tells the attribute where it is.
mod renamed {
    use fragmenta as facade;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Renamed;

    #[facade::job(crate = facade, name = "test.friction.renamed")]
    impl facade::TypedJob for Renamed {
        type Output = ();
        fn run(&self, _: &facade::Fragment<'_>) {}
        fn merge(&self, _: usize, (): ()) {}
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// Every fragment merged exactly once, with `expected(index)`; returns the fragments per host.
fn merged_once(
    count: usize,
    merged: &[(usize, u64, u32)],
    expected: impl Fn(usize) -> u64,
) -> Result<Vec<usize>, String> {
    let mut seen = vec![0usize; count];
    let mut per_host = vec![0usize; 8];
    for &(index, value, host) in merged {
        check(index < count, || format!("fragment {index} of {count}"))?;
        check(value == expected(index), || {
            format!("fragment {index}: {value}, expected {}", expected(index))
        })?;
        seen[index] += 1;
        if let Some(n) = per_host.get_mut(host as usize) {
            *n += 1;
        }
    }
    check(seen.iter().all(|&n| n == 1), || {
        format!("not merged exactly once: {seen:?}")
    })?;
    Ok(per_host)
}

/// The host program: `spmd` joins, the primary runs the scenario, the others serve.
fn host_main(scenario: &str) -> Result<(), String> {
    let scenario = scenario.to_owned();
    fragmenta::spmd(move |cluster| {
        match scenario.as_str() {
            "auto_registered" => {
                let job = Arc::new(Where {
                    sleep_ms: 5,
                    ..Where::default()
                });
                let n = 300;
                let report = cluster.execute(&job, n)?;
                check(report.is_complete() && report.failures.is_empty(), || {
                    format!("{report:?}")
                })?;
                let per_host = merged_once(n, &job.merged.lock().unwrap(), |i| i as u64 * 3)?;
                check(per_host[1..3].iter().all(|&k| k > 0), || {
                    format!("a remote host ran nothing: {per_host:?}")
                })?;
                println!("auto_registered ok: per host {:?}", &per_host[..3]);

                let outer = Arc::new(Outer::default());
                let n = 24;
                let report = cluster.execute(&outer, n)?;
                check(report.is_complete() && report.failures.is_empty(), || {
                    format!("{report:?}")
                })?;
                // Fragment i's nested job sums i * (0 + 1 + 2 + 3).
                let per_host = merged_once(n, &outer.merged.lock().unwrap(), |i| i as u64 * 6)?;
                check(per_host[1..3].iter().any(|&k| k > 0), || {
                    format!("no nested job ran on a remote host: {per_host:?}")
                })?;
                println!("nested ok: per host {:?}", &per_host[..3]);
            }
            "keep_going" => {
                let job = Arc::new(Where {
                    sleep_ms: 20,
                    kill_host: Some(3),
                    ..Where::default()
                });
                let n = 400;
                let report = cluster.execute(&job, n)?;
                check(report.is_complete(), || format!("{report:?}"))?;
                let per_host = merged_once(n, &job.merged.lock().unwrap(), |i| i as u64 * 3)?;
                let live: Vec<HostId> = cluster.hosts();
                check(!live.contains(&HostId(3)), || {
                    format!("host-3 still a member: {live:?}")
                })?;
                println!(
                    "keep_going ok: {n} fragments done, per host {:?}",
                    &per_host[..4]
                );
            }
            other => return Err(format!("no scenario {other}").into()),
        }
        Ok(())
    })
    .map_err(|e| e.to_string())
}

fn launch(args: &[&str], scenario: &str) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fragmenta"))
        .arg("launch")
        .args(args)
        .arg("--")
        .arg(std::env::current_exe().expect("test binary path"))
        .env(SCENARIO, scenario)
        .output()
        .expect("run the launcher");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Job types marked `#[fragmenta::job]` and never registered run on the other processes of a
/// launched cluster, a nested job started from a fragment included.
fn auto_registered_jobs_run_on_remote_hosts() -> Result<Outcome, String> {
    launched(launch(&["-n", "3"], "auto_registered"), |out| {
        check(out.contains("[host-0] auto_registered ok"), || {
            "no success line".into()
        })?;
        check(out.contains("[host-0] nested ok"), || {
            "no nested line".into()
        })
    })
}

/// Under `--keep-going`, a host killed mid-job leaves the others running: its fragments move
/// and the job completes, every fragment merged once.
fn keep_going_moves_a_killed_hosts_fragments() -> Result<Outcome, String> {
    launched(launch(&["-n", "4", "--keep-going"], "keep_going"), |out| {
        check(
            out.contains("[launch] host-3 was killed by signal 9; --keep-going"),
            || "the launcher did not note host-3's death".into(),
        )?;
        check(out.contains("[host-0] keep_going ok"), || {
            "no success line".into()
        })
    })
}

/// Linked types are in every builder's registry; a hand-made transaction cannot nest jobs.
fn linked_types_are_registered_and_nesting_needs_a_runtime() -> Result<Outcome, String> {
    let registry = Registry::linked().map_err(|e| e.to_string())?;
    for class in [
        <Where as FragmentedJob>::CLASS_ID,
        <Outer as FragmentedJob>::CLASS_ID,
        ClassId::from_name("test.friction.inner"),
        ClassId::from_name("test.friction.renamed"),
    ] {
        check(registry.contains(class), || {
            format!("{class} not linked: {:?}", registry.type_names())
        })?;
    }
    check(
        <Where as FragmentedJob>::CLASS_ID == ClassId::from_name("friction::Where"),
        || "the default class name is the module path and type name".into(),
    )?;
    let tx = Transaction::new(
        HostId(0),
        JobId {
            initiator: HostId(0),
            seq: 1,
        },
        CancelToken::new(),
    );
    let err = tx.execute(&Arc::new(Slow), 1).err();
    check(err == Some(ExecuteError::NoRuntime), || format!("{err:?}"))?;
    // Embedded: a nested job from a local fragment.
    let cluster = Cluster::builder().embedded().map_err(|e| e.to_string())?;
    let outer = Arc::new(Outer::default());
    let report = cluster.execute(&outer, 8).map_err(|e| e.to_string())?;
    check(report.is_complete(), || format!("{report:?}"))?;
    merged_once(8, &outer.merged.lock().unwrap(), |i| i as u64 * 6)?;
    Ok(Outcome::Passed)
}

/// Fragments with the default load that each wait for a nested job, on a host with fewer
/// cores than fragments: the waiting fragments lend their cores, nothing hangs.
fn nested_jobs_get_the_cores_of_waiting_fragments() -> Result<Outcome, String> {
    let cluster = Cluster::builder()
        .cores(2.0)
        .embedded()
        .map_err(|e| e.to_string())?;
    let outer = Arc::new(OuterLocal::default());
    let handle = cluster.submit(&outer, 8).map_err(|e| e.to_string())?;
    let report = match handle.wait_timeout(Duration::from_secs(60)) {
        Some(report) => report.map_err(|e| e.to_string())?,
        None => {
            return Err(format!(
                "no report after 60 s: the nested jobs wait for cores ({:?} done)",
                handle.progress()
            ))
        }
    };
    check(report.is_complete(), || format!("{report:?}"))?;
    merged_once(8, &outer.merged.lock().unwrap(), |i| i as u64 * 6)?;
    Ok(Outcome::Passed)
}

/// One thread waits on the job, another cancels it, a callback gets the same report.
fn wait_and_cancel_from_different_threads() -> Result<Outcome, String> {
    let cluster = Cluster::embedded();
    let handle = cluster
        .submit(&Arc::new(Slow), 400)
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let callback = handle
        .on_complete(move |report| {
            let _ = tx.send(report);
        })
        .map_err(|e| e.to_string())?;
    let waiter = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.wait())
    };
    let canceller = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            while handle.progress().0 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            handle.cancel();
        })
    };
    canceller.join().map_err(|_| "canceller panicked")?;
    let waited = waiter
        .join()
        .map_err(|_| "waiter panicked")?
        .map_err(|e| e.to_string())?;
    let called = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("no callback: {e}"))?
        .map_err(|e| e.to_string())?;
    callback.join().map_err(|_| "callback panicked")?;
    check(
        !waited.cancelled().is_empty() && !waited.is_complete(),
        || format!("not cancelled: {waited:?}"),
    )?;
    check(
        called.job == waited.job && called.cancelled() == waited.cancelled(),
        || format!("callback saw {called:?}, waiter {waited:?}"),
    )?;
    // The original handle still waits, after the others.
    let again = handle.wait().map_err(|e| e.to_string())?;
    check(again.done() == waited.done(), || {
        "a second wait differs".into()
    })?;
    Ok(Outcome::Passed)
}

fn main() {
    common::harness::run_host_if_child(SCENARIO, host_main);
    common::harness::run_scenarios(
        "friction",
        &[
            (
                "linked_types_are_registered_and_nesting_needs_a_runtime",
                linked_types_are_registered_and_nesting_needs_a_runtime,
            ),
            (
                "nested_jobs_get_the_cores_of_waiting_fragments",
                nested_jobs_get_the_cores_of_waiting_fragments,
            ),
            (
                "wait_and_cancel_from_different_threads",
                wait_and_cancel_from_different_threads,
            ),
            (
                "auto_registered_jobs_run_on_remote_hosts",
                auto_registered_jobs_run_on_remote_hosts,
            ),
            (
                "keep_going_moves_a_killed_hosts_fragments",
                keep_going_moves_a_killed_hosts_fragments,
            ),
        ],
    );
}

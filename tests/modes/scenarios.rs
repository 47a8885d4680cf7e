//! The mode scenarios, each written once over a cluster handle and the shapes of its hosts;
//! `tests/modes.rs` runs them on the embedded cluster, on in-process hosts and on real
//! processes. The primary's part returns an error naming what did not hold; the parts of other
//! hosts that initiate jobs of their own return a verdict the primary collects.

use super::jobs::*;
use super::Layout;
use fragmenta::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Ids of every host of `layout`.
fn all_hosts(layout: Layout) -> Vec<u32> {
    (0..layout.len() as u32).collect()
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn err_string(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The ledger of every host in `hosts`: this one's directly, the others' through a [`Report`]
/// job.
fn ledgers(cluster: &Cluster, hosts: &[u32], print: bool) -> Result<BTreeMap<u32, Ledger>, String> {
    let me = cluster.host_id().0;
    let remote: Vec<u32> = hosts.iter().copied().filter(|h| *h != me).collect();
    let mut out = BTreeMap::new();
    if !remote.is_empty() {
        let job = Arc::new(Report {
            hosts: remote.clone(),
            print,
            ..Report::default()
        });
        let report = cluster.execute(&job, remote.len()).map_err(err_string)?;
        check(report.is_complete(), || {
            format!("ledger report: {report:?}")
        })?;
        let got = job.got.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, h) in remote.iter().enumerate() {
            let bytes = got.get(&i).ok_or(format!("no ledger from host {h}"))?;
            out.insert(*h, Ledger::parse(&String::from_utf8_lossy(bytes))?);
        }
    }
    if hosts.contains(&me) {
        out.insert(me, ledger_of(me));
    }
    Ok(out)
}

/// Waits until every host of `hosts` has a verdict, and fails on any that is not "ok".
pub(crate) fn await_verdicts(cluster: &Cluster, hosts: &[u32]) -> Result<(), String> {
    loop {
        let l = ledgers(cluster, hosts, false)?;
        if l.values().all(|l| l.verdict.is_some()) {
            for (h, l) in &l {
                let v = l.verdict.clone().unwrap_or_default();
                println!("verdict of host-{h}: {v}");
                check(v.starts_with("ok"), || format!("host {h}: {v}"))?;
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Submits `job` and expects an invalid-argument error.
fn expect_invalid<J: FragmentedJob>(
    cluster: &Cluster,
    job: J,
    count: usize,
    want: InvalidArgument,
) -> Result<(), String> {
    let got = cluster.execute(&Arc::new(job), count).err();
    check(
        got == Some(ExecuteError::InvalidArgument(want.clone())),
        || format!("expected {want:?}, got {got:?}"),
    )
}

/// ONCE_PER_HOST, USER_DEFINED and the GPU error on 5 hosts: 0, 1, 2 in sub-cluster 0, 3 and 4
/// in sub-cluster 1, no GPUs.
pub(crate) fn sub_clusters(cluster: &Cluster, _: Layout) -> Result<(), String> {
    use SchedulingMode::*;
    // Count 0: exactly one fragment per remote host of sub-cluster 0.
    let job = Arc::new(Probe::new("once0", OncePerHost));
    let r = cluster.execute(&job, 0).map_err(err_string)?;
    check(r.count == 2 && r.is_complete(), || format!("once0: {r:?}"))?;
    let hosts: Vec<u32> = job.records().iter().map(|r| r.host).collect();
    check(hosts == [1, 2] || hosts == [2, 1], || {
        format!("once0 ran on {hosts:?}")
    })?;
    // Count 1: at most one per host, on an eligible host.
    let job = Arc::new(Probe::new("once1", OncePerHost));
    let r = cluster.execute(&job, 1).map_err(err_string)?;
    let rec = job.records();
    check(
        r.count == 1 && r.is_complete() && rec.len() == 1 && [1, 2].contains(&rec[0].host),
        || format!("once1: {r:?} {rec:?}"),
    )?;
    // Errors before anything runs.
    expect_invalid(
        cluster,
        Probe::new("once3", OncePerHost),
        3,
        InvalidArgument::OncePerHostCountExceedsHosts {
            count: 3,
            eligible: 2,
        },
    )?;
    expect_invalid(
        cluster,
        Probe {
            gpu_load: 0.5,
            ..Probe::new("once-gpu", OncePerHost)
        },
        0,
        InvalidArgument::OncePerHostWithGpuLoad(0.5),
    )?;
    expect_invalid(
        cluster,
        Probe {
            gpu_load: 1.0,
            ..Probe::new("nogpu-cluster", Cluster)
        },
        8,
        InvalidArgument::NoGpuHost(1.0),
    )?;
    expect_invalid(
        cluster,
        Probe {
            gpu_load: 0.25,
            hosts: vec![1, 2, 3],
            ..Probe::new("nogpu-user", UserDefined)
        },
        6,
        InvalidArgument::NoGpuHost(0.25),
    )?;
    // USER_DEFINED across sub-clusters; hosts 7 and UNASSIGNED do not exist.
    let assign = [0, 1, 2, 3, 4, 7, u32::MAX];
    let n = 21;
    let job = Arc::new(Probe {
        hosts: assign.to_vec(),
        ..Probe::new("user", UserDefined)
    });
    let r = cluster.execute(&job, n).map_err(err_string)?;
    let unknown: Vec<usize> = (0..n).filter(|i| assign[i % 7] > 4).collect();
    check(r.skipped().to_vec() == unknown, || {
        format!("user skipped {:?}, expected {unknown:?}", r.skipped())
    })?;
    check(
        r.done().len() == n - unknown.len() && r.failed().is_empty(),
        || format!("user: {r:?}"),
    )?;
    for rec in job.records() {
        check(rec.host == assign[rec.index % 7], || {
            format!("user fragment {} ran on host {}", rec.index, rec.host)
        })?;
    }
    check(job.records().len() == r.done().len(), || {
        "user: one record per done fragment".into()
    })?;

    // Host 3 (sub-cluster 1) ran its own ONCE_PER_HOST job meanwhile.
    await_verdicts(cluster, &[3])?;
    let all = ledgers(cluster, &[0, 1, 2, 3, 4], true)?;
    for (h, l) in &all {
        let once0 = l.ran("once0");
        let expect: usize = if [1, 2].contains(h) { 1 } else { 0 };
        check(once0.len() == expect, || {
            format!("host {h} ran once0 fragments {once0:?}")
        })?;
        let h3 = l.ran("once-from-3");
        check(h3.len() == usize::from(*h == 4), || {
            format!("host {h} ran once-from-3 fragments {h3:?}")
        })?;
        for bad in ["once3", "once-gpu", "nogpu-cluster", "nogpu-user"] {
            check(
                l.ran(bad).is_empty() && !l.replicas.contains_key(bad),
                || format!("host {h} ran or received invalid job {bad}: {l:?}"),
            )?;
        }
        let mine: Vec<usize> = (0..n).filter(|i| assign[i % 7] == *h).collect();
        check(l.ran("user") == mine, || {
            format!(
                "host {h} ran user fragments {:?}, assigned {mine:?}",
                l.ran("user")
            )
        })?;
        for tag in ["once0", "user"] {
            let replicas = l.replicas.get(tag).copied().unwrap_or(0);
            let want = usize::from(*h != 0 && !l.ran(tag).is_empty());
            check(replicas == want, || {
                format!("host {h} made {replicas} replicas of {tag}")
            })?;
        }
    }
    let once1: usize = all.values().map(|l| l.ran("once1").len()).sum();
    check(once1 == 1, || format!("once1 ran {once1} times"))?;
    Ok(())
}

/// Host 3 of `sub_clusters`: ONCE_PER_HOST from sub-cluster 1 reaches host 4 only.
pub(crate) fn once_from_sub_cluster_1(cluster: &Cluster) -> Result<String, String> {
    let job = Arc::new(Probe::new("once-from-3", SchedulingMode::OncePerHost));
    let r = cluster.execute(&job, 0).map_err(err_string)?;
    let hosts: Vec<u32> = job.records().iter().map(|r| r.host).collect();
    check(r.count == 1 && r.is_complete() && hosts == [4], || {
        format!("from host 3: {r:?}, ran on {hosts:?}")
    })?;
    expect_invalid(
        cluster,
        Probe::new("once3", SchedulingMode::OncePerHost),
        2,
        InvalidArgument::OncePerHostCountExceedsHosts {
            count: 2,
            eligible: 1,
        },
    )?;
    Ok("once-per-host from sub-cluster 1 ran on host 4 only".into())
}

/// GPU placement, thread_limit and cpu_load on hosts with different cores and GPUs (the
/// cores and GPUs of host `h` are `layout[h]`'s).
pub(crate) fn gpus(cluster: &Cluster, layout: Layout) -> Result<(), String> {
    use SchedulingMode::Cluster as C;
    let gpus_of = |h: u32| layout.get(h as usize).map_or(0, |x| x.2);
    let cores_of = |h: u32| layout.get(h as usize).map_or(0, |x| x.1);
    // Two GPU jobs at once: half a GPU per fragment, and two GPUs per fragment.
    let half = Arc::new(Probe {
        cpu_load: 0.0,
        gpu_load: 0.5,
        sleep_ms: 15,
        ..Probe::new("gpu-half", C)
    });
    let two = Arc::new(Probe {
        cpu_load: 0.0,
        gpu_load: 2.0,
        sleep_ms: 15,
        ..Probe::new("gpu-two", C)
    });
    let (h1, h2) = (
        cluster.submit(&half, 40).map_err(err_string)?,
        cluster.submit(&two, 6).map_err(err_string)?,
    );
    for (r, name) in [(h1.wait(), "gpu-half"), (h2.wait(), "gpu-two")] {
        let r = r.map_err(err_string)?;
        check(r.is_complete(), || format!("{name}: {r:?}"))?;
    }
    for rec in half.records() {
        let n = gpus_of(rec.host);
        check(rec.gpus.len() == 1 && rec.gpus[0] < n, || {
            format!(
                "gpu-half fragment got GPUs {:?} on host {} with {n} GPUs",
                rec.gpus, rec.host
            )
        })?;
    }
    for rec in two.records() {
        let n = gpus_of(rec.host);
        let want: Vec<u32> = (0..n.min(2)).collect();
        let mut got = rec.gpus.clone();
        got.sort_unstable();
        check(n > 0 && got == want, || {
            format!(
                "gpu-two fragment got GPUs {:?} on host {} with {n} GPUs",
                rec.gpus, rec.host
            )
        })?;
    }
    // Two CPU jobs at once: thread_limit 2, and cpu_load 1.5. Every host must run some of
    // each, so that its peak is a real check of the limit: work stealing could take a busy
    // host's whole queue away (that it runs elsewhere exactly once is tests/launch.rs's
    // `work_stealing` and crates/sched/tests/stealing.rs), so it is off for these two jobs.
    cluster.set_work_stealing(false);
    let limited = Arc::new(Probe {
        thread_limit: 2,
        sleep_ms: 10,
        ..Probe::new("threads2", C)
    });
    let heavy = Arc::new(Probe {
        cpu_load: 1.5,
        sleep_ms: 10,
        ..Probe::new("cpu1.5", C)
    });
    let (h1, h2) = (
        cluster.submit(&limited, 60).map_err(err_string)?,
        cluster.submit(&heavy, 40).map_err(err_string)?,
    );
    for (r, name) in [(h1.wait(), "threads2"), (h2.wait(), "cpu1.5")] {
        let r = r.map_err(err_string)?;
        check(r.is_complete(), || format!("{name}: {r:?}"))?;
    }
    cluster.set_work_stealing(true);

    let all = ledgers(cluster, &all_hosts(layout), true)?;
    for (h, l) in &all {
        let (cores, n) = (cores_of(*h), gpus_of(*h));
        println!("host-{h} ({cores} cores, {n} GPUs) peaks: {:?}", l.peaks);
        for tag in ["gpu-half", "gpu-two"] {
            check(n > 0 || l.ran(tag).is_empty(), || {
                format!(
                    "host {h} has no GPU but ran {tag} fragments {:?}",
                    l.ran(tag)
                )
            })?;
        }
        for (name, peak) in &l.peaks {
            if let Some(ordinal) = name.strip_prefix("gpu") {
                let ordinal: u32 = ordinal.parse().map_err(err_string)?;
                check(ordinal < n, || format!("host {h} used GPU {ordinal}"))?;
                check(*peak <= 1000, || {
                    format!("host {h} GPU {ordinal} carried a load of {peak}/1000")
                })?;
            }
        }
        for (tag, limit) in [
            ("threads2", 2),
            ("cpu1.5", ((cores as f32 / 1.5).floor() as u64).max(1)),
        ] {
            let peak = l.peak(&format!("job:{tag}"));
            check(!l.ran(tag).is_empty(), || {
                format!("host {h} ran no {tag} fragment")
            })?;
            check(peak <= limit, || {
                format!("host {h}: {peak} fragments of {tag} at once, limit {limit}")
            })?;
        }
        let cpu_cap = (u64::from(cores) * 1000).max(1500); // a load above the cores runs alone
        check(l.peak("cpu") <= cpu_cap, || {
            format!("host {h}: CPU load {} with {cores} cores", l.peak("cpu"))
        })?;
    }
    Ok(())
}

/// Submits `n` jobs at once and checks every result.
pub(crate) fn many_jobs(cluster: &Cluster, n: u64) -> Result<String, String> {
    let me = u64::from(cluster.host_id().0);
    let hosts: Vec<u32> = cluster.hosts().iter().map(|h| h.0).collect();
    let jobs: Vec<(Arc<Sum>, usize)> = (0..n)
        .map(|j| {
            let mode = if j % 4 == 3 {
                SchedulingMode::UserDefined
            } else {
                SchedulingMode::Cluster
            };
            let job = Sum {
                seed: me * 1000 + j,
                mode,
                priority: (j % 3) as i8,
                hosts: hosts.clone(),
                ..Sum::default()
            };
            (Arc::new(job), 50 + 37 * j as usize)
        })
        .collect();
    let handles = jobs
        .iter()
        .map(|(job, count)| cluster.submit(job, *count))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err_string)?;
    let mut used = BTreeSet::new();
    let mut fragments = 0;
    for (h, (job, count)) in handles.into_iter().zip(&jobs) {
        let r = h.wait().map_err(err_string)?;
        check(r.is_complete(), || format!("job {}: {r:?}", job.seed))?;
        let (total, seen) = (
            job.total.load(Ordering::Relaxed),
            job.seen.load(Ordering::Relaxed),
        );
        check(seen == *count && total == job.expected(*count), || {
            format!(
                "job {}: {seen} of {count} results, sum {total:#x}, expected {:#x}",
                job.seed,
                job.expected(*count)
            )
        })?;
        used.extend(r.per_host.iter().map(|p| p.0));
        fragments += count;
    }
    check(used.len() == hosts.len(), || {
        format!("hosts used: {used:?}")
    })?;
    Ok(format!("{n} jobs, {fragments} fragments, correct sums"))
}

/// Priorities across jobs on the last host (one core): a low-priority job fills it, then jobs
/// of lower, higher and equal priority arrive.
pub(crate) fn priority(cluster: &Cluster, layout: Layout) -> Result<(), String> {
    let target = layout.len() as u32 - 1;
    let on_host_1 = |tag: &str, priority: i8| Probe {
        priority,
        hosts: vec![target],
        sleep_ms: 20,
        ..Probe::new(tag, SchedulingMode::UserDefined)
    };
    let fill = Arc::new(on_host_1("fill-5", 5));
    let fill_h = cluster.submit(&fill, 40).map_err(err_string)?;
    // Once a fragment is done, the target holds the job's other fragments in its queue.
    while fill_h.progress().0 == 0 && !fill_h.is_finished() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let low = Arc::new(on_host_1("low-9", 9));
    let high = Arc::new(on_host_1("high-1", 1));
    let same = Arc::new(on_host_1("same-5", 5));
    let low_h = cluster.submit(&low, 4).map_err(err_string)?;
    let high_h = cluster.submit(&high, 3).map_err(err_string)?;
    let same_h = cluster.submit(&same, 3).map_err(err_string)?;
    for h in [fill_h, low_h, high_h, same_h] {
        let r = h.wait().map_err(err_string)?;
        check(r.is_complete(), || format!("{r:?}"))?;
    }
    let starts = |job: &Probe| -> Result<Vec<u64>, String> {
        let recs = job.records();
        check(recs.iter().all(|r| r.host == target), || {
            format!("{recs:?}")
        })?;
        Ok(recs.iter().map(|r| r.start).collect())
    };
    let (fill, low, high, same) = (
        starts(&fill)?,
        starts(&low)?,
        starts(&high)?,
        starts(&same)?,
    );
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    let min = |v: &[u64]| v.iter().copied().min().unwrap_or(u64::MAX);
    println!(
        "start order on host {target}: fill-5 {fill:?} low-9 {low:?} high-1 {high:?} same-5 {same:?}"
    );
    check(fill.iter().any(|s| *s > max(&high)), || {
        "high-1 did not overtake the waiting fill-5 fragments".into()
    })?;
    check(max(&high) < min(&same) && max(&high) < min(&low), || {
        "high-1 must start before same-5 and low-9".into()
    })?;
    check(max(&fill) < min(&same), || {
        "equal priority: the earlier job (fill-5) runs first".into()
    })?;
    check(max(&same) < min(&low), || {
        "low-9 was submitted before same-5 but must run after it".into()
    })?;
    Ok(())
}

/// Three initiators × 20 jobs at once: the primary's part (hosts 1 and 2, where the cluster
/// has them, submit theirs with [`many_jobs`] and leave a verdict).
pub(crate) fn concurrent(cluster: &Cluster, layout: Layout) -> Result<(), String> {
    let mine = many_jobs(cluster, 20)?;
    println!("host-0: {mine}");
    let others: Vec<u32> = all_hosts(layout)
        .into_iter()
        .filter(|h| [1, 2].contains(h))
        .collect();
    await_verdicts(cluster, &others)
}

/// CLUSTER mode with streamed results: every remote fragment's chunks arrive exactly once, in
/// (fragment, seq) order, `flushes + 1` chunks each, with their bytes intact; the work spreads
/// over the remote hosts; each host that ran fragments deserialized exactly one replica and the
/// initiator none.
pub(crate) fn cluster_chunks(cluster: &Cluster, layout: Layout) -> Result<(), String> {
    let me = cluster.host_id().0;
    check(cluster.is_primary(), || "host 0 is the primary".into())?;
    let hosts: Vec<u32> = cluster.hosts().iter().map(|h| h.0).collect();
    check(hosts == all_hosts(layout), || {
        format!("hosts up: {hosts:?}")
    })?;
    let job = Arc::new(Probe {
        flushes: 2,
        sleep_ms: 0,
        ..Probe::new("chunks", SchedulingMode::Cluster)
    });
    let n = 2000;
    let report = cluster.execute(&job, n).map_err(err_string)?;
    check(report.is_complete(), || format!("chunks: {report:?}"))?;
    let records = job.records();
    check(records.len() == n, || {
        format!("{} records of {n} fragments", records.len())
    })?;
    let local = records.iter().filter(|r| r.host == me).count();
    let remote_frags = n - local;
    check(report.done_on(HostId(me)) == local, || {
        format!(
            "done on the initiator {} != {local}",
            report.done_on(HostId(me))
        )
    })?;
    let arrivals = job.arrivals();
    check(arrivals.len() == remote_frags * 3, || {
        format!(
            "{} chunks of {remote_frags} remote fragments",
            arrivals.len()
        )
    })?;
    let mut sorted = arrivals.clone();
    sorted.sort_unstable();
    sorted.dedup();
    check(arrivals == sorted, || {
        "chunks not in ascending (fragment, seq) order, or duplicated".into()
    })?;
    for (f, seq, bytes) in job.chunks() {
        check(
            bytes == (f as u64 * 1000 + u64::from(seq)).to_le_bytes(),
            || format!("chunk {seq} of fragment {f}: {bytes:?}"),
        )?;
    }
    check(
        records.iter().all(|r| (r.host as usize) < layout.len()),
        || "a record names no host of the cluster".into(),
    )?;
    let remote_hosts = report
        .per_host
        .iter()
        .filter(|(h, n)| h.0 != me && *n > 0)
        .count();
    let want = 2.min(layout.len() - 1);
    check(remote_hosts >= want, || {
        format!(
            "work spread over {remote_hosts} remote hosts: {:?}",
            report.per_host
        )
    })?;
    for (h, l) in &ledgers(cluster, &all_hosts(layout), false)? {
        let ran = l.ran("chunks");
        check(ran.len() == report.done_on(HostId(*h)), || {
            format!(
                "host {h} ran {} fragments, report says {}",
                ran.len(),
                report.done_on(HostId(*h))
            )
        })?;
        let replicas = l.replicas.get("chunks").copied().unwrap_or(0);
        let want = usize::from(*h != me && !ran.is_empty());
        check(replicas == want, || {
            format!("host {h} made {replicas} replicas of chunks, expected {want}")
        })?;
    }
    Ok(())
}

/// A fragment that panics (wherever it runs) fails alone, with its message; the others' results
/// all arrive, unordered.
pub(crate) fn panic(cluster: &Cluster, _: Layout) -> Result<(), String> {
    let n = 2000;
    let job = Arc::new(Probe {
        sleep_ms: 0,
        unordered: true,
        panic_on: Some(1999),
        ..Probe::new("panic", SchedulingMode::Cluster)
    });
    let report = cluster.execute(&job, n).map_err(err_string)?;
    check(report.failed().to_vec() == [1999], || {
        format!("failed: {:?}", report.failed())
    })?;
    check(report.done().len() == n - 1, || {
        format!("panic: {report:?}")
    })?;
    check(report.failures.len() == 1, || {
        format!("failures: {:?}", report.failures)
    })?;
    check(report.failures[0].index == 1999, || {
        format!("failures: {:?}", report.failures)
    })?;
    check(
        report.failures[0].reason == FailureReason::Panicked("boom 1999".into()),
        || format!("failure reason: {:?}", report.failures[0].reason),
    )?;
    let records = job.records();
    check(records.len() == n - 1, || {
        format!("{} results of {} done fragments", records.len(), n - 1)
    })?;
    check(records.iter().all(|r| r.index != 1999), || {
        "the panicked fragment delivered a result".into()
    })?;
    Ok(())
}

/// Cancelling a running job: fragments not started never run, `cancel()` is called once on
/// the initiator's job, a running fragment sees the cancellation, and every fragment is either
/// done or cancelled.
pub(crate) fn cancel(cluster: &Cluster, layout: Layout) -> Result<(), String> {
    let n = 400;
    let job = Arc::new(Probe {
        sleep_ms: 20,
        ..Probe::new("cancel", SchedulingMode::Cluster)
    });
    let handle = cluster.submit(&job, n).map_err(err_string)?;
    while handle.progress().0 < 4 {
        std::thread::sleep(Duration::from_millis(2));
    }
    handle.cancel();
    handle.cancel(); // idempotent
    let report = handle.wait().map_err(err_string)?;
    check(job.cancel_calls.load(Ordering::SeqCst) == 1, || {
        format!(
            "cancel() called {} times",
            job.cancel_calls.load(Ordering::SeqCst)
        )
    })?;
    check(report.cancelled().len() > 300, || {
        format!("{} cancelled", report.cancelled().len())
    })?;
    check(report.done().len() + report.cancelled().len() == n, || {
        format!("cancel: {report:?}")
    })?;
    // A fragment is in its host's ledger from the moment it starts, so one still finishing
    // when the report came is counted: every fragment that ran at all is reported done.
    let all = ledgers(cluster, &all_hosts(layout), false)?;
    let saw: u64 = all.values().map(|l| l.peak("saw-cancel:cancel")).sum();
    check(saw > 0, || "no running fragment saw is_cancelled()".into())?;
    let ran: usize = all.values().map(|l| l.ran("cancel").len()).sum();
    check(ran == report.done().len(), || {
        format!(
            "{ran} fragments ran, {} done: cancelled fragments never run",
            report.done().len()
        )
    })?;
    Ok(())
}

/// Chunk sizes of every [`Sizes`] fragment: batched small chunks, chunks sent whole in one
/// frame, and one above the largest frame part (sent in several parts).
pub(crate) const CHUNK_SIZES: [usize; 6] = [10, 70_000, 3, 1 << 20, (16 << 20) + 5, 64 << 10];

/// USER_DEFINED fragments on the other hosts return chunks of [`CHUNK_SIZES`]: they arrive in
/// (fragment, chunk) order, each chunk whole, then each fragment's final empty chunk.
pub(crate) fn chunk_sizes(cluster: &Cluster, layout: Layout) -> Result<(), String> {
    let remote: Vec<u32> = all_hosts(layout).into_iter().skip(1).collect();
    let job = Arc::new(Sizes {
        sizes: CHUNK_SIZES.to_vec(),
        hosts: remote,
        ..Sizes::default()
    });
    let report = cluster.execute(&job, 4).map_err(err_string)?;
    check(report.is_complete(), || format!("sizes: {report:?}"))?;
    let got = job.got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut expected = Vec::new();
    for index in 0..4 {
        for (seq, &len) in CHUNK_SIZES.iter().enumerate() {
            expected.push((index, seq as u32, len, true));
        }
        expected.push((index, CHUNK_SIZES.len() as u32, 0, true));
    }
    check(got == expected, || {
        format!("chunks (fragment, seq, length, intact): {got:?}, expected {expected:?}")
    })
}

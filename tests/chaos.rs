//! Host failures with real processes on loopback: random SIGKILLs during CLUSTER jobs, failure
//! detection times (short test settings and the defaults), retired host ids, the death of an
//! initiator (its jobs abandoned, replicas and their memory freed), and no call blocking
//! forever (USER_DEFINED and ONCE_PER_HOST hosts dying, every other host dying, too few hosts).
//!
//! A custom harness (no libtest): `main` is either the scenario runner or, with
//! `FRAGMENTA_TEST_HOST` set, a host program driven over stdin/stdout (see `procs`).
//!
//! `FRAGMENTA_CHAOS_SEED` replays the random choices of a run (victims and kill moments);
//! `FRAGMENTA_CHAOS_JOBS` changes the number of chaos jobs (default 30).

mod common;
mod procs;

use fragmenta::{Cluster, ClusterConfig, HostId, JoinError};
use procs::{ms_since, unix_micros, Outcome, Procs, Rng};
use std::time::{Duration, Instant, SystemTime};

/// A guard against hangs (a test failure), never a performance assertion.
const LIMIT: Duration = Duration::from_secs(90);

/// Settings of the test clusters: short enough for 30 jobs in a row, long enough that a
/// loaded 2-core machine does not suspect live hosts.
const FAST: &str =
    "min_hosts = 4\nheartbeat_interval_ms = 100\nfailure_timeout_ms = 1000\nmin_hosts_timeout_ms = 60000";

fn with_log(p: &Procs, r: Result<Outcome, String>) -> Result<Outcome, String> {
    r.map_err(|e| format!("{e}\n--- host output ---\n{}\n---", p.log()))
}

fn start(n_ids: usize, settings: &str, up: u32) -> Result<(tempfile::TempDir, Procs), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = procs::write_config(dir.path(), &procs::loopback_addrs(n_ids), settings)?;
    let mut p = Procs::new(config);
    for id in 0..up {
        p.spawn(id, &[])?;
    }
    for id in 0..up {
        p.expect(id, "joined ", LIMIT)?;
    }
    Ok((dir, p))
}

fn stats(label: &str, v: &[f64]) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return;
    }
    println!(
        "    {label}: n={} min={:.0} ms median={:.0} ms max={:.0} ms",
        s.len(),
        s[0],
        s[s.len() / 2],
        s[s.len() - 1]
    );
}

/// Fails if host 0 declared a host down that nobody killed.
fn no_false_suspicion(p: &mut Procs) -> Result<(), String> {
    let wrong: Vec<String> = p
        .seen("down ")
        .into_iter()
        .filter(|l| l.host == 0)
        .map(|l| l.text)
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("host 0 declared live hosts down: {wrong:?}"))
    }
}

/// Issue #5 item 7: 4 hosts; CLUSTER jobs from host 0, each with a random other host SIGKILLed
/// at a random point of the job and a fresh host (new id) started before the next one. Every
/// job completes with every chunk exactly once (checked by host 0, see `procs::verify_chaos`).
fn random_kills_during_cluster_jobs() -> Result<Outcome, String> {
    let jobs: u32 = std::env::var("FRAGMENTA_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("FRAGMENTA_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| unix_micros(SystemTime::now()));
    println!("    seed {seed} (FRAGMENTA_CHAOS_SEED={seed} replays the choices), {jobs} jobs");
    let mut rng = Rng(seed);
    let (_dir, mut p) = start(4 + jobs as usize, FAST, 4)?;
    let r = chaos_body(&mut p, &mut rng, jobs);
    with_log(&p, r)
}

fn chaos_body(p: &mut Procs, rng: &mut Rng, jobs: u32) -> Result<Outcome, String> {
    let (count, sleep_ms) = (240, 12);
    let mut live: Vec<u32> = vec![1, 2, 3];
    let (mut detect, mut elapsed) = (Vec::new(), Vec::new());
    let mut mid_job = 0;
    for k in 0..jobs {
        let victim = live[rng.below(live.len() as u64) as usize];
        let at = rng.below(900);
        p.send(0, &format!("chaos {k} {count} {sleep_ms} {at} {victim}"))?;
        p.expect(0, &format!("at {k} "), LIMIT)?;
        let killed = p.kill(victim)?;
        let done = p.expect(0, &format!("job {k} "), LIMIT)?;
        if !done.text.starts_with(&format!("job {k} ok")) {
            return Err(format!("job {k} (victim {victim}): {}", done.text));
        }
        let down = p.expect(0, &format!("down {victim} "), LIMIT)?;
        let ms = ms_since(killed, &down)?;
        detect.push(ms);
        let end: u64 = done
            .text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("end="))
            .and_then(|v| v.parse().ok())
            .ok_or(format!("no end time in {:?}", done.text))?;
        let during = unix_micros(killed) < end;
        mid_job += usize::from(during);
        let job_ms: f64 = done
            .text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("elapsed_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        elapsed.push(job_ms);
        let summary = done.text.split_whitespace().skip(5).collect::<Vec<_>>();
        println!(
            "    job {k:2}: killed host {victim:2} at {:3}% of fragments{}, detected in {ms:5.0} ms, job {job_ms:5.0} ms; {}",
            at / 10,
            if during { "" } else { " (after the job ended)" },
            summary.join(" ")
        );
        no_false_suspicion(p)?;
        live.retain(|h| *h != victim);
        // Ids are never reused: job k's replacement is host 4 + k.
        let fresh = 4 + k;
        p.spawn(fresh, &[])?;
        p.expect(fresh, "joined ", LIMIT)?;
        p.expect(0, &format!("up {fresh} "), LIMIT)?;
        live.push(fresh);
    }
    println!("    kills that landed while the job ran: {mid_job}/{jobs}");
    stats(
        "detection (SIGKILL -> initiator declares the host down; heartbeat 100 ms, timeout 1000 ms)",
        &detect,
    );
    stats("job time", &elapsed);
    Ok(Outcome::Passed)
}

/// Issue #5 item 1: with the default heartbeat interval and failure timeout, prints how long
/// host 0 takes to declare SIGKILLed hosts down (the defaults are meant to stay within 3 s:
/// at most the failure timeout plus half a heartbeat interval).
fn default_settings_detection_time() -> Result<Outcome, String> {
    let (_dir, mut p) = start(4, "min_hosts = 4\nmin_hosts_timeout_ms = 60000", 4)?;
    let r = (|| {
        let mut rng = Rng(unix_micros(SystemTime::now()));
        let mut killed = Vec::new();
        for victim in 1..4 {
            // Random phases relative to the heartbeats.
            std::thread::sleep(Duration::from_millis(rng.below(700)));
            killed.push((victim, p.kill(victim)?));
        }
        let mut times = Vec::new();
        for (victim, t) in killed {
            let down = p.expect(0, &format!("down {victim} "), LIMIT)?;
            let ms = ms_since(t, &down)?;
            println!("    host {victim}: declared down {ms:.0} ms after SIGKILL");
            times.push(ms);
        }
        stats(
            "detection with the defaults (heartbeat 500 ms, failure timeout 2500 ms)",
            &times,
        );
        Ok(Outcome::Passed)
    })();
    with_log(&p, r)
}

/// Issue #5 item 1: a process presenting the id of a host declared dead is refused with an
/// error saying so; a process with a new id joins.
fn dead_host_ids_are_refused() -> Result<Outcome, String> {
    let (_dir, mut p) = start(6, FAST, 4)?;
    let r = (|| {
        p.kill(3)?;
        for h in 0..3 {
            p.expect(h, "down 3 ", LIMIT)?;
        }
        p.spawn(3, &[])?;
        let line = p.expect(3, "join", LIMIT)?;
        let code = p.wait_exit(3, LIMIT)?;
        println!(
            "    restarted host 3: {:?} (exit status {code:?})",
            line.text
        );
        if !line.text.starts_with("join-error")
            || !line.text.contains("3 was declared dead")
            || !line.text.contains("never reused")
            || code != Some(3)
        {
            return Err(format!("expected a refusal, got {:?}", line.text));
        }
        // A fresh id joins and is counted.
        p.spawn(4, &[])?;
        p.expect(4, "joined ", LIMIT)?;
        p.expect(0, "up 4 ", LIMIT)?;
        p.send(0, "hosts")?;
        let hosts = p.expect(0, "hosts ", LIMIT)?;
        if hosts.text != "hosts 0,1,2,4" {
            return Err(format!("host 0 sees {:?}", hosts.text));
        }
        Ok(Outcome::Passed)
    })();
    with_log(&p, r)
}

fn rss_of(p: &mut Procs, h: u32) -> Result<u64, String> {
    p.send(h, "rss")?;
    let l = p.expect(h, "rss ", LIMIT)?;
    l.text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("bad rss line {:?}", l.text))
}

/// Issue #5 item 4: the initiator (host 0) dies while its fragments run on hosts 1–3. Each of
/// them sees `is_cancelled()` in its running fragments, calls `cancel()` on its replica, drops
/// it (the replica's `Drop` prints) and gets its memory back (resident size); then they serve
/// a new initiator's job. Also: after a job that finishes normally, replicas are dropped.
fn initiator_death_frees_replicas() -> Result<Outcome, String> {
    let (_dir, mut p) = start(6, FAST, 4)?;
    let r = (|| {
        let mib = 96u64;
        // A finished job releases its replicas.
        p.send(0, &format!("hog {mib} 24 once"))?;
        let done = p.expect(0, "hog ", LIMIT)?;
        if !done.text.starts_with("hog done") {
            return Err(done.text);
        }
        for h in 1..4 {
            p.expect(h, "hog-once replica dropped", LIMIT)
                .map_err(|e| format!("after a finished job: {e}"))?;
        }
        let base: Vec<u64> = (1..4)
            .map(|h| rss_of(&mut p, h))
            .collect::<Result<_, _>>()?;
        p.send(0, &format!("hog {mib} 64 forever"))?;
        p.expect(0, "hog submitted", LIMIT)?;
        for h in 1..4 {
            p.expect(h, "hog running", LIMIT)?;
        }
        let during: Vec<u64> = (1..4)
            .map(|h| rss_of(&mut p, h))
            .collect::<Result<_, _>>()?;
        for (i, h) in (1..4).enumerate() {
            if during[i] < base[i] + mib * 1024 * 9 / 10 {
                return Err(format!(
                    "host {h}: the replica's buffer is not resident ({} -> {} KiB)",
                    base[i], during[i]
                ));
            }
        }
        let killed = p.kill(0)?;
        for h in 1..4 {
            let down = p.expect(h, "down 0 ", LIMIT)?;
            let ms = ms_since(killed, &down)?;
            p.expect(h, "hog cancel() called", LIMIT)?;
            p.expect(h, "hog fragment ", LIMIT)?;
            p.expect(h, "hog replica dropped", LIMIT)?;
            let serve = p.expect(h, "serve ", LIMIT)?;
            if !serve.text.contains("primary host host-0 was lost") {
                return Err(format!("host {h}: {:?}", serve.text));
            }
            println!("    host {h}: initiator declared down after {ms:.0} ms; fragments stopped, replica dropped");
        }
        for (i, h) in (1..4).enumerate() {
            let after = rss_of(&mut p, h)?;
            println!(
                "    host {h}: resident {} KiB before, {} KiB with the {mib} MiB replica, {} KiB after abandonment",
                base[i], during[i], after
            );
            if during[i].saturating_sub(after) < mib * 1024 * 3 / 4 {
                return Err(format!(
                    "host {h}: memory not returned ({} -> {after} KiB)",
                    during[i]
                ));
            }
        }
        // The survivors serve a new initiator (a fresh id).
        p.spawn(4, &[])?;
        p.expect(4, "joined ", LIMIT)?;
        p.send(4, "chaos 0 200 5 1000 -")?;
        let done = p.expect(4, "job 0 ", LIMIT)?;
        println!("    new initiator 4: {}", done.text);
        let used = done
            .text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("used="))
            .unwrap_or("");
        if !done.text.starts_with("job 0 ok")
            || !used.split(',').any(|h| ["1", "2", "3"].contains(&h))
        {
            return Err(format!(
                "the survivors did not serve host 4: {:?}",
                done.text
            ));
        }
        Ok(Outcome::Passed)
    })();
    with_log(&p, r)
}

/// Issue #5 item 5: no call blocks forever. A USER_DEFINED job and a ONCE_PER_HOST job whose
/// host is killed report that host's fragments failed with `HostFailed` (not re-run); a
/// CLUSTER job whose every other host is killed is finished by the initiator alone.
fn dead_hosts_never_block_execute() -> Result<Outcome, String> {
    let (_dir, mut p) = start(8, FAST, 4)?;
    let r = (|| {
        // USER_DEFINED over hosts 1-3, host 2 killed while it runs its fragments.
        p.send(0, "placed 0 ud 60 300 1,2,3 2")?;
        p.expect(2, "placed 0 running", LIMIT)?;
        p.kill(2)?;
        let l = p.expect(0, "placed 0 ", LIMIT)?;
        println!("    USER_DEFINED, host 2 killed: {}", l.text);
        if !l.text.starts_with("placed 0 ok") {
            return Err(l.text);
        }
        // ONCE_PER_HOST over the remote hosts left (1 and 3), host 3 killed.
        p.send(0, "placed 1 oph 0 2000 - 3")?;
        p.expect(3, "placed 1 running", LIMIT)?;
        p.kill(3)?;
        let l = p.expect(0, "placed 1 ", LIMIT)?;
        println!("    ONCE_PER_HOST, host 3 killed: {}", l.text);
        if !l.text.starts_with("placed 1 ok") {
            return Err(l.text);
        }
        // Two fresh hosts (together: with hosts 0 and 1 they make the 4 of min_hosts), then
        // every host but the initiator killed during a CLUSTER job.
        for h in [4, 5] {
            p.spawn(h, &[])?;
        }
        for h in [4, 5] {
            p.expect(h, "joined ", LIMIT)?;
            p.expect(0, &format!("up {h} "), LIMIT)?;
        }
        p.send(0, "chaos 1 240 12 300 1,4,5")?;
        p.expect(0, "at 1 ", LIMIT)?;
        for h in [1, 4, 5] {
            p.kill(h)?;
        }
        let done = p.expect(0, "job 1 ", LIMIT)?;
        println!("    CLUSTER, hosts 1, 4, 5 killed: {}", done.text);
        if !done.text.starts_with("job 1 ok") {
            return Err(done.text);
        }
        for h in [1, 4, 5] {
            p.expect(0, &format!("down {h} "), LIMIT)?;
        }
        p.send(0, "hosts")?;
        let hosts = p.expect(0, "hosts ", LIMIT)?;
        if hosts.text != "hosts 0" {
            return Err(format!("host 0 still sees {:?}", hosts.text));
        }
        // Alone now: a job still runs, here.
        p.send(0, "chaos 2 50 1 1000 -")?;
        let done = p.expect(0, "job 2 ", LIMIT)?;
        if !done.text.starts_with("job 2 ok") {
            return Err(done.text);
        }
        Ok(Outcome::Passed)
    })();
    with_log(&p, r)
}

/// Issue #5 item 5: joining waits for `min_hosts` at most `min_hosts_timeout`, then fails with
/// an error naming the hosts that never came.
fn min_hosts_timeout_names_missing_hosts() -> Result<Outcome, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = procs::write_config(
        dir.path(),
        &procs::loopback_addrs(3),
        // Long enough that two hosts started together link up on a loaded machine: the case
        // is about the host that never comes, not about a slow link between the others.
        "min_hosts = 3\nmin_hosts_timeout_ms = 5000",
    )?;
    let config = ClusterConfig::load(&path).map_err(|e| e.to_string())?;
    let join = |host: u32| {
        let config = config.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = Cluster::builder().join_config(config, HostId(host));
            (r, start.elapsed())
        })
    };
    // Alone: hosts 1 and 2 are missing. Hosts 0 and 1 together: host 2 is missing.
    for (up, missing) in [(vec![0], vec![1, 2]), (vec![0, 1], vec![2])] {
        let handles: Vec<_> = up.iter().map(|h| join(*h)).collect();
        for (h, handle) in up.iter().zip(handles) {
            let (r, took) = handle
                .join()
                .map_err(|_| "join thread panicked".to_string())?;
            match r {
                Err(e @ JoinError::MinHosts { .. }) => {
                    let JoinError::MinHosts { missing: got, .. } = &e else {
                        unreachable!()
                    };
                    let want: Vec<HostId> = missing.iter().map(|m| HostId(*m)).collect();
                    println!("    host {h} gave up after {took:.1?}: {e}");
                    if *got != want {
                        return Err(format!("host {h}: missing {got:?}, expected {want:?}"));
                    }
                }
                Err(e) => return Err(format!("host {h}: unexpected error {e}")),
                Ok(_) => return Err(format!("host {h} joined without enough hosts")),
            }
        }
    }
    Ok(Outcome::Passed)
}

fn main() {
    if procs::is_host() {
        procs::host_main();
    }
    procs::run_scenarios(
        "chaos",
        &[
            (
                "min_hosts_timeout_names_missing_hosts",
                min_hosts_timeout_names_missing_hosts,
            ),
            ("dead_host_ids_are_refused", dead_host_ids_are_refused),
            (
                "default_settings_detection_time",
                default_settings_detection_time,
            ),
            (
                "initiator_death_frees_replicas",
                initiator_death_frees_replicas,
            ),
            (
                "dead_hosts_never_block_execute",
                dead_hosts_never_block_execute,
            ),
            (
                "random_kills_during_cluster_jobs",
                random_kills_during_cluster_jobs,
            ),
        ],
    );
}

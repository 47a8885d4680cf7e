//! Process mode with real operator processes: this test binary is the driver and, re-executed
//! by it with the operator environment set, each operator process (`harness = false`).

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fragmenta_fastio::{ElementType, FastIo, LocalContext};
use fragmenta_pipeline::passthrough::{self, NPZ_FILE, PASSTHROUGH_YAML, VERDICT_FILE};
use fragmenta_pipeline::process::{operator_main, run_processes};
use fragmenta_pipeline::{
    stream_dir, ExecuteContext, Operator, OperatorRegistry, OperatorResult, OperatorState,
    PipelineDef, PortSpec, Ports, RunOptions,
};

/// Where the test operators log (`<dir>/<operator>`: start and end in ns since the epoch, and
/// the pid), inherited by operator processes.
const LOG_ENV: &str = "PIPELINE_TEST_LOG";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A test operator: sleeps, optionally fails, logs its execution; output `v` (uint8), input
/// `v` when it reads one.
struct Step {
    sleep_ms: u64,
    reads: bool,
    fail: bool,
}

impl Operator for Step {
    fn ports(&self) -> Ports {
        let p = Ports::new().output(PortSpec::array("v", ElementType::U8, &[1]));
        if self.reads {
            p.input(PortSpec::array("v", ElementType::U8, &[1]))
        } else {
            p
        }
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let log = PathBuf::from(std::env::var_os(LOG_ENV).ok_or("no log dir")?);
        let start = now_ns();
        std::fs::write(
            log.join(format!("{}.pid", ctx.operator())),
            std::process::id().to_string(),
        )?;
        if self.reads {
            assert_eq!(ctx.input("v")?.read()?.as_slice::<u8>()?, &[7]);
        }
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        if self.fail {
            return Err("boom in an operator process".into());
        }
        ctx.output("v")?.write()?.as_mut_slice::<u8>()?[0] = 7;
        let line = format!("{start} {} {}", now_ns(), std::process::id());
        std::fs::write(log.join(ctx.operator()), line)?;
        Ok(())
    }
}

fn registry() -> OperatorRegistry {
    let step = |sleep_ms, reads, fail| {
        move || Step {
            sleep_ms,
            reads,
            fail,
        }
    };
    passthrough::registry()
        .register("slow-a", step(300, false, false))
        .register("slow-b", step(300, false, false))
        .register("after", step(0, true, false))
        .register("victim", step(60_000, false, false))
        .register("victim-child", step(0, true, false))
        .register("bystander", step(0, false, false))
        .register("failing", step(0, false, true))
        .register("stuck", step(60_000, false, false))
}

fn op(name: &str, from: Option<&str>) -> String {
    let input = match from {
        Some(f) => format!("  input:\n  - from: {f}\n    name: v\n    type: uint8\n"),
        None => String::new(),
    };
    format!("- name: {name}\n{input}  output:\n  - name: v\n    type: uint8\n")
}

fn yaml(ops: &[(&str, Option<&str>)]) -> PipelineDef {
    let mut text = "api-version: 0.5.0\nname: processes\noperators:\n".to_owned();
    for (n, f) in ops {
        text.push_str(&op(n, *f));
    }
    PipelineDef::parse(&text).unwrap()
}

fn me() -> Vec<OsString> {
    vec![std::env::current_exe().unwrap().into_os_string()]
}

struct Run {
    dir: tempfile::TempDir,
    ctx: LocalContext,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        // Operator processes inherit the variable; scenarios run one at a time.
        std::env::set_var(LOG_ENV, dir.path().join("log"));
        Run {
            dir,
            ctx: LocalContext::new(256 << 20),
        }
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }
    fn times(&self, op: &str) -> (u128, u128, u32) {
        let text = std::fs::read_to_string(self.log().join(op)).unwrap();
        let v: Vec<&str> = text.split(' ').collect();
        (
            v[0].parse().unwrap(),
            v[1].parse().unwrap(),
            v[2].parse().unwrap(),
        )
    }
}

fn passthrough_in_processes() {
    let run = Run::new();
    let (payload, dims) = support::payload(run.dir.path());
    let def = PipelineDef::parse(PASSTHROUGH_YAML).unwrap();
    let out = run.dir.path().join("out");
    let report = run_processes(&def, &run.ctx, &me(), &RunOptions::new(&payload, &out)).unwrap();
    assert!(report.succeeded(), "{report}");
    support::assert_npz_matches(
        &stream_dir(&out, "fastio-to-npz", "numpy_npz").join(NPZ_FILE),
        &payload,
        dims,
    );
    let verdict = stream_dir(&out, "compare-original-to-output", "truth-val").join(VERDICT_FILE);
    assert_eq!(std::fs::read_to_string(verdict).unwrap(), "true");
    support::assert_empty(run.ctx.stats().unwrap());
}

fn ordering_in_processes() {
    let run = Run::new();
    let def = yaml(&[
        ("slow-a", None),
        ("slow-b", None),
        ("after", Some("slow-a")),
    ]);
    let report = run_processes(
        &def,
        &run.ctx,
        &me(),
        &RunOptions::new(run.dir.path(), run.dir.path()),
    )
    .unwrap();
    assert!(report.succeeded(), "{report}");
    let (a0, a1, apid) = run.times("slow-a");
    let (b0, b1, bpid) = run.times("slow-b");
    let (c0, _, cpid) = run.times("after");
    assert!(c0 >= a1, "the consumer started before its producer ended");
    assert!(a0 < b1 && b0 < a1, "independent roots did not overlap");
    let pids = [apid, bpid, cpid, std::process::id()];
    assert!(
        pids.iter().enumerate().all(|(i, p)| !pids[..i].contains(p)),
        "not one process per operator: {pids:?}"
    );
    support::assert_empty(run.ctx.stats().unwrap());
}

fn wait_for(path: &Path, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(t0.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn a_sigkilled_operator_is_faulted_and_its_dependents_skipped() {
    let run = Run::new();
    let def = yaml(&[
        ("victim", None),
        ("victim-child", Some("victim")),
        ("bystander", None),
    ]);
    let pid_file = run.log().join("victim.pid");
    let killer = std::thread::spawn(move || {
        let pid: i32 = wait_for(&pid_file, Duration::from_secs(30))
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill(2) on the pid our own operator process wrote.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        Instant::now()
    });
    let report = run_processes(
        &def,
        &run.ctx,
        &me(),
        &RunOptions::new(run.dir.path(), run.dir.path()),
    )
    .unwrap();
    let killed_at = killer.join().unwrap();
    // Bounded: the driver saw the death at once, not after the operator's 60 s sleep or a
    // timeout (10 min by default).
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "the run did not end soon after the kill"
    );
    let r = |n: &str| report.operator(n).unwrap().clone();
    assert_eq!(r("victim").state, OperatorState::Faulted);
    assert_eq!(
        r("victim").messages,
        vec!["operator process killed by signal 9"]
    );
    assert_eq!(r("victim-child").state, OperatorState::Skipped);
    assert_eq!(
        r("victim-child").messages,
        vec!["skipped: upstream operator `victim` faulted"]
    );
    assert_eq!(r("bystander").state, OperatorState::Completed);
    // The victim's pre-allocated output died with its connection; the bystander's was freed.
    support::assert_empty(run.ctx.stats().unwrap());
}

fn a_failing_or_stuck_operator_process_is_faulted() {
    let run = Run::new();
    let def = yaml(&[
        ("failing", None),
        ("after", Some("failing")),
        ("stuck", None),
    ]);
    let opts = RunOptions::new(run.dir.path(), run.dir.path())
        .operator_timeout(Duration::from_millis(800));
    let report = run_processes(&def, &run.ctx, &me(), &opts).unwrap();
    let r = |n: &str| report.operator(n).unwrap().clone();
    assert_eq!(r("failing").state, OperatorState::Faulted);
    assert_eq!(r("failing").messages, vec!["boom in an operator process"]);
    assert_eq!(r("after").state, OperatorState::Skipped);
    assert_eq!(r("stuck").state, OperatorState::Faulted);
    assert_eq!(
        r("stuck").messages,
        vec!["timed out after 800ms (operator timeout)"]
    );
    let pid: i32 = std::fs::read_to_string(run.log().join("stuck.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks whether the (killed and reaped) process still exists.
    assert_ne!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the stuck operator process is still alive"
    );
    support::assert_empty(run.ctx.stats().unwrap());
}

fn main() {
    if let Some(code) = operator_main(&registry()) {
        std::process::exit(code);
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let tests: [(&str, fn()); 4] = [
        ("passthrough_in_processes", passthrough_in_processes),
        ("ordering_in_processes", ordering_in_processes),
        (
            "a_sigkilled_operator_is_faulted_and_its_dependents_skipped",
            a_sigkilled_operator_is_faulted_and_its_dependents_skipped,
        ),
        (
            "a_failing_or_stuck_operator_process_is_faulted",
            a_failing_or_stuck_operator_process_is_faulted,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let t0 = Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2} s)", t0.elapsed().as_secs_f64());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}

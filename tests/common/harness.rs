//! The harness of the test binaries that start real host processes (`harness = false`): the
//! same binary is the test runner and, re-executed with an environment variable set, a host.

use std::time::Instant;

/// How a scenario ended, when it did not fail.
pub(crate) enum Outcome {
    /// It ran and its checks held.
    Passed,
    /// It could not run here; why.
    Skipped(String),
}

/// A named scenario.
pub(crate) type Scenario = (&'static str, fn() -> Result<Outcome, String>);

/// Sends this process's warnings (links lost, refused connections) to stderr, where a failing
/// scenario shows them; `RUST_LOG` overrides the level.
pub(crate) fn init_stderr_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// In a host process (environment variable `var` set, by [`super::launch_self`]): runs
/// `host` with the variable's value and exits with status 0, or 1 after printing its error.
/// Returns at once in the test runner.
pub(crate) fn run_host_if_child(var: &str, host: fn(&str) -> Result<(), String>) {
    let Ok(scenario) = std::env::var(var) else {
        return;
    };
    init_stderr_logs();
    match host(&scenario) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("host failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs the scenarios selected by the command line (a name filter; `--list` lists them) and
/// exits with status 1 if any failed. Skips are reported as such, never as passes.
pub(crate) fn run_scenarios(binary: &str, scenarios: &[Scenario]) -> ! {
    let names: Vec<&'static str> = scenarios.iter().map(|s| s.0).collect();
    run_named(binary, &names, |name| {
        match scenarios.iter().find(|s| s.0 == name) {
            Some((_, run)) => run(),
            None => Err(format!("no scenario {name}")),
        }
    })
}

/// [`run_scenarios`] with one function for every name.
pub(crate) fn run_named(
    binary: &str,
    names: &[&'static str],
    run: impl Fn(&'static str) -> Result<Outcome, String>,
) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for name in names {
            println!("{binary}::{name}: test");
        }
        std::process::exit(0);
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for &name in names {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        println!("test {binary}::{name} ... running");
        let result = run(name);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(Outcome::Passed) => {
                println!("test {binary}::{name} ... ok ({secs:.1} s)");
                passed += 1;
            }
            Ok(Outcome::Skipped(why)) => {
                println!("test {binary}::{name} ... SKIPPED ({why})");
                skipped += 1;
            }
            Err(e) => {
                println!("test {binary}::{name} ... FAILED ({secs:.1} s): {e}");
                failed += 1;
            }
        }
    }
    // The summary line `.ci/run` adds up; skips on a line of their own.
    println!("\n{passed} passed, {failed} failed");
    if skipped > 0 {
        println!("{binary}: {skipped} skipped");
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// The result of a scenario run as `fragmenta launch` host processes: the launcher's status
/// must be 0 and `check` must accept its output; on failure the error carries the output.
pub(crate) fn launched(
    (status, out): (i32, String),
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Outcome, String> {
    let result = if status != 0 {
        Err(format!("exit status {status}"))
    } else {
        check(&out)
    };
    match result {
        Ok(()) => {
            if std::env::var_os("FRAGMENTA_TEST_SHOW_OUTPUT").is_some() {
                println!("--- output ---\n{out}---");
            }
            Ok(Outcome::Passed)
        }
        Err(e) => Err(format!("{e}\n--- output ---\n{out}\n---")),
    }
}

//! Shared test helpers: clusters of real nodes on loopback.
#![allow(dead_code)]

pub(crate) mod harness;

use fragmenta::ClusterConfig;
use fragmenta_testkit::loopback;
use std::path::Path;

#[allow(unused_imports)] // not every test binary that includes this module uses it
pub(crate) use fragmenta_testkit::loopback::free_ports;

/// Writes certificates and a config for `n` hosts (ids 0..n, 2 cores each, `extra_host` lines
/// added) into `dir`, with the fast liveness settings of tests.
pub(crate) fn loopback_config(dir: &Path, n: usize, extra_host: &str) -> ClusterConfig {
    let lines = loopback::hosts(n, &format!("cores = 2\n{extra_host}"));
    loopback::config(dir, "test", loopback::FAST_LIVENESS, &lines)
}

/// Runs this test binary as `n` host processes through `fragmenta launch -n N`, with the
/// environment variable `scenario.0` set to `scenario.1` in every host; returns the launcher's
/// exit status and its prefixed output (stdout then stderr).
pub(crate) fn launch_self(n: usize, scenario: (&str, &str)) -> (i32, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fragmenta"))
        .args(["launch", "-n", &n.to_string(), "--"])
        .arg(exe)
        .env(scenario.0, scenario.1)
        .output()
        .expect("run the launcher");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

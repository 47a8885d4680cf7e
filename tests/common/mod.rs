//! Shared test helpers: clusters of real nodes on loopback.
#![allow(dead_code)]

pub(crate) mod harness;

use fragmenta::{ClusterConfig, HostId};
use std::path::Path;

/// Free UDP ports on 127.0.0.1.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

/// Writes certificates and a config for `n` hosts (ids 0..n) into `dir`.
pub(crate) fn loopback_config(dir: &Path, n: usize, extra_host: &str) -> ClusterConfig {
    let ids: Vec<HostId> = (0..n as u32).map(HostId).collect();
    fragmenta_net::certs::generate(&dir.join("certs"), "test", &ids).expect("certs");
    let ports = free_ports(n);
    let mut toml = String::from(
        "[cluster]\nname = \"test\"\nca_cert = \"certs/ca.pem\"\nheartbeat_interval_ms = 200\nfailure_timeout_ms = 2000\nmin_hosts_timeout_ms = 20000\n",
    );
    for (i, port) in ports.iter().enumerate() {
        toml.push_str(&format!(
            "[[host]]\nid = {i}\naddress = \"127.0.0.1:{port}\"\ncores = 2\ncert = \"certs/host-{i}.pem\"\nkey = \"certs/host-{i}.key\"\n{extra_host}\n"
        ));
    }
    ClusterConfig::from_toml_str(&toml, dir).expect("config")
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

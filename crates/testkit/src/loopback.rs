//! Clusters on loopback for tests and benchmarks: free ports, certificates and a
//! configuration in a folder.
//!
//! ```
//! use fragmenta_testkit::loopback;
//!
//! let dir = std::env::temp_dir().join(format!("testkit-doc-{}", std::process::id()));
//! let config = loopback::config(&dir, "doc", loopback::FAST_LIVENESS, &loopback::hosts(3, "cores = 2"));
//! assert_eq!(config.hosts().len(), 3);
//! assert_eq!(config.hosts()[1].cores(), 2);
//! config.check_files().unwrap(); // the certificates exist
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use fragmenta_config::ClusterConfig;
use fragmenta_net::HostId;
use std::path::{Path, PathBuf};

/// `[cluster]` lines for tests: heartbeats every 200 ms, a host silent for 2 s is down, and
/// joining waits at most 20 s for the others.
pub const FAST_LIVENESS: &str =
    "heartbeat_interval_ms = 200\nfailure_timeout_ms = 2000\nmin_hosts_timeout_ms = 20000\n";

/// `n` free UDP ports on 127.0.0.1 (bound together, then released: they differ).
///
/// They are taken below the kernel's ephemeral range (`ip_local_port_range`), from a start
/// that differs per process and a counter shared by the process's threads: every socket that
/// binds port 0 (a QUIC client endpoint, another test's probe) gets its port from the
/// ephemeral range, so a port handed out here and released stays free until its host binds
/// it, even while other tests run. Where the range starts too low for that, ports come from
/// the kernel as before.
pub fn free_ports(n: usize) -> Vec<u16> {
    const LOW: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_start < LOW + 1_000 {
        return kernel_ports(n);
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = ephemeral_start - LOW;
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut sockets = Vec::with_capacity(n);
    let mut tries = 0u32;
    while sockets.len() < n {
        tries += 1;
        if tries > span {
            return kernel_ports(n);
        }
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = LOW + seed.wrapping_add(next) % span;
        if let Ok(s) = std::net::UdpSocket::bind(("127.0.0.1", port as u16)) {
            sockets.push(s);
        }
    }
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect()
}

/// `n` ports the kernel picks (port 0), bound together then released.
fn kernel_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect()
}

/// `n` free loopback addresses, `127.0.0.1:<port>`.
pub fn loopback_addrs(n: usize) -> Vec<String> {
    free_ports(n)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect()
}

/// The same extra `[[host]]` lines for `n` hosts.
pub fn hosts(n: usize, lines: &str) -> Vec<String> {
    vec![lines.to_owned(); n]
}

/// Writes certificates for hosts `0..addrs.len()` into `dir/certs` (cluster `name`) and
/// returns the configuration text: `cluster` are extra lines of the `[cluster]` table, host
/// `i` is at `addrs[i]` with the extra lines `host_lines[i]` (`cores = 2`, `gpus = 1`, …).
pub fn toml_at(
    dir: &Path,
    name: &str,
    cluster: &str,
    addrs: &[String],
    host_lines: &[String],
) -> String {
    assert_eq!(addrs.len(), host_lines.len(), "one address per host");
    let ids: Vec<HostId> = (0..addrs.len() as u32).map(HostId).collect();
    fragmenta_net::certs::generate(&dir.join("certs"), name, &ids).expect("certificates");
    let mut toml = format!("[cluster]\nname = \"{name}\"\nca_cert = \"certs/ca.pem\"\n{cluster}\n");
    for (i, (addr, lines)) in addrs.iter().zip(host_lines).enumerate() {
        toml.push_str(&format!(
            "[[host]]\nid = {i}\naddress = \"{addr}\"\ncert = \"certs/host-{i}.pem\"\n\
             key = \"certs/host-{i}.key\"\n{lines}\n"
        ));
    }
    toml
}

/// [`toml_at`] on free loopback ports, one host per entry of `host_lines`.
pub fn toml(dir: &Path, name: &str, cluster: &str, host_lines: &[String]) -> String {
    toml_at(
        dir,
        name,
        cluster,
        &loopback_addrs(host_lines.len()),
        host_lines,
    )
}

/// [`toml`], parsed (paths relative to `dir`).
pub fn config(dir: &Path, name: &str, cluster: &str, host_lines: &[String]) -> ClusterConfig {
    ClusterConfig::from_toml_str(&toml(dir, name, cluster, host_lines), dir)
        .expect("a valid loopback configuration")
}

/// [`toml`], written to `dir/cluster.toml`; returns the file's path.
pub fn write(dir: &Path, name: &str, cluster: &str, host_lines: &[String]) -> PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(&path, toml(dir, name, cluster, host_lines)).expect("write the configuration");
    path
}

//! The files under `cluster-configs/` load.

use std::path::PathBuf;

use fragmenta_config::ClusterConfig;
use fragmenta_job::HostId;

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../cluster-configs")
        .join(name)
}

#[test]
fn local_4_loads() {
    let c = ClusterConfig::load(shipped("local-4.toml")).expect("local-4.toml is valid");
    assert_eq!(c.name(), "local-4");
    assert_eq!(c.min_hosts(), 4);
    let addrs: Vec<&str> = c.hosts().iter().map(|h| h.address()).collect();
    assert_eq!(
        addrs,
        [
            "127.0.0.1:47100",
            "127.0.0.1:47101",
            "127.0.0.1:47102",
            "127.0.0.1:47103"
        ]
    );
    assert!(
        c.ca_cert().ends_with("cluster-configs/certs/ca.pem"),
        "{:?}",
        c.ca_cert()
    );
}

#[test]
fn multi_host_example_loads() {
    let c = ClusterConfig::load(shipped("multi-host.example.toml")).expect("example is valid");
    assert_eq!(c.hosts().len(), 3);
    let gpu_host = c.host(HostId(2)).expect("host 2");
    assert_eq!((gpu_host.sub_cluster(), gpu_host.gpus()), (1, 4));
    assert_eq!(c.max_frame_bytes(), Some(268_435_456));
}

/// The defaults the example's comments state are the ones a config without those keys gets.
#[test]
fn multi_host_example_states_the_real_defaults() {
    let text = std::fs::read_to_string(shipped("multi-host.example.toml")).expect("example");
    // The comment above each key says "default N".
    let stated = |key: &str| -> u64 {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} in the example"));
        let comment = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.split_once("default ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no stated default for {key}"));
        let digits: String = comment.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("a number")
    };
    let dir = tempfile::tempdir().expect("dir");
    let bare = ClusterConfig::from_toml_str(
        "[cluster]\nname = \"d\"\nca_cert = \"ca.pem\"\n[[host]]\nid = 0\naddress = \"127.0.0.1:1\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        dir.path(),
    )
    .expect("minimal config");
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    assert_eq!(stated("failure_timeout_ms"), ms(bare.failure_timeout()));
    assert_eq!(
        stated("heartbeat_interval_ms"),
        ms(bare.heartbeat_interval())
    );
    assert_eq!(stated("min_hosts_timeout_ms"), ms(bare.min_hosts_timeout()));
}

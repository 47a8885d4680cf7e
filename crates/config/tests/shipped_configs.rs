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

//! In-process clusters (`ClusterBuilder::in_process`, `fragmenta::testing`, a transport chosen
//! on the builder): every host a full runtime, linked over an in-process network with the
//! semantics of QUIC links (hosts know each other's ids, a closed link is a host gone).

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CLUSTER mode: counts the fragments each host ran (remote ones name their host).
#[derive(Serialize, Deserialize, Default)]
struct Where {
    #[serde(skip)]
    ran: Mutex<BTreeMap<u32, usize>>,
}

impl Where {
    fn saw(&self, host: u32) {
        *self.ran.lock().unwrap().entry(host).or_insert(0) += 1;
    }
    fn ran(&self) -> BTreeMap<u32, usize> {
        self.ran.lock().unwrap().clone()
    }
}

#[fragmenta::job]
impl FragmentedJob for Where {
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, ctx: &ExecutionContext) {
        std::thread::sleep(Duration::from_millis(1));
        self.saw(ctx.host().0);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(1));
        out.write_all(&ctx.host().0.to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        let host = r.bytes().try_into().map_or(u32::MAX, u32::from_le_bytes);
        self.saw(host);
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn ids(v: &[u32]) -> Vec<HostId> {
    v.iter().copied().map(HostId).collect()
}

/// `config` with a short wait for the minimum number of hosts.
fn quick_join(config: &ClusterConfig, wait_ms: i64) -> ClusterConfig {
    let mut file = config.to_config_file();
    file.cluster.min_hosts_timeout_ms = Some(wait_ms);
    ClusterConfig::from_config_file(file, ".").unwrap()
}

#[test]
fn every_host_is_a_full_runtime_and_any_host_initiates() {
    let hosts = testing::in_process(3).unwrap();
    for (i, c) in hosts.iter().enumerate() {
        assert_eq!(c.host_id(), HostId(i as u32));
        assert_eq!(c.is_primary(), i == 0);
        assert_eq!(c.hosts(), ids(&[0, 1, 2]));
    }
    // A non-primary initiator: its fragments spread over the hosts, results come back to it.
    let job = Arc::new(Where::default());
    let report = hosts[1].execute(&job, 300).unwrap();
    assert!(report.is_complete(), "{report:?}");
    let ran = job.ran();
    assert_eq!(ran.values().sum::<usize>(), 300, "{ran:?}");
    assert!(ran.keys().all(|h| *h < 3), "{ran:?}");
    assert!(ran.len() >= 2, "work spread over the hosts: {ran:?}");
    for (h, n) in &ran {
        assert_eq!(report.done_on(HostId(*h)), *n);
    }
    testing::shutdown_all(hosts);
}

#[test]
fn a_host_that_leaves_is_declared_down_and_jobs_go_on() {
    let mut hosts = testing::in_process(3).unwrap();
    let events = hosts[0].host_events();
    drop(hosts.pop()); // host 2
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = events
            .recv_timeout(left)
            .expect("host 2 declared down before the deadline");
        if e.host == HostId(2) && matches!(e.kind, HostEventKind::Down { .. }) {
            break;
        }
    }
    assert_eq!(hosts[0].hosts(), ids(&[0, 1]));
    let job = Arc::new(Where::default());
    let report = hosts[0].execute(&job, 200).unwrap();
    assert!(report.is_complete(), "{report:?}");
    let ran = job.ran();
    assert_eq!(ran.values().sum::<usize>(), 200);
    assert!(
        !ran.contains_key(&2),
        "nothing ran on the host that left: {ran:?}"
    );
    testing::shutdown_all(hosts);
}

#[test]
fn the_builder_transport_links_hosts_of_one_network_only() {
    let config = testing::config(2).unwrap();
    // One network: the two hosts find each other at the configuration's addresses.
    let network = MemNetwork::new();
    let joined: Vec<Cluster> = std::thread::scope(|s| {
        let joins: Vec<_> = [0, 1]
            .map(|h| {
                let (config, network) = (config.clone(), network.clone());
                s.spawn(move || {
                    Cluster::builder()
                        .transport(MemTransport::new(network))
                        .join_config(config, HostId(h))
                })
            })
            .into_iter()
            .collect();
        joins
            .into_iter()
            .map(|j| j.join().unwrap().unwrap())
            .collect()
    });
    assert_eq!(joined[1].hosts(), ids(&[0, 1]));
    let job = Arc::new(Where::default());
    assert!(joined[0].execute(&job, 50).unwrap().is_complete());
    testing::shutdown_all(joined);

    // Two networks: neither host reaches the other, and each names the one it missed.
    let config = quick_join(&config, 300);
    let results: Vec<Result<Cluster, JoinError>> = std::thread::scope(|s| {
        let joins: Vec<_> = [0, 1]
            .map(|h| {
                let config = config.clone();
                s.spawn(move || {
                    Cluster::builder()
                        .transport(MemTransport::new(MemNetwork::new()))
                        .join_config(config, HostId(h))
                })
            })
            .into_iter()
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (h, r) in results.into_iter().enumerate() {
        match r {
            Err(JoinError::MinHosts { min, missing, .. }) => {
                assert_eq!(min, 2);
                assert_eq!(missing, ids(&[1 - h as u32]));
            }
            other => panic!("host {h}: expected MinHosts, got {other:?}"),
        }
    }
}

#[test]
fn an_in_process_cluster_needs_a_host() {
    assert!(testing::config_of(&[]).is_err());
    assert!(matches!(testing::in_process(0), Err(JoinError::Config(_))));
}

/// A host that connects while another waits for `min_hosts`, then leaves before that host's
/// deadline (its own join needed fewer hosts, or gave up first), came: the waiting host's
/// error names as missing only the host that never connected. (Two hosts joined together
/// with the same timeout give up within moments of each other; the first to give up closes
/// its link, and the other must not report it as never having come.)
#[test]
fn a_join_that_times_out_does_not_name_a_host_that_came_and_left() {
    let config = testing::config(3).unwrap();
    let with = |min: i64, wait_ms: i64| {
        let mut file = config.to_config_file();
        file.cluster.min_hosts = Some(min);
        file.cluster.min_hosts_timeout_ms = Some(wait_ms);
        ClusterConfig::from_config_file(file, ".").unwrap()
    };
    // Host 1 waits for all three; host 2 needs only host 1, joins, and leaves at once. Host 0
    // never comes.
    let (waits, leaves) = (with(3, 3000), with(2, 3000));
    let network = MemNetwork::new();
    let (waited, left) = std::thread::scope(|s| {
        let net = network.clone();
        let waiter = s.spawn(move || {
            Cluster::builder()
                .transport(MemTransport::new(net))
                .join_config(waits, HostId(1))
        });
        let net = network.clone();
        let leaver = s.spawn(move || {
            let cluster = Cluster::builder()
                .transport(MemTransport::new(net))
                .join_config(leaves, HostId(2))?;
            let hosts = cluster.hosts();
            cluster.shutdown();
            Ok::<_, JoinError>(hosts)
        });
        (waiter.join().unwrap(), leaver.join().unwrap())
    });
    assert_eq!(left.unwrap(), ids(&[1, 2]), "host 2 joined with host 1");
    match waited {
        Err(JoinError::MinHosts { min, missing, .. }) => {
            assert_eq!(min, 3);
            assert_eq!(missing, ids(&[0]), "host 2 came; only host 0 never did");
        }
        other => panic!("host 1: expected MinHosts, got {other:?}"),
    }
}

/// Every fragment, on host 1, sends one 512 KiB chunk written in place.
#[derive(Serialize, Deserialize, Default)]
struct Large {
    #[serde(skip)]
    got: Mutex<Vec<(usize, bool)>>,
}

#[fragmenta::job]
impl FragmentedJob for Large {
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        i: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        let mut buf = out.chunk_buffer(512 << 10);
        buf.fill(i as u8);
        out.write_buffer(buf)
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, i: usize, _: usize) {
        if r.seq() == 0 {
            let right = r.len() == 512 << 10 && r.bytes().iter().all(|&b| b == i as u8);
            self.got.lock().unwrap().push((i, right));
        }
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        slots.fill(HostId(1));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
}

#[test]
fn same_machine_false_in_the_configuration_keeps_results_on_the_transport() {
    for shared in [true, false] {
        let mut file = testing::config(2).unwrap().to_config_file();
        file.cluster.same_machine = Some(shared);
        let config = ClusterConfig::from_config_file(file, ".").unwrap();
        assert_eq!(config.same_machine(), shared);
        let hosts = Cluster::builder().in_process(&config).unwrap();
        let job = Arc::new(Large::default());
        assert!(hosts[0].execute(&job, 6).unwrap().is_complete());
        let mut got = job.got.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, (0..6).map(|i| (i, true)).collect::<Vec<_>>());
        let stats = hosts[0].same_machine();
        if shared {
            assert_eq!(stats.peers, ids(&[1]), "{stats:?}");
            assert_eq!(stats.chunks_received, 6, "{stats:?}");
        } else {
            assert_eq!(
                stats,
                SameMachineStats::default(),
                "nothing shared: {stats:?}"
            );
        }
        testing::shutdown_all(hosts);
    }
}

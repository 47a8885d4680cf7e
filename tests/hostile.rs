//! Live QUIC hosts facing what a hostile or faulty peer or user does: stalled handshakes from a
//! client without a certificate, a host holding another host's certificate, and the end of a
//! cluster after a clean shutdown.

use fragmenta::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Certificates and a config for hosts 0..n on free loopback ports, waiting at most
/// `min_hosts_timeout_ms` for the others.
fn config(dir: &Path, n: usize, min_hosts_timeout_ms: u64) -> ClusterConfig {
    let cluster = format!(
        "heartbeat_interval_ms = 200\nfailure_timeout_ms = 2000\n\
         min_hosts_timeout_ms = {min_hosts_timeout_ms}\n"
    );
    let lines = fragmenta_testkit::loopback::hosts(n, "cores = 2");
    fragmenta_testkit::loopback::config(dir, "test", &cluster, &lines)
}

fn join(config: &ClusterConfig, host: u32) -> std::thread::JoinHandle<Result<Cluster, JoinError>> {
    let config = config.clone();
    std::thread::spawn(move || Cluster::builder().join_config(config, HostId(host)))
}

/// Whether a UDP socket is bound to `port` on this machine (from `/proc/net/udp`).
fn udp_port_bound(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let needle = format!(":{port:04X} ");
    table.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| format!("{local} ").ends_with(&needle))
    })
}

/// Keeps starting TLS handshakes with `server` that never complete, one every `every`, until
/// `stop` is set; returns how many it started. Each is the first packet of a real QUIC client
/// (nothing is checked before the handshake completes, so no certificate is needed), caught on
/// a relay socket and sent from a socket that then stays silent.
fn stall_handshakes(
    certs: std::path::PathBuf,
    server: SocketAddr,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    started: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let client = fragmenta_net::Endpoint::bind_quic(
                "127.0.0.1:0".parse().expect("address"),
                &fragmenta_net::TlsFiles::for_host(&certs, HostId(1)),
                &fragmenta_net::NetConfig::default(),
            )
            .expect("client endpoint");
            let mut silent = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && silent.len() < 1000 {
                let relay = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("relay");
                let to = relay.local_addr().expect("relay address");
                let c = client.clone();
                let attempt = tokio::spawn(async move { c.connect(to, HostId(0)).await });
                let mut packet = vec![0u8; 65536];
                let (n, _) =
                    tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut packet))
                        .await
                        .expect("the client sends its first packet")
                        .expect("receive");
                attempt.abort();
                let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("silent socket");
                s.send_to(&packet[..n], server).await.expect("send");
                silent.push(s);
                let _ = started.send(());
                tokio::time::sleep(every).await;
            }
            silent.len()
        })
    })
}

#[test]
fn a_host_joins_while_stalled_handshakes_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Host 1 gives up after 3 s: a serial accept loop would hold its join behind each stalled
    // handshake for the whole QUIC idle timeout (10 s).
    let config = config(dir.path(), 2, 3000);
    let primary_addr = config.hosts()[0].socket_addr().expect("address");
    let primary = join(&config, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !udp_port_bound(primary_addr.port()) {
        assert!(Instant::now() < deadline, "host 0 never bound its port");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A stalled handshake every 20 ms, from the join's own address, before and during it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, started) = std::sync::mpsc::channel();
    let flood = stall_handshakes(
        dir.path().join("certs"),
        primary_addr,
        Duration::from_millis(20),
        stop.clone(),
        tx,
    );
    for _ in 0..20 {
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("stalled handshakes go out");
    }
    let joining = Instant::now();
    let host1 = join(&config, 1).join().expect("join thread");
    let joined = joining.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let stalled = flood.join().expect("flood thread");
    let host1 = host1.expect("host 1 joins while handshakes to host 0 are stalled");
    println!("host 1 joined in {joined:?} among {stalled} stalled handshakes");
    let host0 = primary.join().expect("join thread").expect("host 0 joins");
    assert_eq!(host0.hosts(), [HostId(0), HostId(1)]);
    drop(host0);
    assert_eq!(host1.serve(), Ok(()));
}

#[test]
fn a_host_with_another_hosts_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 2, 20_000);
    let certs = dir.path().join("certs");
    for ext in ["pem", "key"] {
        std::fs::copy(
            certs.join(format!("host-0.{ext}")),
            certs.join(format!("host-1.{ext}")),
        )
        .expect("copy");
    }
    // Refused at once, naming the certificate, instead of both hosts waiting for each other.
    match Cluster::builder().join_config(config, HostId(1)) {
        Err(JoinError::Bind { reason, .. }) => {
            assert!(
                reason.contains("host-1.pem") && reason.contains("host-0's"),
                "{reason}"
            )
        }
        Err(other) => panic!("expected a bind error, got {other}"),
        Ok(_) => panic!("host 1 started with host 0's certificate"),
    }
}

#[test]
fn no_host_events_after_a_clean_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 2, 20_000);
    let (h0, h1) = (join(&config, 0), join(&config, 1));
    let host0 = h0.join().expect("join thread").expect("host 0 joins");
    let host1 = h1.join().expect("join thread").expect("host 1 joins");
    let events = host1.host_events();
    // The primary shuts the cluster down.
    drop(host0);
    assert_eq!(host1.serve(), Ok(()));
    let later = host1.host_events();
    // Longer than the failure timeout (2 s): the primary's link closing is no host going down.
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Some(e) => assert!(
                !matches!(e.kind, HostEventKind::Down { .. }),
                "after a clean shutdown: {e:?}"
            ),
            None => break,
        }
    }
    assert!(later.try_recv().is_none());
    assert!(events.recv_timeout(Duration::from_millis(10)).is_none());
}

//! Real nodes in one process over QUIC with mutual TLS on loopback: a malformed frame from a
//! peer with a valid certificate closes only its own connection. The mode scenarios (CLUSTER
//! order, replicas per host, streamed chunks of every size, panics) run on embedded,
//! in-process and multi-process clusters in `tests/modes.rs`.

mod common;

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// CLUSTER mode; remote fragments flush `flushes` chunks and then name their host.
#[derive(Serialize, Deserialize, Default)]
struct Gather {
    flushes: u32,
}

impl FragmentedJob for Gather {
    const CLASS_ID: ClassId = ClassId::from_name("test.cluster_quic.gather");
    fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        index: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        for k in 0..self.flushes {
            out.write_all(&(index as u64 * 1000 + k as u64).to_le_bytes())?;
            out.flush()?;
        }
        out.write_all(&ctx.host().0.to_le_bytes())
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

/// Joins hosts `0..n` of `config`, each on its own thread (joining waits for the others).
fn join_hosts(config: &ClusterConfig, n: u32) -> Vec<Cluster> {
    let handles: Vec<_> = (0..n)
        .map(|h| {
            let config = config.clone();
            std::thread::spawn(move || {
                Cluster::builder()
                    .register::<Gather>()
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A peer with a valid certificate that sends garbage closes its own connection only: the
/// hosts go on running jobs over their other connections.
#[test]
fn a_malformed_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    // Four hosts configured, three started; host 3's certificate is used by a rogue client.
    let config = common::loopback_config(dir.path(), 4, "");
    let text = config
        .to_toml_string()
        .replace("min_hosts = 4", "min_hosts = 3");
    assert!(text.contains("min_hosts = 3"));
    let config = ClusterConfig::from_toml_str(&text, dir.path()).unwrap();
    let addr0 = config.host(HostId(0)).unwrap().socket_addr().unwrap();
    let clusters = join_hosts(&config, 3);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let tls = fragmenta_net::TlsFiles::for_host(&dir.path().join("certs"), HostId(3));
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let ep =
            fragmenta_net::Endpoint::bind_quic(any, &tls, &fragmenta_net::NetConfig::default())
                .unwrap();
        let hello = fragmenta_wire::handshake::Hello::new("test", HostId(3));
        let conn = fragmenta_net::handshake::connect_handshake(&ep, addr0, HostId(0), hello)
            .await
            .unwrap();
        let mut s = conn.open_uni().await.unwrap();
        // A frame header claiming 4 GiB.
        s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        s.write_all(&[0u8; 8]).await.unwrap();
        let _ = s.finish();
        tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed()).await
    });
    assert!(closed.is_ok(), "host 0 closed the rogue connection");

    // The three real hosts still work together.
    let job = Arc::new(Gather { flushes: 1 });
    let report = clusters[0].execute(&job, 600).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(clusters[0].hosts(), vec![HostId(0), HostId(1), HostId(2)]);
}

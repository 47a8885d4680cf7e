//! Mutual TLS over real QUIC with CAs derived from a cluster secret: hosts of one cluster that
//! hold the same secret get in; a wrong secret, or the right secret with another cluster name,
//! does not.

use std::net::SocketAddr;
use std::time::Duration;

use fragmenta_net::secret::{derive_ca, ClusterSecret};
use fragmenta_net::{ConnectError, Endpoint, HostId, NetConfig};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An endpoint for `host` of `cluster`, its certificate issued by the CA derived here.
fn endpoint(secret: &ClusterSecret, cluster: &str, host: u32) -> Endpoint {
    let identity = derive_ca(secret, cluster)
        .unwrap()
        .issue_host(HostId(host))
        .unwrap();
    Endpoint::bind_quic_identity(any_addr(), &identity, &NetConfig::default()).unwrap()
}

#[tokio::test]
async fn same_secret_and_cluster_connect() {
    let secret = ClusterSecret::generate().unwrap();
    let server = endpoint(&secret, "slurm-5.0", 0);
    let client = endpoint(&secret, "slurm-5.0", 3);
    let s = server.clone();
    let accepted = tokio::spawn(async move { s.accept().await });
    let conn = timeout(T, client.connect(server.local_addr(), HostId(0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer(), HostId(0));
    let theirs = timeout(T, accepted)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(theirs.peer(), HostId(3));
}

async fn refused(server: Endpoint, client: Endpoint) {
    let s = server.clone();
    let accepted = tokio::spawn(async move {
        if let Ok(Some(Ok(c))) = timeout(Duration::from_secs(5), s.accept()).await {
            panic!("accepted {}", c.peer());
        }
    });
    let res = timeout(T, client.connect(server.local_addr(), HostId(0)))
        .await
        .unwrap();
    match res {
        Err(ConnectError::Connection(e)) => {
            assert!(e.to_string().to_lowercase().contains("certificate"), "{e}")
        }
        other => panic!("unexpected {other:?}"),
    }
    accepted.await.unwrap();
}

#[tokio::test]
async fn a_wrong_secret_is_refused() {
    let server = endpoint(&ClusterSecret::generate().unwrap(), "slurm-5.0", 0);
    let client = endpoint(&ClusterSecret::generate().unwrap(), "slurm-5.0", 1);
    refused(server, client).await;
}

#[tokio::test]
async fn another_job_with_the_right_secret_is_refused() {
    let secret = ClusterSecret::generate().unwrap();
    let server = endpoint(&secret, "slurm-5.0", 0);
    let client = endpoint(&secret, "slurm-6.0", 1);
    refused(server, client).await;
}

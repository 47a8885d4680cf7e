//! Clients that start a TLS handshake and go silent, over real QUIC on 127.0.0.1: they need no
//! certificate, so they must delay nobody. Handshakes run concurrently, within bounds (a new one
//! beyond a bound takes the oldest one's place), each for at most the handshake timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fragmenta_net::certs;
use fragmenta_net::handshake::{accept_handshake, connect_handshake};
use fragmenta_net::tls::quinn_client_config;
use fragmenta_net::{AcceptError, ConnectError, Endpoint, HostId, NetConfig, TlsFiles};
use fragmenta_wire::handshake::Hello;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// A raw quinn client endpoint whose first packets are caught by [`stalled_handshake`].
fn packet_source(dir: &std::path::Path) -> quinn::Endpoint {
    let files = TlsFiles::for_host(dir, HostId(2));
    let mut client = quinn::Endpoint::client(any_addr()).expect("client endpoint");
    client.set_default_client_config(
        quinn_client_config(&files, &NetConfig::default()).expect("client config"),
    );
    client
}

/// Starts a handshake with `server` and goes silent: the first packet (the Initial, with the
/// TLS ClientHello) of a real client is caught on a relay socket and sent to the server from a
/// fresh socket that never reads what the server answers. Keep the returned socket alive.
async fn stalled_handshake(source: &quinn::Endpoint, server: SocketAddr) -> UdpSocket {
    let relay = UdpSocket::bind(any_addr()).await.expect("relay");
    let connecting = source
        .connect(
            relay.local_addr().expect("relay address"),
            &certs::host_server_name(HostId(1)),
        )
        .expect("connect");
    let mut packet = vec![0u8; 65536];
    let (n, _) = timeout(Duration::from_secs(5), relay.recv_from(&mut packet))
        .await
        .expect("the client sends its first packet")
        .expect("receive");
    drop(connecting);
    let silent = UdpSocket::bind(any_addr()).await.expect("silent socket");
    silent
        .send_to(&packet[..n], server)
        .await
        .expect("send the first packet");
    silent
}

/// What the server's accept loop saw: a joined host or an accept error.
type Seen = Result<HostId, AcceptError>;

/// Binds host 1 with `config` and runs the accept loop a host runs: every accepted connection
/// gets its hello handshake in its own task.
fn server(dir: &std::path::Path, config: &NetConfig) -> (Endpoint, mpsc::UnboundedReceiver<Seen>) {
    let server = Endpoint::bind_quic(any_addr(), &TlsFiles::for_host(dir, HostId(1)), config)
        .expect("bind server");
    let (tx, rx) = mpsc::unbounded_channel();
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let tx = tx.clone();
            match incoming {
                Ok(conn) => {
                    tokio::spawn(async move {
                        if let Ok((conn, _)) = accept_handshake(conn, "ours").await {
                            let _ = tx.send(Ok(conn.peer()));
                            // Keep the connection open until the client closes it.
                            conn.closed().await;
                        }
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    });
    (server, rx)
}

fn certs_dir() -> tempfile::TempDir {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    certs::generate(dir.path(), "ours", &[HostId(1), HostId(2), HostId(3)]).expect("certs");
    dir
}

async fn join(
    dir: &std::path::Path,
    as_host: HostId,
    server: SocketAddr,
) -> Result<(), ConnectError> {
    let client = Endpoint::bind_quic(
        any_addr(),
        &TlsFiles::for_host(dir, as_host),
        &NetConfig::default(),
    )
    .expect("bind client");
    let conn = connect_handshake(&client, server, HostId(1), Hello::new("ours", as_host)).await?;
    conn.close(0, b"done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_completes_while_stalled_handshakes_arrive() {
    let dir = certs_dir();
    let (server, mut seen) = server(dir.path(), &NetConfig::default());
    let source = packet_source(dir.path());
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(stalled_handshake(&source, server.local_addr()).await);
    }
    // Let the server take them up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    // A serial accept loop would hold this join behind each stalled handshake until it timed
    // out (seconds each); concurrent handshakes let it through in milliseconds.
    timeout(
        Duration::from_secs(2),
        join(dir.path(), HostId(3), server.local_addr()),
    )
    .await
    .expect("the join is not held up by stalled handshakes")
    .expect("the join succeeds");
    println!("join behind 4 stalled handshakes: {:?}", started.elapsed());
    let joined = timeout(Duration::from_secs(2), seen.recv())
        .await
        .expect("the server saw the join")
        .expect("accept loop alive");
    assert_eq!(joined, Ok(HostId(3)));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_bounded_and_time_out() {
    let dir = certs_dir();
    let config = NetConfig {
        handshake_timeout: Duration::from_millis(800),
        max_handshakes_per_ip: 2,
        ..NetConfig::default()
    };
    let (server, mut seen) = server(dir.path(), &config);
    let source = packet_source(dir.path());
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(stalled_handshake(&source, server.local_addr()).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // At most 2 handshakes from 127.0.0.1 are in progress, so the slots are full of stalled
    // ones; a real client takes the place of the oldest and gets in at once.
    timeout(
        Duration::from_secs(2),
        join(dir.path(), HostId(3), server.local_addr()),
    )
    .await
    .expect("the join is not held up")
    .expect("the join succeeds");
    // Of the 5 stalled handshakes, the 3 beyond the bound were dropped as they came and one
    // more for the join; the last is dropped after the handshake timeout. Nothing else is left.
    let mut joined = 0;
    let mut timed_out = 0;
    let until = Instant::now() + config.handshake_timeout + Duration::from_millis(1500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match timeout(left, seen.recv()).await {
            Ok(Some(Ok(HostId(3)))) => joined += 1,
            Ok(Some(Err(AcceptError::HandshakeTimeout { timeout, .. }))) => {
                assert_eq!(timeout, config.handshake_timeout);
                timed_out += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!((joined, timed_out), (1, 1));
    drop(silent);
}

#[tokio::test]
async fn endpoint_handles_dropped_release_the_accept_driver() {
    // The handshake driver holds the endpoint only while a handle exists: the port is free
    // again once every handle is gone.
    let dir = certs_dir();
    let server = Endpoint::bind_quic(
        any_addr(),
        &TlsFiles::for_host(dir.path(), HostId(1)),
        &NetConfig::default(),
    )
    .expect("bind");
    let addr = server.local_addr();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "port still bound: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

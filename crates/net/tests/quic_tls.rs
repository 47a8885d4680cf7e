//! Mutual TLS over real QUIC on 127.0.0.1: only certificates from the cluster CA get in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fragmenta_net::certs;
use fragmenta_net::handshake::connect_handshake;
use fragmenta_net::{AcceptError, ConnectError, Endpoint, HostId, NetConfig, TlsFiles};
use fragmenta_wire::handshake::Hello;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Clusters {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    ours: std::path::PathBuf,
    theirs: std::path::PathBuf,
}

fn clusters() -> Clusters {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    certs::generate(a.path(), "ours", &[HostId(1), HostId(2)]).unwrap();
    // Another CA issuing certificates for the same host ids.
    certs::generate(b.path(), "theirs", &[HostId(1), HostId(2)]).unwrap();
    Clusters {
        ours: a.path().into(),
        theirs: b.path().into(),
        _dirs: (a, b),
    }
}

/// Asserts the server never yields an accepted connection: `accept` returns an error (or
/// nothing) within the timeout.
async fn assert_not_accepted(server: &Endpoint) {
    match timeout(Duration::from_secs(5), server.accept()).await {
        Ok(Some(Ok(c))) => panic!("server accepted a connection from {}", c.peer()),
        Ok(Some(Err(AcceptError::Connection(_)))) | Ok(None) | Err(_) => {}
        Ok(Some(Err(other))) => panic!("unexpected accept error {other:?}"),
    }
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() {
    let c = clusters();
    let cfg = NetConfig::default();
    let server =
        Endpoint::bind_quic(any_addr(), &TlsFiles::for_host(&c.ours, HostId(1)), &cfg).unwrap();
    // Trusts our CA (so it accepts the server) but presents a certificate from theirs.
    let files = TlsFiles {
        ca: c.ours.join("ca.pem"),
        ..TlsFiles::for_host(&c.theirs, HostId(2))
    };
    let client = Endpoint::bind_quic(any_addr(), &files, &cfg).unwrap();
    let s = server.clone();
    let accepted = tokio::spawn(async move { assert_not_accepted(&s).await });
    let res = timeout(
        T,
        connect_handshake(
            &client,
            server.local_addr(),
            HostId(1),
            Hello::new("ours", HostId(2)),
        ),
    )
    .await
    .unwrap();
    assert!(matches!(res, Err(ConnectError::Connection(_))), "{res:?}");
    accepted.await.unwrap();
}

#[tokio::test]
async fn server_with_certificate_from_another_ca_is_refused() {
    let c = clusters();
    let cfg = NetConfig::default();
    let files = TlsFiles {
        ca: c.ours.join("ca.pem"),
        ..TlsFiles::for_host(&c.theirs, HostId(1))
    };
    let server = Endpoint::bind_quic(any_addr(), &files, &cfg).unwrap();
    let client =
        Endpoint::bind_quic(any_addr(), &TlsFiles::for_host(&c.ours, HostId(2)), &cfg).unwrap();
    let s = server.clone();
    let accepted = tokio::spawn(async move { assert_not_accepted(&s).await });
    let res = timeout(T, client.connect(server.local_addr(), HostId(1)))
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
async fn client_without_certificate_is_refused() {
    let c = clusters();
    let cfg = NetConfig::default();
    let server =
        Endpoint::bind_quic(any_addr(), &TlsFiles::for_host(&c.ours, HostId(1)), &cfg).unwrap();
    // A plain quinn client trusting our CA but with no client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(c.ours.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut client = quinn::Endpoint::client(any_addr()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let s = server.clone();
    let accepted = tokio::spawn(async move { assert_not_accepted(&s).await });
    let name = certs::host_server_name(HostId(1));
    let outcome = timeout(T, async {
        let conn = client.connect(server.local_addr(), &name).unwrap().await?;
        // TLS 1.3 lets the client finish first; the server's refusal then closes the connection
        // and no stream data ever reaches the application.
        let (mut send, _recv) = conn.open_bi().await?;
        let _ = send.write_all(b"hello?").await;
        Err::<(), _>(conn.closed().await)
    })
    .await
    .unwrap();
    let err = outcome.unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
        "{err:?}"
    );
    accepted.await.unwrap();
}

#[tokio::test]
async fn an_expired_host_certificate_is_refused() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), "ours", &[HostId(1)]).unwrap();
    let short = certs::CertOptions {
        host_validity: Duration::from_secs(1),
    };
    certs::add_host_with(dir.path(), HostId(2), &short).unwrap();
    let cfg = NetConfig::default();
    let server =
        Endpoint::bind_quic(any_addr(), &TlsFiles::for_host(dir.path(), HostId(1)), &cfg).unwrap();
    let client =
        Endpoint::bind_quic(any_addr(), &TlsFiles::for_host(dir.path(), HostId(2)), &cfg).unwrap();
    // Valid at first...
    let conn = timeout(T, client.connect(server.local_addr(), HostId(1)))
        .await
        .unwrap()
        .unwrap();
    let first = timeout(T, server.accept()).await.unwrap().unwrap();
    assert_eq!(first.unwrap().peer(), HostId(2));
    conn.close(0, b"done");
    // ...refused once expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _ = timeout(T, client.connect(server.local_addr(), HostId(1))).await;
    match timeout(T, server.accept()).await.unwrap() {
        Some(Err(AcceptError::Connection(e))) => {
            assert!(e.to_string().to_lowercase().contains("expired"), "{e}")
        }
        Some(Ok(c)) => panic!("accepted an expired certificate of {}", c.peer()),
        other => panic!("unexpected {other:?}"),
    }
}

//! One conformance suite, run against every backend: real QUIC on 127.0.0.1 (certificates in a
//! temporary directory) and the in-process transport.

use std::net::SocketAddr;
use std::time::Duration;

use fragmenta_net::certs;
use fragmenta_net::handshake::{
    accept_handshake, connect_handshake, HandshakeError, CLOSE_PROTOCOL_ERROR,
};
use fragmenta_net::{
    ConnectError, Connection, ConnectionError, Endpoint, HostId, MemTransport, NetConfig,
    QuicTransport, Transport,
};
use fragmenta_wire::handshake::{HandshakeRejection, Hello};
use fragmenta_wire::{read_frame, write_frame, FrameLimits, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

const CLUSTER: &str = "conformance";
const T: Duration = Duration::from_secs(10);

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

/// Runs `suite` against QUIC (hosts 0..4 with certificates) and the in-process transport.
async fn for_each_backend<F, Fut>(suite: F)
where
    F: Fn(Box<dyn Transport>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    certs::generate(
        dir.path(),
        CLUSTER,
        &[HostId(0), HostId(1), HostId(2), HostId(3)],
    )
    .unwrap();
    suite(Box::new(QuicTransport::new(
        dir.path(),
        NetConfig::default(),
    )))
    .await;
    suite(Box::new(MemTransport::default())).await;
}

type Msg = (u32, String);

/// Server side: accept one connection, handshake, echo one frame from a uni stream back on a bi
/// stream's reply.
async fn echo_server(server: Endpoint) -> (Connection, Hello) {
    let conn = timeout(T, server.accept()).await.unwrap().unwrap().unwrap();
    let (conn, hello) = accept_handshake(conn, CLUSTER).await.unwrap();
    // Uni stream: one frame, then end-of-file.
    let mut uni = conn.accept_uni().await.unwrap();
    let limits = FrameLimits::default();
    let (m, p): (Msg, Vec<u8>) = read_frame(&mut uni, &limits).await.unwrap().unwrap();
    assert_eq!(m, (1, "uni".to_owned()));
    assert_eq!(p, vec![7u8; 100_000]);
    assert!(read_frame::<_, Msg>(&mut uni, &limits)
        .await
        .unwrap()
        .is_none());
    // Bi stream: read a frame, answer with one carrying the same payload.
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let (m, p): (Msg, Vec<u8>) = read_frame(&mut recv, &limits).await.unwrap().unwrap();
    assert_eq!(m, (2, "bi".to_owned()));
    write_frame(&mut send, &(3u32, "reply".to_owned()), &p)
        .await
        .unwrap();
    send.finish().unwrap();
    (conn, hello)
}

#[tokio::test]
async fn smoke_handshake_uni_and_bi() {
    for_each_backend(|t| async move {
        let server = t.bind(HostId(1), any_addr()).unwrap();
        let client = t.bind(HostId(2), any_addr()).unwrap();
        assert_eq!(server.host(), HostId(1));
        assert_ne!(server.local_addr().port(), 0);
        let srv = tokio::spawn(echo_server(server.clone()));

        let conn = connect_handshake(
            &client,
            server.local_addr(),
            HostId(1),
            Hello::new(CLUSTER, HostId(2)),
        )
        .await
        .unwrap();
        assert_eq!(conn.peer(), HostId(1));
        assert_eq!(conn.local_host(), HostId(2));
        assert_eq!(conn.remote_address(), server.local_addr());

        let mut uni = conn.open_uni().await.unwrap();
        write_frame(&mut uni, &(1u32, "uni".to_owned()), &[7u8; 100_000])
            .await
            .unwrap();
        uni.finish().unwrap();

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write_frame(&mut send, &(2u32, "bi".to_owned()), &payload)
            .await
            .unwrap();
        let (m, p): (Msg, Vec<u8>) = timeout(T, read_frame(&mut recv, &FrameLimits::default()))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, (3, "reply".to_owned()));
        assert_eq!(p, payload);

        let (server_conn, hello) = srv.await.unwrap();
        assert_eq!(hello, Hello::new(CLUSTER, HostId(2)));
        assert_eq!(server_conn.peer(), HostId(2));

        // Closing with a code is seen by the peer with that code and reason.
        conn.close(42, b"bye");
        assert_eq!(
            timeout(T, server_conn.closed()).await.unwrap(),
            ConnectionError::ClosedByPeer {
                code: 42,
                reason: b"bye".to_vec()
            }
        );
        assert_eq!(conn.close_reason(), Some(ConnectionError::LocallyClosed));
        assert!(conn.open_uni().await.is_err());
        server.close();
        assert!(timeout(T, server.accept()).await.unwrap().is_none());
        client.close();
    })
    .await;
}

#[tokio::test]
async fn connecting_to_the_wrong_host_fails() {
    for_each_backend(|t| async move {
        let server = t.bind(HostId(1), any_addr()).unwrap();
        let client = t.bind(HostId(2), any_addr()).unwrap();
        let s = server.clone();
        // Keep accepting so the QUIC handshake can run.
        let srv = tokio::spawn(async move { while let Some(_c) = s.accept().await {} });
        let err = timeout(T, client.connect(server.local_addr(), HostId(3)))
            .await
            .unwrap()
            .unwrap_err();
        // QUIC: the certificate does not match the server name; in-process: the registered host.
        match err {
            ConnectError::PeerMismatch { expected, actual } => {
                assert_eq!((expected, actual), (HostId(3), HostId(1)))
            }
            ConnectError::Connection(ConnectionError::TransportError { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        server.close();
        client.close();
        srv.await.unwrap();
    })
    .await;
}

/// Connects with `hello` and returns the client's and the server's errors.
async fn handshake_errors(t: &dyn Transport, hello: Hello) -> (ConnectError, HandshakeError) {
    let server = t.bind(HostId(1), any_addr()).unwrap();
    let client = t.bind(HostId(2), any_addr()).unwrap();
    let s = server.clone();
    let srv = tokio::spawn(async move {
        let conn = s.accept().await.unwrap().unwrap();
        accept_handshake(conn, CLUSTER).await.map(|_| ())
    });
    let client_err = timeout(
        T,
        connect_handshake(&client, server.local_addr(), HostId(1), hello),
    )
    .await
    .unwrap()
    .unwrap_err();
    let server_err = timeout(T, srv).await.unwrap().unwrap().unwrap_err();
    server.close();
    client.close();
    (client_err, server_err)
}

#[tokio::test]
async fn handshake_mismatches_are_typed() {
    for_each_backend(|t| async move {
        let cases = [
            (
                Hello {
                    protocol_version: PROTOCOL_VERSION + 1,
                    cluster: CLUSTER.into(),
                    host: HostId(2),
                },
                HandshakeRejection::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: PROTOCOL_VERSION + 1,
                },
            ),
            (
                Hello::new("other-cluster", HostId(2)),
                HandshakeRejection::ClusterMismatch {
                    ours: CLUSTER.into(),
                    theirs: "other-cluster".into(),
                },
            ),
            (
                Hello::new(CLUSTER, HostId(3)),
                HandshakeRejection::HostIdMismatch {
                    certificate: HostId(2),
                    claimed: HostId(3),
                },
            ),
        ];
        for (hello, expected) in cases {
            let (client_err, server_err) = handshake_errors(&*t, hello).await;
            assert_eq!(client_err, ConnectError::Rejected(expected.clone()));
            assert_eq!(
                server_err,
                HandshakeError::Rejected {
                    peer: HostId(2),
                    reason: expected
                }
            );
        }
    })
    .await;
}

/// Reads frames on every uni stream of every connection; a bad frame closes that connection.
async fn frame_reading_server(server: Endpoint) {
    while let Some(Ok(conn)) = server.accept().await {
        tokio::spawn(async move {
            let Ok((conn, _)) = accept_handshake(conn, CLUSTER).await else {
                return;
            };
            while let Ok(mut recv) = conn.accept_uni().await {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let limits = FrameLimits {
                        max_header: 1024,
                        max_payload: 1 << 20,
                    };
                    loop {
                        match read_frame::<_, Msg>(&mut recv, &limits).await {
                            Ok(Some((m, p))) => {
                                // Echo on a fresh uni stream.
                                let Ok(mut s) = conn.open_uni().await else {
                                    return;
                                };
                                let _ = write_frame(&mut s, &m, &p).await;
                                let _ = s.finish();
                            }
                            Ok(None) => return,
                            Err(e) => {
                                fragmenta_net::handshake::close_on_frame_error(&conn, &e);
                                return;
                            }
                        }
                    }
                });
            }
        });
    }
}

async fn echo_roundtrip(conn: &Connection, n: u32) {
    let mut s = conn.open_uni().await.unwrap();
    write_frame(&mut s, &(n, "ping".to_owned()), b"data")
        .await
        .unwrap();
    s.finish().unwrap();
    let mut r = timeout(T, conn.accept_uni()).await.unwrap().unwrap();
    let got = timeout(T, read_frame::<_, Msg>(&mut r, &FrameLimits::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(((n, "ping".to_owned()), b"data".to_vec())));
}

#[tokio::test]
async fn bad_frame_closes_only_that_connection() {
    for_each_backend(|t| async move {
        let server = t.bind(HostId(1), any_addr()).unwrap();
        let client = t.bind(HostId(2), any_addr()).unwrap();
        let srv = tokio::spawn(frame_reading_server(server.clone()));
        let addr = server.local_addr();
        let good = connect_handshake(&client, addr, HostId(1), Hello::new(CLUSTER, HostId(2)))
            .await
            .unwrap();
        echo_roundtrip(&good, 1).await;

        for bad_bytes in [
            // A header length claiming 4 GiB.
            [u32::MAX.to_le_bytes().as_slice(), &0u64.to_le_bytes()].concat(),
            // A 3-byte header that is not a valid message.
            [
                3u32.to_le_bytes().as_slice(),
                &0u64.to_le_bytes(),
                &[0xFF, 0xFF, 0xFF],
            ]
            .concat(),
        ] {
            let bad = connect_handshake(&client, addr, HostId(1), Hello::new(CLUSTER, HostId(2)))
                .await
                .unwrap();
            let mut s = bad.open_uni().await.unwrap();
            s.write_all(&bad_bytes).await.unwrap();
            s.flush().await.unwrap();
            match timeout(T, bad.closed()).await.unwrap() {
                ConnectionError::ClosedByPeer { code, .. } => {
                    assert_eq!(code, u64::from(CLOSE_PROTOCOL_ERROR))
                }
                other => panic!("unexpected close {other:?}"),
            }
            // The other connection to the same endpoint keeps working.
            echo_roundtrip(&good, 2).await;
        }
        server.close();
        client.close();
        srv.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn owned_writes_arrive_whole_and_in_order_with_slice_writes() {
    for_each_backend(|t| async move {
        let server = t.bind(HostId(1), any_addr()).unwrap();
        let client = t.bind(HostId(2), any_addr()).unwrap();
        let addr = server.local_addr();
        let accept = tokio::spawn(async move {
            let conn = timeout(T, server.accept()).await.unwrap().unwrap().unwrap();
            (server, conn)
        });
        let conn = timeout(T, client.connect(addr, HostId(1)))
            .await
            .unwrap()
            .unwrap();
        let (server, server_conn) = accept.await.unwrap();
        // Frames whose payloads are handed over whole, between frames written from slices;
        // larger than the stream's flow-control window, so the owned writes wait for credit.
        let sizes = [3 << 20, 1, 20 << 20, 0, 700_000];
        let payload = |k: usize, len: usize| -> Vec<u8> {
            (0..len).map(|i| ((i * 7 + k * 13) % 251) as u8).collect()
        };
        let writer = tokio::spawn(async move {
            let mut uni = conn.open_uni().await.unwrap();
            for (k, &len) in sizes.iter().enumerate() {
                let data = payload(k, len);
                if k % 2 == 0 {
                    fragmenta_wire::write_frame_header(
                        &mut uni,
                        &(k as u32, "owned".to_owned()),
                        len as u64,
                    )
                    .await
                    .unwrap();
                    uni.write_owned(data).await.unwrap();
                } else {
                    write_frame(&mut uni, &(k as u32, "slice".to_owned()), &data)
                        .await
                        .unwrap();
                }
            }
            uni.finish().unwrap();
            conn
        });
        let mut uni = timeout(T, server_conn.accept_uni()).await.unwrap().unwrap();
        let limits = FrameLimits::default();
        for (k, &len) in sizes.iter().enumerate() {
            let (m, p): (Msg, Vec<u8>) = timeout(T, read_frame(&mut uni, &limits))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let kind = if k % 2 == 0 { "owned" } else { "slice" };
            assert_eq!(m, (k as u32, kind.to_owned()));
            assert_eq!(p.len(), len, "frame {k}");
            assert!(p == payload(k, len), "frame {k}: bytes differ");
        }
        assert!(read_frame::<_, Msg>(&mut uni, &limits)
            .await
            .unwrap()
            .is_none());
        let conn = writer.await.unwrap();
        conn.close(0, b"done");
        server.close();
        client.close();
    })
    .await;
}

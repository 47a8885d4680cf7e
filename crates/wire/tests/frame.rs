//! Framing over in-memory streams: roundtrips, limits checked before allocation, truncation, and
//! random or mutated input never panicking.

use std::future::Future;

use fragmenta_wire::{
    read_frame, read_header, read_payload_into, write_frame, DecodeError, FrameError, FrameLimits,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Records the largest single allocation made on each thread, so a test can prove a lying
/// length prefix allocated nothing large.
#[global_allocator]
static ALLOC: fragmenta_testkit::alloc::ThreadCounting = fragmenta_testkit::alloc::ThreadCounting;

use fragmenta_testkit::alloc::thread_largest_allocation as largest_allocation;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    Result {
        fragment: u32,
        seq: u32,
        tag: String,
    },
    Many(Vec<u32>),
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Encodes one frame into a vector. Writing into a `Vec` never waits, so one poll completes it
/// (usable inside or outside a runtime).
fn frame(msg: &Msg, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let fut = std::pin::pin!(write_frame(&mut out, msg, payload));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(res) => res.unwrap(),
            std::task::Poll::Pending => panic!("writing into a Vec never waits"),
        }
    }
    out
}

fn raw_prefix(header_len: u32, payload_len: u64) -> Vec<u8> {
    let mut v = header_len.to_le_bytes().to_vec();
    v.extend_from_slice(&payload_len.to_le_bytes());
    v
}

#[tokio::test]
async fn roundtrip_several_frames() {
    let msgs = [
        (Msg::Ping(7), vec![]),
        (
            Msg::Result {
                fragment: 3,
                seq: 1,
                tag: "x".into(),
            },
            (0..100_000u32).map(|i| i as u8).collect::<Vec<_>>(),
        ),
        (Msg::Many(vec![1, 2, 3]), vec![9; 3]),
    ];
    let mut stream = Vec::new();
    for (m, p) in &msgs {
        write_frame(&mut stream, m, p).await.unwrap();
    }
    let mut r = stream.as_slice();
    let limits = FrameLimits::default();
    for (m, p) in &msgs {
        let got = read_frame::<_, Msg>(&mut r, &limits).await.unwrap();
        assert_eq!(got, Some((m.clone(), p.clone())));
    }
    assert_eq!(read_frame::<_, Msg>(&mut r, &limits).await, Ok(None));

    // The same stream read header-first, with the payload read into the caller's buffer.
    let mut r = stream.as_slice();
    for (m, p) in &msgs {
        let (got, len) = read_header::<_, Msg>(&mut r, &limits)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, m);
        assert_eq!(len, p.len() as u64);
        let mut buf = vec![0u8; len as usize];
        read_payload_into(&mut r, &mut buf).await.unwrap();
        assert_eq!(&buf, p);
    }
    assert_eq!(read_header::<_, Msg>(&mut r, &limits).await, Ok(None));
}

#[test]
fn over_limit_lengths_are_rejected_before_allocating() {
    let limits = FrameLimits::default();
    // A header claiming 4 GiB.
    let input = raw_prefix(u32::MAX, 0);
    let (res, largest) = largest_allocation(|| {
        block_on(async { read_frame::<_, Msg>(&mut input.as_slice(), &limits).await })
    });
    assert_eq!(
        res,
        Err(FrameError::HeaderTooLarge {
            len: u64::from(u32::MAX),
            max: 1 << 20
        })
    );
    assert!(largest < 1 << 20, "allocated {largest} bytes");

    // A payload claiming 16 EiB.
    let mut input = raw_prefix(1, u64::MAX);
    input.push(0);
    let (res, largest) = largest_allocation(|| {
        block_on(async { read_frame::<_, Msg>(&mut input.as_slice(), &limits).await })
    });
    assert_eq!(
        res,
        Err(FrameError::PayloadTooLarge {
            len: u64::MAX,
            max: 256 << 20
        })
    );
    assert!(largest < 1 << 20, "allocated {largest} bytes");

    // Custom limits are honoured exactly: a frame at the limit passes, one byte over fails.
    let tight = FrameLimits {
        max_header: 64,
        max_payload: 10,
    };
    let ok = frame(&Msg::Ping(1), &[0; 10]);
    let over = frame(&Msg::Ping(1), &[0; 11]);
    block_on(async {
        assert!(read_frame::<_, Msg>(&mut ok.as_slice(), &tight)
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            read_frame::<_, Msg>(&mut over.as_slice(), &tight).await,
            Err(FrameError::PayloadTooLarge { len: 11, max: 10 })
        );
    });
}

#[test]
fn lying_payload_length_within_limits_allocates_only_what_arrives() {
    // The payload claims 200 MiB (under the default limit) but the stream ends after 10 bytes.
    let mut input = frame(&Msg::Ping(1), &[]);
    input[4..12].copy_from_slice(&(200u64 << 20).to_le_bytes());
    input.extend_from_slice(&[1; 10]);
    let (res, largest) = largest_allocation(|| {
        block_on(async {
            read_frame::<_, Msg>(&mut input.as_slice(), &FrameLimits::default()).await
        })
    });
    assert_eq!(res, Err(FrameError::Truncated));
    assert!(largest < 1 << 20, "allocated {largest} bytes");
}

#[test]
fn every_truncation_is_detected() {
    block_on(async {
        let full = frame(
            &Msg::Result {
                fragment: 1,
                seq: 2,
                tag: "abc".into(),
            },
            b"payload!",
        );
        let limits = FrameLimits::default();
        assert_eq!(
            read_frame::<_, Msg>(&mut &full[..0], &limits).await,
            Ok(None)
        );
        for cut in 1..full.len() {
            assert_eq!(
                read_frame::<_, Msg>(&mut &full[..cut], &limits).await,
                Err(FrameError::Truncated),
                "cut at {cut}"
            );
        }
        // Truncated payload read into the caller's buffer.
        let cut = &full[..full.len() - 1];
        let mut r = cut;
        let (_, len) = read_header::<_, Msg>(&mut r, &limits)
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0; len as usize];
        assert_eq!(
            read_payload_into(&mut r, &mut buf).await,
            Err(FrameError::Truncated)
        );
    });
}

#[test]
fn undecodable_header_is_malformed() {
    block_on(async {
        // Variant index 9 does not exist.
        let mut input = raw_prefix(2, 0);
        input.extend_from_slice(&[9, 0]);
        assert!(matches!(
            read_frame::<_, Msg>(&mut input.as_slice(), &FrameLimits::default()).await,
            Err(FrameError::Malformed {
                source: DecodeError::Malformed { .. }
            })
        ));
        // A valid message followed by a stray byte inside the header.
        let mut input = frame(&Msg::Ping(1), &[]);
        input[0] += 1;
        input.push(0);
        assert_eq!(
            read_frame::<_, Msg>(&mut input.as_slice(), &FrameLimits::default()).await,
            Err(FrameError::Malformed {
                source: DecodeError::TrailingBytes { extra: 1 }
            })
        );
    });
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any::<u64>().prop_map(Msg::Ping),
        (any::<u32>(), any::<u32>(), ".{0,20}").prop_map(|(fragment, seq, tag)| Msg::Result {
            fragment,
            seq,
            tag
        }),
        proptest::collection::vec(any::<u32>(), 0..50).prop_map(Msg::Many),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let limits = FrameLimits { max_header: 256, max_payload: 1024 };
        block_on(async {
            let mut r = bytes.as_slice();
            // Read until the stream ends or fails: every step is Ok or Err, never a panic.
            while let Ok(Some(_)) = read_frame::<_, Msg>(&mut r, &limits).await {}
        });
    }

    #[test]
    fn mutated_frames_never_panic(
        msg in arb_msg(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = frame(&msg, &payload);
        let clean = bytes.clone();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let limits = FrameLimits { max_header: 1024, max_payload: 1024 };
        let res = block_on(async { read_frame::<_, Msg>(&mut bytes.as_slice(), &limits).await });
        if bytes == clean {
            prop_assert_eq!(res, Ok(Some((msg, payload))));
        }
    }

    #[test]
    fn valid_frames_roundtrip(msg in arb_msg(), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let bytes = frame(&msg, &payload);
        let res = block_on(async {
            read_frame::<_, Msg>(&mut bytes.as_slice(), &FrameLimits::default()).await
        });
        prop_assert_eq!(res, Ok(Some((msg, payload))));
    }
}

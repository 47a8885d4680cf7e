//! Bad input for every message that crosses the network: random bytes and mutated valid frames
//! fed to the frame reader and the decoders give errors or valid messages, never a panic, and
//! length prefixes claiming gigabytes allocate nothing large (measured with a counting global
//! allocator: the peak of live heap bytes while reading).

use std::future::Future;

use fragmenta_job::{ClassId, FailureReason, HostId, JobId, JobParams, SchedulingMode};
use fragmenta_wire::handshake::{HandshakeRejection, Hello, HelloReply};
use fragmenta_wire::messages::{Control, FetchReply, Request, ResultItem, Results, StreamHeader};
use fragmenta_wire::{
    decode, encode, read_frame, read_header, write_frame, DecodeError, FrameError, FrameLimits,
};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Counts the live heap bytes of each thread and their peak.
#[global_allocator]
static ALLOC: fragmenta_testkit::alloc::ThreadCounting = fragmenta_testkit::alloc::ThreadCounting;

use fragmenta_testkit::alloc::thread_peak_allocation as peak_allocation;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Runs a future over an in-memory stream (which never waits) in one poll.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("an in-memory stream never waits"),
    }
}

fn frame<M: Serialize>(msg: &M, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    now(write_frame(&mut out, msg, payload)).expect("valid frames encode");
    out
}

/// A decoded message is valid: it encodes, and decodes again to the same encoding.
fn assert_valid<M: Serialize + DeserializeOwned>(msg: &M) {
    let bytes = encode(msg).expect("a decoded message encodes");
    let again: M = decode(&bytes, bytes.len()).expect("its encoding decodes");
    assert_eq!(encode(&again).expect("encodes"), bytes);
}

/// Reads frames of `M` until the stream ends or fails; checks every decoded one.
fn read_all<M: Serialize + DeserializeOwned>(bytes: &[u8], limits: &FrameLimits) -> usize {
    let mut r = bytes;
    let mut n = 0;
    while let Ok(Some((msg, payload))) = now(read_frame::<_, M>(&mut r, limits)) {
        assert_valid(&msg);
        assert!(payload.len() as u64 <= limits.max_payload);
        n += 1;
    }
    n
}

/// Feeds `bytes` to the frame reader and the decoder of every message type.
fn every_reader(bytes: &[u8], limits: &FrameLimits) {
    read_all::<StreamHeader>(bytes, limits);
    read_all::<Control>(bytes, limits);
    read_all::<Results>(bytes, limits);
    read_all::<Hello>(bytes, limits);
    read_all::<HelloReply>(bytes, limits);
    read_all::<Request>(bytes, limits);
    read_all::<FetchReply>(bytes, limits);
    let limit = limits.max_header as usize;
    if let Ok(m) = decode::<StreamHeader>(bytes, limit) {
        assert_valid(&m);
    }
    if let Ok(m) = decode::<Control>(bytes, limit) {
        assert_valid(&m);
    }
    if let Ok(m) = decode::<Results>(bytes, limit) {
        let _ = m.payload_len();
        assert_valid(&m);
    }
    if let Ok(m) = decode::<Hello>(bytes, limit) {
        assert_valid(&m);
    }
    if let Ok(m) = decode::<HelloReply>(bytes, limit) {
        assert_valid(&m);
    }
    if let Ok(m) = decode::<Request>(bytes, limit) {
        assert_valid(&m);
    }
}

fn job() -> JobId {
    JobId {
        initiator: HostId(0),
        seq: 1,
    }
}

/// Length prefixes (of a frame, or of a sequence or string inside a message) claiming
/// gigabytes: errors, and the reader's peak allocation stays small.
#[test]
fn gigabyte_length_prefixes_allocate_nothing_large() {
    let limits = FrameLimits::default();
    let prefix = |h: u32, p: u64| {
        let mut v = h.to_le_bytes().to_vec();
        v.extend_from_slice(&p.to_le_bytes());
        v
    };
    // Frame headers and payloads claiming 1 GiB to 16 EiB, for every message type.
    for (h, p) in [
        (u32::MAX, 0),
        (1 << 30, 0),
        (2, u64::MAX),
        (2, 3 << 30),
        (2, 1 << 40),
    ] {
        let mut input = prefix(h, p);
        input.extend_from_slice(&[0, 0]);
        let (res, peak) =
            peak_allocation(|| now(read_frame::<_, Control>(&mut input.as_slice(), &limits)));
        assert!(
            matches!(
                res,
                Err(FrameError::HeaderTooLarge { .. } | FrameError::PayloadTooLarge { .. })
            ),
            "{h} / {p}: {res:?}"
        );
        assert!(peak < 4 * KIB, "claim {h} / {p} allocated {peak} bytes");
        let (_, peak) = peak_allocation(|| every_reader(&input, &limits));
        assert!(peak < 4 * KIB, "claim {h} / {p} allocated {peak} bytes");
    }
    // A payload within the limits (200 MiB) on a stream that ends: only what arrived.
    let mut input = frame(&Control::Heartbeat, &[]);
    input[4..12].copy_from_slice(&(200u64 << 20).to_le_bytes());
    input.extend_from_slice(&[7; 100]);
    let (res, peak) =
        peak_allocation(|| now(read_frame::<_, Control>(&mut input.as_slice(), &limits)));
    assert_eq!(res, Err(FrameError::Truncated));
    assert!(peak < 128 * KIB, "allocated {peak} bytes");

    // Inside messages: a Dispatch with 2^60 ranges, a Results batch with 2^40 items, a hello
    // whose cluster name is 3 GiB, a fetch of a 2^62-byte name.
    let mut dispatch = encode(&Control::Dispatch {
        job: job(),
        fragments: vec![],
        rdma: vec![],
    })
    .unwrap();
    dispatch.truncate(dispatch.len() - 2); // the two empty sequences' lengths
    dispatch.push(0xFD); // a u64 length of `fragments` follows
    dispatch.extend_from_slice(&(1u64 << 60).to_le_bytes());
    dispatch.extend_from_slice(&[1, 2, 3, 4]);
    let mut results = vec![0xFD];
    results.extend_from_slice(&(1u64 << 40).to_le_bytes());
    results.extend_from_slice(&[2, 5, 1]);
    let mut hello = encode(&Hello::new("", HostId(1))).unwrap();
    let at = hello.len() - 2; // protocol version (1 byte), empty name (1 byte), host (1 byte)
    hello.truncate(at);
    hello.push(0xFC); // a u32 length follows
    hello.extend_from_slice(&(3u32 << 30).to_le_bytes());
    hello.extend_from_slice(b"abc");
    let mut fetch = vec![0, 0xFD];
    fetch.extend_from_slice(&(1u64 << 62).to_le_bytes());
    fetch.extend_from_slice(b"x");
    let cases: [(&str, &[u8]); 4] = [
        ("dispatch", &dispatch),
        ("results", &results),
        ("hello", &hello),
        ("fetch", &fetch),
    ];
    for (name, bytes) in cases {
        let (errors, peak) = peak_allocation(|| {
            [
                decode::<Control>(bytes, MIB).is_err(),
                decode::<Results>(bytes, MIB).is_err(),
                decode::<Hello>(bytes, MIB).is_err(),
                decode::<Request>(bytes, MIB).is_err(),
            ]
        });
        assert!(errors.iter().all(|e| *e), "{name}: {errors:?}");
        // serde preallocates at most 1 MiB per sequence on the strength of a length prefix.
        assert!(peak <= MIB + 4 * KIB, "{name} allocated {peak} bytes");
        let framed = frame(&(), &[]);
        let mut input = framed[..4].to_vec();
        input[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        input.extend_from_slice(&[0; 8]);
        input.extend_from_slice(bytes);
        let (_, peak) = peak_allocation(|| every_reader(&input, &limits));
        assert!(
            peak <= MIB + 8 * KIB,
            "{name} framed allocated {peak} bytes"
        );
    }
    assert!(matches!(
        decode::<Hello>(&hello, MIB),
        Err(DecodeError::Truncated | DecodeError::TooLarge { .. })
    ));
}

fn arb_job() -> impl Strategy<Value = JobId> {
    (any::<u32>(), any::<u64>()).prop_map(|(h, seq)| JobId {
        initiator: HostId(h),
        seq,
    })
}

fn arb_params() -> impl Strategy<Value = JobParams> {
    (
        0..4u8,
        any::<f32>(),
        any::<f32>(),
        any::<i8>(),
        any::<usize>(),
        any::<bool>(),
    )
        .prop_map(|(m, cpu, gpu, priority, thread_limit, ns)| JobParams {
            mode: [
                SchedulingMode::Local,
                SchedulingMode::Cluster,
                SchedulingMode::OncePerHost,
                SchedulingMode::UserDefined,
            ][m as usize],
            cpu_load: cpu,
            gpu_load: gpu,
            priority,
            thread_limit,
            allow_non_sequential_chunks: ns,
        })
}

fn arb_reason() -> impl Strategy<Value = FailureReason> {
    prop_oneof![
        ".{0,12}".prop_map(FailureReason::Panicked),
        ".{0,12}".prop_map(FailureReason::Returned),
        any::<u32>().prop_map(|h| FailureReason::HostFailed(HostId(h))),
        any::<u128>()
            .prop_map(|c| FailureReason::UnknownClass(ClassId::from_name(&format!("{c:x}")))),
        ".{0,12}".prop_map(FailureReason::Deserialize),
        any::<u32>().prop_map(|h| FailureReason::NoGpu(HostId(h))),
        ".{0,12}".prop_map(FailureReason::ReceivePanicked),
        any::<u32>().prop_map(|h| FailureReason::CannotRun(HostId(h))),
        (any::<u64>(), any::<u64>())
            .prop_map(|(len, capacity)| FailureReason::RdmaTooLarge { len, capacity }),
        Just(FailureReason::InitiatorGone),
    ]
}

fn arb_ranges() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6)
}

fn arb_control() -> impl Strategy<Value = Control> {
    prop_oneof![
        Just(Control::Heartbeat),
        (arb_job(), any::<u128>(), arb_params(), any::<u64>()).prop_map(
            |(job, class, params, count)| Control::Replica {
                job,
                class: ClassId::from_name(&format!("{class:x}")),
                params,
                count,
            }
        ),
        (arb_job(), arb_ranges(), arb_ranges()).prop_map(|(job, fragments, rdma)| {
            Control::Dispatch {
                job,
                fragments,
                rdma,
            }
        }),
        arb_job().prop_map(|job| Control::Cancel { job }),
        arb_job().prop_map(|job| Control::Release { job }),
        Just(Control::Shutdown),
    ]
}

fn arb_item() -> impl Strategy<Value = ResultItem> {
    prop_oneof![
        (any::<u64>(), any::<u32>(), 0..64u64, any::<bool>()).prop_map(
            |(fragment, seq, len, last)| ResultItem::Chunk {
                fragment,
                seq,
                len,
                last,
            }
        ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(fragment, chunks)| ResultItem::Done { fragment, chunks }),
        (any::<u64>(), arb_reason())
            .prop_map(|(fragment, reason)| ResultItem::Failed { fragment, reason }),
        arb_ranges().prop_map(|ranges| ResultItem::NotStarted { ranges }),
        (any::<u64>(), 0..64u64).prop_map(|(fragment, len)| ResultItem::Rdma { fragment, len }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(fragment, id, len, size)| ResultItem::RdmaShm {
                fragment,
                id,
                len,
                size
            }
        ),
    ]
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), ".{0,16}", any::<u32>()).prop_map(|(v, cluster, h)| Hello {
        protocol_version: v,
        cluster,
        host: HostId(h),
    })
}

fn arb_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        any::<u32>().prop_map(|h| HelloReply::Accept { host: HostId(h) }),
        (any::<u32>(), any::<u32>()).prop_map(|(ours, theirs)| HelloReply::Reject {
            reason: HandshakeRejection::VersionMismatch { ours, theirs }
        }),
        (".{0,8}", ".{0,8}").prop_map(|(ours, theirs)| HelloReply::Reject {
            reason: HandshakeRejection::ClusterMismatch { ours, theirs }
        }),
        any::<u32>().prop_map(|h| HelloReply::Reject {
            reason: HandshakeRejection::UnknownHost { host: HostId(h) }
        }),
    ]
}

/// A valid stream of one kind, as a host writes it, with which message type reads each frame.
#[derive(Debug, Clone)]
enum ValidStream {
    Control(Vec<Control>),
    Results(JobId, Vec<Results>),
    Handshake(Hello, HelloReply),
    Fetch(String),
}

fn arb_stream() -> impl Strategy<Value = ValidStream> {
    prop_oneof![
        proptest::collection::vec(arb_control(), 1..5).prop_map(ValidStream::Control),
        (
            arb_job(),
            proptest::collection::vec(
                proptest::collection::vec(arb_item(), 0..5).prop_map(|items| Results { items }),
                1..4
            )
        )
            .prop_map(|(job, r)| ValidStream::Results(job, r)),
        (arb_hello(), arb_reply()).prop_map(|(h, r)| ValidStream::Handshake(h, r)),
        ".{0,24}".prop_map(ValidStream::Fetch),
    ]
}

impl ValidStream {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ValidStream::Control(msgs) => {
                out.extend(frame(&StreamHeader::Control, &[]));
                for m in msgs {
                    let payload: &[u8] = if matches!(m, Control::Replica { .. }) {
                        b"replica bytes"
                    } else {
                        &[]
                    };
                    out.extend(frame(m, payload));
                }
            }
            ValidStream::Results(job, batches) => {
                out.extend(frame(&StreamHeader::Results { job: *job }, &[]));
                for r in batches {
                    let len = r.payload_len().unwrap_or(0).min(4096) as usize;
                    out.extend(frame(r, &vec![0xAB; len]));
                }
            }
            ValidStream::Handshake(h, r) => {
                out.extend(frame(h, &[]));
                out.extend(frame(r, &[]));
            }
            ValidStream::Fetch(name) => {
                out.extend(frame(&Request::Fetch { name: name.clone() }, &[]));
                out.extend(frame(&FetchReply::UnknownName, &[]));
            }
        }
        out
    }

    /// Reads the stream as its receiver does; returns how many frames decoded.
    fn read(&self, bytes: &[u8], limits: &FrameLimits) -> usize {
        let mut r = bytes;
        let mut n = 0;
        match self {
            ValidStream::Control(_) | ValidStream::Results(..) => {
                if let Ok(Some((h, _))) = now(read_frame::<_, StreamHeader>(&mut r, limits)) {
                    assert_valid(&h);
                    n += 1;
                    n += match h {
                        StreamHeader::Control => read_all::<Control>(r, limits),
                        StreamHeader::Results { .. } => read_all::<Results>(r, limits),
                    };
                }
            }
            ValidStream::Handshake(..) => {
                if let Ok(Some((h, _))) = now(read_frame::<_, Hello>(&mut r, limits)) {
                    assert_valid(&h);
                    n += 1 + read_all::<HelloReply>(r, limits);
                }
            }
            ValidStream::Fetch(_) => {
                if let Ok(Some((q, _))) = now(read_header::<_, Request>(&mut r, limits)) {
                    assert_valid(&q);
                    n += 1;
                }
            }
        }
        n
    }

    fn frames(&self) -> usize {
        match self {
            ValidStream::Control(m) => 1 + m.len(),
            ValidStream::Results(_, r) => 1 + r.len(),
            ValidStream::Handshake(..) => 2,
            ValidStream::Fetch(_) => 1,
        }
    }
}

/// Ways to damage a stream: overwrite bytes, insert or delete some, write a huge length over a
/// frame's length fields, cut it short.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
    HugeLength(prop::sample::Index, u64),
    Cut(prop::sample::Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<prop::sample::Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (
            any::<prop::sample::Index>(),
            prop_oneof![Just(u64::MAX), Just(1 << 30), Just(3 << 30), Just(1 << 40), any::<u64>()]
        )
            .prop_map(|(i, v)| Mutation::HugeLength(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Cut),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Set(i, v) => {
            let i = i.index(bytes.len());
            bytes[i] = *v;
        }
        Mutation::Insert(i, v) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, v.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::HugeLength(i, v) => {
            let i = i.index(bytes.len());
            let end = (i + 8).min(bytes.len());
            let le = v.to_le_bytes();
            bytes[i..end].copy_from_slice(&le[..end - i]);
        }
        Mutation::Cut(i) => bytes.truncate(i.index(bytes.len())),
    }
}

/// What reading untrusted bytes may hold at once, whatever the length prefixes claim: the header
/// buffer (at most `max_header`, allocated before the header arrives), serde's 1 MiB cap on what
/// it preallocates for a sequence being filled (messages nest at most two), and what the input
/// itself accounts for (strings at most 16 times the input's length, for inputs of 2 KiB here).
fn bound(limits: &FrameLimits) -> usize {
    limits.max_header as usize + 2 * MIB + 128 * KIB
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes: every reader and decoder answers with errors or valid messages, and never
    /// holds more than the limits allow.
    #[test]
    fn random_bytes_give_errors_or_valid_messages(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        tight in any::<bool>(),
    ) {
        let limits = if tight {
            FrameLimits { max_header: 256, max_payload: 1024 }
        } else {
            FrameLimits::default()
        };
        let ((), peak) = peak_allocation(|| every_reader(&bytes, &limits));
        prop_assert!(peak <= bound(&limits), "peak {} bytes", peak);
    }

    /// Valid streams of every kind, damaged: errors or valid messages; undamaged, every frame
    /// reads back.
    #[test]
    fn mutated_valid_frames_give_errors_or_valid_messages(
        stream in arb_stream(),
        mutations in proptest::collection::vec(arb_mutation(), 0..4),
    ) {
        let clean = stream.bytes();
        let limits = FrameLimits::default();
        prop_assert_eq!(stream.read(&clean, &limits), stream.frames());
        let mut bytes = clean.clone();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        let (_, peak) = peak_allocation(|| {
            stream.read(&bytes, &limits);
            every_reader(&bytes, &limits);
        });
        prop_assert!(peak <= bound(&limits), "peak {} bytes", peak);
    }
}

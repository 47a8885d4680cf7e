//! Golden bytes of every message hosts exchange, tied to [`PROTOCOL_VERSION`]: reordering an
//! enum (here, in `fragmenta-job` or in `fragmenta-fastio`) or a field changes bytes on the
//! wire, and two builds would misread each other while their handshake agrees. Such a change
//! must bump `PROTOCOL_VERSION`, and then these bytes are recorded again:
//!
//! ```text
//! FRAGMENTA_GOLDEN_PRINT=1 cargo test -p fragmenta-wire --test golden -- --nocapture
//! ```
//!
//! prints the table to paste below, with `GOLDEN_VERSION` set to the new version.

use fragmenta_fastio::{ElementType, Metadata};
use fragmenta_job::{ClassId, FailureReason, HostId, JobId, JobParams, SchedulingMode};
use fragmenta_wire::handshake::{HandshakeRejection, Hello, HelloReply};
use fragmenta_wire::messages::{Control, FetchReply, Request, ResultItem, Results, StreamHeader};
use fragmenta_wire::{encode, PROTOCOL_VERSION};
use serde::Serialize;

/// The protocol version the table below was recorded for.
const GOLDEN_VERSION: u32 = 3;

fn hex<M: Serialize>(m: &M) -> String {
    encode(m)
        .expect("encodes")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn job() -> JobId {
    JobId {
        initiator: HostId(3),
        seq: 300,
    }
}

fn params(mode: SchedulingMode) -> JobParams {
    JobParams {
        mode,
        cpu_load: 1.5,
        gpu_load: 0.25,
        priority: 2,
        thread_limit: 7,
        allow_non_sequential_chunks: true,
    }
}

/// One sample of every message and of every variant of the types they carry.
fn samples() -> Vec<(String, String)> {
    let reasons = [
        FailureReason::Panicked("p".into()),
        FailureReason::Returned("r".into()),
        FailureReason::HostFailed(HostId(5)),
        FailureReason::UnknownClass(ClassId(0x0102_0304)),
        FailureReason::Deserialize("d".into()),
        FailureReason::NoGpu(HostId(6)),
        FailureReason::ReceivePanicked("q".into()),
    ];
    let mut v: Vec<(String, String)> = vec![
        ("Hello", hex(&Hello::new("c", HostId(2)))),
        (
            "HelloReply::Accept",
            hex(&HelloReply::Accept { host: HostId(1) }),
        ),
        (
            "HandshakeRejection::VersionMismatch",
            hex(&HelloReply::Reject {
                reason: HandshakeRejection::VersionMismatch { ours: 1, theirs: 2 },
            }),
        ),
        (
            "HandshakeRejection::ClusterMismatch",
            hex(&HandshakeRejection::ClusterMismatch {
                ours: "a".into(),
                theirs: "b".into(),
            }),
        ),
        (
            "HandshakeRejection::HostIdMismatch",
            hex(&HandshakeRejection::HostIdMismatch {
                certificate: HostId(1),
                claimed: HostId(2),
            }),
        ),
        (
            "HandshakeRejection::AlreadyConnected",
            hex(&HandshakeRejection::AlreadyConnected { host: HostId(4) }),
        ),
        (
            "HandshakeRejection::UnknownHost",
            hex(&HandshakeRejection::UnknownHost { host: HostId(4) }),
        ),
        ("StreamHeader::Control", hex(&StreamHeader::Control)),
        (
            "StreamHeader::Results",
            hex(&StreamHeader::Results { job: job() }),
        ),
        ("Control::Heartbeat", hex(&Control::Heartbeat)),
        (
            "Control::Dispatch",
            hex(&Control::Dispatch {
                job: job(),
                fragments: vec![(0, 10), (300, 70_000)],
                rdma: vec![(3, 4096)],
            }),
        ),
        ("Control::Cancel", hex(&Control::Cancel { job: job() })),
        ("Control::Release", hex(&Control::Release { job: job() })),
        ("Control::Shutdown", hex(&Control::Shutdown)),
        (
            "Control::Reclaim",
            hex(&Control::Reclaim {
                job: job(),
                fragments: vec![(0, 10), (300, 70_000)],
            }),
        ),
        (
            "Control::Reclaimed",
            hex(&Control::Reclaimed {
                job: job(),
                fragments: vec![(300, 70_000)],
            }),
        ),
        (
            "Results",
            hex(&Results {
                items: vec![
                    ResultItem::Chunk {
                        fragment: 1,
                        seq: 2,
                        len: 3,
                        last: true,
                    },
                    ResultItem::Done {
                        fragment: 1,
                        chunks: 3,
                    },
                    ResultItem::Rdma {
                        fragment: 9,
                        len: 1 << 20,
                    },
                    ResultItem::NotStarted {
                        ranges: vec![(4, 8)],
                    },
                ],
            }),
        ),
        ("Request::Fetch", hex(&Request::Fetch { name: "n".into() })),
        ("FetchReply::UnknownName", hex(&FetchReply::UnknownName)),
        (
            "FetchReply::Refused",
            hex(&FetchReply::Refused {
                message: "m".into(),
            }),
        ),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b))
    .collect();
    for (name, mode) in [
        ("Control::Replica Local", SchedulingMode::Local),
        ("Control::Replica Cluster", SchedulingMode::Cluster),
        ("Control::Replica OncePerHost", SchedulingMode::OncePerHost),
        ("Control::Replica UserDefined", SchedulingMode::UserDefined),
    ] {
        v.push((
            name.to_string(),
            hex(&Control::Replica {
                job: job(),
                class: ClassId(u128::MAX - 1),
                params: params(mode),
                count: 1 << 40,
            }),
        ));
    }
    for (i, reason) in reasons.into_iter().enumerate() {
        let name = [
            "ResultItem::Failed Panicked",
            "ResultItem::Failed Returned",
            "ResultItem::Failed HostFailed",
            "ResultItem::Failed UnknownClass",
            "ResultItem::Failed Deserialize",
            "ResultItem::Failed NoGpu",
            "ResultItem::Failed ReceivePanicked",
        ][i];
        v.push((
            name.to_string(),
            hex(&ResultItem::Failed {
                fragment: 7,
                reason,
            }),
        ));
    }
    let types = [
        ElementType::U8,
        ElementType::U16,
        ElementType::U32,
        ElementType::U64,
        ElementType::I8,
        ElementType::I16,
        ElementType::I32,
        ElementType::I64,
        ElementType::F16,
        ElementType::F32,
        ElementType::F64,
    ];
    for t in types {
        v.push((
            format!("FetchReply::Found {t:?}"),
            hex(&FetchReply::Found {
                size: 24,
                metadata: Metadata {
                    element_type: Some(t),
                    dims: vec![2, 3],
                },
            }),
        ));
    }
    v.push((
        "FetchReply::Found untyped".to_string(),
        hex(&FetchReply::Found {
            size: 5,
            metadata: Metadata {
                element_type: None,
                dims: vec![],
            },
        }),
    ));
    v
}

/// `(message, hex bytes)` for [`GOLDEN_VERSION`].
const GOLDEN: &[(&str, &str)] = &[
    ("Hello", "03016302"),
    ("HelloReply::Accept", "0001"),
    ("HandshakeRejection::VersionMismatch", "01000102"),
    ("HandshakeRejection::ClusterMismatch", "0101610162"),
    ("HandshakeRejection::HostIdMismatch", "020102"),
    ("HandshakeRejection::AlreadyConnected", "0304"),
    ("HandshakeRejection::UnknownHost", "0404"),
    ("StreamHeader::Control", "00"),
    ("StreamHeader::Results", "0103fb2c01"),
    ("Control::Heartbeat", "00"),
    (
        "Control::Dispatch",
        "0203fb2c0102000afb2c01fc701101000103fb0010",
    ),
    ("Control::Cancel", "0303fb2c01"),
    ("Control::Release", "0403fb2c01"),
    ("Control::Shutdown", "05"),
    ("Control::Reclaim", "0603fb2c0102000afb2c01fc70110100"),
    ("Control::Reclaimed", "0703fb2c0101fb2c01fc70110100"),
    ("Results", "0400010203010101030309fc0000100004010408"),
    ("Request::Fetch", "00016e"),
    ("FetchReply::UnknownName", "01"),
    ("FetchReply::Refused", "02016d"),
    (
        "Control::Replica Local",
        "0103fb2c01fefeffffffffffffffffffffffffffffff000000c03f0000803e020701fd0000000000010000",
    ),
    (
        "Control::Replica Cluster",
        "0103fb2c01fefeffffffffffffffffffffffffffffff010000c03f0000803e020701fd0000000000010000",
    ),
    (
        "Control::Replica OncePerHost",
        "0103fb2c01fefeffffffffffffffffffffffffffffff020000c03f0000803e020701fd0000000000010000",
    ),
    (
        "Control::Replica UserDefined",
        "0103fb2c01fefeffffffffffffffffffffffffffffff030000c03f0000803e020701fd0000000000010000",
    ),
    ("ResultItem::Failed Panicked", "0207000170"),
    ("ResultItem::Failed Returned", "0207010172"),
    ("ResultItem::Failed HostFailed", "02070205"),
    ("ResultItem::Failed UnknownClass", "020703fc04030201"),
    ("ResultItem::Failed Deserialize", "0207040164"),
    ("ResultItem::Failed NoGpu", "02070506"),
    ("ResultItem::Failed ReceivePanicked", "0207060171"),
    ("FetchReply::Found U8", "00180100020203"),
    ("FetchReply::Found U16", "00180101020203"),
    ("FetchReply::Found U32", "00180102020203"),
    ("FetchReply::Found U64", "00180103020203"),
    ("FetchReply::Found I8", "00180104020203"),
    ("FetchReply::Found I16", "00180105020203"),
    ("FetchReply::Found I32", "00180106020203"),
    ("FetchReply::Found I64", "00180107020203"),
    ("FetchReply::Found F16", "00180108020203"),
    ("FetchReply::Found F32", "00180109020203"),
    ("FetchReply::Found F64", "0018010a020203"),
    ("FetchReply::Found untyped", "00050000"),
];

#[test]
fn every_wire_message_keeps_its_bytes_for_this_protocol_version() {
    let samples = samples();
    if std::env::var_os("FRAGMENTA_GOLDEN_PRINT").is_some() {
        println!("const GOLDEN_VERSION: u32 = {PROTOCOL_VERSION};");
        println!("const GOLDEN: &[(&str, &str)] = &[");
        for (name, bytes) in &samples {
            println!("    ({name:?}, {bytes:?}),");
        }
        println!("];");
    }
    assert_eq!(
        PROTOCOL_VERSION, GOLDEN_VERSION,
        "PROTOCOL_VERSION changed: record the golden bytes again (see the module docs)"
    );
    let names: Vec<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
    let golden: Vec<&str> = GOLDEN.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, golden,
        "the samples and the golden table list different messages"
    );
    for ((name, bytes), (_, want)) in samples.iter().zip(GOLDEN) {
        assert_eq!(
            bytes, want,
            "{name} encodes differently with PROTOCOL_VERSION {PROTOCOL_VERSION}: a change of \
             the wire format needs a new PROTOCOL_VERSION (then record the golden bytes again)"
        );
    }
}

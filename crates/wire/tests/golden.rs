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

use fragmenta_fastio::{ElementType, FastIoError, IoOp, Metadata};
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
        FailureReason::UnknownClass(ClassId::from_name("golden.unknown")),
        FailureReason::Deserialize("d".into()),
        FailureReason::NoGpu(HostId(6)),
        FailureReason::ReceivePanicked("q".into()),
        FailureReason::CannotRun(HostId(8)),
        FailureReason::RdmaTooLarge {
            len: 300,
            capacity: 200,
        },
        FailureReason::InitiatorGone,
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
            "Control::Machine",
            hex(&Control::Machine {
                boot_id: "b".into(),
                socket: "/s".into(),
                nonce: 0x0102,
            }),
        ),
        (
            "Control::MachineProof",
            hex(&Control::MachineProof { nonce: u128::MAX }),
        ),
        ("Control::MachineConfirmed", hex(&Control::MachineConfirmed)),
        ("Control::MachineDeclined", hex(&Control::MachineDeclined)),
        (
            "Control::ShmCredit",
            hex(&Control::ShmCredit {
                job: job(),
                bytes: 1 << 21,
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
                    ResultItem::Shm {
                        fragment: 2,
                        seq: 5,
                        id: 77,
                        len: 1000,
                        size: 1 << 20,
                    },
                    ResultItem::RdmaShm {
                        fragment: 3,
                        id: 78,
                        len: 300_000,
                        size: 1 << 20,
                    },
                ],
            }),
        ),
        ("Request::Fetch", hex(&Request::Fetch { name: "n".into() })),
        ("FetchReply::UnknownName", hex(&FetchReply::UnknownName)),
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
                class: ClassId::from_name("golden.replica"),
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
            "ResultItem::Failed CannotRun",
            "ResultItem::Failed RdmaTooLarge",
            "ResultItem::Failed InitiatorGone",
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
    let io_ops = [
        IoOp::CreateMemory,
        IoOp::InspectMemory,
        IoOp::Map,
        IoOp::SocketPath,
        IoOp::Bind,
        IoOp::Connect,
        IoOp::Send,
        IoOp::Receive,
        IoOp::Spawn,
    ];
    let mut errors = vec![
        ("UnknownName", FastIoError::UnknownName("n".into())),
        ("NameTaken", FastIoError::NameTaken("n".into())),
        ("InvalidName", FastIoError::InvalidName),
        ("MapConflict", FastIoError::MapConflict),
        ("Freed", FastIoError::Freed),
        (
            "CapacityExceeded",
            FastIoError::CapacityExceeded {
                requested: 300,
                available: 2,
            },
        ),
        (
            "WrongElementType",
            FastIoError::WrongElementType {
                actual: Some(ElementType::F64),
                requested: ElementType::U8,
            },
        ),
        (
            "DimsMismatch",
            FastIoError::DimsMismatch {
                size: 5,
                element_type: ElementType::F32,
                dims: vec![2],
            },
        ),
        ("TooManyDimensions", FastIoError::TooManyDimensions),
        ("MetadataImmutable", FastIoError::MetadataImmutable),
        ("ForeignAllocation", FastIoError::ForeignAllocation),
        ("InvalidHandle", FastIoError::InvalidHandle),
        ("Disconnected", FastIoError::Disconnected),
        ("Protocol", FastIoError::Protocol("p".into())),
        (
            "InsecurePath",
            FastIoError::InsecurePath {
                path: "/p".into(),
                reason: "r".into(),
            },
        ),
        (
            "SocketPathTooLong",
            FastIoError::SocketPathTooLong {
                path: "/p".into(),
                len: 200,
                max: 107,
            },
        ),
        ("AddressInUse", FastIoError::AddressInUse("/p".into())),
    ];
    for op in io_ops {
        errors.push(("Io", FastIoError::Io { op, errno: 11 }));
    }
    for (name, error) in errors {
        let op = match &error {
            FastIoError::Io { op, .. } => format!(" {op:?}"),
            _ => String::new(),
        };
        v.push((
            format!("FetchReply::Refused {name}{op}"),
            hex(&FetchReply::Refused { error }),
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
    ("Control::Machine", "080162022f73fb0201"),
    (
        "Control::MachineProof",
        "09feffffffffffffffffffffffffffffffff",
    ),
    ("Control::MachineConfirmed", "0a"),
    ("Control::MachineDeclined", "0b"),
    ("Control::ShmCredit", "0c03fb2c01fc00002000"),
    (
        "Results",
        "0600010203010101030309fc00001000040104080502054dfbe803fc0000100006034efce0930400fc00001000",
    ),
    ("Request::Fetch", "00016e"),
    ("FetchReply::UnknownName", "01"),
    (
        "Control::Replica Local",
        "0103fb2c01feb6987674cc3feba968888bd48a6ae741000000c03f0000803e020701fd0000000000010000",
    ),
    (
        "Control::Replica Cluster",
        "0103fb2c01feb6987674cc3feba968888bd48a6ae741010000c03f0000803e020701fd0000000000010000",
    ),
    (
        "Control::Replica OncePerHost",
        "0103fb2c01feb6987674cc3feba968888bd48a6ae741020000c03f0000803e020701fd0000000000010000",
    ),
    (
        "Control::Replica UserDefined",
        "0103fb2c01feb6987674cc3feba968888bd48a6ae741030000c03f0000803e020701fd0000000000010000",
    ),
    ("ResultItem::Failed Panicked", "0207000170"),
    ("ResultItem::Failed Returned", "0207010172"),
    ("ResultItem::Failed HostFailed", "02070205"),
    (
        "ResultItem::Failed UnknownClass",
        "020703fe1cf7409de61465a768888bbb069c7e67",
    ),
    ("ResultItem::Failed Deserialize", "0207040164"),
    ("ResultItem::Failed NoGpu", "02070506"),
    ("ResultItem::Failed ReceivePanicked", "0207060171"),
    ("ResultItem::Failed CannotRun", "02070708"),
    ("ResultItem::Failed RdmaTooLarge", "020708fb2c01c8"),
    ("ResultItem::Failed InitiatorGone", "020709"),
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
    ("FetchReply::Refused UnknownName", "0200016e"),
    ("FetchReply::Refused NameTaken", "0201016e"),
    ("FetchReply::Refused InvalidName", "0202"),
    ("FetchReply::Refused MapConflict", "0203"),
    ("FetchReply::Refused Freed", "0204"),
    ("FetchReply::Refused CapacityExceeded", "0205fb2c0102"),
    ("FetchReply::Refused WrongElementType", "0206010a00"),
    ("FetchReply::Refused DimsMismatch", "020705090102"),
    ("FetchReply::Refused TooManyDimensions", "0209"),
    ("FetchReply::Refused MetadataImmutable", "020a"),
    ("FetchReply::Refused ForeignAllocation", "020b"),
    ("FetchReply::Refused InvalidHandle", "020c"),
    ("FetchReply::Refused Disconnected", "020d"),
    ("FetchReply::Refused Protocol", "020e0170"),
    ("FetchReply::Refused InsecurePath", "020f022f700172"),
    ("FetchReply::Refused SocketPathTooLong", "0210022f70c86b"),
    ("FetchReply::Refused AddressInUse", "0211022f70"),
    ("FetchReply::Refused Io CreateMemory", "02120016"),
    ("FetchReply::Refused Io InspectMemory", "02120116"),
    ("FetchReply::Refused Io Map", "02120216"),
    ("FetchReply::Refused Io SocketPath", "02120316"),
    ("FetchReply::Refused Io Bind", "02120416"),
    ("FetchReply::Refused Io Connect", "02120516"),
    ("FetchReply::Refused Io Send", "02120616"),
    ("FetchReply::Refused Io Receive", "02120716"),
    ("FetchReply::Refused Io Spawn", "02120816"),
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

//! fragmenta-wire: the messages between fragmenta hosts, their encoding and their framing.
//!
//! This crate owns the bytes on a stream between two hosts and nothing else: no sockets, no TLS
//! (that is `fragmenta-net`), no scheduling.
//!
//! - [`codec`]: serde messages to and from bytes with bincode 2 (standard configuration), always
//!   under an explicit size limit, rejecting trailing bytes.
//! - [`frame`]: a frame is a bincode header message plus a raw payload, written to and read from
//!   any `tokio` byte stream. Lengths are checked against [`FrameLimits`] before anything is
//!   allocated, so a peer cannot make a host allocate by lying about a length.
//! - [`handshake`]: the first exchange on every connection ([`Hello`](handshake::Hello) and
//!   [`HelloReply`](handshake::HelloReply)): protocol version, cluster name and host id.
//! - [`messages`]: the runtime's messages.

pub mod codec;
pub mod frame;
pub mod handshake;
pub mod messages;

pub use codec::{decode, encode, DecodeError, EncodeError};
pub use frame::{
    read_frame, read_header, read_payload_into, write_frame, write_frame_header, FrameError,
    FrameLimits, DEFAULT_MAX_HEADER, DEFAULT_MAX_PAYLOAD,
};

/// The version of the protocol spoken between hosts, exchanged in the
/// [handshake](handshake::Hello). Hosts with different versions refuse each other.
///
/// 2: `FailureReason` (in `ResultItem::Failed`) gained `NoGpu` and `ReceivePanicked`.
/// 3: `FailureReason` gained `CannotRun`, `RdmaTooLarge` and `InitiatorGone`;
/// `FetchReply::Refused` carries the owner's `FastIoError` instead of its text.
/// Also in 3: `Control::Reclaim` and `Control::Reclaimed` (work stealing across hosts).
/// Also in 3: the same-machine path: `Control::Machine`, `Control::MachineProof`,
/// `Control::MachineConfirmed`, `Control::MachineDeclined`, `Control::ShmCredit`,
/// `ResultItem::Shm` and `ResultItem::RdmaShm`.
pub const PROTOCOL_VERSION: u32 = 3;

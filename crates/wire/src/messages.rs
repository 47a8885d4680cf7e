//! Runtime messages between hosts.
//!
//! Every host pair shares one connection. Each side opens one uni stream for [`Control`]
//! messages (ordered: a replica always precedes the dispatches that use it), and a host running
//! fragments of a job opens one uni stream per job back to its initiator for that job's
//! [`Results`] (ordered: a fragment's chunks always precede its `Done`, so the initiator knows
//! it has every chunk when the fragment is done). Every uni stream starts with a
//! [`StreamHeader`] frame. Chunk bytes travel as the frame payload, not bincode-encoded.
//!
//! Requests that expect an answer ([`Request`]) open a bi stream each: the request is the first
//! frame, the answer comes back on the same stream.

use fragmenta_job::{ClassId, FailureReason, JobId, JobParams};
use serde::{Deserialize, Serialize};

/// A half-open range of fragment indices on the wire.
pub type WireRange = (u64, u64);

/// The first frame of every uni stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamHeader {
    /// The sender's control stream.
    Control,
    /// Results of one job, from a host running its fragments to its initiator.
    Results {
        /// The job.
        job: JobId,
    },
}

/// Control messages (both directions, on the control stream).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Liveness; any frame counts, this one is sent when nothing else is.
    Heartbeat,
    /// The job itself, serialized once by the initiator; the frame payload holds its bytes.
    /// The receiver deserializes it once into the replica all its fragments share.
    Replica {
        /// The job.
        job: JobId,
        /// Its type, looked up in the receiver's registry.
        class: ClassId,
        /// Its scheduling parameters, read once on the initiator.
        params: JobParams,
        /// Number of fragments of the job.
        count: u64,
    },
    /// Run these fragments of a job whose replica was sent before.
    Dispatch {
        /// The job.
        job: JobId,
        /// Fragment ranges.
        fragments: Vec<WireRange>,
        /// `(fragment, bytes)` for each dispatched fragment whose result goes to an RDMA
        /// buffer of that size on the initiator (`get_rdma_result_buffer`); the others use
        /// chunked results.
        rdma: Vec<(u64, u64)>,
    },
    /// Cancel a job: drop unstarted fragments (answered with `NotStarted`), call `cancel()` on
    /// the replica, let running fragments see `is_cancelled()`. Sent to a job's initiator by a
    /// host running its fragments: a fragment aborted the job (`Transaction::abort`).
    Cancel {
        /// The job.
        job: JobId,
    },
    /// The job is over: drop the replica.
    Release {
        /// The job.
        job: JobId,
    },
    /// The cluster is shutting down (sent by the primary host).
    Shutdown,
    /// Work stealing, from a job's initiator: give back those of these fragments that have not
    /// started (they are taken out of the queue and will not run here). Answered with
    /// [`Control::Reclaimed`] on the answering host's control stream.
    Reclaim {
        /// The job.
        job: JobId,
        /// Fragment ranges, ascending.
        fragments: Vec<WireRange>,
    },
    /// The answer to [`Control::Reclaim`], to the job's initiator: the fragments removed
    /// unstarted, a subset of those asked for (possibly none). Anything else is a protocol
    /// violation.
    Reclaimed {
        /// The job.
        job: JobId,
        /// Fragment ranges, ascending.
        fragments: Vec<WireRange>,
    },
    /// Where the sender's Fast I/O context is, sent once by each host when a link comes up: a
    /// peer on the same machine (same boot id) may hand result bytes over through it. The
    /// claim is proven, not trusted: the peer connects to `socket`, hands over an empty
    /// allocation named after `nonce` (see [`shm_proof_name`]) and answers
    /// [`Control::MachineProof`]; only when the sender finds that publication in its own
    /// context does it answer [`Control::MachineConfirmed`].
    Machine {
        /// The sender's `/proc/sys/kernel/random/boot_id` (at most [`MAX_BOOT_ID`] bytes;
        /// empty: the sender offers no same-machine path).
        boot_id: String,
        /// The Unix socket serving the sender's Fast I/O context (at most
        /// `fragmenta_fastio::MAX_SOCKET_PATH` bytes).
        socket: String,
        /// A random value for this link only.
        nonce: u128,
    },
    /// The answer to [`Control::Machine`] from a peer that handed the proof over.
    MachineProof {
        /// The nonce of the `Machine` message it answers.
        nonce: u128,
    },
    /// The proof was found: the receiver may hand result chunks over to the sender's context.
    MachineConfirmed,
    /// The answer to [`Control::Machine`] from a peer that hands nothing over: another
    /// machine, the path switched off there, or the socket could not be used. Results from it
    /// to the announcing host stay on QUIC.
    MachineDeclined,
    /// The initiator of `job` let go of `bytes` of chunks handed over to it by the receiver
    /// ([`ResultItem::Shm`]): the receiver may hand over that much more.
    ShmCredit {
        /// The job.
        job: JobId,
        /// Bytes (allocation sizes) returned.
        bytes: u64,
    },
}

/// Longest boot id a host accepts in [`Control::Machine`].
pub const MAX_BOOT_ID: usize = 64;

/// The name of the proof a peer hands over for [`Control::Machine`]'s `nonce`.
pub fn shm_proof_name(peer: fragmenta_job::HostId, nonce: u128) -> String {
    format!("fragmenta.shm-proof/{}/{nonce:032x}", peer.0)
}

/// The prefix of every name under which `sender` hands result chunks over.
pub fn shm_sender_prefix(sender: fragmenta_job::HostId) -> String {
    format!("fragmenta.shm/{}/", sender.0)
}

/// The name under which `sender` hands over chunk `id` of `job` ([`ResultItem::Shm`]).
pub fn shm_chunk_name(sender: fragmenta_job::HostId, job: JobId, id: u64) -> String {
    format!(
        "{}{}.{}/{id}",
        shm_sender_prefix(sender),
        job.initiator.0,
        job.seq
    )
}

/// One entry of a [`Results`] batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ResultItem {
    /// A part of chunk `seq` of `fragment`: `len` bytes of the payload, in item order. A chunk
    /// larger than one frame travels as several parts; `last` marks its final part.
    Chunk {
        /// Fragment index.
        fragment: u64,
        /// Chunk sequence number within the fragment.
        seq: u32,
        /// Bytes of this part.
        len: u64,
        /// Whether this is the chunk's last part.
        last: bool,
    },
    /// The fragment finished after `chunks` chunks.
    Done {
        /// Fragment index.
        fragment: u64,
        /// Number of chunks it sent.
        chunks: u32,
    },
    /// The fragment failed.
    Failed {
        /// Fragment index.
        fragment: u64,
        /// Why.
        reason: FailureReason,
    },
    /// The result of `fragment` for its initiator's RDMA buffer: `len` bytes, the whole frame
    /// payload (an `Rdma` item travels alone in its frame), to be read straight into the
    /// buffer. Counts as the fragment's chunk 0; its `Done` follows.
    Rdma {
        /// Fragment index.
        fragment: u64,
        /// Bytes of the result.
        len: u64,
    },
    /// Fragments dropped without starting (after a cancel).
    NotStarted {
        /// Fragment ranges.
        ranges: Vec<WireRange>,
    },
    /// Chunk `seq` of `fragment`, whole, handed over through the initiator's Fast I/O context
    /// (same machine, see [`Control::Machine`]): published there as
    /// [`shm_chunk_name`]`(sender, job, id)` in memory of `size` bytes, the chunk its first
    /// `len`. No payload bytes follow. A reference to a name that is missing, or to memory of
    /// another size, is a protocol violation of the sender.
    Shm {
        /// Fragment index.
        fragment: u64,
        /// Chunk sequence number within the fragment.
        seq: u32,
        /// The sender's id of the hand-over.
        id: u64,
        /// Bytes of the chunk.
        len: u64,
        /// Bytes of the memory (`len` rounded up to the sender's size class).
        size: u64,
    },
    /// The whole result of `fragment` for its initiator's RDMA buffer, handed over through the
    /// initiator's Fast I/O context like a [`ResultItem::Shm`] chunk (published as
    /// [`shm_chunk_name`]`(sender, job, id)` in memory of `size` bytes, the result its first
    /// `len`), in place of an [`ResultItem::Rdma`] frame's bytes. Travels alone in its frame,
    /// without payload; counts as the fragment's chunk 0; its `Done` follows. A result longer
    /// than the receiver's buffer, or a reference the receiver cannot resolve, is a protocol
    /// violation of the sender.
    RdmaShm {
        /// Fragment index.
        fragment: u64,
        /// The sender's id of the hand-over.
        id: u64,
        /// Bytes of the result.
        len: u64,
        /// Bytes of the memory (`len` rounded up to the sender's size class).
        size: u64,
    },
}

/// A batch of results of one job; the frame payload is the concatenation of the chunk parts'
/// bytes, in item order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The entries.
    pub items: Vec<ResultItem>,
}

impl Results {
    /// Total payload bytes the items announce, or `None` on overflow.
    pub fn payload_len(&self) -> Option<u64> {
        self.items.iter().try_fold(0u64, |acc, item| match item {
            ResultItem::Chunk { len, .. } | ResultItem::Rdma { len, .. } => acc.checked_add(*len),
            _ => Some(acc),
        })
    }
}

/// The first frame of every bi stream: a request answered on the same stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Copy the Fast I/O publication `name` of the receiving host. Answered by a
    /// [`FetchReply`] frame; after [`FetchReply::Found`] the publication's `size` raw bytes
    /// follow on the stream, outside any frame, so they can be read straight into the
    /// requester's mapped allocation.
    Fetch {
        /// The publication's name.
        name: String,
    },
}

/// The answer to [`Request::Fetch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FetchReply {
    /// The publication exists and is mapped for reading: `size` raw bytes follow.
    Found {
        /// Size in bytes.
        size: u64,
        /// Its element type and dimensions as published.
        metadata: fragmenta_fastio::Metadata,
    },
    /// Nothing is published under that name.
    UnknownName,
    /// The publication exists but cannot be read now (for instance it is mapped for writing).
    Refused {
        /// The Fast I/O error the owner's context gave.
        error: fragmenta_fastio::FastIoError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use fragmenta_job::HostId;

    #[test]
    fn messages_round_trip_through_frames() {
        let job = JobId {
            initiator: HostId(3),
            seq: 9,
        };
        let msgs = vec![
            Control::Heartbeat,
            Control::Dispatch {
                job,
                fragments: vec![(0, 10), (20, 21)],
                rdma: vec![(3, 4096)],
            },
            Control::Cancel { job },
            Control::Shutdown,
            Control::Reclaim {
                job,
                fragments: vec![(4, 8)],
            },
            Control::Reclaimed {
                job,
                fragments: vec![],
            },
        ];
        for m in msgs {
            let bytes = crate::encode(&m).unwrap();
            assert_eq!(crate::decode::<Control>(&bytes, 1 << 20).unwrap(), m);
        }
        let r = Results {
            items: vec![
                ResultItem::Chunk {
                    fragment: 1,
                    seq: 0,
                    len: 5,
                    last: true,
                },
                ResultItem::Done {
                    fragment: 1,
                    chunks: 1,
                },
                ResultItem::Failed {
                    fragment: 2,
                    reason: FailureReason::Panicked("x".into()),
                },
            ],
        };
        assert_eq!(r.payload_len(), Some(5));
        let bytes = crate::encode(&r).unwrap();
        assert_eq!(crate::decode::<Results>(&bytes, 1 << 20).unwrap(), r);
        let overflow = Results {
            items: vec![
                ResultItem::Chunk {
                    fragment: 0,
                    seq: 0,
                    len: u64::MAX,
                    last: true,
                },
                ResultItem::Chunk {
                    fragment: 0,
                    seq: 1,
                    len: 1,
                    last: true,
                },
            ],
        };
        assert_eq!(overflow.payload_len(), None);
    }
}

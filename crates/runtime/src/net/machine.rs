//! The same-machine path: finding out, per link and proven, that a peer is a process of this
//! machine that can reach this host's Fast I/O context, and handing result chunks over through
//! that context instead of sending their bytes on QUIC.
//!
//! Detection, on every link, each way (see `Control::Machine`):
//!
//! 1. each host announces its boot id, the socket of its Fast I/O context and a random nonce
//!    for this link, on the mutually authenticated control stream;
//! 2. a peer with the same boot id (and the path not switched off, [`SAME_MACHINE_VAR`])
//!    connects to that socket (the server refuses other users) and hands over an empty
//!    allocation named after the nonce, then answers `MachineProof`;
//! 3. the announcing host takes that publication out of its own context: found, with the
//!    nonce it sent on this link, the peer has proven that its socket connection reaches this
//!    context and belongs to this link. It answers `MachineConfirmed`, and from then on the
//!    peer hands result chunks of at least [`SHM_THRESHOLD`] bytes over to it.
//!
//! A peer on another machine (another boot id), one that cannot open the socket, a wrong
//! nonce or a missing proof: the link stays on QUIC, exactly as before.

use fragmenta_fastio::RemoteContext;
use fragmenta_job::HostId;
use fragmenta_wire::messages::{shm_proof_name, shm_sender_prefix, Control, MAX_BOOT_ID};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Set to `0` (or `off`, `false`, `no`) to force results between processes of one machine onto
/// QUIC: this host then offers no same-machine path and takes up none.
pub(crate) const SAME_MACHINE_VAR: &str = "FRAGMENTA_SAME_MACHINE";

/// Chunks of at least this many bytes are handed over through shared memory. Below it a chunk
/// travels batched with others in one QUIC frame, which costs less than the two round trips on
/// the Fast I/O socket a hand-over takes (about 20–50 µs each on a loaded two-core machine,
/// while 256 KiB of QUIC stream bytes cost about a millisecond between processes).
pub(crate) const SHM_THRESHOLD: usize = 256 << 10;

/// Memory for a hand-over is a whole number of this many bytes: chunks of similar sizes then
/// reuse each other's pooled memory (the pool reuses exact sizes only), and it is the least
/// memory the context pools.
pub(crate) const SHM_CLASS: u64 = 1 << 20;

/// Bytes of memory a sender may have handed over for one job and not yet had back
/// (`Control::ShmCredit`); beyond it chunks go on QUIC. Like the 32 MiB a sender queues for
/// QUIC: the initiator's receive pause (64 MiB a job) bounds what it holds, this bounds what
/// the sender put in its context meanwhile.
pub(crate) const SHM_WINDOW: u64 = 32 << 20;

/// The memory a chunk of `len` bytes is handed over in.
pub(crate) fn size_class(len: u64) -> u64 {
    len.div_ceil(SHM_CLASS).max(1).saturating_mul(SHM_CLASS)
}

/// Whether the same-machine path is on in this process ([`SAME_MACHINE_VAR`]).
pub(crate) fn enabled() -> bool {
    enabled_by(std::env::var(SAME_MACHINE_VAR).ok().as_deref())
}

fn enabled_by(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "off" | "false" | "no")
    )
}

/// This machine's boot id, if the kernel tells it.
pub(crate) fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && id.len() <= fragmenta_wire::messages::MAX_BOOT_ID).then(|| id.to_owned())
}

/// A random nonce for one link.
pub(crate) fn nonce() -> u128 {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u128::from_le_bytes(b);
    }
    // No urandom: still unpredictable to other processes (per-process random hash keys).
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    let mut h = s.build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let lo = h.finish();
    h.write_u64(lo);
    (u128::from(h.finish()) << 64) | u128::from(lo)
}

/// Why a peer's announcement is not taken up (logged; the link stays on QUIC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotSameMachine {
    /// The path is switched off here.
    Disabled,
    /// The peer offers none (empty boot id or socket).
    NotOffered,
    /// This host has no boot id to compare.
    NoBootId,
    /// Another boot id: another machine.
    OtherMachine,
}

/// Whether to try the peer's socket after its announcement.
pub(crate) fn should_try(
    enabled: bool,
    own_boot_id: Option<&str>,
    boot_id: &str,
    socket: &str,
) -> Result<(), NotSameMachine> {
    if !enabled {
        return Err(NotSameMachine::Disabled);
    }
    if boot_id.is_empty() || socket.is_empty() {
        return Err(NotSameMachine::NotOffered);
    }
    match own_boot_id {
        None => Err(NotSameMachine::NoBootId),
        Some(own) if own != boot_id => Err(NotSameMachine::OtherMachine),
        Some(_) => Ok(()),
    }
}

/// Whether a `MachineProof` proves the link: it names the nonce sent on this link, and the
/// proof named after it was found in this host's context.
pub(crate) fn proof_holds(sent: u128, answered: u128, found_in_context: bool) -> bool {
    sent == answered && found_in_context
}

/// Why a result reference to shared memory is refused: a protocol violation of the peer that
/// sent it (its link closes, nothing else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShmViolation {
    /// The peer never proved it reaches this host's context.
    #[error("a shared-memory chunk on a link not proven same-machine")]
    NotProven,
    /// The memory announced is not the size class of the chunk.
    #[error("a shared-memory chunk of {len} bytes in memory of {size} bytes (not its size class)")]
    WrongClass {
        /// Bytes of the chunk.
        len: u64,
        /// Bytes of memory announced.
        size: u64,
    },
    /// Nothing is published under the name the reference implies.
    #[error("a reference to a missing allocation {name:?}")]
    Missing {
        /// The name.
        name: String,
    },
    /// An RDMA result longer than the buffer the receiver offered for its fragment.
    #[error("an RDMA result of {len} bytes for a receive buffer of {capacity} bytes")]
    RdmaTooLarge {
        /// Bytes of the result.
        len: u64,
        /// Bytes of the receiver's buffer.
        capacity: u64,
    },
    /// The memory published there is of another size.
    #[error("a reference to memory of {found} bytes, announced {announced}")]
    WrongSize {
        /// Its size.
        found: u64,
        /// The size announced.
        announced: u64,
    },
    /// The memory cannot be mapped for reading (the peer holds a write map).
    #[error("handed-over memory cannot be read: {0}")]
    Unreadable(fragmenta_fastio::FastIoError),
    /// This host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// The checks on a reference before anything is looked up.
pub(crate) fn check_reference(proven: bool, len: u64, size: u64) -> Result<(), ShmViolation> {
    if !proven {
        return Err(ShmViolation::NotProven);
    }
    if size != size_class(len) {
        return Err(ShmViolation::WrongClass { len, size });
    }
    Ok(())
}

/// The same-machine state of one link.
pub(crate) struct ShmLink {
    /// The nonce this host announced on the link.
    pub(crate) nonce: u128,
    /// This host's client of the peer's context, once it handed the proof over.
    to_peer: OnceLock<RemoteContext>,
    /// The peer confirmed the proof: chunks for it are handed over.
    confirmed: AtomicBool,
    /// The peer proved it reaches this host's context.
    from_peer: AtomicBool,
    /// The peer answered this host's announcement (proof or decline).
    pub(crate) settled: AtomicBool,
}

impl ShmLink {
    pub(crate) fn new() -> ShmLink {
        ShmLink {
            nonce: nonce(),
            to_peer: OnceLock::new(),
            confirmed: AtomicBool::new(false),
            from_peer: AtomicBool::new(false),
            settled: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_client(&self, ctx: RemoteContext) {
        let _ = self.to_peer.set(ctx);
    }

    /// The peer confirmed; false if this host never handed a proof over.
    pub(crate) fn confirm(&self) -> bool {
        let ok = self.to_peer.get().is_some();
        if ok {
            self.confirmed.store(true, Ordering::Release);
        }
        ok
    }

    pub(crate) fn set_from_peer(&self) {
        self.from_peer.store(true, Ordering::Release);
    }

    /// The peer's context, when chunks for it are handed over.
    pub(crate) fn sender(&self) -> Option<&RemoteContext> {
        if self.confirmed.load(Ordering::Acquire) {
            self.to_peer.get()
        } else {
            None
        }
    }

    /// Whether the peer proved it reaches this host's context (it may reference memory it
    /// handed over here).
    pub(crate) fn peer_proven(&self) -> bool {
        self.from_peer.load(Ordering::Acquire)
    }

    /// Whether the link is same-machine in either direction.
    pub(crate) fn same_machine(&self) -> bool {
        self.confirmed.load(Ordering::Acquire) || self.from_peer.load(Ordering::Acquire)
    }
}

/// Counters of the same-machine path on one host.
#[derive(Default)]
pub(crate) struct ShmCounters {
    pub(crate) chunks_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) chunks_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) rdma_received: AtomicU64,
    pub(crate) rdma_bytes_received: AtomicU64,
    pub(crate) rdma_sent: AtomicU64,
    pub(crate) rdma_bytes_sent: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
}

/// What a host's same-machine path did so far ([`crate::Cluster::same_machine`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SameMachineStats {
    /// Peers whose link is proven same-machine (either way), ascending.
    pub peers: Vec<HostId>,
    /// Result chunks received as shared memory handed over by a peer.
    pub chunks_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Result chunks this host handed over to an initiator.
    pub chunks_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Whole RDMA results received as shared memory handed over by a peer (copied into the
    /// buffer the job offered); not counted in `chunks_received`.
    pub rdma_received: u64,
    /// Their bytes.
    pub rdma_bytes_received: u64,
    /// Whole RDMA results this host handed over to an initiator.
    pub rdma_sent: u64,
    /// Their bytes.
    pub rdma_bytes_sent: u64,
    /// Publications withdrawn from this host's context because the host that handed them over
    /// was declared down before it referenced them.
    pub reclaimed: u64,
}

impl super::Net {
    /// Announces this host's context to `peer` (a link just came up).
    pub(super) fn announce_machine(&self, peer: HostId) {
        let Some(link) = self.link(peer) else {
            return;
        };
        let socket = self
            .node
            .upgrade()
            .and_then(|n| n.fastio_socket_path())
            .and_then(|p| p.to_str().map(ToOwned::to_owned));
        let (boot_id, socket) = match (self.same_machine, &self.boot_id, socket) {
            (true, Some(b), Some(s)) => (b.clone(), s),
            _ => (String::new(), String::new()),
        };
        let _ = link.control.send(super::Outgoing::Msg(Control::Machine {
            boot_id,
            socket,
            nonce: link.shm.nonce,
        }));
    }

    /// `peer` announced its context: if it is on this machine, hand the proof over (on the
    /// blocking pool: the socket is blocking) and answer.
    pub(super) fn on_machine(&self, peer: HostId, boot_id: String, socket: String, nonce: u128) {
        if boot_id.len() > MAX_BOOT_ID || socket.len() > fragmenta_fastio::MAX_SOCKET_PATH {
            return self.violated(peer, "a machine announcement beyond its bounds".into());
        }
        let Some(link) = self.link(peer) else {
            return;
        };
        if let Err(why) = should_try(
            self.same_machine,
            self.boot_id.as_deref(),
            &boot_id,
            &socket,
        ) {
            tracing::debug!(host = %self.host, %peer, ?why, "results from this host to the peer use QUIC");
            let _ = link
                .control
                .send(super::Outgoing::Msg(Control::MachineDeclined));
            return;
        }
        let host = self.host;
        self.handle.spawn_blocking(move || {
            let proven = RemoteContext::connect(&socket).and_then(|ctx| {
                ctx.hand_over(&shm_proof_name(host, nonce), &[], 0)?;
                Ok(ctx)
            });
            match proven {
                Ok(ctx) => {
                    link.shm.set_client(ctx);
                    let _ = link
                        .control
                        .send(super::Outgoing::Msg(Control::MachineProof { nonce }));
                }
                Err(e) => {
                    tracing::info!(%host, %peer, error = %e, "same boot id, but the peer's Fast I/O socket cannot be used: results use QUIC");
                    let _ = link
                        .control
                        .send(super::Outgoing::Msg(Control::MachineDeclined));
                }
            }
        });
    }

    /// `peer` says it handed the proof for `nonce` over: check it in this host's context.
    pub(super) fn on_machine_proof(&self, peer: HostId, nonce: u128) {
        let (Some(link), Some(node)) = (self.link(peer), self.node.upgrade()) else {
            return;
        };
        // Answered (whatever the outcome): the proof is out of this host's context by the
        // time a join waiting for it returns.
        let _settle = Settle(self, &link);
        let found =
            nonce == link.shm.nonce && node.fastio.take(&shm_proof_name(peer, nonce)).is_ok();
        if proof_holds(link.shm.nonce, nonce, found) {
            link.shm.set_from_peer();
            tracing::info!(host = %self.host, %peer, "peer proven on this machine: its results come through shared memory");
            let _ = link
                .control
                .send(super::Outgoing::Msg(Control::MachineConfirmed));
        } else {
            tracing::warn!(host = %self.host, %peer, "same-machine proof does not hold: results from it use QUIC");
            node.fastio.withdraw_prefix(&shm_proof_prefix(peer));
        }
    }

    /// `peer` hands nothing over to this host.
    pub(super) fn on_machine_declined(&self, peer: HostId) {
        if let Some(link) = self.link(peer) {
            self.settle(&link);
        }
    }

    /// The peer answered this host's announcement.
    pub(super) fn settle(&self, link: &super::Link) {
        link.shm.settled.store(true, Ordering::Release);
        let _links = self.links.lock();
        self.links_changed.notify_all();
    }

    /// `peer` found this host's proof: chunks for it are handed over from now on.
    pub(super) fn on_machine_confirmed(&self, peer: HostId) {
        if let Some(link) = self.link(peer) {
            if link.shm.confirm() {
                tracing::info!(host = %self.host, %peer, "on the peer's machine: results to it go through shared memory");
            }
        }
    }

    /// Withdraws what `peer` handed over to this host and never referenced.
    pub(super) fn reclaim_handed_over(&self, peer: HostId) {
        if let Some(node) = self.node.upgrade() {
            let n = node.fastio.withdraw_prefix(&shm_sender_prefix(peer))
                + node.fastio.withdraw_prefix(&shm_proof_prefix(peer));
            if n > 0 {
                self.shm.reclaimed.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(host = %self.host, %peer, publications = n, "reclaimed shared memory a lost host handed over");
            }
        }
    }

    /// A protocol violation by `peer` outside a result stream: its link closes.
    pub(super) fn violated(&self, peer: HostId, detail: String) {
        tracing::error!(host = %self.host, %peer, %detail, "peer broke the protocol");
        if let Some(link) = self.link(peer) {
            link.conn.close(
                fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                b"protocol violation",
            );
        }
        if let Some(node) = self.node.upgrade() {
            node.with_proto(|p| p.peer_violated(peer, detail));
        }
    }
}

/// Settles a link's detection when dropped (after the proof was taken out of the context).
struct Settle<'a>(&'a super::Net, &'a super::Link);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.0.settle(self.1);
    }
}

/// The prefix of the proofs `peer` hands over.
fn shm_proof_prefix(peer: HostId) -> String {
    format!("fragmenta.shm-proof/{}/", peer.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_boot_id_with_the_path_on_is_tried() {
        assert_eq!(should_try(true, Some("b1"), "b1", "/s"), Ok(()));
        assert_eq!(
            should_try(true, Some("b1"), "b2", "/s"),
            Err(NotSameMachine::OtherMachine)
        );
        assert_eq!(
            should_try(false, Some("b1"), "b1", "/s"),
            Err(NotSameMachine::Disabled)
        );
        assert_eq!(
            should_try(true, Some("b1"), "", "/s"),
            Err(NotSameMachine::NotOffered)
        );
        assert_eq!(
            should_try(true, Some("b1"), "b1", ""),
            Err(NotSameMachine::NotOffered)
        );
        assert_eq!(
            should_try(true, None, "b1", "/s"),
            Err(NotSameMachine::NoBootId)
        );
    }

    #[test]
    fn a_proof_holds_only_with_the_links_nonce_and_the_publication_found() {
        assert!(proof_holds(7, 7, true));
        assert!(!proof_holds(7, 8, true), "a wrong nonce");
        assert!(!proof_holds(7, 7, false), "nothing handed over");
    }

    #[test]
    fn a_reference_needs_a_proven_link_and_the_size_class_of_its_chunk() {
        assert_eq!(check_reference(true, 1000, SHM_CLASS), Ok(()));
        assert_eq!(
            check_reference(false, 1000, SHM_CLASS),
            Err(ShmViolation::NotProven)
        );
        assert_eq!(
            check_reference(true, 1000, 2 * SHM_CLASS),
            Err(ShmViolation::WrongClass {
                len: 1000,
                size: 2 * SHM_CLASS
            })
        );
        assert_eq!(
            check_reference(true, SHM_CLASS + 1, SHM_CLASS),
            Err(ShmViolation::WrongClass {
                len: SHM_CLASS + 1,
                size: SHM_CLASS
            })
        );
    }

    #[test]
    fn the_switch_and_the_size_classes() {
        assert!(enabled_by(None));
        assert!(enabled_by(Some("1")));
        for off in ["0", "off", "FALSE", " no "] {
            assert!(!enabled_by(Some(off)), "{off}");
        }
        assert_eq!(size_class(1), SHM_CLASS);
        assert_eq!(size_class(SHM_CLASS), SHM_CLASS);
        assert_eq!(size_class(SHM_CLASS + 1), 2 * SHM_CLASS);
        assert_eq!(size_class(0), SHM_CLASS);
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn a_link_hands_over_only_once_confirmed_after_its_own_proof() {
        let link = ShmLink::new();
        assert!(!link.confirm(), "no proof handed over: nothing to confirm");
        assert!(link.sender().is_none() && !link.same_machine());
        link.set_from_peer();
        assert!(link.same_machine() && link.peer_proven() && link.sender().is_none());
    }
}

//! Identifier newtypes, each made one way: a [`HostId`] from its number (`HostId(3)`, the
//! number the cluster configuration gives the host), a [`JobId`] from its two fields (the
//! runtime numbers jobs; users read them), a [`ClassId`] with [`ClassId::from_name`]. No other
//! constructors or conversions exist.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies one host (one process of the runtime) in a cluster.
///
/// Mirrors the `Uint32` host ids DiCE uses in `assign_fragments_to_hosts`. Ids come from the
/// cluster configuration (or the launcher) and are never reused: a restarted process joins as a
/// new host with a new id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostId(pub u32);

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host-{}", self.0)
    }
}

/// Identifies one job execution cluster-wide: the initiating host plus a per-host sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId {
    /// The host that initiated the job.
    pub initiator: HostId,
    /// Sequence number of the job on its initiator, starting at 1.
    pub seq: u64,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}.{}", self.initiator.0, self.seq)
    }
}

/// The stable identifier of a job type, used to find the type on a remote host.
///
/// Mirrors DiCE's `get_class_id()` (a UUID there). Made one way, [`ClassId::from_name`]: give
/// each job type a name once and never change it (`#[fragmenta::job]` uses the type's module
/// path and name unless told otherwise). [`get`](Self::get) reads the 128-bit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClassId(u128);

impl ClassId {
    /// A class id derived from a name with 128-bit FNV-1a; stable across builds and platforms.
    pub const fn from_name(name: &str) -> ClassId {
        let bytes = name.as_bytes();
        let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
        let prime: u128 = 0x0000000001000000000000000000013B;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u128;
            hash = hash.wrapping_mul(prime);
            i += 1;
        }
        ClassId(hash)
    }

    /// The 128-bit value, as it travels on the wire.
    pub const fn get(self) -> u128 {
        self.0
    }
}

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

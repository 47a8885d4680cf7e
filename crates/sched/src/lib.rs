//! The fragmenta scheduler as a sans-IO state machine.
//!
//! No threads, no sockets, no clock reads: events go in, actions come out, and the same inputs
//! always give the same outputs (every map is ordered). The runtime drives it with real
//! networking and worker threads; tests and the deterministic simulation drive it directly.
//!
//! - [`cluster::Scheduler`]: on the initiating host, places fragments on hosts by scheduling
//!   mode, reassigns CLUSTER fragments of failed hosts, and delivers result chunks exactly once
//!   and in order when the job asks for it.
//! - [`host::HostQueue`]: on every host, admits waiting fragments of all jobs by priority, CPU
//!   and GPU load and thread limit, in blocks for one worker each.
//! - [`sim`]: a deterministic simulation of a cluster of hosts built from both, with seeded
//!   crashes, restarts, partitions, delays and duplicates, checking the scheduling contract
//!   after every step.

pub mod cluster;
pub mod host;
pub mod protocol;
#[cfg(feature = "sim")]
pub mod sim;

pub use cluster::{Action, HostInfo, JobSpec, Outcome, Scheduler, Weight};
pub use host::{Block, HostQueue, SubmitError, WorkKey, WorkSpec};

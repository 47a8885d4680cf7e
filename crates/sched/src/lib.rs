//! The fragmenta scheduler and the per-host protocol, as sans-IO state machines.
//!
//! No threads, no sockets, no clock reads: events go in, actions come out, and the same inputs
//! always give the same outputs (every map is ordered). The protocol between hosts exists here
//! once: the runtime (`fragmenta-runtime`) drives it with real networking, worker threads and
//! a timer, and the deterministic simulation drives the same code on a fake network.
//!
//! - [`protocol::Protocol`]: everything one host decides: its jobs' [`Scheduler`], the replicas
//!   of other hosts' jobs and their life cycle, the rules and bounds of result streams,
//!   backpressure on the initiator, checks of everything a peer announces, heartbeats and
//!   failure detection.
//! - [`cluster::Scheduler`]: on the initiating host, places fragments on hosts by scheduling
//!   mode, reassigns CLUSTER fragments of failed hosts, and delivers result chunks exactly once
//!   and in order when the job asks for it.
//! - [`host::HostQueue`]: on every host, admits waiting fragments of all jobs by priority, CPU
//!   and GPU load and thread limit, in blocks for one worker each.
//! - `sim` (with the `sim` feature): a deterministic simulation of a cluster of hosts, each the
//!   real [`protocol::Protocol`] around a simulated worker pool, with seeded crashes, restarts,
//!   partitions, delays and duplicates, checking the scheduling contract after every step.

pub mod cluster;
pub mod host;
pub mod protocol;
#[cfg(feature = "sim")]
pub mod sim;

pub use cluster::{Action, HostInfo, JobSpec, Outcome, ReclaimViolation, Scheduler, Weight};
pub use host::{Block, HostQueue, SubmitError, WorkKey, WorkSpec};

//! Membership events: hosts joining this host's view of the cluster and being declared down.
//!
//! A program observes them with [`Cluster::host_events`](crate::Cluster::host_events), for
//! example to measure how long failure detection takes or to start a replacement host.

use fragmenta_job::HostId;
use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What happened to a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEventKind {
    /// A link to the host is up and the scheduler counts it: jobs started from now on may
    /// place fragments there.
    Up,
    /// The host was declared down: its CLUSTER fragments are reassigned, its fragments of other
    /// modes failed with `HostFailed`, and the jobs it initiated are abandoned here. Its id is
    /// retired: a process that later presents it is refused (host ids are never reused).
    Down {
        /// Why: no heartbeat within the failure timeout, the connection closed, …
        reason: String,
    },
}

/// A change of membership, as this host saw it.
#[derive(Clone, Debug)]
pub struct HostEvent {
    /// The host concerned.
    pub host: HostId,
    /// What happened.
    pub kind: HostEventKind,
    /// When this host decided it (monotonic clock of this process).
    pub at: Instant,
    /// The same moment on the wall clock, comparable with times taken by other processes of
    /// the same machine (for example the moment a test killed the host).
    pub wall: SystemTime,
}

/// The membership events of one host, in the order it decided them, from the moment
/// [`Cluster::host_events`](crate::Cluster::host_events) was called. Events wait in an
/// unbounded queue until received; once the cluster handle is gone (or for the embedded
/// cluster, which has no other host) the receiving methods return `None` when the queue is
/// empty.
#[derive(Debug)]
pub struct HostEvents {
    rx: crossbeam_channel::Receiver<HostEvent>,
}

impl HostEvents {
    /// Waits for the next event; `None` once no event can come any more.
    pub fn recv(&self) -> Option<HostEvent> {
        self.rx.recv().ok()
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<HostEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<HostEvent> {
        self.rx.try_recv().ok()
    }
}

impl Iterator for HostEvents {
    type Item = HostEvent;

    fn next(&mut self) -> Option<HostEvent> {
        self.recv()
    }
}

/// The subscribers of one host's membership events.
#[derive(Default)]
pub(crate) struct Membership {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    subscribers: Vec<crossbeam_channel::Sender<HostEvent>>,
    /// Set by [`Membership::close`]: nothing is told any more.
    closed: bool,
}

impl Membership {
    /// A new subscription (one that never receives anything once closed).
    pub(crate) fn subscribe(&self) -> HostEvents {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut state = self.state.lock();
        if !state.closed {
            state.subscribers.push(tx);
        }
        HostEvents { rx }
    }

    /// A subscription that never receives anything (a cluster without network).
    pub(crate) fn closed() -> HostEvents {
        let (_, rx) = crossbeam_channel::unbounded();
        HostEvents { rx }
    }

    /// Tells every subscriber; forgets those that dropped their [`HostEvents`]. Nothing once
    /// closed.
    pub(crate) fn emit(&self, host: HostId, kind: HostEventKind) {
        let event = HostEvent {
            host,
            kind,
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        self.state
            .lock()
            .subscribers
            .retain(|s| s.send(event.clone()).is_ok());
    }

    /// Ends every subscription (their queued events can still be received) and every later
    /// one: after a clean shutdown, the links going down are no news.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.subscribers.clear();
    }
}

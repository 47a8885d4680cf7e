//! Links between hosts: connecting and accepting (mutual TLS and the hello handshake),
//! refusing ids that are retired or already connected, and closing a host declared down.

use super::{info_of, Link, Net, Outgoing, CLOSE_TIMEOUT};
use crate::membership::HostEventKind;
use crate::ServeError;
use fragmenta_job::{HostId, JobId};
use fragmenta_net::handshake::{accept_handshake, connect_handshake, CLOSE_PROTOCOL_ERROR};
use fragmenta_net::Connection;
use fragmenta_sched::protocol::Down;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// The peer's reason when `e` is a refusal (a rejected handshake, or a connection the peer
/// closed as rejected) rather than a peer that cannot be reached.
fn rejection(e: &fragmenta_net::ConnectError) -> Option<String> {
    use fragmenta_net::{ConnectError, ConnectionError};
    match e {
        ConnectError::Rejected(reason) => Some(reason.to_string()),
        ConnectError::Connection(ConnectionError::ClosedByPeer { code, reason })
            if *code == u64::from(fragmenta_net::handshake::CLOSE_REJECTED) =>
        {
            Some(String::from_utf8_lossy(reason).into_owned())
        }
        _ => None,
    }
}

impl Net {
    pub(super) async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let conn = match incoming {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(host = %self.host, error = %e, "refused an incoming connection");
                    continue;
                }
            };
            // Ids are never reused: a process presenting the id of a host declared dead, or of
            // a host still connected, is refused before the handshake, with the reason.
            if let Some(reason) = self.refusal(conn.peer()) {
                tracing::warn!(host = %self.host, peer = %conn.peer(), %reason, "refusing a host");
                conn.close(fragmenta_net::handshake::CLOSE_REJECTED, reason.as_bytes());
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                match accept_handshake(conn, me.config.name()).await {
                    Ok((conn, hello)) if me.config.host(hello.host).is_some() => {
                        me.register_link(conn).await
                    }
                    Ok((conn, hello)) => {
                        tracing::warn!(host = %me.host, peer = %hello.host, "peer is not in the configuration");
                        conn.close(fragmenta_net::handshake::CLOSE_REJECTED, b"unknown host");
                    }
                    Err(e) => tracing::warn!(host = %me.host, error = %e, "handshake failed"),
                }
            });
        }
    }

    pub(super) async fn connect_loop(self: Arc<Self>, peer: HostId, addr: std::net::SocketAddr) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.state.lock().is_some() || self.links.lock().contains_key(&peer) {
                return;
            }
            match connect_handshake(&self.endpoint, addr, peer, self.hello()).await {
                Ok(conn) => {
                    self.register_link(conn).await;
                    return;
                }
                Err(e) => {
                    if let Some(reason) = rejection(&e) {
                        // Refused, not unreachable: retrying cannot help. Joining fails with
                        // the peer's reason.
                        tracing::error!(host = %self.host, %peer, %reason, "refused by a peer");
                        self.refused.lock().get_or_insert((peer, reason));
                        let _links = self.links.lock();
                        self.links_changed.notify_all();
                        return;
                    }
                    tracing::debug!(host = %self.host, %peer, error = %e, "connect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Why a connection from or to `peer` must be refused, if it must.
    fn refusal(&self, peer: HostId) -> Option<String> {
        if self.retired.lock().contains(&peer) {
            Some(format!(
                "{peer} was declared dead by {}; host ids are never reused: start the process with a new id",
                self.host
            ))
        } else if self.links.lock().contains_key(&peer) {
            Some(format!(
                "{peer} is already connected to {}; host ids are never reused: start the process with a new id",
                self.host
            ))
        } else {
            None
        }
    }

    async fn register_link(self: &Arc<Self>, conn: Connection) {
        let peer = conn.peer();
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut links = self.links.lock();
            if links.contains_key(&peer) || self.retired.lock().contains(&peer) {
                let reason = if links.contains_key(&peer) {
                    "already connected"
                } else {
                    "declared dead; host ids are never reused"
                };
                conn.close(fragmenta_net::handshake::CLOSE_REJECTED, reason.as_bytes());
                return;
            }
            self.met.lock().insert(peer);
            links.insert(
                peer,
                Arc::new(Link {
                    conn: conn.clone(),
                    control: tx,
                    ready: std::sync::atomic::AtomicBool::new(false),
                    shm: Arc::new(super::machine::ShmLink::new()),
                }),
            );
        }
        tracing::info!(host = %self.host, %peer, "link up");
        // The protocol knows the peer before anything from it is read.
        let Some(node) = self.node.upgrade() else {
            return;
        };
        node.link_up(peer, info_of(&self.config, peer));
        drop(node);
        let span = tracing::info_span!("link", host = %self.host, peer = %peer);
        tokio::spawn(
            self.clone()
                .control_writer(conn.clone(), rx)
                .instrument(span.clone()),
        );
        tokio::spawn(
            self.clone()
                .stream_acceptor(conn.clone())
                .instrument(span.clone()),
        );
        tokio::spawn(self.clone().request_acceptor(conn.clone()).instrument(span));
        self.announce_machine(peer);
        let me = self.clone();
        tokio::spawn(async move {
            let reason = conn.closed().await;
            me.link_lost(peer, &reason.to_string());
        });
        let up = {
            let links = self.links.lock();
            let link = links.get(&peer);
            if let Some(link) = link {
                link.ready.store(true, std::sync::atomic::Ordering::Release);
            }
            link.is_some()
        };
        if up {
            self.membership.emit(peer, HostEventKind::Up);
        }
        self.links_changed.notify_all();
    }

    /// The connection to `peer` failed or closed: the protocol declares it down.
    pub(super) fn link_lost(&self, peer: HostId, reason: &str) {
        if let Some(node) = self.node.upgrade() {
            node.link_down(peer, reason);
        }
    }

    /// The protocol declared `peer` down: its connection closes, its id is retired, subscribers
    /// hear of it. (Its fragments and the jobs it initiated were handled by the protocol.)
    pub(super) fn declare_down(&self, peer: HostId, why: Down) {
        let Some(link) = self.links.lock().remove(&peer) else {
            return;
        };
        // The id is retired before anyone hears of the loss: a process presenting it again
        // is refused from now on.
        self.retired.lock().insert(peer);
        let reason = why.to_string();
        match &why {
            Down::Violation(detail) => {
                tracing::error!(host = %self.host, %peer, %detail, "peer broke the protocol; closing its connection");
                link.conn.close(CLOSE_PROTOCOL_ERROR, b"protocol violation");
            }
            _ => link.conn.close(CLOSE_TIMEOUT, b"link lost"),
        }
        // Links closing while this host shuts down (it was told to, or it is the primary
        // telling the others) are the shutdown itself, not a host failing.
        let shutting_down = self.shutdown.state.lock().is_some();
        if shutting_down {
            tracing::debug!(host = %self.host, %peer, %reason, "link closed during shutdown");
        } else {
            tracing::warn!(host = %self.host, %peer, %reason, "host down");
        }
        self.membership.emit(peer, HostEventKind::Down { reason });
        // What it handed over to this host and never referenced (it died mid-transfer) goes
        // back to the context; what was referenced is the protocol's to deliver or drop.
        self.reclaim_handed_over(peer);
        self.gates.lock().retain(|(from, _), _| *from != peer);
        if peer == self.primary && !shutting_down {
            self.shutdown.set(Err(ServeError::PrimaryLost(peer)));
        }
        self.links_changed.notify_all();
    }

    pub(super) fn heartbeat(&self, host: HostId) {
        if let Some(link) = self.link(host) {
            let _ = link
                .control
                .send(Outgoing::Msg(fragmenta_wire::messages::Control::Heartbeat));
        }
    }

    /// Stops or resumes reading the result stream of `job` from `host`.
    pub(super) fn set_paused(&self, job: JobId, host: HostId, paused: bool) {
        let mut gates = self.gates.lock();
        if paused {
            gates.entry((host, job)).or_default().pause();
        } else if let Some(gate) = gates.remove(&(host, job)) {
            gate.resume();
        }
    }
}

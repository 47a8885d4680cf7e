//! The control stream each way between two hosts, and the acceptor that tells incoming streams
//! apart by their header.

use super::{Net, Outgoing};
use crate::node::ReplicaBody;
use fragmenta_net::handshake::close_on_frame_error;
use fragmenta_net::{Connection, RecvStream};
use fragmenta_sched::protocol::Message;
use fragmenta_wire::messages::{Control, StreamHeader};
use fragmenta_wire::{read_header, write_frame};
use std::sync::Arc;
use tokio::sync::mpsc;

impl Net {
    /// Writes what the protocol sends `conn`'s peer on this host's control stream.
    pub(super) async fn control_writer(
        self: Arc<Self>,
        conn: Connection,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => return self.link_lost(conn.peer(), &e.to_string()),
        };
        if let Err(e) = write_frame(&mut stream, &StreamHeader::Control, &[]).await {
            return self.link_lost(conn.peer(), &e.to_string());
        }
        while let Some(msg) = rx.recv().await {
            let result = match msg {
                Outgoing::Msg(m) => write_frame(&mut stream, &m, &[]).await,
                Outgoing::WithPayload(m, p) => write_frame(&mut stream, &m, &p).await,
            };
            if let Err(e) = result {
                return self.link_lost(conn.peer(), &e.to_string());
            }
        }
        let _ = stream.finish();
    }

    pub(super) async fn stream_acceptor(self: Arc<Self>, conn: Connection) {
        while let Ok(mut stream) = conn.accept_uni().await {
            let me = self.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                match read_header::<_, StreamHeader>(&mut stream, &me.limits).await {
                    Ok(Some((StreamHeader::Control, 0))) => me.control_reader(conn, stream).await,
                    Ok(Some((StreamHeader::Results { job }, 0))) if job.initiator == me.host => {
                        me.results_reader(conn, stream, job).await
                    }
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        tracing::error!(host = %me.host, peer = %conn.peer(), "unexpected stream header");
                        conn.close(
                            fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                            b"bad stream header",
                        );
                    }
                    Err(e) => close_on_frame_error(&conn, &e),
                }
            });
        }
    }

    pub(super) async fn read_payload(
        &self,
        stream: &mut RecvStream,
        len: u64,
    ) -> Result<Vec<u8>, fragmenta_wire::FrameError> {
        // The length was checked against the limits; read without zero-filling first. The
        // vector grows as bytes arrive, so a peer announcing a large payload and sending less
        // makes this host allocate what arrived, not what was announced.
        use tokio::io::AsyncReadExt;
        const INITIAL: u64 = 1 << 20;
        let mut payload = Vec::with_capacity(len.min(INITIAL) as usize);
        let got = stream
            .take(len)
            .read_to_end(&mut payload)
            .await
            .map_err(|e| fragmenta_wire::FrameError::Io {
                kind: e.kind(),
                reason: e.to_string(),
            })?;
        if got as u64 != len {
            return Err(fragmenta_wire::FrameError::Truncated);
        }
        Ok(payload)
    }

    async fn control_reader(self: Arc<Self>, conn: Connection, mut stream: RecvStream) {
        let peer = conn.peer();
        loop {
            let (msg, len) = match read_header::<_, Control>(&mut stream, &self.limits).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            if len > 0 {
                // A large payload (a replica) may take a while: the peer is alive meanwhile.
                if let Some(node) = self.node.upgrade() {
                    node.heard_from(peer);
                }
            }
            let payload = match self.read_payload(&mut stream, len).await {
                Ok(p) => p,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            let msg = match msg {
                Control::Heartbeat => Message::Heartbeat,
                Control::Replica {
                    job,
                    class,
                    params,
                    count,
                } => Message::Replica {
                    job,
                    params,
                    count,
                    body: ReplicaBody {
                        class,
                        bytes: payload,
                        count,
                    },
                },
                Control::Dispatch {
                    job,
                    fragments,
                    rdma,
                } => {
                    if !rdma.is_empty() {
                        self.expect_rdma(job, rdma);
                    }
                    Message::Dispatch { job, fragments }
                }
                Control::Cancel { job } => Message::Cancel { job },
                Control::Release { job } => Message::Release { job },
                Control::Reclaim { job, fragments } => Message::Reclaim { job, fragments },
                Control::Reclaimed { job, fragments } => Message::Reclaimed { job, fragments },
                Control::Shutdown if peer == self.primary => {
                    tracing::info!(host = %self.host, %peer, "shutdown requested");
                    self.shutdown.set(Ok(()));
                    // A clean shutdown: the links closing next are not hosts going down.
                    self.membership.close();
                    continue;
                }
                Control::Shutdown => {
                    // Only the primary stops the cluster; any other host asking is ignored.
                    tracing::error!(host = %self.host, %peer, "shutdown requested by a host that is not the primary; ignored");
                    continue;
                }
                Control::Machine {
                    boot_id,
                    socket,
                    nonce,
                } => {
                    self.on_machine(peer, boot_id, socket, nonce);
                    continue;
                }
                Control::MachineProof { nonce } => {
                    self.on_machine_proof(peer, nonce);
                    continue;
                }
                Control::MachineConfirmed => {
                    self.on_machine_confirmed(peer);
                    continue;
                }
                Control::MachineDeclined => {
                    self.on_machine_declined(peer);
                    continue;
                }
                Control::ShmCredit { job, bytes } => {
                    self.shm_credit(job, bytes);
                    continue;
                }
            };
            let Some(node) = self.node.upgrade() else {
                return;
            };
            node.on_message(peer, msg);
        }
    }
}

//! Result streams: a host running fragments of another host's job writes their results back
//! on one stream per job; the initiator reads them, reassembles chunk parts (bounded, off the
//! protocol's lock) and feeds whole entries to the protocol. A stream the protocol paused is not
//! read until it is resumed: QUIC flow control then holds the sender, whose fragments wait.
//! Between processes of one machine a large chunk's bytes are handed over through the
//! initiator's Fast I/O context and the stream carries a reference (`ResultItem::Shm`, see
//! [`super::machine`]), resolved here into a chunk read in place.

use super::machine::{check_reference, ShmViolation};
use super::replicas::{Out, RemoteJob};
use super::Net;
use crate::node::{Payload, ShmChunk};
use fragmenta_job::{HostId, JobId, RdmaBuffer};
use fragmenta_net::handshake::close_on_frame_error;
use fragmenta_net::rdma::RdmaPath;
use fragmenta_net::{Connection, RecvStream, SendStream};
use fragmenta_sched::protocol::{ResultEvent, ResultStream};
use fragmenta_wire::messages::{Control, ResultItem, Results, StreamHeader};
use fragmenta_wire::{read_header, write_frame};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, Notify};

/// Largest chunk part sent in one frame; larger chunks travel as several parts.
const MAX_PART: usize = 16 << 20;
/// Small chunks are batched into one frame up to this many payload bytes or items.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_ITEMS: usize = 4096;

/// Whether a result stream may be read.
#[derive(Default)]
pub(super) struct Gate {
    paused: AtomicBool,
    resumed: Notify,
}

impl Gate {
    pub(super) fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub(super) fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let resumed = self.resumed.notified();
            if !self.paused.load(Ordering::Acquire) {
                return;
            }
            resumed.await;
        }
    }
}

impl Net {
    /// Waits while the protocol has the stream of `job` from `peer` paused.
    async fn gate(&self, peer: HostId, job: JobId) {
        let gate = self.gates.lock().get(&(peer, job)).cloned();
        if let Some(gate) = gate {
            gate.wait().await;
        }
    }

    fn broke(&self, conn: &Connection, job: JobId, detail: String) {
        let peer = conn.peer();
        tracing::error!(host = %self.host, %peer, %job, %detail, "bad result stream");
        conn.close(
            fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
            b"bad result stream",
        );
        if let Some(node) = self.node.upgrade() {
            node.with_proto(|p| p.peer_violated(peer, format!("result stream of {job}: {detail}")));
        }
    }

    pub(super) async fn results_reader(
        self: Arc<Self>,
        conn: Connection,
        mut stream: RecvStream,
        job: JobId,
    ) {
        let peer = conn.peer();
        let mut parts = ResultStream::new(&self.proto_limits);
        loop {
            // A paused stream is not read, except to finish a chunk begun (its parts follow
            // each other; the chunk is bounded).
            if !parts.is_mid_chunk() {
                self.gate(peer, job).await;
            }
            let (results, len) = match read_header::<_, Results>(&mut stream, &self.limits).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if let Err(e) = parts.finish() {
                        self.broke(&conn, job, e.to_string());
                    }
                    return;
                }
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            if results.payload_len() != Some(len) {
                return self.broke(
                    &conn,
                    job,
                    "a batch announces a different payload size".into(),
                );
            }
            if let [ResultItem::Rdma { fragment, len }] = results.items.as_slice() {
                match self.receive_rdma(stream, job, peer, *fragment, *len).await {
                    Ok(s) => {
                        stream = s;
                        continue;
                    }
                    Err(reason) => {
                        return self.broke(&conn, job, format!("bad RDMA result: {reason}"))
                    }
                }
            }
            if let [ResultItem::RdmaShm {
                fragment,
                id,
                len,
                size,
            }] = results.items.as_slice()
            {
                let handed = (*fragment, *id, *len, *size);
                if let Err(e) = self.receive_rdma_shm(job, peer, handed).await {
                    return self.broke(&conn, job, format!("bad RDMA result: {e}"));
                }
                continue;
            }
            if results
                .items
                .iter()
                .any(|i| matches!(i, ResultItem::Rdma { .. } | ResultItem::RdmaShm { .. }))
            {
                return self.broke(&conn, job, "an RDMA result not alone in its frame".into());
            }
            // Checked before the bytes are read: a part that would grow a chunk beyond its
            // bound, or interleave chunks, closes the connection.
            let mut open = parts.is_mid_chunk();
            for item in &results.items {
                if let ResultItem::Chunk {
                    fragment,
                    seq,
                    len,
                    last,
                } = item
                {
                    if open || !*last {
                        if let Err(e) = parts.check_part(*fragment, *seq, *len) {
                            return self.broke(&conn, job, e.to_string());
                        }
                    }
                    open = !*last;
                }
            }
            let payload = match self.read_payload(&mut stream, len).await {
                Ok(p) => p,
                Err(e) => return close_on_frame_error(&conn, &e),
            };
            let mut resolve = |id, len, size| {
                use std::sync::atomic::Ordering::Relaxed;
                let chunk = self
                    .take_handed_over(peer, job, id, len, size)
                    .map_err(|e| e.to_string())?;
                self.shm.chunks_received.fetch_add(1, Relaxed);
                self.shm.bytes_received.fetch_add(len, Relaxed);
                Ok(chunk)
            };
            let events = match split(results.items, payload, &mut parts, &mut resolve) {
                Ok(events) => events,
                Err(e) => return self.broke(&conn, job, e),
            };
            let Some(node) = self.node.upgrade() else {
                return;
            };
            let _ = node.on_results(job, peer, events);
        }
    }

    /// Takes chunk `id` of `job` that `peer` handed over through this host's context: the
    /// memory must be published under the name the reference implies, be `size` bytes, the
    /// size class of `len`, and the link must be proven same-machine. Anything else is a
    /// protocol violation of `peer`.
    fn take_handed_over(
        &self,
        peer: HostId,
        job: JobId,
        id: u64,
        len: u64,
        size: u64,
    ) -> Result<ShmChunk, ShmViolation> {
        let proven = self.link(peer).is_some_and(|l| l.shm.peer_proven());
        check_reference(proven, len, size)?;
        let node = self.node.upgrade().ok_or(ShmViolation::ShuttingDown)?;
        let name = fragmenta_wire::messages::shm_chunk_name(peer, job, id);
        let alloc = node
            .fastio
            .take(&name)
            .map_err(|_| ShmViolation::Missing { name })?;
        if alloc.size() != size {
            return Err(ShmViolation::WrongSize {
                found: alloc.size(),
                announced: size,
            });
        }
        let read = alloc.into_shared_read().map_err(ShmViolation::Unreadable)?;
        let len = usize::try_from(len).map_err(|_| ShmViolation::WrongClass { len, size })?;
        let net = self.me.clone();
        let credit = Box::new(move || {
            if let Some(net) = net.upgrade() {
                net.send_control(peer, Control::ShmCredit { job, bytes: size });
            }
        });
        Ok(ShmChunk::new(read, len, credit))
    }

    /// Takes the whole RDMA result of `fragment` that `peer` handed over through this host's
    /// context (checked as a chunk's reference, [`Net::take_handed_over`], and against the
    /// receiver's buffer: longer is [`ShmViolation::RdmaTooLarge`]), copies it from the shared
    /// pages into the buffer the job offered, lets the memory go (crediting the sender) and
    /// hands the buffer to the scheduler as the fragment's chunk 0. The buffer is the job's
    /// own memory, writable and handed back to `receive_remote_result_rdma` as the very buffer
    /// it offered, so the bytes land in it: one copy, on the blocking pool. A result for a
    /// buffer that is no longer waiting (job finished, fragment reassigned) is let go of.
    async fn receive_rdma_shm(
        &self,
        job: JobId,
        peer: HostId,
        (fragment, id, len, size): (u64, u64, u64, u64),
    ) -> Result<(), ShmViolation> {
        use std::sync::atomic::Ordering::Relaxed;
        let chunk = self.take_handed_over(peer, job, id, len, size)?;
        let node = self.node.upgrade().ok_or(ShmViolation::ShuttingDown)?;
        let target = usize::try_from(fragment)
            .ok()
            .and_then(|index| node.rdma_target(job, index, peer));
        let Some(buffer) = target else {
            return Ok(());
        };
        if chunk.len() > buffer.len() {
            return Err(ShmViolation::RdmaTooLarge {
                len,
                capacity: buffer.len() as u64,
            });
        }
        let copied = tokio::task::spawn_blocking(move || {
            let n = chunk.len();
            buffer.write()[..n].copy_from_slice(chunk.as_ref());
            buffer.set_filled(n);
            drop(chunk);
            buffer
        })
        .await;
        let Ok(buffer) = copied else {
            return Err(ShmViolation::ShuttingDown);
        };
        self.shm.rdma_received.fetch_add(1, Relaxed);
        self.shm.rdma_bytes_received.fetch_add(len, Relaxed);
        let chunk = ResultEvent::Chunk {
            fragment,
            seq: 0,
            payload: Payload::Rdma(buffer),
        };
        let _ = node.on_results(job, peer, vec![chunk]);
        Ok(())
    }

    /// Reads an RDMA result of `len` bytes straight from the stream into the initiator's
    /// buffer for `fragment`, then hands it to the scheduler as the fragment's chunk 0. Bytes
    /// for a buffer that is no longer waiting (job finished, fragment reassigned) are skipped.
    /// The buffer's lock is not `Send`, so the read runs on the blocking pool.
    async fn receive_rdma(
        &self,
        mut stream: RecvStream,
        job: JobId,
        peer: HostId,
        fragment: u64,
        len: u64,
    ) -> Result<RecvStream, String> {
        use tokio::io::AsyncReadExt;
        let node = self.node.upgrade().ok_or("node shut down")?;
        let index = usize::try_from(fragment).map_err(|_| "fragment index out of range")?;
        let Some(buffer) = node.rdma_target(job, index, peer) else {
            let skipped = tokio::io::copy(&mut (&mut stream).take(len), &mut tokio::io::sink())
                .await
                .map_err(|e| e.to_string())?;
            if skipped != len {
                return Err("stream ended inside an RDMA result".into());
            }
            return Ok(stream);
        };
        let n = usize::try_from(len).map_err(|_| "RDMA result too large")?;
        let (stream, buffer) = self
            .rdma_path
            .receive(stream, buffer, n)
            .await
            .map_err(|e| e.to_string())?;
        let chunk = ResultEvent::Chunk {
            fragment,
            seq: 0,
            payload: Payload::Rdma(buffer),
        };
        let _ = node.on_results(job, peer, vec![chunk]);
        Ok(stream)
    }

    pub(super) async fn results_writer(
        self: Arc<Self>,
        conn: Connection,
        rj: Weak<RemoteJob>,
        mut rx: mpsc::UnboundedReceiver<Out>,
    ) {
        // Weak: the job's sender lives in the job, so holding it here would keep the channel,
        // the job and its replica alive forever. Once the job is released and its fragments
        // are done, the channel closes and the stream is finished.
        let Some(job) = rj.upgrade().map(|rj| rj.id) else {
            return;
        };
        let written = |bytes: usize| {
            if let Some(rj) = rj.upgrade() {
                rj.written(bytes);
            }
        };
        let mut stream: Option<SendStream> = None;
        while let Some(first) = rx.recv().await {
            let mut bytes = match &first {
                Out::Chunk { data, .. } => data.len(),
                Out::Item(_) | Out::Rdma { .. } => 0,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_ITEMS && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(o) => {
                        if let Out::Chunk { data, .. } = &o {
                            bytes += data.len();
                        }
                        batch.push(o);
                    }
                    Err(_) => break,
                }
            }
            if stream.is_none() {
                match conn.open_uni().await {
                    Ok(mut s) => {
                        if let Err(e) =
                            write_frame(&mut s, &StreamHeader::Results { job }, &[]).await
                        {
                            tracing::warn!(%job, error = %e, "cannot open the result stream");
                            return;
                        }
                        stream = Some(s);
                    }
                    Err(e) => {
                        tracing::warn!(%job, error = %e, "cannot open the result stream");
                        return;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { return };
            if let Err(e) = write_batch(s, batch, &*self.rdma_path).await {
                tracing::warn!(host = %self.host, %job, error = %e, "result stream failed");
                rx.close();
                written(usize::MAX);
                return;
            }
            written(bytes);
        }
        if let Some(mut s) = stream {
            let _ = s.finish();
        }
    }
}

/// Takes a handed-over chunk `(id, len, size)` out of this host's context.
type Resolve<'a> = dyn FnMut(u64, u64, u64) -> Result<ShmChunk, String> + 'a;

/// Splits a batch's payload among its items and joins chunk parts into whole chunks; chunks
/// handed over through shared memory are resolved by `resolve`.
fn split(
    items: Vec<ResultItem>,
    mut payload: Vec<u8>,
    parts: &mut ResultStream,
    resolve: &mut Resolve<'_>,
) -> Result<Vec<ResultEvent<Payload>>, String> {
    let whole = payload.len();
    let single = items
        .iter()
        .filter(|i| matches!(i, ResultItem::Chunk { .. }))
        .count()
        == 1;
    let mut offset = 0usize;
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        match item {
            ResultItem::Chunk {
                fragment,
                seq,
                len,
                last,
            } => {
                let len = len as usize;
                let data = if single && len == whole && offset == 0 {
                    std::mem::take(&mut payload)
                } else {
                    payload
                        .get(offset..offset + len)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default()
                };
                offset += len;
                if let Some(data) = parts
                    .part(fragment, seq, data, last)
                    .map_err(|e| e.to_string())?
                {
                    events.push(ResultEvent::Chunk {
                        fragment,
                        seq,
                        payload: Payload::Bytes(data),
                    });
                }
            }
            ResultItem::Done { fragment, chunks } => {
                events.push(ResultEvent::Done { fragment, chunks })
            }
            ResultItem::Failed { fragment, reason } => {
                events.push(ResultEvent::Failed { fragment, reason })
            }
            ResultItem::NotStarted { ranges } => events.push(ResultEvent::NotStarted { ranges }),
            // Read straight into its buffer (`receive_rdma`, `receive_rdma_shm`); never part
            // of a batch.
            ResultItem::Rdma { .. } | ResultItem::RdmaShm { .. } => {}
            ResultItem::Shm {
                fragment,
                seq,
                id,
                len,
                size,
            } => {
                // A whole chunk: not inside another's parts, and within the chunk bound.
                if parts.is_mid_chunk() {
                    return Err("a shared-memory chunk inside another chunk's parts".into());
                }
                parts
                    .check_part(fragment, seq, len)
                    .map_err(|e| e.to_string())?;
                events.push(ResultEvent::Chunk {
                    fragment,
                    seq,
                    payload: Payload::Shm(resolve(id, len, size)?),
                });
            }
        }
    }
    Ok(events)
}

/// Writes a batch: small chunks and items share a frame; a large chunk goes in frames of its
/// own, straight from its buffer.
async fn write_batch(
    s: &mut SendStream,
    batch: Vec<Out>,
    path: &dyn RdmaPath,
) -> Result<(), fragmenta_wire::FrameError> {
    let mut items = Vec::new();
    let mut payload = Vec::new();
    for out in batch {
        match out {
            Out::Item(i @ ResultItem::RdmaShm { .. }) => {
                // Alone in its frame, like the bytes of an RDMA result.
                if !items.is_empty() {
                    write_frame(
                        s,
                        &Results {
                            items: std::mem::take(&mut items),
                        },
                        &payload,
                    )
                    .await?;
                    payload.clear();
                }
                write_frame(s, &Results { items: vec![i] }, &[]).await?;
            }
            Out::Item(i) => items.push(i),
            Out::Rdma { fragment, buffer } => {
                if !items.is_empty() {
                    write_frame(
                        s,
                        &Results {
                            items: std::mem::take(&mut items),
                        },
                        &payload,
                    )
                    .await?;
                    payload.clear();
                }
                write_rdma(s, fragment, &buffer, path).await?;
            }
            Out::Chunk {
                fragment,
                seq,
                data,
            } if data.len() < (64 << 10) => {
                items.push(ResultItem::Chunk {
                    fragment,
                    seq,
                    len: data.len() as u64,
                    last: true,
                });
                payload.extend_from_slice(&data);
            }
            Out::Chunk {
                fragment,
                seq,
                data,
            } => {
                if !items.is_empty() {
                    write_frame(
                        s,
                        &Results {
                            items: std::mem::take(&mut items),
                        },
                        &payload,
                    )
                    .await?;
                    payload.clear();
                }
                if data.len() <= MAX_PART {
                    // One frame; the buffer goes to the transport as it is, without a copy.
                    let item = ResultItem::Chunk {
                        fragment,
                        seq,
                        len: data.len() as u64,
                        last: true,
                    };
                    let results = Results { items: vec![item] };
                    fragmenta_wire::write_frame_header(s, &results, data.len() as u64).await?;
                    s.write_owned(data).await?;
                    continue;
                }
                let mut parts = data.chunks(MAX_PART).peekable();
                while let Some(part) = parts.next() {
                    let last = parts.peek().is_none();
                    let item = ResultItem::Chunk {
                        fragment,
                        seq,
                        len: part.len() as u64,
                        last,
                    };
                    write_frame(s, &Results { items: vec![item] }, part).await?;
                }
            }
        }
    }
    if !items.is_empty() {
        write_frame(s, &Results { items }, &payload).await?;
    }
    Ok(())
}

/// Writes a fragment's RDMA result as one frame whose payload is the buffer's bytes, sent by
/// this host's RDMA path.
async fn write_rdma(
    s: &mut SendStream,
    fragment: u64,
    buffer: &RdmaBuffer,
    path: &dyn RdmaPath,
) -> Result<(), fragmenta_wire::FrameError> {
    let len = buffer.len() as u64;
    let item = ResultItem::Rdma { fragment, len };
    fragmenta_wire::write_frame_header(s, &Results { items: vec![item] }, len).await?;
    path.send(s, buffer).await?;
    Ok(())
}

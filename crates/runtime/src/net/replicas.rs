//! Replicas of other hosts' jobs on this host: made from their bytes off the reactor, the
//! queue of their results back to the initiator (with backpressure on the fragments), and the
//! runner of their fragments. Their life cycle (loading, ready, failed, cancelled, released,
//! abandoned) is the protocol's; this module carries out what it decides.

use super::{to_wire, Net, Outgoing};
use crate::executor::BlockRunner;
use crate::node::{InitiatedJob, Remote, ReplicaBody};
use crate::registry::ErasedJob;
use fragmenta_job::{
    CancelToken, ChunkSink, ExecutionContext, FailureReason, HostId, JobId, RdmaBuffer,
    RdmaContext, Transaction,
};
use fragmenta_sched::protocol::{Answer, Down};
use fragmenta_sched::Block;
use fragmenta_wire::messages::{Control, ResultItem};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Result bytes of one job a host may have queued for the network before its fragments wait.
const MAX_IN_FLIGHT: usize = 32 << 20;

pub(super) enum Out {
    Item(ResultItem),
    /// A fragment's result in this host's RDMA buffer, for the initiator's buffer.
    Rdma {
        fragment: u64,
        buffer: RdmaBuffer,
    },
    Chunk {
        fragment: u64,
        seq: u32,
        data: Vec<u8>,
    },
}

/// Memory handed over into the initiator's context and not yet referenced.
struct HandedOver<'a> {
    ctx: &'a fragmenta_fastio::RemoteContext,
    name: String,
    id: u64,
    size: u64,
}

/// A job of another host, on this host: its replica and the stream back to its initiator.
pub(super) struct RemoteJob {
    pub(super) id: JobId,
    count: usize,
    cancel: CancelToken,
    cancel_called: AtomicBool,
    tx: Transaction,
    /// The replica, once made.
    replica: Mutex<Option<Arc<dyn ErasedJob>>>,
    out: mpsc::UnboundedSender<Out>,
    /// Chunk bytes queued and not yet written: fragments wait above [`MAX_IN_FLIGHT`].
    in_flight: Mutex<usize>,
    drained: Condvar,
    /// Receiver buffer sizes of fragments whose result goes to an RDMA buffer.
    rdma: Mutex<HashMap<u64, u64>>,
    /// This host (the names of what it hands over say so).
    sender: HostId,
    /// The network side (counters, the link to the initiator).
    net: std::sync::Weak<Net>,
    /// The same-machine state of the link to the initiator.
    shm: Option<Arc<super::machine::ShmLink>>,
    /// Bytes of memory handed over to the initiator and not yet credited back.
    shm_out: Mutex<u64>,
    /// Ids of hand-overs (the names they are published under).
    shm_ids: std::sync::atomic::AtomicU64,
}

impl RemoteJob {
    /// Queues a result for the initiator; false once the stream is gone. Called from worker
    /// threads; waits while too many result bytes are queued (backpressure from the network).
    fn send(&self, out: Out) -> bool {
        if let Out::Chunk { data, .. } = &out {
            let mut q = self.in_flight.lock();
            while *q > 0 && *q + data.len() > MAX_IN_FLIGHT {
                if self.out.is_closed() {
                    return false;
                }
                self.drained.wait_for(&mut q, Duration::from_millis(100));
            }
            *q += data.len();
        }
        self.out.send(out).is_ok()
    }

    /// Hands a chunk over through the initiator's Fast I/O context when the link to it is
    /// proven same-machine and the chunk is large enough: the bytes are copied once into
    /// memory of the initiator's context and only a reference goes on the result stream.
    /// `Err(data)`: not handed over (too small, the link not proven, the window of memory
    /// handed over and not credited back full, the initiator's context full), the chunk goes
    /// on QUIC as before. `Ok(false)`: the stream is gone.
    fn hand_over(&self, fragment: u64, seq: u32, data: Vec<u8>) -> Result<bool, Vec<u8>> {
        let Some(handed) = self.hand_over_bytes(&data) else {
            return Err(data);
        };
        let len = data.len();
        drop(data);
        Ok(self.refer_chunk(fragment, seq, handed, len))
    }

    /// Counts a chunk of `len` bytes handed over and queues its reference
    /// ([`RemoteJob::reference`]).
    fn refer_chunk(&self, fragment: u64, seq: u32, handed: HandedOver<'_>, len: usize) -> bool {
        if let Some(net) = self.net.upgrade() {
            use std::sync::atomic::Ordering::Relaxed;
            net.shm.chunks_sent.fetch_add(1, Relaxed);
            net.shm.bytes_sent.fetch_add(len as u64, Relaxed);
        }
        let item = ResultItem::Shm {
            fragment,
            seq,
            id: handed.id,
            len: len as u64,
            size: handed.size,
        };
        self.reference(handed, item)
    }

    /// Hands a fragment's whole RDMA result over through the initiator's Fast I/O context,
    /// under the same conditions as a chunk ([`RemoteJob::hand_over`]); the initiator copies
    /// it into the buffer it offered. `Err(buffer)`: not handed over, it goes on the RDMA path
    /// (QUIC) as before. `Ok(false)`: the stream is gone.
    fn hand_over_rdma(&self, fragment: u64, buffer: RdmaBuffer) -> Result<bool, RdmaBuffer> {
        let handed = {
            let bytes = buffer.read();
            self.hand_over_bytes(&bytes)
        };
        let Some(handed) = handed else {
            return Err(buffer);
        };
        let len = buffer.len() as u64;
        // The bytes are in the initiator's context: this host's buffer may return to its
        // context now.
        drop(buffer);
        if let Some(net) = self.net.upgrade() {
            use std::sync::atomic::Ordering::Relaxed;
            net.shm.rdma_sent.fetch_add(1, Relaxed);
            net.shm.rdma_bytes_sent.fetch_add(len, Relaxed);
        }
        let item = ResultItem::RdmaShm {
            fragment,
            id: handed.id,
            len,
            size: handed.size,
        };
        Ok(self.reference(handed, item))
    }

    /// Memory of the initiator's context for a chunk of `len` bytes the fragment writes in
    /// place (see [`ChunkSink::chunk_buffer`]), under the same conditions as a hand-over: the
    /// link proven, `len` at least [`super::machine::SHM_THRESHOLD`], room in the window (the
    /// memory counts against it from now, and goes back if the buffer is dropped unsent).
    fn lend(self: &Arc<Self>, len: usize) -> Option<LentShm> {
        let (ctx, size) = self.shm_room(len)?;
        match ctx.begin_hand_over(size) {
            Ok(memory) => Some(LentShm {
                memory: Some(memory),
                job: Arc::clone(self),
                size,
            }),
            Err(e) => {
                self.credit(size);
                tracing::debug!(job = %self.id, error = %e, "cannot lend shared memory for a chunk; it is written to the heap");
                None
            }
        }
    }

    /// Publishes a chunk written into lent memory and queues its reference; false once the
    /// stream is gone. A hand-over that cannot be published (the initiator's context went
    /// away: its process is exiting or gone) counts as the stream gone, since the bytes went
    /// with the memory.
    fn send_lent(&self, fragment: u64, seq: u32, mut lent: LentShm, len: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let (Some(memory), Some(ctx)) = (
            lent.memory.take(),
            self.shm.as_ref().and_then(|l| l.sender()),
        ) else {
            return false;
        };
        // From here the window credit belongs to the reference (returned when the initiator
        // lets go of the memory), not to the buffer.
        let size = std::mem::take(&mut lent.size);
        let id = self.shm_ids.fetch_add(1, Relaxed);
        let name = fragmenta_wire::messages::shm_chunk_name(self.sender, self.id, id);
        if let Err(e) = memory.finish(&name) {
            self.credit(size);
            tracing::debug!(job = %self.id, error = %e, "cannot publish a chunk written in place");
            return false;
        }
        let handed = HandedOver {
            ctx,
            name,
            id,
            size,
        };
        self.refer_chunk(fragment, seq, handed, len)
    }

    /// Copies `bytes` into memory of the initiator's context, published under a name of this
    /// host, when the link is proven, `bytes` is at least [`super::machine::SHM_THRESHOLD`]
    /// and the window has room. Runs on the worker thread that produced the bytes.
    fn hand_over_bytes(&self, bytes: &[u8]) -> Option<HandedOver<'_>> {
        use std::sync::atomic::Ordering::Relaxed;
        let (ctx, size) = self.shm_room(bytes.len())?;
        let id = self.shm_ids.fetch_add(1, Relaxed);
        let name = fragmenta_wire::messages::shm_chunk_name(self.sender, self.id, id);
        if let Err(e) = ctx.hand_over(&name, bytes, size) {
            self.credit(size);
            tracing::debug!(job = %self.id, error = %e, "cannot hand the result over; it goes on QUIC");
            return None;
        }
        Some(HandedOver {
            ctx,
            name,
            id,
            size,
        })
    }

    /// Queues the reference `item` to what was handed over; false (and the publication
    /// withdrawn) once the stream is gone.
    fn reference(&self, handed: HandedOver<'_>, item: ResultItem) -> bool {
        if self.out.send(Out::Item(item)).is_ok() {
            return true;
        }
        // Nobody will reference it: withdraw it (the initiator also does when this host is
        // declared down).
        if let Ok(a) = fragmenta_fastio::FastIo::get(handed.ctx, &handed.name) {
            let _ = a.free();
        }
        self.credit(handed.size);
        false
    }

    /// Whether `len` bytes may go through the initiator's context: the link proven, `len` at
    /// least [`super::machine::SHM_THRESHOLD`], and room in the window of memory handed over
    /// and not credited back. If so, the memory's size class is counted against the window
    /// from now (the caller credits it back if the hand-over fails) and returned with the
    /// context. Beyond the window a chunk goes on QUIC rather than wait for credit: a chunk
    /// held back here could be the very one the initiator's ordered delivery waits for while
    /// the window is full of later ones; QUIC's own rules (the stream carrying the next chunk
    /// in order is never paused) then keep the job moving.
    fn shm_room(&self, len: usize) -> Option<(&fragmenta_fastio::RemoteContext, u64)> {
        use super::machine::{size_class, SHM_THRESHOLD, SHM_WINDOW};
        if len < SHM_THRESHOLD {
            return None;
        }
        let ctx = self.shm.as_ref().and_then(|l| l.sender())?;
        let size = size_class(len as u64);
        let mut out = self.shm_out.lock();
        if *out > 0 && *out + size > SHM_WINDOW {
            return None;
        }
        *out += size;
        Some((ctx, size))
    }

    /// The initiator let go of `bytes` of handed-over memory.
    pub(super) fn credit(&self, bytes: u64) {
        let mut out = self.shm_out.lock();
        *out = out.saturating_sub(bytes);
    }

    pub(super) fn written(&self, bytes: usize) {
        if bytes > 0 {
            let mut q = self.in_flight.lock();
            *q = q.saturating_sub(bytes);
            self.drained.notify_all();
        }
    }

    /// Calls the replica's `cancel()` once (user code: never on a reactor thread).
    fn call_cancel(&self) {
        let Some(replica) = self.replica.lock().clone() else {
            return;
        };
        if self.cancel_called.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replica.cancel()))
        {
            tracing::error!(job = %self.id, "cancel() panicked: {}", crate::registry::panic_message(&*p));
        }
    }
}

/// `Transaction::abort` on a replica: asks the job's initiator to cancel it.
struct RemoteAbort {
    net: std::sync::Weak<Net>,
    job: JobId,
}

impl fragmenta_job::Abort for RemoteAbort {
    fn abort(&self) {
        if let Some(net) = self.net.upgrade() {
            net.send_control(self.job.initiator, Control::Cancel { job: self.job });
        }
    }
}

impl Net {
    /// Registers the replica of `job` and makes it from its bytes on the blocking pool, then
    /// tells the protocol.
    fn load(&self, job: JobId, body: ReplicaBody) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let cancel = CancelToken::new();
        // The protocol checked the count against its limit, which fits in memory indices.
        let count = usize::try_from(body.count).unwrap_or(usize::MAX);
        let rj = Arc::new(RemoteJob {
            id: job,
            count,
            tx: node
                .transaction(job, cancel.clone())
                .with_abort(Arc::new(RemoteAbort {
                    net: self.me.clone(),
                    job,
                })),
            cancel,
            cancel_called: AtomicBool::new(false),
            replica: Mutex::new(None),
            in_flight: Mutex::new(0),
            drained: Condvar::new(),
            rdma: Mutex::new(HashMap::new()),
            out: out_tx,
            sender: self.host,
            net: self.me.clone(),
            shm: self.link(job.initiator).map(|l| Arc::clone(&l.shm)),
            shm_out: Mutex::new(0),
            shm_ids: std::sync::atomic::AtomicU64::new(0),
        });
        self.remote_jobs.lock().insert(job, rj.clone());
        let conn = self
            .links
            .lock()
            .get(&job.initiator)
            .map(|l| l.conn.clone());
        if let (Some(conn), Some(me)) = (conn, self.me.upgrade()) {
            self.handle
                .spawn(me.results_writer(conn, Arc::downgrade(&rj), out_rx));
        }
        let host = self.host;
        self.handle.spawn_blocking(move || {
            let replica = node.registry.read().replica(body.class, &body.bytes);
            let result = match replica {
                None => Err(FailureReason::UnknownClass(body.class)),
                Some(Err(e)) => Err(FailureReason::Deserialize(e)),
                Some(Ok(r)) => {
                    *rj.replica.lock() = Some(r);
                    // Cancelled while it was being made.
                    if rj.cancel.is_cancelled() {
                        rj.call_cancel();
                    }
                    Ok(())
                }
            };
            if let Err(reason) = &result {
                tracing::error!(%host, %job, %reason, "cannot make the replica");
            }
            node.with_proto(|p| p.replica_loaded(job, result));
        });
    }

    /// The initiator of `job` let go of `bytes` this host handed over.
    pub(super) fn shm_credit(&self, job: JobId, bytes: u64) {
        if let Some(rj) = self.remote_jobs.lock().get(&job) {
            rj.credit(bytes);
        }
    }

    /// Receiver buffer sizes for fragments of `job` whose result goes to RDMA buffers.
    pub(super) fn expect_rdma(&self, job: JobId, sizes: Vec<(u64, u64)>) {
        if let Some(rj) = self.remote_jobs.lock().get(&job) {
            rj.rdma.lock().extend(sizes);
        }
    }
}

impl Remote for Net {
    fn send_replica(&self, job: &InitiatedJob, host: HostId) {
        let (Some(link), Some(bytes)) = (self.link(host), job.serialized.clone()) else {
            return;
        };
        let params = job.params();
        let msg = Control::Replica {
            job: job.id,
            class: job.job.class_id(),
            params,
            count: job.count.load(std::sync::atomic::Ordering::Acquire) as u64,
        };
        let _ = link.control.send(Outgoing::WithPayload(msg, bytes));
    }

    fn dispatch(&self, job: &Arc<InitiatedJob>, host: HostId, fragments: Vec<Range<usize>>) {
        let Some(link) = self.link(host) else {
            return;
        };
        if job.rdma.is_none() {
            let _ = link.control.send(Outgoing::Msg(Control::Dispatch {
                job: job.id,
                fragments: to_wire(&fragments),
                rdma: Vec::new(),
            }));
            return;
        }
        // RDMA results: ask the job for each fragment's receive buffer first. That is user code,
        // and this may be running on the reactor under the scheduler's lock: do it on the
        // blocking pool, then send the dispatch with the buffer sizes.
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let ij = Arc::clone(job);
        let id = job.id;
        self.handle.spawn(async move {
            let wire = to_wire(&fragments);
            let sizes = tokio::task::spawn_blocking(move || {
                let Some(map) = &ij.rdma else {
                    return Vec::new();
                };
                let mut sizes = Vec::new();
                for f in fragments.into_iter().flatten() {
                    let existing = map.lock().get(&f).map(|(b, _)| b.clone());
                    let buffer = existing.or_else(|| ij.job.rdma_buffer(&node.rdma, f));
                    if let Some(b) = buffer {
                        sizes.push((f as u64, b.len() as u64));
                        map.lock().insert(f, (b, host));
                    }
                }
                sizes
            })
            .await
            .unwrap_or_default();
            let _ = link.control.send(Outgoing::Msg(Control::Dispatch {
                job: id,
                fragments: wire,
                rdma: sizes,
            }));
        });
    }

    fn cancel(&self, job: JobId, host: HostId) {
        self.send_control(host, Control::Cancel { job });
    }

    fn reclaim(&self, job: JobId, host: HostId, fragments: &[Range<usize>]) {
        let fragments = to_wire(fragments);
        self.send_control(host, Control::Reclaim { job, fragments });
    }

    fn reclaimed(&self, job: JobId, host: HostId, fragments: &[Range<usize>]) {
        let fragments = to_wire(fragments);
        self.send_control(host, Control::Reclaimed { job, fragments });
    }

    fn release(&self, job: JobId, host: HostId) {
        self.send_control(host, Control::Release { job });
    }

    fn heartbeat(&self, host: HostId) {
        Net::heartbeat(self, host);
    }

    fn answer(&self, job: JobId, answer: Answer) {
        let Some(rj) = self.remote_jobs.lock().get(&job).cloned() else {
            return;
        };
        match answer {
            Answer::Failed { fragment, reason } => {
                rj.send(Out::Item(ResultItem::Failed {
                    fragment: fragment as u64,
                    reason,
                }));
            }
            Answer::NotStarted { ranges } => {
                rj.send(Out::Item(ResultItem::NotStarted {
                    ranges: to_wire(&ranges),
                }));
            }
        }
    }

    fn load_replica(&self, job: JobId, body: ReplicaBody) {
        self.load(job, body);
    }

    fn cancel_replica(&self, job: JobId) {
        let Some(rj) = self.remote_jobs.lock().get(&job).cloned() else {
            return;
        };
        // Running fragments see it at once; `cancel()` is user code: off the reactor, once the
        // replica exists (the loader calls it if the replica comes later).
        rj.cancel.cancel();
        if rj.replica.lock().is_some() {
            self.handle.spawn_blocking(move || rj.call_cancel());
        }
    }

    fn drop_replica(&self, job: JobId) {
        let Some(rj) = self.remote_jobs.lock().remove(&job) else {
            return;
        };
        // The replica may go with the last reference: its `Drop` is user code, kept off the
        // reactor.
        self.handle.spawn_blocking(move || drop(rj));
    }

    fn runner(&self, job: JobId) -> Option<Arc<dyn BlockRunner>> {
        let rj = self.remote_jobs.lock().get(&job).cloned()?;
        let replica = rj.replica.lock().clone()?;
        let node = self.node.upgrade()?;
        Some(Arc::new(RemoteRunner {
            job: rj,
            replica,
            host: self.host,
            rdma: node.rdma.clone(),
        }))
    }

    fn host_down(&self, host: HostId, why: Down) {
        self.declare_down(host, why);
    }

    fn pause_results(&self, job: JobId, host: HostId, paused: bool) {
        self.set_paused(job, host, paused);
    }
}

/// Runs blocks of another host's job on its replica, streaming results back.
struct RemoteRunner {
    job: Arc<RemoteJob>,
    replica: Arc<dyn ErasedJob>,
    host: HostId,
    /// This host's RDMA buffer cache.
    rdma: RdmaContext,
}

struct ChannelSink<'a> {
    job: &'a Arc<RemoteJob>,
    fragment: u64,
}

/// Memory of the initiator's context lent to a fragment for one chunk (see
/// [`RemoteJob::lend`]): dropped unsent, it returns to that context and its window credit to
/// the job.
struct LentShm {
    /// `None` once published.
    memory: Option<fragmenta_fastio::HandOver>,
    job: Arc<RemoteJob>,
    /// Window credit held (0 once it passed to the reference).
    size: u64,
}

impl fragmenta_job::LentBuffer for LentShm {
    fn bytes(&self) -> &[u8] {
        self.memory.as_ref().map_or(&[], |m| m.bytes())
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.memory {
            Some(m) => m.bytes_mut(),
            None => &mut [],
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl Drop for LentShm {
    fn drop(&mut self) {
        // The memory goes back to the initiator's context as the handle drops.
        drop(self.memory.take());
        if self.size > 0 {
            self.job.credit(self.size);
        }
    }
}

impl ChunkSink for ChannelSink<'_> {
    fn chunk_buffer(&mut self, len: usize) -> fragmenta_job::ChunkBuffer {
        use fragmenta_job::ChunkBuffer;
        self.job
            .lend(len)
            .and_then(|lent| ChunkBuffer::lent(Box::new(lent), len))
            .unwrap_or_else(|| ChunkBuffer::heap(len))
    }

    fn send_buffer(&mut self, seq: u32, buf: fragmenta_job::ChunkBuffer) -> std::io::Result<()> {
        match buf.take_lent::<LentShm>() {
            Ok((lent, len)) => sent_or_gone(self.job.send_lent(self.fragment, seq, *lent, len)),
            Err(other) => self.send_chunk(seq, other.into_vec()),
        }
    }

    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> std::io::Result<()> {
        let sent = match self.job.hand_over(self.fragment, seq, data) {
            Ok(sent) => sent,
            Err(data) => self.job.send(Out::Chunk {
                fragment: self.fragment,
                seq,
                data,
            }),
        };
        sent_or_gone(sent)
    }
}

/// A sink's answer: the chunk is on its way, or the stream back to the initiator is gone.
fn sent_or_gone(sent: bool) -> std::io::Result<()> {
    if sent {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the job was released or its initiator is gone",
        ))
    }
}

impl RemoteRunner {
    /// Runs fragment `f` on the RDMA path: the job fills a buffer from this host's context,
    /// limited to the receiver's `size`, which goes to the initiator's buffer as chunk 0.
    fn run_rdma(&self, f: usize, size: u64, ctx: &ExecutionContext) -> Result<u32, FailureReason> {
        let rj = &self.job;
        let limited = self
            .rdma
            .for_receiver(usize::try_from(size).unwrap_or(usize::MAX));
        match self
            .replica
            .run_remote_rdma(&rj.tx, f, rj.count, &limited, ctx)?
        {
            None => Ok(0),
            Some(buffer) if buffer.len() as u64 > size => Err(FailureReason::RdmaTooLarge {
                len: buffer.len() as u64,
                capacity: size,
            }),
            Some(buffer) => {
                let sent = match rj.hand_over_rdma(f as u64, buffer) {
                    Ok(sent) => sent,
                    Err(buffer) => rj.send(Out::Rdma {
                        fragment: f as u64,
                        buffer,
                    }),
                };
                if sent {
                    Ok(1)
                } else {
                    Err(FailureReason::InitiatorGone)
                }
            }
        }
    }
}

impl BlockRunner for RemoteRunner {
    fn run(&self, block: &Block, worker: usize) -> Range<usize> {
        let rj = &self.job;
        let _span = tracing::debug_span!("fragments", host = %self.host, job = %rj.id,
            fragments = ?block.range, worker)
        .entered();
        let deadline = Instant::now() + crate::registry::TIME_SLICE;
        let ctx = ExecutionContext::new(self.host, worker, block.gpus.clone(), rj.cancel.clone());
        let mut f = block.range.start;
        while f < block.range.end {
            if rj.cancel.is_cancelled() {
                rj.send(Out::Item(ResultItem::NotStarted {
                    ranges: vec![(f as u64, block.range.end as u64)],
                }));
                return 0..0;
            }
            let receiver = rj.rdma.lock().remove(&(f as u64));
            let outcome = match receiver {
                Some(size) => self.run_rdma(f, size, &ctx),
                None => {
                    let mut sink = ChannelSink {
                        job: rj,
                        fragment: f as u64,
                    };
                    self.replica
                        .run_remote(&rj.tx, f, rj.count, &ctx, &mut sink)
                }
            };
            let item = match outcome {
                Ok(chunks) => ResultItem::Done {
                    fragment: f as u64,
                    chunks,
                },
                Err(reason) => ResultItem::Failed {
                    fragment: f as u64,
                    reason,
                },
            };
            if !rj.send(Out::Item(item)) {
                return 0..0;
            }
            f += 1;
            if f < block.range.end && Instant::now() >= deadline {
                return f..block.range.end;
            }
        }
        0..0
    }
}

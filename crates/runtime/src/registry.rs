//! Job types by class id, and the type-erased view of a job the runtime works with.

use fragmenta_job::{
    ChunkSink, ClassId, ExecutionContext, FailureReason, FragmentFailure, FragmentedJob, HostId,
    InvalidArgument, JobParams, JobReport, RdmaBuffer, RdmaContext, ResultReader, ResultWriter,
    Transaction,
};
use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What happened to a block of fragments run locally.
#[derive(Debug, Default)]
pub(crate) struct BlockOutcome {
    /// Fragments that ran to completion (ascending, disjoint).
    pub(crate) done: Vec<Range<usize>>,
    /// Fragments that panicked, with the message.
    pub(crate) failed: Vec<(usize, String)>,
    /// Fragments not started because the job was cancelled.
    pub(crate) not_started: Range<usize>,
    /// Fragments not started because the block ran past its time slice; they go back to the
    /// front of the queue.
    pub(crate) yielded: Range<usize>,
}

/// How long a block runs before giving its remaining fragments back to the queue, so progress,
/// cancellation and priorities stay responsive when fragments are slow.
pub(crate) const TIME_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

/// The target time between two clock reads in a block of fragments.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_micros(100);

/// The most fragments run between two clock reads.
const MAX_STEP: usize = 1 << 16;

/// A job behind a vtable: one virtual call per block, a monomorphized loop inside.
pub(crate) trait ErasedJob: Send + Sync + 'static {
    fn class_id(&self) -> ClassId;
    fn params(&self) -> JobParams;
    fn run_local_block(
        &self,
        tx: &Transaction,
        range: Range<usize>,
        count: usize,
        ctx: &ExecutionContext,
    ) -> BlockOutcome;
    fn run_remote(
        &self,
        tx: &Transaction,
        index: usize,
        count: usize,
        ctx: &ExecutionContext,
        sink: &mut dyn ChunkSink,
    ) -> Result<u32, FailureReason>;
    fn receive(&self, reader: &mut ResultReader, tx: &Transaction, index: usize, count: usize);
    /// `get_rdma_result_buffer`; a panic counts as no buffer.
    fn rdma_buffer(&self, rdma: &RdmaContext, index: usize) -> Option<RdmaBuffer>;
    /// `execute_fragment_remote_rdma`, with a panic reported as the fragment's failure.
    fn run_remote_rdma(
        &self,
        tx: &Transaction,
        index: usize,
        count: usize,
        rdma: &RdmaContext,
        ctx: &ExecutionContext,
    ) -> Result<Option<RdmaBuffer>, FailureReason>;
    fn receive_rdma(&self, buffer: RdmaBuffer, tx: &Transaction, index: usize, count: usize);
    fn assign(&self, slots: &mut [HostId]);
    fn cancel(&self);
    fn serialize(&self) -> Result<Vec<u8>, String>;
}

pub(crate) struct Erased<J>(pub(crate) Arc<J>);

/// A sink that remembers whether it failed. The runtime's sinks fail only once their receiver
/// is gone (the job was released or its initiator lost).
struct Watched<'a> {
    sink: &'a mut dyn ChunkSink,
    gone: bool,
}

impl ChunkSink for Watched<'_> {
    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> std::io::Result<()> {
        let sent = self.sink.send_chunk(seq, data);
        self.gone |= sent.is_err();
        sent
    }

    fn chunk_buffer(&mut self, len: usize) -> fragmenta_job::ChunkBuffer {
        self.sink.chunk_buffer(len)
    }

    fn send_buffer(&mut self, seq: u32, buf: fragmenta_job::ChunkBuffer) -> std::io::Result<()> {
        let sent = self.sink.send_buffer(seq, buf);
        self.gone |= sent.is_err();
        sent
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

impl<J: FragmentedJob> ErasedJob for Erased<J> {
    fn class_id(&self) -> ClassId {
        J::CLASS_ID
    }

    fn params(&self) -> JobParams {
        JobParams::of(&*self.0)
    }

    fn run_local_block(
        &self,
        tx: &Transaction,
        range: Range<usize>,
        count: usize,
        ctx: &ExecutionContext,
    ) -> BlockOutcome {
        let job = &*self.0;
        let mut out = BlockOutcome::default();
        let started = std::time::Instant::now();
        let deadline = started + TIME_SLICE;
        let end = range.end;
        let mut i = range.start;
        let mut yielded = false;
        // The clock is read between passes of `step` fragments. The step doubles while a pass
        // takes less than CHECK_EVERY and halves when it takes more, so a loop of no-op
        // fragments reads the clock a few dozen times per million, and a loop of slow ones
        // after almost every fragment; a block overruns its slice by about one pass at most.
        let mut step = 1usize;
        let mut last = started;
        // Where the fragments run without a failure since the last one began.
        let mut done_from = i;
        loop {
            // Cancellation is read once per pass, like the clock: a pass of fast fragments
            // takes about CHECK_EVERY, and slow fragments make a pass of one, so a cancel stops
            // the block before its next fragment once fragments take longer than that, and
            // within about CHECK_EVERY of fragments otherwise. A read per fragment would double
            // the cost of a no-op fragment's loop.
            if ctx.is_cancelled() {
                break;
            }
            // One bound per pass: the end of the pass is the end of the block or the next clock
            // check, whichever is first.
            let stop = end.min(i.saturating_add(step));
            while i < stop {
                // One `catch_unwind` per fragment costs nothing until a fragment panics (it is
                // a landing pad, not a check), and the panicking index is the loop's own.
                let j = i;
                if let Err(p) =
                    catch_unwind(AssertUnwindSafe(|| job.execute_fragment(tx, j, count, ctx)))
                {
                    if done_from < j {
                        out.done.push(done_from..j);
                    }
                    out.failed.push((j, panic_message(&*p)));
                    done_from = j + 1;
                }
                i += 1;
            }
            if i >= end {
                break;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                yielded = true;
                break;
            }
            step = if now - last < CHECK_EVERY {
                (step * 2).min(MAX_STEP)
            } else {
                (step / 2).max(1)
            };
            last = now;
        }
        if done_from < i {
            out.done.push(done_from..i);
        }
        if yielded && !tx.is_cancelled() {
            out.yielded = i..range.end;
            out.not_started = range.end..range.end;
        } else {
            out.not_started = i..range.end;
            out.yielded = range.end..range.end;
        }
        out
    }

    fn run_remote(
        &self,
        tx: &Transaction,
        index: usize,
        count: usize,
        ctx: &ExecutionContext,
        sink: &mut dyn ChunkSink,
    ) -> Result<u32, FailureReason> {
        let job = &*self.0;
        let mut sink = Watched { sink, gone: false };
        let mut writer = ResultWriter::new(&mut sink);
        match catch_unwind(AssertUnwindSafe(|| {
            job.execute_fragment_remote(&mut writer, tx, index, count, ctx)
        })) {
            Ok(Ok(())) => writer.finish().map_err(|_| FailureReason::InitiatorGone),
            Ok(Err(e)) => {
                drop(writer);
                // The fragment passing on the sink's error is not an error of its own.
                Err(if sink.gone {
                    FailureReason::InitiatorGone
                } else {
                    FailureReason::Returned(e.to_string())
                })
            }
            Err(p) => Err(FailureReason::Panicked(panic_message(&*p))),
        }
    }

    fn receive(&self, reader: &mut ResultReader, tx: &Transaction, index: usize, count: usize) {
        self.0.receive_remote_result(reader, tx, index, count);
    }

    fn rdma_buffer(&self, rdma: &RdmaContext, index: usize) -> Option<RdmaBuffer> {
        match catch_unwind(AssertUnwindSafe(|| {
            self.0.get_rdma_result_buffer(rdma, index)
        })) {
            Ok(b) => b,
            Err(p) => {
                tracing::error!(
                    index,
                    "get_rdma_result_buffer panicked: {}",
                    panic_message(&*p)
                );
                None
            }
        }
    }

    fn run_remote_rdma(
        &self,
        tx: &Transaction,
        index: usize,
        count: usize,
        rdma: &RdmaContext,
        ctx: &ExecutionContext,
    ) -> Result<Option<RdmaBuffer>, FailureReason> {
        catch_unwind(AssertUnwindSafe(|| {
            self.0
                .execute_fragment_remote_rdma(tx, index, count, rdma, ctx)
        }))
        .map_err(|p| FailureReason::Panicked(panic_message(&*p)))
    }

    fn receive_rdma(&self, buffer: RdmaBuffer, tx: &Transaction, index: usize, count: usize) {
        self.0.receive_remote_result_rdma(buffer, tx, index, count);
    }

    fn assign(&self, slots: &mut [HostId]) {
        self.0.assign_fragments_to_hosts(slots);
    }

    fn cancel(&self) {
        self.0.cancel();
    }

    fn serialize(&self) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(&*self.0, bincode::config::standard())
            .map_err(|e| e.to_string())
    }
}

/// The USER_DEFINED assignment of a job of `count` fragments: one slot per fragment, filled by
/// `assign_fragments_to_hosts`. A count whose slots would take more than half of the machine's
/// memory is refused before anything is allocated.
pub(crate) fn assignment(
    job: &dyn ErasedJob,
    count: usize,
) -> Result<Vec<HostId>, InvalidArgument> {
    let too_large = || InvalidArgument::CountTooLarge(count);
    let bytes = count
        .checked_mul(std::mem::size_of::<HostId>())
        .ok_or_else(too_large)?;
    if bytes as u64 > crate::node::default_fastio_capacity() {
        return Err(too_large());
    }
    let mut slots = Vec::new();
    slots.try_reserve_exact(count).map_err(|_| too_large())?;
    slots.resize(count, HostId::UNASSIGNED);
    job.assign(&mut slots);
    Ok(slots)
}

/// Fragments of a job whose result was lost on the initiator because receiving it panicked.
#[derive(Default)]
pub(crate) struct ReceiveFailures {
    failed: std::collections::BTreeMap<usize, String>,
}

impl ReceiveFailures {
    /// Records the first panic while receiving `fragment`'s result.
    pub(crate) fn record(&mut self, fragment: usize, message: String) {
        self.failed.entry(fragment).or_insert(message);
    }

    /// Whether receiving `fragment`'s result already panicked.
    pub(crate) fn contains(&self, fragment: usize) -> bool {
        self.failed.contains_key(&fragment)
    }

    /// Moves the recorded fragments from `done` to `failed` in the job's report.
    pub(crate) fn apply(&self, report: &mut JobReport) {
        let initiator = report.job.initiator;
        for (&index, message) in &self.failed {
            let sets = fragmenta_job::report_plumbing::sets_mut(report);
            if !sets.done.remove(index) {
                continue;
            }
            sets.failed.insert(index);
            let at = report.failures.partition_point(|f| f.index < index);
            report.failures.insert(
                at,
                FragmentFailure {
                    index,
                    host: initiator,
                    reason: FailureReason::ReceivePanicked(message.clone()),
                },
            );
        }
    }
}

type Factory = fn(&[u8]) -> Result<Arc<dyn ErasedJob>, String>;

fn deserialize_replica<J: FragmentedJob>(bytes: &[u8]) -> Result<Arc<dyn ErasedJob>, String> {
    // The wire codec's decoder: the memory it may allocate is bounded by the length of the
    // bytes received, never by a length prefix inside them.
    let job: J = fragmenta_wire::decode(bytes, usize::MAX).map_err(|e| e.to_string())?;
    Ok(Arc::new(Erased(Arc::new(job))))
}

/// Two job types registered under one class id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("class id {class} is already registered for {existing}, cannot register {new}")]
pub struct RegisterError {
    /// The contested class id.
    pub class: ClassId,
    /// Type name registered first.
    pub existing: &'static str,
    /// Type name that was refused.
    pub new: &'static str,
}

/// A job type linked into the program: `#[fragmenta::job]` puts one in the program's link-time
/// registry for every job type it marks, and every [`ClusterBuilder`](crate::ClusterBuilder)
/// registers them all when it builds its cluster, on every host. Not made by hand.
#[derive(Debug)]
pub struct LinkedJob {
    register: fn(&mut Registry) -> Result<(), RegisterError>,
}

impl LinkedJob {
    /// The entry of job type `J` (used by the code `#[fragmenta::job]` generates).
    pub const fn of<J: FragmentedJob>() -> LinkedJob {
        LinkedJob {
            register: Registry::register::<J>,
        }
    }
}

inventory::collect!(LinkedJob);

/// The job types a host can run for other hosts, by class id. Only registered types can be
/// deserialized: a class id from a peer never names code the program did not link.
#[derive(Default, Clone)]
pub struct Registry {
    types: HashMap<ClassId, (&'static str, Factory)>,
}

impl Registry {
    /// Registers `J`; registering the same type twice is fine, another type under the same id is
    /// an error.
    pub fn register<J: FragmentedJob>(&mut self) -> Result<(), RegisterError> {
        let name = std::any::type_name::<J>();
        match self.types.get(&J::CLASS_ID) {
            Some((existing, _)) if *existing != name => Err(RegisterError {
                class: J::CLASS_ID,
                existing,
                new: name,
            }),
            _ => {
                self.types
                    .insert(J::CLASS_ID, (name, deserialize_replica::<J>));
                Ok(())
            }
        }
    }

    /// Whether a type is registered under `class`.
    pub fn contains(&self, class: ClassId) -> bool {
        self.types.contains_key(&class)
    }

    /// A registry holding every job type linked into the program with `#[fragmenta::job]`
    /// (see [`LinkedJob`]); an error if two of them share a class id.
    pub fn linked() -> Result<Registry, RegisterError> {
        let mut registry = Registry::default();
        registry.add_linked()?;
        Ok(registry)
    }

    /// Adds every job type linked into the program with `#[fragmenta::job]` to this registry.
    pub fn add_linked(&mut self) -> Result<(), RegisterError> {
        for linked in inventory::iter::<LinkedJob> {
            (linked.register)(self)?;
        }
        Ok(())
    }

    /// Names of the registered types, sorted (for messages and tests).
    pub fn type_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.types.values().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn replica(
        &self,
        class: ClassId,
        bytes: &[u8],
    ) -> Option<Result<Arc<dyn ErasedJob>, String>> {
        self.types.get(&class).map(|(_, f)| f(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fragmenta_job::{CancelToken, JobId};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Holds {
        data: Vec<u8>,
        name: String,
    }

    impl FragmentedJob for Holds {
        const CLASS_ID: ClassId = ClassId::from_name("test.registry.holds");
        fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
    }

    #[test]
    fn replicas_decode_exactly_and_refuse_lying_lengths() {
        let job = Holds {
            data: vec![7; 1000],
            name: "brick".into(),
        };
        let bytes = Erased(Arc::new(job)).serialize().unwrap();
        let replica = deserialize_replica::<Holds>(&bytes).unwrap();
        assert_eq!(replica.serialize().unwrap(), bytes);
        // Trailing bytes are refused.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(deserialize_replica::<Holds>(&longer).is_err());
        // A length prefix claiming 3 GiB for `data` (bincode varint: 0xFC + u32) in a 10-byte
        // message is refused, without allocating what it claims.
        let mut lying = vec![0xFC];
        lying.extend_from_slice(&(3u32 << 30).to_le_bytes());
        lying.extend_from_slice(&[1, 2, 3, 4, 5]);
        let err = deserialize_replica::<Holds>(&lying).err().unwrap();
        assert!(!err.is_empty());
    }

    /// A sink whose receiver is gone, as a remote job's is once it is released or its
    /// initiator is lost.
    struct Gone;

    impl ChunkSink for Gone {
        fn send_chunk(&mut self, _: u32, _: Vec<u8>) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    /// Flushes one chunk and passes on its error, or returns an error of its own.
    #[derive(Serialize, Deserialize)]
    struct Flushes {
        own_error: bool,
    }

    impl FragmentedJob for Flushes {
        const CLASS_ID: ClassId = ClassId::from_name("test.registry.flushes");
        fn execute_fragment(&self, _: &Transaction, _: usize, _: usize, _: &ExecutionContext) {}
        fn execute_fragment_remote(
            &self,
            out: &mut ResultWriter<'_>,
            _: &Transaction,
            _: usize,
            _: usize,
            _: &ExecutionContext,
        ) -> std::io::Result<()> {
            out.write_all(b"part")?;
            out.flush()?;
            if self.own_error {
                return Err(std::io::Error::other("bad input"));
            }
            Ok(())
        }
    }

    fn run(job: &dyn ErasedJob, sink: &mut dyn ChunkSink) -> Result<u32, FailureReason> {
        let host = HostId(1);
        let id = JobId {
            initiator: HostId(0),
            seq: 1,
        };
        let cancel = CancelToken::new();
        let tx = Transaction::new(host, id, cancel.clone());
        let ctx = ExecutionContext::new(host, 0, Vec::new(), cancel);
        job.run_remote(&tx, 0, 1, &ctx, sink)
    }

    #[test]
    fn results_nobody_can_receive_fail_as_initiator_gone_not_as_returned() {
        let holds = Erased(Arc::new(Holds {
            data: vec![1],
            name: "x".into(),
        }));
        // The final flush fails.
        assert_eq!(run(&holds, &mut Gone), Err(FailureReason::InitiatorGone));
        // The fragment's own flush fails and it passes the error on.
        let passes_on = Erased(Arc::new(Flushes { own_error: false }));
        assert_eq!(
            run(&passes_on, &mut Gone),
            Err(FailureReason::InitiatorGone)
        );
        // With a receiver, the same fragment sends its two chunks.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        assert_eq!(run(&passes_on, &mut chunks), Ok(2));
        assert_eq!(chunks, [b"part".to_vec(), Vec::new()]);
        // An error the fragment returned itself stays `Returned`, with its message.
        let own = Erased(Arc::new(Flushes { own_error: true }));
        assert_eq!(
            run(&own, &mut Vec::<Vec<u8>>::new()),
            Err(FailureReason::Returned("bad input".into()))
        );
    }
}

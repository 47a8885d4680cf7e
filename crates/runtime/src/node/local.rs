//! Runs blocks of jobs started on this host, on the original instance, and reports their
//! outcome to the protocol.

use super::job::InitiatedJob;
use super::{Node, Payload};
use crate::executor::BlockRunner;
use fragmenta_job::{ChunkSink, ExecutionContext, FailureReason, JobId};
use fragmenta_sched::{Block, Outcome};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Runs blocks of a job started on this host, on the original instance.
pub(super) struct LocalRunner {
    pub(super) node: Weak<Node>,
    pub(super) job: Arc<InitiatedJob>,
}

impl BlockRunner for LocalRunner {
    fn run(&self, block: &Block, worker: usize) -> Range<usize> {
        let ij = &self.job;
        let _span = tracing::debug_span!("fragments", host = %ij.tx.host(), job = %ij.id,
            fragments = ?block.range, worker)
        .entered();
        let Some(node) = self.node.upgrade() else {
            return 0..0;
        };
        let count = ij.count.load(Ordering::Acquire);
        let ctx = ExecutionContext::new(node.host(), worker, block.gpus.clone(), ij.cancel.clone());
        // Fragments whose earlier attempt on a failed host already delivered (or buffered)
        // chunks run remote style, so the protocol drops the chunks already delivered.
        let rerun = node
            .proto
            .lock()
            .rerun_with_chunks(ij.id, block.range.clone());
        if rerun.is_empty() {
            return self.run_local(&node, block.range.clone(), count, &ctx);
        }
        let end = block.range.end;
        let mut i = block.range.start;
        let not_started = |from: usize| {
            node.with_proto(|p| {
                let _ = p.local_block_done(ij.id, &[], Vec::new(), &[from..end]);
            })
        };
        for f in rerun.into_iter().chain(std::iter::once(end)) {
            if i < f {
                let left = self.run_local(&node, i..f, count, &ctx);
                if !left.is_empty() {
                    // Yielded: the rest of the block (later reruns included) goes back.
                    return left.start..end;
                }
                if ij.cancel.is_cancelled() {
                    // `run_local` reported its own unstarted part; report the rest.
                    if f < end {
                        not_started(f);
                    }
                    return end..end;
                }
            }
            if f == end {
                break;
            }
            if ij.cancel.is_cancelled() {
                not_started(f);
                return end..end;
            }
            self.run_with_chunks(&node, f, count, &ctx);
            i = f + 1;
        }
        end..end
    }
}

impl LocalRunner {
    /// Runs `range` with `execute_fragment` on the original; returns the part given back
    /// because the time slice ran out.
    fn run_local(
        &self,
        node: &Node,
        range: Range<usize>,
        count: usize,
        ctx: &ExecutionContext,
    ) -> Range<usize> {
        let ij = &self.job;
        let out = ij.job.run_local_block(&ij.tx, range, count, ctx);
        let done: usize = out.done.iter().map(|r| r.len()).sum();
        let failed = out
            .failed
            .iter()
            .cloned()
            .map(|(i, msg)| (i, FailureReason::Panicked(msg)))
            .collect();
        node.with_proto(|p| {
            let _ = p.local_block_done(
                ij.id,
                &out.done,
                failed,
                std::slice::from_ref(&out.not_started),
            );
        });
        ij.done.fetch_add(done, Ordering::Relaxed);
        out.yielded
    }

    /// Runs fragment `f` with `execute_fragment_remote` on the original, its chunks going
    /// through the protocol as chunks from this host: exactly once and in order.
    fn run_with_chunks(&self, node: &Node, f: usize, count: usize, ctx: &ExecutionContext) {
        let ij = &self.job;
        let mut sink = ProtoSink {
            node,
            job: ij.id,
            fragment: f,
        };
        let result = ij.job.run_remote(&ij.tx, f, count, ctx, &mut sink);
        let applied =
            node.with_proto(|p| p.local_fragment_finished(ij.id, f, result) == Outcome::Applied);
        if applied {
            ij.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Feeds the chunks of a fragment rerun on the initiator into its protocol.
struct ProtoSink<'a> {
    node: &'a Node,
    job: JobId,
    fragment: usize,
}

impl ChunkSink for ProtoSink<'_> {
    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> std::io::Result<()> {
        let (job, fragment) = (self.job, self.fragment);
        self.node.with_proto(|p| {
            let _ = p.local_chunk(job, fragment, seq, Payload::Bytes(data));
        });
        Ok(())
    }
}

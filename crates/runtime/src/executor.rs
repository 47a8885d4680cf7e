//! The worker pool: threads that take blocks from the host's [`HostQueue`] and run them.
//!
//! Fragments never run on an async reactor thread: the networking side only enqueues work here.
//! Threads are started on demand (a worker that takes a block while another block could start
//! hands it to a waiting worker, or starts a helper with it when nobody waits), up to a cap.
//! A waiting worker is woken only for a block taken for it: never all at once, so workers a
//! past job started cost a later job nothing. Workers beyond one per core exit after a second
//! without work, so the pool shrinks back after a job with many slow, load-free fragments.

use fragmenta_job::{FailureReason, HostId};
use fragmenta_sched::{Block, HostQueue, SubmitError, WorkKey, WorkSpec};
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs the blocks of one job's work on this host, and reports what happened.
pub(crate) trait BlockRunner: Send + Sync + 'static {
    /// Runs `block` on worker `worker`; returns the fragments it gave back unstarted because
    /// its time slice ran out (they return to the front of the queue).
    fn run(&self, block: &Block, worker: usize) -> Range<usize>;
}

struct State {
    queue: HostQueue,
    runners: HashMap<WorkKey, Arc<dyn BlockRunner>>,
    /// Live worker threads.
    workers: usize,
    /// Workers waiting for work.
    idle: usize,
    /// Wake-ups sent to waiting workers and not yet taken up.
    wakes: usize,
    /// Blocks taken for a waiting worker that was woken to run them.
    handoff: VecDeque<Task>,
    /// Indices of workers that exited, reused lowest first so indices stay `< max_workers`.
    free: BinaryHeap<Reverse<usize>>,
    next_index: usize,
    max_workers: usize,
    /// Workers kept however long they are idle.
    keep: usize,
    /// How long a worker beyond `keep` waits for work before it exits.
    idle_timeout: Duration,
    /// Times a waiting worker woke up and found nothing to run.
    wasted_wakeups: u64,
    shutdown: bool,
}

struct Inner {
    state: Mutex<State>,
    cv: Condvar,
    host: HostId,
}

/// The host's worker pool. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Executor {
    inner: Arc<Inner>,
    next_key: Arc<AtomicU64>,
}

type Task = (Block, Arc<dyn BlockRunner>);

/// How long a worker beyond the kept ones stays without work before it exits.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    /// The block this worker thread runs now, with the address of its pool's state.
    static CURRENT: std::cell::RefCell<Option<(usize, Block)>> =
        const { std::cell::RefCell::new(None) };
}

/// A running block's load, lent to the host while its fragment waits (see
/// [`Executor::lend_current`]); taken back on drop.
pub(crate) struct Lent {
    inner: Arc<Inner>,
    block: Block,
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.inner.state.lock().queue.reclaim(&self.block);
    }
}

impl Executor {
    pub(crate) fn new(host: HostId, cores: f32, gpus: usize, max_workers: usize) -> Self {
        Executor {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    // Blocks give their rest back after a time slice, so their size needs no cap
                    // for responsiveness; guided sizing keeps the tail balanced.
                    queue: {
                        let mut q = HostQueue::new(cores, gpus, max_workers);
                        q.set_max_block(1 << 22);
                        q
                    },
                    runners: HashMap::new(),
                    workers: 0,
                    idle: 0,
                    wakes: 0,
                    handoff: VecDeque::new(),
                    free: BinaryHeap::new(),
                    next_index: 0,
                    max_workers,
                    keep: (cores.ceil().max(1.0) as usize).min(max_workers.max(1)),
                    idle_timeout: IDLE_TIMEOUT,
                    wasted_wakeups: 0,
                    shutdown: false,
                }),
                cv: Condvar::new(),
                host,
            }),
            next_key: Arc::new(AtomicU64::new(1)),
        }
    }

    // The node's protocol numbers its work itself; the pool's own tests use this.
    #[allow(dead_code)]
    pub(crate) fn new_key(&self) -> WorkKey {
        WorkKey(self.next_key.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn submit(
        &self,
        key: WorkKey,
        spec: WorkSpec,
        runner: Arc<dyn BlockRunner>,
        fragments: Vec<Range<usize>>,
    ) -> Result<(), SubmitError> {
        let mut st = self.inner.state.lock();
        st.queue.submit(key, spec, fragments)?;
        st.runners.insert(key, runner);
        start_more(&self.inner, &mut st);
        Ok(())
    }

    /// Adds fragments to a submitted work; false if the key is unknown.
    pub(crate) fn add(&self, key: WorkKey, fragments: Vec<Range<usize>>) -> bool {
        let mut st = self.inner.state.lock();
        if !st.queue.add(key, fragments) {
            return false;
        }
        start_more(&self.inner, &mut st);
        true
    }

    /// Drops the work's unstarted fragments and returns them.
    pub(crate) fn drain_pending(&self, key: WorkKey) -> Vec<Range<usize>> {
        self.inner.state.lock().queue.drain_pending(key)
    }

    /// Takes the fragments of `ranges` still queued (not started) out of the work's queue and
    /// returns them (work stealing across hosts).
    pub(crate) fn take_pending(&self, key: WorkKey, ranges: &[Range<usize>]) -> Vec<Range<usize>> {
        self.inner.state.lock().queue.take_pending(key, ranges)
    }

    /// Unregisters a work (its running blocks finish normally); returns unstarted fragments.
    pub(crate) fn remove(&self, key: WorkKey) -> Vec<Range<usize>> {
        let mut st = self.inner.state.lock();
        st.runners.remove(&key);
        st.queue.remove(key)
    }

    /// When the calling thread is one of this pool's workers running a block, lends the
    /// block's CPU load and worker slot to other work until the returned guard drops, and
    /// starts what may start meanwhile: a fragment that blocks waiting for a job of this host
    /// (a nested job) does not hold cores the job needs. `None` on any other thread.
    pub(crate) fn lend_current(&self) -> Option<Lent> {
        let me = Arc::as_ptr(&self.inner) as usize;
        let block = CURRENT.with(|c| match &*c.borrow() {
            Some((pool, block)) if *pool == me => Some(block.clone()),
            _ => None,
        })?;
        let mut st = self.inner.state.lock();
        st.queue.lend(&block);
        start_more(&self.inner, &mut st);
        drop(st);
        Some(Lent {
            inner: self.inner.clone(),
            block,
        })
    }

    pub(crate) fn shutdown(&self) {
        let mut st = self.inner.state.lock();
        st.shutdown = true;
        self.inner.cv.notify_all();
    }
}

#[cfg(test)]
impl Executor {
    /// (live workers, wake-ups that found nothing to run).
    fn pool_stats(&self) -> (usize, u64) {
        let st = self.inner.state.lock();
        (st.workers, st.wasted_wakeups)
    }

    fn set_idle_timeout(&self, timeout: Duration) {
        self.inner.state.lock().idle_timeout = timeout;
    }
}

/// Why `host`'s pool refused a job's work, as the failure of its fragments.
pub(crate) fn refusal(host: HostId, e: &SubmitError) -> FailureReason {
    match e {
        SubmitError::NoGpu => FailureReason::NoGpu(host),
        // Keys come from `new_key`, unique per pool.
        SubmitError::DuplicateKey(_) => FailureReason::CannotRun(host),
    }
}

/// Starts every block that may start now: each goes to a waiting worker woken for it alone, or
/// to a new worker while the pool is below its cap. Workers with nothing to run are never
/// woken, so a pool grown by one job costs later jobs nothing.
fn start_more(inner: &Arc<Inner>, st: &mut State) {
    loop {
        let sleepers = st.idle.saturating_sub(st.wakes);
        if sleepers == 0 && st.workers >= st.max_workers {
            return;
        }
        let Some(task) = take(st) else { return };
        if sleepers > 0 {
            st.handoff.push_back(task);
            st.wakes += 1;
            inner.cv.notify_one();
        } else {
            spawn_worker(inner, st, task);
        }
    }
}

fn take(st: &mut State) -> Option<Task> {
    loop {
        let block = st.queue.next_block()?;
        match st.runners.get(&block.work) {
            Some(r) => return Some((block, r.clone())),
            None => st.queue.finish(&block), // work removed meanwhile
        }
    }
}

fn spawn_worker(inner: &Arc<Inner>, st: &mut State, task: Task) {
    let index = match st.free.pop() {
        Some(Reverse(i)) => i,
        None => {
            st.next_index += 1;
            st.next_index - 1
        }
    };
    st.workers += 1;
    let inner2 = inner.clone();
    let block = task.0.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fragmenta-worker-{}-{index}", inner.host.0))
        .spawn(move || worker_loop(inner2, index, Some(task)));
    if let Err(e) = spawned {
        st.workers -= 1;
        st.free.push(Reverse(index));
        tracing::error!(error = %e, "cannot start a worker thread; the block waits for a worker");
        // Only under resource exhaustion: give the block back, unstarted.
        st.queue.finish(&block);
        st.queue.add(block.work, [block.range]);
    }
}

fn worker_loop(inner: Arc<Inner>, index: usize, mut first: Option<Task>) {
    let mut st = inner.state.lock();
    let mut timed_out = false;
    // Whether this worker just came back from waiting: only such a worker takes a handed-off
    // block (each was taken for one woken worker), so a busy worker never leaves the one woken
    // for it with nothing to do.
    let mut returned = false;
    loop {
        let handed = if std::mem::take(&mut returned) {
            st.handoff.pop_front()
        } else {
            None
        };
        let task = first.take().or(handed).or_else(|| take(&mut st));
        match task {
            Some((block, runner)) => {
                timed_out = false;
                // Other blocks that may start now go to other workers.
                start_more(&inner, &mut st);
                drop(st);
                let pool = Arc::as_ptr(&inner) as usize;
                CURRENT.with(|c| *c.borrow_mut() = Some((pool, block.clone())));
                let leftover = runner.run(&block, index);
                CURRENT.with(|c| *c.borrow_mut() = None);
                st = inner.state.lock();
                st.queue.finish(&block);
                st.queue.requeue_front(block.work, leftover);
            }
            None => {
                let beyond_kept = st.workers > st.keep;
                if st.shutdown || (timed_out && beyond_kept) {
                    st.workers -= 1;
                    st.free.push(Reverse(index));
                    return;
                }
                st.idle += 1;
                let timeout = st.idle_timeout;
                let woke = if beyond_kept {
                    !inner.cv.wait_for(&mut st, timeout).timed_out()
                } else {
                    inner.cv.wait(&mut st);
                    true
                };
                st.idle -= 1;
                if st.wakes > 0 {
                    st.wakes -= 1;
                }
                returned = true;
                timed_out = !woke;
                if woke && st.handoff.is_empty() && !st.shutdown {
                    st.wasted_wakeups += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// Sleeps `sleep` per fragment and counts the fragments run.
    struct Sleeper {
        sleep: Duration,
        ran: AtomicUsize,
    }

    impl BlockRunner for Sleeper {
        fn run(&self, block: &Block, _: usize) -> Range<usize> {
            for _ in block.range.clone() {
                std::thread::sleep(self.sleep);
                self.ran.fetch_add(1, Ordering::Relaxed);
            }
            block.range.end..block.range.end
        }
    }

    fn spec(cpu_load: f32) -> WorkSpec {
        WorkSpec {
            priority: 0,
            cpu_load,
            gpu_load: 0.0,
            thread_limit: 0,
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Grows a pool of 64 workers with 64 load-free sleeping fragments, as a LOCAL job with
    /// `cpu_load 0` does.
    fn grown_pool() -> (Executor, Arc<Sleeper>) {
        let exec = Executor::new(HostId(0), 2.0, 0, 64);
        let slow = Arc::new(Sleeper {
            sleep: Duration::from_millis(60),
            ran: AtomicUsize::new(0),
        });
        let key = exec.new_key();
        let ranges = (0..64).map(|i| i..i + 1).collect();
        exec.submit(key, spec(0.0), slow.clone(), ranges).unwrap();
        wait_for("the slow fragments", || {
            slow.ran.load(Ordering::Relaxed) == 64
        });
        exec.remove(key);
        (exec, slow)
    }

    #[test]
    fn refused_work_fails_with_typed_reasons() {
        let exec = Executor::new(HostId(4), 2.0, 0, 4);
        let idle = Arc::new(Sleeper {
            sleep: Duration::ZERO,
            ran: AtomicUsize::new(0),
        });
        let gpu = WorkSpec {
            gpu_load: 1.0,
            ..spec(1.0)
        };
        let e = exec
            .submit(exec.new_key(), gpu, idle.clone(), vec![0..1])
            .unwrap_err();
        assert_eq!(refusal(HostId(4), &e), FailureReason::NoGpu(HostId(4)));
        // The same key twice: the pool cannot run the second submission.
        let key = exec.new_key();
        exec.submit(key, spec(1.0), idle.clone(), vec![0..1])
            .unwrap();
        let e = exec.submit(key, spec(1.0), idle, vec![1..2]).unwrap_err();
        assert_eq!(refusal(HostId(4), &e), FailureReason::CannotRun(HostId(4)));
        exec.remove(key);
    }

    #[test]
    fn idle_workers_are_not_woken_for_work_they_cannot_run() {
        let (exec, _) = grown_pool();
        let (workers, _) = exec.pool_stats();
        assert!(workers > 32, "the pool grew to {workers} workers");
        // Wait until every worker waits, then feed a CPU job that fits 2 cores in 2,000 small
        // dispatches, as a CLUSTER job's batches arrive.
        wait_for("idle workers", || exec.inner.state.lock().idle == workers);
        let (_, before) = exec.pool_stats();
        let fast = Arc::new(Sleeper {
            sleep: Duration::ZERO,
            ran: AtomicUsize::new(0),
        });
        let key = exec.new_key();
        exec.submit(key, spec(1.0), fast.clone(), vec![0..10])
            .unwrap();
        for i in 1..2000 {
            assert!(exec.add(key, vec![i * 10..i * 10 + 10]));
        }
        wait_for("the fast fragments", || {
            fast.ran.load(Ordering::Relaxed) == 20_000
        });
        let (_, after) = exec.pool_stats();
        // Waking every waiting worker on each dispatch costs tens of thousands of wake-ups
        // that find nothing; waking one worker per block that may start wastes next to none.
        assert!(
            after - before < 200,
            "{} wake-ups found nothing to run",
            after - before
        );
        exec.shutdown();
    }

    #[test]
    fn the_pool_shrinks_back_after_a_job_that_grew_it() {
        let (exec, _) = grown_pool();
        exec.set_idle_timeout(Duration::from_millis(20));
        // Workers beyond one per core exit once they have waited a timeout without work.
        // Every waiting worker is woken once so it waits again under the short timeout.
        exec.inner.cv.notify_all();
        wait_for("the pool to shrink", || exec.pool_stats().0 <= 2);
        // The shrunk pool grows again for the next job that needs it, with indices in range.
        let again = Arc::new(Sleeper {
            sleep: Duration::from_millis(20),
            ran: AtomicUsize::new(0),
        });
        let key = exec.new_key();
        let ranges = (0..64).map(|i| i..i + 1).collect();
        exec.submit(key, spec(0.0), again.clone(), ranges).unwrap();
        wait_for("the second job", || again.ran.load(Ordering::Relaxed) == 64);
        let st = exec.inner.state.lock();
        assert!(
            st.next_index <= 64,
            "worker index {} out of range",
            st.next_index
        );
        drop(st);
        exec.shutdown();
    }
}

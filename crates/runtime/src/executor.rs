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
    /// Blocks taken for a waiting worker that was woken to run them, or for a spinning one.
    handoff: VecDeque<Task>,
    /// Kept workers spinning for work before they wait (see [`SPIN`]).
    spinning: usize,
    /// Blocks in `handoff` taken for spinning workers and not yet taken up.
    spin_claims: usize,
    /// How long a kept worker spins before it waits ([`SPIN`]).
    spin: Duration,
    /// Blocks a spinning worker took up (no wake-up needed).
    spin_takes: u64,
    /// The first block of a work whose submitter is about to wait for it, taken for that
    /// thread to run itself (see [`Executor::help`]).
    reserved: HashMap<WorkKey, Block>,
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
    /// Bumped when a block is handed to a spinning worker: what spinners watch, unlocked.
    spin_signal: AtomicU64,
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

/// How long a kept worker that has just run out of work spins, watching for a block handed to
/// it, before it waits on the condition variable. A thread that sleeps costs a futex wake-up to
/// start again, and on a virtual machine a woken thread can take hundreds of microseconds to
/// run: a program that starts jobs back to back (a loop of `execute`) finds its workers still
/// awake, as rayon's do. At most one fewer than the kept workers spin (the thread that starts
/// the next job needs a core), only after running a block (a worker woken for nothing goes back
/// to sleep), and workers beyond the kept ones never do.
const SPIN: Duration = Duration::from_micros(50);

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
                    spinning: 0,
                    spin_claims: 0,
                    spin: SPIN,
                    spin_takes: 0,
                    reserved: HashMap::new(),
                    free: BinaryHeap::new(),
                    next_index: 0,
                    max_workers,
                    keep: (cores.ceil().max(1.0) as usize).min(max_workers.max(1)),
                    idle_timeout: IDLE_TIMEOUT,
                    wasted_wakeups: 0,
                    shutdown: false,
                }),
                cv: Condvar::new(),
                spin_signal: AtomicU64::new(0),
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
        self.submit_with(key, spec, runner, fragments, false)
    }

    /// [`submit`](Self::submit) for a work whose submitter waits for it next (a job started
    /// with `execute`): its first block, if the host's rules would start it now, is kept for
    /// the submitting thread's [`help`](Self::help) instead of waking a worker, so a job of a
    /// few fragments costs no thread hand-over, and a large one starts on a core that is
    /// already awake while the workers wake up for the rest.
    pub(crate) fn submit_reserving(
        &self,
        key: WorkKey,
        spec: WorkSpec,
        runner: Arc<dyn BlockRunner>,
        fragments: Vec<Range<usize>>,
    ) -> Result<(), SubmitError> {
        self.submit_with(key, spec, runner, fragments, true)
    }

    fn submit_with(
        &self,
        key: WorkKey,
        spec: WorkSpec,
        runner: Arc<dyn BlockRunner>,
        fragments: Vec<Range<usize>>,
        reserve: bool,
    ) -> Result<(), SubmitError> {
        let mut st = self.inner.state.lock();
        st.queue.submit(key, spec, fragments)?;
        st.runners.insert(key, runner);
        if reserve {
            if let Some(block) = st.queue.next_block_if(key) {
                st.reserved.insert(key, block);
            }
        }
        start_more(&self.inner, &mut st);
        Ok(())
    }

    /// Runs blocks of `key`'s work on the calling thread while the host's rules would start
    /// them next (the block reserved for it by [`submit_reserving`](Self::submit_reserving)
    /// first); returns whether it ran any. The calling thread is one more worker meanwhile,
    /// with an index of its own, so every rule of the pool (loads, thread limits, priorities,
    /// at most `max_workers` running) holds as for its own threads. Called by a thread that
    /// waits for the work's job and would otherwise sleep.
    pub(crate) fn help(&self, key: WorkKey) -> bool {
        let mut st = self.inner.state.lock();
        let mut reserved = st.reserved.remove(&key);
        if st.workers >= st.max_workers {
            // Every index is a live worker's: the reserved block goes to them.
            if let Some(block) = reserved {
                give_back(&mut st, block);
                start_more(&self.inner, &mut st);
            }
            return false;
        }
        let index = take_index(&mut st);
        st.workers += 1;
        let outer = CURRENT.with(|c| c.borrow_mut().take());
        let mut ran = false;
        loop {
            let next = reserved
                .take()
                .or_else(|| st.queue.next_block_if(key))
                .or_else(|| take_back(&mut st, key));
            let Some(block) = next else {
                break;
            };
            let Some(runner) = st.runners.get(&key).cloned() else {
                st.queue.finish(&block); // work removed meanwhile
                break;
            };
            // Other blocks that may start now go to the pool's threads.
            start_more(&self.inner, &mut st);
            st = run_block(&self.inner, st, &block, &*runner, index);
            ran = true;
        }
        CURRENT.with(|c| *c.borrow_mut() = outer);
        st.workers -= 1;
        st.free.push(Reverse(index));
        // What this thread leaves (blocks of other works, freed capacity) goes to the pool.
        start_more(&self.inner, &mut st);
        ran
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
        if let Some(block) = st.reserved.remove(&key) {
            give_back(&mut st, block);
        }
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
        self.inner.spin_signal.fetch_add(1, Ordering::Release);
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

    fn set_spin(&self, spin: Duration) {
        self.inner.state.lock().spin = spin;
    }

    /// Blocks a spinning worker took up.
    fn spin_takes(&self) -> u64 {
        self.inner.state.lock().spin_takes
    }

    /// Whether a worker spins now.
    fn spinning(&self) -> bool {
        self.inner.state.lock().spinning > 0
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
        let spinners = st.spinning.saturating_sub(st.spin_claims);
        let sleepers = st.idle.saturating_sub(st.wakes);
        if spinners == 0 && sleepers == 0 && st.workers >= st.max_workers {
            return;
        }
        let Some(task) = take(st) else { return };
        if spinners > 0 {
            // An awake worker takes it up without a wake-up.
            st.handoff.push_back(task);
            st.spin_claims += 1;
            inner.spin_signal.fetch_add(1, Ordering::Release);
        } else if sleepers > 0 {
            st.handoff.push_back(task);
            st.wakes += 1;
            inner.cv.notify_one();
        } else {
            spawn_worker(inner, st, task);
        }
    }
}

/// A block of `key` handed to a worker that was woken for it and has not taken it up yet: the
/// helping thread is awake now, while a woken thread may take a long while to run (on a
/// virtual machine, an idle core can take hundreds of microseconds to be scheduled again).
/// The woken worker then finds nothing and waits again.
fn take_back(st: &mut State, key: WorkKey) -> Option<Block> {
    let at = st.handoff.iter().rposition(|(b, _)| b.work == key)?;
    st.handoff.remove(at).map(|(block, _)| block)
}

/// Spins (yielding the core to any thread that wants it) for up to [`SPIN`] with the lock
/// released, watching for a block handed to a spinning worker; returns it, or `None` when the
/// time is up (or the pool shuts down).
fn spin(inner: &Inner, st: &mut parking_lot::MutexGuard<'_, State>) -> Option<Task> {
    st.spinning += 1;
    let deadline = std::time::Instant::now() + st.spin;
    let task = loop {
        let seen = inner.spin_signal.load(Ordering::Acquire);
        let over = parking_lot::MutexGuard::unlocked(st, || loop {
            if inner.spin_signal.load(Ordering::Acquire) != seen {
                return false;
            }
            std::thread::yield_now();
            if std::time::Instant::now() >= deadline {
                return true;
            }
        });
        // Any spinner may take any block claimed for spinners: the count is what matters.
        if st.spin_claims > 0 {
            st.spin_claims -= 1;
            if let Some(task) = st.handoff.pop_front() {
                st.spin_takes += 1;
                break Some(task);
            }
        }
        if over || st.shutdown {
            break None;
        }
    };
    st.spinning -= 1;
    task
}

/// Runs `block` on this thread as worker `index`, with the pool's lock released meanwhile,
/// then returns the block's resources, its unstarted rest to the front of its work's queue,
/// and the speed of its fragments to the queue's block sizing.
fn run_block<'a>(
    inner: &'a Inner,
    st: parking_lot::MutexGuard<'a, State>,
    block: &Block,
    runner: &dyn BlockRunner,
    index: usize,
) -> parking_lot::MutexGuard<'a, State> {
    drop(st);
    let pool = std::ptr::from_ref(inner) as usize;
    CURRENT.with(|c| *c.borrow_mut() = Some((pool, block.clone())));
    let started = std::time::Instant::now();
    let leftover = runner.run(block, index);
    let elapsed = started.elapsed();
    CURRENT.with(|c| *c.borrow_mut() = None);
    let mut st = inner.state.lock();
    st.queue.finish(block);
    let ran = leftover.start.saturating_sub(block.range.start);
    st.queue.record_speed(block.work, ran, elapsed);
    st.queue.requeue_front(block.work, leftover);
    st
}

/// Returns a block taken and never started to the front of its work's queue.
fn give_back(st: &mut State, block: Block) {
    st.queue.finish(&block);
    st.queue.requeue_front(block.work, block.range);
}

/// A worker index for one more thread, the lowest an exited worker left first: with
/// `workers < max_workers`, one below `max_workers`.
fn take_index(st: &mut State) -> usize {
    match st.free.pop() {
        Some(Reverse(i)) => i,
        None => {
            st.next_index += 1;
            st.next_index - 1
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
    let index = take_index(st);
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
    // Whether this worker ran a block since it last waited (only such a worker spins).
    let mut ran = false;
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
                st = run_block(&inner, st, &block, &*runner, index);
                ran = true;
            }
            None => {
                let beyond_kept = st.workers > st.keep;
                if st.shutdown || (timed_out && beyond_kept) {
                    st.workers -= 1;
                    st.free.push(Reverse(index));
                    return;
                }
                if std::mem::take(&mut ran) && !beyond_kept && st.spinning + 1 < st.keep {
                    if let Some(task) = spin(&inner, &mut st) {
                        first = Some(task);
                        continue;
                    }
                    if st.shutdown {
                        continue;
                    }
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

    /// Records the threads that ran its blocks.
    #[derive(Default)]
    struct Threads(parking_lot::Mutex<Vec<std::thread::ThreadId>>);

    impl BlockRunner for Threads {
        fn run(&self, block: &Block, _: usize) -> Range<usize> {
            self.0.lock().push(std::thread::current().id());
            block.range.end..block.range.end
        }
    }

    #[test]
    fn a_reserved_block_runs_on_the_waiting_thread_without_a_worker() {
        let exec = Executor::new(HostId(0), 2.0, 0, 8);
        let seen = Arc::new(Threads::default());
        let key = exec.new_key();
        exec.submit_reserving(key, spec(1.0), seen.clone(), vec![0..1])
            .unwrap();
        assert!(exec.help(key), "the caller ran the reserved block");
        assert_eq!(*seen.0.lock(), vec![std::thread::current().id()]);
        assert_eq!(exec.pool_stats().0, 0, "no worker thread was started");
        // Nothing is left to help with.
        assert!(!exec.help(key));
    }

    #[test]
    fn a_helping_thread_runs_only_what_the_host_would_start_next() {
        let exec = Executor::new(HostId(0), 1.0, 0, 8);
        // A running block of another work holds the only core.
        let gate = Arc::new(Gate::default());
        let other = exec.new_key();
        exec.submit(other, spec(1.0), gate.clone(), vec![0..1])
            .unwrap();
        wait_for("the other block to start", || {
            gate.started.load(Ordering::SeqCst)
        });
        let seen = Arc::new(Threads::default());
        let key = exec.new_key();
        exec.submit_reserving(key, spec(1.0), seen.clone(), vec![0..4])
            .unwrap();
        // The core is taken: nothing was reserved, and helping runs nothing.
        assert!(!exec.help(key));
        assert!(seen.0.lock().is_empty());
        gate.open.store(true, Ordering::SeqCst);
        wait_for("the work to run on the pool", || !seen.0.lock().is_empty());
        exec.remove(other);
    }

    #[test]
    fn removing_a_work_returns_its_reserved_block_unstarted() {
        let exec = Executor::new(HostId(0), 2.0, 0, 8);
        let seen = Arc::new(Threads::default());
        let key = exec.new_key();
        exec.submit_reserving(key, spec(1.0), seen.clone(), vec![0..1])
            .unwrap();
        assert_eq!(exec.remove(key), vec![0..1]);
        assert!(!exec.help(key));
        assert!(seen.0.lock().is_empty());
    }

    #[test]
    fn a_worker_that_just_ran_takes_the_next_block_while_it_spins() {
        let exec = Executor::new(HostId(0), 2.0, 0, 8);
        exec.set_spin(Duration::from_secs(30));
        let seen = Arc::new(Threads::default());
        let first = exec.new_key();
        exec.submit(first, spec(1.0), seen.clone(), vec![0..1])
            .unwrap();
        wait_for("the first block", || seen.0.lock().len() == 1);
        wait_for("the worker to spin", || exec.spinning());
        let second = exec.new_key();
        exec.submit(second, spec(1.0), seen.clone(), vec![0..1])
            .unwrap();
        wait_for("the second block", || seen.0.lock().len() == 2);
        let ran = seen.0.lock().clone();
        assert_eq!(ran[0], ran[1], "the same worker ran both");
        assert_eq!(exec.spin_takes(), 1, "taken up by the spinning worker");
        assert_eq!(exec.pool_stats(), (1, 0), "one worker, no wasted wake-up");
        exec.shutdown();
    }

    /// A block that runs until `open` is set.
    #[derive(Default)]
    struct Gate {
        started: std::sync::atomic::AtomicBool,
        open: std::sync::atomic::AtomicBool,
    }

    impl BlockRunner for Gate {
        fn run(&self, block: &Block, _: usize) -> Range<usize> {
            self.started.store(true, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            block.range.end..block.range.end
        }
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

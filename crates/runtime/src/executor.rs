//! The worker pool: threads that take blocks from the host's [`HostQueue`] and run them.
//!
//! Fragments never run on an async reactor thread: the networking side only enqueues work here.
//! Threads are started on demand (a worker that takes a block while another block could start
//! and nobody is idle starts a helper with it), up to a cap, and park when nothing may start.

use fragmenta_job::HostId;
use fragmenta_sched::{Block, HostQueue, SubmitError, WorkKey, WorkSpec};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// Runs the blocks of one job's work on this host, and reports what happened.
pub(crate) trait BlockRunner: Send + Sync + 'static {
    /// Runs `block` on worker `worker`; returns the fragments it gave back unstarted because
    /// its time slice ran out (they return to the front of the queue).
    fn run(&self, block: &Block, worker: usize) -> Range<usize>;
}

struct State {
    queue: HostQueue,
    runners: HashMap<WorkKey, Arc<dyn BlockRunner>>,
    workers: usize,
    idle: usize,
    max_workers: usize,
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
}

type Task = (Block, Arc<dyn BlockRunner>);

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
                    max_workers,
                    shutdown: false,
                }),
                cv: Condvar::new(),
                host,
            }),
        }
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
        self.kick(st);
        Ok(())
    }

    /// Adds fragments to a submitted work; false if the key is unknown.
    pub(crate) fn add(&self, key: WorkKey, fragments: Vec<Range<usize>>) -> bool {
        let mut st = self.inner.state.lock();
        if !st.queue.add(key, fragments) {
            return false;
        }
        self.kick(st);
        true
    }

    /// Drops the work's unstarted fragments and returns them.
    pub(crate) fn drain_pending(&self, key: WorkKey) -> Vec<Range<usize>> {
        self.inner.state.lock().queue.drain_pending(key)
    }

    /// Unregisters a work (its running blocks finish normally); returns unstarted fragments.
    pub(crate) fn remove(&self, key: WorkKey) -> Vec<Range<usize>> {
        let mut st = self.inner.state.lock();
        st.runners.remove(&key);
        st.queue.remove(key)
    }

    pub(crate) fn shutdown(&self) {
        let mut st = self.inner.state.lock();
        st.shutdown = true;
        self.inner.cv.notify_all();
    }

    /// Wakes idle workers, or starts workers for blocks that may start now.
    fn kick(&self, mut st: MutexGuard<'_, State>) {
        if st.idle > 0 {
            self.inner.cv.notify_all();
            return;
        }
        while st.workers < st.max_workers {
            let Some(task) = take(&mut st) else { break };
            spawn_worker(&self.inner, &mut st, task);
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
    let index = st.workers;
    st.workers += 1;
    let inner2 = inner.clone();
    let block = task.0.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fragmenta-worker-{}-{index}", inner.host.0))
        .spawn(move || worker_loop(inner2, index, Some(task)));
    if let Err(e) = spawned {
        st.workers -= 1;
        tracing::error!(error = %e, "cannot start a worker thread; the block waits for a worker");
        // Only under resource exhaustion: give the block back, unstarted.
        st.queue.finish(&block);
        st.queue.add(block.work, [block.range]);
    }
}

fn worker_loop(inner: Arc<Inner>, index: usize, mut first: Option<Task>) {
    let mut st = inner.state.lock();
    loop {
        let task = first.take().or_else(|| take(&mut st));
        match task {
            Some((block, runner)) => {
                if st.idle == 0 && st.workers < st.max_workers {
                    if let Some(extra) = take(&mut st) {
                        spawn_worker(&inner, &mut st, extra);
                    }
                }
                drop(st);
                let leftover = runner.run(&block, index);
                st = inner.state.lock();
                st.queue.finish(&block);
                st.queue.requeue_front(block.work, leftover);
                if st.idle > 0 {
                    inner.cv.notify_one();
                }
            }
            None => {
                if st.shutdown {
                    st.workers -= 1;
                    return;
                }
                st.idle += 1;
                inner.cv.wait(&mut st);
                st.idle -= 1;
            }
        }
    }
}

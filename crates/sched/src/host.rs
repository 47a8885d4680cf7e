//! Per-host admission: which waiting fragments may start now on this host.
//!
//! A host runs fragments of many jobs (from many initiators). [`HostQueue`] holds their waiting
//! fragments and decides what starts next, under the host's rules:
//! - the sum of `cpu_load` of running fragments stays ≤ the host's cores, and of `gpu_load` on
//!   each GPU ≤ 1.0 (a fragment whose load exceeds the whole host runs alone, so it cannot wait
//!   forever);
//! - at most `thread_limit` fragments of one job run at once (0 = no limit);
//! - among waiting fragments, the lower priority value runs first, then the earlier submission.
//!   A job that waits for a resource blocks lower-priority jobs that need the same resource, so
//!   small low-priority fragments cannot starve a large high-priority one.
//!
//! Fragments are handed out in *blocks*: consecutive fragments of one job that one worker runs
//! one after the other, so the per-fragment cost is a loop iteration. Block sizes follow guided
//! self-scheduling (remaining / (2 × parallelism), capped), so the tail stays balanced.

use fragmenta_job::FragmentSet;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

/// Identifies one job's work on this host (assigned by the caller; unique per host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkKey(pub u64);

/// What the host needs to know about a job to admit its fragments.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkSpec {
    /// Smaller runs first.
    pub priority: i8,
    /// CPU load of one fragment.
    pub cpu_load: f32,
    /// GPU load of one fragment.
    pub gpu_load: f32,
    /// Most fragments of this job running at once here; 0 = no limit.
    pub thread_limit: usize,
}

/// Consecutive fragments of one job for one worker to run in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The job's work on this host.
    pub work: WorkKey,
    /// Fragment indices, run in ascending order.
    pub range: Range<usize>,
    /// GPU ordinals reserved for the block (empty for CPU jobs).
    pub gpus: Vec<u32>,
    /// CPU load reserved for the block.
    pub cpu_load: f32,
    /// GPU load reserved for the block (spread over `gpus`).
    pub gpu_load: f32,
}

/// Errors from [`HostQueue::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The job needs a GPU and this host has none.
    NoGpu,
    /// The key is already in use.
    DuplicateKey(WorkKey),
}

#[derive(Debug)]
struct Work {
    spec: WorkSpec,
    order: u64,
    pending: VecDeque<Range<usize>>,
    pending_len: usize,
    running: usize,
    /// Nanoseconds per fragment its finished blocks took (0: none finished yet).
    ns_per_fragment: f64,
}

/// Least run time of a block, once a work's fragment speed is known: guided sizing alone ends
/// a job with dozens of blocks of a few fragments, each a round trip through the host's lock,
/// which for fast fragments costs more than running them. A block's fragments are kept to
/// about this long at least, so the tail of a job is balanced to within about this much.
const MIN_BLOCK_NANOS: f64 = 5_000.0;

/// The admission state machine of one host. See the module docs for the rules.
#[derive(Debug)]
pub struct HostQueue {
    cores: f32,
    gpu_used: Vec<f32>,
    cpu_used: f32,
    running: usize,
    max_running: usize,
    max_block: usize,
    works: BTreeMap<WorkKey, Work>,
    waiting: BTreeSet<(i8, u64, WorkKey)>,
    next_order: u64,
}

const EPS: f32 = 1e-4;

impl HostQueue {
    /// A host with `cores` cores and `gpus` GPUs, running at most `max_running` fragments at once
    /// (the worker pool's size; fragments with tiny loads are capped by it).
    pub fn new(cores: f32, gpus: usize, max_running: usize) -> Self {
        HostQueue {
            cores: cores.max(0.0),
            gpu_used: vec![0.0; gpus],
            cpu_used: 0.0,
            running: 0,
            max_running: max_running.max(1),
            max_block: 4096,
            works: BTreeMap::new(),
            waiting: BTreeSet::new(),
            next_order: 0,
        }
    }

    /// Caps the number of fragments in one block (default 4096).
    pub fn set_max_block(&mut self, max_block: usize) {
        self.max_block = max_block.max(1);
    }

    /// Number of GPUs of the host.
    pub fn gpus(&self) -> usize {
        self.gpu_used.len()
    }

    /// Registers a job's work with its first fragments.
    pub fn submit(
        &mut self,
        key: WorkKey,
        spec: WorkSpec,
        fragments: impl IntoIterator<Item = Range<usize>>,
    ) -> Result<(), SubmitError> {
        if spec.gpu_load > 0.0 && self.gpu_used.is_empty() {
            return Err(SubmitError::NoGpu);
        }
        if self.works.contains_key(&key) {
            return Err(SubmitError::DuplicateKey(key));
        }
        let order = self.next_order;
        self.next_order += 1;
        self.works.insert(
            key,
            Work {
                spec,
                order,
                pending: VecDeque::new(),
                pending_len: 0,
                running: 0,
                ns_per_fragment: 0.0,
            },
        );
        self.add(key, fragments);
        Ok(())
    }

    /// Adds fragments to a registered work; returns false if the key is unknown.
    pub fn add(&mut self, key: WorkKey, fragments: impl IntoIterator<Item = Range<usize>>) -> bool {
        let Some(w) = self.works.get_mut(&key) else {
            return false;
        };
        for r in fragments {
            if r.start < r.end {
                w.pending_len += r.end - r.start;
                w.pending.push_back(r);
            }
        }
        if w.pending_len > 0 {
            self.waiting.insert((w.spec.priority, w.order, key));
        }
        true
    }

    /// Records that a block of `key` ran `fragments` fragments in `elapsed`: blocks taken later
    /// hold at least about 5 µs of fragments at that speed.
    pub fn record_speed(&mut self, key: WorkKey, fragments: usize, elapsed: std::time::Duration) {
        let Some(w) = self.works.get_mut(&key) else {
            return;
        };
        if fragments == 0 {
            return;
        }
        let ns = elapsed.as_nanos() as f64 / fragments as f64;
        // The mean of the last estimate and this block: fragments that slow down are seen
        // within a block or two.
        w.ns_per_fragment = if w.ns_per_fragment > 0.0 {
            (w.ns_per_fragment + ns) / 2.0
        } else {
            ns
        };
    }

    /// Puts fragments of a block that stopped early (without being cancelled) back at the front
    /// of the work's queue, so they run next; returns false if the key is unknown.
    pub fn requeue_front(&mut self, key: WorkKey, range: Range<usize>) -> bool {
        let Some(w) = self.works.get_mut(&key) else {
            return false;
        };
        if range.start < range.end {
            w.pending_len += range.end - range.start;
            w.pending.push_front(range);
            self.waiting.insert((w.spec.priority, w.order, key));
        }
        true
    }

    /// Drops the work's fragments that have not started and returns them. Running blocks
    /// continue; the work stays registered until [`remove`](Self::remove).
    #[must_use = "the fragments drained are no longer queued"]
    pub fn drain_pending(&mut self, key: WorkKey) -> Vec<Range<usize>> {
        let Some(w) = self.works.get_mut(&key) else {
            return Vec::new();
        };
        self.waiting.remove(&(w.spec.priority, w.order, key));
        w.pending_len = 0;
        w.pending.drain(..).collect()
    }

    /// Takes the fragments of `ranges` that are still queued (not started) out of the work's
    /// queue and returns them, ascending; the rest of the queue keeps its order.
    pub fn take_pending(&mut self, key: WorkKey, ranges: &[Range<usize>]) -> Vec<Range<usize>> {
        let Some(w) = self.works.get_mut(&key) else {
            return Vec::new();
        };
        let mut asked = FragmentSet::new();
        for r in ranges {
            asked.insert_range(r.clone());
        }
        let mut taken = FragmentSet::new();
        let mut kept = VecDeque::with_capacity(w.pending.len());
        for r in w.pending.drain(..) {
            let hit = asked.intersect_range(r.clone());
            if hit.is_empty() {
                kept.push_back(r);
                continue;
            }
            let mut start = r.start;
            for h in hit.ranges() {
                if start < h.start {
                    kept.push_back(start..h.start);
                }
                start = h.end;
            }
            if start < r.end {
                kept.push_back(start..r.end);
            }
            taken.extend_from(&hit);
        }
        w.pending = kept;
        w.pending_len -= taken.len();
        if w.pending_len == 0 {
            self.waiting.remove(&(w.spec.priority, w.order, key));
        }
        taken.to_ranges()
    }

    /// Unregisters a work; returns its fragments that had not started.
    pub fn remove(&mut self, key: WorkKey) -> Vec<Range<usize>> {
        let pending = self.drain_pending(key);
        self.works.remove(&key);
        pending
    }

    /// Whether the work has no waiting and no running fragments.
    pub fn is_idle(&self, key: WorkKey) -> bool {
        self.works
            .get(&key)
            .is_none_or(|w| w.pending_len == 0 && w.running == 0)
    }

    /// Fragments of the work waiting to start.
    pub fn pending(&self, key: WorkKey) -> usize {
        self.works.get(&key).map_or(0, |w| w.pending_len)
    }

    /// Blocks running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Sum of the CPU loads of running blocks.
    pub fn cpu_used(&self) -> f32 {
        self.cpu_used
    }

    /// The next block to start, reserving its resources, or `None` if nothing may start now.
    /// Each block must be handed back with [`finish`](Self::finish).
    #[must_use = "a block taken from the queue and dropped is never run"]
    pub fn next_block(&mut self) -> Option<Block> {
        let chosen = self.choose()?;
        self.take_chosen(chosen)
    }

    /// [`next_block`](Self::next_block) if the block it would start now is `key`'s, else
    /// `None` and nothing changes: a thread that waits for `key`'s job can run the job's next
    /// block itself without jumping ahead of anything the host's rules would start first.
    #[must_use = "a block taken from the queue and dropped is never run"]
    pub fn next_block_if(&mut self, key: WorkKey) -> Option<Block> {
        let chosen = self.choose()?;
        if chosen.2 != key {
            return None;
        }
        self.take_chosen(chosen)
    }

    /// The work whose block would start next, with the GPUs it would take.
    fn choose(&self) -> Option<(i8, u64, WorkKey, Vec<u32>)> {
        if self.running >= self.max_running {
            return None;
        }
        let mut cpu_blocked = false;
        let mut gpu_blocked = false;
        let mut chosen = None;
        for &(prio, order, key) in &self.waiting {
            let w = &self.works[&key];
            let s = &w.spec;
            if s.thread_limit > 0 && w.running >= s.thread_limit {
                continue;
            }
            let needs_cpu = s.cpu_load > 0.0;
            let needs_gpu = s.gpu_load > 0.0;
            if (needs_cpu && cpu_blocked) || (needs_gpu && gpu_blocked) {
                continue;
            }
            let cpu_ok = !needs_cpu
                || self.cpu_used + s.cpu_load <= self.cores + EPS
                || self.cpu_used <= EPS; // an oversized fragment runs alone
            let gpus = if needs_gpu {
                self.find_gpus(s.gpu_load)
            } else {
                Some(Vec::new())
            };
            match (cpu_ok, gpus) {
                (true, Some(gpus)) => {
                    chosen = Some((prio, order, key, gpus));
                    break;
                }
                (c, g) => {
                    cpu_blocked |= needs_cpu && !c;
                    gpu_blocked |= needs_gpu && g.is_none();
                }
            }
        }
        chosen
    }

    fn take_chosen(&mut self, chosen: (i8, u64, WorkKey, Vec<u32>)) -> Option<Block> {
        let (prio, order, key, gpus) = chosen;
        let parallelism = self.parallelism_of(key);
        let max_block = self.max_block;
        let w = self.works.get_mut(&key)?;
        let guided = w.pending_len.div_ceil(2 * parallelism);
        let floor = if w.ns_per_fragment > 0.0 {
            (MIN_BLOCK_NANOS / w.ns_per_fragment) as usize
        } else {
            1
        };
        let want = guided.max(floor).clamp(1, max_block);
        let front = w.pending.front_mut()?;
        let len = want.min(front.end - front.start);
        let range = front.start..front.start + len;
        front.start += len;
        if front.start >= front.end {
            w.pending.pop_front();
        }
        w.pending_len -= len;
        w.running += 1;
        let (cpu, gpu) = (w.spec.cpu_load, w.spec.gpu_load);
        if w.pending_len == 0 {
            self.waiting.remove(&(prio, order, key));
        }
        self.running += 1;
        self.cpu_used += cpu;
        self.reserve_gpus(&gpus, gpu);
        Some(Block {
            work: key,
            range,
            gpus,
            cpu_load: cpu,
            gpu_load: gpu,
        })
    }

    /// Returns a block's resources after its last fragment finished (or it stopped early).
    /// Works even if the work was removed meanwhile.
    pub fn finish(&mut self, block: &Block) {
        if let Some(w) = self.works.get_mut(&block.work) {
            w.running = w.running.saturating_sub(1);
        }
        let (cpu, gpu) = (block.cpu_load, block.gpu_load);
        self.running = self.running.saturating_sub(1);
        self.cpu_used = (self.cpu_used - cpu).max(0.0);
        if self.running == 0 {
            self.cpu_used = 0.0; // no float drift when idle
        }
        let per = gpu_share(gpu, block.gpus.len());
        for &g in &block.gpus {
            if let Some(u) = self.gpu_used.get_mut(g as usize) {
                *u = (*u - per).max(0.0);
            }
        }
    }

    /// Lends a running block's CPU load and worker slot to other work while the block waits
    /// for something that needs them (a fragment waiting for a nested job). Its GPUs and its
    /// place under its job's thread limit stay reserved. Undo with [`reclaim`](Self::reclaim)
    /// before [`finish`](Self::finish).
    pub fn lend(&mut self, block: &Block) {
        self.running = self.running.saturating_sub(1);
        self.cpu_used = (self.cpu_used - block.cpu_load).max(0.0);
        if self.running == 0 {
            self.cpu_used = 0.0;
        }
    }

    /// Takes back what [`lend`](Self::lend) lent, even beyond the host's capacity: the block
    /// goes on at once, and nothing new starts until the loads are back within it.
    pub fn reclaim(&mut self, block: &Block) {
        self.running += 1;
        self.cpu_used += block.cpu_load;
    }

    /// How many blocks of this work could run at once here.
    fn parallelism_of(&self, key: WorkKey) -> usize {
        let s = &self.works[&key].spec;
        let mut p = self.max_running;
        if s.cpu_load > 0.0 {
            p = p.min(((self.cores / s.cpu_load).floor() as usize).max(1));
        }
        if s.gpu_load > 0.0 {
            let per_gpu = if s.gpu_load <= 1.0 {
                (1.0 / s.gpu_load).floor() as usize
            } else {
                1
            };
            p = p.min((per_gpu * self.gpu_used.len()).max(1));
        }
        if s.thread_limit > 0 {
            p = p.min(s.thread_limit);
        }
        p.max(1)
    }

    /// GPUs for a fragment with `load`: one GPU with room for a load ≤ 1, else ⌈load⌉ idle GPUs
    /// (or all of them, alone, if the host has fewer).
    fn find_gpus(&self, load: f32) -> Option<Vec<u32>> {
        if load <= 1.0 {
            self.gpu_used
                .iter()
                .enumerate()
                .filter(|(_, u)| **u + load <= 1.0 + EPS)
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| vec![i as u32])
        } else {
            let need = (load.ceil() as usize).min(self.gpu_used.len());
            let idle: Vec<u32> = self
                .gpu_used
                .iter()
                .enumerate()
                .filter(|(_, u)| **u <= EPS)
                .map(|(i, _)| i as u32)
                .take(need)
                .collect();
            (idle.len() == need && need > 0).then_some(idle)
        }
    }

    fn reserve_gpus(&mut self, gpus: &[u32], load: f32) {
        let per = gpu_share(load, gpus.len());
        for &g in gpus {
            if let Some(u) = self.gpu_used.get_mut(g as usize) {
                *u += per;
            }
        }
    }
}

fn gpu_share(load: f32, n: usize) -> f32 {
    if n == 0 {
        0.0
    } else if load <= 1.0 {
        load
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(priority: i8, cpu: f32, gpu: f32, limit: usize) -> WorkSpec {
        WorkSpec {
            priority,
            cpu_load: cpu,
            gpu_load: gpu,
            thread_limit: limit,
        }
    }

    #[test]
    fn cpu_load_caps_concurrency() {
        let mut q = HostQueue::new(2.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 0), [0..100])
            .unwrap();
        let a = q.next_block().unwrap();
        let b = q.next_block().unwrap();
        assert!(
            q.next_block().is_none(),
            "two cores, load 1.0: two blocks at most"
        );
        assert_eq!(a.range, 0..25, "guided: 100 / (2*2)");
        assert_eq!(b.range, 25..44);
        q.finish(&a);
        assert!(q.next_block().is_some());
    }

    #[test]
    fn blocks_of_fast_fragments_hold_at_least_five_microseconds_of_them() {
        let mut q = HostQueue::new(2.0, 0, 64);
        q.set_max_block(1 << 22);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 0), [0..1_000_000])
            .unwrap();
        let a = q.next_block().unwrap();
        assert_eq!(a.range.len(), 250_000, "guided while the speed is unknown");
        q.finish(&a);
        // 1 ns per fragment: at least 5,000 fragments a block from now on, however few remain.
        q.record_speed(WorkKey(1), 250_000, std::time::Duration::from_micros(250));
        let mut sizes = Vec::new();
        while let Some(b) = q.next_block() {
            sizes.push(b.range.len());
            q.finish(&b);
        }
        assert_eq!(sizes.iter().sum::<usize>(), 750_000);
        let (last, rest) = sizes.split_last().unwrap();
        assert!(rest.iter().all(|&n| n >= 5_000), "{sizes:?}");
        assert!(*last <= 5_000);
        // Guided alone would have ended with dozens of tiny blocks.
        assert!(sizes.len() < 40, "{} blocks", sizes.len());
        // Slow fragments (1 ms each): blocks stay guided, down to one fragment.
        q.submit(WorkKey(2), spec(0, 1.0, 0.0, 0), [0..8]).unwrap();
        let b = q.next_block().unwrap();
        q.finish(&b);
        q.record_speed(
            WorkKey(2),
            b.range.len(),
            std::time::Duration::from_millis(2),
        );
        let mut slow = Vec::new();
        while let Some(b) = q.next_block() {
            slow.push(b.range.len());
            q.finish(&b);
        }
        assert_eq!(slow, [2, 1, 1, 1, 1]);
    }

    #[test]
    fn next_block_if_takes_only_the_block_the_rules_would_start_next() {
        let mut q = HostQueue::new(4.0, 0, 64);
        // Lower value first: work 1 would start before work 2.
        q.submit(WorkKey(1), spec(1, 1.0, 0.0, 1), [0..10]).unwrap();
        q.submit(WorkKey(2), spec(5, 1.0, 0.0, 0), [0..10]).unwrap();
        assert!(q.next_block_if(WorkKey(2)).is_none(), "work 1 goes first");
        assert_eq!((q.running(), q.cpu_used()), (0, 0.0), "nothing changed");
        let a = q.next_block_if(WorkKey(1)).expect("work 1's block");
        assert_eq!(a.work, WorkKey(1));
        // Work 1's thread limit of 1 is reached: work 2 is next.
        assert!(q.next_block_if(WorkKey(1)).is_none());
        let b = q.next_block_if(WorkKey(2)).expect("work 2's block");
        assert_eq!(b.work, WorkKey(2));
        assert_eq!((q.running(), q.cpu_used()), (2, 2.0));
    }

    #[test]
    fn a_lent_block_lets_others_start_and_takes_its_load_back() {
        let mut q = HostQueue::new(2.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 0), [0..100])
            .unwrap();
        let a = q.next_block().unwrap();
        let _b = q.next_block().unwrap();
        assert!(q.next_block().is_none());
        q.lend(&a);
        assert_eq!((q.running(), q.cpu_used()), (1, 1.0));
        let c = q.next_block().expect("the lent core runs another block");
        assert!(q.next_block().is_none());
        // Back over capacity: nothing starts until the loads fit again.
        q.reclaim(&a);
        assert_eq!((q.running(), q.cpu_used()), (3, 3.0));
        q.finish(&c);
        assert!(q.next_block().is_none(), "2 of 2 cores still used");
        q.finish(&a);
        assert!(q.next_block().is_some());
    }

    #[test]
    fn fractional_loads_run_more_fragments_and_oversized_runs_alone() {
        let mut q = HostQueue::new(2.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 0.5, 0.0, 0), [0..100])
            .unwrap();
        let blocks: Vec<_> = std::iter::from_fn(|| q.next_block()).collect();
        assert_eq!(blocks.len(), 4);
        let mut q = HostQueue::new(2.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 8.0, 0.0, 0), [0..3]).unwrap();
        let a = q.next_block().unwrap();
        assert!(q.next_block().is_none());
        q.finish(&a);
        assert!(q.next_block().is_some());
    }

    #[test]
    fn thread_limit_caps_one_job_but_not_others() {
        let mut q = HostQueue::new(8.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 1), [0..10]).unwrap();
        q.submit(WorkKey(2), spec(0, 1.0, 0.0, 0), [0..10]).unwrap();
        let a = q.next_block().unwrap();
        assert_eq!(a.work, WorkKey(1));
        let b = q.next_block().unwrap();
        assert_eq!(b.work, WorkKey(2), "job 1 is at its thread limit");
    }

    #[test]
    fn lower_priority_value_runs_first_and_blocks_same_resource() {
        let mut q = HostQueue::new(1.0, 0, 64);
        q.submit(WorkKey(1), spec(5, 1.0, 0.0, 0), [0..10]).unwrap();
        q.submit(WorkKey(2), spec(1, 1.0, 0.0, 0), [0..10]).unwrap();
        let a = q.next_block().unwrap();
        assert_eq!(a.work, WorkKey(2));
        // A large high-priority fragment waiting for the CPU blocks a small low-priority one.
        let mut q = HostQueue::new(2.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 0), [0..1]).unwrap();
        let first = q.next_block().unwrap();
        q.submit(WorkKey(2), spec(0, 2.0, 0.0, 0), [0..1]).unwrap();
        q.submit(WorkKey(3), spec(9, 1.0, 0.0, 0), [0..1]).unwrap();
        assert!(q.next_block().is_none(), "job 3 must not overtake job 2");
        q.finish(&first);
        assert_eq!(q.next_block().unwrap().work, WorkKey(2));
    }

    #[test]
    fn gpu_fragments_get_distinct_gpus_within_capacity() {
        let mut q = HostQueue::new(16.0, 2, 64);
        assert_eq!(q.submit(WorkKey(9), spec(0, 1.0, 1.0, 0), [0..1]), Ok(()),);
        let mut none = HostQueue::new(4.0, 0, 64);
        assert_eq!(
            none.submit(WorkKey(1), spec(0, 0.0, 0.5, 0), [0..1]),
            Err(SubmitError::NoGpu)
        );
        let mut q = HostQueue::new(16.0, 2, 64);
        q.submit(WorkKey(1), spec(0, 0.0, 0.5, 0), [0..100])
            .unwrap();
        let blocks: Vec<_> = std::iter::from_fn(|| q.next_block()).collect();
        assert_eq!(blocks.len(), 4, "two GPUs × two fragments of load 0.5");
        let mut per_gpu = [0; 2];
        for b in &blocks {
            per_gpu[b.gpus[0] as usize] += 1;
        }
        assert_eq!(per_gpu, [2, 2]);
    }

    #[test]
    fn drain_pending_returns_unstarted_fragments() {
        let mut q = HostQueue::new(1.0, 0, 64);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 0), [0..10, 20..30])
            .unwrap();
        let a = q.next_block().unwrap();
        let rest = q.drain_pending(WorkKey(1));
        let total: usize = rest.iter().map(|r| r.len()).sum();
        assert_eq!(total + a.range.len(), 20);
        assert!(!q.is_idle(WorkKey(1)));
        q.finish(&a);
        assert!(q.is_idle(WorkKey(1)));
    }

    #[test]
    fn take_pending_removes_only_queued_fragments_asked_for() {
        let mut q = HostQueue::new(1.0, 0, 64);
        q.set_max_block(2);
        q.submit(WorkKey(1), spec(0, 1.0, 0.0, 0), [0..4, 10..20])
            .unwrap();
        let running = q.next_block().unwrap();
        assert_eq!(running.range, 0..2);
        // 0..2 started, 30..40 was never queued: neither comes back; the rest keeps its order.
        let taken = q.take_pending(WorkKey(1), &[0..3, 12..15, 18..19, 30..40]);
        assert_eq!(taken, vec![2..3, 12..15, 18..19]);
        assert_eq!(q.pending(WorkKey(1)), 14 - 2 - 5);
        assert_eq!(
            q.drain_pending(WorkKey(1)),
            vec![3..4, 10..12, 15..18, 19..20]
        );
        assert!(q.take_pending(WorkKey(9), &[0..1]).is_empty());
    }
}

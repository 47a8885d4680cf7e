//! Global allocators that count, for tests and benchmarks that bound or report memory. Install
//! one per binary:
//!
//! ```
//! use fragmenta_testkit::alloc;
//!
//! #[global_allocator]
//! static ALLOC: alloc::ProcessCounting = alloc::ProcessCounting;
//!
//! let base = alloc::process_start();
//! let v = vec![0u8; 1 << 20];
//! assert!(alloc::process_peak_since(base) >= 1 << 20);
//! assert!(alloc::process_largest() >= 1 << 20);
//! drop(v);
//! ```
//!
//! [`ProcessCounting`] counts for the whole process (live bytes, their peak, the largest single
//! allocation), what a benchmark of many threads or a cluster of several hosts in one process
//! reports; [`ThreadCounting`] counts for the calling thread only, so tests running in parallel
//! do not see each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Counts the process's live heap bytes, their peak and the largest single allocation.
pub struct ProcessCounting;

fn process_grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
    // Read first: the largest size rarely changes, so most calls only read the shared value.
    if size > LARGEST.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only observe.
unsafe impl GlobalAlloc for ProcessCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            process_grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    // `realloc` and `alloc_zeroed` are the defaults: a reallocation counts as a new allocation
    // while the old one is still live, which is what the heap briefly holds at worst.
}

/// Starts a process-wide measurement: returns the live bytes now and resets the peak to them.
pub fn process_start() -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    base
}

/// Peak heap growth of the process since [`process_start`] returned `base`.
pub fn process_peak_since(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// The largest single allocation of the process since the last [`process_reset_largest`].
pub fn process_largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// Forgets the largest allocation so far.
pub fn process_reset_largest() {
    LARGEST.store(0, Ordering::Relaxed);
}

thread_local! {
    static T_LIVE: Cell<isize> = const { Cell::new(0) };
    static T_PEAK: Cell<isize> = const { Cell::new(0) };
    static T_LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Counts the live heap bytes of each thread, their peak and the largest single allocation.
pub struct ThreadCounting;

fn thread_grew(by: isize, size: usize) {
    // `try_with`: allocations while the thread's locals are torn down are not counted.
    let _ = T_LIVE.try_with(|l| {
        let now = l.get() + by;
        l.set(now);
        let _ = T_PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    let _ = T_LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only observe.
unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        thread_grew(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        thread_grew(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        thread_grew(-(layout.size() as isize), 0);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        thread_grew(new_size as isize - layout.size() as isize, new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the peak of live heap bytes it added on this thread
/// (with [`ThreadCounting`] installed).
pub fn thread_peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = T_LIVE.with(Cell::get);
    T_PEAK.with(|p| p.set(base));
    let out = f();
    let peak = T_PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// Runs `f` and returns its result with the largest single allocation it made on this thread
/// (with [`ThreadCounting`] installed).
pub fn thread_largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    T_LARGEST.with(|l| l.set(0));
    let out = f();
    (out, T_LARGEST.with(Cell::get))
}

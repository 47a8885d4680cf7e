//! The per-thread allocator counts what the thread allocates, and only that: the tests that
//! bound allocations with it would pass vacuously otherwise.

use fragmenta_testkit::alloc::{thread_largest_allocation, thread_peak_allocation, ThreadCounting};

#[global_allocator]
static ALLOC: ThreadCounting = ThreadCounting;

#[test]
fn counts_this_threads_allocations() {
    let (len, peak) = thread_peak_allocation(|| {
        let v = vec![1u8; 3 << 20];
        let w = vec![2u8; 1 << 20];
        v.len() + w.len()
    });
    assert_eq!(len, 4 << 20);
    assert!((4 << 20..5 << 20).contains(&peak), "peak {peak}");
    let ((), largest) = thread_largest_allocation(|| drop(vec![0u8; 2 << 20]));
    assert!((2 << 20..3 << 20).contains(&largest), "largest {largest}");
}

#[test]
fn another_threads_allocations_are_not_counted() {
    let ((), largest) = thread_largest_allocation(|| {
        std::thread::spawn(|| drop(vec![0u8; 8 << 20]))
            .join()
            .expect("the other thread");
    });
    assert!(largest < 8 << 20, "largest {largest}");
}

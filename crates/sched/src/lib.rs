//! fragmenta-sched (placeholder, being written).

//! Dev-only helpers shared by fragmenta's tests and benchmarks, so that each exists once: the
//! counting global allocators ([`alloc`]) and, with the `cluster` feature, free loopback ports
//! and cluster configurations with certificates (`loopback`).
//!
//! Used only as a dev-dependency (`publish = false`); nothing here is part of fragmenta's API.
//! The allocators depend on nothing, so any crate's tests can use them; `loopback` sits above
//! `fragmenta-net` (certificates) and `fragmenta-config`.

pub mod alloc;
#[cfg(feature = "cluster")]
pub mod loopback;

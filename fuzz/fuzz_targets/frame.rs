//! The frame reader over arbitrary streams, for every message type.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fragmenta_fuzz::frames(data));

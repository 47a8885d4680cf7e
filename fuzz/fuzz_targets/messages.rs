//! The decoder of every message type over arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fragmenta_fuzz::messages(data));

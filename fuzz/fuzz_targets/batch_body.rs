//! Fuzz target `batch_body`: arbitrary bytes into [`kfr::fuzzing::batch_body`], which panics when one of its
//! invariants breaks (see src/fuzzing.rs). Run with `bench/fuzz.sh SECONDS` or
//! `cargo +nightly fuzz run batch_body` from the repository root.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kfr::fuzzing::batch_body(data);
});

//! Fuzz target `spool_file`: arbitrary bytes into [`kfr::fuzzing::spool_file`], which panics when one of its
//! invariants breaks (see src/fuzzing.rs). Run with `bench/fuzz.sh SECONDS` or
//! `cargo +nightly fuzz run spool_file` from the repository root.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kfr::fuzzing::spool_file(data);
});

//! Fuzz target `load_input`: arbitrary bytes into [`kfr::fuzzing::load_input`], which panics when one of its
//! invariants breaks (see src/fuzzing.rs). Run with `bench/fuzz.sh SECONDS` or
//! `cargo +nightly fuzz run load_input` from the repository root.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kfr::fuzzing::load_input(data);
});

//! The one integration-test binary: each module exercises `kfr` end to end against the bundled
//! mock on a loopback port chosen by the OS.

mod ids;

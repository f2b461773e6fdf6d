//! The one integration-test binary: each module exercises `kfr` end to end, as a library or as
//! the built binary, against the bundled mock on a loopback port chosen by the OS.

mod agent_output;
mod barrier;
mod certs;
mod checklist;
mod config;
mod conventions;
mod demo;
mod doctor;
mod egress;
mod fidelity;
mod history;
mod ids;
mod input;
mod installation;
mod kfr_cli;
mod load;
mod load_store;
mod loadday;
mod mock_kfr;
mod mock_maskinporten;
mod operations;
mod packaging;
#[path = "../src/pg/cluster.rs"]
mod pg_cluster;
mod pg_failover;
mod pg_outbox;
mod postgres;
mod relationship_order;
mod sync_cli;
mod sync_intake;
mod sync_reliability;
mod token;
mod util;
mod verdicts;
mod verify;

//! `kfr` keeps Bits AS' Kundeforholdsregister (KFR) current for a Norwegian financial institution.
//!
//! Module map (data flows one way: source → outbox → scheduler → KFR → ledger):
//! - [`config`]: `kfr.toml` + `KFR_*` variables + flags, resolved once into [`config::Settings`].
//! - [`maskinporten`]: the business-certificate credential, the JWT-bearer grant and the token cache.
//! - [`kfr`]: the KFR API client, batch encoding and error model.
//! - [`ids`]: validated customer identifiers and the pseudonym helper for logs.
//! - [`input`]: the one grammar for the bank's input files (fields, quoting, caps, formats) and the
//!   streaming reader built on it; used by `kfr load` and `kfr validate --file`.
//! - [`load`]: the initial load: planner, executor, report (`kfr load`).
//! - [`store`]: the SQLite state store: load jobs, the ledger, held deletes (later the outbox).
//! - [`mock`]: the bundled fake Maskinporten and fake KFR used by tests and `kfr mock`.
//! - [`certs`]: throwaway test certificates for the local mock.
//! - [`cli`]: argument parsing and one file per command; `main` stays thin.
//! - [`http`]: the shared outgoing HTTP client (TLS, proxy, timeouts).
//! - [`error`]: exit codes and the `error:` / `Caused by:` / `hint:` rendering.

pub mod certs;
pub mod cli;
pub mod config;
pub mod env_vars;
pub mod environment;
pub mod error;
pub mod http;
pub mod ids;
pub mod input;
pub mod kfr;
pub mod load;
pub mod maskinporten;
pub mod mock;
pub mod store;
pub mod telemetry;

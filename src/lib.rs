//! `kfr` keeps Bits AS' Kundeforholdsregister (KFR) current for a Norwegian financial institution.
//!
//! Module map, top to bottom; a module uses only modules below it (`architecture` holds the table
//! and the test that enforces it). Data flows one way: source → outbox → dispatcher → KFR → ledger.
//! - [`cli`]: argument parsing, one file per command, the printer and error rendering; the only
//!   module that reads [`config::Settings`] (`cli::build` turns them into per-module configs and
//!   clients). [`config`] (file + `KFR_*` + flags) and [`telemetry`] (logging) serve it alone.
//! - Engines: [`load`] (the initial load: plan, upload, confirm, report), [`checklist`] (Bits'
//!   integration-test cases as data, their runner and reports) and [`mock`] (the bundled fake
//!   Maskinporten and KFR). They return values and emit events; they never print.
//! - Systems and data: [`kfr`] (the KFR API client, batch encoding, verdicts), [`maskinporten`]
//!   (the business-certificate credential, the JWT-bearer grant, the token cache), [`store`]
//!   (the SQLite state store: load jobs, the ledger, held operations) and [`input`] (the one
//!   grammar for the bank's files: fields, quoting, caps, formats, and the streaming reader).
//! - Building blocks: [`http`] (the outgoing client: TLS, proxy, timeouts; the retry policy),
//!   [`pg`] (connecting to PostgreSQL: URL, password file, verified TLS),
//!   [`ids`] (validated customer identifiers, masks and pseudonyms) and [`certs`] (throwaway test
//!   certificates).
//! - Vocabulary: [`error`] (exit codes, the `Hinted` trait), [`env_vars`] (every variable name),
//!   [`environment`] (local / test / prod), [`file_stamp`] (whether files changed on disk).

#[cfg(test)]
mod architecture;
pub mod certs;
pub mod checklist;
pub mod cli;
pub mod clock;
pub mod config;
pub mod env_vars;
pub mod environment;
pub mod error;
pub mod file_stamp;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod input;
pub mod kfr;
pub mod load;
pub mod maskinporten;
pub mod mock;
pub mod pg;
pub mod store;
pub mod sync;
pub mod telemetry;

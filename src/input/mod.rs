//! The one grammar for the bank's line-oriented input files, and the readers built on it.
//!
//! `kfr load` and `kfr validate --file` read files through this module only, so a file one of them
//! accepts the other accepts too, line for line with the same verdicts; the spool source of the
//! sync agent (`add,ID[,DATE]` / `remove,ID`) and `kfr reconcile` are meant to build on the same
//! layers. From the bottom up:
//!
//! - [`grammar`]: line ends, the line-length cap, separated fields with RFC 4180 quoting, and the
//!   syntax of identifier and date fields (ISO and Norwegian dates). Meaning-free.
//! - [`format`]: format detection (header row or not, which separator) and the header aliases.
//! - [`record`]: one data line → identifier, start and end date, or the rule it broke, with the
//!   masked text shown for a rejected line.
//! - [`reader`]: the streaming, multi-threaded reader of a whole file: counts, duplicates,
//!   closed rows, and the compact entry list the load plans from.
//!
//! The rules are specified in `docs/specs/input.md`. Layering: this module sits beside `kfr` and
//! `store` and imports only `ids` (and `error` for hints) from the crate.

pub mod format;
pub mod grammar;
pub mod reader;
pub mod record;

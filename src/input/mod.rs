//! Reading the bank's line-oriented input files.
pub mod reader;

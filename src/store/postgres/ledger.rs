//! Being written (issue 22): the PostgreSQL backend's `Ledger`.

#![allow(unused_variables)]

use super::db::PgBackend;
use crate::store::backend::Ledger;
use crate::store::error::StoreError;
use crate::store::types::*;
#[allow(unused_imports)]
use chrono::{DateTime, NaiveDate, Utc};
#[allow(unused_imports)]
use std::collections::HashSet;
#[allow(unused_imports)]
use uuid::Uuid;

impl Ledger for PgBackend {
    fn ledger(&mut self, register: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        todo!("Ledger::ledger on PostgreSQL")
    }

    fn ledger_page(
        &mut self,
        register: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        todo!("Ledger::ledger_page on PostgreSQL")
    }

    fn unfinished_customers(&mut self, register: &str) -> Result<HashSet<String>, StoreError> {
        todo!("Ledger::unfinished_customers on PostgreSQL")
    }

    fn record_batch(
        &mut self,
        job: i64,
        seq: u32,
        correlation_id: Uuid,
        entries: &[(String, Option<NaiveDate>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        todo!("Ledger::record_batch on PostgreSQL")
    }

    fn ledger_count(&mut self, batch: Option<(i64, u32)>) -> Result<u64, StoreError> {
        todo!("Ledger::ledger_count on PostgreSQL")
    }
}

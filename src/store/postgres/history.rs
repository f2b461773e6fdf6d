//! Being written (issue 22): the PostgreSQL backend's `History`.

#![allow(unused_variables)]

use super::db::PgBackend;
use crate::store::backend::History;
use crate::store::error::StoreError;
use crate::store::types::*;
#[allow(unused_imports)]
use chrono::{DateTime, NaiveDate, Utc};
#[allow(unused_imports)]
use std::collections::HashSet;
#[allow(unused_imports)]
use uuid::Uuid;

impl History for PgBackend {
    fn history(
        &mut self,
        customer: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        todo!("History::history on PostgreSQL")
    }

    fn purge_history(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        todo!("History::purge_history on PostgreSQL")
    }
}

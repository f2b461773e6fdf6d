//! Being written (issue 22): the PostgreSQL backend's `Operations`.

#![allow(unused_variables)]

use super::db::PgBackend;
use crate::store::backend::Operations;
use crate::store::error::StoreError;
use crate::store::types::*;
#[allow(unused_imports)]
use chrono::{DateTime, NaiveDate, Utc};
#[allow(unused_imports)]
use std::collections::HashSet;
#[allow(unused_imports)]
use uuid::Uuid;

impl Operations for PgBackend {
    fn cancel(
        &mut self,
        which: &ToCancel,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Cancelled, StoreError> {
        todo!("Operations::cancel on PostgreSQL")
    }

    fn unfinished_count(&mut self, register: &str, customer: &str) -> Result<u64, StoreError> {
        todo!("Operations::unfinished_count on PostgreSQL")
    }

    fn record_heartbeat(&mut self, beat: &Heartbeat) -> Result<(), StoreError> {
        todo!("Operations::record_heartbeat on PostgreSQL")
    }

    fn heartbeats(&mut self, register: Option<&str>) -> Result<Vec<Heartbeat>, StoreError> {
        todo!("Operations::heartbeats on PostgreSQL")
    }

    fn last_delivery(&mut self, register: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        todo!("Operations::last_delivery on PostgreSQL")
    }

    fn schema_version(&mut self) -> Result<u32, StoreError> {
        todo!("Operations::schema_version on PostgreSQL")
    }

    fn backup_to(&mut self, dest: &std::path::Path) -> Result<BackupInfo, StoreError> {
        todo!("Operations::backup_to on PostgreSQL")
    }
}

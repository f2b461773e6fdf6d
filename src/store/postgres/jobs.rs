//! Being written (issue 22): the PostgreSQL backend's `Jobs`.

#![allow(unused_variables)]

use super::db::PgBackend;
use crate::store::backend::Jobs;
use crate::store::error::StoreError;
use crate::store::types::*;
#[allow(unused_imports)]
use chrono::{DateTime, NaiveDate, Utc};
#[allow(unused_imports)]
use std::collections::HashSet;
#[allow(unused_imports)]
use uuid::Uuid;

impl Jobs for PgBackend {
    fn create_job(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<i64, StoreError> {
        todo!("Jobs::create_job on PostgreSQL")
    }

    fn unconfirmed_job(&mut self) -> Result<Option<JobRecord>, StoreError> {
        todo!("Jobs::unconfirmed_job on PostgreSQL")
    }

    fn jobs(&mut self) -> Result<Vec<JobRecord>, StoreError> {
        todo!("Jobs::jobs on PostgreSQL")
    }

    fn latest_job(&mut self) -> Result<Option<JobRecord>, StoreError> {
        todo!("Jobs::latest_job on PostgreSQL")
    }

    fn job(&mut self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        todo!("Jobs::job on PostgreSQL")
    }

    fn batches(&mut self, job: i64) -> Result<Vec<BatchRecord>, StoreError> {
        todo!("Jobs::batches on PostgreSQL")
    }

    fn update_batch(&mut self, job: i64, seq: u32, change: &BatchChange, now: DateTime<Utc>) -> Result<(), StoreError> {
        todo!("Jobs::update_batch on PostgreSQL")
    }

    fn abandon_job(
        &mut self,
        id: i64,
        rule: HeldAtAbandon,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<Abandonment, StoreError> {
        todo!("Jobs::abandon_job on PostgreSQL")
    }

    fn confirm_job_if_complete(&mut self, job: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        todo!("Jobs::confirm_job_if_complete on PostgreSQL")
    }
}

//! Being written (issue 22): the PostgreSQL backend's `Leases`.

#![allow(unused_variables)]

use super::db::PgBackend;
use crate::store::backend::Leases;
use crate::store::error::StoreError;
use crate::store::types::*;
#[allow(unused_imports)]
use chrono::{DateTime, NaiveDate, Utc};
#[allow(unused_imports)]
use std::collections::HashSet;
#[allow(unused_imports)]
use uuid::Uuid;

impl Leases for PgBackend {
    fn take_lease(
        &mut self,
        register: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        todo!("Leases::take_lease on PostgreSQL")
    }

    fn renew_lease(&mut self, lease: &Lease, now: DateTime<Utc>, ttl: chrono::Duration) -> Result<Lease, StoreError> {
        todo!("Leases::renew_lease on PostgreSQL")
    }

    fn release_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        todo!("Leases::release_lease on PostgreSQL")
    }

    fn lease_holder(&mut self, register: &str) -> Result<Option<LeaseHolder>, StoreError> {
        todo!("Leases::lease_holder on PostgreSQL")
    }

    fn take_writer(&mut self, holder: &str) -> Result<Option<String>, StoreError> {
        todo!("Leases::take_writer on PostgreSQL")
    }

    fn release_writer(&mut self) -> Result<(), StoreError> {
        todo!("Leases::release_writer on PostgreSQL")
    }

}

//! Being written (issue 22): the PostgreSQL backend's `Outbox`.

#![allow(unused_variables)]

use super::db::PgBackend;
use crate::store::backend::Outbox;
use crate::store::error::StoreError;
use crate::store::types::*;
#[allow(unused_imports)]
use chrono::{DateTime, NaiveDate, Utc};
#[allow(unused_imports)]
use std::collections::HashSet;
#[allow(unused_imports)]
use uuid::Uuid;

impl Outbox for PgBackend {
    fn enqueue(
        &mut self,
        register: &str,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        todo!("Outbox::enqueue on PostgreSQL")
    }

    fn recover(
        &mut self,
        register: &str,
        epoch: i64,
        now: DateTime<Utc>,
        hold: chrono::Duration,
    ) -> Result<Recovered, StoreError> {
        todo!("Outbox::recover on PostgreSQL")
    }

    fn claim_ready(
        &mut self,
        register: &str,
        claimer: &Claimer,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("Outbox::claim_ready on PostgreSQL")
    }

    fn begin_batch(&mut self, seqs: &[Seq], batch_correlation_id: Uuid) -> Result<(), StoreError> {
        todo!("Outbox::begin_batch on PostgreSQL")
    }

    fn batch_accepted(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        todo!("Outbox::batch_accepted on PostgreSQL")
    }

    fn batch_unknown(&mut self, batch_correlation_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        todo!("Outbox::batch_unknown on PostgreSQL")
    }

    fn accepted(&mut self, register: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("Outbox::accepted on PostgreSQL")
    }

    fn settle(&mut self, settlements: &[Settlement]) -> Result<(), StoreError> {
        todo!("Outbox::settle on PostgreSQL")
    }

    fn retry_later(&mut self, seq: Seq, at: DateTime<Utc>, error: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        todo!("Outbox::retry_later on PostgreSQL")
    }

    fn release(&mut self, seqs: &[Seq], now: DateTime<Utc>) -> Result<(), StoreError> {
        todo!("Outbox::release on PostgreSQL")
    }

    fn dead_letter(&mut self, seq: Seq, rejection: &Rejection, at: DateTime<Utc>) -> Result<(), StoreError> {
        todo!("Outbox::dead_letter on PostgreSQL")
    }

    fn dead_letters(&mut self, register: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        todo!("Outbox::dead_letters on PostgreSQL")
    }

    fn retry_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        todo!("Outbox::retry_dead on PostgreSQL")
    }

    fn drop_dead(
        &mut self,
        which: DeadLetters,
        action: &OperatorAction,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        todo!("Outbox::drop_dead on PostgreSQL")
    }

    fn status(&mut self, register: Option<&str>) -> Result<OutboxStatus, StoreError> {
        todo!("Outbox::status on PostgreSQL")
    }

    fn purge(&mut self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        todo!("Outbox::purge on PostgreSQL")
    }

    fn barrier(&mut self, register: &str) -> Result<Option<i64>, StoreError> {
        todo!("Outbox::barrier on PostgreSQL")
    }

    fn enqueue_and_claim(
        &mut self,
        register: &str,
        event: &NewEvent,
        correlation_id: Uuid,
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<OwnEvent, StoreError> {
        todo!("Outbox::enqueue_and_claim on PostgreSQL")
    }

    fn finish_claim(
        &mut self,
        seq: Seq,
        claimer: &str,
        end: &ClaimEnd,
        at: DateTime<Utc>,
    ) -> Result<ClaimFinished, StoreError> {
        todo!("Outbox::finish_claim on PostgreSQL")
    }

    fn claim_head_of(
        &mut self,
        register: &str,
        customer: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        todo!("Outbox::claim_head_of on PostgreSQL")
    }

    fn claim_next_of(
        &mut self,
        register: &str,
        sources: &[&str],
        claimer: &Claimer,
        now: DateTime<Utc>,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        todo!("Outbox::claim_next_of on PostgreSQL")
    }

    fn events_of(&mut self, register: Option<&str>, customer: Option<&str>) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("Outbox::events_of on PostgreSQL")
    }

    fn enqueue_from_cursor(
        &mut self,
        register: &str,
        events: &[NewEvent],
        source: &str,
        cursor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        todo!("Outbox::enqueue_from_cursor on PostgreSQL")
    }

    fn source_cursor(&mut self, source: &str) -> Result<Option<String>, StoreError> {
        todo!("Outbox::source_cursor on PostgreSQL")
    }

    fn unfinished_of(&mut self, register: &str, sources: &[&str]) -> Result<Vec<OutboxEvent>, StoreError> {
        todo!("Outbox::unfinished_of on PostgreSQL")
    }
}

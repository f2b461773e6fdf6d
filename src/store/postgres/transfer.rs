//! Moving rows in and out of a PostgreSQL store (`kfr store migrate`): the server converts the
//! neutral JSON rows to and from the tables' own types (`to_jsonb`, `jsonb_populate_recordset`).

use super::db::{PgBackend, Tx};
use crate::store::backend::Transfer;
use crate::store::error::StoreError;
use crate::store::types::TransferTable;

/// Tables whose ids are identity columns: `finish_import` moves them past the imported ids.
const IDENTITIES: [(&str, &str); 4] = [
    ("load_jobs", "id"),
    ("ledger", "id"),
    ("outbox", "seq"),
    ("history", "id"),
];

impl Transfer for PgBackend {
    fn export_rows(
        &mut self,
        table: TransferTable,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let sql = format!(
            "SELECT to_jsonb(t) FROM {name} t ORDER BY {key} LIMIT $1 OFFSET $2",
            name = table.name(),
            key = table.key()
        );
        self.tx(Tx::Read, |tx| {
            Ok(tx
                .query(&sql, &[&(limit as i64), &(offset as i64)])?
                .iter()
                .map(|r| r.get::<_, serde_json::Value>(0))
                .collect())
        })
    }

    fn import_rows(&mut self, table: TransferTable, rows: &[serde_json::Value]) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {name} OVERRIDING SYSTEM VALUE SELECT * FROM jsonb_populate_recordset(NULL::{name}, $1)",
            name = table.name()
        );
        let rows = serde_json::Value::Array(rows.to_vec());
        self.tx(Tx::Write, |tx| {
            tx.execute(&sql, &[&rows])?;
            Ok(())
        })
    }

    fn count_rows(&mut self, table: TransferTable) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {}", table.name());
        self.tx(Tx::Read, |tx| Ok(tx.query_one(&sql, &[])?.get::<_, i64>(0) as u64))
    }

    fn finish_import(&mut self) -> Result<(), StoreError> {
        self.tx(Tx::Write, |tx| {
            for (table, id) in IDENTITIES {
                tx.execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{id}'), coalesce(max({id}), 0) + 1, false) FROM {table}"
                    ),
                    &[],
                )?;
            }
            Ok(())
        })
    }

    fn discard_import(&mut self) -> Result<(), StoreError> {
        let tables: Vec<&str> = TransferTable::ALL.iter().map(|t| t.name()).collect();
        let sql = format!("TRUNCATE {} RESTART IDENTITY", tables.join(", "));
        self.tx(Tx::Write, |tx| {
            tx.batch_execute(&sql)?;
            Ok(())
        })
    }
}

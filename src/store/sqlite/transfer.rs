//! Moving rows in and out of a SQLite store (`kfr store migrate`): each row as a JSON object
//! keyed by column, converted to and from SQLite's storage (0/1 booleans, JSON as text, instants
//! as the sortable RFC 3339 text `rows` writes).

use super::db::{SqliteBackend, Tx};
use super::rows::Fault;
use crate::store::backend::Transfer;
use crate::store::error::StoreError;
use crate::store::types::{TransferTable, time_text};
use rusqlite::types::Value;
use serde_json::Value as Json;

impl Transfer for SqliteBackend {
    fn export_rows(&mut self, table: TransferTable, offset: u64, limit: usize) -> Result<Vec<Json>, StoreError> {
        let sql = format!(
            "SELECT * FROM {name} ORDER BY {key} LIMIT ?1 OFFSET ?2",
            name = table.name(),
            key = table.key()
        );
        self.tx(Tx::Read, |tx| {
            let mut stmt = tx.prepare(&sql)?;
            let names: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
            let mut rows = stmt.query(rusqlite::params![limit as i64, offset as i64])?;
            let mut out = vec![];
            while let Some(row) = rows.next()? {
                let mut obj = serde_json::Map::new();
                for (i, name) in names.iter().enumerate() {
                    let v = match row.get::<_, Value>(i)? {
                        Value::Null => Json::Null,
                        Value::Integer(n) if table.bool_columns().contains(&name.as_str()) => Json::Bool(n != 0),
                        Value::Integer(n) => Json::from(n),
                        Value::Real(f) => Json::from(f),
                        Value::Text(t) if table.json_columns().contains(&name.as_str()) => {
                            serde_json::from_str(&t).unwrap_or(Json::String(t))
                        }
                        Value::Text(t) => Json::String(t),
                        Value::Blob(b) => Json::String(hex::encode(b)),
                    };
                    obj.insert(name.clone(), v);
                }
                out.push(Json::Object(obj));
            }
            Ok(out)
        })
    }

    fn import_rows(&mut self, table: TransferTable, rows: &[Json]) -> Result<(), StoreError> {
        self.tx(Tx::Write, |tx| {
            for row in rows {
                let Json::Object(obj) = row else {
                    return Err(Fault::Store(StoreError::Other(format!(
                        "a {} row is not an object",
                        table.name()
                    ))));
                };
                let names: Vec<&str> = obj.keys().map(String::as_str).collect();
                let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    table.name(),
                    names.join(", "),
                    marks.join(", ")
                );
                let values: Vec<Value> = obj.iter().map(|(k, v)| to_sqlite(table, k, v)).collect();
                tx.execute(&sql, rusqlite::params_from_iter(values))?;
            }
            Ok(())
        })
    }

    fn count_rows(&mut self, table: TransferTable) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM {}", table.name());
        self.tx(
            Tx::Read,
            |tx| Ok(tx.query_row(&sql, [], |r| r.get::<_, i64>(0))? as u64),
        )
    }

    fn finish_import(&mut self) -> Result<(), StoreError> {
        // INTEGER PRIMARY KEYs continue after the largest id by themselves; the outbox's
        // AUTOINCREMENT counter follows the inserted seqs too.
        Ok(())
    }

    fn discard_import(&mut self) -> Result<(), StoreError> {
        self.tx(Tx::Write, |tx| {
            for t in TransferTable::ALL.iter().rev() {
                tx.execute(&format!("DELETE FROM {}", t.name()), [])?;
            }
            Ok(())
        })
    }
}

/// A neutral value as SQLite stores it in `column` of `table`.
fn to_sqlite(table: TransferTable, column: &str, v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) if column == "head" => {
            if *b {
                Value::Integer(1)
            } else {
                Value::Null
            }
        }
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Integer)
            .unwrap_or_else(|| Value::Real(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            // Instants in the one sortable form every SQLite query compares as text.
            Ok(t) if s.contains('T') => Value::Text(time_text(t.with_timezone(&chrono::Utc))),
            _ => Value::Text(s.clone()),
        },
        other if table.json_columns().contains(&column) => Value::Text(other.to_string()),
        other => Value::Text(other.to_string()),
    }
}

//! The configuration file's schema: one serde struct per table (`FileConfig` for the top level,
//! `[retry]`, `[store]`, `[sync]` and each `[[sync.sources]]`), unknown keys refused
//! (`deny_unknown_fields`), and the built-in defaults as a value of the same type.
//!
//! These structs are the one list of keys: [`keys`] reads it from serde itself, and the
//! environment variables, `kfr config show`, the suggestion for a misspelt key and the tests of
//! `docs/configuration.md` and `docs/kfr.example.toml` all take it from there.
//!
//! A value is typed as the file writes it (text, path, whole number, true/false). What a value
//! must mean (a URL, an organisation number, a range) is checked once all layers are merged
//! (`resolve.rs`), so the error can say which layer gave it.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The top level of `kfr.toml`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub env: Option<String>,
    pub org_number: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub certificate: Option<PathBuf>,
    pub certificate_password_file: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub certificate_pem: Option<PathBuf>,
    pub kid: Option<String>,
    pub x5c: Option<String>,
    pub consumer_org: Option<String>,
    pub resource: Option<String>,
    pub maskinporten_issuer: Option<String>,
    pub kfr_base_url: Option<String>,
    pub proxy: Option<String>,
    pub extra_ca_bundle: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient")]
    pub connect_timeout_secs: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub request_timeout_secs: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub token_refresh_ahead_secs: Option<i64>,
    pub pseudonym_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient")]
    pub allow_synthetic_ids: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub allow_h_numbers: Option<bool>,
    pub state: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient")]
    pub ingest_rate: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub max_batch_bytes: Option<i64>,
    #[serde(default)]
    pub store: StoreTable,
    #[serde(default)]
    pub retry: RetryTable,
    #[serde(default)]
    pub sync: SyncTable,
}

/// `[store]`: the state store as a URL, and what a PostgreSQL store needs besides.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreTable {
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// `[retry]`: retries of one call by the CLI and the load.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryTable {
    #[serde(default, deserialize_with = "lenient")]
    pub max_attempts: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub base_delay_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub max_delay_secs: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub retry_after_cap_secs: Option<i64>,
}

/// `[sync]`: the continuous-sync agent.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SyncTable {
    pub listen: Option<String>,
    pub ingest_key_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub rate: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub max_in_flight: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub retention_days: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub history_retention_days: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub max_events_per_customer: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub allow_plain_http: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub drain_secs: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub give_up_after_hours: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub register_checks_per_hour: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub in_doubt_secs: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub backdated_by_batch: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceTable>,
}

/// One `[[sync.sources]]` table: an event source.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceTable {
    pub kind: Option<String>,
    pub dir: Option<PathBuf>,
    pub name: Option<String>,
    pub url: Option<String>,
    pub table: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl FileConfig {
    /// The built-in defaults that hold in every environment: the lowest layer. Those that
    /// depend on `env` or on the state home are added in `layers.rs`.
    pub fn defaults() -> FileConfig {
        FileConfig {
            env: Some("test".into()),
            scope: Some("bits:kundeforhold.write".into()),
            x5c: Some("leaf".into()),
            connect_timeout_secs: Some(10),
            request_timeout_secs: Some(30),
            token_refresh_ahead_secs: Some(30),
            allow_h_numbers: Some(false),
            ingest_rate: Some(250),
            max_batch_bytes: Some(10_000_000),
            retry: RetryTable {
                max_attempts: Some(4),
                base_delay_ms: Some(250),
                max_delay_secs: Some(8),
                retry_after_cap_secs: Some(300),
            },
            sync: SyncTable {
                listen: Some("127.0.0.1:8090".into()),
                rate: Some(10),
                max_in_flight: Some(8),
                retention_days: Some(30),
                history_retention_days: Some(1827),
                max_events_per_customer: Some(100),
                allow_plain_http: Some(false),
                drain_secs: Some(30),
                give_up_after_hours: Some(24),
                register_checks_per_hour: Some(720),
                in_doubt_secs: Some(120),
                backdated_by_batch: Some(true),
                ..SyncTable::default()
            },
            ..FileConfig::default()
        }
    }

    /// Relative paths in a file are relative to the file's folder, so a generated `kfr.toml`
    /// works from any working directory (paths from variables and flags stay relative to the
    /// working directory). Every path-typed key is listed here; `store.url` is not a path.
    pub fn rebase(&mut self, dir: &Path) {
        let sync = &mut self.sync;
        let paths = [
            &mut self.certificate,
            &mut self.certificate_password_file,
            &mut self.private_key,
            &mut self.certificate_pem,
            &mut self.extra_ca_bundle,
            &mut self.pseudonym_key_file,
            &mut self.state,
            &mut self.state_file,
            &mut self.store.password_file,
            &mut self.store.ca_file,
            &mut sync.ingest_key_file,
            &mut sync.tls_cert,
            &mut sync.tls_key,
        ];
        let sources = sync
            .sources
            .iter_mut()
            .flat_map(|s| [&mut s.dir, &mut s.password_file, &mut s.ca_file]);
        for p in paths.into_iter().chain(sources).flatten() {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        }
    }
}

/// Every key the file accepts, in the order the structs declare them, as `kfr config show` and
/// the documentation write them: a table's keys with their table (`sync.rate`), the keys of an
/// array of tables with `[]` (`sync.sources[].dir`).
pub fn keys() -> &'static [&'static str] {
    static KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let mut out = Vec::new();
        let names = Names {
            prefix: String::new(),
            out: &mut out,
        };
        // Fails only if a field has a type `Names` does not describe; the unit tests would see it.
        let _ = FileConfig::deserialize(names);
        out.into_iter().map(|k| &*Box::leak(k.into_boxed_str())).collect()
    });
    &KEYS
}

/// The tables of the file and its arrays of tables, for the suggestion when a whole table is
/// misspelt (`[synk]`).
pub const TABLES: &[&str] = &["store", "retry", "sync", "sync.sources"];

/// A number or true/false as TOML writes it, or as text: the environment and flags give every
/// value as text, and a file may quote a number.
trait Scalar: Sized {
    const EXPECTED: &'static str;
    fn from_toml(value: &toml::Value) -> Option<Self>;
}

impl Scalar for i64 {
    const EXPECTED: &'static str = "expected a whole number";
    fn from_toml(value: &toml::Value) -> Option<i64> {
        match value {
            toml::Value::Integer(i) => Some(*i),
            toml::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

impl Scalar for bool {
    const EXPECTED: &'static str = "expected true or false";
    fn from_toml(value: &toml::Value) -> Option<bool> {
        match value {
            toml::Value::Boolean(b) => Some(*b),
            toml::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Deserialises a [`Scalar`] from its TOML form or from text.
fn lenient<'de, D: Deserializer<'de>, T: Scalar>(d: D) -> Result<Option<T>, D::Error> {
    let Some(value) = Option::<toml::Value>::deserialize(d)? else {
        return Ok(None);
    };
    T::from_toml(&value)
        .map(Some)
        .ok_or_else(|| de::Error::custom(T::EXPECTED))
}

/// A deserializer that answers nothing but records the keys asked for: serde's derived
/// `Deserialize` names the fields of each struct it reads, which is how [`keys`] lists the
/// schema without a second, hand-kept list. A struct is a table (its keys recorded with the
/// table's name in front); a sequence is an array of tables (`[]`); anything else is a key.
struct Names<'a> {
    prefix: String,
    out: &'a mut Vec<String>,
}

type NamesError = de::value::Error;

impl<'de> Deserializer<'de> for Names<'_> {
    type Error = NamesError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NamesError> {
        self.out.push(self.prefix);
        visitor.visit_none()
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, NamesError> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", self.prefix)
        };
        visitor.visit_map(Fields {
            prefix,
            fields: fields.iter(),
            current: "",
            out: self.out,
        })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NamesError> {
        visitor.visit_seq(OneEntry {
            prefix: Some(format!("{}[]", self.prefix)),
            out: self.out,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct tuple tuple_struct map enum identifier ignored_any
    }
}

/// The fields of one struct, each offered once with an empty value.
struct Fields<'a> {
    prefix: String,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
    out: &'a mut Vec<String>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = NamesError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, NamesError> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, NamesError> {
        seed.deserialize(Names {
            prefix: format!("{}{}", self.prefix, self.current),
            out: self.out,
        })
    }
}

/// An array of tables with one entry, whose keys are recorded.
struct OneEntry<'a> {
    prefix: Option<String>,
    out: &'a mut Vec<String>,
}

impl<'de> SeqAccess<'de> for OneEntry<'_> {
    type Error = NamesError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, NamesError> {
        let Some(prefix) = self.prefix.take() else {
            return Ok(None);
        };
        seed.deserialize(Names { prefix, out: self.out }).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_list_is_read_from_the_structs_in_their_order() {
        let k = keys();
        assert_eq!(&k[..3], &["env", "org_number", "client_id"]);
        for key in [
            "store.url",
            "retry.max_attempts",
            "sync.listen",
            "sync.sources[].kind",
            "sync.sources[].ca_file",
        ] {
            assert!(k.contains(&key), "{key} missing from {k:?}");
        }
        assert!(!k.iter().any(|k| TABLES.contains(k)), "tables are not keys: {k:?}");
        assert_eq!(k.len(), 56, "{k:?}");
    }

    #[test]
    fn numbers_and_booleans_are_read_from_text_too() {
        let t: SyncTable = toml::from_str("rate = \"25\"\nallow_plain_http = \"true\"\nmax_in_flight = 3\n").unwrap();
        assert_eq!(
            (t.rate, t.allow_plain_http, t.max_in_flight),
            (Some(25), Some(true), Some(3))
        );
        let err = toml::from_str::<SyncTable>("rate = \"fast\"\n").unwrap_err();
        assert!(err.to_string().contains("expected a whole number"), "{err}");
        let err = toml::from_str::<SyncTable>("allow_plain_http = 1\n").unwrap_err();
        assert!(err.to_string().contains("expected true or false"), "{err}");
    }

    #[test]
    fn relative_paths_are_rebased_and_absolute_ones_kept() {
        let mut c: FileConfig = toml::from_str(
            "state = \"s.db\"\ncertificate = \"/etc/c.p12\"\n[[sync.sources]]\nkind = \"spool\"\ndir = \"in\"\n",
        )
        .unwrap();
        c.rebase(Path::new("/cfg"));
        assert_eq!(c.state.as_deref(), Some(Path::new("/cfg/s.db")));
        assert_eq!(c.certificate.as_deref(), Some(Path::new("/etc/c.p12")));
        assert_eq!(c.sync.sources[0].dir.as_deref(), Some(Path::new("/cfg/in")));
    }
}

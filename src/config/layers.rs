//! The four layers of configuration, lowest first: built-in defaults, the file, `KFR_*`
//! variables, flags. Each is a TOML table in the file's shape; they are merged key by key and
//! every key remembers which layer gave it (`kfr config show`, and each error names its source).

use super::schema::{FileConfig, TABLES, keys};
use super::{ConfigError, Environment, FlagOverrides, Source, env_var};
use crate::env_vars::{self, state_home};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The three spellings of the state store, which are one key.
pub(super) const STORE_KEYS: [&str; 3] = ["state", "state_file", "store.url"];

/// The pseudonym key when there is no state home (no `KFR_STATE_HOME`, `XDG_STATE_HOME` or
/// `HOME`): the working directory.
const FALLBACK_PSEUDONYM_KEY: &str = "kfr-pseudonym.key";

/// The merged layers: one table in the file's shape, and where each key's value came from
/// (keys inside `[[sync.sources]]` by entry: `sync.sources[1].dir`).
#[derive(Debug, Default)]
pub(super) struct Layers {
    pub table: toml::Table,
    pub sources: BTreeMap<String, Source>,
}

impl Layers {
    /// The file, then the environment, then the flags, each over the one before; a store key in
    /// a higher layer replaces every spelling of it below.
    pub fn gather(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Layers, ConfigError> {
        let mut layers = Layers::default();
        // Two spellings of the store in the layer that decides it: nothing says which is meant.
        let mut store_conflict = None;
        if let Some(path) = file {
            store_conflict = layers
                .put(read_file(path)?, |_| Source::File(path.into()))
                .or(store_conflict);
        }
        let from_env = |key: &str| Source::Env(env_var(key).unwrap_or_default());
        store_conflict = layers.put(env_layer(env), from_env).or(store_conflict);
        let mut flag_table = toml::Table::new();
        let mut flag_of = BTreeMap::new();
        for (key, flag, value) in flags.pairs() {
            flag_table.insert(key.into(), value.into());
            flag_of.insert(key, flag);
        }
        let from_flag = |key: &str| Source::Flag(flag_of.get(key).copied().unwrap_or_default().into());
        store_conflict = layers.put(flag_table, from_flag).or(store_conflict);
        match store_conflict {
            Some(Some(both)) => Err(ConfigError::Conflict(format!(
                "{both} are all set; they name the same state store, keep only `state`"
            ))),
            _ => Ok(layers),
        }
    }

    /// Lays `table` over what is there, each key's source given by `source_of`. A store key
    /// replaces every spelling of it below. Returns `None` if the layer names no store,
    /// `Some(None)` if it names one, `Some(Some(keys))` if it names several.
    fn put(&mut self, table: toml::Table, source_of: impl Fn(&str) -> Source) -> Option<Option<String>> {
        let given: Vec<String> = leaves(&table).into_iter().map(|(k, _)| k).collect();
        let stores: Vec<&str> = STORE_KEYS
            .into_iter()
            .filter(|k| given.iter().any(|g| g == k))
            .collect();
        if !stores.is_empty() {
            for key in STORE_KEYS {
                remove(&mut self.table, key);
                self.sources.remove(key);
            }
        }
        for key in given {
            let source = source_of(&key);
            self.sources.insert(key, source);
        }
        merge(&mut self.table, table);
        match stores.len() {
            0 => None,
            1 => Some(None),
            _ => Some(Some(
                stores
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and "),
            )),
        }
    }

    /// The environment in effect (`env`, default `test`), read before the other defaults since
    /// some of them depend on it.
    pub fn environment(&self) -> Result<Environment, ConfigError> {
        let Some(value) = self.table.get("env") else {
            return Ok(Environment::Test);
        };
        match value.as_str() {
            Some("local") => Ok(Environment::Local),
            Some("test") => Ok(Environment::Test),
            Some("prod") => Ok(Environment::Prod),
            _ => Err(ConfigError::Invalid {
                key: "env",
                origin: self.sources.get("env").cloned().unwrap_or(Source::Default),
                value: display(value),
                reason: "expected local, test or prod".into(),
            }),
        }
    }

    /// Puts the built-in defaults under what was given: those of [`FileConfig::defaults`],
    /// the environment's endpoints and identifier policy, and the installation's pseudonym key.
    pub fn with_defaults(&mut self, env: Environment, vars: &BTreeMap<String, String>) {
        let mut defaults = FileConfig::defaults();
        defaults.maskinporten_issuer = Some(env.default_issuer().into());
        defaults.kfr_base_url = Some(env.default_kfr_base_url().into());
        defaults.allow_synthetic_ids = Some(env != Environment::Prod);
        // One key per installation, wherever `kfr` is run from: a pseudonym must name the same
        // person in every log of this host, or an operator cannot follow a customer across them.
        let home = state_home(|k| vars.get(k).cloned());
        defaults.pseudonym_key_file =
            Some(home.map_or_else(|| PathBuf::from(FALLBACK_PSEUDONYM_KEY), |h| h.join("pseudonym.key")));
        let mut table = table_of(&defaults);
        for (key, _) in leaves(&table) {
            self.sources.entry(key).or_insert(Source::Default);
        }
        merge(&mut table, std::mem::take(&mut self.table));
        self.table = table;
    }

    /// Every key given or defaulted, with its value as shown and its source.
    pub fn shown(&self) -> BTreeMap<String, (String, Source)> {
        leaves(&self.table)
            .into_iter()
            .filter_map(|(k, v)| {
                let source = self.sources.get(&k)?.clone();
                // A proxy URL may carry a password; what is shown goes into errors and tickets
                // (issue 21 item 7).
                let value = if k == "proxy" {
                    crate::http::egress::redacted_text(&display(&v))
                } else {
                    display(&v)
                };
                Some((k, (value, source)))
            })
            .collect()
    }
}

/// [`FileConfig::defaults`] as `config show` writes each value.
pub(super) fn shown_defaults() -> BTreeMap<String, String> {
    leaves(&table_of(&FileConfig::defaults()))
        .into_iter()
        .map(|(k, v)| (k, display(&v)))
        .collect()
}

/// Reads and checks the file against the schema (unknown keys, wrong types: each refused with
/// its line), and makes its relative paths relative to the file's folder.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        path: path.into(),
        message: e.message().to_string(),
    };
    let de = toml::Deserializer::parse(&text).map_err(syntax)?;
    // The span of an error is a byte range of the text: its line is what a reader needs.
    let mut config: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let start = e.inner().span().map_or(0, |s| s.start);
        schema_error(path, line_of(&text, start, &at), at, e.inner().message())
    })?;
    config.rebase(path.parent().unwrap_or(Path::new("")));
    // Back to a table to be merged: fails only for a path that is not UTF-8 (the file's folder).
    toml::Table::try_from(&config).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        message: format!("cannot use its paths: {e}"),
    })
}

/// The line of `key` (its last part) at or after byte `from`: serde's span of an unknown key
/// is that of the table around it.
fn line_of(text: &str, from: usize, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?.split('[').next()?;
    let first = text[..from.min(text.len())].lines().count().max(1);
    text.lines()
        .enumerate()
        .skip(first - 1)
        .find(|(_, l)| {
            let l = l.trim_start().trim_start_matches('[').trim_start();
            l.strip_prefix(last)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', ']', '.']))
        })
        .map(|(i, _)| i + 1)
}

/// A file the schema refuses: an unknown key (with the known key or table closest to it), or
/// a value of the wrong type.
fn schema_error(path: &Path, line: Option<usize>, key: String, message: &str) -> ConfigError {
    if message.starts_with("unknown field `") {
        return ConfigError::UnknownKey {
            suggestion: suggest(&schema_name(&key)),
            key,
            path: path.into(),
            line,
        };
    }
    // serde names the section structs; a reader knows them as tables.
    let message = match message.split_once(", expected struct ") {
        Some((found, _)) => format!("{found}, expected a table"),
        None => message.to_string(),
    };
    ConfigError::WrongType {
        key,
        path: path.into(),
        line,
        message,
    }
}

/// The `KFR_*` variables of the known keys, as text (a list of sources is written in the file).
fn env_layer(env: &BTreeMap<String, String>) -> toml::Table {
    let mut table = toml::Table::new();
    for key in keys() {
        if let Some(value) = env_var(key).and_then(|var| env.get(&var)) {
            insert(&mut table, key, value.clone().into());
        }
    }
    table
}

/// The built-in defaults as a table (keys without a default left out). They are text, whole
/// numbers and true/false, which always make a table; an empty one would show in every test.
fn table_of(config: &FileConfig) -> toml::Table {
    toml::Table::try_from(config).unwrap_or_default()
}

/// Lays `over` on `under`: tables merge key by key, anything else is replaced.
fn merge(under: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (under.get_mut(&key), value) {
            (Some(toml::Value::Table(u)), toml::Value::Table(o)) => merge(u, o),
            (_, value) => {
                under.insert(key, value);
            }
        }
    }
}

/// Sets a dotted key (`sync.rate`) in a table, making the tables on the way.
fn insert(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.into(), value);
        }
        Some((head, rest)) => {
            let inner = table.entry(head).or_insert_with(|| toml::Table::new().into());
            if let toml::Value::Table(t) = inner {
                insert(t, rest, value);
            }
        }
    }
}

/// Removes a dotted key from a table.
fn remove(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(t)) = table.get_mut(head) {
                remove(t, rest);
            }
        }
    }
}

/// Every value of a table with its dotted key (`sync.sources[1].dir` inside arrays of tables).
fn leaves(table: &toml::Table) -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (key, value) in table {
            let name = format!("{prefix}{key}");
            match value {
                toml::Value::Table(t) => walk(&format!("{name}."), t, out),
                toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(t) = item {
                            walk(&format!("{name}[{i}]."), t, out);
                        }
                    }
                }
                other => out.push((name, other.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

/// A value as `config show` and error messages write it: text without quotes.
pub(super) fn display(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A key as the schema names it: array indices dropped (`sync.sources[2].dir` →
/// `sync.sources[].dir`).
pub(super) fn schema_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// The `&'static` name of a known key for error messages (array entries by their schema name).
pub(super) fn static_name(key: &str) -> &'static str {
    let schema = schema_name(key);
    keys()
        .iter()
        .chain(TABLES)
        .find(|k| **k == schema)
        .copied()
        .unwrap_or("(unknown)")
}

/// The known key or table closest to a misspelt one (at most three edits), for the hint.
fn suggest(key: &str) -> Option<&'static str> {
    keys()
        .iter()
        .chain(TABLES)
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// `KFR_CERTIFICATE_PASSWORD`, when set: the certificate password from the environment.
pub(super) fn password_from_env(env: &BTreeMap<String, String>) -> Option<secrecy::SecretString> {
    env.get(env_vars::KFR_CERTIFICATE_PASSWORD)
        .map(|p| secrecy::SecretString::from(p.clone()))
}

//! `kfr config show`: the effective settings, secrets redacted, with the origin of each value.

use crate::config::{KEYS, Settings};

pub fn run(settings: &Settings, json: bool, p: &super::printer::Printer) -> anyhow::Result<()> {
    let file = settings.config_file.as_ref().map(|p| p.display().to_string());
    let found = settings.config_origin.map(|o| o.to_string());
    if json {
        let mut values = serde_json::Map::new();
        for (key, (value, source)) in &settings.origins {
            values.insert(
                key.to_string(),
                serde_json::json!({ "value": value, "source": source.to_string() }),
            );
        }
        p.data(serde_json::json!({ "config_file": file, "config_file_found": found, "settings": values }))?;
        return Ok(());
    }
    match (&file, &found) {
        (Some(f), Some(how)) => p.data(format_args!("# configuration file: {f} ({how})"))?,
        (Some(f), None) => p.data(format_args!("# configuration file: {f}"))?,
        _ => p.data("# configuration file: (none)")?,
    }
    // KEYS order (the documented order), then derived entries such as the password and each
    // `[[sync.sources]]` entry's keys. Keys inside arrays are shown per entry, not as a schema.
    let names: Vec<&str> = KEYS
        .iter()
        .map(|k| k.name)
        .filter(|n| !n.contains("[]"))
        .chain(settings.origins.keys().map(String::as_str))
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            continue;
        }
        match settings.origins.get(name) {
            Some((value, source)) => p.data(format_args!("{name:<width$} = {value:<45} # {source}"))?,
            None => p.data(format_args!("{name:<width$}   (unset)"))?,
        }
    }
    Ok(())
}

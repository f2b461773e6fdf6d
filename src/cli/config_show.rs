//! `kfr config show`: the effective settings, secrets redacted, with the origin of each value.

use crate::config::{KEYS, Settings};

pub fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let file = settings.config_file.as_ref().map(|p| p.display().to_string());
    if json {
        let mut values = serde_json::Map::new();
        for (key, (value, source)) in &settings.origins {
            values.insert(
                key.to_string(),
                serde_json::json!({ "value": value, "source": source.to_string() }),
            );
        }
        println!("{}", serde_json::json!({ "config_file": file, "settings": values }));
        return Ok(());
    }
    println!("# configuration file: {}", file.as_deref().unwrap_or("(none)"));
    let width = KEYS.iter().map(|k| k.name.len()).max().unwrap_or(0);
    // KEYS order (the documented order), then derived entries such as the password.
    let mut seen = std::collections::BTreeSet::new();
    let names = KEYS.iter().map(|k| k.name).chain(settings.origins.keys().copied());
    for name in names {
        if !seen.insert(name) {
            continue;
        }
        match settings.origins.get(name) {
            Some((value, source)) => println!("{name:<width$} = {value:<45} # {source}"),
            None => println!("{name:<width$}   (unset)"),
        }
    }
    Ok(())
}

//! `kfr config show`: the effective settings, secrets redacted, with the origin of each value.

use crate::config::{Settings, keys};

pub fn run(settings: &Settings, json: bool, p: &super::printer::Printer) -> anyhow::Result<()> {
    let file = settings.config_file.as_ref().map(|p| p.display().to_string());
    let found = settings.config_origin.map(|o| o.to_string());
    if json {
        let mut values = serde_json::Map::new();
        for (key, (value, source)) in &settings.origins {
            values.insert(
                key.to_string(),
                serde_json::json!({ "value": redacted(value), "source": source.to_string() }),
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
    // The schema's order (the documented order), then derived entries such as the password and
    // each `[[sync.sources]]` entry's keys. Keys inside arrays are shown per entry, not as a schema.
    let names: Vec<&str> = keys()
        .iter()
        .copied()
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
            Some((value, source)) => {
                let value = redacted(value);
                p.data(format_args!("{name:<width$} = {value:<45} # {source}"))?
            }
            None => p.data(format_args!("{name:<width$}   (unset)"))?,
        }
    }
    Ok(())
}

/// A value as shown: a URL's password (a proxy's `http://user:secret@host`) is replaced, so the
/// output can be pasted into a ticket (issue 20).
fn redacted(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_proxy_password_is_redacted() {
        assert_eq!(
            super::redacted("http://ops:s3cret@proxy.bank.example:3128/"),
            "http://ops:redacted@proxy.bank.example:3128/"
        );
        assert_eq!(
            super::redacted("http://proxy.bank.example:3128/"),
            "http://proxy.bank.example:3128/"
        );
        assert_eq!(super::redacted("kfr-state.db"), "kfr-state.db");
    }
}

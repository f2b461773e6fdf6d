//! `kfr backup DEST` and `kfr audit export`: what a bank's operations and compliance need from
//! the state store while the agent runs.
//!
//! - A backup is the store's own consistent copy (one snapshot, taken while others write),
//!   mode 0600 whatever the umask (it holds every identifier in full), opened and checked
//!   before it is put at `DEST`; `DEST` must not exist.
//! - The audit export is the history — one row per attempt at KFR and per operator action, with
//!   KFR's answer and who did what and why — for a period and optionally one customer, as CSV,
//!   JSON lines or a spreadsheet. Identifiers are masked unless `--show-id`; the file is 0600
//!   either way. The history is kept `sync.history_retention_days` (five years by default).

use super::printer::Printer;
use super::{AuditExportArgs, AuditFormat, BackupArgs};
use crate::config::Settings;
use crate::ids::CustomerId;
use crate::store::HistoryRecord;
use anyhow::Context as _;
use chrono::NaiveTime;

/// `kfr backup DEST`.
pub async fn backup(settings: &Settings, args: &BackupArgs, p: &Printer) -> anyhow::Result<()> {
    if args.dest.exists() {
        return Err(
            crate::error::UsageError::new(format!("{} exists already", args.dest.display()))
                .with_hint("a backup never overwrites a file: name a new one, e.g. with the date in it")
                .into(),
        );
    }
    let (store, location) = super::build::existing_store(settings, args.state.as_deref())?;
    let info = store
        .backup_to(args.dest.clone())
        .await
        .with_context(|| format!("backing up {location} to {}", args.dest.display()))?;
    if args.json {
        p.json(&serde_json::json!({
            "state": location.describe(), "backup": args.dest, "bytes": info.bytes,
            "schema_version": info.schema_version, "checked": true,
        }))?;
    } else {
        p.data(format!(
            "backed up {location} to {} ({} bytes, schema {}, mode 0600); opened and checked",
            args.dest.display(),
            info.bytes,
            info.schema_version
        ))?;
    }
    Ok(())
}

/// `kfr store migrate --from FILE`: the SQLite store into the configured PostgreSQL one.
pub async fn migrate(settings: &Settings, args: &super::MigrateArgs, p: &Printer) -> anyhow::Result<()> {
    let (to, to_location) = super::build::writable_store(settings, None)?;
    if !matches!(to_location, crate::store::Location::Postgres(_)) {
        return Err(crate::error::UsageError::new(format!(
            "the configured store {to_location} is not a PostgreSQL database"
        ))
        .with_hint("set store.url = \"postgres://user@host:port/database\" (and store.password_file) in the configuration, then migrate")
        .into());
    }
    let from_path = match &args.from {
        Some(path) => path.clone(),
        None => super::build::state_path(settings, None)?,
    };
    let (from, from_location) = super::build::existing_store(settings, Some(&from_path))?;
    let holder = format!("migrate:{}", std::process::id());
    let moved = crate::store::migrate::migrate(&from, &to, &holder, chrono::Utc::now())
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| format!("moving {from_location} to {to_location}"))?;
    if args.json {
        p.json(&serde_json::json!({
            "from": from_location.describe(), "to": to_location.describe(),
            "tables": moved.tables.iter().map(|(t, n)| serde_json::json!({"table": t, "rows": n})).collect::<Vec<_>>(),
        }))?;
    } else {
        for (table, rows) in &moved.tables {
            p.data(format!("{table}: {rows} rows, the same count in both"))?;
        }
        p.data(format!(
            "moved {from_location} to {to_location}; {from_location} is no longer used (keep it until the agents run on PostgreSQL)"
        ))?;
    }
    Ok(())
}

/// The columns of an export, in order.
const COLUMNS: [&str; 13] = [
    "at_utc",
    "register",
    "customer",
    "kind",
    "outcome",
    "operation",
    "seq",
    "event_id",
    "correlation_id",
    "http_status",
    "kfr_code",
    "actor",
    "detail",
];

/// One history line as the export's cells.
fn cells(l: &HistoryRecord, show_id: bool) -> [String; 13] {
    let text = |s: &str| if show_id { s.to_string() } else { crate::ids::scrub(s) };
    [
        l.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        l.register.clone(),
        if show_id {
            l.customer_id.clone()
        } else {
            crate::ids::mask(&l.customer_id)
        },
        l.kind.as_str().to_string(),
        l.outcome.clone(),
        l.op.map(|o| o.as_str().to_string()).unwrap_or_default(),
        l.seq.map(|s| s.to_string()).unwrap_or_default(),
        l.event_id.as_deref().map(text).unwrap_or_default(),
        l.correlation_id.map(|c| c.to_string()).unwrap_or_default(),
        l.status.map(|s| s.to_string()).unwrap_or_default(),
        l.code.clone().unwrap_or_default(),
        l.actor.clone().unwrap_or_default(),
        l.detail.as_deref().map(text).unwrap_or_default(),
    ]
}

/// A CSV field (RFC 4180): quoted when it holds a separator, a quote or a line break; a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet shows it instead of evaluating it.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn render(lines: &[HistoryRecord], format: AuditFormat, show_id: bool) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        AuditFormat::Csv => {
            let mut out = COLUMNS.join(",");
            out.push_str("\r\n");
            for l in lines {
                let row: Vec<String> = cells(l, show_id).iter().map(|c| csv_field(c)).collect();
                out.push_str(&row.join(","));
                out.push_str("\r\n");
            }
            out.into_bytes()
        }
        AuditFormat::Jsonl => {
            let mut out = Vec::new();
            for l in lines {
                let obj: serde_json::Map<String, serde_json::Value> = COLUMNS
                    .iter()
                    .zip(cells(l, show_id))
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
                    .collect();
                serde_json::to_writer(&mut out, &obj)?;
                out.push(b'\n');
            }
            out
        }
        AuditFormat::Xlsx => {
            use rust_xlsxwriter::{Format, Workbook};
            let mut wb = Workbook::new();
            let bold = Format::new().set_bold();
            let ws = wb.add_worksheet();
            ws.set_name("KFR audit")?;
            for (c, h) in COLUMNS.iter().enumerate() {
                ws.write_string_with_format(0, c as u16, *h, &bold)?;
            }
            for (r, l) in lines.iter().enumerate() {
                for (c, v) in cells(l, show_id).iter().enumerate() {
                    ws.write_string(r as u32 + 1, c as u16, v)?;
                }
            }
            ws.set_freeze_panes(1, 0)?;
            ws.autofit();
            wb.save_to_buffer()?
        }
    })
}

/// `kfr audit export --from D --to D [--customer ID] --format F --output FILE [--show-id]`.
pub async fn audit_export(settings: &Settings, args: &AuditExportArgs, p: &Printer) -> anyhow::Result<()> {
    if args.from > args.to {
        return Err(crate::error::UsageError::new(format!("--from {} is after --to {}", args.from, args.to)).into());
    }
    let customer = match &args.customer {
        Some(raw) => Some(CustomerId::parse(raw.trim(), &super::build::id_policy(settings))?),
        None => None,
    };
    let (store, location) = super::build::existing_store(settings, args.state.as_deref())?;
    let from = args.from.and_time(NaiveTime::MIN).and_utc();
    let to = (args.to + chrono::Days::new(1)).and_time(NaiveTime::MIN).and_utc();
    let lines = store
        .history(customer.as_ref().map(|c| c.as_str().to_string()), Some(from), Some(to))
        .await?;
    let bytes = render(&lines, args.format, args.show_id).context("writing the export")?;
    crate::load::report::write_private(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let (attempts, actions) = lines.iter().fold((0, 0), |(a, o), l| match l.kind {
        crate::store::HistoryKind::Attempt => (a + 1, o),
        crate::store::HistoryKind::Operator => (a, o + 1),
    });
    p.data(format!(
        "wrote {} ({} attempt(s), {} operator action(s), {} to {} UTC, from {location}; mode 0600; identifiers {})",
        args.output.display(),
        attempts,
        actions,
        args.from,
        args.to,
        if args.show_id { "IN FULL" } else { "masked" }
    ))?;
    if lines.is_empty() {
        p.warning(format_args!(
            "nothing recorded in that period; the history keeps sync.history_retention_days ({} days)",
            settings.sync.history_retention_days
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }
}

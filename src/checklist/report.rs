//! The checklist's reports: Markdown to paste into the mail to Bits (onboarding C-3), JSON with
//! all evidence, JUnit XML for CI servers, and an XLSX laid out like a test spreadsheet.
//!
//! Files are created 0600: they hold (masked) synthetic identifiers and CorrelationIDs, and a
//! report directory is often shared. The date is the Europe/Oslo calendar date (kfr-notes §10).

use super::runner::{CaseResult, Cleanup, Verdict};
use crate::environment::Environment;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything the reports show.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The institution's org.nr.
    pub institution: String,
    pub environment: Environment,
    pub kfr_url: String,
    pub kfr_version: String,
    pub cases_file: String,
    /// Europe/Oslo date of the run.
    pub date: NaiveDate,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<CaseResult>,
    pub cleanup: Cleanup,
}

impl Report {
    pub fn new(
        institution: String,
        environment: Environment,
        kfr_url: String,
        cases_file: String,
        started: DateTime<Utc>,
        cases: Vec<CaseResult>,
        cleanup: Cleanup,
    ) -> Report {
        let passed = cases.iter().filter(|c| c.verdict == Verdict::Pass).count();
        Report {
            institution,
            environment,
            kfr_url,
            kfr_version: env!("CARGO_PKG_VERSION").to_string(),
            cases_file,
            date: oslo_date(started),
            started,
            finished: Utc::now(),
            passed,
            failed: cases.len() - passed,
            cases,
            cleanup,
        }
    }

    /// Every case passed and nothing was left in the register.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.cleanup.leftovers.is_empty()
    }
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot build the XLSX report: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
}

/// The base name of the four report files.
pub const REPORT_NAME: &str = "kfr-checklist";

/// Writes `kfr-checklist.{md,json,xml,xlsx}` into `dir` (created if missing); returns the paths.
pub fn write_reports(dir: &Path, report: &Report) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(report).expect("the report serialises");
    let files: [(&str, Vec<u8>); 4] = [
        ("md", markdown(report).into_bytes()),
        ("json", json),
        ("xml", junit(report).into_bytes()),
        ("xlsx", xlsx(report)?),
    ];
    let mut out = Vec::new();
    for (ext, bytes) in files {
        let path = dir.join(format!("{REPORT_NAME}.{ext}"));
        write_private(&path, &bytes).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        out.push(path);
    }
    Ok(out)
}

/// Writes a file readable by its owner only (an existing file is narrowed too).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        opts.mode(0o600);
        let mut f = opts.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)
    }
    #[cfg(not(unix))]
    {
        opts.open(path)?.write_all(bytes)
    }
}

/// The Europe/Oslo calendar date of `utc` (the report's date is Bits' day, not the host's).
pub use crate::clock::oslo_date;

fn first_correlation_id(c: &CaseResult) -> String {
    c.correlation_ids.first().map(|u| u.to_string()).unwrap_or_default()
}

/// Markdown table cell: no pipes or line breaks that would end the cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// The Markdown report, ready to paste into the mail to Bits.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# KFR integration test (kfr checklist)\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| Institution (org.nr) | {} |", r.institution);
    let _ = writeln!(s, "| Environment | {} |", r.environment);
    let _ = writeln!(s, "| KFR URL | {} |", r.kfr_url);
    let _ = writeln!(s, "| kfr version | {} |", r.kfr_version);
    let _ = writeln!(s, "| Date (Europe/Oslo) | {} |", r.date);
    let _ = writeln!(
        s,
        "| Run (UTC) | {} to {} |",
        r.started.format("%Y-%m-%d %H:%M:%S"),
        r.finished.format("%H:%M:%S")
    );
    let _ = writeln!(s, "| Cases | {} |", cell(&r.cases_file));
    let _ = writeln!(
        s,
        "| Result | **{} of {} passed**{} |\n",
        r.passed,
        r.cases.len(),
        if r.failed > 0 {
            format!(", {} failed", r.failed)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "| Id | Title | Result | CorrelationID | Time (UTC) | ms |\n|---|---|---|---|---|---|"
    );
    for c in &r.cases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&c.id),
            cell(&c.title),
            c.verdict.as_str(),
            first_correlation_id(c),
            c.started.format("%H:%M:%S%.3f"),
            c.duration_ms
        );
    }
    let failed: Vec<&CaseResult> = r.cases.iter().filter(|c| c.verdict == Verdict::Fail).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\n## Failed cases");
        for c in failed {
            let _ = writeln!(
                s,
                "\n### {} {}\n\n| # | Step | Expected | Actual | CorrelationID |\n|---|---|---|---|---|",
                c.id,
                cell(&c.title)
            );
            for st in &c.steps {
                let _ = writeln!(
                    s,
                    "| {}{} | {} | {} | {} | {} |",
                    st.n,
                    if st.passed { "" } else { " ✗" },
                    cell(&st.step),
                    cell(&st.expected),
                    cell(&st.actual),
                    st.correlation_id.map(|u| u.to_string()).unwrap_or_default()
                );
            }
        }
    }
    let _ = writeln!(s, "\n## Register after the run\n");
    let _ = writeln!(
        s,
        "Removed {} relationship(s) the run had registered; {} were already gone.",
        r.cleanup.removed, r.cleanup.already_absent
    );
    if r.cleanup.leftovers.is_empty() {
        let _ = writeln!(s, "Nothing was left behind.");
    } else {
        let _ = writeln!(s, "\n**Left behind:**\n");
        for l in &r.cleanup.leftovers {
            let _ = writeln!(s, "- {l}");
        }
    }
    let _ = writeln!(
        s,
        "\nIdentifiers are synthetic test identities, shown masked. Every step's evidence is in kfr-checklist.json."
    );
    s
}

/// XML text or attribute value: the five predefined entities, and characters XML 1.0 cannot
/// carry at all (most control characters) replaced, so the file always parses.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// JUnit XML in the Apache Ant layout that CI servers read (and its XML schema accepts): one
/// `testsuite` root, one `testcase` per case with a `failure` on each failed one. The schema
/// allows nothing else inside a `testcase`, so the evidence (answers, CorrelationIDs) goes into
/// the suite's `system-out`, one block per case.
pub fn junit(r: &Report) -> String {
    let e = xml_escape;
    let total_ms = (r.finished - r.started).num_milliseconds().max(0) as u64;
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuite name=\"kfr checklist ({})\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{}\" timestamp=\"{}\" hostname=\"localhost\">",
        e(r.environment.as_str()),
        r.cases.len(),
        r.failed,
        secs(total_ms),
        r.started.format("%Y-%m-%dT%H:%M:%S")
    );
    let _ = writeln!(s, "  <properties>");
    let date = r.date.to_string();
    for (k, v) in [
        ("institution", r.institution.as_str()),
        ("environment", r.environment.as_str()),
        ("kfr_url", r.kfr_url.as_str()),
        ("kfr_version", r.kfr_version.as_str()),
        ("cases_file", r.cases_file.as_str()),
        ("date_europe_oslo", date.as_str()),
    ] {
        let _ = writeln!(s, "    <property name=\"{k}\" value=\"{}\"/>", e(v));
    }
    let _ = writeln!(s, "  </properties>");
    for c in &r.cases {
        let open = format!(
            "  <testcase classname=\"kfr.checklist\" name=\"{} {}\" time=\"{}\"",
            e(&c.id),
            e(&c.title),
            secs(c.duration_ms)
        );
        if c.verdict == Verdict::Fail {
            let message = c
                .steps
                .iter()
                .find(|st| !st.passed)
                .map(|st| format!("step {}: {}", st.n, st.actual))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{open}>\n    <failure message=\"{}\" type=\"ExpectationFailed\">Expected:\n{}\n\nActual:\n{}</failure>\n  </testcase>",
                e(&message),
                e(&c.expected),
                e(&c.actual)
            );
        } else {
            let _ = writeln!(s, "{open}/>");
        }
    }
    let mut out = String::new();
    for c in &r.cases {
        let ids: Vec<String> = c.correlation_ids.iter().map(|u| u.to_string()).collect();
        let _ = write!(
            out,
            "{} {} ({})\n{}\nCorrelationIDs: {}\n\n",
            c.id,
            c.verdict.as_str(),
            c.started.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            c.actual,
            ids.join(", ")
        );
    }
    let _ = writeln!(s, "  <system-out>{}</system-out>", e(&out));
    let _ = writeln!(s, "  <system-err></system-err>\n</testsuite>");
    s
}

/// The spreadsheet: sheet "Checklist" with one row per case (id, title, expected, actual,
/// result, CorrelationID, time), sheet "Run" with the facts of the run.
pub fn xlsx(r: &Report) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    use rust_xlsxwriter::{Format, FormatAlign, Workbook};
    let mut wb = Workbook::new();
    let bold = Format::new().set_bold();
    let wrap = Format::new().set_text_wrap().set_align(FormatAlign::Top);
    let pass = Format::new()
        .set_bold()
        .set_font_color("#006100")
        .set_align(FormatAlign::Top);
    let fail = Format::new()
        .set_bold()
        .set_font_color("#9C0006")
        .set_align(FormatAlign::Top);
    {
        let ws = wb.add_worksheet();
        ws.set_name("Checklist")?;
        let headers = [
            "Id",
            "Title",
            "Expected",
            "Actual",
            "Result",
            "CorrelationID",
            "Time (UTC)",
            "Duration (ms)",
        ];
        let widths = [10.0, 40.0, 60.0, 60.0, 8.0, 38.0, 22.0, 12.0];
        for (col, (h, w)) in headers.iter().zip(widths).enumerate() {
            ws.write_string_with_format(0, col as u16, *h, &bold)?;
            ws.set_column_width(col as u16, w)?;
        }
        for (i, c) in r.cases.iter().enumerate() {
            let row = i as u32 + 1;
            ws.write_string_with_format(row, 0, &c.id, &wrap)?;
            ws.write_string_with_format(row, 1, &c.title, &wrap)?;
            ws.write_string_with_format(row, 2, &c.expected, &wrap)?;
            ws.write_string_with_format(row, 3, &c.actual, &wrap)?;
            let verdict = if c.verdict == Verdict::Pass { &pass } else { &fail };
            ws.write_string_with_format(row, 4, c.verdict.as_str(), verdict)?;
            let ids: Vec<String> = c.correlation_ids.iter().map(|u| u.to_string()).collect();
            ws.write_string_with_format(row, 5, ids.join("\n"), &wrap)?;
            ws.write_string_with_format(row, 6, c.started.format("%Y-%m-%d %H:%M:%S").to_string(), &wrap)?;
            ws.write_number_with_format(row, 7, c.duration_ms as f64, &wrap)?;
        }
        ws.set_freeze_panes(1, 0)?;
    }
    {
        let ws = wb.add_worksheet();
        ws.set_name("Run")?;
        let rows = [
            ("Institution (org.nr)", r.institution.clone()),
            ("Environment", r.environment.to_string()),
            ("KFR URL", r.kfr_url.clone()),
            ("kfr version", r.kfr_version.clone()),
            ("Date (Europe/Oslo)", r.date.to_string()),
            ("Cases", r.cases_file.clone()),
            ("Passed", r.passed.to_string()),
            ("Failed", r.failed.to_string()),
            ("Left in the register", r.cleanup.leftovers.join("\n")),
        ];
        ws.set_column_width(0, 24.0)?;
        ws.set_column_width(1, 70.0)?;
        for (i, (k, v)) in rows.iter().enumerate() {
            ws.write_string_with_format(i as u32, 0, *k, &bold)?;
            ws.write_string_with_format(i as u32, 1, v, &wrap)?;
        }
    }
    wb.save_to_buffer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checklist::runner::StepResult;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn xml_escape_covers_markup_and_control_characters() {
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(xml_escape("x\u{1}y\n"), "x\u{FFFD}y\n");
    }

    fn report(verdicts: &[Verdict]) -> Report {
        let t = at("2026-12-01T12:00:00Z");
        let cases = verdicts
            .iter()
            .enumerate()
            .map(|(i, v)| CaseResult {
                id: format!("C-{i}"),
                title: "a <title> & \"quotes\" | pipe".into(),
                verdict: *v,
                expected: "1. add: status 201".into(),
                actual: "1. status 200".into(),
                correlation_ids: vec![uuid::Uuid::nil()],
                started: t,
                finished: t,
                duration_ms: 5,
                steps: vec![StepResult {
                    n: 1,
                    step: "add".into(),
                    expected: "status 201".into(),
                    actual: "status 200".into(),
                    passed: *v == Verdict::Pass,
                    status: Some(200),
                    error_code: None,
                    correlation_id: Some(uuid::Uuid::nil()),
                    correlation_id_echoed: Some(true),
                    started: t,
                    duration_ms: 5,
                }],
            })
            .collect();
        Report::new(
            "916960190".into(),
            Environment::Local,
            "http://127.0.0.1:1/kar-ws/api/v1".into(),
            "cases.toml".into(),
            t,
            cases,
            Cleanup::default(),
        )
    }

    #[test]
    fn junit_has_one_testcase_per_case_and_marks_failures() {
        let x = junit(&report(&[Verdict::Pass, Verdict::Fail, Verdict::Pass]));
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert_eq!(x.matches("<failure ").count(), 1);
        assert!(x.contains("tests=\"3\" failures=\"1\""));
        assert!(x.contains("a &lt;title&gt; &amp; &quot;quotes&quot;"), "{x}");
        assert!(!x.contains("<title>"));
    }

    #[test]
    fn markdown_names_the_run_and_keeps_the_table_intact() {
        let r = report(&[Verdict::Pass, Verdict::Fail]);
        let md = markdown(&r);
        for needle in [
            "916960190",
            "| Environment | local |",
            "kfr version",
            "Date (Europe/Oslo) | 2026-12-01",
            "1 of 2 passed",
            "## Failed cases",
        ] {
            assert!(md.contains(needle), "{needle} missing:\n{md}");
        }
        assert!(md.contains("\\| pipe"), "{md}");
        assert!(!r.all_passed());
    }

    #[test]
    fn files_are_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_reports(&dir.path().join("r"), &report(&[Verdict::Pass])).unwrap();
        assert_eq!(paths.len(), 4);
        let xlsx = std::fs::read(&paths[3]).unwrap();
        assert_eq!(&xlsx[..2], b"PK", "an XLSX is a zip file");
        #[cfg(unix)]
        for p in &paths {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
    }
}

//! The certificates the agent depends on and when they expire: the business certificate (the
//! Maskinporten grant is signed with it) and the intake's TLS certificate. An expiry is the one
//! outage that can be seen years ahead, so the agent exports the seconds left as a gauge
//! (`kfr_certificate_expiry_seconds{certificate}`) and warns in its log from
//! [`WARN_DAYS`] days before; `kfr status` shows the days left.
//!
//! The files are looked at again when they change on disk (their modification time, checked by
//! the caller's clock: the agent every minute), so a renewed certificate dropped in place shows
//! in the gauge without a restart. The token client and the intake load the renewed certificate
//! themselves at their next grant or connection (`crate::file_stamp`).

use crate::config::Settings;
use crate::maskinporten::{CertInfo, Credential};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::SystemTime;

/// Days before expiry from which the agent warns (renewal takes days to weeks).
pub const WARN_DAYS: i64 = 30;

/// How the agent names each certificate (the gauge's `certificate` label).
pub const BUSINESS: &str = "business";
pub const INTAKE_TLS: &str = "intake_tls";

type Reader = Box<dyn Fn() -> anyhow::Result<DateTime<Utc>> + Send + Sync>;

/// One certificate watched: its files, how to read its expiry, what was read last.
struct Watched {
    name: &'static str,
    files: Vec<PathBuf>,
    read: Reader,
    /// Modification times at the last read; `None` before the first.
    seen: Option<Vec<Option<SystemTime>>>,
    last: Option<Result<DateTime<Utc>, String>>,
    /// Days left when the log last warned (warns again when the count changes: once a day).
    warned_at_days: Option<i64>,
}

/// What one check found for one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reading {
    pub certificate: &'static str,
    /// When it expires; `None` when it could not be read (`error` says why).
    pub not_after: Option<DateTime<Utc>>,
    pub days_left: Option<i64>,
    pub error: Option<String>,
    /// Read from disk at this check (first check, or the files changed).
    #[serde(skip)]
    pub reread: bool,
}

impl Reading {
    /// Expired, expiring within [`WARN_DAYS`], or unreadable.
    pub fn needs_attention(&self) -> bool {
        self.error.is_some() || self.days_left.is_some_and(|d| d < WARN_DAYS)
    }
}

/// The certificates of one configuration.
#[derive(Default)]
pub struct CertWatch {
    certs: Vec<Watched>,
}

impl CertWatch {
    /// The business certificate (when configured) and the intake's TLS certificate `tls_cert`
    /// (when the HTTP intake serves TLS).
    pub fn from_settings(settings: &Settings, tls_cert: Option<PathBuf>) -> CertWatch {
        let mut w = CertWatch::default();
        if let Ok(src) = settings.require_credential() {
            let files = match src {
                crate::maskinporten::CredentialSource::Pkcs12 { path, .. } => vec![path.clone()],
                crate::maskinporten::CredentialSource::Pem {
                    private_key,
                    certificate,
                    ..
                } => vec![certificate.clone(), private_key.clone()],
            };
            let src = src.clone();
            w.add(
                BUSINESS,
                files,
                Box::new(move || Ok(Credential::from_config(&src)?.info().not_after)),
            );
        }
        if let Some(path) = tls_cert {
            let p = path.clone();
            w.add(INTAKE_TLS, vec![path], Box::new(move || pem_not_after(&p)));
        }
        w
    }

    fn add(&mut self, name: &'static str, files: Vec<PathBuf>, read: Reader) {
        self.certs.push(Watched {
            name,
            files,
            read,
            seen: None,
            last: None,
            warned_at_days: None,
        });
    }

    /// Reads each certificate whose files changed since the last check (all of them the first
    /// time) and answers for every one as of `now`.
    pub fn check(&mut self, now: DateTime<Utc>) -> Vec<Reading> {
        self.certs
            .iter_mut()
            .map(|c| {
                let times: Vec<Option<SystemTime>> = c
                    .files
                    .iter()
                    .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                    .collect();
                let reread = c.seen.as_ref() != Some(&times);
                if reread {
                    c.last = Some((c.read)().map_err(|e| format!("{e:#}")));
                    c.seen = Some(times);
                    c.warned_at_days = None;
                }
                let (not_after, error) = match c.last.clone().expect("read above") {
                    Ok(t) => (Some(t), None),
                    Err(e) => (None, Some(e)),
                };
                Reading {
                    certificate: c.name,
                    not_after,
                    days_left: not_after.map(|t| (t - now).num_days()),
                    error,
                    reread,
                }
            })
            .collect()
    }

    /// [`Self::check`], then the gauges and the log: a warning when a certificate expires within
    /// [`WARN_DAYS`] (again each day the count changes), an error when it cannot be read.
    pub fn check_and_report(&mut self, now: DateTime<Utc>) -> Vec<Reading> {
        let readings = self.check(now);
        for (r, c) in readings.iter().zip(self.certs.iter_mut()) {
            if let Some(t) = r.not_after {
                crate::sync::metrics::set_certificate_expiry(r.certificate, (t - now).num_seconds() as f64);
            }
            if r.reread {
                match (&r.error, r.not_after) {
                    (Some(e), _) => {
                        tracing::error!(certificate = r.certificate, error = %e, "cannot read the certificate's expiry")
                    }
                    (None, Some(t)) => {
                        tracing::info!(certificate = r.certificate, not_after = %t.format("%Y-%m-%d"), "certificate read")
                    }
                    _ => {}
                }
            }
            if let Some(days) = r.days_left.filter(|d| *d < WARN_DAYS)
                && c.warned_at_days != Some(days)
            {
                c.warned_at_days = Some(days);
                tracing::warn!(
                    certificate = r.certificate,
                    days_left = days,
                    "the {} certificate expires in {days} days: renew it now (kfr re-reads it when the file changes)",
                    r.certificate
                );
            }
        }
        readings
    }
}

/// The expiry of the first certificate in a PEM file.
fn pem_not_after(path: &std::path::Path) -> anyhow::Result<DateTime<Utc>> {
    use anyhow::Context as _;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let first = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .next()
        .with_context(|| format!("{} holds no certificate", path.display()))?
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(CertInfo::from_der(&first)?.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    /// A PEM certificate valid until `days` from now, written to `path` with modification time
    /// `mtime` (set, so that a change is seen however fast the test runs).
    fn write_cert(path: &std::path::Path, days: u64, mtime: SystemTime) {
        let ca = crate::certs::TestCa::new().unwrap();
        let today = Utc::now().date_naive();
        let opts = crate::certs::LeafOptions {
            not_after: today + chrono::Days::new(days),
            ..crate::certs::LeafOptions::standard()
        };
        let cert = ca.issue("916960190", "KFR TEST", &opts).unwrap();
        std::fs::write(path, &cert.cert_pem).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    #[test]
    fn a_certificate_replaced_on_disk_is_read_again_and_only_then() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("tls.pem");
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        write_cert(&path, 10, t0);
        let mut w = CertWatch::default();
        let p = path.clone();
        w.add(INTAKE_TLS, vec![path.clone()], Box::new(move || pem_not_after(&p)));
        let now = Utc::now();

        let first = w.check(now);
        assert_eq!(first.len(), 1);
        assert!(first[0].reread);
        let days = first[0].days_left.unwrap();
        assert!((9..=10).contains(&days), "{first:?}");
        assert!(first[0].needs_attention(), "10 days left is within the warning");

        // Nothing changed on disk: not read again, same answer a minute later.
        let again = w.check(now + Duration::minutes(1));
        assert!(!again[0].reread);
        assert_eq!(again[0].not_after, first[0].not_after);

        // The renewed certificate dropped in place: read again, two years left.
        write_cert(&path, 730, t0 + std::time::Duration::from_secs(60));
        let renewed = w.check(now + Duration::minutes(2));
        assert!(renewed[0].reread);
        assert!(renewed[0].days_left.unwrap() > 700, "{renewed:?}");
        assert!(!renewed[0].needs_attention());

        // Removed: unreadable, which needs attention too.
        std::fs::remove_file(&path).unwrap();
        let gone = w.check(now + Duration::minutes(3));
        assert!(
            gone[0].reread && gone[0].error.is_some() && gone[0].needs_attention(),
            "{gone:?}"
        );
    }
}

//! `kfr certs local`: a throwaway test PKI and ready-to-use `kfr.toml` files for the local mock.
//!
//! The output directory gets a test CA, two business-certificate-shaped client certificates (the
//! institution and a second organisation for negative tests) as PKCS#12 with a random password
//! file and as PEM, and one `kfr.toml` per organisation with paths relative to the directory, so
//! the directory can be moved and `--config DIR/kfr.toml` works from anywhere. Key and password
//! files are created with mode 0600. With an https:// `--mock-url` it also writes the mock's TLS
//! certificate (`kfr mock --tls-cert/--tls-key`) and its CA, which the kfr.toml files trust as
//! `extra_ca_bundle`. Nothing here is fit for Maskinporten test or production:
//! those need a Buypass or Commfides certificate (see certs/README.md).

use crate::certs::{self, IssuedCert, LOCAL_CA_NAME, LOCAL_ROOT_NAME};
use crate::error::UsageError;
use crate::maskinporten::CertInfo;
use anyhow::Context as _;
use rand::distr::{Alphanumeric, SampleString as _};
use std::fmt::Write as _;
use std::path::Path;
use zeroize::Zeroizing;

pub fn run(args: &super::CertsLocalArgs, p: &super::printer::Printer) -> anyhow::Result<()> {
    if !certs::valid_org_number(&args.org_number) {
        return Err(UsageError::new(format!(
            "--org-number {:?} is not a valid organisation number",
            args.org_number
        ))
        .with_hint("nine digits whose last digit is the mod-11 check digit, e.g. 916960190")
        .into());
    }
    let mock_url = args.mock_url.trim_end_matches('/');
    match url::Url::parse(mock_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            return Err(
                UsageError::new(format!("--mock-url {:?} is not an http(s) URL", args.mock_url))
                    .with_hint("e.g. http://127.0.0.1:8080, where `kfr mock` listens")
                    .into(),
            );
        }
    }
    if args.name.trim().is_empty() {
        return Err(UsageError::new("--name must not be empty").into());
    }

    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let overwriting = out.join("kfr.toml").exists();
    let pki = certs::generate(&args.org_number, &args.name)?;

    // Issuing CA and root, as Digdir trusts both: a leaf-only x5c (KFR's FAQ) then chains to the
    // issuing CA, and an x5c with the chain reaches the root.
    write_public(
        &out.join("ca.pem"),
        format!("{}{}", pki.ca_cert_pem, pki.root_cert_pem).as_bytes(),
    )?;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "Wrote throwaway test material for the local mock to {}:",
        out.display()
    );
    let _ = writeln!(
        report,
        "  ca.pem               test CA \"{LOCAL_CA_NAME}\" and its root \"{LOCAL_ROOT_NAME}\" (the mock must trust them)"
    );
    // An https:// mock URL: the mock serves TLS with a certificate from its own CA, which the
    // generated kfr.toml trusts through extra_ca_bundle, as a bank trusts its proxy's CA.
    let mock_tls = match url::Url::parse(mock_url) {
        Ok(u) if u.scheme() == "https" => {
            let host = match u.host() {
                Some(url::Host::Ipv6(ip)) => ip.to_string(),
                Some(h) => h.to_string(),
                None => "127.0.0.1".into(),
            };
            Some(write_mock_tls(out, &host)?)
        }
        _ => None,
    };
    if mock_tls.is_some() {
        let _ = writeln!(
            report,
            "  {MOCK_TLS_CA:<20} CA of the mock's TLS certificate {MOCK_TLS_CERT} ({MOCK_TLS_KEY}); kfr.toml trusts it as extra_ca_bundle"
        );
    }
    for (prefix, config, cert, role) in [
        ("client", "kfr.toml", &pki.client, "the institution"),
        (
            "other",
            "other-kfr.toml",
            &pki.other,
            "a second organisation, for negative tests",
        ),
    ] {
        write_organisation(
            out,
            prefix,
            config,
            cert,
            &[&pki.ca_cert_der, &pki.root_cert_der],
            mock_url,
            mock_tls.is_some(),
        )?;
        let info = CertInfo::from_der(&cert.cert_der)?;
        let _ = writeln!(report, "  {config:<20} org.nr {} ({role})", cert.org_number);
        let _ = writeln!(
            report,
            "    {prefix}.p12, {prefix}.p12.password, {prefix}-cert.pem, {prefix}-key.pem"
        );
        let _ = writeln!(report, "    subject {}", info.subject);
        let _ = writeln!(report, "    expires {}", info.not_after.format("%Y-%m-%d"));
    }
    let _ = writeln!(report, "Next:");
    let mut mock = mock_command(mock_url, &out.join("ca.pem"));
    if mock_tls.is_some() {
        let _ = write!(
            mock,
            " --tls-cert {} --tls-key {}",
            out.join(MOCK_TLS_CERT).display(),
            out.join(MOCK_TLS_KEY).display()
        );
    }
    let _ = writeln!(report, "  {mock}");
    let _ = writeln!(report, "  kfr --config {} token", out.join("kfr.toml").display());
    p.data(report.trim_end())?;
    if overwriting {
        p.message(format_args!(
            "note: {} existed and was overwritten, together with the certificates and keys next to it",
            out.join("kfr.toml").display()
        ));
    }
    Ok(())
}

/// The `kfr mock` command that serves what the generated kfr.toml points at: the mock listens on
/// 127.0.0.1:8080 unless told otherwise, so any other URL needs its `--listen`, and a host name
/// needs `--issuer` too (the mock's issuer is named after its listen address, and a token's
/// issuer must match the configured one byte for byte).
fn mock_command(mock_url: &str, ca: &Path) -> String {
    let mut cmd = format!("kfr mock --trust {}", ca.display());
    let Ok(url) = url::Url::parse(mock_url) else { return cmd };
    let port = url.port_or_known_default().unwrap_or(8080);
    let issuer = format!(" --issuer {mock_url}/maskinporten/");
    let _ = match url.host() {
        Some(url::Host::Ipv4(ip)) => write!(cmd, " --listen {}", std::net::SocketAddr::from((ip, port))),
        Some(url::Host::Ipv6(ip)) => write!(cmd, " --listen {}", std::net::SocketAddr::from((ip, port))),
        Some(url::Host::Domain("localhost")) => write!(cmd, " --listen 127.0.0.1:{port}{issuer}"),
        // Another host's name: the mock must listen where that name points, off loopback.
        _ => write!(cmd, " --listen 0.0.0.0:{port} --allow-remote{issuer}"),
    };
    cmd
}

/// The mock's TLS material for an https:// `--mock-url`.
const MOCK_TLS_CA: &str = "mock-tls-ca.pem";
const MOCK_TLS_CERT: &str = "mock-tls-cert.pem";
const MOCK_TLS_KEY: &str = "mock-tls-key.pem";

/// A CA for the mock's TLS and a server certificate for `host` (the key 0600).
fn write_mock_tls(out: &Path, host: &str) -> anyhow::Result<()> {
    let ca = certs::TlsCa::new("KFR Local Mock TLS CA")?;
    let server = ca.issue_server(&[host], None)?;
    write_public(&out.join(MOCK_TLS_CA), ca.cert_pem.as_bytes())?;
    write_public(&out.join(MOCK_TLS_CERT), server.cert_pem.as_bytes())?;
    write_secret(&out.join(MOCK_TLS_KEY), server.key_pem.as_bytes())
}

/// Writes `<prefix>.p12` (+ password file), `<prefix>-cert.pem`, `<prefix>-key.pem` and the
/// config file for one organisation.
fn write_organisation(
    out: &Path,
    prefix: &str,
    config: &str,
    cert: &IssuedCert,
    chain: &[&[u8]],
    mock_url: &str,
    mock_tls: bool,
) -> anyhow::Result<()> {
    // A fresh random password per file: nobody should be tempted to reuse it, and tests read
    // it from the password file like an operator would (certificate_password_file).
    let password = Zeroizing::new(Alphanumeric.sample_string(&mut rand::rng(), 32));
    let p12 = certs::to_pkcs12(cert, chain, &password)?;
    let p12_name = format!("{prefix}.p12");
    let password_name = format!("{p12_name}.password");
    write_secret(&out.join(&p12_name), &p12)?;
    write_secret(&out.join(&password_name), format!("{}\n", password.as_str()).as_bytes())?;
    write_public(&out.join(format!("{prefix}-cert.pem")), cert.cert_pem.as_bytes())?;
    write_secret(&out.join(format!("{prefix}-key.pem")), cert.key_pem.as_bytes())?;

    let s = |v: &str| toml::Value::String(v.to_string()).to_string();
    let mut toml = format!(
        "# generated by `kfr certs local` — throwaway test material for the local mock only\n\
         env = \"local\"\n\
         org_number = {}\n\
         client_id = {}\n\
         certificate = {}\n\
         certificate_password_file = {}\n\
         maskinporten_issuer = {}\n\
         kfr_base_url = {}\n",
        s(&cert.org_number),
        s(&uuid::Uuid::new_v4().to_string()),
        s(&p12_name),
        s(&password_name),
        s(&format!("{mock_url}/maskinporten/")),
        s(&format!("{mock_url}/kar-ws/api/v1")),
    );
    if mock_tls {
        toml.push_str(&format!("extra_ca_bundle = {}\n", s(MOCK_TLS_CA)));
    }
    write_public(&out.join(config), toml.as_bytes())
}

fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a file only its owner can read. The file is removed and created afresh so an existing
/// file with wider permissions cannot keep them.
fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

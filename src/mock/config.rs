//! Flags of `kfr mock` and their resolution into a [`MockConfig`].
//!
//! Flags are parsed by clap first and then checked here once, so that a bad value (an unreadable
//! `--trust` file, a fail rate outside 0..=1, a malformed `--client`) is a [`UsageError`] (exit 2)
//! before anything listens. Tests skip the flags and build a [`MockConfig`] directly.

use crate::error::UsageError;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The only scope KFR writes need (kfr-notes §3). Granted to every client when no `--client` is
/// given, so the mock works out of the box with any Digdir-style client id.
pub const DEFAULT_SCOPE: &str = "bits:kundeforhold.write";

/// A scope without write access, also granted to every client when no `--client` is given, so
/// that a token lacking `bits:kundeforhold.write` can be had from the mock (the checklist's
/// "token without the write scope" case, kfr-notes §8 no. 12). Mock-only: Digdir knows no such
/// scope.
pub const OTHER_SCOPE: &str = "kfr-mock:other";

/// Flags of `kfr mock`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockFlags {
    /// Address to listen on. Loopback only, unless --allow-remote.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Listen on a non-loopback address too. The mock accepts any client id and its admin
    /// surface shows full identifiers, so this is for isolated test networks only.
    #[arg(long)]
    pub allow_remote: bool,

    /// PEM file with one or more CA certificates whose client certificates the fake Maskinporten
    /// accepts (repeatable). `kfr certs local` writes one.
    #[arg(long = "trust", value_name = "PATH", required = true)]
    pub trust: Vec<PathBuf>,

    /// Issuer identifier (and required `aud` of grants). Default: http://<listen address>/maskinporten/
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,

    /// Seconds added to the mock's clock (negative allowed), to rehearse client clock skew.
    #[arg(long, value_name = "SECS", default_value_t = 0, allow_negative_numbers = true)]
    pub clock_skew_secs: i64,

    /// Lifetime of issued access tokens (`expires_in`).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub token_lifetime_secs: u64,

    /// Delay before every answer from the token endpoint.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub token_latency_ms: u64,

    /// Probability (0..=1) that a token request answers 500.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub token_fail_rate: f64,

    /// The first N token requests answer 503 (deterministic retry rehearsals).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub token_fail_first: u32,

    /// A known client: its id, the scopes it is granted and optionally the org.nr that owns it
    /// (repeatable). When given, only these clients exist.
    #[arg(long = "client", value_name = "ID=SCOPE[,SCOPE...][@ORGNR]")]
    pub clients: Vec<String>,

    /// A delegation declared in Altinn (repeatable): CONSUMER lets SUPPLIER (the certificate's
    /// org.nr) use SCOPE on its behalf (default bits:kundeforhold.write). A grant with
    /// `consumer_org` needs one (MP-251).
    #[arg(long = "delegation", value_name = "CONSUMER=SUPPLIER[:SCOPE]")]
    pub delegations: Vec<String>,

    /// The organisations the API owner (Bits) has given a scope to (repeatable). Once a scope is
    /// named here, a token for it goes only to these organisations; others get MP-250.
    #[arg(long = "scope-access", value_name = "SCOPE=ORGNR[,ORGNR...]")]
    pub scope_access: Vec<String>,

    /// Which identifier policy the fake KFR applies (KFR-005): `test` also accepts synthetic
    /// identities (Tenor +80, 2/3-prefixed organisations), `prod` only real ones. Set from the
    /// global `--env` (`test`, the default, or `prod`) by the CLI: one flag, one meaning.
    #[arg(skip = MockEnv::Test)]
    pub env: MockEnv,

    /// Relationships the fake KFR ingests per second from accepted batches (kfr-notes §5: ~250).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_INGEST_RATE)]
    pub ingest_rate: u64,

    /// Largest batch body the fake KFR accepts, in bytes (onboarding guide: 10 MB a file).
    #[arg(long, value_name = "BYTES", default_value_t = crate::kfr::batch::DEFAULT_MAX_BYTES)]
    pub max_batch_bytes: usize,

    /// Probability (0..=1) that a KFR request answers 500 KFR-007.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub error_rate: f64,

    /// Probability (0..=1) that a KFR request answers 429 with `Retry-After`.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub rate_limit_rate: f64,

    /// The `Retry-After` of injected 429 answers.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after_secs: u64,

    /// Probability (0..=1) that a KFR request is held open without an answer.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub timeout_rate: f64,

    /// Delay before every KFR answer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// An outage of N seconds from start: every KFR request answers 503 meanwhile.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub outage_secs: u64,

    /// Break one behaviour of the fake KFR on purpose (repeatable), to show that `kfr checklist`
    /// catches it; see docs/mock.md "Quirks".
    #[arg(long = "quirk", value_name = "NAME", value_enum)]
    pub quirks: Vec<super::Quirk>,

    /// Serve HTTPS with this PEM certificate chain (with --tls-key): the issuer and the KFR base
    /// URL become https://, as in test and production, so a proxy and `extra_ca_bundle` can be
    /// rehearsed. `kfr certs local --mock-tls` writes one.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The mock's TLS server certificate chain and key (PEM), when it serves HTTPS.
#[derive(Clone)]
pub struct MockTls {
    pub cert_chain_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for MockTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockTls").field("key", &"[redacted]").finish()
    }
}

impl MockTls {
    /// Reads `--tls-cert` and `--tls-key`; an unreadable file is a usage error naming it.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<MockTls, UsageError> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| UsageError::new(format!("{flag} {}: cannot read it: {e}", path.display())))
        };
        Ok(MockTls {
            cert_chain_pem: read("--tls-cert", cert)?,
            key_pem: zeroize::Zeroizing::new(read("--tls-key", key)?),
        })
    }
}

/// Default `--ingest-rate`: what Bits states the real KFR manages (onboarding guide D-3).
pub const DEFAULT_INGEST_RATE: u64 = 250;

/// The environment whose identifier rules the fake KFR applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MockEnv {
    Test,
    Prod,
}

impl MockEnv {
    /// The same policy `crate::ids` applies for that environment (kfr-notes §7).
    pub fn id_policy(self) -> crate::ids::IdPolicy {
        match self {
            MockEnv::Test => crate::ids::IdPolicy::test(),
            MockEnv::Prod => crate::ids::IdPolicy::prod(),
        }
    }
}

/// Fault switches of the KFR half; changeable at runtime through `POST /_mock/faults`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KfrFaults {
    /// Probability of a 500 KFR-007.
    pub error_rate: f64,
    /// Probability of a 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_rate: f64,
    pub retry_after_secs: u64,
    /// Probability that a request is held open and never answered.
    pub timeout_rate: f64,
    /// Delay before every answer.
    pub latency_ms: u64,
}

impl KfrFaults {
    /// No faults at all.
    pub const NONE: KfrFaults = KfrFaults {
        error_rate: 0.0,
        rate_limit_rate: 0.0,
        retry_after_secs: 1,
        timeout_rate: 0.0,
        latency_ms: 0,
    };

    /// Every rate within 0..=1.
    pub(crate) fn check(&self) -> Result<(), UsageError> {
        check_rate("error_rate", self.error_rate)?;
        check_rate("rate_limit_rate", self.rate_limit_rate)?;
        check_rate("timeout_rate", self.timeout_rate)
    }
}

/// A client registered with the fake Maskinporten.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MockClient {
    /// Scopes the client may request.
    pub scopes: Vec<String>,
    /// When set, the business certificate's org.nr must equal it (MP-122).
    pub owner_org: Option<String>,
    /// How the client proves itself. Digdir fixes this per client: a business-certificate client
    /// sends `x5c`, a key client `kid`, and the other header is refused.
    pub keys: ClientKeys,
    /// `expires_in` of this client's tokens (1..=7200 s); `None`: the server's default. The API
    /// owner sets it per scope at Digdir, so a client must read it, never assume it.
    pub expires_in: Option<u64>,
}

/// The key mode of a registered client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientKeys {
    /// A business-certificate (`x5c`) client: the default, and what KFR's onboarding uses.
    #[default]
    Certificate,
    /// A client with pre-registered keys: `kid` → DER of a certificate holding the public key.
    /// The certificate is only a key container here; the registration is what is trusted.
    Keys(BTreeMap<String, Vec<u8>>),
}

/// Longest token lifetime a client may be given (Digdir's self-service allows up to two hours).
pub const MAX_EXPIRES_IN_SECS: u64 = 7200;

/// A delegation as Altinn would hold it: `consumer` lets `supplier` use `scope` for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delegation {
    pub consumer: String,
    pub supplier: String,
    pub scope: String,
}

impl Delegation {
    /// Parses `CONSUMER=SUPPLIER[:SCOPE]` (the `--delegation` flag and `POST /_mock/faults`).
    pub fn parse(spec: &str) -> Result<Self, UsageError> {
        let bad = |why: &str| {
            UsageError::new(format!("--delegation {spec:?}: {why}"))
                .with_hint("expected CONSUMER=SUPPLIER[:SCOPE], e.g. 910000000=916960190:bits:kundeforhold.write")
        };
        let (consumer, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let (supplier, scope) = match rest.split_once(':') {
            Some((supplier, scope)) => (supplier, scope),
            None => (rest, DEFAULT_SCOPE),
        };
        if !is_org_number(consumer) || !is_org_number(supplier) {
            return Err(bad("consumer and supplier must be 9-digit org.nrs"));
        }
        if consumer == supplier {
            return Err(bad("an organisation cannot delegate to itself"));
        }
        if scope.is_empty() || scope.contains(char::is_whitespace) {
            return Err(bad("the scope must be non-empty without spaces"));
        }
        Ok(Self {
            consumer: consumer.to_string(),
            supplier: supplier.to_string(),
            scope: scope.to_string(),
        })
    }
}

/// Everything [`super::MockServer::start`] needs.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// DER certificates of the CAs that issue acceptable business certificates.
    pub trusted_ca_der: Vec<Vec<u8>>,
    /// Issuer identifier; `None` means `http://<bound addr>/maskinporten/`.
    pub issuer: Option<String>,
    /// Seconds added to the real clock to get the mock's clock.
    pub clock_skew_secs: i64,
    /// `expires_in` of issued access tokens.
    pub token_lifetime_secs: u64,
    /// Delay before every token answer.
    pub token_latency_ms: u64,
    /// Probability of a 500 from the token endpoint.
    pub token_fail_rate: f64,
    /// The first N token requests (since start or reset) answer 503.
    pub token_fail_first: u32,
    /// `None`: any client id exists and is granted [`DEFAULT_SCOPE`].
    pub clients: Option<BTreeMap<String, MockClient>>,
    /// Delegations the fake Maskinporten knows (`consumer_org` needs one); changeable at runtime.
    pub delegations: Vec<Delegation>,
    /// Scope → organisations the API owner granted it to. A scope not named here is open to
    /// every organisation (the default, so the mock works out of the box).
    pub scope_access: BTreeMap<String, Vec<String>>,
    /// Identifier policy of the fake KFR.
    pub env: MockEnv,
    /// Relationships ingested per second from accepted batches (at least 1).
    pub ingest_rate: u64,
    /// Largest accepted batch body in bytes.
    pub max_batch_bytes: usize,
    /// Fault switches of the KFR half at start.
    pub kfr_faults: KfrFaults,
    /// An outage of this many seconds starting when the server starts (0: none).
    pub outage_secs: u64,
    /// Deliberate defects (`--quirk`); empty for a faithful mock.
    pub quirks: super::Quirks,
    /// Whether a non-loopback listen address is allowed (`--allow-remote`).
    pub allow_remote: bool,
    /// Serve HTTPS with this certificate (`--tls-cert`/`--tls-key`); plain HTTP when `None`.
    pub tls: Option<MockTls>,
}

impl MockConfig {
    /// A configuration trusting the given CAs, everything else at its default.
    pub fn new(trusted_ca_der: Vec<Vec<u8>>) -> Self {
        Self {
            trusted_ca_der,
            issuer: None,
            clock_skew_secs: 0,
            token_lifetime_secs: 120,
            token_latency_ms: 0,
            token_fail_rate: 0.0,
            token_fail_first: 0,
            clients: None,
            delegations: Vec::new(),
            scope_access: BTreeMap::new(),
            env: MockEnv::Test,
            ingest_rate: DEFAULT_INGEST_RATE,
            max_batch_bytes: crate::kfr::batch::DEFAULT_MAX_BYTES,
            kfr_faults: KfrFaults::NONE,
            outage_secs: 0,
            quirks: super::Quirks::new(),
            allow_remote: false,
            tls: None,
        }
    }

    /// Resolves the flags: reads the `--trust` PEM files and checks every value.
    pub fn from_flags(flags: &MockFlags) -> anyhow::Result<Self> {
        check_listen(flags.listen, flags.allow_remote)?;
        let mut trusted = Vec::new();
        for path in &flags.trust {
            trusted.extend(read_trust_pem(path)?);
        }
        if let Some(issuer) = &flags.issuer {
            check_issuer(issuer)?;
        }
        check_fail_rate(flags.token_fail_rate)?;
        if flags.token_lifetime_secs == 0 {
            return Err(UsageError::new("--token-lifetime-secs must be at least 1").into());
        }
        let clients = if flags.clients.is_empty() {
            None
        } else {
            let mut map = BTreeMap::new();
            for spec in &flags.clients {
                let (id, client) = parse_client(spec)?;
                if map.insert(id.clone(), client).is_some() {
                    return Err(UsageError::new(format!("--client {id} is given more than once")).into());
                }
            }
            Some(map)
        };
        let delegations = flags
            .delegations
            .iter()
            .map(|d| Delegation::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let mut scope_access = BTreeMap::new();
        for spec in &flags.scope_access {
            let (scope, orgs) = parse_scope_access(spec)?;
            scope_access.entry(scope).or_insert_with(Vec::new).extend(orgs);
        }
        let kfr_faults = KfrFaults {
            error_rate: flags.error_rate,
            rate_limit_rate: flags.rate_limit_rate,
            retry_after_secs: flags.retry_after_secs,
            timeout_rate: flags.timeout_rate,
            latency_ms: flags.latency_ms,
        };
        kfr_faults.check()?;
        check_ingest_rate(flags.ingest_rate)?;
        if flags.max_batch_bytes == 0 {
            return Err(UsageError::new("--max-batch-bytes must be at least 1").into());
        }
        Ok(Self {
            trusted_ca_der: trusted,
            issuer: flags.issuer.clone(),
            clock_skew_secs: flags.clock_skew_secs,
            token_lifetime_secs: flags.token_lifetime_secs,
            token_latency_ms: flags.token_latency_ms,
            token_fail_rate: flags.token_fail_rate,
            token_fail_first: flags.token_fail_first,
            clients,
            delegations,
            scope_access,
            env: flags.env,
            ingest_rate: flags.ingest_rate,
            max_batch_bytes: flags.max_batch_bytes,
            kfr_faults,
            outage_secs: flags.outage_secs,
            quirks: flags.quirks.iter().copied().collect(),
            allow_remote: flags.allow_remote,
            tls: match (&flags.tls_cert, &flags.tls_key) {
                (Some(cert), Some(key)) => Some(MockTls::from_files(cert, key)?),
                _ => None,
            },
        })
    }
}

/// Every certificate in a PEM file, each checked to be usable as a trust anchor.
fn read_trust_pem(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|e| {
        UsageError::new(format!("cannot read --trust {}: {e}", path.display()))
            .with_hint("pass the CA certificate PEM written by `kfr certs local` (ca.pem)")
    })?;
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let der = item.map_err(|e| UsageError::new(format!("--trust {}: not valid PEM: {e}", path.display())))?;
        webpki::anchor_from_trusted_cert(&der).map_err(|e| {
            UsageError::new(format!(
                "--trust {}: a certificate cannot be used as a CA: {e:?}",
                path.display()
            ))
        })?;
        out.push(der.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(UsageError::new(format!("--trust {}: no CERTIFICATE block found", path.display())).into());
    }
    Ok(out)
}

/// The mock accepts any client id without `--client` and its admin surface (`/_mock/*`) shows
/// full identifiers and resets state, so it listens on loopback only unless told otherwise.
pub(crate) fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), UsageError> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(
        UsageError::new(format!("--listen {addr} is not a loopback address"))
            .with_hint("listen on 127.0.0.1 or [::1]; pass --allow-remote only on an isolated test network (the mock accepts any client and its admin surface shows full identifiers)"),
    )
}

/// The issuer is compared byte for byte with `aud` (kfr-notes §9), so it must look like Digdir's:
/// an absolute http(s) URL ending in `/`.
pub(crate) fn check_issuer(issuer: &str) -> Result<(), UsageError> {
    let parsed = url::Url::parse(issuer).map_err(|e| UsageError::new(format!("--issuer {issuer:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || !issuer.ends_with('/') {
        return Err(
            UsageError::new(format!("--issuer {issuer:?} must be an http(s) URL ending in '/'"))
                .with_hint("Maskinporten issuers look like https://test.maskinporten.no/ (trailing slash included)"),
        );
    }
    Ok(())
}

pub(crate) fn check_fail_rate(rate: f64) -> Result<(), UsageError> {
    check_rate("token_fail_rate", rate)
}

/// A probability: 0..=1 (NaN refused). `name` is the field name; the flag is the same with `-`.
pub(crate) fn check_rate(name: &str, rate: f64) -> Result<(), UsageError> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(UsageError::new(format!(
            "--{} {rate} must be between 0 and 1",
            name.replace('_', "-")
        )));
    }
    Ok(())
}

/// Zero would stall every batch forever; the ceiling keeps the per-tick arithmetic far from
/// overflow while still allowing benchmark-speed ingestion.
pub(crate) fn check_ingest_rate(rate: u64) -> Result<(), UsageError> {
    if !(1..=100_000_000).contains(&rate) {
        return Err(UsageError::new(format!(
            "--ingest-rate {rate} must be between 1 and 100000000 relationships per second"
        )));
    }
    Ok(())
}

/// Parses `ID=SCOPE[,SCOPE...][@ORGNR]`.
fn parse_client(spec: &str) -> Result<(String, MockClient), UsageError> {
    let bad = |why: &str| {
        UsageError::new(format!("--client {spec:?}: {why}"))
            .with_hint("expected ID=SCOPE[,SCOPE...][@ORGNR], e.g. my-client=bits:kundeforhold.write@910000000")
    };
    let (id, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
    let id = id.trim();
    if id.is_empty() {
        return Err(bad("empty client id"));
    }
    let (scopes, owner_org) = match rest.rsplit_once('@') {
        Some((scopes, org)) => {
            if !is_org_number(org) {
                return Err(bad("the owner org.nr must be 9 digits"));
            }
            (scopes, Some(org.to_string()))
        }
        None => (rest, None),
    };
    let scopes: Vec<String> = scopes.split(',').map(|s| s.trim().to_string()).collect();
    if scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
        return Err(bad("scopes must be non-empty and contain no spaces"));
    }
    Ok((
        id.to_string(),
        MockClient {
            scopes,
            owner_org,
            ..MockClient::default()
        },
    ))
}

/// Parses `SCOPE=ORGNR[,ORGNR...]`.
fn parse_scope_access(spec: &str) -> Result<(String, Vec<String>), UsageError> {
    let bad = |why: &str| {
        UsageError::new(format!("--scope-access {spec:?}: {why}"))
            .with_hint("expected SCOPE=ORGNR[,ORGNR...], e.g. bits:kundeforhold.write=916960190")
    };
    let (scope, orgs) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
    if scope.is_empty() || scope.contains(char::is_whitespace) {
        return Err(bad("the scope must be non-empty without spaces"));
    }
    let orgs: Vec<String> = orgs.split(',').map(str::to_string).collect();
    if !orgs.iter().all(|o| is_org_number(o)) {
        return Err(bad("organisations must be 9-digit org.nrs"));
    }
    Ok((scope.to_string(), orgs))
}

/// Nine ASCII digits: the shape of an organisasjonsnummer. The checksum is deliberately not
/// enforced here; validating identifiers is `crate::ids`' job (kfr-notes §7).
pub(crate) fn is_org_number(s: &str) -> bool {
    s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_specs_parse_with_and_without_owner() {
        let (id, c) = parse_client("abc=bits:kundeforhold.write,bits:other@910000000").unwrap();
        assert_eq!(id, "abc");
        assert_eq!(c.scopes, ["bits:kundeforhold.write", "bits:other"]);
        assert_eq!(c.owner_org.as_deref(), Some("910000000"));
        let (_, c) = parse_client("abc=s").unwrap();
        assert_eq!(c.owner_org, None);
    }

    #[test]
    fn malformed_client_specs_are_usage_errors() {
        for spec in ["abc", "=s", "abc=", "abc=s,,t", "abc=s@12345", "abc=s@91000000x"] {
            assert!(parse_client(spec).is_err(), "{spec} should be rejected");
        }
    }

    #[test]
    fn issuer_needs_scheme_and_trailing_slash() {
        assert!(check_issuer("https://test.maskinporten.no/").is_ok());
        assert!(check_issuer("https://test.maskinporten.no").is_err());
        assert!(check_issuer("ftp://x/").is_err());
        assert!(check_issuer("not a url/").is_err());
    }

    #[test]
    fn fail_rate_outside_unit_interval_is_rejected() {
        assert!(check_fail_rate(0.0).is_ok() && check_fail_rate(1.0).is_ok());
        assert!(check_fail_rate(-0.1).is_err() && check_fail_rate(1.5).is_err() && check_fail_rate(f64::NAN).is_err());
    }

    #[test]
    fn from_flags_reports_unreadable_trust_file_as_usage_error() {
        let flags = MockFlags {
            listen: "127.0.0.1:0".parse().unwrap(),
            allow_remote: false,
            trust: vec!["/nonexistent/ca.pem".into()],
            issuer: None,
            clock_skew_secs: 0,
            token_lifetime_secs: 120,
            token_latency_ms: 0,
            token_fail_rate: 0.0,
            token_fail_first: 0,
            clients: vec![],
            delegations: vec![],
            scope_access: vec![],
            env: MockEnv::Test,
            ingest_rate: 250,
            max_batch_bytes: 10_000_000,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            timeout_rate: 0.0,
            latency_ms: 0,
            outage_secs: 0,
            quirks: vec![],
            tls_cert: None,
            tls_key: None,
        };
        let err = MockConfig::from_flags(&flags).unwrap_err();
        assert!(
            err.chain()
                .any(|c| c.downcast_ref::<crate::error::UsageError>().is_some())
        );
    }
}

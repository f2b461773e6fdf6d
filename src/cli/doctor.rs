//! `kfr doctor`: one line per check (ok / warn / fail) with a hint for anything not ok. It keeps
//! going past a failed check where later checks still tell the operator something, and exits 1
//! when any check failed (warnings alone exit 0). `--json` prints the same checks as one JSON
//! object on stdout (`{"ok": …, "checks": [{"name", "verdict", "detail", "hint"}]}`), same exit
//! codes.

use crate::config::{Environment, Settings};
use crate::maskinporten::{Credential, IssuingCa, TokenClient};
use chrono::Utc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
    /// `--json`: the checks are collected and printed as one object at the end.
    json: Option<Vec<serde_json::Value>>,
    /// Where the lines go (a closed stdout ends the output, not the checks).
    out: super::printer::Printer,
}

impl Report {
    fn line(&mut self, verdict: Verdict, check: &str, detail: impl std::fmt::Display, hint: Option<String>) {
        let tag = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        self.failed |= verdict == Verdict::Fail;
        if let Some(checks) = self.json.as_mut() {
            checks.push(serde_json::json!({
                "name": check,
                "verdict": tag.trim().to_ascii_lowercase(),
                "detail": detail.to_string(),
                "hint": hint.filter(|_| verdict != Verdict::Ok),
            }));
            return;
        }
        let _ = self.out.data(format_args!("{tag}  {check:<13} {detail}"));
        if let Some(h) = hint.filter(|_| verdict != Verdict::Ok) {
            let _ = self.out.data(format_args!("      {:<13} hint: {h}", ""));
        }
    }
}

/// Days before expiry from which the certificate check warns (renewal takes time, onboarding A-3).
const EXPIRY_WARNING_DAYS: i64 = 30;

pub async fn run(settings: Settings, json: bool, out: super::printer::Printer) -> anyhow::Result<()> {
    let mut r = Report {
        failed: false,
        json: json.then(Vec::new),
        out,
    };
    let file = settings
        .config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(no file)".into());
    r.line(Verdict::Ok, "config", format!("{file}, env {}", settings.env), None);

    let missing: Vec<&str> = [
        ("org_number", settings.org_number.is_none()),
        ("client_id", settings.client_id.is_none()),
    ]
    .into_iter()
    .filter_map(|(k, m)| m.then_some(k))
    .collect();
    if !missing.is_empty() {
        r.line(
            Verdict::Fail,
            "settings",
            format!("missing {}", missing.join(", ")),
            Some("see docs/configuration.md".into()),
        );
    }

    let credential = match settings
        .require_credential()
        .map_err(anyhow::Error::from)
        .and_then(|src| Credential::from_config(src).map_err(anyhow::Error::from))
    {
        Ok(c) => {
            let i = c.info();
            r.line(
                Verdict::Ok,
                "certificate",
                format!("loaded: {} (issuer {})", i.subject, i.issuer),
                None,
            );
            Some(c)
        }
        Err(e) => {
            r.line(
                Verdict::Fail,
                "certificate",
                format!("{e:#}"),
                super::report::find_hint(&e),
            );
            None
        }
    };

    if let Some(c) = &credential {
        check_certificate(&mut r, &settings, c);
    }

    check_egress(&mut r, &settings).await;

    let client = match (&credential, settings.client_id.is_some()) {
        (Some(_), true) => super::build::token_client(&settings).ok(),
        _ => None,
    };
    match &client {
        Some(client) => check_maskinporten(&mut r, &settings, client).await,
        None => r.line(
            Verdict::Fail,
            "maskinporten",
            "not checked: the certificate or client_id is missing",
            Some("fix the lines above first".into()),
        ),
    }

    if client.is_some() {
        check_kfr(&mut r, &settings).await;
    }

    if let Some(checks) = r.json.take() {
        r.out.data(serde_json::json!({ "ok": !r.failed, "checks": checks }))?;
    }
    if r.failed {
        return Err(crate::error::Reported("kfr doctor found problems".into()).into());
    }
    Ok(())
}

fn check_certificate(r: &mut Report, settings: &Settings, c: &Credential) {
    let i = c.info();
    let now = Utc::now();
    let days_left = (i.not_after - now).num_days();
    if now < i.not_before {
        r.line(
            Verdict::Fail,
            "validity",
            format!("not valid before {}", i.not_before),
            Some("check the host clock".into()),
        );
    } else if now > i.not_after {
        r.line(
            Verdict::Fail,
            "validity",
            format!("expired {}", i.not_after.format("%Y-%m-%d")),
            Some("order a new business certificate (certs/README.md)".into()),
        );
    } else if days_left < EXPIRY_WARNING_DAYS {
        r.line(
            Verdict::Warn,
            "validity",
            format!("expires {} (in {days_left} days)", i.not_after.format("%Y-%m-%d")),
            Some("renew the business certificate now; ordering takes days (certs/README.md)".into()),
        );
    } else {
        r.line(
            Verdict::Ok,
            "validity",
            format!("until {} ({days_left} days)", i.not_after.format("%Y-%m-%d")),
            None,
        );
    }

    match i.key_usage_digital_signature {
        Some(true) => r.line(Verdict::Ok, "key usage", "digitalSignature", None),
        Some(false) => r.line(
            Verdict::Fail,
            "key usage",
            "the certificate does not allow digitalSignature",
            Some("use the signing (authentication) certificate of the pair, not the encryption one".into()),
        ),
        None => r.line(Verdict::Warn, "key usage", "no KeyUsage extension", None),
    }

    match (&i.org_number, &settings.org_number) {
        (Some(cert), Some(cfg)) if cert == cfg => r.line(Verdict::Ok, "org number", cert, None),
        (Some(cert), Some(cfg)) => r.line(
            Verdict::Fail,
            "org number",
            format!("certificate is for {cert}, org_number is {cfg}"),
            Some("use the certificate of the institution in org_number".into()),
        ),
        (None, _) => r.line(
            Verdict::Fail,
            "org number",
            "the certificate subject has no serialNumber with an organisation number",
            Some("a business certificate (virksomhetssertifikat) carries the org.nr in serialNumber".into()),
        ),
        (Some(cert), None) => r.line(
            Verdict::Warn,
            "org number",
            format!("certificate is for {cert}; org_number unset"),
            None,
        ),
    }

    check_issuing_ca(r, settings.env, i.issuer_cn.as_deref().unwrap_or(""));

    // Maskinporten refuses production certificates in test and vice versa (kfr-notes §2).
    let kind = if i.test_issuer { "test" } else { "production" };
    let (verdict, hint) = match (settings.env, i.test_issuer) {
        (Environment::Prod, true) => (
            Verdict::Fail,
            Some("env prod needs a production certificate".to_string()),
        ),
        (Environment::Test, false) => (Verdict::Fail, Some("env test needs a test certificate".to_string())),
        _ => (Verdict::Ok, None),
    };
    r.line(
        verdict,
        "environment",
        format!("{kind} certificate, env {}", settings.env),
        hint,
    );
}

/// Names the CA that issued the certificate and says whether Maskinporten trusts it in the
/// configured environment (Digdir's list of SEID 2.0 CAs per environment).
fn check_issuing_ca(r: &mut Report, env: Environment, cn: &str) {
    let named = if cn.is_empty() { "(issuer without a CN)" } else { cn };
    let (verdict, detail, hint) = match (IssuingCa::from_cn(cn), env) {
        (_, Environment::Local) => (
            Verdict::Ok,
            format!("{named}; env local trusts whatever `kfr mock --trust` names"),
            None,
        ),
        (IssuingCa::Seid2Test, Environment::Test) | (IssuingCa::Seid2Prod, Environment::Prod) => (
            Verdict::Ok,
            format!("{named}: a SEID 2.0 CA Maskinporten trusts in env {env}"),
            None,
        ),
        (IssuingCa::Seid2Test, _) | (IssuingCa::BuypassCa3 { test: true }, Environment::Prod) => (
            Verdict::Fail,
            format!("{named} is a test CA; env {env} needs a production certificate"),
            Some("use the production business certificate in env prod".into()),
        ),
        (IssuingCa::Seid2Prod, _) | (IssuingCa::BuypassCa3 { test: false }, Environment::Test) => (
            Verdict::Fail,
            format!("{named} is a production CA; env {env} needs a test certificate"),
            Some("order a test business certificate from Buypass or Commfides for env test".into()),
        ),
        (IssuingCa::BuypassCa3 { .. }, _) => (
            Verdict::Warn,
            format!("{named}: an older Buypass CA, not SEID 2.0"),
            Some("it still works; order a SEID 2.0 certificate (Buypass G2 Business) at the next renewal".into()),
        ),
        (IssuingCa::CommfidesSeid1, _) => (
            Verdict::Fail,
            format!("{named}: a Commfides SEID 1 CA, whose certificates stopped working on 31.12.2024"),
            Some("order a SEID 2.0 certificate (Commfides Legal Person - G3)".into()),
        ),
        (IssuingCa::Unknown, _) => (
            Verdict::Warn,
            format!("{named}: not a CA Maskinporten is known to trust in env {env}"),
            Some("Maskinporten accepts business certificates from Buypass and Commfides (SEID 2.0)".into()),
        ),
    };
    r.line(verdict, "issuer CA", detail, hint);
}

/// The way out to Maskinporten and KFR (issue 21 item 7): for each, the proxy the request took
/// (its password redacted) or why it went direct, and which CA verified the server: the system
/// roots or `extra_ca_bundle` (a TLS-inspecting proxy's CA is only ever in the latter).
async fn check_egress(r: &mut Report, settings: &Settings) {
    let http = super::build::http_config(settings);
    // Capitalised, as the services' names: the `kfr` check's line is the one about KFR's answer.
    for (service, url) in [
        ("Maskinporten", &settings.maskinporten_issuer),
        ("KFR", &settings.kfr_base_url),
    ] {
        let route = crate::http::egress::route(&http, url);
        r.line(Verdict::Ok, "proxy", format!("{service} {url}: {route}"), None);
        match crate::http::egress::verified_by(&http, url).await {
            Ok(check) => {
                use crate::http::egress::Trust;
                let issuer = check.issuer.as_deref().unwrap_or("an unreadable issuer");
                let detail = match &check.trust {
                    Trust::PlainHttp => format!("{service}: plain http (env local), no TLS to verify"),
                    Trust::SystemRoots => {
                        format!("{service}: certificate issued by {issuer}, verified by the system roots")
                    }
                    Trust::ExtraCaBundle(path) => format!(
                        "{service}: certificate issued by {issuer}, verified by extra_ca_bundle {}",
                        path.display()
                    ),
                    Trust::Both => format!(
                        "{service}: certificate issued by {issuer}, verified by the system roots and extra_ca_bundle together"
                    ),
                };
                r.line(Verdict::Ok, "tls", detail, None);
            }
            Err(e) => r.line(
                Verdict::Fail,
                "tls",
                format!("{service} {url}: {e}"),
                Some(
                    "check `proxy` (and NO_PROXY) and, behind a TLS-inspecting proxy, that its CA is in extra_ca_bundle"
                        .into(),
                ),
            ),
        }
    }
}

async fn check_maskinporten(r: &mut Report, settings: &Settings, client: &TokenClient) {
    match client.metadata().await {
        Ok(m) => r.line(
            Verdict::Ok,
            "discovery",
            format!("issuer {}, token endpoint {}", m.issuer, m.token_endpoint),
            None,
        ),
        Err(e) => {
            let hint = crate::error::Hinted::hint(&e);
            r.line(Verdict::Fail, "discovery", e, hint);
            return;
        }
    }
    match client.token().await {
        Ok(t) => r.line(
            Verdict::Ok,
            "token",
            format!(
                "scope {}, expires in {} s, consumer org {}",
                t.scope,
                t.expires_in.as_secs(),
                t.consumer_org.as_deref().unwrap_or("?")
            ),
            None,
        ),
        Err(e) => {
            let hint = crate::error::Hinted::hint(&e);
            r.line(Verdict::Fail, "token", e, hint);
        }
    }
    let offset = client.clock_offset_secs();
    let detail = format!("offset to Maskinporten {offset:+} s (measured from its Date header)");
    if offset == 0 {
        r.line(Verdict::Ok, "clock", detail, None);
    } else {
        r.line(
            Verdict::Warn,
            "clock",
            detail,
            Some(format!(
                "kfr compensates, but Maskinporten allows only ~10 s: synchronise this host's clock (NTP); issuer {}",
                settings.maskinporten_issuer
            )),
        );
    }
}

/// KFR itself (issue 9 item 15): an own lookup of the institution's own org.nr, one attempt. It
/// reads nothing private and changes nothing, yet proves the network path to KFR, that KFR
/// accepts the token, and that `fid` (the org.nr) is the token's institution (KFR-003 otherwise).
async fn check_kfr(r: &mut Report, settings: &Settings) {
    let client = match super::build::kfr_client(settings) {
        Ok(c) => c,
        Err(e) => {
            r.line(Verdict::Fail, "kfr", format!("{e:#}"), super::report::find_hint(&e));
            return;
        }
    };
    let org = client.config().org_number.clone();
    let id = match crate::ids::CustomerId::parse(&org, &super::build::id_policy(settings)) {
        Ok(id) => id,
        Err(e) => {
            r.line(Verdict::Fail, "kfr", format!("org_number {org}: {e}"), None);
            return;
        }
    };
    let attempt = client.lookup_once(&id, None, None, uuid::Uuid::new_v4()).await;
    let ms = attempt.latency.as_millis();
    match attempt.into_result() {
        Ok(banks) => r.line(
            Verdict::Ok,
            "kfr",
            format!(
                "own lookup of {org} at {} answered in {ms} ms ({} relationship(s) registered to it): token and fid accepted",
                settings.kfr_base_url,
                banks.len()
            ),
            None,
        ),
        Err(e) => {
            let hint = crate::error::Hinted::hint(&e);
            r.line(Verdict::Fail, "kfr", format!("own lookup of {org}: {e}"), hint);
        }
    }
}

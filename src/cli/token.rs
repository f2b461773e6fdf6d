//! `kfr token`: get an access token and show what it is good for. The token itself is printed
//! only with `--show-token`, since terminal output ends up in tickets and screenshots.

use crate::config::Settings;
use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::ExposeSecret as _;

pub async fn run(settings: Settings, args: &super::TokenArgs, p: super::printer::Printer) -> anyhow::Result<()> {
    let client = super::build::token_client(&settings)?;
    let token = client.token().await.with_context(|| {
        format!(
            "cannot get a Maskinporten token from {} for client {}",
            settings.maskinporten_issuer,
            client.config().client_id
        )
    })?;
    let expires: DateTime<Utc> = token.expires_at.into();
    let expires_at = expires.to_rfc3339_opts(SecondsFormat::Secs, true);
    let consumer = token.consumer_org.as_deref().unwrap_or("(not stated in the token)");
    if args.json {
        let mut v = serde_json::json!({
            "expires_at": expires_at,
            "expires_in": token.expires_in.as_secs(),
            "scope": token.scope,
            "consumer_org": token.consumer_org,
            "token_type": token.token_type,
            "clock_offset_secs": client.clock_offset_secs(),
        });
        if args.show_token {
            v["access_token"] = token.secret().expose_secret().into();
        }
        p.data(v)?;
    } else {
        p.data(format_args!("token obtained from {}", settings.maskinporten_issuer))?;
        p.data(format_args!(
            "  expires at    {expires_at} (in {} s)",
            token.expires_in.as_secs()
        ))?;
        p.data(format_args!("  scope         {}", token.scope))?;
        p.data(format_args!("  consumer org  {consumer}"))?;
        if args.show_token {
            p.data(format_args!("  access token  {}", token.secret().expose_secret()))?;
        }
    }
    Ok(())
}

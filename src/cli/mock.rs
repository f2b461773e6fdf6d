//! `kfr mock`: serves the bundled fake Maskinporten and fake KFR until Ctrl-C or SIGTERM.
//!
//! Logs one start line with the listen URL, the issuer and the KFR base URL; never logs tokens,
//! assertions or full person identifiers.

use crate::mock::{MockConfig, MockServer};
use anyhow::Context as _;

pub async fn run(args: &super::MockArgs, env: Option<&str>) -> anyhow::Result<()> {
    let flags = &args.mock;
    let mut cfg = MockConfig::from_flags(flags)?;
    // The global `--env` chooses the identifier rules the fake KFR applies.
    cfg.env = match env {
        None | Some("test") | Some("local") => crate::mock::MockEnv::Test,
        Some("prod") => crate::mock::MockEnv::Prod,
        Some(other) => {
            return Err(crate::error::UsageError::new(format!(
                "invalid value '{other}' for '--env': the mock imitates `test` (the default) or `prod`"
            ))
            .into());
        }
    };
    let (cfg_env, cfg_rate) = (cfg.env, cfg.ingest_rate);
    let listener = tokio::net::TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("cannot listen on {}", flags.listen))?;
    let server = MockServer::start(listener, cfg).await?;
    // On stderr unconditionally: the default log level (warn) would hide an info! line, and the
    // operator needs the URL and issuer to configure the client.
    eprintln!(
        "kfr mock: listening on {} (Maskinporten issuer {}; KFR {}; {} identifiers, ingesting {}/s); Ctrl-C to stop",
        server.base_url(),
        server.issuer(),
        server.kfr_base_url(),
        match cfg_env {
            crate::mock::MockEnv::Test => "test",
            crate::mock::MockEnv::Prod => "prod",
        },
        cfg_rate,
    );
    tracing::info!(url = %server.base_url(), issuer = %server.issuer(), kfr = %server.kfr_base_url(), "mock started");
    shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C everywhere, SIGTERM on Unix (service managers and containers send it).
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}

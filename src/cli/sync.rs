//! `kfr sync`: the long-running agent. Builds the store thread, the sources, the dispatcher and
//! the operations endpoints from the configuration, runs them until SIGTERM/SIGINT, then drains.
//!
//! Shutdown order (docs/sync.md "Running the agent"): readiness goes 503 and intake closes first
//! (a source that answered 202 has committed; one that had not yet answered answers 503), then
//! the dispatcher stops claiming, lets in-flight calls finish up to `sync.drain_secs`, and hands
//! back the rest; the process exits 0. Nothing acknowledged is lost at any point: it is in the
//! store, and the next start delivers it.

use super::SyncArgs;
use crate::config::{Settings, SourceKind};
use crate::store::{OutboxHandle, Store};
use crate::sync::dispatch::{DispatchConfig, Dispatcher};
use crate::sync::health::Health;
use crate::sync::source::http::{IngestKey, IngestOptions, IngestServer, TlsFiles};
use crate::sync::source::spool::{Spool, SpoolOptions};
use crate::sync::source::stdin::Stdin;
use crate::sync::source::{Intake, Source as _};
use anyhow::Context as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One running part of the agent, named for logs.
type Task = (String, tokio::task::JoinHandle<anyhow::Result<()>>);

pub async fn run(settings: Settings, args: &SyncArgs, p: super::printer::Printer) -> anyhow::Result<()> {
    super::install_pseudonyms(&settings)?;
    let sync = &settings.sync;
    let state = settings.require_state(args.state.as_deref())?;
    let register = super::outbox::register(&settings)?;
    let register_key = register.key();
    let client = super::build::kfr_client(&settings)?;
    let policy = super::build::id_policy(&settings);

    super::build::create_state_dir(&state)?;
    let store = Store::open(&state).with_context(|| format!("opening the state store {}", state.display()))?;
    let handle = OutboxHandle::spawn(Box::new(store)).context("starting the state store's thread")?;
    let health = Health::new();
    let prometheus = crate::sync::metrics::install()?;

    let mut config = DispatchConfig {
        rate: f64::from(args.rate.unwrap_or(sync.rate)),
        max_in_flight: args.max_in_flight.unwrap_or(sync.max_in_flight) as usize,
        retry: super::build::retry_policy(&settings),
        retention_days: sync.retention_days,
        give_up_after: sync.give_up_after,
        backdated_by_batch: sync.backdated_by_batch,
        shutdown_grace: sync.drain,
        ..DispatchConfig::default()
    };
    // Retries of the agent are bounded by time (`give_up_after`), not by count.
    config.retry.max_attempts = u32::MAX;
    if let Some(ms) = args.probe_interval_ms {
        config.probe_interval = Duration::from_millis(ms.max(1));
    }
    let grace = config.shutdown_grace;
    let dispatcher = Dispatcher::new(handle.clone(), client, register_key.clone(), config, health.clone());
    let intake = Intake::new(handle.clone(), register_key, health.clone(), policy).with_waker(dispatcher.waker());

    let cancel = CancellationToken::new();
    let mut tasks: Vec<Task> = vec![];

    // The operations endpoints come up first, so a probe sees the agent from its first moment.
    let metrics_listen = args.metrics_listen.or(sync.metrics_listen);
    if let Some(addr) = metrics_listen {
        let ops = crate::sync::ops_server::OpsServer::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(address = %ops.local_addr(), "metrics and health on http://{}/metrics", ops.local_addr());
        p.message(format!(
            "kfr sync: metrics and health on http://{}/ (metrics, livez, readyz)",
            ops.local_addr()
        ));
        let (h, c, p) = (health.clone(), cancel.clone(), prometheus.clone());
        tasks.push((
            "metrics".into(),
            tokio::spawn(async move { ops.run(p, h, c).await.map_err(anyhow::Error::from) }),
        ));
    }

    // Sources: those configured in [[sync.sources]]; with none, the HTTP ingest endpoint.
    let mut sources = sync.sources.clone();
    if sources.is_empty() || args.stdin {
        if sources.is_empty() {
            sources.push(crate::config::SourceSettings {
                name: "http".into(),
                kind: SourceKind::Http,
            });
        }
        if args.stdin {
            sources.push(crate::config::SourceSettings {
                name: "stdin".into(),
                kind: SourceKind::Stdin,
            });
        }
    }
    for s in &sources {
        let name = s.name.clone();
        let c = cancel.clone();
        let task = match &s.kind {
            SourceKind::Http => {
                let key_file = args.ingest_key_file.clone().or_else(|| sync.ingest_key_file.clone()).ok_or_else(|| {
                    crate::error::UsageError::new("the HTTP source needs a bearer key: --ingest-key-file or sync.ingest_key_file")
                        .with_hint("write a long random key to a file only the agent's user can read (chmod 600), and give the core system the same key")
                })?;
                let key = IngestKey::from_file(&key_file)?;
                let listen = args.listen.unwrap_or(sync.listen);
                let mut opts = IngestOptions::new(listen, key);
                opts.name = name.clone();
                opts.allow_plain_http = args.allow_plain_http || sync.allow_plain_http;
                let cert = args.tls_cert.clone().or_else(|| sync.tls_cert.clone());
                let key = args.tls_key.clone().or_else(|| sync.tls_key.clone());
                opts.tls = match (cert, key) {
                    (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                    (None, None) => None,
                    _ => {
                        return Err(crate::error::UsageError::new(
                            "TLS for the ingest endpoint needs both a certificate and its key (--tls-cert and --tls-key)",
                        )
                        .into());
                    }
                };
                let bound = IngestServer::bind(opts, intake.clone())
                    .await
                    .with_context(|| format!("cannot start the HTTP source on {listen}"))?;
                let scheme = if bound.is_tls() { "https" } else { "http" };
                p.message(format!(
                    "kfr sync: taking events on {scheme}://{}/events",
                    bound.local_addr()
                ));
                tokio::spawn(async move { bound.run(c).await.map(|_| ()).map_err(anyhow::Error::from) })
            }
            SourceKind::Spool { dir } => {
                let spool = Spool::new(SpoolOptions::new(dir.clone(), name.clone()), intake.clone())?;
                p.message(format!(
                    "kfr sync: taking events from the spool directory {}",
                    dir.display()
                ));
                tokio::spawn(async move { Box::new(spool).run(c).await.map(|_| ()).map_err(anyhow::Error::from) })
            }
            SourceKind::Stdin => {
                let stdin = Stdin::stdin(intake.clone());
                p.message("kfr sync: taking NDJSON events on standard input");
                tokio::spawn(async move { Box::new(stdin).run(c).await.map(|_| ()).map_err(anyhow::Error::from) })
            }
        };
        tasks.push((name, task));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let delivering = tokio::spawn(dispatcher.run(stop_rx));
    crate::sync::metrics::set_ready(true);
    p.message(format!(
        "kfr sync: delivering to {} for {} with store {}",
        register.base_url,
        register.org_number,
        state.display()
    ));

    let signal = wait_for_signal().await?;
    tracing::info!(signal, "shutting down: intake closed, draining in-flight calls");
    p.message(format!(
        "kfr sync: {signal}: intake closed, draining (up to {} s)",
        grace.as_secs()
    ));
    health.set_draining();
    crate::sync::metrics::set_ready(false);
    cancel.cancel();
    for (name, t) in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(part = %name, error = %format!("{e:#}"), "stopped with an error"),
            Ok(Err(e)) => tracing::warn!(part = %name, error = %e, "stopped abnormally"),
            Err(_) => tracing::warn!(part = %name, "did not stop in time"),
        }
    }
    let _ = stop_tx.send(true);
    let summary = delivering
        .await
        .context("the dispatcher stopped abnormally")?
        .context("the dispatcher stopped")?;
    let status = handle.status(Some(super::outbox::register(&settings)?.key())).await?;
    p.message(format!(
        "kfr sync: stopped; delivered {} this run; {} unfinished in the outbox (delivered by the next start)",
        summary.delivered,
        status.pending + status.in_flight + status.accepted
    ));
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn wait_for_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            r = tokio::signal::ctrl_c() => { r.context("cannot listen for SIGINT")?; Ok("SIGINT") }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("cannot listen for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

//! `kfr sync`: the long-running agent. Builds the store thread, the sources, the dispatcher and
//! the operations endpoints from the configuration, runs them until SIGTERM/SIGINT or until one of
//! them fails, then drains.
//!
//! Shutdown order (docs/sync.md "Running the agent"): readiness goes 503 and intake closes first
//! (a source that answered 202 has committed; one that had not yet answered answers 503), then
//! the dispatcher stops claiming, lets in-flight calls finish up to `sync.drain_secs`, and hands
//! back the rest. Nothing acknowledged is lost at any point: it is in the store, and the next
//! start delivers it.
//!
//! After a signal the process exits 0. When a part stops by itself instead (the dispatcher, a
//! source, the operations endpoint: an error, a panic, or simply ending when it should run until
//! stopped), the agent drains the same way and exits 1 with an error naming the part
//! ([`PartFailed`]). An agent missing a part would go on answering `/livez` and taking events while
//! delivering nothing; exiting lets its supervisor restart it, which is safe because the next
//! start's `recover` puts what was in flight back in line. The one part that may end by itself
//! is the stdin source at end of input: that ends the source, not the agent.

use super::SyncArgs;
use crate::config::{Settings, SourceKind};
use crate::store::{Lease, Store};
use crate::sync::dispatch::{DispatchConfig, DispatchError, DispatchSummary, Dispatcher};
use crate::sync::health::Health;
use crate::sync::source::http::{IngestKey, IngestOptions, IngestServer, TlsFiles};
use crate::sync::source::pg_outbox::{PgOutbox, PgOutboxOptions};
use crate::sync::source::spool::{Spool, SpoolOptions};
use crate::sync::source::stdin::Stdin;
use crate::sync::source::{Intake, Source as _};
use anyhow::Context as _;
use std::future::Future;
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

/// How the dispatcher is named when it fails.
const DISPATCHER: &str = "the dispatcher (delivery to KFR)";

/// One running part of the agent besides the dispatcher: a source or the operations endpoint.
struct Part {
    /// How messages name it, e.g. "the source `core`".
    name: String,
    /// Whether it may end by itself with nothing wrong: the stdin source at end of input
    /// (docs/sync.md "Standard input"). Every other part runs until it is stopped.
    finite: bool,
    /// Stopped only after the drain (the operations endpoint): a probe must see `/readyz` 503
    /// `draining` and `/livez` up for as long as the agent drains, not a refused connection
    /// (docs/sync.md "Shutdown and drain", step 1).
    last: bool,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A part of the agent stopped by itself, so the agent stopped too (exit code 1): an agent
/// without it would look alive and take events in while delivering nothing.
#[derive(Debug, thiserror::Error)]
#[error("kfr sync stopped: {part} failed")]
pub struct PartFailed {
    part: String,
    #[source]
    cause: anyhow::Error,
}

impl PartFailed {
    fn new(part: impl Into<String>, cause: anyhow::Error) -> Self {
        PartFailed {
            part: part.into(),
            cause,
        }
    }

    /// A task that panicked or was cancelled; the panic text is masked (it may quote a value).
    fn joined(part: impl Into<String>, e: JoinError) -> Self {
        Self::new(part, anyhow::anyhow!(crate::ids::scrub(&e.to_string())))
    }
}

impl crate::error::Hinted for PartFailed {
    fn hint(&self) -> Option<String> {
        None
    }
    /// The cause's own hint says more (a store's, an ingest error's) and wins; this one is shown
    /// when it has none.
    fn fallback_hint(&self) -> Option<String> {
        Some(
            "see the log above for what happened; the agent exits so that its supervisor (systemd Restart=on-failure, Kubernetes) starts it again, which is safe: what was in flight is put back in line at start".into(),
        )
    }
}

/// What ended the wait of [`first_ending`].
enum Ending<T> {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// The dispatcher ended (it is never asked to before this), with its task's result.
    Dispatcher(Result<T, JoinError>),
    /// A part failed, or ended when it should run until stopped; it is removed from the list.
    Part(PartFailed),
}

/// Waits for the first of: `signal`, the dispatcher ending, a part failing. A finite part that
/// ends cleanly is logged and dropped from `parts`, and the wait goes on. Nothing is stopped
/// here; the caller drains.
async fn first_ending<T>(
    signal: impl Future<Output = anyhow::Result<&'static str>>,
    parts: &mut Vec<Part>,
    dispatcher: &mut JoinHandle<T>,
) -> Ending<T> {
    let mut signal = std::pin::pin!(signal);
    loop {
        let part_ended = async {
            if parts.is_empty() {
                return std::future::pending().await;
            }
            let (result, i, _) = futures::future::select_all(parts.iter_mut().map(|p| &mut p.task)).await;
            (i, result)
        };
        let (i, result) = tokio::select! {
            s = &mut signal => return match s {
                Ok(name) => Ending::Signal(name),
                Err(e) => Ending::Part(PartFailed::new("the signal handler", e)),
            },
            d = &mut *dispatcher => return Ending::Dispatcher(d),
            ended = part_ended => ended,
        };
        let part = parts.remove(i);
        return Ending::Part(match result {
            Ok(Ok(())) if part.finite => {
                tracing::info!(part = %part.name, "finished; the agent goes on");
                continue;
            }
            Ok(Ok(())) => PartFailed::new(part.name, anyhow::anyhow!("it stopped without being asked to")),
            Ok(Err(e)) => PartFailed::new(part.name, e),
            Err(e) => PartFailed::joined(part.name, e),
        });
    }
}

/// The dispatcher's end as the agent sees it: its summary, or the failure to report. `asked`:
/// whether the agent had told it to stop (ending without that is a failure too).
fn dispatcher_outcome(
    result: Result<Result<DispatchSummary, DispatchError>, JoinError>,
    asked: bool,
) -> Result<DispatchSummary, PartFailed> {
    match result {
        Ok(Ok(summary)) if asked => Ok(summary),
        Ok(Ok(_)) => Err(PartFailed::new(
            DISPATCHER,
            anyhow::anyhow!("it stopped without being asked to"),
        )),
        Ok(Err(e)) => Err(PartFailed::new(DISPATCHER, e.into())),
        Err(e) => Err(PartFailed::joined(DISPATCHER, e)),
    }
}

pub async fn run(settings: Settings, args: &SyncArgs, printer: super::printer::Printer) -> anyhow::Result<()> {
    let signals = StopSignals::install()?;
    let p = Status {
        printer,
        json: crate::telemetry::json(),
    };
    super::install_pseudonyms(&settings)?;
    let sync = &settings.sync;
    let register = super::outbox::register(&settings)?;
    let register_key = register.key();
    let client = super::build::kfr_client(&settings)?;
    let policy = super::build::id_policy(&settings);

    let (handle, location) = super::build::writable_store(&settings, args.state.as_deref())?;
    let health = Health::new();
    // Installed before anything counts, so no early figure is lost.
    crate::sync::metrics::install()?;

    let config = dispatch_config(&settings, args);
    let grace = config.shutdown_grace;
    let config_lease_ttl = config.lease_ttl;
    let dispatcher = Dispatcher::new(handle.clone(), client, register_key.clone(), config, health.clone());
    let intake = Intake::new(handle.clone(), register_key.clone(), health.clone(), policy)
        .with_waker(dispatcher.waker())
        .with_flood_limit(settings.sync.max_events_per_customer);

    let cancel = CancellationToken::new();
    // The operations endpoint's own: cancelled after the drain, not with the sources.
    let ops_cancel = CancellationToken::new();
    let mut parts: Vec<Part> = vec![];

    // The operations endpoints come up first, so a probe sees the agent from its first moment.
    let metrics_listen = args.metrics_listen.or(sync.metrics_listen);
    if let Some(addr) = metrics_listen {
        parts.push(ops_endpoint(addr, &health, &ops_cancel, &p).await?);
    }

    // Sources: those configured in [[sync.sources]]; with none, the HTTP ingest endpoint.
    let sources = sources(&settings, args);
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
                let stdin = Stdin::stdin(intake.clone()).context("cannot start reading standard input")?;
                p.message("kfr sync: taking NDJSON events on standard input");
                tokio::spawn(async move { Box::new(stdin).run(c).await.map(|_| ()).map_err(anyhow::Error::from) })
            }
            SourceKind::PgOutbox { db, table } => {
                let target = super::build::pg_target(db);
                let opts = PgOutboxOptions::new(name.clone(), target.clone(), table.clone());
                let source = PgOutbox::new(opts, intake.clone())?;
                p.message(format!(
                    "kfr sync: taking events from the outbox table {table} in {}",
                    target.describe()
                ));
                // Its own error, not the Source trait's: its hint reaches the operator.
                tokio::spawn(async move { source.run(c).await.map(|_| ()).map_err(anyhow::Error::from) })
            }
        };
        parts.push(Part {
            name: format!("the source `{name}`"),
            finite: matches!(s.kind, SourceKind::Stdin),
            last: false,
            task,
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lease_ttl = chrono::Duration::from_std(config_lease_ttl).unwrap_or(chrono::Duration::seconds(30));
    let holder = holder_name();
    // The heartbeat `kfr status` reads, and the certificates' expiry (issue 21).
    let watch_stop = CancellationToken::new();
    let watch = super::agent_watch::Watch {
        store: handle.clone(),
        register: register_key.clone(),
        holder: holder.clone(),
        health: health.clone(),
        certs: super::certwatch::CertWatch::from_settings(
            &settings,
            args.tls_cert.clone().or_else(|| sync.tls_cert.clone()),
        ),
    }
    .spawn(watch_stop.clone());
    let mut delivering = spawn_delivery(
        dispatcher,
        (handle.clone(), register_key.clone()),
        holder,
        lease_ttl,
        health.clone(),
        stop_rx.clone(),
    );
    // Said before the lease is known; a standby says so in its log and on /readyz.
    p.message(format!(
        "kfr sync: delivering to {} for {} with store {location}",
        register.base_url, register.org_number,
    ));

    // Until a signal, or until a part stops by itself: either way the same drain follows.
    // `dispatcher_ended`: the wait saw the dispatcher end (its handle must not be awaited again).
    let (mut failure, dispatcher_ended) = wait_for_ending(signals, &mut parts, &mut delivering, grace, &p).await;
    health.set_draining();
    crate::sync::metrics::set_ready(false);
    cancel.cancel();
    let (last, parts): (Vec<Part>, Vec<Part>) = parts.into_iter().partition(|p| p.last);
    join_parts(parts).await;
    let _ = stop_tx.send(true);
    let summary = dispatcher_summary(delivering, dispatcher_ended, &mut failure).await;
    report_stop(&p, &handle, register_key, summary, failure.is_some()).await?;
    watch_stop.cancel();
    let _ = watch.await;
    ops_cancel.cancel();
    join_parts(last).await;
    match failure {
        Some(f) => Err(f.into()),
        None => Ok(()),
    }
}

/// The dispatcher's settings: the configuration's `[sync]`, overridden by flags.
fn dispatch_config(settings: &Settings, args: &SyncArgs) -> DispatchConfig {
    let sync = &settings.sync;
    let mut config = DispatchConfig {
        rate: f64::from(args.rate.unwrap_or(sync.rate)),
        max_in_flight: args.max_in_flight.unwrap_or(sync.max_in_flight) as usize,
        retry: super::build::retry_policy(settings),
        retention_days: sync.retention_days,
        history_retention_days: sync.history_retention_days,
        give_up_after: sync.give_up_after,
        in_doubt: sync.in_doubt,
        checks_per_hour: sync.register_checks_per_hour,
        backdated_by_batch: sync.backdated_by_batch,
        shutdown_grace: sync.drain,
        ..DispatchConfig::default()
    };
    // Retries of the agent are bounded by time (`give_up_after`), not by count.
    config.retry.max_attempts = u32::MAX;
    // Claims outlast the longest attempt, with room for a wait in the rate gate (issue 18).
    config.request_budget = super::build::request_budget(settings);
    config.claim_ttl = config.request_budget * 3;
    if let Some(ms) = args.probe_interval_ms {
        config.probe_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(secs) = args.lease_secs {
        config.lease_ttl = Duration::from_secs(secs);
        config.lease_renew = Duration::from_secs(secs) / 6;
    }
    config
}

/// `/metrics`, `/livez` and `/readyz` on `addr`, until `ops_cancel`.
async fn ops_endpoint(
    addr: std::net::SocketAddr,
    health: &Health,
    ops_cancel: &CancellationToken,
    p: &Status,
) -> anyhow::Result<Part> {
    let ops = crate::sync::ops_server::OpsServer::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!(address = %ops.local_addr(), "metrics and health on http://{}/metrics", ops.local_addr());
    p.message(format!(
        "kfr sync: metrics and health on http://{}/ (metrics, livez, readyz)",
        ops.local_addr()
    ));
    let (h, c, prometheus) = (health.clone(), ops_cancel.clone(), crate::sync::metrics::install()?);
    Ok(Part {
        name: "the metrics and health endpoint".into(),
        finite: false,
        last: true,
        task: tokio::spawn(async move { ops.run(prometheus, h, c).await.map_err(anyhow::Error::from) }),
    })
}

/// The sources to run: those configured in `[[sync.sources]]`; with none, the HTTP ingest
/// endpoint; with `--stdin`, standard input besides.
fn sources(settings: &Settings, args: &SyncArgs) -> Vec<crate::config::SourceSettings> {
    let mut sources = settings.sync.sources.clone();
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
    sources
}

/// Says how the agent stopped: what it delivered and what is left in the outbox. `failed`: a
/// failure is reported after this, and a status that cannot be read is not worth hiding it.
async fn report_stop(
    p: &Status,
    handle: &Store,
    register_key: String,
    summary: Option<DispatchSummary>,
    failed: bool,
) -> anyhow::Result<()> {
    let unfinished = match handle.status(Some(register_key)).await {
        Ok(st) => Some(st.pending + st.in_flight + st.accepted),
        // The failure reported below says why; the count is not worth hiding it.
        Err(_) if failed => None,
        Err(e) => return Err(e).context("reading the outbox status after the drain"),
    };
    match (summary, unfinished) {
        (Some(summary), Some(n)) => p.message(format!(
            "kfr sync: stopped; delivered {} this run; {n} unfinished in the outbox (delivered by the next start)",
            summary.delivered,
        )),
        (Some(summary), None) => p.message(format!("kfr sync: stopped; delivered {} this run", summary.delivered)),
        (None, _) => p.message("kfr sync: stopped"),
    }
    Ok(())
}

/// Waits for a stop signal or for a part of the agent to end, and says which: the failure to
/// report, if any, and whether it was the dispatcher that ended.
async fn wait_for_ending(
    signals: StopSignals,
    parts: &mut Vec<Part>,
    delivering: &mut JoinHandle<Result<DispatchSummary, DispatchError>>,
    grace: Duration,
    p: &Status,
) -> (Option<PartFailed>, bool) {
    let mut failure: Option<PartFailed> = None;
    let mut dispatcher_ended = false;
    match first_ending(signals.wait(), parts, delivering).await {
        Ending::Signal(signal) => {
            tracing::info!(signal, "shutting down: intake closed, draining in-flight calls");
            p.message(format!(
                "kfr sync: {signal}: intake closed, draining (up to {} s)",
                grace.as_secs()
            ));
        }
        Ending::Dispatcher(result) => {
            dispatcher_ended = true;
            failure = dispatcher_outcome(result, false).err();
        }
        Ending::Part(f) => failure = Some(f),
    }
    if let Some(f) = &failure {
        let cause = format!("{:#}", f.cause);
        tracing::error!(part = %f.part, error = %cause, "a part of the agent failed: intake closed, draining, then exiting");
        p.message(format!(
            "kfr sync: {} failed: intake closed, draining (up to {} s), then exiting",
            f.part,
            grace.as_secs()
        ));
    }
    (failure, dispatcher_ended)
}

/// The delivery task: waits for the lease (standing by meanwhile), delivers under it, and
/// stands by again when deposed, until `stop`.
fn spawn_delivery(
    dispatcher: Dispatcher,
    (store, delivery_register): (Store, String),
    holder: String,
    lease_ttl: chrono::Duration,
    standby_health: Health,
    stop: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<Result<DispatchSummary, DispatchError>> {
    tokio::spawn(async move {
        loop {
            let lease = lease_or_stop(
                &store,
                &delivery_register,
                &holder,
                lease_ttl,
                &standby_health,
                stop.clone(),
            );
            let Some(lease) = lease.await? else {
                return Ok(DispatchSummary::default());
            };
            match dispatcher.clone().run(stop.clone(), lease).await {
                // Deposed (another agent took the lease over while this one was frozen or cut
                // off from the store): it delivers nothing more and stands by again, taking
                // events into the shared outbox, until it may lead once more.
                Err(DispatchError::Store(crate::store::StoreError::Fenced { .. })) if !*stop.borrow() => {
                    tracing::warn!("deposed: another agent took over the delivery lease; standing by");
                    crate::sync::metrics::set_ready(false);
                }
                other => return other,
            }
        }
    })
}

/// The agent's name as the holder of the delivery lease: host, process and a random part, so
/// two agents on one host are told apart.
fn holder_name() -> String {
    format!(
        "sync:{}:{}:{}",
        hostname(),
        std::process::id(),
        &uuid::Uuid::new_v4().to_string()[..8]
    )
}

/// What the dispatcher delivered, once it has stopped; `None` if it ended earlier (its end was
/// seen already) or failed while stopping (logged; a failure that came first stays the one
/// reported).
async fn dispatcher_summary(
    delivering: JoinHandle<Result<DispatchSummary, DispatchError>>,
    dispatcher_ended: bool,
    failure: &mut Option<PartFailed>,
) -> Option<DispatchSummary> {
    if dispatcher_ended {
        None
    } else {
        match dispatcher_outcome(delivering.await, true) {
            Ok(s) => Some(s),
            Err(f) => {
                // A failure that came first stays the one reported; this one is logged.
                tracing::error!(error = %format!("{:#}", f.cause), "the dispatcher failed while stopping");
                failure.get_or_insert(f);
                None
            }
        }
    }
}

/// Waits up to 10 s for each of `parts` to stop (they have been told to), logging how each did.
async fn join_parts(parts: Vec<Part>) {
    for part in parts {
        match tokio::time::timeout(Duration::from_secs(10), part.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(part = %part.name, error = %format!("{e:#}"), "stopped with an error"),
            Ok(Err(e)) => {
                tracing::warn!(part = %part.name, error = %crate::ids::scrub(&e.to_string()), "stopped abnormally")
            }
            Err(_) => tracing::warn!(part = %part.name, "did not stop in time"),
        }
    }
}

/// The agent's own status lines on stderr ("taking events on …", "stopped; delivered …"): plain
/// lines through the printer, or, with JSON logs, info events like every other line, so that a
/// log shipper reading one JSON object a line never meets plain text.
struct Status {
    printer: super::printer::Printer,
    json: bool,
}

impl Status {
    fn message(&self, text: impl std::fmt::Display) {
        if self.json {
            tracing::info!("{text}");
        } else {
            self.printer.message(text);
        }
    }
}

/// The signals that stop the agent: SIGTERM, SIGINT and SIGHUP. SIGHUP drains like SIGTERM: its
/// default action would kill the agent mid-call (a closed terminal, `kill -HUP` expecting a
/// reload), and a drained stop loses nothing while the supervisor starts it again.
///
/// Installed when created, at the very start of the agent, so that a signal sent as soon as the
/// agent has announced itself (or while it starts) is a drained stop, never the default action.
#[cfg(unix)]
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for the first of them; returns its name.
    async fn wait(mut self) -> anyhow::Result<&'static str> {
        tokio::select! {
            _ = self.term.recv() => Ok("SIGTERM"),
            _ = self.int.recv() => Ok("SIGINT"),
            _ = self.hup.recv() => Ok("SIGHUP"),
        }
    }
}

#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals)
    }

    async fn wait(self) -> anyhow::Result<&'static str> {
        tokio::signal::ctrl_c().await.context("cannot listen for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

/// This host's name, for the lease holder's description (who delivers, seen by a standby).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// How often a standby looks whether the lease is free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Takes the register's delivery lease, standing by (`/readyz` 503 `standby`, the gauge
/// `kfr_sync_standby` 1) while another agent holds it; `None` when asked to stop first, an
/// error when the store is gone. Intake runs meanwhile: events go into the shared outbox for
/// whoever delivers.
async fn lease_or_stop(
    store: &Store,
    register: &str,
    holder: &str,
    ttl: chrono::Duration,
    health: &Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Lease>, DispatchError> {
    let mut announced = false;
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        match store
            .take_lease(register.to_string(), holder.to_string(), chrono::Utc::now(), ttl)
            .await
        {
            Ok(Some(lease)) => {
                health.set_standby(None);
                crate::sync::metrics::set_standby(false);
                crate::sync::metrics::set_ready(health.unready().is_empty());
                tracing::info!(epoch = lease.epoch, holder, "holding the delivery lease: delivering");
                return Ok(Some(lease));
            }
            Ok(None) => {
                if !announced {
                    announced = true;
                    let other = match store.lease_holder(register.to_string()).await {
                        Ok(Some(h)) => format!("{} (epoch {})", h.holder, h.epoch),
                        _ => "another kfr sync".into(),
                    };
                    tracing::warn!(holder = %other, "another agent delivers for this register: standing by, taking events into the shared outbox");
                    health.set_standby(Some(format!("{other} delivers; this agent takes over when it stops")));
                    crate::sync::metrics::set_standby(true);
                    crate::sync::metrics::set_ready(false);
                }
            }
            // No store to write to: the agent stops, as it does when delivering.
            Err(e @ (crate::store::StoreError::Lost { .. } | crate::store::StoreError::Stopped)) => {
                health.set_delivery_store_problem(Some(e.to_string()));
                return Err(e.into());
            }
            Err(e) => tracing::error!(error = %e, "could not check the delivery lease; trying again"),
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(STANDBY_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The wait for the agent's end with fake parts: which endings stop the agent, which do not.
    //! Time is tokio's paused clock, so "nothing ended" is observed without waiting.

    use super::*;

    fn part(name: &str, finite: bool, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) -> Part {
        Part {
            name: name.into(),
            finite,
            last: false,
            task: tokio::spawn(task),
        }
    }

    fn never() -> JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    async fn no_signal() -> anyhow::Result<&'static str> {
        std::future::pending().await
    }

    /// `first_ending` when it ends within an hour of paused time; `None` if nothing ended.
    async fn within_an_hour<T>(parts: &mut Vec<Part>, dispatcher: &mut JoinHandle<T>) -> Option<Ending<T>> {
        tokio::time::timeout(Duration::from_secs(3600), first_ending(no_signal(), parts, dispatcher))
            .await
            .ok()
    }

    fn failed<T>(e: Option<Ending<T>>) -> PartFailed {
        match e {
            Some(Ending::Part(f)) => f,
            _ => panic!("expected a part's failure"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_fails_ends_the_wait_naming_it_and_its_cause() {
        let mut parts = vec![
            part("the metrics and health endpoint", false, std::future::pending()),
            part("the source `core`", false, async {
                Err(anyhow::anyhow!("spool directory gone"))
            }),
        ];
        let f = failed(within_an_hour(&mut parts, &mut never()).await);
        assert_eq!(f.part, "the source `core`");
        assert_eq!(f.cause.to_string(), "spool directory gone");
        assert_eq!(
            parts.len(),
            1,
            "the failed part is taken out; the others are left to stop"
        );
        let e = anyhow::Error::new(f);
        assert_eq!(super::super::report::exit_code(&e), crate::error::Exit::Failure);
        let text = super::super::report::render(&e);
        assert!(
            text.starts_with(
                "error: kfr sync stopped: the source `core` failed\nCaused by:\n  spool directory gone\nhint: "
            ),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stdin_at_end_of_input_ends_only_itself_but_a_server_that_returns_is_a_failure() {
        let mut parts = vec![part("the source `stdin`", true, async { Ok(()) })];
        assert!(
            within_an_hour(&mut parts, &mut never()).await.is_none(),
            "the agent goes on"
        );
        assert!(parts.is_empty(), "the finished source is no longer watched");

        let mut parts = vec![part("the source `http`", false, async { Ok(()) })];
        let f = failed(within_an_hour(&mut parts, &mut never()).await);
        assert_eq!(f.part, "the source `http`");
        assert!(f.cause.to_string().contains("without being asked"), "{}", f.cause);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_part_is_a_failure_with_its_message_masked() {
        // A synthetic (Tenor) fødselsnummer in the panic text must not reach the output whole.
        let fnr = crate::sync::source::testkit::person(0);
        let text = format!("bad customer {fnr}");
        let mut parts = vec![part("the source `stdin`", true, async move { panic!("{text}") })];
        let f = failed(within_an_hour(&mut parts, &mut never()).await);
        let shown = format!("{:#}", anyhow::Error::new(f));
        assert!(shown.contains("panicked") && shown.contains("bad customer"), "{shown}");
        assert!(!shown.contains(fnr.as_str()), "{shown}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_dispatcher_stopping_by_itself_ends_the_wait_and_is_a_failure() {
        let mut parts = vec![part("the source `http`", false, std::future::pending())];
        let mut dispatcher =
            tokio::spawn(async { Err::<DispatchSummary, _>(DispatchError::Store(crate::store::StoreError::Stopped)) });
        let Some(Ending::Dispatcher(result)) = within_an_hour(&mut parts, &mut dispatcher).await else {
            panic!("the dispatcher's end ends the wait");
        };
        let f = dispatcher_outcome(result, false).unwrap_err();
        assert_eq!(f.part, DISPATCHER);
        let e = anyhow::Error::new(f);
        let text = super::super::report::render(&e);
        // The store's own hint is the more useful one, and wins over the fallback.
        assert!(text.contains("the state store's thread has stopped"), "{text}");
        assert!(
            text.contains("hint: the state store's thread stopped after an earlier error"),
            "{text}"
        );

        // Even a clean end counts when nobody asked for it; asked, it is the summary.
        let clean = || Ok(Ok(DispatchSummary::default()));
        assert!(dispatcher_outcome(clean(), false).is_err());
        assert_eq!(dispatcher_outcome(clean(), true).unwrap(), DispatchSummary::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_ends_the_wait_while_every_part_runs() {
        let mut parts = vec![part("the source `http`", false, std::future::pending())];
        let ending = first_ending(async { Ok("SIGTERM") }, &mut parts, &mut never()).await;
        assert!(matches!(ending, Ending::Signal("SIGTERM")));
        assert_eq!(parts.len(), 1);
    }
}

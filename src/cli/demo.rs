//! `kfr demo`: the whole product on one command, with nothing to set up (issue 13 item 1).
//!
//! Throwaway certificates in a private directory, the bundled mock in-process on a free loopback
//! port, then the path a bank takes: a Maskinporten token → the initial load of a generated
//! synthetic file (with `kfr load`'s live screen) → the sync agent (store, dispatcher and HTTP
//! ingest source, in-process) taking a burst of adds and removes over real HTTP while the load is
//! still unconfirmed, so the removes wait behind the delete barrier (onboarding D-3 step 4) → the
//! built-in checklist against the mock → a summary, and the register checked against what was
//! sent.
//!
//! The engines print nothing: the load's events go through the same presenter `kfr load` uses,
//! and everything else is said here, through the printer. Exit 0 only when the mock's register
//! holds exactly the relationships the load and the burst should have left (never claim success
//! you did not observe); otherwise exit 1 with the difference, identifiers masked.

use super::DemoArgs;
use super::printer::Printer;
use crate::checklist::{self, Report, RunConfig, Runner};
use crate::config::{FlagOverrides, Settings};
use crate::error::Reported;
use crate::ids::{self, CustomerId, IdKind, IdPolicy};
use crate::load::{LoadEvent, LoadOptions};
use crate::mock::{MockConfig, MockServer};
use crate::store::{LedgerState, OutboxStatus, Store};
use crate::sync::dispatch::{DispatchConfig, DispatchError, DispatchSummary, Dispatcher};
use crate::sync::health::Health;
use crate::sync::source::http::{IngestError, IngestKey, IngestOptions, IngestServer};
use crate::sync::source::{Intake, SourceReport};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The demo institution: the org.nr on Bits' own test certificate, as in the tests.
const ORG: &str = "916960190";
/// Default size of the generated export (issue 13: at least 50,000).
pub const DEFAULT_SIZE: usize = 50_000;
/// The load's ingestion should take about this long, whatever `--size`: the whole run then ends
/// in about a minute.
const LOAD_SECS: usize = 25;
/// Single calls a second the demo's agent makes to the mock (a real agent uses `sync.rate`).
const SYNC_RATE: f64 = 100.0;
/// Longest wait for the agent to finish the burst once the load is confirmed.
const SYNC_DEADLINE: Duration = Duration::from_secs(120);

/// One line of the demo's own log: said on stderr and kept in `demo.log`.
struct Log<'a> {
    printer: &'a Printer,
    file: std::sync::Mutex<std::fs::File>,
}

impl Log<'_> {
    fn say(&self, text: impl std::fmt::Display) {
        let text = text.to_string();
        self.printer.message(&text);
        self.write(&text);
    }
    fn step(&self, text: impl std::fmt::Display) {
        let text = format!("\n== {text}");
        self.printer.message(&text);
        self.write(&text);
    }
    fn write(&self, text: &str) {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            f,
            "{} {text}",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
}

/// Where the demo keeps its files: a temporary directory removed at exit, or `--keep DIR`.
enum Home {
    Temp(PathBuf),
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temp(p) | Home::Kept(p) => p,
        }
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Home::Temp(p) = self {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A new directory only its owner may enter (it will hold identifiers and keys).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

fn home(keep: Option<&Path>) -> anyhow::Result<Home> {
    let Some(dir) = keep else {
        // A fresh name, created exclusively: never an existing directory someone else prepared.
        let dir = std::env::temp_dir().join(format!("kfr-demo-{}", uuid::Uuid::new_v4().simple()));
        private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(Home::Temp(dir));
    };
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(
            crate::error::UsageError::new(format!("--keep {}: the directory is not empty", dir.display()))
                .with_hint("give a new or empty directory: the demo starts from nothing each time")
                .into(),
        );
    }
    if !dir.exists() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(Home::Kept(std::fs::canonicalize(dir)?))
}

/// `n` distinct Tenor synthetic fødselsnumre (month + 80), none of them in `exclude`: birth
/// dates walk days, months and years, individual numbers go in steps of 7, and each number is
/// kept only if the project's own identifier rules call it a synthetic fødselsnummer.
pub fn tenor_people(n: usize, exclude: &HashSet<String>) -> Vec<String> {
    let policy = IdPolicy::test();
    let mut out = Vec::with_capacity(n);
    for yy in (0..100u32).rev() {
        for month in 1..=12u32 {
            for day in 1..=28u32 {
                for ind in (0..1000u32).step_by(7) {
                    if out.len() == n {
                        return out;
                    }
                    let head = format!("{day:02}{:02}{yy:02}{ind:03}", month + 80);
                    let Some(id) = crate::ids::synthetic::complete_person(&head) else {
                        continue;
                    };
                    let synthetic =
                        CustomerId::parse(&id, &policy).is_ok_and(|c| c.kind() == IdKind::SyntheticFodselsnummer);
                    if synthetic && !exclude.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
    }
    out
}

/// A start date in the past for the `i`th line of the export.
fn start_date(i: usize) -> String {
    format!("{}-{:02}-{:02}", 2005 + i % 19, 1 + i % 12, 1 + i % 28)
}

/// One event of the burst, as the core system would send it.
#[derive(Debug, Clone)]
struct Sent {
    op: &'static str,
    id: String,
    start_date: Option<String>,
}

/// The burst and what it is made of, sized from the export: removes of loaded customers (held by
/// the barrier), some of them added again afterwards (they queue behind their remove), new
/// customers added (some with a start date in the past: those go by batch), and new customers
/// added and removed again (per-customer order).
struct Burst {
    /// POSTs in the order sent; each a list of events.
    requests: Vec<(&'static str, Vec<Sent>)>,
    removes: usize,
    readds: usize,
    adds: usize,
    dated_adds: usize,
    add_then_remove: usize,
}

fn burst(loaded: &[String], fresh: &[String]) -> Burst {
    let k = (loaded.len() / 250).clamp(4, 200);
    let (removes, readds, adds, dated_adds, add_then_remove) = (k, k / 4, k, k / 4, (k / 8).max(1));
    let removed = &loaded[loaded.len() - removes..];
    let new = &fresh[..adds + dated_adds];
    let flicker = &fresh[adds + dated_adds..adds + dated_adds + add_then_remove];
    let add = |id: &String, start: Option<String>| Sent {
        op: "add",
        id: id.clone(),
        start_date: start,
    };
    let remove = |id: &String| Sent {
        op: "remove",
        id: id.clone(),
        start_date: None,
    };
    let mut first: Vec<Sent> = new[..adds].iter().map(|i| add(i, None)).collect();
    first.extend(
        new[adds..]
            .iter()
            .enumerate()
            .map(|(i, id)| add(id, Some(start_date(i)))),
    );
    first.extend(flicker.iter().map(|i| add(i, None)));
    let second: Vec<Sent> = removed.iter().chain(flicker).map(remove).collect();
    let third: Vec<Sent> = removed[..readds].iter().map(|i| add(i, None)).collect();
    Burst {
        requests: vec![
            ("new customers", first),
            ("customers leaving", second),
            ("customers returning", third),
        ],
        removes,
        readds,
        adds,
        dated_adds,
        add_then_remove,
    }
}

/// Writes the export `ID;YYYY-MM-DD`, one line a customer, mode 0600 (it holds identifiers).
fn write_export(path: &Path, ids: &[String]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(ids.len() * 23);
    for (i, id) in ids.iter().enumerate() {
        let _ = writeln!(text, "{id};{}", start_date(i));
    }
    crate::load::report::write_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The certificate, its key and a `kfr.toml` pointing at the mock and at the demo's own store and
/// pseudonym key, so a kept directory works with `kfr --config DIR/kfr.toml …` afterwards.
fn write_setup(dir: &Path, pki: &crate::certs::LocalPki, mock_url: &str, ingest_rate: u64) -> anyhow::Result<PathBuf> {
    let w = |name: &str, bytes: &[u8]| {
        crate::load::report::write_private(&dir.join(name), bytes).with_context(|| format!("writing {name}"))
    };
    w("ca.pem", format!("{}{}", pki.ca_cert_pem, pki.root_cert_pem).as_bytes())?;
    w("client-cert.pem", pki.client.cert_pem.as_bytes())?;
    w("client-key.pem", pki.client.key_pem.as_bytes())?;
    // A fresh pseudonym key for this installation, written here so that `kfr pseudonym` with the
    // demo's kfr.toml gives the pseudonyms its logs and reports carry.
    let key = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
    w(
        "pseudonym.key",
        zeroize::Zeroizing::new(format!("{}\n", hex::encode(*key))).as_bytes(),
    )?;
    let s = |v: &str| toml::Value::String(v.to_string()).to_string();
    let toml = format!(
        "# written by `kfr demo`: throwaway material for its in-process mock only\n\
         env = \"local\"\norg_number = {}\nclient_id = {}\nprivate_key = \"client-key.pem\"\n\
         certificate_pem = \"client-cert.pem\"\nmaskinporten_issuer = {}\nkfr_base_url = {}\n\
         state = {}\npseudonym_key_file = {}\ningest_rate = {ingest_rate}\n",
        s(ORG),
        s(&uuid::Uuid::new_v4().to_string()),
        s(&format!("{mock_url}/maskinporten/")),
        s(&format!("{mock_url}/kar-ws/api/v1")),
        s(&dir.join("kfr-state.db").display().to_string()),
        s(&dir.join("pseudonym.key").display().to_string()),
    );
    w("kfr.toml", toml.as_bytes())?;
    Ok(dir.join("kfr.toml"))
}

/// The demo's log file, mode 0600 whatever the umask (it names customers, masked).
fn private_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Masked examples of a set of identifiers, for a difference report.
fn examples(set: &BTreeSet<String>) -> String {
    let shown: Vec<String> = set.iter().take(5).map(|s| ids::mask(s)).collect();
    let more = if set.len() > shown.len() {
        format!(", … {} more", set.len() - shown.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

pub async fn run(args: &DemoArgs, printer: Printer) -> anyhow::Result<()> {
    let home = home(args.keep.as_deref())?;
    let result = tokio::select! {
        r = demo(args, home.path(), &printer) => r,
        _ = tokio::signal::ctrl_c() => Err(Reported("kfr demo: stopped by Ctrl-C".into()).into()),
    };
    match &home {
        Home::Temp(_) => printer.message(format_args!(
            "kfr demo: removing {} (use --keep DIR to keep the state, reports and logs)",
            home.path().display()
        )),
        Home::Kept(p) => printer.message(format_args!("kfr demo: everything is kept in {}", p.display())),
    }
    drop(home);
    result
}

/// The demo from start to verdict: each step below proves one part of the path a bank takes, and
/// the verdict is drawn from what the mock's register holds at the end, not from what the steps
/// reported about themselves.
async fn demo(args: &DemoArgs, dir: &Path, printer: &Printer) -> anyhow::Result<()> {
    if args.size < 100 {
        return Err(crate::error::UsageError::new("--size must be at least 100").into());
    }
    let began = Instant::now();
    let log = Log {
        printer,
        file: std::sync::Mutex::new(private_append(&dir.join("demo.log")).context("creating demo.log")?),
    };
    let ingest_rate = args.ingest_rate.unwrap_or((args.size / LOAD_SECS).max(50) as u64);

    let (mock, config, settings) = start_mock(&log, dir, ingest_rate).await?;
    show_token(&log, &settings).await?;
    let population = population(args, dir)?;
    let agent = start_agent(&settings, ingest_rate).await?;
    let loaded = load_during_burst(&log, args, dir, &config, &settings, &population, &agent, ingest_rate).await?;
    let synced = drain_agent(&log, agent, &population, &loaded).await?;
    let (report, checklist_took) = run_checklist(&log, dir, &settings, &population.cases).await?;
    let register = compare_register(&mock, &population);
    mock.shutdown().await;

    log.step("summary");
    let out = summary(
        dir,
        &population,
        &loaded,
        &synced,
        &report,
        checklist_took,
        &register,
        began,
    );
    log.write(&out);
    let _ = printer.data(out.trim_end());
    verdict(&log, printer, &synced, &report, &register)
}

/// Step 1, certificates and the mock: a throwaway test CA and business certificate, the mock
/// trusting that CA on a free loopback port, and a configuration file that names only them (no
/// `KFR_*` variable or `./kfr.toml` of the shell takes part).
async fn start_mock(log: &Log<'_>, dir: &Path, ingest_rate: u64) -> anyhow::Result<(MockServer, PathBuf, Settings)> {
    log.step("certificates and the mock");
    let pki = crate::certs::generate(ORG, "KFR DEMO BANK AS")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the mock")?;
    let mut mock_cfg = MockConfig::new(vec![pki.ca_cert_der.clone(), pki.root_cert_der.clone()]);
    mock_cfg.ingest_rate = ingest_rate;
    let mock = MockServer::start(listener, mock_cfg).await?;
    let config = write_setup(dir, &pki, &mock.base_url(), ingest_rate)?;
    log.say(format_args!(
        "throwaway test CA and business certificate for org.nr {ORG} in {}",
        dir.display()
    ));
    log.say(format_args!(
        "mock Maskinporten + KFR on {} (ingesting {ingest_rate} relationships/s)",
        mock.base_url()
    ));
    // Only the demo's own file: nothing from the shell's KFR_* variables or ./kfr.toml.
    let settings = Settings::load_from(Some(&config), &Default::default(), &FlagOverrides::default())?;
    super::install_pseudonyms(&settings)?;
    Ok((mock, config, settings))
}

/// Step 2, the token: the business certificate obtains a Maskinporten token (its scope,
/// consumer and expiry are shown; the token itself never is).
async fn show_token(log: &Log<'_>, settings: &Settings) -> anyhow::Result<()> {
    log.step("Maskinporten token");
    let tokens = super::build::token_client(settings)?;
    let token = tokens
        .token()
        .await
        .context("getting a token from the mock Maskinporten")?;
    let expires: DateTime<Utc> = token.expires_at.into();
    log.say(format_args!(
        "token for scope {} (consumer org {}), expires {} (the token itself is never printed)",
        token.scope,
        token.consumer_org.as_deref().unwrap_or("?"),
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    Ok(())
}

/// The synthetic population: the built-in checklist's cases (their identifiers are kept out),
/// the customers of the export, and the burst of events that follows it.
struct Population {
    cases: checklist::cases::CaseFile,
    loaded: Vec<String>,
    export: PathBuf,
    burst: Burst,
}

/// Generates the population and writes the export (`customers.csv`).
fn population(args: &DemoArgs, dir: &Path) -> anyhow::Result<Population> {
    let cases = checklist::cases::parse(checklist::DEFAULT_CASES, checklist::DEFAULT_CASES_NAME)
        .map_err(|e| anyhow::anyhow!("the built-in checklist: {e}"))?;
    let theirs: HashSet<String> = cases.identifiers.values().cloned().collect();
    let extra = (args.size / 250).clamp(4, 200) * 2;
    let mut people = tenor_people(args.size + extra, &theirs);
    anyhow::ensure!(
        people.len() == args.size + extra,
        "--size {} is more than the generator makes",
        args.size
    );
    let fresh = people.split_off(args.size);
    let loaded = people;
    let export = dir.join("customers.csv");
    write_export(&export, &loaded)?;
    let burst = burst(&loaded, &fresh);
    Ok(Population {
        cases,
        loaded,
        export,
        burst,
    })
}

/// The sync agent running in-process: its store, the HTTP source taking events, and the
/// dispatcher delivering them, with what stops each.
struct Agent {
    /// The state store's path (the load writes its job there too).
    state: PathBuf,
    handle: Store,
    register_key: String,
    health: Health,
    events_url: String,
    /// The ingest source's bearer key.
    key: String,
    cancel: CancellationToken,
    source: tokio::task::JoinHandle<Result<SourceReport, IngestError>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    delivering: tokio::task::JoinHandle<Result<DispatchSummary, DispatchError>>,
}

/// Step 3, the agent: store thread, dispatcher (holding the delivery lease) and HTTP source on a
/// free port, as `kfr sync` builds them, tuned to the mock's microsecond answers.
async fn start_agent(settings: &Settings, ingest_rate: u64) -> anyhow::Result<Agent> {
    let state = settings.require_state(None)?;
    let register = super::outbox::register(settings)?;
    let register_key = register.key();
    let (handle, _) = super::build::writable_store(settings, None)?;
    let health = Health::new();
    let mut dcfg = DispatchConfig {
        rate: SYNC_RATE,
        retry: super::build::retry_policy(settings),
        ingest_rate: ingest_rate as f64,
        // The mock answers in microseconds: look often, and confirm dated adds soon.
        ingest_margin: Duration::from_secs(5),
        confirm_interval: Duration::from_millis(500),
        batch_window: Duration::from_millis(500),
        poll_interval: Duration::from_millis(200),
        ..DispatchConfig::default()
    };
    dcfg.retry.max_attempts = u32::MAX;
    let dispatcher = Dispatcher::new(
        handle.clone(),
        super::build::kfr_client(settings)?,
        register_key.clone(),
        dcfg,
        health.clone(),
    );
    let intake = Intake::new(
        handle.clone(),
        register_key.clone(),
        health.clone(),
        super::build::id_policy(settings),
    )
    .with_waker(dispatcher.waker());
    let key = uuid::Uuid::new_v4().simple().to_string();
    let ingest_key = IngestKey::new(key.clone().into()).map_err(|()| anyhow::anyhow!("ingest key too short"))?;
    let bound = IngestServer::bind(IngestOptions::new("127.0.0.1:0".parse()?, ingest_key), intake).await?;
    let events_url = format!("http://{}/events", bound.local_addr());
    let cancel = CancellationToken::new();
    let source = tokio::spawn(bound.run(cancel.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lease = handle
        .take_lease(
            register_key.clone(),
            format!("sync:demo:{}", std::process::id()),
            Utc::now(),
            chrono::Duration::seconds(30),
        )
        .await?
        .context("the demo's fresh store has its delivery lease taken")?;
    let delivering = tokio::spawn(dispatcher.run(stop_rx, lease));
    Ok(Agent {
        state,
        handle,
        register_key,
        health,
        events_url,
        key,
        cancel,
        source,
        stop_tx,
        delivering,
    })
}

/// What step 4 leaves: the load's outcome and duration, and whether the burst's removes found
/// the load job unconfirmed (`(job, (held, removes))`).
struct Loaded {
    outcome: crate::load::LoadOutcome,
    took: Duration,
    sent: Option<(i64, (bool, usize))>,
}

/// Step 4, the load with the burst on top: `kfr load`'s engine and screen load the export while
/// the core system's burst goes to the agent over HTTP as soon as the load job exists, so the
/// removes meet a job that is not yet confirmed (the delete barrier's case, onboarding D-3).
#[allow(clippy::too_many_arguments)]
async fn load_during_burst(
    log: &Log<'_>,
    args: &DemoArgs,
    dir: &Path,
    config: &Path,
    settings: &Settings,
    population: &Population,
    agent: &Agent,
    ingest_rate: u64,
) -> anyhow::Result<Loaded> {
    let export = &population.export;
    log.step(format_args!(
        "initial load of {} synthetic relationships ({})",
        population.loaded.len(),
        export.display()
    ));
    log.say(format_args!(
        "sync agent taking events on {} (bearer key), delivering at {SYNC_RATE} calls/s",
        agent.events_url
    ));
    let opts = LoadOptions {
        settle: std::time::Duration::ZERO,
        file: export.clone(),
        resume: false,
        state: agent.state.display().to_string(),
        report: Some(dir.join("load-report.json")),
        skip_invalid: false,
        rejects: None,
        ingest_rate: ingest_rate as u32,
        // About five batches, so the screen shows the batch-by-batch rhythm of a real load.
        max_batch_bytes: (args.size * 24 / 5)
            .clamp(crate::config::MIN_BATCH_BYTES, crate::kfr::batch::DEFAULT_MAX_BYTES),
        max_per_day: None,
        confirm_timeout: Duration::from_secs(120),
        sample: 3,
        org_number: ORG.into(),
        kfr_base_url: settings.kfr_base_url.to_string(),
        environment: settings.env.as_str().to_string(),
        id_policy: super::build::id_policy(settings),
        allow_empty: false,
        outage_wait: Duration::from_secs(60),
        retry_after_cap: settings.retry.retry_after_cap,
        resume_command: format!("kfr --config {} load {} --resume", config.display(), export.display()),
        stop: None,
        request_budget: super::build::request_budget(settings),
        in_doubt: settings.sync.in_doubt,
    };
    let (job_tx, job_rx) = tokio::sync::watch::channel(None::<i64>);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let every = Duration::from_secs(10);
    let sink = |e: LoadEvent| {
        if let LoadEvent::JobCreated { job, .. } = &e {
            job_tx.send_replace(Some(*job));
        }
        super::load::present(log.printer, &opts, every, e);
    };
    let client = super::build::kfr_client(settings)?;
    let load_started = Instant::now();
    let load = async {
        let r = crate::load::run(&opts, &agent.handle, &client, &sink).await;
        done_tx.send_replace(true);
        r
    };
    let send = send_burst(log, agent, &population.burst, job_rx, done_rx);
    let (load_result, sent) = tokio::join!(load, send);
    let took = load_started.elapsed();
    let outcome = match load_result {
        Ok(o) => o,
        Err(e) => {
            agent.cancel.cancel();
            let _ = agent.stop_tx.send(true);
            return Err(anyhow::Error::new(e).context("the initial load failed"));
        }
    };
    super::load::summary(log.printer, &opts, &outcome);
    let sent = sent?;
    log.write(&format!(
        "load job {} {}: {} relationships in {} batches, {}",
        outcome.report.job_id,
        outcome.report.job_status.as_str(),
        outcome.report.counts.valid_unique,
        outcome.report.batches.len(),
        secs(took)
    ));
    Ok(Loaded { outcome, took, sent })
}

/// Posts the burst to the agent once the load job exists (nothing, if the load ends first):
/// every POST must be stored whole (202), and after the removes the store says whether the
/// load job's barrier holds them. Returns `(job, (held, removes))`.
async fn send_burst(
    log: &Log<'_>,
    agent: &Agent,
    burst: &Burst,
    mut job_rx: tokio::sync::watch::Receiver<Option<i64>>,
    mut done_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(i64, (bool, usize))>> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let job = tokio::select! {
        j = job_rx.wait_for(Option::is_some) => j.ok().and_then(|j| *j),
        _ = done_rx.wait_for(|d| *d) => None,
    };
    let Some(job) = job else { return Ok(None) };
    let mut held = None;
    for (what, events) in &burst.requests {
        let body: Vec<serde_json::Value> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut v = serde_json::json!({
                    "op": e.op, "customer_id": e.id, "event_id": format!("demo-{what}-{i}").replace(' ', "-"),
                });
                if let Some(d) = &e.start_date {
                    v["start_date"] = d.clone().into();
                }
                v
            })
            .collect();
        let resp = http
            .post(&agent.events_url)
            .bearer_auth(&agent.key)
            .json(&body)
            .send()
            .await
            .context("posting events to the agent")?;
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await.unwrap_or_default();
        anyhow::ensure!(
            status == reqwest::StatusCode::ACCEPTED && answer["stored"].as_u64() == Some(events.len() as u64),
            "the agent answered {status} to {} events ({what}): {}",
            events.len(),
            ids::scrub(&answer.to_string())
        );
        let barrier = agent.handle.barrier(agent.register_key.clone()).await?;
        if *what == "customers leaving" {
            held = Some((barrier == Some(job), events.len()));
        }
        log.write(&format!(
            "POST /events: {} {what}: 202, stored {}",
            events.len(),
            events.len()
        ));
    }
    Ok(held.map(|h| (job, h)))
}

/// What step 5 leaves: the dispatcher's summary, the outbox at the end, whether it drained in
/// time, how long that took, and the barrier's verdict (`None`: nothing was held).
struct Synced {
    summary: DispatchSummary,
    status: OutboxStatus,
    drained: bool,
    took: Duration,
    barrier_kept: Option<bool>,
}

/// Step 5, the burst as the agent took it: the agent drains its outbox within
/// [`SYNC_DEADLINE`], stops cleanly, and (when the removes were held) every held remove reached
/// KFR only after the load's confirmation.
async fn drain_agent(log: &Log<'_>, agent: Agent, population: &Population, loaded: &Loaded) -> anyhow::Result<Synced> {
    let burst = &population.burst;
    log.step("sync agent: a burst of events from the core system, over HTTP");
    log.say(format_args!(
        "sent {} new customers ({} of them with a start date in the past: those go by batch), \
         {} removes, then {} of the removed back again, and {} added and removed at once",
        burst.adds + burst.dated_adds,
        burst.dated_adds,
        burst.removes,
        burst.readds,
        burst.add_then_remove
    ));
    let held = match loaded.sent {
        Some((job, (true, n))) => {
            log.say(format_args!(
                "{n} removes arrived while load job {job} was unconfirmed: held by the delete barrier (onboarding D-3)"
            ));
            true
        }
        Some((job, (false, _))) => {
            log.say(format_args!(
                "the removes arrived after load job {job} was confirmed: nothing to hold them back"
            ));
            false
        }
        None => false,
    };
    let Agent {
        handle,
        register_key,
        health,
        cancel,
        source,
        stop_tx,
        delivering,
        ..
    } = agent;
    let sync_started = Instant::now();
    let drained = loop {
        let st = handle.status(Some(register_key.clone())).await?;
        if st.pending + st.in_flight + st.accepted == 0 {
            break true;
        }
        if sync_started.elapsed() > SYNC_DEADLINE {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    health.set_draining();
    cancel.cancel();
    let _ = source.await;
    let _ = stop_tx.send(true);
    let summary = delivering
        .await
        .context("the dispatcher stopped abnormally")?
        .context("the dispatcher stopped")?;
    let took = sync_started.elapsed();
    let status = handle.status(Some(register_key.clone())).await?;
    log.say(format_args!(
        "agent delivered {} events ({} by batch upload{}), {} dead-lettered, {} unfinished; {} after the load",
        summary.delivered,
        summary.batches_accepted,
        if summary.batches_accepted == 1 { "" } else { "s" },
        status.dead_lettered,
        status.pending + status.in_flight + status.accepted,
        secs(took)
    ));
    let barrier_kept = if held {
        Some(barrier_kept(log, &handle, &register_key, population, loaded).await?)
    } else {
        None
    };
    Ok(Synced {
        summary,
        status,
        drained,
        took,
        barrier_kept,
    })
}

/// The barrier's promise, checked in the ledger: every customer removed for good (in the export,
/// removed, not added back) ended, and ended no earlier than the load's confirmation.
async fn barrier_kept(
    log: &Log<'_>,
    handle: &Store,
    register_key: &str,
    population: &Population,
    loaded: &Loaded,
) -> anyhow::Result<bool> {
    let burst = &population.burst;
    let confirmed_at = handle
        .job(loaded.outcome.report.job_id)
        .await?
        .and_then(|j| j.confirmed_at)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    let readded: HashSet<&String> = burst.requests[2].1.iter().map(|e| &e.id).collect();
    let in_export: HashSet<&String> = population.loaded.iter().collect();
    let gone: HashSet<&String> = burst.requests[1]
        .1
        .iter()
        .map(|e| &e.id)
        .filter(|id| in_export.contains(id) && !readded.contains(id))
        .collect();
    let ledger = handle.ledger(register_key.to_string()).await?;
    let ended: Vec<_> = ledger
        .iter()
        .filter(|l| gone.contains(&l.customer_id) && l.state == LedgerState::Ended)
        .collect();
    let after = confirmed_at.is_some_and(|c| ended.iter().all(|l| l.since >= c));
    log.say(format_args!(
        "ledger: {} of {} removed customers ended, {} after the load's confirmation",
        ended.len(),
        gone.len(),
        if after { "every one" } else { "NOT every one" }
    ));
    Ok(after && ended.len() == gone.len())
}

/// Step 6, the checklist: Bits' integration-test cases run against the mock as `kfr checklist`
/// runs them, leaving the register as they found it; the reports go to `checklist/`.
async fn run_checklist(
    log: &Log<'_>,
    dir: &Path,
    settings: &Settings,
    cases: &checklist::cases::CaseFile,
) -> anyhow::Result<(Report, Duration)> {
    log.step("checklist: the built-in integration-test cases against the mock");
    let report_dir = dir.join("checklist");
    let checklist_started = Instant::now();
    let cfg = RunConfig {
        env: settings.env,
        org_number: ORG.into(),
        kfr_base_url: settings.kfr_base_url.clone(),
        other_fid: None,
        other_scope: None,
        ingest_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(20),
    };
    let http_cl = crate::http::client(&super::build::http_config(settings))?;
    let mut runner =
        Runner::new(http_cl, super::build::token_client(settings)?, cfg, cases, &[]).map_err(anyhow::Error::new)?;
    runner.preflight().await.map_err(anyhow::Error::new)?;
    let total = cases.cases.len();
    let started = Utc::now();
    let results = runner
        .run(&cases.cases, |i, r| {
            log.say(format_args!(
                "[{i:>2}/{total}] {} {:<6} {} ({} ms)",
                r.verdict.as_str(),
                r.id,
                r.title,
                r.duration_ms
            ))
        })
        .await;
    let cleanup = runner.cleanup().await;
    let report = Report::new(
        ORG.into(),
        settings.env,
        settings.kfr_base_url.to_string(),
        cases.source.clone(),
        started,
        results,
        cleanup,
    );
    checklist::write_reports(&report_dir, &report)
        .with_context(|| format!("writing the checklist reports to {}", report_dir.display()))?;
    Ok((report, checklist_started.elapsed()))
}

/// The mock's register against what was sent: the export, then each event of the burst in order.
struct RegisterCheck {
    expected: BTreeSet<String>,
    active: BTreeSet<String>,
    missing: BTreeSet<String>,
    surplus: BTreeSet<String>,
}

impl RegisterCheck {
    /// The register holds exactly what the bank sent.
    fn exact(&self) -> bool {
        self.missing.is_empty() && self.surplus.is_empty()
    }
}

/// Step 7, the register against what was sent: the active relationships the mock holds for us
/// must be exactly the export with the burst applied, event by event.
fn compare_register(mock: &MockServer, population: &Population) -> RegisterCheck {
    let mut expected: BTreeSet<String> = population.loaded.iter().cloned().collect();
    for (_, events) in &population.burst.requests {
        for e in events {
            match e.op {
                "add" => expected.insert(e.id.clone()),
                _ => expected.remove(&e.id),
            };
        }
    }
    let active: BTreeSet<String> = mock
        .state()
        .relationships()
        .into_iter()
        .filter(|r| r.organization_id == ORG && r.end_date.is_none())
        .map(|r| r.customer_id)
        .collect();
    let missing: BTreeSet<String> = expected.difference(&active).cloned().collect();
    let surplus: BTreeSet<String> = active.difference(&expected).cloned().collect();
    RegisterCheck {
        expected,
        active,
        missing,
        surplus,
    }
}

/// The summary table: one line per step's result, the total time, and the files left in `dir`.
#[allow(clippy::too_many_arguments)]
fn summary(
    dir: &Path,
    population: &Population,
    loaded: &Loaded,
    synced: &Synced,
    report: &Report,
    checklist_took: Duration,
    register: &RegisterCheck,
    began: Instant,
) -> String {
    let burst = &population.burst;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "initial load   {} relationships in {} batches, confirmed stored in {}",
        loaded.outcome.report.counts.valid_unique,
        loaded.outcome.report.batches.len(),
        secs(loaded.took)
    );
    let _ = writeln!(
        out,
        "sync agent     {} events taken over HTTP, {} delivered, {} dead-lettered, drained {} after the load{}",
        burst.requests.iter().map(|(_, e)| e.len()).sum::<usize>(),
        synced.summary.delivered,
        synced.status.dead_lettered,
        secs(synced.took),
        match synced.barrier_kept {
            Some(true) => format!(
                "; {} removes held by the barrier until the load was confirmed",
                burst.removes + burst.add_then_remove
            ),
            Some(false) => "; the barrier did NOT hold every remove until the confirmation".into(),
            None => "; no remove was held (they arrived after the confirmation)".into(),
        }
    );
    let _ = writeln!(
        out,
        "checklist      {} of {} cases passed, {} left in the register, in {}",
        report.passed,
        report.cases.len(),
        report.cleanup.leftovers.len(),
        secs(checklist_took)
    );
    let _ = writeln!(
        out,
        "register       {} active relationships for {ORG}; expected {} from the export and the burst: {}",
        register.active.len(),
        register.expected.len(),
        if register.exact() {
            "exactly as sent"
        } else {
            "DIFFERENT"
        }
    );
    let _ = writeln!(out, "total          {}", secs(began.elapsed()));
    let _ = writeln!(out, "files in {}:", dir.display());
    for (f, what) in [
        (
            "kfr-state.db",
            "state store: load job, outbox, ledger (`kfr --config DIR/kfr.toml outbox status`)",
        ),
        ("load-report.json", "load report for Bits (and load-report.md)"),
        ("checklist/", "checklist reports (Markdown, JSON, JUnit, XLSX)"),
        ("demo.log", "this run's log"),
        ("customers.csv", "the generated export (synthetic identities)"),
        (
            "kfr.toml",
            "the configuration used (its mock is gone when the demo ends)",
        ),
    ] {
        let _ = writeln!(out, "  {f:<17} {what}");
    }
    out
}

/// The verdict: OK only when the register is exactly what was sent, the agent delivered
/// everything in time, the barrier held and every checklist case passed; otherwise exit 1 with
/// each difference (identifiers masked).
fn verdict(
    log: &Log<'_>,
    printer: &Printer,
    synced: &Synced,
    report: &Report,
    register: &RegisterCheck,
) -> anyhow::Result<()> {
    let mut problems = vec![];
    if !register.exact() {
        problems.push(format!(
            "the register differs from what was sent: {} missing ({}), {} not expected ({})",
            register.missing.len(),
            examples(&register.missing),
            register.surplus.len(),
            examples(&register.surplus)
        ));
    }
    if !synced.drained || synced.status.dead_lettered > 0 {
        problems.push(format!(
            "the sync agent did not deliver every event within {} s ({} dead-lettered)",
            SYNC_DEADLINE.as_secs(),
            synced.status.dead_lettered
        ));
    }
    if synced.barrier_kept == Some(false) {
        problems.push("a held remove reached KFR before the load was confirmed".into());
    }
    if !report.all_passed() {
        problems.push(format!(
            "{} of {} checklist cases failed",
            report.failed,
            report.cases.len()
        ));
    }
    if problems.is_empty() {
        log.say("kfr demo: OK, the register is exactly what the bank sent");
        return Ok(());
    }
    for p in &problems {
        log.write(p);
        printer.problem(format_args!("kfr demo: {p}"));
    }
    Err(Reported(format!("kfr demo failed: {}", problems.join("; "))).into())
}

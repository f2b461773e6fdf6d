//! Command-line interface: clap argument structs and one file per command.
//!
//! Arguments are parsed first and then resolved, once, into [`crate::config::Settings`] (flags are
//! one of the configuration sources). Commands print data on stdout and messages on stderr,
//! through [`printer::Printer`] (which honours `-q`, `-v` and `NO_COLOR`).

use crate::config::{self, FlagOverrides};
use crate::error::{self, Exit};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

mod agent_watch;
pub(crate) mod build;
mod certs;
mod certwatch;
mod checklist;
mod completions;
mod config_show;
mod demo;
mod doctor;
mod examples;
mod history;
mod load;
mod man;
mod mock;
mod ops;
mod outbox;
pub mod printer;
mod pseudonym;
mod relationship;
pub(crate) mod report;
mod status;
mod sync;
mod token;
mod validate;
mod verify;

/// `kfr --version`: the package version and the commit it was built from (`build.rs`: short
/// hash, `-dirty` for a modified tree, `unknown` outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KFR_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(name = "kfr", version = VERSION, about = "Keeps Bits AS' Kundeforholdsregister (KFR) current", long_about = None, after_help = examples::KFR)]
pub struct Cli {
    /// Configuration file. Without it: KFR_CONFIG, else the installation's /etc/kfr/kfr.toml when
    /// present, else ./kfr.toml when present (docs/configuration.md).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace). KFR_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Log lines on stderr as `human` text or `json` objects (default: human; also KFR_LOG_FORMAT).
    #[arg(long, global = true, value_name = "FORMAT", value_enum)]
    pub log_format: Option<crate::telemetry::LogFormat>,

    #[command(flatten)]
    pub overrides: FlagOverrides,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Get a Maskinporten access token and show its expiry, scope and consumer organisation.
    #[command(after_help = examples::TOKEN)]
    Token(TokenArgs),
    /// Check certificate, configuration, connectivity and clock, one line per check.
    #[command(after_help = examples::DOCTOR)]
    Doctor(DoctorArgs),
    /// Generate certificates for local testing against `kfr mock`.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run the bundled fake Maskinporten and fake KFR on loopback.
    #[command(after_help = examples::MOCK)]
    Mock(MockArgs),
    /// Inspect the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Initial load: plan, upload and confirm every active relationship in an export (onboarding D-3).
    #[command(after_help = examples::LOAD)]
    Load(LoadArgs),
    /// Register a customer relationship in KFR.
    #[command(after_help = examples::ADD)]
    Add(RelationshipArgs),
    /// End a customer relationship in KFR (held while an initial load is being ingested).
    #[command(after_help = examples::REMOVE)]
    Remove(RelationshipArgs),
    /// Own lookup: is the customer registered with this institution (for a period)?
    #[command(after_help = examples::LOOKUP)]
    Lookup(LookupArgs),
    /// Validate customer identifiers offline (no request is sent).
    #[command(after_help = examples::VALIDATE)]
    Validate(ValidateArgs),
    /// Print the log pseudonym of a customer identifier, to find it in logs.
    #[command(after_help = examples::PSEUDONYM)]
    Pseudonym(PseudonymArgs),
    /// Run Bits' integration-test cases against KFR and write the report to mail Bits (onboarding C-2, C-3).
    #[command(after_help = examples::CHECKLIST)]
    Checklist(ChecklistArgs),
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish or powershell).
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout, or write one page per command with --dir.
    Man(ManArgs),
    /// Run the sync agent: take events from the core system and deliver them to KFR, in order per customer.
    #[command(after_help = examples::SYNC)]
    Sync(SyncArgs),
    /// Put one add or remove in the outbox for the sync agent to deliver.
    #[command(after_help = examples::ENQUEUE)]
    Enqueue(EnqueueArgs),
    /// Inspect the sync agent's outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The dead-letter queue: events KFR refused for their content, and the customers they park.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// What was reported for one customer: its events, every attempt and KFR's answer, and
    /// operators' actions, kept after the outbox purged them (identifier masked unless asked).
    #[command(after_help = examples::HISTORY)]
    History(HistoryArgs),
    /// Check the ledger against KFR by own lookups: every customer, or a random sample.
    #[command(after_help = examples::VERIFY)]
    Verify(VerifyArgs),
    /// Compare a full export with the ledger and enqueue the adds and removes that differ.
    #[command(after_help = examples::RECONCILE)]
    Reconcile(ReconcileArgs),
    /// The whole product in about a minute, nothing to set up: mock, token, initial load, sync
    /// agent, checklist, and the register checked against what was sent.
    #[command(after_help = examples::DEMO)]
    Demo(DemoArgs),
    /// The installation at a glance: configuration, store, the agents' heartbeats, the outbox,
    /// dead letters, a running load, the last delivery, certificates; exit 1 when something
    /// needs attention.
    #[command(after_help = examples::STATUS)]
    Status(StatusArgs),
    /// Writes a consistent, checked copy of the state store (mode 0600) while the agent runs.
    #[command(after_help = examples::BACKUP)]
    Backup(BackupArgs),
    /// What was reported for whom, when, and what KFR answered: the history for compliance.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The state store itself: moving an installation to PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copies a SQLite state store into the configured PostgreSQL store (`store.url`), which
    /// must be empty; every table's rows are counted on both sides. Stop the agents first.
    #[command(
        after_help = "Examples:\n  kfr store migrate --from /var/lib/kfr/kfr-state.db\n  kfr store migrate --from /var/lib/kfr/kfr-state.db --json"
    )]
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The SQLite store to move (default: the installation's `state`).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The state store (default: `state` of the configuration).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where the copy goes; must not exist.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// The state store (default: `state` of the configuration).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// The result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// One row per attempt and per operator action from the history, as CSV, JSON lines or a
    /// spreadsheet (mode 0600); identifiers masked unless --show-id.
    #[command(after_help = examples::AUDIT_EXPORT)]
    Export(AuditExportArgs),
}

#[derive(Debug, Args)]
pub struct AuditExportArgs {
    /// First day included (UTC).
    #[arg(long, value_name = "DATE")]
    pub from: chrono::NaiveDate,
    /// Last day included (UTC).
    #[arg(long, value_name = "DATE")]
    pub to: chrono::NaiveDate,
    /// Only this customer's lines.
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: AuditFormat,
    /// The file to write; must not exist.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Identifiers in full (the file then holds personal data: keep it as such).
    #[arg(long)]
    pub show_id: bool,
    /// The state store (default: `state` of the configuration).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    Csv,
    Jsonl,
    Xlsx,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the state store, reports, logs and configuration in DIR (new or empty) instead of
    /// removing them at exit.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Relationships in the generated export (tests use a small one).
    #[arg(long, value_name = "N", default_value_t = demo::DEFAULT_SIZE, hide = true)]
    pub size: usize,
    /// Relationships a second the mock ingests (default: the export's size / 25).
    #[arg(long, value_name = "N", hide = true)]
    pub ingest_rate: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// State store (default: the installation's, `state` in the configuration).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Address of the HTTP ingest endpoint (default: sync.listen, 127.0.0.1:8090).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the bearer key the core system sends (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub ingest_key_file: Option<PathBuf>,
    /// Serve /metrics, /livez and /readyz on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// TLS certificate (PEM chain) for the ingest endpoint.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the ingest endpoint.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on an address other than loopback (events carry personal data).
    #[arg(long)]
    pub allow_plain_http: bool,
    /// Requests a second to KFR, all operations together (default: sync.rate).
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,
    /// Requests in flight at once (default: sync.max_in_flight).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Also take NDJSON events on standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Between recovery probes while delivery is paused on a systemic failure (default 60 s).
    /// Hidden: for tests that rehearse a credentials outage in seconds.
    #[arg(long, value_name = "MS", hide = true)]
    pub probe_interval_ms: Option<u64>,
    /// How long the delivery lease holds without a renewal (default 30 s; renewed every sixth
    /// of it). A standby takes over this long after a leader stops renewing (frozen, cut off);
    /// at once when the leader's process or its store session is gone.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lease_secs: Option<u64>,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// add or remove.
    #[arg(value_enum)]
    pub op: EnqueueOp,
    /// Customer identifier.
    pub id: String,
    /// Start date of an add (YYYY-MM-DD or DD.MM.YYYY); before today it goes by batch so KFR keeps it.
    #[arg(long, value_name = "DATE")]
    pub start_date: Option<String>,
    /// Dedupe key (default: a fresh UUID).
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// State store (default: the installation's).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EnqueueOp {
    Add,
    Remove,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// State store (default: the installation's).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Counts by state, parked customers, the oldest unfinished event, the load barrier.
    #[command(after_help = examples::OUTBOX_STATUS)]
    Status(StoreArgs),
    /// Cancels pending events: never one in flight or accepted by KFR (exit 2 naming its state).
    /// The customer's next event becomes its head; who and why go to the history.
    #[command(after_help = examples::OUTBOX_CANCEL)]
    Cancel(CancelArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["seq", "customer", "event_id"])))]
pub struct CancelArgs {
    /// The outbox entry (as `kfr outbox status`, `kfr history` and `kfr add` name it).
    pub seq: Option<i64>,
    /// Every pending event of this customer.
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    /// The event with this event id.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub who: ActorArgs,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The dead letters, oldest first, with KFR's answer (identifiers masked).
    #[command(after_help = examples::DLQ_LIST)]
    List(StoreArgs),
    /// Put dead letters back at the head of their customers' queues.
    Retry {
        /// The outbox entry number (from `kfr dlq list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        who: ActorArgs,
    },
    /// Give up on a dead letter: never sent; its customer's later events go on.
    Drop {
        /// The outbox entry number (from `kfr dlq list`).
        seq: i64,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        who: ActorArgs,
    },
}

/// Who does an operator's action and why: recorded in the history (`kfr history`).
#[derive(Debug, Args)]
pub struct ActorArgs {
    /// Who acts (default: the OS user running the command).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Look up this many customers of the ledger, chosen at random (default 100).
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub sample: Option<usize>,
    /// Look up every customer of the ledger.
    #[arg(long)]
    pub all: bool,
    /// Enqueue the corrections (the ledger's state) for the sync agent.
    #[arg(long)]
    pub repair: bool,
    /// Let --repair correct more than 5 % of the customers checked.
    #[arg(long, requires = "repair")]
    pub allow_mass_change: bool,
    /// State store (default: the installation's).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The customer (fødselsnummer, D-number or org.nr), in full.
    pub id: String,
    /// Show the identifier in full in the output (it is masked otherwise).
    #[arg(long)]
    pub show_id: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// A full export of active relationships (the formats `kfr load` reads).
    pub file: PathBuf,
    /// Print the differences as counts; enqueue nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow removing more than 5 % of the ledger's active customers.
    #[arg(long)]
    pub allow_mass_delete: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Also print the access token itself (it is a secret: keep it out of tickets and logs).
    #[arg(long)]
    pub show_token: bool,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout: every check with its name, verdict (ok/warn/fail), detail and hint.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// A throwaway test CA, a business-certificate-shaped client certificate and a ready kfr.toml.
    #[command(after_help = examples::CERTS_LOCAL)]
    Local(CertsLocalArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CertsLocalArgs {
    /// The organisation number put in the certificate's serialNumber: the global `--org-number`
    /// (one flag, one meaning: the institution's org.nr; before or after `certs local`).
    #[arg(skip)]
    pub org_number: String,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Base URL of the mock the generated kfr.toml points at.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub mock_url: String,
    /// Organisation name used in the subject (O= and CN=<name> TEST).
    #[arg(long, value_name = "NAME", default_value = "KFR LOCAL BANK AS")]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings, secrets redacted, with where each value came from.
    #[command(after_help = examples::CONFIG_SHOW)]
    Show {
        /// Machine-readable output (JSON on stdout).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct MockArgs {
    #[command(flatten)]
    pub mock: crate::mock::MockFlags,
}

#[derive(Debug, Args)]
pub struct RelationshipArgs {
    /// Customer identifier: fødselsnummer, D-number (11 digits) or organisation number (9).
    pub id: String,
    /// CorrelationID to send (a UUID); a fresh one by default.
    #[arg(long, value_name = "UUID")]
    pub correlation_id: Option<uuid::Uuid>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
    /// State store (default: the installation's, `state`: kfr-state.db in the state home). `remove`
    /// queues the delete there while an initial load is not confirmed; `add` records in its ledger.
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub action: Option<LoadAction>,
    /// The export: one relationship per line (`ID`, `ID;YYYY-MM-DD`, `ID,YYYY-MM-DD`,
    /// `ID#YYYY-MM-DD`) or delimited with a header row (customer_id/kundeid, start_date/startdato,
    /// end_date/sluttdato). With `--resume` it may be left out: the unconfirmed job's file is used.
    /// (A file named like a subcommand, e.g. `status`, is given as `./status`.)
    #[arg(required_unless_present = "resume")]
    pub file: Option<PathBuf>,
    /// Print the plan (counts, batches with exact sizes, ingestion time, schedule) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue the unfinished load job in the state store (the file must be unchanged).
    #[arg(long)]
    pub resume: bool,
    /// State store (default: the installation's, `state`: kfr-state.db in the state home).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Write the report as JSON to PATH and as Markdown next to it (PATH with .md).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Load the valid lines even when some are bad, writing the bad ones to the rejects file.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Rejects file for --skip-invalid (default: FILE with `.rejects` before the extension).
    #[arg(long, value_name = "PATH")]
    pub rejects: Option<PathBuf>,
    /// Relationships per second KFR ingests (default: `ingest_rate`, 250).
    #[arg(long, value_name = "N")]
    pub ingest_rate: Option<u32>,
    /// Largest batch body in bytes (default: `max_batch_bytes`, 10,000,000).
    #[arg(long, value_name = "BYTES")]
    pub max_batch_bytes: Option<usize>,
    /// At most N relationships a day: plan a day-by-day schedule and pause when a day is full.
    #[arg(long, value_name = "N")]
    pub max_per_day: Option<u64>,
    /// Give up confirming a batch this long after its expected ingestion time.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub confirm_timeout_secs: u64,
    /// Random entries checked by own lookup per batch, besides its last entry.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub sample: usize,

    /// Accept a file with nothing to load (empty, header only, every line closed or rejected):
    /// without it such a file is refused, since a load of nothing proves nothing.
    #[arg(long)]
    pub allow_empty: bool,

    /// How long transient failures, 429s and outages are waited out during the load before it
    /// stops (resumable).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub outage_wait_secs: u64,

    /// The export must be unchanged (size and modification time) for this long before it is
    /// read, and again after: a file still being written in chunks is never loaded in part.
    #[arg(long, value_name = "SECS", default_value_t = 2, overrides_with = "settle_secs")]
    pub settle_secs: u64,

    /// When stderr is not a terminal: a plain progress line this often.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_every_secs: u64,
    /// Progress and the result as JSON lines on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

/// What else `kfr load` does besides loading a file.
#[derive(Debug, Subcommand)]
pub enum LoadAction {
    /// The jobs of a state store: file, sha256, KFR, batches by state, held operations, and
    /// whether a load is running on it now. Reads only.
    Status {
        /// State store (default: the installation's, `state`).
        #[arg(long, value_name = "PATH")]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// End a load job that will not be completed: it is marked abandoned and lifts the delete
    /// barrier; batches KFR accepted stay registered (the ledger keeps them). Refused while
    /// operations are held, unless --send-held or --drop-held says what becomes of them.
    Abandon {
        /// The job's id (`kfr load status`).
        job: i64,
        /// State store (default: the installation's, `state`).
        #[arg(long, value_name = "PATH")]
        state: Option<PathBuf>,
        /// Send the held operations to KFR now, each customer's in the order issued.
        #[arg(long, conflicts_with = "drop_held")]
        send_held: bool,
        /// Drop the held operations unsent; they are listed (masked) to be issued again by hand.
        #[arg(long)]
        drop_held: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        who: ActorArgs,
    },
    /// Send again the operations still held behind a confirmed or abandoned job (one whose
    /// sending failed, and those behind it on the same customer), without the export: each
    /// customer's in the order issued, with the CorrelationID given when it was queued.
    RetryHeld {
        /// The job's id (`kfr load status`).
        job: i64,
        /// State store (default: the installation's, `state`).
        #[arg(long, value_name = "PATH")]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    #[command(flatten)]
    pub target: RelationshipArgs,
    /// Start of the period (YYYY-MM-DD); KFR's default is today.
    #[arg(long, value_name = "DATE")]
    pub from: Option<chrono::NaiveDate>,
    /// End of the period (YYYY-MM-DD); KFR's default is today.
    #[arg(long, value_name = "DATE")]
    pub to: Option<chrono::NaiveDate>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Identifiers to validate.
    pub ids: Vec<String>,
    /// A file in any format `kfr load` reads (`-` for standard input), checked line by line.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PseudonymArgs {
    /// The customer identifier.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ChecklistArgs {
    /// Case file (TOML; format in docs/checklist.md). Default: the built-in checklist.
    #[arg(long, value_name = "FILE")]
    pub cases: Option<PathBuf>,
    /// Run only these case ids (several after one --only, or --only repeated).
    #[arg(long, value_name = "ID", num_args = 1..)]
    pub only: Vec<String>,
    /// Directory for the reports (kfr-checklist.md, .json, .xml, .xlsx); created if missing.
    #[arg(long, value_name = "DIR", default_value = "kfr-checklist-report")]
    pub report_dir: PathBuf,
    /// Use the synthetic identity ID for the case file's identifier NAME (repeatable).
    #[arg(long = "id", value_name = "NAME=ID")]
    pub ids: Vec<String>,
    /// Another institution's org.nr for the wrong-fid case (default: the case file's `other_fid`).
    #[arg(long, value_name = "ORGNR")]
    pub other_fid: Option<String>,
    /// A scope without write access for the wrong-scope case (default: the case file's `other_scope`).
    #[arg(long, value_name = "SCOPE")]
    pub other_scope: Option<String>,
    /// Longest wait for a batch to show as ingested.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub ingest_timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write kfr.1 and a page per subcommand (kfr-load.1, …) into DIR instead of printing kfr.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Entry point used by `main`: parse, run, render errors, map to the exit code.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version on stdout (exit 0) and usage errors on stderr (exit 2).
            let code = if e.use_stderr() { Exit::Usage } else { Exit::Success };
            if e.use_stderr() && json_logs_asked() {
                // A unit whose command line is wrong still writes JSON lines only.
                crate::telemetry::init(0, Some(crate::telemetry::LogFormat::Json));
                tracing::error!(
                    error = %e.to_string().trim_end(),
                    exit_code = code as u8,
                    "kfr stopped with an error"
                );
            } else {
                let _ = e.print();
            }
            return code.into();
        }
    };
    // The agent runs unattended: its default log level is info (what it delivered, pauses),
    // where a one-shot command's is warn.
    let agent = matches!(cli.command, Command::Sync(_));
    let verbosity = if cli.quiet {
        -1
    } else {
        (cli.verbose.min(10) + u8::from(agent)) as i8
    };
    crate::telemetry::init(verbosity, cli.log_format);
    warn_about_environment();
    match run(cli) {
        Ok(()) => Exit::Success.into(),
        // The reader of stdout went away (`kfr token | head -1`): it has what it wanted, and
        // there is nobody to tell. Every command's data goes through the printer, which turns
        // the broken pipe into this error; it is recognised here, once, and is not a failure.
        Err(err) if stdout_closed(&err) => Exit::Success.into(),
        Err(err) => {
            if err.downcast_ref::<error::Reported>().is_none() {
                if crate::telemetry::json() {
                    // A log shipper reading JSON lines gets the error as one more JSON line.
                    tracing::error!(
                        error = %err,
                        causes = ?err.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>(),
                        hint = report::find_hint(&err).unwrap_or_default(),
                        exit_code = report::exit_code(&err) as u8,
                        "kfr stopped with an error"
                    );
                } else {
                    eprint!("{}", report::render(&err));
                }
            }
            report::exit_code(&err).into()
        }
    }
}

/// Whether JSON log lines were asked for, read from the raw command line and the environment
/// (for an error before the command line could be parsed).
fn json_logs_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.windows(2).any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json");
    flag || std::env::var(crate::env_vars::KFR_LOG_FORMAT).is_ok_and(|v| v == "json")
}

/// Whether an error is stdout being closed under the command ([`printer::StdoutClosed`]). Only
/// the printer's: a broken pipe elsewhere (a connection to KFR) is a real failure.
fn stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<printer::StdoutClosed>().is_some())
}

/// Loads (or creates) the installation's pseudonym key and installs it, so person identifiers in
/// this run's logs carry the same pseudonyms `kfr pseudonym` prints. Call before anything logs a
/// customer.
pub(crate) fn install_pseudonyms(settings: &config::Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let key_file = &settings.pseudonym_key_file;
    let p = crate::ids::Pseudonymizer::load_or_create(key_file).with_context(|| {
        format!(
            "loading the pseudonym key (pseudonym_key_file = {})",
            key_file.display()
        )
    })?;
    crate::ids::install_pseudonymizer(p);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let load = || {
        let settings = config::Settings::load(cli.config.as_deref(), &cli.overrides)?;
        if let (Some(local), Some(used)) = (&settings.shadowed_local_config, &settings.config_file) {
            tracing::warn!(
                "{} is not read: this host's installation configuration {} is; give --config {} to use the other",
                local.display(),
                used.display(),
                local.display()
            );
        }
        Ok::<_, config::ConfigError>(settings)
    };
    // Every command's output goes through one printer, which honours -q, -v and NO_COLOR.
    let printer = || printer::Printer::new(cli.quiet, cli.verbose);
    match &cli.command {
        Command::Token(args) => runtime()?.block_on(token::run(load()?, args, printer())),
        Command::Doctor(args) => runtime()?.block_on(doctor::run(load()?, args.json, printer())),
        Command::Certs(CertsCommand::Local(args)) => {
            let org_number = cli.overrides.org_number.clone().ok_or_else(|| {
                error::UsageError::new(
                    "`certs local` needs --org-number ORGNR: the organisation number put in the certificate",
                )
            })?;
            certs::run(
                &CertsLocalArgs {
                    org_number,
                    ..args.clone()
                },
                &printer(),
            )
        }
        Command::Mock(args) => runtime()?.block_on(mock::run(args, cli.overrides.env.as_deref())),
        Command::Config(ConfigCommand::Show { json }) => config_show::run(&load()?, *json, &printer()),
        Command::Load(args) => runtime()?.block_on(load::run(load()?, args, printer())),
        Command::Add(args) => runtime()?.block_on(relationship::add(load()?, args, printer())),
        Command::Remove(args) => runtime()?.block_on(relationship::remove(load()?, args, printer())),
        Command::Lookup(args) => runtime()?.block_on(relationship::lookup(load()?, args, printer())),
        Command::Validate(args) => validate::run(&load()?, args),
        Command::Pseudonym(args) => pseudonym::run(&load()?, args, &printer()),
        Command::Checklist(args) => runtime()?.block_on(checklist::run(load()?, args, printer())),
        // Neither reads the configuration: a broken kfr.toml must not stop shell set-up.
        Command::Completions(args) => completions::run(args, &printer()),
        Command::Man(args) => man::run(args, &printer()),
        Command::Sync(args) => runtime()?.block_on(sync::run(load()?, args, printer())),
        Command::Enqueue(a) => runtime()?.block_on(outbox::enqueue(&load()?, a, &printer())),
        Command::Outbox(OutboxCommand::Status(a)) => {
            let settings = load()?;
            runtime()?.block_on(outbox::status(&settings, a.state.as_deref(), a.json, &printer()))
        }
        Command::Dlq(cmd) => {
            let settings = load()?;
            let rt = runtime()?;
            match cmd {
                DlqCommand::List(a) => rt.block_on(outbox::dlq_list(&settings, a.state.as_deref(), a.json, &printer())),
                DlqCommand::Retry { seq, all, store, who } => {
                    let which = match (seq, all) {
                        (Some(s), false) => crate::store::DeadLetters::One(*s),
                        _ => crate::store::DeadLetters::All,
                    };
                    let action = outbox::operator(who.actor.as_deref(), who.reason.as_deref());
                    rt.block_on(outbox::dlq_act(
                        &settings,
                        store.state.as_deref(),
                        which,
                        true,
                        action,
                        store.json,
                        &printer(),
                    ))
                }
                DlqCommand::Drop { seq, store, who } => {
                    let action = outbox::operator(who.actor.as_deref(), who.reason.as_deref());
                    rt.block_on(outbox::dlq_act(
                        &settings,
                        store.state.as_deref(),
                        crate::store::DeadLetters::One(*seq),
                        false,
                        action,
                        store.json,
                        &printer(),
                    ))
                }
            }
        }
        Command::History(a) => runtime()?.block_on(history::run(&load()?, a, &printer())),
        Command::Verify(a) => runtime()?.block_on(verify::run(&load()?, a, &printer())),
        Command::Reconcile(a) => runtime()?.block_on(outbox::reconcile(&load()?, a, &printer())),
        // Its own configuration, written next to its throwaway certificates: nothing to set up.
        Command::Demo(args) => runtime()?.block_on(demo::run(args, printer())),
        Command::Status(a) => runtime()?.block_on(status::run(&load()?, a, &printer())),
        Command::Backup(a) => runtime()?.block_on(ops::backup(&load()?, a, &printer())),
        Command::Store(StoreCommand::Migrate(a)) => runtime()?.block_on(ops::migrate(&load()?, a, &printer())),
        Command::Audit(AuditCommand::Export(a)) => runtime()?.block_on(ops::audit_export(&load()?, a, &printer())),
        Command::Outbox(OutboxCommand::Cancel(a)) => runtime()?.block_on(outbox::cancel(&load()?, a, &printer())),
    }
}

/// A misspelt `KFR_*` variable, or a `KFR_LOG` that is not a filter, would otherwise pass
/// silently and leave the operator believing a setting applies (issue 20): each is warned about.
fn warn_about_environment() {
    use crate::env_vars as v;
    if let Ok(f) = std::env::var(v::KFR_LOG)
        && tracing_subscriber::EnvFilter::try_new(&f).is_err()
    {
        tracing::warn!("KFR_LOG={f:?} is not a log filter (e.g. `kfr=debug` or `info`); the default level is used");
    }
    let special = [
        v::KFR_CONFIG,
        v::KFR_SYSTEM_CONFIG,
        v::KFR_CERTIFICATE_PASSWORD,
        v::KFR_LOG,
        v::KFR_LOG_FORMAT,
        v::KFR_TEST_ABORT_AT,
        v::KFR_STATE_HOME,
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let known = special.contains(&name)
            || crate::config::keys()
                .iter()
                .any(|k| crate::config::env_var(k).as_deref() == Some(name));
        if name.starts_with(v::CONFIG_PREFIX) && !known {
            tracing::warn!(
                "{name} is not a variable kfr reads (misspelt?); it is ignored (docs/configuration.md lists them)"
            );
        }
    }
}

//! The `Examples:` sections of `--help`: commands a user can copy, for the commands used most.
//! A test parses every `kfr …` line here with the real argument parser, so an example cannot name
//! a flag that does not exist (integration-tests/agent_output.rs).

pub const KFR: &str = "\
Examples:
  kfr doctor                                  check the installation (certificate, clock, KFR)
  kfr load customers.csv --dry-run            the plan of an initial load, nothing sent
  kfr outbox status                           what the sync agent has still to deliver
  kfr --config ./test.toml token              one command with another configuration

Configuration: --config, else KFR_CONFIG, else /etc/kfr/kfr.toml, else ./kfr.toml.";

pub const TOKEN: &str = "\
Examples:
  kfr token                                   expiry, scope and consumer organisation
  kfr token --json                            the same as one JSON object";

pub const DOCTOR: &str = "\
Examples:
  kfr doctor                                  one line per check; exit 1 when one fails
  kfr doctor --json                           every check as JSON, for a runbook";

pub const LOAD: &str = "\
Examples:
  kfr load customers.csv --dry-run --report plan.md     the plan, to mail before the day
  kfr load customers.csv --report load-report.md        upload and confirm
  kfr load --resume                                     continue after a stop
  kfr load status                                       the jobs and the held operations";

pub const ADD: &str = "\
Examples:
  kfr add 02887510019                         register one relationship
  kfr add 02887510019 --json                  the outcome as JSON";

pub const REMOVE: &str = "\
Examples:
  kfr remove 02887510019                      end a relationship (held while a load ingests)";

pub const CHECKLIST: &str = "\
Examples:
  kfr checklist --report-dir checklist-report           every case; the reports to mail Bits
  kfr checklist --only KFR-01 --report-dir rerun        one case again, into another directory";

pub const SYNC: &str = "\
Examples:
  kfr sync                                    the agent as the installation configures it
  kfr --log-format json sync                  JSON log lines for a log shipper
  kfr sync --stdin                            also take NDJSON events on standard input";

pub const OUTBOX_STATUS: &str = "\
Examples:
  kfr outbox status                           counts, parked customers, the load barrier
  kfr outbox status --json                    the same as JSON";

pub const DLQ_LIST: &str = "\
Examples:
  kfr dlq list                                the dead letters with KFR's answer
  kfr dlq retry 42                            put entry 42 back at the head of its queue
  kfr dlq drop 42 --reason duplicate          give up on it; who and why go to the history";

pub const VERIFY: &str = "\
Examples:
  kfr verify                                  100 customers of the ledger, looked up in KFR
  kfr verify --all --json                     every customer; the differences as JSON
  kfr verify --all --repair                   and queue the corrections for the agent";

pub const HISTORY: &str = "\
Examples:
  kfr history 02887510019                     attempts, KFR's answers and operator actions
  kfr history 02887510019 --json              the same as JSON (identifier masked)";

pub const CERTS_LOCAL: &str = "\
Examples:
  kfr certs local --org-number 916960190 --out local        for `kfr mock` on 127.0.0.1:8080
  kfr certs local --org-number 916960190 --out local --mock-url http://127.0.0.1:18080";

pub const CONFIG_SHOW: &str = "\
Examples:
  kfr config show                             every value and where it came from
  kfr config show --json                      the same as JSON";

pub const MOCK: &str = "\
Examples:
  kfr mock --trust local/ca.pem                          fake Maskinporten and KFR on 127.0.0.1:8080
  kfr mock --trust local/ca.pem --listen 127.0.0.1:18080 --ingest-rate 1000";

pub const LOOKUP: &str = "\
Examples:
  kfr lookup 02887510019                      is the customer registered today?
  kfr lookup 02887510019 --from 2024-01-01 --to 2024-12-31";

pub const VALIDATE: &str = "\
Examples:
  kfr validate 02887510019 916960190          check identifiers offline
  kfr validate --file customers.csv           every line of an export, as the load reads it";

pub const PSEUDONYM: &str = "\
Examples:
  kfr pseudonym 02887510019                   the name the customer has in this host's logs";

pub const ENQUEUE: &str = "\
Examples:
  kfr enqueue add 02887510019                 queue an add for the sync agent
  kfr enqueue remove 02887510019 --event-id core-4712";

pub const RECONCILE: &str = "\
Examples:
  kfr reconcile customers.csv --dry-run       what differs from the ledger, as counts
  kfr reconcile customers.csv                 queue the adds and removes that differ";

pub const DEMO: &str = "\
Examples:
  kfr demo                                    the whole product in about a minute
  kfr demo --keep demo-dir                    keep the store, reports and logs to look at";

pub const STATUS: &str = "\
Examples:
  kfr status                                  one screen: agent, outbox, load, certificates
  kfr status --json                           the same as JSON; exit 1 when something needs attention";

pub const BACKUP: &str = "\
Examples:
  kfr backup /var/backups/kfr/kfr-state-2026-12-07.db     a checked copy (0600) while the agent runs";

pub const AUDIT_EXPORT: &str = "\
Examples:
  kfr audit export --from 2026-01-01 --to 2026-12-31 --format xlsx --output kfr-audit-2026.xlsx
  kfr audit export --from 2026-11-01 --to 2026-11-30 --customer 02887510019 --output c.csv";

pub const OUTBOX_CANCEL: &str = "\
Examples:
  kfr outbox cancel 42 --reason duplicate     cancel pending entry 42; who and why go to the history
  kfr outbox cancel --customer 02887510019 --reason flood   every pending event of one customer
  kfr outbox cancel --event-id core-4712 --actor kari --reason withdrawn";

//! The SQLite store's schema: its migrations, oldest first, and the one step of them SQL alone
//! cannot do. Versions are tracked with `PRAGMA user_version`: [`MIGRATIONS`]`[i]` takes the
//! schema from version `i` to `i + 1`. Migrations are append-only; an edited migration would leave
//! existing stores behind.

use rusqlite::{OptionalExtension as _, params};

/// Schema migrations, oldest first. Append only.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial load jobs, their batches, the ledger and held deletes.
    r#"
    CREATE TABLE load_jobs (
        id            INTEGER PRIMARY KEY,
        input_path    TEXT NOT NULL,
        content_hash  TEXT NOT NULL,      -- sha256 of the input file, hex
        settings      TEXT NOT NULL,      -- JSON: everything that shapes the batches
        status        TEXT NOT NULL CHECK (status IN ('running', 'confirmed')),
        entries       INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        confirmed_at  TEXT
    );
    CREATE TABLE load_batches (
        job_id          INTEGER NOT NULL REFERENCES load_jobs(id),
        seq             INTEGER NOT NULL,  -- 1-based, upload order
        first_entry     INTEGER NOT NULL,  -- index into the job's planned entries
        entry_count     INTEGER NOT NULL,
        bytes           INTEGER NOT NULL,  -- exact encoded body size
        correlation_id  TEXT NOT NULL,     -- fixed at planning: every attempt carries the same one
        status          TEXT NOT NULL CHECK (status IN ('planned', 'uploading', 'accepted', 'confirmed')),
        uploading_at    TEXT,
        accepted_at     TEXT,
        confirmed_at    TEXT,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE ledger (
        id              INTEGER PRIMARY KEY,
        customer_id     TEXT NOT NULL,     -- in full: the institution's own store (mode 0600)
        start_date      TEXT,              -- YYYY-MM-DD; NULL = KFR's default (day of ingestion)
        how             TEXT NOT NULL CHECK (how IN ('batch', 'add')),
        at              TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        job_id          INTEGER REFERENCES load_jobs(id),
        batch_seq       INTEGER
    );
    CREATE INDEX ledger_customer ON ledger(customer_id);
    CREATE INDEX ledger_batch ON ledger(job_id, batch_seq);
    CREATE TABLE held_deletes (
        id              INTEGER PRIMARY KEY,
        customer_id     TEXT NOT NULL,
        queued_at       TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        sent_at         TEXT,
        outcome         TEXT               -- removed | not_found | error: …
    );
    "#,
    // 2: the held deletes become held operations, one queue per customer (adds wait behind an
    // earlier held operation on the same customer; docs/specs/barrier.md). Rows keep their ids,
    // so issue order survives; a delete already sent is settled with its outcome.
    r#"
    CREATE TABLE held_operations (
        id              INTEGER PRIMARY KEY,  -- issue order
        customer_id     TEXT NOT NULL,        -- in full: the institution's own store (mode 0600)
        operation       TEXT NOT NULL CHECK (operation IN ('add', 'remove')),
        correlation_id  TEXT NOT NULL,        -- given when queued, sent with every attempt
        queued_at       TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('queued', 'claimed', 'parked', 'settled')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        claimed_at      TEXT,
        settled_at      TEXT,
        outcome         TEXT                  -- added | already_present | removed | not_found
    );
    CREATE INDEX held_operations_customer ON held_operations(customer_id, state);
    INSERT INTO held_operations (id, customer_id, operation, correlation_id, queued_at, state, settled_at, outcome)
        SELECT id, customer_id, 'remove', correlation_id, queued_at,
               CASE WHEN sent_at IS NULL THEN 'queued' ELSE 'settled' END, sent_at, outcome
        FROM held_deletes ORDER BY id;
    DROP TABLE held_deletes;
    "#,
    // 3: what confirms a batch and what it cost (issue 9). `witness` is the offset in the batch
    // of the entry chosen before the upload because it was not visible then (NULL: none was
    // found, or a batch planned before this version); `confirmed_by` says how the batch was
    // confirmed; `resends` counts uploads repeated after an upload whose fate was unknown.
    r#"
    ALTER TABLE load_batches ADD COLUMN witness INTEGER;
    ALTER TABLE load_batches ADD COLUMN witness_checked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE load_batches ADD COLUMN confirmed_by TEXT;
    ALTER TABLE load_batches ADD COLUMN resends INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: the outbox (docs/specs/outbox.md). Load jobs get their register (NULL: a job planned
    // before this version, which holds removes of every register, the safe reading) and the
    // status `abandoned`; SQLite cannot alter a CHECK, so the table is rebuilt the documented
    // way (new table, copy, drop, rename; foreign keys are off during migrations, see
    // `Store::migrate`). Unsettled held operations move into the outbox, keeping their ids as
    // seq so issue order survives; settled ones stay in `held_operations` as history.
    r#"
    CREATE TABLE load_jobs_v4 (
        id            INTEGER PRIMARY KEY,
        input_path    TEXT NOT NULL,
        content_hash  TEXT NOT NULL,
        settings      TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('running', 'confirmed', 'abandoned')),
        entries       INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        confirmed_at  TEXT,
        register      TEXT,               -- Register::key; NULL: every register
        abandoned_at  TEXT
    );
    INSERT INTO load_jobs_v4 (id, input_path, content_hash, settings, status, entries, created_at, updated_at, confirmed_at)
        SELECT id, input_path, content_hash, settings, status, entries, created_at, updated_at, confirmed_at
        FROM load_jobs ORDER BY id;
    DROP TABLE load_jobs;
    ALTER TABLE load_jobs_v4 RENAME TO load_jobs;
    CREATE INDEX load_jobs_status ON load_jobs(status, register);

    CREATE TABLE outbox (
        seq                    INTEGER PRIMARY KEY AUTOINCREMENT,  -- issue order; never reused
        register               TEXT NOT NULL,    -- Register::key ('' : a held operation of a job of unknown register)
        event_id               TEXT NOT NULL UNIQUE,
        op                     TEXT NOT NULL CHECK (op IN ('add', 'remove')),
        customer_id            TEXT NOT NULL,    -- in full: the institution's own store (mode 0600)
        start_date             TEXT,
        occurred_at            TEXT NOT NULL,
        source                 TEXT NOT NULL,
        received_at            TEXT NOT NULL,
        correlation_id         TEXT NOT NULL,
        state                  TEXT NOT NULL CHECK (state IN
                                   ('pending', 'in_flight', 'accepted', 'delivered', 'dead_lettered', 'dropped')),
        head                   INTEGER CHECK (head = 1),  -- 1: its customer's oldest unfinished event
        claimer                TEXT,             -- who holds it in flight: 'queue' (kfr load) or NULL
        attempts               INTEGER NOT NULL DEFAULT 0,
        next_attempt_at        TEXT,
        failing_since          TEXT,
        last_error             TEXT,
        batch_correlation_id   TEXT,
        accepted_at            TEXT,
        finished_at            TEXT,
        delivery               TEXT,             -- how it reached the wanted state
        echoed_correlation_id  TEXT,
        rejection              TEXT,             -- JSON: KFR's answer when dead-lettered
        dead_at                TEXT
    );
    -- A customer's queue, and its next event when the head finishes.
    CREATE INDEX outbox_customer ON outbox(register, customer_id, seq);
    -- Heads by state: claim_ready, accepted, recover, dead letters, parked counts.
    CREATE INDEX outbox_heads ON outbox(register, state, seq) WHERE head = 1;
    CREATE INDEX outbox_batch ON outbox(batch_correlation_id) WHERE batch_correlation_id IS NOT NULL;
    CREATE INDEX outbox_finished ON outbox(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX outbox_held ON outbox(seq)
        WHERE source IN ('kfr remove', 'kfr add') AND finished_at IS NULL;

    -- Counts per register and state, kept by triggers so `status` reads a few rows, not the table.
    CREATE TABLE outbox_counts (
        register  TEXT NOT NULL,
        state     TEXT NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (register, state)
    ) WITHOUT ROWID;
    CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox BEGIN
        INSERT INTO outbox_counts (register, state, n) VALUES (new.register, new.state, 1)
            ON CONFLICT (register, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_count_update AFTER UPDATE OF state, register ON outbox
        WHEN old.state != new.state OR old.register != new.register BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE register = old.register AND state = old.state;
        INSERT INTO outbox_counts (register, state, n) VALUES (new.register, new.state, 1)
            ON CONFLICT (register, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE register = old.register AND state = old.state;
    END;

    -- What this tool last made KFR hold, per register and customer; changed in the same
    -- transaction as the outcome that changed it.
    CREATE TABLE ledger_current (
        register        TEXT NOT NULL,
        customer_id     TEXT NOT NULL,     -- in full: the institution's own store (mode 0600)
        state           TEXT NOT NULL CHECK (state IN ('active', 'ended')),
        start_date      TEXT,
        since           TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        PRIMARY KEY (register, customer_id)
    ) WITHOUT ROWID;

    INSERT INTO outbox (seq, register, event_id, op, customer_id, occurred_at, source, received_at,
                        correlation_id, state, attempts, last_error)
        SELECT id, '', 'held-' || id || '-' || correlation_id, operation, customer_id, queued_at,
               'kfr ' || operation, queued_at, correlation_id, 'pending', attempts, last_error
        FROM held_operations WHERE state != 'settled' ORDER BY id;
    UPDATE outbox SET head = 1 WHERE seq IN (SELECT MIN(seq) FROM outbox GROUP BY register, customer_id);
    DELETE FROM held_operations WHERE state != 'settled';
    "#,
    // 5: one store interface (issue 18). Claims carry their epoch and expiry; the schema allows
    // one head per (register, customer), so a second head fails loudly instead of reordering a
    // customer; delivery leases with their epoch; the append-only history. Held operations a
    // load parked with a next attempt no clock reaches become dead letters, so `kfr dlq list`
    // shows them and an operator decides (they were invisible before).
    r#"
    ALTER TABLE outbox ADD COLUMN claim_epoch INTEGER;
    ALTER TABLE outbox ADD COLUMN claimed_until TEXT;
    CREATE UNIQUE INDEX outbox_one_head ON outbox(register, customer_id) WHERE head = 1;
    UPDATE outbox SET state = 'dead_lettered', next_attempt_at = NULL, dead_at = received_at,
           rejection = json_object('status', NULL, 'code', NULL, 'body', COALESCE(last_error, ''),
                                   'reason', 'failed while a load sent it (parked before kfr recorded refusals): '
                                             || COALESCE(last_error, 'no detail'))
     WHERE state = 'pending' AND next_attempt_at LIKE '9999-%';
    CREATE TABLE leases (
        register  TEXT PRIMARY KEY,
        holder    TEXT NOT NULL,
        epoch     INTEGER NOT NULL,
        until     TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE history (
        id              INTEGER PRIMARY KEY,
        at              TEXT NOT NULL,
        register        TEXT NOT NULL,
        customer_id     TEXT NOT NULL,     -- in full: the institution's own store (mode 0600)
        seq             INTEGER,
        event_id        TEXT,
        op              TEXT,
        correlation_id  TEXT,
        kind            TEXT NOT NULL CHECK (kind IN ('attempt', 'operator')),
        outcome         TEXT NOT NULL,
        status          INTEGER,
        code            TEXT,
        detail          TEXT,
        actor           TEXT
    );
    CREATE INDEX history_customer ON history(customer_id, at);
    CREATE INDEX history_at ON history(at);
    "#,
    // 6: operations (issue 21). Each agent's latest heartbeat, for `kfr status`; the history's
    // last delivery of a register read by index, not by scanning years of lines.
    r#"
    CREATE TABLE heartbeats (
        register    TEXT NOT NULL,
        holder      TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('leader', 'standby', 'stopped')),
        unready     TEXT NOT NULL,             -- JSON array of texts, empty when ready
        version     TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        at          TEXT NOT NULL,
        PRIMARY KEY (register, holder)
    ) WITHOUT ROWID;
    CREATE INDEX history_delivered ON history(register, at) WHERE outcome LIKE 'delivered%';
    "#,
    // 7: where each source stopped reading (issue 18): a source that reads from somewhere that
    // keeps its own order (the core system's outbox table, say) stores its position here, in
    // the transaction of the events it read, so a restart neither skips nor repeats.
    r#"
    CREATE TABLE source_cursors (
        source  TEXT PRIMARY KEY,
        cursor  TEXT NOT NULL,
        at      TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
];

/// The register named by a job's settings JSON (`environment`, `kfr_base_url`, `org_number`), if
/// it names all three.
pub(crate) fn register_of_settings(settings: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(settings).ok()?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    Some(
        crate::store::Register {
            environment: field("environment")?,
            base_url: field("kfr_base_url")?,
            org_number: field("org_number")?,
        }
        .key(),
    )
}

/// Migration 4's part SQL cannot do: the register of every job planned before it, from its
/// settings; then held operations moved into the outbox without a register take the running
/// job's (they were held by it). What stays unknown stays NULL / ''.
pub(crate) fn fill_registers(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let jobs: Vec<(i64, String)> = {
        let mut stmt = tx.prepare("SELECT id, settings FROM load_jobs WHERE register IS NULL")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (id, settings) in jobs {
        if let Some(register) = register_of_settings(&settings) {
            tx.execute(
                "UPDATE load_jobs SET register = ?1 WHERE id = ?2",
                params![register, id],
            )?;
        }
    }
    let running: Option<Option<String>> = tx
        .query_row(
            "SELECT register FROM load_jobs WHERE status = 'running' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(Some(register)) = running {
        tx.execute("UPDATE outbox SET register = ?1 WHERE register = ''", [register])?;
    }
    Ok(())
}

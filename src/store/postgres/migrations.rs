//! The PostgreSQL schema, as numbered migrations recorded in `kfr_migrations`.
//!
//! The tables mirror the SQLite backend's (same names, same meaning; docs/specs/outbox.md) in
//! PostgreSQL's own types: `timestamptz` for instants, `date` for start dates, `uuid` for
//! CorrelationIDs, `jsonb` for KFR's answers. What differs, and why:
//! - No counter table: counts come from the indexes (`outbox_state`), since a hot counter row
//!   would serialise every writer on two hosts.
//! - `seq` is an identity column: issue order within a customer is guaranteed by the
//!   per-customer advisory lock every enqueue takes (one enqueuer of a customer at a time, so
//!   a later event of a customer always gets a larger seq and commits after the earlier one).
//! - One head per customer is the partial unique index `outbox_one_head`, as on SQLite.
//!
//! A database whose newest migration is above [`MIGRATIONS`]' length was written by a newer kfr
//! and is refused (see `db`).

/// Migration `i + 1` is `MIGRATIONS[i]`; each runs in the transaction that records it.
pub const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE load_jobs (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        input_path    text NOT NULL,
        content_hash  text NOT NULL,
        settings      text NOT NULL,
        status        text NOT NULL CHECK (status IN ('running', 'confirmed', 'abandoned')),
        entries       bigint NOT NULL,
        created_at    timestamptz NOT NULL,
        updated_at    timestamptz NOT NULL,
        confirmed_at  timestamptz,
        register      text,               -- Register::key; NULL: every register
        abandoned_at  timestamptz
    );
    CREATE INDEX load_jobs_status ON load_jobs (status, register);

    CREATE TABLE load_batches (
        job_id           bigint NOT NULL REFERENCES load_jobs (id),
        seq              integer NOT NULL,  -- 1-based, upload order
        first_entry      bigint NOT NULL,   -- index into the job's planned entries
        entry_count      bigint NOT NULL,
        bytes            bigint NOT NULL,   -- exact encoded body size
        correlation_id   uuid NOT NULL,     -- fixed at planning: every attempt carries it
        status           text NOT NULL CHECK (status IN ('planned', 'uploading', 'accepted', 'confirmed')),
        uploading_at     timestamptz,
        accepted_at      timestamptz,
        confirmed_at     timestamptz,
        witness          bigint,
        witness_checked  boolean NOT NULL DEFAULT false,
        confirmed_by     text,
        resends          integer NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, seq)
    );

    CREATE TABLE ledger (
        id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        customer_id     text NOT NULL,     -- in full: the institution's own store
        start_date      date,              -- NULL: KFR's default (the day of ingestion)
        how             text NOT NULL CHECK (how IN ('batch', 'add')),
        at              timestamptz NOT NULL,
        correlation_id  uuid NOT NULL,
        job_id          bigint REFERENCES load_jobs (id),
        batch_seq       integer
    );
    CREATE INDEX ledger_customer ON ledger (customer_id);
    CREATE INDEX ledger_batch ON ledger (job_id, batch_seq);

    CREATE TABLE ledger_current (
        register        text NOT NULL,
        customer_id     text COLLATE "C" NOT NULL,  -- byte order, as SQLite's: walked in pages
        state           text NOT NULL CHECK (state IN ('active', 'ended')),
        start_date      date,
        since           timestamptz NOT NULL,
        correlation_id  uuid NOT NULL,
        PRIMARY KEY (register, customer_id)
    );

    CREATE TABLE outbox (
        seq                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- issue order
        register               text NOT NULL,
        event_id               text NOT NULL UNIQUE,
        op                     text NOT NULL CHECK (op IN ('add', 'remove')),
        customer_id            text NOT NULL,
        start_date             date,
        occurred_at            timestamptz NOT NULL,
        source                 text NOT NULL,
        received_at            timestamptz NOT NULL,
        correlation_id         uuid NOT NULL,
        state                  text NOT NULL CHECK (state IN
                                   ('pending', 'in_flight', 'accepted', 'delivered', 'dead_lettered', 'dropped')),
        head                   boolean CHECK (head),  -- true: its customer's oldest unfinished event
        claimer                text,
        claim_epoch            bigint,
        claimed_until          timestamptz,
        attempts               integer NOT NULL DEFAULT 0,
        next_attempt_at        timestamptz,
        failing_since          timestamptz,
        last_error             text,
        batch_correlation_id   uuid,
        accepted_at            timestamptz,
        finished_at            timestamptz,
        delivery               text,
        echoed_correlation_id  text,
        rejection              jsonb,
        dead_at                timestamptz
    );
    CREATE INDEX outbox_customer ON outbox (register, customer_id, seq);
    CREATE INDEX outbox_heads ON outbox (register, state, seq) WHERE head;
    CREATE UNIQUE INDEX outbox_one_head ON outbox (register, customer_id) WHERE head;
    CREATE INDEX outbox_batch ON outbox (batch_correlation_id) WHERE batch_correlation_id IS NOT NULL;
    CREATE INDEX outbox_finished ON outbox (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX outbox_state ON outbox (register, state);
    CREATE INDEX outbox_unfinished ON outbox (register, customer_id) WHERE finished_at IS NULL;
    -- The operations `kfr add` / `kfr remove` left queued (a load's held operations), oldest first.
    CREATE INDEX outbox_held ON outbox (register, seq)
        WHERE source IN ('kfr add', 'kfr remove') AND finished_at IS NULL;

    CREATE TABLE leases (
        register  text PRIMARY KEY,
        holder    text NOT NULL,
        epoch     bigint NOT NULL,
        until     timestamptz NOT NULL,
        -- Whether the holder holds the lease's advisory lock: only then does a free lock mean
        -- its session ended (a holder that took over from a frozen one has none until that
        -- one lets go).
        locked    boolean NOT NULL DEFAULT false
    );

    -- Who holds the store's one load writer (the lock itself is a session advisory lock).
    CREATE TABLE writer (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        holder  text NOT NULL
    );

    CREATE TABLE history (
        id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at              timestamptz NOT NULL,
        register        text NOT NULL,
        customer_id     text NOT NULL,
        seq             bigint,
        event_id        text,
        op              text,
        correlation_id  uuid,
        kind            text NOT NULL CHECK (kind IN ('attempt', 'operator')),
        outcome         text NOT NULL,
        status          integer,
        code            text,
        detail          text,
        actor           text
    );
    CREATE INDEX history_customer ON history (customer_id, at);
    CREATE INDEX history_at ON history (at);
    CREATE INDEX history_delivered ON history (register, at) WHERE outcome LIKE 'delivered%';

    CREATE TABLE heartbeats (
        register    text NOT NULL,
        holder      text NOT NULL,
        role        text NOT NULL CHECK (role IN ('leader', 'standby', 'stopped')),
        unready     jsonb NOT NULL,       -- array of texts, empty when ready
        version     text NOT NULL,
        started_at  timestamptz NOT NULL,
        at          timestamptz NOT NULL,
        PRIMARY KEY (register, holder)
    );

    CREATE TABLE source_cursors (
        source  text PRIMARY KEY,
        cursor  text NOT NULL,
        at      timestamptz NOT NULL
    );
"#,
    // 2: the claim's own index, and the outbox vacuumed and analysed as it churns.
    //
    // The claim (`WHERE head AND register = $1 AND state = 'pending' ORDER BY seq LIMIT n`)
    // matched `outbox_heads` and `outbox_state` equally on paper; with the statistics of a table
    // that was just filled (a first burst, a backlog after an outage) the planner took
    // `outbox_state`, read every pending event and sorted them: 7–13 ms a claim at 10,000 pending
    // in `bench/sync/throughput.sh`, growing with the backlog. This index holds exactly the
    // events a claim may take, in the order it takes them, so no statistics can make another one
    // look cheaper. Every delivery leaves dead row versions behind in the indexes a claim walks;
    // the server's defaults vacuum a table once a fifth of it changed, which for a queue table
    // is far too late.
    r#"
    CREATE INDEX outbox_ready ON outbox (register, seq) WHERE head AND state = 'pending';
    ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                            autovacuum_analyze_scale_factor = 0.01, autovacuum_analyze_threshold = 1000,
                            autovacuum_vacuum_cost_delay = 0);
"#,
];

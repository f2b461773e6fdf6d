//! The PostgreSQL counterpart of the SQLite backend's `claims_and_counts_use_indexes_not_scans`
//! (`store/sqlite/outbox.rs`): the statements the backend runs on its hot paths — enqueue,
//! claim, settle and the head moving on, retries, dead letters and `kfr dlq`, counts, recovery,
//! purge, a caller's own claim, `kfr history`, cancel — read the outbox and the history through
//! their indexes, never row by row, so a backlog of a million events costs what a small one does.
//!
//! The plans are not of statement texts copied here: the server explains every statement the
//! backend actually sends (`auto_explain` loaded into the test database's sessions, its plans
//! sent to the session as notices and kept by the test's connection), so the check follows the
//! backend's SQL wherever it changes. Sequential scans are switched off for those sessions
//! (`enable_seqscan = off`), so the planner reads a table whole only when no index can serve the
//! statement at all — which this fails on.
//!
//! An index can be read whole too (PostgreSQL 15 has no skip scan): walked from end to end for
//! its order, or searched by a column that is not its first. That is as slow as a table scan
//! once the outbox holds a long retention of finished events, so it fails here as well, except
//! through the partial index of the held operations (`outbox_held`: a handful of rows, as the
//! SQLite test allows) and the statements in [`KNOWN_WHOLE_READS`], each listed with its way
//! out; the list can only shrink (a listed statement that no longer reads whole fails the test
//! until it is removed from the list).

#[cfg(test)]
mod tests {
    use crate::pg::cluster::{self, TestDb};
    use crate::store::backend::{History as _, Operations as _, Outbox as _};
    use crate::store::conformance::{R, agent, delivered, ev, operator, rejection, t};
    use crate::store::postgres::PgBackend;
    use crate::store::types::*;
    use std::sync::{Arc, Mutex};

    /// The tables that grow with the backlog and the years: read whole, they would make every
    /// statement slower as they grow.
    const GROWING: [&str; 2] = ["outbox", "history"];

    /// Partial indexes small enough to read whole (only a load's held operations are in it).
    const SMALL_PARTIAL: [&str; 1] = ["outbox_held"];

    /// Statements (by the start of their text, whitespace collapsed) known to read an index of
    /// a growing table whole, and their way out. The statements live in `outbox.rs`, which is
    /// being reworked for prepared statements; each fix is an index or a rewrite there.
    const KNOWN_WHOLE_READS: &[(&str, &str)] = &[
        (
            // Outbox::status, the oldest unfinished event: walks the primary key in seq order
            // past every finished event still kept (retention) until it meets a head.
            "SELECT received_at FROM outbox WHERE head",
            "an index on (register, seq) WHERE head, or reading the oldest head per state through outbox_heads",
        ),
        (
            // `kfr dlq list` (Outbox::dead_letters(None)): searches outbox_state (register, state)
            // by its second column, i.e. reads the whole index.
            "SELECT h.seq, h.register, h.event_id",
            "an index on (seq) WHERE head AND state = 'dead_lettered' (dead letters only), or one query per register through outbox_heads",
        ),
        (
            // Operations::last_delivery (`kfr status`): max(at) walked down history_at with the
            // register and outcome as a filter, not the partial index history_delivered made for
            // it (also when written `ORDER BY at DESC LIMIT 1`: tried). Quick while the newest
            // lines are deliveries; a register whose recent lines are all failures reads on.
            "SELECT max(at) FROM history",
            "keep each register's last delivery in a row of its own, written with the delivery (as the heartbeat is kept)",
        ),
    ];

    /// What the test database's indexes on the growing tables are: name → (first column,
    /// partial).
    type Indexes = std::collections::HashMap<String, (String, bool)>;

    fn indexes(db: &TestDb) -> Indexes {
        db.admin()
            .query(
                "SELECT ic.relname, a.attname, i.indpred IS NOT NULL
                 FROM pg_index i
                 JOIN pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_class t ON t.oid = i.indrelid
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                 WHERE t.relname = ANY($1)",
                &[&GROWING.as_slice()],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect()
    }

    /// A store whose connection receives the plan of every statement it runs.
    struct Explained {
        store: PgBackend,
        plans: Arc<Mutex<Vec<String>>>,
        db: TestDb,
    }

    impl Explained {
        fn new() -> Explained {
            let db = cluster::database();
            // auto_explain's settings are the superuser's to make; for the database, every new
            // session of it gets them (the store's own connection included).
            db.admin()
                .batch_execute(&format!(
                    "ALTER DATABASE {name} SET session_preload_libraries = 'auto_explain';
                     ALTER DATABASE {name} SET auto_explain.log_min_duration = 0;
                     ALTER DATABASE {name} SET auto_explain.log_level = 'notice';
                     ALTER DATABASE {name} SET auto_explain.log_format = 'json';
                     ALTER DATABASE {name} SET auto_explain.log_nested_statements = on;
                     ALTER DATABASE {name} SET enable_seqscan = off;",
                    name = db.name
                ))
                .unwrap();
            let target = crate::pg::Target {
                url: db.url.clone(),
                password_file: Some(db.password_file.clone()),
                ca_file: None,
            };
            // kfr's schema made as ever, then the store on a connection like its own that
            // keeps the notices.
            drop(PgBackend::open(&target).unwrap());
            let plans = Arc::new(Mutex::new(vec![]));
            let sink = plans.clone();
            let mut config = postgres::Config::from(target.config("kfr-plans").unwrap());
            config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
            let mut client = config.connect(postgres::NoTls).unwrap();
            client.batch_execute("SET TIME ZONE 'UTC'").unwrap();
            let store = crate::store::postgres::on_connection(client, &target);
            Explained { store, plans, db }
        }

        /// Runs `f`, noting in `offenders` each statement it ran that read a growing table (or
        /// an index of one) whole, with the offending plan nodes; fails if `f` ran no statement
        /// at all (the plans did not arrive).
        fn check<T>(&mut self, offenders: &mut Vec<Whole>, what: &str, f: impl FnOnce(&mut PgBackend) -> T) -> T {
            self.plans.lock().unwrap().clear();
            let out = f(&mut self.store);
            let plans = std::mem::take(&mut *self.plans.lock().unwrap());
            assert!(!plans.is_empty(), "{what}: no plan arrived (is auto_explain loaded?)");
            let indexes = indexes(&self.db);
            for notice in &plans {
                if let Some(mut whole) = whole_reads(notice, &indexes) {
                    whole.what = what.to_string();
                    offenders.push(whole);
                }
            }
            out
        }
    }

    /// A statement that read a growing table or one of its indexes whole.
    #[derive(Debug)]
    struct Whole {
        what: String,
        statement: String,
        nodes: Vec<String>,
    }

    impl std::fmt::Display for Whole {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{}: {}\n  reads whole: {}",
                self.what,
                self.statement,
                self.nodes.join("; ")
            )
        }
    }

    /// The plan in one auto_explain notice, if a node of it reads a growing table or an index
    /// of one whole.
    fn whole_reads(notice: &str, indexes: &Indexes) -> Option<Whole> {
        let json = &notice[notice.find('{').unwrap_or_else(|| panic!("not a JSON plan: {notice}"))..];
        let explained: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON plan ({e}): {notice}"));
        let mut nodes = vec![];
        walk(&explained["Plan"], indexes, &mut nodes);
        let statement = explained["Query Text"].as_str().unwrap_or("?");
        (!nodes.is_empty()).then(|| Whole {
            what: String::new(),
            statement: statement.split_whitespace().collect::<Vec<_>>().join(" "),
            nodes,
        })
    }

    fn walk(node: &serde_json::Value, indexes: &Indexes, found: &mut Vec<String>) {
        let kind = node["Node Type"].as_str().unwrap_or("");
        let relation = node["Relation Name"].as_str().unwrap_or("");
        if kind == "Seq Scan" && GROWING.contains(&relation) {
            found.push(format!("Seq Scan on {relation}"));
        }
        if let Some(index) = node["Index Name"].as_str()
            && let Some((first, _partial)) = indexes.get(index)
            && !SMALL_PARTIAL.contains(&index)
            && !searches_by(node["Index Cond"].as_str().unwrap_or(""), first)
        {
            let cond = node["Index Cond"].as_str().unwrap_or("none");
            found.push(format!(
                "{kind} of {index} (first column {first}; index condition {cond})"
            ));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, indexes, found);
        }
    }

    /// Whether an index condition narrows the index by its first column `first` (a comparison,
    /// `= ANY`): only then is the index not read from end to end.
    fn searches_by(cond: &str, first: &str) -> bool {
        ["=", "<", ">", "<=", ">="]
            .iter()
            .any(|op| cond.contains(&format!("({first} {op} ")))
    }

    /// Customers in the filled store. The planner chooses by the table's statistics: with too
    /// few rows, reading a whole index of heads costs it less than a lookup per row, which it
    /// would never choose on a backlog of any size; with this many it chooses as it would there.
    const CUSTOMERS: usize = 3_000;

    /// A store after a while: [`CUSTOMERS`] customers with 3 events each, two of every
    /// customer's delivered (finished events kept, history lines, the ledger), and of the third
    /// a backlog: a third delivered, some dead letters, some retried, the rest pending.
    fn fill(s: &mut PgBackend) {
        let n = CUSTOMERS;
        for chunk in 0..3 * n / 1_000 {
            let events: Vec<NewEvent> = (0..1_000)
                .map(|i| {
                    let k = chunk * 1_000 + i;
                    let op = if k % 2 == 0 { Operation::Add } else { Operation::Remove };
                    ev(&format!("fill-{k}"), &format!("customer-{}", k % n), op)
                })
                .collect();
            s.enqueue(R, &events, None, t(0)).unwrap();
        }
        for _ in 0..2 {
            let got = s.claim_ready(R, &agent(), t(1), n).unwrap();
            assert_eq!(got.len(), n, "every customer's head");
            s.settle(&got.iter().map(|e| delivered(e.seq, e.op, 2)).collect::<Vec<_>>())
                .unwrap();
        }
        let got = s.claim_ready(R, &agent(), t(1), n).unwrap();
        let (done, rest) = got.split_at(n / 3);
        s.settle(&done.iter().map(|e| delivered(e.seq, e.op, 2)).collect::<Vec<_>>())
            .unwrap();
        for e in &rest[..20] {
            s.dead_letter(e.seq, &rejection(), t(2)).unwrap();
        }
        for e in &rest[20..60] {
            s.retry_later(e.seq, t(3), "HTTP 503", t(2)).unwrap();
        }
        s.release(&rest[60..].iter().map(|e| e.seq).collect::<Vec<_>>(), t(2))
            .unwrap();
        s.client.batch_execute("ANALYZE").unwrap();
    }

    /// The check itself can fail: a statement that no index serves is caught, and so is one
    /// that walks an index from end to end or searches it by a column that is not its first.
    #[test]
    fn a_statement_reading_the_outbox_or_an_index_whole_is_caught() {
        let mut e = Explained::new();
        fill(&mut e.store);
        let mut found = vec![];
        e.check(&mut found, "a filter on an unindexed column", |s| {
            s.client
                .query("SELECT count(*) FROM outbox WHERE last_error = 'x'", &[])
                .unwrap()
        });
        e.check(&mut found, "a walk in seq order", |s| {
            s.client
                .query(
                    "SELECT seq FROM outbox WHERE last_error = 'x' ORDER BY seq LIMIT 1",
                    &[],
                )
                .unwrap()
        });
        e.check(&mut found, "by the second column", |s| {
            s.client
                .query("SELECT count(*) FROM outbox WHERE state = 'dead_lettered'", &[])
                .unwrap()
        });
        e.check(&mut found, "by the first column", |s| {
            s.client.query("SELECT seq FROM outbox WHERE seq = 5", &[]).unwrap()
        });
        let nodes: Vec<String> = found
            .iter()
            .map(|w| format!("{}: {}", w.what, w.nodes.join("; ")))
            .collect();
        assert_eq!(nodes.len(), 3, "{nodes:#?}");
        assert!(nodes[0].contains("Seq Scan on outbox"), "{nodes:#?}");
        assert!(
            nodes[1].starts_with("a walk in seq order: Index Scan of outbox_pkey"),
            "{nodes:#?}"
        );
        assert!(nodes[2].starts_with("by the second column:"), "{nodes:#?}");
    }

    /// Every hot statement of the backend reads the outbox and the history by index.
    #[test]
    fn hot_statements_read_the_outbox_and_history_by_index() {
        let mut e = Explained::new();
        fill(&mut e.store);
        let mut bad: Vec<Whole> = vec![];
        let bad = &mut bad;
        e.check(bad, "enqueue", |s| {
            let events = [
                ev("hot-1", "customer-1", Operation::Add),
                ev("hot-2", "customer-new", Operation::Add),
                ev("hot-3", "customer-2500", Operation::Remove),
            ];
            s.enqueue(R, &events, Some(100), t(4)).unwrap()
        });
        let claimed = e.check(bad, "claim_ready", |s| s.claim_ready(R, &agent(), t(10), 50).unwrap());
        assert!(claimed.len() >= 10, "{}", claimed.len());
        e.check(bad, "settle (and the heads moving on)", |s| {
            let done: Vec<Settlement> = claimed[..5].iter().map(|e| delivered(e.seq, e.op, 11)).collect();
            s.settle(&done).unwrap()
        });
        e.check(bad, "retry_later", |s| {
            s.retry_later(claimed[5].seq, t(20), "HTTP 503", t(11)).unwrap()
        });
        e.check(bad, "release", |s| s.release(&[claimed[6].seq], t(11)).unwrap());
        e.check(bad, "dead_letter", |s| {
            s.dead_letter(claimed[7].seq, &rejection(), t(11)).unwrap()
        });
        e.check(bad, "dead_letters (kfr dlq list)", |s| {
            assert!(!s.dead_letters(None).unwrap().is_empty());
            assert!(!s.dead_letters(Some(R)).unwrap().is_empty());
        });
        e.check(bad, "retry_dead", |s| {
            s.retry_dead(DeadLetters::One(claimed[7].seq), &operator(), t(12))
                .unwrap()
        });
        let dead = e.store.dead_letters(Some(R)).unwrap();
        e.check(bad, "drop_dead", |s| {
            s.drop_dead(DeadLetters::One(dead[0].event.seq), &operator(), t(12))
                .unwrap()
        });
        e.check(bad, "status (counts)", |s| s.status(Some(R)).unwrap());
        e.check(bad, "recover", |s| {
            s.recover(R, 1, t(100_000), chrono::Duration::zero()).unwrap()
        });
        e.check(bad, "barrier", |s| s.barrier(R).unwrap());
        e.check(bad, "accepted", |s| s.accepted(R).unwrap());
        let own = e.check(bad, "enqueue_and_claim (kfr add)", |s| {
            let new = ev("own-1", "customer-own", Operation::Add);
            s.enqueue_and_claim(R, &new, uuid::Uuid::new_v4(), &agent(), t(13))
                .unwrap()
        });
        let OwnEvent::Claimed(own) = own else {
            panic!("a new customer's add is claimed at once: {own:?}")
        };
        e.check(bad, "finish_claim", |s| {
            let end = ClaimEnd::Delivered {
                delivery: Delivery::Added,
                echoed_correlation_id: None,
            };
            s.finish_claim(own.seq, &agent().name, &end, t(14)).unwrap()
        });
        e.check(bad, "events_of (kfr history)", |s| {
            s.events_of(Some(R), Some("customer-1")).unwrap()
        });
        e.check(bad, "history of a customer", |s| {
            assert!(!s.history(Some("customer-1"), None, None).unwrap().is_empty());
        });
        e.check(bad, "unfinished_count (flood guard)", |s| {
            s.unfinished_count(R, "customer-2").unwrap()
        });
        e.check(bad, "last_delivery", |s| s.last_delivery(R).unwrap());
        e.check(bad, "cancel", |s| {
            let which = ToCancel::Customer {
                register: R.into(),
                customer_id: "customer-2500".into(),
            };
            s.cancel(&which, &operator(), t(15)).unwrap()
        });
        e.check(bad, "purge", |s| s.purge(t(1_000)).unwrap());
        let known = |w: &Whole| {
            KNOWN_WHOLE_READS
                .iter()
                .any(|(start, _)| w.statement.starts_with(start))
        };
        let new: Vec<String> = bad.iter().filter(|w| !known(w)).map(Whole::to_string).collect();
        assert!(new.is_empty(), "read whole:\n{}", new.join("\n"));
        let gone: Vec<&str> = KNOWN_WHOLE_READS
            .iter()
            .map(|(start, _)| *start)
            .filter(|start| !bad.iter().any(|w| w.statement.starts_with(start)))
            .collect();
        assert!(
            gone.is_empty(),
            "listed in KNOWN_WHOLE_READS but no longer read whole, remove: {gone:?}"
        );
    }
}

//! Load day you can trust (issue 9): each test reproduces a way `kfr load` could end with KFR in
//! the wrong state while reporting success, or leave an operator stuck, and shows it fixed. The
//! built binary runs against the in-process mock (see `load.rs` for the shared set-up).

use crate::load::{assert_ok, ids, setup};
use crate::util::output_text;

/// A header whose date columns kfr does not know would load closed relationships as active and
/// every start date as the load day: such a file is refused, naming the columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_date_columns_refuse_the_load_naming_them() {
    let env = setup().await;
    let id = ids(91, 2);
    env.write(
        "fra.csv",
        &format!("customer_id;fra_dato;til_dato\n{};2019-03-01;2020-01-01\n{};2018-05-02;\n", id[0], id[1]),
    );
    let out = env.load("fra.csv", "s.db", &[], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fra_dato") && stderr.contains("til_dato"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert_eq!(env.batches_accepted(), 0, "nothing uploaded");
    // A column with a neutral name holding dates is refused too.
    env.write("opened.csv", &format!("kundeid;merknad\n{};15.01.2020\n", id[0]));
    let out = env.load("opened.csv", "s.db", &[], &[]).await;
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("merknad") && stderr.contains("line 2"), "{stderr}");
    // `kfr validate --file` reads the same grammar and refuses it the same way.
    let out = env.run(&["validate", "--file", "fra.csv"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out).1);
    // The recognised spellings load with their dates: a closed relationship stays out.
    env.write(
        "ok.csv",
        &format!("customer_id;StartDate;enddate;navn\n{};2019-03-01;2020-01-01;Ola\n{};2018-05-02;;Kari\n", id[0], id[1]),
    );
    assert_ok(&env.load("ok.csv", "s.db", &[], &[]).await);
    let active = env.active();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active.get(&id[1]).map(String::as_str), Some("2018-05-02"));
}

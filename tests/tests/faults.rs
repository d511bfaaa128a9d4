//! Faults and privileges: whatever breaks, staged plus rolled-up trades equal what was sent.

use std::process::{Command, Stdio};
use std::time::Duration;

use tradebars_tests::*;

#[test]
fn a_cancelled_or_killed_rollup_leaves_no_partial_bars() {
    let db = fresh_db("cancel", "");
    let file = generate("cancel.dbn.zst", 50, 200000, 41);
    assert!(feeder(&["replay", &file.display().to_string()], Some(&db))
        .status
        .success());

    // cancelled while it works: a 1 ms statement timeout stops it wherever it is
    let mut c = connect(&db);
    c.batch_execute("SET statement_timeout = '1ms'")
        .expect("set");
    let err = db_error(c.execute("SELECT bars_rollup()", &[]));
    assert!(err.contains("statement timeout"), "{err}");
    assert_eq!(count(&db, "SELECT count(*) FROM price_bars"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 200_000);

    // killed while it waits for the staging slot
    let mut blocker = connect(&db);
    let mut hold = blocker.transaction().expect("tx");
    hold.batch_execute("LOCK TABLE trades_staging_0, trades_staging_1 IN ACCESS SHARE MODE")
        .expect("lock");
    let victim_db = db.clone();
    let victim = std::thread::spawn(move || {
        let mut v = connect(&victim_db);
        v.execute("SET application_name = 'victim'", &[])
            .expect("name");
        v.execute("SELECT bars_rollup()", &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    wait_for(&db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'victim' AND wait_event_type = 'Lock'");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM \
             (SELECT pid FROM pg_stat_activity WHERE application_name = 'victim' OFFSET 0) victim"
        ),
        1
    );
    assert!(victim.join().expect("victim").is_err());
    hold.rollback().expect("release");
    assert_eq!(count(&db, "SELECT count(*) FROM price_bars"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 200_000);

    // the next rollups complete the work, exactly
    assert!(feeder(&["rollup"], Some(&db)).status.success());
    assert!(feeder(&["rollup"], Some(&db)).status.success());
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(stored_bars(&db), oracle(&file));
}

#[test]
fn a_feeder_killed_in_the_middle_of_its_copy_leaves_nothing_and_a_rerun_is_exact() {
    let db = fresh_db("sigkill", "");
    let file = generate("sigkill.dbn.zst", 50, 1000000, 42);
    let mut child = spawn_replay(&db, &file, &[], Stdio::null);
    wait_for(&db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %trades_staging%' AND state = 'active'");
    assert!(
        child.try_wait().expect("status").is_none(),
        "the feeder must still be copying"
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // the server notices the dead client and rolls its transaction back
    wait_until("the killed COPY to end", Duration::from_secs(30), || {
        count(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %trades_staging%'",
        ) <= 0
    });
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM ingest_ledger"), 0);
    a_rerun_is_exact(&db, &file, 1_000_000);
}

/// `replay --rollup` of `file` again: it succeeds, and the bars hold its `trades` once, equal
/// to the oracle's.
fn a_rerun_is_exact(db: &str, file: &std::path::Path, trades: i64) {
    replay(db, file, true);
    assert_eq!(
        count(db, "SELECT sum(trade_count)::bigint FROM price_bars"),
        trades
    );
    assert_eq!(stored_bars(db), oracle(file));
}

/// SIGTERM to `child`, which must exit 0 within 10 s; its output.
fn stopped_with_0(mut child: std::process::Child) -> String {
    sigterm(&mut child);
    let (code, out) = exit_within(child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{out}");
    out
}

/// `replay` with `file` in `db`, its stdout and stderr each `output()` (captured or not).
fn spawn_replay(
    db: &str,
    file: &std::path::Path,
    extra: &[&str],
    output: fn() -> Stdio,
) -> std::process::Child {
    Command::new(feeder_bin())
        .arg("replay")
        .args(extra)
        .arg(file)
        .env("DATABASE_URL", url(db))
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("starting the feeder")
}

#[test]
fn sigterm_while_a_replay_stands_by_or_copies_exits_0_and_a_rerun_counts_each_trade_once() {
    let db = fresh_db("replay_sigterm", "");
    let file = generate("replay_sigterm.dbn.zst", 50, 1000000, 43);
    let nothing_kept = |db: &str| {
        for table in [
            "trades_staging",
            "ingest_ledger",
            "trade_coverage",
            "price_bars",
        ] {
            assert_eq!(
                count(db, &format!("SELECT count(*) FROM {table}")),
                0,
                "{table}"
            );
        }
    };
    // Standing by: another session holds the feeder lock (sql/migration_verify.sql's key).
    let mut holder = connect(&db);
    holder
        .batch_execute("SELECT pg_advisory_lock(29794, 3)")
        .unwrap();
    let child = spawn_replay(&db, &file, &["--standby"], Stdio::piped);
    wait_for(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tradebars-feeder'",
    );
    std::thread::sleep(Duration::from_millis(300)); // into its wait for the lock
    let out = stopped_with_0(child);
    assert!(out.contains("stopped during replay"), "{out}");
    nothing_kept(&db);
    holder
        .batch_execute("SELECT pg_advisory_unlock(29794, 3)")
        .unwrap();

    // Copying: the file's transaction goes with the connection.
    let child = spawn_replay(&db, &file, &[], Stdio::piped);
    wait_for(&db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %trades_staging%' AND state = 'active'");
    let out = stopped_with_0(child);
    assert!(out.contains("stopped during replay"), "{out}");
    wait_until("the abandoned COPY to end", Duration::from_secs(30), || {
        count(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %trades_staging%'",
        ) <= 0
    });
    nothing_kept(&db);

    a_rerun_is_exact(&db, &file, 1_000_000);
}

/// Login roles e2e_feeder and e2e_reader, members of the extension's two roles.
fn create_login_roles(db: &str) {
    let mut admin = connect(db);
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'e2e_feeder') THEN
                     CREATE ROLE e2e_feeder LOGIN IN ROLE tradebars_feeder; END IF;
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'e2e_reader') THEN
                     CREATE ROLE e2e_reader LOGIN IN ROLE tradebars_reader; END IF;
             END $$;
             GRANT CONNECT ON DATABASE {db} TO e2e_feeder, e2e_reader"
        ))
        .expect("login roles");
}

fn as_role(db: &str, role: &str) -> postgres::Client {
    postgres::Client::connect(
        &format!("postgres://{role}@127.0.0.1:{}/{db}", port()),
        postgres::NoTls,
    )
    .expect("connecting as a role")
}

/// Each of `statements`, run by `client` (the `who` of the message), is refused.
fn all_denied(client: &mut postgres::Client, who: &str, statements: &[&str]) {
    for forbidden in statements {
        assert!(
            db_error(client.execute(*forbidden, &[])).contains("permission denied"),
            "{who}: {forbidden}"
        );
    }
}

#[test]
fn each_role_can_do_its_job_and_nothing_more() {
    let db = fresh_db("roles", "");
    create_login_roles(&db);

    // the feeder, as a least-privileged login, does the whole job
    let file = generate("roles.dbn", 5, 5000, 43);
    let feeder_url = format!("postgres://e2e_feeder@127.0.0.1:{}/{db}", port());
    let out = feeder(
        &[
            "replay",
            &file.display().to_string(),
            "--rollup",
            "--database-url",
            &feeder_url,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored_bars(&db), oracle(&file));

    let mut f = as_role(&db, "e2e_feeder");
    all_denied(
        &mut f,
        "feeder",
        &[
            "SELECT count(*) FROM price_bars",
            "DELETE FROM price_bars",
            "TRUNCATE trades_staging_0",
            "SELECT count(*) FROM trades_staging_0",
            "SELECT mark_legacy()",
            "SELECT rollback_trades()",
            "SELECT archive_legacy()",
        ],
    );

    let mut r = as_role(&db, "e2e_reader");
    let rows = r
        .query(
            "SELECT * FROM bars('WGRX', '2025-10-24', '2025-10-25')",
            &[],
        )
        .expect("the reader reads bars");
    assert!(!rows.is_empty());
    all_denied(
        &mut r,
        "reader",
        &[
            "SELECT bars_rollup()",
            "INSERT INTO trades_staging_0 VALUES ('X', 1, 1, 1, 1, 1, 1, 1, 'B', 0)",
            "UPDATE price_bars SET volume = 0",
            "SELECT hard_delete_legacy(confirm => true)",
            "SELECT * FROM ingest_ledger",
        ],
    );
    assert_eq!(
        stored_bars(&db),
        oracle(&file),
        "nothing the roles tried changed a bar"
    );
}

#[test]
fn functions_have_a_fixed_search_path_and_definer_rights_only_where_needed() {
    let db = fresh_db("search_path", "");
    let unpinned: String = connect(&db)
        .query_one(
            "SELECT coalesce(string_agg(p.proname, ', ' ORDER BY p.proname), '')
             FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
             WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
               AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tradebars')
               AND p.prokind = 'f' AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
               AND NOT coalesce(p.proconfig::text LIKE '%search_path=%', false)
               AND p.provolatile <> 'i'",
            &[],
        )
        .expect("catalog")
        .get(0);
    assert_eq!(unpinned, "", "SQL functions without a fixed search_path");
    let definers: String = connect(&db)
        .query_one(
            "SELECT string_agg(p.proname, ', ' ORDER BY p.proname) FROM pg_proc p
             JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
             WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tradebars') AND p.prosecdef",
            &[],
        )
        .expect("catalog")
        .get(0);
    // the rollup writes price_bars for the feeder; identity_refusal reads price_bars and
    // prune_trade_identity moves the horizon for it, neither of which the feeder may touch;
    // rollup_status counts staging, which neither the feeder nor a reader may read;
    // official_bars_merge writes Databento's bars into price_bars for the feeder
    assert_eq!(
        definers,
        "bars_rollup, identity_refusal, official_bars_merge, prune_trade_identity, rollup_status"
    );
}

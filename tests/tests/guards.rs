//! The extension's guards against losing or double counting on a database in use: no rollback
//! under a running feeder, pruning that one implausible trade cannot derail, backup tables
//! whose rows all live in permanent tables, no merge into bars another writer made, no count
//! for a trade without a ts_recv, and progress visible to the feeder and reader roles.

use postgres::error::SqlState;
use postgres::GenericClient;
use tradebars_tests::*;

/// A trade of `symbol` into the slot the feeder would write, with SQL (as the feeder does
/// with COPY): ts_recv and ts_event in ns.
fn stage(c: &mut postgres::Client, symbol: &str, ts_recv: i64, ts_event: i64, price: i64) {
    let slot: String = c
        .query_one("SELECT staging_slot()", &[])
        .expect("slot")
        .get(0);
    c.execute(
        &format!(
            "INSERT INTO {slot} (symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence,
                                 price, size, side, flags, ord)
             VALUES ($1, 7, 1, $2, $3, 1, $4, 10, 'B', 0, 0)"
        ),
        &[&symbol, &ts_event, &ts_recv, &price],
    )
    .expect("staging a trade");
}

/// `sql` fails on `c` with SQLSTATE `state` and a message holding `says`; the message.
fn refused(c: &mut impl GenericClient, sql: &str, state: SqlState, says: &str) -> String {
    let err = c.batch_execute(sql).expect_err(sql);
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert_eq!(err.code(), Some(&state), "{sql}: {msg}");
    assert!(msg.contains(says), "{sql}: {msg}");
    msg
}

/// 2025-10-24 14:30 UTC in ns.
const T0: i64 = 1_761_316_200_000_000_000;

#[test]
fn rollback_is_refused_while_a_feeder_holds_the_database() {
    let file = generate("guard-rollback.dbn.zst", 3, 2000, 101);
    let db = fresh_db("guard_rollback", "");
    replay(&db, &file, true);
    let bars = count(&db, "SELECT count(*) FROM price_bars");
    // a feeder (live, replay or backfill) holds this advisory lock while it runs
    let mut running = connect(&db);
    running
        .batch_execute("SELECT pg_advisory_lock(29794, 3)")
        .expect("holding the feeder lock");
    let mut dba = connect(&db);
    refused(
        &mut dba,
        "SELECT rollback_trades()",
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "a feeder is running",
    );
    assert_eq!(count(&db, "SELECT count(*) FROM price_bars"), bars);
    assert!(count(&db, "SELECT count(*) FROM trade_coverage") > 0);
    running
        .batch_execute("SELECT pg_advisory_unlock(29794, 3)")
        .expect("releasing");
    let removed: i64 = dba
        .query_one("SELECT rollback_trades()", &[])
        .expect("rollback once the feeder stopped")
        .get(0);
    assert_eq!(removed, bars);
    assert_eq!(count(&db, "SELECT count(*) FROM trade_coverage"), 0);
}

#[test]
fn one_trade_stamped_in_2100_does_not_make_pruning_forget_everything() {
    let file = generate("guard-prune.dbn.zst", 3, 3000, 102);
    let db = fresh_db("guard_prune", "");
    replay(&db, &file, true);
    let mut c = connect(&db);
    let (start, end) = range_of(&file);
    let newest_minute = count(&db, "SELECT max(minute) FROM trade_coverage");
    // what a load of one trade received in 2100 leaves in trade identity
    let minute_2100: i64 = 4_102_444_800 / 60;
    c.execute(
        "INSERT INTO trade_coverage VALUES (1, 99, $1, $2, $2, 1, 5, '{5}', '{5}', 'future.dbn')",
        &[&minute_2100, &(minute_2100 * 60_000_000_000)],
    )
    .expect("a coverage row in 2100");
    let kept_before = count(
        &db,
        &format!("SELECT count(*) FROM trade_coverage WHERE minute >= {newest_minute} - 60"),
    );
    c.batch_execute("SELECT set_identity_retention('1 hour')")
        .expect("retention");
    let pruned: i64 = one(&db, "SELECT prune_trade_identity()");
    assert!(pruned > 0, "the file spans more than an hour");
    // the hour before the newest plausible trade keeps its identity, and so does 2100's row
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM trade_coverage WHERE minute >= {newest_minute} - 60")
        ),
        kept_before
    );
    let horizon: i64 = c
        .query_one("SELECT identity_horizon FROM bar_settings", &[])
        .expect("horizon")
        .get(0);
    assert_eq!(horizon, (newest_minute - 60) * 60_000_000_000);
    assert!(horizon > start as i64 && horizon < end as i64);
    // a retention the arithmetic cannot hold is refused, not an overflow inside pruning
    refused(
        &mut c,
        "SELECT set_identity_retention('1000000 years')",
        SqlState::INVALID_PARAMETER_VALUE,
        "100 years",
    );
}

/// A database whose price_bars holds 3 legacy bars (the old app's, marked).
fn legacy_db(name: &str) -> String {
    let db = fresh_db(
        name,
        r#"CREATE TABLE price_bars (symbol text NOT NULL, "timestamp" timestamptz NOT NULL,
                                   open float8, high float8, low float8, close float8,
                                   volume bigint DEFAULT 0, trade_count bigint DEFAULT 0,
                                   UNIQUE (symbol, "timestamp"));
           INSERT INTO price_bars (symbol, "timestamp", open, high, low, close)
           SELECT 'WGRX', timestamptz '2025-10-24 14:30+00' + m * interval '1 minute', 1.5, 1.6, 1.4, 1.55
           FROM generate_series(0, 2) AS m;"#,
    );
    connect(&db)
        .batch_execute("SELECT mark_legacy()")
        .expect("mark_legacy");
    db
}

#[test]
fn a_backup_whose_rows_live_in_a_temporary_child_or_an_unlogged_partition_is_no_copy() {
    let db = legacy_db("guard_backup");
    let mut c = connect(&db);
    c.batch_execute(
        "CREATE TABLE bk_parent (LIKE price_bars);
         CREATE TEMP TABLE bk_child () INHERITS (bk_parent);
         INSERT INTO bk_child SELECT * FROM price_bars;
         CREATE TABLE bk_parted (LIKE price_bars) PARTITION BY RANGE (\"timestamp\");
         CREATE UNLOGGED TABLE bk_parted_all PARTITION OF bk_parted DEFAULT;
         INSERT INTO bk_parted SELECT * FROM price_bars;",
    )
    .expect("backup tables");
    for (backup, holder, kind) in [
        ("bk_parent", "bk_child", "temporary"),
        ("bk_parted", "bk_parted_all", "unlogged"),
    ] {
        for call in [
            format!("SELECT hard_delete_legacy('{backup}')"),
            format!("SELECT soft_delete_legacy(); SELECT purge_deleted('0 seconds', '{backup}')"),
        ] {
            let mut tx = c.transaction().expect("tx");
            // a temporary table is on the path, the others are named with their schema
            let holder = if kind == "temporary" {
                holder.to_string()
            } else {
                format!("public.{holder}")
            };
            let says = format!("holds rows in {holder}, which is {kind}");
            refused(&mut tx, &call, SqlState::INVALID_PARAMETER_VALUE, &says);
            tx.rollback().expect("rollback");
        }
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        3
    );
    // the same rows in a permanent table are a copy
    c.batch_execute("CREATE TABLE bk_real AS SELECT * FROM price_bars")
        .expect("copy");
    let n: i64 = one(&db, "SELECT hard_delete_legacy('bk_real')");
    assert_eq!(n, 3);
}

/// The old scanner's bar of 14:35, every price and count of it as one text.
const SCANNER_ROW: &str =
    "SELECT open::text || high || low || close || volume || trade_count FROM price_bars
     WHERE symbol = 'WGRX' AND \"timestamp\" = '2025-10-24 14:35+00'";

/// The start of WGRX's 14:35 minute, in nanoseconds.
const MINUTE_1435: i64 = T0 + 5 * 60_000_000_000;

/// bars_rollup() refuses with 55000 and a message holding `says`; the one staged trade waits.
fn rollup_refused(c: &mut postgres::Client, db: &str, says: &str) {
    let state = SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE;
    refused(c, "SELECT bars_rollup()", state, says);
    assert_eq!(
        count(db, "SELECT count(*) FROM trades_staging"),
        1,
        "the trade waits"
    );
}

/// After mark_legacy() the scanner's bar is set apart and the waiting trade makes a bar of its
/// own beside it.
fn mark_legacy_lets_the_trade_make_its_own_bar(c: &mut postgres::Client, db: &str) {
    c.batch_execute("SELECT mark_legacy()")
        .expect("mark_legacy");
    let r = c
        .query_one("SELECT * FROM bars_rollup()", &[])
        .expect("rollup after mark_legacy");
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (1, 1));
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM price_bars WHERE \"timestamp\" = '2025-10-24 14:35+00' AND data_source = 'scanner'"
        ),
        1
    );
    let row = c
        .query_one(
            "SELECT open::text, volume FROM price_bars WHERE \"timestamp\" = '2025-10-24 14:35+00'
             AND data_source = 'trades'",
            &[],
        )
        .expect("trades bar");
    let trades_bar: (String, i64) = (row.get(0), row.get(1));
    assert_eq!(trades_bar, ("84".to_string(), 10));
}

#[test]
fn the_rollup_never_merges_into_a_trades_bar_another_writer_made() {
    let db = legacy_db("guard_foreign");
    let mut c = connect(&db);
    // the old scanner, still running after mark_legacy(), writes a bar of 14:35 from trades
    c.batch_execute(
        "INSERT INTO price_bars (symbol, \"timestamp\", open, high, low, close, volume, trade_count,
                                 is_legacy, data_source)
         VALUES ('WGRX', '2025-10-24 14:35+00', 83.1, 83.2, 83.0, 83.15, 1000, 20, false, 'trades')",
    )
    .expect("a scanner bar");
    let before: String = c.query_one(SCANNER_ROW, &[]).expect("row").get(0);
    stage(
        &mut c,
        "WGRX",
        MINUTE_1435 + 1_000,
        MINUTE_1435 + 500,
        84_000_000_000,
    );
    rollup_refused(&mut c, &db, "did not build it");
    let after: String = c.query_one(SCANNER_ROW, &[]).expect("row").get(0);
    assert_eq!(after, before);
    mark_legacy_lets_the_trade_make_its_own_bar(&mut c, &db);

    // a bar tradebars built, then made legacy behind the guard's back: not merged into either
    c.batch_execute(
        "ALTER TABLE price_bars DISABLE TRIGGER price_bars_protect_trades_bars;
         UPDATE price_bars SET is_legacy = true WHERE data_source = 'trades';
         ALTER TABLE price_bars ENABLE TRIGGER price_bars_protect_trades_bars;",
    )
    .expect("relabelling");
    stage(
        &mut c,
        "WGRX",
        MINUTE_1435 + 2_000,
        MINUTE_1435 + 1_500,
        85_000_000_000,
    );
    rollup_refused(&mut c, &db, "(another writer's, or made legacy)");
}

#[test]
fn a_trade_without_ts_recv_is_set_aside_under_either_clock() {
    for clock in ["ts_recv", "ts_event"] {
        let db = fresh_db("guard_recv", "");
        let mut c = connect(&db);
        c.batch_execute(&format!("SELECT set_bar_clock('{clock}')"))
            .expect("clock");
        stage(&mut c, "WGRX", -1, T0, 84_000_000_000); // Databento's undefined ts_recv
        stage(&mut c, "WGRX", T0 + 10, T0 + 5, 85_000_000_000);
        let r = c
            .query_one("SELECT * FROM bars_rollup()", &[])
            .expect("rollup");
        assert_eq!(
            (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
            (1, 1, 1),
            "{clock}"
        );
        let reason: String = c
            .query_one("SELECT reason FROM trades_rejected", &[])
            .expect("rejected")
            .get(0);
        assert_eq!(reason, "undefined ts_recv", "{clock}");
        assert_eq!(
            count(
                &db,
                "SELECT volume FROM price_bars WHERE data_source = 'trades'"
            ),
            10
        );
    }
}

#[test]
fn the_feeder_and_reader_roles_see_the_rollup_status() {
    let db = fresh_db("guard_status", "");
    let mut c = connect(&db);
    stage(&mut c, "WGRX", T0 + 10, T0 + 5, 85_000_000_000);
    for role in ["tradebars_feeder", "tradebars_reader"] {
        let staged: i64 = {
            let mut tx = c.transaction().expect("tx");
            tx.batch_execute(&format!("SET LOCAL ROLE {role}"))
                .expect("role");
            let n = tx
                .query_one("SELECT staged_trades FROM rollup_status()", &[])
                .unwrap_or_else(|e| panic!("{role}: {e}"))
                .get(0);
            tx.rollback().expect("rollback");
            n
        };
        assert_eq!(staged, 1, "{role}");
    }
    // it runs as the owner: a role without tradebars' grants may not call it
    c.batch_execute(
        "DROP ROLE IF EXISTS guard_status_nobody; CREATE ROLE guard_status_nobody NOLOGIN",
    )
    .expect("a role");
    let mut tx = c.transaction().expect("tx");
    tx.batch_execute("SET LOCAL ROLE guard_status_nobody")
        .expect("role");
    let refused = tx
        .query_one("SELECT staged_trades FROM rollup_status()", &[])
        .expect_err("PUBLIC may not call rollup_status()");
    assert_eq!(refused.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    tx.rollback().expect("rollback");
    c.batch_execute("DROP ROLE guard_status_nobody")
        .expect("dropping the role");
}

#[test]
fn an_archive_that_is_no_permanent_table_of_its_own_protects_nothing() {
    for (archive, kind) in [
        (
            "CREATE VIEW price_bars_legacy AS SELECT * FROM price_bars WHERE is_legacy",
            "view",
        ),
        (
            "CREATE UNLOGGED TABLE price_bars_legacy AS SELECT * FROM price_bars WHERE is_legacy",
            "unlogged",
        ),
    ] {
        let db = legacy_db("guard_archive");
        let mut c = connect(&db);
        c.batch_execute(archive).expect(archive);
        c.batch_execute("SELECT soft_delete_legacy()")
            .expect("soft delete");
        for call in [
            "SELECT hard_delete_legacy()",
            "SELECT purge_deleted('0 seconds')",
        ] {
            let mut tx = c.transaction().expect("tx");
            let state = SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE;
            refused(&mut tx, call, state, "3 legacy bars are held whole");
            tx.rollback().expect("rollback");
        }
        // and archive_legacy() does not move bars into it
        let state = SqlState::INVALID_PARAMETER_VALUE;
        refused(&mut c, "SELECT archive_legacy()", state, kind);
        assert_eq!(
            count(&db, "SELECT count(*) FROM ONLY price_bars WHERE is_legacy"),
            3,
            "{kind}"
        );
    }
    // A temporary price_bars_legacy is no archive either, and the extension never takes it
    // for one: archive_legacy() moves the bars into the archive in the extension's schema.
    let db = legacy_db("guard_archive");
    let mut c = connect(&db);
    c.batch_execute(
        "CREATE TEMP TABLE price_bars_legacy AS SELECT * FROM price_bars WHERE is_legacy;
         SELECT soft_delete_legacy()",
    )
    .expect("a temporary archive");
    let mut tx = c.transaction().expect("tx");
    let state = SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE;
    refused(
        &mut tx,
        "SELECT hard_delete_legacy()",
        state,
        "3 legacy bars are held whole",
    );
    tx.rollback().expect("rollback");
    let moved: i64 = c
        .query_one("SELECT archive_legacy()", &[])
        .expect("archive_legacy")
        .get(0);
    let (archived, temporary): (i64, i64) = {
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM public.price_bars_legacy),
                        (SELECT count(*) FROM pg_temp.price_bars_legacy)",
                &[],
            )
            .expect("counts");
        (row.get(0), row.get(1))
    };
    assert_eq!((moved, archived, temporary), (3, 3, 3));
}

#[test]
fn a_backup_that_is_a_child_of_price_bars_is_no_copy() {
    let db = legacy_db("guard_child");
    let mut c = connect(&db);
    c.batch_execute("CREATE TABLE bk () INHERITS (price_bars)")
        .expect("child");
    refused(
        &mut c,
        "SELECT hard_delete_legacy('bk')",
        SqlState::INVALID_PARAMETER_VALUE,
        "price_bars itself",
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        3
    );
}

#[test]
fn argument_errors_carry_their_sqlstate() {
    let db = legacy_db("guard_args");
    let mut c = connect(&db);
    let null = SqlState::NULL_VALUE_NOT_ALLOWED;
    let invalid = SqlState::INVALID_PARAMETER_VALUE;
    let bars = "SELECT * FROM bars('WGRX', now() - interval '1 day', now(), bucket =>";
    for (call, state, says) in [
        (
            "SELECT purge_deleted(NULL)".to_string(),
            null.clone(),
            "older_than must not be NULL",
        ),
        (
            "SELECT purge_deleted('-1 day')".into(),
            invalid.clone(),
            "older_than must not be negative",
        ),
        (
            "SELECT * FROM migration_coverage(NULL)".into(),
            null.clone(),
            "since must not be NULL",
        ),
        (
            "SELECT * FROM migration_coverage('-1 day')".into(),
            invalid.clone(),
            "since must not be negative",
        ),
        (
            format!("{bars} '7 seconds')"),
            invalid,
            "bucket must be at least 1 minute",
        ),
        (format!("{bars} NULL)"), null, "bucket must not be NULL"),
    ] {
        refused(&mut c, &call, state, says);
    }
}

#[test]
fn after_a_rollback_nothing_is_refused_for_identity_pruned_before_it() {
    let file = generate("guard-horizon.dbn.zst", 3, 3000, 103);
    let db = fresh_db("guard_horizon", "");
    let replay = |extra: &[&str]| {
        let f = file.display().to_string();
        let mut args = vec!["replay", f.as_str(), "--rollup"];
        args.extend_from_slice(extra);
        feeder(&args, Some(&db))
    };
    assert!(replay(&[]).status.success());
    let bars = stored_bars(&db);
    let mut c = connect(&db);
    c.batch_execute("SELECT set_identity_retention('1 hour'); SELECT prune_trade_identity()")
        .expect("prune");
    let refused = replay(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    c.batch_execute("SELECT rollback_trades()")
        .expect("rollback");
    for _ in 0..2 {
        let out = replay(&[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(stored_bars(&db), bars);
    assert_eq!(stored_bars(&db), oracle(&file));
}

#[test]
fn the_rollup_refuses_a_schema_renamed_to_a_name_it_would_have_to_quote_in_a_literal() {
    // The rollup writes the extension's schema into its statements, some inside string
    // literals; PostgreSQL refuses such a name when the extension is created, but the
    // schema's owner may rename it afterwards.
    let db = empty_db("guard_schema_name");
    let mut c = connect(&db);
    c.batch_execute(
        "CREATE SCHEMA tb; CREATE EXTENSION tradebars SCHEMA tb;
         ALTER SCHEMA tb RENAME TO \"t'b\"",
    )
    .expect("a renamed schema");
    refused(
        &mut c,
        "SELECT * FROM \"t'b\".bars_rollup()",
        SqlState::INVALID_NAME,
        "rename the schema back",
    );
    // and with its name back, the rollup runs
    c.batch_execute("ALTER SCHEMA \"t'b\" RENAME TO tb; SELECT * FROM tb.bars_rollup()")
        .expect("the rollup under the schema's own name");
}

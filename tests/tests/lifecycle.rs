//! The extension over time: upgraded from its first release, dumped and restored, watched.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use tradebars_tests::*;

/// Every object of the extension, with its definition: functions by their source, tables
/// and types by their columns.
const EXTENSION_OBJECTS: &str = r#"
SELECT string_agg(d, E'\n' ORDER BY d) FROM (
    SELECT pg_describe_object(classid, objid, 0) || ' ' ||
           CASE WHEN classid = 'pg_proc'::regclass
                     AND (SELECT prokind FROM pg_proc WHERE oid = objid) <> 'a'
                THEN pg_get_functiondef(objid)
                WHEN classid = 'pg_proc'::regclass
                THEN (SELECT format('sfunc %s stype %s sspace %s combine %s parallel %s', aggtransfn, aggtranstype::regtype,
                                    aggtransspace, aggcombinefn, p.proparallel)
                      FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid WHERE a.aggfnoid = objid)
                WHEN classid = 'pg_class'::regclass
                THEN coalesce((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                               FROM pg_attribute WHERE attrelid = objid AND attnum > 0 AND NOT attisdropped), '')
                     || coalesce((SELECT ' indexes: ' || string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY 1) FROM pg_index WHERE indrelid = objid), '')
                ELSE '' END AS d
    FROM pg_depend
    WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
      AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tradebars')
) objects"#;

/// The extension's objects in `upgraded` are those of a fresh install, `fresh`; on a
/// difference, the lines that differ.
fn assert_same_objects(upgraded: &str, fresh: &str) {
    let (a, b) = (
        one::<String>(upgraded, EXTENSION_OBJECTS),
        one::<String>(fresh, EXTENSION_OBJECTS),
    );
    let only = |x: &str, y: &str| -> Vec<String> {
        let other: std::collections::HashSet<&str> = y.lines().collect();
        x.lines()
            .filter(|l| !other.contains(l))
            .map(String::from)
            .collect()
    };
    assert!(
        a == b,
        "upgraded only:\n{}\nfresh only:\n{}",
        only(&a, &b).join("\n"),
        only(&b, &a).join("\n")
    );
}

/// A database created at an earlier `version`, with bars built by that version's rollup from
/// `file` (staged with SQL: the current feeder writes the current staging).
fn old_database(name: &str, version: &str, file: &std::path::Path) -> String {
    let db = empty_db(name);
    connect(&db)
        .batch_execute(&format!("CREATE EXTENSION tradebars VERSION '{version}'"))
        .unwrap_or_else(|e| panic!("installing {version}: {e}"));
    stage_with_sql(&db, file);
    connect(&db)
        .batch_execute("SELECT bars_rollup()")
        .expect("the old version's rollup");
    db
}

fn update_to_current(db: &str) {
    connect(db)
        .batch_execute("ALTER EXTENSION tradebars UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(
        one::<String>(
            db,
            "SELECT extversion FROM pg_extension WHERE extname = 'tradebars'"
        ),
        "0.3.0"
    );
}

#[test]
fn upgrading_from_0_1_0_gives_what_a_fresh_install_gives() {
    let file = generate("upgrade.dbn.zst", 8, 20000, 21);
    let old = old_database("upgrade", "0.1.0", &file);
    let before = stored_bars(&old);
    // 0.1.0 built bars on exchange time
    assert_eq!(before, oracle_of(&trades_of(&file), OracleClock::Event));

    update_to_current(&old);
    assert_eq!(stored_bars(&old), before, "the upgrade keeps every bar");
    assert_eq!(
        one::<i64>(&old, "SELECT trades_rolled_up FROM rollup_status()"),
        20000
    );

    let fresh = fresh_db("fresh", "");
    assert_same_objects(&old, &fresh);
}

#[test]
fn a_0_2_0_database_whose_price_bars_is_still_the_old_applications_updates() {
    // 0.2.0 installed over the old application's table, mark_legacy() not run yet: the
    // update must not read columns the table does not have yet.
    let db = empty_db("upgrade_unmarked");
    connect(&db)
        .batch_execute(
            r#"CREATE TABLE price_bars (symbol text NOT NULL, "timestamp" timestamptz NOT NULL,
                                       open float8, high float8, low float8, close float8,
                                       volume bigint DEFAULT 0, UNIQUE (symbol, "timestamp"));
               INSERT INTO price_bars VALUES ('WGRX', '2025-10-24 14:30+00', 1.5, 1.6, 1.4, 1.55, 0);
               CREATE EXTENSION tradebars VERSION '0.2.0'"#,
        )
        .expect("0.2.0 over the old application's price_bars");
    update_to_current(&db);
    assert!(!one::<bool>(
        &db,
        "SELECT tradebars_internal.price_bars_is_ready()"
    ));
    connect(&db)
        .batch_execute("SELECT mark_legacy()")
        .expect("mark_legacy() after the update");
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM price_bars WHERE is_legacy AND data_source = 'mbp-1'"
        ),
        1
    );
    assert!(one::<bool>(
        &db,
        "SELECT tradebars_internal.price_bars_is_ready()"
    ));
}

/// The bars of `file` on the ts_event clock, as 0.2.0 made them.
fn event_bars(file: &Path) -> BTreeMap<BarKey, BarVal> {
    oracle_of(&trades_of(file), OracleClock::Event)
}

/// A 0.2.0 database with `day1` rolled up and a 0.2.0 live feeder's position, under the
/// spelling of its --symbols, updated to the current version.
fn upgraded_0_2_0_database(day1: &Path) -> String {
    let db = old_database("upgrade2", "0.2.0", day1);
    connect(&db)
        .batch_execute(
            "INSERT INTO ingest_ledger (source, kind, position, last_ts_recv)
             VALUES ('live:XNAS.ITCH:trades:WGRX,DHB', 'live', 1, 1761317000000000000)",
        )
        .expect("a 0.2.0 ledger entry");
    assert_eq!(stored_bars(&db), event_bars(day1));
    update_to_current(&db);
    db
}

/// The upgraded database has a fresh one's objects, keeps the ts_event clock (a fresh one has
/// ts_recv) and keeps the live feeder's position per symbol.
fn the_upgrade_keeps_the_clock_and_the_live_position(db: &str) {
    let fresh = fresh_db("fresh2", "");
    assert_same_objects(db, &fresh);
    assert_eq!(one::<String>(db, "SELECT bar_clock()"), "ts_event");
    assert_eq!(one::<String>(&fresh, "SELECT bar_clock()"), "ts_recv");
    assert_eq!(
        one::<String>(
            db,
            "SELECT bar_clock FROM migration_status() WHERE data_source = 'trades'"
        ),
        "ts_event"
    );
    assert_eq!(
        one::<String>(
            db,
            "SELECT string_agg(symbol || '@' || last_ts_recv, ',' ORDER BY symbol) FROM live_positions"
        ),
        "DHB@1761317000000000000,WGRX@1761317000000000000"
    );
}

/// New trades go on in the ts_event clock, loaded by the current feeder; trades from before
/// the upgrade have no identity, so loading them again is refused and stages nothing.
fn new_trades_go_on_in_the_old_clock(db: &str, day1: &Path, day2: &Path) {
    replay(db, day2, true);
    let mut expected = event_bars(day1);
    expected.extend(event_bars(day2));
    assert_eq!(stored_bars(db), expected);
    assert_eq!(
        one::<String>(
            db,
            "SELECT clock FROM bars('WGRX', '2025-10-27', '2025-10-28') LIMIT 1"
        ),
        "ts_event"
    );
    let again = feeder(&["replay", &day1.display().to_string()], Some(db));
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("trade identity is no longer kept")
            && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    assert_eq!(stored_bars(db), expected, "nothing of it staged");
}

#[test]
fn upgrading_from_0_2_0_keeps_the_clock_its_bars_were_built_with() {
    let day1 = generate("upgrade2-day1.dbn.zst", 8, 20000, 22);
    let day2 = generate_on("upgrade2-day2.dbn.zst", 8, 10000, 23, "2025-10-27");
    // the generated days hold trades whose ts_event and ts_recv minutes differ
    assert_ne!(event_bars(&day1), oracle(&day1));
    let db = upgraded_0_2_0_database(&day1);
    the_upgrade_keeps_the_clock_and_the_live_position(&db);
    new_trades_go_on_in_the_old_clock(&db, &day1, &day2);

    // the DBA's way to Databento's clock: roll back the trades bars, set it, load again
    assert!(
        error_of(&db, "SELECT set_bar_clock('ts_recv')").contains("built on the ts_event clock")
    );
    assert!(error_of(&db, "SELECT set_bar_clock('utc')").contains("must be"));
    connect(&db)
        .batch_execute("SELECT rollback_trades(); SELECT set_bar_clock('ts_recv');")
        .expect("rollback and switch");
    for f in [&day1, &day2] {
        replay(&db, f, true);
    }
    let mut expected = oracle(&day1);
    expected.extend(oracle(&day2));
    assert_eq!(stored_bars(&db), expected);
}

/// A database with a day rolled up (`rolled`) and another day's trades only staged (`staged`),
/// dumped with pg_dump -Fc and restored with pg_restore into a new one: its name.
fn dumped_and_restored(db: &str, rolled: &Path, staged: &Path) -> String {
    replay(db, rolled, true);
    replay(db, staged, false);
    assert_eq!(count(db, "SELECT count(*) FROM trades_staging"), 5000);
    let dump = scratch("tradebars.dump");
    let out = pg_tool("pg_dump", &["-Fc", "-f", &dump.display().to_string(), db]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = empty_db("restored");
    let out = pg_tool(
        "pg_restore",
        &[
            "--exit-on-error",
            "-d",
            &restored,
            &dump.display().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    restored
}

#[test]
fn dump_and_restore_keep_bars_staging_and_the_ledger() {
    let db = fresh_db("dump", "");
    let rolled = generate("dump-rolled.dbn.zst", 8, 20000, 31);
    let staged = generate_on("dump-staged.dbn.zst", 8, 5000, 32, "2025-10-27");
    let restored = dumped_and_restored(&db, &rolled, &staged);

    assert_eq!(stored_bars(&restored), stored_bars(&db));
    // and the hour bars bars() reads long buckets from
    let daily = "SELECT string_agg(b::text, ';' ORDER BY b.symbol, b.\"timestamp\")
                 FROM (SELECT DISTINCT symbol FROM price_bars) s,
                      bars(s.symbol, '2025-10-24', '2025-10-28', bucket => '1 hour') b";
    let one_text = |db: &str| -> String { connect(db).query_one(daily, &[]).expect("bars").get(0) };
    assert_eq!(one_text(&restored), one_text(&db));
    for table in ["hour_bars", "trade_coverage"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(count(&restored, &sql), count(&db, &sql), "{table}");
    }
    assert_eq!(
        count(&restored, "SELECT count(*) FROM trades_staging"),
        5000
    );
    assert_eq!(count(&restored, "SELECT count(*) FROM ingest_ledger"), 2);
    // the restored database goes on: the staged trades roll up, trade identity survived
    let again = replay(&restored, &rolled, true);
    assert!(again.contains("20000 trades already counted"), "{again}");
    let mut expected = oracle(&rolled);
    expected.extend(oracle(&staged));
    assert_eq!(stored_bars(&restored), expected);
}

#[test]
fn status_watch_prints_again_until_stopped() {
    let db = fresh_db("watch", "");
    let mut child = Command::new(feeder_bin())
        .args(["status", "--watch", "1"])
        .env("DATABASE_URL", url(&db))
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting status --watch");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    child.kill().expect("stopping status --watch");
    let _ = child.wait();
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("reading output");
    assert!(out.matches("Success criteria").count() >= 2, "{out}");
    assert!(out.contains("at least 1,000 new bars"), "{out}");
}

//! The migration toolkit on a database the plan already touched: the plan's own phase 1 SQL
//! ran by hand, and the old scanner wrote TRADES bars for a while (phase 2). Every old row is
//! kept identical through every function, the scanner's bars stay apart, trades bars cannot
//! be relabelled, and irreversible deletes accept only a real copy. Each step prints a line
//! `adoption | step | old rows before | old rows after | tradebars rows | result`.

use tradebars_tests::*;

/// The old app's table, its quote-built bars, the plan's phase 1 SQL exactly as written, and
/// the scanner's phase 2 upserts: float bars from trades on (symbol, timestamp), overwriting
/// the legacy bar of each minute it covers, the first one partial.
const PLAN_TOUCHED: &str = r#"
CREATE TABLE price_bars (
    id          serial PRIMARY KEY,
    symbol      varchar(10) NOT NULL,
    "timestamp" timestamp NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      integer NOT NULL DEFAULT 0,
    trade_count integer NOT NULL DEFAULT 0,
    UNIQUE (symbol, "timestamp")
);
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close)
SELECT s, timestamp '2025-10-24 14:30' + m * interval '1 minute',
       1.2 + m * 0.01, 1.25 + m * 0.01, 1.15 + m * 0.01, (0.1::float8 + 0.2::float8) + m
FROM unnest(ARRAY['WGRX', 'ABCD']) AS s, generate_series(0, 89) AS m;

BEGIN;
ALTER TABLE price_bars
    ADD COLUMN IF NOT EXISTS is_legacy BOOLEAN DEFAULT false,
    ADD COLUMN IF NOT EXISTS data_source VARCHAR(20) DEFAULT 'mbp-1',
    ADD COLUMN IF NOT EXISTS migrated_at TIMESTAMP DEFAULT NOW();
UPDATE price_bars
SET
    is_legacy = true,
    data_source = 'mbp-1',
    migrated_at = NOW()
WHERE is_legacy IS NULL OR is_legacy = false;
CREATE INDEX IF NOT EXISTS idx_price_bars_legacy ON price_bars(is_legacy);
CREATE INDEX IF NOT EXISTS idx_price_bars_source ON price_bars(data_source);
CREATE INDEX IF NOT EXISTS idx_price_bars_timestamp_legacy ON price_bars(timestamp, is_legacy);
COMMENT ON COLUMN price_bars.is_legacy IS 'true = old MBP-1 data (volume=0), false = new TRADES data (real volume)';
COMMENT ON COLUMN price_bars.data_source IS 'mbp-1 = quotes, trades = executions';
COMMIT;

-- phase 2: the scanner on TRADES from 15:30 to 15:59, its first bar partial
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close, volume, trade_count,
                        is_legacy, data_source)
SELECT 'WGRX', timestamp '2025-10-24 15:30' + m * interval '1 minute',
       83.1 + m * 0.01, 83.2 + m * 0.01, 83.0 + m * 0.01, 83.15 + m * 0.01,
       CASE WHEN m = 0 THEN 17 ELSE 1000 + m END, CASE WHEN m = 0 THEN 1 ELSE 20 + m END,
       false, 'trades'
FROM generate_series(0, 29) AS m
ON CONFLICT (symbol, "timestamp") DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, trade_count = EXCLUDED.trade_count,
    is_legacy = false, data_source = 'trades';
"#;

/// The old rows are those with an id up to this (the old app's 180 bars; new bars get ids
/// from the same serial).
const LAST_OLD_ID: i32 = 180;

/// Every old row (by id), wherever it now is: price_bars, the archive, or a backup table;
/// prices as the doubles they were, times as UTC wall time.
fn old_rows_digest(db: &str, backups: &[&str]) -> (i64, String) {
    let mut c = connect(db);
    c.batch_execute("SET TimeZone = 'UTC'").expect("timezone");
    let mut sources = vec!["price_bars".to_string()];
    let archive: Option<String> = c
        .query_one("SELECT to_regclass('price_bars_legacy')::text", &[])
        .expect("archive")
        .get(0);
    sources.extend(archive);
    sources.extend(backups.iter().map(|b| b.to_string()));
    let union = sources
        .iter()
        .map(|t| {
            format!(
                "SELECT id, symbol::text, to_char(\"timestamp\", 'YYYY-MM-DD HH24:MI:SS') AS t, \
                 open::float8 AS o, high::float8 AS h, low::float8 AS l, close::float8 AS c, \
                 volume::bigint AS v, trade_count::bigint AS n FROM {t} WHERE id <= {LAST_OLD_ID}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    let row = c
        .query_one(
            &format!(
                "SELECT count(*), md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s', id, symbol, t, o, h, l, c, v, n), ',' ORDER BY id)) FROM ({union}) r"
            ),
            &[],
        )
        .expect("digest");
    (row.get(0), row.get(1))
}

fn tradebars_rows(db: &str) -> i64 {
    count(
        db,
        "SELECT count(*) FROM price_bars WHERE data_source = 'trades' AND NOT is_legacy",
    )
}

fn run(db: &str, sql: &str) -> Result<(), postgres::Error> {
    connect(db).batch_execute(sql)
}

fn sqlstate_of(db: &str, sql: &str) -> (String, String) {
    let e = run(db, sql).expect_err(sql);
    let d = e.as_db_error().expect("a database error");
    (d.code().code().to_string(), d.message().to_string())
}

#[test]
fn a_database_after_the_plans_phases_1_and_2_keeps_every_old_row_through_every_function() {
    let db = fresh_db("adoption", PLAN_TOUCHED);
    let (old, digest) = old_rows_digest(&db, &[]);
    assert_eq!(old, 180);
    let step = |name: &str, backups: &[&str], result: &str| {
        let (after, d) = old_rows_digest(&db, backups);
        eprintln!(
            "adoption | {name} | {old} | {after} | {} | {result}",
            tradebars_rows(&db)
        );
        assert_eq!((after, d.as_str()), (old, digest.as_str()), "after {name}");
    };

    // mark: the scanner's 30 bars set apart, the rest already legacy; columns kept
    assert_eq!(count(&db, "SELECT mark_legacy()"), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM price_bars WHERE data_source = 'scanner' AND is_legacy"
        ),
        30
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'price_bars'::regclass AND attname = 'migrated_at'"),
        1
    );
    step(
        "mark_legacy()",
        &[],
        "30 scanner bars set apart as 'scanner'",
    );
    // a second run of the plan's phase 1 SQL changes nothing before any trades bar exists
    run(&db, "UPDATE price_bars SET is_legacy = true, data_source = 'mbp-1', migrated_at = NOW() WHERE is_legacy IS NULL OR is_legacy = false")
        .expect("nothing to relabel yet");
    step("plan's phase 1 again", &[], "no row changed");

    // replay and roll up: new trades bars beside the scanner's, never merged into them
    let file = generate("adoption.dbn.zst", 10, 20000, 91);
    let out = feeder(
        &["replay", &file.display().to_string(), "--rollup"],
        Some(&db),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored_bars(&db), oracle(&file));
    step("replay + bars_rollup()", &[], "trades bars = oracle");

    // bars(): trades first, then the scanner, then legacy
    let sources: String = connect(&db)
        .query_one(
            "SELECT string_agg(DISTINCT data_source, ',' ORDER BY data_source) FROM bars('WGRX', '2025-10-24 14:30+00', '2025-10-24 16:00+00', include_legacy => true)",
            &[],
        )
        .expect("bars")
        .get(0);
    assert_eq!(sources, "trades");
    let abcd: String = connect(&db)
        .query_one(
            "SELECT string_agg(DISTINCT data_source, ',' ORDER BY data_source) FROM bars('ABCD', '2025-10-24 14:30+00', '2025-10-24 16:00+00', include_legacy => true)",
            &[],
        )
        .expect("bars")
        .get(0);
    assert!(abcd.contains("mbp-1"), "{abcd}");
    // where no trades bar exists for a minute, the scanner's wins over the legacy bar
    run(&db, "DELETE FROM price_bars WHERE symbol = 'WGRX' AND \"timestamp\" = '2025-10-24 15:31+00' AND data_source = 'trades'")
        .expect("remove one trades bar");
    let src: String = connect(&db)
        .query_one("SELECT data_source FROM bars('WGRX', '2025-10-24 15:31+00', '2025-10-24 15:32+00', include_legacy => true)", &[])
        .expect("bars")
        .get(0);
    assert_eq!(src, "scanner");
    step("bars()", &[], "trades, then scanner, then legacy");

    // the plan's phase 1 SQL again, now that trades bars exist: refused, nothing changed
    let (state, msg) = sqlstate_of(&db, "UPDATE price_bars SET is_legacy = true, data_source = 'mbp-1' WHERE is_legacy IS NULL OR is_legacy = false");
    assert_eq!(state, "55000", "{msg}");
    assert!(msg.contains("built by tradebars"), "{msg}");
    step("plan's phase 1 again", &[], "refused (55000)");

    // status and coverage name the scanner's bars
    assert_eq!(
        count(
            &db,
            "SELECT bars FROM migration_status() WHERE data_source = 'scanner'"
        ),
        30
    );
    assert_eq!(
        count(
            &db,
            "SELECT sum(scanner_bars)::bigint FROM migration_coverage('10 years')"
        ),
        30
    );
    step(
        "migration_status(), migration_coverage()",
        &[],
        "scanner shown apart",
    );

    run(&db, "SELECT archive_legacy()").expect("archive");
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
    step("archive_legacy()", &[], "moved, verified");
    run(&db, "SELECT restore_legacy()").expect("restore");
    step("restore_legacy()", &[], "back");
    run(&db, "SELECT soft_delete_legacy()").expect("soft delete");
    step("soft_delete_legacy()", &[], "marked deleted");

    // irreversible deletes take only a real copy
    run(&db, "CREATE TABLE keys_only AS SELECT symbol, \"timestamp\", data_source FROM price_bars; \
              CREATE VIEW bars_view AS SELECT * FROM price_bars; \
              CREATE TABLE one_missing AS SELECT * FROM price_bars; \
              DELETE FROM one_missing WHERE id = (SELECT min(id) FROM one_missing WHERE is_legacy); \
              CREATE TABLE one_changed AS SELECT * FROM price_bars; \
              UPDATE one_changed SET close = close + 0.000000001 WHERE id = (SELECT max(id) FROM one_changed WHERE is_legacy); \
              CREATE UNLOGGED TABLE unlogged_copy AS SELECT * FROM price_bars;")
        .expect("candidate copies");
    for f in [
        "hard_delete_legacy('{t}')",
        "purge_deleted('0 seconds', backup_table => '{t}')",
    ] {
        for (table, code, says) in [
            ("price_bars", "22023", "price_bars itself"),
            ("keys_only", "22023", "lacks columns"),
            ("bars_view", "22023", "view"),
            ("unlogged_copy", "22023", "unlogged"),
            ("one_missing", "55000", "1 legacy bars are held whole"),
            ("one_changed", "55000", "1 legacy bars are held whole"),
        ] {
            let sql = format!("SELECT {}", f.replace("{t}", table));
            let (state, msg) = sqlstate_of(&db, &sql);
            assert_eq!(state, code, "{sql}: {msg}");
            assert!(msg.contains(says), "{sql}: {msg}");
        }
    }
    step(
        "deletes refused for 6 non-copies",
        &[],
        "refused, nothing deleted",
    );

    run(
        &db,
        "CREATE TABLE price_bars_backup AS SELECT * FROM price_bars",
    )
    .expect("backup");
    run(
        &db,
        "SELECT purge_deleted('0 seconds', backup_table => 'price_bars_backup')",
    )
    .expect("purge");
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
    step(
        "purge_deleted() with a real copy",
        &["price_bars_backup"],
        "deleted, held in the copy",
    );
    run(&db, "INSERT INTO price_bars SELECT * FROM price_bars_backup WHERE is_legacy; SELECT restore_legacy(); \
              DROP TABLE price_bars_backup; CREATE TABLE price_bars_backup AS SELECT * FROM price_bars;")
        .expect("back from the copy, and a fresh copy");
    run(&db, "SELECT hard_delete_legacy('price_bars_backup')").expect("hard delete");
    step(
        "hard_delete_legacy() with a real copy",
        &["price_bars_backup"],
        "deleted, held in the copy",
    );
    run(
        &db,
        "INSERT INTO price_bars SELECT * FROM price_bars_backup WHERE is_legacy",
    )
    .expect("back");

    // the way back never touches what tradebars did not write
    let removed = count(&db, "SELECT rollback_trades()");
    assert!(removed > 0);
    assert_eq!(tradebars_rows(&db), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM price_bars WHERE data_source = 'scanner'"
        ),
        30
    );
    step(
        "rollback_trades()",
        &["price_bars_backup"],
        "only tradebars' bars removed",
    );
    let out = feeder(
        &["replay", &file.display().to_string(), "--rollup"],
        Some(&db),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored_bars(&db), oracle(&file));
    step(
        "replay again",
        &["price_bars_backup"],
        "trades bars = oracle",
    );
}

#[test]
fn sizes_beyond_databentos_u32_are_rejected_not_added() {
    let db = fresh_db("overflow", "");
    let mut c = connect(&db);
    let slot: String = c
        .query_one("SELECT staging_slot()", &[])
        .expect("slot")
        .get(0);
    c.batch_execute(&format!(
        "INSERT INTO {slot} (symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence, price, size, side, flags)
         VALUES ('WGRX', 1, 1, 1761316200000000000, 1761316200000000001, 1, 83000000000, 5000000000000000000, 'A', 0),
                ('WGRX', 1, 1, 1761316200000000002, 1761316200000000003, 2, 83000000000, 5000000000000000000, 'A', 0),
                ('WGRX', 1, 1, 1761316200000000004, 1761316200000000005, 3, 83000000000, 7, 'A', 0)"
    ))
    .expect("staging");
    let row = c
        .query_one("SELECT * FROM bars_rollup()", &[])
        .expect("rollup");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(2)), (1, 2));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM trades_rejected WHERE reason = 'size out of range'"
        ),
        2
    );
    assert_eq!(count(&db, "SELECT volume FROM price_bars"), 7);
}

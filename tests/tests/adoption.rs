//! The migration toolkit on a database the plan already touched: the plan's own phase 1 SQL
//! ran by hand, and the old scanner wrote TRADES bars for a while (phase 2). Every old row is
//! kept identical through every function, the scanner's bars stay apart, trades bars cannot
//! be relabelled, and irreversible deletes accept only a real copy. Each step prints a line
//! `adoption | step | old rows before | old rows after | tradebars rows | result`.

use tradebars_tests::*;

/// The old app's table (the shared fixture, then its trade_count column, which lands right
/// after volume as in the old app's own), its quote-built bars, the plan's phase 1 SQL exactly
/// as written, and the scanner's phase 2 upserts: float bars from trades on (symbol, timestamp), overwriting
/// the legacy bar of each minute it covers, the first one partial.
const PLAN_TOUCHED: &str = concat!(
    include_str!("../../test/fixtures/old_app_schema.sql"),
    r#"
ALTER TABLE price_bars ADD COLUMN trade_count integer NOT NULL DEFAULT 0;
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
"#
);

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

/// The old rows as the test found them; every step ends by checking they are all still there.
struct Adoption {
    db: String,
    old: i64,
    digest: String,
}

impl Adoption {
    fn start() -> Adoption {
        let db = fresh_db("adoption", PLAN_TOUCHED);
        let (old, digest) = old_rows_digest(&db, &[]);
        assert_eq!(old, 180);
        Adoption { db, old, digest }
    }

    /// Prints the step's line and checks every old row is kept, in price_bars or the archive.
    fn step(&self, name: &str, result: &str) {
        self.step_keeping(name, &[], result);
    }

    /// Prints the step's line and checks every old row is kept, in price_bars, the archive
    /// or `backups`.
    fn step_keeping(&self, name: &str, backups: &[&str], result: &str) {
        let (db, old) = (&self.db, self.old);
        let (after, d) = old_rows_digest(db, backups);
        eprintln!(
            "adoption | {name} | {old} | {after} | {} | {result}",
            tradebars_rows(db)
        );
        assert_eq!(
            (after, d.as_str()),
            (old, self.digest.as_str()),
            "after {name}"
        );
    }
}

/// Replays `file` with --rollup: the trades bars are the oracle's.
fn replay_gives_the_oracle(db: &str, file: &std::path::Path) {
    replay(db, file, true);
    assert_eq!(stored_bars(db), oracle(file));
}

/// The data sources bars() answers for `symbol` over the old app's day, legacy included.
fn sources_in_bars(db: &str, symbol: &str) -> String {
    connect(db)
        .query_one(
            &format!("SELECT string_agg(DISTINCT data_source, ',' ORDER BY data_source) FROM bars('{symbol}', '2025-10-24 14:30+00', '2025-10-24 16:00+00', include_legacy => true)"),
            &[],
        )
        .expect("bars")
        .get(0)
}

#[test]
fn a_database_after_the_plans_phases_1_and_2_keeps_every_old_row_through_every_function() {
    let a = Adoption::start();
    mark_legacy_sets_the_scanner_apart(&a);
    // replay and roll up: new trades bars beside the scanner's, never merged into them
    let file = generate("adoption.dbn.zst", 10, 20000, 91);
    replay_gives_the_oracle(&a.db, &file);
    a.step("replay + bars_rollup()", "trades bars = oracle");
    bars_read_trades_then_scanner_then_legacy(&a);
    the_plans_phase_1_is_refused_once_trades_bars_exist(&a);
    archive_restore_and_soft_delete_keep_the_old_rows(&a);
    irreversible_deletes_refuse_what_is_no_copy(&a);
    irreversible_deletes_with_a_real_copy_keep_the_old_rows(&a);

    // the way back never touches what tradebars did not write
    let db = &a.db;
    let removed = count(db, "SELECT rollback_trades()");
    assert!(removed > 0);
    assert_eq!(tradebars_rows(db), 0);
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM price_bars WHERE data_source = 'scanner'"
        ),
        30
    );
    a.step_keeping(
        "rollback_trades()",
        &["price_bars_backup"],
        "only tradebars' bars removed",
    );
    replay_gives_the_oracle(db, &file);
    a.step_keeping(
        "replay again",
        &["price_bars_backup"],
        "trades bars = oracle",
    );
}

/// mark: the scanner's 30 bars set apart, the rest already legacy; columns kept; the plan's
/// phase 1 SQL run again changes nothing before any trades bar exists.
fn mark_legacy_sets_the_scanner_apart(a: &Adoption) {
    let db = &a.db;
    assert_eq!(count(db, "SELECT mark_legacy()"), 0);
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM price_bars WHERE data_source = 'scanner' AND is_legacy"
        ),
        30
    );
    assert_eq!(
        count(db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'price_bars'::regclass AND attname = 'migrated_at'"),
        1
    );
    a.step("mark_legacy()", "30 scanner bars set apart as 'scanner'");
    run(db, "UPDATE price_bars SET is_legacy = true, data_source = 'mbp-1', migrated_at = NOW() WHERE is_legacy IS NULL OR is_legacy = false")
        .expect("nothing to relabel yet");
    a.step("plan's phase 1 again", "no row changed");
}

/// bars(): trades first, then the scanner, then legacy.
fn bars_read_trades_then_scanner_then_legacy(a: &Adoption) {
    let db = &a.db;
    assert_eq!(sources_in_bars(db, "WGRX"), "trades");
    let abcd = sources_in_bars(db, "ABCD");
    assert!(abcd.contains("mbp-1"), "{abcd}");
    // where no trades bar exists for a minute, the scanner's wins over the legacy bar
    run(db, "DELETE FROM price_bars WHERE symbol = 'WGRX' AND \"timestamp\" = '2025-10-24 15:31+00' AND data_source = 'trades'")
        .expect("remove one trades bar");
    let src: String = connect(db)
        .query_one("SELECT data_source FROM bars('WGRX', '2025-10-24 15:31+00', '2025-10-24 15:32+00', include_legacy => true)", &[])
        .expect("bars")
        .get(0);
    assert_eq!(src, "scanner");
    a.step("bars()", "trades, then scanner, then legacy");
}

/// The plan's phase 1 SQL again, now that trades bars exist: refused, nothing changed; status
/// and coverage name the scanner's bars.
fn the_plans_phase_1_is_refused_once_trades_bars_exist(a: &Adoption) {
    let db = &a.db;
    let (state, msg) = sqlstate_of(db, "UPDATE price_bars SET is_legacy = true, data_source = 'mbp-1' WHERE is_legacy IS NULL OR is_legacy = false");
    assert_eq!(state, "55000", "{msg}");
    assert!(msg.contains("built by tradebars"), "{msg}");
    a.step("plan's phase 1 again", "refused (55000)");

    assert_eq!(
        count(
            db,
            "SELECT bars FROM migration_status() WHERE data_source = 'scanner'"
        ),
        30
    );
    assert_eq!(
        count(
            db,
            "SELECT sum(scanner_bars)::bigint FROM migration_coverage('10 years')"
        ),
        30
    );
    a.step(
        "migration_status(), migration_coverage()",
        "scanner shown apart",
    );
}

fn archive_restore_and_soft_delete_keep_the_old_rows(a: &Adoption) {
    let db = &a.db;
    run(db, "SELECT archive_legacy()").expect("archive");
    assert_eq!(
        count(db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
    a.step("archive_legacy()", "moved, verified");
    run(db, "SELECT restore_legacy()").expect("restore");
    a.step("restore_legacy()", "back");
    run(db, "SELECT soft_delete_legacy()").expect("soft delete");
    a.step("soft_delete_legacy()", "marked deleted");
}

/// Irreversible deletes take only a real copy: each of 6 tables that is none is refused.
fn irreversible_deletes_refuse_what_is_no_copy(a: &Adoption) {
    let db = &a.db;
    run(db, "CREATE TABLE keys_only AS SELECT symbol, \"timestamp\", data_source FROM price_bars; \
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
            let (state, msg) = sqlstate_of(db, &sql);
            assert_eq!(state, code, "{sql}: {msg}");
            assert!(msg.contains(says), "{sql}: {msg}");
        }
    }
    a.step(
        "deletes refused for 6 non-copies",
        "refused, nothing deleted",
    );
}

/// purge_deleted() and hard_delete_legacy() with a real copy: the old rows live on in it,
/// and are put back after each.
fn irreversible_deletes_with_a_real_copy_keep_the_old_rows(a: &Adoption) {
    let db = &a.db;
    run(
        db,
        "CREATE TABLE price_bars_backup AS SELECT * FROM price_bars",
    )
    .expect("backup");
    run(
        db,
        "SELECT purge_deleted('0 seconds', backup_table => 'price_bars_backup')",
    )
    .expect("purge");
    assert_eq!(
        count(db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
    a.step_keeping(
        "purge_deleted() with a real copy",
        &["price_bars_backup"],
        "deleted, held in the copy",
    );
    run(db, "INSERT INTO price_bars SELECT * FROM price_bars_backup WHERE is_legacy; SELECT restore_legacy(); \
              DROP TABLE price_bars_backup; CREATE TABLE price_bars_backup AS SELECT * FROM price_bars;")
        .expect("back from the copy, and a fresh copy");
    run(db, "SELECT hard_delete_legacy('price_bars_backup')").expect("hard delete");
    a.step_keeping(
        "hard_delete_legacy() with a real copy",
        &["price_bars_backup"],
        "deleted, held in the copy",
    );
    run(
        db,
        "INSERT INTO price_bars SELECT * FROM price_bars_backup WHERE is_legacy",
    )
    .expect("back");
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
    // one trade rolled up, the two oversized ones rejected
    let row = c
        .query_one(
            "SELECT trades_rolled_up, trades_rejected FROM bars_rollup()",
            &[],
        )
        .expect("rollup");
    let (rolled_up, rejected): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((rolled_up, rejected), (1, 2));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM trades_rejected WHERE reason = 'size out of range'"
        ),
        2
    );
    assert_eq!(count(&db, "SELECT volume FROM price_bars"), 7);
}

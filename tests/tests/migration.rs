//! The DBA's migration on a database built the way the old app built it, through every
//! phase of the plan and back.

use tradebars_tests::*;

/// The old app's table (the shared fixture, then its later columns, which land after volume
/// as in the old app's own) with its quote-built bars: one per minute, volume 0, prices as
/// floats (0.1 + 0.2 included).
const OLD_APP: &str = concat!(
    include_str!("../../test/fixtures/old_app_schema.sql"),
    r#"
ALTER TABLE price_bars
    ADD COLUMN trade_count integer NOT NULL DEFAULT 0,
    ADD COLUMN created_at  timestamptz NOT NULL DEFAULT now();
CREATE INDEX idx_price_bars_symbol ON price_bars (symbol);
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close)
SELECT s, timestamp '2025-10-24 14:30' + m * interval '1 minute',
       1.2 + m * 0.01, 1.25 + m * 0.01, 1.15 + m * 0.01, (0.1::float8 + 0.2::float8) + m
FROM unnest(ARRAY['WGRX', 'ABCD']) AS s, generate_series(0, 59) AS m;
"#
);

/// The arguments of bars() for WGRX over the old app's hour, its closing parenthesis left off
/// for more arguments.
const WGRX_MINUTES: &str = "('WGRX', '2025-10-24 14:30+00', '2025-10-24 15:30+00'";

/// Every legacy bar, every column of it, as one digest.
const LEGACY_DIGEST: &str = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM (SELECT id, symbol, \"timestamp\", open, high, low, close, volume, trade_count, created_at, is_legacy, data_source, migrated_at FROM price_bars WHERE is_legacy) t";

/// (id, open, close) of every bar as doubles, by `sql`.
fn prices_as_doubles(db: &str, sql: &str) -> Vec<(i32, f64, f64)> {
    connect(db)
        .query(sql, &[])
        .expect("read")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn the_old_apps_database_goes_through_every_phase_and_back() {
    let db = fresh_db("old_app", OLD_APP);
    // CREATE EXTENSION kept the table as it was
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM price_bars"), 120);
    assert_eq!(one::<String>(&db, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'price_bars'::regclass AND attname = 'open'"), "double precision");
    let floats_before =
        prices_as_doubles(&db, "SELECT id, open, close FROM price_bars ORDER BY id");

    // out of order: a rollup before the table is migrated is refused, nothing changes
    assert!(error_of(&db, "SELECT bars_rollup()").contains("run SELECT mark_legacy(); first"));

    phase_1_marks_every_bar_legacy_as_the_same_doubles(&db, &floats_before);
    phases_2_to_5_put_trades_bars_beside_the_legacy_ones(&db);
    let digest: String = one(&db, LEGACY_DIGEST);
    options_a_and_b_give_every_legacy_bar_back(&db, &digest);

    // Rollback: trades bars go, every legacy bar stays as it was
    let trades_bars: i64 = one(
        &db,
        "SELECT count(*) FROM price_bars WHERE data_source = 'trades'",
    );
    assert!(trades_bars > 1000);
    assert_eq!(one::<i64>(&db, "SELECT rollback_trades()"), trades_bars);
    assert_eq!(one::<String>(&db, LEGACY_DIGEST), digest);

    // Option C with a backup table the DBA made
    connect(&db)
        .batch_execute("CREATE TABLE price_bars_backup AS SELECT * FROM price_bars")
        .expect("backup");
    assert_eq!(
        one::<i64>(&db, "SELECT hard_delete_legacy('price_bars_backup')"),
        120
    );
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM price_bars"), 0);
}

/// Phase 1: mark legacy; a second call changes nothing; every price converts back to the
/// double it was (`floats_before`).
fn phase_1_marks_every_bar_legacy_as_the_same_doubles(db: &str, floats_before: &[(i32, f64, f64)]) {
    assert_eq!(one::<i64>(db, "SELECT mark_legacy()"), 120);
    assert_eq!(one::<i64>(db, "SELECT mark_legacy()"), 0);
    assert!(
        error_of(db, "SELECT mark_legacy('x''); DROP TABLE price_bars; --')")
            .contains("source must be")
    );
    assert!(error_of(db, "SELECT mark_legacy(NULL)").contains("source must not be NULL"));
    let floats_after = prices_as_doubles(
        db,
        "SELECT id, open::float8, close::float8 FROM price_bars ORDER BY id",
    );
    assert_eq!(
        floats_before, floats_after,
        "every price converts back to the very same double"
    );
    assert_eq!(
        one::<i64>(
            db,
            "SELECT count(*) FROM price_bars WHERE is_legacy AND data_source = 'mbp-1'"
        ),
        120
    );
}

/// Phase 2-5: trades bars arrive for the same minutes; both coexist, trades win in bars(),
/// and migration_check() passes.
fn phases_2_to_5_put_trades_bars_beside_the_legacy_ones(db: &str) {
    let file = scratch("old_app.dbn.zst");
    generate_into(&file, 5, 20000, &[]);
    replay(db, &file, true);
    assert_eq!(
        one::<i64>(
            db,
            &format!("SELECT count(*) FROM bars{WGRX_MINUTES}) WHERE data_source <> 'trades'")
        ),
        0
    );
    // with legacy: one bar per minute, the trades bar wherever there is one
    assert_eq!(
        one::<i64>(
            db,
            &format!("SELECT count(*) FROM bars{WGRX_MINUTES}, include_legacy => true)")
        ),
        60
    );
    assert_eq!(
        one::<i64>(db, &format!("SELECT count(*) FROM bars{WGRX_MINUTES}, include_legacy => true) WHERE NOT is_legacy")),
        one::<i64>(db, "SELECT count(*) FROM price_bars WHERE symbol = 'WGRX' AND data_source = 'trades' AND \"timestamp\" < '2025-10-24 15:30+00'")
    );
    assert_eq!(
        one::<i64>(db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        120
    );
    let status: i64 = one(db, "SELECT count(*) FROM migration_status()");
    assert_eq!(status, 2);
    let passed: Vec<(String, bool)> = connect(db)
        .query("SELECT criterion, passed FROM migration_check()", &[])
        .expect("check")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for criterion in [
        "new bars have volume > 0",
        "at least 1,000 new bars",
        "API returns data",
    ] {
        assert!(
            passed.contains(&(criterion.to_string(), true)),
            "{passed:?}"
        );
    }
}

/// Option A soft deletes and undeletes, Option C refuses without a copy, Option B archives
/// and restores: each leaves every legacy bar as it was (`digest`).
fn options_a_and_b_give_every_legacy_bar_back(db: &str, digest: &str) {
    // Option A: soft delete, and back
    assert_eq!(one::<i64>(db, "SELECT soft_delete_legacy()"), 120);
    assert_eq!(
        one::<i64>(
            db,
            &format!(
                "SELECT count(*) FROM bars{WGRX_MINUTES}, include_legacy => true) WHERE is_legacy"
            )
        ),
        0
    );
    assert!(
        error_of(db, "SELECT purge_deleted('0 seconds')").contains("in no archive or backup table")
    );
    assert!(error_of(db, "SELECT purge_deleted('-1 day')").contains("must not be negative"));
    assert!(error_of(db, "SELECT purge_deleted(NULL)").contains("must not be NULL"));
    assert_eq!(one::<i64>(db, "SELECT restore_legacy()"), 120);
    assert_eq!(one::<String>(db, LEGACY_DIGEST), digest);

    // Option C refuses without a copy; Option B archives and restores identically
    assert!(error_of(db, "SELECT hard_delete_legacy()").contains("in no archive or backup table"));
    assert_eq!(one::<i64>(db, "SELECT archive_legacy()"), 120);
    assert_eq!(
        one::<i64>(db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
    assert_eq!(
        one::<i64>(db, "SELECT count(*) FROM price_bars_legacy"),
        120
    );
    assert_eq!(one::<i64>(db, "SELECT restore_legacy()"), 120);
    assert_eq!(one::<String>(db, LEGACY_DIGEST), digest);
}

/// The arguments of bars() for WGRX over the generated day.
const WGRX_DAY: &str = "'WGRX', '2025-10-24 14:30+00', '2025-10-24 21:00+00'";

#[test]
fn bars_buckets_roll_minutes_up_exactly() {
    let db = fresh_db("buckets", "");
    let file = scratch("buckets.dbn.zst");
    generate_into(&file, 3, 30000, &[]);
    replay(&db, &file, true);
    an_hour_bucket_equals_its_minute_bars(&db);
    bars_refuses_a_bucket_or_range_it_cannot_make(&db);
    // a symbol holding SQL is just a symbol that has no bars
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM bars('x''; DROP TABLE price_bars; --', '-infinity', 'infinity')"
        ),
        0
    );
    assert!(one::<i64>(&db, "SELECT count(*) FROM price_bars") > 0);
}

/// An hour bucket equals its minute bars: first open, last close, max, min, sums; a day's
/// bucket holds the day's volume.
fn an_hour_bucket_equals_its_minute_bars(db: &str) {
    let range = WGRX_DAY;
    let mismatches: i64 = one(
        db,
        &format!(
            "WITH m AS (SELECT * FROM bars({range})),
                  h AS (SELECT * FROM bars({range}, bucket => '1 hour'))
             SELECT count(*) FROM h WHERE
                open <> (SELECT open FROM m WHERE m.\"timestamp\" >= h.\"timestamp\" ORDER BY \"timestamp\" LIMIT 1)
             OR close <> (SELECT close FROM m WHERE m.\"timestamp\" < h.\"timestamp\" + interval '1 hour' ORDER BY \"timestamp\" DESC LIMIT 1)
             OR high <> (SELECT max(high) FROM m WHERE m.\"timestamp\" >= h.\"timestamp\" AND m.\"timestamp\" < h.\"timestamp\" + interval '1 hour')
             OR volume <> (SELECT sum(volume) FROM m WHERE m.\"timestamp\" >= h.\"timestamp\" AND m.\"timestamp\" < h.\"timestamp\" + interval '1 hour')"
        ),
    );
    assert_eq!(mismatches, 0);
    assert_eq!(
        one::<i64>(
            db,
            &format!("SELECT count(*) FROM bars({range}, bucket => '1 hour')")
        ),
        7
    );
    assert_eq!(
        one::<i64>(
            db,
            &format!("SELECT sum(volume)::bigint FROM bars({range}, bucket => '1 day')")
        ),
        one::<i64>(
            db,
            "SELECT sum(volume)::bigint FROM price_bars WHERE symbol = 'WGRX'"
        )
    );
}

fn bars_refuses_a_bucket_or_range_it_cannot_make(db: &str) {
    let range = WGRX_DAY;
    for (bad, says) in [
        ("'1 month'", "months"),
        ("'30 seconds'", "at least 1 minute"),
        ("'90 seconds'", "whole number of minutes"),
        ("NULL", "must not be NULL"),
    ] {
        assert!(
            error_of(db, &format!("SELECT * FROM bars({range}, bucket => {bad})")).contains(says),
            "{bad}"
        );
    }
    assert!(error_of(db, "SELECT * FROM bars(NULL, now(), now())").contains("must not be NULL"));
    assert!(error_of(
        db,
        "SELECT * FROM bars('WGRX', now(), now() - interval '1 day')"
    )
    .contains("before start"));
}

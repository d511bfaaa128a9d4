//! Hour bars: bars() over buckets of an hour or more reads whole hours from hour_bars, kept by
//! the rollup and the official load. Its answers equal, bucket for bucket, the ones computed
//! here from the distinct trades and official bars (UTC hours and days), and the ones bars()
//! gives minute by minute (every time zone, origin and session), through late trades, official
//! bars next to trades bars, a rollback, and bars deleted by hand until refresh_hour_bars().

use std::collections::{BTreeMap, BTreeSet};

use tradebars_tests::*;

const DAY: &str = "'2025-10-24 14:17', '2025-10-24 20:43'";

/// A bucket in UTC as the oracle makes it: open, high, low, close, volume, trade count, sources.
type Bucket = (i64, i64, i64, i64, i64, i64, BTreeSet<&'static str>);

/// The oracle's buckets of `seconds` from its minute bars: per minute the trades bar, else the
/// official one; open of the first minute, close of the last.
fn buckets(
    trades: &BTreeMap<BarKey, BarVal>,
    official: &BTreeMap<BarKey, BarVal>,
    from: i64,
    to: i64,
    seconds: i64,
) -> BTreeMap<(String, i64), Bucket> {
    let mut minutes: BTreeMap<BarKey, (BarVal, &'static str)> = official
        .iter()
        .map(|(k, v)| (k.clone(), ((v.0, v.1, v.2, v.3, v.4, 0), "ohlcv-1m")))
        .collect();
    for (k, v) in trades {
        minutes.insert(k.clone(), (*v, "trades"));
    }
    let mut out: BTreeMap<(String, i64), Bucket> = BTreeMap::new();
    for ((symbol, minute), (v, source)) in minutes {
        if minute < from || minute >= to {
            continue;
        }
        let key = (symbol, minute - minute.rem_euclid(seconds));
        let b = out
            .entry(key)
            .or_insert((v.0, v.1, v.2, v.3, 0, 0, BTreeSet::new()));
        b.1 = b.1.max(v.1);
        b.2 = b.2.min(v.2);
        b.3 = v.3;
        b.4 += v.4;
        b.5 += v.5;
        b.6.insert(source);
    }
    out
}

/// What bars() answers in UTC buckets of `bucket`, in the oracle's form.
fn utc_bars(db: &str, symbols: &BTreeSet<String>, bucket: &str) -> BTreeMap<(String, i64), Bucket> {
    let mut c = connect(db);
    let mut out = BTreeMap::new();
    for symbol in symbols {
        let rows = c
            .query(
                &format!(
                    "SELECT extract(epoch FROM \"timestamp\")::bigint, (open * 1e9)::bigint,
                            (high * 1e9)::bigint, (low * 1e9)::bigint, (close * 1e9)::bigint,
                            volume, trade_count, data_source
                     FROM bars($1, {DAY}, bucket => '{bucket}')"
                ),
                &[symbol],
            )
            .expect("bars");
        for r in rows {
            let sources: BTreeSet<&'static str> = match r.get::<_, String>(7).as_str() {
                "trades" => ["trades"].into(),
                "ohlcv-1m" => ["ohlcv-1m"].into(),
                "mixed" => ["trades", "ohlcv-1m"].into(),
                other => panic!("data_source {other}"),
            };
            out.insert(
                (symbol.clone(), r.get(0)),
                (
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    sources,
                ),
            );
        }
    }
    out
}

/// bars() read through hour bars and read minute by minute (include_legacy: there is no
/// legacy bar, so the same minutes) give the same rows, for every symbol and each of many
/// calendars; returns how many rows were compared.
fn hours_equal_minutes(db: &str) -> i64 {
    let sql = format!(
        "WITH spec(bucket, tz, origin, session) AS (VALUES
             ('1 hour'::interval, 'UTC', '0'::interval, NULL::text),
             ('3 hours', 'UTC', '0', NULL),
             ('1 day', 'UTC', '0', NULL),
             ('1 day', 'America/New_York', '0', NULL),
             ('1 day', 'America/New_York', '0', '10:15-15:45'),
             ('2 hours', 'America/New_York', '09:30', NULL),
             ('4 hours', 'Asia/Kolkata', '0', NULL),
             ('1 hour', 'Australia/Lord_Howe', '0', '01:00-07:00')),
         answers AS (
             SELECT s.bucket, y.symbol,
                    ARRAY(SELECT b::text FROM bars(y.symbol, {DAY}, bucket => s.bucket, tz => s.tz,
                                                   origin => s.origin, session => s.session) b
                          ORDER BY b.\"timestamp\") AS by_hours,
                    ARRAY(SELECT b::text FROM bars(y.symbol, {DAY}, include_legacy => true,
                                                   bucket => s.bucket, tz => s.tz,
                                                   origin => s.origin, session => s.session) b
                          ORDER BY b.\"timestamp\") AS by_minutes
             FROM spec s, (SELECT DISTINCT symbol FROM price_bars) y)
         SELECT count(*) FILTER (WHERE by_hours IS DISTINCT FROM by_minutes),
                coalesce(sum(cardinality(by_hours)), 0)::bigint
         FROM answers"
    );
    let row = connect(db).query_one(&sql, &[]).expect("comparing");
    let (differ, rows): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        differ, 0,
        "bars() through hour bars differs from minute by minute"
    );
    rows
}

/// A day of trades rolled up in three overlapping pieces (the last one's trades land in minutes
/// and hours the others filled), then official bars of other symbols: the database, the trades'
/// oracle bars and the official bars.
fn late_trades_and_official_bars() -> (String, BTreeMap<BarKey, BarVal>, BTreeMap<BarKey, BarVal>) {
    let file = generate("hours-trades.dbn.zst", 4, 9000, 81);
    let other = generate("hours-other.dbn.zst", 4, 3000, 82);
    let (official, _) = official_bars_file(&other, "hours-other.ohlcv-1m.dbn.zst");
    let (start, end) = range_of(&file);
    let at = |f: f64| start + ((end - start) as f64 * f) as u64;
    let db = fresh_db("hours", "");
    for (n, (from, to)) in [(0.0, 0.3), (0.6, 1.01), (0.2, 0.7)]
        .into_iter()
        .enumerate()
    {
        let piece = scratch(&format!("hours-piece-{n}.dbn.zst"));
        cut_file(&file, &piece, at(from), at(to), false);
        replay(&db, &piece, true);
    }
    let out = feeder(&["replay", &official.display().to_string()], Some(&db));
    assert!(out.status.success(), "{}", text(&out));
    (db, oracle(&file), ohlcv_of(&oracle(&other)))
}

/// The range DAY names, in epoch seconds.
const DAY_SECONDS: (i64, i64) = (1761315420, 1761338580);

/// WGRX's 16:00 hour as bars() reads it from its hour bar, and the sum of its minutes' volumes.
fn wgrx_16h_volumes(c: &mut postgres::Client) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT volume FROM bars('WGRX', '2025-10-24 16:00', '2025-10-24 17:00', bucket => '1 hour')),
                    (SELECT sum(volume)::bigint FROM price_bars
                     WHERE symbol = 'WGRX' AND \"timestamp\" >= '2025-10-24 16:00' AND \"timestamp\" < '2025-10-24 17:00')",
            &[],
        )
        .expect("the hour");
    (r.get(0), r.get(1))
}

/// Bars deleted by hand stay in their hour until refresh_hour_bars() sums it again.
fn refresh_sums_an_hour_deleted_by_hand(db: &str) {
    let mut c = connect(db);
    c.batch_execute(
        "DELETE FROM price_bars WHERE \"timestamp\" >= '2025-10-24 16:00' AND \"timestamp\" < '2025-10-24 16:30'",
    )
    .expect("deleting by hand");
    let (stale, left) = wgrx_16h_volumes(&mut c);
    assert!(
        stale > left && left > 0,
        "the hour bar is stale: {stale} vs {left}"
    );
    let written: i64 = c
        .query_one(
            "SELECT refresh_hour_bars('2025-10-24 16:00', '2025-10-24 17:00')",
            &[],
        )
        .expect("refresh")
        .get(0);
    assert_eq!(
        written,
        count(db, "SELECT count(DISTINCT symbol) FROM price_bars WHERE \"timestamp\" >= '2025-10-24 16:00' AND \"timestamp\" < '2025-10-24 17:00'")
    );
    assert_eq!(wgrx_16h_volumes(&mut c), (left, left));
    hours_equal_minutes(db);
}

#[test]
fn hour_bars_give_the_buckets_the_minutes_give_through_late_trades_official_bars_and_rollback() {
    let (db, trades, bars) = late_trades_and_official_bars();
    assert_eq!(stored_bars(&db), trades, "the trades bars themselves");
    let symbols: BTreeSet<String> = trades
        .keys()
        .chain(bars.keys())
        .map(|k| k.0.clone())
        .collect();
    let (from, to) = DAY_SECONDS;
    for (bucket, seconds) in [("1 hour", 3600), ("3 hours", 10800), ("1 day", 86400)] {
        let expected = buckets(&trades, &bars, from, to, seconds);
        assert!(
            expected.values().any(|b| b.6.len() == 2),
            "some buckets mix the sources"
        );
        assert_eq!(utc_bars(&db, &symbols, bucket), expected, "{bucket}");
    }
    assert!(hours_equal_minutes(&db) > 100);
    assert!(
        count(&db, "SELECT count(*) FROM hour_bars") >= symbols.len() as i64 * 6,
        "the hours are kept"
    );

    // after a rollback only the official bars are left, in their hours too
    connect(&db)
        .batch_execute("SELECT rollback_trades()")
        .expect("rollback");
    let none = BTreeMap::new();
    assert_eq!(
        utc_bars(&db, &symbols, "1 hour"),
        buckets(&none, &bars, from, to, 3600)
    );
    hours_equal_minutes(&db);
    refresh_sums_an_hour_deleted_by_hand(&db);
}

/// The official bars of an oracle: no trade count.
fn ohlcv_of(bars: &BTreeMap<BarKey, BarVal>) -> BTreeMap<BarKey, BarVal> {
    bars.iter()
        .map(|(k, v)| (k.clone(), (v.0, v.1, v.2, v.3, v.4, 0)))
        .collect()
}

#[test]
fn an_adopted_price_bars_gets_its_hours_back_when_the_extension_is_created_again() {
    // the old app's table, adopted by mark_legacy(), then trades bars and official bars in it
    let db = fresh_db(
        "hours_adopted",
        "CREATE TABLE price_bars (symbol varchar(10), \"timestamp\" timestamp, open float8,
                                  high float8, low float8, close float8, volume bigint,
                                  PRIMARY KEY (symbol, \"timestamp\"));
         INSERT INTO price_bars VALUES ('WGRX', '2025-10-23 15:00', 1, 2, 0.5, 1.5, 0);",
    );
    let mut c = connect(&db);
    c.batch_execute("SELECT mark_legacy()")
        .expect("mark_legacy");
    let file = generate("hours-adopted.dbn.zst", 3, 3000, 83);
    replay(&db, &file, true);
    let other = generate_on("hours-adopted-other.dbn.zst", 3, 2000, 84, "2025-10-27");
    let (official, _) = official_bars_file(&other, "hours-adopted.ohlcv-1m.dbn.zst");
    let out = feeder(&["replay", &official.display().to_string()], Some(&db));
    assert!(out.status.success(), "{}", text(&out));
    let daily = "SELECT string_agg(b::text, ';' ORDER BY b.\"timestamp\")
                 FROM bars('WGRX', '2025-10-20', '2025-10-30', bucket => '1 day', tz => 'America/New_York') b";
    let before: String = c.query_one(daily, &[]).expect("bars").get(0);
    let hours = count(&db, "SELECT count(*) FROM hour_bars");
    assert!(hours > 0);

    // the table outlives the extension; created again, the extension sums its hours again
    c.batch_execute("DROP EXTENSION tradebars CASCADE; CREATE EXTENSION tradebars")
        .expect("dropping and creating the extension");
    assert_eq!(count(&db, "SELECT count(*) FROM hour_bars"), hours);
    let after: String = c.query_one(daily, &[]).expect("bars").get(0);
    assert_eq!(after, before);

    // the plan's phase 1 SQL run again cannot relabel Databento's bars (nor tradebars' own)
    let relabel = c
        .batch_execute(
            "UPDATE price_bars SET is_legacy = true, data_source = 'mbp-1', migrated_at = NOW()
             WHERE data_source = 'ohlcv-1m' AND (is_legacy IS NULL OR is_legacy = false)",
        )
        .expect_err("official bars keep their source");
    assert_eq!(
        relabel.code(),
        Some(&postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
        "{relabel}"
    );
    let message = relabel
        .as_db_error()
        .map(|e| e.message())
        .unwrap_or_default();
    assert!(message.contains("official bars (ohlcv-1m)"), "{message}");
    let after: String = c.query_one(daily, &[]).expect("bars").get(0);
    assert_eq!(after, before);
    hours_equal_minutes(&db);
}

//! Databento's official OHLCV-1m bars as history: loaded by `replay` into price_bars with
//! data_source 'ohlcv-1m', equal to the trades bars of the same minutes (the clock is
//! Databento's), ranked after trades bars and before legacy by bars(), counted by
//! migration_coverage(), left alone by mark_legacy(). The official bars here are derived by
//! the test from the generated trades (the oracle), independently of the extension.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;

use dbn::decode::{DbnMetadata, DecodeRecordRef, DynDecoder};
use dbn::{OhlcvMsg, Schema, VersionUpgradePolicy};
use tradebars_tests::historical::FakeHistorical;
use tradebars_tests::*;

/// OHLCV only: official bars carry no trade count.
fn ohlcv(bars: &BTreeMap<BarKey, BarVal>) -> Ohlcv {
    bars.iter()
        .map(|(k, v)| (k.clone(), (v.0, v.1, v.2, v.3, v.4)))
        .collect()
}

/// The symbol and day whose bars() the first test reads.
const SYMBOL: &str = "WGRX";
const DAY: &str = "'2025-10-24', '2025-10-25'";

/// The official bars of `trades` as they are, untampered.
fn clean_official(trades: &Path, name: &str, schema: Schema) -> PathBuf {
    official_file(trades, name, schema, |_| {}).0
}

/// `replay` of `file` into `db`, its outcome left to the caller.
fn replay_unchecked(db: &str, file: &Path) -> Output {
    feeder(&["replay", &file.display().to_string()], Some(db))
}

/// Asserts that `out` exited with `code` and that its output says each of `says`.
fn assert_exits(out: &Output, code: i32, says: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(says.iter().all(|s| text(out).contains(s)), "{}", text(out));
}

/// A fresh database whose bars are on the exchange clock (ts_event).
fn exchange_clock_db(name: &str) -> String {
    let db = fresh_db(name, "");
    connect(&db)
        .batch_execute("SELECT set_bar_clock('ts_event')")
        .expect("the exchange clock");
    db
}

/// How many requests the fake historical API has been asked so far.
fn requests(api: &FakeHistorical) -> usize {
    api.requests.load(Ordering::SeqCst)
}

#[test]
fn official_bars_equal_the_trades_bars_of_the_same_minutes() {
    let trades = generate("official-day.dbn.zst", 6, 12000, 71);
    let (official, n) = official_bars_file(&trades, "official-day.ohlcv-1m.dbn.zst");
    let db = fresh_db("official_equal", "");
    replay(&db, &trades, true);
    let out = replay(&db, &official, false);
    assert!(
        out.contains(&format!("{n} official ohlcv-1m bars written")),
        "{out}"
    );

    let from_trades = stored_bars_of(&db, "trades");
    let from_official = stored_bars_of(&db, "ohlcv-1m");
    assert_eq!(from_trades, oracle(&trades));
    assert_eq!(ohlcv(&from_official), ohlcv(&from_trades));
    assert!(
        from_official.values().all(|v| v.5 == 0),
        "no trade count in Databento's bars"
    );

    // loading the file again changes nothing
    replay(&db, &official, false);
    assert_eq!(stored_bars_of(&db, "ohlcv-1m"), from_official);

    assert_bars_prefers_trades_then_official(&db, &from_official);
    assert_the_daily_bar_sums_the_minutes(&db, &from_trades);
    assert_counted_by_coverage_and_left_by_mark_legacy(&db, n, &from_official);
}

/// The distinct (data_source, is_legacy) of bars() of SYMBOL on DAY.
fn sources(db: &str) -> Vec<(String, bool)> {
    connect(db)
        .query(
            &format!("SELECT DISTINCT data_source, is_legacy FROM bars('{SYMBOL}', {DAY})"),
            &[],
        )
        .expect("bars")
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
        .collect()
}

/// bars(): the trades bar wins in each minute; without trades bars, the official one.
fn assert_bars_prefers_trades_then_official(db: &str, from_official: &BTreeMap<BarKey, BarVal>) {
    assert_eq!(sources(db), vec![("trades".to_string(), false)]);
    connect(db)
        .batch_execute("SELECT rollback_trades()")
        .expect("rollback");
    assert_eq!(sources(db), vec![("ohlcv-1m".to_string(), false)]);
    assert_eq!(
        &stored_bars_of(db, "ohlcv-1m"),
        from_official,
        "rollback_trades keeps them"
    );
}

/// The daily bar of SYMBOL: the volume of its minutes and the close of its last one.
fn assert_the_daily_bar_sums_the_minutes(db: &str, from_trades: &BTreeMap<BarKey, BarVal>) {
    let daily: (i64, i64) = {
        let r = connect(db)
            .query_one(
                &format!("SELECT volume, (close * 1000000000)::bigint FROM bars('{SYMBOL}', {DAY}, bucket => '1 day')"),
                &[],
            )
            .expect("a daily bar");
        (r.get(0), r.get(1))
    };
    let of_symbol: Vec<&BarVal> = from_trades
        .iter()
        .filter(|((s, _), _)| s == SYMBOL)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        daily,
        (
            of_symbol.iter().map(|v| v.4).sum::<i64>(),
            of_symbol.last().expect("bars").3
        )
    );
}

/// migration_coverage() counts them; mark_legacy() leaves them as they are.
fn assert_counted_by_coverage_and_left_by_mark_legacy(
    db: &str,
    n: usize,
    from_official: &BTreeMap<BarKey, BarVal>,
) {
    assert_eq!(
        count(
            db,
            "SELECT sum(official_bars)::bigint FROM migration_coverage('100 years')"
        ),
        n as i64
    );
    connect(db)
        .batch_execute("SELECT mark_legacy()")
        .expect("mark_legacy");
    assert_eq!(&stored_bars_of(db, "ohlcv-1m"), from_official);
    assert_eq!(
        count(db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
}

#[test]
fn bad_official_bars_are_rejected_and_other_intervals_refused() {
    let trades = generate("official-bad.dbn.zst", 3, 3000, 72);
    let db = fresh_db("official_bad", "");
    let kept = assert_bars_with_high_below_low_are_rejected(&trades, &db);
    assert_other_intervals_are_refused_whole(&trades, &db, kept);
    assert_the_exchange_clock_refuses_official_bars(&trades);
}

/// Every bar whose minute is odd says high < low: those are rejected, the others written.
/// Returns how many bars price_bars holds then.
fn assert_bars_with_high_below_low_are_rejected(trades: &Path, db: &str) -> i64 {
    let (bad, n) = official_file(
        trades,
        "official-bad.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |b| {
            if (b.hd.ts_event / 60_000_000_000) % 2 == 1 {
                b.low = b.high + 1;
            }
        },
    );
    let odd = oracle(trades)
        .keys()
        .filter(|(_, m)| (m / 60) % 2 == 1)
        .count();
    assert!(odd > 0 && odd < n);
    let out = replay(db, &bad, false);
    assert!(
        out.contains(&format!("{} official ohlcv-1m bars written", n - odd))
            && out.contains(&format!("{odd} rejected in all")),
        "{out}"
    );
    assert_eq!(
        count(db, "SELECT count(*) FROM price_bars"),
        (n - odd) as i64
    );
    (n - odd) as i64
}

fn assert_other_intervals_are_refused_whole(trades: &Path, db: &str, kept: i64) {
    // hourly bars next to minute bars would count the same trades twice: refused whole
    let hourly = clean_official(trades, "official.ohlcv-1h.dbn.zst", Schema::Ohlcv1H);
    assert_exits(
        &replay_unchecked(db, &hourly),
        1,
        &["schema ohlcv-1h carries no trade events", "ohlcv-1m"],
    );
    // an ohlcv-1m file whose records are of another interval: refused whole
    let (mixed, _) = official_file(
        trades,
        "official-mixed.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |b| {
            b.hd.rtype = dbn::rtype::OHLCV_1H;
        },
    );
    assert_exits(&replay_unchecked(db, &mixed), 1, &["another interval"]);
    assert_eq!(count(db, "SELECT count(*) FROM price_bars"), kept);
}

/// A database on the exchange clock: Databento's bars would not agree with its own.
fn assert_the_exchange_clock_refuses_official_bars(trades: &Path) {
    let event = exchange_clock_db("official_event_clock");
    let good = clean_official(trades, "official-good.ohlcv-1m.dbn.zst", Schema::Ohlcv1M);
    assert_exits(
        &replay_unchecked(&event, &good),
        1,
        &["on the ts_event clock"],
    );
    assert_eq!(count(&event, "SELECT count(*) FROM price_bars"), 0);
}

#[test]
fn the_real_ohlcv_1m_sample_loads_as_it_is() {
    let Some(file) = sample("dbn-test_data.ohlcv-1m.v3.dbn.zst") else {
        return;
    };
    // what the file says, decoded here
    let mut decoder =
        DynDecoder::from_file(&file, VersionUpgradePolicy::UpgradeToV3).expect("decoding");
    let symbols = dbn::TsSymbolMap::from_metadata(decoder.metadata()).expect("symbology");
    let mut expected = BTreeMap::new();
    while let Some(rec) = decoder.decode_record_ref().expect("record") {
        let bar = rec.get::<OhlcvMsg>().expect("an OHLCV bar");
        let symbol = symbols
            .get_for_ts(bar.hd.ts_event, bar.hd.instrument_id)
            .cloned()
            .expect("a symbol");
        expected.insert(
            (symbol, (bar.hd.ts_event / 1_000_000_000) as i64),
            (bar.open, bar.high, bar.low, bar.close, bar.volume as i64, 0),
        );
    }
    assert!(!expected.is_empty());
    let db = fresh_db("official_sample", "");
    replay(&db, &file, false);
    assert_eq!(stored_bars_of(&db, "ohlcv-1m"), expected);
}

#[test]
fn a_backfill_of_official_bars_loads_each_chunk_once_whatever_the_chunks() {
    let trades = generate("official-backfill.dbn.zst", 5, 8000, 73);
    let (official, n) = official_bars_file(&trades, "official-backfill.ohlcv-1m.dbn.zst");
    let expected = ohlcv(&oracle(&trades));
    assert_eq!(expected.len(), n);
    let api = FakeHistorical::start(&official, TEST_API_KEY, vec![]);
    let db = fresh_db("official_backfill", "");
    assert_each_chunk_loads_once(&api, &db, n, &expected);

    // a refused key: its own exit code, nothing loaded
    let out = api.backfill(&db, "db-wrongKeyWrongKeyWrongKey12345", "ohlcv-1m", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_refused_before_anything_is_asked(&api, &db);

    // other intervals are refused before anything is asked of the API, and live refuses bars
    backfill_refused_unasked(
        &api,
        &db,
        TEST_API_KEY,
        "ohlcv-1h",
        2,
        "price_bars holds minute bars",
    );
    assert_live_refuses_bars(&db);
    assert_eq!(ohlcv(&stored_bars_of(&db, "ohlcv-1m")), expected);
}

type Ohlcv = BTreeMap<BarKey, (i64, i64, i64, i64, i64)>;

/// A backfill in chunks of 45 minutes, then of 7: the same bars, each once.
fn assert_each_chunk_loads_once(api: &FakeHistorical, db: &str, n: usize, expected: &Ohlcv) {
    let out = api.backfill(db, TEST_API_KEY, "ohlcv-1m", &["--chunk-minutes", "45"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "10 chunks, {n} bars read, {n} official bars written to price_bars (0 without a symbol mapping, 0 rejected in all)"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(&ohlcv(&stored_bars_of(db, "ohlcv-1m")), expected);
    // again, cut otherwise: the same bars, each once
    let out = api.backfill(db, TEST_API_KEY, "ohlcv-1m", &["--chunk-minutes", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(&ohlcv(&stored_bars_of(db, "ohlcv-1m")), expected);
    assert_eq!(count(db, "SELECT count(*) FROM trades_staging"), 0);
}

/// A backfill of `schema` with `key` into `db` exits with `code` saying `says`, and the
/// API is asked nothing.
fn backfill_refused_unasked(
    api: &FakeHistorical,
    db: &str,
    key: &str,
    schema: &str,
    code: i32,
    says: &str,
) {
    let asked = requests(api);
    assert_exits(&api.backfill(db, key, schema, &[]), code, &[says]);
    assert_eq!(requests(api), asked);
}

/// The exchange clock, arguments that cannot be right and a key too short to be one are
/// refused before anything is asked of the API.
fn assert_refused_before_anything_is_asked(api: &FakeHistorical, db: &str) {
    // a database on the exchange clock refuses official bars before anything is fetched
    let event = exchange_clock_db("official_backfill_event");
    let asked = requests(api);
    backfill_refused_unasked(
        api,
        &event,
        TEST_API_KEY,
        "ohlcv-1m",
        1,
        "on the ts_event clock",
    );
    assert_usage_errors(db);
    backfill_refused_unasked(api, db, "db-short", "ohlcv-1m", 2, "nothing was sent");
    assert_eq!(requests(api), asked);
}

/// Arguments that cannot be right are usage errors, before anything is asked of the API.
fn assert_usage_errors(db: &str) {
    for (args, says) in [
        (vec!["--chunk-minutes", "0"], "--chunk-minutes"),
        (vec!["--symbols", ""], "must not be empty"),
    ] {
        let mut all = vec![
            "backfill",
            "--dataset",
            "XNAS.ITCH",
            "--start",
            "2025-10-24",
            "--end",
            "2025-10-25",
        ];
        if !args.contains(&"--symbols") {
            all.push("--all-symbols");
        }
        all.extend(args.iter().copied());
        assert_exits(&feeder(&all, Some(db)), 2, &[says]);
    }
    let far = feeder(
        &[
            "backfill",
            "--dataset",
            "XNAS.ITCH",
            "--all-symbols",
            "--start",
            "2025-10-24",
            "--end",
            "2999-01-01",
        ],
        Some(db),
    );
    assert_exits(&far, 2, &["in the future"]);
}

/// live carries no bars: it points to `backfill --schema ohlcv-1m`.
fn assert_live_refuses_bars(db: &str) {
    let out = feeder(
        &[
            "live",
            "--dataset",
            "XNAS.ITCH",
            "--symbols",
            "WGRX",
            "--schema",
            "ohlcv-1m",
        ],
        Some(db),
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("backfill --schema ohlcv-1m"),
        "{}",
        text(&out)
    );
}

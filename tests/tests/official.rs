//! Databento's official OHLCV-1m bars as history: loaded by `replay` into price_bars with
//! data_source 'ohlcv-1m', equal to the trades bars of the same minutes (the clock is
//! Databento's), ranked after trades bars and before legacy by bars(), counted by
//! migration_coverage(), left alone by mark_legacy(). The official bars here are derived by
//! the test from the generated trades (the oracle), independently of the extension.

use std::collections::BTreeMap;
use std::path::Path;

use dbn::decode::{DbnMetadata, DecodeRecordRef, DynDecoder};
use dbn::{OhlcvMsg, Schema, VersionUpgradePolicy};
use tradebars_tests::*;

fn replay(db: &str, file: &Path, rollup: bool) -> String {
    let f = file.display().to_string();
    let args: Vec<&str> = if rollup {
        vec!["replay", &f, "--rollup"]
    } else {
        vec!["replay", &f]
    };
    let out = feeder(&args, Some(db));
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// OHLCV only: official bars carry no trade count.
fn ohlcv(bars: &BTreeMap<BarKey, BarVal>) -> BTreeMap<BarKey, (i64, i64, i64, i64, i64)> {
    bars.iter()
        .map(|(k, v)| (k.clone(), (v.0, v.1, v.2, v.3, v.4)))
        .collect()
}

#[test]
fn official_bars_equal_the_trades_bars_of_the_same_minutes() {
    let trades = generate("official-day.dbn.zst", 6, 12000, 71);
    let (official, n) = official_file(
        &trades,
        "official-day.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |_| {},
    );
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

    // bars(): the trades bar wins in each minute; without trades bars, the official one
    let symbol = "WGRX";
    let day = "'2025-10-24', '2025-10-25'";
    let sources = |db: &str| {
        connect(db)
            .query(
                &format!("SELECT DISTINCT data_source, is_legacy FROM bars('{symbol}', {day})"),
                &[],
            )
            .expect("bars")
            .into_iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect::<Vec<_>>()
    };
    assert_eq!(sources(&db), vec![("trades".to_string(), false)]);
    connect(&db)
        .batch_execute("SELECT rollback_trades()")
        .expect("rollback");
    assert_eq!(sources(&db), vec![("ohlcv-1m".to_string(), false)]);
    assert_eq!(
        stored_bars_of(&db, "ohlcv-1m"),
        from_official,
        "rollback_trades keeps them"
    );
    let daily: (i64, i64) = {
        let r = connect(&db)
            .query_one(
                &format!("SELECT volume, (close * 1000000000)::bigint FROM bars('{symbol}', {day}, bucket => '1 day')"),
                &[],
            )
            .expect("a daily bar");
        (r.get(0), r.get(1))
    };
    let of_symbol: Vec<&BarVal> = from_trades
        .iter()
        .filter(|((s, _), _)| s == symbol)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        daily,
        (
            of_symbol.iter().map(|v| v.4).sum::<i64>(),
            of_symbol.last().expect("bars").3
        )
    );

    // migration_coverage() counts them; mark_legacy() leaves them as they are
    assert_eq!(
        count(
            &db,
            "SELECT sum(official_bars)::bigint FROM migration_coverage('100 years')"
        ),
        n as i64
    );
    connect(&db)
        .batch_execute("SELECT mark_legacy()")
        .expect("mark_legacy");
    assert_eq!(stored_bars_of(&db, "ohlcv-1m"), from_official);
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars WHERE is_legacy"),
        0
    );
}

#[test]
fn bad_official_bars_are_rejected_and_other_intervals_refused() {
    let trades = generate("official-bad.dbn.zst", 3, 3000, 72);
    let db = fresh_db("official_bad", "");
    // every bar whose minute is odd says high < low
    let (bad, n) = official_file(
        &trades,
        "official-bad.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |b| {
            if (b.hd.ts_event / 60_000_000_000) % 2 == 1 {
                b.low = b.high + 1;
            }
        },
    );
    let odd = oracle(&trades)
        .keys()
        .filter(|(_, m)| (m / 60) % 2 == 1)
        .count();
    assert!(odd > 0 && odd < n);
    let out = replay(&db, &bad, false);
    assert!(
        out.contains(&format!("{} official ohlcv-1m bars written", n - odd))
            && out.contains(&format!("{odd} rejected in all")),
        "{out}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars"),
        (n - odd) as i64
    );

    // hourly bars next to minute bars would count the same trades twice: refused whole
    let (hourly, _) = official_file(
        &trades,
        "official.ohlcv-1h.dbn.zst",
        Schema::Ohlcv1H,
        |_| {},
    );
    let out = feeder(&["replay", &hourly.display().to_string()], Some(&db));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("schema ohlcv-1h carries no trade events")
            && text(&out).contains("ohlcv-1m"),
        "{}",
        text(&out)
    );
    // an ohlcv-1m file whose records are of another interval: refused whole
    let (mixed, _) = official_file(
        &trades,
        "official-mixed.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |b| {
            b.hd.rtype = dbn::rtype::OHLCV_1H;
        },
    );
    let out = feeder(&["replay", &mixed.display().to_string()], Some(&db));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("another interval"), "{}", text(&out));
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars"),
        (n - odd) as i64
    );

    // a database on the exchange clock: Databento's bars would not agree with its own
    let event = fresh_db("official_event_clock", "");
    connect(&event)
        .batch_execute("SELECT set_bar_clock('ts_event')")
        .expect("the exchange clock");
    let (good, _) = official_file(
        &trades,
        "official-good.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |_| {},
    );
    let out = feeder(&["replay", &good.display().to_string()], Some(&event));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("on the ts_event clock"),
        "{}",
        text(&out)
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
    use tradebars_tests::historical::FakeHistorical;
    let trades = generate("official-backfill.dbn.zst", 5, 8000, 73);
    let (official, n) = official_file(
        &trades,
        "official-backfill.ohlcv-1m.dbn.zst",
        Schema::Ohlcv1M,
        |_| {},
    );
    let expected = ohlcv(&oracle(&trades));
    assert_eq!(expected.len(), n);
    let api = FakeHistorical::start(&official, TEST_API_KEY, vec![]);
    let db = fresh_db("official_backfill", "");
    let out = api.backfill(&db, TEST_API_KEY, "ohlcv-1m", &["--chunk-minutes", "45"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "10 chunks, {n} bars read, {n} official bars written to price_bars (0 without a symbol mapping, 0 rejected in all)"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(ohlcv(&stored_bars_of(&db, "ohlcv-1m")), expected);
    // again, cut otherwise: the same bars, each once
    let out = api.backfill(&db, TEST_API_KEY, "ohlcv-1m", &["--chunk-minutes", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ohlcv(&stored_bars_of(&db, "ohlcv-1m")), expected);
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);

    // a refused key: its own exit code, nothing loaded
    let out = api.backfill(&db, "db-wrongKeyWrongKeyWrongKey12345", "ohlcv-1m", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    // a database on the exchange clock refuses official bars before anything is fetched
    let event = fresh_db("official_backfill_event", "");
    connect(&event)
        .batch_execute("SELECT set_bar_clock('ts_event')")
        .expect("the exchange clock");
    let asked = api.requests.load(std::sync::atomic::Ordering::SeqCst);
    let out = api.backfill(&event, TEST_API_KEY, "ohlcv-1m", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("on the ts_event clock"),
        "{}",
        text(&out)
    );
    assert_eq!(
        api.requests.load(std::sync::atomic::Ordering::SeqCst),
        asked
    );

    // arguments that cannot be right are usage errors, before anything is asked of the API
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
        let out = feeder(&all, Some(&db));
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(says), "{}", text(&out));
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
        Some(&db),
    );
    assert_eq!(far.status.code(), Some(2), "{}", text(&far));
    assert!(text(&far).contains("in the future"), "{}", text(&far));
    let out = api.backfill(&db, "db-short", "ohlcv-1m", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nothing was sent"), "{}", text(&out));
    assert_eq!(
        api.requests.load(std::sync::atomic::Ordering::SeqCst),
        asked
    );

    // other intervals are refused before anything is asked of the API, and live refuses bars
    let asked = api.requests.load(std::sync::atomic::Ordering::SeqCst);
    let out = api.backfill(&db, TEST_API_KEY, "ohlcv-1h", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("price_bars holds minute bars"),
        "{}",
        text(&out)
    );
    assert_eq!(
        api.requests.load(std::sync::atomic::Ordering::SeqCst),
        asked
    );
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
        Some(&db),
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("backfill --schema ohlcv-1m"),
        "{}",
        text(&out)
    );
    assert_eq!(ohlcv(&stored_bars_of(&db, "ohlcv-1m")), expected);
}

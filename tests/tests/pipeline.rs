//! DBN trades -> staging -> bars_rollup() -> price_bars, through the feeder binary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tradebars_tests::*;

#[test]
fn generated_trades_give_exactly_the_oracles_bars() {
    let db = fresh_db("oracle", "");
    let file = generate("oracle.dbn.zst", 30, 60000, 11);
    let out = replay(&db, &file, true);
    assert!(out.contains("60000 trades staged"), "{out}");
    let expected = oracle(&file);
    assert!(expected.len() > 1000, "the sample should make many bars");
    assert_eq!(stored_bars(&db), expected);
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    // VWAP is exact: notional / volume
    assert_eq!(
        count(&db, "SELECT count(*) FROM price_bars WHERE vwap <> trim_scale(round(notional / volume, 9)) OR vwap < low OR vwap > high"),
        0
    );
}

#[test]
fn replaying_the_same_trades_again_counts_nothing_twice() {
    let db = fresh_db("replay_twice", "");
    let file = generate("twice.dbn", 5, 5000, 3);
    let f = file.display().to_string();
    assert!(feeder(&["replay", &f, "--rollup"], Some(&db))
        .status
        .success());
    let first = stored_bars(&db);
    let again = feeder(&["replay", &f, &f, "--rollup"], Some(&db));
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("5000 trades already counted (overlap with ")
            && text(&again).contains("twice.dbn)"),
        "{}",
        text(&again)
    );
    assert!(text(&again).contains("0 trades staged"), "{}", text(&again));
    assert_eq!(stored_bars(&db), first);
    assert_eq!(first, oracle(&file));
}

/// `n` sessions calling bars_rollup() in a loop until `stop`, each counting itself into
/// `started` after its first call; each returns how many calls it made.
fn spawn_rollers(
    db: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
    started: &Arc<AtomicUsize>,
) -> Vec<thread::JoinHandle<i32>> {
    (0..n)
        .map(|_| {
            let (db, stop, started) = (db.to_string(), stop.clone(), started.clone());
            thread::spawn(move || {
                let mut c = connect(&db);
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    c.execute("SELECT bars_rollup()", &[]).expect("bars_rollup");
                    if calls == 0 {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect()
}

/// The bars of files whose trades are each their own: the merge of their oracles.
fn merged_oracles(files: &[std::path::PathBuf]) -> BTreeMap<BarKey, BarVal> {
    let mut expected = BTreeMap::new();
    for f in files {
        for (k, v) in oracle(f) {
            expected
                .entry(k)
                .and_modify(|e: &mut BarVal| *e = merge(*e, v))
                .or_insert(v);
        }
    }
    expected
}

#[test]
fn rollups_running_while_the_feeder_writes_lose_and_double_nothing() {
    let db = fresh_db("concurrent", "");
    let files: Vec<_> = (0..4)
        .map(|i| {
            let day = format!("2025-10-{}", 20 + i);
            generate_on(&format!("part{i}.dbn.zst"), 40, 40000, 100 + i, &day)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    // four sessions rolling up in a loop while the feeder loads four files
    let rollers = spawn_rollers(&db, 4, &stop, &started);
    while started.load(Ordering::Relaxed) < 4 {
        thread::sleep(std::time::Duration::from_millis(5));
    }
    for f in &files {
        let out = feeder(&["replay", &f.display().to_string()], Some(&db));
        assert!(out.status.success(), "{}", text(&out));
    }
    stop.store(true, Ordering::Relaxed);
    let calls: i32 = rollers.into_iter().map(|h| h.join().expect("roller")).sum();
    assert!(calls >= 4, "all four rollup sessions ran ({calls} calls)");
    assert!(feeder(&["rollup"], Some(&db)).status.success());
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    let expected = merged_oracles(&files);
    let stored = stored_bars(&db);
    assert_eq!(stored.len(), expected.len());
    let volume = |m: &BTreeMap<BarKey, BarVal>| m.values().map(|v| v.4).sum::<i64>();
    let trades = |m: &BTreeMap<BarKey, BarVal>| m.values().map(|v| v.5).sum::<i64>();
    assert_eq!(trades(&stored), 160_000);
    assert_eq!(volume(&stored), volume(&expected));
    for (k, v) in &expected {
        let s = stored[k];
        assert_eq!((s.1, s.2, s.4, s.5), (v.1, v.2, v.4, v.5), "bar {k:?}");
    }
}

/// High, low, volume and count of two bars of the same minute (open/close need the order,
/// which the oracle of each file alone does not know).
fn merge(a: BarVal, b: BarVal) -> BarVal {
    (a.0, a.1.max(b.1), a.2.min(b.2), a.3, a.4 + b.4, a.5 + b.5)
}

#[test]
fn real_cme_mbo_trades_give_the_oracles_bars_and_fills_are_not_counted() {
    let Some(file) = sample("esh4-glbx-mdp3-20231225.mbo.dbn.zst") else {
        return;
    };
    let db = fresh_db("esh4", "");
    let t = replay(&db, &file, true);
    assert!(t.contains("68792 records read, 2973 trades staged"), "{t}");
    assert!(t.contains("6371 fills"), "{t}");
    assert_eq!(stored_bars(&db), oracle(&file));
    // every trade counts, the 74 identical to another one included
    assert_eq!(
        count(&db, "SELECT sum(trade_count)::bigint FROM price_bars"),
        2973
    );
    // A sweep at 23:03: the minute's first two trades share ts_event, ts_recv and sequence
    // 16013; Databento delivered 4807.00 first, and it opens the bar (sorting on price or
    // ts_event would open at 4806.75).
    let open: String = connect(&db)
        .query_one(
            "SELECT open::text FROM price_bars WHERE symbol = 'ESH4' AND \"timestamp\" = '2023-12-25 23:03+00'",
            &[],
        )
        .expect("the 23:03 bar")
        .get(0);
    assert_eq!(open, "4807");
}

#[test]
fn real_samples_of_every_version_and_schema_load_once() {
    let names = [
        "dbn-test_data.trades.v1.dbn.zst",
        "dbn-test_data.trades.v2.dbn.zst",
        "dbn-test_data.trades.v3.dbn.zst",
        "dbn-test_data.trades.dbn",
        "dbpy-EQUS.MINI.trades.dbn.zst",
        "dbpy-OPRA.PILLAR.trades.dbn.zst",
        "dbpy-XNAS.ITCH.tbbo.dbn.zst",
        "dbpy-XNAS.ITCH.mbp-1.dbn.zst",
    ];
    let files: Option<Vec<_>> = names.iter().map(|n| sample(n)).collect();
    let Some(files) = files else { return };
    let db = fresh_db("samples", "");
    let mut args = vec!["replay".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.push("--rollup".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = feeder(&args, Some(&db));
    assert!(out.status.success(), "{}", text(&out));
    // v1, v2, v3 and plain hold the same 2 trades: loaded once
    assert_eq!(
        text(&out)
            .matches("2 trades already counted (overlap with dbn-test_data.trades.v1.dbn.zst)")
            .count(),
        3,
        "{}",
        text(&out)
    );
    // 2 + QQQ 4 + OPRA 4 + NVDA tbbo 4 (the NVDA mbp-1 sample has no trades)
    assert_eq!(
        count(&db, "SELECT sum(trade_count)::bigint FROM price_bars"),
        14
    );
    // QQQ: two trades share ts_event, ts_recv and price; both count
    let mut expected_qqq = oracle(&files[4]);
    let stored = stored_bars(&db);
    expected_qqq.retain(|k, _| k.0 == "QQQ");
    for (k, v) in &expected_qqq {
        assert_eq!(stored.get(k), Some(v));
    }
    assert!(
        count(
            &db,
            "SELECT count(*) FROM price_bars WHERE symbol = 'AAPL  250221C00250000'"
        ) > 0
    );
}

#[test]
fn bad_files_fail_with_one_line_and_stage_nothing() {
    let db = fresh_db("bad_files", "");
    let good = generate("good.dbn.zst", 3, 3000, 5);
    let bytes = std::fs::read(&good).expect("read");
    let truncated = scratch("truncated.dbn.zst");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let empty = scratch("empty.dbn");
    std::fs::write(&empty, b"").expect("write");
    let garbage = scratch("garbage.dbn");
    std::fs::write(&garbage, b"this is not market data").expect("write");
    // plain DBN cut inside its 8-byte prefix and inside its metadata (dbn's decoder would
    // panic on the latter)
    let plain = std::fs::read(generate("good-plain.dbn", 3, 3000, 5)).expect("read");
    let (in_prefix, in_metadata) = (scratch("cut-prefix.dbn"), scratch("cut-metadata.dbn"));
    std::fs::write(&in_prefix, &plain[..6]).expect("write");
    std::fs::write(&in_metadata, &plain[..100]).expect("write");
    for (file, says) in [
        (&truncated, "truncated"),
        (&empty, "empty"),
        (&garbage, "neither DBN nor zstd"),
        (&in_prefix, "ends inside its DBN header"),
        (&in_metadata, "ends inside its metadata (100 of "),
    ] {
        let out = feeder(&["replay", &file.display().to_string()], Some(&db));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(says) && err.contains(&file.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM ingest_ledger"), 0);
    // a refused schema anywhere in the list loads nothing, not even the good file before it
    // (hourly official bars: only minute bars fit price_bars)
    let ohlcv = hourly_bars_file_like(&good);
    let out = feeder(
        &[
            "replay",
            &good.display().to_string(),
            &ohlcv.display().to_string(),
        ],
        Some(&db),
    );
    refused_saying(&out, "schema ohlcv-1h carries no trade events");
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
}

/// An empty file with the metadata of `good` but the schema ohlcv-1h.
fn hourly_bars_file_like(good: &std::path::Path) -> std::path::PathBuf {
    let ohlcv = scratch("refused.ohlcv-1h.dbn.zst");
    let decoder = dbn::decode::DynDecoder::from_file(good, dbn::VersionUpgradePolicy::UpgradeToV3)
        .expect("decoding");
    let mut metadata = dbn::decode::DbnMetadata::metadata(&decoder).clone();
    metadata.schema = Some(dbn::Schema::Ohlcv1H);
    let file = std::fs::File::create(&ohlcv).expect("creating");
    let mut encoder = dbn::encode::dbn::Encoder::with_zstd(file, &metadata).expect("encoder");
    dbn::encode::EncodeRecord::flush(&mut encoder).expect("flushing");
    drop(encoder);
    ohlcv
}

/// The feeder exited 1, its output saying `says`.
fn refused_saying(out: &std::process::Output, says: &str) {
    assert_eq!(out.status.code(), Some(1));
    assert!(text(out).contains(says), "{}", text(out));
}

#[test]
fn an_unreachable_database_is_one_clear_line_without_the_password() {
    let file = generate("unreach.dbn", 2, 10, 1);
    let out = feeder(
        &[
            "replay",
            &file.display().to_string(),
            "--database-url",
            "postgres://app:hunter2@127.0.0.1:1/bars",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to PostgreSQL at 127.0.0.1:1/bars"),
        "{err}"
    );
    assert!(!text(&out).contains("hunter2"));
}

#[test]
fn a_second_feeder_is_refused_and_named() {
    let db = fresh_db("second", "");
    let file = generate("second.dbn", 2, 10, 1);
    let mut holder = connect(&db);
    holder
        .batch_execute(
            "SELECT pg_advisory_lock(29794, 3);
             INSERT INTO feeder_status (pid, host, mode, started_at, last_seen)
             VALUES (4242, 'box-a', 'live', now(), now())",
        )
        .expect("holding the feeder lock");
    let out = feeder(&["replay", &file.display().to_string()], Some(&db));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("pid 4242 on box-a"), "{}", text(&out));
    let check: bool = holder
        .query_one(
            "SELECT passed FROM migration_check() WHERE criterion = 'exactly one feeder running'",
            &[],
        )
        .expect("migration_check")
        .get(0);
    assert!(check);
    drop(holder);
    let out = feeder(&["replay", &file.display().to_string()], Some(&db));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn rollup_refuses_a_snapshot_that_could_miss_trades() {
    let db = fresh_db("isolation", "");
    let mut c = connect(&db);
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .expect("tx");
    let err = tx
        .execute("SELECT bars_rollup()", &[])
        .expect_err("must refuse");
    assert!(
        err.to_string().contains("READ COMMITTED") || format!("{err:?}").contains("READ COMMITTED"),
        "{err:?}"
    );
}

/// A TRADES file of four trades: instrument 1 maps to `hostile`, instrument 2 to nothing.
fn hostile_file(hostile: &str) -> std::path::PathBuf {
    use dbn::encode::dbn::Encoder;
    use dbn::encode::EncodeRecord;
    use dbn::{MappingInterval, Metadata, RecordHeader, SType, Schema, SymbolMapping, TradeMsg};

    let day = time::macros::date!(2025 - 10 - 24);
    let metadata = Metadata::builder()
        .dataset("XNAS.ITCH".to_string())
        .schema(Some(Schema::Trades))
        .start(1_761_316_200_000_000_000)
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .mappings(vec![SymbolMapping {
            raw_symbol: hostile.to_string(),
            intervals: vec![MappingInterval {
                start_date: day,
                end_date: day.next_day().expect("a day"),
                symbol: "1".into(),
            }],
        }])
        .build();
    let path = scratch("hostile.dbn");
    let file = std::fs::File::create(&path).expect("create");
    let mut encoder = Encoder::new(file, &metadata).expect("encoder");
    for (i, instrument) in [1u32, 2, 1, 2].into_iter().enumerate() {
        let trade = TradeMsg {
            hd: RecordHeader::new::<TradeMsg>(
                dbn::rtype::MBP_0,
                2,
                instrument,
                1_761_316_200_000_000_000 + i as u64,
            ),
            price: 10_000_000_000,
            size: 5,
            action: b'T' as std::ffi::c_char,
            side: b'B' as std::ffi::c_char,
            ts_recv: 1_761_316_200_000_001_000 + i as u64,
            sequence: i as u32,
            ..Default::default()
        };
        encoder.encode_record(&trade).expect("record");
    }
    path
}

#[test]
fn unmapped_instruments_and_hostile_symbols_are_kept_visible_and_harmless() {
    // instrument 1 has a symbol holding SQL and a control character; instrument 2 has none
    let hostile = "X'); DROP TABLE price_bars; --\u{7}";
    let path = hostile_file(hostile);
    let db = fresh_db("hostile", "");
    let out = replay(&db, &path, true);
    assert!(
        out.contains("4 trades staged (2 without a symbol mapping)"),
        "{out}"
    );
    assert!(out.contains("2 trades rejected"), "{out}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM trades_rejected WHERE reason = 'no symbol mapping' AND instrument_id = 2"),
        2
    );
    let stored: String = connect(&db)
        .query_one("SELECT symbol FROM price_bars", &[])
        .expect("the hostile symbol's bar")
        .get(0);
    assert_eq!(stored, hostile, "stored as data, byte for byte");
    assert_eq!(count(&db, "SELECT sum(volume)::bigint FROM price_bars"), 10);
}

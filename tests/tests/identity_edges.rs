//! Trade identity where a source is not what it says: a DBN file whose metadata misstates
//! its time range, trades without a symbol mapping that are fed again with it, and trades
//! of two publishers sharing a ts_recv, whose order only the stream knows. Each compares the
//! bars with an oracle computed from the distinct trades in file order.

use std::path::Path;

use dbn::decode::{DbnMetadata, DecodeRecord, DynDecoder};
use dbn::encode::EncodeRecord;
use dbn::{Metadata, TradeMsg, VersionUpgradePolicy};
use tradebars_tests::*;

/// Copies the trades of `src` that `keep` accepts to `dst`, with metadata changed by `meta`.
fn rewrite(
    src: &Path,
    dst: &Path,
    meta: impl FnOnce(&mut Metadata),
    keep: impl Fn(&TradeMsg) -> bool,
) -> usize {
    let mut decoder =
        DynDecoder::from_file(src, VersionUpgradePolicy::UpgradeToV3).expect("decoding");
    let mut metadata = decoder.metadata().clone();
    meta(&mut metadata);
    let file = std::fs::File::create(dst).expect("creating");
    let mut encoder = dbn::encode::dbn::Encoder::with_zstd(file, &metadata).expect("encoder");
    let mut kept = 0;
    while let Some(t) = decoder.decode_record::<TradeMsg>().expect("record") {
        if keep(t) {
            encoder.encode_record(t).expect("encoding");
            kept += 1;
        }
    }
    encoder.flush().expect("flushing");
    kept
}

/// The trades set aside in `db` for `reason`.
fn rejected_for(db: &str, reason: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM trades_rejected WHERE reason = '{reason}'"),
    )
}

/// `out` says `n` trades were already counted.
fn says_already_counted(out: &str, n: impl std::fmt::Display) {
    assert!(
        out.contains(&format!("{n} trades already counted")),
        "{out}"
    );
}

const DAY: u64 = 86_400_000_000_000;

#[test]
fn a_file_whose_metadata_misstates_its_range_counts_each_trade_once() {
    let file = generate("edge-range.dbn.zst", 4, 4000, 111);
    let n = trades_of(&file).len();
    let (start, end) = range_of(&file);
    let mid = start + (end - start) / 2;

    // the whole file again, its metadata claiming the next day
    let db = fresh_db("edge_range_later", "");
    replay(&db, &file, true);
    let later = scratch("edge-range-later.dbn.zst");
    rewrite(
        &file,
        &later,
        |m| {
            m.start = start + DAY;
            m.end = std::num::NonZeroU64::new(end + DAY);
        },
        |_| true,
    );
    let out = replay(&db, &later, true);
    says_already_counted(&out, n);
    assert_eq!(stored_bars(&db), oracle(&file));
    eprintln!(
        "edge | metadata a day late | sent {} | stored {} | bars = oracle",
        2 * n,
        n
    );

    // the first half, its metadata claiming the second half; then the whole file
    let db = fresh_db("edge_range_early", "");
    let early = scratch("edge-range-early.dbn.zst");
    let half = rewrite(&file, &early, |m| m.start = mid, |t| t.ts_recv < mid);
    replay(&db, &early, true);
    let out = replay(&db, &file, true);
    says_already_counted(&out, half);
    assert_eq!(stored_bars(&db), oracle(&file));
    eprintln!(
        "edge | trades before the declared start | sent {} | stored {} | bars = oracle",
        half + n,
        n
    );
}

#[test]
fn trades_without_a_symbol_mapping_count_once_the_mapping_comes() {
    let file = generate("edge-unmapped.dbn.zst", 3, 3000, 112);
    let n = trades_of(&file).len() as i64;
    let unmapped = scratch("edge-unmapped-nomap.dbn.zst");
    rewrite(&file, &unmapped, |m| m.mappings.clear(), |_| true);
    let db = fresh_db("edge_unmapped", "");
    replay(&db, &unmapped, true);
    assert_eq!(rejected_for(&db, "no symbol mapping"), n);
    assert_eq!(count(&db, "SELECT count(*) FROM price_bars"), 0);
    // the same trades with their mapping: every one counts
    let out = replay(&db, &file, true);
    assert!(!out.contains("already counted"), "{out}");
    assert_eq!(stored_bars(&db), oracle(&file));
    // and once counted, neither source counts them again
    let out = replay(&db, &file, true);
    says_already_counted(&out, n);
    replay(&db, &unmapped, true);
    assert_eq!(stored_bars(&db), oracle(&file));
    eprintln!(
        "edge | unmapped, then mapped, then both again | sent {} | stored {n} | bars = oracle",
        4 * n
    );
}

/// One trade of a hand-made file: publisher, instrument, ts_event, ts_recv, price in cents, size.
type Made = (u16, u32, u64, u64, i64, u32);

/// A TRADES file of `trades` in the order given, with `mappings`: (symbol, instrument, first
/// UTC day, day after the last).
fn made_file(
    name: &str,
    mappings: &[(&str, u32, time::Date, time::Date)],
    trades: &[Made],
) -> std::path::PathBuf {
    use dbn::{MappingInterval, RecordHeader, SType, Schema, SymbolMapping};
    let first = trades.iter().map(|t| t.3).min().unwrap_or(0);
    let last = trades.iter().map(|t| t.3).max().unwrap_or(0);
    let metadata = Metadata::builder()
        .dataset("EQUS.MINI".to_string())
        .schema(Some(Schema::Trades))
        .start(first)
        .end(std::num::NonZeroU64::new(last + 1))
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .mappings(
            mappings
                .iter()
                .map(|(symbol, instrument, from, to)| SymbolMapping {
                    raw_symbol: symbol.to_string(),
                    intervals: vec![MappingInterval {
                        start_date: *from,
                        end_date: *to,
                        symbol: instrument.to_string(),
                    }],
                })
                .collect(),
        )
        .build();
    let path = scratch(name);
    let file = std::fs::File::create(&path).expect("create");
    let mut encoder = dbn::encode::dbn::Encoder::new(file, &metadata).expect("encoder");
    for (i, (publisher, instrument, ts_event, ts_recv, cents, size)) in trades.iter().enumerate() {
        let trade = TradeMsg {
            hd: RecordHeader::new::<TradeMsg>(
                dbn::rtype::MBP_0,
                *publisher,
                *instrument,
                *ts_event,
            ),
            price: cents * 10_000_000,
            size: *size,
            action: b'T' as std::ffi::c_char,
            side: b'B' as std::ffi::c_char,
            ts_recv: *ts_recv,
            sequence: 100 + i as u32,
            ..Default::default()
        };
        encoder.encode_record(&trade).expect("encoding");
    }
    encoder.flush().expect("flushing");
    path
}

const T0: u64 = 1_761_316_200_000_000_000; // 2025-10-24 14:30 UTC
const DAY0: time::Date = time::macros::date!(2025 - 10 - 24);

fn day_after(d: time::Date) -> time::Date {
    d.next_day().expect("a day")
}

/// The bar of `symbol` in the UTC minute starting at `ts` (ns).
fn bar_at(db: &str, symbol: &str, ts: u64) -> Option<BarVal> {
    stored_bars(db)
        .get(&(symbol.to_string(), (ts / 60_000_000_000 * 60) as i64))
        .copied()
}

/// Replaying `path` (again, or another source of the same trades) finds its `n` trades
/// already counted and leaves the bar of (symbol, minute of `ts`) as it was.
fn replayed_again_unchanged(db: &str, path: &std::path::Path, n: usize, (symbol, ts): (&str, u64)) {
    let before = bar_at(db, symbol, ts);
    assert!(
        before.is_some(),
        "no bar of {symbol} at {ts} before the replay"
    );
    says_already_counted(&replay(db, path, true), n);
    assert_eq!(bar_at(db, symbol, ts), before);
}

/// The stored bars are the oracle's of `path`, and the bar of (symbol, minute of `ts`) is
/// `bar`, computed by hand.
fn bars_are_the_oracles(db: &str, path: &std::path::Path, (symbol, ts): (&str, u64), bar: BarVal) {
    assert_eq!(stored_bars(db), oracle(path));
    assert_eq!(bar_at(db, symbol, ts), Some(bar), "{symbol} at {ts}");
}

/// (symbol, instrument) mapped for DAY0 only, as a day file maps it.
fn on_day0(symbol: &str, instrument: u32) -> (&str, u32, time::Date, time::Date) {
    (symbol, instrument, DAY0, day_after(DAY0))
}

/// Dollars as the oracle's fixed-point prices.
fn px(dollars: i64) -> i64 {
    dollars * 1_000_000_000
}

#[test]
fn trades_of_two_publishers_sharing_a_ts_recv_keep_the_stream_order() {
    // at both shared ts_recv the stream puts the higher publisher first; one line per ts_recv
    #[rustfmt::skip]
    let trades: [Made; 5] = [
        (2, 1, T0 + 500, T0 + 1_000, 10_100, 1), (1, 1, T0 + 500, T0 + 1_000, 10_000, 2),
        (1, 1, T0 + 4_500, T0 + 5_000, 10_300, 5),
        (2, 1, T0 + 8_500, T0 + 9_000, 10_600, 3), (1, 1, T0 + 8_500, T0 + 9_000, 10_500, 4),
    ];
    let path = made_file("edge-publishers.dbn", &[on_day0("XYZ", 1)], &trades);
    let db = fresh_db("edge_publishers", "");
    replay(&db, &path, true);
    // open: the first trade in the stream (publisher 2); close: the last (publisher 1)
    let bar = (px(101), px(106), px(100), px(105), 15, 5);
    bars_are_the_oracles(&db, &path, ("XYZ", T0), bar);
    replayed_again_unchanged(&db, &path, 5, ("XYZ", T0));
}

#[test]
fn a_file_that_interleaves_instruments_out_of_overall_order_keeps_each_group_in_order() {
    // AAA at 5 us twice (105 first), with BBB at 3 us between: each instrument is in
    // ts_recv order, the file as a whole is not
    let path = made_file(
        "edge-interleaved.dbn",
        &[on_day0("AAA", 1), on_day0("BBB", 2)],
        &[
            (1, 1, T0 + 4_000, T0 + 5_000, 10_500, 1),
            (1, 2, T0 + 2_000, T0 + 3_000, 5_000, 1),
            (1, 1, T0 + 4_000, T0 + 5_000, 10_000, 2),
            (1, 1, T0 + 8_000, T0 + 9_000, 10_200, 3),
        ],
    );
    let db = fresh_db("edge_interleaved", "");
    replay(&db, &path, true);
    let bar = (px(105), px(105), px(100), px(102), 6, 3);
    bars_are_the_oracles(&db, &path, ("AAA", T0), bar);
}

#[test]
fn a_trade_executed_before_midnight_and_received_after_takes_the_mapping_of_its_ts_recv() {
    let midnight: u64 = 1_761_350_400_000_000_000; // 2025-10-25 00:00 UTC
    let day1 = day_after(DAY0);
    let trades = [
        (1, 1, midnight + 5_000, midnight + 10_000, 10_000, 1),
        (
            1,
            1,
            midnight - 40_000_000,
            midnight + 20_000_000,
            10_100,
            2,
        ), // executed 10-24
        (
            1,
            1,
            midnight + 25_000_000,
            midnight + 30_000_000,
            10_200,
            3,
        ),
    ];
    // the day file of 10-25 maps 10-25 only, as Databento's does; another maps both days
    let day_file = made_file(
        "edge-midnight-day.dbn",
        &[("NVDA", 1, day1, day_after(day1))],
        &trades,
    );
    let both_days = made_file(
        "edge-midnight-both.dbn",
        &[("NVDA", 1, DAY0, day_after(day1))],
        &trades,
    );
    let db = fresh_db("edge_midnight", "");
    replay(&db, &day_file, true);
    assert_eq!(
        bar_at(&db, "NVDA", midnight),
        Some((px(100), px(102), px(100), px(102), 6, 3))
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_rejected"), 0);
    replayed_again_unchanged(&db, &both_days, 3, ("NVDA", midnight));
}

#[test]
fn a_trade_unmapped_in_one_source_keeps_its_place_among_those_sharing_its_ts_recv() {
    // X (instrument 2, 105) and Y (instrument 1, 100) share a ts_recv, X first; both are
    // symbol S, but the first file maps only instrument 1
    let trades = [
        (1, 2, T0 + 500, T0 + 1_000, 10_500, 1),
        (1, 1, T0 + 600, T0 + 1_000, 10_000, 2),
        (1, 1, T0 + 2_000, T0 + 3_000, 10_100, 3),
    ];
    let partial = made_file("edge-place-partial.dbn", &[on_day0("S", 1)], &trades);
    let full = made_file(
        "edge-place-full.dbn",
        &[on_day0("S", 1), on_day0("S", 2)],
        &trades,
    );
    let db = fresh_db("edge_place", "");
    replay(&db, &partial, true);
    assert_eq!(rejected_for(&db, "no symbol mapping"), 1);
    let out = replay(&db, &full, true);
    assert!(out.contains("2 trades already counted"), "{out}");
    let bar = (px(105), px(105), px(100), px(101), 6, 3);
    bars_are_the_oracles(&db, &full, ("S", T0), bar);
}

#[test]
fn a_trade_stamped_in_the_future_is_set_aside_and_kept_out_of_identity() {
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).expect("now");
    let later = (now + 3 * 86_400) * 1_000_000_000;
    let today = time::OffsetDateTime::now_utc().date();
    let path = made_file(
        "edge-future.dbn",
        &[("FUT", 1, today, today + time::Duration::days(5))],
        &[(1, 1, later - 1_000, later, 10_000, 1)],
    );
    let db = fresh_db("edge_future", "");
    replay(&db, &path, true);
    assert_eq!(rejected_for(&db, "ts_recv out of range"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM trade_coverage"), 0);
    let out = replay(&db, &path, true);
    assert!(!out.contains("already counted"), "{out}");
}

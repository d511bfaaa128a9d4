//! Trade identity where a source is not what it says: a DBN file whose metadata misstates
//! its time range, trades without a symbol mapping that are fed again with it, and trades
//! of two publishers sharing a ts_recv, whose order only the stream knows. Each compares the
//! bars with an oracle computed from the distinct trades in file order.

use std::path::Path;

use dbn::decode::{DbnMetadata, DecodeRecord, DynDecoder};
use dbn::encode::EncodeRecord;
use dbn::{Metadata, TradeMsg, VersionUpgradePolicy};
use tradebars_tests::*;

fn replay(db: &str, file: &Path) -> String {
    let out = feeder(
        &["replay", &file.display().to_string(), "--rollup"],
        Some(db),
    );
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

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

const DAY: u64 = 86_400_000_000_000;

#[test]
fn a_file_whose_metadata_misstates_its_range_counts_each_trade_once() {
    let file = generate("edge-range.dbn.zst", 4, 4000, 111);
    let n = trades_of(&file).len();
    let (start, end) = range_of(&file);
    let mid = start + (end - start) / 2;

    // the whole file again, its metadata claiming the next day
    let db = fresh_db("edge_range_later", "");
    replay(&db, &file);
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
    let out = replay(&db, &later);
    assert!(
        out.contains(&format!("{n} trades already counted")),
        "{out}"
    );
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
    replay(&db, &early);
    let out = replay(&db, &file);
    assert!(
        out.contains(&format!("{half} trades already counted")),
        "{out}"
    );
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
    replay(&db, &unmapped);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM trades_rejected WHERE reason = 'no symbol mapping'"
        ),
        n
    );
    assert_eq!(count(&db, "SELECT count(*) FROM price_bars"), 0);
    // the same trades with their mapping: every one counts
    let out = replay(&db, &file);
    assert!(!out.contains("already counted"), "{out}");
    assert_eq!(stored_bars(&db), oracle(&file));
    // and once counted, neither source counts them again
    let out = replay(&db, &file);
    assert!(
        out.contains(&format!("{n} trades already counted")),
        "{out}"
    );
    replay(&db, &unmapped);
    assert_eq!(stored_bars(&db), oracle(&file));
    eprintln!(
        "edge | unmapped, then mapped, then both again | sent {} | stored {n} | bars = oracle",
        4 * n
    );
}

#[test]
fn trades_of_two_publishers_sharing_a_ts_recv_keep_the_stream_order() {
    use dbn::{MappingInterval, RecordHeader, SType, Schema, SymbolMapping};
    let t0: u64 = 1_761_316_200_000_000_000; // 2025-10-24 14:30 UTC
    let day = time::macros::date!(2025 - 10 - 24);
    let metadata = Metadata::builder()
        .dataset("EQUS.MINI".to_string())
        .schema(Some(Schema::Trades))
        .start(t0)
        .end(std::num::NonZeroU64::new(t0 + 60_000_000_000))
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .mappings(vec![SymbolMapping {
            raw_symbol: "XYZ".to_string(),
            intervals: vec![MappingInterval {
                start_date: day,
                end_date: day.next_day().expect("a day"),
                symbol: "1".into(),
            }],
        }])
        .build();
    // (publisher, ts_recv offset, price in cents, size), in stream order: at both shared
    // ts_recv the stream puts the higher publisher first
    let stream = [
        (2u16, 1_000u64, 10_100i64, 1u32),
        (1, 1_000, 10_000, 2),
        (1, 5_000, 10_300, 5),
        (2, 9_000, 10_600, 3),
        (1, 9_000, 10_500, 4),
    ];
    let path = scratch("edge-publishers.dbn");
    {
        let file = std::fs::File::create(&path).expect("create");
        let mut encoder = dbn::encode::dbn::Encoder::new(file, &metadata).expect("encoder");
        for (i, (publisher, recv, cents, size)) in stream.into_iter().enumerate() {
            let trade = TradeMsg {
                hd: RecordHeader::new::<TradeMsg>(dbn::rtype::MBP_0, publisher, 1, t0 + recv - 500),
                price: cents * 10_000_000,
                size,
                action: b'T' as std::ffi::c_char,
                side: b'B' as std::ffi::c_char,
                ts_recv: t0 + recv,
                sequence: 100 + i as u32,
                ..Default::default()
            };
            encoder.encode_record(&trade).expect("encoding");
        }
        encoder.flush().expect("flushing");
    }
    let db = fresh_db("edge_publishers", "");
    replay(&db, &path);
    let bars = stored_bars(&db);
    assert_eq!(bars, oracle(&path));
    let minute = (t0 / 1_000_000_000) as i64;
    assert_eq!(
        bars.get(&("XYZ".to_string(), minute)),
        Some(&(
            101_000_000_000,
            106_000_000_000,
            100_000_000_000,
            105_000_000_000,
            15,
            5
        )),
        "open: the first trade in the stream (publisher 2); close: the last (publisher 1)"
    );
    let out = replay(&db, &path);
    assert!(out.contains("5 trades already counted"), "{out}");
    assert_eq!(stored_bars(&db), bars);
}

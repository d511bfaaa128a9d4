//! Every trade counted once, whichever sources deliver it and in whatever order: files that
//! overlap, a file and a part of it in another schema, live and backfill over the same
//! period, backfills in other chunk sizes, live restarts, and the way back after a rollback.
//! Each test compares the bars with an oracle computed from the distinct trades (the whole
//! generated file), and prints a line `overlap | scenario | sent | stored | bars = oracle`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tradebars_tests::gateway::{FakeGateway, Plan};
use tradebars_tests::historical::FakeHistorical;
use tradebars_tests::*;

/// The ts_recv a fraction of the way through a generated file's range.
fn at(file: &Path, fraction: f64) -> u64 {
    let (start, end) = range_of(file);
    start + ((end - start) as f64 * fraction) as u64
}

/// A part of `file`: the trades received in the fractions `[from, to)` of its range.
fn part(file: &Path, name: &str, from: f64, to: f64, mbp1: bool) -> (PathBuf, usize) {
    let out = scratch(name);
    let n = cut_file(file, &out, at(file, from), at(file, to), mbp1);
    (out, n)
}

/// Trades of `file` received in `[from, to)` (fractions of its range).
fn trades_between(file: &Path, from: f64, to: f64) -> usize {
    let (a, b) = (at(file, from), at(file, to));
    trades_of(file)
        .iter()
        .filter(|(_, t)| t.ts_recv >= a && t.ts_recv < b)
        .count()
}

fn stored_in_bars(db: &str) -> i64 {
    count(
        db,
        "SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars WHERE data_source = 'trades'",
    )
}

/// Checks the bars against the oracle of `file` and prints the scenario's row.
fn check(db: &str, scenario: &str, sent: usize, file: &Path) {
    let equal = stored_bars(db) == oracle(file);
    eprintln!(
        "overlap | {scenario} | {sent} | {} | {}",
        stored_in_bars(db),
        if equal { "yes" } else { "NO" }
    );
    assert_eq!(stored_bars(db), oracle(file), "{scenario}");
}

#[test]
fn two_files_overlapping_by_half_count_each_trade_once_in_both_orders() {
    let full = generate("halves.dbn.zst", 20, 30000, 81);
    let (a, na) = part(&full, "halves-a.dbn.zst", 0.0, 2.0 / 3.0, false);
    let (b, nb) = part(&full, "halves-b.dbn.zst", 1.0 / 3.0, 1.0, false);
    let overlap = trades_between(&full, 1.0 / 3.0, 2.0 / 3.0);
    assert!(overlap > 5000, "the files overlap ({overlap} trades)");
    for (first, second, name) in [(&a, &b, "a then b"), (&b, &a, "b then a")] {
        let db = fresh_db("halves", "");
        replay(&db, first, false);
        let out = replay(&db, second, true);
        assert!(
            out.contains(&format!("{overlap} trades already counted (overlap with ")),
            "{out}"
        );
        check(
            &db,
            &format!("two files overlapping by half, {name}"),
            na + nb,
            &full,
        );
    }
}

#[test]
fn a_file_and_a_part_of_it_in_another_schema_count_once_in_both_orders() {
    let full = generate("whole.dbn.zst", 20, 30000, 82);
    let total = trades_of(&full).len();
    let (sub, n) = part(&full, "whole-part.mbp-1.dbn.zst", 0.3, 0.5, true);
    assert!(n > 1000);
    let db = fresh_db("sub_after", "");
    replay(&db, &full, true);
    let out = replay(&db, &sub, true);
    assert!(out.contains(" 0 trades staged"), "{out}");
    assert!(
        out.contains(&format!("{n} trades already counted")),
        "{out}"
    );
    check(
        &db,
        "a TRADES file, then an MBP-1 part of it",
        total + n,
        &full,
    );

    let db = fresh_db("sub_before", "");
    replay(&db, &sub, true);
    let out = replay(&db, &full, true);
    assert!(
        out.contains(&format!("{} trades staged", total - n))
            && out.contains(&format!("{n} trades already counted")),
        "{out}"
    );
    check(
        &db,
        "an MBP-1 part, then the whole TRADES file",
        total + n,
        &full,
    );
}

/// A generated day of 30,000 trades of 12 symbols, and a gateway serving it with `plan`.
fn day_on_a_gateway(name: &str, seed: u64, plan: Plan) -> (PathBuf, FakeGateway) {
    let file = generate(name, 12, 30000, seed);
    let gateway = FakeGateway::start(&file, plan);
    (file, gateway)
}

/// SIGTERM to the live feeder `child`, which must exit 0 within 15 s.
fn stop_live(mut child: std::process::Child) {
    sigterm(&mut child);
    let (code, out) = exit_within(child, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{out}");
}

fn trades_sent(gateway: &FakeGateway) -> usize {
    gateway
        .trades_sent
        .load(std::sync::atomic::Ordering::SeqCst)
}

fn backfill(api: &FakeHistorical, db: &str, chunk_minutes: &str) -> String {
    let out = api.backfill(
        db,
        TEST_API_KEY,
        "trades",
        &["--chunk-minutes", chunk_minutes],
    );
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

#[test]
fn a_backfill_rerun_with_another_chunk_size_counts_nothing_twice() {
    let file = generate("rechunk.dbn.zst", 10, 20000, 83);
    let api = FakeHistorical::start(&file, TEST_API_KEY, vec![]);
    let db = fresh_db("rechunk", "");
    let first = backfill(&api, &db, "60");
    assert!(first.contains("(20000 trades)"), "{first}");
    let again = backfill(&api, &db, "25");
    assert!(
        again.contains("(0 trades; 20000 trades already counted (overlap with backfill XNAS.ITCH"),
        "{again}"
    );
    check(
        &db,
        "a backfill in 60-minute chunks, again in 25-minute chunks",
        40000,
        &file,
    );
}

#[test]
fn a_backfill_over_a_period_a_live_session_covered_in_part_counts_each_trade_once() {
    let (file, gateway) = day_on_a_gateway(
        "live-then-backfill.dbn.zst",
        84,
        Plan::new(TEST_API_KEY).paced(Duration::from_millis(20)),
    );
    let db = fresh_db("live_backfill", "");
    let live = gateway.spawn_feeder(&db, TEST_API_KEY, &[]);
    wait_until("part of the day live", Duration::from_secs(60), || {
        stored_trades(&db) >= 8_000
    });
    stop_live(live);
    let live_trades = stored_in_bars(&db);
    assert!(live_trades < 30_000, "stopped mid-day ({live_trades})");

    let api = FakeHistorical::start(&file, TEST_API_KEY, vec![]);
    let out = backfill(&api, &db, "60");
    assert!(
        out.contains(&format!(
            "{live_trades} trades already counted (overlap with live XNAS.ITCH"
        )),
        "{out}"
    );
    check(
        &db,
        "live for part of the day, then a backfill of the whole day",
        trades_sent(&gateway) + 30000,
        &file,
    );
}

#[test]
fn a_live_restart_replaying_an_hour_counts_nothing_twice() {
    // cut after 15,000 trades, then again after 8,000 more sent (most of them replayed)
    let (file, gateway) = day_on_a_gateway(
        "live-hour.dbn.zst",
        85,
        Plan::new(TEST_API_KEY).cut_after(vec![15_000, 8_000]),
    );
    let db = fresh_db("live_hour", "");
    let live = gateway.spawn_feeder(&db, TEST_API_KEY, &["--replay-margin-secs", "3600"]);
    wait_until("every trade in bars", Duration::from_secs(90), || {
        stored_in_bars(&db) >= 30_000
    });
    std::thread::sleep(Duration::from_millis(500)); // a late duplicate would show by now
    stop_live(live);
    assert!(
        gateway
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3
    );
    let sent = trades_sent(&gateway);
    assert!(sent > 35_000, "an hour replayed twice ({sent} sent)");
    check(
        &db,
        "live cut twice, each time resumed with an hour of replay",
        sent,
        &file,
    );
}

/// The symbols of `file`, sorted and joined with commas: forward, and backward.
fn symbols_both_ways(file: &Path) -> (String, String) {
    let mut symbols: Vec<String> = trades_of(file).into_iter().map(|(s, _)| s).collect();
    symbols.sort();
    symbols.dedup();
    let forward = symbols.join(",");
    symbols.reverse();
    (forward, symbols.join(","))
}

/// The live feeder against `gateway` with `--symbols` `list`, in that order.
fn spawn_live_with_symbols(gateway: &FakeGateway, db: &str, list: &str) -> std::process::Child {
    let mut cmd = Command::new(feeder_bin());
    cmd.args([
        "live",
        "--dataset",
        "XNAS.ITCH",
        "--symbols",
        list,
        "--gateway",
        &gateway.addr,
        "--batch-ms",
        "50",
        "--rollup-ms",
        "200",
    ])
    .env("DATABASE_URL", url(db))
    .env("DATABENTO_API_KEY", TEST_API_KEY)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("starting the live feeder")
}

#[test]
fn a_live_restart_with_its_symbols_in_another_order_loses_and_doubles_nothing() {
    // A fresh subscription starts at the live edge: 2,000 trades happen while none listens.
    let (file, gateway) = day_on_a_gateway(
        "live-order.dbn.zst",
        86,
        Plan::new(TEST_API_KEY)
            .paced(Duration::from_millis(20))
            .live_edge(2000),
    );
    let (forward, backward) = symbols_both_ways(&file);
    let db = fresh_db("live_order", "");
    let first = spawn_live_with_symbols(&gateway, &db, &forward);
    wait_until("part of the day", Duration::from_secs(60), || {
        stored_trades(&db) >= 8_000
    });
    stop_live(first);
    let second = spawn_live_with_symbols(&gateway, &db, &backward);
    wait_until("every trade in bars", Duration::from_secs(90), || {
        stored_in_bars(&db) >= 30_000
    });
    std::thread::sleep(Duration::from_millis(500));
    stop_live(second);
    check(
        &db,
        "live restarted with its --symbols reversed",
        trades_sent(&gateway),
        &file,
    );
}

#[test]
fn after_a_rollback_the_same_sources_count_once_again() {
    let full = generate("again.dbn.zst", 10, 20000, 87);
    let (a, na) = part(&full, "again-a.dbn.zst", 0.0, 0.6, false);
    let db = fresh_db("again", "");
    replay(&db, &a, false);
    replay(&db, &full, true);
    connect(&db)
        .batch_execute("SELECT rollback_trades()")
        .expect("rollback_trades()");
    assert_eq!(stored_in_bars(&db), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM trade_coverage"), 0);
    replay(&db, &full, false);
    let out = replay(&db, &a, true);
    assert!(
        out.contains(&format!("{na} trades already counted")),
        "{out}"
    );
    check(
        &db,
        "two overlapping files, rolled back, loaded again",
        2 * (na + 20000),
        &full,
    );
}

#[test]
fn trades_are_placed_by_receipt_and_by_exchange_time_under_the_event_clock() {
    let file = generate("clocks.dbn.zst", 10, 20000, 88);
    let trades = trades_of(&file);
    let crossing = trades
        .iter()
        .filter(|(_, t)| t.hd.ts_event / 60_000_000_000 != t.ts_recv / 60_000_000_000)
        .count();
    assert!(
        crossing > 0,
        "some trades cross a minute between event and receipt"
    );
    let db = fresh_db("recv_clock", "");
    replay(&db, &file, true);
    assert_eq!(stored_bars(&db), oracle_of(&trades, OracleClock::Recv));
    let db = fresh_db("event_clock", "");
    connect(&db)
        .batch_execute("SELECT set_bar_clock('ts_event')")
        .expect("set_bar_clock");
    replay(&db, &file, true);
    assert_eq!(stored_bars(&db), oracle_of(&trades, OracleClock::Event));
    assert_ne!(
        oracle_of(&trades, OracleClock::Event),
        oracle_of(&trades, OracleClock::Recv)
    );
}

/// A generated file `name` (5 symbols, 5,000 trades) replayed with --rollup into a database
/// of that name: the file, the database and its bars.
fn a_rolled_up_file(name: &str, seed: u64) -> (PathBuf, String, BTreeMap<BarKey, BarVal>) {
    let file = generate(&format!("{name}.dbn.zst"), 5, 5000, seed);
    let db = fresh_db(name, "");
    replay(&db, &file, true);
    let bars = stored_bars(&db);
    (file, db, bars)
}

#[test]
fn a_source_that_disagrees_with_what_is_stored_stages_nothing() {
    let (full, db, before) = a_rolled_up_file("corrupt", 89);
    // the same period with one trade's price changed
    let changed = scratch("corrupt-changed.dbn.zst");
    rewrite_one_price(&full, &changed, 2500);
    let out = feeder(&["replay", &changed.display().to_string()], Some(&db));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("nothing of it staged") && t.contains("differ"),
        "{t}"
    );
    assert_eq!(t.lines().filter(|l| l.contains("error:")).count(), 1, "{t}");
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(stored_bars(&db), before);
}

/// Copies `src` to `dst` with the price of trade `index` one cent higher.
fn rewrite_one_price(src: &Path, dst: &Path, index: usize) {
    use dbn::decode::{DbnMetadata, DecodeRecord, DynDecoder};
    use dbn::encode::EncodeRecord;
    let mut decoder =
        DynDecoder::from_file(src, dbn::VersionUpgradePolicy::UpgradeToV3).expect("decoding");
    let meta = decoder.metadata().clone();
    let file = std::fs::File::create(dst).expect("creating");
    let mut encoder = dbn::encode::dbn::Encoder::with_zstd(file, &meta).expect("encoder");
    let mut i = 0;
    while let Some(t) = decoder.decode_record::<dbn::TradeMsg>().expect("record") {
        let mut t = t.clone();
        if i == index {
            t.price += 10_000_000;
        }
        encoder.encode_record(&t).expect("encoding");
        i += 1;
    }
    encoder.flush().expect("flushing");
}

#[test]
fn a_load_where_identity_was_pruned_is_refused_unless_forced() {
    let (file, db, before) = a_rolled_up_file("pruned", 90);
    let mut c = connect(&db);
    let err = c
        .batch_execute("SELECT set_identity_retention('10 minutes')")
        .expect_err("too short a retention");
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    let pruned = prune_keeping_an_hour(&mut c);
    assert!(
        pruned > 0,
        "the day is longer than an hour: {pruned} rows pruned"
    );
    // the last hour keeps its identity: loading the day's last hour again counts nothing
    let (last_hour, n) = part(&file, "pruned-last-hour.dbn.zst", 0.9, 1.0, false);
    let out = replay(&db, &last_hour, true);
    assert!(
        out.contains(&format!("{n} trades already counted")),
        "{out}"
    );
    // the morning's identity is gone while its bars exist: refused, nothing staged
    let out = feeder(&["replay", &file.display().to_string()], Some(&db));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("trade identity is no longer kept") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(stored_bars(&db), before);
    // forced, it loads (and the DBA owns the consequence: the morning now counts twice)
    let out = feeder(
        &["replay", &file.display().to_string(), "--force"],
        Some(&db),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(count(&db, "SELECT count(*) FROM trades_staging") > 0);
}

/// The identity retention set to an hour, then pruned: the rows pruned.
fn prune_keeping_an_hour(c: &mut postgres::Client) -> i64 {
    c.batch_execute("SELECT set_identity_retention('1 hour')")
        .expect("retention");
    c.query_one("SELECT prune_trade_identity()", &[])
        .expect("prune")
        .get(0)
}

//! What the end-to-end tests share: a private PostgreSQL cluster with the extension
//! installed, a fresh database per test, the feeder binary, and an independent oracle that
//! computes the bars a DBN file must give, straight from Databento's records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub mod gateway;
pub mod historical;

use dbn::decode::{DbnMetadata, DecodeRecord, DecodeRecordRef, DynDecoder};
use dbn::encode::EncodeRecord;
use dbn::{
    MboMsg, Mbp1Msg, OhlcvMsg, RecordHeader, Schema, TradeMsg, TsSymbolMap, VersionUpgradePolicy,
};

/// The test cluster's port: TRADEBARS_TEST_PORT, or 55439.
pub fn port() -> u16 {
    std::env::var("TRADEBARS_TEST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(55439)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The cluster's data directory, one per port: runs on two ports never share one.
fn cluster_dir() -> PathBuf {
    target_dir().join(format!("e2e-pgdata-{}", port()))
}

fn cluster_script(args: &[&str]) {
    let dir = cluster_dir();
    let status = Command::new("bash")
        .arg(root().join("scripts/cluster.sh"))
        .arg(args[0])
        .arg(&dir)
        .args(&args[1..])
        .status()
        .expect("running scripts/cluster.sh");
    assert!(status.success(), "scripts/cluster.sh {args:?} failed");
}

/// Starts the tests' cluster once per test binary (scripts/test.sh stops it at the end).
fn cluster() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| cluster_script(&["start", &port().to_string()]));
}

/// Kills the cluster the hard way and starts it again. Only for a test binary of its own:
/// every other connection to the cluster breaks.
pub fn crash_restart_cluster() {
    cluster_script(&["crash-restart"]);
}

pub fn url(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", port())
}

pub fn connect(db: &str) -> postgres::Client {
    postgres::Client::connect(&url(db), postgres::NoTls).expect("connecting to the test cluster")
}

/// A new, empty database named after the test.
pub fn empty_db(name: &str) -> String {
    cluster();
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let db = format!(
        "e2e_{name}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("CREATE DATABASE");
    db
}

/// A new database with the extension, named after the test; `setup` runs before
/// CREATE EXTENSION (to build an old application's tables first).
pub fn fresh_db(name: &str, setup: &str) -> String {
    let db = empty_db(name);
    let mut c = connect(&db);
    if !setup.is_empty() {
        c.batch_execute(setup).expect("setting up the database");
    }
    c.batch_execute("CREATE EXTENSION tradebars")
        .expect("CREATE EXTENSION tradebars");
    db
}

/// A PostgreSQL client program of the cluster's version, pointed at the test cluster.
pub fn pg_tool(tool: &str, args: &[&str]) -> Output {
    Command::new(format!("/usr/lib/postgresql/15/bin/{tool}"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port().to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

/// The feeder binary scripts/test.sh built.
pub fn feeder_bin() -> PathBuf {
    let bin = target_dir().join("debug/tradebars-feeder");
    assert!(
        bin.exists(),
        "build the feeder first: cargo build -p tradebars-feeder"
    );
    bin
}

pub fn feeder(args: &[&str], db: Option<&str>) -> Output {
    let mut cmd = Command::new(feeder_bin());
    cmd.args(args).env_remove("DATABASE_URL");
    if let Some(db) = db {
        cmd.env("DATABASE_URL", url(db));
    }
    cmd.output().expect("running tradebars-feeder")
}

/// A generated TRADES file (`tradebars-feeder generate`) in the scratch folder.
pub fn generate(name: &str, symbols: usize, trades: usize, seed: u64) -> PathBuf {
    generate_on(name, symbols, trades, seed, "2025-10-24")
}

/// The same, for another trading day: files of different days hold different trades of
/// the same instruments (two files of one day would be two versions of the same trades).
pub fn generate_on(name: &str, symbols: usize, trades: usize, seed: u64, date: &str) -> PathBuf {
    let path = scratch(name);
    let (seed, date) = (seed.to_string(), date.to_string());
    generate_into(&path, symbols, trades, &["--seed", &seed, "--date", &date]);
    path
}

/// Runs `tradebars-feeder generate` of `symbols` and `trades` into `out`, with `extra`
/// arguments (`--seed`, `--date`; the feeder's defaults where left out), and asserts it
/// succeeds.
pub fn generate_into(out: &Path, symbols: usize, trades: usize, extra: &[&str]) {
    let args = generate_args(out, symbols, trades, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = feeder(&args, None);
    assert!(done.status.success(), "{}", text(&done));
}

/// The arguments of `tradebars-feeder generate`: `extra` between the counts and `--out`.
pub fn generate_args(out: &Path, symbols: usize, trades: usize, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "generate".to_string(),
        "--symbols".to_string(),
        symbols.to_string(),
        "--trades".to_string(),
        trades.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["--out".to_string(), out.display().to_string()]);
    args
}

/// The API key the fake gateway and the fake historical API accept in the tests.
pub const TEST_API_KEY: &str = "db-tradebarsTestKey0123456789abc";

/// Waits until `done`, at most `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, done: impl FnMut() -> bool) {
    poll_until(what, timeout, std::time::Duration::from_millis(20), done);
}

/// Waits until `sql` (a count) is positive, for at most 30 s. It polls every 10 ms: the
/// tests wait with it for a statement that runs, to act while it still does.
pub fn wait_for(db: &str, sql: &str) {
    poll_until(
        sql,
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(10),
        || count(db, sql) != 0,
    );
}

fn poll_until(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut done: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

pub fn sigterm(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for a child to exit, at most `limit`; returns its exit code and output.
pub fn exit_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> (Option<i32>, String) {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("status") {
            let out = child.wait_with_output().expect("output");
            return (status.code(), text(&out));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Trades in bars and trades still staged, together.
pub fn stored_trades(db: &str) -> i64 {
    count(
        db,
        "SELECT (SELECT count(*) FROM trades_staging) + (SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars WHERE data_source = 'trades')",
    )
}

/// `tradebars-feeder replay FILE` (with --rollup if asked) into `db`, which must succeed; what
/// it printed.
pub fn replay(db: &str, file: &Path, rollup: bool) -> String {
    let file = file.display().to_string();
    let mut args = vec!["replay", file.as_str()];
    if rollup {
        args.push("--rollup");
    }
    let out = feeder(&args, Some(db));
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = target_dir().join("e2e-scratch");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(format!("{}-{name}", std::process::id()))
}

/// The real Databento samples, if this checkout has them beside it.
pub fn sample(name: &str) -> Option<PathBuf> {
    let p = root().join("../shared/data").join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: real sample {name} not found (../shared/data is absent in this checkout)"
        );
        None
    }
}

/// A bar as text, the way the test compares them: symbol, minute (UTC epoch seconds), open,
/// high, low, close (fixed-point integers), volume, trade count.
pub type BarKey = (String, i64);
pub type BarVal = (i64, i64, i64, i64, i64, i64);

/// A trade as the oracle sees it: Databento's record header as decoded (instrument,
/// publisher, ts_event) and the fields that place and weigh it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleTrade {
    pub hd: RecordHeader,
    pub ts_recv: u64,
    pub sequence: u32,
    pub price: i64,
    pub size: u32,
}

/// Every trade event of a DBN file (TRADES records, and MBP-1/TBBO/MBO records of action
/// 'T'), in file order, with its symbol.
pub fn trades_of(path: &Path) -> Vec<(String, OracleTrade)> {
    let mut decoder =
        DynDecoder::from_file(path, VersionUpgradePolicy::UpgradeToV3).expect("decoding the file");
    let symbols = TsSymbolMap::from_metadata(decoder.metadata()).expect("symbology");
    let mut out = Vec::new();
    while let Some(rec) = decoder.decode_record_ref().expect("record") {
        let t = if let Some(t) = rec.get::<TradeMsg>() {
            Some((t.hd, t.ts_recv, t.sequence, t.price, t.size))
        } else if let Some(m) = rec.get::<Mbp1Msg>() {
            (m.action as u8 == b'T').then_some((m.hd, m.ts_recv, m.sequence, m.price, m.size))
        } else if let Some(m) = rec.get::<MboMsg>() {
            (m.action as u8 == b'T').then_some((m.hd, m.ts_recv, m.sequence, m.price, m.size))
        } else {
            None
        };
        let Some((hd, ts_recv, sequence, price, size)) = t else {
            continue;
        };
        // the mapping of the UTC date of the record's index time, ts_recv (dbn's get_for_rec)
        let index_ts = if ts_recv == u64::MAX {
            hd.ts_event
        } else {
            ts_recv
        };
        let symbol = symbols
            .get_for_ts(index_ts, hd.instrument_id)
            .cloned()
            .unwrap_or_default();
        out.push((
            symbol,
            OracleTrade {
                hd,
                ts_recv,
                sequence,
                price,
                size,
            },
        ));
    }
    out
}

/// Which timestamp places a trade in its minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OracleClock {
    Recv,
    Event,
}

/// Databento's OHLCV-1m of `trades` (given in stream order), computed by the plainest
/// means: the valid trades of each (symbol, UTC minute of ts_recv), open the first in
/// stream order, close the last, high and low the extremes, volume the sum of sizes.
pub fn oracle_of(trades: &[(String, OracleTrade)], clock: OracleClock) -> BTreeMap<BarKey, BarVal> {
    let mut bars: BTreeMap<BarKey, Vec<(i64, u32)>> = BTreeMap::new();
    let mut ordered: Vec<&(String, OracleTrade)> = trades.iter().collect();
    if clock == OracleClock::Event {
        // exchange order, as tradebars 0.2.0 built bars
        ordered.sort_by_key(|(_, t)| (t.hd.ts_event, t.sequence, t.hd.publisher_id, t.price));
    }
    for (symbol, t) in ordered {
        if t.price == i64::MAX || t.size == 0 || symbol.is_empty() {
            continue;
        }
        let at = match clock {
            OracleClock::Recv => t.ts_recv,
            OracleClock::Event => t.hd.ts_event,
        };
        let minute = (at / 60_000_000_000) as i64 * 60;
        bars.entry((symbol.clone(), minute))
            .or_default()
            .push((t.price, t.size));
    }
    bars.into_iter()
        .map(|(key, ts)| {
            let open = ts[0].0;
            let close = ts[ts.len() - 1].0;
            let high = ts.iter().map(|t| t.0).max().unwrap_or(open);
            let low = ts.iter().map(|t| t.0).min().unwrap_or(open);
            let volume = ts.iter().map(|t| i64::from(t.1)).sum();
            (key, (open, high, low, close, volume, ts.len() as i64))
        })
        .collect()
}

/// The bars a DBN file must give under Databento's clock.
pub fn oracle(path: &Path) -> BTreeMap<BarKey, BarVal> {
    oracle_of(&trades_of(path), OracleClock::Recv)
}

/// Writes the records of `src` received in `[from, to)` (ns) to `dst`: as TRADES, or as the
/// MBP-1 quote feed of the same trades (each trade with an add before it). The metadata
/// says the range, as a Databento request for it would.
pub fn cut_file(src: &Path, dst: &Path, from: u64, to: u64, mbp1: bool) -> usize {
    let mut decoder =
        DynDecoder::from_file(src, VersionUpgradePolicy::UpgradeToV3).expect("decoding the file");
    let mut meta = decoder.metadata().clone();
    meta.start = from;
    meta.end = std::num::NonZeroU64::new(to);
    if mbp1 {
        meta.schema = Some(dbn::Schema::Mbp1);
    }
    let file = std::fs::File::create(dst).expect("creating the cut file");
    let mut encoder = dbn::encode::dbn::Encoder::with_zstd(file, &meta).expect("encoder");
    let mut kept = 0;
    while let Some(t) = decoder.decode_record::<TradeMsg>().expect("record") {
        if t.ts_recv < from || t.ts_recv >= to {
            continue;
        }
        kept += 1;
        if mbp1 {
            encoder
                .encode_record(&historical::mbp1_of(t, b'A'))
                .expect("encoding");
            encoder
                .encode_record(&historical::mbp1_of(t, b'T'))
                .expect("encoding");
        } else {
            encoder.encode_record(t).expect("encoding");
        }
    }
    encoder.flush().expect("flushing");
    kept
}

/// The ts_recv range a generated file's trades were made for: its metadata's start and end.
pub fn range_of(path: &Path) -> (u64, u64) {
    let decoder =
        DynDecoder::from_file(path, VersionUpgradePolicy::UpgradeToV3).expect("decoding the file");
    let m = decoder.metadata();
    (m.start, m.end.map_or(u64::MAX, |e| e.get()))
}

/// Stages a file's trades with plain SQL, as any version of the extension takes them (its
/// own columns only), for databases the current feeder does not write to.
pub fn stage_with_sql(db: &str, path: &Path) {
    let mut c = connect(db);
    let slot: String = c
        .query_one("SELECT staging_slot()", &[])
        .expect("staging_slot()")
        .get(0);
    let mut rows = String::new();
    for (symbol, t) in trades_of(path) {
        rows.push_str(&format!(
            "{symbol}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\tA\t0\n",
            t.hd.instrument_id,
            t.hd.publisher_id,
            t.hd.ts_event,
            t.ts_recv,
            t.sequence,
            t.price,
            t.size
        ));
    }
    let mut w = c
        .copy_in(&format!(
            "COPY {slot} (symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence, price, size, side, flags) FROM STDIN"
        ))
        .expect("COPY");
    std::io::Write::write_all(&mut w, rows.as_bytes()).expect("COPY rows");
    w.finish().expect("COPY finish");
}

/// The trades bars of a database, in the oracle's form.
pub fn stored_bars(db: &str) -> BTreeMap<BarKey, BarVal> {
    stored_bars_of(db, "trades")
}

/// The bars of one data source, in the oracle's form (trade_count as stored).
pub fn stored_bars_of(db: &str, source: &str) -> BTreeMap<BarKey, BarVal> {
    connect(db)
        .query(
            "SELECT symbol, extract(epoch FROM \"timestamp\")::bigint,
                    (open * 1000000000)::bigint, (high * 1000000000)::bigint,
                    (low * 1000000000)::bigint, (close * 1000000000)::bigint, volume, trade_count
             FROM price_bars WHERE data_source = $1",
            &[&source],
        )
        .expect("reading price_bars")
        .into_iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)),
            )
        })
        .collect()
}

pub fn count(db: &str, sql: &str) -> i64 {
    connect(db).query_one(sql, &[]).expect(sql).get(0)
}

/// The one value `q` selects.
pub fn one<T: for<'a> postgres::types::FromSql<'a>>(db: &str, q: &str) -> T {
    connect(db)
        .query_one(q, &[])
        .unwrap_or_else(|e| panic!("{q}: {e:?}"))
        .get(0)
}

/// The message of the database error `sql` fails with.
pub fn error_of(db: &str, sql: &str) -> String {
    db_error(connect(db).batch_execute(sql))
}

/// The message of the database error a statement failed with. A statement that succeeded,
/// or failed without a database error (a lost connection), fails the test.
pub fn db_error<T: std::fmt::Debug>(result: Result<T, postgres::Error>) -> String {
    let e = result.expect_err("the statement must fail");
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => panic!("failed without a database error: {e}"),
    }
}

/// The oracle's bars of `trades` as an ohlcv-1m file, untouched: its path and bar count.
pub fn official_bars_file(trades: &Path, name: &str) -> (PathBuf, usize) {
    official_file(trades, name, Schema::Ohlcv1M, |_| {})
}

/// Writes the oracle's bars of `trades` as an ohlcv-1m file with the trades file's
/// symbology; `tamper` may change each record before it is written.
pub fn official_file(
    trades: &Path,
    name: &str,
    schema: Schema,
    tamper: impl Fn(&mut OhlcvMsg),
) -> (PathBuf, usize) {
    let decoder =
        DynDecoder::from_file(trades, VersionUpgradePolicy::UpgradeToV3).expect("decoding");
    let mut metadata = decoder.metadata().clone();
    metadata.schema = Some(schema);
    let of = trades_of(trades);
    let instrument: BTreeMap<String, (u32, u16)> = of
        .iter()
        .map(|(s, t)| (s.clone(), (t.hd.instrument_id, t.hd.publisher_id)))
        .collect();
    let mut bars: Vec<((i64, u32), OhlcvMsg)> = oracle(trades)
        .into_iter()
        .map(|((symbol, minute), (open, high, low, close, volume, _))| {
            let (id, publisher) = instrument[&symbol];
            let ts = minute as u64 * 1_000_000_000;
            let mut bar = OhlcvMsg {
                hd: RecordHeader::new::<OhlcvMsg>(dbn::rtype::OHLCV_1M, publisher, id, ts),
                open,
                high,
                low,
                close,
                volume: volume as u64,
            };
            tamper(&mut bar);
            ((minute, id), bar)
        })
        .collect();
    bars.sort_by_key(|(k, _)| *k);
    let path = scratch(name);
    let file = std::fs::File::create(&path).expect("creating");
    let mut encoder = dbn::encode::dbn::Encoder::with_zstd(file, &metadata).expect("encoder");
    for (_, bar) in &bars {
        encoder.encode_record(bar).expect("encoding");
    }
    encoder.flush().expect("flushing");
    (path, bars.len())
}

#[cfg(test)]
mod tests {
    use super::generate_args;

    /// The extra arguments stand between the counts and `--out`, in the order the tests give
    /// them: the invocations the tests wrote by hand before are the same.
    #[test]
    fn generate_args_put_the_extra_arguments_before_the_output() {
        let out = std::path::Path::new("scratch/a.dbn.zst");
        assert_eq!(
            generate_args(out, 50, 20000, &["--seed", "51", "--date", "2025-10-27"]),
            [
                "generate",
                "--symbols",
                "50",
                "--trades",
                "20000",
                "--seed",
                "51",
                "--date",
                "2025-10-27",
                "--out",
                "scratch/a.dbn.zst"
            ]
        );
        assert_eq!(
            generate_args(out, 3, 30000, &[]),
            [
                "generate",
                "--symbols",
                "3",
                "--trades",
                "30000",
                "--out",
                "scratch/a.dbn.zst"
            ]
        );
    }
}

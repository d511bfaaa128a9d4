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

use dbn::decode::{DbnMetadata, DecodeRecordRef, DynDecoder};
use dbn::{MboMsg, Mbp1Msg, TradeMsg, TsSymbolMap, VersionUpgradePolicy};

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

fn cluster_script(args: &[&str]) {
    let dir = target_dir().join("e2e-pgdata");
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
    let path = scratch(name);
    let out = feeder(
        &[
            "generate",
            "--symbols",
            &symbols.to_string(),
            "--trades",
            &trades.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
            &path.display().to_string(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    path
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
/// A trade as the oracle orders it: ts_event, sequence, publisher, price, size.
type OracleTrade = (u64, u32, u16, i64, u32);

/// Databento's OHLCV-1m, computed from the file by the plainest means: collect the valid
/// trades of each (symbol, UTC minute), sort them by (ts_event, sequence, publisher, price).
pub fn oracle(path: &Path) -> BTreeMap<BarKey, BarVal> {
    let mut decoder =
        DynDecoder::from_file(path, VersionUpgradePolicy::UpgradeToV3).expect("decoding the file");
    let symbols = TsSymbolMap::from_metadata(decoder.metadata()).expect("symbology");
    let mut trades: BTreeMap<BarKey, Vec<OracleTrade>> = BTreeMap::new();
    while let Some(rec) = decoder.decode_record_ref().expect("record") {
        let t = if let Some(t) = rec.get::<TradeMsg>() {
            Some((t.hd, t.sequence, t.price, t.size))
        } else if let Some(m) = rec.get::<Mbp1Msg>() {
            (m.action as u8 == b'T').then_some((m.hd, m.sequence, m.price, m.size))
        } else if let Some(m) = rec.get::<MboMsg>() {
            (m.action as u8 == b'T').then_some((m.hd, m.sequence, m.price, m.size))
        } else {
            None
        };
        let Some((hd, seq, price, size)) = t else {
            continue;
        };
        if price == i64::MAX || size == 0 {
            continue;
        }
        let Some(symbol) = symbols.get_for_ts(hd.ts_event, hd.instrument_id) else {
            continue;
        };
        let minute = (hd.ts_event / 60_000_000_000) as i64 * 60;
        trades.entry((symbol.clone(), minute)).or_default().push((
            hd.ts_event,
            seq,
            hd.publisher_id,
            price,
            size,
        ));
    }
    trades
        .into_iter()
        .map(|(key, mut ts)| {
            ts.sort();
            let open = ts[0].3;
            let close = ts[ts.len() - 1].3;
            let high = ts.iter().map(|t| t.3).max().unwrap_or(open);
            let low = ts.iter().map(|t| t.3).min().unwrap_or(open);
            let volume = ts.iter().map(|t| i64::from(t.4)).sum();
            (key, (open, high, low, close, volume, ts.len() as i64))
        })
        .collect()
}

/// The trades bars of a database, in the oracle's form.
pub fn stored_bars(db: &str) -> BTreeMap<BarKey, BarVal> {
    let mut c = connect(db);
    c.query(
        "SELECT symbol, extract(epoch FROM \"timestamp\")::bigint,
                (open * 1000000000)::bigint, (high * 1000000000)::bigint, (low * 1000000000)::bigint,
                (close * 1000000000)::bigint, volume, trade_count
         FROM price_bars WHERE data_source = 'trades'",
        &[],
    )
    .expect("reading price_bars")
    .into_iter()
    .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7))))
    .collect()
}

pub fn count(db: &str, sql: &str) -> i64 {
    connect(db).query_one(sql, &[]).expect(sql).get(0)
}

//! Freshness benchmark: the live feeder fed by the loopback gateway at a paced rate; for each
//! block of 1,000 trades, the time from its sending to its bars being visible (all its trades
//! counted in price_bars), and the feeder's peak RSS.
//!   freshness FEEDER_BIN DATABASE_URL DBN_FILE [TRADES_PER_SECOND]
//! Prints one CSV line: p50_ms,p99_ms,peak_rss_mb,trades,rate_per_s

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tradebars_tests::gateway::{FakeGateway, Plan};

const KEY: &str = "db-tradebarsBenchKey123456789abc";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: freshness FEEDER_BIN DATABASE_URL DBN_FILE [TRADES_PER_SECOND]");
        std::process::exit(2);
    }
    let (bin, url, file) = (&args[1], &args[2], std::path::Path::new(&args[3]));
    let rate: u64 = args.get(4).and_then(|r| r.parse().ok()).unwrap_or(100_000);
    let pace = Duration::from_micros(1_000_000_000 / rate);
    let gateway = FakeGateway::start(file, Plan::new(KEY).paced(pace));
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("database");
    let mut feeder = gateway
        .feeder_command(std::path::Path::new(bin), url, KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the feeder");
    let (visible_at, peak_rss_kb) = watch(&gateway, &mut db, feeder.id());
    let _ = Command::new("kill")
        .args(["-TERM", &feeder.id().to_string()])
        .status();
    let _ = feeder.wait();
    let marks = gateway
        .sent_marks
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let delays = delays_ms(&marks, &visible_at);
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (first, last) = (marks.first().map(|m| m.1), marks.last().map(|m| m.1));
    let achieved = match (first, last, marks.last()) {
        (Some(a), Some(b), Some((n, _))) if b > a => *n as f64 / b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    println!(
        "{:.0},{:.0},{:.1},{},{:.0}",
        pct(0.5),
        pct(0.99),
        peak_rss_kb as f64 / 1024.0,
        marks.last().map(|m| m.0).unwrap_or(0),
        achieved
    );
}

/// Polls the trades rolled up every 5 ms until every trade sent is counted (or 10 minutes
/// pass): when each count became visible, and the feeder's peak RSS (kB) seen meanwhile.
/// It reads `rollup_stats`, one row that each rollup updates in the transaction that writes
/// its bars, so a count is visible exactly when those bars are. (Summing price_bars every 5
/// ms, as this did before, scanned a table growing to 195,000 bars with parallel workers:
/// on 2 cores the watcher took CPU from the feeder and the rollups it was timing.)
fn watch(
    gateway: &FakeGateway,
    db: &mut postgres::Client,
    feeder: u32,
) -> (Vec<(i64, Instant)>, u64) {
    let mut visible_at: Vec<(i64, Instant)> = Vec::new();
    let mut peak_rss_kb = 0u64;
    let start = Instant::now();
    loop {
        let visible: i64 = db
            .query_one("SELECT trades FROM rollup_stats", &[])
            .expect("query")
            .get(0);
        visible_at.push((visible, Instant::now()));
        peak_rss_kb = peak_rss_kb.max(peak_rss_of(feeder));
        let done = gateway.all_sent_at.lock().ok().and_then(|t| *t).is_some();
        let total = gateway
            .sent_marks
            .lock()
            .map(|m| m.last().map(|x| x.0).unwrap_or(0))
            .unwrap_or(0) as i64;
        if done && visible >= total && total > 0 {
            assert_bars_count(db, visible);
            return (visible_at, peak_rss_kb);
        }
        if start.elapsed() > Duration::from_secs(600) {
            eprintln!("freshness: timed out");
            return (visible_at, peak_rss_kb);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bars themselves count the trades that `rollup_stats` says were rolled up.
fn assert_bars_count(db: &mut postgres::Client, rolled_up: i64) {
    let in_bars: i64 = db
        .query_one(
            "SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars",
            &[],
        )
        .expect("query")
        .get(0);
    assert_eq!(
        in_bars, rolled_up,
        "price_bars counts {in_bars} trades, rollup_stats {rolled_up}"
    );
}

/// A process's peak resident set (VmHWM, kB), 0 where it cannot be read.
fn peak_rss_of(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .filter(|l| l.starts_with("VmHWM:"))
        .filter_map(|line| line.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .max()
        .unwrap_or(0)
}

/// For each block mark (trades sent so far, when), the time until a poll saw that many
/// trades counted, in milliseconds, sorted.
fn delays_ms(marks: &[(usize, Instant)], visible_at: &[(i64, Instant)]) -> Vec<f64> {
    let mut delays: Vec<f64> = marks
        .iter()
        .filter_map(|(sent, at)| {
            visible_at
                .iter()
                .find(|(v, t)| *v >= *sent as i64 && t >= at)
                .map(|(_, t)| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(|a, b| a.total_cmp(b));
    delays
}

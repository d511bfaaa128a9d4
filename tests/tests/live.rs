//! The feeder as a service against a loopback gateway that speaks Databento's live protocol.

use std::process::Child;
use std::time::Duration;

use tradebars_tests::gateway::{FakeGateway, Plan};
use tradebars_tests::*;

fn start_live(gateway: &FakeGateway, db: &str, key: &str, extra: &[&str]) -> Child {
    gateway.spawn_feeder(db, key, extra)
}

/// A gateway serving `file`, pausing `ms` milliseconds every 1,000 trades.
fn paced_gateway(file: &std::path::Path, ms: u64) -> FakeGateway {
    FakeGateway::start(
        file,
        Plan::new(TEST_API_KEY).paced(Duration::from_millis(ms)),
    )
}

/// A database `name` and a generated day of 40,000 trades of `symbols` symbols, served by a
/// gateway pacing 50 ms every 1,000 trades, and a live feeder with `extra` that has staged
/// `staged` of them.
fn live_on_a_paced_day(
    name: &str,
    symbols: usize,
    seed: u64,
    extra: &[&str],
    staged: i64,
) -> (String, std::path::PathBuf, FakeGateway, Child) {
    let db = fresh_db(name, "");
    let file = generate(
        &format!("{}.dbn.zst", name.replace('_', "-")),
        symbols,
        40000,
        seed,
    );
    let gateway = paced_gateway(&file, 50);
    let feeder = start_live(&gateway, &db, TEST_API_KEY, extra);
    wait_for_staged(&db, "the feeder staging", staged);
    (db, file, gateway, feeder)
}

/// Waits up to 60 s for `n` trades staged or in bars (`what` names the wait).
fn wait_for_staged(db: &str, what: &str, n: i64) {
    wait_until(what, Duration::from_secs(60), || stored_trades(db) >= n);
}

/// The trades in bars, 0 while there are none.
fn trades_in_bars(db: &str) -> i64 {
    count(
        db,
        "SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars",
    )
}

/// SIGTERM to `child`, which must exit 0 within `secs`; its output.
fn stopped_with_0(mut child: Child, secs: u64) -> String {
    sigterm(&mut child);
    let (code, out) = exit_within(child, Duration::from_secs(secs));
    assert_eq!(code, Some(0), "{out}");
    out
}

/// Waits up to 60 s for all `n` trades to be counted in bars.
fn wait_for_all_in_bars(db: &str, n: i64) {
    wait_until(
        &format!("all {n} trades in bars"),
        Duration::from_secs(60),
        || trades_in_bars(db) == n,
    );
}

/// SIGTERM to `child`, which exits 0; then the bars must be the oracle's of `file`.
fn stopped_with_the_oracles_bars(child: Child, db: &str, file: &std::path::Path) {
    stopped_with_0(child, 10);
    assert_eq!(stored_bars(db), oracle(file));
}

#[test]
fn a_stream_cut_twice_ends_with_exactly_the_trades_sent() {
    let db = fresh_db("live_cuts", "");
    let file = generate("live-cuts.dbn.zst", 12, 30000, 61);
    let gateway = FakeGateway::start(&file, Plan::new(TEST_API_KEY).cut_after(vec![7_000, 9_000]));
    let child = start_live(&gateway, &db, TEST_API_KEY, &[]);
    wait_for_all_in_bars(&db, 30_000);
    let sent = gateway.all_sent_at.lock().ok().and_then(|t| *t);
    if let Some(sent) = sent {
        eprintln!(
            "live: last trade sent -> its bar visible: {:?} (rollup every 200 ms)",
            sent.elapsed()
        );
    }
    assert!(
        gateway
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3
    );
    stopped_with_0(child, 10);
    assert_eq!(stored_bars(&db), oracle(&file));
    let reconnects = count(&db, "SELECT reconnects FROM feeder_status");
    eprintln!(
        "live: 30000 trades sent over {} connections; {} stored; the feeder counted {} reconnects",
        gateway
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        count(&db, "SELECT sum(trade_count)::bigint FROM price_bars"),
        reconnects
    );
    assert!(reconnects >= 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 3 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        0,
        "lock released"
    );
}

#[test]
fn each_batch_is_rolled_up_when_it_commits_not_when_the_interval_comes() {
    let db = fresh_db("live_poked", "");
    let file = generate("live-poked.dbn.zst", 20, 20000, 67);
    let gateway = paced_gateway(&file, 20);
    // A rollup interval far longer than the test: only the rollups after commits can show
    // the bars in time (the interval's first rollup runs at the start, before any trade).
    let child = gateway
        .feeder_command(&feeder_bin(), &url(&db), TEST_API_KEY)
        .args(["--batch-ms", "50", "--rollup-ms", "600000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the live feeder");
    wait_for_all_in_bars(&db, 20_000);
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    stopped_with_the_oracles_bars(child, &db, &file);
}

#[test]
fn sigterm_mid_stream_then_a_restart_loses_and_doubles_nothing() {
    let db = fresh_db("live_sigterm", "");
    let file = generate("live-sigterm.dbn.zst", 12, 40000, 62);
    let gateway = paced_gateway(&file, 20);
    let child = start_live(&gateway, &db, TEST_API_KEY, &[]);
    wait_for_staged(&db, "some trades staged", 5_000);
    stopped_with_0(child, 10);
    let ledger = count(&db, "SELECT trades FROM ingest_ledger");
    assert_eq!(
        stored_trades(&db),
        ledger,
        "everything the ledger counts is stored, nothing else"
    );
    assert!(ledger < 40_000, "stopped mid-stream");
    assert_eq!(
        count(&db, "SELECT count(*) FROM trades_staging"),
        0,
        "rolled up on the way out"
    );

    let child = start_live(&gateway, &db, TEST_API_KEY, &[]);
    wait_for_all_in_bars(&db, 40_000);
    stopped_with_the_oracles_bars(child, &db, &file);
}

#[test]
fn a_refused_key_fails_fast_with_its_own_exit_code_and_is_never_shown() {
    let db = fresh_db("live_badkey", "");
    let file = generate("live-badkey.dbn", 12, 100, 63);
    let gateway = FakeGateway::start(&file, Plan::new(TEST_API_KEY));
    let wrong = "db-wrongKeyWrongKeyWrongKey12345";
    let child = start_live(&gateway, &db, wrong, &[]);
    let (code, out) = exit_within(child, Duration::from_secs(15));
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("refused the API key"), "{out}");
    assert!(!out.contains(wrong) && !out.contains("WrongKey"), "{out}");
    assert_eq!(
        gateway
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no retry"
    );
}

#[test]
fn metrics_and_health_are_served() {
    let db = fresh_db("live_metrics", "");
    let file = generate("live-metrics.dbn", 12, 2000, 64);
    let gateway = FakeGateway::start(&file, Plan::new(TEST_API_KEY));
    let port = 19187;
    let child = start_live(
        &gateway,
        &db,
        TEST_API_KEY,
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    wait_for_all_in_bars(&db, 2_000);
    let get = |path: &str| http_get(port, path);
    assert!(get("/health").contains("200 OK"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("tradebars_feeder_trades_written_total 2000"),
        "{metrics}"
    );
    assert!(!metrics.contains(TEST_API_KEY));
    stopped_with_0(child, 10);
}

/// The response to `GET path` from the metrics endpoint on `port`, head and body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

fn execute(db: &str, statement: &str) {
    connect(db).batch_execute(statement).expect(statement);
}

/// The value of the metric `name` on the endpoint on `port`.
fn metric(port: u16, name: &str) -> f64 {
    let text = http_get(port, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A gateway serving `file` (of `trades` trades) and a live feeder serving metrics on `port`,
/// once it has staged them all and `secs` more seconds passed.
fn metered_feeder_with_all_staged(
    db: &str,
    file: &std::path::Path,
    trades: i64,
    port: u16,
    secs: u64,
) -> (FakeGateway, Child) {
    let gateway = FakeGateway::start(file, Plan::new(TEST_API_KEY));
    let metrics = format!("127.0.0.1:{port}");
    let child = start_live(&gateway, db, TEST_API_KEY, &["--metrics-addr", &metrics]);
    wait_for_staged(db, "all trades staged", trades);
    std::thread::sleep(Duration::from_secs(secs));
    (gateway, child)
}

/// The feeder on `port` reports its staged trades waiting for bars at least `secs`.
fn assert_bar_lag_at_least(port: u16, secs: f64) {
    let lag = metric(port, "tradebars_feeder_bar_lag_seconds");
    assert!(
        lag >= secs,
        "the staged trades wait for their bars: lag {lag}"
    );
}

#[test]
fn a_failing_rollup_backs_off_shows_as_bar_lag_and_catches_up() {
    let db = fresh_db("live_rollup_fails", "");
    let file = generate("live-rollup-fails.dbn", 12, 2000, 69);
    execute(
        &db,
        "ALTER FUNCTION bars_rollup() RENAME TO bars_rollup_away",
    );
    let (_gateway, child) = metered_feeder_with_all_staged(&db, &file, 2_000, 19188, 3);
    // Retried with a growing wait (0.2, 0.4, 0.8, 1.6 s...): a handful of failures, where a
    // reconnect at once after each failure made hundreds a second.
    let failures = metric(19188, "tradebars_feeder_rollup_failures_total");
    assert!(
        (1.0..=12.0).contains(&failures),
        "{failures} failed rollups"
    );
    assert_bar_lag_at_least(19188, 2.0);
    execute(
        &db,
        "ALTER FUNCTION bars_rollup_away() RENAME TO bars_rollup",
    );
    wait_for_all_in_bars(&db, 2_000);
    assert_eq!(metric(19188, "tradebars_feeder_bar_lag_seconds"), 0.0);
    stopped_with_the_oracles_bars(child, &db, &file);
}

/// A session of `db` holding the rollups' lock until it is dropped.
fn holding_the_rollup_lock(db: &str) -> postgres::Client {
    use tradebars_contract::lock::{CLASS, ROLLUP};
    let mut holder = connect(db);
    let take = format!("SELECT pg_advisory_lock({CLASS}, {ROLLUP})");
    holder.batch_execute(&take).expect("taking the rollup lock");
    holder
}

#[test]
fn trades_waiting_behind_a_blocked_rollup_show_as_bar_lag() {
    let db = fresh_db("live_rollup_blocked", "");
    let file = generate("live-rollup-blocked.dbn", 12, 2000, 70);
    // Another session holds the rollups' lock: the feeder's first rollup (before any trade
    // arrives) waits for it, and so does every trade written after.
    let holder = holding_the_rollup_lock(&db);
    let (_gateway, child) = metered_feeder_with_all_staged(&db, &file, 2_000, 19189, 2);
    assert_bar_lag_at_least(19189, 1.5);
    drop(holder);
    wait_for_all_in_bars(&db, 2_000);
    stopped_with_the_oracles_bars(child, &db, &file);
}

#[test]
fn sigterm_behind_a_held_rollup_lock_stops_within_the_final_rollups_limit() {
    let db = fresh_db("live_stop_blocked", "");
    let file = generate("live-stop-blocked.dbn", 12, 2000, 71);
    let holder = holding_the_rollup_lock(&db);
    let gateway = FakeGateway::start(&file, Plan::new(TEST_API_KEY));
    let child = start_live(&gateway, &db, TEST_API_KEY, &["--final-rollup-secs", "2"]);
    wait_for_staged(&db, "all trades staged", 2_000);
    // the lock is held until after the feeder exited: its last rollup gives up after 2 s
    let out = stopped_with_0(child, 15);
    assert!(out.contains("final rollup failed"), "{out}");
    assert_eq!(trades_in_bars(&db), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 2_000);
    drop(holder);
    execute(&db, "SELECT bars_rollup()");
    assert_eq!(stored_bars(&db), oracle(&file));
}

#[test]
fn a_gateway_dropping_at_random_points_leaves_no_gap_and_no_duplicate() {
    // A bounded soak: TRADEBARS_SOAK_TRADES trades (default 150,000), cut at 25 pseudo-random
    // points; it stops by itself when every trade is in a bar, or fails after 3 minutes.
    let trades: usize = std::env::var("TRADEBARS_SOAK_TRADES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150_000);
    let db = fresh_db("live_soak", "");
    let file = generate("live-soak.dbn.zst", 12, trades, 65);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let cuts: Vec<usize> = (0..25)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (trades as u64 / 10).max(2)) as usize
        })
        .collect();
    let gateway = FakeGateway::start(&file, Plan::new(TEST_API_KEY).cut_after(cuts));
    // The margin must cover the longest event-to-receipt delay: the generator's late prints
    // take up to 3 s (intraday replay filters on ts_event).
    let child = start_live(&gateway, &db, TEST_API_KEY, &["--replay-margin-secs", "5"]);
    wait_until("every trade in a bar", Duration::from_secs(180), || {
        trades_in_bars(&db) >= trades as i64
    });
    stopped_with_0(child, 10);
    assert!(
        gateway
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 26
    );
    assert_eq!(
        count(&db, "SELECT sum(trade_count)::bigint FROM price_bars"),
        trades as i64
    );
    assert_eq!(stored_bars(&db), oracle(&file));
}

#[test]
fn a_standby_feeder_waits_for_the_first_and_takes_over_where_it_stopped() {
    let (db, file, gateway, first) = live_on_a_paced_day("live_standby", 12, 67, &[], 5_000);
    let mut second = start_live(&gateway, &db, TEST_API_KEY, &["--standby"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        second.try_wait().expect("status").is_none(),
        "the second feeder stands by"
    );
    stopped_with_0(first, 10);
    wait_for_all_in_bars(&db, 40_000);
    let out = stopped_with_0(second, 10);
    assert!(out.contains("standing by"), "{out}");
    assert_eq!(stored_bars(&db), oracle(&file));
}

#[test]
fn sigterm_while_a_standby_waits_after_losing_its_connection_exits_0() {
    let (db, file, gateway, mut feeder) =
        live_on_a_paced_day("live_standby_reconnect", 8, 68, &["--standby"], 2_000);
    // Its sessions die; another holder takes the feeder lock before it is back, so on its
    // reconnect it stands by.
    let mut other = connect(&db);
    let mut dba = connect(&db);
    wait_until(
        "the feeder lock taken from it",
        Duration::from_secs(30),
        || {
            dba.batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'tradebars-feeder' AND datname = current_database()",
            )
            .expect("terminating the feeder's sessions");
            (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(2));
                other
                    .query_one("SELECT pg_try_advisory_lock(29794, 3)", &[])
                    .expect("try lock")
                    .get::<_, bool>(0)
            })
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        feeder.try_wait().expect("status").is_none(),
        "the feeder stands by"
    );
    let out = stopped_with_0(feeder, 15);
    assert!(out.contains("stopped while standing by"), "{out}");
    // nothing it committed is lost and nothing counts twice: once the other holder is gone,
    // a restart resumes and the day ends exactly as sent
    drop(other);
    let again = start_live(&gateway, &db, TEST_API_KEY, &[]);
    wait_until("all 40000 trades in bars", Duration::from_secs(90), || {
        trades_in_bars(&db) == 40_000
    });
    stopped_with_0(again, 10);
    assert_eq!(stored_bars(&db), oracle(&file));
}

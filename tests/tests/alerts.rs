//! The shipped alert rules, evaluated by a real Prometheus that scrapes a live feeder fed by
//! the loopback gateway: no rule fires while trades flow; TradebarsNoTrades fires when the
//! gateway stops and clears when it comes back; TradebarsFeederDown fires when the feeder dies.
//!
//! The rules are deploy/prometheus/tradebars-alerts.yml with every duration read in seconds
//! instead of minutes (a 5-minute window becomes 5 s), so the test takes seconds; and the
//! market is open (tradebars:market_open is 1) whatever the time of day.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tradebars_tests::gateway::{FakeGateway, Plan};
use tradebars_tests::*;

const KEY: &str = "db-tradebarsAlertKey0123456789ab";
const ALERT: &str = "TradebarsNoTrades";

/// Kills the process when dropped (the test's Prometheus and feeder), also on failure.
struct Killed(Child, &'static str);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
        eprintln!("alerts: {} stopped", self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// GET over HTTP/1.0; the body, if the answer is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

/// Every duration of the rules in seconds instead of minutes: `[5m]` -> `[5s]`, `for: 2m` -> `for: 2s`.
fn minutes_as_seconds(rules: &str) -> String {
    let mut out = String::with_capacity(rules.len());
    let mut rest = rules;
    while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let digits: String = from.chars().take_while(|c| c.is_ascii_digit()).collect();
        let after = &from[digits.len()..];
        let is_duration = after.starts_with('m')
            && !after[1..].starts_with(|c: char| c.is_ascii_alphanumeric())
            && (before.ends_with('[') || before.ends_with("for: "));
        out.push_str(&digits);
        if is_duration {
            out.push('s');
            rest = &after[1..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn now_utc() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The state of `alert` in Prometheus's /api/v1/alerts: "firing", "pending" or "inactive".
fn alert_state(prometheus: u16, alert: &str) -> String {
    let Some(body) = http_get(prometheus, "/api/v1/alerts") else {
        return "unreachable".into();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
    let states: Vec<String> = alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == alert)
        .filter_map(|a| a["state"].as_str().map(String::from))
        .collect();
    if states.iter().any(|s| s == "firing") {
        "firing".into()
    } else if states.iter().any(|s| s == "pending") {
        "pending".into()
    } else {
        "inactive".into()
    }
}

/// The alerts firing now, by name.
fn firing(prometheus: u16) -> Vec<String> {
    let body = http_get(prometheus, "/api/v1/alerts").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut names: Vec<String> = v["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Polls `alert` until it is in `state`; returns when, and the states seen before.
fn wait_for_state(prometheus: u16, alert: &str, state: &str, limit: Duration) -> Instant {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let now = alert_state(prometheus, alert);
        if now != last {
            eprintln!(
                "alerts: {} {alert} is {now} (firing: {:?})",
                now_utc(),
                firing(prometheus)
            );
            last = now.clone();
        }
        if now == state {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "{alert} not {state} within {limit:?} (last: {now})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn written(metrics_port: u16) -> u64 {
    http_get(metrics_port, "/metrics")
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("tradebars_feeder_trades_written_total "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn start_prometheus(dir: &Path, feeder_metrics: u16, port: u16) -> Killed {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let rules = std::fs::read_to_string(root.join("tradebars-alerts.yml")).expect("rules");
    std::fs::write(dir.join("alerts.yml"), minutes_as_seconds(&rules)).expect("writing");
    std::fs::write(
        dir.join("market.yml"),
        "groups:\n  - name: market-always-open\n    rules:\n      - record: tradebars:market_open\n        expr: vector(1)\n",
    )
    .expect("writing");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml, market.yml]\n\
             scrape_configs:\n  - job_name: tradebars-feeder\n    static_configs:\n      - targets: ['127.0.0.1:{feeder_metrics}']\n"
        ),
    )
    .expect("writing");
    let check = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(dir.join("prometheus.yml"))
        .output()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    assert!(check.status.success(), "{}", text(&check));
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("starting prometheus (Debian's prometheus package; scripts/setup.sh installs it)");
    Killed(child, "prometheus")
}

#[test]
fn rule_durations_read_in_seconds_only_where_they_are_durations() {
    assert_eq!(
        minutes_as_seconds("rate(x[5m]) == 0\n  for: 10m\n  summary: 5 minutes, 14 * 60 + 30m2"),
        "rate(x[5s]) == 0\n  for: 10s\n  summary: 5 minutes, 14 * 60 + 30m2"
    );
}

/// The live feeder against `gateway`, serving its metrics on `metrics_port`, logging to `dir`.
fn start_feeder(gateway: &FakeGateway, db: &str, metrics_port: u16, dir: &Path) -> Killed {
    let feeder = gateway
        .feeder_command(&feeder_bin(), &url(db), KEY)
        .args(["--batch-ms", "50", "--rollup-ms", "200"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("feeder.log")).expect("feeder log"))
        .spawn()
        .expect("starting the live feeder");
    Killed(feeder, "feeder")
}

fn wait_until_prometheus_is_ready(prometheus_port: u16, dir: &Path) {
    let ready = Instant::now();
    while http_get(prometheus_port, "/-/ready").is_none() {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prometheus applies its targets a few seconds after it starts: until the first scrape,
/// `up` is absent and TradebarsFeederNotScraped (5 s here) may fire. Waits for the scrape and
/// for that alert to resolve.
fn wait_until_the_feeder_is_scraped(prometheus_port: u16, feeder: &mut Killed, dir: &Path) {
    let scraped = Instant::now();
    loop {
        let up = http_get(
            prometheus_port,
            "/api/v1/query?query=up%7Bjob%3D%22tradebars-feeder%22%7D%20%3D%3D%201",
        )
        .unwrap_or_default();
        if up.contains("\"value\"")
            && alert_state(prometheus_port, "TradebarsFeederNotScraped") == "inactive"
        {
            break;
        }
        if let Ok(Some(status)) = feeder.0.try_wait() {
            panic!(
                "the feeder exited ({status}): {}",
                std::fs::read_to_string(dir.join("feeder.log")).unwrap_or_default()
            );
        }
        assert!(
            scraped.elapsed() < Duration::from_secs(30),
            "the feeder is not scraped: {up}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Trades flow: several seconds of scrapes and evaluations, and no rule fires. The trades
/// written by then.
fn no_rule_fires_while_trades_flow(prometheus_port: u16, metrics_port: u16) -> u64 {
    let flowing = Instant::now();
    while flowing.elapsed() < Duration::from_secs(8) {
        let now = firing(prometheus_port);
        assert!(now.is_empty(), "alerts firing while all is well: {now:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let before_stop = written(metrics_port);
    assert!(before_stop > 0, "trades flow before the stop");
    let up = http_get(
        prometheus_port,
        "/api/v1/query?query=tradebars_feeder_lock_held%20%3D%3D%201",
    )
    .unwrap_or_default();
    assert!(up.contains("\"value\""), "the lock holder is scraped: {up}");
    before_stop
}

/// Stops the gateway and waits for TradebarsNoTrades to fire; the trades written by then.
fn stop_the_gateway_until_no_trades_fires(
    gateway: FakeGateway,
    before_stop: u64,
    prometheus_port: u16,
    metrics_port: u16,
) -> u64 {
    drop(gateway);
    let stopped = Instant::now();
    eprintln!(
        "alerts: {} gateway stopped ({before_stop} trades written so far)",
        now_utc()
    );
    let fired = wait_for_state(prometheus_port, ALERT, "firing", Duration::from_secs(40));
    eprintln!(
        "alerts: {} {ALERT} FIRED {:?} after the gateway stopped",
        now_utc(),
        fired - stopped
    );
    assert_eq!(alert_state(prometheus_port, ALERT), "firing");
    written(metrics_port)
}

/// Brings the gateway back on `addr` and waits for TradebarsNoTrades to clear.
fn bring_the_gateway_back_until_no_trades_clears(
    addr: &str,
    file: &Path,
    plan: Plan,
    prometheus_port: u16,
) -> FakeGateway {
    let gateway = FakeGateway::start_at(addr, file, plan);
    let back = Instant::now();
    eprintln!("alerts: {} gateway back on {addr}", now_utc());
    let cleared = wait_for_state(prometheus_port, ALERT, "inactive", Duration::from_secs(45));
    eprintln!(
        "alerts: {} {ALERT} CLEARED {:?} after the gateway came back",
        now_utc(),
        cleared - back
    );
    gateway
}

/// The feeder gone: TradebarsFeederDown.
fn kill_the_feeder_until_feeder_down_fires(feeder: Killed, prometheus_port: u16) {
    drop(feeder);
    let killed = Instant::now();
    let down = wait_for_state(
        prometheus_port,
        "TradebarsFeederDown",
        "firing",
        Duration::from_secs(20),
    );
    eprintln!(
        "alerts: {} TradebarsFeederDown FIRED {:?} after the feeder was killed",
        now_utc(),
        down - killed
    );
}

#[test]
fn no_trades_fires_when_the_gateway_stops_and_clears_when_it_comes_back() {
    let started = Instant::now();
    let db = fresh_db("alerts", "");
    let file = generate("alerts.dbn", 20, 120_000, 81);
    // 2,000 trades a second: the stream lasts a minute
    let plan = Plan::new(KEY).paced(Duration::from_millis(500));
    let gateway = FakeGateway::start(&file, plan.clone());
    let gateway_addr = gateway.addr.clone();
    let metrics_port = free_port();
    let prometheus_port = free_port();
    let dir: PathBuf = scratch("prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("prometheus folder");

    let mut feeder = start_feeder(&gateway, &db, metrics_port, &dir);
    let prometheus = start_prometheus(&dir, metrics_port, prometheus_port);
    wait_until_prometheus_is_ready(prometheus_port, &dir);
    eprintln!(
        "alerts: {} prometheus on 127.0.0.1:{prometheus_port} scrapes the feeder on :{metrics_port} every 1 s",
        now_utc()
    );
    wait_until_the_feeder_is_scraped(prometheus_port, &mut feeder, &dir);
    eprintln!("alerts: {} the feeder is scraped (up == 1)", now_utc());

    let before_stop = no_rule_fires_while_trades_flow(prometheus_port, metrics_port);
    let stalled =
        stop_the_gateway_until_no_trades_fires(gateway, before_stop, prometheus_port, metrics_port);
    let gateway =
        bring_the_gateway_back_until_no_trades_clears(&gateway_addr, &file, plan, prometheus_port);
    let resumed = written(metrics_port);
    assert!(
        resumed > stalled,
        "trades are written again after the gateway came back ({stalled} -> {resumed})"
    );
    eprintln!(
        "alerts: trades written: {before_stop} before the stop, {stalled} while stopped, {resumed} after it came back; whole test {:?}",
        started.elapsed()
    );

    kill_the_feeder_until_feeder_down_fires(feeder, prometheus_port);
    drop(prometheus);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}

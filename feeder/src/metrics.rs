//! Health and Prometheus metrics over a small HTTP endpoint: `GET /health`, `GET /metrics`
//! (another method: 405).
//! The key and the database URL are never part of them.

use std::fmt::{Display, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::error::FeederError;

/// Every metric's name starts with it.
const PREFIX: &str = "tradebars_feeder_";
/// The Prometheus text exposition format, for every answer of the endpoint.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[derive(Debug, Default)]
pub struct Metrics {
    pub trades_received: AtomicU64,
    pub trades_written: AtomicU64,
    pub trades_already_staged: AtomicU64,
    pub batches_written: AtomicU64,
    pub reconnects: AtomicU64,
    pub gateway_errors: AtomicU64,
    pub database_errors: AtomicU64,
    pub rollups: AtomicU64,
    pub rollup_failures: AtomicU64,
    pub trades_rolled_up: AtomicU64,
    pub trades_rejected: AtomicU64,
    pub last_ts_event: AtomicI64,
    pub last_ts_recv: AtomicI64,
    /// `trades_written` as it stood when the last successful rollup started: those are in bars.
    pub written_in_bars: AtomicU64,
    /// Since when (wall clock, ns) trades written wait for a rollup; 0 when none waits.
    pub waiting_since_ns: AtomicI64,
    /// 1 while this feeder's session holds the single-instance lock (checked in pg_locks
    /// with every rollup), else 0.
    pub lock_held: AtomicI64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Notes at `now_ns` whether written trades wait for a rollup (the rollup schedule calls it
    /// on every tick, so the wait is known to within one rollup interval).
    pub fn note_waiting(&self, now_ns: i64) {
        if Self::get(&self.trades_written) > self.written_in_bars.load(Ordering::Relaxed) {
            let _ = self.waiting_since_ns.compare_exchange(
                0,
                now_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A rollup that started when `written` trades had been written succeeded at `now_ns`.
    pub fn rolled_up_through(&self, written: u64, now_ns: i64) {
        self.written_in_bars.fetch_max(written, Ordering::Relaxed);
        self.waiting_since_ns.store(0, Ordering::Relaxed);
        // trades written while it ran wait for the next one
        self.note_waiting(now_ns);
    }

    /// The Prometheus text exposition of every metric; `now_ns` gives the lag.
    pub fn render(&self, now_ns: i64) -> String {
        let mut out = String::new();
        for (name, help, counter) in self.counters() {
            push_metric(&mut out, name, help, "counter", Self::get(counter));
        }
        push_metric(
            &mut out,
            "last_event_seconds",
            "Event time of the last trade written",
            "gauge",
            self.last_ts_event.load(Ordering::Relaxed) as f64 / 1e9,
        );
        push_metric(
            &mut out,
            "lag_seconds",
            "Time since the receipt of the last trade written",
            "gauge",
            self.lag_seconds(now_ns),
        );
        push_metric(
            &mut out,
            "bar_lag_seconds",
            "How long the oldest trade written but not yet in bars has waited for a rollup (0 when bars are caught up)",
            "gauge",
            self.bar_lag_seconds(now_ns),
        );
        push_metric(
            &mut out,
            "lock_held",
            "1 while this feeder holds the single-instance lock of its database",
            "gauge",
            self.lock_held.load(Ordering::Relaxed),
        );
        out
    }

    /// Every counter: its name after the prefix, its help, its value.
    fn counters(&self) -> [(&'static str, &'static str, &AtomicU64); 11] {
        [
            ("trades_received_total", "Trades read from the source", &self.trades_received),
            ("trades_written_total", "Trades committed to staging", &self.trades_written),
            (
                "trades_already_staged_total",
                "Replayed trades skipped because they were staged before a reconnect",
                &self.trades_already_staged,
            ),
            ("batches_written_total", "Batches committed to staging", &self.batches_written),
            (
                "reconnects_total",
                "Reconnections to the gateway or the database",
                &self.reconnects,
            ),
            ("gateway_errors_total", "Errors from the gateway", &self.gateway_errors),
            ("database_errors_total", "Errors from PostgreSQL", &self.database_errors),
            ("rollups_total", "bars_rollup() calls completed", &self.rollups),
            ("rollup_failures_total", "bars_rollup() calls that failed", &self.rollup_failures),
            (
                "trades_rolled_up_total",
                "Trades bars_rollup() counted into bars",
                &self.trades_rolled_up,
            ),
            (
                "trades_rejected_total",
                "Trades bars_rollup() moved to trades_rejected (no price, no size, no symbol, implausible time)",
                &self.trades_rejected,
            ),
        ]
    }

    /// Seconds since the receipt of the last trade written; 0 before the first.
    fn lag_seconds(&self, now_ns: i64) -> f64 {
        let last_recv = self.last_ts_recv.load(Ordering::Relaxed);
        if last_recv > 0 {
            (now_ns - last_recv) as f64 / 1e9
        } else {
            0.0
        }
    }

    /// Seconds written trades have waited for a rollup; 0 when none waits.
    fn bar_lag_seconds(&self, now_ns: i64) -> f64 {
        let waiting_since = self.waiting_since_ns.load(Ordering::Relaxed);
        if waiting_since > 0 {
            (now_ns - waiting_since).max(0) as f64 / 1e9
        } else {
            0.0
        }
    }
}

/// One metric in the text exposition format: its HELP and TYPE lines, then its sample.
fn push_metric(out: &mut String, name: &str, help: &str, kind: &str, value: impl Display) {
    // writing to a String cannot fail
    let _ = write!(
        out,
        "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}\n{PREFIX}{name} {value}\n"
    );
}

pub fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// Serves the endpoint from a task of its own, for as long as the runtime runs; an error
/// binding `addr` is returned before anything is served.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), FeederError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| FeederError::Usage(format!("--metrics-addr {addr}: {e}")))?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics and /health");
    tokio::spawn(async move {
        // axum::serve only returns on a listener error, which it already retries itself
        let _ = axum::serve(listener, router(metrics)).await;
    });
    Ok(())
}

/// `GET` (and `HEAD`) `/metrics` and `/health`; another method there is 405 with the methods
/// allowed, another path 404.
fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page).fallback(not_allowed))
        .route("/health", get(health).fallback(not_allowed))
        .fallback(not_found)
        .with_state(metrics)
}

async fn not_allowed() -> Response {
    let mut answer = plain_text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: GET or HEAD\n".to_string(),
    );
    answer
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    answer
}

async fn metrics_page(State(metrics): State<Arc<Metrics>>) -> Response {
    plain_text(StatusCode::OK, metrics.render(now_ns()))
}

async fn health() -> Response {
    plain_text(StatusCode::OK, "ok\n".to_string())
}

async fn not_found() -> Response {
    plain_text(StatusCode::NOT_FOUND, "not found\n".to_string())
}

/// Every answer is Prometheus text, and closes its connection as the endpoint always did (a
/// client that reads to the end of the stream gets the whole answer).
fn plain_text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.trades_written, 42);
        m.last_ts_recv.store(1_000_000_000, Ordering::Relaxed);
        let text = m.render(3_500_000_000);
        assert!(text.contains("tradebars_feeder_trades_written_total 42\n"));
        assert!(text.contains("# TYPE tradebars_feeder_reconnects_total counter\n"));
        assert!(text.contains("tradebars_feeder_lag_seconds 2.5\n"));
        assert!(text.contains("tradebars_feeder_bar_lag_seconds 0\n"));
        assert!(text.contains("tradebars_feeder_lock_held 0\n"));
        assert!(text.contains("tradebars_feeder_trades_rejected_total 0\n"));
    }

    /// Every metric name the shipped alert rules and dashboard use is one the feeder serves.
    #[test]
    fn the_deploy_files_use_the_real_metric_names() {
        let served = Metrics::default().render(0);
        let files = [
            include_str!("../../deploy/prometheus/tradebars-alerts.yml"),
            include_str!("../../deploy/grafana/tradebars-dashboard.json"),
        ];
        let mut used = std::collections::BTreeSet::new();
        for text in files {
            for (i, _) in text.match_indices("tradebars_feeder_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
        assert!(used.len() >= 10, "{used:?}");
        for name in &used {
            assert!(
                served.contains(&format!("\n{name} ")),
                "{name} is used in deploy/ but the feeder does not serve it"
            );
        }
    }

    #[test]
    fn bar_lag_is_how_long_written_trades_wait_for_a_rollup() {
        let m = Metrics::default();
        m.lock_held.store(1, Ordering::Relaxed);
        Metrics::add(&m.rollup_failures, 2);
        m.note_waiting(1_000_000_000);
        assert_eq!(
            m.waiting_since_ns.load(Ordering::Relaxed),
            0,
            "nothing written yet"
        );
        Metrics::add(&m.trades_written, 100);
        m.note_waiting(2_000_000_000);
        m.note_waiting(3_000_000_000); // still waiting since 2 s
        let text = m.render(4_500_000_000);
        assert!(
            text.contains("tradebars_feeder_bar_lag_seconds 2.5\n"),
            "{text}"
        );
        assert!(text.contains("tradebars_feeder_lock_held 1\n"));
        assert!(text.contains("tradebars_feeder_rollup_failures_total 2\n"));
        // a rollup that started at 100 written trades: caught up
        m.rolled_up_through(100, 5_000_000_000);
        assert!(m
            .render(6_000_000_000)
            .contains("tradebars_feeder_bar_lag_seconds 0\n"));
        // trades written while a rollup ran wait from its end
        Metrics::add(&m.trades_written, 50);
        m.rolled_up_through(120, 7_000_000_000);
        assert!(m
            .render(8_000_000_000)
            .contains("tradebars_feeder_bar_lag_seconds 1\n"));
    }

    /// The whole exposition of a state where every metric differs, as the endpoint served it
    /// before render() was split up: the split must not change a byte of it.
    #[test]
    fn the_exposition_of_a_fixed_state_is_unchanged() {
        let m = Metrics::default();
        let counters = [
            &m.trades_received,
            &m.trades_written,
            &m.trades_already_staged,
            &m.batches_written,
            &m.reconnects,
            &m.gateway_errors,
            &m.database_errors,
            &m.rollups,
            &m.rollup_failures,
            &m.trades_rolled_up,
            &m.trades_rejected,
        ];
        for (n, counter) in (1..).zip(counters) {
            Metrics::add(counter, n);
        }
        m.last_ts_event
            .store(1_761_316_200_123_456_789, Ordering::Relaxed);
        m.last_ts_recv
            .store(1_761_316_200_500_000_000, Ordering::Relaxed);
        m.waiting_since_ns
            .store(1_761_316_199_000_000_000, Ordering::Relaxed);
        m.lock_held.store(1, Ordering::Relaxed);
        assert_eq!(m.render(1_761_316_201_250_000_000), EXPOSITION);
    }

    /// A raw HTTP/1.1 exchange that reads to the end of the stream, as the end-to-end tests
    /// and simple scrapers do: the endpoint closes the connection after its answer.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("the endpoint closes the connection")
        .expect("response");
        response
    }

    #[tokio::test]
    async fn the_endpoint_answers_metrics_health_and_404_in_prometheus_text() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let metrics = Arc::new(Metrics::default());
        Metrics::add(&metrics.trades_written, 7);
        serve(addr, metrics.clone()).await.expect("serving");
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");

        let health = exchange(addr, &get("/health")).await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.contains("content-type: text/plain; version=0.0.4\r\n"));
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

        let page = exchange(addr, &get("/metrics")).await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("content-type: text/plain; version=0.0.4\r\n"));
        let body = page.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert!(body.starts_with("# HELP tradebars_feeder_trades_received_total "));
        assert!(body.contains("\ntradebars_feeder_trades_written_total 7\n"));
        assert!(body.ends_with("tradebars_feeder_lock_held 0\n"), "{body}");

        let missing = exchange(addr, &get("/nowhere")).await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        assert!(missing.ends_with("\r\n\r\nnot found\n"), "{missing}");

        let posted = exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(
            posted.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{posted}"
        );
        assert!(posted.contains("allow: GET, HEAD\r\n"), "{posted}");
        assert!(!posted.contains("tradebars_feeder_"), "{posted}");

        let taken = serve(addr, metrics)
            .await
            .expect_err("the address is taken");
        assert!(
            taken
                .to_string()
                .starts_with(&format!("--metrics-addr {addr}: ")),
            "{taken}"
        );
    }

    const EXPOSITION: &str = "\
# HELP tradebars_feeder_trades_received_total Trades read from the source
# TYPE tradebars_feeder_trades_received_total counter
tradebars_feeder_trades_received_total 1
# HELP tradebars_feeder_trades_written_total Trades committed to staging
# TYPE tradebars_feeder_trades_written_total counter
tradebars_feeder_trades_written_total 2
# HELP tradebars_feeder_trades_already_staged_total Replayed trades skipped because they were staged before a reconnect
# TYPE tradebars_feeder_trades_already_staged_total counter
tradebars_feeder_trades_already_staged_total 3
# HELP tradebars_feeder_batches_written_total Batches committed to staging
# TYPE tradebars_feeder_batches_written_total counter
tradebars_feeder_batches_written_total 4
# HELP tradebars_feeder_reconnects_total Reconnections to the gateway or the database
# TYPE tradebars_feeder_reconnects_total counter
tradebars_feeder_reconnects_total 5
# HELP tradebars_feeder_gateway_errors_total Errors from the gateway
# TYPE tradebars_feeder_gateway_errors_total counter
tradebars_feeder_gateway_errors_total 6
# HELP tradebars_feeder_database_errors_total Errors from PostgreSQL
# TYPE tradebars_feeder_database_errors_total counter
tradebars_feeder_database_errors_total 7
# HELP tradebars_feeder_rollups_total bars_rollup() calls completed
# TYPE tradebars_feeder_rollups_total counter
tradebars_feeder_rollups_total 8
# HELP tradebars_feeder_rollup_failures_total bars_rollup() calls that failed
# TYPE tradebars_feeder_rollup_failures_total counter
tradebars_feeder_rollup_failures_total 9
# HELP tradebars_feeder_trades_rolled_up_total Trades bars_rollup() counted into bars
# TYPE tradebars_feeder_trades_rolled_up_total counter
tradebars_feeder_trades_rolled_up_total 10
# HELP tradebars_feeder_trades_rejected_total Trades bars_rollup() moved to trades_rejected (no price, no size, no symbol, implausible time)
# TYPE tradebars_feeder_trades_rejected_total counter
tradebars_feeder_trades_rejected_total 11
# HELP tradebars_feeder_last_event_seconds Event time of the last trade written
# TYPE tradebars_feeder_last_event_seconds gauge
tradebars_feeder_last_event_seconds 1761316200.1234567
# HELP tradebars_feeder_lag_seconds Time since the receipt of the last trade written
# TYPE tradebars_feeder_lag_seconds gauge
tradebars_feeder_lag_seconds 0.75
# HELP tradebars_feeder_bar_lag_seconds How long the oldest trade written but not yet in bars has waited for a rollup (0 when bars are caught up)
# TYPE tradebars_feeder_bar_lag_seconds gauge
tradebars_feeder_bar_lag_seconds 2.25
# HELP tradebars_feeder_lock_held 1 while this feeder holds the single-instance lock of its database
# TYPE tradebars_feeder_lock_held gauge
tradebars_feeder_lock_held 1
";
}

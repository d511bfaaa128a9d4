//! Health and Prometheus metrics over a small HTTP endpoint: `GET /health`, `GET /metrics`.
//! The key and the database URL are never part of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::error::FeederError;

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
        let counters = [
            (
                "trades_received_total",
                "Trades read from the source",
                &self.trades_received,
            ),
            (
                "trades_written_total",
                "Trades committed to staging",
                &self.trades_written,
            ),
            (
                "trades_already_staged_total",
                "Replayed trades skipped because they were staged before a reconnect",
                &self.trades_already_staged,
            ),
            (
                "batches_written_total",
                "Batches committed to staging",
                &self.batches_written,
            ),
            (
                "reconnects_total",
                "Reconnections to the gateway or the database",
                &self.reconnects,
            ),
            (
                "gateway_errors_total",
                "Errors from the gateway",
                &self.gateway_errors,
            ),
            (
                "database_errors_total",
                "Errors from PostgreSQL",
                &self.database_errors,
            ),
            (
                "rollups_total",
                "bars_rollup() calls completed",
                &self.rollups,
            ),
            (
                "rollup_failures_total",
                "bars_rollup() calls that failed",
                &self.rollup_failures,
            ),
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
        ];
        let mut out = String::new();
        for (name, help, c) in counters {
            out.push_str(&format!(
                "# HELP tradebars_feeder_{name} {help}\n# TYPE tradebars_feeder_{name} counter\ntradebars_feeder_{name} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        let last_event = self.last_ts_event.load(Ordering::Relaxed);
        let last_recv = self.last_ts_recv.load(Ordering::Relaxed);
        out.push_str(&format!(
            "# HELP tradebars_feeder_last_event_seconds Event time of the last trade written\n\
             # TYPE tradebars_feeder_last_event_seconds gauge\n\
             tradebars_feeder_last_event_seconds {}\n",
            last_event as f64 / 1e9
        ));
        let lag = if last_recv > 0 {
            (now_ns - last_recv) as f64 / 1e9
        } else {
            0.0
        };
        out.push_str(&format!(
            "# HELP tradebars_feeder_lag_seconds Time since the receipt of the last trade written\n\
             # TYPE tradebars_feeder_lag_seconds gauge\n\
             tradebars_feeder_lag_seconds {lag}\n"
        ));
        let waiting_since = self.waiting_since_ns.load(Ordering::Relaxed);
        let bar_lag = if waiting_since > 0 {
            (now_ns - waiting_since).max(0) as f64 / 1e9
        } else {
            0.0
        };
        out.push_str(&format!(
            "# HELP tradebars_feeder_bar_lag_seconds How long the oldest trade written but not yet in bars has waited for a rollup (0 when bars are caught up)\n\
             # TYPE tradebars_feeder_bar_lag_seconds gauge\n\
             tradebars_feeder_bar_lag_seconds {bar_lag}\n"
        ));
        out.push_str(&format!(
            "# HELP tradebars_feeder_lock_held 1 while this feeder holds the single-instance lock of its database\n\
             # TYPE tradebars_feeder_lock_held gauge\n\
             tradebars_feeder_lock_held {}\n",
            self.lock_held.load(Ordering::Relaxed)
        ));
        out
    }
}

pub fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), FeederError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| FeederError::Usage(format!("--metrics-addr {addr}: {e}")))?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics and /health");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // The request line may come in pieces: read up to the end of the headers.
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&buf);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/metrics" => ("200 OK", metrics.render(now_ns())),
                    "/health" => ("200 OK", "ok\n".to_string()),
                    _ => ("404 Not Found", "not found\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
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
        m.last_ts_event.store(1_761_316_200_123_456_789, Ordering::Relaxed);
        m.last_ts_recv.store(1_761_316_200_500_000_000, Ordering::Relaxed);
        m.waiting_since_ns
            .store(1_761_316_199_000_000_000, Ordering::Relaxed);
        m.lock_held.store(1, Ordering::Relaxed);
        assert_eq!(m.render(1_761_316_201_250_000_000), EXPOSITION);
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

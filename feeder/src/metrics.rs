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
    pub last_ts_event: AtomicI64,
    pub last_ts_recv: AtomicI64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
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
        out
    }
}

fn now_ns() -> i64 {
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
    }
}

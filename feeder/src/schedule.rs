//! Calling `bars_rollup()` on an interval, on a connection of its own, so bars stay fresh
//! while the feeder writes; it also keeps the feeder's heartbeat in `feeder_status`, and once
//! an hour forgets trade identity older than its retention (`prune_trade_identity()`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::db;
use crate::error::describe_db_error;
use crate::metrics::Metrics;

/// How often the retention of trade identity is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub fn spawn(database_url: String, interval: Duration, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let client = match db::connect(&database_url, "tradebars-feeder rollup").await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "rollup: no database; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pruned: Option<Instant> = None;
            loop {
                tick.tick().await;
                if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    match client.query_one("SELECT prune_trade_identity()", &[]).await {
                        Ok(row) => {
                            tracing::debug!(rows = row.get::<_, i64>(0), "trade identity pruned")
                        }
                        Err(e) => {
                            tracing::warn!(error = %describe_db_error(&e), "pruning trade identity failed")
                        }
                    }
                    pruned = Some(Instant::now());
                }
                if let Err(e) = client.execute("SELECT bars_rollup()", &[]).await {
                    Metrics::add(&metrics.database_errors, 1);
                    tracing::warn!(error = %describe_db_error(&e), "rollup failed; reconnecting");
                    break;
                }
                Metrics::add(&metrics.rollups, 1);
                let heartbeat = client
                    .execute(
                        "UPDATE feeder_status SET last_seen = now(), trades_received = $1,
                             trades_written = $2, reconnects = $3 WHERE pid = $4",
                        &[
                            &(Metrics::get(&metrics.trades_received) as i64),
                            &(Metrics::get(&metrics.trades_written) as i64),
                            &(Metrics::get(&metrics.reconnects) as i64),
                            &i32::try_from(std::process::id()).unwrap_or(0),
                        ],
                    )
                    .await;
                if let Err(e) = heartbeat {
                    tracing::warn!(error = %describe_db_error(&e), "heartbeat failed");
                }
            }
        }
    })
}

//! Calling `bars_rollup()` after each commit of the live feed and at least once an interval,
//! on a connection of its own, so bars stay fresh while the feeder writes (commits that land
//! while a rollup runs are taken together by the next one, so rollups never queue up). It
//! also keeps the feeder's heartbeat in `feeder_status`, counts rolled-up and rejected trades
//! and failed rollups, checks that the feeder's lock is still held, and once an hour forgets
//! trade identity older than its retention (`prune_trade_identity()`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::backoff::Backoff;
use crate::db;
use crate::error::describe_db_error;
use crate::lock;
use crate::metrics::{now_ns, Metrics};
use crate::overlap::rollup_once;

/// How often the retention of trade identity is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often the lock is checked and the heartbeat written: after a rollup, at most this
/// often (rollups run after every commit, several a second while trades stream).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// First wait after the rollup's connection is lost, and the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_CEILING: Duration = Duration::from_secs(5);

/// Rollups after each `commits` notification, and every `interval` without one.
pub fn spawn(
    database_url: String,
    interval: Duration,
    commits: Arc<Notify>,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CEILING);
        loop {
            let client = match db::connect(&database_url, "tradebars-feeder rollup").await {
                Ok(c) => c,
                Err(e) => {
                    // The lock cannot be seen to be held; what is written waits.
                    metrics.lock_held.store(0, Ordering::Relaxed);
                    metrics.note_waiting(now_ns());
                    tracing::warn!(error = %e, "rollup: no database; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            // A rollup that fails at once again (a revoked grant, a missing function) must not
            // reconnect in a tight loop: the wait grows until a rollup succeeds.
            if Rollups::new(&client, &metrics)
                .run(interval, &commits)
                .await
            {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    })
}

/// The rollups of one connection, until a rollup fails.
struct Rollups<'a> {
    client: &'a Client,
    metrics: &'a Metrics,
    pruned: Option<Instant>,
    beaten: Option<Instant>,
}

impl<'a> Rollups<'a> {
    fn new(client: &'a Client, metrics: &'a Metrics) -> Self {
        Self {
            client,
            metrics,
            pruned: None,
            beaten: None,
        }
    }

    /// After each commit, or once `interval` passed without one: prune when due, roll up,
    /// and at most once a second check the lock and beat the heart. Returns when a rollup
    /// fails (the connection is opened again): whether one succeeded before.
    async fn run(mut self, interval: Duration, commits: &Notify) -> bool {
        let mut succeeded = false;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = commits.notified() => tick.reset(),
                _ = tick.tick() => {}
            }
            self.prune_when_due().await;
            self.metrics.note_waiting(now_ns());
            if !self.rollup().await {
                return succeeded;
            }
            succeeded = true;
            Metrics::add(&self.metrics.rollups, 1);
            if self.beaten.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
                self.check_lock().await;
                heartbeat(self.client, self.metrics).await;
                self.beaten = Some(Instant::now());
            }
        }
    }

    async fn prune_when_due(&mut self) {
        if self.pruned.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        match self
            .client
            .query_one("SELECT prune_trade_identity()", &[])
            .await
        {
            Ok(row) => tracing::debug!(rows = row.get::<_, i64>(0), "trade identity pruned"),
            Err(e) => {
                tracing::warn!(error = %describe_db_error(&e), "pruning trade identity failed")
            }
        }
        self.pruned = Some(Instant::now());
    }

    /// One `bars_rollup()`, counted; false when it failed.
    async fn rollup(&self) -> bool {
        let metrics = self.metrics;
        // Everything committed before this rollup starts is in bars after it.
        let written = Metrics::get(&metrics.trades_written);
        match rollup_once(self.client).await {
            Ok((trades, _bars, rejected)) => {
                Metrics::add(&metrics.trades_rolled_up, trades.max(0) as u64);
                Metrics::add(&metrics.trades_rejected, rejected.max(0) as u64);
                metrics.rolled_up_through(written, now_ns());
                true
            }
            Err(e) => {
                Metrics::add(&metrics.database_errors, 1);
                Metrics::add(&metrics.rollup_failures, 1);
                tracing::warn!(error = %e, "rollup failed; reconnecting");
                false
            }
        }
    }

    async fn check_lock(&self) {
        match lock::still_held(self.client).await {
            Ok(held) => self
                .metrics
                .lock_held
                .store(i64::from(held), Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %describe_db_error(&e), "cannot check the feeder lock")
            }
        }
    }
}

/// The feeder's heartbeat and counters in feeder_status: after rollups, at most once a
/// second, and once more as the feeder stops (so the counters it leaves are its last).
pub async fn heartbeat(client: &Client, metrics: &Metrics) {
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

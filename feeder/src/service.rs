//! The feeder as a service: a live source -> batches by size and time -> staging, a rollup on
//! an interval, reconnects with backoff to the gateway and to PostgreSQL, and a clean stop on
//! SIGTERM or SIGINT (flush, roll up, release the lock, exit 0).
//!
//! Nothing is kept only in memory: a batch is either committed together with the stream
//! position it reaches, or dropped and read again from the gateway after reconnecting at the
//! committed position. So a failure anywhere loses nothing and stages nothing twice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_postgres::Client;

use crate::coverage;
use crate::db;
use crate::error::FeederError;
use crate::identity::{Identity, NS_PER_MINUTE};
use crate::lock;
use crate::metrics::Metrics;
use crate::schedule;
use crate::sink;
use crate::source::live::{LiveSource, LiveSpec, Step};

#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub database_url: String,
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub rollup_interval: Duration,
    pub standby: bool,
    pub metrics_addr: Option<SocketAddr>,
}

/// Trades read but not yet committed, with the stream position they reach.
struct Batch {
    rows: BytesMut,
    trades: u64,
    last_ts_event: i64,
    /// The latest ts_recv read (staged or already counted).
    last_ts_recv: i64,
    started: Option<Instant>,
}

impl Batch {
    fn new() -> Self {
        Self {
            rows: BytesMut::with_capacity(1 << 20),
            trades: 0,
            last_ts_event: 0,
            last_ts_recv: 0,
            started: None,
        }
    }

    fn add(&mut self, staged: u32, ts_event: u64, ts_recv: u64) {
        self.last_ts_recv = self
            .last_ts_recv
            .max(i64::try_from(ts_recv).unwrap_or(i64::MAX));
        if staged == 0 {
            return;
        }
        self.last_ts_event = self
            .last_ts_event
            .max(i64::try_from(ts_event).unwrap_or(-1));
        self.trades += u64::from(staged);
        self.started.get_or_insert_with(Instant::now);
    }
}

/// Where a stream stands for these symbols: the latest ts_recv staged for them, if any
/// (everything received before it is staged, see `flush`).
async fn position(client: &Client, spec: &LiveSpec) -> Result<Option<i64>, FeederError> {
    sink::live_position(client, &spec.dataset, &spec.position_keys()).await
}

/// Where a (re)subscription starts: `margin` before the position, or now (no replay) when
/// nothing was staged for these symbols.
fn replay_start(spec: &LiveSpec, position: Option<i64>) -> Option<i64> {
    let margin = i64::try_from(spec.replay_margin.as_nanos()).unwrap_or(i64::MAX);
    position.map(|p| p.saturating_sub(margin))
}

/// The trade identity a (re)subscription meets: what is staged from its replay start on.
/// Trades received before the position are taken as counted without a look: all of them
/// were staged, and the replay (which starts by event time) may deliver only part of a
/// group of trades sharing such a ts_recv, which could not be told apart from the stored
/// part where its trades are identical.
async fn identity_from(
    client: &Client,
    spec: &LiveSpec,
    position: Option<i64>,
) -> Result<Identity, FeederError> {
    // Without a position the stream starts at the live edge; what a backfill staged of the
    // last day (as far back as intraday replay reaches) may still meet it.
    let from = replay_start(spec, position).unwrap_or_else(|| {
        let day_ago = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        i64::try_from(day_ago.unix_timestamp_nanos()).unwrap_or(0)
    });
    let spans = coverage::load(client, from - NS_PER_MINUTE, None).await?;
    let horizon = coverage::horizon(client).await?;
    let skip_before = horizon.max(position.unwrap_or(i64::MIN));
    Ok(Identity::new(&spec.source_id(), spans).skipping_before(skip_before))
}

/// Completes at SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: flushing, rolling up, releasing the lock");
        set.store(true, Ordering::SeqCst);
    });
    flag
}

/// Commits `batch` with what it adds to trade identity and the stream position it reaches.
async fn flush(
    client: &mut Client,
    spec: &LiveSpec,
    batch: &mut Batch,
    identity: &mut Identity,
    metrics: &Metrics,
) -> Result<(), FeederError> {
    let changes = identity
        .take_changes()
        .map_err(|e| FeederError::identity("live stream", e))?;
    if batch.trades == 0 && changes.insert.is_empty() {
        return Ok(());
    }
    // Not past a group still held for matching: a restart must replay it.
    let position = match identity.earliest_held() {
        Some(held) => batch.last_ts_recv.min(held - 1),
        None => batch.last_ts_recv,
    };
    let rows = batch.rows.split().freeze();
    sink::write_batch(
        client,
        &sink::Batch {
            source: &spec.source_id(),
            dataset: &spec.dataset,
            symbols: &spec.position_keys(),
            rows,
            trades: batch.trades as i64,
            last_ts_event: batch.last_ts_event,
            position,
            changes: &changes,
        },
    )
    .await?;
    Metrics::add(&metrics.trades_written, batch.trades);
    Metrics::add(&metrics.batches_written, 1);
    metrics
        .last_ts_event
        .fetch_max(batch.last_ts_event, Ordering::Relaxed);
    metrics.last_ts_recv.store(position, Ordering::Relaxed);
    // Stretches a minute behind the stream are never met again in this session.
    identity.forget_before(position.div_euclid(NS_PER_MINUTE) - 1);
    *batch = Batch::new();
    Ok(())
}

async fn until_stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sleep_unless_stopping(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
    }
}

pub async fn run_live(spec: LiveSpec, opts: ServiceOptions) -> Result<(), FeederError> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let stop = shutdown_flag();
    let mut client = db::connect(&opts.database_url, "tradebars-feeder").await?;
    // Standing by can last: a stop request ends the wait.
    tokio::select! {
        taken = lock::acquire(&client, "live", opts.standby) => taken?,
        _ = until_stopped(&stop) => return Ok(()),
    }
    let rollups = schedule::spawn(
        opts.database_url.clone(),
        opts.rollup_interval,
        metrics.clone(),
    );
    let mut backoff = Duration::from_millis(100);
    let mut failure: Option<FeederError> = None;

    'session: while !stop.load(Ordering::SeqCst) {
        let position = position(&client, &spec).await?;
        let start = replay_start(&spec, position);
        let mut identity = identity_from(&client, &spec, position).await?;
        let mut source = match LiveSource::connect(&spec, start).await {
            Ok(s) => s,
            Err(e @ FeederError::Auth(_)) => {
                failure = Some(e);
                break;
            }
            Err(e) => {
                Metrics::add(&metrics.gateway_errors, 1);
                Metrics::add(&metrics.reconnects, 1);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the gateway");
                sleep_unless_stopping(backoff, &stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        tracing::info!(replay_from = ?start, "subscribed");
        let mut batch = Batch::new();
        let mut fresh_records = 0u64;
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let wait = batch
                .started
                .map(|t| opts.batch_interval.saturating_sub(t.elapsed()))
                .unwrap_or(opts.batch_interval);
            let skips = identity.skipped + identity.skipped_before_position;
            let step =
                tokio::time::timeout(wait, source.next_into(&mut batch.rows, &mut identity)).await;
            Metrics::add(
                &metrics.trades_already_staged,
                identity.skipped + identity.skipped_before_position - skips,
            );
            let ended = match step {
                Ok(Ok(Step::Trade {
                    staged,
                    ts_event,
                    ts_recv,
                })) => {
                    Metrics::add(&metrics.trades_received, 1);
                    batch.add(staged, ts_event, ts_recv);
                    fresh_records += 1;
                    None
                }
                Ok(Ok(Step::Released { staged })) => {
                    batch.add(staged, 0, 0);
                    None
                }
                Ok(Ok(Step::Other)) => None,
                Ok(Ok(Step::Closed)) => Some(FeederError::Gateway(
                    "the gateway closed the session".into(),
                )),
                Ok(Err(e @ FeederError::Identity { .. })) => {
                    failure = Some(e);
                    break 'session;
                }
                Ok(Err(e)) => Some(e),
                Err(_) => None, // time to flush what waits
            };
            let full = batch.trades as usize >= opts.batch_size;
            let due = batch
                .started
                .is_some_and(|t| t.elapsed() >= opts.batch_interval);
            if full || due || ended.is_some() {
                match flush(&mut client, &spec, &mut batch, &mut identity, &metrics).await {
                    Ok(()) => {}
                    Err(e @ FeederError::Identity { .. }) => {
                        failure = Some(e);
                        break 'session;
                    }
                    Err(e) => {
                        // Nothing of this batch is committed: reconnect to both, read it again.
                        Metrics::add(&metrics.database_errors, 1);
                        tracing::warn!(error = %e, "cannot write to PostgreSQL; reconnecting");
                        source.close().await;
                        client = reconnect_database(&opts, &stop, &metrics).await?;
                        continue 'session;
                    }
                }
            }
            if let Some(e) = ended {
                Metrics::add(&metrics.gateway_errors, 1);
                Metrics::add(&metrics.reconnects, 1);
                lock::report_error(&client, &e.to_string()).await;
                tracing::warn!(error = %e, retry_in = ?backoff, "gateway session ended; resuming");
                if fresh_records > 0 {
                    backoff = Duration::from_millis(100);
                }
                sleep_unless_stopping(backoff, &stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue 'session;
            }
        }
        // stopping: what is read is committed above only when due, so flush it now
        if let Err(e) = flush(&mut client, &spec, &mut batch, &mut identity, &metrics).await {
            tracing::warn!(error = %e, "could not flush on stop; the gateway replays it on restart");
        }
        source.close().await;
    }
    rollups.abort();
    if failure.is_none() {
        if let Err(e) = client.execute("SELECT bars_rollup()", &[]).await {
            tracing::warn!(error = %crate::error::describe_db_error(&e), "final rollup failed");
        }
    }
    lock::release(&client).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn reconnect_database(
    opts: &ServiceOptions,
    stop: &AtomicBool,
    metrics: &Metrics,
) -> Result<Client, FeederError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match db::connect(&opts.database_url, "tradebars-feeder").await {
            Ok(client) => {
                // The lock died with the old session: take it again, or step aside.
                tokio::select! {
                    taken = lock::acquire(&client, "live", opts.standby) => taken?,
                    _ = until_stopped(stop) => return Err(FeederError::Stopped("while standing by for another feeder".into())),
                }
                Metrics::add(&metrics.reconnects, 1);
                return Ok(client);
            }
            Err(_) if stop.load(Ordering::SeqCst) => {
                return Err(FeederError::Stopped(
                    "while PostgreSQL was unreachable".into(),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "PostgreSQL unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_staged_trades_and_the_furthest_receipt() {
        let mut b = Batch::new();
        b.add(0, 5, 10); // already counted: moves the position only
        assert_eq!(
            (b.trades, b.last_ts_recv, b.started.is_some()),
            (0, 10, false)
        );
        b.add(2, 6, 12);
        b.add(1, 4, 11);
        assert_eq!((b.trades, b.last_ts_event, b.last_ts_recv), (3, 6, 12));
        assert!(b.started.is_some());
    }
}

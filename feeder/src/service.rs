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

use crate::db;
use crate::error::FeederError;
use crate::lock;
use crate::metrics::Metrics;
use crate::schedule;
use crate::sink::{self, StreamPosition};
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
    position: StreamPosition,
    started: Option<Instant>,
}

impl Batch {
    fn new(position: StreamPosition) -> Self {
        Self {
            rows: BytesMut::with_capacity(1 << 20),
            trades: 0,
            last_ts_event: 0,
            position,
            started: None,
        }
    }

    fn add(&mut self, ts_event: u64, ts_recv: u64) {
        let ts_recv = i64::try_from(ts_recv).unwrap_or(i64::MAX);
        if ts_recv == self.position.last_ts_recv {
            self.position.at_last_ts_recv += 1;
        } else if ts_recv > self.position.last_ts_recv {
            self.position = StreamPosition {
                last_ts_recv: ts_recv,
                at_last_ts_recv: 1,
            };
        }
        self.last_ts_event = self
            .last_ts_event
            .max(i64::try_from(ts_event).unwrap_or(-1));
        self.trades += 1;
        self.started.get_or_insert_with(Instant::now);
    }
}

fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
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
        tracing::info!("stopping: flushing, rolling up, releasing the lock");
        set.store(true, Ordering::SeqCst);
    });
    flag
}

/// Commits `batch` with the stream position it reaches, and returns that position; an empty
/// batch commits nothing.
async fn flush(
    client: &mut Client,
    source: &str,
    batch: &mut Batch,
    metrics: &Metrics,
) -> Result<Option<StreamPosition>, FeederError> {
    if batch.trades == 0 {
        return Ok(None);
    }
    let rows = batch.rows.split().freeze();
    sink::write_batch(
        client,
        source,
        "live",
        rows,
        batch.trades as i64,
        batch.last_ts_event,
        batch.position,
    )
    .await?;
    let reached = batch.position;
    Metrics::add(&metrics.trades_written, batch.trades);
    Metrics::add(&metrics.batches_written, 1);
    metrics
        .last_ts_event
        .fetch_max(batch.last_ts_event, Ordering::Relaxed);
    metrics
        .last_ts_recv
        .store(reached.last_ts_recv, Ordering::Relaxed);
    *batch = Batch::new(reached);
    Ok(Some(reached))
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
    let source_id = spec.source_id();
    let mut committed = sink::stream_position(&client, &source_id).await?;
    let mut backoff = Duration::from_millis(100);
    let mut failure: Option<FeederError> = None;

    'session: while !stop.load(Ordering::SeqCst) {
        let mut source = match LiveSource::connect(&spec, committed).await {
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
        tracing::info!(resume = ?committed, "subscribed");
        let mut batch = Batch::new(committed.unwrap_or_default());
        let mut fresh_records = 0u64;
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let wait = batch
                .started
                .map(|t| opts.batch_interval.saturating_sub(t.elapsed()))
                .unwrap_or(opts.batch_interval);
            let step = tokio::time::timeout(wait, source.next_into(&mut batch.rows)).await;
            let ended = match step {
                Ok(Ok(Step::Trade { ts_event, ts_recv })) => {
                    Metrics::add(&metrics.trades_received, 1);
                    batch.add(ts_event, ts_recv);
                    fresh_records += 1;
                    None
                }
                Ok(Ok(Step::AlreadyStaged)) => {
                    Metrics::add(&metrics.trades_already_staged, 1);
                    None
                }
                Ok(Ok(Step::Other)) => None,
                Ok(Ok(Step::Closed)) => Some(FeederError::Gateway(
                    "the gateway closed the session".into(),
                )),
                Ok(Err(e)) => Some(e),
                Err(_) => None, // time to flush what waits
            };
            let full = batch.trades as usize >= opts.batch_size;
            let due = batch
                .started
                .is_some_and(|t| t.elapsed() >= opts.batch_interval);
            if full || due || ended.is_some() {
                match flush(&mut client, &source_id, &mut batch, &metrics).await {
                    Ok(Some(reached)) => committed = Some(reached),
                    Ok(None) => {}
                    Err(e) => {
                        // Nothing of this batch is committed: reconnect to both, read it again.
                        Metrics::add(&metrics.database_errors, 1);
                        tracing::warn!(error = %e, "cannot write to PostgreSQL; reconnecting");
                        source.close().await;
                        client = reconnect_database(&opts, &stop, &metrics).await?;
                        committed = sink::stream_position(&client, &source_id).await?;
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
        if let Err(e) = flush(&mut client, &source_id, &mut batch, &metrics).await {
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
                    _ = until_stopped(stop) => return Err(FeederError::Usage("stopped while standing by".into())),
                }
                Metrics::add(&metrics.reconnects, 1);
                return Ok(client);
            }
            Err(e) if stop.load(Ordering::SeqCst) => return Err(e),
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
    fn a_batch_tracks_the_stream_position_it_reaches() {
        let mut b = Batch::new(StreamPosition {
            last_ts_recv: 10,
            at_last_ts_recv: 1,
        });
        b.add(5, 10);
        assert_eq!(
            b.position,
            StreamPosition {
                last_ts_recv: 10,
                at_last_ts_recv: 2
            }
        );
        b.add(6, 12);
        b.add(4, 12);
        assert_eq!(
            b.position,
            StreamPosition {
                last_ts_recv: 12,
                at_last_ts_recv: 2
            }
        );
        assert_eq!((b.trades, b.last_ts_event), (3, 6));
    }
}

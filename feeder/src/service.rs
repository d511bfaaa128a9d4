//! The feeder as a service: a live source -> batches by size and time -> staging, a rollup
//! after each batch (and at least once an interval), reconnects with backoff to the gateway
//! and to PostgreSQL, and a clean stop on SIGTERM or SIGINT (flush, roll up, release the
//! lock, exit 0).
//!
//! Nothing is kept only in memory: a batch is either committed together with the stream
//! position it reaches, or dropped and read again from the gateway after reconnecting at the
//! committed position. So a failure anywhere loses nothing and stages nothing twice.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::coverage;
use crate::db;
use crate::error::FeederError;
use crate::identity::{Identity, NS_PER_MINUTE};
use crate::lock::{self, FeederLock};
use crate::metrics::Metrics;
use crate::schedule;
use crate::shutdown;
use crate::sink;
use crate::source::live::{LiveSource, LiveSpec, Step};

use crate::APP;
/// The wait after the gateway fails, doubled each time it fails again without a record.
const GATEWAY_FIRST: Duration = Duration::from_millis(100);
const GATEWAY_CEILING: Duration = Duration::from_secs(30);
/// The wait after PostgreSQL fails, doubled each time a reconnect fails.
const DATABASE_FIRST: Duration = Duration::from_millis(200);
const DATABASE_CEILING: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub database_url: String,
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub rollup_interval: Duration,
    /// The longest the rollup on a stop may take, waiting included.
    pub final_rollup_limit: Duration,
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
    /// How long the next read may wait: until the batch is due, or a whole interval.
    fn wait(&self, interval: Duration) -> Duration {
        self.started
            .map(|t| interval.saturating_sub(t.elapsed()))
            .unwrap_or(interval)
    }

    /// Full, or waited for long enough: time to commit.
    fn is_due(&self, opts: &ServiceOptions) -> bool {
        self.trades as usize >= opts.batch_size
            || self
                .started
                .is_some_and(|t| t.elapsed() >= opts.batch_interval)
    }

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

pub async fn run_live(spec: LiveSpec, opts: ServiceOptions) -> Result<(), FeederError> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let stop = shutdown::on_signal("stopping: flushing, rolling up, releasing the lock");
    let client = db::connect(&opts.database_url, APP).await?;
    // Standing by can last: a stop request ends the wait.
    let db = tokio::select! {
        taken = lock::acquire(client, "live", opts.standby) => taken?,
        _ = stop.cancelled() => return Ok(()),
    };
    let commits = Arc::new(Notify::new());
    let rollups = schedule::spawn(
        opts.database_url.clone(),
        opts.rollup_interval,
        commits.clone(),
        metrics.clone(),
    );
    let mut feed = Feed {
        spec,
        opts,
        metrics,
        stop,
        db,
        gateway_backoff: Backoff::new(GATEWAY_FIRST, GATEWAY_CEILING),
        commits,
    };
    let result = feed.run().await;
    rollups.abort();
    feed.finish(result).await
}

/// The live feed: one gateway session after another, each resumed where staging stands, on
/// the connection that holds the feeder lock.
struct Feed {
    spec: LiveSpec,
    opts: ServiceOptions,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    db: FeederLock,
    gateway_backoff: Backoff,
    /// Told of each commit: the rollups take it at once, for fresh bars.
    commits: Arc<Notify>,
}

/// How a gateway session ended, when the feed goes on (or stops cleanly).
enum SessionEnd {
    /// Asked to stop: what was read is flushed.
    Stopped,
    /// The gateway could not be reached, or refused the subscription.
    Unreachable(FeederError),
    /// The session ended (closed, an error); `fresh`: it delivered records first.
    Ended { error: FeederError, fresh: bool },
    /// PostgreSQL failed, transiently: nothing of the batch is committed; reconnect to both
    /// and read it again.
    Database(FeederError),
}

/// What one read from the gateway gave.
enum Read {
    Trade,
    /// Anything else, or nothing within the wait.
    Other,
    /// The session is over.
    Ended(FeederError),
    Stopped,
}

impl Feed {
    /// Sessions until stopped (Ok) or failed for good (Err).
    async fn run(&mut self) -> Result<(), FeederError> {
        while !self.stop.is_cancelled() {
            match self.session().await? {
                SessionEnd::Stopped => break,
                SessionEnd::Unreachable(e) => {
                    self.count_gateway_error();
                    let delay = self.gateway_backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the gateway");
                    shutdown::sleep(delay, &self.stop).await;
                }
                SessionEnd::Ended { error, fresh } => self.resume_after(error, fresh).await,
                SessionEnd::Database(e) => {
                    Metrics::add(&self.metrics.database_errors, 1);
                    tracing::warn!(error = %e, "cannot use PostgreSQL; reconnecting");
                    self.db = self.reconnect_database().await?;
                }
            }
        }
        Ok(())
    }

    /// One gateway session: from where staging stands, until it ends.
    async fn session(&mut self) -> Result<SessionEnd, FeederError> {
        let (start, mut identity) = match self.resume_point().await {
            Ok(point) => point,
            Err(e) => return transient(e).map(SessionEnd::Database),
        };
        let mut source = match LiveSource::connect(&self.spec, start).await {
            Ok(s) => s,
            Err(e @ FeederError::Auth { .. }) => return Err(e),
            Err(e) => return Ok(SessionEnd::Unreachable(e)),
        };
        tracing::info!(replay_from = ?start, "subscribed");
        let end = self.stream(&mut source, &mut identity).await;
        // A session that ended by itself is gone: nothing to close.
        if matches!(end, Ok(SessionEnd::Stopped | SessionEnd::Database(_))) {
            source.close().await;
        }
        end
    }

    /// Where a (re)subscription starts, and the trade identity it meets there.
    async fn resume_point(&self) -> Result<(Option<i64>, Identity), FeederError> {
        let position = position(&self.db, &self.spec).await?;
        let identity = identity_from(&self.db, &self.spec, position).await?;
        Ok((replay_start(&self.spec, position), identity))
    }

    /// Reads and commits batches until the session ends, PostgreSQL fails or a stop.
    async fn stream(
        &mut self,
        source: &mut LiveSource,
        identity: &mut Identity,
    ) -> Result<SessionEnd, FeederError> {
        let mut batch = Batch::new();
        let mut fresh = false;
        loop {
            let read = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Read::Stopped,
                read = self.read(source, &mut batch, identity) => read?,
            };
            let ended = match read {
                Read::Stopped => return Ok(self.flush_on_stop(&mut batch, identity).await),
                Read::Trade => {
                    fresh = true;
                    None
                }
                Read::Other => {
                    if let Some(lost) = self.lock_lost().await {
                        return Ok(SessionEnd::Database(lost));
                    }
                    None
                }
                Read::Ended(e) => Some(e),
            };
            if batch.is_due(&self.opts) || ended.is_some() {
                if let Err(e) = self.commit(&mut batch, identity).await {
                    return transient(e).map(SessionEnd::Database);
                }
            }
            if let Some(error) = ended {
                return Ok(SessionEnd::Ended { error, fresh });
            }
        }
    }

    /// One read, waiting no longer than the batch may; a trade goes into `batch`.
    async fn read(
        &self,
        source: &mut LiveSource,
        batch: &mut Batch,
        identity: &mut Identity,
    ) -> Result<Read, FeederError> {
        let wait = batch.wait(self.opts.batch_interval);
        let skips = identity.skipped + identity.skipped_before_position;
        let step = tokio::time::timeout(wait, source.next_into(&mut batch.rows, identity)).await;
        Metrics::add(
            &self.metrics.trades_already_staged,
            identity.skipped + identity.skipped_before_position - skips,
        );
        Ok(match step {
            Ok(Ok(Step::Trade {
                staged,
                ts_event,
                ts_recv,
            })) => {
                Metrics::add(&self.metrics.trades_received, 1);
                batch.add(staged, ts_event, ts_recv);
                Read::Trade
            }
            Ok(Ok(Step::Released { staged })) => {
                batch.add(staged, 0, 0);
                Read::Other
            }
            Ok(Ok(Step::Other)) | Err(_) => Read::Other, // Err: time to flush what waits
            Ok(Ok(Step::Closed)) => {
                Read::Ended(FeederError::gateway("the gateway closed the session"))
            }
            Ok(Err(e @ FeederError::Identity { .. })) => return Err(e),
            Ok(Err(e)) => Read::Ended(e),
        })
    }

    /// The session holding the feeder lock is gone (PostgreSQL restarted, the connection
    /// dropped): seen while the feed is idle too, so the lock is taken again at once, not at
    /// the next batch (meanwhile a standby could take it, and the lock reads as not held).
    async fn lock_lost(&self) -> Option<FeederError> {
        if !self.db.is_closed() {
            return None;
        }
        let e = self.db.simple_query("").await.err()?;
        Some(FeederError::db("holding the feeder lock", e))
    }

    async fn commit(
        &mut self,
        batch: &mut Batch,
        identity: &mut Identity,
    ) -> Result<(), FeederError> {
        flush(&mut self.db, &self.spec, batch, identity, &self.metrics).await?;
        // Waiting for bars from now on, also while a rollup is blocked or failing.
        self.metrics.note_waiting(crate::metrics::now_ns());
        self.commits.notify_one();
        Ok(())
    }

    /// Stopping: what is read is committed only when due, so it is committed now.
    async fn flush_on_stop(&mut self, batch: &mut Batch, identity: &mut Identity) -> SessionEnd {
        if let Err(e) = self.commit(batch, identity).await {
            tracing::warn!(error = %e, "could not flush on stop; the gateway replays it on restart");
        }
        SessionEnd::Stopped
    }

    /// After a session ended: noted where a DBA sees it, then a pause before resubscribing,
    /// from the first delay again when the session delivered records.
    async fn resume_after(&mut self, error: FeederError, fresh: bool) {
        self.count_gateway_error();
        lock::report_error(&self.db, &error.to_string()).await;
        if fresh {
            self.gateway_backoff.reset();
        }
        let delay = self.gateway_backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, "gateway session ended; resuming");
        shutdown::sleep(delay, &self.stop).await;
    }

    fn count_gateway_error(&self) {
        Metrics::add(&self.metrics.gateway_errors, 1);
        Metrics::add(&self.metrics.reconnects, 1);
    }

    /// A new connection holding the feeder lock. The old lock died with its session: take it
    /// again, or stand by for whoever took it meanwhile.
    async fn reconnect_database(&self) -> Result<FeederLock, FeederError> {
        let mut backoff = Backoff::new(DATABASE_FIRST, DATABASE_CEILING);
        loop {
            let unreachable = || FeederError::Stopped("while PostgreSQL was unreachable".into());
            let connected = tokio::select! {
                connected = db::connect(&self.opts.database_url, APP) => connected,
                _ = self.stop.cancelled() => return Err(unreachable()),
            };
            let taken = match connected {
                Ok(client) => tokio::select! {
                    taken = lock::acquire(client, "live", self.opts.standby) => taken,
                    _ = self.stop.cancelled() => return Err(FeederError::Stopped("while standing by for another feeder".into())),
                },
                Err(e) => Err(e),
            };
            match taken {
                Ok(db) => {
                    Metrics::add(&self.metrics.reconnects, 1);
                    return Ok(db);
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "PostgreSQL unreachable");
                    if !shutdown::sleep(delay, &self.stop).await {
                        return Err(unreachable());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The last rollup (unless the feed failed), the lock given back, and the feed's result.
    async fn finish(self, result: Result<(), FeederError>) -> Result<(), FeederError> {
        if result.is_ok() {
            if let Err(e) = self.final_rollup().await {
                tracing::warn!(error = %e, "final rollup failed; its trades stay staged for the next rollup");
            }
            schedule::heartbeat(&self.db, &self.metrics).await;
        }
        self.db.release().await;
        result
    }

    /// One rollup within `final_rollup_limit`, as the server counts it: a rollup another
    /// session holds up must not outlast the service manager's stop timeout.
    async fn final_rollup(&self) -> Result<(i64, i64, i64), FeederError> {
        let limit = self.opts.final_rollup_limit.as_millis();
        self.db
            .batch_execute(&format!("SET statement_timeout = {limit}"))
            .await
            .map_err(|e| FeederError::db("limiting the final rollup", e))?;
        crate::overlap::rollup_once(&self.db).await
    }
}

/// A transient failure is the feed's to ride out; any other ends it.
fn transient(e: FeederError) -> Result<FeederError, FeederError> {
    if e.is_transient() {
        Ok(e)
    } else {
        Err(e)
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

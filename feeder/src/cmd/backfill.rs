//! `tradebars-feeder backfill`: Databento's historical API in chunks, each staged whole with
//! its ledger entry (trades), or merged whole into price_bars (official minute bars).

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::cmd::{load_holding_the_lock, overlap_suffix, progress_bar};
use crate::config::BackfillArgs;
use crate::error::FeederError;
use crate::overlap::Pieces;
use crate::sink;
use crate::source::historical::{fetch_chunk, fetch_official_chunk, BackfillSpec};
use crate::source::official::OFFICIAL_SCHEMA;
use crate::source::Summary;

type Chunk = (time::OffsetDateTime, time::OffsetDateTime);

pub async fn run(args: BackfillArgs) -> Result<(), FeederError> {
    let spec = spec(&args)?;
    let force = args.load.force;
    load_holding_the_lock(&args.load, "backfill", async |db, pieces| {
        if spec.schema == OFFICIAL_SCHEMA {
            backfill_official(db, &spec).await
        } else {
            backfill_trades(db, &spec, force, pieces).await
        }
    })
    .await
}

/// The request, once the range makes sense: nothing is fetched (it costs money) for a range
/// that cannot hold data.
fn spec(args: &BackfillArgs) -> Result<BackfillSpec, FeederError> {
    if args.start >= args.end {
        return Err(FeederError::Usage("--start must be before --end".into()));
    }
    if args.end > time::OffsetDateTime::now_utc() + time::Duration::days(1) {
        return Err(FeederError::Usage(format!(
            "--end {} is in the future: the historical API has nothing there yet",
            args.end
        )));
    }
    Ok(BackfillSpec {
        key: args.source.api_key()?,
        symbols: args.source.symbol_list(),
        dataset: args.source.dataset.clone(),
        schema: args.source.schema,
        start: args.start,
        end: args.end,
        chunk: time::Duration::minutes(i64::from(args.chunk_minutes.max(1))),
        base_url: args.historical_url.clone(),
    })
}

/// What the chunks of a trades backfill did.
#[derive(Default)]
struct Staged {
    chunks: u64,
    skipped_chunks: u64,
    trades: u64,
    /// Only its overlap counts, for the summary.
    already: Summary,
}

/// Every chunk not staged before, in order, until one fails; then the summary, either way.
async fn backfill_trades(
    client: &mut Client,
    spec: &BackfillSpec,
    force: bool,
    pieces: &Pieces,
) -> Result<(), FeederError> {
    let chunks = spec.chunks();
    let bar = progress_bar(chunks.len() as u64, "pos");
    bar.set_message("backfill");
    let mut staged = Staged::default();
    let mut result = Ok(());
    for chunk in chunks {
        if already_staged(client, spec, chunk).await? {
            staged.skipped_chunks += 1;
            bar.inc(1);
            continue;
        }
        if let Err(e) = stage_chunk(client, spec, chunk, force, pieces, &mut staged).await {
            result = Err(e);
            break;
        }
        bar.inc(1);
        if let Some(trades) = pieces.rolled_up() {
            bar.set_message(format!("backfill ({trades} trades rolled up)"));
        }
    }
    bar.finish_and_clear();
    println!(
        "backfill {} {} {} to {}: {} chunks staged ({} trades{}), {} already staged",
        spec.dataset,
        spec.schema,
        spec.start,
        spec.end,
        staged.chunks,
        staged.trades,
        overlap_suffix(&staged.already),
        staged.skipped_chunks
    );
    result
}

/// Whether this very request staged `chunk` before: it is not fetched again (it costs money).
async fn already_staged(
    client: &Client,
    spec: &BackfillSpec,
    chunk: Chunk,
) -> Result<bool, FeederError> {
    let done = client
        .query_opt(
            "SELECT 1 FROM ingest_ledger WHERE source = $1",
            &[&spec.source_id(chunk.0, chunk.1)],
        )
        .await
        .map_err(|e| FeederError::db("reading ingest_ledger", e))?;
    Ok(done.is_some())
}

/// One chunk, fetched and staged whole, counted into `staged`.
async fn stage_chunk(
    client: &mut Client,
    spec: &BackfillSpec,
    chunk: Chunk,
    force: bool,
    pieces: &Pieces,
    staged: &mut Staged,
) -> Result<(), FeederError> {
    let source = spec.source_id(chunk.0, chunk.1);
    let label = format!("backfill {} {} to {}", spec.dataset, chunk.0, chunk.1);
    let load = sink::Load {
        kind: "backfill",
        label: &label,
        from: i64::try_from(chunk.0.unix_timestamp_nanos()).unwrap_or(0),
        to: i64::try_from(chunk.1.unix_timestamp_nanos()).ok(),
        force,
        pieces,
    };
    let s = sink::load_source(client, &load, |identity| {
        let (tx, rx) = mpsc::channel(8);
        let (fetch_spec, source) = (spec.clone(), source.clone());
        let fetch = tokio::spawn(async move {
            let mut hist = fetch_spec.client()?;
            fetch_chunk(&mut hist, &fetch_spec, chunk, identity, tx).await
        });
        let end = async move {
            let (summary, changes) = fetch.await.map_err(fetch_task_failed)??;
            Ok(sink::SourceEnd {
                summary,
                changes,
                ledger_id: source,
            })
        };
        (rx, end)
    })
    .await?;
    staged.chunks += 1;
    staged.trades += s.staged;
    staged.already.already_counted += s.already_counted;
    for (name, n) in s.overlaps {
        *staged.already.overlaps.entry(name).or_default() += n;
    }
    Ok(())
}

/// The task fetching a chunk ended without an answer.
fn fetch_task_failed(e: tokio::task::JoinError) -> FeederError {
    FeederError::internal("Databento gateway: fetch task", e)
}

/// What the chunks of an official bars backfill did.
#[derive(Default)]
struct Merged {
    read: u64,
    written: i64,
    rejected: i64,
    unmapped: u64,
}

/// A backfill of Databento's official minute bars: each chunk merged into price_bars whole,
/// in one transaction (official_bars_merge()); a chunk fetched again replaces its bars with
/// the same bars, so a rerun after an interruption needs no ledger.
async fn backfill_official(client: &mut Client, spec: &BackfillSpec) -> Result<(), FeederError> {
    // What official_bars_merge() would refuse (the database's clock, price_bars not ready)
    // is refused before anything is fetched: a request costs money.
    let schema = OFFICIAL_SCHEMA.to_string();
    sink::check_official(client, &schema).await?;
    let chunks = spec.chunks();
    let bar = progress_bar(chunks.len() as u64, "pos");
    bar.set_message("backfill ohlcv-1m");
    let mut merged = Merged::default();
    for (n, chunk) in chunks.iter().enumerate() {
        if let Err(e) = merge_chunk(client, spec, &schema, *chunk, &mut merged).await {
            bar.finish_and_clear();
            println!(
                "backfill {} ohlcv-1m: chunk {} of {} ({} to {}) not loaded; the {n} before it are",
                spec.dataset,
                n + 1,
                chunks.len(),
                chunk.0,
                chunk.1
            );
            return Err(e);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "backfill {} ohlcv-1m {} to {}: {} chunks, {} bars read, {} official bars written to price_bars ({} without a symbol mapping, {} rejected in all)",
        spec.dataset,
        spec.start,
        spec.end,
        chunks.len(),
        merged.read,
        merged.written,
        merged.unmapped,
        merged.rejected
    );
    Ok(())
}

/// One chunk of official bars, fetched and merged in one transaction.
async fn merge_chunk(
    client: &mut Client,
    spec: &BackfillSpec,
    schema: &str,
    chunk: Chunk,
    merged: &mut Merged,
) -> Result<(), FeederError> {
    let (tx, rx) = mpsc::channel(8);
    let fetch_spec = spec.clone();
    let fetch = tokio::spawn(async move {
        let mut hist = fetch_spec.client()?;
        fetch_official_chunk(&mut hist, &fetch_spec, chunk, tx).await
    });
    let end = async move { fetch.await.map_err(fetch_task_failed)? };
    let (loaded, summary) = sink::load_official(client, schema, rx, end).await?;
    merged.read += summary.bars;
    merged.unmapped += summary.unmapped;
    merged.written += loaded.written;
    merged.rejected += loaded.rejected;
    Ok(())
}

//! Into staging by binary COPY, each write in one transaction with what it adds to trade
//! identity (`trade_coverage`): a file or a backfill chunk with its `ingest_ledger` entry,
//! staged whole or not at all (or, under `--rollup`, a large file in pieces, each whole), a
//! live batch together with the position it reaches. Which trades are new is decided by
//! trade identity (identity.rs), whatever source staged them.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};

use crate::copy;
use crate::coverage;
use crate::error::FeederError;
use crate::identity::{Changes, Identity};
use crate::overlap::Pieces;
use crate::source::Summary;
use tradebars_contract::internal;

/// What a source sends its load: staging rows in COPY format, or the end of a piece. At a
/// piece's end the rows sent before it are committed with what they add to trade identity,
/// so that a rollup can take them while the next piece is copied.
pub enum Staged {
    Rows(Bytes),
    PieceEnd(Changes),
}

/// The channel a source sends down: an `Err` aborts the piece being copied.
pub type StagedRx = mpsc::Receiver<Result<Staged, FeederError>>;

/// The staging table to COPY into, as the extension names it for this batch.
async fn staging_slot(tx: &Transaction<'_>) -> Result<String, FeederError> {
    let slot: String = tx
        .query_one("SELECT staging_slot()", &[])
        .await
        .map_err(|e| {
            FeederError::db(
                "asking for the staging table (is the tradebars extension installed?)",
                e,
            )
        })?
        .get(0);
    // Only ever one of the extension's two slots, whatever the function says.
    let table = slot.rsplit('.').next().unwrap_or("");
    if !tradebars_contract::STAGING_SLOTS.contains(&table) {
        return Err(FeederError::db_answer(
            "asking for the staging table",
            format!("unexpected staging table {slot}"),
        ));
    }
    Ok(slot)
}

/// COPYs `rows` (tuples in binary COPY format) into staging within `tx`. An `Err` item aborts
/// the COPY: dropping the sink cancels it, and the caller's transaction rolls back.
async fn copy_rows(
    tx: &Transaction<'_>,
    rows: impl Stream<Item = Result<Bytes, FeederError>>,
) -> Result<u64, FeederError> {
    let slot = staging_slot(tx).await?;
    let statement = format!("COPY {slot} ({}) FROM STDIN (FORMAT binary)", copy::COLUMNS);
    copy_into(tx, &statement, rows).await
}

/// COPYs the rows `chunks` delivers into staging within `tx`, up to the end of a piece
/// (returned with what it adds to trade identity) or of the source (`None`).
async fn copy_piece(
    tx: &Transaction<'_>,
    chunks: &mut StagedRx,
) -> Result<(u64, Option<Changes>), FeederError> {
    let mut piece_end = None;
    let rows = futures_util::stream::unfold((chunks, &mut piece_end), |(rx, end)| async move {
        match rx.recv().await? {
            Ok(Staged::Rows(rows)) => Some((Ok(rows), (rx, end))),
            Ok(Staged::PieceEnd(changes)) => {
                *end = Some(changes);
                None
            }
            Err(e) => Some((Err(e), (rx, end))),
        }
    });
    let copied = copy_rows(tx, rows).await?;
    Ok((copied, piece_end))
}

/// Runs `statement` (a binary COPY ... FROM STDIN) with `rows`, header and trailer added.
async fn copy_into(
    tx: &Transaction<'_>,
    statement: &str,
    rows: impl Stream<Item = Result<Bytes, FeederError>>,
) -> Result<u64, FeederError> {
    let sink = tx
        .copy_in::<_, Bytes>(statement)
        .await
        .map_err(|e| FeederError::db("starting COPY into staging", e))?;
    futures_util::pin_mut!(sink);
    futures_util::pin_mut!(rows);
    let mut header = BytesMut::new();
    copy::encode_header(&mut header);
    sink.send(header.freeze())
        .await
        .map_err(|e| FeederError::db("COPY into staging", e))?;
    while let Some(chunk) = rows.next().await {
        sink.send(chunk?)
            .await
            .map_err(|e| FeederError::db("COPY into staging", e))?;
    }
    let mut trailer = BytesMut::new();
    copy::encode_trailer(&mut trailer);
    sink.send(trailer.freeze())
        .await
        .map_err(|e| FeederError::db("COPY into staging", e))?;
    sink.finish()
        .await
        .map_err(|e| FeederError::db("finishing COPY into staging", e))
}

/// A bounded source to load whole: a file, or a backfill chunk.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    /// 'file' or 'backfill', for the ledger.
    pub kind: &'a str,
    /// How the source is named in messages and in `trade_coverage`.
    pub label: &'a str,
    /// The ts_recv range its trades were requested for, in ns (`to`: exclusive; `None`: open).
    pub from: i64,
    pub to: Option<i64>,
    /// Load even where trade identity was pruned (trades there may count twice).
    pub force: bool,
    /// Told of every commit, so that `--rollup` rolls it up while the load goes on.
    pub pieces: &'a Pieces,
}

/// What a source read and what its load adds to trade identity, known once all of it is read.
pub struct SourceEnd {
    pub summary: Summary,
    pub changes: Changes,
    /// The source's name in the ingest ledger.
    pub ledger_id: String,
}

/// Stages the trades of one source that are not yet counted, in one transaction with what
/// they add to trade identity and the source's ledger entry. `start` receives the trade
/// identity the source meets and starts reading it: staging rows down the channel, an `Err`
/// there (a decode error, a source that disagrees with what is stored) aborts the COPY and
/// rolls the source back. A source that ends pieces (`Staged::PieceEnd`) is committed piece
/// by piece: an error then rolls back only the piece it meets, the pieces before it stay
/// staged, each trade in them counted once, and loading the source again stages the rest.
///
/// Identity is read for the range the source declares (a DBN file's metadata, a backfill
/// request). Where its trades turn out to lie beyond it, nothing is decided on that reading:
/// the load is rolled back and `start` is called once more, with identity read for the
/// range the trades really span.
pub async fn load_source<S, F>(
    client: &mut Client,
    load: &Load<'_>,
    mut start: S,
) -> Result<Summary, FeederError>
where
    S: FnMut(Identity) -> (StagedRx, F),
    F: std::future::Future<Output = Result<SourceEnd, FeederError>>,
{
    let mut staged = 0; // by this load, over its attempts: the pieces a first one committed
    match load_once(client, load, (load.from, load.to), &mut start, &mut staged).await {
        Err(FeederError::OutsideRange { first, last, .. }) => {
            tracing::warn!(
                "{}: its trades span ts_recv {} to {}, not the range it declares; reading trade identity for that range and loading it again",
                load.label,
                crate::identity::utc(&first),
                crate::identity::utc(&last)
            );
            let earlier = staged;
            let range = (first, Some(last.saturating_add(1)));
            let mut summary = load_once(client, load, range, &mut start, &mut staged).await?;
            summary.count_as_staged(load.label, earlier);
            Ok(summary)
        }
        other => other,
    }
}

/// One attempt of `load_source`, with trade identity read for `from..to` (ns). `staged`
/// counts the trades committed, over attempts.
async fn load_once<S, F>(
    client: &mut Client,
    load: &Load<'_>,
    (from, to): (i64, Option<i64>),
    start: &mut S,
    staged: &mut u64,
) -> Result<Summary, FeederError>
where
    S: FnMut(Identity) -> (StagedRx, F),
    F: std::future::Future<Output = Result<SourceEnd, FeederError>>,
{
    let before = *staged;
    let tx = begin(client).await?;
    if !load.force {
        if let Some(why) = coverage::refusal(&tx, from).await? {
            return Err(FeederError::Identity {
                origin: load.label.to_string(),
                msg: format!("{why}; --force loads it anyway"),
            });
        }
    }
    let spans = coverage::load(&tx, from, to).await?;
    let (first, last) = coverage::minutes(from, to);
    let (mut chunks, end) = start(Identity::new(load.label, spans).reading_minutes(first, last));
    let (mut rows, mut piece_end) = copy_piece(&tx, &mut chunks).await?;
    let (mut tx, mut pieces) = (tx, 1);
    while let Some(changes) = piece_end {
        // A piece: committed now, rolled up (under --rollup) while the next one is copied.
        coverage::store(&tx, &changes).await?;
        commit(tx, load).await?;
        *staged += std::mem::take(&mut rows);
        tx = begin(client).await?;
        (rows, piece_end) = copy_piece(&tx, &mut chunks).await?;
        pieces += 1;
    }
    let SourceEnd {
        mut summary,
        changes,
        ledger_id,
    } = end.await?;
    // A source that ends just as a piece does leaves its last transaction without trades (it
    // holds the ledger entry only): not a piece.
    summary.pieces = pieces - u64::from(rows == 0 && pieces > 1);
    coverage::store(&tx, &changes).await?;
    let entry = LedgerEntry {
        id: &ledger_id,
        kind: load.kind,
        rows: *staged + rows,
        // what this load's own earlier attempt committed is in `staged` already
        earlier: (summary.overlaps.get(load.label).copied().unwrap_or(0)).saturating_sub(before),
    };
    record_in_ledger(&tx, &entry, &summary).await?;
    commit(tx, load).await?;
    *staged += rows;
    Ok(summary)
}

/// A load's transaction, holding the identity lock.
async fn begin(client: &mut Client) -> Result<Transaction<'_>, FeederError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting the load", e))?;
    coverage::lock(&tx).await?;
    Ok(tx)
}

/// Commits a load's transaction and tells `--rollup` there is something to roll up.
async fn commit(tx: Transaction<'_>, load: &Load<'_>) -> Result<(), FeederError> {
    tx.commit()
        .await
        .map_err(|e| FeederError::db("committing the load", e))?;
    load.pieces.committed();
    Ok(())
}

/// What a load adds to its source's entry in `ingest_ledger`.
struct LedgerEntry<'a> {
    id: &'a str,
    kind: &'a str,
    /// Trades this load staged.
    rows: u64,
    /// Trades found staged by an earlier, unfinished load of the same source (killed between
    /// pieces): they belong to a new entry too.
    earlier: u64,
}

/// The source's entry in `ingest_ledger`: created with every trade staged from it, or, when
/// it was loaded whole before, added to (with nothing, when nothing was new).
async fn record_in_ledger(
    tx: &Transaction<'_>,
    entry: &LedgerEntry<'_>,
    summary: &Summary,
) -> Result<(), FeederError> {
    let rows = i64::try_from(entry.rows).unwrap_or(i64::MAX);
    let first = rows.saturating_add(i64::try_from(entry.earlier).unwrap_or(0));
    let last_ts_event = i64::try_from(summary.last_ts_event).unwrap_or(-1);
    tx.execute(
        "INSERT INTO ingest_ledger AS l (source, kind, position, trades, last_ts_event)
         VALUES ($1, $2, $5, $5, $4)
         ON CONFLICT (source) DO UPDATE SET position = l.position + $3, trades = l.trades + $3,
             last_ts_event = greatest(l.last_ts_event, $4), updated_at = now()",
        &[&entry.id, &entry.kind, &rows, &last_ts_event, &first],
    )
    .await
    .map_err(|e| FeederError::db("recording the load in ingest_ledger", e))?;
    Ok(())
}

/// What loading official bars did.
#[derive(Debug, Default, Clone, Copy)]
pub struct OfficialLoaded {
    pub written: i64,
    pub rejected: i64,
}

/// Loads Databento's official minute bars: COPY into `official_bars_staging` and
/// `official_bars_merge()`, in one transaction, so a file is loaded whole or not at all. A
/// bar already stored is replaced by the same bar: loading a file again changes nothing.
/// `end` completes once the source is read and says what it read; the load returns that too.
pub async fn load_official<F, T>(
    client: &mut Client,
    schema: &str,
    chunks: mpsc::Receiver<Result<Bytes, FeederError>>,
    end: F,
) -> Result<(OfficialLoaded, T), FeederError>
where
    F: std::future::Future<Output = Result<T, FeederError>>,
{
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting the load", e))?;
    let rows = futures_util::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let statement = format!(
        "COPY official_bars_staging ({}) FROM STDIN (FORMAT binary)",
        copy::OFFICIAL_COLUMNS
    );
    copy_into(&tx, &statement, rows).await?;
    let read = end.await?;
    let row = tx
        .query_one(&merge_statement(), &[&schema])
        .await
        .map_err(|e| FeederError::db("official_bars_merge()", e))?;
    tx.commit()
        .await
        .map_err(|e| FeederError::db("committing the load", e))?;
    let loaded = OfficialLoaded {
        written: row.get(0),
        rejected: row.get(1),
    };
    Ok((loaded, read))
}

fn merge_statement() -> String {
    format!("SELECT * FROM {}($1)", internal::OFFICIAL_BARS_MERGE)
}

/// Asks official_bars_merge() to merge nothing, and rolls back: the database refuses
/// official bars of `schema` now (its clock, an unprepared price_bars) the way it would after
/// a load.
pub async fn check_official(client: &mut Client, schema: &str) -> Result<(), FeederError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting the check", e))?;
    tx.query_one(&merge_statement(), &[&schema])
        .await
        .map_err(|e| FeederError::db("official_bars_merge()", e))?;
    tx.rollback()
        .await
        .map_err(|e| FeederError::db("ending the check", e))
}

/// Where a live subscription stands: the latest `ts_recv` staged for any of `symbols` of
/// `dataset` ('*' is a subscription to every symbol). A restarted stream replays from there.
pub async fn live_position(
    client: &Client,
    dataset: &str,
    symbols: &[String],
) -> Result<Option<i64>, FeederError> {
    let row = client
        .query_one(
            "SELECT max(last_ts_recv) FROM live_positions
             WHERE dataset = $1 AND (symbol = ANY($2) OR symbol = '*')",
            &[&dataset, &symbols],
        )
        .await
        .map_err(|e| FeederError::db("reading the stream's position from live_positions", e))?;
    Ok(row.get(0))
}

/// One batch of a live stream: its rows, and where it leaves the stream.
pub struct Batch<'a> {
    pub source: &'a str,
    pub dataset: &'a str,
    pub symbols: &'a [String],
    pub rows: Bytes,
    pub trades: i64,
    pub last_ts_event: i64,
    pub position: i64,
    pub changes: &'a Changes,
}

/// Stages one batch of a stream together with what it adds to trade identity and the
/// position it reaches.
pub async fn write_batch(client: &mut Client, batch: &Batch<'_>) -> Result<(), FeederError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting a batch", e))?;
    coverage::lock(&tx).await?;
    if batch.trades > 0 {
        copy_rows(&tx, futures_util::stream::iter([Ok(batch.rows.clone())])).await?;
    }
    coverage::store(&tx, batch.changes).await?;
    tx.execute(
        "INSERT INTO live_positions AS p (dataset, symbol, last_ts_recv)
         SELECT $1, s, $3 FROM unnest($2::text[]) AS s
         ON CONFLICT (dataset, symbol) DO UPDATE
             SET last_ts_recv = greatest(p.last_ts_recv, EXCLUDED.last_ts_recv), updated_at = now()",
        &[&batch.dataset, &batch.symbols, &batch.position],
    )
    .await
    .map_err(|e| FeederError::db("recording the stream's position in live_positions", e))?;
    tx.execute(
        "INSERT INTO ingest_ledger AS l (source, kind, position, last_ts_event, last_ts_recv, trades)
         VALUES ($1, 'live', 0, $2, $3, $4)
         ON CONFLICT (source) DO UPDATE SET last_ts_event = greatest(l.last_ts_event, $2),
             last_ts_recv = greatest(l.last_ts_recv, $3), trades = l.trades + $4, updated_at = now()",
        &[&batch.source, &batch.last_ts_event, &batch.position, &batch.trades],
    )
    .await
    .map_err(|e| FeederError::db("recording the batch in ingest_ledger", e))?;
    tx.commit()
        .await
        .map_err(|e| FeederError::db("committing a batch", e))
}

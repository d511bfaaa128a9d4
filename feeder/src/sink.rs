//! Into staging by binary COPY, each write in one transaction with its `ingest_ledger` entry:
//! a file is staged whole and exactly once or not at all; a stream's batch is staged together
//! with the position it reached, so a resumed stream skips exactly what is already staged.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};

use crate::copy;
use crate::error::FeederError;

#[derive(Debug)]
pub enum Loaded {
    /// The ledger already holds this source: nothing was written.
    Before {
        trades: i64,
        at: String,
    },
    Now {
        rows: u64,
    },
}

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
    if table != "trades_staging_0" && table != "trades_staging_1" {
        return Err(FeederError::Db {
            context: "asking for the staging table".into(),
            msg: format!("unexpected staging table {slot}"),
        });
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
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY {slot} ({}) FROM STDIN (FORMAT binary)",
            copy::COLUMNS
        ))
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

/// What identifies a finished source, known once all of it has been read.
pub struct SourceEnd {
    pub source: String,
    pub last_ts_event: i64,
}

/// Stages everything `chunks` delivers, then records the source in the ledger in the same
/// transaction. An `Err` from `chunks` (a decode error) aborts the COPY and rolls the whole
/// source back; a source the ledger already holds is rolled back too, so it counts once.
pub async fn load_source(
    client: &mut Client,
    kind: &str,
    chunks: mpsc::Receiver<Result<Bytes, FeederError>>,
    end: impl std::future::Future<Output = Result<SourceEnd, FeederError>>,
) -> Result<Loaded, FeederError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting the load", e))?;
    let rows = futures_util::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let rows = copy_rows(&tx, rows).await?;
    let SourceEnd {
        source,
        last_ts_event,
    } = end.await?;
    if rows == 0 {
        return Ok(Loaded::Now { rows }); // no trades: nothing to stage or to remember
    }
    // Claims the source: a second feeder loading the same trades waits here for the first to
    // commit, then finds them loaded and rolls its copy back.
    let claimed = tx
        .execute(
            "INSERT INTO ingest_ledger (source, kind, position) VALUES ($1, $2, 0) ON CONFLICT (source) DO NOTHING",
            &[&source, &kind],
        )
        .await
        .map_err(|e| FeederError::db("claiming the source in ingest_ledger", e))?;
    if claimed == 0 {
        let row = tx
            .query_one(
                "SELECT trades, to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS TZ') FROM ingest_ledger WHERE source = $1",
                &[&source],
            )
            .await
            .map_err(|e| FeederError::db("reading ingest_ledger", e))?;
        return Ok(Loaded::Before {
            trades: row.get(0),
            at: row.get(1),
        }); // tx rolls back
    }
    let rows_i64 = i64::try_from(rows).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE ingest_ledger SET position = $2, trades = $2, last_ts_event = $3, updated_at = now() WHERE source = $1",
        &[&source, &rows_i64, &last_ts_event],
    )
    .await
    .map_err(|e| FeederError::db("recording the load in ingest_ledger", e))?;
    tx.commit()
        .await
        .map_err(|e| FeederError::db("committing the load", e))?;
    Ok(Loaded::Now { rows })
}

/// How far a stream has been staged: the `ts_recv` of the last staged trade and how many
/// staged trades share it. Streams arrive in `ts_recv` order, so this is a stream position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub last_ts_recv: i64,
    pub at_last_ts_recv: i64,
}

/// The position a stream's ledger entry records, if it has one.
pub async fn stream_position(
    client: &Client,
    source: &str,
) -> Result<Option<StreamPosition>, FeederError> {
    let row = client
        .query_opt(
            "SELECT last_ts_recv, position FROM ingest_ledger WHERE source = $1 AND last_ts_recv IS NOT NULL",
            &[&source],
        )
        .await
        .map_err(|e| FeederError::db("reading the stream's position from ingest_ledger", e))?;
    Ok(row.map(|r| StreamPosition {
        last_ts_recv: r.get(0),
        at_last_ts_recv: r.get(1),
    }))
}

/// Stages one batch of a stream together with the position it reaches.
pub async fn write_batch(
    client: &mut Client,
    source: &str,
    kind: &str,
    rows: Bytes,
    trades: i64,
    last_ts_event: i64,
    reached: StreamPosition,
) -> Result<(), FeederError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting a batch", e))?;
    copy_rows(&tx, futures_util::stream::iter([Ok(rows)])).await?;
    tx.execute(
        "INSERT INTO ingest_ledger AS l (source, kind, position, last_ts_event, last_ts_recv, trades)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (source) DO UPDATE SET position = $3, last_ts_event = greatest(l.last_ts_event, $4),
             last_ts_recv = $5, trades = l.trades + $6, updated_at = now()",
        &[
            &source,
            &kind,
            &reached.at_last_ts_recv,
            &last_ts_event,
            &reached.last_ts_recv,
            &trades,
        ],
    )
    .await
    .map_err(|e| FeederError::db("recording the batch in ingest_ledger", e))?;
    tx.commit()
        .await
        .map_err(|e| FeederError::db("committing a batch", e))
}

//! Into staging: one source's trades by binary COPY, in one transaction with its ledger entry,
//! so a source is staged whole and exactly once, or not at all.

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

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
async fn staging_slot(client: &tokio_postgres::Transaction<'_>) -> Result<String, FeederError> {
    let slot: String = client
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
    mut chunks: mpsc::Receiver<Result<Bytes, FeederError>>,
    end: impl std::future::Future<Output = Result<SourceEnd, FeederError>>,
) -> Result<Loaded, FeederError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| FeederError::db("starting the load", e))?;
    let slot = staging_slot(&tx).await?;
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY {slot} ({}) FROM STDIN (FORMAT binary)",
            copy::COLUMNS
        ))
        .await
        .map_err(|e| FeederError::db("starting COPY into staging", e))?;
    futures_util::pin_mut!(sink);
    let mut header = BytesMut::new();
    copy::encode_header(&mut header);
    sink.send(header.freeze())
        .await
        .map_err(|e| FeederError::db("COPY into staging", e))?;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?; // dropping the sink aborts the COPY, dropping tx rolls back
        sink.send(chunk)
            .await
            .map_err(|e| FeederError::db("COPY into staging", e))?;
    }
    let SourceEnd {
        source,
        last_ts_event,
    } = end.await?;
    let mut trailer = BytesMut::new();
    copy::encode_trailer(&mut trailer);
    sink.send(trailer.freeze())
        .await
        .map_err(|e| FeederError::db("COPY into staging", e))?;
    let rows = sink
        .finish()
        .await
        .map_err(|e| FeederError::db("finishing COPY into staging", e))?;
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

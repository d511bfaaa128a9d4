//! Databento's historical API, through the official client: a backfill of a time range,
//! fetched in chunks. Each chunk is one source in the ingest ledger, staged whole or not at
//! all, so an interrupted backfill resumes at the first chunk not yet staged.

use bytes::Bytes;
use databento::historical::timeseries::GetRangeParams;
use databento::HistoricalClient;
use dbn::decode::DbnMetadata;
use dbn::{SType, Schema, TsSymbolMap};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::error::FeederError;
use crate::identity::{Changes, Identity};
use crate::sink::Staged;
use crate::source::official::{OfficialEncoder, OfficialSummary};
use crate::source::{RowEncoder, Summary};

#[derive(Debug, Clone)]
pub struct BackfillSpec {
    pub dataset: String,
    pub schema: Schema,
    /// `None`: every symbol of the dataset.
    pub symbols: Option<Vec<String>>,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub chunk: time::Duration,
    /// A historical API other than Databento's own (a proxy, a test server).
    pub base_url: Option<String>,
    pub key: String,
}

impl BackfillSpec {
    /// The chunks of the range, in order: [start, end) cut every `chunk`.
    pub fn chunks(&self) -> Vec<(OffsetDateTime, OffsetDateTime)> {
        let mut out = Vec::new();
        let mut from = self.start;
        while from < self.end {
            let to = (from + self.chunk).min(self.end);
            out.push((from, to));
            from = to;
        }
        out
    }

    /// A chunk's name in the ingest ledger.
    pub fn source_id(&self, from: OffsetDateTime, to: OffsetDateTime) -> String {
        let symbols = match &self.symbols {
            Some(s) => s.join(","),
            None => "ALL_SYMBOLS".into(),
        };
        format!(
            "backfill:{}:{}:{}:{}-{}",
            self.dataset,
            self.schema,
            symbols,
            from.unix_timestamp_nanos(),
            to.unix_timestamp_nanos()
        )
    }

    pub fn client(&self) -> Result<HistoricalClient, FeederError> {
        // The client refuses only a malformed key here: FeederError::databento makes it Auth.
        let builder = HistoricalClient::builder()
            .key(&self.key)
            .map_err(|e| FeederError::databento("", e))?;
        let builder = match &self.base_url {
            Some(url) => builder.base_url(
                url.parse()
                    .map_err(|e| FeederError::Usage(format!("--historical-url {url}: {e}")))?,
            ),
            None => builder,
        };
        builder
            .build()
            .map_err(|e| FeederError::databento("historical client", e))
    }
}

/// A failure of the historical API: the API answers a refused key with HTTP 401, which
/// FeederError::databento makes `Auth`.
fn api_error(e: databento::Error) -> FeederError {
    FeederError::databento("historical API", e)
}

/// A response that cannot be read to its end: said in the decoder's words, kept as the
/// client's error (databento's own conversion), so an I/O failure reads as one.
fn reading_error(e: dbn::Error) -> FeederError {
    FeederError::Gateway {
        msg: format!("historical API: reading the response: {e}"),
        source: Some(Box::new(e.into())),
    }
}

/// Fetches one chunk and sends the trades `identity` does not know yet as COPY rows; returns
/// what it read and what the chunk adds to trade identity.
pub async fn fetch_chunk(
    client: &mut HistoricalClient,
    spec: &BackfillSpec,
    (from, to): (OffsetDateTime, OffsetDateTime),
    identity: Identity,
    tx: mpsc::Sender<Result<Staged, FeederError>>,
) -> Result<(Summary, Changes), FeederError> {
    let params = range_params(spec, (from, to));
    let identity_err = |e: crate::identity::IdentityError| {
        FeederError::identity(format!("backfill {} {from} to {to}", spec.dataset), e)
    };
    let result: Result<(Summary, Changes), FeederError> = async {
        let mut decoder = client
            .timeseries()
            .get_range(&params)
            .await
            .map_err(api_error)?;
        let symbols = TsSymbolMap::from_metadata(decoder.metadata())
            .map_err(|e| FeederError::gateway(format!("symbology of the response: {e}")))?;
        let mut rows = RowEncoder::new(identity);
        while let Some(rec) = decoder.decode_record_ref().await.map_err(reading_error)? {
            if let Some(why) = crate::trade::malformed(&rec) {
                return Err(FeederError::gateway(format!("{from} to {to}: {why}")));
            }
            rows.push(&rec, &symbols).map_err(identity_err)?;
            if let Some(chunk) = rows.full_chunk() {
                if tx.send(Ok(Staged::Rows(chunk))).await.is_err() {
                    return Ok((rows.summary, Changes::default()));
                }
            }
        }
        let (rest, summary, changes) = rows.finish(&symbols).map_err(identity_err)?;
        if let Some(chunk) = rest {
            let _ = tx.send(Ok(Staged::Rows(chunk))).await;
        }
        Ok((summary, changes))
    }
    .await;
    handed_to_writer(result, &tx).await
}

/// A fetch's failure goes to the writer as it is (it reports it, and aborts its COPY); the
/// fetch itself returns a copy, for a writer that left.
async fn handed_to_writer<T, M>(
    result: Result<T, FeederError>,
    tx: &mpsc::Sender<Result<M, FeederError>>,
) -> Result<T, FeederError> {
    match result {
        Ok(done) => Ok(done),
        Err(e) => {
            let text = e.to_string();
            let _ = tx.send(Err(e)).await;
            Err(FeederError::gateway(text))
        }
    }
}

/// Fetches one chunk of Databento's official minute bars (schema ohlcv-1m) and sends them as
/// `official_bars_staging` COPY rows; returns what it read. An error is sent too, so the
/// writer aborts its COPY.
pub async fn fetch_official_chunk(
    client: &mut HistoricalClient,
    spec: &BackfillSpec,
    (from, to): (OffsetDateTime, OffsetDateTime),
    tx: mpsc::Sender<Result<Bytes, FeederError>>,
) -> Result<OfficialSummary, FeederError> {
    let result: Result<OfficialSummary, FeederError> = async {
        let mut decoder = client
            .timeseries()
            .get_range(&range_params(spec, (from, to)))
            .await
            .map_err(api_error)?;
        let mut symbols = TsSymbolMap::from_metadata(decoder.metadata())
            .map_err(|e| FeederError::gateway(format!("symbology of the response: {e}")))?;
        let mut bars = OfficialEncoder::default();
        while let Some(rec) = decoder.decode_record_ref().await.map_err(reading_error)? {
            bars.push(&rec, &mut symbols)
                .map_err(|msg| FeederError::gateway(format!("{from} to {to}: {msg}")))?;
            if let Some(chunk) = bars.full_chunk() {
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(bars.summary);
                }
            }
        }
        let (rest, summary) = bars.finish();
        if let Some(chunk) = rest {
            let _ = tx.send(Ok(chunk)).await;
        }
        Ok(summary)
    }
    .await;
    handed_to_writer(result, &tx).await
}

/// The request for one chunk of the backfill.
fn range_params(
    spec: &BackfillSpec,
    (from, to): (OffsetDateTime, OffsetDateTime),
) -> GetRangeParams {
    let symbols: databento::Symbols = match &spec.symbols {
        Some(list) => list.clone().into(),
        None => databento::Symbols::All,
    };
    GetRangeParams::builder()
        .dataset(&spec.dataset)
        .schema(spec.schema)
        .symbols(symbols)
        .stype_in(SType::RawSymbol)
        .date_time_range((from, to))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_cut_into_chunks_that_cover_it_exactly() {
        let start = time::macros::datetime!(2025-10-24 14:30 UTC);
        let spec = BackfillSpec {
            dataset: "XNAS.ITCH".into(),
            schema: Schema::Trades,
            symbols: None,
            start,
            end: start + time::Duration::minutes(150),
            chunk: time::Duration::hours(1),
            base_url: None,
            key: String::new(),
        };
        let chunks = spec.chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].0, spec.start);
        assert_eq!(chunks[2].1, spec.end);
        assert!(chunks.windows(2).all(|w| w[0].1 == w[1].0));
        assert_ne!(
            spec.source_id(chunks[0].0, chunks[0].1),
            spec.source_id(chunks[1].0, chunks[1].1)
        );
    }
}

//! Databento's live gateway, through the official client: subscribe, keep the trade events,
//! and after any disconnect resume exactly where staging stands.
//!
//! A live stream arrives in `ts_recv` order, so (last staged `ts_recv`, how many staged trades
//! share it) is a position in the stream. Intraday replay filters on `ts_event`, which is never
//! later than `ts_recv`: a resumed subscription starts `replay_margin` before the position and
//! the records up to the position are skipped, which leaves no gap as long as no trade takes
//! longer than the margin from event to receipt, and no duplicate.

use std::time::Duration;

use bytes::BytesMut;
use databento::live::Subscription;
use databento::LiveClient;
use dbn::{ErrorMsg, PitSymbolMap, SType, Schema, SystemMsg};

use crate::copy;
use crate::error::FeederError;
use crate::sink::StreamPosition;
use crate::trade::{classify, RecordKind};

#[derive(Debug, Clone)]
pub struct LiveSpec {
    pub dataset: String,
    pub schema: Schema,
    /// `None`: every symbol of the dataset.
    pub symbols: Option<Vec<String>>,
    /// host:port of a gateway other than Databento's own (a proxy, a test gateway).
    pub gateway: Option<String>,
    pub key: String,
    pub replay_margin: Duration,
}

impl LiveSpec {
    /// The stream's name in the ingest ledger.
    pub fn source_id(&self) -> String {
        let symbols = match &self.symbols {
            Some(s) => s.join(","),
            None => "ALL_SYMBOLS".into(),
        };
        format!("live:{}:{}:{}", self.dataset, self.schema, symbols)
    }
}

/// What one read from the stream gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A trade, encoded into the caller's buffer.
    Trade { ts_event: u64, ts_recv: u64 },
    /// A trade the stream replayed that is already staged.
    AlreadyStaged,
    /// Anything else: symbology, heartbeats, system and error messages (logged here).
    Other,
    /// The gateway closed the session.
    Closed,
}

/// Decides which replayed trades are already staged.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    position: StreamPosition,
    seen_at_last: i64,
    done: bool,
}

impl Resume {
    pub fn new(position: StreamPosition) -> Self {
        Self {
            position,
            seen_at_last: 0,
            done: false,
        }
    }

    /// Whether the trade received at `ts_recv` is already staged.
    pub fn already_staged(&mut self, ts_recv: i64) -> bool {
        if self.done {
            return false;
        }
        if ts_recv < self.position.last_ts_recv {
            return true;
        }
        if ts_recv == self.position.last_ts_recv
            && self.seen_at_last < self.position.at_last_ts_recv
        {
            self.seen_at_last += 1;
            return true;
        }
        self.done = true;
        false
    }
}

pub struct LiveSource {
    client: LiveClient,
    symbols: PitSymbolMap,
    resume: Option<Resume>,
}

/// Whether an error means the key itself was refused: retrying cannot help.
pub fn is_auth_error(e: &databento::Error) -> bool {
    matches!(e, databento::Error::Auth(_))
        || matches!(
            e,
            databento::Error::BadArgument {
                param_name: "key",
                ..
            }
        )
}

fn gateway_error(e: databento::Error) -> FeederError {
    if is_auth_error(&e) {
        FeederError::Auth(e.to_string())
    } else {
        FeederError::Gateway(e.to_string())
    }
}

impl LiveSource {
    /// Connects, authenticates and subscribes, replaying from before `from` when resuming.
    pub async fn connect(
        spec: &LiveSpec,
        from: Option<StreamPosition>,
    ) -> Result<Self, FeederError> {
        let builder = LiveClient::builder();
        let builder = match &spec.gateway {
            Some(addr) => builder.addr(addr.as_str()).await.map_err(gateway_error)?,
            None => builder,
        };
        let mut client = builder
            .key(&spec.key)
            .map_err(gateway_error)?
            .dataset(&spec.dataset)
            .build()
            .await
            .map_err(gateway_error)?;
        let symbols: databento::Symbols = match &spec.symbols {
            Some(list) => list.clone().into(),
            None => databento::Symbols::All,
        };
        let subscription = match from {
            Some(p) => {
                let margin = i128::try_from(spec.replay_margin.as_nanos()).unwrap_or(i128::MAX);
                let start = (i128::from(p.last_ts_recv) - margin).max(0);
                let start = time::OffsetDateTime::from_unix_timestamp_nanos(start)
                    .map_err(|e| FeederError::Gateway(format!("replay start: {e}")))?;
                Subscription::builder()
                    .symbols(symbols)
                    .schema(spec.schema)
                    .stype_in(SType::RawSymbol)
                    .start(start)
                    .build()
            }
            None => Subscription::builder()
                .symbols(symbols)
                .schema(spec.schema)
                .stype_in(SType::RawSymbol)
                .build(),
        };
        client
            .subscribe(subscription)
            .await
            .map_err(gateway_error)?;
        client.start().await.map_err(gateway_error)?;
        Ok(Self {
            client,
            symbols: PitSymbolMap::new(),
            resume: from.map(Resume::new),
        })
    }

    /// Reads one record; a trade not yet staged is encoded into `rows`.
    pub async fn next_into(&mut self, rows: &mut BytesMut) -> Result<Step, FeederError> {
        let Some(rec) = self.client.next_record().await.map_err(gateway_error)? else {
            return Ok(Step::Closed);
        };
        let (kind, event) = classify(&rec);
        if let Some(ev) = event {
            let ts_recv = i64::try_from(ev.ts_recv).unwrap_or(i64::MAX);
            if self
                .resume
                .as_mut()
                .is_some_and(|r| r.already_staged(ts_recv))
            {
                return Ok(Step::AlreadyStaged);
            }
            let symbol = self
                .symbols
                .get(ev.instrument_id)
                .map(String::as_str)
                .unwrap_or("");
            copy::encode_trade(rows, &ev.with_symbol(symbol));
            return Ok(Step::Trade {
                ts_event: ev.ts_event,
                ts_recv: ev.ts_recv,
            });
        }
        match kind {
            RecordKind::SymbolMapping => {
                self.symbols
                    .on_record(rec)
                    .map_err(|e| FeederError::Gateway(format!("symbol mapping: {e}")))?;
            }
            RecordKind::System => {
                if let Some(msg) = rec.get::<SystemMsg>() {
                    if !msg.is_heartbeat() {
                        tracing::info!(
                            message = msg.msg().unwrap_or("?"),
                            "gateway system message"
                        );
                    }
                }
            }
            RecordKind::Error => {
                let text = rec
                    .get::<ErrorMsg>()
                    .and_then(|m| m.err().ok())
                    .unwrap_or("?")
                    .to_string();
                return Err(FeederError::Gateway(format!("gateway error: {text}")));
            }
            _ => {}
        }
        Ok(Step::Other)
    }

    pub async fn close(mut self) {
        let _ = self.client.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_stream_skips_exactly_what_is_staged() {
        let mut r = Resume::new(StreamPosition {
            last_ts_recv: 100,
            at_last_ts_recv: 2,
        });
        // replayed from before the position: everything up to it, and 2 of the trades at it
        let seen: Vec<bool> = [90, 99, 100, 100, 100, 101, 100]
            .iter()
            .map(|t| r.already_staged(*t))
            .collect();
        assert_eq!(seen, [true, true, true, true, false, false, false]);
    }

    #[test]
    fn the_source_id_names_dataset_schema_and_symbols() {
        let spec = LiveSpec {
            dataset: "XNAS.ITCH".into(),
            schema: Schema::Trades,
            symbols: Some(vec!["WGRX".into(), "QQQ".into()]),
            gateway: None,
            key: "k".into(),
            replay_margin: Duration::from_secs(10),
        };
        assert_eq!(spec.source_id(), "live:XNAS.ITCH:trades:WGRX,QQQ");
    }
}

//! Databento's live gateway, through the official client: subscribe, keep the trade events
//! that are not yet counted, and after any disconnect resume where staging stands.
//!
//! A live stream arrives in `ts_recv` order. Intraday replay filters on `ts_event`, which is
//! never later than `ts_recv`: a resumed subscription starts `replay_margin` before the last
//! staged `ts_recv` of its symbols, and trade identity (identity.rs) skips every replayed trade
//! already counted, whoever staged it. That leaves no gap as long as no trade takes longer than
//! the margin from event to receipt, and no duplicate whatever the margin.

use std::time::Duration;

use bytes::BytesMut;
use databento::live::Subscription;
use databento::LiveClient;
use dbn::{ErrorMsg, PitSymbolMap, SType, Schema, SystemMsg};

use crate::copy;
use crate::error::FeederError;
use crate::identity::Identity;
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
    /// The stream's name in the ingest ledger and in trade identity.
    pub fn source_id(&self) -> String {
        format!("live {} {}", self.dataset, self.schema)
    }

    /// The keys of its positions in `live_positions`: each symbol, or '*' for all. A
    /// position belongs to the data, not to how `--symbols` was spelled.
    pub fn position_keys(&self) -> Vec<String> {
        match &self.symbols {
            Some(list) => {
                let mut keys = list.clone();
                keys.sort();
                keys.dedup();
                keys
            }
            None => vec!["*".into()],
        }
    }
}

/// What one read from the stream gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A trade: `staged` trades were encoded into the caller's buffer (none when it is
    /// already counted or held until its group is complete; more when a held group ends).
    Trade {
        staged: u32,
        ts_event: u64,
        ts_recv: u64,
    },
    /// A heartbeat completed groups held for matching: `staged` of their trades were encoded.
    Released { staged: u32 },
    /// Anything else: symbology, heartbeats, system and error messages (logged here).
    Other,
    /// The gateway closed the session.
    Closed,
}

pub struct LiveSource {
    client: LiveClient,
    symbols: PitSymbolMap,
}

/// A failure of the live client: a refused key is `Auth` (error.rs says how it is told).
fn gateway_error(e: databento::Error) -> FeederError {
    FeederError::databento("", e)
}

impl LiveSource {
    /// Connects, authenticates and subscribes, replaying from `replay_from` (ns) if given.
    pub async fn connect(spec: &LiveSpec, replay_from: Option<i64>) -> Result<Self, FeederError> {
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
        let subscription = match replay_from {
            Some(start) => {
                let start =
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start.max(0)))
                        .map_err(|e| FeederError::gateway(format!("replay start: {e}")))?;
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
        })
    }

    /// Reads one record; the trades it makes ready to stage are encoded into `rows`.
    pub async fn next_into(
        &mut self,
        rows: &mut BytesMut,
        identity: &mut Identity,
    ) -> Result<Step, FeederError> {
        let Some(rec) = self.client.next_record().await.map_err(gateway_error)? else {
            return Ok(Step::Closed);
        };
        if let Some(why) = crate::trade::malformed(&rec) {
            return Err(FeederError::gateway(format!("live stream: {why}")));
        }
        let (kind, event) = classify(&rec);
        if let Some(ev) = event {
            // The stream is in ts_recv order: every group before this trade is complete.
            let ts_recv = i64::try_from(ev.ts_recv).unwrap_or(i64::MAX);
            let staged = self.stage(rows, identity, ts_recv, Some(ev))?;
            return Ok(Step::Trade {
                staged,
                ts_event: ev.ts_event,
                ts_recv: ev.ts_recv,
            });
        }
        if let Some(msg) = rec.get::<SystemMsg>().filter(|m| m.is_heartbeat()) {
            // A heartbeat is sent at the gateway's time: every group received before it is
            // complete, even when no later trade comes (the close, a quiet market).
            let at = i64::try_from(msg.hd.ts_event).unwrap_or(0);
            if at > 0 {
                let staged = self.stage(rows, identity, at, None)?;
                return Ok(Step::Released { staged });
            }
        }
        match kind {
            RecordKind::SymbolMapping => {
                self.symbols
                    .on_record(rec)
                    .map_err(|e| FeederError::gateway(format!("symbol mapping: {e}")))?;
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
                return Err(FeederError::gateway(format!("gateway error: {text}")));
            }
            _ => {}
        }
        Ok(Step::Other)
    }

    /// Completes the groups received before `before`, then takes `trade` (if any); the
    /// trades that become ready are encoded into `rows`. Returns how many.
    fn stage(
        &self,
        rows: &mut BytesMut,
        identity: &mut Identity,
        before: i64,
        trade: Option<crate::trade::TradeEvent>,
    ) -> Result<u32, FeederError> {
        let mut staged = 0u32;
        let symbols = &self.symbols;
        let mut stage = |ev: crate::trade::TradeEvent, ord: u32| {
            let symbol = symbols
                .get(ev.instrument_id)
                .map(String::as_str)
                .unwrap_or("");
            copy::encode_trade(rows, &ev.with_symbol(symbol), ord);
            staged += 1;
        };
        let identity_err = |e| FeederError::identity("live stream", e);
        identity
            .finish_before(before, &mut stage)
            .map_err(identity_err)?;
        if let Some(ev) = trade {
            identity.push(ev, &mut stage).map_err(identity_err)?;
        }
        Ok(staged)
    }

    pub async fn close(mut self) {
        let _ = self.client.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(symbols: Option<Vec<&str>>) -> LiveSpec {
        LiveSpec {
            dataset: "XNAS.ITCH".into(),
            schema: Schema::Trades,
            symbols: symbols.map(|s| s.into_iter().map(String::from).collect()),
            gateway: None,
            key: "k".into(),
            replay_margin: Duration::from_secs(10),
        }
    }

    #[test]
    fn positions_belong_to_the_symbols_not_to_their_spelling() {
        let a = spec(Some(vec!["WGRX", "DHB"]));
        let b = spec(Some(vec!["DHB", "WGRX", "DHB"]));
        assert_eq!(a.position_keys(), b.position_keys());
        assert_eq!(a.position_keys(), vec!["DHB".to_string(), "WGRX".into()]);
        assert_eq!(spec(None).position_keys(), vec!["*".to_string()]);
        assert_eq!(a.source_id(), b.source_id());
    }
}

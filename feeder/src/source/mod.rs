//! Where trades come from. Each source decodes Databento records, keeps the trade events,
//! maps instrument ids to symbols, and hands out staging rows already in COPY format.

pub mod file;
pub mod generate;
pub mod historical;
pub mod live;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use dbn::{RecordRef, TsSymbolMap};

use crate::copy;
use crate::identity::{Changes, Identity, IdentityError};
use crate::trade::{classify, RecordKind, TradeEvent};

/// Staging rows are handed over in chunks of about this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What reading a source found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub records: u64,
    pub trades: u64,
    pub unmapped_trades: u64,
    pub last_ts_event: u64,
    /// Trades staged: those not already counted.
    pub staged: u64,
    /// Trades already counted, and by which sources.
    pub already_counted: u64,
    pub overlaps: BTreeMap<String, u64>,
    /// Identity for the ingest ledger, where the source derives it from its content.
    pub source_id: String,
    pub skipped: BTreeMap<RecordKind, u64>,
}

impl Summary {
    /// "N trades already counted (overlap with A, B)", or None.
    pub fn overlap_note(&self) -> Option<String> {
        if self.already_counted == 0 {
            return None;
        }
        let mut names: Vec<String> = self.overlaps.keys().take(3).cloned().collect();
        if self.overlaps.len() > 3 {
            names.push(format!("and {} more", self.overlaps.len() - 3));
        }
        Some(format!(
            "{} trades already counted (overlap with {})",
            self.already_counted,
            names.join(", ")
        ))
    }
}

/// Turns the records of a source with point-in-time symbology into staging rows, keeping out
/// the trades already counted (identity.rs), counting what it saw.
#[derive(Debug)]
pub struct RowEncoder {
    pub rows: BytesMut,
    pub summary: Summary,
    identity: Identity,
    /// Wrapping sum of every trade's fingerprint: with the count, the content's name in the
    /// ingest ledger, whatever the file's DBN version, compression or schema.
    content: i64,
}

impl RowEncoder {
    pub fn new(identity: Identity) -> Self {
        Self {
            rows: BytesMut::new(),
            summary: Summary::default(),
            identity,
            content: 0,
        }
    }

    /// Encodes `rec` if it is a trade not yet counted; returns its kind when it is no trade.
    pub fn push(
        &mut self,
        rec: &RecordRef,
        symbols: &TsSymbolMap,
    ) -> Result<Option<RecordKind>, IdentityError> {
        self.summary.records += 1;
        let (kind, event) = classify(rec);
        let Some(ev) = event else {
            *self.summary.skipped.entry(kind).or_default() += 1;
            return Ok(Some(kind));
        };
        self.summary.trades += 1;
        self.summary.last_ts_event = self.summary.last_ts_event.max(ev.ts_event);
        self.content = self.content.wrapping_add(crate::identity::fingerprint(
            ev.ts_recv as i64,
            ev.sequence,
            ev.price,
            ev.size,
        ));
        let (rows, summary) = (&mut self.rows, &mut self.summary);
        if symbols.get_for_ts(ev.ts_event, ev.instrument_id).is_none() {
            // Staged for the rollup to set aside ('no symbol mapping'), but not taken into
            // trade identity: a load of the same trades with their mapping counts them.
            encode(rows, summary, symbols, ev, 0);
            return Ok(None);
        }
        self.identity
            .push(ev, &mut |ev, ord| encode(rows, summary, symbols, ev, ord))?;
        Ok(None)
    }

    /// The rows encoded so far, once there are at least `CHUNK_BYTES` of them.
    pub fn full_chunk(&mut self) -> Option<Bytes> {
        (self.rows.len() >= CHUNK_BYTES).then(|| self.rows.split().freeze())
    }

    /// Ends the source: stages the groups still held, and returns the last rows (if any),
    /// what was read and what the load adds to trade identity.
    pub fn finish(
        mut self,
        symbols: &TsSymbolMap,
    ) -> Result<(Option<Bytes>, Summary, Changes), IdentityError> {
        let (rows, summary) = (&mut self.rows, &mut self.summary);
        self.identity
            .finish(&mut |ev, ord| encode(rows, summary, symbols, ev, ord))?;
        let changes = self.identity.take_changes()?;
        let mut summary = self.summary;
        summary.already_counted = self.identity.skipped;
        summary.overlaps = std::mem::take(&mut self.identity.overlaps);
        summary.source_id = format!("trades:{}:{:016x}", summary.trades, self.content as u64);
        let rest = (!self.rows.is_empty()).then(|| self.rows.split().freeze());
        Ok((rest, summary, changes))
    }
}

fn encode(
    rows: &mut BytesMut,
    summary: &mut Summary,
    symbols: &TsSymbolMap,
    ev: TradeEvent,
    ord: u32,
) {
    let symbol = symbols
        .get_for_ts(ev.ts_event, ev.instrument_id)
        .map(String::as_str)
        .unwrap_or("");
    if symbol.is_empty() {
        summary.unmapped_trades += 1;
    }
    summary.staged += 1;
    copy::encode_trade(rows, &ev.with_symbol(symbol), ord);
}

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
use crate::trade::{classify, RecordKind};

/// Staging rows are handed over in chunks of about this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What reading a source found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub records: u64,
    pub trades: u64,
    pub unmapped_trades: u64,
    pub last_ts_event: u64,
    /// Identity for the ingest ledger, where the source derives it from its content.
    pub source_id: String,
    pub skipped: BTreeMap<RecordKind, u64>,
}

/// Turns the records of a source with point-in-time symbology into staging rows, counting
/// what it saw.
#[derive(Debug, Default)]
pub struct RowEncoder {
    pub rows: BytesMut,
    pub summary: Summary,
}

impl RowEncoder {
    /// Encodes `rec` if it is a trade; returns its kind when it is not.
    pub fn push(&mut self, rec: &RecordRef, symbols: &TsSymbolMap) -> Option<RecordKind> {
        self.summary.records += 1;
        let (kind, event) = classify(rec);
        let Some(ev) = event else {
            *self.summary.skipped.entry(kind).or_default() += 1;
            return Some(kind);
        };
        let symbol = symbols
            .get_for_ts(ev.ts_event, ev.instrument_id)
            .map(String::as_str)
            .unwrap_or("");
        if symbol.is_empty() {
            self.summary.unmapped_trades += 1;
        }
        self.summary.trades += 1;
        self.summary.last_ts_event = self.summary.last_ts_event.max(ev.ts_event);
        copy::encode_trade(&mut self.rows, &ev.with_symbol(symbol));
        None
    }

    /// The rows encoded so far, once there are at least `CHUNK_BYTES` of them.
    pub fn full_chunk(&mut self) -> Option<Bytes> {
        (self.rows.len() >= CHUNK_BYTES).then(|| self.rows.split().freeze())
    }

    /// Whatever rows remain.
    pub fn rest(&mut self) -> Option<Bytes> {
        (!self.rows.is_empty()).then(|| self.rows.split().freeze())
    }
}

//! Databento's official minute bars (schema ohlcv-1m), from a file or the historical API, as
//! `official_bars_staging` COPY rows: one encoder for both, so a bar reads the same either way.

use bytes::{Bytes, BytesMut};
use dbn::{RecordRef, Schema, TsSymbolMap};

/// The only schema of official bars price_bars holds: Databento's minute bars.
pub const OFFICIAL_SCHEMA: Schema = Schema::Ohlcv1M;

/// What reading official bars found.
#[derive(Debug, Default, Clone)]
pub struct OfficialSummary {
    pub records: u64,
    pub bars: u64,
    /// Bars of an instrument the symbology does not name at the bar's start.
    pub unmapped: u64,
}

/// Turns the records of an ohlcv-1m stream into COPY rows, following its symbol mappings.
#[derive(Default)]
pub struct OfficialEncoder {
    rows: BytesMut,
    pub summary: OfficialSummary,
}

impl OfficialEncoder {
    /// One record: a minute bar is encoded, a symbol mapping followed. Err: a bar of another
    /// interval, or a mapping the symbol map refuses (the message says which).
    pub fn push(&mut self, rec: &RecordRef, symbols: &mut TsSymbolMap) -> Result<(), String> {
        self.summary.records += 1;
        if let Some(bar) = rec.get::<dbn::OhlcvMsg>() {
            if bar.hd.rtype != dbn::rtype::OHLCV_1M {
                return Err(format!(
                    "record {} is an OHLCV bar of another interval (rtype {:#04x}) in an ohlcv-1m stream",
                    self.summary.records, bar.hd.rtype
                ));
            }
            // A bar's symbol is the mapping in force at its start (its index time).
            let symbol = symbols.get_for_ts(bar.hd.ts_event, bar.hd.instrument_id);
            self.summary.bars += 1;
            self.summary.unmapped += u64::from(symbol.is_none());
            crate::copy::encode_official_bar(&mut self.rows, symbol.map_or("", |s| s), bar);
        } else if rec.get::<dbn::SymbolMappingMsg>().is_some() {
            symbols.on_record(*rec).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The rows so far, once there are enough for a COPY chunk.
    pub fn full_chunk(&mut self) -> Option<Bytes> {
        (self.rows.len() >= crate::source::CHUNK_BYTES).then(|| self.rows.split().freeze())
    }

    /// The rows not yet sent, if any, and the summary.
    pub fn finish(self) -> (Option<Bytes>, OfficialSummary) {
        let rest = (!self.rows.is_empty()).then(|| self.rows.freeze());
        (rest, self.summary)
    }
}

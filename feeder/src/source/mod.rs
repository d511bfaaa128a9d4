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
    /// The `ts_recv` range (ns) the rollup counts: from 1980 to a day past now, as
    /// `bars_rollup()` bounds it. A trade outside is set aside by the rollup, so it is kept out
    /// of trade identity, or it could never count once its time became plausible.
    plausible: std::ops::Range<i64>,
}

impl RowEncoder {
    pub fn new(identity: Identity) -> Self {
        let now_minute = time::OffsetDateTime::now_utc()
            .unix_timestamp()
            .div_euclid(60);
        Self {
            rows: BytesMut::new(),
            summary: Summary::default(),
            identity,
            content: 0,
            plausible: 315_532_800 * 1_000_000_000
                ..(now_minute + 24 * 60).saturating_mul(crate::identity::NS_PER_MINUTE),
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
        let counted_by_rollup = symbol_of(symbols, &ev).is_some()
            && i64::try_from(ev.ts_recv).is_ok_and(|ts| self.plausible.contains(&ts));
        if !counted_by_rollup {
            // Staged for the rollup to set aside ('no symbol mapping', 'ts_recv out of
            // range'), but not taken into trade identity: a load of the same trades with their
            // mapping, or once their time is plausible, counts them. They keep their place in
            // the stream, so the trades around them are ordered alike by every source.
            let ord = self.identity.pass_by(&ev);
            encode(rows, summary, symbols, ev, ord);
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
    let symbol = symbol_of(symbols, &ev).unwrap_or("");
    if symbol.is_empty() {
        summary.unmapped_trades += 1;
    }
    summary.staged += 1;
    copy::encode_trade(rows, &ev.with_symbol(symbol), ord);
}

/// The symbol of a trade: the mapping in force on the UTC date of its index time, `ts_recv`
/// (as dbn's `TsSymbolMap::get_for_rec` and Databento's symbology take it), or of `ts_event`
/// where `ts_recv` is undefined.
fn symbol_of<'a>(symbols: &'a TsSymbolMap, ev: &TradeEvent) -> Option<&'a str> {
    let at = if ev.ts_recv == u64::MAX {
        ev.ts_event
    } else {
        ev.ts_recv
    };
    symbols.get_for_ts(at, ev.instrument_id).map(String::as_str)
}

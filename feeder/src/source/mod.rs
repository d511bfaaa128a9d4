//! Where trades come from. Each source decodes Databento records, keeps the trade events,
//! maps instrument ids to symbols, and hands out staging rows already in COPY format.

pub mod file;
pub mod generate;
pub mod historical;
pub mod live;
pub mod official;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use dbn::symbol_map::SymbolInterval;
use dbn::{RecordRef, TsSymbolMap};

use crate::copy;
use crate::identity::{Changes, FastMap, Identity, IdentityError};
use crate::trade::{classify, RecordKind, TradeEvent};

/// Staging rows are handed over in chunks of about this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Room past `CHUNK_BYTES` for the trades a group releases at once.
const CHUNK_SLACK: usize = 64 << 10;

/// What reading a source found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub records: u64,
    pub trades: u64,
    pub unmapped_trades: u64,
    pub last_ts_event: u64,
    /// Trades staged: those not already counted.
    pub staged: u64,
    /// Transactions they were committed in, when more than one (`--rollup`'s pieces).
    pub pieces: u64,
    /// Trades already counted, and by which sources.
    pub already_counted: u64,
    pub overlaps: BTreeMap<String, u64>,
    /// Identity for the ingest ledger, where the source derives it from its content.
    pub source_id: String,
    pub skipped: BTreeMap<RecordKind, u64>,
}

impl Summary {
    /// `n` trades found already counted by `source` were staged by this same load, in an
    /// attempt before (whose pieces it committed): they count as staged.
    pub fn count_as_staged(&mut self, source: &str, n: u64) {
        if let Some(found) = self.overlaps.get_mut(source) {
            let n = n.min(*found);
            *found -= n;
            if *found == 0 {
                self.overlaps.remove(source);
            }
            self.already_counted -= n;
            self.staged += n;
        }
    }

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
    symbols: SymbolCache,
    /// `summary.staged` when the piece being encoded began (see `piece_end`).
    piece_start: u64,
}

/// The mapping each instrument's last trade found: a trade within its interval costs one
/// lookup in a small map instead of two searches of the point-in-time map (SipHash and all),
/// which measured a tenth of a replay's CPU time. The same answer as `symbol_of`.
#[derive(Debug, Default)]
struct SymbolCache {
    by_instrument: FastMap<u32, SymbolInterval>,
}

impl SymbolCache {
    fn get(&mut self, symbols: &TsSymbolMap, ev: &TradeEvent) -> Option<&str> {
        let (id, ts) = (ev.instrument_id, index_time(ev));
        let cached = self.by_instrument.get(&id);
        if !cached.is_some_and(|i| i.start_ts <= ts && ts < i.end_ts) {
            // As dbn's get_for_ts: the last interval starting at or before ts, if it covers ts.
            let intervals = symbols.inner().get(&id)?.intervals();
            let at = intervals
                .partition_point(|i| i.start_ts <= ts)
                .checked_sub(1)?;
            let found = intervals.get(at).filter(|i| ts < i.end_ts)?;
            self.by_instrument.insert(id, found.clone());
        }
        self.by_instrument.get(&id).map(|i| i.symbol.as_str())
    }

    /// The map changed (a symbol mapping record): ask it again.
    fn clear(&mut self) {
        self.by_instrument.clear();
    }
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
            symbols: SymbolCache::default(),
            piece_start: 0,
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
            if kind == RecordKind::SymbolMapping {
                self.symbols.clear(); // the caller updates the map with it next
            }
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
        let (rows, summary, cache) = (&mut self.rows, &mut self.summary, &mut self.symbols);
        let counted_by_rollup = cache.get(symbols, &ev).is_some()
            && i64::try_from(ev.ts_recv).is_ok_and(|ts| self.plausible.contains(&ts));
        if !counted_by_rollup {
            // Staged for the rollup to set aside ('no symbol mapping', 'ts_recv out of
            // range'), but not taken into trade identity: a load of the same trades with their
            // mapping, or once their time is plausible, counts them. They keep their place in
            // the stream, so the trades around them are ordered alike by every source.
            let ord = self.identity.pass_by(&ev);
            encode(rows, summary, cache.get(symbols, &ev), ev, ord);
            return Ok(None);
        }
        self.identity.push(ev, &mut |ev, ord| {
            encode(rows, summary, cache.get(symbols, &ev), ev, ord)
        })?;
        Ok(None)
    }

    /// The rows encoded so far, once there are at least `CHUNK_BYTES` of them.
    pub fn full_chunk(&mut self) -> Option<Bytes> {
        if self.rows.len() < CHUNK_BYTES {
            return None;
        }
        let chunk = self.rows.split().freeze();
        // The next chunk's room at once: grown by doubling, it was copied over and over.
        self.rows.reserve(CHUNK_BYTES + CHUNK_SLACK);
        Some(chunk)
    }

    /// Ends a piece once `size` trades are staged since the last: the rows encoded so far
    /// (if any) and what they add to trade identity, taken as written. None before that, and
    /// none once a trade fell outside the range identity was read for (the source then fails
    /// at its end, with the whole range it spans, and is loaded again for it).
    pub fn piece_end(
        &mut self,
        size: u64,
    ) -> Result<Option<(Option<Bytes>, Changes)>, IdentityError> {
        if self.summary.staged < self.piece_start + size || self.identity.outside() {
            return Ok(None);
        }
        self.piece_start = self.summary.staged;
        let changes = self.identity.take_changes()?;
        let rows = (!self.rows.is_empty()).then(|| self.rows.split().freeze());
        Ok(Some((rows, changes)))
    }

    /// Ends the source: stages the groups still held, and returns the last rows (if any),
    /// what was read and what the load adds to trade identity.
    pub fn finish(
        mut self,
        symbols: &TsSymbolMap,
    ) -> Result<(Option<Bytes>, Summary, Changes), IdentityError> {
        let (rows, summary, cache) = (&mut self.rows, &mut self.summary, &mut self.symbols);
        self.identity
            .finish(&mut |ev, ord| encode(rows, summary, cache.get(symbols, &ev), ev, ord))?;
        let changes = self.identity.take_changes()?;
        let mut summary = self.summary;
        summary.already_counted = self.identity.skipped;
        summary.overlaps = std::mem::take(&mut self.identity.overlaps);
        summary.source_id = format!(
            "trades:{}:{}",
            summary.trades,
            hex::encode(self.content.to_be_bytes())
        );
        let rest = (!self.rows.is_empty()).then(|| self.rows.split().freeze());
        Ok((rest, summary, changes))
    }
}

fn encode(
    rows: &mut BytesMut,
    summary: &mut Summary,
    symbol: Option<&str>,
    ev: TradeEvent,
    ord: u32,
) {
    let symbol = symbol.unwrap_or("");
    if symbol.is_empty() {
        summary.unmapped_trades += 1;
    }
    summary.staged += 1;
    copy::encode_trade(rows, &ev.with_symbol(symbol), ord);
}

/// The symbol of a trade: the mapping in force on the UTC date of its index time, `ts_recv`
/// (as dbn's `TsSymbolMap::get_for_rec` and Databento's symbology take it), or of `ts_event`
/// where `ts_recv` is undefined.
#[cfg(test)]
fn symbol_of<'a>(symbols: &'a TsSymbolMap, ev: &TradeEvent) -> Option<&'a str> {
    symbols
        .get_for_ts(index_time(ev), ev.instrument_id)
        .map(String::as_str)
}

/// The time a trade's symbol is looked up at: `ts_recv`, or `ts_event` where it is undefined.
fn index_time(ev: &TradeEvent) -> u64 {
    if ev.ts_recv == u64::MAX {
        ev.ts_event
    } else {
        ev.ts_recv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(instrument_id: u32, ts_event: u64, ts_recv: u64) -> TradeEvent {
        TradeEvent {
            instrument_id,
            publisher_id: 1,
            ts_event,
            ts_recv,
            sequence: 0,
            price: 1,
            size: 1,
            side: b'N',
            flags: 0,
        }
    }

    #[test]
    fn the_cached_symbol_is_the_maps_at_every_time() {
        let mut map = TsSymbolMap::new();
        map.insert(7, 100, 200, "AAA").unwrap();
        map.insert(7, 200, 350, "BBB").unwrap(); // a change inside a day
        map.insert(7, 400, 500, "CCC").unwrap(); // after a gap
        map.insert(8, 0, 1000, "ZZZ").unwrap();
        let mut cache = SymbolCache::default();
        let times = [
            50, 100, 199, 200, 349, 350, 399, 400, 499, 500, 150, 420, 210, 99, 360,
        ];
        let mut asked = 0;
        for ts in times {
            for id in [7, 8, 9] {
                for ev in [trade(id, 5, ts), trade(id, ts, u64::MAX)] {
                    assert_eq!(cache.get(&map, &ev), symbol_of(&map, &ev), "{id} at {ts}");
                    asked += 1;
                }
            }
        }
        assert_eq!(asked, times.len() * 6);
        assert_eq!(cache.get(&map, &trade(7, 0, 250)), Some("BBB"));
        // after a mapping record the map is asked again
        map.insert(7, 200, 350, "DDD").unwrap();
        cache.clear();
        assert_eq!(cache.get(&map, &trade(7, 0, 250)), Some("DDD"));
    }
}

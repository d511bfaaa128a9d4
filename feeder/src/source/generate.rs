//! Synthetic TRADES data for demos and benchmarks: real DBN with symbology, many symbols with
//! skewed activity, random-walk prices on a cent grid, bursty arrivals (quiet and busy
//! spells, sweeps of several trades in the same nanosecond). Deterministic for a given seed.
//!
//! `Market` is the model (which trade comes next, when, at what price and size) and
//! `DbnWriter` writes its trades; they share nothing but the trades handed from one to the
//! other. The model draws every random number, in an order that is part of the file format:
//! the same seed must keep giving the same bytes, so a change that reorders the draws is a
//! change of every generated file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::NonZeroU64;
use std::path::Path;

use dbn::encode::dbn::Encoder;
use dbn::encode::EncodeRecord;
use dbn::{
    FlagSet, MappingInterval, Metadata, RecordHeader, SType, Schema, SymbolMapping, TradeMsg,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::FeederError;

pub const DATASET: &str = "XNAS.ITCH";
const PUBLISHER_ID: u16 = 2;
const CENT: i64 = 10_000_000; // fixed-point 1e-9
const SESSION_OPEN_SECS: i64 = 14 * 3600 + 30 * 60; // 09:30 New York in winter, as UTC
const SESSION_SECS: i64 = 6 * 3600 + 30 * 60;
/// Instrument ids are 1000 and up, in the order of the symbols.
const FIRST_INSTRUMENT_ID: usize = 1000;
/// Busy and quiet spells: (probability, gap factor).
const SPELLS: [(f64, f64); 3] = [(0.25, 0.2), (0.5, 1.0), (0.25, 4.0)];

#[derive(Debug, Clone)]
pub struct GenerateSpec {
    pub symbols: usize,
    pub trades: u64,
    pub seed: u64,
    pub date: time::Date,
}

#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub trades: u64,
    pub symbols: usize,
    pub first_ts: u64,
    pub last_ts: u64,
}

impl Generated {
    fn add(&mut self, ts_recv: u64) {
        if self.trades == 0 {
            self.first_ts = ts_recv;
        }
        self.trades += 1;
        self.last_ts = ts_recv;
    }
}

/// Ticker-like symbols: WGRX (the screener's example) first, then distinct 3-4 letter names.
/// Names are 3 or 4 letters (474,552 of them) drawn until distinct: far below that bound a
/// draw rarely repeats, at it the draws would never end.
pub const MAX_SYMBOLS: usize = 100_000;

/// The rollup's earliest plausible trade (extension/src/rollup.rs: from 1980 on).
const EARLIEST_DATE: time::Date = time::macros::date!(1980 - 01 - 01);

pub fn symbols(count: usize, rng: &mut StdRng) -> Vec<String> {
    let mut out = vec!["WGRX".to_string()];
    let mut seen: std::collections::HashSet<String> = out.iter().cloned().collect();
    while out.len() < count {
        let len = rng.gen_range(3..=4);
        let s: String = (0..len)
            .map(|_| char::from(b'A' + rng.gen_range(0..26u8)))
            .collect();
        if seen.insert(s.clone()) {
            out.push(s);
        }
    }
    out.truncate(count);
    out
}

fn session_start_ns(date: time::Date) -> i64 {
    let midnight = date.midnight().assume_utc().unix_timestamp();
    (midnight + SESSION_OPEN_SECS) * 1_000_000_000
}

/// The trading session of a day, in ns: `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    end: i64,
}

impl Session {
    fn of(date: time::Date) -> Session {
        let start = session_start_ns(date);
        Session {
            start,
            end: start + SESSION_SECS * 1_000_000_000,
        }
    }
}

pub fn generate(
    spec: &GenerateSpec,
    out: &Path,
    progress: impl Fn(u64),
) -> Result<Generated, FeederError> {
    if spec.symbols == 0 || spec.trades == 0 {
        return Err(FeederError::Usage(
            "--symbols and --trades must be at least 1".into(),
        ));
    }
    if spec.symbols > MAX_SYMBOLS {
        return Err(FeederError::Usage(format!(
            "--symbols {}: at most {MAX_SYMBOLS} (names are 3 or 4 letters, drawn until distinct)",
            spec.symbols
        )));
    }
    if spec.date < EARLIEST_DATE {
        return Err(FeederError::Usage(format!(
            "--date {}: before {EARLIEST_DATE}, whose trades bars_rollup() sets aside as out of range",
            spec.date
        )));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let names = symbols(spec.symbols, &mut rng);
    let session = Session::of(spec.date);
    let mut writer = DbnWriter::create(out, &metadata(spec.date, &names, session))?;
    let mut market = Market::open(rng, names.len(), spec.trades, session);
    let mut made = Generated {
        symbols: names.len(),
        ..Default::default()
    };
    for i in 0..spec.trades {
        let trade = market.next_trade(i);
        writer.write(&trade.record())?;
        made.add(trade.ts_recv as u64);
        if i % 100_000 == 0 {
            progress(i);
        }
    }
    writer.finish()?;
    progress(spec.trades);
    Ok(made)
}

/// The file's metadata: TRADES of `names` over the session, each symbol mapped to its
/// instrument id for the day.
fn metadata(date: time::Date, names: &[String], session: Session) -> Metadata {
    let next_day = date.next_day().unwrap_or(date);
    let mappings = names
        .iter()
        .enumerate()
        .map(|(i, s)| SymbolMapping {
            raw_symbol: s.clone(),
            intervals: vec![MappingInterval {
                start_date: date,
                end_date: next_day,
                symbol: (FIRST_INSTRUMENT_ID + i).to_string(),
            }],
        })
        .collect();
    Metadata::builder()
        .dataset(DATASET.to_string())
        .schema(Some(Schema::Trades))
        .start(session.start as u64)
        .end(NonZeroU64::new(session.end as u64))
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .symbols(names.to_vec())
        .mappings(mappings)
        .build()
}

/// Encodes records into a DBN file, zstd-compressed when its name ends in `.zst`.
struct DbnWriter<'a> {
    path: &'a Path,
    encoder: Encoder<Box<dyn Write>>,
}

impl<'a> DbnWriter<'a> {
    /// Creates the file and writes the metadata.
    fn create(path: &'a Path, metadata: &Metadata) -> Result<DbnWriter<'a>, FeederError> {
        let file = File::create(path).map_err(|e| FeederError::io(path, e))?;
        let writer = BufWriter::with_capacity(1 << 20, file);
        let zstd = path.extension().is_some_and(|e| e == "zst");
        let sink: Box<dyn Write> = if zstd {
            let z = zstd::stream::write::Encoder::new(writer, 3)
                .map_err(|e| FeederError::io(path, e))?;
            // the frame is finished when the writer is dropped, after the last flush
            Box::new(z.auto_finish())
        } else {
            Box::new(writer)
        };
        let encoder = Encoder::new(sink, metadata).map_err(|e| encode_error(path, e))?;
        Ok(DbnWriter { path, encoder })
    }

    fn write(&mut self, record: &TradeMsg) -> Result<(), FeederError> {
        self.encoder
            .encode_record(record)
            .map_err(|e| encode_error(self.path, e))
    }

    fn finish(mut self) -> Result<(), FeederError> {
        self.encoder.flush().map_err(|e| encode_error(self.path, e))
    }
}

fn encode_error(path: &Path, e: dbn::Error) -> FeederError {
    FeederError::Decode {
        file: path.to_path_buf(),
        msg: format!("writing DBN: {e}"),
        source: Some(Box::new(e)),
    }
}

/// One trade the market made; `symbol` indexes the symbols.
#[derive(Debug, Clone, Copy)]
struct Trade {
    symbol: usize,
    ts_event: i64,
    ts_recv: i64,
    price: i64,
    size: u32,
    side: u8,
    sequence: u32,
}

impl Trade {
    fn record(&self) -> TradeMsg {
        TradeMsg {
            hd: RecordHeader::new::<TradeMsg>(
                dbn::rtype::MBP_0,
                PUBLISHER_ID,
                (FIRST_INSTRUMENT_ID + self.symbol) as u32,
                self.ts_event as u64,
            ),
            price: self.price,
            size: self.size,
            action: b'T' as std::ffi::c_char,
            side: self.side as std::ffi::c_char,
            flags: FlagSet::empty(),
            depth: 0,
            ts_recv: self.ts_recv as u64,
            ts_in_delta: 0,
            sequence: self.sequence,
        }
    }
}

/// When trades arrive: exponential gaps scaled by the current busy or quiet spell.
#[derive(Debug)]
struct Arrivals {
    /// The mean gap, scaled so the session is filled on average.
    ns_per_unit: f64,
    spell_left: u32,
    spell_factor: f64,
    /// Receipt time of the last arrival, ns.
    clock: f64,
}

impl Arrivals {
    fn new(session: Session, trades: u64) -> Arrivals {
        let mean_factor: f64 = SPELLS.iter().map(|(p, m)| p * m).sum();
        Arrivals {
            ns_per_unit: (session.end - session.start) as f64 / trades as f64 / mean_factor,
            spell_left: 0,
            spell_factor: 1.0,
            clock: session.start as f64,
        }
    }

    /// Moves the clock to the next arrival, starting a new spell when the last one is over.
    fn next(&mut self, rng: &mut StdRng) {
        if self.spell_left == 0 {
            self.start_spell(rng);
        }
        self.spell_left -= 1;
        let gap = -rng.gen::<f64>().max(1e-12).ln() * self.spell_factor * self.ns_per_unit;
        self.clock += gap;
    }

    fn start_spell(&mut self, rng: &mut StdRng) {
        let r: f64 = rng.gen();
        let mut p = 0.0;
        for (prob, factor) in SPELLS {
            p += prob;
            if r <= p {
                self.spell_factor = 1.0 / factor;
                break;
            }
        }
        self.spell_left = rng.gen_range(50..2000);
    }
}

/// The model: many symbols with skewed activity, each a random walk on the cent grid.
struct Market {
    rng: StdRng,
    /// Cumulative share of the trades by symbol, for drawing the next symbol.
    cumulative: Vec<f64>,
    prices: Vec<i64>,
    arrivals: Arrivals,
    end: i64,
    trades: u64,
    /// Trades left in the current sweep: same symbol, same ts_recv, same sequence.
    sweep_left: u32,
    symbol: usize,
    latency: i64,
    last_size: u32,
    sequence: u32,
}

impl Market {
    /// A market of `symbols` that will make `trades` trades in `session`; the opening
    /// prices are the first draws of `rng` after the symbols'.
    fn open(mut rng: StdRng, symbols: usize, trades: u64, session: Session) -> Market {
        let prices = (0..symbols)
            .map(|_| (rng.gen_range(1.0f64..6.2).exp() * 100.0).round() as i64 * CENT)
            .collect();
        Market {
            rng,
            cumulative: activity(symbols),
            prices,
            arrivals: Arrivals::new(session, trades),
            end: session.end,
            trades,
            sweep_left: 0,
            symbol: 0,
            latency: 0,
            last_size: 0,
            sequence: 1_000,
        }
    }

    /// Trade number `i` (from 0).
    fn next_trade(&mut self, i: u64) -> Trade {
        let in_sweep = self.sweep_left > 0;
        if in_sweep {
            self.sweep_left -= 1;
        } else {
            self.next_arrival();
        }
        let ts_recv = self.receipt_time(i);
        if !in_sweep {
            self.latency = self.next_latency();
        }
        let (price, repeat) = self.next_price(in_sweep);
        let size = self.next_size(repeat);
        if !in_sweep {
            self.sequence = self.sequence.wrapping_add(1);
        }
        Trade {
            symbol: self.symbol,
            ts_event: ts_recv - self.latency,
            ts_recv,
            price,
            size,
            side: [b'A', b'B', b'N'][self.rng.gen_range(0..3)],
            sequence: self.sequence,
        }
    }

    /// A new arrival: its time, its symbol, and whether it starts a sweep.
    fn next_arrival(&mut self) {
        self.arrivals.next(&mut self.rng);
        let r: f64 = self.rng.gen();
        self.symbol = self
            .cumulative
            .partition_point(|c| *c < r)
            .min(self.prices.len() - 1);
        if self.rng.gen_ratio(1, 40) {
            self.sweep_left = self.rng.gen_range(1..5);
        }
    }

    /// The clock is receipt time: Databento delivers in ts_recv order. Never past the
    /// session's end, and never a pile-up at it: past the ceiling, one nanosecond apart.
    fn receipt_time(&self, i: u64) -> i64 {
        let ceiling = self.end - 1 - (self.trades - i) as i64;
        (self.arrivals.clock as i64).min(ceiling)
    }

    /// How much earlier than its receipt the exchange stamped a trade: a little, now and then
    /// a good deal (a late print), so some trades fall in an earlier minute by ts_event than
    /// by ts_recv.
    fn next_latency(&mut self) -> i64 {
        if self.rng.gen_ratio(1, 100) {
            self.rng.gen_range(50_000..3_000_000_000) // a print reported late, up to 3 s
        } else {
            self.rng.gen_range(1_000..50_000)
        }
    }

    /// The trade's price, and whether it repeats the previous fill exactly. A sweep walks the
    /// book one way; now and then a fill of it repeats the previous one.
    fn next_price(&mut self, in_sweep: bool) -> (i64, bool) {
        let step: i64 = match self.rng.gen_range(0..100) {
            0..=29 => -1,
            30..=69 => 0,
            70..=98 => 1,
            _ => self.rng.gen_range(-10..=10),
        };
        let repeat = in_sweep && self.rng.gen_ratio(1, 8);
        let last = self.prices[self.symbol];
        let price = if repeat {
            last
        } else if in_sweep {
            (last - CENT).max(CENT)
        } else {
            (last + step * CENT).max(CENT)
        };
        self.prices[self.symbol] = price;
        (price, repeat)
    }

    /// Odd lots, round lots and blocks; a repeated fill keeps the previous size.
    fn next_size(&mut self, repeat: bool) -> u32 {
        let size = if repeat {
            self.last_size
        } else {
            match self.rng.gen_range(0..10) {
                0..=5 => self.rng.gen_range(1..100),
                6..=8 => 100 * self.rng.gen_range(1..=5),
                _ => self.rng.gen_range(1000..10000),
            }
        };
        self.last_size = size;
        size
    }
}

/// Activity is skewed: symbol k trades about 1/(k+1)^0.8 as often as the first. The
/// cumulative shares, the last about 1.
fn activity(symbols: usize) -> Vec<f64> {
    let weights: Vec<f64> = (0..symbols)
        .map(|k| 1.0 / ((k + 1) as f64).powf(0.8))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    cumulative
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_distinct_and_start_with_wgrx() {
        let mut rng = StdRng::seed_from_u64(7);
        let s = symbols(500, &mut rng);
        assert_eq!(s.len(), 500);
        assert_eq!(s[0], "WGRX");
        let unique: std::collections::HashSet<_> = s.iter().collect();
        assert_eq!(unique.len(), 500);
    }

    #[test]
    fn too_many_symbols_or_a_day_before_1980_is_a_usage_error_and_writes_nothing() {
        let out = std::env::temp_dir().join(format!("tradebars-gen-{}.dbn", std::process::id()));
        let spec = |symbols, date| GenerateSpec {
            symbols,
            trades: 10,
            seed: 1,
            date,
        };
        let day = time::macros::date!(2025 - 10 - 24);
        for bad in [
            spec(MAX_SYMBOLS + 1, day),
            spec(5, time::macros::date!(1979 - 12 - 31)),
        ] {
            let e = generate(&bad, &out, |_| {}).expect_err("refused");
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(!out.exists(), "{e}: a file was written");
        }
        generate(&spec(5, time::macros::date!(1980 - 01 - 01)), &out, |_| {})
            .expect("1980 is fine");
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn the_session_opens_at_half_past_two_utc() {
        let d = time::macros::date!(2025 - 10 - 24);
        assert_eq!(session_start_ns(d), 1_761_316_200 * 1_000_000_000);
    }
}

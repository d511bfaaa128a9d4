//! Synthetic TRADES data for demos and benchmarks: real DBN with symbology, many symbols with
//! skewed activity, random-walk prices on a cent grid, bursty arrivals (quiet and busy
//! spells, sweeps of several trades in the same nanosecond). Deterministic for a given seed.

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

/// Ticker-like symbols: WGRX (the screener's example) first, then distinct 3-4 letter names.
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
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let names = symbols(spec.symbols, &mut rng);
    let start = session_start_ns(spec.date);
    let end = start + SESSION_SECS * 1_000_000_000;
    let next_day = spec.date.next_day().unwrap_or(spec.date);
    let mappings = names
        .iter()
        .enumerate()
        .map(|(i, s)| SymbolMapping {
            raw_symbol: s.clone(),
            intervals: vec![MappingInterval {
                start_date: spec.date,
                end_date: next_day,
                symbol: (1000 + i).to_string(),
            }],
        })
        .collect();
    let metadata = Metadata::builder()
        .dataset(DATASET.to_string())
        .schema(Some(Schema::Trades))
        .start(start as u64)
        .end(NonZeroU64::new(end as u64))
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .symbols(names.clone())
        .mappings(mappings)
        .build();
    let file = File::create(out).map_err(|e| FeederError::io(out, e))?;
    let writer = BufWriter::with_capacity(1 << 20, file);
    let zstd = out.extension().is_some_and(|e| e == "zst");
    let enc_err = |e: dbn::Error| FeederError::Decode {
        file: out.to_path_buf(),
        msg: format!("writing DBN: {e}"),
    };
    let sink: Box<dyn Write> = if zstd {
        let z =
            zstd::stream::write::Encoder::new(writer, 3).map_err(|e| FeederError::io(out, e))?;
        Box::new(z.auto_finish())
    } else {
        Box::new(writer)
    };
    let mut encoder = Encoder::new(sink, &metadata).map_err(enc_err)?;

    // Activity is skewed: symbol k trades about 1/(k+1)^0.8 as often as the first.
    let weights: Vec<f64> = (0..names.len())
        .map(|k| 1.0 / ((k + 1) as f64).powf(0.8))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let mut prices: Vec<i64> = (0..names.len())
        .map(|_| (rng.gen_range(1.0f64..6.2).exp() * 100.0).round() as i64 * CENT)
        .collect();
    // Busy and quiet spells: the mean gap is scaled so the session is filled on average.
    let spells = [(0.25, 0.2), (0.5, 1.0), (0.25, 4.0)];
    let mean_factor: f64 = spells.iter().map(|(p, m)| p * m).sum();
    let ns_per_unit = (end - start) as f64 / spec.trades as f64 / mean_factor;
    let mut spell_left = 0u32;
    let mut spell_factor = 1.0;
    let mut clock = start as f64;
    let mut sequence: u32 = 1_000;
    let mut sweep_left = 0u32;
    let mut latency = 0i64;
    let mut last_size = 0u32;
    let mut symbol = 0usize;
    let mut made = Generated {
        symbols: names.len(),
        ..Default::default()
    };
    for i in 0..spec.trades {
        let in_sweep = sweep_left > 0;
        if in_sweep {
            sweep_left -= 1; // same symbol, same ts_recv, same sequence
        } else {
            if spell_left == 0 {
                let r: f64 = rng.gen();
                let mut p = 0.0;
                for (prob, factor) in spells {
                    p += prob;
                    if r <= p {
                        spell_factor = 1.0 / factor;
                        break;
                    }
                }
                spell_left = rng.gen_range(50..2000);
            }
            spell_left -= 1;
            let gap = -rng.gen::<f64>().max(1e-12).ln() * spell_factor * ns_per_unit;
            clock += gap;
            let r: f64 = rng.gen();
            symbol = cumulative.partition_point(|c| *c < r).min(names.len() - 1);
            if rng.gen_ratio(1, 40) {
                sweep_left = rng.gen_range(1..5);
            }
        }
        // The clock is receipt time: Databento delivers in ts_recv order. The exchange
        // stamped the trade a little earlier, now and then a good deal earlier (a late
        // print), so some trades fall in an earlier minute by ts_event than by ts_recv.
        // Never past the session's end, and never a pile-up at it: past the ceiling, one
        // nanosecond apart.
        let ceiling = end - 1 - (spec.trades - i) as i64;
        let ts_recv = (clock as i64).min(ceiling);
        if !in_sweep {
            latency = if rng.gen_ratio(1, 100) {
                rng.gen_range(50_000..3_000_000_000) // a print reported late, up to 3 s
            } else {
                rng.gen_range(1_000..50_000)
            };
        }
        let ts_event = ts_recv - latency;
        let step: i64 = match rng.gen_range(0..100) {
            0..=29 => -1,
            30..=69 => 0,
            70..=98 => 1,
            _ => rng.gen_range(-10..=10),
        };
        // A sweep walks the book one way; now and then a fill repeats the previous one exactly.
        let repeat = in_sweep && rng.gen_ratio(1, 8);
        let price = if repeat {
            prices[symbol]
        } else if in_sweep {
            (prices[symbol] - CENT).max(CENT)
        } else {
            (prices[symbol] + step * CENT).max(CENT)
        };
        prices[symbol] = price;
        let size: u32 = if repeat {
            last_size
        } else {
            match rng.gen_range(0..10) {
                0..=5 => rng.gen_range(1..100),
                6..=8 => 100 * rng.gen_range(1..=5),
                _ => rng.gen_range(1000..10000),
            }
        };
        last_size = size;
        if !in_sweep {
            sequence = sequence.wrapping_add(1);
        }
        let rec = TradeMsg {
            hd: RecordHeader::new::<TradeMsg>(
                dbn::rtype::MBP_0,
                PUBLISHER_ID,
                1000 + symbol as u32,
                ts_event as u64,
            ),
            price,
            size,
            action: b'T' as std::ffi::c_char,
            side: [b'A', b'B', b'N'][rng.gen_range(0..3)] as std::ffi::c_char,
            flags: FlagSet::empty(),
            depth: 0,
            ts_recv: ts_recv as u64,
            ts_in_delta: 0,
            sequence,
        };
        encoder.encode_record(&rec).map_err(enc_err)?;
        if made.trades == 0 {
            made.first_ts = ts_recv as u64;
        }
        made.trades += 1;
        made.last_ts = ts_recv as u64;
        if i % 100_000 == 0 {
            progress(i);
        }
    }
    encoder.flush().map_err(enc_err)?;
    progress(spec.trades);
    Ok(made)
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
    fn the_session_opens_at_half_past_two_utc() {
        let d = time::macros::date!(2025 - 10 - 24);
        assert_eq!(session_start_ns(d), 1_761_316_200 * 1_000_000_000);
    }
}

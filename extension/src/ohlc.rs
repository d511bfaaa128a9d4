//! The bar of one symbol and one minute, as plain Rust, and the `ohlcv` aggregate over it.
//!
//! Prices stay fixed-point integers (Databento's 1e-9 units) all the way to `price_bars`,
//! where SQL turns them into exact `numeric`: no float ever touches a price.
//!
//! Open and close are decided by the trade's place in the market's own order, never by
//! arrival: the key is (`ts_event`, `sequence`, `publisher_id`), and the price breaks what
//! ties remain, so every way of splitting the same trades gives the same bar (the state is
//! a commutative monoid; `merge` is what parallel query and Citus call to combine partials).

use pgrx::prelude::*;
use pgrx::{pg_sys, Internal, PgTupleDesc};

pub use tradebars_contract::UNDEF_PRICE;
use tradebars_contract::{reject, MAX_SIZE};

/// Where a trade stands in the market's order: event time, then the publisher's sequence
/// (sequence numbers are per publisher, so the publisher id breaks ties between venues).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TradeKey {
    pub ts_event: i64,
    /// `sequence << 16 | publisher_id`: both are unsigned and narrow in DBN (u32, u16).
    pub seq: i64,
}

impl TradeKey {
    pub fn new(ts_event: i64, sequence: i64, publisher_id: i64) -> Self {
        Self {
            ts_event,
            seq: (sequence << 16) | (publisher_id & 0xFFFF),
        }
    }
}

/// One bar being built. `count == 0` means no valid trade yet (open/close are then unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bar {
    pub open_key: TradeKey,
    pub open: i64,
    pub close_key: TradeKey,
    pub close: i64,
    pub high: i64,
    pub low: i64,
    pub volume: i64,
    pub count: i64,
    /// Sum of price * size in fixed-point price units: exact, for VWAP.
    pub notional: i128,
    /// Trades seen but not counted (undefined price, size not positive).
    pub rejected: i64,
}

/// Why a trade is not counted in a bar; the SQL side uses the same rule to set it aside.
/// Databento's sizes are `u32`: a larger one is not a Databento trade.
pub fn reject_reason(price: i64, size: i64) -> Option<&'static str> {
    if price == UNDEF_PRICE {
        Some(reject::UNDEFINED_PRICE)
    } else if size <= 0 {
        Some(reject::SIZE_NOT_POSITIVE)
    } else if size > MAX_SIZE {
        Some(reject::SIZE_OUT_OF_RANGE)
    } else {
        None
    }
}

/// A bar whose volume or trade count no longer fits: an error, never a wrapped number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ohlcv: the bar's volume or trade count overflows bigint")
    }
}

impl Bar {
    pub fn add(&mut self, key: TradeKey, price: i64, size: i64) -> Result<(), Overflow> {
        if reject_reason(price, size).is_some() {
            self.rejected += 1;
            return Ok(());
        }
        let one = Bar {
            open_key: key,
            open: price,
            close_key: key,
            close: price,
            high: price,
            low: price,
            volume: size,
            count: 1,
            notional: i128::from(price) * i128::from(size),
            rejected: 0,
        };
        self.merge(&one)
    }

    pub fn merge(&mut self, other: &Bar) -> Result<(), Overflow> {
        self.rejected = self.rejected.checked_add(other.rejected).ok_or(Overflow)?;
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            let rejected = self.rejected;
            *self = *other;
            self.rejected = rejected;
            return Ok(());
        }
        // Checked first, so a failed merge leaves the bar as it was.
        let volume = self.volume.checked_add(other.volume).ok_or(Overflow)?;
        let count = self.count.checked_add(other.count).ok_or(Overflow)?;
        let notional = self.notional.checked_add(other.notional).ok_or(Overflow)?;
        if (other.open_key, other.open) < (self.open_key, self.open) {
            self.open_key = other.open_key;
            self.open = other.open;
        }
        if (other.close_key, other.close) > (self.close_key, self.close) {
            self.close_key = other.close_key;
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        (self.volume, self.count, self.notional) = (volume, count, notional);
        Ok(())
    }

    const SERIAL_LEN: usize = 8 * 12 + 16;

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SERIAL_LEN);
        for v in [
            self.open_key.ts_event,
            self.open_key.seq,
            self.open,
            self.close_key.ts_event,
            self.close_key.seq,
            self.close,
            self.high,
            self.low,
            self.volume,
            self.count,
            self.rejected,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.notional.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // room for a field without a format change
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Bar> {
        if bytes.len() != Self::SERIAL_LEN {
            return None;
        }
        let word =
            |i: usize| i64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let notional = i128::from_le_bytes(bytes[88..104].try_into().ok()?);
        Some(Bar {
            open_key: TradeKey {
                ts_event: word(0),
                seq: word(1),
            },
            open: word(2),
            close_key: TradeKey {
                ts_event: word(3),
                seq: word(4),
            },
            close: word(5),
            high: word(6),
            low: word(7),
            volume: word(8),
            count: word(9),
            rejected: word(10),
            notional,
        })
    }
}

// The aggregate's functions. `internal` state lives in the aggregate's memory context.

/// A bar allocated with plain palloc: `Bar` is `Copy` with nothing to drop, so it needs no
/// drop callback per group (pgrx's `Internal::new` registers one), which hash aggregation
/// over hundreds of thousands of groups would pay for.
unsafe fn palloc_bar(context: pg_sys::MemoryContext, bar: Bar) -> Internal {
    unsafe {
        // palloc aligns to 8 bytes; Bar holds an i128, which Rust aligns to 16.
        let align = std::mem::align_of::<Bar>();
        let raw = pg_sys::MemoryContextAlloc(context, std::mem::size_of::<Bar>() + align) as usize;
        let ptr = ((raw + align - 1) & !(align - 1)) as *mut Bar;
        ptr.write(bar);
        Internal::from(Some(pg_sys::Datum::from(ptr)))
    }
}

unsafe fn state_mut(state: &mut Internal, fcinfo: pg_sys::FunctionCallInfo) -> &mut Bar {
    if !state.initialized() {
        let mut agg_context: pg_sys::MemoryContext = std::ptr::null_mut();
        if unsafe { pg_sys::AggCheckCallContext(fcinfo, &mut agg_context) } == 0 {
            pgrx::error!("ohlcv state functions can only be called by the ohlcv aggregate");
        }
        // The state must outlive this call: it lives in the aggregate's context.
        *state = unsafe { palloc_bar(agg_context, Bar::default()) };
    }
    unsafe { state.get_mut::<Bar>() }.unwrap_or_else(|| pgrx::error!("ohlcv: null aggregate state"))
}

#[pg_extern(immutable, parallel_safe, schema = "tradebars_internal")]
fn ohlcv_trans(
    mut state: Internal,
    ts_event: Option<i64>,
    sequence: Option<i64>,
    publisher_id: Option<i32>,
    price: Option<i64>,
    size: Option<i64>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let bar = unsafe { state_mut(&mut state, fcinfo) };
    match (ts_event, price, size) {
        (Some(ts), Some(px), Some(sz)) => {
            let key = TradeKey::new(
                ts,
                sequence.unwrap_or(0),
                i64::from(publisher_id.unwrap_or(0)),
            );
            if let Err(e) = bar.add(key, px, sz) {
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                    e.to_string()
                );
            }
        }
        _ => bar.rejected += 1,
    }
    state
}

#[pg_extern(immutable, parallel_safe, schema = "tradebars_internal")]
fn ohlcv_combine(
    state: Option<Internal>,
    other: Option<Internal>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    // Not strict: PostgreSQL does not allow a strict combine function on `internal` state.
    let mut state = state.unwrap_or_default();
    let other = other.and_then(|o| unsafe { o.get::<Bar>().copied() });
    if let Some(other) = other {
        if let Err(e) = unsafe { state_mut(&mut state, fcinfo) }.merge(&other) {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                e.to_string()
            );
        }
    }
    state
}

#[pg_extern(immutable, parallel_safe, strict, schema = "tradebars_internal")]
fn ohlcv_serialize(state: Internal) -> Vec<u8> {
    unsafe { state.get::<Bar>() }
        .copied()
        .unwrap_or_default()
        .to_bytes()
}

#[pg_extern(immutable, parallel_safe, strict, schema = "tradebars_internal")]
fn ohlcv_deserialize(bytes: &[u8], _unused: Internal) -> Internal {
    match Bar::from_bytes(bytes) {
        Some(bar) => unsafe { palloc_bar(pg_sys::CurrentMemoryContext, bar) },
        None => pgrx::error!(
            "ohlcv: serialized state has {} bytes, not a bar",
            bytes.len()
        ),
    }
}

/// The result row's descriptor, looked up once per query and kept in the call's `fn_extra`:
/// looking the type up by name for each of a rollup's hundreds of thousands of bars cost
/// more than aggregating their trades.
unsafe fn result_tupdesc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if (*flinfo).fn_extra.is_null() {
            let previous = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
            let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
            let kind = pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc);
            if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || tupdesc.is_null() {
                pg_sys::MemoryContextSwitchTo(previous);
                pgrx::error!("ohlcv: the final function must return the composite ohlcv_bar");
            }
            (*flinfo).fn_extra = pg_sys::BlessTupleDesc(tupdesc).cast();
            pg_sys::MemoryContextSwitchTo(previous);
        }
        (*flinfo).fn_extra.cast()
    }
}

#[pg_extern(
    immutable,
    parallel_safe,
    schema = "tradebars_internal",
    requires = ["ohlcv_bar_type"]
)]
fn ohlcv_final(
    state: Internal,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<pgrx::composite_type!('static, "ohlcv_bar")> {
    let bar = unsafe { state.get::<Bar>() }.copied()?;
    let valid = bar.count > 0;
    let when = |v: i64| if valid { v.into_datum() } else { None };
    // In the order of CREATE TYPE ohlcv_bar.
    let fields = [
        when(bar.open),
        when(bar.high),
        when(bar.low),
        when(bar.close),
        when(bar.open_key.ts_event),
        when(bar.open_key.seq),
        when(bar.close_key.ts_event),
        when(bar.close_key.seq),
        bar.volume.into_datum(),
        bar.count.into_datum(),
        if valid {
            AnyNumeric::from(bar.notional).into_datum()
        } else {
            None
        },
        bar.rejected.into_datum(),
    ];
    let tupdesc = unsafe { PgTupleDesc::from_pg_unchecked(result_tupdesc(fcinfo)) };
    let row = unsafe { PgHeapTuple::from_datums(tupdesc, fields) }
        .unwrap_or_else(|e| pgrx::error!("ohlcv: building the bar: {e}"));
    Some(row)
}

pgrx::extension_sql!(
    r#"
-- The parts of one bar, in fixed-point price units (1e-9), as the ohlcv aggregate returns it.
CREATE TYPE ohlcv_bar AS (
    open_px bigint, high_px bigint, low_px bigint, close_px bigint,
    open_ts bigint, open_seq bigint, close_ts bigint, close_seq bigint,
    volume bigint, trade_count bigint, notional_px numeric, rejected bigint
);
"#,
    name = "ohlcv_bar_type",
);

pgrx::extension_sql!(
    r#"
-- ohlcv(ts_event, sequence, publisher_id, price, size): one bar from trades in any order.
-- Parallel safe with combine/serialize functions, so parallel query and Citus push it down.
CREATE AGGREGATE ohlcv(bigint, bigint, integer, bigint, bigint) (
    SFUNC = tradebars_internal.ohlcv_trans,
    STYPE = internal,
    SSPACE = 144, -- size_of::<Bar>() + alignment: lets the planner size a hash aggregate
    FINALFUNC = tradebars_internal.ohlcv_final,
    COMBINEFUNC = tradebars_internal.ohlcv_combine,
    SERIALFUNC = tradebars_internal.ohlcv_serialize,
    DESERIALFUNC = tradebars_internal.ohlcv_deserialize,
    PARALLEL = SAFE
);
"#,
    name = "ohlcv_aggregate",
    requires = [
        ohlcv_trans,
        ohlcv_final,
        ohlcv_combine,
        ohlcv_serialize,
        ohlcv_deserialize
    ],
);

pgrx::extension_sql_file!(
    "../../sql/rollup_aggregate.sql",
    name = "rollup_aggregate",
    requires = ["ohlcv_aggregate"],
);

#[cfg(test)]
mod tests {
    use super::*;

    fn bar_of(trades: &[(i64, i64, i64, i64, i64)]) -> Bar {
        let mut bar = Bar::default();
        for &(ts, seq, publisher, price, size) in trades {
            bar.add(TradeKey::new(ts, seq, publisher), price, size)
                .expect("no overflow");
        }
        bar
    }

    const TRADES: [(i64, i64, i64, i64, i64); 7] = [
        (100, 5, 1, 4_000_250_000_000, 3),
        (90, 9, 1, 4_000_000_000_000, 1), // earliest event: the open, though it came second
        (100, 5, 2, 4_001_000_000_000, 2), // same time and sequence, other venue
        (300, 1, 1, 3_999_000_000_000, 7),
        (300, 1, 1, 4_002_000_000_000, 1), // exact tie on the key: price decides, deterministically
        (200, 2, 1, UNDEF_PRICE, 5),
        (250, 3, 1, 4_000_000_000_000, 0),
    ];

    #[test]
    fn bar_follows_event_order_not_arrival() {
        let bar = bar_of(&TRADES);
        assert_eq!(bar.open, 4_000_000_000_000);
        assert_eq!(bar.close, 4_002_000_000_000);
        assert_eq!(bar.high, 4_002_000_000_000);
        assert_eq!(bar.low, 3_999_000_000_000);
        assert_eq!(bar.volume, 14);
        assert_eq!(bar.count, 5);
        assert_eq!(bar.rejected, 2);
        assert_eq!(
            bar.notional,
            4_000_250_000_000i128 * 3
                + 4_000_000_000_000
                + 4_001_000_000_000 * 2
                + 3_999_000_000_000 * 7
                + 4_002_000_000_000
        );
    }

    #[test]
    fn every_split_and_order_gives_the_same_bar() {
        let whole = bar_of(&TRADES);
        // all rotations, each cut at every point, merged in both orders
        for rot in 0..TRADES.len() {
            let mut trades = TRADES.to_vec();
            trades.rotate_left(rot);
            for cut in 0..=trades.len() {
                let (a, b) = trades.split_at(cut);
                let (mut left, right) = (bar_of(a), bar_of(b));
                let mut right_first = right;
                right_first.merge(&left).expect("no overflow");
                left.merge(&right).expect("no overflow");
                assert_eq!(left, whole, "rotation {rot}, cut {cut}");
                assert_eq!(right_first, whole, "rotation {rot}, cut {cut}, reversed");
            }
        }
    }

    #[test]
    fn empty_and_all_rejected_bars_have_no_prices() {
        let bar = bar_of(&[(1, 1, 1, UNDEF_PRICE, 1), (2, 1, 1, 5, 0)]);
        assert_eq!(bar.count, 0);
        assert_eq!(bar.rejected, 2);
        let mut merged = Bar::default();
        merged.merge(&bar).expect("no overflow");
        merged
            .merge(&bar_of(&[(3, 1, 1, 7, 2)]))
            .expect("no overflow");
        assert_eq!(
            (merged.open, merged.close, merged.count, merged.rejected),
            (7, 7, 1, 2)
        );
    }

    #[test]
    fn negative_prices_are_valid() {
        let bar = bar_of(&[(1, 1, 1, -2_500_000_000, 4), (2, 1, 1, -1_000_000_000, 1)]);
        assert_eq!(
            (bar.open, bar.low, bar.high, bar.close),
            (
                -2_500_000_000,
                -2_500_000_000,
                -1_000_000_000,
                -1_000_000_000
            )
        );
        assert_eq!(bar.notional, -11_000_000_000);
    }

    #[test]
    fn the_declared_state_size_covers_a_bar() {
        // CREATE AGGREGATE ohlcv (... SSPACE = 144 ...)
        assert!(std::mem::size_of::<Bar>() + std::mem::align_of::<Bar>() <= 144);
    }

    #[test]
    fn serialization_round_trips_and_refuses_garbage() {
        let bar = bar_of(&TRADES);
        assert_eq!(Bar::from_bytes(&bar.to_bytes()), Some(bar));
        assert_eq!(Bar::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn sizes_beyond_u32_are_rejected_and_a_volume_overflow_is_an_error() {
        let bar = bar_of(&[(1, 1, 1, 5, 5_000_000_000_000_000_000), (2, 1, 1, 5, 2)]);
        assert_eq!((bar.count, bar.volume, bar.rejected), (1, 2, 1));
        let mut big = bar_of(&[(1, 1, 1, 5, i64::from(u32::MAX))]);
        big.volume = i64::MAX - 1;
        let before = big;
        assert_eq!(big.merge(&bar_of(&[(2, 1, 1, 5, 2)])), Err(Overflow));
        assert_eq!(big, before, "a failed merge changes nothing");
    }

    #[test]
    fn notional_does_not_overflow_on_extreme_trades() {
        let bar = bar_of(&[
            (1, 1, 1, i64::MAX - 1, u32::MAX as i64),
            (2, 1, 1, i64::MAX - 1, u32::MAX as i64),
        ]);
        assert_eq!(
            bar.notional,
            2 * i128::from(i64::MAX - 1) * i128::from(u32::MAX)
        );
    }
}

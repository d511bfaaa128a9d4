//! PostgreSQL's binary COPY format for staged trades, encoded where the trades are decoded,
//! so the database connection only pumps finished bytes (no per-row dynamic dispatch).

use bytes::{BufMut, BytesMut};

use crate::trade::Trade;

/// The staging columns, in the order `encode_trade` writes them.
pub use tradebars_contract::STAGING_COLUMNS as COLUMNS;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

pub fn encode_header(buf: &mut BytesMut) {
    buf.put_slice(SIGNATURE);
    buf.put_i32(0); // flags: no OIDs
    buf.put_i32(0); // header extension length
}

pub fn encode_trailer(buf: &mut BytesMut) {
    buf.put_i16(-1);
}

fn put_i64(buf: &mut BytesMut, v: i64) {
    buf.put_i32(8);
    buf.put_i64(v);
}

/// Times beyond i64 (Databento's undefined timestamp is u64::MAX) are staged as -1: the
/// rollup sets them aside as 'ts_event out of range'.
fn ts(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(-1)
}

/// The columns of `official_bars_staging`, in the order `encode_official_bar` writes them.
pub use tradebars_contract::OFFICIAL_COLUMNS;

/// One row of `official_bars_staging`: a Databento OHLCV bar and its symbol ('' unmapped).
/// Out-of-range times and volumes are staged as -1, which the merge rejects.
pub fn encode_official_bar(buf: &mut BytesMut, symbol: &str, bar: &dbn::OhlcvMsg) {
    let symbol = if symbol.as_bytes().contains(&0) {
        ""
    } else {
        symbol
    };
    buf.put_i16(7);
    buf.put_i32(symbol.len() as i32);
    buf.put_slice(symbol.as_bytes());
    put_i64(buf, ts(bar.hd.ts_event));
    for price in [bar.open, bar.high, bar.low, bar.close] {
        put_i64(buf, price);
    }
    put_i64(buf, i64::try_from(bar.volume).unwrap_or(-1));
}

/// One staging row: the trade, and `ord`, its place among the trades of its source that share
/// its `ts_recv`, in delivery order (see identity.rs).
pub fn encode_trade(buf: &mut BytesMut, trade: &Trade, ord: u32) {
    // A NUL cannot be stored in text; such a symbol is as good as none.
    let symbol = if trade.symbol.as_bytes().contains(&0) {
        ""
    } else {
        trade.symbol
    };
    let t = &trade.event;
    buf.put_i16(11);
    buf.put_i32(symbol.len() as i32);
    buf.put_slice(symbol.as_bytes());
    put_i64(buf, i64::from(t.instrument_id));
    buf.put_i32(4);
    buf.put_i32(i32::from(t.publisher_id));
    put_i64(buf, ts(t.ts_event));
    put_i64(buf, ts(t.ts_recv));
    put_i64(buf, i64::from(t.sequence));
    put_i64(buf, t.price);
    put_i64(buf, i64::from(t.size));
    buf.put_i32(1);
    buf.put_u8(t.side);
    buf.put_i32(2);
    buf.put_i16(i16::from(t.flags));
    buf.put_i32(4);
    buf.put_i32(i32::try_from(ord).unwrap_or(i32::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contracts_sentinel_is_dbns() {
        assert_eq!(tradebars_contract::UNDEF_PRICE, dbn::UNDEF_PRICE);
        assert_eq!(tradebars_contract::MAX_SIZE, i64::from(u32::MAX));
    }

    #[test]
    fn a_row_has_eleven_fields_of_the_right_widths() {
        let t = Trade {
            symbol: "WGRX",
            event: crate::trade::TradeEvent {
                instrument_id: 7,
                publisher_id: 2,
                ts_event: u64::MAX,
                ts_recv: 5,
                sequence: 9,
                price: -1,
                size: 3,
                side: b'A',
                flags: 130,
            },
        };
        let mut buf = BytesMut::new();
        encode_trade(&mut buf, &t, 3);
        assert_eq!(&buf[0..2], &11i16.to_be_bytes());
        assert_eq!(&buf[2..6], &4i32.to_be_bytes());
        assert_eq!(&buf[6..10], b"WGRX");
        // symbol + 6 int8 + int4 + "char" + int2 + int4, each with its length word
        assert_eq!(buf.len(), 2 + (4 + 4) + 6 * 12 + 8 + 5 + 6 + 8);
        assert_eq!(&buf[buf.len() - 4..], &3i32.to_be_bytes());
        // the undefined ts_event is staged as -1
        assert_eq!(&buf[34..42], &(-1i64).to_be_bytes());
        let nul = Trade {
            symbol: "A\0B",
            ..t
        };
        let mut buf = BytesMut::new();
        encode_trade(&mut buf, &nul, 0);
        assert_eq!(&buf[2..6], &0i32.to_be_bytes());
    }

    #[test]
    fn header_and_trailer_follow_the_format() {
        let mut buf = BytesMut::new();
        encode_header(&mut buf);
        encode_trailer(&mut buf);
        assert_eq!(&buf[..11], SIGNATURE);
        assert_eq!(buf.len(), 11 + 8 + 2);
        assert_eq!(&buf[19..], &(-1i16).to_be_bytes());
    }
}

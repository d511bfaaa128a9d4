//! The one trade type the feeder speaks, and how a DBN record becomes one.

use dbn::{ErrorMsg, MboMsg, Mbp1Msg, OhlcvMsg, RecordRef, SymbolMappingMsg, SystemMsg, TradeMsg};

/// A trade as staged: Databento's own fields and units (prices fixed-point 1e-9, times in
/// nanoseconds since the UNIX epoch, UTC), and its symbol, borrowed from the symbol map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trade<'a> {
    pub symbol: &'a str,
    pub event: TradeEvent,
}

/// The fields of a trade event, before its symbol is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeEvent {
    pub instrument_id: u32,
    pub publisher_id: u16,
    pub ts_event: u64,
    pub ts_recv: u64,
    pub sequence: u32,
    pub price: i64,
    pub size: u32,
    pub side: u8,
    pub flags: u8,
}

impl TradeEvent {
    pub fn with_symbol(self, symbol: &str) -> Trade<'_> {
        Trade {
            symbol,
            event: self,
        }
    }
}

/// What a record is, for the summary of what was read and why it was not staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Trade,
    /// A book event of MBO or MBP-1 data that is not a trade: the action's letter.
    BookEvent(u8),
    SymbolMapping,
    System,
    Error,
    Other(u8),
}

impl RecordKind {
    pub fn describe(self) -> String {
        match self {
            RecordKind::Trade => "trades".into(),
            RecordKind::BookEvent(b'F') => {
                "fills (F: the resting side of a trade already counted as T)".into()
            }
            RecordKind::BookEvent(b'A') => "adds (A)".into(),
            RecordKind::BookEvent(b'C') => "cancels (C)".into(),
            RecordKind::BookEvent(b'M') => "modifies (M)".into(),
            RecordKind::BookEvent(b'R') => "book clears (R)".into(),
            RecordKind::BookEvent(a) => format!("book events ({})", char::from(a)),
            RecordKind::SymbolMapping => "symbol mappings".into(),
            RecordKind::System => "system messages".into(),
            RecordKind::Error => "gateway errors".into(),
            RecordKind::Other(rtype) => format!("records of rtype {rtype:#04x}"),
        }
    }
}

/// Why `rec` cannot be read, if it cannot: its length is no whole number of words, or its
/// rtype names a record the feeder reads (a trade or book event, a symbol mapping, a system
/// or error message) but it is shorter than that record. dbn's `get` panics on such a
/// record; a corrupt file or stream is an error instead.
pub fn malformed(rec: &RecordRef) -> Option<String> {
    // Every record is a whole number of 8-byte words: after a record that is not, the next
    // one starts unaligned, and dbn's decoder panics on it.
    let length = rec.header().record_size();
    if !length.is_multiple_of(8) {
        return Some(format!(
            "a record of rtype {:#04x} is {length} bytes long, not a whole number of 8-byte words",
            rec.header().rtype
        ));
    }
    macro_rules! too_short {
        ($($t:ty),*) => {$(
            if rec.has::<$t>() && rec.try_get::<$t>().is_err() {
                return Some(format!(
                    "a record of rtype {:#04x} is {} bytes long, shorter than the {} bytes it must have",
                    rec.header().rtype,
                    rec.header().record_size(),
                    std::mem::size_of::<$t>()
                ));
            }
        )*};
    }
    too_short!(
        TradeMsg,
        Mbp1Msg,
        MboMsg,
        OhlcvMsg,
        SymbolMappingMsg,
        SystemMsg,
        ErrorMsg
    );
    None
}

/// Only trade events count: every TRADES record, and the records of TBBO, MBP-1 and MBO data
/// whose action is 'T'. An MBO fill ('F') is the resting side of the same execution.
pub fn classify(rec: &RecordRef) -> (RecordKind, Option<TradeEvent>) {
    // MBP-1 (and TBBO) and MBO records carry a trade's fields under the same names.
    macro_rules! trade_of {
        ($m:expr) => {
            event(
                &$m.hd,
                $m.ts_recv,
                $m.sequence,
                $m.price,
                $m.size,
                $m.side,
                $m.flags.raw(),
            )
        };
    }
    if let Some(t) = rec.get::<TradeMsg>() {
        return (RecordKind::Trade, Some(trade_of!(t)));
    }
    if let Some(m) = rec.get::<Mbp1Msg>() {
        return book(m.action as u8, || trade_of!(m));
    }
    if let Some(m) = rec.get::<MboMsg>() {
        return book(m.action as u8, || trade_of!(m));
    }
    let rtype = rec.header().rtype;
    let kind = match rtype {
        dbn::rtype::SYMBOL_MAPPING => RecordKind::SymbolMapping,
        dbn::rtype::SYSTEM => RecordKind::System,
        dbn::rtype::ERROR => RecordKind::Error,
        other => RecordKind::Other(other),
    };
    (kind, None)
}

fn book(action: u8, make: impl FnOnce() -> TradeEvent) -> (RecordKind, Option<TradeEvent>) {
    if action == b'T' {
        (RecordKind::Trade, Some(make()))
    } else {
        (RecordKind::BookEvent(action), None)
    }
}

fn event(
    hd: &dbn::RecordHeader,
    ts_recv: u64,
    sequence: u32,
    price: i64,
    size: u32,
    side: std::ffi::c_char,
    flags: u8,
) -> TradeEvent {
    TradeEvent {
        instrument_id: hd.instrument_id,
        publisher_id: hd.publisher_id,
        ts_event: hd.ts_event,
        ts_recv,
        sequence,
        price,
        size,
        side: side as u8,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbn::{rtype, FlagSet, RecordHeader};

    fn mbo(action: u8) -> MboMsg {
        MboMsg {
            hd: RecordHeader::new::<MboMsg>(rtype::MBO, 1, 17077, 10),
            action: action as std::ffi::c_char,
            price: 4_783_250_000_000,
            size: 3,
            side: b'B' as std::ffi::c_char,
            flags: FlagSet::default(),
            ..Default::default()
        }
    }

    #[test]
    fn only_trade_actions_are_trades() {
        let t = mbo(b'T');
        let (kind, ev) = classify(&RecordRef::from(&t));
        assert_eq!(kind, RecordKind::Trade);
        let ev = ev.expect("a trade");
        assert_eq!(
            (ev.instrument_id, ev.price, ev.size, ev.side),
            (17077, 4_783_250_000_000, 3, b'B')
        );
        for action in [b'F', b'A', b'C', b'M'] {
            let r = mbo(action);
            let (kind, ev) = classify(&RecordRef::from(&r));
            assert_eq!(kind, RecordKind::BookEvent(action));
            assert!(ev.is_none());
        }
    }

    #[test]
    fn every_trades_record_is_a_trade() {
        let t = TradeMsg {
            hd: RecordHeader::new::<TradeMsg>(rtype::MBP_0, 2, 6155, 99),
            price: 1,
            size: 2,
            sequence: 7,
            ..Default::default()
        };
        let (kind, ev) = classify(&RecordRef::from(&t));
        assert_eq!(kind, RecordKind::Trade);
        assert_eq!(
            ev.map(|e| (e.publisher_id, e.ts_event, e.sequence)),
            Some((2, 99, 7))
        );
    }

    #[test]
    fn a_record_shorter_than_its_rtype_or_not_in_whole_words_is_malformed() {
        // what a decoder hands out: the record's bytes, whatever its header says
        fn as_read(rec: &MboMsg) -> RecordRef<'_> {
            let bytes = unsafe {
                std::slice::from_raw_parts((rec as *const MboMsg).cast::<u8>(), size_of::<MboMsg>())
            };
            unsafe { RecordRef::new(bytes) }
        }
        let whole = mbo(b'T');
        assert_eq!(malformed(&as_read(&whole)), None);
        // the header's first byte is its length in 4-byte words (the field is private)
        let shorten = |rec: &mut MboMsg, words: u8| unsafe {
            *(rec as *mut MboMsg).cast::<u8>() -= words;
        };
        let mut short = mbo(b'T');
        shorten(&mut short, 2); // 8 bytes short
        let why = malformed(&as_read(&short)).expect("short record");
        assert!(why.contains("48 bytes long, shorter than the 56"), "{why}");
        let mut uneven = mbo(b'T');
        shorten(&mut uneven, 1); // 52 bytes
        let why = malformed(&as_read(&uneven)).expect("uneven record");
        assert!(why.contains("52 bytes long, not a whole number"), "{why}");
    }
}

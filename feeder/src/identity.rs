//! Trade identity: which trades of a source are already counted, whoever delivered them.
//!
//! A trade is (publisher, instrument, `ts_recv`, `ord`), where `ord` is its place among the
//! trades of that publisher and instrument sharing its `ts_recv`, in the order Databento
//! delivered them. Databento's time ranges cut on `ts_recv` and never inside such a group, so
//! a live stream, a backfill chunk of any size and a file of any schema number a trade alike.
//!
//! What the database keeps (`trade_coverage`, see sql/identity.sql) is not one row per trade
//! but one per publisher, instrument and `ts_recv` minute for each stretch already staged: its
//! first and last `ts_recv`, how many trades, a digest of them, and the fingerprints of the
//! trades at both ends. A source's trade strictly inside a stretch is already counted; one at
//! an end is matched by fingerprint against the trades stored there (a stretch can end inside
//! a group: a live batch, a stream cut mid-group); one outside every stretch is new. Where a
//! source covers a whole stretch, its trades there must be the same ones (count and digest),
//! or the source is cut mid-group or corrupt: that is an error and nothing of it is staged.
//!
//! Sources must deliver each instrument's trades in `ts_recv` order, as Databento does.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use crate::trade::TradeEvent;

pub use tradebars_contract::NS_PER_MINUTE;

/// Hash maps keyed by small integers, touched once per trade: FxHash-like multiply-shift
/// hashing, several times cheaper than SipHash here (keys are not attacker-chosen).
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Mix>>;

#[derive(Default)]
pub(crate) struct Mix(u64);

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
}

/// Who sequences a trade: the publisher (venue feed) and its instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instrument {
    pub publisher: u16,
    pub instrument: u32,
}

/// What must agree between two sources that deliver the same trade. A fixed mix (not std's
/// hasher, which may change between Rust versions): fingerprints are stored.
pub fn fingerprint(ts_recv: i64, sequence: u32, price: i64, size: u32) -> i64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut h = mix(ts_recv as u64 ^ 0x9e37_79b9_7f4a_7c15);
    h = mix(h ^ u64::from(sequence));
    h = mix(h ^ price as u64);
    h = mix(h ^ u64::from(size));
    h as i64
}

/// A time in ns since the epoch as UTC, to the nanosecond, for messages.
pub fn utc(ns: &i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:9] UTC"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ns))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{ns} ns"))
}

/// One stretch of trades already staged: a row of `trade_coverage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub at: Instrument,
    pub minute: i64,
    pub first: i64,
    pub last: i64,
    pub trades: i64,
    pub digest: i64,
    pub first_group: Vec<i64>,
    pub last_group: Vec<i64>,
    pub source: String,
}

/// What a load changes in `trade_coverage`: stretches it merged away, and the new ones.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub delete: Vec<(Instrument, i64)>,
    pub insert: Vec<Span>,
}

/// A source that cannot be trusted to say which of its trades are already counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("instrument {instrument} (publisher {publisher}): its trades at ts_recv {} differ from those {stored_by} staged (the source is cut inside a group of trades sharing a ts_recv, or corrupt)", utc(.ts_recv))]
    Mismatch {
        publisher: u16,
        instrument: u32,
        ts_recv: i64,
        stored_by: String,
    },
    #[error("instrument {instrument} (publisher {publisher}), ts_recv minute {}: {here} trades here where {stored_by} staged {stored} in the same ts_recv range, or they differ (the source is cut or corrupt)", utc(&(.minute * NS_PER_MINUTE)))]
    Disagrees {
        publisher: u16,
        instrument: u32,
        minute: i64,
        here: i64,
        stored: i64,
        stored_by: String,
    },
    #[error("instrument {instrument} (publisher {publisher}): ts_recv {} comes after {}: trades must be in ts_recv order", utc(.ts_recv), utc(.previous))]
    OutOfOrder {
        publisher: u16,
        instrument: u32,
        ts_recv: i64,
        previous: i64,
    },
    /// Trades outside the minutes whose identity was read for this source (its metadata
    /// declared another range): nothing of it may be staged on that reading. `first` and
    /// `last` are the `ts_recv` range its trades really span, to read again.
    #[error("its trades span ts_recv {} to {}, beyond the range read for it", utc(.first), utc(.last))]
    OutsideRange { first: i64, last: i64 },
}

#[derive(Debug, Clone)]
struct Stored {
    span: Span,
    /// This live session staged up to the stretch's end itself: its trades at `last` that
    /// continue the same group are new.
    owned: bool,
}

/// The trades of one instrument at one `ts_recv` that meet a stored stretch's end, held until
/// the group is complete and can be matched by fingerprint.
#[derive(Debug)]
struct Boundary {
    span: usize,
    trades: Vec<(TradeEvent, u32, i64)>,
}

/// One instrument's reading position: the group at its latest `ts_recv`, and what was seen
/// of it in its current minute (kept here, not in the map of all minutes, so a trade touches
/// only its instrument's entry: the map is written once per instrument and minute).
#[derive(Debug)]
struct Group {
    ts: i64,
    /// The `ord` given last to a trade of this instrument at `ts`: its trades there keep
    /// their order whatever the stream around them does.
    last_ord: Option<u32>,
    boundary: Option<Boundary>,
    lane: Option<(i64, Seen)>,
}

/// What this source delivered of one instrument in one minute, since the last `take_changes`.
#[derive(Debug, Default)]
struct Seen {
    first: i64,
    last: i64,
    first_group: Vec<i64>,
    last_group: Vec<i64>,
    staged: i64,
    staged_digest: i64,
    /// Per stored stretch (index): trades found already counted there, and their digest.
    matched: HashMap<usize, (i64, i64)>,
}

impl Seen {
    fn observe(&mut self, ts: i64, fp: i64, matched: Option<usize>) {
        if self.first_group.is_empty() {
            (self.first, self.last) = (ts, ts);
            self.first_group.push(fp);
            self.last_group.push(fp);
        } else if ts == self.last {
            self.last_group.push(fp);
            if self.first == self.last {
                self.first_group.push(fp);
            }
        } else {
            // Reused, not replaced: most trades start a group of their own.
            self.last = ts;
            self.last_group.clear();
            self.last_group.push(fp);
        }
        match matched {
            Some(i) => {
                let m = self.matched.entry(i).or_default();
                m.0 += 1;
                m.1 = m.1.wrapping_add(fp);
            }
            None => {
                self.staged += 1;
                self.staged_digest = self.staged_digest.wrapping_add(fp);
            }
        }
    }
}

enum Place {
    New,
    Inside(usize),
    AtEnd(usize),
}

/// Decides, trade by trade, what a source stages, and what it adds to `trade_coverage`.
#[derive(Debug)]
pub struct Identity {
    source: String,
    stored: FastMap<(Instrument, i64), Vec<Stored>>,
    groups: FastMap<Instrument, Group>,
    seen: FastMap<(Instrument, i64), Seen>,
    /// Trades received before this are taken as counted (live only: identity before the
    /// horizon is gone, and a live replay reaches back into what was staged).
    skip_before: i64,
    /// The minutes whose stretches were read for this source (inclusive; `None`: all that
    /// it can meet). A trade outside makes the reading useless: see `OutsideRange`.
    minutes: Option<(i64, i64)>,
    /// The `ts_recv` range of every trade pushed, and whether one fell outside `minutes`.
    span: Option<(i64, i64)>,
    outside: bool,
    /// The trade's place among this source's trades sharing its `ts_recv`, in delivery
    /// order: what orders a bar's open and close after `ts_recv`, across publishers too.
    /// `stream_ts` is the latest `ts_recv` yet; `earlier` the next place at the `ts_recv`s
    /// before it (a source may interleave instruments out of overall `ts_recv` order; each
    /// instrument stays in order), the latest `EARLIER_KEPT` of them, ascending.
    stream_ts: i64,
    stream_pos: u32,
    earlier: std::collections::VecDeque<(i64, u32)>,
    pub skipped: u64,
    pub skipped_before_position: u64,
    /// Sources whose trades this one found already counted, and how many.
    pub overlaps: BTreeMap<String, u64>,
}

impl Identity {
    pub fn new(source: &str, spans: Vec<Span>) -> Self {
        let mut stored: FastMap<(Instrument, i64), Vec<Stored>> = FastMap::default();
        for span in spans {
            stored
                .entry((span.at, span.minute))
                .or_default()
                .push(Stored { span, owned: false });
        }
        for list in stored.values_mut() {
            list.sort_by_key(|s| s.span.first);
        }
        Self {
            source: source.to_string(),
            stored,
            groups: FastMap::default(),
            seen: FastMap::default(),
            skip_before: i64::MIN,
            minutes: None,
            span: None,
            outside: false,
            stream_ts: i64::MIN,
            stream_pos: 0,
            earlier: std::collections::VecDeque::new(),
            skipped: 0,
            skipped_before_position: 0,
            overlaps: BTreeMap::new(),
        }
    }

    /// Trades received before `ts` count as already staged (see `skip_before`).
    pub fn skipping_before(mut self, ts: i64) -> Self {
        self.skip_before = ts;
        self
    }

    /// The stretches given to `new` are those of the minutes `first..=last` only: a trade
    /// outside them fails the source with `OutsideRange` (no decision is made on it).
    pub fn reading_minutes(mut self, first: i64, last: i64) -> Self {
        self.minutes = Some((first, last));
        self
    }

    /// Whether a trade fell outside the minutes identity was read for (see `reading_minutes`).
    pub fn outside(&self) -> bool {
        self.outside
    }

    /// Notes `ts` in the range the source spans; false once a trade fell outside `minutes`.
    fn within_reading(&mut self, ts: i64) -> bool {
        self.span = Some(match self.span {
            Some((lo, hi)) => (lo.min(ts), hi.max(ts)),
            None => (ts, ts),
        });
        let minute = ts.div_euclid(NS_PER_MINUTE);
        if let Some((first, last)) = self.minutes {
            self.outside |= minute < first || minute > last;
        }
        !self.outside
    }

    /// The trade's place in the stream among the source's trades sharing its `ts_recv`.
    fn stream_position(&mut self, ts: i64) -> u32 {
        const EARLIER_KEPT: usize = 4096;
        if ts == self.stream_ts {
            self.stream_pos += 1;
            return self.stream_pos;
        }
        if ts > self.stream_ts {
            if self.stream_ts != i64::MIN {
                self.earlier
                    .push_back((self.stream_ts, self.stream_pos + 1));
                if self.earlier.len() > EARLIER_KEPT {
                    self.earlier.pop_front();
                }
            }
            (self.stream_ts, self.stream_pos) = (ts, 0);
            return 0;
        }
        match self.earlier.binary_search_by_key(&ts, |e| e.0) {
            Ok(i) => {
                let next = &mut self.earlier[i].1;
                *next += 1;
                *next - 1
            }
            Err(i) => {
                self.earlier.insert(i, (ts, 1));
                0
            }
        }
    }

    /// A trade the source delivers that trade identity does not take (the rollup sets it
    /// aside): it only holds its place in the stream. Returns its `ord`.
    pub fn pass_by(&mut self, ev: &TradeEvent) -> u32 {
        i64::try_from(ev.ts_recv).map_or(0, |ts| self.stream_position(ts))
    }

    /// Drops what is kept of minutes before `minute`: a live stream in `ts_recv` order never
    /// meets them again (a reconnect starts from the database), so memory stays bounded.
    pub fn forget_before(&mut self, minute: i64) {
        self.stored.retain(|(_, m), _| *m >= minute);
    }

    /// The earliest `ts_recv` of a group still held for matching, if any: a live stream's
    /// position must not pass it.
    pub fn earliest_held(&self) -> Option<i64> {
        self.groups
            .values()
            .filter(|g| g.boundary.is_some())
            .map(|g| g.ts)
            .min()
    }

    fn place(&self, at: Instrument, minute: i64, ts: i64) -> Place {
        let Some(list) = self.stored.get(&(at, minute)) else {
            return Place::New;
        };
        for (i, s) in list.iter().enumerate() {
            let span = &s.span;
            if ts > span.first && ts < span.last {
                return Place::Inside(i);
            }
            if ts == span.last && s.owned {
                return Place::New; // this session's own group, continued
            }
            if ts == span.first || ts == span.last {
                return Place::AtEnd(i);
            }
        }
        Place::New
    }

    /// Takes one trade in stream order; `stage` receives each trade to stage with its `ord`
    /// (at once, or when the group it belongs to is complete).
    pub fn push(
        &mut self,
        ev: TradeEvent,
        stage: &mut impl FnMut(TradeEvent, u32),
    ) -> Result<(), IdentityError> {
        let Ok(ts) = i64::try_from(ev.ts_recv) else {
            stage(ev, 0); // an undefined ts_recv: the rollup sets it aside
            return Ok(());
        };
        if !self.within_reading(ts) {
            return Ok(()); // the source fails at take_changes; only its range is still wanted
        }
        let position = self.stream_position(ts);
        let at = Instrument {
            publisher: ev.publisher_id,
            instrument: ev.instrument_id,
        };
        self.enter_group(at, ts, stage)?;
        let Some(ord) = self.next_ord(at, position) else {
            return Ok(());
        };
        self.decide(at, ts, ev, ord, stage);
        Ok(())
    }

    /// Makes `ts` the group being read for `at`. A new `ts_recv` completes the group read
    /// before it (it may be held at a stretch's end, and can only be matched now that all of
    /// it is in) and restarts the numbering of `ord`s; an earlier one breaks the order every
    /// decision relies on, so it is refused before anything of the group is touched.
    fn enter_group(
        &mut self,
        at: Instrument,
        ts: i64,
        stage: &mut impl FnMut(TradeEvent, u32),
    ) -> Result<(), IdentityError> {
        let previous = self.groups.get(&at).map(|g| g.ts);
        if previous == Some(ts) {
            return Ok(());
        }
        if let Some(previous) = previous.filter(|p| *p > ts) {
            return Err(IdentityError::OutOfOrder {
                publisher: at.publisher,
                instrument: at.instrument,
                ts_recv: ts,
                previous,
            });
        }
        self.close_group(at, stage)?;
        let group = self.groups.entry(at).or_insert(Group {
            ts,
            last_ord: None,
            boundary: None,
            lane: None,
        });
        (group.ts, group.last_ord) = (ts, None);
        Ok(())
    }

    /// The trade's `ord` in its instrument's current group: its place in the stream, unless
    /// that does not come after the `ord` given last there (the stream's count at an older
    /// `ts_recv` may have been forgotten and restarted, see `stream_position`), when it is the
    /// next one, so a group's trades keep their delivery order. `None` if `at` has no group.
    fn next_ord(&mut self, at: Instrument, position: u32) -> Option<u32> {
        let group = self.groups.get_mut(&at)?;
        let ord = match group.last_ord {
            Some(last) if position <= last => last + 1,
            _ => position,
        };
        group.last_ord = Some(ord);
        Some(ord)
    }

    /// Decides whether the trade is new (staged now), already counted (inside a stored
    /// stretch), or to be matched (at a stretch's end: held with its group until the group is
    /// complete, see `close_group`). Before `skip_before` it is taken as counted whatever its
    /// place.
    fn decide(
        &mut self,
        at: Instrument,
        ts: i64,
        ev: TradeEvent,
        ord: u32,
        stage: &mut impl FnMut(TradeEvent, u32),
    ) {
        let minute = ts.div_euclid(NS_PER_MINUTE);
        let fp = fingerprint(ts, ev.sequence, ev.price, ev.size);
        let place = self.place(at, minute, ts);
        if ts < self.skip_before {
            self.skipped_before_position += 1;
            return;
        }
        match place {
            Place::New => {
                self.observe(at, minute, ts, fp, None);
                stage(ev, ord);
            }
            Place::Inside(i) => {
                self.observe(at, minute, ts, fp, Some(i));
                self.count_skip(at, minute, i);
            }
            Place::AtEnd(i) => self.hold(at, i, (ev, ord, fp)),
        }
    }

    /// Holds a trade met at the end of stored stretch `span` with the rest of its group.
    fn hold(&mut self, at: Instrument, span: usize, trade: (TradeEvent, u32, i64)) {
        let Some(group) = self.groups.get_mut(&at) else {
            return;
        };
        group
            .boundary
            .get_or_insert(Boundary {
                span,
                trades: Vec::new(),
            })
            .trades
            .push(trade);
    }

    /// Records a trade of `at` in `minute` as seen, staged (`matched` None) or already counted.
    fn observe(&mut self, at: Instrument, minute: i64, ts: i64, fp: i64, matched: Option<usize>) {
        let Self { groups, seen, .. } = self;
        let Some(group) = groups.get_mut(&at) else {
            return;
        };
        match &mut group.lane {
            Some((m, lane)) if *m == minute => lane.observe(ts, fp, matched),
            lane => {
                // The instrument moved on to a later minute: the earlier one is complete.
                if let Some((m, done)) = lane.take() {
                    seen.insert((at, m), done);
                }
                let mut fresh = Seen::default();
                fresh.observe(ts, fp, matched);
                *lane = Some((minute, fresh));
            }
        }
    }

    fn count_skip(&mut self, at: Instrument, minute: i64, i: usize) {
        self.skipped += 1;
        if let Some(s) = self.stored.get(&(at, minute)).and_then(|l| l.get(i)) {
            *self.overlaps.entry(s.span.source.clone()).or_default() += 1;
        }
    }

    /// Completes the group read last for `at`: a group held at a stretch's end is matched by
    /// fingerprint against the trades stored there.
    fn close_group(
        &mut self,
        at: Instrument,
        stage: &mut impl FnMut(TradeEvent, u32),
    ) -> Result<(), IdentityError> {
        let Some(group) = self.groups.get_mut(&at) else {
            return Ok(());
        };
        let Some(held) = group.boundary.take() else {
            return Ok(());
        };
        let ts = group.ts;
        let minute = ts.div_euclid(NS_PER_MINUTE);
        let span = match self
            .stored
            .get(&(at, minute))
            .and_then(|l| l.get(held.span))
        {
            Some(s) => s.span.clone(),
            None => return Ok(()),
        };
        let stored = if ts == span.last {
            &span.last_group
        } else {
            &span.first_group
        };
        let here: Vec<i64> = held.trades.iter().map(|t| t.2).collect();
        let matched =
            align(&here, stored, ts == span.first && ts != span.last).ok_or_else(|| {
                IdentityError::Mismatch {
                    publisher: at.publisher,
                    instrument: at.instrument,
                    ts_recv: ts,
                    stored_by: span.source.clone(),
                }
            })?;
        for (i, (ev, ord, fp)) in held.trades.into_iter().enumerate() {
            let is_matched = matched.contains(&i);
            self.observe(at, minute, ts, fp, is_matched.then_some(held.span));
            if is_matched {
                self.count_skip(at, minute, held.span);
            } else {
                stage(ev, ord);
            }
        }
        Ok(())
    }

    /// Completes every group still held: the source has ended.
    pub fn finish(&mut self, stage: &mut impl FnMut(TradeEvent, u32)) -> Result<(), IdentityError> {
        self.finish_before(i64::MAX, stage)
    }

    /// Completes the held groups received before `ts`: a stream in `ts_recv` order has
    /// delivered all of them.
    pub fn finish_before(
        &mut self,
        ts: i64,
        stage: &mut impl FnMut(TradeEvent, u32),
    ) -> Result<(), IdentityError> {
        let held: Vec<Instrument> = self
            .groups
            .iter()
            .filter(|(_, g)| g.boundary.is_some() && g.ts < ts)
            .map(|(at, _)| *at)
            .collect();
        for at in held {
            self.close_group(at, stage)?;
        }
        Ok(())
    }

    /// What the trades observed since the last call add to `trade_coverage`, after checking
    /// that every stored stretch this source covered whole holds the same trades. The result
    /// is taken as written: the next trades build on it.
    pub fn take_changes(&mut self) -> Result<Changes, IdentityError> {
        if let (true, Some((first, last))) = (self.outside, self.span) {
            return Err(IdentityError::OutsideRange { first, last });
        }
        let mut changes = Changes::default();
        for (at, group) in self.groups.iter_mut() {
            if let Some((m, lane)) = group.lane.take() {
                self.seen.insert((*at, m), lane);
            }
        }
        let mut seen: Vec<_> = std::mem::take(&mut self.seen).into_iter().collect();
        seen.sort_unstable_by_key(|(key, _)| *key);
        for ((at, minute), seen) in seen {
            let list = self.stored.remove(&(at, minute)).unwrap_or_default();
            let (merged, kept, gone) = self.merge(at, minute, seen, list)?;
            changes
                .delete
                .extend(gone.into_iter().map(|s| (at, s.first)));
            changes.insert.push(merged.span.clone());
            let mut list = kept;
            list.push(merged);
            list.sort_by_key(|s| s.span.first);
            self.stored.insert((at, minute), list);
        }
        // Held groups point at stretches by index, which merging renumbers: re-find them.
        let held: Vec<Instrument> = self
            .groups
            .iter()
            .filter(|(_, g)| g.boundary.is_some())
            .map(|(at, _)| *at)
            .collect();
        for at in held {
            if let Some(g) = self.groups.get(&at) {
                let ts = g.ts;
                let minute = ts.div_euclid(NS_PER_MINUTE);
                let index = match self.place(at, minute, ts) {
                    Place::AtEnd(i) | Place::Inside(i) => Some(i),
                    Place::New => None,
                };
                if let (Some(i), Some(g)) = (index, self.groups.get_mut(&at)) {
                    if let Some(b) = g.boundary.as_mut() {
                        b.span = i;
                    }
                }
            }
        }
        Ok(changes)
    }

    /// Merges what was seen of one instrument and minute with the stored stretches it
    /// overlaps (or, for this live session's own stretch, continues). Returns the merged
    /// stretch, the stretches left as they are, and those merged away.
    fn merge(
        &self,
        at: Instrument,
        minute: i64,
        seen: Seen,
        list: Vec<Stored>,
    ) -> Result<(Stored, Vec<Stored>, Vec<Span>), IdentityError> {
        let (involved, kept) = involved_in(&seen, list);
        check_agrees(at, minute, &seen, &involved)?;
        let mut span = self.seen_span(at, minute, &seen, &involved);
        let gone = absorb(&mut span, involved);
        let owned = seen.last >= span.last;
        Ok((Stored { span, owned }, kept, gone))
    }

    /// The merged stretch before the stored ones' ranges are taken in: `seen`'s range, end
    /// groups and staged trades, plus the trades and digests of every involved stretch (the
    /// trades found already counted are in those, never in `seen.staged`, so the sums count
    /// each trade once).
    fn seen_span(
        &self,
        at: Instrument,
        minute: i64,
        seen: &Seen,
        involved: &[(usize, Stored)],
    ) -> Span {
        let mut span = Span {
            at,
            minute,
            first: seen.first,
            last: seen.last,
            trades: seen.staged,
            digest: seen.staged_digest,
            first_group: seen.first_group.clone(),
            last_group: seen.last_group.clone(),
            source: self.source.clone(),
        };
        for (_, s) in involved {
            let s = &s.span;
            span.trades += s.trades;
            span.digest = span.digest.wrapping_add(s.digest);
        }
        span
    }
}

/// Splits the stored stretches of one instrument and minute into those a merge with `seen`
/// takes in (with their index, which `seen.matched` refers to) and those it leaves as they
/// are. It takes in every stretch `seen` overlaps, and the latest of this live session's own
/// stretches ending at or before `seen`'s start: the session continues it, so its batches in
/// a minute become one stretch even when they share no trade.
fn involved_in(seen: &Seen, list: Vec<Stored>) -> (Vec<(usize, Stored)>, Vec<Stored>) {
    let continued = list
        .iter()
        .enumerate()
        .filter(|(_, s)| s.owned && s.span.last <= seen.first)
        .max_by_key(|(_, s)| s.span.last)
        .map(|(i, _)| i);
    let (mut involved, mut kept) = (Vec::new(), Vec::new());
    for (i, s) in list.into_iter().enumerate() {
        let overlaps = s.span.first <= seen.last && s.span.last >= seen.first;
        if overlaps || Some(i) == continued {
            involved.push((i, s));
        } else {
            kept.push(s);
        }
    }
    (involved, kept)
}

/// Refuses the source where it holds a stored stretch whole (see `covers_whole`) but not the
/// same trades: those it found counted there must match the stretch's count and digest, or
/// it is cut mid-group or corrupt, and nothing of it may be staged. This session's own
/// stretches are not compared: its trades continuing them are new, not found counted.
fn check_agrees(
    at: Instrument,
    minute: i64,
    seen: &Seen,
    involved: &[(usize, Stored)],
) -> Result<(), IdentityError> {
    for (i, s) in involved {
        let whole = covers_whole(seen, &s.span);
        let (count, digest) = seen.matched.get(i).copied().unwrap_or_default();
        if whole && !s.owned && (count, digest) != (s.span.trades, s.span.digest) {
            return Err(IdentityError::Disagrees {
                publisher: at.publisher,
                instrument: at.instrument,
                minute,
                here: count,
                stored: s.span.trades,
                stored_by: s.span.source.clone(),
            });
        }
    }
    Ok(())
}

/// Whether the source holds the whole of stretch `span`: only if it passed both ends, or met
/// them with a group at least as long (a source may end inside a group: a stream cut), can
/// it be expected to hold every trade stored there.
fn covers_whole(seen: &Seen, span: &Span) -> bool {
    (seen.first < span.first
        || (seen.first == span.first && seen.first_group.len() >= span.first_group.len()))
        && (span.last < seen.last
            || (span.last == seen.last && seen.last_group.len() >= span.last_group.len()))
}

/// Widens `span` to the ranges of the stretches merged into it, and returns those, to be
/// deleted. Where it shares an end with one, the end group is the one known to both (see
/// `joined`); the merged stretch is named for the source that staged its first `ts_recv` (a
/// stored stretch's, at a tie).
fn absorb(span: &mut Span, involved: Vec<(usize, Stored)>) -> Vec<Span> {
    let mut gone = Vec::new();
    for (_, s) in involved {
        let owned = s.owned;
        let s = s.span;
        if s.first < span.first {
            span.first = s.first;
            span.first_group = s.first_group.clone();
            span.source = s.source.clone();
        } else if s.first == span.first {
            span.first_group = joined(
                &s.first_group,
                &span.first_group,
                owned && s.first == s.last,
            );
            span.source = s.source.clone();
        }
        if s.last > span.last {
            span.last = s.last;
            span.last_group = s.last_group.clone();
        } else if s.last == span.last {
            span.last_group = joined(&s.last_group, &span.last_group, owned);
        }
        gone.push(s);
    }
    gone
}

/// The fingerprints of a group known twice: this session's own group continued is both
/// parts; otherwise one is a window of the other (see `align`), so the longer is the group.
fn joined(stored: &[i64], here: &[i64], continued: bool) -> Vec<i64> {
    if continued {
        [stored, here].concat()
    } else if stored.len() >= here.len() {
        stored.to_vec()
    } else {
        here.to_vec()
    }
}

/// Which of `here` (a source's group at a stretch's end) are the stored trades `stored`: a
/// contiguous window of one inside the other. At a stretch's first `ts_recv` the stored
/// trades end the group (a stream may start inside it), at its last they begin it.
fn align(here: &[i64], stored: &[i64], stored_ends_group: bool) -> Option<Vec<usize>> {
    if stored.len() <= here.len() {
        let windows = 0..=here.len() - stored.len();
        let fits = |o: &usize| here[*o..*o + stored.len()] == *stored;
        let offset = if stored_ends_group {
            windows.rev().find(fits)
        } else {
            windows.clone().find(fits)
        }?;
        Some((offset..offset + stored.len()).collect())
    } else {
        let fits = stored.windows(here.len()).any(|w| w == here);
        fits.then(|| (0..here.len()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = NS_PER_MINUTE;
    const T0: i64 = 1_700_000_040 * 1_000_000_000;

    fn trade(ts_recv: i64, sequence: u32, price: i64, size: u32) -> TradeEvent {
        TradeEvent {
            instrument_id: 7,
            publisher_id: 1,
            ts_event: ts_recv as u64 - 10,
            ts_recv: ts_recv as u64,
            sequence,
            price,
            size,
            side: b'A',
            flags: 0,
        }
    }

    /// A stretch of one instrument: groups of 1-3 trades sharing a ts_recv (a group starts at
    /// every index 7k, 7k+1, 7k+3, 7k+4), and one group of three identical trades.
    fn stream() -> Vec<TradeEvent> {
        let mut out = Vec::new();
        for i in 0..40i64 {
            let ts = T0 + i * 7 * 1_000_000_000; // crosses several minutes
            let n = [1, 2, 1, 3][(i % 4) as usize];
            for k in 0..n {
                let price = if i == 11 { 100 } else { 100 + k as i64 + i };
                out.push(trade(
                    ts,
                    i as u32,
                    price,
                    if i == 11 { 5 } else { 1 + k as u32 },
                ));
            }
        }
        out
    }

    type Loaded = (Vec<(TradeEvent, u32)>, Vec<Span>);

    /// Loads `part` as one source on top of `spans`; returns what it staged and the spans after.
    fn load(spans: Vec<Span>, part: &[TradeEvent], name: &str) -> Result<Loaded, IdentityError> {
        let mut id = Identity::new(name, spans.clone());
        let mut staged = Vec::new();
        let mut stage = |ev: TradeEvent, ord: u32| staged.push((ev, ord));
        for ev in part {
            id.push(*ev, &mut stage)?;
        }
        id.finish(&mut stage)?;
        let changes = id.take_changes()?;
        let mut after: Vec<Span> = spans
            .into_iter()
            .filter(|s| !changes.delete.contains(&(s.at, s.first)))
            .collect();
        after.extend(changes.insert);
        Ok((staged, after))
    }

    fn ids(trades: &[(TradeEvent, u32)]) -> Vec<(i64, u32, i64)> {
        let mut v: Vec<_> = trades
            .iter()
            .map(|(e, o)| (e.ts_recv as i64, *o, e.price))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn overlapping_sources_stage_each_trade_once_in_any_order() {
        let all = stream();
        let (whole, _) = load(vec![], &all, "whole").expect("whole");
        // Sources start where a group starts (Databento's ranges never cut one) and end
        // anywhere (a stream stopped inside a group).
        for (a_end, b_start) in [(30, 10), (60, 0), (20, 18), (45, 43), (5, 3), (23, 21)] {
            let (a, b) = (&all[..a_end], &all[b_start..]);
            for (first, second) in [(a, b), (b, a)] {
                let (s1, spans) = load(vec![], first, "one").expect("first");
                let (s2, _) = load(spans, second, "two")
                    .unwrap_or_else(|e| panic!("cut {a_end}/{b_start}: {e}"));
                let mut both = s1.clone();
                both.extend(s2);
                assert_eq!(ids(&both), ids(&whole), "cut {a_end}/{b_start}");
            }
        }
    }

    #[test]
    fn identical_trades_in_one_source_all_count() {
        let all = stream();
        let (staged, spans) = load(vec![], &all, "one").expect("load");
        assert_eq!(staged.len(), all.len());
        let (again, _) = load(spans, &all, "two").expect("again");
        assert!(again.is_empty());
    }

    #[test]
    fn a_group_that_differs_from_the_stored_one_is_an_error() {
        let all = stream();
        let (_, spans) = load(vec![], &all[..20], "first").expect("first");
        let mut changed = all.clone();
        changed[5].price += 1; // inside what was stored: the digest differs
        let err = load(spans.clone(), &changed, "second").expect_err("changed price");
        assert!(matches!(err, IdentityError::Disagrees { .. }), "{err}");
        // a source cut inside the group at the end of what was stored, numbering it anew
        let end = &all[19];
        let cut: Vec<_> = all[..20]
            .iter()
            .filter(|t| t.ts_recv == end.ts_recv)
            .map(|t| TradeEvent {
                price: t.price + 3,
                ..*t
            })
            .collect();
        let err = load(spans, &cut, "cut").expect_err("cut group");
        assert!(matches!(err, IdentityError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn a_source_out_of_order_is_refused() {
        let all = stream();
        let mut id = Identity::new("x", vec![]);
        let mut stage = |_: TradeEvent, _: u32| {};
        id.push(all[10], &mut stage).expect("first");
        let err = id.push(all[0], &mut stage).expect_err("earlier");
        assert!(matches!(err, IdentityError::OutOfOrder { .. }));
    }

    #[test]
    fn a_live_session_continues_its_own_group_across_batches() {
        let all = stream();
        let mut id = Identity::new("live", vec![]);
        let mut staged = Vec::new();
        // batches of 4 trades, cutting groups
        for batch in all.chunks(4) {
            let mut stage = |ev: TradeEvent, ord: u32| staged.push((ev, ord));
            for ev in batch {
                id.push(*ev, &mut stage).expect("push");
            }
            id.take_changes().expect("changes");
        }
        assert_eq!(staged.len(), all.len());
        let spans: Vec<Span> = id
            .stored
            .values()
            .flatten()
            .map(|s| s.span.clone())
            .collect();
        // one stretch per minute, and the stretches hold every trade
        let minutes: std::collections::BTreeSet<i64> =
            all.iter().map(|t| t.ts_recv as i64 / MIN).collect();
        assert_eq!(spans.len(), minutes.len());
        assert_eq!(
            spans.iter().map(|s| s.trades).sum::<i64>(),
            all.len() as i64
        );
        // and a backfill of the whole day over it stages nothing and agrees
        let (again, _) = load(spans, &all, "backfill").expect("backfill");
        assert!(again.is_empty());
    }

    /// One instrument's trades for a live stream: 4 `ts_recv`s a second for 150 s, in groups
    /// of 1-3, with `ts_event` up to 0.9 s before `ts_recv` (a replay starts by `ts_event`).
    fn live_stream() -> Vec<TradeEvent> {
        let mut all = Vec::new();
        for i in 0..600i64 {
            let ts = T0 + i * 250_000_000; // 4 per second, 150 s
            let n = [1, 1, 2, 1, 3][(i % 5) as usize];
            for k in 0..n {
                let mut t = trade(ts, i as u32, 100 + k as i64 + (i % 7), 1 + k as u32);
                t.ts_event = (ts - [1_000, 900_000_000, 2_000][(i % 3) as usize]) as u64;
                all.push(t);
            }
        }
        all
    }

    /// Commits a batch as the live feeder does: its changes go to `db`, and the position moves
    /// to the latest `ts_recv` read (`last`), never back, and not up to a group still held.
    fn commit(id: &mut Identity, db: &mut Vec<Span>, last: i64, pos: &mut Option<i64>) {
        let changes = id.take_changes().expect("changes");
        db.retain(|s| !changes.delete.contains(&(s.at, s.first)));
        db.extend(changes.insert);
        let p = match id.earliest_held() {
            Some(h) => last.min(h - 1),
            None => last,
        };
        *pos = Some(pos.map_or(p, |q| q.max(p)));
    }

    /// What one source of `trades` stages with nothing stored, pushed one by one.
    fn staged_alone(trades: &[TradeEvent]) -> Vec<(TradeEvent, u32)> {
        let mut id = Identity::new("x", vec![]);
        let mut v = Vec::new();
        let mut stage = |ev: TradeEvent, ord: u32| v.push((ev, ord));
        for t in trades {
            id.push(*t, &mut stage).expect("push");
        }
        v
    }

    /// A live stream cut at many points, each time resumed by a replay from a margin before
    /// the position, with batches committed as they fill: every trade staged exactly once.
    #[test]
    fn a_stream_resumed_after_cuts_stages_every_trade_once() {
        let all = live_stream();
        let margin = 1_000_000_000i64;
        let mut db: Vec<Span> = Vec::new();
        let mut staged: Vec<(TradeEvent, u32)> = Vec::new();
        let mut position: Option<i64> = None;
        let cuts = [37usize, 5, 120, 0, 64, 300, 1, 90];
        for session in 0..=cuts.len() {
            let start = position.map(|p| p - margin);
            let mut id = Identity::new("live", db.clone());
            let mut read = 0usize;
            let mut last = 0i64;
            let mut batch = Vec::new();
            for t in all
                .iter()
                .filter(|t| start.is_none_or(|s| t.ts_event as i64 >= s))
            {
                if cuts.get(session) == Some(&read) {
                    break;
                }
                read += 1;
                let ts = t.ts_recv as i64;
                let mut stage = |ev: TradeEvent, ord: u32| batch.push((ev, ord));
                id.finish_before(ts, &mut stage).expect("finish");
                id.push(*t, &mut stage).expect("push");
                last = last.max(ts);
                if read.is_multiple_of(10) {
                    staged.append(&mut batch);
                    commit(&mut id, &mut db, last, &mut position);
                }
            }
            if cuts.get(session).is_none() {
                let mut stage = |ev: TradeEvent, ord: u32| batch.push((ev, ord));
                id.finish(&mut stage).expect("finish");
            }
            staged.append(&mut batch);
            commit(&mut id, &mut db, last, &mut position);
        }
        assert_eq!(ids(&staged), ids(&staged_alone(&all)));
    }

    #[test]
    fn fingerprints_are_stable() {
        // stored in the database: must never change between releases
        assert_eq!(fingerprint(1, 2, 3, 4), fingerprint(1, 2, 3, 4));
        assert_ne!(fingerprint(1, 2, 3, 4), fingerprint(1, 2, 3, 5));
        assert_eq!(fingerprint(0, 0, 0, 0), 1_826_112_205_991_530_872);
    }
}

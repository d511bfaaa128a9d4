//! bars() for charts: buckets in an exchange's time zone (both New York clock changes of
//! 2025), a session on a half day, gap fill around a symbol's first and last trade, odd
//! origins, and clear errors. Expected bars are computed here from the minute bars the test
//! wrote, with New York's 2025 offsets written out by hand (EDT from 2025-03-09 07:00 UTC to
//! 2025-11-02 06:00 UTC, EST otherwise), not by PostgreSQL's time zone code.

use postgres::error::SqlState;
use tradebars_tests::*;

/// A minute bar: UTC epoch seconds, open, high, low, close (cents), volume.
#[derive(Clone, Copy, Debug)]
struct Minute {
    at: i64,
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    volume: i64,
}

/// What bars() returns, in the same units: bucket start, open, high, low, close (cents or
/// None), volume, trade count, filled.
type Row = (
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    bool,
);

/// Writes `minutes` of `symbol` as trades bars (trade_count 1 each), and their hour bars.
fn write(db: &str, symbol: &str, minutes: &[Minute]) {
    let mut c = connect(db);
    for m in minutes {
        c.execute(
            "INSERT INTO price_bars (symbol, \"timestamp\", open, high, low, close, volume, trade_count,
                                     vwap, notional, open_ts_ns, open_seq, close_ts_ns, close_seq,
                                     is_legacy, data_source)
             VALUES ($1, to_timestamp($2::float8), $3::bigint::numeric / 100, $4::bigint::numeric / 100, $5::bigint::numeric / 100,
                     $6::bigint::numeric / 100, $7::bigint, 1, $6::bigint::numeric / 100, $6::bigint::numeric / 100 * $7::bigint,
                     ($2::float8 * 1000000000)::bigint, 0, ($2::float8 * 1000000000)::bigint, 0, false, 'trades')",
            &[&symbol, &(m.at as f64), &m.open, &m.high, &m.low, &m.close, &m.volume],
        )
        .expect("writing a minute bar");
    }
    // written by hand, not by the rollup: their hours are summed as the rollup would
    c.execute("SELECT refresh_hour_bars()", &[])
        .expect("summing the hours");
}

fn query(db: &str, sql: &str) -> Vec<Row> {
    connect(db)
        .query(
            &format!(
                "SELECT extract(epoch FROM \"timestamp\")::bigint, (open * 100)::bigint, (high * 100)::bigint,
                        (low * 100)::bigint, (close * 100)::bigint, volume, trade_count, filled
                 FROM ({sql}) b"
            ),
            &[],
        )
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)))
        .collect()
}

/// The bars of `minutes` grouped by `bucket_of` (a bucket's start for a minute), in order.
fn expected(minutes: &[Minute], bucket_of: impl Fn(i64) -> i64) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut sorted = minutes.to_vec();
    sorted.sort_by_key(|m| m.at);
    for m in sorted {
        let t = bucket_of(m.at);
        match out.last_mut() {
            Some(r) if r.0 == t => {
                r.2 = r.2.max(Some(m.high));
                r.3 = r.3.min(Some(m.low));
                r.4 = Some(m.close);
                r.5 += m.volume;
                r.6 += 1;
            }
            _ => out.push((
                t,
                Some(m.open),
                Some(m.high),
                Some(m.low),
                Some(m.close),
                m.volume,
                1,
                false,
            )),
        }
    }
    out
}

/// UTC epoch seconds of a UTC wall time.
fn utc(y: i32, mo: u8, d: u8, h: u8, mi: u8) -> i64 {
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).expect("month"), d)
        .expect("date");
    date.with_hms(h, mi, 0)
        .expect("time")
        .assume_utc()
        .unix_timestamp()
}

/// New York's UTC offset in seconds at a UTC instant of 2025.
fn ny_offset(at: i64) -> i64 {
    let edt = (utc(2025, 3, 9, 7, 0)..utc(2025, 11, 2, 6, 0)).contains(&at);
    if edt {
        -4 * 3600
    } else {
        -5 * 3600
    }
}

/// The UTC start of the New York day that holds `at`: local midnight, whose own offset is
/// that of the local date (the clock changes at 02:00, never at midnight).
fn ny_day_start(at: i64) -> i64 {
    let local_midnight = (at + ny_offset(at)).div_euclid(86_400) * 86_400;
    let guess = local_midnight + 5 * 3600; // if EST at midnight
    if ny_offset(guess) == -5 * 3600 && ny_offset(local_midnight + 4 * 3600) == -5 * 3600 {
        guess
    } else {
        local_midnight + 4 * 3600
    }
}

/// Local time of day in New York, in minutes.
fn ny_minute_of_day(at: i64) -> i64 {
    (at + ny_offset(at)).rem_euclid(86_400) / 60
}

fn hourly(from: i64, to: i64) -> Vec<Minute> {
    (from..to)
        .step_by(3600)
        .enumerate()
        .map(|(i, at)| {
            let p = 10_000 + (i as i64 * 37) % 500;
            Minute {
                at,
                open: p,
                high: p + 20,
                low: p - 15,
                close: p + 5,
                volume: 1 + i as i64 % 7,
            }
        })
        .collect()
}

#[test]
fn daily_and_hourly_bars_in_new_york_across_both_clock_changes() {
    let db = fresh_db("calendar_dst", "");
    for (from, to) in [
        (utc(2025, 3, 7, 0, 0), utc(2025, 3, 12, 0, 0)),
        (utc(2025, 10, 31, 0, 0), utc(2025, 11, 5, 0, 0)),
    ] {
        let minutes = hourly(from, to);
        write(&db, "DST", &minutes);
        let (start, end) = (ny_day_start(from + 86_400), ny_day_start(to - 86_400));
        let inside: Vec<Minute> = minutes
            .iter()
            .copied()
            .filter(|m| m.at >= start && m.at < end)
            .collect();
        let days = query(
            &db,
            &format!(
                "SELECT * FROM bars('DST', to_timestamp({start}), to_timestamp({end}), bucket => '1 day', tz => 'America/New_York')"
            ),
        );
        let want = expected(&inside, ny_day_start);
        assert_eq!(days, want);
        // the short and the long day
        let lengths: Vec<i64> = days.iter().map(|r| r.6).collect();
        eprintln!("calendar | New York days from {start}: hours per day {lengths:?}");
        assert!(
            lengths.contains(&23) || lengths.contains(&25),
            "{lengths:?}"
        );
        // hourly buckets: one per elapsed hour, 23 or 25 on the changing day
        let hours = query(
            &db,
            &format!(
                "SELECT * FROM bars('DST', to_timestamp({start}), to_timestamp({end}), bucket => '1 hour', tz => 'America/New_York')"
            ),
        );
        assert_eq!(hours, expected(&inside, |at| at - at.rem_euclid(3600)));
    }
    // the default stays UTC
    let utc_days = query(
        &db,
        "SELECT * FROM bars('DST', '2025-11-01 00:00+00', '2025-11-04 00:00+00', bucket => '1 day')",
    );
    let all = hourly(utc(2025, 10, 31, 0, 0), utc(2025, 11, 5, 0, 0));
    let inside: Vec<Minute> = all
        .into_iter()
        .filter(|m| m.at >= utc(2025, 11, 1, 0, 0) && m.at < utc(2025, 11, 4, 0, 0))
        .collect();
    assert_eq!(utc_days, expected(&inside, |at| at - at.rem_euclid(86_400)));
}

#[test]
fn a_session_makes_the_daily_bar_the_session_s_even_on_a_half_day() {
    let db = fresh_db("calendar_session", "");
    // 2025-11-26 a full day, 2025-11-28 the half day after Thanksgiving (closes 13:00): minute
    // bars from 09:00 to 16:30 local on the first, 09:00 to 13:00 on the second (EST)
    let mut minutes = Vec::new();
    for (day, close) in [(26u8, (16, 30)), (28u8, (13, 0))] {
        let open = utc(2025, 11, day, 14, 0);
        let last = utc(2025, 11, day, close.0 + 5, close.1);
        for (i, at) in (open..last).step_by(60).enumerate() {
            let p = 20_000 + (i as i64 * 13) % 300;
            minutes.push(Minute {
                at,
                open: p,
                high: p + 3,
                low: p - 2,
                close: p + 1,
                volume: 100 + i as i64,
            });
        }
    }
    write(&db, "HALF", &minutes);
    let in_session: Vec<Minute> = minutes
        .iter()
        .copied()
        .filter(|m| (9 * 60 + 30..16 * 60).contains(&ny_minute_of_day(m.at)))
        .collect();
    let days = query(
        &db,
        "SELECT * FROM bars('HALF', '2025-11-26 00:00-05', '2025-11-29 00:00-05', bucket => '1 day',
                            tz => 'America/New_York', session => '09:30-16:00')",
    );
    assert_eq!(days, expected(&in_session, ny_day_start));
    assert_eq!(days.iter().map(|r| r.6).collect::<Vec<_>>(), vec![390, 210]);
    eprintln!(
        "calendar | session 09:30-16:00: {} minute bars on 11-26, {} on the half day 11-28",
        days[0].6, days[1].6
    );
}

/// The gap-fill test's range: GAP from 14:30 to 14:40 UTC on 2025-10-24.
const GAP_RANGE: &str = "'GAP', '2025-10-24 14:30+00', '2025-10-24 14:40+00'";

/// 2025-10-24 14:`mi` UTC.
fn gap_at(mi: u8) -> i64 {
    utc(2025, 10, 24, 14, mi)
}

/// A minute bar of GAP at `h`:`mi` UTC: open `p`, high `p`+2, low `p`-1, close `p`+1.
fn gap_minute(h: u8, mi: u8, p: i64, v: i64) -> Minute {
    Minute {
        at: utc(2025, 10, 24, h, mi),
        open: p,
        high: p + 2,
        low: p - 1,
        close: p + 1,
        volume: v,
    }
}

/// A filled bucket at 14:`mi`: every price the previous close.
fn gap_filled(mi: u8, close: i64) -> Row {
    (
        gap_at(mi),
        Some(close),
        Some(close),
        Some(close),
        Some(close),
        0,
        0,
        true,
    )
}

/// The bar of `gap_minute(14, mi, p, v)` as bars() returns it.
fn gap_real(mi: u8, p: i64, v: i64) -> Row {
    (
        gap_at(mi),
        Some(p),
        Some(p + 2),
        Some(p - 1),
        Some(p + 1),
        v,
        1,
        false,
    )
}

/// bars() over GAP_RANGE with `args` after it (each starting with a comma).
fn gap_bars(db: &str, args: &str) -> Vec<Row> {
    query(db, &format!("SELECT * FROM bars({GAP_RANGE}{args})"))
}

#[test]
fn fill_gives_every_empty_bucket_from_the_first_trade_on_and_never_before_it() {
    let db = fresh_db("calendar_fill", "");
    write(
        &db,
        "GAP",
        &[gap_minute(14, 32, 100, 5), gap_minute(14, 35, 110, 7)],
    );
    let want = assert_fill_previous_starts_at_the_first_trade(&db);
    assert_fill_null_and_none_keep_the_buckets(&db, &want);
    // a bar before the range: its close fills the range's first buckets
    write(&db, "GAP", &[gap_minute(13, 0, 90, 1)]);
    let prev = gap_bars(&db, ", fill => 'previous'");
    assert_eq!(&prev[..2], &[gap_filled(30, 91), gap_filled(31, 91)]);
    assert_eq!(&prev[2..], &want[..]);
    assert_five_minute_buckets_have_nothing_to_fill(&db);
}

/// fill => 'previous' from 14:32, GAP's first trade: returns the rows it gives.
fn assert_fill_previous_starts_at_the_first_trade(db: &str) -> Vec<Row> {
    let prev = gap_bars(db, ", fill => 'previous'");
    let want = vec![
        gap_real(32, 100, 5),
        gap_filled(33, 101),
        gap_filled(34, 101),
        gap_real(35, 110, 7),
        gap_filled(36, 111),
        gap_filled(37, 111),
        gap_filled(38, 111),
        gap_filled(39, 111),
    ];
    assert_eq!(prev, want, "no bar before 14:32, the symbol's first trade");
    for row in &prev {
        eprintln!("calendar | fill previous | {row:?}");
    }
    want
}

fn assert_fill_null_and_none_keep_the_buckets(db: &str, want: &[Row]) {
    // 'null' leaves the prices empty, same buckets
    let null = gap_bars(db, ", fill => 'null'");
    let null_want: Vec<Row> = want
        .iter()
        .map(|r| {
            if r.7 {
                (r.0, None, None, None, None, 0, 0, true)
            } else {
                *r
            }
        })
        .collect();
    assert_eq!(null, null_want);
    // 'none' (the default) only the bars
    assert_eq!(gap_bars(db, ""), vec![want[0], want[3]]);
}

/// 5-minute buckets: 14:30 holds the first bar, 14:35 the second; nothing to fill between.
fn assert_five_minute_buckets_have_nothing_to_fill(db: &str) {
    let five = gap_bars(db, ", bucket => '5 minutes', fill => 'previous'");
    assert_eq!(
        five,
        vec![
            (
                gap_at(30),
                Some(100),
                Some(102),
                Some(99),
                Some(101),
                5,
                1,
                false
            ),
            (
                gap_at(35),
                Some(110),
                Some(112),
                Some(109),
                Some(111),
                7,
                1,
                false
            ),
        ]
    );
}

#[test]
fn an_origin_aligns_buckets_to_an_odd_local_time() {
    let db = fresh_db("calendar_origin", "");
    let minutes = hourly(utc(2025, 10, 24, 0, 0), utc(2025, 10, 26, 0, 0));
    let shifted: Vec<Minute> = minutes
        .iter()
        .map(|m| Minute {
            at: m.at + 15 * 60,
            ..*m
        })
        .collect();
    write(&db, "ORG", &shifted);
    // hourly bars from :30, in UTC
    let rows = query(
        &db,
        "SELECT * FROM bars('ORG', '2025-10-24 00:00+00', '2025-10-26 00:00+00', bucket => '1 hour', origin => '00:30')",
    );
    assert_eq!(
        rows,
        expected(&shifted, |at| at - (at - 1800).rem_euclid(3600))
    );
    // a futures day from 18:00 New York (EDT here) to 18:00
    let rows = query(
        &db,
        "SELECT * FROM bars('ORG', '2025-10-24 00:00+00', '2025-10-26 00:00+00', bucket => '1 day',
                            tz => 'America/New_York', origin => '18:00')",
    );
    let day_of = |at: i64| {
        let local = at + ny_offset(at) - 18 * 3600;
        local.div_euclid(86_400) * 86_400 + 18 * 3600 + 4 * 3600
    };
    assert_eq!(rows, expected(&shifted, day_of));
}

/// Each bad argument of bars(), the SQLSTATE it raises and what its message says.
fn bad_calendar_arguments() -> Vec<(&'static str, SqlState, &'static str)> {
    vec![
        (
            "tz => 'Mars/Olympus'",
            SqlState::INVALID_PARAMETER_VALUE,
            "time zone",
        ),
        (
            "tz => NULL",
            SqlState::NULL_VALUE_NOT_ALLOWED,
            "must not be NULL",
        ),
        (
            "session => '9:30 to 4'",
            SqlState::INVALID_PARAMETER_VALUE,
            "session must look like",
        ),
        (
            "session => '16:00-09:30'",
            SqlState::INVALID_PARAMETER_VALUE,
            "closes before it opens",
        ),
        (
            "session => '09:30-25:00'",
            SqlState::INVALID_PARAMETER_VALUE,
            "does not exist",
        ),
        (
            "fill => 'linear'",
            SqlState::INVALID_PARAMETER_VALUE,
            "fill must be",
        ),
        (
            "origin => '1 day'",
            SqlState::INVALID_PARAMETER_VALUE,
            "origin is an offset",
        ),
        (
            "origin => '-1 hour'",
            SqlState::INVALID_PARAMETER_VALUE,
            "origin is an offset",
        ),
        (
            "origin => '00:00:30'",
            SqlState::INVALID_PARAMETER_VALUE,
            "in whole minutes",
        ),
        (
            "bucket => '7 minutes', tz => 'America/New_York'",
            SqlState::INVALID_PARAMETER_VALUE,
            "must divide a day",
        ),
    ]
}

#[test]
fn bad_calendar_arguments_are_one_clear_error_each() {
    let db = fresh_db("calendar_errors", "");
    let mut c = connect(&db);
    let range = "'X', '2025-10-24 00:00+00', '2025-10-25 00:00+00'";
    for (args, state, says) in bad_calendar_arguments() {
        let sql = format!("SELECT * FROM bars({range}, {args})");
        let err = c.batch_execute(&sql).expect_err(&sql);
        assert_eq!(err.code(), Some(&state), "{sql}: {err}");
        let msg = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains(says), "{sql}: {msg}");
    }
}

/// Minute bars of `symbol` at the given UTC instants, price i+1 dollars each, volume 1.
fn write_at(db: &str, symbol: &str, instants: &[i64]) -> Vec<Minute> {
    let minutes: Vec<Minute> = instants
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let p = 100 * (i as i64 + 1);
            Minute {
                at: *at,
                open: p,
                high: p,
                low: p,
                close: p,
                volume: 1,
            }
        })
        .collect();
    write(db, symbol, &minutes);
    minutes
}

/// Two days: `first` until `cut`, `second` from it.
fn two_days(cut: i64, first: i64, second: i64) -> impl Fn(i64) -> i64 {
    move |at: i64| if at < cut { first } else { second }
}

#[test]
fn a_day_starts_when_the_local_clock_first_shows_its_start() {
    let db = fresh_db("calendar_ambiguous", "");
    for (symbol, instants, sql, (cut, first, second)) in [
        // New York falls back at 06:00 UTC on 2025-11-02: 01:30 comes at 05:30 and again at 06:30
        (
            "NY",
            vec![
                utc(2025, 11, 1, 12, 0),
                utc(2025, 11, 2, 5, 40),
                utc(2025, 11, 2, 6, 10),
                utc(2025, 11, 2, 12, 0),
            ],
            "SELECT * FROM bars('NY', '2025-11-01', '2025-11-03', bucket => '1 day', tz => 'America/New_York', origin => '01:30')",
            (utc(2025, 11, 2, 5, 30), utc(2025, 11, 1, 5, 30), utc(2025, 11, 2, 5, 30)),
        ),
        // Havana falls back from 01:00 to 00:00 (05:00 UTC): its 2025-11-02 starts at the
        // first midnight, 04:00 UTC
        (
            "HAV",
            vec![
                utc(2025, 11, 2, 3, 50),
                utc(2025, 11, 2, 4, 10),
                utc(2025, 11, 2, 12, 0),
            ],
            "SELECT * FROM bars('HAV', '2025-11-01 06:00+00', '2025-11-03', bucket => '1 day', tz => 'America/Havana')",
            (utc(2025, 11, 2, 4, 0), utc(2025, 11, 1, 4, 0), utc(2025, 11, 2, 4, 0)),
        ),
    ] {
        let minutes = write_at(&db, symbol, &instants);
        let rows = query(&db, sql);
        assert_eq!(rows, expected(&minutes, two_days(cut, first, second)));
    }
    // New York springs forward at 07:00 UTC on 2025-03-09, past 02:30: a day from 02:30
    // starts at 07:00 UTC, when the clock jumps to 03:00
    let spring = write_at(&db, "SPR", &[utc(2025, 3, 9, 7, 10)]);
    let rows = query(
        &db,
        "SELECT * FROM bars('SPR', '2025-03-09', '2025-03-10', bucket => '1 day', tz => 'America/New_York', origin => '02:30')",
    );
    assert_eq!(rows, expected(&spring, |_| utc(2025, 3, 9, 7, 0)));
}

#[test]
fn fill_keeps_every_bar_whatever_the_bucket_on_days_the_clock_changes() {
    let db = fresh_db("calendar_fill_dst", "");
    let mut instants = Vec::new();
    let mut at = utc(2025, 3, 8, 0, 0);
    while at < utc(2025, 3, 11, 0, 0) {
        instants.push(at);
        at += 37 * 60; // every 37 minutes, against every bucket's grain
    }
    write_at(&db, "ODD", &instants);
    for bucket in [
        "45 minutes",
        "90 minutes",
        "1 hour",
        "3 hours",
        "20 minutes",
    ] {
        let range = format!(
            "'ODD', '2025-03-08 05:00+00', '2025-03-11 04:00+00', bucket => '{bucket}', tz => 'America/New_York'"
        );
        let bars = query(&db, &format!("SELECT * FROM bars({range})"));
        for fill in ["previous", "null"] {
            let filled = query(
                &db,
                &format!("SELECT * FROM bars({range}, fill => '{fill}')"),
            );
            let real: Vec<Row> = filled.iter().copied().filter(|r| !r.7).collect();
            assert_eq!(real, bars, "{bucket}, fill {fill}: every bar is there");
            let mut starts: Vec<i64> = filled.iter().map(|r| r.0).collect();
            starts.dedup();
            assert_eq!(starts.len(), filled.len(), "{bucket}: one row per bucket");
        }
    }
}

#[test]
fn fill_over_an_endless_range_is_refused_at_once() {
    let db = fresh_db("calendar_endless", "");
    let mut c = connect(&db);
    for args in [
        "'X', '2025-01-01', 'infinity', fill => 'previous'",
        "'X', '-infinity', '2025-01-01', tz => 'America/New_York'",
        "'X', '1900-01-01', '2025-01-01', bucket => '1 minute', fill => 'null'",
    ] {
        let sql = format!("SELECT * FROM bars({args})");
        let err = c.batch_execute(&sql).expect_err(&sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PARAMETER_VALUE),
            "{sql}: {err}"
        );
    }
}

//! `bars_rollup()`: claim the quiet staging slot, aggregate it per symbol and minute with
//! `ohlcv`, merge the bars into `price_bars`, set aside what cannot be counted, TRUNCATE.
//!
//! Exactly once: everything happens in the caller's transaction, so bars appear if and only
//! if the staged trades they count are consumed. Rollups are serialized by an advisory lock;
//! the feeder keeps writing to the other slot meanwhile (see sql/schema.sql).

use pgrx::prelude::*;

/// Advisory lock keys: (TRADEBARS_LOCK_CLASS, one of these).
pub const TRADEBARS_LOCK_CLASS: i32 = 0x7462; // "tb"
pub const ROLLUP_LOCK: i32 = 2;

/// work_mem for the rollup's hash aggregate (at least; a larger setting is kept).
const ROLLUP_WORK_MEM: &str = "256MB";

/// The channel each rollup that changes bars notifies, with its id (sql/changes.sql).
pub const BARS_CHANNEL: &str = "tradebars_bars";

pub const SLOTS: [&str; 2] = ["trades_staging_0", "trades_staging_1"];

/// The slot the feeder is not writing to after the epoch moved to `epoch`.
pub fn quiet_slot(epoch: i64) -> &'static str {
    SLOTS[((epoch + 1).rem_euclid(2)) as usize]
}

/// Plausible trade times, in minutes since the epoch: from 1980 to a day past now.
/// A trade outside is kept in trades_rejected ('ts_recv out of range' or 'ts_event out of
/// range', by the clock), not counted.
const MIN_MINUTE: i64 = 315_532_800 / 60;

/// Which timestamp places a trade in its minute, and which key orders trades within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Databento's OHLCV: the minute of `ts_recv`; open and close by stream order, that is
    /// `ts_recv`, then the trade's place among those sharing it (`ord`).
    Recv,
    /// Exchange time, as tradebars 0.1.0 and 0.2.0 built bars: the minute of `ts_event`;
    /// open and close by (`ts_event`, `sequence`, publisher).
    Event,
}

impl Clock {
    pub fn parse(name: &str) -> Option<Clock> {
        match name {
            "ts_recv" => Some(Clock::Recv),
            "ts_event" => Some(Clock::Event),
            _ => None,
        }
    }

    /// The column that places a trade in its minute.
    fn time(self) -> &'static str {
        match self {
            Clock::Recv => "ts_recv",
            Clock::Event => "ts_event",
        }
    }

    /// The column that orders trades sharing that time.
    fn tiebreak(self) -> &'static str {
        match self {
            Clock::Recv => "ord",
            Clock::Event => "sequence",
        }
    }
}

/// What a trade that cannot be counted looks like, given the minute bounds $1 and $2. A
/// trade without a `ts_recv` (staged as -1) has no identity, so whatever the clock it is set
/// aside: counted, it would count again with every load that delivers it.
/// `recv_bounded`: under the event clock too, a trade whose `ts_recv` is implausible is set
/// aside, as the feeder keeps it out of trade identity (rollup_bars' path; a database whose
/// objects predate it rolls up as before).
fn unusable(clock: Clock, recv_bounded: bool) -> String {
    let t = clock.time();
    let recv = if recv_bounded && clock != Clock::Recv {
        " OR ts_recv / 60000000000 < $1 OR ts_recv / 60000000000 >= $2"
    } else {
        ""
    };
    format!(
        "symbol = '' OR ts_recv < 0{recv} OR {t} / 60000000000 < $1 OR {t} / 60000000000 >= $2 \
         OR price = 9223372036854775807 OR size <= 0 OR size > 4294967295"
    )
}

/// How many trades the slot holds, and how many of them cannot be counted (the path of a
/// database whose objects predate `rollup_bars`).
fn census_sql(slot: &str, clock: Clock) -> String {
    format!(
        "SELECT count(*), count(*) FILTER (WHERE {}) FROM {slot}",
        unusable(clock, false)
    )
}

/// The minute a staged trade belongs to. Under the event clock a trade without `ts_recv`
/// takes minute -1, so its group is graded out like any implausible minute; under the recv
/// clock its minute is 0 already.
fn minute_of(clock: Clock) -> &'static str {
    match clock {
        Clock::Recv => "ts_recv / 60000000000",
        Clock::Event => {
            "CASE WHEN ts_recv < 0 OR ts_recv / 60000000000 < $1 OR ts_recv / 60000000000 >= $2 \
                  THEN -1 ELSE ts_event / 60000000000 END"
        }
    }
}

/// Aggregates the slot into `rollup_bars`, one row per symbol and minute, reading each trade
/// once. What cannot be counted is graded at the group: no symbol, or a minute outside the
/// bounds $1..$2; the aggregate itself counts the trades it refuses (`rejected`). So the
/// trade's row is not filtered one by one: 0.2.0's rollup cost, without its CTEs.
fn group_sql(slot: &str, clock: Clock) -> String {
    let (t, tiebreak, minute) = (clock.time(), clock.tiebreak(), minute_of(clock));
    format!(
        r#"
INSERT INTO rollup_bars (symbol, minute, good, open_px, high_px, low_px, close_px, open_ts,
                         open_seq, close_ts, close_seq, volume, trade_count, notional_px, rejected)
SELECT symbol, minute, symbol <> '' AND minute >= $1 AND minute < $2 AND (b).trade_count > 0,
       (b).open_px, (b).high_px, (b).low_px, (b).close_px, (b).open_ts, (b).open_seq,
       (b).close_ts, (b).close_seq, (b).volume, (b).trade_count, (b).notional_px, (b).rejected
FROM (
    SELECT symbol, {minute} AS minute, ohlcv({t}, {tiebreak}, publisher_id, price, size) AS b
    FROM {slot}
    GROUP BY 1, 2
) agg
"#
    )
}

/// What `rollup_bars` holds: trades counted, and trades to set aside.
const GROUP_COUNTS: &str = "SELECT coalesce(sum(trade_count) FILTER (WHERE good), 0)::bigint, \
     coalesce(sum(rejected + CASE WHEN good THEN 0 ELSE trade_count END), 0)::bigint \
     FROM rollup_bars";

/// Where the merge takes its bars from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bars<'a> {
    /// `rollup_bars`, filled by `group_sql`.
    Grouped,
    /// Aggregated inline from a slot, filtering each trade (objects older than rollup_bars).
    Inline(&'a str, Clock),
}

/// The bars to merge, as the merge's SELECT. From `rollup_bars`, each carries the rollup's
/// id ($1) as `changed_in`.
fn bars_select(bars: Bars<'_>) -> String {
    let changed_in = if bars == Bars::Grouped { ", $1" } else { "" };
    let (p, from) = match bars {
        Bars::Grouped => ("", "rollup_bars WHERE good".to_string()),
        Bars::Inline(slot, clock) => {
            let (t, tiebreak) = (clock.time(), clock.tiebreak());
            (
                "(b).",
                format!(
                    "(SELECT symbol, {t} / 60000000000 AS minute, \
                            ohlcv({t}, {tiebreak}, publisher_id, price, size) AS b \
                      FROM {slot} \
                      WHERE symbol <> '' AND ts_recv >= 0 AND {t} / 60000000000 >= $1 \
                        AND {t} / 60000000000 < $2 \
                      GROUP BY symbol, {t} / 60000000000) agg \
                     WHERE (b).trade_count > 0"
                ),
            )
        }
    };
    format!(
        "SELECT symbol, to_timestamp(minute * 60), \
                fixed_to_numeric({p}open_px), fixed_to_numeric({p}high_px), \
                fixed_to_numeric({p}low_px), fixed_to_numeric({p}close_px), \
                {p}volume, {p}trade_count, \
                trim_scale(round(fixed_to_numeric({p}notional_px) / {p}volume, 9)), \
                fixed_to_numeric({p}notional_px), \
                {p}open_ts, {p}open_seq, {p}close_ts, {p}close_seq, false, 'trades'{changed_in} \
         FROM {from}"
    )
}

/// The rollup's merge of its bars into price_bars. It has the shape Citus runs on the
/// workers, with staging, rollup_bars and price_bars distributed by symbol: a plain
/// INSERT ... SELECT over colocated tables, no CTE (a CTE's rows are pulled through the
/// coordinator) and nothing that spans symbols. Rejected trades are set aside by a statement
/// of their own (`reject_sql`).
/// `guarded`: the database has 0.3.0's objects, whose `foreign_trades_bar` refuses to merge
/// into bars tradebars did not build (a 0.2.0 database rolls up as 0.2.0 did).
fn merge_sql(bars: Bars<'_>, guarded: bool) -> String {
    let volume = if guarded {
        // A bar tradebars did not build (no order of its open and close trades, or legacy)
        // is never merged into: the rollup fails whole, naming it.
        "CASE WHEN p.open_ts_ns IS NULL OR p.is_legacy \
              THEN foreign_trades_bar(p.symbol, p.\"timestamp\") \
              ELSE p.volume + EXCLUDED.volume END"
    } else {
        "p.volume + EXCLUDED.volume"
    };
    let select = bars_select(bars);
    let (changed_in, set_changed_in) = if bars == Bars::Grouped {
        (", changed_in", ",\n    changed_in = EXCLUDED.changed_in")
    } else {
        ("", "")
    };
    format!(
        r#"
INSERT INTO price_bars AS p (symbol, "timestamp", open, high, low, close, volume, trade_count,
                             vwap, notional, open_ts_ns, open_seq, close_ts_ns, close_seq,
                             is_legacy, data_source{changed_in})
{select}
ON CONFLICT (symbol, "timestamp", data_source) DO UPDATE SET
    open = CASE WHEN (EXCLUDED.open_ts_ns, EXCLUDED.open_seq, EXCLUDED.open)
                   < (p.open_ts_ns, p.open_seq, p.open) THEN EXCLUDED.open ELSE p.open END,
    open_ts_ns = CASE WHEN (EXCLUDED.open_ts_ns, EXCLUDED.open_seq, EXCLUDED.open)
                   < (p.open_ts_ns, p.open_seq, p.open) THEN EXCLUDED.open_ts_ns ELSE p.open_ts_ns END,
    open_seq = CASE WHEN (EXCLUDED.open_ts_ns, EXCLUDED.open_seq, EXCLUDED.open)
                   < (p.open_ts_ns, p.open_seq, p.open) THEN EXCLUDED.open_seq ELSE p.open_seq END,
    close = CASE WHEN (EXCLUDED.close_ts_ns, EXCLUDED.close_seq, EXCLUDED.close)
                   > (p.close_ts_ns, p.close_seq, p.close) THEN EXCLUDED.close ELSE p.close END,
    close_ts_ns = CASE WHEN (EXCLUDED.close_ts_ns, EXCLUDED.close_seq, EXCLUDED.close)
                   > (p.close_ts_ns, p.close_seq, p.close) THEN EXCLUDED.close_ts_ns ELSE p.close_ts_ns END,
    close_seq = CASE WHEN (EXCLUDED.close_ts_ns, EXCLUDED.close_seq, EXCLUDED.close)
                   > (p.close_ts_ns, p.close_seq, p.close) THEN EXCLUDED.close_seq ELSE p.close_seq END,
    high = GREATEST(p.high, EXCLUDED.high),
    low = LEAST(p.low, EXCLUDED.low),
    volume = {volume},
    trade_count = p.trade_count + EXCLUDED.trade_count,
    notional = p.notional + EXCLUDED.notional,
    vwap = trim_scale(round((p.notional + EXCLUDED.notional) / (p.volume + EXCLUDED.volume), 9)){set_changed_in}
"#
    )
}

/// `with_ord`: the tables have 0.3.0's `ord` column.
/// `recv_bounded`: as for `unusable`.
fn reject_sql(slot: &str, clock: Clock, with_ord: bool, recv_bounded: bool) -> String {
    let t = clock.time();
    let ord = if with_ord { "ord, " } else { "" };
    let recv = if recv_bounded {
        "WHEN ts_recv / 60000000000 < $1 OR ts_recv / 60000000000 >= $2 THEN 'ts_recv out of range'\n            "
    } else {
        ""
    };
    format!(
        r#"
INSERT INTO trades_rejected (symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence,
                             price, size, side, flags, {ord}reason)
SELECT symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence, price, size, side, flags, {ord}
       CASE WHEN symbol = '' THEN 'no symbol mapping'
            WHEN ts_recv < 0 THEN 'undefined ts_recv'
            {recv}WHEN {t} / 60000000000 < $1 OR {t} / 60000000000 >= $2 THEN '{t} out of range'
            WHEN price = 9223372036854775807 THEN 'undefined price'
            WHEN size <= 0 THEN 'size not positive'
            ELSE 'size out of range' END
FROM {slot}
WHERE {}
"#,
        unusable(clock, recv_bounded)
    )
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RollupResult {
    pub trades: i64,
    pub bars: i64,
    pub rejected: i64,
}

type Client<'a> = pgrx::spi::SpiClient<'a>;

/// Runs `sql` with `params` ($1, $2, ...: the minute bounds, or the rollup's id); a failure
/// is a PostgreSQL ERROR naming the step.
fn run(client: &mut Client<'_>, sql: &str, params: &[i64], what: &str) -> u64 {
    let args: Vec<pgrx::datum::DatumWithOid> = params.iter().map(|v| (*v).into()).collect();
    client
        .update(sql, None, &args)
        .map(|t| t.len() as u64)
        .unwrap_or_else(|e| pgrx::error!("bars_rollup: {what}: {e}"))
}

/// One value of a one-row query.
fn value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    client: &mut Client<'_>,
    sql: &str,
) -> Option<T> {
    client
        .update(sql, None, &[])
        .and_then(|t| t.first().get_one::<T>())
        .unwrap_or_else(|e| pgrx::error!("bars_rollup: {e}"))
}

/// Refuses to run where it could miss trades or has nowhere to write them.
fn check_preconditions(client: &mut Client<'_>) {
    let isolation: String =
        value(client, "SELECT current_setting('transaction_isolation')").unwrap_or_default();
    if isolation != "read committed" {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            format!(
                "bars_rollup() needs READ COMMITTED isolation (this transaction is {isolation}): \
                 it must see every trade committed before it consumes staging"
            )
        );
    }
    if !value::<bool>(client, "SELECT price_bars_is_ready()").unwrap_or(false) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "price_bars was made by another application and lacks the columns trades bars need: \
             run SELECT mark_legacy(); first (it keeps every existing bar, marked legacy)"
        );
    }
}

/// The database's clock, pinned by the first rollup so that it never changes under bars.
/// `None`: the database's objects are still 0.2.0's (the library was upgraded, ALTER
/// EXTENSION ... UPDATE not yet run): it rolls up as 0.2.0 did, on the event clock.
fn pinned_clock(client: &mut Client<'_>) -> Option<Clock> {
    if !value::<bool>(client, "SELECT to_regclass('bar_settings') IS NOT NULL").unwrap_or(false) {
        return None;
    }
    run(
        client,
        "INSERT INTO bar_settings (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
        &[],
        "pinning the bar clock",
    );
    let name: String = value(client, "SELECT clock FROM bar_settings").unwrap_or_default();
    let clock = Clock::parse(&name)
        .unwrap_or_else(|| pgrx::error!("bars_rollup: unknown bar clock {name}"));
    Some(clock)
}

/// Moves the feeder to the other slot; returns the slot it left, then the one it writes.
fn claim_slots(client: &mut Client<'_>) -> [&'static str; 2] {
    run(
        client,
        &format!("SELECT pg_advisory_xact_lock({TRADEBARS_LOCK_CLASS}, {ROLLUP_LOCK})"),
        &[],
        "waiting for another rollup",
    );
    let epoch: i64 = value(client, "SELECT nextval('staging_epoch')")
        .unwrap_or_else(|| pgrx::error!("bars_rollup: staging_epoch returned NULL"));
    let quiet = quiet_slot(epoch);
    let other = SLOTS.iter().copied().find(|s| *s != quiet).unwrap_or(quiet);
    [quiet, other]
}

/// Whether the slot the feeder now writes holds stragglers and nobody is writing there.
/// (A batch that began before the switch, or a rolled-back rollup's trades: taking them
/// too when it is idle makes one call roll up everything committed before it.)
fn idle_with_stragglers(client: &mut Client<'_>, slot: &str) -> bool {
    value::<bool>(
        client,
        &format!(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE relation = '{slot}'::regclass \
             AND pid <> pg_backend_pid()) AND EXISTS (SELECT 1 FROM {slot})"
        ),
    )
    .unwrap_or(false)
}

/// This rollup: its id, and what the database's objects allow it to do.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// What `price_bars.changed_in` and the NOTIFY say, and `rollup_stats.rollups` once it
    /// commits: past every id a bar carries (see `run_rollup`).
    id: i64,
    clock: Clock,
    /// 0.3.0's objects: staging has `ord`, and `foreign_trades_bar` guards the merge.
    v030: bool,
    /// `rollup_bars` exists: the slot is aggregated once, into it.
    grouped: bool,
}

/// Rolls up one slot and empties it. Waits for a COPY still writing to it; later writers of
/// it wait for us.
fn roll_slot(client: &mut Client<'_>, slot: &str, plan: Plan, bounds: [i64; 2]) -> RollupResult {
    run(
        client,
        &format!("LOCK TABLE {slot} IN ACCESS EXCLUSIVE MODE"),
        &[],
        "claiming staging",
    );
    if plan.grouped {
        roll_grouped(client, slot, plan, bounds)
    } else {
        roll_inline(client, slot, plan, bounds)
    }
}

/// Aggregates the slot into `rollup_bars`, merges its good bars, sets aside the trades it
/// graded out, and empties both.
fn roll_grouped(client: &mut Client<'_>, slot: &str, plan: Plan, bounds: [i64; 2]) -> RollupResult {
    let clock = plan.clock;
    let groups = run(
        client,
        &group_sql(slot, clock),
        &bounds,
        "aggregating staged trades",
    );
    if groups == 0 {
        return RollupResult::default(); // the slot is empty
    }
    let (trades, unusable) = client
        .select(GROUP_COUNTS, None, &[])
        .and_then(|t| t.first().get_two::<i64, i64>())
        .unwrap_or_else(|e| pgrx::error!("bars_rollup: counting trades: {e}"));
    let (trades, unusable) = (trades.unwrap_or(0), unusable.unwrap_or(0));
    let bars = run(
        client,
        &merge_sql(Bars::Grouped, true),
        &[plan.id],
        "merging bars",
    ) as i64;
    let mut rejected = 0;
    if unusable > 0 {
        rejected = run(
            client,
            &reject_sql(slot, clock, true, true),
            &bounds,
            "keeping rejected trades",
        ) as i64;
    }
    // The aggregate's rule and the SQL's rule for what cannot be counted are one rule, kept
    // in two places (ohlc.rs, `unusable`): if they ever part, no trade may be lost silently.
    if rejected != unusable {
        pgrx::error!(
            "bars_rollup: {unusable} staged trades cannot be counted but {rejected} were set aside; nothing was rolled up"
        );
    }
    if bars > 0 {
        // The hours these bars are in, summed again with them (sql/hours.sql): bars() reads
        // long ranges from them.
        run(
            client,
            "SELECT hour_bars_refresh('rollup')",
            &[],
            "summing hours",
        );
    }
    run(
        client,
        &format!("TRUNCATE {slot}, rollup_bars"),
        &[],
        "consuming staging",
    );
    RollupResult {
        trades,
        bars,
        rejected,
    }
}

/// The rollup of a database whose objects predate `rollup_bars` (the library is newer than
/// its `ALTER EXTENSION ... UPDATE`): count, merge with each trade filtered, set aside.
fn roll_inline(client: &mut Client<'_>, slot: &str, plan: Plan, bounds: [i64; 2]) -> RollupResult {
    let (clock, with_ord) = (plan.clock, plan.v030);
    let args: Vec<pgrx::datum::DatumWithOid> = bounds.iter().map(|v| (*v).into()).collect();
    let (staged, unusable) = client
        .select(&census_sql(slot, clock), None, &args)
        .and_then(|t| t.first().get_two::<i64, i64>())
        .unwrap_or_else(|e| pgrx::error!("bars_rollup: counting staged trades: {e}"));
    let (staged, unusable) = (staged.unwrap_or(0), unusable.unwrap_or(0));
    let mut result = RollupResult {
        trades: staged - unusable,
        ..Default::default()
    };
    if staged == 0 {
        return result;
    }
    result.bars = run(
        client,
        &merge_sql(Bars::Inline(slot, clock), with_ord),
        &bounds,
        "merging bars",
    ) as i64;
    if unusable > 0 {
        result.rejected = run(
            client,
            &reject_sql(slot, clock, with_ord, false),
            &bounds,
            "keeping rejected trades",
        ) as i64;
    }
    run(
        client,
        &format!("TRUNCATE {slot}"),
        &[],
        "consuming staging",
    );
    result
}

fn run_rollup() -> RollupResult {
    Spi::connect_mut(|client| {
        check_preconditions(client);
        let [quiet, other] = claim_slots(client);
        let clock = pinned_clock(client);
        let grouped =
            value::<bool>(client, "SELECT to_regclass('rollup_bars') IS NOT NULL").unwrap_or(false);
        // Past every id a bar carries: rollup_stats is not dumped, price_bars is, so ids go on
        // rising after a dump and restore (bars_changed_since() depends on it).
        let next_id = if grouped {
            "SELECT greatest(s.rollups, coalesce((SELECT max(changed_in) FROM price_bars), 0)) + 1 \
             FROM rollup_stats s"
        } else {
            "SELECT rollups + 1 FROM rollup_stats"
        };
        let plan = Plan {
            id: value(client, next_id).unwrap_or(1),
            clock: clock.unwrap_or(Clock::Event),
            v030: clock.is_some(),
            grouped,
        };
        // A day of trades makes a few hundred thousand bars: with the default 4MB the hash
        // aggregate spills to disk. Raised for this rollup only, put back before returning.
        let work_mem: String = value(
            client,
            &format!(
                "SELECT current_setting('work_mem'), \
                 CASE WHEN pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('{ROLLUP_WORK_MEM}') \
                      THEN set_config('work_mem', '{ROLLUP_WORK_MEM}', true) END"
            ),
        )
        .unwrap_or_default();
        let now_minute: i64 =
            value(client, "SELECT (extract(epoch FROM now())::bigint / 60)").unwrap_or_default();
        let bounds = [MIN_MINUTE, now_minute + 24 * 60];
        let mut result = roll_slot(client, quiet, plan, bounds);
        if idle_with_stragglers(client, other) {
            let more = roll_slot(client, other, plan, bounds);
            result.trades += more.trades;
            result.bars += more.bars;
            result.rejected += more.rejected;
            if plan.grouped && result.bars > 0 {
                // A bar both slots merged into is one bar written.
                result.bars = value(
                    client,
                    &format!(
                        "SELECT count(*) FROM price_bars WHERE changed_in = {}",
                        plan.id
                    ),
                )
                .unwrap_or(result.bars);
            }
        }
        let stats = format!(
            "UPDATE rollup_stats SET rollups = greatest(rollups + 1, {id}), trades = trades + {t}, \
             bars_written = bars_written + {b}, rejected = rejected + {r}, \
             last_rollup_at = clock_timestamp(), last_trades = {t}",
            t = result.trades,
            b = result.bars,
            r = result.rejected,
            id = plan.id
        );
        run(client, &stats, &[], "recording totals");
        if plan.grouped && result.bars > 0 {
            // Delivered at commit, with the bars: see sql/changes.sql.
            run(
                client,
                &format!("SELECT pg_notify('{BARS_CHANNEL}', $1::text)"),
                &[plan.id],
                "notifying listeners",
            );
        }
        let restore = format!(
            "SELECT set_config('work_mem', {}, true)",
            pgrx::spi::quote_literal(&work_mem)
        );
        run(client, &restore, &[], "restoring work_mem");
        result
    })
}

/// Rolls every staged trade into 1-minute bars. Returns what it did.
#[pg_extern(volatile, security_definer, requires = ["tradebars_schema", "staging_functions", "migration_legacy", "ohlcv_aggregate", "tradebars_identity"])]
#[search_path(@extschema@, pg_temp)]
fn bars_rollup() -> TableIterator<
    'static,
    (
        name!(trades_rolled_up, i64),
        name!(bars_written, i64),
        name!(trades_rejected, i64),
    ),
> {
    let r = run_rollup();
    TableIterator::once((r.trades, r.bars, r.rejected))
}

pgrx::extension_sql_file!(
    "../../sql/rollup.sql",
    name = "rollup_status",
    requires = ["tradebars_schema"],
);

pgrx::extension_sql_file!(
    "../../sql/changes.sql",
    name = "bar_changes",
    requires = ["migration_legacy"],
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// Stages trades: (symbol, ts_event ns, sequence, publisher, price fixed, size).
    pub fn stage(trades: &[(&str, i64, i64, i32, i64, i64)]) {
        // Tests share staging; one at a time (the lock lasts until the test's transaction ends).
        Spi::run("SELECT pg_advisory_xact_lock(1, 1)").unwrap();
        for (symbol, ts, seq, publisher, price, size) in trades {
            let sql = format!(
                "INSERT INTO trades_staging_{} VALUES ($1, 1, $2, $3, $3, $4, $5, $6, 'B', 0)",
                Spi::get_one::<i64>("SELECT last_value % 2 FROM staging_epoch")
                    .unwrap()
                    .unwrap()
            );
            Spi::run_with_args(
                &sql,
                &[
                    (*symbol).into(),
                    (*publisher).into(),
                    (*ts).into(),
                    (*seq).into(),
                    (*price).into(),
                    (*size).into(),
                ],
            )
            .unwrap();
        }
    }

    pub fn rollup() -> (i64, i64, i64) {
        let (t, b, r) = Spi::get_three::<i64, i64, i64>("SELECT * FROM bars_rollup()").unwrap();
        (t.unwrap(), b.unwrap(), r.unwrap())
    }

    /// Every bar as text: symbol, minute, open, high, low, close, volume, count, vwap.
    pub fn bars_text() -> String {
        Spi::get_one::<String>(
            "SELECT coalesce(string_agg(format('%s %s %s %s %s %s %s %s %s', symbol,
                    to_char(\"timestamp\" AT TIME ZONE 'UTC', 'HH24:MI'), open, high, low, close,
                    volume, trade_count, vwap), E'\\n' ORDER BY symbol, \"timestamp\"), '')
             FROM price_bars WHERE data_source = 'trades'",
        )
        .unwrap()
        .unwrap()
    }

    const MIN: i64 = 60_000_000_000;
    const T0: i64 = 1_700_000_040 * 1_000_000_000; // 2023-11-14 22:14:00 UTC, a minute boundary

    fn sample() -> Vec<(&'static str, i64, i64, i32, i64, i64)> {
        vec![
            ("ESH4", T0 + 5, 10, 1, 4_783_250_000_000, 2),
            ("ESH4", T0 + 1, 11, 1, 4_783_000_000_000, 1), // earlier event, later arrival: the open
            ("ESH4", T0 + 9, 12, 1, 4_784_000_000_000, 5),
            ("ESH4", T0 + MIN + 3, 13, 1, 4_782_500_000_000, 4),
            ("QQQ", T0 + 7, 87442, 2, 310_100_000_000, 700), // same ts and price, two trades
            ("QQQ", T0 + 7, 87443, 2, 310_100_000_000, 200),
        ]
    }

    const EXPECTED: &str = "ESH4 22:14 4783 4784 4783 4784 8 3 4783.6875\n\
                            ESH4 22:15 4782.5 4782.5 4782.5 4782.5 4 1 4782.5\n\
                            QQQ 22:14 310.1 310.1 310.1 310.1 900 2 310.1";

    #[pg_test]
    fn rollup_builds_exact_bars() {
        stage(&sample());
        assert_eq!(rollup(), (6, 3, 0));
        assert_eq!(bars_text(), EXPECTED);
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM trades_staging").unwrap(),
            Some(0)
        );
        // the rollup's own bars are gone with its transaction's work
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM rollup_bars").unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn rollup_in_pieces_equals_one_rollup() {
        for trade in sample() {
            stage(&[trade]);
            rollup();
        }
        assert_eq!(bars_text(), EXPECTED);
        // nothing staged: nothing changes
        assert_eq!(rollup(), (0, 0, 0));
        assert_eq!(bars_text(), EXPECTED);
    }

    #[pg_test]
    fn late_trade_becomes_the_open_by_event_time() {
        stage(&sample()[..1]);
        rollup();
        stage(&[("ESH4", T0, 1, 1, 4_700_000_000_000, 1)]); // arrives last, happened first
        rollup();
        let open =
            Spi::get_one::<String>("SELECT open::text FROM price_bars WHERE symbol = 'ESH4'")
                .unwrap();
        assert_eq!(open.as_deref(), Some("4700"));
    }

    #[pg_test]
    fn bad_trades_are_kept_aside_and_counted() {
        stage(&[
            ("ESH4", T0, 1, 1, i64::MAX, 1),
            ("ESH4", T0, 2, 1, 4_000_000_000_000, 0),
            ("", T0, 3, 1, 4_000_000_000_000, 1),
            ("ESH4", 5, 4, 1, 4_000_000_000_000, 1),
            (
                "ESH4",
                4_102_444_800_000_000_000,
                6,
                1,
                4_000_000_000_000,
                1,
            ), // the year 2100
            ("SPREAD", T0, 5, 1, -2_500_000_000, 3),
        ]);
        assert_eq!(rollup(), (1, 1, 5));
        let reasons = Spi::get_one::<String>(
            "SELECT string_agg(reason, ',' ORDER BY reason) FROM trades_rejected",
        )
        .unwrap();
        assert_eq!(
            reasons.as_deref(),
            Some("no symbol mapping,size not positive,ts_recv out of range,ts_recv out of range,undefined price")
        );
        assert_eq!(bars_text(), "SPREAD 22:14 -2.5 -2.5 -2.5 -2.5 3 1 -2.5");
    }

    /// Stages one trade with distinct times: (symbol, ts_event, ts_recv, ord, price, size).
    fn stage_timed(symbol: &str, ts_event: i64, ts_recv: i64, ord: i32, price: i64, size: i64) {
        Spi::run("SELECT pg_advisory_xact_lock(1, 1)").unwrap();
        let slot = Spi::get_one::<i64>("SELECT last_value % 2 FROM staging_epoch")
            .unwrap()
            .unwrap();
        Spi::run_with_args(
            &format!(
                "INSERT INTO trades_staging_{slot} (symbol, instrument_id, publisher_id, ts_event, \
                 ts_recv, sequence, price, size, side, flags, ord) \
                 VALUES ($1, 1, 1, $2, $3, 16013, $4, $5, 'B', 0, $6)"
            ),
            &[
                symbol.into(),
                ts_event.into(),
                ts_recv.into(),
                price.into(),
                size.into(),
                ord.into(),
            ],
        )
        .unwrap();
    }

    fn minutes_of(symbol: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT string_agg(to_char(\"timestamp\" AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || open || ' ' || close || ' ' || volume, ',' ORDER BY \"timestamp\")
             FROM price_bars WHERE symbol = '{symbol}'"
        ))
        .unwrap()
        .unwrap_or_default()
    }

    #[pg_test]
    fn a_trade_belongs_to_the_minute_of_its_receipt_by_default() {
        // executed 0.4 ms before 22:15, received 0.3 ms after: Databento's 22:15 bar
        stage_timed(
            "ESH4",
            T0 + MIN - 400_000,
            T0 + MIN + 300_000,
            0,
            4_807_000_000_000,
            2,
        );
        stage_timed("ESH4", T0 + 5, T0 + 9, 0, 4_806_000_000_000, 1);
        rollup();
        assert_eq!(minutes_of("ESH4"), "22:14 4806 4806 1,22:15 4807 4807 2");
        assert_eq!(
            Spi::get_one::<String>("SELECT bar_clock()")
                .unwrap()
                .as_deref(),
            Some("ts_recv")
        );
        // the clock is fixed once trades bars exist
        let refused = std::panic::catch_unwind(|| {
            Spi::run("SELECT set_bar_clock('ts_event')").unwrap();
        });
        assert!(refused.is_err());
    }

    #[pg_test]
    fn under_the_event_clock_a_trade_belongs_to_its_exchange_minute() {
        Spi::run("SELECT set_bar_clock('ts_event')").unwrap();
        stage_timed(
            "ESH4",
            T0 + MIN - 400_000,
            T0 + MIN + 300_000,
            0,
            4_807_000_000_000,
            2,
        );
        rollup();
        assert_eq!(minutes_of("ESH4"), "22:14 4807 4807 2");
    }

    #[pg_test]
    fn under_the_event_clock_an_implausible_receipt_is_set_aside() {
        // the feeder keeps such a trade out of trade identity: counted, it would count again
        // with every load that delivers it
        Spi::run("SELECT set_bar_clock('ts_event')").unwrap();
        let year_2099 = 4_070_908_800 * 1_000_000_000;
        stage_timed("ESH4", T0 + 5, year_2099, 0, 4_807_000_000_000, 2);
        stage_timed("ESH4", T0 + 6, T0 + 7, 0, 4_808_000_000_000, 1);
        assert_eq!(rollup(), (1, 1, 1));
        assert_eq!(minutes_of("ESH4"), "22:14 4808 4808 1");
        let reason =
            Spi::get_one::<String>("SELECT string_agg(reason, ',') FROM trades_rejected").unwrap();
        assert_eq!(reason.as_deref(), Some("ts_recv out of range"));
    }

    #[pg_test]
    fn rollup_ids_pass_every_id_a_bar_carries() {
        // as after a dump and restore, where rollup_stats starts again and price_bars does not
        stage(&sample()[..1]);
        rollup();
        Spi::run("UPDATE rollup_stats SET rollups = 0").unwrap();
        stage(&sample()[3..4]);
        rollup();
        let ids = Spi::get_one::<String>(
            "SELECT string_agg(changed_in::text, ',' ORDER BY \"timestamp\") FROM price_bars",
        )
        .unwrap();
        assert_eq!(ids.as_deref(), Some("1,2"));
    }

    #[pg_test]
    fn a_bar_both_slots_merge_into_is_written_once() {
        stage(&sample()[..1]);
        // the same minute in the other slot too (a straggler), nobody writing there
        let other = Spi::get_one::<i64>("SELECT 1 - last_value % 2 FROM staging_epoch")
            .unwrap()
            .unwrap();
        Spi::run(&format!(
            "INSERT INTO trades_staging_{other} VALUES ('ESH4', 1, 1, {}, {}, 20, 4783500000000, 1, 'B', 0)",
            T0 + 8,
            T0 + 8
        ))
        .unwrap();
        assert_eq!(rollup(), (2, 1, 0));
        assert_eq!(minutes_of("ESH4"), "22:14 4783.25 4783.5 3");
    }

    #[pg_test]
    fn trades_sharing_a_receipt_keep_the_order_they_were_delivered_in() {
        // a sweep: one ts_recv, one sequence, the higher price first (as ESH4 at 23:03)
        stage_timed("ESH4", T0 + 7, T0 + 10, 1, 4_806_750_000_000, 1);
        stage_timed("ESH4", T0 + 7, T0 + 10, 0, 4_807_000_000_000, 1);
        rollup();
        assert_eq!(minutes_of("ESH4"), "22:14 4807 4806.75 2");
    }

    #[test]
    fn the_quiet_slot_is_the_one_the_feeder_just_left() {
        // staging_slot() writes to epoch % 2; after nextval the old epoch's slot is quiet
        for epoch in 1..6 {
            assert_eq!(quiet_slot(epoch), SLOTS[((epoch - 1) % 2) as usize]);
            assert_ne!(quiet_slot(epoch), SLOTS[(epoch % 2) as usize]);
        }
    }

    #[test]
    fn rollup_sql_reads_only_the_named_slot() {
        for slot in SLOTS {
            let sql = group_sql(slot, Clock::Recv)
                + &merge_sql(Bars::Inline(slot, Clock::Event), false)
                + &reject_sql(slot, Clock::Event, true, true);
            let other = SLOTS
                .iter()
                .find(|s| **s != slot)
                .copied()
                .unwrap_or_default();
            assert!(sql.contains(slot));
            assert!(!sql.contains(other));
        }
    }
}

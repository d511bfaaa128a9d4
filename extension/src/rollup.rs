//! `bars_rollup()`: claim the quiet staging slot, aggregate it per symbol and minute with
//! `ohlcv`, merge the bars into `price_bars`, set aside what cannot be counted, TRUNCATE.
//!
//! Exactly once: everything happens in the caller's transaction, so bars appear if and only
//! if the staged trades they count are consumed. Rollups are serialized by an advisory lock;
//! the feeder keeps writing to the other slot meanwhile (see sql/schema.sql).

use pgrx::prelude::*;

use tradebars_contract::reject;
pub use tradebars_contract::{lock, BARS_CHANNEL, NS_PER_MINUTE, STAGING_SLOTS as SLOTS};
use tradebars_contract::{MAX_SIZE, UNDEF_PRICE};

/// work_mem for the rollup's hash aggregate (at least; a larger setting is kept).
const ROLLUP_WORK_MEM: &str = "256MB";

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
        format!(" OR ts_recv / {NS_PER_MINUTE} < $1 OR ts_recv / {NS_PER_MINUTE} >= $2")
    } else {
        String::new()
    };
    format!(
        "symbol = '' OR ts_recv < 0{recv} OR {t} / {NS_PER_MINUTE} < $1 OR {t} / {NS_PER_MINUTE} >= $2 \
         OR price = {UNDEF_PRICE} OR size <= 0 OR size > {MAX_SIZE}"
    )
}

/// How many trades the slot holds, and how many of them cannot be counted (the path of a
/// database whose objects predate `rollup_bars`).
fn census_sql(slot: &str, clock: Clock) -> String {
    format!(
        "SELECT count(*), count(*) FILTER (WHERE {}) FROM @extschema@.{slot}",
        unusable(clock, false)
    )
}

/// The minute a staged trade belongs to. Under the event clock a trade without `ts_recv`
/// takes minute -1, so its group is graded out like any implausible minute; under the recv
/// clock its minute is 0 already.
fn minute_of(clock: Clock) -> String {
    match clock {
        Clock::Recv => format!("ts_recv / {NS_PER_MINUTE}"),
        Clock::Event => format!(
            "CASE WHEN ts_recv < 0 OR ts_recv / {NS_PER_MINUTE} < $1 OR ts_recv / {NS_PER_MINUTE} >= $2 \
                  THEN -1 ELSE ts_event / {NS_PER_MINUTE} END"
        ),
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
INSERT INTO @extschema@.rollup_bars (symbol, minute, good, open_px, high_px, low_px, close_px, open_ts,
                         open_seq, close_ts, close_seq, volume, trade_count, notional_px, rejected)
SELECT symbol, minute, symbol <> '' AND minute >= $1 AND minute < $2 AND (b).trade_count > 0,
       (b).open_px, (b).high_px, (b).low_px, (b).close_px, (b).open_ts, (b).open_seq,
       (b).close_ts, (b).close_seq, (b).volume, (b).trade_count, (b).notional_px, (b).rejected
FROM (
    SELECT symbol, {minute} AS minute, @internal@.ohlcv({t}, {tiebreak}::bigint, publisher_id, price, size) AS b
    FROM @extschema@.{slot}
    GROUP BY 1, 2
) agg
"#
    )
}

/// What `rollup_bars` holds: trades counted, trades to set aside, and bars to write.
const GROUP_COUNTS: &str = "SELECT coalesce(sum(trade_count) FILTER (WHERE good), 0)::bigint, \
     coalesce(sum(rejected + CASE WHEN good THEN 0 ELSE trade_count END), 0)::bigint, \
     count(*) FILTER (WHERE good) \
     FROM @extschema@.rollup_bars";

/// Where the merge takes its bars from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bars<'a> {
    /// `rollup_bars`, filled by `group_sql`: the bars of minutes up to the newest bar of
    /// their symbol (`Minutes::Known`, merged) or past it (`Minutes::New`, inserted).
    Grouped(Minutes),
    /// Aggregated inline from a slot, filtering each trade (objects older than rollup_bars).
    Inline(&'a str, Clock),
}

/// Which of `rollup_bars`' bars, by where their minute lies from the newest bar that
/// price_bars holds of their symbol, of any source: its newest trades bar is no later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Minutes {
    /// At or before it: the minute may hold a bar, so the bar is merged (ON CONFLICT).
    Known,
    /// After it, or the symbol has none: the minute holds nothing, so a plain INSERT. It
    /// skips ON CONFLICT's speculative insertion, measured at about a quarter of what
    /// writing a bar cost (README, "Benchmarks"); a backfill and each minute a live feed
    /// begins write their bars this way.
    New,
}

/// Where each bar of `rollup_bars` lies from its symbol's newest bar: one probe per symbol,
/// not per bar, the first entry of the unique index backwards (of any source: the newest
/// trades bar would walk past every newer legacy or official bar, and the planner, seeing few
/// trades bars, priced it as a scan of the symbol and compiled both statements by JIT).
/// Joined on symbol alone, as Citus joins colocated shards. Read twice in one rollup (merged
/// bars, then new ones): the merge writes no minute past the newest, so both reads split
/// alike; `write_bars` checks that they did.
const NEWEST_OF_SYMBOL: &str = r#"@extschema@.rollup_bars r
JOIN (SELECT s.symbol, n.newest
      FROM (SELECT symbol FROM @extschema@.rollup_bars WHERE good GROUP BY symbol) s
      LEFT JOIN LATERAL (SELECT p."timestamp" AS newest FROM @extschema@.price_bars p
                         WHERE p.symbol = s.symbol
                         ORDER BY p."timestamp" DESC LIMIT 1) n ON true) h ON h.symbol = r.symbol
WHERE r.good AND "#;

/// The bars to merge, as the merge's SELECT. From `rollup_bars`, each carries the rollup's
/// id ($1) as `changed_in`.
fn bars_select(bars: Bars<'_>) -> String {
    let changed_in = if let Bars::Grouped(_) = bars {
        ", $1"
    } else {
        ""
    };
    // `k`: where the key columns are read; `p`: where the bar's values are read
    let (k, p, from) = match bars {
        Bars::Grouped(minutes) => {
            let which = match minutes {
                Minutes::Known => r#"to_timestamp(r.minute * 60) <= h.newest"#,
                Minutes::New => r#"(h.newest IS NULL OR to_timestamp(r.minute * 60) > h.newest)"#,
            };
            ("r.", "r.", format!("{NEWEST_OF_SYMBOL}{which}"))
        }
        Bars::Inline(slot, clock) => {
            let (t, tiebreak) = (clock.time(), clock.tiebreak());
            (
                "",
                "(b).",
                format!(
                    "(SELECT symbol, {t} / {NS_PER_MINUTE} AS minute, \
                            @internal@.ohlcv({t}, {tiebreak}::bigint, publisher_id, price, size) AS b \
                      FROM @extschema@.{slot} \
                      WHERE symbol <> '' AND ts_recv >= 0 AND {t} / {NS_PER_MINUTE} >= $1 \
                        AND {t} / {NS_PER_MINUTE} < $2 \
                      GROUP BY symbol, {t} / {NS_PER_MINUTE}) agg \
                     WHERE (b).trade_count > 0"
                ),
            )
        }
    };
    format!(
        "SELECT {k}symbol, to_timestamp({k}minute * 60), \
                @internal@.fixed_to_numeric({p}open_px::numeric), \
                @internal@.fixed_to_numeric({p}high_px::numeric), \
                @internal@.fixed_to_numeric({p}low_px::numeric), \
                @internal@.fixed_to_numeric({p}close_px::numeric), \
                {p}volume, {p}trade_count, \
                trim_scale(round(@internal@.fixed_to_numeric({p}notional_px) / {p}volume, 9)), \
                @internal@.fixed_to_numeric({p}notional_px), \
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
              THEN @internal@.foreign_trades_bar(p.symbol, p.\"timestamp\") \
              ELSE p.volume + EXCLUDED.volume END"
    } else {
        "p.volume + EXCLUDED.volume"
    };
    let set_changed_in = if let Bars::Grouped(_) = bars {
        ",\n    changed_in = EXCLUDED.changed_in"
    } else {
        ""
    };
    format!(
        r#"
{}
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
    notional = trim_scale(p.notional + EXCLUDED.notional),
    vwap = trim_scale(round((p.notional + EXCLUDED.notional) / (p.volume + EXCLUDED.volume), 9)){set_changed_in}
"#,
        insert_sql(bars)
    )
}

/// The rollup's insert of the bars of minutes that hold nothing yet (`Minutes::New`): a plain
/// INSERT, shaped as the merge is.
fn insert_new_sql() -> String {
    insert_sql(Bars::Grouped(Minutes::New))
}

/// INSERT INTO price_bars ... SELECT of `bars`, the part the merge and the plain insert share.
fn insert_sql(bars: Bars<'_>) -> String {
    let changed_in = if let Bars::Grouped(_) = bars {
        ", changed_in"
    } else {
        ""
    };
    format!(
        r#"INSERT INTO @extschema@.price_bars AS p (symbol, "timestamp", open, high, low, close, volume, trade_count,
                             vwap, notional, open_ts_ns, open_seq, close_ts_ns, close_seq,
                             is_legacy, data_source{changed_in})
{}"#,
        bars_select(bars)
    )
}

/// `with_ord`: the tables have 0.3.0's `ord` column.
/// `recv_bounded`: as for `unusable`.
fn reject_sql(slot: &str, clock: Clock, with_ord: bool, recv_bounded: bool) -> String {
    let t = clock.time();
    let ord = if with_ord { "ord, " } else { "" };
    let out = reject::OUT_OF_RANGE;
    let recv = if recv_bounded {
        format!(
            "WHEN ts_recv / {NS_PER_MINUTE} < $1 OR ts_recv / {NS_PER_MINUTE} >= $2 THEN 'ts_recv {out}'\n            "
        )
    } else {
        String::new()
    };
    let (no_symbol, no_recv) = (reject::NO_SYMBOL, reject::UNDEFINED_TS_RECV);
    let (no_price, size_neg, size_big) = (
        reject::UNDEFINED_PRICE,
        reject::SIZE_NOT_POSITIVE,
        reject::SIZE_OUT_OF_RANGE,
    );
    format!(
        r#"
INSERT INTO @extschema@.trades_rejected (symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence,
                             price, size, side, flags, {ord}reason)
SELECT symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence, price, size, side, flags, {ord}
       CASE WHEN symbol = '' THEN '{no_symbol}'
            WHEN ts_recv < 0 THEN '{no_recv}'
            {recv}WHEN {t} / {NS_PER_MINUTE} < $1 OR {t} / {NS_PER_MINUTE} >= $2 THEN '{t} {out}'
            WHEN price = {UNDEF_PRICE} THEN '{no_price}'
            WHEN size <= 0 THEN '{size_neg}'
            ELSE '{size_big}' END
FROM @extschema@.{slot}
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

/// The rollup's SPI connection. Its statements name the extension's objects as
/// `@extschema@.name` and its helpers as `@internal@.name`, and run with the search_path
/// `pg_catalog, pg_temp` (`bars_rollup()` runs as the extension's owner): a function or
/// operator someone put in the extension's schema is never found unless named, and
/// `pg_temp` is never searched for functions. The rollup sets that path itself, because a
/// database whose objects are older than this library still has their path (see
/// `use_own_search_path`).
struct Client<'c, 'a> {
    spi: &'c mut pgrx::spi::SpiClient<'a>,
    /// The extension's schema, quoted.
    schema: String,
    /// Where its helpers are: `tradebars_internal` since 0.3.0, the extension's schema before.
    internal: String,
}

impl<'a> Client<'_, 'a> {
    fn qualified(&self, sql: &str) -> String {
        sql.replace("@extschema@", &self.schema)
            .replace("@internal@", &self.internal)
    }

    fn update(
        &mut self,
        sql: &str,
        args: &[pgrx::datum::DatumWithOid],
    ) -> pgrx::spi::SpiResult<pgrx::spi::SpiTupleTable<'a>> {
        let sql = self.qualified(sql);
        self.spi.update(&sql, None, args)
    }

    fn select(
        &self,
        sql: &str,
        args: &[pgrx::datum::DatumWithOid],
    ) -> pgrx::spi::SpiResult<pgrx::spi::SpiTupleTable<'a>> {
        self.spi.select(&self.qualified(sql), None, args)
    }
}

/// Sets this call's search_path to `pg_catalog, pg_temp`; returns the one to put back. The
/// function's own SET clause would do as well once `ALTER EXTENSION tradebars UPDATE` has
/// run, but until then it is the older version's, which holds the extension's schema. (The
/// older version's helpers this calls, such as its `price_bars_is_ready()`, keep their own
/// path until that update: README, "Roles and the extension's schema".)
fn use_own_search_path(spi: &mut pgrx::spi::SpiClient<'_>) -> Step<String> {
    let what = "setting the search_path";
    spi.update(
        "SELECT pg_catalog.current_setting('search_path'), \
                pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)",
        None,
        &[],
    )
    .and_then(|t| t.first().get_one::<String>())
    .map(Option::unwrap_or_default)
    .map_err(|source| RollupError::Step { what, source })
}

/// The extension's schema and that of its helpers, quoted as identifiers.
fn extension_schemas(spi: &mut pgrx::spi::SpiClient<'_>) -> Step<(String, String)> {
    let what = "finding the extension's schema";
    let row = spi
        .update(
            "SELECT quote_ident(n.nspname), \
                    CASE WHEN to_regnamespace('tradebars_internal') IS NULL THEN quote_ident(n.nspname) \
                         ELSE 'tradebars_internal' END \
             FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'tradebars'",
            None,
            &[],
        )
        .map_err(|source| RollupError::Step { what, source })?
        .first();
    let get = |i| {
        row.get::<String>(i)
            .map_err(|source| RollupError::Step { what, source })
    };
    match (get(1)?, get(2)?) {
        // Placed inside string literals too ('@extschema@.bar_settings'): PostgreSQL refuses
        // such characters in an extension's schema when it creates or updates it, but the
        // schema's owner may rename it later.
        (Some(schema), _) if schema.contains(['$', '\'', '\\']) => {
            Err(RollupError::UnsafeSchema(schema))
        }
        (Some(schema), Some(internal)) => Ok((schema, internal)),
        _ => Err(RollupError::NoSchema),
    }
}

/// What stops a rollup. Each is raised as one PostgreSQL ERROR with its SQLSTATE, and the
/// caller's transaction keeps nothing of the rollup (see the module's header).
#[derive(Debug)]
enum RollupError {
    /// A statement of the step `what` failed in SPI (an ERROR PostgreSQL raises itself
    /// carries its own SQLSTATE and never comes back here).
    Step {
        what: &'static str,
        source: pgrx::spi::SpiError,
    },
    /// 25000: under REPEATABLE READ or SERIALIZABLE it would miss trades committed later.
    Isolation(String),
    /// 25006: a read-only transaction (or a standby) cannot write bars.
    ReadOnly,
    /// 55000: `price_bars` is another application's table until `mark_legacy()`.
    PriceBarsNotReady,
    /// XX000: `bar_settings` names a clock this library does not know.
    UnknownClock(String),
    /// XX000: `staging_epoch` answered NULL.
    NoEpoch,
    /// XX000: pg_extension has no row for tradebars.
    NoSchema,
    /// 42602: the extension's schema was renamed to a name with `$`, `'` or `\`.
    UnsafeSchema(String),
    /// XX000: the aggregate and the SQL disagree on which trades cannot be counted.
    RejectsDisagree { unusable: i64, rejected: i64 },
    /// 40001: the bars written are not the bars grouped (another session wrote bars of these
    /// symbols meanwhile, or a trigger skipped rows); a retry sees them.
    BarsDisagree { bars: i64, written: i64 },
    /// 40001: another session wrote a bar into a minute the rollup was inserting.
    BarWrittenMeanwhile(String),
}

impl std::fmt::Display for RollupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollupError::Step { what, source } => write!(f, "bars_rollup: {what}: {source}"),
            RollupError::Isolation(level) => write!(
                f,
                "bars_rollup() needs READ COMMITTED isolation (this transaction is {level}): \
                 it must see every trade committed before it consumes staging"
            ),
            RollupError::ReadOnly => f.write_str(
                "bars_rollup() writes bars and consumes staging: it cannot run in a read-only \
                 transaction (or on a standby); call it read-write, on the primary",
            ),
            RollupError::PriceBarsNotReady => f.write_str(
                "price_bars was made by another application and lacks the columns trades bars \
                 need: run SELECT mark_legacy(); first (it keeps every existing bar, marked legacy)",
            ),
            RollupError::UnknownClock(name) => write!(f, "bars_rollup: unknown bar clock {name}"),
            RollupError::NoEpoch => f.write_str("bars_rollup: staging_epoch returned NULL"),
            RollupError::UnsafeSchema(name) => write!(
                f,
                "bars_rollup: the extension's schema is named {name}: a name with $, ' or \\ \
                 is not one the rollup can use (PostgreSQL refuses it for an extension's schema); \
                 rename the schema back"
            ),
            RollupError::NoSchema => {
                f.write_str("bars_rollup: pg_extension has no row for tradebars, the schema of its objects is unknown")
            }
            RollupError::BarsDisagree { bars, written } => write!(
                f,
                "bars_rollup: {bars} bars were grouped but {written} were written (another \
                 session wrote bars of the same symbols meanwhile, or a trigger on price_bars \
                 skipped rows); nothing was rolled up"
            ),
            RollupError::BarWrittenMeanwhile(why) => write!(
                f,
                "bars_rollup: another session wrote a bar the rollup was writing ({why}); \
                 nothing was rolled up, a retry merges with it"
            ),
            RollupError::RejectsDisagree { unusable, rejected } => write!(
                f,
                "bars_rollup: {unusable} staged trades cannot be counted but {rejected} were set \
                 aside; nothing was rolled up"
            ),
        }
    }
}

impl std::error::Error for RollupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RollupError::Step { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl RollupError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            RollupError::Isolation(_) => PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            RollupError::ReadOnly => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            RollupError::PriceBarsNotReady => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            RollupError::UnsafeSchema(_) => PgSqlErrorCode::ERRCODE_INVALID_NAME,
            RollupError::BarsDisagree { .. } | RollupError::BarWrittenMeanwhile(_) => {
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
            }
            _ => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    fn raise(self) -> ! {
        ereport!(ERROR, self.sqlstate(), self.to_string());
    }
}

type Step<T> = Result<T, RollupError>;

/// Runs `sql` with `params` ($1, $2, ...: the minute bounds, or the rollup's id); returns
/// the rows it touched. A failure names the step `what`.
fn run(client: &mut Client<'_, '_>, sql: &str, params: &[i64], what: &'static str) -> Step<u64> {
    let args: Vec<pgrx::datum::DatumWithOid> = params.iter().map(|v| (*v).into()).collect();
    client
        .update(sql, &args)
        .map(|t| t.len() as u64)
        .map_err(|source| RollupError::Step { what, source })
}

/// One value of a one-row query.
fn value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    client: &mut Client<'_, '_>,
    sql: &str,
    what: &'static str,
) -> Step<Option<T>> {
    client
        .update(sql, &[])
        .and_then(|t| t.first().get_one::<T>())
        .map_err(|source| RollupError::Step { what, source })
}

/// A yes-or-no query; NULL is no.
fn flag(client: &mut Client<'_, '_>, sql: &str, what: &'static str) -> Step<bool> {
    Ok(value::<bool>(client, sql, what)?.unwrap_or(false))
}

/// The N bigint values of a one-row query, NULL read as 0.
fn counts<const N: usize>(
    client: &mut Client<'_, '_>,
    sql: &str,
    args: &[i64],
    what: &'static str,
) -> Step<[i64; N]> {
    let args: Vec<pgrx::datum::DatumWithOid> = args.iter().map(|v| (*v).into()).collect();
    let step = |source| RollupError::Step { what, source };
    let row = client.select(sql, &args).map_err(step)?.first();
    let mut values = [0; N];
    for (i, value) in values.iter_mut().enumerate() {
        *value = row.get::<i64>(i + 1).map_err(step)?.unwrap_or(0);
    }
    Ok(values)
}

/// Refuses to run where it could miss trades or has nowhere to write them.
fn check_preconditions(client: &mut Client<'_, '_>) -> Step<()> {
    let isolation: String = value(
        client,
        "SELECT current_setting('transaction_isolation')",
        "reading the isolation level",
    )?
    .unwrap_or_default();
    if isolation != "read committed" {
        return Err(RollupError::Isolation(isolation));
    }
    if flag(
        client,
        "SELECT current_setting('transaction_read_only')::boolean",
        "reading whether the transaction is read-only",
    )? {
        return Err(RollupError::ReadOnly);
    }
    if !flag(
        client,
        "SELECT @internal@.price_bars_is_ready()",
        "checking price_bars",
    )? {
        return Err(RollupError::PriceBarsNotReady);
    }
    Ok(())
}

/// The database's clock, pinned by the first rollup so that it never changes under bars.
/// `None`: the database's objects are still 0.2.0's (the library was upgraded, ALTER
/// EXTENSION ... UPDATE not yet run): it rolls up as 0.2.0 did, on the event clock.
fn pinned_clock(client: &mut Client<'_, '_>) -> Step<Option<Clock>> {
    let settings = "SELECT to_regclass('@extschema@.bar_settings') IS NOT NULL";
    if !flag(client, settings, "looking for bar_settings")? {
        return Ok(None);
    }
    run(
        client,
        "INSERT INTO @extschema@.bar_settings (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
        &[],
        "pinning the bar clock",
    )?;
    let name: String = value(
        client,
        "SELECT clock FROM @extschema@.bar_settings",
        "reading the bar clock",
    )?
    .unwrap_or_default();
    Clock::parse(&name)
        .map(Some)
        .ok_or(RollupError::UnknownClock(name))
}

/// Claim: moves the feeder to the other slot; returns the slot it left, then the one it
/// writes.
fn claim_slots(client: &mut Client<'_, '_>) -> Step<[&'static str; 2]> {
    run(
        client,
        &format!(
            "SELECT pg_advisory_xact_lock({}, {})",
            lock::CLASS,
            lock::ROLLUP
        ),
        &[],
        "waiting for another rollup",
    )?;
    let epoch: i64 = value(
        client,
        "SELECT nextval('@extschema@.staging_epoch')",
        "moving the epoch",
    )?
    .ok_or(RollupError::NoEpoch)?;
    let quiet = quiet_slot(epoch);
    let other = SLOTS.iter().copied().find(|s| *s != quiet).unwrap_or(quiet);
    Ok([quiet, other])
}

/// Whether the slot the feeder now writes holds stragglers and nobody is writing there.
/// (A batch that began before the switch, or a rolled-back rollup's trades: taking them
/// too when it is idle makes one call roll up everything committed before it.)
fn idle_with_stragglers(client: &mut Client<'_, '_>, slot: &str) -> Step<bool> {
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE relation = '@extschema@.{slot}'::regclass \
         AND pid <> pg_backend_pid()) AND EXISTS (SELECT 1 FROM @extschema@.{slot})"
    );
    flag(client, &sql, "looking at the other slot")
}

/// This rollup: its id, and what the database's objects allow it to do.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// What `price_bars.changed_in` and the NOTIFY say, and `rollup_stats.rollups` once it
    /// commits: past every id a bar carries (see `plan`).
    id: i64,
    clock: Clock,
    /// 0.3.0's objects: staging has `ord`, and `foreign_trades_bar` guards the merge.
    v030: bool,
    /// `rollup_bars` exists: the slot is aggregated once, into it.
    grouped: bool,
}

/// The plan of this rollup, once the slots are claimed.
fn plan(client: &mut Client<'_, '_>) -> Step<Plan> {
    let clock = pinned_clock(client)?;
    let grouped = flag(
        client,
        "SELECT to_regclass('@extschema@.rollup_bars') IS NOT NULL",
        "looking for rollup_bars",
    )?;
    // Past every id a bar carries: rollup_stats is not dumped, price_bars is, so ids go on
    // rising after a dump and restore (bars_changed_since() depends on it).
    let next_id = if grouped {
        "SELECT greatest(s.rollups, coalesce((SELECT max(changed_in) FROM @extschema@.price_bars), 0)) + 1 \
         FROM @extschema@.rollup_stats s"
    } else {
        "SELECT rollups + 1 FROM @extschema@.rollup_stats"
    };
    Ok(Plan {
        id: value(client, next_id, "numbering the rollup")?.unwrap_or(1),
        clock: clock.unwrap_or(Clock::Event),
        v030: clock.is_some(),
        grouped,
    })
}

/// One slot's rollup: the slot, the plan, and the plausible minutes `bounds` ($1, $2).
#[derive(Debug, Clone, Copy)]
struct Job<'s> {
    slot: &'s str,
    plan: Plan,
    bounds: [i64; 2],
}

/// Rolls up one slot and empties it. Waits for a COPY still writing to it; later writers of
/// it wait for us.
fn roll_slot(client: &mut Client<'_, '_>, job: Job<'_>) -> Step<RollupResult> {
    let slot = job.slot;
    run(
        client,
        &format!("LOCK TABLE @extschema@.{slot} IN ACCESS EXCLUSIVE MODE"),
        &[],
        "claiming staging",
    )?;
    if job.plan.grouped {
        roll_grouped(client, job)
    } else {
        roll_inline(client, job)
    }
}

/// Aggregates the slot into `rollup_bars`, merges its good bars, sets aside the trades it
/// graded out, and empties both.
fn roll_grouped(client: &mut Client<'_, '_>, job: Job<'_>) -> Step<RollupResult> {
    let Job { slot, plan, bounds } = job;
    let clock = plan.clock;
    let groups = run(
        client,
        &group_sql(slot, clock),
        &bounds,
        "aggregating staged trades",
    )?;
    if groups == 0 {
        return Ok(RollupResult::default()); // the slot is empty
    }
    let [trades, unusable, good] = counts(client, GROUP_COUNTS, &[], "counting trades")?;
    let bars = write_bars(client, plan.id, good)?;
    let rejected = reject(
        client,
        &reject_sql(slot, clock, true, true),
        unusable,
        bounds,
    )?;
    // The aggregate's rule and the SQL's rule for what cannot be counted are one rule, kept
    // in two places (ohlc.rs, `unusable`): if they ever part, no trade may be lost silently.
    if rejected != unusable {
        return Err(RollupError::RejectsDisagree { unusable, rejected });
    }
    if bars > 0 {
        // The hours these bars are in, summed again with them (sql/hours.sql): bars() reads
        // long ranges from them.
        run(
            client,
            "SELECT @internal@.hour_bars_refresh('rollup'::text)",
            &[],
            "summing hours",
        )?;
    }
    run(
        client,
        &format!("TRUNCATE @extschema@.{slot}, @extschema@.rollup_bars"),
        &[],
        "consuming staging",
    )?;
    Ok(RollupResult {
        trades,
        bars,
        rejected,
    })
}

/// Writes `rollup_bars`' `good` bars into price_bars as rollup `id`: merges those whose
/// minute may hold a bar, then inserts the rest. Returns how many bars it wrote.
fn write_bars(client: &mut Client<'_, '_>, id: i64, good: i64) -> Step<i64> {
    let merge = merge_sql(Bars::Grouped(Minutes::Known), true);
    let merged = run(client, &merge, &[id], "merging bars")? as i64;
    let inserted = insert_new(client, id)?;
    // The two statements split rollup_bars by the newest bar of each symbol, each reading it
    // anew: a bar another session committed in between would move it, and bars neither
    // statement took would be lost. That fails the rollup whole instead.
    if merged + inserted != good {
        return Err(RollupError::BarsDisagree {
            bars: good,
            written: merged + inserted,
        });
    }
    Ok(good)
}

/// The plain insert of the bars past their symbol's newest bar. A trades bar that another
/// session writes into one of those minutes meanwhile is a unique violation, where the merge
/// would have waited for it and merged (or refused a foreign one): raised as 40001, so the
/// feeder retries, and the retry merges.
fn insert_new(client: &mut Client<'_, '_>, id: i64) -> Step<i64> {
    let sql = insert_new_sql();
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        run(client, &sql, &[id], "inserting bars")
    }))
    .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |cause| {
        let why = match &cause {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report)
            | pg_sys::panic::CaughtError::RustPanic {
                ereport: report, ..
            } => report.message().to_string(),
        };
        RollupError::BarWrittenMeanwhile(why).raise()
    })
    .execute()
    .map(|n| n as i64)
}

/// Reject: keeps the `unusable` trades in `trades_rejected`, in a statement of its own (a
/// Citus worker runs it next to the slot's shard); returns how many it kept.
fn reject(client: &mut Client<'_, '_>, sql: &str, unusable: i64, bounds: [i64; 2]) -> Step<i64> {
    if unusable == 0 {
        return Ok(0);
    }
    Ok(run(client, sql, &bounds, "keeping rejected trades")? as i64)
}

/// The rollup of a database whose objects predate `rollup_bars` (the library is newer than
/// its `ALTER EXTENSION ... UPDATE`): count, merge with each trade filtered, set aside.
fn roll_inline(client: &mut Client<'_, '_>, job: Job<'_>) -> Step<RollupResult> {
    let Job { slot, plan, bounds } = job;
    let (clock, with_ord) = (plan.clock, plan.v030);
    let census = census_sql(slot, clock);
    let [staged, unusable] = counts(client, &census, &bounds, "counting staged trades")?;
    let mut result = RollupResult {
        trades: staged - unusable,
        ..Default::default()
    };
    if staged == 0 {
        return Ok(result);
    }
    result.bars = run(
        client,
        &merge_sql(Bars::Inline(slot, clock), with_ord),
        &bounds,
        "merging bars",
    )? as i64;
    result.rejected = reject(
        client,
        &reject_sql(slot, clock, with_ord, false),
        unusable,
        bounds,
    )?;
    run(
        client,
        &format!("TRUNCATE @extschema@.{slot}"),
        &[],
        "consuming staging",
    )?;
    Ok(result)
}

/// Raises work_mem for this transaction when it is below ROLLUP_WORK_MEM; returns the
/// setting to put back. A day of trades makes a few hundred thousand bars: with the default
/// 4MB the hash aggregate spills to disk.
fn raise_work_mem(client: &mut Client<'_, '_>) -> Step<String> {
    let sql = format!(
        "SELECT current_setting('work_mem'), \
         CASE WHEN pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('{ROLLUP_WORK_MEM}') \
              THEN set_config('work_mem', '{ROLLUP_WORK_MEM}', true) END"
    );
    Ok(value(client, &sql, "raising work_mem")?.unwrap_or_default())
}

/// Puts back a setting this call changed (`name` is one of this file's, never input).
fn restore_setting(client: &mut Client<'_, '_>, name: &'static str, value: &str) -> Step<()> {
    let restore = format!(
        "SELECT set_config('{name}', {}, true)",
        pgrx::spi::quote_literal(value)
    );
    run(client, &restore, &[], "restoring a setting").map(drop)
}

/// Merge: the quiet slot, then the other one when it is idle with stragglers.
fn merge_slots(
    client: &mut Client<'_, '_>,
    [quiet, other]: [&str; 2],
    plan: Plan,
) -> Step<RollupResult> {
    let now_minute: i64 = value(
        client,
        "SELECT (extract(epoch FROM now())::bigint / 60)",
        "reading the time",
    )?
    .unwrap_or_default();
    let bounds = [MIN_MINUTE, now_minute + 24 * 60];
    let mut result = roll_slot(
        client,
        Job {
            slot: quiet,
            plan,
            bounds,
        },
    )?;
    if !idle_with_stragglers(client, other)? {
        return Ok(result);
    }
    let more = roll_slot(
        client,
        Job {
            slot: other,
            plan,
            bounds,
        },
    )?;
    result.trades += more.trades;
    result.bars += more.bars;
    result.rejected += more.rejected;
    if plan.grouped && result.bars > 0 {
        // A bar both slots merged into is one bar written.
        let sql = format!(
            "SELECT count(*) FROM @extschema@.price_bars WHERE changed_in = {}",
            plan.id
        );
        result.bars = value(client, &sql, "counting bars written")?.unwrap_or(result.bars);
    }
    Ok(result)
}

/// Record: the totals in `rollup_stats`, and the NOTIFY that bars changed.
fn record(client: &mut Client<'_, '_>, plan: Plan, result: RollupResult) -> Step<()> {
    let stats = format!(
        "UPDATE @extschema@.rollup_stats SET rollups = greatest(rollups + 1, {id}), trades = trades + {t}, \
         bars_written = bars_written + {b}, rejected = rejected + {r}, \
         last_rollup_at = clock_timestamp(), last_trades = {t}",
        t = result.trades,
        b = result.bars,
        r = result.rejected,
        id = plan.id
    );
    run(client, &stats, &[], "recording totals")?;
    if plan.grouped && result.bars > 0 {
        // Delivered at commit, with the bars: see sql/changes.sql.
        run(
            client,
            &format!("SELECT pg_notify('{BARS_CHANNEL}', $1::text)"),
            &[plan.id],
            "notifying listeners",
        )?;
    }
    Ok(())
}

/// The rollup's steps: claim, merge (which also rejects), record.
fn run_rollup() -> Step<RollupResult> {
    Spi::connect_mut(|spi| {
        let search_path = use_own_search_path(spi)?;
        let (schema, internal) = extension_schemas(spi)?;
        let client = &mut Client {
            spi,
            schema,
            internal,
        };
        check_preconditions(client)?;
        let slots = claim_slots(client)?;
        let plan = plan(client)?;
        let work_mem = raise_work_mem(client)?;
        let result = merge_slots(client, slots, plan)?;
        record(client, plan, result)?;
        restore_setting(client, "work_mem", &work_mem)?;
        restore_setting(client, "search_path", &search_path)?;
        Ok(result)
    })
}

/// Rolls every staged trade into 1-minute bars. Returns what it did.
#[pg_extern(volatile, security_definer, requires = ["tradebars_schema", "staging_functions", "migration_legacy", "rollup_aggregate", "tradebars_identity"])]
#[search_path(pg_catalog, tradebars_internal, pg_temp)]
fn bars_rollup() -> TableIterator<
    'static,
    (
        name!(trades_rolled_up, i64),
        name!(bars_written, i64),
        name!(trades_rejected, i64),
    ),
> {
    let r = run_rollup().unwrap_or_else(|e| e.raise());
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
    fn minutes_before_the_newest_bar_merge_as_minutes_after_it_insert() {
        // backwards: ESH4's 22:15 first, so its 22:14 comes before the newest bar (the merge
        // writes it), and a later piece of 22:14 merges into it
        let mut trades = sample();
        trades.reverse();
        for trade in trades {
            stage(&[trade]);
            rollup();
        }
        assert_eq!(bars_text(), EXPECTED);
    }

    #[pg_test(
        error = "bars_rollup: 2 bars were grouped but 1 were written (another session wrote bars of the same symbols meanwhile, or a trigger on price_bars skipped rows); nothing was rolled up"
    )]
    fn a_newer_bar_written_while_bars_merge_fails_the_rollup() {
        stage(&sample()[..1]);
        rollup();
        // while 22:14 merges, a writer adds ESH4's 23:00: 22:15 is then no longer past the
        // newest bar, and neither statement would write it
        Spi::run(
            "CREATE FUNCTION pg_temp.meanwhile() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.price_bars (symbol, \"timestamp\", open, high, low, close, data_source)
                 VALUES ('ESH4', '2023-11-14 23:00:00+00', 1, 1, 1, 1, 'trades');
                 RETURN NULL;
             END $$;
             CREATE TRIGGER meanwhile AFTER UPDATE ON price_bars FOR EACH ROW
                 EXECUTE FUNCTION pg_temp.meanwhile()",
        )
        .unwrap();
        stage(&sample()[1..4]);
        rollup();
    }

    #[pg_test(
        error = "bars_rollup: another session wrote a bar the rollup was writing (duplicate key value violates unique constraint \"price_bars_symbol_timestamp_source\"); nothing was rolled up, a retry merges with it"
    )]
    fn a_bar_written_into_a_new_minute_meanwhile_fails_the_rollup_for_a_retry() {
        // As a concurrent writer would: as the rollup inserts one of ESH4's two new minutes,
        // the other one appears
        Spi::run(
            "CREATE FUNCTION pg_temp.meanwhile() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.price_bars (symbol, \"timestamp\", open, high, low, close, data_source)
                 SELECT NEW.symbol, m, 1, 1, 1, 1, 'trades'
                 FROM unnest(ARRAY[TIMESTAMPTZ '2023-11-14 22:15:00+00', '2023-11-14 22:16:00+00']) m
                 WHERE m <> NEW.\"timestamp\"
                 ON CONFLICT DO NOTHING;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER meanwhile BEFORE INSERT ON price_bars FOR EACH ROW
                 WHEN (NEW.changed_in IS NOT NULL) EXECUTE FUNCTION pg_temp.meanwhile()",
        )
        .unwrap();
        stage(&[
            ("ESH4", T0 + MIN + 3, 1, 1, 4_782_500_000_000, 4),
            ("ESH4", T0 + 2 * MIN + 3, 2, 1, 4_782_500_000_000, 4),
        ]);
        rollup();
    }

    #[pg_test]
    fn a_bar_merged_across_rollups_reads_as_one_rollup_of_it() {
        // 1.05 + 1.05: a sum of numerics keeps the trailing zero of 2.10
        let trade = |ts| ("ESH4", T0 + ts, ts, 1, 1_050_000_000, 1);
        stage(&[trade(1), trade(2)]);
        rollup();
        let notional = "SELECT notional::text || ' ' || vwap::text FROM price_bars";
        let once = Spi::get_one::<String>(notional).unwrap();
        Spi::run("TRUNCATE price_bars").unwrap();
        stage(&[trade(1)]);
        rollup();
        stage(&[trade(2)]);
        rollup();
        assert_eq!(once.as_deref(), Some("2.1 1.05"));
        assert_eq!(Spi::get_one::<String>(notional).unwrap(), once);
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

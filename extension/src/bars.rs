//! `bars()`: the query behind the app's `/bars/{symbol}` endpoint.
//!
//! Per minute one bar: the trades bar where there is one (trades win), otherwise a legacy bar
//! if asked for; soft-deleted bars only if asked for. Buckets of whole minutes up to a day are
//! built from those minute bars: open of the first, close of the last, exact volume-weighted
//! VWAP from the stored notional.

pgrx::extension_sql!(
    r#"
CREATE TYPE bar AS (
    symbol      text,
    "timestamp" timestamptz,
    open        numeric,
    high        numeric,
    low         numeric,
    close       numeric,
    volume      bigint,
    trade_count bigint,
    vwap        numeric,
    data_source text,
    is_legacy   boolean,
    clock       text     -- the database's bar clock (bar_clock()): ts_recv or ts_event
);

CREATE FUNCTION bars(
    symbol text,
    start timestamptz,
    "end" timestamptz,
    include_legacy boolean DEFAULT false,
    bucket interval DEFAULT '1 minute',
    include_deleted boolean DEFAULT false
) RETURNS SETOF bar
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    step interval := checked_bucket(bucket);
BEGIN
    IF bars.symbol IS NULL OR bars.start IS NULL OR bars."end" IS NULL THEN
        RAISE EXCEPTION 'bars: symbol, start and end must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF bars."end" < bars.start THEN
        RAISE EXCEPTION 'bars: end (%) is before start (%)', bars."end", bars.start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('bars');
    RETURN QUERY
    WITH minute_bars AS (
        SELECT DISTINCT ON (p."timestamp")
               p."timestamp", p.open, p.high, p.low, p.close, p.volume::bigint AS volume,
               p.trade_count::bigint AS trade_count, p.notional, p.data_source,
               (p.is_legacy OR p.data_source IS DISTINCT FROM 'trades') AS legacy
        FROM price_bars p
        WHERE p.symbol = bars.symbol
          AND p."timestamp" >= bars.start AND p."timestamp" < bars."end"
          AND (coalesce(bars.include_legacy, false)
               OR (NOT p.is_legacy AND p.data_source IS NOT DISTINCT FROM 'trades'))
          AND (coalesce(bars.include_deleted, false) OR p.deleted_at IS NULL)
        -- trades bars first, then the old scanner's, then legacy
        ORDER BY p."timestamp",
                 CASE WHEN NOT p.is_legacy AND p.data_source = 'trades' THEN 0
                      WHEN p.data_source = 'scanner' THEN 1 ELSE 2 END,
                 p.data_source
    )
    SELECT bars.symbol,
           date_bin(step, m."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS t,
           (array_agg(m.open ORDER BY m."timestamp"))[1],
           max(m.high),
           min(m.low),
           (array_agg(m.close ORDER BY m."timestamp" DESC))[1],
           sum(m.volume)::bigint,
           sum(m.trade_count)::bigint,
           trim_scale(round(sum(m.notional) / nullif(sum(m.volume) FILTER (WHERE m.notional IS NOT NULL), 0), 9)),
           CASE WHEN count(DISTINCT m.data_source) <= 1 THEN min(m.data_source) ELSE 'mixed' END,
           bool_or(m.legacy),
           bar_clock()
    FROM minute_bars m
    GROUP BY t
    ORDER BY t;
END
$fn$;
COMMENT ON FUNCTION bars(text, timestamptz, timestamptz, boolean, interval, boolean) IS
    'tradebars: bars of one symbol in [start, end): trades bars win over legacy bars; bucket from 1 minute to 1 day';
"#,
    name = "bars_query",
    requires = ["migration_legacy", "tradebars_identity", checked_bucket],
);

-- Hour bars (0.3.0): each UTC hour of each symbol's bars, summed once, so that bars() over a
-- year at '1 day' reads a few thousand rows rather than a hundred thousand minutes.
--
-- An hour bar is exactly what bars() makes of that hour's minute bars by default: per minute
-- the trades bar, else the official (ohlcv-1m) bar; no legacy and no soft-deleted bar. It is
-- kept exact by every function of the extension that changes such bars, in the transaction
-- that changes them: bars_rollup() (late trades included) and official_bars_merge() refresh
-- the hours they touched; rollback_trades(), mark_legacy(), prepare_price_bars() and CREATE
-- EXTENSION over an adopted price_bars rebuild all. A bar written into price_bars by hand is not seen until refresh_hour_bars() covers it.
--
-- bars() takes an hour bar only where the whole hour lies in one of its buckets, inside the
-- range and inside the session, and legacy and deleted bars are not asked for; every other
-- minute still comes from price_bars (see sql/bars.sql). On Citus, distribute hour_bars by
-- symbol with price_bars: each refresh is an INSERT ... SELECT ... GROUP BY symbol, hour
-- over colocated tables.
CREATE TABLE hour_bars (
    symbol      text        NOT NULL,
    hour        timestamptz NOT NULL,  -- the start of the UTC hour
    open        numeric     NOT NULL,
    high        numeric     NOT NULL,
    low         numeric     NOT NULL,
    close       numeric     NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint,
    notional    numeric,               -- NULL where a minute of it has none (official bars)
    data_source text        NOT NULL,  -- 'trades', 'ohlcv-1m', or 'mixed' for both
    PRIMARY KEY (symbol, hour)
);
COMMENT ON TABLE hour_bars IS
    'tradebars: the default minute bars of each UTC hour, summed (kept by the extension; read by bars())';
-- Dumped with the bars it sums (pg_dump takes both in one snapshot).
SELECT pg_extension_config_dump('hour_bars', '');

-- The statement that writes the hour bar of each hour `minutes` gives minute bars for: the
-- minute bars (symbol, hour, "timestamp", open, high, low, close, volume, trade_count,
-- notional, data_source) summed as bars() sums minutes. One text for both callers below.
CREATE OR REPLACE FUNCTION tradebars_internal.hour_bars_insert(minutes text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = tradebars_internal, @extschema@, pg_temp
RETURN format($q$
    INSERT INTO hour_bars (symbol, hour, open, high, low, close, volume, trade_count,
                           notional, data_source)
    -- open and close: of the least and greatest (epoch, price); no sort in any group
    SELECT m.symbol, m.hour,
           (min(ARRAY[extract(epoch FROM m."timestamp"), m.open]))[2], max(m.high), min(m.low),
           (max(ARRAY[extract(epoch FROM m."timestamp"), m.close]))[2],
           sum(m.volume), sum(m.trade_count),
           CASE WHEN bool_and(m.notional IS NOT NULL) THEN sum(m.notional) END,
           CASE WHEN bool_and(m.data_source = 'trades') THEN 'trades'
                WHEN bool_and(m.data_source = 'ohlcv-1m') THEN 'ohlcv-1m' ELSE 'mixed' END
    FROM (%s) m
    GROUP BY m.symbol, m.hour
$q$, minutes);

-- Recomputes the hour bars of the hours a rollup (`touched` = 'rollup': the hours of the good
-- bars in rollup_bars) or an official load ('official': those of official_bars_staging)
-- touched, each hour read by an index scan of its own, in the order of the hours (so their
-- minutes are summed without sorting them); per minute bars()'s default choice,
-- the trades bar, else the official one. The queries are fixed, chosen by name, never text
-- from a caller. Waits for another refresh and keeps it waiting until commit, so each one
-- reads the bars the other committed.
CREATE OR REPLACE FUNCTION tradebars_internal.hour_bars_refresh(touched text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = tradebars_internal, @extschema@, pg_temp
AS $fn$
DECLARE
    hours text := CASE touched
        WHEN 'rollup' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(minute * 60), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM rollup_bars WHERE good ORDER BY 1, 2'
        WHEN 'official' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(ts_event / 1000000000), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM official_bars_staging WHERE symbol <> '''' AND ts_event >= 0 ORDER BY 1, 2' END;
    n bigint;
BEGIN
    IF hours IS NULL THEN
        RAISE EXCEPTION 'hour_bars_refresh: touched must be ''rollup'' or ''official'', not %',
            coalesce(quote_literal(touched), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOCK TABLE hour_bars IN EXCLUSIVE MODE;
    EXECUTE format('DELETE FROM hour_bars h USING (%s) t WHERE h.symbol = t.symbol AND h.hour = t.hour', hours);
    EXECUTE hour_bars_insert(format($q$
        SELECT t.symbol, t.hour, m.*
        FROM (%s) t
        CROSS JOIN LATERAL (
            SELECT DISTINCT ON (p."timestamp") p."timestamp", p.open, p.high, p.low, p.close,
                   p.volume, p.trade_count, p.notional, p.data_source
            FROM price_bars p
            WHERE p.symbol = t.symbol
              AND p."timestamp" >= t.hour AND p."timestamp" < t.hour + interval '1 hour'
              AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
              AND p.deleted_at IS NULL
            ORDER BY p."timestamp", p.data_source <> 'trades'
        ) m
    $q$, hours));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION tradebars_internal.hour_bars_refresh(text) IS
    'tradebars (internal): recomputes the hour bars of the hours a rollup or an official load touched';

-- Recomputes every hour bar of the hours that meet [from_ts, to_ts), of all symbols, in one
-- pass over their minute bars (no lookup per hour: a year of 500 symbols is 900,000 hours). Hours left with no bar lose their hour bar. Locks as hour_bars_refresh().
CREATE OR REPLACE FUNCTION tradebars_internal.hour_bars_rebuild(from_ts timestamptz, to_ts timestamptz) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = tradebars_internal, @extschema@, pg_temp
    SET work_mem = '256MB'
AS $fn$
DECLARE
    lo timestamptz := CASE WHEN isfinite(from_ts)
                           THEN date_bin(interval '1 hour', from_ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                           ELSE from_ts END;
    hi timestamptz := CASE WHEN isfinite(to_ts)
                           THEN date_bin(interval '1 hour', to_ts - interval '1 microsecond',
                                         TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '1 hour'
                           ELSE to_ts END;
    n bigint;
BEGIN
    IF to_ts <= from_ts THEN
        RETURN 0;  -- an empty range meets no hour
    END IF;
    LOCK TABLE hour_bars IN EXCLUSIVE MODE;
    DELETE FROM hour_bars WHERE hour >= lo AND hour < hi;
    -- an official bar only where its minute has no trades bar (no sort of every bar)
    EXECUTE hour_bars_insert($q$
        SELECT p.symbol,
               date_bin(interval '1 hour', p."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
               p."timestamp", p.open, p.high, p.low, p.close, p.volume, p.trade_count,
               p.notional, p.data_source
        FROM price_bars p
        WHERE p."timestamp" >= $1 AND p."timestamp" < $2
          AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
          AND p.deleted_at IS NULL
          AND (p.data_source = 'trades' OR NOT EXISTS (
                SELECT 1 FROM price_bars q
                WHERE q.symbol = p.symbol AND q."timestamp" = p."timestamp"
                  AND q.data_source = 'trades' AND NOT q.is_legacy AND q.deleted_at IS NULL))
    $q$) USING lo, hi;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION tradebars_internal.hour_bars_rebuild(timestamptz, timestamptz) IS
    'tradebars (internal): recomputes every hour bar of the hours that meet a range, in one pass';

-- For the DBA who wrote price_bars by hand: makes the hour bars of [start, end) exact again
-- (every hour, of every symbol, that meets the range). Returns the hour bars written.
CREATE OR REPLACE FUNCTION refresh_hour_bars(start timestamptz DEFAULT '-infinity',
                                  "end" timestamptz DEFAULT 'infinity')
RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = tradebars_internal, @extschema@, pg_temp
AS $fn$
BEGIN
    IF start IS NULL OR "end" IS NULL THEN
        RAISE EXCEPTION 'refresh_hour_bars: start and end must not be NULL (leave them out for all hours)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF "end" < start THEN
        RAISE EXCEPTION 'refresh_hour_bars: end (%) is before start (%)', "end", start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('refresh_hour_bars');
    RETURN hour_bars_rebuild(start, "end");
END
$fn$;
COMMENT ON FUNCTION refresh_hour_bars(timestamptz, timestamptz) IS
    'tradebars: recomputes the hour bars bars() reads for [start, end), after price_bars was written by hand';

-- A price_bars the extension did not create (an adopted one) outlives DROP EXTENSION: when
-- the extension is created again, its bars get their hours now.
DO $do$
BEGIN
    IF tradebars_internal.price_bars_is_ready() THEN
        PERFORM tradebars_internal.hour_bars_rebuild('-infinity', 'infinity');
    END IF;
END
$do$;

-- Hour bars (0.3.0): each UTC hour of each symbol's bars, summed once, so that bars() over a
-- year at '1 day' reads a few thousand rows rather than a hundred thousand minutes.
--
-- An hour bar is exactly what bars() makes of that hour's minute bars by default: per minute
-- the trades bar, else the official (ohlcv-1m) bar; no legacy and no soft-deleted bar. It is
-- kept exact by every function of the extension that changes such bars, in the transaction
-- that changes them: bars_rollup() (late trades included) and official_bars_merge() refresh
-- the hours they touched; rollback_trades(), mark_legacy() and prepare_price_bars() refresh
-- all. A bar written into price_bars by hand is not seen until refresh_hour_bars() covers it.
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

-- Recomputes the hour bars of the hours that `touched` names, a fixed query chosen by name
-- (never text from a caller): 'rollup' the hours of the rollup's good bars (rollup_bars),
-- 'official' those of the staged official bars, 'range' every hour that meets
-- [from_ts, to_ts). Hours left with no bar lose their hour bar. Waits for another refresh
-- and keeps it waiting until commit: each one reads the bars the other committed.
CREATE FUNCTION hour_bars_refresh(touched text, from_ts timestamptz DEFAULT NULL,
                                  to_ts timestamptz DEFAULT NULL)
RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    hours text := CASE touched
        WHEN 'rollup' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(minute * 60), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM rollup_bars WHERE good'
        WHEN 'official' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(ts_event / 1000000000), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM official_bars_staging WHERE symbol <> '''' AND ts_event >= 0'
        WHEN 'range' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', "timestamp", TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM price_bars WHERE "timestamp" >= $1 AND "timestamp" < $2
             UNION
             SELECT symbol, hour FROM hour_bars
             WHERE hour > $1 - interval ''1 hour'' AND hour < $2' END;
    n bigint;
BEGIN
    IF hours IS NULL THEN
        RAISE EXCEPTION 'hour_bars_refresh: touched must be ''rollup'', ''official'' or ''range'', not %',
            coalesce(quote_literal(touched), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOCK TABLE hour_bars IN EXCLUSIVE MODE;
    EXECUTE format('DELETE FROM hour_bars h USING (%s) t WHERE h.symbol = t.symbol AND h.hour = t.hour', hours)
        USING from_ts, to_ts;
    EXECUTE format($q$
        INSERT INTO hour_bars (symbol, hour, open, high, low, close, volume, trade_count,
                               notional, data_source)
        SELECT t.symbol, t.hour,
               (array_agg(m.open ORDER BY m."timestamp"))[1], max(m.high), min(m.low),
               (array_agg(m.close ORDER BY m."timestamp" DESC))[1],
               sum(m.volume), sum(m.trade_count),
               CASE WHEN bool_and(m.notional IS NOT NULL) THEN sum(m.notional) END,
               CASE WHEN count(DISTINCT m.data_source) = 1 THEN min(m.data_source) ELSE 'mixed' END
        FROM (%s) t
        CROSS JOIN LATERAL (
            -- bars()'s choice per minute, by default: the trades bar, else the official one
            SELECT DISTINCT ON (p."timestamp") p."timestamp", p.open, p.high, p.low, p.close,
                   p.volume, p.trade_count, p.notional, p.data_source
            FROM price_bars p
            WHERE p.symbol = t.symbol
              AND p."timestamp" >= t.hour AND p."timestamp" < t.hour + interval '1 hour'
              AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
              AND p.deleted_at IS NULL
            ORDER BY p."timestamp", p.data_source <> 'trades'
        ) m
        GROUP BY t.symbol, t.hour
    $q$, hours) USING from_ts, to_ts;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION hour_bars_refresh(text, timestamptz, timestamptz) IS
    'tradebars (internal): recomputes the hour bars of the hours a rollup, an official load or a range touched';

-- For the DBA who wrote price_bars by hand: makes the hour bars of [start, end) exact again
-- (every hour, of every symbol, that meets the range). Returns the hour bars written.
CREATE FUNCTION refresh_hour_bars(start timestamptz DEFAULT '-infinity',
                                  "end" timestamptz DEFAULT 'infinity')
RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
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
    RETURN hour_bars_refresh('range', start, "end");
END
$fn$;
COMMENT ON FUNCTION refresh_hour_bars(timestamptz, timestamptz) IS
    'tradebars: recomputes the hour bars bars() reads for [start, end), after price_bars was written by hand';

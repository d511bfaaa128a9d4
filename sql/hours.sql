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
    -- Where every minute of the hour is a trades bar that knows them: the order keys of the
    -- hour's open and close trades (its first and last, as price_bars keeps them per minute),
    -- so a rollup merges its new trades into the hour without reading its minutes again.
    -- NULL otherwise: such an hour is summed again from its minutes.
    open_ts_ns  bigint,
    open_seq    bigint,
    close_ts_ns bigint,
    close_seq   bigint,
    PRIMARY KEY (symbol, hour)
);
COMMENT ON TABLE hour_bars IS
    'tradebars: the default minute bars of each UTC hour, summed (kept by the extension; read by bars())';
-- Dumped with the bars it sums (pg_dump takes both in one snapshot).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.hour_bars', '');

-- The statement that writes the hour bar of each hour `minutes` gives minute bars for: the
-- minute bars (symbol, hour, "timestamp", open, high, low, close, volume, trade_count,
-- notional, data_source, open_ts_ns, open_seq, close_ts_ns, close_seq) summed as bars() sums
-- minutes. One text for every caller below.
CREATE OR REPLACE FUNCTION tradebars_internal.hour_bars_insert(minutes text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$ SELECT format($q$
    INSERT INTO @extschema@.hour_bars (symbol, hour, open, high, low, close, volume, trade_count,
                           notional, data_source, open_ts_ns, open_seq, close_ts_ns, close_seq)
    SELECT symbol, hour, open, high, low, close, volume, trade_count, notional, data_source,
           CASE WHEN keyed THEN open_key[1] END, CASE WHEN keyed THEN open_key[2] END,
           CASE WHEN keyed THEN close_key[1] END, CASE WHEN keyed THEN close_key[2] END
    FROM (
        -- open and close: of the least and greatest (epoch, price); no sort in any group
        SELECT m.symbol, m.hour,
               (min(ARRAY[extract(epoch FROM m."timestamp"), m.open]))[2] AS open,
               max(m.high) AS high, min(m.low) AS low,
               (max(ARRAY[extract(epoch FROM m."timestamp"), m.close]))[2] AS close,
               sum(m.volume) AS volume, sum(m.trade_count) AS trade_count,
               CASE WHEN bool_and(m.notional IS NOT NULL) THEN trim_scale(sum(m.notional)) END AS notional,
               CASE WHEN bool_and(m.data_source = 'trades') THEN 'trades'
                    WHEN bool_and(m.data_source = 'ohlcv-1m') THEN 'ohlcv-1m' ELSE 'mixed' END
                   AS data_source,
               -- a trades bar's keys lie in its minute: the hour's least key is its first
               -- minute's open, its greatest its last minute's close
               bool_and(m.data_source = 'trades' AND m.open_ts_ns IS NOT NULL
                        AND m.open_seq IS NOT NULL AND m.close_ts_ns IS NOT NULL
                        AND m.close_seq IS NOT NULL) AS keyed,
               min(ARRAY[m.open_ts_ns, m.open_seq]) AS open_key,
               max(ARRAY[m.close_ts_ns, m.close_seq]) AS close_key
        FROM (%s) m
        GROUP BY m.symbol, m.hour
    ) h
$q$, minutes) $fn$;

-- Brings the hour bars of the hours a rollup (`touched` = 'rollup': the hours of the good bars
-- in rollup_bars) or an official load ('official': those of official_bars_staging) touched up
-- to date with their minute bars, per minute bars()'s default choice: the trades bar, else
-- the official one. The queries are fixed, chosen by name, never text from a caller. Waits
-- for another refresh and keeps it waiting until commit, so each one reads the bars the
-- other committed.
--
-- A rollup's hour that holds only keyed trades bars, or no bar yet, takes the rollup's bars
-- of that hour as its minutes took them (the rollup merged them into price_bars just
-- before): the earlier open and the later close by their keys, the higher high, the lower
-- low, the sums. Exact, since merging bars is associative, and it reads no minute again: a
-- live rollup touches an hour of every symbol it trades, most of whose minutes it leaves
-- alone. Every other touched hour is summed again from its minutes.
CREATE OR REPLACE FUNCTION tradebars_internal.hour_bars_refresh(touched text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    hours text := CASE touched
        WHEN 'rollup' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(minute * 60), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM @extschema@.rollup_bars WHERE good ORDER BY 1, 2'
        WHEN 'official' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(ts_event / 1000000000), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM @extschema@.official_bars_staging WHERE symbol <> '''' AND ts_event >= 0 ORDER BY 1, 2' END;
    merged bigint := 0;
    summed bigint;
BEGIN
    IF hours IS NULL THEN
        RAISE EXCEPTION 'hour_bars_refresh: touched must be ''rollup'' or ''official'', not %',
            coalesce(quote_literal(touched), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOCK TABLE @extschema@.hour_bars IN EXCLUSIVE MODE;
    IF touched = 'rollup' THEN
        INSERT INTO @extschema@.hour_bars AS h (symbol, hour, open, high, low, close, volume, trade_count,
                                    notional, data_source, open_ts_ns, open_seq, close_ts_ns,
                                    close_seq)
        SELECT d.symbol, d.hour, k.open[3], greatest(o.high, d.high), least(o.low, d.low),
               k.close[3], coalesce(o.volume, 0) + d.volume,
               coalesce(o.trade_count, 0) + d.trade_count,
               CASE WHEN o.hour IS NULL THEN d.notional ELSE trim_scale(o.notional + d.notional) END,
               'trades', k.open[1], k.open[2], k.close[1], k.close[2]
        FROM (SELECT r.symbol, to_timestamp(r.minute / 60 * 3600) AS hour,
                     min(ARRAY[r.open_ts, r.open_seq, r.open_px]) AS open_fixed,
                     fixed_to_numeric(max(r.high_px)) AS high,
                     fixed_to_numeric(min(r.low_px)) AS low,
                     max(ARRAY[r.close_ts, r.close_seq, r.close_px]) AS close_fixed,
                     sum(r.volume) AS volume, sum(r.trade_count) AS trade_count,
                     fixed_to_numeric(sum(r.notional_px)) AS notional
              FROM @extschema@.rollup_bars r
              WHERE r.good
              GROUP BY r.symbol, r.minute / 60) d
        LEFT JOIN @extschema@.hour_bars o ON o.symbol = d.symbol AND o.hour = d.hour
        -- (key, key, price) of the rollup's and the hour's (none where it has no keys): the
        -- earlier open, the later close
        CROSS JOIN LATERAL (
            SELECT least(ARRAY[d.open_fixed[1], d.open_fixed[2], fixed_to_numeric(d.open_fixed[3])],
                         CASE WHEN o.open_ts_ns IS NOT NULL
                              THEN ARRAY[o.open_ts_ns, o.open_seq, o.open] END) AS open,
                   greatest(ARRAY[d.close_fixed[1], d.close_fixed[2], fixed_to_numeric(d.close_fixed[3])],
                            CASE WHEN o.open_ts_ns IS NOT NULL
                                 THEN ARRAY[o.close_ts_ns, o.close_seq, o.close] END) AS close) k
        ON CONFLICT (symbol, hour) DO UPDATE SET
            open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
            close = EXCLUDED.close, volume = EXCLUDED.volume,
            trade_count = EXCLUDED.trade_count, notional = EXCLUDED.notional,
            open_ts_ns = EXCLUDED.open_ts_ns, open_seq = EXCLUDED.open_seq,
            close_ts_ns = EXCLUDED.close_ts_ns, close_seq = EXCLUDED.close_seq
        -- only into a keyed trades hour: any other is summed again below
        WHERE h.open_ts_ns IS NOT NULL;
        GET DIAGNOSTICS merged = ROW_COUNT;
    END IF;
    -- the touched hours not merged above: summed again from their minutes
    EXECUTE format('DELETE FROM @extschema@.hour_bars h USING (%s) t
                    WHERE h.symbol = t.symbol AND h.hour = t.hour
                      AND (%L <> ''rollup'' OR h.open_ts_ns IS NULL)', hours, touched);
    -- each hour read by an index scan of its own, in the order of the hours (so its minutes
    -- are summed without sorting them)
    EXECUTE hour_bars_insert(format($q$
        SELECT t.symbol, t.hour, m.*
        FROM (%s) t
        CROSS JOIN LATERAL (
            SELECT DISTINCT ON (p."timestamp") p."timestamp", p.open, p.high, p.low, p.close,
                   p.volume, p.trade_count, p.notional, p.data_source,
                   p.open_ts_ns, p.open_seq, p.close_ts_ns, p.close_seq
            FROM @extschema@.price_bars p
            WHERE p.symbol = t.symbol
              AND p."timestamp" >= t.hour AND p."timestamp" < t.hour + interval '1 hour'
              AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
              AND p.deleted_at IS NULL
            ORDER BY p."timestamp", p.data_source <> 'trades'
        ) m
        WHERE NOT EXISTS (SELECT 1 FROM @extschema@.hour_bars h WHERE h.symbol = t.symbol AND h.hour = t.hour)
    $q$, hours));
    GET DIAGNOSTICS summed = ROW_COUNT;
    RETURN merged + summed;
END
$fn$;
COMMENT ON FUNCTION tradebars_internal.hour_bars_refresh(text) IS
    'tradebars (internal): brings the hour bars of the hours a rollup or an official load touched up to date';

-- Recomputes every hour bar of the hours that meet [from_ts, to_ts), of all symbols, in one
-- pass over their minute bars (no lookup per hour: a year of 500 symbols is 900,000 hours). Hours left with no bar lose their hour bar. Locks as hour_bars_refresh().
CREATE OR REPLACE FUNCTION tradebars_internal.hour_bars_rebuild(from_ts timestamptz, to_ts timestamptz) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
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
    LOCK TABLE @extschema@.hour_bars IN EXCLUSIVE MODE;
    DELETE FROM @extschema@.hour_bars WHERE hour >= lo AND hour < hi;
    -- an official bar only where its minute has no trades bar (no sort of every bar)
    EXECUTE hour_bars_insert($q$
        SELECT p.symbol,
               date_bin(interval '1 hour', p."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
               p."timestamp", p.open, p.high, p.low, p.close, p.volume, p.trade_count,
               p.notional, p.data_source, p.open_ts_ns, p.open_seq, p.close_ts_ns, p.close_seq
        FROM @extschema@.price_bars p
        WHERE p."timestamp" >= $1 AND p."timestamp" < $2
          AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
          AND p.deleted_at IS NULL
          AND (p.data_source = 'trades' OR NOT EXISTS (
                SELECT 1 FROM @extschema@.price_bars q
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
    SET search_path = pg_catalog, tradebars_internal, pg_temp
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

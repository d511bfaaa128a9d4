-- hour_bars as rollups keep them (sql/hours.sql): an hour that holds only trades bars takes
-- each rollup's bars of it without reading its minutes again; every other hour is summed
-- again. Both must equal the hour summed from its minutes (refresh_hour_bars()), through
-- late trades that move an hour's open, close, high and low, trades sharing a receipt, and
-- official bars that make an hour mixed.
CREATE EXTENSION tradebars;
SET TimeZone = 'UTC';
-- 3,000 trades of three symbols over three hours, each with a rollup (0-5) it is staged in:
-- each rollup gets trades all over the three hours, so later rollups bring earlier trades
CREATE TEMP TABLE trades AS
SELECT 'S' || (i % 3) AS symbol,
       (extract(epoch FROM timestamptz '2025-11-03 13:00+00')::bigint
        + abs(hashint4(i)) % 10800) * 1000000000 AS ts_recv,
       i AS ord,
       100000000000 + (abs(hashint4(i + 100000)) % 1000)::bigint * 10000000 AS price,
       1 + abs(hashint4(i + 200000)) % 50 AS size,
       abs(hashint4(i + 300000)) % 6 AS rollup
FROM generate_series(1, 3000) i;
-- S0 has no trade from 14:10 to 14:20: its official bars there make its 14:00 hour mixed
CREATE FUNCTION pg_temp.ns(at timestamptz) RETURNS bigint LANGUAGE sql
    RETURN extract(epoch FROM at)::bigint * 1000000000;
DELETE FROM trades
WHERE symbol = 'S0' AND ts_recv >= pg_temp.ns('2025-11-03 14:10+00')
                    AND ts_recv < pg_temp.ns('2025-11-03 14:20+00');
SELECT count(*) > 2900 AS trades, count(DISTINCT (symbol, ts_recv)) < count(*) AS receipts_shared
FROM trades;
CREATE FUNCTION pg_temp.roll(n int) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %s (symbol, instrument_id, publisher_id, ts_event, ts_recv,
                                    sequence, price, size, side, flags, ord)
                    SELECT symbol, 1, 1, ts_recv, ts_recv, 0, price, size, %L, 0, ord
                    FROM trades WHERE rollup = $1', staging_slot(), 'B') USING n;
    RETURN (SELECT trades_rolled_up FROM bars_rollup());
END $$;
SELECT pg_temp.roll(0), pg_temp.roll(1), pg_temp.roll(2);
-- official bars: of S0, in minutes with and without its trades bars (its hours turn mixed),
-- and of S9, which has no trades
INSERT INTO official_bars_staging
SELECT s, extract(epoch FROM m)::bigint * 1000000000, 99000000000, 99500000000, 98000000000,
       99000000000, 7
FROM unnest(ARRAY['S0', 'S9']) s,
     generate_series(timestamptz '2025-11-03 14:05+00', '2025-11-03 14:25+00', '5 minutes') m;
SELECT * FROM tradebars_internal.official_bars_merge('ohlcv-1m');
SELECT pg_temp.roll(3), pg_temp.roll(4), pg_temp.roll(5);
-- kept by the rollups: merged (keyed) hours and summed (mixed, official) ones
SELECT data_source, count(*) AS hours, count(open_ts_ns) AS keyed, sum(volume) AS volume
FROM hour_bars GROUP BY data_source ORDER BY data_source;
-- every trade in the hours of its symbol, once
SELECT (SELECT sum(size) FROM trades WHERE symbol <> 'S0')
     = (SELECT sum(volume) FROM hour_bars WHERE symbol <> 'S0' AND symbol <> 'S9') AS volumes_equal;
-- the hour bars against the same hours summed again from their minutes, compared as text
CREATE FUNCTION pg_temp.hours_that_differ() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    CREATE TEMP TABLE kept AS SELECT h::text AS bar FROM hour_bars h;
    PERFORM refresh_hour_bars();
    SELECT count(*) INTO n
    FROM ((TABLE kept EXCEPT SELECT h::text FROM hour_bars h)
          UNION ALL (SELECT h::text FROM hour_bars h EXCEPT TABLE kept)) d;
    DROP TABLE kept;
    RETURN n;
END $$;
SELECT pg_temp.hours_that_differ();
DROP EXTENSION tradebars;

-- bars() as an app calls it: UTC minutes and buckets, a time zone across New York's autumn
-- clock change, a session, an origin, gap fill, and the errors of bad arguments.
CREATE EXTENSION tradebars;
SET TimeZone = 'UTC';
\pset null '(null)'


-- Minute bars as bars_rollup() writes them (trades bars), for R: every 20 minutes over
-- 2025-11-01 to 2025-11-04 UTC, price rising by a cent each, volume 10.
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close, volume, trade_count,
                        vwap, notional, open_ts_ns, open_seq, close_ts_ns, close_seq,
                        is_legacy, data_source)
SELECT 'R', t, 100 + i * 0.01, 100.05 + i * 0.01, 99.95 + i * 0.01, 100.02 + i * 0.01, 10, 2,
       100.01 + i * 0.01, (100.01 + i * 0.01) * 10, 0, 0, 0, 0, false, 'trades'
FROM generate_series(0, 3 * 72 - 1) AS i,
     LATERAL (SELECT timestamptz '2025-11-01 00:00+00' + i * interval '20 minutes' AS t) s;
-- written by hand, not by the rollup: their hours (which bars() reads buckets of an hour or
-- more from) are summed by refresh_hour_bars()
SELECT refresh_hour_bars();

-- minutes, as stored
SELECT "timestamp", open, close, volume, data_source, clock, filled
FROM bars('R', '2025-11-01 00:00+00', '2025-11-01 01:00+00');

-- UTC days (the default) against New York days: 2025-11-02 is 25 hours long there
SELECT "timestamp", open, close, volume, trade_count FROM bars('R', '2025-11-01', '2025-11-04', bucket => '1 day');
SELECT "timestamp", "timestamp" AT TIME ZONE 'America/New_York' AS local, open, close, volume, trade_count
FROM bars('R', '2025-11-01 04:00+00', '2025-11-03 05:00+00', bucket => '1 day', tz => 'America/New_York');

-- the same days, session 09:30-16:00 local only
SELECT "timestamp" AT TIME ZONE 'America/New_York' AS local, open, close, volume, trade_count
FROM bars('R', '2025-11-01 04:00+00', '2025-11-03 05:00+00', bucket => '1 day',
          tz => 'America/New_York', session => '09:30-16:00');

-- hourly bars on the half hour (origin)
SELECT "timestamp", open, close, trade_count
FROM bars('R', '2025-11-01 00:00+00', '2025-11-01 03:00+00', bucket => '1 hour', origin => '00:30');

-- gap fill: 5-minute buckets where bars come every 20 minutes
SELECT "timestamp", open, high, low, close, volume, trade_count, filled
FROM bars('R', '2025-11-01 00:05+00', '2025-11-01 00:45+00', bucket => '5 minutes', fill => 'previous');
SELECT "timestamp", open, close, volume, filled
FROM bars('R', '2025-11-01 00:05+00', '2025-11-01 00:30+00', bucket => '5 minutes', fill => 'null');
-- before the symbol's first bar nothing is invented
SELECT count(*) FROM bars('R', '2025-10-31 23:00+00', '2025-11-01 00:00+00', fill => 'previous');

-- bad arguments: one clear error each
SELECT error_of($$SELECT * FROM bars('R', '2025-11-02', '2025-11-01')$$);
SELECT error_of($$SELECT * FROM bars('R', now(), now(), bucket => '90 seconds')$$);
SELECT error_of($$SELECT * FROM bars('R', now(), now(), bucket => '2 days')$$);
SELECT error_of($$SELECT * FROM bars('R', now(), now(), tz => 'Nowhere/City')$$);
SELECT error_of($$SELECT * FROM bars('R', now(), now(), session => '16:00-09:30')$$);
SELECT error_of($$SELECT * FROM bars('R', now(), now(), fill => 'linear')$$);
SELECT error_of($$SELECT * FROM bars('R', now(), now(), origin => '25 hours')$$);
SELECT error_of($$SELECT * FROM bars(NULL, now(), now())$$);

-- Databento's official bars (ohlcv-1m: volume, no notional) next to a trades bar in one
-- 5-minute bucket: the minutes add up, the VWAP of only part of the volume is none
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close, volume, trade_count,
                        is_legacy, data_source)
VALUES ('O', '2025-11-05 15:00+00', 10, 11, 9, 10.5, 100, 0, false, 'ohlcv-1m'),
       ('O', '2025-11-05 15:01+00', 10.5, 12, 10, 11, 50, 0, false, 'ohlcv-1m');
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close, volume, trade_count,
                        vwap, notional, open_ts_ns, open_seq, close_ts_ns, close_seq,
                        is_legacy, data_source)
VALUES ('O', '2025-11-05 15:02+00', 11, 11, 11, 11, 5, 1, 11, 55, 0, 0, 0, 0, false, 'trades');
SELECT refresh_hour_bars('2025-11-05 15:00+00', '2025-11-05 16:00+00');
SELECT "timestamp", open, high, low, close, volume, trade_count, vwap, data_source, is_legacy
FROM bars('O', '2025-11-05 15:00+00', '2025-11-05 15:05+00');
SELECT "timestamp", open, high, low, close, volume, trade_count, vwap, data_source, is_legacy
FROM bars('O', '2025-11-05 15:00+00', '2025-11-05 15:05+00', bucket => '5 minutes');
-- the hour of O: one hour bar, both sources ('mixed'), no VWAP
SELECT symbol, hour, open, high, low, close, volume, trade_count, notional, data_source FROM hour_bars WHERE symbol = 'O';
SELECT "timestamp", open, high, low, close, volume, trade_count, vwap, data_source
FROM bars('O', '2025-11-05 15:00+00', '2025-11-05 16:00+00', bucket => '1 hour');

-- through hour bars or minute by minute (include_legacy: there are no legacy bars), the same
SELECT bucket, tz, session,
       ARRAY(SELECT b::text FROM bars('R', '2025-11-01', '2025-11-04', bucket => bucket, tz => tz, session => session) b)
     = ARRAY(SELECT b::text FROM bars('R', '2025-11-01', '2025-11-04', include_legacy => true, bucket => bucket, tz => tz, session => session) b) AS same
FROM (VALUES ('1 day'::interval, 'America/New_York', NULL::text), ('1 day', 'UTC', NULL),
             ('4 hours', 'Asia/Kolkata', NULL), ('1 day', 'America/New_York', '09:30-16:00')) AS v(bucket, tz, session);
-- UTC by another of its names is UTC: all history at once, as with the default
SELECT tz, count(*) FROM unnest(ARRAY['UTC', 'Etc/UTC', 'utc', 'Zulu']) AS tz,
       LATERAL bars('R', '-infinity', 'infinity', bucket => '1 day', tz => tz) GROUP BY tz ORDER BY tz;
SELECT error_of($$SELECT refresh_hour_bars(NULL)$$);
SELECT error_of($$SELECT refresh_hour_bars('2025-01-02', '2025-01-01')$$);
DROP EXTENSION tradebars;

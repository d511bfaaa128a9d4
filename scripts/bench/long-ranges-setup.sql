-- The benchmark's long-range bars: a year (2024) of 1-minute trades bars for :symbols symbols,
-- New York's regular hours on weekdays (390 a day), written straight into price_bars. Prices
-- vary by symbol and minute. scripts/bench.sh then sums their hours (refresh_hour_bars()).
\set ON_ERROR_STOP on
CREATE EXTENSION tradebars;
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close, volume, trade_count, vwap,
                        notional, open_ts_ns, open_seq, close_ts_ns, close_seq, is_legacy, data_source)
SELECT 'S' || lpad(s::text, 3, '0'), t, p, p + 0.05, p - 0.05, p + 0.01, v, 3, p, p * v,
       0, 0, 0, 0, false, 'trades'
FROM generate_series(1, :symbols) AS s
CROSS JOIN LATERAL (
    SELECT ((d::date + time '09:30') AT TIME ZONE 'America/New_York') + m * interval '1 minute' AS t
    FROM generate_series(date '2024-01-01', date '2024-12-31', interval '1 day') AS d,
         generate_series(0, 389) AS m
    WHERE extract(isodow FROM d) < 6
) minutes
CROSS JOIN LATERAL (
    SELECT round(100 + ((s * 7919 + extract(epoch FROM t)::bigint / 60) % 1000) / 100.0, 2) AS p,
           100 + (s * 31 + extract(epoch FROM t)::bigint / 60) % 900 AS v
) price;
VACUUM ANALYZE price_bars;

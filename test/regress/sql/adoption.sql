-- mark_legacy() on an old app's price_bars that lacks trade_count: it adds what trades bars
-- need, so bars() and the rollup work afterwards.
SET TimeZone = 'UTC';
CREATE TABLE price_bars (
    id          serial PRIMARY KEY,
    symbol      varchar(16) NOT NULL,
    "timestamp" timestamp NOT NULL,
    open        double precision, high double precision, low double precision,
    close       double precision,
    volume      integer DEFAULT 0,
    UNIQUE (symbol, "timestamp")
);
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close, volume)
VALUES ('M', '2025-11-03 14:30', 1.5, 1.75, 1.25, 1.5, 0);
CREATE EXTENSION tradebars;
SELECT tradebars_internal.price_bars_is_ready();
SELECT mark_legacy();
SELECT tradebars_internal.price_bars_is_ready();
SELECT "timestamp", open, close, volume, trade_count, data_source, is_legacy
FROM bars('M', '2025-11-03', '2025-11-04', include_legacy => true);
DROP EXTENSION tradebars CASCADE;
DROP TABLE price_bars;

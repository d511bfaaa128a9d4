-- The DBA's runbook on the old app's table: phase 1 (mark_legacy), what is where, the
-- deletes that need a real copy, the archive and the way back, and the rollback.
SET TimeZone = 'UTC';

-- the old app's table and its quote-built bars (volume 0), before the extension
\i test/fixtures/old_app_schema.sql
INSERT INTO price_bars (symbol, "timestamp", open, high, low, close)
SELECT 'OLD', timestamp '2025-10-24 14:30' + m * interval '1 minute', 1.2 + m, 1.3 + m, 1.1 + m, 0.1::float8 + 0.2::float8 + m
FROM generate_series(0, 4) AS m;
CREATE EXTENSION tradebars;

-- before phase 1, the rollup refuses to write into a table it cannot use
SELECT error_of('SELECT bars_rollup()');

-- phase 1, twice: the second changes nothing
SELECT mark_legacy();
SELECT mark_legacy();
-- floats became exact numeric that convert back to the very same doubles
SELECT symbol, "timestamp", close, close::float8 = 0.1::float8 + 0.2::float8 + (extract(minute FROM "timestamp") - 30) AS same_double
FROM price_bars ORDER BY "timestamp";

-- what is where
SELECT location, data_source, is_legacy, soft_deleted, bars, total_volume FROM migration_status();

-- phase 7 without a copy is refused, with a real copy it goes
SELECT error_of('SELECT hard_delete_legacy()');
SELECT error_of($$SELECT hard_delete_legacy('price_bars')$$);
CREATE VIEW bars_view AS SELECT * FROM price_bars;
SELECT error_of($$SELECT hard_delete_legacy('bars_view')$$);
CREATE TABLE keys_only AS SELECT symbol, "timestamp", data_source FROM price_bars;
SELECT error_of($$SELECT hard_delete_legacy('keys_only')$$);
CREATE TABLE changed_copy AS SELECT * FROM price_bars;
UPDATE changed_copy SET close = close + 0.01 WHERE "timestamp" = '2025-10-24 14:31';
SELECT error_of($$SELECT hard_delete_legacy('changed_copy')$$);

-- option B and the way back
SELECT archive_legacy();
SELECT count(*) AS left_in_price_bars FROM price_bars;
SELECT restore_legacy();
SELECT count(*) AS back_in_price_bars FROM price_bars WHERE is_legacy;

-- option A: soft delete, a purge that needs a copy, undo
SELECT soft_delete_legacy();
SELECT error_of($$SELECT purge_deleted('0 seconds')$$);
SELECT error_of($$SELECT purge_deleted(NULL)$$);
SELECT restore_legacy();

-- option C with a real copy
CREATE TABLE price_bars_backup AS SELECT * FROM price_bars;
SELECT hard_delete_legacy('price_bars_backup');
SELECT count(*) AS legacy_left FROM price_bars WHERE is_legacy;

-- the rollback with nothing of tradebars' own: nothing removed, the identity horizon reset
SELECT rollback_trades();
SELECT identity_horizon();

DROP VIEW bars_view;
DROP TABLE price_bars_backup, changed_copy, keys_only;
DROP TABLE IF EXISTS price_bars_legacy;
DROP EXTENSION tradebars CASCADE;  -- its trigger on price_bars goes with it
DROP TABLE price_bars;

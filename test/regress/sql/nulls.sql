-- A NULL where a function needs a value is one clear error with SQLSTATE 22004
-- (null_value_not_allowed), never taken as a default: each argument of the API, one by one.
CREATE EXTENSION tradebars;
SET TimeZone = 'UTC';
SELECT f, error_of(f) FROM (VALUES
    ($$SELECT set_bar_clock(NULL)$$),
    ($$SELECT set_identity_retention(NULL)$$),
    ($$SELECT mark_legacy(NULL)$$),
    ($$SELECT purge_deleted(NULL)$$),
    ($$SELECT purge_deleted(confirm => NULL)$$),
    ($$SELECT hard_delete_legacy(confirm => NULL)$$),
    ($$SELECT restore_legacy(undelete => NULL)$$),
    ($$SELECT rollback_trades(NULL)$$),
    ($$SELECT * FROM migration_coverage(NULL)$$),
    ($$SELECT * FROM bars_changed_since(NULL)$$),
    ($$SELECT refresh_hour_bars(NULL, '2025-01-01')$$),
    ($$SELECT refresh_hour_bars('2025-01-01', NULL)$$),
    ($$SELECT * FROM tradebars_internal.official_bars_merge(NULL)$$),
    ($$SELECT * FROM bars(NULL, '2025-01-01', '2025-01-02')$$),
    ($$SELECT * FROM bars('X', NULL, '2025-01-02')$$),
    ($$SELECT * FROM bars('X', '2025-01-01', NULL)$$),
    ($$SELECT * FROM bars('X', '2025-01-01', '2025-01-02', include_legacy => NULL)$$),
    ($$SELECT * FROM bars('X', '2025-01-01', '2025-01-02', bucket => NULL)$$),
    ($$SELECT * FROM bars('X', '2025-01-01', '2025-01-02', include_deleted => NULL)$$),
    ($$SELECT * FROM bars('X', '2025-01-01', '2025-01-02', tz => NULL)$$),
    ($$SELECT * FROM bars('X', '2025-01-01', '2025-01-02', origin => NULL)$$),
    ($$SELECT * FROM bars('X', '2025-01-01', '2025-01-02', fill => NULL)$$)
) AS t(f);
-- A bad value that is not NULL keeps 22023 (invalid_parameter_value).
SELECT error_of($$SELECT set_bar_clock('ts_exchange')$$);
SELECT error_of($$SELECT set_identity_retention('1 minute')$$);
SELECT error_of($$SELECT mark_legacy('MBP 1')$$);
SELECT error_of($$SELECT * FROM tradebars_internal.official_bars_merge('ohlcv-1h')$$);
-- NULL means something where the documentation says so: session => NULL is the whole day.
SELECT count(*) FROM bars('X', '2025-01-01', '2025-01-02', session => NULL);
-- Nothing above changed the settings.
SELECT bar_clock(), identity_horizon();
DROP EXTENSION tradebars;

-- What a role that may create objects in the extension's schema (public here; PostgreSQL 15
-- does not grant that, many sites do) puts there never runs inside the extension. The role
-- is also a feeder: it calls bars_rollup(), which runs as the extension's owner. It plants
-- functions, aggregates and operators that fit the extension's calls better than the
-- built-ins they would displace (PostgreSQL takes an exact match from any schema on the path
-- over a built-in that needs a cast or takes anyarray), and temporary tables named as the
-- extension's. Most are there before the DBA creates the extension, as a script that called
-- them, or a SQL body bound to them then, would run them as the DBA. Every planted object
-- writes to planted_log when it runs; one run as a superuser also makes the role one.
-- The extension at its first release, before anything is planted: the DBA updates it later.
CREATE EXTENSION tradebars VERSION '0.1.0';
CREATE ROLE tradebars_planter LOGIN;
GRANT CREATE ON SCHEMA public TO tradebars_planter;
SET ROLE tradebars_planter;
CREATE TABLE public.planted_log (planted text, ran_as text);
GRANT INSERT ON public.planted_log TO PUBLIC;
CREATE FUNCTION public.planted_ran(planted text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.planted_log VALUES (planted, current_user);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER ROLE tradebars_planter SUPERUSER;
    END IF;
END $$;
CREATE FUNCTION public.fixed_to_numeric(v bigint) RETURNS numeric LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('fixed_to_numeric(bigint)'); RETURN v / 1e9; END $$;
CREATE FUNCTION public.to_timestamp(v bigint) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('to_timestamp(bigint)'); RETURN pg_catalog.to_timestamp(v::float8); END $$;
CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('format(text, text)'); RETURN pg_catalog.format(f, a); END $$;
CREATE FUNCTION public.nextval(s text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('nextval(text)'); RETURN pg_catalog.nextval(s::regclass); END $$;
CREATE FUNCTION public.unnest(a smallint[]) RETURNS SETOF smallint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('unnest(smallint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION public.array_to_string(a text[], d text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('array_to_string(text[], text)'); RETURN pg_catalog.array_to_string(a, d); END $$;
CREATE FUNCTION public.planted_least(s bigint[], v bigint[]) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('min(bigint[])'); RETURN CASE WHEN s IS NULL OR v < s THEN v ELSE s END; END $$;
CREATE AGGREGATE public.min(bigint[]) (sfunc = public.planted_least, stype = bigint[]);
CREATE FUNCTION public.planted_greatest(s bigint[], v bigint[]) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('max(bigint[])'); RETURN CASE WHEN s IS NULL OR v > s THEN v ELSE s END; END $$;
CREATE AGGREGATE public.max(bigint[]) (sfunc = public.planted_greatest, stype = bigint[]);
CREATE FUNCTION public.planted_divide(n numeric, d bigint) RETURNS numeric LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('numeric / bigint'); RETURN n / d::numeric; END $$;
CREATE OPERATOR public./ (leftarg = numeric, rightarg = bigint, function = public.planted_divide);
CREATE FUNCTION public.planted_equal(a smallint[], b smallint[]) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('smallint[] = smallint[]'); RETURN a::text = b::text; END $$;
CREATE OPERATOR public.= (leftarg = smallint[], rightarg = smallint[], function = public.planted_equal);
-- what the extension's script and its bodies would have met: an unknown literal for a
-- regclass, a timestamptz[] for anyarray, operators between types that need a cast
CREATE FUNCTION public.pg_extension_config_dump(t text, c text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('pg_extension_config_dump(text, text)'); PERFORM pg_catalog.pg_extension_config_dump(t::regclass, c); END $$;
CREATE FUNCTION public.setval(s text, v integer, c boolean) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('setval(text, integer, boolean)'); RETURN pg_catalog.setval(s::regclass, v, c); END $$;
CREATE FUNCTION public.width_bucket(v timestamptz, b timestamptz[]) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('width_bucket(timestamptz, timestamptz[])'); RETURN pg_catalog.width_bucket(v, b); END $$;
CREATE FUNCTION public.planted_oid_eq(a oid, b regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('oid = regclass'); RETURN a = b::oid; END $$;
CREATE OPERATOR public.= (leftarg = oid, rightarg = regclass, function = public.planted_oid_eq);
CREATE FUNCTION public.planted_times(a bigint, b interval) RETURNS interval LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('bigint * interval'); RETURN a::float8 * b; END $$;
CREATE OPERATOR public.* (leftarg = bigint, rightarg = interval, function = public.planted_times);
CREATE FUNCTION public.planted_mod(a bigint, b integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('bigint % integer'); RETURN a % b::bigint; END $$;
CREATE OPERATOR public.% (leftarg = bigint, rightarg = integer, function = public.planted_mod);
CREATE FUNCTION public.planted_over(a bigint, b numeric) RETURNS numeric LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('bigint / numeric'); RETURN a::numeric / b; END $$;
CREATE OPERATOR public./ (leftarg = bigint, rightarg = numeric, function = public.planted_over);
-- functions beside the extension's own that would make a call of them ambiguous
CREATE FUNCTION public.bar_clock(x integer DEFAULT 0) RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$;
CREATE FUNCTION public.ohlcv(bigint, bigint, integer, bigint, bigint, x integer DEFAULT 0) RETURNS text
    LANGUAGE sql AS $$ SELECT 'planted' $$;
RESET ROLE;
-- the DBA updates the extension with the plants in place (0.1.0 to 0.2.0 to this version),
-- then creates it afresh with them in place
ALTER EXTENSION tradebars UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'tradebars';
DROP EXTENSION tradebars;
CREATE EXTENSION tradebars;
SET TimeZone = 'UTC';
GRANT tradebars_feeder, tradebars_reader TO tradebars_planter;
-- The path of every function of the extension that sets one holds no schema but the
-- catalog, the extension's helpers and pg_temp (which PostgreSQL never searches for
-- functions or operators); the rest are C functions and SQL helpers inlined into the
-- query that calls them, so they run with their caller's path.
SELECT count(*) AS functions_with_a_path,
       count(*) FILTER (WHERE c <> 'search_path=pg_catalog, tradebars_internal, pg_temp') AS other_paths
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass::oid AND d.objid = p.oid
     AND d.refclassid = 'pg_extension'::regclass::oid AND d.deptype = 'e'
     JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tradebars',
     unnest(p.proconfig) c
WHERE c LIKE 'search_path=%';
SELECT p.oid::regprocedure AS without_a_path, l.lanname
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass::oid AND d.objid = p.oid
     AND d.refclassid = 'pg_extension'::regclass::oid AND d.deptype = 'e'
     JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tradebars'
     JOIN pg_language l ON l.oid = p.prolang
WHERE NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
  AND l.lanname IN ('sql', 'plpgsql')
ORDER BY 1::text;
-- and no SQL body was bound while the extension's script ran (SQL-standard bodies are)
SELECT count(*) AS bodies_bound_at_creation
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass::oid AND d.objid = p.oid
     AND d.refclassid = 'pg_extension'::regclass::oid AND d.deptype = 'e'
     JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tradebars'
WHERE p.prosqlbody IS NOT NULL;

SET ROLE tradebars_planter;
CREATE FUNCTION public.planted_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted_ran('a write to ' || TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME); RETURN NULL; END $$;
-- the archive, made before the DBA's first archive_legacy(), with a trigger
CREATE TABLE public.price_bars_legacy (LIKE public.price_bars INCLUDING DEFAULTS);
CREATE TRIGGER planted AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.price_bars_legacy
    FOR EACH STATEMENT EXECUTE FUNCTION public.planted_write();
RESET ROLE;
-- temporary tables named as the extension's (the session's, whoever makes them), each
-- logging whatever is written to it; the decoy bar_settings names the other clock
CREATE FUNCTION pg_temp.decoys() RETURNS void LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['price_bars', 'hour_bars', 'rollup_bars', 'rollup_stats',
                             'bar_settings', 'trades_staging_0', 'trades_staging_1',
                             'trades_rejected', 'trade_coverage', 'ingest_ledger'] LOOP
        EXECUTE pg_catalog.format('CREATE TEMP TABLE %I (LIKE public.%I INCLUDING DEFAULTS)', t, t);
        IF t = 'bar_settings' THEN
            INSERT INTO pg_temp.bar_settings (id, clock) VALUES (1, 'ts_event');
        END IF;
        EXECUTE pg_catalog.format('CREATE TRIGGER planted AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
                                   ON pg_temp.%I FOR EACH STATEMENT EXECUTE FUNCTION public.planted_write()', t);
    END LOOP;
END $$;
SELECT pg_temp.decoys();
CREATE TEMP TABLE staging_epoch AS SELECT 0::bigint AS last_value;
CREATE TEMP VIEW trades_staging AS SELECT * FROM public.trades_staging_0 WHERE false;

-- 600 trades of two symbols over 20 minutes, some sharing a receipt, staged in two parts
CREATE TABLE planted_trades AS
SELECT 'P' || (i % 2) AS symbol,
       (extract(epoch FROM timestamptz '2025-11-03 14:00+00')::bigint
        + abs(hashint4(i)) % 1200) * 1000000000 AS ts_recv,
       i AS ord,
       100000000000 + (abs(hashint4(i + 100000)) % 1000)::bigint * 10000000 AS price,
       1 + abs(hashint4(i + 200000)) % 50 AS size
FROM generate_series(1, 600) i;
SELECT count(DISTINCT (symbol, ts_recv)) < count(*) AS receipts_shared FROM planted_trades;
CREATE FUNCTION stage_planted(part int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE pg_catalog.format('INSERT INTO %s (symbol, instrument_id, publisher_id, ts_event, ts_recv,
                                    sequence, price, size, side, flags, ord)
                    SELECT symbol, 1, 1, ts_recv, ts_recv, 0, price, size, %L, 0, ord
                    FROM public.planted_trades WHERE ord %% 2 = $1', public.staging_slot(), 'B')
        USING part;
END $$;
GRANT EXECUTE ON FUNCTION stage_planted(int) TO tradebars_planter;
GRANT SELECT ON planted_trades TO tradebars_planter;

-- the planter, a feeder, rolls up twice with its decoys in place
SET ROLE tradebars_planter;
SELECT stage_planted(0);
SELECT * FROM public.bars_rollup();
SELECT stage_planted(1);
SELECT * FROM public.bars_rollup();
SELECT staged_trades, rollups, trades_rolled_up, bars_written, trades_rejected FROM public.rollup_status();
SELECT count(*) AS bars_through_the_api FROM public.bars('P0', '2025-11-03', '2025-11-04');
RESET ROLE;
-- the DBA runs the migration and maintenance functions with the plants in place
SELECT public.mark_legacy();
SELECT public.refresh_hour_bars();
SELECT count(*) AS hour_rows FROM public.bars('P1', '2025-11-03', '2025-11-04', bucket => '1 hour');
SELECT count(*) AS filled_rows
FROM public.bars('P1', '2025-11-03 14:00', '2025-11-03 15:00', bucket => '5 minutes', fill => 'previous');
SELECT count(*) AS new_york_rows
FROM public.bars('P1', '2025-11-03', '2025-11-04', bucket => '5 minutes', tz => 'America/New_York');
SELECT public.identity_horizon() IS NOT NULL AS horizon;
SELECT count(*) AS changed FROM public.bars_changed_since(0);
SELECT criterion, passed IS NOT NULL AS judged FROM public.migration_check() ORDER BY 1;
SELECT count(*) > 0 AS status_rows FROM public.migration_status();
SELECT count(*) > 0 AS coverage_rows FROM public.migration_coverage('1 hour');
SELECT public.prune_trade_identity() >= 0 AS pruned;
-- a legacy bar to clean up: the planter's archive is refused, and counts as no copy of it
INSERT INTO public.price_bars (symbol, "timestamp", open, high, low, close, is_legacy, data_source)
VALUES ('P0', '2025-11-02 10:00+00', 1, 1, 1, 1, true, 'mbp-1');
SELECT public.soft_delete_legacy();
SELECT error_of('SELECT public.archive_legacy()');
SELECT error_of('SELECT public.restore_legacy()');
SELECT error_of('SELECT public.hard_delete_legacy()');
SELECT count(*) AS legacy_bars_kept FROM public.price_bars WHERE is_legacy;

-- nothing planted ran, the role is no superuser, and the decoys were not touched
SELECT planted, ran_as, count(*) FROM public.planted_log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT rolsuper FROM pg_roles WHERE rolname = 'tradebars_planter';
SELECT (SELECT count(*) FROM pg_temp.price_bars) AS temp_price_bars,
       (SELECT count(*) FROM pg_temp.hour_bars) AS temp_hour_bars;
-- the plants go (the decoys with them), then the bars are checked
DROP TABLE pg_temp.price_bars, pg_temp.hour_bars, pg_temp.rollup_bars, pg_temp.rollup_stats,
           pg_temp.bar_settings, pg_temp.trades_staging_0, pg_temp.trades_staging_1,
           pg_temp.trades_rejected, pg_temp.trade_coverage, pg_temp.ingest_ledger,
           pg_temp.staging_epoch;
DROP VIEW pg_temp.trades_staging;
DROP OWNED BY tradebars_planter;
-- the bars are those of the trades, on Databento's clock: the minute of ts_recv, open and
-- close by (ts_recv, ord), computed here without the extension
CREATE TEMP TABLE expected AS
SELECT symbol, to_timestamp(ts_recv / 60000000000 * 60) AS minute,
       (array_agg(price ORDER BY ts_recv, ord))[1] / 1e9 AS open, max(price) / 1e9 AS high,
       min(price) / 1e9 AS low, (array_agg(price ORDER BY ts_recv DESC, ord DESC))[1] / 1e9 AS close,
       sum(size) AS volume, count(*) AS trade_count
FROM planted_trades GROUP BY 1, 2;
SELECT (SELECT count(*) FROM expected) AS expected_bars,
       (SELECT count(*) FROM ((SELECT * FROM expected
                               EXCEPT SELECT symbol, "timestamp", open, high, low, close, volume, trade_count
                                      FROM price_bars WHERE data_source = 'trades')
                              UNION ALL
                              (SELECT symbol, "timestamp", open, high, low, close, volume, trade_count
                               FROM price_bars WHERE data_source = 'trades'
                               EXCEPT SELECT * FROM expected)) d) AS bars_that_differ,
       (SELECT clock FROM bar_settings) AS clock;

DROP FUNCTION stage_planted(int);
DROP TABLE planted_trades;

-- The old application's price_bars, and a name mark_legacy() gives one of its indexes taken
-- beforehand: refused whole, the old key kept (taken, the new key would have been skipped)
DROP EXTENSION tradebars;
CREATE TABLE price_bars (symbol text NOT NULL, "timestamp" timestamptz NOT NULL, open numeric,
                         high numeric, low numeric, close numeric, volume bigint,
                         PRIMARY KEY (symbol, "timestamp"));
CREATE EXTENSION tradebars;
GRANT CREATE ON SCHEMA public TO tradebars_planter;  -- DROP OWNED took it
SET ROLE tradebars_planter;
CREATE TABLE public.price_bars_symbol_timestamp_source ();
RESET ROLE;
SELECT error_of('SELECT mark_legacy()');
SELECT conname FROM pg_constraint WHERE conrelid = 'price_bars'::regclass AND contype = 'p';
DROP TABLE price_bars_symbol_timestamp_source;
SELECT mark_legacy();
SELECT tradebars_internal.price_bars_is_ready() AS ready;

REVOKE CREATE ON SCHEMA public FROM tradebars_planter;
DROP ROLE tradebars_planter;
DROP EXTENSION tradebars CASCADE;
DROP TABLE price_bars;

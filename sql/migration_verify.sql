-- Phases 5 and 6 of the plan: what is where, legacy against new coverage, and the plan's
-- success criteria, each measured.

CREATE OR REPLACE FUNCTION migration_status()
RETURNS TABLE (location text, data_source text, is_legacy boolean, soft_deleted boolean,
               bars bigint, total_volume numeric, first_bar timestamptz, last_bar timestamptz,
               bar_clock text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    archive record;  -- price_bars_legacy's kind and owner, where there is one
BEGIN
    PERFORM require_price_bars_ready('migration_status');
    RETURN QUERY
        SELECT 'price_bars', p.data_source, p.is_legacy, p.deleted_at IS NOT NULL, count(*),
               sum(p.volume)::numeric, min(p."timestamp"), max(p."timestamp"),
               CASE WHEN p.data_source = 'trades' AND NOT p.is_legacy THEN tradebars_internal.bar_clock() END
        FROM @extschema@.price_bars p
        GROUP BY 2, 3, 4
        ORDER BY 3 DESC, 2, 4;
    -- The archive is read only where it is a table of the caller's or a superuser's: a view
    -- or a table's policies run their owner's code with the rights of whoever reads them.
    SELECT c.relkind AS kind, c.relowner::regrole AS owner,
           c.relkind IN ('r', 'p') AND foreign_owner(c.oid::regclass) IS NULL AS readable
      INTO archive
      FROM pg_class c WHERE c.oid = to_regclass('@extschema@.price_bars_legacy');
    IF archive.kind IS NOT NULL AND NOT archive.readable THEN
        RAISE WARNING 'migration_status: price_bars_legacy is not read: it is not a table of yours or a superuser''s (owner %, kind %)',
            archive.owner, archive.kind;
    ELSIF archive.kind IS NOT NULL THEN
        RETURN QUERY EXECUTE
            'SELECT ''price_bars_legacy'', a.data_source, a.is_legacy, a.deleted_at IS NOT NULL, count(*),
                    sum(a.volume)::numeric, min(a."timestamp"), max(a."timestamp"), NULL::text
             FROM @extschema@.price_bars_legacy a GROUP BY 2, 3, 4 ORDER BY 2, 4';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION migration_coverage(since interval DEFAULT '1 day')
RETURNS TABLE (hour timestamptz, legacy_bars bigint, new_bars bigint, scanner_bars bigint,
               official_bars bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    cutoff timestamptz := now() - checked_age('migration_coverage: since', since);
BEGIN
    PERFORM require_price_bars_ready('migration_coverage');
    RETURN QUERY
        SELECT date_trunc('hour', p."timestamp"),
               count(*) FILTER (WHERE p.is_legacy AND p.data_source IS DISTINCT FROM 'scanner'),
               count(*) FILTER (WHERE NOT p.is_legacy AND p.data_source = 'trades'),
               count(*) FILTER (WHERE p.data_source = 'scanner'),
               count(*) FILTER (WHERE NOT p.is_legacy AND p.data_source = 'ohlcv-1m')
        FROM @extschema@.price_bars p
        WHERE p."timestamp" > cutoff
        GROUP BY 1 ORDER BY 1;
END
$fn$;

-- One row per success criterion of the migration plan, with what was measured.
CREATE OR REPLACE FUNCTION migration_check()
RETURNS TABLE (criterion text, passed boolean, measured text, expected text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    new_bars bigint;
    zero_volume bigint;
    first_new timestamptz;
    new_minutes bigint;
    legacy_minutes bigint;
    top_symbol text;
    api_rows bigint;
    board_symbols bigint;
    board_without_volume bigint;
    f record;
    feeders bigint;
BEGIN
    PERFORM require_price_bars_ready('migration_check');
    SELECT count(*), count(*) FILTER (WHERE volume <= 0), min("timestamp")
      INTO new_bars, zero_volume, first_new
      FROM @extschema@.price_bars WHERE NOT is_legacy AND data_source = 'trades';

    criterion := 'new bars have volume > 0';
    passed := new_bars > 0 AND zero_volume = 0;
    measured := format('%s new bars, %s with volume 0', new_bars, zero_volume);
    expected := 'at least one new bar, none with volume 0';
    RETURN NEXT;

    criterion := 'at least 1,000 new bars';
    passed := new_bars >= 1000;
    measured := new_bars::text;
    expected := '>= 1000';
    RETURN NEXT;

    -- Over the parallel run (since the first trades bar): symbol-minutes covered by each.
    SELECT count(*) FILTER (WHERE NOT is_legacy AND data_source = 'trades'),
           count(*) FILTER (WHERE is_legacy)
      INTO new_minutes, legacy_minutes
      FROM @extschema@.price_bars WHERE first_new IS NOT NULL AND "timestamp" >= first_new;
    criterion := 'coverage matches or exceeds legacy';
    passed := new_bars > 0 AND new_minutes >= legacy_minutes;
    measured := format('%s new vs %s legacy symbol-minutes since %s', new_minutes, legacy_minutes,
                       coalesce(first_new::text, 'no new bar'));
    expected := 'new >= legacy';
    RETURN NEXT;

    SELECT symbol INTO top_symbol FROM @extschema@.price_bars
     WHERE NOT is_legacy AND data_source = 'trades'
     GROUP BY symbol ORDER BY max("timestamp") DESC, count(*) DESC LIMIT 1;
    SELECT count(*) INTO api_rows
      FROM @extschema@.bars(top_symbol, (SELECT max("timestamp") FROM @extschema@.price_bars WHERE symbol = top_symbol) - interval '1 day',
                (SELECT max("timestamp") FROM @extschema@.price_bars WHERE symbol = top_symbol) + interval '1 minute')
     WHERE top_symbol IS NOT NULL;
    criterion := 'API returns data';
    passed := coalesce(api_rows, 0) > 0;
    measured := format('bars(%L, last day) returned %s rows', top_symbol, coalesce(api_rows, 0));
    expected := '> 0 rows';
    RETURN NEXT;

    SELECT count(*), count(*) FILTER (WHERE avg_volume <= 0)
      INTO board_symbols, board_without_volume
      FROM (SELECT symbol, avg(volume) AS avg_volume FROM @extschema@.price_bars
            WHERE NOT is_legacy AND data_source = 'trades'
            GROUP BY symbol ORDER BY count(*) DESC LIMIT 20) board;
    criterion := 'leaderboard shows volume';
    passed := board_symbols > 0 AND board_without_volume = 0;
    measured := format('%s of the top %s symbols without volume', board_without_volume, board_symbols);
    expected := 'every top symbol has volume';
    RETURN NEXT;

    SELECT * INTO f FROM @extschema@.feeder_status;
    criterion := 'no feeder errors in the last day';
    passed := f.last_error_at IS NULL OR f.last_error_at < now() - interval '1 day';
    measured := CASE WHEN f IS NULL THEN 'no feeder has reported'
                     ELSE format('%s errors in total, last: %s', f.errors,
                                 coalesce(f.last_error_at::text || ' ' || f.last_error, 'none')) END;
    expected := 'none since yesterday';
    RETURN NEXT;

    SELECT count(*) INTO feeders FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND classid = 29794 AND objid = 3 AND objsubid = 2
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
    criterion := 'exactly one feeder running';
    passed := feeders = 1;
    measured := format('%s feeder(s) holding the feeder lock', feeders);
    expected := '1';
    RETURN NEXT;
END
$fn$;

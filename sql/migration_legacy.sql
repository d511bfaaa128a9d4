-- Phase 1 of the plan: an existing `price_bars` learns what trades bars need, and its bars
-- are marked legacy. Legacy and trades bars of the same symbol and minute coexist: the unique
-- key becomes (symbol, timestamp, data_source), never an overwrite of a legacy bar.

-- Whether price_bars has what bars_rollup() writes (a table made by the old app does not
-- until mark_legacy() runs).
CREATE OR REPLACE FUNCTION tradebars_internal.price_bars_is_ready() RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
    SELECT to_regclass('@extschema@.price_bars') IS NOT NULL
       AND (SELECT count(*) FROM pg_attribute
            WHERE attrelid = to_regclass('@extschema@.price_bars') AND attnum > 0 AND NOT attisdropped
              AND attname IN ('is_legacy', 'data_source', 'migrated_at', 'deleted_at', 'vwap',
                              'notional', 'open_ts_ns', 'open_seq', 'close_ts_ns', 'close_seq',
                              'changed_in', 'trade_count')) = 12
       AND EXISTS (
            SELECT 1 FROM pg_index i
            WHERE i.indrelid = to_regclass('@extschema@.price_bars') AND i.indisunique AND i.indpred IS NULL
              AND i.indnatts = 3
              AND ARRAY(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        ORDER BY k.ord) = ARRAY['symbol', 'timestamp', 'data_source'])
$fn$;

CREATE OR REPLACE FUNCTION tradebars_internal.require_price_bars_ready(caller text) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    IF to_regclass('@extschema@.price_bars') IS NULL THEN
        RAISE EXCEPTION '%: there is no price_bars table in schema %', caller, '@extschema@'
            USING ERRCODE = 'undefined_table';
    END IF;
    IF NOT price_bars_is_ready() THEN
        RAISE EXCEPTION '%: price_bars was made by another application; run SELECT mark_legacy(); first', caller
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'mark_legacy() adds the columns trades bars need and keeps every existing bar, marked legacy';
    END IF;
END
$fn$;

-- Refuses to relabel a bar tradebars built as legacy or as another source: the plan's own
-- phase 1 SQL, run again after mark_legacy(), would otherwise turn every trades bar into a
-- legacy 'mbp-1' bar.
CREATE OR REPLACE FUNCTION tradebars_internal.protect_trades_bars() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'price_bars: the bar of % at % is %; it cannot become legacy or another source',
        OLD.symbol, OLD."timestamp",
        CASE WHEN OLD.data_source = 'trades' THEN 'built by tradebars from trades'
             ELSE 'one of Databento''s official bars (' || OLD.data_source || '), loaded by tradebars' END
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'this looks like the migration plan''s phase 1 SQL run again after mark_legacy(); nothing was changed. SELECT mark_legacy(); is the idempotent way';
END
$fn$;

-- The trigger of protect_trades_bars() on price_bars, where missing: tradebars' trades bars
-- and the official bars it loaded keep their source. Only updates of is_legacy or
-- data_source can fire it: a rollup's merge and an official merge never do.
CREATE OR REPLACE FUNCTION tradebars_internal.guard_trades_bars() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '@extschema@.price_bars'::regclass
                   AND tgname = 'price_bars_protect_trades_bars') THEN
        CREATE TRIGGER price_bars_protect_trades_bars
            BEFORE UPDATE OF is_legacy, data_source ON @extschema@.price_bars
            FOR EACH ROW
            WHEN ((OLD.data_source = 'trades' AND NOT OLD.is_legacy AND OLD.open_ts_ns IS NOT NULL
                   AND (NEW.is_legacy OR NEW.data_source IS DISTINCT FROM 'trades'))
                  OR (OLD.data_source = 'ohlcv-1m' AND NOT OLD.is_legacy
                      AND (NEW.is_legacy OR NEW.data_source IS DISTINCT FROM 'ohlcv-1m')))
            EXECUTE FUNCTION protect_trades_bars();
    END IF;
END
$fn$;

-- Brings an existing price_bars to the shape trades bars need, keeping every row and value:
-- adds the missing columns, widens types without loss (float prices -> numeric through their
-- shortest exact text, so numeric::float8 gives back the very same double; integer counts ->
-- bigint; timestamp -> timestamptz read as UTC; bounded varchar -> text), and replaces a
-- unique key on (symbol, timestamp) by one on (symbol, timestamp, data_source).
-- Statements are built only from fixed column names and quoted catalog names.
CREATE OR REPLACE FUNCTION prepare_price_bars() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
    SET extra_float_digits = 1
AS $fn$
DECLARE
    rel regclass := to_regclass('@extschema@.price_bars');
    changes text[] := '{}';
    col record;
    old_key record;
    adopted boolean := false;  -- the table gets its columns now: its bars are new to hour_bars
    taken text;
BEGIN
    -- The names of the indexes made below, held by anything but an index of price_bars: that
    -- index would be skipped, and price_bars left without its key once the old one is gone.
    SELECT string_agg(format('%s (%s)', c.oid::regclass, c.relkind), ', ') INTO taken
    FROM unnest(ARRAY['price_bars_symbol_timestamp_source', 'price_bars_legacy_idx',
                      'price_bars_changed_in']) AS n(name)
    JOIN pg_class c ON c.oid = to_regclass('@extschema@.' || quote_ident(n.name))
    WHERE NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = c.oid AND i.indrelid = rel);
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'mark_legacy: the names of price_bars'' indexes are taken by %; nothing changed', taken
            USING ERRCODE = 'duplicate_object',
                  HINT = 'drop or rename what holds them, then run mark_legacy() again';
    END IF;
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
          AND attname IN ('is_legacy', 'data_source', 'migrated_at', 'deleted_at', 'vwap',
                          'notional', 'open_ts_ns', 'open_seq', 'close_ts_ns', 'close_seq',
                          'changed_in', 'trade_count')) < 12 THEN
    adopted := true;
    ALTER TABLE @extschema@.price_bars
        ADD COLUMN IF NOT EXISTS is_legacy   boolean NOT NULL DEFAULT false,
        ADD COLUMN IF NOT EXISTS data_source text,
        ADD COLUMN IF NOT EXISTS migrated_at timestamptz,
        ADD COLUMN IF NOT EXISTS deleted_at  timestamptz,
        ADD COLUMN IF NOT EXISTS vwap        numeric,
        ADD COLUMN IF NOT EXISTS notional    numeric,
        ADD COLUMN IF NOT EXISTS open_ts_ns  bigint,
        ADD COLUMN IF NOT EXISTS open_seq    bigint,
        ADD COLUMN IF NOT EXISTS close_ts_ns bigint,
        ADD COLUMN IF NOT EXISTS close_seq   bigint,
        ADD COLUMN IF NOT EXISTS changed_in  bigint,
        ADD COLUMN IF NOT EXISTS trade_count bigint NOT NULL DEFAULT 0;
    END IF;
    UPDATE @extschema@.price_bars SET is_legacy = false WHERE is_legacy IS NULL;

    FOR col IN
        SELECT a.attname::text AS name, a.atttypid::regtype::text AS type, a.atttypmod AS typmod
        FROM pg_attribute a
        WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
    LOOP
        IF col.name IN ('open', 'high', 'low', 'close', 'vwap', 'notional')
           AND (col.type <> 'numeric' OR col.typmod <> -1) THEN
            changes := array_append(changes, format('ALTER COLUMN %1$I TYPE numeric USING %1$I::text::numeric', col.name));
        ELSIF col.name IN ('volume', 'trade_count') AND col.type IN ('smallint', 'integer') THEN
            changes := array_append(changes, format('ALTER COLUMN %1$I TYPE bigint', col.name));
        ELSIF col.name = 'timestamp' AND col.type = 'timestamp without time zone' THEN
            changes := array_append(changes, 'ALTER COLUMN "timestamp" TYPE timestamptz USING "timestamp" AT TIME ZONE ''UTC''');
        ELSIF col.name IN ('symbol', 'data_source') AND col.type IN ('character varying', 'character') THEN
            changes := array_append(changes, format('ALTER COLUMN %1$I TYPE text', col.name));
        END IF;
    END LOOP;
    IF cardinality(changes) > 0 THEN
        EXECUTE 'ALTER TABLE @extschema@.price_bars ' || array_to_string(changes, ', ');
    END IF;

    -- A unique key on (symbol, timestamp) would make a trades bar overwrite a legacy bar.
    FOR old_key IN
        SELECT c.conname::text AS conname, ic.relname::text AS indname, n.nspname::text AS nsp
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
        WHERE i.indrelid = rel AND i.indisunique AND i.indnatts = 2
          AND ARRAY(SELECT a.attname::text
                    FROM unnest(i.indkey::int2[]) AS k(attnum)
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    ORDER BY 1) = ARRAY['symbol', 'timestamp']
    LOOP
        IF old_key.conname IS NOT NULL THEN
            EXECUTE format('ALTER TABLE @extschema@.price_bars DROP CONSTRAINT %I', old_key.conname);
        ELSE
            EXECUTE format('DROP INDEX %I.%I', old_key.nsp, old_key.indname);
        END IF;
        RAISE NOTICE 'mark_legacy: replaced unique key % on (symbol, timestamp) by one on (symbol, timestamp, data_source)',
            coalesce(old_key.conname, old_key.indname);
    END LOOP;
    IF to_regclass('@extschema@.price_bars_symbol_timestamp_source') IS NULL THEN
        CREATE UNIQUE INDEX price_bars_symbol_timestamp_source ON @extschema@.price_bars (symbol, "timestamp", data_source);
    END IF;
    IF to_regclass('@extschema@.price_bars_legacy_idx') IS NULL THEN
        -- Partial: legacy bars only, so writing trades bars does not pay for it.
        CREATE INDEX price_bars_legacy_idx ON @extschema@.price_bars (symbol, "timestamp") WHERE is_legacy;
    END IF;
    IF to_regclass('@extschema@.price_bars_changed_in') IS NULL THEN
        -- Partial: bars no rollup changed (legacy ones) are never asked for by it.
        CREATE INDEX price_bars_changed_in ON @extschema@.price_bars (changed_in) WHERE changed_in IS NOT NULL;
    END IF;
    PERFORM guard_trades_bars();
    IF adopted THEN
        -- bars it already held that bars() counts (a scanner's 'trades' bars) get their hours
        PERFORM hour_bars_rebuild('-infinity', 'infinity');
    END IF;
    COMMENT ON COLUMN @extschema@.price_bars.is_legacy IS 'true = bar from the old quote feed (volume 0), kept until the DBA cleans up';
    COMMENT ON COLUMN @extschema@.price_bars.data_source IS 'trades = built by tradebars from executions; anything else = legacy source (e.g. mbp-1)';
END
$fn$;

CREATE OR REPLACE FUNCTION mark_legacy(source text DEFAULT 'mbp-1') RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    marked bigint;
    scanned bigint;
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'mark_legacy: source must not be NULL (a short lowercase name such as ''mbp-1'')'
            USING ERRCODE = 'null_value_not_allowed';
    ELSIF source !~ '^[a-z0-9][a-z0-9._-]{0,19}$' THEN
        RAISE EXCEPTION 'mark_legacy: source must be a short lowercase name such as ''mbp-1'' (got %)', quote_literal(source)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF source IN ('trades', 'scanner', 'ohlcv-1m') THEN
        RAISE EXCEPTION 'mark_legacy: ''%'' names bars of tradebars, of Databento or of the old scanner; give the legacy feed''s name, such as ''mbp-1''', source
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regclass('@extschema@.price_bars') IS NULL THEN
        RAISE EXCEPTION 'mark_legacy: there is no price_bars table in schema %', '@extschema@'
            USING ERRCODE = 'undefined_table';
    END IF;
    -- One step for everyone else: no bar is written or read half-migrated.
    LOCK TABLE @extschema@.price_bars IN ACCESS EXCLUSIVE MODE;
    PERFORM @extschema@.prepare_price_bars();
    -- Bars the old scanner wrote after it switched to TRADES (the plan's phase 2) say
    -- 'trades' but tradebars never built them (it records the order of each bar's open and
    -- close trades): set apart under their own source, so no rollup merges into them and no
    -- rollback removes them, whether or not the plan's SQL already made them legacy, and
    -- also when the scanner wrote them after an earlier mark_legacy(). Their values stay as
    -- they are.
    UPDATE @extschema@.price_bars
       SET is_legacy = true, data_source = 'scanner', migrated_at = coalesce(migrated_at, now())
     WHERE data_source = 'trades' AND open_ts_ns IS NULL;
    GET DIAGNOSTICS scanned = ROW_COUNT;
    IF scanned > 0 THEN
        PERFORM hour_bars_rebuild('-infinity', 'infinity');  -- no longer trades bars
        RAISE NOTICE 'mark_legacy: % bars the old scanner wrote from trades kept apart as source ''scanner''', scanned;
    END IF;
    UPDATE @extschema@.price_bars
       SET is_legacy = true,
           data_source = coalesce(data_source, mark_legacy.source),
           migrated_at = now()
     WHERE NOT is_legacy AND data_source IS DISTINCT FROM 'trades'
       AND data_source IS DISTINCT FROM 'ohlcv-1m';  -- Databento's bars, loaded by tradebars
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF marked = 0 THEN
        RAISE NOTICE 'mark_legacy: nothing to mark; % bars were already legacy',
            (SELECT count(*) FROM @extschema@.price_bars WHERE is_legacy);
    ELSE
        RAISE NOTICE 'mark_legacy: marked % bars legacy (source %)', marked, source;
    END IF;
    RETURN marked;
END
$fn$;
COMMENT ON FUNCTION mark_legacy(text) IS
    'tradebars: phase 1 of the migration; prepares price_bars and marks every existing non-trades bar legacy. Idempotent.';

DO $do$
BEGIN
    IF tradebars_internal.price_bars_is_ready() THEN
        PERFORM tradebars_internal.guard_trades_bars();
    END IF;
END
$do$;

-- tradebars 0.1.0 -> 0.2.0: rollup_status(), the pipeline's progress in one call; legacy
-- bars indexed by a partial index, so writing trades bars no longer maintains two indexes
-- on is_legacy and data_source; the ohlcv aggregate declares its state size (SSPACE), so the
-- planner sizes its hash table instead of spilling to disk; the ingest ledger records a live
-- stream's position (last_ts_recv), so a resumed stream skips exactly what is staged.
-- Must define exactly what a fresh 0.2.0 install defines (extension/src/rollup.rs); the
-- end-to-end test `upgrading_from_0_1_0_gives_what_a_fresh_install_gives` compares them.

CREATE FUNCTION rollup_status()
RETURNS TABLE (staged_trades bigint, oldest_staged_recv timestamptz, rollups bigint,
               trades_rolled_up bigint, bars_written bigint, trades_rejected bigint,
               last_rollup_at timestamptz)
    LANGUAGE sql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
    SELECT (SELECT count(*) FROM trades_staging),
           (SELECT to_timestamp(min(ts_recv) / 1e9) FROM trades_staging),
           s.rollups, s.trades, s.bars_written, s.rejected, s.last_rollup_at
    FROM rollup_stats s
$fn$;

DROP INDEX IF EXISTS price_bars_is_legacy_idx;
DROP INDEX IF EXISTS price_bars_data_source_idx;
-- (attrelid is compared as an oid: an `oid = regclass` operator another role may have put in
-- the extension's schema must not run as the DBA updating. Patched after 0.2.0 shipped.)
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('price_bars')::oid
               AND attname = 'is_legacy' AND NOT attisdropped)
       AND to_regclass('price_bars_legacy_idx') IS NULL THEN
        CREATE INDEX price_bars_legacy_idx ON price_bars (symbol, "timestamp") WHERE is_legacy;
    END IF;
END
$do$;

-- prepare_price_bars() creates the partial index instead of the two old ones.
CREATE OR REPLACE FUNCTION prepare_price_bars() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
    SET extra_float_digits = 1
AS $fn$
DECLARE
    rel regclass := to_regclass('price_bars');
    changes text[] := '{}';
    col record;
    old_key record;
BEGIN
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
          AND attname IN ('is_legacy', 'data_source', 'migrated_at', 'deleted_at', 'vwap',
                          'notional', 'open_ts_ns', 'open_seq', 'close_ts_ns', 'close_seq')) < 10 THEN
    ALTER TABLE price_bars
        ADD COLUMN IF NOT EXISTS is_legacy   boolean NOT NULL DEFAULT false,
        ADD COLUMN IF NOT EXISTS data_source text,
        ADD COLUMN IF NOT EXISTS migrated_at timestamptz,
        ADD COLUMN IF NOT EXISTS deleted_at  timestamptz,
        ADD COLUMN IF NOT EXISTS vwap        numeric,
        ADD COLUMN IF NOT EXISTS notional    numeric,
        ADD COLUMN IF NOT EXISTS open_ts_ns  bigint,
        ADD COLUMN IF NOT EXISTS open_seq    bigint,
        ADD COLUMN IF NOT EXISTS close_ts_ns bigint,
        ADD COLUMN IF NOT EXISTS close_seq   bigint;
    END IF;
    UPDATE price_bars SET is_legacy = false WHERE is_legacy IS NULL;

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
        EXECUTE 'ALTER TABLE price_bars ' || array_to_string(changes, ', ');
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
            EXECUTE format('ALTER TABLE price_bars DROP CONSTRAINT %I', old_key.conname);
        ELSE
            EXECUTE format('DROP INDEX %I.%I', old_key.nsp, old_key.indname);
        END IF;
        RAISE NOTICE 'mark_legacy: replaced unique key % on (symbol, timestamp) by one on (symbol, timestamp, data_source)',
            coalesce(old_key.conname, old_key.indname);
    END LOOP;
    IF to_regclass('price_bars_symbol_timestamp_source') IS NULL THEN
        CREATE UNIQUE INDEX price_bars_symbol_timestamp_source ON price_bars (symbol, "timestamp", data_source);
    END IF;
    IF to_regclass('price_bars_legacy_idx') IS NULL THEN
        -- Partial: legacy bars only, so writing trades bars does not pay for it.
        CREATE INDEX price_bars_legacy_idx ON price_bars (symbol, "timestamp") WHERE is_legacy;
    END IF;
    COMMENT ON COLUMN price_bars.is_legacy IS 'true = bar from the old quote feed (volume 0), kept until the DBA cleans up';
    COMMENT ON COLUMN price_bars.data_source IS 'trades = built by tradebars from executions; anything else = legacy source (e.g. mbp-1)';
END
$fn$;

DROP AGGREGATE ohlcv(bigint, bigint, integer, bigint, bigint);
CREATE AGGREGATE ohlcv(bigint, bigint, integer, bigint, bigint) (
    SFUNC = ohlcv_trans,
    STYPE = internal,
    SSPACE = 144, -- size_of::<Bar>() + alignment: lets the planner size a hash aggregate
    FINALFUNC = ohlcv_final,
    COMBINEFUNC = ohlcv_combine,
    SERIALFUNC = ohlcv_serialize,
    DESERIALFUNC = ohlcv_deserialize,
    PARALLEL = SAFE
);

ALTER TABLE ingest_ledger ADD COLUMN last_ts_recv bigint;

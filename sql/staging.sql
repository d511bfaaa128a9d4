-- Staging as the feeder sees it: which slot to COPY into, and fixed-point prices.

CREATE OR REPLACE FUNCTION tradebars_internal.fixed_to_numeric(fixed numeric) RETURNS numeric
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $fn$ SELECT trim_scale(fixed * 0.000000001) $fn$;
COMMENT ON FUNCTION tradebars_internal.fixed_to_numeric(numeric) IS
    'tradebars: a Databento fixed-point price (units of 1e-9) as an exact numeric';

-- The slot the feeder's next COPY goes to, schema-qualified. The feeder asks at the start of
-- every batch transaction; bars_rollup() moves the answer to the other slot.
CREATE OR REPLACE FUNCTION staging_slot() RETURNS text
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
    AS $fn$ SELECT (SELECT format('%I.%I', n.nspname, c.relname)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = (CASE (SELECT last_value FROM @extschema@.staging_epoch) % 2
                           WHEN 0 THEN '@extschema@.trades_staging_0' ELSE '@extschema@.trades_staging_1' END)::regclass) $fn$;
COMMENT ON FUNCTION staging_slot() IS
    'tradebars: the staging table the feeder writes its next batch to';

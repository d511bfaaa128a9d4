-- Live push (0.3.0): apps learn that bars changed without polling.
--
-- Every bars_rollup() that changes bars sends one NOTIFY on the channel tradebars_bars, with
-- the rollup's id as its payload (a decimal number: far below PostgreSQL's 8000-byte limit).
-- It is delivered when the rollup commits, with the bars. Each bar keeps the id of the rollup
-- that changed it last (price_bars.changed_in), so bars_changed_since(id) returns every bar
-- changed after rollup `id`, as it stands now: a listener that missed notifications, or was
-- not connected, catches up with one call. The latest id is rollup_status().rollups.
CREATE OR REPLACE FUNCTION bars_changed_since(since bigint, symbols text[] DEFAULT NULL)
RETURNS TABLE (rollup_id bigint, symbol text, "timestamp" timestamptz, open numeric,
               high numeric, low numeric, close numeric, volume bigint, trade_count bigint,
               vwap numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
#variable_conflict use_column
BEGIN
    IF since IS NULL THEN
        RAISE EXCEPTION 'bars_changed_since: since must not be NULL (0 returns every bar a rollup of 0.3.0 or later wrote)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF since < 0 THEN
        RAISE EXCEPTION 'bars_changed_since: since must be a rollup id, 0 or more (got %)', since
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'SELECT rollups FROM rollup_status(); gives the latest rollup id';
    END IF;
    PERFORM require_price_bars_ready('bars_changed_since');
    RETURN QUERY
        SELECT p.changed_in, p.symbol, p."timestamp", p.open, p.high, p.low, p.close,
               p.volume, p.trade_count, p.vwap
        FROM @extschema@.price_bars p
        WHERE p.changed_in > bars_changed_since.since
          AND (bars_changed_since.symbols IS NULL OR p.symbol = ANY (bars_changed_since.symbols))
        ORDER BY p.changed_in, p.symbol, p."timestamp";
END
$fn$;
COMMENT ON FUNCTION bars_changed_since(bigint, text[]) IS
    'tradebars: the bars changed by rollups after rollup `since` (optionally of some symbols only), as they stand now; NOTIFY tradebars_bars says when to ask';

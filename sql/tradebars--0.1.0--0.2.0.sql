-- tradebars 0.1.0 -> 0.2.0: rollup_status(), the pipeline's progress in one call.
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

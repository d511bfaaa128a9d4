-- The rollup's SQL side (bars_rollup() itself is extension/src/rollup.rs): its progress,
-- and the error its merge raises rather than merge into a bar it did not build.

-- How far the pipeline has got: what waits in staging (and since when) and the rollup totals.
-- Added in 0.2.0 (sql/tradebars--0.1.0--0.2.0.sql).
-- SECURITY DEFINER (0.3.0): the feeder and reader roles may see how far it got without
-- reading staging itself.
CREATE OR REPLACE FUNCTION rollup_status()
RETURNS TABLE (staged_trades bigint, oldest_staged_recv timestamptz, rollups bigint,
               trades_rolled_up bigint, bars_written bigint, trades_rejected bigint,
               last_rollup_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
    SELECT (SELECT count(*) FROM @extschema@.trades_staging),
           -- a trade without ts_recv (staged as -1) is waiting too, but says nothing of since when
           (SELECT to_timestamp(min(ts_recv) / 1e9) FROM @extschema@.trades_staging WHERE ts_recv >= 0),
           s.rollups, s.trades, s.bars_written, s.rejected, s.last_rollup_at
    FROM @extschema@.rollup_stats s
$fn$;

-- Raised from the rollup's merge when a bar it would merge into says 'trades' but tradebars
-- did not build it: the old scanner's (no order of its open and close trades) or one made
-- legacy. Merging would add to foreign volume and keep foreign open and close (0.3.0).
CREATE OR REPLACE FUNCTION tradebars_internal.foreign_trades_bar(symbol text, at timestamptz) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'bars_rollup: the bar of % at % says data_source ''trades'' but tradebars did not build it (another writer''s, or made legacy); nothing was rolled up',
        symbol, at
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'SELECT mark_legacy(); sets such bars apart as source ''scanner'', values unchanged; the staged trades stay staged until then';
END
$fn$;

-- The bars of one rollup before they are merged, one row per symbol and minute, with what
-- cannot be counted graded out (0.3.0). The rollup fills it from the staging slot, merges
-- the good rows into price_bars, sums its counts and TRUNCATEs it, all in its own
-- transaction: so staged trades are read once, and every statement is an
-- INSERT ... SELECT over tables distributed alike by symbol (on Citus, distribute it with
-- staging). Unlogged: nothing in it outlives the transaction that wrote it.
CREATE UNLOGGED TABLE rollup_bars (
    symbol      text    NOT NULL,
    minute      bigint  NOT NULL,   -- minutes since the epoch, UTC
    good        boolean NOT NULL,   -- a symbol, a plausible minute and a counted trade
    open_px     bigint, high_px bigint, low_px bigint, close_px bigint,
    open_ts     bigint, open_seq bigint, close_ts bigint, close_seq bigint,
    volume      bigint  NOT NULL,
    trade_count bigint  NOT NULL,
    notional_px numeric,
    rejected    bigint  NOT NULL    -- trades of this group the aggregate did not count
);
COMMENT ON TABLE rollup_bars IS
    'tradebars: the bars of the rollup in progress (empty outside bars_rollup())';

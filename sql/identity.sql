-- Trade identity and the bar clock (0.3.0).
--
-- A trade is identified by (publisher_id, instrument_id, ts_recv, ord): ord is its place
-- among the trades of that publisher and instrument that share its ts_recv, in the order
-- Databento delivered them. Databento's time ranges cut on ts_recv, so two sources that
-- deliver the same period number every trade alike, whatever their schema, DBN version or
-- chunking: the feeder skips what is already counted before it stages anything.
--
-- What is kept to know that: trade_coverage, one row per publisher, instrument and ts_recv
-- minute for each stretch of trades already staged (first and last ts_recv, how many, a
-- digest of them, and the fingerprints of the trades at both ends, where a stretch can end
-- inside a group of trades that share a ts_recv). That is about one row per bar, not one
-- per trade, so staging and rolling up cost what they cost without it.

-- The database's settings, one row once chosen. No row yet: the defaults below.
CREATE TABLE bar_settings (
    id                 integer  PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    -- Which UTC minute a trade belongs to: that of its ts_recv (Databento's own OHLCV) or
    -- that of its ts_event (exchange time; the only clock of tradebars 0.1.0 and 0.2.0).
    clock              text     NOT NULL DEFAULT 'ts_recv' CHECK (clock IN ('ts_recv', 'ts_event')),
    -- How long trade_coverage keeps a minute, counted back from the newest trade staged.
    identity_retention interval NOT NULL DEFAULT '7 days'
                       CHECK (identity_retention BETWEEN '1 hour' AND '100 years'),
    -- ts_recv (ns) before which trade identity is no longer known (pruned, or loaded by a
    -- version without it): a load there is refused where trades bars exist, unless forced.
    identity_horizon   bigint   NOT NULL DEFAULT 0
);
COMMENT ON TABLE bar_settings IS 'tradebars: the bar clock and the retention of trade identity';

CREATE TABLE trade_coverage (
    publisher_id  integer  NOT NULL,
    instrument_id bigint   NOT NULL,
    minute        bigint   NOT NULL,  -- ts_recv / 60e9 of every trade of the row
    first_recv    bigint   NOT NULL,
    last_recv     bigint   NOT NULL,
    trades        bigint   NOT NULL,  -- trades staged with first_recv <= ts_recv <= last_recv
    digest        bigint   NOT NULL,  -- wrapping sum of their fingerprints
    first_group   bigint[] NOT NULL,  -- fingerprints of the trades at first_recv, in order
    last_group    bigint[] NOT NULL,  -- and at last_recv
    source        text     NOT NULL,  -- the source that staged the first of them
    -- Minute first: a load reads and writes whole minutes in time order, so its rows append
    -- at the index's end, and one index serves loading, pruning and the newest minute.
    PRIMARY KEY (minute, publisher_id, instrument_id, first_recv)
);
COMMENT ON TABLE trade_coverage IS
    'tradebars: which trades are already counted, per publisher, instrument and ts_recv minute';

-- Where each live subscription has got to, per dataset and symbol ('*': every symbol), so
-- a restarted feeder replays from there whatever the order of its --symbols.
CREATE TABLE live_positions (
    dataset      text        NOT NULL,
    symbol       text        NOT NULL,
    last_ts_recv bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, symbol)
);
COMMENT ON TABLE live_positions IS 'tradebars: the last ts_recv staged by live, per dataset and symbol';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.bar_settings', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.trade_coverage', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.live_positions', '');

-- The extension's own functions ask the one in tradebars_internal: a function another role
-- creates beside the public one (a bar_clock with an argument and a default) would make a
-- call of it ambiguous.
CREATE OR REPLACE FUNCTION tradebars_internal.bar_clock() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
    AS $fn$ SELECT coalesce((SELECT clock FROM @extschema@.bar_settings), 'ts_recv') $fn$;

CREATE OR REPLACE FUNCTION bar_clock() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
    AS $fn$ SELECT tradebars_internal.bar_clock() $fn$;
COMMENT ON FUNCTION bar_clock() IS
    'tradebars: the clock that places trades in minutes: ts_recv (Databento''s OHLCV) or ts_event';

CREATE OR REPLACE FUNCTION set_bar_clock(clock text) RETURNS text
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    PERFORM require_argument('set_bar_clock', 'clock', quote_literal(clock), clock IN ('ts_recv', 'ts_event'),
                             '''ts_recv'' or ''ts_event''');
    PERFORM pg_advisory_xact_lock(29794, 2);  -- no rollup in between (the rollup's lock)
    IF clock = tradebars_internal.bar_clock() THEN
        RETURN clock;
    END IF;
    IF EXISTS (SELECT 1 FROM @extschema@.trades_staging)
       OR (to_regclass('@extschema@.price_bars') IS NOT NULL AND price_bars_is_ready()
           AND EXISTS (SELECT 1 FROM @extschema@.price_bars WHERE data_source = 'trades' AND NOT is_legacy)) THEN
        RAISE EXCEPTION 'set_bar_clock: trades bars built on the % clock exist', tradebars_internal.bar_clock()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SELECT rollback_trades(include_staging => true); then set the clock and load the trades again';
    END IF;
    INSERT INTO @extschema@.bar_settings AS s (id, clock) VALUES (1, set_bar_clock.clock)
        ON CONFLICT (id) DO UPDATE SET clock = EXCLUDED.clock;
    RETURN clock;
END
$fn$;
COMMENT ON FUNCTION set_bar_clock(text) IS
    'tradebars: choose the bar clock; only while no trades bar exists';

CREATE OR REPLACE FUNCTION set_identity_retention(keep interval) RETURNS interval
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
    SELECT tradebars_internal.require_argument('set_identity_retention', 'keep', keep::text,
        keep BETWEEN interval '1 hour' AND interval '100 years', 'from 1 hour to 100 years');
    INSERT INTO @extschema@.bar_settings AS s (id, identity_retention) VALUES (1, keep)
        ON CONFLICT (id) DO UPDATE SET identity_retention = EXCLUDED.identity_retention
        RETURNING s.identity_retention;
$fn$;
COMMENT ON FUNCTION set_identity_retention(interval) IS
    'tradebars: how long trade identity is kept before the newest trade (default 7 days); prune_trade_identity() applies it';

-- Forgets trade identity older than the retention, counted back from the newest trade
-- staged (data time, not the wall clock: a backfill of last year keeps its identity while it
-- is the newest), and moves the horizon: a later load before it is refused where trades bars
-- exist. The newest trade is the newest plausible one, no later than a day past now (the
-- rollup's own bound): one trade stamped in 2100 must not make every other trade old.
CREATE OR REPLACE FUNCTION prune_trade_identity() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    keep interval := coalesce((SELECT identity_retention FROM @extschema@.bar_settings), interval '7 days');
    newest bigint;
    cut_minute bigint;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(29794, 4);  -- no load reads or extends identity meanwhile
    newest := (SELECT max(minute) FROM @extschema@.trade_coverage
               WHERE minute < floor(extract(epoch FROM now()) / 60)::bigint + 24 * 60);
    IF newest IS NULL THEN
        RETURN 0;
    END IF;
    cut_minute := newest - floor(extract(epoch FROM keep) / 60)::bigint;
    DELETE FROM @extschema@.trade_coverage WHERE minute < cut_minute;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO @extschema@.bar_settings AS s (id, identity_horizon) VALUES (1, cut_minute * 60000000000)
        ON CONFLICT (id) DO UPDATE SET identity_horizon = greatest(s.identity_horizon, EXCLUDED.identity_horizon);
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION prune_trade_identity() IS
    'tradebars: drop trade identity older than the retention; returns the rows dropped';

CREATE OR REPLACE FUNCTION identity_horizon() RETURNS timestamptz
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
    AS $fn$ SELECT to_timestamp(coalesce((SELECT identity_horizon FROM @extschema@.bar_settings), 0) / 1e9) $fn$;
COMMENT ON FUNCTION identity_horizon() IS
    'tradebars: before this time trade identity is no longer known';

-- Why a load whose trades start at first_recv (ns) must not go ahead, or NULL: trade
-- identity before the horizon is gone, so trades there that are already counted in a
-- trades bar could not be told apart from new ones.
CREATE OR REPLACE FUNCTION tradebars_internal.identity_refusal(first_recv bigint) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    horizon bigint := coalesce((SELECT identity_horizon FROM @extschema@.bar_settings), 0);
    since timestamptz;
BEGIN
    IF first_recv IS NULL OR first_recv >= horizon THEN
        RETURN NULL;
    END IF;
    since := to_timestamp(first_recv / 1e9);
    IF price_bars_is_ready() AND EXISTS (
            SELECT 1 FROM @extschema@.price_bars
            WHERE data_source = 'trades' AND NOT is_legacy
              AND "timestamp" >= since - interval '1 minute'
              AND "timestamp" < to_timestamp(horizon / 1e9) + interval '1 minute') THEN
        RETURN format('trades bars exist between %s and %s, where trade identity is no longer kept '
                      '(identity_horizon() is %s): trades loaded there could be counted twice',
                      since, to_timestamp(horizon / 1e9), to_timestamp(horizon / 1e9));
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION tradebars_internal.identity_refusal(bigint) IS
    'tradebars: why a load starting at this ts_recv (ns) is refused, or NULL (used by the feeder)';

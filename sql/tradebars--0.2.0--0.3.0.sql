-- tradebars 0.2.0 -> 0.3.0: trade identity and Databento's bar clock.
--
-- * Staged trades carry `ord`, their place among the trades of their publisher and instrument
--   that share a ts_recv, as delivered: with ts_recv it identifies a trade across sources.
-- * bar_settings, trade_coverage and live_positions (sql/identity.sql) and their functions.
-- * bars_rollup() places trades by the database's clock. A database upgraded with trades
--   bars keeps the clock they were built with, ts_event; one without trades bars takes
--   Databento's, ts_recv. Trade identity did not exist before: the horizon is set past every
--   trade already loaded, so a load into that period is refused unless forced.
-- * Live positions move from the ingest ledger (keyed by the spelling of --symbols) to one
--   per dataset and symbol.
-- * rollback_trades() forgets the ledger and identity with the bars; bars() and
--   migration_status() say which clock the database uses.
-- Must define exactly what a fresh 0.3.0 install defines; the end-to-end test
-- `upgrading_from_0_2_0_gives_what_a_fresh_install_gives` compares them.

ALTER TABLE trades_staging_0 ADD COLUMN ord integer NOT NULL DEFAULT 0;
ALTER TABLE trades_staging_1 ADD COLUMN ord integer NOT NULL DEFAULT 0;
ALTER TABLE trades_rejected ADD COLUMN ord integer NOT NULL DEFAULT 0;
CREATE OR REPLACE VIEW trades_staging AS
    SELECT * FROM trades_staging_0
    UNION ALL
    SELECT * FROM trades_staging_1;

-- ---- sql/identity.sql, as released in 0.3.0 ----
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
    identity_retention interval NOT NULL DEFAULT '7 days' CHECK (identity_retention >= '1 hour'),
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
    PRIMARY KEY (publisher_id, instrument_id, first_recv)
);
CREATE INDEX trade_coverage_minute ON trade_coverage (minute);
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

SELECT pg_extension_config_dump('bar_settings', '');
SELECT pg_extension_config_dump('trade_coverage', '');
SELECT pg_extension_config_dump('live_positions', '');

CREATE FUNCTION bar_clock() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
    RETURN coalesce((SELECT clock FROM bar_settings), 'ts_recv');
COMMENT ON FUNCTION bar_clock() IS
    'tradebars: the clock that places trades in minutes: ts_recv (Databento''s OHLCV) or ts_event';

CREATE FUNCTION set_bar_clock(clock text) RETURNS text
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    IF clock IS NULL OR clock NOT IN ('ts_recv', 'ts_event') THEN
        RAISE EXCEPTION 'set_bar_clock: clock must be ''ts_recv'' or ''ts_event'', not %',
            coalesce(quote_literal(clock), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(29794, 2);  -- no rollup in between (the rollup's lock)
    IF clock = bar_clock() THEN
        RETURN clock;
    END IF;
    IF EXISTS (SELECT 1 FROM trades_staging)
       OR (to_regclass('price_bars') IS NOT NULL AND price_bars_is_ready()
           AND EXISTS (SELECT 1 FROM price_bars WHERE data_source = 'trades' AND NOT is_legacy)) THEN
        RAISE EXCEPTION 'set_bar_clock: trades bars built on the % clock exist', bar_clock()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SELECT rollback_trades(include_staging => true); then set the clock and load the trades again';
    END IF;
    INSERT INTO bar_settings AS s (id, clock) VALUES (1, set_bar_clock.clock)
        ON CONFLICT (id) DO UPDATE SET clock = EXCLUDED.clock;
    RETURN clock;
END
$fn$;
COMMENT ON FUNCTION set_bar_clock(text) IS
    'tradebars: choose the bar clock; only while no trades bar exists';

CREATE FUNCTION set_identity_retention(keep interval) RETURNS interval
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    IF keep IS NULL OR keep < interval '1 hour' THEN
        RAISE EXCEPTION 'set_identity_retention: keep must be at least 1 hour, not %',
            coalesce(keep::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO bar_settings AS s (id, identity_retention) VALUES (1, keep)
        ON CONFLICT (id) DO UPDATE SET identity_retention = EXCLUDED.identity_retention;
    RETURN keep;
END
$fn$;
COMMENT ON FUNCTION set_identity_retention(interval) IS
    'tradebars: how long trade identity is kept before the newest trade (default 7 days); prune_trade_identity() applies it';

-- Forgets trade identity older than the retention, counted back from the newest trade
-- staged (data time, not the wall clock: a backfill of last year keeps its identity while it
-- is the newest), and moves the horizon: a later load before it is refused where trades bars
-- exist.
CREATE FUNCTION prune_trade_identity() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    keep interval := coalesce((SELECT identity_retention FROM bar_settings), interval '7 days');
    newest bigint := (SELECT max(minute) FROM trade_coverage);
    cut_minute bigint := newest - floor(extract(epoch FROM keep) / 60)::bigint;
    n bigint;
BEGIN
    IF newest IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM trade_coverage WHERE minute < cut_minute;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO bar_settings AS s (id, identity_horizon) VALUES (1, cut_minute * 60000000000)
        ON CONFLICT (id) DO UPDATE SET identity_horizon = greatest(s.identity_horizon, EXCLUDED.identity_horizon);
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION prune_trade_identity() IS
    'tradebars: drop trade identity older than the retention; returns the rows dropped';

CREATE FUNCTION identity_horizon() RETURNS timestamptz
    LANGUAGE sql STABLE
    SET search_path = @extschema@, pg_temp
    RETURN to_timestamp(coalesce((SELECT identity_horizon FROM bar_settings), 0) / 1e9);
COMMENT ON FUNCTION identity_horizon() IS
    'tradebars: before this time trade identity is no longer known';

-- Why a load whose trades start at first_recv (ns) must not go ahead, or NULL: trade
-- identity before the horizon is gone, so trades there that are already counted in a
-- trades bar could not be told apart from new ones.
CREATE FUNCTION identity_refusal(first_recv bigint) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    horizon bigint := coalesce((SELECT identity_horizon FROM bar_settings), 0);
    since timestamptz;
BEGIN
    IF first_recv IS NULL OR first_recv >= horizon THEN
        RETURN NULL;
    END IF;
    since := to_timestamp(first_recv / 1e9);
    IF price_bars_is_ready() AND EXISTS (
            SELECT 1 FROM price_bars
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
COMMENT ON FUNCTION identity_refusal(bigint) IS
    'tradebars: why a load starting at this ts_recv (ns) is refused, or NULL (used by the feeder)';
-- ---- end of sql/identity.sql ----

-- The clock of the bars already built, and where identity begins.
DO $do$
DECLARE
    built boolean := price_bars_is_ready() AND EXISTS (
        SELECT 1 FROM price_bars WHERE data_source = 'trades' AND NOT is_legacy);
    horizon bigint;
BEGIN
    SELECT greatest(
               (SELECT max(greatest(last_ts_recv, last_ts_event)) + 1 FROM ingest_ledger),
               (SELECT max(ts_recv) + 1 FROM trades_staging),
               CASE WHEN built THEN (SELECT (extract(epoch FROM max("timestamp"))::bigint + 120) * 1000000000
                                     FROM price_bars WHERE data_source = 'trades' AND NOT is_legacy) END)
        INTO horizon;
    IF built OR EXISTS (SELECT 1 FROM trades_staging) THEN
        INSERT INTO bar_settings (id, clock, identity_horizon) VALUES (1, 'ts_event', coalesce(horizon, 0));
    ELSIF horizon IS NOT NULL THEN
        INSERT INTO bar_settings (id, identity_horizon) VALUES (1, horizon);
    END IF;
END
$do$;

-- 0.2.0 kept one live position per spelling of --symbols: one per symbol now.
INSERT INTO live_positions (dataset, symbol, last_ts_recv)
SELECT split_part(source, ':', 2),
       CASE WHEN s = 'ALL_SYMBOLS' THEN '*' ELSE s END,
       max(last_ts_recv)
FROM ingest_ledger,
     unnest(string_to_array(substring(source FROM '^live:[^:]*:[^:]*:(.*)$'), ',')) AS s
WHERE kind = 'live' AND last_ts_recv IS NOT NULL
GROUP BY 1, 2;

CREATE OR REPLACE FUNCTION rollback_trades(include_staging boolean DEFAULT false) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    n bigint;
BEGIN
    PERFORM require_price_bars_ready('rollback_trades');
    PERFORM pg_advisory_xact_lock(29794, 2);  -- no rollup in between (the rollup's lock)
    -- Staged trades would become trades bars again after the rollback, and their identity
    -- goes with the ledger: roll them up first, or remove them with the bars.
    IF NOT coalesce(include_staging, false) AND EXISTS (SELECT 1 FROM trades_staging) THEN
        RAISE EXCEPTION 'rollback_trades: % trades are staged and not yet rolled up',
            (SELECT count(*) FROM trades_staging)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SELECT bars_rollup(); first, or SELECT rollback_trades(include_staging => true);';
    END IF;
    DELETE FROM price_bars WHERE data_source = 'trades' AND NOT is_legacy;
    GET DIAGNOSTICS n = ROW_COUNT;
    -- What was loaded is forgotten with the bars, so the same files, chunks and live
    -- periods can be fed again and count once (0.3.0).
    DELETE FROM ingest_ledger;
    DELETE FROM live_positions;
    DELETE FROM trade_coverage;
    IF coalesce(include_staging, false) THEN
        TRUNCATE trades_staging_0, trades_staging_1, trades_rejected;
        RAISE NOTICE 'rollback_trades: removed % trades bars, staged trades, the ingest ledger and trade identity', n;
    ELSE
        RAISE NOTICE 'rollback_trades: removed % trades bars, the ingest ledger and trade identity; legacy bars untouched', n;
    END IF;
    RETURN n;
END
$fn$;

ALTER TYPE bar ADD ATTRIBUTE clock text;
CREATE OR REPLACE FUNCTION bars(
    symbol text,
    start timestamptz,
    "end" timestamptz,
    include_legacy boolean DEFAULT false,
    bucket interval DEFAULT '1 minute',
    include_deleted boolean DEFAULT false
) RETURNS SETOF bar
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    step interval := checked_bucket(bucket);
BEGIN
    IF bars.symbol IS NULL OR bars.start IS NULL OR bars."end" IS NULL THEN
        RAISE EXCEPTION 'bars: symbol, start and end must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF bars."end" < bars.start THEN
        RAISE EXCEPTION 'bars: end (%) is before start (%)', bars."end", bars.start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('bars');
    RETURN QUERY
    WITH minute_bars AS (
        SELECT DISTINCT ON (p."timestamp")
               p."timestamp", p.open, p.high, p.low, p.close, p.volume::bigint AS volume,
               p.trade_count::bigint AS trade_count, p.notional, p.data_source,
               (p.is_legacy OR p.data_source IS DISTINCT FROM 'trades') AS legacy
        FROM price_bars p
        WHERE p.symbol = bars.symbol
          AND p."timestamp" >= bars.start AND p."timestamp" < bars."end"
          AND (coalesce(bars.include_legacy, false)
               OR (NOT p.is_legacy AND p.data_source IS NOT DISTINCT FROM 'trades'))
          AND (coalesce(bars.include_deleted, false) OR p.deleted_at IS NULL)
        ORDER BY p."timestamp", (p.is_legacy OR p.data_source IS DISTINCT FROM 'trades'), p.data_source
    )
    SELECT bars.symbol,
           date_bin(step, m."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS t,
           (array_agg(m.open ORDER BY m."timestamp"))[1],
           max(m.high),
           min(m.low),
           (array_agg(m.close ORDER BY m."timestamp" DESC))[1],
           sum(m.volume)::bigint,
           sum(m.trade_count)::bigint,
           trim_scale(round(sum(m.notional) / nullif(sum(m.volume) FILTER (WHERE m.notional IS NOT NULL), 0), 9)),
           CASE WHEN count(DISTINCT m.data_source) <= 1 THEN min(m.data_source) ELSE 'mixed' END,
           bool_or(m.legacy),
           bar_clock()
    FROM minute_bars m
    GROUP BY t
    ORDER BY t;
END
$fn$;
COMMENT ON FUNCTION bars(text, timestamptz, timestamptz, boolean, interval, boolean) IS
    'tradebars: bars of one symbol in [start, end): trades bars win over legacy bars; bucket from 1 minute to 1 day';

DROP FUNCTION migration_status();
CREATE FUNCTION migration_status()
RETURNS TABLE (location text, data_source text, is_legacy boolean, soft_deleted boolean,
               bars bigint, total_volume numeric, first_bar timestamptz, last_bar timestamptz,
               bar_clock text)
    LANGUAGE plpgsql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    PERFORM require_price_bars_ready('migration_status');
    RETURN QUERY
        SELECT 'price_bars', p.data_source, p.is_legacy, p.deleted_at IS NOT NULL, count(*),
               sum(p.volume)::numeric, min(p."timestamp"), max(p."timestamp"),
               CASE WHEN p.data_source = 'trades' AND NOT p.is_legacy THEN bar_clock() END
        FROM price_bars p
        GROUP BY 2, 3, 4
        ORDER BY 3 DESC, 2, 4;
    IF to_regclass('price_bars_legacy') IS NOT NULL THEN
        RETURN QUERY EXECUTE
            'SELECT ''price_bars_legacy'', a.data_source, a.is_legacy, a.deleted_at IS NOT NULL, count(*),
                    sum(a.volume)::numeric, min(a."timestamp"), max(a."timestamp"), NULL::text
             FROM price_bars_legacy a GROUP BY 2, 3, 4 ORDER BY 2, 4';
    END IF;
END
$fn$;

-- Trade identity (0.3.0): the feeder reads and extends what is already counted.
GRANT SELECT, INSERT, DELETE ON trade_coverage TO tradebars_feeder;
GRANT SELECT, INSERT, UPDATE ON live_positions TO tradebars_feeder;
GRANT SELECT ON bar_settings TO tradebars_feeder, tradebars_reader;
REVOKE EXECUTE ON FUNCTION prune_trade_identity(), identity_refusal(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_trade_identity(), identity_refusal(bigint) TO tradebars_feeder;
REVOKE EXECUTE ON FUNCTION set_bar_clock(text), set_identity_retention(interval) FROM PUBLIC;

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
-- * rollback_trades() forgets the ledger and identity with the bars, and removes only bars
--   tradebars wrote; bars() and migration_status() say which clock the database uses.
-- * The migration toolkit on a database the plan already touched: mark_legacy() sets the old
--   scanner's bars apart as source 'scanner' (bars() prefers trades, then scanner, then
--   legacy; migration_coverage() counts them); a trigger refuses to relabel trades bars;
--   irreversible deletes accept only a real copy, compared whole.
-- * bars_rollup() aggregates staging once, into rollup_bars; each bar records the rollup that
--   changed it (price_bars.changed_in), each rollup that changes bars sends NOTIFY
--   tradebars_bars, and bars_changed_since() returns what changed since a rollup.
--   Its bars are merged (ON CONFLICT) only into minutes up to the newest bar of their
--   symbol; those past it are plain inserts (the library's SQL, no object of its own). The
--   hour bars it refreshes read the touched hours in order (sql/hours.sql, included below).
-- * Databento's official OHLCV-1m bars load into price_bars as source 'ohlcv-1m'
--   (sql/official.sql); bars() ranks them after trades bars and before legacy.
-- * hour_bars (sql/hours.sql): the hours of the bars, summed, kept by the rollup and the
--   official merge, read by bars() for buckets of an hour or more; built here for the bars
--   the database already has. An hour of trades bars only keeps the order keys of its open
--   and close, so a rollup merges its bars into it without reading its minutes again.
-- * A NULL where a function needs a value is refused with SQLSTATE 22004.
-- * The internal helpers (fixed_to_numeric(), price_bars_is_ready(), the ohlcv aggregate's
--   support functions, ...) move to the schema tradebars_internal: the extension's schema
--   keeps only the documented API.
-- * Every function runs with search_path = pg_catalog, tradebars_internal, pg_temp and names
--   the extension's objects; SQL bodies are text; this script calls none of 0.2.0's
--   functions and reads price_bars only once it is ready, so it runs nothing another role
--   put in the extension's schema and updates a database whose price_bars is still the old
--   application's (test/regress/sql/planted.sql, tests/tests/lifecycle.rs).
--
-- This is the template of the upgrade script (see UPGRADING.md): `--@include FILE` lines are
-- replaced by that sql/ file (from its first line starting with the quoted text, where one is
-- given) when scripts/upgrade-scripts.sh writes tradebars--0.2.0--0.3.0.sql. Every function
-- in those files is CREATE OR REPLACE, so a file is re-run whole over what 0.2.0 defined.
-- It must define exactly what a fresh 0.3.0 install defines; the end-to-end test
-- `upgrading_from_0_2_0_gives_what_a_fresh_install_gives` compares them.

ALTER TABLE trades_staging_0 ADD COLUMN ord integer NOT NULL DEFAULT 0;
ALTER TABLE trades_staging_1 ADD COLUMN ord integer NOT NULL DEFAULT 0;
ALTER TABLE trades_rejected ADD COLUMN ord integer NOT NULL DEFAULT 0;
-- The view's columns are fixed when it is made: it learns `ord` again.
CREATE OR REPLACE VIEW trades_staging AS
    SELECT * FROM trades_staging_0 UNION ALL SELECT * FROM trades_staging_1;

-- Live push (0.3.0): each bar says which rollup changed it last (bars_changed_since()).
-- A price_bars tradebars prepared (it has the order keys) gets the column now; one still the
-- old application's gets it from mark_legacy(). (Asked here, not of 0.2.0's
-- price_bars_is_ready(): that one's search_path holds the extension's schema, where another
-- role may have put an operator it would run as the DBA running this update.)
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
               WHERE attrelid = pg_catalog.to_regclass('@extschema@.price_bars')::oid
                 AND attname = 'open_ts_ns' AND NOT attisdropped) THEN
        ALTER TABLE @extschema@.price_bars ADD COLUMN IF NOT EXISTS changed_in bigint;
        CREATE INDEX IF NOT EXISTS price_bars_changed_in ON @extschema@.price_bars (changed_in)
            WHERE changed_in IS NOT NULL;
    END IF;
END
$do$;

-- The internal helpers leave the user's schema (sql/schema.sql): those 0.2.0 had move, with
-- what depends on them (the ohlcv aggregate, bars()'s bucket check); the files below
-- replace them in place and create the new ones there.
CREATE SCHEMA tradebars_internal;
COMMENT ON SCHEMA tradebars_internal IS 'tradebars: internal helpers of the extension (not an API)';
ALTER FUNCTION fixed_to_numeric(numeric) SET SCHEMA tradebars_internal;
ALTER FUNCTION price_bars_is_ready() SET SCHEMA tradebars_internal;
ALTER FUNCTION require_price_bars_ready(text) SET SCHEMA tradebars_internal;
ALTER FUNCTION checked_age(text, interval) SET SCHEMA tradebars_internal;
ALTER FUNCTION checked_bucket(interval) SET SCHEMA tradebars_internal;
ALTER FUNCTION price_bars_columns(regclass) SET SCHEMA tradebars_internal;
ALTER FUNCTION legacy_bars_unprotected(timestamptz, regclass) SET SCHEMA tradebars_internal;
ALTER FUNCTION delete_legacy_bars(text, timestamptz, regclass, boolean) SET SCHEMA tradebars_internal;
ALTER FUNCTION ohlcv_trans(internal, bigint, bigint, integer, bigint, bigint) SET SCHEMA tradebars_internal;
ALTER FUNCTION ohlcv_final(internal) SET SCHEMA tradebars_internal;
ALTER FUNCTION ohlcv_combine(internal, internal) SET SCHEMA tradebars_internal;
ALTER FUNCTION ohlcv_serialize(internal) SET SCHEMA tradebars_internal;
ALTER FUNCTION ohlcv_deserialize(bytea, internal) SET SCHEMA tradebars_internal;
-- The rollup (a function in Rust) finds them there; it names the objects of the extension's schema,
-- which is not on its path (a role that may create there cannot reach code run as the owner).
ALTER FUNCTION bars_rollup() SET search_path = pg_catalog, tradebars_internal, pg_temp;
--@include rollup_aggregate.sql

--@include checks.sql
--@include staging.sql
--@include migration_legacy.sql
--@include identity.sql

-- The clock of the bars already built, and where identity begins.
-- (price_bars is read only once it is ready: the old application's table has no
-- data_source until mark_legacy(), and a statement naming it would not even be planned.)
DO $do$
DECLARE
    built boolean := false;
    horizon bigint;
BEGIN
    IF tradebars_internal.price_bars_is_ready() THEN
        built := EXISTS (SELECT 1 FROM @extschema@.price_bars WHERE data_source = 'trades' AND NOT is_legacy);
    END IF;
    SELECT greatest(
               (SELECT max(greatest(last_ts_recv, last_ts_event)) + 1 FROM @extschema@.ingest_ledger),
               (SELECT max(ts_recv) + 1 FROM @extschema@.trades_staging))
        INTO horizon;
    IF built THEN
        horizon := greatest(horizon,
            (SELECT (extract(epoch FROM max("timestamp"))::bigint + 120) * 1000000000
             FROM @extschema@.price_bars WHERE data_source = 'trades' AND NOT is_legacy));
    END IF;
    IF built OR EXISTS (SELECT 1 FROM @extschema@.trades_staging) THEN
        INSERT INTO @extschema@.bar_settings (id, clock, identity_horizon) VALUES (1, 'ts_event', coalesce(horizon, 0));
    ELSIF horizon IS NOT NULL THEN
        INSERT INTO @extschema@.bar_settings (id, identity_horizon) VALUES (1, horizon);
    END IF;
END
$do$;

-- 0.2.0 kept one live position per spelling of --symbols: one per symbol now.
INSERT INTO live_positions (dataset, symbol, last_ts_recv)
SELECT split_part(source, ':', 2),
       CASE WHEN s = 'ALL_SYMBOLS' THEN '*' ELSE s END,
       max(last_ts_recv)
FROM ingest_ledger,
     pg_catalog.unnest(string_to_array(substring(source FROM '^live:[^:]*:[^:]*:(.*)$'), ',')) AS s
WHERE kind = 'live' AND last_ts_recv IS NOT NULL
GROUP BY 1, 2;

--@include migration_archive.sql

-- Time zones, sessions and gap fill (sql/bars.sql): bars() takes tz, origin, session and fill.
ALTER TYPE bar ADD ATTRIBUTE clock text;
ALTER TYPE bar ADD ATTRIBUTE filled boolean;
DROP FUNCTION bars(text, timestamptz, timestamptz, boolean, interval, boolean);
--@include bars.sql from "-- The instant a local wall time"

-- Their result columns changed (the clock, the scanner's bars).
DROP FUNCTION migration_status();
DROP FUNCTION migration_coverage(interval);
--@include migration_verify.sql

--@include rollup.sql
--@include changes.sql
--@include official.sql
--@include hours.sql
--@include roles.sql

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
-- * Databento's official OHLCV-1m bars load into price_bars as source 'ohlcv-1m'
--   (sql/official.sql); bars() ranks them after trades bars and before legacy.
-- * hour_bars (sql/hours.sql): the hours of the bars, summed, kept by the rollup and the
--   official merge, read by bars() for buckets of an hour or more; built here for the bars
--   the database already has.
-- Must define exactly what a fresh 0.3.0 install defines; the end-to-end test
-- `upgrading_from_0_2_0_gives_what_a_fresh_install_gives` compares them.

ALTER TABLE trades_staging_0 ADD COLUMN ord integer NOT NULL DEFAULT 0;
ALTER TABLE trades_staging_1 ADD COLUMN ord integer NOT NULL DEFAULT 0;
ALTER TABLE trades_rejected ADD COLUMN ord integer NOT NULL DEFAULT 0;
CREATE OR REPLACE VIEW trades_staging AS
    SELECT * FROM trades_staging_0
    UNION ALL
    SELECT * FROM trades_staging_1;

-- Live push (0.3.0): each bar says which rollup changed it last (bars_changed_since()).
-- A price_bars still the old application's gets the column from mark_legacy().
DO $do$
BEGIN
    IF to_regclass('price_bars') IS NOT NULL AND price_bars_is_ready() THEN
        ALTER TABLE price_bars ADD COLUMN IF NOT EXISTS changed_in bigint;
        CREATE INDEX IF NOT EXISTS price_bars_changed_in ON price_bars (changed_in)
            WHERE changed_in IS NOT NULL;
    END IF;
END
$do$;
CREATE OR REPLACE FUNCTION price_bars_is_ready() RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
    SELECT to_regclass('price_bars') IS NOT NULL
       AND (SELECT count(*) FROM pg_attribute
            WHERE attrelid = to_regclass('price_bars') AND attnum > 0 AND NOT attisdropped
              AND attname IN ('is_legacy', 'data_source', 'migrated_at', 'deleted_at', 'vwap',
                              'notional', 'open_ts_ns', 'open_seq', 'close_ts_ns', 'close_seq',
                              'changed_in', 'trade_count')) = 12
       AND EXISTS (
            SELECT 1 FROM pg_index i
            WHERE i.indrelid = to_regclass('price_bars') AND i.indisunique AND i.indpred IS NULL
              AND i.indnatts = 3
              AND ARRAY(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        ORDER BY k.ord) = ARRAY['symbol', 'timestamp', 'data_source'])
$fn$;

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
    IF keep IS NULL OR keep < interval '1 hour' OR keep > interval '100 years' THEN
        RAISE EXCEPTION 'set_identity_retention: keep must be from 1 hour to 100 years, not %',
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
-- exist. The newest trade is the newest plausible one, no later than a day past now (the
-- rollup's own bound): one trade stamped in 2100 must not make every other trade old.
CREATE FUNCTION prune_trade_identity() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    keep interval := coalesce((SELECT identity_retention FROM bar_settings), interval '7 days');
    newest bigint;
    cut_minute bigint;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(29794, 4);  -- no load reads or extends identity meanwhile
    newest := (SELECT max(minute) FROM trade_coverage
               WHERE minute < floor(extract(epoch FROM now()) / 60)::bigint + 24 * 60);
    IF newest IS NULL THEN
        RETURN 0;
    END IF;
    cut_minute := newest - floor(extract(epoch FROM keep) / 60)::bigint;
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
    PERFORM pg_advisory_xact_lock(29794, 4);  -- no load reads or extends identity meanwhile
    PERFORM pg_advisory_xact_lock(29794, 2);  -- no rollup in between (the rollup's lock)
    -- A running feeder holds trades (and live, what it knows is counted) that this would
    -- make it forget under its feet: stop it first. Checked once the locks are held, so a
    -- feeder that starts now waits for this rollback before its first load.
    IF EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND classid = 29794 AND objid = 3
                 AND objsubid = 2 AND pid <> pg_backend_pid()
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) THEN
        RAISE EXCEPTION 'rollback_trades: a feeder is running on this database (it holds the feeder lock)'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'stop tradebars-feeder (live, replay or backfill), then roll back, then start it again';
    END IF;
    -- Staged trades would become trades bars again after the rollback, and their identity
    -- goes with the ledger: roll them up first, or remove them with the bars.
    IF NOT coalesce(include_staging, false) AND EXISTS (SELECT 1 FROM trades_staging) THEN
        RAISE EXCEPTION 'rollback_trades: % trades are staged and not yet rolled up',
            (SELECT count(*) FROM trades_staging)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SELECT bars_rollup(); first, or SELECT rollback_trades(include_staging => true);';
    END IF;
    -- Only bars tradebars wrote: those carry the order of their open and close trades.
    DELETE FROM price_bars WHERE data_source = 'trades' AND NOT is_legacy AND open_ts_ns IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM hour_bars_rebuild('-infinity', 'infinity');  -- official bars may remain
    -- What was loaded is forgotten with the bars, so the same files, chunks and live
    -- periods can be fed again and count once (0.3.0).
    DELETE FROM ingest_ledger;
    DELETE FROM live_positions;
    DELETE FROM trade_coverage;
    -- No trades bar is left whose identity could be unknown: nothing before a horizon to refuse.
    UPDATE bar_settings SET identity_horizon = 0;
    IF coalesce(include_staging, false) THEN
        TRUNCATE trades_staging_0, trades_staging_1, trades_rejected;
        RAISE NOTICE 'rollback_trades: removed % trades bars, staged trades, the ingest ledger and trade identity', n;
    ELSE
        RAISE NOTICE 'rollback_trades: removed % trades bars, the ingest ledger and trade identity; legacy bars untouched', n;
    END IF;
    RETURN n;
END
$fn$;

CREATE FUNCTION check_backup_table(caller text, backup regclass) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    rel record;
    missing text;
BEGIN
    -- The table and every table its rows may live in: its inheritance children and
    -- partitions, at any depth (a permanent parent can hold its rows in a TEMP child).
    FOR rel IN
        WITH RECURSIVE tree(oid) AS (
            SELECT backup::oid
            UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
        SELECT c.oid::regclass AS name, c.relkind AS kind, c.relpersistence AS persistence,
               c.oid = backup::oid AS is_backup
        FROM tree t JOIN pg_class c ON c.oid = t.oid
        ORDER BY c.oid <> backup::oid, c.oid
    LOOP
        -- price_bars, its partitions and inheritance children: DELETE FROM price_bars
        -- deletes their rows too
        IF rel.name IN (WITH RECURSIVE bars(oid) AS (
                            SELECT 'price_bars'::regclass::oid
                            UNION
                            SELECT i.inhrelid FROM pg_inherits i JOIN bars b ON i.inhparent = b.oid)
                        SELECT oid::regclass FROM bars) THEN
            RAISE EXCEPTION '%: backup_table % % price_bars itself (or a partition or child of it), not a copy', caller, backup,
                CASE WHEN rel.is_backup THEN 'is' ELSE format('holds rows in %s, which is', rel.name) END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF rel.kind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION '%: backup_table % % a %, not a table holding a copy', caller, backup,
                CASE WHEN rel.is_backup THEN 'is' ELSE format('holds rows in %s, which is', rel.name) END,
                CASE rel.kind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                              ELSE 'relation of kind ' || rel.kind::text END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF rel.persistence <> 'p' THEN
            RAISE EXCEPTION '%: backup_table % % %: it would not survive a crash or the session', caller, backup,
                CASE WHEN rel.is_backup THEN 'is' ELSE format('holds rows in %s, which is', rel.name) END,
                CASE rel.persistence WHEN 't' THEN 'temporary' ELSE 'unlogged' END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    SELECT string_agg(quote_ident(p.attname), ', ' ORDER BY p.attnum) INTO missing
    FROM pg_attribute p
    WHERE p.attrelid = 'price_bars'::regclass AND p.attnum > 0 AND NOT p.attisdropped
      AND NOT EXISTS (SELECT 1 FROM pg_attribute b WHERE b.attrelid = backup AND b.attname = p.attname
                      AND b.attnum > 0 AND NOT b.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION '%: backup_table % lacks columns of price_bars: %', caller, backup, missing
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a copy holds whole bars: CREATE TABLE price_bars_backup AS SELECT * FROM price_bars';
    END IF;
END
$fn$;

-- Whether `rel` passes check_backup_table: a permanent table of its own, with every column.
CREATE FUNCTION is_real_copy(rel regclass) RETURNS boolean
    LANGUAGE plpgsql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    PERFORM check_backup_table('is_real_copy', rel);
    RETURN true;
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END
$fn$;

-- archive_legacy() and restore_legacy() (0.3.0): the archive must be a permanent table of its
-- own, and their failures carry SQLSTATE 55000.
CREATE OR REPLACE FUNCTION archive_legacy() RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    cols text;
    to_move bigint;
    copied bigint;
    differing bigint;
    deleted bigint;
BEGIN
    PERFORM require_price_bars_ready('archive_legacy');
    LOCK TABLE price_bars IN SHARE ROW EXCLUSIVE MODE;
    IF to_regclass('price_bars_legacy') IS NULL THEN
        CREATE TABLE price_bars_legacy (LIKE price_bars);
        CREATE UNIQUE INDEX price_bars_legacy_symbol_timestamp_source
            ON price_bars_legacy (symbol, "timestamp", data_source);
        COMMENT ON TABLE price_bars_legacy IS 'tradebars: legacy bars moved out of price_bars by archive_legacy()';
    END IF;
    -- bars moved into a view, a temporary or an unlogged table would not be kept for good
    PERFORM check_backup_table('archive_legacy', 'price_bars_legacy'::regclass);
    cols := price_bars_columns();
    IF EXISTS (SELECT unnest(string_to_array(cols, ', '))
               EXCEPT SELECT unnest(string_to_array(price_bars_columns('price_bars_legacy'), ', '))) THEN
        RAISE EXCEPTION 'archive_legacy: price_bars_legacy lacks columns price_bars has; nothing moved'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT count(*) INTO to_move FROM price_bars WHERE is_legacy;
    EXECUTE format('INSERT INTO price_bars_legacy (%1$s) SELECT %1$s FROM price_bars WHERE is_legacy', cols);
    GET DIAGNOSTICS copied = ROW_COUNT;
    EXECUTE format('SELECT count(*) FROM (SELECT %1$s FROM price_bars WHERE is_legacy
                                          EXCEPT ALL SELECT %1$s FROM price_bars_legacy) d', cols)
        INTO differing;
    IF copied <> to_move OR differing <> 0 THEN
        RAISE EXCEPTION 'archive_legacy: copied % of % legacy bars (% differ); nothing moved', copied, to_move, differing
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    DELETE FROM price_bars WHERE is_legacy;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    IF deleted <> to_move THEN
        RAISE EXCEPTION 'archive_legacy: would delete % bars but verified %; nothing moved', deleted, to_move
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RAISE NOTICE 'archive_legacy: moved % legacy bars to price_bars_legacy (verified identical)', to_move;
    RETURN to_move;
END
$fn$;

CREATE OR REPLACE FUNCTION restore_legacy(undelete boolean DEFAULT true) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    cols text;
    archived bigint := 0;
    restored bigint := 0;
    missing bigint;
    undeleted bigint := 0;
BEGIN
    PERFORM require_price_bars_ready('restore_legacy');
    LOCK TABLE price_bars IN SHARE ROW EXCLUSIVE MODE;
    IF to_regclass('price_bars_legacy') IS NOT NULL THEN
        LOCK TABLE price_bars_legacy IN SHARE ROW EXCLUSIVE MODE;
        cols := price_bars_columns('price_bars_legacy');
        SELECT count(*) INTO archived FROM price_bars_legacy;
        EXECUTE format('INSERT INTO price_bars (%1$s) OVERRIDING SYSTEM VALUE SELECT %1$s FROM price_bars_legacy', cols);
        GET DIAGNOSTICS restored = ROW_COUNT;
        EXECUTE format('SELECT count(*) FROM (SELECT %1$s FROM price_bars_legacy
                                              EXCEPT ALL SELECT %1$s FROM price_bars WHERE is_legacy) d', cols)
            INTO missing;
        IF restored <> archived OR missing <> 0 THEN
            RAISE EXCEPTION 'restore_legacy: restored % of % archived bars (% differ); nothing changed', restored, archived, missing
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        DELETE FROM price_bars_legacy;
    END IF;
    IF coalesce(undelete, true) THEN
        UPDATE price_bars SET deleted_at = NULL WHERE is_legacy AND deleted_at IS NOT NULL;
        GET DIAGNOSTICS undeleted = ROW_COUNT;
    END IF;
    RAISE NOTICE 'restore_legacy: % bars back from the archive, % soft-deleted bars undeleted', restored, undeleted;
    RETURN restored + undeleted;
END
$fn$;

CREATE OR REPLACE FUNCTION legacy_bars_unprotected(deleted_before timestamptz, backup regclass) RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    cols text := price_bars_columns();
    typed text;
    copies text[] := '{}';
    copy regclass;
    n bigint;
BEGIN
    FOREACH copy IN ARRAY array_remove(ARRAY[to_regclass('price_bars_legacy'), backup], NULL) LOOP
        -- the archive may predate a column; then it holds no bar whole; and one that is no
        -- permanent table of its own (a view, temporary, unlogged) holds none for good
        IF is_real_copy(copy) AND NOT EXISTS (SELECT 1 FROM pg_attribute p
                       WHERE p.attrelid = 'price_bars'::regclass AND p.attnum > 0 AND NOT p.attisdropped
                         AND NOT EXISTS (SELECT 1 FROM pg_attribute b WHERE b.attrelid = copy
                                         AND b.attname = p.attname AND NOT b.attisdropped)) THEN
            SELECT string_agg(format('%I::%s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
              INTO typed
              FROM pg_attribute
             WHERE attrelid = 'price_bars'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
            copies := array_append(copies, format(' EXCEPT ALL SELECT %s FROM %s', typed, copy));
        END IF;
    END LOOP;
    EXECUTE format('SELECT count(*) FROM (SELECT %s FROM price_bars WHERE is_legacy AND ($1 IS NULL OR deleted_at < $1)%s) d',
                   cols, array_to_string(copies, ''))
        INTO n USING deleted_before;
    RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION delete_legacy_bars(caller text, deleted_before timestamptz, backup regclass,
                                   confirm boolean) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    unprotected bigint;
    n bigint;
BEGIN
    PERFORM require_price_bars_ready(caller);
    IF backup IS NOT NULL THEN
        PERFORM check_backup_table(caller, backup);
    END IF;
    LOCK TABLE price_bars IN SHARE ROW EXCLUSIVE MODE;
    unprotected := legacy_bars_unprotected(deleted_before, backup);
    IF unprotected > 0 AND NOT coalesce(confirm, false) THEN
        RAISE EXCEPTION '%: % legacy bars are held whole (every column equal) in no archive or backup table; nothing deleted', caller, unprotected
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run archive_legacy(), or copy them (CREATE TABLE price_bars_backup AS SELECT * FROM price_bars) and pass backup_table => ''price_bars_backup'', or confirm => true';
    END IF;
    DELETE FROM price_bars WHERE is_legacy AND (deleted_before IS NULL OR deleted_at < deleted_before);
    GET DIAGNOSTICS n = ROW_COUNT;
    RAISE NOTICE '%: deleted % legacy bars; VACUUM (FULL) price_bars returns the space', caller, n;
    RETURN n;
END
$fn$;

CREATE FUNCTION protect_trades_bars() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = @extschema@, pg_temp
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

CREATE FUNCTION guard_trades_bars() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'price_bars'::regclass
                   AND tgname = 'price_bars_protect_trades_bars') THEN
        CREATE TRIGGER price_bars_protect_trades_bars
            BEFORE UPDATE OF is_legacy, data_source ON price_bars
            FOR EACH ROW
            WHEN ((OLD.data_source = 'trades' AND NOT OLD.is_legacy AND OLD.open_ts_ns IS NOT NULL
                   AND (NEW.is_legacy OR NEW.data_source IS DISTINCT FROM 'trades'))
                  OR (OLD.data_source = 'ohlcv-1m' AND NOT OLD.is_legacy
                      AND (NEW.is_legacy OR NEW.data_source IS DISTINCT FROM 'ohlcv-1m')))
            EXECUTE FUNCTION protect_trades_bars();
    END IF;
END
$fn$;

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
    adopted boolean := false;  -- the table gets its columns now: its bars are new to hour_bars
BEGIN
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
          AND attname IN ('is_legacy', 'data_source', 'migrated_at', 'deleted_at', 'vwap',
                          'notional', 'open_ts_ns', 'open_seq', 'close_ts_ns', 'close_seq',
                          'changed_in', 'trade_count')) < 12 THEN
    adopted := true;
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
        ADD COLUMN IF NOT EXISTS close_seq   bigint,
        ADD COLUMN IF NOT EXISTS changed_in  bigint,
        ADD COLUMN IF NOT EXISTS trade_count bigint NOT NULL DEFAULT 0;
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
    IF to_regclass('price_bars_changed_in') IS NULL THEN
        -- Partial: bars no rollup changed (legacy ones) are never asked for by it.
        CREATE INDEX price_bars_changed_in ON price_bars (changed_in) WHERE changed_in IS NOT NULL;
    END IF;
    PERFORM guard_trades_bars();
    IF adopted THEN
        -- bars it already held that bars() counts (a scanner's 'trades' bars) get their hours
        PERFORM hour_bars_rebuild('-infinity', 'infinity');
    END IF;
    COMMENT ON COLUMN price_bars.is_legacy IS 'true = bar from the old quote feed (volume 0), kept until the DBA cleans up';
    COMMENT ON COLUMN price_bars.data_source IS 'trades = built by tradebars from executions; anything else = legacy source (e.g. mbp-1)';
END
$fn$;

CREATE OR REPLACE FUNCTION mark_legacy(source text DEFAULT 'mbp-1') RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    marked bigint;
    scanned bigint;
BEGIN
    IF source IS NULL OR source !~ '^[a-z0-9][a-z0-9._-]{0,19}$' THEN
        RAISE EXCEPTION 'mark_legacy: source must be a short lowercase name such as ''mbp-1'' (got %)',
            coalesce(quote_literal(source), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF source IN ('trades', 'scanner', 'ohlcv-1m') THEN
        RAISE EXCEPTION 'mark_legacy: ''%'' names bars of tradebars, of Databento or of the old scanner; give the legacy feed''s name, such as ''mbp-1''', source
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regclass('price_bars') IS NULL THEN
        RAISE EXCEPTION 'mark_legacy: there is no price_bars table in schema %', '@extschema@'
            USING ERRCODE = 'undefined_table';
    END IF;
    -- One step for everyone else: no bar is written or read half-migrated.
    LOCK TABLE price_bars IN ACCESS EXCLUSIVE MODE;
    PERFORM prepare_price_bars();
    -- Bars the old scanner wrote after it switched to TRADES (the plan's phase 2) say
    -- 'trades' but tradebars never built them (it records the order of each bar's open and
    -- close trades): set apart under their own source, so no rollup merges into them and no
    -- rollback removes them, whether or not the plan's SQL already made them legacy, and
    -- also when the scanner wrote them after an earlier mark_legacy(). Their values stay as
    -- they are.
    UPDATE price_bars
       SET is_legacy = true, data_source = 'scanner', migrated_at = coalesce(migrated_at, now())
     WHERE data_source = 'trades' AND open_ts_ns IS NULL;
    GET DIAGNOSTICS scanned = ROW_COUNT;
    IF scanned > 0 THEN
        PERFORM hour_bars_rebuild('-infinity', 'infinity');  -- no longer trades bars
        RAISE NOTICE 'mark_legacy: % bars the old scanner wrote from trades kept apart as source ''scanner''', scanned;
    END IF;
    UPDATE price_bars
       SET is_legacy = true,
           data_source = coalesce(data_source, mark_legacy.source),
           migrated_at = now()
     WHERE NOT is_legacy AND data_source IS DISTINCT FROM 'trades'
       AND data_source IS DISTINCT FROM 'ohlcv-1m';  -- Databento's bars, loaded by tradebars
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF marked = 0 THEN
        RAISE NOTICE 'mark_legacy: nothing to mark; % bars were already legacy',
            (SELECT count(*) FROM price_bars WHERE is_legacy);
    ELSE
        RAISE NOTICE 'mark_legacy: marked % bars legacy (source %)', marked, source;
    END IF;
    RETURN marked;
END
$fn$;

DO $do$
BEGIN
    IF price_bars_is_ready() THEN
        PERFORM guard_trades_bars();
    END IF;
END
$do$;

ALTER TYPE bar ADD ATTRIBUTE clock text;
-- Time zones, sessions and gap fill (sql/bars.sql): bars() takes tz, origin, session and fill.
ALTER TYPE bar ADD ATTRIBUTE filled boolean;
DROP FUNCTION bars(text, timestamptz, timestamptz, boolean, interval, boolean);

-- The instant a local wall time `w` first comes in `tz`: where the clock falls back and
-- repeats an hour, the first of the two; where it springs forward past `w`, the moment it
-- jumps. (`w AT TIME ZONE tz` alone takes the later reading in both cases, which would start a
-- day after trades that belong to it.)
CREATE FUNCTION local_instant(w timestamp, tz text) RETURNS timestamptz
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    guess timestamptz := w AT TIME ZONE tz;
BEGIN
    -- No change of the clock in the two hours before: the usual case.
    IF (guess AT TIME ZONE tz) = w
       AND ((guess - interval '2 hours') AT TIME ZONE tz) = w - interval '2 hours' THEN
        RETURN guess;
    END IF;
    RETURN (SELECT min(t)
            FROM generate_series(guess - interval '2 hours', guess + interval '2 hours', interval '1 minute') AS t
            WHERE (t AT TIME ZONE tz) >= w);
END
$fn$;

-- The starts of the local days (each from `origin`) in `tz` that cover [from_ts, to_ts),
-- ascending, with a day to spare at both ends.
CREATE FUNCTION local_day_starts(from_ts timestamptz, to_ts timestamptz, tz text, origin interval)
    RETURNS timestamptz[]
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
RETURN ARRAY(
    SELECT local_instant(d + origin, tz)
    FROM generate_series(date_trunc('day', (from_ts AT TIME ZONE tz) - origin) - interval '1 day',
                         date_trunc('day', (to_ts AT TIME ZONE tz) - origin) + interval '1 day',
                         interval '1 day') AS d
    ORDER BY 1);

-- The start of the bucket that holds `ts`: its day (the last of `day_starts` at or before it),
-- then whole steps of elapsed time from that day's start. Only built-in functions, so it is
-- inlined into bars()'s query (a SET search_path would prevent that).
CREATE FUNCTION bar_bucket(ts timestamptz, step interval, day_starts timestamptz[])
    RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN step = interval '1 day' THEN day_starts[width_bucket(ts, day_starts)]
            ELSE day_starts[width_bucket(ts, day_starts)]
                 + floor(extract(epoch FROM ts - day_starts[width_bucket(ts, day_starts)])
                         / extract(epoch FROM step))::bigint * step END;

-- A session such as '09:30-16:00' as its local open and close times; NULL: the whole day.
CREATE FUNCTION bar_session(session text, OUT opens time, OUT closes time)
    LANGUAGE plpgsql IMMUTABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    IF session IS NULL THEN
        RETURN;
    END IF;
    IF session !~ '^\d{2}:\d{2}-\d{2}:\d{2}$' THEN
        RAISE EXCEPTION 'bars: session must look like ''09:30-16:00'' (local open-close), not %', quote_literal(session)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        opens := split_part(session, '-', 1)::time;
        closes := split_part(session, '-', 2)::time;
    EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
        RAISE EXCEPTION 'bars: session % holds a time that does not exist', quote_literal(session)
            USING ERRCODE = 'invalid_parameter_value';
    END;
    IF opens >= closes THEN
        RAISE EXCEPTION 'bars: session % closes before it opens', quote_literal(session)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$fn$;

-- How bars() reads [from_ts, to_ts): the UTC hours it takes whole from hour_bars, and the
-- stretches it reads minute by minute. With `use_hours`, only the symbol's hours that have an
-- hour bar are looked at (hour_bars has one for every hour with a bar bars() counts by
-- default). Such an hour is taken whole where all its minutes fall in one bucket, in the
-- range and in the session: the clock's offset is the same at its first and last minute (no
-- change inside it), both are in one bucket (buckets only grow with time) and, with a
-- session, both are in it on one local day. An hour wholly outside the session is not read
-- at all; the rest (edges of the range, of the session and of buckets, and hours the clock
-- changes in) is read minute by minute, as before hour bars. Without `use_hours`, the whole
-- range is one stretch.
CREATE FUNCTION bar_hours(symbol text, from_ts timestamptz, to_ts timestamptz, step interval, plain boolean,
                          day_starts timestamptz[], tz text, opens time, closes time,
                          use_hours boolean,
                          OUT whole timestamptz[], OUT part_from timestamptz[],
                          OUT part_to timestamptz[])
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    IF NOT use_hours OR to_ts <= from_ts THEN
        whole := '{}';
        part_from := ARRAY[from_ts];
        part_to := ARRAY[to_ts];
        RETURN;
    END IF;
    WITH hour AS (
        SELECT hb.hour AS h, hb.hour + interval '59 minutes' AS last,
               hb.hour AT TIME ZONE tz AS l0, (hb.hour + interval '59 minutes') AT TIME ZONE tz AS l1
        FROM hour_bars hb
        WHERE hb.symbol = bar_hours.symbol AND hb.hour > from_ts - interval '1 hour' AND hb.hour < to_ts
    ),
    graded AS (
        SELECT h, CASE
            WHEN l1 - l0 = interval '59 minutes' AND opens IS NOT NULL AND l0::date = l1::date
                 AND (l1::time < opens OR l0::time >= closes) THEN 'outside'
            WHEN h >= from_ts AND h + interval '1 hour' <= to_ts
                 AND l1 - l0 = interval '59 minutes'
                 AND (opens IS NULL OR (l0::date = l1::date AND l0::time >= opens AND l1::time < closes))
                 AND CASE WHEN plain THEN date_bin(step, h, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                                          = date_bin(step, last, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                          ELSE bar_bucket(h, step, day_starts) = bar_bucket(last, step, day_starts) END
                 THEN 'whole'
            ELSE 'part' END AS grade
        FROM hour
    ),
    -- consecutive hours read by minute make one stretch (gaps and islands)
    runs AS (
        SELECT h, grade, h - (row_number() OVER (PARTITION BY grade ORDER BY h)) * interval '1 hour' AS run
        FROM graded
    )
    SELECT ARRAY(SELECT h FROM runs WHERE grade = 'whole' ORDER BY h),
           ARRAY(SELECT greatest(min(h), from_ts) FROM runs WHERE grade = 'part' GROUP BY run ORDER BY run),
           ARRAY(SELECT least(max(h) + interval '1 hour', to_ts) FROM runs WHERE grade = 'part' GROUP BY run ORDER BY run)
    INTO whole, part_from, part_to;
END
$fn$;

CREATE FUNCTION bars(
    symbol text,
    start timestamptz,
    "end" timestamptz,
    include_legacy boolean DEFAULT false,
    bucket interval DEFAULT '1 minute',
    include_deleted boolean DEFAULT false,
    tz text DEFAULT 'UTC',
    origin interval DEFAULT '0',
    session text DEFAULT NULL,
    fill text DEFAULT 'none'
) RETURNS SETOF bar
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    step interval := checked_bucket(bucket);
    hours record;
    -- UTC and no origin: date_bin from 2000-01-01, exactly as before time zones came
    plain boolean;
    day_starts timestamptz[];
    seed numeric;
    seed_at timestamptz;
    first_bar_at timestamptz;  -- with fill and nothing to carry: the range's first bar
    first_minute timestamptz;
    -- with fill, how far apart the minutes are that find every bucket
    spacing interval;
    -- the hours read whole from hour_bars, and the stretches read minute by minute
    whole_hours timestamptz[];
    part_from timestamptz[];
    part_to timestamptz[];
BEGIN
    SELECT * INTO hours FROM bar_session(bars.session);
    IF bars.symbol IS NULL OR bars.start IS NULL OR bars."end" IS NULL OR bars.tz IS NULL
       OR bars.origin IS NULL OR bars.fill IS NULL THEN
        RAISE EXCEPTION 'bars: symbol, start, end, tz, origin and fill must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF bars."end" < bars.start THEN
        RAISE EXCEPTION 'bars: end (%) is before start (%)', bars."end", bars.start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF bars.fill NOT IN ('none', 'null', 'previous') THEN
        RAISE EXCEPTION 'bars: fill must be ''none'', ''null'' or ''previous'', not %', quote_literal(bars.fill)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF bars.origin < interval '0' OR bars.origin >= interval '1 day'
       OR extract(month FROM bars.origin) <> 0 OR extract(day FROM bars.origin) <> 0
       OR extract(epoch FROM bars.origin)::numeric % 60 <> 0 THEN
        RAISE EXCEPTION 'bars: origin is an offset from local midnight in whole minutes, from 0 to less than a day, not %', bars.origin
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM now() AT TIME ZONE bars.tz;  -- an unknown time zone: 22023 here, not mid-query
    -- UTC by any of its names
    plain := upper(bars.tz) IN ('UTC', 'ETC/UTC', 'UCT', 'ETC/UCT', 'Z', 'ZULU', 'ETC/ZULU', 'UNIVERSAL', 'ETC/UNIVERSAL')
             AND bars.origin = interval '0';
    IF NOT plain AND (86400 % extract(epoch FROM step)::bigint) <> 0 THEN
        RAISE EXCEPTION 'bars: with tz or origin, bucket must divide a day (1, 5, 15 or 30 minutes, 1, 2 or 4 hours, 1 day ...), not %', step
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (NOT plain OR bars.fill <> 'none')
       AND (NOT isfinite(bars.start) OR NOT isfinite(bars."end")
            OR bars."end" > bars.start + interval '100 years') THEN
        RAISE EXCEPTION 'bars: with tz, origin or fill, start and end must be finite and at most 100 years apart'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT plain THEN
        day_starts := local_day_starts(bars.start, bars."end", bars.tz, bars.origin);
    END IF;
    -- A session cuts buckets at any minute; a bucket that neither divides an hour nor is
    -- whole hours can end short where the clock changes; otherwise no bucket is shorter than
    -- half an hour (the smallest change of a clock).
    spacing := CASE WHEN hours.opens IS NOT NULL
                         OR (3600 % extract(epoch FROM step)::bigint <> 0
                             AND extract(epoch FROM step)::bigint % 3600 <> 0)
                    THEN interval '1 minute'
                    ELSE least(step, interval '30 minutes') END;
    IF bars.fill <> 'none' AND extract(epoch FROM bars."end" - bars.start) / extract(epoch FROM spacing) > 2000000 THEN
        RAISE EXCEPTION 'bars: fill would look at % buckets; ask for a shorter range or a larger bucket',
            round(extract(epoch FROM bars."end" - bars.start) / extract(epoch FROM spacing))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('bars');
    SELECT h.whole, h.part_from, h.part_to INTO whole_hours, part_from, part_to
    FROM bar_hours(bars.symbol, bars.start, bars."end", step, plain, day_starts, bars.tz, hours.opens, hours.closes,
                   step >= interval '1 hour' AND NOT coalesce(bars.include_legacy, false)
                   AND NOT coalesce(bars.include_deleted, false)) h;
    -- the first whole minute in the range: minute bars start on the minute
    first_minute := date_bin(interval '1 minute', bars.start - interval '1 microsecond',
                             TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '1 minute';
    IF bars.fill <> 'none' THEN
        -- the close before the range (in the session), carried into its first empty buckets;
        -- without one, no empty bucket comes before the first bar. (The filter is the one of
        -- minute_bars below, written out again: a helper function with its own search_path
        -- would not be inlined, and this backward scan must stop at the first row.)
        -- the latest such minute by a backward scan of the index, then its bar by precedence
        -- (ordering by precedence in one step would sort the symbol's whole history)
        SELECT p."timestamp" INTO seed_at
        FROM price_bars p
        WHERE p.symbol = bars.symbol AND p."timestamp" < bars.start
          AND (coalesce(bars.include_legacy, false)
               OR (NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')))
          AND (coalesce(bars.include_deleted, false) OR p.deleted_at IS NULL)
          AND (hours.opens IS NULL
               OR ((p."timestamp" AT TIME ZONE bars.tz)::time >= hours.opens
                   AND (p."timestamp" AT TIME ZONE bars.tz)::time < hours.closes))
        ORDER BY p."timestamp" DESC
        LIMIT 1;
        SELECT p.close INTO seed
        FROM price_bars p
        WHERE p.symbol = bars.symbol AND p."timestamp" = seed_at
          AND (coalesce(bars.include_legacy, false)
               OR (NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')))
          AND (coalesce(bars.include_deleted, false) OR p.deleted_at IS NULL)
        ORDER BY CASE WHEN NOT p.is_legacy AND p.data_source = 'trades' THEN 0
                      WHEN NOT p.is_legacy AND p.data_source = 'ohlcv-1m' THEN 1
                      WHEN p.data_source = 'scanner' THEN 2 ELSE 3 END,
                 p.data_source
        LIMIT 1;
        IF seed IS NULL THEN
            -- No close to carry into the range: no empty bucket comes before its first bar
            -- (of any source: never after the first one returned), so candidates start there.
            SELECT min(p."timestamp") INTO first_bar_at
            FROM price_bars p
            WHERE p.symbol = bars.symbol AND p."timestamp" >= bars.start AND p."timestamp" < bars."end";
            IF first_bar_at IS NULL THEN
                RETURN;  -- no bar in the range either: nothing to return, nothing to fill
            END IF;
            first_minute := greatest(first_minute, date_bin(interval '1 minute', first_bar_at,
                                                            TIMESTAMPTZ '2000-01-01 00:00:00+00'));
        END IF;
    END IF;
    RETURN QUERY
    WITH minute_bars AS (
        -- whole hours, summed by the rollup as the minutes below would be (sql/hours.sql)
        SELECT hb.hour AS "timestamp", hb.open, hb.high, hb.low, hb.close, hb.volume,
               hb.trade_count, hb.notional, hb.data_source, false AS legacy
        FROM unnest(whole_hours) AS w(hour)
        JOIN hour_bars hb ON hb.symbol = bars.symbol AND hb.hour = w.hour
        UNION ALL
        -- the rest of the range, minute by minute
        SELECT m.* FROM unnest(part_from, part_to) AS g(lo, hi)
        CROSS JOIN LATERAL (
        SELECT DISTINCT ON (p."timestamp")
               p."timestamp", p.open, p.high, p.low, p.close, p.volume::bigint AS volume,
               p.trade_count::bigint AS trade_count, p.notional, p.data_source,
               (p.is_legacy OR p.data_source NOT IN ('trades', 'ohlcv-1m')
                OR p.data_source IS NULL) AS legacy
        FROM price_bars p
        WHERE p.symbol = bars.symbol
          AND p."timestamp" >= g.lo AND p."timestamp" < g.hi
          AND (coalesce(bars.include_legacy, false)
               OR (NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')))
          AND (coalesce(bars.include_deleted, false) OR p.deleted_at IS NULL)
          AND (hours.opens IS NULL
               OR ((p."timestamp" AT TIME ZONE bars.tz)::time >= hours.opens
                   AND (p."timestamp" AT TIME ZONE bars.tz)::time < hours.closes))
        -- trades bars first, then Databento's official bars, then the old scanner's, then legacy
        ORDER BY p."timestamp",
                 CASE WHEN NOT p.is_legacy AND p.data_source = 'trades' THEN 0
                      WHEN NOT p.is_legacy AND p.data_source = 'ohlcv-1m' THEN 1
                      WHEN p.data_source = 'scanner' THEN 2 ELSE 3 END,
                 p.data_source
        ) m
    ),
    buckets AS (
        SELECT CASE WHEN plain THEN date_bin(step, m."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00')
                    ELSE bar_bucket(m."timestamp", step, day_starts) END AS t,
               (array_agg(m.open ORDER BY m."timestamp"))[1] AS open,
               max(m.high) AS high,
               min(m.low) AS low,
               (array_agg(m.close ORDER BY m."timestamp" DESC))[1] AS close,
               sum(m.volume)::bigint AS volume,
               sum(m.trade_count)::bigint AS trade_count,
               -- only where every bar knows its notional: a VWAP of part of the volume is none
               CASE WHEN bool_and(m.notional IS NOT NULL)
                    THEN trim_scale(round(sum(m.notional) / nullif(sum(m.volume), 0), 9)) END AS vwap,
               CASE WHEN count(DISTINCT m.data_source) <= 1 THEN min(m.data_source) ELSE 'mixed' END AS data_source,
               bool_or(m.legacy) AS legacy
        FROM minute_bars m
        GROUP BY 1
    ),
    -- With fill: every bucket of the range (in the session), as the minutes in it are
    -- bucketed; candidates close enough that no bucket is missed (a session cuts buckets at
    -- any minute, so then every minute).
    every_bucket AS (
        SELECT CASE WHEN plain THEN date_bin(step, g, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                    ELSE bar_bucket(g, step, day_starts) END AS t
        FROM (SELECT generate_series(first_minute, bars."end" - interval '1 microsecond', spacing)
              UNION ALL  -- the last minute, whose bucket the steps may pass over
              SELECT date_bin(interval '1 minute', bars."end" - interval '1 microsecond',
                              TIMESTAMPTZ '2000-01-01 00:00:00+00')) AS c(g)
        WHERE bars.fill <> 'none' AND g >= first_minute AND g < bars."end"
          AND (hours.opens IS NULL
               OR ((g AT TIME ZONE bars.tz)::time >= hours.opens
                   AND (g AT TIME ZONE bars.tz)::time < hours.closes))
        UNION  -- and every bucket that holds a bar, whatever the candidates found
        SELECT b.t FROM buckets b WHERE bars.fill <> 'none'
    ),
    gridded AS (
        SELECT e.t, b.open, b.high, b.low, b.close, b.volume, b.trade_count, b.vwap,
               b.data_source, b.legacy,
               -- how many real buckets up to here: the empty ones after a real one share its count
               count(b.t) OVER (ORDER BY e.t) AS run
        FROM every_bucket e LEFT JOIN buckets b ON b.t = e.t
    ),
    filled AS (
        SELECT g.t, g.open, g.high, g.low, g.close, g.volume, g.trade_count, g.vwap,
               g.data_source, g.legacy, g.open IS NULL AS is_fill,
               CASE WHEN g.run = 0 THEN seed
                    ELSE first_value(g.close) OVER (PARTITION BY g.run ORDER BY g.t) END AS previous
        FROM gridded g
    )
    SELECT bars.symbol, b.t, b.open, b.high, b.low, b.close, b.volume, b.trade_count, b.vwap,
           b.data_source, b.legacy, bar_clock(), false
    FROM buckets b
    WHERE bars.fill = 'none'
    UNION ALL
    SELECT bars.symbol, f.t,
           CASE WHEN NOT f.is_fill THEN f.open WHEN bars.fill = 'previous' THEN f.previous END,
           CASE WHEN NOT f.is_fill THEN f.high WHEN bars.fill = 'previous' THEN f.previous END,
           CASE WHEN NOT f.is_fill THEN f.low WHEN bars.fill = 'previous' THEN f.previous END,
           CASE WHEN NOT f.is_fill THEN f.close WHEN bars.fill = 'previous' THEN f.previous END,
           coalesce(f.volume, 0), coalesce(f.trade_count, 0), f.vwap,
           f.data_source, coalesce(f.legacy, false), bar_clock(), f.is_fill
    FROM filled f
    -- never a bar before the symbol's first trade: an empty bucket needs a close before it
    WHERE bars.fill <> 'none' AND (NOT f.is_fill OR f.previous IS NOT NULL)
    ORDER BY 2;
END
$fn$;
COMMENT ON FUNCTION bars(text, timestamptz, timestamptz, boolean, interval, boolean, text, interval, text, text) IS
    'tradebars: bars of one symbol in [start, end): trades bars win over official (ohlcv-1m), those over legacy bars; bucket from 1 minute to 1 day, in tz from origin, within session, gaps filled as asked';

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

DROP FUNCTION migration_coverage(interval);
CREATE FUNCTION migration_coverage(since interval DEFAULT '1 day')
RETURNS TABLE (hour timestamptz, legacy_bars bigint, new_bars bigint, scanner_bars bigint,
               official_bars bigint)
    LANGUAGE plpgsql STABLE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    cutoff timestamptz := now() - checked_age('since', since);
BEGIN
    PERFORM require_price_bars_ready('migration_coverage');
    RETURN QUERY
        SELECT date_trunc('hour', p."timestamp"),
               count(*) FILTER (WHERE p.is_legacy AND p.data_source IS DISTINCT FROM 'scanner'),
               count(*) FILTER (WHERE NOT p.is_legacy AND p.data_source = 'trades'),
               count(*) FILTER (WHERE p.data_source = 'scanner'),
               count(*) FILTER (WHERE NOT p.is_legacy AND p.data_source = 'ohlcv-1m')
        FROM price_bars p
        WHERE p."timestamp" > cutoff
        GROUP BY 1 ORDER BY 1;
END
$fn$;

-- The feeder and reader roles may see how far the rollup got without reading staging
-- (SECURITY DEFINER); a trade staged without ts_recv does not date the oldest one.
CREATE OR REPLACE FUNCTION rollup_status()
RETURNS TABLE (staged_trades bigint, oldest_staged_recv timestamptz, rollups bigint,
               trades_rolled_up bigint, bars_written bigint, trades_rejected bigint,
               last_rollup_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = @extschema@, pg_temp
AS $fn$
    SELECT (SELECT count(*) FROM trades_staging),
           -- a trade without ts_recv (staged as -1) is waiting too, but says nothing of since when
           (SELECT to_timestamp(min(ts_recv) / 1e9) FROM trades_staging WHERE ts_recv >= 0),
           s.rollups, s.trades, s.bars_written, s.rejected, s.last_rollup_at
    FROM rollup_stats s
$fn$;

-- Raised from the rollup's merge when a bar it would merge into says 'trades' but tradebars
-- did not build it: the old scanner's (no order of its open and close trades) or one made
-- legacy. Merging would add to foreign volume and keep foreign open and close (0.3.0).
CREATE FUNCTION foreign_trades_bar(symbol text, at timestamptz) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = @extschema@, pg_temp
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

-- ---- sql/changes.sql, as released in 0.3.0 ----
-- Live push (0.3.0): apps learn that bars changed without polling.
--
-- Every bars_rollup() that changes bars sends one NOTIFY on the channel tradebars_bars, with
-- the rollup's id as its payload (a decimal number: far below PostgreSQL's 8000-byte limit).
-- It is delivered when the rollup commits, with the bars. Each bar keeps the id of the rollup
-- that changed it last (price_bars.changed_in), so bars_changed_since(id) returns every bar
-- changed after rollup `id`, as it stands now: a listener that missed notifications, or was
-- not connected, catches up with one call. The latest id is rollup_status().rollups.
CREATE FUNCTION bars_changed_since(since bigint, symbols text[] DEFAULT NULL)
RETURNS TABLE (rollup_id bigint, symbol text, "timestamp" timestamptz, open numeric,
               high numeric, low numeric, close numeric, volume bigint, trade_count bigint,
               vwap numeric)
    LANGUAGE plpgsql STABLE
    SET search_path = @extschema@, pg_temp
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
        FROM price_bars p
        WHERE p.changed_in > bars_changed_since.since
          AND (bars_changed_since.symbols IS NULL OR p.symbol = ANY (bars_changed_since.symbols))
        ORDER BY p.changed_in, p.symbol, p."timestamp";
END
$fn$;
COMMENT ON FUNCTION bars_changed_since(bigint, text[]) IS
    'tradebars: the bars changed by rollups after rollup `since` (optionally of some symbols only), as they stand now; NOTIFY tradebars_bars says when to ask';

-- ---- sql/official.sql, as released in 0.3.0 ----
-- Databento's own bars as history (0.3.0): official OHLCV-1m bars, loaded by the feeder from
-- an ohlcv-1m file (replay) into price_bars with data_source 'ohlcv-1m'. They carry real
-- volume, so bars() returns them by default; in one minute a trades bar wins over them, and
-- they over legacy bars. Built on ts_recv as trades bars are (the database's default clock),
-- a trades bar and the official bar of the same minute agree exactly. Databento's OHLCV has
-- no trade count: trade_count is 0, vwap and notional NULL.
--
-- The feeder COPYs a file's bars here and calls official_bars_merge() in the same
-- transaction, which merges them and empties this table.
CREATE TABLE official_bars_staging (
    symbol   text   NOT NULL,  -- '' when the file had no symbol mapping for it
    ts_event bigint NOT NULL,  -- the bar's start, ns since the epoch, UTC
    open     bigint NOT NULL,  -- prices fixed-point (1e-9), as in the DBN record
    high     bigint NOT NULL,
    low      bigint NOT NULL,
    close    bigint NOT NULL,
    volume   bigint NOT NULL
);
COMMENT ON TABLE official_bars_staging IS
    'tradebars: official bars on their way into price_bars (empty outside a load)';

-- Merges the staged official bars of `schema` into price_bars, replacing a bar already
-- there (Databento's bar is whole: loading it again changes nothing), and empties the
-- staging. Bars that cannot be stored are counted, not stored: no symbol mapping, not the
-- start of a UTC minute, an undefined price or prices that contradict each other, a
-- negative volume, an implausible time (before 1980, or more than a day ahead).
CREATE FUNCTION official_bars_merge(schema text)
RETURNS TABLE (bars_written bigint, bars_rejected bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    staged bigint;
    written bigint;
    twice record;
BEGIN
    IF schema IS DISTINCT FROM 'ohlcv-1m' THEN
        RAISE EXCEPTION 'official_bars_merge: schema must be ''ohlcv-1m'' (price_bars holds minute bars), not %',
            coalesce(quote_literal(schema), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('official_bars_merge');
    IF bar_clock() <> 'ts_recv' THEN
        RAISE EXCEPTION 'official_bars_merge: this database builds its bars on the % clock; Databento''s bars are built on ts_recv and would not agree with its trades bars', bar_clock()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'the README says how a database moves to the ts_recv clock (roll back the trades bars, set_bar_clock, load again)';
    END IF;
    -- One load at a time; the staged rows are this transaction's own.
    LOCK TABLE official_bars_staging IN ACCESS EXCLUSIVE MODE;
    SELECT s.symbol, s.ts_event INTO twice
    FROM official_bars_staging s WHERE s.symbol <> ''
    GROUP BY s.symbol, s.ts_event HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'official_bars_merge: two % bars of % at %; nothing was loaded',
            schema, twice.symbol, to_timestamp(twice.ts_event / 1000000000)
            USING ERRCODE = 'unique_violation';
    END IF;
    SELECT count(*) INTO staged FROM official_bars_staging;
    INSERT INTO price_bars AS p (symbol, "timestamp", open, high, low, close, volume, trade_count,
                                 is_legacy, data_source)
    SELECT s.symbol, to_timestamp(s.ts_event / 1000000000),
           fixed_to_numeric(s.open), fixed_to_numeric(s.high), fixed_to_numeric(s.low),
           fixed_to_numeric(s.close), s.volume, 0, false, schema
    FROM official_bars_staging s
    WHERE s.symbol <> '' AND s.ts_event % 60000000000 = 0
      AND s.ts_event >= 315532800000000000
      AND s.ts_event < (extract(epoch FROM now() + interval '1 day')::bigint * 1000000000)
      AND 9223372036854775807 NOT IN (s.open, s.high, s.low, s.close)
      AND s.low <= least(s.open, s.close) AND s.high >= greatest(s.open, s.close)
      AND s.volume >= 0
    ON CONFLICT (symbol, "timestamp", data_source) DO UPDATE SET
        open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
        volume = EXCLUDED.volume;
    GET DIAGNOSTICS written = ROW_COUNT;
    PERFORM hour_bars_refresh('official');
    TRUNCATE official_bars_staging;
    RETURN QUERY SELECT written, staged - written;
END
$fn$;
COMMENT ON FUNCTION official_bars_merge(text) IS
    'tradebars: merges staged official bars (ohlcv-1m) into price_bars; returns bars written and rejected';

-- Official bars (0.3.0): the feeder stages them; the merge runs as the extension's owner.
GRANT INSERT ON official_bars_staging TO tradebars_feeder;
REVOKE EXECUTE ON FUNCTION official_bars_merge(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION official_bars_merge(text) TO tradebars_feeder;

-- Trade identity (0.3.0): the feeder reads and extends what is already counted.
GRANT SELECT, INSERT, DELETE ON trade_coverage TO tradebars_feeder;
GRANT SELECT, INSERT, UPDATE ON live_positions TO tradebars_feeder;
GRANT SELECT ON bar_settings TO tradebars_feeder, tradebars_reader;
REVOKE EXECUTE ON FUNCTION prune_trade_identity(), identity_refusal(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_trade_identity(), identity_refusal(bigint) TO tradebars_feeder;
REVOKE EXECUTE ON FUNCTION set_bar_clock(text), set_identity_retention(interval) FROM PUBLIC;

---- sql/hours.sql, as released in 0.3.0 ----
-- Hour bars (0.3.0): each UTC hour of each symbol's bars, summed once, so that bars() over a
-- year at '1 day' reads a few thousand rows rather than a hundred thousand minutes.
--
-- An hour bar is exactly what bars() makes of that hour's minute bars by default: per minute
-- the trades bar, else the official (ohlcv-1m) bar; no legacy and no soft-deleted bar. It is
-- kept exact by every function of the extension that changes such bars, in the transaction
-- that changes them: bars_rollup() (late trades included) and official_bars_merge() refresh
-- the hours they touched; rollback_trades(), mark_legacy(), prepare_price_bars() and CREATE
-- EXTENSION over an adopted price_bars rebuild all. A bar written into price_bars by hand is not seen until refresh_hour_bars() covers it.
--
-- bars() takes an hour bar only where the whole hour lies in one of its buckets, inside the
-- range and inside the session, and legacy and deleted bars are not asked for; every other
-- minute still comes from price_bars (see sql/bars.sql). On Citus, distribute hour_bars by
-- symbol with price_bars: each refresh is an INSERT ... SELECT ... GROUP BY symbol, hour
-- over colocated tables.
CREATE TABLE hour_bars (
    symbol      text        NOT NULL,
    hour        timestamptz NOT NULL,  -- the start of the UTC hour
    open        numeric     NOT NULL,
    high        numeric     NOT NULL,
    low         numeric     NOT NULL,
    close       numeric     NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint,
    notional    numeric,               -- NULL where a minute of it has none (official bars)
    data_source text        NOT NULL,  -- 'trades', 'ohlcv-1m', or 'mixed' for both
    PRIMARY KEY (symbol, hour)
);
COMMENT ON TABLE hour_bars IS
    'tradebars: the default minute bars of each UTC hour, summed (kept by the extension; read by bars())';
-- Dumped with the bars it sums (pg_dump takes both in one snapshot).
SELECT pg_extension_config_dump('hour_bars', '');

-- The statement that writes the hour bar of each hour `minutes` gives minute bars for: the
-- minute bars (symbol, hour, "timestamp", open, high, low, close, volume, trade_count,
-- notional, data_source) summed as bars() sums minutes. One text for both callers below.
CREATE FUNCTION hour_bars_insert(minutes text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = @extschema@, pg_temp
RETURN format($q$
    INSERT INTO hour_bars (symbol, hour, open, high, low, close, volume, trade_count,
                           notional, data_source)
    -- open and close: of the least and greatest (epoch, price); no sort in any group
    SELECT m.symbol, m.hour,
           (min(ARRAY[extract(epoch FROM m."timestamp"), m.open]))[2], max(m.high), min(m.low),
           (max(ARRAY[extract(epoch FROM m."timestamp"), m.close]))[2],
           sum(m.volume), sum(m.trade_count),
           CASE WHEN bool_and(m.notional IS NOT NULL) THEN sum(m.notional) END,
           CASE WHEN bool_and(m.data_source = 'trades') THEN 'trades'
                WHEN bool_and(m.data_source = 'ohlcv-1m') THEN 'ohlcv-1m' ELSE 'mixed' END
    FROM (%s) m
    GROUP BY m.symbol, m.hour
$q$, minutes);

-- Recomputes the hour bars of the hours a rollup (`touched` = 'rollup': the hours of the good
-- bars in rollup_bars) or an official load ('official': those of official_bars_staging)
-- touched, each hour read by an index scan of its own; per minute bars()'s default choice,
-- the trades bar, else the official one. The queries are fixed, chosen by name, never text
-- from a caller. Waits for another refresh and keeps it waiting until commit, so each one
-- reads the bars the other committed.
CREATE FUNCTION hour_bars_refresh(touched text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
DECLARE
    hours text := CASE touched
        WHEN 'rollup' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(minute * 60), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM rollup_bars WHERE good'
        WHEN 'official' THEN
            'SELECT DISTINCT symbol, date_bin(interval ''1 hour'', to_timestamp(ts_event / 1000000000), TIMESTAMPTZ ''2000-01-01 00:00:00+00'') AS hour
             FROM official_bars_staging WHERE symbol <> '''' AND ts_event >= 0' END;
    n bigint;
BEGIN
    IF hours IS NULL THEN
        RAISE EXCEPTION 'hour_bars_refresh: touched must be ''rollup'' or ''official'', not %',
            coalesce(quote_literal(touched), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOCK TABLE hour_bars IN EXCLUSIVE MODE;
    EXECUTE format('DELETE FROM hour_bars h USING (%s) t WHERE h.symbol = t.symbol AND h.hour = t.hour', hours);
    EXECUTE hour_bars_insert(format($q$
        SELECT t.symbol, t.hour, m.*
        FROM (%s) t
        CROSS JOIN LATERAL (
            SELECT DISTINCT ON (p."timestamp") p."timestamp", p.open, p.high, p.low, p.close,
                   p.volume, p.trade_count, p.notional, p.data_source
            FROM price_bars p
            WHERE p.symbol = t.symbol
              AND p."timestamp" >= t.hour AND p."timestamp" < t.hour + interval '1 hour'
              AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
              AND p.deleted_at IS NULL
            ORDER BY p."timestamp", p.data_source <> 'trades'
        ) m
    $q$, hours));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION hour_bars_refresh(text) IS
    'tradebars (internal): recomputes the hour bars of the hours a rollup or an official load touched';

-- Recomputes every hour bar of the hours that meet [from_ts, to_ts), of all symbols, in one
-- pass over their minute bars (no lookup per hour: a year of 500 symbols is 900,000 hours). Hours left with no bar lose their hour bar. Locks as hour_bars_refresh().
CREATE FUNCTION hour_bars_rebuild(from_ts timestamptz, to_ts timestamptz) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
    SET work_mem = '256MB'
AS $fn$
DECLARE
    lo timestamptz := CASE WHEN isfinite(from_ts)
                           THEN date_bin(interval '1 hour', from_ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                           ELSE from_ts END;
    hi timestamptz := CASE WHEN isfinite(to_ts)
                           THEN date_bin(interval '1 hour', to_ts - interval '1 microsecond',
                                         TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '1 hour'
                           ELSE to_ts END;
    n bigint;
BEGIN
    IF to_ts <= from_ts THEN
        RETURN 0;  -- an empty range meets no hour
    END IF;
    LOCK TABLE hour_bars IN EXCLUSIVE MODE;
    DELETE FROM hour_bars WHERE hour >= lo AND hour < hi;
    -- an official bar only where its minute has no trades bar (no sort of every bar)
    EXECUTE hour_bars_insert($q$
        SELECT p.symbol,
               date_bin(interval '1 hour', p."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
               p."timestamp", p.open, p.high, p.low, p.close, p.volume, p.trade_count,
               p.notional, p.data_source
        FROM price_bars p
        WHERE p."timestamp" >= $1 AND p."timestamp" < $2
          AND NOT p.is_legacy AND p.data_source IN ('trades', 'ohlcv-1m')
          AND p.deleted_at IS NULL
          AND (p.data_source = 'trades' OR NOT EXISTS (
                SELECT 1 FROM price_bars q
                WHERE q.symbol = p.symbol AND q."timestamp" = p."timestamp"
                  AND q.data_source = 'trades' AND NOT q.is_legacy AND q.deleted_at IS NULL))
    $q$) USING lo, hi;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION hour_bars_rebuild(timestamptz, timestamptz) IS
    'tradebars (internal): recomputes every hour bar of the hours that meet a range, in one pass';

-- For the DBA who wrote price_bars by hand: makes the hour bars of [start, end) exact again
-- (every hour, of every symbol, that meets the range). Returns the hour bars written.
CREATE FUNCTION refresh_hour_bars(start timestamptz DEFAULT '-infinity',
                                  "end" timestamptz DEFAULT 'infinity')
RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = @extschema@, pg_temp
AS $fn$
BEGIN
    IF start IS NULL OR "end" IS NULL THEN
        RAISE EXCEPTION 'refresh_hour_bars: start and end must not be NULL (leave them out for all hours)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF "end" < start THEN
        RAISE EXCEPTION 'refresh_hour_bars: end (%) is before start (%)', "end", start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('refresh_hour_bars');
    RETURN hour_bars_rebuild(start, "end");
END
$fn$;
COMMENT ON FUNCTION refresh_hour_bars(timestamptz, timestamptz) IS
    'tradebars: recomputes the hour bars bars() reads for [start, end), after price_bars was written by hand';

-- A price_bars the extension did not create (an adopted one) outlives DROP EXTENSION: when
-- the extension is created again, its bars get their hours now.
DO $do$
BEGIN
    IF price_bars_is_ready() THEN
        PERFORM hour_bars_rebuild('-infinity', 'infinity');
    END IF;
END
$do$;

GRANT SELECT ON hour_bars TO tradebars_reader;
REVOKE EXECUTE ON FUNCTION hour_bars_refresh(text), hour_bars_rebuild(timestamptz, timestamptz),
    hour_bars_insert(text), refresh_hour_bars(timestamptz, timestamptz) FROM PUBLIC;
-- rollup_status() runs as the owner: only the feeder and reader roles call it (0.3.0).
REVOKE EXECUTE ON FUNCTION rollup_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rollup_status() TO tradebars_feeder, tradebars_reader;

-- Phase 7 of the plan and the way back: soft delete (option A), archive (option B), hard
-- delete (option C), restore, and the rollback of trades bars. Nothing here deletes a legacy
-- bar that is not held in the archive or a named backup table, unless the DBA confirms.

-- The columns of price_bars that can be written, quoted, in table order.
CREATE OR REPLACE FUNCTION tradebars_internal.price_bars_columns(rel regclass DEFAULT '@extschema@.price_bars') RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
    FROM pg_attribute
    WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
$fn$;

-- Returns how many legacy bars it marked (`marked`, the column of SELECT * FROM it).
CREATE OR REPLACE FUNCTION soft_delete_legacy(OUT marked bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    PERFORM require_price_bars_ready('soft_delete_legacy');
    UPDATE @extschema@.price_bars SET deleted_at = now() WHERE is_legacy AND deleted_at IS NULL;
    GET DIAGNOSTICS marked = ROW_COUNT;
    RAISE NOTICE 'soft_delete_legacy: % legacy bars marked deleted; restore_legacy() brings them back', marked;
END
$fn$;

-- The owner of `rel` when it is neither the current user nor a superuser. Writing to a table,
-- or reading one with row security, runs its owner's triggers and policies with the rights
-- of whoever writes or reads: a table another role made where the archive belongs would
-- take the DBA's rights the next time the legacy bars move.
CREATE OR REPLACE FUNCTION tradebars_internal.foreign_owner(rel regclass) RETURNS regrole
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$ SELECT (SELECT c.relowner::regrole FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
        WHERE c.oid = rel AND r.rolname <> current_user AND NOT r.rolsuper) $fn$;

-- What makes `backup` no real copy, or NULL: it must be a permanent table (not a view, not
-- temporary or unlogged), other than price_bars and its partitions, with every column
-- price_bars has; so must every child or partition that holds its rows. With `refuse_for`
-- (the caller's name), a flaw is raised instead (SQLSTATE 22023).
CREATE OR REPLACE FUNCTION tradebars_internal.backup_table_flaw(backup regclass, refuse_for text DEFAULT NULL)
    RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    rel record;
    held_in text;
    flaw text;
BEGIN
    -- The table and every table its rows may live in: its inheritance children and
    -- partitions, at any depth (a permanent parent can hold its rows in a TEMP child).
    FOR rel IN
        WITH RECURSIVE tree(oid) AS (
            SELECT backup::oid
            UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
        SELECT c.oid::regclass AS name, c.relkind AS kind, c.relpersistence AS persistence,
               c.oid = backup::oid AS is_backup, foreign_owner(c.oid::regclass) AS foreign_owner
        FROM tree t JOIN pg_class c ON c.oid = t.oid
        ORDER BY c.oid <> backup::oid, c.oid
    LOOP
        held_in := CASE WHEN rel.is_backup THEN 'is' ELSE format('holds rows in %s, which is', rel.name) END;
        flaw := CASE
            -- price_bars, its partitions and inheritance children: DELETE FROM price_bars
            -- deletes their rows too
            WHEN rel.name IN (WITH RECURSIVE bars(oid) AS (
                                  SELECT '@extschema@.price_bars'::regclass::oid
                                  UNION
                                  SELECT i.inhrelid FROM pg_inherits i JOIN bars b ON i.inhparent = b.oid)
                              SELECT oid::regclass FROM bars)
            THEN format('%s price_bars itself (or a partition or child of it), not a copy', held_in)
            WHEN rel.kind NOT IN ('r', 'p')
            THEN format('%s a %s, not a table holding a copy', held_in,
                        CASE rel.kind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                      WHEN 'f' THEN 'foreign table' ELSE 'relation of kind ' || rel.kind::text END)
            WHEN rel.persistence <> 'p'
            THEN format('%s %s: it would not survive a crash or the session', held_in,
                        CASE rel.persistence WHEN 't' THEN 'temporary' ELSE 'unlogged' END)
            WHEN rel.foreign_owner IS NOT NULL
            THEN format('%s owned by %s: its triggers and policies would run with your rights (check them, then ALTER TABLE %s OWNER TO %s)',
                        held_in, rel.foreign_owner, rel.name, quote_ident(current_user)) END;
        EXIT WHEN flaw IS NOT NULL;
    END LOOP;
    IF flaw IS NULL THEN  -- NULL again when no column is missing
        SELECT 'lacks columns of price_bars: ' || string_agg(quote_ident(p.attname), ', ' ORDER BY p.attnum) INTO flaw
        FROM pg_attribute p
        WHERE p.attrelid = '@extschema@.price_bars'::regclass AND p.attnum > 0 AND NOT p.attisdropped
          AND NOT EXISTS (SELECT 1 FROM pg_attribute b WHERE b.attrelid = backup AND b.attname = p.attname
                          AND b.attnum > 0 AND NOT b.attisdropped);
    END IF;
    IF refuse_for IS NOT NULL AND flaw LIKE 'lacks columns%' THEN
        RAISE EXCEPTION '%: backup_table % %', refuse_for, backup, flaw
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a copy holds whole bars: CREATE TABLE price_bars_backup AS SELECT * FROM price_bars';
    ELSIF refuse_for IS NOT NULL AND flaw IS NOT NULL THEN
        RAISE EXCEPTION '%: backup_table % %', refuse_for, backup, flaw USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN flaw;
END
$fn$;

-- How many of the legacy bars about to be deleted (soft-deleted before `deleted_before`, or
-- all when it is NULL) are held whole, every column equal, in neither the archive
-- (price_bars_legacy) nor `backup`. Names come from the catalog, quoted.
CREATE OR REPLACE FUNCTION tradebars_internal.legacy_bars_unprotected(deleted_before timestamptz, backup regclass) RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    cols text := price_bars_columns();
    typed text;
    copies text[] := '{}';
    copy regclass;
    n bigint;
BEGIN
    -- price_bars' columns with its types, as each copy's rows are compared
    SELECT string_agg(format('%I::%s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
      INTO typed
      FROM pg_attribute
     WHERE attrelid = '@extschema@.price_bars'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    FOREACH copy IN ARRAY array_remove(ARRAY[to_regclass('@extschema@.price_bars_legacy'), backup], NULL) LOOP
        -- one that is no real copy (a view, temporary, unlogged, or an archive that predates
        -- a column) holds no bar whole for good
        IF backup_table_flaw(copy) IS NULL THEN
            copies := array_append(copies, format(' EXCEPT ALL SELECT %s FROM %s', typed, copy));
        END IF;
    END LOOP;
    EXECUTE format('SELECT count(*) FROM (SELECT %s FROM @extschema@.price_bars WHERE is_legacy AND ($1 IS NULL OR deleted_at < $1)%s) d',
                   cols, array_to_string(copies, ''))
        INTO n USING deleted_before;
    RETURN n;
END
$fn$;

-- Deletes legacy bars for good: those soft-deleted before `deleted_before`, or all of them
-- when it is NULL. Refuses unless each is held in the archive or `backup`, or `confirm`.
CREATE OR REPLACE FUNCTION tradebars_internal.delete_legacy_bars(caller text, deleted_before timestamptz, backup regclass,
                                   confirm boolean) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    unprotected bigint;
    n bigint;
BEGIN
    PERFORM require_argument(caller, 'confirm', confirm::text, true, 'true or false');
    PERFORM require_price_bars_ready(caller);
    IF backup IS NOT NULL THEN
        PERFORM backup_table_flaw(backup, refuse_for => caller);
    END IF;
    LOCK TABLE @extschema@.price_bars IN SHARE ROW EXCLUSIVE MODE;
    unprotected := legacy_bars_unprotected(deleted_before, backup);
    IF unprotected > 0 AND NOT confirm THEN
        RAISE EXCEPTION '%: % legacy bars are held whole (every column equal) in no archive or backup table; nothing deleted', caller, unprotected
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run archive_legacy(), or copy them (CREATE TABLE price_bars_backup AS SELECT * FROM price_bars) and pass backup_table => ''price_bars_backup'', or confirm => true';
    END IF;
    DELETE FROM @extschema@.price_bars WHERE is_legacy AND (deleted_before IS NULL OR deleted_at < deleted_before);
    GET DIAGNOSTICS n = ROW_COUNT;
    RAISE NOTICE '%: deleted % legacy bars; VACUUM (FULL) price_bars returns the space', caller, n;
    RETURN n;
END
$fn$;

-- Option A's last step: soft-deleted legacy bars older than `older_than` go for good.
CREATE OR REPLACE FUNCTION purge_deleted(older_than interval DEFAULT '7 days', backup_table regclass DEFAULT NULL,
                              confirm boolean DEFAULT false) RETURNS bigint
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$ SELECT tradebars_internal.delete_legacy_bars('purge_deleted', now() - tradebars_internal.checked_age('purge_deleted: older_than', older_than), backup_table, confirm) $fn$;

CREATE OR REPLACE FUNCTION archive_legacy() RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    cols text;
    to_move bigint;
    copied bigint;
    differing bigint;
    deleted bigint;
BEGIN
    PERFORM require_price_bars_ready('archive_legacy');
    LOCK TABLE @extschema@.price_bars IN SHARE ROW EXCLUSIVE MODE;
    IF to_regclass('@extschema@.price_bars_legacy') IS NULL THEN
        -- in the extension's schema, beside price_bars (the search_path starts with the helpers')
        CREATE TABLE @extschema@.price_bars_legacy (LIKE @extschema@.price_bars);
        CREATE UNIQUE INDEX price_bars_legacy_symbol_timestamp_source
            ON @extschema@.price_bars_legacy (symbol, "timestamp", data_source);
        COMMENT ON TABLE @extschema@.price_bars_legacy IS 'tradebars: legacy bars moved out of price_bars by archive_legacy()';
    END IF;
    -- bars moved into a view, a temporary or an unlogged table would not be kept for good
    PERFORM backup_table_flaw('@extschema@.price_bars_legacy'::regclass, refuse_for => 'archive_legacy');
    cols := price_bars_columns();
    IF EXISTS (SELECT unnest(string_to_array(cols, ', '))
               EXCEPT SELECT unnest(string_to_array(price_bars_columns('@extschema@.price_bars_legacy'), ', '))) THEN
        RAISE EXCEPTION 'archive_legacy: price_bars_legacy lacks columns price_bars has; nothing moved'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT count(*) INTO to_move FROM @extschema@.price_bars WHERE is_legacy;
    EXECUTE format('INSERT INTO @extschema@.price_bars_legacy (%1$s) SELECT %1$s FROM @extschema@.price_bars WHERE is_legacy', cols);
    GET DIAGNOSTICS copied = ROW_COUNT;
    EXECUTE format('SELECT count(*) FROM (SELECT %1$s FROM @extschema@.price_bars WHERE is_legacy
                                          EXCEPT ALL SELECT %1$s FROM @extschema@.price_bars_legacy) d', cols)
        INTO differing;
    IF copied <> to_move OR differing <> 0 THEN
        RAISE EXCEPTION 'archive_legacy: copied % of % legacy bars (% differ); nothing moved', copied, to_move, differing
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    DELETE FROM @extschema@.price_bars WHERE is_legacy;
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
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    archived bigint := 0;
    restored bigint := 0;
    undeleted bigint := 0;
    missing bigint;
    cols text;
    owner regrole;
BEGIN
    PERFORM require_argument('restore_legacy', 'undelete', undelete::text, true, 'true or false');
    PERFORM require_price_bars_ready('restore_legacy');
    LOCK TABLE @extschema@.price_bars IN SHARE ROW EXCLUSIVE MODE;
    IF to_regclass('@extschema@.price_bars_legacy') IS NOT NULL THEN
        LOCK TABLE @extschema@.price_bars_legacy IN SHARE ROW EXCLUSIVE MODE;
        owner := foreign_owner('@extschema@.price_bars_legacy');
        IF owner IS NOT NULL THEN
            RAISE EXCEPTION 'restore_legacy: price_bars_legacy is owned by %: its triggers and policies would run with your rights; nothing changed',
                owner
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('check them, then ALTER TABLE price_bars_legacy OWNER TO %s', quote_ident(current_user));
        END IF;
        cols := price_bars_columns('@extschema@.price_bars_legacy');
        SELECT count(*) INTO archived FROM @extschema@.price_bars_legacy;
        EXECUTE format('INSERT INTO @extschema@.price_bars (%1$s) OVERRIDING SYSTEM VALUE SELECT %1$s FROM @extschema@.price_bars_legacy', cols);
        GET DIAGNOSTICS restored = ROW_COUNT;
        EXECUTE format('SELECT count(*) FROM (SELECT %1$s FROM @extschema@.price_bars_legacy
                                              EXCEPT ALL SELECT %1$s FROM @extschema@.price_bars WHERE is_legacy) d', cols)
            INTO missing;
        IF restored <> archived OR missing <> 0 THEN
            RAISE EXCEPTION 'restore_legacy: restored % of % archived bars (% differ); nothing changed', restored, archived, missing
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        DELETE FROM @extschema@.price_bars_legacy;
    END IF;
    IF undelete THEN
        UPDATE @extschema@.price_bars SET deleted_at = NULL WHERE is_legacy AND deleted_at IS NOT NULL;
        GET DIAGNOSTICS undeleted = ROW_COUNT;
    END IF;
    RAISE NOTICE 'restore_legacy: % bars back from the archive, % soft-deleted bars undeleted', restored, undeleted;
    RETURN restored + undeleted;
END
$fn$;

-- Option C: every legacy bar goes for good.
CREATE OR REPLACE FUNCTION hard_delete_legacy(backup_table regclass DEFAULT NULL, confirm boolean DEFAULT false) RETURNS bigint
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$ SELECT tradebars_internal.delete_legacy_bars('hard_delete_legacy', NULL, backup_table, confirm) $fn$;

-- The plan's rollback: trades bars go, legacy bars stay exactly as they are.
CREATE OR REPLACE FUNCTION rollback_trades(include_staging boolean DEFAULT false) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    n bigint;
BEGIN
    PERFORM require_argument('rollback_trades', 'include_staging', include_staging::text, true, 'true or false');
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
    IF NOT include_staging AND EXISTS (SELECT 1 FROM @extschema@.trades_staging) THEN
        RAISE EXCEPTION 'rollback_trades: % trades are staged and not yet rolled up',
            (SELECT count(*) FROM @extschema@.trades_staging)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SELECT bars_rollup(); first, or SELECT rollback_trades(include_staging => true);';
    END IF;
    -- Only bars tradebars wrote: those carry the order of their open and close trades.
    DELETE FROM @extschema@.price_bars WHERE data_source = 'trades' AND NOT is_legacy AND open_ts_ns IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM hour_bars_rebuild('-infinity', 'infinity');  -- official bars may remain
    -- What was loaded is forgotten with the bars, so the same files, chunks and live
    -- periods can be fed again and count once (0.3.0).
    DELETE FROM @extschema@.ingest_ledger;
    DELETE FROM @extschema@.live_positions;
    DELETE FROM @extschema@.trade_coverage;
    -- No trades bar is left whose identity could be unknown: nothing before a horizon to refuse.
    UPDATE @extschema@.bar_settings SET identity_horizon = 0;
    IF include_staging THEN
        TRUNCATE @extschema@.trades_staging_0, @extschema@.trades_staging_1, @extschema@.trades_rejected;
        RAISE NOTICE 'rollback_trades: removed % trades bars, staged trades, the ingest ledger and trade identity', n;
    ELSE
        RAISE NOTICE 'rollback_trades: removed % trades bars, the ingest ledger and trade identity; legacy bars untouched', n;
    END IF;
    RETURN n;
END
$fn$;

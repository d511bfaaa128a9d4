-- Least-privilege roles: the feeder may only stage trades, keep its ledger and heartbeat,
-- and call the rollup; a reader may only read bars. Roles are cluster-wide, so they are
-- created only where missing and left in place by DROP EXTENSION.

DO $do$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['tradebars_feeder', 'tradebars_reader'] LOOP
        -- Two databases may create the extension at once: the loser of that race finds it.
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END;
        END IF;
    END LOOP;
END
$do$;

-- bars_rollup() runs as the extension's owner, so the feeder needs no right on price_bars.
REVOKE EXECUTE ON FUNCTION bars_rollup() FROM PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO tradebars_feeder, tradebars_reader;
-- The extension's internal helpers: out of the user's schema, but bars() and the other
-- functions any role may call use them, so every role may look them up (what each may
-- execute is granted and revoked below, as for the API).
GRANT USAGE ON SCHEMA tradebars_internal TO PUBLIC;
GRANT INSERT ON trades_staging_0, trades_staging_1 TO tradebars_feeder;
GRANT SELECT ON staging_epoch TO tradebars_feeder;
GRANT SELECT, INSERT, UPDATE ON ingest_ledger, feeder_status TO tradebars_feeder;
GRANT EXECUTE ON FUNCTION bars_rollup(), staging_slot() TO tradebars_feeder;
GRANT SELECT ON rollup_stats TO tradebars_feeder, tradebars_reader;
REVOKE EXECUTE ON FUNCTION rollup_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rollup_status() TO tradebars_feeder, tradebars_reader;
GRANT SELECT ON price_bars, hour_bars TO tradebars_reader;
-- Trade identity (0.3.0): the feeder reads and extends what is already counted.
GRANT SELECT, INSERT, DELETE ON trade_coverage TO tradebars_feeder;
GRANT SELECT, INSERT, UPDATE ON live_positions TO tradebars_feeder;
GRANT SELECT ON bar_settings TO tradebars_feeder, tradebars_reader;
REVOKE EXECUTE ON FUNCTION prune_trade_identity(), tradebars_internal.identity_refusal(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_trade_identity(), tradebars_internal.identity_refusal(bigint) TO tradebars_feeder;

-- Official bars (0.3.0): the feeder stages them; the merge runs as the extension's owner.
GRANT INSERT ON official_bars_staging TO tradebars_feeder;
REVOKE EXECUTE ON FUNCTION tradebars_internal.official_bars_merge(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tradebars_internal.official_bars_merge(text) TO tradebars_feeder;

-- The DBA's functions change or remove bars: not for everyone.
REVOKE EXECUTE ON FUNCTION mark_legacy(text), soft_delete_legacy(), purge_deleted(interval, regclass, boolean),
    archive_legacy(), restore_legacy(boolean), hard_delete_legacy(regclass, boolean),
    rollback_trades(boolean), prepare_price_bars(),
    set_bar_clock(text), set_identity_retention(interval), refresh_hour_bars(timestamptz, timestamptz),
    tradebars_internal.delete_legacy_bars(text, timestamptz, regclass, boolean),
    tradebars_internal.hour_bars_refresh(text), tradebars_internal.hour_bars_rebuild(timestamptz, timestamptz),
    tradebars_internal.hour_bars_insert(text) FROM PUBLIC;

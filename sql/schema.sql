-- tradebars schema: where trades wait (staging), what was loaded (ledger), and the bars.

-- The extension's internal helpers live here, out of the user's schema: only the documented
-- API is in the schema the extension is created in.
--
-- Every function of the extension runs with search_path = pg_catalog, tradebars_internal,
-- pg_temp and names what lies in the extension's schema as @extschema@.name: other roles may
-- be able to create in that schema (public), and a function, operator or temporary table of
-- theirs must never stand in for a built-in or an extension table in code that runs as the
-- extension's owner or the DBA. SQL bodies are text (AS $fn$ ... $fn$), parsed when called
-- under that path, not SQL-standard bodies bound while this script runs. Calls this script
-- makes itself are written pg_catalog.name.
CREATE SCHEMA tradebars_internal;
COMMENT ON SCHEMA tradebars_internal IS 'tradebars: internal helpers of the extension (not an API)';

-- Staging has two slots. The feeder COPYs into the slot staging_slot() names; bars_rollup()
-- moves the feeder to the other slot, rolls up the quiet one and TRUNCATEs it, so a rollup
-- never waits for the feeder, the feeder never waits for a rollup, and consuming millions of
-- staged trades costs a TRUNCATE, not a row-by-row DELETE.
-- Prices are Databento fixed-point (1e-9) and times nanoseconds since the epoch, UTC, exactly
-- as they arrive: conversion to numeric and timestamptz happens once per bar, not per trade.
CREATE TABLE trades_staging_0 (
    symbol        text     NOT NULL,  -- '' when the source had no symbol mapping
    instrument_id bigint   NOT NULL,
    publisher_id  integer  NOT NULL,
    ts_event      bigint   NOT NULL,
    ts_recv       bigint   NOT NULL,
    sequence      bigint   NOT NULL,
    price         bigint   NOT NULL,  -- 9223372036854775807 = undefined
    size          bigint   NOT NULL,
    side          "char"   NOT NULL,
    flags         smallint NOT NULL,
    -- The trade's place among the trades of its source that share its ts_recv, in the order
    -- Databento delivered them, whatever their publisher (0.3.0): after ts_recv, what orders
    -- a bar's open and close.
    ord           integer  NOT NULL DEFAULT 0
);
CREATE TABLE trades_staging_1 (LIKE trades_staging_0 INCLUDING DEFAULTS);
COMMENT ON TABLE trades_staging_0 IS 'tradebars: staged trades, slot 0 (see staging_slot())';
COMMENT ON TABLE trades_staging_1 IS 'tradebars: staged trades, slot 1 (see staging_slot())';

-- The slot the feeder writes to is staging_epoch % 2. A sequence, because its value is
-- seen by every session at once, without waiting for the rollup's transaction to commit.
CREATE SEQUENCE staging_epoch MINVALUE 1 START 1;
SELECT pg_catalog.setval('@extschema@.staging_epoch', 1, true);

CREATE VIEW trades_staging AS
    SELECT * FROM trades_staging_0
    UNION ALL
    SELECT * FROM trades_staging_1;
COMMENT ON VIEW trades_staging IS 'tradebars: every trade staged and not yet rolled up';

-- Trades bars_rollup() did not count, kept for a DBA to see, with the reason.
-- Columns in the order an upgraded 0.2.0 database has them (ord came in 0.3.0).
CREATE TABLE trades_rejected (
    symbol        text     NOT NULL,
    instrument_id bigint   NOT NULL,
    publisher_id  integer  NOT NULL,
    ts_event      bigint   NOT NULL,
    ts_recv       bigint   NOT NULL,
    sequence      bigint   NOT NULL,
    price         bigint   NOT NULL,
    size          bigint   NOT NULL,
    side          "char"   NOT NULL,
    flags         smallint NOT NULL,
    reason      text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    ord         integer     NOT NULL DEFAULT 0
);
CREATE INDEX trades_rejected_reason ON trades_rejected (reason, rejected_at);

-- What each source has delivered into staging, committed in the same transaction as the
-- trades it counts: a replayed file or a resumed stream skips what is already here.
CREATE TABLE ingest_ledger (
    source        text        PRIMARY KEY,
    kind          text        NOT NULL,   -- file, live, backfill
    position      bigint      NOT NULL,   -- file: its trades; stream: staged trades at last_ts_recv
    last_ts_event bigint,                 -- latest event time staged
    trades        bigint      NOT NULL DEFAULT 0,
    first_at      timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_ts_recv  bigint                  -- stream: ts_recv of the last staged trade (0.2.0)
);

-- The running feeder's heartbeat; the single-instance guarantee itself is an advisory lock.
CREATE TABLE feeder_status (
    id            integer     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pid           integer     NOT NULL,
    host          text        NOT NULL,
    mode          text        NOT NULL,
    started_at    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    trades_received bigint    NOT NULL DEFAULT 0,
    trades_written  bigint    NOT NULL DEFAULT 0,
    reconnects    bigint      NOT NULL DEFAULT 0,
    errors        bigint      NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz
);

-- Totals over every rollup so far, one row.
CREATE TABLE rollup_stats (
    id              integer     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    rollups         bigint      NOT NULL DEFAULT 0,
    trades          bigint      NOT NULL DEFAULT 0,
    bars_written    bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    last_rollup_at  timestamptz,
    last_trades     bigint      NOT NULL DEFAULT 0
);
INSERT INTO rollup_stats DEFAULT VALUES;

-- price_bars: created here only in a database that has none. A database that already has
-- the old application's table keeps it untouched until a DBA runs mark_legacy().
DO $do$
BEGIN
    IF to_regclass('price_bars') IS NULL THEN
        CREATE TABLE price_bars (
            symbol       text        NOT NULL,
            "timestamp"  timestamptz NOT NULL,  -- the bar's UTC minute (its open time)
            open         numeric     NOT NULL,
            high         numeric     NOT NULL,
            low          numeric     NOT NULL,
            close        numeric     NOT NULL,
            volume       bigint      NOT NULL DEFAULT 0,
            trade_count  bigint      NOT NULL DEFAULT 0,
            vwap         numeric,
            notional     numeric,               -- exact sum(price * size)
            open_ts_ns   bigint,                -- event order of the open and close trades,
            open_seq     bigint,                -- so a late trade merges by event time
            close_ts_ns  bigint,
            close_seq    bigint,
            is_legacy    boolean     NOT NULL DEFAULT false,
            data_source  text,
            migrated_at  timestamptz,
            deleted_at   timestamptz,
            changed_in   bigint                 -- the rollup that last changed it (0.3.0)
        );
        CREATE UNIQUE INDEX price_bars_symbol_timestamp_source
            ON price_bars (symbol, "timestamp", data_source);
        -- Partial: legacy bars only, so writing trades bars does not pay for it.
        CREATE INDEX price_bars_legacy_idx ON price_bars (symbol, "timestamp") WHERE is_legacy;
        -- What bars_changed_since() reads: the bars of the latest rollups.
        CREATE INDEX price_bars_changed_in ON price_bars (changed_in) WHERE changed_in IS NOT NULL;
        PERFORM pg_catalog.pg_extension_config_dump('@extschema@.price_bars', '');
    END IF;
END
$do$;

-- pg_dump keeps the data of these extension tables.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.trades_staging_0', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.trades_staging_1', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.trades_rejected', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ingest_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.staging_epoch', '');

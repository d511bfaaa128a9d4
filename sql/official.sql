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
CREATE OR REPLACE FUNCTION tradebars_internal.official_bars_merge(schema text)
RETURNS TABLE (bars_written bigint, bars_rejected bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
DECLARE
    staged bigint;
    written bigint;
    twice record;
BEGIN
    IF schema IS NULL THEN
        RAISE EXCEPTION 'official_bars_merge: schema must not be NULL (''ohlcv-1m'')'
            USING ERRCODE = 'null_value_not_allowed';
    ELSIF schema <> 'ohlcv-1m' THEN
        RAISE EXCEPTION 'official_bars_merge: schema must be ''ohlcv-1m'' (price_bars holds minute bars), not %', quote_literal(schema)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM require_price_bars_ready('official_bars_merge');
    IF tradebars_internal.bar_clock() <> 'ts_recv' THEN
        RAISE EXCEPTION 'official_bars_merge: this database builds its bars on the % clock; Databento''s bars are built on ts_recv and would not agree with its trades bars', tradebars_internal.bar_clock()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'the README says how a database moves to the ts_recv clock (roll back the trades bars, set_bar_clock, load again)';
    END IF;
    -- One load at a time; the staged rows are this transaction's own.
    LOCK TABLE @extschema@.official_bars_staging IN ACCESS EXCLUSIVE MODE;
    SELECT s.symbol, s.ts_event INTO twice
    FROM @extschema@.official_bars_staging s WHERE s.symbol <> ''
    GROUP BY s.symbol, s.ts_event HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'official_bars_merge: two % bars of % at %; nothing was loaded',
            schema, twice.symbol, to_timestamp(twice.ts_event / 1000000000)
            USING ERRCODE = 'unique_violation';
    END IF;
    SELECT count(*) INTO staged FROM @extschema@.official_bars_staging;
    INSERT INTO @extschema@.price_bars AS p (symbol, "timestamp", open, high, low, close, volume, trade_count,
                                 is_legacy, data_source)
    SELECT s.symbol, to_timestamp(s.ts_event / 1000000000),
           fixed_to_numeric(s.open), fixed_to_numeric(s.high), fixed_to_numeric(s.low),
           fixed_to_numeric(s.close), s.volume, 0, false, schema
    FROM @extschema@.official_bars_staging s
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
    TRUNCATE @extschema@.official_bars_staging;
    RETURN QUERY SELECT written, staged - written;
END
$fn$;
COMMENT ON FUNCTION tradebars_internal.official_bars_merge(text) IS
    'tradebars: merges staged official bars (ohlcv-1m) into price_bars; returns bars written and rejected';

-- bars_changed_since(): the bars each rollup changed, as a listener that missed the NOTIFYs
-- on tradebars_bars asks for them (the end-to-end test push.rs listens for real).
CREATE EXTENSION tradebars;
SET TimeZone = 'UTC';
-- one trade into the slot the feeder would write: symbol, ts_recv, price (1e-9), size
CREATE FUNCTION pg_temp.stage(sym text, at timestamptz, px bigint, sz bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %s (symbol, instrument_id, publisher_id, ts_event, ts_recv,
                                    sequence, price, size, side, flags)
                    VALUES ($1, 1, 1, $2, $2, 0, $3, $4, %L, 0)', staging_slot(), 'B')
        USING sym, (extract(epoch FROM at) * 1000000000)::bigint, px, sz;
END $$;

-- rollup 1: a bar of AAA and one of BBB at 14:30
SELECT pg_temp.stage('AAA', '2025-11-03 14:30:05+00', 100000000000, 10);
SELECT pg_temp.stage('BBB', '2025-11-03 14:30:07+00', 50000000000, 5);
SELECT * FROM bars_rollup();
-- rollup 2: a later trade of AAA at 14:30 (its bar changes) and a new bar at 14:31
SELECT pg_temp.stage('AAA', '2025-11-03 14:30:09+00', 101000000000, 2);
SELECT pg_temp.stage('AAA', '2025-11-03 14:31:00+00', 102000000000, 1);
SELECT * FROM bars_rollup();
-- rollup 3 changes nothing
SELECT * FROM bars_rollup();
SELECT rollups FROM rollup_status();

-- everything a rollup wrote; what changed after rollup 1; of BBB only; after the latest
SELECT * FROM bars_changed_since(0);
SELECT * FROM bars_changed_since(1);
SELECT * FROM bars_changed_since(1, ARRAY['BBB']);
SELECT count(*) FROM bars_changed_since(3);

-- bad arguments
SELECT error_of($$SELECT * FROM bars_changed_since(-1)$$);
SELECT error_of($$SELECT * FROM bars_changed_since(NULL)$$);

-- a trade staged without ts_recv (-1) waits too, but does not date the oldest one
SELECT pg_temp.stage('AAA', '2025-11-03 14:40:00+00', 100000000000, 1);
DO $$ BEGIN
    EXECUTE format('INSERT INTO %s (symbol, instrument_id, publisher_id, ts_event, ts_recv,
                                    sequence, price, size, side, flags)
                    VALUES (%L, 1, 1, 0, -1, 0, 1, 1, %L, 0)', staging_slot(), 'AAA', 'B');
END $$;
SELECT staged_trades, oldest_staged_recv FROM rollup_status();
SELECT * FROM bars_rollup();
-- A rollup where it cannot write, or could miss trades, is refused before it touches anything.
BEGIN READ ONLY;
SELECT error_of($$SELECT * FROM bars_rollup()$$);
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT error_of($$SELECT * FROM bars_rollup()$$);
ROLLBACK;
DROP EXTENSION tradebars;

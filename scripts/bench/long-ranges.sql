-- Times bars() over long ranges on the long-range database: each query RUNS times after one
-- warm-up, median in ms, server-side (no client round trip). "minutes" is the same query
-- read minute by minute, as before hour bars (include_legacy => true: there are no legacy
-- bars, so the rows are the same); "equal" compares the two answers.
\set ON_ERROR_STOP on
SELECT set_config('bench.runs', :'runs', false) \g /dev/null
CREATE TEMP TABLE timings (query text, path text, ms numeric, rows bigint, answer text);
DO $do$
DECLARE
    q record;
    t0 timestamptz;
    ms numeric[];
    n bigint;
    answer text;
BEGIN
    FOR q IN
        SELECT * FROM (VALUES
            ('year_1d_new_york', 'hours', $$SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b."timestamp")) FROM bars('S001', '2024-01-01', '2025-01-01', bucket => '1 day', tz => 'America/New_York') b$$),
            ('year_1d_new_york', 'minutes', $$SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b."timestamp")) FROM bars('S001', '2024-01-01', '2025-01-01', include_legacy => true, bucket => '1 day', tz => 'America/New_York') b$$),
            ('year_1d_session', 'hours', $$SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b."timestamp")) FROM bars('S001', '2024-01-01', '2025-01-01', bucket => '1 day', tz => 'America/New_York', session => '09:30-16:00') b$$),
            ('year_1d_session', 'minutes', $$SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b."timestamp")) FROM bars('S001', '2024-01-01', '2025-01-01', include_legacy => true, bucket => '1 day', tz => 'America/New_York', session => '09:30-16:00') b$$),
            ('month_1h_utc', 'hours', $$SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b."timestamp")) FROM bars('S250', '2024-03-01', '2024-04-01', bucket => '1 hour') b$$),
            ('month_1h_utc', 'minutes', $$SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b."timestamp")) FROM bars('S250', '2024-03-01', '2024-04-01', include_legacy => true, bucket => '1 hour') b$$)
        ) AS v(query, path, sql)
    LOOP
        EXECUTE q.sql INTO n, answer;  -- warm-up
        ms := '{}';
        FOR i IN 1 .. current_setting('bench.runs')::int LOOP
            t0 := clock_timestamp();
            EXECUTE q.sql INTO n, answer;
            ms := ms || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
        END LOOP;
        INSERT INTO timings VALUES (q.query, q.path,
            (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(ms) x), n, answer);
    END LOOP;
END
$do$;
-- query, ms through hour bars, ms minute by minute, rows, equal answers
SELECT h.query, round(h.ms, 1), round(m.ms, 1), h.rows, h.answer = m.answer
FROM timings h JOIN timings m ON m.query = h.query AND m.path = 'minutes'
WHERE h.path = 'hours' ORDER BY h.query;

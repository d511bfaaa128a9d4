-- bars(): the query behind the app's /bars/{symbol} endpoint (0.3.0: time zones, sessions,
-- gap fill).
--
-- Per minute one bar: the trades bar where there is one (trades win), then the old scanner's,
-- then a legacy bar if asked for; soft-deleted bars only if asked for. Buckets of whole
-- minutes up to a day are built from those minute bars: open of the first, close of the last,
-- exact volume-weighted VWAP from the stored notional. Buckets of an hour or more take
-- the hours that lie whole inside them from hour_bars (sql/hours.sql), summed the same way.
--
-- Buckets are UTC by default, as before 0.3.0 (date_bin from 2000-01-01). With `tz`, and
-- `origin` (an offset from local midnight, e.g. '18:00' for a futures day or '09:30'), a
-- day bucket is the local day from origin to origin, 23 or 25 hours long where the clock
-- changes, starting the first time the local clock shows its start (the first of a repeated
-- hour; the moment the clock jumps past a skipped one); a shorter bucket is a whole number of
-- steps of elapsed time from that day's start,
-- so it always lasts `bucket` (on a day the clock changes, a bucket that does not divide the
-- change keeps elapsed time, not the wall clock's labels).

CREATE TYPE bar AS (
    symbol      text,
    "timestamp" timestamptz,
    open        numeric,
    high        numeric,
    low         numeric,
    close       numeric,
    volume      bigint,
    trade_count bigint,
    vwap        numeric,
    data_source text,
    is_legacy   boolean,
    clock       text,    -- the database's bar clock (bar_clock()): ts_recv or ts_event
    filled      boolean  -- a bucket without trades, given by fill => 'null' or 'previous'
);

-- The instant a local wall time `w` first comes in `tz`: where the clock falls back and
-- repeats an hour, the first of the two; where it springs forward past `w`, the moment it
-- jumps. (`w AT TIME ZONE tz` alone takes the later reading in both cases, which would start a
-- day after trades that belong to it.)
CREATE OR REPLACE FUNCTION tradebars_internal.local_instant(w timestamp, tz text) RETURNS timestamptz
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
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
CREATE OR REPLACE FUNCTION tradebars_internal.local_day_starts(from_ts timestamptz, to_ts timestamptz, tz text, origin interval)
    RETURNS timestamptz[]
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$ SELECT ARRAY(
    SELECT tradebars_internal.local_instant(d + origin, tz)
    FROM generate_series(date_trunc('day', (from_ts AT TIME ZONE tz) - origin) - interval '1 day',
                         date_trunc('day', (to_ts AT TIME ZONE tz) - origin) + interval '1 day',
                         interval '1 day') AS d
    ORDER BY 1) $fn$;

-- The start of the bucket that holds `ts`: its day (the last of `day_starts` at or before it),
-- then whole steps of elapsed time from that day's start. Only built-in functions, so it is
-- inlined into bars()'s query (a SET search_path would prevent that).
CREATE OR REPLACE FUNCTION tradebars_internal.bar_bucket(ts timestamptz, step interval, day_starts timestamptz[])
    RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$ SELECT CASE WHEN step = interval '1 day' THEN day_starts[width_bucket(ts, day_starts)]
            ELSE day_starts[width_bucket(ts, day_starts)]
                 + floor(extract(epoch FROM ts - day_starts[width_bucket(ts, day_starts)])
                         / extract(epoch FROM step))::bigint * step END $fn$;

-- A session such as '09:30-16:00' as its local open and close times; NULL: the whole day.
CREATE OR REPLACE FUNCTION tradebars_internal.bar_session(session text, OUT opens time, OUT closes time)
    LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
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
CREATE OR REPLACE FUNCTION tradebars_internal.bar_hours(symbol text, from_ts timestamptz, to_ts timestamptz, step interval, plain boolean,
                          day_starts timestamptz[], tz text, opens time, closes time,
                          use_hours boolean,
                          OUT whole timestamptz[], OUT part_from timestamptz[],
                          OUT part_to timestamptz[])
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
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
        FROM @extschema@.hour_bars hb
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

-- The filters and the precedence bars() applies to the bars of price_bars. Bodies without a
-- SET clause, inlined into bars()'s queries, so the index scans of bars() see plain
-- expressions (a function with its own search_path would be called row by row, and the
-- backward scan for the close before the range must stop at once). Written as text, as every
-- SQL body of the extension: parsed when a query calls it, under that query's search_path
-- (bars()'s own), where a SQL-standard body would be bound once when the extension is created,
-- with the extension's schema on the path and whatever someone had put there.
CREATE OR REPLACE FUNCTION tradebars_internal.bar_is_shown(is_legacy boolean, data_source text, is_deleted boolean,
                                                           include_legacy boolean, include_deleted boolean)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $fn$ SELECT (include_legacy OR (NOT is_legacy AND data_source IN ('trades', 'ohlcv-1m')))
           AND (include_deleted OR NOT is_deleted) $fn$;

-- Whether `ts` is in the session [opens, closes) of the local day in `tz`; every time is when
-- `opens` is NULL (no session asked for).
CREATE OR REPLACE FUNCTION tradebars_internal.in_session(ts timestamptz, tz text, opens time, closes time)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $fn$ SELECT opens IS NULL
           OR ((ts AT TIME ZONE tz)::time >= opens AND (ts AT TIME ZONE tz)::time < closes) $fn$;

-- Which of a minute's bars bars() shows, lowest first: trades bars, then Databento's official
-- bars, then the old scanner's, then other legacy bars.
CREATE OR REPLACE FUNCTION tradebars_internal.bar_precedence(is_legacy boolean, data_source text)
    RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $fn$ SELECT CASE WHEN NOT is_legacy AND data_source = 'trades' THEN 0
                WHEN NOT is_legacy AND data_source = 'ohlcv-1m' THEN 1
                WHEN data_source = 'scanner' THEN 2 ELSE 3 END $fn$;

CREATE OR REPLACE FUNCTION bars(
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
) RETURNS SETOF @extschema@.bar
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
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
    IF bars.symbol IS NULL OR bars.start IS NULL OR bars."end" IS NULL OR bars.include_legacy IS NULL
       OR bars.include_deleted IS NULL OR bars.tz IS NULL OR bars.origin IS NULL OR bars.fill IS NULL THEN
        RAISE EXCEPTION 'bars: symbol, start, end, include_legacy, include_deleted, tz, origin and fill must not be NULL'
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
                   step >= interval '1 hour' AND NOT bars.include_legacy
                   AND NOT bars.include_deleted) h;
    -- the first whole minute in the range: minute bars start on the minute
    first_minute := date_bin(interval '1 minute', bars.start - interval '1 microsecond',
                             TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '1 minute';
    IF bars.fill <> 'none' THEN
        -- the close before the range (in the session), carried into its first empty buckets;
        -- without one, no empty bucket comes before the first bar (the filter of minute_bars)
        -- the latest such minute by a backward scan of the index, then its bar by precedence
        -- (ordering by precedence in one step would sort the symbol's whole history)
        SELECT p."timestamp" INTO seed_at
        FROM @extschema@.price_bars p
        WHERE p.symbol = bars.symbol AND p."timestamp" < bars.start
          AND bar_is_shown(p.is_legacy, p.data_source, p.deleted_at IS NOT NULL,
                           bars.include_legacy, bars.include_deleted)
          AND in_session(p."timestamp", bars.tz, hours.opens, hours.closes)
        ORDER BY p."timestamp" DESC
        LIMIT 1;
        SELECT p.close INTO seed
        FROM @extschema@.price_bars p
        WHERE p.symbol = bars.symbol AND p."timestamp" = seed_at
          AND bar_is_shown(p.is_legacy, p.data_source, p.deleted_at IS NOT NULL,
                           bars.include_legacy, bars.include_deleted)
        ORDER BY bar_precedence(p.is_legacy, p.data_source), p.data_source
        LIMIT 1;
        IF seed IS NULL THEN
            -- No close to carry into the range: no empty bucket comes before its first bar
            -- (of any source: never after the first one returned), so candidates start there.
            SELECT min(p."timestamp") INTO first_bar_at
            FROM @extschema@.price_bars p
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
        JOIN @extschema@.hour_bars hb ON hb.symbol = bars.symbol AND hb.hour = w.hour
        UNION ALL
        -- the rest of the range, minute by minute
        SELECT m.* FROM unnest(part_from, part_to) AS g(lo, hi)
        CROSS JOIN LATERAL (
        SELECT DISTINCT ON (p."timestamp")
               p."timestamp", p.open, p.high, p.low, p.close, p.volume::bigint AS volume,
               p.trade_count::bigint AS trade_count, p.notional, p.data_source,
               (p.is_legacy OR p.data_source NOT IN ('trades', 'ohlcv-1m')
                OR p.data_source IS NULL) AS legacy
        FROM @extschema@.price_bars p
        WHERE p.symbol = bars.symbol
          AND p."timestamp" >= g.lo AND p."timestamp" < g.hi
          AND bar_is_shown(p.is_legacy, p.data_source, p.deleted_at IS NOT NULL,
                           bars.include_legacy, bars.include_deleted)
          AND in_session(p."timestamp", bars.tz, hours.opens, hours.closes)
        ORDER BY p."timestamp", bar_precedence(p.is_legacy, p.data_source), p.data_source
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
          AND in_session(g, bars.tz, hours.opens, hours.closes)
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
           b.data_source, b.legacy, tradebars_internal.bar_clock(), false
    FROM buckets b
    WHERE bars.fill = 'none'
    UNION ALL
    SELECT bars.symbol, f.t,
           CASE WHEN NOT f.is_fill THEN f.open WHEN bars.fill = 'previous' THEN f.previous END,
           CASE WHEN NOT f.is_fill THEN f.high WHEN bars.fill = 'previous' THEN f.previous END,
           CASE WHEN NOT f.is_fill THEN f.low WHEN bars.fill = 'previous' THEN f.previous END,
           CASE WHEN NOT f.is_fill THEN f.close WHEN bars.fill = 'previous' THEN f.previous END,
           coalesce(f.volume, 0), coalesce(f.trade_count, 0), f.vwap,
           f.data_source, coalesce(f.legacy, false), tradebars_internal.bar_clock(), f.is_fill
    FROM filled f
    -- never a bar before the symbol's first trade: an empty bucket needs a close before it
    WHERE bars.fill <> 'none' AND (NOT f.is_fill OR f.previous IS NOT NULL)
    ORDER BY 2;
END
$fn$;
COMMENT ON FUNCTION bars(text, timestamptz, timestamptz, boolean, interval, boolean, text, interval, text, text) IS
    'tradebars: bars of one symbol in [start, end): trades bars win over official (ohlcv-1m), those over legacy bars; bucket from 1 minute to 1 day, in tz from origin, within session, gaps filled as asked';

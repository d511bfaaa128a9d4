-- Functions that others create in the extension's schema never stand in for its helpers: a
-- role that may create objects in public (PostgreSQL 15 does not grant it; many sites do)
-- writes functions with the names and arguments of internal helpers, and the DBA's calls
-- still reach the extension's own (no search_path of the extension holds public; see planted.sql).
CREATE EXTENSION tradebars;
CREATE ROLE tradebars_shadow;
GRANT CREATE ON SCHEMA public TO tradebars_shadow;
SET ROLE tradebars_shadow;
CREATE FUNCTION public.require_argument(caller text, name text, given text, valid boolean, expected text)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'shadow require_argument ran as %', current_user; END $$;
CREATE FUNCTION public.price_bars_is_ready() RETURNS boolean
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'shadow price_bars_is_ready ran as %', current_user; END $$;
CREATE FUNCTION public.require_price_bars_ready(caller text) RETURNS void
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'shadow require_price_bars_ready ran as %', current_user; END $$;
CREATE FUNCTION public.checked_bucket(bucket interval) RETURNS interval
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'shadow checked_bucket ran as %', current_user; END $$;
RESET ROLE;
-- each call fails or succeeds as it would without the shadows
SELECT f, error_of(f) FROM (VALUES
    ($$SELECT set_bar_clock('bogus')$$),
    ($$SELECT set_bar_clock('ts_recv')$$),
    ($$SELECT restore_legacy(NULL)$$),
    ($$SELECT rollback_trades(NULL)$$),
    ($$SELECT soft_delete_legacy()$$),
    ($$SELECT count(*) FROM bars('X', '2025-01-01', '2025-01-02')$$),
    ($$SELECT count(*) FROM bars('X', '2025-01-01', '2025-01-02', bucket => '7 seconds')$$),
    ($$SELECT bars_rollup()$$)
) AS t(f);
DROP FUNCTION public.require_argument(text, text, text, boolean, text);
DROP FUNCTION public.price_bars_is_ready();
DROP FUNCTION public.require_price_bars_ready(text);
DROP FUNCTION public.checked_bucket(interval);
REVOKE CREATE ON SCHEMA public FROM tradebars_shadow;
DROP ROLE tradebars_shadow;
DROP EXTENSION tradebars;

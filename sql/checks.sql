-- Input checks shared by the SQL API (the ones written in Rust are in extension/src/checks.rs):
-- one clear error, raised before anything changes.

-- Refuses an argument that is NULL (SQLSTATE 22004) or not valid (22023). `given` is the
-- argument as the error shows it, `valid` whether it is acceptable, and `expected` what is.
CREATE OR REPLACE FUNCTION tradebars_internal.require_argument(caller text, name text, given text, valid boolean, expected text)
    RETURNS void
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, tradebars_internal, pg_temp
AS $fn$
BEGIN
    IF given IS NULL THEN
        RAISE EXCEPTION '%: % must not be NULL (%)', caller, name, expected
            USING ERRCODE = 'null_value_not_allowed';
    ELSIF NOT valid THEN
        RAISE EXCEPTION '%: % must be %, not %', caller, name, expected, given
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$fn$;

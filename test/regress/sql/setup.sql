-- Shared by the SQL tests that follow (test/regress/regress_schedule runs this first): the
-- SQLSTATE and message of a statement that fails, or 'no error'.
CREATE FUNCTION error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

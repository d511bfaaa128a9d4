//! `bars()`: the query behind the app's `/bars/{symbol}` endpoint, in `sql/bars.sql`: per
//! minute the trades bar (then the old scanner's, then legacy, if asked for), bucketed in UTC
//! or in a time zone from a local origin, within a session, with gaps filled as asked.

pgrx::extension_sql_file!(
    "../../sql/bars.sql",
    name = "bars_query",
    requires = ["migration_legacy", "tradebars_identity", checked_bucket],
);

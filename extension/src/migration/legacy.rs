//! Phase 1 of the plan: an existing `price_bars` learns what trades bars need, and its bars
//! are marked legacy. Legacy and trades bars of the same symbol and minute coexist: the unique
//! key becomes (symbol, timestamp, data_source), never an overwrite of a legacy bar.

pgrx::extension_sql_file!(
    "../../../sql/migration_legacy.sql",
    name = "migration_legacy",
    requires = ["tradebars_schema"],
);

//! Least-privilege roles: the feeder may only stage trades, keep its ledger and heartbeat,
//! and call the rollup; a reader may only read bars. Roles are cluster-wide, so they are
//! created only where missing and left in place by DROP EXTENSION.

pgrx::extension_sql_file!(
    "../../sql/roles.sql",
    name = "roles",
    requires = [
        "migration_archive",
        "migration_verify",
        "bars_query",
        "staging_functions",
        "tradebars_identity",
        "official_bars",
        "hour_bars",
        bars_rollup
    ],
);

//! tradebars: exact 1-minute OHLCV bars from Databento trades, inside PostgreSQL.
//!
//! The way a trade travels here: staging (schema.sql, staging.rs) -> rollup.rs (using the
//! ohlcv aggregate of ohlc.rs) -> price_bars -> bars.rs; migration/ holds the DBA's
//! functions for moving from the old quote-built bars, roles.rs the least-privilege roles.

pgrx::pg_module_magic!(name, version);

pub mod bars;
pub mod checks;
pub mod migration;
pub mod ohlc;
pub mod roles;
pub mod rollup;
pub mod staging;

pgrx::extension_sql_file!("../../sql/schema.sql", name = "tradebars_schema", bootstrap);

/// The schema of the internal helpers, named so that functions in Rust can be put there
/// (`schema = "tradebars_internal"`); sql/schema.sql creates it, first.
#[pgrx::pg_schema]
mod tradebars_internal {}
// Databento's official OHLCV-1m bars, loaded as history (the feeder's replay).
pgrx::extension_sql_file!(
    "../../sql/official.sql",
    name = "official_bars",
    requires = [
        "tradebars_schema",
        "staging_functions",
        "migration_legacy",
        "tradebars_identity"
    ]
);
// The hours of the bars, summed for bars() over long ranges; kept by the rollup.
pgrx::extension_sql_file!(
    "../../sql/hours.sql",
    name = "hour_bars",
    requires = ["tradebars_schema", "migration_legacy"]
);
pgrx::extension_sql_file!(
    "../../sql/identity.sql",
    name = "tradebars_identity",
    requires = ["tradebars_schema", "migration_legacy", "argument_checks"]
);

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

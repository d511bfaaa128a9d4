//! Staging as the feeder sees it: which slot to COPY into, and fixed-point prices.

pgrx::extension_sql_file!(
    "../../sql/staging.sql",
    name = "staging_functions",
    requires = ["tradebars_schema"],
);

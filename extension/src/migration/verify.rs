//! Phases 5 and 6 of the plan: what is where, legacy against new coverage, and the plan's
//! success criteria, each measured.

pgrx::extension_sql_file!(
    "../../../sql/migration_verify.sql",
    name = "migration_verify",
    requires = [
        "migration_legacy",
        "bars_query",
        "tradebars_identity",
        checked_age
    ],
);

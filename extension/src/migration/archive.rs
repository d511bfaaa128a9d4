//! Phase 7 of the plan and the way back: soft delete (option A), archive (option B), hard
//! delete (option C), restore, and the rollback of trades bars. Nothing here deletes a legacy
//! bar that is not held in the archive or a named backup table, unless the DBA confirms.

pgrx::extension_sql_file!(
    "../../../sql/migration_archive.sql",
    name = "migration_archive",
    requires = ["migration_legacy", "tradebars_identity", checked_age],
);

//! The commands, one module each; what the loads share (their progress bars, their summary
//! phrases, the rollup after them, and the way they hold the feeder lock) is here.

pub mod backfill;
pub mod generate;
pub mod live;
pub mod ping;
pub mod replay;

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use crate::config::LoadArgs;
use crate::db;
use crate::error::FeederError;
use crate::lock::{self, FeederLock};
use crate::shutdown;
use crate::source::Summary;
use crate::APP;

/// A progress bar on a terminal, none otherwise (a log or a pipe gets the summary only).
pub fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {{msg}} [{{bar:30}}] {{percent}}% {{{unit}}} ({{eta}} left)"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style)
}

/// The records that are no trades, by kind, or "none".
pub fn describe_skipped(summary: &Summary) -> String {
    if summary.skipped.is_empty() {
        return "none".into();
    }
    summary
        .skipped
        .iter()
        .map(|(kind, n)| format!("{n} {}", kind.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "N trades already counted (overlap with ...)", when there were any.
pub fn overlap_suffix(summary: &Summary) -> String {
    summary
        .overlap_note()
        .map(|n| format!("; {n}"))
        .unwrap_or_default()
}

/// `bars_rollup()`, and what it did.
pub async fn rollup(client: &Client) -> Result<(), FeederError> {
    let row = client
        .query_one("SELECT * FROM bars_rollup()", &[])
        .await
        .map_err(|e| FeederError::db("bars_rollup()", e))?;
    println!(
        "rollup: {} trades rolled up into {} bars written, {} trades rejected (see trades_rejected)",
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2)
    );
    Ok(())
}

/// The one way replay and backfill load: connect, take the feeder lock as `mode`, `load`,
/// record a failure where a DBA (and migration_check()) sees it, roll up when asked and
/// all went well, and give the lock back. SIGTERM or SIGINT, at any moment of it (standing
/// by included), abandons the work in progress and exits 0: each load is one transaction
/// and trade identity makes a rerun load only what is missing, so nothing is lost or
/// counted twice.
pub async fn load_holding_the_lock(
    args: &LoadArgs,
    mode: &str,
    load: impl AsyncFnOnce(&mut FeederLock) -> Result<(), FeederError>,
) -> Result<(), FeederError> {
    let stop = shutdown::on_signal("");
    tokio::select! {
        result = hold_the_lock_and_load(args, mode, load) => result,
        _ = stop.cancelled() => Err(FeederError::Stopped(format!(
            "during {mode}: the load in progress was abandoned, and PostgreSQL keeps nothing of \
             it unless its commit had already reached the server; the same command again loads \
             what is missing, once"
        ))),
    }
}

async fn hold_the_lock_and_load(
    args: &LoadArgs,
    mode: &str,
    load: impl AsyncFnOnce(&mut FeederLock) -> Result<(), FeederError>,
) -> Result<(), FeederError> {
    let client = db::connect(&args.db.database_url, APP).await?;
    let mut db = lock::acquire(client, mode, args.standby).await?;
    let mut result = load(&mut db).await;
    match &result {
        Err(e) => lock::report_error(&db, &e.to_string()).await,
        Ok(()) if args.rollup => result = rollup(&db).await,
        Ok(()) => {}
    }
    db.release().await;
    result
}

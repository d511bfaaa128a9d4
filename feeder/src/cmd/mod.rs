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
use crate::overlap::{self, Pieces, Roller, Totals};
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
    let (trades, bars, rejected) = overlap::rollup_once(client).await?;
    print_rollup(trades, bars, rejected, "");
    Ok(())
}

fn print_rollup(trades: i64, bars: i64, rejected: i64, how: &str) {
    println!(
        "rollup: {trades} trades rolled up into {bars} bars written{how}, {rejected} trades rejected (see trades_rejected)"
    );
}

/// What the rollups beside a load did (`--rollup`).
fn print_totals(totals: &Totals) {
    let how = if totals.rollups > 1 {
        format!(
            " by {} rollups while loading (a bar two of them wrote counts twice)",
            totals.rollups
        )
    } else {
        String::new()
    };
    print_rollup(totals.trades, totals.bars, totals.rejected, &how);
}

/// The one way replay and backfill load: connect, take the feeder lock as `mode`, `load`,
/// record a failure where a DBA (and migration_check()) sees it, and give the lock back.
/// With `--rollup`, bars_rollup() runs beside the load on a connection of its own, after
/// every commit (overlap.rs), and once more at the end. SIGTERM or SIGINT, at any moment of
/// it (standing by included), abandons the work in progress and exits 0: what was committed
/// is counted once by trade identity, so a rerun loads only what is missing, once.
pub async fn load_holding_the_lock(
    args: &LoadArgs,
    mode: &str,
    load: impl AsyncFnOnce(&mut FeederLock, &Pieces) -> Result<(), FeederError>,
) -> Result<(), FeederError> {
    let stop = shutdown::on_signal("");
    tokio::select! {
        result = hold_the_lock_and_load(args, mode, load) => result,
        _ = stop.cancelled() => Err(FeederError::Stopped(format!(
            "during {mode}: the load in progress was abandoned, and PostgreSQL keeps nothing of \
             it (under --rollup: of its piece in progress; the pieces committed before it stay \
             staged until the next rollup) unless its commit had already reached the server; \
             the same command again loads what is missing, once"
        ))),
    }
}

async fn hold_the_lock_and_load(
    args: &LoadArgs,
    mode: &str,
    load: impl AsyncFnOnce(&mut FeederLock, &Pieces) -> Result<(), FeederError>,
) -> Result<(), FeederError> {
    let client = db::connect(&args.db.database_url, APP).await?;
    let mut db = lock::acquire(client, mode, args.standby).await?;
    let roller = match args.rollup {
        true => Some(Roller::start(&args.db.database_url, args.piece_trades).await?),
        false => None,
    };
    let no_pieces = Pieces::default();
    let pieces = roller.as_ref().map_or(&no_pieces, Roller::pieces);
    let loaded = load(&mut db, pieces).await;
    if let Err(e) = &loaded {
        lock::report_error(&db, &e.to_string()).await;
    }
    let result = match roller {
        Some(roller) => finish_rollups(roller, loaded).await,
        None => loaded,
    };
    db.release().await;
    result
}

/// The last rollup after the load, and what they all did (also when one failed, or the load
/// did); the load's own error comes first.
async fn finish_rollups(
    roller: Roller,
    loaded: Result<(), FeederError>,
) -> Result<(), FeederError> {
    let (totals, rolled) = roller.finish().await;
    if (loaded.is_ok() && rolled.is_ok()) || totals.trades + totals.rejected > 0 {
        print_totals(&totals);
    }
    loaded.and(rolled)
}

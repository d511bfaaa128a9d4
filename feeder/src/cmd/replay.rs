//! `tradebars-feeder replay`: DBN files into staging (trades) or price_bars (official bars).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::cmd::{describe_skipped, load_holding_the_lock, overlap_suffix, progress_bar};
use crate::config::ReplayArgs;
use crate::error::FeederError;
use crate::lock;
use crate::overlap::Pieces;
use crate::sink;
use crate::source::file::DbnFile;
use crate::source::official::OFFICIAL_SCHEMA;

pub async fn run(args: ReplayArgs) -> Result<(), FeederError> {
    preflight(&args.files)?;
    let (files, force) = (&args.files, args.load.force);
    load_holding_the_lock(&args.load, "replay", async |db, pieces| {
        for path in files {
            let (received, written) = replay_file(db, path, force, pieces).await?;
            lock::report(db, received as i64, written as i64).await?;
        }
        Ok(())
    })
    .await
}

/// Checks every file's schema before loading any, so a wrong file in the list loads nothing.
fn preflight(files: &[PathBuf]) -> Result<(), FeederError> {
    files
        .iter()
        .try_for_each(|path| DbnFile::open(path)?.check().map(|_| ()))
}

/// The decoder stopped without saying why (it sends its errors down the channel).
fn decoding_stopped(file: &Path) -> FeederError {
    FeederError::Decode {
        file: file.to_path_buf(),
        msg: "decoding stopped".into(),
        source: None,
    }
}

/// Loads one file; returns the trades (or bars) read and written.
async fn replay_file(
    client: &mut Client,
    path: &Path,
    force: bool,
    pieces: &Pieces,
) -> Result<(u64, u64), FeederError> {
    let file = DbnFile::open(path)?;
    let checked = file.check()?;
    if checked.official {
        return replay_official(client, file).await;
    }
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let load = sink::Load {
        kind: "file",
        label: &label,
        from: checked.from,
        to: checked.to,
        force,
        pieces,
    };
    let (bar, ticker) = show_progress(&file, pieces);
    let loaded = stage_file(client, &load, &file).await;
    ticker.abort();
    bar.finish_and_clear();
    let s = loaded?;
    let in_pieces = match s.pieces {
        0 | 1 => String::new(),
        n => format!(" in {n} pieces"),
    };
    println!(
        "{}: {} records read, {} trades staged{in_pieces} ({} without a symbol mapping){}; not trades: {}",
        path.display(),
        s.records,
        s.staged,
        s.unmapped_trades,
        overlap_suffix(&s),
        describe_skipped(&s)
    );
    Ok((s.trades, s.staged))
}

/// A progress bar of the bytes read (and, under `--rollup`, of the trades rolled up), and
/// the task that moves it.
fn show_progress(file: &DbnFile, pieces: &Pieces) -> (indicatif::ProgressBar, JoinHandle<()>) {
    let bar = progress_bar(file.size, "bytes");
    let name = file.path.display().to_string();
    bar.set_message(name.clone());
    let bytes_read = file.bytes_read.clone();
    let ticker = {
        let (bar, pieces) = (bar.clone(), pieces.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(bytes_read.load(Ordering::Relaxed));
                if let Some(trades) = pieces.rolled_up() {
                    bar.set_message(format!("{name} ({trades} trades rolled up)"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    (bar, ticker)
}

/// The file's trades into staging, decoded on a blocking thread for each identity the load
/// meets.
async fn stage_file(
    client: &mut Client,
    load: &sink::Load<'_>,
    file: &DbnFile,
) -> Result<crate::source::Summary, FeederError> {
    sink::load_source(client, load, |identity| {
        let (tx, rx) = mpsc::channel(8);
        let reader = file.clone();
        let size = load.pieces.size();
        let decoder = tokio::task::spawn_blocking(move || reader.decode_into(identity, size, tx));
        let path = file.path.clone();
        let end = async move {
            let (summary, changes) = decoder
                .await
                .ok()
                .flatten()
                .ok_or_else(|| decoding_stopped(&path))?;
            Ok(sink::SourceEnd {
                ledger_id: summary.source_id.clone(),
                summary,
                changes,
            })
        };
        (rx, end)
    })
    .await
}

/// Loads a file of Databento's official minute bars into price_bars (not staging).
async fn replay_official(client: &mut Client, file: DbnFile) -> Result<(u64, u64), FeederError> {
    let (tx, rx) = mpsc::channel(8);
    let reader = file.clone();
    let decoder = tokio::task::spawn_blocking(move || reader.decode_official_into(tx));
    let path = file.path.clone();
    let end = async move {
        decoder
            .await
            .ok()
            .flatten()
            .ok_or_else(|| decoding_stopped(&path))
    };
    let schema = OFFICIAL_SCHEMA.to_string();
    let (loaded, summary) = sink::load_official(client, &schema, rx, end).await?;
    println!(
        "{}: {} records read, {} official {schema} bars written to price_bars ({} without a symbol mapping, {} rejected in all)",
        file.path.display(),
        summary.records,
        loaded.written,
        summary.unmapped,
        loaded.rejected
    );
    Ok((summary.bars, u64::try_from(loaded.written).unwrap_or(0)))
}

//! `tradebars-feeder generate`: a synthetic day of trades into a DBN file.

use crate::cmd::progress_bar;
use crate::config::GenerateArgs;
use crate::error::FeederError;
use crate::source::generate::{self, GenerateSpec, DATASET};

/// Writes the file on a blocking thread: generating is all CPU and file writes.
pub async fn run(args: GenerateArgs) -> Result<(), FeederError> {
    tokio::task::spawn_blocking(move || write(args))
        .await
        .map_err(|e| FeederError::internal("generator stopped", e))?
}

fn write(args: GenerateArgs) -> Result<(), FeederError> {
    let spec = GenerateSpec {
        symbols: args.symbols,
        trades: args.trades,
        seed: args.seed,
        date: args.date,
    };
    let bar = progress_bar(args.trades, "pos");
    bar.set_message("generating");
    let made = generate::generate(&spec, &args.out, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    println!(
        "{}: {} trades of {} symbols ({} {}), {} to {} UTC",
        args.out.display(),
        made.trades,
        made.symbols,
        DATASET,
        args.date,
        fmt_ns(made.first_ts),
        fmt_ns(made.last_ts)
    );
    Ok(())
}

/// A time of day (UTC) to the second, from ns since the epoch.
fn fmt_ns(ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns));
    match t {
        Ok(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        Err(_) => ns.to_string(),
    }
}

//! tradebars-feeder: Databento trades -> source -> COPY -> staging -> bars_rollup().

mod backoff;
mod cmd;
mod config;
mod copy;
mod coverage;
mod db;
mod error;
mod identity;
mod lock;
mod metrics;
mod overlap;
mod schedule;
mod service;
mod shutdown;
mod sink;
mod source;
mod status;
mod trade;
mod watch;

use clap::Parser;

use config::{Cli, Command, LogFormat};
use error::FeederError;

/// The feeder's name: in its messages, and as PostgreSQL's application_name.
pub const APP: &str = "tradebars-feeder";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The databento client's own log names a client by the last characters of its key;
        // the feeder reports every failure itself, so by default that log is silent.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,databento=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<(), FeederError> {
    match cli.command {
        Command::Backfill(args) => cmd::backfill::run(args).await,
        Command::Live(args) => cmd::live::run(args).await,
        Command::Replay(args) => cmd::replay::run(args).await,
        Command::Generate(args) => cmd::generate::run(args).await,
        Command::Rollup(args) => cmd::rollup(&db::connect(&args.database_url, APP).await?).await,
        Command::Status(args) => {
            status::run(&db::connect(&args.db.database_url, APP).await?, args.watch).await
        }
        Command::Ping(args) => cmd::ping::run(&args.database_url).await,
        Command::Watch(args) => watch::run(args, APP).await,
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => {}
        Err(e @ FeederError::Stopped(_)) => tracing::info!("{e}; the next start resumes"),
        Err(e) => {
            eprintln!("{APP}: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

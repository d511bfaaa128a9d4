//! Command-line flags and environment, validated once. The database URL may carry a
//! password: it is read from DATABASE_URL (or --database-url) and never printed.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tradebars-feeder",
    // the tradebars release (the extension's version, see build.rs), as the package names it
    version = env!("TRADEBARS_VERSION"),
    about = "Streams Databento trades into the tradebars staging table of PostgreSQL",
    long_about = "Streams Databento trades into the tradebars staging table of PostgreSQL, where the \
                  tradebars extension's bars_rollup() turns them into exact 1-minute OHLCV bars.\n\n\
                  Exit codes: 0 done, 1 failed (the message says what and where), 2 bad usage, \
                  3 another feeder already feeds the database, 4 Databento refused the API key."
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load trades from DBN files into staging (each file whole and exactly once).
    ///
    /// Reads DBN versions 1-3, plain or zstd, of schema trades, tbbo, mbp-1 or mbo. Only trade
    /// events count: every TRADES record and the 'T' records of the others (MBO fills are the
    /// resting side of a trade and are not counted again). Symbols come from the file's
    /// symbology. A file already loaded (same content) is skipped.
    ///
    /// An ohlcv-1m file (Databento's own minute bars) goes straight into price_bars as
    /// data_source 'ohlcv-1m', history where no trades were loaded; loading it again changes
    /// nothing. Hourly and daily bars are refused: price_bars holds minute bars.
    Replay(ReplayArgs),
    /// Stream trades from Databento's live gateway into staging, as a service.
    ///
    /// Batches go to staging by size and time with binary COPY, and bars_rollup() runs on an
    /// interval. After any disconnect the feeder resubscribes with an intraday replay from
    /// where staging stands, skipping what is already staged: no gap, no duplicate. A refused
    /// key exits at once with code 4. SIGTERM or SIGINT: flush, roll up, release the lock,
    /// exit 0. Only one feeder runs per database.
    Live(LiveArgs),
    /// Backfill a time range from Databento's historical API into staging, resumably.
    ///
    /// The range is fetched in chunks; each chunk is staged whole, in one transaction with its
    /// ledger entry, so a second run skips the chunks already staged. With --schema mbp-1 the
    /// trades are re-derived from the quote feed's trade events, for a period that only has
    /// legacy bars. With --schema ohlcv-1m, Databento's own minute bars go straight into
    /// price_bars as data_source 'ohlcv-1m' (history where no trades were loaded); each chunk
    /// is merged whole, and fetching it again changes nothing.
    Backfill(BackfillArgs),
    /// Write a synthetic TRADES file (real DBN with symbology) for demos and benchmarks.
    Generate(GenerateArgs),
    /// Roll staged trades into bars once: SELECT * FROM bars_rollup().
    Rollup(DbArgs),
    /// Show bars by source, the pipeline, the feeder and the migration's success criteria.
    Status(StatusArgs),
    /// Print bars as rollups change them, until interrupted (SIGTERM or SIGINT: exit 0).
    ///
    /// Listens on the channel tradebars_bars, which each rollup that changes bars notifies,
    /// and asks bars_changed_since() for every bar changed since the last one printed: a
    /// missed notification or a lost connection (opened again) loses no bar. One line per bar:
    /// rollup id, symbol, minute (UTC), open, high, low, close, volume, trades, vwap.
    Watch(WatchArgs),
    /// Connect to PostgreSQL as the other commands do, and say how: server version, user, TLS.
    ///
    /// Checks a database URL and its TLS settings (sslmode, sslrootcert, sslcert, sslkey in the
    /// URL or PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY) without touching any table.
    Ping(DbArgs),
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL (postgres://user@host:port/db?sslmode=verify-full&sslrootcert=ca.crt).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Where a load goes and what follows it.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Roll staged trades into bars while loading: bars_rollup() runs on a second connection
    /// after every commit (each backfill chunk, each piece of a large file) and once at the
    /// end. A file is then staged in pieces (see --piece-trades), each committed whole: if the
    /// load fails or is killed, the pieces before stay staged and count once, and the same
    /// command again loads and rolls up the rest.
    #[arg(long)]
    pub rollup: bool,
    /// With --rollup: the trades of a file's piece (about; a piece ends with a full COPY chunk).
    #[arg(long, requires = "rollup", default_value_t = crate::overlap::PIECE_TRADES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub piece_trades: u64,
    /// If another feeder holds the database, wait for it instead of failing.
    #[arg(long)]
    pub standby: bool,
    /// Load even into a period whose trade identity was pruned (see prune_trade_identity())
    /// while trades bars exist there: trades already counted there would count twice.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// DBN files to load, in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// What to ask Databento for, and with which key.
#[derive(Debug, Args)]
pub struct DatabentoArgs {
    /// Databento dataset, e.g. XNAS.ITCH or GLBX.MDP3.
    #[arg(long)]
    pub dataset: String,
    /// Symbols, comma-separated (raw symbols).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_symbol,
        required_unless_present = "all_symbols",
        conflicts_with = "all_symbols"
    )]
    pub symbols: Vec<String>,
    /// Every symbol of the dataset.
    #[arg(long)]
    pub all_symbols: bool,
    /// Schema: trades, tbbo, mbp-1 or mbo (only trade events count); for backfill also
    /// ohlcv-1m, Databento's own minute bars, loaded into price_bars as data_source 'ohlcv-1m'.
    #[arg(long, default_value = "trades", value_parser = parse_source_schema)]
    pub schema: dbn::Schema,
    /// File holding the API key (instead of DATABENTO_API_KEY).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

impl DatabentoArgs {
    /// The symbols asked for; `None` means every symbol.
    pub fn symbol_list(&self) -> Option<Vec<String>> {
        (!self.all_symbols).then(|| self.symbols.clone())
    }

    /// The API key: from --key-file, else DATABENTO_API_KEY. Never printed.
    /// A key that cannot be one (Databento's are 32 characters) is a usage error: nothing is
    /// sent, so Databento has refused nothing.
    pub fn api_key(&self) -> Result<String, crate::error::FeederError> {
        use crate::error::FeederError;
        let (key, from) = match &self.key_file {
            Some(path) => (
                std::fs::read_to_string(path)
                    .map(|k| k.trim().to_string())
                    .map_err(|e| FeederError::io(path, e))?,
                path.display().to_string(),
            ),
            None => (
                std::env::var("DATABENTO_API_KEY").map_err(|_| {
                    FeederError::Usage(
                        "no Databento API key: set DATABENTO_API_KEY or pass --key-file".into(),
                    )
                })?,
                "DATABENTO_API_KEY".to_string(),
            ),
        };
        if key.chars().count() != 32 {
            return Err(FeederError::Usage(format!(
                "the Databento API key in {from} is not one: {} characters where Databento's have 32; nothing was sent",
                key.chars().count()
            )));
        }
        Ok(key)
    }
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    #[command(flatten)]
    pub source: DatabentoArgs,
    /// A gateway other than Databento's own, as HOST:PORT (a proxy, a test gateway).
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    /// Commit a batch once it holds this many trades...
    #[arg(long, default_value_t = 50_000)]
    pub batch_size: usize,
    /// ...or once its first trade waited this long (milliseconds).
    #[arg(long, default_value_t = 200)]
    pub batch_ms: u64,
    /// Call bars_rollup() after each batch commits, and at least this often (milliseconds,
    /// 10 or more); batches that commit while a rollup runs are rolled up together by the
    /// next.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub rollup_ms: u64,
    /// On a stop, the longest the last bars_rollup() may take, a wait for another session's
    /// rollup included (seconds). Trades it does not roll up stay staged for the next
    /// rollup; systemd's TimeoutStopSec in the unit allows 30 s for the whole stop. At most
    /// 2147483 (PostgreSQL's statement_timeout, in milliseconds, is an int).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=2_147_483))]
    pub final_rollup_secs: u64,
    /// After a disconnect, replay from this many seconds before the last staged trade's
    /// receipt: the longest a trade may take from event to receipt without a gap.
    #[arg(long, default_value_t = 10)]
    pub replay_margin_secs: u64,
    /// Serve /health and /metrics (Prometheus) on this address, e.g. 127.0.0.1:9187.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// If another feeder holds the database, wait for it instead of failing.
    #[arg(long)]
    pub standby: bool,
}

/// A schema of trades, or Databento's official minute bars (backfill only; live refuses it).
fn parse_source_schema(s: &str) -> Result<dbn::Schema, String> {
    let schema: dbn::Schema = s
        .parse()
        .map_err(|_| format!("{s:?} is not a Databento schema"))?;
    match schema {
        dbn::Schema::Trades
        | dbn::Schema::Tbbo
        | dbn::Schema::Mbp1
        | dbn::Schema::Mbo
        | dbn::Schema::Ohlcv1M => Ok(schema),
        dbn::Schema::Ohlcv1S | dbn::Schema::Ohlcv1H | dbn::Schema::Ohlcv1D => Err(format!(
            "schema {schema}: price_bars holds minute bars; load Databento's bars as ohlcv-1m"
        )),
        other => Err(format!(
            "schema {other} carries no trade events (use trades, tbbo, mbp-1 or mbo, or ohlcv-1m for official bars)"
        )),
    }
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub source: DatabentoArgs,
    /// Start of the range (inclusive), RFC 3339 (2025-10-24T14:30:00Z) or a date (UTC midnight).
    #[arg(long, value_parser = parse_instant)]
    pub start: time::OffsetDateTime,
    /// End of the range (exclusive), same forms as --start.
    #[arg(long, value_parser = parse_instant)]
    pub end: time::OffsetDateTime,
    /// Length of one chunk, in minutes.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_minutes: u32,
    /// A historical API other than Databento's own (a proxy, a test server).
    #[arg(long, value_name = "URL")]
    pub historical_url: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

fn parse_instant(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .or_else(|_| parse_date(s).map(|d| d.midnight().assume_utc()))
        .map_err(|_| {
            format!("{s:?} is neither RFC 3339 (2025-10-24T14:30:00Z) nor a date (2025-10-24)")
        })
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of symbols (the first is WGRX).
    #[arg(long, default_value_t = 50)]
    pub symbols: usize,
    /// Number of trades.
    #[arg(long, default_value_t = 100_000)]
    pub trades: u64,
    /// Output file; a name ending in .zst is zstd-compressed.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random generator: the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trading day (UTC date, YYYY-MM-DD); trades fall in 14:30-21:00 UTC.
    #[arg(long, default_value = "2025-10-24", value_parser = parse_date)]
    pub date: time::Date,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Print again every SECONDS seconds until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only these symbols, comma-separated; every symbol when absent.
    #[arg(long, value_delimiter = ',', value_parser = parse_symbol)]
    pub symbols: Vec<String>,
    /// First print the bars changed after this rollup (0: every bar a 0.3.0 rollup wrote); without
    /// it, only bars changed from now on.
    #[arg(long, value_name = "ROLLUP_ID", value_parser = clap::value_parser!(i64).range(0..))]
    pub since: Option<i64>,
}

fn parse_symbol(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("a symbol must not be empty".into());
    }
    Ok(s.to_string())
}

fn parse_date(s: &str) -> Result<time::Date, String> {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("{s:?} is not a date like 2025-10-24 ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_schemas_with_trades_or_minute_bars_are_accepted() {
        assert_eq!(parse_source_schema("mbp-1"), Ok(dbn::Schema::Mbp1));
        assert_eq!(parse_source_schema("ohlcv-1m"), Ok(dbn::Schema::Ohlcv1M));
        assert!(parse_source_schema("ohlcv-1h")
            .unwrap_err()
            .contains("minute bars"));
        assert!(parse_source_schema("definition").is_err());
        assert!(parse_source_schema("nonsense").is_err());
    }

    #[test]
    fn instants_are_rfc3339_or_dates() {
        assert_eq!(
            parse_instant("2025-10-24T14:30:00Z"),
            Ok(time::macros::datetime!(2025-10-24 14:30 UTC))
        );
        assert_eq!(
            parse_instant("2025-10-24"),
            Ok(time::macros::datetime!(2025-10-24 0:00 UTC))
        );
        assert!(parse_instant("yesterday").is_err());
    }

    /// `live` with its required arguments and `option value`.
    fn live_with(option: &str, value: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([
            "tradebars-feeder",
            "live",
            "--symbols",
            "ESH4",
            "--dataset",
            "XNAS.ITCH",
            "--database-url",
            "postgres://localhost/x",
            option,
            value,
        ])
    }

    #[test]
    fn a_rollup_interval_under_10_ms_is_refused() {
        let live = |ms| live_with("--rollup-ms", ms);
        let err = live("0").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--rollup-ms"), "{err}");
        assert!(live("9").is_err());
        assert!(live("10").is_ok());
    }

    #[test]
    fn a_final_rollup_limit_postgresql_cannot_set_is_refused() {
        let live = |secs| live_with("--final-rollup-secs", secs);
        assert!(live("2147483").is_ok());
        assert!(live("2147484").is_err());
        assert!(live("0").is_err());
    }

    #[test]
    fn dates_are_checked() {
        assert!(parse_date("2025-10-24").is_ok());
        assert!(parse_date("24/10/2025").is_err());
    }
}

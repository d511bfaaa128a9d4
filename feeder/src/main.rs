//! tradebars-feeder: Databento trades -> source -> COPY -> staging -> bars_rollup().

mod config;
mod copy;
mod coverage;
mod db;
mod error;
mod identity;
mod lock;
mod metrics;
mod schedule;
mod service;
mod sink;
mod source;
mod status;
mod trade;
mod watch;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use config::{BackfillArgs, Cli, Command, GenerateArgs, LiveArgs, LogFormat, ReplayArgs};
use error::FeederError;
use source::file::DbnFile;
use source::Summary;

const APP: &str = "tradebars-feeder";

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

fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {{msg}} [{{bar:30}}] {{percent}}% {{{unit}}} ({{eta}} left)"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style)
}

fn describe_skipped(summary: &Summary) -> String {
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
fn overlap_suffix(summary: &Summary) -> String {
    summary
        .overlap_note()
        .map(|n| format!("; {n}"))
        .unwrap_or_default()
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
            .ok_or_else(|| FeederError::Decode {
                file: path,
                msg: "decoding stopped".into(),
            })
    };
    let schema = source::official::OFFICIAL_SCHEMA.to_string();
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

async fn replay_file(
    client: &mut Client,
    path: &Path,
    force: bool,
) -> Result<(u64, u64), FeederError> {
    let file = DbnFile::open(path)?;
    let checked = file.check()?;
    if checked.official {
        return replay_official(client, file).await;
    }
    let (from, to) = (checked.from, checked.to);
    let bar = progress_bar(file.size, "bytes");
    bar.set_message(path.display().to_string());
    let bytes_read = file.bytes_read.clone();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(bytes_read.load(Ordering::Relaxed));
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let load = sink::Load {
        kind: "file",
        label: &label,
        from,
        to,
        force,
    };
    let loaded = sink::load_source(client, &load, |identity| {
        let (tx, rx) = mpsc::channel(8);
        let file = file.clone();
        let decoder = tokio::task::spawn_blocking(move || file.decode_into(identity, tx));
        let end = async move {
            let (summary, changes) =
                decoder
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| FeederError::Decode {
                        file: path.to_path_buf(),
                        msg: "decoding stopped".into(),
                    })?;
            Ok(sink::SourceEnd {
                ledger_id: summary.source_id.clone(),
                summary,
                changes,
            })
        };
        (rx, end)
    })
    .await;
    ticker.abort();
    bar.finish_and_clear();
    let s = loaded?;
    println!(
        "{}: {} records read, {} trades staged ({} without a symbol mapping){}; not trades: {}",
        path.display(),
        s.records,
        s.staged,
        s.unmapped_trades,
        overlap_suffix(&s),
        describe_skipped(&s)
    );
    Ok((s.trades, s.staged))
}

async fn rollup(client: &Client) -> Result<(), FeederError> {
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

/// Connects as every command does and prints what the server sees of the connection.
async fn ping(url: &str) -> Result<(), FeederError> {
    let tls = db::tls_options(url)?;
    let client = db::connect(url, APP).await?;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'),
                    coalesce(s.ssl, false), coalesce(s.version, ''), coalesce(s.cipher, ''),
                    coalesce(s.client_dn, '')
             FROM (SELECT 1) one LEFT JOIN pg_stat_ssl s ON s.pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| FeederError::db("ping", e))?;
    let (user, database, version): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let (ssl, protocol, cipher, client_dn): (bool, String, String, String) =
        (row.get(3), row.get(4), row.get(5), row.get(6));
    let verified = match tls.verify() {
        db::Verify::Nothing => "server certificate not checked",
        db::Verify::Chain => "server certificate checked against the CA",
        db::Verify::ChainAndHost => "server certificate checked against the CA and the host name",
    };
    let tls_text = if ssl {
        let client_cert = if client_dn.is_empty() {
            String::new()
        } else {
            format!(", client certificate {client_dn}")
        };
        format!(
            "TLS {protocol} {cipher} ({}, {verified}{client_cert})",
            tls.describe()
        )
    } else {
        format!("no TLS ({})", tls.describe())
    };
    println!("connected to database {database} as {user}: PostgreSQL {version}, {tls_text}");
    Ok(())
}

/// Checks every file's schema before loading any, so a wrong file in the list loads nothing.
fn preflight(files: &[PathBuf]) -> Result<(), FeederError> {
    files
        .iter()
        .try_for_each(|path| DbnFile::open(path)?.check().map(|_| ()))
}

async fn replay(args: ReplayArgs) -> Result<(), FeederError> {
    preflight(&args.files)?;
    let mut client = db::connect(&args.load.db.database_url, APP).await?;
    lock::acquire(&client, "replay", args.load.standby).await?;
    let mut result = Ok(());
    for path in &args.files {
        match replay_file(&mut client, path, args.load.force).await {
            Ok((received, written)) => {
                lock::report(&client, received as i64, written as i64).await?;
            }
            Err(e) => {
                lock::report_error(&client, &e.to_string()).await;
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() && args.load.rollup {
        result = rollup(&client).await;
    }
    lock::release(&client).await;
    result
}

fn generate(args: GenerateArgs) -> Result<(), FeederError> {
    let spec = source::generate::GenerateSpec {
        symbols: args.symbols,
        trades: args.trades,
        seed: args.seed,
        date: args.date,
    };
    let bar = progress_bar(args.trades, "pos");
    bar.set_message("generating");
    let made = source::generate::generate(&spec, &args.out, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    println!(
        "{}: {} trades of {} symbols ({} {}), {} to {} UTC",
        args.out.display(),
        made.trades,
        made.symbols,
        source::generate::DATASET,
        args.date,
        fmt_ns(made.first_ts),
        fmt_ns(made.last_ts)
    );
    Ok(())
}

fn fmt_ns(ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns));
    match t {
        Ok(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        Err(_) => ns.to_string(),
    }
}

async fn live(args: LiveArgs) -> Result<(), FeederError> {
    if args.source.schema == source::official::OFFICIAL_SCHEMA {
        return Err(FeederError::Usage(
            "live streams trades; Databento's ohlcv-1m bars are history: load them with backfill --schema ohlcv-1m or replay".into(),
        ));
    }
    let spec = source::live::LiveSpec {
        key: args.source.api_key()?,
        symbols: args.source.symbol_list(),
        dataset: args.source.dataset,
        schema: args.source.schema,
        gateway: args.gateway,
        replay_margin: std::time::Duration::from_secs(args.replay_margin_secs),
    };
    let opts = service::ServiceOptions {
        database_url: args.db.database_url,
        batch_size: args.batch_size.max(1),
        batch_interval: std::time::Duration::from_millis(args.batch_ms.max(1)),
        rollup_interval: std::time::Duration::from_millis(args.rollup_ms.max(10)),
        standby: args.standby,
        metrics_addr: args.metrics_addr,
    };
    service::run_live(spec, opts).await
}

async fn backfill(args: BackfillArgs) -> Result<(), FeederError> {
    use source::historical::{fetch_chunk, BackfillSpec};
    if args.start >= args.end {
        return Err(FeederError::Usage("--start must be before --end".into()));
    }
    if args.end > time::OffsetDateTime::now_utc() + time::Duration::days(1) {
        return Err(FeederError::Usage(format!(
            "--end {} is in the future: the historical API has nothing there yet",
            args.end
        )));
    }
    let spec = BackfillSpec {
        key: args.source.api_key()?,
        symbols: args.source.symbol_list(),
        dataset: args.source.dataset,
        schema: args.source.schema,
        start: args.start,
        end: args.end,
        chunk: time::Duration::minutes(i64::from(args.chunk_minutes.max(1))),
        base_url: args.historical_url,
    };
    let mut client = db::connect(&args.load.db.database_url, APP).await?;
    lock::acquire(&client, "backfill", args.load.standby).await?;
    if spec.schema == source::official::OFFICIAL_SCHEMA {
        let mut result = backfill_official(&mut client, &spec).await;
        if let Err(e) = &result {
            lock::report_error(&client, &e.to_string()).await;
        } else if args.load.rollup {
            result = rollup(&client).await;
        }
        lock::release(&client).await;
        return result;
    }
    let chunks = spec.chunks();
    let bar = progress_bar(chunks.len() as u64, "pos");
    bar.set_message("backfill");
    let (mut staged_chunks, mut skipped_chunks, mut trades) = (0u64, 0u64, 0u64);
    let mut result = Ok(());
    let mut already = Summary::default();
    for chunk in chunks {
        let source = spec.source_id(chunk.0, chunk.1);
        // A chunk of this very request staged before: not fetched again (it costs money).
        let done = client
            .query_opt("SELECT 1 FROM ingest_ledger WHERE source = $1", &[&source])
            .await
            .map_err(|e| FeederError::db("reading ingest_ledger", e))?;
        if done.is_some() {
            skipped_chunks += 1;
            bar.inc(1);
            continue;
        }
        let label = format!("backfill {} {} to {}", spec.dataset, chunk.0, chunk.1);
        let load = sink::Load {
            kind: "backfill",
            label: &label,
            from: i64::try_from(chunk.0.unix_timestamp_nanos()).unwrap_or(0),
            to: i64::try_from(chunk.1.unix_timestamp_nanos()).ok(),
            force: args.load.force,
        };
        let loaded = sink::load_source(&mut client, &load, |identity| {
            let (tx, rx) = mpsc::channel(8);
            let (fetch_spec, source) = (spec.clone(), source.clone());
            let fetch = tokio::spawn(async move {
                let mut hist = fetch_spec.client()?;
                fetch_chunk(&mut hist, &fetch_spec, chunk, identity, tx).await
            });
            let end = async move {
                let (summary, changes) = fetch
                    .await
                    .map_err(|e| FeederError::Gateway(format!("fetch task: {e}")))??;
                Ok(sink::SourceEnd {
                    summary,
                    changes,
                    ledger_id: source,
                })
            };
            (rx, end)
        })
        .await;
        match loaded {
            Ok(s) => {
                staged_chunks += 1;
                trades += s.staged;
                already.already_counted += s.already_counted;
                for (name, n) in s.overlaps {
                    *already.overlaps.entry(name).or_default() += n;
                }
            }
            Err(e) => {
                lock::report_error(&client, &e.to_string()).await;
                result = Err(e);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "backfill {} {} {} to {}: {staged_chunks} chunks staged ({trades} trades{}), {skipped_chunks} already staged",
        spec.dataset, spec.schema, spec.start, spec.end, overlap_suffix(&already)
    );
    if result.is_ok() && args.load.rollup {
        result = rollup(&client).await;
    }
    lock::release(&client).await;
    result
}

/// A backfill of Databento's official minute bars: each chunk merged into price_bars whole,
/// in one transaction (official_bars_merge()); a chunk fetched again replaces its bars with
/// the same bars, so a rerun after an interruption needs no ledger.
async fn backfill_official(
    client: &mut Client,
    spec: &source::historical::BackfillSpec,
) -> Result<(), FeederError> {
    // What official_bars_merge() would refuse (the database's clock, price_bars not ready)
    // is refused before anything is fetched: a request costs money.
    let schema = source::official::OFFICIAL_SCHEMA.to_string();
    sink::check_official(client, &schema).await?;
    let chunks = spec.chunks();
    let bar = progress_bar(chunks.len() as u64, "pos");
    bar.set_message("backfill ohlcv-1m");
    let (mut read, mut written, mut rejected, mut unmapped) = (0u64, 0i64, 0i64, 0u64);
    for (n, chunk) in chunks.iter().enumerate() {
        let (tx, rx) = mpsc::channel(8);
        let (fetch_spec, chunk) = (spec.clone(), *chunk);
        let fetch = tokio::spawn(async move {
            let mut hist = fetch_spec.client()?;
            source::historical::fetch_official_chunk(&mut hist, &fetch_spec, chunk, tx).await
        });
        let end = async move {
            fetch
                .await
                .map_err(|e| FeederError::Gateway(format!("fetch task: {e}")))?
        };
        let (loaded, summary) = match sink::load_official(client, &schema, rx, end).await {
            Ok(done) => done,
            Err(e) => {
                bar.finish_and_clear();
                println!(
                    "backfill {} ohlcv-1m: chunk {} of {} ({} to {}) not loaded; the {n} before it are",
                    spec.dataset,
                    n + 1,
                    chunks.len(),
                    chunk.0,
                    chunk.1
                );
                return Err(e);
            }
        };
        read += summary.bars;
        unmapped += summary.unmapped;
        written += loaded.written;
        rejected += loaded.rejected;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "backfill {} ohlcv-1m {} to {}: {} chunks, {read} bars read, {written} official bars written to price_bars ({unmapped} without a symbol mapping, {rejected} rejected in all)",
        spec.dataset,
        spec.start,
        spec.end,
        chunks.len()
    );
    Ok(())
}

async fn run(cli: Cli) -> Result<(), FeederError> {
    match cli.command {
        Command::Backfill(args) => backfill(args).await,
        Command::Live(args) => live(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Generate(args) => tokio::task::spawn_blocking(move || generate(args))
            .await
            .map_err(|e| FeederError::Usage(format!("generator stopped: {e}")))?,
        Command::Rollup(args) => rollup(&db::connect(&args.database_url, APP).await?).await,
        Command::Status(args) => {
            status::run(&db::connect(&args.db.database_url, APP).await?, args.watch).await
        }
        Command::Ping(args) => ping(&args.database_url).await,
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

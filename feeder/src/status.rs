//! `tradebars-feeder status`: the migration monitor from the command line.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::error::FeederError;

/// Runs `sql` and prints its rows as an aligned table under `title`.
pub async fn print_query(client: &Client, title: &str, sql: &str) -> Result<(), FeederError> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| FeederError::db(title.to_string(), e))?;
    let mut header: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            if header.is_empty() {
                header = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect(),
            );
        }
    }
    let mut out = format!("{title}\n");
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return print(&out);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(&format!("  {}\n", padded.join("  ").trim_end()));
    };
    line(&header);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
    print(&out)
}

/// Writes `text` to standard output. A closed pipe (status | head) ends the command as
/// cleanly as SIGTERM does, not with a panic.
fn print(text: &str) -> Result<(), FeederError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|_| FeederError::Stopped("status: standard output is closed".into()))
}

async fn print_status(client: &Client) -> Result<(), FeederError> {
    print_query(
        client,
        "Bars by source",
        "SELECT location, coalesce(data_source, '-') AS data_source, is_legacy, soft_deleted, bars,
                total_volume, first_bar, last_bar FROM migration_status()",
    )
    .await?;
    print_query(
        client,
        "Pipeline",
        "SELECT staged_trades, coalesce(oldest_staged_recv::text, '-') AS oldest_staged_recv, rollups,
                trades_rolled_up, bars_written, trades_rejected, coalesce(last_rollup_at::text, 'never') AS last_rollup
         FROM rollup_status()",
    )
    .await?;
    let (class, key) = crate::lock::FEEDER_LOCK;
    print_query(
        client,
        "Feeder",
        &format!(
            "SELECT pid, host, mode, started_at, last_seen, trades_received, trades_written, reconnects,
                errors,
                -- an error of an earlier run stays until the next one: say so, with its time
                CASE WHEN last_error IS NULL THEN ''
                     WHEN last_error_at < started_at THEN 'before this run, at ' || last_error_at || ': ' || last_error
                     ELSE last_error_at || ': ' || last_error END AS last_error,
                (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND classid = {class} AND objid = {key} AND objsubid = 2
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS running
         FROM feeder_status"
        ),
    )
    .await?;
    print_query(
        client,
        "Success criteria",
        "SELECT criterion, passed, measured FROM migration_check()",
    )
    .await
}

pub async fn run(client: &Client, watch: Option<u64>) -> Result<(), FeederError> {
    let stop = crate::shutdown::on_signal("");
    loop {
        print_status(client).await?;
        let Some(secs) = watch else {
            return Ok(());
        };
        print("\n")?;
        if !crate::shutdown::sleep(Duration::from_secs(secs.max(1)), &stop).await {
            return Err(FeederError::Stopped("status: on request".into()));
        }
    }
}

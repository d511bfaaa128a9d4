//! `tradebars-feeder watch`: bars as rollups change them, the old app's price broadcaster.
//!
//! LISTEN tradebars_bars says when a rollup changed bars; bars_changed_since() says which,
//! since the last rollup printed. So a notification missed, or a connection lost and opened
//! again, costs no bar: the next call returns everything changed in between.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::WatchArgs;
use crate::db;
use crate::error::FeederError;

/// The channel bars_rollup() notifies (sql/changes.sql).
use tradebars_contract::BARS_CHANNEL as CHANNEL;
/// Asked even without a notification this often: a notification can be lost with the
/// connection that should have received it.
const POLL: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

pub async fn run(args: WatchArgs, application: &str) -> Result<(), FeederError> {
    let symbols = (!args.symbols.is_empty()).then_some(args.symbols);
    let stop = crate::shutdown::on_signal("");
    let (mut client, mut notes) = listen(&args.db.database_url, application).await?;
    let latest = latest_rollup(&client).await?;
    let mut since = args.since.unwrap_or(latest);
    if since > latest {
        return Err(FeederError::Usage(format!(
            "--since {since} is after the latest rollup, {latest}: nothing would be printed until rollup {}",
            since + 1
        )));
    }
    // The header once the database has answered: a refusal leaves standard output empty.
    since = print_changes(&client, since, symbols.as_deref(), true).await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            note = notes.recv() => {
                if note.is_none() {
                    // The connection is gone: open another, then catch up from `since`.
                    tracing::warn!("watch: the connection to PostgreSQL closed; opening another");
                    let Some(pair) = reconnect(&args.db.database_url, application, &stop).await
                    else {
                        return Ok(());
                    };
                    (client, notes) = pair;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        match print_changes(&client, since, symbols.as_deref(), false).await {
            Ok(next) => since = next,
            // A connection lost mid-query: the closed channel above opens another.
            Err(e) if client.is_closed() => tracing::warn!("watch: {e}"),
            Err(e) => return Err(e),
        }
    }
}

type Notes = tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>;

/// Opens another listening connection, waiting from RECONNECT_MIN, doubled after each
/// failure up to RECONNECT_MAX; `None` when asked to stop meanwhile.
async fn reconnect(
    url: &str,
    application: &str,
    stop: &CancellationToken,
) -> Option<(Client, Notes)> {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut wait = backoff.next_delay();
    loop {
        if !crate::shutdown::sleep(wait, stop).await {
            return None;
        }
        match listen(url, application).await {
            Ok(pair) => return Some(pair),
            Err(e) => {
                wait = backoff.next_delay();
                tracing::warn!("watch: {e}; trying again in {wait:?}");
            }
        }
    }
}

async fn listen(url: &str, application: &str) -> Result<(Client, Notes), FeederError> {
    let (client, notes) = db::connect_listening(url, application).await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| FeederError::db(format!("LISTEN {CHANNEL}"), e))?;
    Ok((client, notes))
}

/// The id of the latest rollup: bars it changed are already there to be read with bars().
async fn latest_rollup(client: &Client) -> Result<i64, FeederError> {
    let row = client
        .query_one("SELECT rollups FROM rollup_status()", &[])
        .await
        .map_err(|e| {
            FeederError::db(
                "reading rollup_status() (is the tradebars extension installed?)",
                e,
            )
        })?;
    Ok(row.get(0))
}

/// Prints the bars changed after rollup `since` (after the header, with `header`); returns
/// the latest rollup printed (or `since`, when none changed).
async fn print_changes(
    client: &Client,
    since: i64,
    symbols: Option<&[String]>,
    header: bool,
) -> Result<i64, FeederError> {
    let symbols: Option<Vec<String>> = symbols.map(<[String]>::to_vec);
    let rows = client
        .query(
            "SELECT rollup_id, symbol, to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI\"Z\"'),
                    open::text, high::text, low::text, close::text, volume, trade_count,
                    coalesce(vwap::text, '')
             FROM bars_changed_since($1, $2)",
            &[&since, &symbols],
        )
        .await
        .map_err(|e| FeederError::db("reading bars_changed_since()", e))?;
    let mut latest = since;
    let mut out = String::new();
    if header {
        out.push_str("rollup symbol minute open high low close volume trades vwap\n");
    }
    for r in &rows {
        let id: i64 = r.get(0);
        latest = latest.max(id);
        let (volume, trades): (i64, i64) = (r.get(7), r.get(8));
        out.push_str(&format!(
            "{id} {} {} {} {} {} {} {volume} {trades} {}\n",
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4),
            r.get::<_, String>(5),
            r.get::<_, String>(6),
            r.get::<_, String>(9),
        ));
    }
    if !out.is_empty() {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (watch | head) ends the watch as cleanly as SIGTERM does.
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Err(FeederError::Stopped(
                "watch: standard output is closed".into(),
            ));
        }
    }
    Ok(latest)
}

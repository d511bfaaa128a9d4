//! Live push: a real LISTEN client gets one notification per rollup that changes bars, misses
//! some, and catches up with bars_changed_since(); `tradebars-feeder watch` prints the bars of
//! its symbols as they change. Bars are compared with the oracle of the trades loaded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tradebars_tests::*;

/// The notifications that arrive within `wait`: their payloads.
fn notifications(client: &mut postgres::Client, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut notes = client.notifications();
    let mut arrived = notes.timeout_iter(wait);
    while let Some(n) = arrived.next().expect("notifications") {
        assert_eq!(n.channel(), "tradebars_bars");
        out.push(n.payload().to_string());
    }
    out
}

/// bars_changed_since(since) in the oracle's form, with the rollup of each bar.
fn changed_since(db: &str, since: i64) -> (BTreeMap<BarKey, BarVal>, Vec<i64>) {
    let rows = connect(db)
        .query(
            "SELECT symbol, extract(epoch FROM \"timestamp\")::bigint,
                    (open * 1000000000)::bigint, (high * 1000000000)::bigint,
                    (low * 1000000000)::bigint, (close * 1000000000)::bigint, volume,
                    trade_count, rollup_id
             FROM bars_changed_since($1)",
            &[&since],
        )
        .expect("bars_changed_since");
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(8)).collect();
    ids.dedup();
    let bars = rows
        .into_iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)),
            )
        })
        .collect();
    (bars, ids)
}

/// The two halves of a file, cut between two trades of different ts_recv in mid-minute, so
/// the second half changes bars the first half wrote.
fn halves(file: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let trades = trades_of(file);
    let mut i = trades.len() / 2;
    while trades[i].1.ts_recv == trades[i + 1].1.ts_recv
        || (trades[i + 1].1.ts_recv / 60_000_000_000) != (trades[i].1.ts_recv / 60_000_000_000)
    {
        i += 1;
    }
    let mid = trades[i].1.ts_recv + 1;
    let (a, b) = (
        scratch(&format!("{name}-a.dbn.zst")),
        scratch(&format!("{name}-b.dbn.zst")),
    );
    assert_eq!(cut_file(file, &a, 0, mid, false), i + 1);
    assert_eq!(
        cut_file(file, &b, mid, u64::MAX, false),
        trades.len() - i - 1
    );
    (a, b)
}

fn listen(db: &str) -> postgres::Client {
    let mut listener = connect(db);
    listener
        .batch_execute("LISTEN tradebars_bars")
        .expect("LISTEN");
    listener
}

/// A listener sees the one rollup of `first`; the rollup's id.
fn the_first_rollup_notifies_once(db: &str, first: &Path) -> i64 {
    let mut listener = listen(db);
    replay(db, first, true);
    let got = notifications(&mut listener, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "one rollup, one notification: {got:?}");
    let n1: i64 = got[0].parse().expect("the payload is the rollup's id");
    assert!(got[0].len() < 8000);
    assert_eq!(count(db, "SELECT rollups FROM rollup_status()"), n1);
    let (bars, ids) = changed_since(db, 0);
    assert_eq!(bars, oracle(first));
    assert_eq!(ids, vec![n1]);
    n1
}

/// Back, the listener asks for everything since rollup `n1`, the last it saw: the bars of
/// `second` as they are in the whole `day`, and those of `next_day`. Those bars.
fn catching_up_gives_what_changed_since(
    db: &str,
    n1: i64,
    (day, first, second, next_day): (&Path, &Path, &Path, &Path),
) -> BTreeMap<BarKey, BarVal> {
    let (bars, ids) = changed_since(db, n1);
    let whole = oracle(day);
    let mut expected: BTreeMap<BarKey, BarVal> = oracle(second)
        .keys()
        .map(|k| (k.clone(), whole[k]))
        .collect();
    expected.extend(oracle(next_day));
    assert_eq!(bars, expected);
    assert!(
        oracle(first).keys().any(|k| expected.contains_key(k)),
        "the cut shares a minute"
    );
    assert_eq!(ids.len(), 2, "two rollups changed bars: {ids:?}");
    assert!(ids.iter().all(|id| *id > n1));
    let latest = count(db, "SELECT rollups FROM rollup_status()");
    assert_eq!(ids[1], latest - 1, "the last rollup changed nothing");
    assert!(changed_since(db, latest).0.is_empty());
    // every bar the rollups wrote, as stored
    assert_eq!(changed_since(db, 0).0, stored_bars(db));
    expected
}

/// Only some symbols; bad arguments.
fn some_symbols_and_bad_arguments(db: &str, n1: i64, expected: &BTreeMap<BarKey, BarVal>) {
    let some: i64 = count(
        db,
        &format!("SELECT count(*) FROM bars_changed_since({n1}, ARRAY['WGRX'])"),
    );
    assert_eq!(
        some,
        expected.keys().filter(|(s, _)| s == "WGRX").count() as i64
    );
    assert!(some > 0);
    for (arg, state) in [("-1", "22023"), ("NULL", "22004")] {
        let err = connect(db)
            .batch_execute(&format!("SELECT * FROM bars_changed_since({arg})"))
            .expect_err("refused");
        let code = err.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some(state), "{err}");
    }
}

#[test]
fn a_listener_that_misses_notifications_catches_up() {
    let day = generate("push-day.dbn.zst", 6, 12000, 61);
    let (first, second) = halves(&day, "push-day");
    let next_day = generate_on("push-next.dbn.zst", 6, 6000, 62, "2025-10-27");
    let db = fresh_db("push_catch_up", "");
    let n1 = the_first_rollup_notifies_once(&db, &first);

    // The listener has gone away; two rollups change bars meanwhile (the second half of the
    // day merges into minutes the first half wrote), one changes nothing.
    replay(&db, &second, true);
    replay(&db, &next_day, true);
    let out = feeder(&["rollup"], Some(&db));
    assert!(out.status.success(), "{}", text(&out));
    let expected =
        catching_up_gives_what_changed_since(&db, n1, (&day, &first, &second, &next_day));

    // A rollup that changes nothing sends nothing.
    let mut listener = listen(&db);
    listener
        .batch_execute("SELECT bars_rollup()")
        .expect("rollup");
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        Vec::<String>::new()
    );
    some_symbols_and_bad_arguments(&db, n1, &expected);
}

/// A bar as watch prints it: open, high, low, close as decimals, volume, trades.
type PrintedBar = (String, String, String, String, i64, i64);

/// `watch --symbols` of `watched` in `db`, and its lines as they come, so that a watch
/// printing nothing fails the test instead of hanging it.
fn spawn_watch(
    db: &str,
    watched: &[String],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(feeder_bin())
        .args(["watch", "--symbols", &watched.join(",")])
        .env("DATABASE_URL", url(db))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("a line")).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

fn next_line(lines: &std::sync::mpsc::Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(60))
        .expect("watch printed no line within 60 s")
}

/// The next `n` bars watch prints, each once.
fn printed_bars(
    lines: &std::sync::mpsc::Receiver<String>,
    n: usize,
) -> BTreeMap<(String, String), PrintedBar> {
    let mut printed: BTreeMap<(String, String), PrintedBar> = BTreeMap::new();
    while printed.len() < n {
        let line = next_line(lines);
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 10, "{line}");
        let key = (f[1].to_string(), f[2].to_string());
        let val = (
            f[3].to_string(),
            f[4].to_string(),
            f[5].to_string(),
            f[6].to_string(),
            f[7].parse().expect("volume"),
            f[8].parse().expect("trades"),
        );
        assert!(printed.insert(key, val).is_none(), "printed twice: {line}");
    }
    printed
}

/// A fixed-point price as an exact decimal.
fn decimal(fixed: i64) -> String {
    let text = format!("{}.{:09}", fixed / 1_000_000_000, fixed % 1_000_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The minute starting at `epoch` as watch prints it.
fn minute(epoch: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch).expect("a time");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// The oracle's bars as watch prints them: the prices as exact decimals, the counts as they are.
fn as_printed(expected: &BTreeMap<BarKey, BarVal>) -> BTreeMap<(String, String), PrintedBar> {
    expected
        .iter()
        .map(|((s, m), (o, h, l, c, v, n))| {
            (
                (s.clone(), minute(*m)),
                (decimal(*o), decimal(*h), decimal(*l), decimal(*c), *v, *n),
            )
        })
        .collect()
}

/// A rollup that has not happened yet is refused, and nothing is printed.
fn watch_refuses_a_rollup_to_come(db: &str) {
    let latest = count(db, "SELECT rollups FROM rollup_status()");
    let later = (latest + 5).to_string();
    let out = feeder(&["watch", "--since", &later], Some(db));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out).contains(&format!("after the latest rollup, {latest}")),
        "{}",
        text(&out)
    );
}

#[test]
fn watch_prints_the_bars_of_its_symbols_as_they_change() {
    let file = generate("push-watch.dbn.zst", 5, 5000, 63);
    let all = oracle(&file);
    let mut symbols: Vec<String> = all.keys().map(|(s, _)| s.clone()).collect();
    symbols.dedup();
    let watched = [symbols[0].clone(), symbols[2].clone()];
    let db = fresh_db("push_watch", "");
    let (mut child, lines) = spawn_watch(&db, &watched);
    let header = next_line(&lines);
    assert_eq!(
        header,
        "rollup symbol minute open high low close volume trades vwap"
    );
    replay(&db, &file, true);

    let expected: BTreeMap<BarKey, BarVal> = all
        .into_iter()
        .filter(|((s, _), _)| watched.contains(s))
        .collect();
    assert!(expected.len() > 10);
    let printed = printed_bars(&lines, expected.len());
    assert_eq!(printed, as_printed(&expected));

    sigterm(&mut child);
    let (code, out) = exit_within(child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{out}");
    watch_refuses_a_rollup_to_come(&db);
}

//! PostgreSQL crashing (immediate stop) while the feeder copies: committed work survives,
//! the interrupted file is not half-staged, and loading it again is exact. In a test binary
//! of its own, because it restarts the shared test cluster.

use std::process::{Command, Stdio};

use tradebars_tests::*;

#[test]
fn a_postgres_crash_mid_copy_loses_nothing_committed_and_stages_nothing_half() {
    let db = fresh_db("crash", "");
    let first = scratch("crash-first.dbn.zst");
    let second = scratch("crash-second.dbn.zst");
    // two trading days: different trades of the same instruments
    for (file, trades, seed, date) in [
        (&first, 20000, "51", "2025-10-24"),
        (&second, 1000000, "52", "2025-10-27"),
    ] {
        generate_into(file, 50, trades, &["--seed", seed, "--date", date]);
    }
    replay(&db, &first, true);

    let child = Command::new(feeder_bin())
        .args(["replay", &second.display().to_string()])
        .env("DATABASE_URL", url(&db))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the feeder");
    wait_for(&db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %trades_staging%' AND state = 'active'");
    crash_restart_cluster();
    let out = child.wait_with_output().expect("feeder");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // logs may come first; the error itself is one line, the last
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tradebars-feeder: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        stderr.trim().lines().last(),
        errors.first().copied(),
        "{stderr}"
    );

    assert_eq!(
        stored_bars(&db),
        oracle(&first),
        "committed bars survive the crash"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM ingest_ledger"), 1);
    replay(&db, &second, true);
    assert_eq!(
        count(&db, "SELECT sum(trade_count)::bigint FROM price_bars"),
        1_020_000
    );
}

//! PostgreSQL restarting while the live feed is idle (the market closed, the gateway sending
//! heartbeats only): the feeder takes its lock again at once, not when trades next arrive.
//! In a test binary of its own, because it restarts the shared test cluster.

use std::time::Duration;

use tradebars_contract::lock::{CLASS, FEEDER};
use tradebars_tests::gateway::{FakeGateway, Plan};
use tradebars_tests::*;

/// Sessions holding the feeder lock of `db`; 0 while the server cannot be reached.
fn feeder_lock_holders(db: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {CLASS} \
         AND objid = {FEEDER} AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    );
    postgres::Client::connect(&url(db), postgres::NoTls)
        .ok()
        .and_then(|mut c| c.query_one(&sql, &[]).ok())
        .map_or(0, |r| r.get(0))
}

#[test]
fn an_idle_live_feeder_takes_its_lock_again_after_a_postgres_restart() {
    let db = fresh_db("live_idle_restart", "");
    let file = generate("live-idle-restart.dbn", 6, 500, 72);
    let gateway = FakeGateway::start(&file, Plan::new(TEST_API_KEY));
    let mut child = gateway.spawn_feeder(&db, TEST_API_KEY, &[]);
    wait_until("all trades in bars", Duration::from_secs(60), || {
        count(
            &db,
            "SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars",
        ) == 500
    });
    assert_eq!(feeder_lock_holders(&db), 1);
    // every trade sent: the gateway only keeps the session alive from now on
    crash_restart_cluster();
    wait_until(
        "the idle feeder holding its lock again",
        Duration::from_secs(30),
        || {
            assert!(
                child.try_wait().expect("status").is_none(),
                "the feeder exited"
            );
            feeder_lock_holders(&db) == 1
        },
    );
    sigterm(&mut child);
    let (code, out) = exit_within(child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(stored_bars(&db), oracle(&file));
}

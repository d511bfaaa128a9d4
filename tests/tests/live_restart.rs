//! PostgreSQL crashing (immediate stop) while the live feeder streams: the feeder reconnects
//! on its own and ends with exactly the trades sent. In a test binary of its own, because it
//! restarts the shared test cluster.

use std::process::Stdio;
use std::time::Duration;

use tradebars_tests::gateway::{FakeGateway, Plan};
use tradebars_tests::*;

#[test]
fn the_live_feeder_rides_out_a_postgres_crash() {
    let db = fresh_db("live_crash", "");
    let file = scratch("live-crash.dbn.zst");
    generate_into(&file, 12, 40000, &["--seed", "66"]);
    let gateway = FakeGateway::start(
        &file,
        Plan::new(TEST_API_KEY).paced(Duration::from_millis(40)),
    );
    let mut child = gateway
        .feeder_command(&feeder_bin(), &url(&db), TEST_API_KEY)
        .args(["--batch-ms", "50", "--rollup-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the live feeder");
    let stored = |db: &str| {
        count(db, "SELECT (SELECT count(*) FROM trades_staging) + (SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars)")
    };
    wait_until("the feeder getting going", Duration::from_secs(60), || {
        stored(&db) >= 5_000
    });
    crash_restart_cluster();
    wait_until("the feeder to recover", Duration::from_secs(90), || {
        let done = postgres::Client::connect(&url(&db), postgres::NoTls)
            .ok()
            .and_then(|mut c| {
                c.query_one(
                    "SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars",
                    &[],
                )
                .ok()
            })
            .map(|r| r.get::<_, i64>(0) == 40_000)
            .unwrap_or(false);
        if !done {
            assert!(
                child.try_wait().expect("status").is_none(),
                "the feeder exited instead of reconnecting"
            );
        }
        done
    });
    sigterm(&mut child);
    let status = child.wait().expect("feeder");
    assert_eq!(status.code(), Some(0));
    assert_eq!(stored_bars(&db), oracle(&file));
}

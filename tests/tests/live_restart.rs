//! PostgreSQL crashing (immediate stop) while the live feeder streams: the feeder reconnects
//! on its own and ends with exactly the trades sent. In a test binary of its own, because it
//! restarts the shared test cluster.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tradebars_tests::gateway::{FakeGateway, Plan};
use tradebars_tests::*;

const KEY: &str = "db-tradebarsTestKey0123456789abc";

#[test]
fn the_live_feeder_rides_out_a_postgres_crash() {
    let db = fresh_db("live_crash", "");
    let file = scratch("live-crash.dbn.zst");
    let out = feeder(
        &[
            "generate",
            "--symbols",
            "12",
            "--trades",
            "40000",
            "--seed",
            "66",
            "--out",
            &file.display().to_string(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let gateway = FakeGateway::start(&file, Plan::new(KEY).paced(Duration::from_millis(40)));
    let mut child = gateway
        .feeder_command(&feeder_bin(), &url(&db), KEY)
        .args(["--batch-ms", "50", "--rollup-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the live feeder");
    let stored = |db: &str| {
        count(db, "SELECT (SELECT count(*) FROM trades_staging) + (SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars)")
    };
    let start = Instant::now();
    while stored(&db) < 5_000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the feeder never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    crash_restart_cluster();
    let start = Instant::now();
    loop {
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
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the feeder did not recover"
        );
        assert!(
            child.try_wait().expect("status").is_none(),
            "the feeder exited instead of reconnecting"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let status = child.wait().expect("feeder");
    assert_eq!(status.code(), Some(0));
    assert_eq!(stored_bars(&db), oracle(&file));
}

//! Backfill through a loopback historical API: chunked, resumable, exactly once.

use tradebars_tests::historical::FakeHistorical;
use tradebars_tests::*;

fn backfill(api: &FakeHistorical, db: &str, key: &str) -> std::process::Output {
    backfill_schema(api, db, key, "trades")
}

fn backfill_schema(
    api: &FakeHistorical,
    db: &str,
    key: &str,
    schema: &str,
) -> std::process::Output {
    api.backfill(db, key, schema, &[])
}

#[test]
fn a_backfill_stages_every_chunk_once_and_resumes_after_a_cut_response() {
    let db = fresh_db("backfill", "");
    let file = generate("backfill.dbn.zst", 10, 20000, 71);
    // the third request's body is cut off halfway
    let api = FakeHistorical::start(&file, TEST_API_KEY, vec![2]);
    let out = backfill(&api, &db, TEST_API_KEY);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let staged = count(&db, "SELECT (SELECT count(*) FROM trades_staging) + (SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars)");
    assert_eq!(
        staged,
        count(
            &db,
            "SELECT coalesce(sum(trades), 0)::bigint FROM ingest_ledger"
        ),
        "no half chunk"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM ingest_ledger"),
        2,
        "two whole chunks before the cut"
    );

    let out = backfill(&api, &db, TEST_API_KEY);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("5 chunks staged") && text(&out).contains("2 already staged"),
        "{}",
        text(&out)
    );
    assert_eq!(stored_bars(&db), oracle(&file));

    let again = backfill(&api, &db, TEST_API_KEY);
    assert!(
        again.status.success()
            && text(&again).contains("0 chunks staged (0 trades), 7 already staged"),
        "{}",
        text(&again)
    );
    assert_eq!(stored_bars(&db), oracle(&file));
}

#[test]
fn a_refused_key_stops_the_backfill_with_its_own_exit_code() {
    let db = fresh_db("backfill_key", "");
    let file = generate("backfill-key.dbn", 10, 20000, 72);
    let api = FakeHistorical::start(&file, TEST_API_KEY, vec![]);
    let wrong = "db-wrongKeyWrongKeyWrongKey12345";
    let out = backfill(&api, &db, wrong);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(!text(&out).contains(wrong));
    assert_eq!(
        api.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no retry with a refused key"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
}

#[test]
fn a_backfill_from_mbp1_rederives_the_trades_with_their_volume() {
    let db = fresh_db("backfill_mbp1", "");
    let file = generate("backfill-mbp1.dbn.zst", 10, 20000, 73);
    let api = FakeHistorical::start(&file, TEST_API_KEY, vec![]);
    let out = backfill_schema(&api, &db, TEST_API_KEY, "mbp-1");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(20000 trades)"), "{}", text(&out));
    assert_eq!(
        stored_bars(&db),
        oracle(&file),
        "only the 'T' records count, each once"
    );
    assert!(count(&db, "SELECT min(volume) FROM price_bars") > 0);
}

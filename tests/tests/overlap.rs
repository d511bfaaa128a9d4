//! `--rollup` rolls up while it loads: a file in pieces, each committed whole and rolled up
//! while the next is copied. Bars are the oracle's (computed from the file, not by the
//! extension), whatever the pieces, and a kill between or inside pieces loses nothing and
//! counts nothing twice after the same command runs again.

use std::process::{Command, Stdio};

use tradebars_tests::*;

/// `replay FILE --rollup --piece-trades N` in `db`, spawned, its output captured.
fn spawn_rolling_replay(
    db: &str,
    file: &std::path::Path,
    piece_trades: u64,
) -> std::process::Child {
    Command::new(feeder_bin())
        .arg("replay")
        .arg(file)
        .args(["--rollup", "--piece-trades", &piece_trades.to_string()])
        .env("DATABASE_URL", url(db))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the feeder")
}

/// `replay FILE --rollup --piece-trades N` in `db`, run to its end.
fn replay_in_pieces(db: &str, file: &std::path::Path, piece_trades: u64) -> std::process::Output {
    let (file, piece_trades) = (file.display().to_string(), piece_trades.to_string());
    feeder(
        &["replay", &file, "--rollup", "--piece-trades", &piece_trades],
        Some(db),
    )
}

/// The replay's one summary line of `file`, from its output.
fn staged_line<'a>(out: &'a str, file: &std::path::Path) -> &'a str {
    let name = file.display().to_string();
    out.lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no summary line for {name} in:\n{out}"))
}

#[test]
fn a_file_rolled_up_in_pieces_has_the_oracles_bars() {
    let file = generate("overlap_pieces.dbn.zst", 20, 120_000, 61);
    let db = fresh_db("overlap_pieces", "");
    let out = replay_in_pieces(&db, &file, 20000);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    // A piece ends at the first full COPY chunk past 20,000 trades: fewer than 6 pieces of
    // 120,000, more than one.
    let line = staged_line(&printed, &file);
    let pieces: u64 = line
        .split(" trades staged in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pieces in: {line}"));
    assert!((2..=6).contains(&pieces), "{line}");
    assert!(
        printed.contains("rollup: 120000 trades rolled up into "),
        "{printed}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(stored_bars(&db), oracle(&file));
    // the file is recorded once, with every trade it staged
    assert_eq!(
        count(&db, "SELECT trades FROM ingest_ledger WHERE kind = 'file'"),
        120_000
    );
}

#[test]
fn a_file_rolled_up_whole_and_in_pieces_makes_the_same_bars() {
    let file = generate("overlap_same.dbn.zst", 8, 40_000, 62);
    let whole = fresh_db("overlap_whole", "");
    replay(&whole, &file, true);
    let pieces = fresh_db("overlap_in_pieces", "");
    let out = replay_in_pieces(&pieces, &file, 3000);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(" pieces "), "{}", text(&out));
    let bars = "SELECT string_agg(format('%s %s %s %s %s %s %s %s %s', symbol, \"timestamp\", open, high, \
                low, close, volume, trade_count, vwap), E'\\n' ORDER BY symbol, \"timestamp\") FROM price_bars";
    assert_eq!(one::<String>(&pieces, bars), one::<String>(&whole, bars));
}

#[test]
fn a_kill_while_pieces_load_and_roll_up_loses_nothing_and_counts_nothing_twice() {
    let trades = 300_000;
    let file = generate("overlap_kill.dbn.zst", 30, trades, 63);
    let db = fresh_db("overlap_kill", "");
    let mut child = spawn_rolling_replay(&db, &file, 5_000);
    // Once a piece is rolled up, while the load goes on: SIGKILL, nothing cleaned up.
    wait_for(&db, "SELECT count(*) FROM price_bars");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let kept = stored_trades(&db);
    assert!(
        kept > 0 && kept < trades as i64,
        "the kill came after {kept} of {trades} trades"
    );
    let again = replay_rolling(&db, &file);
    let line = staged_line(&again, &file);
    assert!(
        line.contains(&format!("{} trades staged", trades as i64 - kept))
            && line.contains(&format!("{kept} trades already counted")),
        "{line} (kept {kept})"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 0);
    assert_eq!(stored_bars(&db), oracle(&file));
    // the ledger holds the file's trades: the killed run's pieces and the rerun's
    assert_eq!(
        count(&db, "SELECT trades FROM ingest_ledger WHERE kind = 'file'"),
        trades as i64
    );
    // and once more: nothing new
    let third = replay_rolling(&db, &file);
    assert!(
        staged_line(&third, &file).contains(", 0 trades staged"),
        "{third}"
    );
    assert_eq!(stored_bars(&db), oracle(&file));
}

/// `replay FILE --rollup --piece-trades 5000`, which must succeed; what it printed.
fn replay_rolling(db: &str, file: &std::path::Path) -> String {
    let (code, out) = exit_within(
        spawn_rolling_replay(db, file, 5_000),
        std::time::Duration::from_secs(300),
    );
    assert_eq!(code, Some(0), "{out}");
    out
}

#[test]
fn a_file_that_fails_after_its_first_pieces_keeps_them_and_a_rerun_of_the_whole_completes() {
    let whole = generate("overlap_cut_whole.dbn", 10, 60_000, 64);
    // the same file cut short inside its last record: it fails at its end, after its pieces
    let bytes = std::fs::read(&whole).expect("reading the file");
    let plain = scratch("overlap_cut.dbn");
    std::fs::write(&plain, &bytes[..bytes.len() - 7]).expect("writing the cut file");
    let db = fresh_db("overlap_cut", "");
    let out = replay_in_pieces(&db, &plain, 5000);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let kept = stored_trades(&db);
    assert!(kept > 0 && kept < 60_000, "kept {kept}: {}", text(&out));
    // what was kept is rolled up, and said
    assert!(
        text(&out).contains(&format!("rollup: {kept} trades rolled up")),
        "{}",
        text(&out)
    );
    replay(&db, &whole, true);
    assert_eq!(stored_bars(&db), oracle(&whole));
}

/// `src` with metadata that says it ends two hours after it starts, though its trades go on.
fn with_narrow_metadata(src: &std::path::Path, dst: &std::path::Path) {
    use dbn::decode::{DbnMetadata, DecodeRecord, DynDecoder};
    use dbn::encode::EncodeRecord;
    let mut decoder = DynDecoder::from_file(src, dbn::VersionUpgradePolicy::UpgradeToV3)
        .expect("decoding the file");
    let mut meta = decoder.metadata().clone();
    meta.end = std::num::NonZeroU64::new(meta.start + 2 * 3600 * 1_000_000_000);
    let out = std::fs::File::create(dst).expect("creating the file");
    let mut encoder = dbn::encode::dbn::Encoder::new(out, &meta).expect("encoder");
    while let Some(t) = decoder.decode_record::<dbn::TradeMsg>().expect("record") {
        encoder.encode_record(t).expect("encoding");
    }
    encoder.flush().expect("flushing");
}

#[test]
fn pieces_committed_before_a_file_turns_out_wider_than_it_says_count_as_its_own() {
    let whole = generate("overlap_narrow_src.dbn", 10, 50_000, 65);
    let narrow = scratch("overlap_narrow.dbn");
    with_narrow_metadata(&whole, &narrow);
    let db = fresh_db("overlap_narrow", "");
    let out = replay_in_pieces(&db, &narrow, 2000);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("not the range it declares"), "{printed}");
    // the first reading's pieces are this load's own: staged, not "already counted"
    let line = staged_line(&printed, &narrow);
    assert!(
        line.contains("50000 trades staged in ") && !line.contains("already counted"),
        "{line}"
    );
    assert_eq!(
        count(&db, "SELECT trades FROM ingest_ledger WHERE kind = 'file'"),
        50_000
    );
    assert_eq!(stored_bars(&db), oracle(&whole));
}

#[test]
fn a_rollup_that_fails_while_pieces_load_says_what_the_rollups_before_it_did() {
    let file = generate("overlap_refused.dbn.zst", 5, 40_000, 66);
    let db = fresh_db("overlap_refused", "");
    // another writer's 'trades' bar in the file's last minute: the rollup that reaches it fails
    let (symbol, last) = oracle(&file)
        .into_keys()
        .max_by_key(|(_, at)| *at)
        .expect("a bar");
    connect(&db)
        .execute(
            "INSERT INTO price_bars (symbol, \"timestamp\", open, high, low, close, volume, data_source)
             VALUES ($1, to_timestamp($2::bigint), 1, 1, 1, 1, 1, 'trades')",
            &[&symbol, &last],
        )
        .expect("a foreign bar");
    // Each piece's COPY takes half a second more, so the rollups of the pieces before the
    // last run before it commits (without this, a fast load could commit every piece before
    // the first rollup starts, which then meets the foreign bar with nothing rolled up).
    connect(&db)
        .batch_execute(
            "CREATE FUNCTION slow_piece() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER INSERT ON trades_staging_0
                 FOR EACH STATEMENT EXECUTE FUNCTION slow_piece();
             CREATE TRIGGER slow AFTER INSERT ON trades_staging_1
                 FOR EACH STATEMENT EXECUTE FUNCTION slow_piece();",
        )
        .expect("slow pieces");
    let out = replay_in_pieces(&db, &file, 2000);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("tradebars did not build it"), "{printed}");
    let rolled = count(
        &db,
        "SELECT coalesce(sum(trade_count), 0)::bigint FROM price_bars WHERE open_ts_ns IS NOT NULL",
    );
    assert!(rolled > 0, "{printed}");
    assert!(
        printed.contains(&format!("rollup: {rolled} trades rolled up into ")),
        "{rolled}: {printed}"
    );
    // nothing is lost: the rest stays staged (the foreign bar counts no trade)
    assert_eq!(stored_trades(&db), 40_000);
}

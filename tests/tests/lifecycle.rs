//! The extension over time: upgraded from its first release, dumped and restored, watched.

use std::io::Read;
use std::process::{Command, Stdio};

use tradebars_tests::*;

/// Every object of the extension, with its definition: functions by their source, tables
/// and types by their columns.
const EXTENSION_OBJECTS: &str = r#"
SELECT string_agg(d, E'\n' ORDER BY d) FROM (
    SELECT pg_describe_object(classid, objid, 0) || ' ' ||
           CASE WHEN classid = 'pg_proc'::regclass
                     AND (SELECT prokind FROM pg_proc WHERE oid = objid) <> 'a'
                THEN pg_get_functiondef(objid)
                WHEN classid = 'pg_proc'::regclass
                THEN (SELECT format('sfunc %s stype %s sspace %s combine %s parallel %s', aggtransfn, aggtranstype::regtype,
                                    aggtransspace, aggcombinefn, p.proparallel)
                      FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid WHERE a.aggfnoid = objid)
                WHEN classid = 'pg_class'::regclass
                THEN coalesce((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                               FROM pg_attribute WHERE attrelid = objid AND attnum > 0 AND NOT attisdropped), '')
                     || coalesce((SELECT ' indexes: ' || string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY 1) FROM pg_index WHERE indrelid = objid), '')
                ELSE '' END AS d
    FROM pg_depend
    WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
      AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tradebars')
) objects"#;

fn one<T: for<'a> postgres::types::FromSql<'a>>(db: &str, q: &str) -> T {
    connect(db)
        .query_one(q, &[])
        .unwrap_or_else(|e| panic!("{q}: {e:?}"))
        .get(0)
}

#[test]
fn upgrading_from_0_1_0_gives_what_a_fresh_install_gives() {
    let old = empty_db("upgrade");
    connect(&old)
        .batch_execute("CREATE EXTENSION tradebars VERSION '0.1.0'")
        .expect("installing 0.1.0");
    let file = generate("upgrade.dbn.zst", 8, 20000, 21);
    let out = feeder(
        &["replay", &file.display().to_string(), "--rollup"],
        Some(&old),
    );
    assert!(out.status.success(), "{}", text(&out));
    let before = stored_bars(&old);
    assert_eq!(before, oracle(&file));

    connect(&old)
        .batch_execute("ALTER EXTENSION tradebars UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(
        one::<String>(
            &old,
            "SELECT extversion FROM pg_extension WHERE extname = 'tradebars'"
        ),
        "0.2.0"
    );
    assert_eq!(stored_bars(&old), before, "the upgrade keeps every bar");
    assert_eq!(
        one::<i64>(&old, "SELECT trades_rolled_up FROM rollup_status()"),
        20000
    );

    let fresh = fresh_db("fresh", "");
    assert_eq!(
        one::<String>(&old, EXTENSION_OBJECTS),
        one::<String>(&fresh, EXTENSION_OBJECTS)
    );
}

#[test]
fn dump_and_restore_keep_bars_staging_and_the_ledger() {
    let db = fresh_db("dump", "");
    let rolled = generate("dump-rolled.dbn.zst", 8, 20000, 31);
    let staged = generate("dump-staged.dbn.zst", 8, 5000, 32);
    assert!(feeder(
        &["replay", &rolled.display().to_string(), "--rollup"],
        Some(&db)
    )
    .status
    .success());
    assert!(
        feeder(&["replay", &staged.display().to_string()], Some(&db))
            .status
            .success()
    );
    assert_eq!(count(&db, "SELECT count(*) FROM trades_staging"), 5000);

    let dump = scratch("tradebars.dump");
    let out = pg_tool("pg_dump", &["-Fc", "-f", &dump.display().to_string(), &db]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = empty_db("restored");
    let out = pg_tool(
        "pg_restore",
        &[
            "--exit-on-error",
            "-d",
            &restored,
            &dump.display().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    assert_eq!(stored_bars(&restored), stored_bars(&db));
    assert_eq!(
        count(&restored, "SELECT count(*) FROM trades_staging"),
        5000
    );
    assert_eq!(count(&restored, "SELECT count(*) FROM ingest_ledger"), 2);
    // the restored database goes on: the staged trades roll up, a loaded file stays loaded
    let again = feeder(
        &["replay", &rolled.display().to_string(), "--rollup"],
        Some(&restored),
    );
    assert!(
        again.status.success() && text(&again).contains("already loaded"),
        "{}",
        text(&again)
    );
    let mut expected = oracle(&rolled);
    let staged_bars = oracle(&staged);
    let stored = stored_bars(&restored);
    assert_eq!(stored.values().map(|v| v.5).sum::<i64>(), 25000);
    expected.retain(|k, _| !staged_bars.contains_key(k));
    for (k, v) in &expected {
        assert_eq!(stored.get(k), Some(v), "bar {k:?}");
    }
}

#[test]
fn status_watch_prints_again_until_stopped() {
    let db = fresh_db("watch", "");
    let mut child = Command::new(feeder_bin())
        .args(["status", "--watch", "1"])
        .env("DATABASE_URL", url(&db))
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting status --watch");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    child.kill().expect("stopping status --watch");
    let _ = child.wait();
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("reading output");
    assert!(out.matches("Success criteria").count() >= 2, "{out}");
    assert!(out.contains("at least 1,000 new bars"), "{out}");
}

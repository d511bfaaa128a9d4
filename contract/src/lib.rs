//! What the feeder and the extension must agree on, defined once: lock keys, time units, the
//! undefined-price sentinel, the staging slots and columns, and the reasons a trade is set
//! aside. Both crates use these constants; the extension's SQL files, which cannot, are read
//! by this crate's tests, which fail where a file spells one of them differently.

/// Advisory locks, taken as `pg_advisory_lock(lock::CLASS, lock::<one of these>)`.
pub mod lock {
    /// The class of every tradebars advisory lock: "tb".
    pub const CLASS: i32 = 0x7462;
    /// Held by `bars_rollup()` for its transaction: rollups run one at a time.
    pub const ROLLUP: i32 = 2;
    /// Held by the one feeder that writes staging, for its session (with `objsubid` 2).
    pub const FEEDER: i32 = 3;
    /// Held while a load reads or extends trade identity.
    pub const IDENTITY: i32 = 4;
}

/// Databento's timestamps are nanoseconds since the UNIX epoch; a bar is one minute of them.
pub const NS_PER_MINUTE: i64 = 60_000_000_000;

/// Databento's undefined price (`dbn::UNDEF_PRICE`), staged as it comes: the rollup sets such
/// a trade aside.
pub const UNDEF_PRICE: i64 = i64::MAX;

/// Databento's sizes are `u32`: a larger one is not a Databento trade.
pub const MAX_SIZE: i64 = u32::MAX as i64;

/// The two staging tables: the feeder writes one while a rollup consumes the other.
pub const STAGING_SLOTS: [&str; 2] = ["trades_staging_0", "trades_staging_1"];

/// The staging columns, in the order the feeder's binary COPY writes them.
pub const STAGING_COLUMNS: &str =
    "symbol, instrument_id, publisher_id, ts_event, ts_recv, sequence, price, size, side, flags, ord";

/// The columns of `official_bars_staging` (Databento's own `ohlcv-1m` bars), in COPY order.
pub const OFFICIAL_COLUMNS: &str = "symbol, ts_event, open, high, low, close, volume";

/// The extension's internal helpers, out of the user's schema (sql/schema.sql creates it),
/// and the two of them the feeder calls.
pub mod internal {
    pub const SCHEMA: &str = "tradebars_internal";
    /// Why a load starting at a ts_recv must not go ahead (sql/identity.sql).
    pub const IDENTITY_REFUSAL: &str = "tradebars_internal.identity_refusal";
    /// Merges the staged official bars into price_bars (sql/official.sql).
    pub const OFFICIAL_BARS_MERGE: &str = "tradebars_internal.official_bars_merge";
}

/// The channel each rollup that changes bars notifies, with its id.
pub const BARS_CHANNEL: &str = "tradebars_bars";

/// Why a staged trade is not counted: `trades_rejected.reason`.
pub mod reject {
    pub const NO_SYMBOL: &str = "no symbol mapping";
    pub const UNDEFINED_TS_RECV: &str = "undefined ts_recv";
    /// `ts_recv out of range` or `ts_event out of range`: the clock's column, or under the
    /// event clock `ts_recv` too, outside 1980 to a day past now.
    pub const OUT_OF_RANGE: &str = "out of range";
    pub const UNDEFINED_PRICE: &str = "undefined price";
    pub const SIZE_NOT_POSITIVE: &str = "size not positive";
    pub const SIZE_OUT_OF_RANGE: &str = "size out of range";
}

#[cfg(test)]
mod sql_files_agree {
    use super::*;
    use std::path::Path;

    /// The extension's SQL sources and the template of the upgrade script still being
    /// written (sql/upgrade/); the scripts of released versions are frozen as they shipped.
    fn sql_files() -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let mut files: Vec<_> = [dir.clone(), dir.join("upgrade")]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).expect("the extension's sql folders"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                !name.starts_with("tradebars--")
                    || p.parent().is_some_and(|d| d.ends_with("upgrade"))
            })
            .map(|p| {
                (
                    p.display().to_string(),
                    without_comments(&std::fs::read_to_string(&p).unwrap()),
                )
            })
            .collect();
        files.sort();
        assert!(
            files.len() >= 8,
            "found only {} SQL files in {}",
            files.len(),
            dir.display()
        );
        files
    }

    /// The SQL of a file, its `--` comments left out (what a comment says is not executed).
    fn without_comments(text: &str) -> String {
        text.lines()
            .map(|line| line.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The integers after each occurrence of `prefix`, up to the closing parenthesis.
    fn args_after(text: &str, prefix: &str) -> Vec<Vec<i64>> {
        text.match_indices(prefix)
            .map(|(at, _)| {
                let rest = &text[at + prefix.len()..];
                let inner = &rest[..rest.find(')').unwrap_or(rest.len())];
                inner
                    .split(',')
                    .map(|a| a.trim().parse::<i64>().unwrap_or(i64::MIN))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn advisory_locks_use_the_contract_keys() {
        let keys = [lock::ROLLUP, lock::FEEDER, lock::IDENTITY].map(i64::from);
        let mut seen = 0;
        for (name, text) in sql_files() {
            for prefix in [
                "pg_advisory_xact_lock(",
                "pg_advisory_lock(",
                "pg_try_advisory_lock(",
            ] {
                for args in args_after(&text, prefix) {
                    assert_eq!(args.len(), 2, "{name}: {prefix}{args:?}");
                    assert_eq!(
                        args[0],
                        i64::from(lock::CLASS),
                        "{name}: lock class in {prefix}{args:?}"
                    );
                    assert!(
                        keys.contains(&args[1]),
                        "{name}: unknown lock key in {prefix}{args:?}"
                    );
                    seen += 1;
                }
            }
            for (at, _) in text.match_indices("classid = ") {
                let rest = &text[at + "classid = ".len()..];
                let class: String = rest.chars().take_while(char::is_ascii_digit).collect();
                assert_eq!(class, lock::CLASS.to_string(), "{name}: pg_locks classid");
                let objid = rest.split("objid = ").nth(1).map(|r| {
                    r.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                });
                assert_eq!(
                    objid,
                    Some(lock::FEEDER.to_string()),
                    "{name}: pg_locks objid"
                );
                seen += 1;
            }
        }
        assert!(
            seen >= 6,
            "expected the SQL files to take or look for tradebars locks, saw {seen}"
        );
    }

    #[test]
    fn minutes_are_spelled_one_way() {
        let spelled = NS_PER_MINUTE.to_string();
        let mut uses = 0;
        for (name, text) in sql_files() {
            for other in ["60e9", "60 * 1000000000", "60000000000.0", "6e10"] {
                assert!(
                    !text.contains(other),
                    "{name}: nanoseconds per minute spelled {other}"
                );
            }
            uses += text.matches(&spelled).count();
        }
        assert!(
            uses > 0,
            "the SQL files no longer divide by {spelled}: is this constant still used?"
        );
    }

    #[test]
    fn the_internal_schema_and_the_helpers_the_feeder_calls_are_where_the_sql_puts_them() {
        let files = sql_files();
        let all: String = files.iter().map(|(_, text)| text.as_str()).collect();
        assert!(
            all.contains(&format!("CREATE SCHEMA {};", internal::SCHEMA)),
            "no sql/ file creates the schema {}",
            internal::SCHEMA
        );
        for helper in [internal::IDENTITY_REFUSAL, internal::OFFICIAL_BARS_MERGE] {
            assert!(
                helper.starts_with(&format!("{}.", internal::SCHEMA)),
                "{helper}"
            );
            assert!(
                all.contains(&format!("CREATE OR REPLACE FUNCTION {helper}(")),
                "no sql/ file creates {helper}()"
            );
        }
    }
}

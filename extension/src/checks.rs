//! Input checks shared by the SQL API: one clear error, raised before anything changes.

use pgrx::prelude::*;

// The checks written in SQL (`require_argument`).
pgrx::extension_sql_file!(
    "../../sql/checks.sql",
    name = "argument_checks",
    requires = ["tradebars_schema"],
);

const MINUTE_US: i64 = 60_000_000;
const DAY_US: i64 = 24 * 60 * MINUTE_US;

/// Why `bucket` cannot group 1-minute bars, if it cannot. Buckets are whole minutes from one
/// minute to one day (months have no fixed length, so they are refused rather than guessed).
pub fn bucket_problem(months: i32, days: i32, micros: i64) -> Option<String> {
    if months != 0 {
        return Some("bucket must not contain months or years".into());
    }
    let total = i64::from(days)
        .checked_mul(DAY_US)
        .and_then(|d| d.checked_add(micros));
    match total {
        None => Some("bucket is out of range".into()),
        Some(t) if t < MINUTE_US => Some("bucket must be at least 1 minute".into()),
        Some(t) if t > DAY_US => Some("bucket must be at most 1 day".into()),
        Some(t) if t % MINUTE_US != 0 => Some("bucket must be a whole number of minutes".into()),
        Some(_) => None,
    }
}

/// Why `age` cannot be a look-back or retention period, if it cannot: it must be known,
/// not negative, and not beyond 100 years.
pub fn age_problem(months: i32, days: i32, micros: i64) -> Option<String> {
    let approx_days = i64::from(months) * 30 + i64::from(days) + micros / DAY_US;
    if months < 0 || days < 0 || micros < 0 {
        Some("must not be negative".into())
    } else if approx_days > 36_600 {
        Some("must be at most 100 years".into())
    } else {
        None
    }
}

/// `bars()`'s bucket, checked.
#[pg_extern(immutable, parallel_safe, schema = "tradebars_internal")]
fn checked_bucket(bucket: Option<Interval>) -> Interval {
    let Some(b) = bucket else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "bucket must not be NULL (use '1 minute', '5 minutes', '1 hour', '1 day')"
        );
    };
    if let Some(problem) = bucket_problem(b.months(), b.days(), b.micros()) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{problem} (got {})", b.to_iso_string())
        );
    }
    b
}

/// A look-back or retention period, checked; `what` names the argument in the error.
#[pg_extern(immutable, parallel_safe, schema = "tradebars_internal")]
fn checked_age(what: &str, age: Option<Interval>) -> Interval {
    let Some(a) = age else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} must not be NULL")
        );
    };
    if let Some(problem) = age_problem(a.months(), a.days(), a.micros()) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} {problem} (got {})", a.to_iso_string())
        );
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket_problem(0, 0, MINUTE_US), None);
        assert_eq!(bucket_problem(0, 0, 5 * MINUTE_US), None);
        assert_eq!(bucket_problem(0, 0, 60 * MINUTE_US), None);
        assert_eq!(bucket_problem(0, 1, 0), None);
        assert!(bucket_problem(1, 0, 0).is_some());
        assert!(bucket_problem(0, 0, 30_000_000).is_some());
        assert!(bucket_problem(0, 0, 90_000_000).is_some());
        assert!(bucket_problem(0, 2, 0).is_some());
        assert!(bucket_problem(0, 0, -MINUTE_US).is_some());
        assert!(bucket_problem(0, i32::MAX, i64::MAX).is_some());
    }

    #[test]
    fn ages() {
        assert_eq!(age_problem(0, 7, 0), None);
        assert_eq!(age_problem(0, 0, 0), None);
        assert!(age_problem(0, -1, 0).is_some());
        assert!(age_problem(0, 0, -1).is_some());
        assert!(age_problem(12 * 200, 0, 0).is_some());
    }
}

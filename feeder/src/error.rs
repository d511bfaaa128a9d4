//! The feeder's errors: each says what went wrong and where, on one line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FeederError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a readable DBN file: {msg}", file.display())]
    Decode { file: PathBuf, msg: String },
    #[error("{}: schema {schema} carries no trade events (tradebars-feeder reads trades, tbbo, mbp-1 or mbo, and Databento's ohlcv-1m bars: price_bars holds minute bars)", file.display())]
    Schema { file: PathBuf, schema: String },
    #[error("cannot connect to PostgreSQL at {target}: {msg}")]
    Connect { target: String, msg: String },
    #[error("PostgreSQL: {context}: {msg}")]
    Db { context: String, msg: String },
    #[error("{origin}: nothing of it staged: {msg}")]
    Identity { origin: String, msg: String },
    /// A bounded source's trades lie beyond the range its metadata or request declared: the
    /// load reads trade identity again for `first..=last` (ns) and starts over.
    #[error("{origin}: nothing of it staged: its trades span ts_recv {} to {}, beyond its declared range", crate::identity::utc(.first), crate::identity::utc(.last))]
    OutsideRange {
        origin: String,
        first: i64,
        last: i64,
    },
    #[error("{0}")]
    FeederRunning(String),
    #[error("Databento refused the API key: {0}")]
    Auth(String),
    #[error("Databento gateway: {0}")]
    Gateway(String),
    #[error("{0}")]
    Usage(String),
    /// Asked to stop (SIGTERM, SIGINT) before the work could start again: nothing is lost,
    /// the next start resumes. Exit code 0.
    #[error("stopped {0}")]
    Stopped(String),
}

impl FeederError {
    pub fn io(file: &Path, source: std::io::Error) -> Self {
        FeederError::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    /// A source that trade identity cannot take, named by `origin`.
    pub fn identity(origin: impl Into<String>, e: crate::identity::IdentityError) -> Self {
        match e {
            crate::identity::IdentityError::OutsideRange { first, last } => {
                FeederError::OutsideRange {
                    origin: origin.into(),
                    first,
                    last,
                }
            }
            e => FeederError::Identity {
                origin: origin.into(),
                msg: e.to_string(),
            },
        }
    }

    pub fn db(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        FeederError::Db {
            context: context.into(),
            msg: describe_db_error(&e),
        }
    }

    /// The process exit code: 4 when Databento refuses the key, 3 when another feeder holds
    /// the database, 2 for usage, 0 when stopped on request, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            FeederError::Stopped(_) => 0,
            FeederError::Auth(_) => 4,
            FeederError::FeederRunning(_) => 3,
            FeederError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// The server's message (and hint) rather than tokio-postgres's generic "db error".
pub fn describe_db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} (hint: {hint})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
    }
}

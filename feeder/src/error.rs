//! The feeder's errors: each says what went wrong and where, on one line; the error it comes
//! from, where there is one, stays attached as its source, so a retry can be decided by what
//! failed (a SQLSTATE, an HTTP status) rather than by the words of a message.

use std::path::{Path, PathBuf};

use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum FeederError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A file that is not readable DBN: `msg` says why; `source` is the DBN decoder's or
    /// encoder's own error, none where the feeder itself found the file wanting (empty,
    /// decoding stopped).
    #[error("{}: not a readable DBN file: {msg}", file.display())]
    Decode {
        file: PathBuf,
        msg: String,
        #[source]
        source: Option<Box<dbn::Error>>,
    },
    #[error("{}: schema {schema} carries no trade events (tradebars-feeder reads trades, tbbo, mbp-1 or mbo, and Databento's ohlcv-1m bars: price_bars holds minute bars)", file.display())]
    Schema { file: PathBuf, schema: String },
    #[error("cannot connect to PostgreSQL at {target}: {msg}")]
    Connect {
        target: String,
        msg: String,
        /// None when the settings themselves are wrong (nothing was tried).
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    #[error("PostgreSQL: {context}: {msg}")]
    Db {
        context: String,
        msg: String,
        /// None when the server answered, but not as the feeder expects.
        #[source]
        source: Option<tokio_postgres::Error>,
    },
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
    #[error("Databento refused the API key: {msg}")]
    Auth {
        msg: String,
        /// Boxed: the client's error is large, and every Result of the feeder carries room
        /// for this one.
        #[source]
        source: Option<Box<databento::Error>>,
    },
    #[error("Databento gateway: {msg}")]
    Gateway {
        msg: String,
        #[source]
        source: Option<Box<databento::Error>>,
    },
    /// The command line (or what it names) cannot be used. Exit code 2, and only for this.
    #[error("{0}")]
    Usage(String),
    /// Asked to stop (SIGTERM, SIGINT) before the work could start again: nothing is lost,
    /// the next start resumes. Exit code 0.
    #[error("stopped {0}")]
    Stopped(String),
    /// A task of the feeder's own ended without an answer (it panicked or was cancelled).
    #[error("{what}: {source}")]
    Internal {
        what: String,
        source: tokio::task::JoinError,
    },
}

impl FeederError {
    pub fn io(file: &Path, source: std::io::Error) -> Self {
        FeederError::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    /// A file the DBN decoder refused; the message reads as the decoder's, with an I/O
    /// error's context after it.
    pub fn dbn(file: &Path, e: dbn::Error) -> Self {
        let msg = match &e {
            dbn::Error::Io { source, context } => format!("{source} ({context})"),
            other => other.to_string(),
        };
        FeederError::Decode {
            file: file.to_path_buf(),
            msg,
            source: Some(Box::new(e)),
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

    /// A statement that failed while doing `context`.
    pub fn db(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        FeederError::Db {
            context: context.into(),
            msg: describe_db_error(&e),
            source: Some(e),
        }
    }

    /// An answer the feeder cannot use, while doing `context`.
    pub fn db_answer(context: impl Into<String>, msg: impl Into<String>) -> Self {
        FeederError::Db {
            context: context.into(),
            msg: msg.into(),
            source: None,
        }
    }

    /// A failure of Databento's client while doing `context` (empty: none to name). A refused
    /// key is `Auth`, as its type or HTTP status says; anything else is `Gateway`.
    pub fn databento(context: &str, e: databento::Error) -> Self {
        if refuses_the_key(&e) {
            return FeederError::Auth {
                msg: e.to_string(),
                source: Some(Box::new(e)),
            };
        }
        let msg = if context.is_empty() {
            e.to_string()
        } else {
            format!("{context}: {e}")
        };
        FeederError::Gateway {
            msg,
            source: Some(Box::new(e)),
        }
    }

    /// What the gateway (or its records) said, with no client error behind it.
    pub fn gateway(msg: impl Into<String>) -> Self {
        FeederError::Gateway {
            msg: msg.into(),
            source: None,
        }
    }

    /// A task that ended without an answer, named by `what`.
    pub fn internal(what: impl Into<String>, source: tokio::task::JoinError) -> Self {
        FeederError::Internal {
            what: what.into(),
            source,
        }
    }

    /// The SQLSTATE the server gave, when this is its answer.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            FeederError::Db { source, .. } | FeederError::Connect { source, .. } => {
                source.as_ref().and_then(tokio_postgres::Error::code)
            }
            _ => None,
        }
    }

    /// Whether trying again, on a new connection, may succeed: the connection was lost or the
    /// server is short of something for now, or Databento could not be reached or answer.
    pub fn is_transient(&self) -> bool {
        match self {
            // Without the server's answer, the connection was lost (or never made).
            FeederError::Db {
                source: Some(_), ..
            }
            | FeederError::Connect {
                source: Some(_), ..
            } => self.sqlstate().is_none_or(sqlstate_is_transient),
            FeederError::Gateway { source, .. } => {
                source.as_deref().is_some_and(databento_is_transient)
            }
            _ => false,
        }
    }

    /// The process exit code: 4 when Databento refuses the key, 3 when another feeder holds
    /// the database, 2 for usage, 0 when stopped on request, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            FeederError::Stopped(_) => 0,
            FeederError::Auth { .. } => 4,
            FeederError::FeederRunning(_) => 3,
            FeederError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Class 08 (connection exception), class 53 (insufficient resources), the server shutting
/// down or starting (57P01, 57P02, 57P03), a serialization failure or a deadlock.
fn sqlstate_is_transient(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// Whether Databento refused the key itself: retrying cannot help.
fn refuses_the_key(e: &databento::Error) -> bool {
    match e {
        databento::Error::Auth(_) => true,
        databento::Error::BadArgument { param_name, .. } => *param_name == "key",
        databento::Error::Api(api) => api.status_code.as_u16() == 401,
        databento::Error::Http(http) => http.status().is_some_and(|s| s.as_u16() == 401),
        _ => false,
    }
}

/// I/O and HTTP transport failures, timeouts, and the HTTP statuses that ask to come back
/// later (5xx, 429 too many requests, 408 request timeout).
fn databento_is_transient(e: &databento::Error) -> bool {
    let status_is_transient = |status: u16| status >= 500 || status == 429 || status == 408;
    match e {
        databento::Error::Io(_)
        | databento::Error::HeartbeatTimeout(_)
        | databento::Error::ConnectTimeout(_)
        | databento::Error::AuthTimeout(_) => true,
        databento::Error::Http(http) => match http.status() {
            Some(status) => status_is_transient(status.as_u16()),
            None => http.is_timeout() || http.is_connect() || http.is_request(),
        },
        databento::Error::Api(api) => status_is_transient(api.status_code.as_u16()),
        _ => false,
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn api(status: u16) -> databento::Error {
        databento::Error::Api(databento::error::ApiError {
            request_id: None,
            status_code: axum::http::StatusCode::from_u16(status).expect("a status"),
            case: None,
            message: "answer".into(),
            docs_url: None,
            payload: None,
        })
    }

    #[test]
    fn retried_sqlstates_are_connection_resources_shutdown_and_conflicts() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::OUT_OF_MEMORY,
            SqlState::DISK_FULL,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            assert!(sqlstate_is_transient(&code), "{}", code.code());
        }
        for code in [
            SqlState::QUERY_CANCELED, // 57014: a statement timeout is not the server going away
            SqlState::UNIQUE_VIOLATION,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_PASSWORD,
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            SqlState::UNDEFINED_FUNCTION,
        ] {
            assert!(!sqlstate_is_transient(&code), "{}", code.code());
        }
    }

    #[test]
    fn an_answer_the_feeder_cannot_use_is_not_retried_and_has_no_sqlstate() {
        let e = FeederError::db_answer("asking for the staging table", "unexpected table x");
        assert!(!e.is_transient());
        assert_eq!(e.sqlstate(), None);
        assert_eq!(
            e.to_string(),
            "PostgreSQL: asking for the staging table: unexpected table x"
        );
    }

    #[test]
    fn a_refused_key_is_auth_by_its_kind_or_status_not_its_words() {
        let refused = FeederError::databento("historical API", api(401));
        assert!(matches!(refused, FeederError::Auth { .. }), "{refused}");
        assert_eq!(refused.exit_code(), 4);
        assert!(refused.source().is_some(), "the cause is kept");
        let auth = FeederError::databento("", databento::Error::Auth("bad key".into()));
        assert_eq!(
            auth.to_string(),
            "Databento refused the API key: authentication failed: bad key"
        );
        // a message that only mentions 401 is no refusal
        let other = FeederError::databento("", databento::Error::Internal("port 401".into()));
        assert!(matches!(other, FeederError::Gateway { .. }), "{other}");
        assert_eq!(
            other.to_string(),
            "Databento gateway: internal error: port 401"
        );
        let timeout = FeederError::databento("historical API", api(503));
        assert_eq!(timeout.exit_code(), 1);
        assert!(timeout
            .to_string()
            .starts_with("Databento gateway: historical API: API error: 503"));
    }

    #[test]
    fn databento_errors_worth_retrying() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for e in [
            databento::Error::Io(io()),
            databento::Error::ConnectTimeout(time::Duration::seconds(10)),
            databento::Error::HeartbeatTimeout(time::Duration::seconds(30)),
            api(500),
            api(502),
            api(429),
            api(408),
        ] {
            assert!(FeederError::databento("", e).is_transient());
        }
        for e in [
            api(400),
            api(422),
            databento::Error::Internal("x".into()),
            databento::Error::BadArgument {
                param_name: "dataset",
                desc: "x".into(),
            },
        ] {
            assert!(!FeederError::databento("", e).is_transient());
        }
        assert!(!FeederError::gateway("the gateway closed the session").is_transient());
    }

    #[test]
    fn exit_codes_keep_their_meaning() {
        assert_eq!(FeederError::Usage("x".into()).exit_code(), 2);
        assert_eq!(FeederError::Stopped("x".into()).exit_code(), 0);
        assert_eq!(FeederError::FeederRunning("x".into()).exit_code(), 3);
        assert_eq!(FeederError::gateway("x").exit_code(), 1);
        assert_eq!(FeederError::db_answer("x", "y").exit_code(), 1);
    }

    #[tokio::test]
    async fn a_task_that_panicked_is_internal_and_exits_1() {
        let panicked = tokio::spawn(async { panic!("boom") })
            .await
            .expect_err("it panicked");
        let e = FeederError::internal("generator stopped", panicked);
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("generator stopped: "), "{e}");
    }
}

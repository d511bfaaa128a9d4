//! Connecting to PostgreSQL without ever showing the password.

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{describe_db_error, FeederError};

/// Where a connection goes, for messages: host, port and database, never credentials.
pub fn describe_target(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

pub async fn connect(url: &str, application: &str) -> Result<Client, FeederError> {
    let mut config: Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| FeederError::Connect {
                target: "the given database URL".into(),
                msg: format!("the URL is not valid ({})", describe_db_error(&e)),
            })?;
    config.application_name(application);
    let target = describe_target(&config);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| FeederError::Connect {
            target: target.clone(),
            msg: describe_db_error(&e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(target = %target, error = %describe_db_error(&e), "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_never_shows_the_password() {
        let config: Config = "postgres://app:s3cret@db.example:6543/bars"
            .parse()
            .unwrap_or_default();
        let shown = describe_target(&config);
        assert_eq!(shown, "db.example:6543/bars");
        assert!(!shown.contains("s3cret"));
    }
}

//! `tradebars-feeder ping`: connects as every command does and prints what the server sees
//! of the connection.

use crate::db;
use crate::error::FeederError;
use crate::APP;

pub async fn run(url: &str) -> Result<(), FeederError> {
    let tls = db::tls_options(url)?;
    let client = db::connect(url, APP).await?;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'),
                    coalesce(s.ssl, false), coalesce(s.version, ''), coalesce(s.cipher, ''),
                    coalesce(s.client_dn, '')
             FROM (SELECT 1) one LEFT JOIN pg_stat_ssl s ON s.pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| FeederError::db("ping", e))?;
    let (user, database, version): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let (ssl, protocol, cipher, client_dn): (bool, String, String, String) =
        (row.get(3), row.get(4), row.get(5), row.get(6));
    let tls_text = if ssl {
        let client_cert = if client_dn.is_empty() {
            String::new()
        } else {
            format!(", client certificate {client_dn}")
        };
        format!(
            "TLS {protocol} {cipher} ({}, {}{client_cert})",
            tls.describe(),
            describe_verify(tls.verify())
        )
    } else {
        format!("no TLS ({})", tls.describe())
    };
    println!("connected to database {database} as {user}: PostgreSQL {version}, {tls_text}");
    Ok(())
}

fn describe_verify(verify: db::Verify) -> &'static str {
    match verify {
        db::Verify::Nothing => "server certificate not checked",
        db::Verify::Chain => "server certificate checked against the CA",
        db::Verify::ChainAndHost => "server certificate checked against the CA and the host name",
    }
}

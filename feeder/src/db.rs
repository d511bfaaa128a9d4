//! Connecting to PostgreSQL, with TLS the way libpq does it, without ever showing the password.
//!
//! Every command connects here. The URL (`postgres://...` or `key=value ...`) and the
//! environment give libpq's TLS settings:
//!
//! | setting | URL parameter | environment |
//! | --- | --- | --- |
//! | mode | `sslmode` = `disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full` | `PGSSLMODE` |
//! | CA file | `sslrootcert` (default `~/.postgresql/root.crt` when it exists) | `PGSSLROOTCERT` |
//! | client certificate | `sslcert` (default `~/.postgresql/postgresql.crt` when it exists) | `PGSSLCERT` |
//! | its key | `sslkey` (default `~/.postgresql/postgresql.key` when it exists) | `PGSSLKEY` |
//!
//! The URL wins over the environment. What each mode checks, as libpq: `prefer` uses TLS when
//! the server offers it and checks nothing; `require` insists on TLS and checks nothing, unless a
//! CA file is there, when it behaves as `verify-ca`; `verify-ca` checks that the server's
//! certificate chains to the CA; `verify-full` checks that and that it names the host connected
//! to. TLS does not apply to Unix sockets.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::Host;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

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

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encryption only: any certificate (its handshake signature is still checked).
    Nothing,
    /// The certificate chains to a CA of `sslrootcert`; the host name is not checked.
    Chain,
    /// The chain, and the certificate names the host connected to.
    ChainAndHost,
}

/// The TLS settings of one connection, as libpq would take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// What the mode checks, given the CA file there is (libpq: `require` with a CA file
    /// behaves as `verify-ca`).
    pub fn verify(&self) -> Verify {
        match self.mode {
            SslMode::Disable | SslMode::Prefer => Verify::Nothing,
            SslMode::Require if self.rootcert.is_some() => Verify::Chain,
            SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::ChainAndHost,
        }
    }

    /// One phrase for messages, e.g. "sslmode=verify-full".
    pub fn describe(&self) -> String {
        match (self.mode, self.verify()) {
            (SslMode::Require, Verify::Chain) => {
                "sslmode=require with sslrootcert, checked as verify-ca".into()
            }
            (mode, _) => format!("sslmode={mode}"),
        }
    }
}

/// The TLS keys of a connection string, which tokio-postgres does not take itself.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A database URL split into what tokio-postgres parses and the TLS settings, with the
/// environment (`env`, e.g. `std::env::var`) filling in what the URL does not say.
pub fn parse(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, TlsOptions), String> {
    let (rest, given) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_key_values(url)?
    };
    let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        format!("the database URL is not valid ({})", describe_db_error(&e))
    })?;
    let tls = tls_settings(given, env)?;
    config.ssl_mode(driver_ssl_mode(&config, tls.mode));
    keepalive_unless_given(&mut config, &rest);
    Ok((config, tls))
}

/// TCP keepalive probes of an idle connection, unless the URL sets them: tokio-postgres waits
/// 2 hours before the first, so a feeder whose database vanished without a reset (a failover,
/// a NAT that forgot the flow) would wait that long to notice and reconnect. After 30 s idle,
/// every 10 s, 3 unanswered: a dead peer is found in about a minute. `keepalives=0` in the
/// URL still turns them off.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

fn keepalive_unless_given(config: &mut Config, url: &str) {
    if !url.contains("keepalives_idle") {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if !url.contains("keepalives_interval") {
        config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if !url.contains("keepalives_retries") {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
}

/// The TLS settings from the URL's TLS keys (`given`), else the environment, else libpq's
/// defaults. Kept apart from `parse` because tokio-postgres knows none of these keys. The
/// checks run in a fixed order (mode, CA, certificate, key, then whether they fit together):
/// the first wrong setting is the one reported.
fn tls_settings(
    mut given: Vec<(String, String)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TlsOptions, String> {
    // The last of a key given twice wins; an empty value counts as not given.
    let mut take = |key: &str, var: &str| {
        given
            .iter()
            .rposition(|(k, _)| k == key)
            .map(|i| given.swap_remove(i).1)
            .or_else(|| env(var))
            .filter(|v| !v.is_empty())
    };
    let mode = take("sslmode", "PGSSLMODE");
    let rootcert = take("sslrootcert", "PGSSLROOTCERT");
    let cert = take("sslcert", "PGSSLCERT");
    let key = take("sslkey", "PGSSLKEY");
    let mode = mode
        .map(|m| SslMode::parse(&m))
        .transpose()?
        .unwrap_or(SslMode::Prefer);
    if rootcert.as_deref() == Some("system") {
        return Err(
            "sslrootcert=system is not supported: give the CA's certificate file instead".into(),
        );
    }
    let tls = TlsOptions {
        mode,
        rootcert: tls_file(rootcert, "sslrootcert", "root.crt", env)?,
        cert: tls_file(cert, "sslcert", "postgresql.crt", env)?,
        key: tls_file(key, "sslkey", "postgresql.key", env)?,
    };
    check_complete(&tls)?;
    Ok(tls)
}

/// One TLS file: the one given (`what` names its setting), which must exist, or else libpq's
/// default `~/.postgresql/<default>` when that exists. A missing default is no error, only
/// unused (whether the mode can do without it is `check_complete`'s question).
fn tls_file(
    given: Option<String>,
    what: &str,
    default: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, String> {
    let explicit = match given.map(PathBuf::from) {
        Some(p) if !p.is_file() => return Err(format!("{what} {} does not exist", p.display())),
        other => other,
    };
    Ok(explicit.or_else(|| {
        env("HOME")
            .map(|h| Path::new(&h).join(".postgresql").join(default))
            .filter(|p| p.is_file())
    }))
}

/// Refuses TLS settings that cannot work, before connecting rather than at the handshake: a
/// mode that checks the chain with no CA to check it against, a certificate without its key.
fn check_complete(tls: &TlsOptions) -> Result<(), String> {
    let mode = tls.mode;
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.rootcert.is_none() {
        return Err(format!(
            "sslmode={mode} checks the server's certificate against a CA: give the CA's certificate file with sslrootcert (or PGSSLROOTCERT)"
        ));
    }
    if tls.cert.is_some() && tls.key.is_none() {
        return Err("sslcert is given without sslkey (or PGSSLKEY)".into());
    }
    Ok(())
}

/// What tokio-postgres is told of TLS: it only knows disable, prefer and require (the
/// verify modes are ours, in the rustls verifier). TLS does not apply to Unix sockets
/// (libpq ignores sslmode there), so a config with no TCP host never asks for it.
fn driver_ssl_mode(config: &Config, mode: SslMode) -> tokio_postgres::config::SslMode {
    let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)))
        || config.get_hosts().is_empty();
    match mode {
        _ if !tcp => tokio_postgres::config::SslMode::Disable,
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

/// A URL parameter's value, %-escapes decoded. A `%` not followed by two hex digits is
/// refused, where the decoder alone would keep it as it is.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let well_formed = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| {
            bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !well_formed {
        return Err("the database URL has a bad %-escape in its parameters".into());
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| "the database URL's parameters are not UTF-8".into())
}

type Split = (String, Vec<(String, String)>);

/// `postgres://...?a=b&sslmode=...`: the URL without the TLS parameters, and those.
fn split_url(url: &str) -> Result<Split, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_KEYS.contains(&k) {
            tls.push((k.to_string(), percent_decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

/// `host=... sslmode=...`: the string without the TLS settings, and those. Values may be
/// quoted with single quotes, with backslash escapes, as libpq reads them.
fn split_key_values(s: &str) -> Result<Split, String> {
    let mut chars = s.chars().peekable();
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "the connection string is not valid: {key:?} has no value"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err("the connection string has an unclosed quote".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), tls))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The verifier libpq's weaker modes need, which rustls has no name for: with no `chain`,
/// any certificate (`prefer` and `require` without a CA: encryption without authentication);
/// with one, `verify-ca`: the chain to a trusted CA, whatever names the certificate holds
/// (webpki checks the chain before the name, so a name error means the chain was good).
/// The handshake's signature is checked either way, with the provider's algorithms (those
/// webpki uses too).
#[derive(Debug)]
struct LibpqVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

/// The trait's TLS 1.2 and 1.3 signature checks, which differ only in the function of rustls
/// they call (of the same name), with the provider's algorithms.
macro_rules! handshake_signature_check {
    ($check:ident) => {
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::$check(message, cert, dss, algorithms)
        }
    };
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    handshake_signature_check!(verify_tls12_signature);
    handshake_signature_check!(verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The rustls client configuration for `tls`.
pub fn client_config(tls: &TlsOptions) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.verify(), &tls.rootcert) {
        (Verify::Nothing, _) | (_, None) => Arc::new(LibpqVerifier {
            chain: None,
            provider: provider.clone(),
        }),
        (verify, Some(rootcert)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(rootcert, "sslrootcert")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", rootcert.display()))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert {}: {e}", rootcert.display()))?;
            if verify == Verify::Chain {
                Arc::new(LibpqVerifier {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            } else {
                webpki
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert and sslkey do not go together: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The first rustls error in `e`'s causes (tokio-postgres wraps it in an io::Error).
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

/// `DnsName("localhost")` or `IpAddress(127.0.0.1)`, as rustls presents the names of a
/// certificate, as `localhost` and `127.0.0.1`.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(|inner| inner.trim_matches('"'))
        .unwrap_or(presented)
}

/// One line on why the connection failed, in TLS terms where TLS is why.
pub fn describe_connect_error(e: &tokio_postgres::Error, tls: &TlsOptions) -> String {
    if let Some(r) = rustls_error(e) {
        return describe_tls_error(r, tls);
    }
    let msg = describe_db_error(e);
    if msg.contains("server does not support TLS") {
        return format!(
            "the server does not accept TLS connections, and {} requires TLS (is ssl off on the server?)",
            tls.describe()
        );
    }
    msg
}

/// Why the TLS handshake failed, in the terms of the settings that made it.
fn describe_tls_error(r: &rustls::Error, tls: &TlsOptions) -> String {
    let how = tls.describe();
    let ca = tls
        .rootcert
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match r {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected,
                presented,
            }) => format!(
                "TLS: the server's certificate is not valid for host {} (it names {}); {how} checks the host name (verify-ca would check only the CA)",
                expected.to_str(),
                if presented.is_empty() {
                    "no host".to_string()
                } else {
                    presented
                        .iter()
                        .map(|p| plain_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => format!(
                "TLS: the server's certificate is not valid for the host connected to; {how} checks the host name"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => format!(
                "TLS: the server's certificate is not signed by a CA of sslrootcert {ca} ({how})"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!("TLS: the server's certificate has expired ({how})"),
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRequired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::AccessDenied),
            ) => match &tls.cert {
                Some(cert) => format!(
                    "TLS: the server refused the client certificate of sslcert {} (alert {alert:?}: is it signed by a CA of the server's ssl_ca_file?) ({how})",
                    cert.display()
                ),
                None => format!(
                    "TLS: the server asks for a client certificate (alert {alert:?}): give one with sslcert and sslkey ({how})"
                ),
            },
            rustls::Error::InvalidCertificate(c) => {
                format!("TLS: the server's certificate is refused: {c:?} ({how})")
            }
            other => format!("TLS: {other} ({how})"),
    }
}

/// The TLS settings `url` and the environment give, for messages (e.g. `tradebars-feeder ping`).
pub fn tls_options(url: &str) -> Result<TlsOptions, FeederError> {
    parse(url, &|k| std::env::var(k).ok())
        .map(|(_, tls)| tls)
        .map_err(unusable_url)
}

/// A database URL (or its TLS settings) that cannot be used: nothing was tried.
fn unusable_url(msg: String) -> FeederError {
    FeederError::Connect {
        target: "the given database URL".into(),
        msg,
        source: None,
    }
}

pub async fn connect(url: &str, application: &str) -> Result<Client, FeederError> {
    open(url, application, None).await
}

/// As `connect`, with the connection's notifications (of `LISTEN`) sent down a channel. The
/// channel closes when the connection does.
pub async fn connect_listening(
    url: &str,
    application: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), FeederError> {
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((open(url, application, Some(tx)).await?, rx))
}

async fn open(
    url: &str,
    application: &str,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
) -> Result<Client, FeederError> {
    let (mut config, tls) = parse(url, &|k| std::env::var(k).ok()).map_err(unusable_url)?;
    config.application_name(application);
    let target = describe_target(&config);
    let failed = |e: tokio_postgres::Error| FeederError::Connect {
        target: target.clone(),
        msg: describe_connect_error(&e, &tls),
        source: Some(e),
    };
    if matches!(
        config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable
    ) {
        let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
        spawn_connection(connection, target.clone(), notifications);
        return Ok(client);
    }
    let tls_config = client_config(&tls).map_err(|msg| FeederError::Connect {
        target: target.clone(),
        msg,
        source: None,
    })?;
    let (client, connection) = config
        .connect(MakeRustlsConnect::new(tls_config))
        .await
        .map_err(failed)?;
    spawn_connection(connection, target.clone(), notifications);
    Ok(client)
}

/// Drives the connection; with `notifications`, reads its messages one by one and passes the
/// notifications on (a connection driven as a plain future drops them).
fn spawn_connection<S, T>(
    mut connection: Connection<S, T>,
    target: String,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closed = move |e: tokio_postgres::Error| {
        tracing::warn!(target = %target, error = %describe_db_error(&e), "PostgreSQL connection closed");
    };
    tokio::spawn(async move {
        let Some(tx) = notifications else {
            if let Err(e) = connection.await {
                closed(e);
            }
            return;
        };
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(AsyncMessage::Notice(n)) => tracing::debug!("PostgreSQL: {}", n.message()),
                Ok(_) => {}
                Err(e) => return closed(e),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode as WireMode;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Parses `url` and checks libpq's mode, what it verifies, and the mode tokio-postgres is
    /// told; returns the parse for further checks.
    fn parsed_with_modes(
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
        want: (SslMode, Verify, WireMode),
    ) -> (Config, TlsOptions) {
        let (config, tls) = parse(url, env).expect("parse");
        assert_eq!(
            (tls.mode, tls.verify(), config.get_ssl_mode()),
            want,
            "{url}"
        );
        (config, tls)
    }

    #[test]
    fn an_idle_connection_is_probed_after_30_s_unless_the_url_says_otherwise() {
        let secs = std::time::Duration::from_secs;
        let (config, _) = parse("postgres://app@db.example/bars", &no_env).expect("parse");
        assert_eq!(
            (
                config.get_keepalives(),
                config.get_keepalives_idle(),
                config.get_keepalives_interval(),
                config.get_keepalives_retries()
            ),
            (true, secs(30), Some(secs(10)), Some(3))
        );
        let (config, _) = parse(
            "postgres://app@db.example/bars?keepalives_idle=600&keepalives_retries=9",
            &no_env,
        )
        .expect("parse");
        assert_eq!(
            (
                config.get_keepalives_idle(),
                config.get_keepalives_interval(),
                config.get_keepalives_retries()
            ),
            (secs(600), Some(secs(10)), Some(9))
        );
        let (config, _) = parse("host=db.example user=app keepalives=0", &no_env).expect("parse");
        assert!(!config.get_keepalives());
    }

    #[test]
    fn the_target_never_shows_the_password() {
        let config: Config = "postgres://app:s3cret@db.example:6543/bars"
            .parse()
            .unwrap_or_default();
        let shown = describe_target(&config);
        assert_eq!(shown, "db.example:6543/bars");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn without_tls_settings_the_mode_is_prefer_and_nothing_is_verified() {
        parsed_with_modes(
            "postgres://app@db.example/bars",
            &no_env,
            (SslMode::Prefer, Verify::Nothing, WireMode::Prefer),
        );
    }

    #[test]
    fn url_parameters_are_taken_out_and_decoded_and_the_rest_kept() {
        let dir = std::env::temp_dir();
        let ca = dir.join(format!("tradebars-db-test-{}.crt", std::process::id()));
        std::fs::write(&ca, "x").expect("writing");
        let url = format!(
            "postgres://app:pw@db.example:6543/bars?connect_timeout=7&sslmode=verify-full&sslrootcert={}",
            ca.display().to_string().replace('/', "%2F")
        );
        let want = (SslMode::VerifyFull, Verify::ChainAndHost, WireMode::Require);
        let (config, tls) = parsed_with_modes(&url, &no_env, want);
        std::fs::remove_file(&ca).ok();
        assert_eq!(tls.rootcert.as_deref(), Some(ca.as_path()));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(7))
        );
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn the_url_wins_over_the_environment() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("require".to_string()),
            _ => None,
        };
        let (_, tls) = parse("postgres://db.example/bars?sslmode=disable", &env).expect("parse");
        assert_eq!(tls.mode, SslMode::Disable);
        parsed_with_modes(
            "postgres://db.example/bars",
            &env,
            (SslMode::Require, Verify::Nothing, WireMode::Require),
        );
    }

    #[test]
    fn the_files_in_home_dot_postgresql_are_the_defaults_as_libpq() {
        let home = std::env::temp_dir().join(format!("tradebars-db-home-{}", std::process::id()));
        let dir = home.join(".postgresql");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in ["root.crt", "postgresql.crt", "postgresql.key"] {
            std::fs::write(dir.join(f), "x").expect("writing");
        }
        let home_str = home.display().to_string();
        let env = |k: &str| (k == "HOME").then(|| home_str.clone());
        let parsed = parse("postgres://db.example/bars?sslmode=require", &env);
        std::fs::remove_dir_all(&home).ok();
        let (_, tls) = parsed.expect("parse");
        assert_eq!(tls.rootcert, Some(dir.join("root.crt")));
        assert_eq!(tls.cert, Some(dir.join("postgresql.crt")));
        assert_eq!(tls.key, Some(dir.join("postgresql.key")));
        assert_eq!(
            tls.verify(),
            Verify::Chain,
            "require with a CA file is verify-ca"
        );
    }

    #[test]
    fn require_with_a_ca_file_checks_the_chain_as_libpq() {
        let tls = TlsOptions {
            mode: SslMode::Require,
            rootcert: Some("ca.crt".into()),
            cert: None,
            key: None,
        };
        assert_eq!(tls.verify(), Verify::Chain);
        assert!(tls.describe().contains("verify-ca"));
    }

    #[test]
    fn key_value_strings_keep_their_other_settings() {
        let (config, _) = parsed_with_modes(
            "host=db.example port=6543 user=app password='a b\\'c' sslmode=require dbname=bars",
            &no_env,
            (SslMode::Require, Verify::Nothing, WireMode::Require),
        );
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(config.get_dbname(), Some("bars"));
        assert_eq!(config.get_ports(), &[6543]);
    }

    #[test]
    fn bad_settings_are_one_clear_line() {
        let err = |url: &str| parse(url, &no_env).err().unwrap_or_default();
        assert!(err("postgres://h/d?sslmode=verify").contains("not one of disable"));
        assert!(err("postgres://h/d?sslmode=verify-full").contains("sslrootcert"));
        assert!(
            err("postgres://h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt")
                .contains("/nonexistent/ca.crt does not exist")
        );
        assert!(err("postgres://h/d?sslrootcert=system").contains("not supported"));
        assert!(err("postgres://h/d?sslmode=allow").contains("not one of"));
    }

    #[test]
    fn a_bad_percent_escape_is_refused_and_good_ones_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Ok("a/b c"));
        assert_eq!(percent_decode("%25%41").as_deref(), Ok("%A"));
        for bad in ["%", "%2", "%zz", "a%2", "%+f", "%é1"] {
            assert_eq!(
                percent_decode(bad),
                Err("the database URL has a bad %-escape in its parameters".to_string()),
                "{bad}"
            );
        }
        assert!(percent_decode("%ff").is_err_and(|e| e.contains("not UTF-8")));
    }

    #[test]
    fn certificate_names_read_plainly() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("other"), "other");
    }

    #[test]
    fn tls_does_not_apply_to_unix_sockets() {
        parsed_with_modes(
            "host=/var/run/postgresql dbname=bars sslmode=require",
            &no_env,
            (SslMode::Require, Verify::Nothing, WireMode::Disable),
        );
    }
}

//! TLS to PostgreSQL, libpq's way, against a real server: a cluster of this test's own with
//! `ssl=on`, and a CA, a second (wrong) CA, a server certificate and client certificates made
//! here with `openssl`. The server certificate names `localhost` and `127.0.0.1` only; the
//! server also listens on 127.0.0.2, an address its certificate does not name.
//!
//! Every case runs `tradebars-feeder ping` (the connect path every command shares) and prints
//! one line of the matrix; then `replay --rollup` runs over verify-full, and the server is
//! reloaded with `ssl=off` for the cases a server without TLS must refuse.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tradebars_tests::{feeder_bin, generate, text};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PASSWORD: &str = "Tls-Secret-Pw-8c1f";
const WRONG_PASSWORD: &str = "Not-The-Pw-77aa";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd` as the postgres user when running as root (PostgreSQL refuses root).
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    out
}

/// TRADEBARS_TLS_TEST_PORT + `offset` (each test its own), or a port the system gives.
fn free_port(offset: u16) -> u16 {
    if let Some(p) = std::env::var("TRADEBARS_TLS_TEST_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        return p + offset;
    }
    // a port free on both addresses the server listens on
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if std::net::TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2")
}

/// The test's cluster; stopped and removed when dropped, also when the test fails.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.dir.join("server.log")) {
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!(
                    "tls: server log (last lines, newest first):\n{}",
                    tail.join("\n")
                );
            }
        }
        let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(["-D", &self.pgdata(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn pgdata(&self) -> String {
        self.dir.join("pgdata").display().to_string()
    }

    fn file(&self, name: &str) -> String {
        self.dir.join("certs").join(name).display().to_string()
    }

    /// A superuser session over the Unix socket, for setting up: each statement of `sql`
    /// (split at "; ") on its own.
    fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = as_postgres(&format!("{PG_BIN}/psql"));
        cmd.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &self.dir.display().to_string(),
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ]);
        for statement in sql.split("; ") {
            cmd.args(["-c", statement]);
        }
        let out = run(&mut cmd, "psql");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run(
        Command::new("openssl").current_dir(dir).args(args),
        &format!("openssl {}", args.join(" ")),
    );
}

/// A key and a certificate `name`.crt for `subject`, signed by `ca`, with extensions `ext`.
fn issue(dir: &Path, name: &str, subject: &str, ca: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("writing the extensions");
    new_key_request(dir, name, &format!("{name}.csr"), subject, &[]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// `openssl req` making a P-256 key `name`.key for `subject`, writing `out`, with `extra`
/// arguments (a request for a CA to sign, or with `-x509` a self-signed certificate).
fn new_key_request(dir: &Path, name: &str, out: &str, subject: &str, extra: &[&str]) {
    let key = format!("{name}.key");
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        out,
        "-subj",
        subject,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

fn make_ca(dir: &Path, name: &str, subject: &str) {
    new_key_request(
        dir,
        name,
        &format!("{name}.crt"),
        subject,
        &[
            "-x509",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// The CA, the wrong CA, the server's certificate and the two client certificates.
fn make_certificates(certs: &Path) {
    make_ca(certs, "ca", "/CN=tradebars test CA");
    make_ca(certs, "wrong-ca", "/CN=tradebars wrong CA");
    issue(
        certs,
        "server",
        "/CN=localhost",
        "ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    let client_ext =
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
    issue(certs, "client", "/CN=certuser", "ca", client_ext);
    issue(
        certs,
        "rogue-client",
        "/CN=certuser",
        "wrong-ca",
        client_ext,
    );
}

/// The test's folder to the postgres user, when running as root.
fn chown_to_postgres(base: &Path) {
    if is_root() {
        run(
            Command::new("chown").args(["-R", "postgres:postgres", &base.display().to_string()]),
            "chown",
        );
    }
}

/// PostgreSQL's `tool`, as the postgres user, on the cluster's data directory with `args`.
fn on_pgdata(cluster: &Cluster, tool: &str, args: &[&str]) {
    let pgdata = cluster.pgdata();
    let mut cmd = as_postgres(&format!("{PG_BIN}/{tool}"));
    cmd.args(["-D", pgdata.as_str()]).args(args);
    run(&mut cmd, &format!("{tool} {}", args.join(" ")));
}

/// initdb, then pg_hba.conf and the TLS settings of postgresql.conf.
fn init_pgdata(cluster: &Cluster) {
    let base = &cluster.dir;
    on_pgdata(
        cluster,
        "initdb",
        &[
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
    );
    let hba = "local all all trust\n\
               hostssl all certuser 127.0.0.0/8 cert\n\
               host all pwuser 127.0.0.0/8 scram-sha-256\n\
               host all postgres 127.0.0.0/8 trust\n";
    std::fs::write(base.join("pgdata/pg_hba.conf"), hba).expect("pg_hba.conf");
    let conf = format!(
        "\nport = {}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{}'\n\
         fsync = off\nlog_connections = on\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
        cluster.port,
        base.display(),
        cluster.file("server.crt"),
        cluster.file("server.key"),
        cluster.file("ca.crt"),
    );
    let mut pgconf = std::fs::read_to_string(base.join("pgdata/postgresql.conf")).expect("conf");
    pgconf.push_str(&conf);
    std::fs::write(base.join("pgdata/postgresql.conf"), pgconf).expect("postgresql.conf");
}

/// pg_ctl start, then a check that the server listens on both of its addresses.
fn start_server(cluster: &Cluster) {
    let base = &cluster.dir;
    let log_file = base.join("server.log").display().to_string();
    on_pgdata(
        cluster,
        "pg_ctl",
        &["-l", &log_file, "-w", "-t", "30", "start"],
    );
    // PostgreSQL starts even if it cannot bind one of its addresses: the tests need both.
    let log = std::fs::read_to_string(base.join("server.log")).unwrap_or_default();
    for addr in ["127.0.0.1", "127.0.0.2"] {
        assert!(
            std::net::TcpStream::connect((addr, cluster.port)).is_ok(),
            "the test's server does not listen on {addr}:{} (the port is taken there? set TRADEBARS_TLS_TEST_PORT): {log}",
            cluster.port
        );
    }
}

fn start_cluster(name: &str, port_offset: u16) -> Cluster {
    let base = std::env::temp_dir().join(format!("tradebars-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let certs = base.join("certs");
    std::fs::create_dir_all(&certs).expect("creating the test's folder");
    let cluster = Cluster {
        dir: base.clone(),
        port: free_port(port_offset),
    };

    make_certificates(&certs);
    chown_to_postgres(&base);
    for key in ["server.key", "client.key", "rogue-client.key"] {
        run(
            Command::new("chmod").args(["600", &cluster.file(key)]),
            "chmod",
        );
    }
    init_pgdata(&cluster);
    chown_to_postgres(&base);
    start_server(&cluster);
    cluster.psql(
        "postgres",
        &format!(
        "CREATE ROLE pwuser LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE certuser LOGIN; CREATE DATABASE tlsdb"
    ));
    cluster
}

/// The feeder with `args`, `DATABASE_URL` = `url` and the PG* variables of `env` (all others
/// removed), killed if it takes longer than 30 s.
fn feeder(args: &[&str], url: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(feeder_bin());
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running tradebars-feeder");
    let start = Instant::now();
    while child.try_wait().expect("status").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.success(), text(&out).trim().to_string())
}

struct Case {
    name: &'static str,
    url: String,
    env: Vec<(&'static str, String)>,
    /// Ok: a phrase the output must hold; Err: a phrase the refusal must hold.
    expect: Result<&'static str, &'static str>,
}

fn case(name: &'static str, url: String, expect: Result<&'static str, &'static str>) -> Case {
    Case {
        name,
        url,
        env: Vec::new(),
        expect,
    }
}

/// Runs every case, prints the matrix, then fails naming every case that did not behave.
fn run_matrix(title: &str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    eprintln!("\ntls matrix: {title}");
    for c in cases {
        let env: Vec<(&str, &str)> = c.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, out) = feeder(&["ping"], &c.url, &env);
        let line = out.lines().last().unwrap_or("").to_string();
        let good = match c.expect {
            Ok(phrase) => ok && out.contains(phrase),
            Err(phrase) => !ok && out.contains(phrase) && out.lines().count() == 1,
        };
        let leaked = out.contains(PASSWORD) || out.contains(WRONG_PASSWORD);
        eprintln!(
            "  {:<58} {:<8} {}{}",
            c.name,
            if ok { "CONNECTS" } else { "REFUSED" },
            line,
            if good && !leaked {
                ""
            } else {
                "   <-- UNEXPECTED"
            }
        );
        if !good {
            failures.push(format!("{}: expected {:?}, got: {out}", c.name, c.expect));
        }
        if leaked {
            failures.push(format!("{}: the password was printed: {out}", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The connection strings of the matrix, against the test's cluster.
struct Urls<'a> {
    cluster: &'a Cluster,
    port: u16,
    ca: String,
    wrong_ca: String,
}

impl Urls<'_> {
    /// pwuser with its password at `host`, with the query parameters `params`.
    fn pw(&self, host: &str, params: &str) -> String {
        let port = self.port;
        format!("postgres://pwuser:{PASSWORD}@{host}:{port}/tlsdb?connect_timeout=10&{params}")
    }

    fn full(&self, host: &str, root: &str) -> String {
        self.pw(host, &format!("sslmode=verify-full&sslrootcert={root}"))
    }

    /// certuser over verify-full, with the client certificate `cert` and its key `key`.
    fn cert_url(&self, cert: &str, key: &str) -> String {
        let (port, ca) = (self.port, &self.ca);
        format!(
            "postgres://certuser@localhost:{port}/tlsdb?sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
            self.cluster.file(cert),
            self.cluster.file(key)
        )
    }
}

/// verify-full and verify-ca: the host name and the CA checked, or the chain only.
fn verify_cases(u: &Urls) -> Vec<Case> {
    let (ca, wrong_ca) = (&u.ca, &u.wrong_ca);
    vec![
        case(
            "verify-full, host localhost",
            u.full("localhost", ca),
            Ok("TLS TLSv1.3"),
        ),
        case(
            "verify-full, host 127.0.0.1 (named as IP)",
            u.full("127.0.0.1", ca),
            Ok("checked against the CA and the host name"),
        ),
        case(
            "verify-full, host 127.0.0.2 (not named): wrong host",
            u.full("127.0.0.2", ca),
            Err("not valid for host 127.0.0.2"),
        ),
        case(
            "verify-ca, host 127.0.0.2: chain only",
            u.pw("127.0.0.2", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            Ok("checked against the CA)"),
        ),
        case(
            "verify-full, wrong CA",
            u.full("localhost", wrong_ca),
            Err("not signed by a CA of sslrootcert"),
        ),
        case(
            "verify-ca, wrong CA",
            u.pw(
                "localhost",
                &format!("sslmode=verify-ca&sslrootcert={wrong_ca}"),
            ),
            Err("not signed by a CA of sslrootcert"),
        ),
    ]
}

/// require, prefer and disable: what libpq checks when the mode does not ask for it.
fn weaker_mode_cases(u: &Urls) -> Vec<Case> {
    let (ca, wrong_ca) = (&u.ca, &u.wrong_ca);
    vec![
        case(
            "require, no CA file, host 127.0.0.2: encrypted, unchecked",
            u.pw("127.0.0.2", "sslmode=require"),
            Ok("server certificate not checked"),
        ),
        case(
            "require with the wrong CA file: checked as verify-ca",
            u.pw(
                "localhost",
                &format!("sslmode=require&sslrootcert={wrong_ca}"),
            ),
            Err("not signed by a CA of sslrootcert"),
        ),
        case(
            "require with the CA file, host 127.0.0.2",
            u.pw("127.0.0.2", &format!("sslmode=require&sslrootcert={ca}")),
            Ok("checked as verify-ca"),
        ),
        case(
            "prefer (the default): TLS when offered",
            u.pw("localhost", ""),
            Ok("TLS TLSv1.3"),
        ),
        case(
            "disable",
            u.pw("localhost", "sslmode=disable"),
            Ok("no TLS (sslmode=disable)"),
        ),
    ]
}

/// PGSSLMODE and PGSSLROOTCERT, and a URL's sslmode winning over PGSSLMODE.
fn environment_cases(u: &Urls) -> Vec<Case> {
    let env_verify_full = |name, root: &str, expect| Case {
        env: vec![
            ("PGSSLMODE", "verify-full".into()),
            ("PGSSLROOTCERT", root.to_string()),
        ],
        ..case(name, u.pw("localhost", ""), expect)
    };
    let url_wins = Case {
        env: vec![("PGSSLMODE", "verify-full".into())],
        ..case(
            "URL sslmode=disable over PGSSLMODE=verify-full",
            u.pw("127.0.0.2", "sslmode=disable"),
            Ok("no TLS (sslmode=disable)"),
        )
    };
    vec![
        env_verify_full(
            "PGSSLMODE=verify-full, PGSSLROOTCERT=CA, host localhost",
            &u.ca,
            Ok("checked against the CA and the host name"),
        ),
        env_verify_full(
            "PGSSLMODE=verify-full, PGSSLROOTCERT=wrong CA",
            &u.wrong_ca,
            Err("not signed by a CA of sslrootcert"),
        ),
        url_wins,
    ]
}

/// Client certificates (hostssl ... cert) and a wrong password.
fn client_cases(u: &Urls) -> Vec<Case> {
    let (port, ca) = (u.port, &u.ca);
    vec![
        case(
            "client certificate of the CA (hostssl ... cert)",
            u.cert_url("client.crt", "client.key"),
            Ok("client certificate /CN=certuser"),
        ),
        case(
            "no client certificate where one is required",
            format!("postgres://certuser@localhost:{port}/tlsdb?sslmode=verify-full&sslrootcert={ca}"),
            Err("requires a valid client certificate"),
        ),
        case(
            "client certificate of another CA",
            u.cert_url("rogue-client.crt", "rogue-client.key"),
            Err("the server refused the client certificate of sslcert"),
        ),
        case(
            "verify-full, wrong password: refused, never printed",
            format!(
                "postgres://pwuser:{WRONG_PASSWORD}@localhost:{port}/tlsdb?sslmode=verify-full&sslrootcert={ca}"
            ),
            Err("password authentication failed"),
        ),
    ]
}

/// The same server reloaded without TLS; returns once it says so.
fn turn_ssl_off(c: &Cluster) {
    c.psql(
        "postgres",
        "ALTER SYSTEM SET ssl = off; SELECT pg_reload_conf()",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.psql("postgres", "SHOW ssl") != "off" {
        assert!(Instant::now() < deadline, "ssl did not turn off");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ssl_off_cases(u: &Urls) -> Vec<Case> {
    vec![
        case(
            "require against a server without TLS",
            u.pw("localhost", "sslmode=require"),
            Err("does not accept TLS connections"),
        ),
        case(
            "verify-full against a server without TLS",
            u.full("localhost", &u.ca),
            Err("does not accept TLS connections"),
        ),
        case(
            "prefer against a server without TLS: plain",
            u.pw("localhost", "sslmode=prefer"),
            Ok("no TLS (sslmode=prefer)"),
        ),
    ]
}

#[test]
fn tls_modes_certificates_and_errors_behave_as_libpq() {
    let started = Instant::now();
    let c = start_cluster("matrix", 0);
    let u = Urls {
        cluster: &c,
        port: c.port,
        ca: c.file("ca.crt"),
        wrong_ca: c.file("wrong-ca.crt"),
    };
    run_matrix(
        "server ssl=on, certificate for DNS:localhost, IP:127.0.0.1",
        [
            verify_cases(&u),
            weaker_mode_cases(&u),
            environment_cases(&u),
            client_cases(&u),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    turn_ssl_off(&c);
    run_matrix("server ssl=off", ssl_off_cases(&u));
    eprintln!("tls: whole test took {:?}", started.elapsed());
}

/// Every command shares the connect path: a real load and rollup over verify-full, on a
/// cluster of its own (it needs the tradebars extension installed, as the other end-to-end
/// tests do).
#[test]
fn replay_and_rollup_run_over_verify_full() {
    let c = start_cluster("replay", 1);
    let port = c.port;
    let ca = c.file("ca.crt");
    c.psql("tlsdb", "CREATE EXTENSION tradebars");
    let file = generate("tls-replay.dbn", 5, 2000, 71);
    let url =
        format!("postgres://postgres@localhost:{port}/tlsdb?sslmode=verify-full&sslrootcert={ca}");
    let (ok, out) = feeder(
        &["replay", &file.display().to_string(), "--rollup"],
        &url,
        &[],
    );
    assert!(ok, "replay over verify-full: {out}");
    assert!(out.contains("2000 trades rolled up"), "{out}");
    eprintln!(
        "tls: replay --rollup over verify-full: {}",
        out.lines().last().unwrap_or("")
    );
    // log_connections: the replay's session was encrypted.
    let log = std::fs::read_to_string(c.dir.join("server.log")).expect("server log");
    let replay_sessions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("user=postgres database=tlsdb application_name=tradebars-feeder"))
        .collect();
    assert!(!replay_sessions.is_empty(), "no replay session in the log");
    assert!(
        replay_sessions.iter().all(|l| l.contains("SSL enabled")),
        "{replay_sessions:?}"
    );
}

//! TLS between clients and the proxy, with real clients: psql and pgbench
//! (libpq, OpenSSL), tokio-postgres with rustls, psycopg2 (libpq from
//! Python), pgjdbc (Java's own TLS); `tls_required` refusing plaintext, and
//! a proxy without a certificate declining with `N`.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

use crate::protocol::{read_until, sqlstate_of, startup_packet};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];

/// psql against proxy `i` with `conninfo` appended, running `sql`.
fn psql(cluster: &Cluster, i: usize, conninfo: &str, sql: &str) -> Output {
    let tool = cluster.replicas[0].binaries().tool("psql").unwrap();
    Command::new(tool)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg("-d")
        .arg(format!("{} {conninfo}", cluster.proxy_conninfo(i)))
        .args(["-c", sql])
        // The user's own libpq files must not change what is tested.
        .env("PGSSLROOTCERT", "/nonexistent")
        .env_remove("PGSSLMODE")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", text(out));
    text(out)
}

/// A rustls client trusting exactly `cert` (the cluster's self-signed
/// certificate), so the test also proves the certificate names the
/// proxy's address.
fn rustls_connector(cert: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

async fn connect_tls(
    cluster: &Cluster,
    i: usize,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conninfo = format!("{} sslmode=require", cluster.proxy_conninfo(i));
    let (client, connection) = tokio_postgres::connect(&conninfo, tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread")]
async fn real_clients_over_tls_and_plaintext_refused_when_required() {
    let mut cluster = Cluster::start(1).await;
    let cert = cluster
        .tls_cert()
        .expect("a generated certificate")
        .to_owned();
    assert_eq!(cert, cluster.state_dir().join("tls/server.crt"));

    // psql with sslmode=require: the session runs over TLS.
    let out = psql(&cluster, 0, "sslmode=require", "\\conninfo");
    let said = assert_ok(&out, "psql sslmode=require");
    assert!(said.contains("SSL connection (protocol: TLS"), "{said}");
    // verify-full against the generated certificate: it names 127.0.0.1.
    let full = format!("sslmode=verify-full sslrootcert={}", cert.display());
    let out = psql(
        &cluster,
        0,
        &full,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'psql')",
    );
    assert_ok(&out, "psql sslmode=verify-full");

    // pgbench over TLS: initialise and run a few transactions.
    let tool = cluster.replicas[0].binaries().tool("pgbench").unwrap();
    let addr = cluster.proxy_addrs()[0];
    let pgbench = |args: &[&str]| {
        Command::new(&tool)
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env("PGSSLMODE", "require")
            .env("PGSSLROOTCERT", "/nonexistent")
            .output()
            .unwrap()
    };
    assert_ok(&pgbench(&["-i", "-s", "1", "-q"]), "pgbench -i");
    let run = assert_ok(
        &pgbench(&["-n", "-c", "2", "-t", "20", "--max-tries=100"]),
        "pgbench",
    );
    assert!(
        run.contains("number of transactions actually processed: 40/40"),
        "{run}"
    );

    // tokio-postgres with rustls, verifying the certificate.
    let client = connect_tls(&cluster, 0, rustls_connector(&cert))
        .await
        .expect("tokio-postgres over rustls");
    client
        .execute("INSERT INTO t VALUES (2, $1)", &[&"rustls"])
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // A cancel over TLS reaches the right backend.
    let token = client.cancel_token();
    let tls = rustls_connector(&cert);
    let replica = cluster.replica(0).await;
    let canceller = tokio::spawn(async move {
        common::cluster::until_running(&replica, "SELECT pg_sleep(30)").await;
        token.cancel_query(tls).await
    });
    let err = client
        .batch_execute("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code()),
        Some(&SqlState::QUERY_CANCELED),
        "{err}"
    );
    canceller.await.unwrap().unwrap();

    // psycopg2 (libpq from Python) with sslmode=require.
    let script = format!(
        "import psycopg2\n\
         c = psycopg2.connect(host='{}', port={}, user='postgres', dbname='postgres', \
         sslmode='require', sslrootcert='/nonexistent')\n\
         cur = c.cursor()\n\
         cur.execute(\"INSERT INTO t VALUES (3, 'psycopg2')\")\n\
         c.commit()\n\
         cur.execute('SELECT count(*) FROM t')\n\
         print('rows', cur.fetchone()[0], 'ssl', c.info.ssl_in_use)\n",
        addr.ip(),
        addr.port()
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("/usr/bin/python3 (bash scripts/setup.sh installs python3-psycopg2)");
    let said = assert_ok(&out, "psycopg2 (bash scripts/setup.sh installs it)");
    assert!(said.contains("rows 3 ssl True"), "{said}");

    // tls_required: plaintext is refused, TLS still works.
    cluster
        .restart_proxies_with(|p| p.tls_required = true)
        .await;
    let out = psql(&cluster, 0, "sslmode=disable", "SELECT 1");
    assert!(!out.status.success(), "plaintext accepted:\n{}", text(&out));
    assert!(text(&out).contains("no encryption"), "{}", text(&out));
    let mut s = TcpStream::connect(cluster.proxy_addrs()[0]).await.unwrap();
    s.write_all(&startup_packet()).await.unwrap();
    let msgs = read_until(&mut s, b'E').await;
    assert_eq!(sqlstate_of(&msgs.last().unwrap().1), "28000");
    let out = psql(&cluster, 0, "sslmode=require", "SELECT count(*) FROM t");
    assert_eq!(assert_ok(&out, "psql under tls_required").trim(), "3");
    // psql's cancel (Ctrl-C) still works: libpq 15 sends the
    // CancelRequest in plaintext on a connection of its own.
    let tool = cluster.replicas[0].binaries().tool("psql").unwrap();
    let child = Command::new(tool)
        .args(["-X", "-d"])
        .arg(format!("{} sslmode=require", cluster.proxy_conninfo(0)))
        .args(["-c", "SELECT pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Cancel once the statement runs on the replica.
    let replica = cluster.replica(0).await;
    common::cluster::until_running(&replica, "SELECT pg_sleep(30)").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = common::cluster::blocking(|| child.wait_with_output().unwrap());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("canceling statement due to user request"),
        "{}",
        text(&out)
    );

    // The certificate is the state directory's, kept across a restart.
    let before = std::fs::read(&cert).unwrap();
    cluster.restart_proxy(0).await;
    assert_eq!(std::fs::read(&cert).unwrap(), before);
}

/// Debian's pgjdbc (`libpostgresql-jdbc-java`).
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// `tests/proxy/jdbc/TlsCheck.java`, compiled into a temporary directory
/// (removed on drop) that is also the JVM's `user.home`, so that the
/// user's own `~/.postgresql` does not change what is tested.
struct Jdbc {
    dir: tempfile::TempDir,
}

impl Jdbc {
    fn compile() -> Jdbc {
        let setup =
            "bash scripts/setup.sh installs openjdk-17-jdk-headless and libpostgresql-jdbc-java";
        assert!(
            Path::new(PGJDBC_JAR).is_file(),
            "{PGJDBC_JAR} is missing ({setup})"
        );
        let dir = tempfile::Builder::new()
            .prefix("tashkent-jdbc-")
            .tempdir()
            .unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy/jdbc/TlsCheck.java");
        let out = Command::new("javac")
            .arg("-d")
            .arg(dir.path())
            .args(["-cp", PGJDBC_JAR])
            .arg(&source)
            .output()
            .unwrap_or_else(|e| panic!("running javac: {e} ({setup})"));
        assert_ok(&out, "javac TlsCheck.java");
        Jdbc { dir }
    }

    /// Runs `TlsCheck` with its (step, JDBC URL) pairs; its stdout (one
    /// line a step) and stderr (why a connection failed).
    fn run(&self, steps: &[(&str, &str)]) -> (String, String) {
        let out = Command::new("java")
            // A short-lived client on a small machine: start fast.
            .args(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"])
            .arg(format!("-Duser.home={}", self.dir.path().display()))
            .arg("-cp")
            .arg(format!("{}:{PGJDBC_JAR}", self.dir.path().display()))
            .arg("TlsCheck")
            .args(steps.iter().flat_map(|(step, url)| [step, url]))
            .output()
            .unwrap_or_else(|e| panic!("running java: {e}"));
        assert_ok(&out, "java TlsCheck");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// pgjdbc's URL for proxy `i` with `params` (`&`-separated, URL-encoded).
fn jdbc_url(cluster: &Cluster, i: usize, params: &str) -> String {
    let addr = cluster.proxy_addrs()[i];
    format!(
        "jdbc:postgresql://{}:{}/postgres?user=postgres&{params}",
        addr.ip(),
        addr.port()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pgjdbc_over_tls_and_plaintext_refused_when_required() {
    let jdbc = common::cluster::blocking(Jdbc::compile);
    let mut cluster = Cluster::start(2).await;
    let cert = cluster.tls_cert().expect("a generated certificate");
    // A certificate the proxies do not show.
    let (other, other_key) = (jdbc.dir.path().join("x.crt"), jdbc.dir.path().join("x.key"));
    assert!(tashkent::ops::tls::ensure_self_signed(&other, &other_key).unwrap());

    // sslmode=require (pgjdbc then checks no certificate): DDL, a
    // PreparedStatement in autocommit and a batch in a transaction on
    // proxy 0; read back on proxy 1, verifying the generated certificate
    // (it names 127.0.0.1), as a strong session, which sees them all.
    let require = jdbc_url(&cluster, 0, "ssl=true&sslmode=require");
    let verified = jdbc_url(
        &cluster,
        1,
        &format!(
            "sslmode=verify-full&sslrootcert={}&options=-c%20tashkent.consistency%3Dstrong",
            cert.display()
        ),
    );
    let untrusted = jdbc_url(
        &cluster,
        0,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let (said, why) = common::cluster::blocking(|| {
        jdbc.run(&[
            ("write", &require),
            ("read", &verified),
            ("untrusted", &untrusted),
        ])
    });
    assert_eq!(
        said,
        "write rows=3\n\
         read 1=autocommit,2=batch,3=batch\n\
         untrusted 08006\n",
        "{why}"
    );
    assert!(why.contains("PKIX path"), "{why}");
    // The writes are on the other replica itself too.
    cluster.wait_converged().await;
    let n: i64 = cluster
        .replica(1)
        .await
        .query_one("SELECT count(*) FROM jdbc_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // tls_required: pgjdbc's plaintext startup is refused with 28000; over
    // TLS a statement timeout still cancels (pgjdbc sends its
    // CancelRequest in plaintext, which the proxy accepts) and the
    // session goes on.
    cluster
        .restart_proxies_with(|p| p.tls_required = true)
        .await;
    let plaintext = jdbc_url(&cluster, 0, "sslmode=disable");
    let require = jdbc_url(&cluster, 1, "sslmode=require");
    let (said, why) =
        common::cluster::blocking(|| jdbc.run(&[("refused", &plaintext), ("cancel", &require)]));
    assert_eq!(said, "refused 28000\ncancel 57014 rows=3\n", "{why}");
    assert!(why.contains("no encryption"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_certificate_ssl_is_declined() {
    let mut cluster = Cluster::start_file(1, |f| f.cluster.tls = false).await;
    assert!(cluster.tls_cert().is_none());
    assert!(!cluster.state_dir().join("tls").exists());
    let addr = cluster.proxy_addrs()[0];

    // SSLRequest and GSSENCRequest are answered N, then startup goes on.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for request in [GSSENC_REQUEST, SSL_REQUEST] {
        s.write_all(&request).await.unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }
    s.write_all(&startup_packet()).await.unwrap();
    let msgs = read_until(&mut s, b'Z').await;
    assert!(msgs.iter().any(|(t, b)| *t == b'R' && b == &[0, 0, 0, 0]));

    // A second SSLRequest is not a protocol PostgreSQL speaks.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&SSL_REQUEST).await.unwrap();
    let msgs = read_until(&mut s, b'E').await;
    assert_eq!(sqlstate_of(&msgs.last().unwrap().1), "0A000");

    // libpq: require fails, the default (prefer) falls back to plaintext.
    let out = psql(&cluster, 0, "sslmode=require", "SELECT 1");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("server does not support SSL"),
        "{}",
        text(&out)
    );
    let out = psql(&cluster, 0, "", "\\conninfo");
    let said = assert_ok(&out, "psql sslmode=prefer");
    assert!(!said.contains("SSL connection"), "{said}");

    // tls_required without a certificate is a configuration error.
    cluster.edit_proxy_template(|p| p.tls_required = true);
    let err = cluster.start_proxy(0).await.unwrap_err().to_string();
    assert!(err.contains("tls_required"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_of_ones_own_is_used() {
    // The cluster file names a certificate: nothing is generated.
    let dir = common::shared_tempdir();
    let (cert, key) = (dir.path().join("own.crt"), dir.path().join("own.key"));
    assert!(tashkent::ops::tls::ensure_self_signed(&cert, &key).unwrap());
    let (c, k) = (cert.clone(), key.clone());
    let cluster = Cluster::start_file(1, move |f| {
        f.proxy.tls_cert = Some(c);
        f.proxy.tls_key = Some(k);
        f.proxy.tls_required = true;
    })
    .await;
    assert_eq!(cluster.tls_cert(), Some(cert.as_path()));
    assert!(!cluster.state_dir().join("tls").exists());
    let client = connect_tls(&cluster, 0, rustls_connector(&cert))
        .await
        .unwrap_or_else(|e| panic!("verified against the user's certificate: {e:?}"));
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // Another certificate is not trusted by a verifying client.
    let (other, other_key) = (dir.path().join("x.crt"), dir.path().join("x.key"));
    tashkent::ops::tls::ensure_self_signed(&other, &other_key).unwrap();
    let Err(err) = connect_tls(&cluster, 0, rustls_connector(&other)).await else {
        panic!("a certificate the client does not trust is accepted");
    };
    let why = format!("{err:?}");
    assert!(why.contains("InvalidCertificate("), "{why}");
}

//! TLS to PostgreSQL (issue 12, item 8): libpq's `sslmode` and `sslrootcert`, against private
//! servers with certificates the test issues itself (rcgen), one server offering TLS and one
//! without it. A refused connection names its cause in the log, on `/readyz` and in `check`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::connection_causes::{assert_cause_named_everywhere, command};
use crate::database_faults::private_postgres::PrivatePostgres;
use crate::helpers::*;

/// Bound on a load over a fresh connection.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The test's certificates: the server's, for `localhost` only, issued by `ca`; and another CA
/// that issued nothing the server shows.
struct Pki {
    dir: tempfile::TempDir,
    server_certificate: String,
    server_key: String,
}

impl Pki {
    fn issue() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = certificate_authority("ingestor test CA");
        let other = certificate_authority("some other CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let certificate = params.signed_by(&key, &ca).unwrap();
        Pki {
            dir,
            server_certificate: certificate.pem(),
            server_key: key.serialize_pem(),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// The ingestor role's URL of database `events` on `server`, reached as `host`, with `query`.
fn url(server: &PrivatePostgres, host: &str, query: &str) -> String {
    format!("postgres://ingestor@{host}:{}/events?{query}", server.port)
}

/// `sslmode=<mode>&sslrootcert=<ca>`, percent-encoded as URLs want.
fn tls_query(mode: &str, ca: &Path) -> String {
    format!(
        "sslmode={mode}&sslrootcert={}",
        ca.display()
            .to_string()
            .replace('%', "%25")
            .replace(' ', "%20")
    )
}

/// A server offering TLS with the [`Pki`]'s certificate, with the schema in database `events`.
async fn tls_server(pki: &Pki) -> PrivatePostgres {
    let server = PrivatePostgres::start_with_tls(&pki.server_certificate, &pki.server_key);
    server.create_database("events", "").await;
    server
}

/// Generates a new file (a copy kept in `originals`) into `dir`, loads it through an ingestor
/// on `database_url` and asserts the database holds exactly what every file in `originals`
/// says; returns the server's view of the ingestor's sessions: (sessions, of which over TLS).
async fn load_exactly(
    server: &PrivatePostgres,
    database_url: &str,
    envs: &[(&str, &str)],
    dir: &Path,
    seed: u64,
    originals: &Path,
) -> (i64, i64) {
    let kept = originals.join(seed.to_string());
    std::fs::create_dir(&kept).unwrap();
    generate(&kept, 1, 200, seed, Faults::default());
    for file in event_files(&kept) {
        std::fs::copy(&file, dir.join(file.file_name().unwrap())).unwrap();
    }
    let all: Vec<PathBuf> = std::fs::read_dir(originals)
        .unwrap()
        .flat_map(|sub| event_files(&sub.unwrap().path()))
        .collect();
    let finished = all.len();
    let ingestor = Ingestor::spawn(database_url, dir, envs);
    let client = stack_tests::connect(&server.url("postgres", "events"))
        .await
        .unwrap();
    wait_for_ledger_with(&client, dir, finished, TIMEOUT).await;
    assert_exact_with(&client, &expected(&all)).await;
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'ingestor'",
            &[],
        )
        .await
        .unwrap();
    let status = ingestor.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn verify_full_with_the_right_ca_loads_a_file_exactly_over_tls() {
    // Arrange
    let pki = Pki::issue();
    let server = tls_server(&pki).await;
    let database_url = url(&server, "localhost", &tls_query("verify-full", &pki.ca()));
    let dir = tempfile::tempdir().unwrap();

    // Act
    let (sessions, over_tls) = load_exactly(
        &server,
        &database_url,
        &[],
        dir.path(),
        81,
        tempfile::tempdir().unwrap().path(),
    )
    .await;

    // Assert: loaded exactly, and only over TLS; `check` agrees and says how it connects.
    assert!(
        sessions > 0 && over_tls == sessions,
        "{over_tls} of {sessions}"
    );
    let output = command(&database_url, dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "  ok    TLS sslmode=verify-full: certificate and host name checked against {}",
            pki.ca().display()
        )) && stdout.contains("  ok    reachable, over TLS (TLSv1.3)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn verify_full_with_a_wrong_ca_refuses_and_names_the_certificate_failure() {
    let pki = Pki::issue();
    let server = tls_server(&pki).await;

    assert_cause_named_everywhere(
        &url(
            &server,
            "localhost",
            &tls_query("verify-full", &pki.other_ca()),
        ),
        "certificate verify failed",
        "invalid peer certificate: UnknownIssuer",
    );
}

#[tokio::test]
async fn verify_full_refuses_a_host_the_certificate_does_not_name_while_verify_ca_accepts_it() {
    // Arrange: the certificate names `localhost`; the ingestor connects to 127.0.0.1.
    let pki = Pki::issue();
    let server = tls_server(&pki).await;

    // Act and assert: verify-full refuses, naming the mismatch.
    assert_cause_named_everywhere(
        &url(&server, "127.0.0.1", &tls_query("verify-full", &pki.ca())),
        "certificate verify failed: the host name does not match",
        "invalid peer certificate: certificate not valid for name",
    );

    // verify-ca checks the issuer only: it loads, over TLS.
    let dir = tempfile::tempdir().unwrap();
    let database_url = url(&server, "127.0.0.1", &tls_query("verify-ca", &pki.ca()));
    let (sessions, over_tls) = load_exactly(
        &server,
        &database_url,
        &[],
        dir.path(),
        82,
        tempfile::tempdir().unwrap().path(),
    )
    .await;
    assert!(
        sessions > 0 && over_tls == sessions,
        "{over_tls} of {sessions}"
    );
    // ... and verify-ca still refuses a certificate from another CA.
    let output = command(
        &url(
            &server,
            "127.0.0.1",
            &tls_query("verify-ca", &pki.other_ca()),
        ),
        dir.path(),
        &["check"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("certificate verify failed"), "{stdout}");
}

#[tokio::test]
async fn a_server_without_tls_fails_require_with_the_cause_named_and_loads_with_prefer_and_disable()
{
    // Arrange
    let server = PrivatePostgres::start();
    server.create_database("events", "").await;

    // Act and assert: require cannot be met, and says so.
    assert_cause_named_everywhere(
        &url(&server, "127.0.0.1", "sslmode=require"),
        "the server does not support TLS, but sslmode requires it",
        "server does not support TLS",
    );

    // prefer falls back to plain text; disable (here as our own setting, which beats the URL's)
    // never tries TLS. Both load exactly.
    let dir = tempfile::tempdir().unwrap();
    let originals = tempfile::tempdir().unwrap();
    let preferred = url(&server, "127.0.0.1", "sslmode=prefer");
    let (sessions, over_tls) =
        load_exactly(&server, &preferred, &[], dir.path(), 83, originals.path()).await;
    assert!(sessions > 0 && over_tls == 0, "{over_tls} of {sessions}");
    let output = command(&preferred, dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("  ok    TLS sslmode=prefer: TLS if the server offers it")
            && stdout.contains("  ok    reachable, without TLS"),
        "{stdout}"
    );
    let (sessions, over_tls) = load_exactly(
        &server,
        &url(&server, "127.0.0.1", "sslmode=require"),
        &[("INGESTOR_DATABASE_SSLMODE", "disable")],
        dir.path(),
        84,
        originals.path(),
    )
    .await;
    assert!(sessions > 0 && over_tls == 0, "{over_tls} of {sessions}");
}

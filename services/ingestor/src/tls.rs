//! TLS to PostgreSQL with libpq's `sslmode` and `sslrootcert` semantics, so a connection string
//! that works with `psql` means the same to the ingestor. One [`Tls`] is built from the settings
//! at start-up, and every connection the ingestor opens (the pool, the directory claim, every
//! operator command) goes through its [`Connector`].
//!
//! tokio-postgres parses `sslmode` only up to `require` and knows no `sslrootcert`, so both are
//! taken out of `DATABASE_URL` here ([`take_tls_parameters`]) before it parses the rest; the
//! certificate checks are rustls's (through tokio-postgres-rustls, with the `ring` provider).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The connector every ingestor connection uses.
pub type Connector = tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`: whether TLS is used, and what of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plain text when it does not (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked only when a root certificate is set.
    Require,
    /// TLS, with a certificate issued by the root certificate's CA (any host name).
    VerifyCa,
    /// TLS, with a certificate issued by the root certificate's CA for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The accepted spellings, for error messages.
    pub const VALUES: &'static str = "disable, prefer, require, verify-ca or verify-full";

    /// Parses libpq's spelling. `allow` (plain text first, TLS if refused) is not offered:
    /// tokio-postgres has no such negotiation, and a server that insists on TLS is better
    /// served by `prefer`.
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of the ingestor's connections, and the connector built from them.
#[derive(Clone)]
pub struct Tls {
    /// The mode.
    pub mode: SslMode,
    /// The PEM file of the CA certificates the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    connector: Connector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

/// Why the TLS settings cannot be used: which key, and what is wrong with it.
#[derive(Debug)]
pub struct TlsSettingError {
    /// `database_sslmode` or `database_sslrootcert`.
    pub key: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl Tls {
    /// Builds the connector: reads and parses the root certificate file now, so a missing or
    /// unreadable one stops start-up instead of failing every connection.
    ///
    /// # Errors
    /// `verify-ca` or `verify-full` without a root certificate; a root certificate file that
    /// cannot be read or holds no PEM certificate.
    pub fn new(mode: SslMode, root_cert: Option<PathBuf>) -> Result<Tls, TlsSettingError> {
        let roots = match &root_cert {
            Some(path) => Some(Arc::new(read_roots(path).map_err(|reason| {
                TlsSettingError {
                    key: "database_sslrootcert",
                    reason,
                }
            })?)),
            None if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(TlsSettingError {
                    key: "database_sslmode",
                    reason: format!(
                        "{} checks the server's certificate against a CA: set database_sslrootcert (or sslrootcert in DATABASE_URL) to the CA's PEM file",
                        mode.as_str()
                    ),
                })
            }
            None => None,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSettingError {
                key: "database_sslmode",
                reason: format!("TLS cannot be set up: {e}"),
            })?;
        let config = match (mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (_, roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(IssuerOnly { roots, provider }))
                .with_no_client_auth(),
        };
        Ok(Tls {
            mode,
            root_cert,
            connector: Connector::new(config),
        })
    }

    /// The connector for `connect` and the pool.
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// The mode as tokio-postgres negotiates it: the verify modes are `require`, with the
    /// certificate checks in the connector.
    pub fn negotiation(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// One line for `check` and the start-up log.
    pub fn describe(&self) -> String {
        let checks = match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => "no TLS".to_owned(),
            (SslMode::VerifyFull, Some(root)) => format!(
                "certificate and host name checked against {}",
                root.display()
            ),
            (_, Some(root)) => format!("certificate checked against {}", root.display()),
            (_, None) => "certificate not checked (set sslrootcert to check it)".to_owned(),
        };
        let checks = if self.mode == SslMode::Prefer {
            format!("TLS if the server offers it, {checks}")
        } else {
            checks
        };
        format!("sslmode={}: {checks}", self.mode.as_str())
    }
}

/// The CA certificates of a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| format!("is not a PEM certificate file ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate rustls cannot use ({e})"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(roots)
}

/// The verifier of `require`, `prefer` and `verify-ca`, which rustls does not offer: its own
/// verifier always checks the host name.
///
/// Why these semantics: they are libpq's, which operators' connection strings are written for.
/// Without a root certificate, `require` and `prefer` encrypt but accept any certificate
/// (protection from eavesdroppers, not from an impostor); with one, they and `verify-ca` accept
/// only a certificate issued by its CA, whatever host name it carries (a server reached through
/// an address its certificate does not list). The handshake's signatures are checked in every
/// case, so the server holds the key of the certificate it shows.
#[derive(Debug)]
struct IssuerOnly {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for IssuerOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &ParsedCertificate::try_from(end_entity)?,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connection string without its `sslmode` and `sslrootcert`, and their values.
#[derive(Debug, PartialEq, Eq)]
pub struct TlsParameters {
    /// The connection string for tokio-postgres.
    pub rest: String,
    /// `sslmode`, if given.
    pub sslmode: Option<String>,
    /// `sslrootcert`, if given.
    pub sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, in either of its forms: a URL
/// (`postgres://...?sslmode=verify-full&sslrootcert=/ca.pem`, values percent-encoded) or
/// key=value pairs (`host=db sslmode=verify-full sslrootcert='/my ca.pem'`).
pub fn take_tls_parameters(url: &str) -> TlsParameters {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        take_from_query(url)
    } else {
        take_from_pairs(url)
    }
}

fn take_from_query(url: &str) -> TlsParameters {
    let mut found = TlsParameters {
        rest: url.to_owned(),
        sslmode: None,
        sslrootcert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return found;
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        };
        match key {
            "sslmode" => found.sslmode = Some(decoded()),
            "sslrootcert" => found.sslrootcert = Some(decoded()),
            _ => kept.push(pair),
        }
    }
    found.rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    found
}

fn take_from_pairs(text: &str) -> TlsParameters {
    let mut found = TlsParameters {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    let mut kept = Vec::new();
    let mut chars = text.char_indices().peekable();
    // libpq's grammar: `key = value` pairs separated by white space, the value either bare or
    // single-quoted with backslash escapes.
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars
            .next_if(|(_, c)| c.is_whitespace() || *c == '=')
            .is_some()
        {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            while let Some((_, c)) = chars.next() {
                match c {
                    '\'' => break,
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        match key.as_str() {
            "sslmode" => found.sslmode = Some(value),
            "sslrootcert" => found.sslrootcert = Some(value),
            _ => kept.push(&text[start..end]),
        }
    }
    found.rest = kept
        .iter()
        .map(|pair| pair.trim_end())
        .collect::<Vec<_>>()
        .join(" ");
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tls_parameters_come_out_of_a_url_and_the_rest_stays() {
        let taken = take_tls_parameters(
            "postgres://u:p@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fmy%20ca.pem",
        );
        assert_eq!(
            taken,
            TlsParameters {
                rest: "postgres://u:p@h:5/db?application_name=x".into(),
                sslmode: Some("verify-full".into()),
                sslrootcert: Some("/etc/my ca.pem".into()),
            }
        );
        let plain = take_tls_parameters("postgresql://h/db?sslmode=disable");
        assert_eq!(plain.rest, "postgresql://h/db");
        assert_eq!(plain.sslmode.as_deref(), Some("disable"));
        assert_eq!(
            take_tls_parameters("postgres://h/db").rest,
            "postgres://h/db"
        );
    }

    #[test]
    fn tls_parameters_come_out_of_key_value_pairs_quoted_or_not() {
        let taken = take_tls_parameters(
            "host=h sslmode = verify-ca user=u sslrootcert='/my \\'ca\\'.pem' dbname=d",
        );
        assert_eq!(
            taken,
            TlsParameters {
                rest: "host=h user=u dbname=d".into(),
                sslmode: Some("verify-ca".into()),
                sslrootcert: Some("/my 'ca'.pem".into()),
            }
        );
        let rest: tokio_postgres::Config = taken.rest.parse().unwrap();
        assert_eq!(rest.get_user(), Some("u"));
    }

    #[test]
    fn verifying_modes_need_a_root_certificate_and_a_readable_one() {
        let err = Tls::new(SslMode::VerifyFull, None).unwrap_err();
        assert_eq!(err.key, "database_sslmode");
        let err = Tls::new(SslMode::Require, Some("/no/such/ca.pem".into())).unwrap_err();
        assert_eq!(err.key, "database_sslrootcert");
        assert!(err.reason.contains("cannot be read"), "{}", err.reason);
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let err = Tls::new(SslMode::VerifyCa, Some(empty)).unwrap_err();
        assert!(err.reason.contains("no PEM certificate"), "{}", err.reason);
        assert!(Tls::new(SslMode::Prefer, None).is_ok());
    }
}

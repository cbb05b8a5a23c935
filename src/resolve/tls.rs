//! TLS trust towards https targets, built once per target at load.
//!
//! A target trusts either the system roots plus its `ca_file`, or exactly one pinned
//! certificate (`tls_fingerprint`). Each target gets its own [`ClientConfig`] with its own
//! session cache, shared by all its connections: reconnecting resumes the TLS session
//! instead of a full handshake, and a reload builds fresh ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TargetTlsError {
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The SHA-256 fingerprint of a DER certificate, as `openssl x509 -fingerprint -sha256`
/// prints it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(certificate: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(certificate).into())
    }

    /// Parses `sha256:` and 64 hex digits, in pairs separated by colons or not at all.
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let expected = || {
            format!(
                "invalid fingerprint {s:?}: expected \"sha256:\" and 64 hex digits (colons between pairs \
                 allowed), e.g. from `openssl x509 -in cert.pem -noout -fingerprint -sha256`"
            )
        };
        let hex_digits = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256:"))
            .map(|_| &s[7..])
            .ok_or_else(expected)?;
        let joined: String = if hex_digits.contains(':') {
            let pairs: Vec<&str> = hex_digits.split(':').collect();
            if pairs.iter().any(|p| p.len() != 2) {
                return Err(expected());
            }
            pairs.concat()
        } else {
            hex_digits.to_string()
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&joined, &mut bytes).map_err(|_| expected())?;
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The certificates of a `ca_file`, read and checked once.
#[derive(Clone)]
pub struct CaFile {
    path: PathBuf,
    certificates: Vec<CertificateDer<'static>>,
}

impl CaFile {
    /// Reads PEM CA certificates: at least one `CERTIFICATE` block, each usable as a trust
    /// anchor. Other PEM blocks (keys) are ignored. Errors are plain messages; config
    /// validation adds file, line and key.
    pub fn load(path: &Path) -> Result<CaFile, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certificates = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "{}: no PEM certificates (-----BEGIN CERTIFICATE-----) found",
                path.display()
            ));
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certificates.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "{}: certificate {} of {} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1,
                    certificates.len()
                )
            })?;
        }
        Ok(CaFile {
            path: path.to_path_buf(),
            certificates,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// Which certificates an https target may present.
#[derive(Debug, Clone)]
pub enum TlsTrust {
    /// A chain to the system roots or to the `ca_file`. A certificate byte-identical to one
    /// in the `ca_file` is also accepted as it is, as Python clients and Windows accept a
    /// self-signed server certificate they were told to trust, though it usually says
    /// CA:TRUE (`openssl req -x509`); its host name, dates and purpose are still checked.
    Roots(Option<CaFile>),
    /// Exactly the certificate with this fingerprint, whatever its issuer, names or dates:
    /// what the operator pinned is what the relay talks to. The handshake still proves
    /// the server holds its key.
    Pinned(Fingerprint),
}

/// A target's TLS trust and the client configuration built from it.
#[derive(Clone)]
pub struct TargetTls {
    trust: TlsTrust,
    client_config: Arc<ClientConfig>,
}

impl fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetTls").field("trust", &self.trust).finish()
    }
}

impl TargetTls {
    pub fn new(trust: TlsTrust) -> Result<TargetTls, TargetTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let check = match &trust {
            TlsTrust::Pinned(pin) => Check::Pinned(*pin),
            TlsTrust::Roots(ca_file) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(system_roots().iter().cloned());
                let listed = ca_file.as_ref().map_or(&[][..], |c| c.certificates()).to_vec();
                roots.add_parsable_certificates(listed.iter().cloned());
                let chain = if roots.is_empty() {
                    None
                } else {
                    let built = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TargetTlsError::Config(e.to_string()))?;
                    Some(built)
                };
                Check::Roots { chain, listed }
            }
        };
        let verifier = Arc::new(TargetVerifier { check, algorithms });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TargetTlsError::Config(e.to_string()))?
            .dangerous()
            // The verifier checks what rustls' own would, and more narrowly; only a
            // pinned certificate skips chain, names and dates, by the operator's choice.
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(TargetTls {
            trust,
            client_config: Arc::new(config),
        })
    }

    pub fn trust(&self) -> &TlsTrust {
        &self.trust
    }

    /// The configuration every connection to this target uses (its session cache included).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config.clone()
    }
}

/// The system's CA certificates, read once.
fn system_roots() -> &'static Vec<CertificateDer<'static>> {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "skipping an unreadable system CA certificate");
        }
        found.certs
    })
}

/// What a target's certificate is checked against.
#[derive(Debug)]
enum Check {
    Roots {
        /// `None` when there is nothing to chain to: no system roots and no `ca_file`.
        chain: Option<Arc<WebPkiServerVerifier>>,
        /// The `ca_file` certificates, accepted as they are when presented as the server's own.
        listed: Vec<CertificateDer<'static>>,
    },
    Pinned(Fingerprint),
}

#[derive(Debug)]
struct TargetVerifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for TargetVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (chain, listed) = match &self.check {
            Check::Pinned(pin) => {
                let presented = Fingerprint::of(end_entity.as_ref());
                if presented == *pin {
                    return Ok(ServerCertVerified::assertion());
                }
                return Err(other_error(format!(
                    "the certificate presented has fingerprint {presented}, not the pinned tls_fingerprint {pin}"
                )));
            }
            Check::Roots { chain, listed } => (chain, listed),
        };
        if listed.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return verify_listed(end_entity, server_name, now);
        }
        match chain {
            Some(chain) => chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(other_error(
                "no trusted CA certificates: the system store is empty and no ca_file is set".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server certificate the `ca_file` lists itself: no chain to build, but the checks a
/// client makes of any server certificate still apply.
fn verify_listed(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let since_epoch = |t: i64| UnixTime::since_unix_epoch(Duration::from_secs(t.max(0).unsigned_abs()));
    let validity = cert.validity();
    let (not_before, not_after) = (
        since_epoch(validity.not_before.timestamp()),
        since_epoch(validity.not_after.timestamp()),
    );
    if now < not_before {
        return Err(CertificateError::NotValidYetContext { time: now, not_before }.into());
    }
    if now > not_after {
        return Err(CertificateError::ExpiredContext { time: now, not_after }.into());
    }
    match cert.extended_key_usage() {
        Ok(None) => {}
        Ok(Some(eku)) if eku.value.server_auth || eku.value.any => {}
        Ok(Some(_)) => return Err(CertificateError::InvalidPurpose.into()),
        Err(_) => return Err(CertificateError::BadEncoding.into()),
    }
    Ok(ServerCertVerified::assertion())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// A refusal whose text reaches the operator unchanged (rustls prints certificate errors
/// of its own kinds only).
fn other_error(message: String) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(Refused(message))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::ServerConfig;
    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A certificate and its key, as a test server presents them.
    struct Identity {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn self_signed(params: CertificateParams) -> Identity {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Identity { cert, key }
    }

    fn params(names: &[&str]) -> CertificateParams {
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// Self-signed with CA:TRUE and no extended key usage, as `openssl req -x509` makes one.
    fn openssl_style(names: &[&str]) -> Identity {
        let mut p = params(names);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        self_signed(p)
    }

    fn server(identity: &Identity) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![identity.cert.der().clone()],
                PrivateKeyDer::Pkcs8(identity.key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }

    fn ca_file(name: &str, certs: &[&Identity]) -> CaFile {
        let dir = std::env::temp_dir().join(format!("winrm-relay-target-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let pem: String = certs.iter().map(|c| c.cert.pem()).collect();
        std::fs::write(&path, pem).unwrap();
        CaFile::load(&path).unwrap()
    }

    fn roots(ca: CaFile) -> TargetTls {
        TargetTls::new(TlsTrust::Roots(Some(ca))).unwrap()
    }

    /// One TLS connection from `client` to `server` under `name`, in memory: how the
    /// handshake went, or why the client refused it. The server sends a byte so the
    /// client also reads the session tickets that precede it.
    async fn connect(client: &TargetTls, server: Arc<ServerConfig>, name: &str) -> Result<HandshakeKind, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let serve = async move {
            let mut stream = tokio_rustls::TlsAcceptor::from(server).accept(server_io).await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            Ok::<_, std::io::Error>(stream)
        };
        let name = ServerName::try_from(name.to_string()).unwrap();
        let dial = async {
            let mut stream = tokio_rustls::TlsConnector::from(client.client_config())
                .connect(name, client_io)
                .await?;
            stream.read_exact(&mut [0u8; 1]).await?;
            Ok::<_, std::io::Error>(stream.get_ref().1.handshake_kind())
        };
        let (_server, dialled) = tokio::join!(serve, dial);
        match dialled {
            Ok(Some(kind)) => Ok(kind),
            Ok(None) => Err("no handshake".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn connections_to_a_target_resume_its_tls_session() {
        let ca = openssl_style(&["winrm-relay test CA"]);
        let ca_key = &ca.key;
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params(&["web03.lab.local"])
            .signed_by(&leaf_key, &ca.cert, ca_key)
            .unwrap();
        let leaf = Identity {
            cert: leaf,
            key: leaf_key,
        };
        let server = server(&leaf);
        let tls = roots(ca_file("resume-ca.pem", &[&ca]));
        assert_eq!(
            connect(&tls, server.clone(), "web03.lab.local").await,
            Ok(HandshakeKind::Full)
        );
        assert_eq!(
            connect(&tls, server.clone(), "web03.lab.local").await,
            Ok(HandshakeKind::Resumed)
        );
        // What a reload builds starts afresh.
        let rebuilt = TargetTls::new(tls.trust().clone()).unwrap();
        assert_eq!(
            connect(&rebuilt, server, "web03.lab.local").await,
            Ok(HandshakeKind::Full)
        );
    }

    #[tokio::test]
    async fn a_self_signed_certificate_listed_in_ca_file_is_accepted_as_it_is() {
        let target = openssl_style(&["web09.lab.local", "127.0.0.39"]);
        let tls = roots(ca_file("listed.pem", &[&target]));
        assert!(connect(&tls, server(&target), "web09.lab.local").await.is_ok());
        assert!(connect(&tls, server(&target), "127.0.0.39").await.is_ok());
        // Its names still count.
        let wrong_name = connect(&tls, server(&target), "web10.lab.local").await.unwrap_err();
        assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
        // Another certificate with the same names and CA:TRUE is not the listed one.
        let lookalike = openssl_style(&["web09.lab.local"]);
        let refused = connect(&tls, server(&lookalike), "web09.lab.local").await.unwrap_err();
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }

    #[tokio::test]
    async fn a_listed_certificate_must_be_in_date_and_for_servers() {
        let mut expired = params(&["old.lab.local"]);
        expired.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        expired.not_before = rcgen::date_time_ymd(2001, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let expired = self_signed(expired);
        let tls = roots(ca_file("expired.pem", &[&expired]));
        let refused = connect(&tls, server(&expired), "old.lab.local").await.unwrap_err();
        assert!(refused.contains("certificate expired"), "{refused}");

        let mut client_only = params(&["client.lab.local"]);
        client_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_only = self_signed(client_only);
        let tls = roots(ca_file("client-only.pem", &[&client_only]));
        let refused = connect(&tls, server(&client_only), "client.lab.local")
            .await
            .unwrap_err();
        assert!(refused.contains("InvalidPurpose"), "{refused}");
    }

    #[tokio::test]
    async fn a_pinned_target_accepts_exactly_its_certificate() {
        let target = self_signed(params(&["lab-box"]));
        let pin = Fingerprint::of(target.cert.der());
        let pinned = TargetTls::new(TlsTrust::Pinned(pin)).unwrap();
        // Whatever the names or the issuer: the pin is the whole check.
        assert!(connect(&pinned, server(&target), "lab-box").await.is_ok());
        assert!(connect(&pinned, server(&target), "10.9.9.9").await.is_ok());
        let other = openssl_style(&["lab-box"]);
        let refused = connect(&pinned, server(&other), "lab-box").await.unwrap_err();
        let presented = Fingerprint::of(other.cert.der());
        assert!(
            refused.contains(&format!(
                "the certificate presented has fingerprint {presented}, not the pinned tls_fingerprint {pin}"
            )),
            "{refused}"
        );
        // A certificate a trusted CA issued is no better than any other once pinned.
        let trusted = roots(ca_file("trusted.pem", &[&other]));
        assert!(connect(&trusted, server(&other), "lab-box").await.is_ok());
        assert!(connect(&pinned, server(&other), "lab-box").await.is_err());
    }

    #[test]
    fn without_any_trust_anchor_every_certificate_is_refused_with_the_reason() {
        let target = self_signed(params(&["x"]));
        let verifier = TargetVerifier {
            check: Check::Roots {
                chain: None,
                listed: Vec::new(),
            },
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let name = ServerName::try_from("x").unwrap();
        let refused = verifier
            .verify_server_cert(target.cert.der(), &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(refused
            .to_string()
            .contains("the system store is empty and no ca_file is set"));
    }

    #[test]
    fn fingerprints_print_as_openssl_does_and_parse_back() {
        let fp = Fingerprint::of(b"certificate");
        let shown = fp.to_string();
        assert!(shown.starts_with("sha256:") && shown.len() == 7 + 32 * 3 - 1, "{shown}");
        assert_eq!(Fingerprint::parse(&shown), Ok(fp));
        assert_eq!(
            Fingerprint::parse(&shown.replace(':', "").replacen("sha256", "sha256:", 1)),
            Ok(fp)
        );
        assert_eq!(Fingerprint::parse(&shown.to_lowercase()), Ok(fp));
    }
}

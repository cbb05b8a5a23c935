//! TLS towards HTTPS targets: which certificates to trust, and the insecure
//! opt-out (`tls_verify = false`) kept explicit and loud.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::proto::credssp::SkipCertificateVerification;

#[derive(Debug, thiserror::Error)]
pub enum TargetTlsError {
    #[error("cannot read ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("no trusted CA certificates: the system store is empty and no ca_file is set")]
    NoRoots,
    #[error("tls configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// Client configuration for one target: system roots plus its `ca_file`,
/// or no verification at all when the operator opted out.
pub fn client_config(ca_file: Option<&Path>, verify: bool) -> Result<Arc<ClientConfig>, TargetTlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TargetTlsError::Config(e.to_string()))?;
    let config = if verify {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        if let Some(path) = ca_file {
            let certs = crate::config::load_ca_file(path).map_err(|detail| TargetTlsError::CaFile {
                path: path.display().to_string(),
                detail,
            })?;
            for cert in certs {
                roots.add(cert).map_err(|e| TargetTlsError::CaFile {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            }
        }
        if roots.is_empty() {
            return Err(TargetTlsError::NoRoots);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            // `tls_verify = false`, an explicit per-target opt-in, logged at
            // start-up and audited per request.
            .with_custom_certificate_verifier(Arc::new(SkipCertificateVerification))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, TargetTlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| TargetTlsError::Config(format!("{host}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("relay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let error = client_config(Some(&empty), true).unwrap_err().to_string();
        assert!(
            error.contains("empty.pem") && error.contains("no PEM certificate"),
            "{error}"
        );
        let missing = dir.join("missing.pem");
        assert!(client_config(Some(&missing), true)
            .unwrap_err()
            .to_string()
            .contains("missing.pem"));
        let cert = rcgen::generate_simple_self_signed(vec!["t".into()]).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, cert.cert.pem()).unwrap();
        assert!(client_config(Some(&good), true).is_ok());
        assert!(client_config(None, false).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }
}

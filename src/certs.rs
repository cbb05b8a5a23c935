//! The relay's CredSSP certificate: loading, checking and development generation.
//!
//! CredSSP binds the authentication to the TLS tunnel's public key (`pubKeyAuth`) as the
//! leaf's SubjectPublicKey bit-string contents. Python clients (pyspnego) can only
//! serialise that for RSA, so the leaf must be RSA with at least 2048 bits; anything else
//! is refused here, at startup, rather than failing every client later.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::oid_registry;
use zeroize::Zeroizing;

/// Smallest RSA modulus accepted and the size of generated keys.
pub const MIN_RSA_BITS: usize = 2048;

const DEV_CERT_DAYS: i64 = 2 * 365;

pub struct RelayCert {
    /// PEM chain as loaded, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf's PKCS#1 RSAPublicKey DER, the key CredSSP's pubKeyAuth binds to.
    pub credssp_public_key: Vec<u8>,
}

impl fmt::Debug for RelayCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayCert")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("credssp_public_key_len", &self.credssp_public_key.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: invalid certificate: {message}", path.display())]
    InvalidCertificate { path: PathBuf, message: String },
    #[error("{}: invalid private key: {message}", path.display())]
    InvalidKey { path: PathBuf, message: String },
    #[error(
        "{}: the certificate key is {algorithm}, not RSA; CredSSP clients can only bind RSA keys of {MIN_RSA_BITS} bits or more",
        path.display()
    )]
    NotRsa { path: PathBuf, algorithm: String },
    #[error("{}: the RSA key has {bits} bits; use {MIN_RSA_BITS} or more", path.display())]
    WeakKey { path: PathBuf, bits: usize },
    #[error(
        "{} is readable by group or others (mode {mode:04o}); run chmod 600 {}",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{} exists but {} does not: provide both, or neither to generate a development pair",
        present.display(),
        missing.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot generate a development certificate: {message}")]
    Generate { message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the pair, or generates a self-signed development pair when both files are
/// missing. Returns true when it generated (the caller should log that).
pub fn load_or_generate(cert: &Path, key: &Path) -> Result<(RelayCert, bool), CertError> {
    let cert_exists = cert.try_exists().map_err(io_err(cert))?;
    let key_exists = key.try_exists().map_err(io_err(key))?;
    match (cert_exists, key_exists) {
        (true, true) => Ok((load(cert, key)?, false)),
        (false, false) => {
            generate(cert, key)?;
            Ok((load(cert, key)?, true))
        }
        (true, false) => Err(CertError::Incomplete {
            present: cert.to_path_buf(),
            missing: key.to_path_buf(),
        }),
        (false, true) => Err(CertError::Incomplete {
            present: key.to_path_buf(),
            missing: cert.to_path_buf(),
        }),
    }
}

/// Loads a PEM chain (leaf first) and its PEM key (PKCS#8 or PKCS#1), checking that the
/// leaf is RSA >= 2048 bits and that the key belongs to it.
pub fn load(cert: &Path, key: &Path) -> Result<RelayCert, CertError> {
    let cert_pem = std::fs::read(cert).map_err(io_err(cert))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::InvalidCertificate {
            path: cert.to_path_buf(),
            message: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert.to_path_buf(),
        });
    };
    let credssp_public_key = rsa_public_key(cert, leaf)?;

    let key_pem = read_private(key)?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| CertError::InvalidKey {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?
        .ok_or_else(|| CertError::NoKey {
            path: key.to_path_buf(),
        })?;
    let invalid_key = |message: String| CertError::InvalidKey {
        path: key.to_path_buf(),
        message,
    };
    let rsa_key = match &private {
        PrivateKeyDer::Pkcs8(k) => RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der())
            .map_err(|e| invalid_key(format!("not an RSA PKCS#8 key ({e})")))?,
        PrivateKeyDer::Pkcs1(k) => {
            RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der()).map_err(|e| invalid_key(e.to_string()))?
        }
        _ => return Err(invalid_key("not an RSA key".into())),
    };
    // rustls would only notice a mismatch during a handshake; say which files at startup.
    let matches = rsa_key
        .to_public_key()
        .to_pkcs1_der()
        .is_ok_and(|der| der.as_bytes() == credssp_public_key.as_slice());
    if !matches {
        return Err(CertError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        });
    }
    Ok(RelayCert {
        chain,
        key: private,
        credssp_public_key,
    })
}

/// Reads the private key file, refusing one that group or others can read: whoever
/// reads it can impersonate the relay to CredSSP clients.
fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, CertError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // fstat on the opened file, so the checked file is the one read.
        let mode = file.metadata().map_err(io_err(path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(CertError::KeyPermissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    let mut pem = Zeroizing::new(Vec::new());
    file.read_to_end(&mut pem).map_err(io_err(path))?;
    Ok(pem)
}

/// The leaf's SubjectPublicKey contents (PKCS#1 RSAPublicKey), refusing non-RSA and
/// short keys.
fn rsa_public_key(path: &Path, leaf: &CertificateDer<'_>) -> Result<Vec<u8>, CertError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| CertError::InvalidCertificate {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let spki = parsed.public_key();
    let oid = &spki.algorithm.algorithm;
    if *oid != oid_registry::OID_PKCS1_RSAENCRYPTION {
        let algorithm = if *oid == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
            "ECDSA".to_string()
        } else if *oid == oid_registry::OID_SIG_ED25519 {
            "Ed25519".to_string()
        } else {
            format!("algorithm {oid}")
        };
        return Err(CertError::NotRsa {
            path: path.to_path_buf(),
            algorithm,
        });
    }
    let pkcs1 = spki.subject_public_key.data.to_vec();
    check_rsa_bits(path, &pkcs1)?;
    Ok(pkcs1)
}

fn check_rsa_bits(path: &Path, pkcs1: &[u8]) -> Result<(), CertError> {
    let key = RsaPublicKey::from_pkcs1_der(pkcs1).map_err(|e| CertError::InvalidCertificate {
        path: path.to_path_buf(),
        message: format!("bad RSA public key: {e}"),
    })?;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(CertError::WeakKey {
            path: path.to_path_buf(),
            bits,
        });
    }
    Ok(())
}

/// Writes a fresh RSA-2048 key (mode 0600) and a self-signed certificate for localhost,
/// 127.0.0.1 and this machine's host name.
fn generate(cert: &Path, key: &Path) -> Result<(), CertError> {
    let gen_err = |message: String| CertError::Generate { message };
    // rcgen's ring backend can sign with an RSA key but not create one.
    let rsa_key = RsaPrivateKey::new(&mut rand::rngs::OsRng, MIN_RSA_BITS).map_err(|e| gen_err(e.to_string()))?;
    let pkcs8 = rsa_key.to_pkcs8_der().map_err(|e| gen_err(e.to_string()))?;
    let key_pem = rsa_key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| gen_err(e.to_string()))?;
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(|e| gen_err(e.to_string()))?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Some(h) = hostname().filter(|h| !h.eq_ignore_ascii_case("localhost")) {
        names.push(h);
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| gen_err(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "winrm-relay development certificate");
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clients with a slow clock.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(DEV_CERT_DAYS);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params.self_signed(&key_pair).map_err(|e| gen_err(e.to_string()))?;

    write_new(key, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(cert, certificate.pem().as_bytes(), 0o644) {
        // Leaving the key alone would make the next start fail with "Incomplete".
        let _ = std::fs::remove_file(key);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` (and its directory) exclusively, so an existing file is never replaced.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io_err(path))
}

/// This machine's host name, if it is a valid DNS name.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim().to_string();
    crate::resolve::host::validate_hostname(&name).ok()?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding as Pkcs1LineEnding};
    use x509_parser::extensions::GeneralName;

    #[test]
    fn generate_then_reload() {
        let dir = crate::config::test_dir("certs-generate");
        let (cert, key) = (dir.join("sub/relay.crt"), dir.join("sub/relay.key"));
        let (generated, fresh) = load_or_generate(&cert, &key).unwrap();
        assert!(fresh);
        assert_eq!(generated.chain.len(), 1);
        assert!(matches!(generated.key, PrivateKeyDer::Pkcs8(_)));
        // PKCS#1 RSAPublicKey of a 2048-bit key: SEQUENCE of 0x010a bytes.
        assert_eq!(generated.credssp_public_key[..4], [0x30, 0x82, 0x01, 0x0a]);
        let public = RsaPublicKey::from_pkcs1_der(&generated.credssp_public_key).unwrap();
        assert_eq!(public.n().bits(), 2048);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, fresh) = load_or_generate(&cert, &key).unwrap();
        assert!(!fresh);
        assert_eq!(again.credssp_public_key, generated.credssp_public_key);
        assert!(!format!("{again:?}").contains("Pkcs8"));

        // The SANs a client will check.
        let (_, parsed) = x509_parser::parse_x509_certificate(again.chain[0].as_ref()).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        let has = |want: &GeneralName| san.general_names.iter().any(|n| n == want);
        assert!(has(&GeneralName::DNSName("localhost")), "{san:?}");
        assert!(has(&GeneralName::IPAddress(&[127, 0, 0, 1])), "{san:?}");

        // A PKCS#1 ("RSA PRIVATE KEY") file works too.
        let pkcs8 = std::fs::read_to_string(&key).unwrap();
        let rsa_key = RsaPrivateKey::from_pkcs8_pem(&pkcs8).unwrap();
        let pkcs1_path = dir.join("pkcs1.key");
        write_key(
            &pkcs1_path,
            rsa_key.to_pkcs1_pem(Pkcs1LineEnding::LF).unwrap().as_bytes(),
        );
        let via_pkcs1 = load(&cert, &pkcs1_path).unwrap();
        assert!(matches!(via_pkcs1.key, PrivateKeyDer::Pkcs1(_)));

        // Another key does not belong to this certificate.
        let other = dir.join("other");
        load_or_generate(&other.join("c.crt"), &other.join("c.key")).unwrap();
        let e = load(&cert, &other.join("c.key")).unwrap_err();
        assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");

        // One of the two missing is an error, not a silent regeneration.
        std::fs::remove_file(&key).unwrap();
        let e = load_or_generate(&cert, &key).unwrap_err();
        assert!(matches!(e, CertError::Incomplete { .. }), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn write_key(path: &Path, pem: &[u8]) {
        write_new(path, pem, 0o600).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::config::test_dir("certs-key-mode");
        let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
        load_or_generate(&cert, &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&cert, &key).unwrap_err();
        assert!(matches!(e, CertError::KeyPermissions { mode: 0o640, .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("mode 0640"), "{text}");
        assert!(text.contains(&format!("run chmod 600 {}", key.display())), "{text}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(
            load(&cert, &key),
            Err(CertError::KeyPermissions { mode: 0o604, .. })
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        load(&cert, &key).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ecdsa_certificate_is_refused() {
        let dir = crate::config::test_dir("certs-ecdsa");
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let (cert, key) = (dir.join("ec.crt"), dir.join("ec.key"));
        std::fs::write(&cert, c.pem()).unwrap();
        write_key(&key, kp.serialize_pem().as_bytes());
        let e = load(&cert, &key).unwrap_err();
        assert!(matches!(e, CertError::NotRsa { .. }), "{e}");
        assert!(e.to_string().contains("ECDSA, not RSA"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        let small = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let der = small.to_public_key().to_pkcs1_der().unwrap();
        let e = check_rsa_bits(Path::new("c"), der.as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "c: the RSA key has 1024 bits; use 2048 or more");
    }

    #[test]
    fn empty_files_are_reported() {
        let dir = crate::config::test_dir("certs-empty");
        let (cert, key) = (dir.join("c.crt"), dir.join("c.key"));
        std::fs::write(&cert, "not pem").unwrap();
        write_key(&key, b"");
        let e = load(&cert, &key).unwrap_err();
        assert!(matches!(e, CertError::NoCertificate { .. }), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

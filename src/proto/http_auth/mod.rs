//! HTTP authentication headers (`Authorization`, `WWW-Authenticate`) and the
//! relay's client side of NTLM-in-SPNEGO towards targets: sspi authenticates
//! (`negotiate_client`), the relay's own NTLM session security seals after
//! (`ntlm_sealing`).

mod negotiate_client;
mod ntlm_sealing;

pub use negotiate_client::NegotiateClient;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::SecretString;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum HttpAuthError {
    #[error("authorization header is not `<scheme> <base64>`")]
    Malformed,
    #[error("authorization token is not valid base64")]
    BadBase64,
    #[error("security package: {0}")]
    Sspi(String),
    #[error("the target did not complete authentication")]
    Incomplete,
    #[error("sealed message is malformed: {0}")]
    BadSealedMessage(&'static str),
    #[error("the security package panicked on the target's input; the connection's context is unusable")]
    Panicked,
}

/// An `Authorization` or `WWW-Authenticate` value split into scheme and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeToken {
    pub scheme: String,
    pub token: Option<Vec<u8>>,
}

/// Parse `Scheme [base64]`. The scheme is compared case-insensitively by callers.
pub fn parse_scheme_token(value: &str) -> Result<SchemeToken, HttpAuthError> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest.trim()),
        None => (value, ""),
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(HttpAuthError::Malformed);
    }
    let token = if rest.is_empty() {
        None
    } else {
        Some(STANDARD.decode(rest).map_err(|_| HttpAuthError::BadBase64)?)
    };
    Ok(SchemeToken {
        scheme: scheme.to_string(),
        token,
    })
}

/// Find the token for `scheme` among possibly several `WWW-Authenticate`
/// values (a server may offer `Negotiate`, `Kerberos`, `Basic realm=..`).
/// Returns `Some(None)` when the scheme is offered without a token.
pub fn find_challenge<'a>(values: impl IntoIterator<Item = &'a str>, scheme: &str) -> Option<Option<Vec<u8>>> {
    for value in values {
        // One header may list several offers separated by commas.
        for offer in value.split(',') {
            if let Ok(parsed) = parse_scheme_token(offer) {
                if parsed.scheme.eq_ignore_ascii_case(scheme) {
                    return Some(parsed.token);
                }
            }
        }
    }
    None
}

/// `Scheme <base64>` (or just `Scheme` for an empty token). requests-credssp
/// finds its token with `CredSSP ([^,\s]*)$`, so nothing may follow it.
pub fn format_scheme_token(scheme: &str, token: &[u8]) -> String {
    if token.is_empty() {
        scheme.to_string()
    } else {
        format!("{scheme} {}", STANDARD.encode(token))
    }
}

/// `Basic b64(user:password)` for a target. The value holds the password:
/// it lives in a zeroizing buffer and goes straight into the request.
pub fn basic_authorization(user: &str, password: &str) -> Zeroizing<String> {
    let plain = Zeroizing::new(format!("{user}:{password}"));
    Zeroizing::new(format!("Basic {}", STANDARD.encode(plain.as_bytes())))
}

/// User and password from a `Basic` token (already base64-decoded).
pub fn parse_basic(token: &[u8]) -> Result<(String, SecretString), HttpAuthError> {
    let text = std::str::from_utf8(token).map_err(|_| HttpAuthError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(HttpAuthError::Malformed)?;
    if user.is_empty() {
        return Err(HttpAuthError::Malformed);
    }
    Ok((user.to_string(), SecretString::from(password.to_string())))
}

/// `tls-server-end-point` channel-binding data for a certificate: its hash
/// with the certificate's own signature hash, SHA-256 when that is MD5 or
/// SHA-1 (or unknown), which is the hash a Windows target computes too.
pub fn tls_server_end_point(certificate_der: &[u8]) -> Vec<u8> {
    let algorithm = x509_parser::parse_x509_certificate(certificate_der)
        .map(|(_, cert)| cert.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    let hash = match algorithm.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(certificate_der).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(certificate_der).to_vec(),
        _ => Sha256::digest(certificate_der).to_vec(),
    };
    let mut data = b"tls-server-end-point:".to_vec();
    data.extend_from_slice(&hash);
    data
}

/// SEC_CHANNEL_BINDINGS: eight u32 fields (no initiator or acceptor
/// address; application data at offset 32) followed by the data.
pub fn sec_channel_bindings(application_data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + application_data.len());
    for field in [0u32, 0, 0, 0, 0, 0, application_data.len() as u32, 32] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(application_data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn basic_round_trip() {
        let header = basic_authorization("LAB\\alice", "p:w");
        let parsed = parse_scheme_token(&header).unwrap();
        assert_eq!(parsed.scheme, "Basic");
        let (user, password) = parse_basic(&parsed.token.unwrap()).unwrap();
        assert_eq!(user, "LAB\\alice");
        assert_eq!(password.expose_secret(), "p:w");
        assert!(parse_basic(b"no-colon").is_err());
        assert!(parse_basic(b":pw").is_err());
        assert!(parse_basic(&[0xff, b':']).is_err());
    }

    #[test]
    fn channel_bindings_layout() {
        let bindings = sec_channel_bindings(b"tls-server-end-point:abc");
        assert_eq!(bindings.len(), 32 + 24);
        assert_eq!(&bindings[24..28], &24u32.to_le_bytes());
        assert_eq!(&bindings[28..32], &32u32.to_le_bytes());
        assert_eq!(&bindings[32..], b"tls-server-end-point:abc");
    }

    #[test]
    fn end_point_hash_defaults_to_sha256() {
        let cert = rcgen::generate_simple_self_signed(vec!["t".into()]).unwrap();
        let data = tls_server_end_point(cert.cert.der());
        // rcgen's default ECDSA P-256 signs with SHA-256.
        assert_eq!(data.len(), "tls-server-end-point:".len() + 32);
        assert_eq!(&data[21..], Sha256::digest(cert.cert.der()).as_slice());
    }

    #[test]
    fn parses_scheme_and_token() {
        let parsed = parse_scheme_token("CredSSP AAEC").unwrap();
        assert_eq!(parsed.scheme, "CredSSP");
        assert_eq!(parsed.token.unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_scheme_token("Negotiate").unwrap().token, None);
        assert!(parse_scheme_token("Negotiate ***").is_err());
        assert!(parse_scheme_token("").is_err());
        assert!(parse_scheme_token("Bad\"Scheme x").is_err());
    }

    #[test]
    fn finds_the_offered_scheme() {
        let values = ["Basic realm=\"WSMAN\"", "Negotiate AAEC", "Kerberos"];
        assert_eq!(find_challenge(values, "negotiate"), Some(Some(vec![0, 1, 2])));
        assert_eq!(find_challenge(values, "Kerberos"), Some(None));
        assert_eq!(find_challenge(values, "CredSSP"), None);
        assert_eq!(
            find_challenge(["Negotiate, Basic realm=\"x\""], "Negotiate"),
            Some(None)
        );
    }

    #[test]
    fn token_is_last_in_the_header() {
        let header = format_scheme_token("CredSSP", b"\x16\x03\x03");
        assert_eq!(header, "CredSSP FgMD");
        assert_eq!(format_scheme_token("CredSSP", b""), "CredSSP");
    }
}

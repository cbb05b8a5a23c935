//! HTTP authentication headers (`Authorization`, `WWW-Authenticate`) and the
//! relay's client side of NTLM-in-SPNEGO towards targets.

mod negotiate_client;

pub use negotiate_client::NegotiateClient;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

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

#[cfg(test)]
mod tests {
    use super::*;

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

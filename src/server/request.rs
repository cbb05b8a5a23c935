//! Reading a request off the wire: which target it names, whether it is an
//! unauthenticated Identify, and its body within the envelope limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;

use crate::proto::sealing;

/// Which target a request names: `None` for a bare `/wsman` on the main listener.
pub(crate) struct Route {
    pub target: Option<String>,
}

/// `/wsman` or `/wsman/<target>` (case-insensitive, as Windows); on a
/// per-target listener every path goes to that target.
pub(crate) fn route(path: &str, fixed_target: Option<&str>) -> Option<Route> {
    if let Some(fixed) = fixed_target {
        return Some(Route {
            target: Some(fixed.to_string()),
        });
    }
    let path = path.trim_end_matches('/');
    let prefix = "/wsman";
    if path.len() < prefix.len() || !path[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    if rest.is_empty() {
        return Some(Route { target: None });
    }
    let name = rest.strip_prefix('/')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some(Route {
        target: Some(name.to_string()),
    })
}

pub(crate) fn is_unauthenticated_identify(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get("WSMANIDENTIFY")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("unauthenticated"))
}

/// The body, never buffered beyond what an envelope of `max_envelope` bytes
/// can take once sealed.
pub(crate) async fn read_body(request: Request<Incoming>, max_envelope: usize) -> Result<Bytes, BodyError> {
    let limit = sealing::sealed_size_limit(max_envelope);
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(error) => Err(BodyError::Read(error.to_string())),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body exceeds the relay's maximum envelope size")]
    TooLarge,
    #[error("reading request body: {0}")]
    Read(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/wsman", None).unwrap().target, None);
        assert_eq!(route("/wsman/", None).unwrap().target, None);
        assert_eq!(route("/WSMAN/web01", None).unwrap().target.as_deref(), Some("web01"));
        assert_eq!(
            route("/wsman/10.0.0.1:5985/", None).unwrap().target.as_deref(),
            Some("10.0.0.1:5985")
        );
        assert!(route("/other", None).is_none());
        assert!(route("/wsmanx", None).is_none());
        assert!(route("/wsman/a/b", None).is_none());
        assert_eq!(
            route("/anything", Some("web01")).unwrap().target.as_deref(),
            Some("web01")
        );
    }
}

//! The edge: every response the relay itself produces (challenges, errors,
//! faults) is built here, so each failure maps to one place.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::proto::http_auth::format_scheme_token;
use crate::proto::sealing::{self, SealProtocol, SealedPart};

pub(crate) type HttpResponse = Response<Full<Bytes>>;

pub(crate) const CREDSSP: &str = "CredSSP";

fn empty(status: StatusCode) -> hyper::http::response::Builder {
    Response::builder().status(status).header(CONTENT_LENGTH, 0)
}

fn finish(builder: hyper::http::response::Builder, body: Bytes) -> HttpResponse {
    builder.body(Full::new(body)).unwrap_or_else(|_| {
        let mut fallback = Response::new(Full::new(Bytes::new()));
        *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

/// `401` with `WWW-Authenticate: CredSSP [token]`: a challenge, a handshake
/// leg, or a rejection (then `token` may carry the TSRequest errorCode).
pub(crate) fn credssp_401(token: &[u8]) -> HttpResponse {
    let header = format_scheme_token(CREDSSP, token);
    let value = HeaderValue::from_str(&header).unwrap_or_else(|_| HeaderValue::from_static(CREDSSP));
    finish(
        empty(StatusCode::UNAUTHORIZED).header(WWW_AUTHENTICATE, value),
        Bytes::new(),
    )
}

/// The first `401`: the schemes a caller may log on with (CredSSP; with constrained
/// delegation also plain Kerberos, SPNEGO or bare).
pub(crate) fn offers_401(kerberos: bool) -> HttpResponse {
    if !kerberos {
        return credssp_401(&[]);
    }
    let mut response = empty(StatusCode::UNAUTHORIZED);
    for scheme in ["Negotiate", "Kerberos", CREDSSP] {
        response = response.header(WWW_AUTHENTICATE, scheme);
    }
    finish(response, Bytes::new())
}

/// `401` with a reason for humans in the body, and the CredSSP offer so the
/// client knows what would work.
pub(crate) fn refused_401(reason: &str) -> HttpResponse {
    let body = Bytes::from(format!("{reason}\n"));
    finish(
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(WWW_AUTHENTICATE, CREDSSP)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CONTENT_LENGTH, body.len()),
        body,
    )
}

/// `401` for Basic over HTTPS: offers Basic again (and CredSSP).
pub(crate) fn basic_401() -> HttpResponse {
    finish(
        empty(StatusCode::UNAUTHORIZED)
            .header(WWW_AUTHENTICATE, "Basic realm=\"WSMAN\"")
            .header(WWW_AUTHENTICATE, CREDSSP),
        Bytes::new(),
    )
}

/// A plain-text error after which the connection is closed.
pub(crate) fn closing(status: StatusCode, text: &str) -> HttpResponse {
    with_close(plain(status, text))
}

/// `response`, after which the connection is closed.
pub(crate) fn with_close(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(crate) fn ok_empty() -> HttpResponse {
    finish(empty(StatusCode::OK), Bytes::new())
}

pub(crate) fn plain(status: StatusCode, text: &str) -> HttpResponse {
    let body = Bytes::from(format!("{text}\n"));
    let mut builder = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CONTENT_LENGTH, body.len());
    if status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header(ALLOW, "POST");
    }
    finish(builder, body)
}

/// A CredSSP-sealed SOAP body (a reply or a fault).
pub(crate) fn sealed(status: StatusCode, protocol: SealProtocol, parts: &[SealedPart]) -> HttpResponse {
    let body = Bytes::from(sealing::build_body(protocol, parts));
    finish(
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, sealing::content_type(protocol, parts.len()))
            .header(CONTENT_LENGTH, body.len()),
        body,
    )
}

/// An unsealed SOAP body (answers to unauthenticated Identify).
pub(crate) fn soap(status: StatusCode, xml: Vec<u8>) -> HttpResponse {
    let body = Bytes::from(xml);
    finish(
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/soap+xml;charset=UTF-8")
            .header(CONTENT_LENGTH, body.len()),
        body,
    )
}

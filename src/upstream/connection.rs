//! One authenticated, kept-alive HTTP/1.1 connection to a target, and its exchanges.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use super::connect::connect;
use super::describe;
use super::error::{HttpError, UpstreamError, UpstreamErrorKind};
use super::wire::{collect_limited, Wire};
use crate::resolve::ResolvedTarget;
use crate::vault::DelegatedCredentials;

/// A decrypted response from the target.
#[derive(Debug)]
pub struct TargetResponse {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

pub struct TargetConnection {
    pub(super) target: ResolvedTarget,
    /// [`describe`] of the target, made once: every error names it.
    pub(super) description: Arc<str>,
    /// The address connected to.
    peer: IpAddr,
    sender: SendRequest<Full<Bytes>>,
    wire: Wire,
    driver: JoinHandle<()>,
    /// One timer for every exchange, moved on each time: it stays later than
    /// the one before, so tokio need not wake its own thread to re-arm (a new
    /// timer per request cost a syscall each). Taken out while an exchange runs.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for TargetConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for TargetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConnection")
            .field("target", &self.target.name)
            .finish()
    }
}

impl TargetConnection {
    /// Connect to the first of `addresses` that answers (in order; addresses the caller
    /// looked up and checked) and authenticate as `credentials`.
    pub async fn open(
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        credentials: &DelegatedCredentials,
    ) -> Result<Self, UpstreamError> {
        let description = describe(target);
        let connected = connect(target, &description, addresses).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(connected.io))
            .await
            .map_err(|e| UpstreamError::new(description.clone(), e))?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "target connection ended");
            }
        });
        let mut conn = TargetConnection {
            target: target.clone(),
            description,
            peer: connected.peer,
            sender,
            wire: Wire::Plain,
            driver,
            deadline: None,
        };
        let deadline = target.timeout;
        let authenticated = conn.authenticate(credentials, connected.certificate.as_deref());
        match tokio::time::timeout(deadline, authenticated).await {
            Ok(result) => conn.wire = result?,
            Err(_) => {
                return Err(conn.error(UpstreamErrorKind::Timeout {
                    secs: deadline.as_secs(),
                }))
            }
        }
        Ok(conn)
    }

    /// Whether the target closed the connection (then a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The address this connection goes to: what the policy checks for requests on it.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// `kind` of failure, on this connection's target.
    pub(super) fn error(&self, kind: impl Into<UpstreamErrorKind>) -> UpstreamError {
        UpstreamError::new(self.description.clone(), kind)
    }

    pub(super) fn request(
        &self,
        body: Bytes,
        content_type: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let http_error = |e: HttpError| self.error(e);
        let mut builder = Request::post(url_path(&self.target.url))
            .header(HOST, host_header(&self.target))
            .header(CONTENT_LENGTH, body.len())
            .header("User-Agent", "winrm-relay");
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(authorization) = authorization {
            let mut value = HeaderValue::from_str(authorization).map_err(|e| http_error(e.into()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(Full::new(body)).map_err(|e| http_error(e.into()))
    }

    pub(super) async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        let description = &self.description;
        let failed = |e: hyper::Error| UpstreamError::new(description.clone(), e);
        self.sender.ready().await.map_err(failed)?;
        self.sender.send_request(request).await.map_err(failed)
    }

    /// Send one SOAP envelope and return the answer in clear. `wait` is how
    /// long the target may legitimately take (at least the request's
    /// OperationTimeout for a Receive); `max_envelope` is the largest answer
    /// in bytes of SOAP (the request's MaxEnvelopeSize, see
    /// `RequestInfo::response_limit`): a larger body is refused as it
    /// arrives, before it is held whole.
    pub async fn exchange(
        &mut self,
        soap: &[u8],
        wait: Duration,
        max_envelope: usize,
    ) -> Result<TargetResponse, UpstreamError> {
        let due = tokio::time::Instant::now() + wait;
        let mut deadline = self
            .deadline
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(due)));
        deadline.as_mut().reset(due);
        let outcome = tokio::select! {
            biased;
            outcome = self.exchange_inner(soap, max_envelope) => outcome,
            () = deadline.as_mut() => Err(self.error(UpstreamErrorKind::Timeout { secs: wait.as_secs() })),
        };
        self.deadline = Some(deadline);
        outcome
    }

    async fn exchange_inner(&mut self, soap: &[u8], max_envelope: usize) -> Result<TargetResponse, UpstreamError> {
        let outgoing = self.wire.seal(soap).map_err(|e| self.error(e))?;
        let request = self.request(
            Bytes::from(outgoing.body),
            Some(&outgoing.content_type),
            outgoing.authorization.as_ref().map(|h| h.as_str()),
        )?;
        drop(outgoing.authorization);
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(self.error(UpstreamErrorKind::AuthRejected {
                user: "the caller".into(),
            }));
        }
        let response_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default();
        let limit = self.wire.body_limit(max_envelope);
        let body = collect_limited(response.into_body(), limit)
            .await
            .map_err(|e| self.error(e))?;
        if body.is_empty() {
            return Ok(TargetResponse {
                status,
                body: Vec::new(),
            });
        }
        let plain = self
            .wire
            .unseal(status, &response_type, &body)
            .map_err(|e| self.error(e))?;
        Ok(TargetResponse { status, body: plain })
    }
}

fn host_header(target: &ResolvedTarget) -> String {
    if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    }
}

/// The path part of `http://host:port/path` (what goes on the request line).
fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/wsman", |i| &after_scheme[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://127.0.0.21:5985/wsman"), "/wsman");
        assert_eq!(url_path("https://[::1]:5986/wsman/x"), "/wsman/x");
        assert_eq!(url_path("http://host"), "/wsman");
    }
}

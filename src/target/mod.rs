//! Connections from the relay to target hosts.
//!
//! One [`TargetConnection`] per (inbound session, target): a kept-alive HTTP/1.1
//! connection authenticated once with the caller's delegated credentials
//! (Negotiate/NTLM), then carrying SPNEGO-sealed WS-Man messages. It is never
//! shared across sessions, so never across users.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::ResolvedTarget;
use crate::proto::http_auth::{find_challenge, format_scheme_token, HttpAuthError, NegotiateClient};
use crate::proto::sealing::{self, SealProtocol};
use crate::vault::DelegatedCredentials;

/// Largest response body accepted from a target; WS-Man envelopes are bounded
/// by MaxEnvelopeSize (500 KiB by default), sealing adds little.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
const NEGOTIATE: &str = "Negotiate";

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("connecting to {target} timed out after {secs} s")]
    ConnectTimeout { target: String, secs: u64 },
    #[error("timed out: {target} did not answer within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("{target} rejected the delegated credentials of {user} (HTTP 401)")]
    AuthRejected { target: String, user: String },
    #[error("authenticating to {target}: {source}")]
    Auth { target: String, source: HttpAuthError },
    #[error("talking to {target}: {detail}")]
    Http { target: String, detail: String },
    #[error("{target} sent a response the relay cannot decrypt: {detail}")]
    BadResponse { target: String, detail: String },
}

impl TargetError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, TargetError::Timeout { .. } | TargetError::ConnectTimeout { .. })
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, TargetError::AuthRejected { .. } | TargetError::Auth { .. })
    }
}

/// A decrypted response from the target.
#[derive(Debug)]
pub struct TargetResponse {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

pub struct TargetConnection {
    target: ResolvedTarget,
    sender: SendRequest<Full<Bytes>>,
    auth: NegotiateClient,
    driver: JoinHandle<()>,
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
    /// Connect and authenticate as `credentials`.
    pub async fn open(target: &ResolvedTarget, credentials: &DelegatedCredentials) -> Result<Self, TargetError> {
        let addr = (target.host.as_str(), target.port);
        let stream = match tokio::time::timeout(target.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(TargetError::ConnectTimeout {
                    target: describe(target),
                    secs: target.connect_timeout.as_secs(),
                })
            }
            Ok(Err(source)) => {
                return Err(TargetError::Connect {
                    target: describe(target),
                    source,
                })
            }
            Ok(Ok(stream)) => stream,
        };
        // Small request/response exchanges: don't let Nagle add latency.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| TargetError::Http {
                target: describe(target),
                detail: e.to_string(),
            })?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "target connection ended");
            }
        });
        let auth = NegotiateClient::new(credentials, &target.host).map_err(|source| TargetError::Auth {
            target: describe(target),
            source,
        })?;
        let mut conn = TargetConnection {
            target: target.clone(),
            sender,
            auth,
            driver,
        };
        let deadline = target.timeout;
        match tokio::time::timeout(deadline, conn.authenticate(credentials.principal())).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(TargetError::Timeout {
                    target: describe(target),
                    secs: deadline.as_secs(),
                })
            }
        }
        Ok(conn)
    }

    /// Whether the target closed the connection (then a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Empty-body POSTs carry the Negotiate legs, as WinRM clients do.
    async fn authenticate(&mut self, user: String) -> Result<(), TargetError> {
        let mut server_token: Option<Vec<u8>> = None;
        loop {
            let token = self
                .auth
                .step(server_token.as_deref())
                .map_err(|source| TargetError::Auth {
                    target: describe(&self.target),
                    source,
                })?;
            let Some(token) = token else { return Ok(()) };
            let request = self.request(Bytes::new(), None, Some(&format_scheme_token(NEGOTIATE, &token)))?;
            let response = self.send(request).await?;
            let status = response.status();
            let challenge = {
                let values = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                find_challenge(values, NEGOTIATE).flatten()
            };
            // Drain the body so the connection stays usable.
            let _ = response.into_body().collect().await;
            match (status, challenge) {
                (StatusCode::UNAUTHORIZED, Some(next)) => server_token = Some(next),
                // A bare 401 means the credentials were refused.
                (StatusCode::UNAUTHORIZED, None) => {
                    return Err(TargetError::AuthRejected {
                        target: describe(&self.target),
                        user,
                    })
                }
                (status, final_token) if status.is_success() => {
                    // The final token (mechListMIC) must be consumed before any
                    // decryption, or sequence numbers go out of step.
                    if let Some(final_token) = final_token {
                        self.auth.step(Some(&final_token)).map_err(|source| TargetError::Auth {
                            target: describe(&self.target),
                            source,
                        })?;
                    }
                    if !self.auth.is_established() {
                        return Err(TargetError::Auth {
                            target: describe(&self.target),
                            source: HttpAuthError::Incomplete,
                        });
                    }
                    return Ok(());
                }
                (status, _) => {
                    return Err(TargetError::Http {
                        target: describe(&self.target),
                        detail: format!("unexpected HTTP {status} during authentication"),
                    })
                }
            }
        }
    }

    fn request(
        &self,
        body: Bytes,
        content_type: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, TargetError> {
        let mut builder = Request::post(url_path(&self.target.url))
            .header(HOST, format!("{}:{}", self.target.host, self.target.port))
            .header(CONTENT_LENGTH, body.len())
            .header("User-Agent", "winrm-relay");
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(authorization) = authorization {
            let value = HeaderValue::from_str(authorization).map_err(|e| TargetError::Http {
                target: describe(&self.target),
                detail: e.to_string(),
            })?;
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(Full::new(body)).map_err(|e| TargetError::Http {
            target: describe(&self.target),
            detail: e.to_string(),
        })
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, TargetError> {
        self.sender.ready().await.map_err(|e| TargetError::Http {
            target: describe(&self.target),
            detail: e.to_string(),
        })?;
        self.sender.send_request(request).await.map_err(|e| TargetError::Http {
            target: describe(&self.target),
            detail: e.to_string(),
        })
    }

    /// Seal one SOAP envelope, send it and unseal the answer. `wait` is how
    /// long the target may legitimately take (at least the request's
    /// OperationTimeout for a Receive).
    pub async fn exchange(&mut self, soap: &[u8], wait: Duration) -> Result<TargetResponse, TargetError> {
        match tokio::time::timeout(wait, self.exchange_inner(soap)).await {
            Ok(result) => result,
            Err(_) => Err(TargetError::Timeout {
                target: describe(&self.target),
                secs: wait.as_secs(),
            }),
        }
    }

    async fn exchange_inner(&mut self, soap: &[u8]) -> Result<TargetResponse, TargetError> {
        let part = self.auth.seal(soap).map_err(|source| TargetError::Auth {
            target: describe(&self.target),
            source,
        })?;
        let body = sealing::build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
        let content_type = sealing::content_type(SealProtocol::Spnego, 1);
        let request = self.request(Bytes::from(body), Some(&content_type), None)?;
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(TargetError::AuthRejected {
                target: describe(&self.target),
                user: "the caller".into(),
            });
        }
        let response_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| TargetError::Http {
                target: describe(&self.target),
                detail: e.to_string(),
            })?
            .to_bytes();
        if body.is_empty() {
            return Ok(TargetResponse {
                status,
                body: Vec::new(),
            });
        }
        if sealing::protocol_of(&response_type) != Some(SealProtocol::Spnego) {
            return Err(TargetError::BadResponse {
                target: describe(&self.target),
                detail: format!("HTTP {status} with unencrypted body ({response_type})"),
            });
        }
        let parts = sealing::parse_body(SealProtocol::Spnego, &body).map_err(|e| TargetError::BadResponse {
            target: describe(&self.target),
            detail: e.to_string(),
        })?;
        let mut plain = Vec::new();
        for part in &parts {
            let chunk = self.auth.unseal(part).map_err(|e| TargetError::BadResponse {
                target: describe(&self.target),
                detail: e.to_string(),
            })?;
            plain.extend_from_slice(&chunk);
        }
        Ok(TargetResponse { status, body: plain })
    }
}

/// The path part of `http://host:port/path` (what goes on the request line).
fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/wsman", |i| &after_scheme[i..])
}

/// `name (host:port)` so faults tell the admin which machine failed.
pub fn describe(target: &ResolvedTarget) -> String {
    if target.name.eq_ignore_ascii_case(&target.host) {
        format!("{}:{}", target.host, target.port)
    } else {
        format!("{} ({}:{})", target.name, target.host, target.port)
    }
}

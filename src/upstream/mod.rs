//! Connections from the relay to target hosts.
//!
//! One [`TargetConnection`] per (inbound session, target): a kept-alive
//! HTTP/1.1 connection, over TLS for `https` targets, authenticated once with
//! the caller's delegated credentials, then carrying WS-Man messages sealed
//! as the transport requires. It is never shared across sessions, so never
//! across users.
//!
//! A target's name is looked up once ([`lookup_addresses`]); the policy checks those
//! addresses and the connection goes to exactly them, never to a second lookup's answer.
//! TLS uses the target's client configuration built at load (session cache included),
//! with the host name for SNI and certificate names, as for `Host` and the SPN.
//!
//! | `auth` | wire | authentication | bodies |
//! |---|---|---|---|
//! | negotiate, ntlm | HTTP | SPNEGO/NTLM, once | SPNEGO session encryption |
//! | https-negotiate, https-ntlm | HTTPS | SPNEGO/NTLM with channel binding, once | plain (TLS protects them) |
//! | basic | HTTPS | `Basic` on every request | plain |
//! | credssp | HTTP or HTTPS | CredSSP, delegating the caller's credentials onward | CredSSP session encryption on HTTP, plain on HTTPS |
//! | kerberos | HTTP | SPNEGO/Kerberos, once | Kerberos wrap tokens |
//! | https-kerberos | HTTPS | SPNEGO/Kerberos with channel binding, once | plain |
//!
//! `negotiate` and `https-negotiate` use Kerberos (as `kerberos` and `https-kerberos`)
//! when `[kerberos]` is configured, the target has an SPN and the caller's account is in
//! the realm; NTLM otherwise, and also when no ticket can be had (no KDC answers, the
//! SPN is unknown), as Windows does. The tickets come from the session's (one AS
//! exchange per session, one TGS exchange per target), see
//! [`crate::proto::kerberos::tickets`]; KDC traffic goes through the realm's
//! [`KdcTransport`].

mod pool;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

pub use pool::Pool;

use crate::kerberos::kdc::{KdcError, KdcTransport};
use crate::proto::credssp::{CredSspError, Initiator, SecureChannel};
use crate::proto::http_auth::{
    basic_authorization, find_challenge, format_scheme_token, tls_server_end_point, HttpAuthError, NegotiateClient,
};
use crate::proto::kerberos::client::{KdcExchange, KerberosClient, KerberosError, Realm, StepError};
use crate::proto::kerberos::refusal::KdcRefusal;
use crate::proto::sealing::{self, SealProtocol};
use crate::resolve::{KerberosTarget, ResolvedTarget, TargetAuth};
use crate::vault::DelegatedCredentials;

const NEGOTIATE: &str = "Negotiate";
const CREDSSP: &str = "CredSSP";
const SOAP_CONTENT_TYPE: &str = "application/soap+xml;charset=UTF-8";

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot look up {target}: {detail}")]
    Lookup { target: String, detail: String },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("connecting to {target} timed out after {secs} s")]
    ConnectTimeout { target: String, secs: u64 },
    #[error("TLS to {target} failed: {detail}")]
    Tls { target: String, detail: String },
    #[error("timed out: {target} did not answer within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("{target} rejected the delegated credentials of {user} (HTTP 401)")]
    AuthRejected { target: String, user: String },
    #[error("authenticating to {target}: {detail}")]
    Auth { target: String, detail: String },
    #[error("no Kerberos ticket for {target} ({spn}): {source}")]
    KdcUnreachable {
        target: String,
        spn: String,
        source: KdcError,
    },
    #[error("Kerberos to {target}: {source}")]
    Kerberos { target: String, source: KerberosError },
    #[error(
        "{target} refused the Kerberos ticket of {user} for {spn} (HTTP 401): the target's key for {spn} is not \
         the domain's (its keytab is out of date, or the SPN belongs to another account)"
    )]
    TicketRefused { target: String, user: String, spn: String },
    #[error("talking to {target}: {detail}")]
    Http { target: String, detail: String },
    #[error("talking to {target}: unexpected HTTP {status} during authentication{detail}")]
    AuthStatus {
        target: String,
        status: StatusCode,
        /// `": "` and the answer's text, or empty.
        detail: String,
    },
    #[error("{target} sent a response the relay cannot decrypt: {detail}")]
    BadResponse { target: String, detail: String },
    #[error(
        "{target} sent a response body over {limit} bytes, more than the request's MaxEnvelopeSize \
         (bounded by listen.max_envelope_size) allows"
    )]
    ResponseTooLarge { target: String, limit: usize },
}

impl TargetError {
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            TargetError::AuthRejected { .. }
                | TargetError::Auth { .. }
                | TargetError::Kerberos { .. }
                | TargetError::TicketRefused { .. }
        )
    }

    /// A short name for the kind of failure (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            TargetError::Lookup { .. } => "lookup",
            TargetError::Connect { .. } => "connect",
            TargetError::ConnectTimeout { .. } => "connect_timeout",
            TargetError::Tls { .. } => "tls",
            TargetError::Timeout { .. } => "timeout",
            TargetError::AuthRejected { .. } => "auth_rejected",
            TargetError::Auth { .. } => "auth",
            TargetError::AuthStatus { .. } => "auth_status",
            TargetError::KdcUnreachable { .. } => "kdc_unreachable",
            TargetError::Kerberos { .. } => "kerberos",
            TargetError::TicketRefused { .. } => "ticket_refused",
            TargetError::Http { .. } => "http",
            TargetError::BadResponse { .. } => "bad_response",
            TargetError::ResponseTooLarge { .. } => "response_too_large",
        }
    }
}

/// One authentication leg's answer.
struct AuthAnswer {
    status: StatusCode,
    token: Option<Vec<u8>>,
    /// The body as text when the answer is a refusal other than 401 (else empty).
    text: String,
}

/// The first line of a refusal's body, if it is short printable text.
fn refusal_text(body: &[u8]) -> String {
    const MAX_TEXT: usize = 300;
    let text = String::from_utf8_lossy(body.get(..MAX_TEXT).unwrap_or(body));
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().any(char::is_control) {
        return String::new();
    }
    line.to_string()
}

/// A decrypted response from the target.
#[derive(Debug)]
pub struct TargetResponse {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

/// How bodies travel once authenticated.
enum Wire {
    /// SPNEGO session encryption with NTLM (HTTP).
    Spnego(Box<NegotiateClient>),
    /// SPNEGO session encryption with Kerberos wrap tokens (HTTP).
    Kerberos(Box<KerberosClient>),
    /// CredSSP session encryption (HTTP).
    CredSsp(Box<SecureChannel>),
    /// Plain SOAP inside the target's TLS.
    Plain,
    /// Plain SOAP inside TLS, with the credentials on every request.
    Basic(Zeroizing<String>),
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub struct TargetConnection {
    target: ResolvedTarget,
    /// [`describe`] of the target, made once: every error names it.
    description: Arc<str>,
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

/// The stream to a target, the address it goes to, and (over TLS) the target's
/// certificate for channel binding.
struct Connected {
    io: Box<dyn Io>,
    peer: IpAddr,
    certificate: Option<Vec<u8>>,
}

/// The addresses of `target`, looked up once within its connect timeout (an IP literal
/// needs no lookup). The relay checks these and connects to nothing else.
pub async fn lookup_addresses(target: &ResolvedTarget) -> Result<Vec<IpAddr>, TargetError> {
    if let Some(ip) = target.ip {
        return Ok(vec![ip.to_canonical()]);
    }
    let failed = |detail: String| TargetError::Lookup {
        target: describe(target),
        detail,
    };
    let found = tokio::time::timeout(
        target.connect_timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| failed(format!("no answer within {} s", target.connect_timeout.as_secs())))?
    .map_err(|e| failed(e.to_string()))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for ip in found.map(|a| a.ip().to_canonical()) {
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    if addresses.is_empty() {
        return Err(failed("the name has no addresses".into()));
    }
    Ok(addresses)
}

impl TargetConnection {
    /// Connect to the first of `addresses` that answers (in order; addresses the caller
    /// looked up and checked) and authenticate as `credentials`.
    pub async fn open(
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        credentials: &DelegatedCredentials,
    ) -> Result<Self, TargetError> {
        let connected = connect(target, addresses).await?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(connected.io))
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
        let mut conn = TargetConnection {
            target: target.clone(),
            description: describe(target).into(),
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

    /// The address this connection goes to: what the policy checks for requests on it.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    async fn authenticate(
        &mut self,
        credentials: &DelegatedCredentials,
        certificate: Option<&[u8]>,
    ) -> Result<Wire, TargetError> {
        if let Some(kerberos) = self.target.kerberos.clone() {
            match self.kerberos(&kerberos, credentials, certificate).await {
                Ok(wire) => return Ok(wire),
                // As Windows' Negotiate: without a ticket, NTLM. Nothing went to the
                // target yet, so the connection is still fresh.
                Err(failure) if failure.no_ticket && !self.target.auth.kerberos_only() => {
                    tracing::warn!(target = %self.target.name, error = %failure.error, "no Kerberos ticket for the target: using NTLM");
                }
                Err(failure) => return Err(failure.error),
            }
        }
        let auth_error = |detail: String| TargetError::Auth {
            target: self.description.to_string(),
            detail,
        };
        match self.target.auth {
            TargetAuth::Negotiate | TargetAuth::Ntlm => {
                let mut client =
                    NegotiateClient::new(credentials, &self.target.host).map_err(|e| auth_error(e.to_string()))?;
                self.negotiate(&mut client, credentials).await?;
                Ok(Wire::Spnego(Box::new(client)))
            }
            TargetAuth::HttpsNegotiate | TargetAuth::HttpsNtlm => {
                let certificate = certificate.ok_or_else(|| auth_error("no TLS certificate to bind to".into()))?;
                let mut client = NegotiateClient::new(credentials, &self.target.host)
                    .map_err(|e| auth_error(e.to_string()))?
                    .with_channel_bindings(&tls_server_end_point(certificate));
                self.negotiate(&mut client, credentials).await?;
                Ok(Wire::Plain)
            }
            TargetAuth::Basic => Ok(Wire::Basic(basic_authorization(
                &credentials.principal(),
                credentials.expose_password(),
            ))),
            TargetAuth::CredSsp => {
                let initiator =
                    Initiator::new(credentials, &self.target.host).map_err(|e| auth_error(e.to_string()))?;
                let channel = self.credssp(initiator, credentials).await?;
                Ok(if self.target.https {
                    Wire::Plain
                } else {
                    Wire::CredSsp(Box::new(channel))
                })
            }
            // Resolution gives these a realm and an SPN, or refuses the target.
            TargetAuth::Kerberos | TargetAuth::HttpsKerberos => {
                Err(auth_error("no Kerberos realm or SPN for this target".into()))
            }
        }
    }

    /// Kerberos towards the target: a ticket (from the session's, or the KDC), then the
    /// legs as for NTLM. Over TLS the ticket is bound to the channel.
    async fn kerberos(
        &mut self,
        kerberos: &KerberosTarget,
        credentials: &DelegatedCredentials,
        certificate: Option<&[u8]>,
    ) -> Result<Wire, KerberosFailure> {
        let target = self.description.to_string();
        let realm = Realm {
            name: &kerberos.realm.name,
            netbios: &kerberos.realm.netbios,
        };
        let failed = |error: KerberosError, no_ticket: bool| KerberosFailure {
            no_ticket,
            error: TargetError::Kerberos {
                target: target.clone(),
                source: error,
            },
        };
        let mut client = match KerberosClient::new(credentials, realm, &kerberos.spn) {
            Ok(client) => client,
            Err(error @ KerberosError::NotInRealm { .. }) => return Err(failed(error, true)),
            Err(error) => return Err(failed(error, false)),
        };
        if self.target.https {
            let Some(certificate) = certificate else {
                return Err(failed(
                    KerberosError::Sspi("no TLS certificate to bind to".into()),
                    false,
                ));
            };
            client = client.with_channel_bindings(&tls_server_end_point(certificate));
        }
        let mut kdc = Kdc(&kerberos.realm.kdc);
        let step_failed = |error: StepError<KdcError>, first: bool| match error {
            StepError::Kdc(source) => KerberosFailure {
                no_ticket: first,
                error: TargetError::KdcUnreachable {
                    target: target.clone(),
                    spn: kerberos.spn.clone(),
                    source,
                },
            },
            StepError::Kerberos(error) => {
                let no_ticket = first && matches!(error, KerberosError::Refused(KdcRefusal::UnknownSpn { .. }));
                failed(error, no_ticket)
            }
        };
        let mut token = match client.step(None, credentials, &mut kdc).await {
            Ok(Some(token)) => token,
            Ok(None) => return Err(failed(KerberosError::Incomplete, false)),
            Err(error) => return Err(step_failed(error, true)),
        };
        let refused = || TargetError::TicketRefused {
            target: target.clone(),
            user: credentials.principal(),
            spn: kerberos.spn.clone(),
        };
        let no_fallback = |error: TargetError| KerberosFailure {
            no_ticket: false,
            error,
        };
        loop {
            let AuthAnswer {
                status,
                token: challenge,
                text,
            } = self.auth_leg(NEGOTIATE, &token).await.map_err(no_fallback)?;
            match (status, challenge) {
                (StatusCode::UNAUTHORIZED, Some(next)) => match client.step(Some(&next), credentials, &mut kdc).await {
                    Ok(Some(next_token)) => token = next_token,
                    Ok(None) => return Err(no_fallback(refused())),
                    Err(error) => return Err(step_failed(error, false)),
                },
                (StatusCode::UNAUTHORIZED, None) => return Err(no_fallback(refused())),
                (status, final_token) if status.is_success() => {
                    // The AP-REP on the final answer proves the target (mutual
                    // authentication) and sets the keys for the wrap tokens.
                    if let Some(final_token) = final_token {
                        client
                            .step(Some(&final_token), credentials, &mut kdc)
                            .await
                            .map_err(|e| step_failed(e, false))?;
                    }
                    if !client.is_established() {
                        return Err(failed(KerberosError::Incomplete, false));
                    }
                    return Ok(if self.target.https {
                        Wire::Plain
                    } else {
                        Wire::Kerberos(Box::new(client))
                    });
                }
                (status, _) => return Err(no_fallback(self.unexpected(status, text))),
            }
        }
    }

    /// Empty-body POSTs carry the Negotiate legs, as WinRM clients do.
    async fn negotiate(
        &mut self,
        client: &mut NegotiateClient,
        credentials: &DelegatedCredentials,
    ) -> Result<(), TargetError> {
        let target = self.description.to_string();
        let auth_error = |e: HttpAuthError| TargetError::Auth {
            target: target.clone(),
            detail: e.to_string(),
        };
        let mut server_token: Option<Vec<u8>> = None;
        loop {
            let Some(token) = client.step(server_token.as_deref()).map_err(auth_error)? else {
                return Ok(());
            };
            let AuthAnswer {
                status,
                token: challenge,
                text,
            } = self.auth_leg(NEGOTIATE, &token).await?;
            match (status, challenge) {
                (StatusCode::UNAUTHORIZED, Some(next)) => server_token = Some(next),
                (StatusCode::UNAUTHORIZED, None) => return Err(self.rejected(credentials)),
                (status, final_token) if status.is_success() => {
                    // The final token (mechListMIC) must be consumed before any
                    // decryption, or sequence numbers go out of step.
                    if let Some(final_token) = final_token {
                        client.step(Some(&final_token)).map_err(auth_error)?;
                    }
                    if !client.is_established() {
                        return Err(auth_error(HttpAuthError::Incomplete));
                    }
                    return Ok(());
                }
                (status, _) => return Err(self.unexpected(status, text)),
            }
        }
    }

    /// CredSSP legs, then the target's 200 accepts the delegated credentials.
    async fn credssp(
        &mut self,
        mut initiator: Initiator,
        credentials: &DelegatedCredentials,
    ) -> Result<SecureChannel, TargetError> {
        let target = self.description.to_string();
        let auth_error = |e: CredSspError| TargetError::Auth {
            target: target.clone(),
            detail: e.to_string(),
        };
        let mut token = initiator.step(None).map_err(auth_error)?.unwrap_or_default();
        loop {
            let AuthAnswer {
                status,
                token: challenge,
                text,
            } = self.auth_leg(CREDSSP, &token).await?;
            match (status, challenge) {
                (status, _) if status.is_success() && initiator.credentials_sent() => {
                    return initiator.into_channel().map_err(auth_error);
                }
                (StatusCode::UNAUTHORIZED, Some(next)) if !initiator.credentials_sent() => {
                    match initiator.step(Some(&next)) {
                        Ok(Some(next_token)) => token = next_token,
                        Ok(None) | Err(CredSspError::LogonRefused(_)) => return Err(self.rejected(credentials)),
                        Err(error) => return Err(auth_error(error)),
                    }
                }
                (StatusCode::UNAUTHORIZED, _) => return Err(self.rejected(credentials)),
                (status, _) => return Err(self.unexpected(status, text)),
            }
        }
    }

    /// One authentication POST: the status, the server's token for `scheme`, and the
    /// text of an answer that is neither a success nor a challenge.
    async fn auth_leg(&mut self, scheme: &str, token: &[u8]) -> Result<AuthAnswer, TargetError> {
        let authorization = format_scheme_token(scheme, token);
        let request = self.request(Bytes::new(), None, Some(&authorization))?;
        let response = self.send(request).await?;
        let status = response.status();
        let challenge = {
            let values = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            find_challenge(values, scheme).flatten()
        };
        // Drain the body so the connection stays usable; keep the start of a refusal's
        // text (a relay's 503 says which limit was hit).
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = if status.is_success() || status == StatusCode::UNAUTHORIZED {
            String::new()
        } else {
            refusal_text(&body)
        };
        Ok(AuthAnswer {
            status,
            token: challenge,
            text,
        })
    }

    fn rejected(&self, credentials: &DelegatedCredentials) -> TargetError {
        TargetError::AuthRejected {
            target: self.description.to_string(),
            user: credentials.principal(),
        }
    }

    fn unexpected(&self, status: StatusCode, text: String) -> TargetError {
        TargetError::AuthStatus {
            target: self.description.to_string(),
            status,
            detail: if text.is_empty() { text } else { format!(": {text}") },
        }
    }

    fn request(
        &self,
        body: Bytes,
        content_type: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, TargetError> {
        let http_error = |detail: String| TargetError::Http {
            target: self.description.to_string(),
            detail,
        };
        let mut builder = Request::post(url_path(&self.target.url))
            .header(HOST, host_header(&self.target))
            .header(CONTENT_LENGTH, body.len())
            .header("User-Agent", "winrm-relay");
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(authorization) = authorization {
            let mut value = HeaderValue::from_str(authorization).map_err(|e| http_error(e.to_string()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(Full::new(body)).map_err(|e| http_error(e.to_string()))
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, TargetError> {
        let target = &self.description;
        let failed = |e: hyper::Error| TargetError::Http {
            target: target.to_string(),
            detail: e.to_string(),
        };
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
    ) -> Result<TargetResponse, TargetError> {
        let due = tokio::time::Instant::now() + wait;
        let mut deadline = self
            .deadline
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(due)));
        deadline.as_mut().reset(due);
        let outcome = tokio::select! {
            biased;
            outcome = self.exchange_inner(soap, max_envelope) => outcome,
            () = deadline.as_mut() => Err(TargetError::Timeout {
                target: self.description.to_string(),
                secs: wait.as_secs(),
            }),
        };
        self.deadline = Some(deadline);
        outcome
    }

    async fn exchange_inner(&mut self, soap: &[u8], max_envelope: usize) -> Result<TargetResponse, TargetError> {
        let target = self.description.clone();
        let bad = |detail: String| TargetError::BadResponse {
            target: target.to_string(),
            detail,
        };
        let (body, content_type, authorization) = match &mut self.wire {
            Wire::Spnego(client) => {
                let part = client.seal(soap).map_err(|e| bad(e.to_string()))?;
                let body = sealing::build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
                (body, sealing::content_type(SealProtocol::Spnego, 1), None)
            }
            Wire::Kerberos(client) => {
                let part = client.seal(soap).map_err(|e| bad(e.to_string()))?;
                let body = sealing::build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
                (body, sealing::content_type(SealProtocol::Spnego, 1), None)
            }
            Wire::CredSsp(channel) => {
                let parts = channel.seal(soap).map_err(|e| bad(e.to_string()))?;
                let body = sealing::build_body(SealProtocol::CredSsp, &parts);
                (body, sealing::content_type(SealProtocol::CredSsp, parts.len()), None)
            }
            Wire::Plain => (soap.to_vec(), SOAP_CONTENT_TYPE.to_string(), None),
            Wire::Basic(header) => (soap.to_vec(), SOAP_CONTENT_TYPE.to_string(), Some(header.clone())),
        };
        let request = self.request(
            Bytes::from(body),
            Some(&content_type),
            authorization.as_ref().map(|h| h.as_str()),
        )?;
        drop(authorization);
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(TargetError::AuthRejected {
                target: target.to_string(),
                user: "the caller".into(),
            });
        }
        let response_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default();
        let limit = match self.wire {
            Wire::Spnego(_) | Wire::Kerberos(_) | Wire::CredSsp(_) => sealing::sealed_size_limit(max_envelope),
            Wire::Plain | Wire::Basic(_) => max_envelope,
        };
        let body = collect_limited(response.into_body(), limit, &target).await?;
        if body.is_empty() {
            return Ok(TargetResponse {
                status,
                body: Vec::new(),
            });
        }
        let plain = match (sealing::protocol_of(&response_type), &mut self.wire) {
            (Some(SealProtocol::Spnego), Wire::Spnego(client)) => {
                let parts = sealing::parse_body(SealProtocol::Spnego, &body).map_err(|e| bad(e.to_string()))?;
                let mut plain = Vec::new();
                for part in parts {
                    let chunk = client.unseal(part).map_err(|e| bad(e.to_string()))?;
                    // One part (the usual answer) keeps its buffer.
                    if plain.is_empty() {
                        plain = chunk;
                    } else {
                        plain.extend_from_slice(&chunk);
                    }
                }
                plain
            }
            (Some(SealProtocol::Spnego), Wire::Kerberos(client)) => {
                let part = sealing::parse_wrap_token_body(&body).map_err(|e| bad(e.to_string()))?;
                client.unseal(&part).map_err(|e| bad(e.to_string()))?
            }
            (Some(SealProtocol::CredSsp), Wire::CredSsp(channel)) => {
                let parts = sealing::parse_body(SealProtocol::CredSsp, &body).map_err(|e| bad(e.to_string()))?;
                channel.unseal(&parts).map_err(|e| bad(e.to_string()))?
            }
            (None, Wire::Plain | Wire::Basic(_)) => body.to_vec(),
            (protocol, _) => {
                return Err(bad(format!(
                    "HTTP {status} with a body of type {response_type} ({protocol:?})"
                )));
            }
        };
        Ok(TargetResponse { status, body: plain })
    }
}

/// A failed Kerberos attempt; `no_ticket` when it failed for want of a ticket, before
/// anything went to the target.
struct KerberosFailure {
    no_ticket: bool,
    error: TargetError,
}

/// The realm's KDCs as sspi's requests need them: the requests come with the length
/// prefix of Kerberos over TCP, and the replies go back with one.
struct Kdc<'a>(&'a KdcTransport);

impl KdcExchange for Kdc<'_> {
    type Error = KdcError;

    fn exchange(&mut self, request: &[u8]) -> impl std::future::Future<Output = Result<Vec<u8>, KdcError>> + Send {
        let transport = self.0;
        let data = request.to_vec();
        async move {
            // The transport goes by the protocol and the data; the URL only has to be one.
            let url = transport.sspi_url().ok_or(KdcError::NoKdc)?;
            let request = sspi::NetworkRequest {
                protocol: sspi::NetworkProtocol::Tcp,
                url,
                data,
            };
            let reply = transport.send(&request).await?;
            Ok(reply.into_framed())
        }
    }
}

/// A response body, refused as soon as it grows past `limit` bytes.
async fn collect_limited<B>(body: B, limit: usize, target: &str) -> Result<Bytes, TargetError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = Limited::new(body, limit).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            TargetError::ResponseTooLarge {
                target: target.to_string(),
                limit,
            }
        } else {
            TargetError::Http {
                target: target.to_string(),
                detail: e.to_string(),
            }
        }
    })?;
    Ok(collected.to_bytes())
}

async fn connect(target: &ResolvedTarget, addresses: &[IpAddr]) -> Result<Connected, TargetError> {
    let attempts = async {
        let mut last_error = None;
        for &ip in addresses {
            match TcpStream::connect(SocketAddr::new(ip, target.port)).await {
                Ok(stream) => return Ok((stream, ip)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to connect to")))
    };
    let (stream, peer) = match tokio::time::timeout(target.connect_timeout, attempts).await {
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
        Ok(Ok(connected)) => connected,
    };
    // Small request/response exchanges: don't let Nagle add latency.
    let _ = stream.set_nodelay(true);
    if !target.https {
        return Ok(Connected {
            io: Box::new(stream),
            peer,
            certificate: None,
        });
    }
    let tls_error = |detail: String| TargetError::Tls {
        target: describe(target),
        detail,
    };
    let tls = target
        .tls
        .as_ref()
        .ok_or_else(|| tls_error("no TLS configuration for this https target".into()))?;
    let name = ServerName::try_from(target.host.clone()).map_err(|e| tls_error(format!("{}: {e}", target.host)))?;
    let handshake = tokio_rustls::TlsConnector::from(tls.client_config()).connect(name, stream);
    let stream = match tokio::time::timeout(target.connect_timeout, handshake).await {
        Err(_) => {
            return Err(tls_error(format!(
                "handshake timed out after {} s",
                target.connect_timeout.as_secs()
            )))
        }
        Ok(Err(error)) => return Err(tls_error(handshake_failure(&error))),
        Ok(Ok(stream)) => stream,
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    Ok(Connected {
        io: Box::new(stream),
        peer,
        certificate,
    })
}

/// Why a handshake failed; the relay's own certificate refusals (a pin mismatch) read
/// as written, without rustls' "other error" wrapping.
fn handshake_failure(error: &std::io::Error) -> String {
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::Other(other)) => other.to_string(),
        _ => error.to_string(),
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

/// `name (host:port)` so faults tell the admin which machine failed.
pub fn describe(target: &ResolvedTarget) -> String {
    if target.name.eq_ignore_ascii_case(&target.host) {
        format!("{}:{}", target.host, target.port)
    } else {
        format!("{} ({}:{})", target.name, target.host, target.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{Fingerprint, TargetTls, TlsTrust};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_response_body_over_the_limit_is_refused() {
        let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n]));
        let ok = collect_limited(body(1000), 1000, "web01 (10.0.0.5:5985)").await;
        assert_eq!(ok.map(|b| b.len()).ok(), Some(1000));
        let error = collect_limited(body(1001), 1000, "web01 (10.0.0.5:5985)")
            .await
            .expect_err("body over the limit accepted");
        assert!(matches!(error, TargetError::ResponseTooLarge { limit: 1000, .. }));
        assert_eq!(
            error.to_string(),
            "web01 (10.0.0.5:5985) sent a response body over 1000 bytes, more than the request's \
             MaxEnvelopeSize (bounded by listen.max_envelope_size) allows"
        );
    }

    #[test]
    fn a_refusal_keeps_the_first_line_of_its_text() {
        assert_eq!(
            refusal_text(b"LAB\\alice already has 25 sessions (limits.max_sessions_per_user)\r\nmore"),
            "LAB\\alice already has 25 sessions (limits.max_sessions_per_user)"
        );
        assert_eq!(refusal_text(b"\x00\x01binary"), "");
        assert_eq!(refusal_text(&[b'x'; 1000]).len(), 300);
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://127.0.0.21:5985/wsman"), "/wsman");
        assert_eq!(url_path("https://[::1]:5986/wsman/x"), "/wsman/x");
        assert_eq!(url_path("http://host"), "/wsman");
    }

    /// An unlisted target, named by its host.
    fn unlisted(host: &str, port: u16, tls: Option<TargetTls>) -> ResolvedTarget {
        let https = tls.is_some();
        ResolvedTarget {
            name: host.into(),
            alias: None,
            host: host.into(),
            port,
            ip: host.parse().ok(),
            url: format!("{}://{host}:{port}/wsman", if https { "https" } else { "http" }),
            https,
            auth: TargetAuth::Negotiate,
            tls,
            kerberos: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn lookups_give_the_addresses_and_literals_need_none() {
        let literal = unlisted("192.0.2.7", 5985, None);
        assert_eq!(
            lookup_addresses(&literal).await.unwrap(),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        let localhost = lookup_addresses(&unlisted("localhost", 5985, None)).await.unwrap();
        assert!(
            !localhost.is_empty() && localhost.iter().all(IpAddr::is_loopback),
            "{localhost:?}"
        );
        let error = lookup_addresses(&unlisted("no-such-host.invalid", 5985, None))
            .await
            .unwrap_err();
        assert!(matches!(error, TargetError::Lookup { .. }), "{error}");
    }

    #[tokio::test]
    async fn connections_go_to_the_checked_addresses_without_a_second_lookup() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The name cannot be looked up at all: only the given addresses can be used, in
        // order, past one that refuses.
        let target = unlisted("no-such-host.invalid", port, None);
        let refusing: IpAddr = "127.0.0.2".parse().unwrap();
        let listening: IpAddr = "127.0.0.1".parse().unwrap();
        let connected = connect(&target, &[refusing, listening]).await.unwrap();
        assert_eq!(connected.peer, listening);
        let error = connect(&target, &[]).await.err().expect("connected to nothing");
        assert!(error.to_string().contains("no address to connect to"), "{error}");
    }

    #[tokio::test]
    async fn a_pin_mismatch_is_reported_plainly() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["box".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = acceptor.accept(stream).await;
            }
        });
        let pin = Fingerprint::parse(&format!("sha256:{}", "00".repeat(32))).unwrap();
        let tls = TargetTls::new(TlsTrust::Pinned(pin)).unwrap();
        let target = unlisted("127.0.0.1", port, Some(tls));
        let error = connect(&target, &["127.0.0.1".parse().unwrap()])
            .await
            .err()
            .expect("pin ignored");
        assert_eq!(
            error.to_string(),
            format!(
                "TLS to 127.0.0.1:{port} failed: the certificate presented has fingerprint {}, not the pinned \
                 tls_fingerprint {pin}",
                Fingerprint::of(cert.der())
            )
        );
    }
}

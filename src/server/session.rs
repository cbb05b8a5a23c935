//! One inbound TCP connection = one session: CredSSP authentication state,
//! the caller's delegated credentials, and its target connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, OwnedSemaphorePermit};

use super::limits::Slot;
use super::reply::{self, HttpResponse, CREDSSP};
use super::{pipeline, ListenerKind, Shared};
use crate::audit::{AuditEvent, AuditKind};
use crate::config::ResolvedTarget;
use crate::proto::credssp::{verify_password, Principal};
use crate::proto::credssp::{Acceptor, SecureChannel, Step};
use crate::proto::http_auth::{parse_basic, parse_scheme_token};
use crate::target::TargetConnection;
use crate::vault::DelegatedCredentials;
use crate::vault::Vault;
use secrecy::ExposeSecret;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Both refusals drop the socket before any TLS or CredSSP work.
                    if !source_allowed(&shared.config.listen.allow_sources, peer) {
                        refuse_connection(&shared, stream, peer, "source address not in listen.allow_sources");
                        continue;
                    }
                    let Ok(pending) = shared.unauthenticated.clone().try_acquire_owned() else {
                        let reason = "too many connections waiting to authenticate (limits.max_sessions)";
                        refuse_connection(&shared, stream, peer, reason);
                        continue;
                    };
                    let shutdown = shutdown.clone();
                    connections.spawn(serve_connection(stream, peer, kind.clone(), pending, shared.clone(), shutdown));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Sessions see the shutdown too and end (wiping credentials); wait for them.
    while connections.join_next().await.is_some() {}
}

/// Close a just-accepted connection unanswered, and audit why.
fn refuse_connection(shared: &Shared, stream: TcpStream, peer: SocketAddr, reason: &str) {
    drop(stream);
    shared.audit.emit(&AuditEvent {
        event: AuditKind::Denied,
        source: Some(peer.to_string()),
        reason: Some(reason.to_string()),
        ..AuditEvent::default()
    });
}

fn source_allowed(allowed: &[ipnet::IpNet], peer: SocketAddr) -> bool {
    // An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    allowed.is_empty() || allowed.iter().any(|net| net.contains(&ip))
}

/// When the session last did something, for the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicBool,
    authenticated: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    pending: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    if !kind.https {
        return serve_http(stream, peer, kind, pending, shared, shutdown).await;
    }
    // The TLS handshake gets the same deadline as a request's headers.
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.credssp().tls.clone());
    match tokio::time::timeout(shared.config.listen.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_http(tls, peer, kind, pending, shared, shutdown).await,
        Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    kind: ListenerKind,
    pending: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let session = Arc::new(Mutex::new(Session::new(peer, kind, pending)));
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        busy: AtomicBool::new(false),
        authenticated: AtomicBool::new(false),
    });
    let service = {
        let session = session.clone();
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |request: Request<Incoming>| {
            let session = session.clone();
            let shared = shared.clone();
            let activity = activity.clone();
            async move {
                activity.busy.store(true, Ordering::Relaxed);
                activity.touch();
                let response = {
                    let mut session = session.lock().await;
                    let response = session.handle(request, &shared).await;
                    activity
                        .authenticated
                        .store(session.principal().is_some(), Ordering::Relaxed);
                    response
                };
                activity.touch();
                activity.busy.store(false, Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let listen = &shared.config.listen;
    // hyper's own header_read_timeout also runs while a keep-alive
    // connection waits for its next request, which would end idle but
    // healthy sessions; the deadline for unauthenticated connections is
    // enforced below instead.
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(listen.max_header_size)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let idle_timeout = shared.config.session.idle_timeout;
    let max_lifetime = shared.config.session.max_lifetime;
    let header_deadline = listen.header_read_timeout;
    let end_reason = loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection error");
                }
                break "connection closed";
            }
            _ = tokio::time::sleep(Duration::from_secs(1).min(idle_timeout)) => {
                // Until it authenticates, a connection gets only the header
                // deadline between requests: a slowloris holding hundreds of
                // sockets (trickling headers or silent after a 401) is cut
                // loose quickly, while an idle authenticated session is kept.
                let allowed_idle = if activity.authenticated.load(Ordering::Relaxed) {
                    idle_timeout
                } else {
                    header_deadline
                };
                if !activity.busy.load(Ordering::Relaxed) && activity.idle_for() >= allowed_idle {
                    break "idle timeout";
                }
                if activity.start.elapsed() >= max_lifetime {
                    break "maximum session lifetime";
                }
            }
            _ = shutdown.changed() => break "relay shutting down",
        }
    };
    session.lock().await.end(&shared, end_reason).await;
}

enum AuthState {
    None,
    InProgress {
        acceptor: Box<Acceptor>,
        started: Instant,
    },
    Authenticated {
        principal: String,
        /// CredSSP's TLS channel, for session encryption; `None` for Basic.
        channel: Option<Box<SecureChannel>>,
    },
}

/// A shell the caller created and has not deleted yet.
pub(crate) struct OpenShell {
    pub target: ResolvedTarget,
    pub resource_uri: String,
    /// Counts against `limits.max_shells_per_user` until dropped.
    pub _slot: Slot,
}

pub(crate) struct Session {
    pub id: String,
    pub source: SocketAddr,
    pub fixed_target: Option<String>,
    /// Arrived over the HTTPS listener: TLS protects bodies, Basic is possible.
    pub https: bool,
    auth: AuthState,
    pub vault: Vault,
    pub targets: HashMap<String, TargetConnection>,
    /// Shells opened through this session, by ShellId: only this session
    /// may use them, and they are deleted when it ends.
    pub shells: HashMap<String, OpenShell>,
    /// This session's place in `limits.max_sessions[_per_user]`.
    slot: Option<Slot>,
    /// Its place among connections not yet authenticated; released at logon.
    pending: Option<OwnedSemaphorePermit>,
    started: Instant,
    pub requests: u64,
}

impl Session {
    fn new(source: SocketAddr, kind: ListenerKind, pending: OwnedSemaphorePermit) -> Session {
        Session {
            id: format!("{:016x}", rand::random::<u64>()),
            source,
            fixed_target: kind.fixed_target,
            https: kind.https,
            auth: AuthState::None,
            vault: Vault::default(),
            targets: HashMap::new(),
            shells: HashMap::new(),
            slot: None,
            pending: Some(pending),
            started: Instant::now(),
            requests: 0,
        }
    }

    pub fn principal(&self) -> Option<&str> {
        match &self.auth {
            AuthState::Authenticated { principal, .. } => Some(principal),
            _ => None,
        }
    }

    pub fn channel(&mut self) -> Option<&mut SecureChannel> {
        match &mut self.auth {
            AuthState::Authenticated { channel, .. } => channel.as_deref_mut(),
            _ => None,
        }
    }

    pub fn event(&self, kind: AuditKind) -> AuditEvent {
        AuditEvent {
            event: kind,
            session: self.id.clone(),
            user: self.principal().map(str::to_string),
            source: Some(self.source.to_string()),
            ..AuditEvent::default()
        }
    }

    async fn handle(&mut self, request: Request<Incoming>, shared: &Shared) -> HttpResponse {
        if request.method() != Method::POST {
            return reply::plain(StatusCode::METHOD_NOT_ALLOWED, "WS-Management accepts POST only");
        }
        let route = match pipeline::route(request.uri().path(), self.fixed_target.as_deref()) {
            Some(route) => route,
            None => {
                return reply::plain(
                    StatusCode::NOT_FOUND,
                    "not a WS-Management endpoint: use /wsman/<target>",
                )
            }
        };
        if pipeline::is_unauthenticated_identify(&request) {
            return pipeline::identify(request, shared).await;
        }
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let authorization = header(AUTHORIZATION);
        let content_type = header(CONTENT_TYPE).unwrap_or_default();
        // Read within the envelope limit before anything else: a body is
        // never buffered beyond it, authenticated or not.
        // Until a connection authenticates, its body gets the header deadline
        // too: a stalled upload must not hold a socket open.
        let deadline = if self.principal().is_some() {
            shared.config.session.idle_timeout
        } else {
            shared.config.listen.header_read_timeout
        };
        let body = match tokio::time::timeout(deadline, read_body(request, shared)).await {
            Err(_) => return reply::closing(StatusCode::REQUEST_TIMEOUT, "request body not received in time"),
            Ok(body) => body,
        };
        let body = match body {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                let mut event = self.event(AuditKind::Denied);
                event.status = Some(413);
                event.reason = Some(BodyError::TooLarge.to_string());
                shared.audit.emit(&event);
                return reply::plain(StatusCode::PAYLOAD_TOO_LARGE, &BodyError::TooLarge.to_string());
            }
            Err(error) => return reply::plain(StatusCode::BAD_REQUEST, &error.to_string()),
        };
        if let Some(authorization) = authorization {
            let is_basic = authorization.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic "));
            if is_basic && self.https && shared.config.listen.basic_over_https {
                // Basic carries the credentials on every request, with the body.
                return match self.authenticate_basic(&authorization, shared) {
                    None => pipeline::relay(self, &content_type, body, route, shared).await,
                    Some(refusal) => refusal,
                };
            }
            let response = self.authenticate(&authorization, shared);
            // Over HTTPS, requests-credssp sends the real request on every
            // leg: once the last leg authenticates, its body is the first request.
            if response.status() == StatusCode::OK && self.principal().is_some() && !body.is_empty() {
                return pipeline::relay(self, &content_type, body, route, shared).await;
            }
            return response;
        }
        if self.principal().is_none() {
            return reply::credssp_401(&[]);
        }
        pipeline::relay(self, &content_type, body, route, shared).await
    }

    /// One `Authorization` leg. CredSSP only: Basic and Negotiate would need
    /// the password elsewhere or could not delegate it.
    fn authenticate(&mut self, authorization: &str, shared: &Shared) -> HttpResponse {
        let parsed = match parse_scheme_token(authorization) {
            Ok(parsed) => parsed,
            Err(error) => return reply::refused_401(&format!("bad Authorization header: {error}")),
        };
        if !parsed.scheme.eq_ignore_ascii_case(CREDSSP) {
            let reason = if parsed.scheme.eq_ignore_ascii_case("Basic") && self.https {
                "Basic authentication is disabled on this relay (listen.basic_auth = false); use CredSSP".to_string()
            } else if parsed.scheme.eq_ignore_ascii_case("Basic") {
                "Basic authentication is refused on the HTTP listener: it would send the password in clear; use CredSSP, \
                 or Basic over the relay's HTTPS listener"
                    .to_string()
            } else {
                format!("{} cannot delegate credentials; the relay needs CredSSP", parsed.scheme)
            };
            self.audit_auth_failed(shared, None, &reason);
            return reply::refused_401(&reason);
        }
        let Some(token) = parsed.token else {
            return reply::credssp_401(&[]);
        };
        let now = Instant::now();
        let source_ip = self.source.ip();
        // A ClientHello starts a new exchange, even on an authenticated
        // connection: the old credentials and target connections go.
        if is_client_hello(&token) || !matches!(self.auth, AuthState::InProgress { .. }) {
            self.reset();
            match Acceptor::new(shared.credssp()) {
                Ok(acceptor) => {
                    self.auth = AuthState::InProgress {
                        acceptor: Box::new(acceptor),
                        started: now,
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a CredSSP exchange");
                    return reply::refused_401("the relay could not start CredSSP");
                }
            }
        }
        let AuthState::InProgress { acceptor, started } = &mut self.auth else {
            return reply::credssp_401(&[]);
        };
        if now.duration_since(*started) > shared.config.auth.handshake_timeout {
            self.auth = AuthState::None;
            let reason = "the CredSSP exchange took longer than auth.handshake_timeout_secs";
            self.audit_auth_failed(shared, None, reason);
            return reply::refused_401(reason);
        }
        let locked_out = |user: &str| shared.lockout.is_locked(source_ip, Some(user), now);
        match acceptor.step_checked(&token, &locked_out) {
            Step::Continue(out) => reply::credssp_401(&out),
            Step::Authenticated { credentials, channel } => {
                self.auth = AuthState::None;
                self.begin_session(shared, credentials, Some(channel))
                    .unwrap_or_else(reply::ok_empty)
            }
            Step::Rejected { token, error, user } => {
                self.auth = AuthState::None;
                let mut reason = error.to_string();
                // Only failures that name a user count: anonymous garbage
                // from a shared address (NAT, jump host) must not lock every
                // admin behind it out.
                let locks = user
                    .as_deref()
                    .is_some_and(|user| shared.lockout.record_failure(source_ip, Some(user), now));
                if locks {
                    reason.push_str("; logons from this source for this user are now locked out");
                }
                tracing::info!(session = %self.id, user = user.as_deref(), source = %self.source, %reason, "authentication failed");
                self.audit_auth_failed(shared, user, &reason);
                reply::credssp_401(token.as_deref().unwrap_or_default())
            }
        }
    }

    /// `Authorization: Basic` over HTTPS: checked against the users file on
    /// every request; the session's credentials are the ones last proven.
    fn authenticate_basic(&mut self, authorization: &str, shared: &Shared) -> Option<HttpResponse> {
        let now = Instant::now();
        let source_ip = self.source.ip();
        let refuse = |session: &mut Session, user: Option<String>, reason: &str| {
            session.audit_auth_failed(shared, user, reason);
            reply::basic_401()
        };
        let Some((user, password)) = parse_scheme_token(authorization)
            .ok()
            .and_then(|parsed| parsed.token)
            .and_then(|token| parse_basic(&token).ok())
        else {
            return Some(refuse(self, None, "malformed Basic credentials"));
        };
        let claimed = Principal::parse(&user);
        if shared.lockout.is_locked(source_ip, Some(&claimed.display()), now) {
            return Some(refuse(
                self,
                Some(claimed.display()),
                "locked out after repeated logon failures",
            ));
        }
        let users = shared.credssp().users.clone();
        let entry = match verify_password(&users, &claimed, password.expose_secret()) {
            Ok(entry) => entry,
            Err(refusal) => {
                let mut reason = format!("authentication failed: {refusal}");
                if shared.lockout.record_failure(source_ip, Some(&claimed.display()), now) {
                    reason.push_str("; logons from this source for this user are now locked out");
                }
                return Some(refuse(self, Some(claimed.display()), &reason));
            }
        };
        let principal = format!("{}\\{}", entry.domain, entry.user);
        if self.principal() == Some(principal.as_str()) {
            // Same user as before: keep the session, refresh the password.
            self.vault.store(DelegatedCredentials::new(
                entry.domain.clone(),
                entry.user.clone(),
                password,
            ));
            return None;
        }
        self.reset();
        let credentials = DelegatedCredentials::new(entry.domain.clone(), entry.user.clone(), password);
        self.begin_session(shared, credentials, None)
    }

    /// A logon succeeded (CredSSP, or Basic without a channel): take a
    /// session slot, store the credentials and audit the start. Returns the
    /// refusal to send when the session quota is full.
    fn begin_session(
        &mut self,
        shared: &Shared,
        credentials: DelegatedCredentials,
        channel: Option<Box<SecureChannel>>,
    ) -> Option<HttpResponse> {
        let principal = credentials.principal();
        let slot = match shared.quotas.session(&principal) {
            Ok(slot) => slot,
            Err(quota) => {
                let mut event = self.event(AuditKind::Denied);
                event.user = Some(principal);
                event.status = Some(503);
                event.reason = Some(quota.to_string());
                shared.audit.emit(&event);
                return Some(reply::plain(StatusCode::SERVICE_UNAVAILABLE, &quota.to_string()));
            }
        };
        shared.lockout.record_success(self.source.ip(), Some(&principal));
        self.vault.store(credentials);
        self.slot = Some(slot);
        self.pending = None;
        let basic = channel.is_none();
        self.auth = AuthState::Authenticated { principal, channel };
        tracing::info!(session = %self.id, user = self.principal(), source = %self.source, basic, "session authenticated");
        shared.audit.emit(&self.event(AuditKind::SessionStart));
        None
    }

    fn audit_auth_failed(&self, shared: &Shared, user: Option<String>, reason: &str) {
        let mut event = self.event(AuditKind::AuthFailed);
        event.user = user;
        event.status = Some(401);
        event.reason = Some(reason.to_string());
        shared.audit.emit(&event);
    }

    /// Forget authentication: credentials wiped, target connections closed.
    fn reset(&mut self) {
        self.auth = AuthState::None;
        self.shells.clear();
        self.targets.clear();
        self.vault.wipe();
        self.slot = None;
    }

    /// End the session: delete the shells its caller left open, audit, then
    /// wipe the credentials. At connection close, idle timeout or lifetime
    /// end, and when its CredSSP channel breaks.
    pub(crate) async fn end(&mut self, shared: &Shared, reason: &str) {
        if self.principal().is_some() {
            pipeline::delete_leftover_shells(self, shared).await;
            let mut event = self.event(AuditKind::SessionEnd);
            event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            event.reason = Some(reason.to_string());
            shared.audit.emit(&event);
            tracing::info!(session = %self.id, reason, requests = self.requests, "session ended");
        }
        self.reset();
    }
}

/// TLS handshake record (0x16) carrying a ClientHello (type 1).
fn is_client_hello(token: &[u8]) -> bool {
    token.len() > 5 && token[0] == 0x16 && token[1] == 0x03 && token[5] == 0x01
}

pub(crate) async fn read_body(request: Request<Incoming>, shared: &Shared) -> Result<Bytes, BodyError> {
    let limit = encrypted_body_limit(shared.config.listen.max_envelope_size);
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

/// Sealing adds MIME headers and TLS record overhead per 16 KiB chunk.
fn encrypted_body_limit(max_envelope: usize) -> usize {
    max_envelope + max_envelope / 16 + 4096
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
    fn source_allowlist() {
        let nets: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(source_allowed(&nets, "127.0.0.9:1".parse().unwrap()));
        assert!(source_allowed(&nets, "[::ffff:127.0.0.9]:1".parse().unwrap()));
        assert!(!source_allowed(&nets, "[::1]:1".parse().unwrap()));
        assert!(source_allowed(&[], "[::1]:1".parse().unwrap()));
    }

    #[test]
    fn client_hello_detection() {
        assert!(is_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00]));
        assert!(!is_client_hello(&[0x16, 0x03, 0x03, 0x00, 0x10, 0x10, 0x00]));
        assert!(!is_client_hello(&[0x17, 0x03, 0x03, 0x00, 0x10, 0x01]));
        assert!(!is_client_hello(&[]));
    }
}

//! Logging a caller on: one `Authorization` header at a time, CredSSP legs or
//! Basic over HTTPS. Answers whether the request may go on to the pipeline;
//! never relays anything itself.

use std::time::Instant;

use hyper::StatusCode;
use secrecy::ExposeSecret;

use super::reply::{self, HttpResponse, CREDSSP};
use super::session::{AuthState, Session};
use super::Shared;
use crate::audit::{AuditKind, AuthMethod};
use crate::identity::Principal;
use crate::proto::credssp::{verify_password, Acceptor, InnerMechanism, Step};
use crate::proto::http_auth::{parse_basic, parse_scheme_token};
use crate::vault::DelegatedCredentials;

/// What a request's authentication decided.
pub(crate) enum Logon {
    /// Authenticated (now or before): the request goes on to the pipeline.
    Proceed,
    /// Not yet: answer this (a 401 challenge or handshake leg, or a refusal).
    Answer(HttpResponse),
}

/// Authenticate the request carrying `authorization` (if any).
pub(crate) async fn authenticate(session: &mut Session, authorization: Option<&str>, shared: &Shared) -> Logon {
    let Some(authorization) = authorization else {
        return match session.principal() {
            Some(_) => Logon::Proceed,
            None => Logon::Answer(reply::credssp_401(&[])),
        };
    };
    let is_basic = authorization.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic "));
    if is_basic && session.https && shared.config().listen.basic_over_https {
        return basic(session, authorization, shared).await;
    }
    credssp(session, authorization, shared).await
}

/// One CredSSP leg. Only CredSSP: Negotiate could not delegate the password.
async fn credssp(session: &mut Session, authorization: &str, shared: &Shared) -> Logon {
    let parsed = match parse_scheme_token(authorization) {
        Ok(parsed) => parsed,
        Err(error) => return Logon::Answer(reply::refused_401(&format!("bad Authorization header: {error}"))),
    };
    if !parsed.scheme.eq_ignore_ascii_case(CREDSSP) {
        let reason = if parsed.scheme.eq_ignore_ascii_case("Basic") && session.https {
            "Basic authentication is disabled on this relay (listen.basic_auth = false); use CredSSP".to_string()
        } else if parsed.scheme.eq_ignore_ascii_case("Basic") {
            "Basic authentication is refused on the HTTP listener: it would send the password in clear; use CredSSP, \
             or Basic over the relay's HTTPS listener"
                .to_string()
        } else {
            format!("{} cannot delegate credentials; the relay needs CredSSP", parsed.scheme)
        };
        audit_failed(session, shared, None, &reason);
        return Logon::Answer(reply::refused_401(&reason));
    }
    let Some(token) = parsed.token else {
        return Logon::Answer(reply::credssp_401(&[]));
    };
    // A ClientHello starts a new exchange, even on an authenticated
    // connection: that session ends first (its shells deleted, its
    // credentials wiped), and the connection waits to log on again.
    if is_client_hello(&token) || !matches!(session.auth, AuthState::InProgress { .. }) {
        if let Err(refusal) = start_over(session, shared).await {
            return Logon::Answer(refusal);
        }
        match Acceptor::new(shared.credssp()) {
            Ok(acceptor) => {
                session.auth = AuthState::InProgress {
                    acceptor: Box::new(acceptor),
                    started: Instant::now(),
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot start a CredSSP exchange");
                return Logon::Answer(reply::refused_401("the relay could not start CredSSP"));
            }
        }
    }
    let now = Instant::now();
    let source_ip = session.source.ip();
    let AuthState::InProgress { acceptor, started } = &mut session.auth else {
        return Logon::Answer(reply::credssp_401(&[]));
    };
    if now.duration_since(*started) > shared.config().auth.handshake_timeout {
        session.auth = AuthState::None;
        let reason = "the CredSSP exchange took longer than auth.handshake_timeout_secs";
        audit_failed(session, shared, None, reason);
        return Logon::Answer(reply::refused_401(reason));
    }
    let locked_out = |user: &str| shared.lockout.is_locked(source_ip, Some(user), now);
    let step = acceptor.step_checked(&token, &locked_out);
    let method = acceptor.mechanism().map(credssp_method);
    match step {
        Step::Continue(out) => Logon::Answer(reply::credssp_401(&out)),
        Step::Authenticated { credentials, channel } => {
            session.auth = AuthState::None;
            let method = method.unwrap_or(AuthMethod::Ntlm);
            match session.begin(shared, credentials, Some(channel), method) {
                Ok(()) => Logon::Proceed,
                Err(quota) => Logon::Answer(reply::plain(StatusCode::SERVICE_UNAVAILABLE, &quota.to_string())),
            }
        }
        Step::Rejected { token, error, user } => {
            session.auth = AuthState::None;
            let reason = failure_reason(shared, session, user.as_deref(), error.to_string(), now);
            let mut event = failed_event(session, user, &reason);
            event.auth = method;
            shared.metrics.logon(false);
            shared.audit.emit(&event);
            Logon::Answer(reply::credssp_401(token.as_deref().unwrap_or_default()))
        }
    }
}

/// What the audit calls the package a CredSSP client authenticated with.
fn credssp_method(mechanism: InnerMechanism) -> AuthMethod {
    if mechanism.is_kerberos() {
        AuthMethod::Kerberos
    } else {
        AuthMethod::Ntlm
    }
}

/// `Authorization: Basic` over HTTPS: checked against the users file on every
/// request; the session's credentials are the ones last proven.
async fn basic(session: &mut Session, authorization: &str, shared: &Shared) -> Logon {
    let now = Instant::now();
    let source_ip = session.source.ip();
    let Some((user, password)) = parse_scheme_token(authorization)
        .ok()
        .and_then(|parsed| parsed.token)
        .and_then(|token| parse_basic(&token).ok())
    else {
        audit_failed(session, shared, None, "malformed Basic credentials");
        return Logon::Answer(reply::basic_401());
    };
    let credssp = shared.credssp();
    let who = Principal::parse(&user).canonical(credssp.domain.as_ref());
    let claimed = who.to_string();
    // The password is checked even for a locked-out pair, so that the answer
    // takes as long as any other refusal.
    let verified = verify_password(&credssp.users, credssp.domain.as_ref(), &who, password.expose_secret());
    if shared.lockout.is_locked(source_ip, Some(&claimed), now) {
        audit_failed(
            session,
            shared,
            Some(claimed),
            "locked out after repeated logon failures",
        );
        return Logon::Answer(reply::basic_401());
    }
    let entry = match verified {
        Ok(entry) => entry,
        Err(refusal) => {
            let reason = failure_reason(
                shared,
                session,
                Some(&claimed),
                format!("authentication failed: {refusal}"),
                now,
            );
            audit_failed(session, shared, Some(claimed), &reason);
            return Logon::Answer(reply::basic_401());
        }
    };
    let credentials = DelegatedCredentials::from_principal(entry.principal().clone(), password);
    if session.principal() == Some(credentials.principal().as_str()) {
        // Same user as before: keep the session, refresh the password.
        session.vault.store(credentials);
        return Logon::Proceed;
    }
    // Another user on this connection: the previous session ends first.
    if let Err(refusal) = start_over(session, shared).await {
        return Logon::Answer(refusal);
    }
    match session.begin(shared, credentials, None, AuthMethod::Basic) {
        Ok(()) => Logon::Proceed,
        Err(quota) => Logon::Answer(reply::plain(StatusCode::SERVICE_UNAVAILABLE, &quota.to_string())),
    }
}

/// A new logon on a connection: end the session it carried (if any), and
/// count the connection among those waiting to authenticate again. Refused
/// (and the connection closed) when its source already has its share.
async fn start_over(session: &mut Session, shared: &Shared) -> Result<(), HttpResponse> {
    if session.principal().is_none() {
        // Still the first logon: its deadline keeps running from accept.
        return Ok(());
    }
    session.end(shared, "re-authentication on the same connection").await;
    if let Err(refusal) = session.restart_logon(shared) {
        shared.metrics.quota_hit(refusal.limit());
        let mut event = session.event(AuditKind::Denied);
        event.reason = Some(refusal.to_string());
        shared.audit.emit(&event);
        session.ender.end(&refusal.to_string());
        return Err(reply::closing(StatusCode::SERVICE_UNAVAILABLE, &refusal.to_string()));
    }
    tracing::Span::current().record("session", session.id.as_str());
    Ok(())
}

/// The audit reason of a failed logon; records the failure for lockout. Only
/// failures that name a user count: anonymous garbage from a shared address
/// (NAT, jump host) must not lock every admin behind it out.
fn failure_reason(shared: &Shared, session: &Session, user: Option<&str>, mut reason: String, now: Instant) -> String {
    let locks = user.is_some_and(|user| shared.lockout.record_failure(session.source.ip(), Some(user), now));
    if locks {
        shared.metrics.lockout();
        reason.push_str("; logons from this source for this user are now locked out");
    }
    tracing::info!(user, %reason, "authentication failed");
    reason
}

fn audit_failed(session: &Session, shared: &Shared, user: Option<String>, reason: &str) {
    shared.metrics.logon(false);
    shared.audit.emit(&failed_event(session, user, reason));
}

fn failed_event(session: &Session, user: Option<String>, reason: &str) -> crate::audit::AuditEvent {
    let mut event = session.event(AuditKind::AuthFailed);
    event.user = user;
    event.status = Some(401);
    event.reason = Some(reason.to_string());
    event
}

/// TLS handshake record (0x16) carrying a ClientHello (type 1).
fn is_client_hello(token: &[u8]) -> bool {
    token.len() > 5 && token[0] == 0x16 && token[1] == 0x03 && token[5] == 0x01
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_detection() {
        assert!(is_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00]));
        assert!(!is_client_hello(&[0x16, 0x03, 0x03, 0x00, 0x10, 0x10, 0x00]));
        assert!(!is_client_hello(&[0x17, 0x03, 0x03, 0x00, 0x10, 0x01]));
        assert!(!is_client_hello(&[]));
    }
}

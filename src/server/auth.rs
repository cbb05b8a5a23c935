//! Logging a caller on: one `Authorization` header at a time, CredSSP legs or
//! Basic over HTTPS. Hands the pipeline the logged-on session, or says what to
//! answer instead; never relays anything itself.

use std::net::IpAddr;
use std::time::Instant;

use secrecy::ExposeSecret;

use super::kerberos_logon::{self, ConstrainedLogons};
use super::refusal::Refusal;
use super::reply::{self, HttpResponse, CREDSSP};
use super::session::{self, ActiveSession, Session};
use super::Shared;
use crate::audit::AuthMethod;
use crate::identity::{Principal, PrincipalKey};
use crate::proto::credssp::{verify_password, Acceptor, InnerMechanism, Step};
use crate::proto::http_auth::{format_scheme_token, parse_basic, parse_scheme_token};
use crate::proto::kerberos::acceptor::{AcceptError, Accepted};
use crate::vault::DelegatedCredentials;

/// What a request's authentication decided.
pub(crate) enum Logon<'a> {
    /// Logged on (now or before): the request goes on to the pipeline.
    Active(ActiveSession<'a>),
    /// Logged on now with plain Kerberos: the pipeline's answer carries this
    /// `WWW-Authenticate` value (the AP-REP).
    ActiveAnswering(ActiveSession<'a>, String),
    /// Not yet, and no refusal: a challenge or a CredSSP handshake leg.
    Continue(HttpResponse),
    Refused(Refusal),
}

/// Authenticate the request carrying `authorization` (if any).
pub(crate) async fn authenticate<'a>(
    session: &'a mut Session,
    authorization: Option<&str>,
    shared: &Shared,
) -> Logon<'a> {
    let constrained = shared.constrained.as_deref();
    let Some(authorization) = authorization else {
        return match session.active() {
            Some(active) => Logon::Active(active),
            None => Logon::Continue(reply::offers_401(constrained.is_some())),
        };
    };
    if let Some(logons) = constrained {
        if let Ok(parsed) = parse_scheme_token(authorization) {
            if kerberos_logon::is_kerberos_scheme(&parsed.scheme) {
                return kerberos(session, logons, &parsed.scheme, parsed.token, shared).await;
            }
        }
    }
    let is_basic = authorization.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic "));
    if is_basic && session.link.https && shared.config().listen.basic_over_https {
        return basic(session, authorization, shared).await;
    }
    credssp(session, authorization, shared).await
}

/// One CredSSP leg. Only CredSSP: Negotiate could not delegate the password.
async fn credssp<'a>(session: &'a mut Session, authorization: &str, shared: &Shared) -> Logon<'a> {
    let parsed = match parse_scheme_token(authorization) {
        Ok(parsed) => parsed,
        Err(error) => return Logon::Refused(Refusal::challenge(format!("bad Authorization header: {error}"))),
    };
    if !parsed.scheme.eq_ignore_ascii_case(CREDSSP) {
        let reason = if parsed.scheme.eq_ignore_ascii_case("Basic") && session.link.https {
            "Basic authentication is disabled on this relay (listen.basic_auth = false); use CredSSP".to_string()
        } else if parsed.scheme.eq_ignore_ascii_case("Basic") {
            "Basic authentication is refused on the HTTP listener: it would send the password in clear; use CredSSP, \
             or Basic over the relay's HTTPS listener"
                .to_string()
        } else {
            format!("{} cannot delegate credentials; the relay needs CredSSP", parsed.scheme)
        };
        return Logon::Refused(Refusal::logon(reason));
    }
    let Some(token) = parsed.token else {
        return Logon::Continue(reply::credssp_401(&[]));
    };
    // A ClientHello starts a new exchange, even on an authenticated
    // connection: that session ends first (its shells deleted, its
    // credentials wiped), and the connection waits to log on again.
    if is_client_hello(&token) || session.credssp().is_none() {
        if let Err(refusal) = start_over(session, shared).await {
            return Logon::Refused(refusal);
        }
        let acceptor = match Acceptor::new(shared.credssp()) {
            Ok(acceptor) => acceptor,
            Err(error) => {
                tracing::error!(%error, "cannot start a CredSSP exchange");
                return Logon::Refused(Refusal::challenge("the relay could not start CredSSP"));
            }
        };
        if !session.start_credssp(acceptor) {
            return Logon::Refused(Refusal::relay_fault(
                "a CredSSP exchange on a session that is not logging on",
            ));
        }
    }
    let now = Instant::now();
    let source = session.link.source.ip();
    let Some(exchange) = session.credssp() else {
        return Logon::Continue(reply::credssp_401(&[]));
    };
    if now.duration_since(exchange.started) > shared.config().auth.handshake_timeout {
        session.abandon_credssp();
        return Logon::Refused(Refusal::logon(
            "the CredSSP exchange took longer than auth.handshake_timeout_secs",
        ));
    }
    let locked_out = |user: &PrincipalKey| shared.lockout.is_locked(source, Some(user), now);
    let step = exchange.acceptor.step_checked(&token, &locked_out);
    let method = exchange.acceptor.mechanism().map(credssp_method);
    match step {
        Step::Continue(out) => Logon::Continue(reply::credssp_401(&out)),
        Step::Authenticated {
            credentials,
            channel,
            pac_groups,
        } => {
            // The exchange is over whatever follows: a refusal below must not leave it to the next token.
            session.abandon_credssp();
            let method = method.unwrap_or(AuthMethod::Ntlm);
            let logon = session::Logon {
                credentials,
                channel: Some(channel),
                wrap: None,
                method,
                pac_groups,
            };
            match session.begin(shared, logon).await {
                Ok(active) => Logon::Active(active),
                Err(refusal) => Logon::Refused(refusal),
            }
        }
        Step::Rejected { token, error, user } => {
            session.abandon_credssp();
            // Counted on the one key of every spelling of the name, as the lock is checked.
            let domain = shared.credssp().domain.clone();
            let key = user.as_ref().map(|user| user.key(domain.as_ref()));
            let reason = record_failure(shared, source, key.as_ref(), error.to_string(), now);
            let claimed = user.map(|user| user.to_string());
            Logon::Refused(Refusal::credssp(token, reason).claimed(claimed).method(method))
        }
    }
}

/// One plain Kerberos logon: the AP-REQ in `token`, answered with the AP-REP under the
/// scheme the caller used. No lockout: no password is tried.
async fn kerberos<'a>(
    session: &'a mut Session,
    logons: &ConstrainedLogons,
    scheme: &str,
    token: Option<Vec<u8>>,
    shared: &Shared,
) -> Logon<'a> {
    let Some(token) = token else {
        return Logon::Continue(reply::offers_401(true));
    };
    let accepted = match logons.accept(&token, session.link.https) {
        Ok(accepted) => accepted,
        Err(error) => {
            let method = (error != AcceptError::Ntlm).then_some(AuthMethod::Kerberos);
            return Logon::Refused(Refusal::logon(error.to_string()).method(method));
        }
    };
    if let Err(refusal) = start_over(session, shared).await {
        return Logon::Refused(refusal);
    }
    let Accepted {
        client,
        evidence,
        reply: answer,
        keys,
    } = accepted;
    let principal = Principal::parse(&client.display());
    let pac_groups = client.pac_groups;
    let header = format_scheme_token(scheme, &answer);
    let logon = session::Logon {
        credentials: DelegatedCredentials::constrained(principal, evidence, logons.account.clone()),
        channel: None,
        wrap: Some(Box::new(keys)),
        method: AuthMethod::Kerberos,
        pac_groups,
    };
    match session.begin(shared, logon).await {
        Ok(active) => Logon::ActiveAnswering(active, header),
        Err(refusal) => Logon::Refused(refusal),
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
async fn basic<'a>(session: &'a mut Session, authorization: &str, shared: &Shared) -> Logon<'a> {
    let now = Instant::now();
    let source = session.link.source.ip();
    let Some((user, password)) = parse_scheme_token(authorization)
        .ok()
        .and_then(|parsed| parsed.token)
        .and_then(|token| parse_basic(&token).ok())
    else {
        return Logon::Refused(Refusal::basic("malformed Basic credentials"));
    };
    let credssp = shared.credssp();
    let who = Principal::parse(&user).canonical(credssp.domain.as_ref());
    let claimed = who.to_string();
    // The password is checked even for a locked-out pair, so that the answer
    // takes as long as any other refusal.
    let key = who.key(credssp.domain.as_ref());
    let verified = verify_password(&credssp.users, credssp.domain.as_ref(), &who, password.expose_secret());
    if shared.lockout.is_locked(source, Some(&key), now) {
        return Logon::Refused(Refusal::basic("locked out after repeated logon failures").claimed(Some(claimed)));
    }
    let entry = match verified {
        Ok(entry) => entry,
        Err(refusal) => {
            let reason = record_failure(
                shared,
                source,
                Some(&key),
                format!("authentication failed: {refusal}"),
                now,
            );
            return Logon::Refused(Refusal::basic(reason).claimed(Some(claimed)));
        }
    };
    let credentials = DelegatedCredentials::from_principal(entry.principal().clone(), password);
    if session.principal() == Some(credentials.principal().as_str()) {
        // Same user as before: keep the session, refresh the password in place.
        return match session.active() {
            Some(active) => {
                active.active.credentials = credentials;
                Logon::Active(active)
            }
            None => Logon::Refused(Refusal::relay_fault("a session with a principal is not active")),
        };
    }
    // Another user on this connection: the previous session ends first.
    if let Err(refusal) = start_over(session, shared).await {
        return Logon::Refused(refusal);
    }
    let logon = session::Logon {
        credentials,
        channel: None,
        wrap: None,
        method: AuthMethod::Basic,
        pac_groups: None,
    };
    match session.begin(shared, logon).await {
        Ok(active) => Logon::Active(active),
        Err(refusal) => Logon::Refused(refusal),
    }
}

/// A new logon on a connection: end the session it carried (if any), and
/// count the connection among those waiting to authenticate again. Refused
/// (and the connection closed) when its source already has its share.
async fn start_over(session: &mut Session, shared: &Shared) -> Result<(), Refusal> {
    if session.principal().is_none() {
        // Still the first logon: its deadline keeps running from accept.
        return Ok(());
    }
    session.end(shared, "re-authentication on the same connection").await;
    session
        .restart_logon(shared)
        .map_err(|refusal| Refusal::pending(&refusal))?;
    tracing::Span::current().record("session", session.link.id.as_str());
    Ok(())
}

/// Records a failed logon for lockout, and returns its audit reason. Only
/// failures that name a user count: anonymous garbage from a shared address
/// (NAT, jump host) must not lock every admin behind it out.
fn record_failure(
    shared: &Shared,
    source: IpAddr,
    user: Option<&PrincipalKey>,
    mut reason: String,
    now: Instant,
) -> String {
    let locks = user.is_some_and(|user| shared.lockout.record_failure(source, Some(user), now));
    if locks {
        shared.metrics.lockout();
        reason.push_str("; logons from this source for this user are now locked out");
    }
    reason
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

//! The one edge where a refusal becomes an answer, an audit line and metrics.
//!
//! Every stage that can refuse (accept, body, logon, the pipeline's stages)
//! returns a [`Refusal`]: how the caller is answered, why, what kind of audit
//! line it writes, whose name it carries, which limit was hit and whether the
//! connection closes. Only this module turns one into a reply and a record, so
//! a refusal is answered, audited and counted the same way wherever it arises.

use hyper::StatusCode;

use super::limits::{PendingRefusal, QuotaError};
use super::reply::{self, HttpResponse};
use super::Shared;
use crate::audit::{AuditEvent, AuditKind, AuthMethod};
use crate::metrics::Metrics;
use crate::proto::wsman::FaultKind;

/// How a refused request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Plain text at this status.
    Plain(StatusCode),
    /// `401` with the reason as text and the CredSSP offer.
    Unauthorized,
    /// `401` carrying the CredSSP token that refuses the logon (a TSRequest
    /// errorCode), or none.
    CredSspRejected(Vec<u8>),
    /// `401` offering Basic again (and CredSSP).
    BasicChallenge,
    /// A WS-Man fault in the request's answer, sealed as the request was.
    Fault(FaultKind),
    /// Nothing: the connection is dropped unanswered (at accept).
    Drop,
}

/// Why the relay answers a request itself instead of relaying it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub answer: Answer,
    /// For humans: the audit's reason and (except for logons) the answer's text.
    pub reason: String,
    /// The audit line's kind; `None` when nothing is audited (a request that
    /// is not WS-Man at all, or a relay fault logged instead).
    audit: Option<AuditKind>,
    /// Who the caller claimed to be, when the session does not say.
    user: Option<String>,
    auth: Option<AuthMethod>,
    /// The configured limit that refused it (a metrics label).
    limit: Option<&'static str>,
    /// A failed logon (counted, and a 401 in the audit).
    logon: bool,
    /// The connection closes after the answer.
    pub close: bool,
}

impl Refusal {
    fn new(answer: Answer, reason: impl Into<String>) -> Refusal {
        Refusal {
            answer,
            reason: reason.into(),
            audit: None,
            user: None,
            auth: None,
            limit: None,
            logon: false,
            close: false,
        }
    }

    /// A request that is not one the relay serves (wrong method or path, a
    /// malformed header or body): answered, not audited.
    pub fn malformed(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal::new(Answer::Plain(status), reason)
    }

    /// `401` with the reason and the CredSSP offer, not audited: a malformed
    /// header, or the relay could not start an exchange.
    pub fn challenge(reason: impl Into<String>) -> Refusal {
        Refusal::new(Answer::Unauthorized, reason)
    }

    /// `401` with the reason and the CredSSP offer, audited `denied`.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal::new(Answer::Unauthorized, reason).audited(AuditKind::Denied)
    }

    /// A request body the relay cannot read (`400`), on the request's own line.
    pub fn unreadable(reason: impl Into<String>) -> Refusal {
        Refusal::new(Answer::Plain(StatusCode::BAD_REQUEST), reason).audited(AuditKind::Request)
    }

    /// A plain-text refusal at `status`, audited `denied`.
    pub fn denied(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal::new(Answer::Plain(status), reason).audited(AuditKind::Denied)
    }

    /// A failed logon: `401` with the reason and the CredSSP offer.
    pub fn logon(reason: impl Into<String>) -> Refusal {
        Refusal {
            logon: true,
            ..Refusal::new(Answer::Unauthorized, reason).audited(AuditKind::AuthFailed)
        }
    }

    /// A CredSSP exchange the acceptor refused, answered with its token.
    pub fn credssp(token: Option<Vec<u8>>, reason: impl Into<String>) -> Refusal {
        Refusal {
            answer: Answer::CredSspRejected(token.unwrap_or_default()),
            ..Refusal::logon(reason)
        }
    }

    /// A Basic logon refused: Basic is offered again.
    pub fn basic(reason: impl Into<String>) -> Refusal {
        Refusal {
            answer: Answer::BasicChallenge,
            ..Refusal::logon(reason)
        }
    }

    /// A quota (sessions, shells, operations) refused it: `503`.
    pub fn quota(quota: &QuotaError) -> Refusal {
        Refusal {
            limit: Some(quota.limit()),
            ..Refusal::denied(StatusCode::SERVICE_UNAVAILABLE, quota.to_string())
        }
    }

    /// The connection may not wait to log on: `503`, and it closes.
    pub fn pending(refusal: &PendingRefusal) -> Refusal {
        Refusal {
            limit: Some(refusal.limit()),
            close: true,
            ..Refusal::denied(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string())
        }
    }

    /// A connection refused as it is accepted: dropped unanswered, audited.
    pub fn connection(reason: impl Into<String>, limit: Option<&'static str>) -> Refusal {
        Refusal {
            limit,
            ..Refusal::new(Answer::Drop, reason).audited(AuditKind::Denied)
        }
    }

    /// A WS-Man fault for a request the pipeline refused or could not relay;
    /// `audit` is `denied` for a refusal, `request` for a failure.
    pub fn fault(kind: FaultKind, reason: impl Into<String>, audit: AuditKind) -> Refusal {
        Refusal::new(Answer::Fault(kind), reason).audited(audit)
    }

    /// The relay itself failed: logged, not the caller's fault, not audited.
    pub fn relay_fault(reason: impl Into<String>) -> Refusal {
        let refusal = Refusal::new(Answer::Plain(StatusCode::INTERNAL_SERVER_ERROR), reason);
        tracing::error!(reason = %refusal.reason, "the relay failed a request");
        refusal
    }

    /// The same refusal, answered as a WS-Man fault (inside the pipeline).
    pub fn in_fault(mut self, kind: FaultKind) -> Refusal {
        self.answer = Answer::Fault(kind);
        self
    }

    pub fn audited(mut self, kind: AuditKind) -> Refusal {
        self.audit = Some(kind);
        self
    }

    /// Names the user (as claimed) and logon method, when the session does not.
    pub fn by(mut self, user: impl Into<String>, auth: AuthMethod) -> Refusal {
        self.user = Some(user.into());
        self.auth = Some(auth);
        self
    }

    /// Names the user as claimed, if known.
    pub fn claimed(mut self, user: Option<String>) -> Refusal {
        self.user = user.or(self.user);
        self
    }

    pub fn method(mut self, auth: Option<AuthMethod>) -> Refusal {
        self.auth = auth.or(self.auth);
        self
    }

    pub fn closing(mut self) -> Refusal {
        self.close = true;
        self
    }

    /// The HTTP status the caller gets (a fault travels in a 500).
    pub fn status(&self) -> StatusCode {
        match &self.answer {
            Answer::Plain(status) => *status,
            Answer::Unauthorized | Answer::CredSspRejected(_) | Answer::BasicChallenge => StatusCode::UNAUTHORIZED,
            Answer::Fault(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Answer::Drop => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Fill `event` (the session's, or the request's) and count the refusal.
    /// Whether the event is written is for the caller: the pipeline's request
    /// line is written once, with its sizes and times.
    pub fn note(&self, event: &mut AuditEvent, metrics: &Metrics) {
        if let Some(kind) = self.audit {
            event.event = kind;
        }
        // A failed logon names who it claimed to be (or no one), not the user the
        // connection was logged on as before.
        if self.logon || self.user.is_some() {
            event.user.clone_from(&self.user);
        }
        if self.auth.is_some() {
            event.auth = self.auth;
        }
        if !matches!(self.answer, Answer::Drop) {
            event.status = Some(self.status().as_u16());
        }
        event.reason = Some(self.reason.clone());
        if let Some(limit) = self.limit {
            metrics.quota_hit(limit);
        }
        if self.logon {
            metrics.logon(false);
            tracing::info!(user = self.user.as_deref(), reason = %self.reason, "authentication failed");
        }
    }

    /// Audit (when the refusal is audited) and count it.
    pub fn record(&self, mut event: AuditEvent, shared: &Shared) {
        self.note(&mut event, &shared.metrics);
        if self.audit.is_some() {
            shared.audit.emit(&event);
        }
    }

    /// Audit and count it, then build the answer. A fault needs the request's
    /// envelope and channel: the pipeline builds that one.
    pub fn answer(self, event: AuditEvent, shared: &Shared) -> HttpResponse {
        self.record(event, shared);
        self.reply()
    }

    /// The answer alone, for a refusal already noted on the request's line.
    pub fn reply(self) -> HttpResponse {
        let status = self.status();
        let response = match self.answer {
            Answer::Unauthorized => reply::refused_401(&self.reason),
            Answer::CredSspRejected(token) => reply::credssp_401(&token),
            Answer::BasicChallenge => reply::basic_401(),
            // A fault's envelope is the pipeline's to build and seal.
            Answer::Plain(_) | Answer::Fault(_) | Answer::Drop => reply::plain(status, &self.reason),
        };
        if self.close {
            reply::with_close(response)
        } else {
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditSink;

    fn metrics() -> Metrics {
        Metrics::new(&AuditSink::in_memory().0)
    }

    #[test]
    fn a_failed_logon_is_a_401_counted_and_audited_as_auth_failed() {
        let refusal = Refusal::credssp(Some(vec![1, 2]), "wrong password for LAB\\alice")
            .claimed(Some("LAB\\alice".into()))
            .method(Some(AuthMethod::Ntlm));
        let metrics = metrics();
        let mut event = AuditEvent::default();
        refusal.note(&mut event, &metrics);
        assert_eq!(event.event, AuditKind::AuthFailed);
        assert_eq!(event.status, Some(401));
        assert_eq!(event.user.as_deref(), Some("LAB\\alice"));
        assert_eq!(event.auth, Some(AuthMethod::Ntlm));
        assert!(metrics
            .encode()
            .contains("winrm_relay_logons_total{result=\"failure\"} 1"));
        let reply = refusal.reply();
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_quota_refusal_names_its_limit_and_a_pending_one_closes() {
        let metrics = metrics();
        let quota = Refusal::quota(&QuotaError::Sessions(3));
        let mut event = AuditEvent::default();
        quota.note(&mut event, &metrics);
        assert_eq!((event.event, event.status), (AuditKind::Denied, Some(503)));
        assert!(metrics.encode().contains("max_sessions"));
        let pending = Refusal::pending(&PendingRefusal::Total);
        assert!(pending.close);
        let reply = pending.reply();
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers().get(hyper::header::CONNECTION).unwrap(), "close");
    }

    #[test]
    fn a_malformed_request_is_answered_but_not_audited() {
        let refusal = Refusal::malformed(StatusCode::NOT_FOUND, "not a WS-Management endpoint");
        assert_eq!(refusal.audit, None);
        assert_eq!(refusal.reply().status(), StatusCode::NOT_FOUND);
    }
}

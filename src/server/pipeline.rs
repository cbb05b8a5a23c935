//! The relay pipeline for one authenticated request, top to bottom:
//! unseal -> parse envelope -> policy -> rewrite -> target -> inspect ->
//! seal for the caller -> audit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;

use super::limits::QuotaError;
use super::reply::{self, HttpResponse};
use super::request::Route;
use super::session::Session;
use super::Shared;
use crate::audit::transcript::Exchange;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::Config;
use crate::metrics::{Metrics, RequestSample};
use crate::policy::Decision;
use crate::proto::sealing::{self, SealProtocol};
use crate::proto::wsman::{self, FaultKind, RequestInfo};
use crate::resolve::ResolvedTarget;
use crate::upstream::{self, UpstreamError};

/// Margin over a request's OperationTimeout before the relay gives up on
/// the target: a Receive may legitimately wait that long.
const OPERATION_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
const RELAY_MACHINE: &str = "winrm-relay";
/// The audited status of a request cancelled before its answer.
const CANCELLED_STATUS: u16 = 499;

/// A request that failed before or at the target: its fault and audit fields.
struct Failure {
    kind: FaultKind,
    message: String,
    audit: AuditKind,
}

/// The one way into the pipeline: an authenticated request's body, relayed
/// to its target and answered in kind. Every request is audited, also one
/// cancelled half-way because the caller went away or the session ended.
pub(crate) async fn relay(
    session: &mut Session,
    content_type: &str,
    body: Bytes,
    route: Route,
    shared: &Shared,
) -> HttpResponse {
    session.requests += 1;
    if body.is_empty() {
        // The empty POST clients use to (re)check authentication.
        return reply::ok_empty();
    }
    let sealed = sealing::protocol_of(content_type) == Some(SealProtocol::CredSsp);
    // AllowUnencrypted=false, as on Windows: over HTTP, clear bodies never
    // leave the relay. Over HTTPS the TLS layer protects them.
    if !sealed && !session.https {
        let mut event = session.event(AuditKind::Denied);
        event.status = Some(401);
        event.reason = Some("unencrypted request body refused".into());
        shared.audit.emit(&event);
        shared.metrics.request(RequestSample {
            action: None,
            status: 401,
            bytes_in: 0,
            bytes_out: 0,
            total: Duration::ZERO,
            target: None,
        });
        return reply::refused_401("unencrypted WS-Man bodies are refused over HTTP; enable message encryption");
    }
    let mut audit = RequestAudit::new(shared, session.event(AuditKind::Request));
    let unsealed = if sealed {
        unseal(session, &body)
    } else {
        Ok(body.to_vec())
    };
    let plain = match unsealed {
        Ok(plain) => plain,
        Err(message) => {
            audit.event.status = Some(400);
            audit.event.reason = Some(message.clone());
            audit.event.bytes_in = Some(0);
            audit.event.bytes_out = Some(message.len() as u64);
            audit.finish();
            if sealed {
                // The CredSSP channel is out of step (or under attack): it
                // cannot carry another message, so the session ends now rather
                // than keep the credentials for a connection that is useless.
                session.ender.end(&message);
                return reply::closing(StatusCode::BAD_REQUEST, &message);
            }
            return reply::plain(StatusCode::BAD_REQUEST, &message);
        }
    };
    audit.event.bytes_in = Some(plain.len() as u64);
    let outcome = forward(session, &plain, route, shared, &mut audit.event, &mut audit.target_time).await;
    let (status, xml) = match outcome {
        Ok((status, xml)) => (status, xml),
        Err((failure, relates_to)) => {
            audit.event.event = failure.audit;
            audit.event.reason = Some(failure.message.clone());
            let xml = wsman::fault_envelope(failure.kind, relates_to.as_deref(), RELAY_MACHINE, &failure.message);
            (StatusCode::INTERNAL_SERVER_ERROR, xml)
        }
    };
    audit.event.status = Some(status.as_u16());
    audit.event.bytes_out = Some(xml.len() as u64);
    if session.ender.is_ended() {
        // Let finish after the session was told to end (a Create): the caller
        // never sees this answer.
        audit.event.reason = Some("the caller went away or the session ended before the answer reached it".into());
    }
    audit.finish();
    // Answer in kind: sealed when the request was.
    if !sealed {
        return reply::soap(status, xml);
    }
    let Some(channel) = session.channel() else {
        return reply::credssp_401(&[]);
    };
    match channel.seal(&xml) {
        Ok(parts) => reply::sealed(status, &parts),
        Err(error) => {
            tracing::error!(%error, "cannot seal the response");
            reply::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the relay could not encrypt the response",
            )
        }
    }
}

/// The audit line of one request: written once its outcome is known, or,
/// when the request is dropped half-way (the caller went away, the session
/// ended), saying so: a command that reached a target is never unaudited.
/// Its metrics go with it.
struct RequestAudit<'a> {
    shared: &'a Shared,
    event: AuditEvent,
    started: Instant,
    /// How long the target took, once it answered.
    target_time: Option<Duration>,
    written: bool,
}

impl<'a> RequestAudit<'a> {
    fn new(shared: &'a Shared, event: AuditEvent) -> Self {
        RequestAudit {
            shared,
            event,
            started: Instant::now(),
            target_time: None,
            written: false,
        }
    }

    fn finish(&mut self) {
        if !self.written {
            self.written = true;
            let elapsed = self.started.elapsed();
            self.event.duration_ms = Some(elapsed.as_millis() as u64);
            self.shared.audit.emit(&self.event);
            self.shared.metrics.request(RequestSample {
                action: self.event.action.as_deref(),
                status: self.event.status.unwrap_or_default(),
                bytes_in: self.event.bytes_in.unwrap_or_default(),
                bytes_out: self.event.bytes_out.unwrap_or_default(),
                total: elapsed,
                target: self.target_time,
            });
        }
    }
}

impl Drop for RequestAudit<'_> {
    fn drop(&mut self) {
        if !self.written {
            // 499, as web servers log "client closed request": nobody got an answer.
            self.event.status = Some(CANCELLED_STATUS);
            self.event.bytes_out = Some(0);
            self.event.reason =
                Some("cancelled before the target answered: the caller went away or the session ended".into());
            self.finish();
        }
    }
}

fn unseal(session: &mut Session, body: &[u8]) -> Result<Vec<u8>, String> {
    let parts = sealing::parse_body(SealProtocol::CredSsp, body).map_err(|e| format!("bad encrypted body: {e}"))?;
    let channel = session.channel().ok_or("not authenticated")?;
    channel
        .unseal(&parts)
        .map_err(|e| format!("cannot decrypt the request: {e}"))
}

type Forwarded = Result<(StatusCode, Vec<u8>), (Failure, Option<String>)>;

async fn forward(
    session: &mut Session,
    plain: &[u8],
    route: Route,
    shared: &Shared,
    event: &mut AuditEvent,
    target_time: &mut Option<Duration>,
) -> Forwarded {
    let info = match wsman::parse_request(plain) {
        Ok(info) => info,
        Err(error) => {
            let failure = Failure {
                kind: FaultKind::InternalError,
                message: format!("the relay cannot parse the request envelope: {error}"),
                audit: AuditKind::Request,
            };
            return Err((failure, None));
        }
    };
    record_request(event, &info);
    let relates_to = info.message_id.clone();
    let fail = |failure: Failure| Err((failure, relates_to.clone()));
    // Fail closed: a request whose resource or shell the relay cannot read
    // could slip past the shell rules and the shell ownership check.
    if let Some(problem) = info.resource_uri_problem().or_else(|| info.shell_id_problem()) {
        return fail(Failure {
            kind: FaultKind::AccessDenied,
            message: format!("the relay refuses a request it cannot check: {problem}"),
            audit: AuditKind::Denied,
        });
    }
    if shared.audit.refuses_requests() {
        // Nothing leaves the relay that the audit cannot record.
        return fail(Failure {
            kind: FaultKind::InternalError,
            message: "the relay's audit log cannot be written: request refused (audit.on_failure = \"refuse\"); \
                      free space or fix the log, requests resume on their own"
                .into(),
            audit: AuditKind::Denied,
        });
    }
    let Some(name) = route.target else {
        return fail(Failure {
            kind: FaultKind::DestinationUnreachable,
            message: "no target named: connect to http://<relay>:<port>/wsman/<target>, or to the listener \
                      configured for that target"
                .into(),
            audit: AuditKind::Denied,
        });
    };
    let config = shared.config();
    let target = match config.resolve_target(&name) {
        Ok(target) => target,
        Err(error) => {
            event.target = Some(name.clone());
            return fail(Failure {
                kind: FaultKind::DestinationUnreachable,
                message: format!("unknown target {name}: {error}"),
                audit: AuditKind::Denied,
            });
        }
    };
    event.target = Some(target.name.clone());
    // Every https target's certificate is checked: against CAs, or its pinned fingerprint.
    event.tls_verified = target.https.then_some(true);
    let user = session.principal().unwrap_or_default().to_string();
    let resource_uri = info.resource_uri.as_deref();
    let addresses = match checked_addresses(session, &config, &shared.metrics, &user, &target, resource_uri).await {
        Ok(addresses) => addresses,
        Err(failure) => return fail(failure),
    };
    if let Err(message) = session.shells.check_owner(&info, &target) {
        return fail(Failure {
            kind: FaultKind::AccessDenied,
            message,
            audit: AuditKind::Denied,
        });
    }
    let quota_refusal = |quota: QuotaError| {
        shared.metrics.quota_hit(quota.limit());
        Failure {
            kind: FaultKind::QuotaLimit,
            message: quota.to_string(),
            audit: AuditKind::Denied,
        }
    };
    let _operation = match shared.quotas.operation(&user) {
        Ok(slot) => slot,
        Err(quota) => return fail(quota_refusal(quota)),
    };
    let is_create = info.action_name() == "Create";
    let shell_slot = if is_create {
        match shared.quotas.shell(&user) {
            Ok(slot) => Some(slot),
            Err(quota) => return fail(quota_refusal(quota)),
        }
    } else {
        None
    };
    let max_timeout = config.limits.max_operation_timeout;
    let rewritten = match wsman::rewrite_request(plain, &info, &target.url, max_timeout) {
        Ok(rewritten) => rewritten,
        Err(error) => {
            return fail(Failure {
                kind: FaultKind::InternalError,
                message: format!("the relay cannot rewrite the request envelope: {error}"),
                audit: AuditKind::Request,
            })
        }
    };
    let wait = info
        .operation_timeout_within(max_timeout)
        .map(|op| (op + OPERATION_TIMEOUT_MARGIN).max(target.timeout))
        .unwrap_or(target.timeout);
    let Some(credentials) = session.vault.get() else {
        // An authenticated session keeps its caller's credentials until it ends.
        return fail(Failure {
            kind: FaultKind::AccessDenied,
            message: "this session holds no delegated credentials to authenticate to the target with: log on again"
                .into(),
            audit: AuditKind::Denied,
        });
    };
    // A Create the target carries out must be tracked (and so deleted at
    // session end), so it is let finish briefly even if the session ends.
    let response_limit = info.response_limit(config.listen.max_envelope_size);
    session.ender.set_completing(is_create);
    let asked = Instant::now();
    let exchanged = session
        .targets
        .exchange(&target, &addresses, credentials, &rewritten, wait, response_limit)
        .await;
    session.ender.set_completing(false);
    *target_time = Some(asked.elapsed());
    let response = match exchanged {
        Ok(response) => response,
        Err(error) => {
            // The connection's span says whose request this was; the line says which.
            tracing::warn!(n = session.requests, action = info.action_name(), target = %target.name, side = ?error.side(), %error, "target request failed");
            shared.metrics.target_error(&target.name, error.label());
            return fail(target_failure(&error));
        }
    };
    if let Ok(answer) = wsman::parse_response(&response.body) {
        event.exit_code = answer.exit_code.filter(|_| answer.command_done);
        if event.shell_id.is_none() {
            event.shell_id.clone_from(&answer.created_shell_id);
        }
        session
            .shells
            .track(&info, &target, &addresses, &answer, response.status, shell_slot);
        if let Some(transcript) = session.transcript.as_mut() {
            transcript.record(&Exchange {
                info: &info,
                command: event.command.as_deref(),
                target: &target.name,
                request: plain,
                succeeded: response.status.is_success() && answer.fault.is_none(),
                response: &response.body,
                answer: &answer,
            });
        }
        if let Some(fault) = answer.fault {
            event.reason = fault.reason.or(fault.subcode);
        }
    }
    Ok((response.status, response.body))
}

/// Decides `user`'s request to `target`, returning the addresses the policy checked and the
/// relay may connect to: the peer of the session's live connection to it, else a lookup.
/// Nothing is looked up for a user no rule could grant the target, so such a user cannot
/// make the relay resolve names.
async fn checked_addresses(
    session: &Session,
    config: &Config,
    metrics: &Metrics,
    user: &str,
    target: &ResolvedTarget,
    resource_uri: Option<&str>,
) -> Result<Vec<IpAddr>, Failure> {
    let policy = &config.policy;
    let addresses = if policy.may_reach(user, target) {
        match session.targets.live_peer(&target.name) {
            Some(peer) => vec![peer],
            None => upstream::lookup_addresses(target).await.map_err(|e| {
                metrics.target_error(&target.name, e.label());
                target_failure(&e)
            })?,
        }
    } else {
        Vec::new()
    };
    match policy.decide(user, target, &addresses, resource_uri) {
        Decision::Allow { .. } => Ok(addresses),
        Decision::Deny { reason } => {
            tracing::info!(target = %target.name, %reason, "request denied");
            Err(Failure {
                kind: FaultKind::AccessDenied,
                message: reason,
                audit: AuditKind::Denied,
            })
        }
    }
}

fn record_request(event: &mut AuditEvent, info: &RequestInfo) {
    event.action = Some(info.action_name().to_string());
    event.resource_uri = info.resource_uri.clone();
    event.shell_id = info.shell_id.clone();
    let is_powershell = info
        .resource_uri
        .as_deref()
        .is_some_and(|uri| matches!(wsman::shell_kind(uri), wsman::ShellKind::PowerShell { .. }));
    // PSRP commands travel as base64 fragments: audit the pipeline they carry.
    event.command = match (&info.command_line, is_powershell) {
        (Some(fragments), true) => wsman::psrp_command_summary(fragments).or_else(|| Some(fragments.clone())),
        (command, _) => command.clone(),
    };
}

fn target_failure(error: &UpstreamError) -> Failure {
    Failure {
        kind: error.fault_kind(),
        message: error.to_string(),
        audit: AuditKind::Request,
    }
}

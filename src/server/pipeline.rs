//! The relay pipeline for one authenticated request, top to bottom:
//! unseal -> parse envelope -> policy -> rewrite -> target -> inspect ->
//! seal for the caller -> audit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::reply::{self, HttpResponse};
use super::session::{read_body, OpenShell, Session};
use super::Shared;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::ResolvedTarget;
use crate::policy::Decision;
use crate::proto::sealing::{self, SealProtocol};
use crate::proto::wsman::{self, FaultKind, RequestInfo};
use crate::target::{self, TargetConnection, TargetError};

/// Margin over a request's OperationTimeout before the relay gives up on
/// the target: a Receive may legitimately wait that long.
const OPERATION_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
const RELAY_MACHINE: &str = "winrm-relay";

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

pub(crate) async fn identify(request: Request<Incoming>, shared: &Shared) -> HttpResponse {
    match read_body(request, shared).await {
        Ok(_) => reply::soap(StatusCode::OK, wsman::identify_response()),
        Err(error) => reply::plain(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string()),
    }
}

/// A request that failed before or at the target: its fault and audit fields.
struct Failure {
    kind: FaultKind,
    message: String,
    audit: AuditKind,
}

pub(crate) async fn relay(
    session: &mut Session,
    content_type: &str,
    body: Bytes,
    route: Route,
    shared: &Shared,
) -> HttpResponse {
    let started = Instant::now();
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
        return reply::refused_401("unencrypted WS-Man bodies are refused over HTTP; enable message encryption");
    }
    let unsealed = if sealed {
        unseal(session, &body)
    } else {
        Ok(body.to_vec())
    };
    let plain = match unsealed {
        Ok(plain) => plain,
        Err(message) => {
            let mut event = session.event(AuditKind::Request);
            event.status = Some(400);
            event.reason = Some(message.clone());
            event.bytes_in = Some(0);
            event.bytes_out = Some(message.len() as u64);
            event.duration_ms = Some(started.elapsed().as_millis() as u64);
            shared.audit.emit(&event);
            if sealed {
                // The CredSSP channel is out of step (or under attack): it
                // cannot carry another message, so end the session now rather
                // than keep the credentials for a connection that is useless.
                session.end(shared, &message).await;
                return reply::closing(StatusCode::BAD_REQUEST, &message);
            }
            return reply::plain(StatusCode::BAD_REQUEST, &message);
        }
    };
    let mut event = session.event(AuditKind::Request);
    event.bytes_in = Some(plain.len() as u64);
    let outcome = forward(session, &plain, route, shared, &mut event).await;
    let (status, xml) = match outcome {
        Ok((status, xml)) => (status, xml),
        Err((failure, relates_to)) => {
            event.event = failure.audit;
            event.reason = Some(failure.message.clone());
            let xml = wsman::fault_envelope(failure.kind, relates_to.as_deref(), RELAY_MACHINE, &failure.message);
            (StatusCode::INTERNAL_SERVER_ERROR, xml)
        }
    };
    event.status = Some(status.as_u16());
    event.bytes_out = Some(xml.len() as u64);
    event.duration_ms = Some(started.elapsed().as_millis() as u64);
    shared.audit.emit(&event);
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
            tracing::error!(session = %session.id, %error, "cannot seal the response");
            reply::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the relay could not encrypt the response",
            )
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
    let Some(name) = route.target else {
        return fail(Failure {
            kind: FaultKind::DestinationUnreachable,
            message: "no target named: connect to http://<relay>:<port>/wsman/<target>, or to the listener \
                      configured for that target"
                .into(),
            audit: AuditKind::Denied,
        });
    };
    let target = match shared.config.resolve_target(&name) {
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
    event.tls_verified = target.https.then_some(target.tls_verify);
    let user = session.principal().unwrap_or_default().to_string();
    if let Decision::Deny { reason } = shared.policy.decide(&user, &target, info.resource_uri.as_deref()) {
        tracing::info!(session = %session.id, user, target = %target.name, %reason, "request denied");
        return fail(Failure {
            kind: FaultKind::AccessDenied,
            message: reason,
            audit: AuditKind::Denied,
        });
    }
    if let Err(failure) = check_shell_owner(session, &info, &target) {
        return fail(failure);
    }
    let quota_refusal = |quota: super::limits::QuotaError| Failure {
        kind: FaultKind::QuotaLimit,
        message: quota.to_string(),
        audit: AuditKind::Denied,
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
    let max_timeout = shared.config.limits.max_operation_timeout;
    let rewritten = match wsman::rewrite_request(plain, &target.url, max_timeout) {
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
    let response_limit = info.response_limit(shared.config.listen.max_envelope_size);
    let response = match exchange(session, &target, &rewritten, wait, response_limit).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(session = %session.id, target = %target.name, %error, "target request failed");
            return fail(target_failure(&error));
        }
    };
    if let Ok(answer) = wsman::parse_response(&response.body) {
        event.exit_code = answer.exit_code.filter(|_| answer.command_done);
        if event.shell_id.is_none() {
            event.shell_id.clone_from(&answer.created_shell_id);
        }
        track_shells(session, &info, &target, &answer, response.status, shell_slot);
        if let Some(fault) = answer.fault {
            event.reason = fault.reason.or(fault.subcode);
        }
    }
    Ok((response.status, response.body))
}

/// A shell belongs to the session (hence the user) that created it, on the
/// target it was created on: no other session may name it, even one of a
/// user allowed on the same target.
fn check_shell_owner(session: &Session, info: &RequestInfo, target: &ResolvedTarget) -> Result<(), Failure> {
    let Some(shell_id) = info.shell_id.as_deref() else {
        return Ok(());
    };
    if info.action_name() == "Create" {
        return Ok(());
    }
    let denied = |message: String| Failure {
        kind: FaultKind::AccessDenied,
        message,
        audit: AuditKind::Denied,
    };
    match session.shells.get(shell_id) {
        None => Err(denied(format!(
            "shell {shell_id} was not opened in this session: a shell belongs to the session that created it"
        ))),
        Some(open) if !open.target.name.eq_ignore_ascii_case(&target.name) => Err(denied(format!(
            "shell {shell_id} belongs to target {}, not {}",
            open.target.name, target.name
        ))),
        Some(_) => Ok(()),
    }
}

/// Remember shells the target created; forget the ones it deleted (or no
/// longer knows).
fn track_shells(
    session: &mut Session,
    info: &RequestInfo,
    target: &ResolvedTarget,
    answer: &wsman::ResponseInfo,
    status: StatusCode,
    shell_slot: Option<super::limits::Slot>,
) {
    match (info.action_name(), shell_slot, answer.created_shell_id.as_ref()) {
        ("Create", Some(slot), Some(shell_id)) if status.is_success() => {
            let open = OpenShell {
                target: target.clone(),
                resource_uri: info.resource_uri.clone().unwrap_or_default(),
                _slot: slot,
            };
            session.shells.insert(shell_id.clone(), open);
        }
        ("Delete", _, _) => {
            let unknown_to_target = answer
                .fault
                .as_ref()
                .is_some_and(|f| f.subcode.as_deref() == Some("InvalidSelectors"));
            if let Some(shell_id) = &info.shell_id {
                if status.is_success() || unknown_to_target {
                    session.shells.remove(shell_id);
                }
            }
        }
        _ => {}
    }
}

/// At session end: delete every shell the caller left open (leaked shells
/// count against the target's MaxShellsPerUser), while the credentials to
/// do so are still in the vault.
pub(crate) async fn delete_leftover_shells(session: &mut Session, shared: &Shared) {
    let shells: Vec<(String, OpenShell)> = session.shells.drain().collect();
    for (shell_id, shell) in shells {
        let started = Instant::now();
        let mut event = session.event(AuditKind::Cleanup);
        event.target = Some(shell.target.name.clone());
        event.action = Some("Delete".into());
        event.resource_uri = Some(shell.resource_uri.clone());
        event.shell_id = Some(shell_id.clone());
        let request = wsman::delete_shell_request(&shell.target.url, &shell.resource_uri, &shell_id);
        let limit = shared.config.listen.max_envelope_size;
        match exchange(session, &shell.target, &request, shell.target.timeout, limit).await {
            Ok(response) => event.status = Some(response.status.as_u16()),
            Err(error) => event.reason = Some(error.to_string()),
        }
        event.duration_ms = Some(started.elapsed().as_millis() as u64);
        tracing::info!(session = %session.id, shell = %shell_id, target = %shell.target.name, "deleted a shell left open");
        shared.audit.emit(&event);
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

/// Send on the session's connection to this target, opening (and
/// authenticating) one when there is none or the target closed it.
async fn exchange(
    session: &mut Session,
    target: &ResolvedTarget,
    soap: &[u8],
    wait: Duration,
    max_envelope: usize,
) -> Result<target::TargetResponse, TargetError> {
    let key = target.name.to_ascii_lowercase();
    if session.targets.get(&key).is_some_and(TargetConnection::is_closed) {
        session.targets.remove(&key);
    }
    if !session.targets.contains_key(&key) {
        let credentials = session.vault.get().ok_or_else(|| TargetError::AuthRejected {
            target: target::describe(target),
            user: "(no delegated credentials)".into(),
        })?;
        let connection = TargetConnection::open(target, credentials).await?;
        session.targets.insert(key.clone(), connection);
    }
    let Some(connection) = session.targets.get_mut(&key) else {
        return Err(TargetError::Http {
            target: target::describe(target),
            detail: "connection lost".into(),
        });
    };
    let result = connection.exchange(soap, wait, max_envelope).await;
    if result.is_err() {
        // The context's sequence numbers may be out of step: start afresh next time.
        session.targets.remove(&key);
    }
    result
}

fn target_failure(error: &TargetError) -> Failure {
    let kind = if error.is_auth() {
        FaultKind::AccessDenied
    } else {
        FaultKind::DestinationUnreachable
    };
    Failure {
        kind,
        message: error.to_string(),
        audit: AuditKind::Request,
    }
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

//! The relay pipeline for one logged-on request. [`relay`] reads top to
//! bottom, one named stage a line:
//!
//! `require_encryption` -> `unseal` -> `parse` -> `check_readable` ->
//! `check_audit` -> `resolve` -> `authorize` (policy, on the addresses the
//! relay will connect to) -> `check_shell_owner` -> `admit` (quotas) ->
//! `rewrite` -> `exchange` (the target) -> `inspect` (exit code, shells,
//! transcript) -> `answer` (sealed for the caller) and the request's audit line.
//!
//! A stage that refuses returns a [`Refusal`]; [`relay`] turns it into the
//! answer (a WS-Man fault in the request's own encryption, or an HTTP error),
//! and the request's audit line carries it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;

use super::limits::Slot;
use super::refusal::{Answer, Refusal};
use super::reply::{self, HttpResponse};
use super::request::Route;
use super::session::ActiveSession;
use super::Shared;
use crate::audit::transcript::Exchange;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::Config;
use crate::metrics::RequestSample;
use crate::policy::{Caller, Decision};
use crate::proto::sealing::{self, SealProtocol};
use crate::proto::wsman::{self, FaultKind, RequestInfo, ResponseInfo};
use crate::resolve::ResolvedTarget;
use crate::upstream::{self, TargetResponse, UpstreamError};

/// Margin over a request's OperationTimeout before the relay gives up on
/// the target: a Receive may legitimately wait that long.
const OPERATION_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
const RELAY_MACHINE: &str = "winrm-relay";
/// The audited status of a request cancelled before its answer.
const CANCELLED_STATUS: u16 = 499;

/// A stage's refusal, and the request's MessageID once known (a fault relates to it).
struct Refused {
    refusal: Refusal,
    relates_to: Option<String>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused {
            refusal,
            relates_to: None,
        }
    }
}

/// The one way into the pipeline: a logged-on request's body, relayed to its
/// target and answered in kind. Every request is audited, also one cancelled
/// half-way because the caller went away or the session ended.
pub(crate) async fn relay(
    mut session: ActiveSession<'_>,
    content_type: &str,
    body: Bytes,
    route: Route,
    shared: &Shared,
) -> HttpResponse {
    session.link.requests += 1;
    if body.is_empty() {
        // The empty POST clients use to (re)check authentication.
        return reply::ok_empty();
    }
    let sealed = sealing::protocol_of(content_type);
    let mut audit = RequestAudit::new(shared, session.event(AuditKind::Request));
    let relayed = async {
        require_encryption(sealed.is_some(), session.link.https)?;
        let plain = unseal(&mut session, sealed, &body)?;
        audit.event.bytes_in = Some(plain.len() as u64);
        forward(&mut session, &plain, route, shared, &mut audit).await
    }
    .await;
    let (status, xml) = match relayed {
        Ok(response) => (response.status, response.body),
        Err(Refused { refusal, relates_to }) => {
            refusal.note(&mut audit.event, &shared.metrics);
            let Answer::Fault(kind) = refusal.answer else {
                // Refused before the envelope was read: an HTTP error, no fault.
                audit.event.bytes_in.get_or_insert(0);
                audit.event.bytes_out = Some(refusal.reason.len() as u64);
                audit.finish();
                if refusal.close {
                    session.link.ender.end(&refusal.reason);
                }
                return refusal.reply();
            };
            let xml = wsman::fault_envelope(kind, relates_to.as_deref(), RELAY_MACHINE, &refusal.reason);
            (StatusCode::INTERNAL_SERVER_ERROR, xml)
        }
    };
    audit.event.status = Some(status.as_u16());
    audit.event.bytes_out = Some(xml.len() as u64);
    if session.link.ender.is_ended() {
        // Let finish after the session was told to end (a Create): the caller
        // never sees this answer.
        audit.event.reason = Some("the caller went away or the session ended before the answer reached it".into());
    }
    audit.finish();
    answer(&mut session, sealed, status, &xml)
}

/// AllowUnencrypted=false, as on Windows: over HTTP, clear bodies never
/// leave the relay. Over HTTPS the TLS layer protects them.
fn require_encryption(sealed: bool, https: bool) -> Result<(), Refused> {
    if sealed || https {
        return Ok(());
    }
    let reason =
        "unencrypted request body refused: WS-Man bodies over HTTP must be encrypted; enable message encryption";
    Err(Refusal::unauthorized(reason).into())
}

fn unseal(session: &mut ActiveSession<'_>, sealed: Option<SealProtocol>, body: &[u8]) -> Result<Vec<u8>, Refused> {
    let unsealed = match sealed {
        None => return Ok(body.to_vec()),
        Some(SealProtocol::CredSsp) => sealing::parse_body(SealProtocol::CredSsp, body)
            .map_err(|e| format!("bad encrypted body: {e}"))
            .and_then(|parts| match session.active.channel.as_deref_mut() {
                Some(channel) => channel
                    .unseal(&parts)
                    .map_err(|e| format!("cannot decrypt the request: {e}")),
                None => Err("this session has no CredSSP channel to decrypt with".into()),
            }),
        Some(SealProtocol::Spnego) => sealing::parse_wrap_token_body(body)
            .map_err(|e| format!("bad encrypted body: {e}"))
            .and_then(|part| match session.active.wrap.as_deref_mut() {
                Some(keys) => keys
                    .unseal(&part)
                    .map_err(|e| format!("cannot decrypt the request: {e}")),
                None => Err("this session has no Kerberos context to decrypt with".into()),
            }),
    };
    // The channel or context is out of step (or under attack): it cannot carry
    // another message, so the session ends now rather than keep the
    // credentials for a connection that is useless.
    unsealed.map_err(|reason| Refusal::unreadable(reason).closing().into())
}

/// Answer in kind: sealed when the request was.
fn answer(
    session: &mut ActiveSession<'_>,
    sealed: Option<SealProtocol>,
    status: StatusCode,
    xml: &[u8],
) -> HttpResponse {
    let Some(protocol) = sealed else {
        return reply::soap(status, xml.to_vec());
    };
    let sealed = match (
        protocol,
        session.active.channel.as_deref_mut(),
        session.active.wrap.as_deref_mut(),
    ) {
        (SealProtocol::CredSsp, Some(channel), _) => channel.seal(xml).map_err(|e| e.to_string()),
        (SealProtocol::Spnego, _, Some(keys)) => keys.seal(xml).map(|part| vec![part]).map_err(|e| e.to_string()),
        // unseal refused such a request already: nothing to seal with.
        _ => Err("this session has nothing to seal with".into()),
    };
    match sealed {
        Ok(parts) => reply::sealed(status, protocol, &parts),
        Err(error) => {
            tracing::error!(%error, "cannot seal the response");
            Refusal::relay_fault("the relay could not encrypt the response").reply()
        }
    }
}

/// The stages from the envelope to the target's answer.
async fn forward(
    session: &mut ActiveSession<'_>,
    plain: &[u8],
    route: Route,
    shared: &Shared,
    audit: &mut RequestAudit<'_>,
) -> Result<TargetResponse, Refused> {
    let info = parse(plain)?;
    record_request(&mut audit.event, &info);
    let relates_to = info.message_id.clone();
    let refused = |refusal| Refused {
        refusal,
        relates_to: relates_to.clone(),
    };
    check_readable(&info).map_err(refused)?;
    check_audit(shared).map_err(refused)?;
    let config = shared.config();
    let target = resolve(&config, route, &mut audit.event).map_err(refused)?;
    let addresses = authorize(session, &config, shared, &target, &info, &mut audit.event)
        .await
        .map_err(refused)?;
    check_shell_owner(session, &info, &target).map_err(refused)?;
    let admitted = admit(shared, &session.active.counted, &info).map_err(refused)?;
    let rewritten = rewrite(plain, &info, &target, &config).map_err(refused)?;
    let response = exchange(session, &info, &target, &addresses, &rewritten, &config, shared, audit)
        .await
        .map_err(refused)?;
    inspect(
        session,
        &info,
        &target,
        &addresses,
        &response,
        admitted.shell,
        plain,
        audit,
    );
    Ok(response)
}

fn parse(plain: &[u8]) -> Result<RequestInfo, Refused> {
    wsman::parse_request(plain).map_err(|error| {
        let reason = format!("the relay cannot parse the request envelope: {error}");
        Refusal::fault(FaultKind::InternalError, reason, AuditKind::Request).into()
    })
}

/// Fail closed: a request whose resource or shell the relay cannot read
/// could slip past the shell rules and the shell ownership check.
fn check_readable(info: &RequestInfo) -> Result<(), Refusal> {
    match info.resource_uri_problem().or_else(|| info.shell_id_problem()) {
        Some(problem) => Err(Refusal::fault(
            FaultKind::AccessDenied,
            format!("the relay refuses a request it cannot check: {problem}"),
            AuditKind::Denied,
        )),
        None => Ok(()),
    }
}

/// Nothing leaves the relay that the audit cannot record.
fn check_audit(shared: &Shared) -> Result<(), Refusal> {
    if !shared.audit.refuses_requests() {
        return Ok(());
    }
    Err(Refusal::fault(
        FaultKind::InternalError,
        "the relay's audit log cannot be written: request refused (audit.on_failure = \"refuse\"); \
         free space or fix the log, requests resume on their own",
        AuditKind::Denied,
    ))
}

/// Which target the request names, as configured or as a host.
fn resolve(config: &Config, route: Route, event: &mut AuditEvent) -> Result<ResolvedTarget, Refusal> {
    let Some(name) = route.target else {
        return Err(Refusal::fault(
            FaultKind::DestinationUnreachable,
            "no target named: connect to http://<relay>:<port>/wsman/<target>, or to the listener \
             configured for that target",
            AuditKind::Denied,
        ));
    };
    let target = config.resolve_target(&name).map_err(|error| {
        event.target = Some(name.clone());
        Refusal::fault(
            FaultKind::DestinationUnreachable,
            format!("unknown target {name}: {error}"),
            AuditKind::Denied,
        )
    })?;
    event.target = Some(target.name.clone());
    // Every https target's certificate is checked: against CAs, or its pinned fingerprint.
    event.tls_verified = target.https.then_some(true);
    Ok(target)
}

/// Decides the request, returning the addresses the policy checked and the relay may
/// connect to: the peer of the session's live connection to the target, else a lookup.
/// Nothing is looked up for a user no rule could grant the target, so such a user
/// cannot make the relay resolve names.
async fn authorize(
    session: &ActiveSession<'_>,
    config: &Config,
    shared: &Shared,
    target: &ResolvedTarget,
    info: &RequestInfo,
    event: &mut AuditEvent,
) -> Result<Vec<IpAddr>, Refusal> {
    let policy = &config.policy;
    let caller = Caller {
        user: session.active.principal.as_str(),
        groups: &session.active.groups,
    };
    let addresses = if policy.may_reach(caller, target) {
        match session.active.targets.live_peer(&target.name) {
            Some(peer) => vec![peer],
            None => upstream::lookup_addresses(target)
                .await
                .map_err(|e| target_failure(shared, target, &e))?,
        }
    } else {
        Vec::new()
    };
    match policy.decide(caller, target, &addresses, info.resource_uri.as_deref()) {
        Decision::Allow { rule, group } => {
            event.rule = Some(rule);
            event.group = group;
            Ok(addresses)
        }
        Decision::Deny { reason } => {
            tracing::info!(target = %target.name, %reason, "request denied");
            Err(Refusal::fault(FaultKind::AccessDenied, reason, AuditKind::Denied))
        }
    }
}

fn check_shell_owner(session: &ActiveSession<'_>, info: &RequestInfo, target: &ResolvedTarget) -> Result<(), Refusal> {
    session
        .active
        .shells
        .check_owner(info, target)
        .map_err(|reason| Refusal::fault(FaultKind::AccessDenied, reason, AuditKind::Denied))
}

/// The quota places a request holds while it runs.
struct Admitted {
    _operation: Slot,
    /// A Create's place among the user's shells, kept by the shell it makes.
    shell: Option<Slot>,
}

fn admit(shared: &Shared, user: &str, info: &RequestInfo) -> Result<Admitted, Refusal> {
    let refuse = |quota| Refusal::quota(&quota).in_fault(FaultKind::QuotaLimit);
    let operation = shared.quotas.operation(user).map_err(refuse)?;
    let shell = match info.action_name() {
        "Create" => Some(shared.quotas.shell(user).map_err(refuse)?),
        _ => None,
    };
    Ok(Admitted {
        _operation: operation,
        shell,
    })
}

fn rewrite(plain: &[u8], info: &RequestInfo, target: &ResolvedTarget, config: &Config) -> Result<Vec<u8>, Refusal> {
    wsman::rewrite_request(plain, info, &target.url, config.limits.max_operation_timeout).map_err(|error| {
        Refusal::fault(
            FaultKind::InternalError,
            format!("the relay cannot rewrite the request envelope: {error}"),
            AuditKind::Request,
        )
    })
}

/// Send the request on the session's connection to the target. A Create the
/// target carries out must be tracked (and so deleted at session end), so it
/// is let finish briefly even if the session ends.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    session: &mut ActiveSession<'_>,
    info: &RequestInfo,
    target: &ResolvedTarget,
    addresses: &[IpAddr],
    rewritten: &[u8],
    config: &Config,
    shared: &Shared,
    audit: &mut RequestAudit<'_>,
) -> Result<TargetResponse, Refusal> {
    let max_timeout = config.limits.max_operation_timeout;
    let wait = info
        .operation_timeout_within(max_timeout)
        .map(|op| (op + OPERATION_TIMEOUT_MARGIN).max(target.timeout))
        .unwrap_or(target.timeout);
    let response_limit = info.response_limit(config.listen.max_envelope_size);
    let ender = session.link.ender.clone();
    ender.set_completing(info.action_name() == "Create");
    let asked = Instant::now();
    let active = &mut *session.active;
    let exchanged = active
        .targets
        .exchange(target, addresses, &active.credentials, rewritten, wait, response_limit)
        .await;
    ender.set_completing(false);
    audit.target_time = Some(asked.elapsed());
    exchanged.map_err(|error| {
        // The connection's span says whose request this was; the line says which.
        tracing::warn!(n = session.link.requests, action = info.action_name(), target = %target.name, side = ?error.side(), %error, "target request failed");
        target_failure(shared, target, &error)
    })
}

/// What the answer says: the exit code for the audit, the shells the session
/// now owns, and the transcript.
#[allow(clippy::too_many_arguments)]
fn inspect(
    session: &mut ActiveSession<'_>,
    info: &RequestInfo,
    target: &ResolvedTarget,
    addresses: &[IpAddr],
    response: &TargetResponse,
    shell_slot: Option<Slot>,
    plain: &[u8],
    audit: &mut RequestAudit<'_>,
) {
    let Ok(answer) = wsman::parse_response(&response.body) else {
        return;
    };
    let event = &mut audit.event;
    event.exit_code = answer.exit_code.filter(|_| answer.command_done);
    if event.shell_id.is_none() {
        event.shell_id.clone_from(&answer.created_shell_id);
    }
    let active = &mut *session.active;
    active
        .shells
        .track(info, target, addresses, &answer, response.status, shell_slot);
    if let Some(transcript) = active.transcript.as_mut() {
        transcript.record(&Exchange {
            info,
            command: event.command.as_deref(),
            target: &target.name,
            request: plain,
            succeeded: response.status.is_success() && answer.fault.is_none(),
            response: &response.body,
            answer: &answer,
        });
    }
    record_fault(event, answer);
}

fn record_fault(event: &mut AuditEvent, answer: ResponseInfo) {
    if let Some(fault) = answer.fault {
        event.reason = fault.reason.or(fault.subcode);
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

/// A target that could not be reached or refused the caller: counted, and a
/// fault for the caller.
fn target_failure(shared: &Shared, target: &ResolvedTarget, error: &UpstreamError) -> Refusal {
    shared.metrics.target_error(&target.name, error.label());
    Refusal::fault(error.fault_kind(), error.to_string(), AuditKind::Request)
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

//! The one edge where a refusal becomes an answer, an audit line and metrics.
//!
//! Every stage that can refuse (accept, body, logon, the pipeline's stages)
//! returns a [`Refusal`]: how the caller is answered, why, what kind of audit
//! line it writes, whose name it carries, which limit was hit and whether the
//! connection closes. Only this module turns one into a reply and a record, so
//! a refusal is answered, audited and counted the same way wherever it arises.
//!
//! Refusals of callers not logged on are what anyone can cause at will, so
//! their audit lines go through [`Summaries`]: a flood from one source is
//! written as a few lines and then one summary per interval with a `count`,
//! while the metrics count every refusal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::StatusCode;

use super::limits::{PendingRefusal, QuotaError, SourceNet};
use super::reply::{self, HttpResponse};
use super::Shared;
use crate::audit::{AuditEvent, AuditKind, AuditSink, AuthMethod};
use crate::metrics::Metrics;
use crate::proto::wsman::FaultKind;

/// What a 503 (a limit, a place to log on) tells the caller to wait before
/// trying again.
const RETRY_AFTER_SECS: u64 = 5;

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
    /// Nothing: the connection is dropped unanswered (at accept, or shed).
    Drop,
}

/// Why a caller not logged on was refused, for the metric (one byte: a
/// refusal travels by value through the pipeline's results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Denied,
    AuthFailed,
    AllowSources,
    Shed,
    /// The limit in `limit`.
    Limit,
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
    /// The caller proved who it is (a quota refused its logon): not one of the
    /// refusals before logon that are summarised.
    proven: bool,
    /// Why, as the metric of refusals before logon names it.
    cause: Cause,
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
            proven: false,
            cause: Cause::Denied,
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
            cause: Cause::AuthFailed,
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

    /// A quota (sessions, shells, operations) refused it: `503`. Only callers
    /// who proved who they are meet a quota.
    pub fn quota(quota: &QuotaError) -> Refusal {
        Refusal {
            limit: Some(quota.limit()),
            proven: true,
            ..Refusal::denied(StatusCode::SERVICE_UNAVAILABLE, quota.to_string())
        }
    }

    /// The connection found no place to wait to log on: `503`, and it closes.
    pub fn pending(refusal: &PendingRefusal) -> Refusal {
        Refusal {
            limit: Some(refusal.limit()),
            cause: Cause::Limit,
            close: true,
            ..Refusal::denied(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string())
        }
    }

    /// A connection from a source outside `listen.allow_sources`: dropped
    /// unanswered (such a source learns nothing of the relay), audited.
    pub fn unlisted_source() -> Refusal {
        Refusal {
            cause: Cause::AllowSources,
            ..Refusal::new(Answer::Drop, "source address not in listen.allow_sources").audited(AuditKind::Denied)
        }
    }

    /// An idle connection waiting to log on, closed to make room for another
    /// when every place was taken.
    pub fn shed() -> Refusal {
        Refusal {
            limit: Some("max_sessions"),
            cause: Cause::Shed,
            ..Refusal::new(
                Answer::Drop,
                "an idle connection waiting to log on was closed to make room for another (limits.max_sessions)",
            )
            .audited(AuditKind::Denied)
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

    /// The cause as the metric's label names it.
    fn cause(&self) -> &'static str {
        match self.cause {
            Cause::Denied => "denied",
            Cause::AuthFailed => "auth_failed",
            Cause::AllowSources => "allow_sources",
            Cause::Shed => "shed",
            Cause::Limit => self.limit.unwrap_or("denied"),
        }
    }

    /// Whether this refusal meets a caller not logged on (`event` is the
    /// session's, before [`Refusal::note`] names anyone): one of those
    /// anyone can cause at will.
    fn before_logon(&self, event: &AuditEvent) -> bool {
        event.user.is_none() && !self.proven
    }

    /// Fill `event` (the session's, or the request's) and count the refusal.
    /// Whether the event is written is for the caller: the pipeline's request
    /// line is written once, with its sizes and times.
    pub fn note(&self, event: &mut AuditEvent, metrics: &Metrics) {
        if self.audit.is_some() && self.before_logon(event) {
            metrics.refused_before_logon(self.cause());
        }
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

    /// Audit (when the refusal is audited) and count it. A refusal before
    /// logon is written at once or left to a summary (see [`Summaries`]).
    pub fn record(&self, mut event: AuditEvent, shared: &Shared) {
        let before_logon = self.before_logon(&event);
        self.note(&mut event, &shared.metrics);
        if self.audit.is_none() {
            return;
        }
        if before_logon {
            event.count = Some(1);
            if !shared.refusals.offer(&event, Instant::now()) {
                return;
            }
        }
        shared.audit.emit(&event);
    }

    /// Audit and count it for a connection that has no session (refused at
    /// accept, shed, or without a place): the line names its source only.
    pub fn record_connection(&self, peer: SocketAddr, shared: &Shared) {
        let event = AuditEvent {
            source: Some(peer.to_string()),
            ..AuditEvent::default()
        };
        self.record(event, shared);
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
        let mut response = match self.answer {
            Answer::Unauthorized => reply::refused_401(&self.reason),
            Answer::CredSspRejected(token) => reply::credssp_401(&token),
            Answer::BasicChallenge => reply::basic_401(),
            // A fault's envelope is the pipeline's to build and seal.
            Answer::Plain(_) | Answer::Fault(_) | Answer::Drop => reply::plain(status, &self.reason),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.close {
            reply::with_close(response)
        } else {
            response
        }
    }

    /// The answer as bytes on the wire, for a connection no HTTP server runs
    /// on (one that found no place): the status, `Retry-After` on a 503, and
    /// the reason; the connection closes after it.
    pub fn wire_answer(&self) -> Vec<u8> {
        let status = self.status();
        let body = format!("{}\n", self.reason);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            head.push_str(&format!("Retry-After: {RETRY_AFTER_SECS}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }
}

/// Once a (source, subject) is flooding, at most one line per this interval
/// stands for its refusals.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Lines written at once per (source, subject) in an interval, before the rest
/// is left to a summary: enough for a lockout (5 failures by default) and the
/// refused tries after it to stay lines of their own.
const BURST: u32 = 10;
/// Lines written at once per source in an interval, whatever the subjects.
const SOURCE_BURST: u32 = 20;
/// Subjects kept apart per source; more fold into the source's "other" one.
const SOURCE_SUBJECTS: usize = 8;
/// (Source, subject) entries in all; more fold into one for "other sources".
const MAX_ENTRIES: usize = 1024;
/// Longest name or reason kept for a summary: both may be the caller's choice.
const MAX_KEPT: usize = 200;

/// Refusals before logon, per (source, subject) and interval: the first few
/// are written at once, the rest counted into one line per interval with a
/// `count`, so that what a peer can make the relay write is bounded however
/// fast it connects. A subject is the name a failed logon claimed (failed
/// logons naming a user stay visible, per user), else the reason; a source is
/// an IPv4 address or an IPv6 /64. Memory is bounded: past [`MAX_ENTRIES`],
/// new sources share one "other sources" entry.
#[derive(Default)]
pub(crate) struct Summaries {
    state: Mutex<SummaryState>,
}

#[derive(Default)]
struct SummaryState {
    entries: HashMap<Key, Entry>,
    sources: HashMap<Option<SourceNet>, SourceBudget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `None`: the "other sources" entry.
    source: Option<SourceNet>,
    kind: &'static str,
    subject: Subject,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Reason(String),
    /// The source's subjects past [`SOURCE_SUBJECTS`], or the other sources'.
    Other,
}

struct Entry {
    /// When the current interval began.
    since: Instant,
    /// Lines written at once in the current interval.
    written: u32,
    /// Refusals counted and not written yet.
    unwritten: u64,
    /// The last refusal counted, trimmed: what its summary line says.
    last: Option<AuditEvent>,
    /// A summary was written: until a quiet interval, every refusal is counted.
    flooding: bool,
}

struct SourceBudget {
    since: Instant,
    written: u32,
    /// Entries of this source.
    subjects: usize,
}

fn kept(text: &str) -> String {
    text.chars().take(MAX_KEPT).collect()
}

impl Summaries {
    fn state(&self) -> MutexGuard<'_, SummaryState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Count a refusal before logon: `true` when its line is to be written now,
    /// `false` when a summary will stand for it.
    pub fn offer(&self, event: &AuditEvent, now: Instant) -> bool {
        let source = event
            .source
            .as_deref()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .map(|peer| SourceNet::of(peer.ip()));
        let subject = match (&event.user, &event.reason) {
            (Some(user), _) => Subject::User(kept(&user.to_lowercase())),
            (None, reason) => Subject::Reason(kept(reason.as_deref().unwrap_or_default())),
        };
        let mut key = Key {
            source,
            kind: event.event.name(),
            subject,
        };
        let mut state = self.state();
        let state = &mut *state;
        if !state.entries.contains_key(&key) {
            let subjects = state.sources.get(&key.source).map_or(0, |b| b.subjects);
            if state.entries.len() >= MAX_ENTRIES {
                key.source = None;
                key.subject = Subject::Other;
            } else if subjects >= SOURCE_SUBJECTS {
                key.subject = Subject::Other;
            }
        }
        let budget = state.sources.entry(key.source).or_insert(SourceBudget {
            since: now,
            written: 0,
            subjects: 0,
        });
        let entry = state.entries.entry(key).or_insert_with(|| {
            budget.subjects += 1;
            Entry {
                since: now,
                written: 0,
                unwritten: 0,
                last: None,
                flooding: false,
            }
        });
        if !entry.flooding && entry.written < BURST && budget.written < SOURCE_BURST {
            entry.written += 1;
            budget.written += 1;
            return true;
        }
        entry.unwritten += 1;
        let mut last = event.clone();
        last.user = last.user.as_deref().map(kept);
        last.reason = last.reason.as_deref().map(kept);
        entry.last = Some(last);
        false
    }

    /// The summaries due at `now` (every one still counted, with `all`, as at
    /// exit), and entries quiet for a whole interval forgotten.
    pub fn due(&self, now: Instant, all: bool) -> Vec<AuditEvent> {
        let mut lines = Vec::new();
        let mut state = self.state();
        let state = &mut *state;
        state.entries.retain(|key, entry| {
            if !all && now.duration_since(entry.since) < SUMMARY_INTERVAL {
                return true;
            }
            entry.since = now;
            entry.written = 0;
            if entry.unwritten == 0 {
                if let Some(budget) = state.sources.get_mut(&key.source) {
                    budget.subjects = budget.subjects.saturating_sub(1);
                }
                return false;
            }
            if let Some(mut line) = entry.last.take() {
                line.session = String::new();
                line.source = Some(match key.source {
                    Some(net) => net.to_string(),
                    None => "other sources".into(),
                });
                if key.subject == Subject::Other {
                    line.user = None;
                    line.reason = Some(format!(
                        "refusals for various reasons, the last: {}",
                        line.reason.as_deref().unwrap_or("?")
                    ));
                }
                line.count = Some(entry.unwritten);
                lines.push(line);
            }
            entry.unwritten = 0;
            entry.flooding = true;
            true
        });
        state.sources.retain(|_, budget| {
            if now.duration_since(budget.since) >= SUMMARY_INTERVAL {
                budget.since = now;
                budget.written = 0;
            }
            budget.subjects > 0
        });
        lines
    }

    /// Write the summaries due (all of them, with `all`).
    pub fn write_due(&self, audit: &AuditSink, all: bool) {
        for line in self.due(Instant::now(), all) {
            audit.emit(&line);
        }
    }
}

/// Writes the summaries as they fall due, and the rest when the relay stops.
pub(crate) async fn summarize(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tick.tick() => shared.refusals.write_due(&shared.audit, false),
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

    fn refused(source: &str, user: Option<&str>, reason: &str) -> AuditEvent {
        AuditEvent {
            event: if user.is_some() {
                AuditKind::AuthFailed
            } else {
                AuditKind::Denied
            },
            session: "s".into(),
            source: Some(source.into()),
            user: user.map(str::to_string),
            reason: Some(reason.into()),
            count: Some(1),
            ..AuditEvent::default()
        }
    }

    /// Offers `n` refusals; returns how many were to be written at once.
    fn offer(summaries: &Summaries, event: &AuditEvent, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| summaries.offer(event, now)).count()
    }

    #[test]
    fn a_flood_is_a_few_lines_then_one_summary_per_interval_and_every_refusal_counts() {
        let summaries = Summaries::default();
        let t0 = Instant::now();
        let flood = refused("127.0.0.9:40000", None, "source address not in listen.allow_sources");
        assert_eq!(offer(&summaries, &flood, 1000, t0), BURST as usize);
        assert!(summaries.due(t0 + Duration::from_secs(5), false).is_empty());
        let first = summaries.due(t0 + SUMMARY_INTERVAL, false);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].count, Some(1000 - u64::from(BURST)));
        assert_eq!(first[0].source.as_deref(), Some("127.0.0.9"));
        assert_eq!(first[0].session, "");
        // Still flooding: nothing more is written at once; one line per interval.
        let t1 = t0 + SUMMARY_INTERVAL + Duration::from_secs(1);
        assert_eq!(offer(&summaries, &flood, 500, t1), 0);
        let second = summaries.due(t0 + 2 * SUMMARY_INTERVAL, false);
        assert_eq!(second.iter().map(|l| l.count.unwrap()).sum::<u64>(), 500);
        // A quiet interval later, the source is forgotten and its next refusal is written at once.
        assert!(summaries.due(t0 + 3 * SUMMARY_INTERVAL, false).is_empty());
        assert!(summaries.state().entries.is_empty() && summaries.state().sources.is_empty());
        assert!(summaries.offer(&flood, t0 + 3 * SUMMARY_INTERVAL));
    }

    #[test]
    fn failed_logons_naming_a_user_stay_apart_per_user_and_ipv6_counts_per_64() {
        let summaries = Summaries::default();
        let t0 = Instant::now();
        let alice = refused("[2001:db8::1]:1", Some("LAB\\alice"), "wrong password");
        let alice_elsewhere = refused("[2001:db8::2]:1", Some("lab\\ALICE"), "locked out");
        let bob = refused("[2001:db8::3]:1", Some("LAB\\bob"), "wrong password");
        let first = BURST as usize - 2;
        assert_eq!(offer(&summaries, &alice, first, t0), first);
        assert_eq!(offer(&summaries, &alice_elsewhere, 3, t0), 2);
        assert_eq!(offer(&summaries, &bob, 1, t0), 1);
        let lines = summaries.due(t0 + SUMMARY_INTERVAL, false);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].user.as_deref(), Some("lab\\ALICE"));
        assert_eq!(lines[0].reason.as_deref(), Some("locked out"));
        assert_eq!(
            (lines[0].count, lines[0].source.as_deref()),
            (Some(1), Some("2001:db8::/64"))
        );
    }

    #[test]
    fn a_source_and_the_table_are_bounded() {
        let summaries = Summaries::default();
        let t0 = Instant::now();
        // One source inventing reasons: a few subjects of its own, the rest folded into one.
        let written: usize = (0..100)
            .map(|i| offer(&summaries, &refused("127.0.0.9:1", None, &format!("reason {i}")), 1, t0))
            .sum();
        assert_eq!(written, SOURCE_SUBJECTS + BURST as usize);
        assert!(written <= SOURCE_BURST as usize);
        assert!(summaries.state().entries.len() <= SOURCE_SUBJECTS + 1);
        let lines = summaries.due(t0 + SUMMARY_INTERVAL, false);
        let counted: u64 = lines.iter().map(|l| l.count.unwrap()).sum();
        assert_eq!(counted as usize + written, 100);
        // Many sources: the table stops at its cap, the rest share one line.
        for i in 0..(MAX_ENTRIES as u32 + 50) {
            let source = format!("{}:1", std::net::Ipv4Addr::from(0x0a00_0000 + i));
            offer(&summaries, &refused(&source, None, "flood"), 7, t0 + SUMMARY_INTERVAL);
        }
        assert!(summaries.state().entries.len() <= MAX_ENTRIES + 1);
        let lines = summaries.due(t0 + 2 * SUMMARY_INTERVAL, false);
        let other = lines
            .iter()
            .find(|l| l.source.as_deref() == Some("other sources"))
            .unwrap();
        assert!(other.count.unwrap() >= 50 * 2, "{other:?}");
        assert!(lines.len() <= MAX_ENTRIES + 1);
    }

    #[test]
    fn a_503_says_when_to_retry_on_the_wire_too() {
        let refusal = Refusal::pending(&PendingRefusal::Total);
        let wire = String::from_utf8(refusal.wire_answer()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{wire}");
        assert!(
            wire.contains("\r\nRetry-After: 5\r\n") && wire.contains("Connection: close"),
            "{wire}"
        );
        let reply = refusal.reply();
        assert_eq!(reply.headers().get(RETRY_AFTER).unwrap(), "5");
    }

    #[test]
    fn a_malformed_request_is_answered_but_not_audited() {
        let refusal = Refusal::malformed(StatusCode::NOT_FOUND, "not a WS-Management endpoint");
        assert_eq!(refusal.audit, None);
        assert_eq!(refusal.reply().status(), StatusCode::NOT_FOUND);
    }
}

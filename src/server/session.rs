//! One inbound connection's session: the connection's own facts ([`Link`])
//! and a phase. Until logon the phase holds the connection's place among those
//! waiting to authenticate and the CredSSP exchange under way; once logged on
//! ([`Active`]) it holds the principal, the credentials, the target
//! connections, the shells and the transcript. No code can ask a session that
//! has not logged on for a principal or credentials: there are none to ask.
//! `conn` drives a session, `auth` logs it on and hands the pipeline its
//! [`ActiveSession`], and [`Session::end`] is the one way a session ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command_policy::PolicyStreams;
use super::limits::{Pending, PendingRefusal, Slot};
use super::refusal::Refusal;
use super::shells::{self, Shells};
use super::shutdown::Ender;
use super::Shared;
use crate::audit::transcript::Transcript;
use crate::audit::{AuditEvent, AuditKind, AuthMethod};
use crate::config::Config;
use crate::identity::{Groups, Principal, Sid};
use crate::proto::credssp::{verify_password, Acceptor, SecureChannel};
use crate::proto::kerberos::wrap::WrapKeys;
use crate::proto::psrp::SessionReader;
use crate::upstream::Pool;
use crate::vault::DelegatedCredentials;

/// Whole cleanup at session end: deleting the shells left open, in parallel.
/// Short, so that a session ends within a few seconds of its connection.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(3);
/// A logon waiting for a session slot stops waiting this long before its
/// logon deadline, so that it is answered (503) rather than cut off.
const SLOT_WAIT_MARGIN: Duration = Duration::from_secs(1);

pub(crate) struct Session {
    pub link: Link,
    phase: Phase,
}

/// What a session knows of its connection, in every phase.
pub(crate) struct Link {
    /// New for every logon on the connection, so the audit tells them apart.
    pub id: String,
    pub source: SocketAddr,
    pub fixed_target: Option<String>,
    /// Arrived over the HTTPS listener: TLS protects bodies, Basic is possible.
    pub https: bool,
    /// Requests relayed in this session.
    pub requests: u64,
    /// How the connection asks this session to end.
    pub ender: Arc<Ender>,
    /// When the last request finished: the idle timeouts run from here.
    last_activity: Instant,
}

enum Phase {
    AwaitingLogon(AwaitingLogon),
    Active(Box<Active>),
    /// Ended, and refused a place to log on again: the connection closes.
    Closed,
}

/// A connection that has not logged on (yet, or again after a session ended).
struct AwaitingLogon {
    /// Its place among connections not yet authenticated; released at logon.
    pending: Pending,
    /// When this logon attempt began (accept, or a re-authentication): the
    /// logon deadline runs from here, however many 401s the client collects.
    started: Instant,
    credssp: Option<CredSspExchange>,
}

/// A CredSSP exchange under way; its acceptor is boxed, since most of a
/// session's life it has none.
pub(crate) struct CredSspExchange {
    pub acceptor: Box<Acceptor>,
    pub started: Instant,
}

/// A logged-on session.
pub(crate) struct Active {
    /// `DOMAIN\user`, as policy rules and the audit name it.
    pub principal: String,
    /// The principal in its canonical form (the relay's domain by its NetBIOS
    /// name): what the per-user quotas count under.
    pub counted: String,
    /// The directory groups the rules name that the caller was in at logon: held for
    /// the session (`session.max_lifetime_secs` bounds how long a change waits).
    pub groups: Groups,
    pub method: AuthMethod,
    /// CredSSP's TLS channel, for session encryption; `None` for Basic.
    pub channel: Option<Box<SecureChannel>>,
    /// A plain Kerberos logon's wrap keys, for session encryption.
    pub wrap: Option<Box<WrapKeys>>,
    /// Wiped (zeroized) when the session ends, since it is dropped with it.
    pub credentials: DelegatedCredentials,
    /// This session's place in `limits.max_sessions[_per_user]`.
    _slot: Slot,
    pub targets: Pool,
    /// Shells opened through this session: only it may use them, and they
    /// are deleted when it ends.
    pub shells: Shells,
    /// What the session did, command by command, with output (`[audit] transcripts`).
    pub transcript: Option<Box<Transcript>>,
    /// The session's PowerShell streams, read for the audit and the transcript.
    pub psrp: SessionReader,
    /// The same streams as the client sends them, followed for the command policy.
    pub policy_streams: PolicyStreams,
    /// When the session logged on: the lifetime runs from here.
    started: Instant,
}

/// A logged-on session as the pipeline gets it: both halves, borrowed apart.
pub(crate) struct ActiveSession<'a> {
    pub link: &'a mut Link,
    pub active: &'a mut Active,
}

impl ActiveSession<'_> {
    pub fn event(&self, kind: AuditKind) -> AuditEvent {
        self.link.event(kind, Some(self.active))
    }
}

/// A successful logon, for [`Session::begin`].
pub(crate) struct Logon {
    pub credentials: DelegatedCredentials,
    pub channel: Option<Box<SecureChannel>>,
    pub wrap: Option<Box<WrapKeys>>,
    pub method: AuthMethod,
    /// A Kerberos logon's group SIDs from its ticket's PAC, when it had one.
    pub pac_groups: Option<Vec<Sid>>,
}

/// When a session must end if nothing else ends it first, and why.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub reason: &'static str,
}

impl Deadline {
    fn earliest(self, other: Deadline) -> Deadline {
        if other.at < self.at {
            other
        } else {
            self
        }
    }
}

impl Link {
    /// An audit event about this connection, naming who is logged on, if anyone.
    fn event(&self, kind: AuditKind, active: Option<&Active>) -> AuditEvent {
        AuditEvent {
            event: kind,
            session: self.id.clone(),
            user: active.map(|a| a.principal.clone()),
            auth: active.map(|a| a.method),
            delegation: active
                .and_then(|a| a.credentials.constrained_delegation())
                .map(|_| "constrained"),
            source: Some(self.source.to_string()),
            ..AuditEvent::default()
        }
    }
}

impl Session {
    pub fn new(
        source: SocketAddr,
        fixed_target: Option<String>,
        https: bool,
        pending: Pending,
        ender: Arc<Ender>,
    ) -> Self {
        let now = Instant::now();
        Session {
            link: Link {
                id: new_id(),
                source,
                fixed_target,
                https,
                requests: 0,
                ender,
                last_activity: now,
            },
            phase: Phase::AwaitingLogon(AwaitingLogon {
                pending,
                started: now,
                credssp: None,
            }),
        }
    }

    /// The logged-on session, if it is one.
    pub fn active(&mut self) -> Option<ActiveSession<'_>> {
        match &mut self.phase {
            Phase::Active(active) => Some(ActiveSession {
                link: &mut self.link,
                active,
            }),
            _ => None,
        }
    }

    pub fn principal(&self) -> Option<&str> {
        match &self.phase {
            Phase::Active(active) => Some(&active.principal),
            _ => None,
        }
    }

    /// Its place among connections waiting to log on, while it waits.
    pub fn place(&self) -> Option<&Pending> {
        match &self.phase {
            Phase::AwaitingLogon(waiting) => Some(&waiting.pending),
            _ => None,
        }
    }

    /// The CredSSP exchange under way, if any.
    pub fn credssp(&mut self) -> Option<&mut CredSspExchange> {
        match &mut self.phase {
            Phase::AwaitingLogon(waiting) => waiting.credssp.as_mut(),
            _ => None,
        }
    }

    /// Start (or restart) a CredSSP exchange on a connection waiting to log on;
    /// `false` when it is not waiting (the caller ends the session first).
    pub fn start_credssp(&mut self, acceptor: Acceptor) -> bool {
        match &mut self.phase {
            Phase::AwaitingLogon(waiting) => {
                waiting.credssp = Some(CredSspExchange {
                    acceptor: Box::new(acceptor),
                    started: Instant::now(),
                });
                true
            }
            _ => false,
        }
    }

    /// The exchange under way is over (refused or timed out): the next
    /// token must start a new one.
    pub fn abandon_credssp(&mut self) {
        if let Phase::AwaitingLogon(waiting) = &mut self.phase {
            waiting.credssp = None;
        }
    }

    pub fn event(&self, kind: AuditKind) -> AuditEvent {
        let active = match &self.phase {
            Phase::Active(active) => Some(&**active),
            _ => None,
        };
        self.link.event(kind, active)
    }

    pub fn touch(&mut self) {
        self.link.last_activity = Instant::now();
    }

    /// The deadline while the connection waits for its next request: until
    /// logon, an absolute one from the start of the attempt (however many
    /// 401s it collects) and a short one between requests; after, the idle
    /// timeout and the lifetime.
    pub fn idle_deadline(&self, config: &Config) -> Deadline {
        let last = self.link.last_activity;
        let between = match &self.phase {
            Phase::Active(_) => Deadline {
                at: last + config.session.idle_timeout,
                reason: "idle timeout",
            },
            _ => Deadline {
                at: last + config.listen.header_read_timeout,
                reason: "no request within listen.header_read_timeout_secs before logon",
            },
        };
        self.busy_deadline(config).earliest(between)
    }

    /// The deadline while a request is in flight: a long Receive is not
    /// idleness, but it does not outlive the session's lifetime (or, before
    /// logon, the logon deadline).
    pub fn busy_deadline(&self, config: &Config) -> Deadline {
        match &self.phase {
            Phase::Active(active) => Deadline {
                at: active.started + config.session.max_lifetime,
                reason: "maximum session lifetime",
            },
            Phase::AwaitingLogon(waiting) => Deadline {
                at: waiting.started + config.auth.logon_timeout,
                reason: "not authenticated within auth.logon_timeout_secs",
            },
            Phase::Closed => Deadline {
                at: self.link.last_activity,
                reason: "the connection has no place to log on",
            },
        }
    }

    /// A logon succeeded (CredSSP, or Basic): take a session slot, register
    /// and audit the start, and become active. With the quota full, it waits
    /// for a slot within its logon deadline (boxed: a session's state need not
    /// carry the wait); the refusal after that leaves the session waiting to
    /// log on.
    pub async fn begin(&mut self, shared: &Shared, logon: Logon) -> Result<ActiveSession<'_>, Refusal> {
        let principal = logon.credentials.principal();
        let domain = shared.credssp().domain.clone();
        // Quotas count every spelling of a user as one: a users-file row under the
        // realm name and a Kerberos logon are the same person.
        let who = logon.credentials.identity();
        let counted = who.clone().canonical(domain.as_ref()).to_string();
        let key = who.key(domain.as_ref());
        let until = match &self.phase {
            Phase::AwaitingLogon(waiting) => {
                (waiting.started + shared.config().auth.logon_timeout).checked_sub(SLOT_WAIT_MARGIN)
            }
            _ => None,
        }
        .unwrap_or_else(Instant::now);
        let slot = match Box::pin(shared.quotas.session_by(&counted, until)).await {
            Ok(slot) => slot,
            Err(quota) => return Err(Refusal::quota(&quota).by(principal, logon.method)),
        };
        // Boxed: a connection's state need not carry the lookup's.
        let groups = Box::pin(membership(shared, who, logon.pac_groups.as_deref())).await;
        let admit = || users_file_agrees(shared, &logon.credentials, logon.method);
        let ender = self.link.ender.clone();
        if let Err(reason) = shared
            .sessions
            .register_if(&self.link.id, &principal, logon.method, ender, admit)
        {
            return Err(Refusal::logon(reason).by(principal, logon.method));
        }
        shared.lockout.record_success(self.link.source.ip(), Some(&key));
        let now = Instant::now();
        self.link.last_activity = now;
        shared.metrics.logon(true);
        shared.metrics.session_started();
        tracing::Span::current().record("user", principal.as_str());
        let transcript = shared.transcripts.as_ref().and_then(|settings| {
            let source = self.link.source.to_string();
            match Transcript::create(settings, &self.link.id, &principal, &source) {
                Ok(transcript) => Some(Box::new(transcript)),
                Err(error) => {
                    tracing::error!(dir = %settings.dir.display(), %error, "cannot create the session transcript");
                    None
                }
            }
        });
        tracing::info!(auth = ?logon.method, "session authenticated");
        let active = Box::new(Active {
            principal,
            counted,
            groups,
            method: logon.method,
            channel: logon.channel,
            wrap: logon.wrap,
            credentials: logon.credentials,
            _slot: slot,
            targets: Pool::default(),
            shells: Shells::default(),
            transcript,
            psrp: SessionReader::default(),
            policy_streams: PolicyStreams::default(),
            started: now,
        });
        let mut started = self.link.event(AuditKind::SessionStart, Some(&active));
        match &active.groups {
            Groups::NotNeeded => {}
            Groups::Known(groups) => started.groups = Some(groups.iter().map(ToString::to_string).collect()),
            Groups::Unavailable(why) => started.reason = Some(format!("group membership unknown: {why}")),
        }
        shared.audit.emit(&started);
        self.phase = Phase::Active(active);
        self.active()
            .ok_or_else(|| Refusal::relay_fault("the session did not become active"))
    }

    /// End the session, whatever is in flight (the caller drops in-flight
    /// work before calling this): delete the shells its caller left open
    /// (in parallel, bounded), audit `cleanup` and `session_end`, then wipe
    /// the credentials and drop every target connection. The connection is
    /// left with no place to log on; [`Session::restart_logon`] asks for one.
    pub async fn end(&mut self, shared: &Shared, reason: &str) {
        let Phase::Active(mut active) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return;
        };
        let leftovers = active.shells.drain();
        let template = self.link.event(AuditKind::Cleanup, Some(&active));
        shells::delete_leftovers(
            leftovers,
            &mut active.targets,
            &active.credentials,
            &shared.audit,
            &template,
            CLEANUP_DEADLINE,
            shared.config().listen.max_envelope_size,
        )
        .await;
        let mut event = self.link.event(AuditKind::SessionEnd, Some(&active));
        event.duration_ms = Some(active.started.elapsed().as_millis() as u64);
        event.reason = Some(reason.to_string());
        if let Some(constrained) = active.credentials.constrained_delegation() {
            let tickets = constrained.tickets();
            let mut held: Vec<String> = tickets
                .targets
                .values()
                .map(|t| {
                    let start = t.start.map(crate::audit::format_time).unwrap_or_default();
                    format!(
                        "{} for {} from {start} to {}",
                        t.service,
                        t.client,
                        crate::audit::format_time(t.end)
                    )
                })
                .collect();
            held.sort();
            event.tickets = Some(held);
        }
        // Bound into the chain by its hash, so that it cannot be altered unnoticed.
        if let Some(transcript) = active.transcript.take() {
            let sealed = transcript.finish(reason);
            event.transcript = Some(sealed.name);
            event.transcript_sha256 = sealed.sha256;
        }
        shared.audit.emit(&event);
        shared.sessions.unregister(&self.link.id);
        shared.metrics.session_ended();
        tracing::info!(reason, requests = self.link.requests, "session ended");
        // Dropping it wipes the credentials and closes the target connections.
        drop(active);
    }

    /// After [`Session::end`], start over as a connection waiting to log on
    /// (a new CredSSP exchange or another Basic user on the same connection):
    /// it counts against the limits for unauthenticated connections again,
    /// and gets a new id so the audit tells the two sessions apart.
    pub fn restart_logon(&mut self, shared: &Shared) -> Result<(), PendingRefusal> {
        let placed = shared.unauthenticated.try_place(self.link.source, &self.link.ender)?;
        if let Some(shed) = placed.shed {
            Refusal::shed().record_connection(shed, shared);
        }
        self.link.id = new_id();
        self.phase = Phase::AwaitingLogon(AwaitingLogon {
            pending: placed.pending,
            started: Instant::now(),
            credssp: None,
        });
        Ok(())
    }
}

/// The groups the rules name that `who` belongs to, at logon: from the PAC's SIDs when
/// there is one, else from the directory. Without a `[directory]` or a rule naming a
/// group, nothing is asked.
async fn membership(shared: &Shared, who: &Principal, pac: Option<&[Sid]>) -> Groups {
    let config = shared.config();
    let (Some(directory), Some(kerberos)) = (&config.directory, &config.kerberos) else {
        return Groups::NotNeeded;
    };
    let wanted = config.policy.groups();
    let groups = shared
        .directory
        .membership(directory, &kerberos.domain, who, &wanted, pac)
        .await;
    if let Groups::Unavailable(why) = &groups {
        tracing::warn!(reason = %why, "group membership unknown: group rules will not grant this session");
    }
    groups
}

/// A logon is decided against the users in force when it completes: a reload
/// while it ran (a user removed, a password changed) must not let the old
/// entry through. The delegated password is checked against the current users
/// file; a Kerberos logon has no entry to check.
fn users_file_agrees(shared: &Shared, credentials: &DelegatedCredentials, method: AuthMethod) -> Result<(), String> {
    if method == AuthMethod::Kerberos {
        return Ok(());
    }
    let who = credentials.identity();
    let credssp = shared.credssp();
    verify_password(
        &credssp.users,
        credssp.domain.as_ref(),
        who,
        credentials.expose_password(),
    )
    .map(|_| ())
    .map_err(|refusal| format!("the users file changed during the logon: {refusal} for {who}"))
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use secrecy::SecretString;

    use super::*;
    use crate::config::Config;
    use crate::server::limits::{Quotas, Unauthenticated};

    fn config(extra: &str) -> Config {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:5985\"\ntls_cert = \"c\"\ntls_key = \"k\"\nheader_read_timeout_secs = 5\n\
             [auth]\nusers_file = \"u\"\nlogon_timeout_secs = 20\n[audit]\npath = \"a\"\n\
             [session]\nidle_timeout_secs = 60\nmax_lifetime_secs = 100\n{extra}"
        );
        Config::parse(Path::new("relay.toml"), &text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn session(config: &Config) -> Session {
        let ender = Ender::new_for_tests();
        let placed = Unauthenticated::new(&config.limits)
            .try_place("127.0.0.1:1".parse().unwrap(), &ender)
            .unwrap_or_else(|_| panic!("no place"));
        Session::new("127.0.0.1:1".parse().unwrap(), None, false, placed.pending, ender)
    }

    fn logon_started(s: &Session) -> Instant {
        match &s.phase {
            Phase::AwaitingLogon(waiting) => waiting.started,
            _ => panic!("not waiting to log on"),
        }
    }

    #[test]
    fn before_logon_the_deadline_is_absolute_from_the_attempt() {
        let config = config("");
        let mut s = session(&config);
        let start = logon_started(&s);
        // Between requests: the short header deadline.
        let idle = s.idle_deadline(&config);
        assert_eq!(idle.at, s.link.last_activity + Duration::from_secs(5));
        // Activity (a 401 answered) does not move the logon deadline.
        s.link.last_activity = start + Duration::from_secs(18);
        let idle = s.idle_deadline(&config);
        assert_eq!(idle.at, start + Duration::from_secs(20));
        assert!(idle.reason.contains("logon_timeout"));
        assert_eq!(s.busy_deadline(&config).at, start + Duration::from_secs(20));
        assert!(s.principal().is_none() && s.active().is_none());
    }

    #[test]
    fn after_logon_idle_and_lifetime_apply_and_a_busy_session_is_not_idle() {
        let config = config("");
        let mut s = session(&config);
        let slot = Quotas::new(config.limits.clone()).session("LAB\\alice").unwrap();
        let started = Instant::now();
        s.phase = Phase::Active(Box::new(Active {
            wrap: None,
            principal: "LAB\\alice".into(),
            counted: "LAB\\alice".into(),
            groups: Groups::NotNeeded,
            method: AuthMethod::Ntlm,
            channel: None,
            credentials: DelegatedCredentials::new("LAB", "alice", SecretString::from("pw")),
            _slot: slot,
            targets: Pool::default(),
            shells: Shells::default(),
            transcript: None,
            psrp: SessionReader::default(),
            policy_streams: PolicyStreams::default(),
            started,
        }));
        s.link.last_activity = started;
        let idle = s.idle_deadline(&config);
        assert_eq!(
            (idle.at, idle.reason),
            (started + Duration::from_secs(60), "idle timeout")
        );
        s.link.last_activity = started + Duration::from_secs(70);
        let idle = s.idle_deadline(&config);
        assert_eq!(
            (idle.at, idle.reason),
            (started + Duration::from_secs(100), "maximum session lifetime")
        );
        let busy = s.busy_deadline(&config);
        assert_eq!(
            (busy.at, busy.reason),
            (started + Duration::from_secs(100), "maximum session lifetime")
        );
        assert_eq!(s.principal(), Some("LAB\\alice"));
    }
}

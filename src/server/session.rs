//! One inbound connection's session state: how far its logon got, the caller's
//! delegated credentials, its target connections and the shells it opened.
//! `conn` drives it, `auth` logs it on, `pipeline` uses it, and
//! [`Session::end`] is the one way a session ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Ender;
use super::limits::{Pending, Slot};
use super::shells::{self, Shells};
use super::Shared;
use crate::audit::transcript::Transcript;
use crate::audit::{AuditEvent, AuditKind, AuthMethod};
use crate::config::Config;
use crate::proto::credssp::{Acceptor, SecureChannel};
use crate::upstream::Pool;
use crate::vault::{DelegatedCredentials, Vault};

/// Whole cleanup at session end: deleting the shells left open, in parallel.
/// Short, so that a session ends within a few seconds of its connection.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(3);

pub(crate) enum AuthState {
    None,
    InProgress {
        acceptor: Box<Acceptor>,
        started: Instant,
    },
    Authenticated {
        principal: String,
        method: AuthMethod,
        /// CredSSP's TLS channel, for session encryption; `None` for Basic.
        channel: Option<Box<SecureChannel>>,
    },
}

pub(crate) struct Session {
    pub id: String,
    pub source: SocketAddr,
    pub fixed_target: Option<String>,
    /// Arrived over the HTTPS listener: TLS protects bodies, Basic is possible.
    pub https: bool,
    pub auth: AuthState,
    pub vault: Vault,
    pub targets: Pool,
    /// Shells opened through this session: only it may use them, and they
    /// are deleted when it ends.
    pub shells: Shells,
    /// What the session did, command by command, with output (`[audit] transcripts`).
    /// Boxed: most sessions have none, and the session sits in its task's future.
    pub transcript: Option<Box<Transcript>>,
    /// This session's place in `limits.max_sessions[_per_user]`.
    slot: Option<Slot>,
    /// Its place among connections not yet authenticated; released at logon.
    pending: Option<Pending>,
    /// When the current logon attempt began (accept, or a re-authentication):
    /// the logon deadline runs from here.
    logon_started: Instant,
    /// When the session authenticated: the lifetime runs from here.
    started: Instant,
    /// When the last request finished: the idle timeout runs from here.
    last_activity: Instant,
    pub requests: u64,
    /// How the connection asks this session to end.
    pub ender: Arc<Ender>,
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
            id: new_id(),
            source,
            fixed_target,
            https,
            auth: AuthState::None,
            vault: Vault::default(),
            targets: Pool::default(),
            shells: Shells::default(),
            transcript: None,
            slot: None,
            pending: Some(pending),
            logon_started: now,
            started: now,
            last_activity: now,
            requests: 0,
            ender,
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
        let auth = match &self.auth {
            AuthState::Authenticated { method, .. } => Some(*method),
            _ => None,
        };
        AuditEvent {
            event: kind,
            session: self.id.clone(),
            user: self.principal().map(str::to_string),
            auth,
            source: Some(self.source.to_string()),
            ..AuditEvent::default()
        }
    }

    pub fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// The deadline while the connection waits for its next request: until
    /// logon, an absolute one from the start of the attempt (however many
    /// 401s it collects) and a short one between requests; after, the idle
    /// timeout and the lifetime.
    pub fn idle_deadline(&self, config: &Config) -> Deadline {
        if self.principal().is_none() {
            let between = Deadline {
                at: self.last_activity + config.listen.header_read_timeout,
                reason: "no request within listen.header_read_timeout_secs before logon",
            };
            return self.busy_deadline(config).earliest(between);
        }
        let idle = Deadline {
            at: self.last_activity + config.session.idle_timeout,
            reason: "idle timeout",
        };
        self.busy_deadline(config).earliest(idle)
    }

    /// The deadline while a request is in flight: a long Receive is not
    /// idleness, but it does not outlive the session's lifetime (or, before
    /// logon, the logon deadline).
    pub fn busy_deadline(&self, config: &Config) -> Deadline {
        if self.principal().is_none() {
            return Deadline {
                at: self.logon_started + config.auth.logon_timeout,
                reason: "not authenticated within auth.logon_timeout_secs",
            };
        }
        Deadline {
            at: self.started + config.session.max_lifetime,
            reason: "maximum session lifetime",
        }
    }

    /// A logon succeeded (CredSSP, or Basic without a channel): take a
    /// session slot, store the credentials, register and audit the start.
    /// On a full session quota, the refusal (already audited).
    pub fn begin(
        &mut self,
        shared: &Shared,
        credentials: DelegatedCredentials,
        channel: Option<Box<SecureChannel>>,
        method: AuthMethod,
    ) -> Result<(), super::limits::QuotaError> {
        let principal = credentials.principal();
        let slot = match shared.quotas.session(&principal) {
            Ok(slot) => slot,
            Err(quota) => {
                shared.metrics.quota_hit(quota.limit());
                let mut event = self.event(AuditKind::Denied);
                event.user = Some(principal);
                event.auth = Some(method);
                event.status = Some(503);
                event.reason = Some(quota.to_string());
                shared.audit.emit(&event);
                return Err(quota);
            }
        };
        shared.lockout.record_success(self.source.ip(), Some(&principal));
        self.vault.store(credentials);
        self.slot = Some(slot);
        self.pending = None;
        let now = Instant::now();
        self.started = now;
        self.last_activity = now;
        shared
            .sessions
            .register(&self.id, &principal, method, self.ender.clone());
        shared.metrics.logon(true);
        shared.metrics.session_started();
        tracing::Span::current().record("user", principal.as_str());
        if let Some(settings) = &shared.transcripts {
            let source = self.source.to_string();
            match Transcript::create(settings, &self.id, &principal, &source) {
                Ok(transcript) => self.transcript = Some(Box::new(transcript)),
                Err(error) => {
                    tracing::error!(dir = %settings.dir.display(), %error, "cannot create the session transcript")
                }
            }
        }
        self.auth = AuthState::Authenticated {
            principal,
            method,
            channel,
        };
        tracing::info!(auth = ?method, "session authenticated");
        shared.audit.emit(&self.event(AuditKind::SessionStart));
        Ok(())
    }

    /// End the session, whatever is in flight (the caller drops in-flight
    /// work before calling this): delete the shells its caller left open
    /// (in parallel, bounded), audit `cleanup` and `session_end`, then wipe
    /// the credentials and drop every target connection.
    pub async fn end(&mut self, shared: &Shared, reason: &str) {
        if self.principal().is_some() {
            let leftovers = self.shells.drain();
            let template = self.event(AuditKind::Cleanup);
            shells::delete_leftovers(
                leftovers,
                &mut self.targets,
                self.vault.get(),
                &shared.audit,
                &template,
                CLEANUP_DEADLINE,
                shared.config().listen.max_envelope_size,
            )
            .await;
            let mut event = self.event(AuditKind::SessionEnd);
            event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            event.reason = Some(reason.to_string());
            // Bound into the chain by its hash, so that it cannot be altered unnoticed.
            if let Some(transcript) = self.transcript.take() {
                let sealed = transcript.finish(reason);
                event.transcript = Some(sealed.name);
                event.transcript_sha256 = sealed.sha256;
            }
            shared.audit.emit(&event);
            shared.sessions.unregister(&self.id);
            shared.metrics.session_ended();
            tracing::info!(reason, requests = self.requests, "session ended");
        }
        self.auth = AuthState::None;
        self.shells.drain();
        self.targets.clear();
        self.vault.wipe();
        self.slot = None;
    }

    /// After [`Session::end`], start over as a connection waiting to log on
    /// (a new CredSSP exchange or another Basic user on the same connection):
    /// it counts against the limits for unauthenticated connections again,
    /// and gets a new id so the audit tells the two sessions apart.
    pub fn restart_logon(&mut self, shared: &Shared) -> Result<(), super::limits::PendingRefusal> {
        self.pending = Some(shared.unauthenticated.acquire(self.source.ip())?);
        self.id = new_id();
        self.logon_started = Instant::now();
        Ok(())
    }
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::server::limits::Unauthenticated;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:5985\"\ntls_cert = \"c\"\ntls_key = \"k\"\nheader_read_timeout_secs = 5\n\
             [auth]\nusers_file = \"u\"\nlogon_timeout_secs = 20\n[audit]\npath = \"a\"\n\
             [session]\nidle_timeout_secs = 60\nmax_lifetime_secs = 100\n{extra}"
        );
        Config::parse(Path::new("relay.toml"), &text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn session(config: &Config) -> Session {
        let pending = Unauthenticated::new(&config.limits)
            .acquire("127.0.0.1".parse().unwrap())
            .unwrap();
        let ender = Ender::new_for_tests();
        Session::new("127.0.0.1:1".parse().unwrap(), None, false, pending, ender)
    }

    #[test]
    fn before_logon_the_deadline_is_absolute_from_the_attempt() {
        let config = config("");
        let mut s = session(&config);
        let start = s.logon_started;
        // Between requests: the short header deadline.
        let idle = s.idle_deadline(&config);
        assert_eq!(idle.at, s.last_activity + Duration::from_secs(5));
        // Activity (a 401 answered) does not move the logon deadline.
        s.last_activity = start + Duration::from_secs(18);
        let idle = s.idle_deadline(&config);
        assert_eq!(idle.at, start + Duration::from_secs(20));
        assert!(idle.reason.contains("logon_timeout"));
        assert_eq!(s.busy_deadline(&config).at, start + Duration::from_secs(20));
    }

    #[test]
    fn after_logon_idle_and_lifetime_apply_and_a_busy_session_is_not_idle() {
        let config = config("");
        let mut s = session(&config);
        s.auth = AuthState::Authenticated {
            principal: "LAB\\alice".into(),
            method: AuthMethod::Ntlm,
            channel: None,
        };
        let idle = s.idle_deadline(&config);
        assert_eq!(
            (idle.at, idle.reason),
            (s.last_activity + Duration::from_secs(60), "idle timeout")
        );
        s.last_activity = s.started + Duration::from_secs(70);
        let idle = s.idle_deadline(&config);
        assert_eq!(
            (idle.at, idle.reason),
            (s.started + Duration::from_secs(100), "maximum session lifetime")
        );
        let busy = s.busy_deadline(&config);
        assert_eq!(
            (busy.at, busy.reason),
            (s.started + Duration::from_secs(100), "maximum session lifetime")
        );
    }
}

//! Abuse limits shared by all connections: logon lockout, connections waiting
//! to authenticate, and quotas (sessions, shells, operations). Plain data
//! behind a mutex; the caller passes `now` so the rules are testable without
//! waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::{AuthConfig, LimitsConfig};
use crate::identity::PrincipalKey;

/// Failed logons per (source address, claimed user). Keying on the pair
/// stops guessing from one place without letting anyone lock a user out
/// of every other place. The user is the canonical key of every spelling of
/// the name (`LAB\alice`, `alice@LAB.TEST`, `\LAB\alice`): the lock is
/// checked, counted and cleared under that one key.
pub(crate) struct Lockout {
    threshold: u32,
    window: Duration,
    duration: Duration,
    entries: Mutex<HashMap<(IpAddr, String), LockoutEntry>>,
}

#[derive(Default)]
struct LockoutEntry {
    failures: Vec<Instant>,
    locked_until: Option<Instant>,
}

impl Lockout {
    pub fn new(auth: &AuthConfig) -> Lockout {
        Lockout {
            threshold: auth.lockout_threshold,
            window: auth.lockout_window,
            duration: auth.lockout_duration,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<(IpAddr, String), LockoutEntry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn key(source: IpAddr, user: Option<&PrincipalKey>) -> (IpAddr, String) {
        (source, user.map(|u| u.as_str().to_string()).unwrap_or_default())
    }

    pub fn is_locked(&self, source: IpAddr, user: Option<&PrincipalKey>, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let entries = self.entries();
        entries
            .get(&Self::key(source, user))
            .and_then(|e| e.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Record a failure; returns true when this failure locks the pair out.
    pub fn record_failure(&self, source: IpAddr, user: Option<&PrincipalKey>, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut entries = self.entries();
        // Forget stale entries so the table cannot grow without bound.
        entries.retain(|_, e| {
            e.locked_until.is_some_and(|until| now < until)
                || e.failures
                    .last()
                    .is_some_and(|last| now.duration_since(*last) < self.window)
        });
        let entry = entries.entry(Self::key(source, user)).or_default();
        entry.failures.retain(|t| now.duration_since(*t) < self.window);
        entry.failures.push(now);
        if entry.failures.len() as u32 >= self.threshold {
            entry.failures.clear();
            entry.locked_until = Some(now + self.duration);
            return true;
        }
        false
    }

    pub fn record_success(&self, source: IpAddr, user: Option<&PrincipalKey>) {
        self.entries().remove(&Self::key(source, user));
    }
}

/// Connections that have not authenticated yet: at most `per_source` from one
/// address (so one address cannot crowd out everyone else's logons, in the
/// spirit of OpenSSH's MaxStartups) and `total` in all (file descriptors).
pub(crate) struct Unauthenticated {
    per_source: usize,
    total: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection may not wait to authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PendingRefusal {
    #[error("too many connections from {0} waiting to authenticate (limits.max_unauthenticated_per_source)")]
    Source(IpAddr),
    #[error("too many connections waiting to authenticate (limits.max_sessions)")]
    Total,
}

impl PendingRefusal {
    /// The limit hit, as the config names it.
    pub fn limit(&self) -> &'static str {
        match self {
            PendingRefusal::Source(_) => "max_unauthenticated_per_source",
            PendingRefusal::Total => "max_sessions",
        }
    }
}

/// One connection's place among those waiting to authenticate; released on drop.
pub(crate) struct Pending {
    owner: Arc<Unauthenticated>,
    source: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
        counts.0 = counts.0.saturating_sub(1);
        if let Some(n) = counts.1.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.1.remove(&self.source);
            }
        }
    }
}

impl Unauthenticated {
    pub fn new(limits: &LimitsConfig) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            per_source: limits.max_unauthenticated_per_source,
            total: limits.max_sessions,
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    fn counts(&self) -> MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn acquire(self: &Arc<Self>, source: IpAddr) -> Result<Pending, PendingRefusal> {
        let mut counts = self.counts();
        if counts.1.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(PendingRefusal::Source(source));
        }
        if counts.0 >= self.total {
            return Err(PendingRefusal::Total);
        }
        counts.0 += 1;
        *counts.1.entry(source).or_default() += 1;
        Ok(Pending {
            owner: self.clone(),
            source,
        })
    }
}

/// Why a quota refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaError {
    #[error("the relay already has {0} sessions (limits.max_sessions)")]
    Sessions(usize),
    #[error("{user} already has {limit} sessions (limits.max_sessions_per_user)")]
    UserSessions { user: String, limit: usize },
    #[error("{user} already has {limit} open shells (limits.max_shells_per_user)")]
    Shells { user: String, limit: usize },
    #[error("{user} already has {limit} requests in flight (limits.max_operations_per_user)")]
    Operations { user: String, limit: usize },
}

impl QuotaError {
    /// The limit hit, as the config names it.
    pub fn limit(&self) -> &'static str {
        match self {
            QuotaError::Sessions(_) => "max_sessions",
            QuotaError::UserSessions { .. } => "max_sessions_per_user",
            QuotaError::Shells { .. } => "max_shells_per_user",
            QuotaError::Operations { .. } => "max_operations_per_user",
        }
    }
}

#[derive(Default)]
struct Counts {
    sessions: usize,
    per_user: HashMap<String, UserCounts>,
}

#[derive(Default)]
struct UserCounts {
    sessions: usize,
    shells: usize,
    operations: usize,
}

/// Live counts against [`LimitsConfig`]. Slots are RAII guards: a count
/// goes down when its guard drops, however the session ends.
pub(crate) struct Quotas {
    limits: LimitsConfig,
    counts: Mutex<Counts>,
}

#[derive(Clone, Copy)]
enum Kind {
    Session,
    Shell,
    Operation,
}

/// One counted session, shell or operation.
pub(crate) struct Slot {
    quotas: Arc<Quotas>,
    user: String,
    kind: Kind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.quotas.counts();
        if let Kind::Session = self.kind {
            counts.sessions = counts.sessions.saturating_sub(1);
        }
        if let Some(user) = counts.per_user.get_mut(&self.user) {
            let field = match self.kind {
                Kind::Session => &mut user.sessions,
                Kind::Shell => &mut user.shells,
                Kind::Operation => &mut user.operations,
            };
            *field = field.saturating_sub(1);
            if user.sessions == 0 && user.shells == 0 && user.operations == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

impl Quotas {
    pub fn new(limits: LimitsConfig) -> Arc<Quotas> {
        Arc::new(Quotas {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(self: &Arc<Self>, user: &str, kind: Kind) -> Result<Slot, QuotaError> {
        let key = user.to_ascii_lowercase();
        let mut counts = self.counts();
        if let Kind::Session = kind {
            if counts.sessions >= self.limits.max_sessions {
                return Err(QuotaError::Sessions(self.limits.max_sessions));
            }
        }
        let entry = counts.per_user.entry(key.clone()).or_default();
        let (field, limit) = match kind {
            Kind::Session => (&mut entry.sessions, self.limits.max_sessions_per_user),
            Kind::Shell => (&mut entry.shells, self.limits.max_shells_per_user),
            Kind::Operation => (&mut entry.operations, self.limits.max_operations_per_user),
        };
        if *field >= limit {
            let user = user.to_string();
            return Err(match kind {
                Kind::Session => QuotaError::UserSessions { user, limit },
                Kind::Shell => QuotaError::Shells { user, limit },
                Kind::Operation => QuotaError::Operations { user, limit },
            });
        }
        *field += 1;
        if let Kind::Session = kind {
            counts.sessions += 1;
        }
        Ok(Slot {
            quotas: self.clone(),
            user: key,
            kind,
        })
    }

    pub fn session(self: &Arc<Self>, user: &str) -> Result<Slot, QuotaError> {
        self.take(user, Kind::Session)
    }

    pub fn shell(self: &Arc<Self>, user: &str) -> Result<Slot, QuotaError> {
        self.take(user, Kind::Shell)
    }

    pub fn operation(self: &Arc<Self>, user: &str) -> Result<Slot, QuotaError> {
        self.take(user, Kind::Operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(threshold: u32) -> AuthConfig {
        AuthConfig {
            users_file: Default::default(),
            credssp_min_version: 5,
            handshake_timeout: Duration::from_secs(30),
            logon_timeout: Duration::from_secs(30),
            lockout_threshold: threshold,
            lockout_window: Duration::from_secs(300),
            lockout_duration: Duration::from_secs(900),
        }
    }

    /// The key of `name` in LAB (LAB.TEST), as the relay's logons compute it.
    fn key(name: &str) -> PrincipalKey {
        let lab = crate::identity::Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        };
        crate::identity::Principal::parse(name).key(Some(&lab))
    }

    #[test]
    fn lockout_after_threshold_and_expiry() {
        let lockout = Lockout::new(&auth(3));
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        let t0 = Instant::now();
        assert!(!lockout.record_failure(ip, Some(&key("LAB\\alice")), t0));
        assert!(!lockout.record_failure(ip, Some(&key("lab\\ALICE")), t0));
        assert!(!lockout.is_locked(ip, Some(&key("LAB\\alice")), t0));
        assert!(lockout.record_failure(ip, Some(&key("alice@LAB.TEST")), t0));
        // Whatever the spelling, the same user is locked.
        for spelling in [
            "LAB\\alice",
            "\\LAB\\alice",
            "alice@LAB",
            "lab\\ALICE",
            "alice@lab.test",
            "LAB.TEST\\alice",
        ] {
            assert!(
                lockout.is_locked(ip, Some(&key(spelling)), t0 + Duration::from_secs(60)),
                "{spelling}"
            );
        }
        // Another user from the same place, or the same user elsewhere, is unaffected.
        assert!(!lockout.is_locked(ip, Some(&key("LAB\\bob")), t0));
        assert!(!lockout.is_locked("127.0.0.6".parse().unwrap(), Some(&key("LAB\\alice")), t0));
        assert!(!lockout.is_locked(ip, Some(&key("LAB\\alice")), t0 + Duration::from_secs(901)));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let lockout = Lockout::new(&auth(2));
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        let t0 = Instant::now();
        assert!(!lockout.record_failure(ip, None, t0));
        assert!(!lockout.record_failure(ip, None, t0 + Duration::from_secs(301)));
        assert!(lockout.record_failure(ip, None, t0 + Duration::from_secs(302)));
    }

    #[test]
    fn zero_threshold_disables_lockout() {
        let lockout = Lockout::new(&auth(0));
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        for _ in 0..10 {
            assert!(!lockout.record_failure(ip, None, Instant::now()));
        }
        assert!(!lockout.is_locked(ip, None, Instant::now()));
    }

    #[test]
    fn one_source_cannot_take_every_pending_place() {
        let limits = LimitsConfig {
            max_sessions: 3,
            max_sessions_per_user: 1,
            max_shells_per_user: 1,
            max_operations_per_user: 1,
            max_unauthenticated_per_source: 2,
            max_operation_timeout: Duration::from_secs(60),
        };
        let pending = Unauthenticated::new(&limits);
        let crowd: IpAddr = "127.0.0.50".parse().unwrap();
        let user: IpAddr = "127.0.0.51".parse().unwrap();
        let first = pending.acquire(crowd).unwrap();
        let _second = pending.acquire(crowd).unwrap();
        assert_eq!(pending.acquire(crowd).err(), Some(PendingRefusal::Source(crowd)));
        let _other = pending.acquire(user).unwrap();
        assert_eq!(pending.acquire(user).err(), Some(PendingRefusal::Total));
        drop(first);
        assert!(pending.acquire(crowd).is_ok());
    }

    #[test]
    fn quota_slots_are_released_on_drop() {
        let quotas = Quotas::new(LimitsConfig {
            max_sessions: 2,
            max_sessions_per_user: 1,
            max_shells_per_user: 1,
            max_operations_per_user: 1,
            max_unauthenticated_per_source: 1,
            max_operation_timeout: Duration::from_secs(60),
        });
        let a = quotas.session("LAB\\alice").unwrap();
        assert!(matches!(
            quotas.session("lab\\alice"),
            Err(QuotaError::UserSessions { .. })
        ));
        let _b = quotas.session("LAB\\bob").unwrap();
        assert_eq!(quotas.session("LAB\\carol").err(), Some(QuotaError::Sessions(2)));
        drop(a);
        let _a = quotas.session("LAB\\alice").unwrap();
        let shell = quotas.shell("LAB\\alice").unwrap();
        assert!(quotas.shell("LAB\\alice").is_err());
        drop(shell);
        assert!(quotas.shell("LAB\\alice").is_ok());
        let op = quotas.operation("LAB\\alice").unwrap();
        assert!(quotas.operation("LAB\\alice").is_err());
        drop(op);
        assert!(quotas.operation("LAB\\alice").is_ok());
    }
}

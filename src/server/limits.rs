//! Abuse limits shared by all connections: logon lockout, places for
//! connections waiting to authenticate, and quotas (sessions, shells,
//! operations). Plain data behind a mutex; the lockout takes `now` from its
//! caller so its rules are testable without waiting.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::shutdown::Ender;
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

/// Where a connection comes from, as the limits count it: an IPv4 address, or
/// an IPv6 /64 (a host commonly holds a whole /64, so its addresses one by one
/// would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceNet {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6(u64),
}

impl SourceNet {
    pub fn of(ip: IpAddr) -> SourceNet {
        match ip {
            IpAddr::V4(v4) => SourceNet::V4(v4),
            // An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceNet::V4(v4),
                None => SourceNet::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for SourceNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceNet::V4(v4) => write!(f, "{v4}"),
            SourceNet::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// An unauthenticated connection idle this long (nothing received since
/// accept, or since its last answer) may be shed under pressure; a client that
/// means to log on sends its next request well within it.
const FRESH_GRACE: Duration = Duration::from_secs(1);
/// The same for a connection beyond its source's share of the places (the
/// newest ones of a source holding more than `per_source`): under pressure
/// such a crowd is the first to make room, but not before it could have sent
/// a request.
const BEYOND_SHARE_GRACE: Duration = Duration::from_millis(250);
/// A connection whose CredSSP exchange advanced with its last answer is making
/// progress: it may be shed only once it has let this long pass without its
/// next leg.
const ADVANCING_GRACE: Duration = Duration::from_secs(5);
/// A connection waiting for a place checks this often whether one of the
/// places held has become idle enough to shed (nothing else wakes it for that).
const RECHECK: Duration = Duration::from_millis(100);
/// Connections being answered 503 at once; past this, they are closed
/// unanswered (each answer holds a socket for a moment).
const MAX_TURNING_AWAY: usize = 64;
/// What a place's idle time reads while a request is in flight.
const BUSY: u64 = u64::MAX;

/// Places for connections that have not logged on yet, `total` in all (file
/// descriptors, memory). While places are free, any connection gets one. When
/// all are taken (pressure), a newcomer takes the place of an idle one: the
/// oldest idle of the source holding the most, so idle sockets are what goes
/// and the sources hoarding them lose first. A connection whose request is
/// being handled, or whose CredSSP exchange is advancing, is not idle. Under
/// pressure a source holding `per_source` places may only replace its own
/// (the cap bites then only, in the spirit of OpenSSH's MaxStartups), so a
/// burst from one automation host is served in full while the relay is quiet.
/// With nothing to shed, a newcomer waits for a place (as in HAProxy's maxconn
/// queue) before it is refused.
pub(crate) struct Unauthenticated {
    per_source: usize,
    total: usize,
    /// Places keep their times as milliseconds since this instant.
    epoch: Instant,
    table: Mutex<Table>,
    /// Told whenever a place is released, so that waiting connections retry.
    released: Notify,
}

#[derive(Default)]
struct Table {
    /// Per source, in the order they were taken: the first `per_source` are
    /// its share.
    held: HashMap<SourceNet, Vec<Arc<Place>>>,
    count: usize,
    /// Connections waiting for a place.
    waiting: usize,
    /// Connections being answered 503 because they found none.
    turning_away: usize,
}

/// One connection's place, shared by its holder ([`Pending`]) and the table
/// (which may shed it).
struct Place {
    source: SourceNet,
    peer: SocketAddr,
    ender: Arc<Ender>,
    /// Milliseconds since the epoch at which the connection became idle
    /// (accept, or its last answer); [`BUSY`] while a request is in flight.
    idle_since: AtomicU64,
    /// Its CredSSP exchange advanced with its last answer.
    advancing: AtomicBool,
}

impl Place {
    /// Since when it has been idle, if it is idle long enough to be shed.
    fn sheddable(&self, now: u64, within_share: bool) -> Option<u64> {
        let since = self.idle_since.load(Ordering::Relaxed);
        let grace = if self.advancing.load(Ordering::Relaxed) {
            ADVANCING_GRACE
        } else if within_share {
            FRESH_GRACE
        } else {
            BEYOND_SHARE_GRACE
        };
        (since != BUSY && now.saturating_sub(since) >= grace.as_millis() as u64).then_some(since)
    }
}

/// Why a connection found no place to wait to authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PendingRefusal {
    #[error(
        "every place for connections waiting to authenticate is taken and {0} already holds its share \
         (limits.max_unauthenticated_per_source), none of them idle"
    )]
    Source(SourceNet),
    #[error("every place for connections waiting to authenticate is taken, none by an idle connection (limits.max_sessions)")]
    Total,
    #[error("too many connections already wait for a place to authenticate (limits.max_sessions)")]
    Queue,
    #[error("the relay is shutting down")]
    Stopping,
}

impl PendingRefusal {
    /// The limit hit, as the config names it.
    pub fn limit(&self) -> &'static str {
        match self {
            PendingRefusal::Source(_) => "max_unauthenticated_per_source",
            PendingRefusal::Total | PendingRefusal::Queue | PendingRefusal::Stopping => "max_sessions",
        }
    }
}

/// One connection's place among those waiting to authenticate; released on drop.
pub(crate) struct Pending {
    owner: Arc<Unauthenticated>,
    place: Arc<Place>,
}

impl Pending {
    /// A request (its body read) is being handled: the connection is not
    /// idle until it is answered.
    pub fn busy(&self) {
        self.place.idle_since.store(BUSY, Ordering::Relaxed);
    }

    /// Its answer went out; `advancing` when a CredSSP exchange is under way
    /// (the answer was one of its legs).
    pub fn answered(&self, advancing: bool) {
        self.place.advancing.store(advancing, Ordering::Relaxed);
        self.place.idle_since.store(self.owner.now(), Ordering::Relaxed);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        {
            let mut table = self.owner.table();
            let source = self.place.source;
            // A shed place has left the table already.
            if let Some(places) = table.held.get_mut(&source) {
                if let Some(i) = places.iter().position(|p| Arc::ptr_eq(p, &self.place)) {
                    places.remove(i);
                    if places.is_empty() {
                        table.held.remove(&source);
                    }
                    table.count = table.count.saturating_sub(1);
                }
            }
        }
        self.owner.released.notify_waiters();
    }
}

/// A place found: the connection's own, and the peer of the idle connection
/// it replaced, if it did (told to end; for the caller to audit).
pub(crate) struct Placed {
    pub pending: Pending,
    pub shed: Option<SocketAddr>,
}

/// Counts a connection among those waiting for a place while it waits.
struct Waiting<'a>(&'a Unauthenticated);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut table = self.0.table();
        table.waiting = table.waiting.saturating_sub(1);
    }
}

/// Counts a connection among those being answered 503 while it is.
pub(crate) struct TurningAway(Arc<Unauthenticated>);

impl Drop for TurningAway {
    fn drop(&mut self) {
        let mut table = self.0.table();
        table.turning_away = table.turning_away.saturating_sub(1);
    }
}

impl Unauthenticated {
    pub fn new(limits: &LimitsConfig) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            per_source: limits.max_unauthenticated_per_source,
            total: limits.max_sessions,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            released: Notify::new(),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A place at once: a free one, or the place of an idle connection.
    pub fn try_place(self: &Arc<Self>, peer: SocketAddr, ender: &Arc<Ender>) -> Result<Placed, PendingRefusal> {
        let source = SourceNet::of(peer.ip());
        let now = self.now();
        let mut table = self.table();
        let mut shed = None;
        if table.count >= self.total {
            let (victim_source, index) = self.victim(&table, source, now).ok_or_else(|| {
                if table.held.get(&source).map_or(0, Vec::len) >= self.per_source {
                    PendingRefusal::Source(source)
                } else {
                    PendingRefusal::Total
                }
            })?;
            if let Some(places) = table.held.get_mut(&victim_source) {
                let victim = places.remove(index);
                if places.is_empty() {
                    table.held.remove(&victim_source);
                }
                table.count = table.count.saturating_sub(1);
                victim
                    .ender
                    .end("shed: an idle connection waiting to log on made room for another");
                shed = Some(victim.peer);
            }
        }
        let place = Arc::new(Place {
            source,
            peer,
            ender: ender.clone(),
            idle_since: AtomicU64::new(now),
            advancing: AtomicBool::new(false),
        });
        table.held.entry(source).or_default().push(place.clone());
        table.count += 1;
        Ok(Placed {
            pending: Pending {
                owner: self.clone(),
                place,
            },
            shed,
        })
    }

    /// The place to shed for a newcomer from `source`: the oldest idle one of
    /// the source holding the most; only its own once it holds its share.
    fn victim(&self, table: &Table, source: SourceNet, now: u64) -> Option<(SourceNet, usize)> {
        let own_only = table.held.get(&source).map_or(0, Vec::len) >= self.per_source;
        let mut best: Option<(usize, u64, SourceNet, usize)> = None;
        for (holder, places) in &table.held {
            if own_only && *holder != source {
                continue;
            }
            let oldest = places
                .iter()
                .enumerate()
                .filter_map(|(i, place)| Some((place.sheddable(now, i < self.per_source)?, i)))
                .min();
            let Some((since, index)) = oldest else {
                continue;
            };
            let better = best.is_none_or(|(held, best_since, _, _)| {
                places.len() > held || (places.len() == held && since < best_since)
            });
            if better {
                best = Some((places.len(), since, *holder, index));
            }
        }
        best.map(|(_, _, holder, index)| (holder, index))
    }

    /// A place, waiting up to `patience` for one (a place released, or one
    /// idle long enough to shed); refused at once when too many wait already.
    pub async fn place(
        self: &Arc<Self>,
        peer: SocketAddr,
        ender: &Arc<Ender>,
        patience: Duration,
    ) -> Result<Placed, PendingRefusal> {
        if let Ok(placed) = self.try_place(peer, ender) {
            return Ok(placed);
        }
        let _waiting = {
            let mut table = self.table();
            if table.waiting >= self.total {
                return Err(PendingRefusal::Queue);
            }
            table.waiting += 1;
            Waiting(self)
        };
        let deadline = Instant::now() + patience;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let refusal = match self.try_place(peer, ender) {
                Ok(placed) => return Ok(placed),
                Err(refusal) => refusal,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(refusal);
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(RECHECK.min(deadline - now)) => {}
                _ = ender.cancelled() => return Err(PendingRefusal::Stopping),
            }
        }
    }

    /// Leave to answer a connection that found no place with a 503; `None`
    /// when too many are being answered already (it is closed unanswered).
    pub fn turn_away(self: &Arc<Self>) -> Option<TurningAway> {
        let mut table = self.table();
        if table.turning_away >= MAX_TURNING_AWAY {
            return None;
        }
        table.turning_away += 1;
        Some(TurningAway(self.clone()))
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
    /// Told whenever a session slot is released, so that logons waiting for one retry.
    sessions_freed: Notify,
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
        {
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
        if let Kind::Session = self.kind {
            self.quotas.sessions_freed.notify_waiters();
        }
    }
}

impl Quotas {
    pub fn new(limits: LimitsConfig) -> Arc<Quotas> {
        Arc::new(Quotas {
            limits,
            counts: Mutex::new(Counts::default()),
            sessions_freed: Notify::new(),
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

    /// A session slot, waiting until `until` for one to come free: a burst of
    /// one user's logons (an automation host's forks) is served in turn, as
    /// earlier sessions end, rather than refused.
    pub async fn session_by(self: &Arc<Self>, user: &str, until: Instant) -> Result<Slot, QuotaError> {
        loop {
            let freed = self.sessions_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.session(user) {
                Ok(slot) => return Ok(slot),
                Err(full) if Instant::now() >= until => return Err(full),
                Err(_) => {}
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
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

    fn limits(total: usize, per_source: usize) -> LimitsConfig {
        LimitsConfig {
            max_sessions: total,
            max_sessions_per_user: 1,
            max_shells_per_user: 1,
            max_operations_per_user: 1,
            max_unauthenticated_per_source: per_source,
            max_operation_timeout: Duration::from_secs(60),
        }
    }

    /// Places whose clock began a minute ago, so that a test can make one idle
    /// for as long as it needs without waiting.
    fn places(total: usize, per_source: usize) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            per_source,
            total,
            epoch: Instant::now().checked_sub(Duration::from_secs(60)).unwrap(),
            table: Mutex::new(Table::default()),
            released: Notify::new(),
        })
    }

    /// A connection from `peer` takes a place; its ender, to see whether it was shed.
    fn take(places: &Arc<Unauthenticated>, peer: &str) -> Result<(Placed, Arc<Ender>), PendingRefusal> {
        let ender = Ender::new_for_tests();
        places
            .try_place(peer.parse().unwrap(), &ender)
            .map(|placed| (placed, ender))
    }

    /// Make a place look idle for `secs`.
    fn idle_for(pending: &Pending, secs: u64) {
        let now = pending.owner.now();
        pending.place.idle_since.store(now - secs * 1000, Ordering::Relaxed);
    }

    #[test]
    fn sources_aggregate_per_ipv6_64() {
        let a = SourceNet::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = SourceNet::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = SourceNet::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = SourceNet::of("::ffff:127.0.0.9".parse().unwrap());
        assert_eq!(mapped, SourceNet::of("127.0.0.9".parse().unwrap()));
        assert_eq!(mapped.to_string(), "127.0.0.9");
    }

    #[test]
    fn the_per_source_cap_bites_only_under_pressure() {
        let places = places(4, 2);
        // No pressure: one source takes more than its share.
        let held: Vec<_> = (0..3).map(|_| take(&places, "127.0.0.50:1").unwrap()).collect();
        let (other, _) = take(&places, "127.0.0.51:1").unwrap();
        // Full, nothing idle: a newcomer is refused, citing the cap when its source holds its share.
        assert_eq!(take(&places, "127.0.0.52:1").err(), Some(PendingRefusal::Total));
        assert_eq!(
            take(&places, "127.0.0.50:2").err(),
            Some(PendingRefusal::Source(SourceNet::of("127.0.0.50".parse().unwrap())))
        );
        // Over its share under pressure, a source replaces only its own idle places.
        idle_for(&other.pending, 30);
        assert!(take(&places, "127.0.0.50:2").is_err());
        idle_for(&held[1].0.pending, 2);
        let (again, _) = take(&places, "127.0.0.50:2").unwrap();
        assert_eq!(again.shed, Some("127.0.0.50:1".parse().unwrap()));
        assert!(held[1].1.is_ended() && !held[0].1.is_ended());
        // The shed place's own release does not free a second place: `again` and `other` remain.
        drop(held);
        assert_eq!(places.table().count, 2);
    }

    #[test]
    fn under_pressure_the_oldest_idle_of_the_biggest_holder_goes() {
        let places = places(5, 16);
        let crowd: Vec<_> = (0..3)
            .map(|i| take(&places, &format!("127.0.0.60:{i}")).unwrap())
            .collect();
        let (small, small_ender) = take(&places, "127.0.0.61:1").unwrap();
        let (busy, busy_ender) = take(&places, "127.0.0.62:1").unwrap();
        idle_for(&small.pending, 50);
        idle_for(&crowd[0].0.pending, 3);
        idle_for(&crowd[2].0.pending, 7);
        busy.pending.busy();
        idle_for(&busy.pending, 50);
        busy.pending.busy();
        let (alice, _) = take(&places, "127.0.0.70:1").unwrap();
        assert_eq!(alice.shed, Some("127.0.0.60:2".parse().unwrap()));
        assert!(crowd[2].1.is_ended() && !crowd[0].1.is_ended() && !small_ender.is_ended());
        // A fresh connection (under a second) and a request in flight are not idle.
        let (_bob, _) = take(&places, "127.0.0.71:1").unwrap();
        assert!(crowd[0].1.is_ended());
        let (_carol, _) = take(&places, "127.0.0.72:1").unwrap();
        assert!(small_ender.is_ended());
        assert_eq!(take(&places, "127.0.0.73:1").err(), Some(PendingRefusal::Total));
        assert!(!busy_ender.is_ended() && !crowd[1].1.is_ended());
    }

    #[test]
    fn a_crowd_beyond_its_share_makes_room_sooner() {
        let places = places(3, 2);
        let crowd: Vec<_> = (0..3)
            .map(|i| take(&places, &format!("127.0.0.85:{i}")).unwrap())
            .collect();
        for (placed, _) in &crowd {
            let now = places.now();
            placed.pending.place.idle_since.store(now - 500, Ordering::Relaxed);
        }
        // Half a second idle: only the place beyond the source's share of two may go.
        let (_alice, _) = take(&places, "127.0.0.86:1").unwrap();
        assert!(crowd[2].1.is_ended() && !crowd[0].1.is_ended() && !crowd[1].1.is_ended());
        assert!(take(&places, "127.0.0.87:1").is_err());
    }

    #[test]
    fn a_logon_under_way_is_not_idle_between_its_legs() {
        let places = places(1, 16);
        let (logging_on, ender) = take(&places, "127.0.0.80:1").unwrap();
        logging_on.pending.answered(true);
        idle_for(&logging_on.pending, 3);
        assert!(take(&places, "127.0.0.81:1").is_err());
        idle_for(&logging_on.pending, 6);
        assert!(take(&places, "127.0.0.81:1").is_ok());
        assert!(ender.is_ended());
    }

    #[tokio::test]
    async fn a_newcomer_waits_for_a_place_then_is_refused() {
        let places = places(1, 16);
        let (first, _) = take(&places, "127.0.0.90:1").unwrap();
        let ender = Ender::new_for_tests();
        let waiter = tokio::spawn({
            let places = places.clone();
            let ender = ender.clone();
            async move {
                places
                    .place("127.0.0.91:1".parse().unwrap(), &ender, Duration::from_secs(10))
                    .await
                    .map(|placed| placed.shed)
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        assert_eq!(places.table().waiting, 1);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(None));
        assert_eq!(places.table().waiting, 0);
        let (_second, _) = take(&places, "127.0.0.92:1").unwrap_or_else(|_| panic!("the waiter left"));
        let refused = places
            .place("127.0.0.93:1".parse().unwrap(), &ender, Duration::from_millis(200))
            .await;
        assert_eq!(refused.err(), Some(PendingRefusal::Total));
    }

    #[tokio::test]
    async fn a_logon_waits_for_a_session_slot() {
        let quotas = Quotas::new(limits(10, 16));
        let first = quotas.session("LAB\\alice").unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(quotas.session_by("LAB\\alice", soon).await.is_err());
        let waiter = tokio::spawn({
            let quotas = quotas.clone();
            async move {
                let until = Instant::now() + Duration::from_secs(10);
                quotas.session_by("lab\\ALICE", until).await.is_ok()
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(first);
        assert!(waiter.await.unwrap());
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

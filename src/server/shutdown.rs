//! How a session is told to end, and the register of sessions a reload may
//! end. A leaf: the connection, the session and the listeners import it, and it
//! imports none of them, so "end this session" never needs the code that runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::audit::AuthMethod;

/// A session's "end now", and why. Its token is a child of the relay's stop
/// token, so SIGTERM ends every session.
pub(crate) struct Ender {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
    /// The request in flight must be let finish briefly (a Create, so the shell it makes is known).
    completing: AtomicBool,
}

impl Ender {
    pub fn new(stop: &CancellationToken) -> Arc<Ender> {
        Arc::new(Ender {
            token: stop.child_token(),
            reason: Mutex::new(None),
            completing: AtomicBool::new(false),
        })
    }

    #[cfg(test)]
    pub fn new_for_tests() -> Arc<Ender> {
        Ender::new(&CancellationToken::new())
    }

    /// Ask the session to end; the first reason given is kept.
    pub fn end(&self, reason: &str) {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert_with(|| reason.to_string());
        self.token.cancel();
    }

    /// Resolves once the session is told to end.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .unwrap_or_else(|| "relay shutting down".into())
    }

    pub fn set_completing(&self, completing: bool) {
        self.completing.store(completing, Ordering::Relaxed);
    }

    /// Whether the request in flight is one to let finish briefly.
    pub fn is_completing(&self) -> bool {
        self.completing.load(Ordering::Relaxed)
    }
}

/// The authenticated sessions, so that a reload can end those of users who
/// were removed from the users file or whose password changed in it.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Registered>>,
}

/// A session's principal, how it logged on, and how to end it.
type Registered = (String, AuthMethod, Arc<Ender>);

impl Registry {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Register a session unless `admit` refuses it, both under the registry's
    /// lock: a reload (see [`Registry::end_each_after`]) then either sees the
    /// session or ran before `admit` looked at what it changed.
    pub fn register_if<E>(
        &self,
        id: &str,
        principal: &str,
        method: AuthMethod,
        ender: Arc<Ender>,
        admit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut sessions = self.sessions();
        admit()?;
        sessions.insert(id.to_string(), (principal.to_string(), method, ender));
        Ok(())
    }

    pub fn unregister(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// With the registry locked, run `change` (what a reload replaces), then end
    /// every session for which `ending` gives a reason (from its principal and
    /// logon method); returns how many.
    pub fn end_each_after<'r>(
        &self,
        change: impl FnOnce(),
        ending: impl Fn(&str, AuthMethod) -> Option<&'r str>,
    ) -> usize {
        let sessions = self.sessions();
        change();
        let mut ended = 0;
        for (principal, method, ender) in sessions.values() {
            if let Some(reason) = ending(principal, *method) {
                ender.end(reason);
                ended += 1;
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_a_stop_ends_every_session() {
        let stop = CancellationToken::new();
        let (a, b) = (Ender::new(&stop), Ender::new(&stop));
        a.end("idle timeout");
        a.end("connection closed");
        assert_eq!(a.reason(), "idle timeout");
        assert!(!b.is_ended());
        stop.cancel();
        assert!(b.is_ended());
        assert_eq!(b.reason(), "relay shutting down");
    }

    #[test]
    fn registry_ends_only_sessions_of_removed_users() {
        let stop = CancellationToken::new();
        let registry = Registry::default();
        let (alice, bob) = (Ender::new(&stop), Ender::new(&stop));
        let carol = Ender::new(&stop);
        let admit = || Ok::<(), ()>(());
        registry
            .register_if("1", "LAB\\alice", AuthMethod::Ntlm, alice.clone(), admit)
            .unwrap();
        registry
            .register_if("2", "LAB\\bob", AuthMethod::Basic, bob.clone(), admit)
            .unwrap();
        registry
            .register_if("3", "LAB\\carol", AuthMethod::Kerberos, carol.clone(), admit)
            .unwrap();
        let dave = Ender::new(&stop);
        assert_eq!(
            registry.register_if("4", "LAB\\dave", AuthMethod::Ntlm, dave, || Err("refused")),
            Err("refused")
        );
        let ending = |p: &str, method| {
            let keep = method == AuthMethod::Kerberos || p.eq_ignore_ascii_case("lab\\alice");
            (!keep).then_some("user removed")
        };
        let ended = registry.end_each_after(|| {}, ending);
        assert_eq!(ended, 1);
        assert!(!alice.is_ended() && !carol.is_ended());
        assert_eq!(bob.reason(), "user removed");
        registry.unregister("2");
        assert_eq!(registry.end_each_after(|| {}, |_, _| Some("x")), 2);
    }
}

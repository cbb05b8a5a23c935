//! The target connections of one inbound session, by target name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::{TargetConnection, TargetResponse, UpstreamError};
use crate::resolve::ResolvedTarget;
use crate::vault::DelegatedCredentials;

/// Connections authenticated with one session's credentials: never shared
/// with another session, so never with another user.
///
/// Boxed: a map allocates room for several entries even when it holds one,
/// and the connection moves in and out of it on every exchange, inline in
/// the session's task.
#[derive(Default)]
pub struct Pool {
    connections: HashMap<String, Box<TargetConnection>>,
}

impl Pool {
    /// Send on this session's connection to `target`, opening (and
    /// authenticating) one to `addresses` (the ones the policy checked) when
    /// there is none or the target closed it.
    ///
    /// The connection is out of the pool while the exchange runs: if the
    /// exchange fails, or its future is dropped half-way (the caller went
    /// away, the session ended), the connection goes with it, since its
    /// HTTP state and sealing sequence numbers are out of step.
    pub async fn exchange(
        &mut self,
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        credentials: &DelegatedCredentials,
        soap: &[u8],
        wait: Duration,
        max_envelope: usize,
    ) -> Result<TargetResponse, UpstreamError> {
        let key = target.name.to_ascii_lowercase();
        let mut connection = match self.connections.remove(&key) {
            Some(connection) if !connection.is_closed() => connection,
            _ => {
                // Connecting and authenticating is a large state machine, run once per
                // connection: boxed, so that the session's task does not carry its size
                // for as long as the session lives.
                Box::new(Box::pin(TargetConnection::open(target, addresses, credentials)).await?)
            }
        };
        let result = connection.exchange(soap, wait, max_envelope).await;
        if result.is_ok() {
            self.connections.insert(key, connection);
        }
        result
    }

    /// The address of the live connection to `target`, if there is one: what
    /// the policy checks, so a name is not resolved again while it is in use.
    pub fn live_peer(&self, target: &str) -> Option<IpAddr> {
        self.connections
            .get(&target.to_ascii_lowercase())
            .filter(|connection| !connection.is_closed())
            .map(|connection| connection.peer())
    }

    /// Take the connection to `target` out of the pool (to use it elsewhere).
    pub fn take(&mut self, target: &str) -> Option<Box<TargetConnection>> {
        self.connections.remove(&target.to_ascii_lowercase())
    }

    /// Put a connection (back) into the pool.
    pub fn insert(&mut self, connection: Box<TargetConnection>) {
        self.connections
            .insert(connection.target.name.to_ascii_lowercase(), connection);
    }

    pub fn clear(&mut self) {
        self.connections.clear();
    }
}

//! Accepting connections: the source allowlist is checked before anything
//! else, then the connection goes to a worker, where it first needs a place
//! among those waiting to authenticate (before any TLS or CredSSP work).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::refusal::Refusal;
use super::workers::{Handoff, Workers};
use super::{ListenerKind, Shared};

/// Longest pause after failing accepts, e.g. out of file descriptors:
/// retrying at once would spin a core while nothing can be accepted.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) async fn accept_loop(listener: TcpListener, kind: ListenerKind, shared: Arc<Shared>, workers: Arc<Workers>) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(error) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = shared.stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        if !source_allowed(&shared.config().listen.allow_sources, peer) {
            drop(stream);
            Refusal::unlisted_source().record_connection(peer, &shared);
            continue;
        }
        match stream.into_std() {
            Ok(stream) => workers.hand_off(Handoff {
                stream,
                peer,
                kind: kind.clone(),
            }),
            Err(error) => tracing::warn!(%error, %peer, "cannot hand an accepted connection to a worker"),
        }
    }
}

/// An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn source_allowed(allowed: &[ipnet::IpNet], peer: SocketAddr) -> bool {
    let ip = unmapped(peer.ip());
    allowed.is_empty() || allowed.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_allowlist() {
        let nets: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(source_allowed(&nets, "127.0.0.9:1".parse().unwrap()));
        assert!(source_allowed(&nets, "[::ffff:127.0.0.9]:1".parse().unwrap()));
        assert!(!source_allowed(&nets, "[::1]:1".parse().unwrap()));
        assert!(source_allowed(&[], "[::1]:1".parse().unwrap()));
    }
}

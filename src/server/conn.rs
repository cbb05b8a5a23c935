//! One accepted connection, from its first byte to its session's end.
//!
//! hyper reads requests and writes answers; the session itself is driven by
//! [`drive`], one request at a time, in the connection's own task. Whatever
//! ends the session — the connection closing, a deadline, SIGTERM, a
//! re-authentication, the user leaving the users file — goes through the
//! session's [`Ender`]: the request in flight is dropped (its target exchange
//! cancelled, its target connection thrown away, its audit line written),
//! then [`Session::end`] deletes the shells left open, audits and wipes the
//! credentials. Deadlines are timers that fire when due, not a ticker.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::auth::{self, Logon};
use super::limits::Pending;
use super::reply::{self, HttpResponse};
use super::request::{self, BodyError};
use super::session::Session;
use super::{pipeline, ListenerKind, Shared};
use crate::audit::AuditKind;
use crate::audit::AuthMethod;
use crate::proto::wsman;

/// How long a Create already sent to a target may still finish after its
/// session was told to end, so the shell it makes is known and deleted.
const CREATE_GRACE: Duration = Duration::from_secs(2);
/// How long a last answer (a refusal that closes the connection) may take to
/// reach the caller once the session is over.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// A session's "end now", and why. Its token is a child of the relay's stop
/// token, so SIGTERM ends every session.
pub(crate) struct Ender {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
    /// The request in flight must be let finish briefly (see [`CREATE_GRACE`]).
    completing: AtomicBool,
}

impl Ender {
    fn new(stop: &CancellationToken) -> Arc<Ender> {
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

    pub fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .unwrap_or_else(|| "relay shutting down".into())
    }

    pub fn set_completing(&self, completing: bool) {
        self.completing.store(completing, Ordering::Relaxed);
    }
}

/// The authenticated sessions, so that a reload can end those of users who
/// were removed from the users file.
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

    pub fn register(&self, id: &str, principal: &str, method: AuthMethod, ender: Arc<Ender>) {
        self.sessions()
            .insert(id.to_string(), (principal.to_string(), method, ender));
    }

    pub fn unregister(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// End every session whose principal (and logon method) `keep` refuses;
    /// returns how many.
    pub fn end_where(&self, keep: impl Fn(&str, AuthMethod) -> bool, reason: &str) -> usize {
        let sessions = self.sessions();
        let mut ended = 0;
        for (principal, method, ender) in sessions.values() {
            if !keep(principal, *method) {
                ender.end(reason);
                ended += 1;
            }
        }
        ended
    }
}

/// A request handed from hyper to the session, and where its answer goes.
struct Call {
    request: Request<Incoming>,
    reply: oneshot::Sender<HttpResponse>,
}

/// Where hyper leaves a request for the session's [`drive`] loop. hyper's
/// HTTP/1 server hands over one request at a time (it reads the next only
/// once this one is answered), so a single slot is enough; a channel would
/// allocate room for 32 calls per connection and keep it while the session
/// lives.
struct Mailbox<T>(Mutex<Slot<T>>);

struct Slot<T> {
    item: Option<T>,
    /// The taker waiting for the next item.
    taker: Option<Waker>,
    closed: bool,
}

impl<T> Mailbox<T> {
    fn new() -> Self {
        Mailbox(Mutex::new(Slot {
            item: None,
            taker: None,
            closed: false,
        }))
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Leave `item` for the taker; given back when the mailbox is closed (or,
    /// which hyper never causes, still holds one).
    fn post(&self, item: T) -> Result<(), T> {
        let mut slot = self.slot();
        if slot.closed || slot.item.is_some() {
            return Err(item);
        }
        slot.item = Some(item);
        if let Some(taker) = slot.taker.take() {
            taker.wake();
        }
        Ok(())
    }

    /// The next item posted.
    async fn take(&self) -> T {
        std::future::poll_fn(|cx| {
            let mut slot = self.slot();
            match slot.item.take() {
                Some(item) => Poll::Ready(item),
                None => {
                    slot.taker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Refuse further items and drop the one not taken yet.
    fn close(&self) {
        let left = {
            let mut slot = self.slot();
            slot.closed = true;
            slot.item.take()
        };
        drop(left);
    }
}

/// Serve one accepted connection (TLS first on the HTTPS listener) until its
/// session ends.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    pending: Pending,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    // Built in a block that ends before the await: a named local moved into
    // the awaited future would keep a place of its own in this one.
    {
        let ender = Ender::new(&shared.stop);
        let session = Session::new(peer, kind.fixed_target.clone(), kind.https, pending, ender);
        let span = tracing::info_span!("conn", session = %session.id, source = %peer, user = tracing::field::Empty);
        serve_http(stream, session, &shared).instrument(span)
    }
    .await
}

/// The TLS handshake of the HTTPS listener, with the same deadline as a
/// request's headers. The stream is boxed: an idle session's task then holds a
/// pointer, not the TLS state inline next to everything else it awaits.
async fn accept_tls(
    stream: TcpStream,
    shared: &Shared,
    ender: &Ender,
) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.credssp().tls.clone());
    let handshake = timeout(shared.config().listen.header_read_timeout, acceptor.accept(stream));
    tokio::select! {
        accepted = handshake => match accepted {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        },
        _ = ender.token.cancelled() => None,
    }
}

/// HTTP on the connection, after the TLS handshake on the HTTPS listener.
/// The handshake is awaited here rather than before the call: a value moved
/// into a future after an await keeps its own place in the caller's state
/// too, and an idle session's task would carry the session twice.
async fn serve_http(stream: TcpStream, mut session: Session, shared: &Arc<Shared>) {
    let stream = if session.https {
        match accept_tls(stream, shared, &session.ender).await {
            Some(tls) => Either::Right(tls),
            None => return,
        }
    } else {
        Either::Left(stream)
    };
    let incoming = Arc::new(Mailbox::<Call>::new());
    let calls = incoming.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let (reply, answer) = oneshot::channel();
        let posted = calls.post(Call { request, reply }).is_ok();
        async move {
            let gone = || reply::closing(StatusCode::SERVICE_UNAVAILABLE, "the relay is closing this connection");
            if !posted {
                return Ok::<_, Infallible>(gone());
            }
            Ok(answer.await.unwrap_or_else(|_| gone()))
        }
    });
    // hyper's own header_read_timeout also runs while a keep-alive
    // connection waits for its next request, which would end idle but
    // healthy sessions; `drive` enforces the deadlines instead.
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(shared.config().listen.max_header_size)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ender = session.ender.clone();
    {
        let driving = drive(&mut session, &incoming, shared);
        tokio::pin!(driving);
        // Drive the session to its end, and the connection alongside until it
        // closes (which ends the session). One await rather than a `select!`
        // followed by a second await on `driving`: that second suspension point
        // made every idle session's task 1.5 KiB larger.
        let mut connection_open = true;
        std::future::poll_fn(|cx| {
            if connection_open {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    connection_open = false;
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection error");
                    }
                    ender.end("connection closed");
                }
            }
            driving.as_mut().poll(cx)
        })
        .await;
    }
    incoming.close();
    let reason = ender.reason();
    // Write what is still owed (a closing answer), then close instead of
    // waiting for another request on an idle keep-alive connection.
    connection.as_mut().graceful_shutdown();
    let flush = async {
        let _ = timeout(FLUSH_GRACE, &mut connection).await;
    };
    tokio::join!(session.end(shared, &reason), flush);
}

/// Run the session's requests one by one until something ends it. On
/// return, any request in flight has been dropped.
async fn drive(session: &mut Session, incoming: &Mailbox<Call>, shared: &Shared) {
    let ender = session.ender.clone();
    loop {
        let deadline = session.idle_deadline(&shared.config());
        let Call { request, reply } = tokio::select! {
            biased;
            _ = ender.token.cancelled() => return,
            _ = sleep_until(deadline.at.into()) => {
                ender.end(deadline.reason);
                return;
            }
            call = incoming.take() => call,
        };
        let busy = session.busy_deadline(&shared.config());
        let answer = {
            let handling = handle(session, request, shared);
            tokio::pin!(handling);
            let answer = tokio::select! {
                biased;
                answer = &mut handling => Some(answer),
                _ = ender.token.cancelled() => None,
                _ = sleep_until(busy.at.into()) => {
                    ender.end(busy.reason);
                    None
                }
            };
            if answer.is_none() && ender.completing.load(Ordering::Relaxed) {
                let _ = timeout(CREATE_GRACE, &mut handling).await;
            }
            answer
        };
        let Some(answer) = answer else {
            return;
        };
        let _ = reply.send(answer);
        session.touch();
        if ender.is_ended() {
            return;
        }
    }
}

/// One request: route, read the body, authenticate, then the pipeline.
async fn handle(session: &mut Session, request: Request<Incoming>, shared: &Shared) -> HttpResponse {
    if request.method() != Method::POST {
        return reply::plain(StatusCode::METHOD_NOT_ALLOWED, "WS-Management accepts POST only");
    }
    let Some(route) = request::route(request.uri().path(), session.fixed_target.as_deref()) else {
        return reply::plain(
            StatusCode::NOT_FOUND,
            "not a WS-Management endpoint: use /wsman/<target>",
        );
    };
    let config = shared.config();
    let max_envelope = config.listen.max_envelope_size;
    if request::is_unauthenticated_identify(&request) {
        return match request::read_body(request, max_envelope).await {
            Ok(_) => reply::soap(StatusCode::OK, wsman::identify_response()),
            Err(error) => reply::plain(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string()),
        };
    }
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header(AUTHORIZATION);
    let content_type = header(CONTENT_TYPE).unwrap_or_default();
    // Read within the envelope limit before anything else: a body is never
    // buffered beyond it, authenticated or not. Before logon, the logon
    // deadline bounds a stalled upload; after, the idle timeout does.
    let body = match timeout(config.session.idle_timeout, request::read_body(request, max_envelope)).await {
        Err(_) => return reply::closing(StatusCode::REQUEST_TIMEOUT, "request body not received in time"),
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => {
            let mut event = session.event(AuditKind::Denied);
            event.status = Some(413);
            event.reason = Some(BodyError::TooLarge.to_string());
            shared.audit.emit(&event);
            return reply::plain(StatusCode::PAYLOAD_TOO_LARGE, &BodyError::TooLarge.to_string());
        }
        Ok(Err(error)) => return reply::plain(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    drop(config);
    match auth::authenticate(session, authorization.as_deref(), shared).await {
        Logon::Proceed => pipeline::relay(session, &content_type, body, route, shared).await,
        Logon::Answer(answer) => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn taking five arguments returns, without calling it.
    fn future_size<A, B, C, D, E, F>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle session keeps its task's future resident: what only opening a target
    /// connection or a TLS handshake needs must not be part of it.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(serve);
        assert!(size <= 6 * 1024, "a connection's future is {size} bytes");
    }

    #[tokio::test]
    async fn a_posted_call_reaches_the_waiting_taker() {
        let mailbox = Arc::new(Mailbox::new());
        let taker = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!taker.is_finished());
        mailbox.post(7).unwrap();
        assert_eq!(taker.await.unwrap(), 7);
        // Posted before anyone waits: taken at once.
        mailbox.post(8).unwrap();
        assert_eq!(mailbox.take().await, 8);
    }

    #[test]
    fn a_mailbox_holds_one_call_and_refuses_after_close() {
        let mailbox = Mailbox::new();
        let (first, mut first_answer) = oneshot::channel::<()>();
        let (second, _) = oneshot::channel::<()>();
        mailbox.post(first).unwrap();
        assert!(mailbox.post(second).is_err(), "a second call while one waits");
        // Closing drops the call nobody took, so its caller is answered at once.
        mailbox.close();
        assert_eq!(first_answer.try_recv(), Err(oneshot::error::TryRecvError::Closed));
        let (third, _) = oneshot::channel::<()>();
        assert!(mailbox.post(third).is_err(), "a call after close");
    }

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
        registry.register("1", "LAB\\alice", AuthMethod::Ntlm, alice.clone());
        registry.register("2", "LAB\\bob", AuthMethod::Basic, bob.clone());
        registry.register("3", "LAB\\carol", AuthMethod::Kerberos, carol.clone());
        let keep = |p: &str, method| method == AuthMethod::Kerberos || p.eq_ignore_ascii_case("lab\\alice");
        let ended = registry.end_where(keep, "user removed");
        assert_eq!(ended, 1);
        assert!(!alice.is_ended() && !carol.is_ended());
        assert_eq!(bob.reason(), "user removed");
        registry.unregister("2");
        assert_eq!(registry.end_where(|_, _| false, "x"), 2);
    }
}

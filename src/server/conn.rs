//! One accepted connection, from its first byte to its session's end.
//!
//! hyper reads requests and writes answers; the session itself is driven by
//! [`drive`], one request at a time, in the connection's own task. Whatever
//! ends the session — the connection closing, a deadline, SIGTERM, a
//! re-authentication, the user leaving the users file or getting a new
//! password there — goes through the
//! session's [`Ender`]: the request in flight is dropped (its target exchange
//! cancelled, its target connection thrown away, its audit line written),
//! then [`Session::end`] deletes the shells left open, audits and wipes the
//! credentials. Deadlines are timers that fire when due, not a ticker.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout};
use tokio_util::either::Either;
use tracing::Instrument;

use super::auth::{self, Logon};
use super::limits::PendingRefusal;
use super::refusal::Refusal;
use super::reply::{self, HttpResponse};
use super::request::{self, BodyError};
use super::session::Session;
use super::shutdown::Ender;
use super::{pipeline, ListenerKind, Shared};
use crate::audit::AuditKind;
use crate::proto::wsman;

/// How long a Create already sent to a target may still finish after its
/// session was told to end, so the shell it makes is known and deleted.
const CREATE_GRACE: Duration = Duration::from_secs(2);
/// How long a last answer (a refusal that closes the connection) may take to
/// reach the caller once the session is over.
const FLUSH_GRACE: Duration = Duration::from_secs(1);
/// How long a connection that found no place may take to send its request
/// head and receive its 503.
const TURN_AWAY: Duration = Duration::from_secs(2);
/// How much of such a connection's request is read before the answer anyway.
const MAX_TURN_AWAY_READ: usize = 16 * 1024;

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
/// session ends. It first needs a place among the connections waiting to log
/// on, waiting for one at most as long as it may take to send its headers;
/// without one it is answered 503 and closed.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, kind: ListenerKind, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let ender = Ender::new(&shared.stop);
    let patience = shared.config().listen.header_read_timeout;
    // Boxed: a future's state is as large as its largest wait, and this one
    // is over before the session starts.
    let placed = match Box::pin(shared.unauthenticated.place(peer, &ender, patience)).await {
        Ok(placed) => placed,
        // The relay is stopping: no limit refused it.
        Err(PendingRefusal::Stopping) => return,
        Err(refusal) => {
            Box::pin(turn_away(
                stream,
                peer,
                &kind,
                Refusal::pending(&refusal),
                &shared,
                &ender,
            ))
            .await;
            return;
        }
    };
    if let Some(shed) = placed.shed {
        Refusal::shed().record_connection(shed, &shared);
    }
    // Built in a block that ends before the await: a named local moved into
    // the awaited future would keep a place of its own in this one.
    {
        let session = Session::new(peer, kind.fixed_target.clone(), kind.https, placed.pending, ender);
        let span =
            tracing::info_span!("conn", session = %session.link.id, source = %peer, user = tracing::field::Empty);
        serve_http(stream, session, &shared).instrument(span)
    }
    .await
}

/// Answer a connection that found no place: audit and count the refusal,
/// read the request head for a moment (a client reads no answer it has not
/// finished asking for), answer, close. Closed unanswered when many are being
/// answered already.
async fn turn_away(
    stream: TcpStream,
    peer: SocketAddr,
    kind: &ListenerKind,
    refusal: Refusal,
    shared: &Shared,
    ender: &Ender,
) {
    refusal.record_connection(peer, shared);
    let Some(_turning_away) = shared.unauthenticated.turn_away() else {
        return;
    };
    let answer = refusal.wire_answer();
    let _ = timeout(TURN_AWAY, async {
        if kind.https {
            if let Some(tls) = accept_tls(stream, shared, ender).await {
                answer_head(*tls, &answer).await;
            }
        } else {
            answer_head(stream, &answer).await;
        }
    })
    .await;
}

/// Read up to the end of a request head (or [`MAX_TURN_AWAY_READ`] of it),
/// then write `answer` and close.
async fn answer_head<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: &[u8]) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_TURN_AWAY_READ {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
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
        _ = ender.cancelled() => None,
    }
}

/// HTTP on the connection, after the TLS handshake on the HTTPS listener.
/// The handshake is awaited here rather than before the call: a value moved
/// into a future after an await keeps its own place in the caller's state
/// too, and an idle session's task would carry the session twice.
async fn serve_http(stream: TcpStream, mut session: Session, shared: &Arc<Shared>) {
    let stream = if session.link.https {
        match accept_tls(stream, shared, &session.link.ender).await {
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
    let ender = session.link.ender.clone();
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
    let ender = session.link.ender.clone();
    loop {
        let deadline = session.idle_deadline(&shared.config());
        let Call { request, reply } = tokio::select! {
            biased;
            _ = ender.cancelled() => return,
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
                _ = ender.cancelled() => None,
                _ = sleep_until(busy.at.into()) => {
                    ender.end(busy.reason);
                    None
                }
            };
            if answer.is_none() && ender.is_completing() {
                let _ = timeout(CREATE_GRACE, &mut handling).await;
            }
            answer
        };
        let Some(answer) = answer else {
            return;
        };
        let _ = reply.send(answer);
        session.touch();
        let advancing = session.credssp().is_some();
        if let Some(place) = session.place() {
            place.answered(advancing);
        }
        if ender.is_ended() {
            return;
        }
    }
}

/// One request: route, read the body, authenticate, then the pipeline. A
/// refusal on the way is answered, audited and counted at the one edge.
async fn handle(session: &mut Session, request: Request<Incoming>, shared: &Shared) -> HttpResponse {
    let refusal = match admit(session, request, shared).await {
        Admitted::Answered(answer) => return answer,
        Admitted::Refused(refusal) => refusal,
    };
    if refusal.close {
        session.link.ender.end(&refusal.reason);
    }
    refusal.answer(session.event(AuditKind::Denied), shared)
}

enum Admitted {
    Answered(HttpResponse),
    Refused(Refusal),
}

async fn admit(session: &mut Session, request: Request<Incoming>, shared: &Shared) -> Admitted {
    if request.method() != Method::POST {
        return Admitted::Refused(Refusal::malformed(
            StatusCode::METHOD_NOT_ALLOWED,
            "WS-Management accepts POST only",
        ));
    }
    let Some(route) = request::route(request.uri().path(), session.link.fixed_target.as_deref()) else {
        return Admitted::Refused(Refusal::malformed(
            StatusCode::NOT_FOUND,
            "not a WS-Management endpoint: use /wsman/<target>",
        ));
    };
    let config = shared.config();
    let max_envelope = config.listen.max_envelope_size;
    if request::is_unauthenticated_identify(&request) {
        return match request::read_body(request, max_envelope).await {
            Ok(_) => Admitted::Answered(reply::soap(StatusCode::OK, wsman::identify_response())),
            Err(error) => Admitted::Refused(Refusal::malformed(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())),
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
        Err(_) => {
            let refusal = Refusal::malformed(StatusCode::REQUEST_TIMEOUT, "request body not received in time");
            return Admitted::Refused(refusal.closing());
        }
        Ok(Ok(body)) => body,
        Ok(Err(error @ BodyError::TooLarge)) => {
            return Admitted::Refused(Refusal::denied(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()))
        }
        Ok(Err(error)) => return Admitted::Refused(Refusal::malformed(StatusCode::BAD_REQUEST, error.to_string())),
    };
    drop(config);
    // Busy from here, not from the request head: a body trickling in is no
    // progress through a logon, and must not keep an idle socket's place.
    if let Some(place) = session.place() {
        place.busy();
    }
    match auth::authenticate(session, authorization.as_deref(), shared).await {
        Logon::Active(active) => Admitted::Answered(pipeline::relay(active, &content_type, body, route, shared).await),
        Logon::ActiveAnswering(active, authenticate) => {
            let mut answer = pipeline::relay(active, &content_type, body, route, shared).await;
            if let Ok(value) = hyper::header::HeaderValue::from_str(&authenticate) {
                answer.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, value);
            }
            Admitted::Answered(answer)
        }
        Logon::Continue(answer) => Admitted::Answered(answer),
        Logon::Refused(refusal) => Admitted::Refused(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn taking four arguments returns, without calling it.
    fn future_size<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
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
}

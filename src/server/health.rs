//! The `[metrics] listen` endpoint: `/metrics` (Prometheus), `/healthz` (the process
//! answers) and `/readyz` (it can serve: listeners up, audit log writable, a KDC
//! reachable in domain mode, the `[directory]` answering when rules name groups). Plain HTTP
//! without authentication, so bind it where only the monitoring can reach it; it holds no
//! user names or secrets.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors and the like: the relay's own listeners matter more.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| {
                let answer = answer(&shared, &request);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shared.stop.cancelled() => {}
            }
        });
    }
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn answer(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => response(StatusCode::OK, OPENMETRICS, shared.metrics.encode()),
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            let problems = not_ready(shared);
            if problems.is_empty() {
                response(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                response(StatusCode::SERVICE_UNAVAILABLE, TEXT, problems.join("\n") + "\n")
            }
        }
        _ => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Why the relay cannot serve now; empty when it can.
fn not_ready(shared: &Shared) -> Vec<String> {
    let mut problems = Vec::new();
    if !shared.listening.load(Ordering::Acquire) {
        problems.push("listeners not up yet".to_string());
    }
    if shared.stop.is_cancelled() {
        problems.push("shutting down".to_string());
    }
    if shared.audit.is_failing() {
        problems.push("the audit log cannot be written".to_string());
    }
    if let Some(problem) = shared.kdc_problem.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        problems.push(problem);
    }
    let config = shared.config();
    if config.directory.is_some() && !config.policy.groups().is_empty() {
        if let Some(problem) = shared.directory.problem() {
            problems.push(format!("group rules cannot be checked: {problem}"));
        }
    }
    problems
}

/// With a `[directory]` that rules need, keep its state current for `/readyz` between
/// logons (each logon's lookup updates it too), as [`watch_kdcs`] does for the KDCs.
pub(crate) async fn watch_directory(shared: Arc<Shared>) {
    loop {
        let config = shared.config();
        if let Some(directory) = config.directory.as_ref().filter(|_| !config.policy.groups().is_empty()) {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = shared.directory.probe(directory) => {}
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(KDC_PROBE_INTERVAL) => {}
        }
    }
}

/// How often the KDCs are probed for `/readyz`.
const KDC_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// In domain mode, keep `Shared::kdc_problem` current: none when the realm's
/// KDC transport can reach a KDC, else why not. Probed in the background so
/// that `/readyz` answers at once.
pub(crate) async fn watch_kdcs(shared: Arc<Shared>) {
    loop {
        let config = shared.config();
        let problem = tokio::select! {
            _ = shared.stop.cancelled() => return,
            problem = kdc_problem(&config) => problem,
        };
        *shared.kdc_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(KDC_PROBE_INTERVAL) => {}
        }
    }
}

async fn kdc_problem(config: &crate::config::Config) -> Option<String> {
    // The transport Kerberos exchanges use, with their timeouts and name lookups.
    let realm = config.defaults.kerberos.as_ref()?;
    realm.kdc.reachable().await.err()
}

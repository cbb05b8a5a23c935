//! The relay's listeners and per-connection sessions.
//!
//! - `listen`: accept, source allowlist; hands connections to the workers.
//! - `conn`: one connection from its place to log on (or its 503) to its session's end: deadlines, drain.
//! - `auth`: CredSSP and Basic logons; decides whether a request may proceed.
//! - `session`: a session's phases (waiting to log on, active), and its end (cleanup, audit, wipe).
//! - `shutdown`: how a session is told to end; the register of sessions a reload may end.
//! - `shells`: which shells a session owns; their deletion at its end.
//! - `request`: route, unauthenticated Identify, body within limits.
//! - `pipeline`: an authenticated request, unseal to audit, in one place.
//! - `refusal`: the one edge where a refusal becomes an answer, an audit line and metrics;
//!   refusals before logon summarised per source.
//! - `reply`: the HTTP responses the relay itself builds.
//! - `limits`: lockout, places for connections waiting to log on (shed, queued), quotas.
//! - `health`: `/metrics`, `/healthz` and `/readyz` on `[metrics] listen`.
//! - `workers`: a single-threaded runtime per core; connections stay on one.
//!
//! Each accepted TCP connection gets one session: waiting to log on (its
//! CredSSP exchange), then active (the caller's delegated credentials and its
//! authenticated target connections). The session dies with the connection, a
//! deadline or SIGTERM, and the credentials with it.

mod auth;
mod command_policy;
mod conn;
mod health;
mod kerberos_logon;
mod limits;
mod listen;
mod pipeline;
mod refusal;
mod reply;
mod request;
mod session;
mod shells;
mod shutdown;
mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{syslog, transcript, AuditError, AuditSink, AuthMethod};
use crate::certs::{self, CertError};
use crate::config::{Config, UsersError, UsersFile};
use crate::identity::{Domain, Principal, PrincipalKey, UserEntry};
use crate::kerberos::keytab::{load_keytab, KeytabFileError};
use crate::metrics::Metrics;
use crate::proto::credssp::{hashes_equal, AcceptorConfig, ServiceKey};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("relay certificate: {0}")]
    Cert(#[from] CertError),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("keytab: {0}")]
    Keytab(#[from] KeytabFileError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error("nothing to listen on: set [listen] http or a [[target]] listen address")]
    NoListener,
}

/// At shutdown, how long queued syslog messages may take to leave.
const SYSLOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything the connections share.
pub(crate) struct Shared {
    /// The config file (targets, rules and the rest), replaced as a whole on
    /// SIGHUP: requests read it afresh; listeners, limits and the audit path
    /// stay as started.
    config: RwLock<Arc<Config>>,
    /// Certificate, key and users: replaced as a whole on SIGHUP; sessions
    /// already running keep the one they started with.
    credssp: RwLock<Arc<AcceptorConfig>>,
    pub audit: AuditSink,
    /// Session transcripts, as configured at start (like the audit path, not reloaded).
    pub transcripts: Option<transcript::Settings>,
    pub metrics: Metrics,
    /// Every listener is bound and accepting (for `/readyz`).
    pub listening: AtomicBool,
    /// In domain mode, why no KDC can be reached (for `/readyz`); `None` when one can.
    pub kdc_problem: std::sync::Mutex<Option<String>>,
    /// The `[directory]`'s group SIDs and whether it answered last time (for `/readyz`).
    pub directory: crate::directory::Directory,
    pub lockout: limits::Lockout,
    /// Plain Kerberos logons, with `[kerberos] delegation = "constrained"` (as started:
    /// a reload does not change them).
    pub constrained: Option<Arc<kerberos_logon::ConstrainedLogons>>,
    pub quotas: Arc<limits::Quotas>,
    /// Connections that have not authenticated yet, per source and in all, so
    /// that idle sockets can neither exhaust file descriptors nor crowd out
    /// other addresses; a place is held until the connection logs on.
    pub unauthenticated: Arc<limits::Unauthenticated>,
    /// Refusals before logon not written yet, for their summary lines.
    pub refusals: refusal::Summaries,
    /// Authenticated sessions, for ending those of users a reload removed or gave a new password.
    pub sessions: shutdown::Registry,
    /// Cancelled on SIGTERM: listeners stop, every session ends.
    pub stop: CancellationToken,
    /// Every connection task; the relay exits when all have finished.
    pub sessions_tracker: TaskTracker,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    pub fn credssp(&self) -> Arc<AcceptorConfig> {
        read(&self.credssp)
    }
}

fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
}

fn replace<T>(lock: &RwLock<Arc<T>>, next: Arc<T>) {
    *lock.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
}

/// Which kind of listener accepted a connection.
#[derive(Debug, Clone)]
pub(crate) struct ListenerKind {
    /// Every request goes to this target (a `[[target]] listen` address).
    pub fixed_target: Option<String>,
    /// HTTPS: TLS first, then Basic is possible and bodies may be plain.
    pub https: bool,
}

/// Load certificates, users and policy, bind every listener, and serve until
/// SIGINT/SIGTERM; then drain: stop accepting, end every session (cancel what
/// is in flight, delete leftover shells, audit, wipe) and return within
/// `session.shutdown_timeout_secs`. SIGHUP reloads (see [`reload`]).
pub async fn run(config: Config) -> Result<(), ServerError> {
    let shared = Arc::new(prepare(config)?);
    let config = &shared.config();
    let mut listeners = Vec::new();
    if let Some(addr) = config.listen.http {
        listeners.push((
            bind(addr).await?,
            ListenerKind {
                fixed_target: None,
                https: false,
            },
        ));
    }
    if let Some(addr) = config.listen.https {
        listeners.push((
            bind(addr).await?,
            ListenerKind {
                fixed_target: None,
                https: true,
            },
        ));
    }
    for target in &config.targets {
        if let Some(addr) = target.listen {
            let kind = ListenerKind {
                fixed_target: Some(target.name.clone()),
                https: false,
            };
            listeners.push((bind(addr).await?, kind));
        }
    }
    if listeners.is_empty() {
        return Err(ServerError::NoListener);
    }
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let workers = Arc::new(workers::Workers::start(&shared).map_err(ServerError::Workers)?);
    let accepting = TaskTracker::new();
    for (listener, kind) in listeners {
        let addr = listener.local_addr().ok();
        tracing::info!(
            ?addr,
            https = kind.https,
            target = kind.fixed_target.as_deref().unwrap_or("(from path)"),
            "listening"
        );
        accepting.spawn(listen::accept_loop(listener, kind, shared.clone(), workers.clone()));
    }
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics, /healthz and /readyz");
        accepting.spawn(health::serve(listener, shared.clone()));
        accepting.spawn(health::watch_kdcs(shared.clone()));
        accepting.spawn(health::watch_directory(shared.clone()));
    }
    accepting.spawn(refusal::summarize(shared.clone()));
    accepting.close();
    shared.listening.store(true, Ordering::Release);
    let reloader = tokio::spawn(reload_on_hangup(shared.clone()));
    wait_for_signal().await;
    let deadline = config.session.shutdown_timeout;
    tracing::info!(
        secs = deadline.as_secs(),
        "shutting down: closing listeners, ending sessions"
    );
    reloader.abort();
    shared.stop.cancel();
    // Listeners first, so no session starts after the tracker is closed.
    accepting.wait().await;
    shared.sessions_tracker.close();
    if tokio::time::timeout(deadline, shared.sessions_tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = shared.sessions_tracker.len(),
            "sessions still ending at session.shutdown_timeout_secs: exiting anyway"
        );
    }
    match Arc::try_unwrap(workers) {
        Ok(workers) => workers.finish(),
        Err(_) => tracing::error!("worker threads still referenced at exit"),
    }
    // No refusal counted goes unwritten.
    shared.refusals.write_due(&shared.audit, true);
    // The sessions' last events are still on their way to syslog.
    shared.audit.flush_export(SYSLOG_FLUSH).await;
    Ok(())
}

fn prepare(config: Config) -> Result<Shared, ServerError> {
    let (cert, generated) = certs::load_or_generate(&config.listen.tls_cert, &config.listen.tls_key)?;
    if generated {
        tracing::warn!(
            cert = %config.listen.tls_cert.display(),
            key = %config.listen.tls_key.display(),
            "generated a self-signed development certificate; replace it for production"
        );
    }
    let credssp = acceptor_config(&config, &cert)?;
    let constrained = kerberos_logon::ConstrainedLogons::load(&config, &cert)?.map(Arc::new);
    let mut audit = AuditSink::open(&config.audit)?;
    if let Some(target) = &config.audit.syslog {
        tracing::info!(syslog = %target, "exporting audit events to syslog");
        audit = audit.exporting_to(syslog::Exporter::start(target.clone()));
    }
    let transcripts = match &config.audit.transcripts {
        Some(dir) => {
            transcript::prepare_dir(dir).map_err(|source| AuditError::Transcripts {
                path: dir.clone(),
                source,
            })?;
            Some(transcript::Settings {
                dir: dir.clone(),
                max_output: config.audit.transcript_max_bytes,
                record_host_responses: config.audit.record_host_responses,
            })
        }
        None => None,
    };
    let metrics = Metrics::new(&audit);
    let lockout = limits::Lockout::new(&config.auth);
    let quotas = limits::Quotas::new(config.limits.clone());
    let unauthenticated = limits::Unauthenticated::new(&config.limits);
    Ok(Shared {
        config: RwLock::new(Arc::new(config)),
        credssp: RwLock::new(credssp),
        audit,
        transcripts,
        metrics,
        listening: AtomicBool::new(false),
        kdc_problem: std::sync::Mutex::new(None),
        directory: crate::directory::Directory::default(),
        lockout,
        constrained,
        quotas,
        unauthenticated,
        refusals: refusal::Summaries::default(),
        sessions: shutdown::Registry::default(),
        stop: CancellationToken::new(),
        sessions_tracker: TaskTracker::new(),
    })
}

fn load_users(config: &Config) -> Result<Arc<[UserEntry]>, ServerError> {
    // Domain mode without local accounts: Kerberos logons only.
    let Some(users_file) = &config.auth.users_file else {
        return Ok(Vec::new().into());
    };
    let users = match UsersFile::load(users_file) {
        Ok(users) => users,
        // A fresh install has no users yet: start, and say how to add one.
        Err(error) if error.is_not_found() => {
            tracing::warn!(
                users_file = %users_file.display(),
                "users file does not exist: nobody can log on until you run `winrm-relay user add 'DOMAIN\\user' --users-file {}`",
                users_file.display()
            );
            UsersFile::new()
        }
        Err(error) => return Err(error.into()),
    };
    if let Some(kerberos) = &config.kerberos {
        users.check_in(users_file, &kerberos.domain)?;
    }
    let entries: Arc<[UserEntry]> = users.entries().cloned().collect::<Vec<_>>().into();
    tracing::info!(users = entries.len(), "loaded users file");
    Ok(entries)
}

/// The TLS configuration (the HTTPS listener and the CredSSP inner channel
/// share the certificate) and what the CredSSP acceptor binds to.
fn acceptor_config(config: &Config, cert: &certs::RelayCert) -> Result<Arc<AcceptorConfig>, ServerError> {
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    Ok(Arc::new(AcceptorConfig {
        tls: Arc::new(tls),
        public_key: cert.credssp_public_key.clone(),
        users: load_users(config)?,
        min_version: config.auth.credssp_min_version,
        domain: config.kerberos.as_ref().map(|k| k.domain.clone()),
        service_keys: load_service_keys(config)?,
    }))
}

/// The keytab's keys, each principal logged (never a key), or `None` without
/// `[kerberos] keytab`.
fn load_service_keys(config: &Config) -> Result<Option<Arc<[ServiceKey]>>, ServerError> {
    let Some((path, realm)) = config
        .kerberos
        .as_ref()
        .and_then(|k| Some((k.keytab.as_ref()?, k.domain.realm.as_str())))
    else {
        return Ok(None);
    };
    let keytab = load_keytab(path, realm)?;
    for principal in &keytab.principals {
        tracing::info!(keytab = %path.display(), %principal, "Kerberos service key");
    }
    for warning in &keytab.warnings {
        tracing::warn!(keytab = %path.display(), "{warning}");
    }
    Ok(Some(keytab.keys.into()))
}

/// SIGHUP (also what logrotate sends): reopen the audit log, reload the
/// config file (targets, rules), the certificate chain, key and users file,
/// without dropping live sessions, except those of users no longer in the
/// users file. A bad new file keeps the old configuration in force.
async fn reload_on_hangup(shared: Arc<Shared>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::error!("cannot watch SIGHUP: reloading is unavailable");
            return;
        };
        while hangups.recv().await.is_some() {
            reload(&shared);
        }
    }
    #[cfg(not(unix))]
    let _ = shared;
}

fn reload(shared: &Shared) {
    // The audit log first: logrotate has moved it and waits for the reopen.
    // A failed reopen keeps the old file and is logged by the sink itself.
    let _ = shared.audit.reopen();
    let path = shared.config().path.clone();
    let loaded = Config::load(&path)
        .map_err(|error| error.to_string())
        .and_then(|config| {
            let cert = certs::load(&config.listen.tls_cert, &config.listen.tls_key).map_err(|e| e.to_string())?;
            let credssp = acceptor_config(&config, &cert).map_err(|e| e.to_string())?;
            Ok((config, credssp))
        });
    let (config, credssp) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: reload failed, keeping the previous configuration");
            return;
        }
    };
    // Keyed in the new domain, so a row rewritten under another spelling keeps its sessions.
    let domain = credssp.domain.clone();
    let gone = users_gone(&shared.credssp().users, &credssp.users, domain.as_ref());
    replace(&shared.config, Arc::new(config));
    // The users change with the registry locked: a logon completing meanwhile is
    // either registered already (and ended here) or checked against the new users.
    let change = || replace(&shared.credssp, credssp);
    // A Kerberos session has no users-file entry to lose.
    let ended = shared
        .sessions
        .end_each_after(change, |principal, method| match method {
            AuthMethod::Kerberos => None,
            _ => gone.get(&Principal::parse(principal).key(domain.as_ref())).copied(),
        });
    tracing::info!(
        ended_sessions = ended,
        "SIGHUP: reloaded certificate, key, users file and configuration"
    );
}

/// The users of `old` whose sessions a reload to `new` ends: removed, or with
/// another NT hash (`user add` over an existing user). A password changed
/// because it leaked must not leave sessions logged on with it.
fn users_gone(old: &[UserEntry], new: &[UserEntry], domain: Option<&Domain>) -> HashMap<PrincipalKey, &'static str> {
    let now: HashMap<PrincipalKey, &UserEntry> = new.iter().map(|u| (u.principal().key(domain), u)).collect();
    old.iter()
        .filter_map(|u| {
            let key = u.principal().key(domain);
            let reason = match now.get(&key) {
                None => "user removed from the users file",
                Some(entry) if !hashes_equal(entry.nt_hash(), u.nt_hash()) => {
                    "user's password changed in the users file"
                }
                Some(_) => return None,
            };
            Some((key, reason))
        })
        .collect()
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

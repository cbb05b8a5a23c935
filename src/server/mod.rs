//! The relay's listeners and per-connection sessions.
//!
//! Each accepted TCP connection gets one [`session::Session`]: its CredSSP
//! acceptor, its delegated credentials (in the vault) and its authenticated
//! target connections. The session dies with the connection or its idle
//! timeout, and the credentials with it.

mod limits;
mod pipeline;
mod reply;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{AuditError, AuditSink};
use crate::certs::{self, CertError};
use crate::config::{Config, UsersError, UsersFile};
use crate::proto::credssp::{AcceptorConfig, UserHash};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("relay certificate: {0}")]
    Cert(#[from] CertError),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("nothing to listen on: set [listen] http or a [[target]] listen address")]
    NoListener,
}

/// Everything the connections share.
pub(crate) struct Shared {
    pub config: Config,
    /// Certificate, key and users: replaced as a whole on SIGHUP; sessions
    /// already running keep the one they started with.
    credssp: RwLock<Arc<AcceptorConfig>>,
    pub audit: AuditSink,
    pub lockout: limits::Lockout,
    pub quotas: Arc<limits::Quotas>,
    /// Connections that have not authenticated yet, capped at
    /// `limits.max_sessions` so a flood of idle sockets cannot exhaust
    /// file descriptors; a permit is held until the connection logs on.
    pub unauthenticated: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    pub fn credssp(&self) -> Arc<AcceptorConfig> {
        self.credssp
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn replace_credssp(&self, next: Arc<AcceptorConfig>) {
        *self.credssp.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
    }
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
/// SIGINT/SIGTERM. SIGHUP reloads the certificate, key and users file.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let shared = Arc::new(prepare(config)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut listeners = Vec::new();
    if let Some(addr) = shared.config.listen.http {
        listeners.push((
            bind(addr).await?,
            ListenerKind {
                fixed_target: None,
                https: false,
            },
        ));
    }
    if let Some(addr) = shared.config.listen.https {
        listeners.push((
            bind(addr).await?,
            ListenerKind {
                fixed_target: None,
                https: true,
            },
        ));
    }
    for target in &shared.config.targets {
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
    let mut tasks = Vec::new();
    for (listener, kind) in listeners {
        let addr = listener.local_addr().ok();
        tracing::info!(
            ?addr,
            https = kind.https,
            target = kind.fixed_target.as_deref().unwrap_or("(from path)"),
            "listening"
        );
        tasks.push(tokio::spawn(session::accept_loop(
            listener,
            kind,
            shared.clone(),
            shutdown_rx.clone(),
        )));
    }
    let reloader = tokio::spawn(reload_on_hangup(shared.clone()));
    wait_for_signal().await;
    tracing::info!("shutting down: closing listeners and sessions");
    reloader.abort();
    let _ = shutdown_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
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
    let audit = AuditSink::open(&config.audit.path)?;
    let lockout = limits::Lockout::new(&config.auth);
    let quotas = limits::Quotas::new(config.limits.clone());
    let unauthenticated = Arc::new(tokio::sync::Semaphore::new(config.limits.max_sessions));
    Ok(Shared {
        config,
        credssp: RwLock::new(credssp),
        audit,
        lockout,
        quotas,
        unauthenticated,
    })
}

fn load_users(config: &Config) -> Result<Arc<[UserHash]>, ServerError> {
    let users = match UsersFile::load(&config.auth.users_file) {
        Ok(users) => users,
        // A fresh install has no users yet: start, and say how to add one.
        Err(error) if error.is_not_found() => {
            tracing::warn!(
                users_file = %config.auth.users_file.display(),
                "users file does not exist: nobody can log on until you run `winrm-relay user add 'DOMAIN\\user' --users-file {}`",
                config.auth.users_file.display()
            );
            UsersFile::new()
        }
        Err(error) => return Err(error.into()),
    };
    let hashes: Arc<[UserHash]> = users
        .entries()
        .map(|entry| UserHash {
            domain: entry.domain().to_string(),
            user: entry.user().to_string(),
            nt_hash: zeroize::Zeroizing::new(*entry.nt_hash()),
        })
        .collect::<Vec<_>>()
        .into();
    tracing::info!(users = hashes.len(), "loaded users file");
    Ok(hashes)
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
    }))
}

/// SIGHUP: reload certificate chain, key and users file without dropping
/// live sessions. A bad new file keeps the old configuration in force.
async fn reload_on_hangup(shared: Arc<Shared>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::error!("cannot watch SIGHUP: reloading is unavailable");
            return;
        };
        while hangups.recv().await.is_some() {
            let config = &shared.config;
            let reloaded = certs::load(&config.listen.tls_cert, &config.listen.tls_key)
                .map_err(ServerError::from)
                .and_then(|cert| acceptor_config(config, &cert));
            match reloaded {
                Ok(next) => {
                    shared.replace_credssp(next);
                    tracing::info!("SIGHUP: reloaded certificate, key and users file");
                }
                Err(error) => tracing::error!(%error, "SIGHUP: reload failed, keeping the previous configuration"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = shared;
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

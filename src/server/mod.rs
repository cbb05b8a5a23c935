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
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{AuditError, AuditSink};
use crate::certs::{self, CertError};
use crate::config::{Config, UsersError, UsersFile};
use crate::policy::{Policy, PolicyError};
use crate::proto::credssp::{AcceptorConfig, UserHash};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("relay certificate: {0}")]
    Cert(#[from] CertError),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("nothing to listen on: set [listen] http or a [[target]] listen address")]
    NoListener,
}

/// Everything the connections share, read-only.
pub(crate) struct Shared {
    pub config: Config,
    pub acceptor: Arc<AcceptorConfig>,
    pub policy: Policy,
    pub audit: AuditSink,
    pub lockout: limits::Lockout,
    pub quotas: Arc<limits::Quotas>,
}

/// Load certificates, users and policy, bind every listener, and serve until
/// SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let shared = Arc::new(prepare(config)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut listeners = Vec::new();
    if let Some(addr) = shared.config.listen.http {
        listeners.push((bind(addr).await?, None));
    }
    for target in &shared.config.targets {
        if let Some(addr) = target.listen {
            listeners.push((bind(addr).await?, Some(target.name.clone())));
        }
    }
    if listeners.is_empty() {
        return Err(ServerError::NoListener);
    }
    let mut tasks = Vec::new();
    for (listener, fixed_target) in listeners {
        let addr = listener.local_addr().ok();
        tracing::info!(
            ?addr,
            target = fixed_target.as_deref().unwrap_or("(from path)"),
            "listening"
        );
        tasks.push(tokio::spawn(session::accept_loop(
            listener,
            fixed_target,
            shared.clone(),
            shutdown_rx.clone(),
        )));
    }
    wait_for_signal().await;
    tracing::info!("shutting down: closing listeners and sessions");
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
    let user_hashes: Arc<[UserHash]> = users
        .entries()
        .map(|entry| UserHash {
            domain: entry.domain().to_string(),
            user: entry.user().to_string(),
            nt_hash: zeroize::Zeroizing::new(*entry.nt_hash()),
        })
        .collect::<Vec<_>>()
        .into();
    tracing::info!(users = user_hashes.len(), "loaded users file");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    let acceptor = Arc::new(AcceptorConfig {
        tls: Arc::new(tls),
        public_key: cert.credssp_public_key.clone(),
        users: user_hashes,
        min_version: config.auth.credssp_min_version,
    });
    let policy = Policy::new(&config.allow)?;
    let audit = AuditSink::open(&config.audit.path)?;
    let lockout = limits::Lockout::new(&config.auth);
    let quotas = limits::Quotas::new(config.limits.clone());
    Ok(Shared {
        config,
        acceptor,
        policy,
        audit,
        lockout,
        quotas,
    })
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

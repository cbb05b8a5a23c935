//! Relay configuration: the TOML schema and its validation.
//!
//! The file is parsed into spanned raw values first and validated by hand, so that
//! `winrm-relay check` can report every problem at once as `file:line: key: message`.
//! Validation builds everything a running relay needs from the file: the target settings
//! with each https target's TLS configuration ([`crate::resolve`]) and the compiled allow
//! rules ([`crate::policy`]). Reloading is loading again and swapping the whole `Config`.
//! Relative paths in the file (certificates, users file, audit log) are relative to the
//! relay's current working directory, not to the config file. The secret files (users
//! file, keytab, audit HMAC key) may instead name a systemd credential,
//! `credential:NAME` (see [`credentials`]).
//!
//! See `config/relay.example.toml` for every key with its default.

mod credentials;
mod raw;
mod sections;
mod targets;
#[cfg(test)]
mod tests;
pub mod users;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::directory::DirectoryConfig;
use crate::identity::Domain;
use crate::kerberos::kdc::KdcUrl;
use crate::policy::Policy;
use crate::resolve::{self, ResolveError, ResolvedTarget, TargetConfig, TargetDefaults};
use raw::Locator;
use validate::Validator;

pub use users::{nt_hash, UsersError, UsersFile};

/// Default limit on a request body, Windows' MaxEnvelopeSizekb (500) in bytes.
pub const DEFAULT_MAX_ENVELOPE_SIZE: usize = 512_000;
/// Default floor on the TSRequest version (5 has the CVE-2018-0886 nonce binding).
pub const DEFAULT_CREDSSP_MIN_VERSION: u32 = 5;
/// Default WinRM HTTP port for `http://` targets without an explicit one (`[defaults] port`).
pub const DEFAULT_TARGET_PORT: u16 = 5985;
/// Default WinRM HTTPS port for `https://` targets without an explicit one
/// (`[defaults] https_port`).
pub const DEFAULT_TARGET_HTTPS_PORT: u16 = 5986;
/// Default `[audit] transcript_max_bytes`: 10 MiB of output per session.
pub const DEFAULT_TRANSCRIPT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default shells of an `[[allow]]` rule without `shells`.
pub const DEFAULT_SHELLS: [&str; 2] = ["cmd", "powershell"];

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from, as given.
    pub path: PathBuf,
    pub listen: ListenConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub session: SessionConfig,
    pub defaults: TargetDefaults,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    /// `[[target]]` entries, in file order.
    pub targets: Vec<TargetConfig>,
    /// The `[[allow]]` rules, compiled, in file order (the index is the rule number in
    /// decisions).
    pub policy: Policy,
    /// Domain mode (`[kerberos]`); `None` without the table.
    pub kerberos: Option<KerberosConfig>,
    /// Where group membership is read (`[directory]`); required when a rule names groups.
    pub directory: Option<DirectoryConfig>,
}

/// `[kerberos]`: the Active Directory domain the relay works in.
#[derive(Debug, Clone)]
pub struct KerberosConfig {
    /// The realm (`LAB.TEST`) and NetBIOS name (`LAB`: `LAB\alice` is
    /// `alice@LAB.TEST`); the NetBIOS name defaults to the realm's first label.
    pub domain: Domain,
    /// The KDCs (domain controllers) in the order tried, or KDC proxies.
    pub kdcs: Vec<KdcUrl>,
    /// The relay's own keys (`HTTP/<fqdn>`, `WSMAN/<fqdn>`, ...): with one,
    /// callers can log on with Kerberos inside CredSSP.
    pub keytab: Option<PathBuf>,
    /// How the relay reaches targets as a caller who logged on with Kerberos.
    pub delegation: Delegation,
}

/// `[kerberos] delegation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delegation {
    /// Only with a password the caller delegates (CredSSP, Basic).
    #[default]
    Password,
    /// Also plain Kerberos logons (HTTP Negotiate/Kerberos), reaching targets by
    /// constrained delegation (S4U2Proxy) with the relay account of the keytab.
    Constrained,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// The main listener; targets are chosen by the `/wsman/<target>` path.
    pub http: Option<SocketAddr>,
    /// The HTTPS listener (`tls_cert`/`tls_key`); targets are chosen by path as on `http`.
    pub https: Option<SocketAddr>,
    /// Certificate chain and key of the HTTPS listener and of the CredSSP TLS tunnel.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Whether Basic authentication is accepted on the HTTPS listener (`[listen]
    /// basic_auth`, default true). Basic is always refused on plain HTTP listeners.
    pub basic_over_https: bool,
    /// Largest accepted request body in bytes.
    pub max_envelope_size: usize,
    /// Largest request head (request line + headers) in bytes.
    pub max_header_size: usize,
    /// A client must send a request's headers within this time (slowloris).
    pub header_read_timeout: Duration,
    /// Only these source networks may connect; empty means any. Others are
    /// dropped before any TLS or CredSSP work.
    pub allow_sources: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Local and workgroup accounts (NTLM inside CredSSP, Basic); optional when
    /// `[kerberos] keytab` lets domain users log on with Kerberos.
    pub users_file: Option<PathBuf>,
    /// Lowest TSRequest version accepted from clients (2..=6).
    pub credssp_min_version: u32,
    /// The whole CredSSP exchange must finish within this time.
    pub handshake_timeout: Duration,
    /// From accept to authenticated, however many 401s a connection collects on
    /// the way; then it is closed. Defaults to `handshake_timeout`.
    pub logon_timeout: Duration,
    /// Failed logons per (source address) and per (user name) within
    /// `lockout_window` before that key is locked out; 0 disables lockout.
    pub lockout_threshold: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub on_failure: AuditOnFailure,
    /// Lines are sealed with HMAC-SHA-256 under this file's key instead of plain SHA-256.
    pub hmac_key_file: Option<PathBuf>,
    /// One transcript file per session in this directory.
    pub transcripts: Option<PathBuf>,
    /// Output recorded per session transcript; past it, commands only.
    pub transcript_max_bytes: u64,
    /// Transcripts record what a PowerShell host prompt (`Read-Host`) was answered.
    pub record_host_responses: bool,
    /// Every audit line also goes there as a syslog message (version 1 format).
    pub syslog: Option<SyslogTarget>,
}

/// Where syslog messages go (`[audit] syslog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// `udp://host:port`: one datagram per message.
    Udp(String),
    /// `tcp://host:port`: octet-counted frames (`LEN SP MSG`), as rsyslog and syslog-ng read them.
    Tcp(String),
    /// `unix:///dev/log`: one datagram per message on a local socket.
    Unix(PathBuf),
}

impl SyslogTarget {
    pub fn parse(url: &str) -> Result<SyslogTarget, String> {
        let expected = "expected udp://host:port, tcp://host:port or unix:///path";
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?}: {expected}"))?;
        let host_port = |rest: &str| -> Result<String, String> {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{url:?}: no port ({expected})"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || rest.contains('/') {
                return Err(format!("{url:?}: {expected}"));
            }
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: invalid port {port:?}"))?;
            Ok(rest.to_string())
        };
        match scheme {
            "udp" => host_port(rest).map(SyslogTarget::Udp),
            "tcp" => host_port(rest).map(SyslogTarget::Tcp),
            "unix" if rest.starts_with('/') => Ok(SyslogTarget::Unix(PathBuf::from(rest))),
            _ => Err(format!("{url:?}: {expected}")),
        }
    }
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Udp(a) => write!(f, "udp://{a}"),
            SyslogTarget::Tcp(a) => write!(f, "tcp://{a}"),
            SyslogTarget::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// `[metrics]`: where Prometheus metrics and the health checks are served.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// What the relay does while the audit log cannot be written (`[audit] on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditOnFailure {
    /// Answer requests with a fault: nothing is forwarded unaudited.
    #[default]
    Refuse,
    /// Forward requests anyway; their events are lost.
    Continue,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    /// A session ends after this long whatever it does; its credentials go with it.
    pub max_lifetime: Duration,
    /// On SIGTERM, sessions get this long to end (cancel, clean up, audit) before the
    /// relay exits anyway.
    pub shutdown_timeout: Duration,
}

/// Quotas, with WinRM's defaults where WinRM has one.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Concurrent authenticated sessions in all (WinRM MaxConnections: 300).
    pub max_sessions: usize,
    /// Concurrent authenticated sessions of one user.
    pub max_sessions_per_user: usize,
    /// Open shells of one user across sessions (WinRM MaxShellsPerUser: 30).
    pub max_shells_per_user: usize,
    /// Requests of one user in flight at once (WinRM MaxConcurrentOperationsPerUser: 1500).
    pub max_operations_per_user: usize,
    /// While every place for connections not yet authenticated is taken, a source holding
    /// this many may only replace its own idle ones, so one address cannot crowd out
    /// everyone else's logons; while places are free it does not apply.
    pub max_unauthenticated_per_source: usize,
    /// Longest OperationTimeout honoured; longer ones are clamped (WinRM MaxTimeoutms: 60 s).
    pub max_operation_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Loads and validates `path`, returning the first problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::check(path).map_err(|errors| {
            // check never returns an empty list; the fallback only avoids a panic path.
            errors.into_iter().next().unwrap_or_else(|| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                key: String::new(),
                message: "invalid config".into(),
            })
        })
    }

    /// Loads and validates `path`, returning every problem found.
    pub fn check(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let src = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }]
        })?;
        Config::parse(path, &src)
    }

    /// Validates TOML text; `path` is only used in messages and [`Config::path`].
    pub fn parse(path: &Path, src: &str) -> Result<Config, Vec<ConfigError>> {
        let loc = Locator::new(path, src);
        let raw: raw::RawConfig = toml::from_str(src).map_err(|e| vec![loc.toml_error(&e)])?;
        let mut v = Validator::new(&loc, raw::unknown_keys(&loc, src));
        // `None` only with a problem reported.
        match v.config(path, raw) {
            Some(config) if v.errors.is_empty() => Ok(config),
            _ => {
                let mut errors = v.errors;
                // Report in file order, whichever check found them.
                errors.sort_by_key(|e| match e {
                    ConfigError::Invalid { line, .. } => *line,
                    ConfigError::Read { .. } => 0,
                });
                Err(errors)
            }
        }
    }

    /// Resolves the path segment after `/wsman/` into a target; see
    /// [`resolve::resolve_target`].
    pub fn resolve_target(&self, name: &str) -> Result<ResolvedTarget, ResolveError> {
        resolve::resolve_target(&self.targets, &self.defaults, name)
    }
}

/// A fresh per-test directory under the system temp dir.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("winrm-relay-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

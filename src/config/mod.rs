//! Relay configuration: the TOML schema, its validation and target resolution.
//!
//! The file is parsed into spanned raw values first and validated by hand, so that
//! `winrm-relay check` can report every problem at once as `file:line: key: message`.
//! Relative paths in the file (certificates, users file, audit log) are relative to the
//! relay's current working directory, not to the config file.
//!
//! See `config/relay.example.toml` for every key with its default.

mod host;
mod raw;
pub mod users;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::policy;
use host::{parse_host_port, parse_http_url, percent_decode, url_host, HttpUrl};
use raw::Locator;

pub use users::{nt_hash, UserEntry, UsersError, UsersFile};

/// Default limit on a request body, Windows' MaxEnvelopeSizekb (500) in bytes.
pub const DEFAULT_MAX_ENVELOPE_SIZE: usize = 512_000;
/// Default floor on the TSRequest version (5 has the CVE-2018-0886 nonce binding).
pub const DEFAULT_CREDSSP_MIN_VERSION: u32 = 5;
/// Default WinRM HTTP port for targets without an explicit one.
pub const DEFAULT_TARGET_PORT: u16 = 5985;
/// Default path on targets named directly by host.
pub const DEFAULT_TARGET_PATH: &str = "/wsman";
/// Default shells of an `[[allow]]` rule without `shells`.
pub const DEFAULT_SHELLS: [&str; 2] = ["cmd", "powershell"];

const MIN_ENVELOPE_SIZE: i64 = 8 * 1024;
const MAX_ENVELOPE_SIZE: i64 = 100 * 1024 * 1024;
const MAX_SECS: i64 = 86_400;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from, as given.
    pub path: PathBuf,
    pub listen: ListenConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub session: SessionConfig,
    pub defaults: TargetDefaults,
    /// `[[target]]` entries, in file order.
    pub targets: Vec<TargetConfig>,
    /// `[[allow]]` rules, in file order (the index is the rule number in decisions).
    pub allow: Vec<AllowRule>,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// The main listener; targets are chosen by the `/wsman/<target>` path.
    pub http: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Largest accepted request body in bytes.
    pub max_envelope_size: usize,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub users_file: PathBuf,
    /// Lowest TSRequest version accepted from clients (2..=6).
    pub credssp_min_version: u32,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TargetDefaults {
    pub auth: TargetAuth,
    /// Port for targets and urls that name none.
    pub port: u16,
    pub connect_timeout: Duration,
    /// Per request; must exceed the WS-Man OperationTimeout clients send.
    pub timeout: Duration,
}

/// How the relay authenticates to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAuth {
    #[default]
    Negotiate,
    Ntlm,
}

impl TargetAuth {
    fn parse(s: &str) -> Option<TargetAuth> {
        match s {
            "negotiate" => Some(TargetAuth::Negotiate),
            "ntlm" => Some(TargetAuth::Ntlm),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Alias used in `/wsman/<name>`.
    pub name: String,
    /// `http://host:port/path`, normalized to carry the port.
    pub url: String,
    pub auth: TargetAuth,
    /// Extra listener that always relays to this target (for clients that cannot set a path).
    pub listen: Option<SocketAddr>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub users: Vec<String>,
    pub targets: Vec<String>,
    pub shells: Vec<String>,
}

/// A target a request will be relayed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The alias, or `host[:port]` as the client gave it.
    pub name: String,
    /// The configured target this resolved to, if any.
    pub alias: Option<String>,
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP literal.
    pub ip: Option<IpAddr>,
    /// `http://host:port/path`, IPv6 in brackets.
    pub url: String,
    pub auth: TargetAuth,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid target {given:?}: {reason}")]
    Invalid { given: String, reason: String },
}

impl Config {
    /// Loads and validates `path`, returning the first problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::check(path).map_err(|mut errors| errors.swap_remove(0))
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
        let mut v = Validator {
            loc: &loc,
            errors: Vec::new(),
        };
        let config = v.config(path, raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(v.errors)
        }
    }

    /// The configured target with a dedicated listener on `addr`.
    pub fn listener_target(&self, addr: SocketAddr) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.listen == Some(addr))
    }

    /// Resolves the path segment after `/wsman/` into a target.
    ///
    /// Accepts an alias (case-insensitive), a host name, an IPv4 address or a bracketed
    /// IPv6 address, each with an optional `:port`; `%XX` escapes are decoded first. A host
    /// and port that match a configured target's url resolve to that target, so rules on
    /// its alias apply however the client names it. Other hosts get `[defaults]`.
    pub fn resolve_target(&self, name: &str) -> Result<ResolvedTarget, ResolveError> {
        let invalid = |reason: String| ResolveError::Invalid {
            given: name.to_string(),
            reason,
        };
        let decoded = percent_decode(name).map_err(invalid)?;
        if decoded.is_empty() {
            return Err(invalid("empty target name".into()));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&decoded))
        {
            return self.resolve_configured(t, t.name.clone()).map_err(invalid);
        }
        let hp = parse_host_port(&decoded).map_err(invalid)?;
        let port = hp.port.unwrap_or(self.defaults.port);
        for t in &self.targets {
            let url = parse_http_url(&t.url).map_err(&invalid)?;
            if url.host.same_host(&hp) && url.host.port.unwrap_or(self.defaults.port) == port {
                return self.resolve_configured(t, decoded).map_err(invalid);
            }
        }
        Ok(ResolvedTarget {
            name: decoded,
            alias: None,
            url: format!(
                "http://{}:{port}{DEFAULT_TARGET_PATH}",
                url_host(&hp.host, hp.ip)
            ),
            host: hp.host,
            port,
            ip: hp.ip,
            auth: self.defaults.auth,
            connect_timeout: self.defaults.connect_timeout,
            timeout: self.defaults.timeout,
        })
    }

    fn resolve_configured(&self, t: &TargetConfig, name: String) -> Result<ResolvedTarget, String> {
        let url = parse_http_url(&t.url)?;
        Ok(ResolvedTarget {
            name,
            alias: Some(t.name.clone()),
            port: url.host.port.unwrap_or(self.defaults.port),
            url: url.normalized(self.defaults.port),
            host: url.host.host,
            ip: url.host.ip,
            auth: t.auth,
            connect_timeout: t.connect_timeout,
            timeout: t.timeout,
        })
    }
}

/// Collects every validation problem while building the typed config.
struct Validator<'a> {
    loc: &'a Locator<'a>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(self.loc.error(span.start, key.into(), message.into()));
    }

    fn path(&mut self, v: Spanned<String>, key: &str) -> PathBuf {
        if v.get_ref().is_empty() {
            self.error(v.span(), key, "must not be empty");
        }
        PathBuf::from(v.into_inner())
    }

    fn socket_addr(&mut self, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match v.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("invalid socket address {:?} (expected ip:port)", v.get_ref()),
                );
                None
            }
        }
    }

    fn int(&mut self, v: Option<Spanned<i64>>, key: &str, range: std::ops::RangeInclusive<i64>, default: i64) -> i64 {
        match v {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    key,
                    format!("{} is out of range {}..={}", v.get_ref(), range.start(), range.end()),
                );
                default
            }
        }
    }

    fn secs(&mut self, v: Option<Spanned<i64>>, key: &str, default: Duration) -> Duration {
        let default_secs = i64::try_from(default.as_secs()).unwrap_or(MAX_SECS);
        Duration::from_secs(self.int(v, key, 1..=MAX_SECS, default_secs).unsigned_abs())
    }

    fn auth(&mut self, v: Option<Spanned<String>>, key: &str, default: TargetAuth) -> TargetAuth {
        let Some(v) = v else { return default };
        TargetAuth::parse(v.get_ref()).unwrap_or_else(|| {
            self.error(
                v.span(),
                key,
                format!("unknown auth {:?} (expected \"negotiate\" or \"ntlm\")", v.get_ref()),
            );
            default
        })
    }

    fn config(&mut self, path: &Path, raw: raw::RawConfig) -> Config {
        let listen_http = raw
            .listen
            .http
            .as_ref()
            .and_then(|a| self.socket_addr(a, "listen.http"));
        let listen = ListenConfig {
            http: listen_http,
            tls_cert: self.path(raw.listen.tls_cert, "listen.tls_cert"),
            tls_key: self.path(raw.listen.tls_key, "listen.tls_key"),
            max_envelope_size: self
                .int(
                    raw.listen.max_envelope_size,
                    "listen.max_envelope_size",
                    MIN_ENVELOPE_SIZE..=MAX_ENVELOPE_SIZE,
                    DEFAULT_MAX_ENVELOPE_SIZE as i64,
                )
                .unsigned_abs() as usize,
        };
        let auth = AuthConfig {
            users_file: self.path(raw.auth.users_file, "auth.users_file"),
            credssp_min_version: self
                .int(
                    raw.auth.credssp_min_version,
                    "auth.credssp_min_version",
                    2..=6,
                    DEFAULT_CREDSSP_MIN_VERSION.into(),
                )
                .unsigned_abs() as u32,
        };
        let audit = AuditConfig {
            path: self.path(raw.audit.path, "audit.path"),
        };
        let session = SessionConfig {
            idle_timeout: self.secs(
                raw.session.idle_timeout_secs,
                "session.idle_timeout_secs",
                Duration::from_secs(1800),
            ),
        };
        let d = raw.defaults;
        let defaults = TargetDefaults {
            auth: self.auth(d.auth, "defaults.auth", TargetAuth::default()),
            port: self
                .int(d.port, "defaults.port", 1..=65535, DEFAULT_TARGET_PORT.into())
                .unsigned_abs() as u16,
            connect_timeout: self.secs(
                d.connect_timeout_secs,
                "defaults.connect_timeout_secs",
                Duration::from_secs(10),
            ),
            timeout: self.secs(d.timeout_secs, "defaults.timeout_secs", Duration::from_secs(120)),
        };

        // Every listener with where it was declared, to report clashes at the later one.
        let mut listeners: Vec<(SocketAddr, String)> = Vec::new();
        if let Some(a) = listen_http {
            listeners.push((a, "listen.http".into()));
        }
        let mut targets = Vec::new();
        let mut seen_urls: Vec<(HttpUrl, String)> = Vec::new();
        for (i, t) in raw.target.into_iter().enumerate() {
            let key = |k: &str| format!("target[{i}].{k}");
            let name = t.name.get_ref().clone();
            if let Err(m) = validate_target_name(&name) {
                self.error(t.name.span(), key("name"), m);
            } else if let Some(prev) = targets
                .iter()
                .position(|p: &TargetConfig| p.name.eq_ignore_ascii_case(&name))
            {
                self.error(
                    t.name.span(),
                    key("name"),
                    format!("duplicate target name {name:?} (also target[{prev}])"),
                );
            }
            let url = match parse_http_url(t.url.get_ref()) {
                Ok(u) => {
                    let port = u.host.port.unwrap_or(defaults.port);
                    if let Some((_, other)) = seen_urls.iter().find(|(s, _)| {
                        s.host.same_host(&u.host) && s.host.port.unwrap_or(defaults.port) == port
                    }) {
                        self.error(
                            t.url.span(),
                            key("url"),
                            format!("target {other:?} already uses this host and port"),
                        );
                    }
                    let normalized = u.normalized(defaults.port);
                    seen_urls.push((u, name.clone()));
                    normalized
                }
                Err(m) => {
                    self.error(t.url.span(), key("url"), format!("{:?}: {m}", t.url.get_ref()));
                    t.url.get_ref().clone()
                }
            };
            let listen = t.listen.as_ref().and_then(|a| {
                let addr = self.socket_addr(a, &key("listen"))?;
                self.check_listener_clash(&listeners, addr, a.span(), &key("listen"));
                listeners.push((addr, key("listen")));
                Some(addr)
            });
            targets.push(TargetConfig {
                name,
                url,
                auth: self.auth(t.auth, &key("auth"), defaults.auth),
                listen,
                connect_timeout: self.secs(
                    t.connect_timeout_secs,
                    &key("connect_timeout_secs"),
                    defaults.connect_timeout,
                ),
                timeout: self.secs(t.timeout_secs, &key("timeout_secs"), defaults.timeout),
            });
        }
        if listeners.is_empty() {
            let at = self.loc.header_offset("listen");
            self.error(
                at..at,
                "listen.http",
                "no listener: set listen.http or a listen address on a [[target]]",
            );
        }

        let allow = raw
            .allow
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.allow_rule(i, r))
            .collect();

        Config {
            path: path.to_path_buf(),
            listen,
            auth,
            audit,
            session,
            defaults,
            targets,
            allow,
        }
    }

    fn check_listener_clash(
        &mut self,
        listeners: &[(SocketAddr, String)],
        addr: SocketAddr,
        span: std::ops::Range<usize>,
        key: &str,
    ) {
        // 0.0.0.0:p and 127.0.0.1:p cannot both be bound either.
        let clash = listeners.iter().find(|(a, _)| {
            a.port() == addr.port()
                && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
        });
        if let Some((other, other_key)) = clash {
            self.error(
                span,
                key,
                format!("listen address {addr} clashes with {other_key} ({other})"),
            );
        }
    }

    fn allow_rule(&mut self, i: usize, r: raw::RawAllow) -> AllowRule {
        let mut list = |v: Spanned<Vec<Spanned<String>>>,
                        field: &str,
                        parse: &dyn Fn(&str) -> Result<(), String>| {
            let key = format!("allow[{i}].{field}");
            if v.get_ref().is_empty() {
                self.error(v.span(), &key, "must not be empty");
            }
            v.into_inner()
                .into_iter()
                .map(|e| {
                    if let Err(m) = parse(e.get_ref()) {
                        self.error(e.span(), &key, m);
                    }
                    e.into_inner()
                })
                .collect::<Vec<_>>()
        };
        let users = list(r.users, "users", &|s| policy::parse_user(s).map(drop));
        let targets = list(r.targets, "targets", &|s| policy::parse_target(s).map(drop));
        let shells = match r.shells {
            Some(s) => list(s, "shells", &|s| policy::parse_shell(s).map(drop)),
            None => DEFAULT_SHELLS.iter().map(|s| s.to_string()).collect(),
        };
        AllowRule {
            users,
            targets,
            shells,
        }
    }
}

/// Target aliases are host-like names that cannot be mistaken for an address.
fn validate_target_name(name: &str) -> Result<(), String> {
    host::validate_hostname(name)?;
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!("target name {name:?} is an IP address; use a name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
http = "127.0.0.1:5985"
tls_cert = "certs/relay.crt"
tls_key = "certs/relay.key"

[auth]
users_file = "config/users"

[audit]
path = "audit.jsonl"
"#;

    fn parse(extra: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("relay.toml"), &format!("{MINIMAL}{extra}"))
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    fn errors(extra: &str) -> Vec<String> {
        parse(extra).expect_err("config accepted")
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.example.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.http, Some("127.0.0.1:5985".parse().unwrap()));
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.targets[0].listen, Some("127.0.0.1:15001".parse().unwrap()));
        assert_eq!(c.allow.len(), 1);
        crate::policy::Policy::new(&c.allow).expect("example rules compile");
    }

    #[test]
    fn defaults_apply() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.max_envelope_size, 512_000);
        assert_eq!(c.auth.credssp_min_version, 5);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.defaults.port, 5985);
        assert_eq!(c.defaults.auth, TargetAuth::Negotiate);
        assert_eq!(c.defaults.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.defaults.timeout, Duration::from_secs(120));
    }

    #[test]
    fn targets_inherit_defaults_and_normalize_urls() {
        let c = parse(
            r#"
[defaults]
auth = "ntlm"
timeout_secs = 300
[[target]]
name = "web01"
url = "http://web01.lab.local/wsman"
[[target]]
name = "web02"
url = "http://[fd00::2]:5986/wsman"
auth = "negotiate"
connect_timeout_secs = 3
[[allow]]
users = ['LAB\alice']
targets = ["web*"]
"#,
        )
        .unwrap();
        let t = &c.targets[0];
        assert_eq!(t.url, "http://web01.lab.local:5985/wsman");
        assert_eq!((t.auth, t.timeout), (TargetAuth::Ntlm, Duration::from_secs(300)));
        let t = &c.targets[1];
        assert_eq!(t.url, "http://[fd00::2]:5986/wsman");
        assert_eq!(t.auth, TargetAuth::Negotiate);
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.allow[0].shells, ["cmd", "powershell"]);
    }

    #[test]
    fn error_names_file_line_and_key() {
        let errs = parse("").map(|_| ()).err();
        assert!(errs.is_none());
        let src = MINIMAL.replace("127.0.0.1:5985", "x");
        let e = Config::parse(Path::new("config/relay.toml"), &src).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "config/relay.toml:3: listen.http: invalid socket address \"x\" (expected ip:port)"
        );
    }

    #[test]
    fn check_reports_every_problem() {
        let errs = errors(
            r#"
[auth.x]
"#,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        let errs = errors(
            r#"
[defaults]
port = 0
[[target]]
name = "web01"
url = "https://web01/wsman"
listen = "127.0.0.1:5985"
[[target]]
name = "WEB01"
url = "http://web02/wsman"
auth = "kerberos"
timeout_secs = 0
[[allow]]
users = []
targets = ["10.0.0.0/40", "web[1"]
shells = ["bash"]
"#,
        );
        let expect = [
            "relay.toml:14: defaults.port: 0 is out of range 1..=65535",
            "relay.toml:17: target[0].url: \"https://web01/wsman\": scheme must be http",
            "relay.toml:18: target[0].listen: listen address 127.0.0.1:5985 clashes with listen.http",
            "relay.toml:20: target[1].name: duplicate target name \"WEB01\" (also target[0])",
            "relay.toml:22: target[1].auth: unknown auth \"kerberos\"",
            "relay.toml:23: target[1].timeout_secs: 0 is out of range 1..=86400",
            "relay.toml:25: allow[0].users: must not be empty",
            "relay.toml:26: allow[0].targets: invalid CIDR \"10.0.0.0/40\"",
            "relay.toml:26: allow[0].targets: invalid glob \"web[1\"",
            "relay.toml:27: allow[0].shells: invalid shell \"bash\"",
        ];
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        for (e, want) in errs.iter().zip(expect) {
            assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
        }
    }

    #[test]
    fn toml_errors_carry_line_and_key() {
        let errs = errors("[session]\nidle_timeout = 5\n");
        assert!(
            errs[0].starts_with("relay.toml:13: session.idle_timeout: unknown field `idle_timeout`"),
            "{errs:?}"
        );
        let errs = errors("[session]\nidle_timeout_secs = \"5\"\n");
        assert!(
            errs[0].starts_with("relay.toml:13: session.idle_timeout_secs: invalid type"),
            "{errs:?}"
        );
        let errs = errors("[[allow]]\nusers = [\n  'LAB\\a',\n  5,\n]\ntargets = ['x']\n");
        assert!(errs[0].starts_with("relay.toml:15: allow[0].users: invalid type"), "{errs:?}");
        let errs = errors("[[target]]\nname = \"a\"\n");
        assert!(errs[0].contains("missing field `url`"), "{errs:?}");
        let errs = errors("listen = 3 = 4\n");
        assert!(errs[0].starts_with("relay.toml:12: "), "{errs:?}");
    }

    #[test]
    fn a_listener_is_required() {
        let src = MINIMAL.replace("http = \"127.0.0.1:5985\"\n", "");
        let e = Config::parse(Path::new("r.toml"), &src).unwrap_err();
        assert!(e[0].to_string().contains("no listener"), "{}", e[0]);
        let ok = format!("{src}[[target]]\nname = \"w\"\nurl = \"http://w/wsman\"\nlisten = \"127.0.0.1:15001\"\n");
        let c = Config::parse(Path::new("r.toml"), &ok).unwrap();
        assert_eq!(c.listener_target("127.0.0.1:15001".parse().unwrap()).unwrap().name, "w");
    }

    #[test]
    fn unspecified_listeners_clash_on_port() {
        let errs = errors(
            "[[target]]\nname = \"w\"\nurl = \"http://w/wsman\"\nlisten = \"0.0.0.0:5985\"\n",
        );
        assert!(errs[0].contains("clashes with listen.http"), "{errs:?}");
    }

    #[test]
    fn target_names_must_be_hostlike() {
        for bad in ["", "web 01", "10.0.0.1", "web/01", "a:b"] {
            let errs = errors(&format!(
                "[[target]]\nname = {bad:?}\nurl = \"http://w/wsman\"\n"
            ));
            assert!(errs[0].contains("target[0].name"), "{bad:?}: {errs:?}");
        }
    }

    #[test]
    fn duplicate_target_addresses_are_refused() {
        let errs = errors(
            "[[target]]\nname = \"a\"\nurl = \"http://W:5985/wsman\"\n\
             [[target]]\nname = \"b\"\nurl = \"http://w/other\"\n",
        );
        assert!(errs[0].contains("target \"a\" already uses this host and port"), "{errs:?}");
    }

    #[test]
    fn credssp_version_range() {
        assert!(parse("").is_ok());
        let src = MINIMAL.replace("users_file = \"config/users\"", "users_file = \"u\"\ncredssp_min_version = 7");
        let e = Config::parse(Path::new("r.toml"), &src).unwrap_err();
        assert!(e[0].to_string().contains("auth.credssp_min_version: 7 is out of range 2..=6"));
        let src = MINIMAL.replace("users_file = \"config/users\"", "users_file = \"u\"\ncredssp_min_version = 2");
        assert_eq!(Config::parse(Path::new("r.toml"), &src).unwrap().auth.credssp_min_version, 2);
    }

    fn resolver() -> Config {
        parse(
            r#"
[[target]]
name = "web01"
url = "http://127.0.0.21:5985/wsman"
auth = "ntlm"
[[target]]
name = "v6"
url = "http://[fd00::1]/custom"
"#,
        )
        .unwrap()
    }

    #[test]
    fn resolve_alias_case_insensitive() {
        let t = resolver().resolve_target("WEB01").unwrap();
        assert_eq!(t.name, "web01");
        assert_eq!(t.alias.as_deref(), Some("web01"));
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.21", 5985));
        assert_eq!(t.ip, Some("127.0.0.21".parse().unwrap()));
        assert_eq!(t.url, "http://127.0.0.21:5985/wsman");
        assert_eq!(t.auth, TargetAuth::Ntlm);
    }

    #[test]
    fn resolve_address_of_configured_target_keeps_alias() {
        let c = resolver();
        let t = c.resolve_target("127.0.0.21:5985").unwrap();
        assert_eq!((t.name.as_str(), t.alias.as_deref()), ("127.0.0.21:5985", Some("web01")));
        assert_eq!(t.auth, TargetAuth::Ntlm);
        let t = c.resolve_target("%5Bfd00:0::1%5D").unwrap();
        assert_eq!(t.alias.as_deref(), Some("v6"));
        assert_eq!(t.url, "http://[fd00::1]:5985/custom");
        // Same host, other port: not the configured target.
        assert!(c.resolve_target("127.0.0.21:5986").unwrap().alias.is_none());
    }

    #[test]
    fn resolve_unlisted_hosts_with_defaults() {
        let c = resolver();
        let t = c.resolve_target("db01.lab.local").unwrap();
        assert_eq!(t.alias, None);
        assert_eq!(t.url, "http://db01.lab.local:5985/wsman");
        assert_eq!(t.auth, TargetAuth::Negotiate);
        assert_eq!(t.ip, None);
        let t = c.resolve_target("[::1]:8080").unwrap();
        assert_eq!((t.name.as_str(), t.host.as_str(), t.port), ("[::1]:8080", "::1", 8080));
        assert_eq!(t.url, "http://[::1]:8080/wsman");
        for bad in ["", "a/b", "::1", "127.1", "web01:0", "%zz", "x y"] {
            assert!(c.resolve_target(bad).is_err(), "{bad:?} resolved");
        }
    }

    #[test]
    fn unreadable_file_is_reported() {
        let e = Config::load(Path::new("/nonexistent/relay.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/relay.toml: cannot read config"));
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

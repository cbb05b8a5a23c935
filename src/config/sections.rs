//! The simple sections: `[listen]`, `[auth]`, `[audit]`, `[session]`, `[limits]` and
//! the `[[allow]]` rules; and the whole file put together.

use std::path::Path;
use std::time::Duration;

use super::raw;
use super::targets::realm_for_targets;
use super::validate::{Listeners, Validator};
use super::{
    AuditConfig, AuditOnFailure, AuthConfig, Config, Delegation, KerberosConfig, LimitsConfig, ListenConfig,
    MetricsConfig, SessionConfig, SyslogTarget, DEFAULT_CREDSSP_MIN_VERSION, DEFAULT_MAX_ENVELOPE_SIZE, DEFAULT_SHELLS,
    DEFAULT_TRANSCRIPT_MAX_BYTES,
};
use crate::directory::DirectoryConfig;
use crate::identity::Domain;
use crate::kerberos::kdc::{KdcProtocol, KdcUrl};
use crate::policy::{self, Policy};
use crate::resolve::TlsTrust;

const MIN_ENVELOPE_SIZE: i64 = 8 * 1024;
const MAX_ENVELOPE_SIZE: i64 = 100 * 1024 * 1024;
/// A transcript holds at least a few commands' output, at most 1 GiB per session.
const MIN_TRANSCRIPT_BYTES: i64 = 4096;
const MAX_TRANSCRIPT_BYTES: i64 = 1024 * 1024 * 1024;

impl Validator<'_> {
    pub fn config(&mut self, path: &Path, raw: raw::RawConfig) -> Option<Config> {
        let mut listeners = Listeners::default();
        let listen = self.listen(raw.listen, &mut listeners);
        let kerberos = raw.kerberos.and_then(|k| self.kerberos(k));
        let keytab = kerberos.as_ref().is_some_and(|k| k.keytab.is_some());
        let auth = self.auth(raw.auth, keytab);
        let audit = self.audit(raw.audit);
        let session = self.session(raw.session);
        let limits = self.limits(raw.limits);
        let metrics = self.metrics(raw.metrics, &mut listeners);
        let (mut defaults, inherited) = self.defaults(raw.defaults)?;
        defaults.kerberos = kerberos
            .as_ref()
            .and_then(|k| realm_for_targets(k, defaults.connect_timeout));
        self.check_defaults_kerberos(&defaults);
        let targets = self.targets(raw.target, &defaults, &inherited, &mut listeners);
        if listeners.declared == 0 {
            let at = self.loc.header_offset("listen", None);
            self.error(
                at..at,
                "listen.http",
                "no listener: set listen.http, listen.https or a listen address on a [[target]]",
            );
        }

        let domain = kerberos.as_ref().map(|k| k.domain.clone());
        let directory_at = raw
            .directory
            .as_ref()
            .map(|_| self.loc.header_offset("directory", None));
        let directory = raw.directory.and_then(|d| self.directory(d, defaults.connect_timeout));
        let rules: Vec<policy::Rule> = raw
            .allow
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.allow_rule(i, r, domain.as_ref(), directory_at.is_some()))
            .collect();
        if let (Some(at), None) = (directory_at, &kerberos) {
            self.error(
                at..at,
                "directory",
                "[directory] needs [kerberos] (realm, netbios): groups are looked up in the relay's domain",
            );
        }

        Some(Config {
            path: path.to_path_buf(),
            listen,
            auth,
            audit,
            session,
            defaults,
            limits,
            metrics,
            targets,
            policy: Policy::new(rules, domain),
            kerberos,
            directory,
        })
    }

    fn listen(&mut self, raw: Option<raw::RawListen>, listeners: &mut Listeners) -> ListenConfig {
        let at = self.table_at(raw.is_some(), "listen");
        let l = raw.unwrap_or_default();
        listeners.declared += usize::from(l.http.is_some()) + usize::from(l.https.is_some());
        let listen_http = self
            .string(l.http, "listen.http")
            .and_then(|a| self.socket_addr(&a, "listen.http"));
        if let Some(a) = listen_http {
            listeners.bound.push((a, "listen.http".into()));
        }
        let listen_https = self.string(l.https, "listen.https").and_then(|a| {
            let addr = self.socket_addr(&a, "listen.https")?;
            self.check_listener_clash(&listeners.bound, addr, a.span(), "listen.https");
            listeners.bound.push((addr, "listen.https".into()));
            Some(addr)
        });
        let tls_cert = self.required(l.tls_cert, "listen.tls_cert", at);
        let tls_key = self.required(l.tls_key, "listen.tls_key", at);
        ListenConfig {
            http: listen_http,
            https: listen_https,
            tls_cert: self.path(tls_cert, "listen.tls_cert"),
            tls_key: self.path(tls_key, "listen.tls_key"),
            basic_over_https: self
                .boolean(l.basic_auth, "listen.basic_auth")
                .is_none_or(|b| *b.get_ref()),
            max_envelope_size: self
                .int(
                    l.max_envelope_size,
                    "listen.max_envelope_size",
                    MIN_ENVELOPE_SIZE..=MAX_ENVELOPE_SIZE,
                    DEFAULT_MAX_ENVELOPE_SIZE as i64,
                )
                .unsigned_abs() as usize,
            max_header_size: self
                .int(l.max_header_size, "listen.max_header_size", 8192..=1_048_576, 65_536)
                .unsigned_abs() as usize,
            header_read_timeout: self.secs(
                l.header_read_timeout_secs,
                "listen.header_read_timeout_secs",
                Duration::from_secs(30),
            ),
            allow_sources: self.cidr_list(l.allow_sources, "listen.allow_sources"),
        }
    }

    /// `keytab`: domain users can log on with Kerberos, so the users file
    /// (local accounts) is optional.
    fn auth(&mut self, raw: Option<raw::RawAuth>, keytab: bool) -> AuthConfig {
        let at = self.table_at(raw.is_some(), "auth");
        let a = raw.unwrap_or_default();
        let users_file = if keytab {
            self.string(a.users_file, "auth.users_file")
        } else {
            self.required(a.users_file, "auth.users_file", at)
        };
        let handshake_timeout = self.secs(
            a.handshake_timeout_secs,
            "auth.handshake_timeout_secs",
            Duration::from_secs(30),
        );
        AuthConfig {
            users_file: users_file.map(|f| self.secret_path(f, "auth.users_file")),
            credssp_min_version: self
                .int(
                    a.credssp_min_version,
                    "auth.credssp_min_version",
                    2..=6,
                    DEFAULT_CREDSSP_MIN_VERSION.into(),
                )
                .unsigned_abs() as u32,
            handshake_timeout,
            logon_timeout: self.secs(a.logon_timeout_secs, "auth.logon_timeout_secs", handshake_timeout),
            lockout_threshold: self
                .int(a.lockout_threshold, "auth.lockout_threshold", 0..=1000, 5)
                .unsigned_abs() as u32,
            lockout_window: self.secs(
                a.lockout_window_secs,
                "auth.lockout_window_secs",
                Duration::from_secs(300),
            ),
            lockout_duration: self.secs(
                a.lockout_duration_secs,
                "auth.lockout_duration_secs",
                Duration::from_secs(900),
            ),
        }
    }

    fn delegation(&mut self, v: raw::V) -> Delegation {
        let key = "kerberos.delegation";
        let Some(v) = self.string(v, key) else {
            return Delegation::default();
        };
        match v.get_ref().as_str() {
            "password" => Delegation::Password,
            "constrained" => Delegation::Constrained,
            other => {
                let message = format!("unknown value {other:?} (expected one of: \"password\", \"constrained\")");
                self.error(v.span(), key, message);
                Delegation::default()
            }
        }
    }

    fn audit_on_failure(&mut self, v: raw::V) -> AuditOnFailure {
        let key = "audit.on_failure";
        let Some(v) = self.string(v, key) else {
            return AuditOnFailure::default();
        };
        match v.get_ref().as_str() {
            "refuse" => AuditOnFailure::Refuse,
            "continue" => AuditOnFailure::Continue,
            other => {
                let message = format!("unknown value {other:?} (expected one of: \"refuse\", \"continue\")");
                self.error(v.span(), key, message);
                AuditOnFailure::default()
            }
        }
    }

    fn audit(&mut self, raw: Option<raw::RawAudit>) -> AuditConfig {
        let at = self.table_at(raw.is_some(), "audit");
        let raw_audit = raw.unwrap_or_default();
        let audit_path = self.required(raw_audit.path, "audit.path", at);
        let hmac_key_file = self
            .string(raw_audit.hmac_key_file, "audit.hmac_key_file")
            .map(|p| self.secret_path(p, "audit.hmac_key_file"));
        let transcripts = self
            .string(raw_audit.transcripts, "audit.transcripts")
            .map(|p| self.path(Some(p), "audit.transcripts"));
        let transcript_max_bytes = self
            .int(
                raw_audit.transcript_max_bytes,
                "audit.transcript_max_bytes",
                MIN_TRANSCRIPT_BYTES..=MAX_TRANSCRIPT_BYTES,
                DEFAULT_TRANSCRIPT_MAX_BYTES as i64,
            )
            .unsigned_abs();
        let record_host_responses = self
            .boolean(raw_audit.record_host_responses, "audit.record_host_responses")
            .is_some_and(|b| *b.get_ref());
        let syslog = self.string(raw_audit.syslog, "audit.syslog").and_then(|v| {
            SyslogTarget::parse(v.get_ref())
                .map_err(|message| self.error(v.span(), "audit.syslog", message))
                .ok()
        });
        AuditConfig {
            path: self.path(audit_path, "audit.path"),
            on_failure: self.audit_on_failure(raw_audit.on_failure),
            hmac_key_file,
            transcripts,
            transcript_max_bytes,
            record_host_responses,
            syslog,
        }
    }

    fn metrics(&mut self, raw: raw::RawMetrics, listeners: &mut Listeners) -> MetricsConfig {
        let listen = self.string(raw.listen, "metrics.listen").and_then(|a| {
            let addr = self.socket_addr(&a, "metrics.listen")?;
            self.check_listener_clash(&listeners.bound, addr, a.span(), "metrics.listen");
            listeners.bound.push((addr, "metrics.listen".into()));
            Some(addr)
        });
        MetricsConfig { listen }
    }

    fn session(&mut self, raw: raw::RawSession) -> SessionConfig {
        SessionConfig {
            idle_timeout: self.secs(
                raw.idle_timeout_secs,
                "session.idle_timeout_secs",
                Duration::from_secs(1800),
            ),
            max_lifetime: self.secs(
                raw.max_lifetime_secs,
                "session.max_lifetime_secs",
                Duration::from_secs(8 * 3600),
            ),
            shutdown_timeout: self.secs(
                raw.shutdown_timeout_secs,
                "session.shutdown_timeout_secs",
                Duration::from_secs(10),
            ),
        }
    }

    fn limits(&mut self, m: raw::RawLimits) -> LimitsConfig {
        LimitsConfig {
            max_sessions: self
                .int(m.max_sessions, "limits.max_sessions", 1..=100_000, 300)
                .unsigned_abs() as usize,
            max_sessions_per_user: self
                .int(m.max_sessions_per_user, "limits.max_sessions_per_user", 1..=100_000, 25)
                .unsigned_abs() as usize,
            max_shells_per_user: self
                .int(m.max_shells_per_user, "limits.max_shells_per_user", 1..=100_000, 30)
                .unsigned_abs() as usize,
            max_operations_per_user: self
                .int(
                    m.max_operations_per_user,
                    "limits.max_operations_per_user",
                    1..=100_000,
                    1500,
                )
                .unsigned_abs() as usize,
            max_unauthenticated_per_source: self
                .int(
                    m.max_unauthenticated_per_source,
                    "limits.max_unauthenticated_per_source",
                    1..=100_000,
                    16,
                )
                .unsigned_abs() as usize,
            max_operation_timeout: self.secs(
                m.max_operation_timeout_secs,
                "limits.max_operation_timeout_secs",
                Duration::from_secs(60),
            ),
        }
    }

    fn kerberos(&mut self, k: raw::RawKerberos) -> Option<KerberosConfig> {
        let at = self.loc.header_offset("kerberos", None);
        let realm = self.required(k.realm, "kerberos.realm", Some(at))?;
        let realm_span = realm.span();
        let realm = realm.into_inner();
        if let Err(message) = check_realm(&realm) {
            self.error(realm_span, "kerberos.realm", message);
        }
        let netbios = match self.string(k.netbios, "kerberos.netbios") {
            Some(n) => {
                if let Err(message) = check_netbios(n.get_ref()) {
                    self.error(n.span(), "kerberos.netbios", message);
                }
                n.into_inner()
            }
            // AD's default NetBIOS name is the first label of the DNS name.
            None => realm.split('.').next().unwrap_or_default().to_string(),
        };
        let kdcs = match k.kdc {
            Some(_) => self.list(k.kdc, "kerberos.kdc", at, |s| {
                KdcUrl::parse(s).map_err(|e| e.to_string())
            }),
            None => Vec::new(),
        };
        let proxies = kdcs.iter().filter(|k| k.protocol() == KdcProtocol::Proxy).count();
        if proxies > 0 && proxies < kdcs.len() {
            let at = self.loc.header_offset("kerberos", None);
            self.error(
                at..at,
                "kerberos.kdc",
                "either KDCs (tcp://, udp://) or KDC proxies (https://), not both",
            );
        }
        let keytab = self.string(k.keytab, "kerberos.keytab");
        let keytab = keytab.map(|p| self.secret_path(p, "kerberos.keytab"));
        let delegation = self.delegation(k.delegation);
        if delegation == Delegation::Constrained && keytab.is_none() {
            self.error(
                at..at,
                "kerberos.delegation",
                "\"constrained\" needs kerberos.keytab: the relay's account key (svc-relay@REALM) and its service keys",
            );
        }
        Some(KerberosConfig {
            domain: Domain { realm, netbios },
            kdcs,
            keytab,
            delegation,
        })
    }

    /// `[directory]`: LDAP URLs, TLS trust and the bind; lookups get the KDC
    /// transport's timeouts (`[defaults] connect_timeout_secs`).
    fn directory(&mut self, d: raw::RawDirectory, timeout: Duration) -> Option<DirectoryConfig> {
        let at = self.loc.header_offset("directory", None);
        let url_span = d.url.as_ref().map(|u| u.span());
        let urls = self.list(d.url, "directory.url", at, parse_directory_url);
        let starttls = self
            .boolean(d.starttls, "directory.starttls")
            .is_some_and(|b| *b.get_ref());
        if let Some(span) = url_span {
            // The bind sends a password: never over a connection TLS does not protect.
            if urls.iter().any(|u| u.scheme() == "ldap") && !starttls {
                self.error(
                    span,
                    "directory.url",
                    "ldap:// would send the bind password in clear: use ldaps:// or set starttls = true",
                );
            }
        }
        let ca_file = self.string(d.ca_file, "directory.ca_file");
        let ca_file = self.ca_file(ca_file, "directory.ca_file");
        let tls = self.tls(TlsTrust::Roots(ca_file), at, "directory.ca_file")?;
        // The keytab cannot bind (no SASL GSSAPI: see ldap3 in Cargo.toml), so say what can.
        let unbound = |key: &str| {
            format!(
                "required key is missing: the relay binds with bind_dn and bind_password_file (0600) over TLS; \
                 set {key} for a low-privilege account (a bind with the [kerberos] keytab, SASL GSSAPI, is not \
                 supported)"
            )
        };
        for (value, key) in [(&d.bind_dn, "bind_dn"), (&d.bind_password_file, "bind_password_file")] {
            if value.is_none() {
                self.error(at..at, format!("directory.{key}"), unbound(key));
            }
        }
        let bind_dn = self.required(d.bind_dn, "directory.bind_dn", None)?;
        if bind_dn.get_ref().is_empty() {
            self.error(bind_dn.span(), "directory.bind_dn", "must not be empty");
        }
        let password = self.required(d.bind_password_file, "directory.bind_password_file", None)?;
        let bind_password_file = self.secret_path(password, "directory.bind_password_file");
        Some(DirectoryConfig {
            urls,
            starttls,
            tls,
            bind_dn: bind_dn.into_inner(),
            bind_password_file,
            connect_timeout: timeout,
            reply_timeout: timeout,
        })
    }

    /// One `[[allow]]` rule, its user patterns keyed in the relay's `domain`. It needs
    /// `users` or `groups` (or both); `groups` need a `[directory]` to be looked up in.
    fn allow_rule(&mut self, i: usize, r: raw::RawAllow, domain: Option<&Domain>, directory: bool) -> policy::Rule {
        let at = self.loc.header_offset("allow", Some(i));
        let key = |k: &str| format!("allow[{i}].{k}");
        let groups = match r.groups {
            Some(_) => {
                let span = r.groups.as_ref().map(|g| g.span());
                let groups = self.list(r.groups, &key("groups"), at, |g| policy::parse_group(g, domain));
                if let (Some(span), false) = (span, directory) {
                    self.error(
                        span,
                        key("groups"),
                        "groups need a [directory] to look membership up in (url, bind_dn, bind_password_file)",
                    );
                }
                groups
            }
            None => Vec::new(),
        };
        let users = match (&r.users, groups.is_empty()) {
            (None, false) => Vec::new(),
            _ => self.list(r.users, &key("users"), at, |u| policy::parse_user(u, domain)),
        };
        let targets = self.list(r.targets, &key("targets"), at, policy::parse_target);
        let shells = match r.shells {
            Some(_) => self.list(r.shells, &key("shells"), at, policy::parse_shell),
            None => DEFAULT_SHELLS
                .iter()
                .filter_map(|s| policy::parse_shell(s).ok())
                .collect(),
        };
        let commands = r
            .commands
            .is_some()
            .then(|| self.list(r.commands, &key("commands"), at, policy::parse_command));
        let cmdlets = r
            .cmdlets
            .is_some()
            .then(|| self.list(r.cmdlets, &key("cmdlets"), at, policy::parse_cmdlet));
        let methods = match r.methods {
            Some(_) => self.list(r.methods, &key("methods"), at, policy::parse_method),
            None => Vec::new(),
        };
        let wmi_writes = self
            .boolean(r.wmi_writes, &key("wmi_writes"))
            .is_some_and(|b| *b.get_ref());
        let commands = policy::CommandPolicy {
            commands,
            cmdlets,
            methods,
            wmi_writes,
        };
        policy::Rule::new(users, groups, targets, shells).with_commands(commands)
    }
}

/// A `[directory] url`: `ldap://host[:port]` or `ldaps://host[:port]`, nothing after the host.
fn parse_directory_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?}: {e} (expected ldaps://dc1.example.com)"))?;
    if !matches!(url.scheme(), "ldap" | "ldaps") {
        return Err(format!("{text:?}: expected an ldap:// or ldaps:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: no host"));
    }
    if !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return Err(format!(
            "{text:?}: only scheme, host and port: the base DN comes from [kerberos] realm"
        ));
    }
    Ok(url)
}

/// A realm as Kerberos spells an AD domain: its DNS name in upper case.
fn check_realm(realm: &str) -> Result<(), String> {
    let labels_ok = !realm.is_empty()
        && realm
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !labels_ok {
        return Err(format!("{realm:?} is not a DNS domain name (expected like LAB.TEST)"));
    }
    if realm != realm.to_ascii_uppercase() {
        return Err(format!(
            "{realm:?} must be upper case ({:?}): Kerberos realm names are case-sensitive and AD's is the \
             domain's DNS name in capitals",
            realm.to_ascii_uppercase()
        ));
    }
    Ok(())
}

/// A NetBIOS domain name: 1 to 15 characters, none that Windows forbids.
fn check_netbios(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?} must be 1 to 15 characters"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "\\/:*?\"<>|.@".contains(c))
    {
        return Err(format!("{name:?} contains a character NetBIOS names cannot have"));
    }
    Ok(())
}

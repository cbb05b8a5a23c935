//! `[defaults]`, `[[target]]` and the realm of `[kerberos]`: how targets are reached,
//! checked at load, with each https target's TLS configuration built once here.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::validate::{Listeners, Validator};
use super::KerberosConfig;
use super::{DEFAULT_TARGET_HTTPS_PORT, DEFAULT_TARGET_PORT};
use crate::kerberos::kdc::KdcTransport;
use crate::resolve::host::{self, parse_target_url, TargetUrl};
use crate::resolve::{
    validate_spn, CaFile, Fingerprint, KerberosRealm, KerberosTarget, TargetAuth, TargetConfig, TargetDefaults,
    TargetTls, TlsTrust,
};

/// The TLS keys of one `[[target]]`, as written.
struct TlsKeys {
    ca_file: raw::V,
    tls_fingerprint: raw::V,
    tls_verify: raw::V,
}

/// What `[[target]]`s inherit from `[defaults]` besides [`TargetDefaults`]: keys that
/// only matter while loading.
pub(super) struct DefaultsKeys {
    /// `[defaults] ca_file`, trusted by https targets without their own.
    pub ca_file: Option<CaFile>,
    /// `[defaults] allow_ntlm_only_delegation`, for targets that do not set it.
    pub allow_ntlm_only_delegation: bool,
}

/// Which `[[target]]` a check is about, for its messages.
struct TargetRef<'a> {
    index: usize,
    name: &'a str,
    auth: TargetAuth,
    /// Offset of its `[[target]]` header.
    at: usize,
    /// Offset of its `auth` value, when it has one.
    auth_at: Option<usize>,
}

impl Validator<'_> {
    /// `[defaults]`, and what targets inherit from it besides. `None` only when TLS itself
    /// cannot be set up.
    pub fn defaults(&mut self, d: raw::RawDefaults) -> Option<(TargetDefaults, DefaultsKeys)> {
        let defaults_ca = {
            let v = self.string(d.ca_file, "defaults.ca_file");
            self.ca_file(v, "defaults.ca_file")
        };
        let defaults_at = self.loc.header_offset("defaults", None);
        let auth_span = d.auth.as_ref().map(Spanned::span);
        let allow_ntlm_only_delegation = self
            .boolean(d.allow_ntlm_only_delegation, "defaults.allow_ntlm_only_delegation")
            .is_some_and(|v| *v.get_ref());
        let defaults = TargetDefaults {
            auth: self.target_auth(d.auth, "defaults.auth", TargetAuth::default()),
            port: self
                .int(d.port, "defaults.port", 1..=65535, DEFAULT_TARGET_PORT.into())
                .unsigned_abs() as u16,
            https_port: self
                .int(
                    d.https_port,
                    "defaults.https_port",
                    1..=65535,
                    DEFAULT_TARGET_HTTPS_PORT.into(),
                )
                .unsigned_abs() as u16,
            // Cannot fail short of a broken TLS library; then there is nothing to go on with.
            tls: self.tls(TlsTrust::Roots(defaults_ca.clone()), defaults_at, "defaults")?,
            connect_timeout: self.secs(
                d.connect_timeout_secs,
                "defaults.connect_timeout_secs",
                Duration::from_secs(10),
            ),
            timeout: self.secs(d.timeout_secs, "defaults.timeout_secs", Duration::from_secs(120)),
            kerberos: None,
        };

        // Certificates are always checked; a target whose certificate no CA vouches for is
        // pinned on its own [[target]].
        if let Some(v) = self.boolean(d.tls_verify, "defaults.tls_verify") {
            if !v.get_ref() {
                self.error(
                    v.span(),
                    "defaults.tls_verify",
                    "tls_verify = false is refused: https targets always have their certificate checked; \
                     for one whose certificate no CA vouches for, set tls_fingerprint = \"sha256:...\" on its \
                     [[target]]",
                );
            }
        }
        // Unlisted hosts are reached over http:// with this auth (credssp needs no https).
        if defaults.auth == TargetAuth::CredSsp && !allow_ntlm_only_delegation {
            let span = auth_span.unwrap_or(defaults_at..defaults_at);
            self.error(
                span,
                "defaults.auth",
                ntlm_only_delegation_refused(
                    "[defaults] applies it to hosts not listed as a [[target]]",
                    "[defaults]",
                ),
            );
        }
        let keys = DefaultsKeys {
            ca_file: defaults_ca,
            allow_ntlm_only_delegation,
        };
        Some((defaults, keys))
    }

    /// `[defaults] auth = "kerberos"` (or `https-kerberos`) needs the realm.
    pub fn check_defaults_kerberos(&mut self, defaults: &TargetDefaults) {
        if defaults.auth.kerberos_only() && defaults.kerberos.is_none() && !self.kerberos_reported() {
            let at = self.loc.header_offset("defaults", None);
            self.error(
                at..at,
                "defaults.auth",
                format!(
                    "auth {:?} needs [kerberos] with its realm and kdc list",
                    defaults.auth.as_str()
                ),
            );
        }
    }

    /// Whether `[kerberos]` itself had a problem (then what depends on it is not reported again).
    fn kerberos_reported(&self) -> bool {
        self.errors
            .iter()
            .any(|e| matches!(e, super::ConfigError::Invalid { key, .. } if key.starts_with("kerberos.")))
    }

    pub fn targets(
        &mut self,
        raw: Vec<raw::RawTarget>,
        defaults: &TargetDefaults,
        inherited: &DefaultsKeys,
        listeners: &mut Listeners,
    ) -> Vec<TargetConfig> {
        let mut targets = Vec::new();
        let mut seen_urls: Vec<(TargetUrl, String)> = Vec::new();
        for (i, t) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("target[{i}].{k}");
            let header = self.loc.header_offset("target", Some(i));
            let at = Some(header);
            let name = self.required(t.name, &key("name"), at);
            if let Some(name) = &name {
                if let Err(m) = validate_target_name(name.get_ref()) {
                    self.error(name.span(), key("name"), m);
                } else if let Some(prev) = targets
                    .iter()
                    .position(|p: &TargetConfig| p.name.eq_ignore_ascii_case(name.get_ref()))
                {
                    self.error(
                        name.span(),
                        key("name"),
                        format!("duplicate target name {:?} (also target[{prev}])", name.get_ref()),
                    );
                }
            }
            let name = name.map(Spanned::into_inner).unwrap_or_default();
            let auth_span = t.auth.as_ref().map(Spanned::span);
            let auth_at = auth_span.as_ref().map(|span| span.start);
            let explicit_auth = self.target_auth_opt(t.auth, &key("auth"));
            let auth = explicit_auth.unwrap_or(defaults.auth);
            let allow_delegation = self.boolean(t.allow_ntlm_only_delegation, &key("allow_ntlm_only_delegation"));
            let url = self.required(t.url, &key("url"), at);
            // The scheme, once the url parsed.
            let mut https = None;
            let mut parsed_url = None;
            let url = match url.as_ref().map(|u| (u, parse_target_url(u.get_ref()))) {
                Some((raw_url, Ok(u))) => {
                    https = Some(u.https);
                    match &auth_span {
                        // An invalid auth was reported already; its fallback proves nothing.
                        Some(_) if explicit_auth.is_none() => {}
                        Some(span) => {
                            if let Some(m) = auth.scheme_problem(u.https, "") {
                                self.error(
                                    span.clone(),
                                    key("auth"),
                                    format!("{m}; url is {:?}", raw_url.get_ref()),
                                );
                            }
                        }
                        None => {
                            if let Some(m) = auth.scheme_problem(u.https, " (from defaults.auth)") {
                                self.error(raw_url.span(), key("url"), format!("{:?}: {m}", raw_url.get_ref()));
                            }
                        }
                    }
                    // An invalid auth was reported already; its fallback proves nothing.
                    if auth_span.is_none() || explicit_auth.is_some() {
                        let allowed = allow_delegation
                            .as_ref()
                            .map_or(inherited.allow_ntlm_only_delegation, |v| *v.get_ref());
                        let delegates_over_http = auth == TargetAuth::CredSsp && !u.https;
                        if delegates_over_http && !allowed {
                            let (span, k) = match &auth_span {
                                Some(span) => (span.clone(), key("auth")),
                                None => (raw_url.span(), key("url")),
                            };
                            let what = format!("target {name:?} at {:?}", raw_url.get_ref());
                            self.error(span, k, ntlm_only_delegation_refused(&what, "its [[target]]"));
                        } else if let Some(v) = allow_delegation.as_ref().filter(|_| !delegates_over_http) {
                            self.error(
                                v.span(),
                                key("allow_ntlm_only_delegation"),
                                format!(
                                    "only applies to auth = \"credssp\" over http://; this target uses auth {:?} \
                                     over {}",
                                    auth.as_str(),
                                    if u.https { "https://" } else { "http://" }
                                ),
                            );
                        }
                    }
                    let port = u.port_or(defaults.port_for(u.https));
                    if let Some((_, other)) = seen_urls
                        .iter()
                        .find(|(s, _)| s.host.same_host(&u.host) && s.port_or(defaults.port_for(s.https)) == port)
                    {
                        self.error(
                            raw_url.span(),
                            key("url"),
                            format!("target {other:?} already uses this host and port"),
                        );
                    }
                    let normalized = u.normalized(defaults.port_for(u.https));
                    parsed_url = Some(u.clone());
                    seen_urls.push((u, name.clone()));
                    normalized
                }
                Some((raw_url, Err(m))) => {
                    self.error(raw_url.span(), key("url"), format!("{:?}: {m}", raw_url.get_ref()));
                    raw_url.get_ref().clone()
                }
                None => String::new(),
            };
            let tls_keys = TlsKeys {
                ca_file: t.ca_file,
                tls_fingerprint: t.tls_fingerprint,
                tls_verify: t.tls_verify,
            };
            let target = TargetRef {
                index: i,
                name: &name,
                auth,
                at: header,
                auth_at,
            };
            let tls = self.target_tls(tls_keys, &target, https, inherited.ca_file.as_ref());
            let kerberos = self.target_kerberos(t.spn, &target, &url, defaults);
            listeners.declared += usize::from(t.listen.is_some());
            let listen = self.string(t.listen, &key("listen")).and_then(|a| {
                let addr = self.socket_addr(&a, &key("listen"))?;
                self.check_listener_clash(&listeners.bound, addr, a.span(), &key("listen"));
                listeners.bound.push((addr, key("listen")));
                Some(addr)
            });
            targets.push(TargetConfig {
                name,
                url,
                parsed_url,
                auth,
                listen,
                tls,
                kerberos,
                connect_timeout: self.secs(
                    t.connect_timeout_secs,
                    &key("connect_timeout_secs"),
                    defaults.connect_timeout,
                ),
                timeout: self.secs(t.timeout_secs, &key("timeout_secs"), defaults.timeout),
            });
        }
        targets
    }

    /// The TLS keys of `target[i]` (`ca_file`, `tls_fingerprint`, `tls_verify`) and the
    /// TLS configuration built from them, for an https url (`https` is the url's scheme when
    /// it parsed). Without `ca_file` or `tls_fingerprint` the target trusts what
    /// `[defaults] ca_file` adds to the system roots.
    fn target_tls(
        &mut self,
        keys: TlsKeys,
        target: &TargetRef<'_>,
        https: Option<bool>,
        defaults_ca: Option<&CaFile>,
    ) -> Option<TargetTls> {
        let i = target.index;
        let key = |k: &str| format!("target[{i}].{k}");
        let ca = self.string(keys.ca_file, &key("ca_file"));
        let pin = self.string(keys.tls_fingerprint, &key("tls_fingerprint"));
        let verify = self.boolean(keys.tls_verify, &key("tls_verify"));
        if https == Some(false) {
            // No certificate to check on plain http (CredSSP's inner TLS key is
            // authenticated by its pubKeyAuth exchange, not by a CA).
            let given = [
                ca.as_ref().map(|v| (v.span(), "ca_file")),
                pin.as_ref().map(|v| (v.span(), "tls_fingerprint")),
                verify.as_ref().map(|v| (v.span(), "tls_verify")),
            ];
            for (span, k) in given.into_iter().flatten() {
                self.error(
                    span,
                    key(k),
                    "only applies to https:// urls; this target's url is http://",
                );
            }
            return None;
        }
        // Every auth an https target can use sends the caller's password or its whole
        // session inside this TLS: without a checked certificate they go to whoever answers.
        if let Some(v) = verify.as_ref().filter(|v| !v.get_ref()) {
            self.error(
                v.span(),
                key("tls_verify"),
                format!(
                    "tls_verify = false is refused: target {:?} (auth {:?}) would send the caller's credentials \
                     to whoever answers; pin its certificate instead with tls_fingerprint = \"sha256:...\" \
                     (openssl x509 -in cert.pem -noout -fingerprint -sha256)",
                    target.name,
                    target.auth.as_str()
                ),
            );
        }
        let trust = match (pin, ca) {
            (Some(pin), Some(_)) => {
                self.error(
                    pin.span(),
                    key("tls_fingerprint"),
                    "cannot be combined with ca_file: a pinned certificate is accepted whatever its chain",
                );
                None
            }
            (Some(pin), None) => match Fingerprint::parse(pin.get_ref()) {
                Ok(fingerprint) => Some(TlsTrust::Pinned(fingerprint)),
                Err(m) => {
                    self.error(pin.span(), key("tls_fingerprint"), m);
                    None
                }
            },
            (None, Some(ca)) => self
                .ca_file(Some(ca), &key("ca_file"))
                .map(|ca| TlsTrust::Roots(Some(ca))),
            (None, None) => Some(TlsTrust::Roots(defaults_ca.cloned())),
        }?;
        // An unparsable url was reported already; there is no TLS to build for it.
        https?;
        self.tls(trust, target.at, &key("url"))
    }

    /// Whether and how target[i] gets Kerberos tickets: `spn` checked, the auth's need
    /// for a realm and an SPN met (see [`KerberosTarget::choose`]).
    fn target_kerberos(
        &mut self,
        spn: raw::V,
        target: &TargetRef<'_>,
        url: &str,
        defaults: &TargetDefaults,
    ) -> Option<KerberosTarget> {
        let i = target.index;
        let key = |k: &str| format!("target[{i}].{k}");
        let spn = self.string(spn, &key("spn"));
        if let Some(v) = &spn {
            let uses_kerberos = target.auth.kerberos_only()
                || matches!(target.auth, TargetAuth::Negotiate | TargetAuth::HttpsNegotiate);
            let problem = if uses_kerberos {
                validate_spn(v.get_ref()).err()
            } else {
                Some(format!(
                    "auth {:?} does not use Kerberos; spn applies to kerberos, https-kerberos, negotiate and \
                     https-negotiate",
                    target.auth.as_str()
                ))
            };
            if let Some(m) = problem {
                self.error(v.span(), key("spn"), m);
                return None;
            }
        }
        // An unparsable url was reported already.
        let parsed = parse_target_url(url).ok()?;
        if target.auth.kerberos_only() && defaults.kerberos.is_none() && self.kerberos_reported() {
            return None;
        }
        match KerberosTarget::choose(
            target.auth,
            defaults.kerberos.as_ref(),
            spn.as_ref().map(|v| v.get_ref().as_str()),
            &parsed.host.host,
            parsed.host.ip,
        ) {
            Ok(kerberos) => kerberos,
            Err(m) => {
                let at = target.auth_at.unwrap_or(target.at);
                self.error(at..at, key("auth"), m);
                None
            }
        }
    }

    /// An optional `ca_file`, read and checked now so a bad file fails `check`, not the
    /// first session to that target.
    pub(super) fn ca_file(&mut self, v: Option<Spanned<String>>, key: &str) -> Option<CaFile> {
        let v = v?;
        if v.get_ref().is_empty() {
            self.error(v.span(), key, "must not be empty");
            return None;
        }
        match CaFile::load(Path::new(v.get_ref())) {
            Ok(ca) => Some(ca),
            Err(m) => {
                self.error(v.span(), key, m);
                None
            }
        }
    }

    /// The TLS configuration for `trust`, built once here; `at` and `key` place a failure.
    pub(super) fn tls(&mut self, trust: TlsTrust, at: usize, key: &str) -> Option<TargetTls> {
        match TargetTls::new(trust) {
            Ok(tls) => Some(tls),
            Err(e) => {
                self.error(at..at, key, e.to_string());
                None
            }
        }
    }

    fn target_auth(&mut self, v: raw::V, key: &str, default: TargetAuth) -> TargetAuth {
        self.target_auth_opt(v, key).unwrap_or(default)
    }

    /// The auth as written; `None` when missing or invalid (reported).
    fn target_auth_opt(&mut self, v: raw::V, key: &str) -> Option<TargetAuth> {
        let v = self.string(v, key)?;
        let auth = TargetAuth::parse(v.get_ref());
        if auth.is_none() {
            self.error(
                v.span(),
                key,
                format!(
                    "unknown auth {:?} (expected one of: {})",
                    v.get_ref(),
                    TargetAuth::ALL.map(|a| format!("{:?}", a.as_str())).join(", ")
                ),
            );
        }
        auth
    }
}

/// The realm Kerberos targets get tickets in: `[kerberos]` with its KDCs, each asked
/// within `connect_timeout`; `None` without KDCs (a keytab alone serves logons only).
pub(super) fn realm_for_targets(kerberos: &KerberosConfig, connect_timeout: Duration) -> Option<Arc<KerberosRealm>> {
    if kerberos.kdcs.is_empty() {
        return None;
    }
    Some(Arc::new(KerberosRealm {
        domain: kerberos.domain.clone(),
        kdc: KdcTransport::new(kerberos.kdcs.clone(), connect_timeout, connect_timeout),
    }))
}

/// Why `auth = "credssp"` towards a host reached over http:// is refused (`what` names
/// the host or hosts, `place` where the opt-in goes). The relay's CredSSP client
/// authenticates the target with NTLM only: nothing proves which host answered, yet
/// CredSSP then hands it the caller's password (Windows refuses the same unless
/// AllowFreshCredentialsWhenNTLMOnly is set).
fn ntlm_only_delegation_refused(what: &str, place: &str) -> String {
    format!(
        "auth \"credssp\" over http:// delegates the caller's password to a host only NTLM vouches for ({what}): \
         the relay's CredSSP client authenticates targets with NTLM, which anyone who can intercept the \
         connection and holds a domain computer account can complete, and so receive the password; use an \
         https:// url (its certificate is checked) or another auth, or accept the risk with \
         allow_ntlm_only_delegation = true in {place}"
    )
}

/// Target aliases are host-like names that cannot be mistaken for an address.
fn validate_target_name(name: &str) -> Result<(), String> {
    host::validate_hostname(name)?;
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!("target name {name:?} is an IP address; use a name"));
    }
    Ok(())
}

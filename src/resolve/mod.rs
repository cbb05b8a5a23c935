//! Targets: the settings of each `[[target]]` and of hosts nobody listed, and how the
//! name a request gives after `/wsman/` resolves to one of them.
//!
//! `config` builds these at load (TLS trust included, see [`tls`]); `policy` reads which
//! target a request names, `target` how to reach it. This module depends on neither.

pub(crate) mod host;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::identity::Domain;
use crate::kerberos::kdc::KdcTransport;

use host::{parse_host_port, percent_decode, url_host, TargetUrl};
pub use tls::{CaFile, Fingerprint, TargetTls, TargetTlsError, TlsTrust};

/// Path on targets named directly by host.
const DEFAULT_TARGET_PATH: &str = "/wsman";

/// Settings inherited by `[[target]]` entries and used for hosts named directly.
#[derive(Debug, Clone)]
pub struct TargetDefaults {
    /// Also decides the scheme of unlisted hosts: https when it [requires
    /// it](TargetAuth::requires_https), http otherwise.
    pub auth: TargetAuth,
    /// Port for `http://` targets and urls that name none.
    pub port: u16,
    /// Port for `https://` targets and urls that name none.
    pub https_port: u16,
    /// TLS towards unlisted https hosts: the system roots plus `[defaults] ca_file`.
    pub tls: TargetTls,
    pub connect_timeout: Duration,
    /// Per request; must exceed the WS-Man OperationTimeout clients send.
    pub timeout: Duration,
    /// The realm of `[kerberos]`, when there is one: Kerberos towards targets.
    pub kerberos: Option<Arc<KerberosRealm>>,
}

/// The domain the relay gets Kerberos tickets in for the callers (`[kerberos]`), and
/// the KDCs it asks.
#[derive(Debug)]
pub struct KerberosRealm {
    /// The realm (`LAB.TEST`) and its NetBIOS name: `LAB\alice` is `alice@LAB.TEST`.
    pub domain: Domain,
    pub kdc: KdcTransport,
}

/// How the relay gets a Kerberos ticket for a target.
#[derive(Debug, Clone)]
pub struct KerberosTarget {
    /// The service principal name the ticket is for (`HTTP/web01.lab.test`).
    pub spn: String,
    pub realm: Arc<KerberosRealm>,
}

impl KerberosTarget {
    /// For a target with auth `auth` at `host` (`ip` when it is an address): Kerberos
    /// for `kerberos` and `https-kerberos`, and for `negotiate` and `https-negotiate`
    /// when there is a realm and an SPN (as Windows, which uses NTLM towards an address).
    /// The SPN is `spn` when given, else `HTTP/<host>`; an address has none.
    pub fn choose(
        auth: TargetAuth,
        realm: Option<&Arc<KerberosRealm>>,
        spn: Option<&str>,
        host: &str,
        ip: Option<IpAddr>,
    ) -> Result<Option<KerberosTarget>, String> {
        let kerberos_only = auth.kerberos_only();
        if !kerberos_only && !matches!(auth, TargetAuth::Negotiate | TargetAuth::HttpsNegotiate) {
            return Ok(None);
        }
        let Some(realm) = realm else {
            return if kerberos_only {
                Err(format!(
                    "auth {:?} needs [kerberos] with its realm and kdc list",
                    auth.as_str()
                ))
            } else {
                Ok(None)
            };
        };
        let spn = match (spn, ip) {
            (Some(spn), _) => spn.to_string(),
            (None, None) => default_spn(host),
            (None, Some(_)) if kerberos_only => {
                return Err(format!(
                    "auth {:?} towards the address {host} needs an spn: an address has no service principal name",
                    auth.as_str()
                ))
            }
            (None, Some(_)) => return Ok(None),
        };
        Ok(Some(KerberosTarget {
            spn,
            realm: realm.clone(),
        }))
    }
}

/// The SPN WinRM clients ask tickets for by default: `HTTP/<host as in the url>`.
pub fn default_spn(host: &str) -> String {
    format!("HTTP/{host}")
}

/// Checks an `spn`: `service/host` with an optional `:port`, no realm, nothing blank.
pub fn validate_spn(spn: &str) -> Result<(), String> {
    let Some((service, host)) = spn.split_once('/') else {
        return Err(format!(
            "invalid spn {spn:?}: expected service/host, e.g. HTTP/web01.lab.test"
        ));
    };
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'@' && b != b'/');
    if !printable(service) || !printable(host) {
        return Err(format!(
            "invalid spn {spn:?}: expected service/host (no realm, spaces or further /), e.g. HTTP/web01.lab.test"
        ));
    }
    Ok(())
}

impl TargetDefaults {
    /// The port of a url without one: `port` for http, `https_port` for https.
    pub fn port_for(&self, https: bool) -> u16 {
        if https {
            self.https_port
        } else {
            self.port
        }
    }
}

/// How the relay authenticates to a target, which also fixes the url schemes it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAuth {
    /// `"negotiate"`: SPNEGO (NTLM inside) over HTTP, bodies sealed by SPNEGO.
    #[default]
    Negotiate,
    /// `"ntlm"`: NTLM over HTTP, bodies sealed by NTLM.
    Ntlm,
    /// `"https-negotiate"`: SPNEGO inside TLS, no message encryption, channel binding.
    HttpsNegotiate,
    /// `"https-ntlm"`: NTLM inside TLS, no message encryption, channel binding.
    HttpsNtlm,
    /// `"basic"`: the caller's user name and password in the header; HTTPS only.
    Basic,
    /// `"credssp"`: the relay is a CredSSP client delegating the caller's credentials
    /// onward; HTTP (CredSSP session encryption) or HTTPS.
    CredSsp,
    /// `"kerberos"`: SPNEGO with Kerberos only (never NTLM) over HTTP, bodies sealed with
    /// Kerberos wrap tokens.
    Kerberos,
    /// `"https-kerberos"`: SPNEGO with Kerberos only inside TLS, no message encryption,
    /// channel binding.
    HttpsKerberos,
}

impl TargetAuth {
    /// Every value, in the order the config reference lists them.
    pub const ALL: [TargetAuth; 8] = [
        TargetAuth::Negotiate,
        TargetAuth::Ntlm,
        TargetAuth::HttpsNegotiate,
        TargetAuth::HttpsNtlm,
        TargetAuth::Basic,
        TargetAuth::CredSsp,
        TargetAuth::Kerberos,
        TargetAuth::HttpsKerberos,
    ];

    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAuth::Negotiate => "negotiate",
            TargetAuth::Ntlm => "ntlm",
            TargetAuth::HttpsNegotiate => "https-negotiate",
            TargetAuth::HttpsNtlm => "https-ntlm",
            TargetAuth::Basic => "basic",
            TargetAuth::CredSsp => "credssp",
            TargetAuth::Kerberos => "kerberos",
            TargetAuth::HttpsKerberos => "https-kerberos",
        }
    }

    /// Kerberos and never NTLM: fails rather than fall back.
    pub fn kerberos_only(self) -> bool {
        matches!(self, TargetAuth::Kerberos | TargetAuth::HttpsKerberos)
    }

    /// Needs an `https://` url: it has no message encryption of its own.
    pub fn requires_https(self) -> bool {
        matches!(
            self,
            TargetAuth::HttpsNegotiate | TargetAuth::HttpsNtlm | TargetAuth::HttpsKerberos | TargetAuth::Basic
        )
    }

    /// Accepts an `https://` url. `negotiate` and `ntlm` do not: they seal messages
    /// themselves, which Windows does not expect inside TLS.
    pub fn allows_https(self) -> bool {
        self.requires_https() || self == TargetAuth::CredSsp
    }

    pub(crate) fn parse(s: &str) -> Option<TargetAuth> {
        TargetAuth::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Why a url of this scheme does not suit this auth, if it does not; `from` says
    /// where the auth came from when the target did not set it.
    pub(crate) fn scheme_problem(self, https: bool, from: &str) -> Option<String> {
        if !https && self.requires_https() {
            Some(format!(
                "auth {:?}{from} requires an https:// url (it has no message encryption of its own)",
                self.as_str()
            ))
        } else if https && !self.allows_https() {
            let instead = match self {
                TargetAuth::Ntlm => TargetAuth::HttpsNtlm,
                TargetAuth::Kerberos => TargetAuth::HttpsKerberos,
                _ => TargetAuth::HttpsNegotiate,
            };
            Some(format!(
                "auth {:?}{from} requires an http:// url (it encrypts messages itself); over https use auth = {:?}",
                self.as_str(),
                instead.as_str()
            ))
        } else {
            None
        }
    }
}

impl std::fmt::Display for TargetAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Alias used in `/wsman/<name>`.
    pub name: String,
    /// `http[s]://host:port/path`, normalized to carry the port.
    pub url: String,
    /// `url` taken apart once, at load, not per request; `None` only in a
    /// config that did not load.
    pub(crate) parsed_url: Option<TargetUrl>,
    pub auth: TargetAuth,
    /// Extra listener that always relays to this target (for clients that cannot set a path).
    pub listen: Option<SocketAddr>,
    /// How the certificate of an https target is checked, with the client configuration
    /// built from it; `None` for http urls.
    pub tls: Option<TargetTls>,
    /// Set when the relay authenticates to it with Kerberos (see [`KerberosTarget::choose`]).
    pub kerberos: Option<KerberosTarget>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// A target a request will be relayed to.
#[derive(Debug, Clone)]
pub struct ResolvedTarget {
    /// The alias, or `host[:port]` as the client gave it.
    pub name: String,
    /// The configured target this resolved to, if any.
    pub alias: Option<String>,
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP literal.
    pub ip: Option<IpAddr>,
    /// `http[s]://host:port/path`, IPv6 in brackets.
    pub url: String,
    /// The url's scheme is https.
    pub https: bool,
    pub auth: TargetAuth,
    /// The TLS configuration of an https target (`None` for http): built at load and
    /// shared by every connection to the target, so its TLS sessions resume.
    pub tls: Option<TargetTls>,
    /// Set when the relay authenticates with Kerberos, NTLM otherwise (for the auths that
    /// can use either).
    pub kerberos: Option<KerberosTarget>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid target {given:?}: {reason}")]
    Invalid { given: String, reason: String },
}

/// Resolves the path segment after `/wsman/` into a target.
///
/// Accepts an alias (case-insensitive), a host name, an IPv4 address or a bracketed IPv6
/// address, each with an optional `:port`; `%XX` escapes are decoded first. A host and
/// port that match a configured target's url resolve to that target, so rules on its
/// alias apply however the client names it; a host without a port also matches a
/// configured target on that host's default port for its scheme (5985/5986). Other hosts
/// get `defaults`: https when `defaults.auth` requires it, http otherwise. Names are not
/// looked up here: that happens once, when the relay connects.
pub fn resolve_target(
    targets: &[TargetConfig],
    defaults: &TargetDefaults,
    name: &str,
) -> Result<ResolvedTarget, ResolveError> {
    let invalid = |reason: String| ResolveError::Invalid {
        given: name.to_string(),
        reason,
    };
    let decoded = percent_decode(name).map_err(invalid)?;
    if decoded.is_empty() {
        return Err(invalid("empty target name".into()));
    }
    if let Some(t) = targets.iter().find(|t| t.name.eq_ignore_ascii_case(&decoded)) {
        return resolve_configured(t, defaults, t.name.clone()).map_err(invalid);
    }
    let hp = parse_host_port(&decoded).map_err(invalid)?;
    // Aliases shadow host names: "web01:5986" must not quietly mean a DNS lookup of
    // "web01" when web01 is configured to live elsewhere.
    if let Some(t) = targets.iter().find(|t| t.name.eq_ignore_ascii_case(&hp.host)) {
        return Err(invalid(format!(
            "{} is a configured target; name it without a port",
            t.name
        )));
    }
    let https = defaults.auth.requires_https();
    let port = hp.port.unwrap_or(defaults.port_for(https));
    let mut urls = Vec::with_capacity(targets.len());
    for t in targets {
        urls.push((t, parsed_url(t).map_err(&invalid)?));
    }
    let same_host = |u: &TargetUrl| u.host.same_host(&hp);
    // The port as given (or implied by defaults) first; then, for a bare host, a target
    // on its own scheme's default port ("web01" finds https://web01:5986).
    let found = urls
        .iter()
        .find(|(_, u)| same_host(u) && u.port_or(defaults.port_for(u.https)) == port)
        .or_else(|| {
            if hp.port.is_some() {
                return None;
            }
            urls.iter().find(|(_, u)| {
                let default = defaults.port_for(u.https);
                same_host(u) && u.port_or(default) == default
            })
        });
    if let Some((t, _)) = found {
        return resolve_configured(t, defaults, decoded).map_err(invalid);
    }
    let scheme = if https { "https" } else { "http" };
    let kerberos =
        KerberosTarget::choose(defaults.auth, defaults.kerberos.as_ref(), None, &hp.host, hp.ip).map_err(invalid)?;
    Ok(ResolvedTarget {
        name: decoded,
        alias: None,
        url: format!("{scheme}://{}:{port}{DEFAULT_TARGET_PATH}", url_host(&hp.host, hp.ip)),
        https,
        host: hp.host,
        port,
        ip: hp.ip,
        auth: defaults.auth,
        tls: https.then(|| defaults.tls.clone()),
        kerberos,
        connect_timeout: defaults.connect_timeout,
        timeout: defaults.timeout,
    })
}

/// A loaded config's targets have their url parsed already.
fn parsed_url(t: &TargetConfig) -> Result<&TargetUrl, String> {
    t.parsed_url
        .as_ref()
        .ok_or_else(|| format!("target {:?} has an invalid url {:?}", t.name, t.url))
}

fn resolve_configured(t: &TargetConfig, defaults: &TargetDefaults, name: String) -> Result<ResolvedTarget, String> {
    let url = parsed_url(t)?.clone();
    let default_port = defaults.port_for(url.https);
    Ok(ResolvedTarget {
        name,
        alias: Some(t.name.clone()),
        port: url.port_or(default_port),
        url: url.normalized(default_port),
        https: url.https,
        host: url.host.host,
        ip: url.host.ip,
        auth: t.auth,
        tls: t.tls.clone(),
        kerberos: t.kerberos.clone(),
        connect_timeout: t.connect_timeout,
        timeout: t.timeout,
    })
}

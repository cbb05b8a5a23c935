//! The TOML schema as written, with spans, and mapping of byte offsets to `line` + `key`.
//!
//! Values that need checking beyond their TOML type (addresses, ranges, names) stay
//! strings or `i64` here so validation can collect every problem with its position
//! instead of stopping at serde's first error.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::ConfigError;

/// A leaf as written; its type is checked by validation, not by serde.
pub(super) type V = Option<Spanned<Value>>;
/// A list whose entries are checked one by one.
pub(super) type List = Option<Spanned<Vec<Spanned<Value>>>>;

// No deny_unknown_fields: unknown keys are collected by `unknown_keys` instead of
// stopping serde at the first one.

#[derive(Deserialize)]
pub(super) struct RawConfig {
    pub listen: Option<RawListen>,
    pub auth: Option<RawAuth>,
    pub audit: Option<RawAudit>,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub target: Vec<RawTarget>,
    #[serde(default)]
    pub allow: Vec<RawAllow>,
    pub kerberos: Option<RawKerberos>,
    pub directory: Option<RawDirectory>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawListen {
    pub http: V,
    pub https: V,
    pub basic_auth: V,
    pub tls_cert: V,
    pub tls_key: V,
    pub max_envelope_size: V,
    pub max_header_size: V,
    pub header_read_timeout_secs: V,
    pub allow_sources: List,
}

#[derive(Deserialize, Default)]
pub(super) struct RawAuth {
    pub users_file: V,
    pub credssp_min_version: V,
    pub handshake_timeout_secs: V,
    pub logon_timeout_secs: V,
    pub lockout_threshold: V,
    pub lockout_window_secs: V,
    pub lockout_duration_secs: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawAudit {
    pub path: V,
    pub on_failure: V,
    pub hmac_key_file: V,
    pub transcripts: V,
    pub transcript_max_bytes: V,
    pub record_host_responses: V,
    pub syslog: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawMetrics {
    pub listen: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSession {
    pub idle_timeout_secs: V,
    pub max_lifetime_secs: V,
    pub shutdown_timeout_secs: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawLimits {
    pub max_sessions: V,
    pub max_sessions_per_user: V,
    pub max_shells_per_user: V,
    pub max_operations_per_user: V,
    pub max_unauthenticated_per_source: V,
    pub max_operation_timeout_secs: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawDefaults {
    pub auth: V,
    pub port: V,
    pub https_port: V,
    pub ca_file: V,
    pub tls_verify: V,
    pub allow_ntlm_only_delegation: V,
    pub connect_timeout_secs: V,
    pub timeout_secs: V,
}

#[derive(Deserialize)]
pub(super) struct RawTarget {
    pub name: V,
    pub url: V,
    pub auth: V,
    pub spn: V,
    pub listen: V,
    pub ca_file: V,
    pub tls_fingerprint: V,
    pub tls_verify: V,
    pub allow_ntlm_only_delegation: V,
    pub connect_timeout_secs: V,
    pub timeout_secs: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawKerberos {
    pub realm: V,
    pub netbios: V,
    pub kdc: List,
    pub keytab: V,
    pub delegation: V,
}

#[derive(Deserialize, Default)]
pub(super) struct RawDirectory {
    pub url: List,
    pub starttls: V,
    pub ca_file: V,
    pub bind_dn: V,
    pub bind_password_file: V,
}

#[derive(Deserialize)]
pub(super) struct RawAllow {
    pub users: List,
    pub groups: List,
    pub targets: List,
    pub shells: List,
    pub commands: List,
    pub cmdlets: List,
    pub methods: List,
    pub wmi_writes: V,
}

/// The keys of every table, with their spans.
type Keys = BTreeMap<Spanned<String>, IgnoredAny>;

#[derive(Deserialize)]
struct KeyInventory {
    #[serde(default)]
    listen: Keys,
    #[serde(default)]
    auth: Keys,
    #[serde(default)]
    audit: Keys,
    #[serde(default)]
    session: Keys,
    #[serde(default)]
    defaults: Keys,
    #[serde(default)]
    limits: Keys,
    #[serde(default)]
    metrics: Keys,
    #[serde(default)]
    target: Vec<Keys>,
    #[serde(default)]
    allow: Vec<Keys>,
    #[serde(default)]
    kerberos: Keys,
    #[serde(default)]
    directory: Keys,
}

const TOP: &[&str] = &[
    "listen",
    "auth",
    "audit",
    "session",
    "defaults",
    "limits",
    "metrics",
    "target",
    "allow",
    "kerberos",
    "directory",
];
const LISTEN: &[&str] = &[
    "http",
    "https",
    "basic_auth",
    "tls_cert",
    "tls_key",
    "max_envelope_size",
    "max_header_size",
    "header_read_timeout_secs",
    "allow_sources",
];
const AUTH: &[&str] = &[
    "users_file",
    "credssp_min_version",
    "handshake_timeout_secs",
    "logon_timeout_secs",
    "lockout_threshold",
    "lockout_window_secs",
    "lockout_duration_secs",
];
const AUDIT: &[&str] = &[
    "path",
    "on_failure",
    "hmac_key_file",
    "transcripts",
    "transcript_max_bytes",
    "record_host_responses",
    "syslog",
];
const METRICS: &[&str] = &["listen"];
const SESSION: &[&str] = &["idle_timeout_secs", "max_lifetime_secs", "shutdown_timeout_secs"];
const LIMITS: &[&str] = &[
    "max_sessions",
    "max_sessions_per_user",
    "max_shells_per_user",
    "max_operations_per_user",
    "max_unauthenticated_per_source",
    "max_operation_timeout_secs",
];
const DEFAULTS: &[&str] = &[
    "auth",
    "port",
    "https_port",
    "ca_file",
    "tls_verify",
    "allow_ntlm_only_delegation",
    "connect_timeout_secs",
    "timeout_secs",
];
const TARGET: &[&str] = &[
    "name",
    "url",
    "auth",
    "spn",
    "listen",
    "ca_file",
    "tls_fingerprint",
    "tls_verify",
    "allow_ntlm_only_delegation",
    "connect_timeout_secs",
    "timeout_secs",
];
const ALLOW: &[&str] = &[
    "users",
    "groups",
    "targets",
    "shells",
    "commands",
    "cmdlets",
    "methods",
    "wmi_writes",
];
const KERBEROS: &[&str] = &["realm", "netbios", "kdc", "keytab", "delegation"];
const DIRECTORY: &[&str] = &["url", "starttls", "ca_file", "bind_dn", "bind_password_file"];

/// Every key the schema does not know, as errors. Call after `RawConfig` parsed, so the
/// table shapes are known to be right.
pub(super) fn unknown_keys(loc: &Locator<'_>, src: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let (top, inv) = match (toml::from_str::<Keys>(src), toml::from_str::<KeyInventory>(src)) {
        (Ok(top), Ok(inv)) => (top, inv),
        (Err(e), _) | (_, Err(e)) => return vec![loc.toml_error(&e)],
    };
    let mut check = |keys: &Keys, table: &str, known: &[&str]| {
        for k in keys.keys().filter(|k| !known.contains(&k.get_ref().as_str())) {
            let key = if table.is_empty() {
                k.get_ref().clone()
            } else {
                format!("{table}.{}", k.get_ref())
            };
            errors.push(loc.error(
                k.span().start,
                key,
                format!("unknown key (expected one of: {})", known.join(", ")),
            ));
        }
    };
    check(&top, "", TOP);
    check(&inv.listen, "listen", LISTEN);
    check(&inv.auth, "auth", AUTH);
    check(&inv.audit, "audit", AUDIT);
    check(&inv.session, "session", SESSION);
    check(&inv.defaults, "defaults", DEFAULTS);
    check(&inv.limits, "limits", LIMITS);
    check(&inv.metrics, "metrics", METRICS);
    check(&inv.kerberos, "kerberos", KERBEROS);
    check(&inv.directory, "directory", DIRECTORY);
    for (i, t) in inv.target.iter().enumerate() {
        check(t, &format!("target[{i}]"), TARGET);
    }
    for (i, a) in inv.allow.iter().enumerate() {
        check(a, &format!("allow[{i}]"), ALLOW);
    }
    errors
}

/// TOML's name for a value's type, for "expected a string, found ..." messages.
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Turns byte offsets of one source text into `file:line: key` positions.
pub(super) struct Locator<'a> {
    path: &'a Path,
    src: &'a str,
}

impl<'a> Locator<'a> {
    pub fn new(path: &'a Path, src: &'a str) -> Self {
        Locator { path, src }
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    pub fn error(&self, offset: usize, key: String, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(offset),
            key,
            message,
        }
    }

    /// Offset of the `[name]` header, or of the `index`th `[[name]]` header, to point
    /// table-level problems somewhere useful (0 when there is none, e.g. inline tables).
    pub fn header_offset(&self, name: &str, index: Option<usize>) -> usize {
        let mut offset = 0;
        let mut seen = 0;
        for line in self.src.split_inclusive('\n') {
            if let Some((h, array)) = header(line) {
                if h == name && array == index.is_some() {
                    if index.is_none_or(|i| i == seen) {
                        return offset;
                    }
                    seen += 1;
                }
            }
            offset += line.len();
        }
        0
    }

    /// Maps a serde/TOML error; the key is recovered from the text around its span.
    pub fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(Range { start: 0, end: 0 });
        let key = self.key_at(span.start);
        self.error(span.start, key, e.message().trim_end().to_string())
    }

    /// Best-effort dotted key (`allow[0].users`) for the line holding `offset`: the
    /// nearest table header above it plus the nearest `key =` between the two.
    fn key_at(&self, offset: usize) -> String {
        let mut table = String::new();
        let mut arrays: Vec<(String, usize)> = Vec::new();
        let mut key: Option<String> = None;
        let mut pos = 0;
        for line in self.src.split_inclusive('\n') {
            if pos > offset {
                break;
            }
            pos += line.len();
            if let Some((name, array)) = header(line) {
                key = None;
                table = if array {
                    let n = match arrays.iter_mut().find(|(a, _)| *a == name) {
                        Some((_, n)) => {
                            *n += 1;
                            *n
                        }
                        None => {
                            arrays.push((name.to_string(), 0));
                            0
                        }
                    };
                    format!("{name}[{n}]")
                } else {
                    name.to_string()
                };
            } else if let Some(k) = key_of(line) {
                key = Some(k.to_string());
            }
        }
        match (table.is_empty(), key) {
            (_, None) => table,
            (true, Some(k)) => k,
            (false, Some(k)) => format!("{table}.{k}"),
        }
    }
}

/// `[name]` -> (name, false), `[[name]]` -> (name, true).
fn header(line: &str) -> Option<(&str, bool)> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (inner, array) = match line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        Some(inner) => (inner, true),
        None => (line.strip_prefix('[')?.strip_suffix(']')?, false),
    };
    let inner = inner.trim();
    let bare = !inner.is_empty()
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    bare.then_some((inner, array))
}

/// The bare key of a `key = value` line.
fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    bare.then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_tracks_tables_and_arrays() {
        let src = "a = 1\n[listen]\nhttp = \"x\"\n[[allow]]\nusers = [\n 'x',\n]\n[[allow]] # two\nusers = []\n";
        let loc = Locator::new(Path::new("f"), src);
        let at = |needle: &str| loc.key_at(src.find(needle).unwrap());
        assert_eq!(at("a ="), "a");
        assert_eq!(at("\"x\""), "listen.http");
        assert_eq!(at("'x'"), "allow[0].users");
        assert_eq!(at("users = []"), "allow[1].users");
        assert_eq!(at("[[allow]] #"), "allow[1]");
        assert_eq!(loc.line_of(src.find("'x'").unwrap()), 6);
        assert_eq!(loc.header_offset("listen", None), 6);
        assert_eq!(loc.header_offset("allow", Some(1)), src.find("[[allow]] #").unwrap());
        assert_eq!(loc.header_offset("nope", None), 0);
    }
}

//! The TOML schema as written, with spans, and mapping of byte offsets to `line` + `key`.
//!
//! Values that need checking beyond their TOML type (addresses, ranges, names) stay
//! strings or `i64` here so validation can collect every problem with its position
//! instead of stopping at serde's first error.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

type Str = Spanned<String>;
type Int = Option<Spanned<i64>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: RawListen,
    pub auth: RawAuth,
    pub audit: RawAudit,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub target: Vec<RawTarget>,
    #[serde(default)]
    pub allow: Vec<RawAllow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub http: Option<Str>,
    pub tls_cert: Str,
    pub tls_key: Str,
    pub max_envelope_size: Int,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub users_file: Str,
    pub credssp_min_version: Int,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub path: Str,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    pub idle_timeout_secs: Int,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub auth: Option<Str>,
    pub port: Int,
    pub connect_timeout_secs: Int,
    pub timeout_secs: Int,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub name: Str,
    pub url: Str,
    pub auth: Option<Str>,
    pub listen: Option<Str>,
    pub connect_timeout_secs: Int,
    pub timeout_secs: Int,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    pub users: Spanned<Vec<Str>>,
    pub targets: Spanned<Vec<Str>>,
    pub shells: Option<Spanned<Vec<Str>>>,
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

    /// Offset of the `[name]` header, to point table-level problems somewhere useful.
    pub fn header_offset(&self, name: &str) -> usize {
        let mut offset = 0;
        for line in self.src.split_inclusive('\n') {
            if header(line).is_some_and(|(h, array)| !array && h == name) {
                return offset;
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
    let bare = !k.is_empty()
        && k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
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
        assert_eq!(loc.header_offset("listen"), 6);
    }
}

//! The validator: typed checks of single values that report `file:line: key: message`
//! and go on, so that one run finds every problem. The sections are built from these
//! in `sections` (listen, auth, audit, session, limits, allow) and `targets`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::{Spanned, Value};

use super::raw::{self, Locator};
use super::ConfigError;

/// Durations are whole seconds up to a day.
const MAX_SECS: i64 = 86_400;

/// Collects every validation problem while building the typed config.
pub(super) struct Validator<'a> {
    pub loc: &'a Locator<'a>,
    pub errors: Vec<ConfigError>,
}

pub(super) type Span = std::ops::Range<usize>;

/// Listeners declared so far, across `[listen]` and the targets' `listen` keys.
#[derive(Default)]
pub(super) struct Listeners {
    /// Declared, valid or not: a bad address is not also "no listener".
    pub declared: usize,
    /// Each valid address with where it was declared, to report clashes at the later one.
    pub bound: Vec<(SocketAddr, String)>,
}

impl<'a> Validator<'a> {
    pub fn new(loc: &'a Locator<'a>, errors: Vec<ConfigError>) -> Self {
        Validator { loc, errors }
    }
}

impl Validator<'_> {
    pub fn error(&mut self, span: Span, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(self.loc.error(span.start, key.into(), message.into()));
    }

    pub fn wrong_type(&mut self, v: &Spanned<Value>, key: &str, expected: &str) {
        let found = raw::type_name(v.get_ref());
        self.error(v.span(), key, format!("expected {expected}, found {found}"));
    }

    pub fn string(&mut self, v: raw::V, key: &str) -> Option<Spanned<String>> {
        let v = v?;
        match v.get_ref() {
            Value::String(s) => Some(Spanned::new(v.span(), s.clone())),
            _ => {
                self.wrong_type(&v, key, "a string");
                None
            }
        }
    }

    pub fn integer(&mut self, v: raw::V, key: &str) -> Option<Spanned<i64>> {
        let v = v?;
        match v.get_ref() {
            Value::Integer(i) => Some(Spanned::new(v.span(), *i)),
            _ => {
                self.wrong_type(&v, key, "an integer");
                None
            }
        }
    }

    pub fn boolean(&mut self, v: raw::V, key: &str) -> Option<Spanned<bool>> {
        let v = v?;
        match v.get_ref() {
            Value::Boolean(b) => Some(Spanned::new(v.span(), *b)),
            _ => {
                self.wrong_type(&v, key, "a boolean");
                None
            }
        }
    }

    /// A required key; `table_at` is where its table starts, `None` when the whole table
    /// is missing (reported once, not per key).
    pub fn required(&mut self, v: raw::V, key: &str, table_at: Option<usize>) -> Option<Spanned<String>> {
        if v.is_none() {
            if let Some(at) = table_at {
                self.error(at..at, key, "required key is missing");
            }
            return None;
        }
        self.string(v, key)
    }

    /// Where a required table starts; reports it when missing.
    pub fn table_at(&mut self, present: bool, name: &str) -> Option<usize> {
        if present {
            Some(self.loc.header_offset(name, None))
        } else {
            self.error(0..0, name, format!("missing [{name}] table"));
            None
        }
    }

    pub fn path(&mut self, v: Option<Spanned<String>>, key: &str) -> PathBuf {
        let Some(v) = v else { return PathBuf::new() };
        if v.get_ref().is_empty() {
            self.error(v.span(), key, "must not be empty");
        }
        PathBuf::from(v.into_inner())
    }

    pub fn socket_addr(&mut self, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
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

    pub fn int(&mut self, v: raw::V, key: &str, range: std::ops::RangeInclusive<i64>, default: i64) -> i64 {
        match self.integer(v, key) {
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

    pub fn secs(&mut self, v: raw::V, key: &str, default: Duration) -> Duration {
        let default_secs = i64::try_from(default.as_secs()).unwrap_or(MAX_SECS);
        Duration::from_secs(self.int(v, key, 1..=MAX_SECS, default_secs).unsigned_abs())
    }

    /// An optional list of CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn cidr_list(&mut self, v: raw::List, key: &str) -> Vec<ipnet::IpNet> {
        let Some(v) = v else { return Vec::new() };
        let mut out = Vec::new();
        for entry in v.into_inner() {
            let Value::String(s) = entry.get_ref() else {
                self.wrong_type(&entry, key, "a string");
                continue;
            };
            let parsed = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.error(
                    entry.span(),
                    key,
                    format!("invalid network {s:?} (expected a CIDR like 10.0.0.0/8 or an address)"),
                ),
            }
        }
        out
    }

    pub fn check_listener_clash(
        &mut self,
        listeners: &[(SocketAddr, String)],
        addr: SocketAddr,
        span: Span,
        key: &str,
    ) {
        // 0.0.0.0:p and 127.0.0.1:p cannot both be bound either.
        let clash = listeners.iter().find(|(a, _)| {
            a.port() == addr.port() && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
        });
        if let Some((other, other_key)) = clash {
            self.error(
                span,
                key,
                format!("listen address {addr} clashes with {other_key} ({other})"),
            );
        }
    }

    /// Parses a list of strings entry by entry with `parse`.
    pub fn list<T>(
        &mut self,
        v: raw::List,
        key: &str,
        table_at: usize,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(v) = v else {
            self.error(table_at..table_at, key, "required key is missing");
            return Vec::new();
        };
        if v.get_ref().is_empty() {
            self.error(v.span(), key, "must not be empty");
        }
        let mut out = Vec::new();
        for entry in v.into_inner() {
            let Value::String(s) = entry.get_ref() else {
                self.wrong_type(&entry, key, "a string");
                continue;
            };
            match parse(s) {
                Ok(parsed) => out.push(parsed),
                Err(m) => self.error(entry.span(), key, m),
            }
        }
        out
    }
}

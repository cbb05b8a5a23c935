//! Host names, `host[:port]` segments and target URLs.
//!
//! Shared by config validation (target names and urls), allow-rule parsing (host names in
//! `targets`) and request-time target resolution, so that what `check` accepts is exactly
//! what a request can name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed `host[:port]`, with the brackets of an IPv6 literal removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub host: String,
    pub port: Option<u16>,
    /// Set when the host is an IP literal.
    pub ip: Option<IpAddr>,
}

impl HostPort {
    /// True when both name the same host (names compare case-insensitively, IPs by value).
    pub fn same_host(&self, other: &HostPort) -> bool {
        match (self.ip, other.ip) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.host.eq_ignore_ascii_case(&other.host),
            _ => false,
        }
    }
}

/// The host as it must appear in a URL authority (IPv6 in brackets).
pub(crate) fn url_host(host: &str, ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    }
}

/// Parses `host`, `host:port`, `1.2.3.4[:port]` or `[v6][:port]`.
pub(crate) fn parse_host_port(s: &str) -> Result<HostPort, String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("missing ] after IPv6 address".into());
        };
        let v6: Ipv6Addr = inside.parse().map_err(|_| format!("invalid IPv6 address {inside:?}"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None => return Err(format!("unexpected {after:?} after IPv6 address")),
            },
        };
        return Ok(HostPort {
            host: v6.to_string(),
            port,
            ip: Some(IpAddr::V6(v6)),
        });
    }
    let (host, port) = match s.matches(':').count() {
        0 => (s, None),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            (h, Some(parse_port(p)?))
        }
        // An unbracketed IPv6 literal is ambiguous once a port may follow.
        _ => return Err("IPv6 addresses must be in brackets, e.g. [fe80::1]:5985".into()),
    };
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Ok(HostPort {
            host: v4.to_string(),
            port,
            ip: Some(IpAddr::V4(v4)),
        });
    }
    validate_hostname(host)?;
    Ok(HostPort {
        host: host.to_string(),
        port,
        ip: None,
    })
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {p:?} (1-65535)")),
        Ok(port) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        Ok(_) => Err(format!("invalid port {p:?} (1-65535)")),
    }
}

/// Checks a DNS-style host name: dot-separated labels of letters, digits, `-` and `_`.
pub(crate) fn validate_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host name".into());
    }
    if host.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(format!("invalid host name {host:?}: empty label"));
        }
        if label.len() > 63 {
            return Err(format!("invalid host name {host:?}: label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "invalid host name {host:?}: only letters, digits, '-', '_' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "invalid host name {host:?}: a label cannot start or end with '-'"
            ));
        }
    }
    // The resolver would turn "127.1" or "0x7f.1" into an address that CIDR rules never
    // saw as one; refuse names that only look like a malformed address.
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"))
        && last.len() > 2
        && last[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err(format!("{host:?} is neither a host name nor a valid IPv4 address"));
    }
    Ok(())
}

/// A parsed `http[s]://host[:port]/path` target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetUrl {
    /// The scheme is `https`.
    pub https: bool,
    pub host: HostPort,
    pub path: String,
}

impl TargetUrl {
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// The port, or `default_port` when the url names none (the caller picks the default
    /// for [`TargetUrl::https`]).
    pub fn port_or(&self, default_port: u16) -> u16 {
        self.host.port.unwrap_or(default_port)
    }

    /// The URL with a lower-case scheme and an explicit port, as the relay will address
    /// the target.
    pub fn normalized(&self, default_port: u16) -> String {
        format!(
            "{}://{}:{}{}",
            self.scheme(),
            url_host(&self.host.host, self.host.ip),
            self.port_or(default_port),
            self.path
        )
    }
}

/// Parses an `http://` or `https://` target url; whether the scheme suits the target's
/// authentication is checked by the caller.
pub(crate) fn parse_target_url(s: &str) -> Result<TargetUrl, String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err("expected an absolute url like http://host:5985/wsman or https://host:5986/wsman".into());
    };
    let https = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(format!("scheme must be http or https (got {scheme:?})"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => {
            return Err(format!(
                "missing path, e.g. {}://host/wsman",
                scheme.to_ascii_lowercase()
            ))
        }
    };
    if authority.contains('@') {
        return Err("credentials in the url are not allowed".into());
    }
    if path.contains(['?', '#']) {
        return Err("query strings and fragments are not allowed".into());
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the path contains spaces or control characters".into());
    }
    Ok(TargetUrl {
        https,
        host: parse_host_port(authority)?,
        path: path.to_string(),
    })
}

/// Decodes `%XX` escapes (clients may send `%5B::1%5D`); refuses broken escapes.
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid %-escape".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "escaped bytes are not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let h = parse_host_port("web01.lab.local").unwrap();
        assert_eq!((h.host.as_str(), h.port, h.ip), ("web01.lab.local", None, None));
        let h = parse_host_port("10.0.0.5:5986").unwrap();
        assert_eq!(h.port, Some(5986));
        assert_eq!(h.ip, Some("10.0.0.5".parse().unwrap()));
        let h = parse_host_port("[fe80::1]:5985").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("fe80::1", Some(5985)));
        assert!(parse_host_port("[::1]").unwrap().port.is_none());
    }

    #[test]
    fn host_port_rejects() {
        for bad in [
            "",
            "fe80::1",
            "[::1",
            "[::1]x",
            "web01:0",
            "web01:65536",
            "web01:+80",
            "a..b",
            "-a.b",
            "a b",
            "web01:",
            "127.1",
            "10.0.0.256",
            "0x7f.1",
            "host/x",
            "a@b",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn url_parse_and_normalize() {
        let u = parse_target_url("http://127.0.0.21/wsman").unwrap();
        assert!(!u.https);
        assert_eq!(u.normalized(5985), "http://127.0.0.21:5985/wsman");
        let u = parse_target_url("HTTP://[::1]:8080/wsman").unwrap();
        assert_eq!(u.normalized(5985), "http://[::1]:8080/wsman");
        let u = parse_target_url("HTTPS://web01.lab.local/wsman").unwrap();
        assert!(u.https);
        assert_eq!(u.port_or(5986), 5986);
        assert_eq!(u.normalized(5986), "https://web01.lab.local:5986/wsman");
        let u = parse_target_url("https://[fd00::1]:443/custom").unwrap();
        assert_eq!(
            (u.https, u.normalized(5986)),
            (true, "https://[fd00::1]:443/custom".into())
        );
        for bad in [
            "web01:5985/wsman",
            "http://web01:5985",
            "https://web01",
            "http://u:p@web01/wsman",
            "https://u@web01/wsman",
            "http://web01/wsman?x=1",
            "https://web01/wsman#x",
            "ftp://web01/wsman",
            "httpss://web01/wsman",
        ] {
            assert!(parse_target_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_target_url("ftp://w/wsman").unwrap_err().contains("http or https"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%5B::1%5D:5985").unwrap(), "[::1]:5985");
        assert_eq!(percent_decode("web01").unwrap(), "web01");
        assert!(percent_decode("%5").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }
}

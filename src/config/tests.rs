//! Tests of the whole config: schema, defaults, every section and its messages.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::policy;
use crate::resolve::{CaFile, Fingerprint, TargetAuth, TargetTls, TlsTrust};

/// A `[kerberos]` section, for configs with Kerberos targets.
const KERBEROS: &str = "[kerberos]\nrealm = \"LAB.TEST\"\nnetbios = \"LAB\"\nkdc = [\"tcp://127.0.0.100:88\"]\n";

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

/// Any SHA-256 fingerprint, for configs that pin one.
const PIN_HEX: &str = "5A0F3C2B9E8D7A6B5C4D3E2F1A0B9C8D7E6F5A4B3C2D1E0F9A8B7C6D5E4F3A2B";

/// The `ca_file` a target trusts (besides the system roots), if any.
fn ca_of(tls: Option<&TargetTls>) -> Option<&Path> {
    match tls?.trust() {
        TlsTrust::Roots(Some(ca)) => Some(ca.path()),
        _ => None,
    }
}

#[test]
fn example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.example.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.http, Some("127.0.0.1:5985".parse().unwrap()));
    assert_eq!((c.listen.https, c.listen.basic_over_https), (None, true));
    assert_eq!(
        (c.defaults.port, c.defaults.https_port, ca_of(Some(&c.defaults.tls))),
        (5985, 5986, None)
    );
    assert_eq!(c.targets.len(), 1);
    assert!(c.targets[0].tls.is_none());
    assert_eq!(c.targets[0].listen, Some("127.0.0.1:15001".parse().unwrap()));
    assert_eq!(c.policy.rule_count(), 1);
}

#[test]
fn lifecycle_keys_parse_and_default() {
    let c = parse("").unwrap();
    assert_eq!(c.auth.logon_timeout, c.auth.handshake_timeout);
    assert_eq!(c.session.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_unauthenticated_per_source, 16);
    let text = MINIMAL.replace("[auth]", "[auth]\nhandshake_timeout_secs = 20")
        + "[limits]\nmax_unauthenticated_per_source = 4\n[session]\nshutdown_timeout_secs = 3\n";
    let c = Config::parse(Path::new("relay.toml"), &text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.auth.logon_timeout, Duration::from_secs(20));
    assert_eq!(c.session.shutdown_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.max_unauthenticated_per_source, 4);
    let text = MINIMAL.replace("[auth]", "[auth]\nlogon_timeout_secs = 7");
    let c = Config::parse(Path::new("relay.toml"), &text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.auth.logon_timeout, Duration::from_secs(7));
    assert!(errors("[limits]\nmax_unauthenticated_per_source = 0\n")[0].contains("max_unauthenticated_per_source"));
}

#[test]
fn syslog_targets_parse_and_bad_ones_say_why() {
    assert_eq!(
        SyslogTarget::parse("udp://127.0.0.1:514"),
        Ok(SyslogTarget::Udp("127.0.0.1:514".into()))
    );
    assert_eq!(
        SyslogTarget::parse("tcp://logs.lab.local:6514"),
        Ok(SyslogTarget::Tcp("logs.lab.local:6514".into()))
    );
    assert_eq!(
        SyslogTarget::parse("tcp://[::1]:514"),
        Ok(SyslogTarget::Tcp("[::1]:514".into()))
    );
    assert_eq!(
        SyslogTarget::parse("unix:///dev/log"),
        Ok(SyslogTarget::Unix("/dev/log".into()))
    );
    for bad in [
        "udp://host",
        "udp://:514",
        "tcp://host:0",
        "tcp://host:99999",
        "tcp://host:514/x",
        "http://host:514",
        "unix://dev/log",
        "/dev/log",
    ] {
        let e = SyslogTarget::parse(bad).unwrap_err();
        assert!(e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn audit_on_failure_defaults_to_refuse() {
    assert_eq!(parse("").unwrap().audit.on_failure, AuditOnFailure::Refuse);
    let c = parse("on_failure = \"continue\"\n").unwrap();
    assert_eq!(c.audit.on_failure, AuditOnFailure::Continue);
    assert_eq!(
        errors("on_failure = \"ignore\"\n"),
        ["relay.toml:12: audit.on_failure: unknown value \"ignore\" (expected one of: \"refuse\", \"continue\")"]
    );
    assert_eq!(
        errors("on_failure = false\n"),
        ["relay.toml:12: audit.on_failure: expected a string, found a boolean"]
    );
}

#[test]
fn audit_integrity_transcript_and_export_keys_parse_and_default() {
    let c = parse("").unwrap();
    assert_eq!(
        (&c.audit.hmac_key_file, &c.audit.transcripts, &c.audit.syslog),
        (&None, &None, &None)
    );
    assert_eq!(c.audit.transcript_max_bytes, DEFAULT_TRANSCRIPT_MAX_BYTES);
    assert!(!c.audit.record_host_responses);
    assert_eq!(c.metrics.listen, None);
    let c = parse(
        "hmac_key_file = \"audit.key\"\ntranscripts = \"transcripts\"\ntranscript_max_bytes = 65536\n\
         record_host_responses = true\nsyslog = \"tcp://127.0.0.1:6514\"\n[metrics]\nlisten = \"127.0.0.1:9985\"\n",
    )
    .unwrap();
    assert_eq!(c.audit.hmac_key_file.as_deref(), Some(Path::new("audit.key")));
    assert_eq!(c.audit.transcripts.as_deref(), Some(Path::new("transcripts")));
    assert_eq!(c.audit.transcript_max_bytes, 65536);
    assert!(c.audit.record_host_responses);
    assert_eq!(c.audit.syslog, Some(SyslogTarget::Tcp("127.0.0.1:6514".into())));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9985".parse().unwrap()));
    assert_eq!(
        errors("transcript_max_bytes = 10\nsyslog = \"http://x:1\"\ntranscripts = \"\"\n[metrics]\nlisten = \"127.0.0.1:5985\"\n"),
        [
            "relay.toml:12: audit.transcript_max_bytes: 10 is out of range 4096..=1073741824",
            "relay.toml:13: audit.syslog: \"http://x:1\": expected udp://host:port, tcp://host:port or unix:///path",
            "relay.toml:14: audit.transcripts: must not be empty",
            "relay.toml:16: metrics.listen: listen address 127.0.0.1:5985 clashes with listen.http (127.0.0.1:5985)",
        ]
    );
    assert_eq!(
        errors("[metrics]\nlisten = \"nowhere\"\nport = 1\n"),
        [
            "relay.toml:13: metrics.listen: invalid socket address \"nowhere\" (expected ip:port)",
            "relay.toml:14: metrics.port: unknown key (expected one of: listen)",
        ]
    );
}

#[test]
fn hardening_keys_parse_and_default() {
    let c = parse("").unwrap();
    assert!(c.listen.allow_sources.is_empty());
    assert_eq!(c.session.max_lifetime, Duration::from_secs(8 * 3600));
    assert_eq!(c.auth.lockout_threshold, 5);
    assert_eq!(c.limits.max_shells_per_user, 30);
    let text = MINIMAL.replace(
        "[auth]",
        "allow_sources = [\"127.0.0.0/8\", \"::1\"]\nheader_read_timeout_secs = 5\n[auth]\nlockout_threshold = 0",
    ) + "[limits]\nmax_sessions = 2\n[session]\nmax_lifetime_secs = 60\n";
    let c = Config::parse(Path::new("relay.toml"), &text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.listen.allow_sources.len(), 2);
    assert!(c.listen.allow_sources[0].contains(&"127.0.0.9".parse::<IpAddr>().unwrap()));
    assert_eq!(c.listen.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.auth.lockout_threshold, 0);
    assert_eq!(c.limits.max_sessions, 2);
    assert_eq!(c.session.max_lifetime, Duration::from_secs(60));
    let bad = MINIMAL.replace("[auth]", "allow_sources = [\"10.0.0.0/33\"]\n[auth]");
    let errs: Vec<String> = Config::parse(Path::new("relay.toml"), &bad)
        .expect_err("bad CIDR accepted")
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errs[0].starts_with("relay.toml:7: listen.allow_sources: invalid network"),
        "{errs:?}"
    );
}

#[test]
fn operation_timeout_maximum_defaults_to_winrm_and_is_range_checked() {
    assert_eq!(parse("").unwrap().limits.max_operation_timeout, Duration::from_secs(60));
    let c = parse("[limits]\nmax_operation_timeout_secs = 300\n").unwrap();
    assert_eq!(c.limits.max_operation_timeout, Duration::from_secs(300));
    assert_eq!(
        errors("[limits]\nmax_operation_timeout_secs = 0\n"),
        ["relay.toml:13: limits.max_operation_timeout_secs: 0 is out of range 1..=86400"]
    );
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
    // A rule without shells grants cmd and PowerShell.
    let web01 = c.resolve_target("web01").unwrap();
    let decide = |uri| c.policy.decide("LAB\\alice", &web01, &[], Some(uri));
    assert!(decide(policy::CMD_URI).is_allowed());
    assert!(decide("http://schemas.microsoft.com/powershell/Microsoft.PowerShell").is_allowed());
    assert!(!decide("http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service").is_allowed());
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
auth = "digest"
timeout_secs = 0
[[allow]]
users = []
targets = ["10.0.0.0/40", "web[1"]
shells = ["bash"]
"#,
    );
    let expect = [
        "relay.toml:14: defaults.port: 0 is out of range 1..=65535",
        "relay.toml:17: target[0].url: \"https://web01/wsman\": auth \"negotiate\" (from defaults.auth) requires an http:// url",
        "relay.toml:18: target[0].listen: listen address 127.0.0.1:5985 clashes with listen.http",
        "relay.toml:20: target[1].name: duplicate target name \"WEB01\" (also target[0])",
        "relay.toml:22: target[1].auth: unknown auth \"digest\"",
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
fn schema_errors_carry_line_and_key() {
    let errs = errors("[session]\nidle_timeout = 5\n");
    assert_eq!(
        errs,
        ["relay.toml:13: session.idle_timeout: unknown key (expected one of: idle_timeout_secs, max_lifetime_secs, shutdown_timeout_secs)"]
    );
    let errs = errors("[session]\nidle_timeout_secs = \"5\"\n");
    assert_eq!(
        errs,
        ["relay.toml:13: session.idle_timeout_secs: expected an integer, found a string"]
    );
    let errs = errors("[[allow]]\nusers = [\n  'LAB\\a',\n  5,\n]\ntargets = ['x']\n");
    assert_eq!(
        errs,
        ["relay.toml:15: allow[0].users: expected a string, found an integer"]
    );
    let errs = errors("[[target]]\nname = \"a\"\n");
    assert_eq!(errs, ["relay.toml:12: target[0].url: required key is missing"]);
    let errs = errors("[[allow]]\n[[allow]]\nusers = ['LAB\\a']\n");
    assert_eq!(
        errs,
        [
            "relay.toml:12: allow[0].users: required key is missing",
            "relay.toml:12: allow[0].targets: required key is missing",
            "relay.toml:13: allow[1].targets: required key is missing",
        ]
    );
    // Syntax errors stop parsing; they still say where.
    let errs = errors("listen = 3 = 4\n");
    assert!(errs[0].starts_with("relay.toml:12: "), "{errs:?}");
    // A table of the wrong shape cannot be checked further.
    let errs = errors("[allow]\nusers = []\n");
    assert!(errs[0].starts_with("relay.toml:12: allow: invalid type"), "{errs:?}");
}

#[test]
fn unknown_keys_are_all_reported_with_other_problems() {
    let errs = errors(
        "verbose = true\n[defaults]\nport = 0\nretries = 3\n\
         [[target]]\nname = \"w\"\nurl = \"http://w/wsman\"\nuser = \"x\"\n",
    );
    assert_eq!(
        errs,
        [
            "relay.toml:12: audit.verbose: unknown key (expected one of: path, on_failure, hmac_key_file, transcripts, transcript_max_bytes, record_host_responses, syslog)",
            "relay.toml:14: defaults.port: 0 is out of range 1..=65535",
            "relay.toml:15: defaults.retries: unknown key (expected one of: auth, port, https_port, ca_file, tls_verify, allow_ntlm_only_delegation, connect_timeout_secs, timeout_secs)",
            "relay.toml:19: target[0].user: unknown key (expected one of: name, url, auth, spn, listen, ca_file, tls_fingerprint, tls_verify, allow_ntlm_only_delegation, connect_timeout_secs, timeout_secs)",
        ]
    );
    let top = format!("verbose = true\n{MINIMAL}");
    let e = Config::parse(Path::new("r.toml"), &top).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "r.toml:1: verbose: unknown key (expected one of: listen, auth, audit, session, defaults, limits, metrics, target, allow, kerberos, directory)"
    );
}

#[test]
fn missing_tables_are_reported_once() {
    let e = Config::parse(Path::new("r.toml"), "[listen]\nhttp = \"127.0.0.1:1\"\n").unwrap_err();
    let e: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        e,
        [
            "r.toml:1: listen.tls_cert: required key is missing",
            "r.toml:1: listen.tls_key: required key is missing",
            "r.toml:1: auth: missing [auth] table",
            "r.toml:1: audit: missing [audit] table",
        ]
    );
}

#[test]
fn a_listener_is_required() {
    let src = MINIMAL.replace("http = \"127.0.0.1:5985\"\n", "");
    let e = Config::parse(Path::new("r.toml"), &src).unwrap_err();
    assert!(e[0].to_string().contains("no listener"), "{}", e[0]);
    let ok = format!("{src}[[target]]\nname = \"w\"\nurl = \"http://w/wsman\"\nlisten = \"127.0.0.1:15001\"\n");
    let c = Config::parse(Path::new("r.toml"), &ok).unwrap();
    assert_eq!(c.targets[0].listen, Some("127.0.0.1:15001".parse().unwrap()));
}

#[test]
fn unspecified_listeners_clash_on_port() {
    let errs = errors("[[target]]\nname = \"w\"\nurl = \"http://w/wsman\"\nlisten = \"0.0.0.0:5985\"\n");
    assert!(errs[0].contains("clashes with listen.http"), "{errs:?}");
}

#[test]
fn target_names_must_be_hostlike() {
    for bad in ["", "web 01", "10.0.0.1", "web/01", "a:b"] {
        let errs = errors(&format!("[[target]]\nname = {bad:?}\nurl = \"http://w/wsman\"\n"));
        assert!(errs[0].contains("target[0].name"), "{bad:?}: {errs:?}");
    }
}

#[test]
fn duplicate_target_addresses_are_refused() {
    let errs = errors(
        "[[target]]\nname = \"a\"\nurl = \"http://W:5985/wsman\"\n\
         [[target]]\nname = \"b\"\nurl = \"http://w/other\"\n",
    );
    assert!(
        errs[0].contains("target \"a\" already uses this host and port"),
        "{errs:?}"
    );
}

#[test]
fn credssp_version_range() {
    assert!(parse("").is_ok());
    let src = MINIMAL.replace(
        "users_file = \"config/users\"",
        "users_file = \"u\"\ncredssp_min_version = 7",
    );
    let e = Config::parse(Path::new("r.toml"), &src).unwrap_err();
    assert!(e[0]
        .to_string()
        .contains("auth.credssp_min_version: 7 is out of range 2..=6"));
    let src = MINIMAL.replace(
        "users_file = \"config/users\"",
        "users_file = \"u\"\ncredssp_min_version = 2",
    );
    assert_eq!(
        Config::parse(Path::new("r.toml"), &src)
            .unwrap()
            .auth
            .credssp_min_version,
        2
    );
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
    assert_eq!(
        (t.name.as_str(), t.alias.as_deref()),
        ("127.0.0.21:5985", Some("web01"))
    );
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
    for bad in ["", "a/b", "::1", "127.1", "web01:0", "%zz", "x y", "web01:5985", "V6:1"] {
        assert!(c.resolve_target(bad).is_err(), "{bad:?} resolved");
    }
}

#[test]
fn unreadable_file_is_reported() {
    let e = Config::load(Path::new("/nonexistent/relay.toml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/relay.toml: cannot read config"));
}

/// A PEM CA certificate file in `dir`.
fn ca_pem(dir: &Path) -> PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["lab-ca".into()]).expect("cert");
    let path = dir.join("ca.pem");
    std::fs::write(&path, cert.cert.pem()).expect("write ca");
    path
}

#[test]
fn every_target_auth_parses_with_a_suitable_scheme() {
    let cases = [
        ("negotiate", "http", TargetAuth::Negotiate),
        ("ntlm", "http", TargetAuth::Ntlm),
        ("https-negotiate", "https", TargetAuth::HttpsNegotiate),
        ("https-ntlm", "https", TargetAuth::HttpsNtlm),
        ("basic", "https", TargetAuth::Basic),
        ("credssp", "http", TargetAuth::CredSsp),
        ("credssp", "https", TargetAuth::CredSsp),
        ("kerberos", "http", TargetAuth::Kerberos),
        ("https-kerberos", "https", TargetAuth::HttpsKerberos),
    ];
    for (value, scheme, want) in cases {
        // credssp's unlisted hosts are reached over http://: the opt-in is inherited.
        let opt_in = if want == TargetAuth::CredSsp {
            "allow_ntlm_only_delegation = true\n"
        } else {
            ""
        };
        let c = parse(&format!(
            "[defaults]\nauth = {value:?}\n{opt_in}[[target]]\nname = \"w\"\nurl = \"{scheme}://w/wsman\"\n\
             auth = {value:?}\n{KERBEROS}"
        ))
        .unwrap_or_else(|e| panic!("{value} over {scheme}: {e:?}"));
        assert_eq!((c.defaults.auth, c.targets[0].auth), (want, want));
        assert_eq!(want.as_str(), value);
        assert_eq!(want.to_string(), value);
        assert_eq!(c.resolve_target("w").unwrap().https, scheme == "https");
    }
    let https_only: Vec<_> = TargetAuth::ALL.into_iter().filter(|a| a.requires_https()).collect();
    assert_eq!(
        https_only,
        [
            TargetAuth::HttpsNegotiate,
            TargetAuth::HttpsNtlm,
            TargetAuth::Basic,
            TargetAuth::HttpsKerberos
        ]
    );
    let https_ok: Vec<_> = TargetAuth::ALL.into_iter().filter(|a| a.allows_https()).collect();
    assert_eq!(
        https_ok,
        [
            TargetAuth::HttpsNegotiate,
            TargetAuth::HttpsNtlm,
            TargetAuth::Basic,
            TargetAuth::CredSsp,
            TargetAuth::HttpsKerberos
        ]
    );
    let errs = errors("[defaults]\nauth = \"Basic\"\n");
    assert_eq!(
        errs,
        [
            "relay.toml:13: defaults.auth: unknown auth \"Basic\" (expected one of: \"negotiate\", \"ntlm\", \
          \"https-negotiate\", \"https-ntlm\", \"basic\", \"credssp\", \"kerberos\", \"https-kerberos\")"
        ]
    );
}

#[test]
fn scheme_and_auth_mismatches_name_line_and_key() {
    let errs = errors(
        r#"[[target]]
name = "a"
url = "http://a/wsman"
auth = "basic"
[[target]]
name = "b"
url = "https://b/wsman"
auth = "ntlm"
[[target]]
name = "c"
url = "http://c/wsman"
auth = "https-negotiate"
[[target]]
name = "d"
url = "https://d/wsman"
auth = "digest"
[[target]]
name = "e"
url = "https://e.lab.test/wsman"
auth = "kerberos"
"#,
    );
    assert_eq!(
        errs,
        [
            "relay.toml:15: target[0].auth: auth \"basic\" requires an https:// url (it has no message \
             encryption of its own); url is \"http://a/wsman\"",
            "relay.toml:19: target[1].auth: auth \"ntlm\" requires an http:// url (it encrypts messages \
             itself); over https use auth = \"https-ntlm\"; url is \"https://b/wsman\"",
            "relay.toml:23: target[2].auth: auth \"https-negotiate\" requires an https:// url (it has no \
             message encryption of its own); url is \"http://c/wsman\"",
            "relay.toml:27: target[3].auth: unknown auth \"digest\" (expected one of: \"negotiate\", \"ntlm\", \
             \"https-negotiate\", \"https-ntlm\", \"basic\", \"credssp\", \"kerberos\", \"https-kerberos\")",
            "relay.toml:31: target[4].auth: auth \"kerberos\" requires an http:// url (it encrypts messages \
             itself); over https use auth = \"https-kerberos\"; url is \"https://e.lab.test/wsman\"",
            "relay.toml:31: target[4].auth: auth \"kerberos\" needs [kerberos] with its realm and kdc list",
        ]
    );
    // Inherited from [defaults]: the url is what is wrong.
    let errs = errors("[defaults]\nauth = \"https-ntlm\"\n[[target]]\nname = \"a\"\nurl = \"http://a/wsman\"\n");
    assert_eq!(
        errs,
        [
            "relay.toml:16: target[0].url: \"http://a/wsman\": auth \"https-ntlm\" (from defaults.auth) requires \
          an https:// url (it has no message encryption of its own)"
        ]
    );
    let errs = errors("[[target]]\nname = \"a\"\nurl = \"https://a/wsman\"\n");
    assert_eq!(
        errs,
        [
            "relay.toml:14: target[0].url: \"https://a/wsman\": auth \"negotiate\" (from defaults.auth) requires \
          an http:// url (it encrypts messages itself); over https use auth = \"https-negotiate\""
        ]
    );
    let errs = errors("[[target]]\nname = \"a\"\nurl = \"ftp://a/wsman\"\n");
    assert_eq!(
        errs,
        ["relay.toml:14: target[0].url: \"ftp://a/wsman\": scheme must be http or https (got \"ftp\")"]
    );
}

#[test]
fn default_ports_follow_the_scheme() {
    let targets = "[[target]]\nname = \"h\"\nurl = \"http://h/wsman\"\n\
                   [[target]]\nname = \"s\"\nurl = \"HTTPS://s/wsman\"\nauth = \"https-ntlm\"\n";
    let c = parse(targets).unwrap();
    assert_eq!((c.defaults.port, c.defaults.https_port), (5985, 5986));
    assert_eq!(c.targets[0].url, "http://h:5985/wsman");
    assert_eq!(c.targets[1].url, "https://s:5986/wsman");
    let s = c.resolve_target("s").unwrap();
    assert_eq!((s.port, s.https, s.url.as_str()), (5986, true, "https://s:5986/wsman"));
    let c = parse(&format!("[defaults]\nport = 8985\nhttps_port = 8986\n{targets}")).unwrap();
    assert_eq!(c.targets[0].url, "http://h:8985/wsman");
    assert_eq!(c.targets[1].url, "https://s:8986/wsman");
    let errs = errors("[defaults]\nhttps_port = 70000\n");
    assert_eq!(
        errs,
        ["relay.toml:13: defaults.https_port: 70000 is out of range 1..=65535"]
    );
    // The same host and port cannot be two targets, whatever the schemes.
    let errs = errors(
        "[[target]]\nname = \"a\"\nurl = \"http://w:5986/wsman\"\n\
         [[target]]\nname = \"b\"\nurl = \"https://w/wsman\"\nauth = \"basic\"\n",
    );
    assert_eq!(
        errs,
        ["relay.toml:17: target[1].url: target \"a\" already uses this host and port"]
    );
    // http://w and https://w are different ports: both may be configured.
    parse(
        "[[target]]\nname = \"a\"\nurl = \"http://w/wsman\"\n\
         [[target]]\nname = \"b\"\nurl = \"https://w/wsman\"\nauth = \"credssp\"\n",
    )
    .unwrap();
}

#[test]
fn ca_file_must_exist_and_hold_pem_certificates() {
    let dir = test_dir("ca-file");
    let good = ca_pem(&dir);
    let target = |ca: &Path| {
        format!(
            "[[target]]\nname = \"s\"\nurl = \"https://s/wsman\"\nauth = \"https-ntlm\"\nca_file = {:?}\n",
            ca.display().to_string()
        )
    };
    let c = parse(&target(&good)).unwrap();
    assert_eq!(ca_of(c.targets[0].tls.as_ref()), Some(good.as_path()));
    assert_eq!(ca_of(c.resolve_target("s").unwrap().tls.as_ref()), Some(good.as_path()));
    assert_eq!(CaFile::load(&good).unwrap().certificates().len(), 1);

    let missing = dir.join("missing.pem");
    let errs = errors(&target(&missing));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "relay.toml:16: target[0].ca_file: cannot read {}: ",
            missing.display()
        )),
        "{errs:?}"
    );
    let cases = [
        ("text.pem", "not a certificate\n".to_string(), "no PEM certificates"),
        (
            "key.pem",
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
            "no PEM certificates",
        ),
        (
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
            "certificate 1 of 1 is not a usable CA certificate",
        ),
        (
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_string(),
            "invalid PEM",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let errs = errors(&target(&path));
        assert_eq!(errs.len(), 1, "{name}: {errs:?}");
        assert!(
            errs[0].starts_with(&format!("relay.toml:16: target[0].ca_file: {}: {want}", path.display())),
            "{name}: {errs:?}"
        );
    }
    let errs = errors(&format!("[defaults]\nca_file = {:?}\n", missing.display().to_string()));
    assert!(
        errs[0].starts_with("relay.toml:13: defaults.ca_file: cannot read"),
        "{errs:?}"
    );
    let errs = errors("[defaults]\nca_file = \"\"\n");
    assert_eq!(errs, ["relay.toml:13: defaults.ca_file: must not be empty"]);

    // [defaults] ca_file goes to https targets without their own, and never to http ones.
    let other = dir.join("other.pem");
    std::fs::copy(&good, &other).unwrap();
    let c = parse(&format!(
        "[defaults]\nca_file = {:?}\n\
         [[target]]\nname = \"h\"\nurl = \"http://h/wsman\"\n\
         [[target]]\nname = \"s\"\nurl = \"https://s/wsman\"\nauth = \"basic\"\n\
         [[target]]\nname = \"o\"\nurl = \"https://o/wsman\"\nauth = \"basic\"\nca_file = {:?}\n",
        good.display().to_string(),
        other.display().to_string()
    ))
    .unwrap();
    let cas: Vec<_> = c.targets.iter().map(|t| ca_of(t.tls.as_ref())).collect();
    assert_eq!(cas, [None, Some(good.as_path()), Some(other.as_path())]);
}

#[test]
fn tls_keys_only_apply_to_https_targets() {
    let dir = test_dir("tls-keys-http");
    let ca = ca_pem(&dir);
    let errs = errors(&format!(
        "[[target]]\nname = \"h\"\nurl = \"http://h/wsman\"\nauth = \"credssp\"\nca_file = {:?}\n\
         tls_fingerprint = \"sha256:{PIN_HEX}\"\ntls_verify = true\nallow_ntlm_only_delegation = true\n",
        ca.display().to_string()
    ));
    let only = "only applies to https:// urls; this target's url is http://";
    assert_eq!(
        errs,
        [
            format!("relay.toml:16: target[0].ca_file: {only}"),
            format!("relay.toml:17: target[0].tls_fingerprint: {only}"),
            format!("relay.toml:18: target[0].tls_verify: {only}"),
        ]
    );
    let errs = errors(&format!(
        "[[target]]\nname = \"s\"\nurl = \"https://s/wsman\"\nauth = \"basic\"\nca_file = {:?}\n\
         tls_fingerprint = \"sha256:{PIN_HEX}\"\n",
        ca.display().to_string()
    ));
    assert_eq!(
        errs,
        [
            "relay.toml:17: target[0].tls_fingerprint: cannot be combined with ca_file: a pinned certificate \
          is accepted whatever its chain"
        ]
    );
}

#[test]
fn credssp_over_http_needs_the_ntlm_only_delegation_opt_in() {
    const HTTP: &str = "[[target]]\nname = \"h\"\nurl = \"http://h/wsman\"\n";
    const HTTPS: &str = "[[target]]\nname = \"s\"\nurl = \"https://s/wsman\"\n";
    const CREDSSP: &str = "auth = \"credssp\"\n";
    const OPT_IN: &str = "allow_ntlm_only_delegation = true\n";
    let refused = "auth \"credssp\" over http:// delegates the caller's password to a host only NTLM vouches for";
    // A target's own auth, and one it takes from [defaults] (with [defaults] itself, for unlisted hosts).
    let errs = errors(&format!("{HTTP}{CREDSSP}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "relay.toml:15: target[0].auth: {refused} (target \"h\" at \"http://h/wsman\"): the relay's CredSSP \
             client authenticates targets with NTLM"
        )),
        "{errs:?}"
    );
    assert!(
        errs[0].ends_with("allow_ntlm_only_delegation = true in its [[target]]"),
        "{errs:?}"
    );
    let errs = errors(&format!("[defaults]\n{CREDSSP}{HTTP}"));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "relay.toml:13: defaults.auth: {refused} ([defaults] applies it to hosts not listed as a [[target]])"
        )),
        "{errs:?}"
    );
    assert!(
        errs[0].ends_with("allow_ntlm_only_delegation = true in [defaults]"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with(&format!("relay.toml:16: target[0].url: {refused}")),
        "{errs:?}"
    );
    // Accepted over https (its certificate is always checked), or with the opt-in: on the
    // target, or in [defaults] for unlisted hosts and the targets that inherit it.
    let c = parse(&format!("{HTTPS}{CREDSSP}")).unwrap();
    assert_eq!(c.targets[0].auth, TargetAuth::CredSsp);
    parse(&format!("{HTTP}{CREDSSP}{OPT_IN}")).unwrap();
    let c = parse(&format!("[defaults]\n{CREDSSP}{OPT_IN}{HTTP}")).unwrap();
    assert_eq!(c.resolve_target("db01").unwrap().auth, TargetAuth::CredSsp);
    // A target's own false wins over [defaults]' true.
    let errs = errors(&format!(
        "[defaults]\n{OPT_IN}{HTTP}{CREDSSP}allow_ntlm_only_delegation = false\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!("relay.toml:17: target[0].auth: {refused}")),
        "{errs:?}"
    );
    // Where it changes nothing it is refused, not silently ignored.
    let errs = errors(&format!("{HTTPS}{CREDSSP}{OPT_IN}"));
    assert_eq!(
        errs,
        [
            "relay.toml:16: target[0].allow_ntlm_only_delegation: only applies to auth = \"credssp\" over http://; \
             this target uses auth \"credssp\" over https://"
        ]
    );
    let errs = errors(&format!("{HTTP}auth = \"ntlm\"\n{OPT_IN}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].ends_with("this target uses auth \"ntlm\" over http://"),
        "{errs:?}"
    );
    assert!(errors("[defaults]\nallow_ntlm_only_delegation = 1\n")[0].contains("expected a boolean"));
}

#[test]
fn tls_verify_false_is_refused_with_every_https_auth() {
    // Each of these sends the caller's password, or its whole session, inside the TLS.
    for auth in ["https-ntlm", "https-negotiate", "basic", "credssp"] {
        let errs = errors(&format!(
            "[[target]]\nname = \"lab\"\nurl = \"https://lab/wsman\"\nauth = \"{auth}\"\ntls_verify = false\n"
        ));
        assert_eq!(errs.len(), 1, "{auth}: {errs:?}");
        let want = format!(
            "relay.toml:16: target[0].tls_verify: tls_verify = false is refused: target \"lab\" (auth \"{auth}\") \
             would send the caller's credentials to whoever answers; pin its certificate instead with \
             tls_fingerprint = \"sha256:...\""
        );
        assert!(errs[0].starts_with(&want), "{auth}: {errs:?}");
    }
    let c =
        parse("[[target]]\nname = \"s\"\nurl = \"https://s/wsman\"\nauth = \"basic\"\ntls_verify = true\n").unwrap();
    assert!(matches!(
        c.targets[0].tls.as_ref().map(TargetTls::trust),
        Some(TlsTrust::Roots(None))
    ));

    let errs = errors("[defaults]\ntls_verify = false\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("relay.toml:13: defaults.tls_verify: tls_verify = false is refused")
            && errs[0].contains("tls_fingerprint"),
        "{errs:?}"
    );
    parse("[defaults]\ntls_verify = true\n").unwrap();
    let errs = errors("[[target]]\nname = \"s\"\nurl = \"https://s/wsman\"\nauth = \"basic\"\ntls_verify = \"no\"\n");
    assert_eq!(
        errs,
        ["relay.toml:16: target[0].tls_verify: expected a boolean, found a string"]
    );
}

#[test]
fn tls_fingerprint_pins_a_target() {
    let pin = Fingerprint::parse(&format!("sha256:{PIN_HEX}")).unwrap();
    let colons: Vec<String> = PIN_HEX
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).to_lowercase())
        .collect();
    for written in [format!("sha256:{PIN_HEX}"), format!("SHA256:{}", colons.join(":"))] {
        let c = parse(&format!(
            "[[target]]\nname = \"p\"\nurl = \"https://p/wsman\"\nauth = \"https-ntlm\"\ntls_fingerprint = {written:?}\n"
        ))
        .unwrap_or_else(|e| panic!("{written}: {e:?}"));
        let trust = c.resolve_target("p").unwrap().tls.map(|t| t.trust().clone());
        assert!(
            matches!(trust, Some(TlsTrust::Pinned(p)) if p == pin),
            "{written}: {trust:?}"
        );
    }
    for bad in [
        PIN_HEX.to_string(),
        format!("sha1:{PIN_HEX}"),
        format!("sha256:{}", &PIN_HEX[2..]),
        format!("sha256:{PIN_HEX}00"),
        format!("sha256:{}:", &PIN_HEX),
        format!("sha256:g{}", &PIN_HEX[1..]),
    ] {
        let errs = errors(&format!(
            "[[target]]\nname = \"p\"\nurl = \"https://p/wsman\"\nauth = \"basic\"\ntls_fingerprint = {bad:?}\n"
        ));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with("relay.toml:16: target[0].tls_fingerprint: invalid fingerprint"),
            "{bad}: {errs:?}"
        );
    }
    let errs = errors("[defaults]\ntls_fingerprint = \"x\"\n");
    assert!(
        errs[0].starts_with("relay.toml:13: defaults.tls_fingerprint: unknown key"),
        "{errs:?}"
    );
}

#[test]
fn tls_configuration_is_built_once_per_target() {
    let src = "[[target]]\nname = \"s\"\nurl = \"https://10.0.0.5/wsman\"\nauth = \"https-ntlm\"\n\
               [[target]]\nname = \"t\"\nurl = \"https://10.0.0.6/wsman\"\nauth = \"https-ntlm\"\n\
               [defaults]\nauth = \"basic\"\n";
    let c = parse(src).unwrap();
    let config_of = |name: &str| c.resolve_target(name).unwrap().tls.unwrap().client_config();
    // However a request names the target, its connections share one configuration (and
    // so one session cache); other targets and unlisted hosts have their own.
    assert!(Arc::ptr_eq(&config_of("s"), &config_of("S")));
    assert!(Arc::ptr_eq(&config_of("s"), &config_of("10.0.0.5")));
    assert!(!Arc::ptr_eq(&config_of("s"), &config_of("t")));
    assert!(Arc::ptr_eq(&config_of("db01"), &config_of("db02")));
    assert!(Arc::ptr_eq(&config_of("db01"), &c.defaults.tls.client_config()));
    assert!(!Arc::ptr_eq(&config_of("db01"), &config_of("s")));
    // Loading again (a reload) builds fresh ones.
    let again = parse(src).unwrap();
    let reloaded = again.resolve_target("s").unwrap().tls.unwrap().client_config();
    assert!(!Arc::ptr_eq(&config_of("s"), &reloaded));
}

#[test]
fn unlisted_hosts_follow_https_defaults() {
    let dir = test_dir("https-defaults");
    let ca = ca_pem(&dir);
    let c = parse(&format!(
        "[defaults]\nauth = \"https-ntlm\"\nhttps_port = 15986\nca_file = {:?}\n",
        ca.display().to_string()
    ))
    .unwrap();
    let t = c.resolve_target("db01.lab.local").unwrap();
    assert_eq!(t.url, "https://db01.lab.local:15986/wsman");
    assert_eq!((t.https, t.port, t.auth), (true, 15986, TargetAuth::HttpsNtlm));
    assert_eq!(ca_of(t.tls.as_ref()), Some(ca.as_path()));
    let t = c.resolve_target("[fd00::9]:443").unwrap();
    assert_eq!((t.url.as_str(), t.port), ("https://[fd00::9]:443/wsman", 443));
    // credssp accepts both schemes; unlisted hosts keep http and its port.
    let c = parse("[defaults]\nauth = \"credssp\"\nport = 15985\nallow_ntlm_only_delegation = true\n").unwrap();
    let t = c.resolve_target("db01").unwrap();
    assert_eq!(
        (t.url.as_str(), t.https, t.tls.is_none()),
        ("http://db01:15985/wsman", false, true)
    );
    // http defaults: a [defaults] ca_file does not apply.
    let c = parse(&format!("[defaults]\nca_file = {:?}\n", ca.display().to_string())).unwrap();
    let t = c.resolve_target("db01").unwrap();
    assert_eq!((t.https, t.tls.is_none()), (false, true));
}

#[test]
fn resolve_https_targets_by_address() {
    let c = parse(&format!(
        "[[target]]\nname = \"s\"\nurl = \"https://10.0.0.5/wsman\"\nauth = \"https-ntlm\"\n\
         tls_fingerprint = \"sha256:{PIN_HEX}\"\n\
         [[target]]\nname = \"h\"\nurl = \"http://10.0.0.6:5986/wsman\"\n",
    ))
    .unwrap();
    for given in ["s", "10.0.0.5", "10.0.0.5:5986"] {
        let t = c.resolve_target(given).unwrap();
        assert_eq!(t.alias.as_deref(), Some("s"), "{given}");
        assert_eq!((t.url.as_str(), t.https), ("https://10.0.0.5:5986/wsman", true));
        assert!(matches!(
            t.tls.as_ref().map(TargetTls::trust),
            Some(TlsTrust::Pinned(_))
        ));
    }
    // Another port of that host is not the configured target.
    let t = c.resolve_target("10.0.0.5:5985").unwrap();
    assert_eq!((t.alias, t.https, t.auth), (None, false, TargetAuth::Negotiate));
    // An http target on a non-default port needs the port named, as before.
    assert_eq!(c.resolve_target("10.0.0.6:5986").unwrap().alias.as_deref(), Some("h"));
    assert_eq!(c.resolve_target("10.0.0.6").unwrap().alias, None);
}

#[test]
fn https_listener_counts_and_clashes() {
    let c = parse("").unwrap();
    assert_eq!(c.listen.https, None);
    assert!(c.listen.basic_over_https);
    // Only an https listener: that is a listener.
    let src = MINIMAL.replace(
        "http = \"127.0.0.1:5985\"",
        "https = \"127.0.0.1:5986\"\nbasic_auth = false",
    );
    let c = Config::parse(Path::new("r.toml"), &src).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        (c.listen.http, c.listen.https),
        (None, Some("127.0.0.1:5986".parse().unwrap()))
    );
    assert!(!c.listen.basic_over_https);
    let both = MINIMAL.replace(
        "http = \"127.0.0.1:5985\"",
        "http = \"127.0.0.1:5985\"\nhttps = \"0.0.0.0:5986\"",
    );
    let c = Config::parse(Path::new("r.toml"), &both).unwrap();
    assert_eq!(c.listen.https, Some("0.0.0.0:5986".parse().unwrap()));
    // https against http, and a target listener against https.
    for (https, want) in [
        ("127.0.0.1:5985", "clashes with listen.http (127.0.0.1:5985)"),
        ("0.0.0.0:5985", "clashes with listen.http (127.0.0.1:5985)"),
    ] {
        let src = MINIMAL.replace("tls_cert", &format!("https = {https:?}\ntls_cert"));
        let errs: Vec<String> = Config::parse(Path::new("r.toml"), &src)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs, [format!("r.toml:4: listen.https: listen address {https} {want}")]);
    }
    let src = format!("{both}[[target]]\nname = \"w\"\nurl = \"http://w/wsman\"\nlisten = \"127.0.0.1:5986\"\n");
    let errs: Vec<String> = Config::parse(Path::new("r.toml"), &src)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errs,
        ["r.toml:16: target[0].listen: listen address 127.0.0.1:5986 clashes with listen.https (0.0.0.0:5986)"]
    );
    let src = MINIMAL.replace("tls_cert", "https = \"x\"\nbasic_auth = 1\ntls_cert");
    let errs: Vec<String> = Config::parse(Path::new("r.toml"), &src)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errs,
        [
            "r.toml:4: listen.https: invalid socket address \"x\" (expected ip:port)",
            "r.toml:5: listen.basic_auth: expected a boolean, found an integer",
        ]
    );
}

#[test]
fn commented_transport_examples_are_valid() {
    // Lines like `#name = "x"` (no space after '#') are ready-to-use settings in the
    // example; uncommented, they must still be a valid config.
    let dir = test_dir("example-uncommented");
    let ca = ca_pem(&dir);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\n#ca_file = \"certs/web02-ca.pem\"\n"),
        "example changed"
    );
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("certs/web02-ca.pem", &ca.display().to_string())
        .replace("certs/lab-ca.pem", &ca.display().to_string());
    let c = Config::parse(&path, &uncommented).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(c.listen.https, Some("127.0.0.1:5986".parse().unwrap()));
    let auths: Vec<_> = c.targets.iter().map(|t| (t.name.as_str(), t.auth)).collect();
    assert_eq!(
        auths,
        [
            ("web01", TargetAuth::Negotiate),
            ("web02", TargetAuth::HttpsNtlm),
            ("files01", TargetAuth::Basic),
            ("app01", TargetAuth::CredSsp),
            ("web11", TargetAuth::Kerberos),
            ("web12", TargetAuth::HttpsKerberos),
        ]
    );
    let spns: Vec<_> = c
        .targets
        .iter()
        .map(|t| t.kerberos.as_ref().map(|k| k.spn.as_str()))
        .collect();
    assert_eq!(
        spns,
        [
            None,
            None,
            None,
            None,
            Some("HTTP/web11.lab.test"),
            Some("HTTP/web12.lab.test")
        ]
    );
    assert_eq!(
        c.defaults.kerberos.as_ref().map(|k| k.domain.realm.as_str()),
        Some("LAB.TEST")
    );
    assert_eq!(ca_of(c.targets[1].tls.as_ref()), Some(ca.as_path()));
    assert!(matches!(
        c.targets[2].tls.as_ref().map(TargetTls::trust),
        Some(TlsTrust::Pinned(_))
    ));
    assert_eq!(c.audit.transcripts.as_deref(), Some(Path::new("transcripts")));
    assert_eq!(c.audit.hmac_key_file.as_deref(), Some(Path::new("audit.key")));
    assert_eq!(c.audit.syslog, Some(SyslogTarget::Udp("127.0.0.1:514".into())));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9985".parse().unwrap()));
}

#[test]
fn kerberos_targets_get_the_realm_with_its_kdcs() {
    let c = parse(&format!(
        "{KERBEROS}\n[[target]]\nname = \"web11\"\nurl = \"http://web11.lab.test/wsman\"\nauth = \"kerberos\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let realm = c.defaults.kerberos.as_ref().expect("realm");
    assert_eq!(
        (realm.domain.realm.as_str(), realm.domain.netbios.as_str()),
        ("LAB.TEST", "LAB")
    );
    let kdcs: Vec<String> = realm.kdc.kdcs().iter().map(|k| k.to_string()).collect();
    assert_eq!(kdcs, ["tcp://127.0.0.100:88"]);
    let target = c.resolve_target("web11").unwrap().kerberos.expect("kerberos");
    assert!(Arc::ptr_eq(&target.realm, realm));
    // A keytab alone serves Kerberos logons; targets need the KDCs too.
    let keytab_only = "[kerberos]\nrealm = \"LAB.TEST\"\nkeytab = \"relay.keytab\"\n";
    assert!(parse(keytab_only).unwrap().defaults.kerberos.is_none());
    let errs = errors(&format!(
        "{keytab_only}[[target]]\nname = \"web11\"\nurl = \"http://web11.lab.test/wsman\"\nauth = \"kerberos\"\n"
    ));
    assert_eq!(
        errs,
        ["relay.toml:18: target[0].auth: auth \"kerberos\" needs [kerberos] with its realm and kdc list"]
    );
}

#[test]
fn kerberos_section_parses_with_defaults() {
    let c =
        parse("[kerberos]\nrealm = \"LAB.TEST\"\nkdc = [\"tcp://dc1.lab.test:88\", \"udp://127.0.0.100\"]\n").unwrap();
    let k = c.kerberos.expect("[kerberos]");
    assert_eq!(
        (k.domain.realm.as_str(), k.domain.netbios.as_str()),
        ("LAB.TEST", "LAB"),
        "NetBIOS name from the first label"
    );
    let kdcs: Vec<String> = k.kdcs.iter().map(|k| k.to_string()).collect();
    assert_eq!(kdcs, ["tcp://dc1.lab.test:88", "udp://127.0.0.100:88"]);
    assert_eq!(k.keytab, None);
    assert_eq!(c.auth.users_file.as_deref(), Some(Path::new("config/users")));
    let c =
        parse("[kerberos]\nrealm = \"CORP.EXAMPLE.COM\"\nnetbios = \"CORPNET\"\nkeytab = \"relay.keytab\"\n").unwrap();
    let k = c.kerberos.unwrap();
    assert_eq!(
        (k.domain.netbios.as_str(), k.keytab.as_deref()),
        ("CORPNET", Some(Path::new("relay.keytab")))
    );
    assert!(k.kdcs.is_empty());
    assert!(parse("").unwrap().kerberos.is_none());
}

#[test]
fn constrained_delegation_is_chosen_and_needs_a_keytab() {
    let k = parse("[kerberos]\nrealm = \"LAB.TEST\"\n").unwrap().kerberos.unwrap();
    assert_eq!(k.delegation, Delegation::Password, "today's behaviour by default");
    let c =
        parse("[kerberos]\nrealm = \"LAB.TEST\"\nkeytab = \"relay.keytab\"\ndelegation = \"constrained\"\n").unwrap();
    assert_eq!(c.kerberos.unwrap().delegation, Delegation::Constrained);
    let e = errors("[kerberos]\nrealm = \"LAB.TEST\"\ndelegation = \"constrained\"\n");
    assert!(
        e.iter()
            .any(|e| e.contains("kerberos.delegation: \"constrained\" needs kerberos.keytab")),
        "{e:?}"
    );
    let e = errors("[kerberos]\nrealm = \"LAB.TEST\"\nkeytab = \"relay.keytab\"\ndelegation = \"rbcd\"\n");
    assert!(
        e.iter().any(|e| e
            .contains("kerberos.delegation: unknown value \"rbcd\" (expected one of: \"password\", \"constrained\")")),
        "{e:?}"
    );
}

#[test]
fn kerberos_values_are_checked_where_written() {
    let e = errors(
        "[kerberos]\nrealm = \"lab.test\"\nnetbios = \"TOO-LONG-NETBIOS-NAME\"\nkdc = [\"dc1:88\", \"tcp://dc2/x\"]\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with("relay.toml:13: kerberos.realm: \"lab.test\" must be upper case (\"LAB.TEST\")"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("relay.toml:14: kerberos.netbios: \"TOO-LONG-NETBIOS-NAME\" must be 1 to 15"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("relay.toml:15: kerberos.kdc: \"dc1:88\": unknown scheme"),
        "{e:?}"
    );
    assert!(
        e[3].contains("kerberos.kdc: \"tcp://dc2/x\": a tcp:// or udp:// KDC URL is host and port only"),
        "{e:?}"
    );
    let e = errors("[kerberos]\nrealm = \"LAB..TEST\"\nnetbios = \"L.AB\"\n");
    assert!(
        e[0].contains("kerberos.realm: \"LAB..TEST\" is not a DNS domain name"),
        "{e:?}"
    );
    assert!(
        e[1].contains("kerberos.netbios: \"L.AB\" contains a character"),
        "{e:?}"
    );
    let e = errors("[kerberos]\nnetbios = \"LAB\"\n");
    assert_eq!(e, ["relay.toml:12: kerberos.realm: required key is missing"]);
    let e = errors("[kerberos]\nrealm = \"LAB.TEST\"\nkdc = [\"tcp://dc1:88\", \"https://kdcproxy/KdcProxy\"]\n");
    assert_eq!(
        e,
        ["relay.toml:12: kerberos.kdc: either KDCs (tcp://, udp://) or KDC proxies (https://), not both"]
    );
    let e = errors("[kerberos]\nrealm = \"LAB.TEST\"\nkdc = []\nspn = \"HTTP/x\"\n");
    assert!(e.iter().any(|e| e.contains("kerberos.kdc: must not be empty")), "{e:?}");
    assert!(e.iter().any(|e| e.contains("kerberos.spn: unknown key")), "{e:?}");
}

#[test]
fn users_file_is_optional_only_with_a_keytab() {
    let without_users = MINIMAL.replace("users_file = \"config/users\"\n", "");
    let load = |extra: &str| {
        Config::parse(Path::new("relay.toml"), &format!("{without_users}{extra}"))
            .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    };
    let c = load("[kerberos]\nrealm = \"LAB.TEST\"\nkeytab = \"relay.keytab\"\n").unwrap();
    assert_eq!(c.auth.users_file, None);
    let e = load("[kerberos]\nrealm = \"LAB.TEST\"\n").unwrap_err();
    assert_eq!(e, ["relay.toml:7: auth.users_file: required key is missing"]);
    assert_eq!(
        load("").unwrap_err(),
        ["relay.toml:7: auth.users_file: required key is missing"]
    );
}

#[test]
fn kerberos_targets_get_an_spn_and_negotiate_uses_kerberos_only_with_one() {
    let c = parse(&format!(
        r#"{KERBEROS}
[[target]]
name = "web11"
url = "http://web11.lab.test:5985/wsman"
auth = "kerberos"
[[target]]
name = "web12"
url = "http://127.0.0.112:5985/wsman"
auth = "kerberos"
spn = "HTTP/web12.lab.test"
[[target]]
name = "web13"
url = "http://web13.lab.test/wsman"
[[target]]
name = "web14"
url = "http://127.0.0.114/wsman"
[[target]]
name = "web15"
url = "https://web15.lab.test/wsman"
auth = "https-kerberos"
spn = "WSMAN/web15.lab.test:5986"
[[target]]
name = "web16"
url = "http://web16.lab.test/wsman"
auth = "ntlm"
"#
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let spn = |name: &str| c.resolve_target(name).unwrap().kerberos.map(|k| k.spn);
    assert_eq!(spn("web11").as_deref(), Some("HTTP/web11.lab.test"));
    assert_eq!(spn("web12").as_deref(), Some("HTTP/web12.lab.test"));
    // negotiate: Kerberos towards a name, NTLM towards an address (no SPN).
    assert_eq!(spn("web13").as_deref(), Some("HTTP/web13.lab.test"));
    assert_eq!(spn("web14"), None);
    assert_eq!(spn("web15").as_deref(), Some("WSMAN/web15.lab.test:5986"));
    assert_eq!(spn("web16"), None);
    // Unlisted hosts: the same rules with [defaults].
    assert_eq!(spn("other.lab.test").as_deref(), Some("HTTP/other.lab.test"));
    assert_eq!(spn("10.0.0.7"), None);

    // Without [kerberos], negotiate is NTLM whatever the host.
    let c = parse("[[target]]\nname = \"web13\"\nurl = \"http://web13.lab.test/wsman\"\nspn = \"HTTP/x\"\n").unwrap();
    assert!(c.resolve_target("web13").unwrap().kerberos.is_none());
    assert!(c.resolve_target("web99.lab.test").unwrap().kerberos.is_none());
}

#[test]
fn kerberos_needs_a_realm_and_an_spn() {
    let errs = errors(
        r#"[defaults]
auth = "kerberos"
[[target]]
name = "a"
url = "http://a.lab.test/wsman"
auth = "kerberos"
"#,
    );
    assert_eq!(
        errs,
        [
            "relay.toml:12: defaults.auth: auth \"kerberos\" needs [kerberos] with its realm and kdc list",
            "relay.toml:17: target[0].auth: auth \"kerberos\" needs [kerberos] with its realm and kdc list",
        ]
    );
    let errs = errors(&format!(
        r#"{KERBEROS}
[[target]]
name = "a"
url = "http://10.0.0.5/wsman"
auth = "kerberos"
[[target]]
name = "b"
url = "http://b.lab.test/wsman"
auth = "ntlm"
spn = "HTTP/b.lab.test"
[[target]]
name = "c"
url = "http://c.lab.test/wsman"
auth = "kerberos"
spn = "HTTP/c.lab.test@LAB.TEST"
[[target]]
name = "d"
url = "http://d.lab.test/wsman"
spn = "d.lab.test"
"#
    ));
    assert_eq!(
        errs,
        [
            "relay.toml:20: target[0].auth: auth \"kerberos\" towards the address 10.0.0.5 needs an spn: an address \
             has no service principal name",
            "relay.toml:25: target[1].spn: auth \"ntlm\" does not use Kerberos; spn applies to kerberos, \
             https-kerberos, negotiate and https-negotiate",
            "relay.toml:30: target[2].spn: invalid spn \"HTTP/c.lab.test@LAB.TEST\": expected service/host (no realm, \
             spaces or further /), e.g. HTTP/web01.lab.test",
            "relay.toml:34: target[3].spn: invalid spn \"d.lab.test\": expected service/host, e.g. HTTP/web01.lab.test",
        ]
    );
    // An unlisted address cannot be reached with Kerberos.
    let c = parse(&format!("[defaults]\nauth = \"kerberos\"\n{KERBEROS}")).unwrap_or_else(|e| panic!("{e:?}"));
    let e = c.resolve_target("10.0.0.7").unwrap_err().to_string();
    assert!(e.contains("towards the address 10.0.0.7 needs an spn"), "{e}");
    assert_eq!(
        c.resolve_target("web17.lab.test")
            .unwrap()
            .kerberos
            .map(|k| k.spn)
            .as_deref(),
        Some("HTTP/web17.lab.test")
    );
}

#[test]
fn example_kerberos_table_loads_when_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("#[kerberos]").expect("the example documents [kerberos]");
    let uncommented: String = text[start..]
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&path, &format!("{}{uncommented}\n", &text[..start])).unwrap_or_else(|e| panic!("{e:?}"));
    let k = c.kerberos.expect("[kerberos]");
    assert_eq!(
        (k.domain.realm.as_str(), k.domain.netbios.as_str(), k.kdcs.len()),
        ("LAB.TEST", "LAB", 2)
    );
    assert_eq!(k.keytab.as_deref(), Some(Path::new("config/relay.keytab")));
}

/// Sets `$CREDENTIALS_DIRECTORY` for one test, one such test at a time, and puts back what
/// was there when dropped (also when the test fails).
struct CredentialsDirectory {
    old: Option<std::ffi::OsString>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl CredentialsDirectory {
    fn set(dir: Option<&Path>) -> CredentialsDirectory {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = std::env::var_os(credentials::CREDENTIALS_DIRECTORY);
        match dir {
            Some(dir) => std::env::set_var(credentials::CREDENTIALS_DIRECTORY, dir),
            None => std::env::remove_var(credentials::CREDENTIALS_DIRECTORY),
        }
        CredentialsDirectory {
            old,
            _one_at_a_time: guard,
        }
    }
}

impl Drop for CredentialsDirectory {
    fn drop(&mut self) {
        match &self.old {
            Some(old) => std::env::set_var(credentials::CREDENTIALS_DIRECTORY, old),
            None => std::env::remove_var(credentials::CREDENTIALS_DIRECTORY),
        }
    }
}

/// The users file, keytab and audit key as systemd credentials.
fn credentials_config() -> String {
    MINIMAL
        .replace("\"config/users\"", "\"credential:users\"")
        .replace("[audit]\n", "[audit]\nhmac_key_file = \"credential:audit-key\"\n")
        + "[kerberos]\nrealm = \"LAB.TEST\"\nkeytab = \"credential:relay.keytab\"\n"
}

#[test]
fn secret_files_may_name_systemd_credentials() {
    let dir = test_dir("credentials");
    let _env = CredentialsDirectory::set(Some(&dir));
    let c = Config::parse(Path::new("relay.toml"), &credentials_config()).unwrap_or_else(|e| panic!("{e:?}"));
    // Each resolves to its file in $CREDENTIALS_DIRECTORY (a plain path would stay as written).
    assert_eq!(c.auth.users_file, Some(dir.join("users")));
    assert_eq!(c.audit.hmac_key_file, Some(dir.join("audit-key")));
    assert_eq!(c.kerberos.and_then(|k| k.keytab), Some(dir.join("relay.keytab")));
    assert_eq!(c.audit.path, Path::new("audit.jsonl"));
    // systemd leaves the decrypted file read-only to the service (0400): loadable as it is.
    let mut users = UsersFile::new();
    users.add("LAB\\alice", &secrecy::SecretString::from("pw")).unwrap();
    users.save(&dir.join("users")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("users"), std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    assert_eq!(UsersFile::load(&dir.join("users")).unwrap().entries().count(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn systemd_credentials_need_the_credentials_directory() {
    let _env = CredentialsDirectory::set(None);
    let errs = Config::parse(Path::new("relay.toml"), &credentials_config())
        .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .expect_err("credentials resolved without $CREDENTIALS_DIRECTORY");
    let unset = |key: &str, name: &str| {
        format!(
            "{key}: \"credential:{name}\" names a systemd credential, but $CREDENTIALS_DIRECTORY is not set: \
             systemd sets it for a service with LoadCredentialEncrypted={name}:<encrypted file>"
        )
    };
    assert_eq!(errs.len(), 3, "{errs:?}");
    for (err, (line, key, name)) in errs.iter().zip([
        (8, "auth.users_file", "users"),
        (11, "audit.hmac_key_file", "audit-key"),
        (15, "kerberos.keytab", "relay.keytab"),
    ]) {
        assert!(
            err.starts_with(&format!("relay.toml:{line}: {}", unset(key, name))),
            "{err}"
        );
    }
}

#[test]
fn groups_need_a_directory_and_the_directory_needs_tls_for_its_password() {
    let dir = test_dir("directory-config");
    let password = dir.join("bind.password");
    std::fs::write(&password, "pw\n").unwrap();
    let directory = |url: &str, extra: &str| {
        format!(
            "[directory]\nurl = [{url}]\nbind_dn = \"svc@lab.test\"\nbind_password_file = \"{}\"\n{extra}\n",
            password.display()
        )
    };
    let rule = "[[allow]]\ngroups = ['LAB\\WinRM-Operators', 'helpdesk@lab.test']\ntargets = [\"*\"]\n";
    let c = parse(&format!(
        "{KERBEROS}{}{rule}",
        directory(
            "\"ldaps://dc1.lab.test\", \"ldap://dc2.lab.test:3268\"",
            "starttls = true"
        )
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let d = c.directory.as_ref().expect("directory");
    assert_eq!(d.urls.len(), 2);
    assert!(d.starttls);
    assert_eq!(d.connect_timeout, c.defaults.connect_timeout);
    let names: Vec<String> = c.policy.groups().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["LAB\\WinRM-Operators", "LAB\\helpdesk"]);

    let e = errors(&format!("{KERBEROS}{rule}")).join("\n");
    assert!(e.contains("allow[0].groups: groups need a [directory]"), "{e}");
    let e = errors(&format!("{KERBEROS}{}{rule}", directory("\"ldap://dc1.lab.test\"", ""))).join("\n");
    assert!(e.contains("ldap:// would send the bind password in clear"), "{e}");
    let e = errors(&format!("{KERBEROS}{}{rule}", directory("\"http://dc1\"", ""))).join("\n");
    assert!(e.contains("expected an ldap:// or ldaps:// URL"), "{e}");
    let e = errors(&format!("{}{rule}", directory("\"ldaps://dc1\"", ""))).join("\n");
    assert!(e.contains("[directory] needs [kerberos]"), "{e}");
    // No password: check says how the relay binds and that the keytab cannot.
    let e = errors(&format!("{KERBEROS}[directory]\nurl = [\"ldaps://dc1\"]\n{rule}")).join("\n");
    for key in ["bind_dn", "bind_password_file"] {
        assert!(
            e.contains(&format!(
                "directory.{key}: required key is missing: the relay binds with bind_dn and"
            )),
            "{e}"
        );
    }
    assert!(e.contains("SASL GSSAPI, is not supported"), "{e}");
    let e = errors("[[allow]]\ntargets = [\"*\"]\n").join("\n");
    assert!(e.contains("allow[0].users: required key is missing"), "{e}");
}

#[test]
fn command_policy_keys_are_checked_with_lines() {
    let errs = errors(
        "[[allow]]\nusers = ['LAB\\a']\ntargets = ['x']\ncommands = [' hostname', 'sc [q']\n\
         cmdlets = ['-Name x', 'Restart-Service -Name']\nmethods = ['Stop Service']\nwmi_writes = 'yes'\n",
    );
    let expect = [
        "relay.toml:15: allow[0].commands: command line \" hostname\" has spaces at an end",
        "relay.toml:15: allow[0].commands: invalid glob \"sc [q\"",
        "relay.toml:16: allow[0].cmdlets: cmdlet entry \"-Name x\" must start with a command name",
        "relay.toml:16: allow[0].cmdlets: cmdlet entry \"Restart-Service -Name\": expected a name",
        "relay.toml:17: allow[0].methods: method \"Stop Service\": expected a method name",
        "relay.toml:18: allow[0].wmi_writes: expected a boolean, found a string",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for (e, want) in errs.iter().zip(expect) {
        assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
    }
    let c = parse(
        "[[allow]]\nusers = ['LAB\\helpdesk']\ntargets = ['*']\nshells = ['cmd']\ncommands = ['hostname']\n\
         cmdlets = ['Get-Service']\nmethods = ['StopService']\nwmi_writes = true\n",
    )
    .expect("config");
    assert_eq!(c.policy.rule_count(), 1);
}

//! The relay's Prometheus metrics (served on `[metrics] listen` by the server).
//!
//! Labels carry no user names and nothing a caller can choose freely: actions outside the
//! WS-Management set are counted as `other`, targets only once the policy let a request
//! through to them.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit::AuditSink;

/// Actions counted under their own name.
const ACTIONS: [&str; 14] = [
    "Create",
    "Delete",
    "Command",
    "Receive",
    "Send",
    "Signal",
    "Get",
    "Put",
    "Enumerate",
    "Pull",
    "Connect",
    "Reconnect",
    "Disconnect",
    "Identify",
];

/// Seconds, from half a millisecond (the relay's own share of a request) to a Receive's
/// long poll.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    action: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Share {
    share: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetErrorLabels {
    target: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Quota {
    quota: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

/// What one finished request adds to the metrics.
#[derive(Debug, Clone, Copy)]
pub struct RequestSample<'a> {
    pub action: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total: Duration,
    /// Time spent waiting for the target, if the request reached one.
    pub target: Option<Duration>,
}

pub struct Metrics {
    registry: Registry,
    sessions_active: Gauge,
    logons: Family<Outcome, Counter>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<Share, Histogram, fn() -> Histogram>,
    bytes: Family<Direction, Counter>,
    target_errors: Family<TargetErrorLabels, Counter>,
    lockouts: Counter,
    quota_hits: Family<Quota, Counter>,
    refusals_before_logon: Family<Cause, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    /// The relay's metrics, with the audit sink's write failures and syslog drops.
    pub fn new(audit: &AuditSink) -> Metrics {
        let mut registry = Registry::with_prefix("winrm_relay");
        let sessions_active = Gauge::default();
        registry.register("sessions_active", "Authenticated sessions now", sessions_active.clone());
        let logons = Family::default();
        registry.register("logons", "Logons, by result", logons.clone());
        let requests = Family::default();
        registry.register(
            "requests",
            "Authenticated WS-Management requests, by action and HTTP status",
            requests.clone(),
        );
        let durations = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Request time: the relay's own share (share=\"relay\") and the time waiting for the target (share=\"target\")",
            durations.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "bytes",
            "Plaintext SOAP bytes of requests (in) and responses (out)",
            bytes.clone(),
        );
        let target_errors = Family::default();
        registry.register(
            "target_errors",
            "Requests that failed at a target, by target and kind",
            target_errors.clone(),
        );
        let lockouts = Counter::default();
        registry.register(
            "lockouts",
            "Source and user pairs locked out after failed logons",
            lockouts.clone(),
        );
        let quota_hits = Family::default();
        registry.register("quota_hits", "Refusals by a limit, by limit", quota_hits.clone());
        let refusals_before_logon = Family::default();
        registry.register(
            "refusals_before_logon",
            "Refusals of callers not logged on, by cause; every one, also those the audit summarises",
            refusals_before_logon.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit events that could not be written",
            audit.write_failures(),
        );
        if let Some(exporter) = audit.exporter() {
            registry.register(
                "syslog_dropped",
                "Audit messages not sent to syslog (queue full or receiver unreachable)",
                exporter.dropped(),
            );
        }
        Metrics {
            registry,
            sessions_active,
            logons,
            requests,
            durations,
            bytes,
            target_errors,
            lockouts,
            quota_hits,
            refusals_before_logon,
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn session_started(&self) {
        self.sessions_active.inc();
    }

    pub fn session_ended(&self) {
        self.sessions_active.dec();
    }

    pub fn logon(&self, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.logons.get_or_create(&Outcome { result }).inc();
    }

    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    /// `quota` names the limit, as in the config (`max_sessions`, `max_shells_per_user`, ...).
    pub fn quota_hit(&self, quota: &'static str) {
        self.quota_hits.get_or_create(&Quota { quota }).inc();
    }

    /// `cause` is one of a fixed set (`allow_sources`, `shed`, `auth_failed`, a limit's name...).
    pub fn refused_before_logon(&self, cause: &'static str) {
        self.refusals_before_logon.get_or_create(&Cause { cause }).inc();
    }

    pub fn target_error(&self, target: &str, kind: &'static str) {
        let labels = TargetErrorLabels {
            target: target.to_ascii_lowercase(),
            kind,
        };
        self.target_errors.get_or_create(&labels).inc();
    }

    pub fn request(&self, sample: RequestSample<'_>) {
        let action = sample
            .action
            .and_then(|a| ACTIONS.iter().find(|known| known.eq_ignore_ascii_case(a)))
            .copied()
            .unwrap_or(if sample.action.is_some() { "other" } else { "none" });
        self.requests
            .get_or_create(&RequestLabels {
                action,
                status: sample.status,
            })
            .inc();
        self.bytes
            .get_or_create(&Direction { direction: "in" })
            .inc_by(sample.bytes_in);
        self.bytes
            .get_or_create(&Direction { direction: "out" })
            .inc_by(sample.bytes_out);
        let target = sample.target.unwrap_or_default();
        let relay = sample.total.saturating_sub(target);
        self.durations
            .get_or_create(&Share { share: "relay" })
            .observe(relay.as_secs_f64());
        if let Some(target) = sample.target {
            self.durations
                .get_or_create(&Share { share: "target" })
                .observe(target.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_labels_stay_bounded() {
        let (audit, _) = AuditSink::in_memory();
        let m = Metrics::new(&audit);
        m.session_started();
        m.logon(true);
        m.logon(false);
        m.lockout();
        m.quota_hit("max_shells_per_user");
        m.refused_before_logon("allow_sources");
        m.target_error("WEB01", "timeout");
        m.request(RequestSample {
            action: Some("receive"),
            status: 200,
            bytes_in: 100,
            bytes_out: 2000,
            total: Duration::from_millis(30),
            target: Some(Duration::from_millis(29)),
        });
        m.request(RequestSample {
            action: Some("x".repeat(300).as_str()),
            status: 500,
            bytes_in: 1,
            bytes_out: 1,
            total: Duration::from_millis(1),
            target: None,
        });
        let text = m.encode();
        for line in [
            "winrm_relay_sessions_active 1",
            "winrm_relay_logons_total{result=\"success\"} 1",
            "winrm_relay_logons_total{result=\"failure\"} 1",
            "winrm_relay_lockouts_total 1",
            "winrm_relay_quota_hits_total{quota=\"max_shells_per_user\"} 1",
            "winrm_relay_refusals_before_logon_total{cause=\"allow_sources\"} 1",
            "winrm_relay_target_errors_total{target=\"web01\",kind=\"timeout\"} 1",
            "winrm_relay_requests_total{action=\"Receive\",status=\"200\"} 1",
            "winrm_relay_requests_total{action=\"other\",status=\"500\"} 1",
            "winrm_relay_bytes_total{direction=\"out\"} 2001",
            "winrm_relay_request_duration_seconds_count{share=\"target\"} 1",
            "winrm_relay_request_duration_seconds_count{share=\"relay\"} 2",
            "winrm_relay_audit_write_failures_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("xxx"), "{text}");
    }
}

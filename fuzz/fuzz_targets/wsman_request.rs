//! Scanning hostile request envelopes, and the helpers the relay applies to
//! what the scan returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::psrp::psrp_command_summary;
use winrm_relay::proto::wsman::{parse_duration, parse_request, shell_kind};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = parse_request(data) {
        let _ = info.action_name();
        let _ = info.resource_uri_problem();
        let _ = info.shell_id_problem();
        let _ = info.operation_timeout_within(std::time::Duration::from_secs(60));
        assert!(info.response_limit(512_000) <= 512_000);
        if let Some(uri) = &info.resource_uri {
            let _ = shell_kind(uri);
        }
        if let Some(line) = &info.command_line {
            let _ = psrp_command_summary(line);
        }
    }
    // The helpers also take raw text directly.
    let text = String::from_utf8_lossy(data);
    let _ = shell_kind(&text);
    let _ = parse_duration(&text);
    let _ = psrp_command_summary(&text);
});

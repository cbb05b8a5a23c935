//! Scanning hostile target responses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::wsman::parse_response;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = parse_response(data) {
        if let Some(fault) = &info.fault {
            let _ = fault.is_timed_out();
        }
    }
});

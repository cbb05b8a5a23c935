//! What KDCs and Kerberos targets send the relay: the KDC replies it keeps for
//! the session's tickets, the KRB-ERRORs it turns into faults, a target's
//! answer to the AP-REQ. Never panic; a reply that is not the AS-REP the
//! password opens is never kept. The first byte picks what the rest answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::kerberos::refusal::{refusal, target_refusal};
use winrm_relay::proto::kerberos::tickets::{classify_request, keep, kept_reply, KdcRequest};
use winrm_relay::vault::Tickets;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let as_request = |preauth| KdcRequest::As {
        client: "alice@LAB.TEST".into(),
        realm: "LAB.TEST".into(),
        preauth,
    };
    let tgs_request = KdcRequest::Tgs {
        spn: "HTTP/web11.lab.test".into(),
        realm: "LAB.TEST".into(),
    };
    let request = match pick % 4 {
        0 => classify_request(rest),
        1 => as_request(false),
        2 => as_request(true),
        _ => tgs_request,
    };
    let _ = refusal(&request, rest);
    let _ = target_refusal(rest, "HTTP/web11.lab.test");
    let mut framed = (rest.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(rest);
    let mut tickets = Tickets::default();
    keep(&mut tickets, &as_request(false), &framed, "pw");
    keep(&mut tickets, &request, &framed, "pw");
    assert!(tickets.tgt.is_none(), "an AS-REP that no password opens was kept");
    let _ = kept_reply(&tickets, &request, std::time::SystemTime::now());
});

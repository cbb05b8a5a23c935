//! The group SIDs of a PAC (its buffer list and the NDR of LOGON_INFO): whatever the
//! bytes, never panic and never allocate what the input's counts claim beyond its size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::kerberos::pac::{group_sids, logon_info_sids};

fuzz_target!(|data: &[u8]| {
    let _ = group_sids(data);
    let _ = logon_info_sids(data);
});

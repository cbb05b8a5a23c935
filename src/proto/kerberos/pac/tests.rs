//! Hand-built LOGON_INFO buffers (the real ones from Samba are read in
//! `service_ticket`'s tests): what is read, and that every malformation is an error.

use super::*;

/// S-1-5-21-1-2-3 as an NDR RPC_SID (conformance count first).
fn ndr_domain_sid(out: &mut Vec<u8>) {
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 5]);
    for sub in [21u32, 1, 2, 3] {
        out.extend_from_slice(&sub.to_le_bytes());
    }
}

fn u32s(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A KERB_VALIDATION_INFO with an EffectiveName, primary group 513, GroupIds [513, 1109],
/// the domain S-1-5-21-1-2-3, one extra SID (S-1-5-21-1-2-3-4000) and no resource groups.
fn logon_info() -> Vec<u8> {
    let mut b = vec![1, 0x10, 8, 0, 0xcc, 0xcc, 0xcc, 0xcc, 0, 0, 0, 0, 0, 0, 0, 0];
    u32s(&mut b, &[0x20000]); // top-level referent
    b.extend_from_slice(&[0; 48]); // six FILETIMEs
    u32s(&mut b, &[0x000a_000a, 0x20004]); // EffectiveName: 5 UTF-16 units, present
    for _ in 0..5 {
        u32s(&mut b, &[0, 0]); // the other strings: empty, null
    }
    u32s(&mut b, &[0, 1106, 513, 2, 0x20008]); // counts, UserId, PrimaryGroupId, GroupCount, GroupIds
    b.extend_from_slice(&[0; 20]); // UserFlags, UserSessionKey
    u32s(&mut b, &[0, 0, 0, 0]); // LogonServer, LogonDomainName: null
    u32s(&mut b, &[0x2000c]); // LogonDomainId
    b.extend_from_slice(&[0; 40]);
    u32s(&mut b, &[1, 0x20010, 0, 0, 0]); // SidCount, ExtraSids, ResourceGroupDomainSid, count, ids
    u32s(&mut b, &[5, 0, 5]); // EffectiveName's buffer
    b.extend_from_slice(&[b'd', 0, b'a', 0, b'v', 0, b'e', 0, b'!', 0, 0, 0]); // 10 bytes and padding
    u32s(&mut b, &[2, 513, 7, 1109, 7]); // GroupIds
    ndr_domain_sid(&mut b);
    u32s(&mut b, &[1, 0x20014, 7]); // ExtraSids: one, present
    u32s(&mut b, &[5]);
    b.extend_from_slice(&[1, 5, 0, 0, 0, 0, 0, 5]);
    u32s(&mut b, &[21, 1, 2, 3, 4000]);
    b
}

fn strings(sids: &[Sid]) -> Vec<String> {
    sids.iter().map(ToString::to_string).collect()
}

#[test]
fn domain_groups_and_extra_sids_are_read() {
    let sids = logon_info_sids(&logon_info()).expect("well formed");
    assert_eq!(
        strings(&sids),
        [
            "S-1-5-21-1-2-3-4000",
            "S-1-5-21-1-2-3-513",
            "S-1-5-21-1-2-3-513",
            "S-1-5-21-1-2-3-1109"
        ]
    );
}

#[test]
fn every_truncation_and_a_lying_count_is_an_error() {
    let full = logon_info();
    for len in 0..full.len() {
        assert!(logon_info_sids(&full[..len]).is_err(), "truncated at {len}");
    }
    let mut lying = full.clone();
    // GroupCount says 3, the array says 2.
    let at = 16 + 4 + 48 + 48 + 4 + 4 + 4;
    lying[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        logon_info_sids(&lying),
        Err(PacError::Malformed("array count differs from the announced one"))
    );
    let mut huge = full;
    huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(logon_info_sids(&huge).is_err());
}

#[test]
fn the_buffer_list_is_bounded_by_its_input() {
    let info = logon_info();
    let mut pac = Vec::new();
    u32s(&mut pac, &[2, 0]);
    // A buffer type no list names yet, then LOGON_INFO.
    u32s(&mut pac, &[18, 4, 40, 0]);
    u32s(&mut pac, &[1, info.len() as u32, 48, 0]);
    pac.extend_from_slice(&[0; 8]);
    pac.extend_from_slice(&info);
    assert_eq!(group_sids(&pac).map(|s| s.len()), Ok(4));
    let mut hostile = pac.clone();
    hostile[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    hostile.truncate(40);
    assert_eq!(group_sids(&hostile), Err(PacError::Container));
    let mut beyond = pac;
    beyond[8 + 16 + 8..8 + 16 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(group_sids(&beyond), Err(PacError::Container));
    assert_eq!(group_sids(&[2, 0, 0, 0, 0, 0, 0, 0]), Err(PacError::Container));
    let mut none = Vec::new();
    u32s(&mut none, &[0, 0]);
    assert_eq!(group_sids(&none), Err(PacError::NoLogonInfo));
}

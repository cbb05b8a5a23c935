//! The group SIDs of an Active Directory ticket's PAC: what the DC says the client
//! belongs to, read from the ticket the relay decrypted, with no directory round trip.
//!
//! A PAC (AD-WIN2K-PAC inside AD-IF-RELEVANT in the ticket's authorization data) is a
//! list of typed buffers; its LOGON_INFO buffer is a KERB_VALIDATION_INFO in NDR (type
//! serialization version 1), which nothing the relay links reads. (picky-krb's PAC type
//! refuses buffer types newer than it knows, which Samba and Windows send, and sizes an
//! allocation from the input's buffer count, so the few lines of the list are here.) This reads
//! only what membership needs: the domain SID with the group RIDs (GroupIds), the extra
//! SIDs (nested domain-local and universal groups, SID history) and the resource group
//! domain with its RIDs. Every count and offset is bounded by the buffer; a malformed
//! PAC is an error, never a panic or an allocation the input sized.

use picky_krb::data_types::AuthorizationData;

use crate::identity::Sid;

/// AD-IF-RELEVANT and AD-WIN2K-PAC, the authorization data types.
const AD_IF_RELEVANT: u8 = 1;
const AD_WIN2K_PAC: u8 = 128;
/// The PAC buffer type of LOGON_INFO.
const LOGON_INFO: u32 = 1;
/// At most this many SIDs of one kind: far above any real token (Windows caps a token
/// at 1024 groups), low enough that a hostile count cannot make work.
const MAX_SIDS: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacError {
    #[error("the PAC's buffer list is malformed")]
    Container,
    #[error("the PAC has no LOGON_INFO buffer")]
    NoLogonInfo,
    #[error("the PAC's LOGON_INFO is malformed: {0}")]
    Malformed(&'static str),
}

/// The PAC in a ticket's authorization data, if it carries one (MIT's KDC adds none).
pub fn find_pac(data: &AuthorizationData) -> Option<Vec<u8>> {
    for entry in &data.0 {
        let kind = entry.ad_type.0 .0.as_slice();
        let bytes = &entry.ad_data.0 .0;
        match kind {
            [AD_WIN2K_PAC] | [0, AD_WIN2K_PAC] => return Some(bytes.clone()),
            [AD_IF_RELEVANT] => {
                let inner: AuthorizationData = match picky_asn1_der::from_bytes(bytes) {
                    Ok(inner) => inner,
                    Err(_) => continue,
                };
                // One level only: AD-IF-RELEVANT does not nest in tickets a DC issues.
                let found = inner
                    .0
                    .iter()
                    .find(|e| matches!(e.ad_type.0 .0.as_slice(), [AD_WIN2K_PAC] | [0, AD_WIN2K_PAC]));
                if let Some(e) = found {
                    return Some(e.ad_data.0 .0.clone());
                }
            }
            _ => {}
        }
    }
    None
}

/// Every group SID the PAC gives the client: domain groups, extra SIDs, resource groups.
pub fn group_sids(pac: &[u8]) -> Result<Vec<Sid>, PacError> {
    logon_info_sids(logon_info(pac)?)
}

/// UserAccountControl of the PAC's LOGON_INFO (USER_NOT_DELEGATED and the other
/// account flags): a fixed-size field, 164 bytes into KERB_VALIDATION_INFO, which
/// follows the NDR type headers (8 + 8) and the top-level referent (4).
pub fn user_account_control(pac: &[u8]) -> Result<u32, PacError> {
    const AT: usize = 20 + 164;
    let info = logon_info(pac)?;
    let bytes = info
        .get(AT..AT + 4)
        .ok_or(PacError::Malformed("shorter than its UserAccountControl"))?;
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(word))
}

/// The LOGON_INFO buffer of a PACTYPE: a count, a version (0), then (type, size, offset)
/// for each buffer.
fn logon_info(pac: &[u8]) -> Result<&[u8], PacError> {
    let word = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(pac.get(at..at + 4)?.try_into().ok()?)) };
    let count = word(0).ok_or(PacError::Container)?;
    if word(4) != Some(0) {
        return Err(PacError::Container);
    }
    for i in 0..usize::try_from(count).map_err(|_| PacError::Container)? {
        let at = 8 + i * 16;
        let (Some(kind), Some(size), Some(low), Some(high)) = (word(at), word(at + 4), word(at + 8), word(at + 12))
        else {
            return Err(PacError::Container);
        };
        if kind != LOGON_INFO {
            continue;
        }
        let offset = (u64::from(high) << 32) | u64::from(low);
        let start = usize::try_from(offset).map_err(|_| PacError::Container)?;
        let end = start.checked_add(usize::try_from(size).map_err(|_| PacError::Container)?);
        return end.and_then(|end| pac.get(start..end)).ok_or(PacError::Container);
    }
    Err(PacError::NoLogonInfo)
}

/// The SIDs of a LOGON_INFO buffer (NDR-serialized KERB_VALIDATION_INFO).
pub fn logon_info_sids(buffer: &[u8]) -> Result<Vec<Sid>, PacError> {
    // Common header (version 1, little-endian, 8 bytes) and private header (8 bytes).
    let body = match buffer {
        [1, 0x10, ..] if buffer.len() >= 16 => &buffer[16..],
        _ => return Err(PacError::Malformed("not a little-endian NDR type serialization")),
    };
    let mut r = Reader { data: body, at: 0 };
    r.u32()?; // referent of the top-level pointer
              // The fixed part, in field order; a pointer is a 4-byte referent, 0 for null.
    r.skip(6 * 8)?; // six FILETIMEs
    let mut strings = Vec::new();
    for _ in 0..6 {
        strings.push(r.unicode_string_header()?);
    }
    r.skip(4)?; // LogonCount, BadPasswordCount
    r.skip(4)?; // UserId
    let primary_group = r.u32()?;
    let group_count = r.u32()?;
    let group_ids = r.u32()?;
    r.skip(4 + 16)?; // UserFlags, UserSessionKey
    let logon_strings = [r.unicode_string_header()?, r.unicode_string_header()?];
    let logon_domain_id = r.u32()?;
    r.skip(8 + 4 + 4 + 8 + 8 + 4 + 4)?; // Reserved1, UAC, SubAuthStatus, two FILETIMEs, count, Reserved3
    let sid_count = r.u32()?;
    let extra_sids = r.u32()?;
    let resource_domain = r.u32()?;
    let resource_count = r.u32()?;
    let resource_ids = r.u32()?;

    // The deferred data, in the order of the pointers above.
    for present in strings {
        if present {
            r.unicode_string_body()?;
        }
    }
    let groups = if group_ids != 0 {
        r.rid_array(group_count)?
    } else {
        Vec::new()
    };
    for present in logon_strings {
        if present {
            r.unicode_string_body()?;
        }
    }
    let domain = if logon_domain_id != 0 { Some(r.sid()?) } else { None };
    let mut out = Vec::new();
    if extra_sids != 0 {
        let count = r.conformant_count(sid_count)?;
        let mut present = Vec::with_capacity(count);
        for _ in 0..count {
            let pointer = r.u32()?;
            r.skip(4)?; // Attributes
            present.push(pointer != 0);
        }
        for _ in present.into_iter().filter(|p| *p) {
            out.push(r.sid()?);
        }
    }
    if let Some(domain) = &domain {
        for rid in std::iter::once(primary_group).chain(groups) {
            out.push(domain.with_rid(rid));
        }
    }
    let resource_domain = if resource_domain != 0 { Some(r.sid()?) } else { None };
    if resource_ids != 0 {
        let rids = r.rid_array(resource_count)?;
        if let Some(domain) = &resource_domain {
            out.extend(rids.into_iter().map(|rid| domain.with_rid(rid)));
        }
    }
    Ok(out)
}

/// NDR (little-endian) from a byte slice; alignment is relative to the slice's start.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Result<(), PacError> {
        self.take(n).map(|_| ())
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PacError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len());
        let end = end.ok_or(PacError::Malformed("truncated"))?;
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn align4(&mut self) -> Result<(), PacError> {
        let pad = (4 - self.at % 4) % 4;
        self.skip(pad)
    }

    fn u32(&mut self) -> Result<u32, PacError> {
        self.align4()?;
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An RPC_UNICODE_STRING's fixed part: whether its buffer follows later.
    fn unicode_string_header(&mut self) -> Result<bool, PacError> {
        self.skip(4)?; // Length, MaximumLength
        Ok(self.u32()? != 0)
    }

    /// A conformant varying array of UTF-16 units, skipped.
    fn unicode_string_body(&mut self) -> Result<(), PacError> {
        let max = self.u32()?;
        let offset = self.u32()?;
        let actual = self.u32()?;
        if offset != 0 || actual > max {
            return Err(PacError::Malformed("string bounds"));
        }
        let bytes = usize::try_from(actual).map_err(|_| PacError::Malformed("string length"))? * 2;
        self.skip(bytes)
    }

    /// A conformant array's count, which must be the one the fixed part announced.
    fn conformant_count(&mut self, announced: u32) -> Result<usize, PacError> {
        let count = self.u32()?;
        if count != announced {
            return Err(PacError::Malformed("array count differs from the announced one"));
        }
        let count = usize::try_from(count).map_err(|_| PacError::Malformed("array count"))?;
        if count > MAX_SIDS {
            return Err(PacError::Malformed("too many groups"));
        }
        Ok(count)
    }

    /// An array of GROUP_MEMBERSHIP (RelativeId, Attributes): the RIDs.
    fn rid_array(&mut self, announced: u32) -> Result<Vec<u32>, PacError> {
        let count = self.conformant_count(announced)?;
        // Bounded by the input before anything is allocated for it.
        if count.saturating_mul(8) > self.data.len().saturating_sub(self.at) {
            return Err(PacError::Malformed("truncated"));
        }
        let mut rids = Vec::with_capacity(count);
        for _ in 0..count {
            rids.push(self.u32()?);
            self.skip(4)?;
        }
        Ok(rids)
    }

    /// An RPC_SID: its conformance count, then revision, count, authority and sub-authorities.
    fn sid(&mut self) -> Result<Sid, PacError> {
        let conformance = self.u32()?;
        let head = self.take(8)?;
        let (revision, count) = (head[0], head[1]);
        if revision != 1 || u32::from(count) != conformance || count > 15 {
            return Err(PacError::Malformed("SID"));
        }
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(self.take(4 * usize::from(count))?);
        Ok(Sid::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests;

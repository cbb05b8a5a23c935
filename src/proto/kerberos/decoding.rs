//! Reading what KDCs and peers send, without trusting it: picky's decoders behind the
//! panic guard, a KDC reply's encrypted part, Kerberos times.

use std::time::{Duration, SystemTime};

use picky_krb::crypto::CipherSuite;
use picky_krb::data_types::KerberosTime;
use picky_krb::messages::{EncAsRepPart, EncKdcRepPart, EncTgsRepPart};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::proto::guard::contain_panic;

/// Decodes `T`, which must be the whole message; picky's decoders have panicked on
/// malformed input before, so a panic is a decoding failure like any other.
pub(crate) fn decode<T: DeserializeOwned>(der: &[u8]) -> Option<T> {
    contain_panic(|| picky_asn1_der::from_bytes::<T>(der).ok())
        .ok()
        .flatten()
}

/// A KDC reply's encrypted part; MIT sends EncTGSRepPart in AS-REPs too, which
/// Kerberos allows, so either tag is taken.
pub(crate) fn decrypt_rep_part(suite: &CipherSuite, key: &[u8], usage: i32, cipher: &[u8]) -> Option<EncKdcRepPart> {
    let plain = Zeroizing::new(
        contain_panic(|| suite.cipher().decrypt(key, usage, cipher))
            .ok()?
            .ok()?,
    );
    decode::<EncAsRepPart>(&plain)
        .map(|p| p.0)
        .or_else(|| decode::<EncTgsRepPart>(&plain).map(|p| p.0))
}

pub(crate) fn system_time(time: &KerberosTime) -> Option<SystemTime> {
    let at = time::OffsetDateTime::try_from(time.0.clone()).ok()?;
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

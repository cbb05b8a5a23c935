//! MIT keytab files (format 0x0502, what `ktutil`, `kadmin ktadd` and
//! Windows' `ktpass` write): the relay's service keys for accepting Kerberos.
//!
//! A keytab is a 2-byte version, then records of a signed 32-bit size and the
//! entry; a negative size is a hole left by a removed entry. An entry is the
//! principal (component count, realm, components, name type), a timestamp,
//! an 8-bit key version, the key (enctype, bytes) and, since krb5 1.14, a
//! 32-bit key version that wins over the 8-bit one when present and nonzero.
//! All integers are big-endian.

use std::fmt;

use zeroize::Zeroizing;

/// The enctypes picky-krb (sspi's Kerberos) can decrypt tickets with.
pub const AES256_CTS_HMAC_SHA1_96: i32 = 18;
pub const AES128_CTS_HMAC_SHA1_96: i32 = 17;

/// A keytab holds a handful of keys; a file claiming thousands is not one.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeytabError {
    #[error("not a keytab: it is empty")]
    Empty,
    #[error("not an MIT keytab of format 0x0502 (starts with {0:02x}{1:02x})")]
    Version(u8, u8),
    #[error("entry {entry} (at byte {offset}) is cut short or malformed: {what}")]
    Malformed {
        entry: usize,
        offset: usize,
        what: &'static str,
    },
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
}

/// A principal as a keytab names it: `HTTP/relay.lab.test@LAB.TEST`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeytabPrincipal {
    pub components: Vec<String>,
    pub realm: String,
}

impl fmt::Display for KeytabPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.components.join("/"), self.realm)
    }
}

/// One key of a keytab. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeytabEntry {
    pub principal: KeytabPrincipal,
    pub kvno: u32,
    pub enctype: i32,
    pub key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for KeytabEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeytabEntry")
            .field("principal", &self.principal.to_string())
            .field("kvno", &self.kvno)
            .field("enctype", &enctype_name(self.enctype))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The name `klist -e` and `kadmin -e` use for an enctype.
pub fn enctype_name(enctype: i32) -> String {
    match enctype {
        AES256_CTS_HMAC_SHA1_96 => "aes256-cts-hmac-sha1-96".into(),
        AES128_CTS_HMAC_SHA1_96 => "aes128-cts-hmac-sha1-96".into(),
        19 => "aes128-cts-hmac-sha256-128".into(),
        20 => "aes256-cts-hmac-sha384-192".into(),
        23 => "arcfour-hmac (RC4)".into(),
        24 => "arcfour-hmac-exp (RC4)".into(),
        16 => "des3-cbc-sha1".into(),
        1 => "des-cbc-crc".into(),
        3 => "des-cbc-md5".into(),
        other => format!("enctype {other}"),
    }
}

/// Parses a whole keytab file. Holes are skipped; any other inconsistency is
/// an error naming the entry, never a partial result.
pub fn parse_keytab(data: &[u8]) -> Result<Vec<KeytabEntry>, KeytabError> {
    match data {
        [] => return Err(KeytabError::Empty),
        [0x05, 0x02, ..] => {}
        [a, b, ..] => return Err(KeytabError::Version(*a, *b)),
        [a] => return Err(KeytabError::Version(*a, 0)),
    }
    let mut entries = Vec::new();
    let mut at = 2;
    let mut index = 0;
    while at < data.len() {
        index += 1;
        let start = at;
        let malformed = |what| KeytabError::Malformed {
            entry: index,
            offset: start,
            what,
        };
        let size = data
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| malformed("record size"))?;
        at += 4;
        // A zero size ends the file (MIT writes none, but pads nothing after it either).
        if size == 0 {
            break;
        }
        let len = size.unsigned_abs() as usize;
        let record = data
            .get(at..at + len)
            .ok_or_else(|| malformed("record longer than the file"))?;
        if size > 0 {
            if entries.len() == MAX_ENTRIES {
                return Err(KeytabError::TooManyEntries);
            }
            entries.push(parse_entry(record).map_err(malformed)?);
        }
        at += len;
    }
    Ok(entries)
}

fn parse_entry(record: &[u8]) -> Result<KeytabEntry, &'static str> {
    let mut r = Reader { data: record, at: 0 };
    let count = r.u16().ok_or("component count")?;
    if count == 0 {
        return Err("principal without components");
    }
    let realm = r.string().ok_or("realm")?;
    let mut components = Vec::with_capacity(usize::from(count).min(8));
    for _ in 0..count {
        components.push(r.string().ok_or("principal component")?);
    }
    let _name_type = r.u32().ok_or("name type")?;
    let _timestamp = r.u32().ok_or("timestamp")?;
    let kvno8 = r.u8().ok_or("key version")?;
    let enctype = r.u16().ok_or("enctype")?;
    let key_len = r.u16().ok_or("key length")?;
    let key = Zeroizing::new(r.bytes(usize::from(key_len)).ok_or("key")?.to_vec());
    // The 32-bit key version, when the entry carries one: it is what counts
    // for key versions above 255.
    let kvno = match r.u32() {
        Some(kvno32) if kvno32 != 0 => kvno32,
        _ => u32::from(kvno8),
    };
    Ok(KeytabEntry {
        principal: KeytabPrincipal { components, realm },
        kvno,
        enctype: i32::from(enctype),
        key,
    })
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A counted octet string, as text: principal names are ASCII in practice.
    fn string(&mut self) -> Option<String> {
        let len = self.u16()?;
        let bytes = self.bytes(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// The key sspi's acceptor gets for one principal: the current key version
/// (the KDC encrypts new tickets with it), AES256 over AES128 (a KDC picks the
/// strongest enctype the account has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKey<'a> {
    pub principal: &'a KeytabPrincipal,
    pub entry: &'a KeytabEntry,
}

/// What a keytab says about one principal for which no key can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusablePrincipal {
    pub principal: KeytabPrincipal,
    pub kvno: u32,
    /// The enctypes it has at that key version, none of them AES.
    pub enctypes: Vec<i32>,
}

impl fmt::Display for UnusablePrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.enctypes.iter().map(|e| enctype_name(*e)).collect();
        write!(
            f,
            "{} has no AES key at its current key version {} (only {})",
            self.principal,
            self.kvno,
            names.join(", ")
        )
    }
}

/// Picks one key per principal, in the order principals first appear; and
/// the principals that have no AES key at their highest key version.
pub fn service_keys(entries: &[KeytabEntry]) -> (Vec<ServiceKey<'_>>, Vec<UnusablePrincipal>) {
    let mut principals: Vec<&KeytabPrincipal> = Vec::new();
    for entry in entries {
        if !principals.contains(&&entry.principal) {
            principals.push(&entry.principal);
        }
    }
    let mut keys = Vec::new();
    let mut unusable = Vec::new();
    for principal in principals {
        let of_principal = || entries.iter().filter(move |e| &e.principal == principal);
        let Some(kvno) = of_principal().map(|e| e.kvno).max() else {
            continue;
        };
        let current = || of_principal().filter(move |e| e.kvno == kvno);
        let best = [AES256_CTS_HMAC_SHA1_96, AES128_CTS_HMAC_SHA1_96]
            .iter()
            .find_map(|want| current().find(|e| e.enctype == *want));
        match best {
            Some(entry) => keys.push(ServiceKey { principal, entry }),
            None => unusable.push(UnusablePrincipal {
                principal: principal.clone(),
                kvno,
                enctypes: current().map(|e| e.enctype).collect(),
            }),
        }
    }
    (keys, unusable)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ktutil addent -key`: HTTP/web11 at kvno 3 (AES256, AES128) and 2 (AES256), HTTP/legacy with RC4
    /// only, WSMAN/web11 at kvno 300 (AES128). Known keys.
    const KTUTIL: &[u8] = include_bytes!("fixtures/ktutil.keytab");
    /// `kadmin.local ktadd -e aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal` of
    /// HTTP/relay.lab.test and WSMAN/relay.lab.test.
    const KADMIN: &[u8] = include_bytes!("fixtures/kadmin.keytab");
    /// HTTP/rekeyed.lab.test exported twice, then `ktremove ... old`: holes where kvno 2 was.
    const REKEYED: &[u8] = include_bytes!("fixtures/kadmin-rekeyed.keytab");

    fn names(entries: &[KeytabEntry]) -> Vec<(String, u32, i32)> {
        entries
            .iter()
            .map(|e| (e.principal.to_string(), e.kvno, e.enctype))
            .collect()
    }

    #[test]
    fn ktutil_keytab() {
        let entries = parse_keytab(KTUTIL).unwrap();
        assert_eq!(
            names(&entries),
            [
                ("HTTP/web11.lab.test@LAB.TEST".to_string(), 3, 18),
                ("HTTP/web11.lab.test@LAB.TEST".to_string(), 3, 17),
                ("HTTP/web11.lab.test@LAB.TEST".to_string(), 2, 18),
                ("HTTP/legacy.lab.test@LAB.TEST".to_string(), 5, 23),
                ("WSMAN/web11.lab.test@LAB.TEST".to_string(), 300, 17),
            ]
        );
        assert_eq!(entries[0].key.as_slice(), (0u8..32).collect::<Vec<_>>());
        assert_eq!(entries[0].principal.components, ["HTTP", "web11.lab.test"]);
        assert_eq!(entries[0].principal.realm, "LAB.TEST");
        assert_eq!(
            hex::encode(entries[4].key.as_slice()),
            "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
        );
    }

    #[test]
    fn kadmin_keytab() {
        let entries = parse_keytab(KADMIN).unwrap();
        assert_eq!(
            names(&entries),
            [
                ("HTTP/relay.lab.test@LAB.TEST".to_string(), 2, 18),
                ("HTTP/relay.lab.test@LAB.TEST".to_string(), 2, 17),
                ("WSMAN/relay.lab.test@LAB.TEST".to_string(), 2, 18),
                ("WSMAN/relay.lab.test@LAB.TEST".to_string(), 2, 17),
            ]
        );
        assert_eq!(
            hex::encode(entries[0].key.as_slice()),
            "55d7369b8009c52b9dd3e4828245689eb32530a729ec4958894e21214d0d4e3b"
        );
    }

    #[test]
    fn holes_of_removed_entries_are_skipped() {
        let entries = parse_keytab(REKEYED).unwrap();
        assert_eq!(
            names(&entries),
            [
                ("HTTP/rekeyed.lab.test@LAB.TEST".to_string(), 3, 18),
                ("HTTP/rekeyed.lab.test@LAB.TEST".to_string(), 3, 17),
            ]
        );
        assert_eq!(
            hex::encode(entries[1].key.as_slice()),
            "9d391d161b266111c5325f83343067be"
        );
    }

    #[test]
    fn one_key_per_principal_current_version_aes256_first() {
        let entries = parse_keytab(KTUTIL).unwrap();
        let (keys, unusable) = service_keys(&entries);
        let picked: Vec<(String, u32, i32)> = keys
            .iter()
            .map(|k| (k.principal.to_string(), k.entry.kvno, k.entry.enctype))
            .collect();
        assert_eq!(
            picked,
            [
                ("HTTP/web11.lab.test@LAB.TEST".to_string(), 3, 18),
                ("WSMAN/web11.lab.test@LAB.TEST".to_string(), 300, 17),
            ]
        );
        assert_eq!(unusable.len(), 1);
        assert_eq!(
            unusable[0].to_string(),
            "HTTP/legacy.lab.test@LAB.TEST has no AES key at its current key version 5 (only arcfour-hmac (RC4))"
        );
    }

    #[test]
    fn an_older_aes_key_does_not_stand_in_for_the_current_version() {
        let mut entries = parse_keytab(KTUTIL).unwrap();
        // HTTP/web11 rekeyed to kvno 4 with RC4 only: its kvno 3 AES keys no longer decrypt new tickets.
        let mut rc4 = entries[3].clone();
        rc4.principal = entries[0].principal.clone();
        rc4.kvno = 4;
        entries.push(rc4);
        let (keys, unusable) = service_keys(&entries);
        assert!(keys.iter().all(|k| k.principal != &entries[0].principal));
        assert!(unusable
            .iter()
            .any(|u| u.principal == entries[0].principal && u.kvno == 4));
    }

    #[test]
    fn malformed_keytabs_are_refused_whole() {
        assert_eq!(parse_keytab(&[]), Err(KeytabError::Empty));
        assert_eq!(parse_keytab(&[0x05, 0x01, 0, 0]), Err(KeytabError::Version(5, 1)));
        assert!(matches!(parse_keytab(b"# users file"), Err(KeytabError::Version(..))));
        assert_eq!(parse_keytab(&[0x05, 0x02]), Ok(Vec::new()));
        // Every truncation of a real keytab is refused (or, cut at a record boundary, yields fewer entries).
        for cut in 3..KTUTIL.len() {
            match parse_keytab(&KTUTIL[..cut]) {
                Err(KeytabError::Malformed { .. }) => {}
                Ok(entries) => assert!(entries.len() < 5, "cut at {cut}"),
                Err(other) => panic!("cut at {cut}: {other}"),
            }
        }
        // A record size past the end, and an entry whose key length overruns its record.
        let mut long = KTUTIL.to_vec();
        long[2..6].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        assert!(matches!(
            parse_keytab(&long),
            Err(KeytabError::Malformed { entry: 1, .. })
        ));
        let mut overrun = KTUTIL.to_vec();
        let key_len_at = 2 + 4 + 2 + 2 + 8 + 2 + 4 + 2 + 14 + 4 + 4 + 1 + 2;
        overrun[key_len_at..key_len_at + 2].copy_from_slice(&0x00ffu16.to_be_bytes());
        let e = parse_keytab(&overrun).unwrap_err();
        assert_eq!(e.to_string(), "entry 1 (at byte 2) is cut short or malformed: key");
    }

    #[test]
    fn debug_never_prints_a_key() {
        let entries = parse_keytab(KTUTIL).unwrap();
        let printed = format!("{:?}", entries[0]);
        assert!(
            printed.contains("HTTP/web11.lab.test@LAB.TEST") && printed.contains("<redacted>"),
            "{printed}"
        );
        assert!(
            !printed.contains("0, 1, 2, 3") && !printed.contains("000102"),
            "{printed}"
        );
    }
}

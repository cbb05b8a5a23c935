//! The relay's keytab file (`[kerberos] keytab`): read with the same care
//! as the users file (refused when group or others can read it: it holds
//! keys that let anyone holding them impersonate the relay to every caller),
//! parsed, and reduced to the one key per service principal sspi's acceptor
//! takes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::proto::credssp::ServiceKey;
use crate::proto::kerberos::keytab::{enctype_name, parse_keytab, service_keys, KeytabError, UnusablePrincipal};
use crate::proto::kerberos::s4u::RelayAccount;

/// A keytab larger than this is not one (a keytab holds a few keys of a few
/// dozen bytes each).
const MAX_KEYTAB_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KeytabFileError {
    #[error("{}: cannot read keytab: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{}: keytab is readable by group or others (mode {mode:o}); its keys impersonate the relay: chmod 600 it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: keytab is larger than {MAX_KEYTAB_BYTES} bytes: not a keytab", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: KeytabError },
    #[error(
        "{}: no account principal of {realm} (one name, as svc-relay@{realm}): constrained delegation needs the \
         relay account's own key; add it (samba-tool domain exportkeytab --principal=svc-relay@{realm}, or ktpass \
         /princ svc-relay@{realm})",
        path.display()
    )]
    NoAccount { path: PathBuf, realm: String },
    #[error(
        "{}: no usable key: the relay needs AES keys (aes256-cts-hmac-sha1-96 or aes128-cts-hmac-sha1-96) for its \
         service principals ({detail})",
        path.display()
    )]
    NoUsableKey { path: PathBuf, detail: String },
}

/// What a keytab gives the relay, and what in it the relay cannot use.
#[derive(Debug)]
pub struct RelayKeytab {
    pub keys: Vec<ServiceKey>,
    /// The relay's own account (`svc-relay@REALM`, one name component), whose key
    /// gets the relay a TGT for constrained delegation; `None` for a keytab of SPNs only.
    pub account: Option<RelayAccount>,
    /// One line per usable principal: `HTTP/relay.lab.test@LAB.TEST: kvno 2, aes256-cts-hmac-sha1-96`.
    pub principals: Vec<String>,
    /// Problems that do not stop the relay: principals without AES keys, of
    /// another realm.
    pub warnings: Vec<String>,
}

/// Reads and checks `path`; `realm` is the configured `[kerberos] realm`.
pub fn load_keytab(path: &Path, realm: &str) -> Result<RelayKeytab, KeytabFileError> {
    let io = |source| KeytabFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // fstat on the opened file, so the checked file is the one read.
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeytabFileError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    if metadata.len() > MAX_KEYTAB_BYTES {
        return Err(KeytabFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut data = Zeroizing::new(Vec::with_capacity(metadata.len() as usize));
    file.read_to_end(&mut data).map_err(io)?;
    let entries = parse_keytab(&data).map_err(|source| KeytabFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let (usable, unusable) = service_keys(&entries);
    let mut warnings: Vec<String> = unusable.iter().map(UnusablePrincipal::to_string).collect();
    if usable.is_empty() {
        let detail = if entries.is_empty() {
            "the keytab is empty".to_string()
        } else {
            warnings.join("; ")
        };
        return Err(KeytabFileError::NoUsableKey {
            path: path.to_path_buf(),
            detail,
        });
    }
    let mut keys = Vec::new();
    let mut principals = Vec::new();
    for key in usable {
        if !key.principal.realm.eq_ignore_ascii_case(realm) {
            warnings.push(format!(
                "{} is not of the realm {realm}: tickets for it come from another domain",
                key.principal
            ));
        }
        principals.push(format!(
            "{}: kvno {}, {}",
            key.principal,
            key.entry.kvno,
            enctype_name(key.entry.enctype)
        ));
        keys.push(ServiceKey {
            components: key.principal.components.clone(),
            key: key.entry.key.clone(),
        });
    }
    Ok(RelayKeytab {
        keys,
        account: RelayAccount::from_keytab(&entries, realm),
        principals,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KTUTIL: &[u8] = include_bytes!("../proto/kerberos/fixtures/ktutil.keytab");

    fn write(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        path
    }

    #[test]
    fn keys_principals_and_warnings() {
        let dir = crate::config::test_dir("keytab-load");
        let path = write(&dir, "relay.keytab", KTUTIL, 0o600);
        let keytab = load_keytab(&path, "LAB.TEST").unwrap();
        assert_eq!(
            keytab.principals,
            [
                "HTTP/web11.lab.test@LAB.TEST: kvno 3, aes256-cts-hmac-sha1-96",
                "WSMAN/web11.lab.test@LAB.TEST: kvno 300, aes128-cts-hmac-sha1-96",
            ]
        );
        assert_eq!(keytab.keys.len(), 2);
        assert_eq!(keytab.keys[0].components, ["HTTP", "web11.lab.test"]);
        assert_eq!(keytab.keys[0].key.as_slice(), (0u8..32).collect::<Vec<_>>());
        assert_eq!(keytab.warnings.len(), 1);
        assert!(keytab.warnings[0].starts_with("HTTP/legacy.lab.test@LAB.TEST has no AES key"));
        let other = load_keytab(&path, "OTHER.TEST").unwrap();
        assert!(other
            .warnings
            .iter()
            .any(|w| w.contains("is not of the realm OTHER.TEST")));
        assert!(!format!("{:?}", keytab.keys).contains("000102"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_relay_account_for_constrained_delegation() {
        let dir = crate::config::test_dir("keytab-account");
        let samba = include_bytes!("../proto/kerberos/fixtures/s4u/relay.keytab");
        let path = write(&dir, "relay.keytab", samba, 0o600);
        let keytab = load_keytab(&path, "LAB.TEST").unwrap();
        assert_eq!(
            keytab.account.map(|a| a.display()).as_deref(),
            Some("svc-relay@LAB.TEST")
        );
        // SPNs only: no account to delegate with.
        let spns = write(&dir, "spns.keytab", KTUTIL, 0o600);
        assert!(load_keytab(&spns, "LAB.TEST").unwrap().account.is_none());
        let error = KeytabFileError::NoAccount {
            path,
            realm: "LAB.TEST".into(),
        };
        assert!(error.to_string().contains("--principal=svc-relay@LAB.TEST"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refusals() {
        let dir = crate::config::test_dir("keytab-refusals");
        #[cfg(unix)]
        {
            let open = write(&dir, "open.keytab", KTUTIL, 0o640);
            let e = load_keytab(&open, "LAB.TEST").unwrap_err().to_string();
            assert!(
                e.contains("readable by group or others (mode 640)") && e.contains("chmod 600"),
                "{e}"
            );
        }
        let missing = load_keytab(&dir.join("nope"), "LAB.TEST").unwrap_err().to_string();
        assert!(missing.contains("cannot read keytab"), "{missing}");
        let garbage = write(&dir, "users", b"LAB\\alice:0123", 0o600);
        let e = load_keytab(&garbage, "LAB.TEST").unwrap_err().to_string();
        assert!(e.contains("not an MIT keytab"), "{e}");
        let empty = write(&dir, "empty.keytab", &[0x05, 0x02], 0o600);
        let e = load_keytab(&empty, "LAB.TEST").unwrap_err().to_string();
        assert!(e.contains("no usable key") && e.contains("the keytab is empty"), "{e}");
        // Only the RC4 entry of the fixture: its first record is 0x53 bytes plus the size, then two more
        // HTTP/web11 entries, then HTTP/legacy.
        let entries = parse_keytab(KTUTIL).unwrap();
        assert_eq!(entries[3].enctype, 23);
        let legacy_at = record_offset(KTUTIL, 3);
        let legacy_end = record_offset(KTUTIL, 4);
        let rc4_only = [&[0x05, 0x02][..], &KTUTIL[legacy_at..legacy_end]].concat();
        let rc4 = write(&dir, "rc4.keytab", &rc4_only, 0o600);
        let e = load_keytab(&rc4, "LAB.TEST").unwrap_err().to_string();
        assert!(e.contains("no usable key") && e.contains("arcfour-hmac"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Byte offset of record `n` (0-based) of a keytab without holes.
    fn record_offset(data: &[u8], n: usize) -> usize {
        let mut at = 2;
        for _ in 0..n {
            let size = i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            at += 4 + size.unsigned_abs() as usize;
        }
        at
    }
}

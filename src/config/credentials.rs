//! `credential:NAME`: a secret file (users file, keytab, audit HMAC key) read from the
//! directory systemd decrypts a service's `LoadCredentialEncrypted=` (or
//! `LoadCredential=`) files into, so that they can be kept encrypted at rest
//! (`systemd-creds encrypt`). systemd names that directory in `$CREDENTIALS_DIRECTORY`;
//! `credential:users` is the file `users` there, as `LoadCredentialEncrypted=users:...`
//! names it. A relative path that really starts with `credential:` is written `./credential:...`.

use std::ffi::OsString;
use std::path::PathBuf;

/// The variable systemd sets to the service's credentials directory.
pub(super) const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// What marks a value as a credential name instead of a path.
const PREFIX: &str = "credential:";

/// The file a secret's config value names: `None` for a plain path, else the credential's
/// file in `dir` (the value of `$CREDENTIALS_DIRECTORY`, if set), or why there is none.
pub(super) fn resolve(value: &str, dir: Option<OsString>) -> Result<Option<PathBuf>, String> {
    let Some(name) = value.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    // systemd's own rule for credential names: one file name, no directories.
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(format!(
            "{value:?}: expected credential:NAME with NAME a credential as LoadCredentialEncrypted=NAME:FILE \
             names it (a file name, no '/')"
        ));
    }
    let Some(dir) = dir.filter(|d| !d.is_empty()) else {
        return Err(format!(
            "{value:?} names a systemd credential, but ${CREDENTIALS_DIRECTORY} is not set: systemd sets it \
             for a service with LoadCredentialEncrypted={name}:<encrypted file> (or LoadCredential=); \
             outside such a service, name the file's path instead"
        ));
    };
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(format!(
            "{value:?}: ${CREDENTIALS_DIRECTORY} is {:?}, not an absolute path",
            dir.display().to_string()
        ));
    }
    Ok(Some(dir.join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_resolve_in_the_directory() {
        let dir = || Some(OsString::from("/run/credentials/winrm-relay.service"));
        assert_eq!(resolve("config/users", dir()), Ok(None));
        assert_eq!(resolve("./credential:users", None), Ok(None));
        assert_eq!(
            resolve("credential:users", dir()),
            Ok(Some(PathBuf::from("/run/credentials/winrm-relay.service/users")))
        );
        for bad in ["credential:", "credential:..", "credential:a/b", "credential:../users"] {
            let e = resolve(bad, dir()).unwrap_err();
            assert!(e.contains("expected credential:NAME"), "{bad}: {e}");
        }
        for unset in [None, Some(OsString::new())] {
            let e = resolve("credential:users", unset).unwrap_err();
            assert!(e.contains("$CREDENTIALS_DIRECTORY is not set"), "{e}");
            assert!(e.contains("LoadCredentialEncrypted=users:"), "{e}");
        }
        let e = resolve("credential:users", Some("run/creds".into())).unwrap_err();
        assert!(e.contains("not an absolute path"), "{e}");
    }
}

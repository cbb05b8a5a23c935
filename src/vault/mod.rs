//! Delegated credentials received through CredSSP.
//!
//! They live only in memory, inside the session that received them: the
//! password is a [`SecretString`] (zeroized on drop), `Debug` never prints it,
//! and nothing here can serialize or clone it into a plain `String`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// The caller's identity and password as delegated in TSCredentials.
pub struct DelegatedCredentials {
    domain: String,
    user: String,
    password: SecretString,
}

impl DelegatedCredentials {
    pub fn new(domain: impl Into<String>, user: impl Into<String>, password: SecretString) -> Self {
        Self {
            domain: domain.into(),
            user: user.into(),
            password,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// `DOMAIN\user`, the form policy rules and the audit log use.
    pub fn principal(&self) -> String {
        format!("{}\\{}", self.domain, self.user)
    }

    /// The password, for the one place that needs it: building the
    /// authentication identity towards a target.
    pub fn expose_password(&self) -> &str {
        self.password.expose_secret()
    }
}

impl fmt::Debug for DelegatedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedCredentials")
            .field("domain", &self.domain)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The session's credential slot: filled once authentication completes,
/// wiped when the session ends (or earlier, on demand).
#[derive(Debug, Default)]
pub struct Vault {
    entry: Option<DelegatedCredentials>,
}

impl Vault {
    pub fn store(&mut self, credentials: DelegatedCredentials) {
        self.entry = Some(credentials);
    }

    pub fn get(&self) -> Option<&DelegatedCredentials> {
        self.entry.as_ref()
    }

    /// Drop the credentials now; `SecretString` zeroizes the password buffer.
    pub fn wipe(&mut self) {
        self.entry = None;
    }

    pub fn is_empty(&self) -> bool {
        self.entry.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_password() {
        let creds = DelegatedCredentials::new("LAB", "alice", SecretString::from("hunter2-distinctive"));
        let mut vault = Vault::default();
        vault.store(creds);
        let printed = format!("{vault:?} {:?}", vault.get());
        assert!(!printed.contains("hunter2-distinctive"), "{printed}");
        assert!(printed.contains("alice"));
    }

    #[test]
    fn wipe_empties_the_vault() {
        let mut vault = Vault::default();
        vault.store(DelegatedCredentials::new("LAB", "alice", SecretString::from("x")));
        assert_eq!(vault.get().map(|c| c.principal()), Some("LAB\\alice".to_string()));
        vault.wipe();
        assert!(vault.is_empty());
    }
}

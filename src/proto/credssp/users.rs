//! The relay's known users, offered to sspi's NTLM verifier as NT hashes.

use std::io;
use std::sync::{Arc, Mutex};

use md4::{Digest, Md4};
use sspi::credssp::CredentialsProxy;
use sspi::{AuthIdentity, Secret, Username, UsernameParts};
use zeroize::Zeroizing;

/// One entry of the users file.
pub struct UserHash {
    pub domain: String,
    pub user: String,
    pub nt_hash: Zeroizing<[u8; 16]>,
}

impl std::fmt::Debug for UserHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserHash({}\\{}, <redacted>)", self.domain, self.user)
    }
}

/// NT hash (NTLM's NTOWFv1): MD4 over the UTF-16LE password.
pub fn nt_hash(password: &str) -> Zeroizing<[u8; 16]> {
    let utf16: Zeroizing<Vec<u8>> = Zeroizing::new(password.encode_utf16().flat_map(|u| u.to_le_bytes()).collect());
    let mut hasher = Md4::new();
    hasher.update(utf16.as_slice());
    let mut out = Zeroizing::new([0u8; 16]);
    out.copy_from_slice(&hasher.finalize());
    out
}

/// Constant-time comparison, so hash checks leak nothing through timing.
pub fn hashes_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `DOMAIN\user` as it authenticated on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub domain: String,
    pub user: String,
}

impl Principal {
    /// Accepts the down-level `DOMAIN\user` and the UPN `user@DOMAIN` forms.
    pub fn from_parts(domain: Option<&str>, account: &str) -> Principal {
        match domain.filter(|d| !d.is_empty()) {
            Some(domain) => Principal {
                domain: domain.to_string(),
                user: account.to_string(),
            },
            None => match account.split_once('@') {
                Some((user, domain)) => Principal {
                    domain: domain.to_string(),
                    user: user.to_string(),
                },
                None => Principal {
                    domain: String::new(),
                    user: account.to_string(),
                },
            },
        }
    }

    /// From sspi's parsed user name. A UPN's suffix stands in for the domain:
    /// it only matches a users-file entry written with that same suffix.
    pub fn from_username(name: &Username) -> Principal {
        match name.parts() {
            UsernameParts::UserPrincipalName(upn) => Principal {
                domain: upn.suffix().to_string(),
                user: upn.account_name().to_string(),
            },
            UsernameParts::DownLevelLogonName(dll) => Principal::from_parts(dll.netbios_domain(), dll.account_name()),
        }
    }

    /// `DOMAIN\user` or `user@DOMAIN`, as typed into a client.
    pub fn parse(name: &str) -> Principal {
        match name.split_once('\\') {
            Some((domain, user)) => Principal {
                domain: domain.to_string(),
                user: user.to_string(),
            },
            None => Principal::from_parts(None, name),
        }
    }

    pub fn matches(&self, other: &Principal) -> bool {
        self.domain.eq_ignore_ascii_case(&other.domain) && self.user.eq_ignore_ascii_case(&other.user)
    }

    pub fn display(&self) -> String {
        format!("{}\\{}", self.domain, self.user)
    }
}

/// The users-file entry of `who` if `password` is theirs (constant-time
/// hash comparison). For Basic over HTTPS, where the password arrives whole.
pub fn verify_password<'a>(users: &'a [UserHash], who: &Principal, password: &str) -> Option<&'a UserHash> {
    let entry = find(users, who)?;
    hashes_equal(&nt_hash(password), &entry.nt_hash).then_some(entry)
}

pub(crate) fn find<'a>(users: &'a [UserHash], who: &Principal) -> Option<&'a UserHash> {
    users
        .iter()
        .find(|u| u.domain.eq_ignore_ascii_case(&who.domain) && u.user.eq_ignore_ascii_case(&who.user))
}

fn to_auth_identity(entry: &UserHash) -> io::Result<AuthIdentity> {
    let username = Username::new(&entry.user, Some(&entry.domain))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let password = format!("{}{}", sspi::NTLM_HASH_PREFIX, hex::encode(entry.nt_hash.as_slice()));
    Ok(AuthIdentity {
        username,
        password: Secret::new(password),
    })
}

/// The CredentialsProxy sspi asks for candidate credentials. It also records
/// which principal the NTLM exchange claimed, because sspi checks a candidate's
/// hash against the *wire* user name (see [`super::Acceptor`]'s final check).
pub(crate) struct UsersProxy {
    pub users: Arc<[UserHash]>,
    pub claimed: Arc<Mutex<Option<Principal>>>,
}

impl CredentialsProxy for UsersProxy {
    type AuthenticationData = AuthIdentity;

    fn auth_data_by_user(&mut self, username: &Username) -> io::Result<AuthIdentity> {
        let who = Principal::from_username(username);
        if let Ok(mut claimed) = self.claimed.lock() {
            *claimed = Some(who.clone());
        }
        let entry = find(&self.users, &who).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown user"))?;
        to_auth_identity(entry)
    }

    fn auth_data(&mut self) -> io::Result<Vec<AuthIdentity>> {
        self.users.iter().map(to_auth_identity).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hash_vector() {
        // Well-known NT hash of "Password".
        assert_eq!(
            hex::encode(nt_hash("Password").as_slice()),
            "a4f49c406510bdcab6824ee7c30fd852"
        );
    }

    #[test]
    fn password_verification() {
        let users = vec![UserHash {
            domain: "LAB".into(),
            user: "alice".into(),
            nt_hash: nt_hash("pw"),
        }];
        let alice = Principal::parse("lab\\Alice");
        assert_eq!(alice.display(), "lab\\Alice");
        assert!(verify_password(&users, &alice, "pw").is_some());
        assert!(verify_password(&users, &alice, "PW").is_none());
        assert!(verify_password(&users, &Principal::parse("alice@LAB"), "pw").is_some());
        assert!(verify_password(&users, &Principal::parse("LAB\\bob"), "pw").is_none());
    }

    #[test]
    fn principal_forms() {
        let a = Principal::from_parts(Some("LAB"), "alice");
        let b = Principal::from_parts(None, "Alice@lab");
        assert!(a.matches(&b));
        assert!(!a.matches(&Principal::from_parts(Some("LAB"), "bob")));
        assert_eq!(a.display(), "LAB\\alice");
    }

    #[test]
    fn proxy_records_the_claimed_user_and_refuses_unknown_ones() {
        let users: Arc<[UserHash]> = vec![UserHash {
            domain: "LAB".into(),
            user: "alice".into(),
            nt_hash: nt_hash("pw"),
        }]
        .into();
        let claimed = Arc::new(Mutex::new(None));
        let mut proxy = UsersProxy {
            users,
            claimed: claimed.clone(),
        };
        let ghost = Username::new("ghost", Some("LAB")).unwrap();
        assert!(proxy.auth_data_by_user(&ghost).is_err());
        let alice = Username::new("ALICE", Some("lab")).unwrap();
        let identity = proxy.auth_data_by_user(&alice).unwrap();
        assert!(identity.password.as_ref().starts_with("$NTLM$:"));
        assert_eq!(claimed.lock().unwrap().as_ref().unwrap().user, "ALICE");
    }
}

//! The relay's known users, offered to sspi's NTLM verifier as NT hashes.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use md4::{Digest, Md4};
use sspi::credssp::CredentialsProxy;
use sspi::{AuthIdentity, Secret, Username, UsernameParts};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

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
    let mut digest = Md4::digest(utf16.as_slice());
    let mut out = Zeroizing::new([0u8; 16]);
    out.copy_from_slice(&digest);
    digest.as_mut_slice().zeroize();
    out
}

/// Constant-time comparison, so hash checks leak nothing through timing.
pub fn hashes_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    bool::from(a.ct_eq(b))
}

/// What an unknown user is checked against, so that refusing them costs what
/// refusing a known user does. Random per process: NTLM proves knowledge of
/// the hash, so a fixed one would let anyone pass NTLM under any unknown name.
fn dummy_nt_hash() -> &'static [u8; 16] {
    static DUMMY: OnceLock<[u8; 16]> = OnceLock::new();
    DUMMY.get_or_init(rand::random)
}

/// Why a logon was refused. For the audit only: the client gets the same
/// answer whatever the cause, so it cannot learn which names exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogonRefusal {
    #[error("unknown user")]
    UnknownUser,
    #[error("wrong password")]
    WrongPassword,
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

    /// The one name policy rules and the audit use for this principal: in the
    /// relay's own domain (`[kerberos]`), the NetBIOS form, so `alice@LAB.TEST`,
    /// `LAB.TEST\alice` and `LAB\alice` are all `LAB\alice`. Names of other
    /// domains, and every name without `[kerberos]`, stay as they are.
    pub fn canonical(self, names: Option<&DomainNames>) -> Principal {
        match names {
            Some(names)
                if self.domain.eq_ignore_ascii_case(&names.realm)
                    || self.domain.eq_ignore_ascii_case(&names.netbios) =>
            {
                Principal {
                    domain: names.netbios.clone(),
                    user: self.user,
                }
            }
            _ => self,
        }
    }

    pub fn matches(&self, other: &Principal) -> bool {
        self.domain.eq_ignore_ascii_case(&other.domain) && self.user.eq_ignore_ascii_case(&other.user)
    }

    pub fn display(&self) -> String {
        format!("{}\\{}", self.domain, self.user)
    }
}

/// The relay's own domain under both of its names (`[kerberos] realm` and
/// `netbios`): `alice@LAB.TEST` is `LAB\alice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainNames {
    /// The DNS name in upper case, as Kerberos spells it: `LAB.TEST`.
    pub realm: String,
    /// The NetBIOS name: `LAB`.
    pub netbios: String,
}

/// The users-file entry of `who` if `password` is theirs, else why not. For
/// Basic over HTTPS, where the password arrives whole. An unknown user costs
/// the same hash and constant-time comparison as a known one, so the answer
/// time does not tell which names are in the users file.
pub fn verify_password<'a>(
    users: &'a [UserHash],
    who: &Principal,
    password: &str,
) -> Result<&'a UserHash, LogonRefusal> {
    verify_with(users, who, password, nt_hash)
}

/// [`verify_password`] with the hash as a parameter, so a test can see that
/// every path does the same hashing work.
fn verify_with<'a>(
    users: &'a [UserHash],
    who: &Principal,
    password: &str,
    hash: impl Fn(&str) -> Zeroizing<[u8; 16]>,
) -> Result<&'a UserHash, LogonRefusal> {
    let entry = find(users, who);
    let expected = entry.map_or(dummy_nt_hash(), |e| &*e.nt_hash);
    let matches = hashes_equal(&hash(password), expected);
    match entry {
        Some(entry) if matches => Ok(entry),
        Some(_) => Err(LogonRefusal::WrongPassword),
        None => Err(LogonRefusal::UnknownUser),
    }
}

/// Looks at every entry, matching or not, so the lookup time does not
/// depend on where (or whether) the user is in the file.
pub(crate) fn find<'a>(users: &'a [UserHash], who: &Principal) -> Option<&'a UserHash> {
    users.iter().fold(None, |found, u| {
        let matches = u.domain.eq_ignore_ascii_case(&who.domain) && u.user.eq_ignore_ascii_case(&who.user);
        found.or(matches.then_some(u))
    })
}

fn to_auth_identity(entry: &UserHash) -> io::Result<AuthIdentity> {
    let username = Username::new(&entry.user, Some(&entry.domain))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(hash_identity(username, &entry.nt_hash))
}

/// sspi takes an NT hash as a password written `$NTLM$:<hex>`.
fn hash_identity(username: Username, nt_hash: &[u8; 16]) -> AuthIdentity {
    let password = format!("{}{}", sspi::NTLM_HASH_PREFIX, hex::encode(nt_hash));
    AuthIdentity {
        username,
        password: Secret::new(password),
    }
}

/// Who the NTLM exchange claimed to be, and whether the users file knows them.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub principal: Principal,
    pub known: bool,
}

/// The CredentialsProxy sspi asks for candidate credentials. It also records
/// which principal the NTLM exchange claimed, because sspi checks a candidate's
/// hash against the *wire* user name (see [`super::Acceptor`]'s final check).
pub(crate) struct UsersProxy {
    pub users: Arc<[UserHash]>,
    pub claimed: Arc<Mutex<Option<Claim>>>,
    pub names: Option<DomainNames>,
    /// A Kerberos exchange: sspi asks only once the ticket is verified, and the
    /// principal it names is who authenticated; the users file has no part.
    pub kerberos: bool,
}

impl CredentialsProxy for UsersProxy {
    type AuthenticationData = AuthIdentity;

    /// An unknown user gets a candidate that cannot match: sspi then does
    /// the same verification work and fails the same way as for a wrong
    /// password, and only the recorded claim tells the two apart.
    ///
    /// Under Kerberos the answer is the principal with no password: sspi
    /// needs an identity to carry on to the public-key exchange, not a secret.
    fn auth_data_by_user(&mut self, username: &Username) -> io::Result<AuthIdentity> {
        let who = Principal::from_username(username).canonical(self.names.as_ref());
        if self.kerberos {
            if let Ok(mut claimed) = self.claimed.lock() {
                *claimed = Some(Claim {
                    principal: who,
                    known: true,
                });
            }
            return Ok(AuthIdentity {
                username: username.clone(),
                password: Secret::new(String::new()),
            });
        }
        let entry = find(&self.users, &who);
        if let Ok(mut claimed) = self.claimed.lock() {
            *claimed = Some(Claim {
                principal: who,
                known: entry.is_some(),
            });
        }
        match entry {
            Some(entry) => to_auth_identity(entry),
            None => Ok(hash_identity(username.clone(), dummy_nt_hash())),
        }
    }

    fn auth_data(&mut self) -> io::Result<Vec<AuthIdentity>> {
        if self.kerberos {
            return Ok(Vec::new());
        }
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
        // The well-known hash of the empty password.
        assert_eq!(hex::encode(nt_hash("").as_slice()), "31d6cfe0d16ae931b73c59d7e0c089c0");
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
        assert_eq!(
            verify_password(&users, &alice, "pw").map(|e| e.user.as_str()),
            Ok("alice")
        );
        assert_eq!(
            verify_password(&users, &alice, "PW").err(),
            Some(LogonRefusal::WrongPassword)
        );
        assert!(verify_password(&users, &Principal::parse("alice@LAB"), "pw").is_ok());
        assert_eq!(
            verify_password(&users, &Principal::parse("LAB\\bob"), "pw").err(),
            Some(LogonRefusal::UnknownUser)
        );
    }

    #[test]
    fn unknown_users_cost_the_same_hashing_as_known_ones() {
        let users = vec![UserHash {
            domain: "LAB".into(),
            user: "alice".into(),
            nt_hash: nt_hash("pw"),
        }];
        let hashed = std::cell::RefCell::new(Vec::new());
        let counting = |password: &str| {
            hashed.borrow_mut().push(password.to_string());
            nt_hash(password)
        };
        for (who, password, want) in [
            ("LAB\\alice", "pw", None),
            ("LAB\\alice", "guess", Some(LogonRefusal::WrongPassword)),
            ("LAB\\ghost", "guess", Some(LogonRefusal::UnknownUser)),
            ("LAB\\ghost", "", Some(LogonRefusal::UnknownUser)),
        ] {
            hashed.borrow_mut().clear();
            let result = verify_with(&users, &Principal::parse(who), password, counting);
            assert_eq!(result.err(), want, "{who}");
            assert_eq!(*hashed.borrow(), [password], "{who}: one hash of the given password");
        }
        assert_ne!(
            dummy_nt_hash(),
            &[0u8; 16],
            "the dummy is random, not a hash anyone can guess"
        );
    }

    fn lab() -> DomainNames {
        DomainNames {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        }
    }

    #[test]
    fn one_canonical_name_per_principal_of_the_domain() {
        let names = lab();
        for form in [
            "alice@LAB.TEST",
            "alice@lab.test",
            "LAB.TEST\\alice",
            "lab.test\\alice",
            "LAB\\alice",
            "lab\\alice",
        ] {
            let canonical = Principal::parse(form).canonical(Some(&names));
            assert_eq!(canonical.domain, "LAB", "{form}");
            assert!(canonical.matches(&Principal::parse("LAB\\ALICE")), "{form}");
        }
        assert_eq!(
            Principal::parse("alice@LAB.TEST").canonical(Some(&names)).display(),
            "LAB\\alice"
        );
        // Other domains, a bare name, and everything without [kerberos] stay as written.
        assert_eq!(
            Principal::parse("alice@OTHER.TEST").canonical(Some(&names)).display(),
            "OTHER.TEST\\alice"
        );
        assert_eq!(
            Principal::parse("LAB2\\alice").canonical(Some(&names)).display(),
            "LAB2\\alice"
        );
        assert_eq!(Principal::parse("alice").canonical(Some(&names)).display(), "\\alice");
        assert_eq!(
            Principal::parse("alice@LAB.TEST").canonical(None).display(),
            "LAB.TEST\\alice"
        );
        assert!(!Principal::parse("bob@LAB.TEST")
            .canonical(Some(&names))
            .matches(&Principal::parse("LAB\\alice")));
    }

    /// A users proxy holding alice (password "pw") in LAB, and what it records as claimed.
    fn alice_proxy(names: Option<DomainNames>) -> (UsersProxy, Arc<Mutex<Option<Claim>>>) {
        let users: Arc<[UserHash]> = vec![UserHash {
            domain: "LAB".into(),
            user: "alice".into(),
            nt_hash: nt_hash("pw"),
        }]
        .into();
        let claimed = Arc::new(Mutex::new(None));
        let proxy = UsersProxy {
            users,
            claimed: claimed.clone(),
            names,
            kerberos: false,
        };
        (proxy, claimed)
    }

    #[test]
    fn ntlm_logons_under_the_realm_name_find_the_netbios_entry() {
        let (mut proxy, claimed) = alice_proxy(Some(lab()));
        let upn = Username::new("alice@LAB.TEST", None).unwrap();
        let identity = proxy.auth_data_by_user(&upn).unwrap();
        assert_eq!(
            identity.password.as_ref(),
            &format!("$NTLM$:{}", hex::encode(nt_hash("pw").as_slice()))
        );
        let claim = claimed.lock().unwrap().clone().unwrap();
        assert_eq!((claim.principal.display().as_str(), claim.known), ("LAB\\alice", true));
    }

    #[test]
    fn kerberos_proxy_names_the_ticket_principal_and_offers_no_hash() {
        let claimed = Arc::new(Mutex::new(None));
        let mut proxy = UsersProxy {
            users: Vec::new().into(),
            claimed: claimed.clone(),
            names: Some(lab()),
            kerberos: true,
        };
        assert!(
            proxy.auth_data().unwrap().is_empty(),
            "no NTLM candidates in a Kerberos exchange"
        );
        let upn = Username::new_upn("alice", "lab.test").unwrap();
        let identity = proxy.auth_data_by_user(&upn).unwrap();
        assert_eq!(identity.password.as_ref(), "");
        let claim = claimed.lock().unwrap().clone().unwrap();
        assert_eq!((claim.principal.display().as_str(), claim.known), ("LAB\\alice", true));
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
    fn proxy_records_the_claimed_user_and_gives_unknown_ones_a_dummy() {
        let (mut proxy, claimed) = alice_proxy(None);
        let ghost = Username::new("ghost", Some("LAB")).unwrap();
        let dummy = proxy.auth_data_by_user(&ghost).unwrap();
        assert_eq!(
            dummy.password.as_ref(),
            &format!("$NTLM$:{}", hex::encode(dummy_nt_hash()))
        );
        let claim = claimed.lock().unwrap().clone().unwrap();
        assert_eq!((claim.principal.display().as_str(), claim.known), ("LAB\\ghost", false));
        let alice = Username::new("ALICE", Some("lab")).unwrap();
        let identity = proxy.auth_data_by_user(&alice).unwrap();
        assert_eq!(
            identity.password.as_ref(),
            &format!("$NTLM$:{}", hex::encode(nt_hash("pw").as_slice()))
        );
        let claim = claimed.lock().unwrap().clone().unwrap();
        assert_eq!((claim.principal.user.as_str(), claim.known), ("ALICE", true));
    }
}

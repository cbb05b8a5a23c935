//! The relay's known users, offered to sspi's NTLM verifier as NT hashes.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use md4::{Digest, Md4};
use sspi::credssp::CredentialsProxy;
use sspi::{AuthIdentity, Secret, Username, UsernameParts};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::identity::{Domain, Principal, UserEntry};

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

/// sspi's parsed user name as a principal. A UPN's suffix stands in for the
/// domain: it matches a users-file entry written with that suffix, or, when it
/// is the relay's realm, one written with the relay's NetBIOS name.
pub(crate) fn principal_of(name: &Username) -> Principal {
    match name.parts() {
        UsernameParts::UserPrincipalName(upn) => Principal::new(upn.suffix(), upn.account_name()),
        UsernameParts::DownLevelLogonName(dll) => Principal::from_parts(dll.netbios_domain(), dll.account_name()),
    }
}

/// The users-file entry of `who` if `password` is theirs, else why not. For
/// Basic over HTTPS, where the password arrives whole. An unknown user costs
/// the same hash and constant-time comparison as a known one, so the answer
/// time does not tell which names are in the users file. Names compare by their
/// key in the relay's `domain`.
pub fn verify_password<'a>(
    users: &'a [UserEntry],
    domain: Option<&Domain>,
    who: &Principal,
    password: &str,
) -> Result<&'a UserEntry, LogonRefusal> {
    verify_with(users, domain, who, password, nt_hash)
}

/// [`verify_password`] with the hash as a parameter, so a test can see that
/// every path does the same hashing work.
fn verify_with<'a>(
    users: &'a [UserEntry],
    domain: Option<&Domain>,
    who: &Principal,
    password: &str,
    hash: impl Fn(&str) -> Zeroizing<[u8; 16]>,
) -> Result<&'a UserEntry, LogonRefusal> {
    let entry = find(users, domain, who);
    let expected = entry.map_or(dummy_nt_hash(), UserEntry::nt_hash);
    let matches = hashes_equal(&hash(password), expected);
    match entry {
        Some(entry) if matches => Ok(entry),
        Some(_) => Err(LogonRefusal::WrongPassword),
        None => Err(LogonRefusal::UnknownUser),
    }
}

/// The entry of `who`, keyed in the relay's `domain`: `alice@LAB.TEST` finds
/// `LAB\alice`. Looks at every entry, matching or not, so the lookup time does
/// not depend on where (or whether) the user is in the file.
pub(crate) fn find<'a>(users: &'a [UserEntry], domain: Option<&Domain>, who: &Principal) -> Option<&'a UserEntry> {
    let key = who.key(domain);
    users.iter().fold(None, |found, u| {
        let matches = u.principal().key(domain) == key;
        found.or(matches.then_some(u))
    })
}

fn to_auth_identity(entry: &UserEntry) -> io::Result<AuthIdentity> {
    let who = entry.principal();
    let username = Username::new(who.user(), Some(who.domain()))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(hash_identity(username, entry.nt_hash()))
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
    pub users: Arc<[UserEntry]>,
    pub claimed: Arc<Mutex<Option<Claim>>>,
    pub domain: Option<Domain>,
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
        let who = principal_of(username).canonical(self.domain.as_ref());
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
        let entry = find(&self.users, self.domain.as_ref(), &who);
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

    fn alice_in(domain: &str) -> Vec<UserEntry> {
        vec![UserEntry::new(Principal::new(domain, "alice"), nt_hash("pw"))]
    }

    #[test]
    fn password_verification() {
        let users = alice_in("LAB");
        let alice = Principal::parse("lab\\Alice");
        assert_eq!(
            verify_password(&users, None, &alice, "pw").map(|e| e.principal().user()),
            Ok("alice")
        );
        assert_eq!(
            verify_password(&users, None, &alice, "PW").err(),
            Some(LogonRefusal::WrongPassword)
        );
        assert!(verify_password(&users, None, &Principal::parse("alice@LAB"), "pw").is_ok());
        assert_eq!(
            verify_password(&users, None, &Principal::parse("LAB\\bob"), "pw").err(),
            Some(LogonRefusal::UnknownUser)
        );
    }

    #[test]
    fn entries_are_found_by_any_spelling_in_the_relays_domain() {
        let lab = lab();
        for written in ["LAB", "lab.test"] {
            let users = alice_in(written);
            for spelling in ["LAB\\alice", "\\LAB\\alice", "alice@LAB.TEST", "LAB.TEST\\ALICE"] {
                let who = Principal::parse(spelling);
                assert!(
                    verify_password(&users, Some(&lab), &who, "pw").is_ok(),
                    "{written}: {spelling}"
                );
            }
            // The entry keeps the name as written: that is who the session is.
            let found = find(&users, Some(&lab), &Principal::parse("alice@LAB")).unwrap();
            assert_eq!(found.principal().domain(), written);
        }
        // Without [kerberos], the realm is a domain of its own.
        assert!(find(&alice_in("LAB"), None, &Principal::parse("alice@LAB.TEST")).is_none());
        assert!(find(&alice_in("LAB"), Some(&lab), &Principal::parse("bob/alice@LAB.TEST")).is_none());
    }

    #[test]
    fn unknown_users_cost_the_same_hashing_as_known_ones() {
        let users = alice_in("LAB");
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
            let result = verify_with(&users, None, &Principal::parse(who), password, counting);
            assert_eq!(result.err(), want, "{who}");
            assert_eq!(*hashed.borrow(), [password], "{who}: one hash of the given password");
        }
        assert_ne!(
            dummy_nt_hash(),
            &[0u8; 16],
            "the dummy is random, not a hash anyone can guess"
        );
    }

    fn lab() -> Domain {
        Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        }
    }

    /// A users proxy holding alice (password "pw") in LAB, and what it records as claimed.
    fn alice_proxy(domain: Option<Domain>) -> (UsersProxy, Arc<Mutex<Option<Claim>>>) {
        let claimed = Arc::new(Mutex::new(None));
        let proxy = UsersProxy {
            users: alice_in("LAB").into(),
            claimed: claimed.clone(),
            domain,
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
        assert_eq!(
            (claim.principal.to_string().as_str(), claim.known),
            ("LAB\\alice", true)
        );
    }

    #[test]
    fn kerberos_proxy_names_the_ticket_principal_and_offers_no_hash() {
        let claimed = Arc::new(Mutex::new(None));
        let mut proxy = UsersProxy {
            users: Vec::new().into(),
            claimed: claimed.clone(),
            domain: Some(lab()),
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
        assert_eq!(
            (claim.principal.to_string().as_str(), claim.known),
            ("LAB\\alice", true)
        );
    }

    #[test]
    fn sspi_names_read_as_the_spellings_they_came_from() {
        let alice = Principal::parse("LAB\\alice");
        for (account, domain) in [
            ("alice", Some("LAB")),
            ("Alice@lab", None),
            ("LAB\\alice", Some("")),
            ("LAB\\alice", Some(".")),
            ("LAB\\alice", None),
        ] {
            let name = Username::new(account, domain).unwrap();
            assert_eq!(principal_of(&name), alice, "{account:?} in {domain:?}");
            assert_eq!(
                Principal::from_parts(domain, account),
                alice,
                "{account:?} in {domain:?}"
            );
        }
        assert_ne!(principal_of(&Username::new("bob", Some("LAB")).unwrap()), alice);
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
        assert_eq!(
            (claim.principal.to_string().as_str(), claim.known),
            ("LAB\\ghost", false)
        );
        let alice = Username::new("ALICE", Some("lab")).unwrap();
        let identity = proxy.auth_data_by_user(&alice).unwrap();
        assert_eq!(
            identity.password.as_ref(),
            &format!("$NTLM$:{}", hex::encode(nt_hash("pw").as_slice()))
        );
        let claim = claimed.lock().unwrap().clone().unwrap();
        assert_eq!((claim.principal.user(), claim.known), ("ALICE", true));
    }
}

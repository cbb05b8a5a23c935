//! Who a caller is: the relay's domain under its two names, a principal read from
//! any spelling a client, a ticket or a file uses, the one key every spelling of
//! the same principal shares, the directory groups it was found in at logon, and a
//! row of the users file.
//!
//! A leaf module (it imports nothing of the crate), so that `proto`, `config`,
//! `policy`, `vault`, `server` and `fanout` all compare names the same way: by
//! [`PrincipalKey`], never by the text a caller happened to send.

use std::fmt;

use zeroize::Zeroizing;

/// The relay's own domain (`[kerberos]`) under both of its names: `alice@LAB.TEST`,
/// `LAB.TEST\alice` and `LAB\alice` are one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The DNS name in upper case, as Kerberos spells it: `LAB.TEST`.
    pub realm: String,
    /// The NetBIOS name: `LAB`.
    pub netbios: String,
}

impl Domain {
    /// Whether `name` names this domain, by either name, in any case.
    pub fn is_named(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.realm) || name.eq_ignore_ascii_case(&self.netbios)
    }
}

/// A user and the domain it belongs to, as written (display keeps the caller's
/// case). Two principals are equal when their [`Principal::key`]s without a
/// [`Domain`] are; pass the relay's domain to `key` to also equate its two names.
///
/// The domain is empty when the name gave none (`alice`); `.` (Windows' "this
/// machine") is kept as a domain of its own: it is neither empty nor the relay's
/// domain, so `.\alice` matches only a users-file row written `.\alice`.
#[derive(Debug, Clone)]
pub struct Principal {
    domain: String,
    user: String,
}

impl Principal {
    /// Reads the forms a caller types and a file holds:
    /// - `DOMAIN\user` (also `DOMAIN.TEST\user`): the domain is what comes before the
    ///   first `\`, the user everything after it;
    /// - `\DOMAIN\user`: an empty domain before a qualified name means "no domain given
    ///   here", so the rest is read again (NTLM sends `LAB\alice` typed with an empty
    ///   domain this way, and sspi reads it as `LAB\alice`);
    /// - `.\DOMAIN\user`: the local-machine prefix before a qualified name is dropped,
    ///   as sspi does;
    /// - `user@REALM`, `user@dns.domain`: the domain is what follows the last `@`, so
    ///   a Kerberos name with several components (`bob/eve@LAB.TEST`) keeps them all
    ///   as its user (`bob/eve`);
    /// - `user`: no domain.
    pub fn parse(name: &str) -> Principal {
        let mut name = name;
        // A loop, not recursion: a name of many `\` must not exhaust the stack.
        while let Some((domain, user)) = name.split_once('\\') {
            match domain {
                "" => name = user,
                "." if user.contains('\\') => name = user,
                _ => return Principal::new(domain, user),
            }
        }
        match name.rsplit_once('@') {
            Some((user, domain)) => Principal::new(domain, user),
            None => Principal::new("", name),
        }
    }

    /// From the two fields of an NTLM AUTHENTICATE message or of sspi's identity:
    /// with no domain (or `.` before a qualified name), the account is read as a
    /// whole name ([`Principal::parse`]); otherwise the two are taken as they are.
    pub fn from_parts(domain: Option<&str>, account: &str) -> Principal {
        match domain {
            Some(".") if account.contains('\\') => Principal::parse(account),
            Some(domain) if !domain.is_empty() => Principal::new(domain, account),
            _ => Principal::parse(account),
        }
    }

    /// Two parts already known to be a domain and a user (a checked users-file
    /// row, a name built from configuration): nothing is read into them.
    pub fn new(domain: impl Into<String>, user: impl Into<String>) -> Principal {
        Principal {
            domain: domain.into(),
            user: user.into(),
        }
    }

    /// The domain as written; empty when none was given.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The user as written, every Kerberos component included.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// In the relay's domain, the NetBIOS form: `alice@LAB.TEST`, `lab.test\alice`
    /// and `lab\alice` all become `LAB\alice`. The user keeps its case; names of
    /// other domains, and every name without a `Domain`, stay as they are.
    pub fn canonical(self, domain: Option<&Domain>) -> Principal {
        match domain {
            Some(domain) if domain.is_named(&self.domain) => Principal {
                domain: domain.netbios.clone(),
                user: self.user,
            },
            _ => self,
        }
    }

    /// The one form two spellings of the same principal share: the
    /// [canonical](Principal::canonical) `domain\user`, lower case. What lockout
    /// counts, quotas, users-file lookups and policy rules compare.
    pub fn key(&self, domain: Option<&Domain>) -> PrincipalKey {
        let domain = match domain {
            Some(d) if d.is_named(&self.domain) => &d.netbios,
            _ => &self.domain,
        };
        PrincipalKey(format!("{domain}\\{}", self.user).to_ascii_lowercase())
    }
}

/// `DOMAIN\user`: the form the audit, policy reasons and prompts show.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\\{}", self.domain, self.user)
    }
}

impl PartialEq for Principal {
    fn eq(&self, other: &Principal) -> bool {
        self.key(None) == other.key(None)
    }
}

impl Eq for Principal {}

/// A principal's comparable form (see [`Principal::key`]): `lab\alice`. Case
/// folding is ASCII only, the folding the users file, lockout and policy globs apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrincipalKey(String);

impl PrincipalKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The groups a logged-on caller belongs to, of those the `[[allow]]` rules name, as
/// the directory said at logon: held for the session, so a change takes effect at the
/// caller's next logon. Group names are principals too (`LAB\WinRM-Operators`,
/// `WinRM-Operators@lab.test`): they compare by [`Principal::key`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Groups {
    /// No rule names a group: nothing was looked up.
    #[default]
    NotNeeded,
    /// A member of these (as the rules spell them), directly or through nested groups.
    Known(Vec<Principal>),
    /// The lookup failed: rules that need a group cannot grant. Why, naming the directory.
    Unavailable(String),
}

impl Groups {
    /// Whether the caller is known to belong to `group` (compared in the relay's `domain`).
    pub fn contains(&self, group: &Principal, domain: Option<&Domain>) -> bool {
        let key = group.key(domain);
        match self {
            Groups::Known(groups) => groups.iter().any(|g| g.key(domain) == key),
            Groups::NotNeeded | Groups::Unavailable(_) => false,
        }
    }
}

/// A security identifier as Windows serializes it (revision, sub-authority count,
/// 48-bit authority, sub-authorities little-endian): the form the directory's
/// `objectSid`/`tokenGroups` and a PAC hold, so that both compare byte for byte.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sid(Vec<u8>);

impl Sid {
    pub fn from_bytes(bytes: Vec<u8>) -> Sid {
        Sid(bytes)
    }

    /// This SID (a domain's) with one more sub-authority: the domain's group `rid`.
    pub fn with_rid(&self, rid: u32) -> Sid {
        let mut bytes = self.0.clone();
        if let Some(count) = bytes.get_mut(1) {
            *count = count.saturating_add(1);
        }
        bytes.extend_from_slice(&rid.to_le_bytes());
        Sid(bytes)
    }
}

/// `S-1-5-21-...`.
impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        if b.len() < 8 || b.len() != 8 + 4 * usize::from(b[1]) {
            return write!(f, "<malformed SID {}>", hex::encode(b));
        }
        let authority = b[2..8].iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
        write!(f, "S-{}-{authority}", b[0])?;
        for sub in b[8..].chunks_exact(4) {
            write!(f, "-{}", u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One row of the users file: who may log on with NTLM or Basic, and the NT hash
/// (MD4 of the UTF-16LE password) that proves it. The hash is password-equivalent:
/// it lives in zeroizing memory and `Debug` never prints it.
#[derive(Clone)]
pub struct UserEntry {
    principal: Principal,
    nt_hash: Zeroizing<[u8; 16]>,
}

impl UserEntry {
    pub fn new(principal: Principal, nt_hash: Zeroizing<[u8; 16]>) -> UserEntry {
        UserEntry { principal, nt_hash }
    }

    /// The user as the file writes it.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn nt_hash(&self) -> &[u8; 16] {
        &self.nt_hash
    }

    /// The hash as 32 lowercase hex digits, as the file holds it.
    pub fn nt_hash_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.nt_hash))
    }
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserEntry({}, <redacted>)", self.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Domain {
        Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        }
    }

    #[test]
    fn every_spelling_gives_one_key() {
        let lab = lab();
        // (spelling, key with LAB/LAB.TEST configured, key without a Domain)
        let table = [
            ("LAB\\alice", "lab\\alice", "lab\\alice"),
            ("lab\\ALICE", "lab\\alice", "lab\\alice"),
            ("\\LAB\\alice", "lab\\alice", "lab\\alice"),
            ("\\\\LAB\\alice", "lab\\alice", "lab\\alice"),
            (".\\LAB\\alice", "lab\\alice", "lab\\alice"),
            ("alice@LAB", "lab\\alice", "lab\\alice"),
            ("alice@LAB.TEST", "lab\\alice", "lab.test\\alice"),
            ("Alice@lab.test", "lab\\alice", "lab.test\\alice"),
            ("LAB.TEST\\alice", "lab\\alice", "lab.test\\alice"),
            ("lab.test\\alice", "lab\\alice", "lab.test\\alice"),
            // Other domains, no domain and the local machine stay as they are.
            ("OTHER\\alice", "other\\alice", "other\\alice"),
            ("alice@OTHER.TEST", "other.test\\alice", "other.test\\alice"),
            ("LAB2\\alice", "lab2\\alice", "lab2\\alice"),
            ("alice", "\\alice", "\\alice"),
            ("\\alice", "\\alice", "\\alice"),
            (".\\alice", ".\\alice", ".\\alice"),
            // Whole Kerberos names: every component is the user.
            ("bob/eve@LAB.TEST", "lab\\bob/eve", "lab.test\\bob/eve"),
            ("bob@LAB.TEST", "lab\\bob", "lab.test\\bob"),
            // The last `@` ends the user; the first `\` ends the domain.
            ("a@b@LAB", "lab\\a@b", "lab\\a@b"),
            ("LAB\\alice@x", "lab\\alice@x", "lab\\alice@x"),
        ];
        for (spelling, with_domain, without) in table {
            let principal = Principal::parse(spelling);
            assert_eq!(principal.key(Some(&lab)).as_str(), with_domain, "{spelling}");
            assert_eq!(principal.key(None).as_str(), without, "{spelling}");
        }
    }

    #[test]
    fn the_spellings_of_issue_17_are_one_user_and_bob_eve_is_not_bob() {
        let lab = lab();
        let alice = Principal::parse("LAB\\alice").key(Some(&lab));
        for spelling in [
            "\\LAB\\alice",
            "alice@LAB",
            "lab\\ALICE",
            "alice@LAB.TEST",
            "LAB.TEST\\alice",
        ] {
            assert_eq!(Principal::parse(spelling).key(Some(&lab)), alice, "{spelling}");
        }
        assert_ne!(
            Principal::parse("bob/eve@LAB.TEST").key(Some(&lab)),
            Principal::parse("bob@LAB.TEST").key(Some(&lab))
        );
    }

    #[test]
    fn wire_fields_read_as_sspi_reads_them() {
        let lab = lab();
        let key = |domain: Option<&str>, account: &str| Principal::from_parts(domain, account).key(Some(&lab));
        let alice = Principal::parse("LAB\\alice").key(Some(&lab));
        assert_eq!(key(Some("LAB"), "alice"), alice);
        assert_eq!(key(Some(""), "LAB\\alice"), alice);
        assert_eq!(key(None, "LAB\\alice"), alice);
        assert_eq!(key(Some(""), "alice@LAB.TEST"), alice);
        assert_eq!(key(Some("."), "LAB\\alice"), alice);
        assert_eq!(key(Some("lab.test"), "ALICE"), alice);
        // With a domain given, the account is opaque, as in sspi's down-level names.
        assert_eq!(key(Some("LAB"), "alice@LAB.TEST").as_str(), "lab\\alice@lab.test");
        assert_eq!(key(Some("."), "alice").as_str(), ".\\alice");
        assert_eq!(key(Some(""), "alice").as_str(), "\\alice");
    }

    #[test]
    fn canonical_and_display_keep_the_users_case() {
        let lab = lab();
        let p = Principal::parse("Alice@lab.test");
        assert_eq!(p.to_string(), "lab.test\\Alice");
        assert_eq!(p.canonical(Some(&lab)).to_string(), "LAB\\Alice");
        assert_eq!(
            Principal::parse("alice@LAB.TEST").canonical(None).to_string(),
            "LAB.TEST\\alice"
        );
        assert_eq!(Principal::parse("alice").to_string(), "\\alice");
        let bob_eve = Principal::parse("bob/eve@LAB.TEST").canonical(Some(&lab));
        assert_eq!((bob_eve.domain(), bob_eve.user()), ("LAB", "bob/eve"));
    }

    #[test]
    fn equality_is_on_the_key() {
        assert_eq!(Principal::parse("LAB\\alice"), Principal::parse("alice@lab"));
        assert_eq!(Principal::parse("\\LAB\\alice"), Principal::new("lab", "ALICE"));
        assert_ne!(Principal::parse("LAB\\alice"), Principal::parse("LAB\\bob"));
        // Without a Domain, the realm and the NetBIOS name are different domains.
        assert_ne!(Principal::parse("LAB\\alice"), Principal::parse("alice@LAB.TEST"));
    }

    #[test]
    fn a_run_of_separators_is_read_without_recursion() {
        let p = Principal::parse(&"\\".repeat(1_000_000));
        assert_eq!((p.domain(), p.user()), ("", ""));
    }

    #[test]
    fn imports_nothing_of_the_crate() {
        // Every layer imports this module: an import of one of them would be a cycle.
        let source = include_str!("identity.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        let imports: Vec<&str> = code
            .lines()
            .filter(|l| l.trim_start().starts_with("use ") && (l.contains("crate::") || l.contains("super::")))
            .collect();
        assert!(imports.is_empty(), "{imports:?}");
    }

    #[test]
    fn sids_read_as_windows_writes_them_and_take_a_rid() {
        // S-1-5-21-1-2-3
        let mut b = vec![1u8, 4, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1, 2, 3] {
            b.extend_from_slice(&sub.to_le_bytes());
        }
        let domain = Sid::from_bytes(b);
        assert_eq!(domain.to_string(), "S-1-5-21-1-2-3");
        assert_eq!(domain.with_rid(512).to_string(), "S-1-5-21-1-2-3-512");
        assert!(Sid::from_bytes(vec![1, 2, 0]).to_string().starts_with("<malformed SID"));
    }

    #[test]
    fn user_entry_debug_redacts_the_hash() {
        let entry = UserEntry::new(Principal::parse("LAB\\alice"), Zeroizing::new([0xa4; 16]));
        let dbg = format!("{entry:?}");
        assert_eq!(dbg, "UserEntry(LAB\\alice, <redacted>)");
        assert_eq!(entry.nt_hash_hex().as_str(), "a4".repeat(16));
    }
}

//! The users file: who may authenticate to the relay, as NT hashes.
//!
//! One entry per line, `DOMAIN\user:<32 hex digits>`, where the hex is the NT hash
//! (MD4 of the UTF-16LE password); `#` starts a comment line. An NT hash is
//! password-equivalent for NTLM (pass-the-hash), so the file must be mode 0600 and the
//! hashes live in zeroizing memory and never reach Debug output or logs.
//!
//! Names compare by their [`Principal`] key (case-insensitively, the domain as written:
//! the file knows no `[kerberos]` domain); `user@DOMAIN` is accepted and rewritten to
//! `DOMAIN\user`. Comments and blank lines survive `add`/`remove`/`save`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::identity::{Domain, Principal, PrincipalKey, UserEntry};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{} is readable by group or others (mode {mode:04o}); run chmod 600 {}",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("empty password")]
    EmptyPassword,
}

impl UsersError {
    /// True when the file does not exist (the CLI then starts a new one).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UsersError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

#[derive(Debug, Clone)]
enum Line {
    /// Comment or blank line, kept verbatim.
    Text(String),
    Entry(UserEntry),
}

#[derive(Debug, Clone, Default)]
pub struct UsersFile {
    lines: Vec<Line>,
}

/// The one NT hash the relay computes, for the file and for logons alike.
pub use crate::proto::credssp::nt_hash;

/// Reads `DOMAIN\user` or `user@DOMAIN`, stricter than [`Principal::parse`]: both
/// parts present, no character Windows forbids in either, so a row names one account.
pub fn parse_user_name(name: &str) -> Result<Principal, UsersError> {
    let invalid = |reason: &str| UsersError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let (domain, user) = if let Some((d, u)) = name.split_once('\\') {
        (d, u)
    } else if let Some((u, d)) = name.rsplit_once('@') {
        (d, u)
    } else {
        return Err(invalid("expected DOMAIN\\user or user@DOMAIN"));
    };
    for (part, what) in [(domain, "domain"), (user, "user")] {
        if part.is_empty() {
            return Err(invalid(&format!("empty {what}")));
        }
        if part.len() > 256 {
            return Err(invalid(&format!("{what} longer than 256 characters")));
        }
        if part.trim() != part {
            return Err(invalid(&format!("{what} has leading or trailing spaces")));
        }
        // Characters Windows forbids in account and domain names, plus the file's ':' and '#'.
        if part
            .chars()
            .any(|c| c.is_control() || "\\/:*?\"<>|@[];=,+#".contains(c))
        {
            return Err(invalid(&format!("{what} contains a forbidden character")));
        }
    }
    Ok(Principal::new(domain, user))
}

impl UsersFile {
    /// An empty file, for creating a new one.
    pub fn new() -> UsersFile {
        UsersFile::default()
    }

    /// Reads `path`, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<UsersFile, UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // fstat on the opened file, so the checked file is the one read.
            let mode = file.metadata().map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(UsersError::Permissions {
                    path: path.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(io)?;
        UsersFile::parse(path, &text)
    }

    /// Parses users-file text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<UsersFile, UsersError> {
        let mut out = UsersFile::default();
        for (i, line) in text.lines().enumerate() {
            let parse_err = |message: String| UsersError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                out.lines.push(Line::Text(line.to_string()));
                continue;
            }
            // Never echo the line: it holds a hash.
            let Some((name, hash_hex)) = trimmed.rsplit_once(':') else {
                return Err(parse_err("expected DOMAIN\\user:<32 hex digit NT hash>".into()));
            };
            let who = parse_user_name(name).map_err(|e| parse_err(e.to_string()))?;
            let mut hash = Zeroizing::new([0u8; 16]);
            if hash_hex.len() != 32 || hex::decode_to_slice(hash_hex, hash.as_mut_slice()).is_err() {
                return Err(parse_err(format!("{who}: the NT hash must be 32 hex digits")));
            }
            if let Some(first) = out.position(&who) {
                let first_line = text.lines().take(first + 1).count();
                return Err(parse_err(format!("duplicate user {who} (also line {first_line})")));
            }
            out.lines.push(Line::Entry(UserEntry::new(who, hash)));
        }
        Ok(out)
    }

    /// Index in `lines` of the entry for `who`.
    fn position(&self, who: &Principal) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| matches!(l, Line::Entry(e) if e.principal() == who))
    }

    /// Refuses two rows that are one user in the relay's `domain` (`LAB\alice` and
    /// `LAB.TEST\alice`): which hash a logon is checked against would depend on
    /// the order of the rows. `path` is only used in the message.
    pub fn check_in(&self, path: &Path, domain: &Domain) -> Result<(), UsersError> {
        let mut seen: std::collections::HashMap<PrincipalKey, (usize, &Principal)> = Default::default();
        for (i, line) in self.lines.iter().enumerate() {
            let Line::Entry(entry) = line else { continue };
            let who = entry.principal();
            if let Some((first, other)) = seen.insert(who.key(Some(domain)), (i, who)) {
                return Err(UsersError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!(
                        "{who} is {other} (line {}): {} and {} are one domain; keep one of the two rows",
                        first + 1,
                        domain.realm,
                        domain.netbios
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn entries(&self) -> impl Iterator<Item = &UserEntry> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry(e) => Some(e),
            Line::Text(_) => None,
        })
    }

    pub fn len(&self) -> usize {
        self.entries().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Case-insensitive lookup.
    pub fn find(&self, who: &Principal) -> Option<&UserEntry> {
        self.entries().find(|e| e.principal() == who)
    }

    /// Adds `DOMAIN\user` (or `user@DOMAIN`), replacing an existing entry in place.
    /// Returns true when an entry was replaced.
    pub fn add(&mut self, domain_user: &str, password: &SecretString) -> Result<bool, UsersError> {
        let who = parse_user_name(domain_user)?;
        if password.expose_secret().is_empty() {
            return Err(UsersError::EmptyPassword);
        }
        let entry = UserEntry::new(who, nt_hash(password.expose_secret()));
        match self.position(entry.principal()) {
            Some(i) => {
                self.lines[i] = Line::Entry(entry);
                Ok(true)
            }
            None => {
                self.lines.push(Line::Entry(entry));
                Ok(false)
            }
        }
    }

    /// Removes `DOMAIN\user`; returns false when there was no such user.
    pub fn remove(&mut self, domain_user: &str) -> Result<bool, UsersError> {
        let who = parse_user_name(domain_user)?;
        Ok(match self.position(&who) {
            Some(i) => {
                self.lines.remove(i);
                true
            }
            None => false,
        })
    }

    /// Writes the file atomically (temp file + rename) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = Zeroizing::new(String::new());
        for line in &self.lines {
            match line {
                Line::Text(t) => text.push_str(t),
                Line::Entry(e) => {
                    text.push_str(&e.principal().to_string());
                    text.push(':');
                    text.push_str(&e.nt_hash_hex());
                }
            }
            text.push('\n');
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::other("not a file path")))?;
        // The temp file's "No such file or directory" would blame the wrong path.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                )));
            }
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // A leftover from a crashed run would make create_new fail.
        let _ = std::fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_dir;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn parse_find_and_roundtrip() {
        let text =
            "# relay users\nLAB\\alice:a4f49c406510bdcab6824ee7c30fd852\n\nbob@lab:31D6CFE0D16AE931B73C59D7E0C089C0\n";
        let f = UsersFile::parse(Path::new("u"), text).unwrap();
        assert_eq!(f.len(), 2);
        let bob = f.find(&Principal::parse("LAB\\BOB")).unwrap();
        assert_eq!(bob.principal().to_string(), "lab\\bob");
        assert_eq!(
            *f.find(&Principal::parse("lab\\Alice")).unwrap().nt_hash(),
            *nt_hash("Password")
        );
        assert!(f.find(&Principal::parse("OTHER\\alice")).is_none());

        let dir = test_dir("users-roundtrip");
        let path = dir.join("users");
        f.save(&path).unwrap();
        let saved = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            saved,
            "# relay users\nLAB\\alice:a4f49c406510bdcab6824ee7c30fd852\n\nlab\\bob:31d6cfe0d16ae931b73c59d7e0c089c0\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(UsersFile::load(&path).unwrap().len(), 2);
        let e = f.save(&dir.join("no/users")).unwrap_err().to_string();
        let want = format!("no/users: directory {} does not exist", dir.join("no").display());
        assert!(e.ends_with(&want), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn add_replaces_and_remove() {
        let mut f = UsersFile::new();
        assert!(!f.add("LAB\\alice", &secret("one")).unwrap());
        assert!(f.add("alice@lab", &secret("Password")).unwrap());
        assert_eq!(f.len(), 1);
        assert_eq!(
            *f.find(&Principal::parse("alice@LAB")).unwrap().nt_hash(),
            *nt_hash("Password")
        );
        assert!(matches!(f.add("LAB\\x", &secret("")), Err(UsersError::EmptyPassword)));
        assert!(f.remove("lab\\ALICE").unwrap());
        assert!(!f.remove("LAB\\alice").unwrap());
        assert!(f.is_empty());
    }

    #[test]
    fn names_need_a_domain() {
        for bad in [
            "alice",
            "\\alice",
            // Principal::parse reads this as LAB\a; a users-file row must say it plainly.
            "\\LAB\\a",
            "LAB\\",
            "@LAB",
            "alice@",
            "LAB\\a:b",
            "LAB\\a\\b",
            " LAB\\a",
        ] {
            assert!(parse_user_name(bad).is_err(), "{bad:?} accepted");
        }
        let upn = parse_user_name("alice@lab.local").unwrap();
        assert_eq!((upn.domain(), upn.user()), ("lab.local", "alice"));
    }

    #[test]
    fn parse_errors_name_the_line_but_not_the_hash() {
        let e = UsersFile::parse(Path::new("u"), "# c\nLAB\\a:a4f49c406510bdcab6824ee7c30fd85\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "u:2: LAB\\a: the NT hash must be 32 hex digits");
        let e = UsersFile::parse(Path::new("u"), "LAB\\a:secretsecret\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        let dup = "LAB\\a:a4f49c406510bdcab6824ee7c30fd852\nlab\\A:a4f49c406510bdcab6824ee7c30fd852\n";
        let e = UsersFile::parse(Path::new("u"), dup).unwrap_err().to_string();
        assert_eq!(e, "u:2: duplicate user lab\\A (also line 1)");
    }

    #[test]
    fn one_user_twice_under_the_relays_domain_is_refused() {
        let lab = Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        };
        let text =
            "LAB\\alice:a4f49c406510bdcab6824ee7c30fd852\n# c\nalice@lab.test:a4f49c406510bdcab6824ee7c30fd852\n";
        let f = UsersFile::parse(Path::new("u"), text).expect("distinct rows without a domain");
        let e = f.check_in(Path::new("u"), &lab).unwrap_err().to_string();
        assert_eq!(
            e,
            "u:3: lab.test\\alice is LAB\\alice (line 1): LAB.TEST and LAB are one domain; keep one of the two rows"
        );
        let other = Domain {
            realm: "CORP.TEST".into(),
            netbios: "CORP".into(),
        };
        assert!(f.check_in(Path::new("u"), &other).is_ok());
    }

    #[test]
    fn debug_redacts_hashes() {
        let mut f = UsersFile::new();
        f.add("LAB\\alice", &secret("Password")).unwrap();
        let dbg = format!("{f:?}");
        assert!(dbg.contains("alice") && dbg.contains("<redacted>"), "{dbg}");
        // Neither hex nor a byte-array dump (0xa4 = 164) of the hash.
        assert!(!dbg.contains("a4f49c") && !dbg.contains("164"), "{dbg}");
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_readable_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = test_dir("users-perms");
        let path = dir.join("users");
        std::fs::write(&path, "LAB\\a:a4f49c406510bdcab6824ee7c30fd852\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = UsersFile::load(&path).unwrap_err().to_string();
        assert!(e.contains(&format!("run chmod 600 {}", path.display())), "{e}");
        assert!(e.contains("mode 0640"), "{e}");
        let missing = UsersFile::load(&dir.join("nope")).unwrap_err();
        assert!(missing.is_not_found());
        let _ = std::fs::remove_dir_all(dir);
    }
}

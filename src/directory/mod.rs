//! Active Directory group membership over LDAP (`[directory]`): which of the groups the
//! `[[allow]]` rules name a caller belongs to.
//!
//! Looked up once at logon and held for the session ([`crate::identity::Groups`]): the
//! user's `tokenGroups` (every group SID of the user, nested groups and the primary group
//! included, as the DC computes them for a logon token) compared with the SIDs of the
//! rules' groups, which are looked up by name once and cached (a group's SID never changes).
//!
//! Each lookup opens its own connection: the URLs in order (failover), each connect (TCP,
//! TLS, StartTLS) within the KDC transport's connect timeout, each operation within its
//! reply timeout, then a simple bind over TLS with `bind_dn` and `bind_password_file`.
//! Any failure is a [`DirectoryError`] naming every URL tried; callers fail closed on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use zeroize::Zeroizing;

use crate::identity::{Domain, Groups, Principal, Sid};
use crate::resolve::TargetTls;

/// Largest bind password file read.
const MAX_PASSWORD_BYTES: u64 = 4096;

/// `[directory]`: where group membership is read.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// `ldap://` or `ldaps://` URLs of domain controllers, in the order tried.
    pub urls: Vec<url::Url>,
    /// Upgrade `ldap://` connections with StartTLS before binding.
    pub starttls: bool,
    /// The trust for the DCs' certificates (`ca_file`, else the system roots).
    pub tls: TargetTls,
    /// Who the relay binds as (a DN or `user@domain`).
    pub bind_dn: String,
    /// A file (0600) holding the bind password, read at each bind.
    pub bind_password_file: PathBuf,
    /// Bounds each connect (TCP, TLS, StartTLS) to one URL: the KDC transport's.
    pub connect_timeout: Duration,
    /// Bounds each LDAP operation once sent: the KDC transport's.
    pub reply_timeout: Duration,
}

impl DirectoryConfig {
    /// The URLs as the reasons name them.
    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.urls.iter().map(url::Url::as_str).collect();
        urls.join(", ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No URL could be connected to and bound on; one entry per URL tried.
    #[error("directory unreachable: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    #[error("directory {url}: {message}")]
    Query { url: String, message: String },
    #[error("bind_password_file {}: {message}", path.display())]
    Password { path: PathBuf, message: String },
}

/// The relay's view of the directory: the group SID cache and whether it was reachable
/// last time it was asked (for `/readyz`).
#[derive(Debug, Default)]
pub struct Directory {
    /// Group key (`lab\winrm-operators`) -> SID.
    sids: Mutex<HashMap<String, Sid>>,
    problem: Mutex<Option<String>>,
}

impl Directory {
    /// Why the directory could not be used at the last lookup or probe; `None` when it could.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record<T>(&self, result: &Result<T, DirectoryError>) {
        let problem = result.as_ref().err().map(ToString::to_string);
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Connects and binds, as a lookup would (for `/readyz`).
    pub async fn probe(&self, config: &DirectoryConfig) {
        let result = Connection::open(config).await.map(|c| c.close());
        self.record(&result);
    }

    /// Which of `wanted` (groups of the relay's `domain`, as rules name them) `user`
    /// belongs to, directly or through nested groups: by the group SIDs of the ticket's
    /// PAC when the logon was a Kerberos one with a PAC (`pac`), else by the user's
    /// `tokenGroups`. A user of another domain, or one the directory does not know,
    /// belongs to none. With a PAC and every group's SID cached, the directory is not asked.
    pub async fn membership(
        &self,
        config: &DirectoryConfig,
        domain: &Domain,
        user: &Principal,
        wanted: &[Principal],
        pac: Option<&[Sid]>,
    ) -> Groups {
        if wanted.is_empty() {
            return Groups::NotNeeded;
        }
        if !domain.is_named(user.domain()) {
            return Groups::Known(Vec::new());
        }
        let mut conn = None;
        let result = self.lookup(&mut conn, config, domain, user, wanted, pac).await;
        // Only what the directory answered (or failed to) says whether it is up.
        if conn.is_some() || result.is_err() {
            self.record(&result);
        }
        if let Some(conn) = conn {
            conn.close();
        }
        match result {
            Ok(groups) => Groups::Known(groups),
            Err(error) => Groups::Unavailable(error.to_string()),
        }
    }

    /// `conn` is opened on first need and left for the caller to close.
    async fn lookup(
        &self,
        conn: &mut Option<Connection>,
        config: &DirectoryConfig,
        domain: &Domain,
        user: &Principal,
        wanted: &[Principal],
        pac: Option<&[Sid]>,
    ) -> Result<Vec<Principal>, DirectoryError> {
        let base = base_dn(domain);
        let sids = self.group_sids(conn, config, &base, domain, wanted).await?;
        let token = match pac {
            Some(pac) => pac.to_vec(),
            None => connection(conn, config).await?.token_groups(&base, user.user()).await?,
        };
        Ok(wanted
            .iter()
            .zip(sids)
            .filter(|(_, sid)| sid.as_ref().is_some_and(|sid| token.contains(sid)))
            .map(|(group, _)| group.clone())
            .collect())
    }

    /// The SID of each of `groups` (cached), `None` for one the directory does not have.
    async fn group_sids(
        &self,
        conn: &mut Option<Connection>,
        config: &DirectoryConfig,
        base: &str,
        domain: &Domain,
        groups: &[Principal],
    ) -> Result<Vec<Option<Sid>>, DirectoryError> {
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let key = group.key(Some(domain)).as_str().to_string();
            let cached = self.sids.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
            let sid = match cached {
                Some(sid) => Some(sid),
                None => {
                    let found = connection(conn, config).await?.group_sid(base, group.user()).await?;
                    if let Some(sid) = &found {
                        self.sids
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, sid.clone());
                    }
                    found
                }
            };
            out.push(sid);
        }
        Ok(out)
    }

    /// Of `groups`, those the directory does not have (`check --online`).
    pub async fn missing_groups(
        &self,
        config: &DirectoryConfig,
        domain: &Domain,
        groups: &[Principal],
    ) -> Result<Vec<Principal>, DirectoryError> {
        let mut conn = None;
        let sids = self
            .group_sids(&mut conn, config, &base_dn(domain), domain, groups)
            .await;
        if let Some(conn) = conn {
            conn.close();
        }
        Ok(groups
            .iter()
            .zip(sids?)
            .filter(|(_, sid)| sid.is_none())
            .map(|(group, _)| group.clone())
            .collect())
    }
}

/// The connection in `conn`, opened now if it is not yet.
async fn connection<'a>(
    conn: &'a mut Option<Connection>,
    config: &DirectoryConfig,
) -> Result<&'a mut Connection, DirectoryError> {
    if conn.is_none() {
        *conn = Some(Connection::open(config).await?);
    }
    conn.as_mut().ok_or_else(|| DirectoryError::Unreachable(Vec::new()))
}

/// `LAB.TEST` -> `DC=LAB,DC=TEST`: where an AD domain's naming context is.
fn base_dn(domain: &Domain) -> String {
    domain
        .realm
        .split('.')
        .map(|label| format!("DC={label}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One bound connection and the URL it reached.
struct Connection {
    ldap: Ldap,
    url: String,
    reply_timeout: Duration,
}

impl Connection {
    /// The first URL that connects and accepts the bind.
    async fn open(config: &DirectoryConfig) -> Result<Connection, DirectoryError> {
        let password = read_password(&config.bind_password_file)?;
        let mut failures = Vec::new();
        for url in &config.urls {
            match Connection::open_one(config, url, &password).await {
                Ok(conn) => return Ok(conn),
                Err(message) => failures.push(format!("{url}: {message}")),
            }
        }
        Err(DirectoryError::Unreachable(failures))
    }

    async fn open_one(config: &DirectoryConfig, url: &url::Url, password: &str) -> Result<Connection, String> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(config.connect_timeout)
            .set_config(config.tls.client_config())
            .set_starttls(config.starttls && url.scheme() == "ldap");
        let (conn, ldap) = match LdapConnAsync::from_url_with_settings(settings, url).await {
            Ok(pair) => pair,
            Err(ldap3::LdapError::Timeout { .. }) => {
                return Err(format!("connect timed out after {}s", config.connect_timeout.as_secs()))
            }
            Err(error) => return Err(format!("connect: {error}")),
        };
        tokio::spawn(async move {
            if let Err(error) = conn.drive().await {
                tracing::debug!(%error, "directory connection ended");
            }
        });
        let mut connection = Connection {
            ldap,
            url: url.to_string(),
            reply_timeout: config.reply_timeout,
        };
        let bind = connection
            .timed(|ldap| Box::pin(ldap.simple_bind(&config.bind_dn, password)))
            .await;
        match bind.map(|r| r.success()) {
            Ok(Ok(_)) => Ok(connection),
            Ok(Err(error)) => {
                connection.close();
                Err(format!("bind as {} refused: {error}", config.bind_dn))
            }
            Err(message) => {
                connection.close();
                Err(format!("bind: {message}"))
            }
        }
    }

    /// One operation within the reply timeout.
    async fn timed<'a, T>(
        &'a mut self,
        op: impl FnOnce(
            &'a mut Ldap,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = ldap3::result::Result<T>> + Send + 'a>>,
    ) -> Result<T, String> {
        let timeout = self.reply_timeout;
        match tokio::time::timeout(timeout, op(&mut self.ldap)).await {
            Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
            Ok(Err(error)) => Err(error.to_string()),
            Ok(Ok(value)) => Ok(value),
        }
    }

    async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attribute: &'static str,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let url = self.url.clone();
        let query = |message: String| DirectoryError::Query {
            url: url.clone(),
            message,
        };
        let (entries, _) = self
            .timed(|ldap| Box::pin(ldap.search(base, scope, filter, vec![attribute])))
            .await
            .map_err(&query)?
            .success()
            .map_err(|e| query(e.to_string()))?;
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    /// The SID of the group whose sAMAccountName is `name`.
    async fn group_sid(&mut self, base: &str, name: &str) -> Result<Option<Sid>, DirectoryError> {
        let filter = format!("(&(objectClass=group)(sAMAccountName={}))", ldap_escape(name));
        let entries = self.search(base, Scope::Subtree, &filter, "objectSid").await?;
        Ok(entries
            .into_iter()
            .find_map(|mut e| e.bin_attrs.remove("objectSid")?.into_iter().next().map(Sid::from_bytes)))
    }

    /// Every group SID of the user whose sAMAccountName is `name` (none when unknown).
    async fn token_groups(&mut self, base: &str, name: &str) -> Result<Vec<Sid>, DirectoryError> {
        let filter = format!("(&(objectClass=user)(sAMAccountName={}))", ldap_escape(name));
        let users = self.search(base, Scope::Subtree, &filter, "distinguishedName").await?;
        let Some(user) = users.into_iter().next() else {
            return Ok(Vec::new());
        };
        // tokenGroups is computed, so the directory returns it only on a base search.
        let entries = self
            .search(&user.dn, Scope::Base, "(objectClass=*)", "tokenGroups")
            .await?;
        Ok(entries
            .into_iter()
            .flat_map(|mut e| e.bin_attrs.remove("tokenGroups").unwrap_or_default())
            .map(Sid::from_bytes)
            .collect())
    }

    /// Ends the connection without waiting (an unbind is a courtesy the DC does not need).
    fn close(mut self) {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.ldap.unbind()).await;
        });
    }
}

/// The bind password: the file's first line, from a file only its owner can read.
fn read_password(path: &Path) -> Result<Zeroizing<String>, DirectoryError> {
    let error = |message: String| DirectoryError::Password {
        path: path.to_path_buf(),
        message,
    };
    let metadata = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(error(format!(
                "mode {:o} lets others read it; chmod 600",
                mode & 0o7777
            )));
        }
    }
    if metadata.len() > MAX_PASSWORD_BYTES {
        return Err(error("larger than a password file can be".into()));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?);
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(error("empty".into()));
    }
    Ok(Zeroizing::new(line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naming_context_comes_from_the_realm() {
        let lab = Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        };
        assert_eq!(base_dn(&lab), "DC=LAB,DC=TEST");
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = crate::config::test_dir("directory-password");
        let path = dir.join("bind.password");
        std::fs::write(&path, "secret\nignored\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_password(&path).expect_err("0644 refused").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_password(&path).expect("read").as_str(), "secret");
    }
}

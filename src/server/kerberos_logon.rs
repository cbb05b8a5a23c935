//! Plain Kerberos logons (`Authorization: Negotiate` or `Kerberos`) on a relay with
//! `[kerberos] delegation = "constrained"`: the caller proves who they are with a
//! service ticket to the relay, which the relay keeps as the evidence for S4U2Proxy;
//! no password is ever handed over. The logon itself is `auth`'s.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::ServerError;
use crate::certs::RelayCert;
use crate::config::{Config, Delegation};
use crate::kerberos::keytab::{load_keytab, KeytabFileError};
use crate::proto::credssp::ServiceKey;
use crate::proto::http_auth::tls_server_end_point;
use crate::proto::kerberos::acceptor::{accept, AcceptError, Accepted, ReplayCache};
use crate::proto::kerberos::s4u::RelayAccount;

/// The HTTP schemes of a plain Kerberos logon.
pub(crate) const NEGOTIATE: &str = "Negotiate";
pub(crate) const KERBEROS: &str = "Kerberos";

/// What plain Kerberos logons need, loaded at start from the keytab and the certificate.
pub(crate) struct ConstrainedLogons {
    /// The relay's own account, whose TGT asks for S4U2Proxy tickets.
    pub account: Arc<RelayAccount>,
    keys: Vec<ServiceKey>,
    /// `tls-server-end-point` of the relay certificate: what an HTTPS caller binds to.
    end_point: Vec<u8>,
    replays: Mutex<ReplayCache>,
}

impl ConstrainedLogons {
    /// `None` unless `[kerberos] delegation = "constrained"`; an error when the keytab
    /// has no account principal to delegate with.
    pub(crate) fn load(config: &Config, cert: &RelayCert) -> Result<Option<ConstrainedLogons>, ServerError> {
        let Some(kerberos) = config
            .kerberos
            .as_ref()
            .filter(|k| k.delegation == Delegation::Constrained)
        else {
            return Ok(None);
        };
        let Some(path) = kerberos.keytab.as_ref() else {
            return Ok(None);
        };
        let realm = kerberos.domain.realm.clone();
        let keytab = load_keytab(path, &realm)?;
        let account = keytab.account.ok_or_else(|| KeytabFileError::NoAccount {
            path: path.clone(),
            realm,
        })?;
        tracing::info!(account = %account.display(), "constrained delegation: the relay's account");
        let end_point = cert
            .chain
            .first()
            .map(|leaf| tls_server_end_point(leaf.as_ref()))
            .unwrap_or_default();
        Ok(Some(ConstrainedLogons {
            account: Arc::new(account),
            keys: keytab.keys,
            end_point,
            replays: Mutex::default(),
        }))
    }

    pub(crate) fn accept(&self, token: &[u8], https: bool) -> Result<Accepted, AcceptError> {
        let keys: Vec<(&[String], &[u8])> = self
            .keys
            .iter()
            .map(|k| (k.components.as_slice(), k.key.as_slice()))
            .collect();
        let bindings = https.then_some(self.end_point.as_slice());
        let mut replays = self.replays.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        accept(token, &keys, SystemTime::now(), bindings, &mut replays)
    }
}

/// Whether `scheme` is one of a plain Kerberos logon.
pub(crate) fn is_kerberos_scheme(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case(NEGOTIATE) || scheme.eq_ignore_ascii_case(KERBEROS)
}

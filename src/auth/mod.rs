//! The proxy's own users and the one way to become authenticated.
//!
//! [`Identity`] has no public constructor: only [`Users::authenticate_password`]
//! and [`Users::authenticate_certificate`] build one, so a session cannot reach
//! a backend without passing through here. Nothing in this module does I/O.

pub mod scram;
pub mod scram_client;
pub mod scram_server;
pub mod secret;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::redis::policy::CommandPolicy;
use scram::ScramVerifier;
use secret::Secret;

/// A backend login: user name (if the backend has users) and password.
#[derive(Clone)]
pub struct Credential {
    /// Backend user; `None` for Redis's `AUTH <password>` form.
    pub user: Option<String>,
    /// Backend password.
    pub password: Secret,
    /// SCRAM client keys derived from the password, kept across logins so the
    /// proxy does not run PBKDF2 for every backend connection.
    pub scram: scram_client::ClientKeyCache,
}

impl Credential {
    /// A credential; the SCRAM key cache starts empty.
    pub fn new(user: Option<String>, password: Secret) -> Credential {
        let scram = scram_client::ClientKeyCache::new(password.expose());
        Credential {
            user,
            password,
            scram,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
    }
}

/// One of the proxy's users.
#[derive(Debug)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password verifier; `None` for certificate-only users.
    pub verifier: Option<ScramVerifier>,
    /// Listeners this user may log in on; `None` means all.
    pub listeners: Option<Vec<String>>,
    /// A disabled user cannot log in.
    pub disabled: bool,
    /// Certificate subject CNs or SANs that identify this user (listeners that require a certificate only).
    pub client_cert_names: Vec<String>,
    /// Backend login to use instead of the backend's default.
    pub backend_credential: Option<Credential>,
    /// Redis command rules.
    pub redis_policy: Arc<CommandPolicy>,
    /// PostgreSQL databases this user may open; `None` means all.
    pub pg_databases: Option<Vec<String>>,
    /// Whether the user may open replication connections.
    pub pg_allow_replication: bool,
    /// Connection caps and command rates for this user.
    pub limits: crate::config::UserLimits,
}

impl User {
    /// Whether the user may open PostgreSQL database `db`.
    pub fn may_open(&self, db: &str) -> bool {
        self.pg_databases
            .as_ref()
            .is_none_or(|dbs| dbs.iter().any(|d| d == db))
    }

    /// Whether the user may log in on `listener`.
    pub fn may_use(&self, listener: &str) -> bool {
        !self.disabled
            && self
                .listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| l == listener))
    }
}

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A password checked against the user's SCRAM verifier (Redis AUTH/HELLO).
    Password,
    /// A verified client certificate mapped to the user.
    Certificate,
    /// A SCRAM-SHA-256 exchange.
    Scram,
}

impl AuthMethod {
    /// Lowercase label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Certificate => "certificate",
            AuthMethod::Scram => "scram-sha-256",
        }
    }
}

/// An authenticated client. Only this module can build one.
#[derive(Debug, Clone)]
pub struct Identity {
    user: Arc<User>,
    method: AuthMethod,
}

impl Identity {
    /// The authenticated user.
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.user.name
    }

    /// How the client authenticated.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// The backend login for this user on `backend_default`.
    pub fn backend_credential<'a>(&'a self, backend_default: &'a Credential) -> &'a Credential {
        self.user
            .backend_credential
            .as_ref()
            .unwrap_or(backend_default)
    }
}

/// Why a login failed (for logs and metrics; the client sees one generic reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No such user.
    UnknownUser,
    /// Wrong password.
    WrongPassword,
    /// The user is disabled.
    Disabled,
    /// The user may not use this listener.
    ListenerNotAllowed,
    /// The user has no password (certificate-only).
    NoPassword,
    /// No configured user matches the certificate.
    CertificateNotMapped,
    /// The client's IP (or IP and user) is banned after failed logins; the
    /// password was not checked.
    Banned,
}

impl AuthFailure {
    /// Bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::WrongPassword => "wrong_password",
            AuthFailure::Disabled => "disabled",
            AuthFailure::ListenerNotAllowed => "listener_not_allowed",
            AuthFailure::NoPassword => "no_password",
            AuthFailure::CertificateNotMapped => "certificate_not_mapped",
            AuthFailure::Banned => "banned",
        }
    }
}

/// The user table.
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    by_cert_name: HashMap<String, Arc<User>>,
    /// Key for mock verifiers of unknown users, random per process.
    mock_key: Secret,
    /// Iteration count of mock verifiers: the one most configured verifiers use.
    mock_iterations: u32,
    /// Clear-text passwords verified lately.
    verified: PasswordCache,
}

/// Clear-text passwords (Redis AUTH, PostgreSQL's password method) verified
/// lately, so a client that logs in again within the TTL does not cost another
/// PBKDF2: clients that open a connection per request (PHP, serverless, cron)
/// would otherwise spend most of the proxy's CPU on key derivation.
///
/// Holds, per configured user, one keyed hash of the password that matched its
/// verifier, under a key random per table (per config load: a reload starts
/// empty). Only a password that matched is remembered, so a wrong guess always
/// pays the full PBKDF2; a correct one is answered sooner, which tells the
/// client nothing the reply does not. At most one entry per configured user.
struct PasswordCache {
    ttl: Duration,
    key: Secret,
    entries: Mutex<HashMap<String, Verified>>,
}

struct Verified {
    at: Instant,
    token: [u8; 32],
}

impl PasswordCache {
    fn new(ttl: Duration) -> PasswordCache {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut key);
        PasswordCache {
            ttl,
            key: Secret::new(key.to_vec()),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn token(&self, name: &str, password: &[u8]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key.expose()).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// Whether `password` is the one `name` last logged in with, within the TTL.
    fn hit(&self, name: &str, password: &[u8]) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let token = self.token(name, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(name)
            .is_some_and(|v| v.at.elapsed() < self.ttl && bool::from(v.token.ct_eq(&token)))
    }

    fn remember(&self, name: &str, password: &[u8]) {
        if self.ttl.is_zero() {
            return;
        }
        let token = self.token(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now();
        match entries.get_mut(name) {
            Some(v) => *v = Verified { at, token },
            None => {
                entries.insert(name.to_owned(), Verified { at, token });
            }
        }
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Builds the table (names are unique; the config checked that).
    pub fn new(users: Vec<User>) -> Users {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut key);
        Users::with_mock_key(users, key)
    }

    /// Builds the table with a given key for mock verifiers. A key that is stable
    /// across restarts and replicas keeps an unknown name's fake salt stable too,
    /// as a real user's is (a salt that changed on restart would give it away).
    pub fn with_mock_key(users: Vec<User>, mock_key: [u8; 32]) -> Users {
        let mut by_name = HashMap::new();
        let mut by_cert_name = HashMap::new();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for u in users {
            let u = Arc::new(u);
            if let Some(v) = &u.verifier {
                *counts.entry(v.iterations()).or_default() += 1;
            }
            for n in &u.client_cert_names {
                by_cert_name.insert(n.clone(), u.clone());
            }
            by_name.insert(u.name.clone(), u);
        }
        let mock_iterations = counts
            .into_iter()
            .max_by_key(|(i, n)| (*n, *i))
            .map_or(scram::DEFAULT_ITERATIONS, |(i, _)| i);
        Users {
            by_name,
            by_cert_name,
            mock_key: Secret::new(mock_key.to_vec()),
            mock_iterations,
            verified: PasswordCache::new(Duration::ZERO),
        }
    }

    /// Remembers verified clear-text passwords this long (zero: never).
    pub fn with_password_cache(mut self, ttl: Duration) -> Users {
        self.verified = PasswordCache::new(ttl);
        self
    }

    /// Iteration counts of configured verifiers that differ from the mock's
    /// (users with them can be told apart from unknown names by timing or `i=`).
    pub fn odd_iteration_users(&self) -> Vec<&str> {
        let mut odd: Vec<&str> = self
            .by_name
            .values()
            .filter(|u| {
                u.verifier
                    .as_ref()
                    .is_some_and(|v| v.iterations() != self.mock_iterations)
            })
            .map(|u| u.name.as_str())
            .collect();
        odd.sort_unstable();
        odd
    }

    /// Looks a user up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// Every user.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }

    /// Whether `name` is a configured user (for bounded metric labels).
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when no users are configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks a clear-text password against the passwords verified lately,
    /// without PBKDF2: `None` when it is not one of them (then call
    /// [`Users::authenticate_password`]). Cheap enough for the reactor.
    pub fn authenticate_password_cached(
        &self,
        name: &[u8],
        password: &[u8],
        listener: &str,
    ) -> Option<Result<Identity, AuthFailure>> {
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.by_name.get(n))?;
        user.verifier.as_ref()?;
        if !self.verified.hit(&user.name, password) {
            return None;
        }
        // A refusal takes the slow path, so it costs what any refusal costs.
        self.admit(user, listener, AuthMethod::Password)
            .ok()
            .map(Ok)
    }

    /// Checks a clear-text password (Redis AUTH). CPU-heavy (PBKDF2) unless the
    /// password was verified lately: call it off the reactor.
    ///
    /// Unknown users, users without a password, disabled users and users not
    /// allowed on this listener cost the same PBKDF2 as a real check, so the
    /// reply time says nothing about which names exist.
    pub fn authenticate_password(
        &self,
        name: &[u8],
        password: &[u8],
        listener: &str,
    ) -> Result<Identity, AuthFailure> {
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.by_name.get(n));
        let Some(user) = user else {
            self.mock_verifier(name).verify_password(password);
            return Err(AuthFailure::UnknownUser);
        };
        let ok = match &user.verifier {
            Some(v) => {
                if self.verified.hit(&user.name, password) {
                    if let Ok(identity) = self.admit(user, listener, AuthMethod::Password) {
                        return Ok(identity);
                    }
                }
                v.verify_password(password)
            }
            None => {
                self.mock_verifier(name).verify_password(password);
                return Err(AuthFailure::NoPassword);
            }
        };
        if !ok {
            return Err(AuthFailure::WrongPassword);
        }
        let identity = self.admit(user, listener, AuthMethod::Password)?;
        // Remembered only once admitted: a refused user's right password is not
        // answered faster than a wrong one.
        self.verified.remember(&user.name, password);
        Ok(identity)
    }

    /// Maps verified certificate names (subject CN, then SANs) to a user.
    ///
    /// Only call this on listeners that *require* a client certificate: an optional
    /// certificate is not an identity (a client without one would just use AUTH).
    pub fn authenticate_certificate(
        &self,
        cert_names: &[String],
        listener: &str,
    ) -> Result<Identity, AuthFailure> {
        let user = cert_names
            .iter()
            .find_map(|n| self.by_cert_name.get(n))
            .ok_or(AuthFailure::CertificateNotMapped)?;
        self.admit(user, listener, AuthMethod::Certificate)
    }

    /// Starts an identity for a user that completed a SCRAM exchange elsewhere in the crate.
    pub(crate) fn admit_scram(
        &self,
        user: &Arc<User>,
        listener: &str,
    ) -> Result<Identity, AuthFailure> {
        self.admit(user, listener, AuthMethod::Scram)
    }

    fn admit(
        &self,
        user: &Arc<User>,
        listener: &str,
        method: AuthMethod,
    ) -> Result<Identity, AuthFailure> {
        if user.disabled {
            return Err(AuthFailure::Disabled);
        }
        if !user.may_use(listener) {
            return Err(AuthFailure::ListenerNotAllowed);
        }
        Ok(Identity {
            user: user.clone(),
            method,
        })
    }

    /// A stable fake verifier for a name that has none, as PostgreSQL's mock salt.
    pub fn mock_verifier(&self, name: &[u8]) -> ScramVerifier {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.mock_key.expose());
        scram::mock_verifier_with_iterations(name, &key, self.mock_iterations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, pw: &str, listeners: Option<Vec<String>>) -> User {
        User {
            name: name.into(),
            verifier: Some(ScramVerifier::generate(pw.as_bytes()).expect("verifier")),
            listeners,
            disabled: false,
            client_cert_names: vec![format!("{name}.example")],
            backend_credential: None,
            redis_policy: Arc::new(CommandPolicy::default_policy()),
            pg_databases: None,
            pg_allow_replication: false,
            limits: crate::config::UserLimits::default(),
        }
    }

    #[test]
    fn password_outcomes() {
        let users = Users::new(vec![
            user("a", "pw-a", None),
            user("b", "pw-b", Some(vec!["other".into()])),
        ]);
        assert_eq!(
            users
                .authenticate_password(b"a", b"pw-a", "l")
                .map(|i| i.name().to_string()),
            Ok("a".into())
        );
        assert_eq!(
            users.authenticate_password(b"a", b"nope", "l").err(),
            Some(AuthFailure::WrongPassword)
        );
        assert_eq!(
            users.authenticate_password(b"zz", b"pw-a", "l").err(),
            Some(AuthFailure::UnknownUser)
        );
        assert_eq!(
            users.authenticate_password(b"b", b"pw-b", "l").err(),
            Some(AuthFailure::ListenerNotAllowed)
        );
        assert_eq!(
            users.authenticate_password(b"\xff", b"x", "l").err(),
            Some(AuthFailure::UnknownUser)
        );
    }

    #[test]
    fn verified_passwords_are_remembered() {
        let mut disabled = user("d", "pw-d", None);
        disabled.disabled = true;
        let users = Users::new(vec![
            user("a", "pw-a", None),
            user("b", "pw-b", Some(vec!["l".into()])),
            disabled,
        ])
        .with_password_cache(Duration::from_secs(60));
        let cached = |name: &[u8], pw: &[u8], listener: &str| {
            users
                .authenticate_password_cached(name, pw, listener)
                .map(|r| r.map(|i| (i.name().to_string(), i.method())))
        };
        assert_eq!(cached(b"a", b"pw-a", "l"), None, "not verified yet");
        assert!(users.authenticate_password(b"a", b"nope", "l").is_err());
        assert_eq!(
            cached(b"a", b"nope", "l"),
            None,
            "a wrong password is not kept"
        );
        users
            .authenticate_password(b"a", b"pw-a", "l")
            .expect("right password");
        assert_eq!(
            cached(b"a", b"pw-a", "l"),
            Some(Ok(("a".into(), AuthMethod::Password)))
        );
        assert_eq!(cached(b"a", b"pw-A", "l"), None);
        assert_eq!(cached(b"zz", b"pw-a", "l"), None);
        // A hit still goes through the listener check, and a refusal is not a hit.
        users
            .authenticate_password(b"b", b"pw-b", "l")
            .expect("allowed on l");
        assert_eq!(cached(b"b", b"pw-b", "other"), None);
        assert_eq!(
            users.authenticate_password(b"b", b"pw-b", "other").err(),
            Some(AuthFailure::ListenerNotAllowed)
        );
        // A refused user's right password is never remembered.
        assert_eq!(
            users.authenticate_password(b"d", b"pw-d", "l").err(),
            Some(AuthFailure::Disabled)
        );
        assert_eq!(cached(b"d", b"pw-d", "l"), None);
    }

    #[test]
    fn remembered_passwords_expire() {
        let users = Users::new(vec![user("a", "pw-a", None)])
            .with_password_cache(Duration::from_millis(200));
        users.authenticate_password(b"a", b"pw-a", "l").expect("ok");
        assert!(users
            .authenticate_password_cached(b"a", b"pw-a", "l")
            .is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(users
            .authenticate_password_cached(b"a", b"pw-a", "l")
            .is_none());
        let off = Users::new(vec![user("a", "pw-a", None)]);
        off.authenticate_password(b"a", b"pw-a", "l").expect("ok");
        assert!(
            off.authenticate_password_cached(b"a", b"pw-a", "l")
                .is_none(),
            "off by default"
        );
    }

    #[test]
    fn certificate_mapping() {
        let users = Users::new(vec![user("a", "pw", None)]);
        let id = users
            .authenticate_certificate(&["nobody".into(), "a.example".into()], "l")
            .expect("mapped");
        assert_eq!((id.name(), id.method()), ("a", AuthMethod::Certificate));
        assert_eq!(
            users.authenticate_certificate(&["x".into()], "l").err(),
            Some(AuthFailure::CertificateNotMapped)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credential::new(Some("u".into()), Secret::new(b"topsecret".to_vec()));
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}

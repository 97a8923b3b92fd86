//! SCRAM-SHA-256 client side (RFC 5802 §5, RFC 7677): the proxy logging in to a
//! PostgreSQL backend with credentials it holds. Pure state machine; the session
//! moves the bytes.
//!
//! ```text
//! ScramClient::new ─▶ ScramClient + client-first       (SASLInitialResponse, with mechanism())
//! handle_server_first(AuthenticationSASLContinue) ─▶ ClientFinalSent + client-final (SASLResponse)
//! handle_server_final(AuthenticationSASLFinal) ─▶ Ok(())
//! ```
//!
//! The session must insist on AuthenticationSASLFinal before AuthenticationOk: a
//! backend that skips straight to AuthenticationOk has not proved it holds our
//! verifier, and accepting that would defeat `handle_server_final`.
//!
//! PBKDF2 is the expensive step; a [`ClientKeyCache`] shared by all logins to one
//! backend user runs it once per (salt, iteration count) rather than per login.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::scram::{
    attr_value, b64_encode, check_message, decode_key, decode_salt, hmac_sha256, is_valid_nonce,
    parse_decimal, random_nonce, sha256, split_field, xor, DerivedKeys, Malformed, Mechanism,
    ScramError, ServerErrorValue, KEY_LEN,
};
use super::secret::Secret;

/// Highest PBKDF2 iteration count we run for a backend. The backend picks the count,
/// and each login makes us do that many HMACs before it has proved anything, so a
/// malicious or misconfigured backend could otherwise pin our CPU (libpq has no cap;
/// we do). PostgreSQL's default is 4096; 100 000 still costs tens of milliseconds.
pub const MAX_BACKEND_ITERATIONS: u32 = 100_000;

/// Most (salt, iteration count) pairs one [`ClientKeyCache`] remembers. One backend
/// user has one verifier, a few cover replicas and a password change; the cap stops a
/// backend that sends a new salt every time from growing the cache without bound.
const MAX_CACHED_KEYS: usize = 4;

/// Channel binding for the connection to the backend, chosen as libpq does.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientChannelBinding {
    /// gs2 flag `n`: the backend connection is not TLS (or binding is turned off).
    None,
    /// gs2 flag `y`: TLS is up but the backend offered only SCRAM-SHA-256. A backend
    /// that does support binding then refuses us (RFC 5802 §6), which catches a man in
    /// the middle that stripped SCRAM-SHA-256-PLUS from its offer.
    NotOffered,
    /// gs2 flag `p=tls-server-end-point`, mechanism SCRAM-SHA-256-PLUS: bind to the
    /// backend certificate's hash (RFC 5929 §4.1).
    TlsServerEndPoint(Vec<u8>),
}

impl fmt::Debug for ClientChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::NotOffered => f.write_str("NotOffered"),
            Self::TlsServerEndPoint(hash) => write!(f, "TlsServerEndPoint({} bytes)", hash.len()),
        }
    }
}

impl ClientChannelBinding {
    /// Chooses as libpq's `pg_SASL_init` does: bind when we have TLS data and the
    /// backend offers -PLUS, say `y` when we have TLS data but it does not, `n` without
    /// TLS. `tls_server_end_point` is the backend certificate hash, if TLS is up.
    pub fn choose(tls_server_end_point: Option<Vec<u8>>, plus_offered: bool) -> Self {
        match tls_server_end_point {
            Some(hash) if plus_offered => Self::TlsServerEndPoint(hash),
            Some(_) => Self::NotOffered,
            None => Self::None,
        }
    }

    /// The mechanism to name in SASLInitialResponse.
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Self::TlsServerEndPoint(_) => Mechanism::ScramSha256Plus,
            Self::None | Self::NotOffered => Mechanism::ScramSha256,
        }
    }

    /// The gs2 header (RFC 5802 §7), without authzid, as PostgreSQL supports none.
    fn gs2_header(&self) -> &'static [u8] {
        match self {
            Self::None => b"n,,",
            Self::NotOffered => b"y,,",
            Self::TlsServerEndPoint(_) => b"p=tls-server-end-point,,",
        }
    }
}

/// Credentials for one backend user: a password and/or precomputed keys, with the keys
/// derived from the password remembered per (salt, iteration count).
///
/// Cheap to clone (shared inside), safe to share between concurrent logins. Build it
/// once at config load; [`ClientKeyCache::precompute`] can run PBKDF2 then too, when the
/// backend's salt and count are known, so that no login pays for it.
#[derive(Clone)]
pub struct ClientKeyCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    /// `None` when built from precomputed keys only.
    password: Option<Secret>,
    /// Oldest first; at most [`MAX_CACHED_KEYS`].
    entries: Mutex<Vec<CachedKeys>>,
}

#[derive(Clone)]
struct CachedKeys {
    salt: Vec<u8>,
    iterations: u32,
    keys: DerivedKeys,
}

impl fmt::Debug for ClientKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeyCache")
            .field("has_password", &self.inner.password.is_some())
            .field("cached", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl ClientKeyCache {
    /// Holds `password` (SASLprep is applied when keys are derived, as libpq does).
    pub fn new(password: &[u8]) -> Self {
        Self::build(Some(Secret::new(password.to_vec())), Vec::new())
    }

    /// Holds only keys precomputed from SaltedPassword = Hi(password, salt, iterations)
    /// (RFC 5802 §3), so no password is kept in memory. A backend that asks for another
    /// salt or count then fails with [`ScramError::NoKeysForBackend`].
    pub fn from_salted_password(
        salt: &[u8],
        iterations: u32,
        salted_password: &[u8; KEY_LEN],
    ) -> Self {
        let entry = CachedKeys {
            salt: salt.to_vec(),
            iterations,
            keys: DerivedKeys::from_salted_password(salted_password),
        };
        Self::build(None, vec![entry])
    }

    /// Derives and caches the keys for `salt` and `iterations` now (e.g. at config load
    /// for a backend whose verifier is known) instead of at the first login.
    pub fn precompute(&self, salt: &[u8], iterations: u32) -> Result<(), ScramError> {
        self.keys_for(salt, iterations).map(drop)
    }

    fn build(password: Option<Secret>, entries: Vec<CachedKeys>) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                password,
                entries: Mutex::new(entries),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<CachedKeys>> {
        // Nothing under this lock can panic half way, so a poisoned cache is still
        // consistent; recover instead of propagating someone else's panic.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys for `salt` and `iterations`, from the cache or derived and cached.
    fn keys_for(&self, salt: &[u8], iterations: u32) -> Result<DerivedKeys, ScramError> {
        let hit = self
            .lock()
            .iter()
            .find(|e| e.iterations == iterations && e.salt == salt)
            .map(|e| e.keys.clone());
        if let Some(keys) = hit {
            return Ok(keys);
        }
        let password = self
            .inner
            .password
            .as_ref()
            .ok_or(ScramError::NoKeysForBackend)?;
        // PBKDF2 runs without the lock: two first logins may both derive, which is
        // cheaper than making every login wait behind one.
        let keys = DerivedKeys::from_password(password.expose(), salt, iterations);
        let mut entries = self.lock();
        if !entries
            .iter()
            .any(|e| e.iterations == iterations && e.salt == salt)
        {
            if entries.len() >= MAX_CACHED_KEYS {
                entries.remove(0);
            }
            entries.push(CachedKeys {
                salt: salt.to_vec(),
                iterations,
                keys: keys.clone(),
            });
        }
        Ok(keys)
    }

    #[cfg(test)]
    fn cached_len(&self) -> usize {
        self.lock().len()
    }
}

/// Client state after sending client-first-message, waiting for server-first-message.
pub struct ScramClient {
    keys: ClientKeyCache,
    channel_binding: ClientChannelBinding,
    client_nonce: String,
    /// client-first-message-bare: the client-first-message without the gs2 header.
    client_first_bare: Vec<u8>,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism())
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts a login with `password`, returning the client-first-message.
    ///
    /// Each call derives keys afresh; logins that repeat should share a
    /// [`ClientKeyCache`] through [`ScramClient::with_cache`] instead.
    pub fn new(
        password: &[u8],
        channel_binding: ClientChannelBinding,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        Self::with_cache(ClientKeyCache::new(password), channel_binding)
    }

    /// Starts a login whose keys come from, and are remembered in, `keys`.
    pub fn with_cache(
        keys: ClientKeyCache,
        channel_binding: ClientChannelBinding,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        let nonce = random_nonce()?;
        Self::start(keys, channel_binding, b"", nonce)
    }

    /// Builds the client-first-message `gs2-header "n=" username ",r=" nonce`.
    ///
    /// PostgreSQL ignores the SCRAM user name in favour of the startup packet's, and
    /// libpq sends it empty; we do the same (`username` is non-empty only in tests).
    fn start(
        keys: ClientKeyCache,
        channel_binding: ClientChannelBinding,
        username: &[u8],
        client_nonce: String,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        if matches!(&channel_binding, ClientChannelBinding::TlsServerEndPoint(h) if h.is_empty()) {
            return Err(ScramError::MissingChannelBindingData);
        }
        let mut bare = b"n=".to_vec();
        bare.extend_from_slice(username);
        bare.extend_from_slice(b",r=");
        bare.extend_from_slice(client_nonce.as_bytes());
        let mut client_first = channel_binding.gs2_header().to_vec();
        client_first.extend_from_slice(&bare);
        let state = Self {
            keys,
            channel_binding,
            client_nonce,
            client_first_bare: bare,
        };
        Ok((state, client_first))
    }

    /// The mechanism to name in SASLInitialResponse along with the client-first-message.
    pub fn mechanism(&self) -> Mechanism {
        self.channel_binding.mechanism()
    }

    /// Handles the server-first-message and returns the client-final-message.
    ///
    /// Fails closed, as libpq's `read_server_first_message` and then some: the server
    /// nonce must extend ours, the salt must be non-empty base64, the iteration count
    /// must be in `1..=MAX_BACKEND_ITERATIONS`, and nothing may follow it. May run
    /// PBKDF2 (a few milliseconds at 4096 iterations) on a cache miss.
    pub fn handle_server_first(
        self,
        server_first: &[u8],
    ) -> Result<(ClientFinalSent, Vec<u8>), ScramError> {
        let malformed = ScramError::MalformedBackendMessage;
        check_message(server_first).map_err(malformed)?;

        // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count
        // ["," extensions] (RFC 5802 §7). We know no mandatory extension, and
        // PostgreSQL sends no optional one, so both are refused.
        let (nonce, rest) = split_field(server_first);
        let nonce = attr_value(nonce, b'r').ok_or(malformed(Malformed::ExpectedAttribute('r')))?;
        if !is_valid_nonce(nonce) {
            return Err(malformed(Malformed::Nonce));
        }
        // The server part must be non-empty: a backend that merely echoes our nonce
        // makes an exchange that can be replayed to it.
        if nonce.len() <= self.client_nonce.len()
            || !nonce.starts_with(self.client_nonce.as_bytes())
        {
            return Err(ScramError::BackendNonceMismatch);
        }

        let rest = rest.ok_or(malformed(Malformed::ExpectedAttribute('s')))?;
        let (salt, rest) = split_field(rest);
        let salt = attr_value(salt, b's').ok_or(malformed(Malformed::ExpectedAttribute('s')))?;
        let salt = decode_salt(salt).map_err(malformed)?;

        let rest = rest.ok_or(malformed(Malformed::ExpectedAttribute('i')))?;
        let (iterations, rest) = split_field(rest);
        let iterations =
            attr_value(iterations, b'i').ok_or(malformed(Malformed::ExpectedAttribute('i')))?;
        if iterations.is_empty() || !iterations.iter().all(u8::is_ascii_digit) {
            return Err(malformed(Malformed::Iterations));
        }
        let iterations = parse_decimal(iterations, MAX_BACKEND_ITERATIONS)
            .ok_or(ScramError::BackendIterationsOutOfRange)?;
        if rest.is_some() {
            return Err(malformed(Malformed::InvalidAttribute));
        }

        let keys = self.keys.keys_for(&salt, iterations)?;

        // c= is base64(gs2-header || channel-binding-data) (RFC 5802 §7).
        let mut cbind_input = self.channel_binding.gs2_header().to_vec();
        if let ClientChannelBinding::TlsServerEndPoint(hash) = &self.channel_binding {
            cbind_input.extend_from_slice(hash);
        }
        let mut client_final = b"c=".to_vec();
        client_final.extend_from_slice(b64_encode(&cbind_input).as_bytes());
        client_final.extend_from_slice(b",r=");
        client_final.extend_from_slice(nonce);

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof (RFC 5802 §3).
        let mut auth_message = self.client_first_bare;
        auth_message.push(b',');
        auth_message.extend_from_slice(server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(&client_final);

        // ClientProof = ClientKey XOR HMAC(H(ClientKey), AuthMessage) (RFC 5802 §3).
        let stored_key = Zeroizing::new(sha256(&keys.client_key));
        let client_signature = Zeroizing::new(hmac_sha256(&stored_key[..], &[&auth_message]));
        let proof = xor(&keys.client_key, &client_signature);
        let server_signature = Zeroizing::new(hmac_sha256(&keys.server_key, &[&auth_message]));

        client_final.extend_from_slice(b",p=");
        client_final.extend_from_slice(b64_encode(&proof).as_bytes());
        Ok((ClientFinalSent { server_signature }, client_final))
    }
}

/// Client state after sending client-final-message, waiting for server-final-message.
pub struct ClientFinalSent {
    /// The ServerSignature a backend holding our verifier will send.
    server_signature: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for ClientFinalSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFinalSent").finish_non_exhaustive()
    }
}

impl ClientFinalSent {
    /// Checks the server-final-message: `v=` must carry exactly the ServerSignature we
    /// computed (compared in constant time); `e=` is the backend refusing us.
    pub fn handle_server_final(self, server_final: &[u8]) -> Result<(), ScramError> {
        let malformed = ScramError::MalformedBackendMessage;
        check_message(server_final).map_err(malformed)?;
        // server-final-message = (server-error / verifier) ["," extensions]
        let (field, rest) = split_field(server_final);
        if let Some(error) = attr_value(field, b'e') {
            return Err(ScramError::BackendRejected(ServerErrorValue::from_wire(
                error,
            )));
        }
        let signature =
            attr_value(field, b'v').ok_or(malformed(Malformed::ExpectedAttribute('v')))?;
        // libpq refuses anything after the signature; so do we.
        if rest.is_some() {
            return Err(malformed(Malformed::InvalidAttribute));
        }
        let signature = decode_key(signature).ok_or(malformed(Malformed::KeyLength('v')))?;
        if bool::from(signature[..].ct_eq(&self.server_signature[..])) {
            Ok(())
        } else {
            Err(ScramError::ServerSignatureMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scram::{decode_salt, mock_verifier, ScramVerifier};
    use super::super::scram_server::{ChannelBinding, ScramServer};
    use super::*;

    /// RFC 7677 §3 example: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_client(keys: ClientKeyCache) -> ScramClient {
        let (client, first) = ScramClient::start(
            keys,
            ClientChannelBinding::None,
            b"user",
            CLIENT_NONCE.to_string(),
        )
        .unwrap();
        assert_eq!(first, CLIENT_FIRST);
        client
    }

    fn backend_error(result: Result<impl Sized, ScramError>) -> Malformed {
        match result.map(|_| ()) {
            Err(ScramError::MalformedBackendMessage(m)) => m,
            other => panic!("expected MalformedBackendMessage, got {other:?}"),
        }
    }

    #[test]
    fn rfc7677_test_vector() {
        let client = rfc_client(ClientKeyCache::new(b"pencil"));
        assert_eq!(client.mechanism(), Mechanism::ScramSha256);
        let (last, client_final) = client.handle_server_first(SERVER_FIRST).unwrap();
        assert_eq!(client_final, CLIENT_FINAL);
        assert_eq!(last.handle_server_final(SERVER_FINAL), Ok(()));
    }

    #[test]
    fn rfc7677_with_precomputed_salted_password() {
        let salt = decode_salt(b"W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"pencil", &salt, 4096, &mut salted);
        let keys = ClientKeyCache::from_salted_password(&salt, 4096, &salted);
        let (last, client_final) = rfc_client(keys.clone())
            .handle_server_first(SERVER_FIRST)
            .unwrap();
        assert_eq!(client_final, CLIENT_FINAL);
        assert_eq!(last.handle_server_final(SERVER_FINAL), Ok(()));
        // Another salt: no password to derive from.
        let other = b"r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJDRA==,i=4096";
        assert_eq!(
            rfc_client(keys).handle_server_first(other).unwrap_err(),
            ScramError::NoKeysForBackend
        );
    }

    #[test]
    fn cache_derives_once_per_salt_and_stays_bounded() {
        let keys = ClientKeyCache::new(b"pencil");
        assert_eq!(keys.cached_len(), 0);
        keys.precompute(b"salt-a", 4096).unwrap();
        let (last, _) = rfc_client(keys.clone())
            .handle_server_first(SERVER_FIRST)
            .unwrap();
        assert_eq!(last.handle_server_final(SERVER_FINAL), Ok(()));
        assert_eq!(keys.cached_len(), 2);
        let (last, _) = rfc_client(keys.clone())
            .handle_server_first(SERVER_FIRST)
            .unwrap();
        assert_eq!(last.handle_server_final(SERVER_FINAL), Ok(()));
        assert_eq!(keys.cached_len(), 2);
        for i in 0..10u32 {
            keys.precompute(b"salt-b", i + 1).unwrap();
        }
        assert_eq!(keys.cached_len(), MAX_CACHED_KEYS);
        assert!(!format!("{keys:?}").contains("pencil"));
    }

    #[test]
    fn bad_server_final() {
        let finish = |msg: &[u8]| {
            let (last, _) = rfc_client(ClientKeyCache::new(b"pencil"))
                .handle_server_first(SERVER_FIRST)
                .unwrap();
            last.handle_server_final(msg)
        };
        let mut wrong = SERVER_FINAL.to_vec();
        wrong[5] ^= 1;
        assert_eq!(finish(&wrong), Err(ScramError::ServerSignatureMismatch));
        assert_eq!(
            finish(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::ServerSignatureMismatch)
        );
        assert_eq!(
            finish(b"e=invalid-proof"),
            Err(ScramError::BackendRejected(ServerErrorValue::InvalidProof))
        );
        let odd = finish(b"e=<script>secret").unwrap_err();
        assert_eq!(
            odd,
            ScramError::BackendRejected(ServerErrorValue::Unrecognized)
        );
        assert!(!odd.to_string().contains("secret"));
        assert_eq!(
            backend_error(finish(b"")),
            Malformed::ExpectedAttribute('v')
        );
        assert_eq!(
            backend_error(finish(b"x=1")),
            Malformed::ExpectedAttribute('v')
        );
        assert_eq!(backend_error(finish(b"v=")), Malformed::KeyLength('v'));
        assert_eq!(
            backend_error(finish(b"v=6rriTRBi23WpRR")),
            Malformed::KeyLength('v')
        );
        let mut trailing = SERVER_FINAL.to_vec();
        trailing.extend_from_slice(b",x=1");
        assert_eq!(
            backend_error(finish(&trailing)),
            Malformed::InvalidAttribute
        );
    }

    #[test]
    fn bad_server_first() {
        use Malformed::*;
        let run = |msg: &[u8]| {
            rfc_client(ClientKeyCache::new(b"pencil"))
                .handle_server_first(msg)
                .map(|_| ())
        };
        let n = "r=rOprNGfwEbeRWgbNEkqOsrv";
        let s = "s=W22ZaJ0SNY7soEsUEjb6gQ==";
        let malformed: Vec<(String, Malformed)> = vec![
            (String::new(), ExpectedAttribute('r')),
            (format!("m=x,{n},{s},i=4096"), ExpectedAttribute('r')),
            ("r=".into(), Nonce),
            ("r=rOprNGfwEbeRWgbNEkqO\x01".into(), Nonce),
            ("r=rOprNGfwEbeRWgbNEkqO é".into(), Nonce),
            (n.into(), ExpectedAttribute('s')),
            (format!("{n},i=4096"), ExpectedAttribute('s')),
            (format!("{n},{s}"), ExpectedAttribute('i')),
            (format!("{n},{s},"), ExpectedAttribute('i')),
            (format!("{n},s=,i=4096"), SaltLength),
            (format!("{n},s=W22ZaJ0SNY7soEsUEjb6gQ,i=4096"), Base64('s')),
            (format!("{n},s=***,i=4096"), Base64('s')),
            (format!("{n},{s},i="), Iterations),
            (format!("{n},{s},i=-1"), Iterations),
            (format!("{n},{s},i=+4096"), Iterations),
            (format!("{n},{s},i=4096 "), Iterations),
            (format!("{n},{s},i=0x10"), Iterations),
            (format!("{n},{s},i=4096,x=1"), InvalidAttribute),
            (format!("{n},{s},i=4096,"), InvalidAttribute),
            (format!("{n},{s}\0,i=4096"), NulByte),
            (format!("{n},s={},i=4096", "A".repeat(4096)), TooLong),
            (format!("{n},s={},i=4096", "AAAA".repeat(400)), SaltLength),
        ];
        for (msg, want) in malformed {
            assert_eq!(backend_error(run(msg.as_bytes())), want, "input {msg:?}");
        }
        for iterations in [
            "0",
            "100001",
            "4294967295",
            "4294967296",
            "99999999999999999999",
        ] {
            assert_eq!(
                run(format!("{n},{s},i={iterations}").as_bytes()),
                Err(ScramError::BackendIterationsOutOfRange)
            );
        }
        for nonce in [
            "r=rOprNGfwEbeRWgbNEkqO",
            "r=xOprNGfwEbeRWgbNEkqOsrv",
            "r=rOpr",
        ] {
            assert_eq!(
                run(format!("{nonce},{s},i=4096").as_bytes()),
                Err(ScramError::BackendNonceMismatch)
            );
        }
        assert!(run(format!("{n},{s},i=1").as_bytes()).is_ok());
    }

    /// Runs a whole exchange between our client and our server.
    fn exchange(
        password: &[u8],
        verifier: &ScramVerifier,
        client_cb: ClientChannelBinding,
        server_cb: ChannelBinding,
    ) -> Result<(), ScramError> {
        let (client, client_first) = ScramClient::new(password, client_cb)?;
        let (server, server_first) =
            ScramServer::start(verifier, client.mechanism(), &client_first, server_cb)?;
        let (client, client_final) = client.handle_server_first(&server_first)?;
        let server_final = server.finish(&client_final)?;
        client.handle_server_final(&server_final)
    }

    #[test]
    fn round_trips_with_our_server() {
        let v =
            ScramVerifier::derive("päss\u{2168}".as_bytes(), b"0123456789abcdef", 4096).unwrap();
        let hash = vec![0x5a; 32];
        let tls = || ChannelBinding::TlsServerEndPoint(hash.clone());
        use ClientChannelBinding as C;

        let good = "päss\u{2168}".as_bytes();
        assert_eq!(
            exchange(good, &v, C::None, ChannelBinding::Unsupported),
            Ok(())
        );
        assert_eq!(
            exchange(b"p\xc3\xa4ssIX", &v, C::None, ChannelBinding::Unsupported),
            Ok(())
        );
        assert_eq!(
            exchange(good, &v, C::NotOffered, ChannelBinding::Unsupported),
            Ok(())
        );
        assert_eq!(exchange(good, &v, C::None, tls()), Ok(()));
        assert_eq!(
            exchange(good, &v, C::TlsServerEndPoint(hash.clone()), tls()),
            Ok(())
        );

        // A man in the middle terminates TLS with another certificate.
        assert_eq!(
            exchange(good, &v, C::TlsServerEndPoint(vec![0x5b; 32]), tls()),
            Err(ScramError::ChannelBindingMismatch)
        );
        // ...or strips -PLUS from the offer so that the client says "y".
        assert_eq!(
            exchange(good, &v, C::NotOffered, tls()),
            Err(ScramError::ChannelBindingDowngrade)
        );
        assert_eq!(
            exchange(
                good,
                &v,
                C::TlsServerEndPoint(hash.clone()),
                ChannelBinding::Unsupported
            ),
            Err(ScramError::MechanismNotOffered)
        );
        assert_eq!(
            exchange(b"wrong", &v, C::None, ChannelBinding::Unsupported),
            Err(ScramError::AuthenticationFailed)
        );
        assert_eq!(
            exchange(b"wrong", &v, C::TlsServerEndPoint(hash.clone()), tls()),
            Err(ScramError::AuthenticationFailed)
        );
        let mock = mock_verifier(b"nobody", &[3; KEY_LEN]);
        assert_eq!(
            exchange(b"", &mock, C::None, ChannelBinding::Unsupported),
            Err(ScramError::AuthenticationFailed)
        );
        assert_eq!(
            ScramClient::new(b"x", C::TlsServerEndPoint(Vec::new())).unwrap_err(),
            ScramError::MissingChannelBindingData
        );
    }

    #[test]
    fn server_impostor_is_detected() {
        // A backend with a verifier for another password, that accepts anything: our
        // proof does not matter to it, but it cannot produce the right signature.
        let ours = ScramVerifier::derive(b"right", b"salt", 4096).unwrap();
        let theirs = ScramVerifier::derive(b"other", b"salt", 4096).unwrap();
        let (client, first) = ScramClient::new(b"right", ClientChannelBinding::None).unwrap();
        let (_, server_first) = ScramServer::start(
            &ours,
            Mechanism::ScramSha256,
            &first,
            ChannelBinding::Unsupported,
        )
        .unwrap();
        let (client, client_final) = client.handle_server_first(&server_first).unwrap();
        let (impostor, _) = ScramServer::start(
            &theirs,
            Mechanism::ScramSha256,
            &first,
            ChannelBinding::Unsupported,
        )
        .unwrap();
        // The impostor's nonce differs, so it cannot even finish our exchange.
        assert_eq!(
            impostor.finish(&client_final).unwrap_err(),
            ScramError::NonceMismatch
        );
        let forged = format!("v={}", b64_encode(&[7u8; KEY_LEN]));
        assert_eq!(
            client.handle_server_final(forged.as_bytes()),
            Err(ScramError::ServerSignatureMismatch)
        );
    }

    #[test]
    fn client_first_message_shape() {
        use ClientChannelBinding as C;
        let (c, first) = ScramClient::new(b"pw", C::None).unwrap();
        assert_eq!(c.mechanism(), Mechanism::ScramSha256);
        assert!(first.starts_with(b"n,,n=,r="));
        assert_eq!(first.len(), b"n,,n=,r=".len() + 24);
        let (_, first) = ScramClient::new(b"pw", C::NotOffered).unwrap();
        assert!(first.starts_with(b"y,,n=,r="));
        let (c, first) = ScramClient::new(b"pw", C::TlsServerEndPoint(vec![1])).unwrap();
        assert_eq!(c.mechanism(), Mechanism::ScramSha256Plus);
        assert!(first.starts_with(b"p=tls-server-end-point,,n=,r="));
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn channel_binding_choice_follows_libpq() {
        use ClientChannelBinding as C;
        assert_eq!(
            C::choose(Some(vec![1]), true),
            C::TlsServerEndPoint(vec![1])
        );
        assert_eq!(C::choose(Some(vec![1]), false), C::NotOffered);
        assert_eq!(C::choose(None, true), C::None);
        assert_eq!(C::choose(None, false), C::None);
    }

    #[test]
    fn arbitrary_server_bytes_never_panic() {
        let keys = ClientKeyCache::new(b"pencil");
        keys.precompute(&decode_salt(b"W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(), 4096)
            .unwrap();
        for i in 0..=SERVER_FIRST.len() {
            let _ = rfc_client(keys.clone()).handle_server_first(&SERVER_FIRST[..i]);
            for b in [0u8, b',', b'=', 0xff] {
                if i < SERVER_FIRST.len() {
                    let mut m = SERVER_FIRST.to_vec();
                    m[i] = b;
                    let _ = rfc_client(keys.clone()).handle_server_first(&m);
                }
            }
        }
        for i in 0..=SERVER_FINAL.len() {
            let (last, _) = rfc_client(keys.clone())
                .handle_server_first(SERVER_FIRST)
                .unwrap();
            let _ = last.handle_server_final(&SERVER_FINAL[..i]);
        }
    }
}

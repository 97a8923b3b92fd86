//! SCRAM-SHA-256 (RFC 5802, RFC 7677): stored verifiers, errors and shared primitives.
//!
//! Three files, no I/O in any of them:
//! - `scram.rs` (this file): [`ScramVerifier`] in PostgreSQL's `pg_authid` format,
//!   [`ScramVerifier::verify_password`] for Redis `AUTH`, [`mock_verifier`] for unknown
//!   users, [`ScramError`], and the helpers both sides share.
//! - `scram_server.rs`: the proxy as SCRAM server to PostgreSQL clients.
//! - `scram_client.rs`: the proxy as SCRAM client to PostgreSQL backends.
//!
//! Every primitive comes from RustCrypto (`sha2`, `hmac`, `pbkdf2`); comparisons of
//! secret values go through `subtle`; key material is zeroized on drop.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of SHA-256 output, and so of every SCRAM-SHA-256 key, proof and signature.
pub const KEY_LEN: usize = 32;

/// PBKDF2 iteration count for new verifiers: PostgreSQL's default `scram_iterations`
/// (and the minimum RFC 7677 §4 asks for).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length for new verifiers: PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`.
pub const DEFAULT_SALT_LEN: usize = 16;

/// Random bytes in each nonce we make: PostgreSQL's `SCRAM_RAW_NONCE_LEN`. 144 bits
/// makes a repeat, and so a replayable exchange, out of reach; 18 is a multiple of 3,
/// so the base64 form (24 characters) has no `=` padding.
pub const NONCE_RAW_LEN: usize = 18;

/// Longest SCRAM message we parse, from either side. Real messages are under 300 bytes
/// (a long user name and a SHA-512 channel binding still fit in 4 KiB); PostgreSQL's
/// own cap, `PG_MAX_AUTH_TOKEN_LENGTH`, is 65535, but nothing legitimate comes close.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Longest nonce (client part, or client and server parts together) we accept. Client
/// libraries send 18-32 random bytes in base64; this bounds the AuthMessage we build.
pub const MAX_NONCE_LEN: usize = 512;

/// Longest salt we accept, in a stored verifier or from a backend. PostgreSQL makes
/// 16-byte salts; the cap only stops absurd input.
pub const MAX_SALT_LEN: usize = 1024;

/// Highest iteration count a stored verifier may carry: PostgreSQL keeps the count in
/// an `int`, so a larger one could not have come from, or be loaded into, PostgreSQL.
pub const MAX_VERIFIER_ITERATIONS: u32 = i32::MAX as u32;

/// Longest stored verifier string we parse (salt at [`MAX_SALT_LEN`] plus two keys).
const MAX_VERIFIER_LEN: usize = 2048;

/// Prefix of PostgreSQL's stored SCRAM-SHA-256 secrets (`scram_build_secret`).
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

type HmacSha256 = Hmac<Sha256>;

/// Everything that can go wrong in a SCRAM exchange or with a stored verifier.
///
/// Messages name the problem, never the bytes involved: no password, key, proof or
/// peer-supplied string is ever formatted into them. [`ScramError::fault`] says who is
/// to blame, for the session's reply and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A stored verifier (from config) is not in PostgreSQL's format, or parameters
    /// given to [`ScramVerifier::derive`] are out of range.
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(VerifierFault),

    /// The client's SCRAM message does not follow RFC 5802 §7.
    #[error("malformed SCRAM message from client: {0}")]
    MalformedClientMessage(Malformed),
    /// The client picked SCRAM-SHA-256-PLUS on a connection where we did not offer it.
    #[error("client selected a SASL mechanism that was not offered")]
    MechanismNotOffered,
    /// The client sent gs2 flag `y` ("I could bind but think you can't") although we
    /// offered channel binding: RFC 5802 §6 says this means someone stripped
    /// SCRAM-SHA-256-PLUS from our offer, so the exchange must fail.
    #[error("client believes the server does not support channel binding, but it does (possible downgrade)")]
    ChannelBindingDowngrade,
    /// The client asked for a channel binding type other than `tls-server-end-point`.
    #[error("unsupported SCRAM channel binding type")]
    UnsupportedChannelBindingType,
    /// The client sent an authorization identity (`a=`); like PostgreSQL we support none.
    #[error("SCRAM authorization identity is not supported")]
    AuthzidNotSupported,
    /// The client requires a mandatory extension (`m=`); we support none (RFC 5802 §5.1).
    #[error("client requires an unsupported SCRAM extension")]
    ExtensionNotSupported,
    /// The `c=` attribute does not match the gs2 header and channel binding data: with
    /// SCRAM-SHA-256-PLUS this is what a man in the middle looks like.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The nonce in client-final-message is not the one from server-first-message.
    #[error("SCRAM nonce does not match")]
    NonceMismatch,

    /// The exchange was well formed but the proof is wrong: the client does not know
    /// the password (or the user does not exist and a mock verifier was used).
    #[error("SCRAM authentication failed")]
    AuthenticationFailed,

    /// The backend's SCRAM message does not follow RFC 5802 §7.
    #[error("malformed SCRAM message from backend: {0}")]
    MalformedBackendMessage(Malformed),
    /// The backend's nonce does not start with ours or adds nothing to it, so the
    /// exchange could be a replay.
    #[error("backend SCRAM nonce does not extend the client nonce")]
    BackendNonceMismatch,
    /// The backend asked for a PBKDF2 iteration count outside `1..=MAX_BACKEND_ITERATIONS`.
    #[error("backend SCRAM iteration count is out of range")]
    BackendIterationsOutOfRange,
    /// The backend answered with `e=` (RFC 5802 §7 server-error).
    #[error("backend rejected SCRAM authentication: {0}")]
    BackendRejected(ServerErrorValue),
    /// The backend's `v=` signature is wrong: it does not hold our verifier, so it is
    /// not the server we meant to log in to.
    #[error("backend SCRAM server signature is wrong")]
    ServerSignatureMismatch,
    /// We hold only precomputed keys and the backend asked for a different salt or
    /// iteration count (its password was probably changed).
    #[error(
        "no SCRAM keys for the backend's salt and iteration count, and no password to derive them"
    )]
    NoKeysForBackend,

    /// Channel binding was selected but the certificate hash passed in was empty.
    #[error("channel binding selected without certificate hash data")]
    MissingChannelBindingData,
    /// The operating system's random number generator failed.
    #[error("operating system random number generator failed")]
    RandomUnavailable,
}

/// Who is to blame for a [`ScramError`]; decides the reply and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramFault {
    /// The connecting client broke the protocol: reply with a protocol violation.
    Client,
    /// The client spoke correctly but did not prove the password.
    Credentials,
    /// The backend misbehaved, rejected us, or could not prove who it is.
    Backend,
    /// Our own configuration (a stored verifier or held keys) is unusable.
    Config,
    /// The local system failed, or the caller passed inconsistent arguments.
    Internal,
}

impl ScramError {
    /// Who is at fault.
    pub fn fault(&self) -> ScramFault {
        match self {
            Self::MalformedClientMessage(_)
            | Self::MechanismNotOffered
            | Self::ChannelBindingDowngrade
            | Self::UnsupportedChannelBindingType
            | Self::AuthzidNotSupported
            | Self::ExtensionNotSupported
            | Self::ChannelBindingMismatch
            | Self::NonceMismatch => ScramFault::Client,
            Self::AuthenticationFailed => ScramFault::Credentials,
            Self::MalformedBackendMessage(_)
            | Self::BackendNonceMismatch
            | Self::BackendIterationsOutOfRange
            | Self::BackendRejected(_)
            | Self::ServerSignatureMismatch => ScramFault::Backend,
            Self::InvalidVerifier(_) | Self::NoKeysForBackend => ScramFault::Config,
            Self::MissingChannelBindingData | Self::RandomUnavailable => ScramFault::Internal,
        }
    }
}

/// Which part of a stored verifier string is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifierFault {
    /// Longer than any verifier we could produce.
    #[error("too long")]
    TooLong,
    /// Does not start with `SCRAM-SHA-256$`.
    #[error("does not start with SCRAM-SHA-256$")]
    Prefix,
    /// Not of the form `<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    #[error("not of the form <iterations>:<salt>$<StoredKey>:<ServerKey>")]
    Layout,
    /// The iteration count is not a decimal number in `1..=i32::MAX`.
    #[error("iteration count is not a number in 1..=2147483647")]
    Iterations,
    /// The salt is not base64, is empty, or is longer than `MAX_SALT_LEN`.
    #[error("salt is not non-empty base64 of at most 1024 bytes")]
    Salt,
    /// StoredKey is not base64 of exactly 32 bytes.
    #[error("StoredKey is not base64 of 32 bytes")]
    StoredKey,
    /// ServerKey is not base64 of exactly 32 bytes.
    #[error("ServerKey is not base64 of 32 bytes")]
    ServerKey,
}

/// What is wrong with a malformed SCRAM message (from either side).
///
/// Attribute names carried here are the ones we expected, never peer input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("message too long")]
    TooLong,
    /// Contains a NUL byte, which RFC 5802 `value-char` excludes.
    #[error("message contains a NUL byte")]
    NulByte,
    /// The gs2 header is not `n,,`, `y,,` or `p=<type>,,` (RFC 5802 §7 gs2-header).
    #[error("invalid gs2 header")]
    Gs2Header,
    /// The gs2 channel binding flag does not fit the chosen mechanism (`p` without
    /// SCRAM-SHA-256-PLUS, or `n`/`y` with it).
    #[error("channel binding flag does not match the selected mechanism")]
    ChannelBindingFlag,
    /// A required attribute is missing or out of order.
    #[error("expected attribute '{0}'")]
    ExpectedAttribute(char),
    /// A field is not `ALPHA "=" value`, or comes where none may.
    #[error("invalid or unexpected attribute")]
    InvalidAttribute,
    /// A nonce is empty, too long, or has characters outside RFC 5802 `printable`.
    #[error("invalid nonce")]
    Nonce,
    /// The named attribute is not canonical base64.
    #[error("attribute '{0}' is not valid base64")]
    Base64(char),
    /// The salt is empty or longer than [`MAX_SALT_LEN`].
    #[error("invalid salt length")]
    SaltLength,
    /// The iteration count is not a plain decimal number.
    #[error("invalid iteration count")]
    Iterations,
    /// A proof or signature does not decode to exactly [`KEY_LEN`] bytes.
    #[error("attribute '{0}' has the wrong length")]
    KeyLength(char),
}

/// RFC 5802 §7 `server-error-value`: why a server refused us with `e=`.
///
/// Unknown values map to [`ServerErrorValue::Unrecognized`] so the backend's text is
/// never copied into our errors or logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerErrorValue {
    /// `invalid-encoding`
    #[error("invalid-encoding")]
    InvalidEncoding,
    /// `extensions-not-supported`
    #[error("extensions-not-supported")]
    ExtensionsNotSupported,
    /// `invalid-proof`: the password we hold is wrong for this backend.
    #[error("invalid-proof")]
    InvalidProof,
    /// `channel-bindings-dont-match`
    #[error("channel-bindings-dont-match")]
    ChannelBindingsDontMatch,
    /// `server-does-support-channel-binding`
    #[error("server-does-support-channel-binding")]
    ServerDoesSupportChannelBinding,
    /// `channel-binding-not-supported`
    #[error("channel-binding-not-supported")]
    ChannelBindingNotSupported,
    /// `unsupported-channel-binding-type`
    #[error("unsupported-channel-binding-type")]
    UnsupportedChannelBindingType,
    /// `unknown-user`
    #[error("unknown-user")]
    UnknownUser,
    /// `invalid-username-encoding`
    #[error("invalid-username-encoding")]
    InvalidUsernameEncoding,
    /// `no-resources`
    #[error("no-resources")]
    NoResources,
    /// `other-error`
    #[error("other-error")]
    OtherError,
    /// A value RFC 5802 does not define (`server-error-value-ext`).
    #[error("unrecognized server error")]
    Unrecognized,
}

impl ServerErrorValue {
    /// Maps the value of an `e=` attribute.
    pub fn from_wire(value: &[u8]) -> Self {
        match value {
            b"invalid-encoding" => Self::InvalidEncoding,
            b"extensions-not-supported" => Self::ExtensionsNotSupported,
            b"invalid-proof" => Self::InvalidProof,
            b"channel-bindings-dont-match" => Self::ChannelBindingsDontMatch,
            b"server-does-support-channel-binding" => Self::ServerDoesSupportChannelBinding,
            b"channel-binding-not-supported" => Self::ChannelBindingNotSupported,
            b"unsupported-channel-binding-type" => Self::UnsupportedChannelBindingType,
            b"unknown-user" => Self::UnknownUser,
            b"invalid-username-encoding" => Self::InvalidUsernameEncoding,
            b"no-resources" => Self::NoResources,
            b"other-error" => Self::OtherError,
            _ => Self::Unrecognized,
        }
    }
}

/// The SASL mechanisms we speak (RFC 7677 §2, RFC 5802 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `SCRAM-SHA-256`: no channel binding.
    ScramSha256,
    /// `SCRAM-SHA-256-PLUS`: bound to the TLS channel with `tls-server-end-point`.
    ScramSha256Plus,
}

impl Mechanism {
    /// The mechanism name as sent in PostgreSQL's AuthenticationSASL / SASLInitialResponse.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
        }
    }

    /// Parses a mechanism name; exact match, as PostgreSQL's `strcmp` does.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"SCRAM-SHA-256" => Some(Self::ScramSha256),
            b"SCRAM-SHA-256-PLUS" => Some(Self::ScramSha256Plus),
            _ => None,
        }
    }
}

/// A stored SCRAM-SHA-256 verifier: what a server keeps instead of the password
/// (RFC 5802 §3), in the same shape as PostgreSQL's `pg_authid.rolpassword`.
///
/// StoredKey and ServerKey are password equivalents for this protocol (StoredKey plus
/// one observed exchange gives the ClientKey; ServerKey lets anyone pose as the
/// server), so `Debug` omits them and they are zeroized on drop. `Display` (for the
/// `hash-password` command) prints them: never log a verifier with `%`/`{}`.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

/// PostgreSQL's format, as [`ScramVerifier::to_pg_string`]: for `hash-password` output
/// and config files only. Not for logs: the keys are password-equivalent.
impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_pg_string())
    }
}

impl Drop for ScramVerifier {
    fn drop(&mut self) {
        self.stored_key.zeroize();
        self.server_key.zeroize();
    }
}

impl ScramVerifier {
    /// Parses PostgreSQL's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    ///
    /// Stricter than PostgreSQL's `parse_scram_secret` (no empty fields, canonical
    /// base64, iterations in `1..=i32::MAX`); errors never echo the input.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let bad = ScramError::InvalidVerifier;
        if s.len() > MAX_VERIFIER_LEN {
            return Err(bad(VerifierFault::TooLong));
        }
        let rest = s
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(bad(VerifierFault::Prefix))?;
        let (params, keys) = rest.split_once('$').ok_or(bad(VerifierFault::Layout))?;
        let (iterations, salt) = params.split_once(':').ok_or(bad(VerifierFault::Layout))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(bad(VerifierFault::Layout))?;
        if [salt, stored_key, server_key]
            .iter()
            .any(|part| part.contains(['$', ':']))
        {
            return Err(bad(VerifierFault::Layout));
        }
        let iterations = parse_decimal(iterations.as_bytes(), MAX_VERIFIER_ITERATIONS)
            .ok_or(bad(VerifierFault::Iterations))?;
        let salt = decode_salt(salt.as_bytes()).map_err(|_| bad(VerifierFault::Salt))?;
        let stored_key = decode_key(stored_key.as_bytes()).ok_or(bad(VerifierFault::StoredKey))?;
        let server_key = decode_key(server_key.as_bytes()).ok_or(bad(VerifierFault::ServerKey))?;
        Ok(Self {
            iterations,
            salt,
            stored_key: *stored_key,
            server_key: *server_key,
        })
    }

    /// Formats as PostgreSQL stores it; [`ScramVerifier::parse`] reads it back.
    ///
    /// The result is password-equivalent (see the type's docs): write it to config or
    /// to PostgreSQL, never to a log. `Display` prints the same; prefer this name,
    /// which makes every place that writes a verifier out greppable.
    pub fn to_pg_string(&self) -> String {
        format!(
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key),
        )
    }

    /// Derives the verifier for `password` (SASLprep'd as PostgreSQL does) with the
    /// given salt and PBKDF2 iteration count (RFC 5802 §3).
    ///
    /// Fails on an empty or over-long salt or an iteration count outside
    /// `1..=MAX_VERIFIER_ITERATIONS`, so every verifier can be written and read back.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        if salt.is_empty() || salt.len() > MAX_SALT_LEN {
            return Err(ScramError::InvalidVerifier(VerifierFault::Salt));
        }
        if !(1..=MAX_VERIFIER_ITERATIONS).contains(&iterations) {
            return Err(ScramError::InvalidVerifier(VerifierFault::Iterations));
        }
        let keys = DerivedKeys::from_password(password, salt, iterations);
        Ok(Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        })
    }

    /// Derives a verifier for `password` with a fresh 16-byte salt from the OS RNG and
    /// [`DEFAULT_ITERATIONS`], as PostgreSQL's `CREATE ROLE ... PASSWORD` does.
    pub fn generate(password: &[u8]) -> Result<Self, ScramError> {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|_| ScramError::RandomUnavailable)?;
        Self::derive(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Checks a cleartext password against this verifier (Redis `AUTH user pass`).
    ///
    /// Runs PBKDF2 every time, wrong password or not (so the reply time says nothing),
    /// and compares in constant time both the ServerKey (what PostgreSQL's
    /// `scram_verify_plain_password` checks) and the StoredKey.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let keys = DerivedKeys::from_password(password, &self.salt, self.iterations);
        let stored_key = Zeroizing::new(sha256(&keys.client_key));
        let same = stored_key[..].ct_eq(&self.stored_key[..])
            & keys.server_key[..].ct_eq(&self.server_key[..]);
        same.into()
    }

    /// PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Salt; public by design, since the server sends it to anyone who asks.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// StoredKey = H(ClientKey) (RFC 5802 §3). Secret: see the type's docs.
    pub(super) fn stored_key(&self) -> &[u8; KEY_LEN] {
        &self.stored_key
    }

    /// ServerKey = HMAC(SaltedPassword, "Server Key") (RFC 5802 §3). Secret.
    pub(super) fn server_key(&self) -> &[u8; KEY_LEN] {
        &self.server_key
    }
}

/// A stable fake verifier for a user that does not exist, so that the exchange looks
/// the same as for a real user and always ends in [`ScramError::AuthenticationFailed`].
///
/// As PostgreSQL's `scram_mock_salt`, the salt is a keyed hash of the user name: the
/// same unknown name always sees the same salt, so salts do not reveal which users
/// exist. `mock_key` must be random, secret and stable for the process (or longer, to
/// keep salts stable across restarts). The keys are HMAC outputs rather than derived
/// from some password, so no password matches them even for someone who learns
/// `mock_key` (that would take a SHA-256 preimage of StoredKey).
///
/// The iteration count is [`DEFAULT_ITERATIONS`]; real verifiers should use it too, or
/// an unknown user stands out by its count.
pub fn mock_verifier(username: &[u8], mock_key: &[u8; KEY_LEN]) -> ScramVerifier {
    mock_verifier_with_iterations(username, mock_key, DEFAULT_ITERATIONS)
}

/// [`mock_verifier`] with the iteration count the real verifiers use, so that an
/// unknown user's `i=` (and the time a password check takes) matches theirs.
pub fn mock_verifier_with_iterations(
    username: &[u8],
    mock_key: &[u8; KEY_LEN],
    iterations: u32,
) -> ScramVerifier {
    // The NUL after each label keeps label || username unambiguous between uses.
    let salt = hmac_sha256(mock_key, &[b"salt\0", username]);
    let mut salt = salt.to_vec();
    salt.truncate(DEFAULT_SALT_LEN);
    ScramVerifier {
        iterations: iterations.max(1),
        salt,
        stored_key: hmac_sha256(mock_key, &[b"stored key\0", username]),
        server_key: hmac_sha256(mock_key, &[b"server key\0", username]),
    }
}

/// ClientKey and ServerKey for one password, salt and iteration count (RFC 5802 §3).
#[derive(Clone)]
pub(super) struct DerivedKeys {
    pub(super) client_key: [u8; KEY_LEN],
    pub(super) server_key: [u8; KEY_LEN],
}

impl DerivedKeys {
    /// SaltedPassword = Hi(Normalize(password), salt, i), Hi being PBKDF2-HMAC-SHA-256
    /// with one output block (RFC 5802 §2.2).
    pub(super) fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let password = prepare_password(password);
        let mut salted = Zeroizing::new([0u8; KEY_LEN]);
        pbkdf2::pbkdf2_hmac::<Sha256>(&password, salt, iterations, &mut salted[..]);
        Self::from_salted_password(&salted)
    }

    /// ClientKey = HMAC(SaltedPassword, "Client Key"), ServerKey = HMAC(SaltedPassword,
    /// "Server Key") (RFC 5802 §3).
    pub(super) fn from_salted_password(salted_password: &[u8; KEY_LEN]) -> Self {
        Self {
            client_key: hmac_sha256(salted_password, &[b"Client Key"]),
            server_key: hmac_sha256(salted_password, &[b"Server Key"]),
        }
    }
}

impl Drop for DerivedKeys {
    fn drop(&mut self) {
        self.client_key.zeroize();
        self.server_key.zeroize();
    }
}

/// Normalize(password) as PostgreSQL does it (`pg_saslprep` in `src/common/saslprep.c`,
/// used by both the server and libpq): SASLprep (RFC 4013) when the password is UTF-8
/// and passes it, the raw bytes otherwise. RFC 5802 §2.2 requires SASLprep, but
/// PostgreSQL accepts any bytes as a password, so to match the verifiers it stores we
/// must fall back exactly where it does.
fn prepare_password(password: &[u8]) -> Zeroizing<Vec<u8>> {
    let raw = || Zeroizing::new(password.to_vec());
    // PostgreSQL passes pure ASCII through untouched; SASLprep would either leave it
    // alone or reject a control character, and a rejection also means "raw bytes".
    if password.is_ascii() {
        return raw();
    }
    let Ok(text) = std::str::from_utf8(password) else {
        return raw();
    };
    match stringprep::saslprep(text) {
        // PostgreSQL treats a password that maps to nothing as prohibited (raw bytes).
        Ok(prepped) if prepped.is_empty() => raw(),
        Ok(prepped) => Zeroizing::new(prepped.into_owned().into_bytes()),
        Err(_) => raw(),
    }
}

/// HMAC-SHA-256 of the concatenation of `parts`.
pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC is defined for keys of any length (RFC 2104 §2: longer keys are hashed,
    // shorter ones padded), and hmac 0.12 never returns Err here; pbkdf2's
    // `pbkdf2_hmac` relies on the same fact.
    #[allow(clippy::expect_used)]
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// H() of RFC 5802 §2.2: SHA-256.
pub(super) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// `a XOR b` for proofs (RFC 5802 §3: ClientProof = ClientKey XOR ClientSignature).
pub(super) fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// A fresh nonce: [`NONCE_RAW_LEN`] bytes from the OS RNG in base64, which is RFC 5802
/// `printable` (no `,`).
pub(super) fn random_nonce() -> Result<String, ScramError> {
    let mut raw = [0u8; NONCE_RAW_LEN];
    OsRng
        .try_fill_bytes(&mut raw)
        .map_err(|_| ScramError::RandomUnavailable)?;
    Ok(BASE64.encode(raw))
}

/// Base64 with padding, as RFC 5802 §7 uses.
pub(super) fn b64_encode(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// Decodes canonical padded base64 (RFC 4648 §4) into a salt of acceptable length.
pub(super) fn decode_salt(b64: &[u8]) -> Result<Vec<u8>, Malformed> {
    if b64.len() > MAX_SALT_LEN.div_ceil(3) * 4 {
        return Err(Malformed::SaltLength);
    }
    let salt = BASE64.decode(b64).map_err(|_| Malformed::Base64('s'))?;
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(Malformed::SaltLength);
    }
    Ok(salt)
}

/// Decodes canonical padded base64 of exactly [`KEY_LEN`] bytes.
pub(super) fn decode_key(b64: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    // 32 bytes are 44 base64 characters; checking first bounds the decode.
    if b64.len() != KEY_LEN.div_ceil(3) * 4 {
        return None;
    }
    let bytes = Zeroizing::new(BASE64.decode(b64).ok()?);
    let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).ok()?;
    Some(Zeroizing::new(key))
}

/// Parses a plain decimal number in `1..=max`: ASCII digits only (no sign, no
/// whitespace, unlike `str::parse`, which takes a leading `+`).
pub(super) fn parse_decimal(digits: &[u8], max: u32) -> Option<u32> {
    // Ten digits hold any u32; more (even leading zeros) is not a sane count.
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    u32::try_from(value).ok().filter(|v| (1..=max).contains(v))
}

/// Splits off the first `,`-separated field: `(field, Some(rest))`, or `(msg, None)`
/// when there is no comma.
pub(super) fn split_field(msg: &[u8]) -> (&[u8], Option<&[u8]>) {
    match msg.iter().position(|&b| b == b',') {
        Some(i) => {
            let (field, rest) = msg.split_at(i);
            (field, rest.get(1..))
        }
        None => (msg, None),
    }
}

/// The value of `field` if it is attribute `name`, i.e. `name "=" value`.
pub(super) fn attr_value(field: &[u8], name: u8) -> Option<&[u8]> {
    field.strip_prefix(&[name, b'='][..])
}

/// Whether `field` is a well-formed attribute, RFC 5802 `attr-val = ALPHA "=" value`
/// (we also accept an empty value, as PostgreSQL does).
pub(super) fn is_attribute(field: &[u8]) -> bool {
    matches!(field, [name, b'=', ..] if name.is_ascii_alphabetic())
}

/// Whether `nonce` is a usable nonce: 1..=[`MAX_NONCE_LEN`] characters of RFC 5802
/// `printable` (%x21-2B / %x2D-7E, i.e. visible ASCII except `,`).
pub(super) fn is_valid_nonce(nonce: &[u8]) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_LEN
        && nonce
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Checks the limits every incoming message must meet before it is parsed.
pub(super) fn check_message(msg: &[u8]) -> Result<(), Malformed> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(Malformed::TooLong);
    }
    if msg.contains(&0) {
        return Err(Malformed::NulByte);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifiers made by PostgreSQL 15 (`CREATE ROLE ... PASSWORD '...'`, then
    /// `SELECT rolpassword FROM pg_authid`).
    const PG_FOOBAR: &str = "SCRAM-SHA-256$4096:KfA4ZsLauWG6ABXnDOtLUw==$t7WnX5oHWexVhkkV2U7yj+CsC580hkEp9Xgu/d3trO8=:HMQaqQyx+NihNmuHscxwgq4z3m2hklXbzzOppDGxI/M=";
    const PG_PENCIL: &str = "SCRAM-SHA-256$4096:VWFQLDdDbxxNV9Q77Y6KjQ==$Je1ZLK0mXCqs5vsCZOQGSGBictmDIQyKlxLXgkvK0Iw=:bmlYlJC/kgYUEglBK0Yrj/TtNTGg8yyirCTN/p+dHps=";
    /// Password U+2168 ROMAN NUMERAL NINE, which SASLprep's NFKC maps to "IX".
    const PG_ROMAN_NINE: &str = "SCRAM-SHA-256$4096:+r0g9GB3XpXX2bnDSY99Ug==$tn1fyglF7GWRs7JHGCwYA5c3leapM/Amhyyn+1vR+PI=:UL/D0SvwGa4X4sNzkv3KOypBhpRVt37VdeCiMz7tx34=";
    /// Password "I\u{AD}X": the soft hyphen is mapped to nothing, giving "IX".
    const PG_SOFT_HYPHEN: &str = "SCRAM-SHA-256$4096:PypOmWV3+Y/xp8yNAKKgXQ==$P8HPEWsrOdRlGrYZ50ISSL6L3cw8JrLT4qLxgDu/QYA=:qTZyBP3BbA5lTTMjT+2j7yki4ijW6qfBNMW3IuJsBGc=";
    /// Password "a\u{E000}b": private use is prohibited, so raw bytes are hashed.
    const PG_PRIVATE_USE: &str = "SCRAM-SHA-256$4096:OlcBPpBG4zF4J8Z5x/YtGw==$h0G85KXbl3va0s4TYMzFesLhDrSOoGOSTaOuFNpp4NU=:sLu/Buf7xH0Xf1CadBke+6h1cI0UC3AghcYVPvVtcII=";
    /// Password "a\u{7}b": ASCII, passed through untouched.
    const PG_CONTROL: &str = "SCRAM-SHA-256$4096:rupAo2y9DxshUIngTNPI8w==$QRQKX7gIB689A+EmpUIeO4YWwxti7qCpTE3sfIzE/fc=:hKjcPa/L0PvNoN8jMOvaqx1XLv5Cga7xPU7R26TwcFY=";

    fn verifier_error(s: &str) -> VerifierFault {
        match ScramVerifier::parse(s) {
            Err(ScramError::InvalidVerifier(fault)) => fault,
            other => panic!("expected InvalidVerifier, got {other:?}"),
        }
    }

    #[test]
    fn postgres_verifiers_round_trip_and_verify() {
        for (pg, good, bad) in [
            (PG_FOOBAR, &b"foobar"[..], &b"foobaz"[..]),
            (PG_PENCIL, b"pencil", b"Pencil"),
            (PG_CONTROL, b"a\x07b", b"ab"),
        ] {
            let v = ScramVerifier::parse(pg).unwrap();
            assert_eq!(v.to_pg_string(), pg);
            assert_eq!(v.to_string(), pg);
            assert_eq!(v.iterations(), 4096);
            assert_eq!(v.salt().len(), 16);
            assert!(v.verify_password(good));
            assert!(!v.verify_password(bad));
            assert!(!v.verify_password(b""));
        }
    }

    #[test]
    fn derive_matches_postgres() {
        let pg = ScramVerifier::parse(PG_FOOBAR).unwrap();
        let ours = ScramVerifier::derive(b"foobar", pg.salt(), pg.iterations()).unwrap();
        assert_eq!(ours.to_pg_string(), PG_FOOBAR);
    }

    #[test]
    fn saslprep_matches_postgres() {
        let nine = ScramVerifier::parse(PG_ROMAN_NINE).unwrap();
        assert!(nine.verify_password("\u{2168}".as_bytes()));
        assert!(nine.verify_password(b"IX"));
        assert!(!nine.verify_password(b"ix"));

        let shy = ScramVerifier::parse(PG_SOFT_HYPHEN).unwrap();
        assert!(shy.verify_password("I\u{AD}X".as_bytes()));
        assert!(shy.verify_password(b"IX"));

        let private = ScramVerifier::parse(PG_PRIVATE_USE).unwrap();
        assert!(private.verify_password("a\u{E000}b".as_bytes()));
        assert!(!private.verify_password(b"ab"));
    }

    #[test]
    fn password_preparation_edge_cases() {
        // Not UTF-8: raw bytes.
        assert_eq!(&prepare_password(b"\xff\xfe")[..], b"\xff\xfe");
        // Maps to nothing: PostgreSQL calls that prohibited and uses raw bytes.
        assert_eq!(
            &prepare_password("\u{AD}".as_bytes())[..],
            "\u{AD}".as_bytes()
        );
        // Non-ASCII space becomes ASCII space (RFC 4013 §2.1).
        assert_eq!(&prepare_password("a\u{A0}b".as_bytes())[..], b"a b");
        assert_eq!(&prepare_password(b"")[..], b"");
    }

    #[test]
    fn generate_and_verify() {
        let v = ScramVerifier::generate(b"correct horse").unwrap();
        assert_eq!(v.iterations(), DEFAULT_ITERATIONS);
        assert_eq!(v.salt().len(), DEFAULT_SALT_LEN);
        assert!(v.verify_password(b"correct horse"));
        assert!(!v.verify_password(b"correct horsf"));
        let again = ScramVerifier::parse(&v.to_pg_string()).unwrap();
        assert!(again.verify_password(b"correct horse"));
        let other = ScramVerifier::generate(b"correct horse").unwrap();
        assert_ne!(v.salt(), other.salt());
    }

    #[test]
    fn derive_rejects_bad_parameters() {
        assert_eq!(
            ScramVerifier::derive(b"x", b"", 4096).unwrap_err(),
            ScramError::InvalidVerifier(VerifierFault::Salt)
        );
        assert_eq!(
            ScramVerifier::derive(b"x", b"salt", 0).unwrap_err(),
            ScramError::InvalidVerifier(VerifierFault::Iterations)
        );
        assert_eq!(
            ScramVerifier::derive(b"x", b"salt", u32::MAX).unwrap_err(),
            ScramError::InvalidVerifier(VerifierFault::Iterations)
        );
        let long = vec![0u8; MAX_SALT_LEN + 1];
        assert!(ScramVerifier::derive(b"x", &long, 1).is_err());
        let v = ScramVerifier::derive(b"x", &long[..MAX_SALT_LEN], 1).unwrap();
        assert!(ScramVerifier::parse(&v.to_pg_string()).is_ok());
    }

    #[test]
    fn debug_hides_keys() {
        let v = ScramVerifier::parse(PG_FOOBAR).unwrap();
        let shown = format!("{v:?}");
        assert_eq!(
            shown,
            "ScramVerifier { iterations: 4096, salt_len: 16, .. }"
        );
    }

    #[test]
    fn malformed_verifiers() {
        use VerifierFault::*;
        let good_key = "t7WnX5oHWexVhkkV2U7yj+CsC580hkEp9Xgu/d3trO8=";
        let salt = "KfA4ZsLauWG6ABXnDOtLUw==";
        let cases: Vec<(String, VerifierFault)> = vec![
            (String::new(), Prefix),
            ("SCRAM-SHA-256".into(), Prefix),
            ("scram-sha-256$4096:x$y:z".into(), Prefix),
            ("md5abcdef".into(), Prefix),
            ("SCRAM-SHA-256$".into(), Layout),
            (format!("SCRAM-SHA-256$4096:{salt}"), Layout),
            (format!("SCRAM-SHA-256$4096:{salt}${good_key}"), Layout),
            (format!("SCRAM-SHA-256$4096${good_key}:{good_key}"), Layout),
            (
                format!("SCRAM-SHA-256$4096:{salt}${good_key}:{good_key}$"),
                Layout,
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${good_key}:{good_key}:x"),
                Layout,
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}:x${good_key}:{good_key}"),
                Layout,
            ),
            (
                format!("SCRAM-SHA-256$:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (
                format!("SCRAM-SHA-256$0:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (
                format!("SCRAM-SHA-256$-1:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (
                format!("SCRAM-SHA-256$+4096:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (
                format!("SCRAM-SHA-256$ 4096:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (
                format!("SCRAM-SHA-256$2147483648:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (
                format!("SCRAM-SHA-256$99999999999999999999:{salt}${good_key}:{good_key}"),
                Iterations,
            ),
            (format!("SCRAM-SHA-256$4096:${good_key}:{good_key}"), Salt),
            (
                format!("SCRAM-SHA-256$4096:not*base64${good_key}:{good_key}"),
                Salt,
            ),
            (
                format!("SCRAM-SHA-256$4096:KfA4ZsLauWG6ABXnDOtLUw${good_key}:{good_key}"),
                Salt,
            ),
            (format!("SCRAM-SHA-256$4096:{salt}$:{good_key}"), StoredKey),
            (
                format!("SCRAM-SHA-256$4096:{salt}$AAAA:{good_key}"),
                StoredKey,
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${good_key}A:{good_key}"),
                StoredKey,
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${good_key}:{}", &good_key[..43]),
                ServerKey,
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${good_key}:{}", "A".repeat(44)),
                ServerKey,
            ),
            (
                "SCRAM-SHA-256$".to_string() + &"1".repeat(MAX_VERIFIER_LEN),
                TooLong,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(verifier_error(&input), want, "input {input:?}");
        }
        let max = format!("SCRAM-SHA-256$2147483647:{salt}${good_key}:{good_key}");
        assert_eq!(
            ScramVerifier::parse(&max).unwrap().iterations(),
            2_147_483_647
        );
    }

    #[test]
    fn errors_do_not_echo_input() {
        let secret = "SCRAM-SHA-256$4096:sup3rs3cret$sup3rs3cret:sup3rs3cret";
        let err = ScramVerifier::parse(secret).unwrap_err();
        assert!(!err.to_string().contains("sup3r"));
        assert!(!format!("{err:?}").contains("sup3r"));
    }

    #[test]
    fn mock_verifier_is_stable_and_refuses_everything() {
        let key = [7u8; KEY_LEN];
        let a = mock_verifier(b"ghost", &key);
        let b = mock_verifier(b"ghost", &key);
        let c = mock_verifier(b"other", &key);
        let d = mock_verifier(b"ghost", &[8u8; KEY_LEN]);
        assert_eq!(a.to_pg_string(), b.to_pg_string());
        assert_eq!(a.salt().len(), DEFAULT_SALT_LEN);
        assert_eq!(a.iterations(), DEFAULT_ITERATIONS);
        assert_ne!(a.salt(), c.salt());
        assert_ne!(a.salt(), d.salt());
        assert!(ScramVerifier::parse(&a.to_pg_string()).is_ok());
        assert!(!a.verify_password(b"ghost"));
        assert!(!a.verify_password(b""));
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal(b"4096", 100_000), Some(4096));
        assert_eq!(parse_decimal(b"0004096", 100_000), Some(4096));
        assert_eq!(parse_decimal(b"100000", 100_000), Some(100_000));
        assert_eq!(parse_decimal(b"100001", 100_000), None);
        assert_eq!(parse_decimal(b"0", 100_000), None);
        assert_eq!(parse_decimal(b"", 100_000), None);
        assert_eq!(parse_decimal(b"4096 ", 100_000), None);
        assert_eq!(parse_decimal(b"4294967295", u32::MAX), Some(u32::MAX));
        assert_eq!(parse_decimal(b"4294967296", u32::MAX), None);
        assert_eq!(parse_decimal(b"99999999999", u32::MAX), None);
    }

    #[test]
    fn nonce_and_key_helpers() {
        assert!(is_valid_nonce(b"abc+/=~!"));
        assert!(!is_valid_nonce(b""));
        assert!(!is_valid_nonce(b"a,b"));
        assert!(!is_valid_nonce(b"a b"));
        assert!(!is_valid_nonce(b"a\x7fb"));
        assert!(!is_valid_nonce("\u{e9}".as_bytes()));
        assert!(!is_valid_nonce(&[b'a'; MAX_NONCE_LEN + 1]));
        let n = random_nonce().unwrap();
        assert_eq!(n.len(), 24);
        assert!(is_valid_nonce(n.as_bytes()));
        assert_ne!(n, random_nonce().unwrap());
        assert!(decode_key(b"t7WnX5oHWexVhkkV2U7yj+CsC580hkEp9Xgu/d3trO8=").is_some());
        // Non-canonical trailing bits are refused.
        assert!(decode_key(b"t7WnX5oHWexVhkkV2U7yj+CsC580hkEp9Xgu/d3trO9=").is_none());
        assert!(decode_key(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_some());
        assert!(decode_key(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_none());
        assert!(decode_key(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==").is_none());
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn errors_say_who_is_at_fault() {
        assert_eq!(
            ScramError::AuthenticationFailed.fault(),
            ScramFault::Credentials
        );
        assert_eq!(
            ScramError::MalformedClientMessage(Malformed::Nonce).fault(),
            ScramFault::Client
        );
        assert_eq!(
            ScramError::ServerSignatureMismatch.fault(),
            ScramFault::Backend
        );
        assert_eq!(
            ScramError::InvalidVerifier(VerifierFault::Salt).fault(),
            ScramFault::Config
        );
        assert_eq!(ScramError::RandomUnavailable.fault(), ScramFault::Internal);
    }

    #[test]
    fn mechanism_names() {
        for m in [Mechanism::ScramSha256, Mechanism::ScramSha256Plus] {
            assert_eq!(Mechanism::from_name(m.name().as_bytes()), Some(m));
        }
        assert_eq!(Mechanism::from_name(b"scram-sha-256"), None);
        assert_eq!(Mechanism::from_name(b"SCRAM-SHA-1"), None);
    }
}

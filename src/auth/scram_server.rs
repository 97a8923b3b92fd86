//! SCRAM-SHA-256 server side (RFC 5802 §5, RFC 7677): the proxy authenticating a
//! PostgreSQL client. Pure state machine; the session moves the bytes.
//!
//! ```text
//! SASLInitialResponse(mechanism, client-first) ─ ScramServer::start ─▶ ServerFirstSent + server-first
//! SASLResponse(client-final) ─ ServerFirstSent::finish ─▶ server-final ("v=...")
//! ```
//!
//! The checks and their order follow PostgreSQL's `src/backend/libpq/auth-scram.c`, so
//! clients see the behaviour they already know from PostgreSQL.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::scram::{
    attr_value, b64_encode, check_message, decode_key, hmac_sha256, is_attribute, is_valid_nonce,
    random_nonce, sha256, split_field, xor, Malformed, Mechanism, ScramError, ScramVerifier,
    KEY_LEN,
};

/// The only channel binding type we speak (RFC 5929 §4), as PostgreSQL.
const TLS_SERVER_END_POINT: &[u8] = b"tls-server-end-point";

/// Whether this client connection can do channel binding.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// No TLS on this connection: only SCRAM-SHA-256 is offered.
    Unsupported,
    /// TLS is up; carries the `tls-server-end-point` data (RFC 5929 §4.1): the hash of
    /// our certificate under its signature's hash algorithm (SHA-256 for MD5/SHA-1).
    TlsServerEndPoint(Vec<u8>),
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => f.write_str("Unsupported"),
            Self::TlsServerEndPoint(hash) => write!(f, "TlsServerEndPoint({} bytes)", hash.len()),
        }
    }
}

impl ChannelBinding {
    /// The mechanisms to advertise in AuthenticationSASL, preferred first (PostgreSQL
    /// lists -PLUS first when the connection is TLS).
    pub fn offered_mechanisms(&self) -> &'static [Mechanism] {
        match self {
            Self::Unsupported => &[Mechanism::ScramSha256],
            Self::TlsServerEndPoint(_) => &[Mechanism::ScramSha256Plus, Mechanism::ScramSha256],
        }
    }
}

/// The gs2 channel binding flag the client sent (RFC 5802 §7 `gs2-cbind-flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gs2Flag {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    Yes,
    /// `p=tls-server-end-point`: the client binds to our certificate.
    TlsServerEndPoint,
}

impl Gs2Flag {
    /// The gs2 header as the client must have sent it, which its `c=` repeats.
    fn header(self) -> &'static [u8] {
        match self {
            Self::No => b"n,,",
            Self::Yes => b"y,,",
            Self::TlsServerEndPoint => b"p=tls-server-end-point,,",
        }
    }
}

/// Entry point of the server side; holds no state, so the only values are the states
/// that follow ([`ServerFirstSent`]).
#[derive(Debug)]
pub enum ScramServer {}

impl ScramServer {
    /// Handles the client-first-message of a SASLInitialResponse for `mechanism`,
    /// returning the next state and the server-first-message to send.
    ///
    /// `verifier` is the user's (from the startup packet; the SCRAM `n=` user name is
    /// ignored, as PostgreSQL does), or a [`mock_verifier`](super::scram::mock_verifier)
    /// for an unknown user. The caller checks that `mechanism` is one it offered
    /// ([`ChannelBinding::offered_mechanisms`], or fewer if policy demands -PLUS); we
    /// refuse only -PLUS on a connection without TLS. Errors other than [`ScramError::MissingChannelBindingData`]
    /// and [`ScramError::RandomUnavailable`] are the client's fault.
    pub fn start(
        verifier: &ScramVerifier,
        mechanism: Mechanism,
        client_first: &[u8],
        channel_binding: ChannelBinding,
    ) -> Result<(ServerFirstSent, Vec<u8>), ScramError> {
        let server_nonce = random_nonce()?;
        Self::start_with_nonce(
            verifier,
            mechanism,
            client_first,
            channel_binding,
            &server_nonce,
        )
    }

    /// [`ScramServer::start`] with a chosen server nonce, for test vectors.
    fn start_with_nonce(
        verifier: &ScramVerifier,
        mechanism: Mechanism,
        client_first: &[u8],
        channel_binding: ChannelBinding,
        server_nonce: &str,
    ) -> Result<(ServerFirstSent, Vec<u8>), ScramError> {
        match (&channel_binding, mechanism) {
            // PostgreSQL: "client selected an invalid SASL authentication mechanism".
            (ChannelBinding::Unsupported, Mechanism::ScramSha256Plus) => {
                return Err(ScramError::MechanismNotOffered)
            }
            (ChannelBinding::TlsServerEndPoint(hash), _) if hash.is_empty() => {
                return Err(ScramError::MissingChannelBindingData)
            }
            _ => {}
        }
        let first = parse_client_first(client_first, mechanism, &channel_binding)?;

        let mut nonce = Vec::with_capacity(first.nonce.len() + server_nonce.len());
        nonce.extend_from_slice(first.nonce);
        nonce.extend_from_slice(server_nonce.as_bytes());

        // server-first-message = nonce "," salt "," iteration-count (RFC 5802 §7).
        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(b64_encode(verifier.salt()).as_bytes());
        server_first.extend_from_slice(format!(",i={}", verifier.iterations()).as_bytes());

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof (RFC 5802 §3).
        let mut auth_message = first.bare.to_vec();
        auth_message.push(b',');
        auth_message.extend_from_slice(&server_first);
        auth_message.push(b',');

        // c= carries base64(gs2-header || channel-binding-data) (RFC 5802 §7).
        // The parser let flag `p` through only with -PLUS on a TLS connection.
        let mut cbind_input = first.flag.header().to_vec();
        if let (Gs2Flag::TlsServerEndPoint, ChannelBinding::TlsServerEndPoint(hash)) =
            (first.flag, &channel_binding)
        {
            cbind_input.extend_from_slice(hash);
        }

        let state = ServerFirstSent {
            stored_key: Zeroizing::new(*verifier.stored_key()),
            server_key: Zeroizing::new(*verifier.server_key()),
            expected_cbind: b64_encode(&cbind_input).into_bytes(),
            nonce,
            auth_message,
        };
        Ok((state, server_first))
    }
}

/// The parts of a client-first-message we use.
struct ClientFirst<'a> {
    flag: Gs2Flag,
    /// client-first-message-bare: everything after the gs2 header.
    bare: &'a [u8],
    /// The client's nonce, already checked to be printable.
    nonce: &'a [u8],
}

/// Parses `gs2-header client-first-message-bare` (RFC 5802 §7) with the checks, and
/// in the order, of PostgreSQL's `read_client_first_message`.
fn parse_client_first<'a>(
    msg: &'a [u8],
    mechanism: Mechanism,
    channel_binding: &ChannelBinding,
) -> Result<ClientFirst<'a>, ScramError> {
    let malformed = ScramError::MalformedClientMessage;
    check_message(msg).map_err(malformed)?;
    let plus = mechanism == Mechanism::ScramSha256Plus;

    let (flag, rest) = split_field(msg);
    let rest = rest.ok_or(malformed(Malformed::Gs2Header))?;
    let flag = match flag {
        // PostgreSQL: "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message
        // does not include channel binding data."
        b"n" | b"y" if plus => return Err(malformed(Malformed::ChannelBindingFlag)),
        b"n" => Gs2Flag::No,
        // RFC 5802 §6: "y" while we do offer channel binding means the client was told
        // we don't, i.e. SCRAM-SHA-256-PLUS was stripped from our offer on the way.
        b"y" if matches!(channel_binding, ChannelBinding::TlsServerEndPoint(_)) => {
            return Err(ScramError::ChannelBindingDowngrade)
        }
        b"y" => Gs2Flag::Yes,
        _ => match attr_value(flag, b'p') {
            Some(_) if !plus => return Err(malformed(Malformed::ChannelBindingFlag)),
            Some(TLS_SERVER_END_POINT) => Gs2Flag::TlsServerEndPoint,
            Some(_) => return Err(ScramError::UnsupportedChannelBindingType),
            None => return Err(malformed(Malformed::Gs2Header)),
        },
    };

    let (authzid, bare) = split_field(rest);
    if authzid.starts_with(b"a=") {
        return Err(ScramError::AuthzidNotSupported);
    }
    let ([], Some(bare)) = (authzid, bare) else {
        return Err(malformed(Malformed::Gs2Header));
    };

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    let (username, rest) = split_field(bare);
    if username.starts_with(b"m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    // The user name is ignored: PostgreSQL authenticates the startup packet's user.
    attr_value(username, b'n').ok_or(malformed(Malformed::ExpectedAttribute('n')))?;
    let rest = rest.ok_or(malformed(Malformed::ExpectedAttribute('r')))?;
    let (nonce, mut extensions) = split_field(rest);
    let nonce = attr_value(nonce, b'r').ok_or(malformed(Malformed::ExpectedAttribute('r')))?;
    if !is_valid_nonce(nonce) {
        return Err(malformed(Malformed::Nonce));
    }
    // Optional extensions are ignored (RFC 5802 §5.1), but must be well formed.
    while let Some(rest) = extensions {
        let (field, next) = split_field(rest);
        if !is_attribute(field) {
            return Err(malformed(Malformed::InvalidAttribute));
        }
        extensions = next;
    }
    Ok(ClientFirst { flag, bare, nonce })
}

/// Server state after sending server-first-message, waiting for client-final-message.
pub struct ServerFirstSent {
    stored_key: Zeroizing<[u8; KEY_LEN]>,
    server_key: Zeroizing<[u8; KEY_LEN]>,
    /// The `c=` value the client must send: base64 of gs2 header and binding data.
    expected_cbind: Vec<u8>,
    /// client nonce || server nonce.
    nonce: Vec<u8>,
    /// client-first-message-bare "," server-first-message ",".
    auth_message: Vec<u8>,
}

impl fmt::Debug for ServerFirstSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFirstSent").finish_non_exhaustive()
    }
}

impl ServerFirstSent {
    /// Checks the client-final-message and returns the server-final-message (`v=...`)
    /// to send with AuthenticationSASLFinal.
    ///
    /// A wrong proof is [`ScramError::AuthenticationFailed`]; every other error means
    /// the client broke the protocol. Like PostgreSQL, we check the channel binding,
    /// then the nonce, then the proof.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let last = parse_client_final(client_final)?;

        // Must equal exactly; for -PLUS a mismatch means the client's TLS session ends
        // at someone other than us (RFC 5929 §4).
        if last.cbind != self.expected_cbind.as_slice() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if last.nonce != self.nonce.as_slice() {
            return Err(ScramError::NonceMismatch);
        }

        let mut auth_message = self.auth_message;
        auth_message.extend_from_slice(last.without_proof);

        // ClientSignature = HMAC(StoredKey, AuthMessage); ClientKey = ClientProof XOR
        // ClientSignature; the proof is right iff H(ClientKey) = StoredKey (RFC 5802 §3).
        let signature = Zeroizing::new(hmac_sha256(&self.stored_key[..], &[&auth_message]));
        let client_key = Zeroizing::new(xor(&last.proof, &signature));
        let candidate = Zeroizing::new(sha256(&client_key[..]));
        if !bool::from(candidate[..].ct_eq(&self.stored_key[..])) {
            return Err(ScramError::AuthenticationFailed);
        }

        // ServerSignature = HMAC(ServerKey, AuthMessage) proves we hold the verifier.
        let server_signature = hmac_sha256(&self.server_key[..], &[&auth_message]);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(b64_encode(&server_signature).as_bytes());
        Ok(server_final)
    }
}

/// The parts of a client-final-message we use.
struct ClientFinal<'a> {
    /// Value of `c=`, still in base64: it is compared as text, as PostgreSQL does.
    cbind: &'a [u8],
    nonce: &'a [u8],
    proof: [u8; KEY_LEN],
    /// client-final-message-without-proof: everything before `,p=`.
    without_proof: &'a [u8],
}

/// Parses `channel-binding "," nonce ["," extensions] "," proof` (RFC 5802 §7), as
/// PostgreSQL's `read_client_final_message` does: `c`, then `r`, then optional
/// extensions, and `p` last.
fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let malformed = ScramError::MalformedClientMessage;
    check_message(msg).map_err(malformed)?;

    let (cbind, rest) = split_field(msg);
    let cbind = attr_value(cbind, b'c').ok_or(malformed(Malformed::ExpectedAttribute('c')))?;
    let rest = rest.ok_or(malformed(Malformed::ExpectedAttribute('r')))?;
    let (nonce, rest) = split_field(rest);
    let nonce = attr_value(nonce, b'r').ok_or(malformed(Malformed::ExpectedAttribute('r')))?;
    let rest = rest.ok_or(malformed(Malformed::ExpectedAttribute('p')))?;

    // rest = [extensions ","] proof
    let (mut extensions, proof_field) = match rest.iter().rposition(|&b| b == b',') {
        Some(i) => {
            let (extensions, proof_field) = rest.split_at(i);
            (Some(extensions), proof_field.get(1..).unwrap_or_default())
        }
        None => (None, rest),
    };
    let proof =
        attr_value(proof_field, b'p').ok_or(malformed(Malformed::ExpectedAttribute('p')))?;
    while let Some(rest) = extensions {
        let (field, next) = split_field(rest);
        if !is_attribute(field) || field.starts_with(b"p=") {
            return Err(malformed(Malformed::InvalidAttribute));
        }
        extensions = next;
    }
    let proof = decode_key(proof).ok_or(malformed(Malformed::KeyLength('p')))?;

    // proof_field is a suffix of msg, preceded by ','.
    let without_proof = msg
        .len()
        .checked_sub(proof_field.len() + 1)
        .and_then(|end| msg.get(..end))
        .ok_or(malformed(Malformed::ExpectedAttribute('p')))?;
    Ok(ClientFinal {
        cbind,
        nonce,
        proof: *proof,
        without_proof,
    })
}

#[cfg(test)]
mod tests {
    use super::super::scram::{
        decode_salt, mock_verifier, DEFAULT_ITERATIONS, MAX_MESSAGE_LEN, MAX_NONCE_LEN,
    };
    use super::*;

    /// RFC 7677 §3 example: user "user", password "pencil".
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// The RFC 7677 verifier, derived once for all tests (PBKDF2 is slow unoptimised).
    fn pencil() -> &'static ScramVerifier {
        static PENCIL: std::sync::OnceLock<ScramVerifier> = std::sync::OnceLock::new();
        PENCIL.get_or_init(|| {
            let salt = decode_salt(SALT_B64.as_bytes()).unwrap();
            ScramVerifier::derive(b"pencil", &salt, 4096).unwrap()
        })
    }

    fn start(client_first: &[u8]) -> Result<(ServerFirstSent, Vec<u8>), ScramError> {
        ScramServer::start_with_nonce(
            pencil(),
            Mechanism::ScramSha256,
            client_first,
            ChannelBinding::Unsupported,
            SERVER_NONCE,
        )
    }

    fn client_error(result: Result<impl Sized, ScramError>) -> Malformed {
        match result.map(|_| ()) {
            Err(ScramError::MalformedClientMessage(m)) => m,
            other => panic!("expected MalformedClientMessage, got {other:?}"),
        }
    }

    #[test]
    fn rfc7677_test_vector() {
        let (state, server_first) = start(CLIENT_FIRST).unwrap();
        assert_eq!(server_first, SERVER_FIRST);
        assert_eq!(state.finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
    }

    #[test]
    fn wrong_proof_is_authentication_failure() {
        let (state, _) = start(CLIENT_FIRST).unwrap();
        let mut bad = CLIENT_FINAL.to_vec();
        let at = bad.len() - 5;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            state.finish(&bad).unwrap_err(),
            ScramError::AuthenticationFailed
        );
    }

    #[test]
    fn real_server_nonce_is_random_and_printable() {
        let v = pencil();
        let (_, a) = ScramServer::start(
            v,
            Mechanism::ScramSha256,
            CLIENT_FIRST,
            ChannelBinding::Unsupported,
        )
        .unwrap();
        let (_, b) = ScramServer::start(
            v,
            Mechanism::ScramSha256,
            CLIENT_FIRST,
            ChannelBinding::Unsupported,
        )
        .unwrap();
        assert_ne!(a, b);
        let nonce = attr_value(split_field(&a).0, b'r').unwrap();
        assert_eq!(nonce.len(), "rOprNGfwEbeRWgbNEkqO".len() + 24);
        assert!(is_valid_nonce(nonce));
    }

    #[test]
    fn mock_verifier_fails_with_the_same_error() {
        let mock = mock_verifier(b"user", &[1u8; KEY_LEN]);
        let (state, server_first) = ScramServer::start_with_nonce(
            &mock,
            Mechanism::ScramSha256,
            CLIENT_FIRST,
            ChannelBinding::Unsupported,
            SERVER_NONCE,
        )
        .unwrap();
        assert!(server_first.ends_with(format!(",i={DEFAULT_ITERATIONS}").as_bytes()));
        let mut last = b"c=biws,r=rOprNGfwEbeRWgbNEkqO".to_vec();
        last.extend_from_slice(SERVER_NONCE.as_bytes());
        last.extend_from_slice(b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(
            state.finish(&last).unwrap_err(),
            ScramError::AuthenticationFailed
        );
    }

    #[test]
    fn gs2_header_rules_follow_postgres() {
        let v = pencil();
        let tls = ChannelBinding::TlsServerEndPoint(vec![0xAB; 32]);
        let run = |mech, msg: &[u8], cb: &ChannelBinding| {
            ScramServer::start_with_nonce(v, mech, msg, cb.clone(), SERVER_NONCE).map(|_| ())
        };
        use ChannelBinding::Unsupported;
        use Mechanism::{ScramSha256 as Plain, ScramSha256Plus as Plus};
        let plus_first = b"p=tls-server-end-point,,n=,r=abc";

        assert_eq!(run(Plain, b"n,,n=,r=abc", &Unsupported), Ok(()));
        assert_eq!(run(Plain, b"y,,n=,r=abc", &Unsupported), Ok(()));
        assert_eq!(run(Plain, b"n,,n=,r=abc", &tls), Ok(()));
        assert_eq!(run(Plus, plus_first, &tls), Ok(()));
        // Downgrade: client could bind, thinks we can't, but we can.
        assert_eq!(
            run(Plain, b"y,,n=,r=abc", &tls),
            Err(ScramError::ChannelBindingDowngrade)
        );
        assert_eq!(
            run(Plus, plus_first, &Unsupported),
            Err(ScramError::MechanismNotOffered)
        );
        assert_eq!(
            run(
                Plus,
                plus_first,
                &ChannelBinding::TlsServerEndPoint(Vec::new())
            ),
            Err(ScramError::MissingChannelBindingData)
        );
        for (mech, msg, cb) in [
            (Plus, &b"n,,n=,r=abc"[..], &tls),
            (Plus, b"y,,n=,r=abc", &tls),
            (Plain, plus_first, &tls),
            (Plain, plus_first, &Unsupported),
        ] {
            assert_eq!(
                client_error(run(mech, msg, cb)),
                Malformed::ChannelBindingFlag
            );
        }
        assert_eq!(
            run(Plus, b"p=tls-unique,,n=,r=abc", &tls),
            Err(ScramError::UnsupportedChannelBindingType)
        );
        assert_eq!(
            run(Plain, b"n,a=admin,n=,r=abc", &Unsupported),
            Err(ScramError::AuthzidNotSupported)
        );
        assert_eq!(
            run(Plain, b"n,,m=ext,n=,r=abc", &Unsupported),
            Err(ScramError::ExtensionNotSupported)
        );
    }

    #[test]
    fn malformed_client_first() {
        use Malformed::*;
        let long_nonce = format!("n,,n=,r={}", "a".repeat(MAX_NONCE_LEN + 1));
        let huge = format!("n,,n=,r=abc,x={}", "a".repeat(MAX_MESSAGE_LEN));
        let cases: Vec<(&[u8], Malformed)> = vec![
            (b"", Gs2Header),
            (b"n", Gs2Header),
            (b"n,", Gs2Header),
            (b"n,,", ExpectedAttribute('n')),
            (b"x,,n=,r=abc", Gs2Header),
            (b"nn,,n=,r=abc", Gs2Header),
            (b"N,,n=,r=abc", Gs2Header),
            (b"n,x,n=,r=abc", Gs2Header),
            (b"n,,r=abc", ExpectedAttribute('n')),
            (b"n,,n=user", ExpectedAttribute('r')),
            (b"n,,n=user,", ExpectedAttribute('r')),
            (b"n,,n=user,s=abc", ExpectedAttribute('r')),
            (b"n,,n=user,r=", Nonce),
            (b"n,,n=user,r=a b", Nonce),
            (b"n,,n=user,r=\xff\xfe", Nonce),
            (b"n,,n=user,r=\x01", Nonce),
            (long_nonce.as_bytes(), Nonce),
            (b"n,,n=user,r=abc,", InvalidAttribute),
            (b"n,,n=user,r=abc,1=x", InvalidAttribute),
            (b"n,,n=user,r=abc,xx", InvalidAttribute),
            (b"n,,n=user\0,r=abc", NulByte),
            (huge.as_bytes(), TooLong),
        ];
        for (msg, want) in cases {
            assert_eq!(
                client_error(start(msg)),
                want,
                "input {:?}",
                String::from_utf8_lossy(msg)
            );
        }
        // Extensions after the nonce are ignored, and so is the user name.
        assert!(start(b"n,,n=someone=2Celse,r=abc,x=1,y=").is_ok());
    }

    #[test]
    fn malformed_client_final() {
        use Malformed::*;
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: Vec<(String, Malformed)> = vec![
            (String::new(), ExpectedAttribute('c')),
            ("c=biws".into(), ExpectedAttribute('r')),
            (format!("c=biws,r={nonce}"), ExpectedAttribute('p')),
            (format!("c=biws,r={nonce},"), ExpectedAttribute('p')),
            (format!("r={nonce},{proof}"), ExpectedAttribute('c')),
            (format!("c=biws,{proof}"), ExpectedAttribute('r')),
            (
                format!("c=biws,x=1,r={nonce},{proof}"),
                ExpectedAttribute('r'),
            ),
            (format!("c=biws,r={nonce},x,{proof}"), InvalidAttribute),
            (
                format!("c=biws,r={nonce},{proof},{proof}"),
                InvalidAttribute,
            ),
            (format!("c=biws,r={nonce},p=AAAA"), KeyLength('p')),
            (format!("c=biws,r={nonce},p=!!!!"), KeyLength('p')),
            (format!("c=biws,r={nonce},{proof}\0"), NulByte),
        ];
        for (msg, want) in cases {
            let (state, _) = start(CLIENT_FIRST).unwrap();
            assert_eq!(
                client_error(state.finish(msg.as_bytes())),
                want,
                "input {msg:?}"
            );
        }
        // Extensions between nonce and proof are allowed (and covered by the proof).
        let (state, _) = start(CLIENT_FIRST).unwrap();
        let msg = format!("c=biws,r={nonce},x=1,{proof}");
        assert_eq!(
            state.finish(msg.as_bytes()),
            Err(ScramError::AuthenticationFailed)
        );
    }

    #[test]
    fn channel_binding_and_nonce_checks() {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let finish = |msg: String| start(CLIENT_FIRST).unwrap().0.finish(msg.as_bytes());
        // "y,," is eSws; the client said "n".
        assert_eq!(
            finish(format!("c=eSws,r={nonce},{proof}")),
            Err(ScramError::ChannelBindingMismatch)
        );
        assert_eq!(
            finish(format!("c=,r={nonce},{proof}")),
            Err(ScramError::ChannelBindingMismatch)
        );
        assert_eq!(
            finish(format!("c=biws,r={nonce}x,{proof}")),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            finish(format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,{proof}")),
            Err(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn offered_mechanisms() {
        assert_eq!(
            ChannelBinding::Unsupported.offered_mechanisms(),
            &[Mechanism::ScramSha256]
        );
        assert_eq!(
            ChannelBinding::TlsServerEndPoint(vec![1]).offered_mechanisms(),
            &[Mechanism::ScramSha256Plus, Mechanism::ScramSha256]
        );
        assert_eq!(
            format!("{:?}", ChannelBinding::TlsServerEndPoint(vec![1, 2])),
            "TlsServerEndPoint(2 bytes)"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix and single-byte mutation of valid
        // messages must give Ok or Err, never a panic.
        let v = pencil();
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for base in [CLIENT_FIRST, &b"p=tls-server-end-point,,n=,r=abc,x=y"[..]] {
            for i in 0..=base.len() {
                inputs.push(base[..i].to_vec());
                for b in [0u8, b',', b'=', 0xff, b'a'] {
                    let mut m = base.to_vec();
                    if i < m.len() {
                        m[i] = b;
                        inputs.push(m);
                    }
                }
            }
        }
        let tls = ChannelBinding::TlsServerEndPoint(vec![9; 32]);
        for msg in &inputs {
            for mech in [Mechanism::ScramSha256, Mechanism::ScramSha256Plus] {
                let _ = ScramServer::start(v, mech, msg, tls.clone());
            }
        }
        for i in 0..=CLIENT_FINAL.len() {
            let (state, _) = start(CLIENT_FIRST).unwrap();
            let _ = state.finish(&CLIENT_FINAL[..i]);
            for b in [0u8, b',', b'=', 0xff] {
                if i < CLIENT_FINAL.len() {
                    let mut m = CLIENT_FINAL.to_vec();
                    m[i] = b;
                    let (state, _) = start(CLIENT_FIRST).unwrap();
                    let _ = state.finish(&m);
                }
            }
        }
    }
}

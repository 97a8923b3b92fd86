//! Fuzzes the SCRAM-SHA-256 parsers and state machines (`portcullis::auth::scram`,
//! `scram_server`, `scram_client`).
//!
//! Input: the first byte picks a mode (low three bits) and a channel-binding
//! setup (the bits above); the rest is the mode's material. Messages that come
//! in pairs are split by a two-byte length prefix (see [`split`]).
//!
//! | mode | what runs | invariant |
//! | --- | --- | --- |
//! | 0 | `ScramVerifier::parse` on any string | errors are config faults; what parses prints back as it came (up to leading zeros in the count) and parses again to the same |
//! | 1 | server: `start(client-first)`, `finish(client-final)`, both arbitrary | never authenticates; every error is the client's fault |
//! | 2 | as 1, but client-final carries the right `c=` and `r=` and arbitrary rest | never authenticates; a well-formed proof fails as `AuthenticationFailed` |
//! | 3 | client: `handle_server_first`, `handle_server_final`, both arbitrary | never accepts; every error is the backend's (or our keys') fault |
//! | 4 | as 3, but server-first starts with our nonce | a client-final we produce is well formed; a random server-final is never accepted |
//! | 5 | a real client and server, one byte of one message flipped | unchanged: both succeed; flipped, or bound to another certificate, or downgraded: the exchange fails |
//! | 6 | `ScramVerifier::derive` and `verify_password` | the password verifies; a different ASCII password does not |
//!
//! PBKDF2 runs at 1 to 4 iterations here so that the fuzzer spends its time in
//! the parsers.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use portcullis::auth::scram::{
    mock_verifier, Mechanism, ScramError, ScramFault, ScramVerifier, KEY_LEN,
};
use portcullis::auth::scram_client::{ClientChannelBinding, ClientKeyCache, ScramClient};
use portcullis::auth::scram_server::{ChannelBinding, ScramServer};

/// Salt and iteration count of the server verifier and the client's cached keys.
const SALT: &[u8] = b"portcullis-fuzz!";
const ITERATIONS: u32 = 2;
/// Stand-in `tls-server-end-point` data (a SHA-256 certificate hash).
const CERT_HASH: [u8; 32] = [0xC5; 32];
const OTHER_CERT_HASH: [u8; 32] = [0x5C; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let setup = selector >> 3;
    match selector & 7 {
        0 => verifier_strings(input),
        1 => server(setup, input, false),
        2 => server(setup, input, true),
        3 => client(setup, input, false),
        4 => client(setup, input, true),
        5 => exchange(setup, input),
        _ => passwords(input),
    }
});

/// Splits `input` into two messages: a little-endian u16 gives the first one's
/// length (modulo what is there), the rest is the second.
fn split(input: &[u8]) -> (&[u8], &[u8]) {
    match input {
        [lo, hi, rest @ ..] => {
            let n = usize::from(u16::from_le_bytes([*lo, *hi])) % (rest.len() + 1);
            rest.split_at(n)
        }
        _ => (input, &[]),
    }
}

fn server_verifier(mock: bool) -> &'static ScramVerifier {
    static REAL: OnceLock<ScramVerifier> = OnceLock::new();
    static MOCK: OnceLock<ScramVerifier> = OnceLock::new();
    if mock {
        MOCK.get_or_init(|| mock_verifier(b"ghost", &[3u8; KEY_LEN]))
    } else {
        REAL.get_or_init(|| {
            ScramVerifier::derive(b"pencil", SALT, ITERATIONS).expect("fixed parameters are valid")
        })
    }
}

fn server_setup(setup: u8) -> (Mechanism, ChannelBinding) {
    let mechanism = if setup & 1 == 0 {
        Mechanism::ScramSha256
    } else {
        Mechanism::ScramSha256Plus
    };
    let binding = if setup & 2 == 0 {
        ChannelBinding::Unsupported
    } else {
        ChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec())
    };
    (mechanism, binding)
}

fn client_binding(setup: u8) -> ClientChannelBinding {
    match setup % 3 {
        0 => ClientChannelBinding::None,
        1 => ClientChannelBinding::NotOffered,
        _ => ClientChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec()),
    }
}

/// Mode 0: stored verifier strings.
fn verifier_strings(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    match ScramVerifier::parse(&text) {
        Err(e) => {
            assert!(matches!(e, ScramError::InvalidVerifier(_)), "{e:?}");
            assert_eq!(e.fault(), ScramFault::Config);
        }
        Ok(v) => {
            assert!((1..=i32::MAX as u32).contains(&v.iterations()));
            assert!(!v.salt().is_empty() && v.salt().len() <= 1024);
            let printed = v.to_pg_string();
            let count_has_leading_zero = text
                .strip_prefix("SCRAM-SHA-256$")
                .is_some_and(|rest| rest.starts_with('0'));
            if !count_has_leading_zero {
                assert_eq!(printed, text, "a parsed verifier prints differently");
            }
            let again = ScramVerifier::parse(&printed).expect("printed verifier parses");
            assert_eq!(again.to_pg_string(), printed);
            assert!(!format!("{v:?}").contains('$'), "Debug shows key material");
        }
    }
}

/// The gs2 header of a client-first-message the server accepted, plus the
/// channel binding data it implies: what `c=` must carry (RFC 5802 §7).
fn expected_cbind(client_first: &[u8]) -> Option<Vec<u8>> {
    let first_comma = client_first.iter().position(|&b| b == b',')?;
    let mut cbind = client_first.get(..first_comma + 2)?.to_vec();
    if cbind.starts_with(b"p=") {
        cbind.extend_from_slice(&CERT_HASH);
    }
    Some(cbind)
}

/// Modes 1 and 2: the proxy as SCRAM server to a hostile client.
fn server(setup: u8, input: &[u8], splice: bool) {
    let (mechanism, binding) = server_setup(setup);
    let verifier = server_verifier(setup & 4 != 0);
    let (client_first, rest) = split(input);
    let (state, server_first) = match ScramServer::start(verifier, mechanism, client_first, binding)
    {
        Ok(ok) => ok,
        Err(e) => {
            assert_eq!(e.fault(), ScramFault::Client, "start: {e:?}");
            return;
        }
    };
    assert!(server_first.starts_with(b"r="));
    let nonce_end = server_first
        .iter()
        .position(|&b| b == b',')
        .expect("server-first has fields after the nonce");
    let nonce = &server_first[2..nonce_end];
    assert!(nonce
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && b != b','));
    assert!(server_first.ends_with(format!(",i={}", verifier.iterations()).as_bytes()));

    let client_final = if splice {
        let cbind =
            expected_cbind(client_first).expect("an accepted client-first has a gs2 header");
        let mut m = b"c=".to_vec();
        m.extend_from_slice(BASE64.encode(cbind).as_bytes());
        m.extend_from_slice(b",r=");
        m.extend_from_slice(nonce);
        m.extend_from_slice(rest);
        m
    } else {
        rest.to_vec()
    };
    match state.finish(&client_final) {
        Ok(_) => panic!("authenticated without knowing the password"),
        Err(e) => {
            assert!(
                matches!(e.fault(), ScramFault::Client | ScramFault::Credentials),
                "finish: {e:?}"
            );
            if splice && is_plain_proof(rest) {
                assert_eq!(e, ScramError::AuthenticationFailed);
            }
        }
    }
}

/// `,p=` and canonical base64 of exactly 32 bytes: a well-formed, wrong proof.
fn is_plain_proof(rest: &[u8]) -> bool {
    rest.strip_prefix(b",p=")
        .and_then(|p| {
            BASE64
                .decode(p)
                .ok()
                .filter(|k| k.len() == KEY_LEN)
                .map(|k| (p, k))
        })
        .is_some_and(|(p, k)| BASE64.encode(k).as_bytes() == p)
}

/// Modes 3 and 4: the proxy as SCRAM client to a hostile backend.
fn client(setup: u8, input: &[u8], splice: bool) {
    static KEYS: OnceLock<ClientKeyCache> = OnceLock::new();
    // Keys only, for SALT and ITERATIONS: any other salt or count fails cheaply
    // with NoKeysForBackend instead of running PBKDF2 at the fuzzer's count.
    let keys =
        KEYS.get_or_init(|| ClientKeyCache::from_salted_password(SALT, ITERATIONS, &[7; KEY_LEN]));
    let binding = client_binding(setup);
    let (client, client_first) =
        ScramClient::with_cache(keys.clone(), binding.clone()).expect("client-first");
    let client_nonce = client_first
        .windows(3)
        .position(|w| w == b"n=,")
        .map(|i| client_first[i + 5..].to_vec())
        .expect("client-first carries r=");

    let (server_first, server_final) = split(input);
    let server_first = if splice {
        let mut m = b"r=".to_vec();
        m.extend_from_slice(&client_nonce);
        m.extend_from_slice(server_first);
        m
    } else {
        server_first.to_vec()
    };
    let (last, client_final) = match client.handle_server_first(&server_first) {
        Ok(ok) => ok,
        Err(e) => {
            assert!(
                matches!(e.fault(), ScramFault::Backend | ScramFault::Config),
                "handle_server_first: {e:?}"
            );
            return;
        }
    };
    // What we send must be well formed: c=, the backend's whole nonce, p= of 32 bytes.
    let nonce_end = server_first
        .iter()
        .position(|&b| b == b',')
        .unwrap_or(server_first.len());
    let mut want = b"c=".to_vec();
    let mut cbind = match &binding {
        ClientChannelBinding::None => b"n,,".to_vec(),
        ClientChannelBinding::NotOffered => b"y,,".to_vec(),
        ClientChannelBinding::TlsServerEndPoint(_) => b"p=tls-server-end-point,,".to_vec(),
    };
    if let ClientChannelBinding::TlsServerEndPoint(hash) = &binding {
        cbind.extend_from_slice(hash);
    }
    want.extend_from_slice(BASE64.encode(cbind).as_bytes());
    want.extend_from_slice(b",");
    want.extend_from_slice(&server_first[..nonce_end]);
    want.extend_from_slice(b",p=");
    assert!(
        client_final.starts_with(&want),
        "client-final has the wrong shape"
    );
    assert!(is_plain_proof(&client_final[want.len() - 3..]));

    match last.handle_server_final(server_final) {
        Ok(()) => panic!("accepted a server signature the fuzzer made up"),
        Err(e) => assert_eq!(e.fault(), ScramFault::Backend, "handle_server_final: {e:?}"),
    }
}

/// Mode 5: a real exchange, possibly tampered with.
fn exchange(setup: u8, input: &[u8]) {
    let [which, lo, hi, flip, password @ ..] = input else {
        return;
    };
    let iterations = u32::from(setup & 3) + 1;
    let Ok(verifier) = ScramVerifier::derive(password, SALT, iterations) else {
        panic!("derive refused valid parameters");
    };
    // (server binding, client binding, must fail regardless of tampering)
    let (server_binding, client_binding, doomed) = match (setup >> 2) % 6 {
        0 => (
            ChannelBinding::Unsupported,
            ClientChannelBinding::None,
            None,
        ),
        1 => (
            ChannelBinding::Unsupported,
            ClientChannelBinding::NotOffered,
            None,
        ),
        2 => (
            ChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec()),
            ClientChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec()),
            None,
        ),
        3 => (
            ChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec()),
            ClientChannelBinding::None,
            None,
        ),
        // A man in the middle: the client's TLS session ends at another certificate.
        4 => (
            ChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec()),
            ClientChannelBinding::TlsServerEndPoint(OTHER_CERT_HASH.to_vec()),
            Some(ScramError::ChannelBindingMismatch),
        ),
        // -PLUS stripped from the offer: the client says "y", the server could bind.
        _ => (
            ChannelBinding::TlsServerEndPoint(CERT_HASH.to_vec()),
            ClientChannelBinding::NotOffered,
            Some(ScramError::ChannelBindingDowngrade),
        ),
    };
    let position = usize::from(u16::from_le_bytes([*lo, *hi]));
    let tamper = |step: u8, mut msg: Vec<u8>| -> Vec<u8> {
        if *which % 5 == step && !msg.is_empty() {
            let at = position % msg.len();
            msg[at] ^= *flip;
        }
        msg
    };
    let tampered = *which % 5 < 4 && *flip != 0;

    let result = (|| -> Result<(), ScramError> {
        let (client, client_first) = ScramClient::new(password, client_binding)?;
        let mechanism = client.mechanism();
        let (server, server_first) = ScramServer::start(
            &verifier,
            mechanism,
            &tamper(0, client_first),
            server_binding,
        )?;
        let (client, client_final) = client.handle_server_first(&tamper(1, server_first))?;
        let server_final = server.finish(&tamper(2, client_final))?;
        client.handle_server_final(&tamper(3, server_final))
    })();

    match (doomed, tampered, result) {
        (Some(want), false, got) => assert_eq!(got, Err(want)),
        (Some(_), true, got) | (None, true, got) => {
            assert!(got.is_err(), "a tampered exchange succeeded");
        }
        (None, false, got) => assert_eq!(got, Ok(()), "an honest exchange failed"),
    }
}

/// Mode 6: derive and verify_password with arbitrary passwords.
fn passwords(input: &[u8]) {
    let (password, other) = split(input);
    let verifier = ScramVerifier::derive(password, SALT, 1).expect("valid parameters");
    assert!(
        verifier.verify_password(password),
        "the password does not verify"
    );
    // ASCII is used as is (no SASLprep mapping), so different bytes are a different
    // password, except that HMAC pads its key with zeros (RFC 2104 §2): as in every
    // SCRAM (and PostgreSQL) implementation, "pw" and "pw\0" are the same password.
    // (A key over 64 bytes and its SHA-256 are the same too; no fuzzer finds that.)
    let trim = |p: &[u8]| p.len() - p.iter().rev().take_while(|&&b| b == 0).count();
    if password.is_ascii() && other.is_ascii() && password[..trim(password)] != other[..trim(other)]
    {
        assert!(
            !verifier.verify_password(other),
            "another password verifies"
        );
    }
    let printed = verifier.to_pg_string();
    let again = ScramVerifier::parse(&printed).expect("derived verifier prints parseably");
    assert!(again.verify_password(password));
}

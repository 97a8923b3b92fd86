//! SCRAM-SHA-256 costs. `verify_password` is what a Redis `AUTH` costs the
//! proxy (PBKDF2 at 4096 iterations, deliberately slow, run off the reactor);
//! a SCRAM exchange is what a PostgreSQL login costs once the keys are known:
//! the server side never runs PBKDF2 (it stores StoredKey and ServerKey), and
//! the client side's keys come from a warm `ClientKeyCache`.
//!
//! Run with `cargo bench --bench scram`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::auth::scram::{ScramError, ScramVerifier, DEFAULT_ITERATIONS};
use portcullis::auth::scram_client::{ClientChannelBinding, ClientKeyCache, ScramClient};
use portcullis::auth::scram_server::{ChannelBinding, ScramServer};

const PASSWORD: &[u8] = b"correct horse battery staple";

/// One whole exchange: client-first, server-first, client-final, server-final.
fn exchange(
    verifier: &ScramVerifier,
    keys: &ClientKeyCache,
    client_binding: ClientChannelBinding,
    server_binding: ChannelBinding,
) -> Result<(), ScramError> {
    let (client, client_first) = ScramClient::with_cache(keys.clone(), client_binding)?;
    let (server, server_first) =
        ScramServer::start(verifier, client.mechanism(), &client_first, server_binding)?;
    let (client, client_final) = client.handle_server_first(&server_first)?;
    let server_final = server.finish(&client_final)?;
    client.handle_server_final(&server_final)
}

fn scram(c: &mut Criterion) {
    let verifier = match ScramVerifier::generate(PASSWORD) {
        Ok(v) => v,
        Err(e) => panic!("cannot make a verifier: {e}"),
    };
    assert_eq!(verifier.iterations(), DEFAULT_ITERATIONS);
    let keys = ClientKeyCache::new(PASSWORD);
    if let Err(e) = keys.precompute(verifier.salt(), verifier.iterations()) {
        panic!("cannot derive client keys: {e}");
    }
    let cert_hash = vec![0xC5; 32];
    assert_eq!(
        exchange(
            &verifier,
            &keys,
            ClientChannelBinding::None,
            ChannelBinding::Unsupported
        ),
        Ok(())
    );

    let mut g = c.benchmark_group("scram");
    g.bench_function("verify_password_4096_iterations", |b| {
        b.iter(|| verifier.verify_password(black_box(PASSWORD)))
    });
    g.bench_function("verifier_parse", |b| {
        let stored = verifier.to_pg_string();
        b.iter(|| ScramVerifier::parse(black_box(&stored)).is_ok())
    });
    g.bench_function("exchange_cached_keys", |b| {
        b.iter(|| {
            exchange(
                &verifier,
                &keys,
                ClientChannelBinding::None,
                ChannelBinding::Unsupported,
            )
        })
    });
    g.bench_function("exchange_cached_keys_plus", |b| {
        b.iter(|| {
            exchange(
                &verifier,
                &keys,
                ClientChannelBinding::TlsServerEndPoint(cert_hash.clone()),
                ChannelBinding::TlsServerEndPoint(cert_hash.clone()),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // PBKDF2 takes milliseconds per iteration of the benchmark; fewer samples
    // keep the run short without hurting the estimate much.
    config = Criterion::default().sample_size(20);
    targets = scram
}
criterion_main!(benches);

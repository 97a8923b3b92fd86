//! `CommandPolicy::check` runs once per forwarded command, so its cost is paid
//! on every request; `parse` runs once per user at config load. A long rule
//! list must not make `check` slower: rules are compiled to one bit per
//! command, so both policies below should cost the same per check.
//!
//! Run with `cargo bench --bench policy`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::redis::policy::{CommandPolicy, Verdict};

/// A long, realistic rule list: categories, commands, subcommands and module
/// commands, with later rules overriding earlier ones.
const LONG_RULES: &str = "-@all +@read +@write +@connection +@transaction +@pubsub \
    +@keyspace +@string +@hash +@list +@set +@sortedset +@stream +@bitmap +@hyperloglog \
    +@geo -@dangerous -@admin -@scripting -keys -flushall -flushdb -swapdb -sort +sort_ro \
    +scan +info +config|get +config|help +client|setname +client|getname +client|id \
    +client|info -client|kill -client|list +select +ping +echo +time +dbsize +type +ttl \
    +pttl +object|encoding +object|freq -debug -monitor -migrate -restore +memory|usage \
    +json.get +json.set -json.del +ft.search +ft.info -ft.dropindex +bf.add +bf.exists";

/// One benchmarked call: a label, the command name as a client sends it, and its
/// first argument (which `check` reads only for container commands).
type Case = (&'static str, &'static [u8], Option<&'static [u8]>);

const CASES: &[Case] = &[
    ("get", b"GET", Some(b"key:0001")),
    ("set", b"SET", Some(b"key:0001")),
    ("config_get", b"CONFIG", Some(b"GET")),
    ("unknown_module_cmd", b"JSON.GET", Some(b"doc")),
];

fn policies(c: &mut Criterion) {
    let default = CommandPolicy::default_policy();
    let long = match CommandPolicy::parse(LONG_RULES) {
        Ok(p) => p,
        Err(e) => panic!("LONG_RULES do not compile: {e}"),
    };
    // The cases exercise both outcomes.
    assert_eq!(default.check(b"GET", Some(b"k")), Verdict::Allow);
    assert_ne!(default.check(b"CONFIG", Some(b"GET")), Verdict::Allow);
    assert_eq!(long.check(b"CONFIG", Some(b"GET")), Verdict::Allow);

    for (policy_name, policy) in [("default", &default), ("long_rules", &long)] {
        let mut g = c.benchmark_group(format!("policy_check/{policy_name}"));
        for &(label, name, sub) in CASES {
            g.bench_function(label, |b| {
                b.iter(|| policy.check(black_box(name), black_box(sub)))
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("policy_parse");
    g.bench_function("default_rules", |b| b.iter(CommandPolicy::default_policy));
    g.bench_function("long_rules", |b| {
        b.iter(|| CommandPolicy::parse(black_box(LONG_RULES)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, policies);
criterion_main!(benches);

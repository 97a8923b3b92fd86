//! Results: what one run measured ([`Stats`]), its summary (throughput and
//! percentiles, [`Summary`]), the A/B [`Comparison`], and the two renderings of
//! a [`Report`]: a human table (in `table`) and one JSON object.

mod table;

pub use table::{fmt_count, fmt_rate, fmt_us};

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::{CpuPerUnit, CpuTime};

/// Smallest latency the histograms resolve: 1 µs (values below are counted as 1 µs).
pub const LOWEST_US: u64 = 1;
/// Largest latency recorded as itself: 60 s (longer ones are counted as 60 s).
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept: 3, i.e. values within 0.1 %.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Distinct error kinds kept per run; a target that answers with ever new
/// messages cannot grow the tally without bound. The rest count as `other`.
pub const MAX_ERROR_KINDS: usize = 32;
/// Longest example message kept per error kind, in characters.
const MAX_EXAMPLE_CHARS: usize = 120;
/// The kind that counts errors past [`MAX_ERROR_KINDS`].
const OTHER_KIND: &str = "other";

/// Largest latency the histogram holds before it first grows: 1 ms, so a
/// histogram starts at about 16 KiB and grows only as far as the latencies seen.
const INITIAL_HIGH_US: u64 = 1_000;

/// An empty latency histogram in microseconds, 1 µs .. 60 s ([`micros`] clamps),
/// 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (low ≥ 1, high ≥ 2·low, sigfig ≤ 5): cannot fail.
    let mut h = Histogram::new_with_bounds(LOWEST_US, INITIAL_HIGH_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid");
    h.auto(true);
    h
}

/// A duration in whole microseconds, clamped to the histogram's range.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(LOWEST_US, HIGHEST_US)
}

/// Records `d` (clamped to 1 µs .. 60 s), growing the histogram if needed
/// (`saturating_record` would clamp to its current size instead of growing).
fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = micros(d);
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// How often each kind of error happened, with one example message per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorTally {
    kinds: BTreeMap<String, ErrorCount>,
}

/// One error kind's count and its first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    /// How many times it happened.
    pub count: u64,
    /// The first message seen (escaped, truncated).
    pub example: String,
}

impl ErrorTally {
    /// Counts `n` errors of `kind`; `example` is asked for only for a new kind.
    pub fn add(&mut self, kind: &str, n: u64, example: impl FnOnce() -> String) {
        self.add_clean(kind, n, || clean_example(&example()));
    }

    /// [`ErrorTally::add`] with an example that is already clean.
    fn add_clean(&mut self, kind: &str, n: u64, example: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        let key = if self.kinds.contains_key(kind) || self.kinds.len() < MAX_ERROR_KINDS {
            kind
        } else {
            OTHER_KIND
        };
        self.kinds
            .entry(key.to_string())
            .or_insert_with(|| ErrorCount {
                count: 0,
                example: example(),
            })
            .count += n;
    }

    /// All errors counted.
    pub fn total(&self) -> u64 {
        self.kinds.values().map(|c| c.count).sum()
    }

    /// Adds another tally's counts to this one.
    pub fn absorb(&mut self, other: &ErrorTally) {
        for (kind, c) in &other.kinds {
            self.add_clean(kind, c.count, || c.example.clone());
        }
    }

    /// The kinds and their counts, by kind.
    pub fn kinds(&self) -> &BTreeMap<String, ErrorCount> {
        &self.kinds
    }
}

/// Target-supplied text, made safe for one terminal line and bounded.
fn clean_example(s: &str) -> String {
    let escaped: String = s.escape_debug().collect();
    match escaped.char_indices().nth(MAX_EXAMPLE_CHARS) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// What one run (or several rounds against one target, merged) measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Successful requests (transactions, sessions).
    pub ok: u64,
    /// Latency of the successful ones, in µs.
    pub latency: Histogram<u64>,
    /// With `--rate`: how late each request left compared with its intended time.
    pub send_lag: Option<Histogram<u64>>,
    /// Failures by kind (error replies, connect, TLS, authentication, I/O).
    pub errors: ErrorTally,
    /// Measured wall time (summed over rounds).
    pub elapsed: Duration,
    /// With `--rate`: requests due before the end that were never sent.
    pub behind: u64,
    /// Requests sent that got no answer before the drain deadline.
    pub unanswered: u64,
    /// With `--cpu-pid`: that process's CPU time while the clients ran (summed over rounds).
    pub cpu: Option<CpuTime>,
}

impl Stats {
    /// Empty statistics; `open_model` (with `--rate`) also keeps the send lag.
    pub fn new(open_model: bool) -> Stats {
        Stats {
            ok: 0,
            latency: histogram(),
            send_lag: open_model.then(histogram),
            errors: ErrorTally::default(),
            elapsed: Duration::ZERO,
            behind: 0,
            unanswered: 0,
            cpu: None,
        }
    }

    /// One success with this latency.
    pub fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        record(&mut self.latency, latency);
    }

    /// One request sent this late after its intended time (open model only).
    pub fn record_lag(&mut self, lag: Duration) {
        if let Some(h) = &mut self.send_lag {
            record(h, lag);
        }
    }

    /// Adds another run's (or client's) statistics to these, elapsed time included.
    pub fn absorb(&mut self, other: &Stats) {
        self.ok += other.ok;
        // Both grow on demand: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        if let (Some(a), Some(b)) = (&mut self.send_lag, &other.send_lag) {
            let _ = a.add(b);
        }
        self.errors.absorb(&other.errors);
        self.elapsed += other.elapsed;
        self.behind += other.behind;
        self.unanswered += other.unanswered;
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// Latency percentiles in µs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest value seen (to the histogram's precision).
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Latency {
    /// The percentiles of a histogram; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// One target's results, ready to print.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// `A` or `B` in a comparison, empty otherwise.
    pub label: String,
    /// The target, without credentials.
    pub target: String,
    /// Successful requests (transactions, sessions).
    pub completed: u64,
    /// Successes per second of measured time.
    pub throughput: f64,
    /// Measured seconds.
    pub elapsed_s: f64,
    /// Latency of the successes; absent when nothing succeeded.
    pub latency_us: Option<Latency>,
    /// With `--rate`: lateness of each send against its intended time.
    pub send_lag_us: Option<Latency>,
    /// All failures.
    pub error_total: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, ErrorCount>,
    /// With `--rate`: requests due before the end that were never sent.
    pub behind: u64,
    /// Requests sent that got no answer before the drain deadline.
    pub unanswered: u64,
    /// With `--cpu-pid`: that process's CPU µs per success (`unit`).
    pub cpu_us_per_unit: Option<CpuPerUnit>,
}

impl Summary {
    /// Summarises `stats` for `target`.
    pub fn new(label: &str, target: &str, stats: &Stats) -> Summary {
        let secs = stats.elapsed.as_secs_f64();
        Summary {
            label: label.to_string(),
            target: target.to_string(),
            completed: stats.ok,
            throughput: if secs > 0.0 {
                stats.ok as f64 / secs
            } else {
                0.0
            },
            elapsed_s: secs,
            latency_us: Latency::of(&stats.latency),
            send_lag_us: stats.send_lag.as_ref().and_then(Latency::of),
            error_total: stats.errors.total(),
            errors: stats.errors.kinds().clone(),
            behind: stats.behind,
            unanswered: stats.unanswered,
            cpu_us_per_unit: stats.cpu.and_then(|c| c.per(stats.ok)),
        }
    }
}

/// B against A: what putting B (say, the proxy) in the path costs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Throughput of B divided by A's.
    pub throughput_ratio: Option<f64>,
    /// p50 of B minus A's, in µs.
    pub p50_delta_us: Option<i64>,
    /// p99 of B minus A's, in µs.
    pub p99_delta_us: Option<i64>,
    /// With `--cpu-pid` and `--compare-cpu-pid`: B's CPU per success divided by A's.
    pub cpu_ratio: Option<f64>,
}

impl Comparison {
    /// Compares `b` with `a`; a figure is absent when either side has none.
    pub fn between(a: &Summary, b: &Summary) -> Comparison {
        let delta = |f: fn(&Latency) -> u64| match (&a.latency_us, &b.latency_us) {
            (Some(x), Some(y)) => Some(f(y) as i64 - f(x) as i64),
            _ => None,
        };
        Comparison {
            throughput_ratio: (a.throughput > 0.0).then(|| b.throughput / a.throughput),
            p50_delta_us: delta(|l| l.p50),
            p99_delta_us: delta(|l| l.p99),
            cpu_ratio: match (a.cpu_us_per_unit, b.cpu_us_per_unit) {
                (Some(x), Some(y)) if x.total > 0.0 => Some(y.total / x.total),
                _ => None,
            },
        }
    }
}

/// The settings a run used, in the order given (header and JSON keep it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings(Vec<(&'static str, serde_json::Value)>);

impl Settings {
    /// Appends one setting.
    pub fn push(&mut self, key: &'static str, value: impl Into<serde_json::Value>) {
        self.0.push((key, value.into()));
    }
}

impl Serialize for Settings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Everything one `portcullis bench` invocation prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `redis` or `postgres`.
    pub protocol: &'static str,
    /// What is counted: `requests`, `transactions` or `sessions`.
    pub unit: &'static str,
    /// The settings the run used, for the header and the JSON.
    pub settings: Settings,
    /// One summary per target (A, then B).
    pub results: Vec<Summary>,
    /// B against A, with two targets.
    pub comparison: Option<Comparison>,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Only strings, numbers and maps with string keys: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn stats_with(
        latencies_us: impl IntoIterator<Item = u64>,
        elapsed: Duration,
    ) -> Stats {
        let mut s = Stats::new(false);
        for us in latencies_us {
            s.record_ok(Duration::from_micros(us));
        }
        s.elapsed = elapsed;
        s
    }

    #[test]
    fn percentiles_of_one_to_ten_thousand() {
        let s = stats_with(1..=10_000, Duration::from_secs(2));
        let sum = Summary::new("", "t", &s);
        let l = sum.latency_us.expect("latency");
        // Three significant digits: each value within 0.1 % of the exact one.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(l.p50, 5_000), "{l:?}");
        assert!(near(l.p90, 9_000), "{l:?}");
        assert!(near(l.p99, 9_900), "{l:?}");
        assert!(near(l.p99_9, 9_990), "{l:?}");
        assert!(near(l.max, 10_000), "{l:?}");
        assert!((l.mean - 5_000.5).abs() < 5.0, "{l:?}");
        assert_eq!(sum.completed, 10_000);
        assert!((sum.throughput - 5_000.0).abs() < 1e-9);
    }

    #[test]
    fn latencies_are_clamped_to_the_histogram_range() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_nanos(1_500)), 1);
        assert_eq!(micros(Duration::from_secs(3600)), HIGHEST_US);
        let s = stats_with([0, 120_000_000], Duration::from_secs(1));
        let l = Latency::of(&s.latency).expect("latency");
        assert_eq!(l.p50, 1);
        assert!(l.max >= HIGHEST_US && l.max <= HIGHEST_US + HIGHEST_US / 1000);
    }

    #[test]
    fn absorbing_rounds_adds_counts_time_and_histograms() {
        let mut a = stats_with([100, 200], Duration::from_secs(1));
        a.errors.add("-ERR", 2, || "ERR one".into());
        let mut b = stats_with([300], Duration::from_secs(1));
        b.errors.add("-ERR", 1, || "ERR two".into());
        b.errors.add("connect", 1, || "refused".into());
        a.absorb(&b);
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.elapsed, Duration::from_secs(2));
        assert_eq!(a.errors.total(), 4);
        let err = &a.errors.kinds()["-ERR"];
        assert_eq!((err.count, err.example.as_str()), (3, "ERR one"));
        // Examples are escaped once, not again on every merge.
        let mut quoted = Stats::new(false);
        quoted.errors.add("q", 1, || "near \"x\"".into());
        let mut merged = Stats::new(false);
        merged.absorb(&quoted);
        merged.absorb(&quoted);
        assert_eq!(merged.errors.kinds()["q"].example, r#"near \"x\""#);
    }

    #[test]
    fn error_kinds_are_bounded_and_examples_escaped() {
        let mut t = ErrorTally::default();
        for i in 0..(MAX_ERROR_KINDS + 10) {
            t.add(&format!("kind{i}"), 1, || format!("message {i}"));
        }
        assert_eq!(t.kinds().len(), MAX_ERROR_KINDS + 1);
        assert_eq!(t.kinds()[OTHER_KIND].count, 10);
        assert_eq!(t.total(), (MAX_ERROR_KINDS + 10) as u64);
        let mut t = ErrorTally::default();
        t.add("x", 1, || format!("bad\r\n\x1b[31m{}", "y".repeat(500)));
        let ex = &t.kinds()["x"].example;
        assert!(ex.starts_with(r"bad\r\n\u{1b}[31m"), "{ex}");
        assert!(!ex.contains('\n') && !ex.contains('\x1b'));
        assert_eq!(ex.chars().count(), MAX_EXAMPLE_CHARS + 1);
    }

    pub(super) fn two_target_report() -> Report {
        let a = stats_with(std::iter::repeat_n(100, 1000), Duration::from_secs(1));
        let mut b = stats_with(std::iter::repeat_n(150, 800), Duration::from_secs(1));
        b.errors
            .add("-NOPERM", 3, || "NOPERM this user has no".into());
        let (a, b) = (
            Summary::new("A", "127.0.0.1:6379", &a),
            Summary::new("B", "127.0.0.1:6380", &b),
        );
        let mut settings = Settings::default();
        settings.push("workload", "get");
        settings.push("clients", 2);
        Report {
            protocol: "redis",
            unit: "requests",
            settings,
            comparison: Some(Comparison::between(&a, &b)),
            results: vec![a, b],
        }
    }

    #[test]
    fn comparison_is_b_against_a() {
        let r = two_target_report();
        let c = r.comparison.expect("comparison");
        assert!((c.throughput_ratio.expect("ratio") - 0.8).abs() < 1e-9);
        assert_eq!(c.p50_delta_us, Some(50));
        assert_eq!(c.p99_delta_us, Some(50));
    }

    #[test]
    fn watched_cpu_is_summed_over_rounds_and_divided_by_successes() {
        let round = |ms| {
            let mut s = stats_with(std::iter::repeat_n(100, 500), Duration::from_secs(1));
            s.cpu = Some(CpuTime {
                user: Duration::from_millis(ms),
                system: Duration::from_millis(3 * ms),
            });
            s
        };
        let mut merged = Stats::new(false);
        merged.absorb(&round(1));
        merged.absorb(&stats_with([100], Duration::ZERO));
        merged.absorb(&round(4));
        assert_eq!(merged.cpu.expect("cpu").total(), Duration::from_millis(20));
        let per = Summary::new("A", "t", &merged)
            .cpu_us_per_unit
            .expect("per");
        // 20 ms over 1001 successes.
        assert!((per.total - 20_000.0 / 1001.0).abs() < 1e-9, "{per:?}");
        assert!((per.user * 3.0 - per.system).abs() < 1e-9, "{per:?}");
        let none = Summary::new("B", "t", &stats_with([100], Duration::ZERO));
        assert!(none.cpu_us_per_unit.is_none());
        let j: serde_json::Value =
            serde_json::to_value(Comparison::between(&Summary::new("A", "t", &merged), &none))
                .expect("json");
        assert!(j["cpu_ratio"].is_null(), "{j}");
    }

    #[test]
    fn json_is_one_object_with_the_figures() {
        let j: serde_json::Value =
            serde_json::from_str(&two_target_report().to_json()).expect("valid json");
        assert_eq!(j["protocol"], "redis");
        assert_eq!(j["settings"]["workload"], "get");
        assert_eq!(j["results"][0]["completed"], 1000);
        assert_eq!(j["results"][0]["latency_us"]["p50"], 100);
        assert_eq!(j["results"][1]["errors"]["-NOPERM"]["count"], 3);
        assert_eq!(j["comparison"]["p99_delta_us"], 50);
        assert!(j["results"][0]["send_lag_us"].is_null());
        assert!(j["results"][0]["cpu_us_per_unit"].is_null());
        assert!(j["comparison"]["cpu_ratio"].is_null());
    }
}

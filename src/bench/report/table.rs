//! The human rendering of a [`Report`]: a header line with the settings, one
//! row per target, B against A, then per-target notes and errors.

use std::fmt::Write as _;

use super::{Latency, Report};

impl Report {
    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let settings: Vec<String> = self
            .settings
            .0
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(
            out,
            "portcullis bench {}: {}",
            self.protocol,
            settings.join(" ")
        );
        let labelled = self.results.len() > 1;
        let label_w = if labelled { 2 } else { 0 };
        let target_w = self
            .results
            .iter()
            .map(|r| r.target.chars().count())
            .max()
            .unwrap_or(0)
            .max("target".len());
        let per_s = format!("{}/s", self.unit);
        let _ = writeln!(
            out,
            "{:label_w$}{:<target_w$} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "", "target", per_s, "p50", "p90", "p99", "p99.9", "max", "errors"
        );
        for r in &self.results {
            let l = r.latency_us;
            let cell = |f: fn(&Latency) -> u64| l.as_ref().map_or("-".into(), |l| fmt_us(f(l)));
            let label = if labelled {
                format!("{} ", r.label)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{label:label_w$}{:<target_w$} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                r.target,
                fmt_rate(r.throughput),
                cell(|l| l.p50),
                cell(|l| l.p90),
                cell(|l| l.p99),
                cell(|l| l.p99_9),
                cell(|l| l.max),
                fmt_count(r.error_total),
            );
        }
        if let Some(c) = &self.comparison {
            let ratio = c.throughput_ratio.map_or("-".into(), |r| format!("{r:.3}"));
            let delta = |d: Option<i64>| d.map_or("-".into(), |d| format!("{d:+} µs"));
            let cpu = c.cpu_ratio.map_or(String::new(), |r| {
                format!(", CPU per {} ×{r:.3}", singular(self.unit))
            });
            let _ = writeln!(
                out,
                "B/A: throughput ×{ratio}, p50 {}, p99 {}{cpu}",
                delta(c.p50_delta_us),
                delta(c.p99_delta_us)
            );
        }
        for r in &self.results {
            let who = if labelled {
                format!("{} {}", r.label, r.target)
            } else {
                r.target.clone()
            };
            if let Some(cpu) = &r.cpu_us_per_unit {
                let _ = writeln!(
                    out,
                    "{who}: CPU of the watched process {:.2} µs per {} (user {:.2}, system {:.2})",
                    cpu.total,
                    singular(self.unit),
                    cpu.user,
                    cpu.system
                );
            }
            if let Some(lag) = &r.send_lag_us {
                let _ = writeln!(
                    out,
                    "{who}: send lag behind schedule p50 {}, p99 {}, max {}",
                    fmt_us(lag.p50),
                    fmt_us(lag.p99),
                    fmt_us(lag.max)
                );
            }
            if r.behind > 0 {
                let _ = writeln!(
                    out,
                    "{who}: {} {} due before the end were never sent (the target or the harness fell behind --rate)",
                    fmt_count(r.behind),
                    self.unit
                );
            }
            if r.unanswered > 0 {
                let _ = writeln!(
                    out,
                    "{who}: {} {} got no answer before the drain deadline",
                    fmt_count(r.unanswered),
                    self.unit
                );
            }
            if !r.errors.is_empty() {
                let _ = writeln!(out, "{who}: errors");
                for (kind, c) in &r.errors {
                    let _ = writeln!(
                        out,
                        "  {:>10}  {kind}  (e.g. \"{}\")",
                        fmt_count(c.count),
                        c.example
                    );
                }
            }
        }
        out
    }
}

/// A latency for people: `87µs`, `1.23ms`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// One of what the report counts: `requests` → `request`.
fn singular(unit: &str) -> &str {
    unit.strip_suffix('s').unwrap_or(unit)
}

/// A count with thousands separators: `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A rate with thousands separators and one decimal: `412,345.6`.
pub fn fmt_rate(r: f64) -> String {
    let tenths = (r.max(0.0) * 10.0).round() as u64;
    format!("{}.{}", fmt_count(tenths / 10), tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::super::tests::two_target_report;
    use super::super::{Comparison, CpuPerUnit, Settings, Stats, Summary};
    use super::*;
    use std::time::Duration;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(412_345.64), "412,345.6");
        assert_eq!(fmt_rate(0.04), "0.0");
        assert_eq!(fmt_us(87), "87µs");
        assert_eq!(fmt_us(1_234), "1.23ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }

    #[test]
    fn table_has_a_row_per_target_and_the_ratios() {
        let t = two_target_report().to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0], "portcullis bench redis: workload=get clients=2",
            "{t}"
        );
        assert!(
            lines[1].contains("requests/s") && lines[1].contains("p99.9"),
            "{t}"
        );
        assert!(lines[2].starts_with("A 127.0.0.1:6379"), "{t}");
        assert!(
            lines[2].contains("1,000.0") && lines[2].contains("100µs"),
            "{t}"
        );
        assert!(lines[3].starts_with("B 127.0.0.1:6380"), "{t}");
        assert!(lines[3].trim_end().ends_with(" 3"), "{t}");
        assert_eq!(lines[4], "B/A: throughput ×0.800, p50 +50 µs, p99 +50 µs");
        assert!(t.contains("NOPERM this user has no"), "{t}");
        // Columns line up: every row as wide as the header.
        let w = lines[1].chars().count();
        assert_eq!(lines[2].chars().count(), w, "{t}");
        assert_eq!(lines[3].chars().count(), w, "{t}");
    }

    #[test]
    fn watched_cpu_is_printed_per_target_and_compared() {
        let mut r = two_target_report();
        assert!(!r.to_table().contains("CPU"));
        r.results[0].cpu_us_per_unit = Some(CpuPerUnit {
            total: 12.5,
            user: 2.5,
            system: 10.0,
        });
        r.results[1].cpu_us_per_unit = Some(CpuPerUnit {
            total: 10.0,
            user: 1.0,
            system: 9.0,
        });
        r.comparison = Some(Comparison::between(&r.results[0], &r.results[1]));
        let t = r.to_table();
        assert!(
            t.contains("B/A: throughput ×0.800, p50 +50 µs, p99 +50 µs, CPU per request ×0.800"),
            "{t}"
        );
        assert!(t.contains("A 127.0.0.1:6379: CPU of the watched process 12.50 µs per request (user 2.50, system 10.00)"), "{t}");
        assert!(
            t.contains("B 127.0.0.1:6380: CPU of the watched process 10.00 µs per request"),
            "{t}"
        );
    }

    #[test]
    fn nothing_succeeded_prints_dashes_not_zeros() {
        let mut s = Stats::new(true);
        s.elapsed = Duration::from_secs(1);
        s.errors.add("connect", 5, || "connection refused".into());
        let sum = Summary::new("", "127.0.0.1:1", &s);
        assert!(sum.latency_us.is_none() && sum.send_lag_us.is_none());
        let r = Report {
            protocol: "redis",
            unit: "requests",
            settings: Settings::default(),
            results: vec![sum],
            comparison: None,
        };
        let t = r.to_table();
        assert!(t.lines().nth(2).expect("row").contains(" - "), "{t}");
        assert!(t.contains("connection refused"), "{t}");
    }
}

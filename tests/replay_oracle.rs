//! Accuracy proof for `herald replay`: 30 days of 1-minute data for 20 subjects, backfilled into
//! a REAL Prometheus with `promtool tsdb create-blocks-from openmetrics`, replayed through the
//! real binary in chunks of 1,000 points, against an independent brute-force oracle computed
//! from the raw samples (not from Herald's engine): for threshold rules with `for` and
//! `keep_firing_for`, every firing episode must be identical — including a `for` episode that
//! spans a chunk boundary, one that spans a data gap (and a boundary) and a `keep_firing_for`
//! countdown across a boundary.
//!
//! The oracle's semantics, written from Prometheus's documentation rather than from Herald:
//! the value at an evaluation is the latest sample in the 5-minute lookback window; no sample
//! means unknown, which changes nothing and does not count; a rule fires on the (for/step + 1)-th
//! consecutive known-true evaluation and, once firing, stops on the (keep_firing_for/step + 1)-th
//! consecutive known-false one.

#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use prometheus::{OpenMetrics, Prometheus};

const SUBJECTS: usize = 20;
const MINUTES: i64 = 30 * 24 * 60;
const CHUNK: i64 = 1_000;
const LOOKBACK_S: i64 = 300;

/// (name, threshold, for in minutes, keep_firing_for in minutes)
const RULES: [(&str, f64, i64, i64); 3] = [("ForTen", 0.5, 10, 0), ("ForThreeKeepSeven", 0.5, 3, 7), ("KeepFive", 0.8, 0, 5)];

/// A small deterministic generator (xorshift64*), so the data is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per subject: minute index → value (absent minutes are gaps). Samples sit 30s after the
/// minute, so an evaluation never falls exactly on the lookback boundary.
fn generate() -> Vec<BTreeMap<i64, f64>> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut out = Vec::new();
    for _ in 0..SUBJECTS {
        let mut m = BTreeMap::new();
        let mut i = 0;
        let mut high = false;
        while i < MINUTES {
            let len = if high { 1 + rng.below(40) as i64 } else { 20 + rng.below(400) as i64 };
            for j in i..(i + len).min(MINUTES) {
                let v = if high { 0.55 + 0.45 * rng.unit() } else { 0.45 * rng.unit() };
                m.insert(j, v);
            }
            i += len;
            high = !high;
        }
        // Gaps: some shorter than the lookback (the last value persists), most longer (unknown).
        for _ in 0..40 {
            let start = rng.below(MINUTES as u64) as i64;
            let len = 1 + rng.below(30) as i64;
            for j in start..start + len {
                m.remove(&j);
            }
        }
        out.push(m);
    }
    // Planted episodes (with quiet, gap-free margins around them).
    let mut plant = |s: usize, quiet: std::ops::Range<i64>, high: std::ops::Range<i64>, gap: std::ops::Range<i64>| {
        for j in quiet {
            out[s].insert(j, 0.1);
        }
        for j in high {
            out[s].insert(j, 0.9);
        }
        for j in gap {
            out[s].remove(&j);
        }
    };
    // svc-00: true from the evaluation at 995 on; `for: 10m` fires at 1005, across the chunk
    // boundary at 1000.
    plant(0, 960..1060, 994..1013, 0..0);
    // svc-01: true 2995..3002, then a 12-minute gap (unknown from 3003 to 3010, across the
    // boundary at 3000), true again from 3011: `for: 10m` fires at 3013 (11 known trues).
    plant(1, 2960..3060, 2994..3031, 2998..3010);
    // svc-02: true 4986..4997, false from 4998: `keep_firing_for: 7m` ends at 5005, across
    // the boundary at 5000.
    plant(2, 4960..5060, 4985..4997, 0..0);
    out
}

/// An episode: (rule, subject index, first firing evaluation, first inactive one).
type Episode = (String, usize, i64, Option<i64>);

/// The brute-force oracle, from the raw samples.
fn oracle(data: &[BTreeMap<i64, f64>], t0: i64) -> BTreeSet<Episode> {
    let mut out = BTreeSet::new();
    for (s, samples) in data.iter().enumerate() {
        // Sample times in seconds, for the lookback window.
        let by_time: BTreeMap<i64, f64> = samples.iter().map(|(m, v)| (t0 + m * 60 + 30, *v)).collect();
        for (rule, threshold, for_m, keep_m) in RULES {
            let (mut run, mut falses, mut firing) = (0i64, 0i64, None::<i64>);
            for k in 0..MINUTES {
                let t = t0 + k * 60;
                let Some((_, v)) = by_time.range(t - LOOKBACK_S..=t).next_back() else { continue };
                if *v > threshold {
                    run += 1;
                    falses = 0;
                    if firing.is_none() && run > for_m {
                        firing = Some(t);
                    }
                } else {
                    run = 0;
                    if let Some(start) = firing {
                        falses += 1;
                        if falses > keep_m {
                            out.insert((rule.to_string(), s, start, Some(t)));
                            firing = None;
                            falses = 0;
                        }
                    }
                }
            }
            if let Some(start) = firing {
                out.insert((rule.to_string(), s, start, None));
            }
        }
    }
    out
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).expect("a valid time").format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[test]
fn every_firing_episode_matches_the_oracle_over_30_days() {
    let now = prometheus::now_unix() as i64;
    let t0 = (now - 32 * 86_400) / 86_400 * 86_400;
    let data = generate();
    // One OpenMetrics file per day: promtool re-reads its whole input for every 2h block it
    // writes, so one 30-day file would be parsed 360 times.
    let mut builder = Prometheus::builder();
    for day in 0..MINUTES / 1440 {
        let mut om = OpenMetrics::new();
        for (s, samples) in data.iter().enumerate() {
            let name = format!("svc-{s:02}");
            let points: Vec<(i64, f64)> = samples.range(day * 1440..(day + 1) * 1440).map(|(m, v)| (t0 + m * 60 + 30, *v)).collect();
            om = om.series("oracle_value", &[("service", &name)], &points);
        }
        builder = builder.backfill(om.render());
    }
    let prom = builder.start();

    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: oracle\n    interval: 1m\n    subject: [service]\n    signals:\n      v: { query: 'oracle_value' }\n    rules:\n");
    for (name, threshold, for_m, keep_m) in RULES {
        rules.push_str(&format!("      - {{name: {name}, when: 'v > {threshold}', for: {for_m}m, keep_firing_for: {keep_m}m, action: notify}}\n"));
    }
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    std::fs::write(dir.path().join("herald.yaml"), format!("prometheus: {{url: '{}'}}\nrule_files: [rules.yaml]\n", prom.url())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(dir.path())
        .args(["replay", "--config", "herald.yaml", "--format", "json", "--max-points", &CHUNK.to_string()])
        .args(["--from", &rfc3339(t0), "--to", &rfc3339(t0 + (MINUTES - 1) * 60)])
        .output()
        .unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Episodes from the replay's transitions.
    let mut got = BTreeSet::new();
    let mut open: BTreeMap<(String, usize), i64> = BTreeMap::new();
    let times: std::collections::HashMap<String, i64> = (0..MINUTES).map(|k| (rfc3339(t0 + k * 60), t0 + k * 60)).collect();
    for t in v["transitions"].as_array().unwrap() {
        let rule = t["rule"].as_str().unwrap().to_string();
        let s: usize = t["subject"]["service"].as_str().unwrap()[4..].parse().unwrap();
        let when = t["at"].as_str().unwrap();
        let ts = *times.get(when).unwrap_or_else(|| panic!("transition at {when} is not an evaluation time"));
        match t["state"].as_str().unwrap() {
            "firing" => {
                open.insert((rule, s), ts);
            }
            "inactive" => {
                if let Some(start) = open.remove(&(rule.clone(), s)) {
                    got.insert((rule, s, start, Some(ts)));
                }
            }
            _ => {}
        }
    }
    for ((rule, s), start) in open {
        got.insert((rule, s, start, None));
    }

    let want = oracle(&data, t0);
    let m = |k: i64| t0 + k * 60;
    // The planted episodes are there (so the boundary and gap cases are really exercised).
    assert!(want.iter().any(|e| e.0 == "ForTen" && e.1 == 0 && e.2 == m(1005)), "planted boundary episode");
    assert!(want.iter().any(|e| e.0 == "ForTen" && e.1 == 1 && e.2 == m(3013)), "planted gap episode");
    assert!(want.iter().any(|e| e.0 == "ForThreeKeepSeven" && e.1 == 2 && e.3 == Some(m(5005))), "planted keep_firing_for episode");
    assert!(want.len() > 1_000, "a meaningful number of episodes: {}", want.len());

    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} oracle episodes, {} replayed; missing from the replay (first 10): {missing:?}; not in the oracle (first 10): {extra:?}",
        want.len(),
        got.len()
    );
}

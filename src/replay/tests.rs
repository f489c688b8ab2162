//! The replay's fetching against a synthetic source whose range-query points are exactly its
//! instant answers (as Prometheus's are): the ticket baseline read from the rolling history
//! equals the live ticket source's, chunk after chunk, across a failed query and day by day;
//! and chunks fetched concurrently and ahead of the walk give the same replay as one chunk.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fetch::{Fetcher, HISTORY_POINTS};
use super::*;
use crate::source::tickets::DAY_MS;
use crate::source::{RangeSeries, Sample, TicketCounter, TicketSourceClient};

const T0: Ts = 1_800_000_000_000 - 1_800_000_000_000 % DAY_MS;
const MINUTE: Ts = 60_000;

/// Answers `tickets` and `sli` for a few services from formulas of time, with gaps and NaNs.
#[derive(Default)]
struct Synthetic {
    services: usize,
    /// A range query of this PromQL covering this time fails, once.
    fail_once: Mutex<Option<(String, Ts)>>,
    /// Every range query: (PromQL, start, end).
    ranges: Mutex<Vec<(String, Ts, Ts)>>,
    /// Delay range answers by a pseudo-random 0–3 ms, so they complete out of order.
    jitter: bool,
}

impl Synthetic {
    fn new(services: usize) -> Synthetic {
        Synthetic { services, ..Synthetic::default() }
    }

    fn value(query: &str, service: usize, t: Ts) -> Option<f64> {
        let m = t.div_euclid(MINUTE);
        let s = service as i64;
        match query {
            "tickets" => {
                if service == 1 && m % 97 < 3 {
                    None
                } else if service == 2 && m % 211 == 0 {
                    Some(f64::NAN)
                } else {
                    Some(((m * 7 + s * 13) % 23 + (m / 1440) % 5) as f64)
                }
            }
            // Square waves of different periods: `for` and `keep_firing_for` across chunk edges.
            "sli" => {
                if (m + 3 * s) % (17 + 6 * s) == 1 {
                    None
                } else {
                    Some(if (m + 5 * s) % (23 + 4 * s) < 9 { 0.9 } else { 0.999 })
                }
            }
            _ => None,
        }
    }

    fn labels(service: usize) -> BTreeMap<String, String> {
        BTreeMap::from([("service".to_string(), format!("svc-{service}")), ("job".to_string(), "x".to_string())])
    }
}

impl MetricsSource for Synthetic {
    async fn instant(&self, query: &str, at: Ts) -> Result<Vec<Sample>, SourceError> {
        Ok((0..self.services).filter_map(|s| Synthetic::value(query, s, at).map(|value| Sample { labels: Synthetic::labels(s), value })).collect())
    }

    async fn range(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeSeries>, SourceError> {
        self.ranges.lock().unwrap().push((query.to_string(), start, end));
        if self.jitter {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (query, start).hash(&mut h);
            tokio::time::sleep(Duration::from_micros(h.finish() % 3_000)).await;
        }
        {
            let mut fail = self.fail_once.lock().unwrap();
            if fail.as_ref().is_some_and(|(q, at)| q == query && (start..=end).contains(at)) {
                *fail = None;
                return Err(SourceError::Transport("connection refused".into()));
            }
        }
        let times: Vec<Ts> = (0..).map(|i| start + i * step_ms).take_while(|t| *t <= end).collect();
        Ok((0..self.services)
            .map(|s| RangeSeries { labels: Synthetic::labels(s), points: times.iter().filter_map(|&t| Synthetic::value(query, s, t).map(|v| (t, v))).collect() })
            .filter(|r| !r.points.is_empty())
            .collect())
    }
}

fn config(interval: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!(
            "groups:\n  - name: g\n    interval: {interval}\n    subject: [service]\n    signals:\n      sli: {{query: 'sli'}}\n      tickets: {{ticket_source: support}}\n    rules:\n      - {{name: Slow, when: 'sli < 0.99', for: 5m, keep_firing_for: 3m, action: notify}}\n      - {{name: Spike, when: 'tickets > 1.5 * tickets_baseline', for: 2m, action: notify}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        "prometheus: {url: 'http://127.0.0.1:9'}\nglobal: {state_dir: state}\nticket_sources:\n  - {name: support, type: prometheus, query: 'tickets', poll_interval: 5m}\nrule_files: [rules.yaml]\n",
    )
    .unwrap();
    crate::config::load_config(&dir.path().join("herald.yaml"), &|_| None).unwrap().0
}

fn same(a: &SubjectMap<f64>, b: &SubjectMap<f64>) -> bool {
    a.len() == b.len() && a.iter().all(|(s, x)| b.get(s).is_some_and(|y| x == y || (x.is_nan() && y.is_nan())))
}

/// Walks every chunk of `[from, to]` and checks the replay's counts at each step against the
/// live `prometheus` ticket source's (8 instant queries at that time, no cache). Returns the
/// number of ticket range queries. With one attempt, the injected failure must have failed
/// exactly one chunk.
async fn check_against_live(source: Arc<Synthetic>, interval: &str, opts: &Options, history_points: i64) -> usize {
    let config = config(interval);
    let iv = config.rules.groups[0].interval_or(config.global.evaluation_interval).as_millis() as i64;
    let labels = config.rules.groups[0].subject_labels.clone();
    let mut fetcher = Fetcher::new(&config, &*source, opts, vec![iv], vec![opts.from]);
    fetcher.history_points = history_points;
    let (mut chunks, mut compared, mut failed) = (0, 0, 0);
    while let Some(chunk) = fetcher.next_chunk().await {
        chunks += 1;
        let g = chunk.groups[0].as_ref().unwrap();
        let view = match &g.tickets["support"] {
            Ok(v) => v,
            Err(e) => {
                assert!(e.contains("connection refused"), "{e}");
                assert_eq!(chunk.failures.len(), 1);
                failed += 1;
                continue;
            }
        };
        let mut t = g.first;
        while t <= chunk.end {
            let live = TicketSourceClient::new(&config.ticket_sources[0], Some(source.clone())).unwrap();
            let want = live.counts(&[], &labels, t, &mut Default::default()).await.unwrap();
            let (tickets, baseline) = ticket_counts(view, t, &labels).unwrap();
            assert!(same(&tickets, &want.tickets), "tickets at {t}: {tickets:?} vs {:?}", want.tickets);
            assert!(same(&baseline, &want.baseline), "baseline at {t}: {baseline:?} vs {:?}", want.baseline);
            compared += 1;
            t += 7 * iv;
        }
    }
    assert!(chunks > 3 && compared > 100, "{chunks} chunks, {compared} comparisons");
    assert_eq!(failed, usize::from(opts.attempts == 1 && source.fail_once.lock().unwrap().is_none()), "the one failing chunk");
    let ranges = source.ranges.lock().unwrap();
    ranges.iter().filter(|(q, _, _)| q == "tickets").count()
}

#[tokio::test]
async fn the_baseline_from_the_rolling_history_equals_the_live_sources() {
    let source = Arc::new(Synthetic::new(4));
    let mut opts = Options::new(T0 + 3 * MINUTE, T0 + 10 * DAY_MS);
    opts.max_points = 1_000;
    let queries = check_against_live(source.clone(), "1m", &opts, HISTORY_POINTS).await;
    let ranges = source.ranges.lock().unwrap();
    let chunks = ranges.iter().filter(|(q, _, _)| q == "sli").count();
    assert_eq!(queries, chunks + 1, "one ticket query a chunk, not eight, and the week before the first");
    let tickets: Vec<_> = ranges.iter().filter(|(q, _, _)| q == "tickets").collect();
    assert_eq!((tickets[0].1, tickets[1].1, tickets[1].2), (opts.from, opts.from - 7 * DAY_MS, opts.from - MINUTE), "the week before the first chunk");
    assert!(tickets[2..].iter().all(|(_, s, _)| *s > opts.from), "the later ones only their chunk");
}

#[tokio::test]
async fn after_a_failed_ticket_query_the_history_is_fetched_anew() {
    let source = Arc::new(Synthetic::new(3));
    *source.fail_once.lock().unwrap() = Some(("tickets".into(), T0 + 2 * DAY_MS));
    let mut opts = Options::new(T0, T0 + 4 * DAY_MS);
    opts.max_points = 700;
    opts.attempts = 1;
    check_against_live(source.clone(), "1m", &opts, HISTORY_POINTS).await;
    let ranges = source.ranges.lock().unwrap();
    let week_back = ranges.iter().filter(|(q, s, e)| q == "tickets" && e - s > 6 * DAY_MS).count();
    assert_eq!(week_back, 2, "the first chunk, and the one after the failure");
}

#[tokio::test]
async fn a_step_that_does_not_divide_a_day_or_a_large_history_is_queried_day_by_day() {
    let source = Arc::new(Synthetic::new(3));
    let mut opts = Options::new(T0, T0 + 5 * 3_600_000);
    opts.max_points = 400;
    let queries = check_against_live(source.clone(), "7s", &opts, HISTORY_POINTS).await;
    let chunks = source.ranges.lock().unwrap().iter().filter(|(q, _, _)| q == "sli").count();
    assert_eq!(queries, 8 * chunks);

    let source = Arc::new(Synthetic::new(3));
    let mut opts = Options::new(T0, T0 + DAY_MS);
    opts.max_points = 300;
    let queries = check_against_live(source.clone(), "1m", &opts, 1_000).await;
    let chunks = source.ranges.lock().unwrap().iter().filter(|(q, _, _)| q == "sli").count();
    assert_eq!(queries, 8 * chunks, "too large to hold: day by day from the first chunk on");
}

/// What must not depend on how the range is cut into chunks or when their answers arrive.
fn decisions(o: &Outcome) -> (Vec<Transition>, Vec<String>, usize, u64) {
    let notes = o.notifications.iter().map(|n| format!("{n:?}")).collect();
    (o.transitions.clone(), notes, o.incidents.len(), o.rule_evaluations)
}

#[tokio::test]
async fn chunks_fetched_ahead_and_out_of_order_are_walked_in_order() {
    let config = config("1m");
    let (from, to) = (T0 + 11 * MINUTE, T0 + 2 * DAY_MS);
    let whole = {
        let mut opts = Options::new(from, to);
        opts.max_points = 11_000;
        replay(&config, &Synthetic::new(4), &opts).await
    };
    assert_eq!(whole.chunks, 2, "a first day, then the rest");
    let mut opts = Options::new(from, to);
    opts.max_points = 60;
    let source = Synthetic { jitter: true, ..Synthetic::new(4) };
    let cut = replay(&config, &source, &opts).await;
    assert!(cut.chunks > 40, "{} chunks", cut.chunks);
    assert!(cut.failures.is_empty());
    let (a, b) = (decisions(&whole), decisions(&cut));
    assert!(a.0.len() > 100 && a.0.iter().any(|t| t.rule == "Spike"), "{} transitions", a.0.len());
    assert_eq!(a, b);
    assert_eq!(whole.summaries(), cut.summaries());
}

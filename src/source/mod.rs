//! Sources of signal values: Prometheus (PromQL) and ticket systems, behind traits so the
//! daemon, `replay` and tests can use real or recorded sources alike.
//!
//! This module owns the traits and the keying of series into subjects (one query per signal
//! per group evaluation, whatever the number of subjects). Implementations live in submodules
//! and do network I/O; nothing here decides anything.
//!
//! - [`prometheus`]: [`PrometheusSource`], the PromQL client (HTTP, auth, TLS, error mapping,
//!   chunked range queries). It passes values through untouched and never caches or retries.
//! - [`tickets`]: [`TicketSourceClient`], `tickets` and `tickets_baseline` from a configured
//!   ticket source (Prometheus, Zendesk or any JSON endpoint), with its cache, 429 back-off and
//!   7-day median. It never decides what a count means.

use std::collections::BTreeMap;
use std::future::Future;

use crate::engine::{Subject, SubjectMap, Ts};

mod answer;
mod compact;
pub mod keyed;
pub mod matrix;
pub mod prometheus;
pub mod tickets;

pub use keyed::SubjectInterner;

pub use prometheus::{PrometheusSource, MAX_POINTS_PER_SERIES};
pub use tickets::{median, TicketSourceClient};

/// One series of an instant-query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One series of a range-query result: (unix ms, value) points.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(Ts, f64)>,
}

/// One series of a range-query result laid on the query's step grid: `values[i]` is the value
/// at `start + i × step`, [`ABSENT`] where the series has no point. Eight bytes a step, where
/// [`RangeSeries`] takes sixteen and a timestamp to look up.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeColumn {
    pub labels: BTreeMap<String, String>,
    pub values: Vec<f64>,
}

/// Bit pattern of "no point at this step" in a [`RangeColumn`]: a NaN with a payload no
/// parser produces (a NaN sample value is stored as the canonical [`f64::NAN`]).
const ABSENT_BITS: u64 = 0x7ff8_0000_dead_0001;
/// "No point at this step" in a [`RangeColumn`] (test with [`is_absent`], never with `==`).
pub const ABSENT: f64 = f64::from_bits(ABSENT_BITS);

/// Whether a [`RangeColumn`] value is [`ABSENT`] (a NaN sample value is not).
pub fn is_absent(v: f64) -> bool {
    v.to_bits() == ABSENT_BITS
}

/// A value as a [`RangeColumn`] stores it: any NaN becomes the canonical NaN, so no sample
/// value can read as [`ABSENT`].
pub fn column_value(v: f64) -> f64 {
    if v.is_nan() {
        f64::NAN
    } else {
        v
    }
}

/// The number of steps of a range query from `start` to `end` inclusive (0 when `end < start`).
pub fn grid_len(start: Ts, end: Ts, step_ms: i64) -> usize {
    if end < start || step_ms <= 0 {
        0
    } else {
        ((end - start) / step_ms + 1) as usize
    }
}

/// The step index of a point at `t` on the grid `start + i × step` (`n` steps), if it lies on
/// the grid (within half a second: the API speaks decimal seconds).
pub fn grid_index(t: Ts, start: Ts, step_ms: i64, n: usize) -> Option<usize> {
    let offset = t - start;
    let i = (offset + step_ms / 2).div_euclid(step_ms);
    ((0..n as i64).contains(&i) && (offset - i * step_ms).abs() < 500).then_some(i as usize)
}

/// Lays range-query series on their step grid (see [`RangeColumn`]).
pub fn columns(series: Vec<RangeSeries>, start: Ts, end: Ts, step_ms: i64) -> Vec<RangeColumn> {
    let n = grid_len(start, end, step_ms);
    series
        .into_iter()
        .map(|rs| {
            let mut values = vec![ABSENT; n];
            for (t, v) in rs.points {
                if let Some(i) = grid_index(t, start, step_ms, n) {
                    values[i] = column_value(v);
                }
            }
            RangeColumn { labels: rs.labels, values }
        })
        .collect()
}

/// Why a source could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("timed out after {0}ms")]
    Timeout(u64),
    #[error("the server refused the query: {0}")]
    Query(String),
    #[error("unexpected response: {0}")]
    Response(String),
    /// Two series map to the same subject: the query does not aggregate by the subject labels.
    #[error("two series for subject {subject}: {first} and {second}; aggregate by the subject labels, e.g. `sum by ({labels}) (...)`")]
    DuplicateSubject { subject: String, first: String, second: String, labels: String },
}

/// Something that answers PromQL.
pub trait MetricsSource: Send + Sync {
    /// An instant query evaluated at `at` (unix ms).
    fn instant(&self, query: &str, at: Ts) -> impl Future<Output = Result<Vec<Sample>, SourceError>> + Send;
    /// A range query from `start` to `end` inclusive, every `step_ms`.
    fn range(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> impl Future<Output = Result<Vec<RangeSeries>, SourceError>> + Send;

    /// A range query laid on its step grid `start + i × step_ms` up to `end`: the same answer
    /// as [`MetricsSource::range`] through [`columns`] (the default), but a source may parse its
    /// answer straight into columns.
    fn range_columns(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> impl Future<Output = Result<Vec<RangeColumn>, SourceError>> + Send {
        async move { Ok(columns(self.range(query, start, end, step_ms).await?, start, end, step_ms)) }
    }

    /// An instant query keyed by `subject_labels`: what the daemon evaluates, once per signal.
    /// The same as [`key_by_subject`] over [`MetricsSource::instant`] (the default), but a
    /// source may parse its answer straight into subjects, reusing the interner's.
    fn instant_keyed(
        &self,
        query: &str,
        at: Ts,
        subject_labels: &[String],
        interner: &mut SubjectInterner,
    ) -> impl Future<Output = Result<SubjectMap<f64>, SourceError>> + Send {
        let _ = interner;
        async move { key_by_subject(&self.instant(query, at).await?, subject_labels) }
    }
}

/// Ticket counts for a set of subjects at one time (shared: a cached poll is not copied).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TicketCounts {
    /// Tickets in the window ending now.
    pub tickets: std::sync::Arc<SubjectMap<f64>>,
    /// Median of the same window at the same time of day over the previous 7 days.
    pub baseline: std::sync::Arc<SubjectMap<f64>>,
}

/// Something that counts support tickets per subject.
pub trait TicketCounter: Send + Sync {
    /// Counts for `subjects` (the ones the group knows from its other signals and incidents)
    /// at `at`. Implementations cache and rate-limit as configured. Subjects parsed from a query answer come from `interner` (the group's), so they are the
    /// very allocations of the group's other signals.
    fn counts(&self, subjects: &[Subject], subject_labels: &[String], at: Ts, interner: &mut SubjectInterner) -> impl Future<Output = Result<TicketCounts, SourceError>> + Send;
}

pub(crate) fn show_labels(l: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Keys an instant-query result by subject labels. A series without one of the labels gets
/// an empty value for it (as in PromQL). Two series for one subject are an error naming both.
pub fn key_by_subject(samples: &[Sample], subject_labels: &[String]) -> Result<SubjectMap<f64>, SourceError> {
    let mut out: SubjectMap<f64> = SubjectMap::with_capacity_and_hasher(samples.len(), Default::default());
    let mut origin: SubjectMap<usize> = SubjectMap::default();
    for (i, s) in samples.iter().enumerate() {
        let subject = Subject::new(subject_labels.iter().map(|l| (l.clone(), s.labels.get(l).cloned().unwrap_or_default())));
        if let Some(&first) = origin.get(&subject) {
            return Err(SourceError::DuplicateSubject {
                subject: subject.to_string(),
                first: show_labels(&samples[first].labels),
                second: show_labels(&s.labels),
                labels: subject_labels.join(", "),
            });
        }
        origin.insert(subject.clone(), i);
        out.insert(subject, s.value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(l: &[(&str, &str)], v: f64) -> Sample {
        Sample { labels: l.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(), value: v }
    }

    #[test]
    fn keys_series_by_subject_labels() {
        let m = key_by_subject(&[sample(&[("service", "a"), ("job", "x")], 1.0), sample(&[("service", "b")], 2.0)], &["service".into()]).unwrap();
        assert_eq!(m[&Subject::new([("service", "a")])], 1.0);
        assert_eq!(m[&Subject::new([("service", "b")])], 2.0);
    }

    #[test]
    fn two_series_for_one_subject_name_both() {
        let e = key_by_subject(&[sample(&[("service", "a"), ("code", "200")], 1.0), sample(&[("service", "a"), ("code", "500")], 2.0)], &["service".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"code="200""#) && e.contains(r#"code="500""#) && e.contains("sum by (service)"), "{e}");
    }
}

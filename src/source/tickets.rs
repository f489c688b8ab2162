//! [`TicketSourceClient`]: the [`TicketCounter`] for one configured ticket source
//! (`ticket_sources:` in `herald.yaml`, spec §3), of any [`TicketKind`].
//!
//! This module owns how `tickets` and `tickets_baseline` are obtained: the requests to
//! Zendesk's Search count API or a JSON endpoint (templated per subject and window), the
//! PromQL evaluations for the `prometheus` kind, the 7-day median baseline, the per-source
//! cache (`poll_interval`), the 429 `Retry-After` back-off and the bound on parallel requests.
//! Every notion of time comes from the `at` argument, never the wall clock, so replay and tests
//! behave like the daemon. It must not decide anything about spikes (rules do), retry a failed
//! poll within one call, or turn a failure into zero: a failed poll is an `Err` and the counts
//! are unavailable for that evaluation.
//!
//! Windows: `tickets` counts `[at - window, at)`; day `k` of the baseline (k = 1..=7) counts
//! `[at - k·24h - window, at - k·24h)`. For the `prometheus` kind the query itself encodes the
//! window (e.g. `sum by (service) (increase(tickets_created_total[1h]))`) and is evaluated at
//! `at` and at `at - k·24h`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::{Environment, Value};
use prometheus_http_query::reqwest::{self, header, StatusCode};
use tokio::task::JoinSet;

use super::prometheus::chain;
use super::{MetricsSource, PrometheusSource, SourceError, SubjectInterner, TicketCounter, TicketCounts};
use crate::config::daemon::{TicketKind, TicketSource};
use crate::config::template;
use crate::engine::{Subject, SubjectMap, Ts};

/// One day in milliseconds: the baseline's shift between days.
pub const DAY_MS: Ts = 86_400_000;
/// How many previous days the baseline's median is taken over.
pub const BASELINE_DAYS: i64 = 7;
/// At most this many HTTP requests of one source are in flight at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 4;
/// Back-off after a 429 without a usable `Retry-After` header.
pub const DEFAULT_RETRY_AFTER_MS: Ts = 60_000;

/// The median of the values that are not NaN (the mean of the middle two for an even count);
/// `None` when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    median_in_place(&mut values.into_iter().collect::<Vec<f64>>())
}

/// [`median`] of a slice it may reorder, without allocating.
pub fn median_in_place(values: &mut [f64]) -> Option<f64> {
    let mut n = 0;
    for i in 0..values.len() {
        if !values[i].is_nan() {
            values.swap(n, i);
            n += 1;
        }
    }
    let v = &mut values[..n];
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// Counts tickets per subject for one configured ticket source. For the `prometheus` kind it
/// queries through `M` (shared with the signals, hence the `Arc`); the HTTP kinds use their own
/// client and ignore `M`. A caller without Prometheus can name the default:
/// `let c: TicketSourceClient = TicketSourceClient::new(&cfg, None)?;`.
pub struct TicketSourceClient<M = PrometheusSource> {
    name: String,
    window_ms: Ts,
    poll_ms: Ts,
    timeout: Duration,
    backend: Backend<M>,
    cache: tokio::sync::Mutex<Cache>,
    requests: AtomicU64,
}

impl<M> std::fmt::Debug for TicketSourceClient<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No credentials: only the name and the timing.
        f.debug_struct("TicketSourceClient")
            .field("name", &self.name)
            .field("window_ms", &self.window_ms)
            .field("poll_ms", &self.poll_ms)
            .finish_non_exhaustive()
    }
}

enum Backend<M> {
    Prometheus { query: String, metrics: Arc<M> },
    Http(Box<HttpBackend>),
}

struct HttpBackend {
    client: reqwest::Client,
    env: Environment<'static>,
    kind: HttpKind,
}

enum HttpKind {
    Zendesk { endpoint: String, query: String, user: String, token: String },
    Json { url: String, pointer: String },
}

#[derive(Default)]
struct Cache {
    /// After a 429: no request before this time (`at` scale), and why.
    backoff: Option<(Ts, String)>,
    /// `prometheus` kind: one snapshot per set of subject labels.
    snapshots: HashMap<Vec<String>, (Ts, TicketCounts)>,
    /// HTTP kinds: one entry per subject.
    subjects: SubjectMap<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    fetched_at: Ts,
    tickets: Option<f64>,
    baseline: Option<f64>,
}

/// Why one HTTP request produced no number.
enum FetchError {
    /// HTTP 429: no request before `until`.
    RateLimited { until: Ts, message: String },
    Other(SourceError),
}

/// One request: the count for `subject` on day `day` (0 = the current window).
struct Job {
    subject: usize,
    day: i64,
    request: reqwest::RequestBuilder,
    shown: String,
}

fn rfc3339(ms: Ts) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// A URL without its query string (which may carry credentials) for error messages.
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

fn user_agent() -> String {
    format!("herald/{}", env!("CARGO_PKG_VERSION"))
}

fn ms(d: Duration) -> Ts {
    Ts::try_from(d.as_millis()).unwrap_or(Ts::MAX)
}

impl<M> TicketSourceClient<M> {
    /// Builds the client for one configured source. The `prometheus` kind needs `metrics`; the
    /// HTTP kinds ignore it. Fails on a template that does not compile, a header that is not
    /// valid HTTP, or a `prometheus` source without `metrics`. Never touches the network.
    pub fn new(cfg: &TicketSource, metrics: Option<Arc<M>>) -> Result<Self, SourceError> {
        let name = cfg.name.clone();
        let backend = match &cfg.kind {
            TicketKind::Prometheus { query } => {
                let metrics = metrics.ok_or_else(|| {
                    SourceError::Query(format!("ticket source {name:?} is of type prometheus but no `prometheus:` is configured"))
                })?;
                Backend::Prometheus { query: query.clone(), metrics }
            }
            TicketKind::Zendesk { url, query, email, token } => {
                let env = template::environment();
                env.template_from_str(query).map_err(|e| SourceError::Query(format!("ticket source {name:?}: query template: {e}")))?;
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .user_agent(user_agent())
                    .build()
                    .map_err(|e| SourceError::Transport(format!("ticket source {name:?}: cannot build the HTTP client: {}", chain(&e))))?;
                let endpoint = format!("{}/api/v2/search/count.json", url.trim_end_matches('/'));
                let kind = HttpKind::Zendesk { endpoint, query: query.clone(), user: format!("{email}/token"), token: token.clone() };
                Backend::Http(Box::new(HttpBackend { client, env, kind }))
            }
            TicketKind::HttpJson { url, pointer, headers } => {
                let env = template::environment();
                env.template_from_str(url).map_err(|e| SourceError::Query(format!("ticket source {name:?}: url template: {e}")))?;
                let mut map = header::HeaderMap::new();
                for (k, v) in headers {
                    let hn = header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| SourceError::Transport(format!("ticket source {name:?}: invalid header name {k:?}: {e}")))?;
                    let mut hv = header::HeaderValue::from_str(v)
                        .map_err(|e| SourceError::Transport(format!("ticket source {name:?}: invalid value for header {k:?}: {e}")))?;
                    hv.set_sensitive(true);
                    map.append(hn, hv);
                }
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .user_agent(user_agent())
                    .default_headers(map)
                    .build()
                    .map_err(|e| SourceError::Transport(format!("ticket source {name:?}: cannot build the HTTP client: {}", chain(&e))))?;
                Backend::Http(Box::new(HttpBackend { client, env, kind: HttpKind::Json { url: url.clone(), pointer: pointer.clone() } }))
            }
        };
        Ok(TicketSourceClient {
            name,
            window_ms: ms(cfg.window),
            poll_ms: ms(cfg.poll_interval),
            timeout: cfg.timeout,
            backend,
            cache: tokio::sync::Mutex::new(Cache::default()),
            requests: AtomicU64::new(0),
        })
    }

    /// The source's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// HTTP requests sent so far (HTTP kinds; the `prometheus` kind counts on its source).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether counts are asked per subject (the HTTP kinds): the caller then lists the
    /// subjects it knows. The `prometheus` kind answers for every subject in one query.
    pub fn per_subject(&self) -> bool {
        matches!(self.backend, Backend::Http(_))
    }

    fn fresh(&self, fetched_at: Ts, at: Ts) -> bool {
        fetched_at <= at && at - fetched_at < self.poll_ms
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renders the request for `subject` and the window ending at `end`.
    fn job(&self, http: &HttpBackend, subject_index: usize, subject: &Subject, day: i64, end: Ts) -> Result<Job, SourceError> {
        let start = end - self.window_ms;
        let labels: BTreeMap<String, Value> = subject.labels().map(|(k, v)| (k.to_string(), Value::from(v))).collect();
        let ctx: BTreeMap<&str, Value> = BTreeMap::from([
            ("subject", Value::from(labels)),
            ("start", Value::from(rfc3339(start))),
            ("end", Value::from(rfc3339(end))),
            ("start_unix", Value::from(start.div_euclid(1000))),
            ("end_unix", Value::from(end.div_euclid(1000))),
        ]);
        let ctx = Value::from(ctx);
        let render = |what: &str, src: &str| {
            template::render(&http.env, src, &ctx).map_err(|e| SourceError::Query(format!("ticket source {:?}: {what} template for {subject}: {e}", self.name)))
        };
        let (request, shown) = match &http.kind {
            HttpKind::Zendesk { endpoint, query, user, token } => {
                let q = render("query", query)?;
                (http.client.get(endpoint).query(&[("query", q)]).basic_auth(user, Some(token)), endpoint.clone())
            }
            HttpKind::Json { url, .. } => {
                let u = render("url", url)?;
                (http.client.get(&u), shown_url(&u))
            }
        };
        Ok(Job { subject: subject_index, day, request, shown })
    }

    /// Fetches `tickets` and the baseline for `subjects`, at most
    /// [`MAX_CONCURRENT_REQUESTS`] requests at a time; the first failure ends the poll.
    async fn fetch_http(&self, http: &HttpBackend, subjects: &[Subject], at: Ts) -> Result<Vec<(Option<f64>, Option<f64>)>, FetchError> {
        let mut jobs = Vec::with_capacity(subjects.len() * (BASELINE_DAYS as usize + 1));
        for (i, s) in subjects.iter().enumerate() {
            for day in 0..=BASELINE_DAYS {
                jobs.push(self.job(http, i, s, day, at - day * DAY_MS).map_err(FetchError::Other)?);
            }
        }
        let pointer: Arc<str> = match &http.kind {
            HttpKind::Zendesk { .. } => "/count".into(),
            HttpKind::Json { pointer, .. } => pointer.as_str().into(),
        };
        let mut values: Vec<(Option<f64>, Vec<f64>)> = vec![(None, Vec::new()); subjects.len()];
        let mut pending = jobs.into_iter();
        let mut running = JoinSet::new();
        let spawn = |running: &mut JoinSet<_>, job: Job| {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let ctx = RequestCtx { source: self.name.clone(), pointer: pointer.clone(), at, timeout_ms: self.timeout_ms() };
            running.spawn(async move { (job.subject, job.day, ctx.run(job.request, &job.shown).await) });
        };
        for job in pending.by_ref().take(MAX_CONCURRENT_REQUESTS) {
            spawn(&mut running, job);
        }
        while let Some(done) = running.join_next().await {
            let (i, day, result) =
                done.map_err(|e| FetchError::Other(SourceError::Transport(format!("ticket source {:?}: request task failed: {e}", self.name))))?;
            // Dropping `running` on error aborts the requests still in flight.
            let value = result?;
            match (day, value) {
                (0, v) => values[i].0 = v,
                (_, Some(v)) => values[i].1.push(v),
                (_, None) => {}
            }
            if let Some(job) = pending.next() {
                spawn(&mut running, job);
            }
        }
        Ok(values.into_iter().map(|(t, days)| (t, median(days))).collect())
    }

    async fn http_counts(&self, http: &HttpBackend, subjects: &[Subject], at: Ts, cache: &mut Cache) -> Result<TicketCounts, SourceError> {
        let poll_ms = self.poll_ms;
        cache.subjects.retain(|_, e| e.fetched_at <= at && at - e.fetched_at < poll_ms);
        let mut seen = HashSet::new();
        let missing: Vec<Subject> = subjects.iter().filter(|s| !cache.subjects.contains_key(*s) && seen.insert(*s)).cloned().collect();
        if !missing.is_empty() {
            if let Some((until, why)) = &cache.backoff {
                if at < *until {
                    return Err(SourceError::Response(format!("{why}; not polling again before {}", rfc3339(*until))));
                }
            }
            tracing::debug!(source = %self.name, subjects = missing.len(), at = %rfc3339(at), "polling ticket source");
            match self.fetch_http(http, &missing, at).await {
                Ok(values) => {
                    cache.backoff = None;
                    for (s, (tickets, baseline)) in missing.into_iter().zip(values) {
                        cache.subjects.insert(s, Entry { fetched_at: at, tickets, baseline });
                    }
                }
                Err(FetchError::RateLimited { until, message }) => {
                    tracing::warn!(source = %self.name, until = %rfc3339(until), "ticket source rate limited (HTTP 429); backing off");
                    let err = SourceError::Response(format!("{message}; not polling again before {}", rfc3339(until)));
                    cache.backoff = Some((until, message));
                    return Err(err);
                }
                Err(FetchError::Other(e)) => return Err(e),
            }
        }
        let (mut tickets, mut baseline) = (SubjectMap::default(), SubjectMap::default());
        for s in subjects {
            if let Some(e) = cache.subjects.get(s) {
                if let Some(t) = e.tickets {
                    tickets.insert(s.clone(), t);
                }
                if let Some(b) = e.baseline {
                    baseline.insert(s.clone(), b);
                }
            }
        }
        Ok(TicketCounts { tickets: tickets.into(), baseline: baseline.into() })
    }
}

/// What a spawned request needs to turn its response into a number.
struct RequestCtx {
    source: String,
    pointer: Arc<str>,
    at: Ts,
    timeout_ms: u64,
}

impl RequestCtx {
    async fn run(&self, request: reqwest::RequestBuilder, shown: &str) -> Result<Option<f64>, FetchError> {
        let source = &self.source;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Other(SourceError::Timeout(self.timeout_ms))
            } else {
                FetchError::Other(SourceError::Transport(format!("ticket source {source:?}: request to {shown} failed: {}", chain(&e))))
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let until = retry_after(response.headers().get(header::RETRY_AFTER), self.at);
            return Err(FetchError::RateLimited { until, message: format!("ticket source {source:?}: {shown} answered HTTP 429 Too Many Requests") });
        }
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.trim().chars().take(200).collect();
            return Err(FetchError::Other(SourceError::Response(format!("ticket source {source:?}: {shown} answered HTTP {status}: {excerpt}"))));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Other(SourceError::Response(format!("ticket source {source:?}: {shown} answered invalid JSON: {e}"))))?;
        number_at(&json, &self.pointer).map_err(|m| FetchError::Other(SourceError::Response(format!("ticket source {source:?}: {shown}: {m}"))))
    }
}

/// The number at `pointer`: a JSON number or a numeric string; `null` is no value.
fn number_at(json: &serde_json::Value, pointer: &str) -> Result<Option<f64>, String> {
    match json.pointer(pointer) {
        None => Err(format!("no value at JSON pointer {pointer:?} in the response")),
        Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| format!("the number at {pointer:?} does not fit a float")),
        Some(serde_json::Value::String(s)) => {
            s.trim().parse::<f64>().map(Some).map_err(|_| format!("the value at JSON pointer {pointer:?} is the string {s:?}, not a number"))
        }
        Some(other) => Err(format!("the value at JSON pointer {pointer:?} is not a number: {other}")),
    }
}

/// When the next request may go out after a 429: `Retry-After` seconds after `at`, or its
/// HTTP date, or [`DEFAULT_RETRY_AFTER_MS`] after `at`.
fn retry_after(value: Option<&header::HeaderValue>, at: Ts) -> Ts {
    let Some(v) = value.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return at + DEFAULT_RETRY_AFTER_MS;
    };
    if let Ok(secs) = v.parse::<u64>() {
        return at.saturating_add(Ts::try_from(secs).unwrap_or(Ts::MAX).saturating_mul(1000));
    }
    match DateTime::parse_from_rfc2822(v) {
        Ok(t) => t.timestamp_millis().max(at),
        Err(_) => at + DEFAULT_RETRY_AFTER_MS,
    }
}

impl<M: MetricsSource> TicketSourceClient<M> {
    /// `prometheus` kind: the query at `at` and at the same time on each of the 7 previous days.
    /// One answer after another, each parsed straight into subjects (`interner`'s): eight
    /// answers of 10,000 series parsed at once in full would hold tens of megabytes for a
    /// moment, every poll.
    async fn prometheus_counts(&self, metrics: &M, query: &str, subject_labels: &[String], at: Ts, interner: &mut SubjectInterner) -> Result<TicketCounts, SourceError> {
        let tickets = metrics.instant_keyed(query, at, subject_labels, interner).await?;
        // A day without a value is NaN, which `median` skips. Inline arrays, not a `Vec` per
        // subject: 10,000 small allocations at every poll fragment the heap for good.
        let mut days: SubjectMap<[f64; 7]> = SubjectMap::with_capacity_and_hasher(tickets.len(), Default::default());
        for k in 1..=7 {
            for (s, v) in metrics.instant_keyed(query, at - k * DAY_MS, subject_labels, interner).await? {
                days.entry(s).or_insert([f64::NAN; 7])[k as usize - 1] = v;
            }
        }
        let baseline: SubjectMap<f64> = days.into_iter().filter_map(|(s, mut v)| median_in_place(&mut v).map(|m| (s, m))).collect();
        Ok(TicketCounts { tickets: tickets.into(), baseline: baseline.into() })
    }
}

impl<M: MetricsSource> TicketCounter for TicketSourceClient<M> {
    /// Counts from the cache when this source was polled less than `poll_interval` before `at`
    /// (for the HTTP kinds: per subject, so a new subject is fetched on its own). The
    /// `prometheus` kind returns every subject its query yields, the HTTP kinds exactly the
    /// requested ones that have a value. An `Err` means no counts for this evaluation.
    async fn counts(&self, subjects: &[Subject], subject_labels: &[String], at: Ts, interner: &mut SubjectInterner) -> Result<TicketCounts, SourceError> {
        let mut cache = self.cache.lock().await;
        match &self.backend {
            Backend::Prometheus { query, metrics } => {
                if let Some((t, c)) = cache.snapshots.get(subject_labels) {
                    if self.fresh(*t, at) {
                        return Ok(c.clone());
                    }
                }
                let c = self.prometheus_counts(metrics, query, subject_labels, at, interner).await?;
                cache.snapshots.insert(subject_labels.to_vec(), (at, c.clone()));
                Ok(c)
            }
            Backend::Http(http) => self.http_counts(http, subjects, at, &mut cache).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median([5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median([7.0, 2.0, 9.0, 4.0, 4.0, 1.0, 8.0]), Some(4.0));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([10.0, 20.0]), Some(15.0));
    }

    #[test]
    fn median_skips_missing_days_and_has_none_without_any() {
        // Five of seven days present (NaN = a day without a value).
        assert_eq!(median([3.0, f64::NAN, 9.0, 1.0, f64::NAN, 7.0, 5.0]), Some(5.0));
        assert_eq!(median([f64::NAN, 6.0]), Some(6.0));
        assert_eq!(median(Vec::new()), None);
        assert_eq!(median([f64::NAN]), None);
        assert_eq!(median([-f64::NAN, 2.0, f64::NAN, 4.0]), Some(3.0), "a negative NaN is a missing day too");
        let mut days = [f64::NAN, 9.0, 1.0, f64::NAN, 5.0, f64::NAN, f64::NAN];
        assert_eq!(median_in_place(&mut days), Some(5.0));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let at = 1_000_000;
        let v = |s: &str| header::HeaderValue::from_str(s).unwrap();
        assert_eq!(retry_after(Some(&v("120")), at), at + 120_000);
        assert_eq!(retry_after(None, at), at + DEFAULT_RETRY_AFTER_MS);
        assert_eq!(retry_after(Some(&v("soon")), at), at + DEFAULT_RETRY_AFTER_MS);
        let date = retry_after(Some(&v("Wed, 21 Oct 2015 07:28:00 GMT")), 0);
        assert_eq!(date, 1_445_412_480_000);
    }

    #[test]
    fn numbers_are_read_at_the_pointer() {
        let j = serde_json::json!({"data": {"total": 12, "s": "3.5", "n": null, "o": {}}});
        assert_eq!(number_at(&j, "/data/total"), Ok(Some(12.0)));
        assert_eq!(number_at(&j, "/data/s"), Ok(Some(3.5)));
        assert_eq!(number_at(&j, "/data/n"), Ok(None));
        assert!(number_at(&j, "/data/missing").unwrap_err().contains("/data/missing"));
        assert!(number_at(&j, "/data/o").unwrap_err().contains("not a number"));
    }
}

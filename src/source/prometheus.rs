//! [`PrometheusSource`]: the [`MetricsSource`] that asks a real Prometheus (or anything that
//! speaks its HTTP API, e.g. Thanos, Mimir, VictoriaMetrics) over HTTP.
//!
//! This module owns the outbound HTTP client for `prometheus:` (timeout, headers, auth, TLS),
//! the translation of the API's answers into [`Sample`]s and [`RangeSeries`], the mapping of
//! failures onto [`SourceError`], and the splitting of long range queries into chunks that
//! Prometheus accepts. It must not interpret values (NaN and ±Inf pass through untouched),
//! key series by subject, retry or cache: those decisions belong to the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use prometheus_http_query::reqwest::{self, header};
use prometheus_http_query::response::Data;
use prometheus_http_query::Error as PromError;

use super::keyed::{self, Answer};
use super::matrix::{self, MatrixAnswer};
use super::{MetricsSource, RangeColumn, RangeSeries, Sample, SourceError, SubjectInterner};
use crate::config::daemon::{Auth, PrometheusConfig};
use crate::engine::{SubjectMap, Ts};

/// Prometheus rejects a range query whose result would exceed 11,000 points per series;
/// [`PrometheusSource::range`] splits longer ranges into chunks of at most this many steps.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The first allocation for an answer's body when its length is not announced (Prometheus
/// streams answers chunked) and the query has no last answer to size it: a small answer
/// fits, a large one grows by doubling.
const BODY_START: usize = 16 * 1024;
/// An announced `Content-Length` or a hint is trusted for the first allocation only up to this much.
const BODY_START_MAX: usize = 8 * 1024 * 1024;

/// A [`MetricsSource`] backed by the Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`).
pub struct PrometheusSource {
    client: prometheus_http_query::Client,
    url: String,
    timeout: Duration,
    queries: AtomicU64,
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No headers here: they may carry credentials.
        f.debug_struct("PrometheusSource").field("url", &self.url).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// Builds the outbound reqwest client for `prometheus:`: timeout, default headers, auth and TLS.
fn build_client(cfg: &PrometheusConfig) -> Result<reqwest::Client, SourceError> {
    let mut headers = header::HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name = header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| SourceError::Transport(format!("invalid header name {k:?} for {}: {e}", cfg.url)))?;
        let value = header::HeaderValue::from_str(v)
            .map_err(|e| SourceError::Transport(format!("invalid value for header {k:?} for {}: {e}", cfg.url)))?;
        headers.append(name, value);
    }
    let authorization = match &cfg.auth {
        Auth::None => None,
        Auth::Basic { username, password } => {
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))))
        }
        Auth::Bearer(token) => Some(format!("Bearer {token}")),
    };
    if let Some(a) = authorization {
        let mut value = header::HeaderValue::from_str(&a)
            .map_err(|_| SourceError::Transport(format!("credentials for {} contain characters not allowed in an HTTP header", cfg.url)))?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder().timeout(cfg.timeout).default_headers(headers);
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| SourceError::Transport(format!("cannot read CA file {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SourceError::Transport(format!("CA file {} is not PEM: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(SourceError::Transport(format!("CA file {} holds no certificate", ca.display())));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if cfg.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| SourceError::Transport(format!("cannot build the HTTP client for {}: {}", cfg.url, chain(&e))))
}

/// An error and its causes, joined with `: ` (reqwest hides the useful part, e.g.
/// "Connection refused", in the source chain).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    msg
}

/// Unix ms → the API's decimal seconds (`1700000000.123`).
fn api_time(ms: Ts) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// Whether a `Content-Type` is JSON (`application/json`, any parameters).
fn is_json(v: Option<&header::HeaderValue>) -> bool {
    v.and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn labels(metric: HashMap<String, String>) -> BTreeMap<String, String> {
    metric.into_iter().collect()
}

fn sample_ts(t: f64) -> Ts {
    (t * 1000.0).round() as Ts
}

const HISTOGRAM_HINT: &str = "if the query returns native histograms or strings, wrap it so it returns floats, \
     e.g. histogram_quantile(0.99, ...), histogram_count(...) or histogram_sum(...)";

impl PrometheusSource {
    /// Builds the client from the validated `prometheus:` configuration. Fails when the URL,
    /// a header or the CA file is unusable; never touches the network.
    pub fn new(cfg: &PrometheusConfig) -> Result<Self, SourceError> {
        let http = build_client(cfg)?;
        let client = prometheus_http_query::Client::from(http, &cfg.url)
            .map_err(|e| SourceError::Transport(format!("invalid Prometheus URL {:?}: {}", cfg.url, chain(&e))))?;
        Ok(PrometheusSource { client, url: cfg.url.clone(), timeout: cfg.timeout, queries: AtomicU64::new(0) })
    }

    /// The base URL queries go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// HTTP requests sent so far (an instant query is one; a range query is one per chunk).
    pub fn queries_sent(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    fn map_err(&self, e: PromError) -> SourceError {
        let url = &self.url;
        match e {
            PromError::Prometheus(p) if p.is_timeout() => SourceError::Timeout(self.timeout_ms()),
            PromError::Prometheus(p) => SourceError::Query(p.message().to_string()),
            PromError::Client(c) => match c.inner() {
                Some(r) => self.map_reqwest(r),
                None => SourceError::Response(format!("Prometheus at {url}: {c} (expected application/json; a proxy in between?)")),
            },
            other => SourceError::Transport(format!("Prometheus at {url}: {}", chain(&other))),
        }
    }

    fn matrix_error(&self) -> SourceError {
        SourceError::Response(format!(
            "Prometheus at {} answered with a range vector (matrix); a signal's query must return an instant vector or a scalar (drop the trailing [range])",
            self.url
        ))
    }

    fn map_reqwest(&self, r: &reqwest::Error) -> SourceError {
        let url = &self.url;
        match r {
            r if r.is_timeout() => SourceError::Timeout(self.timeout_ms()),
            r if r.is_connect() => SourceError::Transport(format!("cannot connect to Prometheus at {url}: {}", chain(r))),
            r if r.is_decode() => SourceError::Response(format!("cannot parse the answer from Prometheus at {url}: {}; {HISTOGRAM_HINT}", chain(r))),
            r if r.status().is_some() => SourceError::Response(format!(
                "Prometheus at {url} answered HTTP {} without a JSON body (a proxy in between?)",
                r.status().map(|s| s.to_string()).unwrap_or_default()
            )),
            r => SourceError::Transport(format!("request to Prometheus at {url} failed: {}", chain(r))),
        }
    }

    /// The body of a raw answer that must be the API's JSON (an error answer included).
    ///
    /// The body is copied out chunk by chunk into one buffer. Each chunk is dropped before the
    /// next is read, so hyper reuses its read buffer and the answer is held once; with
    /// `Response::bytes` every chunk stays alive until the end and is then copied again, which
    /// at 10,000 series held the answer three times over.
    ///
    /// `hint` is the expected length when the answer does not announce one (the same query's
    /// last answer, 0 if unknown): the buffer starts an eighth above it.
    async fn json_body(&self, response: Result<reqwest::Response, PromError>, hint: usize) -> Result<Vec<u8>, SourceError> {
        let mut response = self.json_response(response)?;
        let start = response.content_length().map_or(hint.saturating_add(hint / 8).max(BODY_START), |n| n as usize);
        let mut body = Vec::with_capacity(start.min(BODY_START_MAX));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.map_reqwest(&e))? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A raw answer that must be the API's JSON (an error answer included).
    fn json_response(&self, response: Result<reqwest::Response, PromError>) -> Result<reqwest::Response, SourceError> {
        let response = response.map_err(|e| self.map_err(e))?;
        let url = &self.url;
        let status = response.status();
        if !is_json(response.headers().get(header::CONTENT_TYPE)) {
            return Err(if status.is_client_error() || status.is_server_error() {
                SourceError::Response(format!("Prometheus at {url} answered HTTP {status} without a JSON body (a proxy in between?)"))
            } else {
                SourceError::Response(format!(
                    "Prometheus at {url}: the answer is not JSON (HTTP {status}) (expected application/json; a proxy in between?)"
                ))
            });
        }
        Ok(response)
    }

    /// One request of a range query (counted in `queries`); `start` and `end` in whole seconds.
    fn range_request(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> prometheus_http_query::RangeQueryBuilder {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.client
            .query_range(query, start.div_euclid(1000), end.div_euclid(1000), step_ms as f64 / 1000.0)
            .timeout(self.timeout_ms().min(i64::MAX as u64) as i64)
    }

    /// One request of a range query (at most [`MAX_POINTS_PER_SERIES`] steps), parsed into `into`.
    async fn range_chunk_into(&self, query: &str, start: Ts, end: Ts, step_ms: i64, into: &mut matrix::Columns) -> Result<(), SourceError> {
        let response = self.range_request(query, start, end, step_ms).get_raw().await;
        let body = self.json_body(response, 0).await?;
        let url = &self.url;
        let not_float = |detail: &dyn std::fmt::Display| {
            SourceError::Response(format!("cannot parse the answer from Prometheus at {url}: {detail}; {HISTOGRAM_HINT}"))
        };
        match matrix::parse_matrix(&body, into) {
            Ok(MatrixAnswer::Matrix) => Ok(()),
            Ok(MatrixAnswer::Failed { timeout: true, .. }) => Err(SourceError::Timeout(self.timeout_ms())),
            Ok(MatrixAnswer::Failed { message, .. }) => Err(SourceError::Query(message)),
            Ok(MatrixAnswer::Type(t)) => Err(SourceError::Response(format!("Prometheus at {url} answered a range query with a {t} result instead of a matrix"))),
            Ok(MatrixAnswer::NotFloat) => Err(not_float(&"a sample without a float value")),
            Err(e) => Err(not_float(&format!("error decoding response body: {e}"))),
        }
    }

    async fn range_chunk(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeSeries>, SourceError> {
        let result = self.range_request(query, start, end, step_ms).get().await.map_err(|e| self.map_err(e))?;
        match result.into_inner().0 {
            Data::Matrix(m) => Ok(m
                .into_iter()
                .map(|rv| {
                    let (metric, samples) = rv.into_inner();
                    RangeSeries { labels: labels(metric), points: samples.iter().map(|s| (sample_ts(s.timestamp()), s.value())).collect() }
                })
                .collect()),
            other => Err(SourceError::Response(format!(
                "Prometheus at {} answered a range query with a {} result instead of a matrix",
                self.url,
                result_type(&other)
            ))),
        }
    }
}

fn result_type(d: &Data) -> &'static str {
    match d {
        Data::Vector(_) => "vector",
        Data::Matrix(_) => "matrix",
        Data::Scalar(_) => "scalar",
    }
}

/// Splits `[start, end]` every `step` into chunks of at most [`MAX_POINTS_PER_SERIES`] points.
fn chunks(start: Ts, end: Ts, step: i64) -> Vec<(Ts, Ts)> {
    let mut out = Vec::new();
    let mut s = start;
    while s <= end {
        let e = s.saturating_add(step.saturating_mul(MAX_POINTS_PER_SERIES - 1)).min(end);
        out.push((s, e));
        s = e.saturating_add(step);
    }
    out
}

impl MetricsSource for PrometheusSource {
    /// Evaluates `query` at `at` (millisecond precision). A vector gives one [`Sample`] per
    /// series; a scalar gives one sample with no labels; a matrix or string is a
    /// [`SourceError::Response`].
    async fn instant(&self, query: &str, at: Ts) -> Result<Vec<Sample>, SourceError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let result = self
            .client
            .query(query)
            .query("time", api_time(at))
            .timeout(self.timeout_ms().min(i64::MAX as u64) as i64)
            .get()
            .await
            .map_err(|e| self.map_err(e))?;
        match result.into_inner().0 {
            Data::Vector(v) => Ok(v
                .into_iter()
                .map(|iv| {
                    let (metric, s) = iv.into_inner();
                    Sample { labels: labels(metric), value: s.value() }
                })
                .collect()),
            Data::Scalar(s) => Ok(vec![Sample { labels: BTreeMap::new(), value: s.value() }]),
            Data::Matrix(_) => Err(self.matrix_error()),
        }
    }

    /// The instant query parsed straight into subjects ([`super::keyed`]): the same answers
    /// and errors as [`MetricsSource::instant`] keyed by [`super::key_by_subject`], for a
    /// fraction of the allocations.
    async fn instant_keyed(
        &self,
        query: &str,
        at: Ts,
        subject_labels: &[String],
        interner: &mut SubjectInterner,
    ) -> Result<SubjectMap<f64>, SourceError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let response = self.client.query(query).query("time", api_time(at)).timeout(self.timeout_ms().min(i64::MAX as u64) as i64).get_raw().await;
        let body = self.json_body(response, interner.body_hint(query)).await?;
        interner.note_body_len(query, body.len());
        let url = &self.url;
        let not_float = |detail: &dyn std::fmt::Display| {
            SourceError::Response(format!("cannot parse the answer from Prometheus at {url}: {detail}; {HISTOGRAM_HINT}"))
        };
        interner.begin_answer(query);
        let parsed = keyed::parse_instant(&body, subject_labels, interner);
        interner.end_answer();
        match parsed {
            Ok(Answer::Values(v)) => Ok(v),
            Ok(Answer::Failed { timeout: true, .. }) => Err(SourceError::Timeout(self.timeout_ms())),
            Ok(Answer::Failed { message, .. }) => Err(SourceError::Query(message)),
            Ok(Answer::Type(t)) if t == "matrix" => Err(self.matrix_error()),
            Ok(Answer::Type(t)) => Err(not_float(&format!("a {t} result"))),
            Ok(Answer::NotFloat) => Err(not_float(&"a sample without a float value")),
            Ok(Answer::Error(e)) => Err(e),
            Err(e) => Err(not_float(&format!("error decoding response body: {e}"))),
        }
    }

    /// A range query, split into chunks of at most [`MAX_POINTS_PER_SERIES`] steps (sent one
    /// after the other) and merged per series. `start` and `end` are truncated to whole
    /// seconds (the API client takes seconds); `step_ms` must be positive.
    async fn range(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeSeries>, SourceError> {
        if step_ms <= 0 {
            return Err(SourceError::Query(format!("range query step must be positive, got {step_ms}ms")));
        }
        if end < start {
            return Ok(Vec::new());
        }
        let mut merged: Vec<RangeSeries> = Vec::new();
        let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
        for (s, e) in chunks(start, end, step_ms) {
            for series in self.range_chunk(query, s, e, step_ms).await? {
                match index.get(&series.labels) {
                    Some(&i) => merged[i].points.extend(series.points),
                    None => {
                        index.insert(series.labels.clone(), merged.len());
                        merged.push(series);
                    }
                }
            }
        }
        for s in &mut merged {
            s.points.sort_by_key(|p| p.0);
            s.points.dedup_by_key(|p| p.0);
        }
        Ok(merged)
    }

    /// [`MetricsSource::range`] parsed straight into columns ([`super::matrix`]): the same
    /// answers and errors for a fraction of the memory.
    async fn range_columns(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeColumn>, SourceError> {
        if step_ms <= 0 {
            return Err(SourceError::Query(format!("range query step must be positive, got {step_ms}ms")));
        }
        let mut columns = matrix::Columns::new(start, end, step_ms);
        if end >= start {
            for (s, e) in chunks(start, end, step_ms) {
                self.range_chunk_into(query, s, e, step_ms, &mut columns).await?;
            }
        }
        Ok(columns.into_series())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_never_exceed_the_point_limit_and_cover_the_range() {
        let step = 1000;
        let end = 25_000 * step;
        let c = chunks(0, end, step);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], (0, 10_999 * step));
        assert_eq!(c[1], (11_000 * step, 21_999 * step));
        assert_eq!(c[2], (22_000 * step, end));
        for (s, e) in &c {
            assert!((e - s) / step < MAX_POINTS_PER_SERIES);
        }
        assert_eq!(chunks(5, 5, 1000), vec![(5, 5)]);
        assert_eq!(chunks(0, 10_999_000, 1000).len(), 1, "exactly 11,000 points is one request");
    }

    #[test]
    fn api_time_keeps_milliseconds() {
        assert_eq!(api_time(1_700_000_000_123), "1700000000.123");
        assert_eq!(api_time(1_700_000_000_000), "1700000000.000");
    }
}

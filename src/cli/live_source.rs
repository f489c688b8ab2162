//! The metrics source `herald run` uses.
//!
//! INTERIM: the `sources` branch provides `herald::source::prometheus::PrometheusSource`
//! (`PrometheusSource::new(&PrometheusConfig) -> Result<Self, SourceError>`). Until it is merged,
//! this small private adapter answers PromQL through `prometheus-http-query`. When it lands,
//! replace [`PromAdapter`] with `PrometheusSource` in [`LiveSource`] and delete the adapter.
//!
//! With no `prometheus:` section, [`LiveSource::Unconfigured`] fails every query, so rules
//! over query signals are *unknown* (never silently false).

use base64::Engine as _;
use prometheus_http_query::reqwest;
use prometheus_http_query::response::Data;

use crate::config::daemon::{Auth, PrometheusConfig};
use crate::engine::Ts;
use crate::source::{MetricsSource, RangeSeries, Sample, SourceError};

/// The daemon's metrics source.
pub enum LiveSource {
    /// A Prometheus-compatible server.
    Prometheus(PromAdapter),
    /// No `prometheus:` section: every query fails.
    Unconfigured,
}

impl LiveSource {
    /// Builds the source for an optional `prometheus:` section.
    pub fn new(cfg: Option<&PrometheusConfig>) -> Result<LiveSource, SourceError> {
        Ok(match cfg {
            Some(c) => LiveSource::Prometheus(PromAdapter::new(c)?),
            None => LiveSource::Unconfigured,
        })
    }
}

const UNCONFIGURED: &str = "no `prometheus` section in the configuration";

impl MetricsSource for LiveSource {
    async fn instant(&self, query: &str, at: Ts) -> Result<Vec<Sample>, SourceError> {
        match self {
            LiveSource::Prometheus(p) => p.instant(query, at).await,
            LiveSource::Unconfigured => Err(SourceError::Transport(UNCONFIGURED.into())),
        }
    }

    async fn range(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeSeries>, SourceError> {
        match self {
            LiveSource::Prometheus(p) => p.range(query, start, end, step_ms).await,
            LiveSource::Unconfigured => Err(SourceError::Transport(UNCONFIGURED.into())),
        }
    }
}

/// A minimal Prometheus HTTP API client (interim, see the module docs).
pub struct PromAdapter {
    client: prometheus_http_query::Client,
    timeout_ms: i64,
}

fn err(e: prometheus_http_query::Error) -> SourceError {
    match e {
        prometheus_http_query::Error::Prometheus(p) => SourceError::Query(p.to_string()),
        other => SourceError::Transport(other.to_string()),
    }
}

fn labels(m: &std::collections::HashMap<String, String>) -> std::collections::BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl PromAdapter {
    fn new(c: &PrometheusConfig) -> Result<PromAdapter, SourceError> {
        let mut headers = reqwest::header::HeaderMap::new();
        let bad = |e: &dyn std::fmt::Display| SourceError::Transport(format!("invalid prometheus header: {e}"));
        for (k, v) in &c.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(&e))?;
            headers.insert(name, reqwest::header::HeaderValue::from_str(v).map_err(|e| bad(&e))?);
        }
        let auth = match &c.auth {
            Auth::None => None,
            Auth::Basic { username, password } => {
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))))
            }
            Auth::Bearer(t) => Some(format!("Bearer {t}")),
        };
        if let Some(a) = auth {
            let mut v = reqwest::header::HeaderValue::from_str(&a).map_err(|e| bad(&e))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut b = reqwest::Client::builder().default_headers(headers).timeout(c.timeout);
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca).map_err(|e| SourceError::Transport(format!("cannot read {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| SourceError::Transport(format!("invalid CA file {}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        if c.insecure_skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        let http = b.build().map_err(|e| SourceError::Transport(e.to_string()))?;
        let client = prometheus_http_query::Client::from(http, &c.url).map_err(err)?;
        Ok(PromAdapter { client, timeout_ms: c.timeout.as_millis() as i64 })
    }

    async fn instant(&self, query: &str, at: Ts) -> Result<Vec<Sample>, SourceError> {
        let r = self.client.query(query).at(at / 1000).timeout(self.timeout_ms).get().await.map_err(err)?;
        match r.data() {
            Data::Vector(v) => Ok(v.iter().map(|s| Sample { labels: labels(s.metric()), value: s.sample().value() }).collect()),
            Data::Scalar(s) => Ok(vec![Sample { labels: Default::default(), value: s.value() }]),
            Data::Matrix(_) => Err(SourceError::Response("an instant query returned a range vector".into())),
        }
    }

    async fn range(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeSeries>, SourceError> {
        let r = self.client.query_range(query, start / 1000, end / 1000, step_ms as f64 / 1000.0).timeout(self.timeout_ms).get().await.map_err(err)?;
        match r.data() {
            Data::Matrix(m) => Ok(m
                .iter()
                .map(|s| RangeSeries {
                    labels: labels(s.metric()),
                    points: s.samples().iter().map(|p| ((p.timestamp() * 1000.0).round() as Ts, p.value())).collect(),
                })
                .collect()),
            _ => Err(SourceError::Response("a range query did not return a range vector".into())),
        }
    }
}

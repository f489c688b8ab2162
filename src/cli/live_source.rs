//! The metrics source `herald run` uses: Herald's Prometheus client, or — when the config has
//! no `prometheus:` section — a source that fails every query, so rules that would need one
//! stay unknown (config validation refuses query signals without `prometheus:` anyway).

use crate::config::daemon::PrometheusConfig;
use crate::engine::Ts;
use crate::source::prometheus::PrometheusSource;
use crate::source::{MetricsSource, RangeColumn, RangeSeries, Sample, SourceError};

const UNCONFIGURED: &str = "no `prometheus:` section in the configuration";

/// Prometheus, or nothing.
pub enum LiveSource {
    Prometheus(PrometheusSource),
    Unconfigured,
}

impl LiveSource {
    /// Builds the client for a `prometheus:` section, if any.
    pub fn new(cfg: Option<&PrometheusConfig>) -> Result<LiveSource, SourceError> {
        Ok(match cfg {
            Some(c) => LiveSource::Prometheus(PrometheusSource::new(c)?),
            None => LiveSource::Unconfigured,
        })
    }
}

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

    async fn range_columns(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeColumn>, SourceError> {
        match self {
            LiveSource::Prometheus(p) => p.range_columns(query, start, end, step_ms).await,
            LiveSource::Unconfigured => Err(SourceError::Transport(UNCONFIGURED.into())),
        }
    }
}

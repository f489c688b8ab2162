//! The metrics source `herald run` uses: Herald's Prometheus client, or — when the config has
//! no `prometheus:` section — a source that fails every query, so rules that would need one
//! stay unknown (config validation refuses query signals without `prometheus:` anyway).

use crate::config::daemon::PrometheusConfig;

use crate::engine::{SubjectMap, Ts};
use crate::source::prometheus::PrometheusSource;
use crate::source::{MetricsSource, RangeColumn, RangeSeries, Sample, SourceError, SubjectInterner};

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

    /// Forwarded, so the daemon gets Prometheus's lean parse (regression: the default
    /// `instant` + `key_by_subject` path tripled the cost of a cycle at 10,000 services).
    async fn instant_keyed(&self, query: &str, at: Ts, subject_labels: &[String], interner: &mut SubjectInterner) -> Result<SubjectMap<f64>, SourceError> {
        match self {
            LiveSource::Prometheus(p) => p.instant_keyed(query, at, subject_labels, interner).await,
            LiveSource::Unconfigured => Err(SourceError::Transport(UNCONFIGURED.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// Serves the same instant-query answer to every request on a loopback port.
    fn serve(body: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(resp.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    /// Regression: `LiveSource` did not forward `instant_keyed`, so the daemon parsed every
    /// answer through the generic path. The lean parse interns subjects: the same subject
    /// from two answers shares one key allocation.
    #[tokio::test]
    async fn the_daemon_source_uses_the_lean_keyed_parse() {
        let url = serve(r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"service":"checkout","job":"x"},"value":[1,"0.5"]}]}}"#);
        let cfg = PrometheusConfig {
            url,
            timeout: std::time::Duration::from_secs(5),
            headers: Vec::new(),
            auth: crate::config::daemon::Auth::None,
            ca_file: None,
            insecure_skip_verify: false,
        };
        let source = LiveSource::new(Some(&cfg)).unwrap();
        let labels = ["service".to_string()];
        let mut interner = SubjectInterner::default();
        let a = source.instant_keyed("q", 0, &labels, &mut interner).await.unwrap();
        interner.next_generation();
        let b = source.instant_keyed("q", 0, &labels, &mut interner).await.unwrap();
        let (sa, sb) = (a.keys().next().unwrap(), b.keys().next().unwrap());
        assert_eq!(sa, sb);
        assert_eq!(a[sa], 0.5);
        assert!(std::ptr::eq(sa.key().as_ptr(), sb.key().as_ptr()), "interned: one allocation per subject");
    }
}

//! How outgoing requests leave the process.
//!
//! A [`Transport`] takes one [`OutgoingRequest`] and returns the receiver's answer. The delivery
//! worker picks the transport per receiver when it delivers:
//! * [`HttpTransport`] — real HTTP (reqwest, rustls), with the receiver's timeout and no
//!   redirects (a 3xx is an answer, not something to follow with a signed body);
//! * [`LogTransport`] — the `log` receiver: writes the rendered message to the tracing log;
//! * [`Recorder`] — dry-run: records the request in memory and answers 200 without any I/O.
//!
//! Dry-run is a transport swap, not a flag read by each receiver: in dry-run, every receiver
//! gets the [`Recorder`] except those configured with `dry_run_target: true`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_http_query::reqwest;

/// A boxed, sendable future (the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One HTTP request (or log line) to one receiver endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingRequest {
    /// The receiver's name (for logs; never the URL, which may be a secret).
    pub receiver: String,
    /// `POST` for every receiver type today.
    pub method: String,
    /// Target URL (`log:` for the log receiver). May embed a secret (Slack, Teams): never log it.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (JSON).
    pub body: Vec<u8>,
    /// Give up on this request after this long.
    pub timeout: Duration,
    /// The rendered (title, text), set in dry runs so the recorder can log what would have
    /// been said whatever the receiver's payload format.
    pub preview: Option<(String, String)>,
}

impl OutgoingRequest {
    /// The body as JSON (for tests and the recorder's users).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The receiver's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Retry-After` (seconds or HTTP date), relative to now.
    pub retry_after: Option<Duration>,
    /// The first few hundred bytes of the body (for `last_error`).
    pub body_snippet: String,
}

/// No answer was received.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The request did not complete within the receiver's timeout.
    #[error("timed out")]
    Timeout,
    /// Could not connect or the connection broke.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The request could not be built (bad URL or header): retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Any other transport failure.
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, TransportError::Invalid(_))
    }
}

/// Sends requests. Implementations must be cheap to share between tasks.
pub trait Transport: Send + Sync {
    /// Sends one request and returns the answer.
    fn send(&self, req: OutgoingRequest) -> BoxFuture<'_, Result<Response, TransportError>>;
}

/// Maximum bytes of a response body kept for error messages.
pub const SNIPPET_BYTES: usize = 300;

/// Real HTTP through reqwest (rustls).
#[derive(Clone, Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    /// A client with connection pooling, no redirects and a Herald user agent.
    pub fn new() -> Result<HttpTransport, TransportError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Other(e.without_url().to_string()))?;
        Ok(HttpTransport { client })
    }
}

/// The longest `Retry-After` Herald honours (1 hour). A receiver asking for more gets its
/// next try after an hour; the entry's retry deadline (`max_retry_duration`) still applies.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` value: delay seconds or an HTTP date (relative to `now`), capped at
/// [`MAX_RETRY_AFTER`] (a number too large for any integer type is capped too).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

fn snippet(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(SNIPPET_BYTES)];
    String::from_utf8_lossy(cut).trim().to_string()
}

impl Transport for HttpTransport {
    fn send(&self, req: OutgoingRequest) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(req.method.as_bytes())
                .map_err(|e| TransportError::Invalid(e.to_string()))?;
            let url = reqwest::Url::parse(&req.url)
                .map_err(|e| TransportError::Invalid(format!("invalid URL: {e}")))?;
            let mut b = self.client.request(method, url).timeout(req.timeout);
            for (k, v) in &req.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            let resp = b.body(req.body).send().await.map_err(classify_reqwest)?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
            // The body is only for error messages: a failure to read it is not a failure to deliver.
            let body = resp.bytes().await.map(|b| snippet(&b)).unwrap_or_default();
            Ok(Response {
                status,
                retry_after,
                body_snippet: body,
            })
        })
    }
}

fn classify_reqwest(e: reqwest::Error) -> TransportError {
    let e = e.without_url();
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_builder() {
        TransportError::Invalid(e.to_string())
    } else if e.is_connect() || e.is_request() {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        TransportError::Connect(msg)
    } else {
        TransportError::Other(e.to_string())
    }
}

/// The `log` receiver: writes the message (a JSON `{title, text}` body) to the daemon's log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogTransport;

impl Transport for LogTransport {
    fn send(&self, req: OutgoingRequest) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let v = req.json().unwrap_or_default();
            let title = v.get("title").and_then(|t| t.as_str()).unwrap_or_default();
            let text = v.get("text").and_then(|t| t.as_str()).unwrap_or_default();
            tracing::info!(receiver = %req.receiver, title = %title, text = %text, "notification");
            Ok(Response {
                status: 200,
                retry_after: None,
                body_snippet: String::new(),
            })
        })
    }
}

/// Dry-run transport: remembers every request and answers 200. Nothing leaves the process.
#[derive(Debug, Default)]
pub struct Recorder {
    requests: Mutex<Vec<OutgoingRequest>>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder::default()
    }
    /// Everything recorded so far, oldest first.
    pub fn requests(&self) -> Vec<OutgoingRequest> {
        self.requests.lock().expect("recorder lock").clone()
    }
    /// Forgets the recorded requests (a long dry run must not grow without bound).
    pub fn take(&self) -> Vec<OutgoingRequest> {
        std::mem::take(&mut *self.requests.lock().expect("recorder lock"))
    }
}

/// How many requests a [`Recorder`] keeps before dropping the oldest.
pub const RECORDER_CAPACITY: usize = 10_000;

impl Transport for Recorder {
    fn send(&self, req: OutgoingRequest) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let (title, text) = req.preview.clone().unwrap_or_default();
            tracing::info!(receiver = %req.receiver, title = %title, text = %text, bytes = req.body.len(), "dry run: recorded instead of sending");
            let mut r = self.requests.lock().expect("recorder lock");
            if r.len() >= RECORDER_CAPACITY {
                r.remove(0);
            }
            r.push(req);
            Ok(Response {
                status: 200,
                retry_after: None,
                body_snippet: String::new(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = chrono::Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        // Huge values are capped instead of overflowing into a tight retry loop.
        for huge in ["18446744073709551615", "99999999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"] {
            assert_eq!(parse_retry_after(huge, now), Some(MAX_RETRY_AFTER), "{huge}");
        }
    }

    #[tokio::test]
    async fn recorder_records_and_answers_200() {
        let r = Recorder::new();
        let req = OutgoingRequest {
            receiver: "x".into(),
            method: "POST".into(),
            url: "http://127.0.0.1:9/never".into(),
            headers: vec![],
            body: b"{}".to_vec(),
            timeout: Duration::from_secs(1),
            preview: None,
        };
        assert_eq!(r.send(req.clone()).await.unwrap().status, 200);
        assert_eq!(r.requests(), vec![req]);
    }
}

//! Test support for running integration tests against a REAL Prometheus.
//!
//! # How to use it
//!
//! Include this file from an integration test (a top-level `tests/*.rs` file)
//! with exactly this line — the convention in this repo is one `#[path]`
//! include per support file, there is no `tests/support/mod.rs`:
//!
//! ```ignore
//! #[path = "support/prometheus.rs"]
//! mod prometheus;
//! use prometheus::{Exporter, Prometheus};
//! ```
//!
//! The Prometheus binaries come from Debian's `prometheus` package, unpacked
//! (never installed) by `scripts/fetch-prometheus` into
//! `.cache/prometheus/usr/bin/{prometheus,promtool}`; `scripts/test` runs the
//! fetch for you. Set `HERALD_PROMETHEUS_DIR` to use binaries from another
//! directory. If the binaries are missing, tests PANIC (they never skip).
//!
//! ```ignore
//! let exporter = Exporter::start();
//! exporter.set("sli", &[("service", "checkout")], 0.97);
//! let prom = Prometheus::builder()
//!     .target(exporter.addr())
//!     .scrape_interval(Duration::from_secs(1))
//!     .start();
//! let rows = prometheus::wait_for_query(&prom.url(), "sli", Duration::from_secs(30));
//! assert_eq!(rows[0].1, 0.97);
//! ```
//!
//! Only std, `serde_json` and `tempfile` are used (no extra dependencies).
//! HTTP is spoken by hand over `std::net::TcpStream` (HTTP/1.1,
//! `Connection: close`), so everything here is blocking and can be called from
//! plain `#[test]` functions as well as (sparingly) from async tests.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// One row of an instant-query result: the series labels (including
/// `__name__` when Prometheus keeps it) and the sample value.
pub type QueryRow = (HashMap<String, String>, f64);

/// How long [`Prometheus`] waits for `/-/ready` before panicking.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Default job name used in the generated scrape config.
pub const DEFAULT_JOB: &str = "herald-test";

const POLL_INTERVAL: Duration = Duration::from_millis(200);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

/// Directory containing the `prometheus` and `promtool` binaries.
///
/// `$HERALD_PROMETHEUS_DIR` if set, else
/// `<CARGO_MANIFEST_DIR>/.cache/prometheus/usr/bin`.
///
/// # Panics
/// If either binary is missing — run `scripts/fetch-prometheus`.
pub fn prometheus_bin_dir() -> PathBuf {
    let (dir, source) = match std::env::var_os("HERALD_PROMETHEUS_DIR") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), "$HERALD_PROMETHEUS_DIR"),
        _ => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/prometheus/usr/bin"),
            "the default location",
        ),
    };
    let missing: Vec<&str> = ["prometheus", "promtool"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "Prometheus binaries {missing:?} not found in {} ({source}). \
         Run `scripts/fetch-prometheus` (or `scripts/test`, which runs it) from the repo root \
         to download and unpack Debian's prometheus package into .cache/prometheus, \
         or set HERALD_PROMETHEUS_DIR to a directory containing `prometheus` and `promtool`.",
        dir.display()
    );
    dir
}

/// Path of the `prometheus` binary (panics like [`prometheus_bin_dir`]).
pub fn prometheus_bin() -> PathBuf {
    prometheus_bin_dir().join("prometheus")
}

/// Path of the `promtool` binary (panics like [`prometheus_bin_dir`]).
pub fn promtool_bin() -> PathBuf {
    prometheus_bin_dir().join("promtool")
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Current wall-clock time as Unix seconds (fractional).
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs_f64()
}

/// Picks a currently-free loopback TCP port (bind to :0 and release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
}

/// Percent-encodes a query-string component.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// Minimal blocking HTTP client
// ---------------------------------------------------------------------------

/// Blocking `GET` of an `http://host:port/path?query` URL.
///
/// Returns `(status, body)`. Supports `Content-Length`, chunked and
/// read-to-close bodies. Errors (connect refused, timeouts, malformed
/// responses) are returned as strings.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {authority}: no addresses"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).ok();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: herald-test-support\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("write request to {addr}: {e}"))?;

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| format!("read status from {addr}: {e}"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line from {addr}: {status_line:?}"))?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("read headers from {addr}: {e}"))?;
        let line = line.trim_end();
        if n == 0 || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                content_length = v.parse().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }

    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = String::new();
            reader
                .read_line(&mut size_line)
                .map_err(|e| format!("read chunk size from {addr}: {e}"))?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| format!("bad chunk size from {addr}: {size_line:?}"))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            reader
                .read_exact(&mut chunk)
                .map_err(|e| format!("read chunk from {addr}: {e}"))?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            reader
                .read_exact(&mut crlf)
                .map_err(|e| format!("read chunk end from {addr}: {e}"))?;
        }
    } else if let Some(len) = content_length {
        body.resize(len, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| format!("read body from {addr}: {e}"))?;
    } else {
        reader
            .read_to_end(&mut body)
            .map_err(|e| format!("read body from {addr}: {e}"))?;
    }
    let body = String::from_utf8(body).map_err(|e| format!("non-UTF-8 body from {addr}: {e}"))?;
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

fn parse_sample_value(v: &serde_json::Value) -> Result<f64, String> {
    // Prometheus encodes samples as [<unix time>, "<value as string>"].
    let s = v
        .get(1)
        .and_then(|s| s.as_str())
        .ok_or_else(|| format!("unexpected sample encoding: {v}"))?;
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse()
            .map_err(|e| format!("bad sample value {s:?}: {e}")),
    }
}

/// Instant query via `/api/v1/query`, at `time` (Unix seconds) or "now" if
/// `None`. Vector results give one row per series; scalar results give one row
/// with empty labels. Matrix/string results are an error.
pub fn try_query_instant(
    url: &str,
    promql: &str,
    time: Option<f64>,
) -> Result<Vec<QueryRow>, String> {
    let mut full = format!(
        "{}/api/v1/query?query={}",
        url.trim_end_matches('/'),
        url_encode(promql)
    );
    if let Some(t) = time {
        let _ = write!(full, "&time={t:.3}");
    }
    let (status, body) = http_get(&full)?;
    let json: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}: invalid JSON ({e}): {body}"))?;
    if status != 200 || json["status"] != "success" {
        return Err(format!("query {promql:?} failed: HTTP {status}: {body}"));
    }
    let data = &json["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or_else(|| format!("vector result is not an array: {body}"))?
            .iter()
            .map(|row| {
                let labels = row["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((labels, parse_sample_value(&row["value"])?))
            })
            .collect(),
        Some("scalar") => Ok(vec![(HashMap::new(), parse_sample_value(&data["result"])?)]),
        other => Err(format!(
            "unsupported resultType {other:?} for {promql:?}: {body}"
        )),
    }
}

/// Instant query at "now". Panics on any error.
pub fn query_instant(url: &str, promql: &str) -> Vec<QueryRow> {
    try_query_instant(url, promql, None)
        .unwrap_or_else(|e| panic!("instant query {promql:?} against {url} failed: {e}"))
}

/// Instant query evaluated at `time` (Unix seconds, like the API's `time=`).
/// Panics on any error.
pub fn query_instant_at(url: &str, promql: &str, time: f64) -> Vec<QueryRow> {
    try_query_instant(url, promql, Some(time)).unwrap_or_else(|e| {
        panic!("instant query {promql:?} at time={time} against {url} failed: {e}")
    })
}

/// Polls the instant query (every 200ms) until `pred` accepts the result and
/// returns that result. Errors while polling are tolerated (e.g. Prometheus
/// still starting). Panics after `timeout` with the last result/error.
pub fn wait_for_query_matching(
    url: &str,
    promql: &str,
    timeout: Duration,
    pred: impl Fn(&[QueryRow]) -> bool,
) -> Vec<QueryRow> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = try_query_instant(url, promql, None);
        if let Ok(rows) = &last {
            if pred(rows) {
                return rows.clone();
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for PromQL {promql:?} against {url} \
                 to match the expected condition; last result: {last:?}"
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Polls (every 200ms) until the instant query returns a non-empty result.
pub fn wait_for_query(url: &str, promql: &str, timeout: Duration) -> Vec<QueryRow> {
    wait_for_query_matching(url, promql, timeout, |rows| !rows.is_empty())
}

/// Polls (every 200ms) until the query returns exactly one row whose value is
/// within 1e-9 of `expected`; returns that row.
pub fn wait_for_value(url: &str, promql: &str, expected: f64, timeout: Duration) -> QueryRow {
    wait_for_query_matching(url, promql, timeout, |rows| {
        rows.len() == 1 && (rows[0].1 - expected).abs() < 1e-9
    })
    .remove(0)
}

// ---------------------------------------------------------------------------
// Exporter
// ---------------------------------------------------------------------------

type SeriesKey = (String, Vec<(String, String)>);

fn series_key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    (name.to_owned(), l)
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

fn format_series(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn render_exposition(samples: &BTreeMap<SeriesKey, f64>) -> String {
    let mut out = String::new();
    let mut last_name: Option<&str> = None;
    for ((name, labels), v) in samples {
        if last_name != Some(name.as_str()) {
            let _ = writeln!(out, "# TYPE {name} gauge");
            last_name = Some(name);
        }
        let _ = writeln!(out, "{} {}", format_series(name, labels), format_value(*v));
    }
    out
}

struct ExporterShared {
    samples: Mutex<BTreeMap<SeriesKey, f64>>,
    scrapes: AtomicU64,
    stop: AtomicBool,
}

/// A tiny HTTP server on `127.0.0.1:<random port>` serving `GET /metrics` in
/// the Prometheus text exposition format (every series typed `gauge`) from a
/// shared, mutable set of samples. Stops on drop.
pub struct Exporter {
    addr: SocketAddr,
    shared: Arc<ExporterShared>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Binds `127.0.0.1:0` and starts serving (initially no samples).
    pub fn start() -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("exporter: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("exporter: local_addr");
        let shared = Arc::new(ExporterShared {
            samples: Mutex::new(BTreeMap::new()),
            scrapes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("test-exporter-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if thread_shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let shared = Arc::clone(&thread_shared);
                    // One short-lived thread per connection so a slow client
                    // cannot block scrapes.
                    let _ = thread::Builder::new()
                        .name("test-exporter-conn".to_owned())
                        .spawn(move || {
                            let _ = Self::serve(stream, &shared);
                        });
                }
            })
            .expect("exporter: spawn thread");
        Exporter {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    fn serve(mut stream: TcpStream, shared: &ExporterShared) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let (status, ctype, body) = if method == "GET" && path == "/metrics" {
            shared.scrapes.fetch_add(1, Ordering::SeqCst);
            let samples = shared.samples.lock().unwrap_or_else(|e| e.into_inner());
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render_exposition(&samples),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found\n".to_owned(),
            )
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        stream.flush()?;
        let _ = stream.shutdown(Shutdown::Both);
        Ok(())
    }

    /// The listening address (`127.0.0.1:<port>`), usable as a scrape target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Sets (creates or overwrites) the series `name{labels}` to `value`.
    /// Label order does not matter.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.lock().insert(series_key(name, labels), value);
    }

    /// Removes the series `name{labels}` (no-op if absent). Prometheus will
    /// write a staleness marker for it on the next scrape.
    pub fn remove(&self, name: &str, labels: &[(&str, &str)]) {
        self.lock().remove(&series_key(name, labels));
    }

    /// Removes every series.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The current exposition text, exactly as served on `/metrics`.
    pub fn render(&self) -> String {
        render_exposition(&self.lock())
    }

    /// Number of `GET /metrics` requests served so far.
    pub fn scrapes(&self) -> u64 {
        self.shared.scrapes.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SeriesKey, f64>> {
        self.shared
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// OpenMetrics (for backfilling)
// ---------------------------------------------------------------------------

/// Builds an OpenMetrics text file suitable for
/// `promtool tsdb create-blocks-from openmetrics`: families grouped, samples
/// sorted by time per series, timestamps in SECONDS, terminated by `# EOF`.
/// Every family is typed `gauge`.
#[derive(Default, Clone, Debug)]
pub struct OpenMetrics {
    series: BTreeMap<SeriesKey, BTreeMap<i64, f64>>,
}

impl OpenMetrics {
    pub fn new() -> OpenMetrics {
        OpenMetrics::default()
    }

    /// Adds samples `(unix_seconds, value)` to series `name{labels}`. Later
    /// samples at the same timestamp overwrite earlier ones.
    pub fn series(mut self, name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Self {
        let s = self.series.entry(series_key(name, labels)).or_default();
        for &(t, v) in samples {
            s.insert(t, v);
        }
        self
    }

    /// The OpenMetrics text, ending with `# EOF\n`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last_name: Option<&str> = None;
        for ((name, labels), samples) in &self.series {
            if last_name != Some(name.as_str()) {
                let _ = writeln!(out, "# TYPE {name} gauge");
                last_name = Some(name);
            }
            let series = format_series(name, labels);
            for (t, v) in samples {
                let _ = writeln!(out, "{series} {} {t}", format_value(*v));
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// Runs `promtool tsdb create-blocks-from openmetrics` to write TSDB blocks
/// for `openmetrics` (see [`OpenMetrics`]; timestamps in seconds, must end
/// with `# EOF`) into `data_dir`. Do this BEFORE Prometheus starts on that
/// directory (or while it is stopped). Panics with promtool's output on error.
pub fn backfill(data_dir: &Path, openmetrics: &str) {
    assert!(
        openmetrics.trim_end().ends_with("# EOF"),
        "backfill: OpenMetrics input must end with `# EOF`"
    );
    fs::create_dir_all(data_dir)
        .unwrap_or_else(|e| panic!("backfill: create {}: {e}", data_dir.display()));
    let input_dir = tempfile::tempdir().expect("backfill: tempdir");
    let input = input_dir.path().join("backfill.om");
    fs::write(&input, openmetrics).expect("backfill: write input file");
    let promtool = promtool_bin();
    let out = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("backfill: cannot run {}: {e}", promtool.display()));
    assert!(
        out.status.success(),
        "backfill: `promtool tsdb create-blocks-from openmetrics` failed ({}):\n\
         stdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// Configuration for a [`Prometheus`] instance; see [`Prometheus::builder`].
#[derive(Clone, Debug)]
pub struct PrometheusBuilder {
    targets: Vec<String>,
    scrape_interval: Duration,
    job_name: String,
    backfill: Vec<String>,
    extra_args: Vec<String>,
    ready_timeout: Duration,
}

impl PrometheusBuilder {
    /// Adds a scrape target (e.g. `exporter.addr()`), scraped at `/metrics`.
    pub fn target(mut self, addr: SocketAddr) -> Self {
        self.targets.push(addr.to_string());
        self
    }

    /// Adds a scrape target given as `host:port`.
    pub fn target_str(mut self, host_port: &str) -> Self {
        self.targets.push(host_port.to_owned());
        self
    }

    /// Scrape (and rule evaluation) interval; default 1s.
    pub fn scrape_interval(mut self, interval: Duration) -> Self {
        self.scrape_interval = interval;
        self
    }

    /// Job name for the generated scrape config; default `herald-test`.
    pub fn job_name(mut self, job: &str) -> Self {
        self.job_name = job.to_owned();
        self
    }

    /// OpenMetrics text to backfill with promtool into the data dir before the
    /// first start (may be called several times).
    pub fn backfill(mut self, openmetrics: impl Into<String>) -> Self {
        self.backfill.push(openmetrics.into());
        self
    }

    /// Extra command-line flag for `prometheus`, e.g. `--query.lookback-delta=1m`.
    /// Must not repeat a flag the harness already sets (`--config.file`,
    /// `--web.listen-address`, `--storage.tsdb.path`,
    /// `--storage.tsdb.retention.time`, `--web.enable-lifecycle`,
    /// `--web.enable-admin-api`, `--web.console.*`): Prometheus rejects
    /// repeated flags.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// How long to wait for `/-/ready`; default [`READY_TIMEOUT`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Writes config, backfills, starts Prometheus and waits until ready.
    pub fn start(self) -> Prometheus {
        Prometheus::start_with(self)
    }
}

/// A real `prometheus` process on `127.0.0.1:<free port>`, with its config,
/// data and log in a private temp directory. Killed on drop.
pub struct Prometheus {
    config: PrometheusBuilder,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Prometheus {
    /// A builder with defaults: no targets, 1s scrape interval.
    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder {
            targets: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            job_name: DEFAULT_JOB.to_owned(),
            backfill: Vec::new(),
            extra_args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Starts Prometheus scraping `targets` every `scrape_interval`.
    pub fn start(targets: &[SocketAddr], scrape_interval: Duration) -> Prometheus {
        targets
            .iter()
            .fold(Prometheus::builder(), |b, t| b.target(*t))
            .scrape_interval(scrape_interval)
            .start()
    }

    /// Like [`Prometheus::start`], after backfilling `openmetrics` (see
    /// [`backfill`]) into the fresh data dir.
    pub fn with_backfill(
        openmetrics: &str,
        targets: &[SocketAddr],
        scrape_interval: Duration,
    ) -> Prometheus {
        targets
            .iter()
            .fold(Prometheus::builder(), |b, t| b.target(*t))
            .scrape_interval(scrape_interval)
            .backfill(openmetrics)
            .start()
    }

    fn start_with(config: PrometheusBuilder) -> Prometheus {
        // Fail fast (and loudly) if the binaries are missing.
        let _ = prometheus_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("herald-prometheus-")
            .tempdir()
            .expect("prometheus: create temp dir");
        let mut prom = Prometheus {
            config,
            dir,
            port: 0,
            child: None,
        };
        fs::create_dir_all(prom.data_dir()).expect("prometheus: create data dir");
        fs::write(prom.config_path(), prom.render_config()).expect("prometheus: write config");
        for text in &prom.config.backfill {
            backfill(&prom.data_dir(), text);
        }
        // The free port is found by bind-and-release, so another process could
        // grab it before Prometheus does; retry with a new port in that case.
        let mut attempt = 0;
        loop {
            attempt += 1;
            prom.port = free_port();
            match prom.spawn_and_wait() {
                Ok(()) => return prom,
                Err(e) if attempt < 3 && e.contains("address already in use") => {
                    prom.kill();
                    continue;
                }
                Err(e) => {
                    prom.kill();
                    panic!("{e}");
                }
            }
        }
    }

    fn render_config(&self) -> String {
        let interval_ms = self.config.scrape_interval.as_millis().max(1);
        let timeout_ms = interval_ms.min(10_000);
        let mut cfg = format!(
            "global:\n  scrape_interval: {interval_ms}ms\n  scrape_timeout: {timeout_ms}ms\n  \
             evaluation_interval: {interval_ms}ms\n"
        );
        if self.config.targets.is_empty() {
            cfg.push_str("scrape_configs: []\n");
        } else {
            let targets: Vec<String> = self
                .config
                .targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect();
            let _ = write!(
                cfg,
                "scrape_configs:\n  - job_name: '{}'\n    scrape_interval: {interval_ms}ms\n    \
                 scrape_timeout: {timeout_ms}ms\n    metrics_path: /metrics\n    static_configs:\n      \
                 - targets: [{}]\n",
                self.config.job_name,
                targets.join(", ")
            );
        }
        cfg
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("prometheus: open log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("prometheus: clone log fd: {e}"))?;
        let bin = prometheus_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--config.file={}", self.config_path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg(format!("--storage.tsdb.path={}", self.data_dir().display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg("--web.enable-lifecycle")
            .arg("--web.enable-admin-api")
            .arg(format!(
                "--web.console.templates={}",
                self.dir.path().join("consoles").display()
            ))
            .arg(format!(
                "--web.console.libraries={}",
                self.dir.path().join("console_libraries").display()
            ))
            .args(&self.config.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .map_err(|e| format!("prometheus: cannot spawn {}: {e}", bin.display()))?;
        self.child = Some(child);

        let ready_url = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + self.config.ready_timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "prometheus exited before becoming ready ({status}); \
                         log {}:\n{}",
                        self.log_path().display(),
                        self.log_excerpt()
                    ));
                }
            }
            let last = match http_get(&ready_url) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "prometheus not ready at {ready_url} after {:?} (last: {last}); \
                     log {}:\n{}",
                    self.config.ready_timeout,
                    self.log_path().display(),
                    self.log_excerpt()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port Prometheus listens on (stable across [`Prometheus::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TSDB directory (`--storage.tsdb.path`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The generated `prometheus.yml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    /// Prometheus's combined stdout/stderr (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// For failure messages: error lines from the whole log (start-up errors
    /// such as bad flags are printed before a long usage text), then the tail.
    fn log_excerpt(&self) -> String {
        let text = match fs::read_to_string(self.log_path()) {
            Ok(t) => t,
            Err(e) => return format!("(cannot read log: {e})"),
        };
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("level=error") || l.contains("error") || l.contains("err=")
            })
            .take(20)
            .collect();
        let tail = tail_lines(&text, LOG_TAIL_LINES);
        if errors.is_empty() {
            tail
        } else {
            format!(
                "--- error lines ---\n{}\n--- last {LOG_TAIL_LINES} lines ---\n{tail}",
                errors.join("\n")
            )
        }
    }

    /// Last `n` lines of the Prometheus log.
    pub fn log_tail(&self, n: usize) -> String {
        fs::read_to_string(self.log_path())
            .map(|s| tail_lines(&s, n))
            .unwrap_or_else(|e| format!("(cannot read log: {e})"))
    }

    /// Whether the process is currently running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process (SIGKILL) and waits for it, keeping the config and
    /// data dir so that [`Prometheus::restart`] can bring it back on the same
    /// port with the same data (recovered from the WAL). No-op if stopped.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts Prometheus again (after [`Prometheus::stop`]) on the same port
    /// with the same config and data dir, and waits until ready. If it is
    /// still running it is stopped first. Panics like start-up does.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            self.kill();
            panic!("restart failed: {e}");
        }
    }

    /// Backfills `openmetrics` into the data dir of a STOPPED instance;
    /// call [`Prometheus::restart`] afterwards to see the data.
    pub fn backfill_stopped(&mut self, openmetrics: &str) {
        assert!(
            !self.is_running(),
            "backfill_stopped: call stop() first; promtool must not write into a live TSDB"
        );
        backfill(&self.data_dir(), openmetrics);
    }

    /// Instant query at "now" against this instance (panics on error).
    pub fn query(&self, promql: &str) -> Vec<QueryRow> {
        query_instant(&self.url(), promql)
    }

    /// Instant query at `time` (Unix seconds) against this instance.
    pub fn query_at(&self, promql: &str, time: f64) -> Vec<QueryRow> {
        query_instant_at(&self.url(), promql, time)
    }

    /// [`wait_for_query`] against this instance.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<QueryRow> {
        wait_for_query(&self.url(), promql, timeout)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

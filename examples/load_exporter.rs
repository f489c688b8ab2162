//! A load generator for benchmarks (`scripts/bench-live`): N services with the metrics the
//! default pack queries; every 20th service breaches its SLO with 12% of customers affected.
//!
//! Usage:
//! - `load_exporter 127.0.0.1:9102 1000 [EPOCH]` serves `/metrics`. Request counters are a
//!   function of time: each service has served 20 requests a second since `EPOCH` (unix
//!   seconds; default: now).
//! - `load_exporter --openmetrics 1000 FROM TO > history.om` writes the request counters from
//!   FROM to TO (unix seconds, every 5 s, epoch FROM) as OpenMetrics for
//!   `promtool tsdb create-blocks-from openmetrics`: history that the live exporter, started
//!   with `EPOCH` = FROM, continues without a counter reset. Only the counters are written:
//!   they are what range windows (`rate(...[1h])`) read; the gauges are read as instants.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::{routing::get, Router};

/// Requests a second per service.
const RATE: f64 = 20.0;

/// The error ratio of service `i`.
fn error_ratio(i: usize) -> f64 {
    if i.is_multiple_of(20) {
        0.05
    } else {
        0.0002
    }
}

/// Service `i`'s (ok, error) request counters `secs` seconds after the epoch.
fn counters(i: usize, secs: f64) -> (f64, f64) {
    let total = RATE * secs;
    let err = (total * error_ratio(i)).round();
    (total.round() - err, err)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--openmetrics") {
        let num = |i: usize, what: &str| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("usage: load_exporter --openmetrics N FROM TO ({what})")) };
        let (n, from, to) = (num(1, "N") as usize, num(2, "FROM"), num(3, "TO"));
        return openmetrics(n, from, to);
    }
    let listen = args.first().cloned().unwrap_or_else(|| "127.0.0.1:9102".into());
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let epoch: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or_else(now);
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(serve(listen, n, epoch));
}

/// The counters from `from` to `to`, every 5 s, as OpenMetrics on stdout.
fn openmetrics(n: usize, from: u64, to: u64) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut line = String::new();
    writeln!(out, "# TYPE http_requests_total gauge").expect("stdout");
    for i in 0..n {
        for code in ["200", "500"] {
            for t in (from..to).step_by(5) {
                let (ok, err) = counters(i, (t - from) as f64);
                line.clear();
                let _ = writeln!(line, "http_requests_total{{service=\"svc-{i:04}\",code=\"{code}\"}} {} {t}", if code == "200" { ok } else { err });
                out.write_all(line.as_bytes()).expect("stdout");
            }
        }
    }
    writeln!(out, "# EOF").expect("stdout");
    out.flush().expect("stdout");
}

async fn serve(listen: String, n: usize, epoch: f64) {
    let app = Router::new().route(
        "/metrics",
        get(move || async move {
            let secs = now() - epoch;
            let mut out = String::with_capacity(n * 400);
            out.push_str("# TYPE http_requests_total counter\n");
            for i in 0..n {
                let (ok, err) = counters(i, secs);
                let _ = writeln!(out, "http_requests_total{{service=\"svc-{i:04}\",code=\"200\"}} {ok}");
                let _ = writeln!(out, "http_requests_total{{service=\"svc-{i:04}\",code=\"500\"}} {err}");
            }
            for i in 0..n {
                let affected = if i.is_multiple_of(20) { 120 } else { 1 };
                let _ = writeln!(out, "customers_active{{service=\"svc-{i:04}\"}} 1000");
                let _ = writeln!(out, "customers_with_errors{{service=\"svc-{i:04}\"}} {affected}");
                let _ = writeln!(out, "service_customer_facing{{service=\"svc-{i:04}\"}} 1");
                let _ = writeln!(out, "support_tickets_1h{{service=\"svc-{i:04}\"}} {}", if i.is_multiple_of(50) { 12 } else { i % 3 });
            }
            out
        }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("load exporter: {n} services on http://{listen}/metrics");
    axum::serve(listener, app).await.expect("serve");
}

//! A load generator for benchmarks (`scripts/bench-live`): N services with the metrics the
//! default pack queries; every 20th service breaches its SLO with 12% of customers affected.
//!
//! Usage: `cargo run --release --example load_exporter -- 127.0.0.1:9102 1000`

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{routing::get, Router};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9102".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    // (ok, errors) per service
    let totals = Arc::new(Mutex::new(vec![(0.0f64, 0.0f64); n]));
    let t = totals.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for (i, (ok, err)) in t.lock().unwrap().iter_mut().enumerate() {
                let ratio = if i.is_multiple_of(20) { 0.05 } else { 0.0002 };
                *ok += 20.0 * (1.0 - ratio);
                *err += 20.0 * ratio;
            }
        }
    });
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let totals = totals.clone();
            async move {
                let totals = totals.lock().unwrap();
                let mut out = String::with_capacity(n * 400);
                out.push_str("# TYPE http_requests_total counter\n");
                for (i, (ok, err)) in totals.iter().enumerate() {
                    let _ = writeln!(out, "http_requests_total{{service=\"svc-{i:04}\",code=\"200\"}} {ok}");
                    let _ = writeln!(out, "http_requests_total{{service=\"svc-{i:04}\",code=\"500\"}} {err}");
                }
                for (i, _) in totals.iter().enumerate() {
                    let affected = if i.is_multiple_of(20) { 120 } else { 1 };
                    let _ = writeln!(out, "customers_active{{service=\"svc-{i:04}\"}} 1000");
                    let _ = writeln!(out, "customers_with_errors{{service=\"svc-{i:04}\"}} {affected}");
                    let _ = writeln!(out, "service_customer_facing{{service=\"svc-{i:04}\"}} 1");
                    let _ = writeln!(out, "support_tickets_1h{{service=\"svc-{i:04}\"}} {}", if i.is_multiple_of(50) { 12 } else { i % 3 });
                }
                out
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("load exporter: {n} services on http://{listen}/metrics");
    axum::serve(listener, app).await.expect("serve");
}

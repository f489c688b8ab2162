//! A scripted service for the demo (`scripts/demo`): exposes request counters and customer
//! gauges in Prometheus text format. `checkout` is healthy, then breaches its SLO with 12% of
//! customers affected; `search` stays healthy; `reports` is internal (not customer-facing).
//!
//! Usage: `target/release/herald-demo-service 127.0.0.1:9101 [breach_after_secs]`. A binary of
//! the package (not an example) so that `scripts/demo` builds exactly what `cargo build --release`
//! builds: an example is built with the dev-dependencies, a different build from the README's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{routing::get, Router};

#[derive(Default)]
struct Counters {
    /// (service, ok, errors)
    requests: Vec<(&'static str, f64, f64)>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9101".into());
    let breach_after: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let started = Instant::now();
    let counters = Arc::new(Mutex::new(Counters { requests: vec![("checkout", 0.0, 0.0), ("search", 0.0, 0.0), ("reports", 0.0, 0.0)] }));
    let breaching = move || started.elapsed() >= Duration::from_secs(breach_after);

    // 50 requests/s per service; checkout fails 5% of them once breaching.
    let c = counters.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut c = c.lock().unwrap();
            for (svc, ok, err) in c.requests.iter_mut() {
                let error_ratio = if *svc == "checkout" && breaching() { 0.05 } else { 0.0002 };
                *ok += 50.0 * (1.0 - error_ratio);
                *err += 50.0 * error_ratio;
            }
        }
    });

    let app = Router::new().route(
        "/metrics",
        get(move || {
            let c = counters.clone();
            async move {
                let c = c.lock().unwrap();
                let mut out = String::from("# TYPE http_requests_total counter\n");
                for (svc, ok, err) in &c.requests {
                    out += &format!("http_requests_total{{service=\"{svc}\",code=\"200\"}} {ok}\n");
                    out += &format!("http_requests_total{{service=\"{svc}\",code=\"500\"}} {err}\n");
                }
                out += "# TYPE customers_active gauge\n# TYPE customers_with_errors gauge\n# TYPE service_customer_facing gauge\n";
                for (svc, _, _) in &c.requests {
                    let affected = if *svc == "checkout" && breaching() { 240 } else { 1 };
                    out += &format!("customers_active{{service=\"{svc}\"}} 2000\n");
                    out += &format!("customers_with_errors{{service=\"{svc}\"}} {affected}\n");
                    out += &format!("service_customer_facing{{service=\"{svc}\"}} {}\n", if *svc == "reports" { 0 } else { 1 });
                }
                out
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("demo service on http://{listen}/metrics; checkout breaches after {breach_after}s");
    axum::serve(listener, app).await.expect("serve");
}

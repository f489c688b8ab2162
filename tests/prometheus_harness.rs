//! End-to-end checks of the real-Prometheus test harness in
//! `tests/support/prometheus.rs`. Needs the binaries from
//! `scripts/fetch-prometheus` (run by `scripts/test`); fails if missing.

#[path = "support/prometheus.rs"]
mod prometheus;

use std::time::Duration;

use prometheus::{now_unix, wait_for_value, Exporter, OpenMetrics, Prometheus, DEFAULT_JOB};

const WAIT: Duration = Duration::from_secs(30);
const SLI: &str = r#"sli{service="checkout"}"#;

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: expected {expected}, got {actual}"
    );
}

#[test]
fn exporter_serves_text_format() {
    let exporter = Exporter::start();
    exporter.set("sli", &[("service", "checkout")], 0.97);
    exporter.set("sli", &[("service", "search"), ("region", "eu")], 1.0);
    exporter.set("up_total", &[], 3.0);

    // Families and series are rendered in a stable order: by metric name, then
    // by sorted label pairs; label order passed to `set` does not matter.
    let (status, body) = prometheus::http_get(&exporter.metrics_url()).expect("GET /metrics");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "# TYPE sli gauge\n\
         sli{region=\"eu\",service=\"search\"} 1\n\
         sli{service=\"checkout\"} 0.97\n\
         # TYPE up_total gauge\n\
         up_total 3\n"
    );
    assert_eq!(exporter.scrapes(), 1);

    exporter.remove("sli", &[("service", "search"), ("region", "eu")]);
    exporter.remove("up_total", &[]);
    let (_, body) = prometheus::http_get(&exporter.metrics_url()).expect("GET /metrics");
    assert_eq!(body, "# TYPE sli gauge\nsli{service=\"checkout\"} 0.97\n");

    let (status, _) =
        prometheus::http_get(&format!("http://{}/nope", exporter.addr())).expect("GET /nope");
    assert_eq!(status, 404);
}

#[test]
fn scrapes_live_values_and_survives_restart() {
    let exporter = Exporter::start();
    exporter.set("sli", &[("service", "checkout")], 0.97);

    let mut prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    let url = prom.url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    // First scrape lands and carries the target labels.
    let (labels, value) = wait_for_value(&url, SLI, 0.97, WAIT);
    assert_close(value, 0.97, "initial sli");
    assert_eq!(labels.get("__name__").map(String::as_str), Some("sli"));
    assert_eq!(labels.get("service").map(String::as_str), Some("checkout"));
    assert_eq!(labels.get("job").map(String::as_str), Some(DEFAULT_JOB));
    let instance = exporter.addr().to_string();
    assert_eq!(labels.get("instance"), Some(&instance));
    let t_097 = now_unix();
    assert!(exporter.scrapes() >= 1);

    // Changing the exporter's value is seen by Prometheus.
    exporter.set("sli", &[("service", "checkout")], 0.5);
    wait_for_value(&url, SLI, 0.5, WAIT);
    let t_050 = now_unix();
    // ...and the old value is still there at the earlier timestamp.
    let rows = prom.query_at(SLI, t_097);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(rows[0].1, 0.97, "sli at t_097 before restart");

    // Stop: the API is gone.
    prom.stop();
    assert!(!prom.is_running());
    assert!(
        prometheus::try_query_instant(&url, SLI, None).is_err(),
        "query should fail while Prometheus is stopped"
    );

    // Restart on the same port and data dir: history survives (WAL replay).
    prom.restart();
    assert!(prom.is_running());
    assert_eq!(prom.url(), url);
    let rows = prom.query_at(SLI, t_097);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(rows[0].1, 0.97, "sli at t_097 after restart");
    let rows = prom.query_at(SLI, t_050);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(rows[0].1, 0.5, "sli at t_050 after restart");

    // Scraping resumes after the restart.
    exporter.set("sli", &[("service", "checkout")], 0.25);
    wait_for_value(&url, SLI, 0.25, WAIT);

    // Removing the series makes it go stale (disappear) promptly.
    exporter.remove("sli", &[("service", "checkout")]);
    prometheus::wait_for_query_matching(&url, SLI, WAIT, |rows| rows.is_empty());
}

#[test]
fn backfilled_history_is_queryable_at_fixed_times() {
    const STEP: i64 = 60;
    let exporter = Exporter::start();
    let instance = exporter.addr().to_string();
    let labels = [
        ("service", "checkout"),
        ("job", DEFAULT_JOB),
        ("instance", instance.as_str()),
    ];

    // Three hours of one-per-minute history ending four hours ago (well
    // outside the head block's range), for the same series the exporter
    // will serve live.
    let now = now_unix() as i64;
    let end = (now - 4 * 3600) / STEP * STEP;
    let start = end - 3 * 3600;
    let value_at = |t: i64| ((t - start) / STEP) as f64 / 1000.0 + 0.5;
    let samples: Vec<(i64, f64)> = (start..=end)
        .step_by(STEP as usize)
        .map(|t| (t, value_at(t)))
        .collect();
    assert_eq!(samples.len(), 181);
    let om = OpenMetrics::new().series("sli", &labels, &samples).render();
    assert!(om.ends_with("# EOF\n"));

    exporter.set("sli", &[("service", "checkout")], 0.99);
    let prom = Prometheus::builder()
        .target(exporter.addr())
        .scrape_interval(Duration::from_secs(1))
        .backfill(om)
        .start();

    // Exact sample timestamps, and between samples (5m lookback picks the
    // latest earlier sample).
    for t in [start, start + 37 * STEP, end - 90 * STEP, end] {
        let rows = prom.query_at(SLI, t as f64);
        assert_eq!(rows.len(), 1, "at {t}: {rows:?}");
        assert_close(rows[0].1, value_at(t), &format!("sli at {t}"));
        assert_eq!(rows[0].0.get("instance"), Some(&instance));

        let rows = prom.query_at(SLI, (t + STEP / 2) as f64);
        assert_eq!(rows.len(), 1, "at {t}+30s: {rows:?}");
        assert_close(rows[0].1, value_at(t), &format!("sli at {t}+30s"));
    }

    // Nothing before the history, nothing after lookback expires.
    assert!(prom.query_at(SLI, (start - 600) as f64).is_empty());
    assert!(prom.query_at(SLI, (end + 600) as f64).is_empty());

    // Range functions over backfilled data: a 30m window strictly between
    // sample timestamps holds exactly 30 samples.
    let at = (end - STEP / 2) as f64;
    let rows = prom.query_at(&format!("count_over_time({SLI}[30m])"), at);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_close(rows[0].1, 30.0, "count_over_time");
    let rows = prom.query_at(&format!("max_over_time({SLI}[30m])"), at);
    assert_close(rows[0].1, value_at(end - STEP), "max_over_time");
    let rows = prom.query_at("scalar(vector(42))", at);
    assert_close(rows[0].1, 42.0, "scalar");

    // Live scraping works on top of the backfilled blocks, same series.
    let (_, v) = wait_for_value(&prom.url(), SLI, 0.99, WAIT);
    assert_close(v, 0.99, "live sli");
    // One series holding both: all 181 historic samples plus live ones.
    let rows = prom.query(&format!("count_over_time({SLI}[8h])"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].1 >= 182.0,
        "expected history + live samples: {rows:?}"
    );
}

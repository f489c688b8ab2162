//! `PrometheusSource` and the `prometheus` ticket kind against a REAL Prometheus (Debian's
//! package, see `scripts/fetch-prometheus`) on 127.0.0.1, plus small std::net servers for the
//! cases a real Prometheus cannot produce on demand (auth capture, hangs, odd answers).

#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use herald::config::daemon::{Auth, PrometheusConfig, TicketKind, TicketSource};
use herald::engine::Subject;
use herald::source::{columns, key_by_subject, MetricsSource, PrometheusSource, SourceError, SubjectInterner, TicketCounter, TicketSourceClient, MAX_POINTS_PER_SERIES};
use prometheus::{now_unix, Exporter, OpenMetrics, Prometheus};

const WAIT: Duration = Duration::from_secs(30);
const DAY_S: i64 = 86_400;

fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn config(url: &str) -> PrometheusConfig {
    PrometheusConfig {
        url: url.to_string(),
        timeout: Duration::from_secs(10),
        headers: Vec::new(),
        auth: Auth::None,
        ca_file: None,
        insecure_skip_verify: false,
    }
}

fn now_ms() -> i64 {
    (now_unix() * 1000.0) as i64
}

fn service(s: &str) -> Subject {
    Subject::new([("service", s)])
}

#[test]
fn instant_queries_against_a_real_prometheus() {
    let exporter = Exporter::start();
    exporter.set("sli", &[("service", "checkout")], 0.97);
    exporter.set("sli", &[("service", "search")], 0.999);
    exporter.set("odd", &[("kind", "nan")], f64::NAN);
    exporter.set("odd", &[("kind", "inf")], f64::INFINITY);
    exporter.set("odd", &[("kind", "neginf")], f64::NEG_INFINITY);
    let mut prom = Prometheus::builder().target(exporter.addr()).scrape_interval(Duration::from_secs(1)).start();
    prometheus::wait_for_query_matching(&prom.url(), "sli", WAIT, |rows| rows.len() == 2);
    prometheus::wait_for_query_matching(&prom.url(), "odd", WAIT, |rows| rows.len() == 3);

    let source = PrometheusSource::new(&config(&prom.url())).expect("client");
    block(async {
        // One request, one sample per service, keyed by the subject labels.
        let before = source.queries_sent();
        let samples = source.instant("sli", now_ms()).await.expect("instant query");
        assert_eq!(source.queries_sent(), before + 1, "one query per call");
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert!(samples.iter().all(|s| s.labels["__name__"] == "sli" && s.labels["job"] == prometheus::DEFAULT_JOB));
        let keyed = key_by_subject(&samples, &["service".to_string()]).expect("keyed");
        assert_eq!(keyed.len(), 2);
        assert_eq!(keyed[&service("checkout")], 0.97);
        assert_eq!(keyed[&service("search")], 0.999);
        // The daemon's lean parse keys the same answer identically, errors included.
        let mut interner = SubjectInterner::default();
        let lean = source.instant_keyed("sli", now_ms(), &["service".to_string()], &mut interner).await.expect("keyed query");
        assert_eq!(lean, keyed);
        let scalar = source.instant_keyed("scalar(sum(sli))", now_ms(), &["service".to_string()], &mut interner).await.expect("scalar");
        assert!((scalar[&service("")] - (0.97 + 0.999)).abs() < 1e-9, "{scalar:?}");
        match source.instant_keyed("sum(rate(sli[5m])", now_ms(), &["service".to_string()], &mut interner).await {
            Err(SourceError::Query(m)) => assert!(m.contains("parse error"), "{m}"),
            other => panic!("expected a Query error, got {other:?}"),
        }
        match source.instant_keyed("sli[1m]", now_ms(), &["service".to_string()], &mut interner).await {
            Err(SourceError::Response(m)) => assert!(m.contains("range vector"), "{m}"),
            other => panic!("expected a Response error, got {other:?}"),
        }
        match source.instant_keyed("sli", now_ms(), &["job".to_string()], &mut interner).await {
            Err(e @ SourceError::DuplicateSubject { .. }) => assert!(e.to_string().contains("checkout") && e.to_string().contains("search"), "{e}"),
            other => panic!("expected a duplicate-subject error, got {other:?}"),
        }

        // NaN and ±Inf arrive as such.
        let odd = source.instant("odd", now_ms()).await.expect("odd values");
        let by_kind: BTreeMap<String, f64> = odd.iter().map(|s| (s.labels["kind"].clone(), s.value)).collect();
        assert!(by_kind["nan"].is_nan(), "{by_kind:?}");
        assert_eq!(by_kind["inf"], f64::INFINITY);
        assert_eq!(by_kind["neginf"], f64::NEG_INFINITY);

        // A scalar is one sample without labels.
        let scalar = source.instant("scalar(sum(sli)) * 2", now_ms()).await.expect("scalar");
        assert_eq!(scalar.len(), 1);
        assert!(scalar[0].labels.is_empty());
        assert!((scalar[0].value - 2.0 * (0.97 + 0.999)).abs() < 1e-9, "{scalar:?}");

        // Evaluation time is honoured: an hour before Prometheus started there is nothing.
        let past = source.instant("sli", now_ms() - 3_600_000).await.expect("past");
        assert!(past.is_empty(), "{past:?}");

        // A PromQL syntax error is a Query error carrying Prometheus's message.
        match source.instant("sum(rate(sli[5m])", now_ms()).await {
            Err(SourceError::Query(m)) => assert!(m.contains("parse error"), "{m}"),
            other => panic!("expected a Query error, got {other:?}"),
        }
        // A range vector is not a signal.
        match source.instant("sli[1m]", now_ms()).await {
            Err(SourceError::Response(m)) => assert!(m.contains("range vector"), "{m}"),
            other => panic!("expected a Response error, got {other:?}"),
        }
    });

    // A stopped Prometheus is a Transport error that names the URL.
    prom.stop();
    let url = prom.url();
    match block(source.instant("sli", now_ms())) {
        Err(SourceError::Transport(m)) => assert!(m.contains(&url), "{m}"),
        other => panic!("expected a Transport error, got {other:?}"),
    }
    match block(source.instant_keyed("sli", now_ms(), &["service".to_string()], &mut SubjectInterner::default())) {
        Err(SourceError::Transport(m)) => assert!(m.contains(&url), "{m}"),
        other => panic!("expected a Transport error, got {other:?}"),
    }
}

#[test]
fn range_queries_are_chunked_below_the_point_limit_and_merged() {
    let prom = Prometheus::builder().start();
    let source = PrometheusSource::new(&config(&prom.url())).expect("client");
    let start_s = (now_unix() as i64) - 30_000;
    let steps = 25_000; // 25,001 points: three requests
    let end_s = start_s + steps;

    // The limit is real: Prometheus refuses the whole range in one request.
    let raw = prometheus::http_get(&format!("{}/api/v1/query_range?query=time()&start={start_s}&end={end_s}&step=1", prom.url())).expect("raw");
    assert_eq!(raw.0, 400, "{raw:?}");
    assert!(raw.1.contains("11,000") || raw.1.contains("11000"), "{}", raw.1);

    let before = source.queries_sent();
    let series = block(source.range("time()", start_s * 1000, end_s * 1000, 1000)).expect("range");
    let expected_requests = ((steps + 1 + MAX_POINTS_PER_SERIES - 1) / MAX_POINTS_PER_SERIES) as u64;
    assert_eq!(expected_requests, 3);
    assert_eq!(source.queries_sent() - before, expected_requests);
    assert_eq!(series.len(), 1, "one series after merging the chunks");
    let points = &series[0].points;
    assert_eq!(points.len(), steps as usize + 1);
    for (i, (t, v)) in points.iter().enumerate() {
        let want = (start_s + i as i64) * 1000;
        assert_eq!(*t, want, "point {i}");
        assert_eq!(*v, (want / 1000) as f64, "time() at point {i}");
    }

    // Parsed straight into columns: the same answer, in as many requests.
    let before = source.queries_sent();
    let cols = block(source.range_columns("time()", start_s * 1000, end_s * 1000, 1000)).expect("columns");
    assert_eq!(source.queries_sent() - before, expected_requests);
    assert_eq!(cols, columns(series, start_s * 1000, end_s * 1000, 1000));
    let labelled = "label_replace(vector(time()), \"service\", \"a\", \"\", \"\") or label_replace(vector(1), \"service\", \"b\", \"\", \"\")";
    let (s, e) = (start_s * 1000, (start_s + 600) * 1000);
    let general = block(source.range(labelled, s, e, 60_000)).expect("range");
    assert_eq!(block(source.range_columns(labelled, s, e, 60_000)).expect("columns"), columns(general, s, e, 60_000));
    let refused = (block(source.range("sum(", s, e, 60_000)).unwrap_err(), block(source.range_columns("sum(", s, e, 60_000)).unwrap_err());
    assert!(matches!(&refused.0, SourceError::Query(_)), "{:?}", refused.0);
    assert_eq!(refused.0, refused.1);
}

#[test]
fn ticket_baseline_is_the_median_of_the_previous_seven_days() {
    // `at` is an hour ago, on a whole minute; day k of the history is at `at - k days`.
    let at_s = ((now_unix() as i64) / 60) * 60 - 3600;
    let day = |k: i64| at_s - k * DAY_S;
    // checkout: all 7 days → median of [4, 6, 5, 10, 3, 8, 7] = 6.
    let checkout = [30.0, 4.0, 6.0, 5.0, 10.0, 3.0, 8.0, 7.0];
    // search: days 1, 3, 5, 7 only → median of [1, 9, 3, 5] = 4.
    let search: [(i64, f64); 5] = [(0, 2.0), (1, 1.0), (3, 9.0), (5, 3.0), (7, 5.0)];
    let mut om = OpenMetrics::new()
        .series("support_tickets", &[("service", "checkout")], &checkout.iter().enumerate().map(|(k, v)| (day(k as i64), *v)).collect::<Vec<_>>())
        .series("support_tickets", &[("service", "search")], &search.iter().map(|(k, v)| (day(*k), *v)).collect::<Vec<_>>())
        // billing: today only → no baseline. legacy: history only → a baseline, no tickets.
        .series("support_tickets", &[("service", "billing")], &[(day(0), 1.0)])
        .series("support_tickets", &[("service", "legacy")], &[(day(3), 11.0)]);
    // A sample 8 days back must not count (only 7 previous days).
    om = om.series("support_tickets", &[("service", "legacy")], &[(day(8), 1000.0)]);
    let prom = Prometheus::builder().backfill(om.render()).start();

    let metrics = Arc::new(PrometheusSource::new(&config(&prom.url())).expect("client"));
    let cfg = TicketSource {
        name: "support".into(),
        kind: TicketKind::Prometheus { query: "sum by (service) (support_tickets)".into() },
        window: Duration::from_secs(3600),
        poll_interval: Duration::from_secs(300),
        timeout: Duration::from_secs(10),
    };
    let tickets = TicketSourceClient::new(&cfg, Some(metrics.clone())).expect("ticket source");
    let subject_labels = vec!["service".to_string()];
    let subjects = [service("checkout"), service("search")];
    let at = at_s * 1000;
    block(async {
        let before = metrics.queries_sent();
        let mut interner = herald::source::SubjectInterner::default();
        let c = tickets.counts(&subjects, &subject_labels, at, &mut interner).await.expect("counts");
        assert_eq!(metrics.queries_sent() - before, 8, "today plus 7 previous days");
        // The subjects are the group interner's: the very allocations its other signals get.
        let (checkout, _) = c.tickets.get_key_value(&service("checkout")).expect("checkout");
        assert!(interner.intern(&subject_labels, &[Some("checkout".into())]).same_allocation(checkout));
        assert_eq!(c.tickets.get(&service("checkout")), Some(&30.0));
        assert_eq!(c.baseline.get(&service("checkout")), Some(&6.0));
        assert_eq!(c.tickets.get(&service("search")), Some(&2.0));
        assert_eq!(c.baseline.get(&service("search")), Some(&4.0));
        assert_eq!(c.tickets.get(&service("billing")), Some(&1.0));
        assert_eq!(c.baseline.get(&service("billing")), None);
        assert_eq!(c.tickets.get(&service("legacy")), None);
        assert_eq!(c.baseline.get(&service("legacy")), Some(&11.0));

        // Within poll_interval (on the `at` clock) the cached counts come back without a query.
        let again = tickets.counts(&subjects, &subject_labels, at + 299_000, &mut Default::default()).await.expect("cached");
        assert_eq!(again, c);
        assert_eq!(metrics.queries_sent() - before, 8);
        // After poll_interval it asks again.
        tickets.counts(&subjects, &subject_labels, at + 300_000, &mut Default::default()).await.expect("refetched");
        assert_eq!(metrics.queries_sent() - before, 16);
    });
}

// ---------------------------------------------------------------------------
// Hand-made servers on 127.0.0.1
// ---------------------------------------------------------------------------

/// Reads one request head (request line and headers) from `stream`.
fn read_head(stream: &TcpStream) -> String {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    head
}

/// Answers every request with `body` (as `content_type`) and sends each request head on the channel.
fn fake_prometheus(status: &'static str, content_type: &'static str, body: &'static str) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let head = read_head(&stream);
            let _ = tx.send(head);
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(resp.as_bytes());
        }
    });
    (addr, rx)
}

const EMPTY_VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn basic_and_bearer_auth_and_extra_headers_are_sent() {
    let (addr, rx) = fake_prometheus("200 OK", "application/json", EMPTY_VECTOR);
    let url = format!("http://{addr}");

    let mut basic = config(&url);
    basic.auth = Auth::Basic { username: "herald".into(), password: "pa:ss".into() };
    basic.headers = vec![("X-Scope-OrgID".into(), "tenant-1".into())];
    let source = PrometheusSource::new(&basic).expect("client");
    let samples = block(source.instant("up", 1_700_000_000_250)).expect("query");
    assert!(samples.is_empty());
    let head = rx.recv_timeout(WAIT).expect("request");
    // base64("herald:pa:ss")
    assert_eq!(header_of(&head, "authorization").as_deref(), Some("Basic aGVyYWxkOnBhOnNz"), "{head}");
    assert_eq!(header_of(&head, "x-scope-orgid").as_deref(), Some("tenant-1"), "{head}");
    let request_line = head.lines().next().unwrap_or_default();
    assert!(request_line.starts_with("GET /api/v1/query?query=up&time=1700000000.250"), "{request_line}");

    let mut bearer = config(&url);
    bearer.auth = Auth::Bearer("t0ken".into());
    let source = PrometheusSource::new(&bearer).expect("client");
    block(source.instant("up", 1_700_000_000_000)).expect("query");
    let head = rx.recv_timeout(WAIT).expect("request");
    assert_eq!(header_of(&head, "authorization").as_deref(), Some("Bearer t0ken"), "{head}");
}

#[test]
fn a_server_that_never_answers_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream); // accept, read nothing, never answer
        }
    });
    let mut cfg = config(&format!("http://{addr}"));
    cfg.timeout = Duration::from_millis(300);
    let source = PrometheusSource::new(&cfg).expect("client");
    let started = std::time::Instant::now();
    assert_eq!(block(source.instant("up", now_ms())), Err(SourceError::Timeout(300)));
    assert_eq!(block(source.instant_keyed("up", now_ms(), &[], &mut SubjectInterner::default())), Err(SourceError::Timeout(300)));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(block(source.range("up", 0, 60_000, 1000)), Err(SourceError::Timeout(300)));
}

#[test]
fn native_histograms_and_non_json_answers_are_response_errors() {
    let histogram = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"lat"},"histogram":[1700000000,{"count":"3","sum":"1.5","buckets":[[0,"0","1","3"]]}]}]}}"#;
    let (addr, _rx) = fake_prometheus("200 OK", "application/json", histogram);
    let source = PrometheusSource::new(&config(&format!("http://{addr}"))).expect("client");
    match block(source.instant("lat", now_ms())) {
        Err(SourceError::Response(m)) => assert!(m.contains("histogram_quantile") && m.contains(&addr.to_string()), "{m}"),
        other => panic!("expected a Response error, got {other:?}"),
    }
    match block(source.instant_keyed("lat", now_ms(), &["service".to_string()], &mut SubjectInterner::default())) {
        Err(SourceError::Response(m)) => assert!(m.contains("histogram_quantile") && m.contains(&addr.to_string()), "{m}"),
        other => panic!("expected a Response error, got {other:?}"),
    }

    let (addr, _rx) = fake_prometheus("502 Bad Gateway", "text/plain", "upstream down");
    let source = PrometheusSource::new(&config(&format!("http://{addr}"))).expect("client");
    match block(source.instant("up", now_ms())) {
        Err(SourceError::Response(m)) => assert!(m.contains("502"), "{m}"),
        other => panic!("expected a Response error, got {other:?}"),
    }
    match block(source.instant_keyed("up", now_ms(), &["service".to_string()], &mut SubjectInterner::default())) {
        Err(SourceError::Response(m)) => assert!(m.contains("502"), "{m}"),
        other => panic!("expected a Response error, got {other:?}"),
    }
}

#[test]
fn an_unreadable_ca_file_is_an_error_at_construction() {
    let mut cfg = config("https://127.0.0.1:1");
    cfg.ca_file = Some("/nonexistent/ca.pem".into());
    match PrometheusSource::new(&cfg) {
        Err(SourceError::Transport(m)) => assert!(m.contains("/nonexistent/ca.pem"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let mut cfg = config("https://127.0.0.1:1");
    cfg.insecure_skip_verify = true;
    assert!(PrometheusSource::new(&cfg).is_ok());
}

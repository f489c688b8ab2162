//! The HTTP ticket kinds (`zendesk`, `http_json`) against a loopback server that pretends to
//! be Zendesk's Search count API or a JSON endpoint: exact requests, counts, the 7-day median,
//! caching on the `at` clock, 429 back-off, bounded concurrency and clear errors.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use herald::config::daemon::{TicketKind, TicketSource};
use herald::engine::Subject;
use herald::source::{SourceError, TicketCounter, TicketCounts, TicketSourceClient};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// 2026-03-10T12:00:00Z
const AT: i64 = 1_773_144_000_000;

// ---------------------------------------------------------------------------
// A scriptable HTTP server on 127.0.0.1
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Request {
    /// Path and query string, as sent.
    target: String,
    /// Header names in lower case.
    headers: HashMap<String, String>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// A decoded query parameter.
    fn param(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| decode(v))
        })
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("percent escape"));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn json(body: impl Into<String>) -> Reply {
    Reply { status: 200, headers: vec![("Content-Type", "application/json".into())], body: body.into() }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Server {
    /// Serves each connection on its own thread; every reply is delayed by `delay` so that
    /// concurrent requests overlap.
    fn start(delay: Duration, handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, inf, maxf) = (requests.clone(), in_flight.clone(), max_in_flight.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (reqs, inf, maxf, handler) = (reqs.clone(), inf.clone(), maxf.clone(), handler.clone());
                thread::spawn(move || serve(stream, delay, &*handler, &reqs, &inf, &maxf));
            }
        });
        Server { addr, requests, max_in_flight }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// The request count once it has not changed for 300ms.
    fn settled_count(&self) -> usize {
        let mut last = self.count();
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = self.count();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

fn serve(stream: TcpStream, delay: Duration, handler: &Handler, reqs: &Mutex<Vec<Request>>, inf: &AtomicUsize, maxf: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let req = Request { target, headers };
    reqs.lock().expect("lock").push(req.clone());
    let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
    maxf.fetch_max(now, Ordering::SeqCst);
    thread::sleep(delay);
    let reply = handler(&req);
    inf.fetch_sub(1, Ordering::SeqCst);
    let mut out = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", reply.status, reply.body.len());
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.body);
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).expect("time").to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn service(s: &str) -> Subject {
    Subject::new([("service", s)])
}

fn labels() -> Vec<String> {
    vec!["service".to_string()]
}

fn source(kind: TicketKind) -> TicketSource {
    TicketSource { name: "support".into(), kind, window: Duration::from_secs(3600), poll_interval: Duration::from_secs(300), timeout: Duration::from_secs(5) }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

const ZENDESK_QUERY: &str = "type:ticket tags:{{ subject.service }} created>={{ start }} created<{{ end }}";

fn zendesk(url: &str) -> TicketSource {
    source(TicketKind::Zendesk { url: url.into(), query: ZENDESK_QUERY.into(), email: "ops@example.com".into(), token: "s3cret".into() })
}

/// Ticket counts per service for the window ending `k` days before the `at` it was built for.
fn table(at: i64, per_service: &[(&str, [f64; 8])]) -> HashMap<String, f64> {
    let mut t = HashMap::new();
    for (svc, days) in per_service {
        for (k, v) in days.iter().enumerate() {
            let end = at - k as i64 * DAY_MS;
            t.insert(format!("type:ticket tags:{svc} created>={} created<{}", rfc3339(end - HOUR_MS), rfc3339(end)), *v);
        }
    }
    t
}

fn client(cfg: &TicketSource) -> TicketSourceClient {
    TicketSourceClient::new(cfg, None).expect("ticket source")
}

// ---------------------------------------------------------------------------
// Zendesk
// ---------------------------------------------------------------------------

#[test]
fn zendesk_counts_baseline_requests_and_cache() {
    // checkout: today 40, previous days [4, 6, 5, 10, 3, 8, 7] → median 6.
    // search: today 2, previous days [1, 1, 2, 9, 3, 0, 4] → median 2.
    // billing (added later): today 1, previous [2, 2, 2, 1, 1, 1, 5] → median 2.
    let counts = [
        ("checkout", [40.0, 4.0, 6.0, 5.0, 10.0, 3.0, 8.0, 7.0]),
        ("search", [2.0, 1.0, 1.0, 2.0, 9.0, 3.0, 0.0, 4.0]),
        ("billing", [1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 5.0]),
    ];
    let mut known = table(AT, &counts);
    known.extend(table(AT + 60_000, &counts));
    let server = Server::start(Duration::from_millis(30), move |r| match known.get(&r.param("query").unwrap_or_default()) {
        Some(n) => json(format!(r#"{{"count": {n}}}"#)),
        None => Reply { status: 404, headers: vec![], body: format!("unexpected query {:?}", r.param("query")) },
    });
    let tickets = client(&zendesk(&server.url()));

    let c = block(tickets.counts(&[service("checkout"), service("search")], &labels(), AT, &mut Default::default())).expect("counts");
    assert_eq!(c.tickets.get(&service("checkout")), Some(&40.0));
    assert_eq!(c.baseline.get(&service("checkout")), Some(&6.0));
    assert_eq!(c.tickets.get(&service("search")), Some(&2.0));
    assert_eq!(c.baseline.get(&service("search")), Some(&2.0));
    assert_eq!(c.tickets.len(), 2);

    // Exactly 8 requests per subject: the window and the same window on each of 7 previous days.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 16);
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ops@example.com/token:s3cret"));
    for r in &reqs {
        assert_eq!(r.path(), "/api/v2/search/count.json", "{r:?}");
        assert_eq!(r.headers.get("authorization"), Some(&auth), "{r:?}");
    }
    let today = reqs.iter().filter_map(|r| r.param("query")).find(|q| q.contains("checkout") && q.contains("2026-03-10T11"));
    assert_eq!(today.as_deref(), Some("type:ticket tags:checkout created>=2026-03-10T11:00:00Z created<2026-03-10T12:00:00Z"));
    let raw = reqs.iter().find(|r| r.target.contains("checkout") && r.target.contains("2026-03-03T11")).expect("day 7 request");
    assert!(raw.target.starts_with("/api/v2/search/count.json?query=type%3Aticket+tags%3Acheckout+created%3E%3D2026-03-03T11%3A00%3A00Z"), "{}", raw.target);
    let max = server.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=4).contains(&max), "at most 4 requests in flight, and they do overlap: {max}");

    // Within poll_interval: cached, no request.
    let again = block(tickets.counts(&[service("search"), service("checkout")], &labels(), AT + 60_000, &mut Default::default())).expect("cached");
    assert_eq!(again, c);
    assert_eq!(server.count(), 16);

    // A new subject within poll_interval: only it is fetched.
    let more = block(tickets.counts(&[service("checkout"), service("search"), service("billing")], &labels(), AT + 60_000, &mut Default::default())).expect("new subject");
    assert_eq!(server.count(), 24);
    assert_eq!(more.tickets.get(&service("billing")), Some(&1.0));
    assert_eq!(more.baseline.get(&service("billing")), Some(&2.0));
    assert_eq!(more.tickets.get(&service("checkout")), Some(&40.0), "still the cached count");
    assert!(server.requests()[16..].iter().all(|r| r.param("query").is_some_and(|q| q.contains("tags:billing"))));
}

#[test]
fn zendesk_refetches_after_poll_interval() {
    let counts = [("checkout", [40.0, 4.0, 6.0, 5.0, 10.0, 3.0, 8.0, 7.0])];
    let mut known = table(AT, &counts);
    known.extend(table(AT + 300_000, &[("checkout", [41.0, 4.0, 6.0, 5.0, 10.0, 3.0, 8.0, 7.0])]));
    let server = Server::start(Duration::ZERO, move |r| match known.get(&r.param("query").unwrap_or_default()) {
        Some(n) => json(format!(r#"{{"count": {n}}}"#)),
        None => Reply { status: 404, headers: vec![], body: "unexpected query".into() },
    });
    let tickets = client(&zendesk(&server.url()));
    let subjects = [service("checkout")];
    let first = block(tickets.counts(&subjects, &labels(), AT, &mut Default::default())).expect("counts");
    assert_eq!(first.tickets[&service("checkout")], 40.0);
    block(tickets.counts(&subjects, &labels(), AT + 299_999, &mut Default::default())).expect("cached");
    assert_eq!(server.count(), 8);
    let later = block(tickets.counts(&subjects, &labels(), AT + 300_000, &mut Default::default())).expect("refetched");
    assert_eq!(server.count(), 16);
    assert_eq!(later.tickets[&service("checkout")], 41.0);
    assert_eq!(later.baseline[&service("checkout")], 6.0);
}

#[test]
fn zendesk_429_fails_the_poll_and_waits_for_retry_after() {
    let limited = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = limited.clone();
    let server = Server::start(Duration::ZERO, move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply { status: 429, headers: vec![("Retry-After", "120".into())], body: "rate limited".into() }
        } else {
            json(r#"{"count": 3}"#)
        }
    });
    let tickets = client(&zendesk(&server.url()));
    let subjects = [service("checkout")];

    match block(tickets.counts(&subjects, &labels(), AT, &mut Default::default())) {
        Err(SourceError::Response(m)) => assert!(m.contains("429") && m.contains(&rfc3339(AT + 120_000)), "{m}"),
        other => panic!("expected a 429 error, got {other:?}"),
    }
    // Requests aborted at the first 429 may still reach the server a moment later.
    let sent = server.settled_count();
    assert!((1..=4).contains(&sent), "the poll stops at the first 429: {sent}");

    // Before Retry-After has passed: an error, and no request at all.
    limited.store(false, Ordering::SeqCst);
    match block(tickets.counts(&subjects, &labels(), AT + 119_000, &mut Default::default())) {
        Err(SourceError::Response(m)) => assert!(m.contains("not polling again before"), "{m}"),
        other => panic!("expected the back-off error, got {other:?}"),
    }
    assert_eq!(server.count(), sent);

    // Afterwards it polls again.
    let c = block(tickets.counts(&subjects, &labels(), AT + 120_000, &mut Default::default())).expect("after back-off");
    assert_eq!(c.tickets[&service("checkout")], 3.0);
    assert_eq!(c.baseline[&service("checkout")], 3.0);
    assert_eq!(server.count(), sent + 8);
}

// ---------------------------------------------------------------------------
// http_json
// ---------------------------------------------------------------------------

fn http_json(url: String, pointer: &str) -> TicketSource {
    source(TicketKind::HttpJson { url, pointer: pointer.into(), headers: vec![("X-Api-Key".into(), "k1".into())] })
}

#[test]
fn http_json_reads_the_pointer_and_skips_missing_days() {
    // Day k is recognised by its end time; days 2, 4 and 6 have no value (null).
    let server = Server::start(Duration::ZERO, |r| {
        let to: i64 = r.param("to").and_then(|t| t.parse().ok()).unwrap_or_default();
        let k = (AT / 1000 - to) / 86_400;
        let svc = r.param("service").unwrap_or_default();
        let value = match (svc.as_str(), k) {
            ("checkout", 0) => "17".to_string(),
            ("checkout", 2 | 4 | 6) => "null".to_string(),
            // days 1, 3, 5, 7: 9, 1, 4, 3 → median (3 + 4) / 2
            ("checkout", 1) => "9".into(),
            ("checkout", 3) => "1".into(),
            ("checkout", 5) => "\"4\"".into(),
            ("checkout", 7) => "3".into(),
            // search has no data at all
            _ => "null".into(),
        };
        json(format!(r#"{{"data": {{"count": {value}}}}}"#))
    });
    let url = format!("{}/tickets?service={{{{ subject.service }}}}&from={{{{ start_unix }}}}&to={{{{ end_unix }}}}", server.url());
    let tickets = client(&http_json(url, "/data/count"));
    let c = block(tickets.counts(&[service("checkout"), service("search")], &labels(), AT, &mut Default::default())).expect("counts");
    assert_eq!(
        c,
        TicketCounts { tickets: std::sync::Arc::new([(service("checkout"), 17.0)].into_iter().collect()), baseline: std::sync::Arc::new([(service("checkout"), 3.5)].into_iter().collect()) }
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 16);
    let first = reqs.iter().find(|r| r.param("service").as_deref() == Some("checkout") && r.param("to") == Some((AT / 1000).to_string())).expect("today");
    assert_eq!(first.target, format!("/tickets?service=checkout&from={}&to={}", (AT - HOUR_MS) / 1000, AT / 1000));
    assert!(reqs.iter().all(|r| r.headers.get("x-api-key").map(String::as_str) == Some("k1")));
}

#[test]
fn http_json_failures_are_clear_errors_and_do_not_stick() {
    let mode = Arc::new(Mutex::new("500"));
    let m = mode.clone();
    let server = Server::start(Duration::ZERO, move |_| match *m.lock().expect("lock") {
        "500" => Reply { status: 500, headers: vec![], body: "database on fire".into() },
        "invalid" => json("{not json"),
        "nopointer" => json(r#"{"data": {}}"#),
        _ => json(r#"{"data": {"count": 5}}"#),
    });
    let tickets = client(&http_json(format!("{}/count?s={{{{ subject.service }}}}&key=secret", server.url()), "/data/count"));
    let subjects = [service("checkout")];
    let err = |at| match block(tickets.counts(&subjects, &labels(), at, &mut Default::default())) {
        Err(SourceError::Response(m)) => m,
        other => panic!("expected a Response error, got {other:?}"),
    };

    let m = err(AT);
    assert!(m.contains("HTTP 500") && m.contains("database on fire") && m.contains("support"), "{m}");
    assert!(!m.contains("secret"), "the query string may carry credentials: {m}");
    *mode.lock().expect("lock") = "invalid";
    assert!(err(AT).contains("invalid JSON"));
    *mode.lock().expect("lock") = "nopointer";
    let m = err(AT);
    assert!(m.contains("/data/count"), "{m}");

    // A failure is not cached: the next call (same `at`) polls again and succeeds.
    *mode.lock().expect("lock") = "ok";
    let c = block(tickets.counts(&subjects, &labels(), AT, &mut Default::default())).expect("recovered");
    assert_eq!(c.tickets[&service("checkout")], 5.0);
    assert_eq!(c.baseline[&service("checkout")], 5.0);
}

#[test]
fn unreachable_and_slow_endpoints_are_transport_and_timeout_errors() {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let tickets = client(&http_json(format!("http://127.0.0.1:{port}/count"), "/count"));
    match block(tickets.counts(&[service("checkout")], &labels(), AT, &mut Default::default())) {
        Err(SourceError::Transport(m)) => assert!(m.contains(&format!("127.0.0.1:{port}/count")), "{m}"),
        other => panic!("expected a Transport error, got {other:?}"),
    }

    let slow = Server::start(Duration::from_secs(3), |_| json(r#"{"count": 1}"#));
    let mut cfg = http_json(format!("{}/count", slow.url()), "/count");
    cfg.timeout = Duration::from_millis(200);
    let tickets = client(&cfg);
    assert_eq!(block(tickets.counts(&[service("checkout")], &labels(), AT, &mut Default::default())), Err(SourceError::Timeout(200)));
}

#[test]
fn a_template_error_is_reported_before_any_request() {
    let server = Server::start(Duration::ZERO, |_| json(r#"{"count": 1}"#));
    let tickets = client(&http_json(format!("{}/count?team={{{{ subject.team }}}}", server.url()), "/count"));
    match block(tickets.counts(&[service("checkout")], &labels(), AT, &mut Default::default())) {
        Err(SourceError::Query(m)) => assert!(m.contains("url template") && m.contains("service=\"checkout\""), "{m}"),
        other => panic!("expected a template error, got {other:?}"),
    }
    assert_eq!(server.count(), 0);
    assert!(matches!(
        TicketSourceClient::<herald::source::PrometheusSource>::new(&http_json("{{ oops".into(), "/count"), None),
        Err(SourceError::Query(_))
    ));
}

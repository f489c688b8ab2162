//! Herald against VictoriaMetrics single-node (Debian's `victoria-metrics` package) as its
//! query backend, the way large fleets run it: VictoriaMetrics scrapes a service fleet, two
//! Herald replicas sharded with `shard: {index, total: 2}` query it with the rule pack's signal
//! queries (`rate` over request counters, customer gauges), and a real breach becomes exactly
//! one incident and one page per breaching service, on the replica that owns the service.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::herald::engine::Subject;
use ::herald::shard::shard_of;
use herald::{free_port, Daemon};
use prometheus::Exporter;
use receiver::Receiver;

/// A running `victoria-metrics` single-node, killed on drop.
struct VictoriaMetrics {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    /// The binary: `$HERALD_VICTORIA_METRICS`, else `victoria-metrics` from Debian's package.
    fn bin() -> PathBuf {
        let bin = std::env::var_os("HERALD_VICTORIA_METRICS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/victoria-metrics"));
        assert!(
            bin.is_file(),
            "{} not found: install Debian's victoria-metrics package (`apt-get install -y victoria-metrics`; .ci/run does) or set HERALD_VICTORIA_METRICS",
            bin.display()
        );
        bin
    }

    /// Starts it on 127.0.0.1 with a temporary storage dir, scraping `targets` every second.
    fn start(targets: &[String]) -> VictoriaMetrics {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        std::fs::write(dir.path().join("scrape.yaml"), format!("scrape_configs:\n  - job_name: fleet\n    scrape_interval: 1s\n    static_configs: [{{targets: [{list}]}}]\n")).unwrap();
        let log = std::fs::File::create(dir.path().join("vm.log")).unwrap();
        let child = Command::new(Self::bin())
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .arg(format!("-promscrape.config={}", dir.path().join("scrape.yaml").display()))
            // Queries at "now" see samples as soon as they are scraped (the default hides 30s).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-retentionPeriod=1d")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let vm = VictoriaMetrics { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while prometheus::http_get(&format!("{}/health", vm.url())).map(|(s, _)| s) != Ok(200) {
            assert!(Instant::now() < deadline, "victoria-metrics not healthy within 30s:\n{}", vm.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        vm
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vm.log")).unwrap_or_default()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SLI: &str = r#"sum by (service) (rate(http_requests_total{code!~"5.."}[30s])) / sum by (service) (rate(http_requests_total[30s]))"#;

const SERVICES: [&str; 6] = ["checkout", "search", "reports", "billing", "auth", "cart"];
const BREACHING: [&str; 3] = ["checkout", "billing", "cart"];

fn rules() -> String {
    format!(
        r#"
groups:
  - name: fleet
    interval: 1s
    subject: [service]
    signals:
      sli: {{ query: '{SLI}' }}
      objective: {{ value: 0.999 }}
      affected_ratio: {{ query: 'sum by (service) (customers_with_errors) / sum by (service) (customers_active)' }}
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        for: 2s
        resolve_after: 1h
        action: activate_comms_lead
        severity: critical
        notify: [pager]
"#
    )
}

/// The demo service's traffic: 50 requests per tick per service, 5% failing for the breaching
/// ones (and 12% of their customers affected), 0.02% elsewhere.
fn drive_traffic(exporter: Arc<Exporter>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut totals: BTreeMap<&str, (f64, f64)> = SERVICES.iter().map(|s| (*s, (0.0, 0.0))).collect();
        while !stop.load(Ordering::Relaxed) {
            for (svc, (ok, err)) in totals.iter_mut() {
                let breaching = BREACHING.contains(svc);
                let e = if breaching { 0.05 } else { 0.0002 };
                *ok += 50.0 * (1.0 - e);
                *err += 50.0 * e;
                exporter.set("http_requests_total", &[("service", svc), ("code", "200")], *ok);
                exporter.set("http_requests_total", &[("service", svc), ("code", "500")], *err);
                exporter.set("customers_active", &[("service", svc)], 2000.0);
                exporter.set("customers_with_errors", &[("service", svc)], if breaching { 240.0 } else { 1.0 });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

fn open_incidents(d: &Daemon) -> Vec<String> {
    let v = d.get("/api/v1/incidents?open=true").json();
    let mut out: Vec<String> = v["incidents"].as_array().unwrap().iter().map(|i| i["subject"]["service"].as_str().unwrap().to_string()).collect();
    out.sort();
    out
}

#[test]
fn two_sharded_replicas_on_victoriametrics_turn_a_real_breach_into_one_incident_per_service() {
    let owner = |svc: &str| shard_of(&Subject::new([("service", svc)]), 2);
    // The fleet is split across both shards, and each has a breaching service.
    assert!((0..2).all(|s| BREACHING.iter().any(|b| owner(b) == s)), "{:?}", BREACHING.map(owner));

    let exporter = Arc::new(Exporter::start());
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = drive_traffic(exporter.clone(), stop.clone());
    let vm = VictoriaMetrics::start(&[exporter.addr().to_string()]);
    // VictoriaMetrics answers the rule pack's queries through its Prometheus API.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = prometheus::try_query_instant(&vm.url(), SLI, None).unwrap_or_default();
        if rows.len() == SERVICES.len() {
            let mut breaching: Vec<&str> = rows.iter().filter(|(_, v)| *v < 0.999).map(|(l, _)| l["service"].as_str()).collect();
            breaching.sort_unstable();
            let mut expected = BREACHING;
            expected.sort_unstable();
            if breaching == expected {
                break;
            }
        }
        assert!(Instant::now() < deadline, "VictoriaMetrics never answered the SLI query for every service: {rows:?}\n{}", vm.log());
        std::thread::sleep(Duration::from_millis(500));
    }

    let rx = Receiver::start();
    let mut sites = Vec::new();
    let mut daemons = Vec::new();
    for index in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("rules.yaml"), rules()).unwrap();
        let cfg = format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             prometheus: {{url: '{vm}', timeout: 2s}}\n\
             receivers:\n  - {{name: pager, type: webhook, url: '{rx}', timeout: 2s}}\n\
             notification: {{group_wait: 0s}}\n\
             shard: {{index: {index}, total: 2}}\n\
             rule_files: [rules.yaml]\n",
            vm = vm.url(),
            rx = rx.url()
        );
        std::fs::write(dir.path().join("herald.yaml"), cfg).unwrap();
        daemons.push(Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald.log"), &[]));
        sites.push(dir);
    }

    for (index, d) in daemons.iter().enumerate() {
        let mut mine: Vec<String> = BREACHING.iter().filter(|b| owner(b) == index as u32).map(|s| s.to_string()).collect();
        mine.sort();
        d.eventually(&format!("shard {index} to open incidents for {mine:?}"), Duration::from_secs(30), || open_incidents(d) == mine);
    }
    let pages = rx.wait_until(Duration::from_secs(10), |r| r.len() >= BREACHING.len());
    // Held a few more evaluations: nothing more is opened or paged, on either replica.
    std::thread::sleep(Duration::from_secs(3));
    let mut paged: Vec<String> = rx.received().iter().map(|r| r.json()["subject"]["service"].as_str().unwrap().to_string()).collect();
    paged.sort();
    let mut expected: Vec<String> = BREACHING.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(paged, expected, "one page per breaching service across both replicas ({} pages)", pages.len());
    for (index, d) in daemons.iter().enumerate() {
        let open = open_incidents(d);
        assert!(open.iter().all(|s| owner(s) == index as u32), "shard {index} opened {open:?}");
        // Each replica sends the same one query per signal and keeps only its own subjects.
        let m = d.metrics();
        assert!(m.contains(r#"herald_signal_series{group="fleet",signal="sli"} 6"#), "{m}");
        assert!(m.lines().any(|l| l.starts_with("herald_datasource_up") && l.ends_with(" 1")), "{m}");
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
}

//! Delivery worker against real HTTP receivers on 127.0.0.1: retries, signatures, permanent
//! errors, Retry-After, timeouts, dry-run, receiver formats, noise control, crash recovery.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use herald::config::{load_config, Action, Config, Severity};
use herald::shared::{now_ms, RunOptions, Shared};
use herald::engine::{Decision, DecisionStatus, IncidentRef, Instance, Phase, State, Subject, Ts};
use herald::notify::plan::Planner;
use herald::notify::worker::{DeliveryTuning, Worker};
use herald::notify::{Notification, Templates, WebhookSecret};
use herald::store::{Commit, OutboxEntry, OutboxState, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------- test receiver

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Req {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    delay: Duration,
}

/// An answer with a `Retry-After` header.
fn reply_retry_after(status: u16, retry_after: &str) -> Reply {
    Reply {
        status,
        retry_after: Some(retry_after.into()),
        delay: Duration::ZERO,
    }
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        retry_after: None,
        delay: Duration::ZERO,
    }
}

/// Records requests and answers a scripted sequence of replies (then 200).
#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    async fn start(script: Vec<Reply>) -> Server {
        Server::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    fn start_on(listener: TcpListener, script: Vec<Reply>) -> Server {
        let addr = listener.local_addr().unwrap();
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let r2 = reqs.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let reqs = r2.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 8192];
                    let head_end = loop {
                        let n = match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let path = lines
                        .next()
                        .unwrap_or_default()
                        .split(' ')
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let headers: BTreeMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    let rep = script.lock().unwrap().pop_front().unwrap_or(reply(200));
                    reqs.lock().unwrap().push(Req {
                        path,
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    tokio::time::sleep(rep.delay).await;
                    let mut resp = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: 2\r\nConnection: close\r\n",
                        rep.status
                    );
                    if let Some(ra) = rep.retry_after {
                        resp.push_str(&format!("Retry-After: {ra}\r\n"));
                    }
                    resp.push_str("\r\nok");
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Server { addr, reqs }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- harness

fn metrics() -> &'static PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.01, 0.1, 1.0, 10.0, 60.0])
            .expect("buckets")
            .install_recorder()
            .expect("install metrics recorder")
    })
}

/// The value of `herald_notifications_total{receiver,outcome}` (0 when absent).
fn notifications_total(receiver: &str, outcome: &str) -> f64 {
    let text = metrics().render();
    text.lines()
        .filter(|l| l.starts_with("herald_notifications_total{"))
        .filter(|l| {
            l.contains(&format!("receiver=\"{receiver}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const RULES: &str = r#"
groups:
  - name: comms
    interval: 30s
    subject: [service]
    signals:
      sli: { value: 0.5 }
    rules:
      - name: Page
        when: sli < 0.9
        action: activate_comms_lead
        severity: critical
        notify: [RECEIVERS]
        annotations:
          summary: "{{ subject.service }}: customers are affected"
      - name: Prompt
        when: sli < 0.9
        action: suggest_update
        severity: warning
        notify: [RECEIVERS]
      - name: Prompt2
        when: sli < 0.9
        action: internal_only
        severity: info
        notify: [RECEIVERS]
"#;

struct Env {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    shared: Arc<Shared>,
}

fn fast_tuning() -> DeliveryTuning {
    DeliveryTuning {
        backoff_base: Duration::from_millis(30),
        backoff_cap: Duration::from_millis(150),
        repeat_every: Duration::from_millis(100),
        lease_margin: Duration::from_millis(500),
        max_idle: Duration::from_millis(200),
        ..Default::default()
    }
}

fn write_config(dir: &Path, receivers: &str, names: &[&str], notification: &str) -> Config {
    write_config_with(dir, receivers, names, notification, "  external_url: http://herald.test\n")
}

/// `global` holds extra `global:` lines (it must give `external_url`).
fn write_config_with(dir: &Path, receivers: &str, names: &[&str], notification: &str, global: &str) -> Config {
    metrics(); // installed before any worker records
    std::fs::write(
        dir.join("rules.yaml"),
        RULES.replace("RECEIVERS", &names.join(", ")),
    )
    .unwrap();
    let yaml = format!(
        "global:\n  evaluation_interval: 30s\n  state_dir: {}\n{global}receivers:\n{receivers}\nnotification:\n{notification}\nrule_files: [rules.yaml]\n",
        dir.join("data").display()
    );
    std::fs::write(dir.join("herald.yaml"), yaml).unwrap();
    load_config(&dir.join("herald.yaml"), &|_| None)
        .map_err(|d| format!("{d:?}"))
        .expect("valid test config")
        .0
}

fn env(receivers: &str, names: &[&str], notification: &str, dry_run: bool) -> Env {
    env_with(receivers, names, notification, dry_run, "  external_url: http://herald.test\n")
}

/// [`env`] with extra `global:` lines (which must give `external_url`).
fn env_with(receivers: &str, names: &[&str], notification: &str, dry_run: bool, global: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let config = write_config_with(&dir, receivers, names, notification, global);
    let store = Store::open_dir(&config.global.state_dir).unwrap();
    let shared = Arc::new(Shared::new(config, store, RunOptions { dry_run, ..Default::default() }).unwrap());
    Env {
        _dir: tmp,
        dir,
        shared,
    }
}

fn decision(
    rule: &str,
    status: DecisionStatus,
    service: &str,
    incident: Option<(&str, Ts)>,
    notify: &[&str],
) -> Decision {
    let (action, severity) = match rule {
        "Page" => (Action::ActivateCommsLead, Severity::Critical),
        "Prompt" => (Action::SuggestUpdate, Severity::Warning),
        "Prompt2" => (Action::InternalOnly, Severity::Info),
        _ => (Action::Notify, Severity::Info),
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "summary".to_string(),
        format!("{service}: {rule} says customers are affected"),
    );
    Decision {
        at: now_ms(),
        rule: rule.into(),
        action,
        severity,
        subject: Subject::new([("service", service)]),
        status,
        starts_at: 1_700_000_000_000,
        values: BTreeMap::from([("sli".to_string(), 0.5)]),
        labels: BTreeMap::new(),
        annotations,
        incident: incident.map(|(id, opened_at)| IncidentRef {
            id: id.into(),
            status: herald::engine::Status::Investigating,
            opened_at,
        }),
        notify: notify.iter().map(|s| s.to_string()).collect(),
    }
}

/// Plans and commits decisions like an evaluation does; returns the entries.
fn enqueue(shared: &Shared, decisions: &[Decision]) -> Vec<OutboxEntry> {
    let config = shared.config();
    let planner = shared.planner.read().unwrap().clone();
    let mut core = shared.core.lock().unwrap();
    let core = &mut *core;
    let entries = planner.plan(
        decisions,
        &config,
        &core.store,
        now_ms(),
        shared.options.dry_run,
    );
    core.store
        .commit(
            &core.state,
            &Commit {
                outbox: entries.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    drop(planner);
    shared.outbox_wake.notify_one();
    entries
}

fn entry(shared: &Shared, id: &str) -> OutboxEntry {
    let core = shared.core.lock().unwrap();
    core.store
        .outbox(None, 10_000)
        .unwrap()
        .into_iter()
        .find(|e| e.id == id)
        .expect("entry")
}

fn entries(shared: &Shared) -> Vec<OutboxEntry> {
    shared
        .core
        .lock()
        .unwrap()
        .store
        .outbox(None, 10_000)
        .unwrap()
}

fn start(
    shared: &Arc<Shared>,
    tuning: DeliveryTuning,
) -> (Arc<Worker>, tokio::task::JoinHandle<()>) {
    let w = Arc::new(Worker::new(shared.clone(), tuning).unwrap());
    let h = tokio::spawn(w.clone().run());
    (w, h)
}

async fn stop(shared: &Shared, h: tokio::task::JoinHandle<()>) {
    shared.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("worker stops")
        .unwrap();
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hook_yaml(name: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    type: webhook\n    url: {url}\n    timeout: 2s\n{extra}")
}

/// One webhook receiver `name` answering `script`, and one page for it planned and committed:
/// the setup most single-receiver delivery tests share.
async fn one_page(name: &str, script: Vec<Reply>) -> (Server, Env, OutboxEntry) {
    let srv = Server::start(script).await;
    let e = env(&hook_yaml(name, &srv.url("/hook"), ""), &[name], "  group_wait: 1s", false);
    let planned = enqueue(&e.shared, &[decision("Page", DecisionStatus::Firing, "checkout", None, &[name])]);
    let page = planned.into_iter().next().expect("one entry");
    (srv, e, page)
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn page_retried_after_500s_arrives_once_signed_with_one_id() {
    let srv = Server::start(vec![reply(500), reply(503)]).await;
    let e = env(
        &hook_yaml(
            "hook-retry",
            &srv.url("/hook"),
            &format!("    secret: {SECRET}\n"),
        ),
        &["hook-retry"],
        "  group_wait: 1s",
        false,
    );
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            Some(("INC-1", 1_699_999_000_000)),
            &["hook-retry"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 3, "two failures then one success");
    let secret = WebhookSecret::new(SECRET).unwrap();
    for r in &reqs {
        assert_eq!(r.path, "/hook");
        assert_eq!(
            r.headers["webhook-id"], planned[0].id,
            "the same webhook-id on every try"
        );
        assert_eq!(r.headers["content-type"], "application/json");
        let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
        herald::notify::verify(
            &secret,
            &r.headers["webhook-id"],
            ts,
            &r.body,
            &r.headers["webhook-signature"],
            now_ms() / 1000,
            300,
        )
        .expect("signature verifies");
        let body = r.json();
        assert_eq!(body["version"], "1");
        assert_eq!(body["id"], planned[0].id.as_str());
        assert_eq!(body["dedup_key"], "INC-1/Page");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["action"], "activate_comms_lead");
    }
    let done = entry(&e.shared, &planned[0].id);
    assert_eq!(done.attempts, 3);
    assert!(done.delivered_at.is_some());
    assert_eq!(notifications_total("hook-retry", "retried"), 2.0);
    assert_eq!(notifications_total("hook-retry", "sent"), 1.0);
    assert!(
        metrics()
            .render()
            .contains("herald_notification_delivery_seconds_bucket{receiver=\"hook-retry\""),
        "delivery latency is a histogram"
    );
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_page_once_it_is_up() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let e = env(
        &hook_yaml("hook-down", &format!("http://{addr}/hook"), ""),
        &["hook-down"],
        "  group_wait: 1s",
        false,
    );
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["hook-down"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("a failed try", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).attempts >= 2
    })
    .await;
    let failed = entry(&e.shared, &planned[0].id);
    assert_eq!(failed.state, OutboxState::Pending);
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("connection"),
        "{:?}",
        failed.last_error
    );
    let srv = Server::start_on(TcpListener::bind(addr).await.unwrap(), vec![]);
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;
    assert_eq!(srv.requests().len(), 1);
    assert_eq!(srv.requests()[0].json()["id"], planned[0].id.as_str());
}

#[tokio::test]
async fn gone_410_stops_retrying_and_counts_a_failure() {
    let (srv, e, page) = one_page("hook-gone", vec![reply(410)]).await;
    let planned = [page];
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("failure", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Failed
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&e.shared, h).await;
    assert_eq!(srv.requests().len(), 1, "no retry after 410");
    let failed = entry(&e.shared, &planned[0].id);
    assert!(
        failed.last_error.as_deref().unwrap().contains("410"),
        "{:?}",
        failed.last_error
    );
    assert_eq!(notifications_total("hook-gone", "failed"), 1.0);
    assert_eq!(notifications_total("hook-gone", "sent"), 0.0);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (srv, e, page) = one_page("hook-429", vec![reply_retry_after(429, "2")]).await;
    let planned = [page];
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_millis(1950),
        "waited only {waited:?}"
    );
}

#[tokio::test]
async fn a_huge_retry_after_is_capped_not_a_tight_loop() {
    // u64::MAX seconds used to overflow into a negative delay: the entry was due again at once.
    let (srv, e, page) = one_page("hook-huge-ra", vec![reply_retry_after(503, "18446744073709551615")]).await;
    let planned = [page];
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("the first try to be recorded", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).attempts == 1
    })
    .await;
    // Several worker passes (max_idle is 200ms) must not try again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop(&e.shared, h).await;
    assert_eq!(srv.requests().len(), 1, "no tight retry loop");
    let pending = entry(&e.shared, &planned[0].id);
    assert_eq!(pending.state, OutboxState::Pending);
    let wait = pending.not_before - now_ms();
    assert!(
        (50 * 60_000..=60 * 60_000).contains(&wait),
        "next try in {wait} ms: capped at one hour"
    );
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let srv = Server::start(vec![Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_secs(2),
    }])
    .await;
    let e = env(
        &format!(
            "  - name: hook-slow\n    type: webhook\n    url: {}\n    timeout: 300ms\n",
            srv.url("/slow")
        ),
        &["hook-slow"],
        "  group_wait: 1s",
        false,
    );
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["hook-slow"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;
    let done = entry(&e.shared, &planned[0].id);
    assert_eq!(srv.requests().len(), 2);
    assert_eq!(done.attempts, 2);
    assert_eq!(notifications_total("hook-slow", "retried"), 1.0);
}

#[tokio::test]
async fn dry_run_records_instead_of_sending_except_to_dry_run_targets() {
    let normal = Server::start(vec![]).await;
    let target = Server::start(vec![]).await;
    let receivers = format!(
        "{}  - name: dry-chat\n    type: slack\n    url: {}\n    dry_run_target: true\n",
        hook_yaml("dry-hook", &normal.url("/hook"), ""),
        target.url("/slack")
    );
    let e = env(
        &receivers,
        &["dry-hook", "dry-chat"],
        "  group_wait: 1s",
        true,
    );
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            Some(("INC-7", 1_699_999_000_000)),
            &["dry-hook", "dry-chat"],
        )],
    );
    let (w, h) = start(&e.shared, fast_tuning());
    wait_for("both handled", Duration::from_secs(10), || {
        planned
            .iter()
            .all(|p| entry(&e.shared, &p.id).state != OutboxState::Pending)
    })
    .await;
    stop(&e.shared, h).await;
    assert!(
        normal.requests().is_empty(),
        "a normal receiver gets nothing in dry-run"
    );
    let recorded = w.recorder().requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].receiver, "dry-hook");
    assert_eq!(recorded[0].json().unwrap()["dry_run"], true);
    let hook_entry = planned.iter().find(|p| p.receiver == "dry-hook").unwrap();
    assert_eq!(entry(&e.shared, &hook_entry.id).state, OutboxState::DryRun);
    assert_eq!(notifications_total("dry-hook", "dry_run"), 1.0);
    assert_eq!(notifications_total("dry-hook", "sent"), 0.0);

    let got = target.requests();
    assert_eq!(got.len(), 1, "the dry-run target gets the message");
    let body = got[0].json();
    assert!(
        body["text"].as_str().unwrap().starts_with("[DRY RUN] "),
        "{body}"
    );
    assert!(body["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap()
        .starts_with("[DRY RUN] "));
    assert_eq!(notifications_total("dry-chat", "sent"), 1.0);
}

fn stored_notification(shared: &Shared, id: &str) -> Notification {
    serde_json::from_str(&entry(shared, id).payload).unwrap()
}

#[tokio::test]
async fn pagerduty_slack_and_teams_bodies_match_the_documented_formats() {
    let pd = Server::start(vec![reply(202)]).await;
    let slack = Server::start(vec![]).await;
    let teams = Server::start(vec![]).await;
    let receivers = format!(
        "  - name: fmt-pd\n    type: pagerduty\n    url: {}\n    routing_key: R0UTINGKEY\n  - name: fmt-slack\n    type: slack\n    url: {}\n  - name: fmt-teams\n    type: teams\n    url: {}\n",
        pd.url("/v2/enqueue"),
        slack.url("/services/T/B/X"),
        teams.url("/workflows/run")
    );
    let names = ["fmt-pd", "fmt-slack", "fmt-teams"];
    let e = env(&receivers, &names, "  group_wait: 1s", false);
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            Some(("INC-3", 1_699_999_000_000)),
            &names,
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("deliveries", Duration::from_secs(10), || {
        planned
            .iter()
            .all(|p| entry(&e.shared, &p.id).state == OutboxState::Sent)
    })
    .await;

    let id_of = |r: &str| planned.iter().find(|p| p.receiver == r).unwrap().id.clone();
    let n = stored_notification(&e.shared, &id_of("fmt-pd"));
    let text = Templates::new().render(&n).unwrap();

    let pd_body = pd.requests()[0].json();
    assert_eq!(pd.requests()[0].path, "/v2/enqueue");
    assert_eq!(
        pd_body,
        herald::notify::pagerduty_event(&n, "R0UTINGKEY", &text.title)
    );
    assert_eq!(pd_body["routing_key"], "R0UTINGKEY");
    assert_eq!(pd_body["event_action"], "trigger");
    assert_eq!(pd_body["dedup_key"], "INC-3/Page");
    assert_eq!(
        pd_body["payload"]["summary"],
        "checkout: Page says customers are affected"
    );
    assert_eq!(pd_body["payload"]["severity"], "critical");
    assert_eq!(pd_body["payload"]["source"], "service=checkout");

    let n = stored_notification(&e.shared, &id_of("fmt-slack"));
    let slack_body = slack.requests()[0].json();
    assert_eq!(slack_body, herald::notify::slack_message(&n, &text));
    assert_eq!(
        slack_body["text"],
        "checkout: Page says customers are affected"
    );
    assert_eq!(slack_body["blocks"][0]["type"], "header");

    let n = stored_notification(&e.shared, &id_of("fmt-teams"));
    let teams_body = teams.requests()[0].json();
    assert_eq!(teams_body, herald::notify::teams_message(&n, &text));
    assert_eq!(teams_body["type"], "message");
    assert_eq!(
        teams_body["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(
        teams_body["attachments"][0]["content"]["type"],
        "AdaptiveCard"
    );

    // Resolution: PagerDuty gets a resolve with the same dedup key.
    let resolved = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Resolved,
            "checkout",
            Some(("INC-3", 1_699_999_000_000)),
            &["fmt-pd"],
        )],
    );
    wait_for("resolve", Duration::from_secs(10), || {
        entry(&e.shared, &resolved[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;
    let body = pd.requests()[1].json();
    assert_eq!(
        body,
        serde_json::json!({"routing_key": "R0UTINGKEY", "event_action": "resolve", "dedup_key": "INC-3/Page"})
    );
}

#[tokio::test]
async fn alertmanager_goes_to_every_peer_and_one_acceptance_is_enough() {
    let up = Server::start(vec![]).await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = probe.local_addr().unwrap();
    drop(probe);
    let receivers = format!(
        "  - name: am\n    type: alertmanager\n    urls: [{}, http://{down}]\n",
        up.url("")
    );
    let e = env(&receivers, &["am"], "  group_wait: 1s", false);
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["am"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/api/v2/alerts");
    let alert = &reqs[0].json()[0];
    assert_eq!(alert["labels"]["alertname"], "Page");
    assert_eq!(alert["labels"]["service"], "checkout");
    let ends = chrono::DateTime::parse_from_rfc3339(alert["endsAt"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let validity = ends - now_ms();
    assert!(
        (230_000..=241_000).contains(&validity),
        "endsAt = now + 4 × max(30s, 1m) = now + 4m, got {validity}ms"
    );
    let done = entry(&e.shared, &planned[0].id);
    assert!(
        done.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("peer 2"),
        "per-peer error recorded: {:?}",
        done.last_error
    );
}

#[tokio::test]
async fn chat_prompts_are_grouped_and_min_interval_defers_later_prompts() {
    let slack = Server::start(vec![]).await;
    let receivers = format!(
        "  - name: grp-slack\n    type: slack\n    url: {}\n",
        slack.url("/s")
    );
    let e = env(
        &receivers,
        &["grp-slack"],
        "  group_wait: 300ms\n  min_interval: 1h",
        false,
    );
    let inc = Some(("INC-9", 1_699_999_000_000));
    // Two prompts within group_wait (one now, one a bit later): one message.
    let first = enqueue(
        &e.shared,
        &[decision(
            "Prompt2",
            DecisionStatus::Firing,
            "checkout",
            inc,
            &["grp-slack"],
        )],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = enqueue(
        &e.shared,
        &[decision(
            "Prompt",
            DecisionStatus::Firing,
            "checkout",
            inc,
            &["grp-slack"],
        )],
    );
    assert_eq!(
        second[0].not_before, first[0].not_before,
        "the later prompt joins the waiting group"
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("group delivery", Duration::from_secs(10), || {
        [&first[0], &second[0]]
            .iter()
            .all(|p| entry(&e.shared, &p.id).state == OutboxState::Sent)
    })
    .await;
    assert_eq!(slack.requests().len(), 1, "grouped into one message");
    let body = slack.requests()[0].json();
    let text = body["blocks"][1]["text"]["text"].as_str().unwrap();
    let warn = text
        .find("Prompt says")
        .expect("the suggest_update decision is listed");
    let info = text
        .find("Prompt2 says")
        .expect("the internal_only decision is listed");
    assert!(warn < info, "the more severe decision comes first: {text}");
    assert!(body["text"].as_str().unwrap().contains("(+1 more)"));

    // A later prompt for the same incident within min_interval waits for it to end…
    let third = enqueue(
        &e.shared,
        &[decision(
            "Prompt",
            DecisionStatus::Firing,
            "checkout",
            inc,
            &["grp-slack"],
        )],
    );
    wait_for("deferral", Duration::from_secs(10), || {
        entry(&e.shared, &third[0].id).last_error.as_deref() == Some("deferred by min_interval")
    })
    .await;
    let deferred = entry(&e.shared, &third[0].id);
    let sent_at = entry(&e.shared, &first[0].id).delivered_at.unwrap();
    assert_eq!(deferred.state, OutboxState::Pending, "deferred, not dropped");
    assert_eq!(deferred.not_before, sent_at + 3_600_000, "until min_interval has passed");
    // …but a page, a notify (telemetry warning) and a resolution are not.
    let page = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            inc,
            &["grp-slack"],
        )],
    );
    let gap = enqueue(
        &e.shared,
        &[decision(
            "TelemetryGap",
            DecisionStatus::Firing,
            "checkout",
            inc,
            &["grp-slack"],
        )],
    );
    assert_eq!(gap[0].not_before, gap[0].created_at, "a notify is not delayed by group_wait");
    let res = enqueue(
        &e.shared,
        &[decision(
            "Prompt",
            DecisionStatus::Resolved,
            "checkout",
            inc,
            &["grp-slack"],
        )],
    );
    wait_for("page, notify and resolution", Duration::from_secs(10), || {
        [&page[0].id, &gap[0].id, &res[0].id].iter().all(|id| entry(&e.shared, id).state == OutboxState::Sent)
    })
    .await;
    stop(&e.shared, h).await;
    assert_eq!(slack.requests().len(), 4);
    assert_eq!(entry(&e.shared, &third[0].id).state, OutboxState::Pending);
}

/// A deferred prompt is sent when min_interval ends if its rule still fires, and dropped
/// (recorded `suppressed`) if it no longer does.
#[tokio::test]
async fn a_deferred_prompt_is_sent_only_if_its_rule_still_fires() {
    let slack = Server::start(vec![]).await;
    let receivers = format!("  - name: defer-slack\n    type: slack\n    url: {}\n", slack.url("/s"));
    let e = env(&receivers, &["defer-slack"], "  group_wait: 0s\n  min_interval: 2s", false);
    let inc = Some(("INC-7", 1_699_999_000_000));
    let subject = herald::engine::Subject::new([("service", "checkout")]);
    let firing = herald::engine::Instance { phase: herald::engine::Phase::Firing, active_at: 0, fired_at: Some(0), keep_firing_since: None, last_eval: 0 };
    e.shared.core.lock().unwrap().state.instances.entry("Prompt".into()).or_default().insert(subject, firing);
    let (_w, h) = start(&e.shared, fast_tuning());
    let page = enqueue(&e.shared, &[decision("Page", DecisionStatus::Firing, "checkout", inc, &["defer-slack"])]);
    wait_for("page", Duration::from_secs(10), || entry(&e.shared, &page[0].id).state == OutboxState::Sent).await;
    let still = enqueue(&e.shared, &[decision("Prompt", DecisionStatus::Firing, "checkout", inc, &["defer-slack"])]);
    let gone = enqueue(&e.shared, &[decision("Prompt2", DecisionStatus::Firing, "checkout", inc, &["defer-slack"])]);
    wait_for("both deferred", Duration::from_secs(10), || {
        [&still[0].id, &gone[0].id].iter().all(|id| entry(&e.shared, id).last_error.as_deref() == Some("deferred by min_interval"))
    })
    .await;
    wait_for("the end of min_interval", Duration::from_secs(15), || {
        entry(&e.shared, &still[0].id).state == OutboxState::Sent && entry(&e.shared, &gone[0].id).state == OutboxState::Suppressed
    })
    .await;
    stop(&e.shared, h).await;
    assert_eq!(entry(&e.shared, &gone[0].id).last_error.as_deref(), Some("min_interval: the rule no longer fires"));
    assert_eq!(slack.requests().len(), 2, "the page and the prompt whose rule still fires");
}

#[tokio::test]
async fn maintenance_suppression_is_counted_when_planned() {
    let srv = Server::start(vec![]).await;
    let tmp = tempfile::tempdir().unwrap();
    let receivers = hook_yaml("maint-hook", &srv.url("/h"), "");
    write_config(tmp.path(), &receivers, &["maint-hook"], "  group_wait: 1s");
    // A window that is always active.
    let yaml = std::fs::read_to_string(tmp.path().join("herald.yaml")).unwrap()
        + "maintenance_windows:\n  - name: always\n    schedule: '* * * * *'\n    duration: 2m\n";
    std::fs::write(tmp.path().join("herald.yaml"), yaml).unwrap();
    let config = load_config(&tmp.path().join("herald.yaml"), &|_| None)
        .map_err(|d| format!("{d:?}"))
        .expect("valid config")
        .0;
    let store = Store::open_dir(&config.global.state_dir).unwrap();
    let shared = Arc::new(Shared::new(config, store, RunOptions::default()).unwrap());
    let planned = enqueue(
        &shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["maint-hook"],
        )],
    );
    assert_eq!(planned[0].state, OutboxState::Suppressed);
    assert_eq!(notifications_total("maint-hook", "suppressed"), 1.0);
    let (_w, h) = start(&shared, fast_tuning());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&shared, h).await;
    assert!(srv.requests().is_empty());
}

fn firing_state(rule: &str, service: &str, fired_at: Ts) -> State {
    let mut state = State::default();
    state.instances.entry(rule.into()).or_default().insert(
        Subject::new([("service", service)]),
        Instance {
            phase: Phase::Firing,
            active_at: fired_at,
            fired_at: Some(fired_at),
            keep_firing_since: None,
            last_eval: fired_at,
        },
    );
    state
}

#[tokio::test]
async fn repeat_interval_resends_with_the_same_dedup_key() {
    let srv = Server::start(vec![]).await;
    let e = env(
        &hook_yaml("rep-hook", &srv.url("/r"), ""),
        &["rep-hook"],
        "  group_wait: 1s\n  repeat_interval: 1s",
        false,
    );
    {
        let state = firing_state("Page", "checkout", now_ms() - 60_000);
        let mut core = e.shared.core.lock().unwrap();
        core.store
            .commit(
                &state,
                &Commit {
                    rules: vec!["Page"],
                    ..Default::default()
                },
            )
            .unwrap();
        core.state = state;
    }
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            Some(("INC-2", 1_699_999_000_000)),
            &["rep-hook"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("a repeat", Duration::from_secs(10), || {
        srv.requests().len() >= 2
    })
    .await;
    let stopped_at = srv.requests().len();
    stop(&e.shared, h).await;
    let reqs = srv.requests();
    let (a, b) = (reqs[0].json(), reqs[1].json());
    assert_eq!(a["id"], planned[0].id.as_str());
    assert_ne!(a["id"], b["id"], "a repeat is a new notification");
    assert_eq!(a["dedup_key"], b["dedup_key"], "with the same dedup key");
    assert_eq!(b["dedup_key"], "INC-2/Page");
    // The repeat is timed from the previous entry's creation (not from its delivery, which a
    // loaded machine delays): compare the stored times.
    let created = |id: &serde_json::Value| entry(&e.shared, id.as_str().unwrap()).created_at;
    let gap = created(&b["id"]) - created(&a["id"]);
    assert!(
        gap >= 1_000,
        "repeated after repeat_interval, not before ({gap} ms)"
    );
    assert!(stopped_at <= 3);
    // Every repeat went through the store.
    let stored = entries(&e.shared);
    assert!(stored.len() >= 2 && stored.iter().all(|s| s.dedup_key == "INC-2/Page"));
}

#[tokio::test]
async fn a_config_reload_never_resends_what_was_sent() {
    let srv = Server::start(vec![]).await;
    let e = env(
        &hook_yaml("reload-hook", &srv.url("/r"), ""),
        &["reload-hook"],
        "  group_wait: 1s\n  repeat_interval: 1h",
        false,
    );
    {
        let state = firing_state("Page", "checkout", now_ms() - 60_000);
        let mut core = e.shared.core.lock().unwrap();
        core.store
            .commit(
                &state,
                &Commit {
                    rules: vec!["Page"],
                    ..Default::default()
                },
            )
            .unwrap();
        core.state = state;
    }
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["reload-hook"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    // Reload: same receiver with other settings, and a fresh planner.
    let new = write_config(
        &e.dir,
        &hook_yaml("reload-hook", &srv.url("/r"), "    concurrency: 1\n"),
        &["reload-hook"],
        "  group_wait: 2s\n  repeat_interval: 1h",
    );
    *e.shared.planner.write().unwrap() = Arc::new(Planner::new(&new).unwrap());
    *e.shared.config.write().unwrap() = Arc::new(new);
    e.shared.outbox_wake.notify_one();
    tokio::time::sleep(Duration::from_millis(600)).await; // several passes, repeat passes included
    stop(&e.shared, h).await;
    assert_eq!(srv.requests().len(), 1, "nothing re-sent after the reload");
    assert_eq!(
        entries(&e.shared).len(),
        1,
        "no new entry: the repeat timer comes from the store"
    );
}

#[tokio::test]
async fn entries_committed_before_a_crash_are_delivered_once_after_restart() {
    let srv = Server::start(vec![]).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &hook_yaml("crash-hook", &srv.url("/c"), ""),
        &["crash-hook"],
        "  group_wait: 1s",
    );
    let state_dir = config.global.state_dir.clone();
    let (sent_id, pending_ids) = {
        // First life: three entries committed, one delivered, then "kill -9" (drop everything).
        let store = Store::open_dir(&state_dir).unwrap();
        let shared = Shared::new(config.clone(), store, RunOptions::default()).unwrap();
        let planned = enqueue(
            &shared,
            &[
                decision("Page", DecisionStatus::Firing, "a", None, &["crash-hook"]),
                decision("Page", DecisionStatus::Firing, "b", None, &["crash-hook"]),
                decision("Page", DecisionStatus::Firing, "c", None, &["crash-hook"]),
            ],
        );
        let mut core = shared.core.lock().unwrap();
        core.store
            .mark(
                &planned[0].id,
                OutboxState::Sent,
                1,
                planned[0].not_before,
                None,
                Some(now_ms()),
            )
            .unwrap();
        // A second one was leased by a worker that died mid-flight.
        core.store
            .claim(&[planned[1].id.clone()], now_ms() + 300)
            .unwrap();
        (
            planned[0].id.clone(),
            vec![planned[1].id.clone(), planned[2].id.clone()],
        )
    };
    // Second life: a fresh store handle and worker on the same file.
    let store = Store::open_dir(&state_dir).unwrap();
    let shared = Arc::new(Shared::new(config, store, RunOptions::default()).unwrap());
    let (_w, h) = start(&shared, fast_tuning());
    wait_for("recovery", Duration::from_secs(10), || {
        pending_ids
            .iter()
            .all(|id| entry(&shared, id).state == OutboxState::Sent)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&shared, h).await;
    let mut got: Vec<String> = srv
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = pending_ids.clone();
    want.sort();
    assert_eq!(
        got, want,
        "exactly the pending entries, once each; never the sent one ({sent_id})"
    );
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let srv = Server::start(vec![reply(500); 100]).await;
    let e = env(
        &hook_yaml(
            "hook-deadline",
            &srv.url("/d"),
            "    max_retry_duration: 1500ms\n",
        ),
        &["hook-deadline"],
        "  group_wait: 1s",
        false,
    );
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["hook-deadline"],
        )],
    );
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("giving up", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Failed
    })
    .await;
    let tries = srv.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&e.shared, h).await;
    assert!(tries >= 2, "retried before giving up ({tries})");
    assert_eq!(srv.requests().len(), tries, "no try after giving up");
    let failed = entry(&e.shared, &planned[0].id);
    assert!(
        failed.last_error.as_deref().unwrap().contains("deadline"),
        "{:?}",
        failed.last_error
    );
    assert_eq!(notifications_total("hook-deadline", "failed"), 1.0);
}

#[tokio::test]
async fn the_log_receiver_writes_the_message_and_counts_it_sent() {
    let e = env(
        "  - name: log-only\n    type: log\n    title: \"LOG {{ rule }}\"\n",
        &["log-only"],
        "  group_wait: 1s",
        false,
    );
    let planned = enqueue(
        &e.shared,
        &[decision(
            "Page",
            DecisionStatus::Firing,
            "checkout",
            None,
            &["log-only"],
        )],
    );
    let (w, h) = start(&e.shared, fast_tuning());
    wait_for("delivery", Duration::from_secs(10), || {
        entry(&e.shared, &planned[0].id).state == OutboxState::Sent
    })
    .await;
    stop(&e.shared, h).await;
    assert!(
        w.recorder().requests().is_empty(),
        "not a dry run: nothing recorded"
    );
    assert_eq!(notifications_total("log-only", "sent"), 1.0);
}

#[tokio::test]
async fn huge_labels_and_annotations_stay_within_each_receivers_limits() {
    let pd = Server::start(vec![]).await;
    let slack = Server::start(vec![]).await;
    let teams = Server::start(vec![]).await;
    let receivers = format!(
        "  - name: big-pd\n    type: pagerduty\n    url: {}\n    routing_key: R0UTINGKEY\n  - name: big-slack\n    type: slack\n    url: {}\n  - name: big-teams\n    type: teams\n    url: {}\n",
        pd.url("/v2/enqueue"),
        slack.url("/services/T/B/X"),
        teams.url("/workflows/run")
    );
    let names = ["big-pd", "big-slack", "big-teams"];
    let e = env(&receivers, &names, "  group_wait: 1s", false);
    let huge = "<checkout & \"friends\">€".repeat(2_000);
    let mut d = decision("Page", DecisionStatus::Firing, "x", Some(("INC-9", 1_699_999_000_000)), &names);
    d.subject = Subject::new([("service", huge.as_str()), ("region", huge.as_str())]);
    d.labels.insert("team".into(), huge.clone());
    d.annotations.insert("summary".into(), huge.clone());
    d.annotations.insert("description".into(), huge.repeat(3));
    let planned = enqueue(&e.shared, &[d]);
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("deliveries", Duration::from_secs(10), || {
        planned.iter().all(|p| entry(&e.shared, &p.id).state == OutboxState::Sent)
    })
    .await;
    stop(&e.shared, h).await;

    let chars = |v: &serde_json::Value| v.as_str().unwrap().chars().count();
    let body = slack.requests()[0].json();
    assert!(chars(&body["text"]) <= 3000);
    for b in body["blocks"].as_array().unwrap() {
        let texts: Vec<&serde_json::Value> = match b["type"].as_str().unwrap() {
            "context" => b["elements"].as_array().unwrap().iter().map(|e| &e["text"]).collect(),
            _ => vec![&b["text"]["text"]],
        };
        for t in texts {
            assert!(chars(t) <= 3000, "a Slack text object has {} characters", chars(t));
        }
    }
    assert!(chars(&body["blocks"][0]["text"]["text"]) <= 150);
    let context = body["blocks"].as_array().unwrap().last().unwrap()["elements"][0]["text"].as_str().unwrap();
    assert!(context.starts_with("*critical* · firing · Page · "), "{}", &context[..80]);

    let teams_bytes = teams.requests()[0].body.len();
    assert!(teams_bytes <= 28_672, "Teams message is {teams_bytes} bytes");
    let card = teams.requests()[0].json();
    assert_eq!(card["attachments"][0]["content"]["type"], "AdaptiveCard");

    let event = pd.requests()[0].json();
    assert!(chars(&event["payload"]["summary"]) <= 1024);
    assert!(chars(&event["payload"]["source"]) <= 255);
    assert!(chars(&event["payload"]["group"]) <= 255);
    assert!(pd.requests()[0].body.len() <= 512 * 1024);
    assert_eq!(event["dedup_key"], "INC-9/Page");
}

#[tokio::test]
async fn a_receiver_template_failing_at_send_time_sends_the_default_message() {
    // `values.sli` renders in `check` (the sample has every signal) but a decision whose signal
    // has no value cannot render it: the default title goes out instead of a permanent failure.
    let slack = Server::start(vec![]).await;
    let receivers = format!(
        "  - name: tmpl-slack\n    type: slack\n    url: {}\n    title: \"{{{{ subject.service }}}} SLI {{{{ values.sli | percent }}}}\"\n",
        slack.url("/services/T/B/X")
    );
    let e = env(&receivers, &["tmpl-slack"], "  group_wait: 1s", false);
    let ok = decision("Page", DecisionStatus::Firing, "search", None, &["tmpl-slack"]);
    let mut no_value = decision("Page", DecisionStatus::Firing, "checkout", None, &["tmpl-slack"]);
    no_value.values.clear();
    let planned = enqueue(&e.shared, &[ok, no_value]);
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("deliveries", Duration::from_secs(10), || {
        planned.iter().all(|p| entry(&e.shared, &p.id).state == OutboxState::Sent)
    })
    .await;
    stop(&e.shared, h).await;
    let mut titles: Vec<String> = slack.requests().iter().map(|r| r.json()["text"].as_str().unwrap().to_string()).collect();
    titles.sort();
    assert_eq!(titles, vec!["checkout: Page says customers are affected".to_string(), "search SLI 50%".to_string()]);
    assert_eq!(notifications_total("tmpl-slack", "failed"), 0.0);
}

#[tokio::test]
async fn secrets_jwts_and_aws_keys_are_redacted_but_heralds_own_links_work() {
    let slack = Server::start(vec![]).await;
    let pd = Server::start(vec![]).await;
    let receivers = format!(
        "  - name: leak-slack\n    type: slack\n    url: {}\n  - name: leak-pd\n    type: pagerduty\n    url: {}\n    routing_key: R0UTINGKEY0123456789\n",
        slack.url("/services/T0/B0/slacktoken42"),
        pd.url("/v2/enqueue")
    );
    let names = ["leak-slack", "leak-pd"];
    // Herald reached by IP: its links must survive the IP detector.
    let e = env_with(&receivers, &names, "  group_wait: 1s", false, "  external_url: http://10.1.2.3:9797\n");
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcHMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    let mut d = decision("Page", DecisionStatus::Firing, "checkout", Some(("INC-4", 1_699_999_000_000)), &names);
    d.annotations.insert(
        "description".into(),
        format!(
            "token {jwt}; aws wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY; pd R0UTINGKEY0123456789; hook {}; host 10.9.9.9",
            slack.url("/services/T0/B0/slacktoken42")
        ),
    );
    let planned = enqueue(&e.shared, &[d]);
    let (_w, h) = start(&e.shared, fast_tuning());
    wait_for("deliveries", Duration::from_secs(10), || {
        planned.iter().all(|p| entry(&e.shared, &p.id).state == OutboxState::Sent)
    })
    .await;
    stop(&e.shared, h).await;
    let slack_body = String::from_utf8(slack.requests()[0].body.clone()).unwrap();
    let pd_body = String::from_utf8(pd.requests()[0].body.clone()).unwrap();
    for (name, body) in [("slack", &slack_body), ("pagerduty", &pd_body)] {
        assert!(!body.contains(jwt), "{name}: {body}");
        assert!(!body.contains("wJalrXUtnFEMI"), "{name}: {body}");
        assert!(!body.contains("slacktoken42"), "{name}: {body}");
        assert!(!body.contains("10.9.9.9"), "{name}: {body}");
        assert!(body.contains("[redacted:jwt]"), "{name}: {body}");
        assert!(body.contains("[redacted:api_key]"), "{name}: {body}");
        assert!(body.contains("[redacted:secret]"), "{name}: {body}");
    }
    // The routing key goes where it belongs (the PagerDuty routing_key field) and nowhere else.
    assert_eq!(pd_body.matches("R0UTINGKEY0123456789").count(), 1, "{pd_body}");
    assert!(!slack_body.contains("R0UTINGKEY0123456789"), "{slack_body}");
    // Herald's own incident link is intact, in the text and in the link.
    assert!(slack_body.contains("<http://10.1.2.3:9797/incidents/INC-4|Open incident INC-4>"), "{slack_body}");
    assert!(slack_body.contains("Incident INC-4 (investigating): http://10.1.2.3:9797/incidents/INC-4"), "{slack_body}");
}

#[tokio::test]
async fn the_worker_prunes_finished_entries_older_than_the_retention() {
    let srv = Server::start(vec![]).await;
    let e = env_with(
        &hook_yaml("hook-ret", &srv.url("/hook"), ""),
        &["hook-ret"],
        "  group_wait: 1s\n  repeat_interval: 1h",
        false,
        "  external_url: http://herald.test\n  retention: 2h\n",
    );
    let now = now_ms();
    let old = now - 3 * 3_600_000;
    let mk = |id: &str, at: Ts| OutboxEntry {
        id: id.into(),
        dedup_key: format!("k/{id}"),
        receiver: "hook-ret".into(),
        rule: "Page".into(),
        subject: "{service=\"checkout\"}".into(),
        status: "firing".into(),
        payload: "{}".into(),
        created_at: at,
        not_before: at,
        deadline: at + 86_400_000,
        attempts: 0,
        state: OutboxState::Sent,
        last_error: None,
        delivered_at: Some(at),
    };
    {
        let mut core = e.shared.core.lock().unwrap();
        let core = &mut *core;
        let mut failed = mk("old-failed", old);
        failed.state = OutboxState::Failed;
        core.store
            .commit(&core.state, &Commit { outbox: vec![mk("old-sent", old), failed, mk("recent-sent", now - 60_000)], ..Default::default() })
            .unwrap();
    }
    let (w, h) = start(&e.shared, DeliveryTuning { prune_first_after: Duration::ZERO, ..fast_tuning() });
    wait_for("the retention pass", Duration::from_secs(10), || {
        !entries(&e.shared).iter().any(|x| x.id.starts_with("old-"))
    })
    .await;
    // Whatever is new is kept, and a further pass finds nothing to do.
    let left: Vec<String> = entries(&e.shared).into_iter().map(|x| x.id).collect();
    assert_eq!(left, vec!["recent-sent".to_string()]);
    assert_eq!(w.prune_pass().await.unwrap(), herald::store::Pruned::default());
    stop(&e.shared, h).await;
}

//! Decision → delivered latency to a local webhook receiver (127.0.0.1), 1,000 notifications.
//!
//! Plans and commits decisions in batches of 50 (as evaluations do) while the worker runs,
//! and measures, per notification, the time from its commit to its arrival at the receiver.
//! Prints p50/p99 latency and throughput. Run: `cargo bench --bench delivery`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use herald::config::{load_config, Action, Severity};
use herald::shared::{now_ms, RunOptions, Shared};
use herald::engine::{Decision, DecisionStatus, Subject};
use herald::notify::worker::{DeliveryTuning, Worker};
use herald::store::{Commit, OutboxState, Store};

const N: usize = 1_000;
const BATCH: usize = 50;

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let arrivals: Arrivals = Arc::default();
    let a2 = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let a = a2.clone();
            async move {
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    a.lock().unwrap().insert(id.to_string(), Instant::now());
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "groups:\n  - name: g\n    subject: [service]\n    signals:\n      sli: { value: 0.5 }\n    rules:\n      - name: Page\n        when: sli < 0.9\n        action: activate_comms_lead\n        severity: critical\n        notify: [hook]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global:\n  state_dir: {}\nreceivers:\n  - name: hook\n    type: webhook\n    url: http://{addr}/hook\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n    concurrency: 16\nrule_files: [rules.yaml]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let config = load_config(&dir.path().join("herald.yaml"), &|_| None)
        .expect("config")
        .0;
    let store = Store::open_dir(&config.global.state_dir).unwrap();
    let shared = Arc::new(Shared::new(config, store, RunOptions::default()).unwrap());
    let worker = Arc::new(Worker::new(shared.clone(), DeliveryTuning::default()).unwrap());
    let handle = tokio::spawn(worker.run());

    let mut committed: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    for b in 0..N / BATCH {
        let decisions: Vec<Decision> = (0..BATCH)
            .map(|i| Decision {
                at: now_ms(),
                rule: "Page".into(),
                action: Action::ActivateCommsLead,
                severity: Severity::Critical,
                subject: Subject::new([("service", format!("svc-{b}-{i}"))]),
                status: DecisionStatus::Firing,
                starts_at: now_ms(),
                values: BTreeMap::new(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                incident: None,
                notify: vec!["hook".into()],
            })
            .collect();
        let shared2 = shared.clone();
        let ids = tokio::task::spawn_blocking(move || {
            let config = shared2.config();
            let planner = shared2.planner.read().unwrap().clone();
            let mut core = shared2.core.lock().unwrap();
            let core = &mut *core;
            let entries = planner.plan(&decisions, &config, &core.store, now_ms(), false);
            core.store
                .commit(
                    &core.state,
                    &Commit {
                        outbox: entries.clone(),
                        ..Default::default()
                    },
                )
                .unwrap();
            entries.into_iter().map(|e| e.id).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let at = Instant::now();
        committed.extend(ids.into_iter().map(|id| (id, at)));
        shared.outbox_wake.notify_one();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().unwrap().len() < N {
        assert!(
            Instant::now() < deadline,
            "not everything was delivered in 120s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_arrival = *arrivals.lock().unwrap().values().max().unwrap();
    // Wait for the outcomes to be recorded too.
    while shared
        .core
        .lock()
        .unwrap()
        .store
        .outbox(Some(OutboxState::Sent), N + 1)
        .unwrap()
        .len()
        < N
    {
        assert!(Instant::now() < deadline, "outcomes not recorded in 120s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_marked = started.elapsed();
    shared.shutdown.cancel();
    handle.await.unwrap();

    let arr = arrivals.lock().unwrap();
    let mut lat: Vec<Duration> = committed
        .iter()
        .map(|(id, t)| arr[id].saturating_duration_since(*t))
        .collect();
    lat.sort();
    let span = last_arrival - started;
    println!("delivery bench: {N} notifications to a local signed webhook (batches of {BATCH}, concurrency 16)");
    println!(
        "  decision→delivered p50 = {:.1} ms",
        percentile(&lat, 0.50).as_secs_f64() * 1e3
    );
    println!(
        "  decision→delivered p99 = {:.1} ms",
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  max                    = {:.1} ms",
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    println!("  throughput             = {:.0} notifications/s (all delivered in {:.2} s; all marked sent in {:.2} s)", N as f64 / span.as_secs_f64(), span.as_secs_f64(), all_marked.as_secs_f64());
}

//! A loopback Atlassian Statuspage (REST API v1) for contract tests: the documented endpoints
//! and bodies (`tests/fixtures/integrations/README.md`), `Authorization: OAuth <key>`, and the
//! 1 request/s limit answered with 429 + `Retry-After`. Include with
//! `#[path = "support/statuspage.rs"] mod statuspage;`.
//!
//! Incidents are created when the request arrives; `delay_writes` holds the ANSWER back, so a
//! test can kill the client while its request has already taken effect.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const API_KEY: &str = "2a7b9d4aac30956d537ac76850f4d78de30994703680056cc103862d53cf8074";
pub const PAGE_ID: &str = "qfn30z5r6s5h";

#[derive(Default)]
struct Inner {
    incidents: Vec<Value>,
    seq: u64,
    /// (method, path, status answered)
    log: Vec<(String, String, u16)>,
    last_request: Option<Instant>,
    delay_writes: Duration,
    force_429: u32,
}

/// A running fake Statuspage.
pub struct Statuspage {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _rt: std::thread::JoinHandle<()>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Inner {
    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{:010}", self.seq)
    }

    fn add_update(&mut self, idx: usize, status: &str, body: &str, components: &[(String, String)]) -> Value {
        let id = self.next_id("upd");
        let now = now_rfc3339();
        let inc = &mut self.incidents[idx];
        let affected: Vec<Value> = components.iter().map(|(c, s)| json!({"code": c, "name": c, "old_status": "operational", "new_status": s})).collect();
        let u = json!({
            "id": id, "incident_id": inc["id"], "status": status, "body": body, "created_at": now, "updated_at": now,
            "display_at": now, "twitter_updated_at": null, "wants_twitter_update": false, "affected_components": affected,
        });
        inc["incident_updates"].as_array_mut().unwrap().insert(0, u.clone());
        inc["status"] = json!(status);
        inc["updated_at"] = json!(now);
        for (c, s) in components {
            let comps = inc["components"].as_array_mut().unwrap();
            match comps.iter_mut().find(|x| x["id"] == c.as_str()) {
                Some(x) => x["status"] = json!(s),
                None => comps.push(json!({"id": c, "name": c, "status": s})),
            }
        }
        u
    }

    fn create(&mut self, name: &str, status: &str, body: &str, components: &[(String, String)]) -> usize {
        let id = self.next_id("inc");
        let now = now_rfc3339();
        self.incidents.insert(
            0,
            json!({
                "id": id, "name": name, "status": status, "created_at": now, "updated_at": now, "started_at": now,
                "impact": "major", "impact_override": null, "monitoring_at": null, "resolved_at": null, "page_id": PAGE_ID,
                "shortlink": "http://stspg.io/x", "postmortem_body": null, "components": [], "incident_updates": [],
            }),
        );
        self.add_update(0, status, body, components);
        0
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.incidents.iter().position(|i| i["id"] == id)
    }
}

type Shared = Arc<Mutex<Inner>>;

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

/// Auth and rate limit; records the request. `Some` is the refusal to answer with.
fn gate(s: &Shared, method: &str, path: &str, headers: &HeaderMap) -> Option<Response> {
    let mut g = s.lock().unwrap();
    let auth_ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("OAuth {API_KEY}"));
    let now = Instant::now();
    let too_fast = g.last_request.is_some_and(|t| now.duration_since(t) < Duration::from_millis(950));
    g.last_request = Some(now);
    let answer = if !auth_ok {
        Some(err(StatusCode::UNAUTHORIZED, "Could not authenticate"))
    } else if g.force_429 > 0 || too_fast {
        g.force_429 = g.force_429.saturating_sub(1);
        Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"error": "Rate limit exceeded"}))).into_response())
    } else {
        None
    };
    let code = answer.as_ref().map_or(200, |r| r.status().as_u16());
    g.log.push((method.to_string(), path.to_string(), code));
    answer
}

async fn list(State(s): State<Shared>, Path(page): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, "GET", &format!("/pages/{page}/incidents"), &headers) {
        return r;
    }
    Json(Value::Array(s.lock().unwrap().incidents.clone())).into_response()
}

async fn unresolved(State(s): State<Shared>, Path(page): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, "GET", &format!("/pages/{page}/incidents/unresolved"), &headers) {
        return r;
    }
    let v: Vec<Value> = s.lock().unwrap().incidents.iter().filter(|i| i["status"] != "resolved" && i["status"] != "postmortem").cloned().collect();
    Json(Value::Array(v)).into_response()
}

async fn get_one(State(s): State<Shared>, Path((page, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, "GET", &format!("/pages/{page}/incidents/{id}"), &headers) {
        return r;
    }
    let g = s.lock().unwrap();
    match g.find(&id) {
        Some(i) => Json(g.incidents[i].clone()).into_response(),
        None => err(StatusCode::NOT_FOUND, "not found"),
    }
}

fn components_of(inc: &Value) -> Vec<(String, String)> {
    inc["components"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect()).unwrap_or_default()
}

async fn create(State(s): State<Shared>, Path(page): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(r) = gate(&s, "POST", &format!("/pages/{page}/incidents"), &headers) {
        return r;
    }
    let inc = &body["incident"];
    let (Some(name), Some(text)) = (inc["name"].as_str(), inc["body"].as_str()) else {
        return err(StatusCode::UNPROCESSABLE_ENTITY, "name and body are required");
    };
    let (v, delay) = {
        let mut g = s.lock().unwrap();
        let i = g.create(name, inc["status"].as_str().unwrap_or("investigating"), text, &components_of(inc));
        (g.incidents[i].clone(), g.delay_writes)
    };
    tokio::time::sleep(delay).await;
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn patch(State(s): State<Shared>, Path((page, id)): Path<(String, String)>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(r) = gate(&s, "PATCH", &format!("/pages/{page}/incidents/{id}"), &headers) {
        return r;
    }
    let inc = &body["incident"];
    let (v, delay) = {
        let mut g = s.lock().unwrap();
        let Some(i) = g.find(&id) else { return err(StatusCode::NOT_FOUND, "not found") };
        let status = inc["status"].as_str().map(str::to_string).unwrap_or_else(|| g.incidents[i]["status"].as_str().unwrap().to_string());
        g.add_update(i, &status, inc["body"].as_str().unwrap_or(""), &components_of(inc));
        (g.incidents[i].clone(), g.delay_writes)
    };
    tokio::time::sleep(delay).await;
    Json(v).into_response()
}

impl Statuspage {
    pub fn start() -> Statuspage {
        let inner: Shared = Arc::new(Mutex::new(Inner::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/pages/{page}/incidents", get(list).post(create))
            .route("/v1/pages/{page}/incidents/unresolved", get(unresolved))
            .route("/v1/pages/{page}/incidents/{id}", get(get_one).patch(patch))
            .with_state(inner.clone());
        let rt = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        Statuspage { addr, inner, _rt: rt }
    }

    /// The API base URL to configure (`url:`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A person opens an incident on the page (as in Statuspage's UI); returns its id.
    pub fn person_creates(&self, name: &str, component: &str, body: &str) -> String {
        let mut g = self.inner.lock().unwrap();
        let i = g.create(name, "investigating", body, &[(component.to_string(), "partial_outage".to_string())]);
        g.incidents[i]["id"].as_str().unwrap().to_string()
    }

    /// A person posts an update; returns its id.
    pub fn person_updates(&self, incident: &str, status: &str, body: &str) -> String {
        let mut g = self.inner.lock().unwrap();
        let i = g.find(incident).unwrap();
        g.add_update(i, status, body, &[])["id"].as_str().unwrap().to_string()
    }

    /// A person edits an update's text.
    pub fn person_edits(&self, incident: &str, update: &str, body: &str) {
        let mut g = self.inner.lock().unwrap();
        let i = g.find(incident).unwrap();
        let now = now_rfc3339();
        for u in g.incidents[i]["incident_updates"].as_array_mut().unwrap() {
            if u["id"] == update {
                u["body"] = json!(body);
                u["updated_at"] = json!(now);
            }
        }
    }

    pub fn incidents(&self) -> Vec<Value> {
        self.inner.lock().unwrap().incidents.clone()
    }

    /// Requests received: (method, path, status answered).
    pub fn log(&self) -> Vec<(String, String, u16)> {
        self.inner.lock().unwrap().log.clone()
    }

    /// Holds the answer to POST and PATCH back for `d` (the write itself happens at once).
    pub fn delay_writes(&self, d: Duration) {
        self.inner.lock().unwrap().delay_writes = d;
    }

    /// Answers the next `n` requests with 429 + `Retry-After: 1`.
    pub fn force_429(&self, n: u32) {
        self.inner.lock().unwrap().force_429 = n;
    }
}

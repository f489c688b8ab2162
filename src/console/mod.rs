//! The comms console: server-rendered HTML pages for the people in an incident, at `/`.
//!
//! The console is a client of the HTTP API, in process: every page reads through the same
//! `GET /api/v1/...` endpoints a script would call, and every button posts the same event a
//! script would post, with the API token taken from the login cookie. So the console can never
//! show or do what the API would not, and it keeps no model of its own.
//!
//! Owns: page rendering (minijinja templates compiled into the binary), the login cookie
//! (HttpOnly, SameSite=Strict), CSRF protection of its forms, the SVG chart ([`chart`]), and the
//! "next update due" countdown. Must not: touch the store or the engine state directly, or
//! accept a mutation without the API token.

pub mod chart;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, Request, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub use crate::config::daemon::ConsoleConfig;

/// The name of the cookie that carries the API token (hex-encoded).
pub const COOKIE: &str = "herald_token";

/// What the API token check says about a token typed into the login form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    Invalid,
    /// No token is configured: mutations are disabled.
    Disabled,
}

/// Checks a token against the running configuration.
pub type CheckToken = Arc<dyn Fn(&str) -> TokenCheck + Send + Sync>;
/// The console's targets from the running configuration.
pub type Targets = Arc<dyn Fn() -> ConsoleConfig + Send + Sync>;

/// Everything the console's handlers need: the API to call, and two views of the running
/// configuration. Built by [`crate::http`]; the console never sees the daemon itself.
pub struct Console {
    api: Router,
    check_token: CheckToken,
    targets: Targets,
    env: Environment<'static>,
}

impl Console {
    /// A console that reads and acts through `api`.
    pub fn new(api: Router, check_token: CheckToken, targets: Targets) -> Console {
        let mut env = Environment::new();
        env.add_filter("urlencode", |s: String| view::urlencode(&s));
        for (name, src) in TEMPLATES {
            env.add_template(name, src).expect("console templates compile");
        }
        Console { api, check_token, targets, env }
    }

    /// Calls the API in process: (status, JSON body or null).
    async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        let Ok(req) = req else { return (StatusCode::BAD_REQUEST, Value::Null) };
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 32 << 20).await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn render(&self, name: &str, ctx: Value) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(crate::notify::template::json_to_value(&ctx))) {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                #[cfg(test)]
                eprintln!("{name}: {e:#}");
                tracing::error!(template = name, error = %e, "console page failed to render");
                (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the daemon's log").into_response()
            }
        }
    }
}

const TEMPLATES: [(&str, &str); 10] = [
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("incidents.html", include_str!("templates/incidents.html")),
    ("incident_list.html", include_str!("templates/incident_list.html")),
    ("incident.html", include_str!("templates/incident.html")),
    ("incident_live.html", include_str!("templates/incident_live.html")),
    ("rules.html", include_str!("templates/rules.html")),
    ("explain.html", include_str!("templates/explain.html")),
    ("login.html", include_str!("templates/login.html")),
    ("message.html", include_str!("templates/message.html")),
];

/// The console's routes (HTML pages, forms, its one script and stylesheet).
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(incidents_page))
        .route("/incidents/{id}", get(incident_page))
        .route("/incidents/{id}/act", post(act))
        .route("/incidents/{id}/drafts/{n}/publish", post(publish))
        .route("/rules", get(rules_page))
        .route("/rules/{rule}/explain", get(explain_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/console.js", get(script))
        .with_state(Arc::new(console))
}

type Shared = State<Arc<Console>>;

/// The API token from the login cookie, if any.
fn token(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE).then(|| hex_decode(v)).flatten()
    })
}

/// The CSRF token of a session: derived from its API token, so a page of another origin (which
/// cannot read the HttpOnly cookie) cannot forge it.
pub fn csrf_for(token: &str) -> String {
    let d = Sha256::digest(format!("herald-console-csrf:{token}").as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// The common page context: who is signed in, the CSRF token, the server's clock.
fn base_ctx(headers: &HeaderMap, c: &Console) -> serde_json::Map<String, Value> {
    let token = token(headers);
    let mut m = serde_json::Map::new();
    m.insert("signed_in".into(), token.is_some().into());
    m.insert("csrf".into(), token.as_deref().map(csrf_for).unwrap_or_default().into());
    m.insert("now_ms".into(), view::now_ms().into());
    m.insert("mutations_enabled".into(), ((c.check_token)("") != TokenCheck::Disabled).into());
    m
}

/// A read the API refused for want of a token sends the reader to the login page.
fn needs_login(status: StatusCode, next: &str) -> Option<Response> {
    (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
        .then(|| Redirect::to(&format!("/login?next={}", view::urlencode(next))).into_response())
}

async fn incidents_page(State(c): Shared, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let tok = token(&headers);
    let (s_open, open) = c.call(Method::GET, "/api/v1/incidents?open=true", tok.as_deref(), None).await;
    if let Some(r) = needs_login(s_open, "/") {
        return r;
    }
    let (_, closed) = c.call(Method::GET, "/api/v1/incidents?open=false&limit=200", tok.as_deref(), None).await;
    let targets = (c.targets)();
    let now = view::now_ms();
    let mut open_cards = Vec::new();
    for inc in open["incidents"].as_array().into_iter().flatten() {
        let id = inc["id"].as_str().unwrap_or_default();
        let (_, samples) = c.call(Method::GET, &format!("/api/v1/incidents/{}/samples", view::urlencode(id)), tok.as_deref(), None).await;
        open_cards.push(view::card(inc, &samples, &targets, now));
    }
    let owing: Vec<Value> = closed["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| view::owes_postmortem(i, now))
        .map(|i| view::card(i, &Value::Null, &targets, now))
        .collect();
    let mut ctx = base_ctx(&headers, &c);
    ctx.insert("open".into(), open_cards.into());
    ctx.insert("owing".into(), owing.into());
    ctx.insert("error".into(), if s_open.is_success() { Value::Null } else { open["error"].clone() });
    let page = if q.contains_key("fragment") { "incident_list.html" } else { "incidents.html" };
    c.render(page, Value::Object(ctx))
}

async fn incident_page(State(c): Shared, Path(id): Path<String>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let tok = token(&headers);
    let enc = view::urlencode(&id);
    let (status, inc) = c.call(Method::GET, &format!("/api/v1/incidents/{enc}"), tok.as_deref(), None).await;
    if let Some(r) = needs_login(status, &format!("/incidents/{enc}")) {
        return r;
    }
    if !status.is_success() {
        return message(&c, &headers, status, "No such incident", inc["error"].as_str().unwrap_or("the incident could not be read"));
    }
    let (_, samples) = c.call(Method::GET, &format!("/api/v1/incidents/{enc}/samples"), tok.as_deref(), None).await;
    let (_, notifications) = c.call(Method::GET, "/api/v1/notifications?limit=1000", tok.as_deref(), None).await;
    let (s_drafts, drafts) = c.call(Method::GET, &format!("/api/v1/incidents/{enc}/drafts"), tok.as_deref(), None).await;
    let targets = (c.targets)();
    let now = view::now_ms();
    let mut ctx = base_ctx(&headers, &c);
    ctx.insert("incident".into(), view::card(&inc, &samples, &targets, now));
    ctx.insert("timeline".into(), view::timeline(&inc, &notifications).into());
    ctx.insert("chart".into(), chart::render(&samples, &inc).into());
    ctx.insert("drafts".into(), if s_drafts.is_success() { view::drafts(&drafts) } else { Value::Null });
    ctx.insert("flash".into(), q.get("done").map(|d| Value::from(view::done_text(d))).unwrap_or(Value::Null));
    ctx.insert("error".into(), q.get("error").cloned().map(Value::from).unwrap_or(Value::Null));
    match q.get("fragment") {
        Some(part) => {
            ctx.insert("part".into(), part.clone().into());
            c.render("incident_live.html", Value::Object(ctx))
        }
        None => c.render("incident.html", Value::Object(ctx)),
    }
}

/// Refuses a form post from another origin (the browser says where it came from).
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").map(|(_, a)| a) != Some(host)
}

/// Checks login and CSRF for a console form: the token, or the response to send instead.
fn authorize_form(headers: &HeaderMap, form: &HashMap<String, String>, next: &str) -> Result<String, Box<Response>> {
    if cross_origin(headers) {
        return Err(Box::new((StatusCode::FORBIDDEN, "cross-origin form posts are refused").into_response()));
    }
    let Some(tok) = token(headers) else {
        return Err(Box::new(Redirect::to(&format!("/login?next={}&reason=act", view::urlencode(next))).into_response()));
    };
    if form.get("csrf").map(String::as_str) != Some(csrf_for(&tok).as_str()) {
        return Err(Box::new((StatusCode::FORBIDDEN, "the form's CSRF token is missing or stale: reload the page and try again").into_response()));
    }
    Ok(tok)
}

async fn act(State(c): Shared, Path(id): Path<String>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let enc = view::urlencode(&id);
    let back = format!("/incidents/{enc}");
    let tok = match authorize_form(&headers, &form, &back) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(kind) = form.get("type").filter(|t| !t.is_empty()) else {
        return Redirect::to(&format!("{back}?error={}", view::urlencode("no action was chosen"))).into_response();
    };
    let mut body = json!({ "type": kind, "actor": "console" });
    for field in ["channel", "value"] {
        if let Some(v) = form.get(field).filter(|v| !v.is_empty()) {
            body[field] = v.clone().into();
        }
    }
    let (status, answer) = c.call(Method::POST, &format!("/api/v1/incidents/{enc}/events"), Some(&tok), Some(body)).await;
    if status == StatusCode::UNAUTHORIZED {
        return Redirect::to(&format!("/login?next={}&reason=invalid", view::urlencode(&back))).into_response();
    }
    if status.is_success() {
        Redirect::to(&format!("{back}?done={}", view::urlencode(kind))).into_response()
    } else {
        let msg = answer["error"].as_str().unwrap_or("the API refused the event").to_string();
        Redirect::to(&format!("{back}?error={}", view::urlencode(&msg))).into_response()
    }
}

async fn publish(State(c): Shared, Path((id, n)): Path<(String, String)>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let enc = view::urlencode(&id);
    let back = format!("/incidents/{enc}");
    let tok = match authorize_form(&headers, &form, &back) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut body = json!({});
    if let Some(t) = form.get("text").filter(|t| !t.trim().is_empty()) {
        body["text"] = t.clone().into();
    }
    let uri = format!("/api/v1/incidents/{enc}/drafts/{}/publish", view::urlencode(&n));
    let (status, answer) = c.call(Method::POST, &uri, Some(&tok), Some(body)).await;
    if status.is_success() {
        Redirect::to(&format!("{back}?done=publish")).into_response()
    } else {
        let msg = answer["error"].as_str().unwrap_or("the API refused to publish").to_string();
        Redirect::to(&format!("{back}?error={}", view::urlencode(&msg))).into_response()
    }
}

async fn rules_page(State(c): Shared, headers: HeaderMap) -> Response {
    let tok = token(&headers);
    let (status, rules) = c.call(Method::GET, "/api/v1/rules", tok.as_deref(), None).await;
    if let Some(r) = needs_login(status, "/rules") {
        return r;
    }
    let mut ctx = base_ctx(&headers, &c);
    ctx.insert("groups".into(), view::rules(&rules));
    c.render("rules.html", Value::Object(ctx))
}

async fn explain_page(State(c): Shared, Path(rule): Path<String>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let tok = token(&headers);
    let subject = q.get("subject").cloned().unwrap_or_default();
    let uri = format!("/api/v1/rules/{}/explain?subject={}", view::urlencode(&rule), view::urlencode(&subject));
    let (status, explain) = c.call(Method::GET, &uri, tok.as_deref(), None).await;
    if let Some(r) = needs_login(status, &format!("/rules/{}/explain?subject={}", view::urlencode(&rule), view::urlencode(&subject))) {
        return r;
    }
    let mut ctx = base_ctx(&headers, &c);
    ctx.insert("rule".into(), rule.into());
    ctx.insert("subject".into(), subject.into());
    if status.is_success() {
        ctx.insert("explain".into(), view::explain(&explain));
    } else {
        ctx.insert("error".into(), explain["error"].as_str().map_or_else(|| format!("the explain view answered {status}"), str::to_string).into());
    }
    c.render("explain.html", Value::Object(ctx))
}

async fn login_page(State(c): Shared, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut ctx = base_ctx(&headers, &c);
    ctx.insert("next".into(), view::safe_next(q.get("next")).into());
    let reason = match q.get("reason").map(String::as_str) {
        Some("act") => "Sign in with the API token to act on incidents.",
        Some("invalid") => "The API token was not accepted. Sign in again.",
        _ => "",
    };
    ctx.insert("reason".into(), reason.into());
    c.render("login.html", Value::Object(ctx))
}

async fn login(State(c): Shared, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    if cross_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin form posts are refused").into_response();
    }
    let given = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let next = view::safe_next(form.get("next"));
    let mut ctx = base_ctx(&headers, &c);
    ctx.insert("next".into(), next.clone().into());
    let check = if given.is_empty() { TokenCheck::Invalid } else { (c.check_token)(given) };
    match check {
        TokenCheck::Valid => {
            let mut resp = Redirect::to(&next).into_response();
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200", hex_encode(given));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        TokenCheck::Invalid => {
            ctx.insert("error".into(), "That token is not the API token.".into());
            let mut r = c.render("login.html", Value::Object(ctx));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        TokenCheck::Disabled => {
            ctx.insert("error".into(), "No API token is configured (api.token_file), so the console is read-only.".into());
            let mut r = c.render("login.html", Value::Object(ctx));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r
        }
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if cross_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin form posts are refused").into_response();
    }
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("herald_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    resp
}

fn message(c: &Console, headers: &HeaderMap, status: StatusCode, title: &str, text: &str) -> Response {
    let mut ctx = base_ctx(headers, c);
    ctx.insert("title".into(), title.into());
    ctx.insert("text".into(), text.into());
    let mut r = c.render("message.html", Value::Object(ctx));
    *r.status_mut() = status;
    r
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], include_str!("static/console.js")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_csrf_round_trip() {
        let t = "s3cret; with=odd chars ✓";
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {COOKIE}={}; c=d", hex_encode(t))).unwrap());
        assert_eq!(token(&h).as_deref(), Some(t));
        assert_eq!(csrf_for(t).len(), 32);
        assert_ne!(csrf_for(t), csrf_for("other"));
        h.insert(header::COOKIE, HeaderValue::from_static("herald_token=zz"));
        assert_eq!(token(&h), None, "a malformed cookie is no token");
    }

    #[test]
    fn cross_origin_posts_are_detected() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9797"));
        assert!(!cross_origin(&h), "no Origin header: rely on the CSRF token");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9797"));
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(cross_origin(&h));
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use std::time::Duration;

    fn console() -> Console {
        let targets: Targets = Arc::new(|| ConsoleConfig { first_update_due: Duration::from_secs(900), update_due: Duration::from_secs(1800) });
        Console::new(Router::new(), Arc::new(|_: &str| TokenCheck::Valid), targets)
    }

    fn html(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(r.into_body(), 1 << 20)).unwrap().unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn every_page_renders_and_escapes_what_it_shows() {
        let c = console();
        let now = view::now_ms();
        let inc = json!({
            "id": "INC-7", "subject": {"service": "<script>x</script>"}, "severity": "critical", "status": "investigating",
            "open": true, "opened_at": "2026-01-01T00:00:00Z", "public_updates": 0, "legal_hold": false,
            "events": [{"type": "ack", "at": "2026-01-01T00:01:00Z"}]
        });
        let samples = json!({"signals": {"sli": [{"t": 1, "value": 0.9}], "affected_ratio": [{"t": 1, "value": 0.2}]}});
        let card = view::card(&inc, &samples, &(c.targets)(), now);
        let mut ctx = base_ctx(&HeaderMap::new(), &c);
        ctx.insert("open".into(), json!([card.clone()]));
        ctx.insert("owing".into(), json!([]));
        ctx.insert("error".into(), Value::Null);
        for page in ["incidents.html", "incident_list.html"] {
            let (status, body) = html(c.render(page, Value::Object(ctx.clone())));
            assert_eq!(status, StatusCode::OK, "{page}: {body}");
            assert!(body.contains("INC-7") && body.contains("&lt;script&gt;") && !body.contains("<script>x"), "{page}: {body}");
        }
        let mut ctx = base_ctx(&HeaderMap::new(), &c);
        ctx.insert("incident".into(), card);
        ctx.insert("timeline".into(), view::timeline(&inc, &Value::Null).into());
        ctx.insert("chart".into(), chart::render(&samples, &inc).into());
        ctx.insert("drafts".into(), view::drafts(&json!({"drafts": [{"n": 1, "rule": "PreparePublicUpdate", "audiences": {"support": "Tell customers.", "status_page": "We are investigating."}}]})));
        ctx.insert("flash".into(), "Recorded: ack.".into());
        ctx.insert("error".into(), Value::Null);
        for (page, part) in [("incident.html", ""), ("incident_live.html", "body")] {
            let mut ctx = ctx.clone();
            ctx.insert("part".into(), part.into());
            let (status, body) = html(c.render(page, Value::Object(ctx)));
            assert_eq!(status, StatusCode::OK, "{page}: {body}");
            assert!(body.contains("<svg class=\"chart\"") && body.contains("Acknowledged"), "{page}: {body}");
        }
        let (_, body) = html(c.render("incident.html", Value::Object(ctx)));
        assert!(body.contains("We are investigating.") && body.contains("Approve and publish") && body.contains("id=\"act-ack\""), "{body}");
        assert!(body.find("We are investigating.") < body.find("Tell customers."), "the status-page text comes first");
        let mut ctx = base_ctx(&HeaderMap::new(), &c);
        ctx.insert("groups".into(), view::rules(&json!({"groups": [{"name": "g", "interval": "30s", "subject": ["service"], "rules": [
            {"name": "R", "action": "notify", "when": "a > 1", "for": "5m", "state": "firing", "unknown": {"absent": 3},
             "instances": [{"subject": {"service": "checkout"}, "state": "firing", "since": "2026-01-01T00:00:00Z"}]}]}]})));
        let (status, body) = html(c.render("rules.html", Value::Object(ctx)));
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("3 absent") && body.contains("subject=service%3Dcheckout"), "{body}");
        let mut ctx = base_ctx(&HeaderMap::new(), &c);
        ctx.insert("rule".into(), "R".into());
        ctx.insert("subject".into(), "service=checkout".into());
        ctx.insert("explain".into(), view::explain(&json!({"group": "g", "rule": "R", "when": "a > 1 and b", "evaluations": [{
            "at": 0, "state": "pending", "unknown_reason": null, "for": {"elapsed_s": 60.0, "needed_s": 300.0},
            "signals": [{"name": "a", "value": 2.0}, {"name": "b", "value": null, "why": "absent"}],
            "when": {"text": "a > 1 and b", "truth": "unknown", "clauses": [{"text": "a > 1", "truth": "true"}, {"text": "b", "truth": "unknown"}]}
        }]})));
        let (status, body) = html(c.render("explain.html", Value::Object(ctx)));
        assert!(status == StatusCode::OK && body.contains("1m 00s of 5m 00s") && body.contains("no value: absent"), "{body}");
        assert_eq!(body.matches("truth-unknown").count(), 2, "{body}");
        for (page, extra) in [("login.html", json!({"next": "/", "reason": "Sign in"})), ("message.html", json!({"title": "T", "text": "x"}))] {
            let mut ctx = base_ctx(&HeaderMap::new(), &c);
            ctx.extend(extra.as_object().unwrap().clone());
            let (status, body) = html(c.render(page, Value::Object(ctx)));
            assert_eq!(status, StatusCode::OK, "{page}: {body}");
        }
    }
}

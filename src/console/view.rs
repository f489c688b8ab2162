//! View models: the API's JSON turned into what a page shows (texts, countdowns, timelines).
//! Pure functions of their inputs and `now`, so they are unit-tested without a server.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crate::config::daemon::ConsoleConfig;

/// Wall-clock unix milliseconds (the console is an edge: it reads the clock to show ages).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub use crate::config::template::urlencode;

/// A redirect target after login: only a local path, never another site.
pub fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".into(),
    }
}

/// An RFC 3339 time from the API as unix milliseconds.
pub(super) fn ms(v: &Value) -> Option<i64> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.timestamp_millis())
}

/// A duration for people: `45s`, `12m 05s`, `3h 02m`, `2d 4h`.
pub fn duration_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A time for people: `14:03:07 UTC`.
pub fn time_text(at: i64) -> String {
    Utc.timestamp_millis_opt(at).single().map_or_else(String::new, |t| t.format("%H:%M:%S UTC").to_string())
}

/// Labels as `service=checkout, region=eu`.
pub fn subject_text(subject: &Value) -> String {
    subject.as_object().map_or_else(String::new, |m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", "))
}

/// When the next public update is due, as the practice asks: the first within
/// `first_update_due` of opening, then one every `update_due`. `None` while no public update is
/// expected (resolved, internal-only, or held by legal), with the reason.
pub fn next_update_due(inc: &Value, targets: &ConsoleConfig) -> Result<(i64, &'static str), &'static str> {
    if inc["open"] != Value::Bool(true) {
        return Err("resolved");
    }
    if inc["internal_only"] == Value::Bool(true) {
        return Err("internal only: no public updates");
    }
    if inc["legal_hold"] == Value::Bool(true) {
        return Err("public comms held until legal approves");
    }
    match (inc["public_updates"].as_u64().unwrap_or(0), ms(&inc["last_public_update_at"]), ms(&inc["opened_at"])) {
        (0, _, Some(opened)) => Ok((opened + targets.first_update_due.as_millis() as i64, "first public update")),
        (_, Some(last), _) => Ok((last + targets.update_due.as_millis() as i64, "next public update")),
        _ => Err("unknown"),
    }
}

/// The latest recorded value of a signal, from `GET /api/v1/incidents/{id}/samples`.
pub fn latest(samples: &Value, signal: &str) -> Option<f64> {
    samples["signals"][signal].as_array()?.last()?["value"].as_f64()
}

/// One incident as a card on the list and the head of its page.
pub fn card(inc: &Value, samples: &Value, targets: &ConsoleConfig, now: i64) -> Value {
    let opened = ms(&inc["opened_at"]).unwrap_or(now);
    let end = ms(&inc["resolved_at"]).unwrap_or(now);
    let due = match next_update_due(inc, targets) {
        Ok((at, label)) => json!({
            "at": at,
            "label": label,
            "overdue": at <= now,
            "text": if at <= now { format!("overdue by {}", duration_text(now - at)) } else { format!("due in {}", duration_text(at - now)) },
        }),
        Err(reason) => json!({ "none": reason }),
    };
    let id = inc["id"].as_str().unwrap_or_default();
    json!({
        "id": id,
        "href": format!("/incidents/{}", urlencode(id)),
        "subject": subject_text(&inc["subject"]),
        "severity": inc["severity"],
        "status": inc["status"],
        "open": inc["open"],
        "age": duration_text(end - opened),
        "opened": time_text(opened),
        "resolved": ms(&inc["resolved_at"]).map(time_text),
        "affected": latest(samples, "affected_ratio").map(|v| format!("{:.1}%", v * 100.0)),
        "legal_hold": inc["legal_hold"],
        "legal_pending": inc["legal_pending"],
        "security": inc["security"],
        "internal_only": inc["internal_only"],
        "acknowledged": ms(&inc["acknowledged_at"]).map(time_text),
        "public_updates": inc["public_updates"],
        "postmortem_published": inc["postmortem_published"],
        "due": due,
    })
}

/// A resolved incident still owes its postmortem for a week after resolution.
pub fn owes_postmortem(inc: &Value, now: i64) -> bool {
    inc["open"] == Value::Bool(false)
        && inc["postmortem_published"] != Value::Bool(true)
        && inc["false_positive"] != Value::Bool(true)
        && ms(&inc["resolved_at"]).is_some_and(|r| now - r < 7 * 86_400_000)
}

/// What an event says, for people.
fn event_title(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("?").replace('_', " ");
    match e["type"].as_str().unwrap_or_default() {
        "declare" => format!("Declared by hand ({})", s("severity")),
        "ack" => "Acknowledged".into(),
        "public_update" => format!("Public update posted ({})", s("channel")),
        "status" => format!("Status set to {}", s("value")),
        "security" => "Flagged as a security incident".into(),
        "internal_only" => "Marked internal-only".into(),
        "legal_requested" => "Legal review requested".into(),
        "legal_approved" => "Legal approved public comms".into(),
        "correction" => "Correction to a public update".into(),
        "false_positive" => "Marked a false positive".into(),
        "postmortem_published" => "Postmortem published".into(),
        "resolve" => "Resolved by hand".into(),
        other => other.replace('_', " "),
    }
}

/// The incident's story, oldest first: its events and the notifications about its subject.
pub fn timeline(inc: &Value, notifications: &Value) -> Vec<Value> {
    let mut items: Vec<(i64, Value)> = Vec::new();
    for e in inc["events"].as_array().into_iter().flatten() {
        let at = ms(&e["at"]).unwrap_or(0);
        let mut detail: Vec<String> = Vec::new();
        for (k, v) in e.as_object().into_iter().flatten() {
            if !matches!(k.as_str(), "at" | "type" | "channel" | "value" | "severity" | "source") {
                detail.push(format!("{k}: {}", v.as_str().map_or_else(|| v.to_string(), str::to_string)));
            }
        }
        let kind = if e["source"] == "herald" { "decision" } else { "event" };
        items.push((at, json!({ "at": time_text(at), "kind": kind, "title": event_title(e), "detail": detail.join(" · ") })));
    }
    let opened = ms(&inc["opened_at"]).unwrap_or(0);
    let end = ms(&inc["resolved_at"]).map_or(i64::MAX, |r| r + 3_600_000);
    let subject = subject_key(&inc["subject"]);
    for n in notifications["notifications"].as_array().into_iter().flatten() {
        let at = ms(&n["created_at"]).unwrap_or(0);
        if n["subject"].as_str() != Some(subject.as_str()) || at < opened - 60_000 || at > end {
            continue;
        }
        let state = n["state"].as_str().unwrap_or_default();
        let mut detail = format!("{} notification via {}: {}", n["status"].as_str().unwrap_or_default(), n["receiver"].as_str().unwrap_or_default(), state.replace('_', " "));
        if let Some(err) = n["last_error"].as_str() {
            detail.push_str(&format!(" (attempts {}, last error: {err})", n["attempts"]));
        }
        items.push((at, json!({ "at": time_text(at), "kind": format!("notification {state}"), "title": n["rule"], "detail": detail })));
    }
    items.sort_by_key(|(at, _)| *at);
    items.into_iter().map(|(_, v)| v).collect()
}

/// A subject's canonical key (`{service="checkout"}`), as notifications carry it.
fn subject_key(subject: &Value) -> String {
    let labels = subject.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()));
    crate::engine::Subject::new(labels).key().to_string()
}

/// Drafts from `GET /api/v1/incidents/{id}/drafts`, newest first (at most 3): each with its
/// texts per audience (status page first) and whether it was approved and published.
pub fn drafts(v: &Value) -> Value {
    let mut list = v["drafts"].as_array().cloned().unwrap_or_default();
    list.reverse();
    Value::Array(
        list.into_iter()
            .take(3)
            .map(|d| {
                let mut texts: Vec<Value> = d["audiences"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, t)| json!({ "audience": k.replace('_', " "), "key": k, "text": t.as_str().unwrap_or_default() }))
                    .collect();
                texts.sort_by_key(|t| t["key"] != "status_page");
                let publication = &d["publication"];
                json!({
                    "n": d["n"],
                    "rule": d["rule"],
                    "created": ms(&d["created_at"]).map(time_text),
                    "next_update_by": d["next_update_by"],
                    "texts": texts,
                    "publishable": d["audiences"]["status_page"].is_string() && publication.is_null(),
                    "publication": publication.as_object().map(|_| format!("{}{}", publication["state"].as_str().unwrap_or("approved"), publication["published_at"].as_str().map(|t| format!(" at {t}")).unwrap_or_default())),
                })
            })
            .collect(),
    )
}

/// A confirmation after an action.
pub fn done_text(kind: &str) -> String {
    match kind {
        "publish" => "Draft published.".into(),
        k => format!("Recorded: {}.", k.replace('_', " ")),
    }
}

/// Groups and rules from `GET /api/v1/rules`, with instance counts.
pub fn rules(v: &Value) -> Value {
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    Value::Array(
        groups
            .into_iter()
            .map(|g| {
                let rules: Vec<Value> = g["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let inst = r["instances"].as_array().cloned().unwrap_or_default();
                        let count = |p: &str| inst.iter().filter(|i| i["state"] == p).count();
                        let instances: Vec<Value> = inst
                            .iter()
                            .map(|i| {
                                let subj = i["subject"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",");
                                json!({ "subject": subject_text(&i["subject"]), "query": subj, "state": i["state"], "since": ms(&i["since"]).map(time_text) })
                            })
                            .collect();
                        let unknown: Vec<Value> = match &r["unknown"] {
                            Value::Object(m) => m.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0).map(|(k, n)| json!({ "reason": k.replace('_', " "), "count": n })).collect(),
                            _ => Vec::new(),
                        };
                        json!({
                            "name": r["name"], "action": r["action"], "severity": r["severity"], "when": r["when"],
                            "for": r["for"], "state": r["state"], "firing": count("firing"), "pending": count("pending"),
                            "unknown": unknown, "instances": instances,
                        })
                    })
                    .collect();
                json!({ "name": g["name"], "interval": g["interval"], "subject": g["subject"], "rules": rules })
            })
            .collect(),
    )
}

/// The explain answer (`GET /api/v1/rules/{rule}/explain`) as a page shows it: per evaluation,
/// the instance state, `for` / `keep_firing_for` progress, each signal's value or why it has
/// none, and the condition's clauses (flattened with their depth) with their truth.
pub fn explain(v: &Value) -> Value {
    fn clauses(c: &Value, depth: usize, out: &mut Vec<Value>) {
        if c.is_null() {
            return;
        }
        out.push(json!({ "text": c["text"], "truth": c["truth"], "indent": depth * 2 }));
        for sub in c["clauses"].as_array().into_iter().flatten() {
            clauses(sub, depth + 1, out);
        }
    }
    let progress = |p: &Value| {
        p.as_object().map(|_| {
            let (e, n) = (p["elapsed_s"].as_f64().unwrap_or(0.0), p["needed_s"].as_f64().unwrap_or(0.0));
            format!("{} of {}", duration_text((e * 1000.0) as i64), duration_text((n * 1000.0) as i64))
        })
    };
    let evals: Vec<Value> = v["evaluations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut rows = Vec::new();
            clauses(&e["when"], 0, &mut rows);
            let signals: Vec<Value> = e["signals"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| json!({ "name": s["name"], "value": s["value"].as_f64().map(|x| format!("{x}")), "why": s["why"] }))
                .collect();
            let incident = e["incident"].as_object().map(|_| {
                json!({ "id": e["incident"]["id"], "status": e["incident"]["status"], "resolve_after": progress(&e["incident"]["resolve_after"]), "by_person": e["incident"]["status_by_person"] })
            });
            json!({
                "at": e["at"].as_i64().map(time_text),
                "state": e["state"],
                "unknown_reason": e["unknown_reason"],
                "for": progress(&e["for"]),
                "keep_firing_for": progress(&e["keep_firing_for"]),
                "signals": signals,
                "clauses": rows,
                "incident": incident,
            })
        })
        .collect();
    json!({ "when": v["when"], "group": v["group"], "evaluations": evals })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn targets() -> ConsoleConfig {
        ConsoleConfig { first_update_due: Duration::from_secs(900), update_due: Duration::from_secs(1800) }
    }

    #[test]
    fn the_next_update_follows_the_practice() {
        let mut inc = json!({ "open": true, "opened_at": "2026-01-01T00:00:00Z", "public_updates": 0 });
        let t0 = ms(&inc["opened_at"]).unwrap();
        assert_eq!(next_update_due(&inc, &targets()), Ok((t0 + 900_000, "first public update")));
        inc["public_updates"] = json!(2);
        inc["last_public_update_at"] = json!("2026-01-01T00:20:00Z");
        assert_eq!(next_update_due(&inc, &targets()), Ok((t0 + 20 * 60_000 + 1_800_000, "next public update")));
        inc["legal_hold"] = json!(true);
        assert!(next_update_due(&inc, &targets()).is_err(), "no public prompt while legal holds");
        inc["open"] = json!(false);
        assert_eq!(next_update_due(&inc, &targets()), Err("resolved"));
    }

    #[test]
    fn cards_say_overdue_in_words_not_only_colour() {
        let inc = json!({ "id": "INC-1", "open": true, "opened_at": "2026-01-01T00:00:00Z", "public_updates": 0, "subject": {"service": "checkout"} });
        let t0 = ms(&inc["opened_at"]).unwrap();
        let c = card(&inc, &json!({"signals": {"affected_ratio": [{"value": 0.12}]}}), &targets(), t0 + 16 * 60_000);
        assert_eq!(c["due"]["overdue"], true);
        assert_eq!(c["due"]["text"], "overdue by 1m 00s");
        assert_eq!(c["affected"], "12.0%");
        assert_eq!(c["subject"], "service=checkout");
        let c = card(&inc, &Value::Null, &targets(), t0 + 60_000);
        assert_eq!(c["due"]["text"], "due in 14m 00s");
    }

    #[test]
    fn redirects_stay_on_this_site() {
        assert_eq!(safe_next(Some(&"/incidents/INC-1".to_string())), "/incidents/INC-1");
        assert_eq!(safe_next(Some(&"//evil.example/x".to_string())), "/");
        assert_eq!(safe_next(Some(&"https://evil.example".to_string())), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_timeline_merges_events_and_the_subjects_notifications() {
        let inc = json!({
            "subject": {"service": "checkout"}, "opened_at": "2026-01-01T00:00:00Z",
            "events": [{"at": "2026-01-01T00:05:00Z", "type": "public_update", "channel": "status_page"}]
        });
        let n = json!({"notifications": [
            {"created_at": "2026-01-01T00:00:01Z", "subject": "{service=\"checkout\"}", "rule": "ActivateCommsLead", "status": "firing", "receiver": "pager", "state": "sent"},
            {"created_at": "2026-01-01T00:00:01Z", "subject": "{service=\"search\"}", "rule": "ActivateCommsLead", "status": "firing", "receiver": "pager", "state": "sent"}
        ]});
        let t = timeline(&inc, &n);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0]["title"], "ActivateCommsLead");
        assert_eq!(t[1]["title"], "Public update posted (status page)");
    }
}

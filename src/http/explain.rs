//! `GET /api/v1/rules/{rule}/explain?subject=service=checkout`: why a rule does or does not
//! fire for one subject (see [`crate::engine::explain`]). The first request answers from the
//! group's last evaluation and starts recording the pair: later requests show the last
//! evaluations (up to [`EXPLAIN_HISTORY`](crate::shared::EXPLAIN_HISTORY)), oldest first.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{blocking, rfc3339, ApiError};
use crate::shared::Shared;
use crate::engine::explain::explain;
use crate::engine::Subject;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExplainQuery {
    /// `label=value,label=value` or the canonical `{label="value"}`.
    subject: String,
}

/// Parses `service=checkout,region=eu` (values without commas) or `{service="checkout"}`.
pub fn parse_subject(s: &str) -> Result<Subject, String> {
    let s = s.trim();
    if s.starts_with('{') {
        return Subject::parse_key(s).ok_or_else(|| format!("invalid subject {s:?}: expected {{label=\"value\",...}}"));
    }
    let mut labels = Vec::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("invalid subject {s:?}: expected label=value,label=value"))?;
        labels.push((k.trim().to_string(), v.to_string()));
    }
    if labels.is_empty() {
        return Err("subject is empty: expected label=value,label=value".into());
    }
    Ok(Subject::new(labels))
}

pub(super) async fn explain_rule(State(shared): State<Arc<Shared>>, Path(rule): Path<String>, Query(q): Query<ExplainQuery>) -> Result<Json<Value>, ApiError> {
    let subject = parse_subject(&q.subject).map_err(ApiError::bad_request)?;
    let config = shared.config();
    let Some((gi, ri)) = config.rules.groups.iter().enumerate().find_map(|(gi, g)| g.rules.iter().position(|r| r.name == rule).map(|ri| (gi, ri))) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no rule named {rule:?}")));
    };
    let group = &config.rules.groups[gi];
    if !subject.has_label_names(&group.subject_labels) {
        return Err(ApiError::bad_request(format!("subject {subject} does not have this group's subject labels [{}]", group.subject_labels.join(", "))));
    }
    let last = shared.last_inputs.lock().expect("last inputs lock").get(&group.name).cloned();
    let Some((at, input)) = last else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("group {:?} has not been evaluated yet", group.name)));
    };
    let config2 = config.clone();
    let key = (rule.clone(), subject.clone());
    let shared2 = shared.clone();
    let mut history: Vec<_> = blocking(move || {
        let g = &config2.rules.groups[gi];
        let core = shared2.core.lock().expect("core lock");
        let mut watch = shared2.explain_watch.lock().expect("explain watch lock");
        if let Some(log) = watch.get(&key).filter(|l| !l.is_empty()) {
            return Ok(log.iter().cloned().collect());
        }
        // Not recorded yet: the last evaluation now, and record from the next one on.
        if watch.len() >= crate::shared::EXPLAIN_WATCH_MAX {
            if let Some(k) = watch.keys().next().cloned() {
                watch.remove(&k);
            }
        }
        let first = explain(g, &g.rules[ri], &subject, &input, &core.state, at);
        watch.insert(key, std::collections::VecDeque::from([first.clone()]));
        Ok(vec![first])
    })
    .await?;
    let evaluations: Vec<Value> = history
        .drain(..)
        .map(|e| {
            let mut v = serde_json::to_value(&e).unwrap_or_default();
            v["at"] = rfc3339(e.at).into();
            v["text"] = e.text().into();
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "group": group.name, "rule": rule, "when": group.rules[ri].when_src, "evaluations": evaluations })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_in_both_spellings() {
        let a = parse_subject("service=checkout,region=eu").unwrap();
        assert_eq!(a, Subject::new([("service", "checkout"), ("region", "eu")]));
        assert_eq!(parse_subject(r#"{region="eu",service="checkout"}"#).unwrap(), a);
        assert!(parse_subject("service").is_err());
        assert!(parse_subject("").is_err());
    }
}

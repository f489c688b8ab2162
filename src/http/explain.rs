//! `GET /api/v1/rules/{rule}/explain?subject=service=checkout`: why a rule does or does not
//! fire for one subject, from the group's last evaluation (see [`crate::engine::explain`]).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{blocking, rfc3339, ApiError};
use crate::daemon::Shared;
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
    let e = blocking(move || {
        let g = &config2.rules.groups[gi];
        let core = shared.core.lock().expect("core lock");
        Ok(explain(g, &g.rules[ri], &subject, &input, &core.state, at))
    })
    .await?;
    let text = e.text();
    let mut v = serde_json::to_value(&e).map_err(ApiError::internal)?;
    v["at"] = rfc3339(e.at).into();
    v["text"] = text.into();
    Ok(Json(serde_json::json!({ "group": group.name, "rule": rule, "when": group.rules[ri].when_src, "evaluations": [v] })))
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

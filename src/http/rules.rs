//! `GET /api/v1/rules`: the running groups and rules, with the state of every live instance.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{blocking, rfc3339, ApiError};
use crate::config::PromDuration;
use crate::shared::Shared;
use crate::engine::Phase;

pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let config = shared.config();
    let planner = shared.planner.read().expect("planner lock").clone();
    let groups = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        let groups: Vec<Value> = config
            .rules
            .groups
            .iter()
            .map(|g| {
                let interval = g.interval_or(config.global.evaluation_interval);
                let rules: Vec<Value> = g
                    .rules
                    .iter()
                    .map(|r| {
                        let mut instances: Vec<(&crate::engine::Subject, &crate::engine::Instance)> =
                            core.state.instances.get(&r.name).map(|m| m.iter().collect()).unwrap_or_default();
                        instances.sort_by(|a, b| a.0.cmp(b.0));
                        let state = if instances.iter().any(|(_, i)| i.phase == Phase::Firing) {
                            Phase::Firing
                        } else if instances.is_empty() {
                            Phase::Inactive
                        } else {
                            Phase::Pending
                        };
                        let instances: Vec<Value> = instances
                            .iter()
                            .map(|(s, i)| {
                                let since = if i.phase == Phase::Firing { i.fired_at.unwrap_or(i.active_at) } else { i.active_at };
                                json!({
                                    "subject": planner.scrubber().subject(s).as_ref(),
                                    "state": i.phase.as_str(),
                                    "since": rfc3339(since),
                                    "active_at": rfc3339(i.active_at),
                                    "fired_at": i.fired_at.map(rfc3339),
                                })
                            })
                            .collect();
                        json!({
                            "name": r.name,
                            "action": r.action.as_str(),
                            "severity": r.severity.as_str(),
                            "when": r.when_src,
                            "for": PromDuration(r.for_).to_string(),
                            "keep_firing_for": PromDuration(r.keep_firing_for).to_string(),
                            "notify": r.notify,
                            "labels": r.labels,
                            "annotations": r.annotations,
                            "location": r.location.to_string(),
                            "state": state.as_str(),
                            "instances": instances,
                        })
                    })
                    .collect();
                json!({
                    "name": g.name,
                    "file": g.location.path,
                    "interval": PromDuration(interval).to_string(),
                    "subject": g.subject_labels,
                    "rules": rules,
                })
            })
            .collect();
        Ok(groups)
    })
    .await?;
    Ok(Json(json!({ "groups": groups })))
}

//! Herald's own metrics (spec §8): the process-wide Prometheus recorder, the `# HELP` texts,
//! and the comms metrics driven by incident events.
//!
//! The recorder is installed once per process ([`install`] is idempotent, so tests that start
//! the daemon twice in one process work). Every histogram has buckets, so it renders as a
//! Prometheus histogram, never as a summary. The owner of the returned handle must call
//! [`PrometheusHandle::run_upkeep`] periodically ([`upkeep`] does it).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::Severity;
use crate::engine::{Channel, Effect, Incident};

/// Buckets of the comms histograms: human reaction times, one minute to one day.
pub const COMMS_BUCKETS: [f64; 13] = [60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0];

/// Buckets of every other histogram: machine latencies, 5 ms to one minute.
pub const DEFAULT_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0];

/// The histograms measured in minutes to hours.
pub const COMMS_HISTOGRAMS: [&str; 4] = [
    "herald_first_update_latency_seconds",
    "herald_update_interval_seconds",
    "herald_ack_latency_seconds",
    "herald_legal_review_seconds",
];

/// How often [`upkeep`] drains the histogram buffers.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder (first call only) and returns its handle. Also registers the
/// HELP texts and the series whose labels are known up front. If another recorder was already
/// installed in this process, the returned handle belongs to a recorder that is not global
/// (it renders only what is registered here) and a warning is logged.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(COMMS_HISTOGRAMS[0].into()), &COMMS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMS_HISTOGRAMS[1].into()), &COMMS_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMS_HISTOGRAMS[2].into()), &COMMS_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMS_HISTOGRAMS[3].into()), &COMMS_BUCKETS))
            .and_then(|b| b.set_buckets(&DEFAULT_BUCKETS))
            .expect("static, non-empty bucket lists");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed in this process; /metrics will be incomplete");
        }
        describe_all();
        register_known_series();
        handle
    })
}

/// Calls `run_upkeep` every [`UPKEEP_INTERVAL`] until `stop` is cancelled.
pub async fn upkeep(handle: &'static PrometheusHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

fn describe_all() {
    describe_gauge!("herald_incidents_open", "Incidents currently open.");
    describe_counter!("herald_comms_lead_activations_total", "Incidents opened by rules (comms lead activated), by severity.");
    describe_counter!("herald_decisions_total", "Decisions (rules starting to fire), by rule, action and severity.");
    describe_gauge!("herald_rule_firing", "Rule instances currently firing, by rule and action.");
    describe_histogram!("herald_first_update_latency_seconds", Unit::Seconds, "Time from incident open to its first public update.");
    describe_histogram!("herald_update_interval_seconds", Unit::Seconds, "Time between consecutive public updates of an incident.");
    describe_counter!("herald_public_updates_total", "Updates posted, by channel (internal included, labelled as such).");
    describe_counter!("herald_update_corrections_total", "Corrections of earlier updates.");
    describe_histogram!("herald_ack_latency_seconds", Unit::Seconds, "Time from incident open to its acknowledgement.");
    describe_gauge!("herald_ticket_ratio", "Support tickets over their baseline, by subject.");
    describe_counter!("herald_notifications_total", "Notifications by receiver and outcome (sent, failed, retried, suppressed, dry_run).");
    describe_counter!("herald_false_notifications_total", "Incidents marked false positive.");
    describe_histogram!("herald_legal_review_seconds", Unit::Seconds, "Time from legal review requested to approved.");
    describe_counter!("herald_incidents_resolved_total", "Incidents resolved, by severity and whether a postmortem was published.");
    describe_gauge!("herald_rule_group_last_duration_seconds", Unit::Seconds, "Duration of the last evaluation of a rule group.");
    describe_counter!("herald_rule_evaluations_total", "Rule group evaluations.");
    describe_counter!("herald_rule_evaluation_failures_total", "Rule group evaluations with at least one signal unavailable.");
    describe_gauge!("herald_datasource_up", "1 when every query of the group's last evaluation succeeded (0 until its first evaluation).");
    describe_histogram!("herald_datasource_query_duration_seconds", Unit::Seconds, "Duration of datasource queries.");
    describe_gauge!("herald_outbox_pending", "Notifications waiting for delivery.");
    describe_histogram!("herald_notification_delivery_seconds", Unit::Seconds, "Duration of notification delivery attempts, by receiver.");
    describe_gauge!("herald_config_last_reload_successful", "1 when the last configuration (re)load succeeded.");
    describe_gauge!("herald_build_info", "Always 1; the version is a label.");
    describe_gauge!("herald_rule_unknown", "Subjects whose rule condition is unknown now, by rule and reason (absent, query_failed, nan, division_by_zero).");
    describe_gauge!("herald_signal_series", "Series the signal's last query returned, by group and signal (0: a typo or a missing metric, not \"all is well\").");
    describe_counter!("herald_state_write_failures_total", "Failed writes of the state database (/-/ready answers 503 until a save succeeds again).");
}

/// Registers the series whose labels come from the configuration, so they exist from start
/// and after a reload that adds rules or signals: evaluation failures, unknown rules and
/// `herald_signal_series{group,signal}` for every query signal. Adds zero, so a reload keeps
/// the current values ([`register_group`] sets the start values once).
pub fn register_config_series(config: &crate::config::Config) {
    metrics::counter!("herald_state_write_failures_total").increment(0);
    for g in &config.rules.groups {
        metrics::counter!("herald_rule_evaluation_failures_total", "group" => g.name.clone()).increment(0);
        for r in &g.rules {
            for reason in crate::engine::UnknownReason::ALL {
                metrics::gauge!("herald_rule_unknown", "rule" => r.name.clone(), "reason" => reason.as_str()).increment(0.0);
            }
        }
        for s in g.signals.iter().filter(|s| matches!(s.source, crate::config::SignalSource::Query(_))) {
            metrics::gauge!("herald_signal_series", "group" => g.name.clone(), "signal" => s.name.clone()).increment(0.0);
        }
    }
}

/// A group's health series exist from start: evaluation failures at 0, the datasource down
/// until its first evaluation succeeds, no rule unknown yet.
pub fn register_group(group: &crate::config::Group) {
    metrics::counter!("herald_rule_evaluation_failures_total", "group" => group.name.clone()).increment(0);
    metrics::counter!("herald_rule_evaluations_total", "group" => group.name.clone()).increment(0);
    metrics::gauge!("herald_datasource_up", "group" => group.name.clone()).set(0.0);
    for r in &group.rules {
        for reason in crate::engine::UnknownReason::ALL {
            metrics::gauge!("herald_rule_unknown", "rule" => r.name.clone(), "reason" => reason.as_str()).set(0.0);
        }
    }
}

/// Series with labels known up front start at zero, so dashboards and `rate()` see them.
fn register_known_series() {
    metrics::gauge!("herald_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("herald_config_last_reload_successful").set(1.0);
    metrics::counter!("herald_update_corrections_total").absolute(0);
    metrics::counter!("herald_false_notifications_total").absolute(0);
    metrics::counter!("herald_state_write_failures_total").absolute(0);
    for h in COMMS_HISTOGRAMS {
        let _ = metrics::histogram!(h);
    }
    for c in Channel::ALL {
        metrics::counter!("herald_public_updates_total", "channel" => c.as_str()).absolute(0);
    }
    for s in Severity::ALL {
        metrics::counter!("herald_comms_lead_activations_total", "severity" => s.as_str()).absolute(0);
        for pm in ["true", "false"] {
            metrics::counter!("herald_incidents_resolved_total", "severity" => s.as_str(), "postmortem" => pm).absolute(0);
        }
    }
}

/// Counts a write to the state database that failed.
pub fn record_state_write_failure() {
    metrics::counter!("herald_state_write_failures_total").increment(1);
}

/// Records whether the last configuration (re)load succeeded.
pub fn set_reload_successful(ok: bool) {
    metrics::gauge!("herald_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
}

/// Records the comms metrics of one applied event. `incident` is the incident after the event;
/// `open` the number of open incidents after it.
pub fn record_effect(fx: &Effect, incident: &Incident, open: usize) {
    if let Some(s) = fx.first_update_latency {
        metrics::histogram!("herald_first_update_latency_seconds").record(s);
    }
    if let Some(s) = fx.update_interval {
        metrics::histogram!("herald_update_interval_seconds").record(s);
    }
    if let Some(c) = fx.public_update_channel {
        metrics::counter!("herald_public_updates_total", "channel" => c.as_str()).increment(1);
    }
    if let Some(s) = fx.ack_latency {
        metrics::histogram!("herald_ack_latency_seconds").record(s);
    }
    if let Some(s) = fx.legal_review {
        metrics::histogram!("herald_legal_review_seconds").record(s);
    }
    if fx.correction {
        metrics::counter!("herald_update_corrections_total").increment(1);
    }
    if fx.false_positive {
        metrics::counter!("herald_false_notifications_total").increment(1);
    }
    if fx.resolved {
        record_resolved(incident);
    }
    metrics::gauge!("herald_incidents_open").set(open as f64);
}

/// Counts a resolved incident, whether rules or a person resolved it.
pub fn record_resolved(incident: &Incident) {
    let pm = if incident.postmortem_published { "true" } else { "false" };
    metrics::counter!("herald_incidents_resolved_total", "severity" => incident.severity.as_str(), "postmortem" => pm).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Event, Subject};

    #[test]
    fn comms_histograms_render_as_histograms_with_minute_buckets() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(COMMS_HISTOGRAMS[2].into()), &COMMS_BUCKETS)
            .unwrap()
            .set_buckets(&DEFAULT_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let _ = metrics::histogram!("herald_legal_review_seconds");
        });
        let text = handle.render();
        assert!(text.contains("herald_legal_review_seconds_count 0"), "registered histograms render before a sample:\n{text}");
        let mut inc = Incident::open("INC-1".into(), Subject::new([("service", "a")]), Severity::Critical, 0, None);
        let fx = inc.apply(&Event::Ack, 90_000).unwrap();
        metrics::with_local_recorder(&recorder, || record_effect(&fx, &inc, 1));
        let text = handle.render();
        assert!(text.contains("herald_ack_latency_seconds_bucket{le=\"120\"} 1"), "{text}");
        assert!(text.contains("herald_ack_latency_seconds_bucket{le=\"60\"} 0"), "{text}");
        assert!(text.contains("herald_ack_latency_seconds_count 1"), "{text}");
        assert!(text.contains("herald_incidents_open 1"), "{text}");
        assert!(!text.contains("quantile"), "{text}");
    }
}

//! Receivers: from outbox entries (payload = a JSON [`Notification`]) and a receiver's
//! configuration to the HTTP request(s) to send, and from the answers to an [`Outcome`].
//!
//! Request per receiver type:
//! * `webhook` — the generic body (spec §6) with `Content-Type: application/json` and the
//!   configured headers; when a secret is set, Standard Webhooks headers signed per attempt
//!   (`webhook-id` = notification id on every try, `webhook-timestamp` = attempt time);
//! * `slack` — [`slack_message`](crate::notify::slack_message) to the incoming-webhook URL;
//! * `pagerduty` — Events API v2 (`trigger` / `resolve`, stable `dedup_key`) to the receiver URL;
//! * `teams` — an Adaptive Card ([`teams_message`](crate::notify::teams_message));
//! * `alertmanager` — `POST {url}/api/v2/alerts` to every peer; `endsAt` validity is
//!   4 × max(evaluation interval, 1m) and the worker re-sends while the rule fires;
//! * `log` — `{title, text}` for the log transport.
//!
//! Text receivers (slack, teams, log) may override the title/body templates per receiver
//! (`title`/`text` in the config). An override that fails to render at send time is logged and
//! replaced by the default for that part, so the message still goes out. Several notifications can be grouped into one chat
//! message ([`group_text`]).
//!
//! Answers ([`classify`]): 2xx delivered; 400/401/403/404/410/413/422, other 4xx except
//! 408/409/425/429, and 3xx are permanent (retrying cannot help); 429 retries honouring
//! `Retry-After`; 408, 409, 425, 5xx, timeouts and connection errors retry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::daemon::{Receiver, ReceiverKind};
use crate::notify::transport::{OutgoingRequest, Response, TransportError};
use crate::notify::{
    alertmanager_alerts, generic_webhook_body, pagerduty_event, signature_headers, slack_message,
    teams_message, Notification, RenderedText, Scrubber, SecretError, TemplateError, Templates,
    WebhookSecret,
};

/// Why a request could not be built. Permanent: the entry is marked failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// A default template failed (a receiver's own template falls back to the default).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The webhook secret is unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The stored payload is not a notification.
    #[error("outbox payload is not a notification: {0}")]
    Payload(#[from] serde_json::Error),
    /// Nothing to send.
    #[error("no notification to send")]
    Empty,
}

/// What marks a rehearsal message's title (and, for template overrides, its text).
pub const DRY_RUN_PREFIX: &str = "[DRY RUN]";

/// Whether a text receiver type (messages can be grouped).
pub fn is_chat(kind: &ReceiverKind) -> bool {
    matches!(
        kind,
        ReceiverKind::Slack { .. } | ReceiverKind::Teams { .. } | ReceiverKind::Log
    )
}

/// What the builder needs besides the notification.
#[derive(Clone, Copy, Debug)]
pub struct BuildContext<'a> {
    /// Attempt time (signing timestamp, Alertmanager `endsAt`).
    pub now: DateTime<Utc>,
    /// The rule group's evaluation interval (Alertmanager validity).
    pub eval_interval: Duration,
    /// Scrubs rendered text (the payload was scrubbed when planned).
    pub scrubber: Option<&'a Scrubber>,
    /// Running in dry-run: every message is marked as a rehearsal ("[DRY RUN]" titles).
    pub dry_run: bool,
}

/// The validity Herald gives an alert it sends to Alertmanager: 4 × max(interval, 1m).
pub fn alertmanager_validity(eval_interval: Duration) -> Duration {
    4 * eval_interval.max(Duration::from_secs(60))
}

/// How often a firing alert is re-sent to Alertmanager: max(interval, 1m).
pub fn alertmanager_resend(eval_interval: Duration) -> Duration {
    eval_interval.max(Duration::from_secs(60))
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "warning" => 1,
        "info" => 2,
        _ => 3,
    }
}

/// One chat message for several notifications of one subject: the most severe first, each
/// with its headline (impact) then its body. The title is the first one's, plus a count.
pub fn group_text(items: &mut [(Notification, RenderedText)]) -> RenderedText {
    items.sort_by_key(|(n, _)| severity_rank(&n.severity));
    if items.len() == 1 {
        return items[0].1.clone();
    }
    let title = format!("{} (+{} more)", items[0].1.title, items.len() - 1);
    let text = items
        .iter()
        .enumerate()
        .map(|(i, (_, r))| {
            let body = r
                .text
                .strip_prefix(r.title.as_str())
                .unwrap_or(&r.text)
                .trim_start();
            format!("{}. {}\n{}", i + 1, r.title, body)
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    RenderedText { title, text }
}

fn render(
    receiver: &Receiver,
    n: &Notification,
    ctx: &BuildContext<'_>,
) -> Result<RenderedText, ReceiverError> {
    let mut r = render_or_default(receiver, n)?;
    if n.dry_run {
        // The default templates mark rehearsals; make sure overrides do too.
        if !r.title.starts_with(DRY_RUN_PREFIX) {
            r.title = format!("{DRY_RUN_PREFIX} {}", r.title);
        }
        if !r.text.to_lowercase().contains("dry run") {
            r.text = format!("{DRY_RUN_PREFIX} {}", r.text);
        }
        // A game day marks its messages "[GAME DAY]" instead.
        let prefix = crate::rehearsal::prefix();
        if prefix != DRY_RUN_PREFIX {
            r.title = r.title.replacen(DRY_RUN_PREFIX, prefix, 1);
            r.text = r.text.replacen(DRY_RUN_PREFIX, prefix, 1).replace("dry run, no action needed", "game day, no action needed");
        }
    }
    if let Some(s) = ctx.scrubber {
        s.scrub_rendered_for(&mut r, n);
    }
    Ok(r)
}

/// Renders the receiver's templates; a part whose template fails (it passed `check`, so the
/// data is at fault: a signal without a value, say) falls back to the default template, and
/// the error is logged. Only a failing default (a bug) is an error.
fn render_or_default(receiver: &Receiver, n: &Notification) -> Result<RenderedText, ReceiverError> {
    let defaults = Templates::new();
    let (title, text) = (receiver.title_template.as_deref(), receiver.text_template.as_deref());
    if title.is_none() && text.is_none() {
        return Ok(defaults.render(n)?);
    }
    let log = |e: &TemplateError| {
        tracing::error!(receiver = %receiver.name, id = %n.id, rule = %n.rule, error = %e, "receiver template failed; sending the default message instead");
    };
    let t = match Templates::with_overrides(title, text) {
        Ok(t) => t,
        Err(e) => {
            log(&e);
            return Ok(defaults.render(n)?);
        }
    };
    let title = t.render_title(n).or_else(|e| {
        log(&e);
        defaults.render_title(n)
    })?;
    let text = t.render_text(n).or_else(|e| {
        log(&e);
        defaults.render_text(n)
    })?;
    Ok(RenderedText { title, text })
}

fn post(
    receiver: &Receiver,
    url: String,
    body: &serde_json::Value,
    extra: Vec<(String, String)>,
) -> OutgoingRequest {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(receiver.headers.iter().cloned());
    headers.extend(extra);
    OutgoingRequest {
        receiver: receiver.name.clone(),
        method: "POST".into(),
        url,
        headers,
        body: serde_json::to_vec(body).unwrap_or_default(),
        timeout: receiver.timeout,
        preview: None,
    }
}

/// Parses stored payloads (applying the run's dry-run flag).
pub fn parse_payloads<'a>(
    payloads: impl IntoIterator<Item = &'a str>,
    dry_run: bool,
) -> Result<Vec<Notification>, ReceiverError> {
    payloads
        .into_iter()
        .map(|p| {
            let mut n: Notification = serde_json::from_str(p)?;
            n.dry_run |= dry_run;
            Ok(n)
        })
        .collect()
}

/// Builds the request(s) for one delivery: one notification, or for chat receivers possibly
/// several grouped into one message. Alertmanager yields one request per peer (delivered when
/// at least one accepts); others yield exactly one.
pub fn build_requests(
    receiver: &Receiver,
    notifications: &[Notification],
    ctx: &BuildContext<'_>,
) -> Result<Vec<OutgoingRequest>, ReceiverError> {
    let first = notifications.first().ok_or(ReceiverError::Empty)?;
    let mut reqs = requests_for(receiver, first, notifications, ctx)?;
    if ctx.dry_run {
        let preview = rendered(receiver, notifications, ctx).map(|t| (t.title, t.text)).ok();
        for r in &mut reqs {
            r.preview.clone_from(&preview);
        }
    }
    Ok(reqs)
}

/// The rendered text of one delivery (grouped as chat receivers group it).
fn rendered(receiver: &Receiver, notifications: &[Notification], ctx: &BuildContext<'_>) -> Result<RenderedText, ReceiverError> {
    let mut items = notifications
        .iter()
        .map(|n| Ok((n.clone(), render(receiver, n, ctx)?)))
        .collect::<Result<Vec<_>, ReceiverError>>()?;
    Ok(group_text(&mut items))
}

fn requests_for(
    receiver: &Receiver,
    first: &Notification,
    notifications: &[Notification],
    ctx: &BuildContext<'_>,
) -> Result<Vec<OutgoingRequest>, ReceiverError> {
    Ok(match &receiver.kind {
        ReceiverKind::Webhook { url, secret } => {
            let body = serde_json::to_vec(&generic_webhook_body(first))?;
            let mut req = post(receiver, url.clone(), &serde_json::Value::Null, vec![]);
            req.body = body;
            if let Some(secret) = secret {
                let secret = WebhookSecret::new(secret)?;
                let h = signature_headers(&secret, &first.id, ctx.now.timestamp(), &req.body);
                req.headers.extend(
                    h.to_pairs()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string())),
                );
            }
            vec![req]
        }
        ReceiverKind::PagerDuty { url, routing_key } => {
            let title = render(receiver, first, ctx)?.title;
            vec![post(
                receiver,
                url.clone(),
                &pagerduty_event(first, routing_key, &title),
                vec![],
            )]
        }
        ReceiverKind::Alertmanager { urls } => {
            let validity = chrono::Duration::from_std(alertmanager_validity(ctx.eval_interval))
                .unwrap_or_else(|_| chrono::Duration::minutes(4));
            let generator = first.incident.as_ref().and_then(|i| i.url.as_deref());
            let body = alertmanager_alerts(first, generator, validity, ctx.now);
            urls.iter()
                .map(|u| {
                    post(
                        receiver,
                        format!("{}/api/v2/alerts", u.trim_end_matches('/')),
                        &body,
                        vec![],
                    )
                })
                .collect()
        }
        ReceiverKind::Slack { url } | ReceiverKind::Teams { url } => {
            let text = rendered(receiver, notifications, ctx)?;
            // group_text leads with the most severe notification.
            let lead = notifications.iter().min_by_key(|n| severity_rank(&n.severity)).unwrap_or(first);
            let body = if matches!(receiver.kind, ReceiverKind::Slack { .. }) {
                slack_message(lead, &text)
            } else {
                teams_message(lead, &text)
            };
            vec![post(receiver, url.clone(), &body, vec![])]
        }
        ReceiverKind::Log => {
            let text = rendered(receiver, notifications, ctx)?;
            let mut req = post(
                receiver,
                "log:".into(),
                &json!({"title": text.title, "text": text.text}),
                vec![],
            );
            req.headers.truncate(1);
            vec![req]
        }
    })
}

/// What an answer means for the outbox entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// Retrying cannot help; the message says why.
    Permanent(String),
    /// Try again later (no earlier than `retry_after` when given).
    Retry {
        /// What went wrong.
        error: String,
        /// The receiver's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

/// Classifies one answer (see the module doc).
pub fn classify(result: &Result<Response, TransportError>) -> Outcome {
    match result {
        Ok(r) if (200..300).contains(&r.status) => Outcome::Delivered,
        Ok(r) => {
            let msg = if r.body_snippet.is_empty() {
                format!("HTTP {}", r.status)
            } else {
                format!("HTTP {}: {}", r.status, r.body_snippet)
            };
            match r.status {
                408 | 409 | 425 | 429 => Outcome::Retry {
                    error: msg,
                    retry_after: r.retry_after,
                },
                s if s >= 500 => Outcome::Retry {
                    error: msg,
                    retry_after: r.retry_after,
                },
                _ => Outcome::Permanent(format!("{msg} (permanent, not retried)")),
            }
        }
        Err(e) if e.is_retryable() => Outcome::Retry {
            error: e.to_string(),
            retry_after: None,
        },
        Err(e) => Outcome::Permanent(e.to_string()),
    }
}

/// Combines the answers of several peers where one acceptance is enough (Alertmanager HA):
/// delivered if any peer accepted; else retry if any peer may accept later; else permanent.
/// Also returns the per-peer errors (`peer N: …`), empty when every peer accepted.
pub fn combine_any(outcomes: &[Outcome]) -> (Outcome, Vec<String>) {
    let errors: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Delivered => None,
            Outcome::Permanent(e) | Outcome::Retry { error: e, .. } => {
                Some(format!("peer {}: {e}", i + 1))
            }
        })
        .collect();
    if outcomes.contains(&Outcome::Delivered) {
        return (Outcome::Delivered, errors);
    }
    let retry_after = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Retry { retry_after, .. } => Some(*retry_after),
            _ => None,
        })
        .collect::<Vec<_>>();
    let joined = errors.join("; ");
    if retry_after.is_empty() {
        (Outcome::Permanent(joined), errors)
    } else {
        (
            Outcome::Retry {
                error: joined,
                retry_after: retry_after.into_iter().flatten().min(),
            },
            errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> Result<Response, TransportError> {
        Ok(Response {
            status,
            retry_after: None,
            body_snippet: String::new(),
        })
    }

    #[test]
    fn classification_follows_the_receiver_docs() {
        assert_eq!(classify(&resp(200)), Outcome::Delivered);
        assert_eq!(classify(&resp(202)), Outcome::Delivered);
        for s in [400, 401, 403, 404, 410, 413, 422, 301] {
            assert!(matches!(classify(&resp(s)), Outcome::Permanent(_)), "{s}");
        }
        for s in [429, 500, 502, 503, 504, 408] {
            assert!(matches!(classify(&resp(s)), Outcome::Retry { .. }), "{s}");
        }
        assert!(matches!(
            classify(&Err(TransportError::Timeout)),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(&Err(TransportError::Connect("refused".into()))),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(&Err(TransportError::Invalid("bad url".into()))),
            Outcome::Permanent(_)
        ));
    }

    #[test]
    fn one_peer_is_enough() {
        let retry = Outcome::Retry {
            error: "HTTP 503".into(),
            retry_after: None,
        };
        let (o, errs) = combine_any(&[retry.clone(), Outcome::Delivered]);
        assert_eq!(o, Outcome::Delivered);
        assert_eq!(errs, vec!["peer 1: HTTP 503".to_string()]);
        assert!(matches!(
            combine_any(&[retry.clone(), Outcome::Permanent("HTTP 400".into())]).0,
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            combine_any(&[Outcome::Permanent("x".into())]).0,
            Outcome::Permanent(_)
        ));
    }

    fn log_receiver(title: Option<&str>) -> Receiver {
        Receiver {
            name: "log".into(),
            kind: ReceiverKind::Log,
            headers: vec![],
            timeout: Duration::from_secs(1),
            send_resolved: None,
            dry_run_target: true,
            max_retry_duration: None,
            concurrency: 1,
            title_template: title.map(str::to_string),
            text_template: Some("custom body for {{ rule }}".into()),
        }
    }

    #[test]
    fn overrides_are_used_and_dry_runs_are_always_marked() {
        let n = crate::notify::message::tests::sample_firing();
        let ctx = BuildContext {
            now: Utc::now(),
            eval_interval: Duration::from_secs(30),
            scrubber: None,
            dry_run: true,
        };
        let ns = parse_payloads([serde_json::to_string(&n).unwrap().as_str()], true).unwrap();
        let req = &build_requests(&log_receiver(Some("LOG {{ rule }}")), &ns, &ctx).unwrap()[0];
        let body = req.json().unwrap();
        assert_eq!(body["title"], format!("[DRY RUN] LOG {}", n.rule));
        assert_eq!(
            body["text"],
            format!("[DRY RUN] custom body for {}", n.rule)
        );
        // Without overrides the default templates add the prefix themselves (once).
        let mut r = log_receiver(None);
        r.text_template = None;
        let body = build_requests(&r, &ns, &ctx).unwrap()[0].json().unwrap();
        let title = body["title"].as_str().unwrap();
        assert!(
            title.starts_with("[DRY RUN] ") && !title.starts_with("[DRY RUN] [DRY RUN]"),
            "{title}"
        );
    }

    #[test]
    fn alertmanager_validity_is_four_resends() {
        assert_eq!(
            alertmanager_validity(Duration::from_secs(30)),
            Duration::from_secs(240)
        );
        assert_eq!(
            alertmanager_validity(Duration::from_secs(120)),
            Duration::from_secs(480)
        );
    }
}

//! Slack incoming webhook body: `{text, blocks}`.
//!
//! `text` is the notification fallback (the title); the blocks are a header (the title), a
//! section with the body (impact first, as rendered by the templates), a link to the incident,
//! and a context line with severity, rule and subject. Text is escaped for Slack's mrkdwn
//! (`&`, `<`, `>`), and cut to Slack's block limits (header 150, section 3000 characters).

use serde_json::{json, Value};

use super::truncate_chars;
use crate::notify::message::Notification;
use crate::notify::template::{subject_text, RenderedText};

/// Slack's limit for a header block's text.
pub const MAX_HEADER_CHARS: usize = 150;
/// Slack's limit for a section block's text.
pub const MAX_SECTION_CHARS: usize = 3000;

/// Escapes the three characters Slack's mrkdwn treats as control characters.
pub fn escape_mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The incoming-webhook body for `n` with the rendered `text`.
pub fn slack_message(n: &Notification, text: &RenderedText) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate_chars(&text.title, MAX_HEADER_CHARS), "emoji": true}
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate_chars(&escape_mrkdwn(&text.text), MAX_SECTION_CHARS)}
        }),
    ];
    if let Some(inc) = &n.incident {
        let line = match &inc.url {
            Some(url) => format!(
                "<{}|Open incident {}> ({})",
                escape_mrkdwn(url),
                escape_mrkdwn(&inc.id),
                escape_mrkdwn(&inc.status)
            ),
            None => format!(
                "Incident {} ({})",
                escape_mrkdwn(&inc.id),
                escape_mrkdwn(&inc.status)
            ),
        };
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": line}}));
    }
    let mut context = format!(
        "*{}* · {} · {} · {}",
        escape_mrkdwn(&n.severity),
        n.status.as_str(),
        escape_mrkdwn(&n.rule),
        escape_mrkdwn(&subject_text(n))
    );
    if n.dry_run {
        context.push_str(" · dry run");
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));

    json!({
        "text": escape_mrkdwn(&text.title),
        "blocks": blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::{sample_firing, sample_resolved};

    fn rendered() -> RenderedText {
        RenderedText {
            title: "checkout: customers are affected".to_owned(),
            text: "checkout: customers are affected\n\nNext step: assign a comms lead.".to_owned(),
        }
    }

    #[test]
    fn firing_snapshot() {
        assert_eq!(
            slack_message(&sample_firing(), &rendered()),
            json!({
                "text": "checkout: customers are affected",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": "checkout: customers are affected", "emoji": true}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": "checkout: customers are affected\n\nNext step: assign a comms lead."}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": "<https://herald.example.com/incidents/INC-42|Open incident INC-42> (investigating)"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "*critical* · firing · ActivateCommsLead · checkout"}]}
                ]
            })
        );
    }

    #[test]
    fn resolved_without_incident_and_dry_run() {
        let mut n = sample_resolved();
        n.incident = None;
        n.dry_run = true;
        let body = slack_message(
            &n,
            &RenderedText {
                title: "Resolved".into(),
                text: "done".into(),
            },
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 3, "{body}");
        assert_eq!(
            blocks[2]["elements"][0]["text"],
            "*critical* · resolved · ActivateCommsLead · checkout · dry run"
        );
    }

    #[test]
    fn text_is_escaped_and_truncated() {
        let r = RenderedText {
            title: "a < b & c".repeat(30),
            text: "<!channel> x".repeat(500),
        };
        let body = slack_message(&sample_firing(), &r);
        assert!(body["text"]
            .as_str()
            .unwrap()
            .starts_with("a &lt; b &amp; c"));
        let section = body["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(section.starts_with("&lt;!channel&gt; x"), "{section}");
        assert_eq!(section.chars().count(), MAX_SECTION_CHARS);
        let header = body["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), MAX_HEADER_CHARS);
    }
}

//! Microsoft Teams Workflows ("Post to a channel when a webhook request is received") body: a
//! `message` with one Adaptive Card 1.4 attachment.
//!
//! The card has the title (bold, red while firing, green once resolved), the body text, a fact
//! set (status, severity, rule, action, subject, incident) and an `Action.OpenUrl` to the
//! incident when it has a URL. Whatever the label and annotation lengths, the serialized
//! message stays under Teams' 28 KB (28,672 bytes) limit: each fact value is cut to
//! [`MAX_FACT_CHARS`], the body text to [`MAX_TEXT_BYTES`], and if the whole message (JSON
//! escapes included) is still above [`MAX_MESSAGE_BYTES`] the body text, then the facts, are
//! cut further until it fits.

use serde_json::{json, Value};

use super::{truncate_bytes, truncate_chars};
use crate::notify::message::Notification;
use crate::notify::template::{subject_text, RenderedText};

/// Maximum bytes (UTF-8) of body text put in the card (Teams rejects messages above 28 KB).
pub const MAX_TEXT_BYTES: usize = 16_000;
/// Maximum characters of the title.
pub const MAX_TITLE_CHARS: usize = 300;
/// Maximum characters of one fact value (the subject can be long).
pub const MAX_FACT_CHARS: usize = 1000;
/// The serialized message Herald sends is at most this many bytes (Teams refuses more than
/// 28,672; the margin covers the Workflows envelope).
pub const MAX_MESSAGE_BYTES: usize = 27_000;

/// The Workflows webhook body for `n` with the rendered `text`.
pub fn teams_message(n: &Notification, text: &RenderedText) -> Value {
    let (mut text_bytes, mut fact_chars) = (MAX_TEXT_BYTES, MAX_FACT_CHARS);
    loop {
        let body = card(n, text, text_bytes, fact_chars);
        let size = serde_json::to_vec(&body).map_or(0, |b| b.len());
        if size <= MAX_MESSAGE_BYTES || (text_bytes == 0 && fact_chars <= 20) {
            return body;
        }
        let over = size - MAX_MESSAGE_BYTES;
        if text_bytes > 0 {
            // JSON escapes can make a byte of text cost up to six: cut what is over, and more.
            text_bytes = text_bytes.saturating_sub(over.max(256));
        } else {
            fact_chars = (fact_chars / 2).max(20);
        }
    }
}

fn card(n: &Notification, text: &RenderedText, text_bytes: usize, fact_chars: usize) -> Value {
    let firing = n.status == crate::notify::Status::Firing;
    let fact = |title: &str, value: &str| json!({"title": title, "value": truncate_chars(value, fact_chars)});
    let mut facts = vec![
        fact("Status", n.status.as_str()),
        fact("Severity", &n.severity),
        fact("Rule", &n.rule),
        fact("Action", &n.action),
        fact("Subject", &subject_text(n)),
    ];
    if let Some(inc) = &n.incident {
        facts.push(fact("Incident", &format!("{} ({})", inc.id, inc.status)));
    }
    if n.dry_run {
        facts.push(json!({"title": "Dry run", "value": "yes"}));
    }
    let mut actions = Vec::new();
    if let Some(inc) = &n.incident {
        if let Some(url) = &inc.url {
            actions.push(json!({"type": "Action.OpenUrl", "title": format!("Open incident {}", inc.id), "url": url}));
        }
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": truncate_chars(&text.title, MAX_TITLE_CHARS),
                        "size": "Large",
                        "weight": "Bolder",
                        "color": if firing { "Attention" } else { "Good" },
                        "wrap": true
                    },
                    {"type": "TextBlock", "text": truncate_bytes(&text.text, text_bytes), "wrap": true},
                    {"type": "FactSet", "facts": facts}
                ],
                "actions": actions
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::{sample_firing, sample_resolved};

    fn rendered() -> RenderedText {
        RenderedText {
            title: "checkout: customers are affected".into(),
            text: "Next step: assign a comms lead.".into(),
        }
    }

    #[test]
    fn firing_snapshot() {
        assert_eq!(
            teams_message(&sample_firing(), &rendered()),
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "text": "checkout: customers are affected", "size": "Large", "weight": "Bolder", "color": "Attention", "wrap": true},
                            {"type": "TextBlock", "text": "Next step: assign a comms lead.", "wrap": true},
                            {"type": "FactSet", "facts": [
                                {"title": "Status", "value": "firing"},
                                {"title": "Severity", "value": "critical"},
                                {"title": "Rule", "value": "ActivateCommsLead"},
                                {"title": "Action", "value": "activate_comms_lead"},
                                {"title": "Subject", "value": "checkout"},
                                {"title": "Incident", "value": "INC-42 (investigating)"}
                            ]}
                        ],
                        "actions": [
                            {"type": "Action.OpenUrl", "title": "Open incident INC-42", "url": "https://herald.example.com/incidents/INC-42"}
                        ]
                    }
                }]
            })
        );
    }

    #[test]
    fn resolved_is_green_and_without_url_has_no_action() {
        let mut n = sample_resolved();
        if let Some(i) = n.incident.as_mut() {
            i.url = None;
        }
        let body = teams_message(&n, &rendered());
        let card = &body["attachments"][0]["content"];
        assert_eq!(card["body"][0]["color"], "Good");
        assert_eq!(card["actions"], json!([]));
        assert_eq!(card["body"][2]["facts"][0]["value"], "resolved");
    }

    #[test]
    fn huge_text_stays_under_the_teams_limit() {
        let r = RenderedText {
            title: "t".repeat(1000),
            text: "€".repeat(100_000),
        };
        let body = teams_message(&sample_firing(), &r);
        let size = serde_json::to_vec(&body).unwrap().len();
        assert!(size < 24 * 1024, "card is {size} bytes");
        assert_eq!(
            body["attachments"][0]["content"]["body"][0]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            MAX_TITLE_CHARS
        );
    }
}

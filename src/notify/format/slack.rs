//! Slack incoming webhook body: `{text, blocks}`.
//!
//! `text` is the notification fallback (the title); the blocks are a header (the title), a
//! section with the body (impact first, as rendered by the templates), a link to the incident,
//! and a context line with severity, rule and subject. Text is escaped for Slack's mrkdwn
//! (`&`, `<`, `>`), and every text object is cut to Slack's limits whatever the label and
//! annotation lengths: header 150 characters, section and context text 3,000, the fallback
//! `text` 3,000 too. Cuts never split an escape (`&amp;`).

use serde_json::{json, Value};

use super::truncate_chars;
use crate::notify::message::Notification;
use crate::notify::template::{subject_text, RenderedText};

/// Slack's limit for a header block's text.
pub const MAX_HEADER_CHARS: usize = 150;
/// Slack's limit for a section block's text.
pub const MAX_SECTION_CHARS: usize = 3000;

/// Slack's limit for any text object (a context element included).
pub const MAX_TEXT_OBJECT_CHARS: usize = 3000;
/// The subject's share of the context line (the rest is severity, status and rule).
const MAX_CONTEXT_SUBJECT_CHARS: usize = 2000;
/// The rule name's share of the context line.
const MAX_CONTEXT_RULE_CHARS: usize = 500;

/// Escapes for mrkdwn, then cuts to `max` characters without splitting an escape.
pub fn mrkdwn_cut(s: &str, max: usize) -> String {
    let escaped = escape_mrkdwn(s);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut cut = truncate_chars(&escaped, max);
    // `…` replaced the tail; drop a partial `&amp;`/`&lt;`/`&gt;` left just before it.
    let body_len = cut.len() - '…'.len_utf8();
    if let Some(amp) = cut[..body_len].rfind('&') {
        if !cut[amp..body_len].contains(';') {
            cut.replace_range(amp..body_len, "");
        }
    }
    cut
}

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
            "text": {"type": "mrkdwn", "text": mrkdwn_cut(&text.text, MAX_SECTION_CHARS)}
        }),
    ];
    if let Some(inc) = &n.incident {
        let plain = format!("Incident {} ({})", mrkdwn_cut(&inc.id, 100), mrkdwn_cut(&inc.status, 50));
        let line = match &inc.url {
            Some(url) => format!(
                "<{}|Open incident {}> ({})",
                escape_mrkdwn(url),
                mrkdwn_cut(&inc.id, 100),
                mrkdwn_cut(&inc.status, 50)
            ),
            None => plain.clone(),
        };
        // A link too long for a text object loses its link, never the incident id.
        let line = if line.chars().count() <= MAX_TEXT_OBJECT_CHARS { line } else { plain };
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": line}}));
    }
    let mut context = format!(
        "*{}* · {} · {} · {}",
        mrkdwn_cut(&n.severity, 50),
        n.status.as_str(),
        mrkdwn_cut(&n.rule, MAX_CONTEXT_RULE_CHARS),
        mrkdwn_cut(&subject_text(n), MAX_CONTEXT_SUBJECT_CHARS)
    );
    if n.dry_run {
        context.push_str(" · dry run");
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));

    json!({
        "text": mrkdwn_cut(&text.title, MAX_TEXT_OBJECT_CHARS),
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

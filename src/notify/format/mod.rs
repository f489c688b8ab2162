//! Receiver body formats: pure functions from a [`Notification`](super::Notification) (plus the
//! rendered text where the receiver shows text) to the JSON body the receiver expects.
//!
//! The generic webhook body lives with the message type
//! ([`generic_webhook_body`](super::generic_webhook_body)). Nothing here does I/O or decides
//! whether to send.

pub mod alertmanager;
pub mod pagerduty;
pub mod slack;
pub mod teams;

pub use alertmanager::alertmanager_alerts;
pub use pagerduty::{pagerduty_event, pagerduty_severity};
pub use slack::slack_message;
pub use teams::teams_message;

/// Truncates `s` to at most `max` characters, ending with `…` when something was cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Truncates `s` to at most `max_bytes` bytes of UTF-8 (on a character boundary), ending with `…`
/// when something was cut.
pub fn truncate_bytes(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    let ellipsis = '…';
    let budget = max_bytes.saturating_sub(ellipsis.len_utf8());
    let mut cut = budget;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = s[..cut].to_owned();
    if max_bytes >= ellipsis.len_utf8() {
        out.push(ellipsis);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{truncate_bytes, truncate_chars};
    use crate::notify::message::tests::sample_firing;
    use crate::notify::template::RenderedText;
    use proptest::prelude::*;

    /// Long strings with the characters that grow when escaped (mrkdwn `&<>`, JSON `"` `\`
    /// and control characters) and multi-byte ones.
    fn nasty(max: usize) -> impl Strategy<Value = String> {
        (proptest::collection::vec(prop_oneof![Just("&"), Just("<"), Just(">"), Just("\""), Just("\\"), Just("\u{1}"), Just("€"), Just("a"), Just(" ")], 0..64), 0..max)
            .prop_map(|(pieces, len)| if pieces.is_empty() { "x".repeat(len) } else { pieces.iter().cycle().take(len).copied().collect() })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn bodies_stay_within_receiver_limits(
            label in nasty(40_000),
            annotation in nasty(60_000),
            rule in nasty(5_000),
            title in nasty(20_000),
            text in nasty(80_000),
            labels in 1usize..40,
        ) {
            let mut n = sample_firing();
            n.rule = rule;
            for i in 0..labels {
                n.subject.insert(format!("l{i}"), label.clone());
                n.labels.insert(format!("k{i}"), label.clone());
                n.annotations.insert(format!("a{i}"), annotation.clone());
            }
            n.labels.insert("team".into(), label.clone());
            let r = RenderedText { title, text };

            let slack = super::slack_message(&n, &r);
            let count = |v: &serde_json::Value| v.as_str().unwrap().chars().count();
            prop_assert!(count(&slack["text"]) <= super::slack::MAX_TEXT_OBJECT_CHARS);
            for b in slack["blocks"].as_array().unwrap() {
                match b["type"].as_str().unwrap() {
                    "header" => prop_assert!(count(&b["text"]["text"]) <= super::slack::MAX_HEADER_CHARS),
                    "section" => prop_assert!(count(&b["text"]["text"]) <= super::slack::MAX_TEXT_OBJECT_CHARS),
                    _ => for e in b["elements"].as_array().unwrap() {
                        prop_assert!(count(&e["text"]) <= super::slack::MAX_TEXT_OBJECT_CHARS, "context {}", count(&e["text"]));
                    },
                }
            }

            let teams = serde_json::to_vec(&super::teams_message(&n, &r)).unwrap();
            prop_assert!(teams.len() <= 28_672, "teams card {} bytes", teams.len());

            let pd = super::pagerduty_event(&n, "key", &r.title);
            prop_assert!(count(&pd["payload"]["summary"]) <= super::pagerduty::MAX_SUMMARY_CHARS);
            for f in ["source", "component", "group", "class"] {
                prop_assert!(count(&pd["payload"][f]) <= super::pagerduty::MAX_FIELD_CHARS, "{f}");
            }
            prop_assert!(serde_json::to_vec(&pd).unwrap().len() <= 512 * 1024);
        }
    }

    #[test]
    fn truncate_bytes_respects_char_boundaries() {
        assert_eq!(truncate_bytes("abc", 3), "abc");
        assert_eq!(truncate_bytes("abcdef", 5), "ab…");
        // "é" is 2 bytes: 7 - 3 = 4 bytes of budget = 2 characters.
        assert_eq!(truncate_bytes("ééééé", 7), "éé…");
        assert_eq!(truncate_bytes("éééé", 6), "é…");
        assert!(truncate_bytes(&"€".repeat(100), 50).len() <= 50);
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        assert_eq!(truncate_chars("ééééé", 4), "ééé…");
        assert_eq!(truncate_chars("abc", 0), "");
    }
}

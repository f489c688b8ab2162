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

//! The content filter: redacts secrets and personal data from everything that leaves Herald.
//!
//! Built-in detectors, in priority order (an earlier detector wins where matches overlap):
//!
//! | kind | what | replacement |
//! |---|---|---|
//! | secret | every secret value of the configuration (receiver secrets, routing keys, Slack and Teams URLs, credentials, tokens, auth headers; ≥ 6 characters), wherever it appears | `[redacted:secret]` |
//! | custom | the configured `extra_patterns` (whole match) | `[redacted:custom]` |
//! | credentials | `user:password@` in a URL (the `user:password` part) | `[redacted:credentials]` |
//! | bearer_token | the token after `Bearer ` (≥12 chars, not a plain lowercase word) | `[redacted:bearer_token]` |
//! | jwt | a JSON Web Token: `eyJ…` header `.` `eyJ…` payload `.` signature (base64url) | `[redacted:jwt]` |
//! | api_key | `sk_live_…`/`rk_test_…`, `xoxb-…`, `ghp_…`/`gho_…`, `github_pat_…`, `glpat-…`, `AKIA…`/`ASIA…`, `AIza…`, Slack webhook paths; a bare AWS secret access key (exactly 40 characters of `A-Za-z0-9/+` with an upper-case letter, a lower-case letter and a digit, not part of a longer base64 run) | `[redacted:api_key]` |
//! | secret | the value after `password=`, `secret:`, `*_secret=`, …; after `key=`, `token=`, `sig=`, `api_key=`… only when it looks like a secret (≥16 chars of base64/hex alphabet with a letter and a digit) | `[redacted:secret]` |
//! | email | `local@domain.tld` | `[redacted:email]` |
//! | card | 13–19 digits, optional single spaces/dashes between digits, first digit 2–6 (the card networks' ranges), Luhn-valid | `[redacted:card]` |
//! | ip | IPv6 (anything [`std::net::Ipv6Addr`] parses, with at least one hex digit) and dotted-quad IPv4 | `[redacted:ip]` |
//! | phone | `+` and 8–15 digits (E.164, separators allowed); or national formats with separators and 9–11 digits that start with a trunk `0` or `(`, or are grouped 3-3-4 (North America) | `[redacted:phone]` |
//!
//! Not redacted on purpose: timestamps, dates, times, version numbers (`1.2.3`, `v1.2.3.4`),
//! percentages, durations, ratios (`0.999`), plain numbers without separators (unix timestamps,
//! counts), MAC addresses.
//!
//! The allow list: a candidate (the text that would be replaced) is kept when it equals an allow
//! entry literally, or when the entry, read as a regular expression, matches the *whole*
//! candidate. An entry that is not a valid regular expression is used as a literal only (so
//! `+1 (555) 010-0000` works as written). A kept candidate also shields its text from
//! lower-priority detectors.
//!
//! Exempt: Herald's own links. Every occurrence of an `exempt` prefix (the daemon passes
//! `global.external_url`), with the URL path that follows it, is kept as it is, so
//! `http://10.0.0.5:9797/incidents/INC-7` still works when Herald listens on an IP address.
//!
//! Idempotent: scrubbing already scrubbed text changes nothing.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::message::Notification;
use super::template::RenderedText;
use crate::engine::Subject;

/// What a redaction replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A configured extra pattern.
    Custom,
    /// `user:password` in a URL.
    Credentials,
    /// A bearer token.
    BearerToken,
    /// A JSON Web Token.
    Jwt,
    /// An API key of a well-known shape.
    ApiKey,
    /// A secret value after `password=`, `token=`, … .
    Secret,
    /// An e-mail address.
    Email,
    /// A payment card number.
    Card,
    /// An IPv4 or IPv6 address.
    Ip,
    /// A phone number.
    Phone,
}

impl Kind {
    /// The name used in the replacement text `[redacted:<name>]`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Custom => "custom",
            Kind::Credentials => "credentials",
            Kind::BearerToken => "bearer_token",
            Kind::Jwt => "jwt",
            Kind::ApiKey => "api_key",
            Kind::Secret => "secret",
            Kind::Email => "email",
            Kind::Card => "card",
            Kind::Ip => "ip",
            Kind::Phone => "phone",
        }
    }

    /// Whether this kind is a secret (as opposed to personal data); only secrets are removed from
    /// URLs that must keep working.
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Kind::Custom
                | Kind::Credentials
                | Kind::BearerToken
                | Kind::Jwt
                | Kind::ApiKey
                | Kind::Secret
        )
    }
}

/// Configuration of the content filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Additional regular expressions; every match is replaced by `[redacted:custom]`.
    pub extra_patterns: Vec<String>,
    /// Literal strings or regular expressions (matching the whole candidate) never to redact.
    pub allow: Vec<String>,
    /// Secret values of the configuration, redacted wherever they appear (values shorter than
    /// [`MIN_SECRET_CHARS`] are ignored: they would redact ordinary words).
    pub secrets: Vec<String>,
    /// Prefixes kept as they are, with the URL path that follows (Herald's `external_url`).
    pub exempt: Vec<String>,
    /// `notification.scrub.labels: false`: subject and label values are left as they are
    /// everywhere (only annotations and rendered text are scrubbed).
    pub keep_labels: bool,
}

/// Shorter configured secrets are not redacted literally.
pub const MIN_SECRET_CHARS: usize = 6;

/// The filter could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScrubError {
    /// An `extra_patterns` entry is not a valid regular expression.
    #[error("invalid scrub pattern {pattern:?}: {message}")]
    InvalidPattern {
        /// The pattern as configured.
        pattern: String,
        /// The regex parser's message.
        message: String,
    },
    /// An `extra_patterns` entry matches the empty string (it would redact nothing but gaps).
    #[error("scrub pattern {pattern:?} matches the empty string")]
    EmptyMatch {
        /// The pattern as configured.
        pattern: String,
    },
}

type Validator = fn(&str, &Captures<'_>) -> Option<Range<usize>>;

struct Detector {
    kind: Kind,
    re: Regex,
    validate: Validator,
}

fn whole(_: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    c.get(0).map(|m| m.range())
}

fn group_v(_: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    c.name("v").map(|m| m.range())
}

fn prev_char(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn next_two(text: &str, at: usize) -> (Option<char>, Option<char>) {
    let mut it = text[at..].chars();
    (it.next(), it.next())
}

/// True when the character after `end` continues a number (`.5`, `,5`, `-5`) or a word.
fn number_continues(text: &str, end: usize) -> bool {
    match next_two(text, end) {
        (Some(c), _) if c.is_alphanumeric() || c == '_' || c == '%' => true,
        (Some('.' | ',' | '-' | ':' | '/'), Some(d)) if d.is_ascii_digit() => true,
        _ => false,
    }
}

fn validate_bearer(_: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let v = c.name("v")?;
    let token = v.as_str();
    let plain_word = token.chars().all(|ch| ch.is_ascii_lowercase());
    (token.len() >= 12 && !plain_word).then(|| v.range())
}

fn validate_kv_secret(_: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let name = c.name("k")?.as_str().to_ascii_lowercase();
    let v = c.name("v")?;
    let value = v.as_str();
    if value.starts_with("[redacted:") {
        return None;
    }
    let always = [
        "password",
        "passwd",
        "pwd",
        "secret",
        "credential",
        "credentials",
    ];
    if always.iter().any(|s| name.ends_with(s)) {
        return (!value.is_empty()).then(|| v.range());
    }
    let looks_secret = value.len() >= 16
        && value.chars().any(|ch| ch.is_ascii_digit())
        && value.chars().any(|ch| ch.is_ascii_alphabetic())
        && value
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "+/=_.-~".contains(ch));
    looks_secret.then(|| v.range())
}

fn is_b64(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '/' || c == '+' || c == '='
}

fn validate_aws_secret(text: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let m = c.get(0)?;
    let v = m.as_str();
    let standalone = !prev_char(text, m.start()).is_some_and(is_b64) && !text[m.end()..].chars().next().is_some_and(is_b64);
    let mixed = v.bytes().any(|b| b.is_ascii_uppercase()) && v.bytes().any(|b| b.is_ascii_lowercase()) && v.bytes().any(|b| b.is_ascii_digit());
    (standalone && mixed).then(|| m.range())
}

fn luhn_valid(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn validate_card(text: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let m = c.get(0)?;
    // After `+` it is a phone number; after `.`/`,` the tail of a decimal number.
    if matches!(prev_char(text, m.start()), Some('.' | ',' | '+'))
        || number_continues(text, m.end())
    {
        return None;
    }
    let digits: Vec<u32> = m
        .as_str()
        .chars()
        .filter_map(|ch| ch.to_digit(10))
        .collect();
    let ok =
        (13..=19).contains(&digits.len()) && (2..=6).contains(&digits[0]) && luhn_valid(&digits);
    ok.then(|| m.range())
}

fn validate_ipv4(text: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let m = c.get(0)?;
    if matches!(prev_char(text, m.start()), Some('.')) {
        return None;
    }
    if let (Some('.'), Some(d)) = next_two(text, m.end()) {
        if d.is_ascii_digit() {
            return None;
        }
    }
    m.as_str().parse::<Ipv4Addr>().ok().map(|_| m.range())
}

fn validate_ipv6(text: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let m = c.get(0)?;
    let start = m.start();
    let s = m.as_str().trim_end_matches('.');
    let end = start + s.len();
    let word_before = prev_char(text, start).is_some_and(|ch| ch.is_alphanumeric() || ch == '_');
    let word_after = text[end..]
        .chars()
        .next()
        .is_some_and(|ch| ch.is_alphanumeric() || ch == '_');
    if word_before || word_after {
        return None;
    }
    if s.matches(':').count() < 2 || !s.chars().any(|ch| ch.is_ascii_hexdigit()) {
        return None;
    }
    s.parse::<Ipv6Addr>().ok().map(|_| start..end)
}

fn validate_phone(text: &str, c: &Captures<'_>) -> Option<Range<usize>> {
    let m = c.get(0)?;
    if let Some(p) = prev_char(text, m.start()) {
        if p.is_alphanumeric() || ".:/_-+".contains(p) {
            return None;
        }
    }
    if number_continues(text, m.end()) {
        return None;
    }
    let s = m.as_str();
    let digits = s.chars().filter(char::is_ascii_digit).count();
    if s.starts_with('+') {
        return (8..=15).contains(&digits).then(|| m.range());
    }
    let has_separator = s.contains([' ', '.', '-', '(']);
    if !has_separator || !(9..=11).contains(&digits) {
        return None;
    }
    let groups: Vec<usize> = s
        .split(|ch: char| !ch.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .map(str::len)
        .collect();
    let north_american = groups == [3, 3, 4];
    let trunk = s.starts_with('0') || s.starts_with('(');
    (north_american || trunk).then(|| m.range())
}

fn builtin(kind: Kind, pattern: &str, validate: Validator) -> Detector {
    let re =
        Regex::new(pattern).unwrap_or_else(|e| panic!("built-in scrub pattern {pattern:?}: {e}"));
    Detector { kind, re, validate }
}

// ASCII word boundaries and digits on purpose: the things we redact are ASCII, and Unicode
// `\b`/`\d` make each automaton (and its per-thread cache) several times larger: about 2 MiB
// of resident memory for the filter alone (measured with examples/scrub_mem.rs).
static BUILTINS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    vec![
        builtin(
            Kind::Credentials,
            r"(?i)(?-u:\b)[a-z][a-z0-9+.-]*://(?P<v>[^\s/@:]+:[^\s/@]+)@",
            group_v,
        ),
        builtin(
            Kind::BearerToken,
            r"(?i)(?-u:\b)bearer\s+(?P<v>[A-Za-z0-9\-._~+/]+=*)",
            validate_bearer,
        ),
        builtin(
            Kind::Jwt,
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            whole,
        ),
        builtin(
            Kind::ApiKey,
            r"(?-u:\b)(?:(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}|xox[abposre]-[0-9A-Za-z-]{10,}|gh[pousr]_[0-9A-Za-z]{30,}|github_pat_[0-9A-Za-z_]{30,}|glpat-[0-9A-Za-z_-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35})(?-u:\b)",
            whole,
        ),
        builtin(Kind::ApiKey, r"[A-Za-z0-9/+]{40}", validate_aws_secret),
        builtin(
            Kind::ApiKey,
            r"hooks\.slack\.com/services/(?P<v>[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+)",
            group_v,
        ),
        builtin(
            Kind::Secret,
            r#"(?i)(?-u:\b)(?P<k>(?:[a-z0-9]+[_-])*(?:api[_-]?key|apikey|access[_-]?key|key|token|secret|password|passwd|pwd|sig|signature|credentials?))["']?\s*[=:]\s*["']?(?P<v>[^\s"'&,;]+)"#,
            validate_kv_secret,
        ),
        builtin(
            Kind::Email,
            r"(?i)(?-u:\b)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?-u:\b)",
            whole,
        ),
        builtin(Kind::Card, r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)", validate_card),
        builtin(Kind::Ip, r"(?i)[0-9a-f:][0-9a-f:.]*", validate_ipv6),
        builtin(Kind::Ip, r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)", validate_ipv4),
        builtin(
            Kind::Phone,
            r"\+[0-9]{7,15}|(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,5}\)[ .-]?)?[0-9]{1,8}(?:[ .-][0-9]{1,8}){0,5}",
            validate_phone,
        ),
    ]
});

/// The content filter. Build once from configuration; cheap to share (`&self` methods).
/// `Scrubber::default()` has the built-in detectors only.
#[derive(Debug, Default)]
pub struct Scrubber {
    /// The configured secret values, longest first.
    secrets: Vec<String>,
    extra: Vec<Regex>,
    allow_literals: Vec<String>,
    allow_regexes: Vec<Regex>,
    exempt: Vec<String>,
    keep_labels: bool,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Detector({}, {})", self.kind.name(), self.re.as_str())
    }
}

struct Span {
    range: Range<usize>,
    /// `None`: allow-listed (kept, and shielded from other detectors).
    kind: Option<Kind>,
}

impl Scrubber {
    /// Builds the filter; an invalid extra pattern is an error naming the pattern.
    pub fn new(config: &ScrubConfig) -> Result<Self, ScrubError> {
        let mut extra = Vec::with_capacity(config.extra_patterns.len());
        for p in &config.extra_patterns {
            let re = Regex::new(p).map_err(|e| ScrubError::InvalidPattern {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
            if re.is_match("") {
                return Err(ScrubError::EmptyMatch { pattern: p.clone() });
            }
            extra.push(re);
        }
        let allow_literals = config.allow.clone();
        let allow_regexes = config
            .allow
            .iter()
            .filter_map(|a| Regex::new(&format!("^(?:{a})$")).ok())
            .collect();
        let mut secrets: Vec<String> = config
            .secrets
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.chars().count() >= MIN_SECRET_CHARS)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let exempt = config.exempt.iter().filter(|e| !e.is_empty()).cloned().collect();
        Ok(Scrubber {
            secrets,
            extra,
            allow_literals,
            allow_regexes,
            exempt,
            keep_labels: config.keep_labels,
        })
    }

    /// A label value as it may leave Herald: scrubbed, unless `notification.scrub.labels` is
    /// off.
    pub fn label_value<'a>(&self, v: &'a str) -> Cow<'a, str> {
        if self.keep_labels {
            Cow::Borrowed(v)
        } else {
            self.scrub_str(v)
        }
    }

    /// The subject as it may leave Herald (logs, `/metrics`, the API): its label values
    /// scrubbed, unless `notification.scrub.labels` is off. Borrowed when nothing changes.
    pub fn subject<'s>(&self, s: &'s Subject) -> Cow<'s, Subject> {
        let mut changed = false;
        let labels: Vec<(String, String)> = s
            .labels()
            .map(|(k, v)| {
                let v = self.label_value(v);
                changed |= matches!(v, Cow::Owned(_));
                (k.to_string(), v.into_owned())
            })
            .collect();
        if changed {
            Cow::Owned(Subject::new(labels))
        } else {
            Cow::Borrowed(s)
        }
    }

    /// The subject key stored in the outbox (and shown by the notifications API): the
    /// scrubbed key, and when scrubbing changed it, `#` and a hash of the real key, so two
    /// subjects that differ only in a redacted value are still told apart (grouping,
    /// `min_interval`, repeats) without storing the value.
    pub fn outbox_subject(&self, s: &Subject) -> String {
        match self.subject(s) {
            Cow::Borrowed(s) => s.key().to_owned(),
            Cow::Owned(scrubbed) => {
                use sha2::{Digest, Sha256};
                let h = Sha256::digest(s.key().as_bytes());
                let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
                format!("{}#{hex}", scrubbed.key())
            }
        }
    }

    /// Exempt spans (Herald's own links), then every occurrence of a configured secret, then
    /// the `keep` literals (label values when `notification.scrub.labels` is off).
    fn collect_fixed(&self, text: &str, spans: &mut Vec<Span>, keep: &[&str]) {
        for prefix in &self.exempt {
            for (at, _) in text.match_indices(prefix.as_str()) {
                let path = text[at + prefix.len()..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "/._~-".contains(c)))
                    .unwrap_or(text.len() - at - prefix.len());
                let range = at..at + prefix.len() + path;
                if !spans.iter().any(|s| s.range.start < range.end && range.start < s.range.end) {
                    spans.push(Span { range, kind: None });
                }
            }
        }
        for secret in &self.secrets {
            for (at, _) in text.match_indices(secret.as_str()) {
                let range = at..at + secret.len();
                if !spans.iter().any(|s| s.range.start < range.end && range.start < s.range.end) {
                    spans.push(Span { range, kind: Some(Kind::Secret) });
                }
            }
        }
        for literal in keep.iter().filter(|k| !k.is_empty()) {
            for (at, _) in text.match_indices(literal) {
                let range = at..at + literal.len();
                if !spans.iter().any(|s| s.range.start < range.end && range.start < s.range.end) {
                    spans.push(Span { range, kind: None });
                }
            }
        }
    }

    fn allowed(&self, candidate: &str) -> bool {
        self.allow_literals.iter().any(|a| a == candidate)
            || self.allow_regexes.iter().any(|re| re.is_match(candidate))
    }

    fn collect(
        &self,
        text: &str,
        secrets_only: bool,
        spans: &mut Vec<Span>,
        kind: Kind,
        re: &Regex,
        validate: Validator,
    ) {
        if secrets_only && !kind.is_secret() {
            return;
        }
        let mut pos = 0;
        while pos < text.len() {
            let Some(caps) = re.captures_at(text, pos) else {
                break;
            };
            let Some(m) = caps.get(0) else { break };
            let accepted = if m.is_empty() {
                None
            } else {
                validate(text, &caps)
            };
            match accepted {
                Some(range)
                    if !range.is_empty()
                        && !spans
                            .iter()
                            .any(|s| s.range.start < range.end && range.start < s.range.end) =>
                {
                    let kind = if self.allowed(&text[range.clone()]) {
                        None
                    } else {
                        Some(kind)
                    };
                    spans.push(Span { range, kind });
                    pos = m.end();
                }
                _ => {
                    // Retry from the next character: a shorter candidate inside may be valid.
                    pos = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
                }
            }
        }
    }

    fn scrub_inner<'a>(&self, text: &'a str, secrets_only: bool, keep: &[&str]) -> Cow<'a, str> {
        let mut spans = Vec::new();
        self.collect_fixed(text, &mut spans, keep);
        for re in &self.extra {
            self.collect(text, secrets_only, &mut spans, Kind::Custom, re, whole);
        }
        for d in BUILTINS.iter() {
            self.collect(text, secrets_only, &mut spans, d.kind, &d.re, d.validate);
        }
        spans.retain(|s| s.kind.is_some());
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_by_key(|s| s.range.start);
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for s in spans {
            let Some(kind) = s.kind else { continue };
            out.push_str(&text[last..s.range.start]);
            out.push_str("[redacted:");
            out.push_str(kind.name());
            out.push(']');
            last = s.range.end;
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    /// Redacts every detected secret and piece of personal data in `text`.
    pub fn scrub_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.scrub_inner(text, false, &[])
    }

    /// Redacts only secrets (credentials, tokens, keys, custom patterns) — for URLs, which must
    /// keep working.
    pub fn scrub_secrets<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.scrub_inner(text, true, &[])
    }

    fn scrub_in_place(&self, s: &mut String) {
        self.scrub_in_place_keeping(s, &[]);
    }

    fn scrub_in_place_keeping(&self, s: &mut String, keep: &[&str]) {
        if let Cow::Owned(new) = self.scrub_inner(s, false, keep) {
            *s = new;
        }
    }

    /// The label values a notification's text may show as they are: its subject and label
    /// values when `notification.scrub.labels` is off, none otherwise.
    fn kept_values(&self, n: &Notification) -> Vec<String> {
        if self.keep_labels {
            n.subject.values().chain(n.labels.values()).cloned().collect()
        } else {
            Vec::new()
        }
    }

    /// Scrubs the values of `subject` and `labels` (unless `notification.scrub.labels` is off)
    /// and `annotations`, and secrets (only) in the
    /// incident URL. Identifiers (`id`, `dedup_key`, rule, action, incident id) are left alone:
    /// they must stay stable and are built by Herald, not copied from signals.
    pub fn scrub_notification(&self, n: &mut Notification) {
        if !self.keep_labels {
            for v in n.subject.values_mut().chain(n.labels.values_mut()) {
                self.scrub_in_place(v);
            }
        }
        let kept = self.kept_values(n);
        let keep: Vec<&str> = kept.iter().map(String::as_str).collect();
        for v in n.annotations.values_mut() {
            self.scrub_in_place_keeping(v, &keep);
        }
        if let Some(url) = n.incident.as_mut().and_then(|i| i.url.as_mut()) {
            if let Cow::Owned(new) = self.scrub_secrets(url) {
                *url = new;
            }
        }
    }

    /// Scrubs rendered title and body text.
    pub fn scrub_rendered(&self, r: &mut RenderedText) {
        self.scrub_in_place(&mut r.title);
        self.scrub_in_place(&mut r.text);
    }

    /// Scrubs the rendered text of notification `n`: like [`Scrubber::scrub_rendered`], but
    /// with `notification.scrub.labels` off, `n`'s own label values stay as they are.
    pub fn scrub_rendered_for(&self, r: &mut RenderedText, n: &Notification) {
        let kept = self.kept_values(n);
        let keep: Vec<&str> = kept.iter().map(String::as_str).collect();
        self.scrub_in_place_keeping(&mut r.title, &keep);
        self.scrub_in_place_keeping(&mut r.text, &keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::sample_firing;

    fn s(text: &str) -> String {
        Scrubber::default().scrub_str(text).into_owned()
    }

    fn unchanged(text: &str) {
        assert_eq!(s(text), text, "must not be redacted: {text:?}");
    }

    #[test]
    fn email() {
        assert_eq!(
            s("contact alice.smith+ops@example.co.uk now"),
            "contact [redacted:email] now"
        );
        assert_eq!(s("<BOB@Example.COM>"), "<[redacted:email]>");
        unchanged("ping @channel and @here");
        unchanged("user@localhost");
        unchanged("version 1.2@3");
    }

    #[test]
    fn phone_international() {
        assert_eq!(s("call +1 555 010 0000 now"), "call [redacted:phone] now");
        assert_eq!(s("call +44 (0)20 7946 0958."), "call [redacted:phone].");
        assert_eq!(s("sms +4915112345678"), "sms [redacted:phone]");
        assert_eq!(s("tel: +33 1 23 45 67 89"), "tel: [redacted:phone]");
    }

    #[test]
    fn phone_national() {
        assert_eq!(s("US (555) 123-4567"), "US [redacted:phone]");
        assert_eq!(s("US 555-123-4567, ext"), "US [redacted:phone], ext");
        assert_eq!(s("UK 020 7946 0958"), "UK [redacted:phone]");
        assert_eq!(s("FR 01 23 45 67 89"), "FR [redacted:phone]");
        assert_eq!(s("DE 030 12345678"), "DE [redacted:phone]");
        assert_eq!(s("version 2 555-123-4567"), "version 2 [redacted:phone]");
    }

    #[test]
    fn phone_negatives() {
        for text in [
            "at 2024-05-01T12:00:00Z",
            "at 2024-05-01 12:00:00",
            "on 01.02.2024 12:30",
            "on 01-02-2024",
            "unix 1614265330 and ms 1614265330000",
            "version 1.2.3 and v10.4.12 and 2.14.0-rc.1",
            "SLI 97.0% is below its 99.9% objective (8% of customers affected)",
            "durations 5m, 1h30m, 90s, 250 ms",
            "ratio 0.999 and 0.05 and 3x baseline",
            "42 tickets, 7 open, 1 234 567 requests",
            "tickets 123 456 789 total",
            "p99 1250.5 ms",
            "burn rate 14.4 over 1h",
            "at 2024-05-01T12:00:00.123+02:00",
            "incident INC-2024-0001 and ticket #123456789",
            "uuid 550e8400-e29b-41d4-a716-446655440000",
            "trace 4bf92f3577b34da6a3ce929d0e0e4736",
            "HTTP 503, p99=1.25s, on 10/10/2024",
        ] {
            unchanged(text);
        }
    }

    #[test]
    fn ipv4() {
        assert_eq!(
            s("from 10.0.0.1 and 192.168.100.200:8080"),
            "from [redacted:ip] and [redacted:ip]:8080"
        );
        assert_eq!(s("net 172.16.0.0/12"), "net [redacted:ip]/12");
        unchanged("version 1.2.3 and v1.2.3.4");
        unchanged("1.2.3.4.5");
        unchanged("999.1.1.1");
    }

    #[test]
    fn ipv6() {
        assert_eq!(s("peer 2001:db8::1 down"), "peer [redacted:ip] down");
        assert_eq!(
            s("peer [fe80::1ff:fe23:4567:890a]:443"),
            "peer [[redacted:ip]]:443"
        );
        assert_eq!(s("loopback ::1."), "loopback [redacted:ip].");
        assert_eq!(
            s("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
            "full [redacted:ip]"
        );
        unchanged("at 12:00:00 and 12:30");
        unchanged("mac 00:1a:2b:3c:4d:5e");
        unchanged("call Vec::new and dead::beef_x");
    }

    #[test]
    fn bearer_token() {
        assert_eq!(
            s("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc-DEF_123"),
            "Authorization: Bearer [redacted:bearer_token]"
        );
        assert_eq!(
            s("bearer abcdef0123456789"),
            "bearer [redacted:bearer_token]"
        );
        unchanged("the bearer of bad news");
        unchanged("uses bearer authentication");
        unchanged("Bearer short1");
    }

    #[test]
    fn api_keys() {
        for key in [
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "rk_test_51H8xAbCdEfGhIjKl",
            "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "glpat-abcdefghij0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        ] {
            assert_eq!(
                s(&format!("key {key} leaked")),
                "key [redacted:api_key] leaked",
                "{key}"
            );
        }
        assert_eq!(
            s("https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX"),
            "https://hooks.slack.com/services/[redacted:api_key]"
        );
        unchanged("sk_live is the prefix; ghp_short; task_list; AKIA-docs; akiaiosfodnn7example");
    }

    #[test]
    fn secrets_after_key_names() {
        assert_eq!(s("password=hunter2"), "password=[redacted:secret]");
        assert_eq!(
            s(r#"{"client_secret": "abc"}"#),
            r#"{"client_secret": "[redacted:secret]"}"#
        );
        assert_eq!(
            s("GET /x?api_key=0123456789abcdef0123&page=2"),
            "GET /x?api_key=[redacted:secret]&page=2"
        );
        assert_eq!(
            s("token: dGhpcyBpcyBhIHNlY3JldCB0b2tlbg1="),
            "token: [redacted:secret]"
        );
        assert_eq!(
            s("KEY=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            "KEY=[redacted:secret]"
        );
        unchanged("key=checkout token=abc");
        unchanged("tokens: 5, keyboard=us, monkey=0123456789abcdef0123");
        unchanged("key: service");
    }

    #[test]
    fn jwts() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(s(&format!("session {jwt} expired")), "session [redacted:jwt] expired");
        assert_eq!(s(&format!("?id_token={jwt}&x=1")), "?id_token=[redacted:jwt]&x=1");
        // Unsigned (alg none) tokens end with a dot.
        assert_eq!(s("t eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. end"), "t [redacted:jwt] end");
        unchanged("eyJ is how base64 JSON starts; eyJhbGci.notjwt");
    }

    #[test]
    fn bare_aws_secret_access_keys() {
        assert_eq!(
            s("aws wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here"),
            "aws [redacted:api_key] here"
        );
        assert_eq!(s("\"Zx8mQ2vR7tLpK4nW9cB3yH6jD1fS5gA0eU2iO7rT\""), "\"[redacted:api_key]\"");
        // Git SHAs and trace ids are lower-case hex; longer base64 runs are something else.
        unchanged("commit 4bf92f3577b34da6a3ce929d0e0e4736deadbeef");
        unchanged("blob Zx8mQ2vR7tLpK4nW9cB3yH6jD1fS5gA0eU2iO7rTQ");
        unchanged("all lower case abcdefghijklmnopqrstuvwxyzabcdefghijklmn");
    }

    #[test]
    fn configured_secrets_are_redacted_wherever_they_appear() {
        let sc = Scrubber::new(&ScrubConfig {
            secrets: vec![
                "https://hooks.example.com/T00/B00/s3cret".into(),
                "R0UTINGKEY123".into(),
                "short".into(), // below the minimum: ordinary words stay
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            sc.scrub_str("posted to https://hooks.example.com/T00/B00/s3cret with key R0UTINGKEY123."),
            "posted to [redacted:secret] with key [redacted:secret]."
        );
        assert_eq!(sc.scrub_str("a short note"), "a short note");
        assert_eq!(sc.scrub_secrets("x=R0UTINGKEY123"), "x=[redacted:secret]");
    }

    #[test]
    fn herald_links_are_exempt() {
        let sc = Scrubber::new(&ScrubConfig { exempt: vec!["http://10.0.0.5:9797".into()], ..Default::default() }).unwrap();
        assert_eq!(
            sc.scrub_str("Incident INC-7: http://10.0.0.5:9797/incidents/INC-7 (from 10.0.0.5)"),
            "Incident INC-7: http://10.0.0.5:9797/incidents/INC-7 (from [redacted:ip])"
        );
        assert_eq!(s("http://10.0.0.5:9797/incidents/INC-7"), "http://[redacted:ip]:9797/incidents/INC-7");
    }

    #[test]
    fn credentials_in_urls() {
        assert_eq!(
            s("db postgres://app:s3cr3t@db.internal:5432/app"),
            "db postgres://[redacted:credentials]@db.internal:5432/app"
        );
        unchanged("https://grafana.example.com/d/abc?orgId=1");
    }

    #[test]
    fn payment_cards() {
        assert_eq!(
            s("card 4111 1111 1111 1111 used"),
            "card [redacted:card] used"
        );
        assert_eq!(s("card 5555-5555-5555-4444"), "card [redacted:card]");
        assert_eq!(s("amex 378282246310005"), "amex [redacted:card]");
        assert_eq!(s("ids 5 4111111111111111"), "ids 5 [redacted:card]");
        unchanged("card 4111 1111 1111 1112"); // Luhn-invalid
        unchanged("ms 1614265330000"); // 13 digits, but no card starts with 1
        unchanged("ratio 0.4111111111111111");
        unchanged("order 41111111"); // too short
    }

    #[test]
    fn idempotent_and_borrowed_when_clean() {
        let once = s("mail bob@example.com from 10.0.0.1 card 4111111111111111 password=x");
        assert_eq!(s(&once), once);
        assert!(matches!(
            Scrubber::default().scrub_str("nothing here"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn allow_list_literals_and_regexes() {
        let sc = Scrubber::new(&ScrubConfig {
            extra_patterns: vec![],
            allow: vec![
                "status@example.com".into(),
                r"10\.0\.0\.\d+".into(),
                "+1 (555) 010-0000".into(), // invalid as a regex: literal only
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            sc.scrub_str("write status@example.com or bob@example.com"),
            "write status@example.com or [redacted:email]"
        );
        assert_eq!(
            sc.scrub_str("hosts 10.0.0.7 and 10.0.1.7"),
            "hosts 10.0.0.7 and [redacted:ip]"
        );
        assert_eq!(
            sc.scrub_str("call +1 (555) 010-0000"),
            "call +1 (555) 010-0000"
        );
        // The regex must match the whole candidate, not a part of it.
        assert_eq!(sc.scrub_str("host 110.0.0.7"), "host [redacted:ip]");
    }

    #[test]
    fn extra_patterns() {
        let sc = Scrubber::new(&ScrubConfig {
            extra_patterns: vec![r"CUST-\d{6}".into()],
            allow: vec!["CUST-000000".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            sc.scrub_str("customer CUST-123456 and CUST-000000"),
            "customer [redacted:custom] and CUST-000000"
        );
        // Built-ins still apply.
        assert_eq!(sc.scrub_str("a@b.io"), "[redacted:email]");
    }

    #[test]
    fn invalid_or_empty_extra_pattern_is_an_error() {
        let err = Scrubber::new(&ScrubConfig {
            extra_patterns: vec!["(unclosed".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, ScrubError::InvalidPattern { pattern, .. } if pattern == "(unclosed")
        );
        assert!(
            err.to_string()
                .starts_with("invalid scrub pattern \"(unclosed\""),
            "{err}"
        );
        let err = Scrubber::new(&ScrubConfig {
            extra_patterns: vec!["x*".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err,
            ScrubError::EmptyMatch {
                pattern: "x*".into()
            }
        );
    }

    #[test]
    fn notification_fields_are_scrubbed_but_urls_keep_working() {
        let mut n = sample_firing();
        n.subject
            .insert("customer".into(), "alice@example.com".into());
        n.labels.insert("client_ip".into(), "203.0.113.9".into());
        n.annotations.insert(
            "description".into(),
            "Caller +1 555 010 0000 reported it".into(),
        );
        n.incident.as_mut().unwrap().url =
            Some("https://herald.example.com/incidents/INC-42?user=ops@example.com&token=0123456789abcdefABCD".into());
        let before = n.clone();
        Scrubber::default().scrub_notification(&mut n);
        assert_eq!(n.subject["customer"], "[redacted:email]");
        assert_eq!(n.subject["service"], "checkout");
        assert_eq!(n.labels["client_ip"], "[redacted:ip]");
        assert_eq!(
            n.annotations["description"],
            "Caller [redacted:phone] reported it"
        );
        assert_eq!(n.annotations["summary"], before.annotations["summary"]);
        assert_eq!(
            n.incident.as_ref().unwrap().url.as_deref(),
            Some("https://herald.example.com/incidents/INC-42?user=ops@example.com&token=[redacted:secret]")
        );
        assert_eq!(n.dedup_key, before.dedup_key);
    }

    #[test]
    fn subjects_are_scrubbed_unless_labels_are_kept() {
        let s = Subject::new([("service", "checkout"), ("customer", "alice@example.com")]);
        let on = Scrubber::default();
        assert_eq!(on.subject(&s).key(), r#"{customer="[redacted:email]",service="checkout"}"#);
        let key = on.outbox_subject(&s);
        assert!(key.starts_with(r#"{customer="[redacted:email]",service="checkout"}#"#), "{key}");
        let other = Subject::new([("service", "checkout"), ("customer", "bob@example.com")]);
        assert_ne!(on.outbox_subject(&other), key, "different subjects stay apart");
        let clean = Subject::new([("service", "checkout")]);
        assert_eq!(on.outbox_subject(&clean), clean.key());
        assert!(matches!(on.subject(&clean), Cow::Borrowed(_)));
        let off = Scrubber::new(&ScrubConfig { keep_labels: true, ..Default::default() }).unwrap();
        assert_eq!(off.outbox_subject(&s), s.key());
        let mut n = sample_firing();
        n.subject.insert("customer".into(), "alice@example.com".into());
        n.annotations.insert("description".into(), "mail alice@example.com".into());
        n.annotations.insert("summary".into(), "alice@example.com cannot pay; bob@example.com neither".into());
        off.scrub_notification(&mut n);
        assert_eq!(n.subject["customer"], "alice@example.com");
        assert_eq!(n.annotations["description"], "mail alice@example.com", "the subject's own value is kept");
        assert_eq!(n.annotations["summary"], "alice@example.com cannot pay; [redacted:email] neither");
        let mut r = RenderedText { title: "alice@example.com".into(), text: "bob@example.com".into() };
        off.scrub_rendered_for(&mut r, &n);
        assert_eq!((r.title.as_str(), r.text.as_str()), ("alice@example.com", "[redacted:email]"));
    }

    #[test]
    fn rendered_text_is_scrubbed() {
        let mut r = RenderedText {
            title: "bob@example.com".into(),
            text: "from 10.1.2.3".into(),
        };
        Scrubber::default().scrub_rendered(&mut r);
        assert_eq!(
            r,
            RenderedText {
                title: "[redacted:email]".into(),
                text: "from [redacted:ip]".into()
            }
        );
    }
}

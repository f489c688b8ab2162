//! `--events FILE`: the people's side of a past incident (acks, public updates, legal review,
//! resolution) at their real times, so a replay shows which prompts the team would have got.
//!
//! The file is a YAML list of `{at, subject | incident, type, …}` mappings, or the same as JSON
//! lines (one object per line; a JSON object is a YAML flow mapping, so both go through the one
//! YAML parser and every error is located as `path:line:col: message`). Event types and their
//! fields are the API's (`ack`, `public_update` with `channel`, `status` with `value`, …, plus
//! `declare` with `severity`). `at` is RFC 3339 or relative (`-2h`, `now`).
//! This module only reads and validates the file; the replay driver applies the events.

use std::path::Path;

use crate::config::rules::err_at;
use crate::config::yaml::{self, RawEvent, RawReplayEvent};
use crate::config::{Diagnostic, Diagnostics};
use crate::engine::{Event, Subject, Ts};

use super::parse_time;

/// What an event applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum EventTarget {
    /// The subject's latest incident (`declare` opens one).
    Subject(Subject),
    /// An incident by the id the replay gave it (`INC-1`, … in order of opening).
    Incident(String),
}

/// One event of the file, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedEvent {
    pub at: Ts,
    pub target: EventTarget,
    pub event: Event,
    /// `path:line:col` of the entry, for messages about it.
    pub location: String,
}

/// Reads and validates an events file. Every problem is reported, located.
pub fn load_events(path: &Path, now: Ts) -> Result<Vec<TimedEvent>, Diagnostics> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostics(vec![Diagnostic::error(&shown, 0, 0, format!("cannot read events file: {e}"))]))?;
    parse_events(&shown, &text, now)
}

/// Whether the text is JSON lines: every line that is not blank or a comment is an object.
fn is_json_lines(text: &str) -> bool {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).peekable();
    lines.peek().is_some() && lines.all(|l| l.starts_with('{'))
}

/// Parses the text of an events file (`shown` names it in messages).
pub fn parse_events(shown: &str, text: &str, now: Ts) -> Result<Vec<TimedEvent>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut raw: Vec<RawReplayEvent> = Vec::new();
    if is_json_lines(text) {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let offset = i as u64;
            match yaml::parse_all::<RawReplayEvent>(shown, line) {
                Ok(mut e) => {
                    shift(&mut e, offset);
                    raw.push(e);
                }
                Err(ds) => {
                    for mut d in ds.0 {
                        d.line = d.line.max(1) + offset;
                        diags.push(d);
                    }
                }
            }
        }
    } else {
        match yaml::parse_all::<Vec<RawReplayEvent>>(shown, text) {
            Ok(v) => raw = v,
            Err(ds) => diags.extend(ds),
        }
    }
    let mut out = Vec::new();
    for e in &raw {
        let at = match parse_time(&e.at.value, now) {
            Ok(t) => Some(t),
            Err(m) => {
                diags.push(err_at(shown, &e.at, m));
                None
            }
        };
        let target = match (&e.subject, &e.incident) {
            (Some(s), None) if s.value.is_empty() => {
                diags.push(err_at(shown, s, "subject needs at least one label"));
                None
            }
            (Some(s), None) => Some(EventTarget::Subject(Subject::new(s.value.clone()))),
            (None, Some(i)) => Some(EventTarget::Incident(i.value.clone())),
            (Some(s), Some(_)) => {
                diags.push(err_at(shown, s, "give `subject` or `incident`, not both"));
                None
            }
            (None, None) => {
                diags.push(err_at(shown, &e.kind, "an event needs `subject` (labels) or `incident` (an id)"));
                None
            }
        };
        let plain = RawEvent {
            at: e.at.clone(),
            kind: e.kind.clone(),
            channel: e.channel.clone(),
            value: e.value.clone(),
            severity: e.severity.clone(),
            security: e.security,
            actor: e.actor.clone(),
            note: e.note.clone(),
            incident: None,
        };
        let event = match crate::testing::parse_event(shown, &plain) {
            Ok(ev) => Some(ev),
            Err(d) => {
                diags.push(d);
                None
            }
        };
        if let (Event::Declare { .. }, Some(EventTarget::Incident(_))) = (event.as_ref().unwrap_or(&Event::Ack), &target) {
            diags.push(err_at(shown, &e.kind, "`declare` opens an incident: give `subject`, not `incident`"));
            continue;
        }
        if let (Some(at), Some(target), Some(event)) = (at, target, event) {
            out.push(TimedEvent { at, target, event, location: format!("{shown}:{}:{}", e.kind.line, e.kind.col) });
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    // Stable: events at the same time keep the file's order.
    out.sort_by_key(|e| e.at);
    Ok(out)
}

/// Moves every span of an entry parsed from one line down to that line of the file.
fn shift(e: &mut RawReplayEvent, offset: u64) {
    e.at.line += offset;
    e.kind.line += offset;
    if let Some(s) = e.subject.as_mut() {
        s.line += offset;
    }
    for s in [e.incident.as_mut(), e.channel.as_mut(), e.value.as_mut(), e.severity.as_mut()].into_iter().flatten() {
        s.line += offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Channel;

    const NOW: Ts = 1_800_000_000_000;

    #[test]
    fn yaml_list_and_json_lines_give_the_same_events() {
        let yaml = "- {at: '2026-11-20T10:20:00Z', subject: {service: checkout}, type: ack}\n\
                    - at: '2026-11-20T10:25:00Z'\n  incident: INC-1\n  type: public_update\n  channel: status_page\n";
        let jsonl = "{\"at\": \"2026-11-20T10:25:00Z\", \"incident\": \"INC-1\", \"type\": \"public_update\", \"channel\": \"status_page\"}\n\
                     {\"at\": \"2026-11-20T10:20:00Z\", \"subject\": {\"service\": \"checkout\"}, \"type\": \"ack\"}\n";
        let a = parse_events("e.yaml", yaml, NOW).unwrap();
        let b = parse_events("e.jsonl", jsonl, NOW).unwrap();
        let strip = |v: Vec<TimedEvent>| v.into_iter().map(|e| (e.at, e.target, e.event)).collect::<Vec<_>>();
        assert_eq!(strip(a.clone()), strip(b));
        assert_eq!(a[0].event, Event::Ack, "sorted by time");
        assert_eq!(a[1].event, Event::PublicUpdate { channel: Channel::StatusPage });
        assert_eq!(a[1].target, EventTarget::Incident("INC-1".into()));
        assert_eq!(a[1].location, "e.yaml:4:9");
    }

    #[test]
    fn every_problem_is_located_in_json_lines_too() {
        let jsonl = "{\"at\": \"2026-11-20T10:20:00Z\", \"subject\": {\"service\": \"a\"}, \"type\": \"ack\"}\n\
                     {\"at\": \"yesterday\", \"subject\": {\"service\": \"a\"}, \"type\": \"ack\"}\n\
                     {\"at\": \"-1h\", \"type\": \"nap\"}\n";
        let d = parse_events("e.jsonl", jsonl, NOW).unwrap_err();
        let text: Vec<String> = d.0.iter().map(|d| d.to_string()).collect();
        assert!(text.iter().any(|m| m.starts_with("e.jsonl:2:8: ") && m.contains("yesterday")), "{text:?}");
        assert!(text.iter().any(|m| m.starts_with("e.jsonl:3:") && m.contains("needs `subject`")), "{text:?}");
        assert!(text.iter().any(|m| m.starts_with("e.jsonl:3:") && m.contains("unknown event type \"nap\"")), "{text:?}");
    }
}

//! `herald replay --diff OTHER_RULES`: what changes between two replays of the same history —
//! the transitions, incidents and notifications only one of them has. Incident ids are
//! numbered per replay, so incidents compare by subject and times, not by id. Pure.

use std::collections::BTreeSet;

use crate::engine::{Phase, Ts};

use super::Outcome;

/// One line of a replay, comparable across replays.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    /// (at, subject key, rule, new phase)
    Transition { at: Ts, subject: String, rule: String, state: Phase },
    /// (opened at, subject key, resolved at); `id` is the replay's own id, shown only.
    Incident { opened_at: Ts, subject: String, resolved_at: Option<Ts>, id: String },
    /// (at, subject key, rule, receiver, status)
    Notification { at: Ts, subject: String, rule: String, receiver: String, status: &'static str },
}

impl Item {
    /// When it happened (for sorting the diff as a timeline).
    pub fn at(&self) -> Ts {
        match self {
            Item::Transition { at, .. } | Item::Incident { opened_at: at, .. } | Item::Notification { at, .. } => *at,
        }
    }

    fn key(&self) -> Item {
        match self {
            Item::Incident { opened_at, subject, resolved_at, .. } => {
                Item::Incident { opened_at: *opened_at, subject: subject.clone(), resolved_at: *resolved_at, id: String::new() }
            }
            other => other.clone(),
        }
    }
}

/// Every comparable item of a replay.
pub fn items(o: &Outcome) -> Vec<Item> {
    let mut v: Vec<Item> = Vec::new();
    v.extend(o.transitions.iter().map(|t| Item::Transition { at: t.at, subject: t.subject.key().to_string(), rule: t.rule.clone(), state: t.to }));
    v.extend(o.incidents.iter().map(|i| Item::Incident {
        opened_at: i.opened_at,
        subject: i.subject.as_ref().map(|s| s.key().to_string()).unwrap_or_default(),
        resolved_at: i.resolved_at,
        id: i.id.clone(),
    }));
    v.extend(o.sent().map(|n| Item::Notification {
        at: n.at,
        subject: n.subject.key().to_string(),
        rule: n.rule.clone(),
        receiver: n.receiver.clone(),
        status: match n.status {
            crate::engine::DecisionStatus::Firing => "firing",
            crate::engine::DecisionStatus::Resolved => "resolved",
        },
    }));
    v
}

/// What differs: items only the base replay has (`removed`) and only the other has (`added`),
/// each in time order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    pub removed: Vec<Item>,
    pub added: Vec<Item>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// Compares two replays of the same range.
pub fn diff(base: &Outcome, other: &Outcome) -> Diff {
    let a = items(base);
    let b = items(other);
    let ka: BTreeSet<Item> = a.iter().map(Item::key).collect();
    let kb: BTreeSet<Item> = b.iter().map(Item::key).collect();
    let mut removed: Vec<Item> = a.into_iter().filter(|i| !kb.contains(&i.key())).collect();
    let mut added: Vec<Item> = b.into_iter().filter(|i| !ka.contains(&i.key())).collect();
    removed.sort_by_key(|i| (i.at(), i.clone()));
    added.sort_by_key(|i| (i.at(), i.clone()));
    Diff { removed, added }
}

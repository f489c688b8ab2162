//! Subjects: the thing a rule instance and an incident are about, identified by label values
//! (`{service="checkout"}`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A label set identifying one subject. Cheap to clone; compares and hashes by its canonical
/// key `{a="x",b="y"}` (labels sorted by name, values escaped as in PromQL).
#[derive(Clone)]
pub struct Subject {
    key: Arc<str>,
    labels: Arc<[(String, String)]>,
}

impl Subject {
    /// Builds a subject from label pairs in any order.
    pub fn new<K: Into<String>, V: Into<String>>(labels: impl IntoIterator<Item = (K, V)>) -> Subject {
        let mut labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        let mut key = String::new();
        write_key(&mut key, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Subject { key: key.into(), labels: labels.into() }
    }

    /// The canonical key, e.g. `{service="checkout"}`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Label pairs sorted by name.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// One label's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether this subject has exactly these label names (in any order).
    pub fn has_label_names(&self, names: &[String]) -> bool {
        self.labels.len() == names.len() && names.iter().all(|n| self.get(n).is_some())
    }

    /// Parses a canonical key back into a subject (used by storage).
    pub fn parse_key(key: &str) -> Option<Subject> {
        let inner = key.strip_prefix('{')?.strip_suffix('}')?;
        let mut labels = Vec::new();
        let mut chars = inner.chars().peekable();
        while chars.peek().is_some() {
            let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    c => value.push(c),
                }
            }
            labels.push((name, value));
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        Some(Subject::new(labels))
    }
}

/// Appends the canonical key of label pairs (already sorted by name, no duplicate names) to
/// `out`: `{a="x",b="y"}`, values escaped as in PromQL. Lets a caller look a subject up by key
/// (see the `Borrow<str>` impl) without building one.
pub fn write_key<'a>(out: &mut String, sorted: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    for (i, (k, v)) in sorted.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Subjects compare and hash by their key, so a set of subjects can be searched by key.
impl std::borrow::Borrow<str> for Subject {
    fn borrow(&self) -> &str {
        &self.key
    }
}

impl PartialEq for Subject {
    fn eq(&self, other: &Self) -> bool {
        // Clones of one subject share their key: no need to compare the text.
        Arc::ptr_eq(&self.key, &other.key) || self.key == other.key
    }
}
impl Eq for Subject {}
impl Hash for Subject {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl PartialOrd for Subject {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Subject {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.key, &other.key) {
            return std::cmp::Ordering::Equal;
        }
        self.key.cmp(&other.key)
    }
}
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}
impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_key_is_order_independent_and_round_trips() {
        let a = Subject::new([("service", "checkout"), ("region", "eu")]);
        let b = Subject::new([("region", "eu"), ("service", "checkout")]);
        assert_eq!(a, b);
        assert_eq!(a.key(), r#"{region="eu",service="checkout"}"#);
        let odd = Subject::new([("service", "a\"b\\c,d=e")]);
        assert_eq!(Subject::parse_key(odd.key()).unwrap().get("service"), Some("a\"b\\c,d=e"));
        assert_eq!(Subject::parse_key(a.key()).unwrap(), a);
        assert_eq!(Subject::parse_key("{}").unwrap().labels().len(), 0);
    }
}

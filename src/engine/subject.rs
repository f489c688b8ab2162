//! Subjects: the thing a rule instance and an incident are about, identified by label values
//! (`{service="checkout"}`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

/// A label set identifying one subject. Cheap to clone (one pointer); compares by its
/// canonical key `{a="x",b="y"}` (labels sorted by name, values escaped as in PromQL).
///
/// It carries the hash of that key, computed once when the subject is built with a key chosen
/// at random per process (SipHash, as std's `HashMap` does, so crafted label values cannot
/// force collisions). Maps keyed by subject ([`SubjectMap`], [`SubjectSet`]) use that hash as
/// is: a lookup hashes nothing and, since one source's subjects share their allocation (see
/// `source::keyed::SubjectInterner`), most comparisons compare a pointer.
#[derive(Clone)]
pub struct Subject(Arc<Inner>);

/// Two allocations besides the `Arc`'s, whatever the number of labels: at 10,000 subjects a
/// subject is most of what Herald holds, and a string per label name and value doubled that.
struct Inner {
    hash: u64,
    /// The canonical key, then each label's name and value, back to back.
    text: Box<str>,
    /// Where the key ends in `text`, then for each label (sorted by name) where its name
    /// ends and where its value ends.
    ends: Box<[u32]>,
}

impl Inner {
    fn key(&self) -> &str {
        &self.text[..self.ends[0] as usize]
    }
}

/// A subject's label pairs, sorted by name (see [`Subject::labels`]).
#[derive(Clone)]
pub struct Labels<'a> {
    text: &'a str,
    /// The end of the previous value (where the next name starts), then the pending ends.
    start: u32,
    ends: &'a [u32],
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        let [name_end, value_end, rest @ ..] = self.ends else { return None };
        let pair = (&self.text[self.start as usize..*name_end as usize], &self.text[*name_end as usize..*value_end as usize]);
        self.start = *value_end;
        self.ends = rest;
        Some(pair)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.ends.len() / 2, Some(self.ends.len() / 2))
    }
}

impl ExactSizeIterator for Labels<'_> {}

/// The per-process key of subject hashes.
fn hash_key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

/// A map keyed by subject that hashes with the subject's own hash.
pub type SubjectMap<V> = HashMap<Subject, V, BuildSubjectHasher>;
/// A set of subjects that hashes with their own hash.
pub type SubjectSet = HashSet<Subject, BuildSubjectHasher>;

/// Builds [`SubjectHasher`]s: for keys that hash as one `u64` (a [`Subject`], or a reference
/// to one), that `u64` is the hash.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildSubjectHasher;

impl BuildHasher for BuildSubjectHasher {
    type Hasher = SubjectHasher;
    fn build_hasher(&self) -> SubjectHasher {
        SubjectHasher(0)
    }
}

/// Passes a subject's precomputed hash through. Anything else written to it is folded in
/// (FNV-1a): correct, but only subjects are meant to be hashed with it.
#[derive(Clone, Copy, Debug)]
pub struct SubjectHasher(u64);

impl Hasher for SubjectHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Subject {
    /// Builds a subject from label pairs in any order.
    pub fn new<K: Into<String>, V: Into<String>>(labels: impl IntoIterator<Item = (K, V)>) -> Subject {
        let mut labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        let mut text = String::new();
        write_key(&mut text, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let hash = hash_key().hash_one(text.as_str());
        let mut ends = Vec::with_capacity(1 + 2 * labels.len());
        let end = |text: &String| u32::try_from(text.len()).expect("a subject's labels are far below 4 GiB");
        ends.push(end(&text));
        for (k, v) in &labels {
            text.push_str(k);
            ends.push(end(&text));
            text.push_str(v);
            ends.push(end(&text));
        }
        Subject(Arc::new(Inner { hash, text: text.into(), ends: ends.into() }))
    }

    /// The canonical key, e.g. `{service="checkout"}`.
    pub fn key(&self) -> &str {
        self.0.key()
    }

    /// Label pairs (name, value) sorted by name.
    pub fn labels(&self) -> Labels<'_> {
        Labels { text: &self.0.text, start: self.0.ends[0], ends: &self.0.ends[1..] }
    }

    /// The value of the `i`-th label in name order (`i < labels().len()`).
    pub fn value_at(&self, i: usize) -> &str {
        let e = &self.0.ends[1 + 2 * i..];
        &self.0.text[e[0] as usize..e[1] as usize]
    }

    /// Whether anything but this handle holds the subject's allocation.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    /// Whether two subjects are one allocation (then they are equal without reading keys).
    pub fn same_allocation(&self, other: &Subject) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// One label's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Whether this subject has exactly these label names (in any order).
    pub fn has_label_names(&self, names: &[String]) -> bool {
        self.labels().len() == names.len() && names.iter().all(|n| self.get(n).is_some())
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
/// `out`: `{a="x",b="y"}`, values escaped as in PromQL.
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

// Subjects from one source share their allocation (see `source::keyed::SubjectInterner`), so
// the pointer is compared first, then the hash: most comparisons never read the keys.
impl PartialEq for Subject {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.key() == other.0.key())
    }
}
impl Eq for Subject {}
/// Equal subjects have equal keys, so equal hashes: the hash is the key's.
impl Hash for Subject {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash)
    }
}
impl PartialOrd for Subject {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Subject {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.key().cmp(other.0.key())
    }
}
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.key())
    }
}
impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.key())
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

    #[test]
    fn labels_and_values_read_back_from_one_buffer() {
        // The key, names and values share one string; escaping in the key does not shift them.
        let s = Subject::new([("service", "a\"b"), ("region", ""), ("az", "eu-1\nx")]);
        let labels: Vec<(&str, &str)> = s.labels().collect();
        assert_eq!(labels, [("az", "eu-1\nx"), ("region", ""), ("service", "a\"b")]);
        assert_eq!(s.labels().len(), 3);
        assert_eq!((s.value_at(0), s.value_at(1), s.value_at(2)), ("eu-1\nx", "", "a\"b"));
        assert_eq!(s.key(), r#"{az="eu-1\nx",region="",service="a\"b"}"#);
        assert_eq!(s.get("region"), Some(""));
        assert_eq!(s.get("zone"), None);
        assert!(s.has_label_names(&["service".into(), "az".into(), "region".into()]));
        let none = Subject::new(Vec::<(String, String)>::new());
        assert_eq!((none.labels().len(), none.key()), (0, "{}"));
    }

    #[test]
    fn subject_maps_find_equal_subjects_built_apart() {
        // Two allocations of one label set hash alike (the hash is the key's), so a map built
        // from one finds the other; a different subject is not found.
        let mut m: SubjectMap<u32> = SubjectMap::default();
        for i in 0..1000 {
            m.insert(Subject::new([("service", format!("svc-{i}")), ("region", "eu".to_string())]), i);
        }
        for i in 0..1000 {
            let again = Subject::new([("region", "eu".to_string()), ("service", format!("svc-{i}"))]);
            assert_eq!(m.get(&again), Some(&i));
        }
        assert_eq!(m.get(&Subject::new([("service", "svc-1")])), None, "a different label set");
        let a = Subject::new([("service", "x")]);
        assert!(a.same_allocation(&a.clone()) && !a.same_allocation(&Subject::new([("service", "x")])));
    }
}

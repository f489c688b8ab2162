//! Instant-query answers parsed straight into per-subject values, and the subject interner
//! that lets every evaluation reuse the subjects of the one before.
//!
//! This is the daemon's hot path: each group evaluation parses one answer per signal, with one
//! series per subject (10,000 services is 10,000 series per answer). A general-purpose parse
//! builds every series' full label map and then keys it; here only the subject labels are read
//! (values borrow from the body unless escaped), every other label is skipped, and a subject
//! seen in the previous evaluation is reused instead of allocated. The result is identical to
//! [`super::key_by_subject`] over the general parse, errors included: an answer that needs an
//! error naming whole series (two series for one subject) is parsed again in full for it.
//!
//! It must not decide what a value means (NaN and ±Inf pass through) or do I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::answer::{self, CowStr, Envelope, ResultReader};
use super::compact;
use super::{key_by_subject, Sample, SourceError};
use crate::engine::{Subject, SubjectMap};

/// Reuses subjects across evaluations: a series' subject is looked up by its label values
/// (encoded in a reused buffer) instead of allocated anew. Call
/// [`SubjectInterner::next_generation`] once per evaluation: a subject that was not looked up
/// in the last one and that nothing else holds (no answer, instance, incident) is forgotten.
///
/// Answers to the same query list their series in the same order from one evaluation to the
/// next (Prometheus orders them by series), so between [`SubjectInterner::begin_answer`] and
/// [`SubjectInterner::end_answer`] the subject at each position is first compared with the
/// one at that position last time: a match costs no hashing and no lookup.
///
/// One interner serves one list of subject label names (a group's); called with another list,
/// it starts over.
#[derive(Debug, Default)]
pub struct SubjectInterner {
    names: Vec<String>,
    /// For each of `names`, the index of that label in a subject's (sorted) labels.
    sorted_index: Vec<usize>,
    /// Subjects by lookup key, each with the generation that last looked it up.
    subjects: HashMap<Box<[u8]>, (Subject, u32)>,
    generation: u32,
    /// The lookup key being built: each value's length (4 bytes) then its bytes, in `names` order.
    key: Vec<u8>,
    /// Per query: the subjects of its last answer, in order.
    last_order: HashMap<String, Vec<Subject>>,
    /// The answer being parsed: its query, the last answer's order, this answer's so far.
    answer: Option<(String, Vec<Subject>, Vec<Subject>)>,
    /// A size for the answer being parsed when there is no last one (see `expect_len`).
    expected: usize,
    /// Per query: the length of its last answer's body (see [`SubjectInterner::body_hint`]).
    body_lens: HashMap<String, usize>,
}

impl SubjectInterner {
    /// Starts a new generation; see the type's documentation for what is forgotten.
    pub fn next_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        let keep = self.generation.wrapping_sub(1);
        self.subjects.retain(|_, (s, g)| *g == keep || s.is_shared());
    }

    /// The answer to `query` is about to be parsed: positions are compared with its last one.
    pub fn begin_answer(&mut self, query: &str) {
        let last = self.last_order.remove(query).unwrap_or_default();
        let capacity = last.len();
        self.expected = 0;
        self.answer = Some((query.to_string(), last, Vec::with_capacity(capacity)));
    }

    /// How many series the answer being parsed is expected to have (a capacity hint): the
    /// query's last answer's, or what [`SubjectInterner::expect_len`] said.
    pub fn expected_len(&self) -> usize {
        self.answer.as_ref().map_or(0, |(_, last, _)| last.len()).max(self.expected)
    }

    /// Sizes the answer being parsed (the query's first): its map and order are allocated
    /// once rather than grown by doubling, which holds two tables at the largest step (and
    /// sets the allocator's high-water mark at the first evaluation).
    pub fn expect_len(&mut self, n: usize) {
        self.expected = n;
        if let Some((_, _, order)) = &mut self.answer {
            order.reserve(n);
        }
    }

    /// The answer being parsed is read again from its start (the fast path gave up on it):
    /// its order so far is dropped.
    pub fn restart_answer(&mut self) {
        if let Some((_, _, order)) = &mut self.answer {
            order.clear();
        }
    }

    /// The answer is parsed (or failed): its order is kept for the query's next answer.
    pub fn end_answer(&mut self) {
        if let Some((query, _, order)) = self.answer.take() {
            self.last_order.insert(query, order);
        }
    }

    /// How long the body of `query`'s next answer is likely to be: its last one's, as noted
    /// by [`SubjectInterner::note_body_len`] (0 if none). Answers are streamed without a
    /// length, so the body's buffer is allocated once at about this size rather than grown
    /// by doubling (which ends up to twice the answer, and copies it on the way).
    pub fn body_hint(&self, query: &str) -> usize {
        self.body_lens.get(query).copied().unwrap_or(0)
    }

    /// Notes the length of `query`'s answer body, for [`SubjectInterner::body_hint`].
    pub fn note_body_len(&mut self, query: &str, len: usize) {
        match self.body_lens.get_mut(query) {
            Some(l) => *l = len,
            None => {
                self.body_lens.insert(query.to_string(), len);
            }
        }
    }

    /// The subject with these label values (`values[i]` for `names[i]`; `None` is an empty
    /// value, as PromQL treats a missing label).
    pub fn intern(&mut self, names: &[String], values: &[Option<Cow<'_, str>>]) -> Subject {
        if self.names != names {
            let mut sorted: Vec<usize> = (0..names.len()).collect();
            sorted.sort_by(|a, b| names[*a].cmp(&names[*b]));
            let mut sorted_index = vec![0; names.len()];
            for (pos, i) in sorted.into_iter().enumerate() {
                sorted_index[i] = pos;
            }
            // The answer being parsed is still recorded (its order starts over: the subjects
            // of another list of names are not this one's).
            let answer = self.answer.take().map(|(query, _, _)| (query, Vec::new(), Vec::with_capacity(self.expected)));
            *self = SubjectInterner {
                names: names.to_vec(),
                sorted_index,
                generation: self.generation,
                answer,
                expected: self.expected,
                body_lens: std::mem::take(&mut self.body_lens),
                ..SubjectInterner::default()
            };
        }
        let value = |i: usize| values[i].as_deref().unwrap_or("");
        if let Some((_, last, order)) = &mut self.answer {
            if let Some(s) = last.get(order.len()) {
                // Every subject here has exactly `names` (sorted): compare values in place.
                if s.labels().len() == names.len() && self.sorted_index.iter().enumerate().all(|(i, &at)| s.value_at(at) == value(i)) {
                    let s = s.clone();
                    order.push(s.clone());
                    return s;
                }
            }
        }
        self.key.clear();
        for i in 0..names.len() {
            let v = value(i);
            self.key.extend_from_slice(&(v.len() as u32).to_le_bytes());
            self.key.extend_from_slice(v.as_bytes());
        }
        let s = match self.subjects.get_mut(self.key.as_slice()) {
            Some((s, g)) => {
                *g = self.generation;
                s.clone()
            }
            None => {
                let s = Subject::new(names.iter().enumerate().map(|(i, n)| (n.as_str(), value(i))));
                self.subjects.insert(self.key.as_slice().into(), (s.clone(), self.generation));
                s
            }
        };
        if let Some((_, _, order)) = &mut self.answer {
            order.push(s.clone());
        }
        s
    }

    /// How many subjects it holds.
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    /// Whether it holds no subject.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an instant-query answer held, before it is mapped onto a [`SourceError`] (which needs
/// the source's URL and timeout).
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// A vector keyed by subject, or a scalar (one subject with empty label values).
    Values(SubjectMap<f64>),
    /// `"status": "error"`: whether `errorType` was `timeout`, and the `error` message.
    Failed { timeout: bool, message: String },
    /// A result type other than vector or scalar (`matrix`, `string`).
    Type(String),
    /// A sample that is not a float (a native histogram).
    NotFloat,
    /// Two series for one subject (the error names both).
    Error(SourceError),
}

/// Parses an instant-query answer (`/api/v1/query`) into values keyed by `subject_labels`.
/// `Err` is a body that is not the API's JSON.
pub fn parse_instant(body: &[u8], subject_labels: &[String], interner: &mut SubjectInterner) -> Result<Answer, serde_json::Error> {
    size_first_answer(body, interner);
    // Most answers are in the compact shape Prometheus writes: scanned without a JSON parser.
    if let Some(read) = compact_read(body, subject_labels, interner) {
        return answer_of(read, body, subject_labels);
    }
    parse_general(body, subject_labels, interner)
}

/// Sizes a query's first answer (later ones are sized from the last): each series has one
/// `"metric"` key. A label value "metric" counts too, which only over-sizes a little; at
/// least 20 bytes per series.
fn size_first_answer(body: &[u8], interner: &mut SubjectInterner) {
    if interner.expected_len() == 0 {
        let keys = body.windows(8).filter(|w| w == b"\"metric\"").count();
        interner.expect_len(keys.min(body.len() / 20));
    }
}

/// [`parse_instant`] without the fast path (nor the sizing, done before it): any answer the
/// API may give.
fn parse_general(body: &[u8], subject_labels: &[String], interner: &mut SubjectInterner) -> Result<Answer, serde_json::Error> {
    let mut reader = Instant { names: subject_labels, interner };
    Ok(match answer::parse(body, &mut reader)? {
        Envelope::Failed { timeout, message } => Answer::Failed { timeout, message },
        Envelope::Result(read) => return answer_of(read, body, subject_labels),
        Envelope::Type(t) => Answer::Type(t),
        Envelope::Missing => return Err(de::Error::custom("no data.result in a successful answer")),
    })
}

/// What a read result means: values, or the error for a histogram or a duplicated subject.
fn answer_of(read: Read, body: &[u8], subject_labels: &[String]) -> Result<Answer, serde_json::Error> {
    Ok(match read {
        Read { values, duplicate: false, not_float: false } => Answer::Values(values),
        Read { not_float: true, .. } => Answer::NotFloat,
        Read { duplicate: true, .. } => match key_by_subject(&full_samples(body)?, subject_labels) {
            Ok(values) => Answer::Values(values),
            Err(e) => Answer::Error(e),
        },
    })
}

/// The fast path ([`compact`]): `None` when the body is not in the compact shape; then the
/// answer's order is started over (subjects interned by the partial scan are reused by the
/// general one).
fn compact_read(body: &[u8], names: &[String], interner: &mut SubjectInterner) -> Option<Read> {
    let body = std::str::from_utf8(body).ok()?;
    let mut values = SubjectMap::with_capacity_and_hasher(interner.expected_len(), Default::default());
    let mut duplicate = false;
    let mut owned: Vec<Option<Cow<'_, str>>> = vec![None; names.len()];
    let read = compact::scan_vector(body, names, |l, v| {
        for (o, l) in owned.iter_mut().zip(l) {
            *o = l.map(Cow::Borrowed);
        }
        duplicate |= values.insert(interner.intern(names, &owned), v).is_some();
    });
    if read.is_none() {
        interner.restart_answer();
        return None;
    }
    Some(Read { values, duplicate, not_float: false })
}

/// The general parse of a vector answer, every label kept (for error messages only).
fn full_samples(body: &[u8]) -> Result<Vec<Sample>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Full {
        data: FullData,
    }
    #[derive(Deserialize)]
    struct FullData {
        result: Vec<FullSeries>,
    }
    #[derive(Deserialize)]
    struct FullSeries {
        metric: BTreeMap<String, String>,
        value: (f64, String),
    }
    let full: Full = serde_json::from_slice(body)?;
    full.data.result.into_iter().map(|s| Ok(Sample { labels: s.metric, value: parse_value(&s.value.1)? })).collect()
}

/// A sample value as the API writes it: a decimal, `NaN`, `+Inf` or `-Inf`.
pub(super) fn parse_value<E: de::Error>(s: &str) -> Result<f64, E> {
    s.parse().map_err(|_| E::custom(format!("invalid sample value {s:?}")))
}

/// A vector or scalar result, read.
struct Read {
    values: SubjectMap<f64>,
    /// Two series had one subject.
    duplicate: bool,
    /// A sample was not a float (a native histogram).
    not_float: bool,
}

/// Reads the result of an instant query: a vector or a scalar (one subject with empty label
/// values).
struct Instant<'a> {
    names: &'a [String],
    interner: &'a mut SubjectInterner,
}

impl<'de> ResultReader<'de> for Instant<'_> {
    type Out = Read;
    fn takes(&self, result_type: &str) -> bool {
        matches!(result_type, "vector" | "scalar")
    }
    fn read<A: MapAccess<'de>>(&mut self, result_type: &str, map: &mut A) -> Result<Read, A::Error> {
        let Instant { names, interner } = self;
        if result_type == "vector" {
            return map.next_value_seed(Vector { names, interner });
        }
        let (_, v): (f64, CowStr<'_>) = map.next_value()?;
        let subject = interner.intern(names, &vec![None; names.len()]);
        Ok(Read { values: SubjectMap::from_iter([(subject, parse_value(&v.0)?)]), duplicate: false, not_float: false })
    }
}

/// `result` of a vector: `[{"metric": {...}, "value": [t, "v"]}, ...]`.
struct Vector<'a> {
    names: &'a [String],
    interner: &'a mut SubjectInterner,
}

impl<'de> DeserializeSeed<'de> for Vector<'_> {
    type Value = Read;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Vector<'_> {
    type Value = Read;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of series")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Read, A::Error> {
        let capacity = seq.size_hint().unwrap_or(0).max(self.interner.expected_len());
        let mut values = SubjectMap::with_capacity_and_hasher(capacity, Default::default());
        let (mut duplicate, mut not_float) = (false, false);
        let mut labels: Vec<Option<Cow<'de, str>>> = vec![None; self.names.len()];
        loop {
            labels.iter_mut().for_each(|l| *l = None);
            let Some(value) = seq.next_element_seed(Series { names: self.names, labels: &mut labels })? else { break };
            let Some(value) = value else {
                not_float = true;
                continue;
            };
            let subject = self.interner.intern(self.names, &labels);
            duplicate |= values.insert(subject, value).is_some();
        }
        Ok(Read { values, duplicate, not_float })
    }
}

/// One series: fills the subject labels, returns its value (`None` when it is not a float).
struct Series<'a, 'de> {
    names: &'a [String],
    labels: &'a mut Vec<Option<Cow<'de, str>>>,
}

impl<'de> DeserializeSeed<'de> for Series<'_, 'de> {
    type Value = Option<f64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Series<'_, 'de> {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a series")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<f64>, A::Error> {
        let mut value = None;
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "metric" => map.next_value_seed(Metric { names: self.names, labels: &mut *self.labels })?,
                "value" => {
                    let (_, v): (f64, CowStr<'_>) = map.next_value()?;
                    value = Some(parse_value(&v.0)?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(value)
    }
}

/// `metric`: keeps the subject labels, skips the rest.
struct Metric<'a, 'de> {
    names: &'a [String],
    labels: &'a mut Vec<Option<Cow<'de, str>>>,
}

impl<'de> DeserializeSeed<'de> for Metric<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Metric<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label set")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(CowStr(name)) = map.next_key()? {
            match self.names.iter().position(|n| *n == name) {
                Some(i) => self.labels[i] = Some(map.next_value::<CowStr<'_>>()?.0),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["service".to_string()]
    }

    fn parse(body: &str) -> Answer {
        parse_instant(body.as_bytes(), &labels(), &mut SubjectInterner::default()).expect("JSON")
    }

    fn values(a: Answer) -> SubjectMap<f64> {
        match a {
            Answer::Values(v) => v,
            other => panic!("expected values, got {other:?}"),
        }
    }

    #[test]
    fn a_vector_is_keyed_like_the_general_parse() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"x","service":"a","job":"j"},"value":[1700000000.5,"0.25"]},
            {"metric":{"service":"b\"q\u00e9"},"value":[1700000000.5,"NaN"]},
            {"metric":{"job":"no-service"},"value":[1700000000.5,"+Inf"]},
            {"metric":{"service":"c"},"value":[1700000000.5,"-Inf"]}]},"warnings":["w"]}"#;
        let got = values(parse(body));
        let want = key_by_subject(&full_samples(body.as_bytes()).unwrap(), &labels()).unwrap();
        assert_eq!(got.len(), 4);
        for (s, v) in &want {
            let g = got[s];
            assert!(g == *v || (g.is_nan() && v.is_nan()), "{s}: {g} vs {v}");
        }
        assert_eq!(got[&Subject::new([("service", "a")])], 0.25);
        assert!(got[&Subject::new([("service", "b\"q\u{e9}")])].is_nan());
        assert_eq!(got[&Subject::new([("service", "")])], f64::INFINITY, "a missing label is an empty value");
        assert_eq!(got[&Subject::new([("service", "c")])], f64::NEG_INFINITY);
    }

    #[test]
    fn subjects_with_several_labels_get_the_canonical_key() {
        let names = vec!["service".to_string(), "region".to_string()];
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"service":"a","region":"eu"},"value":[1,"1"]}]}}"#;
        let got = match parse_instant(body.as_bytes(), &names, &mut SubjectInterner::default()).unwrap() {
            Answer::Values(v) => v,
            other => panic!("{other:?}"),
        };
        let s = got.keys().next().unwrap();
        assert_eq!(s.key(), r#"{region="eu",service="a"}"#);
        assert_eq!(*s, Subject::new([("region", "eu"), ("service", "a")]));
    }

    #[test]
    fn scalars_errors_and_other_types() {
        let scalar = values(parse(r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"2.5"]}}"#));
        assert_eq!(scalar[&Subject::new([("service", "")])], 2.5);
        assert_eq!(
            parse(r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#),
            Answer::Failed { timeout: true, message: "query timed out".into() }
        );
        assert_eq!(
            parse(r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#),
            Answer::Failed { timeout: false, message: "parse error at char 5".into() }
        );
        assert_eq!(parse(r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#), Answer::Type("matrix".into()));
        assert_eq!(parse(r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#), Answer::Type("string".into()));
        let histogram = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"service":"a"},"histogram":[1,{"count":"3","sum":"1.5"}]}]}}"#;
        assert_eq!(parse(histogram), Answer::NotFloat);
        assert!(parse_instant(b"<html>", &labels(), &mut SubjectInterner::default()).is_err());
        let not_utf8 = b"{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[{\"metric\":{\"service\":\"\xff\"},\"value\":[1,\"1\"]}]}}";
        assert!(parse_instant(not_utf8, &labels(), &mut SubjectInterner::default()).is_err(), "a body that is not UTF-8 is refused");
        let garbage = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"one"]}]}}"#;
        assert!(parse_instant(garbage.as_bytes(), &labels(), &mut SubjectInterner::default()).is_err());
        assert!(parse_instant(br#"{"status":"success"}"#, &labels(), &mut SubjectInterner::default()).is_err());
    }

    #[test]
    fn result_before_result_type_is_parsed_too() {
        let body = r#"{"data":{"result":[{"value":[1,"3"],"metric":{"service":"a"}}],"resultType":"vector"},"status":"success"}"#;
        assert_eq!(values(parse(body))[&Subject::new([("service", "a")])], 3.0);
    }

    #[test]
    fn two_series_for_one_subject_name_both_as_the_general_parse_does() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"service":"a","code":"200"},"value":[1,"1"]},{"metric":{"service":"a","code":"500"},"value":[1,"2"]}]}}"#;
        match parse(body) {
            Answer::Error(e @ SourceError::DuplicateSubject { .. }) => {
                let m = e.to_string();
                assert!(m.contains(r#"code="200""#) && m.contains(r#"code="500""#), "{m}");
            }
            other => panic!("expected a duplicate-subject error, got {other:?}"),
        }
    }

    #[test]
    fn the_interner_keys_on_every_value_without_ambiguity() {
        // Values that would run together if they were only concatenated stay apart, and a
        // missing label is the empty value, as in PromQL.
        let names = vec!["a".to_string(), "b".to_string()];
        let mut interner = SubjectInterner::default();
        let x = interner.intern(&names, &[Some("ab".into()), Some("c".into())]);
        let y = interner.intern(&names, &[Some("a".into()), Some("bc".into())]);
        let z = interner.intern(&names, &[None, Some("".into())]);
        assert_ne!(x, y);
        assert_eq!(x, Subject::new([("a", "ab"), ("b", "c")]));
        assert_eq!(y, Subject::new([("a", "a"), ("b", "bc")]));
        assert_eq!(z, Subject::new([("a", ""), ("b", "")]));
        assert!(interner.intern(&names, &[Some("".into()), None]).same_allocation(&z));
        // Another list of names starts over rather than mixing subjects up.
        let other = vec!["b".to_string(), "a".to_string()];
        let w = interner.intern(&other, &[Some("ab".into()), Some("c".into())]);
        assert_eq!(w, Subject::new([("b", "ab"), ("a", "c")]));
        assert_eq!(interner.len(), 1);
    }

    #[test]
    fn the_interner_reuses_subjects_and_forgets_the_ones_that_disappear() {
        let mut interner = SubjectInterner::default();
        let names = labels();
        let a1 = interner.intern(&names, &[Some("a".into())]);
        interner.next_generation();
        let a2 = interner.intern(&names, &[Some("a".into())]);
        assert!(a1.same_allocation(&a2), "the same allocation is reused");
        drop((a1, a2));
        let b = interner.intern(&names, &[Some("b".into())]);
        assert_eq!(interner.len(), 2);
        interner.next_generation();
        interner.intern(&names, &[Some("b".into())]);
        interner.next_generation();
        assert_eq!(interner.len(), 1, "a was not seen for a whole generation and nothing holds it");
        interner.next_generation();
        interner.next_generation();
        assert_eq!(interner.len(), 1, "b is still held (by an instance, say): it stays one allocation");
        assert!(interner.intern(&names, &[Some("b".into())]).same_allocation(&b));
    }

    #[test]
    fn answers_in_the_same_order_reuse_positions_and_any_order_gives_the_same_subjects() {
        let names = labels();
        let body = |order: &[&str]| {
            let series: Vec<String> = order.iter().map(|s| format!(r#"{{"metric":{{"service":"{s}"}},"value":[1,"1"]}}"#)).collect();
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, series.join(","))
        };
        let mut interner = SubjectInterner::default();
        let parse = |interner: &mut SubjectInterner, b: &str| {
            interner.begin_answer("q");
            let r = parse_instant(b.as_bytes(), &names, interner);
            interner.end_answer();
            values(r.expect("JSON"))
        };
        let first = parse(&mut interner, &body(&["a", "b", "c"]));
        // Same order, a reordered answer, one with a series gone and one new: always the
        // subjects of the labels, and the same allocations for the ones seen before.
        for order in [&["a", "b", "c"][..], &["c", "a", "b"], &["a", "c"], &["d", "a", "b", "c"]] {
            interner.next_generation();
            let got = parse(&mut interner, &body(order));
            assert_eq!(got.len(), order.len());
            for s in order {
                let (subject, _) = got.get_key_value(&Subject::new([("service", *s)])).expect("present");
                if let Some((seen, _)) = first.get_key_value(subject) {
                    assert!(seen.same_allocation(subject), "{s} reused");
                }
            }
        }
    }

    #[test]
    fn a_first_answer_is_sized_from_its_body_and_later_ones_from_the_last() {
        let names = labels();
        let body = |n: usize| {
            let series: Vec<String> = (0..n).map(|i| format!(r#"{{"metric":{{"service":"s{i}"}},"value":[1,"1"]}}"#)).collect();
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, series.join(","))
        };
        let mut interner = SubjectInterner::default();
        interner.begin_answer("q");
        assert_eq!(interner.expected_len(), 0, "nothing known before the body");
        let first = values(parse_instant(body(300).as_bytes(), &names, &mut interner).expect("JSON"));
        assert_eq!(interner.expected_len(), 300, "one series per \"metric\" key");
        assert!(first.capacity() >= 300 && first.len() == 300);
        interner.end_answer();
        interner.begin_answer("q");
        assert_eq!(interner.expected_len(), 300, "the last answer's size");
        parse_instant(body(5).as_bytes(), &names, &mut interner).expect("JSON");
        interner.end_answer();
        interner.begin_answer("other");
        assert_eq!(interner.expected_len(), 0, "another query starts unsized");
    }

    #[test]
    fn a_fast_path_given_up_midway_leaves_no_trace_in_the_order() {
        // The second series has an escaped value: the fast path interns the first, gives up,
        // and the general parse reads the whole answer again.
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"service":"a"},"value":[1,"1"]},{"metric":{"service":"b\"c"},"value":[1,"2"]}]}}"#;
        let mut interner = SubjectInterner::default();
        interner.begin_answer("q");
        let got = values(parse_instant(body.as_bytes(), &labels(), &mut interner).unwrap());
        interner.end_answer();
        assert_eq!(got.len(), 2);
        let order: Vec<String> = interner.last_order["q"].iter().map(|s| s.get("service").unwrap().to_string()).collect();
        assert_eq!(order, ["a", "b\"c"]);
    }

    #[test]
    fn a_query_body_is_sized_from_its_last_one() {
        let mut interner = SubjectInterner::default();
        assert_eq!(interner.body_hint("q"), 0, "nothing known yet");
        interner.note_body_len("q", 630_000);
        interner.note_body_len("other", 10);
        assert_eq!((interner.body_hint("q"), interner.body_hint("other")), (630_000, 10));
        interner.note_body_len("q", 640_000);
        // Another list of subject labels starts the subjects over, not the sizes.
        interner.intern(&["team".to_string()], &[None]);
        assert_eq!(interner.body_hint("q"), 640_000);
    }

    mod fast_path {
        use super::*;
        use proptest::prelude::*;

        /// A series as serde_json writes it: labels (names among a few, values with quotes,
        /// backslashes, non-ASCII, control characters, the word "metric"), then a value.
        fn series() -> impl Strategy<Value = (BTreeMap<String, String>, String)> {
            let name = prop_oneof![Just("service"), Just("env"), Just("__name__"), Just("metric")];
            let value = proptest::collection::vec(prop_oneof![Just("a"), Just("svc-1"), Just("\""), Just("\\"), Just("é"), Just("\n"), Just("metric"), Just("")], 0..4)
                .prop_map(|parts| parts.concat());
            let sample = prop_oneof![Just("NaN".to_string()), Just("+Inf".to_string()), Just("-Inf".to_string()), any::<f64>().prop_map(|f| f.to_string()), Just("1e-3".to_string())];
            (proptest::collection::btree_map(name.prop_map(String::from), value, 0..4), sample)
        }

        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }

        fn same(a: &Answer, b: &Answer) -> bool {
            match (a, b) {
                (Answer::Values(x), Answer::Values(y)) => {
                    x.len() == y.len() && x.iter().all(|(s, v)| y.get(s).is_some_and(|w| w == v || (w.is_nan() && v.is_nan())))
                }
                _ => a == b,
            }
        }

        proptest! {
            /// Whichever path reads an answer, the values, the errors and the interned order
            /// are the same; and the compact shape Prometheus writes takes the fast path.
            #[test]
            fn fast_and_general_paths_agree(result in proptest::collection::vec(series(), 0..12), ts in prop_oneof![Just(1.5f64), Just(1.7e9), Just(0.0), Just(-2.25)]) {
                // In Prometheus's key order, which serde_json's maps would sort.
                let result: Vec<String> = result.iter().map(|(m, v)| format!(r#"{{"metric":{},"value":[{},{}]}}"#, json(m), json(&ts), json(v))).collect();
                let body = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(","));
                let names = labels();
                let (mut fast, mut general) = (SubjectInterner::default(), SubjectInterner::default());
                fast.begin_answer("q");
                general.begin_answer("q");
                let a = parse_instant(body.as_bytes(), &names, &mut fast).unwrap();
                let b = parse_general(body.as_bytes(), &names, &mut general).unwrap();
                prop_assert!(same(&a, &b), "{a:?} vs {b:?} for {body}");
                let escaped = body.contains('\\');
                let mut probe = SubjectInterner::default();
                probe.begin_answer("q");
                prop_assert_eq!(compact_read(body.as_bytes(), &names, &mut probe).is_some(), !escaped, "{}", body);
                fast.end_answer();
                general.end_answer();
                prop_assert_eq!(fast.last_order.get("q").map(|o| o.iter().map(|s| s.key().to_string()).collect::<Vec<_>>()),
                    general.last_order.get("q").map(|o| o.iter().map(|s| s.key().to_string()).collect::<Vec<_>>()));
            }
        }
    }
}

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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{key_by_subject, Sample, SourceError};
use crate::engine::subject::write_key;
use crate::engine::Subject;

/// Reuses subjects across evaluations: a series' subject is looked up by its canonical key
/// (built in a reused buffer) instead of allocated anew. It remembers the subjects of the
/// current and the previous generation (call [`SubjectInterner::next_generation`] once per
/// evaluation), so a subject that disappears is forgotten after one evaluation.
#[derive(Debug, Default)]
pub struct SubjectInterner {
    current: HashSet<Subject>,
    previous: HashSet<Subject>,
    key: String,
    order: Vec<usize>,
}

impl SubjectInterner {
    /// Starts a new generation: subjects not looked up since the previous call are dropped at
    /// the next one.
    pub fn next_generation(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
    }

    /// The subject with these label values (`values[i]` for `names[i]`; `None` is an empty
    /// value, as PromQL treats a missing label).
    pub fn intern(&mut self, names: &[String], values: &[Option<Cow<'_, str>>]) -> Subject {
        let value = |i: usize| values[i].as_deref().unwrap_or("");
        self.order.clear();
        self.order.extend(0..names.len());
        self.order.sort_by(|a, b| names[*a].cmp(&names[*b]));
        self.key.clear();
        write_key(&mut self.key, self.order.iter().map(|&i| (names[i].as_str(), value(i))));
        if let Some(s) = self.current.get(self.key.as_str()) {
            return s.clone();
        }
        let s = match self.previous.take(self.key.as_str()) {
            Some(s) => s,
            None => Subject::new(names.iter().enumerate().map(|(i, n)| (n.as_str(), value(i)))),
        };
        self.current.insert(s.clone());
        s
    }

    /// How many subjects it holds (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
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
    Values(HashMap<Subject, f64>),
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
    let mut hint = None;
    loop {
        let mut de = serde_json::Deserializer::from_slice(body);
        let top = Top { names: subject_labels, interner: &mut *interner, hint: hint.as_deref() }.deserialize(&mut de)?;
        de.end()?;
        return Ok(match top {
            TopOut::Failed { timeout, message } => Answer::Failed { timeout, message },
            // `result` came before `resultType`: parse again, knowing the type.
            TopOut::Data(DataOut::Unordered(t)) if hint.is_none() => {
                hint = Some(t);
                continue;
            }
            TopOut::Data(DataOut::Values { values, duplicate: false, not_float: false }) => Answer::Values(values),
            TopOut::Data(DataOut::Values { not_float: true, .. }) => Answer::NotFloat,
            TopOut::Data(DataOut::Values { duplicate: true, .. }) => match key_by_subject(&full_samples(body)?, subject_labels) {
                Ok(values) => Answer::Values(values),
                Err(e) => Answer::Error(e),
            },
            TopOut::Data(DataOut::Type(t) | DataOut::Unordered(t)) => Answer::Type(t),
            TopOut::Data(DataOut::Missing) => return Err(de::Error::custom("no data.result in a successful answer")),
        });
    }
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

/// A string that borrows from the body unless it had escapes.
pub(super) struct CowStr<'de>(pub(super) Cow<'de, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

enum TopOut {
    Failed { timeout: bool, message: String },
    Data(DataOut),
}

enum DataOut {
    Missing,
    Values { values: HashMap<Subject, f64>, duplicate: bool, not_float: bool },
    Type(String),
    /// `result` before `resultType` (the type, when it came).
    Unordered(String),
}

/// The top level: `{"status", "data", "errorType", "error", "warnings"...}`.
struct Top<'a> {
    names: &'a [String],
    interner: &'a mut SubjectInterner,
    hint: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = TopOut;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TopOut, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = TopOut;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Prometheus API answer")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopOut, A::Error> {
        let (mut status, mut error_type, mut error, mut data) = (None, None, None, DataOut::Missing);
        let Top { names, interner, hint } = self;
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "status" => status = Some(map.next_value::<CowStr<'_>>()?.0),
                "errorType" => error_type = Some(map.next_value::<CowStr<'_>>()?.0),
                "error" => error = Some(map.next_value::<CowStr<'_>>()?.0),
                "data" => data = map.next_value_seed(Data { names, interner: &mut *interner, hint })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match status.as_deref() {
            Some("success") => Ok(TopOut::Data(data)),
            Some("error") => Ok(TopOut::Failed {
                timeout: error_type.as_deref() == Some("timeout"),
                message: error.map(Cow::into_owned).unwrap_or_default(),
            }),
            other => Err(de::Error::custom(format!("unexpected status {other:?}"))),
        }
    }
}

/// `data`: `{"resultType", "result"}`.
struct Data<'a> {
    names: &'a [String],
    interner: &'a mut SubjectInterner,
    hint: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for Data<'_> {
    type Value = DataOut;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DataOut, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Data<'_> {
    type Value = DataOut;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the answer's data")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DataOut, A::Error> {
        let Data { names, interner, hint } = self;
        let mut result_type: Option<Cow<'_, str>> = hint.map(Cow::Borrowed);
        let mut out = DataOut::Missing;
        let mut unordered = false;
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "resultType" => {
                    let t = map.next_value::<CowStr<'_>>()?.0;
                    result_type.get_or_insert(t);
                }
                "result" => match result_type.as_deref() {
                    Some("vector") => out = map.next_value_seed(Vector { names, interner: &mut *interner })?,
                    Some("scalar") => {
                        let (_, v): (f64, CowStr<'_>) = map.next_value()?;
                        let subject = interner.intern(names, &vec![None; names.len()]);
                        out = DataOut::Values { values: HashMap::from([(subject, parse_value(&v.0)?)]), duplicate: false, not_float: false };
                    }
                    Some(other) => {
                        map.next_value::<IgnoredAny>()?;
                        out = DataOut::Type(other.to_string());
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        unordered = true;
                    }
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (unordered, result_type) {
            (true, Some(t)) => Ok(DataOut::Unordered(t.into_owned())),
            (true, None) => Err(de::Error::custom("no data.resultType")),
            (false, _) => Ok(out),
        }
    }
}

/// `result` of a vector: `[{"metric": {...}, "value": [t, "v"]}, ...]`.
struct Vector<'a> {
    names: &'a [String],
    interner: &'a mut SubjectInterner,
}

impl<'de> DeserializeSeed<'de> for Vector<'_> {
    type Value = DataOut;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DataOut, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Vector<'_> {
    type Value = DataOut;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of series")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DataOut, A::Error> {
        let mut values = HashMap::with_capacity(seq.size_hint().unwrap_or(0));
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
        Ok(DataOut::Values { values, duplicate, not_float })
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

    fn values(a: Answer) -> HashMap<Subject, f64> {
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
    fn the_interner_reuses_subjects_and_forgets_the_ones_that_disappear() {
        let mut interner = SubjectInterner::default();
        let names = labels();
        let a1 = interner.intern(&names, &[Some("a".into())]);
        interner.next_generation();
        let a2 = interner.intern(&names, &[Some("a".into())]);
        assert!(std::ptr::eq(a1.key(), a2.key()), "the same allocation is reused");
        let _b = interner.intern(&names, &[Some("b".into())]);
        assert_eq!(interner.len(), 2);
        interner.next_generation();
        interner.intern(&names, &[Some("b".into())]);
        interner.next_generation();
        assert_eq!(interner.len(), 1, "a was not seen for a whole generation");
    }
}

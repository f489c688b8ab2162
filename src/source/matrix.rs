//! Range-query answers (`/api/v1/query_range`) parsed straight onto their step grid as
//! [`RangeColumn`]s: eight bytes a step, no intermediate series of timestamped samples.
//!
//! This is `herald replay`'s and the catch-up's hot path: a 30-day replay reads tens of
//! millions of points. Values are written in place as they are read (labels borrow from the
//! body unless escaped); the result is identical to [`super::columns`] over the general parse,
//! series merged by their full label set when a range is sent in several requests.
//!
//! It must not decide what a value means (NaN and ±Inf pass through) or do I/O.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::answer::{self, CowStr, Envelope, ResultReader};
use super::keyed::parse_value;
use super::{column_value, grid_index, grid_len, RangeColumn, ABSENT};
use crate::engine::Ts;

/// The columns of one range query, filled by one or more answers.
pub struct Columns {
    start: Ts,
    step: i64,
    n: usize,
    series: Vec<RangeColumn>,
    index: HashMap<BTreeMap<String, String>, usize>,
    /// A series' points while its labels may still be to come (reused).
    points: Vec<(Ts, f64)>,
}

impl Columns {
    /// Empty columns for the grid `start + i × step_ms` up to `end`.
    pub fn new(start: Ts, end: Ts, step_ms: i64) -> Columns {
        Columns { start, step: step_ms, n: grid_len(start, end, step_ms), series: Vec::new(), index: HashMap::new(), points: Vec::new() }
    }

    /// The series, in the order they first appeared.
    pub fn into_series(self) -> Vec<RangeColumn> {
        self.series
    }

    fn add(&mut self, labels: BTreeMap<String, String>) {
        let i = match self.index.get(&labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(RangeColumn { labels, values: vec![ABSENT; self.n] });
                self.series.len() - 1
            }
        };
        let column = &mut self.series[i].values;
        for &(t, v) in &self.points {
            if let Some(k) = grid_index(t, self.start, self.step, self.n) {
                column[k] = column_value(v);
            }
        }
    }
}

/// What a range-query answer held, before it is mapped onto a [`super::SourceError`].
#[derive(Debug, PartialEq)]
pub enum MatrixAnswer {
    /// A matrix, now in the columns.
    Matrix,
    /// `"status": "error"`: whether `errorType` was `timeout`, and the `error` message.
    Failed { timeout: bool, message: String },
    /// A result type other than matrix.
    Type(String),
    /// A series without float samples (native histograms).
    NotFloat,
}

/// Parses a range-query answer into `into`. `Err` is a body that is not the API's JSON.
pub fn parse_matrix(body: &[u8], into: &mut Columns) -> Result<MatrixAnswer, serde_json::Error> {
    Ok(match answer::parse(body, &mut Range { into })? {
        Envelope::Failed { timeout, message } => MatrixAnswer::Failed { timeout, message },
        Envelope::Result(NotFloat(false)) => MatrixAnswer::Matrix,
        Envelope::Result(NotFloat(true)) => MatrixAnswer::NotFloat,
        Envelope::Type(t) => MatrixAnswer::Type(t),
        Envelope::Missing => return Err(de::Error::custom("no data.result in a successful answer")),
    })
}

/// Whether a series of a matrix had no float samples.
struct NotFloat(bool);

/// Reads the result of a range query: a matrix, into the columns.
struct Range<'a> {
    into: &'a mut Columns,
}

impl<'de> ResultReader<'de> for Range<'_> {
    type Out = NotFloat;
    fn takes(&self, result_type: &str) -> bool {
        result_type == "matrix"
    }
    fn read<A: MapAccess<'de>>(&mut self, _: &str, map: &mut A) -> Result<NotFloat, A::Error> {
        map.next_value_seed(Matrix { into: &mut *self.into })
    }
}

/// `result` of a matrix: `[{"metric": {...}, "values": [[t, "v"], ...]}, ...]`.
struct Matrix<'a> {
    into: &'a mut Columns,
}

impl<'de> DeserializeSeed<'de> for Matrix<'_> {
    type Value = NotFloat;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<NotFloat, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Matrix<'_> {
    type Value = NotFloat;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of series")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NotFloat, A::Error> {
        let mut not_float = false;
        loop {
            self.into.points.clear();
            let Some(series) = seq.next_element_seed(Series { points: &mut self.into.points })? else { break };
            match series {
                Some(labels) => self.into.add(labels),
                None => not_float = true,
            }
        }
        Ok(NotFloat(not_float))
    }
}

/// One series: its points into `points`; its labels, or `None` when it has no float samples.
struct Series<'a> {
    points: &'a mut Vec<(Ts, f64)>,
}

impl<'de> DeserializeSeed<'de> for Series<'_> {
    type Value = Option<BTreeMap<String, String>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Series<'_> {
    type Value = Option<BTreeMap<String, String>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a series")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut labels, mut floats) = (BTreeMap::new(), false);
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "metric" => {
                    let m: BTreeMap<CowStr<'de>, CowStr<'de>> = map.next_value()?;
                    labels = m.into_iter().map(|(k, v)| (k.0.into_owned(), v.0.into_owned())).collect();
                }
                "values" => {
                    map.next_value_seed(Points { points: &mut *self.points })?;
                    floats = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(floats.then_some(labels))
    }
}

impl PartialEq for CowStr<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for CowStr<'_> {}
impl PartialOrd for CowStr<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for CowStr<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// `values`: `[[t, "v"], ...]`.
struct Points<'a> {
    points: &'a mut Vec<(Ts, f64)>,
}

impl<'de> DeserializeSeed<'de> for Points<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Points<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of [time, value] pairs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.points.reserve(n);
        }
        while let Some((t, v)) = seq.next_element::<(f64, CowStr<'de>)>()? {
            self.points.push(((t * 1000.0).round() as Ts, parse_value(&v.0)?));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{columns, RangeSeries};

    fn parse(body: &str, start: Ts, end: Ts, step: i64) -> (MatrixAnswer, Vec<RangeColumn>) {
        let mut c = Columns::new(start, end, step);
        let a = parse_matrix(body.as_bytes(), &mut c).expect("JSON");
        (a, c.into_series())
    }

    fn same(a: &[RangeColumn], b: &[RangeColumn]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| x.labels == y.labels && x.values.len() == y.values.len() && x.values.iter().zip(&y.values).all(|(p, q)| p.to_bits() == q.to_bits()))
    }

    #[test]
    fn a_matrix_is_laid_on_its_grid_like_the_general_parse() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"x","service":"a","job":"j"},"values":[[1700000000,"0.25"],[1700000120,"NaN"],[1700000180.5,"+Inf"]]},
            {"values":[[1700000060,"-Inf"],[1700000061,"7"],[1700000240,"1e3"]],"metric":{"service":"b\"q\u00e9"}},
            {"metric":{},"values":[]}]},"warnings":["w"]}"#;
        let (answer, got) = parse(body, 1_700_000_000_000, 1_700_000_180_000, 60_000);
        assert_eq!(answer, MatrixAnswer::Matrix);
        let general = vec![
            RangeSeries {
                labels: BTreeMap::from([("__name__".into(), "x".into()), ("service".into(), "a".into()), ("job".into(), "j".into())]),
                points: vec![(1_700_000_000_000, 0.25), (1_700_000_120_000, f64::NAN), (1_700_000_180_500, f64::INFINITY)],
            },
            RangeSeries {
                labels: BTreeMap::from([("service".into(), "b\"q\u{e9}".into())]),
                points: vec![(1_700_000_060_000, f64::NEG_INFINITY), (1_700_000_061_000, 7.0), (1_700_000_240_000, 1000.0)],
            },
            RangeSeries { labels: BTreeMap::new(), points: vec![] },
        ];
        let want = columns(general, 1_700_000_000_000, 1_700_000_180_000, 60_000);
        assert!(same(&got, &want), "{got:?}\n{want:?}");
        assert!(crate::source::is_absent(got[1].values[0]) && got[1].values[1] == f64::NEG_INFINITY && crate::source::is_absent(got[1].values[2]));
        assert!(got[0].values[2].is_nan() && !crate::source::is_absent(got[0].values[2]), "a NaN value is not a missing one");
    }

    #[test]
    fn answers_in_several_requests_are_merged_by_series() {
        let mut c = Columns::new(0, 240_000, 60_000);
        let first = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"service":"a"},"values":[[0,"1"],[60,"2"]]}]}}"#;
        let second = r#"{"status":"success","data":{"result":[{"metric":{"service":"b"},"values":[[120,"5"]]},{"metric":{"service":"a"},"values":[[180,"3"],[240,"4"]]}],"resultType":"matrix"}}"#;
        assert_eq!(parse_matrix(first.as_bytes(), &mut c).unwrap(), MatrixAnswer::Matrix);
        assert_eq!(parse_matrix(second.as_bytes(), &mut c).unwrap(), MatrixAnswer::Matrix);
        let s = c.into_series();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].values[..2], [1.0, 2.0]);
        assert_eq!(s[0].values[3..], [3.0, 4.0]);
        assert!(crate::source::is_absent(s[0].values[2]));
        assert_eq!(s[1].values[2], 5.0);
    }

    #[test]
    fn errors_other_types_and_histograms() {
        let p = |b: &str| parse(b, 0, 60_000, 60_000).0;
        assert_eq!(p(r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#), MatrixAnswer::Failed { timeout: true, message: "query timed out".into() });
        assert_eq!(p(r#"{"status":"error","errorType":"bad_data","error":"bad"}"#), MatrixAnswer::Failed { timeout: false, message: "bad".into() });
        assert_eq!(p(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#), MatrixAnswer::Type("vector".into()));
        assert_eq!(p(r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"histograms":[[0,{"count":"1"}]]}]}}"#), MatrixAnswer::NotFloat);
        let mut c = Columns::new(0, 0, 1000);
        assert!(parse_matrix(b"<html>", &mut c).is_err());
        assert!(parse_matrix(br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[0,"one"]]}]}}"#, &mut c).is_err());
        assert!(parse_matrix(br#"{"status":"success"}"#, &mut c).is_err());
    }
}

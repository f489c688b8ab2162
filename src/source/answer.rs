//! The envelope every Prometheus API answer shares, `{"status", "data": {"resultType",
//! "result"}, "errorType", "error", ...}`, read once for both streaming parsers: instant
//! vectors ([`super::keyed`]) and range matrices ([`super::matrix`]). Each of them only says
//! which result types it takes and how to read one ([`ResultReader`]).
//!
//! It must not interpret values or do I/O.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Reads `data.result` once its type is known.
pub(super) trait ResultReader<'de> {
    /// A result, read.
    type Out;
    /// Whether it reads a result of this `resultType` (any other is skipped).
    fn takes(&self, result_type: &str) -> bool;
    /// Reads the `result` value (the next value of `map`), of a type it takes.
    fn read<A: MapAccess<'de>>(&mut self, result_type: &str, map: &mut A) -> Result<Self::Out, A::Error>;
}

/// An answer, read.
#[derive(Debug)]
pub(super) enum Envelope<O> {
    /// `"status": "error"`: whether `errorType` was `timeout`, and the `error` message.
    Failed { timeout: bool, message: String },
    /// `data.result`, read.
    Result(O),
    /// A `result` of a type the reader does not take.
    Type(String),
    /// A success without `data.result`.
    Missing,
}

/// Reads an answer, `reader` reading its result. Keys come in any order: when `result` comes
/// before `resultType`, it is skipped and the body read a second time knowing the type.
/// `Err` is a body that is not the API's JSON (not UTF-8 included).
pub(super) fn parse<'de, R: ResultReader<'de>>(body: &'de [u8], reader: &mut R) -> Result<Envelope<R::Out>, serde_json::Error> {
    // One UTF-8 check for the whole body, not one per string (`from_str` trusts its input).
    let body = std::str::from_utf8(body).map_err(|e| de::Error::custom(format!("the answer is not UTF-8: {e}")))?;
    let mut hint: Option<String> = None;
    loop {
        let mut de = serde_json::Deserializer::from_str(body);
        let pass = Top { reader: &mut *reader, hint: hint.as_deref() }.deserialize(&mut de)?;
        de.end()?;
        return Ok(match pass {
            Pass::Unordered(t) if hint.is_none() => {
                hint = Some(t);
                continue;
            }
            Pass::Unordered(t) => Envelope::Type(t),
            Pass::Done(envelope) => envelope,
        });
    }
}

/// One reading of the body.
enum Pass<O> {
    Done(Envelope<O>),
    /// `result` came before `resultType` (this type), so it was skipped.
    Unordered(String),
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

/// The top level: `{"status", "data", "errorType", "error", "warnings"...}`.
struct Top<'a, R> {
    reader: &'a mut R,
    hint: Option<&'a str>,
}

impl<'de, R: ResultReader<'de>> DeserializeSeed<'de> for Top<'_, R> {
    type Value = Pass<R::Out>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, R: ResultReader<'de>> Visitor<'de> for Top<'_, R> {
    type Value = Pass<R::Out>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Prometheus API answer")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut status, mut error_type, mut error, mut data) = (None, None, None, Pass::Done(Envelope::Missing));
        let Top { reader, hint } = self;
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "status" => status = Some(map.next_value::<CowStr<'_>>()?.0),
                "errorType" => error_type = Some(map.next_value::<CowStr<'_>>()?.0),
                "error" => error = Some(map.next_value::<CowStr<'_>>()?.0),
                "data" => data = map.next_value_seed(Data { reader: &mut *reader, hint })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match status.as_deref() {
            Some("success") => Ok(data),
            Some("error") => Ok(Pass::Done(Envelope::Failed {
                timeout: error_type.as_deref() == Some("timeout"),
                message: error.map(Cow::into_owned).unwrap_or_default(),
            })),
            other => Err(de::Error::custom(format!("unexpected status {other:?}"))),
        }
    }
}

/// `data`: `{"resultType", "result"}`.
struct Data<'a, R> {
    reader: &'a mut R,
    hint: Option<&'a str>,
}

impl<'de, R: ResultReader<'de>> DeserializeSeed<'de> for Data<'_, R> {
    type Value = Pass<R::Out>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, R: ResultReader<'de>> Visitor<'de> for Data<'_, R> {
    type Value = Pass<R::Out>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the answer's data")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Data { reader, hint } = self;
        let mut result_type: Option<Cow<'_, str>> = hint.map(Cow::Borrowed);
        let mut out = Envelope::Missing;
        let mut unordered = false;
        while let Some(CowStr(key)) = map.next_key()? {
            match key.as_ref() {
                "resultType" => {
                    let t = map.next_value::<CowStr<'_>>()?.0;
                    result_type.get_or_insert(t);
                }
                "result" => match result_type.as_deref() {
                    Some(t) if reader.takes(t) => out = Envelope::Result(reader.read(t, &mut map)?),
                    Some(t) => {
                        map.next_value::<IgnoredAny>()?;
                        out = Envelope::Type(t.to_string());
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
            (true, Some(t)) => Ok(Pass::Unordered(t.into_owned())),
            (true, None) => Err(de::Error::custom("no data.resultType")),
            (false, _) => Ok(Pass::Done(out)),
        }
    }
}

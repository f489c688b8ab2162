//! The located YAML tree and the error-collecting deserializer that walks it.
//!
//! serde-saphyr reads the text once into a [`Node`] tree (every node keeps its line, column and
//! byte span); then the raw structs of [`super`] are deserialized from the tree by [`De`], which
//! does not stop at the first problem:
//! - an unknown key is reported (with a "did you mean" for near misses) and skipped, using the
//!   `fields` list serde's derive passes to `deserialize_struct`, so every struct in `yaml.rs` is
//!   the schema and a new field needs no code here;
//! - a value of the wrong type (or a struct missing a required field) is reported, then pruned
//!   from the tree, and the document is deserialized again, until it succeeds. A missing-field
//!   error caused by a pruned value is not reported twice.
//!
//! The locations of the mappings that lost a value are kept ([`Walk::damaged`]), so callers can
//! drop follow-on semantic errors about those same objects.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

use crate::config::Diagnostic;

/// The struct name [`super::Spanned`] asks for; answered with (line, col, len, value).
pub(super) const SPANNED: &str = "$herald::Spanned";

/// One YAML node with where it was written.
#[derive(Debug)]
pub(super) struct Node {
    kind: Kind,
    line: u64,
    col: u64,
    offset: usize,
    len: usize,
    /// Pre-order index, unique in the document; set by [`Node::number`].
    id: usize,
}

#[derive(Debug)]
enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<Kind>::deserialize(d)?;
        let span = s.defined.span();
        Ok(Node {
            kind: s.value,
            line: s.referenced.line(),
            col: s.referenced.column(),
            offset: span.byte_offset().unwrap_or(0) as usize,
            len: span.byte_len().unwrap_or(span.len()) as usize,
            id: 0,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
                Kind::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Kind, E> {
                Ok(Kind::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Kind, E> {
                Ok(Kind::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Kind, E> {
                Ok(Kind::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Kind, E> {
                Ok(Kind::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
                Ok(Kind::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Kind, E> {
                Ok(Kind::Str(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut items = Vec::new();
                while let Some(n) = a.next_element::<Node>()? {
                    items.push(n);
                }
                Ok(Kind::Seq(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = a.next_key::<Node>()? {
                    entries.push((k, a.next_value::<Node>()?));
                }
                Ok(Kind::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Node {
    /// Numbers the nodes in pre-order; returns the next free number.
    pub(super) fn number(&mut self, next: usize) -> usize {
        self.id = next;
        let mut next = next + 1;
        match &mut self.kind {
            Kind::Seq(items) => {
                for n in items {
                    next = n.number(next);
                }
            }
            Kind::Map(entries) => {
                for (k, v) in entries {
                    next = k.number(next);
                    next = v.number(next);
                }
            }
            _ => {}
        }
        next
    }

    pub(super) fn id(&self) -> usize {
        self.id
    }

    /// True for an empty document (or one holding only comments or `null`).
    pub(super) fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// The source text of a plain scalar (what a number or boolean was written as).
    fn raw<'t>(&self, text: &'t str) -> &'t str {
        text.get(self.offset..self.offset + self.len).unwrap_or("").trim()
    }

    fn describe(&self, text: &str) -> String {
        match &self.kind {
            Kind::Null => "nothing".into(),
            Kind::Bool(_) | Kind::Int(_) | Kind::Float(_) => format!("`{}`", self.raw(text)),
            Kind::Str(s) => format!("the string {s:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    fn key_text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// What one walk over the tree found.
pub(super) struct Walk<'t> {
    pub path: &'t str,
    pub text: &'t str,
    /// Nodes removed after an error; skipped by every later walk.
    pub pruned: HashSet<usize>,
    pub diags: RefCell<Vec<Diagnostic>>,
    /// (line, col) of mappings and lists that lost a pruned child.
    pub damaged: RefCell<HashSet<(u64, u64)>>,
}

impl Walk<'_> {
    fn report(&self, line: u64, col: u64, msg: String) {
        let d = Diagnostic::error(self.path, line, col, msg);
        let mut diags = self.diags.borrow_mut();
        if !diags.contains(&d) {
            diags.push(d);
        }
    }
    fn damage(&self, n: &Node) {
        self.damaged.borrow_mut().insert((n.line, n.col));
    }
}

/// A deserialization error. `Reported` means "already recorded; node `id` is broken".
#[derive(Debug)]
pub(super) enum Error {
    Msg(String),
    Missing(&'static str),
    Reported(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Msg(m) => f.write_str(m),
            Error::Missing(field) => write!(f, "missing field `{field}`"),
            Error::Reported(_) => f.write_str("reported"),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Msg(msg.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        Error::Missing(field)
    }
}

/// Deserializes one node.
pub(super) struct De<'a, 't> {
    pub node: &'a Node,
    pub walk: &'a Walk<'t>,
}

impl<'a> De<'a, '_> {
    fn at(&self, node: &'a Node) -> Self {
        De { node, walk: self.walk }
    }

    fn mismatch<T>(&self, expected: &str) -> Result<T, Error> {
        Err(Error::Msg(format!("expected {expected}, found {}", self.node.describe(self.walk.text))))
    }

    /// Records an error that arose at this node (once) and marks the node broken.
    fn settle<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        match r {
            Ok(v) => Ok(v),
            Err(Error::Reported(id)) => Err(Error::Reported(id)),
            Err(Error::Missing(field)) if self.lost(field) => Err(Error::Reported(self.node.id)),
            Err(e) => {
                self.walk.report(self.node.line, self.node.col, e.to_string());
                Err(Error::Reported(self.node.id))
            }
        }
    }

    /// True when `field` was written but its value was pruned.
    fn lost(&self, field: &str) -> bool {
        match &self.node.kind {
            Kind::Map(entries) => entries
                .iter()
                .any(|(k, v)| k.key_text() == Some(field) && (self.walk.pruned.contains(&v.id) || self.walk.pruned.contains(&k.id))),
            _ => false,
        }
    }

    fn int<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.node.kind {
            Kind::Int(i) if i >= 0 => u64::try_from(i).map_or_else(|_| self.mismatch("a smaller integer"), |u| v.visit_u64(u)),
            Kind::Int(i) => i64::try_from(i).map_or_else(|_| self.mismatch("a smaller integer"), |s| v.visit_i64(s)),
            _ => self.mismatch("an integer"),
        };
        self.settle(r)
    }

    fn map<'de, V: Visitor<'de>>(self, fields: Option<&'static [&'static str]>, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Map(entries) => v.visit_map(MapWalk { de: self.at(self.node), entries, fields, i: 0 }),
            Kind::Null => v.visit_map(MapWalk { de: self.at(self.node), entries: &[], fields, i: 0 }),
            _ => self.mismatch("a mapping"),
        };
        self.settle(r)
    }
}

macro_rules! ints {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> { self.int(v) }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Null => v.visit_unit(),
            Kind::Bool(b) => v.visit_bool(*b),
            Kind::Int(_) => return self.int(v),
            Kind::Float(f) => v.visit_f64(*f),
            Kind::Str(s) => v.visit_str(s),
            Kind::Seq(items) => v.visit_seq(SeqWalk { de: self.at(self.node), items, i: 0 }),
            Kind::Map(_) => return self.map(None, v),
        };
        self.settle(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.node.kind {
            Kind::Bool(b) => v.visit_bool(b),
            _ => self.mismatch("`true` or `false`"),
        };
        self.settle(r)
    }

    ints!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
          deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128);

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.node.kind {
            Kind::Float(f) => v.visit_f64(f),
            Kind::Int(i) => v.visit_f64(i as f64),
            _ => self.mismatch("a number"),
        };
        self.settle(r)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Str(s) => v.visit_str(s),
            // A plain number or boolean where text is expected is its source text (`code: 500`).
            Kind::Bool(_) | Kind::Int(_) | Kind::Float(_) => v.visit_str(self.node.raw(self.walk.text)),
            _ => self.mismatch("a string"),
        };
        self.settle(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node.kind {
            Kind::Null => self.settle(v.visit_none()),
            _ => {
                let de = self.at(self.node);
                self.settle(v.visit_some(de))
            }
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.node.kind {
            Kind::Null => v.visit_unit(),
            _ => self.mismatch("nothing"),
        };
        self.settle(r)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        let de = self.at(self.node);
        self.settle(v.visit_newtype_struct(de))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Seq(items) => v.visit_seq(SeqWalk { de: self.at(self.node), items, i: 0 }),
            Kind::Null => v.visit_seq(SeqWalk { de: self.at(self.node), items: &[], i: 0 }),
            _ => self.mismatch("a list"),
        };
        self.settle(r)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _name: &'static str, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.map(None, v)
    }

    fn deserialize_struct<V: Visitor<'de>>(self, name: &'static str, fields: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        if name == SPANNED {
            let de = self.at(self.node);
            return self.settle(v.visit_seq(SpannedWalk { de, stage: 0 }));
        }
        self.map(Some(fields), v)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _name: &'static str, variants: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            Kind::Str(s) if variants.contains(&s.as_str()) => v.visit_enum(s.as_str().into_deserializer()),
            Kind::Str(s) => Err(Error::Msg(unknown("value", s, variants))),
            _ => self.mismatch(&format!("one of {}", variants.join(", "))),
        };
        self.settle(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

/// "unknown field `x`", with the nearest valid name or else the list of valid names.
pub(super) fn unknown(what: &str, got: &str, valid: &[&str]) -> String {
    let best = valid.iter().map(|v| (edit_distance(got, v), *v)).filter(|(d, v)| *d <= (v.len() / 3).max(2)).min();
    match best {
        Some((_, v)) => format!("unknown {what} `{got}`, did you mean `{v}`?"),
        None if valid.is_empty() => format!("unknown {what} `{got}`"),
        None => format!("unknown {what} `{got}`, expected one of {}", valid.join(", ")),
    }
}

/// Levenshtein distance (bytes; names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

struct SeqWalk<'a, 't> {
    de: De<'a, 't>,
    items: &'a [Node],
    i: usize,
}

impl<'de> de::SeqAccess<'de> for SeqWalk<'_, '_> {
    type Error = Error;
    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, Error> {
        while let Some(n) = self.items.get(self.i) {
            self.i += 1;
            if self.de.walk.pruned.contains(&n.id) {
                self.de.walk.damage(self.de.node);
                continue;
            }
            return seed.deserialize(self.de.at(n)).map(Some);
        }
        Ok(None)
    }
}

struct MapWalk<'a, 't> {
    de: De<'a, 't>,
    entries: &'a [(Node, Node)],
    /// The struct's field names; unknown keys are reported and skipped. `None` for maps.
    fields: Option<&'static [&'static str]>,
    i: usize,
}

impl<'de> de::MapAccess<'de> for MapWalk<'_, '_> {
    type Error = Error;
    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, Error> {
        while let Some((k, v)) = self.entries.get(self.i) {
            self.i += 1;
            let walk = self.de.walk;
            if walk.pruned.contains(&k.id) || walk.pruned.contains(&v.id) {
                walk.damage(self.de.node);
                continue;
            }
            if let (Some(fields), Some(name)) = (self.fields, k.key_text()) {
                if !fields.contains(&name) {
                    walk.report(k.line, k.col, unknown("field", name, fields));
                    // Likely a misspelt field: the object's own errors are follow-ons.
                    walk.damage(self.de.node);
                    continue;
                }
            }
            return seed.deserialize(self.de.at(k)).map(Some);
        }
        Ok(None)
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (_, v) = &self.entries[self.i - 1];
        seed.deserialize(self.de.at(v))
    }
}

/// Feeds [`super::Spanned`]: line, column, source length, then the value itself.
struct SpannedWalk<'a, 't> {
    de: De<'a, 't>,
    stage: u8,
}

impl<'de> de::SeqAccess<'de> for SpannedWalk<'_, '_> {
    type Error = Error;
    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, Error> {
        let n = self.de.node;
        self.stage += 1;
        let num = |x: u64| seed_u64(x);
        match self.stage {
            1 => seed.deserialize(num(n.line)).map(Some),
            2 => seed.deserialize(num(n.col)).map(Some),
            3 => seed.deserialize(num(n.len as u64)).map(Some),
            4 => seed.deserialize(self.de.at(n)).map(Some),
            _ => Ok(None),
        }
    }
}

fn seed_u64(x: u64) -> de::value::U64Deserializer<Error> {
    x.into_deserializer()
}

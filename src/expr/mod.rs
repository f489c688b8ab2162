//! `when` conditions: parsing, name resolution and three-valued evaluation.
//!
//! The syntax is minijinja's expression syntax (see [`parse`]), so rule authors write the
//! same language they use in annotation templates. We evaluate it ourselves rather than through
//! minijinja for two reasons: names are resolved once at load time to slot indices, which makes
//! evaluation allocation-free (thousands of subjects × rules per tick), and "unknown" is a
//! first-class value.
//!
//! Unknown semantics (spec §4): a signal without a value is [`Value::Unknown`]. Arithmetic and
//! comparisons with an unknown are unknown; `and`/`or`/`not` follow Kleene logic
//! (`false and unknown` is false, `true or unknown` is true); `x is defined` is always known.
//! Type errors at run time (comparing `none` with a number, say) also yield unknown, so a
//! badly-guarded rule keeps its state instead of resolving.
//!
//! This module owns the language. It knows nothing about Prometheus, incidents' storage or time.

mod parse;

pub use parse::{parse, Ast, BinOp, ParseError, MAX_DEPTH, MAX_LEN, MAX_NESTING};

use crate::config::PromDuration;

/// The fields of `incident` a condition may read (spec §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentField {
    Open,
    Resolved,
    Id,
    Severity,
    Status,
    Age,
    Acknowledged,
    Security,
    InternalOnly,
    LegalHold,
    LegalPending,
    SinceLegalRequested,
    PublicUpdates,
    SinceLastPublicUpdate,
    SinceStatusPageUpdate,
    PostmortemPublished,
    SinceResolved,
    PostmortemsOwed,
}

impl IncidentField {
    /// Every field with its name in conditions and templates.
    pub const ALL: [(&'static str, IncidentField); 18] = [
        ("open", IncidentField::Open),
        ("resolved", IncidentField::Resolved),
        ("id", IncidentField::Id),
        ("severity", IncidentField::Severity),
        ("status", IncidentField::Status),
        ("age", IncidentField::Age),
        ("acknowledged", IncidentField::Acknowledged),
        ("security", IncidentField::Security),
        ("internal_only", IncidentField::InternalOnly),
        ("legal_hold", IncidentField::LegalHold),
        ("legal_pending", IncidentField::LegalPending),
        ("since_legal_requested", IncidentField::SinceLegalRequested),
        ("public_updates", IncidentField::PublicUpdates),
        ("since_last_public_update", IncidentField::SinceLastPublicUpdate),
        ("since_status_page_update", IncidentField::SinceStatusPageUpdate),
        ("postmortem_published", IncidentField::PostmortemPublished),
        ("since_resolved", IncidentField::SinceResolved),
        ("postmortems_owed", IncidentField::PostmortemsOwed),
    ];

    fn by_name(name: &str) -> Option<IncidentField> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

/// What a condition sees of the subject's latest incident, with durations already computed
/// against the evaluation time. [`IncidentView::NONE`] when the subject never had one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IncidentView<'a> {
    pub open: bool,
    pub resolved: bool,
    pub id: Option<&'a str>,
    pub severity: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Seconds since it opened.
    pub age: Option<f64>,
    pub acknowledged: bool,
    pub security: bool,
    pub internal_only: bool,
    pub legal_hold: bool,
    pub legal_pending: bool,
    pub since_legal_requested: Option<f64>,
    pub public_updates: Option<f64>,
    /// Seconds since the last public update, or since opening when there was none.
    pub since_last_public_update: Option<f64>,
    /// Seconds since the last status-page update, or since opening when there was none.
    pub since_status_page_update: Option<f64>,
    pub postmortem_published: bool,
    pub since_resolved: Option<f64>,
    /// Across ALL the subject's incidents, not only this one: how many are resolved, critical,
    /// without a published postmortem and not on legal hold (0 when there is none).
    pub postmortems_owed: f64,
}

impl<'v> IncidentView<'v> {
    /// The view of a subject that never had an incident: `open` and `resolved` are false,
    /// every other field is `none`/false.
    pub const NONE: IncidentView<'static> = IncidentView {
        open: false,
        resolved: false,
        id: None,
        severity: None,
        status: None,
        age: None,
        acknowledged: false,
        security: false,
        internal_only: false,
        legal_hold: false,
        legal_pending: false,
        since_legal_requested: None,
        public_updates: None,
        since_last_public_update: None,
        since_status_page_update: None,
        postmortem_published: false,
        since_resolved: None,
        postmortems_owed: 0.0,
    };

    /// One field's value.
    pub fn get(&self, f: IncidentField) -> Value<'v> {
        let num = |o: Option<f64>| o.map_or(Value::None, Value::Num);
        let s = |o: Option<&'v str>| o.map_or(Value::None, Value::Str);
        match f {
            IncidentField::Open => Value::Bool(self.open),
            IncidentField::Resolved => Value::Bool(self.resolved),
            IncidentField::Id => s(self.id),
            IncidentField::Severity => s(self.severity),
            IncidentField::Status => s(self.status),
            IncidentField::Age => num(self.age),
            IncidentField::Acknowledged => Value::Bool(self.acknowledged),
            IncidentField::Security => Value::Bool(self.security),
            IncidentField::InternalOnly => Value::Bool(self.internal_only),
            IncidentField::LegalHold => Value::Bool(self.legal_hold),
            IncidentField::LegalPending => Value::Bool(self.legal_pending),
            IncidentField::SinceLegalRequested => num(self.since_legal_requested),
            IncidentField::PublicUpdates => num(self.public_updates),
            IncidentField::SinceLastPublicUpdate => num(self.since_last_public_update),
            IncidentField::SinceStatusPageUpdate => num(self.since_status_page_update),
            IncidentField::PostmortemPublished => Value::Bool(self.postmortem_published),
            IncidentField::SinceResolved => num(self.since_resolved),
            IncidentField::PostmortemsOwed => Value::Num(self.postmortems_owed),
        }
    }
}

/// Everything a condition can read for one subject at one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// Signal values by slot (see [`Scope::signals`]); `None` is "no value".
    pub signals: &'a [Option<f64>],
    /// Subject label values by position in [`Scope::subject_labels`].
    pub subject: &'a [&'a str],
    pub incident: &'a IncidentView<'a>,
    /// Unix seconds of the evaluation.
    pub now: f64,
}

/// The names a condition may use: resolved at compile time.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Signal names; index = slot.
    pub signals: Vec<String>,
    /// The group's subject labels; index = position.
    pub subject_labels: Vec<String>,
}

/// A resolved, ready-to-evaluate condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Num(f64),
    Str(String),
    Bool(bool),
    None,
    Signal(usize),
    SubjectLabel(usize),
    Incident(IncidentField),
    Now,
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `x is defined` (true) / `x is not defined` (false).
    IsDefined(Box<Expr>, bool),
    /// `x is none` / `x is not none`.
    IsNone(Box<Expr>, bool),
    /// `x is number` / `x is not number`.
    IsNumber(Box<Expr>, bool),
    If(Box<Expr>, Box<Expr>, Option<Box<Expr>>),
    List(Vec<Expr>),
}

/// A runtime value. Borrowed strings keep evaluation allocation-free.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Unknown,
    None,
    Bool(bool),
    Num(f64),
    Str(&'a str),
}

/// The outcome of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Truth {
    True,
    False,
    Unknown,
}

/// A compile error at a byte offset of the expression source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

impl From<ParseError> for CompileError {
    fn from(e: ParseError) -> Self {
        CompileError { offset: e.offset, message: e.message }
    }
}

/// Parses and resolves a condition against a scope.
pub fn compile(src: &str, scope: &Scope) -> Result<Expr, CompileError> {
    let ast = parse(src)?;
    resolve(&ast, scope)
}

fn resolve(ast: &Ast, scope: &Scope) -> Result<Expr, CompileError> {
    let r = |a: &Ast| resolve(a, scope).map(Box::new);
    Ok(match ast {
        Ast::Num(n) => Expr::Num(*n),
        Ast::Str(s) => Expr::Str(s.clone()),
        Ast::Bool(b) => Expr::Bool(*b),
        Ast::None => Expr::None,
        Ast::Name(n, off) => {
            if n == "now" {
                Expr::Now
            } else if let Some(i) = scope.signals.iter().position(|s| s == n) {
                Expr::Signal(i)
            } else if n == "subject" || n == "incident" {
                return Err(CompileError {
                    offset: *off,
                    message: format!("`{n}` is an object: use one of its attributes, like `{n}.{}`", if n == "subject" { scope.subject_labels.first().map_or("service", String::as_str) } else { "open" }),
                });
            } else {
                let mut known: Vec<&str> = scope.signals.iter().map(String::as_str).collect();
                known.extend(["subject", "incident", "now"]);
                return Err(CompileError { offset: *off, message: format!("unknown signal or variable `{n}` (known: {})", known.join(", ")) });
            }
        }
        Ast::Attr(base, attr, off) => match base.as_ref() {
            Ast::Name(b, _) if b == "subject" => match scope.subject_labels.iter().position(|l| l == attr) {
                Some(i) => Expr::SubjectLabel(i),
                None => {
                    return Err(CompileError {
                        offset: *off,
                        message: format!("`subject.{attr}`: {attr:?} is not a subject label of this group (subject labels: {})", scope.subject_labels.join(", ")),
                    })
                }
            },
            Ast::Name(b, _) if b == "incident" => match IncidentField::by_name(attr) {
                Some(f) => Expr::Incident(f),
                None => {
                    let names: Vec<&str> = IncidentField::ALL.iter().map(|(n, _)| *n).collect();
                    return Err(CompileError { offset: *off, message: format!("unknown incident field `{attr}` (fields: {})", names.join(", ")) });
                }
            },
            _ => return Err(CompileError { offset: *off, message: format!("`.{attr}`: only `subject` and `incident` have attributes") }),
        },
        Ast::Call(name, args, off) => match name.as_str() {
            "duration" => match args.as_slice() {
                [Ast::Str(s)] => match s.parse::<PromDuration>() {
                    Ok(d) => Expr::Num(d.0.as_secs_f64()),
                    Err(e) => return Err(CompileError { offset: *off, message: e.to_string() }),
                },
                _ => return Err(CompileError { offset: *off, message: "duration() takes one quoted duration, like duration(\"15m\")".into() }),
            },
            _ => return Err(CompileError { offset: *off, message: format!("unknown function `{name}` (available: duration)") }),
        },
        Ast::Neg(a) => Expr::Neg(r(a)?),
        Ast::Not(a) => Expr::Not(r(a)?),
        Ast::Bin(BinOp::And, a, b) => Expr::And(r(a)?, r(b)?),
        Ast::Bin(BinOp::Or, a, b) => Expr::Or(r(a)?, r(b)?),
        Ast::Bin(op, a, b) => Expr::Bin(*op, r(a)?, r(b)?),
        Ast::Test(a, neg, name, off) => {
            let inner = r(a)?;
            match name.as_str() {
                "defined" => Expr::IsDefined(inner, !neg),
                "undefined" => Expr::IsDefined(inner, *neg),
                "none" => Expr::IsNone(inner, !neg),
                "number" => Expr::IsNumber(inner, !neg),
                _ => return Err(CompileError { offset: *off, message: format!("unknown test `{name}` (available: defined, undefined, none, number)") }),
            }
        }
        Ast::If(c, t, e) => Expr::If(r(c)?, r(t)?, e.as_deref().map(r).transpose()?),
        Ast::List(items) => Expr::List(items.iter().map(|i| resolve(i, scope)).collect::<Result<_, _>>()?),
    })
}

impl Expr {
    /// The signal slots this condition reads, deduplicated and sorted.
    pub fn signals(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Signal(i) = e {
                out.push(*i);
            }
        });
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the condition reads a subject label (`subject.x`).
    pub fn reads_subject_labels(&self) -> bool {
        let mut reads = false;
        self.walk(&mut |e| reads |= matches!(e, Expr::SubjectLabel(_)));
        reads
    }

    /// Whether the condition is false whenever the subject has no open incident: `incident.open`
    /// is one of its top-level `and` operands (`false and x` is false whatever `x`, unknown
    /// included). The engine skips evaluating such a condition for the subjects without one.
    pub fn requires_open_incident(&self) -> bool {
        match self {
            Expr::Incident(IncidentField::Open) => true,
            Expr::And(a, b) => a.requires_open_incident() || b.requires_open_incident(),
            _ => false,
        }
    }

    fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Neg(a) | Expr::Not(a) | Expr::IsDefined(a, _) | Expr::IsNone(a, _) | Expr::IsNumber(a, _) => a.walk(f),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Bin(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Expr::If(a, b, c) => {
                a.walk(f);
                b.walk(f);
                if let Some(c) = c {
                    c.walk(f);
                }
            }
            Expr::List(items) => items.iter().for_each(|i| i.walk(f)),
            _ => {}
        }
    }

    /// Evaluates to a truth value (Jinja truthiness; unknown stays unknown).
    pub fn truth(&self, ctx: &Ctx<'_>) -> Truth {
        truthy(self.eval(ctx))
    }

    /// Evaluates to a value.
    pub fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Value<'a> {
        match self {
            Expr::Num(n) => Value::Num(*n),
            Expr::Str(s) => Value::Str(s),
            Expr::Bool(b) => Value::Bool(*b),
            Expr::None => Value::None,
            Expr::Signal(i) => ctx.signals.get(*i).copied().flatten().map_or(Value::Unknown, Value::Num),
            Expr::SubjectLabel(i) => ctx.subject.get(*i).map_or(Value::None, |s| Value::Str(s)),
            Expr::Incident(f) => ctx.incident.get(*f),
            Expr::Now => Value::Num(ctx.now),
            Expr::Neg(a) => match a.eval(ctx) {
                Value::Num(n) => Value::Num(-n),
                _ => Value::Unknown,
            },
            Expr::Not(a) => match truthy(a.eval(ctx)) {
                Truth::True => Value::Bool(false),
                Truth::False => Value::Bool(true),
                Truth::Unknown => Value::Unknown,
            },
            Expr::And(a, b) => match truthy(a.eval(ctx)) {
                Truth::False => Value::Bool(false),
                ta => match (ta, truthy(b.eval(ctx))) {
                    (_, Truth::False) => Value::Bool(false),
                    (Truth::True, Truth::True) => Value::Bool(true),
                    _ => Value::Unknown,
                },
            },
            Expr::Or(a, b) => match truthy(a.eval(ctx)) {
                Truth::True => Value::Bool(true),
                ta => match (ta, truthy(b.eval(ctx))) {
                    (_, Truth::True) => Value::Bool(true),
                    (Truth::False, Truth::False) => Value::Bool(false),
                    _ => Value::Unknown,
                },
            },
            Expr::IsDefined(a, want) => Value::Bool((a.eval(ctx) != Value::Unknown) == *want),
            Expr::IsNone(a, want) => match a.eval(ctx) {
                Value::Unknown => Value::Unknown,
                v => Value::Bool((v == Value::None) == *want),
            },
            Expr::IsNumber(a, want) => match a.eval(ctx) {
                Value::Unknown => Value::Unknown,
                v => Value::Bool(matches!(v, Value::Num(_)) == *want),
            },
            Expr::If(c, t, e) => match truthy(c.eval(ctx)) {
                Truth::True => t.eval(ctx),
                Truth::False => e.as_ref().map_or(Value::None, |e| e.eval(ctx)),
                Truth::Unknown => Value::Unknown,
            },
            Expr::List(_) => Value::Unknown, // only meaningful on the right of `in`
            Expr::Bin(op @ (BinOp::In | BinOp::NotIn), a, b) => {
                let needle = a.eval(ctx);
                if needle == Value::Unknown {
                    return Value::Unknown;
                }
                let found = match b.as_ref() {
                    Expr::List(items) => {
                        let mut found = Some(false);
                        for item in items {
                            match item.eval(ctx) {
                                Value::Unknown => found = None,
                                v if equal(needle, v) => {
                                    found = Some(true);
                                    break;
                                }
                                _ => {}
                            }
                        }
                        found
                    }
                    other => match (needle, other.eval(ctx)) {
                        (Value::Str(n), Value::Str(h)) => Some(h.contains(n)),
                        _ => None,
                    },
                };
                match found {
                    Some(f) => Value::Bool(f == (*op == BinOp::In)),
                    None => Value::Unknown,
                }
            }
            Expr::Bin(op, a, b) => binary(*op, a.eval(ctx), b.eval(ctx)),
        }
    }
}

fn truthy(v: Value<'_>) -> Truth {
    match v {
        Value::Unknown => Truth::Unknown,
        Value::None => Truth::False,
        Value::Bool(b) => b.into(),
        Value::Num(n) => (n != 0.0 && !n.is_nan()).into(),
        Value::Str(s) => (!s.is_empty()).into(),
    }
}

impl From<bool> for Truth {
    fn from(b: bool) -> Self {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
}

fn equal(a: Value<'_>, b: Value<'_>) -> bool {
    match (a, b) {
        (Value::Num(x), Value::Num(y)) => x == y,
        (Value::Num(x), Value::Bool(y)) | (Value::Bool(y), Value::Num(x)) => x == if y { 1.0 } else { 0.0 },
        _ => a == b,
    }
}

fn binary<'a>(op: BinOp, a: Value<'a>, b: Value<'a>) -> Value<'a> {
    if a == Value::Unknown || b == Value::Unknown {
        return Value::Unknown;
    }
    match op {
        BinOp::Eq => return Value::Bool(equal(a, b)),
        BinOp::Ne => return Value::Bool(!equal(a, b)),
        _ => {}
    }
    match (a, b) {
        (Value::Num(x), Value::Num(y)) => match op {
            BinOp::Lt => Value::Bool(x < y),
            BinOp::Le => Value::Bool(x <= y),
            BinOp::Gt => Value::Bool(x > y),
            BinOp::Ge => Value::Bool(x >= y),
            BinOp::Add => Value::Num(x + y),
            BinOp::Sub => Value::Num(x - y),
            BinOp::Mul => Value::Num(x * y),
            // Division by zero is undecidable rather than ±Inf: a zero baseline must not
            // make a ratio rule fire on its own.
            BinOp::Div if y == 0.0 => Value::Unknown,
            BinOp::Div => Value::Num(x / y),
            BinOp::FloorDiv if y == 0.0 => Value::Unknown,
            BinOp::FloorDiv => Value::Num((x / y).floor()),
            BinOp::Rem if y == 0.0 => Value::Unknown,
            BinOp::Rem => Value::Num(x.rem_euclid(y)),
            BinOp::Pow => Value::Num(x.powf(y)),
            _ => Value::Unknown,
        },
        (Value::Str(x), Value::Str(y)) => match op {
            BinOp::Lt => Value::Bool(x < y),
            BinOp::Le => Value::Bool(x <= y),
            BinOp::Gt => Value::Bool(x > y),
            BinOp::Ge => Value::Bool(x >= y),
            _ => Value::Unknown,
        },
        _ => Value::Unknown,
    }
}

#[cfg(test)]
mod tests;

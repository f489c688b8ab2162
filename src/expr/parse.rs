//! Lexer and parser for `when` expressions: the expression syntax of minijinja (Jinja2),
//! restricted to what a condition needs. Produces an untyped [`Ast`] with byte offsets;
//! name resolution happens in [`super::compile`].
//!
//! Precedence, loosest first (as in minijinja): `x if c else y`, `or`, `and`, `not`,
//! comparisons (`== != < <= > >= in`, `not in`), `+ -`, `* / // %`, `**`, unary `-`,
//! postfix (`.attr`, `[index]`, `(call)`, `is [not] test`).
//!
//! Bounds: a condition is at most [`MAX_LEN`] bytes, nests at most [`MAX_NESTING`] levels of
//! parentheses (and the like) and its tree is at most [`MAX_DEPTH`] deep. All are checked
//! here, before anything recurses deeper than that, so hostile input (`((((…`, `not not not …`, `a+a+a+…`) is a located error
//! and never overflows the stack of the daemon's reload thread.

/// The longest condition accepted, in bytes.
pub const MAX_LEN: usize = 4096;

/// The deepest expression tree accepted, counting every operator, list and call: a long
/// `a and b and c …` chain is as deep as it has clauses.
pub const MAX_DEPTH: usize = 100;

/// The most levels of parentheses, brackets, calls, `if … else` and prefix `not`/`-` that
/// may nest inside each other (each level costs the parser a recursion through every
/// precedence level).
pub const MAX_NESTING: usize = 32;

/// A parsed, unresolved expression node.
#[derive(Clone, Debug, PartialEq)]
pub enum Ast {
    Num(f64),
    Str(String),
    Bool(bool),
    None,
    /// A bare name, with its byte offset.
    Name(String, usize),
    /// `base.attr` or `base["attr"]`, with the offset of the attribute.
    Attr(Box<Ast>, String, usize),
    /// `name(args)`, with the offset of the name.
    Call(String, Vec<Ast>, usize),
    Neg(Box<Ast>),
    Not(Box<Ast>),
    Bin(BinOp, Box<Ast>, Box<Ast>),
    /// `value is [not] test`, with the offset of the test name.
    Test(Box<Ast>, bool, String, usize),
    If(Box<Ast>, Box<Ast>, Option<Box<Ast>>),
    List(Vec<Ast>),
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Pow,
}

/// A syntax error at a byte offset of the expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Name(String),
    Op(&'static str),
    End,
}

const OPS: [&str; 22] = [
    "**", "//", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", ".", ",", "~", "|", "=",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let save = i;
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                if i < b.len() && b[i].is_ascii_digit() {
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    i = save;
                }
            }
            let text: String = src[start..i].chars().filter(|c| *c != '_').collect();
            let n: f64 = text
                .parse()
                .map_err(|_| ParseError { offset: start, message: format!("invalid number {:?}", &src[start..i]) })?;
            out.push((Tok::Num(n), start));
        } else if c == b'"' || c == b'\'' {
            i += 1;
            let mut s = String::new();
            loop {
                match b.get(i) {
                    None => return Err(ParseError { offset: start, message: "unterminated string".into() }),
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let esc = src[i + 1..].chars().next();
                        match esc {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(ch @ ('\\' | '"' | '\'')) => s.push(ch),
                            _ => return Err(ParseError { offset: i, message: "invalid escape in string".into() }),
                        }
                        i += 2;
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().unwrap_or('\0');
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((Tok::Str(s), start));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Name(src[start..i].to_string()), start));
        } else if let Some(op) = OPS.iter().find(|op| src[i..].starts_with(**op)) {
            i += op.len();
            out.push((Tok::Op(op), start));
        } else {
            let ch = src[i..].chars().next().unwrap_or('\0');
            let hint = match ch {
                '&' => " (use `and`)",
                '!' => " (use `not`)",
                '{' | '}' => " (write the expression without {{ }})",
                _ => "",
            };
            return Err(ParseError { offset: start, message: format!("unexpected character {ch:?}{hint}") });
        }
    }
    out.push((Tok::End, src.len()));
    Ok(out)
}

/// Parses a whole expression.
pub fn parse(src: &str) -> Result<Ast, ParseError> {
    if src.len() > MAX_LEN {
        return Err(ParseError { offset: 0, message: format!("condition is {} bytes long; the limit is {MAX_LEN}", src.len()) });
    }
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, depth: 0 };
    if matches!(p.peek(), Tok::End) {
        return Err(ParseError { offset: 0, message: "empty expression".into() });
    }
    let ast = p.expr()?;
    match p.peek() {
        Tok::End => {}
        t => return Err(p.err(format!("unexpected {} after the end of the expression", describe(t)))),
    }
    if let Some(offset) = too_deep(&ast) {
        return Err(too_deep_error(offset));
    }
    Ok(ast)
}

fn too_deep_error(offset: usize) -> ParseError {
    ParseError {
        offset,
        message: format!("condition nests more than {MAX_DEPTH} levels deep; split it (for example into several rules)"),
    }
}

/// The offset of a node nested deeper than [`MAX_DEPTH`], if any. Iterative, so it is safe
/// on any tree the parser can build from [`MAX_LEN`] bytes.
fn too_deep(ast: &Ast) -> Option<usize> {
    let mut stack: Vec<(&Ast, usize, usize)> = vec![(ast, 1, 0)];
    while let Some((node, depth, offset)) = stack.pop() {
        let offset = node.offset().unwrap_or(offset);
        if depth > MAX_DEPTH {
            return Some(offset);
        }
        let d = depth + 1;
        match node {
            Ast::Attr(a, ..) | Ast::Neg(a) | Ast::Not(a) | Ast::Test(a, ..) => stack.push((a, d, offset)),
            Ast::Bin(_, a, b) => {
                stack.push((a, d, offset));
                stack.push((b, d, offset));
            }
            Ast::If(a, b, c) => {
                stack.push((a, d, offset));
                stack.push((b, d, offset));
                if let Some(c) = c {
                    stack.push((c, d, offset));
                }
            }
            Ast::Call(_, items, _) | Ast::List(items) => stack.extend(items.iter().map(|i| (i, d, offset))),
            Ast::Num(_) | Ast::Str(_) | Ast::Bool(_) | Ast::None | Ast::Name(..) => {}
        }
    }
    None
}

impl Ast {
    /// The byte offset this node records, if it records one.
    fn offset(&self) -> Option<usize> {
        match self {
            Ast::Name(_, o) | Ast::Attr(_, _, o) | Ast::Call(_, _, o) | Ast::Test(_, _, _, o) => Some(*o),
            _ => None,
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Name(n) => format!("`{n}`"),
        Tok::Op(o) => format!("`{o}`"),
        Tok::End => "end of expression".into(),
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Current recursion depth of the descent (bounded by [`MAX_NESTING`]).
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn offset(&self) -> usize {
        self.toks[self.pos].1
    }
    fn bump(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn err(&self, message: String) -> ParseError {
        ParseError { offset: self.offset(), message }
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Name(n) if n == kw)
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }
    fn expect_op(&mut self, op: &str) -> Result<(), ParseError> {
        if self.is_op(op) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(format!("expected `{op}`, found {}", describe(self.peek()))))
        }
    }

    /// Runs one recursive step of the descent, refusing to go deeper than [`MAX_NESTING`].
    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<Ast, ParseError>) -> Result<Ast, ParseError> {
        if self.depth >= MAX_NESTING {
            return Err(ParseError {
                offset: self.offset(),
                message: format!("condition nests more than {MAX_NESTING} levels of parentheses, brackets, calls or prefix operators"),
            });
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<Ast, ParseError> {
        self.nested(Self::if_expr)
    }

    fn if_expr(&mut self) -> Result<Ast, ParseError> {
        let value = self.or()?;
        if self.is_kw("if") {
            self.bump();
            let cond = self.or()?;
            let otherwise = if self.is_kw("else") {
                self.bump();
                Some(Box::new(self.expr()?))
            } else {
                None
            };
            return Ok(Ast::If(Box::new(cond), Box::new(value), otherwise));
        }
        Ok(value)
    }

    fn or(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.and()?;
        while self.is_kw("or") {
            self.bump();
            let right = self.and()?;
            left = Ast::Bin(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.not()?;
        while self.is_kw("and") {
            self.bump();
            let right = self.not()?;
            left = Ast::Bin(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Ast, ParseError> {
        if self.is_kw("not") {
            self.bump();
            return Ok(Ast::Not(Box::new(self.nested(Self::not)?)));
        }
        self.compare()
    }

    /// Comparisons chain as in Python and minijinja: `a < b < c` is `a < b and b < c`.
    fn compare(&mut self) -> Result<Ast, ParseError> {
        let mut operand = self.add()?;
        let mut chain: Option<Ast> = None;
        loop {
            let op = match self.peek() {
                Tok::Op("==") => BinOp::Eq,
                Tok::Op("!=") => BinOp::Ne,
                Tok::Op("<") => BinOp::Lt,
                Tok::Op("<=") => BinOp::Le,
                Tok::Op(">") => BinOp::Gt,
                Tok::Op(">=") => BinOp::Ge,
                Tok::Op("=") => return Err(self.err("`=` is assignment; compare with `==`".into())),
                Tok::Name(n) if n == "in" => BinOp::In,
                Tok::Name(n) if n == "not" && matches!(&self.toks[self.pos + 1].0, Tok::Name(m) if m == "in") => {
                    self.bump();
                    BinOp::NotIn
                }
                _ => return Ok(chain.unwrap_or(operand)),
            };
            self.bump();
            let right = self.add()?;
            let cmp = Ast::Bin(op, Box::new(operand), Box::new(right.clone()));
            chain = Some(match chain {
                None => cmp,
                Some(prev) => Ast::Bin(BinOp::And, Box::new(prev), Box::new(cmp)),
            });
            operand = right;
        }
    }

    fn add(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.mul()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => BinOp::Add,
                Tok::Op("-") => BinOp::Sub,
                Tok::Op("~") => return Err(self.err("string concatenation `~` is not supported in conditions".into())),
                _ => return Ok(left),
            };
            self.bump();
            let right = self.mul()?;
            left = Ast::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn mul(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.pow()?;
        loop {
            let op = match self.peek() {
                Tok::Op("*") => BinOp::Mul,
                Tok::Op("/") => BinOp::Div,
                Tok::Op("//") => BinOp::FloorDiv,
                Tok::Op("%") => BinOp::Rem,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.pow()?;
            left = Ast::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn pow(&mut self) -> Result<Ast, ParseError> {
        let left = self.unary()?;
        if self.is_op("**") {
            self.bump();
            let right = self.unary()?;
            return Ok(Ast::Bin(BinOp::Pow, Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Ast, ParseError> {
        if self.is_op("-") {
            self.bump();
            return Ok(Ast::Neg(Box::new(self.nested(Self::unary)?)));
        }
        if self.is_op("+") {
            self.bump();
            return self.nested(Self::unary);
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut node = self.primary()?;
        loop {
            if self.is_op(".") {
                self.bump();
                let off = self.offset();
                match self.bump() {
                    Tok::Name(n) => node = Ast::Attr(Box::new(node), n, off),
                    t => return Err(ParseError { offset: off, message: format!("expected an attribute name after `.`, found {}", describe(&t)) }),
                }
            } else if self.is_op("[") {
                self.bump();
                let off = self.offset();
                match self.bump() {
                    Tok::Str(s) => node = Ast::Attr(Box::new(node), s, off),
                    t => return Err(ParseError { offset: off, message: format!("expected a quoted attribute name in `[...]`, found {}", describe(&t)) }),
                }
                self.expect_op("]")?;
            } else if self.is_op("(") {
                let Ast::Name(name, off) = node else {
                    return Err(self.err("only named functions can be called".into()));
                };
                self.bump();
                let mut args = Vec::new();
                if !self.is_op(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.is_op(",") {
                            self.bump();
                        } else {
                            break;
                        }
                    }
                }
                self.expect_op(")")?;
                node = Ast::Call(name, args, off);
            } else if self.is_op("|") {
                return Err(self.err("filters (`|`) are not supported in conditions".into()));
            } else if self.is_kw("is") {
                self.bump();
                let negated = if self.is_kw("not") {
                    self.bump();
                    true
                } else {
                    false
                };
                let off = self.offset();
                match self.bump() {
                    Tok::Name(n) => node = Ast::Test(Box::new(node), negated, n, off),
                    t => return Err(ParseError { offset: off, message: format!("expected a test name after `is`, found {}", describe(&t)) }),
                }
            } else {
                return Ok(node);
            }
        }
    }

    fn primary(&mut self) -> Result<Ast, ParseError> {
        let off = self.offset();
        match self.bump() {
            Tok::Num(n) => Ok(Ast::Num(n)),
            Tok::Str(s) => Ok(Ast::Str(s)),
            Tok::Name(n) => Ok(match n.as_str() {
                "true" | "True" => Ast::Bool(true),
                "false" | "False" => Ast::Bool(false),
                "none" | "None" => Ast::None,
                "and" | "or" | "not" | "is" | "in" | "if" | "else" => {
                    return Err(ParseError { offset: off, message: format!("expected a value, found keyword `{n}`") })
                }
                _ => Ast::Name(n, off),
            }),
            Tok::Op("(") => {
                let inner = self.expr()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.is_op("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.is_op(",") {
                            self.bump();
                        } else {
                            break;
                        }
                    }
                }
                self.expect_op("]")?;
                Ok(Ast::List(items))
            }
            t => Err(ParseError { offset: off, message: format!("expected a value, found {}", describe(&t)) }),
        }
    }
}

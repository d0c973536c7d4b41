//! The profile expression language: small and total (no loops, no eval, no recursion beyond
//! the expression's own depth), compiled once when a profile loads and evaluated against one
//! decoded message. What it has:
//!
//! - paths: `$.a.b[0]["odd key"]` into the current record, `$$.x` into the whole message
//!   (before `unwrap`/`each`), `{sn}` a capture of the route (topic or URL path);
//! - literals: `"text"`, `'text'`, `12`, `-3.5`, `0x4b`, `true`, `false`, `null`;
//! - `==  !=  <  <=  >  >=` (a number and a numeric string compare as numbers), `&&  ||  !`,
//!   `cond ? a : b`, `x in [a, b, c]`;
//! - functions: `lookup(table, x)`, `exists(x)`, `coalesce(a, b, …)`, `concat(a, b, …)`,
//!   `lower(x)`, `upper(x)`, `trim(x)`, `int(x)`, `num(x)`, `str(x)`, `hex(x)` (hex text to a
//!   number), `base64(x)` (decoded to text; GB18030 when not UTF-8), `len(x)`,
//!   `substr(x, start, len)` (characters), `hash(x)` (SHA-256 hex, for privacy).
//!
//! Truthiness: null, false, "", 0 and a missing path are false. A path that is not there is
//! `null`, never an error; a function given the wrong type answers `null`.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Number, Value};

/// Deepest nesting an expression may have (parentheses, operators, calls).
const MAX_DEPTH: usize = 32;
/// Longest expression text accepted.
const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at character {at} of `{text}`")]
pub struct ParseError {
    pub text: String,
    pub at: usize,
    pub message: String,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `$`: the current record (after `unwrap` and `each`).
    Record,
    /// `$$`: the whole message as decoded.
    Message,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Lookup,
    Exists,
    Coalesce,
    Concat,
    Lower,
    Upper,
    Trim,
    Int,
    Num,
    Str,
    Hex,
    Base64,
    Len,
    Substr,
    Hash,
}

impl Func {
    fn parse(name: &str) -> Option<(Func, usize, usize)> {
        // (function, least arguments, most arguments)
        Some(match name {
            "lookup" => (Func::Lookup, 2, 2),
            "exists" => (Func::Exists, 1, 1),
            "coalesce" => (Func::Coalesce, 1, 16),
            "concat" => (Func::Concat, 1, 16),
            "lower" => (Func::Lower, 1, 1),
            "upper" => (Func::Upper, 1, 1),
            "trim" => (Func::Trim, 1, 1),
            "int" => (Func::Int, 1, 1),
            "num" => (Func::Num, 1, 1),
            "str" => (Func::Str, 1, 1),
            "hex" => (Func::Hex, 1, 1),
            "base64" => (Func::Base64, 1, 1),
            "len" => (Func::Len, 1, 1),
            "substr" => (Func::Substr, 2, 3),
            "hash" => (Func::Hash, 1, 1),
            _ => return None,
        })
    }
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Path(Root, Vec<Step>),
    Capture(String),
    /// A lookup-table name (only as the first argument of `lookup`).
    Table(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Vec<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// Lookup tables of a profile: name → (normalized key → value). Keys that read as integers
/// (decimal or `0x` hex) are kept as decimal text, so `75`, `"75"` and `0x4b` find the same row.
pub type Tables = HashMap<String, HashMap<String, Value>>;

/// What an expression is evaluated against.
pub struct Scope<'a> {
    pub record: &'a Value,
    pub message: &'a Value,
    pub captures: &'a [(String, String)],
    pub tables: &'a Tables,
}

/// Normalizes a table key or a looked-up value: integers (decimal or 0x hex) to decimal text.
pub fn table_key(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_i64().map(|i| i.to_string()).or_else(|| Some(n.to_string())),
        Value::String(s) => Some(int_text(s).map(|i| i.to_string()).unwrap_or_else(|| s.clone())),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn int_text(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i64::from_str_radix(h, 16).ok();
    }
    t.parse().ok()
}

// ---------------------------------------------------------------- parsing

pub fn parse(text: &str) -> Result<Expr, ParseError> {
    if text.len() > MAX_LEN {
        return Err(ParseError {
            text: text.chars().take(64).collect(),
            at: MAX_LEN,
            message: "expression too long".into(),
        });
    }
    let mut p = Parser { text, pos: 0, depth: 0 };
    let e = p.expr()?;
    p.ws();
    if p.pos != text.len() {
        return Err(p.err("unexpected text after the expression"));
    }
    Ok(e)
}

struct Parser<'t> {
    text: &'t str,
    pos: usize,
    depth: usize,
}

impl<'t> Parser<'t> {
    fn err(&self, m: impl Into<String>) -> ParseError {
        ParseError { text: self.text.to_owned(), at: self.pos, message: m.into() }
    }
    fn rest(&self) -> &'t str {
        &self.text[self.pos..]
    }
    fn ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, tok: &str) -> Result<(), ParseError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{tok}`")))
        }
    }
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("expression nested too deeply"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let c = self.or()?;
        let e = if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            Expr::Cond(Box::new(c), Box::new(a), Box::new(b))
        } else {
            c
        };
        self.depth -= 1;
        Ok(e)
    }
    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            l = Expr::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.cmp()?;
        while self.eat("&&") {
            let r = self.cmp()?;
            l = Expr::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn cmp(&mut self) -> Result<Expr, ParseError> {
        let l = self.unary()?;
        self.ws();
        for (tok, op) in
            [("==", Cmp::Eq), ("!=", Cmp::Ne), ("<=", Cmp::Le), (">=", Cmp::Ge), ("<", Cmp::Lt), (">", Cmp::Gt)]
        {
            if self.eat(tok) {
                let r = self.unary()?;
                return Ok(Expr::Cmp(op, Box::new(l), Box::new(r)));
            }
        }
        let r = self.rest();
        if r.starts_with("in") && !r[2..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            self.pos += 2;
            self.expect("[")?;
            let mut items = Vec::new();
            if !self.eat("]") {
                loop {
                    items.push(self.expr()?);
                    if self.eat("]") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            return Ok(Expr::In(Box::new(l), items));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!") {
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.primary()
    }
    fn primary(&mut self) -> Result<Expr, ParseError> {
        self.ws();
        let r = self.rest();
        let Some(c) = r.chars().next() else { return Err(self.err("expected a value")) };
        match c {
            '(' => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            '$' => self.path(),
            '{' => {
                self.pos += 1;
                let name = self.ident();
                if name.is_empty() {
                    return Err(self.err("expected a capture name"));
                }
                self.expect("}")?;
                Ok(Expr::Capture(name))
            }
            '"' | '\'' => Ok(Expr::Lit(Value::String(self.string(c)?))),
            '-' | '0'..='9' => self.number(),
            _ if c.is_alphabetic() || c == '_' => {
                let name = self.ident();
                match name.as_str() {
                    "true" => return Ok(Expr::Lit(Value::Bool(true))),
                    "false" => return Ok(Expr::Lit(Value::Bool(false))),
                    "null" => return Ok(Expr::Lit(Value::Null)),
                    _ => {}
                }
                let Some((f, least, most)) = Func::parse(&name) else {
                    return Err(self.err(format!("unknown function or word `{name}`")));
                };
                self.expect("(")?;
                self.enter()?;
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        if f == Func::Lookup && args.is_empty() {
                            self.ws();
                            let t = self.ident();
                            if t.is_empty() {
                                return Err(self.err("lookup needs a table name first"));
                            }
                            args.push(Expr::Table(t));
                        } else {
                            args.push(self.expr()?);
                        }
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                self.depth -= 1;
                if args.len() < least || args.len() > most {
                    return Err(self.err(format!("{name}() takes {least}..={most} arguments, got {}", args.len())));
                }
                Ok(Expr::Call(f, args))
            }
            _ => Err(self.err(format!("unexpected `{c}`"))),
        }
    }
    fn ident(&mut self) -> String {
        let r = self.rest();
        let n = r.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-')).unwrap_or(r.len());
        self.pos += n;
        r[..n].to_owned()
    }
    fn string(&mut self, quote: char) -> Result<String, ParseError> {
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    }),
                    None => break,
                },
                c if c == quote => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                c => out.push(c),
            }
        }
        Err(self.err("unterminated string"))
    }
    fn number(&mut self) -> Result<Expr, ParseError> {
        let r = self.rest();
        let n = r
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_hexdigit() || c == '.' || c == 'x' || c == 'X' || (i == 0 && c == '-')))
            .map_or(r.len(), |(i, _)| i);
        let t = &r[..n];
        let v = if let Some(i) = int_text(t) {
            Value::Number(i.into())
        } else {
            let f: f64 = t.parse().map_err(|_| self.err(format!("bad number `{t}`")))?;
            Number::from_f64(f).map(Value::Number).ok_or_else(|| self.err("bad number"))?
        };
        self.pos += n;
        Ok(Expr::Lit(v))
    }
    fn path(&mut self) -> Result<Expr, ParseError> {
        self.pos += 1;
        let root = if self.rest().starts_with('$') {
            self.pos += 1;
            Root::Message
        } else {
            Root::Record
        };
        let mut steps = Vec::new();
        loop {
            let r = self.rest();
            if r.starts_with('.') {
                self.pos += 1;
                let k = self.ident();
                if k.is_empty() {
                    return Err(self.err("expected a key after `.`"));
                }
                steps.push(Step::Key(k));
            } else if r.starts_with("[\"") || r.starts_with("['") {
                self.pos += 1;
                let q = self.rest().chars().next().unwrap_or('"');
                let k = self.string(q)?;
                self.expect("]")?;
                steps.push(Step::Key(k));
            } else if r.starts_with('[') {
                self.pos += 1;
                let n = self.rest().find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
                let i: usize = self.rest()[..n].parse().map_err(|_| self.err("expected an index"))?;
                self.pos += n;
                self.expect("]")?;
                steps.push(Step::Index(i));
            } else {
                break;
            }
        }
        Ok(Expr::Path(root, steps))
    }
}

// ---------------------------------------------------------------- evaluation

/// Follows `steps` from `v`; `None` when a step is not there.
pub fn walk<'v>(mut v: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m.get(k)?,
            (Step::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Follows `steps` for writing; `None` when a step is not there.
pub fn walk_mut<'v>(mut v: &'v mut Value, steps: &[Step]) -> Option<&'v mut Value> {
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            int_text(t).map(|i| i as f64).or_else(|| t.parse().ok())
        }
        _ => None,
    }
}

/// Text of a scalar: strings as they are, numbers and booleans in decimal.
pub fn as_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            matches!((as_f64(a), as_f64(b)), (Some(x), Some(y)) if x == y)
        }
        _ => false,
    }
}

fn compare(op: Cmp, a: &Value, b: &Value) -> bool {
    match op {
        Cmp::Eq => equal(a, b),
        Cmp::Ne => !equal(a, b),
        _ => {
            let ord = match (as_f64(a), as_f64(b)) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => match (a, b) {
                    (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                    _ => None,
                },
            };
            let Some(o) = ord else { return false };
            match op {
                Cmp::Lt => o.is_lt(),
                Cmp::Le => o.is_le(),
                Cmp::Gt => o.is_gt(),
                Cmp::Ge => o.is_ge(),
                Cmp::Eq | Cmp::Ne => false,
            }
        }
    }
}

static NULL: Value = Value::Null;

fn num(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number((f as i64).into())
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// Decodes base64 (standard or URL-safe, padding optional) to text: UTF-8, or GB18030 when
/// the bytes are not UTF-8 (older Chinese devices).
pub fn base64_text(s: &str) -> Option<String> {
    let bytes = base64_bytes(s)?;
    Some(match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => encoding_rs::GB18030.decode(e.as_bytes()).0.into_owned(),
    })
}

/// Decodes base64 in any of the common alphabets; whitespace is ignored, and a
/// `data:...;base64,` prefix is stripped.
pub fn base64_bytes(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let s = s.trim();
    let s = match s.strip_prefix("data:") {
        Some(r) => r.split_once(',').map_or(r, |(_, d)| d),
        None => s,
    };
    let cleaned: Cow<'_, str> =
        if s.contains(char::is_whitespace) { Cow::Owned(s.split_whitespace().collect()) } else { Cow::Borrowed(s) };
    let t = cleaned.trim_end_matches('=');
    let engine = if t.contains(['-', '_']) {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD
    };
    engine.decode(t).ok()
}

pub use crate::protocol::digest::sha256_hex;

impl Expr {
    /// Evaluates against `scope`. Total: answers `null` where nothing sensible exists.
    pub fn eval<'a>(&'a self, s: &Scope<'a>) -> Cow<'a, Value> {
        match self {
            Expr::Lit(v) => Cow::Borrowed(v),
            Expr::Path(root, steps) => {
                let base = match root {
                    Root::Record => s.record,
                    Root::Message => s.message,
                };
                Cow::Borrowed(walk(base, steps).unwrap_or(&NULL))
            }
            Expr::Capture(name) => Cow::Owned(
                s.captures.iter().find(|(k, _)| k == name).map_or(Value::Null, |(_, v)| Value::String(v.clone())),
            ),
            Expr::Table(_) => Cow::Borrowed(&NULL),
            Expr::Not(e) => Cow::Owned(Value::Bool(!truthy(&e.eval(s)))),
            Expr::And(a, b) => Cow::Owned(Value::Bool(truthy(&a.eval(s)) && truthy(&b.eval(s)))),
            Expr::Or(a, b) => Cow::Owned(Value::Bool(truthy(&a.eval(s)) || truthy(&b.eval(s)))),
            Expr::Cmp(op, a, b) => Cow::Owned(Value::Bool(compare(*op, &a.eval(s), &b.eval(s)))),
            Expr::In(x, items) => {
                let v = x.eval(s);
                Cow::Owned(Value::Bool(items.iter().any(|i| equal(&v, &i.eval(s)))))
            }
            Expr::Cond(c, a, b) => {
                if truthy(&c.eval(s)) {
                    a.eval(s)
                } else {
                    b.eval(s)
                }
            }
            Expr::Call(f, args) => call(*f, args, s),
        }
    }
}

fn call<'a>(f: Func, args: &'a [Expr], s: &Scope<'a>) -> Cow<'a, Value> {
    let arg = |i: usize| args.get(i).map_or(Cow::Borrowed(&NULL), |e| e.eval(s));
    let text1 = |f: fn(&str) -> String| -> Cow<'a, Value> {
        Cow::Owned(as_text(&arg(0)).map_or(Value::Null, |t| Value::String(f(&t))))
    };
    match f {
        Func::Lookup => {
            let Some(Expr::Table(name)) = args.first() else { return Cow::Borrowed(&NULL) };
            let key = arg(1);
            let hit = s.tables.get(name).and_then(|t| table_key(&key).and_then(|k| t.get(&k)));
            hit.map_or(Cow::Borrowed(&NULL), Cow::Borrowed)
        }
        Func::Exists => Cow::Owned(Value::Bool(!arg(0).is_null())),
        Func::Coalesce => {
            for e in args {
                let v = e.eval(s);
                if !v.is_null() && v.as_str() != Some("") {
                    return v;
                }
            }
            Cow::Borrowed(&NULL)
        }
        Func::Concat => {
            let mut out = String::new();
            for e in args {
                if let Some(t) = as_text(&e.eval(s)) {
                    out.push_str(&t);
                }
            }
            Cow::Owned(Value::String(out))
        }
        Func::Lower => text1(|t| t.to_lowercase()),
        Func::Upper => text1(|t| t.to_uppercase()),
        Func::Trim => text1(|t| t.trim().to_owned()),
        Func::Str => text1(str::to_owned),
        // An empty value is no value: hashing it would give every record without one the
        // same digest (one "card" shared by all).
        Func::Hash => Cow::Owned(
            as_text(&arg(0))
                .filter(|t| !t.trim().is_empty())
                .map_or(Value::Null, |t| Value::String(sha256_hex(t.as_bytes()))),
        ),
        Func::Int => Cow::Owned(as_f64(&arg(0)).map_or(Value::Null, |f| num(f.trunc()))),
        Func::Num => Cow::Owned(as_f64(&arg(0)).map_or(Value::Null, num)),
        Func::Hex => Cow::Owned(
            as_text(&arg(0))
                .and_then(|t| {
                    let t = t.trim();
                    i64::from_str_radix(t.trim_start_matches("0x").trim_start_matches("0X"), 16).ok()
                })
                .map_or(Value::Null, |i| Value::Number(i.into())),
        ),
        Func::Base64 => Cow::Owned(arg(0).as_str().and_then(base64_text).map_or(Value::Null, Value::String)),
        Func::Len => Cow::Owned(match &*arg(0) {
            Value::String(t) => Value::Number(t.chars().count().into()),
            Value::Array(a) => Value::Number(a.len().into()),
            Value::Object(o) => Value::Number(o.len().into()),
            _ => Value::Null,
        }),
        Func::Substr => {
            let v = arg(0);
            let Some(t) = as_text(&v) else { return Cow::Borrowed(&NULL) };
            let start = as_f64(&arg(1)).unwrap_or(0.0).max(0.0) as usize;
            let len = if args.len() > 2 { as_f64(&arg(2)).unwrap_or(0.0).max(0.0) as usize } else { usize::MAX };
            Cow::Owned(Value::String(t.chars().skip(start).take(len).collect()))
        }
    }
}

impl Expr {
    /// Every capture name and table name used, for checking a profile at load.
    pub fn names(&self, captures: &mut Vec<String>, tables: &mut Vec<String>) {
        match self {
            Expr::Capture(c) => captures.push(c.clone()),
            Expr::Table(t) => tables.push(t.clone()),
            Expr::Lit(_) | Expr::Path(..) => {}
            Expr::Not(e) => e.names(captures, tables),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) => {
                a.names(captures, tables);
                b.names(captures, tables);
            }
            Expr::In(x, items) => {
                x.names(captures, tables);
                items.iter().for_each(|i| i.names(captures, tables));
            }
            Expr::Cond(c, a, b) => {
                c.names(captures, tables);
                a.names(captures, tables);
                b.names(captures, tables);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.names(captures, tables)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(text: &str, record: &Value) -> Value {
        let mut tables = Tables::new();
        tables.insert(
            "cred".into(),
            [("75".to_owned(), json!("face")), ("1".to_owned(), json!("card"))].into_iter().collect(),
        );
        let caps = vec![("sn".to_owned(), "FX1".to_owned())];
        let s = Scope { record, message: &json!({"env": {"sn": "E1"}}), captures: &caps, tables: &tables };
        parse(text).unwrap_or_else(|e| panic!("{e}")).eval(&s).into_owned()
    }

    #[test]
    fn hash_of_an_empty_or_absent_value_is_no_value() {
        let r = json!({"card": "", "blank": "  ", "n": 7});
        assert_eq!(eval("hash($.card)", &r), Value::Null);
        assert_eq!(eval("hash($.blank)", &r), Value::Null);
        assert_eq!(eval("hash($.missing)", &r), Value::Null);
        assert_eq!(eval("hash($.n)", &r), json!(sha256_hex(b"7")));
    }

    #[test]
    fn paths_literals_and_operators() {
        let r = json!({"a": {"b": [10, {"c": "x"}]}, "n": "5", "odd key": 1, "t": true});
        assert_eq!(eval("$.a.b[0]", &r), json!(10));
        assert_eq!(eval("$.a.b[1].c", &r), json!("x"));
        assert_eq!(eval("$[\"odd key\"]", &r), json!(1));
        assert_eq!(eval("$.missing.deeper[3]", &r), Value::Null);
        assert_eq!(eval("$$.env.sn", &r), json!("E1"));
        assert_eq!(eval("{sn}", &r), json!("FX1"));
        assert_eq!(eval("$.n == 5", &r), json!(true), "numeric string equals number");
        assert_eq!(eval("$.n > 4 && $.t", &r), json!(true));
        assert_eq!(eval("!$.t || $.missing", &r), json!(false));
        assert_eq!(eval("$.n in [1, 2, '5']", &r), json!(true));
        assert_eq!(eval("$.t ? 'yes' : 'no'", &r), json!("yes"));
        assert_eq!(eval("$.missing ? 1 : $.t ? 2 : 3", &r), json!(2));
        assert_eq!(eval("0x4b == 75", &r), json!(true));
        assert_eq!(eval("-3.5 < 0", &r), json!(true));
    }

    #[test]
    fn functions() {
        let r = json!({"minor": 75, "hexminor": "0x4b", "plate": "6YSCQUI3NTUz", "s": "  AbC ", "e": ""});
        assert_eq!(eval("lookup(cred, $.minor)", &r), json!("face"));
        assert_eq!(eval("lookup(cred, $.hexminor)", &r), json!("face"));
        assert_eq!(eval("lookup(cred, 99)", &r), Value::Null);
        assert_eq!(eval("lookup(cred, $.minor) ? 'granted' : 'denied'", &r), json!("granted"));
        assert_eq!(eval("base64($.plate)", &r), json!("鄂AB7553"));
        assert_eq!(eval("lower(trim($.s))", &r), json!("abc"));
        assert_eq!(eval("coalesce($.e, $.missing, 'd')", &r), json!("d"));
        assert_eq!(eval("concat({sn}, ':', $.minor)", &r), json!("FX1:75"));
        assert_eq!(eval("hex('ff')", &r), json!(255));
        assert_eq!(eval("int('12.7')", &r), json!(12));
        assert_eq!(eval("num('12.5')", &r), json!(12.5));
        assert_eq!(eval("substr('420104000013', 0, 6)", &r), json!("420104"));
        assert_eq!(eval("len($.plate)", &r), json!(12));
        assert_eq!(eval("exists($.e) && !exists($.nope)", &r), json!(true));
        assert_eq!(eval("hash('x')", &r).as_str().map(str::len), Some(64));
        assert_eq!(eval("upper($.minor)", &r), json!("75"), "numbers have text");
        assert_eq!(eval("base64(12)", &r), Value::Null, "wrong type answers null");
    }

    #[test]
    fn parse_errors_name_the_place() {
        for bad in ["$.a ==", "lookup($.x, 1)", "nosuch(1)", "'open", "(1", "1 2", "$.", "substr('a')", "{}"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.at <= bad.len(), "{e}");
        }
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("deeply"));
        let nots = format!("{}1", "!".repeat(100));
        assert!(parse(&nots).is_err());
        // Too long, and multi-byte where the excerpt is cut: an error, not a panic.
        let long = format!("$.a == '{}'", "门禁".repeat(2000));
        assert!(parse(&long).unwrap_err().message.contains("too long"));
    }
}

//! The condition language (docs/rules.md): a lexer and a recursive-descent parser from a
//! condition's text to an expression tree, and the compiled form ([`Cond`]) the evaluator runs:
//! fields resolved to getters, literals typed, lists expanded, macros inlined.

use std::collections::{HashMap, HashSet};

use wildmatch::WildMatch;

use crate::events::event::Event;
use crate::rules::fields::{self, Field, Ty, Val};

/// The longest condition text (bytes), and the deepest nesting of parentheses and `not`.
const MAX_LEN: usize = 16 * 1024;
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    /// `==`, `!=`, `<`, `<=`, `>`, `>=`.
    Cmp(&'static str),
    /// An unquoted word: a field, macro or list name, a keyword, a number or a bare string.
    Word(String),
    /// A quoted string.
    Quoted(String),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    if s.len() > MAX_LEN {
        return Err(format!(
            "the condition is longer than {} KiB",
            MAX_LEN >> 10
        ));
    }
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Tok::LParen),
            ')' => out.push(Tok::RParen),
            ',' => out.push(Tok::Comma),
            '=' | '!' | '<' | '>' => {
                let eq = it.next_if(|(_, n)| *n == '=').is_some();
                out.push(Tok::Cmp(match (c, eq) {
                    ('=', true) => "==",
                    ('!', true) => "!=",
                    ('<', false) => "<",
                    ('<', true) => "<=",
                    ('>', false) => ">",
                    ('>', true) => ">=",
                    _ => {
                        return Err(format!(
                            "`{c}` at column {}: comparisons are ==, !=, <, <=, >, >=",
                            i + 1
                        ));
                    }
                }));
            }
            '"' | '\'' => {
                let mut v = String::new();
                loop {
                    match it.next() {
                        None => {
                            return Err(format!(
                                "the string opened at column {} is not closed",
                                i + 1
                            ));
                        }
                        Some((_, '\\')) => match it.next() {
                            Some((_, e)) => v.push(e),
                            None => return Err("a string ends in a lone `\\`".into()),
                        },
                        Some((_, q)) if q == c => break,
                        Some((_, x)) => v.push(x),
                    }
                }
                out.push(Tok::Quoted(v));
            }
            _ => {
                let mut w = String::from(c);
                while let Some((_, n)) =
                    it.next_if(|(_, n)| !n.is_whitespace() && !"(),=!<>\"'".contains(*n))
                {
                    w.push(n);
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

/// A literal as written: its text, and whether it was quoted (a quoted `1` is a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Lit {
    pub text: String,
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Bool(bool),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Macro(String),
    Exists(String),
    /// `field op values`: several values for `in` and for a list name (any of them).
    Test {
        field: String,
        op: &'static str,
        values: Vec<Lit>,
        /// Written as a list (`in (...)`, a list name): allowed only for the any-of operators.
        listed: bool,
    },
}

const KEYWORD_OPS: [&str; 5] = ["in", "startswith", "endswith", "contains", "glob"];

struct P<'a> {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    /// Names of the lists known when the condition is compiled: a word naming one expands.
    lists: &'a dyn Fn(&str) -> bool,
}

impl P<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn word_is(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }
    fn describe(t: Option<&Tok>) -> String {
        match t {
            None => "the end".into(),
            Some(Tok::LParen) => "`(`".into(),
            Some(Tok::RParen) => "`)`".into(),
            Some(Tok::Comma) => "`,`".into(),
            Some(Tok::Cmp(c)) => format!("`{c}`"),
            Some(Tok::Word(w)) => format!("`{w}`"),
            Some(Tok::Quoted(q)) => format!("{q:?}"),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut items = vec![self.and()?];
        while self.word_is("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut items = vec![self.unary()?];
        while self.word_is("and") {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let r = if self.word_is("not") {
            self.pos += 1;
            self.unary().map(|e| Expr::Not(Box::new(e)))
        } else {
            self.atom()
        };
        self.depth -= 1;
        r
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Tok::LParen) => {
                let e = self.or()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    t => Err(format!(
                        "expected `)`, found {}",
                        Self::describe(t.as_ref())
                    )),
                }
            }
            Some(Tok::Word(w)) if w == "true" || w == "false" => Ok(Expr::Bool(w == "true")),
            Some(Tok::Word(w)) if ["and", "or", "not"].contains(&w.as_str()) => {
                Err(format!("expected a condition, found `{w}`"))
            }
            Some(Tok::Word(w)) => self.after_name(w),
            t => Err(format!(
                "expected a field, a macro or `(`, found {}",
                Self::describe(t.as_ref())
            )),
        }
    }

    /// After a word: a comparison (it is a field), `exists`, or nothing (a macro).
    fn after_name(&mut self, name: String) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Tok::Cmp(op)) => {
                self.pos += 1;
                let values = self.value_or_list()?;
                Ok(Expr::Test {
                    field: name,
                    op,
                    listed: values.1,
                    values: values.0,
                })
            }
            Some(Tok::Word(w)) if w == "exists" => {
                self.pos += 1;
                Ok(Expr::Exists(name))
            }
            Some(Tok::Word(w)) if KEYWORD_OPS.contains(&w.as_str()) => {
                self.pos += 1;
                let op = KEYWORD_OPS.into_iter().find(|k| *k == w).unwrap_or("in");
                let (values, listed) = self.value_or_list()?;
                Ok(Expr::Test {
                    field: name,
                    op,
                    values,
                    listed,
                })
            }
            _ => Ok(Expr::Macro(name)),
        }
    }

    /// One value, `(v, v, ...)`, or a list's name. Returns whether it was a list.
    fn value_or_list(&mut self) -> Result<(Vec<Lit>, bool), String> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let mut vals = Vec::new();
            if self.peek() == Some(&Tok::RParen) {
                self.pos += 1;
                return Ok((vals, true));
            }
            loop {
                vals.push(self.value()?);
                match self.next() {
                    Some(Tok::Comma) => {}
                    Some(Tok::RParen) => return Ok((vals, true)),
                    t => {
                        return Err(format!(
                            "expected `,` or `)` in a list, found {}",
                            Self::describe(t.as_ref())
                        ));
                    }
                }
            }
        }
        let v = self.value()?;
        let listed = !v.quoted && (self.lists)(&v.text);
        Ok((vec![v], listed))
    }

    fn value(&mut self) -> Result<Lit, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(Lit {
                text: w,
                quoted: false,
            }),
            Some(Tok::Quoted(q)) => Ok(Lit {
                text: q,
                quoted: true,
            }),
            t => Err(format!(
                "expected a value, found {}",
                Self::describe(t.as_ref())
            )),
        }
    }
}

/// Parses a condition's text. `is_list` says which bare words name lists.
pub fn parse(text: &str, is_list: &dyn Fn(&str) -> bool) -> Result<Expr, String> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err("the condition is empty".into());
    }
    let mut p = P {
        toks,
        pos: 0,
        depth: 0,
        lists: is_list,
    };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(format!(
            "unexpected {} after a complete condition (missing `and`/`or`?)",
            P::describe(Some(t))
        )),
    }
}

/// A field as compiled: one of the table's, or a pod label.
#[derive(Debug, Clone)]
pub enum FieldRef {
    Static(Field),
    Label(Box<str>),
}

impl FieldRef {
    fn resolve(name: &str) -> Result<(FieldRef, Ty), String> {
        if let Some(f) = fields::lookup(name) {
            return Ok((FieldRef::Static(f), f.ty));
        }
        if let Some((k, ty)) = fields::lookup_dynamic(name) {
            return Ok((FieldRef::Label(k), ty));
        }
        Err(format!(
            "unknown field `{name}` (fields are named as in docs/events.md; docs/rules.md lists those a rule can read)"
        ))
    }

    pub fn name(&self) -> String {
        match self {
            FieldRef::Static(f) => f.name.to_string(),
            FieldRef::Label(k) => format!("orchestrator.labels.{k}"),
        }
    }

    #[inline]
    fn any<'e>(&self, ev: &'e Event, f: &mut dyn FnMut(Val<'e>) -> bool) -> bool {
        match self {
            FieldRef::Static(x) => (x.get)(ev, f),
            FieldRef::Label(k) => fields::label(ev, k, f),
        }
    }

    /// Every value as JSON (for the alert).
    pub fn to_json(&self, ev: &Event) -> serde_json::Value {
        match self {
            FieldRef::Static(x) => x.to_json(ev),
            FieldRef::Label(k) => {
                let mut v = serde_json::Value::Null;
                fields::label(ev, k, &mut |x| {
                    v = x.to_json();
                    true
                });
                v
            }
        }
    }
}

/// What a compiled test checks on each value of its field.
#[derive(Debug)]
pub enum Test {
    Exists,
    IntIn(Vec<i64>),
    IntNotEq(i64),
    IntLt(i64),
    IntLe(i64),
    IntGt(i64),
    IntGe(i64),
    StrEq(Box<str>),
    StrNotEq(Box<str>),
    StrIn(HashSet<Box<str>>),
    StartsWith(Vec<Box<str>>),
    EndsWith(Vec<Box<str>>),
    Contains(Vec<Box<str>>),
    Glob(Vec<WildMatch>),
    BoolEq(bool),
}

impl Test {
    #[inline]
    fn holds(&self, v: &Val<'_>) -> bool {
        match (self, v) {
            (Test::Exists, _) => true,
            (Test::IntIn(xs), Val::Int(n)) => xs.contains(n),
            (Test::IntNotEq(x), Val::Int(n)) => n != x,
            (Test::IntLt(x), Val::Int(n)) => n < x,
            (Test::IntLe(x), Val::Int(n)) => n <= x,
            (Test::IntGt(x), Val::Int(n)) => n > x,
            (Test::IntGe(x), Val::Int(n)) => n >= x,
            (Test::StrEq(x), Val::Str(s)) => **x == **s,
            (Test::StrNotEq(x), Val::Str(s)) => **x != **s,
            (Test::StrIn(xs), Val::Str(s)) => xs.contains(s.as_ref()),
            (Test::StartsWith(xs), Val::Str(s)) => xs.iter().any(|x| s.starts_with(&**x)),
            (Test::EndsWith(xs), Val::Str(s)) => xs.iter().any(|x| s.ends_with(&**x)),
            (Test::Contains(xs), Val::Str(s)) => xs.iter().any(|x| s.contains(&**x)),
            (Test::Glob(xs), Val::Str(s)) => xs.iter().any(|x| x.matches(s)),
            (Test::BoolEq(b), Val::Bool(x)) => b == x,
            _ => false,
        }
    }
}

/// A compiled condition.
#[derive(Debug)]
pub enum Cond {
    Const(bool),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Test(FieldRef, Test),
}

impl Cond {
    /// Whether the event satisfies the condition. A test on an absent field is false; on a
    /// list field, true when it holds for any element.
    pub fn eval(&self, ev: &Event) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::And(xs) => xs.iter().all(|c| c.eval(ev)),
            Cond::Or(xs) => xs.iter().any(|c| c.eval(ev)),
            Cond::Not(c) => !c.eval(ev),
            Cond::Test(f, t) => f.any(ev, &mut |v| t.holds(&v)),
        }
    }

    /// The fields the condition reads, each once, in order of appearance.
    pub fn fields(&self, out: &mut Vec<FieldRef>) {
        match self {
            Cond::Const(_) => {}
            Cond::And(xs) | Cond::Or(xs) => xs.iter().for_each(|c| c.fields(out)),
            Cond::Not(c) => c.fields(out),
            Cond::Test(f, _) => {
                let n = f.name();
                if !out.iter().any(|o| o.name() == n) {
                    out.push(f.clone());
                }
            }
        }
    }
}

/// What a compile step looks names up in.
pub struct Scope<'a> {
    pub lists: &'a HashMap<String, Vec<String>>,
    pub macros: &'a HashMap<String, Expr>,
}

/// Compiles an expression: fields resolved, literals checked against the field's type, lists
/// expanded, macros inlined (a macro that refers to itself, directly or not, is an error).
pub fn compile(e: &Expr, scope: &Scope<'_>, stack: &mut Vec<String>) -> Result<Cond, String> {
    Ok(match e {
        Expr::Bool(b) => Cond::Const(*b),
        Expr::And(xs) => Cond::And(
            xs.iter()
                .map(|x| compile(x, scope, stack))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Or(xs) => Cond::Or(
            xs.iter()
                .map(|x| compile(x, scope, stack))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(x) => Cond::Not(Box::new(compile(x, scope, stack)?)),
        Expr::Macro(name) => {
            if name.contains('.') || fields::lookup(name).is_some() {
                return Err(format!(
                    "`{name}` is followed by no comparison (write e.g. `{name} == value`, `{name} in (a, b)` or `{name} exists`)"
                ));
            }
            let m = scope.macros.get(name).ok_or_else(|| {
                format!("unknown macro `{name}` (or a field without a comparison)")
            })?;
            if stack.iter().any(|s| s == name) {
                return Err(format!(
                    "macro `{name}` refers to itself ({} -> {name})",
                    stack.join(" -> ")
                ));
            }
            stack.push(name.clone());
            let c = compile(m, scope, stack).map_err(|e| format!("in macro `{name}`: {e}"))?;
            stack.pop();
            c
        }
        Expr::Exists(name) => Cond::Test(FieldRef::resolve(name)?.0, Test::Exists),
        Expr::Test {
            field,
            op,
            values,
            listed,
        } => {
            let (f, ty) = FieldRef::resolve(field)?;
            let vals = expand(values, scope);
            let t = test(field, ty, op, &vals, *listed)?;
            Cond::Test(f, t)
        }
    })
}

/// Literals with list names replaced by the lists' items.
fn expand(values: &[Lit], scope: &Scope<'_>) -> Vec<Lit> {
    let mut out = Vec::new();
    for v in values {
        match scope.lists.get(&v.text).filter(|_| !v.quoted) {
            Some(items) => out.extend(items.iter().map(|i| Lit {
                text: i.clone(),
                quoted: true,
            })),
            None => out.push(v.clone()),
        }
    }
    out
}

fn parse_int(l: &Lit) -> Option<i64> {
    let t = l.text.as_str();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok()?,
        None => t.parse::<i64>().ok()?,
    };
    Some(if neg { -n } else { n })
}

fn test(field: &str, ty: Ty, op: &str, vals: &[Lit], listed: bool) -> Result<Test, String> {
    let any_of = matches!(op, "in" | "startswith" | "endswith" | "contains" | "glob");
    if listed && !any_of {
        return Err(format!(
            "`{op}` takes one value; use `in` to compare `{field}` with a list"
        ));
    }
    if vals.is_empty() && op != "in" {
        return Err(format!("`{field} {op}` needs a value"));
    }
    let one = || &vals[0];
    match ty {
        Ty::Int => {
            let ints = vals
                .iter()
                .map(|l| {
                    parse_int(l).ok_or_else(|| {
                        format!("`{field}` is {}: {:?} is not one", ty.name(), l.text)
                    })
                })
                .collect::<Result<Vec<i64>, String>>()?;
            let n = ints.first().copied().unwrap_or(0);
            Ok(match op {
                "==" | "in" => Test::IntIn(ints),
                "!=" => Test::IntNotEq(n),
                "<" => Test::IntLt(n),
                "<=" => Test::IntLe(n),
                ">" => Test::IntGt(n),
                ">=" => Test::IntGe(n),
                _ => {
                    return Err(format!(
                        "`{op}` compares strings; `{field}` is {} (use ==, !=, <, <=, >, >= or in)",
                        ty.name()
                    ));
                }
            })
        }
        Ty::Bool => {
            let b = match one().text.as_str() {
                "true" if !one().quoted => true,
                "false" if !one().quoted => false,
                t => return Err(format!("`{field}` is true or false, not {t:?}")),
            };
            match op {
                "==" => Ok(Test::BoolEq(b)),
                "!=" => Ok(Test::BoolEq(!b)),
                _ => Err(format!(
                    "`{field}` is true or false: compare it with == or !="
                )),
            }
        }
        Ty::Str => {
            let strs = || vals.iter().map(|l| Box::<str>::from(l.text.as_str()));
            Ok(match op {
                "==" => Test::StrEq(one().text.as_str().into()),
                "!=" => Test::StrNotEq(one().text.as_str().into()),
                "in" => Test::StrIn(strs().collect()),
                "startswith" => Test::StartsWith(strs().collect()),
                "endswith" => Test::EndsWith(strs().collect()),
                "contains" => Test::Contains(strs().collect()),
                "glob" => Test::Glob(vals.iter().map(|l| WildMatch::new(&l.text)).collect()),
                _ => {
                    return Err(format!(
                        "`{op}` compares numbers; `{field}` is a string (use ==, !=, in, startswith, endswith, contains or glob)"
                    ));
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_lists(_: &str) -> bool {
        false
    }

    #[test]
    fn precedence_not_and_or_and_parentheses() {
        let e = parse("a or b and not c", &no_lists).expect("parse");
        assert_eq!(
            e,
            Expr::Or(vec![
                Expr::Macro("a".into()),
                Expr::And(vec![
                    Expr::Macro("b".into()),
                    Expr::Not(Box::new(Expr::Macro("c".into())))
                ])
            ])
        );
        let e = parse("(a or b) and c", &no_lists).expect("parse");
        assert!(matches!(e, Expr::And(_)));
    }

    #[test]
    fn tests_values_and_lists() {
        let e = parse(
            "process.name in (bash, 'sh', \"z sh\") and process.pid>=10 and x exists",
            &no_lists,
        )
        .expect("parse");
        let Expr::And(items) = e else { panic!() };
        assert_eq!(
            items[0],
            Expr::Test {
                field: "process.name".into(),
                op: "in",
                values: vec![
                    Lit {
                        text: "bash".into(),
                        quoted: false
                    },
                    Lit {
                        text: "sh".into(),
                        quoted: true
                    },
                    Lit {
                        text: "z sh".into(),
                        quoted: true
                    }
                ],
                listed: true
            }
        );
        assert!(matches!(&items[1], Expr::Test { op: ">=", .. }));
        assert_eq!(items[2], Expr::Exists("x".into()));
        let e = parse("process.name in shells", &|n| n == "shells").expect("parse");
        assert!(matches!(e, Expr::Test { listed: true, .. }));
    }

    #[test]
    fn malformed_conditions_are_errors_not_panics() {
        for bad in [
            "",
            "(",
            ")",
            "a and",
            "or a",
            "not",
            "a b",
            "process.pid ==",
            "process.pid = 1",
            "process.pid == (1,",
            "process.pid in (1 2)",
            "'unclosed",
            "a \\",
            "process.name == 'x\\",
            "!",
            "<<",
            "and",
            "a)",
        ] {
            assert!(parse(bad, &no_lists).is_err(), "{bad:?} parsed");
        }
        let deep = "not ".repeat(200) + "a";
        assert!(parse(&deep, &no_lists).is_err());
        let deep = "(".repeat(200) + "a" + &")".repeat(200);
        assert!(parse(&deep, &no_lists).is_err());
        assert!(parse(&"a or ".repeat(5000), &no_lists).is_err());
    }

    #[test]
    fn compile_checks_fields_types_and_macros() {
        let lists = HashMap::from([("shells".to_string(), vec!["bash".to_string()])]);
        let mut macros = HashMap::new();
        macros.insert(
            "loop".to_string(),
            parse("loop2", &no_lists).expect("parse"),
        );
        macros.insert(
            "loop2".to_string(),
            parse("loop", &no_lists).expect("parse"),
        );
        let scope = Scope {
            lists: &lists,
            macros: &macros,
        };
        let c = |s: &str| {
            compile(
                &parse(s, &|n| lists.contains_key(n)).expect("parse"),
                &scope,
                &mut Vec::new(),
            )
        };
        assert!(c("process.name in shells").is_ok());
        assert!(c("process.pid == 0x10").is_ok());
        assert!(
            c("process.nope == 1")
                .expect_err("unknown")
                .contains("unknown field")
        );
        assert!(
            c("process.pid == abc")
                .expect_err("type")
                .contains("not one")
        );
        assert!(c("process.pid startswith 1").is_err());
        assert!(c("process.name > 1").is_err());
        assert!(c("process.fileless == yes").is_err());
        assert!(c("process.pid == (1, 2)").is_err());
        assert!(c("loop").expect_err("cycle").contains("refers to itself"));
        assert!(c("nomacro").expect_err("unknown").contains("unknown macro"));
        assert!(
            c("process.pid")
                .expect_err("bare")
                .contains("no comparison")
        );
        assert!(c("orchestrator.labels.app == web").is_ok());
    }
}

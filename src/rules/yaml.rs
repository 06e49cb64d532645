//! A rule file's YAML as a small tree that remembers each node's line, built from yaml-rust2's
//! marked parser events (its `Yaml` type forgets lines). Anchors and aliases are refused (an
//! alias bomb cannot expand), and the file's size and nesting are bounded.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The largest rule file read (bytes).
pub const MAX_BYTES: usize = 4 << 20;
/// The deepest nesting of sequences and maps.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    /// 1-based line where the node starts.
    pub line: usize,
}

/// A problem at a line (1-based; 0 when the file as a whole is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub reason: String,
}

impl Problem {
    pub fn at(line: usize, reason: impl Into<String>) -> Problem {
        Problem {
            line,
            reason: reason.into(),
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// A map's entries, each key a scalar.
    pub fn entries(&self) -> Option<impl Iterator<Item = (&str, &Node, usize)>> {
        match &self.kind {
            Kind::Map(m) => Some(m.iter().map(|(k, v)| (k.as_str().unwrap_or(""), v, k.line))),
            _ => None,
        }
    }

    /// A scalar, or a sequence of scalars (each with its line).
    pub fn strings(&self) -> Result<Vec<(String, usize)>, Problem> {
        match &self.kind {
            Kind::Scalar(s) => Ok(vec![(s.clone(), self.line)]),
            Kind::Seq(items) => items
                .iter()
                .map(|n| {
                    n.as_str().map(|s| (s.to_string(), n.line)).ok_or_else(|| {
                        Problem::at(n.line, "expected a plain value, not a list or map")
                    })
                })
                .collect(),
            Kind::Map(_) => Err(Problem::at(
                self.line,
                "expected a value or a list of values, not a map",
            )),
        }
    }
}

#[derive(Default)]
struct Builder {
    /// Open sequences and maps, innermost last.
    stack: Vec<Node>,
    /// The documents read.
    docs: Vec<Node>,
    problem: Option<Problem>,
}

impl Builder {
    fn push_value(&mut self, n: Node) {
        match self.stack.last_mut() {
            Some(Node {
                kind: Kind::Seq(items),
                ..
            }) => items.push(n),
            Some(Node {
                kind: Kind::Map(entries),
                ..
            }) => {
                // A map's entries are pushed key first: a key waits with a placeholder value.
                match entries.last_mut() {
                    Some((_, v)) if v.line == 0 => *v = n,
                    _ => entries.push((
                        n,
                        Node {
                            kind: Kind::Scalar(String::new()),
                            line: 0,
                        },
                    )),
                }
            }
            _ => self.docs.push(n),
        }
    }

    fn fail(&mut self, line: usize, reason: &str) {
        if self.problem.is_none() {
            self.problem = Some(Problem::at(line, reason));
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.problem.is_some() {
            return;
        }
        let line = mark.line().max(1);
        match ev {
            Event::Alias(_) => self.fail(line, "aliases (*name) are not allowed in rule files"),
            Event::Scalar(s, _, anchor, _) => {
                if anchor != 0 {
                    return self.fail(line, "anchors (&name) are not allowed in rule files");
                }
                self.push_value(Node {
                    kind: Kind::Scalar(s),
                    line,
                });
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if anchor != 0 {
                    return self.fail(line, "anchors (&name) are not allowed in rule files");
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(line, "nested deeper than 32 levels");
                }
                let kind = if matches!(ev, Event::SequenceStart(..)) {
                    Kind::Seq(Vec::new())
                } else {
                    Kind::Map(Vec::new())
                };
                self.stack.push(Node { kind, line });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(n) = self.stack.pop() {
                    self.push_value(n);
                }
            }
            _ => {}
        }
    }
}

/// Parses one YAML document (an empty file is an empty sequence).
pub fn parse(text: &str) -> Result<Node, Problem> {
    if text.len() > MAX_BYTES {
        return Err(Problem::at(
            0,
            format!("the file is larger than {} MiB", MAX_BYTES >> 20),
        ));
    }
    let mut b = Builder::default();
    let mut p = Parser::new_from_str(text);
    if let Err(e) = p.load(&mut b, true) {
        let m = e.marker();
        return Err(Problem::at(
            m.line().max(1),
            format!("not valid YAML: {}", e.info()),
        ));
    }
    if let Some(p) = b.problem {
        return Err(p);
    }
    match b.docs.len() {
        0 => Ok(Node {
            kind: Kind::Seq(Vec::new()),
            line: 1,
        }),
        1 => Ok(b.docs.remove(0)),
        _ => Err(Problem::at(
            b.docs[1].line,
            "more than one YAML document (---): put every item in one list",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept() {
        let n = parse("# c\n- a: 1\n  b:\n    - x\n    - y\n- c\n").expect("parse");
        let Kind::Seq(items) = &n.kind else {
            panic!("{n:?}")
        };
        assert_eq!(items[0].line, 2);
        let e: Vec<_> = items[0].entries().expect("map").collect();
        assert_eq!(e[0].0, "a");
        assert_eq!(e[0].2, 2);
        assert_eq!(e[1].0, "b");
        let s = e[1].1.strings().expect("strings");
        assert_eq!(s, vec![("x".into(), 4), ("y".into(), 5)]);
        assert_eq!(items[1].as_str(), Some("c"));
        assert_eq!(items[1].line, 6);
    }

    #[test]
    fn bad_yaml_aliases_and_depth_are_refused_with_a_line() {
        let e = parse("- a: [1\n- b\n").expect_err("unclosed");
        assert!(e.line >= 1 && e.reason.contains("not valid YAML"), "{e:?}");
        let e = parse("- &x a\n- *x\n").expect_err("alias");
        assert_eq!(e.line, 1);
        let deep = "[".repeat(40) + &"]".repeat(40);
        assert!(parse(&deep).expect_err("deep").reason.contains("deeper"));
        assert!(
            parse("a\n---\nb\n")
                .expect_err("two docs")
                .reason
                .contains("document")
        );
        assert_eq!(parse("").expect("empty").kind, Kind::Seq(Vec::new()));
    }
}

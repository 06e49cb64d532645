//! Rule files → compiled rules: the items (`list`, `macro`, `rule`) of every file in order, then
//! lists and macros resolved across files (a later file can extend a list with `append: true`
//! or switch a rule off with `enabled: false`), then each rule compiled. Every problem is a
//! [`Finding`] with the file, the line and the reason.

use std::collections::HashMap;

use crate::rules::lang::{self, Cond, Expr, FieldRef, Scope};
use crate::rules::yaml::{self, Kind, Node, Problem};
use crate::sensor::decode::EVENT_TYPES;
use crate::sensor::exclude::{self, Exclusion};

/// A rule file's text and the name findings give it (`default` or its path).
pub struct Source {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const WORDS: [&'static str; 4] = ["low", "medium", "high", "critical"];

    fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }

    pub fn word(self) -> &'static str {
        Self::WORDS[self as usize]
    }

    /// ECS `event.severity` (the numbers Elastic's detection rules use for the four words).
    pub fn number(self) -> u8 {
        [21, 47, 73, 99][self as usize]
    }
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub description: String,
    pub severity: Severity,
    pub techniques: Vec<String>,
    /// Indexes into `EVENT_TYPES`.
    pub types: Vec<usize>,
    pub cond: Cond,
    /// The fields the condition reads, reported in the alert.
    pub reads: Vec<FieldRef>,
    /// `default` or the file's path.
    pub ruleset: String,
}

struct Loc {
    file: usize,
    line: usize,
}

struct RawRule {
    id: String,
    loc: Loc,
    name: Option<String>,
    description: String,
    severity: Option<Severity>,
    techniques: Vec<String>,
    types: Vec<usize>,
    condition: Option<(String, usize)>,
    enabled: bool,
}

struct Loader<'a> {
    sources: &'a [Source],
    findings: Vec<Finding>,
    lists: HashMap<String, Vec<String>>,
    list_locs: HashMap<String, Loc>,
    macros: Vec<(String, String, Loc)>,
    rules: Vec<RawRule>,
    /// The `exclude:` items of every file, in order (pushed into the kernel's maps).
    exclude: Vec<Exclusion>,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn is_technique(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    match b.len() {
        5 => b[0] == b'T' && digits(&b[1..]),
        9 => b[0] == b'T' && digits(&b[1..5]) && b[5] == b'.' && digits(&b[6..]),
        _ => false,
    }
}

fn scalar(n: &Node, what: &str) -> Result<String, Problem> {
    n.as_str()
        .map(str::to_string)
        .ok_or_else(|| Problem::at(n.line, format!("`{what}` must be a single value")))
}

fn boolean(n: &Node, what: &str) -> Result<bool, Problem> {
    match n.as_str() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(Problem::at(
            n.line,
            format!("`{what}` must be true or false"),
        )),
    }
}

impl Loader<'_> {
    fn find(&mut self, file: usize, p: Problem) {
        self.findings.push(Finding {
            file: self.sources[file].name.clone(),
            line: p.line,
            reason: p.reason,
        });
    }

    fn source(&mut self, file: usize) {
        let root = match yaml::parse(&self.sources[file].text) {
            Ok(r) => r,
            Err(p) => return self.find(file, p),
        };
        let Kind::Seq(items) = root.kind else {
            return self.find(
                file,
                Problem::at(
                    root.line,
                    "a rule file is a list of items, each `- rule:`, `- list:`, `- macro:` or `- exclude:`",
                ),
            );
        };
        for item in &items {
            if let Err(p) = self.item(file, item) {
                self.find(file, p);
            }
        }
    }

    fn item(&mut self, file: usize, item: &Node) -> Result<(), Problem> {
        let entries: Vec<(&str, &Node, usize)> = item
            .entries()
            .ok_or_else(|| {
                Problem::at(
                    item.line,
                    "expected an item with `rule:`, `list:`, `macro:` or `exclude:`",
                )
            })?
            .collect();
        let get = |k: &str| entries.iter().find(|e| e.0 == k).map(|e| e.1);
        let allowed: &[&str] = if get("rule").is_some() {
            &[
                "rule",
                "name",
                "description",
                "severity",
                "mitre",
                "events",
                "condition",
                "enabled",
            ]
        } else if get("list").is_some() {
            &["list", "items", "append"]
        } else if get("macro").is_some() {
            &["macro", "condition"]
        } else if get("exclude").is_some() {
            &["exclude"]
        } else {
            return Err(Problem::at(
                item.line,
                "expected an item with `rule:`, `list:`, `macro:` or `exclude:`",
            ));
        };
        for (k, _, line) in &entries {
            if !allowed.contains(k) {
                return Err(Problem::at(
                    *line,
                    format!("unknown key `{k}` (allowed here: {})", allowed.join(", ")),
                ));
            }
        }
        let line = item.line;
        if let Some(n) = get("exclude") {
            for (s, l) in n.strings()? {
                let x =
                    exclude::parse_item(&s).map_err(|e| Problem::at(l, format!("exclude: {e}")))?;
                if !self.exclude.contains(&x) {
                    self.exclude.push(x);
                }
            }
            return Ok(());
        }
        if let Some(n) = get("list") {
            let name = scalar(n, "list")?;
            if !is_name(&name) {
                return Err(Problem::at(
                    n.line,
                    format!("list name {name:?}: use letters, digits and _"),
                ));
            }
            let items: Vec<String> = match get("items") {
                Some(i) => i.strings()?.into_iter().map(|(s, _)| s).collect(),
                None => return Err(Problem::at(line, format!("list `{name}` has no `items:`"))),
            };
            let append = get("append")
                .map(|a| boolean(a, "append"))
                .transpose()?
                .unwrap_or(false);
            match (self.lists.get_mut(&name), append) {
                (Some(l), true) => l.extend(items),
                (None, true) => {
                    return Err(Problem::at(
                        line,
                        format!("`append: true` to list `{name}`, which is not defined before"),
                    ));
                }
                (Some(_), false) => {
                    let first = &self.list_locs[&name];
                    return Err(Problem::at(
                        line,
                        format!(
                            "list `{name}` is already defined at {}:{} (add `append: true` to extend it)",
                            self.sources[first.file].name, first.line
                        ),
                    ));
                }
                (None, false) => {
                    self.lists.insert(name.clone(), items);
                    self.list_locs.insert(name, Loc { file, line });
                }
            }
            return Ok(());
        }
        if let Some(n) = get("macro") {
            let name = scalar(n, "macro")?;
            if !is_name(&name) {
                return Err(Problem::at(
                    n.line,
                    format!("macro name {name:?}: use letters, digits and _"),
                ));
            }
            if self.macros.iter().any(|m| m.0 == name) {
                return Err(Problem::at(
                    line,
                    format!("macro `{name}` is defined twice"),
                ));
            }
            let c = get("condition")
                .ok_or_else(|| Problem::at(line, format!("macro `{name}` has no `condition:`")))?;
            let text = scalar(c, "condition")?;
            self.macros.push((name, text, Loc { file, line: c.line }));
            return Ok(());
        }
        let n = get("rule").ok_or_else(|| Problem::at(line, "no `rule:`"))?;
        let id = scalar(n, "rule")?;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        {
            return Err(Problem::at(
                n.line,
                format!("rule id {id:?}: use letters, digits and _ . : -"),
            ));
        }
        let enabled = get("enabled").map(|e| boolean(e, "enabled")).transpose()?;
        if let Some(prev) = self.rules.iter_mut().find(|r| r.id == id) {
            // An item with only `rule` and `enabled` switches an earlier rule on or off.
            if entries.len() == 2 {
                if let Some(on) = enabled {
                    prev.enabled = on;
                    return Ok(());
                }
            }
            return Err(Problem::at(
                line,
                format!(
                    "rule `{id}` is already defined at {}:{} (only `enabled:` may be changed by a later item)",
                    self.sources[prev.loc.file].name, prev.loc.line
                ),
            ));
        }
        let mut r = RawRule {
            id,
            loc: Loc { file, line },
            name: get("name").map(|x| scalar(x, "name")).transpose()?,
            description: get("description")
                .map(|x| scalar(x, "description"))
                .transpose()?
                .unwrap_or_default(),
            severity: None,
            techniques: Vec::new(),
            types: Vec::new(),
            condition: get("condition")
                .map(|c| scalar(c, "condition").map(|t| (t, c.line)))
                .transpose()?,
            enabled: enabled.unwrap_or(true),
        };
        if let Some(s) = get("severity") {
            let w = scalar(s, "severity")?;
            r.severity = Some(Severity::parse(&w).ok_or_else(|| {
                Problem::at(
                    s.line,
                    format!(
                        "severity {w:?}: expected one of {}",
                        Severity::WORDS.join(", ")
                    ),
                )
            })?);
        }
        if let Some(m) = get("mitre") {
            for (t, l) in m.strings()? {
                if !is_technique(&t) {
                    return Err(Problem::at(
                        l,
                        format!("{t:?} is not a MITRE ATT&CK technique id (T1234 or T1234.001)"),
                    ));
                }
                r.techniques.push(t);
            }
        }
        if let Some(ev) = get("events") {
            for (t, l) in ev.strings()? {
                let i = EVENT_TYPES.iter().position(|x| *x == t).ok_or_else(|| {
                    Problem::at(
                        l,
                        format!(
                            "unknown event type {t:?} (one of {})",
                            EVENT_TYPES.join(", ")
                        ),
                    )
                })?;
                if !r.types.contains(&i) {
                    r.types.push(i);
                }
            }
        }
        let missing: Vec<&str> = [
            ("name", r.name.is_none()),
            ("severity", r.severity.is_none()),
            ("events", r.types.is_empty()),
            ("condition", r.condition.is_none()),
        ]
        .iter()
        .filter(|m| m.1)
        .map(|m| m.0)
        .collect();
        if !missing.is_empty() {
            return Err(Problem::at(
                line,
                format!("rule `{}` lacks {}", r.id, missing.join(", ")),
            ));
        }
        self.rules.push(r);
        Ok(())
    }

    fn compile(mut self) -> Result<Loaded, Vec<Finding>> {
        let lists = std::mem::take(&mut self.lists);
        let is_list = |n: &str| lists.contains_key(n);
        let mut macros = HashMap::new();
        let mut locs = Vec::new();
        for (name, text, loc) in std::mem::take(&mut self.macros) {
            match lang::parse(&text, &is_list) {
                Ok(e) => {
                    macros.insert(name.clone(), e);
                    locs.push((name, loc));
                }
                Err(e) => self.find(
                    loc.file,
                    Problem::at(loc.line, format!("macro `{name}`: {e}")),
                ),
            }
        }
        let scope = Scope {
            lists: &lists,
            macros: &macros,
        };
        // Every macro must compile, used or not (reported where it is defined).
        for (name, loc) in &locs {
            if let Some(e) = macros.get(name) {
                if let Err(e) = lang::compile(e, &scope, &mut vec![name.clone()]) {
                    self.find(
                        loc.file,
                        Problem::at(loc.line, format!("macro `{name}`: {e}")),
                    );
                }
            }
        }
        let mut out = Vec::new();
        for r in std::mem::take(&mut self.rules) {
            let Some((text, cline)) = r.condition.clone() else {
                continue;
            };
            let compiled: Result<Cond, String> = lang::parse(&text, &is_list)
                .and_then(|e: Expr| lang::compile(&e, &scope, &mut Vec::new()));
            match compiled {
                Ok(cond) if r.enabled => {
                    let mut reads = Vec::new();
                    cond.fields(&mut reads);
                    out.push(Rule {
                        id: r.id,
                        name: r.name.unwrap_or_default(),
                        description: r.description,
                        severity: r.severity.unwrap_or(Severity::Low),
                        techniques: r.techniques,
                        types: r.types,
                        cond,
                        reads,
                        ruleset: self.sources[r.loc.file].name.clone(),
                    });
                }
                Ok(_) => {}
                Err(e) => self.find(
                    r.loc.file,
                    Problem::at(cline, format!("rule `{}`: {e}", r.id)),
                ),
            }
        }
        if self.findings.is_empty() {
            Ok(Loaded {
                rules: out,
                exclude: self.exclude,
            })
        } else {
            Err(self.findings)
        }
    }
}

/// What rule files hold: the compiled rules and the exclusions for the kernel.
#[derive(Debug, Default)]
pub struct Loaded {
    pub rules: Vec<Rule>,
    pub exclude: Vec<Exclusion>,
}

/// Loads the sources in order into one rule set, or every finding.
pub fn load(sources: &[Source]) -> Result<Vec<Rule>, Vec<Finding>> {
    load_all(sources).map(|l| l.rules)
}

/// Loads the sources in order into one rule set and their exclusions, or every finding.
pub fn load_all(sources: &[Source]) -> Result<Loaded, Vec<Finding>> {
    let mut l = Loader {
        sources,
        findings: Vec::new(),
        lists: HashMap::new(),
        list_locs: HashMap::new(),
        macros: Vec::new(),
        rules: Vec::new(),
        exclude: Vec::new(),
    };
    for i in 0..sources.len() {
        l.source(i);
    }
    l.compile()
}

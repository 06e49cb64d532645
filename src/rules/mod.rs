//! Detection rules (docs/rules.md), between enrich and the sink: YAML rule files and the
//! compiled-in defaults loaded into one [`Rules`] set, indexed by event type, evaluated on every
//! event (an event meets only the rules of its own type); a match becomes an alert
//! ([`AlertInfo`]). `SIGHUP` reloads the files; a bad file keeps the rules that were running.

pub mod fields;
pub mod lang;
pub mod load;
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::counters::RuleCounts;
use crate::events::alert::{AlertInfo, RuleRef, Technique, Threat, Trigger};
use crate::events::event::Event;
use crate::sensor::decode::EVENT_TYPES;
pub use load::{Finding, Rule, Source};

/// The compiled-in default rule set.
pub const DEFAULT_RULES: &str = include_str!("default.yaml");
/// How findings name the default rule set.
pub const DEFAULT_NAME: &str = "default";

/// Which rules to load: the defaults (unless switched off) first, then each file in order.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub defaults: bool,
    pub files: Vec<PathBuf>,
}

impl Options {
    /// No rules at all (evaluation is skipped).
    pub fn is_empty(&self) -> bool {
        !self.defaults && self.files.is_empty()
    }
}

/// The rule set in use.
#[derive(Debug, Default)]
pub struct Rules {
    opts: Options,
    rules: Vec<Rule>,
    /// Per `EVENT_TYPES` index, the rules of that type.
    by_type: Vec<Vec<u32>>,
    /// The files' `exclude:` items (the sensor pushes them into the kernel).
    pub exclude: Vec<crate::sensor::exclude::Exclusion>,
    pub counts: RuleCounts,
}

/// Reads the sources `opts` names (a file that cannot be read is a finding).
fn sources(opts: &Options) -> Result<Vec<Source>, Vec<Finding>> {
    let mut out = Vec::new();
    let mut findings = Vec::new();
    if opts.defaults {
        out.push(Source {
            name: DEFAULT_NAME.into(),
            text: DEFAULT_RULES.into(),
        });
    }
    for f in &opts.files {
        match read(f) {
            Ok(text) => out.push(Source {
                name: f.display().to_string(),
                text,
            }),
            Err(reason) => findings.push(Finding {
                file: f.display().to_string(),
                line: 0,
                reason,
            }),
        }
    }
    if findings.is_empty() {
        Ok(out)
    } else {
        Err(findings)
    }
}

fn read(f: &Path) -> Result<String, String> {
    let md = std::fs::metadata(f).map_err(|e| format!("cannot read the rule file: {e}"))?;
    if !md.is_file() {
        return Err(format!(
            "not a regular file ({}): give a YAML rule file",
            crate::files::file_kind(&md)
        ));
    }
    if md.len() > yaml::MAX_BYTES as u64 {
        return Err(format!(
            "the file is larger than {} MiB",
            yaml::MAX_BYTES >> 20
        ));
    }
    let bytes = std::fs::read(f).map_err(|e| format!("cannot read the rule file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Checks rule files as `--check-rules` does: every finding, or how many rules they hold.
pub fn check(opts: &Options) -> Result<usize, Vec<Finding>> {
    let src = sources(opts)?;
    load::load(&src).map(|r| r.len())
}

impl Rules {
    /// Loads the rule set, or fails with every finding (one per line).
    pub fn new(opts: Options) -> Result<Rules, Vec<Finding>> {
        let loaded = load::load_all(&sources(&opts)?)?;
        let mut r = Rules {
            opts,
            ..Rules::default()
        };
        r.install(loaded);
        Ok(r)
    }

    fn install(&mut self, loaded: load::Loaded) {
        let rules = loaded.rules;
        self.exclude = loaded.exclude;
        let mut by_type = vec![Vec::new(); EVENT_TYPES.len()];
        for (i, r) in rules.iter().enumerate() {
            for &t in &r.types {
                by_type[t].push(i as u32);
            }
        }
        self.counts.loaded = rules.len() as u64;
        self.rules = rules;
        self.by_type = by_type;
    }

    /// Re-reads every rule file (`SIGHUP`). On any finding the running rules stay and the
    /// findings are logged; counted either way.
    pub fn reload(&mut self) -> bool {
        match sources(&self.opts).and_then(|s| load::load_all(&s)) {
            Ok(loaded) => {
                let n = loaded.rules.len();
                self.install(loaded);
                self.counts.reloads += 1;
                log::info!("rules reloaded: {n} rules in use");
                true
            }
            Err(findings) => {
                self.counts.reload_failures += 1;
                log::warn!(
                    "rules not reloaded, the {} rules in use stay: {}",
                    self.rules.len(),
                    findings_text(&findings)
                );
                false
            }
        }
    }

    /// The rules in use.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The alerts the event raises (none for events of a type no rule names).
    pub fn evaluate(&self, ev: &Event, out: &mut Vec<AlertInfo>) {
        let Some(t) = EVENT_TYPES.iter().position(|t| *t == ev.kind) else {
            return;
        };
        let Some(ids) = self.by_type.get(t) else {
            return;
        };
        for &i in ids {
            let Some(r) = self.rules.get(i as usize) else {
                continue;
            };
            if r.cond.eval(ev) {
                out.push(alert(r, ev));
            }
        }
    }
}

/// The alert `r` raises on `ev`.
fn alert(r: &Rule, ev: &Event) -> AlertInfo {
    AlertInfo {
        rule: RuleRef {
            id: r.id.clone(),
            name: r.name.clone(),
            description: r.description.clone(),
            severity: r.severity.word(),
            ruleset: r.ruleset.clone(),
        },
        severity: r.severity.number(),
        threat: Threat {
            framework: "MITRE ATT&CK",
            technique: Technique {
                id: r.techniques.clone(),
            },
        },
        trigger: Trigger {
            seq: ev.seq,
            kind: ev.kind,
            fields: r.reads.iter().map(|f| (f.name(), f.to_json(ev))).collect(),
        },
    }
}

/// Findings, one per line.
pub fn findings_text(f: &[Finding]) -> String {
    f.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;

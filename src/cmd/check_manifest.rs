//! `check-manifest FILE...`: reads Kubernetes YAML (multi-document) and reports every deployment
//! mistake the LinuxGuard documentation warns about, with file, document and path, and the fix.

use std::fmt;
use std::io::Read;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use crate::cli::Args;
use crate::cmd::yaml_limits::{
    self, MAX_ALIASES, MAX_DEPTH, MAX_DOCUMENTS, MAX_EXPANDED_NODES, Over,
};
use crate::config::Config;
use crate::error::{Context, Error, Kind, Result};

/// Manifests bigger than this are refused (a manifest is kilobytes; this bounds the read).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

const TOKEN: &str = "LINUXGUARD_ENROLL_TOKEN";
const API_KEY: &str = "LINUXGUARD_API_KEY";
const NODE: &str = "LINUXGUARD_NODE_NAME";
const UID: &str = "LINUXGUARD_POD_UID";
/// Programs that would sit in front of the agent: shells, and init wrappers that fork it.
const WRAPPERS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "ash",
    "zsh",
    "ksh",
    "busybox",
    "tini",
    "dumb-init",
];

/// One mistake: where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file as named on the command line.
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// Dotted path inside the document, e.g. `spec.template.spec.containers[0].env[3]`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {}: {}: {}",
            self.file, self.document, self.path, self.message
        )
    }
}

pub fn run(_cfg: Config, args: &Args) -> Result<()> {
    if args.files.is_empty() {
        return Err(Error::usage(
            "check-manifest needs at least one FILE: linuxguard-agent check-manifest deploy/kubernetes/*.yaml",
        ));
    }
    // Read and parse everything first, so a broken file fails before any output.
    let mut parsed = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let text = read_bounded(path)?;
        let name = path.display().to_string();
        let docs = parse(&name, &text)?;
        parsed.push((name, docs));
    }
    let mut findings = Vec::new();
    let mut documents = 0;
    for (name, docs) in &parsed {
        documents += docs.len();
        findings.extend(check_docs(name, docs));
    }
    for f in &findings {
        println!("{f}");
    }
    if findings.is_empty() {
        println!(
            "check-manifest: no problems found in {documents} document(s) of {} file(s)",
            parsed.len()
        );
        return Ok(());
    }
    Err(Error::new(
        Kind::Findings,
        format!(
            "{} problem(s) found in {} file(s); each line above says what to change",
            findings.len(),
            parsed.len()
        ),
    ))
}

fn read_bounded(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; only regular files
    // are read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .with_context(Kind::Runtime, || {
            format!("failed to open `{}`", path.display())
        })?;
    let md = file.metadata().with_context(Kind::Runtime, || {
        format!("failed to inspect `{}`", path.display())
    })?;
    if !md.is_file() {
        return Err(Error::config(format!(
            "`{}` is not a regular file ({}); pass Kubernetes YAML files",
            path.display(),
            file_kind(&md)
        )));
    }
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .with_context(Kind::Runtime, || {
            format!("failed to read `{}`", path.display())
        })?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::config(format!(
            "`{}` is larger than {} MiB; that is not a Kubernetes manifest",
            path.display(),
            MAX_FILE_BYTES >> 20
        )));
    }
    String::from_utf8(buf).map_err(|_| {
        Error::config(format!(
            "`{}` is not UTF-8 text; pass Kubernetes YAML files",
            path.display()
        ))
    })
}

/// Parses a (multi-document) YAML text; a syntax error is a configuration error naming the spot.
pub fn parse(name: &str, text: &str) -> Result<Vec<Yaml>> {
    // yaml-rust2's loader expands every alias by cloning the anchored node, with no limit (ten
    // nested levels of ten aliases are a few hundred bytes and 10^10 nodes), and building,
    // cloning, dropping and checking the tree recurse once per nesting level (5,000 levels of
    // `- ` overflow the stack). Measure on the event stream first (linear, no recursion) and
    // refuse before loading.
    let shape = yaml_limits::measure(text);
    if let Some(over) = shape.over() {
        let what = match over {
            Over::Documents => format!(
                "has more than {MAX_DOCUMENTS} YAML documents (`---`), more than any Kubernetes manifest file holds; split it into several files"
            ),
            Over::Depth => format!(
                "nests YAML collections (or aliases of them) more than {MAX_DEPTH} levels deep, deeper than any Kubernetes object; \
                 check the indentation (a run of `- ` or of ever-deeper keys)"
            ),
            Over::Aliases => format!(
                "uses more than {MAX_ALIASES} YAML aliases (`*name`), more than any Kubernetes manifest needs; expand the anchors and \
                 aliases (kubectl apply --dry-run=client -o yaml -f {name} prints the expanded objects) and check that output"
            ),
            Over::Nodes if shape.aliases == 0 => format!(
                "has more than {MAX_EXPANDED_NODES} YAML nodes, more than any Kubernetes manifest file; split it into several files"
            ),
            Over::Nodes => format!(
                "has YAML aliases (`*name`, {} of them) that expand to more than {MAX_EXPANDED_NODES} nodes, more than any \
                 Kubernetes manifest needs; expand the anchors and aliases (kubectl apply --dry-run=client -o yaml -f {name} \
                 prints the expanded objects) and check that output",
                shape.aliases
            ),
        };
        return Err(Error::config(format!("`{name}` {what}")));
    }
    YamlLoader::load_from_str(text).map_err(|e| {
        Error::config(format!(
            "`{name}` is not valid YAML: {e}; fix the syntax (kubectl apply --dry-run=client -f {name} shows the same spot)"
        ))
    })
}

/// What a non-regular file is, for the error message.
fn file_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Checks every document of one file.
pub fn check_docs(name: &str, docs: &[Yaml]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let mut c = Checker {
            file: name,
            document: i + 1,
            out: &mut out,
        };
        c.object(doc, "");
    }
    out
}

/// Checks a YAML text (unit tests).
#[cfg(test)]
pub fn check_str(name: &str, text: &str) -> Result<Vec<Finding>> {
    Ok(check_docs(name, &parse(name, text)?))
}

struct Checker<'a> {
    file: &'a str,
    document: usize,
    out: &'a mut Vec<Finding>,
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

fn str_of(y: &Yaml) -> Option<&str> {
    y.as_str()
}

/// A scalar as text (numbers and booleans too: `value: 12345` is still a literal).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

impl Checker<'_> {
    fn report(&mut self, path: String, message: impl Into<String>) {
        self.out.push(Finding {
            file: self.file.to_string(),
            document: self.document,
            path,
            message: message.into(),
        });
    }

    /// One Kubernetes object at `at` (a document, or an item of a `List`).
    fn object(&mut self, obj: &Yaml, at: &str) {
        let kind = str_of(&obj["kind"]).unwrap_or("");
        match kind {
            "List" => {
                for (i, item) in list(&obj["items"]).iter().enumerate() {
                    self.object(item, &join(at, &format!("items[{i}]")));
                }
            }
            "Pod" => self.pod(&obj["spec"], &join(at, "spec")),
            "Deployment"
            | "DaemonSet"
            | "StatefulSet"
            | "ReplicaSet"
            | "Job"
            | "ReplicationController" => self.pod(
                &obj["spec"]["template"]["spec"],
                &join(at, "spec.template.spec"),
            ),
            "CronJob" => self.pod(
                &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                &join(at, "spec.jobTemplate.spec.template.spec"),
            ),
            "PodTemplate" => self.pod(&obj["template"]["spec"], &join(at, "template.spec")),
            "ConfigMap" => self.config_map(obj, at),
            _ => {}
        }
    }

    fn config_map(&mut self, obj: &Yaml, at: &str) {
        let Some(data) = obj["data"].as_hash() else {
            return;
        };
        for (k, v) in data {
            let (Some(key), value) = (str_of(k), scalar(v).unwrap_or_default()) else {
                continue;
            };
            let path = join(at, &format!("data.{key}"));
            if key == TOKEN || key == API_KEY {
                self.report(
                    path,
                    format!(
                        "{key} is stored in a ConfigMap: ConfigMaps are not secret (readable by anyone who can read the namespace's config); \
                         put it in a Secret and reference it with env.valueFrom.secretKeyRef"
                    ),
                );
            } else if key == NODE || key == UID {
                self.report(path, hardcoded_identity(key));
            } else if mentions_literal_secret(&value) {
                self.report(
                    path,
                    "this ConfigMap value carries an enrolment token or API key (LINUXGUARD_ENROLL_TOKEN=... or --enroll-token); \
                     ConfigMaps are not secret: move it to a Secret referenced with env.valueFrom.secretKeyRef",
                );
            }
        }
    }

    fn pod(&mut self, spec: &Yaml, at: &str) {
        if spec.as_hash().is_none() {
            return;
        }
        let mut agent_pod = false;
        for field in ["initContainers", "containers", "ephemeralContainers"] {
            for (i, c) in list(&spec[field]).iter().enumerate() {
                let cpath = format!("{at}.{field}[{i}]");
                let agent = is_agent_container(c);
                agent_pod |= agent;
                self.container(c, &cpath, agent);
            }
        }
        if agent_pod {
            match str_of(&spec["os"]["name"]) {
                Some("linux") => {}
                Some(other) => self.report(
                    format!("{at}.os.name"),
                    format!(
                        "the agent pod declares os.name {other:?}; the agent runs on Linux only: set spec.os.name: linux \
                         (and nodeSelector kubernetes.io/os: linux)"
                    ),
                ),
                None => self.report(
                    format!("{at}.os"),
                    "the agent pod does not declare its OS: add `os: {name: linux}` to the pod spec (and nodeSelector \
                     kubernetes.io/os: linux) so it is never scheduled on a Windows node and Pod Security applies the Linux rules",
                ),
            }
        }
    }

    fn container(&mut self, c: &Yaml, at: &str, agent: bool) {
        // Environment variables.
        let mut node_at = None;
        let mut uid_at = None;
        for (i, e) in list(&c["env"]).iter().enumerate() {
            let Some(name) = str_of(&e["name"]) else {
                continue;
            };
            let epath = format!("{at}.env[{i}]");
            let literal = scalar(&e["value"]).filter(|v| !v.is_empty() && !is_var_ref(v));
            let field = str_of(&e["valueFrom"]["fieldRef"]["fieldPath"]);
            match name {
                TOKEN | API_KEY => {
                    if literal.is_some() {
                        self.report(
                            epath,
                            format!(
                                "{name} has a literal value in the manifest: anyone who can read the manifest (git, kubectl get -o yaml) \
                                 has the secret; create a Secret and use `valueFrom: {{secretKeyRef: {{name: linuxguard-enroll, key: {name}}}}}`"
                            ),
                        );
                    } else if !e["valueFrom"]["configMapKeyRef"].is_badvalue() {
                        self.report(
                            epath,
                            format!(
                                "{name} comes from a ConfigMap (configMapKeyRef): ConfigMaps are not secret; \
                                 store it in a Secret and use valueFrom.secretKeyRef"
                            ),
                        );
                    }
                }
                NODE => {
                    node_at = Some(epath.clone());
                    if literal.is_some() {
                        self.report(epath, hardcoded_identity(NODE));
                    } else if let Some(f) = field.filter(|f| *f != "spec.nodeName") {
                        self.report(
                            epath,
                            format!(
                                "{NODE} comes from fieldPath {f:?}; it must be the node's name: fieldRef fieldPath spec.nodeName"
                            ),
                        );
                    }
                }
                UID => {
                    uid_at = Some(epath.clone());
                    if literal.is_some() {
                        self.report(epath, hardcoded_identity(UID));
                    } else if field == Some("metadata.name") {
                        self.report(
                            epath,
                            format!(
                                "{UID} comes from metadata.name where metadata.uid belongs: a pod name is reused when a \
                                 StatefulSet pod or a static pod is recreated, so two pods would share one identity; \
                                 use fieldRef fieldPath metadata.uid"
                            ),
                        );
                    } else if let Some(f) = field.filter(|f| *f != "metadata.uid") {
                        self.report(
                            epath,
                            format!("{UID} comes from fieldPath {f:?}; use fieldRef fieldPath metadata.uid"),
                        );
                    }
                }
                _ => {}
            }
        }
        match (&node_at, &uid_at) {
            (Some(p), None) => self.report(
                format!("{at}.env"),
                format!(
                    "{NODE} is set (at {}) but {UID} is not: the workload id needs both Downward API variables; add \
                     `{{name: {UID}, valueFrom: {{fieldRef: {{fieldPath: metadata.uid}}}}}}` to env",
                    tail(p)
                ),
            ),
            (None, Some(p)) => self.report(
                format!("{at}.env"),
                format!(
                    "{UID} is set (at {}) but {NODE} is not: the workload id needs both Downward API variables; add \
                     `{{name: {NODE}, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}` to env",
                    tail(p)
                ),
            ),
            _ => {}
        }

        // Command line: secrets on it, and shell wrappers in front of the agent.
        let argv: Vec<(String, String)> = ["command", "args"]
            .iter()
            .flat_map(|field| {
                list(&c[*field])
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, a)| scalar(a).map(|s| (format!("{at}.{field}[{i}]"), s)))
            })
            .collect();
        for (path, a) in &argv {
            if let Some(flag) = secret_flag(a) {
                self.report(
                    path.clone(),
                    format!(
                        "{flag} on the command line: the secret is visible in the manifest and in /proc/PID/cmdline of the \
                         container; remove it and set {} from a Secret with env.valueFrom.secretKeyRef",
                        if flag == "--api-key" { API_KEY } else { TOKEN }
                    ),
                );
            } else if mentions_literal_secret(a) {
                self.report(
                    path.clone(),
                    "a literal LINUXGUARD_ENROLL_TOKEN/LINUXGUARD_API_KEY assignment on the command line: remove it and set \
                     the variable from a Secret with env.valueFrom.secretKeyRef",
                );
            }
        }
        if let Some((first_path, first)) = argv.first() {
            let base = first.rsplit('/').next().unwrap_or(first);
            let runs_agent = argv.iter().any(|(_, a)| a.contains("linuxguard-agent"));
            if WRAPPERS.contains(&base) && (runs_agent || agent) {
                let field = if first_path.contains(".command[") {
                    "command"
                } else {
                    "args"
                };
                self.report(
                    format!("{at}.{field}"),
                    format!(
                        "`{first}` runs in front of the agent: it holds the token in its own environment for as long as it \
                         runs and can fork before the agent scrubs it (a shell also swallows signals); run the binary directly: \
                         `command: [\"/usr/local/bin/linuxguard-agent\"]`, `args: [\"start\"]` (the image has no shell)"
                    ),
                );
            }
        }

        // Privileged mode for the agent.
        if agent && c["securityContext"]["privileged"].as_bool() == Some(true) {
            self.report(
                format!("{at}.securityContext.privileged"),
                "privileged: true gives the agent every capability and every device; it needs only a few: set \
                 privileged: false and `capabilities: {drop: [ALL], add: [BPF, PERFMON, SYS_PTRACE]}` \
                 (see docs/deploy.md for why each)",
            );
        }
    }
}

/// The agent container: its image, its command line or its LINUXGUARD_* environment says so.
fn is_agent_container(c: &Yaml) -> bool {
    let image = str_of(&c["image"]).unwrap_or("");
    if image.contains("linuxguard") {
        return true;
    }
    let cmdline = ["command", "args"]
        .iter()
        .flat_map(|f| list(&c[*f]))
        .filter_map(str_of)
        .any(|a| a.contains("linuxguard-agent"));
    if cmdline {
        return true;
    }
    list(&c["env"])
        .iter()
        .filter_map(|e| str_of(&e["name"]))
        .any(|n| matches!(n, TOKEN | API_KEY | NODE | UID))
}

fn hardcoded_identity(name: &str) -> String {
    let (field, why) = if name == NODE {
        (
            "spec.nodeName",
            "every pod of a DaemonSet or Deployment would claim that one node",
        )
    } else {
        (
            "metadata.uid",
            "every replica would share one workload id and the backend would see them as one agent",
        )
    };
    format!(
        "{name} is hard-coded: {why}; set it with the Downward API: `valueFrom: {{fieldRef: {{fieldPath: {field}}}}}`"
    )
}

/// `$(VAR)`: Kubernetes dependent-variable expansion, not a literal.
fn is_var_ref(v: &str) -> bool {
    v.starts_with("$(") && v.ends_with(')') && !v[2..v.len() - 1].contains(['(', ')'])
}

/// `--enroll-token`, `--enroll-token=...`, `--api-key`, `--api-key=...` (the secret flags).
fn secret_flag(a: &str) -> Option<&'static str> {
    ["--enroll-token", "--api-key"].into_iter().find(|f| {
        a == *f
            || a.strip_prefix(f).is_some_and(|r| r.starts_with('='))
            || a.split_whitespace()
                .any(|w| w == *f || w.starts_with(&format!("{f}=")))
    })
}

/// `LINUXGUARD_ENROLL_TOKEN=<something>` (or the API key) or a secret flag inside a text.
fn mentions_literal_secret(text: &str) -> bool {
    if secret_flag(text).is_some() {
        return true;
    }
    [TOKEN, API_KEY].iter().any(|name| {
        text.match_indices(name).any(|(i, _)| {
            let rest = &text[i + name.len()..];
            rest.strip_prefix('=')
                .or_else(|| rest.strip_prefix(": "))
                .is_some_and(|v| {
                    let v = v.trim_start_matches(['"', '\'']);
                    !v.is_empty() && !v.starts_with(['"', '\'', '\n', ' ']) && !v.starts_with("$(")
                })
        })
    })
}

/// The last path segment, for messages (`env[3]`).
fn tail(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: linuxguard-agent}
spec:
  template:
    spec:
      os: {name: linux}
      containers:
      - name: agent
        image: ghcr.io/example/linuxguard-agent:0.1.0
        args: ["start"]
        env:
        - name: LINUXGUARD_NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: LINUXGUARD_POD_UID
          valueFrom: {fieldRef: {fieldPath: metadata.uid}}
        - name: LINUXGUARD_ENROLL_TOKEN
          valueFrom: {secretKeyRef: {name: linuxguard-enroll, key: LINUXGUARD_ENROLL_TOKEN}}
        securityContext:
          privileged: false
          capabilities: {drop: [ALL], add: [BPF, PERFMON]}
"#;

    fn findings(text: &str) -> Vec<Finding> {
        check_str("m.yaml", text).expect("valid yaml")
    }

    fn one(text: &str) -> Finding {
        let f = findings(text);
        assert_eq!(f.len(), 1, "expected one finding, got {f:#?}");
        f.into_iter().next().expect("invariant: one finding")
    }

    #[test]
    fn good_daemonset_passes() {
        assert_eq!(findings(GOOD), vec![]);
    }

    #[test]
    fn literal_token_in_env() {
        let bad = GOOD.replace(
            "valueFrom: {secretKeyRef: {name: linuxguard-enroll, key: LINUXGUARD_ENROLL_TOKEN}}",
            "value: ABCDEF123456",
        );
        let f = one(&bad);
        assert_eq!(f.path, "spec.template.spec.containers[0].env[2]");
        assert!(f.message.contains("literal value"), "{}", f.message);
        assert!(f.message.contains("secretKeyRef"));
        assert!(
            !f.to_string().contains("ABCDEF123456"),
            "the secret is never echoed"
        );
        assert_eq!(
            f.to_string(),
            format!(
                "m.yaml: document 1: spec.template.spec.containers[0].env[2]: {}",
                f.message
            )
        );
    }

    #[test]
    fn numeric_literal_token_is_still_literal() {
        let bad = GOOD.replace(
            "valueFrom: {secretKeyRef: {name: linuxguard-enroll, key: LINUXGUARD_ENROLL_TOKEN}}",
            "value: 123456",
        );
        assert!(one(&bad).message.contains("literal value"));
    }

    #[test]
    fn token_flag_in_args_and_command() {
        let f = one(&GOOD.replace(
            r#"args: ["start"]"#,
            r#"args: ["start", "--enroll-token=abc"]"#,
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].args[1]");
        let f = one(&GOOD.replace(
            r#"args: ["start"]"#,
            r#"command: ["/usr/local/bin/linuxguard-agent", "start", "--enroll-token", "abc"]"#,
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].command[2]");
        assert!(f.message.contains("--enroll-token"));
    }

    #[test]
    fn token_in_config_map() {
        let f = one("kind: ConfigMap\ndata:\n  LINUXGUARD_ENROLL_TOKEN: abc\n");
        assert_eq!(f.path, "data.LINUXGUARD_ENROLL_TOKEN");
        let f = one("kind: ConfigMap\ndata:\n  agent.env: |\n    LINUXGUARD_ENROLL_TOKEN=abc\n");
        assert_eq!(f.path, "data.agent.env");
        assert_eq!(
            findings("kind: ConfigMap\ndata:\n  note: set LINUXGUARD_ENROLL_TOKEN from a Secret\n"),
            vec![]
        );
    }

    #[test]
    fn hardcoded_identity_and_wrong_field() {
        let f = one(&GOOD.replace(
            "valueFrom: {fieldRef: {fieldPath: spec.nodeName}}",
            "value: worker-1",
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].env[0]");
        assert!(f.message.contains("hard-coded"));
        let f = one(&GOOD.replace("fieldPath: metadata.uid", "fieldPath: metadata.name"));
        assert_eq!(f.path, "spec.template.spec.containers[0].env[1]");
        assert!(
            f.message
                .contains("metadata.name where metadata.uid belongs")
        );
    }

    #[test]
    fn only_one_downward_variable() {
        let bad = GOOD.replace(
            "        - name: LINUXGUARD_POD_UID\n          valueFrom: {fieldRef: {fieldPath: metadata.uid}}\n",
            "",
        );
        let f = one(&bad);
        assert_eq!(f.path, "spec.template.spec.containers[0].env");
        assert!(
            f.message.contains("LINUXGUARD_POD_UID is not"),
            "{}",
            f.message
        );
    }

    #[test]
    fn shell_wrapper() {
        let f = one(&GOOD.replace(
            r#"args: ["start"]"#,
            r#"command: ["/bin/sh", "-c", "exec linuxguard-agent start"]"#,
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].command");
        assert!(
            f.message.contains("`/bin/sh` runs in front of the agent"),
            "{}",
            f.message
        );
        let f = one(&GOOD.replace(
            r#"args: ["start"]"#,
            r#"command: ["/usr/bin/tini", "--", "/usr/local/bin/linuxguard-agent", "start"]"#,
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].command");
        // A shell in an unrelated container is not our business.
        let other = "kind: Pod\nspec:\n  containers:\n  - name: app\n    image: busybox\n    command: [sh, -c, 'sleep 1']\n";
        assert_eq!(findings(other), vec![]);
    }

    #[test]
    fn missing_or_wrong_os() {
        let f = one(&GOOD.replace("      os: {name: linux}\n", ""));
        assert_eq!(f.path, "spec.template.spec.os");
        let f = one(&GOOD.replace("os: {name: linux}", "os: {name: windows}"));
        assert_eq!(f.path, "spec.template.spec.os.name");
    }

    #[test]
    fn privileged_agent() {
        let f = one(&GOOD.replace("privileged: false", "privileged: true"));
        assert_eq!(
            f.path,
            "spec.template.spec.containers[0].securityContext.privileged"
        );
        assert!(f.message.contains("BPF"));
    }

    #[test]
    fn every_workload_kind_is_walked() {
        let pod = "kind: Pod\nspec:\n  containers:\n  - image: linuxguard-agent\n";
        assert_eq!(one(pod).path, "spec.os");
        let cron = "kind: CronJob\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - image: linuxguard-agent\n";
        assert_eq!(one(cron).path, "spec.jobTemplate.spec.template.spec.os");
        for kind in ["Deployment", "StatefulSet", "Job"] {
            let t = format!(
                "kind: {kind}\nspec:\n  template:\n    spec:\n      containers:\n      - image: linuxguard-agent\n"
            );
            assert_eq!(one(&t).path, "spec.template.spec.os", "{kind}");
        }
        let l = "kind: List\nitems:\n- kind: Pod\n  spec:\n    containers:\n    - image: x/linuxguard-agent\n";
        assert_eq!(one(l).path, "items[0].spec.os");
    }

    #[test]
    fn native_sidecar_in_init_containers_is_checked() {
        let sidecar = GOOD
            .replace("      containers:\n", "      initContainers:\n")
            .replace("privileged: false", "privileged: true");
        let f = one(&sidecar);
        assert_eq!(
            f.path,
            "spec.template.spec.initContainers[0].securityContext.privileged"
        );
    }

    #[test]
    fn token_from_config_map_key_ref() {
        let f = one(&GOOD.replace(
            "secretKeyRef: {name: linuxguard-enroll, key: LINUXGUARD_ENROLL_TOKEN}",
            "configMapKeyRef: {name: linuxguard, key: token}",
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].env[2]");
        assert!(f.message.contains("configMapKeyRef"));
    }

    #[test]
    fn api_key_literal_is_caught_like_the_token() {
        let bad = GOOD.replace(
            "        - name: LINUXGUARD_ENROLL_TOKEN\n          valueFrom: {secretKeyRef: {name: linuxguard-enroll, key: LINUXGUARD_ENROLL_TOKEN}}\n",
            "        - name: LINUXGUARD_API_KEY\n          value: k3y\n",
        );
        let f = one(&bad);
        assert!(
            f.message
                .starts_with("LINUXGUARD_API_KEY has a literal value"),
            "{}",
            f.message
        );
    }

    #[test]
    fn document_index_counts_from_one() {
        let text = format!(
            "kind: Service\n---\n{}",
            GOOD.replace("privileged: false", "privileged: true")
        );
        let f = one(&text);
        assert_eq!(f.document, 2);
    }

    #[test]
    fn invalid_yaml_is_a_config_error() {
        let e = check_str("x.yaml", "a: [1, 2\nb: }").expect_err("invalid");
        assert_eq!(e.kind(), Kind::Config);
        assert!(e.to_string().contains("x.yaml"));
        // Odd but valid shapes never panic.
        for t in [
            "",
            "42",
            "kind: Pod",
            "kind: Pod\nspec: 3",
            "kind: DaemonSet\nspec:\n  template: []",
            "kind: Pod\nspec:\n  containers: [1, {env: 2}, {env: [3, {name: 4}]}]",
        ] {
            let _ = findings(t);
        }
    }

    /// Ten levels of ten aliases: a few hundred bytes, 10^10 nodes once expanded.
    fn alias_bomb() -> String {
        let mut t = String::from(
            "a: &a [\"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\"]\n",
        );
        let mut prev = 'a';
        for c in "bcdefghij".chars() {
            t.push_str(&format!(
                "{c}: &{c} [{}]\n",
                vec![format!("*{prev}"); 10].join(",")
            ));
            prev = c;
        }
        t
    }

    #[test]
    fn alias_bomb_is_refused_before_expansion() {
        let text = alias_bomb();
        assert!(text.len() < 1024, "{}", text.len());
        let started = std::time::Instant::now();
        let e = check_str("bomb.yaml", &text).expect_err("bomb");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(e.kind(), Kind::Config);
        let msg = e.to_string();
        assert!(msg.contains("`bomb.yaml`"), "{msg}");
        assert!(msg.contains("alias"), "{msg}");
        assert!(msg.contains("expand"), "{msg}");
    }

    #[test]
    fn many_plain_aliases_are_refused_and_a_few_pass() {
        let many = format!("a: &a x\nb: [{}]\n", vec!["*a"; 1001].join(","));
        let e = check_str("many.yaml", &many).expect_err("too many aliases");
        assert!(e.to_string().contains("more than 1000 YAML aliases"), "{e}");
        // Ordinary anchor use (a shared env block) still loads and is checked.
        let ok = "kind: Pod\nspec:\n  os: &os {name: linux}\n  containers:\n  - name: a\n    env: &env [{name: A, value: b}]\n  - name: b\n    env: *env\n";
        assert!(check_str("ok.yaml", ok).is_ok());
        assert_eq!(yaml_limits::measure(ok).aliases, 1);
    }

    #[test]
    fn var_refs_are_not_literals() {
        assert!(is_var_ref("$(TOKEN)"));
        assert!(!is_var_ref("abc"));
        assert!(mentions_literal_secret("LINUXGUARD_ENROLL_TOKEN=abc"));
        assert!(!mentions_literal_secret("LINUXGUARD_ENROLL_TOKEN=$(X)"));
        assert!(!mentions_literal_secret("LINUXGUARD_ENROLL_TOKEN"));
    }
}

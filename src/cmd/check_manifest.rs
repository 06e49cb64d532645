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
use crate::config::{Config, Key};
use crate::error::{Context, Error, Kind, Result};
use crate::files::file_kind;

/// Manifests bigger than this are refused (a manifest is kilobytes; this bounds the read).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

const TOKEN: &str = "LINUXGUARD_ENROLL_TOKEN";
const API_KEY: &str = "LINUXGUARD_API_KEY";
/// The node-name variable unless --node-name-env names another.
const NODE: &str = "LINUXGUARD_NODE_NAME";
const UID: &str = "LINUXGUARD_POD_UID";
const NODE_NAME_ENV: &str = "LINUXGUARD_NODE_NAME_ENV";
/// How deep a directory argument is walked for YAML files.
const MAX_DIR_DEPTH: usize = 16;
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

pub fn run(cfg: Config, args: &Args) -> Result<()> {
    if args.files.is_empty() {
        return Err(Error::usage(
            "check-manifest needs at least one FILE or DIR: linuxguard-agent check-manifest deploy/kubernetes/",
        ));
    }
    // A directory stands for the .yaml/.yml files below it.
    let mut files = Vec::new();
    for path in &args.files {
        if path.is_dir() {
            let before = files.len();
            yaml_files_below(path, 0, &mut files)?;
            if files.len() == before {
                return Err(Error::config(format!(
                    "`{}` holds no .yaml or .yml files; pass the Kubernetes manifests",
                    path.display()
                )));
            }
        } else {
            files.push(path.clone());
        }
    }
    // Read and parse everything first, so a broken file fails before any output.
    let mut parsed = Vec::with_capacity(files.len());
    for path in &files {
        let text = read_bounded(path)?;
        let name = path.display().to_string();
        let docs = parse(&name, &text)?;
        parsed.push((name, docs));
    }
    let node_var = cfg.get(Key::NodeNameEnv).unwrap_or(NODE).to_string();
    let ctx = Ctx::new(node_var, parsed.iter().flat_map(|(_, d)| d));
    let mut findings = Vec::new();
    let mut documents = 0;
    for (name, docs) in &parsed {
        documents += docs.len();
        findings.extend(check_docs(name, docs, &ctx));
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

/// The `.yaml`/`.yml` files below `dir`, sorted, recursively (symbolic links to directories are
/// not followed, so a link loop cannot recurse).
fn yaml_files_below(dir: &Path, depth: usize, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    if depth > MAX_DIR_DEPTH {
        return Ok(());
    }
    let read = std::fs::read_dir(dir).with_context(Kind::Runtime, || {
        format!("failed to read directory `{}`", dir.display())
    })?;
    let mut entries: Vec<_> = read.filter_map(std::result::Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            yaml_files_below(&path, depth + 1, out)?;
        } else if path.is_file() && path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
    Ok(())
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

/// Which identity variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ident {
    Node,
    Uid,
}

impl Ident {
    /// The Downward API field it comes from.
    fn field(self) -> &'static str {
        match self {
            Ident::Node => "spec.nodeName",
            Ident::Uid => "metadata.uid",
        }
    }
    /// What one shared value would do.
    fn why(self) -> &'static str {
        match self {
            Ident::Node => "every pod of a DaemonSet or Deployment would claim that one node",
            Ident::Uid => {
                "every replica would share one workload id and the backend would see them as one agent"
            }
        }
    }
}

/// A ConfigMap or Secret among the files checked (for `envFrom`).
#[derive(Debug)]
struct EnvSource {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    keys: Vec<String>,
}

/// What every document is checked against: the node-name variable (--node-name-env) and the
/// ConfigMaps and Secrets of all files.
pub struct Ctx {
    node_var: String,
    sources: Vec<EnvSource>,
}

impl Ctx {
    fn new<'a>(node_var: String, docs: impl Iterator<Item = &'a Yaml>) -> Ctx {
        fn collect(obj: &Yaml, out: &mut Vec<EnvSource>) {
            let kind = match str_of(&obj["kind"]) {
                Some("List") => {
                    for item in list(&obj["items"]) {
                        collect(item, out);
                    }
                    return;
                }
                Some("ConfigMap") => "ConfigMap",
                Some("Secret") => "Secret",
                _ => return,
            };
            let Some(name) = str_of(&obj["metadata"]["name"]) else {
                return;
            };
            let fields: &[&str] = if kind == "ConfigMap" {
                &["data", "binaryData"]
            } else {
                &["data", "stringData"]
            };
            let keys = fields
                .iter()
                .filter_map(|f| obj[*f].as_hash())
                .flat_map(|h| h.keys().filter_map(str_of).map(str::to_string))
                .collect();
            out.push(EnvSource {
                kind,
                namespace: str_of(&obj["metadata"]["namespace"]).map(str::to_string),
                name: name.to_string(),
                keys,
            });
        }
        let mut sources = Vec::new();
        for d in docs {
            collect(d, &mut sources);
        }
        Ctx { node_var, sources }
    }

    /// The source `kind`/`name` in `namespace` (an unset namespace matches any).
    fn source(&self, kind: &str, name: &str, namespace: Option<&str>) -> Option<&EnvSource> {
        self.sources.iter().find(|s| {
            s.kind == kind
                && s.name == name
                && (s.namespace.is_none()
                    || namespace.is_none()
                    || s.namespace.as_deref() == namespace)
        })
    }
}

/// Checks every document of one file.
pub fn check_docs(name: &str, docs: &[Yaml], ctx: &Ctx) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let mut c = Checker {
            file: name,
            document: i + 1,
            out: &mut out,
            ctx,
            namespace: None,
        };
        c.object(doc, "");
    }
    out
}

/// Checks a YAML text (unit tests), with the default node-name variable or `node_var`.
#[cfg(test)]
pub fn check_str_with(name: &str, text: &str, node_var: &str) -> Result<Vec<Finding>> {
    let docs = parse(name, text)?;
    let ctx = Ctx::new(node_var.to_string(), docs.iter());
    Ok(check_docs(name, &docs, &ctx))
}

/// Checks a YAML text (unit tests).
#[cfg(test)]
pub fn check_str(name: &str, text: &str) -> Result<Vec<Finding>> {
    check_str_with(name, text, NODE)
}

struct Checker<'a> {
    file: &'a str,
    document: usize,
    out: &'a mut Vec<Finding>,
    ctx: &'a Ctx,
    /// The namespace of the object being checked, if it names one.
    namespace: Option<String>,
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
        self.namespace = str_of(&obj["metadata"]["namespace"]).map(str::to_string);
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
            } else if key == NODE {
                self.report(path, hardcoded_identity(key, Ident::Node));
            } else if key == UID {
                self.report(path, hardcoded_identity(key, Ident::Uid));
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
        // Environment variables. The identity variables count in the agent's container only
        // (any container that sets LINUXGUARD_NODE_NAME or LINUXGUARD_POD_UID is one); the node
        // name's variable is the container's own --node-name-env, else check-manifest's.
        let node_var = container_node_var(c).unwrap_or_else(|| self.ctx.node_var.clone());
        let mut node_at = None;
        let mut uid_at = None;
        for (i, e) in list(&c["env"]).iter().enumerate() {
            let Some(name) = str_of(&e["name"]) else {
                continue;
            };
            let epath = format!("{at}.env[{i}]");
            let literal = scalar(&e["value"]).filter(|v| !v.is_empty() && !is_var_ref(v));
            let field = str_of(&e["valueFrom"]["fieldRef"]["fieldPath"]);
            if agent && (name == node_var || name == UID) {
                let ident = if name == UID { Ident::Uid } else { Ident::Node };
                if ident == Ident::Node {
                    node_at = Some(epath.clone());
                } else {
                    uid_at = Some(epath.clone());
                }
                self.identity_env(e, &epath, name, ident, literal.is_some(), field);
                continue;
            }
            if matches!(name, TOKEN | API_KEY) {
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
        }
        // A variable missing from env may come from envFrom (env wins over envFrom).
        let node_via = agent
            && node_at.is_none()
            && self.env_from(c, at, &node_var, Ident::Node, uid_at.is_some());
        let uid_via =
            agent && uid_at.is_none() && self.env_from(c, at, UID, Ident::Uid, node_at.is_some());
        match (&node_at, &uid_at) {
            (Some(p), None) if !uid_via => self.report(
                format!("{at}.env"),
                format!(
                    "{node_var} is set (at {}) but {UID} is not: the workload id needs both Downward API variables; add \
                     `{{name: {UID}, valueFrom: {{fieldRef: {{fieldPath: metadata.uid}}}}}}` to env",
                    tail(p)
                ),
            ),
            (None, Some(p)) if !node_via => self.report(
                format!("{at}.env"),
                format!(
                    "{UID} is set (at {}) but {node_var} is not: the workload id needs both Downward API variables; add \
                     `{{name: {node_var}, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}` to env",
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

impl Checker<'_> {
    /// One env entry of the agent's node name or pod UID: it must come from the Downward API.
    fn identity_env(
        &mut self,
        e: &Yaml,
        epath: &str,
        name: &str,
        ident: Ident,
        literal: bool,
        field: Option<&str>,
    ) {
        let want = ident.field();
        let fix = format!(
            "set it with the Downward API: `valueFrom: {{fieldRef: {{fieldPath: {want}}}}}`"
        );
        let key_ref = |kind: &str| {
            let r = &e["valueFrom"][kind];
            (!r.is_badvalue()).then(|| {
                format!(
                    "{}/{}",
                    str_of(&r["name"]).unwrap_or("?"),
                    str_of(&r["key"]).unwrap_or("?")
                )
            })
        };
        let msg = if literal {
            Some(hardcoded_identity(name, ident))
        } else if let Some(r) = key_ref("configMapKeyRef") {
            Some(format!(
                "{name} comes from a ConfigMap (configMapKeyRef {r}): a ConfigMap holds one value for every pod that reads it, \
                 so {}; {fix}",
                ident.why()
            ))
        } else if let Some(r) = key_ref("secretKeyRef") {
            Some(format!(
                "{name} comes from a Secret (secretKeyRef {r}): a Secret holds one value for every pod that reads it (and \
                 the {} is no secret), so {}; {fix}",
                if ident == Ident::Node {
                    "node name"
                } else {
                    "pod UID"
                },
                ident.why()
            ))
        } else if ident == Ident::Uid && field == Some("metadata.name") {
            Some(format!(
                "{name} comes from metadata.name where metadata.uid belongs: a pod name is reused when a \
                 StatefulSet pod or a static pod is recreated, so two pods would share one identity; \
                 use fieldRef fieldPath metadata.uid"
            ))
        } else {
            field.filter(|f| *f != want).map(|f| match ident {
                Ident::Node => format!(
                    "{name} comes from fieldPath {f:?}; it must be the node's name: fieldRef fieldPath spec.nodeName"
                ),
                Ident::Uid => format!(
                    "{name} comes from fieldPath {f:?}; use fieldRef fieldPath metadata.uid"
                ),
            })
        };
        if let Some(m) = msg {
            self.report(epath.to_string(), m);
        }
    }

    /// `var` is not in the agent container's env: reports, and returns true, when an `envFrom`
    /// source among the files has it, or (when the pair is half set: `other_set`) when a source
    /// not among the files is the only place it could come from.
    fn env_from(&mut self, c: &Yaml, at: &str, var: &str, ident: Ident, other_set: bool) -> bool {
        let want = ident.field();
        let entry = format!("`{{name: {var}, valueFrom: {{fieldRef: {{fieldPath: {want}}}}}}}`");
        let mut unknown = None;
        for (i, ef) in list(&c["envFrom"]).iter().enumerate() {
            let (kind, name) = if let Some(n) = str_of(&ef["configMapRef"]["name"]) {
                ("ConfigMap", n)
            } else if let Some(n) = str_of(&ef["secretRef"]["name"]) {
                ("Secret", n)
            } else {
                continue;
            };
            let prefix = str_of(&ef["prefix"]).unwrap_or("");
            let Some(key) = var.strip_prefix(prefix) else {
                continue;
            };
            let path = format!("{at}.envFrom[{i}]");
            match self.ctx.source(kind, name, self.namespace.as_deref()) {
                Some(src) if src.keys.iter().any(|k| k == key) => {
                    let with_prefix = if prefix.is_empty() {
                        String::new()
                    } else {
                        format!(" with prefix {prefix}")
                    };
                    self.report(
                        path,
                        format!(
                            "{var} comes from {kind} {name:?} (key {key}{with_prefix}) through envFrom: a {kind} holds one value \
                             for every pod that reads it, so {}; add {entry} to env (env takes precedence over envFrom)",
                            ident.why()
                        ),
                    );
                    return true;
                }
                Some(_) => {}
                None => {
                    unknown.get_or_insert((path, kind, name.to_string()));
                }
            }
        }
        match unknown {
            Some((path, kind, name)) if other_set => {
                self.report(
                    path,
                    format!(
                        "{var} is not in env, so it can only come from envFrom ({kind} {name:?}, not among the files checked): \
                         a {kind} holds one value for every pod that reads it, so {}; add {entry} to env \
                         (env takes precedence over envFrom)",
                        ident.why()
                    ),
                );
                true
            }
            _ => false,
        }
    }
}

/// The node-name variable the container's agent reads: its `--node-name-env NAME` (the last
/// one), else a literal `LINUXGUARD_NODE_NAME_ENV` in its env.
fn container_node_var(c: &Yaml) -> Option<String> {
    let argv: Vec<String> = ["command", "args"]
        .iter()
        .flat_map(|f| list(&c[*f]))
        .filter_map(scalar)
        .collect();
    let mut found = None;
    for (i, a) in argv.iter().enumerate() {
        if a == "--node-name-env" {
            found = argv.get(i + 1).cloned().or(found);
        } else if let Some(v) = a.strip_prefix("--node-name-env=") {
            found = Some(v.to_string());
        }
    }
    found.or_else(|| {
        list(&c["env"])
            .iter()
            .find(|e| str_of(&e["name"]) == Some(NODE_NAME_ENV))
            .and_then(|e| scalar(&e["value"]))
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
    })
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

fn hardcoded_identity(name: &str, ident: Ident) -> String {
    format!(
        "{name} is hard-coded: {}; set it with the Downward API: `valueFrom: {{fieldRef: {{fieldPath: {}}}}}`",
        ident.why(),
        ident.field()
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

    const NODE_FR: &str = "        - name: LINUXGUARD_NODE_NAME\n          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}\n";
    const UID_FR: &str = "        - name: LINUXGUARD_POD_UID\n          valueFrom: {fieldRef: {fieldPath: metadata.uid}}\n";

    fn with_env_from(text: &str, env_from: &str) -> String {
        text.replace(
            "        env:\n",
            &format!("        envFrom:\n{env_from}        env:\n"),
        )
    }

    #[test]
    fn identity_from_key_refs_names_the_form_and_the_fix() {
        let f = one(&GOOD.replace(
            "fieldRef: {fieldPath: spec.nodeName}",
            "secretKeyRef: {name: s, key: node}",
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].env[0]");
        assert!(
            f.message
                .starts_with("LINUXGUARD_NODE_NAME comes from a Secret (secretKeyRef s/node)"),
            "{}",
            f.message
        );
        assert!(f.message.contains("fieldPath: spec.nodeName"));
        let f = one(&GOOD.replace(
            "fieldRef: {fieldPath: metadata.uid}",
            "configMapKeyRef: {name: c, key: uid}",
        ));
        assert_eq!(f.path, "spec.template.spec.containers[0].env[1]");
        assert!(
            f.message
                .starts_with("LINUXGUARD_POD_UID comes from a ConfigMap (configMapKeyRef c/uid)"),
            "{}",
            f.message
        );
        assert!(f.message.contains("fieldPath: metadata.uid"));
    }

    #[test]
    fn env_from_sources_among_the_files() {
        // Both variables from one Secret in the same file: one finding each, at envFrom.
        let secret = "kind: Secret\nmetadata: {name: ids}\nstringData:\n  LINUXGUARD_NODE_NAME: w1\n  LINUXGUARD_POD_UID: 7b8f9c1d-3e4a-4b5c-9d6e-1f2a3b4c5d6e\n---\n";
        let ds = with_env_from(
            &GOOD.replace(NODE_FR, "").replace(UID_FR, ""),
            "        - secretRef: {name: ids}\n",
        );
        let f = findings(&format!("{secret}{ds}"));
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(
            f.iter()
                .all(|f| f.path == "spec.template.spec.containers[0].envFrom[0]")
        );
        assert!(f[0].message.starts_with(
            "LINUXGUARD_NODE_NAME comes from Secret \"ids\" (key LINUXGUARD_NODE_NAME)"
        ));
        assert!(
            f[1].message
                .starts_with("LINUXGUARD_POD_UID comes from Secret \"ids\"")
        );
        // env wins over envFrom: with the fieldRef entries present, nothing to report.
        let ds = with_env_from(GOOD, "        - secretRef: {name: ids}\n");
        assert_eq!(findings(&format!("{secret}{ds}")), vec![]);
        // A ConfigMap in another namespace is another ConfigMap.
        let cm = "kind: ConfigMap\nmetadata: {name: ids, namespace: other}\ndata: {LINUXGUARD_NODE_NAME: w1}\n---\n";
        let ds = with_env_from(
            &GOOD.replace(NODE_FR, "").replace(
                "metadata: {name: linuxguard-agent}",
                "metadata: {name: linuxguard-agent, namespace: lg}",
            ),
            "        - configMapRef: {name: ids}\n",
        );
        let f = findings(&format!("{cm}{ds}"));
        // The ConfigMap's own key is still a hard-coded node name; the one in namespace `lg` is
        // not among the files, and the node name can only come from it.
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0].path, "data.LINUXGUARD_NODE_NAME");
        assert_eq!(f[1].path, "spec.template.spec.containers[0].envFrom[0]");
        assert!(
            f[1].message
                .contains("(ConfigMap \"ids\", not among the files checked)"),
            "{}",
            f[1].message
        );
        // A source among the files without the key: the half-set pair is reported as such.
        let cm = "kind: ConfigMap\nmetadata: {name: ids}\ndata: {OTHER: x}\n---\n";
        let ds = with_env_from(
            &GOOD.replace(UID_FR, ""),
            "        - configMapRef: {name: ids}\n",
        );
        let f = findings(&format!("{cm}{ds}"));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].path, "spec.template.spec.containers[0].env");
        // Neither variable in env, the source not among the files: nothing can be said (the
        // agent may use --workload-id).
        let ds = with_env_from(
            &GOOD.replace(NODE_FR, "").replace(UID_FR, ""),
            "        - configMapRef: {name: elsewhere}\n",
        );
        assert_eq!(findings(&ds), vec![]);
    }

    #[test]
    fn node_name_env_follows_the_flag_and_the_container() {
        let custom = GOOD.replace("name: LINUXGUARD_NODE_NAME\n", "name: MY_NODE_NAME\n");
        // check-manifest --node-name-env MY_NODE_NAME: fine.
        assert_eq!(
            check_str_with("m.yaml", &custom, "MY_NODE_NAME").unwrap(),
            vec![]
        );
        // Without: the node name is missing.
        let f = one(&custom);
        assert!(
            f.message.contains("but LINUXGUARD_NODE_NAME is not"),
            "{}",
            f.message
        );
        // The container's own flag or variable names it.
        for how in [
            r#"args: ["start", "--node-name-env", "MY_NODE_NAME"]"#,
            r#"args: ["start", "--node-name-env=MY_NODE_NAME"]"#,
        ] {
            let t = custom.replace(r#"args: ["start"]"#, how);
            assert_eq!(findings(&t), vec![], "{how}");
        }
        let t = custom.replace(
            "        env:\n",
            "        env:\n        - name: LINUXGUARD_NODE_NAME_ENV\n          value: MY_NODE_NAME\n",
        );
        assert_eq!(findings(&t), vec![]);
        // A literal under the custom name is hard-coded, named as configured.
        let t = custom.replace(
            "valueFrom: {fieldRef: {fieldPath: spec.nodeName}}",
            "value: worker-1",
        );
        let f = check_str_with("m.yaml", &t, "MY_NODE_NAME").unwrap();
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].message.starts_with("MY_NODE_NAME is hard-coded"),
            "{}",
            f[0].message
        );
        // In a container that is not the agent's, a variable of that name is not ours.
        let other = "kind: Pod\nspec:\n  containers:\n  - name: app\n    image: busybox\n    env:\n    - {name: MY_NODE_NAME, value: x}\n";
        assert_eq!(
            check_str_with("m.yaml", other, "MY_NODE_NAME").unwrap(),
            vec![]
        );
    }
}

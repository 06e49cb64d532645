//! `check-manifest`: every shipped manifest passes; one bad manifest per documented mistake is
//! caught with its file, document and path; unreadable and invalid input fail cleanly.

use std::path::{Path, PathBuf};

use crate::common::{TempDir, agent, run, stderr, stdout};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read manifest dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_manifest_passes() {
    let files = yaml_files(&repo("deploy/kubernetes"));
    assert!(
        files.len() >= 5,
        "expected the deploy manifests, got {files:?}"
    );
    let out = run(agent().arg("check-manifest").args(&files));
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("no problems found"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn good_fixture_passes() {
    let out = run(agent()
        .arg("check-manifest")
        .arg(repo("tests/manifests/good.yaml")));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

/// (fixture, document, path, words the message must contain)
const BAD: &[(&str, usize, &str, &[&str])] = &[
    (
        "literal-token-env",
        2,
        "spec.template.spec.containers[0].env[3]",
        &["LINUXGUARD_ENROLL_TOKEN", "literal value", "secretKeyRef"],
    ),
    (
        "literal-token-configmap",
        2,
        "data.LINUXGUARD_ENROLL_TOKEN",
        &["ConfigMap", "Secret"],
    ),
    (
        "literal-token-args",
        1,
        "spec.template.spec.containers[0].args[1]",
        &["--enroll-token", "secretKeyRef"],
    ),
    (
        "hardcoded-node-name",
        1,
        "spec.template.spec.containers[0].env[0]",
        &["LINUXGUARD_NODE_NAME", "hard-coded", "spec.nodeName"],
    ),
    (
        "hardcoded-pod-uid",
        1,
        "spec.template.spec.containers[0].env[1]",
        &["LINUXGUARD_POD_UID", "hard-coded", "metadata.uid"],
    ),
    (
        "pod-uid-from-metadata-name",
        1,
        "spec.template.spec.containers[0].env[1]",
        &["metadata.name where metadata.uid belongs"],
    ),
    (
        "only-one-downward-variable",
        1,
        "spec.template.spec.containers[0].env",
        &["LINUXGUARD_POD_UID is not", "metadata.uid"],
    ),
    (
        "shell-wrapper",
        1,
        "spec.template.spec.containers[0].command",
        &[
            "`/bin/sh` runs in front of the agent",
            "/usr/local/bin/linuxguard-agent",
        ],
    ),
    (
        "missing-os-name",
        1,
        "spec.template.spec.os",
        &["os: {name: linux}"],
    ),
    (
        "node-name-from-config-map-key-ref",
        1,
        "spec.template.spec.containers[0].env[0]",
        &[
            "LINUXGUARD_NODE_NAME comes from a ConfigMap (configMapKeyRef",
            "one value for every pod that reads it",
            "valueFrom: {fieldRef: {fieldPath: spec.nodeName}}",
        ],
    ),
    (
        "pod-uid-from-secret-key-ref",
        1,
        "spec.template.spec.containers[0].env[1]",
        &[
            "LINUXGUARD_POD_UID comes from a Secret (secretKeyRef",
            "valueFrom: {fieldRef: {fieldPath: metadata.uid}}",
        ],
    ),
    (
        "node-name-from-env-from-config-map",
        2,
        "spec.template.spec.containers[0].envFrom[0]",
        &[
            "LINUXGUARD_NODE_NAME comes from ConfigMap \"linuxguard-node\" (key NODE_NAME with prefix LINUXGUARD_) through envFrom",
            "{name: LINUXGUARD_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}",
        ],
    ),
    (
        "pod-uid-from-env-from-secret",
        1,
        "spec.template.spec.containers[0].envFrom[0]",
        &[
            "LINUXGUARD_POD_UID is not in env, so it can only come from envFrom (Secret \"linuxguard-ids\"",
            "{name: LINUXGUARD_POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}",
        ],
    ),
    (
        "privileged",
        2,
        "spec.template.spec.containers[0].securityContext.privileged",
        &["privileged: true", "BPF", "PERFMON"],
    ),
];

#[test]
fn each_bad_manifest_is_caught_with_its_path() {
    for (name, doc, path, words) in BAD {
        let file = repo(&format!("tests/manifests/{name}.yaml"));
        let out = run(agent().arg("check-manifest").arg(&file));
        let so = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{name}: stdout: {so}\nstderr: {}",
            stderr(&out)
        );
        let lines: Vec<&str> = so.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: expected exactly one finding: {so}");
        let prefix = format!("{}: document {doc}: {path}: ", file.display());
        assert!(
            lines[0].starts_with(&prefix),
            "{name}: expected `{prefix}...`, got `{}`",
            lines[0]
        );
        for w in *words {
            assert!(
                lines[0].contains(w),
                "{name}: `{w}` missing from `{}`",
                lines[0]
            );
        }
        assert!(
            !so.contains("PLACEHOLDER-NOT-REAL"),
            "{name}: the finding echoes the secret: {so}"
        );
        assert!(
            stderr(&out).contains("1 problem(s) found"),
            "{name}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn all_bad_manifests_at_once_report_every_finding() {
    let files: Vec<PathBuf> = BAD
        .iter()
        .map(|(n, ..)| repo(&format!("tests/manifests/{n}.yaml")))
        .collect();
    let out = run(agent().arg("check-manifest").args(&files));
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(stdout(&out).lines().count(), BAD.len(), "{}", stdout(&out));
}

#[test]
fn unreadable_and_invalid_files_fail_cleanly() {
    let dir = TempDir::new("manifest");
    let missing = dir.path().join("nope.yaml");
    let out = run(agent().arg("check-manifest").arg(&missing));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed to open"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\nspec: {containers: [\n").expect("write");
    let out = run(agent().arg("check-manifest").arg(&bad));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not valid YAML"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));

    let out = run(agent().arg("check-manifest"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn deeply_nested_yaml_is_refused_without_a_crash() {
    let dir = TempDir::new("manifest-deep");
    let f = dir.path().join("deep.yaml");
    std::fs::write(&f, "[".repeat(200_000)).expect("write");
    let out = run(agent().arg("check-manifest").arg(&f));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// The static release binary (`scripts/setup` and `scripts/test` build it before the tests): its
/// main thread's stack and code differ from the debug build's, so the nesting limit is checked
/// on it too.
fn static_binary() -> PathBuf {
    let p = repo(&format!(
        "target/{}-unknown-linux-musl/release/linuxguard-agent",
        std::env::consts::ARCH
    ));
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build --release --target <arch>-unknown-linux-musl --features static)",
        p.display()
    );
    p
}

/// Block nesting (`- - - ...`, ever-deeper keys) of 5,000 and 50,000 levels, aliases that nest
/// their anchored node deeper still: a clean configuration error (exit 3) naming the limit, in
/// the debug and the static release binary, never a stack overflow.
#[test]
fn deep_block_nesting_is_refused_without_a_crash_in_debug_and_release() {
    let dir = TempDir::new("manifest-deep-block");
    let seq = |n: usize| format!("kind: Pod\nspec:\n{}a\n", "- ".repeat(n));
    let map = |n: usize| {
        let mut t = String::from("kind: Pod\nspec:\n");
        for i in 0..n {
            t.push_str(&" ".repeat(i + 1));
            t.push_str("k:\n");
        }
        t + &" ".repeat(n + 1) + "v\n"
    };
    let alias = format!(
        "a: &d {}x{}\nb: {}*d{}\n",
        "[".repeat(200),
        "]".repeat(200),
        "[".repeat(200),
        "]".repeat(200)
    );
    let cases = [
        ("seq5k", seq(5_000)),
        ("seq50k", seq(50_000)),
        ("map3k", map(3_000)),
        ("alias", alias),
    ];
    let bins = [PathBuf::from(crate::common::AGENT), static_binary()];
    for (name, text) in &cases {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, text).expect("write");
        for bin in &bins {
            let out = run(std::process::Command::new(bin)
                .arg("check-manifest")
                .arg(&f));
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{name} with {}: {:?} {err}",
                bin.display(),
                out.status
            );
            assert!(
                err.contains("more than 256 levels deep"),
                "{name} with {}: {err}",
                bin.display()
            );
        }
    }
    // Just inside the limit: loaded and checked (no finding for this shape) by both.
    let f = dir.path().join("ok.yaml");
    std::fs::write(&f, seq(254)).expect("write");
    for bin in &bins {
        let out = run(std::process::Command::new(bin)
            .arg("check-manifest")
            .arg(&f));
        assert!(out.status.success(), "{}: {}", bin.display(), stderr(&out));
    }
}

/// A FIFO as FILE: refused at once, not read (it would block forever).
#[test]
fn fifo_and_directory_are_refused_without_blocking() {
    let dir = TempDir::new("manifest-fifo");
    let fifo = dir.path().join("m.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let mut child = agent()
        .arg("check-manifest")
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check-manifest blocked on a FIFO for 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a regular file (a FIFO)"),
        "{}",
        stderr(&out)
    );
    // In a directory (which stands for its .yaml files), a FIFO is not a file: skipped.
    let out = run(agent().arg("check-manifest").arg(dir.path()));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no .yaml"), "{}", stderr(&out));
}

/// 200,000 documents: refused by the document-count limit, with its own message (not blamed on
/// aliases there are none of).
#[test]
fn too_many_documents_have_their_own_message() {
    let dir = TempDir::new("manifest-docs");
    let f = dir.path().join("docs.yaml");
    std::fs::write(&f, "---\nkind: Pod\n".repeat(200_000)).expect("write");
    let out = run(agent().arg("check-manifest").arg(&f));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("more than 10000 YAML documents"), "{err}");
    assert!(!err.contains("alias"), "{err}");
    // Many plain nodes in few documents: the node limit, without blaming aliases either.
    std::fs::write(&f, "a: [".to_string() + &"1,".repeat(1_100_000) + "1]\n").expect("write");
    let out = run(agent().arg("check-manifest").arg(&f));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("more than 1000000 YAML nodes"), "{err}");
    assert!(!err.contains("alias"), "{err}");
}

/// The image definition: scratch, the binary alone (of the arch `TARGET` names: x86_64 unless
/// the arm64 build says aarch64), exec-form entrypoint, `start` by default.
/// (`scripts/image-test` builds and runs it; this catches edits that would add a shell.)
#[test]
fn containerfile_is_scratch_with_exec_form_entrypoint() {
    let text = std::fs::read_to_string(repo("Containerfile")).expect("read Containerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        lines,
        [
            "FROM scratch",
            "ARG TARGET=x86_64-unknown-linux-musl",
            "COPY target/${TARGET}/release/linuxguard-agent /usr/local/bin/linuxguard-agent",
            r#"ENTRYPOINT ["/usr/local/bin/linuxguard-agent"]"#,
            r#"CMD ["start"]"#,
        ]
    );
}

/// `check-manifest deploy/`: a directory stands for the YAML files below it.
#[test]
fn deploy_directory_passes() {
    let out = run(agent().arg("check-manifest").arg(repo("deploy")));
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let n = yaml_files(&repo("deploy/kubernetes")).len();
    assert!(
        stdout(&out).contains(&format!("of {n} file(s)")),
        "{}",
        stdout(&out)
    );
    // The fixtures directory holds the bad fixtures: each is reported.
    let out = run(agent().arg("check-manifest").arg(repo("tests/manifests")));
    assert_eq!(out.status.code(), Some(6));
    for (name, ..) in BAD {
        assert!(
            stdout(&out).contains(&format!("{name}.yaml: document")),
            "{name}: {}",
            stdout(&out)
        );
    }
}

/// The node-name variable checked follows `--node-name-env` (or `LINUXGUARD_NODE_NAME_ENV`), and
/// the agent container's own `--node-name-env` in its args.
#[test]
fn node_name_env_is_the_variable_checked() {
    let custom = repo("tests/manifests/custom-node-name-env.yaml");
    let one = |out: &std::process::Output| -> String {
        assert_eq!(out.status.code(), Some(6), "{}{}", stdout(out), stderr(out));
        let so = stdout(out);
        assert_eq!(so.lines().count(), 1, "{so}");
        so
    };
    let so = one(&run(agent()
        .args(["check-manifest", "--node-name-env", "MY_NODE_NAME"])
        .arg(&custom)));
    assert!(
        so.contains("containers[0].env[0]: MY_NODE_NAME comes from a ConfigMap (configMapKeyRef"),
        "{so}"
    );
    assert!(
        so.contains("{fieldRef: {fieldPath: spec.nodeName}}"),
        "{so}"
    );
    let so = one(&run(agent()
        .arg("check-manifest")
        .arg(&custom)
        .env("LINUXGUARD_NODE_NAME_ENV", "MY_NODE_NAME")));
    assert!(so.contains("MY_NODE_NAME comes from a ConfigMap"), "{so}");
    // Without it, MY_NODE_NAME is nothing to the agent: the node name is missing.
    let so = one(&run(agent().arg("check-manifest").arg(&custom)));
    assert!(
        so.contains("LINUXGUARD_POD_UID is set (at env[1]) but LINUXGUARD_NODE_NAME is not"),
        "{so}"
    );
    // The container says `--node-name-env MY_NODE_NAME` itself: checked without the flag.
    let good = repo("tests/manifests/good-custom-node-name-env.yaml");
    let out = run(agent().arg("check-manifest").arg(&good));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // A bad name is a configuration error.
    let out = run(agent()
        .args(["check-manifest", "--node-name-env", "MY-NODE"])
        .arg(&good));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

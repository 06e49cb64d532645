//! CLI and show-config, end to end through the real binary.

use crate::common::{agent, run, stderr, stdout};

const ABC123: &str = "6ca13d52ca70c883e0f0bb101e425a89e8624de51db2d2392593af6a84118090";
const SEED: &str = "737a0950fe7fdf90053876c0b3896289606b3bbd4934b634614f4c74f351b1b1";
const NODE: &str = "worker-node-3";
const UID: &str = "7b8f9c1d-3e4a-4b5c-9d6e-1f2a3b4c5d6e";

#[test]
fn show_config_without_identity_names_all_three_inputs() {
    let o = run(agent().arg("show-config"));
    assert_eq!(o.status.code(), Some(3), "config-error exit code");
    let err = stderr(&o);
    for needle in [
        "--workload-id",
        "LINUXGUARD_NODE_NAME",
        "LINUXGUARD_POD_UID",
        "metadata.uid",
        "spec.nodeName",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[test]
fn show_config_with_one_env_var_says_which_is_missing() {
    let o = run(agent().arg("show-config").env("LINUXGUARD_NODE_NAME", NODE));
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("LINUXGUARD_POD_UID is missing"),
        "{}",
        stderr(&o)
    );
    let o = run(agent().arg("show-config").env("LINUXGUARD_POD_UID", UID));
    assert!(
        stderr(&o).contains("LINUXGUARD_NODE_NAME is missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn show_config_workload_id_flag_and_downward_api() {
    let o = run(agent().args(["show-config", "--workload-id", "abc123"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(ABC123));
    let o = run(agent()
        .arg("show-config")
        .env("LINUXGUARD_NODE_NAME", NODE)
        .env("LINUXGUARD_POD_UID", UID));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(SEED));
    // The flag wins over the env vars.
    let o = run(agent()
        .args(["show-config", "--json", "--workload-id", "abc123"])
        .env("LINUXGUARD_NODE_NAME", NODE)
        .env("LINUXGUARD_POD_UID", UID));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&o)).expect("show-config --json prints JSON");
    assert_eq!(v["workloadId"], ABC123);
    assert_eq!(v["settings"]["node-name"]["source"], "env");
    assert_eq!(v["settings"]["workload-id"]["source"], "flag");
    assert_eq!(v["settings"]["proc-root"]["source"], "default");
}

#[test]
fn show_config_never_prints_secret_values() {
    let token = "JBSWY3DPEHPK3PXPJBSWY3DPEH";
    let key = "lg_live_supersecretapikey_0123456789";
    for json in [false, true] {
        let mut c = agent();
        c.args(["show-config", "--workload-id", "abc123", "--api-key", key])
            .env("LINUXGUARD_ENROLL_TOKEN", token);
        if json {
            c.arg("--json");
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", stderr(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            !all.contains(token) && !all.contains(key),
            "secret leaked: {all}"
        );
        assert!(
            all.contains(&format!("<set, {} chars>", token.len())),
            "{all}"
        );
        assert!(
            all.contains("--api-key was given on the command line"),
            "flag warning missing: {all}"
        );
    }
}

#[test]
fn usage_errors_name_the_flag_and_exit_2() {
    for (args, needle) in [
        (vec!["show-config", "--bogus"], "--bogus"),
        (
            vec!["show-config", "--server"],
            "missing value for --server",
        ),
        (vec!["nope"], "unknown command"),
    ] {
        let o = run(agent().args(&args));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    }
}

#[test]
fn bad_values_are_config_errors() {
    let o = run(agent().args([
        "show-config",
        "--workload-id",
        "abc123",
        "--server",
        "http://insecure.example",
    ]));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("https://"));
    let o = run(agent()
        .args(["show-config", "--workload-id", "abc123"])
        .env("LINUXGUARD_QUEUE_MB", "many"));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("LINUXGUARD_QUEUE_MB"));
    let o = run(agent()
        .arg("show-config")
        .env("LINUXGUARD_NODE_NAME", NODE)
        .env("LINUXGUARD_POD_UID", "my-pod-abc12"));
    assert!(
        stderr(&o).contains("this looks like metadata.name; use metadata.uid"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn version_and_help() {
    let o = run(agent().arg("--version"));
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("linuxguard-agent "));
    let o = run(agent().arg("version"));
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
    for cmd in [
        "watch",
        "start",
        "attest",
        "status",
        "show-config",
        "check-manifest",
        "version",
    ] {
        let o = run(agent().args([cmd, "--help"]));
        assert!(o.status.success(), "{cmd} --help");
        assert!(stdout(&o).contains(cmd));
    }
}

/// `printf 'Build_Host:<UID>' | sha256sum`: a host name is hashed exactly as given (case and `_`
/// kept, nothing lower-cased or replaced).
const BUILD_HOST_SEED: &str = "aa9ff0c7976533a3385f7b74f77f2704178de1d5d6473c873f4dc326526edb75";
/// `printf 'EDGE-07:<UID>' | sha256sum`.
const EDGE_07_SEED: &str = "2b2f9a456f2a07c5846abe8e5c491bc1aefa8dd6c8fdbee4e2837310016931a9";

fn show_json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "stderr: {}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("show-config --json prints JSON")
}

/// Outside Kubernetes the node name is a host name (`-e LINUXGUARD_NODE_NAME=$(hostname)`):
/// upper case and `_` are accepted and hashed byte for byte.
#[test]
fn show_config_accepts_host_names_and_hashes_them_as_given() {
    for (node, seed) in [("Build_Host", BUILD_HOST_SEED), ("EDGE-07", EDGE_07_SEED)] {
        let o = run(agent()
            .args(["show-config", "--json"])
            .env("LINUXGUARD_NODE_NAME", node)
            .env("LINUXGUARD_POD_UID", UID));
        let v = show_json(&o);
        assert_eq!(v["workloadId"], seed, "{node}");
        assert_eq!(v["nodeName"], node);
        assert_eq!(v["settings"]["node-name"]["value"], node);
        // The flag too, and the text form prints the name as given.
        let o = run(agent().args(["show-config", "--node-name", node, "--pod-uid", UID]));
        assert!(o.status.success(), "{node}: {}", stderr(&o));
        assert!(stdout(&o).contains(seed), "{}", stdout(&o));
        assert!(
            stdout(&o).contains(&format!("node name:   {node} (from --node-name)")),
            "{}",
            stdout(&o)
        );
    }
}

/// What a host name cannot be is still refused, with the rule and the variable named.
#[test]
fn show_config_refuses_what_no_host_name_is() {
    let long = "a".repeat(254);
    for bad in [
        "Build Host",
        "a\tb",
        "a\u{1}b",
        "node:1",
        long.as_str(),
        "x\u{7f}",
    ] {
        let o = run(agent()
            .arg("show-config")
            .env("LINUXGUARD_NODE_NAME", bad)
            .env("LINUXGUARD_POD_UID", UID));
        assert_eq!(o.status.code(), Some(3), "{bad:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("LINUXGUARD_NODE_NAME") && e.contains("is not a host name"),
            "{bad:?}: {e}"
        );
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    let o = run(agent().args(["show-config", "--node-name=", "--pod-uid", UID]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("--node-name"), "{}", stderr(&o));
    // 253 bytes is the longest accepted (a full DNS name).
    let o = run(agent()
        .args(["show-config", "--pod-uid", UID])
        .env("LINUXGUARD_NODE_NAME", "a".repeat(253)));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `--node-name-env NAME` / `LINUXGUARD_NODE_NAME_ENV`: the node name is read from the named
/// variable, and show-config says where it came from.
#[test]
fn node_name_env_names_the_variable_read() {
    use crate::common::AGENT;
    let env_i = |pairs: &[(&str, &str)], args: &[&str]| {
        let mut c = std::process::Command::new("env");
        c.arg("-i");
        for (k, v) in pairs {
            c.arg(format!("{k}={v}"));
        }
        c.arg(AGENT).args(args);
        run(&mut c)
    };
    let o = env_i(
        &[("MY_NODE_NAME", NODE), ("LINUXGUARD_POD_UID", UID)],
        &["show-config", "--json", "--node-name-env", "MY_NODE_NAME"],
    );
    let v = show_json(&o);
    assert_eq!(v["workloadId"], SEED);
    assert_eq!(v["nodeName"], NODE);
    assert_eq!(v["nodeNameFrom"], "MY_NODE_NAME");
    assert_eq!(v["settings"]["node-name"]["source"], "env");
    assert_eq!(v["settings"]["node-name"]["env"], "MY_NODE_NAME");
    assert_eq!(v["settings"]["node-name-env"]["value"], "MY_NODE_NAME");
    assert_eq!(v["settings"]["node-name-env"]["source"], "flag");
    assert_eq!(stderr(&o), "", "no warning");
    // The variable's own variable, and the text form.
    let o = env_i(
        &[
            ("LINUXGUARD_NODE_NAME_ENV", "NODE_NAME"),
            ("NODE_NAME", NODE),
            ("LINUXGUARD_POD_UID", UID),
        ],
        &["show-config"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(SEED), "{out}");
    assert!(
        out.contains(&format!("node name:   {NODE} (from NODE_NAME)")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("--node-name-env")
            && l.contains("NODE_NAME")
            && l.contains("env (LINUXGUARD_NODE_NAME_ENV)")),
        "{out}"
    );
    // LINUXGUARD_NODE_NAME is not read when another variable is named: the missing input is
    // named as configured, and a warning says why LINUXGUARD_NODE_NAME was ignored.
    let o = env_i(
        &[("LINUXGUARD_NODE_NAME", NODE), ("LINUXGUARD_POD_UID", UID)],
        &["show-config", "--node-name-env", "MY_NODE_NAME"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("MY_NODE_NAME is missing"), "{e}");
    assert!(
        e.contains("LINUXGUARD_NODE_NAME is set but not read"),
        "{e}"
    );
    // The node name's rule names the variable it came from.
    let o = env_i(
        &[("MY_NODE_NAME", "a b"), ("LINUXGUARD_POD_UID", UID)],
        &["show-config", "--node-name-env", "MY_NODE_NAME"],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("MY_NODE_NAME \"a b\" is not a host name"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn node_name_env_must_be_a_variable_name() {
    for (bad, why) in [
        ("1NODE", "letters, digits and '_'"),
        ("MY-NODE", "letters, digits and '_'"),
        ("MY NODE", "letters, digits and '_'"),
        ("LINUXGUARD_ENROLL_TOKEN", "another setting"),
        ("LINUXGUARD_POD_UID", "another setting"),
    ] {
        let o = run(agent().args([
            "show-config",
            "--workload-id",
            "abc123",
            "--node-name-env",
            bad,
        ]));
        assert_eq!(o.status.code(), Some(3), "{bad}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("--node-name-env") && e.contains(why),
            "{bad}: {e}"
        );
    }
    let o = run(agent()
        .args(["show-config", "--workload-id", "abc123"])
        .env("LINUXGUARD_NODE_NAME_ENV", "no=pe"));
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("LINUXGUARD_NODE_NAME_ENV"),
        "{}",
        stderr(&o)
    );
}

/// `env -i linuxguard-agent show-config ...`: an empty environment is nothing to scrub, not an
/// error: stderr stays empty.
#[test]
fn clean_environment_gets_no_warning() {
    use crate::common::AGENT;
    for extra in [&[][..], &["--json"][..]] {
        let o = run(std::process::Command::new("env")
            .arg("-i")
            .arg(AGENT)
            .args(["show-config", "--workload-id", "abc123"])
            .args(extra));
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o), "", "env -i: stderr must be empty");
        assert!(stdout(&o).contains(ABC123));
    }
}

/// `--output` and each output's settings are checked before anything starts (exit 3, one line
/// naming the setting); without `backend` among the outputs `start` asks for no `--server`
/// (the next thing it needs is the workload identity).
#[test]
fn output_settings_are_checked_and_start_without_backend_needs_no_server() {
    let start = |args: &[&str]| {
        let o = run(agent().arg("start").args(args));
        (o.status.code(), stderr(&o))
    };
    let (code, e) = start(&["--output", "backend,kafka"]);
    assert_eq!(code, Some(3), "{e}");
    assert!(
        e.contains("--output") && e.contains("\"kafka\"") && e.contains("otlp, file, syslog"),
        "{e}"
    );
    let (code, e) = start(&["--output", "file"]);
    assert_eq!(code, Some(3), "{e}");
    assert!(e.contains("--file-path FILE"), "{e}");
    let (code, e) = start(&["--output", "stdout,otlp"]);
    assert_eq!(code, Some(3), "{e}");
    assert!(e.contains("--otlp-endpoint URL"), "{e}");
    let (code, e) = start(&[
        "--output",
        "otlp",
        "--otlp-endpoint",
        "http://127.0.0.1:4318",
        "--otlp-ca",
        "/etc/hostname",
    ]);
    assert_eq!(code, Some(3), "{e}");
    assert!(e.contains("need an https:// --otlp-endpoint"), "{e}");
    let (code, e) = start(&[
        "--output",
        "otlp",
        "--otlp-endpoint",
        "https://c",
        "--otlp-cert",
        "/x",
    ]);
    assert_eq!(code, Some(3), "{e}");
    assert!(e.contains("--otlp-cert and --otlp-key go together"), "{e}");
    let (code, e) = start(&["--output", "syslog", "--syslog-addr", "syslog.example:514"]);
    assert_eq!(code, Some(3), "{e}");
    assert!(
        e.contains("--syslog-addr") && e.contains("tcp://HOST:PORT"),
        "{e}"
    );
    // No backend: no --server asked for; the workload identity is.
    let (code, e) = start(&[
        "--output",
        "file",
        "--file-path",
        "/tmp/lg-never-created/e.jsonl",
    ]);
    assert_eq!(code, Some(3), "{e}");
    assert!(!e.contains("no backend URL"), "{e}");
    assert!(e.contains("cannot derive the workload id"), "{e}");
    // `both` is shown as what it stands for.
    let o = run(agent().args([
        "show-config",
        "--json",
        "--output",
        "both",
        "--workload-id",
        "abc123",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("show-config JSON");
    assert!(v.to_string().contains("stdout,backend"), "{v}");
}

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

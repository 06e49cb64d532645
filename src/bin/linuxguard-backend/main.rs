//! linuxguard-backend: the reference LinuxGuard backend (pinned contract v1) with its own CA,
//! for tests and local demos. Command line, start-up, and the hand-over to the server loop.

mod admin;
mod ca;
mod handlers;
mod http;
mod mtls;
mod psat;
mod server;
mod state;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use state::{Settings, State};

const USAGE: &str = "\
usage: linuxguard-backend --state-dir DIR [--listen ADDR] [--tenant ID] [--token TOKEN]...
           [--expired-token TOKEN]... [--api-key KEY]... [--psat-jwks [TENANT=]FILE]...
           [--cert-lifetime-secs N] [--heartbeat-interval-secs N] [--token-ttl-secs N]
           [--max-batch-bytes N]

The reference LinuxGuard backend (test and demo use). Keeps its CA in DIR (ca.pem, ca-key.pem),
writes its base URL to DIR/url. With no --token/--api-key/--psat-jwks it generates and prints
one token. --psat-jwks: the service-account issuer keys (a JWKS: RS256/ES256) a tenant (default
--tenant) trusts for k8s_psat enrolment. --cert-lifetime-secs: leaf lifetime (default 86400).
Admin API (loopback only): /admin/faults, /admin/revoke, /admin/tokens, /admin/requests,
/admin/stats, /admin/events.";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    listen: String,
    state_dir: PathBuf,
    tenant: String,
    tokens: Vec<String>,
    expired_tokens: Vec<String>,
    api_keys: Vec<String>,
    /// `--psat-jwks [TENANT=]FILE`: (tenant or None for --tenant, file).
    psat_jwks: Vec<(Option<String>, PathBuf)>,
    cert_lifetime_secs: u64,
    heartbeat_interval_secs: u64,
    token_ttl_secs: u64,
    max_batch_bytes: usize,
}

fn parse_args(argv: Vec<std::ffi::OsString>) -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(argv);
    let mut state_dir = None;
    let mut a = Args {
        listen: "127.0.0.1:8443".into(),
        state_dir: PathBuf::new(),
        tenant: "demo".into(),
        tokens: Vec::new(),
        expired_tokens: Vec::new(),
        api_keys: Vec::new(),
        psat_jwks: Vec::new(),
        cert_lifetime_secs: 86400,
        heartbeat_interval_secs: 30,
        token_ttl_secs: 3600,
        max_batch_bytes: 1024 * 1024,
    };
    let err = |e: lexopt::Error| e.to_string();
    fn num<T: std::str::FromStr>(p: &mut lexopt::Parser, flag: &str) -> Result<T, String> {
        let v = p.value().map_err(|e| e.to_string())?;
        let s = v.to_string_lossy().into_owned();
        s.parse::<T>()
            .map_err(|_| format!("{flag} needs a non-negative integer, got `{s}`"))
    }
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("listen") => a.listen = p.value().map_err(err)?.string().map_err(err)?,
            Long("state-dir") => state_dir = Some(PathBuf::from(p.value().map_err(err)?)),
            Long("tenant") => a.tenant = p.value().map_err(err)?.string().map_err(err)?,
            Long("token") => a
                .tokens
                .push(p.value().map_err(err)?.string().map_err(err)?),
            Long("expired-token") => a
                .expired_tokens
                .push(p.value().map_err(err)?.string().map_err(err)?),
            Long("api-key") => a
                .api_keys
                .push(p.value().map_err(err)?.string().map_err(err)?),
            Long("psat-jwks") => {
                let v = p.value().map_err(err)?.string().map_err(err)?;
                a.psat_jwks.push(match v.split_once('=') {
                    Some((t, f)) if !t.is_empty() && !t.contains('/') => {
                        (Some(t.to_string()), PathBuf::from(f))
                    }
                    _ => (None, PathBuf::from(v)),
                });
            }
            Long("cert-lifetime-secs") => {
                a.cert_lifetime_secs = num(&mut p, "--cert-lifetime-secs")?
            }
            Long("heartbeat-interval-secs") => {
                a.heartbeat_interval_secs = num(&mut p, "--heartbeat-interval-secs")?;
            }
            Long("token-ttl-secs") => a.token_ttl_secs = num(&mut p, "--token-ttl-secs")?,
            Long("max-batch-bytes") => a.max_batch_bytes = num(&mut p, "--max-batch-bytes")?,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    a.state_dir = state_dir.ok_or("--state-dir DIR is required")?;
    if a.tenant.is_empty() {
        return Err("--tenant must not be empty".into());
    }
    if a.cert_lifetime_secs == 0 {
        return Err("--cert-lifetime-secs must be at least 1".into());
    }
    if a.tokens
        .iter()
        .chain(&a.expired_tokens)
        .any(|t| t.trim().is_empty())
        || a.api_keys.iter().any(|k| k.trim().is_empty())
    {
        return Err("--token, --expired-token and --api-key values must not be empty".into());
    }
    Ok(Some(a))
}

fn run(args: Args) -> Result<(), String> {
    let ca = ca::Ca::load_or_create(&args.state_dir)?;
    let (tls, verifier) = server::tls_config(&ca)?;
    let mut st = State::new(Settings {
        tenant: args.tenant.clone(),
        cert_lifetime: Duration::from_secs(args.cert_lifetime_secs),
        heartbeat_interval: args.heartbeat_interval_secs,
        token_ttl: Duration::from_secs(args.token_ttl_secs),
        max_batch_bytes: args.max_batch_bytes,
    });
    let now = Instant::now();
    for t in &args.tokens {
        st.add_token(t, false, now);
    }
    for t in &args.expired_tokens {
        st.add_token(t, true, now);
    }
    for k in &args.api_keys {
        st.add_api_key(k);
    }
    for (tenant, file) in &args.psat_jwks {
        let tenant = tenant.as_deref().unwrap_or(&args.tenant);
        let jwks = psat::Jwks::load(file)?;
        log::info!(
            "k8s_psat: tenant `{tenant}` trusts {} service-account issuer key(s) from `{}`",
            jwks.len(),
            file.display()
        );
        st.add_psat_issuer(tenant, jwks);
    }
    let mut out = std::io::stdout().lock();
    if !st.has_credentials() {
        // Printed on stdout for the quickstart; never logged.
        let token = ca::new_token()?;
        st.add_token(&token, false, now);
        writeln!(out, "enroll token: {token}").map_err(|e| format!("stdout: {e}"))?;
    }
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| format!("failed to listen on `{}`: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?;
    let url = format!("https://{addr}");
    ca::write_atomic(
        &args.state_dir.join("url"),
        format!("{url}\n").as_bytes(),
        0o644,
    )?;
    writeln!(out, "listening on {url}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    drop(out);
    log::info!(
        "tenant `{}`, CA `{}`, certificates valid {} s, heartbeat every {} s",
        args.tenant,
        ca::ca_pem_path(&args.state_dir).display(),
        args.cert_lifetime_secs,
        args.heartbeat_interval_secs
    );
    let shared = Arc::new(server::Shared {
        state: Mutex::new(st),
        ca,
        tls,
        verifier,
    });
    server::serve(listener, shared);
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("linuxguard-backend: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linuxguard-backend: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Option<Args>, String> {
        parse_args(v.iter().map(Into::into).collect())
    }

    #[test]
    fn parses_flags_and_defaults() {
        let a = args(&[
            "--state-dir",
            "/tmp/x",
            "--token",
            "AAA",
            "--token",
            "BBB",
            "--cert-lifetime-secs",
            "5",
        ])
        .expect("ok")
        .expect("some");
        assert_eq!(a.listen, "127.0.0.1:8443");
        assert_eq!(a.tokens, ["AAA", "BBB"]);
        assert_eq!(a.cert_lifetime_secs, 5);
        assert_eq!(a.max_batch_bytes, 1048576);
        let a = args(&[
            "--state-dir",
            "x",
            "--psat-jwks",
            "/a/jwks.json",
            "--psat-jwks",
            "acme=/b/jwks.json",
        ])
        .expect("ok")
        .expect("some");
        assert_eq!(a.psat_jwks[0], (None, PathBuf::from("/a/jwks.json")));
        assert_eq!(
            a.psat_jwks[1],
            (Some("acme".into()), PathBuf::from("/b/jwks.json"))
        );
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(args(&[]).is_err());
        assert!(args(&["--state-dir", "x", "--cert-lifetime-secs", "-1"]).is_err());
        assert!(args(&["--state-dir", "x", "--cert-lifetime-secs", "0"]).is_err());
        assert!(args(&["--state-dir", "x", "--bogus"]).is_err());
        assert!(args(&["--state-dir", "x", "--token", ""]).is_err());
    }
}

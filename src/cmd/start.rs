//! `start`: the production agent. Checks every setting before any network call (the [`Plan`]),
//! drops the configuration's copy of the credential, and hands over to the agent loop.

use std::time::{Duration, Instant};

use crate::agent;
use crate::cli::Args;
use crate::cmd::options;
use crate::config::{Config, Key};
use crate::error::{Error, Result};
use crate::identity::credential::{self, Kind, Source};
use crate::identity::plan::{self, Plan};
use crate::identity::tls::ServerTrust;
use crate::identity::tls_cache::{self, TlsCache};
use crate::identity::{token, workload};
use crate::output;
use crate::serve::socket_path;

pub fn run(mut cfg: Config, _args: &Args) -> Result<()> {
    let t0 = Instant::now();
    // A socket directory another user can write is refused before anything else: that user
    // could replace the socket and answer `status` and `attest --self` as the agent.
    if let Some(path) = cfg.path(Key::Socket) {
        socket_path::check_server_path(&path, nix::unistd::geteuid().as_raw())?;
    }
    let kinds =
        output::parse_list(cfg.get(Key::Output).unwrap_or("backend")).map_err(Error::config)?;
    let (plan, workload) = if kinds.contains(&output::Kind::Backend) {
        let p = plan(&cfg)?;
        let w = p.workload.hex.clone();
        (Some(p), w)
    } else {
        (None, edge(&cfg)?.hex)
    };
    let opts = options::agent(&cfg, &workload);
    // The plan holds the only copy of the credential from here on (zeroized with it).
    cfg.enroll_token = None;
    cfg.api_key = None;
    drop(cfg);
    agent::run(opts, plan, t0)
}

/// `start` without the backend among its outputs: no `--server`, no credential, no enrolment.
/// The workload id is still derived (outputs carry it), and settings that only enrolment reads
/// are named in a warning, so a forgotten `backend` in `--output` does not go unnoticed.
fn edge(cfg: &Config) -> Result<workload::WorkloadId> {
    let w = workload::derive(
        cfg.get(Key::WorkloadId),
        cfg.get(Key::NodeName),
        cfg.get(Key::PodUid),
        &cfg.var(Key::NodeName),
    )?;
    let unused: Vec<String> = [
        Key::Server,
        Key::EnrollTokenFile,
        Key::ApiKeyFile,
        Key::SaTokenFile,
        Key::TlsCache,
    ]
    .into_iter()
    .filter(|k| cfg.is_set(*k))
    .map(|k| cfg.origin_of(k))
    .chain(
        cfg.enroll_token
            .as_ref()
            .map(|_| "LINUXGUARD_ENROLL_TOKEN".to_string()),
    )
    .chain(
        cfg.api_key
            .as_ref()
            .map(|_| "LINUXGUARD_API_KEY".to_string()),
    )
    .collect();
    if !unused.is_empty() {
        log::warn!(
            "{} set but not used: backend is not among --output ({}), so the agent does not \
             enrol; add backend to --output to send events to the LinuxGuard backend",
            unused.join(", "),
            cfg.get(Key::Output).unwrap_or_default()
        );
    }
    log::info!(
        "workload id {} ({}); no backend: events go to {}",
        w.hex,
        w.describe(),
        cfg.get(Key::Output).unwrap_or_default()
    );
    Ok(w)
}

/// Every setting `start` needs, checked before the first network call.
fn plan(cfg: &Config) -> Result<Plan> {
    let server = cfg.get(Key::Server).ok_or_else(|| {
        Error::config(
            "no backend URL: set LINUXGUARD_SERVER (or --server) to the LinuxGuard backend, \
             for example https://linuxguard.example.com",
        )
    })?;
    if !server.starts_with("https://") {
        return Err(Error::config(format!(
            "--server {server:?} is not an https:// URL; the backend is only reached over https://"
        )));
    }
    let source = source(cfg)?;
    let tenant_id = cfg.get(Key::TenantId).map(str::to_string);
    if let Some(t) = &tenant_id {
        if t.len() > 256 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::config(
                "invalid tenant id: it must be at most 256 characters without spaces or control characters \
                 (LINUXGUARD_TENANT_ID / --tenant-id)",
            ));
        }
    }
    if source.kind() == Kind::Token && tenant_id.is_none() {
        return Err(Error::config(
            "tenantId required for TOTP enrollment: set LINUXGUARD_TENANT_ID (or --tenant-id) to \
             your LinuxGuard tenant id, or enrol with LINUXGUARD_API_KEY instead of a token",
        ));
    }
    let node_name = cfg.get(Key::NodeName).map(str::to_string);
    let pod_uid = cfg.get(Key::PodUid).map(str::to_string);
    if source.kind() == Kind::ServiceAccount {
        // Contract v1.1: the workload id must be the Downward API one, with a tenant.
        if tenant_id.is_none() {
            return Err(Error::config(
                "tenantId required for k8s_psat: set LINUXGUARD_TENANT_ID (or --tenant-id) with \
                 --sa-token-file",
            ));
        }
        if cfg.is_set(Key::WorkloadId) || node_name.is_none() || pod_uid.is_none() {
            return Err(Error::config(
                "k8s_psat (--sa-token-file) needs the Downward API identity: set the node name \
                 from spec.nodeName and LINUXGUARD_POD_UID from metadata.uid, and no --workload-id",
            ));
        }
    }
    let workload = workload::derive(
        cfg.get(Key::WorkloadId),
        node_name.as_deref(),
        pod_uid.as_deref(),
        &cfg.var(Key::NodeName),
    )?;
    let credential = source.current()?;
    let trust = ServerTrust::load(cfg.path(Key::ServerCa).as_deref())?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let tag = credential
        .as_ref()
        .map(|c| tls_cache::tag(&credential::tag_secret(c), &workload.hex));
    let cache = match cfg.path(Key::TlsCache) {
        Some(dir) => Some(TlsCache::open(&dir, tag, &workload.hex)?),
        None => None,
    };
    if credential.is_none() && cache.is_none() {
        return Err(plan::no_credential(&source, "--tls-cache is not set"));
    }
    Ok(Plan {
        server: server.to_string(),
        trust,
        source,
        credential,
        tenant_id,
        workload,
        node_name,
        pod_uid,
        hostname,
        enroll_timeout: Duration::from_secs(cfg.num(Key::EnrollTimeout).max(1)),
        cache,
    })
}

/// The one credential source the settings name (or none); two are a configuration error.
fn source(cfg: &Config) -> Result<Source> {
    let mut given = Vec::new();
    if cfg.enroll_token.is_some() {
        given.push("LINUXGUARD_ENROLL_TOKEN");
    }
    if cfg.is_set(Key::EnrollTokenFile) {
        given.push("LINUXGUARD_ENROLL_TOKEN_FILE");
    }
    if cfg.api_key.is_some() {
        given.push("LINUXGUARD_API_KEY");
    }
    if cfg.is_set(Key::ApiKeyFile) {
        given.push("LINUXGUARD_API_KEY_FILE");
    }
    if cfg.is_set(Key::SaTokenFile) {
        given.push("LINUXGUARD_SA_TOKEN_FILE");
    }
    if given.len() > 1 {
        return Err(Error::config(format!(
            "{} are set: give exactly one enrolment credential (a token with \
             LINUXGUARD_TENANT_ID, an API key, or the service-account token file)",
            given.join(" and ")
        )));
    }
    Ok(if let Some(t) = &cfg.enroll_token {
        Source::Token(token::normalize_token(t)?)
    } else if let Some(k) = &cfg.api_key {
        Source::ApiKey(token::normalize_api_key(k)?)
    } else if let Some(p) = cfg.path(Key::EnrollTokenFile) {
        Source::TokenFile(p)
    } else if let Some(p) = cfg.path(Key::ApiKeyFile) {
        Source::ApiKeyFile(p)
    } else if let Some(p) = cfg.path(Key::SaTokenFile) {
        Source::ServiceAccount(p)
    } else {
        Source::None
    })
}

//! The start plan: every setting `start` needs (server, trust, credential, workload identity,
//! TLS cache), checked before the first network call.

use std::time::Duration;

use crate::config::{Config, Key};
use crate::error::{Error, Result};
use crate::identity::enroll::Credential;
use crate::identity::tls_cache::{self, TlsCache};
use crate::identity::token;
use crate::identity::workload::{self, WorkloadId};
use crate::net::tls::ServerTrust;

/// Everything `start` needs, checked before the first network call.
pub struct Plan {
    pub server: String,
    pub trust: ServerTrust,
    pub credential: Credential,
    pub tenant_id: Option<String>,
    pub workload: WorkloadId,
    pub node_name: Option<String>,
    pub pod_uid: Option<String>,
    pub hostname: String,
    pub enroll_timeout: Duration,
    pub cache: Option<TlsCache>,
}

impl Plan {
    pub fn from_config(cfg: &Config) -> Result<Plan> {
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
        let credential = match (&cfg.enroll_token, &cfg.api_key) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "both an enrolment token and an API key are set: give exactly one \
                     (LINUXGUARD_ENROLL_TOKEN with LINUXGUARD_TENANT_ID, or LINUXGUARD_API_KEY)",
                ));
            }
            (None, None) => {
                return Err(Error::config(
                    "no enrolment credential: set LINUXGUARD_ENROLL_TOKEN (a single-use token, with \
                     LINUXGUARD_TENANT_ID) or LINUXGUARD_API_KEY, for example from a Kubernetes Secret",
                ));
            }
            (Some(t), None) => Credential::Token(token::normalize_token(t)?),
            (None, Some(k)) => Credential::ApiKey(token::normalize_api_key(k)?),
        };
        let tenant_id = cfg.get(Key::TenantId).map(str::to_string);
        if let Some(t) = &tenant_id {
            if t.len() > 256 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Error::config(
                    "invalid tenant id: it must be at most 256 characters without spaces or control characters \
                     (LINUXGUARD_TENANT_ID / --tenant-id)",
                ));
            }
        }
        if matches!(credential, Credential::Token(_)) && tenant_id.is_none() {
            return Err(Error::config(
                "tenantId required for TOTP enrollment: set LINUXGUARD_TENANT_ID (or --tenant-id) to \
                 your LinuxGuard tenant id, or enrol with LINUXGUARD_API_KEY instead of a token",
            ));
        }
        let node_name = cfg.get(Key::NodeName).map(str::to_string);
        let pod_uid = cfg.get(Key::PodUid).map(str::to_string);
        let workload = workload::derive(
            cfg.get(Key::WorkloadId),
            node_name.as_deref(),
            pod_uid.as_deref(),
        )?;
        let trust = ServerTrust::load(cfg.path(Key::ServerCa).as_deref())?;
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let cache = match cfg.path(Key::TlsCache) {
            Some(dir) => Some(TlsCache::open(
                &dir,
                tls_cache::tag(credential.secret(), &workload.hex),
            )?),
            None => None,
        };
        Ok(Plan {
            server: server.to_string(),
            trust,
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
}

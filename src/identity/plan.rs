//! The start plan: every setting `start` needs (server, trust, credential source, workload
//! identity, TLS cache), built and checked by `cmd::start` before the first network call.

use std::time::Duration;

use crate::error::Error;
use crate::identity::credential::Credential;
use crate::identity::credential::Source;
use crate::identity::tls::ServerTrust;
use crate::identity::tls_cache::TlsCache;
use crate::identity::workload::WorkloadId;

/// Everything `start` needs, checked before the first network call.
pub struct Plan {
    pub server: String,
    pub trust: ServerTrust,
    /// Where the enrolment credential comes from.
    pub source: Source,
    /// The credential as it was at start (`None`: its file is absent or empty, or there is none).
    pub credential: Option<Credential>,
    pub tenant_id: Option<String>,
    pub workload: WorkloadId,
    pub node_name: Option<String>,
    pub pod_uid: Option<String>,
    pub hostname: String,
    pub enroll_timeout: Duration,
    pub cache: Option<TlsCache>,
}

/// No credential now and nothing cached to use instead: exit 3 with what to set.
pub fn no_credential(source: &Source, why: &str) -> Error {
    let what = match source {
        Source::TokenFile(p) => format!(
            "--enroll-token-file `{}` does not exist or is empty",
            p.display()
        ),
        Source::ApiKeyFile(p) => format!(
            "--api-key-file `{}` does not exist or is empty",
            p.display()
        ),
        _ => "no enrolment credential is set".to_string(),
    };
    Error::config(format!(
        "no enrolment credential: {what}, and no usable identity is cached ({why}); set \
         LINUXGUARD_ENROLL_TOKEN or LINUXGUARD_ENROLL_TOKEN_FILE (a single-use token, with \
         LINUXGUARD_TENANT_ID), LINUXGUARD_API_KEY or LINUXGUARD_API_KEY_FILE, or \
         LINUXGUARD_SA_TOKEN_FILE (k8s_psat), for example from a Kubernetes Secret or a systemd \
         credential"
    ))
}

//! The start plan: every setting `start` needs (server, trust, credential, workload identity,
//! TLS cache), built and checked by `cmd::start` before the first network call.

use std::time::Duration;

use crate::identity::enroll::Credential;
use crate::identity::tls::ServerTrust;
use crate::identity::tls_cache::TlsCache;
use crate::identity::workload::WorkloadId;

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

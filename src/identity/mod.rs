//! Identity: the workload id, the credentials that prove it (token, API key), enrolment, the
//! rustls-based HTTPS clients and the mTLS endpoint client, retry pacing, the TLS cache, the
//! start plan and the running session (heartbeat, renewal).

pub mod backend;
pub mod backoff;
pub mod enroll;
pub mod plan;
pub mod session;
pub mod tls;
pub mod tls_cache;
pub mod token;
pub mod workload;
